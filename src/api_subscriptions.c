/* api_subscriptions.c - /api/subscriptions: purchase, get, cancel, change plan. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "idem.h"
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

void api_subscriptions_cancel(struct request *rq, struct response *rs)
{
	struct subscription sub = {0};
	struct err e = {0};
	char customer[ID_LEN + 1];

	if (rq->json && (!json_object_is_type(rq->json, json_type_object) ||
			 json_object_object_length(rq->json) > 0)) {
		response_invalid(rs, rq, "", "cancel takes no body, or an empty object");
		return;
	}
	if (subscription_load(rq, rs, &sub))
		goto out;
	if (!rq->is_admin) {
		snprintf(customer, sizeof(customer), "%s", sub.customer_id);
		rq->actor.id = customer;
	}
	subscription_clear(&sub);
	if (ledger_sub_cancel(rq->lg, &rq->actor, rq->param, &sub, &e))
		response_err(rs, rq, &e);
	else
		response_json(rs, 200, view_subscription(&sub));
	rq->actor.id = NULL;
out:
	subscription_clear(&sub);
}
