/* signin.c - customers' sign-in by an email link. */
#include "signin.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "outbox.h"
#include "util.h"

int signin_request(struct ledger *lg, const struct actor *a, const char *email, struct err *e)
{
	char link_id[ID_LEN + 1], token[TOKEN_LEN + 1], hash[65];
	char *lower = xstrdup(email), *sealed;
	struct outbox_mail m;
	enum login_result res;
	int64_t now = now_ms();
	int rc;

	if (!lg->sealing) {
		free(lower);
		return err_set(e, ERR_UNAVAILABLE, NULL, "sign-in needs NUMATIX_ADMIN_TOKEN to seal its links"), -1;
	}
	for (char *p = lower; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	/* the same work for every address: a token made, hashed and sealed, one unit written */
	id_new(link_id);
	link_token_new(link_id, token);
	sha256_hex(token, strlen(token), hash);
	sealed = ledger_seal(lg, token);
	explicit_bzero(token, sizeof(token));
	outbox_login(&m, now + SIGNIN_LINK_TTL_MS, sealed, a->trace_id);
	const struct event_spec ev = {"customer.login_requested", "customer", NULL, EV_NO_COUNTS, NULL, &m.spec};
	const struct login_req r = {lower, link_id, hash, now, now + SIGNIN_LINK_TTL_MS, now - SIGNIN_WINDOW_MS,
				    SIGNIN_LINKS};
	rc = lg->store->ops->login_link(lg->store, &r, &ev, a, &res, e);
	outbox_mail_clear(&m);
	free(sealed);
	free(lower);
	return rc;
}

int signin_exchange(struct ledger *lg, const char *login_token, char token[TOKEN_LEN + 1],
		    struct customer_session *cs, bool *ok, struct err *e)
{
	char link_id[ID_LEN + 1], hash[65];

	*ok = false;
	memset(cs, 0, sizeof(*cs));
	if (!token_link(login_token, link_id))
		return 0;
	sha256_hex(login_token, strlen(login_token), hash);
	id_new(cs->id);
	session_token_new(cs->id, token);
	sha256_hex(token, strlen(token), cs->token_hash);
	cs->created_at = now_ms();
	cs->expires_at = cs->created_at + SIGNIN_SESSION_TTL_MS;
	if (lg->store->ops->login_exchange(lg->store, link_id, hash, cs, ok, e))
		return -1;
	if (!*ok)
		explicit_bzero(token, TOKEN_LEN + 1);
	return 0;
}

bool signin_session(struct ledger *lg, const char *token, char customer_id[ID_LEN + 1], char session_id[ID_LEN + 1])
{
	struct customer_session cs;
	struct err e = {0};
	char hash[65];
	bool found = false;

	if (!token_customer_session(token, session_id) ||
	    lg->store->ops->session_get(lg->store, session_id, &cs, &found, &e) || !found)
		return false;
	sha256_hex(token, strlen(token), hash);
	if (!secret_equal(hash, cs.token_hash) || cs.ended_at || cs.expires_at <= now_ms())
		return false;
	memcpy(customer_id, cs.customer_id, ID_LEN + 1);
	return true;
}

int signin_end(struct ledger *lg, const char *session_id, struct err *e)
{
	bool found;

	return lg->store->ops->session_end(lg->store, session_id, now_ms(), &found, e);
}
