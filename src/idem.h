/* idem.h - Idempotency-Key handling shared by every write route (after the IETF draft and
 * Stripe): claim the key with the request's fingerprint, replay a finished response, refuse a
 * key still in use or reused for another request. */
#ifndef NUMATIX_IDEM_H
#define NUMATIX_IDEM_H

#include <stdbool.h>

#include "http.h"
#include "store.h"

/* The request's fingerprint: SHA-256 of method, path and the canonical body. */
void idem_fingerprint(const struct request *rq, char out[65]);

/* Checks the Idempotency-Key header (required or not) and claims it for rq. Returns 1 when
 * the request should run (claim->state is KEY_NEW or KEY_RESUME), 0 when rs holds the answer
 * (a replay, 409 in progress, 422 reused, 400 bad key, 503), and 0 with nothing done when
 * the key is absent and not required (*claimed false). claim: free with key_claim_clear. */
int idem_claim(struct request *rq, struct response *rs, bool required, struct key_claim *claim,
	       bool *claimed);

/* Ends a claimed key of a route whose effect is one atomic step: a 2xx response is stored for
 * replays; any other answer changed nothing, so the key is forgotten and stays usable. */
void idem_settle(struct request *rq, struct response *rs);

/* How long a request owns its key before a retry may take over (resume) its work. */
long long idem_lease_ms(const struct request *rq);

#endif
