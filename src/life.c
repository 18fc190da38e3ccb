/* life.c - renewals, dunning, the end of a subscription, and what its holder schedules. */
#include "life.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ids.h"
#include "log.h"
#include "outbox.h"
#include "payment.h"
#include "period.h"
#include "util.h"
#include "view.h"

#define DAY_MS (24LL * 3600 * 1000)
#define BATCH 200
/* a renewal charge's bound: the renewer is no buyer's request, it may wait for the processor */
#define CHARGE_DEADLINE_MS 30000

int life_period_end(const struct sub_life *l, int64_t index, int64_t *end)
{
	return period_end(l->anchor_at, l->term_unit, (int)l->term_count, l->term_zone, index - l->anchor_index, end);
}

void life_term_of(struct sub_life *l, const struct plan *p)
{
	l->term_unit = p->interval;
	l->term_count = p->interval_count;
	snprintf(l->term_zone, sizeof(l->term_zone), "%s", p->timezone);
}

bool life_same_term(const struct sub_life *a, const struct sub_life *b)
{
	return a->term_unit == b->term_unit && a->term_count == b->term_count && !strcmp(a->term_zone, b->term_zone);
}

int life_begin(struct sub_life *l, int64_t at, int64_t *end)
{
	l->anchor_at = l->period_start = at;
	l->anchor_index = l->period_index = 0;
	return life_period_end(l, 0, end);
}

void life_renewal_key(const struct subscription *s, char key[PAYMENT_KEY_LEN + 1])
{
	char card[65];

	/* the card is part of it: a renewer that read the card before the holder gave another, and
	 * the holder's try on the new one, are two charges (one kept, the other refunded), never one
	 * key with two outcomes */
	sha256_hex(s->life.payment_method, strlen(s->life.payment_method), card);
	snprintf(key, PAYMENT_KEY_LEN + 1, "%s.%" PRId64 ".%" PRId64 ".%.8s", s->id, s->life.period_index + 1,
		 s->life.attempts, card);
}

/* A renewal's charge is asked for under its key only after the key is on record ("open"), and
 * the record is closed once the outcome is settled: a charge whose answer never came, and whose
 * subscription then moved on (another card, an end), is found again by life_reconcile. */
static void attempt_of(struct payment *p, const struct subscription *sub, const char *key)
{
	char digest[65], id[32];

	sha256_hex(key, strlen(key), digest);
	snprintf(id, sizeof(id), "att_%.24s", digest);
	payment_of(p, key, sub->id, "attempt", id, "open", NULL, sub->amount_cents, now_ms());
}

static int attempt_open(struct ledger *lg, const struct actor *a, const struct subscription *sub, const char *key,
			struct err *e)
{
	struct payment p;
	bool existed;

	attempt_of(&p, sub, key);
	return lg->store->ops->payment_record(lg->store, &p, NULL, 0, a, &existed, e);
}

static void attempt_close(struct ledger *lg, const struct actor *a, const struct subscription *sub, const char *key)
{
	struct payment p;
	struct err e = {0};
	bool moved;

	attempt_of(&p, sub, key);
	if (lg->store->ops->payment_mark(lg->store, p.id, "open", "closed", NULL, 0, a, &moved, &e))
		LOG_WARN(a->trace_id, "renewal attempt %s left open for the next pass: %s", key, e.msg);
}

/* A move of sub's life from what was read of it: it still has that period, next attempt and
 * schedule, or nothing moves. */
static struct life_move life_checked(const struct subscription *sub, const struct sub_life *set)
{
	return (struct life_move){set, true, sub->end_at, sub->life.next_attempt_at, sub->life.cancel_at_period_end,
				  sub->life.payment_method};
}

/* A small JSON detail for a life event; new. */
static char *life_detail(const char *key, int64_t ms, int64_t attempt)
{
	struct json_object *o = json_object_new_object();
	char *s;

	json_object_object_add(o, key, view_time(ms));
	if (attempt >= 0)
		json_object_object_add(o, "attempt", json_object_new_int64(attempt));
	s = xstrdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	json_object_put(o);
	return s;
}

/* The end of a period that does not renew: ended (renewal "none"), or cancelled as its holder
 * asked; its seats back and offered to the line in the same unit. */
static int end_period(struct ledger *lg, const struct actor *a, const struct subscription *sub, struct life_stats *st,
		      struct err *e)
{
	bool asked = sub->life.cancel_at_period_end;
	struct outbox_mail m;
	outbox_ended(&m, sub, asked ? "cancelled" : "ended", sub->end_at, a->trace_id);
	const struct event_spec ev[] = {
		{asked ? "subscription.cancelled" : "subscription.ended", "subscription", sub->id, EV_BEFORE_AFTER, NULL,
		 &m.spec},
		{"seat.released", "subscription", sub->id, EV_BEFORE_AFTER, NULL, NULL},
	};
	struct sub_life l = sub->life;
	struct transition t = {.sub_id = sub->id, .from = sub->status, .to = asked ? "cancelled" : "ended",
			       .now = now_ms(), .dleft = 1, .events = ev, .nevents = 2};
	struct transition_out o;

	l.ended_at = sub->end_at;
	snprintf(l.cancellation_reason, sizeof(l.cancellation_reason), "%s", asked ? "requested" : "");
	t.life = life_checked(sub, &l);
	int rc = ledger_transition(lg, &t, a, &o, e);
	outbox_mail_clear(&m);
	if (rc)
		return -1;
	if (o.result == MOVED)
		asked ? st->cancelled++ : st->ended++;
	transition_out_clear(&o);
	return 0;
}

/* A renewal that came after its period was served another way, or ended: kept "late" (so that a
 * crash leaves it on record), then refunded. */
static int charge_late(struct ledger *lg, const struct actor *a, struct payment *p, struct life_stats *st,
		       struct err *e)
{
	bool existed;

	snprintf(p->status, sizeof(p->status), "late");
	if (payment_keep(lg, a, p, &existed, e))
		return -1;
	if (existed)
		return 0;  /* the same charge, recorded by whoever renewed the period with it */
	return life_refund_late(lg, a, st, e);
}

/* A change of the plan's term applies from the next period: that period is anchored at its
 * start, in the plan's term now. */
static int rebase(struct ledger *lg, const struct subscription *sub, struct sub_life *l, struct err *e)
{
	struct plan p = {0};
	struct sub_life term;

	if (ledger_plan_get(lg, sub->plan_id, &p, e))
		return -1;
	life_term_of(&term, &p);
	plan_clear(&p);
	if (life_same_term(l, &term))
		return 0;
	l->term_unit = term.term_unit;
	l->term_count = term.term_count;
	snprintf(l->term_zone, sizeof(l->term_zone), "%s", term.term_zone);
	l->anchor_at = l->period_start;
	l->anchor_index = l->period_index;
	return 0;
}

static int renewed(struct ledger *lg, const struct actor *a, const struct subscription *sub, const char *pay_id,
		   const char *key, struct life_stats *st, struct err *e)
{
	struct sub_life l = sub->life;
	struct payment p;
	struct transition_out o;
	int64_t now = now_ms(), end;
	char *detail;
	int rc = -1;

	l.period_index = sub->life.period_index + 1;
	l.period_start = sub->end_at;
	l.next_attempt_at = l.attempts = 0;
	snprintf(l.period_payment, sizeof(l.period_payment), "%s", pay_id);
	if (rebase(lg, sub, &l, e))
		return -1;
	if (life_period_end(&l, l.period_index, &end)) {
		err_set(e, ERR_UNAVAILABLE, NULL, "subscription %s: its time zone %s is not known here", sub->id,
			l.term_zone);
		return -1;
	}
	payment_of(&p, key, sub->id, "renewal", pay_id, "succeeded", NULL, sub->amount_cents, now);
	detail = ledger_payment_detail(&p);
	struct subscription renewed = *sub;
	struct outbox_mail m;
	renewed.life = l;
	renewed.end_at = end;
	outbox_receipt(&m, &renewed, &p, "renewal", a->trace_id);
	const struct event_spec ev[] = {
		{"payment.succeeded", "payment", p.id, EV_NO_COUNTS, detail, &m.spec},
		{"subscription.renewed", "subscription", sub->id, EV_NO_COUNTS, NULL, NULL},
	};
	struct transition t = {.sub_id = sub->id, .from = sub->status, .to = "active", .now = now, .end_at = end,
			       .payment = &p, .events = ev, .nevents = 2, .life = life_checked(sub, &l)};
	if (ledger_transition(lg, &t, a, &o, e) == 0) {
		rc = 0;
		if (o.result == MOVED)
			st->renewed++;
		else
			rc = charge_late(lg, a, &p, st, e);
		transition_out_clear(&o);
	}
	free(detail);
	outbox_mail_clear(&m);
	return rc;
}

/* A renewal declined: past_due until the next day of the schedule, or, after its last, cancelled
 * with its seats back and offered to the line. */
static int declined(struct ledger *lg, const struct actor *a, const struct subscription *sub, const char *pay_id,
		    const char *key, const char *code, struct life_stats *st, struct err *e)
{
	struct sub_life l = sub->life;
	struct payment p;
	struct transition_out o;
	int64_t now = now_ms();
	bool last = sub->life.attempts >= lg->ndunning;
	char *detail, *when;
	int rc = -1;

	l.attempts = sub->life.attempts + 1;
	l.next_attempt_at = 0;
	/* the schedule's days are the plan's local days after the period's end */
	if (!last && period_end(sub->end_at, PERIOD_DAY, lg->dunning_days[sub->life.attempts], sub->life.term_zone, 0,
				&l.next_attempt_at))
		l.next_attempt_at = sub->end_at + lg->dunning_days[sub->life.attempts] * DAY_MS;
	if (last) {
		l.ended_at = now;
		snprintf(l.cancellation_reason, sizeof(l.cancellation_reason), "payment_failed");
	}
	payment_of(&p, key, sub->id, "renewal", pay_id, "declined", code, sub->amount_cents, now);
	detail = ledger_payment_detail(&p);
	when = last ? NULL : life_detail("nextPaymentAttemptAt", l.next_attempt_at, l.attempts);
	struct subscription after = *sub;
	struct outbox_mail m;
	after.life = l;
	if (last)
		outbox_ended(&m, &after, "cancelled", now, a->trace_id);
	else
		outbox_payment_failed(&m, &after, l.next_attempt_at, code, a->trace_id);
	const struct event_spec ev[] = {
		{"payment.declined", "payment", p.id, EV_NO_COUNTS, detail, NULL},
		{last ? "subscription.cancelled" : "subscription.past_due", "subscription", sub->id,
		 last ? EV_BEFORE_AFTER : EV_NO_COUNTS, when, &m.spec},
		{"seat.released", "subscription", sub->id, EV_BEFORE_AFTER, NULL, NULL},
	};
	struct transition t = {.sub_id = sub->id, .from = sub->status, .to = last ? "cancelled" : "past_due",
			       .now = now, .dleft = last ? 1 : 0, .payment = &p, .events = ev, .nevents = last ? 3 : 2,
			       .life = life_checked(sub, &l)};
	if (ledger_transition(lg, &t, a, &o, e) == 0) {
		bool existed;
		rc = 0;
		if (o.result == MOVED)
			last ? st->cancelled++ : st->past_due++;
		else
			rc = payment_keep(lg, a, &p, &existed, e);  /* moved meanwhile: the decline on record */
		transition_out_clear(&o);
	}
	free(detail);
	free(when);
	outbox_mail_clear(&m);
	return rc;
}

/* The renewal of sub's next period: charged on its saved method without the buyer, then
 * settled. An unknown outcome leaves it due: the next pass asks again under the same key. */
static int renew(struct ledger *lg, const struct actor *a, const struct subscription *sub, struct life_stats *st,
		 struct err *e)
{
	char key[PAYMENT_KEY_LEN + 1], id[32];
	struct pay_result pr = {0};

	life_renewal_key(sub, key);
	if (!sub->amount_cents) {
		id_new_prefixed("pay_", id, sizeof(id));
		return renewed(lg, a, sub, id, key, st, e);
	}
	if (!*sub->life.payment_method) {
		id_new_prefixed("pay_", id, sizeof(id));
		return declined(lg, a, sub, id, key, "payment_method_missing", st, e);
	}
	struct pay_req r = {key, sub->id, sub->customer_id, sub->life.payment_method, sub->amount_cents, true,
			    now_ms() + CHARGE_DEADLINE_MS, a->trace_id, NULL};
	int rc;

	if (attempt_open(lg, a, sub, key, e))
		return -1;
	payment_authorize(lg, &r, &pr);
	if (!*pr.id)
		id_new_prefixed("pay_", pr.id, sizeof(pr.id));
	switch (pr.outcome) {
	case PAY_OK:
		if (pr.state != PAYS_CAPTURED)
			goto unknown;
		rc = renewed(lg, a, sub, pr.id, key, st, e);
		break;
	case PAY_DECLINED:
		rc = declined(lg, a, sub, pr.id, key, *pr.decline_code ? pr.decline_code : "card_declined", st, e);
		break;
	case PAY_ACTION_REQUIRED:
		/* the bank wants the buyer: past_due, and a card they confirm (payment-method) pays it */
		rc = declined(lg, a, sub, pr.id, key, "authentication_required", st, e);
		break;
	case PAY_INVALID:
		rc = declined(lg, a, sub, pr.id, key, "invalid_payment_method", st, e);
		break;
	default:
		goto unknown;
	}
	if (rc == 0)
		attempt_close(lg, a, sub, key);
	return rc;
unknown:
	st->unknown++;
	LOG_WARN(a->trace_id, "renewal %s of %s left for the next pass: %s", key, sub->id, pr.msg);
	return 0;
}

/* Whether the attempt under key is the one renew() would make of sub now: then its next pass
 * settles it under the same key. */
static bool attempt_current(const struct subscription *sub, const char *key)
{
	char now_key[PAYMENT_KEY_LEN + 1];

	if (strcmp(sub->status, "active") && strcmp(sub->status, "past_due"))
		return false;
	life_renewal_key(sub, now_key);
	return !strcmp(now_key, key);
}

int life_reconcile(struct ledger *lg, const struct actor *a, struct life_stats *st, struct err *e)
{
	struct payment *open = NULL;
	size_t n = 0;
	int rc = 0;

	if (lg->store->ops->payments_in(lg->store, "open", BATCH, &open, &n, e))
		return -1;
	for (size_t i = 0; i < n && rc == 0; i++) {
		struct subscription sub = {0};
		struct pay_result pr;
		if ((rc = ledger_sub_get(lg, open[i].subscription_id, &sub, e)))
			break;
		if (attempt_current(&sub, open[i].idem_key)) {
			subscription_clear(&sub);
			continue;
		}
		/* its subscription moved on: what became of the charge asked for under the key */
		const struct pay_ref ref = {open[i].idem_key, NULL, sub.customer_id, NULL};
		if (payment_lookup(lg, &ref, &pr) != PAY_OK) {
			LOG_WARN(a->trace_id, "renewal attempt %s still unknown: %s", open[i].idem_key, pr.msg);
		} else if (pr.state == PAYS_AUTHORIZED) {
			/* held, not taken: let go */
			if (payment_cancel(lg, &ref, &pr) == PAY_OK)
				attempt_close(lg, a, &sub, open[i].idem_key);
		} else if (pr.state == PAYS_CAPTURED) {
			struct payment late;
			payment_of(&late, open[i].idem_key, sub.id, "renewal", pr.id, "late", NULL,
				   pr.amount_cents ? pr.amount_cents : open[i].amount_cents, now_ms());
			if ((rc = charge_late(lg, a, &late, st, e)) == 0)
				attempt_close(lg, a, &sub, open[i].idem_key);
		} else {
			attempt_close(lg, a, &sub, open[i].idem_key);   /* nothing was taken */
		}
		subscription_clear(&sub);
	}
	free(open);
	return rc;
}

int life_due(struct ledger *lg, const struct actor *a, const struct subscription *sub, struct life_stats *st,
	     struct err *e)
{
	int64_t now = now_ms();

	if (!strcmp(sub->status, "active") && sub->end_at > 0 && sub->end_at <= now)
		return sub->plan_renews && !sub->life.cancel_at_period_end ? renew(lg, a, sub, st, e)
									   : end_period(lg, a, sub, st, e);
	if (!strcmp(sub->status, "past_due") && sub->life.next_attempt_at <= now)
		return sub->life.cancel_at_period_end ? end_period(lg, a, sub, st, e) : renew(lg, a, sub, st, e);
	return 0;
}

int life_refund_late(struct ledger *lg, const struct actor *a, struct life_stats *st, struct err *e)
{
	struct payment *late = NULL;
	size_t n = 0;
	int rc = 0;

	if (lg->store->ops->payments_in(lg->store, "late", BATCH, &late, &n, e))
		return -1;
	for (size_t i = 0; i < n && rc == 0; i++) {
		struct pay_result pr;
		char *detail;
		bool moved;
		if (payment_refund(lg, late[i].id, late[i].idem_key, late[i].amount_cents, &pr) != PAY_OK) {
			LOG_WARN(a->trace_id, "refund of late renewal %s left for the next pass: %s", late[i].id, pr.msg);
			continue;
		}
		snprintf(late[i].status, sizeof(late[i].status), "refunded");
		detail = ledger_payment_detail(&late[i]);
		const struct event_spec ev[] = {{"payment.refunded", "payment", late[i].id, EV_NO_COUNTS, detail, NULL}};
		rc = lg->store->ops->payment_mark(lg->store, late[i].id, "late", "refunded", ev, 1, a, &moved, e);
		st->refunded += rc == 0 && moved;
		free(detail);
	}
	free(late);
	return rc;
}

int life_coming(struct ledger *lg, int64_t days, int limit, struct subscription **out, size_t *n, struct err *e)
{
	return lg->store->ops->subs_due(lg->store, now_ms() + days * DAY_MS, limit, out, n, e);
}

/* One move of a holder's: sub as read, to `to` with life l, its event; *moved false when the
 * subscription changed meanwhile (the caller reads it again). */
static int holder_move(struct ledger *lg, const struct actor *a, const struct subscription *sub, const struct sub_life *l,
		       bool *moved, struct subscription *out, struct err *e)
{
	const struct event_spec ev[] = {{"subscription.updated", "subscription", sub->id, EV_NO_COUNTS, NULL, NULL}};
	struct transition t = {.sub_id = sub->id, .from = sub->status, .to = sub->status, .now = now_ms(),
			       .events = ev, .nevents = 1, .life = life_checked(sub, l)};
	struct transition_out o;

	if (ledger_transition(lg, &t, a, &o, e))
		return -1;
	*moved = o.result == MOVED;
	if (*moved)
		*out = o.sub;
	else
		transition_out_clear(&o);
	return 0;
}

#define HOLDER_TRIES 5

/* A holder's refusal: 409 with code. */
static int holder_refuse(struct err *e, const char *code, struct subscription *sub)
{
	err_set(e, ERR_CONFLICT, code, "subscription %s is %s", sub->id, sub->status);
	subscription_clear(sub);
	return -1;
}

int life_schedule_end(struct ledger *lg, const struct actor *a, const char *id, bool at_end, struct subscription *out,
		      struct err *e)
{
	for (int tries = 0; tries < HOLDER_TRIES; tries++) {
		struct subscription sub = {0};
		bool moved = false, over;
		if (ledger_sub_get(lg, id, &sub, e))
			return -1;
		over = !strcmp(sub.status, "ended") || !strcmp(sub.status, "cancelled") ||
		       (!strcmp(sub.status, "active") && sub.end_at <= now_ms());
		if (strcmp(sub.status, "active") && strcmp(sub.status, "past_due"))
			return holder_refuse(e, !at_end && over ? "SUBSCRIPTION_ENDED" : "SUBSCRIPTION_NOT_ACTIVE", &sub);
		if (!at_end && !sub.life.cancel_at_period_end)
			return holder_refuse(e, "NOT_SCHEDULED", &sub);
		if (over)
			return holder_refuse(e, "SUBSCRIPTION_ENDED", &sub);  /* its end, or its renewal, is being made */
		if (at_end && sub.life.cancel_at_period_end) {
			*out = sub;  /* scheduled already: as it is */
			return 0;
		}
		struct sub_life l = sub.life;
		l.cancel_at_period_end = at_end;
		int rc = holder_move(lg, a, &sub, &l, &moved, out, e);
		subscription_clear(&sub);
		if (rc || moved)
			return rc;
	}
	err_set(e, ERR_RETRYABLE, NULL, "subscription %s kept changing", id);
	return -1;
}

int life_payment_method(struct ledger *lg, const struct actor *a, const char *id, const char *method,
			struct subscription *out, struct err *e)
{
	for (int tries = 0; tries < HOLDER_TRIES; tries++) {
		struct subscription sub = {0};
		bool moved = false, past_due;
		if (ledger_sub_get(lg, id, &sub, e))
			return -1;
		past_due = !strcmp(sub.status, "past_due");
		if (!past_due && strcmp(sub.status, "active")) {
			err_set(e, ERR_CONFLICT, "SUBSCRIPTION_NOT_ACTIVE", "subscription %s is %s", id, sub.status);
			subscription_clear(&sub);
			return -1;
		}
		struct sub_life l = sub.life;
		snprintf(l.payment_method, sizeof(l.payment_method), "%s", method);
		if (past_due)
			l.next_attempt_at = now_ms();  /* due now: tried at once, below */
		int rc = holder_move(lg, a, &sub, &l, &moved, out, e);
		subscription_clear(&sub);
		if (rc)
			return rc;
		if (!moved)
			continue;
		if (past_due) {
			struct life_stats st = {0};
			struct subscription now_sub = *out;
			memset(out, 0, sizeof(*out));
			rc = life_due(lg, a, &now_sub, &st, e);
			subscription_clear(&now_sub);
			if (rc == 0)
				rc = ledger_sub_get(lg, id, out, e);
		}
		return rc;
	}
	err_set(e, ERR_RETRYABLE, NULL, "subscription %s kept changing", id);
	return -1;
}

#define REMIND_BATCH 200

int life_remind(struct ledger *lg, const struct actor *a, struct life_stats *st, struct err *e)
{
	struct subscription *subs = NULL;
	int64_t now = now_ms(), days = lg->renewal_notice_days;
	size_t n = 0;
	int rc = 0;

	if (days <= 0)
		return 0;
	/* the notice is counted in calendar days: a day more covers any change of summer time */
	if (lg->store->ops->subs_to_remind(lg->store, now + (days + 1) * 86400000, REMIND_BATCH, &subs, &n, e))
		return -1;
	for (size_t i = 0; i < n && rc == 0; i++) {
		struct subscription *sub = &subs[i];
		const char *zone = *sub->life.term_zone ? sub->life.term_zone : "UTC";
		int64_t at, start = sub->life.period_start ? sub->life.period_start : sub->start_at;
		struct outbox_mail m;
		bool marked;
		if (period_days_before(sub->end_at, (int)days, zone, &at) || at > now)
			continue;   /* not yet (or a zone this machine does not know: never) */
		/* a period no longer than the notice: marked, mailed nothing (it would come with the period) */
		bool mail = at > start;
		outbox_reminder(&m, sub, a->trace_id);
		const struct event_spec ev = {"subscription.period_ending", "subscription", sub->id, EV_NO_COUNTS, NULL,
					      &m.spec};
		rc = lg->store->ops->remind(lg->store, sub->id, sub->end_at, &ev, mail ? 1 : 0, a, &marked, e);
		if (rc == 0 && marked && mail)
			st->reminded++;
		outbox_mail_clear(&m);
	}
	for (size_t i = 0; i < n; i++)
		subscription_clear(&subs[i]);
	free(subs);
	return rc;
}
