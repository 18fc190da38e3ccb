/* purchase.c - the purchase state machine of DESIGN.md. */
#include "purchase.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ids.h"
#include "life.h"
#include "log.h"
#include "outbox.h"
#include "payment.h"
#include "processor.h"
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
 * retry, the reaper that expired the hold, the processor's event that settled it first). It is
 * that unit's answer, replayed byte for byte (Idempotent-Replayed), its traceId the trace of
 * the request that made it. */
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
			out->replayed = true;
			out->reply = k.reply;
			k.reply.body = NULL;
		}
	} else {
		LOG_ERROR(NULL, "key %s has no final answer: %s", key, out->err.msg);
		refused(out, ERR_UNAVAILABLE, NULL, "the purchase could not be settled");
	}
	key_record_clear(&k);
}

/* Records a payment on its own (once per key and kind) and, when it was there in status
 * `was`, moves it to the status given with its event. */
static int mark_mailing(struct ledger *lg, const struct actor *a, const struct payment *p, const char *from,
			const struct mail_spec *mail, struct err *e);

static int keep_or_mark(struct ledger *lg, const struct actor *a, const struct payment *p, const char *was,
			struct err *e)
{
	bool existed;

	if (payment_keep(lg, a, p, &existed, e))
		return -1;
	return existed ? purchase_mark(lg, a, p, was, e) : 0;
}

int purchase_mark(struct ledger *lg, const struct actor *a, const struct payment *p, const char *from, struct err *e)
{
	return mark_mailing(lg, a, p, from, NULL, e);
}

/* purchase_mark, its event sending mail (or NULL) */
static int mark_mailing(struct ledger *lg, const struct actor *a, const struct payment *p, const char *from,
			const struct mail_spec *mail, struct err *e)
{
	char *detail = ledger_payment_detail(p);
	const struct event_spec ev[] = {{payment_action(p), "payment", p->id, EV_NO_COUNTS, detail, mail}};
	bool moved;
	int rc = lg->store->ops->payment_mark(lg->store, p->id, from, p->status, ev, 1, a, &moved, e);

	free(detail);
	return rc;
}

int purchase_void(struct ledger *lg, const struct actor *a, const char *key, const struct subscription *sub,
		  const char *payment_id, struct err *e)
{
	const char *sub_id = sub->id;
	const struct pay_ref ref = {key, payment_id, sub->customer_id, NULL};
	struct pay_result pr, rr;
	struct payment charge, refund;
	char refund_key[UUID_LEN + 8];
	int64_t now = now_ms();
	enum pay_outcome o = payment_cancel(lg, &ref, &pr);

	if (o == PAY_OK) {
		/* declined, or the key closed before any authorization: nothing to record */
		if (pr.state != PAYS_VOIDED || !pr.amount_cents)
			return 0;
		payment_of(&charge, key, sub_id, "charge", pr.id, "voided", NULL, pr.amount_cents, now);
		return keep_or_mark(lg, a, &charge, "authorized", e);
	}
	if (o == PAY_INVALID && pr.state == PAYS_CAPTURED) {
		/* money taken that no seat keeps (captured before its hold was lost): given back whole */
		snprintf(refund_key, sizeof(refund_key), "%s:refund", key);
		if (payment_refund(lg, pr.id, refund_key, pr.amount_cents, &rr) != PAY_OK) {
			err_set(e, ERR_UNAVAILABLE, NULL, "refunding %s: %s", pr.id, rr.msg);
			return -1;
		}
		payment_of(&charge, key, sub_id, "charge", pr.id, "succeeded", NULL, pr.amount_cents, now);
		payment_of(&refund, key, sub_id, "refund", *rr.refund_id ? rr.refund_id : pr.id, "succeeded", NULL,
			   rr.refunded_cents, now);
		bool existed;
		return keep_or_mark(lg, a, &charge, "authorized", e) || payment_keep(lg, a, &refund, &existed, e) ? -1 : 0;
	}
	err_set(e, ERR_UNAVAILABLE, NULL, "voiding the payment of %s: %s", sub_id, pr.msg);
	return -1;
}

/* Whether a subscription may keep a charge: it holds or held its seats. */
static bool keeps_charge(const struct subscription *s)
{
	return !strcmp(s->status, "pending") || sub_was_activated(s->status);
}

/* Whether a subscription keeps the charge it is paid by: it was activated by it. */
static bool paid_by(const struct subscription *s, const struct payment *charge)
{
	return sub_was_activated(s->status) && !strcmp(s->payment_id, charge->id);
}

int purchase_finish(struct ledger *lg, const struct actor *a, const struct payment *charge, struct err *e)
{
	struct subscription sub = {0};
	struct payment done = *charge;
	struct pay_result pr;
	int rc = 0;

	if (ledger_sub_get(lg, charge->subscription_id, &sub, e))
		return -1;
	if (paid_by(&sub, charge)) {
		const struct pay_ref ref = {charge->idem_key, charge->id, sub.customer_id, NULL};
		if (payment_capture(lg, &ref, &pr) == PAY_OK) {
			struct outbox_mail m;
			snprintf(done.status, sizeof(done.status), "succeeded");
			/* the trace of the request that paid, as the processor kept it; else this pass's */
			outbox_receipt(&m, &sub, &done, *sub.previous_id ? "change" : "purchase",
				       *pr.trace_id ? pr.trace_id : a->trace_id);
			rc = mark_mailing(lg, a, &done, "authorized", &m.spec, e);
			outbox_mail_clear(&m);
		} else {
			err_set(e, ERR_UNAVAILABLE, NULL, "capturing %s: %s", charge->id, pr.msg);
			rc = -1;
		}
	} else if (strcmp(sub.status, "pending")) {
		rc = purchase_void(lg, a, charge->idem_key, &sub, charge->id, e);
	} else {
		err_set(e, ERR_RETRYABLE, NULL, "subscription %s is still settling", sub.id);
		rc = -1;
	}
	subscription_clear(&sub);
	return rc;
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

/* A hold ended without its seats: no money of its attempt is kept. The reaper voids later
 * what cannot be voided now. */
static void refund_attempt(struct ledger *lg, const struct actor *a, const struct subscription *sub)
{
	struct err re = {0};

	if (purchase_void(lg, a, attempt_of(sub), sub, NULL, &re))
		LOG_WARN(a->trace_id, "void for %s deferred to the reaper: %s", sub->id, re.msg);
}

int purchase_expire(struct ledger *lg, const struct actor *a, const struct subscription *sub,
		    const struct payment *charge, int64_t now, bool *moved, struct err *e)
{
	char *detail = charge ? ledger_payment_detail(charge) : NULL;
	/* a checkout session's deadline, or a purchase's hold */
	bool session = *sub->secret_hash;
	struct event_spec ev[4] = {
		{session ? "checkout.expired" : "subscription.expired", session ? "session" : "subscription", sub->id,
		 EV_BEFORE_AFTER, NULL, NULL},
		{"seat.released", session ? "session" : "subscription", sub->id, EV_BEFORE_AFTER, NULL, NULL},
	};
	size_t nev = 2;
	struct reply r = lg->replies->expired(a->trace_id);
	struct transition t = {.sub_id = sub->id, .from = "pending", .due_by = now, .to = "expired",
			       .now = now, .dleft = 1, .dheld = -1, .payment = charge, .events = ev, .reply = &r};

	if (charge)
		ev[nev++] = (struct event_spec){payment_action(charge), "payment", charge->id, EV_NO_COUNTS, detail, NULL};
	if (*sub->entry_id) {
		/* a waiting-list offer ran out: its entry with it, its seats to the next in line */
		ev[nev++] = (struct event_spec){"waitlist.expired", "waitlist_entry", sub->entry_id, EV_BEFORE_AFTER, NULL, NULL};
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
	bool resumed;                     /* a retry taking over a request that died after its hold */
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
	/* A session whose attempt was ended by this very attempt elsewhere (its retry, or the
	 * processor's event settling it first): the answer kept on its key is the attempt's own, and
	 * a session it completed keeps its money. */
	{
		struct key_record k = {0};
		bool found, completed;
		if (lg->store->ops->key_get(lg->store, at->key, &k, &found, &out->err)) {
			refused(out, ERR_UNAVAILABLE, NULL, out->err.msg);
			return;
		}
		if (found && k.state == KEY_DONE) {
			completed = k.reply.status / 100 == 2;
			key_record_clear(&k);
			if (!completed) {
				struct err re = {0};
				if (purchase_void(lg, a, at->key, sub, NULL, &re))
					LOG_WARN(a->trace_id, "void of %s deferred to the reaper: %s", at->key, re.msg);
			}
			answer_stored(lg, at->key, out);
			return;
		}
		key_record_clear(&k);
	}
	/* Completed by another attempt, or expired: this attempt's authorization, if any, is voided,
	 * and the key answers why. */
	{
		struct err re = {0};
		if (purchase_void(lg, a, at->key, sub, NULL, &re))
			LOG_WARN(a->trace_id, "void of %s deferred to the reaper: %s", at->key, re.msg);
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

/* The money of a charge its settling unit kept is taken now that the unit has committed; the
 * reaper takes what this does not (a failure, a crash) and records each capture. */
static void capture(const struct actor *a, struct ledger *lg, const struct subscription *sub,
		    const struct payment *charge)
{
	const struct pay_ref ref = {charge->idem_key, charge->id, sub->customer_id, NULL};
	struct pay_result pr;

	if (payment_capture(lg, &ref, &pr) != PAY_OK)
		LOG_WARN(a->trace_id, "capture of %s deferred to the reaper: %s", charge->id, pr.msg);
}

/* A hold paid for: active, its first period begun now in its term, the card saved for its
 * renewals (method: the processor's name for it, or the one the buyer gave; NULL: none). */
static void settle_paid(struct ledger *lg, const struct actor *a, const struct attempt *at, struct subscription *sub,
			const struct payment *charge, const char *method, struct purchase_result *out)
{
	char token[TOKEN_LEN + 1], hash[65];
	char *detail = ledger_payment_detail(charge);
	const struct event_spec ev[] = {
		{payment_action(charge), "payment", charge->id, EV_NO_COUNTS, detail, NULL},
		{"subscription.activated", "subscription", sub->id, EV_BEFORE_AFTER, NULL, NULL},
		{"checkout.completed", "session", sub->id, EV_BEFORE_AFTER, NULL, NULL},
		{"waitlist.converted", "waitlist_entry", sub->entry_id, EV_BEFORE_AFTER, NULL, NULL},
	};
	int64_t now = now_ms();
	struct transition t;
	struct reply r;

	/* The plaintext token exists only in this answer: a resumed purchase mints a new one. */
	token_new(sub->id, token);
	sha256_hex(token, strlen(token), hash);
	sub->start_at = now;
	if (life_begin(&sub->life, now, &sub->end_at)) {
		refused(out, ERR_UNAVAILABLE, NULL, "the plan's time zone is not known on this machine");
		free(detail);
		return;
	}
	snprintf(sub->life.payment_method, sizeof(sub->life.payment_method), "%s", method ? method : "");
	snprintf(sub->payment_id, sizeof(sub->payment_id), "%s", charge->id);
	snprintf(sub->status, sizeof(sub->status), "active");
	sub->updated_at = now;
	r = lg->replies->purchased(sub, token, a->trace_id);
	t = (struct transition){.sub_id = sub->id, .from = "pending", .live_after = now, .to = "active",
				.now = now, .dheld = -1, .payment_id = charge->id, .start_at = sub->start_at,
				.end_at = sub->end_at, .token_hash = hash, .payment = charge, .events = ev,
				.nevents = at->session ? 3 : 2, .reply = &r, .reply_key = at->key, .attempt = at->key,
				.life = {.set = &sub->life}};
	if (*sub->entry_id) {
		/* a waiting-list offer taken up */
		t.nevents = 4;
		t.entry_to = "converted";
	}
	switch (settle(lg, a, &t, &r, out)) {
	case 0:
		hold_gone(lg, a, at, sub, charge, out);
		break;
	case 1:
		if (!strcmp(charge->status, "authorized"))
			capture(a, lg, sub, charge);
		break;
	}
	free(r.body);
	free(detail);
}

/* A payment refused: a decline (charge, its record) or a payment method the processor does not
 * know (charge NULL). A purchase's hold ends, its seats back; a session stays open with its
 * seats for another card, this attempt ended. r is stored on the attempt's key. */
static void settle_refusal(struct ledger *lg, const struct actor *a, const struct attempt *at,
			   const struct subscription *sub, const struct payment *charge, struct reply *r,
			   struct purchase_result *out)
{
	char *detail = charge ? ledger_payment_detail(charge) : NULL;
	const struct event_spec all[] = {
		{"payment.declined", "payment", charge ? charge->id : "", EV_NO_COUNTS, detail, NULL},
		{"subscription.failed", "subscription", sub->id, EV_BEFORE_AFTER, NULL, NULL},
		{"seat.released", "subscription", sub->id, EV_BEFORE_AFTER, NULL, NULL},
	};
	const struct event_spec *ev = charge ? all : all + 1;
	struct transition t = {.sub_id = sub->id, .from = "pending", .to = "failed", .now = now_ms(),
			       .dleft = 1, .dheld = -1, .payment = charge, .events = ev, .nevents = charge ? 3 : 2,
			       .reply = r, .reply_key = at->key, .attempt = at->key};

	if (at->session) {
		/* The session stays open with its seats for another card; this attempt ends. */
		t.to = "pending";
		t.dleft = t.dheld = 0;
		t.nevents = charge ? 1 : 0;
		t.live_after = t.now;
		t.attempt_end = true;
	}
	if (settle(lg, a, &t, r, out) == 0) {
		if (at->session) {
			hold_gone(lg, a, at, sub, NULL, out);
		} else {
			/* Settled by someone else (the reaper): keep the decline on record. */
			struct err re = {0};
			bool existed;
			if (charge && payment_keep(lg, a, charge, &existed, &re))
				LOG_WARN(a->trace_id, "recording decline %s: %s", charge->id, re.msg);
			answer_stored(lg, at->key, out);
		}
	}
	free(detail);
}

static void settle_declined(struct ledger *lg, const struct actor *a, const struct attempt *at,
			    const struct subscription *sub, const struct payment *charge, struct purchase_result *out)
{
	struct reply r = lg->replies->declined(charge->decline_code, at->session, a->trace_id);

	settle_refusal(lg, a, at, sub, charge, &r, out);
	free(r.body);
}

static void change_pay(struct ledger *lg, const struct actor *a, const struct attempt *at, struct subscription *sub,
		       const char *method, struct purchase_result *out);

/* What an authorization that says nothing leaves: the key stays bound to its hold, and the
 * client's retry with it (or the reaper) asks the processor again under the same key. */
static void pay_unknown(const struct actor *a, const struct subscription *sub, const struct pay_result *pr,
			struct purchase_result *out)
{
	LOG_WARN(a->trace_id, "payment of %s: %s (%s)", sub->id, pay_outcome_name(pr->outcome), pr->msg);
	refused(out, ERR_UNAVAILABLE, NULL, "the payment processor did not answer; retry with the same key");
	out->retry_after_s = 1;
}

/* Stripe's client secret of a payment that waits for the buyer (for Stripe.js), or NULL. */
static const char *intent_secret(const struct ledger *lg, const struct pay_result *pr)
{
	return lg->processor.kind && !strcmp(lg->processor.kind, "stripe") && *pr->client_secret ? pr->client_secret
											    : NULL;
}

/* A purchase the bank asks the buyer to authenticate becomes a checkout session, in one unit:
 * its client secret made (its hash kept), its attempt parked, checkout.created, and the answer,
 * with the secret, kept on the purchase's key (a replay shows the same). */
static void purchase_to_session(struct ledger *lg, const struct actor *a, const struct attempt *at,
				const struct subscription *sub, const struct pay_result *pr, struct purchase_result *out)
{
	char secret[TOKEN_LEN + 1], hash[65];
	int64_t now = now_ms();

	secret_new(sub->id, secret);
	sha256_hex(secret, strlen(secret), hash);
	struct reply r = lg->replies->action_required(sub->id, secret, intent_secret(lg, pr), a->trace_id);
	const struct event_spec ev[] = {{"checkout.created", "session", sub->id, EV_BEFORE_AFTER, NULL, NULL}};
	struct transition t = {.sub_id = sub->id, .from = "pending", .to = "pending", .now = now, .live_after = now,
			       .events = ev, .nevents = 1, .reply = &r, .reply_key = at->key, .attempt = at->key,
			       .attempt_release = true, .secret_hash = hash};
	if (settle(lg, a, &t, &r, out) == 0)
		/* the hold ended meanwhile (the reaper's expiry): its answer is the one kept */
		answer_stored(lg, at->key, out);
	free(r.body);
}

/* The bank asks the buyer to authenticate (3-D Secure). A session's attempt is parked: it stays
 * the session's attempt with its lease given back as 0, the mark of a payment that waits for the
 * buyer (checkout_complete looks at it again), and the processor's payment waits under its
 * key. The answer is not kept on the key: the completion may be sent again once the buyer has
 * authenticated. A purchase becomes a session, its attempt parked the same way. */
static void action_required(struct ledger *lg, const struct actor *a, const struct attempt *at,
			    const struct subscription *sub, const struct pay_result *pr, struct purchase_result *out)
{
	struct err e = {0};
	bool taken = false;

	if (!at->session) {
		purchase_to_session(lg, a, at, sub, pr, out);
		return;
	}
	if (lg->store->ops->attempt_take(lg->store, sub->id, at->key, at->key, now_ms(), 0, &taken, &e) || !taken) {
		/* not parked: its lease runs out and the next completion takes the attempt over */
		LOG_WARN(a->trace_id, "session %s: attempt %s not parked: %s", sub->id, at->key,
			 e.kind != ERR_NONE ? e.msg : "the session moved");
	}
	out->end = PURCHASE_ANSWERED;
	out->reply = lg->replies->action_required(sub->id, NULL, intent_secret(lg, pr), a->trace_id);
}

/* An authorization's outcome: 1 with charge filled when the money is held, for the caller to
 * settle; else 0, the outcome answered here (a decline settled, a voided key, an unknown). */
static int authorized(struct ledger *lg, const struct actor *a, const struct attempt *at, struct subscription *sub,
		      const struct pay_result *pr, struct payment *charge, struct purchase_result *out)
{
	switch (pr->outcome) {
	case PAY_OK:
		if (pr->state == PAYS_AUTHORIZED) {
			payment_of(charge, at->key, sub->id, "charge", pr->id, "authorized", NULL, pr->amount_cents,
				   now_ms());
			return 1;
		}
		/* voided: whoever closed the key settled the hold first */
		hold_gone(lg, a, at, sub, NULL, out);
		return 0;
	case PAY_DECLINED:
		payment_of(charge, at->key, sub->id, "charge", pr->id, "declined", pr->decline_code, pr->amount_cents,
			   now_ms());
		settle_declined(lg, a, at, sub, charge, out);
		return 0;
	case PAY_ACTION_REQUIRED:
		if (*sub->previous_id) {
			/* a plan change has no session to wait in: refused as a decline the buyer can
			 * read, and what the processor holds voided */
			const struct pay_ref ref = {at->key, pr->id, sub->customer_id, NULL};
			struct pay_result vr;
			payment_of(charge, at->key, sub->id, "charge", pr->id, "declined", "authentication_required",
				   pr->amount_cents, now_ms());
			settle_declined(lg, a, at, sub, charge, out);
			if (payment_cancel(lg, &ref, &vr) != PAY_OK)
				LOG_WARN(a->trace_id, "cancel of %s deferred: %s", pr->id, vr.msg);
			return 0;
		}
		action_required(lg, a, at, sub, pr, out);
		return 0;
	case PAY_INVALID:
		if (!strcmp(pr->param, "payment_method")) {
			/* the processor knows no such payment method: the buyer's mistake, told as one */
			struct reply r = lg->replies->invalid("paymentMethodId", "is not a payment method the processor knows",
							      a->trace_id);
			settle_refusal(lg, a, at, sub, NULL, &r, out);
			free(r.body);
			return 0;
		}
		LOG_ERROR(a->trace_id, "the processor refused the payment of %s: %s", sub->id, pr->msg);
		pay_unknown(a, sub, pr, out);
		return 0;
	default:
		pay_unknown(a, sub, pr, out);
		return 0;
	}
}

/* The payment of a hold's amount, outside any transaction, then settled in one atomic unit. */
static void charge_and_settle(struct ledger *lg, const struct actor *a, const struct attempt *at,
			      struct subscription *sub, const char *method, struct purchase_result *out)
{
	struct pay_result pr;
	struct payment charge;

	if (sub->hold_deadline <= now_ms()) {
		/* a retry after the hold's end: nothing is asked of the processor any more */
		hold_gone(lg, a, at, sub, NULL, out);
		return;
	}
	if (*sub->previous_id) {
		change_pay(lg, a, at, sub, method, out);
		return;
	}
	if (!sub->amount_cents) {
		/* a free plan: nothing to ask the processor for, as Stripe charges no $0 invoice */
		char id[32];
		id_new_prefixed("pay_", id, sizeof(id));
		payment_of(&charge, at->key, sub->id, "charge", id, "succeeded", NULL, 0, now_ms());
		settle_paid(lg, a, at, sub, &charge, method, out);
		return;
	}
	struct pay_req r = {at->key, sub->id, sub->customer_id, method, sub->amount_cents, false, sub->hold_deadline,
			    a->trace_id, NULL};
	payment_authorize(lg, &r, &pr);
	if (authorized(lg, a, at, sub, &pr, &charge, out))
		settle_paid(lg, a, at, sub, &charge, *pr.method ? pr.method : method, out);
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
	} else {
		struct actor buyer = *a;
		struct attempt at = {key, false, true};
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
		{"seat.held", "subscription", hs->sub_id, EV_BEFORE_AFTER, NULL, NULL},
		{"checkout.created", "session", hs->sub_id, EV_BEFORE_AFTER, NULL, NULL},
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
	struct attempt at = {hs->key, false, false};

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

int purchase_event(struct ledger *lg, const struct actor *a, const char *sub_id, const char *key,
		   const char *payment_id, struct err *e)
{
	struct subscription sub = {0};
	struct purchase_result out = {0};
	struct pay_result pr;
	struct payment charge;

	if (ledger_sub_get(lg, sub_id, &sub, e)) {
		int rc = e->kind == ERR_NOT_FOUND ? 0 : -1;   /* not one of ours */
		subscription_clear(&sub);
		return rc;
	}
	struct attempt at = {key, *sub.secret_hash != '\0', false};
	struct actor buyer = *a;
	const struct pay_ref ref = {key, payment_id, sub.customer_id, NULL};
	buyer.id = sub.customer_id;
	/* a payment parked for the buyer to authenticate (action_required) is settled by the buyer's
	 * next completion, the one request that can show them their access token */
	bool parked = *sub.attempt_key && !sub.attempt_until;
	if (!strcmp(sub.status, "pending") && !parked && !strcmp(attempt_of(&sub), key) && !*sub.previous_id &&
	    sub.hold_deadline > now_ms() && payment_lookup(lg, &ref, &pr) == PAY_OK &&
	    (!*pr.subscription_id || !strcmp(pr.subscription_id, sub.id))) {
		if (pr.state == PAYS_AUTHORIZED) {
			payment_of(&charge, key, sub.id, "charge", pr.id, "authorized", NULL, pr.amount_cents, now_ms());
			settle_paid(lg, &buyer, &at, &sub, &charge, *pr.method ? pr.method : NULL, &out);
		} else if (pr.state == PAYS_DECLINED) {
			payment_of(&charge, key, sub.id, "charge", pr.id, "declined", pr.decline_code, pr.amount_cents,
				   now_ms());
			settle_declined(lg, &buyer, &at, &sub, &charge, &out);
		}
	}
	int rc = out.end == PURCHASE_REFUSED && (out.err.kind == ERR_UNAVAILABLE || out.err.kind == ERR_RETRYABLE) ? -1 : 0;
	if (rc)
		*e = out.err;
	purchase_result_clear(&out);
	subscription_clear(&sub);
	return rc;
}

int purchase_dispute(struct ledger *lg, const struct actor *a, const char *sub_id, const char *dispute_id,
		     const char *payment_id, int64_t amount_cents, struct err *e)
{
	struct subscription sub = {0};
	struct payment d;
	bool existed;
	int rc;

	if (ledger_sub_get(lg, sub_id, &sub, e)) {
		rc = e->kind == ERR_NOT_FOUND ? 0 : -1;
		subscription_clear(&sub);
		return rc;
	}
	/* one flag per dispute (a payment may be disputed more than once), kept under its id */
	payment_of(&d, dispute_id, sub.id, "dispute", dispute_id, "open", NULL, amount_cents, now_ms());
	(void)payment_id;
	rc = payment_keep(lg, a, &d, &existed, e);
	subscription_clear(&sub);
	return rc;
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

/* A session whose attempt is parked (its payment waits for the buyer to authenticate, 
 * action_required): authorized since, it pays the session under this completion's attempt;
 * still waiting, and this completion gives the same card, the answer says so again. 1 when
 * answered here, 0 to go on as usual (a new card: the parked payment is voided as a taken-over
 * attempt's is). */
static int parked_attempt(struct ledger *lg, const struct actor *buyer, struct subscription *sub, const char *key,
			  const char *method, struct purchase_result *out)
{
	const struct pay_ref ref = {sub->attempt_key, NULL, sub->customer_id, NULL};
	struct attempt at = {key, true, false};
	struct pay_result pr;
	struct payment charge;
	int64_t now = now_ms();
	bool taken;

	if (payment_lookup(lg, &ref, &pr) != PAY_OK)
		return 0;
	if (pr.state == PAYS_REQUIRES_ACTION && !strcmp(pr.method, method)) {
		out->end = PURCHASE_ANSWERED;
		out->reply = lg->replies->action_required(sub->id, NULL, intent_secret(lg, &pr), buyer->trace_id);
		return 1;
	}
	if (pr.state != PAYS_AUTHORIZED || (*pr.method && strcmp(pr.method, method)))
		return 0;
	if (lg->store->ops->attempt_take(lg->store, sub->id, sub->attempt_key, key, now, now + ledger_lease_ms(lg),
					 &taken, &out->err)) {
		out->end = PURCHASE_REFUSED;
		return 1;
	}
	if (!taken) {
		out->end = PURCHASE_IN_PROGRESS;
		out->retry_after_s = 1;
		return 1;
	}
	LOG_INFO(buyer->trace_id, "session %s: the payment %s the buyer authenticated", sub->id, pr.id);
	payment_of(&charge, ref.key, sub->id, "charge", pr.id, "authorized", NULL, pr.amount_cents, now);
	settle_paid(lg, buyer, &at, sub, &charge, method, out);
	return 1;
}

int checkout_authenticate(struct ledger *lg, const char *session_id, struct err *e)
{
	struct subscription sub = {0};
	struct pay_result pr;
	int rc = -1;

	if (ledger_sub_get(lg, session_id, &sub, e)) {
		if (e->kind == ERR_NOT_FOUND)
			err_set(e, ERR_NOT_FOUND, "SESSION_NOT_FOUND", "no session %s", session_id);
		goto out;
	}
	if (session_closed(&sub, now_ms())) {
		err_set(e, ERR_CONFLICT, session_closed(&sub, now_ms()), "the session is not open");
		goto out;
	}
	if (payment_authenticate(lg, attempt_of(&sub), &pr)) {
		err_set(e, ERR_CONFLICT, "NO_PAYMENT_TO_AUTHENTICATE", "the session has no payment waiting for the buyer");
		goto out;
	}
	rc = 0;
out:
	subscription_clear(&sub);
	return rc;
}

void checkout_complete(struct ledger *lg, const struct actor *a, const char *session_id, const char *key,
		       const char *method, struct purchase_result *out)
{
	struct subscription sub = {0};
	struct attempt at = {key, true, false};
	struct actor buyer = *a;
	int64_t now = now_ms();
	bool taken;

	memset(out, 0, sizeof(*out));
	if (session_open(lg, session_id, now, &sub, out))
		goto out;
	buyer.id = sub.customer_id;
	if (*sub.attempt_key && strcmp(sub.attempt_key, key) && !sub.attempt_until &&
	    parked_attempt(lg, &buyer, &sub, key, method, out))
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
		if (purchase_void(lg, a, sub.attempt_key, &sub, NULL, &out->err)) {
			out->end = PURCHASE_REFUSED;
			goto out;
		}
	}
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
		{"checkout.expired", "session", session_id, EV_BEFORE_AFTER, NULL, NULL},
		{"seat.released", "session", session_id, EV_BEFORE_AFTER, NULL, NULL},
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
		ev[t.nevents++] = (struct event_spec){action, "waitlist_entry", now.entry_id, EV_BEFORE_AFTER, NULL, NULL};
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

/* Whether a subscription from before periods (its period's start not kept) began a period of
 * its own: a purchase, or a change to a plan of another length. */
static bool whole_period(const struct subscription *s)
{
	return s->end_at - s->start_at >= s->duration_days * DAY_MS;
}

/* The start of the period sub is in: kept with it, or for a subscription from before periods
 * that of the subscription of its chain of same-length changes that began it. */
#define CHAIN_MAX 10000
static int period_start(struct ledger *lg, const struct subscription *sub, int64_t *start, struct err *e)
{
	struct subscription at = {0};
	char prev[ID_LEN + 1] = "";
	int hops = 0;

	*start = sub->life.period_start ? sub->life.period_start : sub->start_at;
	if (!sub->life.period_start && !whole_period(sub))
		snprintf(prev, sizeof(prev), "%s", sub->previous_id);
	while (*prev) {
		if (++hops > CHAIN_MAX) {
			err_set(e, ERR_UNAVAILABLE, NULL, "subscription %s: its chain of plan changes has no end", sub->id);
			return -1;
		}
		subscription_clear(&at);
		if (ledger_sub_get(lg, prev, &at, e))
			return -1;
		*start = at.life.period_start ? at.life.period_start : at.start_at;
		prev[0] = '\0';
		if (!at.life.period_start && !whole_period(&at))
			snprintf(prev, sizeof(prev), "%s", at.previous_id);
	}
	subscription_clear(&at);
	return 0;
}

/* What a change of old at now to a plan costing new_amount a period in term makes: the
 * difference to pay (negative: the credit) and the new subscription's life (*life, with its
 * period's end in *end). A plan of the same term takes the rest of the period (the shares of
 * plan_change_prorate) and keeps old's anchor, so its renewals fall where old's would; one of
 * another term begins a period of its own at now, as Stripe Billing resets the billing cycle
 * when the interval changes: its whole price, less old's share of what is left. Either keeps
 * old's card and schedule. */
static int change_terms(struct ledger *lg, const struct subscription *old, int64_t new_amount,
			const struct sub_life *term, int64_t now, int64_t *diff, int64_t *end, struct sub_life *life,
			struct err *e)
{
	int64_t start;

	if (period_start(lg, old, &start, e))
		return -1;
	if (life_same_term(&old->life, term)) {
		*diff = plan_change_prorate(new_amount, old->amount_cents, start, old->end_at, now);
		*end = old->end_at;
		*life = old->life;
		life->period_start = start;
		return 0;
	}
	*diff = new_amount - plan_change_prorate(old->amount_cents, 0, start, old->end_at, now);
	*life = old->life;
	life->term_unit = term->term_unit;
	life->term_count = term->term_count;
	snprintf(life->term_zone, sizeof(life->term_zone), "%s", term->term_zone);
	if (life_begin(life, now, end)) {
		err_set(e, ERR_UNAVAILABLE, NULL, "the plan's time zone %s is not known on this machine", term->term_zone);
		return -1;
	}
	return 0;
}

/* The new subscription's hold gives its seats back and stores the answer r on the attempt's
 * key (the old subscription is untouched). */
static void change_release(struct ledger *lg, const struct actor *a, const struct attempt *at,
			   const struct subscription *sub, struct reply *r, struct purchase_result *out)
{
	const struct event_spec ev[] = {
		{"subscription.failed", "subscription", sub->id, EV_BEFORE_AFTER, NULL, NULL},
		{"seat.released", "subscription", sub->id, EV_BEFORE_AFTER, NULL, NULL},
	};
	struct transition t = {.sub_id = sub->id, .from = "pending", .to = "failed", .now = now_ms(), .dleft = 1,
			       .dheld = -1, .events = ev, .nevents = 2, .reply = r, .reply_key = at->key,
			       .attempt = at->key};
	struct err re = {0};

	if (settle(lg, a, &t, r, out) == 0)
		answer_stored(lg, at->key, out);
	if (purchase_void(lg, a, at->key, sub, NULL, &re))
		LOG_WARN(a->trace_id, "void for %s deferred to the reaper: %s", sub->id, re.msg);
}

/* Refunds up to *left of captured payment payment_id under the credit's own key for it: taken
 * first when only authorized (a chain's charge is kept by the subscription it activated). */
static int credit_from(struct ledger *lg, const struct payment *credit, const struct subscription *by,
		       const char *payment_id, int64_t *left, struct err *e)
{
	const struct pay_ref ref = {attempt_of(by), payment_id, by->customer_id, NULL};
	char refund_key[sizeof(credit->id) + 40];
	struct pay_result pr;
	enum pay_outcome o;

	snprintf(refund_key, sizeof(refund_key), "%s:%s", credit->id, payment_id);
	if ((o = payment_refund(lg, payment_id, refund_key, *left, &pr)) == PAY_INVALID && pr.state == PAYS_AUTHORIZED &&
	    payment_capture(lg, &ref, &pr) == PAY_OK)
		o = payment_refund(lg, payment_id, refund_key, *left, &pr);
	if (o != PAY_OK) {
		err_set(e, ERR_UNAVAILABLE, NULL, "credit %s from %s: %s", credit->id, payment_id, pr.msg);
		return -1;
	}
	*left -= pr.refunded_cents;
	return 0;
}

/* Whether the credit's walk goes on from at to its predecessor: at joined a period its
 * predecessor began (a change to a plan of the same term, or any change before periods were
 * kept), or began one of its own paid in part by its predecessor's unused share (a change to a
 * plan of another term). A subscription renewed since it began, or bought, was paid for its
 * period by itself alone. */
static bool credit_goes_on(const struct subscription *at)
{
	return *at->previous_id && at->life.period_start <= at->start_at;
}

int purchase_credit(struct ledger *lg, const struct actor *a, const struct payment *refund, struct err *e)
{
	struct subscription at = {0}, older = {0};
	char used[8][32] = {{0}};
	int64_t left = refund->amount_cents;
	int hops = 0, nused = 0, rc = -1;
	const struct payment made = *refund;

	/* What paid for the period the credit is of, newest first, each giving back what is left of
	 * the credit, up to what is left of it: a subscription renewed since it began, its renewal;
	 * else its own charge (not one it kept from its predecessor, as a change that was credited
	 * does). Each part's amount is fixed by its first call, so a credit made again after a crash
	 * makes the same parts. */
	if (ledger_sub_get(lg, refund->subscription_id, &at, e))
		goto out;
	while (left > 0) {
		bool on = credit_goes_on(&at), renewed = at.life.period_start > at.start_at;
		if (++hops > CHAIN_MAX) {
			err_set(e, ERR_UNAVAILABLE, NULL, "credit %s: its chain of plan changes has no end", refund->id);
			goto out;
		}
		if (on && ledger_sub_get(lg, at.previous_id, &older, e))
			goto out;
		const char *paid = renewed ? at.life.period_payment
			: on && !strcmp(older.payment_id, at.payment_id) ? "" : at.payment_id;
		bool again = false;
		for (int i = 0; i < nused; i++)
			again |= !strcmp(used[i], paid);
		/* (a free plan's charge is the ledger's alone, of nothing) */
		if (*paid && !again && at.amount_cents > 0) {
			if (nused < 8)
				snprintf(used[nused++], sizeof(used[0]), "%s", paid);
			if (credit_from(lg, refund, &at, paid, &left, e))
				goto out;
		}
		subscription_clear(&at);
		if (!on)
			break;
		at = older;
		memset(&older, 0, sizeof(older));
	}
	if (left > 0) {
		err_set(e, ERR_INTERNAL, NULL, "credit %s: %lld cents more than its chain was paid", refund->id,
			(long long)left);
		LOG_ERROR(a->trace_id, "%s", e->msg);
		goto out;
	}
	/* its payment.refunded was written with the change: marked made without another event */
	bool moved;
	rc = lg->store->ops->payment_mark(lg->store, made.id, "pending", "succeeded", NULL, 0, a, &moved, e);
out:
	subscription_clear(&at);
	subscription_clear(&older);
	return rc;
}

/* The last unit of a plan change: the new subscription active, the old one changed with its
 * seats back on its own plan, the charge (or the credit, as a refund the processor makes
 * after the unit) recorded, all in one step. */
static void change_settle(struct ledger *lg, const struct actor *a, const struct attempt *at, struct subscription *sub,
			  const struct subscription *old, const struct payment *charge, int64_t credit, int64_t now,
			  int64_t end, const struct sub_life *life, struct purchase_result *out)
{
	char token[TOKEN_LEN + 1], hash[65], credit_id[32] = "";
	struct payment refund;
	char *detail;
	const struct event_spec old_ev[] = {
		{"subscription.plan_changed", "subscription", old->id, EV_BEFORE_AFTER, NULL, NULL},
		{"seat.released", "subscription", old->id, EV_BEFORE_AFTER, NULL, NULL},
	};
	struct transition also, t;
	struct transition_out o = {0};
	struct reply r;

	token_new(sub->id, token);
	sha256_hex(token, strlen(token), hash);
	sub->start_at = now;
	sub->end_at = end;
	sub->life = *life;
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
		{"subscription.activated", "subscription", sub->id, EV_BEFORE_AFTER, NULL, NULL},
		{charge ? "payment.authorized" : "payment.refunded", "payment", paid ? paid->id : "", EV_NO_COUNTS, detail, NULL},
	};
	r = lg->replies->changed(sub, token, a->trace_id);
	/* the old one as read: a renewal or a schedule of it meanwhile makes the change lose */
	also = (struct transition){.sub_id = old->id, .from = "active", .to = "changed", .now = now, .dleft = 1,
				   .events = old_ev, .nevents = 2,
				   .life = {NULL, true, old->end_at, old->life.next_attempt_at, old->life.cancel_at_period_end,
					    old->life.payment_method}};
	t = (struct transition){.sub_id = sub->id, .from = "pending", .live_after = now_ms(), .to = "active", .now = now,
				.dheld = -1, .payment_id = sub->payment_id, .start_at = sub->start_at,
				.end_at = sub->end_at, .token_hash = hash, .payment = paid, .events = ev, .nevents = paid ? 2 : 1, .reply = &r, .reply_key = at->key,
				.attempt = at->key, .also = &also, .life = {.set = &sub->life}};
	if (ledger_transition(lg, &t, a, &o, &out->err)) {
		refused(out, out->err.kind, NULL, out->err.msg);
	} else if (o.result == MOVED) {
		struct err ce = {0};
		out->end = PURCHASE_ANSWERED;
		out->reply = r;
		r.body = NULL;
		if (charge)
			capture(a, lg, sub, charge);
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
	struct sub_life life;
	struct pay_result pr;
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
	} else if (change_terms(lg, &old, sub->amount_cents, &sub->life, now, &diff, &end, &life, &out->err)) {
		refused(out, ERR_UNAVAILABLE, NULL, out->err.msg);
	} else if (diff <= 0) {
		change_settle(lg, a, at, sub, &old, NULL, -diff, now, end, &life, out);
	} else if (!method) {
		/* the price rose between the check and the hold: there is now something to charge */
		struct reply r = lg->replies->invalid("paymentMethodId", "is required: the new plan costs more for the days left",
						      a->trace_id);
		change_release(lg, a, at, sub, &r, out);
		free(r.body);
	} else {
		struct pay_req r = {at->key, sub->id, sub->customer_id, method, diff, false, sub->hold_deadline,
				    a->trace_id, NULL};
		const struct pay_ref ref = {at->key, NULL, sub->customer_id, NULL};
		/* A resumed change keeps the difference its first attempt was authorized for: asked
		 * again it would be another amount (the period went on), which the processor refuses
		 * under the same key. */
		if (!at->resumed || payment_lookup(lg, &ref, &pr) != PAY_OK ||
		    (pr.state != PAYS_AUTHORIZED && pr.state != PAYS_DECLINED))
			payment_authorize(lg, &r, &pr);
		else
			pr.outcome = pr.state == PAYS_DECLINED ? PAY_DECLINED : PAY_OK;
		if (!authorized(lg, a, at, sub, &pr, &charge, out))
			;
		else if (old.end_at <= now_ms())
			/* the period ended while the difference was authorized: voided with the seats back */
			change_ended(lg, a, at, sub, out);
		else
			change_settle(lg, a, at, sub, &old, &charge, 0, now, end, &life, out);
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
		struct sub_life term = {0}, life;
		int64_t end;
		life_term_of(&term, &plan);
		if (change_terms(lg, &old, plan.price_cents * old.quantity, &term, now, &diff, &end, &life, &out->err)) {
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
