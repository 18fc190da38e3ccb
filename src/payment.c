/* payment.c - the ledger's calls of the payment processor, and its payment records. */
#include "payment.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "util.h"

/* The process's processor, or NULL (its outcome PAY_UNKNOWN) when it cannot be opened. */
static struct processor *processor_of(struct ledger *lg, struct pay_result *out)
{
	struct processor *p = lg->proc ? lg->proc : processor_shared(&lg->processor);

	if (!p) {
		memset(out, 0, sizeof(*out));
		snprintf(out->msg, sizeof(out->msg), "the payment processor is not available");
		out->outcome = PAY_UNKNOWN;
	}
	return p;
}

/* One timed call of operation op: out->outcome is what it returns. */
#define CALL(op, expr)                                                                                    \
	do {                                                                                              \
		struct processor *p = processor_of(lg, out);                                              \
		int64_t start = mono_us();                                                                \
		if (!p)                                                                                   \
			return PAY_UNKNOWN;                                                               \
		out->outcome = (expr);                                                                    \
		metrics_processor(op, (int)out->outcome, mono_us() - start);                             \
		return out->outcome;                                                                      \
	} while (0)

/* The processor's own customer of customer_id as the store keeps it, into buf ("" when none, or
 * when the processor keeps no customers). */
static void customer_kept(struct ledger *lg, const char *customer_id, char *buf, size_t len)
{
	struct processor *p = lg->proc ? lg->proc : processor_shared(&lg->processor);
	struct customer c = {0};
	struct err e = {0};
	bool found = false;

	buf[0] = '\0';
	if (!p || !p->ops->customers || !customer_id || !*customer_id)
		return;
	if (lg->store->ops->customer_get(lg->store, customer_id, &c, &found, &e) == 0 && found)
		snprintf(buf, len, "%s", c.processor_id);
	customer_clear(&c);
}

/* The processor's customer a call was about, kept on the customer's row the first time, so that
 * later calls (a renewal a month on, past the processor's memory of its keys) name the same. */
static void customer_keep(struct ledger *lg, const char *customer_id, const char *kept, const struct pay_result *out)
{
	struct err e = {0};

	if (!customer_id || !*customer_id || !*out->customer || !strcmp(kept, out->customer))
		return;
	if (lg->store->ops->customer_processor_set(lg->store, customer_id, out->customer, &e))
		LOG_WARN(NULL, "the processor's customer of %s is not kept yet: %s", customer_id, e.msg);
}

static enum pay_outcome authorize_call(struct ledger *lg, const struct pay_req *r, struct pay_result *out)
{
	CALL(r->off_session ? "charge_saved" : "authorize",
	     r->off_session ? p->ops->charge_saved(p, r, out) : p->ops->authorize(p, r, out));
}

enum pay_outcome payment_authorize(struct ledger *lg, const struct pay_req *r, struct pay_result *out)
{
	struct pay_req with = *r;
	char kept[64];

	customer_kept(lg, r->customer_id, kept, sizeof(kept));
	with.processor_customer = *kept ? kept : NULL;
	authorize_call(lg, &with, out);
	customer_keep(lg, r->customer_id, kept, out);
	return out->outcome;
}

enum pay_outcome payment_capture(struct ledger *lg, const struct pay_ref *ref, struct pay_result *out)
{
	CALL("capture", p->ops->capture(p, ref, out));
}

enum pay_outcome payment_cancel(struct ledger *lg, const struct pay_ref *ref, struct pay_result *out)
{
	CALL("cancel", p->ops->cancel(p, ref, out));
}

enum pay_outcome payment_refund(struct ledger *lg, const char *payment_id, const char *refund_key, int64_t max_cents,
				struct pay_result *out)
{
	CALL("refund", p->ops->refund(p, payment_id, refund_key, max_cents, out));
}

static enum pay_outcome lookup_call(struct ledger *lg, const struct pay_ref *ref, struct pay_result *out)
{
	CALL("lookup", p->ops->lookup(p, ref, out));
}

enum pay_outcome payment_lookup(struct ledger *lg, const struct pay_ref *ref, struct pay_result *out)
{
	struct pay_ref with = *ref;
	char kept[64];

	customer_kept(lg, ref->id ? NULL : ref->customer_id, kept, sizeof(kept));
	with.processor_customer = *kept ? kept : NULL;
	lookup_call(lg, &with, out);
	customer_keep(lg, ref->id ? NULL : ref->customer_id, kept, out);
	return out->outcome;
}

int payment_authenticate(struct ledger *lg, const char *key, struct pay_result *out)
{
	memset(out, 0, sizeof(*out));
	/* the process's own simulated processor, never a wrapper a test put in front of it */
	if (!lg->processor.kind || strcmp(lg->processor.kind, "sim"))
		return -1;
	return processor_sim_authenticate(processor_shared(&lg->processor), key, out);
}

int payment_verify_event(struct ledger *lg, const char *body, size_t len, const char *signature, bool *none, char *why,
			 size_t whylen)
{
	struct pay_result ignored;
	struct processor *p = processor_of(lg, &ignored);

	*none = !p || !p->ops->verify_event;
	if (*none) {
		snprintf(why, whylen, "this payment processor sends no events");
		return -1;
	}
	return p->ops->verify_event(p, body, len, signature, now_ms() / 1000, why, whylen);
}

void payment_of(struct payment *p, const char *key, const char *sub_id, const char *kind, const char *id,
		const char *status, const char *decline, int64_t amount, int64_t now)
{
	memset(p, 0, sizeof(*p));
	snprintf(p->id, sizeof(p->id), "%s", id);
	snprintf(p->idem_key, sizeof(p->idem_key), "%s", key);
	snprintf(p->kind, sizeof(p->kind), "%s", kind);
	snprintf(p->status, sizeof(p->status), "%s", status);
	snprintf(p->decline_code, sizeof(p->decline_code), "%s", decline ? decline : "");
	snprintf(p->subscription_id, sizeof(p->subscription_id), "%s", sub_id);
	p->amount_cents = amount;
	p->created_at = now;
}

const char *payment_action(const struct payment *p)
{
	if (!strcmp(p->kind, "refund"))
		return "payment.refunded";
	if (!strcmp(p->kind, "dispute"))
		return "subscription.disputed";
	if (!strcmp(p->status, "authorized"))
		return "payment.authorized";
	if (!strcmp(p->status, "voided"))
		return "payment.voided";
	return !strcmp(p->status, "succeeded") ? "payment.captured" : "payment.declined";
}

int payment_keep(struct ledger *lg, const struct actor *a, const struct payment *p, bool *existed, struct err *e)
{
	char *detail = ledger_payment_detail(p);
	const struct event_spec ev[] = {{payment_action(p), "payment", p->id, EV_NO_COUNTS, detail, NULL}};
	int rc = lg->store->ops->payment_record(lg->store, p, ev, 1, a, existed, e);

	free(detail);
	return rc;
}
