/* tz.c - TZif files (RFC 8536, version 2 and later: 64-bit transition times) and the POSIX TZ
 * string of their footer, which gives local time after the last transition. */
#include "tz.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "civil.h"
#include "util.h"

#define ZONEINFO "/usr/share/zoneinfo/"
#define NAME_MAX_LEN 64
#define FILE_MAX (1 << 20)
#define ZONES_MAX 1024

/* A rule of a TZ string: the day a change happens in a year, and its local time. */
struct rule {
	char kind;          /* 'J': day 1...365, never Feb 29; 'D': day 0...365; 'M': month.week.day */
	int n, month, week, wday;
	int32_t time;       /* seconds after midnight local time (RFC 8536: -167h ... 167h) */
};

struct tz {
	char name[NAME_MAX_LEN + 1];
	int64_t *times;     /* transitions, ascending */
	unsigned char *idx; /* the local time type of each */
	int32_t *utoff;     /* per type */
	int ntimes, ntypes;
	bool footer;        /* local time after the last transition is the TZ string's */
	bool dst;           /* it has summer time */
	int32_t std_off, dst_off;
	struct rule start, end;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct tz *zones[ZONES_MAX];
static int nzones;

static bool name_ok(const char *name)
{
	size_t n = strlen(name);

	if (n == 0 || n > NAME_MAX_LEN || name[0] == '/' || name[0] == '.' || name[n - 1] == '/')
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		if (c == '/') {
			if (name[i + 1] == '/' || name[i + 1] == '.')
				return false;
		} else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
			     c == '-' || c == '+')) {
			return false;
		}
	}
	return true;
}

static uint32_t be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t be64(const unsigned char *p)
{
	return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4));
}

/* --- the TZ string -------------------------------------------------------------------------- */

/* [+-]hh[:mm[:ss]], hours up to max_h; seconds into *out. NULL when malformed. */
static const char *hms(const char *p, int max_h, int32_t *out)
{
	int sign = 1, part[3] = {0, 0, 0}, n = 0;

	if (*p == '+' || *p == '-')
		sign = *p++ == '-' ? -1 : 1;
	for (;;) {
		if (*p < '0' || *p > '9')
			return NULL;
		while (*p >= '0' && *p <= '9' && part[n] <= 999)
			part[n] = part[n] * 10 + (*p++ - '0');
		if (++n == 3 || *p != ':')
			break;
		p++;
	}
	if (part[0] > max_h || part[1] > 59 || part[2] > 59)
		return NULL;
	*out = sign * (part[0] * 3600 + part[1] * 60 + part[2]);
	return p;
}

/* A zone's abbreviation: letters, or anything but '>' between '<' and '>'. */
static const char *abbr(const char *p)
{
	const char *s = p;

	if (*p == '<') {
		while (*p && *p != '>')
			p++;
		return *p == '>' && p - s > 1 ? p + 1 : NULL;
	}
	while ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z'))
		p++;
	return p - s >= 3 ? p : NULL;
}

static const char *rule(const char *p, struct rule *r)
{
	char *end;

	memset(r, 0, sizeof(*r));
	r->time = 7200;
	if (*p == 'M') {
		r->kind = 'M';
		r->month = (int)strtol(p + 1, &end, 10);
		if (*end != '.' || r->month < 1 || r->month > 12)
			return NULL;
		r->week = (int)strtol(end + 1, &end, 10);
		if (*end != '.' || r->week < 1 || r->week > 5)
			return NULL;
		r->wday = (int)strtol(end + 1, &end, 10);
		if (r->wday < 0 || r->wday > 6)
			return NULL;
	} else {
		r->kind = *p == 'J' ? 'J' : 'D';
		if (*p == 'J')
			p++;
		if (*p < '0' || *p > '9')
			return NULL;
		r->n = (int)strtol(p, &end, 10);
		if (r->kind == 'J' ? r->n < 1 || r->n > 365 : r->n > 365)
			return NULL;
	}
	p = end;
	if (*p == '/' && !(p = hms(p + 1, 167, &r->time)))
		return NULL;
	return p;
}

/* "CET-1CEST,M3.5.0,M10.5.0/3", "<-03>3", "EST5EDT,M3.2.0,M11.1.0": 0, or -1 when it is none. */
static int tz_string(struct tz *z, const char *s)
{
	const char *p;
	int32_t off;

	if (!*s)
		return 0;                          /* empty: the last transition's type for ever */
	if (!(p = abbr(s)) || !(p = hms(p, 24, &off)))
		return -1;
	z->footer = true;
	z->std_off = -off;                       /* POSIX counts west of Greenwich */
	if (!*p)
		return 0;
	if (!(p = abbr(p)))
		return -1;
	z->dst = true;
	z->dst_off = z->std_off + 3600;
	if (*p && *p != ',') {
		if (!(p = hms(p, 24, &off)))
			return -1;
		z->dst_off = -off;
	}
	if (*p != ',' || !(p = rule(p + 1, &z->start)) || *p != ',' || !(p = rule(p + 1, &z->end)) || *p)
		return -1;
	return 0;
}

/* The instant (UTC) a rule's change happens in year y, its local time read at offset off. */
static int64_t rule_at(const struct rule *r, int64_t y, int32_t off)
{
	int64_t day;

	if (r->kind == 'J')
		day = civil_days(y, 1, 1) + r->n - 1 + (civil_leap(y) && r->n >= 60);
	else if (r->kind == 'D')
		day = civil_days(y, 1, 1) + r->n;
	else {
		int64_t first = civil_days(y, r->month, 1);
		int mday = 1 + (int)((r->wday - civil_weekday(first) + 7) % 7) + (r->week - 1) * 7;
		while (mday > civil_month_days(y, r->month))
			mday -= 7;
		day = first + mday - 1;
	}
	return day * 86400 + r->time - off;
}

static int32_t footer_offset(const struct tz *z, int64_t utc_s)
{
	int64_t y, start, end;
	int m, d;

	if (!z->dst)
		return z->std_off;
	civil_from_days(civil_floor_div(utc_s + z->std_off, 86400), &y, &m, &d);
	start = rule_at(&z->start, y, z->std_off);   /* read in standard time */
	end = rule_at(&z->end, y, z->dst_off);       /* read in summer time */
	if (start < end)
		return utc_s >= start && utc_s < end ? z->dst_off : z->std_off;
	/* the southern hemisphere: summer across the new year */
	return utc_s >= end && utc_s < start ? z->std_off : z->dst_off;
}

/* --- the file ----------------------------------------------------------------------------- */

static struct tz *parse(const char *name, const unsigned char *b, size_t len)
{
	struct tz *z;
	size_t at, cnt[6], need;
	char footer[256];

	if (len < 44 || memcmp(b, "TZif", 4) || b[4] < '2')
		return NULL;
	/* skip the version 1 block (32-bit times) to the version 2 header */
	for (int i = 0; i < 6; i++)
		cnt[i] = be32(b + 20 + 4 * i);
	at = 44 + cnt[3] * 5 + cnt[4] * 6 + cnt[5] + cnt[2] * 8 + cnt[1] + cnt[0];
	if (at + 44 > len || memcmp(b + at, "TZif", 4))
		return NULL;
	for (int i = 0; i < 6; i++)
		cnt[i] = be32(b + at + 20 + 4 * i);
	at += 44;
	/* isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt; a zone of leap seconds is not one
	 * of civil time */
	need = cnt[3] * 9 + cnt[4] * 6 + cnt[5] + cnt[2] * 12 + cnt[1] + cnt[0];
	if (cnt[2] || cnt[4] == 0 || cnt[4] > 256 || cnt[3] > 100000 || at + need > len)
		return NULL;
	z = xcalloc(1, sizeof(*z));
	snprintf(z->name, sizeof(z->name), "%s", name);
	z->ntimes = (int)cnt[3];
	z->ntypes = (int)cnt[4];
	z->times = xcalloc(cnt[3] + 1, sizeof(*z->times));
	z->idx = xcalloc(cnt[3] + 1, 1);
	z->utoff = xcalloc(cnt[4], sizeof(*z->utoff));
	for (int i = 0; i < z->ntimes; i++)
		z->times[i] = be64(b + at + 8 * (size_t)i);
	at += cnt[3] * 8;
	for (int i = 0; i < z->ntimes; i++)
		if ((z->idx[i] = b[at + (size_t)i]) >= z->ntypes)
			goto bad;
	at += cnt[3];
	for (int i = 0; i < z->ntypes; i++)
		z->utoff[i] = (int32_t)be32(b + at + 6 * (size_t)i);
	at += cnt[4] * 6 + cnt[5] + cnt[1] + cnt[0];
	/* the footer: "\n<TZ string>\n" */
	if (at < len && b[at] == '\n') {
		size_t n = 0;
		for (at++; at < len && b[at] != '\n' && n < sizeof(footer) - 1; at++)
			footer[n++] = (char)b[at];
		footer[n] = '\0';
		if (tz_string(z, footer))
			goto bad;
	}
	return z;
bad:
	free(z->times);
	free(z->idx);
	free(z->utoff);
	free(z);
	return NULL;
}

static struct tz *load(const char *name)
{
	char path[sizeof(ZONEINFO) + NAME_MAX_LEN];
	unsigned char *b = xmalloc(FILE_MAX);
	struct tz *z = NULL;
	size_t len;
	FILE *f;

	snprintf(path, sizeof(path), ZONEINFO "%s", name);
	if ((f = fopen(path, "rb"))) {
		len = fread(b, 1, FILE_MAX, f);
		fclose(f);
		z = parse(name, b, len);
	}
	free(b);
	return z;
}

const struct tz *tz_get(const char *name)
{
	struct tz *z = NULL;

	if (!name || !name_ok(name))
		return NULL;
	pthread_mutex_lock(&lock);
	for (int i = 0; i < nzones && !z; i++)
		if (!strcmp(zones[i]->name, name))
			z = zones[i];
	if (!z && (z = load(name)) && nzones < ZONES_MAX)
		zones[nzones++] = z;   /* kept for the process; a full table only means reading again */
	pthread_mutex_unlock(&lock);
	return z;
}

int32_t tz_offset_at(const struct tz *z, int64_t utc_s)
{
	int lo = 0, hi = z->ntimes - 1;

	if (z->ntimes == 0)
		return z->footer ? footer_offset(z, utc_s) : z->utoff[0];
	if (utc_s < z->times[0])
		return z->utoff[0];
	if (utc_s >= z->times[hi] && z->footer)
		return footer_offset(z, utc_s);
	while (lo < hi) {                           /* the last transition at or before utc_s */
		int mid = lo + (hi - lo + 1) / 2;
		if (z->times[mid] <= utc_s)
			lo = mid;
		else
			hi = mid - 1;
	}
	return z->utoff[z->idx[lo]];
}

int64_t tz_local_to_utc(const struct tz *z, int64_t local_s)
{
	/* the offsets a day before and after: a change between them makes the local time happen
	 * twice (both readings hold) or never (neither does) */
	int32_t before = tz_offset_at(z, local_s - 86400), after = tz_offset_at(z, local_s + 86400);
	int64_t a = local_s - before, b = local_s - after;

	if (before == after || tz_offset_at(z, a) == before)
		return a;                               /* the first occurrence, or the only one */
	if (tz_offset_at(z, b) == after)
		return b;
	return a;                                   /* skipped: read with the offset before */
}
