/* api.c - what the handlers share: body validation and paging parameters. */
#include "api.h"

#include <stdio.h>
#include <stdlib.h>

#include "util.h"
#include "valid.h"
#include "view.h"

int api_body(struct request *rq, struct response *rs, const struct field *fields)
{
	struct vfail f = {{0}, {0}};

	if (!rq->json) {
		response_invalid(rs, rq, "", "a JSON object body is required");
		return -1;
	}
	if (valid_object(rq->json, fields, &f)) {
		response_invalid(rs, rq, f.field, f.reason);
		return -1;
	}
	return 0;
}

int api_page(struct request *rq, struct response *rs, int def, int max, struct page_req *pg)
{
	char *limit = request_query(rq, "limit"), *end;
	long n = def;
	int rc = -1;

	pg->cursor = request_query(rq, "cursor");
	if (limit) {
		n = strtol(limit, &end, 10);
		if (!*limit || *end || n < 1 || n > max) {
			char reason[64];
			snprintf(reason, sizeof(reason), "must be an integer from 1 to %d", max);
			response_invalid(rs, rq, "limit", reason);
			goto out;
		}
	}
	pg->limit = (int)n;
	rc = 0;
out:
	free(limit);
	return rc;
}

void api_page_response(struct response *rs, const char *key, struct json_object *items, const char *next)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, key, items);
	json_object_object_add(o, "nextCursor", *next ? json_object_new_string(next) : NULL);
	response_json(rs, 200, o);
}

void api_page_error(struct response *rs, const struct request *rq, const struct err *e)
{
	/* The only invalid input the ledger reports on a list is a cursor it never gave. */
	if (e->kind == ERR_INVALID)
		response_invalid(rs, rq, "cursor", e->msg);
	else
		response_err(rs, rq, e);
}

static struct reply purchased(const struct subscription *s, const char *access_token, const char *trace_id)
{
	struct json_object *view = view_purchase(s, access_token, trace_id);
	struct reply r = {201, xstrdup(json_object_to_json_string_ext(view, JSON_C_TO_STRING_PLAIN |
									 JSON_C_TO_STRING_NOSLASHESCAPE))};

	json_object_put(view);
	return r;
}

static struct reply declined(const char *decline_code, const char *trace_id)
{
	struct json_object *d = json_object_new_object();
	struct reply r;

	json_object_object_add(d, "declineCode", json_object_new_string(decline_code));
	r.status = 402;
	r.body = error_body("PAYMENT_FAILED", "The payment was declined; the seat was given back", trace_id, d);
	return r;
}

static struct reply expired(const char *trace_id)
{
	struct reply r = {409, error_body("HOLD_EXPIRED",
					  "The seat hold expired before the payment finished; any charge is refunded",
					  trace_id, NULL)};
	return r;
}

const struct ledger_replies api_replies = {purchased, declined, expired};
