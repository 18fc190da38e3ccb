/* renewer.h - the background service of a subscription's life (life.h): each pass renews,
 * retries and ends the subscriptions whose period or next attempt is due, then refunds renewals
 * that came too late. One runs at a time across workers and machines, by a lease in the store;
 * also `numatix renew` for cron on CGI-only hosting. */
#ifndef NUMATIX_RENEWER_H
#define NUMATIX_RENEWER_H

#include <stdbool.h>

#include "ledger.h"
#include "life.h"

#define RENEWER_LEASE "renewer"

struct renew_stats {
	struct life_stats life;
	bool ran;        /* false: another renewer holds the lease */
};

/* One pass. holder names this renewer in the lease; stop (may be NULL) ends it early between
 * subscriptions. */
int renewer_run(struct ledger *lg, const char *holder, bool (*stop)(void), struct renew_stats *st, struct err *e);

#endif
