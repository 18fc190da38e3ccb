/* outbox.c - the mail each change writes, and what check() asks of the outbox. */
#include "outbox.h"

#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "util.h"

const char *const outbox_kinds[OUTBOX_KINDS] = {MAIL_RECEIPT, MAIL_PAYMENT_FAILED, MAIL_ENDED, MAIL_OFFER,
						    MAIL_LOGIN, MAIL_REMINDER};

int outbox_kind_index(const char *kind)
{
	for (int i = 0; i < OUTBOX_KINDS; i++)
		if (!strcmp(kind, outbox_kinds[i]))
			return i;
	return -1;
}

void outbox_mail_clear(struct outbox_mail *m)
{
	free(m->data);
	memset(m, 0, sizeof(*m));
}

static void add_str(struct json_object *o, const char *key, const char *v)
{
	json_object_object_add(o, key, json_object_new_string(v ? v : ""));
}

static void add_int(struct json_object *o, const char *key, int64_t v)
{
	json_object_object_add(o, key, json_object_new_int64(v));
}

/* The facts of a subscription every mail about one shows. */
static struct json_object *about(const struct subscription *sub)
{
	struct json_object *o = json_object_new_object();

	add_str(o, "subscriptionId", sub->id);
	add_str(o, "planId", sub->plan_id);
	add_str(o, "planName", sub->plan_name);
	add_int(o, "quantity", sub->quantity);
	add_str(o, "zone", *sub->life.term_zone ? sub->life.term_zone : "UTC");
	return o;
}

/* The row's data, with the trace of the change that sends it (the mail's X-Trace-Id). */
static void finish(struct outbox_mail *m, const char *kind, const char *customer_id, struct json_object *o,
		   const char *trace_id)
{
	if (trace_id && *trace_id)
		add_str(o, "traceId", trace_id);
	memset(m, 0, sizeof(*m));
	m->data = xstrdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	json_object_put(o);
	m->spec = (struct mail_spec){kind, customer_id, m->data, NULL};
}

void outbox_receipt(struct outbox_mail *m, const struct subscription *sub, const struct payment *p, const char *what,
		    const char *trace_id)
{
	struct json_object *o = about(sub);

	add_str(o, "paymentId", p->id);
	add_str(o, "what", what);
	add_int(o, "amountCents", p->amount_cents);
	add_int(o, "paidAt", p->created_at);
	add_int(o, "periodStart", sub->life.period_start ? sub->life.period_start : sub->start_at);
	add_int(o, "periodEnd", sub->end_at);
	add_int(o, "renews", sub->plan_renews && !sub->life.cancel_at_period_end);
	finish(m, MAIL_RECEIPT, sub->customer_id, o, trace_id);
}

void outbox_payment_failed(struct outbox_mail *m, const struct subscription *sub, int64_t next_attempt_at,
			   const char *decline_code, const char *trace_id)
{
	struct json_object *o = about(sub);

	add_int(o, "amountCents", sub->amount_cents);
	add_int(o, "nextAttemptAt", next_attempt_at);
	add_str(o, "declineCode", decline_code);
	finish(m, MAIL_PAYMENT_FAILED, sub->customer_id, o, trace_id);
}

void outbox_ended(struct outbox_mail *m, const struct subscription *sub, const char *status, int64_t at,
		  const char *trace_id)
{
	struct json_object *o = about(sub);

	add_str(o, "status", status);
	add_str(o, "reason", sub->life.cancellation_reason);
	add_int(o, "endedAt", at);
	finish(m, MAIL_ENDED, sub->customer_id, o, trace_id);
}

void outbox_offer(struct outbox_mail *m, const struct waitlist_entry *w, const char *trace_id)
{
	struct json_object *o = json_object_new_object();

	add_str(o, "entryId", w->id);
	add_str(o, "sessionId", w->session_id);
	add_str(o, "planId", w->plan_id);
	add_int(o, "quantity", w->quantity);
	add_int(o, "expiresAt", w->offer_expires_at);
	finish(m, MAIL_OFFER, w->customer_id, o, trace_id);
}

void outbox_reminder(struct outbox_mail *m, const struct subscription *sub, const char *trace_id)
{
	struct json_object *o = about(sub);

	add_int(o, "amountCents", sub->amount_cents);
	add_int(o, "periodEnd", sub->end_at);
	add_int(o, "renews", sub->plan_renews && !sub->life.cancel_at_period_end);
	finish(m, MAIL_REMINDER, sub->customer_id, o, trace_id);
}

void outbox_login(struct outbox_mail *m, int64_t expires_at, const char *sealed_token, const char *trace_id)
{
	struct json_object *o = json_object_new_object();

	add_int(o, "expiresAt", expires_at);
	finish(m, MAIL_LOGIN, NULL, o, trace_id);
	m->spec.secret = sealed_token;
}

static const struct cause {
	const char *kind, *action;
} causes[] = {
	{MAIL_RECEIPT, "payment.captured"},
	{MAIL_RECEIPT, "payment.succeeded"},
	{MAIL_PAYMENT_FAILED, "subscription.past_due"},
	{MAIL_ENDED, "subscription.ended"},
	{MAIL_ENDED, "subscription.cancelled"},
	{MAIL_OFFER, "waitlist.offered"},
	{MAIL_LOGIN, "customer.login_requested"},
	{MAIL_REMINDER, "subscription.period_ending"},
};

bool outbox_caused_by(const char *kind, const char *action)
{
	for (size_t i = 0; i < sizeof(causes) / sizeof(causes[0]); i++)
		if (!strcmp(causes[i].kind, kind) && !strcmp(causes[i].action, action))
			return true;
	return false;
}

bool outbox_leaks(const char *text)
{
	/* the forms of ids.h's tokens and secrets, a customer session, webhook and Stripe keys */
	static const char *const shapes[] = {"sat_", "cst_", "wlt_", "cse_", "lnk_", "whsec_", "sk_test_", "sk_live_",
					     "rk_live_", "nx1."};

	for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++)
		if (strstr(text, shapes[i]))
			return true;
	return false;
}
