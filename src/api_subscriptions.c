/* api_subscriptions.c - /api/subscriptions: purchase, get, cancel, change plan. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "idem.h"
#include "life.h"
#include "metrics.h"
#include "purchase.h"
#include "util.h"
#include "valid.h"
#include "view.h"

static const struct field purchase_fields[] = {
	{"planId", V_ID, true, 0, 0, NULL, NULL},
	{"paymentMethodId", V_STRING, true, 4, 100, NULL, NULL},
	{"customerId", V_ID, false, 0, 0, NULL, NULL},
	{"customer", V_OBJECT, false, 0, 0, NULL, api_customer_fields},
	{"quantity", V_INT, false, 1, 1000, NULL, NULL},
	{NULL, 0, false, 0, 0, NULL, NULL},
};

void api_subscriptions_purchase(struct request *rq, struct response *rs)
{
	struct purchase_req p = {0};
	struct purchase_result r;
	char fp[65];

	if (api_keyed_body(rq, rs, purchase_fields))
		return;
	p.plan_id = api_str(rq, "planId", NULL);
	p.payment_method = api_str(rq, "paymentMethodId", NULL);
	p.customer_id = api_str(rq, "customerId", NULL);
	p.email = api_str(rq, "customer", "email");
	p.name = api_str(rq, "customer", "name");
	p.quantity = api_int(rq, "quantity", 1);
	if (api_payment_method(rq, rs, p.payment_method) || api_customer_given(rq, rs))
		return;
	idem_fingerprint(rq->method, rq->path, rq->json, fp);
	p.key = rq->idem_key;
	p.fingerprint = fp;
	purchase_run(rq->lg, &rq->actor, &p, &r);
	api_purchase_answer(rq, rs, &r);
	switch (r.end) {
	case PURCHASE_ANSWERED:
		metrics_purchase(rs->status, rs->status == 201 ? "" : rs->status == 402 ? "PAYMENT_FAILED" : "HOLD_EXPIRED");
		break;
	case PURCHASE_REFUSED:
		metrics_purchase(rs->status, rs->status == 503 ? "SERVICE_UNAVAILABLE" : r.err.code);
		break;
	case PURCHASE_IN_PROGRESS:
		metrics_purchase(rs->status, "REQUEST_IN_PROGRESS");
		break;
	case PURCHASE_KEY_REUSED:
		metrics_purchase(rs->status, "IDEMPOTENCY_KEY_REUSED");
		break;
	}
	purchase_result_clear(&r);
}

/* The subscription the :id names (the bearer, the admin or its own token, was checked before
 * the handler). Returns -1 after answering 404 or 503. */
static int subscription_load(struct request *rq, struct response *rs, struct subscription *sub)
{
	struct err e = {0};

	if (!id_valid(rq->param)) {
		response_error(rs, rq, 404, "SUBSCRIPTION_NOT_FOUND", "Subscription not found", NULL);
		return -1;
	}
	if (ledger_sub_get(rq->lg, rq->param, sub, &e)) {
		response_err(rs, rq, &e);
		return -1;
	}
	return 0;
}

void api_subscriptions_get(struct request *rq, struct response *rs)
{
	struct subscription sub = {0};

	if (subscription_load(rq, rs, &sub) == 0)
		response_json(rs, 200, view_subscription(&sub));
	subscription_clear(&sub);
}

static const struct field change_fields[] = {
	{"planId", V_ID, true, 0, 0, NULL, NULL},
	{"paymentMethodId", V_STRING, false, 4, 100, NULL, NULL},
	{NULL, 0, false, 0, 0, NULL, NULL},
};

void api_subscriptions_change_plan(struct request *rq, struct response *rs)
{
	struct subscription sub = {0};
	struct change_req c = {0};
	struct purchase_result r = {0};
	char fp[65];

	if (api_keyed_body(rq, rs, change_fields))
		return;
	c.payment_method = api_str(rq, "paymentMethodId", NULL);
	if ((c.payment_method && api_payment_method(rq, rs, c.payment_method)) || subscription_load(rq, rs, &sub))
		goto out;
	if (!rq->is_admin)
		rq->actor.id = sub.customer_id;
	idem_fingerprint(rq->method, rq->path, rq->json, fp);
	c.key = rq->idem_key;
	c.fingerprint = fp;
	c.sub_id = sub.id;
	c.plan_id = api_str(rq, "planId", NULL);
	plan_change(rq->lg, &rq->actor, &c, &r);
	rq->actor.id = NULL;
	api_purchase_answer(rq, rs, &r);
out:
	purchase_result_clear(&r);
	subscription_clear(&sub);
}

static const struct field cancel_fields[] = {
	{"atPeriodEnd", V_BOOL, false, 0, 0, NULL, NULL},
	{NULL, 0, false, 0, 0, NULL, NULL},
};

static const struct field nothing_fields[] = {
	{NULL, 0, false, 0, 0, NULL, NULL},
};

static const struct field method_fields[] = {
	{"paymentMethodId", V_STRING, true, 4, 100, NULL, NULL},
	{NULL, 0, false, 0, 0, NULL, NULL},
};

/* A move of a subscription's own: the subscription loaded (404 first), its customer the actor
 * unless the admin asks; then the move, answered with the subscription after it. */
enum own_move { MOVE_CANCEL_NOW, MOVE_CANCEL_AT_END, MOVE_RESUME, MOVE_METHOD };

static void own_move(struct request *rq, struct response *rs, enum own_move m, const char *method)
{
	struct subscription sub = {0};
	struct err e = {0};
	char customer[ID_LEN + 1];
	int rc;

	if (subscription_load(rq, rs, &sub))
		goto out;
	if (!rq->is_admin) {
		snprintf(customer, sizeof(customer), "%s", sub.customer_id);
		rq->actor.id = customer;
	}
	subscription_clear(&sub);
	switch (m) {
	case MOVE_CANCEL_NOW:
		rc = ledger_sub_cancel(rq->lg, &rq->actor, rq->param, &sub, &e);
		break;
	case MOVE_CANCEL_AT_END:
	case MOVE_RESUME:
		rc = life_schedule_end(rq->lg, &rq->actor, rq->param, m == MOVE_CANCEL_AT_END, &sub, &e);
		break;
	default:
		rc = life_payment_method(rq->lg, &rq->actor, rq->param, method, &sub, &e);
		break;
	}
	if (rc)
		response_err(rs, rq, &e);
	else
		response_json(rs, 200, view_subscription(&sub));
	rq->actor.id = NULL;
out:
	subscription_clear(&sub);
}

/* No body, {} or {"atPeriodEnd": false}: at once; {"atPeriodEnd": true}: at the period's end. */
void api_subscriptions_cancel(struct request *rq, struct response *rs)
{
	struct json_object *v = NULL;

	if (rq->json && api_body(rq, rs, cancel_fields))
		return;
	json_object_object_get_ex(rq->json, "atPeriodEnd", &v);
	own_move(rq, rs, v && json_object_get_boolean(v) ? MOVE_CANCEL_AT_END : MOVE_CANCEL_NOW, NULL);
}

void api_subscriptions_resume(struct request *rq, struct response *rs)
{
	if (rq->json && api_body(rq, rs, nothing_fields))
		return;
	own_move(rq, rs, MOVE_RESUME, NULL);
}

void api_subscriptions_payment_method(struct request *rq, struct response *rs)
{
	const char *method;

	if (api_body(rq, rs, method_fields))
		return;
	method = api_str(rq, "paymentMethodId", NULL);
	if (api_payment_method(rq, rs, method))
		return;
	own_move(rq, rs, MOVE_METHOD, method);
}

/* POST /api/subscriptions/:id/access-token (its customer, or the admin): a new access token, shown
 * once; the old one stops working at once. */
void api_subscriptions_access_token(struct request *rq, struct response *rs)
{
	struct subscription sub = {0};
	struct json_object *o;
	struct err e = {0};
	char token[TOKEN_LEN + 1];

	if (rq->json && api_body(rq, rs, nothing_fields))
		return;
	if (rq->auth.who != AUTH_CUSTOMER && !rq->is_admin) {
		response_error(rs, rq, 403, "FORBIDDEN", "A new access token is for the subscription's customer or the admin",
			       NULL);
		return;
	}
	if (!id_valid(rq->param)) {
		response_error(rs, rq, 404, "SUBSCRIPTION_NOT_FOUND", "Subscription not found", NULL);
		return;
	}
	if (ledger_token_replace(rq->lg, &rq->actor, rq->param, token, &sub, &e)) {
		response_err(rs, rq, &e);
		return;
	}
	o = view_subscription(&sub);
	json_object_object_add(o, "accessToken", json_object_new_string(token));
	explicit_bzero(token, sizeof(token));
	response_json(rs, 200, o);
	subscription_clear(&sub);
}

/* GET /api/renewals?days=N&limit=M (admin): what the renewer will do in the coming days, soonest
 * first — active subscriptions whose period ends by then (renewed, or ended), past_due ones
 * whose next try falls by then. */
void api_renewals(struct request *rq, struct response *rs)
{
	struct subscription *subs = NULL;
	struct err e = {0};
	int64_t days, limit;
	size_t n = 0;

	if (api_query_int(rq, rs, "days", 0, 90, 7, &days) || api_query_int(rq, rs, "limit", 1, 200, 50, &limit))
		return;
	if (life_coming(rq->lg, days, (int)limit, &subs, &n, &e)) {
		response_err(rs, rq, &e);
		return;
	}
	struct json_object *o = json_object_new_object(), *arr = json_object_new_array();
	for (size_t i = 0; i < n; i++) {
		json_object_array_add(arr, view_subscription(&subs[i]));
		subscription_clear(&subs[i]);
	}
	free(subs);
	json_object_object_add(o, "subscriptions", arr);
	json_object_object_add(o, "days", json_object_new_int64(days));
	response_json(rs, 200, o);
}
