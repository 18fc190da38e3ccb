/* period.c - period ends on the calendar of civil.c, read in a zone of tz.c (the system's tz
 * database: ICU's own copy of it lags the machine's — Egypt's summer time since 2023,
 * Paraguay's fixed -03 since 2024 — and a subscription must end where the machine's clock and
 * every other program on it say). */
#include "period.h"

#include <string.h>

#include "civil.h"
#include "tz.h"

static const char *const unit_names[] = {"day", "week", "month", "year"};

int period_unit_parse(const char *s, enum period_unit *u)
{
	for (int i = 0; i < 4; i++)
		if (s && !strcmp(s, unit_names[i])) {
			*u = (enum period_unit)i;
			return 0;
		}
	return -1;
}

const char *period_unit_name(enum period_unit u)
{
	return (unsigned)u < 4 ? unit_names[u] : "day";
}

bool period_zone_known(const char *name)
{
	return name && strlen(name) <= PERIOD_ZONE_MAX && tz_get(name) != NULL;
}

int period_end(int64_t anchor_ms, enum period_unit u, int count, const char *zone, int64_t k, int64_t *end_ms)
{
	const struct tz *z = period_zone_known(zone) ? tz_get(zone) : NULL;
	int64_t n = (k + 1) * count, secs, ms, local, days, sod, y;
	int m, d;

	if (!z || (unsigned)u > PERIOD_YEAR || count < 1 || k < 0 || n > 1000000)
		return -1;
	secs = civil_floor_div(anchor_ms, 1000);
	ms = anchor_ms - secs * 1000;
	local = secs + tz_offset_at(z, secs);
	days = civil_floor_div(local, 86400);
	sod = local - days * 86400;
	civil_from_days(days, &y, &m, &d);
	switch (u) {
	case PERIOD_DAY:
		days += n;
		break;
	case PERIOD_WEEK:
		days += 7 * n;
		break;
	case PERIOD_MONTH:
	case PERIOD_YEAR: {
		int64_t months = (y * 12 + m - 1) + (u == PERIOD_MONTH ? n : 12 * n);
		y = civil_floor_div(months, 12);
		m = (int)(months - y * 12) + 1;
		if (d > civil_month_days(y, m))
			d = civil_month_days(y, m);   /* a day past the month's end: its last */
		days = civil_days(y, m, d);
		break;
	}
	}
	*end_ms = tz_local_to_utc(z, days * 86400 + sod) * 1000 + ms;
	return 0;
}

int period_days_before(int64_t at_ms, int days, const char *zone, int64_t *out_ms)
{
	const struct tz *z = period_zone_known(zone) ? tz_get(zone) : NULL;
	int64_t secs, ms, local;

	if (!z)
		return -1;
	secs = civil_floor_div(at_ms, 1000);
	ms = at_ms - secs * 1000;
	local = secs + tz_offset_at(z, secs) - (int64_t)days * 86400;
	*out_ms = tz_local_to_utc(z, local) * 1000 + ms;
	return 0;
}
