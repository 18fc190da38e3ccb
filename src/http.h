/* http.h - one request and its response, independent of how they travel (FastCGI or CGI). */
#ifndef NUMATIX_HTTP_H
#define NUMATIX_HTTP_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>

#include "auth.h"
#include "err.h"
#include "ledger.h"

struct config;

struct request {
	/* From the gateway; the strings are new copies owned by the request. */
	char *method;
	char *path;                 /* without the query */
	char *query;                /* raw query string, "" if none */
	char *idem_key;             /* Idempotency-Key header or NULL */
	char *authorization;        /* Authorization header or NULL */
	char *remote_addr;
	char *origin;               /* Origin header or NULL */
	char *stripe_signature;     /* Stripe-Signature header (Stripe's events) or NULL */
	char *cors_request_method;  /* Access-Control-Request-Method header (a preflight) or NULL */
	long content_length;        /* -1 when absent */
	char trace_id[65];
	char span_id[17];           /* this request's own span (W3C Trace Context) */
	char trace_flags[3];        /* the caller's traceparent flags, or "01" */
	char *tracestate;           /* the caller's tracestate, passed on as it is, or NULL */
	char *body;                 /* NUL-terminated; body_len may include inner NULs */
	size_t body_len;

	/* Filled while it is handled. */
	char param[ID_LEN + 41];    /* the :id of the route, if any */
	struct json_object *json;   /* the parsed body; one reference owned */
	struct auth auth;           /* who the bearer token names */
	bool is_admin;
	struct actor actor;         /* who acts, for audit events */

	struct ledger *lg;          /* borrowed from the worker */
	const struct config *cfg;   /* borrowed from the worker */
};

struct response {
	int status;
	char *body;                 /* new, owned */
	int retry_after;            /* seconds; 0: no header */
	char allow[32];             /* Allow header for 405, "" if none */
	bool replayed;              /* Idempotent-Replayed: true */
	const char *content_type;   /* static; NULL: JSON */
	const char *cors_origin;    /* Access-Control-Allow-Origin (the request's own origin) or NULL */
	bool cors_preflight;        /* answers a preflight: the Access-Control-Allow-* headers too */
};

/* Reads method, path, query and headers from a CGI/FastCGI environment (NAME=value, NULL
 * terminated). The trace id is the trace of the client's valid traceparent, else its valid
 * X-Trace-Id, else nginx's request id, else a new one (32 hex digits, as W3C's); a malformed
 * traceparent is ignored. */
void request_init(struct request *rq, char **envp);
void request_free(struct request *rq);
void response_free(struct response *rs);

/* A query parameter, percent-decoded; new, free(); NULL if absent. */
char *request_query(const struct request *rq, const char *name);

/* Sets the response to o serialized; takes o's reference. */
void response_json(struct response *rs, int status, struct json_object *o);
/* The error envelope {"code","message","traceId","details"?}; takes details' reference. */
void response_error(struct response *rs, const struct request *rq, int status, const char *code,
		    const char *message, struct json_object *details);
/* A stored or final answer, its body copied; replayed sets Idempotent-Replayed. */
void response_reply(struct response *rs, const struct reply *r, bool replayed);
/* The error envelope for an outcome of a lower layer: status and message by its code. */
void response_err(struct response *rs, const struct request *rq, const struct err *e);
/* 409 REQUEST_IN_PROGRESS with Retry-After, and 422 IDEMPOTENCY_KEY_REUSED. */
void response_key_busy(struct response *rs, const struct request *rq, int retry_after_s);
void response_key_reused(struct response *rs, const struct request *rq);
/* The Idempotency-Key header checked (required or not) and put in lower case: 0 when it can
 * be used (rq->idem_key NULL if absent and not required), -1 after answering 400. */
int request_idem_key(struct request *rq, struct response *rs, bool required);
/* 400 VALIDATION_ERROR with details {"field", "reason"}. */
void response_invalid(struct response *rs, const struct request *rq, const char *field,
		      const char *reason);
/* The error envelope as JSON text, for responses stored on a key. New, free(). */
char *error_body(const char *code, const char *message, const char *trace_id,
		 struct json_object *details);

/* The CGI response header block (Status, Content-Type, ...) ending in a blank line. New, free(). */
char *response_head(const struct response *rs, const struct request *rq);

#endif
