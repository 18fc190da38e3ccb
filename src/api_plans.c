/* api_plans.c - /api/plans: list, get, stats, create, update. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "metrics.h"
#include "ids.h"
#include "period.h"
#include "util.h"
#include "valid.h"
#include "view.h"

static const char *const plan_statuses[] = {"active", "inactive", NULL};
static const char *const intervals[] = {"day", "week", "month", "year", NULL};
static const char *const renewals[] = {"auto", "none", NULL};

#define TERM_FIELDS                                                             \
	{"interval", V_ENUM, false, 0, 0, intervals, NULL},                     \
	{"interval_count", V_INT, false, 1, PERIOD_COUNT_MAX, NULL, NULL},      \
	{"renewal", V_ENUM, false, 0, 0, renewals, NULL},                       \
	{"timezone", V_STRING, false, 1, PERIOD_ZONE_MAX, NULL, NULL}

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
	TERM_FIELDS,
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
	TERM_FIELDS,
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

/* A plan's term from a body: duration_days is a term of days (as before intervals), or
 * interval with interval_count (1 when not given), never both; timezone an IANA zone. The
 * fields given are added to *fields (PLAN_F_INTERVAL, PLAN_F_TIMEZONE, PLAN_F_RENEWAL). -1 after
 * a 400. */
static int terms_read(struct request *rq, struct response *rs, enum period_unit *unit, int64_t *count,
		      const char **zone, bool *renews, unsigned *fields)
{
	struct json_object *days = get(rq, "duration_days"), *iv = get(rq, "interval"), *n = get(rq, "interval_count");
	struct json_object *v;

	if (days && (iv || n)) {
		response_invalid(rs, rq, "duration_days", "give duration_days, or interval and interval_count, not both");
		return -1;
	}
	if (days || iv || n) {
		*fields |= PLAN_F_INTERVAL;
		*unit = PERIOD_DAY;
		if (iv)
			period_unit_parse(json_object_get_string(iv), unit);
		*count = days ? json_object_get_int64(days) : n ? json_object_get_int64(n) : 1;
	}
	if ((v = get(rq, "timezone"))) {
		*zone = json_object_get_string(v);
		if (!period_zone_known(*zone)) {
			response_invalid(rs, rq, "timezone", "must be an IANA time zone name, such as Europe/Berlin or UTC");
			return -1;
		}
		*fields |= PLAN_F_TIMEZONE;
	}
	if ((v = get(rq, "renewal"))) {
		*renews = !strcmp(json_object_get_string(v), "auto");
		*fields |= PLAN_F_RENEWAL;
	}
	return 0;
}

void api_plans_create(struct request *rq, struct response *rs)
{
	struct plan p = {0};
	struct err e = {0};
	struct json_object *v;

	const char *zone = "UTC";
	unsigned given = 0;

	if (api_body(rq, rs, plan_create_fields))
		return;
	p.interval = PERIOD_DAY;
	p.interval_count = 30;
	if (terms_read(rq, rs, &p.interval, &p.interval_count, &zone, &p.renews, &given))
		return;
	snprintf(p.timezone, sizeof(p.timezone), "%s", zone);
	id_new(p.id);
	p.name = xstrdup(json_object_get_string(get(rq, "name")));
	p.description = xstrdup((v = get(rq, "description")) ? json_object_get_string(v) : "");
	p.price_cents = json_object_get_int64(get(rq, "price_cents"));
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
	if (terms_read(rq, rs, &pt.interval, &pt.interval_count, &pt.timezone, &pt.renews, &pt.fields))
		return;
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
