/* ids.h - resource ids (24 hex digits, ObjectId form), Idempotency-Keys and secret tokens. */
#ifndef NUMATIX_IDS_H
#define NUMATIX_IDS_H

#include <stdbool.h>
#include <stddef.h>

#define ID_LEN 24
#define UUID_LEN 36
#define TOKEN_LEN 72   /* "sat_" or "cst_" + subscription id + "_" + 43 base64url chars */

/* A new id into out[ID_LEN + 1]: 4 bytes of seconds, 8 random bytes, like an ObjectId. */
void id_new(char out[ID_LEN + 1]);
/* A new id with a prefix, e.g. "pay_", into out (at least strlen(prefix) + 25 bytes). */
void id_new_prefixed(const char *prefix, char *out, size_t len);
bool id_valid(const char *s);
/* Canonical lowercase or uppercase 8-4-4-4-12 UUID text. */
bool uuid_valid(const char *s);
void uuid_new(char out[UUID_LEN + 1]);
/* A subscription access token into out[TOKEN_LEN + 1]. It names its subscription, so a
 * token can be told apart as wrong (401) or valid for another subscription (403). */
void token_new(const char *sub_id, char out[TOKEN_LEN + 1]);
/* A checkout session's client secret, "cst_" + its id + "_" + 43 random base64url chars. */
void secret_new(const char *session_id, char out[TOKEN_LEN + 1]);
/* The subscription id a token names into out; false if it is not a token's shape. */
bool token_subscription(const char *token, char out[ID_LEN + 1]);
/* The session a client secret names (its form only), into out. */
bool secret_session(const char *secret, char out[ID_LEN + 1]);
/* A waiting-list entry's access token "wlt_<entry id>_<secret>", and the entry it names. */
void entry_token_new(const char *entry_id, char out[TOKEN_LEN + 1]);
bool token_entry(const char *token, char out[ID_LEN + 1]);
/* A customer's login link's token "lnk_<link id>_<secret>" and a customer session's token
 * "cse_<session id>_<secret>", and the link or session each names. */
void link_token_new(const char *link_id, char out[TOKEN_LEN + 1]);
bool token_link(const char *token, char out[ID_LEN + 1]);
void session_token_new(const char *session_id, char out[TOKEN_LEN + 1]);
bool token_customer_session(const char *token, char out[ID_LEN + 1]);
/* A trace id a client sent is kept if it is 1-64 of [A-Za-z0-9._-]. */
bool trace_id_valid(const char *s);

#endif
