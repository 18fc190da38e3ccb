/* fuzz_body.c - libFuzzer target: a request body as a client sends it, through everything that
 * reads one before a handler acts: the strict JSON parser, the field tables of the routes that
 * take bodies (validation), and the canonical form behind an Idempotency-Key's fingerprint. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "api.h"
#include "idem.h"
#include "jsonx.h"
#include "valid.h"

/* The shapes of the bodies the routes take: strings, integers, ids, emails, enums, nested
 * objects and string arrays (as api_*.c's tables use them). */
static const char *const statuses[] = {"active", "inactive", NULL};
static const struct field fields[] = {
	{"planId", V_ID, false, 0, 0, NULL, NULL},
	{"quantity", V_INT, false, 1, 1000, NULL, NULL},
	{"customerId", V_ID, false, 0, 0, NULL, NULL},
	{"customer", V_OBJECT, false, 0, 0, NULL, api_customer_fields},
	{"paymentMethodId", V_STRING, false, 4, 100, NULL, NULL},
	{"max_per_customer", V_INT_NULL, false, 1, 1000000000LL, NULL, NULL},
	{"features", V_STRINGS, false, 0, 50, NULL, NULL},
	{"status", V_ENUM, false, 0, 0, statuses, NULL},
	{"waitlist_enabled", V_BOOL, false, 0, 0, NULL, NULL},
	{NULL, 0, false, 0, 0, NULL, NULL},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Every string a body that passed validation carries, nested ones included, is well-formed
 * UTF-8 (RFC 3629); and so is the field a refusal names, which goes back to the client. */
static void assert_text(struct json_object *o)
{
	switch (json_object_get_type(o)) {
	case json_type_string:
		if (!utf8_valid(json_object_get_string(o), (size_t)json_object_get_string_len(o)))
			__builtin_trap();
		break;
	case json_type_array:
		for (size_t i = 0; i < json_object_array_length(o); i++)
			assert_text(json_object_array_get_idx(o, i));
		break;
	case json_type_object: {
		json_object_object_foreach(o, k, v) {
			if (!utf8_valid(k, strlen(k)))
				__builtin_trap();
			assert_text(v);
		}
		break;
	}
	default:
		break;
	}
}

static void validate(struct json_object *o, const struct field *table)
{
	struct vfail f;

	if (valid_object(o, table, &f) == 0)
		assert_text(o);
	else if (!utf8_valid(f.field, strlen(f.field)) || !utf8_valid(f.reason, strlen(f.reason)))
		__builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct json_object *o = NULL;
	char reason[160], fp[65];

	if (jsonx_parse((const char *)data, size, &o, reason, sizeof(reason)) == 0 && o) {
		validate(o, fields);
		validate(o, api_customer_fields);
		idem_fingerprint("POST", "/api/subscriptions/purchase", o, fp);
	}
	json_object_put(o);
	return 0;
}
