/* store.c - choosing the backend by connection string, and the structs' release helpers. */
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

struct store *store_open(const char *url, struct err *e)
{
	if (!strncmp(url, "sqlite://", 9))
		return store_sqlite_open(url, e);
	if (!strncmp(url, "mongodb://", 10) || !strncmp(url, "mongodb+srv://", 14))
		return store_mongo_open(url, e);
	err_set(e, ERR_UNAVAILABLE, "SERVICE_UNAVAILABLE",
		"no store in this build serves \"%.*s\"; use sqlite:// or mongodb://",
		(int)strcspn(url, ":"), url);
	return NULL;
}

void store_close(struct store *s)
{
	if (s)
		s->ops->close(s);
}

void plan_clear(struct plan *p)
{
	free(p->name);
	free(p->description);
	if (p->features)
		json_object_put(p->features);
	memset(p, 0, sizeof(*p));
}

void customer_clear(struct customer *c)
{
	free(c->email);
	free(c->name);
	memset(c, 0, sizeof(*c));
}

void subscription_clear(struct subscription *s)
{
	free(s->plan_name);
	memset(s, 0, sizeof(*s));
}

void key_claim_clear(struct key_claim *k)
{
	free(k->body);
	memset(k, 0, sizeof(*k));
}

void audit_event_clear(struct audit_event *a)
{
	free(a->before);
	free(a->after);
	memset(a, 0, sizeof(*a));
}

char *audit_counts_json(int64_t total, int64_t left, int64_t held)
{
	struct json_object *o = json_object_new_object();
	char *s;

	json_object_object_add(o, "total_capacity", json_object_new_int64(total));
	json_object_object_add(o, "subscriptions_left", json_object_new_int64(left));
	json_object_object_add(o, "subscriptions_held", json_object_new_int64(held));
	s = xstrdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	json_object_put(o);
	return s;
}

int plan_apply_patch(struct plan *p, const struct plan_patch *pt, int64_t now, struct err *e)
{
	if (pt->fields & PLAN_F_CAPACITY) {
		int64_t delta = pt->total_capacity - p->total_capacity;
		/* Seats sold or held stay taken: the capacity moves only what is left. */
		if (p->subscriptions_left + delta < 0) {
			err_set(e, ERR_CONFLICT, "CAPACITY_BELOW_SOLD", "capacity %lld is below the %lld seats sold or held",
				(long long)pt->total_capacity, (long long)(p->total_capacity - p->subscriptions_left));
			return -1;
		}
		p->total_capacity = pt->total_capacity;
		p->subscriptions_left += delta;
	}
	if (pt->fields & PLAN_F_NAME) {
		free(p->name);
		p->name = xstrdup(pt->name);
	}
	if (pt->fields & PLAN_F_DESCRIPTION) {
		free(p->description);
		p->description = xstrdup(pt->description);
	}
	if (pt->fields & PLAN_F_PRICE)
		p->price_cents = pt->price_cents;
	if (pt->fields & PLAN_F_DURATION)
		p->duration_days = pt->duration_days;
	if (pt->fields & PLAN_F_STATUS)
		snprintf(p->status, sizeof(p->status), "%s", pt->status);
	if (pt->fields & PLAN_F_FEATURES) {
		json_object_put(p->features);
		p->features = json_object_get(pt->features);
	}
	p->updated_at = now;
	return 0;
}

char *audit_payment_json(const struct payment *p)
{
	struct json_object *o = json_object_new_object();
	char *s;

	json_object_object_add(o, "paymentId", json_object_new_string(p->id));
	json_object_object_add(o, "amount_cents", json_object_new_int64(p->amount_cents));
	json_object_object_add(o, "status", json_object_new_string(p->status));
	if (*p->decline_code)
		json_object_object_add(o, "declineCode", json_object_new_string(p->decline_code));
	s = xstrdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	json_object_put(o);
	return s;
}
