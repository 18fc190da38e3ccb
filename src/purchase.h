/* purchase.h - the purchase state machine of DESIGN.md, in two units of the store: claim
 * the key and hold the seats; charge outside any transaction; record the charge and settle.
 * The key records how far a request got, so a retry resumes from there.
 *
 * A checkout session is the same machine stopped after its hold: its pending subscription,
 * with a client secret, open until its deadline. Completing it is a payment attempt under a
 * key of its own (one attempt at a time, recorded on the session), settled like a purchase's,
 * except that a decline leaves the session open. A purchase is a session created and
 * completed in one request, its own key the attempt. */
#ifndef NUMATIX_PURCHASE_H
#define NUMATIX_PURCHASE_H

#include <stdbool.h>

#include "ledger.h"

struct purchase_req {
	const char *key;             /* the Idempotency-Key, valid and lower case */
	const char *fingerprint;     /* of the request: method, path, canonical body */
	const char *plan_id;
	int64_t quantity;            /* seats, >= 1 */
	const char *payment_method;
	const char *customer_id;     /* or */
	const char *email, *name;    /* a customer found by email or created */
};

enum purchase_end {
	PURCHASE_ANSWERED,           /* reply: the final answer (this run's, or stored) */
	PURCHASE_REFUSED,            /* err: a refusal with its code, or the store unavailable */
	PURCHASE_IN_PROGRESS,        /* another request runs this key: retry_after_s */
	PURCHASE_KEY_REUSED,         /* the key was used for another request */
};

struct purchase_result {
	enum purchase_end end;
	struct reply reply;          /* body owned */
	bool replayed;               /* the reply was stored by an earlier request */
	int retry_after_s;
	struct err err;
};
void purchase_result_clear(struct purchase_result *r);

/* Runs the purchase (its input already validated). a: who acts (its id may be NULL). */
void purchase_run(struct ledger *lg, const struct actor *a, const struct purchase_req *p,
		  struct purchase_result *out);

struct checkout_req {
	const char *key;             /* the Idempotency-Key, valid and lower case */
	const char *fingerprint;
	const char *plan_id;
	int64_t quantity;
	int expires_in_s;
	const char *customer_id;     /* or */
	const char *email, *name;
};

/* Creates a checkout session: holds its seats until its deadline; the 201 answer (with the
 * client secret) is stored on the key in the same unit. */
void checkout_create(struct ledger *lg, const struct actor *a, const struct checkout_req *q,
		     struct purchase_result *out);
/* Completes an open session with a payment method, under key (claimed by the caller):
 * SESSION_NOT_FOUND, SESSION_EXPIRED and SESSION_COMPLETED refusals change nothing;
 * PURCHASE_IN_PROGRESS when another completion runs. Every answer after the charge was tried
 * is stored on key. */
void checkout_complete(struct ledger *lg, const struct actor *a, const char *session_id, const char *key,
		       const char *method, struct purchase_result *out);
/* Expires an open session now (its seats back, its attempt's charge refunded); an expired one
 * is returned unchanged; SESSION_COMPLETED, SESSION_NOT_FOUND. A waiting-list offer's entry
 * becomes entry_to (NULL: "expired"). out: the session after. */
/* The simulated bank's page (the simulated processor only): the buyer authenticates the
 * payment the session's attempt waits with. 0, or -1 with e: SESSION_NOT_FOUND, the session
 * closed, NO_PAYMENT_TO_AUTHENTICATE (none waits, or the processor is not the simulated one). */
int checkout_authenticate(struct ledger *lg, const char *session_id, struct err *e);

int checkout_expire(struct ledger *lg, const struct actor *a, const char *session_id, const char *entry_to,
		    struct subscription *out, struct err *e);

struct change_req {
	const char *key;             /* the Idempotency-Key, valid and lower case */
	const char *fingerprint;
	const char *sub_id;          /* the subscription to change */
	const char *plan_id;         /* the new plan */
	const char *payment_method;  /* NULL when none was given */
};

/* Changes an active subscription to another plan: holds the new plan's seats (refused unless
 * the old one is active), charges the prorated difference outside any transaction (a decline
 * gives the held seats back and leaves the old subscription as it was), then one unit makes
 * the new subscription active and the old one `changed`, its seats back. A credit (the new
 * plan costs less) is recorded in that unit as a pending refund and made by the processor
 * after it (by the reaper if this request dies first). */
void plan_change(struct ledger *lg, const struct actor *a, const struct change_req *c, struct purchase_result *out);
/* The prorated difference at now in the period [period_start, end): new_amount's share of the
 * part left less old_amount's, each rounded half away from zero to the cent; 0 once the period
 * is over. */
int64_t plan_change_prorate(int64_t new_amount, int64_t old_amount, int64_t period_start, int64_t end, int64_t now);
/* Has the processor make a pending refund (a plan change's credit) from the captured charges
 * of the chain it is of, newest first, then marks it made. */
int purchase_credit(struct ledger *lg, const struct actor *a, const struct payment *refund, struct err *e);

/* Expires a pending hold past its deadline (seat back, HOLD_EXPIRED stored on its key),
 * recording the charge when one was authorized, then has the processor void the key's
 * authorization. *moved: whether this call expired it. Used by the purchase and the reaper. */
int purchase_expire(struct ledger *lg, const struct actor *a, const struct subscription *sub,
		    const struct payment *charge, int64_t now, bool *moved, struct err *e);
/* No seat keeps the money of payment attempt key of subscription sub (its payment's id at the
 * processor when known, else NULL): the processor voids
 * its authorization (or closes the key, so that none comes under it later), or refunds it whole
 * when it was captured; the ledger records what was done. */
int purchase_void(struct ledger *lg, const struct actor *a, const char *key, const struct subscription *sub,
		  const char *payment_id, struct err *e);
/* An authorized charge the ledger recorded, finished: captured when its subscription keeps it,
 * else voided; the ledger records which (the reaper's sweep). */
int purchase_finish(struct ledger *lg, const struct actor *a, const struct payment *charge, struct err *e);
/* The processor's word (an event) that payment key of subscription sub_id changed: the
 * payment is looked up and, while the subscription's hold still waits on that attempt, settled
 * through the request's own steps (its answer stored on the key for the client's retry); settled
 * already, another attempt's, or a plan change's (its request or the reaper settles it):
 * nothing. */
int purchase_event(struct ledger *lg, const struct actor *a, const char *sub_id, const char *key,
		   const char *payment_id, struct err *e);
/* A dispute of payment payment_id of subscription sub_id, flagged once for the operator
 * (subscription.disputed); seats do not move. */
int purchase_dispute(struct ledger *lg, const struct actor *a, const char *sub_id, const char *dispute_id,
		     const char *payment_id, int64_t amount_cents, struct err *e);
/* Moves payment p from status `from` to its own, with its event. */
int purchase_mark(struct ledger *lg, const struct actor *a, const struct payment *p, const char *from, struct err *e);

#endif
