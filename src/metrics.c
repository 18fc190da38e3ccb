/* metrics.c - counters for Prometheus, shared by every worker of one server. */
#include "metrics.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "mailer.h"
#include "util.h"

/* Upper bounds of the latency buckets, in microseconds: from a fast purchase (about 1 ms) to a
 * slow payment processor (seconds); rendered in seconds, Prometheus's base unit. */
static const int64_t buckets_us[] = {250, 500, 1000, 2000, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
				     1000000, 2500000, 5000000, 10000000};
#define NBUCKETS (sizeof(buckets_us) / sizeof(buckets_us[0]))
#define NSTATUS 600

/* Every answer a purchase can end with, each its own outcome: "" is a 201 (created). */
static const char *const codes[] = {
	"", "PAYMENT_FAILED", "PAYMENT_ACTION_REQUIRED", "PLAN_SOLD_OUT", "PLAN_INACTIVE", "PLAN_NOT_FOUND",
	"CUSTOMER_NOT_FOUND", "CUSTOMER_LIMIT_REACHED", "HOLD_EXPIRED", "REQUEST_IN_PROGRESS",
	"IDEMPOTENCY_KEY_REUSED", "REPLAY_UNAVAILABLE", "SERVICE_UNAVAILABLE", "VALIDATION_ERROR",
	"MISSING_IDEMPOTENCY_KEY", "INVALID_IDEMPOTENCY_KEY",
};
#define NCODES (sizeof(codes) / sizeof(codes[0]))

/* One histogram's counts: per bucket (cumulated at render), the +Inf bucket last, and the sum. */
struct histogram {
	uint64_t bucket[NBUCKETS + 1];
	uint64_t sum_us;
};

/* The processor's calls, each timed on its own, and counted by outcome (enum pay_outcome's
 * order). */
static const char *const processor_ops[] = {"authorize", "charge_saved", "capture", "cancel", "refund", "lookup"};
#define NOPS (sizeof(processor_ops) / sizeof(processor_ops[0]))
static const char *const processor_outcomes[] = {"ok", "declined", "action_required", "unknown", "invalid"};
#define NOUTCOMES (sizeof(processor_outcomes) / sizeof(processor_outcomes[0]))

struct counters {
	uint64_t requests[METRICS_ROUTES + 1][NSTATUS];          /* last row: no route */
	struct histogram latency[METRICS_ROUTES + 1];
	struct histogram processor[NOPS];
	uint64_t processor_calls[NOPS][NOUTCOMES];
	uint64_t purchases[NCODES + 1];                          /* last: a code not listed */
	uint64_t worker_restarts, reaper_passes, reaper_expired, reaper_refunded;
	uint64_t renewer_passes, renewals[6];                    /* renewal_outcomes' order */
	uint64_t mailer_passes, mails[OUTBOX_KINDS][MAIL_OUTCOMES]; /* by outbox_kinds, mail_outcomes */
	uint64_t public_reads[2];                                /* by the primary, by the standby */
};

static struct counters local, *c = &local;

void metrics_init(void)
{
	void *m = mmap(NULL, sizeof(struct counters), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (m != MAP_FAILED)
		c = m;
}

static void add(uint64_t *v, uint64_t n)
{
	__atomic_fetch_add(v, n, __ATOMIC_RELAXED);
}

static uint64_t get(const uint64_t *v)
{
	return __atomic_load_n(v, __ATOMIC_RELAXED);
}

static void observe(struct histogram *h, int64_t us)
{
	size_t b;

	if (us < 0)
		us = 0;
	for (b = 0; b < NBUCKETS && us > buckets_us[b]; b++)
		;
	add(&h->bucket[b], 1);
	add(&h->sum_us, (uint64_t)us);
}

void metrics_request(int route, int status, int64_t us)
{
	size_t r = route < 0 || route >= METRICS_ROUTES ? METRICS_ROUTES : (size_t)route;

	if (status < 0 || status >= NSTATUS)
		status = 0;
	add(&c->requests[r][status], 1);
	observe(&c->latency[r], us);
}

void metrics_processor(const char *op, int outcome, int64_t us)
{
	for (size_t i = 0; i < NOPS; i++)
		if (!strcmp(op, processor_ops[i])) {
			observe(&c->processor[i], us);
			if (outcome >= 0 && (size_t)outcome < NOUTCOMES)
				add(&c->processor_calls[i][outcome], 1);
		}
}

void metrics_purchase(int status, const char *code)
{
	size_t i;

	(void)status;
	for (i = 0; i < NCODES && strcmp(codes[i], code ? code : ""); i++)
		;
	add(&c->purchases[i], 1);
}

void metrics_public_read(bool standby)
{
	add(&c->public_reads[standby ? 1 : 0], 1);
}

void metrics_worker_restart(void)
{
	add(&c->worker_restarts, 1);
}

void metrics_reaper_pass(int expired, int refunded)
{
	add(&c->reaper_passes, 1);
	add(&c->reaper_expired, (uint64_t)expired);
	add(&c->reaper_refunded, (uint64_t)refunded);
}

/* What a renewer's pass did with each subscription due, as the counter's label. */
static const char *const renewal_outcomes[] = {"renewed", "past_due", "cancelled", "ended", "refunded", "unknown"};

void metrics_renewer_pass(const struct life_stats *st)
{
	const int n[] = {st->renewed, st->past_due, st->cancelled, st->ended, st->refunded, st->unknown};

	add(&c->renewer_passes, 1);
	for (size_t i = 0; i < 6; i++)
		add(&c->renewals[i], (uint64_t)n[i]);
}

static const char *const mail_outcomes[MAIL_OUTCOMES] = {"sent", "deferred", "failed"};

void metrics_mailer_pass(const struct mail_stats *st)
{
	add(&c->mailer_passes, 1);
	for (size_t k = 0; k < OUTBOX_KINDS; k++)
		for (size_t o = 0; o < MAIL_OUTCOMES; o++)
			add(&c->mails[k][o], (uint64_t)st->by_kind[k][o]);
}

/* Appends printf-style text to a growing buffer. */
struct text {
	char *s;
	size_t len, cap;
};

static void put(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct text *t, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(t->s + t->len, t->cap - t->len, fmt, ap);
		va_end(ap);
		if ((size_t)n < t->cap - t->len)
			break;
		t->cap = t->cap * 2 + (size_t)n;
		t->s = xrealloc(t->s, t->cap);
	}
	t->len += (size_t)n;
}

/* A label value in the text format: backslash, double quote and newline escaped. */
static void put_label(struct text *t, const char *v)
{
	for (; *v; v++) {
		if (*v == '\\' || *v == '"')
			put(t, "\\%c", *v);
		else if (*v == '\n')
			put(t, "\\n");
		else
			put(t, "%c", *v);
	}
}

/* One histogram's series, labels (already rendered, "a=\"b\"") given. */
static void put_histogram(struct text *t, const char *name, const char *labels, const struct histogram *h)
{
	uint64_t cum = 0;

	for (size_t b = 0; b <= NBUCKETS; b++) {
		cum += get(&h->bucket[b]);
		if (b < NBUCKETS)
			put(t, "%s_bucket{%s,le=\"%g\"} %llu\n", name, labels, (double)buckets_us[b] / 1e6,
			    (unsigned long long)cum);
		else
			put(t, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, labels, (unsigned long long)cum);
	}
	put(t, "%s_sum{%s} %.6f\n", name, labels, (double)get(&h->sum_us) / 1e6);
	put(t, "%s_count{%s} %llu\n", name, labels, (unsigned long long)cum);
}

static uint64_t observed(const struct histogram *h)
{
	uint64_t n = 0;

	for (size_t b = 0; b <= NBUCKETS; b++)
		n += get(&h->bucket[b]);
	return n;
}

/* How long the most overdue queued mail has been due, read from the store (by the outbox's
 * index of due mail): 0 when none is due; nothing when the store cannot say now. */
static void outbox_overdue(struct text *t, struct ledger *lg)
{
	struct mail *due = NULL;
	struct err e = {0};
	int64_t now = now_ms();
	size_t n = 0;

	if (lg->store->ops->mail_due(lg->store, now, 1, &due, &n, &e))
		return;
	put(t, "# HELP numatix_mail_outbox_overdue_seconds How long the queued mail most overdue has waited past its "
	       "time (0: none is due); it grows while the mail server takes nothing.\n"
	       "# TYPE numatix_mail_outbox_overdue_seconds gauge\nnumatix_mail_outbox_overdue_seconds %.3f\n",
	    n ? (double)(now - due[0].next_attempt_at) / 1000.0 : 0.0);
	for (size_t i = 0; i < n; i++)
		mail_clear(&due[i]);
	free(due);
}

char *metrics_render(struct ledger *lg, const char *(*route_name)(int i, const char **method))
{
	struct text t = {xmalloc(4096), 0, 4096};
	struct plan *plans = NULL;
	struct err e = {0};
	size_t n = 0;
	char labels[160];

	t.s[0] = '\0';
	put(&t, "# HELP numatix_requests_total Requests answered, by route and HTTP status code.\n"
		"# TYPE numatix_requests_total counter\n");
	for (int r = 0; r <= METRICS_ROUTES; r++) {
		const char *method = "", *name = r < METRICS_ROUTES ? route_name(r, &method) : "none";
		if (!name)
			continue;
		for (int s = 0; s < NSTATUS; s++)
			if (get(&c->requests[r][s]))
				put(&t, "numatix_requests_total{method=\"%s\",route=\"%s\",code=\"%d\"} %llu\n", method,
				    name, s, (unsigned long long)get(&c->requests[r][s]));
	}
	put(&t, "# HELP numatix_request_duration_seconds Time to answer a request.\n"
		"# TYPE numatix_request_duration_seconds histogram\n");
	for (int r = 0; r <= METRICS_ROUTES; r++) {
		const char *method = "", *name = r < METRICS_ROUTES ? route_name(r, &method) : "none";
		if (!name || !observed(&c->latency[r]))
			continue;
		snprintf(labels, sizeof(labels), "method=\"%s\",route=\"%s\"", method, name);
		put_histogram(&t, "numatix_request_duration_seconds", labels, &c->latency[r]);
	}
	put(&t, "# HELP numatix_processor_call_duration_seconds Time the payment processor took to answer a call.\n"
		"# TYPE numatix_processor_call_duration_seconds histogram\n");
	for (size_t i = 0; i < NOPS; i++) {
		snprintf(labels, sizeof(labels), "op=\"%s\"", processor_ops[i]);
		put_histogram(&t, "numatix_processor_call_duration_seconds", labels, &c->processor[i]);
	}
	put(&t, "# HELP numatix_processor_requests_total Calls of the payment processor, by operation and outcome.\n"
		"# TYPE numatix_processor_requests_total counter\n");
	for (size_t i = 0; i < NOPS; i++)
		for (size_t o = 0; o < NOUTCOMES; o++)
			put(&t, "numatix_processor_requests_total{op=\"%s\",outcome=\"%s\"} %llu\n", processor_ops[i],
			    processor_outcomes[o], (unsigned long long)get(&c->processor_calls[i][o]));
	put(&t, "# HELP numatix_purchases_total Purchases ended, by outcome (created, or the code of the answer).\n"
		"# TYPE numatix_purchases_total counter\n");
	for (size_t k = 0; k < NCODES; k++)
		put(&t, "numatix_purchases_total{outcome=\"%s\"} %llu\n", *codes[k] ? codes[k] : "created",
		    (unsigned long long)get(&c->purchases[k]));
	if (get(&c->purchases[NCODES]))
		put(&t, "numatix_purchases_total{outcome=\"unlisted\"} %llu\n", (unsigned long long)get(&c->purchases[NCODES]));
	put(&t, "# HELP numatix_public_reads_total Public reads of plans answered, by the store that answered.\n"
		"# TYPE numatix_public_reads_total counter\nnumatix_public_reads_total{store=\"primary\"} %llu\n"
		"numatix_public_reads_total{store=\"standby\"} %llu\n", (unsigned long long)get(&c->public_reads[0]),
	    (unsigned long long)get(&c->public_reads[1]));
	put(&t, "# HELP numatix_worker_restarts_total Worker processes started again after they ended.\n"
		"# TYPE numatix_worker_restarts_total counter\nnumatix_worker_restarts_total %llu\n",
	    (unsigned long long)get(&c->worker_restarts));
	put(&t, "# HELP numatix_reaper_passes_total Reaper passes run.\n# TYPE numatix_reaper_passes_total counter\n"
		"numatix_reaper_passes_total %llu\n", (unsigned long long)get(&c->reaper_passes));
	put(&t, "# HELP numatix_reaper_holds_expired_total Holds the reaper expired.\n"
		"# TYPE numatix_reaper_holds_expired_total counter\nnumatix_reaper_holds_expired_total %llu\n",
	    (unsigned long long)get(&c->reaper_expired));
	put(&t, "# HELP numatix_reaper_refunds_total Charges the reaper had refunded.\n"
		"# TYPE numatix_reaper_refunds_total counter\nnumatix_reaper_refunds_total %llu\n",
	    (unsigned long long)get(&c->reaper_refunded));
	put(&t, "# HELP numatix_renewer_passes_total Renewer passes run.\n# TYPE numatix_renewer_passes_total counter\n"
		"numatix_renewer_passes_total %llu\n", (unsigned long long)get(&c->renewer_passes));
	put(&t, "# HELP numatix_renewals_total Subscriptions due, by what the renewer did: renewed, past_due (a "
		"renewal declined), cancelled (after the last retry, or as asked), ended, refunded (a late renewal), "
		"unknown (left for the next pass).\n# TYPE numatix_renewals_total counter\n");
	for (size_t i = 0; i < 6; i++)
		put(&t, "numatix_renewals_total{outcome=\"%s\"} %llu\n", renewal_outcomes[i],
		    (unsigned long long)get(&c->renewals[i]));
	put(&t, "# HELP numatix_mailer_passes_total Mail sender passes run.\n# TYPE numatix_mailer_passes_total counter\n"
		"numatix_mailer_passes_total %llu\n", (unsigned long long)get(&c->mailer_passes));
	put(&t, "# HELP numatix_mails_total Attempts at sending mails of the outbox, by kind and outcome: sent, "
		"deferred (a 4xx to the mail; tried again), failed (a 5xx to it, or the last retry).\n"
		"# TYPE numatix_mails_total counter\n");
	for (size_t k = 0; k < OUTBOX_KINDS; k++)
		for (size_t o = 0; o < MAIL_OUTCOMES; o++)
			put(&t, "numatix_mails_total{kind=\"%s\",outcome=\"%s\"} %llu\n", outbox_kinds[k], mail_outcomes[o],
			    (unsigned long long)get(&c->mails[k][o]));
	outbox_overdue(&t, lg);
	/* Subscriptions by status, every status always (0 when none) */
	{
		static const char *const statuses[] = {"pending", "active", "past_due", "failed", "expired",
						       "cancelled", "ended", "changed"};
		struct sub_total *st = NULL;
		size_t ns = 0;
		if (ledger_sub_totals(lg, &st, &ns, &e) == 0) {
			put(&t, "# HELP numatix_subscriptions Subscriptions by status.\n"
				"# TYPE numatix_subscriptions gauge\n");
			for (size_t i = 0; i < sizeof(statuses) / sizeof(*statuses); i++) {
				int64_t count = 0;
				for (size_t k = 0; k < ns; k++)
					if (!strcmp(st[k].status, statuses[i]))
						count = st[k].count;
				put(&t, "numatix_subscriptions{status=\"%s\"} %lld\n", statuses[i], (long long)count);
			}
		}
		free(st);
		err_clear(&e);
	}
	/* Plans on sale only, by id and name: the series end with the sale, so their number is the
	 * catalogue's, not every plan ever made; the totals cover every plan. */
	if (ledger_plan_list(lg, "active", &plans, &n, &e) == 0) {
		static const struct {
			const char *name, *help;
			size_t at;
		} gauges[] = {
			{"numatix_plan_seats_left", "Seats of a plan on sale that nobody holds or owns.", offsetof(struct plan, subscriptions_left)},
			{"numatix_plan_seats_held", "Seats of a plan on sale held while their payment runs or in checkout sessions.",
			 offsetof(struct plan, subscriptions_held)},
		};
		for (size_t g = 0; g < sizeof(gauges) / sizeof(gauges[0]); g++) {
			put(&t, "# HELP %s %s\n# TYPE %s gauge\n", gauges[g].name, gauges[g].help, gauges[g].name);
			for (size_t i = 0; i < n; i++) {
				put(&t, "%s{plan=\"%s\",name=\"", gauges[g].name, plans[i].id);
				put_label(&t, plans[i].name);
				put(&t, "\"} %lld\n", (long long)*(const int64_t *)((const char *)&plans[i] + gauges[g].at));
			}
		}
		put(&t, "# HELP numatix_plans_on_sale Plans whose status is active.\n# TYPE numatix_plans_on_sale gauge\n"
			"numatix_plans_on_sale %zu\n", n);
		for (size_t i = 0; i < n; i++)
			plan_clear(&plans[i]);
		free(plans);
	}
	return t.s;
}
