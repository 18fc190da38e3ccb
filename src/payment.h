/* payment.h - the simulated payment processor, with Stripe's test payment-method names. It
 * plays a remote service: it keeps its own records by the purchase's Idempotency-Key (apart
 * from the ledger, see store.h), never charges twice for one key, and a key voided before its
 * charge refuses any later charge. */
#ifndef NUMATIX_PAYMENT_H
#define NUMATIX_PAYMENT_H

#include "store.h"

/* The decline code the method name asks for, or NULL if it succeeds. */
const char *payment_decline_code(const char *method);
/* Charges amount once for key, after latency_ms of simulated network time. out: the
 * processor's record for the key (PROC_CHARGED or PROC_DECLINED, or what an earlier call
 * left: PROC_REFUNDED, PROC_VOID). */
int payment_charge(struct store *s, const char *key, int64_t amount_cents, const char *method,
		   int latency_ms, struct processor_rec *out, struct err *e);
/* Credits amount to the customer once for key (a refund without a charge of its own, as a
 * plan change's), under the refund id given. out: the record after. */
int payment_credit(struct store *s, const char *key, const char *refund_id, int64_t amount_cents,
		   struct processor_rec *out, struct err *e);
/* Refunds the key's charge, or voids a key that has none. out: the record after. */
int payment_void(struct store *s, const char *key, struct processor_rec *out, struct err *e);

#endif
