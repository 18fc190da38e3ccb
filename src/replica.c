/* replica.c - public reads from a PostgreSQL standby within a bound on its lag. */
#include "replica.h"

#include <stdlib.h>

#include "log.h"
#include "util.h"

struct replica *replica_new(const char *url, int handles, int64_t max_lag_ms)
{
	struct replica *r = xcalloc(1, sizeof(*r));

	r->store = store_pool_new(url, handles);
	r->max_lag_ms = max_lag_ms;
	return r;
}

void replica_free(struct replica *r)
{
	if (!r)
		return;
	store_close(r->store);
	free(r);
}

struct store *replica_reader(struct replica *r)
{
	int64_t now = now_ms(), lag = 0;
	struct err e = {0};

	if (!r)
		return NULL;
	/* one lag reading serves every thread of the worker for REPLICA_CHECK_MS */
	if (now - __atomic_load_n(&r->checked_at_ms, __ATOMIC_ACQUIRE) >= REPLICA_CHECK_MS) {
		bool ok = r->store->ops->replica_lag(r->store, &lag, &e) == 0 && lag <= r->max_lag_ms;
		if (!ok && e.kind != ERR_NONE)
			LOG_DEBUG(NULL, "standby: %s", e.msg);
		__atomic_store_n(&r->usable, ok ? 1 : 0, __ATOMIC_RELEASE);
		/* a standby that cannot be reached is tried again a second later, not at every read */
		__atomic_store_n(&r->checked_at_ms, e.kind != ERR_NONE ? now + REPLICA_RETRY_MS - REPLICA_CHECK_MS : now,
				 __ATOMIC_RELEASE);
	}
	return __atomic_load_n(&r->usable, __ATOMIC_ACQUIRE) ? r->store : NULL;
}

void replica_failed(struct replica *r)
{
	__atomic_store_n(&r->usable, 0, __ATOMIC_RELEASE);
}
