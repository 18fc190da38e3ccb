/* auth.c - who a request's bearer token names. */
#include "auth.h"

#include <string.h>
#include <strings.h>

#include "util.h"

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
	/* An access token names its subscription; only the hash of the token is stored. */
	if (!check_tokens || !token_subscription(token, out->sub_id) ||
	    ledger_sub_get(lg, out->sub_id, &sub, &e))
		return;
	sha256_hex(token, strlen(token), hash);
	if (secret_equal(hash, sub.token_hash))
		out->who = AUTH_SUBSCRIPTION;
	subscription_clear(&sub);
}
