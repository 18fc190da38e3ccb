/* jsonx.c - strict parsing of request bodies and the canonical form used in fingerprints. */
#include "jsonx.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* The value of the four hex digits at p, or -1. */
static long hex4(const char *p, const char *end)
{
	long v = 0;

	if (end - p < 4)
		return -1;
	for (int i = 0; i < 4; i++) {
		int c = p[i], d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 :
				  c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
		if (d < 0)
			return -1;
		v = v * 16 + d;
	}
	return v;
}

/* Whether a string of the JSON text escapes half of a surrogate pair alone (\ud800 with no low
 * half after it, or a low half alone): no character at all, which json-c would quietly read as
 * U+FFFD, so that two different texts would become one. */
static bool lone_surrogate(const char *p, size_t len)
{
	const char *end = p + len;
	bool in_string = false;

	for (; p < end; p++) {
		if (*p == '"') {
			in_string = !in_string;
		} else if (in_string && *p == '\\' && p + 1 < end) {
			long v = p[1] == 'u' ? hex4(p + 2, end) : -1;
			if (v >= 0xdc00 && v <= 0xdfff)
				return true;
			if (v >= 0xd800 && v <= 0xdbff) {
				long lo = p + 7 < end && p[6] == '\\' && p[7] == 'u' ? hex4(p + 8, end) : -1;
				if (lo < 0xdc00 || lo > 0xdfff)
					return true;
				p += 6;        /* the low half, taken with its high one */
			}
			p++;                   /* the escaped character */
		}
	}
	return false;
}

int jsonx_parse(const char *buf, size_t len, struct json_object **out, char *reason, size_t rlen)
{
	struct json_tokener *tok = json_tokener_new_ex(JSONX_MAX_DEPTH);
	struct json_object *o = NULL;
	enum json_tokener_error jerr;
	size_t end, i;
	int rc = -1;

	*out = NULL;
	if (len > (size_t)INT32_MAX || memchr(buf, '\0', len)) {
		snprintf(reason, rlen, "body contains a NUL byte");
		goto out;
	}
	if (lone_surrogate(buf, len)) {
		snprintf(reason, rlen, "body escapes half of a UTF-16 surrogate pair alone (\\uD800-\\uDFFF), which is no character");
		goto out;
	}
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	o = json_tokener_parse_ex(tok, buf, (int)len);
	jerr = json_tokener_get_error(tok);
	if (jerr == json_tokener_continue) {
		/* Numbers end only at the next byte: a bare number needs the end of input. */
		o = json_tokener_parse_ex(tok, "", 1);
		jerr = json_tokener_get_error(tok);
		end = len;
	} else {
		end = json_tokener_get_parse_end(tok);
	}
	if (!o || jerr != json_tokener_success) {
		snprintf(reason, rlen, "body is not valid JSON: %s",
			 jerr == json_tokener_error_depth ? "nested too deeply" : json_tokener_error_desc(jerr));
		json_object_put(o);
		o = NULL;
		goto out;
	}
	for (i = end; i < len; i++)
		if (!strchr(" \t\r\n", buf[i])) {
			snprintf(reason, rlen, "body has text after the JSON value");
			goto out;
		}
	*out = o;
	o = NULL;
	rc = 0;
out:
	json_object_put(o);
	json_tokener_free(tok);
	return rc;
}

static int key_cmp(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A copy of o with the keys of every object sorted; new reference. */
static struct json_object *sorted(struct json_object *o)
{
	struct json_object *copy;

	switch (json_object_get_type(o)) {
	case json_type_object: {
		size_t n = (size_t)json_object_object_length(o), i = 0;
		const char **keys = xcalloc(n, sizeof(*keys));

		json_object_object_foreach(o, k, v) {
			(void)v;
			keys[i++] = k;
		}
		qsort(keys, n, sizeof(*keys), key_cmp);
		copy = json_object_new_object();
		for (i = 0; i < n; i++)
			json_object_object_add(copy, keys[i], sorted(json_object_object_get(o, keys[i])));
		free(keys);
		return copy;
	}
	case json_type_array:
		copy = json_object_new_array();
		for (size_t i = 0; i < json_object_array_length(o); i++)
			json_object_array_add(copy, sorted(json_object_array_get_idx(o, i)));
		return copy;
	default:
		return json_object_get(o);
	}
}

char *jsonx_canonical(struct json_object *o)
{
	struct json_object *c;
	char *s;

	if (!o)
		return xstrdup("");
	c = sorted(o);
	s = xstrdup(json_object_to_json_string_ext(c, JSON_C_TO_STRING_PLAIN));
	json_object_put(c);
	return s;
}

const char *jsonx_str(struct json_object *o, const char *key)
{
	struct json_object *v;

	return o && json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string)
		       ? json_object_get_string(v)
		       : NULL;
}

struct json_object *jsonx_obj(struct json_object *o, const char *key)
{
	struct json_object *v;

	return o && json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_object) ? v : NULL;
}

int64_t jsonx_int(struct json_object *o, const char *key)
{
	struct json_object *v;

	return o && json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : 0;
}
