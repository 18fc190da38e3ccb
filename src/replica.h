/* replica.h - the public reads (plans, a plan, its stats) from a PostgreSQL standby, within a
 * bound on its replay lag (NUMATIX_DB_REPLICA, NUMATIX_REPLICA_MAX_LAG_MS). Everything else, and
 * every read that decides a seat, stays on the primary; when the standby is down or too far
 * behind, the primary answers. */
#ifndef NUMATIX_REPLICA_H
#define NUMATIX_REPLICA_H

#include <stdint.h>

#include "store.h"

#define REPLICA_CHECK_MS 100          /* how often a worker asks the standby for its lag */
#define REPLICA_RETRY_MS 1000         /* and, when it did not answer, when it tries again */

struct replica {
	struct store *store;           /* owned: a pool of handles to the standby */
	int64_t max_lag_ms;
	int64_t checked_at_ms;         /* when the lag was last read (atomic) */
	int64_t usable;                /* 1: within the bound at that time (atomic) */
};

/* A replica of url's standby; new, free with replica_free. */
struct replica *replica_new(const char *url, int handles, int64_t max_lag_ms);
void replica_free(struct replica *r);
/* The standby's store when a public read may use it now, or NULL: the primary's turn. */
struct store *replica_reader(struct replica *r);
/* The standby failed a read it was given: the primary answers until it is checked again. */
void replica_failed(struct replica *r);

#endif
