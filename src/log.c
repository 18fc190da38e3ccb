/* log.c - JSON lines, each written with a single write(2) on a descriptor opened with
 * O_APPEND, so lines of concurrent threads and workers never interleave. */
#include "log.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

#define LINE_MAX_BYTES 2048

static const char *const level_names[] = {"debug", "info", "warn", "error"};
static enum log_level min_level = LOG_LEVEL_INFO;
static int log_fd = STDERR_FILENO;

int log_level_parse(const char *name)
{
	for (int i = 0; i < (int)(sizeof(level_names) / sizeof(level_names[0])); i++)
		if (!strcmp(name, level_names[i]))
			return i;
	return -1;
}

int log_open(enum log_level min, const char *path)
{
	int fd = STDERR_FILENO;

	if (path && *path && strcmp(path, "stderr")) {
		fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
		if (fd < 0)
			return -1;
	}
	if (log_fd != STDERR_FILENO)
		close(log_fd);
	log_fd = fd;
	min_level = min;
	return 0;
}

/* A line being built: never more than its buffer, always room for the closing "}\n". */
struct line {
	char buf[LINE_MAX_BYTES];
	size_t n;
};

static void put(struct line *l, const char *s, size_t len)
{
	size_t room = sizeof(l->buf) - 3 - l->n;

	if (len > room)
		len = room;
	memcpy(l->buf + l->n, s, len);
	l->n += len;
}

static void putf(struct line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(struct line *l, const char *fmt, ...)
{
	char tmp[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n > 0)
		put(l, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* ,"key":"value" with the value escaped as a JSON string (RFC 8259). */
static void put_str(struct line *l, const char *key, const char *v)
{
	putf(l, ",\"%s\":", key);
	if (!v) {
		put(l, "null", 4);
		return;
	}
	put(l, "\"", 1);
	/* stop early rather than cut an escape: the string always closes */
	for (const unsigned char *p = (const unsigned char *)v; *p && l->n + 10 < sizeof(l->buf); p++) {
		if (*p == '"' || *p == '\\') {
			char esc[2] = {'\\', (char)*p};
			put(l, esc, 2);
		} else if (*p < 0x20 || *p == 0x7f) {
			putf(l, "\\u%04x", *p);
		} else {
			put(l, (const char *)p, 1);
		}
	}
	put(l, "\"", 1);
}

static void begin(struct line *l, enum log_level level, const char *trace_id)
{
	char when[32];

	l->n = 0;
	putf(l, "{\"time\":\"%s\",\"level\":\"%s\",\"pid\":%d", time_format(now_ms(), when, sizeof(when)),
	     level_names[level], (int)getpid());
	put_str(l, "trace_id", trace_id);
}

static void finish(struct line *l)
{
	l->buf[l->n++] = '}';
	l->buf[l->n++] = '\n';
	if (write(log_fd, l->buf, l->n) < 0)
		return;
}

void log_msg(enum log_level level, const char *trace_id, const char *fmt, ...)
{
	char msg[LINE_MAX_BYTES / 2];
	struct line l;
	va_list ap;

	if (level < min_level)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	begin(&l, level, trace_id);
	put_str(&l, "msg", msg);
	finish(&l);
}

void log_request(const char *trace_id, const char *method, const char *path, const char *route,
		 int status, int64_t duration_ms, bool replayed)
{
	struct line l;

	if (LOG_LEVEL_INFO < min_level)
		return;
	begin(&l, LOG_LEVEL_INFO, trace_id);
	put(&l, ",\"event\":\"request\"", 18);
	put_str(&l, "method", method);
	put_str(&l, "path", path);
	put_str(&l, "route", route);
	putf(&l, ",\"status\":%d,\"duration_ms\":%lld,\"replayed\":%s", status, (long long)duration_ms,
	     replayed ? "true" : "false");
	finish(&l);
}
