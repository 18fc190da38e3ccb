/* model.c - releasing the model's structs. */
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

void key_record_clear(struct key_record *k)
{
	free(k->reply.body);
	memset(k, 0, sizeof(*k));
}
