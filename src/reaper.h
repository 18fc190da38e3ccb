/* reaper.h - settles what crashed or slow requests left behind: releases seat holds past their
 * deadline, refunds charges whose hold was released, forgets abandoned and old keys. One runs
 * at a time across workers and machines, by a lease in the store. */
#ifndef NUMATIX_REAPER_H
#define NUMATIX_REAPER_H

#include "store.h"

struct reap_stats {
	int expired;     /* holds released */
	int refunded;    /* charges refunded */
	int purged;      /* keys forgotten */
	bool ran;        /* false: another reaper holds the lease */
};

/* One pass. holder names this reaper in the lease. */
int reaper_run(struct store *s, const char *holder, int key_retention_h, struct reap_stats *st,
	       struct err *e);

#endif
