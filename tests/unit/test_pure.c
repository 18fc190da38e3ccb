/* test_pure.c - unit tests of the pure parts: validation, JSON parsing and canonical form,
 * fingerprints, ids and tokens, routing, query strings and the JSON envelopes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "http.h"
#include "idem.h"
#include "ids.h"
#include "jsonx.h"
#include "mailer.h"
#include "period.h"
#include "router.h"
#include "seal.h"
#include "trace.h"
#include "valid.h"
#include "webhook.h"

static struct json_object *parse(const char *s)
{
	struct json_object *o = NULL;
	char reason[160];

	assert_int_equal(jsonx_parse(s, strlen(s), &o, reason, sizeof(reason)), 0);
	return o;
}

static void parse_fails(const char *s, size_t len, const char *reason_part)
{
	struct json_object *o = NULL;
	char reason[160] = "";

	assert_int_equal(jsonx_parse(s, len, &o, reason, sizeof(reason)), -1);
	assert_null(o);
	assert_non_null(strstr(reason, reason_part));
}

static void test_jsonx_parse(void **state)
{
	struct json_object *o;
	char deep[200];

	(void)state;
	o = parse(" {\"a\": [1, 2]} \n");
	assert_true(json_object_is_type(o, json_type_object));
	json_object_put(o);
	o = parse("42");
	assert_int_equal(json_object_get_int(o), 42);
	json_object_put(o);
	parse_fails("{", 1, "not valid JSON");
	parse_fails("{} {}", 5, "JSON");
	parse_fails("{} x", 4, "JSON");
	parse_fails("{\"a\":1,}", 8, "not valid JSON");
	parse_fails("{\"a\":'x'}", 9, "not valid JSON");
	parse_fails("{\"a\":\"\xc3\x28\"}", 10, "not valid JSON");
	parse_fails("{\"a\":1}\0", 8, "NUL");
	parse_fails("", 0, "not valid JSON");
	/* half a surrogate pair escaped alone is no character (json-c would read U+FFFD) */
	parse_fails("{\"a\":\"x\\ud800\"}", 14, "surrogate");
	parse_fails("{\"a\":\"\\udc00\"}", 13, "surrogate");
	parse_fails("{\"a\":\"\\ud800\\u0041\"}", 19, "surrogate");
	parse_fails("{\"\\udbff\":1}", 12, "surrogate");
	o = parse("{\"a\":\"\\ud83c\\udf9f \\\\ud800 \\u00e9\"}");   /* a pair, an escaped backslash */
	assert_string_equal(json_object_get_string(json_object_object_get(o, "a")), "\xf0\x9f\x8e\x9f \\ud800 \xc3\xa9");
	json_object_put(o);
	memset(deep, '[', 100);
	memset(deep + 100, ']', 100);
	parse_fails(deep, 200, "nested too deeply");
}

static void test_canonical(void **state)
{
	struct json_object *a = parse("{\"b\": 1, \"a\": {\"y\": [3, {\"q\": 1, \"p\": 2}], \"x\": null}}");
	struct json_object *b = parse("{\"a\":{\"x\":null,\"y\":[3,{\"p\":2,\"q\":1}]},\"b\":1}");
	char *ca = jsonx_canonical(a), *cb = jsonx_canonical(b), *cn = jsonx_canonical(NULL);

	(void)state;
	assert_string_equal(ca, "{\"a\":{\"x\":null,\"y\":[3,{\"p\":2,\"q\":1}]},\"b\":1}");
	assert_string_equal(ca, cb);
	assert_string_equal(cn, "");
	free(ca);
	free(cb);
	free(cn);
	json_object_put(a);
	json_object_put(b);
}

static void test_fingerprint(void **state)
{
	const char *path = "/api/subscriptions/purchase";
	struct json_object *j1 = parse("{\"planId\":\"x\",\"n\":1}");
	struct json_object *j2 = parse("{ \"n\" : 1, \"planId\" : \"x\" }");
	char f1[65], f2[65];

	(void)state;
	idem_fingerprint("POST", path, j1, f1);
	idem_fingerprint("POST", path, j2, f2);
	assert_string_equal(f1, f2);
	assert_int_equal(strlen(f1), 64);
	idem_fingerprint("POST", "/api/plans", j2, f2);
	assert_string_not_equal(f1, f2);
	json_object_put(j2);
	j2 = parse("{\"n\":2,\"planId\":\"x\"}");
	idem_fingerprint("POST", path, j2, f2);
	assert_string_not_equal(f1, f2);
	json_object_put(j1);
	json_object_put(j2);
}

static const char *const colours[] = {"red", "blue", NULL};
static const struct field inner[] = {
	{"email", V_EMAIL, true, 0, 0, NULL, NULL},
	{NULL, 0, false, 0, 0, NULL, NULL},
};
static const struct field fields[] = {
	{"name", V_STRING, true, 1, 5, NULL, NULL},
	{"n", V_INT, false, 0, 10, NULL, NULL},
	{"tags", V_STRINGS, false, 0, 2, NULL, NULL},
	{"id", V_ID, false, 0, 0, NULL, NULL},
	{"colour", V_ENUM, false, 0, 0, colours, NULL},
	{"who", V_OBJECT, false, 0, 0, NULL, inner},
	{NULL, 0, false, 0, 0, NULL, NULL},
};

static void expect_invalid(const char *json, const char *field, const char *reason_part)
{
	struct json_object *o = parse(json);
	struct vfail f;

	assert_int_equal(valid_object(o, fields, &f), -1);
	assert_string_equal(f.field, field);
	assert_non_null(strstr(f.reason, reason_part));
	json_object_put(o);
}

static void test_valid(void **state)
{
	struct json_object *o;
	struct vfail f;

	(void)state;
	o = parse("{\"name\":\"héllo\",\"n\":10,\"tags\":[\"a\"],\"id\":\"0123456789abcdef01234567\","
		  "\"colour\":\"red\",\"who\":{\"email\":\"a@b.co\"}}");
	assert_int_equal(valid_object(o, fields, &f), 0);
	json_object_put(o);
	expect_invalid("[]", "", "JSON object");
	expect_invalid("{}", "name", "required");
	expect_invalid("{\"name\":\"\"}", "name", "1 to 5");
	expect_invalid("{\"name\":\"abcdef\"}", "name", "1 to 5");
	expect_invalid("{\"name\":\"  \"}", "name", "blank");
	expect_invalid("{\"name\":\"a\\u0000b\"}", "name", "NUL");
	expect_invalid("{\"name\":\"a\\nb\"}", "name", "control");
	expect_invalid("{\"name\":{\"$gt\":\"\"}}", "name", "string");
	expect_invalid("{\"name\":\"a\",\"n\":11}", "n", "0 to 10");
	expect_invalid("{\"name\":\"a\",\"n\":1.0}", "n", "integer");
	expect_invalid("{\"name\":\"a\",\"n\":\"1\"}", "n", "integer");
	expect_invalid("{\"name\":\"a\",\"tags\":[\"a\",\"b\",\"c\"]}", "tags", "at most 2");
	expect_invalid("{\"name\":\"a\",\"tags\":[1]}", "tags", "string");
	expect_invalid("{\"name\":\"a\",\"id\":\"0123456789ABCDEF01234567\"}", "id", "hex id");
	expect_invalid("{\"name\":\"a\",\"colour\":\"green\"}", "colour", "red, blue");
	expect_invalid("{\"name\":\"a\",\"who\":{\"email\":\"nope\"}}", "who.email", "email");
	expect_invalid("{\"name\":\"a\",\"who\":{\"email\":\"a@b.co\",\"x\":1}}", "who.x", "not a known");
	expect_invalid("{\"name\":\"a\",\"extra\":true}", "extra", "not a known");
}

static void test_email(void **state)
{
	(void)state;
	assert_true(email_valid("a@b.co"));
	assert_true(email_valid("First.Last+tag@sub.example.org"));
	assert_false(email_valid("a@b"));
	assert_false(email_valid("@b.co"));
	assert_false(email_valid("a@@b.co"));
	assert_false(email_valid("a b@c.co"));
	assert_false(email_valid("a@.co"));
	assert_false(email_valid("a@b.co."));
	/* what a mail server need not take (no SMTPUTF8), or what would be header syntax */
	assert_false(email_valid("j\xc3\xbcrgen@b\xc3\xbc" "cher.de"));
	assert_false(email_valid("a,b@c.co"));
	assert_false(email_valid("a(b)@c.co"));
	assert_false(email_valid("a\\b@c.co"));
	assert_int_equal(utf8_length("héllo"), 5);
}

static void test_message_id(void **state)
{
	char id[MESSAGE_ID_LEN];

	(void)state;
	mail_message_id("6b11", "https://seats.example.com:8443/shop", id);
	assert_string_equal(id, "<mail.6b11@seats.example.com>");
	mail_message_id("6b11", "http://[::1]:8080", id);
	assert_string_equal(id, "<mail.6b11@[::1]>");
	mail_message_id("6b11", "http://", id);
	assert_string_equal(id, "<mail.6b11@localhost>");
}

static void test_mailbox_split(void **state)
{
	char name[64], addr[64];

	(void)state;
	assert_true(mailbox_split("seats@example.com", name, sizeof(name), addr, sizeof(addr)));
	assert_string_equal(name, "");
	assert_string_equal(addr, "seats@example.com");
	assert_true(mailbox_split("Numatix Seats  <seats@example.com>", name, sizeof(name), addr, sizeof(addr)));
	assert_string_equal(name, "Numatix Seats");
	assert_string_equal(addr, "seats@example.com");
	assert_false(mailbox_split("Seats <seats@example.com", name, sizeof(name), addr, sizeof(addr)));
	assert_false(mailbox_split("Seats <seats@example.com> x", name, sizeof(name), addr, sizeof(addr)));
	assert_false(mailbox_split("Seats <seats>", name, sizeof(name), addr, sizeof(addr)));
	assert_true(mailbox_split("Numatix <numatix@localhost>", name, sizeof(name), addr, sizeof(addr)));
	assert_false(mailbox_split("Seats <s\xc3\xa9" "ats@example.com>", name, sizeof(name), addr, sizeof(addr)));
	/* too long for the buffers: refused, never cut to another address */
	assert_false(mailbox_split("averyveryveryveryveryveryveryveryveryveryverylongname@example.com", name, sizeof(name),
				   addr, 32));
}

/* RFC 3629, byte by byte: every well-formed form at its edges, and what json-c lets through */
static void test_utf8(void **state)
{
	static const char *const good[] = {"", "a", "\xc2\x80", "\xdf\xbf", "\xe0\xa0\x80", "\xed\x9f\xbf",
					   "\xee\x80\x80", "\xef\xbf\xbf", "\xf0\x90\x80\x80", "\xf4\x8f\xbf\xbf",
					   "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x8e\x9f"};
	static const char *const bad[] = {"\x80", "\xbf", "\xc0\x80", "\xc1\xbf", "\xe0\x80\x80",
					  "\xe0\x9f\xbf", "\xed\xa0\x80", "\xed\xbf\xbf", "\xf0\x80\x80\x80",
					  "\xf0\x8f\xbf\xbf", "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xff",
					  "\xc3", "\xe2\x82", "\xf0\x9f\x8e", "a\xc3(", "\xe2\x28\xa1"};
	(void)state;
	for (size_t i = 0; i < sizeof(good) / sizeof(*good); i++)
		assert_true(utf8_valid(good[i], strlen(good[i])));
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++)
		assert_false(utf8_valid(bad[i], strlen(bad[i])));
	/* the length given is the end: a character cut by it is not whole */
	assert_false(utf8_valid("\xc3\xa9", 1));
}

/* W3C Trace Context, level 1: what a receiver honours, and what it must ignore */
static void test_traceparent(void **state)
{
	static const char *const bad[] = {
		"", "00", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
		"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",          /* 00 has no more */
		"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",                /* version ff */
		"00-00000000000000000000000000000000-b7ad6b7169203331-01",                /* zero trace */
		"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",                /* zero parent */
		"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",                /* upper case */
		"00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",               /* later, no dash */
		"0g-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
	};
	char trace[TRACE_ID_LEN + 1], flags[3], w3c[TRACE_ID_LEN + 1], span[SPAN_ID_LEN + 1], out[TRACEPARENT_LEN + 1];

	(void)state;
	assert_true(traceparent_parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", trace, flags));
	assert_string_equal(trace, "0af7651916cd43dd8448eb211c80319c");
	assert_string_equal(flags, "01");
	/* a later version is read as far as level 1 goes */
	assert_true(traceparent_parse("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-what-comes", trace, flags));
	assert_string_equal(flags, "00");
	assert_false(traceparent_parse(NULL, trace, flags));
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++)
		assert_false(traceparent_parse(bad[i], trace, flags));
	trace_w3c_id("0af7651916cd43dd8448eb211c80319c", w3c);
	assert_string_equal(w3c, "0af7651916cd43dd8448eb211c80319c");
	trace_w3c_id("my.trace-1_A", w3c);                                  /* a trace id of a caller's own */
	assert_int_equal(strlen(w3c), TRACE_ID_LEN);
	assert_string_not_equal(w3c, "00000000000000000000000000000000");
	span_new(span);
	traceparent_format("my.trace-1_A", span, "01", out);
	assert_true(traceparent_parse(out, trace, flags));
	assert_string_equal(trace, w3c);
	assert_true(tracestate_valid("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"));
	assert_false(tracestate_valid("a=\nb"));
}

static void test_ids(void **state)
{
	char id[ID_LEN + 1], id2[ID_LEN + 1], u[UUID_LEN + 1], tok[TOKEN_LEN + 1], named[ID_LEN + 1];

	(void)state;
	id_new(id);
	id_new(id2);
	assert_true(id_valid(id));
	assert_string_not_equal(id, id2);
	assert_false(id_valid("0123456789abcdef0123456"));
	assert_false(id_valid("0123456789abcdef012345678"));
	assert_false(id_valid("0123456789abcdef0123456g"));
	uuid_new(u);
	assert_true(uuid_valid(u));
	assert_true(uuid_valid("123e4567-E89B-12d3-a456-426614174000"));
	assert_false(uuid_valid("123e4567e89b12d3a456426614174000"));
	assert_false(uuid_valid("123e4567-e89b-12d3-a456-42661417400"));
	assert_false(uuid_valid("{123e4567-e89b-12d3-a456-426614174000}"));
	token_new(id, tok);
	assert_int_equal(strlen(tok), TOKEN_LEN);
	assert_true(token_subscription(tok, named));
	assert_string_equal(named, id);
	assert_false(token_subscription("sat_short", named));
	assert_true(trace_id_valid("abc.DEF_1-2"));
	assert_false(trace_id_valid(""));
	assert_false(trace_id_valid("a b"));
}

static void route(const char *method, const char *path, handler_fn want, const char *param, int status,
		  const char *allow)
{
	char p[ID_LEN + 41] = "", a[64];
	int st = 0;
	const struct route *r = router_match(method, path, p, sizeof(p), a, sizeof(a), &st);

	if (want) {
		assert_non_null(r);
		assert_ptr_equal(r->handler, want);
		if (param)
			assert_string_equal(p, param);
	} else {
		assert_null(r);
		assert_int_equal(st, status);
		if (allow)
			assert_string_equal(a, allow);
	}
}

static void test_router(void **state)
{
	(void)state;
	route("GET", "/api/plans", api_plans_list, NULL, 0, NULL);
	route("POST", "/api/plans", api_plans_create, NULL, 0, NULL);
	route("GET", "/api/plans/abc", api_plans_get, "abc", 0, NULL);
	route("GET", "/api/plans/abc/stats", api_plans_stats, "abc", 0, NULL);
	route("POST", "/api/subscriptions/purchase", api_subscriptions_purchase, NULL, 0, NULL);
	route("GET", "/api/subscriptions/purchase", api_subscriptions_get, "purchase", 0, NULL);
	route("POST", "/api/subscriptions/x1/cancel", api_subscriptions_cancel, "x1", 0, NULL);
	route("GET", "/api/customers/c/subscriptions", api_customers_subscriptions, "c", 0, NULL);
	route("DELETE", "/api/plans", NULL, NULL, 405, "GET, HEAD, POST");
	route("PUT", "/api/plans/x", NULL, NULL, 405, "GET, HEAD, PATCH");
	/* HEAD is GET without the body (RFC 9110) */
	route("HEAD", "/api/plans/abc", api_plans_get, "abc", 0, NULL);
	route("HEAD", "/api/customers", NULL, NULL, 405, "POST");
	route("GET", "/api/plans/", NULL, NULL, 404, NULL);
	route("GET", "/api/plans//stats", NULL, NULL, 404, NULL);
	route("GET", "/api/nope", NULL, NULL, 404, NULL);
	route("GET", "/api", NULL, NULL, 404, NULL);
	route("GET", "", NULL, NULL, 404, NULL);
}

static void test_request_and_envelopes(void **state)
{
	char *env[] = {"REQUEST_METHOD=POST", "REQUEST_URI=/api/plans?x=1", "DOCUMENT_URI=/api/plans",
		       "QUERY_STRING=status=all&name=a%20b+c&bad=%zz&nul=a%00b&flag", "HTTP_X_TRACE_ID=bad id",
		       "REQUEST_ID=0123abcd", "CONTENT_LENGTH=12", NULL};
	struct request rq;
	struct response rs = {0};
	struct json_object *o;
	char *v, *head;

	(void)state;
	request_init(&rq, env);
	assert_string_equal(rq.method, "POST");
	assert_string_equal(rq.path, "/api/plans");
	assert_string_equal(rq.trace_id, "0123abcd");
	assert_int_equal(rq.content_length, 12);
	v = request_query(&rq, "status");
	assert_string_equal(v, "all");
	free(v);
	v = request_query(&rq, "name");
	assert_string_equal(v, "a b c");
	free(v);
	v = request_query(&rq, "bad");
	assert_string_equal(v, "%zz");
	free(v);
	v = request_query(&rq, "nul");
	assert_int_equal(strlen(v), 3);
	free(v);
	v = request_query(&rq, "flag");
	assert_string_equal(v, "");
	free(v);
	assert_null(request_query(&rq, "missing"));

	response_error(&rs, &rq, 503, "SERVICE_UNAVAILABLE", "busy", NULL);
	assert_int_equal(rs.retry_after, 1);
	o = json_tokener_parse(rs.body);
	assert_string_equal(json_object_get_string(json_object_object_get(o, "code")), "SERVICE_UNAVAILABLE");
	assert_string_equal(json_object_get_string(json_object_object_get(o, "traceId")), "0123abcd");
	assert_null(json_object_object_get(o, "details"));
	json_object_put(o);
	head = response_head(&rs, &rq);
	assert_non_null(strstr(head, "Status: 503 Service Unavailable\r\n"));
	assert_non_null(strstr(head, "Retry-After: 1\r\n"));
	assert_non_null(strstr(head, "X-Trace-Id: 0123abcd\r\n"));
	assert_int_equal(strcmp(head + strlen(head) - 4, "\r\n\r\n"), 0);
	free(head);

	response_invalid(&rs, &rq, "name", "is required");
	o = json_tokener_parse(rs.body);
	assert_int_equal(rs.status, 400);
	assert_string_equal(json_object_get_string(json_object_object_get(json_object_object_get(o, "details"), "field")), "name");
	json_object_put(o);

	struct err e;
	err_set(&e, ERR_CONFLICT, "PLAN_SOLD_OUT", "sold out");
	response_err(&rs, &rq, &e);
	assert_int_equal(rs.status, 409);
	err_set(&e, ERR_RETRYABLE, "SERVICE_UNAVAILABLE", "busy");
	response_err(&rs, &rq, &e);
	assert_int_equal(rs.status, 503);
	err_set(&e, ERR_INTERNAL, "X", "bug");
	response_err(&rs, &rq, &e);
	assert_int_equal(rs.status, 500);
	assert_null(strstr(rs.body, "bug"));
	response_free(&rs);
	request_free(&rq);
}

static void test_config(void **state)
{
	struct config cfg;
	struct err e = {0};

	(void)state;
	setenv("NUMATIX_WORKERS", "3", 1);
	setenv("NUMATIX_DB", "sqlite:///tmp/x.db", 1);
	assert_int_equal(config_load(&cfg, &e), 0);
	assert_int_equal(cfg.workers, 3);
	assert_int_equal(cfg.hold_ttl_s, 600);
	assert_int_equal(cfg.max_body, 16384);
	config_free(&cfg);
	setenv("NUMATIX_WORKERS", "0", 1);
	assert_int_equal(config_load(&cfg, &e), -1);
	assert_non_null(strstr(e.msg, "NUMATIX_WORKERS"));
	unsetenv("NUMATIX_WORKERS");
	setenv("NUMATIX_PAYMENT_LATENCY_MS", "12x", 1);
	assert_int_equal(config_load(&cfg, &e), -1);
	assert_non_null(strstr(e.msg, "NUMATIX_PAYMENT_LATENCY_MS"));
	unsetenv("NUMATIX_PAYMENT_LATENCY_MS");
	setenv("NUMATIX_DB", "redis://x", 1);
	assert_int_equal(config_load(&cfg, &e), -1);
	assert_non_null(strstr(e.msg, "NUMATIX_DB"));
	unsetenv("NUMATIX_DB");
}

/* Stripe's scheme: t=<unix seconds>,v1=<hex HMAC-SHA256 over "<t>.<body>">, keyed with the whole
 * secret; the expected value computed apart with Python's hmac module. */
static void test_webhook_signature(void **state)
{
	char sig[WEBHOOK_SIG_LEN];

	(void)state;
	webhook_sign("whsec_test", 1700000000, "{\"a\":1}", 7, sig);
	assert_string_equal(sig, "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789");
}

static void test_webhook_retry_and_types(void **state)
{
	const int64_t h = 3600 * 1000, t0 = 1000000;
	int64_t next = 0;

	(void)state;
	/* 1 s after the first failure, then doubling, at most an hour apart */
	assert_true(webhook_retry(1, t0, t0, 72 * h, &next));
	assert_int_equal(next - t0, 1000);
	assert_true(webhook_retry(2, t0, t0 + 1000, 72 * h, &next));
	assert_int_equal(next - (t0 + 1000), 2000);
	assert_true(webhook_retry(5, t0, t0 + 5000, 72 * h, &next));
	assert_int_equal(next - (t0 + 5000), 16000);
	assert_true(webhook_retry(40, t0, t0 + 10 * h, 72 * h, &next));
	assert_int_equal(next - (t0 + 10 * h), h);
	/* failed once the window since the first attempt has passed */
	assert_false(webhook_retry(60, t0, t0 + 72 * h, 72 * h, &next));
	assert_true(webhook_retry(60, t0, t0 + 72 * h - 1, 72 * h, &next));

	assert_true(webhook_takes("[\"*\"]", "seat.held"));
	assert_true(webhook_takes("[\"seat.held\",\"payment.refunded\"]", "payment.refunded"));
	assert_false(webhook_takes("[\"seat.held\"]", "seat.released"));
	assert_false(webhook_takes("not json", "seat.held"));
}

/* What is sealed opens under its key alone, any change to it is refused, and text kept before
 * sealing passes through. */
static void test_seal(void **state)
{
	unsigned char key[SEAL_KEY_LEN], other[SEAL_KEY_LEN];
	const char *plain = "{\"accessToken\":\"sat_0123456789abcdef01234567_secret\"}";
	char *a, *b, *out = NULL;

	(void)state;
	seal_key("admin-token-0123456789", key);
	seal_key("admin-token-0123456789x", other);
	a = seal_text(key, plain);
	b = seal_text(key, plain);
	assert_true(!strncmp(a, "nx1.", 4));
	assert_null(strstr(a, "sat_"));
	assert_string_not_equal(a, b);  /* a fresh nonce each time */
	assert_true(strlen(a) <= SEAL_LEN(strlen(plain)));
	assert_int_equal(seal_open(key, a, &out), 0);
	assert_string_equal(out, plain);
	free(out);
	assert_int_equal(seal_open(other, a, &out), -1);
	assert_null(out);
	a[10] = a[10] == 'A' ? 'B' : 'A';  /* one character of the ciphertext */
	assert_int_equal(seal_open(key, a, &out), -1);
	assert_int_equal(seal_open(key, "nx1.", &out), -1);
	assert_int_equal(seal_open(key, "nx1.!!!!", &out), -1);
	assert_int_equal(seal_open(key, "{\"id\":\"kept before\"}", &out), 0);
	assert_string_equal(out, "{\"id\":\"kept before\"}");
	free(out);
	for (size_t n = 0; n < 200; n += 7) {  /* every padding of the base64 */
		char *p = calloc(1, n + 1), *s;
		memset(p, 'x', n);
		s = seal_text(key, p);
		assert_int_equal(strlen(s), SEAL_LEN(n));
		assert_int_equal(seal_open(key, s, &out), 0);
		assert_string_equal(out, p);
		free(out);
		free(s);
		free(p);
	}
	free(a);
	free(b);
}

/* UTC instants as the tests write them */
static int64_t utc(int y, int mo, int d, int h, int mi)
{
	struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi};

	return (int64_t)timegm(&tm) * 1000;
}

static void expect_ends(int64_t anchor, enum period_unit u, int count, const char *zone, const int64_t *ends, int n)
{
	for (int k = 0; k < n; k++) {
		int64_t end = 0;
		assert_int_equal(period_end(anchor, u, count, zone, k, &end), 0);
		if (end != ends[k])
			print_error("%s k=%d: %lld, not %lld\n", zone, k, (long long)end, (long long)ends[k]);
		assert_int_equal(end, ends[k]);
	}
}

/* API.md's dates first, then the edges around them */
static void test_period_ends(void **state)
{
	(void)state;
	int64_t monthly[] = {utc(2027, 2, 28, 10, 0), utc(2027, 3, 31, 10, 0), utc(2027, 4, 30, 10, 0),
			     utc(2027, 5, 31, 10, 0)};
	expect_ends(utc(2027, 1, 31, 10, 0), PERIOD_MONTH, 1, "UTC", monthly, 4);
	int64_t leap[] = {utc(2028, 2, 29, 10, 0)};
	expect_ends(utc(2028, 1, 31, 10, 0), PERIOD_MONTH, 1, "UTC", leap, 1);
	int64_t yearly[] = {utc(2029, 2, 28, 0, 0), utc(2030, 2, 28, 0, 0), utc(2031, 2, 28, 0, 0),
			    utc(2032, 2, 29, 0, 0)};
	expect_ends(utc(2028, 2, 29, 0, 0), PERIOD_YEAR, 1, "UTC", yearly, 4);
	/* Berlin: 2027-03-13T10:00 CET (09:00Z) + 30 days = 2027-04-12T10:00 CEST (08:00Z) */
	int64_t berlin[] = {utc(2027, 4, 12, 8, 0)};
	expect_ends(utc(2027, 3, 13, 9, 0), PERIOD_DAY, 30, "Europe/Berlin", berlin, 1);
	assert_int_equal(berlin[0] - utc(2027, 3, 13, 9, 0), (int64_t)(29 * 24 + 23) * 3600 * 1000);
	/* and back across the autumn change: 25 hours more than the days */
	int64_t autumn[] = {utc(2027, 11, 1, 11, 0)};
	expect_ends(utc(2027, 10, 30, 10, 0), PERIOD_DAY, 2, "Europe/Berlin", autumn, 1);
	/* weeks are 7 local days; a quarter is 3 months from the anchor, not chained */
	int64_t weekly[] = {utc(2027, 1, 8, 0, 0), utc(2027, 1, 15, 0, 0)};
	expect_ends(utc(2027, 1, 1, 0, 0), PERIOD_WEEK, 1, "UTC", weekly, 2);
	int64_t quarterly[] = {utc(2027, 2, 28, 0, 0), utc(2027, 5, 30, 0, 0), utc(2027, 8, 30, 0, 0),
			       utc(2027, 11, 30, 0, 0), utc(2028, 2, 29, 0, 0)};
	expect_ends(utc(2026, 11, 30, 0, 0), PERIOD_MONTH, 3, "UTC", quarterly, 5);
	/* a month end in a zone whose local date differs from UTC's: 31 Jan 23:30 in New York is
	 * 1 Feb 04:30Z; a month later is 28 Feb 23:30 local (29 Feb 04:30Z... 2027 has no 29th:
	 * 1 Mar 04:30Z) */
	int64_t ny[] = {utc(2027, 3, 1, 4, 30)};
	expect_ends(utc(2027, 2, 1, 4, 30), PERIOD_MONTH, 1, "America/New_York", ny, 1);
	/* a day whose local time is skipped in spring (02:30 on 2027-03-28 in Berlin) is read with
	 * the offset before the change: 01:30Z */
	int64_t skipped[] = {utc(2027, 3, 28, 1, 30)};
	expect_ends(utc(2027, 3, 27, 1, 30), PERIOD_DAY, 1, "Europe/Berlin", skipped, 1);
	/* a local time that occurs twice in autumn (02:30 on 2027-10-31) is its first: 00:30Z */
	int64_t twice[] = {utc(2027, 10, 31, 0, 30)};
	expect_ends(utc(2027, 10, 30, 0, 30), PERIOD_DAY, 1, "Europe/Berlin", twice, 1);
}

static void test_period_refusals(void **state)
{
	int64_t end = 0;
	enum period_unit u;

	(void)state;
	assert_true(period_zone_known("UTC"));
	assert_true(period_zone_known("Europe/Berlin"));
	assert_true(period_zone_known("America/Argentina/Buenos_Aires"));
	const char *bad[] = {"", "Mars/Olympus", "Europe/../../etc/passwd", "/etc/passwd", "Europe//Berlin",
			     "Europe/Berlin/", ".hidden", "Europe/.Berlin", "zone.tab", "posixrules x", "utc\n"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++)
		assert_false(period_zone_known(bad[i]));
	assert_false(period_zone_known(NULL));
	assert_int_equal(period_end(0, PERIOD_DAY, 1, "Mars/Olympus", 0, &end), -1);
	assert_int_equal(period_end(0, PERIOD_DAY, 0, "UTC", 0, &end), -1);
	assert_int_equal(period_end(0, PERIOD_DAY, 1, "UTC", -1, &end), -1);
	assert_int_equal(period_unit_parse("month", &u), 0);
	assert_int_equal(u, PERIOD_MONTH);
	assert_int_equal(period_unit_parse("Month", &u), -1);
	assert_int_equal(period_unit_parse(NULL, &u), -1);
	assert_string_equal(period_unit_name(PERIOD_YEAR), "year");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_jsonx_parse),
		cmocka_unit_test(test_canonical),
		cmocka_unit_test(test_fingerprint),
		cmocka_unit_test(test_valid),
		cmocka_unit_test(test_email),
		cmocka_unit_test(test_mailbox_split),
		cmocka_unit_test(test_message_id),
		cmocka_unit_test(test_utf8),
		cmocka_unit_test(test_traceparent),
		cmocka_unit_test(test_ids),
		cmocka_unit_test(test_router),
		cmocka_unit_test(test_request_and_envelopes),
		cmocka_unit_test(test_config),
		cmocka_unit_test(test_webhook_signature),
		cmocka_unit_test(test_webhook_retry_and_types),
		cmocka_unit_test(test_seal),
		cmocka_unit_test(test_period_ends),
		cmocka_unit_test(test_period_refusals),
	};
	return cmocka_run_group_tests_name("pure", tests, NULL, NULL);
}
