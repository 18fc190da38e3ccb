/* api_waitlist.c - waiting lists: join a plan's line, read or leave one's entry, the operator's
 * view of a line. The offers are the store's (store.h) and the sessions purchase.c's. */
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "ids.h"
#include "view.h"
#include "waitlist.h"

static const struct field join_fields[] = {
	{"quantity", V_INT, false, 1, 1000, NULL, NULL},
	{"customerId", V_ID, false, 0, 0, NULL, NULL},
	{"customer", V_OBJECT, false, 0, 0, NULL, api_customer_fields},
	{NULL, 0, false, 0, 0, NULL, NULL},
};

static const struct field no_fields[] = {
	{NULL, 0, false, 0, 0, NULL, NULL},
};

void api_waitlist_join(struct request *rq, struct response *rs)
{
	struct waitlist_entry w = {0};
	struct join_spec js = {0};
	struct err e = {0};
	char token[TOKEN_LEN + 1];

	if (api_keyed_body(rq, rs, join_fields) || api_customer_given(rq, rs))
		return;
	if (!id_valid(rq->param)) {
		response_error(rs, rq, 404, "PLAN_NOT_FOUND", "Plan not found", NULL);
		return;
	}
	js.plan_id = rq->param;
	js.quantity = api_int(rq, "quantity", 1);
	js.customer_id = api_str(rq, "customerId", NULL);
	js.email = api_str(rq, "customer", "email");
	js.name = api_str(rq, "customer", "name");
	if (waitlist_join(rq->lg, &rq->actor, &js, &w, token, &e))
		response_err(rs, rq, &e);
	else
		response_json(rs, 201, view_entry(&w, token, NULL));
}

/* The entry the :id names (the bearer, the admin or its own token, was checked before the
 * handler). Returns -1 after answering 404 or 503. */
static int entry_load(struct request *rq, struct response *rs, struct waitlist_entry *w)
{
	struct err e = {0};

	if (!id_valid(rq->param) || waitlist_get(rq->lg, rq->param, w, &e)) {
		if (e.kind == ERR_NONE || e.kind == ERR_NOT_FOUND)
			response_error(rs, rq, 404, "ENTRY_NOT_FOUND", "Waiting-list entry not found", NULL);
		else
			response_err(rs, rq, &e);
		return -1;
	}
	return 0;
}

/* An entry as the admin or its holder reads it: the offer's client secret opened (kept sealed;
 * sealed under an earlier admin token, it cannot be shown). */
static struct json_object *entry_view(const struct request *rq, const struct waitlist_entry *w)
{
	char *secret = *w->offer_secret ? ledger_unseal(rq->lg, w->offer_secret) : NULL;
	struct json_object *o = view_entry(w, NULL, secret);

	free(secret);
	return o;
}

void api_waitlist_get(struct request *rq, struct response *rs)
{
	struct waitlist_entry w = {0};

	if (entry_load(rq, rs, &w) == 0)
		response_json(rs, 200, entry_view(rq, &w));
}

void api_waitlist_leave(struct request *rq, struct response *rs)
{
	struct waitlist_entry w = {0};
	struct err e = {0};

	if (rq->json && api_body(rq, rs, no_fields))
		return;
	if (entry_load(rq, rs, &w))
		return;
	if (waitlist_leave(rq->lg, &rq->actor, rq->param, &w, &e))
		response_err(rs, rq, &e);
	else
		response_json(rs, 200, entry_view(rq, &w));
}

void api_waitlist_list(struct request *rq, struct response *rs)
{
	struct waitlist_entry *w = NULL;
	struct page_req pg = {0};
	struct err e = {0};
	char next[CURSOR_LEN];
	size_t n = 0;

	if (!id_valid(rq->param)) {
		response_error(rs, rq, 404, "PLAN_NOT_FOUND", "Plan not found", NULL);
		return;
	}
	if (api_page(rq, rs, 50, 200, &pg))
		goto out;
	if (waitlist_list(rq->lg, rq->param, &pg, &w, &n, next, &e)) {
		api_page_error(rs, rq, &e);
		goto out;
	}
	struct json_object *arr = json_object_new_array();
	for (size_t i = 0; i < n; i++)
		json_object_array_add(arr, entry_view(rq, &w[i]));
	api_page_response(rs, "entries", arr, next);
out:
	free(w);
	free(pg.cursor);
}

#define ENTRIES_MAX 100

/* GET /api/customer/waitlist: a signed-in customer's entries, newest first, with their places
 * and offers. */
void api_customer_waitlist(struct request *rq, struct response *rs)
{
	struct waitlist_entry *w = NULL;
	struct err e = {0};
	int64_t limit;
	size_t n = 0;

	if (api_query_int(rq, rs, "limit", 1, ENTRIES_MAX, 50, &limit))
		return;
	if (rq->lg->store->ops->customer_entries(rq->lg->store, rq->auth.customer_id, (int)limit, &w, &n, &e)) {
		response_err(rs, rq, &e);
		return;
	}
	struct json_object *o = json_object_new_object(), *arr = json_object_new_array();
	for (size_t i = 0; i < n; i++)
		json_object_array_add(arr, entry_view(rq, &w[i]));
	free(w);
	json_object_object_add(o, "entries", arr);
	response_json(rs, 200, o);
}
