/* smtp.h - one message handed to a mail server over SMTP, with libcurl: smtp:// (STARTTLS when
 * the server offers it, required when a user is set) or smtps://, AUTH when a user is set. The
 * message is MIME: multipart/alternative of a plain text and an HTML part, UTF-8, quoted-printable;
 * names and the subject encoded per RFC 2047 where they are not ASCII. */
#ifndef NUMATIX_SMTP_H
#define NUMATIX_SMTP_H

#include <stddef.h>

#include "mail_render.h"

struct smtp_settings {
	const char *url;        /* smtp://host:port or smtps://host:port */
	const char *user;       /* NULL: no AUTH */
	const char *password;
	const char *from;       /* "address" or "Name <address>" */
};

struct smtp_envelope {
	const char *to;         /* the address */
	const char *to_name;    /* may be NULL or "" */
	const char *message_id; /* "<...@...>" */
	const char *trace_id;   /* the change's trace: X-Trace-Id; NULL or "" none */
};

enum smtp_outcome {
	SMTP_SENT,        /* the server took it (2xx) */
	SMTP_DEFERRED,    /* a 4xx to its recipient or its message: try it again later */
	SMTP_REFUSED,     /* a 5xx to its recipient or its message: it will not be taken */
	SMTP_UNAVAILABLE, /* nothing said about this mail: no server, a timeout, TLS, AUTH or the
			   * sender refused (4xx or 5xx); other mails would fare the same */
};

/* The longest one attempt takes, connection and all. */
#define SMTP_TIMEOUT_S 30

/* Sends msg; *code is the server's last reply code (0: none), why what went wrong. */
enum smtp_outcome smtp_send(const struct smtp_settings *s, const struct smtp_envelope *env,
			    const struct mail_message *msg, int *code, char *why, size_t whylen);

/* text as a header's value: itself when it is printable ASCII, else an RFC 2047 encoded word
 * (=?UTF-8?B?...?=, in pieces of at most 75 characters). New. */
char *smtp_header_word(const char *text);

#endif
