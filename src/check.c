/* check.c - the invariants of DESIGN.md over one snapshot of the store.
 *
 * The store walks its plans, then its subscriptions and payments each ordered by
 * Idempotency-Key; the two sorted streams are merged here key by key (the subscriptions
 * buffered, the payments streamed). */
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define MAX_ROWS 8

struct key_rows {
	char key[UUID_LEN + 1];
	struct subscription subs[MAX_ROWS];
	int nsubs;
	struct payment pays[MAX_ROWS];
	int npays;
};

struct walk {
	check_report_fn report;
	void *arg;
	int violations;
	/* subscriptions are buffered whole (id, status, key, payment); payments are merged */
	struct subscription *subs;
	size_t nsubs, cap, next;
	struct key_rows cur;
};

#define REPORT(w, ...) ((w)->report((w)->arg, __VA_ARGS__), (w)->violations++)

static int on_plan(void *arg, const struct plan_tally *t)
{
	struct walk *w = arg;
	const struct plan *p = t->plan;

	/* 1: seats left and taken add up to the capacity, and left never goes below 0 */
	if (p->subscriptions_left < 0 || p->subscriptions_left + t->pending + t->active != p->total_capacity)
		REPORT(w, "plan %s: left %lld + pending %lld + active %lld != total %lld", p->id,
		       (long long)p->subscriptions_left, (long long)t->pending, (long long)t->active,
		       (long long)p->total_capacity);
	if (p->subscriptions_held != t->pending)
		REPORT(w, "plan %s: subscriptions_held %lld != pending subscriptions %lld", p->id,
		       (long long)p->subscriptions_held, (long long)t->pending);
	/* 4: every seat move has its event */
	if (t->held_events - t->released_events != t->pending + t->active)
		REPORT(w, "plan %s: audit has %lld seat.held - %lld seat.released, but %lld seats are taken", p->id,
		       (long long)t->held_events, (long long)t->released_events, (long long)(t->pending + t->active));
	if (!t->has_last || t->last_left != p->subscriptions_left)
		REPORT(w, "plan %s: the last audit event does not end at %lld seats left", p->id,
		       (long long)p->subscriptions_left);
	return 0;
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

/* The invariants of one key, once all its rows are in. */
static void key_done(struct walk *w)
{
	struct key_rows *k = &w->cur;
	const struct subscription *sub = k->nsubs ? &k->subs[0] : NULL;
	const struct payment *ok = NULL;
	int charges = 0, refunds = 0;

	if (!*k->key)
		return;
	for (int i = 0; i < k->npays; i++) {
		if (!strcmp(k->pays[i].kind, "refund"))
			refunds++;
		else if (charges++, !strcmp(k->pays[i].status, "succeeded"))
			ok = &k->pays[i];
	}
	/* 2: one key, at most one hold, one charge, one refund */
	if (k->nsubs > 1)
		REPORT(w, "idempotency key %s has %d subscriptions", k->key, k->nsubs);
	if (charges > 1 || refunds > 1)
		REPORT(w, "idempotency key %s has %d charges and %d refunds", k->key, charges, refunds);
	/* 3: a successful charge is kept only by a subscription that was activated */
	if (ok && !refunds && (!sub || (strcmp(sub->status, "active") && strcmp(sub->status, "cancelled") &&
					strcmp(sub->status, "pending"))))
		REPORT(w, "charge %s succeeded, but subscription %s is %s and nothing was refunded", ok->id,
		       sub ? sub->id : "(none)", sub ? sub->status : "(none)");
	if (sub && (!strcmp(sub->status, "active") || !strcmp(sub->status, "cancelled")) &&
	    (!ok || strcmp(ok->id, sub->payment_id)))
		REPORT(w, "subscription %s was activated without a successful charge", sub->id);
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

static int on_payment(void *arg, const struct payment *p)
{
	struct walk *w = arg;

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

int check_run(struct ledger *lg, check_report_fn report, void *arg, int *violations, struct err *e)
{
	struct walk w = {.report = report, .arg = arg};
	struct snapshot_visitor v = {&w, on_plan, on_subscription, on_payment};
	int rc = lg->store->ops->snapshot(lg->store, &v, e);

	if (rc == 0) {
		subs_until(&w, NULL);
		key_done(&w);
	}
	free(w.subs);
	*violations = w.violations;
	return rc;
}
