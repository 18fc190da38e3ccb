/* http.c - one request and its response, independent of how they travel (FastCGI or CGI). */
#include "http.h"

#include <fcgiapp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ids.h"
#include "trace.h"
#include "util.h"

static char *param_dup(char **envp, const char *name)
{
	const char *v = FCGX_GetParam(name, envp);
	return v ? xstrdup(v) : NULL;
}

void request_init(struct request *rq, char **envp)
{
	const char *uri, *v;

	memset(rq, 0, sizeof(*rq));
	rq->content_length = -1;
	rq->method = param_dup(envp, "REQUEST_METHOD");
	if (!rq->method)
		rq->method = xstrdup("GET");
	/* Under a cgi-bin the route follows the script name in PATH_INFO; behind nginx the
	 * normalised DOCUMENT_URI, else the raw REQUEST_URI up to its query, names it. */
	if ((v = FCGX_GetParam("PATH_INFO", envp)) && *v)
		rq->path = xstrdup(v);
	else if ((v = FCGX_GetParam("DOCUMENT_URI", envp)) && *v)
		rq->path = xstrdup(v);
	else if ((uri = FCGX_GetParam("REQUEST_URI", envp)) && *uri)
		rq->path = xstrndup(uri, strcspn(uri, "?"));
	else
		rq->path = xstrdup("/");
	v = FCGX_GetParam("QUERY_STRING", envp);
	rq->query = xstrdup(v ? v : "");
	rq->idem_key = param_dup(envp, "HTTP_IDEMPOTENCY_KEY");
	rq->authorization = param_dup(envp, "HTTP_AUTHORIZATION");
	rq->remote_addr = param_dup(envp, "REMOTE_ADDR");
	rq->origin = param_dup(envp, "HTTP_ORIGIN");
	rq->stripe_signature = param_dup(envp, "HTTP_STRIPE_SIGNATURE");
	rq->cors_request_method = param_dup(envp, "HTTP_ACCESS_CONTROL_REQUEST_METHOD");
	if ((v = FCGX_GetParam("CONTENT_LENGTH", envp)) && *v) {
		char *end;
		long n = strtol(v, &end, 10);
		rq->content_length = (*end || n < 0) ? -1 : n;
	}
	snprintf(rq->trace_flags, sizeof(rq->trace_flags), "01");   /* a trace of ours: recorded (sampled) */
	if (traceparent_parse(FCGX_GetParam("HTTP_TRACEPARENT", envp), rq->trace_id, rq->trace_flags)) {
		if ((v = FCGX_GetParam("HTTP_TRACESTATE", envp)) && tracestate_valid(v))
			rq->tracestate = xstrdup(v);
	} else if ((v = FCGX_GetParam("HTTP_X_TRACE_ID", envp)) && trace_id_valid(v)) {
		snprintf(rq->trace_id, sizeof(rq->trace_id), "%s", v);
	} else if ((v = FCGX_GetParam("REQUEST_ID", envp)) && trace_id_valid(v)) {
		snprintf(rq->trace_id, sizeof(rq->trace_id), "%s", v);
	} else {
		span_new(rq->trace_id);
		span_new(rq->trace_id + SPAN_ID_LEN);
	}
	span_new(rq->span_id);
}

void request_free(struct request *rq)
{
	free(rq->tracestate);
	free(rq->method);
	free(rq->path);
	free(rq->query);
	free(rq->idem_key);
	free(rq->origin);
	free(rq->stripe_signature);
	free(rq->cors_request_method);
	free(rq->authorization);
	free(rq->remote_addr);
	free(rq->body);
	if (rq->json)
		json_object_put(rq->json);
	memset(rq, 0, sizeof(*rq));
}

void response_free(struct response *rs)
{
	free(rs->body);
	memset(rs, 0, sizeof(*rs));
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes n bytes of application/x-www-form-urlencoded text; new, free(). */
static char *url_decode(const char *s, size_t n)
{
	char *out = xmalloc(n + 1), *o = out;

	for (size_t i = 0; i < n; i++) {
		if (s[i] == '+') {
			*o++ = ' ';
		} else if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
			int c = hexval(s[i + 1]) * 16 + hexval(s[i + 2]);
			/* A NUL would cut the value short: keep it visible so validation rejects it. */
			*o++ = c ? (char)c : '?';
			i += 2;
		} else {
			*o++ = s[i];
		}
	}
	*o = '\0';
	return out;
}

char *request_query(const struct request *rq, const char *name)
{
	size_t nlen = strlen(name);
	const char *p = rq->query;

	while (p && *p) {
		size_t len = strcspn(p, "&");
		const char *eq = memchr(p, '=', len);
		size_t klen = eq ? (size_t)(eq - p) : len;

		if (klen == nlen && !memcmp(p, name, nlen))
			return eq ? url_decode(eq + 1, len - klen - 1) : xstrdup("");
		p += len;
		if (*p == '&')
			p++;
	}
	return NULL;
}

void response_json(struct response *rs, int status, struct json_object *o)
{
	free(rs->body);
	rs->status = status;
	rs->body = xstrdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
}

char *error_body(const char *code, const char *message, const char *trace_id,
		 struct json_object *details)
{
	struct json_object *o = json_object_new_object();
	char *s;

	json_object_object_add(o, "code", json_object_new_string(code));
	json_object_object_add(o, "message", json_object_new_string(message));
	json_object_object_add(o, "traceId", json_object_new_string(trace_id));
	if (details)
		json_object_object_add(o, "details", details);
	s = xstrdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
	return s;
}

void response_error(struct response *rs, const struct request *rq, int status, const char *code,
		    const char *message, struct json_object *details)
{
	free(rs->body);
	rs->status = status;
	rs->body = error_body(code, message, rq->trace_id, details);
	if (status == 503 && !rs->retry_after)
		rs->retry_after = 1;
}

/* Status and message of each error code a lower layer reports. */
static const struct {
	const char *code;
	int status;
	const char *message;
} codes[] = {
	{"PLAN_NOT_FOUND", 404, "Plan not found"},
	{"PLAN_INACTIVE", 409, "Plan is not on sale"},
	{"PLAN_SOLD_OUT", 409, "Plan is sold out"},
	{"PLAN_NAME_TAKEN", 409, "A plan with this name exists already"},
	{"CAPACITY_BELOW_SOLD", 409, "Capacity cannot go below the seats sold or held"},
	{"CUSTOMER_NOT_FOUND", 404, "Customer not found"},
	{"CUSTOMER_EXISTS", 409, "A customer with this email exists already"},
	{"SUBSCRIPTION_NOT_FOUND", 404, "Subscription not found"},
	{"ALREADY_CANCELLED", 409, "Subscription is cancelled already"},
	{"SUBSCRIPTION_NOT_ACTIVE", 409, "The subscription is not active"},
	{"SUBSCRIPTION_ENDED", 409, "The subscription's period has ended"},
	{"NOT_SCHEDULED", 409, "The subscription has no end scheduled to resume from"},
	{"HOLD_EXPIRED", 409, "The seat hold expired before the payment finished; any charge is refunded"},
	{"VALIDATION_ERROR", 400, "The request is not valid"},
	{"CUSTOMER_LIMIT_REACHED", 409, "The customer holds as many seats of this plan as it allows"},
	{"SESSION_NOT_FOUND", 404, "Checkout session not found"},
	{"SESSION_EXPIRED", 409, "The checkout session expired; any charge is refunded"},
	{"SESSION_COMPLETED", 409, "The checkout session is completed already"},
	{"NO_PAYMENT_TO_AUTHENTICATE", 409, "No payment of this session waits for the buyer (or the processor is not the simulated one)"},
	{"WEBHOOK_ENDPOINT_NOT_FOUND", 404, "Webhook endpoint not found"},
	{"WAITLIST_DISABLED", 409, "The plan has no waiting list"},
	{"SEATS_AVAILABLE", 409, "Seats are available: buy instead of waiting"},
	{"ALREADY_WAITING", 409, "The customer is in this plan's waiting list already"},
	{"ENTRY_NOT_FOUND", 404, "Waiting-list entry not found"},
	{"ENTRY_NOT_LIVE", 409, "The entry is no longer waiting or offered"},
	{"WEBHOOK_LIMIT_REACHED", 409, "As many webhook endpoints exist as the service keeps"},
	{"REPLAY_UNAVAILABLE", 409, "The answer kept on this Idempotency-Key was sealed under an earlier admin token and cannot be replayed"},
};

void response_err(struct response *rs, const struct request *rq, const struct err *e)
{
	switch (e->kind) {
	case ERR_RETRYABLE:
	case ERR_UNAVAILABLE:
		response_error(rs, rq, 503, "SERVICE_UNAVAILABLE",
			       "The service is busy or its store is unreachable; retry shortly", NULL);
		return;
	case ERR_NOT_FOUND:
	case ERR_CONFLICT:
	case ERR_INVALID:
		for (size_t i = 0; e->code && i < sizeof(codes) / sizeof(codes[0]); i++)
			if (!strcmp(codes[i].code, e->code)) {
				response_error(rs, rq, codes[i].status, codes[i].code, codes[i].message,
					       *e->details ? json_tokener_parse(e->details) : NULL);
				return;
			}
		break;
	default:
		break;
	}
	response_error(rs, rq, 500, "INTERNAL", "Internal error", NULL);
}

void response_reply(struct response *rs, const struct reply *r, bool replayed)
{
	free(rs->body);
	rs->status = r->status;
	rs->body = xstrdup(r->body ? r->body : "{}");
	rs->replayed = replayed;
}

void response_key_busy(struct response *rs, const struct request *rq, int retry_after_s)
{
	response_error(rs, rq, 409, "REQUEST_IN_PROGRESS",
		       "A request with this Idempotency-Key is still running; retry later", NULL);
	rs->retry_after = retry_after_s;
}

void response_key_reused(struct response *rs, const struct request *rq)
{
	response_error(rs, rq, 422, "IDEMPOTENCY_KEY_REUSED", "This Idempotency-Key was used for a different request",
		       NULL);
}

int request_idem_key(struct request *rq, struct response *rs, bool required)
{
	if (!rq->idem_key) {
		if (!required)
			return 0;
		response_error(rs, rq, 400, "MISSING_IDEMPOTENCY_KEY", "The Idempotency-Key header is required", NULL);
		return -1;
	}
	if (!uuid_valid(rq->idem_key)) {
		response_error(rs, rq, 400, "INVALID_IDEMPOTENCY_KEY", "The Idempotency-Key header must be a UUID", NULL);
		return -1;
	}
	/* Keys compare in one case: a client that upper-cases a UUID means the same key. */
	for (char *c = rq->idem_key; *c; c++)
		if (*c >= 'A' && *c <= 'F')
			*c = (char)(*c - 'A' + 'a');
	return 0;
}

void response_invalid(struct response *rs, const struct request *rq, const char *field,
		      const char *reason)
{
	struct json_object *d = json_object_new_object();
	char *msg = xasprintf("%s%s%s", field && *field ? field : "", field && *field ? ": " : "", reason);

	json_object_object_add(d, "field", json_object_new_string(field ? field : ""));
	json_object_object_add(d, "reason", json_object_new_string(reason));
	response_error(rs, rq, 400, "VALIDATION_ERROR", msg, d);
	free(msg);
}

static const char *reason_phrase(int status)
{
	switch (status) {
	case 200: return "OK";
	case 201: return "Created";
	case 204: return "No Content";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 402: return "Payment Required";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 409: return "Conflict";
	case 413: return "Payload Too Large";
	case 415: return "Unsupported Media Type";
	case 422: return "Unprocessable Content";
	case 503: return "Service Unavailable";
	default: return "Internal Server Error";
	}
}

/* The CORS headers (Fetch standard): on an allowed origin's request, which response headers
 * its page may read; on its preflight, which methods and request headers it may send. */
static void cors_head(const struct response *rs, char *out, size_t len)
{
	*out = '\0';
	if (!rs->cors_origin)
		return;
	if (rs->cors_preflight)
		snprintf(out, len,
			 "Access-Control-Allow-Origin: %s\r\nVary: Origin\r\n"
			 "Access-Control-Allow-Methods: %s\r\n"
			 "Access-Control-Allow-Headers: Authorization, Content-Type, Idempotency-Key, X-Trace-Id, traceparent, tracestate\r\n"
			 "Access-Control-Max-Age: 600\r\n",
			 rs->cors_origin, rs->allow);
	else
		snprintf(out, len,
			 "Access-Control-Allow-Origin: %s\r\nVary: Origin\r\n"
			 "Access-Control-Expose-Headers: X-Trace-Id, Retry-After, Idempotent-Replayed, traceparent\r\n",
			 rs->cors_origin);
}

char *response_head(const struct response *rs, const struct request *rq)
{
	char retry[32] = "", allow[96] = "", cors[512], parent[TRACEPARENT_LEN + 1], trace[TRACESTATE_MAX + 128];

	if (rs->retry_after > 0)
		snprintf(retry, sizeof(retry), "Retry-After: %d\r\n", rs->retry_after);
	if (*rs->allow)
		snprintf(allow, sizeof(allow), "Allow: %s\r\n", rs->allow);
	cors_head(rs, cors, sizeof(cors));
	/* the request's span, for the caller to tie its own to ours */
	traceparent_format(rq->trace_id, rq->span_id, rq->trace_flags, parent);
	snprintf(trace, sizeof(trace), "traceparent: %s\r\n%s%s%s", parent, rq->tracestate ? "tracestate: " : "",
		 rq->tracestate ? rq->tracestate : "", rq->tracestate ? "\r\n" : "");
	if (rs->status == 204)
		return xasprintf("Status: 204 No Content\r\nCache-Control: no-store\r\nX-Trace-Id: %s\r\n%s%s%s\r\n",
				 rq->trace_id, trace, allow, cors);
	/* the length of the body, which a HEAD answer names without sending */
	return xasprintf("Status: %d %s\r\n"
			 "Content-Type: %s\r\n"
			 "Content-Length: %zu\r\n"
			 "Cache-Control: no-store\r\n"
			 "X-Trace-Id: %s\r\n"
			 "%s%s%s%s%s\r\n",
			 rs->status, reason_phrase(rs->status),
			 rs->content_type ? rs->content_type : "application/json; charset=utf-8",
			 rs->body ? strlen(rs->body) : 0, rq->trace_id, trace, retry, allow,
			 rs->replayed ? "Idempotent-Replayed: true\r\n" : "", cors);
}
