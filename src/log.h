/* log.h - one line per event on stderr: time, pid, level, trace id, message. */
#ifndef NUMATIX_LOG_H
#define NUMATIX_LOG_H

void log_msg(const char *level, const char *trace_id, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define LOG_INFO(trace, ...) log_msg("info", trace, __VA_ARGS__)
#define LOG_WARN(trace, ...) log_msg("warn", trace, __VA_ARGS__)
#define LOG_ERROR(trace, ...) log_msg("error", trace, __VA_ARGS__)

#endif
