/* period.h - a subscription's periods: counted from its anchor in its plan's time zone, never
 * chained from the previous end. Period k ends at anchor + (k+1) x count units of local wall
 * time; a day of month past the month's last day is clamped to it (monthly from Jan 31: Feb 28,
 * Mar 31, Apr 30), and a day keeps its wall-clock time across a change of summer time (30 days
 * from 10:00 local end at 10:00 local, 29 days 23 hours later in spring). A local time that
 * does not exist (the hour skipped in spring) is read as the offset before the change; one that
 * occurs twice (autumn) as its first occurrence. The arithmetic is ICU's calendar; the zone's
 * name must be in the system's tz database (/usr/share/zoneinfo) and known to ICU. */
#ifndef NUMATIX_PERIOD_H
#define NUMATIX_PERIOD_H

#include <stdbool.h>
#include <stdint.h>

enum period_unit { PERIOD_DAY, PERIOD_WEEK, PERIOD_MONTH, PERIOD_YEAR };

#define PERIOD_COUNT_MAX 365
#define PERIOD_ZONE_MAX 64               /* the longest zone name accepted, bytes */

/* "day" | "week" | "month" | "year"; -1 when none of them. */
int period_unit_parse(const char *s, enum period_unit *u);
const char *period_unit_name(enum period_unit u);

/* Whether name is an IANA zone this machine's tz database has. */
bool period_zone_known(const char *name);

/* The end of period k (0: the first) of a subscription anchored at anchor_ms (UTC), in ms
 * since the epoch. 0, or -1 when the zone is unknown or the term is not one. */
int period_end(int64_t anchor_ms, enum period_unit u, int count, const char *zone, int64_t k, int64_t *end_ms);

/* The instant `days` days of the zone's calendar before at_ms, at the same wall-clock time (a
 * reminder 7 days before a period's end: 7 x 24 hours, give or take a change of summer time).
 * 0, or -1 when the zone is unknown. */
int period_days_before(int64_t at_ms, int days, const char *zone, int64_t *out_ms);

#endif
