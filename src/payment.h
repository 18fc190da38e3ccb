/* payment.h - the simulated payment processor, with Stripe's test payment-method names.
 * It is keyed by the purchase's Idempotency-Key and never charges twice for one key: every
 * charge, decline and refund is a payment record in the store. */
#ifndef NUMATIX_PAYMENT_H
#define NUMATIX_PAYMENT_H

#include <stdbool.h>

#include "store.h"

/* The decline code the method name asks for, or NULL if it succeeds. */
const char *payment_decline_code(const char *method);
/* Charges sub's amount once for sub's key, after latency_ms of simulated network time.
 * out: the charge record (succeeded or declined), the earlier one on a retry. */
int payment_charge(struct store *s, const struct subscription *sub, const char *method, int latency_ms,
		   const struct audit_ctx *a, struct payment *out, struct err *e);
/* Refunds a successful charge once; a second call finds the first refund. */
int payment_refund(struct store *s, const struct payment *charge, const struct audit_ctx *a,
		   struct err *e);

#endif
