/* check.c - the invariants of DESIGN.md over one snapshot of the store.
 *
 * The store walks its plans, then its subscriptions and payments each ordered by
 * Idempotency-Key; the two sorted streams are merged here key by key (the subscriptions
 * buffered, the payments streamed). */
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonx.h"
#include "outbox.h"
#include "util.h"

#define MAX_ROWS 8

struct key_rows {
	char key[PAYMENT_KEY_LEN + 1];
	struct subscription subs[MAX_ROWS];
	int nsubs;
	struct payment pays[MAX_ROWS];
	int npays;
};

/* A plan's facts, kept until its subscriptions have been counted. */
struct plan_row {
	char id[ID_LEN + 1];
	int64_t total, left, held;
	int64_t held_seats, released_seats;
	bool has_last;
	int64_t last_left;
	int64_t pending, active;          /* seats of its subscriptions, counted in the walk */
	int64_t waiting;                  /* its line's count as the plan keeps it */
};

/* A renewal charge that took: of which subscription and period (its key, life.h). */
struct renewal {
	char sub_id[ID_LEN + 1];
	int64_t period;
	char id[32];
};

struct walk {
	check_report_fn report;
	void *arg;
	int violations;
	struct plan_row *plans;           /* in the store's order of plan ids */
	size_t nplans, plans_cap;
	/* subscriptions are buffered whole (id, status, key, payment); payments are merged */
	struct subscription *subs;
	size_t nsubs, cap, next;
	struct key_rows cur;
	const struct subscription **by_id;  /* the subscriptions by id, once all are in */
	char (*charged)[32];              /* ids of successful charges, in the order seen */
	size_t ncharged, charged_cap;
	struct waitlist_entry *entries;   /* by plan and place */
	size_t nentries, entries_cap;
	struct renewal *renewals;         /* successful renewal charges */
	size_t nrenewals, renewals_cap;
	char (*reminded)[48];             /* "<subscription>.<period end>" of each reminder mail */
	size_t nreminded, reminded_cap;
};

#define REPORT(w, ...) ((w)->report((w)->arg, __VA_ARGS__), (w)->violations++)

/* A subscription that was activated: active or past_due, or ended (its last period over, a
 * cancel, a plan change). */
static bool was_active(const struct subscription *s)
{
	return sub_was_activated(s->status);
}

static int on_plan(void *arg, const struct plan_tally *t)
{
	struct walk *w = arg;
	const struct plan *p = t->plan;
	struct plan_row *r;

	if (w->nplans == w->plans_cap) {
		w->plans_cap = w->plans_cap ? 2 * w->plans_cap : 64;
		w->plans = xrealloc(w->plans, w->plans_cap * sizeof(*w->plans));
	}
	r = &w->plans[w->nplans++];
	*r = (struct plan_row){.total = p->total_capacity, .left = p->subscriptions_left,
			       .held = p->subscriptions_held, .held_seats = t->held_seats,
			       .released_seats = t->released_seats, .has_last = t->has_last,
			       .last_left = t->last_left, .waiting = p->waiting};
	snprintf(r->id, sizeof(r->id), "%s", p->id);
	return 0;
}

static int charge_cmp(const void *a, const void *b)
{
	return strcmp((const char *)a, (const char *)b);
}

/* 3: every subscription that was activated has its successful charge. */
static void activations_done(struct walk *w)
{
	if (w->ncharged)  /* qsort's array may not be NULL, even empty */
		qsort(w->charged, w->ncharged, sizeof(*w->charged), charge_cmp);
	for (size_t i = 0; i < w->nsubs; i++) {
		const struct subscription *s = &w->subs[i];
		if (was_active(s) &&
		    (!w->ncharged || !bsearch(s->payment_id, w->charged, w->ncharged, sizeof(*w->charged), charge_cmp)))
			REPORT(w, "subscription %s was activated without a successful charge", s->id);
	}
}

static int plan_cmp(const void *a, const void *b)
{
	return strcmp(((const struct plan_row *)a)->id, ((const struct plan_row *)b)->id);
}

/* The invariants of each plan, once the seats of its subscriptions are counted. */
static void plans_done(struct walk *w)
{
	for (size_t i = 0; i < w->nsubs; i++) {
		const struct subscription *s = &w->subs[i];
		struct plan_row key, *r;
		/* a past_due subscription keeps its seats until its dunning ends */
		bool pending = !strcmp(s->status, "pending");

		if (!sub_takes_seats(s->status))
			continue;
		snprintf(key.id, sizeof(key.id), "%s", s->plan_id);
		if (!(r = bsearch(&key, w->plans, w->nplans, sizeof(*w->plans), plan_cmp))) {
			REPORT(w, "subscription %s takes seats of plan %s, which does not exist", s->id, s->plan_id);
			continue;
		}
		if (s->quantity < 1)
			REPORT(w, "subscription %s takes %lld seats", s->id, (long long)s->quantity);
		*(pending ? &r->pending : &r->active) += s->quantity;
	}
	for (size_t i = 0; i < w->nplans; i++) {
		const struct plan_row *r = &w->plans[i];
		/* 1: seats left and taken add up to the capacity, and left never goes below 0 */
		if (r->left < 0 || r->left + r->pending + r->active != r->total)
			REPORT(w, "plan %s: left %lld + pending %lld + active %lld seats != total %lld", r->id,
			       (long long)r->left, (long long)r->pending, (long long)r->active, (long long)r->total);
		if (r->held != r->pending)
			REPORT(w, "plan %s: subscriptions_held %lld != pending seats %lld", r->id, (long long)r->held,
			       (long long)r->pending);
		/* 4: every seat move has its event */
		if (r->held_seats - r->released_seats != r->pending + r->active)
			REPORT(w, "plan %s: audit has %lld seats held - %lld released, but %lld seats are taken", r->id,
			       (long long)r->held_seats, (long long)r->released_seats,
			       (long long)(r->pending + r->active));
		if (!r->has_last || r->last_left != r->left)
			REPORT(w, "plan %s: the last audit event does not end at %lld seats left", r->id,
			       (long long)r->left);
	}
}

/* 7: every mail written with an event of a change that sends its kind (the event exists: the
 * row was written in its unit), and no secret in what it keeps but sealed */
static int on_mail(void *arg, const struct mail *m)
{
	struct walk *w = arg;

	if (!*m->event_action)
		REPORT(w, "mail %s has no event of its unit (%s)", m->id, m->event_id);
	else if (!outbox_caused_by(m->kind, m->event_action))
		REPORT(w, "mail %s of kind %s was written by %s, which sends none", m->id, m->kind, m->event_action);
	if (outbox_leaks(m->data))
		REPORT(w, "mail %s keeps a secret in its data", m->id);
	if (m->secret && strncmp(m->secret, "nx1.", 4))
		REPORT(w, "mail %s keeps a secret unsealed", m->id);
	if (!strcmp(m->kind, MAIL_REMINDER)) {
		struct json_object *d = NULL;
		char why[8];
		if (w->nreminded == w->reminded_cap) {
			w->reminded_cap = w->reminded_cap ? 2 * w->reminded_cap : 64;
			w->reminded = xrealloc(w->reminded, w->reminded_cap * sizeof(*w->reminded));
		}
		if (jsonx_parse(m->data, strlen(m->data), &d, why, sizeof(why)) == 0) {
			const char *sub = jsonx_str(d, "subscriptionId");
			snprintf(w->reminded[w->nreminded++], sizeof(*w->reminded), "%.24s.%lld", sub ? sub : "",
				 (long long)jsonx_int(d, "periodEnd"));
		}
		json_object_put(d);
	}
	return 0;
}

static int reminded_cmp(const void *a, const void *b)
{
	return strcmp(a, b);
}

/* 7: one reminder per subscription and period */
static void reminders_done(struct walk *w)
{
	if (w->nreminded)
		qsort(w->reminded, w->nreminded, sizeof(*w->reminded), reminded_cmp);
	for (size_t i = 1; i < w->nreminded; i++)
		if (!strcmp(w->reminded[i], w->reminded[i - 1]))
			REPORT(w, "the period %s was reminded more than once", w->reminded[i]);
}

static int on_entry(void *arg, const struct waitlist_entry *e)
{
	struct walk *w = arg;

	if (w->nentries == w->entries_cap) {
		w->entries_cap = w->entries_cap ? 2 * w->entries_cap : 64;
		w->entries = xrealloc(w->entries, w->entries_cap * sizeof(*w->entries));
	}
	w->entries[w->nentries++] = *e;
	return 0;
}

static const struct subscription *sub_of(struct walk *w, const char *id);

/* The waiting lists: each plan's count of its line right; no free seat that the head of a line
 * fits (it would have been offered in the unit that freed it); every offer a pending session of
 * its entry's seats, every converted one a session that was activated. */
static void entries_done(struct walk *w)
{
	size_t i = 0;

	while (i < w->nentries) {
		const char *plan_id = w->entries[i].plan_id;
		const struct waitlist_entry *head = NULL;
		struct plan_row key, *r;
		int64_t waiting = 0;

		snprintf(key.id, sizeof(key.id), "%s", plan_id);
		r = bsearch(&key, w->plans, w->nplans, sizeof(*w->plans), plan_cmp);
		for (; i < w->nentries && !strcmp(w->entries[i].plan_id, plan_id); i++) {
			const struct waitlist_entry *e = &w->entries[i];
			const struct subscription *s = NULL;
			if (!strcmp(e->status, "waiting")) {
				waiting++;
				if (!head)
					head = e;
				continue;
			}
			if (strcmp(e->status, "offered") && strcmp(e->status, "converted"))
				continue;
			s = sub_of(w, e->session_id);
			if (!s || strcmp(s->entry_id, e->id) || s->quantity != e->quantity)
				REPORT(w, "waiting-list entry %s is %s without its session %s", e->id, e->status, e->session_id);
			else if (!strcmp(e->status, "offered") ? strcmp(s->status, "pending") : !was_active(s))
				REPORT(w, "waiting-list entry %s is %s but its session %s is %s", e->id, e->status, s->id,
				       s->status);
		}
		if (!r) {
			REPORT(w, "waiting-list entries of plan %s, which does not exist", plan_id);
			continue;
		}
		r->waiting -= waiting;
		if (head && head->quantity <= r->left)
			REPORT(w, "plan %s: %lld seats left, and the first in its line (entry %s) waits for %lld",
			       plan_id, (long long)r->left, head->id, (long long)head->quantity);
	}
	for (i = 0; i < w->nplans; i++)
		if (w->plans[i].waiting != 0)
			REPORT(w, "plan %s: its count of entries waiting is off by %lld", w->plans[i].id,
			       (long long)w->plans[i].waiting);
}

static int on_subscription(void *arg, const struct subscription *s)
{
	struct walk *w = arg;

	if (w->nsubs == w->cap) {
		w->cap = w->cap ? 2 * w->cap : 256;
		w->subs = xrealloc(w->subs, w->cap * sizeof(*w->subs));
	}
	w->subs[w->nsubs] = *s;
	w->subs[w->nsubs].plan_name = NULL;  /* not needed, and owned by the store's row */
	w->nsubs++;
	return 0;
}

static int sub_ptr_cmp(const void *a, const void *b)
{
	return strcmp((*(const struct subscription *const *)a)->id, (*(const struct subscription *const *)b)->id);
}

/* The subscription of a payment (its attempt's key may be another than the subscription's). */
static const struct subscription *sub_of(struct walk *w, const char *id)
{
	struct subscription key, *kp = &key, *const *found;

	if (!w->by_id) {
		w->by_id = xcalloc(w->nsubs + 1, sizeof(*w->by_id));
		for (size_t i = 0; i < w->nsubs; i++)
			w->by_id[i] = &w->subs[i];
		qsort(w->by_id, w->nsubs, sizeof(*w->by_id), sub_ptr_cmp);
	}
	snprintf(key.id, sizeof(key.id), "%s", id);
	found = bsearch(&kp, w->by_id, w->nsubs, sizeof(*w->by_id), sub_ptr_cmp);
	return found ? *found : NULL;
}

/* The invariants of one key, once all its rows are in. */
static void key_done(struct walk *w)
{
	struct key_rows *k = &w->cur;
	const struct subscription *sub;
	const struct payment *ok = NULL;
	int charges = 0, refunds = 0;

	if (!*k->key)
		return;
	for (int i = 0; i < k->npays; i++) {
		if (!strcmp(k->pays[i].kind, "refund"))
			refunds++;
		else if (strcmp(k->pays[i].kind, "charge"))
			;  /* a dispute: a flag for the operator, no money of the ledger's */
		else if (charges++, !strcmp(k->pays[i].status, "succeeded") || !strcmp(k->pays[i].status, "authorized"))
			ok = &k->pays[i];
	}
	/* 2: one key, at most one hold, one charge, one refund */
	if (k->nsubs > 1)
		REPORT(w, "idempotency key %s has %d subscriptions", k->key, k->nsubs);
	if (charges > 1 || refunds > 1)
		REPORT(w, "idempotency key %s has %d charges and %d refunds", k->key, charges, refunds);
	/* 3: a successful charge is kept only by the subscription it activated, or by one whose
	 * payment attempt it still is */
	if (ok && !refunds) {
		sub = sub_of(w, ok->subscription_id);
		bool kept = sub && (!strcmp(sub->status, "pending") ? !strcmp(sub->attempt_key, k->key) ||
				    (!*sub->attempt_key && !strcmp(sub->idem_key, k->key)) :
				    was_active(sub) && !strcmp(sub->payment_id, ok->id));
		if (!kept)
			REPORT(w, "charge %s %s, but subscription %s is %s and nothing was refunded or voided", ok->id,
			       ok->status, sub ? sub->id : "(none)", sub ? sub->status : "(none)");
	}
	/* 3: the charge an active (or once active) subscription is paid by is never given back
	 * whole under its own key (a credit of a plan change is a refund under the change's key) */
	if (ok && refunds) {
		sub = sub_of(w, ok->subscription_id);
		if (sub && was_active(sub) && !strcmp(sub->payment_id, ok->id))
			REPORT(w, "charge %s pays for subscription %s (%s), yet it was refunded", ok->id, sub->id, sub->status);
	}
	if (ok) {
		if (w->ncharged == w->charged_cap) {
			w->charged_cap = w->charged_cap ? 2 * w->charged_cap : 256;
			w->charged = xrealloc(w->charged, w->charged_cap * sizeof(*w->charged));
		}
		snprintf(w->charged[w->ncharged++], sizeof(*w->charged), "%s", ok->id);
	}
	memset(k, 0, sizeof(*k));
}

/* Moves the buffered subscriptions with keys before `key` (all, when key is NULL) into
 * the current key's rows, ending each key as it passes. */
static void subs_until(struct walk *w, const char *key)
{
	while (w->next < w->nsubs && (!key || strcmp(w->subs[w->next].idem_key, key) < 0)) {
		const struct subscription *s = &w->subs[w->next++];
		if (strcmp(w->cur.key, s->idem_key)) {
			key_done(w);
			snprintf(w->cur.key, sizeof(w->cur.key), "%s", s->idem_key);
		}
		if (w->cur.nsubs < MAX_ROWS)
			w->cur.subs[w->cur.nsubs] = *s;
		w->cur.nsubs++;
	}
}

/* 6: a renewal is kept apart from the keys of purchases: its key names its subscription and
 * period. */
static void on_renewal(struct walk *w, const struct payment *p)
{
	struct renewal *r;
	const char *dot = strchr(p->idem_key, '.');
	char *end;

	if (strcmp(p->status, "succeeded"))
		return;  /* declined, or late (refunded, or about to be) */
	if (w->nrenewals == w->renewals_cap) {
		w->renewals_cap = w->renewals_cap ? 2 * w->renewals_cap : 64;
		w->renewals = xrealloc(w->renewals, w->renewals_cap * sizeof(*w->renewals));
	}
	r = &w->renewals[w->nrenewals++];
	memset(r, 0, sizeof(*r));
	snprintf(r->id, sizeof(r->id), "%s", p->id);
	snprintf(r->sub_id, sizeof(r->sub_id), "%s", p->subscription_id);
	r->period = dot ? strtoll(dot + 1, &end, 10) : 0;
	if (!dot || (size_t)(dot - p->idem_key) != strlen(p->subscription_id) ||
	    strncmp(p->idem_key, p->subscription_id, (size_t)(dot - p->idem_key)) || *end != '.' || r->period < 1)
		REPORT(w, "renewal %s has key %s, which names no period of subscription %s", p->id, p->idem_key,
		       p->subscription_id);
}

static int renewal_cmp(const void *a, const void *b)
{
	const struct renewal *x = a, *y = b;
	int c = strcmp(x->sub_id, y->sub_id);

	return c ? c : x->period < y->period ? -1 : x->period > y->period;
}

/* 6: at most one renewal charge per subscription and period, each of a period that was served
 * (the subscription reached it); a subscription's period ends after it starts. */
static void renewals_done(struct walk *w)
{
	if (w->nrenewals)
		qsort(w->renewals, w->nrenewals, sizeof(*w->renewals), renewal_cmp);
	for (size_t i = 0; i < w->nrenewals; i++) {
		const struct renewal *r = &w->renewals[i];
		const struct subscription *s = sub_of(w, r->sub_id);
		if (i > 0 && !renewal_cmp(r, &w->renewals[i - 1]))
			REPORT(w, "subscription %s: period %lld was charged twice (%s and %s)", r->sub_id,
			       (long long)r->period, w->renewals[i - 1].id, r->id);
		if (!s || !was_active(s) || s->life.period_index < r->period)
			REPORT(w, "renewal %s paid period %lld of subscription %s, which is %s at period %lld", r->id,
			       (long long)r->period, r->sub_id, s ? s->status : "(none)",
			       (long long)(s ? s->life.period_index : -1));
	}
	for (size_t i = 0; i < w->nsubs; i++) {
		const struct subscription *s = &w->subs[i];
		if (s->end_at && s->life.period_start && s->end_at <= s->life.period_start)
			REPORT(w, "subscription %s: its period ends before it starts", s->id);
	}
}

static int on_payment(void *arg, const struct payment *p)
{
	struct walk *w = arg;

	if (!strcmp(p->kind, "renewal")) {
		on_renewal(w, p);
		return 0;
	}

	subs_until(w, p->idem_key);
	if (strcmp(w->cur.key, p->idem_key)) {
		key_done(w);
		snprintf(w->cur.key, sizeof(w->cur.key), "%s", p->idem_key);
		/* the key's own subscriptions join it before its payments */
		while (w->next < w->nsubs && !strcmp(w->subs[w->next].idem_key, p->idem_key)) {
			if (w->cur.nsubs < MAX_ROWS)
				w->cur.subs[w->cur.nsubs] = w->subs[w->next];
			w->cur.nsubs++;
			w->next++;
		}
	}
	if (w->cur.npays < MAX_ROWS)
		w->cur.pays[w->cur.npays] = *p;
	w->cur.npays++;
	return 0;
}

/* Invariant 4's feed: every position after the first follows the one before it (after a
 * reset a store may start past 1). Read after the snapshot, page by page. */
static int feed_gapless(struct ledger *lg, struct walk *w, struct err *e)
{
	int64_t after = 0;

	for (;;) {
		struct audit_event *ev = NULL;
		size_t n = 0;

		if (ledger_feed(lg, after, NULL, 1000, &ev, &n, e))
			return -1;
		for (size_t i = 0; i < n; i++) {
			if (after && ev[i].seq != after + 1)
				REPORT(w, "event feed: position %lld follows %lld", (long long)ev[i].seq, (long long)after);
			after = ev[i].seq;
			audit_event_clear(&ev[i]);
		}
		free(ev);
		if (n == 0)
			return 0;
	}
}

int check_run(struct ledger *lg, check_report_fn report, void *arg, int *violations, struct err *e)
{
	struct walk w = {.report = report, .arg = arg};
	struct snapshot_visitor v = {&w, on_plan, on_subscription, on_payment, on_entry, on_mail};
	int rc = lg->store->ops->snapshot(lg->store, &v, e);

	if (rc == 0) {
		subs_until(&w, NULL);
		key_done(&w);
		qsort(w.plans, w.nplans, sizeof(*w.plans), plan_cmp);
		plans_done(&w);
		activations_done(&w);
		entries_done(&w);
		renewals_done(&w);
		reminders_done(&w);
		rc = feed_gapless(lg, &w, e);
	}
	free(w.by_id);
	free(w.renewals);
	free(w.reminded);
	free(w.entries);
	free(w.charged);
	free(w.plans);
	free(w.subs);
	*violations = w.violations;
	return rc;
}
