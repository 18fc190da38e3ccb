/* metrics.h - counters for Prometheus, summed over every worker and thread of one server:
 * the master maps them into memory it shares with the children it forks (metrics_init), and
 * everyone adds with atomic operations. Without metrics_init (CGI, spawn-fcgi) they count
 * for the one process. */
#ifndef NUMATIX_METRICS_H
#define NUMATIX_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#include "ledger.h"
#include "life.h"

#define METRICS_ROUTES 48

/* Before forking: the counters become shared with the children. */
void metrics_init(void);
/* One answered request: its route (index in the route table, -1 for none), status, latency
 * in microseconds. */
void metrics_request(int route, int status, int64_t us);
/* One call of the payment processor (op: "authorize", "charge_saved", "capture", "cancel",
 * "refund", "lookup"), its outcome (enum pay_outcome) and latency in microseconds. */
void metrics_processor(const char *op, int outcome, int64_t us);
/* A purchase's end: the status of its answer and its code ("" for a 201). */
void metrics_purchase(int status, const char *code);
/* A public read (plans, a plan, stats) answered by the standby, or by the primary. */
void metrics_public_read(bool standby);
void metrics_worker_restart(void);
void metrics_reaper_pass(int expired, int refunded);
void metrics_renewer_pass(const struct life_stats *st);
/* A mail sender's pass: its mails sent, deferred (to retry) and failed, by kind. */
struct mail_stats;
void metrics_mailer_pass(const struct mail_stats *st);

/* The text exposition: the counters, and the seats left and held per plan read from the
 * store. route_name(i) names route i. New, free(). */
char *metrics_render(struct ledger *lg, const char *(*route_name)(int i, const char **method));

#endif
