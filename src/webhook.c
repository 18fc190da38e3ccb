/* webhook.c - endpoints, signatures, and the sender: one pass delivers the events due to every
 * enabled endpoint, each in feed order and all at once (libcurl's multi interface: one transfer
 * in flight per endpoint), so a slow receiver holds up only its own deliveries. */
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
#include "trace.h"
#include "util.h"
#include "version.h"
#include "view.h"

#define LEASE_MS 20000           /* renewed before each delivery, which takes at most WEBHOOK_TIMEOUT_S */
#define FEED_PAGE 100
#define PASS_BUDGET 10000         /* deliveries of one pass, all endpoints together */
#define LOOK_AGAIN_MS 1000        /* while a pass runs: endpoints listed again, idle ones look for events */

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

/* Sets c up to POST body to the endpoint, signed now; hs: the headers, free with
 * curl_slist_free_all once the transfer is done. */
static void post_prepare(CURL *c, const struct webhook *w, const struct audit_event *ev, const char *body,
			 struct curl_slist **hs)
{
	char sig[WEBHOOK_SIG_LEN], h_sig[WEBHOOK_SIG_LEN + 24], h_id[64], span[SPAN_ID_LEN + 1];
	char parent[TRACEPARENT_LEN + 1], h_parent[TRACEPARENT_LEN + 16];

	webhook_sign(w->secret, now_ms() / 1000, body, strlen(body), sig);
	snprintf(h_sig, sizeof(h_sig), "Numatix-Signature: %s", sig);
	snprintf(h_id, sizeof(h_id), "Numatix-Event-Id: %s", ev->id);
	/* the trace of the request that made the event, a span of the delivery's own */
	span_new(span);
	traceparent_format(*ev->trace_id ? ev->trace_id : ev->id, span, "01", parent);
	snprintf(h_parent, sizeof(h_parent), "traceparent: %s", parent);
	*hs = curl_slist_append(NULL, "Content-Type: application/json");
	*hs = curl_slist_append(*hs, h_sig);
	*hs = curl_slist_append(*hs, h_id);
	*hs = curl_slist_append(*hs, h_parent);
	*hs = curl_slist_append(*hs, "Expect:");
	curl_easy_reset(c);
	curl_easy_setopt(c, CURLOPT_URL, w->url);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, *hs);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "Numatix-Webhooks/" NUMATIX_VERSION);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)WEBHOOK_TIMEOUT_S);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 5L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
}

/* A finished transfer: the HTTP status (0 when none came) and, on failure, why. */
static long post_result(CURL *c, CURLcode rc, char *why, size_t whylen)
{
	long status = 0;

	if (rc == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	if (rc != CURLE_OK)
		snprintf(why, whylen, "%s", curl_easy_strerror(rc));
	else if (status < 200 || status > 299)
		snprintf(why, whylen, "HTTP %ld", status);
	else
		why[0] = '\0';
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
	const char *holder;
	int64_t retry_ms;
	bool (*stop)(void);
	struct deliver_stats *st;
	int budget;                   /* deliveries this pass may still start */
	bool lost;                    /* the lease went to another sender */
};

/* One endpoint's part of a pass: its events in feed order, one in flight at a time, while
 * every other endpoint's go on beside it (a slow receiver holds up only its own). */
struct lane {
	struct webhook w;             /* its endpoint as last listed (owned) */
	CURL *curl;
	struct curl_slist *headers;
	char *body;
	struct audit_event *page;     /* the feed after cursor, read ahead */
	size_t npage, at;
	struct delivery d;            /* the attempt in flight */
	int64_t cursor, kept;         /* events passed up to; the cursor the store keeps */
	int64_t look_at;              /* while idle: when to look for events again */
	bool busy, closed;            /* closed: nothing more this pass */
	bool listed;                  /* seen in the last listing */
};

static void lane_page_clear(struct lane *l)
{
	for (size_t i = 0; i < l->npage; i++)
		audit_event_clear(&l->page[i]);
	free(l->page);
	l->page = NULL;
	l->npage = l->at = 0;
}

/* Nothing due now: look again in a while (sooner when a retry is due sooner). */
static void lane_idle(struct lane *l, int64_t now, int64_t due)
{
	l->look_at = due && due < now + LOOK_AGAIN_MS ? due : now + LOOK_AGAIN_MS;
}

/* Starts the endpoint's next due event, or leaves the lane idle or closed. 0, or -1 on a
 * store error. */
static int lane_start(struct sender *x, struct lane *l, CURLM *m, struct err *e)
{
	int64_t now = now_ms();
	bool had, taken;

	for (;;) {
		struct audit_event *ev;

		if (x->budget <= 0 || x->lost || (x->stop && x->stop())) {
			l->closed = true;
			return 0;
		}
		if (l->at == l->npage) {
			lane_page_clear(l);
			if (ledger_feed(x->lg, l->cursor, NULL, FEED_PAGE, &l->page, &l->npage, e))
				return -1;
			if (l->npage == 0) {
				lane_idle(l, now, 0);
				return 0;
			}
		}
		ev = &l->page[l->at];
		if (!webhook_takes(l->w.events, ev->action)) {
			l->cursor = ev->seq;   /* not its kind: passed over */
			l->at++;
			continue;
		}
		memset(&l->d, 0, sizeof(l->d));
		if (delivery_of(x->lg, l->w.id, ev->seq, &l->d, &had, e))
			return -1;
		if (had && l->d.next_attempt_at > now) {
			lane_idle(l, now, l->d.next_attempt_at);
			return 0;
		}
		/* the lease renewed before a call that may take WEBHOOK_TIMEOUT_S */
		if (x->lg->store->ops->lease_take(x->lg->store, WEBHOOK_LEASE, x->holder, now, now + LEASE_MS, &taken, e))
			return -1;
		if (!taken) {
			x->lost = true;
			l->closed = true;
			return 0;
		}
		if (!had) {
			snprintf(l->d.endpoint_id, sizeof(l->d.endpoint_id), "%s", l->w.id);
			l->d.seq = ev->seq;
			snprintf(l->d.event_id, sizeof(l->d.event_id), "%s", ev->id);
			l->d.first_attempt_at = now;
		}
		l->body = event_body(ev);
		post_prepare(l->curl, &l->w, ev, l->body, &l->headers);
		curl_easy_setopt(l->curl, CURLOPT_PRIVATE, l);
		if (curl_multi_add_handle(m, l->curl) != CURLM_OK) {
			err_set(e, ERR_INTERNAL, NULL, "curl_multi_add_handle failed");
			return -1;
		}
		l->busy = true;
		l->at++;
		return 0;
	}
}

/* The attempt in flight ended: kept with the cursor; then the next event, unless the endpoint
 * must wait (a retry is due later) or is disabled. 0, or -1 on a store error. */
static int lane_finish(struct sender *x, struct lane *l, CURLM *m, CURLcode res, struct err *e)
{
	struct delivery *d = &l->d;
	bool disable = false, go = true;
	int64_t now;

	curl_multi_remove_handle(m, l->curl);
	l->busy = false;
	d->last_status = (int)post_result(l->curl, res, d->last_error, sizeof(d->last_error));
	curl_slist_free_all(l->headers);
	l->headers = NULL;
	free(l->body);
	l->body = NULL;
	d->attempts++;
	d->updated_at = now = now_ms();
	d->next_attempt_at = 0;
	x->budget--;
	if (!d->last_error[0]) {
		snprintf(d->state, sizeof(d->state), "delivered");
		l->cursor = d->seq;
		x->st->delivered++;
	} else if (d->last_status == 410) {
		/* the receiver says it is gone for good */
		snprintf(d->state, sizeof(d->state), "failed");
		disable = true;
		x->st->failed++;
		LOG_WARN(NULL, "webhook %s answered 410 Gone: disabled", l->w.id);
	} else if (webhook_retry(d->attempts, d->first_attempt_at, now, x->retry_ms, &d->next_attempt_at)) {
		snprintf(d->state, sizeof(d->state), "pending");
		go = false;
		x->st->retrying++;
	} else {
		snprintf(d->state, sizeof(d->state), "failed");
		l->cursor = d->seq;
		x->st->failed++;
		LOG_WARN(NULL, "webhook %s: event %" PRId64 " failed after %d attempts (%s)", l->w.id, d->seq,
			 d->attempts, d->last_error);
	}
	if (x->lg->store->ops->webhook_advance(x->lg->store, l->w.id, d, l->cursor, disable, e))
		return -1;
	l->kept = l->cursor;
	if (disable) {
		l->closed = true;
		return 0;
	}
	if (!go) {
		/* the event is read again once its retry is due */
		lane_page_clear(l);
		lane_idle(l, now, d->next_attempt_at);
		return 0;
	}
	return lane_start(x, l, m, e);
}

/* Ends a lane's transfer in flight, unrecorded (its endpoint is gone). */
static void lane_abort(struct lane *l, CURLM *m)
{
	if (!l->busy)
		return;
	curl_multi_remove_handle(m, l->curl);
	l->busy = false;
	curl_slist_free_all(l->headers);
	l->headers = NULL;
	free(l->body);
	l->body = NULL;
}

static void lane_free(struct lane *l, CURLM *m)
{
	lane_abort(l, m);
	lane_page_clear(l);
	curl_easy_cleanup(l->curl);
	webhook_clear(&l->w);
}

/* The lanes as the store lists the endpoints now: a new enabled endpoint gets one (from its
 * cursor), one deleted or disabled is closed, its transfer in flight dropped. */
static int lanes_list(struct sender *x, struct lane *lanes, size_t *n, CURLM *m, struct err *e)
{
	struct webhook *all = NULL;
	size_t na = 0;

	if (ledger_webhook_list(x->lg, &all, &na, e))
		return -1;
	for (size_t i = 0; i < *n; i++)
		lanes[i].listed = false;
	for (size_t j = 0; j < na; j++) {
		size_t i;
		for (i = 0; i < *n && strcmp(lanes[i].w.id, all[j].id); i++)
			;
		if (i < *n) {
			lanes[i].listed = !strcmp(all[j].status, "enabled");
		} else if (!strcmp(all[j].status, "enabled") && *n < WEBHOOKS_MAX) {
			struct lane *l = &lanes[(*n)++];
			*l = (struct lane){.w = all[j], .cursor = all[j].cursor, .kept = all[j].cursor, .listed = true};
			memset(&all[j], 0, sizeof(all[j]));      /* its strings now the lane's */
			if (!(l->curl = curl_easy_init())) {
				err_set(e, ERR_INTERNAL, NULL, "curl_easy_init failed");
				(*n)--;
				webhook_clear(&l->w);
				break;
			}
		}
	}
	for (size_t j = 0; j < na; j++)
		webhook_clear(&all[j]);
	free(all);
	for (size_t i = 0; i < *n; i++)
		if (!lanes[i].listed && !lanes[i].closed) {
			lane_abort(&lanes[i], m);
			lanes[i].closed = true;
		}
	return e->kind == ERR_NONE ? 0 : -1;
}

/* Every enabled endpoint's lane, each in feed order and concurrently with the others, while any
 * has a delivery in flight: meanwhile the endpoints are listed again and idle lanes look for new
 * events every LOOK_AGAIN_MS, so a slow receiver never holds up another's events, and an
 * endpoint made or deleted during a pass joins or leaves it within that time. */
static int run_lanes(struct sender *x, struct lane *lanes, size_t *n, CURLM *m, struct err *e)
{
	int64_t listed_at = now_ms();
	bool busy;

	for (size_t i = 0; i < *n; i++)
		if (lane_start(x, &lanes[i], m, e))
			return -1;
	do {
		CURLMsg *msg;
		int running, left;
		int64_t now;

		if (curl_multi_perform(m, &running) != CURLM_OK) {
			err_set(e, ERR_INTERNAL, NULL, "curl_multi_perform failed");
			return -1;
		}
		while ((msg = curl_multi_info_read(m, &left))) {
			struct lane *l = NULL;
			if (msg->msg != CURLMSG_DONE)
				continue;
			curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&l);
			if (lane_finish(x, l, m, msg->data.result, e))
				return -1;
		}
		now = now_ms();
		if (now - listed_at >= LOOK_AGAIN_MS) {
			if (lanes_list(x, lanes, n, m, e))
				return -1;
			listed_at = now;
		}
		busy = false;
		for (size_t i = 0; i < *n; i++) {
			struct lane *l = &lanes[i];
			if (!l->busy && !l->closed && l->look_at <= now && lane_start(x, l, m, e))
				return -1;
			busy = busy || l->busy;
		}
		if (busy && curl_multi_poll(m, NULL, 0, 100, NULL) != CURLM_OK) {
			err_set(e, ERR_INTERNAL, NULL, "curl_multi_poll failed");
			return -1;
		}
	} while (busy);
	return 0;
}

int webhook_deliver(struct ledger *lg, const char *holder, int64_t retry_ms, bool (*stop)(void),
		    struct deliver_stats *st, struct err *e)
{
	struct store *s = lg->store;
	struct lane *lanes = NULL;
	struct sender x = {lg, holder, retry_ms, stop, st, PASS_BUDGET, false};
	int64_t now = now_ms();
	CURLM *m = NULL;
	size_t n = 0;
	bool taken;
	int rc = -1;

	memset(st, 0, sizeof(*st));
	if (s->ops->lease_take(s, WEBHOOK_LEASE, holder, now, now + LEASE_MS, &taken, e))
		return -1;
	if (!taken)
		return 0;
	st->ran = true;
	lanes = xcalloc(WEBHOOKS_MAX, sizeof(*lanes));
	if (!(m = curl_multi_init())) {
		err_set(e, ERR_INTERNAL, NULL, "curl_multi_init failed");
		goto out;
	}
	if (lanes_list(&x, lanes, &n, m, e))
		goto out;
	rc = run_lanes(&x, lanes, &n, m, e);
out:
	for (size_t i = 0; i < n; i++) {
		struct lane *l = &lanes[i];
		struct err ae = {0};
		/* events passed over since the last step kept: the cursor moves past them too */
		if (rc == 0 && l->listed && l->cursor > l->kept &&
		    s->ops->webhook_advance(s, l->w.id, NULL, l->cursor, false, &ae)) {
			*e = ae;
			rc = -1;
		}
		lane_free(l, m);
	}
	free(lanes);
	if (m)
		curl_multi_cleanup(m);
	{
		/* Give the lease back, so the next pass (from any machine) need not wait it out. */
		struct err ignored = {0};
		s->ops->lease_take(s, WEBHOOK_LEASE, holder, now_ms(), 0, &taken, &ignored);
	}
	return rc;
}
