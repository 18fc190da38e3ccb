/* test_stripe.c - the Stripe client (processor_stripe.c) against canned answers for each error
 * shape, served by a small HTTP server in a thread of this test (loopback), and Stripe's
 * signature scheme for events (published scheme, rotation, tolerance). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "processor.h"
#include "util.h"

/* --- the canned server ----------------------------------------------------------------------- */

struct canned {
	int status;             /* 0: cut the connection without an answer; -1: never answer */
	const char *headers;    /* extra header lines, each ending in \r\n, or NULL */
	const char *body;
};

#define MAX_CANNED 16
#define MAX_SEEN 16

static struct {
	int fd, port;
	struct canned answers[MAX_CANNED];
	int nanswers, next;
	char seen[MAX_SEEN][4096];      /* the requests, as received */
	int nseen;
	pthread_mutex_t lock;
	pthread_t thread;
} srv;

static void *serve(void *arg)
{
	(void)arg;
	for (;;) {
		int c = accept(srv.fd, NULL, NULL);
		if (c < 0)
			return NULL;
		/* one connection may carry several requests (the client keeps it) */
		for (;;) {
			char buf[4096];
			size_t got = 0;
			ssize_t n;
			char *end = NULL;
			long clen = 0;
			while (got < sizeof(buf) - 1 && (n = read(c, buf + got, sizeof(buf) - 1 - got)) > 0) {
				got += (size_t)n;
				buf[got] = '\0';
				if ((end = strstr(buf, "\r\n\r\n"))) {
					const char *cl = strcasestr(buf, "Content-Length:");
					clen = cl ? strtol(cl + 15, NULL, 10) : 0;
					if ((size_t)(end + 4 - buf) + (size_t)clen <= got)
						break;
				}
			}
			if (!end)
				break;
			pthread_mutex_lock(&srv.lock);
			if (srv.nseen < MAX_SEEN)
				snprintf(srv.seen[srv.nseen++], sizeof(srv.seen[0]), "%s", buf);
			struct canned a = srv.next < srv.nanswers ? srv.answers[srv.next++] : (struct canned){500, NULL, "{}"};
			pthread_mutex_unlock(&srv.lock);
			if (a.status == 0)
				break;
			if (a.status < 0) {
				/* no answer until the client gives up */
				while (read(c, buf, sizeof(buf)) > 0)
					;
				break;
			}
			char head[512];
			int hl = snprintf(head, sizeof(head), "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n%s\r\n",
					  a.status, strlen(a.body), a.headers ? a.headers : "");
			if (write(c, head, (size_t)hl) < 0 || write(c, a.body, strlen(a.body)) < 0)
				break;
		}
		close(c);
	}
}

static void server_start(void)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(sa);

	srv.fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_int_equal(bind(srv.fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(srv.fd, 16), 0);
	getsockname(srv.fd, (struct sockaddr *)&sa, &len);
	srv.port = ntohs(sa.sin_port);
	pthread_mutex_init(&srv.lock, NULL);
	pthread_create(&srv.thread, NULL, serve, NULL);
}

static void canned(const struct canned *a, int n)
{
	pthread_mutex_lock(&srv.lock);
	memcpy(srv.answers, a, (size_t)n * sizeof(*a));
	srv.nanswers = n;
	srv.next = 0;
	srv.nseen = 0;
	pthread_mutex_unlock(&srv.lock);
}

static int requests_seen(const char *what)
{
	int n = 0;

	pthread_mutex_lock(&srv.lock);
	for (int i = 0; i < srv.nseen; i++)
		n += !strncmp(srv.seen[i], what, strlen(what));
	pthread_mutex_unlock(&srv.lock);
	return n;
}

/* Request i as received (a copy: an assertion never leaves the lock held). */
static char *seen(int i)
{
	static char copy[4096];

	pthread_mutex_lock(&srv.lock);
	snprintf(copy, sizeof(copy), "%s", i < srv.nseen ? srv.seen[i] : "");
	pthread_mutex_unlock(&srv.lock);
	return copy;
}

static struct processor *stripe(void)
{
	char base[64];

	snprintf(base, sizeof(base), "http://127.0.0.1:%d", srv.port);
	return processor_stripe_open("sk_test_cannedkey0123", base, "eur", NULL);
}

static const struct canned CUSTOMER = {200, NULL, "{\"id\":\"cus_1\",\"object\":\"customer\"}"};
static const char PI_AUTHORIZED[] =
	"{\"id\":\"pi_1\",\"object\":\"payment_intent\",\"status\":\"requires_capture\",\"amount\":1500,"
	"\"metadata\":{\"numatix_key\":\"key-1\",\"subscription\":\"sub-1\"}}";

static enum pay_outcome authorize(struct processor *p, int64_t deadline_ms, struct pay_result *out)
{
	struct pay_req r = {"key-1", "sub-1", "cust-1", "pm_card_visa", 1500, false, deadline_ms, "trace", NULL};

	return p->ops->authorize(p, &r, out);
}

/* --- the client's outcomes ------------------------------------------------------------------- */

static void test_an_authorization_as_stripe_is_asked(void **state)
{
	struct processor *p = stripe();
	struct pay_result pr;
	const struct canned a[] = {CUSTOMER, {200, NULL, PI_AUTHORIZED}};

	(void)state;
	canned(a, 2);
	assert_int_equal(authorize(p, 0, &pr), PAY_OK);
	assert_int_equal(pr.state, PAYS_AUTHORIZED);
	assert_string_equal(pr.id, "pi_1");
	assert_string_equal(pr.subscription_id, "sub-1");
	assert_int_equal(pr.amount_cents, 1500);
	/* the request: form-encoded, the key as the Basic user, a key derived from the payment's */
	assert_non_null(strstr(seen(0), "Idempotency-Key: numatix-customer-cust-1"));
	const char *req = seen(1);
	assert_non_null(strstr(req, "POST /v1/payment_intents HTTP/1.1"));
	assert_non_null(strstr(req, "Authorization: Basic c2tfdGVzdF9jYW5uZWRrZXkwMTIzOg=="));
	assert_non_null(strstr(req, "Idempotency-Key: key-1-authorize"));
	assert_non_null(strstr(req, "Content-Type: application/x-www-form-urlencoded"));
	assert_non_null(strstr(req, "amount=1500&currency=eur&customer=cus_1&payment_method=pm_card_visa"));
	assert_non_null(strstr(req, "capture_method=manual"));
	assert_non_null(strstr(req, "setup_future_usage=off_session"));
	assert_non_null(strstr(req, "metadata[subscription]=sub-1"));
	p->ops->close(p);
}

static void test_a_card_error_is_a_decline_with_its_code(void **state)
{
	struct processor *p = stripe();
	struct pay_result pr;
	const struct canned a[] = {
		CUSTOMER,
		{402, NULL, "{\"error\":{\"type\":\"card_error\",\"code\":\"card_declined\",\"decline_code\":\"insufficient_funds\","
			   "\"message\":\"Your card has insufficient funds.\",\"payment_intent\":{\"id\":\"pi_2\",\"status\":"
			   "\"requires_payment_method\",\"amount\":1500}}}"},
	};

	(void)state;
	canned(a, 2);
	assert_int_equal(authorize(p, 0, &pr), PAY_DECLINED);
	assert_string_equal(pr.decline_code, "insufficient_funds");
	assert_string_equal(pr.id, "pi_2");
	assert_int_equal(requests_seen("POST /v1/payment_intents"), 1);
	p->ops->close(p);
}

static void test_an_idempotency_error_is_invalid_and_not_retried(void **state)
{
	struct processor *p = stripe();
	struct pay_result pr;
	const struct canned a[] = {
		CUSTOMER,
		{400, NULL, "{\"error\":{\"type\":\"idempotency_error\",\"message\":\"Keys for idempotent requests can only be "
			   "used with the same parameters they were first used with.\"}}"},
	};

	(void)state;
	canned(a, 2);
	assert_int_equal(authorize(p, 0, &pr), PAY_INVALID);
	assert_non_null(strstr(pr.msg, "idempotency_error"));
	assert_int_equal(requests_seen("POST /v1/payment_intents"), 1);
	p->ops->close(p);
}

static void test_409_and_429_are_retried_under_the_same_key(void **state)
{
	struct processor *p = stripe();
	struct pay_result pr;
	const struct canned a[] = {
		CUSTOMER,
		{409, NULL, "{\"error\":{\"type\":\"idempotency_error\",\"message\":\"in progress\"}}"},
		{429, NULL, "{\"error\":{\"type\":\"rate_limit_error\",\"message\":\"Too many requests\"}}"},
		{429, NULL, "{\"error\":{\"type\":\"rate_limit_error\",\"message\":\"Too many requests\"}}"},
		{200, NULL, PI_AUTHORIZED},
	};

	(void)state;
	canned(a, 5);
	assert_int_equal(authorize(p, now_ms() + 20000, &pr), PAY_OK);
	assert_int_equal(requests_seen("POST /v1/payment_intents"), 4);
	for (int i = 1; i < 5; i++)
		assert_non_null(strstr(seen(i), "Idempotency-Key: key-1-authorize"));
	p->ops->close(p);
}

static void test_a_500_that_should_not_be_retried_is_unknown_at_once(void **state)
{
	struct processor *p = stripe();
	struct pay_result pr;
	const struct canned a[] = {
		CUSTOMER,
		{500, "Stripe-Should-Retry: false\r\n", "{\"error\":{\"type\":\"api_error\",\"message\":\"An unknown error occurred\"}}"},
		{200, NULL, PI_AUTHORIZED},
	};

	(void)state;
	canned(a, 3);
	assert_int_equal(authorize(p, 0, &pr), PAY_UNKNOWN);
	assert_int_equal(requests_seen("POST /v1/payment_intents"), 1);
	p->ops->close(p);
}

static void test_a_malformed_body_and_a_cut_connection_are_unknown(void **state)
{
	struct processor *p = stripe();
	struct pay_result pr;
	const struct canned a[] = {CUSTOMER, {200, NULL, "this is not json"}};
	const struct canned b[] = {CUSTOMER, {0, NULL, ""}, {0, NULL, ""}, {0, NULL, ""}, {0, NULL, ""}, {0, NULL, ""}};

	(void)state;
	canned(a, 2);
	assert_int_equal(authorize(p, 0, &pr), PAY_UNKNOWN);
	canned(b, 6);
	assert_int_equal(authorize(p, now_ms() + 20000, &pr), PAY_UNKNOWN);
	/* retried five times, then given up (libcurl resends once on its own when the connection it
	 * reused died before an answer: the same request, the same key) */
	int n = requests_seen("POST /v1/payment_intents");
	assert_true(n == 5 || n == 6);
	p->ops->close(p);
}

static void test_a_silent_stripe_is_unknown_by_the_deadline(void **state)
{
	struct processor *p = stripe();
	struct pay_result pr;
	const struct canned a[] = {CUSTOMER, {-1, NULL, ""}, {-1, NULL, ""}, {-1, NULL, ""}, {-1, NULL, ""}, {-1, NULL, ""}};
	int64_t start;

	(void)state;
	canned(a, 6);
	start = now_ms();
	assert_int_equal(authorize(p, start + 1500, &pr), PAY_UNKNOWN);
	/* the deadline bounds the call (the last attempt gets at least 100 ms) */
	assert_true(now_ms() - start < 1500 + 1000);
	p->ops->close(p);
}

/* --- signed events ----------------------------------------------------------------------------- */

static const char BODY[] = "{\"id\":\"evt_1\",\"type\":\"payment_intent.succeeded\"}";
/* HMAC-SHA256("whsec_test_secret_0123456789", "1700000000." BODY), computed apart (Python's hmac) */
static const char SIG[] = "59a90dff743f748f8d6083812e877d28ff9bfa61e3dc6089626fd31f3ebb8a95";

static int check(const char *header, char *const *secrets, int64_t now)
{
	char why[160];

	return stripe_signature_check(header, BODY, strlen(BODY), secrets, now, STRIPE_SIGNATURE_TOLERANCE_S, why,
				      sizeof(why));
}

static void test_signatures_as_stripe_signs(void **state)
{
	char *one[] = {(char *)"whsec_test_secret_0123456789", NULL};
	char *rotated[] = {(char *)"whsec_new_secret_9876543210", (char *)"whsec_test_secret_0123456789", NULL};
	char *other[] = {(char *)"whsec_another_0000000000", NULL};
	char h[256];

	(void)state;
	snprintf(h, sizeof(h), "t=1700000000,v1=%s", SIG);
	assert_int_equal(check(h, one, 1700000000), 0);
	/* rotation: either of two secrets; and a header with several v1 (Stripe's while it rotates) */
	assert_int_equal(check(h, rotated, 1700000000), 0);
	snprintf(h, sizeof(h), "t=1700000000,v1=%064d,v1=%s,v0=abc", 0, SIG);
	assert_int_equal(check(h, one, 1700000000), 0);
	/* another secret, an altered signature, no timestamp, no v1, no header */
	snprintf(h, sizeof(h), "t=1700000000,v1=%s", SIG);
	assert_int_equal(check(h, other, 1700000000), -1);
	snprintf(h, sizeof(h), "t=1700000000,v1=%.63s0", SIG);
	assert_int_equal(check(h, one, 1700000000), -1);
	snprintf(h, sizeof(h), "v1=%s", SIG);
	assert_int_equal(check(h, one, 1700000000), -1);
	assert_int_equal(check("t=1700000000", one, 1700000000), -1);
	assert_int_equal(check(NULL, one, 1700000000), -1);
	assert_int_equal(check("", one, 1700000000), -1);
	/* a timestamp not the signed one */
	snprintf(h, sizeof(h), "t=1700000001,v1=%s", SIG);
	assert_int_equal(check(h, one, 1700000001), -1);
	/* tolerance: 300 s either way */
	snprintf(h, sizeof(h), "t=1700000000,v1=%s", SIG);
	assert_int_equal(check(h, one, 1700000000 + 300), 0);
	assert_int_equal(check(h, one, 1700000000 + 301), -1);
	assert_int_equal(check(h, one, 1700000000 - 301), -1);
	/* no secret configured: nothing verifies */
	assert_int_equal(check(h, NULL, 1700000000), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_an_authorization_as_stripe_is_asked),
		cmocka_unit_test(test_a_card_error_is_a_decline_with_its_code),
		cmocka_unit_test(test_an_idempotency_error_is_invalid_and_not_retried),
		cmocka_unit_test(test_409_and_429_are_retried_under_the_same_key),
		cmocka_unit_test(test_a_500_that_should_not_be_retried_is_unknown_at_once),
		cmocka_unit_test(test_a_malformed_body_and_a_cut_connection_are_unknown),
		cmocka_unit_test(test_a_silent_stripe_is_unknown_by_the_deadline),
		cmocka_unit_test(test_signatures_as_stripe_signs),
	};

	server_start();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
