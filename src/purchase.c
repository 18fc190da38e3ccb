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
	out->end = PURCHASE_REFUSED;
	err_set(&out->err, kind, code, "%s", msg);
}

/* The answer stored on the key: the purchase ended, perhaps in another request (a concurrent
 * retry, or the reaper that expired the hold). */
static void answer_stored(struct ledger *lg, const char *key, struct purchase_result *out)
{
	struct key_record k = {0};
	bool found;

	if (lg->store->ops->key_get(lg->store, key, &k, &found, &out->err) == 0 && found &&
	    k.state == KEY_DONE) {
		out->end = PURCHASE_ANSWERED;
		out->reply = k.reply;
		k.reply.body = NULL;
	} else {
		LOG_ERROR(NULL, "key %s has no final answer: %s", key, out->err.msg);
		refused(out, ERR_UNAVAILABLE, NULL, "the purchase could not be settled");
	}
	key_record_clear(&k);
}

static void payment_of(struct payment *p, const struct subscription *sub, const char *kind,
		       const char *id, const char *status, const char *decline, int64_t amount, int64_t now)
{
	memset(p, 0, sizeof(*p));
	snprintf(p->id, sizeof(p->id), "%s", id);
	snprintf(p->idem_key, sizeof(p->idem_key), "%s", sub->idem_key);
	snprintf(p->kind, sizeof(p->kind), "%s", kind);
	snprintf(p->status, sizeof(p->status), "%s", status);
	snprintf(p->decline_code, sizeof(p->decline_code), "%s", decline ? decline : "");
	snprintf(p->subscription_id, sizeof(p->subscription_id), "%s", sub->id);
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

int purchase_refund(struct ledger *lg, const struct actor *a, const struct subscription *sub,
		    struct err *e)
{
	struct processor_rec pr;
	struct payment charge, refund;
	int64_t now = now_ms();

	if (payment_void(lg->store, sub->idem_key, &pr, e))
		return -1;
	if (pr.state != PROC_REFUNDED)
		return 0;
	payment_of(&charge, sub, "charge", pr.charge_id, "succeeded", NULL, pr.amount_cents, now);
	payment_of(&refund, sub, "refund", pr.refund_id, "succeeded", NULL, pr.amount_cents, now);
	return record(lg, a, &charge, e) || record(lg, a, &refund, e) ? -1 : 0;
}

int purchase_expire(struct ledger *lg, const struct actor *a, const struct subscription *sub,
		    const struct payment *charge, int64_t now, bool *moved, struct err *e)
{
	char *detail = charge ? ledger_payment_detail(charge) : NULL;
	const struct event_spec ev[] = {
		{"subscription.expired", "subscription", sub->id, EV_BEFORE_AFTER, NULL},
		{"seat.released", "subscription", sub->id, EV_BEFORE_AFTER, NULL},
		{"payment.succeeded", "payment", charge ? charge->id : "", EV_NO_COUNTS, detail},
	};
	struct reply r = lg->replies->expired(a->trace_id);
	struct transition t = {.sub_id = sub->id, .from = "pending", .due_by = now, .to = "expired",
			       .now = now, .dleft = 1, .dheld = -1, .payment = charge, .events = ev,
			       .nevents = charge ? 3 : 2, .reply = &r};
	struct transition_out o;
	int rc = lg->store->ops->transition(lg->store, &t, a, &o, e);

	*moved = rc == 0 && o.result == MOVED;
	if (rc == 0 && o.result != MOVE_NOT_FOUND && strcmp(o.sub.status, "active") &&
	    strcmp(o.sub.status, "cancelled") && strcmp(o.sub.status, "pending")) {
		/* The hold ended without a seat: no charge is kept. The reaper refunds later what
		 * cannot be refunded now. */
		struct err re = {0};
		if (purchase_refund(lg, a, sub, &re))
			LOG_WARN(a->trace_id, "refund for %s deferred to the reaper: %s", sub->id, re.msg);
	}
	transition_out_clear(&o);
	free(r.body);
	free(detail);
	return rc;
}

/* The hold is no longer pending, or past its deadline: expire it if still pending, make sure
 * no charge is kept, answer what the key holds. */
static void hold_gone(struct ledger *lg, const struct actor *a, const struct subscription *sub,
		      const struct payment *charge, struct purchase_result *out)
{
	bool moved;

	/* Expired here, or settled by someone else (the reaper): either way no charge is kept. */
	if (purchase_expire(lg, a, sub, charge, now_ms(), &moved, &out->err)) {
		refused(out, out->err.kind, NULL, out->err.msg);
		return;
	}
	answer_stored(lg, sub->idem_key, out);
}

/* The second unit: t stores reply r on the key. 1 when it moved (out answered with r, whose
 * body it takes), 0 when the hold was no longer pending as t requires, -1 when the store
 * failed (out refused; the hold stays until a retry or the reaper settles it). */
static int settle(struct ledger *lg, const struct actor *a, const struct transition *t, struct reply *r,
		  struct purchase_result *out)
{
	struct transition_out o = {0};
	int rc = -1;

	if (lg->store->ops->transition(lg->store, t, a, &o, &out->err)) {
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

static void settle_paid(struct ledger *lg, const struct actor *a, struct subscription *sub,
			const struct payment *charge, struct purchase_result *out)
{
	char token[TOKEN_LEN + 1], hash[65];
	char *detail = ledger_payment_detail(charge);
	const struct event_spec ev[] = {
		{"payment.succeeded", "payment", charge->id, EV_NO_COUNTS, detail},
		{"subscription.activated", "subscription", sub->id, EV_BEFORE_AFTER, NULL},
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
				.nevents = 2, .reply = &r};
	if (settle(lg, a, &t, &r, out) == 0)
		hold_gone(lg, a, sub, charge, out);
	free(r.body);
	free(detail);
}

static void settle_declined(struct ledger *lg, const struct actor *a, const struct subscription *sub,
			    const struct payment *charge, struct purchase_result *out)
{
	char *detail = ledger_payment_detail(charge);
	const struct event_spec ev[] = {
		{"payment.declined", "payment", charge->id, EV_NO_COUNTS, detail},
		{"subscription.failed", "subscription", sub->id, EV_BEFORE_AFTER, NULL},
		{"seat.released", "subscription", sub->id, EV_BEFORE_AFTER, NULL},
	};
	struct reply r = lg->replies->declined(charge->decline_code, a->trace_id);
	struct transition t = {.sub_id = sub->id, .from = "pending", .to = "failed", .now = now_ms(),
			       .dleft = 1, .dheld = -1, .payment = charge, .events = ev, .nevents = 3,
			       .reply = &r};

	if (settle(lg, a, &t, &r, out) == 0) {
		/* Settled by someone else (the reaper): keep the decline on record. */
		struct err re = {0};
		if (record(lg, a, charge, &re))
			LOG_WARN(a->trace_id, "recording decline %s: %s", charge->id, re.msg);
		answer_stored(lg, sub->idem_key, out);
	}
	free(r.body);
	free(detail);
}

/* Charge outside any transaction, then settle in one atomic unit. */
static void charge_and_settle(struct ledger *lg, const struct actor *a, struct subscription *sub,
			      const char *method, struct purchase_result *out)
{
	struct processor_rec pr;
	struct payment charge;

	if (payment_charge(lg->store, sub->idem_key, sub->amount_cents, method, lg->payment_latency_ms, &pr,
			   &out->err)) {
		/* The key stays bound to the hold; a retry after the lease resumes here. */
		LOG_WARN(a->trace_id, "charge for %s: %s", sub->id, out->err.msg);
		refused(out, out->err.kind, NULL, out->err.msg);
		return;
	}
	switch (pr.state) {
	case PROC_CHARGED:
		payment_of(&charge, sub, "charge", pr.charge_id, "succeeded", NULL, pr.amount_cents, now_ms());
		settle_paid(lg, a, sub, &charge, out);
		break;
	case PROC_DECLINED:
		payment_of(&charge, sub, "charge", pr.charge_id, "declined", pr.decline_code, pr.amount_cents,
			   now_ms());
		settle_declined(lg, a, sub, &charge, out);
		break;
	default:
		/* Voided or refunded: whoever did it settled the hold first. */
		hold_gone(lg, a, sub, NULL, out);
		break;
	}
}

/* The key existed: replay, refuse, or resume a request that died after its hold. */
static void key_exists(struct ledger *lg, const struct actor *a, const struct purchase_req *p,
		       const struct claim *c, struct purchase_result *out)
{
	struct subscription sub = {0};
	int64_t wait;

	if (strcmp(c->key.fingerprint, p->fingerprint)) {
		out->end = PURCHASE_KEY_REUSED;
	} else if (c->key.state == KEY_DONE) {
		out->end = PURCHASE_ANSWERED;
		out->replayed = true;
		out->reply.status = c->key.reply.status;
		out->reply.body = xstrdup(c->key.reply.body ? c->key.reply.body : "{}");
	} else if (!c->taken_over || c->key.state != KEY_HELD) {
		out->end = PURCHASE_IN_PROGRESS;
		wait = (c->key.locked_until - now_ms() + 999) / 1000;
		out->retry_after_s = wait < 1 ? 1 : (int)wait;
	} else if (ledger_sub_get(lg, c->key.subscription_id, &sub, &out->err)) {
		refused(out, ERR_UNAVAILABLE, NULL, out->err.msg);
	} else if (strcmp(sub.status, "pending")) {
		answer_stored(lg, p->key, out);
		out->replayed = true;
	} else {
		struct actor buyer = *a;
		buyer.id = sub.customer_id;
		LOG_INFO(a->trace_id, "resuming purchase %s at its charge", sub.id);
		charge_and_settle(lg, &buyer, &sub, p->payment_method, out);
	}
	subscription_clear(&sub);
}

void purchase_run(struct ledger *lg, const struct actor *a, const struct purchase_req *p,
		  struct purchase_result *out)
{
	char sub_id[ID_LEN + 1];
	struct customer c = {0};
	struct hold_out h = {0};
	struct actor buyer = *a;
	int64_t now = now_ms();

	memset(out, 0, sizeof(*out));
	id_new(sub_id);
	const struct event_spec ev[] = {{"seat.held", "subscription", sub_id, EV_BEFORE_AFTER, NULL}};
	if (!p->customer_id) {
		id_new(c.id);
		c.email = xstrdup(p->email);
		c.name = xstrdup(p->name);
		c.created_at = now;
	}
	struct hold_req r = {{p->key, p->fingerprint, now, now + ledger_lease_ms(lg)}, sub_id, p->plan_id,
			     p->quantity, p->customer_id, p->customer_id ? NULL : &c,
			     now + (int64_t)lg->hold_ttl_s * 1000, ev, 1};
	if (lg->store->ops->hold(lg->store, &r, a, &h, &out->err)) {
		LOG_WARN(a->trace_id, "purchase hold: %s", out->err.msg);
		out->end = PURCHASE_REFUSED;
		goto out;
	}
	switch (h.result) {
	case HOLD_TAKEN:
		buyer.id = h.sub.customer_id;
		charge_and_settle(lg, &buyer, &h.sub, p->payment_method, out);
		break;
	case HOLD_KEY_EXISTS:
		key_exists(lg, a, p, &h.claim, out);
		break;
	case HOLD_NO_PLAN:
		refused(out, ERR_NOT_FOUND, "PLAN_NOT_FOUND", "no such plan");
		break;
	case HOLD_PLAN_INACTIVE:
		refused(out, ERR_CONFLICT, "PLAN_INACTIVE", "the plan is not on sale");
		break;
	case HOLD_SOLD_OUT:
	case HOLD_ORDER_LIMIT:
	case HOLD_CUSTOMER_LIMIT:
		out->end = PURCHASE_REFUSED;
		ledger_hold_refused(&h, p->quantity, &out->err);
		break;
	case HOLD_NO_CUSTOMER:
		refused(out, ERR_NOT_FOUND, "CUSTOMER_NOT_FOUND", "no such customer");
		break;
	}
out:
	hold_out_clear(&h);
	customer_clear(&c);
}
