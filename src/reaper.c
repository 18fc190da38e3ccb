/* reaper.c - settles what crashed or slow requests left behind. */
#include "reaper.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ids.h"
#include "log.h"
#include "purchase.h"
#include "util.h"

#define BATCH 200
#define LEASE_MS 60000

static int expire_overdue(struct ledger *lg, const struct actor *a, int64_t now, struct reap_stats *st,
			  struct err *e)
{
	struct subscription *holds = NULL;
	size_t n = 0, i;
	int rc = 0;

	for (int batch = 0; batch < 50 && rc == 0; batch++) {
		if (lg->store->ops->holds_overdue(lg->store, now, BATCH, &holds, &n, e))
			return -1;
		for (i = 0; i < n; i++) {
			struct err he = {0};
			bool moved;
			if (purchase_expire(lg, a, &holds[i], NULL, now_ms(), &moved, &he))
				LOG_WARN(a->trace_id, "reaper: expiring %s: %s", holds[i].id, he.msg);
			else
				st->expired += moved;
		}
		for (i = 0; i < n; i++)
			subscription_clear(&holds[i]);
		free(holds);
		holds = NULL;
		if (n < BATCH)
			break;
	}
	return rc;
}

/* Captured charges recorded in the ledger whose hold ended without a seat and were never
 * refunded (a crash between the two). */
static int refund_unrefunded(struct ledger *lg, const struct actor *a, struct reap_stats *st, struct err *e)
{
	struct payment *charges = NULL;
	size_t n = 0, i;
	int rc = 0;

	if (lg->store->ops->charges_unrefunded(lg->store, BATCH, &charges, &n, e))
		return -1;
	for (i = 0; i < n && rc == 0; i++) {
		struct subscription sub = {0};
		if ((rc = ledger_sub_get(lg, charges[i].subscription_id, &sub, e)) == 0 &&
		    (rc = purchase_void(lg, a, charges[i].idem_key, &sub, charges[i].id, e)) == 0)
			st->refunded++;
		subscription_clear(&sub);
	}
	free(charges);
	return rc;
}

/* Refunds a plan change recorded but the processor has not made (its request died first). */
static int make_credits(struct ledger *lg, const struct actor *a, struct reap_stats *st, struct err *e)
{
	struct payment *refunds = NULL;
	size_t n = 0, i;
	int rc = 0;

	if (lg->store->ops->payments_in(lg->store, "pending", BATCH, &refunds, &n, e))
		return -1;
	/* one that cannot be made now (the processor down, or a credit past what its chain was
	 * paid, logged as an error) never holds up the others, nor the rest of the pass */
	for (i = 0; i < n; i++) {
		struct err ce = {0};
		if (purchase_credit(lg, a, &refunds[i], &ce))
			LOG_WARN(a->trace_id, "reaper: credit %s: %s", refunds[i].id, ce.msg);
		else
			st->refunded++;
	}
	free(refunds);
	return rc;
}

/* Authorizations the ledger recorded and nobody finished: captured when a seat keeps them (the
 * request took the money, or died first), voided when none does. Each capture is recorded here,
 * so that a purchase's own request pays two durable commits, not three. */
static int finish_authorized(struct ledger *lg, const struct actor *a, struct reap_stats *st, struct err *e)
{
	struct payment *charges = NULL;
	size_t n = 0, i;
	int rc = 0;

	for (int batch = 0; batch < 50 && rc == 0; batch++) {
		if (lg->store->ops->payments_in(lg->store, "authorized", BATCH, &charges, &n, e))
			return -1;
		size_t done = 0;
		for (i = 0; i < n; i++) {
			struct err fe = {0};
			if (purchase_finish(lg, a, &charges[i], &fe))
				LOG_WARN(a->trace_id, "reaper: finishing %s: %s", charges[i].id, fe.msg);
			else
				done++;
		}
		st->finished += (int)done;
		free(charges);
		charges = NULL;
		/* the next batch would begin with what failed here: left to the next pass */
		if (n < BATCH || done < n)
			break;
	}
	return rc;
}

int reaper_run(struct ledger *lg, const char *holder, struct reap_stats *st, struct err *e)
{
	struct store *s = lg->store;
	char trace[UUID_LEN + 1];
	struct actor a = {trace, "system", "reaper", NULL};
	int64_t now = now_ms();
	bool taken;
	int rc = -1;

	memset(st, 0, sizeof(*st));
	uuid_new(trace);
	if (s->ops->lease_take(s, REAPER_LEASE, holder, now, now + LEASE_MS, &taken, e))
		return -1;
	if (!taken)
		return 0;
	st->ran = true;
	if (expire_overdue(lg, &a, now, st, e) || finish_authorized(lg, &a, st, e) || refund_unrefunded(lg, &a, st, e) ||
	    make_credits(lg, &a, st, e) ||
	    s->ops->keys_purge(s, now - (int64_t)lg->key_retention_h * 3600 * 1000, &st->purged, e))
		goto out;
	if (st->expired || st->refunded)
		LOG_INFO(trace, "reaper: %d holds expired, %d charges refunded, %d keys purged", st->expired,
			 st->refunded, st->purged);
	rc = 0;
out:
	{
		/* Give the lease back, so the next pass (from any machine) need not wait it out. */
		struct err ignored = {0};
		s->ops->lease_take(s, REAPER_LEASE, holder, now_ms(), 0, &taken, &ignored);
	}
	return rc;
}
