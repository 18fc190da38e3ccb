/* renewer.c - a pass over what is due of subscriptions' lives. */
#include "renewer.h"

#include <stdlib.h>
#include <string.h>

#include "ids.h"
#include "log.h"
#include "util.h"

#define BATCH 200
/* the lease of a pass; renewed before each batch, so that a long pass keeps it */
#define LEASE_MS 60000

int renewer_run(struct ledger *lg, const char *holder, bool (*stop)(void), struct renew_stats *st, struct err *e)
{
	struct store *s = lg->store;
	char trace[UUID_LEN + 1];
	struct actor a = {trace, "system", "renewer", NULL};
	bool taken;
	int rc = 0;

	memset(st, 0, sizeof(*st));
	uuid_new(trace);
	for (int batch = 0; rc == 0 && !(stop && stop()); batch++) {
		struct subscription *due = NULL;
		size_t n = 0, settled = 0;
		int64_t now = now_ms();
		if (s->ops->lease_take(s, RENEWER_LEASE, holder, now, now + LEASE_MS, &taken, e))
			return -1;
		if (!taken)
			return 0;
		st->ran = true;
		if (s->ops->subs_due(s, now, BATCH, &due, &n, e)) {
			rc = -1;
			break;
		}
		for (size_t i = 0; i < n; i++) {
			struct err le = {0};
			int before = st->life.unknown;
			if (life_due(lg, &a, &due[i], &st->life, &le))
				LOG_WARN(trace, "renewer: %s: %s", due[i].id, le.msg);
			else if (st->life.unknown == before)
				settled++;
		}
		for (size_t i = 0; i < n; i++)
			subscription_clear(&due[i]);
		free(due);
		/* a batch that left some for later (unknown outcomes, errors) would begin with them again */
		if (n < BATCH || settled < n)
			break;
	}
	if (rc == 0 && st->ran)
		rc = life_reconcile(lg, &a, &st->life, e) || life_refund_late(lg, &a, &st->life, e) ||
		     life_remind(lg, &a, &st->life, e) ? -1 : 0;
	if (st->life.renewed || st->life.past_due || st->life.cancelled || st->life.ended || st->life.refunded ||
	    st->life.reminded)
		LOG_INFO(trace, "renewer: %d renewed, %d past due, %d cancelled, %d ended, %d late renewals refunded,"
			 " %d reminded", st->life.renewed, st->life.past_due, st->life.cancelled, st->life.ended,
			 st->life.refunded, st->life.reminded);
	if (st->ran) {
		/* Give the lease back, so the next pass (from any machine) need not wait it out. */
		struct err ignored = {0};
		s->ops->lease_take(s, RENEWER_LEASE, holder, now_ms(), 0, &taken, &ignored);
	}
	return rc;
}
