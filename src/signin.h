/* signin.h - customers' sign-in by an email link: a link asked for (mailed to a known address,
 * the same answer for any), exchanged once for a session of 24 hours, and the session a bearer
 * token names. Tokens are 258 random bits, each kept only as its SHA-256; the link's token
 * reaches the mail sealed (seal.h), never the store in the clear. */
#ifndef NUMATIX_SIGNIN_H
#define NUMATIX_SIGNIN_H

#include <stdbool.h>

#include "ids.h"
#include "ledger.h"

#define SIGNIN_LINK_TTL_MS (15 * 60 * 1000)        /* a link works for 15 minutes, once */
#define SIGNIN_WINDOW_MS (15 * 60 * 1000)          /* at most SIGNIN_LINKS links per address in it */
#define SIGNIN_LINKS 3
#define SIGNIN_SESSION_TTL_MS (24 * 3600 * 1000)  /* a session lasts 24 hours */

/* A link for email (valid, any case): mailed when a customer has it and the address has not had
 * its links in the window; nothing tells which. -1 (e filled) only when the store failed or
 * nothing could keep the token sealed (no NUMATIX_ADMIN_TOKEN). */
int signin_request(struct ledger *lg, const struct actor *a, const char *email, struct err *e);

/* A link's token exchanged for a session: 0 with *ok, the session's token (shown once) and cs;
 * *ok false for a token that is unknown, used, expired or not a link's. */
int signin_exchange(struct ledger *lg, const char *login_token, char token[TOKEN_LEN + 1],
		    struct customer_session *cs, bool *ok, struct err *e);

/* The customer a session token names into customer_id (and its session id), when it is a live
 * session's; false otherwise (the store failing included). */
bool signin_session(struct ledger *lg, const char *token, char customer_id[ID_LEN + 1],
		    char session_id[ID_LEN + 1]);

/* Ends a session at once. */
int signin_end(struct ledger *lg, const char *session_id, struct err *e);

#endif
