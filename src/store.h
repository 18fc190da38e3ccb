/* store.h - the store interface: atomic primitives in the words of the domain, each one
 * atomic unit in the database, built from that database's strongest native mechanism.
 *
 * A store keeps and reports facts: rows, counts and an outcome enum. It never decides which
 * API code a refusal gets, which event a change writes or what a client sees: the ledger
 * (purchase.c, ledger.c, reaper.c, check.c) does, once for every store. The events a unit
 * writes are given to it as event_spec lists; the store fills in the seat counts before and
 * after the unit's own seat move, inside the unit.
 *
 * Every function returns 0 on success and -1 on error with e filled: ERR_RETRYABLE and
 * ERR_UNAVAILABLE mean nothing was written and the caller may retry; ERR_INTERNAL a broken
 * assumption. e->code is never set by a store. A primitive whose condition does not hold
 * returns 0 with its outcome saying so, and wrote nothing. Output structs are filled by the
 * callee and own their strings: release them with the matching *_clear of model.h. */
#ifndef NUMATIX_STORE_H
#define NUMATIX_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "model.h"

/* An audit event a unit writes; the store adds time, actor, plan and seat counts. */
enum event_counts {
	EV_NO_COUNTS,     /* detail only (a payment) */
	EV_AFTER,         /* the counts after the unit (a plan created) */
	EV_BEFORE_AFTER,  /* the counts before and after the unit */
};

/* The mail an event sends (outbox.h): a row of the outbox written with the event, in its unit,
 * queued and due at once. */
struct mail_spec {
	const char *kind;
	const char *customer_id;
	const char *data;                 /* JSON object */
	const char *secret;               /* sealed, or NULL */
};

struct event_spec {
	const char *action;
	const char *resource_type;
	const char *resource_id;
	enum event_counts counts;
	const char *detail;               /* JSON text or NULL */
	const struct mail_spec *mail;     /* NULL: the event sends none */
};

/* --- outcomes ------------------------------------------------------------------------------ */

enum write_result {
	WRITE_DONE,
	WRITE_NOT_FOUND,      /* no such row */
	WRITE_DUPLICATE,      /* a unique name or email is taken */
	WRITE_SEATS_SHORT,    /* a capacity change would leave fewer than 0 seats */
};

enum claim_result {
	CLAIM_NEW,            /* the key was absent and is now ours (KEY_STARTED, our lease) */
	CLAIM_EXISTS,         /* the key exists: see the record and taken_over */
};

struct claim {
	enum claim_result result;
	struct key_record key;            /* CLAIM_EXISTS: the record as found */
	/* CLAIM_EXISTS: same fingerprint, not done, its lease ended: the lease is now ours. */
	bool taken_over;
};
void claim_clear(struct claim *c);

/* Claims an Idempotency-Key: inserted as KEY_STARTED if absent; if present with the same
 * fingerprint, not done and its lease ended, the lease is taken over. Both one atomic step. */
struct claim_req {
	const char *key;
	const char *fingerprint;
	int64_t now;
	int64_t lease_until;
};

/* A purchase's first unit: claim the key and, when the key is new, find or create the
 * customer, take `quantity` seats (status active, quantity <= max_per_order and <= left, and
 * the customer's seats of the plan in pending and active subscriptions plus quantity within
 * max_per_customer), create the pending subscription (amount_cents = price_cents x quantity),
 * write the events (with the buyer as their actor) and keep the key as KEY_HELD. All or
 * nothing: when the hold is refused the key is not kept either. The customer's count is
 * taken after the plan's seats, so holds of one plan meet at its row and two cannot both
 * pass the limit. */
struct hold_req {
	struct claim_req claim;
	const char *subscription_id;      /* made by the ledger */
	const char *plan_id;
	int64_t quantity;                 /* >= 1 */
	const char *customer_id;          /* an existing customer, or */
	const struct customer *customer;  /* found by email (case-insensitive) or created */
	int64_t deadline;
	const struct event_spec *events;  /* on the seat move */
	size_t nevents;
	const char *secret_hash;          /* a checkout session's client secret hash, or NULL */
	/* A plan change: the subscription it replaces, which must be active (and the customer's)
	 * when the seats are taken; NULL otherwise. */
	const char *previous_id;
	bool attempt;                     /* the key's request pays now: it is the attempt */
	/* When given, the unit's final answer, built from the subscription as held: the key is
	 * kept done with it (a checkout session's creation) instead of KEY_HELD. */
	struct reply (*reply)(const struct subscription *sub, void *arg);
	void *reply_arg;
};

enum hold_result {
	HOLD_TAKEN,
	HOLD_KEY_EXISTS,      /* nothing taken: claim tells about the key */
	HOLD_NO_PLAN,
	HOLD_PLAN_INACTIVE,
	HOLD_SOLD_OUT,        /* available: the seats left; waiting: entries in the plan's line */
	HOLD_ORDER_LIMIT,     /* limit: the plan's max_per_order */
	HOLD_CUSTOMER_LIMIT,  /* limit: max_per_customer; held: the customer's seats of the plan */
	HOLD_NO_CUSTOMER,
	HOLD_PREVIOUS_INACTIVE, /* previous_id is not an active subscription of the customer */
};

struct hold_out {
	enum hold_result result;
	int64_t available, limit, held;   /* the refusal's facts */
	int64_t waiting;
	struct claim claim;               /* HOLD_KEY_EXISTS */
	struct subscription sub;          /* HOLD_TAKEN */
};
void hold_out_clear(struct hold_out *h);

/* Waiting lists: offers. A unit that gives seats of a plan back (a transition with dleft > 0,
 * a capacity increase, an entry leaving) then offers them to the plan's line in the same unit,
 * strictly in order: while the first waiting entry's whole quantity is free, its seats are
 * taken, its checkout session made (a pending subscription: the entry's session id, offer
 * key and secret hash, the plan's price, deadline now + the entry's offer TTL) and the entry
 * marked offered, with the events waitlist.offered, seat.held and checkout.created
 * (store_offer_events). An entry behind one that does not fit waits. */

/* Moves a subscription from one status to another if it is in `from` (and, when given, its
 * hold deadline is after live_after / at or before due_by), moving seats of its plan by dleft
 * and dheld times its quantity, recording the payment (unique per key and kind), writing the events and storing
 * the reply on the subscription's key, all in one atomic step. */
struct transition {
	const char *sub_id;
	const char *from;
	int64_t live_after;               /* > 0: require hold_deadline > live_after */
	int64_t due_by;                   /* > 0: require hold_deadline <= due_by */
	const char *to;
	int64_t now;
	int dleft, dheld;                 /* per seat: the store multiplies by the quantity */
	/* to "active": the charge and the access token's hash */
	const char *payment_id;
	int64_t start_at, end_at;
	const char *token_hash;
	const struct payment *payment;    /* recorded in the unit, or NULL */
	const struct event_spec *events;
	size_t nevents;
	const struct reply *reply;        /* stored on reply_key (not yet done), or NULL */
	const char *reply_key;            /* NULL: the subscription's own key */
	const char *attempt;              /* non-NULL: require this payment attempt */
	bool attempt_end;                 /* the attempt ended (a decline): clear it */
	bool attempt_release;             /* the attempt waits for the buyer: its lease set to 0 */
	/* non-NULL: a purchase becomes a checkout session with this client secret's hash; require
	 * that it was none */
	const char *secret_hash;
	/* Another move in the same unit (a plan change: the replaced subscription active ->
	 * changed, its seats back on its own plan, its events); both happen or neither. Its
	 * payment, reply and also are not used. */
	const struct transition *also;
	/* The subscription is a waiting-list offer's session (entry_id set): its entry moves from
	 * offered to this ("converted", "expired", "left") in the unit. */
	const char *entry_to;
	/* A move of its life (an activation, a renewal, a failed one, an end, a schedule). */
	struct life_move {
		/* the life after the move, kept whole (with the transition's end_at); NULL: untouched */
		const struct sub_life *set;
		/* require the life as the caller read it: the period (end_at), the next attempt, the
		 * schedule and the card, so that two renewers, or a renewer and its holder, never both
		 * move it (nor one put back what the other changed) */
		bool check;
		int64_t end_at, next_attempt_at;
		bool cancel_at_period_end;
		const char *payment_method;   /* with check: the card as read ("" none) */
	} life;
};

enum transition_result {
	MOVED,
	MOVE_NOT_FOUND,
	MOVE_REFUSED,         /* status or deadline did not match; sub tells the facts */
	MOVE_ALSO_REFUSED,    /* the first move matched, the other did not: nothing moved */
};

struct transition_out {
	enum transition_result result;
	struct subscription sub;          /* after the step (MOVED) or as found (MOVE_REFUSED) */
};
void transition_out_clear(struct transition_out *t);

/* Joining a plan's waiting list: the customer (an existing one, or found by email or
 * created), then in one unit: the plan active with waitlist_enabled, quantity within its
 * max_per_order, a new buyer unable to get the quantity (fewer seats left, or anyone waiting
 * already), the customer's seats (held, active and in live entries) plus quantity within
 * max_per_customer, no live (waiting or offered) entry of the customer's on the plan; then
 * the entry inserted at the end of the line, the plan's waiting count up, its events. */
struct join_req {
	const struct waitlist_entry *entry;  /* all but customer_id, status, seq and position */
	const char *customer_id;
	const struct customer *customer;
	const struct event_spec *events;
	size_t nevents;
};

enum join_result {
	JOIN_DONE,
	JOIN_NO_PLAN,
	JOIN_PLAN_INACTIVE,
	JOIN_DISABLED,
	JOIN_ORDER_LIMIT,     /* limit: max_per_order */
	JOIN_SEATS_AVAILABLE, /* available: the seats a new buyer could take now */
	JOIN_CUSTOMER_LIMIT,  /* limit, held */
	JOIN_ALREADY_WAITING,
	JOIN_NO_CUSTOMER,
};

struct join_out {
	enum join_result result;
	int64_t available, limit, held;
	struct waitlist_entry entry;      /* JOIN_DONE: as kept, with its position */
};

/* A page of rows in the store's descending order of (seq, id): the rows after the position
 * (before_seq, before_id), or from the newest when before_seq is 0. A store whose seq is
 * unique may ignore before_id. */
struct seq_page {
	int64_t before_seq;
	char before_id[ID_LEN + 1];
	int limit;
};

struct audit_filter {
	const char *plan_id, *trace_id, *action;  /* each may be NULL */
};

/* The ledger's payments counted and summed by kind and status (the dashboard's). */
struct payment_total {
	char kind[8];
	char status[12];
	int64_t count, amount_cents;
};
#define PAYMENT_TOTALS_MAX 32

/* The subscriptions counted by status, with their seats (the metrics'). */
struct sub_total {
	char status[16];
	int64_t count, seats;
};
#define SUB_TOTALS_MAX 16

/* Each plan with the facts check() needs, read in the same snapshot as the rest. */
struct plan_tally {
	const struct plan *plan;
	/* seats taken and given back by the plan's seat.held and seat.released events */
	int64_t held_seats, released_seats;
	bool has_last;                    /* the newest event with seat counts */
	int64_t last_left;
};

/* check()'s walk over the store, in one read snapshot: every plan, then every
 * subscription ordered by key, then every payment ordered by key, then every waiting-list
 * entry ordered by plan and place. A callback returning -1 stops the walk. */
struct snapshot_visitor {
	void *arg;
	int (*plan)(void *arg, const struct plan_tally *t);
	int (*subscription)(void *arg, const struct subscription *s);
	int (*payment)(void *arg, const struct payment *p);
	int (*entry)(void *arg, const struct waitlist_entry *w);
	int (*mail)(void *arg, const struct mail *m);    /* ordered by id, with event_action */
};

/* A login link asked for (login_link). */
struct login_req {
	const char *email;                /* lowercase */
	const char *link_id;              /* the link's id, and its token's SHA-256 */
	const char *token_hash;
	int64_t now, expires_at;
	int64_t since;                    /* at most limit links of an address made after since */
	int limit;
};

enum login_result {
	LOGIN_SENT,           /* a customer's: kept, its mail queued */
	LOGIN_UNKNOWN,        /* no customer has the address: counted, nothing sent */
	LOGIN_LIMITED,        /* the address had its links: nothing written */
};

struct store;

struct store_ops {
	const char *name;                 /* "sqlite", "postgresql", "mongodb" */
	void (*close)(struct store *s);
	int (*ping)(struct store *s, struct err *e);
	/* A standby's lag behind its primary: 0 when it has replayed all it received, else the
	 * time since the last transaction it replayed, in ms. NULL where the store has no standbys. */
	int (*replica_lag)(struct store *s, int64_t *lag_ms, struct err *e);
	int (*reset)(struct store *s, struct err *e);

	/* Plans. create: WRITE_DONE or WRITE_DUPLICATE, with its events. update: sets the
	 * patched fields; a capacity change moves subscriptions_left by the same delta in the
	 * same step (WRITE_SEATS_SHORT if it would go below 0); out: the plan after. */
	int (*plan_create)(struct store *s, const struct plan *p, const struct event_spec *ev, size_t nev,
			   const struct actor *a, enum write_result *res, struct err *e);
	/* *found false when absent. */
	int (*plan_get)(struct store *s, const char *id, struct plan *out, bool *found, struct err *e);
	/* status: "active", "inactive" or NULL for all; ordered by price, name. *out: new array,
	 * free each with plan_clear. */
	int (*plan_list)(struct store *s, const char *status, struct plan **out, size_t *n, struct err *e);
	int (*plan_update)(struct store *s, const char *id, const struct plan_patch *patch, int64_t now,
			   const struct event_spec *ev, size_t nev, const struct actor *a, struct plan *out,
			   enum write_result *res, struct err *e);

	int (*customer_create)(struct store *s, const struct customer *c, enum write_result *res,
			       struct err *e);
	int (*customer_get)(struct store *s, const char *id, struct customer *out, bool *found,
			    struct err *e);
	/* Keeps the processor's own customer of customer id, if none is kept yet (the first wins). */
	int (*customer_processor_set)(struct store *s, const char *id, const char *processor_id, struct err *e);

	/* Sign-in (signin.h). login_link: in one unit, r's address's links made before r->since
	 * forgotten, those after counted (LOGIN_LIMITED when r->limit are: nothing more written), and
	 * the link kept: for the customer of that address (LOGIN_SENT), with the event ev and its
	 * mail, whose resource and recipient the store fills in with that customer; for no one when
	 * the address is no customer's (LOGIN_UNKNOWN: never usable, counted all the same), so that
	 * both cost one write. login_exchange: the link link_id of token_hash, a customer's, unused
	 * and unexpired at cs->created_at, used, and session cs made for its customer (customer_id
	 * filled in), in one unit; *ok false and nothing written for any other. session_end: ends
	 * a session at now (*found false when absent or ended already). */
	int (*login_link)(struct store *s, const struct login_req *r, const struct event_spec *ev,
			  const struct actor *a, enum login_result *res, struct err *e);
	int (*login_exchange)(struct store *s, const char *link_id, const char *token_hash,
			      struct customer_session *cs, bool *ok, struct err *e);
	int (*session_get)(struct store *s, const char *id, struct customer_session *out, bool *found,
			   struct err *e);
	int (*session_end)(struct store *s, const char *id, int64_t now, bool *found, struct err *e);
	/* Renewal reminders. to_remind: active subscriptions whose period ends by `by` and whose
	 * reminder of that period was not sent, soonest first. remind: in one unit, the reminder of
	 * the period ending at end_at marked sent on sub_id with its events (a mail), if sub_id is
	 * still active, still ends then, and was not reminded of it; *marked false (nothing
	 * written) otherwise, so that however many renewers race, a period has one reminder. */
	int (*subs_to_remind)(struct store *s, int64_t by, int limit, struct subscription **out, size_t *n,
			      struct err *e);
	int (*remind)(struct store *s, const char *sub_id, int64_t end_at, const struct event_spec *ev, size_t nev,
		      const struct actor *a, bool *marked, struct err *e);
	/* A customer's own, newest first, at most limit: the money of their subscriptions (charges,
	 * renewals and refunds that succeeded or were refunded since, and charges authorized for a seat
	 * that keeps them, to be captured), and their waiting-list entries with positions. */
	int (*customer_payments)(struct store *s, const char *customer_id, int limit, struct payment **out, size_t *n,
				 struct err *e);
	int (*customer_entries)(struct store *s, const char *customer_id, int limit, struct waitlist_entry **out,
				size_t *n, struct err *e);

	/* Idempotency-Keys of routes whose effect is one step. finish: stores the reply on a
	 * key not yet done (*matched false if no such key). forget: deletes a KEY_STARTED key. */
	int (*key_claim)(struct store *s, const struct claim_req *r, struct claim *out, struct err *e);
	int (*key_finish)(struct store *s, const char *key, const struct reply *r, bool *matched,
			  struct err *e);
	int (*key_forget)(struct store *s, const char *key, struct err *e);
	int (*key_get)(struct store *s, const char *key, struct key_record *out, bool *found,
		       struct err *e);

	/* The purchase's two units, and every later move of a subscription. */
	int (*hold)(struct store *s, const struct hold_req *r, const struct actor *a, struct hold_out *out,
		    struct err *e);
	int (*transition)(struct store *s, const struct transition *t, const struct actor *a,
			  struct transition_out *out, struct err *e);
	/* Makes key the payment attempt of a pending subscription whose hold is live at now, until
	 * `until`, if its attempt is still `expect` (as the caller read it) and expect is "", is
	 * key, or its lease ended by now. One atomic step; *taken tells. */
	int (*attempt_take)(struct store *s, const char *sub_id, const char *expect, const char *key,
			    int64_t now, int64_t until, bool *taken, struct err *e);
	/* A payment alone (a refund, a charge that came too late), unless one of its kind exists
	 * for its key; with its events. *existed tells which. */
	int (*payment_record)(struct store *s, const struct payment *p, const struct event_spec *ev,
			      size_t nev, const struct actor *a, bool *existed, struct err *e);

	int (*sub_get)(struct store *s, const char *id, struct subscription *out, bool *found,
		       struct err *e);
	/* The seats of a plan's pending subscriptions, by kind: held while a purchase's payment
	 * runs, and held by open checkout sessions. */
	int (*held_by_kind)(struct store *s, const char *plan_id, int64_t *paying, int64_t *sessions,
			    struct err *e);
	/* Every (kind, status) of the payments with their count and sum, at most
	 * PAYMENT_TOTALS_MAX; *out: new array, free(). */
	int (*payment_totals)(struct store *s, struct payment_total **out, size_t *n, struct err *e);
	/* Every status of the subscriptions with their count and seats, at most SUB_TOTALS_MAX;
	 * *out: new array, free(). */
	int (*sub_totals)(struct store *s, struct sub_total **out, size_t *n, struct err *e);
	/* status may be NULL. *out: new array, free each with subscription_clear. */
	int (*sub_list)(struct store *s, const char *customer_id, const char *status,
			const struct seq_page *pg, struct subscription **out, size_t *n, struct err *e);
	int (*audit_list)(struct store *s, const struct audit_filter *f, const struct seq_page *pg,
			  struct audit_event **out, size_t *n, struct err *e);
	/* The event feed: at most limit events whose feed position (in seq) is after `after`,
	 * oldest first, of action `type` when not NULL. Positions count the store's events from 1
	 * in commit order with no gap, and a reader never sees a position before every lower one
	 * is committed: a store whose database numbers rows as they are written rather than as
	 * they commit (PostgreSQL) positions the committed events here, one sequencer at a time. */
	int (*feed_read)(struct store *s, int64_t after, const char *type, int limit, struct audit_event **out,
			 size_t *n, struct err *e);

	/* A named lease: free when its holder let it go or its until passed. The holder renews
	 * it, or releases it by taking it with until 0. *taken tells. */
	int (*lease_take)(struct store *s, const char *name, const char *holder, int64_t now,
			  int64_t until, bool *taken, struct err *e);
	/* Pending subscriptions whose hold deadline is at or before now, oldest first. */
	int (*holds_overdue)(struct store *s, int64_t now, int limit, struct subscription **out,
			     size_t *n, struct err *e);
	/* Subscriptions whose life is due at now, soonest first: active ones whose period ended
	 * (end_at <= now: to renew or to end), past_due ones whose next attempt is due. Found by
	 * indexes on the period's end and the next attempt, never by a scan. */
	int (*subs_due)(struct store *s, int64_t now, int limit, struct subscription **out, size_t *n,
			struct err *e);
	/* Successful charges that have no refund and whose subscription is failed or expired, or
	 * still pending or active by another payment attempt (a charge that came too late). */
	int (*charges_unrefunded)(struct store *s, int limit, struct payment **out, size_t *n,
				  struct err *e);
	/* Payments in a status, oldest first: refunds "pending" (not yet made by the processor),
	 * charges "authorized" (not yet captured or voided), renewals "late" (taken after their
	 * period was served another way, or ended: to refund), renewal attempts "open" (a charge
	 * asked for whose outcome is not yet settled). */
	int (*payments_in)(struct store *s, const char *status, int limit, struct payment **out, size_t *n,
			   struct err *e);
	/* Moves payment id from status `from` to `to` with its events, in one atomic step; *moved
	 * false (nothing written) when it was not in `from`. */
	int (*payment_mark)(struct store *s, const char *id, const char *from, const char *to,
			    const struct event_spec *ev, size_t nev, const struct actor *a, bool *moved, struct err *e);
	/* Deletes done and started keys created before `before`; a key that holds a seat stays
	 * until its purchase is done. *n: how many. */
	int (*keys_purge)(struct store *s, int64_t before, int *n, struct err *e);

	/* Waiting lists. get: the entry with its position (*found false when absent). list: a
	 * plan's entries in line order after seq `after`. leave: a waiting entry -> left, the
	 * plan's waiting count down, its events, then offers (the head of the line may have
	 * changed); *moved false when it was not waiting (out tells what it is). */
	int (*waitlist_join)(struct store *s, const struct join_req *r, const struct actor *a, struct join_out *out,
			     struct err *e);
	int (*entry_get)(struct store *s, const char *id, struct waitlist_entry *out, bool *found, struct err *e);
	int (*waitlist_list)(struct store *s, const char *plan_id, int64_t after, int limit,
			     struct waitlist_entry **out, size_t *n, struct err *e);
	int (*waitlist_leave)(struct store *s, const char *id, int64_t now, const struct event_spec *ev, size_t nev,
			      const struct actor *a, bool *moved, struct waitlist_entry *out, bool *found,
			      struct err *e);

	/* Webhooks. create: the endpoint as given, its cursor set to the feed's last position in
	 * the same step (it takes the events committed after it). list: every endpoint, oldest
	 * first, secrets included. delete: the endpoint and its deliveries (*found false when
	 * absent). */
	int (*webhook_create)(struct store *s, struct webhook *w, struct err *e);
#define WEBHOOKS_MAX 100                  /* endpoints a store keeps at most (the API refuses more) */
	int (*webhook_list)(struct store *s, struct webhook **out, size_t *n, struct err *e);
	int (*webhook_delete)(struct store *s, const char *id, bool *found, struct err *e);
	/* One step of a sender: keeps d (when given) as the endpoint's delivery of d->seq, moves
	 * the endpoint's cursor up to `cursor` (when > its own) and disables it when asked. */
	int (*webhook_advance)(struct store *s, const char *endpoint_id, const struct delivery *d, int64_t cursor,
			       bool disable, struct err *e);
	/* An endpoint's deliveries, newest event first, paged by seq (before_seq). */
	int (*delivery_list)(struct store *s, const char *endpoint_id, const struct seq_page *pg,
			     struct delivery **out, size_t *n, struct err *e);

	/* The outbox. due: queued mails whose next attempt is at or before now, oldest first.
	 * mark: a queued mail whose attempts are still `attempts` (as the sender read it) moves to
	 * m's status, attempts, next attempt and last error, with its events, in one atomic step;
	 * *moved false (nothing written) otherwise. list: newest first, of a status or all (NULL),
	 * paged by creation time (before_seq) and id. */
	int (*mail_due)(struct store *s, int64_t now, int limit, struct mail **out, size_t *n, struct err *e);
	int (*mail_mark)(struct store *s, const struct mail *m, int attempts, const struct event_spec *ev,
			 size_t nev, const struct actor *a, bool *moved, struct err *e);
	int (*mail_list)(struct store *s, const char *status, const struct seq_page *pg, struct mail **out,
			 size_t *n, struct err *e);

	/* Walks the store for check(), in one read snapshot. */
	int (*snapshot)(struct store *s, const struct snapshot_visitor *v, struct err *e);

	/* A consistent copy of the store into the file path, taken while it serves (writers go
	 * on). NULL for stores that have their own tools (pg_dump, mongodump). */
	int (*backup)(struct store *s, const char *path, struct err *e);
};

struct store {
	const struct store_ops *ops;
};

/* Opens the store the connection string names and applies its schema, idempotently. New,
 * close with store_close. The message in e never carries a password. */
struct store *store_open(const char *url, struct err *e);
void store_close(struct store *s);  /* accepts NULL */
/* A store for the threads of one process: each primitive borrows one of at most `handles`
 * real handles of url for the length of the call (as many again for reads alone). New,
 * close with store_close. */
struct store *store_pool_new(const char *url, int handles);
/* The kind of store a connection string names ("sqlite", "postgresql", "mongodb"). */
const char *store_kind(const char *url);

/* The connection string with any password replaced by "***", for messages. Returns out. */
char *store_url_redact(const char *url, char *out, size_t len);
/* Whether a connection string names a store this build has (for the check at start). */
bool store_url_supported(const char *url);

#endif
