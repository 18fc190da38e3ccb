/* api_checkout.c - /api/checkout-sessions: create (seats held until a deadline), read,
 * complete with a payment method, expire. A session is its pending subscription (purchase.h). */
#include <stdio.h>
#include <string.h>

#include "api.h"
#include "config.h"
#include "idem.h"
#include "purchase.h"
#include "util.h"
#include "valid.h"
#include "view.h"

static const struct field create_fields[] = {
	{"planId", V_ID, true, 0, 0, NULL, NULL},
	{"quantity", V_INT, false, 1, 1000, NULL, NULL},
	{"customerId", V_ID, false, 0, 0, NULL, NULL},
	{"customer", V_OBJECT, false, 0, 0, NULL, api_customer_fields},
	{"expiresIn", V_INT, false, 60, 86400, NULL, NULL},
	{NULL, 0, false, 0, 0, NULL, NULL},
};

static const struct field complete_fields[] = {
	{"paymentMethodId", V_STRING, true, 4, 100, NULL, NULL},
	{NULL, 0, false, 0, 0, NULL, NULL},
};

void api_checkout_create(struct request *rq, struct response *rs)
{
	struct checkout_req q = {0};
	struct purchase_result r;
	char fp[65];

	if (api_keyed_body(rq, rs, create_fields) || api_customer_given(rq, rs))
		return;
	idem_fingerprint(rq->method, rq->path, rq->json, fp);
	q.key = rq->idem_key;
	q.fingerprint = fp;
	q.plan_id = api_str(rq, "planId", NULL);
	q.quantity = api_int(rq, "quantity", 1);
	q.expires_in_s = (int)api_int(rq, "expiresIn", rq->cfg->checkout_ttl_s);
	q.customer_id = api_str(rq, "customerId", NULL);
	q.email = api_str(rq, "customer", "email");
	q.name = api_str(rq, "customer", "name");
	checkout_create(rq->lg, &rq->actor, &q, &r);
	api_purchase_answer(rq, rs, &r);
	purchase_result_clear(&r);
}

/* The session the :id names (the bearer, the admin or its client secret, was checked before
 * the handler). Returns -1 after answering 404 or 503. */
static int session_load(struct request *rq, struct response *rs, struct subscription *sub)
{
	struct err e = {0};

	if (!id_valid(rq->param) || ledger_sub_get(rq->lg, rq->param, sub, &e)) {
		if (e.kind == ERR_NONE || e.kind == ERR_NOT_FOUND)
			response_error(rs, rq, 404, "SESSION_NOT_FOUND", "Checkout session not found", NULL);
		else
			response_err(rs, rq, &e);
		return -1;
	}
	return 0;
}

void api_checkout_get(struct request *rq, struct response *rs)
{
	struct subscription sub = {0};

	if (session_load(rq, rs, &sub) == 0)
		response_json(rs, 200, view_session(&sub));
	subscription_clear(&sub);
}

void api_checkout_complete(struct request *rq, struct response *rs)
{
	struct subscription sub = {0};
	struct purchase_result r = {0};

	if (api_keyed_body(rq, rs, complete_fields) || api_payment_method(rq, rs, api_str(rq, "paymentMethodId", NULL)) ||
	    session_load(rq, rs, &sub))
		goto out;
	if (api_idem_begin(rq, rs)) {
		struct reply rp;
		if (!rq->is_admin)
			rq->actor.id = sub.customer_id;
		checkout_complete(rq->lg, &rq->actor, sub.id, rq->idem_key, api_str(rq, "paymentMethodId", NULL), &r);
		rq->actor.id = NULL;
		api_purchase_answer(rq, rs, &r);
		/* an answer stored in the attempt's units stays; a refusal before them frees the key */
		rp = (struct reply){rs->status, rs->body};
		idem_settle(rq->lg, rq->idem_key, &rp, rq->trace_id);
	}
out:
	purchase_result_clear(&r);
	subscription_clear(&sub);
}

/* A route that takes no body, or an empty object: -1 after answering 400 for anything else. */
static int no_body(struct request *rq, struct response *rs, const char *route)
{
	char why[80];

	if (!rq->json || (json_object_is_type(rq->json, json_type_object) && json_object_object_length(rq->json) == 0))
		return 0;
	snprintf(why, sizeof(why), "%s takes no body, or an empty object", route);
	response_invalid(rs, rq, "", why);
	return -1;
}

void api_checkout_expire(struct request *rq, struct response *rs)
{
	struct subscription sub = {0};
	struct err e = {0};

	if (no_body(rq, rs, "expire"))
		return;
	if (session_load(rq, rs, &sub))
		goto out;
	if (!rq->is_admin)
		rq->actor.id = sub.customer_id;
	subscription_clear(&sub);
	if (checkout_expire(rq->lg, &rq->actor, rq->param, NULL, &sub, &e))
		response_err(rs, rq, &e);
	else
		response_json(rs, 200, view_session(&sub));
	rq->actor.id = NULL;
out:
	subscription_clear(&sub);
}

/* The simulated processor's stand-in for the bank's 3-D Secure page: the buyer authenticates
 * the payment the session waits with; the page then completes the session again. */
void api_checkout_authenticate(struct request *rq, struct response *rs)
{
	struct subscription sub = {0};
	struct err e = {0};

	if (no_body(rq, rs, "authenticate"))
		return;
	if (session_load(rq, rs, &sub) == 0) {
		if (checkout_authenticate(rq->lg, sub.id, &e))
			response_err(rs, rq, &e);
		else
			response_json(rs, 200, view_session(&sub));
	}
	subscription_clear(&sub);
}
