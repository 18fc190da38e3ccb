/* metrics.c - counters for Prometheus, shared by every worker of one server. */
#include "metrics.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "util.h"

static const int64_t buckets_ms[] = {5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000};
#define NBUCKETS (sizeof(buckets_ms) / sizeof(buckets_ms[0]))
#define NSTATUS 600

/* The answers a purchase can end with; "" is a 201, the last catches any other. */
static const char *const codes[] = {
	"", "PAYMENT_FAILED", "PLAN_SOLD_OUT", "PLAN_INACTIVE", "PLAN_NOT_FOUND", "CUSTOMER_NOT_FOUND",
	"HOLD_EXPIRED", "REQUEST_IN_PROGRESS", "IDEMPOTENCY_KEY_REUSED", "SERVICE_UNAVAILABLE",
	"VALIDATION_ERROR", "MISSING_IDEMPOTENCY_KEY", "INVALID_IDEMPOTENCY_KEY", "OTHER",
};
#define NCODES (sizeof(codes) / sizeof(codes[0]))

struct counters {
	uint64_t requests[METRICS_ROUTES + 1][NSTATUS];          /* last row: no route */
	uint64_t latency[METRICS_ROUTES + 1][NBUCKETS + 1];      /* cumulative at render */
	uint64_t latency_sum_ms[METRICS_ROUTES + 1];
	uint64_t purchases[NCODES];
	uint64_t worker_restarts, reaper_passes, reaper_expired, reaper_refunded;
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

void metrics_request(int route, int status, int64_t ms)
{
	size_t r = route < 0 || route >= METRICS_ROUTES ? METRICS_ROUTES : (size_t)route, b;

	if (status < 0 || status >= NSTATUS)
		status = 0;
	add(&c->requests[r][status], 1);
	for (b = 0; b < NBUCKETS && ms > buckets_ms[b]; b++)
		;
	add(&c->latency[r][b], 1);
	add(&c->latency_sum_ms[r], ms < 0 ? 0 : (uint64_t)ms);
}

void metrics_purchase(int status, const char *code)
{
	size_t i;

	(void)status;
	for (i = 0; i < NCODES - 1 && strcmp(codes[i], code ? code : ""); i++)
		;
	add(&c->purchases[i], 1);
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

char *metrics_render(struct ledger *lg, const char *(*route_name)(int i, const char **method))
{
	struct text t = {xmalloc(4096), 0, 4096};
	struct plan *plans = NULL;
	struct err e = {0};
	size_t n = 0;

	t.s[0] = '\0';
	put(&t, "# HELP numatix_requests_total Requests answered, by route and status.\n"
		"# TYPE numatix_requests_total counter\n");
	for (int r = 0; r <= METRICS_ROUTES; r++) {
		const char *method = "", *name = r < METRICS_ROUTES ? route_name(r, &method) : "none";
		if (!name)
			continue;
		for (int s = 0; s < NSTATUS; s++)
			if (get(&c->requests[r][s]))
				put(&t, "numatix_requests_total{method=\"%s\",route=\"%s\",status=\"%d\"} %llu\n", method,
				    name, s, (unsigned long long)get(&c->requests[r][s]));
	}
	put(&t, "# HELP numatix_request_duration_ms Time to answer a request, in milliseconds.\n"
		"# TYPE numatix_request_duration_ms histogram\n");
	for (int r = 0; r <= METRICS_ROUTES; r++) {
		const char *method = "", *name = r < METRICS_ROUTES ? route_name(r, &method) : "none";
		uint64_t cum = 0, any = 0;
		for (size_t b = 0; b <= NBUCKETS; b++)
			any += get(&c->latency[r][b]);
		if (!name || !any)
			continue;
		for (size_t b = 0; b <= NBUCKETS; b++) {
			cum += get(&c->latency[r][b]);
			if (b < NBUCKETS)
				put(&t, "numatix_request_duration_ms_bucket{method=\"%s\",route=\"%s\",le=\"%lld\"} %llu\n", method,
				    name, (long long)buckets_ms[b], (unsigned long long)cum);
			else
				put(&t, "numatix_request_duration_ms_bucket{method=\"%s\",route=\"%s\",le=\"+Inf\"} %llu\n", method,
				    name, (unsigned long long)cum);
		}
		put(&t, "numatix_request_duration_ms_sum{method=\"%s\",route=\"%s\"} %llu\n", method, name,
		    (unsigned long long)get(&c->latency_sum_ms[r]));
		put(&t, "numatix_request_duration_ms_count{method=\"%s\",route=\"%s\"} %llu\n", method, name,
		    (unsigned long long)cum);
	}
	put(&t, "# HELP numatix_purchases_total Purchases ended, by outcome (created, or the code of the answer).\n"
		"# TYPE numatix_purchases_total counter\n");
	for (size_t k = 0; k < NCODES; k++)
		put(&t, "numatix_purchases_total{outcome=\"%s\"} %llu\n", *codes[k] ? codes[k] : "created",
		    (unsigned long long)get(&c->purchases[k]));
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
	if (ledger_plan_list(lg, NULL, &plans, &n, &e) == 0) {
		put(&t, "# HELP numatix_plan_seats_left Seats of a plan nobody holds or owns.\n"
			"# TYPE numatix_plan_seats_left gauge\n");
		for (size_t i = 0; i < n; i++)
			put(&t, "numatix_plan_seats_left{plan=\"%s\"} %lld\n", plans[i].id, (long long)plans[i].subscriptions_left);
		put(&t, "# HELP numatix_plan_seats_held Seats of a plan held while their payment runs.\n"
			"# TYPE numatix_plan_seats_held gauge\n");
		for (size_t i = 0; i < n; i++)
			put(&t, "numatix_plan_seats_held{plan=\"%s\"} %lld\n", plans[i].id, (long long)plans[i].subscriptions_held);
		for (size_t i = 0; i < n; i++)
			plan_clear(&plans[i]);
		free(plans);
	}
	return t.s;
}
