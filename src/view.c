/* view.c - the JSON representations of the API (API.md), one function per object. */
#include "view.h"

#include <stdio.h>
#include <string.h>

#include "util.h"

#define ADD(o, k, v) json_object_object_add((o), (k), (v))
#define STR(s) json_object_new_string(s)
#define INT(n) json_object_new_int64(n)

struct json_object *view_time(int64_t ms)
{
	char buf[32];

	return ms ? STR(time_format(ms, buf, sizeof(buf))) : NULL;
}

static struct json_object *occupancy(const struct plan *p)
{
	double pct = p->total_capacity ? 100.0 * (double)(p->total_capacity - p->subscriptions_left) /
						 (double)p->total_capacity : 0.0;
	char text[32];
	size_t n;

	/* Two decimals, written as such: json-c would print the binary double's 17 digits. */
	n = (size_t)snprintf(text, sizeof(text), "%.2f", pct);
	while (n > 0 && text[n - 1] == '0')
		text[--n] = '\0';
	if (n > 0 && text[n - 1] == '.')
		text[--n] = '\0';
	return json_object_new_double_s(pct, text);
}

struct json_object *view_plan(const struct plan *p)
{
	struct json_object *o = json_object_new_object();
	int64_t days = term_days(p->interval, p->interval_count);

	ADD(o, "id", STR(p->id));
	ADD(o, "name", STR(p->name));
	ADD(o, "description", STR(p->description));
	ADD(o, "price_cents", INT(p->price_cents));
	ADD(o, "duration_days", days ? INT(days) : NULL);
	ADD(o, "interval", STR(period_unit_name(p->interval)));
	ADD(o, "interval_count", INT(p->interval_count));
	ADD(o, "renewal", STR(p->renews ? "auto" : "none"));
	ADD(o, "timezone", STR(p->timezone));
	ADD(o, "total_capacity", INT(p->total_capacity));
	ADD(o, "subscriptions_left", INT(p->subscriptions_left));
	ADD(o, "subscriptions_held", INT(p->subscriptions_held));
	ADD(o, "max_per_order", INT(p->max_per_order));
	ADD(o, "max_per_customer", p->max_per_customer ? INT(p->max_per_customer) : NULL);
	ADD(o, "waitlist_enabled", json_object_new_boolean(p->waitlist_enabled));
	ADD(o, "status", STR(p->status));
	ADD(o, "features", p->features ? json_object_get(p->features) : json_object_new_array());
	ADD(o, "isSoldOut", json_object_new_boolean(p->subscriptions_left == 0));
	ADD(o, "occupancyPercentage", occupancy(p));
	ADD(o, "createdAt", view_time(p->created_at));
	ADD(o, "updatedAt", view_time(p->updated_at));
	return o;
}

struct json_object *view_plan_stats(const struct plan *p, int64_t paying, int64_t sessions)
{
	struct json_object *o = json_object_new_object(), *kinds = json_object_new_object();

	ADD(o, "planId", STR(p->id));
	ADD(o, "name", STR(p->name));
	ADD(o, "totalCapacity", INT(p->total_capacity));
	ADD(o, "subscriptionsLeft", INT(p->subscriptions_left));
	ADD(o, "subscriptionsHeld", INT(p->subscriptions_held));
	ADD(kinds, "payments", INT(paying));
	ADD(kinds, "checkoutSessions", INT(sessions));
	ADD(o, "heldByKind", kinds);
	ADD(o, "maxPerOrder", INT(p->max_per_order));
	ADD(o, "maxPerCustomer", p->max_per_customer ? INT(p->max_per_customer) : NULL);
	ADD(o, "waiting", INT(p->waiting));
	ADD(o, "subscriptionsSold", INT(p->total_capacity - p->subscriptions_left - p->subscriptions_held));
	ADD(o, "occupancyPercentage", occupancy(p));
	ADD(o, "isSoldOut", json_object_new_boolean(p->subscriptions_left == 0));
	return o;
}

struct json_object *view_customer(const struct customer *c)
{
	struct json_object *o = json_object_new_object();

	ADD(o, "id", STR(c->id));
	ADD(o, "email", STR(c->email));
	ADD(o, "name", STR(c->name));
	ADD(o, "createdAt", view_time(c->created_at));
	return o;
}

/* A subscription's life (API.md, *A subscription's life*): its period, whether it renews, its
 * end, and the card its renewals are charged to. */
static void subscription_life(struct json_object *o, const struct subscription *s)
{
	const struct sub_life *l = &s->life;
	bool live = !strcmp(s->status, "active") || !strcmp(s->status, "past_due");

	ADD(o, "interval", STR(period_unit_name(l->term_unit)));
	ADD(o, "intervalCount", INT(l->term_count));
	ADD(o, "currentPeriodStart", view_time(l->period_start ? l->period_start : s->start_at));
	ADD(o, "currentPeriodEnd", view_time(s->end_at));
	ADD(o, "periodIndex", INT(l->period_index));
	ADD(o, "renews", json_object_new_boolean(live && s->plan_renews && !l->cancel_at_period_end));
	ADD(o, "cancelAtPeriodEnd", json_object_new_boolean(l->cancel_at_period_end));
	ADD(o, "cancellationReason", *l->cancellation_reason ? STR(l->cancellation_reason) : NULL);
	ADD(o, "endedAt", view_time(l->ended_at));
	ADD(o, "nextPaymentAttemptAt", !strcmp(s->status, "past_due") ? view_time(l->next_attempt_at) : NULL);
	ADD(o, "paymentMethodId", *l->payment_method ? STR(l->payment_method) : NULL);
}

static struct json_object *subscription_common(const struct subscription *s)
{
	struct json_object *o = json_object_new_object();

	ADD(o, "id", STR(s->id));
	ADD(o, "status", STR(s->status));
	ADD(o, "planId", STR(s->plan_id));
	ADD(o, "planName", STR(s->plan_name ? s->plan_name : ""));
	ADD(o, "customerId", STR(s->customer_id));
	ADD(o, "startDate", view_time(s->start_at));
	ADD(o, "endDate", view_time(s->end_at));
	ADD(o, "quantity", INT(s->quantity));
	ADD(o, "amount_cents", INT(s->amount_cents));
	ADD(o, "paymentId", *s->payment_id ? STR(s->payment_id) : NULL);
	subscription_life(o, s);
	if (*s->previous_id)
		ADD(o, "previousSubscriptionId", STR(s->previous_id));
	return o;
}

struct json_object *view_subscription(const struct subscription *s)
{
	struct json_object *o = subscription_common(s);

	ADD(o, "createdAt", view_time(s->created_at));
	ADD(o, "updatedAt", view_time(s->updated_at));
	return o;
}

struct json_object *view_purchase(const struct subscription *s, const char *access_token,
				  const char *trace_id)
{
	struct json_object *o = subscription_common(s);

	ADD(o, "accessToken", STR(access_token));
	ADD(o, "traceId", STR(trace_id));
	return o;
}

/* A checkout session is its pending subscription: open while pending, completed once it was
 * activated, expired otherwise. */
static const char *session_status(const struct subscription *s)
{
	if (!strcmp(s->status, "pending"))
		return "open";
	return !strcmp(s->status, "failed") || !strcmp(s->status, "expired") ? "expired" : "completed";
}

struct json_object *view_session(const struct subscription *s)
{
	struct json_object *o = json_object_new_object();
	const char *status = session_status(s);

	ADD(o, "id", STR(s->id));
	ADD(o, "status", STR(status));
	ADD(o, "planId", STR(s->plan_id));
	ADD(o, "customerId", STR(s->customer_id));
	ADD(o, "quantity", INT(s->quantity));
	ADD(o, "amount_cents", INT(s->amount_cents));
	ADD(o, "expiresAt", view_time(s->hold_deadline));
	ADD(o, "subscriptionId", !strcmp(status, "completed") ? STR(s->id) : NULL);
	ADD(o, "createdAt", view_time(s->created_at));
	ADD(o, "updatedAt", view_time(s->updated_at));
	return o;
}

static struct json_object *counts(const struct seat_counts *c)
{
	struct json_object *o = json_object_new_object();

	ADD(o, "total_capacity", INT(c->total));
	ADD(o, "subscriptions_left", INT(c->left));
	ADD(o, "subscriptions_held", INT(c->held));
	return o;
}

struct json_object *view_feed_event(const struct audit_event *a)
{
	struct json_object *o = json_object_new_object(), *d = json_object_new_object();

	ADD(o, "seq", INT(a->seq));
	ADD(o, "id", STR(a->id));
	ADD(o, "type", STR(a->action));
	ADD(o, "at", view_time(a->at));
	ADD(o, "traceId", STR(a->trace_id));
	ADD(d, "resourceType", STR(a->resource_type));
	ADD(d, "resourceId", STR(a->resource_id));
	ADD(d, "planId", *a->plan_id ? STR(a->plan_id) : NULL);
	ADD(d, "actorType", STR(a->actor_type));
	ADD(d, "actorId", *a->actor_id ? STR(a->actor_id) : NULL);
	ADD(d, "before", a->has_before ? counts(&a->before) : NULL);
	ADD(d, "after", a->has_after ? counts(&a->after) : NULL);
	ADD(d, "payment", a->detail ? json_tokener_parse(a->detail) : NULL);
	ADD(o, "data", d);
	return o;
}

struct json_object *view_webhook(const struct webhook *w, bool with_secret)
{
	struct json_object *o = json_object_new_object();

	ADD(o, "id", STR(w->id));
	ADD(o, "url", STR(w->url));
	ADD(o, "events", json_tokener_parse(w->events));
	ADD(o, "description", STR(w->description));
	ADD(o, "status", STR(w->status));
	if (with_secret)
		ADD(o, "secret", STR(w->secret));
	ADD(o, "createdAt", view_time(w->created_at));
	return o;
}

struct json_object *view_entry(const struct waitlist_entry *w, const char *access_token, const char *client_secret)
{
	struct json_object *o = json_object_new_object();
	bool offered = !strcmp(w->status, "offered");

	ADD(o, "id", STR(w->id));
	ADD(o, "status", STR(w->status));
	ADD(o, "planId", STR(w->plan_id));
	ADD(o, "customerId", STR(w->customer_id));
	ADD(o, "quantity", INT(w->quantity));
	ADD(o, "position", !strcmp(w->status, "waiting") ? INT(w->position) : NULL);
	ADD(o, "checkoutSessionId", offered || !strcmp(w->status, "converted") ? STR(w->session_id) : NULL);
	ADD(o, "clientSecret", offered && client_secret ? STR(client_secret) : NULL);
	ADD(o, "offerExpiresAt", offered ? view_time(w->offer_expires_at) : NULL);
	if (access_token)
		ADD(o, "accessToken", STR(access_token));
	ADD(o, "createdAt", view_time(w->created_at));
	ADD(o, "updatedAt", view_time(w->updated_at));
	return o;
}

struct json_object *view_receipt(const struct payment *p)
{
	struct json_object *o = json_object_new_object();

	ADD(o, "id", STR(p->id));
	ADD(o, "kind", STR(!strcmp(p->kind, "renewal") ? "renewal" : !strcmp(p->kind, "refund") ? "refund" : "charge"));
	ADD(o, "status", STR(p->status));
	ADD(o, "amountCents", INT(p->amount_cents));
	ADD(o, "subscriptionId", STR(p->subscription_id));
	ADD(o, "createdAt", view_time(p->created_at));
	return o;
}

struct json_object *view_delivery(const struct delivery *d)
{
	struct json_object *o = json_object_new_object();

	ADD(o, "eventId", STR(d->event_id));
	ADD(o, "seq", INT(d->seq));
	ADD(o, "attempts", INT(d->attempts));
	ADD(o, "lastStatus", d->last_status ? INT(d->last_status) : NULL);
	ADD(o, "lastError", *d->last_error ? STR(d->last_error) : NULL);
	ADD(o, "state", STR(d->state));
	ADD(o, "nextAttemptAt", !strcmp(d->state, "pending") ? view_time(d->next_attempt_at) : NULL);
	return o;
}

struct json_object *view_mail(const struct mail *m)
{
	struct json_object *o = json_object_new_object();

	ADD(o, "id", STR(m->id));
	ADD(o, "kind", STR(m->kind));
	ADD(o, "customerId", STR(m->customer_id));
	ADD(o, "eventId", STR(m->event_id));
	ADD(o, "status", STR(m->status));
	ADD(o, "attempts", INT(m->attempts));
	ADD(o, "lastError", *m->last_error ? STR(m->last_error) : NULL);
	ADD(o, "nextAttemptAt", !strcmp(m->status, "queued") ? view_time(m->next_attempt_at) : NULL);
	ADD(o, "createdAt", view_time(m->created_at));
	ADD(o, "updatedAt", view_time(m->updated_at));
	return o;
}

struct json_object *view_audit_event(const struct audit_event *a)
{
	struct json_object *o = json_object_new_object();

	ADD(o, "id", STR(a->id));
	ADD(o, "at", view_time(a->at));
	ADD(o, "action", STR(a->action));
	ADD(o, "actorType", STR(a->actor_type));
	ADD(o, "actorId", *a->actor_id ? STR(a->actor_id) : NULL);
	ADD(o, "resourceType", STR(a->resource_type));
	ADD(o, "resourceId", STR(a->resource_id));
	ADD(o, "planId", *a->plan_id ? STR(a->plan_id) : NULL);
	ADD(o, "before", a->has_before ? counts(&a->before) : NULL);
	ADD(o, "after", a->has_after ? counts(&a->after) : a->detail ? json_tokener_parse(a->detail) : NULL);
	ADD(o, "traceId", STR(a->trace_id));
	ADD(o, "ip", *a->ip ? STR(a->ip) : NULL);
	return o;
}
