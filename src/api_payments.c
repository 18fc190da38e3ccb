/* api_payments.c - GET /api/payments/summary: the ledger's payments by state, for the operator;
 * GET /api/customer/payments: a signed-in customer's receipts. */
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "log.h"
#include "view.h"

/* The state a payment record of this kind and status is in, as the dashboard names it. */
static const char *state_of(const struct payment_total *t)
{
	static const struct {
		const char *kind, *status, *state;
	} states[] = {
		{"charge", "authorized", "authorized"}, {"charge", "succeeded", "captured"},
		{"charge", "voided", "voided"},         {"charge", "declined", "declined"},
		{"refund", "succeeded", "refunded"},    {"refund", "pending", "refundPending"},
		{"dispute", "open", "disputed"},
		/* a period's renewal: charged and captured at once, or declined; refunded when late */
		{"renewal", "succeeded", "captured"},   {"renewal", "declined", "declined"},
		{"renewal", "refunded", "refunded"},    {"renewal", "late", "refundPending"},
	};

	for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++)
		if (!strcmp(t->kind, states[i].kind) && !strcmp(t->status, states[i].status))
			return states[i].state;
	return NULL;
}

void api_payments_summary(struct request *rq, struct response *rs)
{
	static const char *const all[] = {"authorized", "captured", "voided", "declined", "refunded", "refundPending",
					  "disputed"};
	struct payment_total *t = NULL;
	size_t n = 0;
	struct err e = {0};

	if (ledger_payment_totals(rq->lg, &t, &n, &e)) {
		LOG_WARN(rq->trace_id, "payment totals: %s", e.msg);
		response_err(rs, rq, &e);
		return;
	}
	struct json_object *o = json_object_new_object(), *by = json_object_new_object();
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
		int64_t count = 0, amount = 0;
		for (size_t k = 0; k < n; k++) {
			const char *st = state_of(&t[k]);
			if (st && !strcmp(st, all[i])) {
				count += t[k].count;
				amount += t[k].amount_cents;
			}
		}
		struct json_object *one = json_object_new_object();
		json_object_object_add(one, "count", json_object_new_int64(count));
		json_object_object_add(one, "amount_cents", json_object_new_int64(amount));
		json_object_object_add(by, all[i], one);
	}
	json_object_object_add(o, "byState", by);
	json_object_object_add(o, "traceId", json_object_new_string(rq->trace_id));
	free(t);
	response_json(rs, 200, o);
}

#define RECEIPTS_MAX 100

void api_customer_payments(struct request *rq, struct response *rs)
{
	struct payment *p = NULL;
	struct err e = {0};
	int64_t limit;
	size_t n = 0;

	if (api_query_int(rq, rs, "limit", 1, RECEIPTS_MAX, 50, &limit))
		return;
	if (rq->lg->store->ops->customer_payments(rq->lg->store, rq->auth.customer_id, (int)limit, &p, &n, &e)) {
		response_err(rs, rq, &e);
		return;
	}
	struct json_object *o = json_object_new_object(), *arr = json_object_new_array();
	for (size_t i = 0; i < n; i++)
		json_object_array_add(arr, view_receipt(&p[i]));
	free(p);
	json_object_object_add(o, "payments", arr);
	response_json(rs, 200, o);
}
