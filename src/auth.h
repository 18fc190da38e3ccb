/* auth.h - who a request's bearer token names: the admin, the holder of one subscription's
 * access token, of one checkout session's client secret or of one waiting-list entry's token, a
 * signed-in customer, or nobody. The one place tokens are checked. */
#ifndef NUMATIX_AUTH_H
#define NUMATIX_AUTH_H

#include "ids.h"
#include "ledger.h"

enum auth_who {
	AUTH_NOBODY,         /* no bearer token */
	AUTH_INVALID,        /* a bearer token that is neither */
	AUTH_ADMIN_TOKEN,
	AUTH_SUBSCRIPTION,   /* sub_id: the subscription the access token opens */
	AUTH_SESSION,        /* sub_id: the checkout session the client secret opens */
	AUTH_WAITLIST,       /* sub_id: the waiting-list entry the access token opens */
	AUTH_CUSTOMER,       /* customer_id: the customer a session token (signin.h) signs in */
};

struct auth {
	enum auth_who who;
	char sub_id[ID_LEN + 1];
	char customer_id[ID_LEN + 1];
	char session_id[ID_LEN + 1];  /* AUTH_CUSTOMER: the session */
};

/* authorization: the header or NULL; admin_token: the configured one or NULL. Access tokens
 * are looked up only when check_tokens is set (the route needs one). */
void auth_identify(struct ledger *lg, const char *authorization, const char *admin_token, bool check_tokens,
		   struct auth *out);

#endif
