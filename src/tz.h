/* tz.h - time zones from the system's tz database (/usr/share/zoneinfo, RFC 8536 TZif files
 * and their POSIX TZ footer), the same data Python's zoneinfo and the C library read. Each zone
 * is read once per process and kept; lookups are thread-safe. A tz database upgraded on the
 * machine is read by the processes started after it. */
#ifndef NUMATIX_TZ_H
#define NUMATIX_TZ_H

#include <stdbool.h>
#include <stdint.h>

struct tz;

/* The zone of that IANA name, or NULL when the tz database has none (or the name is not one:
 * only letters, digits, '_', '-', '+' and single '/' between parts, none starting with '.').
 * Borrowed: kept for the life of the process. */
const struct tz *tz_get(const char *name);

/* The offset from UTC, in seconds, of local time at the instant utc_s. */
int32_t tz_offset_at(const struct tz *z, int64_t utc_s);

/* The instant of a local wall time (seconds since the epoch as if it were UTC). A local time that
 * does not exist (skipped when clocks go forward) is read with the offset before the change; one
 * that happens twice (clocks go back) is its first occurrence — Python's fold=0. */
int64_t tz_local_to_utc(const struct tz *z, int64_t local_s);

#endif
