/* log.c - one line per event on stderr, written with a single write(2) so lines of
 * concurrent workers never interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include "util.h"

void log_msg(const char *level, const char *trace_id, const char *fmt, ...)
{
	char line[1024], when[32];
	va_list ap;
	int n;

	n = snprintf(line, sizeof(line), "%s numatix[%d] %s trace=%s ", time_format(now_ms(), when, sizeof(when)),
		     (int)getpid(), level, trace_id ? trace_id : "-");
	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	if (write(STDERR_FILENO, line, (size_t)n) < 0)
		return;
}
