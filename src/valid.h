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
/* An address that can be mailed: one @, a dotted domain, printable ASCII without spaces or the
 * characters of header syntax (no SMTPUTF8: a server need not take anything else). */
bool email_valid(const char *s);
/* "Name <address>" or "address" into its parts; false when the address in it is not one
 * (local@domain as email_valid has it, a domain without a dot allowed: a sender may be
 * someone@localhost), or text follows its '>'. */
bool mailbox_split(const char *s, char *name, size_t nlen, char *addr, size_t alen);

#endif
