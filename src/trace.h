/* trace.h - W3C Trace Context (traceparent, tracestate): a request's trace id taken from its
 * caller's traceparent, and passed on, with a span id of the request's own, to the systems it
 * calls (webhook receivers). */
#ifndef NUMATIX_TRACE_H
#define NUMATIX_TRACE_H

#include <stdbool.h>

#define TRACE_ID_LEN 32           /* lowercase hex */
#define SPAN_ID_LEN 16            /* lowercase hex */
#define TRACEPARENT_LEN 55        /* "00-" trace "-" span "-" flags */
#define TRACESTATE_MAX 512        /* the longest tracestate passed on (W3C: at least 512 kept) */

/* Whether h is a traceparent a receiver must honour (W3C Trace Context, level 1: a known or
 * later version, ids not all zeros); its trace id, parent id and flags then. A malformed one
 * is to be ignored, never refused. */
bool traceparent_parse(const char *h, char trace_id[TRACE_ID_LEN + 1], char flags[3]);
/* The W3C trace id of one of ours: itself when it is one (32 lowercase hex, not all zeros),
 * else 32 hex digits of its SHA-256, so a caller's own X-Trace-Id still names one trace. */
void trace_w3c_id(const char *trace_id, char out[TRACE_ID_LEN + 1]);
/* A new span id. */
void span_new(char out[SPAN_ID_LEN + 1]);
/* "00-<trace>-<span>-<flags>". */
void traceparent_format(const char *trace_id, const char *span, const char *flags, char out[TRACEPARENT_LEN + 1]);
/* Whether a tracestate header may be passed on as it is: printable ASCII, at most
 * TRACESTATE_MAX characters. */
bool tracestate_valid(const char *s);

#endif
