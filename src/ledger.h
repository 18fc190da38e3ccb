/* ledger.h - the domain, once for every store: which refusal gets which code, which events a
 * change writes, cursors and retention. The purchase (purchase.h), the Idempotency-Keys of
 * other routes (idem.h), the reaper (reaper.h) and the invariants (check.h) build on it.
 *
 * Services take a struct ledger and return outcomes: 0, or -1 with e filled. A refusal has
 * e->kind ERR_NOT_FOUND, ERR_CONFLICT or ERR_INVALID and e->code the API code
 * ("PLAN_SOLD_OUT"); ERR_RETRYABLE / ERR_UNAVAILABLE mean the store could not do it now. Only
 * handlers turn outcomes into HTTP. */
#ifndef NUMATIX_LEDGER_H
#define NUMATIX_LEDGER_H

#include <stdbool.h>
#include <stddef.h>

#include "err.h"
#include "model.h"
#include "processor.h"
#include "seal.h"
#include "replica.h"
#include "store.h"

/* How the final answers of a purchase read; the API layer provides them, since they are
 * stored on the purchase's key and replayed byte for byte. Each returns a new body. */
struct ledger_replies {
	struct reply (*purchased)(const struct subscription *s, const char *access_token,
				  const char *trace_id);
	/* kept: the seats stay held (a checkout session's attempt) */
	struct reply (*declined)(const char *decline_code, bool kept, const char *trace_id);
	struct reply (*expired)(const char *trace_id);
	struct reply (*session)(const struct subscription *s, const char *client_secret, const char *trace_id);
	/* A refusal by its code (SESSION_EXPIRED, SESSION_COMPLETED, SUBSCRIPTION_NOT_ACTIVE),
	 * stored on a bound key. */
	struct reply (*refused)(const char *code, const char *trace_id);
	/* A 400 on field, stored on a bound key. */
	struct reply (*invalid)(const char *field, const char *reason, const char *trace_id);
	/* A plan change's answer: the new subscription (previous_id set) with its access token. */
	struct reply (*changed)(const struct subscription *s, const char *access_token, const char *trace_id);
	/* 402 PAYMENT_ACTION_REQUIRED: the bank asks the buyer to authenticate; the seats stay held
	 * as the checkout session session_id. client_secret: the session's, when this answer makes
	 * it (a purchase become a session), else NULL; intent_secret: Stripe's, for Stripe.js, or NULL. */
	struct reply (*action_required)(const char *session_id, const char *client_secret, const char *intent_secret,
					const char *trace_id);
};

#define DUNNING_MAX 16

struct ledger {
	struct store *store;                  /* borrowed */
	const struct ledger_replies *replies; /* borrowed */
	int hold_ttl_s;
	struct processor_settings processor;  /* strings borrowed */
	struct processor *proc;               /* borrowed; NULL: the process's own, as settings say */
	int key_retention_h;
	int offer_ttl_s;                      /* a waiting-list offer's lifetime */
	bool sealing;                         /* answers kept on keys are sealed (seal.h) */
	unsigned char seal_key[SEAL_KEY_LEN];
	struct replica *replica;              /* borrowed; a standby for public reads, or NULL */
	/* The dunning schedule (life.h): days after a period's end on which a failed renewal is
	 * tried again, ascending. */
	int dunning_days[DUNNING_MAX];
	int ndunning;
	int renewal_notice_days;              /* a period's end is mailed about this many days before; 0: never */
};

/* A secret as it is kept in the store (seal.h): sealed when the ledger seals; new. And back:
 * new, or NULL when it was sealed under another key (NUMATIX_ADMIN_TOKEN changed since). */
char *ledger_seal(const struct ledger *lg, const char *plain);
char *ledger_unseal(const struct ledger *lg, const char *kept);
/* An answer as it is kept on its key for replays (its body through ledger_seal); new body. */
struct reply ledger_reply_kept(const struct ledger *lg, const struct reply *r);
/* The store's transition and key_finish, the answer they store kept as above: every answer
 * that reaches a key goes through these (a hold's, through its reply callback). */
int ledger_transition(struct ledger *lg, const struct transition *t, const struct actor *a,
		      struct transition_out *out, struct err *e);
int ledger_key_finish(struct ledger *lg, const char *key, const struct reply *r, bool *matched, struct err *e);
/* A kept answer read back, opened in place; -1 with 409 REPLAY_UNAVAILABLE when it cannot be. */
int ledger_reply_read(const struct ledger *lg, struct reply *r, struct err *e);

/* A page of a list: limit, and the cursor of an earlier page (NULL: the first), owned by
 * whoever filled it. */
struct page_req {
	int limit;
	char *cursor;
};
/* The cursor of the next page into next ("" on the last). */
#define CURSOR_LEN 48

/* A list's cursor (`<seq>.<id>`, opaque to clients): read into *seq (0 when none), -1 with a
 * VALIDATION_ERROR when it is not one this service gave; and written for a page's last row. */
int ledger_cursor_read(const char *cursor, int64_t *seq, struct err *e);
void ledger_cursor_write(int64_t seq, const char *id, char next[CURSOR_LEN]);

/* How long a request owns its Idempotency-Key before a retry may take over (resume) its work:
 * the purchase's and every other route's. */
int64_t ledger_lease_ms(const struct ledger *lg);

/* Whether the store answers; *store_name: its kind ("sqlite", ...). */
int ledger_ping(struct ledger *lg, const char **store_name, struct err *e);

int ledger_plan_create(struct ledger *lg, const struct actor *a, const struct plan *p, struct err *e);
int ledger_plan_update(struct ledger *lg, const struct actor *a, const char *id,
		       const struct plan_patch *pt, struct plan *out, struct err *e);
int ledger_plan_get(struct ledger *lg, const char *id, struct plan *out, struct err *e);
/* The plan's held seats by kind: paying (a purchase's payment runs) and in open sessions. */
int ledger_plan_held(struct ledger *lg, const char *id, int64_t *paying, int64_t *sessions, struct err *e);
/* The payments by kind and status (store.h, payment_totals); *out: new, free(). */
int ledger_payment_totals(struct ledger *lg, struct payment_total **out, size_t *n, struct err *e);
/* The subscriptions by status (store.h, sub_totals); *out: new, free(). */
int ledger_sub_totals(struct ledger *lg, struct sub_total **out, size_t *n, struct err *e);
/* status: "active", "inactive" or NULL for all. *out: new, free each with plan_clear. */
int ledger_plan_list(struct ledger *lg, const char *status, struct plan **out, size_t *n, struct err *e);
/* The same reads for the public routes (plans, a plan, its stats): from the standby when one is
 * configured and within its bound of lag (replica.h), else, or when it fails or lacks the plan,
 * from the primary. *standby: whether the standby answered. */
int ledger_public_plan_get(struct ledger *lg, const char *id, struct plan *out, bool *standby, struct err *e);
int ledger_public_plan_list(struct ledger *lg, const char *status, struct plan **out, size_t *n, bool *standby,
			    struct err *e);
int ledger_public_plan_held(struct ledger *lg, const char *id, int64_t *paying, int64_t *sessions, bool *standby,
			    struct err *e);

int ledger_customer_create(struct ledger *lg, const struct customer *c, struct err *e);
int ledger_customer_get(struct ledger *lg, const char *id, struct customer *out, struct err *e);

int ledger_sub_get(struct ledger *lg, const char *id, struct subscription *out, struct err *e);
/* active -> cancelled with its seat back, one atomic step. out: the subscription after. */
int ledger_sub_cancel(struct ledger *lg, const struct actor *a, const char *id, struct subscription *out,
		      struct err *e);
/* A new access token for subscription id, shown once (into token): the old one stops working in
 * the same unit. A hold or session never activated has none (SUBSCRIPTION_NOT_ACTIVE). */
int ledger_token_replace(struct ledger *lg, const struct actor *a, const char *id, char token[TOKEN_LEN + 1],
			 struct subscription *out, struct err *e);
/* A customer's subscriptions, newest first. *out: new, free each with subscription_clear. */
int ledger_sub_list(struct ledger *lg, const char *customer_id, const char *status,
		    const struct page_req *pg, struct subscription **out, size_t *n,
		    char next[CURSOR_LEN], struct err *e);
int ledger_audit_list(struct ledger *lg, const struct audit_filter *f, const struct page_req *pg,
		      struct audit_event **out, size_t *n, char next[CURSOR_LEN], struct err *e);

/* The event feed: at most limit events after position `after`, oldest first, of action type
 * when not NULL (see store.h's feed_read). *out: new, free each with audit_event_clear. */
int ledger_feed(struct ledger *lg, int64_t after, const char *type, int limit, struct audit_event **out,
		size_t *n, struct err *e);

/* Every webhook endpoint, oldest first, secrets included. *out: new, free each with
 * webhook_clear. */
int ledger_webhook_list(struct ledger *lg, struct webhook **out, size_t *n, struct err *e);
/* Deletes an endpoint and its deliveries; WEBHOOK_ENDPOINT_NOT_FOUND. */
int ledger_webhook_delete(struct ledger *lg, const char *id, struct err *e);
/* A webhook endpoint by id: 0, or -1 with ERR_NOT_FOUND (WEBHOOK_ENDPOINT_NOT_FOUND). out:
 * free with webhook_clear. */
int ledger_webhook_get(struct ledger *lg, const char *id, struct webhook *out, struct err *e);
/* An endpoint's deliveries, newest event first (404 when the endpoint is not). *out: new, free(). */
/* The outbox, newest first, of a status ("queued", "sent", "failed") or all (NULL). */
int ledger_mail_list(struct ledger *lg, const char *status, const struct page_req *pg, struct mail **out, size_t *n,
		     char next[CURSOR_LEN], struct err *e);
int ledger_delivery_list(struct ledger *lg, const char *endpoint_id, const struct page_req *pg,
			 struct delivery **out, size_t *n, char next[CURSOR_LEN], struct err *e);

/* Refusals a hold and a waiting-list join share: more than the plan's max_per_order (a
 * validation error of quantity), and the customer's limit (details.limit and held). */
void ledger_refuse_order_limit(int64_t quantity, int64_t limit, struct err *e);
void ledger_refuse_customer_limit(int64_t held, int64_t limit, struct err *e);

/* The refusal of a hold for its seats: sold out (details.available), more than the plan's
 * max_per_order (a validation error of quantity), or the customer's limit (details.limit and
 * held). */
void ledger_hold_refused(const struct hold_out *h, int64_t quantity, struct err *e);

/* The detail of a payment's audit event (JSON text). New, free(). */
char *ledger_payment_detail(const struct payment *p);

#endif
