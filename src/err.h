/* err.h - the one small error struct that crosses every layer, filled by the callee. */
#ifndef NUMATIX_ERR_H
#define NUMATIX_ERR_H

enum err_kind {
	ERR_NONE = 0,
	ERR_INVALID,      /* the request is wrong: 4xx chosen by the code */
	ERR_NOT_FOUND,    /* 404 */
	ERR_CONFLICT,     /* 409, or the status the code names */
	ERR_RETRYABLE,    /* a transient clash in the store: 503 + Retry-After */
	ERR_UNAVAILABLE,  /* the store cannot be reached: 503 + Retry-After */
	ERR_INTERNAL,     /* a bug or a broken invariant: 500 */
};

struct err {
	enum err_kind kind;
	const char *code;   /* API error code, static string, e.g. "PLAN_SOLD_OUT" */
	char msg[256];      /* for the log, and for people when the code has no message */
	char details[160];  /* the error's details for the client, a JSON object's text, or "" */
};

void err_set(struct err *e, enum err_kind kind, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
void err_clear(struct err *e);

#endif
