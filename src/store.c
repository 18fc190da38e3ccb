/* store.c - choosing the backend by connection string, and the structs' release helpers. */
#include "store.h"

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
