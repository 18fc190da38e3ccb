/* valid.c - checking a JSON request body against a table of the fields it may have. */
#include "valid.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ids.h"

static int fail(struct vfail *f, const char *prefix, const char *name, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int fail(struct vfail *f, const char *prefix, const char *name, const char *fmt, ...)
{
	va_list ap;

	snprintf(f->field, sizeof(f->field), "%s%s", prefix, name);
	/* a long name is cut at a whole character: the answer stays valid UTF-8 */
	for (size_t n = strlen(f->field); n > 0 && !utf8_valid(f->field, n); n--)
		f->field[n - 1] = '\0';
	va_start(ap, fmt);
	vsnprintf(f->reason, sizeof(f->reason), fmt, ap);
	va_end(ap);
	return -1;
}

bool utf8_valid(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s, *end = p + len;

	/* RFC 3629's well-formed sequences (Unicode's table 3-7): no overlong form, no surrogate,
	 * nothing past U+10FFFF */
	while (p < end) {
		unsigned char c = *p;
		size_t n;
		unsigned char lo = 0x80, hi = 0xbf;

		if (c < 0x80) {
			p++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf)
			n = 1;
		else if (c >= 0xe0 && c <= 0xef)
			n = 2, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
		else if (c >= 0xf0 && c <= 0xf4)
			n = 3, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
		else
			return false;
		if ((size_t)(end - p) <= n || p[1] < lo || p[1] > hi)
			return false;
		for (size_t i = 2; i <= n; i++)
			if ((p[i] & 0xc0) != 0x80)
				return false;
		p += n + 1;
	}
	return true;
}

size_t utf8_length(const char *s)
{
	size_t n = 0;

	for (; *s; s++)
		if (((unsigned char)*s & 0xc0) != 0x80)
			n++;
	return n;
}

/* local@domain in printable ASCII, nothing of header syntax in it */
static bool address_ok(const char *s)
{
	const char *at = strchr(s, '@');
	size_t len = strlen(s);

	if (len < 3 || len > 254 || !at || at == s || !at[1] || strchr(at + 1, '@'))
		return false;
	for (; *s; s++)
		if ((unsigned char)*s <= ' ' || (unsigned char)*s > '~' || strchr("<>\",;()[]\\", *s))
			return false;
	return true;
}

bool email_valid(const char *s)
{
	const char *at = strchr(s, '@');
	size_t len = strlen(s);

	return address_ok(s) && strchr(at + 1, '.') && at[1] != '.' && s[len - 1] != '.';
}

bool mailbox_split(const char *s, char *name, size_t nlen, char *addr, size_t alen)
{
	const char *lt = strchr(s, '<'), *gt = lt ? strchr(lt, '>') : NULL;

	if (!lt) {
		snprintf(name, nlen, "%s", "");
		if ((size_t)snprintf(addr, alen, "%s", s) >= alen)
			return false;
	} else {
		if (!gt || gt[1])
			return false;
		size_t k = (size_t)(lt - s);
		while (k > 0 && s[k - 1] == ' ')
			k--;
		if ((size_t)snprintf(name, nlen, "%.*s", (int)k, s) >= nlen ||
		    (size_t)snprintf(addr, alen, "%.*s", (int)(gt - lt - 1), lt + 1) >= alen)
			return false;
	}
	return address_ok(addr);
}

/* Text a person can read: no NUL hidden by \u0000, no control characters. */
static const char *text_problem(struct json_object *v)
{
	const char *s = json_object_get_string(v);
	size_t len = (size_t)json_object_get_string_len(v);

	if (strlen(s) != len)
		return "must not contain NUL characters";
	if (!utf8_valid(s, len))
		return "must be valid UTF-8";
	for (; *s; s++)
		if ((unsigned char)*s < ' ' && *s != '\t')
			return "must not contain control characters";
	return NULL;
}

static int check_string(struct json_object *v, int64_t min, int64_t max, const char *prefix,
			const char *name, struct vfail *f)
{
	const char *problem;
	size_t n;

	if (!json_object_is_type(v, json_type_string))
		return fail(f, prefix, name, "must be a string");
	if ((problem = text_problem(v)))
		return fail(f, prefix, name, "%s", problem);
	n = utf8_length(json_object_get_string(v));
	if ((int64_t)n < min || (int64_t)n > max)
		return fail(f, prefix, name, "must be %lld to %lld characters long", (long long)min, (long long)max);
	if (min > 0 && strspn(json_object_get_string(v), " \t") == (size_t)json_object_get_string_len(v))
		return fail(f, prefix, name, "must not be blank");
	return 0;
}

static int check_field(struct json_object *v, const struct field *fd, const char *prefix, struct vfail *f);

static int check_object(struct json_object *o, const struct field *fields, const char *prefix,
			struct vfail *f)
{
	const struct field *fd;

	if (!json_object_is_type(o, json_type_object))
		return fail(f, prefix, "", "must be a JSON object");
	json_object_object_foreach(o, key, val) {
		for (fd = fields; fd->name && strcmp(fd->name, key); fd++)
			;
		if (!fd->name && !utf8_valid(key, strlen(key)))
			return fail(f, prefix, "", "has a field name that is not valid UTF-8");
		if (!fd->name)
			return fail(f, prefix, key, "is not a known field");
		if (check_field(val, fd, prefix, f))
			return -1;
	}
	for (fd = fields; fd->name; fd++)
		if (fd->required && !json_object_object_get_ex(o, fd->name, NULL))
			return fail(f, prefix, fd->name, "is required");
	return 0;
}

static int check_field(struct json_object *v, const struct field *fd, const char *prefix, struct vfail *f)
{
	char sub_prefix[64];

	switch (fd->type) {
	case V_STRING:
		return check_string(v, fd->min, fd->max, prefix, fd->name, f);
	case V_INT_NULL:
		if (json_object_is_type(v, json_type_null))
			return 0;
		/* fall through */
	case V_INT: {
		int64_t n;
		if (!json_object_is_type(v, json_type_int))
			return fail(f, prefix, fd->name, "must be an integer");
		n = json_object_get_int64(v);
		if (n < fd->min || n > fd->max)
			return fail(f, prefix, fd->name, "must be from %lld to %lld", (long long)fd->min,
				    (long long)fd->max);
		return 0;
	}
	case V_BOOL:
		if (!json_object_is_type(v, json_type_boolean))
			return fail(f, prefix, fd->name, "must be true or false");
		return 0;
	case V_STRINGS:
		if (!json_object_is_type(v, json_type_array))
			return fail(f, prefix, fd->name, "must be an array of strings");
		if ((int64_t)json_object_array_length(v) > fd->max)
			return fail(f, prefix, fd->name, "must have at most %lld items", (long long)fd->max);
		for (size_t i = 0; i < json_object_array_length(v); i++)
			if (check_string(json_object_array_get_idx(v, i), 1, 100, prefix, fd->name, f))
				return -1;
		return 0;
	case V_ID:
		if (!json_object_is_type(v, json_type_string))
			return fail(f, prefix, fd->name, "must be a string");
		if (!id_valid(json_object_get_string(v)))
			return fail(f, prefix, fd->name, "must be a 24-character hex id");
		return 0;
	case V_EMAIL:
		if (!json_object_is_type(v, json_type_string))
			return fail(f, prefix, fd->name, "must be a string");
		if (text_problem(v) || !email_valid(json_object_get_string(v)))
			return fail(f, prefix, fd->name, "must be an email address");
		return 0;
	case V_ENUM: {
		char list[96] = "";
		if (json_object_is_type(v, json_type_string))
			for (const char *const *c = fd->choices; *c; c++)
				if (!strcmp(*c, json_object_get_string(v)))
					return 0;
		for (const char *const *c = fd->choices; *c; c++)
			snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
				 c == fd->choices ? "" : ", ", *c);
		return fail(f, prefix, fd->name, "must be one of: %s", list);
	}
	case V_OBJECT:
		snprintf(sub_prefix, sizeof(sub_prefix), "%s%s.", prefix, fd->name);
		return check_object(v, fd->sub, sub_prefix, f);
	}
	return fail(f, prefix, fd->name, "has an unknown type");
}

int valid_object(struct json_object *o, const struct field *fields, struct vfail *f)
{
	return check_object(o, fields, "", f);
}
