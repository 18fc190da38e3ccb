/* api.c - what the handlers share: body validation and paging parameters. */
#include "api.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idem.h"
#include "log.h"
#include "purchase.h"
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

int api_query_int(struct request *rq, struct response *rs, const char *key, int64_t lo, int64_t hi, int64_t def,
		  int64_t *out)
{
	char *v = request_query(rq, key), *end;
	long long n = def;
	int rc = 0;

	if (v) {
		errno = 0;
		n = strtoll(v, &end, 10);
		if (!*v || *end || errno || n < lo || n > hi || !isdigit((unsigned char)*v)) {
			char reason[80];
			if (hi == INT64_MAX)
				snprintf(reason, sizeof(reason), "must be an integer of at least %" PRId64, lo);
			else
				snprintf(reason, sizeof(reason), "must be an integer from %" PRId64 " to %" PRId64, lo, hi);
			response_invalid(rs, rq, key, reason);
			rc = -1;
		}
	}
	*out = n;
	free(v);
	return rc;
}

int api_page(struct request *rq, struct response *rs, int def, int max, struct page_req *pg)
{
	int64_t n;

	pg->cursor = request_query(rq, "cursor");
	if (api_query_int(rq, rs, "limit", 1, max, def, &n))
		return -1;
	pg->limit = (int)n;
	return 0;
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

const struct field api_customer_fields[] = {
	{"email", V_EMAIL, true, 0, 0, NULL, NULL},
	{"name", V_STRING, true, 1, 100, NULL, NULL},
	{NULL, 0, false, 0, 0, NULL, NULL},
};

int api_keyed_body(struct request *rq, struct response *rs, const struct field *fields)
{
	/* A missing key is reported first: it is about the request as a whole. */
	if (!rq->idem_key) {
		request_idem_key(rq, rs, true);
		return -1;
	}
	return api_body(rq, rs, fields) || request_idem_key(rq, rs, true) ? -1 : 0;
}

int64_t api_int(struct request *rq, const char *key, int64_t def)
{
	struct json_object *v;

	return json_object_object_get_ex(rq->json, key, &v) ? json_object_get_int64(v) : def;
}

const char *api_str(struct request *rq, const char *key, const char *sub)
{
	struct json_object *v = NULL;

	json_object_object_get_ex(rq->json, key, &v);
	if (v && sub)
		json_object_object_get_ex(v, sub, &v);
	return v ? json_object_get_string(v) : NULL;
}

int api_payment_method(struct request *rq, struct response *rs, const char *method)
{
	if (strncmp(method, "pm_", 3)) {
		response_invalid(rs, rq, "paymentMethodId", "must be a payment method id (pm_...)");
		return -1;
	}
	return 0;
}

int api_customer_given(struct request *rq, struct response *rs)
{
	if (!api_str(rq, "customerId", NULL) == !api_str(rq, "customer", NULL)) {
		response_invalid(rs, rq, "customerId", "give either customerId or customer, not both or neither");
		return -1;
	}
	return 0;
}

void api_purchase_answer(struct request *rq, struct response *rs, const struct purchase_result *r)
{
	switch (r->end) {
	case PURCHASE_ANSWERED:
		response_reply(rs, &r->reply, r->replayed);
		break;
	case PURCHASE_REFUSED:
		response_err(rs, rq, &r->err);
		break;
	case PURCHASE_IN_PROGRESS:
		response_key_busy(rs, rq, r->retry_after_s);
		break;
	case PURCHASE_KEY_REUSED:
		response_key_reused(rs, rq);
		break;
	}
}

int api_idem_begin(struct request *rq, struct response *rs)
{
	struct idem_claim c;
	struct err e = {0};
	char fp[65];

	idem_fingerprint(rq->method, rq->path, rq->json, fp);
	if (idem_claim(rq->lg, rq->idem_key, fp, &c, &e)) {
		LOG_WARN(rq->trace_id, "claiming key %s: %s", rq->idem_key, e.msg);
		response_err(rs, rq, &e);
		return 0;
	}
	switch (c.outcome) {
	case IDEM_RUN:
		break;
	case IDEM_REPLAY:
		response_reply(rs, &c.reply, true);
		break;
	case IDEM_IN_PROGRESS:
		response_key_busy(rs, rq, c.retry_after_s);
		break;
	case IDEM_REUSED:
		response_key_reused(rs, rq);
		break;
	}
	idem_claim_clear(&c);
	return rs->status == 0;
}

static struct reply purchased(const struct subscription *s, const char *access_token, const char *trace_id)
{
	struct json_object *view = view_purchase(s, access_token, trace_id);
	struct reply r = {201, xstrdup(json_object_to_json_string_ext(view, JSON_C_TO_STRING_PLAIN |
									 JSON_C_TO_STRING_NOSLASHESCAPE))};

	json_object_put(view);
	return r;
}

static struct reply declined(const char *decline_code, bool kept, const char *trace_id)
{
	struct json_object *d = json_object_new_object();
	struct reply r;

	json_object_object_add(d, "declineCode", json_object_new_string(decline_code));
	r.status = 402;
	r.body = error_body("PAYMENT_FAILED", kept ? "The payment was declined; the seats stay held until the session "
				"expires, for another payment method" : "The payment was declined; the seat was given back",
			    trace_id, d);
	return r;
}

static struct reply session(const struct subscription *s, const char *client_secret, const char *trace_id)
{
	struct json_object *view = view_session(s);
	struct reply r;

	(void)trace_id;
	json_object_object_add(view, "clientSecret", json_object_new_string(client_secret));
	r.status = 201;
	r.body = xstrdup(json_object_to_json_string_ext(view, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(view);
	return r;
}

static struct reply refused(const char *code, const char *trace_id)
{
	struct reply r = {409, NULL};

	r.body = error_body(code, !strcmp(code, "SESSION_COMPLETED") ? "The checkout session is completed already" :
			    !strcmp(code, "SUBSCRIPTION_NOT_ACTIVE") ? "Only an active subscription changes plan" :
			    !strcmp(code, "SUBSCRIPTION_ENDED") ? "The subscription's period has ended" :
			    "The checkout session expired; any charge is refunded", trace_id, NULL);
	return r;
}

static struct reply invalid(const char *field, const char *reason, const char *trace_id)
{
	struct json_object *d = json_object_new_object();
	struct reply r = {400, NULL};
	char *msg = xasprintf("%s: %s", field, reason);

	json_object_object_add(d, "field", json_object_new_string(field));
	json_object_object_add(d, "reason", json_object_new_string(reason));
	r.body = error_body("VALIDATION_ERROR", msg, trace_id, d);
	free(msg);
	return r;
}

static struct reply changed(const struct subscription *s, const char *access_token, const char *trace_id)
{
	struct reply r = purchased(s, access_token, trace_id);

	r.status = 200;
	return r;
}

static struct reply expired(const char *trace_id)
{
	struct reply r = {409, error_body("HOLD_EXPIRED",
					  "The seat hold expired before the payment finished; any charge is refunded",
					  trace_id, NULL)};
	return r;
}

static struct reply action_required(const char *session_id, const char *client_secret, const char *intent_secret,
				    const char *trace_id)
{
	struct json_object *d = json_object_new_object();
	struct reply r;

	json_object_object_add(d, "checkoutSessionId", json_object_new_string(session_id));
	if (client_secret)
		json_object_object_add(d, "clientSecret", json_object_new_string(client_secret));
	if (intent_secret)
		json_object_object_add(d, "paymentIntentClientSecret", json_object_new_string(intent_secret));
	r.status = 402;
	r.body = error_body("PAYMENT_ACTION_REQUIRED", "The bank asks the buyer to authenticate this payment; the "
			    "seats stay held as the checkout session until it expires", trace_id, d);
	return r;
}

const struct ledger_replies api_replies = {purchased, declined, expired, session, refused, invalid, changed,
					   action_required};
