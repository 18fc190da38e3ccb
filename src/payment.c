/* payment.c - the simulated payment processor, with Stripe's test payment-method names. */
#include "payment.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "util.h"

static const struct {
	const char *method;
	const char *decline_code;
} declines[] = {
	{"pm_card_chargeDeclined", "generic_decline"},
	{"pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"},
	{"pm_card_chargeDeclinedExpiredCard", "expired_card"},
};

const char *payment_decline_code(const char *method)
{
	for (size_t i = 0; i < sizeof(declines) / sizeof(declines[0]); i++)
		if (!strcmp(method, declines[i].method))
			return declines[i].decline_code;
	return NULL;
}

/* The processor's round trip. Models a real network call, not a synchronisation. */
static void network_latency(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	while (ms > 0 && nanosleep(&ts, &ts) != 0)
		;
}

int payment_charge(struct store *s, const struct subscription *sub, const char *method, int latency_ms,
		   const struct audit_ctx *a, struct payment *out, struct err *e)
{
	const char *decline = payment_decline_code(method);
	bool existed;

	network_latency(latency_ms);
	memset(out, 0, sizeof(*out));
	id_new_prefixed("pay_", out->id, sizeof(out->id));
	snprintf(out->idem_key, sizeof(out->idem_key), "%s", sub->idem_key);
	snprintf(out->kind, sizeof(out->kind), "charge");
	snprintf(out->status, sizeof(out->status), "%s", decline ? "declined" : "succeeded");
	snprintf(out->decline_code, sizeof(out->decline_code), "%s", decline ? decline : "");
	snprintf(out->subscription_id, sizeof(out->subscription_id), "%s", sub->id);
	out->amount_cents = sub->amount_cents;
	out->created_at = now_ms();
	return s->ops->payment_record(s, out, &existed, a, e);
}

int payment_refund(struct store *s, const struct payment *charge, const struct audit_ctx *a,
		   struct err *e)
{
	struct payment r = {0};
	bool existed;

	id_new_prefixed("pay_", r.id, sizeof(r.id));
	snprintf(r.idem_key, sizeof(r.idem_key), "%s", charge->idem_key);
	snprintf(r.kind, sizeof(r.kind), "refund");
	snprintf(r.status, sizeof(r.status), "succeeded");
	snprintf(r.subscription_id, sizeof(r.subscription_id), "%s", charge->subscription_id);
	r.amount_cents = charge->amount_cents;
	r.created_at = now_ms();
	return s->ops->payment_record(s, &r, &existed, a, e);
}
