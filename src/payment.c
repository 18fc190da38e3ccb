/* payment.c - the simulated payment processor, with Stripe's test payment-method names. */
#include "payment.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "metrics.h"
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

int payment_charge(struct store *s, const char *key, int64_t amount_cents, const char *method,
		   int latency_ms, struct processor_rec *out, struct err *e)
{
	const char *decline = payment_decline_code(method);
	struct processor_rec want = {0};
	int64_t start = mono_us();
	int rc;

	network_latency(latency_ms);
	want.state = decline ? PROC_DECLINED : PROC_CHARGED;
	id_new_prefixed("pay_", want.charge_id, sizeof(want.charge_id));
	snprintf(want.decline_code, sizeof(want.decline_code), "%s", decline ? decline : "");
	want.amount_cents = amount_cents;
	rc = s->ops->processor_charge(s, key, &want, out, e);
	metrics_processor("charge", mono_us() - start);
	return rc;
}

int payment_credit(struct store *s, const char *key, const char *refund_id, int64_t amount_cents,
		   struct processor_rec *out, struct err *e)
{
	struct processor_rec want = {0};
	int64_t start = mono_us();
	int rc;

	want.state = PROC_REFUNDED;
	snprintf(want.refund_id, sizeof(want.refund_id), "%s", refund_id);
	want.amount_cents = amount_cents;
	rc = s->ops->processor_charge(s, key, &want, out, e);
	metrics_processor("credit", mono_us() - start);
	return rc;
}

int payment_void(struct store *s, const char *key, struct processor_rec *out, struct err *e)
{
	char refund_id[32];
	int64_t start = mono_us();
	int rc;

	id_new_prefixed("pay_", refund_id, sizeof(refund_id));
	rc = s->ops->processor_void(s, key, refund_id, out, e);
	metrics_processor("void", mono_us() - start);
	return rc;
}
