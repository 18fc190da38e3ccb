/* valid.h - checking a JSON request body against a table of the fields it may have. */
#ifndef NUMATIX_VALID_H
#define NUMATIX_VALID_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum vtype {
	V_STRING,    /* UTF-8 text, min..max characters, no NUL or control characters */
	V_INT,       /* an integer (not a float or a string), min..max */
	V_INT_NULL,  /* a V_INT, or null */
	V_STRINGS,   /* an array of at most max V_STRING items of 1..100 characters */
	V_ID,        /* a 24-hex-digit resource id */
	V_EMAIL,     /* an email address, at most 254 characters */
	V_ENUM,      /* one of choices */
	V_OBJECT,    /* an object checked against sub */
	V_BOOL,      /* true or false */
};

struct field {
	const char *name;
	enum vtype type;
	bool required;
	int64_t min, max;
	const char *const *choices;     /* V_ENUM, NULL terminated */
	const struct field *sub;        /* V_OBJECT, ended by a field with a NULL name */
};

struct vfail {
	char field[64];
	char reason[160];
};

/* Checks that o is an object with only the listed fields, each of its type and within its
 * bounds, and every required one present. Returns 0, or -1 with f filled. */
int valid_object(struct json_object *o, const struct field *fields, struct vfail *f);
/* Whether the len bytes at s are well-formed UTF-8 (RFC 3629). */
bool utf8_valid(const char *s, size_t len);
/* Number of UTF-8 characters in s (s is valid UTF-8). */
size_t utf8_length(const char *s);
bool email_valid(const char *s);

#endif
