/* api_signin.c - /api/customer/login and /api/customer/sessions: a customer's sign-in by an
 * email link (signin.h). */
#include <string.h>

#include "api.h"
#include "signin.h"
#include "util.h"
#include "valid.h"
#include "view.h"

static const struct field login_fields[] = {
	{"email", V_EMAIL, true, 0, 0, NULL, NULL},
	{NULL, 0, false, 0, 0, NULL, NULL},
};

/* The same 202 for every address, known or not, limited or not: what was done is never told. */
void api_customer_login(struct request *rq, struct response *rs)
{
	struct json_object *v, *o;
	struct err e = {0};

	if (api_body(rq, rs, login_fields))
		return;
	json_object_object_get_ex(rq->json, "email", &v);
	if (signin_request(rq->lg, &rq->actor, json_object_get_string(v), &e)) {
		response_err(rs, rq, &e);
		return;
	}
	o = json_object_new_object();
	json_object_object_add(o, "status", json_object_new_string("sent"));
	response_json(rs, 202, o);
}

static const struct field exchange_fields[] = {
	{"loginToken", V_STRING, true, 1, 200, NULL, NULL},
	{NULL, 0, false, 0, 0, NULL, NULL},
};

void api_customer_sessions_create(struct request *rq, struct response *rs)
{
	struct customer_session cs;
	struct json_object *v, *o;
	struct err e = {0};
	char token[TOKEN_LEN + 1];
	bool ok;

	if (api_body(rq, rs, exchange_fields))
		return;
	json_object_object_get_ex(rq->json, "loginToken", &v);
	if (signin_exchange(rq->lg, json_object_get_string(v), token, &cs, &ok, &e)) {
		response_err(rs, rq, &e);
		return;
	}
	if (!ok) {
		response_error(rs, rq, 401, "UNAUTHORIZED", "This sign-in link is used, expired or unknown: ask for another",
			       NULL);
		return;
	}
	o = json_object_new_object();
	json_object_object_add(o, "sessionToken", json_object_new_string(token));
	json_object_object_add(o, "customerId", json_object_new_string(cs.customer_id));
	json_object_object_add(o, "expiresAt", view_time(cs.expires_at));
	explicit_bzero(token, sizeof(token));
	response_json(rs, 201, o);
}

void api_customer_sessions_end(struct request *rq, struct response *rs)
{
	struct err e = {0};

	if (signin_end(rq->lg, rq->auth.session_id, &e))
		response_err(rs, rq, &e);
	else
		rs->status = 204;
}
