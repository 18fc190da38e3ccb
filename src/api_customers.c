/* api_customers.c - /api/customers: create, and a customer's subscriptions; /api/customer: a
 * signed-in customer's own. */
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "ids.h"
#include "util.h"
#include "valid.h"
#include "view.h"

static const struct field customer_fields[] = {
	{"email", V_EMAIL, true, 0, 0, NULL, NULL},
	{"name", V_STRING, true, 1, 100, NULL, NULL},
	{NULL, 0, false, 0, 0, NULL, NULL},
};

void api_customers_create(struct request *rq, struct response *rs)
{
	struct customer c = {0};
	struct json_object *v;
	struct err e = {0};

	if (api_body(rq, rs, customer_fields))
		return;
	id_new(c.id);
	json_object_object_get_ex(rq->json, "email", &v);
	c.email = xstrdup(json_object_get_string(v));
	json_object_object_get_ex(rq->json, "name", &v);
	c.name = xstrdup(json_object_get_string(v));
	c.created_at = now_ms();
	if (ledger_customer_create(rq->lg, &c, &e))
		response_err(rs, rq, &e);
	else
		response_json(rs, 201, view_customer(&c));
	customer_clear(&c);
}

static const char *const sub_statuses[] = {"pending", "active", "past_due", "failed", "expired", "cancelled",
					   "ended", "changed"};

/* The subscriptions of customer_id, newest first, paged and of a status or all. */
static void subscriptions_of(struct request *rq, struct response *rs, const char *customer_id)
{
	struct subscription *subs = NULL;
	struct page_req pg = {0};
	struct err e = {0};
	char *status = request_query(rq, "status"), next[CURSOR_LEN];
	size_t n = 0, i;

	if (status && *status) {
		for (i = 0; i < sizeof(sub_statuses) / sizeof(sub_statuses[0]) && strcmp(status, sub_statuses[i]); i++)
			;
		if (i == sizeof(sub_statuses) / sizeof(sub_statuses[0])) {
			response_invalid(rs, rq, "status", "must be one of: pending, active, past_due, failed, expired, cancelled, ended, changed");
			goto out;
		}
	} else {
		free(status);
		status = NULL;
	}
	if (api_page(rq, rs, 20, 100, &pg))
		goto out;
	if (ledger_sub_list(rq->lg, customer_id, status, &pg, &subs, &n, next, &e)) {
		api_page_error(rs, rq, &e);
		goto out;
	}
	struct json_object *arr = json_object_new_array();
	for (i = 0; i < n; i++)
		json_object_array_add(arr, view_subscription(&subs[i]));
	api_page_response(rs, "subscriptions", arr, next);
out:
	for (i = 0; i < n; i++)
		subscription_clear(&subs[i]);
	free(subs);
	free(status);
	free(pg.cursor);
}

void api_customers_subscriptions(struct request *rq, struct response *rs)
{
	if (!id_valid(rq->param))
		response_error(rs, rq, 404, "CUSTOMER_NOT_FOUND", "Customer not found", NULL);
	else
		subscriptions_of(rq, rs, rq->param);
}

void api_customer_me(struct request *rq, struct response *rs)
{
	struct customer c = {0};
	struct err e = {0};

	if (ledger_customer_get(rq->lg, rq->auth.customer_id, &c, &e))
		response_err(rs, rq, &e);
	else
		response_json(rs, 200, view_customer(&c));
	customer_clear(&c);
}

void api_customer_subscriptions(struct request *rq, struct response *rs)
{
	subscriptions_of(rq, rs, rq->auth.customer_id);
}
