/* err.c - filling the error struct. */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>

void err_set(struct err *e, enum err_kind kind, const char *code, const char *fmt, ...)
{
	va_list ap;

	e->kind = kind;
	e->code = code;
	e->details[0] = '\0';
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
}

void err_clear(struct err *e)
{
	e->kind = ERR_NONE;
	e->code = NULL;
	e->msg[0] = '\0';
	e->details[0] = '\0';
}
