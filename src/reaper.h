/* reaper.h - settles what crashed or slow requests left behind: expires seat holds past
 * their deadline, has the processor refund charges of holds that ended without a seat (or
 * void their keys), purges old keys. One runs at a time across workers and machines, by a
 * lease in the store. */
#ifndef NUMATIX_REAPER_H
#define NUMATIX_REAPER_H

#include <stdbool.h>

#include "ledger.h"

/* The lease a pass holds in the store, by this name. */
#define REAPER_LEASE "reaper"

struct reap_stats {
	int expired;     /* holds released */
	int refunded;    /* charges refunded */
	int finished;    /* authorizations captured or voided */
	int purged;      /* keys purged */
	bool ran;        /* false: another reaper holds the lease */
};

/* One pass. holder names this reaper in the lease. */
int reaper_run(struct ledger *lg, const char *holder, struct reap_stats *st, struct err *e);

#endif
