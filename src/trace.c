/* trace.c - W3C Trace Context: parsing and making traceparent headers. */
#include "trace.h"

#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

/* Whether the n characters at s are lowercase hex digits, and not all zeros if nonzero is set. */
static bool lower_hex(const char *s, size_t n, bool nonzero)
{
	bool any = false;

	for (size_t i = 0; i < n; i++) {
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
		any = any || s[i] != '0';
	}
	return any || !nonzero;
}

bool traceparent_parse(const char *h, char trace_id[TRACE_ID_LEN + 1], char flags[3])
{
	size_t len = h ? strlen(h) : 0;

	if (len < TRACEPARENT_LEN || !lower_hex(h, 2, false) || !strncmp(h, "ff", 2))
		return false;
	/* version 00 is exactly this long; a later one may carry more, after a dash */
	if (!strncmp(h, "00", 2) ? len != TRACEPARENT_LEN : len > TRACEPARENT_LEN && h[TRACEPARENT_LEN] != '-')
		return false;
	if (h[2] != '-' || h[35] != '-' || h[52] != '-' || !lower_hex(h + 3, TRACE_ID_LEN, true) ||
	    !lower_hex(h + 36, SPAN_ID_LEN, true) || !lower_hex(h + 53, 2, false))
		return false;
	memcpy(trace_id, h + 3, TRACE_ID_LEN);
	trace_id[TRACE_ID_LEN] = '\0';
	memcpy(flags, h + 53, 2);
	flags[2] = '\0';
	return true;
}

void trace_w3c_id(const char *trace_id, char out[TRACE_ID_LEN + 1])
{
	unsigned char md[SHA256_DIGEST_LENGTH];

	if (strlen(trace_id) == TRACE_ID_LEN && lower_hex(trace_id, TRACE_ID_LEN, true)) {
		memcpy(out, trace_id, TRACE_ID_LEN + 1);
		return;
	}
	SHA256((const unsigned char *)trace_id, strlen(trace_id), md);
	hex_encode(md, TRACE_ID_LEN / 2, out);
	out[TRACE_ID_LEN] = '\0';
}

void span_new(char out[SPAN_ID_LEN + 1])
{
	unsigned char b[SPAN_ID_LEN / 2];

	do
		random_bytes(b, sizeof(b));
	while (!memcmp(b, "\0\0\0\0\0\0\0\0", sizeof(b)));
	hex_encode(b, sizeof(b), out);
	out[SPAN_ID_LEN] = '\0';
}

void traceparent_format(const char *trace_id, const char *span, const char *flags, char out[TRACEPARENT_LEN + 1])
{
	char w3c[TRACE_ID_LEN + 1];

	trace_w3c_id(trace_id, w3c);
	snprintf(out, TRACEPARENT_LEN + 1, "00-%s-%s-%s", w3c, span, flags);
}

bool tracestate_valid(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > TRACESTATE_MAX)
		return false;
	for (; *s; s++)
		if (*s < 0x20 || *s > 0x7e)
			return false;
	return true;
}
