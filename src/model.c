/* model.c - releasing the model's structs, and the facts derived from them. */
#include "model.h"

#include <stdlib.h>
#include <string.h>

void plan_clear(struct plan *p)
{
	free(p->name);
	free(p->description);
	if (p->features)
		json_object_put(p->features);
	memset(p, 0, sizeof(*p));
}

int64_t term_days(enum period_unit u, int64_t count)
{
	return u == PERIOD_DAY ? count : u == PERIOD_WEEK ? 7 * count : 0;
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

bool sub_takes_seats(const char *status)
{
	return !strcmp(status, "pending") || !strcmp(status, "active") || !strcmp(status, "past_due");
}

bool sub_was_activated(const char *status)
{
	static const char *const served[] = {"active", "past_due", "ended", "cancelled", "changed"};

	for (size_t i = 0; i < sizeof(served) / sizeof(*served); i++)
		if (!strcmp(status, served[i]))
			return true;
	return false;
}

void audit_event_clear(struct audit_event *a)
{
	free(a->detail);
	memset(a, 0, sizeof(*a));
}

void webhook_clear(struct webhook *w)
{
	free(w->url);
	free(w->events);
	free(w->description);
	memset(w, 0, sizeof(*w));
}

void mail_clear(struct mail *m)
{
	free(m->data);
	free(m->secret);
	m->data = m->secret = NULL;
}

void key_record_clear(struct key_record *k)
{
	free(k->reply.body);
	memset(k, 0, sizeof(*k));
}
