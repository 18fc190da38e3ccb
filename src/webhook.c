/* webhook.c - endpoints, signatures, and the sender: one pass delivers the events due to every
 * enabled endpoint, in feed order, over libcurl. */
#include "webhook.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"
#include "version.h"
#include "view.h"

#define LEASE_MS 20000           /* renewed before each delivery, which takes at most WEBHOOK_TIMEOUT_S */
#define FEED_PAGE 100
#define PASS_BUDGET 500           /* deliveries per endpoint per pass: others get their turn */

int webhook_create(struct ledger *lg, const char *url, const char *events, const char *description,
		   struct webhook *out, struct err *e)
{
	struct webhook *all = NULL;
	unsigned char key[16];
	size_t n = 0;

	if (ledger_webhook_list(lg, &all, &n, e))
		return -1;
	for (size_t i = 0; i < n; i++)
		webhook_clear(&all[i]);
	free(all);
	if (n >= WEBHOOKS_MAX) {
		err_set(e, ERR_CONFLICT, "WEBHOOK_LIMIT_REACHED", "%d webhook endpoints exist", WEBHOOKS_MAX);
		return -1;
	}
	memset(out, 0, sizeof(*out));
	id_new(out->id);
	out->url = xstrdup(url);
	out->events = xstrdup(events);
	out->description = xstrdup(description ? description : "");
	random_bytes(key, sizeof(key));
	memcpy(out->secret, "whsec_", 6);
	hex_encode(key, sizeof(key), out->secret + 6);
	snprintf(out->status, sizeof(out->status), "enabled");
	out->created_at = now_ms();
	return lg->store->ops->webhook_create(lg->store, out, e);
}

void webhook_sign(const char *secret, int64_t t, const char *body, size_t len, char out[WEBHOOK_SIG_LEN])
{
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;
	char stamp[24], hex[2 * EVP_MAX_MD_SIZE + 1];
	int n = snprintf(stamp, sizeof(stamp), "%" PRId64 ".", t);
	unsigned char *msg = xmalloc((size_t)n + len + 1);

	memcpy(msg, stamp, (size_t)n);
	memcpy(msg + n, body, len);
	if (!HMAC(EVP_sha256(), secret, (int)strlen(secret), msg, (size_t)n + len, mac, &maclen))
		abort();
	free(msg);
	hex_encode(mac, maclen, hex);
	snprintf(out, WEBHOOK_SIG_LEN, "t=%" PRId64 ",v1=%.64s", t, hex);
}

bool webhook_takes(const char *events, const char *type)
{
	struct json_object *a = json_tokener_parse(events);
	bool takes = false;

	for (size_t i = 0; a && json_object_is_type(a, json_type_array) && i < json_object_array_length(a); i++) {
		const char *t = json_object_get_string(json_object_array_get_idx(a, i));
		if (t && (!strcmp(t, "*") || !strcmp(t, type)))
			takes = true;
	}
	json_object_put(a);
	return takes;
}

bool webhook_retry(int attempts, int64_t first_at, int64_t now, int64_t retry_ms, int64_t *next_at)
{
	int64_t delay = WEBHOOK_FIRST_RETRY_MS;

	for (int i = 1; i < attempts && delay < WEBHOOK_MAX_RETRY_MS; i++)
		delay *= 2;
	if (delay > WEBHOOK_MAX_RETRY_MS)
		delay = WEBHOOK_MAX_RETRY_MS;
	if (now - first_at >= retry_ms)
		return false;
	*next_at = now + delay;
	return true;
}

/* --- the sender --------------------------------------------------------------------------- */

/* libcurl hands the answer's body here: it is not kept. */
static size_t discard(char *p, size_t size, size_t n, void *arg)
{
	(void)p;
	(void)arg;
	return size * n;
}

/* POSTs body to the endpoint: the HTTP status (0 when none came) and, on failure, why. */
static long post(CURL *c, const struct webhook *w, const char *event_id, const char *body, char *why, size_t whylen)
{
	char sig[WEBHOOK_SIG_LEN], h_sig[WEBHOOK_SIG_LEN + 24], h_id[64];
	struct curl_slist *hs = NULL;
	long status = 0;
	CURLcode rc;

	webhook_sign(w->secret, now_ms() / 1000, body, strlen(body), sig);
	snprintf(h_sig, sizeof(h_sig), "Numatix-Signature: %s", sig);
	snprintf(h_id, sizeof(h_id), "Numatix-Event-Id: %s", event_id);
	hs = curl_slist_append(hs, "Content-Type: application/json");
	hs = curl_slist_append(hs, h_sig);
	hs = curl_slist_append(hs, h_id);
	hs = curl_slist_append(hs, "Expect:");
	curl_easy_reset(c);
	curl_easy_setopt(c, CURLOPT_URL, w->url);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hs);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "Numatix-Webhooks/" NUMATIX_VERSION);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)WEBHOOK_TIMEOUT_S);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 5L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
	rc = curl_easy_perform(c);
	if (rc == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	if (rc != CURLE_OK)
		snprintf(why, whylen, "%s", curl_easy_strerror(rc));
	else if (status < 200 || status > 299)
		snprintf(why, whylen, "HTTP %ld", status);
	else
		why[0] = '\0';
	curl_slist_free_all(hs);
	return status;
}

/* The event as an endpoint receives it: the feed's event without its trace id. New, free(). */
static char *event_body(const struct audit_event *ev)
{
	struct json_object *o = view_feed_event(ev);
	char *body;

	json_object_object_del(o, "traceId");
	body = xstrdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	json_object_put(o);
	return body;
}

/* The delivery of seq under way for the endpoint (its newest, if it is that event's). */
static int delivery_of(struct ledger *lg, const char *endpoint_id, int64_t seq, struct delivery *d, bool *had,
		       struct err *e)
{
	struct seq_page pg = {.limit = 1};
	struct delivery *rows = NULL;
	size_t n = 0;

	*had = false;
	if (lg->store->ops->delivery_list(lg->store, endpoint_id, &pg, &rows, &n, e))
		return -1;
	if (n == 1 && rows[0].seq == seq) {
		*d = rows[0];
		*had = true;
	}
	free(rows);
	return 0;
}

struct sender {
	struct ledger *lg;
	CURL *curl;
	const char *holder;
	int64_t retry_ms;
	bool (*stop)(void);
	struct deliver_stats *st;
};

/* Tries one event: 1 when the endpoint may go on to the next, 0 when it must wait (a retry is
 * due later, or it is disabled), -1 on a store error. *cursor moves past a delivered or failed
 * event; the step is kept with the cursor. */
static int deliver_one(struct sender *x, const struct webhook *w, const struct audit_event *ev, int64_t *cursor,
		       struct err *e)
{
	struct delivery d = {0};
	int64_t now = now_ms();
	bool had, taken, disable = false;
	char *body;
	int go = 1;

	if (delivery_of(x->lg, w->id, ev->seq, &d, &had, e))
		return -1;
	if (had && d.next_attempt_at > now)
		return 0;
	/* the lease renewed before a call that may take WEBHOOK_TIMEOUT_S */
	if (x->lg->store->ops->lease_take(x->lg->store, WEBHOOK_LEASE, x->holder, now, now + LEASE_MS, &taken, e))
		return -1;
	if (!taken)
		return 0;
	if (!had) {
		snprintf(d.endpoint_id, sizeof(d.endpoint_id), "%s", w->id);
		d.seq = ev->seq;
		snprintf(d.event_id, sizeof(d.event_id), "%s", ev->id);
		d.first_attempt_at = now;
	}
	body = event_body(ev);
	d.last_status = (int)post(x->curl, w, ev->id, body, d.last_error, sizeof(d.last_error));
	free(body);
	d.attempts++;
	d.updated_at = now = now_ms();
	d.next_attempt_at = 0;
	if (!d.last_error[0]) {
		snprintf(d.state, sizeof(d.state), "delivered");
		*cursor = ev->seq;
		x->st->delivered++;
	} else if (d.last_status == 410) {
		/* the receiver says it is gone for good */
		snprintf(d.state, sizeof(d.state), "failed");
		disable = true;
		go = 0;
		x->st->failed++;
		LOG_WARN(NULL, "webhook %s answered 410 Gone: disabled", w->id);
	} else if (webhook_retry(d.attempts, d.first_attempt_at, now, x->retry_ms, &d.next_attempt_at)) {
		snprintf(d.state, sizeof(d.state), "pending");
		go = 0;
		x->st->retrying++;
	} else {
		snprintf(d.state, sizeof(d.state), "failed");
		*cursor = ev->seq;
		x->st->failed++;
		LOG_WARN(NULL, "webhook %s: event %" PRId64 " failed after %d attempts (%s)", w->id, ev->seq,
			 d.attempts, d.last_error);
	}
	return x->lg->store->ops->webhook_advance(x->lg->store, w->id, &d, *cursor, disable, e) ? -1 : go;
}

/* The events due to one endpoint, in order, until it must wait or the budget ends. */
static int endpoint_pass(struct sender *x, const struct webhook *w, struct err *e)
{
	int64_t cursor = w->cursor, kept = w->cursor;
	int budget = PASS_BUDGET, go = 1;

	while (go > 0 && budget > 0) {
		struct audit_event *ev = NULL;
		size_t n = 0, i;

		if (ledger_feed(x->lg, cursor, NULL, FEED_PAGE, &ev, &n, e))
			return -1;
		if (n == 0)
			go = 0;
		for (i = 0; i < n && go > 0 && budget > 0; i++) {
			if (x->stop && x->stop()) {
				go = 0;
			} else if (!webhook_takes(w->events, ev[i].action)) {
				cursor = ev[i].seq;   /* not its kind: passed over */
			} else {
				go = deliver_one(x, w, &ev[i], &cursor, e);
				kept = cursor;
				budget--;
			}
		}
		for (i = 0; i < n; i++)
			audit_event_clear(&ev[i]);
		free(ev);
	}
	if (go < 0)
		return -1;
	/* events passed over since the last step kept: the cursor moves past them too */
	if (cursor > kept)
		return x->lg->store->ops->webhook_advance(x->lg->store, w->id, NULL, cursor, false, e);
	return 0;
}

int webhook_deliver(struct ledger *lg, const char *holder, int64_t retry_ms, bool (*stop)(void),
		    struct deliver_stats *st, struct err *e)
{
	struct store *s = lg->store;
	struct webhook *all = NULL;
	struct sender x = {lg, NULL, holder, retry_ms, stop, st};
	int64_t now = now_ms();
	size_t n = 0;
	bool taken;
	int rc = 0;

	memset(st, 0, sizeof(*st));
	if (s->ops->lease_take(s, WEBHOOK_LEASE, holder, now, now + LEASE_MS, &taken, e))
		return -1;
	if (!taken)
		return 0;
	st->ran = true;
	if (ledger_webhook_list(lg, &all, &n, e))
		rc = -1;
	for (size_t i = 0; i < n; i++) {
		if (rc == 0 && !strcmp(all[i].status, "enabled")) {
			if (!x.curl && !(x.curl = curl_easy_init())) {
				err_set(e, ERR_INTERNAL, NULL, "curl_easy_init failed");
				rc = -1;
			} else {
				rc = endpoint_pass(&x, &all[i], e);
			}
		}
		webhook_clear(&all[i]);
	}
	free(all);
	if (x.curl)
		curl_easy_cleanup(x.curl);
	{
		/* Give the lease back, so the next pass (from any machine) need not wait it out. */
		struct err ignored = {0};
		s->ops->lease_take(s, WEBHOOK_LEASE, holder, now_ms(), 0, &taken, &ignored);
	}
	return rc;
}
