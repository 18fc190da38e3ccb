/* idem.h - Idempotency-Keys of the routes whose effect is one atomic step (after the IETF
 * draft and Stripe): claim the key with the request's fingerprint, replay a finished answer,
 * refuse a key still in use or reused for another request. The purchase drives its key
 * itself (purchase.h), folded into its seat hold. */
#ifndef NUMATIX_IDEM_H
#define NUMATIX_IDEM_H

#include <stdbool.h>

#include "ledger.h"

enum idem_outcome {
	IDEM_RUN,            /* the request runs: the key is ours until idem_settle */
	IDEM_REPLAY,         /* reply: the answer stored by the first request */
	IDEM_IN_PROGRESS,    /* retry_after_s */
	IDEM_REUSED,         /* another request used this key */
};

struct idem_claim {
	enum idem_outcome outcome;
	struct reply reply;  /* body owned */
	int retry_after_s;
};
void idem_claim_clear(struct idem_claim *c);

/* The request's fingerprint: SHA-256 of method, path and the canonical body. */
void idem_fingerprint(const char *method, const char *path, struct json_object *body, char out[65]);

/* Claims key (valid, lower case) for a request. -1 with e when the store could not. */
int idem_claim(struct ledger *lg, const char *key, const char *fingerprint, struct idem_claim *out,
	       struct err *e);
/* Ends a claimed key: a 2xx answer is stored for replays; any other changed nothing, so the
 * key is forgotten and stays usable. */
void idem_settle(struct ledger *lg, const char *key, const struct reply *r, const char *trace_id);

#endif
