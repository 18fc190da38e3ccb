/* purchase.c - the purchase state machine of DESIGN.md. */
#include "purchase.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "payment.h"
#include "util.h"

#define DAY_MS (24LL * 3600 * 1000)

void purchase_result_clear(struct purchase_result *r)
{
	free(r->reply.body);
	memset(r, 0, sizeof(*r));
}

static void refused(struct purchase_result *out, enum err_kind kind, const char *code, const char *msg)
{
	char m[sizeof(out->err.msg)];

	/* msg is often out->err.msg itself: copied first, as printf may not read what it writes */
	snprintf(m, sizeof(m), "%s", msg);
	out->end = PURCHASE_REFUSED;
	err_set(&out->err, kind, code, "%s", m);
}

/* The answer stored on the key: the purchase ended, perhaps in another request (a concurrent
 * retry, or the reaper that expired the hold). */
static void answer_stored(struct ledger *lg, const char *key, struct purchase_result *out)
{
	struct key_record k = {0};
	bool found;

	if (lg->store->ops->key_get(lg->store, key, &k, &found, &out->err) == 0 && found &&
	    k.state == KEY_DONE) {
		if (ledger_reply_read(lg, &k.reply, &out->err)) {
			out->end = PURCHASE_REFUSED;
		} else {
			out->end = PURCHASE_ANSWERED;
			out->reply = k.reply;
			k.reply.body = NULL;
		}
	} else {
		LOG_ERROR(NULL, "key %s has no final answer: %s", key, out->err.msg);
		refused(out, ERR_UNAVAILABLE, NULL, "the purchase could not be settled");
	}
	key_record_clear(&k);
}

static void payment_of(struct payment *p, const char *key, const char *sub_id, const char *kind,
		       const char *id, const char *status, const char *decline, int64_t amount, int64_t now)
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

static const char *payment_action(const struct payment *p)
{
	if (!strcmp(p->kind, "refund"))
		return "payment.refunded";
	return !strcmp(p->status, "succeeded") ? "payment.succeeded" : "payment.declined";
}

/* Records a payment on its own (a refund, a charge that came too late), once per key. */
static int record(struct ledger *lg, const struct actor *a, const struct payment *p, struct err *e)
{
	char *detail = ledger_payment_detail(p);
	const struct event_spec ev[] = {{payment_action(p), "payment", p->id, EV_NO_COUNTS, detail}};
	bool existed;
	int rc = lg->store->ops->payment_record(lg->store, p, ev, 1, a, &existed, e);

	free(detail);
	return rc;
}

int purchase_refund(struct ledger *lg, const struct actor *a, const char *key, const char *sub_id,
		    struct err *e)
{
	struct processor_rec pr;
	struct payment charge, refund;
	int64_t now = now_ms();

	if (payment_void(lg->store, key, &pr, e))
		return -1;
	/* (a plan change's credit is a refund record without a charge: nothing of it to undo) */
	if (pr.state != PROC_REFUNDED || !*pr.charge_id)
		return 0;
	payment_of(&charge, key, sub_id, "charge", pr.charge_id, "succeeded", NULL, pr.amount_cents, now);
	payment_of(&refund, key, sub_id, "refund", pr.refund_id, "succeeded", NULL, pr.amount_cents, now);
	return record(lg, a, &charge, e) || record(lg, a, &refund, e) ? -1 : 0;
}

/* Whether a subscription may keep a charge: it holds or held its seats. */
static bool keeps_charge(const struct subscription *s)
{
	return !strcmp(s->status, "pending") || !strcmp(s->status, "active") || !strcmp(s->status, "cancelled") ||
	       !strcmp(s->status, "changed");
}

/* Why a session cannot be paid now (SESSION_COMPLETED, SESSION_EXPIRED), or NULL: it is open. */
static const char *session_closed(const struct subscription *sub, int64_t now)
{
	if (!strcmp(sub->status, "pending"))
		return sub->hold_deadline > now ? NULL : "SESSION_EXPIRED";
	return keeps_charge(sub) ? "SESSION_COMPLETED" : "SESSION_EXPIRED";
}

/* The key of a hold's payment attempt (before attempts were kept: its own key). */
static const char *attempt_of(const struct subscription *sub)
{
	return *sub->attempt_key ? sub->attempt_key : sub->idem_key;
}

/* A hold ended without its seats: no charge of its attempt is kept. The reaper refunds later
 * what cannot be refunded now. */
static void refund_attempt(struct ledger *lg, const struct actor *a, const struct subscription *sub)
{
	struct err re = {0};

	if (purchase_refund(lg, a, attempt_of(sub), sub->id, &re))
		LOG_WARN(a->trace_id, "refund for %s deferred to the reaper: %s", sub->id, re.msg);
}

int purchase_expire(struct ledger *lg, const struct actor *a, const struct subscription *sub,
		    const struct payment *charge, int64_t now, bool *moved, struct err *e)
{
	char *detail = charge ? ledger_payment_detail(charge) : NULL;
	/* a checkout session's deadline, or a purchase's hold */
	bool session = *sub->secret_hash;
	struct event_spec ev[4] = {
		{session ? "checkout.expired" : "subscription.expired", session ? "session" : "subscription", sub->id,
		 EV_BEFORE_AFTER, NULL},
		{"seat.released", session ? "session" : "subscription", sub->id, EV_BEFORE_AFTER, NULL},
	};
	size_t nev = 2;
	struct reply r = lg->replies->expired(a->trace_id);
	struct transition t = {.sub_id = sub->id, .from = "pending", .due_by = now, .to = "expired",
			       .now = now, .dleft = 1, .dheld = -1, .payment = charge, .events = ev, .reply = &r};

	if (charge)
		ev[nev++] = (struct event_spec){"payment.succeeded", "payment", charge->id, EV_NO_COUNTS, detail};
	if (*sub->entry_id) {
		/* a waiting-list offer ran out: its entry with it, its seats to the next in line */
		ev[nev++] = (struct event_spec){"waitlist.expired", "waitlist_entry", sub->entry_id, EV_BEFORE_AFTER, NULL};
		t.entry_to = "expired";
	}
	t.nevents = nev;
	struct transition_out o;
	int rc;

	rc = ledger_transition(lg, &t, a, &o, e);
	*moved = rc == 0 && o.result == MOVED;
	if (rc == 0 && o.result != MOVE_NOT_FOUND && !keeps_charge(&o.sub))
		refund_attempt(lg, a, &o.sub);
	transition_out_clear(&o);
	free(r.body);
	free(detail);
	return rc;
}

/* How one payment attempt runs: a purchase's (its own key; a decline ends the hold) or a
 * checkout session's completion (a key of its own; a decline keeps the session open). */
struct attempt {
	const char *key;                  /* the attempt's Idempotency-Key: the processor's too */
	bool session;
};

/* A refusal stored on the attempt's key (it is bound: a charge may have been tried). */
static void answer_refused(struct ledger *lg, const struct actor *a, const struct attempt *at, const char *code,
			   struct purchase_result *out)
{
	struct reply r = lg->replies->refused(code, a->trace_id);
	bool matched;

	if (ledger_key_finish(lg, at->key, &r, &matched, &out->err)) {
		refused(out, out->err.kind, NULL, out->err.msg);
		free(r.body);
		return;
	}
	out->end = PURCHASE_ANSWERED;
	out->reply = r;
}

/* The hold is no longer pending under this attempt, or past its deadline: expire it if still
 * pending, make sure this attempt keeps no charge, answer what the key holds. */
static void hold_gone(struct ledger *lg, const struct actor *a, const struct attempt *at,
		      const struct subscription *sub, const struct payment *charge, struct purchase_result *out)
{
	struct subscription now = {0};
	bool moved;

	/* Expired here, or settled by someone else (the reaper): either way no charge is kept. */
	if (purchase_expire(lg, a, sub, at->session ? NULL : charge, now_ms(), &moved, &out->err)) {
		refused(out, out->err.kind, NULL, out->err.msg);
		return;
	}
	if (!at->session) {
		answer_stored(lg, at->key, out);
		return;
	}
	/* A session: this attempt's charge, if any, is refunded (completed by another attempt, or
	 * expired), and the key answers why. */
	{
		struct err re = {0};
		if (purchase_refund(lg, a, at->key, sub->id, &re))
			LOG_WARN(a->trace_id, "refund of %s deferred to the reaper: %s", at->key, re.msg);
	}
	if (ledger_sub_get(lg, sub->id, &now, &out->err)) {
		refused(out, ERR_UNAVAILABLE, NULL, out->err.msg);
		return;
	}
	const char *why = session_closed(&now, now_ms());
	if (why) {
		answer_refused(lg, a, at, why, out);
	} else {
		/* still open: another attempt took this one over */
		out->end = PURCHASE_IN_PROGRESS;
		out->retry_after_s = 1;
	}
	subscription_clear(&now);
}

/* The second unit: t stores reply r on the key. 1 when it moved (out answered with r, whose
 * body it takes), 0 when the hold was no longer pending as t requires, -1 when the store
 * failed (out refused; the hold stays until a retry or the reaper settles it). */
static int settle(struct ledger *lg, const struct actor *a, const struct transition *t, struct reply *r,
		  struct purchase_result *out)
{
	struct transition_out o = {0};
	int rc = -1;

	if (ledger_transition(lg, t, a, &o, &out->err)) {
		refused(out, out->err.kind, NULL, out->err.msg);
	} else if (o.result == MOVED) {
		out->end = PURCHASE_ANSWERED;
		out->reply = *r;
		r->body = NULL;
		rc = 1;
	} else {
		rc = 0;
	}
	transition_out_clear(&o);
	return rc;
}

static void settle_paid(struct ledger *lg, const struct actor *a, const struct attempt *at, struct subscription *sub,
			const struct payment *charge, struct purchase_result *out)
{
	char token[TOKEN_LEN + 1], hash[65];
	char *detail = ledger_payment_detail(charge);
	const struct event_spec ev[] = {
		{"payment.succeeded", "payment", charge->id, EV_NO_COUNTS, detail},
		{"subscription.activated", "subscription", sub->id, EV_BEFORE_AFTER, NULL},
		{"checkout.completed", "session", sub->id, EV_BEFORE_AFTER, NULL},
		{"waitlist.converted", "waitlist_entry", sub->entry_id, EV_BEFORE_AFTER, NULL},
	};
	int64_t now = now_ms();
	struct transition t;
	struct reply r;

	/* The plaintext token exists only in this answer: a resumed purchase mints a new one. */
	token_new(sub->id, token);
	sha256_hex(token, strlen(token), hash);
	sub->start_at = now;
	sub->end_at = now + sub->duration_days * DAY_MS;
	snprintf(sub->payment_id, sizeof(sub->payment_id), "%s", charge->id);
	snprintf(sub->status, sizeof(sub->status), "active");
	sub->updated_at = now;
	r = lg->replies->purchased(sub, token, a->trace_id);
	t = (struct transition){.sub_id = sub->id, .from = "pending", .live_after = now, .to = "active",
				.now = now, .dheld = -1, .payment_id = charge->id, .start_at = sub->start_at,
				.end_at = sub->end_at, .token_hash = hash, .payment = charge, .events = ev,
				.nevents = at->session ? 3 : 2, .reply = &r, .reply_key = at->key, .attempt = at->key};
	if (*sub->entry_id) {
		/* a waiting-list offer taken up */
		t.nevents = 4;
		t.entry_to = "converted";
	}
	if (settle(lg, a, &t, &r, out) == 0)
		hold_gone(lg, a, at, sub, charge, out);
	free(r.body);
	free(detail);
}

static void settle_declined(struct ledger *lg, const struct actor *a, const struct attempt *at,
			    const struct subscription *sub, const struct payment *charge, struct purchase_result *out)
{
	char *detail = ledger_payment_detail(charge);
	const struct event_spec ev[] = {
		{"payment.declined", "payment", charge->id, EV_NO_COUNTS, detail},
		{"subscription.failed", "subscription", sub->id, EV_BEFORE_AFTER, NULL},
		{"seat.released", "subscription", sub->id, EV_BEFORE_AFTER, NULL},
	};
	struct reply r = lg->replies->declined(charge->decline_code, at->session, a->trace_id);
	struct transition t = {.sub_id = sub->id, .from = "pending", .to = "failed", .now = now_ms(),
			       .dleft = 1, .dheld = -1, .payment = charge, .events = ev, .nevents = 3,
			       .reply = &r, .reply_key = at->key, .attempt = at->key};

	if (at->session) {
		/* The session stays open with its seats for another card; this attempt ends. */
		t.to = "pending";
		t.dleft = t.dheld = 0;
		t.nevents = 1;
		t.live_after = t.now;
		t.attempt_end = true;
	}
	if (settle(lg, a, &t, &r, out) == 0) {
		if (at->session) {
			hold_gone(lg, a, at, sub, NULL, out);
		} else {
			/* Settled by someone else (the reaper): keep the decline on record. */
			struct err re = {0};
			if (record(lg, a, charge, &re))
				LOG_WARN(a->trace_id, "recording decline %s: %s", charge->id, re.msg);
			answer_stored(lg, at->key, out);
		}
	}
	free(r.body);
	free(detail);
}

static void change_pay(struct ledger *lg, const struct actor *a, const struct attempt *at, struct subscription *sub,
		       const char *method, struct purchase_result *out);

/* Charge outside any transaction, then settle in one atomic unit. */
static void charge_and_settle(struct ledger *lg, const struct actor *a, const struct attempt *at,
			      struct subscription *sub, const char *method, struct purchase_result *out)
{
	struct processor_rec pr;
	struct payment charge;

	if (*sub->previous_id) {
		change_pay(lg, a, at, sub, method, out);
		return;
	}
	if (payment_charge(lg->store, at->key, sub->amount_cents, method, lg->payment_latency_ms, &pr, &out->err)) {
		/* The key stays bound to the attempt; a retry after the lease resumes here. */
		LOG_WARN(a->trace_id, "charge for %s: %s", sub->id, out->err.msg);
		refused(out, out->err.kind, NULL, out->err.msg);
		return;
	}
	switch (pr.state) {
	case PROC_CHARGED:
		payment_of(&charge, at->key, sub->id, "charge", pr.charge_id, "succeeded", NULL, pr.amount_cents,
			   now_ms());
		settle_paid(lg, a, at, sub, &charge, out);
		break;
	case PROC_DECLINED:
		payment_of(&charge, at->key, sub->id, "charge", pr.charge_id, "declined", pr.decline_code,
			   pr.amount_cents, now_ms());
		settle_declined(lg, a, at, sub, &charge, out);
		break;
	default:
		/* Voided or refunded: whoever did it settled the hold first. */
		hold_gone(lg, a, at, sub, NULL, out);
		break;
	}
}

/* The key existed: replay, refuse, or resume a request that died after its hold. */
static void key_exists(struct ledger *lg, const struct actor *a, const char *key, const char *fingerprint,
		       const char *method, const struct claim *c, struct purchase_result *out)
{
	struct subscription sub = {0};
	int64_t wait;

	if (strcmp(c->key.fingerprint, fingerprint)) {
		out->end = PURCHASE_KEY_REUSED;
	} else if (c->key.state == KEY_DONE) {
		out->end = PURCHASE_ANSWERED;
		out->replayed = true;
		out->reply.status = c->key.reply.status;
		out->reply.body = xstrdup(c->key.reply.body ? c->key.reply.body : "{}");
		if (ledger_reply_read(lg, &out->reply, &out->err)) {
			free(out->reply.body);
			out->reply.body = NULL;
			out->end = PURCHASE_REFUSED;
		}
	} else if (!c->taken_over || c->key.state != KEY_HELD) {
		out->end = PURCHASE_IN_PROGRESS;
		wait = (c->key.locked_until - now_ms() + 999) / 1000;
		out->retry_after_s = wait < 1 ? 1 : (int)wait;
	} else if (ledger_sub_get(lg, c->key.subscription_id, &sub, &out->err)) {
		refused(out, ERR_UNAVAILABLE, NULL, out->err.msg);
	} else if (strcmp(sub.status, "pending")) {
		answer_stored(lg, key, out);
		out->replayed = true;
	} else {
		struct actor buyer = *a;
		struct attempt at = {key, false};
		buyer.id = sub.customer_id;
		LOG_INFO(a->trace_id, "resuming purchase %s at its charge", sub.id);
		charge_and_settle(lg, &buyer, &at, &sub, method, out);
	}
	subscription_clear(&sub);
}

/* What a purchase and a session's creation hold. */
struct hold_spec {
	const char *key, *fingerprint;
	const char *sub_id;
	const char *plan_id;
	int64_t quantity;
	const char *customer_id, *email, *name;
	int64_t ttl_ms;                   /* the hold lasts this long */
	const char *secret_hash;          /* a session's */
	bool pays;                        /* a purchase: the key is the payment attempt */
	struct reply (*reply)(const struct subscription *sub, void *arg);
	void *reply_arg;
	const char *previous_id;          /* a plan change's: the subscription it replaces */
};

/* A hold's answer is built inside the store's unit, from the subscription as held: kept
 * (ledger_reply_kept) by this callback around the spec's. */
struct kept_reply {
	const struct ledger *lg;
	const struct hold_spec *hs;
};

static struct reply hold_reply_kept(const struct subscription *sub, void *arg)
{
	const struct kept_reply *k = arg;
	struct reply r = k->hs->reply(sub, k->hs->reply_arg), kept = ledger_reply_kept(k->lg, &r);

	free(r.body);
	return kept;
}

/* The first unit of a purchase or a session: claim the key and hold the seats. */
static void hold(struct ledger *lg, const struct actor *a, const struct hold_spec *hs, struct hold_out *h,
		 struct purchase_result *out)
{
	struct customer c = {0};
	struct kept_reply k = {lg, hs};
	int64_t now = now_ms();
	const struct event_spec ev[] = {
		{"seat.held", "subscription", hs->sub_id, EV_BEFORE_AFTER, NULL},
		{"checkout.created", "session", hs->sub_id, EV_BEFORE_AFTER, NULL},
	};

	if (!hs->customer_id) {
		id_new(c.id);
		c.email = xstrdup(hs->email);
		c.name = xstrdup(hs->name);
		c.created_at = now;
	}
	struct hold_req r = {{hs->key, hs->fingerprint, now, now + ledger_lease_ms(lg)}, hs->sub_id, hs->plan_id,
			     hs->quantity, hs->customer_id, hs->customer_id ? NULL : &c, now + hs->ttl_ms, ev, hs->secret_hash ? 2 : 1,
			     hs->secret_hash, hs->previous_id, hs->pays, hs->reply ? hold_reply_kept : NULL, &k};
	if (lg->store->ops->hold(lg->store, &r, a, h, &out->err)) {
		LOG_WARN(a->trace_id, "hold: %s", out->err.msg);
		out->end = PURCHASE_REFUSED;
	}
	customer_clear(&c);
}

/* A hold refused: the code of why. */
static void hold_refused(const struct hold_out *h, int64_t quantity, struct purchase_result *out)
{
	switch (h->result) {
	case HOLD_NO_PLAN:
		refused(out, ERR_NOT_FOUND, "PLAN_NOT_FOUND", "no such plan");
		break;
	case HOLD_PLAN_INACTIVE:
		refused(out, ERR_CONFLICT, "PLAN_INACTIVE", "the plan is not on sale");
		break;
	case HOLD_NO_CUSTOMER:
		refused(out, ERR_NOT_FOUND, "CUSTOMER_NOT_FOUND", "no such customer");
		break;
	case HOLD_PREVIOUS_INACTIVE:
		refused(out, ERR_CONFLICT, "SUBSCRIPTION_NOT_ACTIVE", "only an active subscription changes plan");
		break;
	default:
		out->end = PURCHASE_REFUSED;
		ledger_hold_refused(h, quantity, &out->err);
		break;
	}
}

/* A purchase's or a plan change's whole run: the hold, then the payment under the same key
 * (or, the key known already, its replay or its resumption). */
static void hold_then_pay(struct ledger *lg, const struct actor *a, const struct hold_spec *hs, const char *method,
			  struct purchase_result *out)
{
	struct hold_out h = {0};
	struct actor buyer = *a;
	struct attempt at = {hs->key, false};

	hold(lg, a, hs, &h, out);
	if (out->end == PURCHASE_REFUSED)
		goto out;
	switch (h.result) {
	case HOLD_TAKEN:
		buyer.id = h.sub.customer_id;
		charge_and_settle(lg, &buyer, &at, &h.sub, method, out);
		break;
	case HOLD_KEY_EXISTS:
		key_exists(lg, a, hs->key, hs->fingerprint, method, &h.claim, out);
		break;
	default:
		hold_refused(&h, hs->quantity, out);
		break;
	}
out:
	hold_out_clear(&h);
}

void purchase_run(struct ledger *lg, const struct actor *a, const struct purchase_req *p,
		  struct purchase_result *out)
{
	char sub_id[ID_LEN + 1];

	memset(out, 0, sizeof(*out));
	id_new(sub_id);
	struct hold_spec hs = {p->key, p->fingerprint, sub_id, p->plan_id, p->quantity, p->customer_id, p->email,
			       p->name, (int64_t)lg->hold_ttl_s * 1000, NULL, true, NULL, NULL, NULL};
	hold_then_pay(lg, a, &hs, p->payment_method, out);
}

/* --- checkout sessions ------------------------------------------------------------------- */

struct session_reply {
	const char *secret;
	const char *trace_id;
	const struct ledger *lg;
};

static struct reply session_created(const struct subscription *sub, void *arg)
{
	struct session_reply *x = arg;
	return x->lg->replies->session(sub, x->secret, x->trace_id);
}

void checkout_create(struct ledger *lg, const struct actor *a, const struct checkout_req *q,
		     struct purchase_result *out)
{
	char sub_id[ID_LEN + 1], secret[TOKEN_LEN + 1], hash[65];
	struct hold_out h = {0};
	struct session_reply sr = {secret, a->trace_id, lg};

	memset(out, 0, sizeof(*out));
	id_new(sub_id);
	secret_new(sub_id, secret);
	sha256_hex(secret, strlen(secret), hash);
	struct hold_spec hs = {q->key, q->fingerprint, sub_id, q->plan_id, q->quantity, q->customer_id, q->email,
			       q->name, (int64_t)q->expires_in_s * 1000, hash, false, session_created, &sr, NULL};
	hold(lg, a, &hs, &h, out);
	if (out->end == PURCHASE_REFUSED)
		goto out;
	switch (h.result) {
	case HOLD_TAKEN:
		/* the answer was stored on the key in the hold's own unit */
		out->end = PURCHASE_ANSWERED;
		out->reply = session_created(&h.sub, &sr);
		break;
	case HOLD_KEY_EXISTS:
		/* a session's key is done in its first unit: a replay, a reuse, or in progress */
		key_exists(lg, a, q->key, q->fingerprint, NULL, &h.claim, out);
		break;
	default:
		hold_refused(&h, q->quantity, out);
		break;
	}
out:
	hold_out_clear(&h);
}

/* Reads the session; -1 with out refused when it is missing or cannot be paid now. */
static int session_open(struct ledger *lg, const char *session_id, int64_t now, struct subscription *sub,
			struct purchase_result *out)
{
	const char *closed;

	subscription_clear(sub);
	if (ledger_sub_get(lg, session_id, sub, &out->err)) {
		if (out->err.kind == ERR_NOT_FOUND)
			err_set(&out->err, ERR_NOT_FOUND, "SESSION_NOT_FOUND", "no session %s", session_id);
		out->end = PURCHASE_REFUSED;
		return -1;
	}
	if ((closed = session_closed(sub, now))) {
		refused(out, ERR_CONFLICT, closed, "the session is not open");
		return -1;
	}
	return 0;
}

void checkout_complete(struct ledger *lg, const struct actor *a, const char *session_id, const char *key,
		       const char *method, struct purchase_result *out)
{
	struct subscription sub = {0};
	struct attempt at = {key, true};
	struct actor buyer = *a;
	int64_t now = now_ms();
	bool taken;

	memset(out, 0, sizeof(*out));
	if (session_open(lg, session_id, now, &sub, out))
		goto out;
	if (lg->store->ops->attempt_take(lg->store, sub.id, sub.attempt_key, key, now, now + ledger_lease_ms(lg),
					 &taken, &out->err)) {
		out->end = PURCHASE_REFUSED;
		goto out;
	}
	if (!taken) {
		/* the session ended meanwhile, or another completion runs: nothing was done */
		if (session_open(lg, session_id, now, &sub, out) == 0) {
			out->end = PURCHASE_IN_PROGRESS;
			out->retry_after_s = 1;
		}
		goto out;
	}
	/* An earlier attempt whose request died: its charge, if it landed, is not kept. */
	if (*sub.attempt_key && strcmp(sub.attempt_key, key)) {
		LOG_INFO(a->trace_id, "session %s: attempt %s taken over", sub.id, sub.attempt_key);
		if (purchase_refund(lg, a, sub.attempt_key, sub.id, &out->err)) {
			out->end = PURCHASE_REFUSED;
			goto out;
		}
	}
	buyer.id = sub.customer_id;
	charge_and_settle(lg, &buyer, &at, &sub, method, out);
out:
	subscription_clear(&sub);
}

int checkout_expire(struct ledger *lg, const struct actor *a, const char *session_id, const char *entry_to,
		    struct subscription *out, struct err *e)
{
	struct subscription now = {0};
	bool found;
	struct event_spec ev[3] = {
		{"checkout.expired", "session", session_id, EV_BEFORE_AFTER, NULL},
		{"seat.released", "session", session_id, EV_BEFORE_AFTER, NULL},
	};
	char action[40];
	struct transition t = {.sub_id = session_id, .from = "pending", .to = "expired", .now = now_ms(),
			       .dleft = 1, .dheld = -1, .events = ev, .nevents = 2};
	struct transition_out o;

	/* a waiting-list offer's: its entry moves with it (expired, or left when its holder left) */
	if (lg->store->ops->sub_get(lg->store, session_id, &now, &found, e))
		return -1;
	if (found && *now.entry_id) {
		t.entry_to = entry_to ? entry_to : "expired";
		snprintf(action, sizeof(action), "waitlist.%s", t.entry_to);
		ev[t.nevents++] = (struct event_spec){action, "waitlist_entry", now.entry_id, EV_BEFORE_AFTER, NULL};
	}
	int rc = lg->store->ops->transition(lg->store, &t, a, &o, e);
	subscription_clear(&now);
	if (rc)
		return -1;
	*out = o.sub;
	if (o.result == MOVE_NOT_FOUND) {
		err_set(e, ERR_NOT_FOUND, "SESSION_NOT_FOUND", "no session %s", session_id);
		return -1;
	}
	if (keeps_charge(out) && strcmp(out->status, "pending")) {
		err_set(e, ERR_CONFLICT, "SESSION_COMPLETED", "session %s is completed", session_id);
		subscription_clear(out);
		return -1;
	}
	/* expired now, or before: an attempt's charge is not kept */
	refund_attempt(lg, a, out);
	return 0;
}

/* --- changing plan ------------------------------------------------------------------------- */

/* amount's share of a period of den ms for the part of it left, rounded half away from zero
 * to the cent. */
static int64_t period_share(int64_t amount, int64_t left, int64_t den)
{
	__int128 num = (__int128)amount * left;

	return num >= 0 ? (int64_t)((num + den / 2) / den) : -(int64_t)((-num + den / 2) / den);
}

/* The prorated difference of a plan change at now, in a period [period_start, end): the new
 * plan's share of the part left, less the old plan's. Each share is rounded on its own, so that
 * what a subscription of the chain was paid for its part of the period, its share at its own
 * start, is never less than what it is credited later, its share at the change. */
int64_t plan_change_prorate(int64_t new_amount, int64_t old_amount, int64_t period_start, int64_t end, int64_t now)
{
	int64_t den = end - period_start, left = end - (now > period_start ? now : period_start);

	if (end <= now || den <= 0)
		return 0;
	return period_share(new_amount, left, den) - period_share(old_amount, left, den);
}

/* Whether a subscription's own interval is a whole period of its plan: a purchase, or a change
 * to a plan of another length, which begins a period of its own. */
static bool whole_period(const struct subscription *s)
{
	return s->end_at - s->start_at >= s->duration_days * DAY_MS;
}

/* A change to a plan of the same length keeps its predecessor's period: the start of the
 * period sub is in is that of the subscription of its chain that began it. */
#define CHAIN_MAX 10000
static int period_start(struct ledger *lg, const struct subscription *sub, int64_t *start, struct err *e)
{
	struct subscription at = {0};
	char prev[ID_LEN + 1] = "";
	int hops = 0;

	*start = sub->start_at;
	if (!whole_period(sub))
		snprintf(prev, sizeof(prev), "%s", sub->previous_id);
	while (*prev) {
		if (++hops > CHAIN_MAX) {
			err_set(e, ERR_UNAVAILABLE, NULL, "subscription %s: its chain of plan changes has no end", sub->id);
			return -1;
		}
		subscription_clear(&at);
		if (ledger_sub_get(lg, prev, &at, e))
			return -1;
		*start = at.start_at;
		prev[0] = '\0';
		if (!whole_period(&at))
			snprintf(prev, sizeof(prev), "%s", at.previous_id);
	}
	subscription_clear(&at);
	return 0;
}

/* What a change of old at now to a plan costing new_amount a period of new_days makes: the
 * difference to pay (negative: the credit) and the new subscription's end. A plan of the same
 * length takes the rest of the period (the shares of plan_change_prorate); one of another
 * length begins a period of its own at now, as Stripe Billing resets the billing cycle when
 * the interval changes: its whole price, less old's share of what is left. */
static int change_terms(struct ledger *lg, const struct subscription *old, int64_t new_amount, int64_t new_days,
			int64_t now, int64_t *diff, int64_t *end, struct err *e)
{
	int64_t start;

	if (period_start(lg, old, &start, e))
		return -1;
	if (new_days * DAY_MS == old->end_at - start) {
		*diff = plan_change_prorate(new_amount, old->amount_cents, start, old->end_at, now);
		*end = old->end_at;
	} else {
		*diff = new_amount - plan_change_prorate(old->amount_cents, 0, start, old->end_at, now);
		*end = now + new_days * DAY_MS;
	}
	return 0;
}

/* The new subscription's hold gives its seats back and stores the answer r on the attempt's
 * key (the old subscription is untouched). */
static void change_release(struct ledger *lg, const struct actor *a, const struct attempt *at,
			   const struct subscription *sub, struct reply *r, struct purchase_result *out)
{
	const struct event_spec ev[] = {
		{"subscription.failed", "subscription", sub->id, EV_BEFORE_AFTER, NULL},
		{"seat.released", "subscription", sub->id, EV_BEFORE_AFTER, NULL},
	};
	struct transition t = {.sub_id = sub->id, .from = "pending", .to = "failed", .now = now_ms(), .dleft = 1,
			       .dheld = -1, .events = ev, .nevents = 2, .reply = r, .reply_key = at->key,
			       .attempt = at->key};
	struct err re = {0};

	if (settle(lg, a, &t, r, out) == 0)
		answer_stored(lg, at->key, out);
	if (purchase_refund(lg, a, at->key, sub->id, &re))
		LOG_WARN(a->trace_id, "refund for %s deferred to the reaper: %s", sub->id, re.msg);
}

int purchase_credit(struct ledger *lg, const struct actor *a, const struct payment *refund, struct err *e)
{
	struct processor_rec pr;

	(void)a;
	if (payment_credit(lg->store, refund->idem_key, refund->id, refund->amount_cents, &pr, e))
		return -1;
	return lg->store->ops->refund_made(lg->store, refund->id, e);
}

/* The last unit of a plan change: the new subscription active, the old one changed with its
 * seats back on its own plan, the charge (or the credit, as a refund the processor makes
 * after the unit) recorded, all in one step. */
static void change_settle(struct ledger *lg, const struct actor *a, const struct attempt *at, struct subscription *sub,
			  const struct subscription *old, const struct payment *charge, int64_t credit, int64_t now,
			  int64_t end, struct purchase_result *out)
{
	char token[TOKEN_LEN + 1], hash[65], credit_id[32] = "";
	struct payment refund;
	char *detail;
	const struct event_spec old_ev[] = {
		{"subscription.plan_changed", "subscription", old->id, EV_BEFORE_AFTER, NULL},
		{"seat.released", "subscription", old->id, EV_BEFORE_AFTER, NULL},
	};
	struct transition also, t;
	struct transition_out o = {0};
	struct reply r;

	token_new(sub->id, token);
	sha256_hex(token, strlen(token), hash);
	sub->start_at = now;
	sub->end_at = end;
	snprintf(sub->payment_id, sizeof(sub->payment_id), "%s", charge ? charge->id : old->payment_id);
	snprintf(sub->status, sizeof(sub->status), "active");
	sub->updated_at = now;
	if (credit > 0) {
		id_new_prefixed("pay_", credit_id, sizeof(credit_id));
		payment_of(&refund, at->key, old->id, "refund", credit_id, "pending", NULL, credit, now);
	}
	/* the unit's payment: the charge of the difference, or the credit to be made */
	const struct payment *paid = charge ? charge : credit > 0 ? &refund : NULL;
	detail = paid ? ledger_payment_detail(paid) : NULL;
	const struct event_spec ev[] = {
		{"subscription.activated", "subscription", sub->id, EV_BEFORE_AFTER, NULL},
		{charge ? "payment.succeeded" : "payment.refunded", "payment", paid ? paid->id : "", EV_NO_COUNTS, detail},
	};
	r = lg->replies->changed(sub, token, a->trace_id);
	also = (struct transition){.sub_id = old->id, .from = "active", .to = "changed", .now = now, .dleft = 1,
				   .events = old_ev, .nevents = 2};
	t = (struct transition){.sub_id = sub->id, .from = "pending", .live_after = now_ms(), .to = "active", .now = now,
				.dheld = -1, .payment_id = sub->payment_id, .start_at = sub->start_at,
				.end_at = sub->end_at, .token_hash = hash, .payment = paid, .events = ev, .nevents = paid ? 2 : 1, .reply = &r, .reply_key = at->key,
				.attempt = at->key, .also = &also};
	if (ledger_transition(lg, &t, a, &o, &out->err)) {
		refused(out, out->err.kind, NULL, out->err.msg);
	} else if (o.result == MOVED) {
		struct err ce = {0};
		out->end = PURCHASE_ANSWERED;
		out->reply = r;
		r.body = NULL;
		/* the credit, once the change is made; the reaper makes it if this request dies first */
		if (credit > 0 && purchase_credit(lg, a, &refund, &ce))
			LOG_WARN(a->trace_id, "credit %s deferred to the reaper: %s", refund.id, ce.msg);
	} else if (o.result == MOVE_ALSO_REFUSED) {
		/* the old subscription ended meanwhile (cancelled): the new one is not made */
		struct reply no = lg->replies->refused("SUBSCRIPTION_NOT_ACTIVE", a->trace_id);
		change_release(lg, a, at, sub, &no, out);
		free(no.body);
	} else {
		hold_gone(lg, a, at, sub, charge, out);
	}
	transition_out_clear(&o);
	free(r.body);
	free(detail);
}

/* The old subscription's period is over: its new hold fails, 409 SUBSCRIPTION_ENDED (any charge
 * of the attempt refunded with it). */
static void change_ended(struct ledger *lg, const struct actor *a, const struct attempt *at,
			 const struct subscription *sub, struct purchase_result *out)
{
	struct reply r = lg->replies->refused("SUBSCRIPTION_ENDED", a->trace_id);

	change_release(lg, a, at, sub, &r, out);
	free(r.body);
}

/* A plan change's payment: the prorated difference charged, or credited after the last unit. */
static void change_pay(struct ledger *lg, const struct actor *a, const struct attempt *at, struct subscription *sub,
		       const char *method, struct purchase_result *out)
{
	struct subscription old = {0};
	struct processor_rec pr;
	struct payment charge;
	int64_t diff, now, end;

	if (ledger_sub_get(lg, sub->previous_id, &old, &out->err)) {
		refused(out, ERR_UNAVAILABLE, NULL, out->err.msg);
		return;
	}
	now = now_ms();
	if (old.end_at <= now) {
		/* its period ended while the new plan's seats were held: nothing is left to change */
		change_ended(lg, a, at, sub, out);
	} else if (change_terms(lg, &old, sub->amount_cents, sub->duration_days, now, &diff, &end, &out->err)) {
		refused(out, ERR_UNAVAILABLE, NULL, out->err.msg);
	} else if (diff <= 0) {
		change_settle(lg, a, at, sub, &old, NULL, -diff, now, end, out);
	} else if (!method) {
		/* the price rose between the check and the hold: there is now something to charge */
		struct reply r = lg->replies->invalid("paymentMethodId", "is required: the new plan costs more for the days left",
						      a->trace_id);
		change_release(lg, a, at, sub, &r, out);
		free(r.body);
	} else if (payment_charge(lg->store, at->key, diff, method, lg->payment_latency_ms, &pr, &out->err)) {
		LOG_WARN(a->trace_id, "charge for %s: %s", sub->id, out->err.msg);
		refused(out, out->err.kind, NULL, out->err.msg);
	} else if (pr.state == PROC_CHARGED && old.end_at <= now_ms()) {
		/* the period ended while the difference was charged: the charge goes back with the seats */
		change_ended(lg, a, at, sub, out);
	} else if (pr.state == PROC_CHARGED) {
		payment_of(&charge, at->key, sub->id, "charge", pr.charge_id, "succeeded", NULL, pr.amount_cents, now_ms());
		change_settle(lg, a, at, sub, &old, &charge, 0, now, end, out);
	} else if (pr.state == PROC_DECLINED) {
		payment_of(&charge, at->key, sub->id, "charge", pr.charge_id, "declined", pr.decline_code,
			   pr.amount_cents, now_ms());
		settle_declined(lg, a, at, sub, &charge, out);
	} else {
		hold_gone(lg, a, at, sub, NULL, out);
	}
	subscription_clear(&old);
}

void plan_change(struct ledger *lg, const struct actor *a, const struct change_req *c, struct purchase_result *out)
{
	struct subscription old = {0};
	struct plan plan = {0};
	char sub_id[ID_LEN + 1];
	int64_t now = now_ms(), diff = 0;

	memset(out, 0, sizeof(*out));
	if (ledger_sub_get(lg, c->sub_id, &old, &out->err) || ledger_plan_get(lg, c->plan_id, &plan, &out->err)) {
		out->end = PURCHASE_REFUSED;
		goto out;
	}
	if (!strcmp(old.plan_id, c->plan_id)) {
		refused(out, ERR_INVALID, "VALIDATION_ERROR", "planId is the subscription's plan already");
		snprintf(out->err.details, sizeof(out->err.details),
			 "{\"field\":\"planId\",\"reason\":\"is the subscription's plan already\"}");
		goto out;
	}
	/* A period that is over has nothing left to change (an old subscription no longer active
	 * is left to the hold, so that a retry replays). */
	if (!strcmp(old.status, "active") && old.end_at <= now) {
		refused(out, ERR_CONFLICT, "SUBSCRIPTION_ENDED", "the subscription's period has ended");
		goto out;
	}
	/* Something to charge needs a payment method: told before anything is held. */
	if (!c->payment_method && !strcmp(old.status, "active")) {
		int64_t end;
		if (change_terms(lg, &old, plan.price_cents * old.quantity, plan.duration_days, now, &diff, &end, &out->err)) {
			refused(out, ERR_UNAVAILABLE, NULL, out->err.msg);
			goto out;
		}
	}
	if (diff > 0) {
		refused(out, ERR_INVALID, "VALIDATION_ERROR", "a payment method is needed for the difference");
		snprintf(out->err.details, sizeof(out->err.details),
			 "{\"field\":\"paymentMethodId\",\"reason\":\"is required: the new plan costs more for the days left\"}");
		goto out;
	}
	id_new(sub_id);
	struct hold_spec hs = {c->key, c->fingerprint, sub_id, c->plan_id, old.quantity, old.customer_id, NULL, NULL,
			       (int64_t)lg->hold_ttl_s * 1000, NULL, true, NULL, NULL, old.id};
	hold_then_pay(lg, a, &hs, c->payment_method, out);
out:
	plan_clear(&plan);
	subscription_clear(&old);
}
