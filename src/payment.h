/* payment.h - the ledger's side of the processor seam (processor.h): every call of the
 * payment processor, timed and counted for the metrics, and what the ledger records of it.
 *
 * A charge is recorded "authorized" by the unit that settles its hold, then "succeeded" once
 * captured, or "voided" when no seat keeps it; a refund "pending" until the processor made
 * it. */
#ifndef NUMATIX_PAYMENT_H
#define NUMATIX_PAYMENT_H

#include "ledger.h"
#include "processor.h"

enum pay_outcome payment_authorize(struct ledger *lg, const struct pay_req *r, struct pay_result *out);
enum pay_outcome payment_capture(struct ledger *lg, const struct pay_ref *ref, struct pay_result *out);
enum pay_outcome payment_cancel(struct ledger *lg, const struct pay_ref *ref, struct pay_result *out);
enum pay_outcome payment_refund(struct ledger *lg, const char *payment_id, const char *refund_key, int64_t max_cents,
				struct pay_result *out);
enum pay_outcome payment_lookup(struct ledger *lg, const struct pay_ref *ref, struct pay_result *out);
/* The simulated processor's authentication of the payment under key (processor.h): 0, or -1
 * when the processor is another or the payment waits for no one. */
int payment_authenticate(struct ledger *lg, const char *key, struct pay_result *out);
/* Whether an event is the processor's own (processor.h, verify_event): 0; -1 with why, and
 * *none set when this processor sends no events at all. */
int payment_verify_event(struct ledger *lg, const char *body, size_t len, const char *signature, bool *none, char *why,
			 size_t whylen);

/* A payment record as the ledger keeps it. */
void payment_of(struct payment *p, const char *key, const char *sub_id, const char *kind, const char *id,
		const char *status, const char *decline, int64_t amount, int64_t now);
/* Records a payment on its own (a void, a refund, a charge that came too late) with its
 * event, once per key and kind; *existed when one was there. */
int payment_keep(struct ledger *lg, const struct actor *a, const struct payment *p, bool *existed, struct err *e);
/* The audit action of a payment record in its status. */
const char *payment_action(const struct payment *p);

#endif
