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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct json_object *o = NULL;
	struct vfail f;
	char reason[160], fp[65];

	if (jsonx_parse((const char *)data, size, &o, reason, sizeof(reason)) == 0 && o) {
		valid_object(o, fields, &f);
		valid_object(o, api_customer_fields, &f);
		idem_fingerprint("POST", "/api/subscriptions/purchase", o, fp);
	}
	json_object_put(o);
	return 0;
}
