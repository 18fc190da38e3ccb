/* jsonx.c - strict parsing of request bodies and the canonical form used in fingerprints. */
#include "jsonx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

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
