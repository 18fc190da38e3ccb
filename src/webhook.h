/* webhook.h - webhooks: endpoints that receive the event feed as signed POSTs (Stripe's
 * scheme), at least once and in feed order per endpoint, retried with a doubling delay for a
 * bounded time. One sender runs at a time across workers and machines, by a lease in the
 * store: the server's sender process, every second, or `numatix deliver` from cron. */
#ifndef NUMATIX_WEBHOOK_H
#define NUMATIX_WEBHOOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ledger.h"

#define WEBHOOK_TIMEOUT_S 10      /* an answer later than this is a failed attempt */
#define WEBHOOK_FIRST_RETRY_MS 1000
#define WEBHOOK_MAX_RETRY_MS (3600 * 1000)

/* A new endpoint: id, secret (whsec_...), enabled, its cursor at the feed's last position.
 * url and events (a JSON array text) were checked by the caller. out: free with webhook_clear. */
int webhook_create(struct ledger *lg, const char *url, const char *events, const char *description,
		   struct webhook *out, struct err *e);

/* The Numatix-Signature value for body sent at t (unix seconds): "t=<t>,v1=<hex of
 * HMAC-SHA256 keyed with the whole secret over "<t>.<body>">". */
#define WEBHOOK_SIG_LEN 96
void webhook_sign(const char *secret, int64_t t, const char *body, size_t len, char out[WEBHOOK_SIG_LEN]);
/* Whether an endpoint's events (["*"] or types, as JSON text) take events of type. */
bool webhook_takes(const char *events, const char *type);
/* After `attempts` failed attempts, the first at first_at: true and *next_at when to try
 * again (1 s after the first, doubling to at most an hour), or false when retry_ms has
 * passed since the first attempt (the delivery has failed). */
bool webhook_retry(int attempts, int64_t first_at, int64_t now, int64_t retry_ms, int64_t *next_at);

/* The lease a sending pass holds in the store, by this name. */
#define WEBHOOK_LEASE "webhooks"

struct deliver_stats {
	int delivered, failed, retrying;
	bool ran;                 /* false: another sender holds the lease */
};

/* One pass: every enabled endpoint gets the events due, each in order and all of them at once
 * (one transfer in flight per endpoint), until each fails (it waits for its next attempt), has
 * nothing more, or the pass's budget or time ends. stop, when given, is asked before each
 * delivery: a stopping server does not start another one. */
int webhook_deliver(struct ledger *lg, const char *holder, int64_t retry_ms, bool (*stop)(void),
		    struct deliver_stats *st, struct err *e);

#endif
