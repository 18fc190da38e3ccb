/* jsonx.h - strict parsing of request bodies and the canonical form used in fingerprints. */
#ifndef NUMATIX_JSONX_H
#define NUMATIX_JSONX_H

#include <json-c/json.h>
#include <stddef.h>

#define JSONX_MAX_DEPTH 16

/* Parses exactly len bytes as one strict JSON value (UTF-8 checked, nesting at most
 * JSONX_MAX_DEPTH, nothing after it). Returns 0 with *out new (json_object_put), or -1 with
 * a reason for people in reason. */
int jsonx_parse(const char *buf, size_t len, struct json_object **out, char *reason, size_t rlen);

/* The canonical text of o: object keys sorted at every depth, no whitespace, so two bodies
 * that mean the same give the same text. New, free(). NULL o gives "". */
char *jsonx_canonical(struct json_object *o);

#endif
