/* processor_stripe.c - Stripe behind the processor seam, on libcurl.
 *
 * A buyer is a Stripe Customer, made once per Numatix customer under a key derived from its
 * id; a payment is a PaymentIntent with capture_method=manual, created and confirmed with the
 * buyer's payment method in one call under a key derived from the payment's (so a retry, a
 * replayed request or the reaper reaches the same PaymentIntent), its card saved for charges
 * without the buyer (setup_future_usage=off_session). A payment whose id is not known is found
 * among its customer's PaymentIntents by the key kept in its metadata: a lookup never makes
 * one. Bodies are form-encoded (nested keys as metadata[subscription]); the secret key is the
 * Basic user and never reaches a log line. Network errors, 409, 429 and 5xx are retried with
 * the same Idempotency-Key after a backoff with jitter, as Stripe-Should-Retry allows, until
 * the call's deadline; Stripe's error object (type, code, decline_code, param) is read into the
 * outcome. One connection per thread, reused. */
#include "processor.h"

#include <curl/curl.h>
#include <json-c/json.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "jsonx.h"
#include "util.h"
#include "version.h"

#define CONNECT_TIMEOUT_MS 5000L
#define CALL_TIMEOUT_MS 20000L       /* one HTTP exchange at most */
#define DEFAULT_BUDGET_MS 30000      /* a call without a deadline of its own */
#define MAX_ATTEMPTS 5

struct stripe {
	struct processor base;
	char *secret_key;
	char *api_base;
	char *currency;
	char *const *webhook_secrets;      /* borrowed from the settings */
};

#define ST(p) ((struct stripe *)(p))

/* --- one connection per thread -------------------------------------------------------------- */

/* Every handle this process made stays listed (threads live as long as the process), so none
 * is ever lost; a thread finds its own through its slot. */
#define MAX_HANDLES 2048
static CURL *handles[MAX_HANDLES];
static int nhandles;
static pthread_mutex_t handles_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread int slot = -1;
static __thread pid_t slot_pid;

/* This thread's handle, or NULL when there is none to be had (then a call makes its own). */
static CURL *connection(void)
{
	if (slot >= 0 && slot_pid == getpid())
		return handles[slot];
	/* (a forked child's slot is its parent's: never shared) */
	pthread_mutex_lock(&handles_lock);
	if (slot_pid != getpid())
		slot = -1;
	if (nhandles < MAX_HANDLES && (handles[nhandles] = curl_easy_init())) {
		slot = nhandles++;
		slot_pid = getpid();
	}
	pthread_mutex_unlock(&handles_lock);
	return slot >= 0 ? handles[slot] : NULL;
}

/* --- form bodies ---------------------------------------------------------------------------- */

struct form {
	char *s;
	size_t len;
	FILE *f;
};

static void form_open(struct form *f)
{
	memset(f, 0, sizeof(*f));
	f->f = open_memstream(&f->s, &f->len);
}

static void form_add(struct form *f, const char *name, const char *value)
{
	char *v = curl_easy_escape(NULL, value, 0);

	fprintf(f->f, "%s%s=%s", ftell(f->f) ? "&" : "", name, v ? v : "");
	curl_free(v);
}

static void form_int(struct form *f, const char *name, int64_t value)
{
	char v[32];

	snprintf(v, sizeof(v), "%lld", (long long)value);
	form_add(f, name, v);
}

static char *form_close(struct form *f)
{
	fclose(f->f);
	return f->s;
}

/* --- one call, retried ------------------------------------------------------------------------ */

struct answer {
	long status;               /* 0: no HTTP answer */
	char *body;
	size_t len;
	int should_retry;          /* Stripe-Should-Retry: 1 true, 0 false, -1 absent */
	char why[CURL_ERROR_SIZE];
};

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
	struct answer *a = arg;

	a->body = xrealloc(a->body, a->len + size * n + 1);
	memcpy(a->body + a->len, data, size * n);
	a->len += size * n;
	a->body[a->len] = '\0';
	return size * n;
}

static size_t on_header(char *data, size_t size, size_t n, void *arg)
{
	struct answer *a = arg;
	static const char name[] = "stripe-should-retry:";

	if (size * n > sizeof(name) - 1 && !strncasecmp(data, name, sizeof(name) - 1)) {
		const char *v = data + sizeof(name) - 1;
		while (*v == ' ')
			v++;
		a->should_retry = !strncasecmp(v, "true", 4);
	}
	return size * n;
}

static void exchange(struct stripe *s, const char *method, const char *path, const char *body, const char *idem_key,
		     long timeout_ms, struct answer *a)
{
	CURL *own = NULL, *c = connection();
	char url[512], key_h[300];
	struct curl_slist *hs = NULL;
	CURLcode rc;

	free(a->body);
	memset(a, 0, sizeof(*a));
	a->should_retry = -1;
	if (!c && !(c = own = curl_easy_init())) {
		snprintf(a->why, sizeof(a->why), "libcurl could not start");
		return;
	}
	snprintf(url, sizeof(url), "%s%s", s->api_base, path);
	hs = curl_slist_append(hs, "Content-Type: application/x-www-form-urlencoded");
	hs = curl_slist_append(hs, "Expect:");
	if (idem_key) {
		snprintf(key_h, sizeof(key_h), "Idempotency-Key: %s", idem_key);
		hs = curl_slist_append(hs, key_h);
	}
	curl_easy_reset(c);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hs);
	curl_easy_setopt(c, CURLOPT_USERNAME, s->secret_key);
	curl_easy_setopt(c, CURLOPT_PASSWORD, "");
	curl_easy_setopt(c, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "Numatix/" NUMATIX_VERSION);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, CONNECT_TIMEOUT_MS < timeout_ms ? CONNECT_TIMEOUT_MS : timeout_ms);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, a);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, a);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, a->why);
	if (!strcmp(method, "POST"))
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
	rc = curl_easy_perform(c);
	if (rc == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &a->status);
	else if (!*a->why)
		snprintf(a->why, sizeof(a->why), "%s", curl_easy_strerror(rc));
	curl_slist_free_all(hs);
	if (own)
		curl_easy_cleanup(own);
}

/* Whether an answer may change if the same request is sent again under its key. */
static bool retryable(const struct answer *a)
{
	if (a->should_retry == 0)
		return false;
	if (a->should_retry == 1)
		return true;
	return a->status == 0 || a->status == 409 || a->status == 429 || a->status >= 500;
}

/* The pause before attempt n (1, 2, ...): 250 ms doubled each time, up to 4 s, half of it random. */
static void backoff(int n)
{
	long ms = 250L << (n - 1 < 4 ? n - 1 : 4);
	unsigned r;

	random_bytes(&r, sizeof(r));
	ms = ms / 2 + (long)(r % (unsigned)(ms / 2 + 1));
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0)
		;
}

/* Sends the request until an answer that does not change with a retry, or the deadline. The
 * parsed body (NULL when there is none) is the caller's to put. */
static struct json_object *call(struct stripe *s, const char *method, const char *path, const char *body,
				const char *idem_key, int64_t deadline_ms, struct answer *a)
{
	int64_t until = deadline_ms > 0 ? deadline_ms : now_ms() + DEFAULT_BUDGET_MS;

	memset(a, 0, sizeof(*a));
	for (int n = 1;; n++) {
		long left = (long)(until - now_ms());
		exchange(s, method, path, body, idem_key, left < CALL_TIMEOUT_MS ? (left > 100 ? left : 100) : CALL_TIMEOUT_MS,
			 a);
		if (!retryable(a) || n == MAX_ATTEMPTS)
			break;
		backoff(n);
		if (now_ms() >= until)
			break;
	}
	return a->body ? json_tokener_parse(a->body) : NULL;
}

/* A PaymentIntent read into out (state, id, amounts, decline, client secret). */
static void intent_read(struct json_object *pi, struct pay_result *out)
{
	const char *status = jsonx_str(pi, "status"), *id = jsonx_str(pi, "id"), *secret = jsonx_str(pi, "client_secret");
	struct json_object *err = jsonx_obj(pi, "last_payment_error"), *charge = jsonx_obj(pi, "latest_charge");

	snprintf(out->id, sizeof(out->id), "%s", id ? id : "");
	const char *sub = jsonx_str(jsonx_obj(pi, "metadata"), "subscription");
	const char *trace = jsonx_str(jsonx_obj(pi, "metadata"), "trace_id");
	snprintf(out->subscription_id, sizeof(out->subscription_id), "%s", sub ? sub : "");
	snprintf(out->trace_id, sizeof(out->trace_id), "%s", trace ? trace : "");
	out->amount_cents = jsonx_int(pi, "amount");
	/* the method it was confirmed with, attached to the customer for renewals */
	const char *pm = jsonx_str(pi, "payment_method");
	snprintf(out->method, sizeof(out->method), "%s", pm ? pm : "");
	out->refunded_cents = jsonx_int(charge, "amount_refunded");
	if (!status)
		out->state = PAYS_NONE;
	else if (!strcmp(status, "requires_capture"))
		out->state = PAYS_AUTHORIZED;
	else if (!strcmp(status, "succeeded"))
		out->state = PAYS_CAPTURED;
	else if (!strcmp(status, "canceled"))
		out->state = PAYS_VOIDED;
	else if (!strcmp(status, "requires_action"))
		out->state = PAYS_REQUIRES_ACTION;
	else if (!strcmp(status, "requires_payment_method") && err)
		out->state = PAYS_DECLINED;
	else
		out->state = PAYS_NONE;   /* requires_confirmation, processing, unconfirmed */
	if (out->state == PAYS_DECLINED) {
		const char *code = jsonx_str(err, "decline_code") ? jsonx_str(err, "decline_code") : jsonx_str(err, "code");
		snprintf(out->decline_code, sizeof(out->decline_code), "%s", code ? code : "generic_decline");
	}
	if (out->state == PAYS_REQUIRES_ACTION)
		snprintf(out->client_secret, sizeof(out->client_secret), "%s", secret ? secret : "");
}

/* An answer to a call about a PaymentIntent, normalised. */
static enum pay_outcome outcome_of(const struct answer *a, struct json_object *body, struct pay_result *out)
{
	struct json_object *err = jsonx_obj(body, "error");

	if (a->status == 0) {
		snprintf(out->msg, sizeof(out->msg), "stripe: no answer: %.120s", a->why);
		return out->outcome = PAY_UNKNOWN;
	}
	if (a->status >= 200 && a->status < 300 && body) {
		intent_read(body, out);
		switch (out->state) {
		case PAYS_DECLINED:
			return out->outcome = PAY_DECLINED;
		case PAYS_REQUIRES_ACTION:
			return out->outcome = PAY_ACTION_REQUIRED;
		default:
			return out->outcome = PAY_OK;
		}
	}
	if (a->status >= 200 && a->status < 300) {
		/* it did something, and what cannot be read: asked again under the key */
		snprintf(out->msg, sizeof(out->msg), "stripe: HTTP %ld with an answer that is not one", a->status);
		return out->outcome = PAY_UNKNOWN;
	}
	if (!err) {
		snprintf(out->msg, sizeof(out->msg), "stripe: HTTP %ld without an error object", a->status);
		return out->outcome = a->status >= 500 || a->status == 429 || a->status == 409 ? PAY_UNKNOWN : PAY_INVALID;
	}
	const char *type = jsonx_str(err, "type"), *code = jsonx_str(err, "code"), *decline = jsonx_str(err, "decline_code"),
		   *param = jsonx_str(err, "param"), *message = jsonx_str(err, "message");
	struct json_object *pi = jsonx_obj(err, "payment_intent");
	if (pi)
		intent_read(pi, out);
	snprintf(out->msg, sizeof(out->msg), "stripe: HTTP %ld %s%s%s%s%s: %.80s", a->status, type ? type : "error",
		 code ? " " : "", code ? code : "", param ? " on " : "", param ? param : "", message ? message : "");
	snprintf(out->param, sizeof(out->param), "%s", param ? param : "");
	if (a->status == 402 && type && !strcmp(type, "card_error")) {
		if (code && !strcmp(code, "authentication_required")) {
			out->state = PAYS_REQUIRES_ACTION;
			return out->outcome = PAY_ACTION_REQUIRED;
		}
		out->state = PAYS_DECLINED;
		snprintf(out->decline_code, sizeof(out->decline_code), "%s", decline ? decline : code ? code : "generic_decline");
		return out->outcome = PAY_DECLINED;
	}
	if (a->status >= 500 || a->status == 429 || a->status == 409)
		return out->outcome = PAY_UNKNOWN;
	return out->outcome = PAY_INVALID;
}

/* --- customers ---------------------------------------------------------------------------- */

/* The Stripe Customer of a Numatix customer: the one kept on its row (kept), or else made, under
 * a key derived from its id (Stripe forgets a key after 24 hours: a customer's next purchase a
 * day later would make another, so the ledger keeps the first, from res->customer). */
static enum pay_outcome customer_of(struct stripe *s, const char *customer_id, const char *kept, int64_t deadline_ms,
				    char *out, size_t len, struct pay_result *res)
{
	struct form f;
	struct answer a;
	char key[96];
	char *body;
	struct json_object *o;
	const char *id;

	if (kept && *kept) {
		snprintf(out, len, "%s", kept);
		snprintf(res->customer, sizeof(res->customer), "%s", kept);
		return PAY_OK;
	}
	form_open(&f);
	form_add(&f, "metadata[numatix_customer]", customer_id);
	body = form_close(&f);
	snprintf(key, sizeof(key), "numatix-customer-%s", customer_id);
	o = call(s, "POST", "/v1/customers", body, key, deadline_ms, &a);
	free(body);
	id = jsonx_str(o, "id");
	if (a.status >= 200 && a.status < 300 && id) {
		snprintf(out, len, "%s", id);
		snprintf(res->customer, sizeof(res->customer), "%s", id);
		json_object_put(o);
		free(a.body);
		return PAY_OK;
	}
	enum pay_outcome r = outcome_of(&a, o, res);
	if (r == PAY_OK)   /* a 2xx without an id */
		r = res->outcome = PAY_INVALID;
	json_object_put(o);
	free(a.body);
	return r;
}

/* --- the seam --------------------------------------------------------------------------------- */

static enum pay_outcome intent_create(struct processor *p, const struct pay_req *r, bool off_session,
				      struct pay_result *out)
{
	struct stripe *s = ST(p);
	char customer[128], key[160];
	struct form f;
	struct answer a;
	struct json_object *o;
	enum pay_outcome res;
	char *body;

	memset(out, 0, sizeof(*out));
	if (customer_of(s, r->customer_id, r->processor_customer, r->deadline_ms, customer, sizeof(customer), out) !=
	    PAY_OK)
		return out->outcome;
	form_open(&f);
	form_int(&f, "amount", r->amount_cents);
	form_add(&f, "currency", s->currency);
	form_add(&f, "customer", customer);
	form_add(&f, "payment_method", r->method);
	form_add(&f, "payment_method_types[]", "card");
	form_add(&f, "confirm", "true");
	form_add(&f, "metadata[numatix_key]", r->key);
	form_add(&f, "metadata[subscription]", r->subscription_id);
	/* No trace in it: Stripe's idempotency compares a retry's parameters with the first call's,
	 * and a client's retry is another request, of another trace. */
	if (off_session) {
		form_add(&f, "off_session", "true");
	} else {
		form_add(&f, "capture_method", "manual");
		form_add(&f, "setup_future_usage", "off_session");
	}
	body = form_close(&f);
	snprintf(key, sizeof(key), "%s-%s", r->key, off_session ? "charge" : "authorize");
	o = call(s, "POST", "/v1/payment_intents", body, key, r->deadline_ms, &a);
	free(body);
	res = outcome_of(&a, o, out);
	json_object_put(o);
	free(a.body);
	return res;
}

static enum pay_outcome stripe_authorize(struct processor *p, const struct pay_req *r, struct pay_result *out)
{
	return intent_create(p, r, false, out);
}

static enum pay_outcome stripe_charge_saved(struct processor *p, const struct pay_req *r, struct pay_result *out)
{
	return intent_create(p, r, true, out);
}

/* Whether s can be a Stripe object's id, to be put in a request's path: letters, digits and
 * underscores. */
static bool id_shaped(const char *s)
{
	size_t n = strlen(s);

	return n > 0 && n < 100 && strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") == n;
}

/* The payment's id: as given, or found among its customer's PaymentIntents by its key (newest
 * first, page after page). 0 with id filled, 0 with id "" when there is none, or the failing
 * outcome's -1. */
static int find_intent(struct stripe *s, const struct pay_ref *ref, char *id, size_t len, struct pay_result *out)
{
	char customer[128], path[256];
	struct answer a;
	struct json_object *o, *data;

	*id = '\0';
	if (ref->id && *ref->id) {
		if (!id_shaped(ref->id)) {
			snprintf(out->msg, sizeof(out->msg), "stripe: not a PaymentIntent id");
			out->outcome = PAY_INVALID;
			return -1;
		}
		snprintf(id, len, "%s", ref->id);
		return 0;
	}
	if (!ref->customer_id ||
	    customer_of(s, ref->customer_id, ref->processor_customer, 0, customer, sizeof(customer), out) != PAY_OK) {
		if (!ref->customer_id) {
			snprintf(out->msg, sizeof(out->msg), "stripe: a payment without its id needs its customer");
			out->outcome = PAY_INVALID;
		}
		return -1;
	}
	if (!id_shaped(customer)) {
		snprintf(out->msg, sizeof(out->msg), "stripe: not a Customer id");
		out->outcome = PAY_INVALID;
		return -1;
	}
	char after[128] = "";
	for (int page = 0; page < 20 && !*id; page++) {
		bool more = false;
		snprintf(path, sizeof(path), "/v1/payment_intents?customer=%s&limit=100%s%s", customer,
			 *after ? "&starting_after=" : "", after);
		o = call(s, "GET", path, NULL, NULL, 0, &a);
		if (!(a.status >= 200 && a.status < 300) || !json_object_object_get_ex(o, "data", &data)) {
			outcome_of(&a, o, out);
			if (out->outcome == PAY_OK)
				out->outcome = PAY_UNKNOWN;
			json_object_put(o);
			free(a.body);
			return -1;
		}
		size_t n = json_object_array_length(data);
		for (size_t i = 0; i < n; i++) {
			struct json_object *pi = json_object_array_get_idx(data, i);
			const char *k = jsonx_str(jsonx_obj(pi, "metadata"), "numatix_key"), *pid = jsonx_str(pi, "id");
			if (k && pid && !strcmp(k, ref->key)) {
				snprintf(id, len, "%s", pid);
				break;
			}
			if (pid && i == n - 1 && id_shaped(pid))
				snprintf(after, sizeof(after), "%s", pid);
		}
		struct json_object *hm;
		more = json_object_object_get_ex(o, "has_more", &hm) && json_object_get_boolean(hm);
		json_object_put(o);
		free(a.body);
		if (!more || !*after)
			break;
	}
	return 0;
}

/* POST /v1/payment_intents/<id>/<verb> (or, with verb NULL, GET the intent), the key's. */
static enum pay_outcome intent_call(struct processor *p, const struct pay_ref *ref, const char *verb,
				    struct pay_result *out)
{
	struct stripe *s = ST(p);
	char id[128], path[300], key[160];
	struct answer a;
	struct json_object *o;
	enum pay_outcome res;

	memset(out, 0, sizeof(*out));
	if (find_intent(s, ref, id, sizeof(id), out))
		return out->outcome;
	if (!*id) {
		out->state = PAYS_NONE;
		snprintf(out->msg, sizeof(out->msg), "stripe: no PaymentIntent under this key");
		return out->outcome = verb && !strcmp(verb, "capture") ? PAY_INVALID : PAY_OK;
	}
	if (verb) {
		snprintf(path, sizeof(path), "/v1/payment_intents/%s/%s", id, verb);
		snprintf(key, sizeof(key), "%s-%s", ref->key, verb);
		o = call(s, "POST", path, "expand[]=latest_charge", key, 0, &a);
	} else {
		snprintf(path, sizeof(path), "/v1/payment_intents/%s?expand[]=latest_charge", id);
		o = call(s, "GET", path, NULL, NULL, 0, &a);
	}
	res = outcome_of(&a, o, out);
	json_object_put(o);
	free(a.body);
	return res;
}

static enum pay_outcome stripe_capture(struct processor *p, const struct pay_ref *ref, struct pay_result *out)
{
	enum pay_outcome o = intent_call(p, ref, "capture", out);

	/* captured before (a retry after a lost answer): done */
	if (o == PAY_INVALID && intent_call(p, ref, NULL, out) == PAY_OK && out->state == PAYS_CAPTURED)
		o = PAY_OK;
	return out->outcome = o;
}

static enum pay_outcome stripe_cancel(struct processor *p, const struct pay_ref *ref, struct pay_result *out)
{
	enum pay_outcome o = intent_call(p, ref, NULL, out);

	if (o != PAY_OK && o != PAY_DECLINED && o != PAY_ACTION_REQUIRED)
		return o;
	switch (out->state) {
	case PAYS_NONE:
		return out->outcome = PAY_OK;
	case PAYS_VOIDED:
		return out->outcome = PAY_OK;
	case PAYS_DECLINED:
		/* nothing held: a card that failed leaves the intent waiting for another; closed here */
	case PAYS_AUTHORIZED:
	case PAYS_REQUIRES_ACTION:
		o = intent_call(p, ref, "cancel", out);
		if (o == PAY_DECLINED)
			o = out->outcome = PAY_OK;
		return o;
	case PAYS_CAPTURED:
		snprintf(out->msg, sizeof(out->msg), "stripe: captured already; refund it instead");
		return out->outcome = PAY_INVALID;
	}
	return o;
}

static enum pay_outcome stripe_lookup(struct processor *p, const struct pay_ref *ref, struct pay_result *out)
{
	enum pay_outcome o = intent_call(p, ref, NULL, out);

	/* what the intent is in, not what an earlier call of it ended with */
	return out->outcome = o == PAY_DECLINED || o == PAY_ACTION_REQUIRED ? PAY_OK : o;
}

static enum pay_outcome stripe_refund(struct processor *p, const char *payment_id, const char *refund_key,
				      int64_t max_cents, struct pay_result *out)
{
	struct stripe *s = ST(p);
	char path[300];
	struct answer a;
	struct json_object *o, *data;
	const struct pay_ref ref = {refund_key, payment_id, NULL, NULL};
	enum pay_outcome res;

	/* the refund made under this key before (a retry), by its metadata */
	memset(out, 0, sizeof(*out));
	if (!id_shaped(payment_id)) {
		snprintf(out->msg, sizeof(out->msg), "stripe: not a PaymentIntent id");
		return out->outcome = PAY_INVALID;
	}
	snprintf(path, sizeof(path), "/v1/refunds?payment_intent=%s&limit=100", payment_id);
	o = call(s, "GET", path, NULL, NULL, 0, &a);
	if (a.status >= 200 && a.status < 300 && json_object_object_get_ex(o, "data", &data)) {
		for (size_t i = 0; i < json_object_array_length(data); i++) {
			struct json_object *rf = json_object_array_get_idx(data, i);
			const char *k = jsonx_str(jsonx_obj(rf, "metadata"), "numatix_refund"), *rid = jsonx_str(rf, "id");
			if (k && !strcmp(k, refund_key)) {
				snprintf(out->refund_id, sizeof(out->refund_id), "%s", rid ? rid : "");
				out->refunded_cents = jsonx_int(rf, "amount");
				json_object_put(o);
				free(a.body);
				return out->outcome = PAY_OK;
			}
		}
	} else {
		res = outcome_of(&a, o, out);
		json_object_put(o);
		free(a.body);
		return out->outcome = res == PAY_OK ? PAY_UNKNOWN : res;
	}
	json_object_put(o);
	free(a.body);
	/* what is left of the payment */
	if ((res = intent_call(p, &ref, NULL, out)) != PAY_OK)
		return res;
	if (out->state != PAYS_CAPTURED) {
		snprintf(out->msg, sizeof(out->msg), "stripe: nothing captured to refund");
		return out->outcome = PAY_INVALID;
	}
	int64_t left = out->amount_cents - out->refunded_cents, amount = max_cents < left ? max_cents : left;
	if (amount <= 0) {
		out->refunded_cents = 0;
		return out->outcome = PAY_OK;
	}
	struct form f;
	char *body;
	form_open(&f);
	form_add(&f, "payment_intent", payment_id);
	form_int(&f, "amount", amount);
	form_add(&f, "metadata[numatix_refund]", refund_key);
	body = form_close(&f);
	o = call(s, "POST", "/v1/refunds", body, refund_key, 0, &a);
	free(body);
	memset(out, 0, sizeof(*out));
	if (a.status >= 200 && a.status < 300 && jsonx_str(o, "id")) {
		snprintf(out->refund_id, sizeof(out->refund_id), "%s", jsonx_str(o, "id"));
		out->refunded_cents = jsonx_int(o, "amount");
		out->state = PAYS_CAPTURED;
		res = out->outcome = PAY_OK;
	} else {
		res = outcome_of(&a, o, out);
		if (res == PAY_OK)
			res = out->outcome = PAY_UNKNOWN;
	}
	json_object_put(o);
	free(a.body);
	return res;
}

/* --- signed events ---------------------------------------------------------------------------- */

int stripe_signature_check(const char *header, const char *body, size_t len, char *const *secrets, int64_t now_s,
			   int tolerance_s, char *why, size_t whylen)
{
	int64_t t = -1;
	const char *p = header;
	bool any = false;

	if (!header || !*header) {
		snprintf(why, whylen, "no Stripe-Signature header");
		return -1;
	}
	if (!secrets || !*secrets) {
		snprintf(why, whylen, "no webhook secret is set (NUMATIX_STRIPE_WEBHOOK_SECRET)");
		return -1;
	}
	/* the timestamp first: every v1 is of "<t>.<body>" */
	for (p = header; *p; p += strcspn(p, ",") + (p[strcspn(p, ",")] == ',')) {
		if (!strncmp(p, "t=", 2)) {
			char *end;
			long long v = strtoll(p + 2, &end, 10);
			if (end != p + 2 && (*end == ',' || !*end))
				t = v;
		}
	}
	if (t < 0) {
		snprintf(why, whylen, "the signature has no timestamp");
		return -1;
	}
	if (t < now_s - tolerance_s || t > now_s + tolerance_s) {
		snprintf(why, whylen, "the signature's timestamp is outside the tolerance of %d s", tolerance_s);
		return -1;
	}
	/* the signed text: "<t>.<raw body>" */
	char prefix[32];
	int n = snprintf(prefix, sizeof(prefix), "%lld.", (long long)t);
	unsigned char *msg = xmalloc((size_t)n + len + 1);
	memcpy(msg, prefix, (size_t)n);
	memcpy(msg + n, body, len);
	for (char *const *s = secrets; *s; s++) {
		unsigned char mac[EVP_MAX_MD_SIZE];
		unsigned int maclen = 0;
		char hex[2 * EVP_MAX_MD_SIZE + 1];
		if (!HMAC(EVP_sha256(), *s, (int)strlen(*s), msg, (size_t)n + len, mac, &maclen)) {
			free(msg);
			snprintf(why, whylen, "HMAC failed");
			return -1;
		}
		hex_encode(mac, maclen, hex);
		for (p = header; *p; p += strcspn(p, ",") + (p[strcspn(p, ",")] == ',')) {
			size_t l = strcspn(p, ",");
			if (l > 3 && !strncmp(p, "v1=", 3)) {
				any = true;
				char got[2 * EVP_MAX_MD_SIZE + 1];
				snprintf(got, sizeof(got), "%.*s", (int)(l - 3), p + 3);
				if (secret_equal(got, hex)) {
					free(msg);
					return 0;
				}
			}
		}
	}
	free(msg);
	snprintf(why, whylen, any ? "no signature matches a webhook secret" : "the header has no v1 signature");
	return -1;
}

static int stripe_verify_event(struct processor *p, const char *body, size_t len, const char *signature, int64_t now_s,
			       char *why, size_t whylen)
{
	return stripe_signature_check(signature, body, len, ST(p)->webhook_secrets, now_s, STRIPE_SIGNATURE_TOLERANCE_S,
				      why, whylen);
}

static void stripe_close(struct processor *p)
{
	struct stripe *s = ST(p);

	free(s->secret_key);
	free(s->api_base);
	free(s->currency);
	free(s);
}

static const struct processor_ops stripe_ops = {
	.name = "stripe",
	.customers = true,
	.authorize = stripe_authorize,
	.charge_saved = stripe_charge_saved,
	.capture = stripe_capture,
	.cancel = stripe_cancel,
	.refund = stripe_refund,
	.lookup = stripe_lookup,
	.verify_event = stripe_verify_event,
	.close = stripe_close,
};

struct processor *processor_stripe_open(const char *secret_key, const char *api_base, const char *currency,
					char *const *webhook_secrets)
{
	struct stripe *s = xcalloc(1, sizeof(*s));
	size_t n;

	/* before any thread makes a handle (processor_shared opens this under its lock) */
	curl_global_init(CURL_GLOBAL_DEFAULT);
	s->base.ops = &stripe_ops;
	s->secret_key = xstrdup(secret_key);
	s->api_base = xstrdup(api_base);
	n = strlen(s->api_base);
	while (n && s->api_base[n - 1] == '/')
		s->api_base[--n] = '\0';
	s->currency = xstrdup(currency);
	s->webhook_secrets = webhook_secrets;
	return &s->base;
}
