/* jsonx.h - strict parsing of request bodies and the canonical form used in fingerprints. */
#ifndef NUMATIX_JSONX_H
#define NUMATIX_JSONX_H

#include <json-c/json.h>
#include <stddef.h>
#include <stdint.h>

#define JSONX_MAX_DEPTH 16

/* Parses exactly len bytes as one strict JSON value (UTF-8 checked, nesting at most
 * JSONX_MAX_DEPTH, nothing after it). Returns 0 with *out new (json_object_put), or -1 with
 * a reason for people in reason. */
int jsonx_parse(const char *buf, size_t len, struct json_object **out, char *reason, size_t rlen);

/* The canonical text of o: object keys sorted at every depth, no whitespace, so two bodies
 * that mean the same give the same text. New, free(). NULL o gives "". */
char *jsonx_canonical(struct json_object *o);
/* A member of object o, when it is of the type asked (NULL o allowed): a string (borrowed) or
 * NULL, an object or NULL, an integer or 0. */
const char *jsonx_str(struct json_object *o, const char *key);
struct json_object *jsonx_obj(struct json_object *o, const char *key);
int64_t jsonx_int(struct json_object *o, const char *key);

#endif
