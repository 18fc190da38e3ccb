/* api_plans.c - /api/plans: list, get, stats, create, update. */
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "metrics.h"
#include "ids.h"
#include "util.h"
#include "valid.h"
#include "view.h"

static const char *const plan_statuses[] = {"active", "inactive", NULL};

static const struct field plan_create_fields[] = {
	{"name", V_STRING, true, 1, 100, NULL, NULL},
	{"description", V_STRING, false, 0, 500, NULL, NULL},
	{"price_cents", V_INT, true, 0, 100000000000LL, NULL, NULL},
	{"duration_days", V_INT, false, 1, 36500, NULL, NULL},
	{"total_capacity", V_INT, true, 1, 1000000000LL, NULL, NULL},
	{"features", V_STRINGS, false, 0, 50, NULL, NULL},
	{"max_per_order", V_INT, false, 1, 1000, NULL, NULL},
	{"max_per_customer", V_INT_NULL, false, 1, 1000000000LL, NULL, NULL},
	{"waitlist_enabled", V_BOOL, false, 0, 0, NULL, NULL},
	{NULL, 0, false, 0, 0, NULL, NULL},
};

static const struct field plan_update_fields[] = {
	{"name", V_STRING, false, 1, 100, NULL, NULL},
	{"description", V_STRING, false, 0, 500, NULL, NULL},
	{"price_cents", V_INT, false, 0, 100000000000LL, NULL, NULL},
	{"duration_days", V_INT, false, 1, 36500, NULL, NULL},
	{"total_capacity", V_INT, false, 1, 1000000000LL, NULL, NULL},
	{"features", V_STRINGS, false, 0, 50, NULL, NULL},
	{"status", V_ENUM, false, 0, 0, plan_statuses, NULL},
	{"max_per_order", V_INT, false, 1, 1000, NULL, NULL},
	{"max_per_customer", V_INT_NULL, false, 1, 1000000000LL, NULL, NULL},
	{"waitlist_enabled", V_BOOL, false, 0, 0, NULL, NULL},
	{NULL, 0, false, 0, 0, NULL, NULL},
};

/* The plan the :id names, or -1 after a 404 (a malformed id names no plan). */
static int plan_load(struct request *rq, struct response *rs, struct plan *p)
{
	struct err e = {0};
	bool standby;

	if (!id_valid(rq->param)) {
		response_error(rs, rq, 404, "PLAN_NOT_FOUND", "Plan not found", NULL);
		return -1;
	}
	if (ledger_public_plan_get(rq->lg, rq->param, p, &standby, &e)) {
		response_err(rs, rq, &e);
		return -1;
	}
	metrics_public_read(standby);
	return 0;
}

void api_plans_list(struct request *rq, struct response *rs)
{
	char *status = request_query(rq, "status");
	struct plan *plans = NULL;
	struct err e = {0};
	size_t n = 0;
	bool standby;

	if (status && strcmp(status, "active") && strcmp(status, "inactive") && strcmp(status, "all")) {
		response_invalid(rs, rq, "status", "must be one of: active, inactive, all");
		goto out;
	}
	if (ledger_public_plan_list(rq->lg, !status ? "active" : !strcmp(status, "all") ? NULL : status, &plans, &n,
				    &standby, &e)) {
		response_err(rs, rq, &e);
		goto out;
	}
	metrics_public_read(standby);
	struct json_object *o = json_object_new_object(), *arr = json_object_new_array();
	for (size_t i = 0; i < n; i++)
		json_object_array_add(arr, view_plan(&plans[i]));
	json_object_object_add(o, "plans", arr);
	json_object_object_add(o, "count", json_object_new_int64((int64_t)n));
	response_json(rs, 200, o);
out:
	for (size_t i = 0; i < n; i++)
		plan_clear(&plans[i]);
	free(plans);
	free(status);
}

void api_plans_get(struct request *rq, struct response *rs)
{
	struct plan p = {0};

	if (plan_load(rq, rs, &p) == 0)
		response_json(rs, 200, view_plan(&p));
	plan_clear(&p);
}

void api_plans_stats(struct request *rq, struct response *rs)
{
	struct plan p = {0};

	struct err e = {0};
	int64_t paying, sessions;

	if (plan_load(rq, rs, &p) == 0) {
		bool standby;
		if (ledger_public_plan_held(rq->lg, p.id, &paying, &sessions, &standby, &e))
			response_err(rs, rq, &e);
		else
			response_json(rs, 200, view_plan_stats(&p, paying, sessions));
	}
	plan_clear(&p);
}

static struct json_object *get(struct request *rq, const char *key)
{
	struct json_object *v = NULL;

	json_object_object_get_ex(rq->json, key, &v);
	return v;
}

void api_plans_create(struct request *rq, struct response *rs)
{
	struct plan p = {0};
	struct err e = {0};
	struct json_object *v;

	if (api_body(rq, rs, plan_create_fields))
		return;
	id_new(p.id);
	p.name = xstrdup(json_object_get_string(get(rq, "name")));
	p.description = xstrdup((v = get(rq, "description")) ? json_object_get_string(v) : "");
	p.price_cents = json_object_get_int64(get(rq, "price_cents"));
	p.duration_days = (v = get(rq, "duration_days")) ? json_object_get_int64(v) : 30;
	p.total_capacity = json_object_get_int64(get(rq, "total_capacity"));
	p.subscriptions_left = p.total_capacity;
	p.max_per_order = (v = get(rq, "max_per_order")) ? json_object_get_int64(v) : PLAN_MAX_PER_ORDER_DEFAULT;
	p.max_per_customer = (v = get(rq, "max_per_customer")) ? json_object_get_int64(v) : 0;
	p.waitlist_enabled = (v = get(rq, "waitlist_enabled")) && json_object_get_boolean(v);
	strcpy(p.status, "active");
	p.features = (v = get(rq, "features")) ? json_object_get(v) : json_object_new_array();
	p.created_at = p.updated_at = now_ms();
	if (ledger_plan_create(rq->lg, &rq->actor, &p, &e))
		response_err(rs, rq, &e);
	else
		response_json(rs, 201, view_plan(&p));
	plan_clear(&p);
}

void api_plans_update(struct request *rq, struct response *rs)
{
	struct plan_patch pt = {0};
	struct plan p = {0};
	struct err e = {0};
	struct json_object *v;

	if (!id_valid(rq->param)) {
		response_error(rs, rq, 404, "PLAN_NOT_FOUND", "Plan not found", NULL);
		return;
	}
	if (api_body(rq, rs, plan_update_fields))
		return;
	if ((v = get(rq, "name")) && (pt.fields |= PLAN_F_NAME))
		pt.name = json_object_get_string(v);
	if ((v = get(rq, "description")) && (pt.fields |= PLAN_F_DESCRIPTION))
		pt.description = json_object_get_string(v);
	if ((v = get(rq, "price_cents")) && (pt.fields |= PLAN_F_PRICE))
		pt.price_cents = json_object_get_int64(v);
	if ((v = get(rq, "duration_days")) && (pt.fields |= PLAN_F_DURATION))
		pt.duration_days = json_object_get_int64(v);
	if ((v = get(rq, "total_capacity")) && (pt.fields |= PLAN_F_CAPACITY))
		pt.total_capacity = json_object_get_int64(v);
	if ((v = get(rq, "features")) && (pt.fields |= PLAN_F_FEATURES))
		pt.features = v;
	if ((v = get(rq, "status")) && (pt.fields |= PLAN_F_STATUS))
		pt.status = json_object_get_string(v);
	if ((v = get(rq, "max_per_order")) && (pt.fields |= PLAN_F_MAX_ORDER))
		pt.max_per_order = json_object_get_int64(v);
	/* null: no limit, kept as 0 */
	if (json_object_object_get_ex(rq->json, "max_per_customer", &v) && (pt.fields |= PLAN_F_MAX_CUSTOMER))
		pt.max_per_customer = v ? json_object_get_int64(v) : 0;
	if (json_object_object_get_ex(rq->json, "waitlist_enabled", &v) && (pt.fields |= PLAN_F_WAITLIST))
		pt.waitlist_enabled = json_object_get_boolean(v);
	if (!pt.fields) {
		response_invalid(rs, rq, "", "name at least one field to change");
		return;
	}
	if (ledger_plan_update(rq->lg, &rq->actor, rq->param, &pt, &p, &e))
		response_err(rs, rq, &e);
	else
		response_json(rs, 200, view_plan(&p));
	plan_clear(&p);
}
