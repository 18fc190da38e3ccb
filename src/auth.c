/* auth.c - who a request's bearer token names. */
#include "auth.h"

#include <string.h>
#include <strings.h>

#include "signin.h"
#include "util.h"
#include "waitlist.h"

void auth_identify(struct ledger *lg, const char *authorization, const char *admin_token, bool check_tokens,
		   struct auth *out)
{
	struct subscription sub = {0};
	struct err e = {0};
	const char *token;
	char hash[65];

	memset(out, 0, sizeof(*out));
	if (!authorization || strncasecmp(authorization, "Bearer ", 7))
		return;
	token = authorization + 7;
	while (*token == ' ')
		token++;
	if (!*token)
		return;
	out->who = AUTH_INVALID;
	if (admin_token && secret_equal(token, admin_token)) {
		out->who = AUTH_ADMIN_TOKEN;
		return;
	}
	/* An access token names its subscription, a client secret its session (the same row);
	 * only their hashes are stored. */
	if (!check_tokens)
		return;
	if (signin_session(lg, token, out->customer_id, out->session_id)) {
		out->who = AUTH_CUSTOMER;
		return;
	}
	if (token_entry(token, out->sub_id)) {
		struct waitlist_entry w = {0};
		sha256_hex(token, strlen(token), hash);
		if (waitlist_get(lg, out->sub_id, &w, &e) == 0 && secret_equal(hash, w.token_hash))
			out->who = AUTH_WAITLIST;
		return;
	}
	bool session = secret_session(token, out->sub_id);
	if ((!session && !token_subscription(token, out->sub_id)) || ledger_sub_get(lg, out->sub_id, &sub, &e))
		return;
	sha256_hex(token, strlen(token), hash);
	if (secret_equal(hash, session ? sub.secret_hash : sub.token_hash))
		out->who = session ? AUTH_SESSION : AUTH_SUBSCRIPTION;
	subscription_clear(&sub);
}
