/* reaper.c - settles what crashed or slow requests left behind. */
#include "reaper.h"

#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "ids.h"
#include "log.h"
#include "payment.h"
#include "util.h"

#define BATCH 200
#define LEASE_MS 60000

int reaper_run(struct store *s, const char *holder, int key_retention_h, struct reap_stats *st,
	       struct err *e)
{
	struct hold_ref *holds = NULL;
	struct payment *charges = NULL;
	char trace[UUID_LEN + 1];
	struct audit_ctx a = {trace, "system", "reaper", NULL};
	char *body = NULL;
	int64_t now = now_ms();
	size_t n, i;
	int rc = -1;

	memset(st, 0, sizeof(*st));
	uuid_new(trace);
	if (!s->ops->lease_take(s, "reaper", holder, now, now + LEASE_MS, e))
		return e->kind == ERR_NONE ? 0 : -1;
	st->ran = true;
	body = error_body("HOLD_EXPIRED",
			  "The seat hold expired before the payment finished; any charge is refunded",
			  trace, NULL);
	struct outcome o = {409, body};
	for (int batch = 0; batch < 50; batch++) {
		free(holds);
		if (s->ops->holds_overdue(s, now, BATCH, &holds, &n, e))
			goto out;
		for (i = 0; i < n; i++) {
			struct err he = {0};
			if (s->ops->hold_release(s, holds[i].subscription_id, "expired", now_ms(), &o, &a, &he) == 0)
				st->expired++;
			else if (he.kind != ERR_CONFLICT)
				LOG_WARN(trace, "reaper: expiring %s: %s", holds[i].subscription_id, he.msg);
		}
		if (n < BATCH)
			break;
	}
	if (s->ops->charges_unsettled(s, BATCH, &charges, &n, e))
		goto out;
	for (i = 0; i < n; i++) {
		if (payment_refund(s, &charges[i], &a, e))
			goto out;
		st->refunded++;
	}
	if (s->ops->keys_purge(s, now, now - (int64_t)key_retention_h * 3600 * 1000, &st->purged, e))
		goto out;
	if (st->expired || st->refunded)
		LOG_INFO(trace, "reaper: %d holds expired, %d charges refunded, %d keys purged", st->expired,
			 st->refunded, st->purged);
	rc = 0;
out:
	{
		/* Give the lease back, so the next pass (from any machine) need not wait it out. */
		struct err ignored = {0};
		s->ops->lease_take(s, "reaper", holder, now_ms(), 0, &ignored);
	}
	free(holds);
	free(charges);
	free(body);
	return rc;
}
