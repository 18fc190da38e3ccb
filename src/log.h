/* log.h - one JSON object per line for each request and each notable event: time, level,
 * pid, trace id, then the event's own fields. Level and destination come from the
 * configuration (NUMATIX_LOG_LEVEL, NUMATIX_LOG); nothing secret is ever passed in. */
#ifndef NUMATIX_LOG_H
#define NUMATIX_LOG_H

#include <stdbool.h>
#include <stdint.h>

enum log_level { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };

/* "debug", "info", ... to a level; -1 for anything else. */
int log_level_parse(const char *name);
/* Where lines go from now on: stderr when path is NULL or "stderr", else the file, opened
 * for appending (created 0640). Returns 0, or -1 with errno when the file cannot be opened. */
int log_open(enum log_level min, const char *path);

void log_msg(enum log_level level, const char *trace_id, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* The line of one request: {"event":"request","method":..,"path":..,"route":..,"status":..,
 * "duration_ms":..,"replayed":..}. route is the pattern that matched, or NULL. */
void log_request(const char *trace_id, const char *method, const char *path, const char *route,
		 int status, int64_t duration_ms, bool replayed);

#define LOG_DEBUG(trace, ...) log_msg(LOG_LEVEL_DEBUG, trace, __VA_ARGS__)
#define LOG_INFO(trace, ...) log_msg(LOG_LEVEL_INFO, trace, __VA_ARGS__)
#define LOG_WARN(trace, ...) log_msg(LOG_LEVEL_WARN, trace, __VA_ARGS__)
#define LOG_ERROR(trace, ...) log_msg(LOG_LEVEL_ERROR, trace, __VA_ARGS__)

#endif
