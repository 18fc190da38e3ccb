/* store_mongo.c - the MongoDB store on libmongoc.
 *
 * A seat is taken by one findAndModify filtered on {_id, status: "active",
 * subscriptions_left: {$gt: 0}} with $inc: MongoDB applies it to the one document atomically,
 * whatever the number of workers or machines. A primitive that touches several documents (the
 * hold with its key, customer, subscription and events; a transition with its payment, events
 * and reply) runs in a short multi-document transaction, w: "majority", read concern
 * "snapshot", retried on TransientTransactionError and UnknownTransactionCommitResult as the
 * driver documents. No transaction ever spans the payment call. Transactions need a replica
 * set: on a standalone mongod the store refuses to serve and says how to fix it.
 *
 * One mongoc client per worker process, made after fork by store_open. */
#include <mongoc/mongoc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store_impl.h"
#include "util.h"

#define SERVER_SELECTION_MS 3000

struct mg {
	struct store base;
	mongoc_client_t *client;
	mongoc_database_t *db;
	mongoc_collection_t *plans, *customers, *subs, *keys, *payments, *audit, *leases;
	mongoc_collection_t *counters;       /* the event feed's last position */
	mongoc_collection_t *webhooks, *deliveries;
	mongoc_collection_t *waitlist;
	mongoc_collection_t *mail;           /* the outbox */
	mongoc_collection_t *links, *link_limits, *sessions;  /* customers' sign-in */
	char not_replset[320];       /* non-empty: a standalone server, and how to fix it */
};

#define MG(s) ((struct mg *)(s))

/* --- errors ------------------------------------------------------------------------------- */

static bool is_duplicate_key(const bson_error_t *be)
{
	return be->code == 11000 || be->code == 11001;
}

/* Maps a driver or server error to the store's error kinds. */
static int mg_fail(const bson_error_t *be, const bson_t *reply, struct err *e, const char *what)
{
	if (is_duplicate_key(be)) {
		/* Only a duplicate key is a conflict: each caller turns it into its outcome. */
		err_set(e, ERR_CONFLICT, NULL, "%s: duplicate key: %s", what, be->message);
	} else if (be->code == 112 /* WriteConflict */ || be->code == 251 /* NoSuchTransaction */ ||
		   (reply && mongoc_error_has_label(reply, "TransientTransactionError"))) {
		err_set(e, ERR_RETRYABLE, NULL, "%s: transient: %s", what, be->message);
	} else {
		/* Network errors, server selection, "not primary" (10107, 13435), timeouts: the store
		 * cannot be reached now; the client retries. */
		err_set(e, ERR_UNAVAILABLE, NULL, "%s: %s (domain %u, code %u)", what,
			be->message, be->domain, be->code);
	}
	return -1;
}

static int refuse_standalone(struct mg *s, struct err *e)
{
	if (!*s->not_replset)
		return 0;
	err_set(e, ERR_UNAVAILABLE, NULL, "%s", s->not_replset);
	return -1;
}

/* --- BSON helpers ------------------------------------------------------------------------- */

static void append_oid(bson_t *b, const char *key, const char *hex)
{
	bson_oid_t oid;

	bson_oid_init_from_string(&oid, hex);
	BSON_APPEND_OID(b, key, &oid);
}

/* A filter {_id: ObjectId(hex)}; new, bson_destroy. */
static bson_t *by_id(const char *hex)
{
	bson_t *b = bson_new();

	append_oid(b, "_id", hex);
	return b;
}

static void get_id(const bson_t *doc, const char *key, char *out, size_t len)
{
	bson_iter_t it;

	out[0] = '\0';
	if (!bson_iter_init_find(&it, doc, key))
		return;
	if (BSON_ITER_HOLDS_OID(&it) && len > 24)
		bson_oid_to_string(bson_iter_oid(&it), out);
	else if (BSON_ITER_HOLDS_UTF8(&it))
		snprintf(out, len, "%s", bson_iter_utf8(&it, NULL));
}

static void get_str(const bson_t *doc, const char *key, char *out, size_t len)
{
	bson_iter_t it;

	out[0] = '\0';
	if (bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_UTF8(&it))
		snprintf(out, len, "%s", bson_iter_utf8(&it, NULL));
}

static char *get_strdup(const bson_t *doc, const char *key)
{
	bson_iter_t it;

	if (bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_UTF8(&it))
		return xstrdup(bson_iter_utf8(&it, NULL));
	return xstrdup("");
}

static int64_t get_int(const bson_t *doc, const char *key)
{
	bson_iter_t it;

	if (!bson_iter_init_find(&it, doc, key))
		return 0;
	if (BSON_ITER_HOLDS_DATE_TIME(&it))
		return bson_iter_date_time(&it);
	return bson_iter_as_int64(&it);
}

/* An integer field, or def when the document has none (written before the field existed). */
static int64_t get_int_or(const bson_t *doc, const char *key, int64_t def)
{
	bson_iter_t it;

	return bson_iter_init_find(&it, doc, key) ? get_int(doc, key) : def;
}

/* The "value" document of a findAndModify reply: true if there is one. */
static bool fam_value(const bson_t *reply, bson_t *out)
{
	bson_iter_t it;
	const uint8_t *data;
	uint32_t len;

	if (!bson_iter_init_find(&it, reply, "value") || !BSON_ITER_HOLDS_DOCUMENT(&it))
		return false;
	bson_iter_document(&it, &len, &data);
	bson_init_static(out, data, len);
	return true;
}

/* Options carrying the session of a transaction (cs may be NULL); new, bson_destroy. */
static bson_t *in_session(mongoc_client_session_t *cs)
{
	bson_t *o = bson_new();

	if (cs)
		mongoc_client_session_append(cs, o, NULL);
	return o;
}

/* One document matching filter into out (a copy); 1 found, 0 none, -1 error. */
static int find_one(mongoc_collection_t *c, const bson_t *filter, const bson_t *sort,
		    mongoc_client_session_t *cs, bson_t **out, struct err *e, const char *what)
{
	bson_t *opts = in_session(cs);
	const bson_t *doc, *errdoc = NULL;
	mongoc_cursor_t *cur;
	bson_error_t be;
	int rc = 0;

	BSON_APPEND_INT64(opts, "limit", 1);
	if (sort)
		BSON_APPEND_DOCUMENT(opts, "sort", sort);
	cur = mongoc_collection_find_with_opts(c, filter, opts, NULL);
	*out = NULL;
	if (mongoc_cursor_next(cur, &doc)) {
		*out = bson_copy(doc);
		rc = 1;
	} else if (mongoc_cursor_error_document(cur, &be, &errdoc)) {
		rc = mg_fail(&be, errdoc, e, what);
	}
	mongoc_cursor_destroy(cur);
	bson_destroy(opts);
	return rc;
}

/* --- transactions ------------------------------------------------------------------------- */

/* A step of a transaction: 0 to commit, 1 to abort because its condition does not hold
 * (nothing written, no error), -1 on error. */
typedef int (*txn_fn)(struct mg *s, mongoc_client_session_t *cs, void *arg, bson_t *reply, struct err *e);

#define TXN_ATTEMPTS 10

/* Before trying a transaction again: a random pause that doubles with the attempt (up to about
 * half a second), so that units that met at one document (the feed's counter) spread out. */
static void backoff(int attempt)
{
	unsigned int r;

	random_bytes(&r, sizeof(r));
	struct timespec ts = {0, (long)(r % (1000u << (attempt < 9 ? attempt : 9))) * 1000L};
	nanosleep(&ts, NULL);
}

/* Runs fn as one multi-document transaction, retried as the driver's documentation shows:
 * the whole transaction again on TransientTransactionError, the commit alone on
 * UnknownTransactionCommitResult (the driver raises its write concern to majority for the
 * retry). The attempts are bounded, unlike mongoc_client_session_with_transaction's two
 * minutes: a request that cannot commit soon answers 503 and the client retries. Returns
 * what fn returned, or -1 when the commit failed. */
static int transaction(struct mg *s, txn_fn fn, void *arg, struct err *e)
{
	mongoc_client_session_t *cs = NULL;
	mongoc_transaction_opt_t *topts = mongoc_transaction_opts_new();
	mongoc_write_concern_t *wc = mongoc_write_concern_new();
	mongoc_read_concern_t *rc_ = mongoc_read_concern_new();
	bson_error_t be;
	bson_t reply;
	int rc = -1;

	bson_init(&reply);
	if (refuse_standalone(s, e))
		goto out;
	mongoc_write_concern_set_wmajority(wc, 10000);
	mongoc_read_concern_set_level(rc_, MONGOC_READ_CONCERN_LEVEL_SNAPSHOT);
	mongoc_transaction_opts_set_write_concern(topts, wc);
	mongoc_transaction_opts_set_read_concern(topts, rc_);
	if (!(cs = mongoc_client_start_session(s->client, NULL, &be))) {
		mg_fail(&be, NULL, e, "start session");
		goto out;
	}
	for (int attempt = 1; attempt <= TXN_ATTEMPTS; attempt++) {
		bool transient = false;

		if (!mongoc_client_session_start_transaction(cs, topts, &be)) {
			mg_fail(&be, NULL, e, "start transaction");
			goto out;
		}
		err_clear(e);
		int r = fn(s, cs, arg, &reply, e);
		if (r) {
			transient = r < 0 && mongoc_error_has_label(&reply, "TransientTransactionError");
			bson_error_t ignored;
			mongoc_client_session_abort_transaction(cs, &ignored);
			if (r > 0) {
				rc = 1;
				goto out;
			}
			if (transient && attempt < TXN_ATTEMPTS) {
				backoff(attempt);
				continue;
			}
			goto out;
		}
		for (int c = 1; c <= TXN_ATTEMPTS; c++) {
			bson_destroy(&reply);
			if (mongoc_client_session_commit_transaction(cs, &reply, &be)) {
				rc = 0;
				goto out;
			}
			if (mongoc_error_has_label(&reply, "UnknownTransactionCommitResult") && c < TXN_ATTEMPTS)
				continue;
			transient = mongoc_error_has_label(&reply, "TransientTransactionError");
			mg_fail(&be, &reply, e, "commit");
			break;
		}
		if (!transient || attempt == TXN_ATTEMPTS)
			goto out;
		backoff(attempt);
	}
out:
	bson_destroy(&reply);
	mongoc_client_session_destroy(cs);
	mongoc_read_concern_destroy(rc_);
	mongoc_write_concern_destroy(wc);
	mongoc_transaction_opts_destroy(topts);
	return rc;
}

/* Inserts doc in the session; the reply is kept for the transaction's labels. */
static int insert(mongoc_collection_t *c, mongoc_client_session_t *cs, const bson_t *doc, bson_t *reply,
		  struct err *e, const char *what)
{
	bson_t *opts = in_session(cs);
	bson_error_t be;
	bool ok;

	bson_destroy(reply);
	ok = mongoc_collection_insert_one(c, doc, opts, reply, &be);
	bson_destroy(opts);
	return ok ? 0 : mg_fail(&be, reply, e, what);
}

/* update_one in the session; returns the number of documents modified, or -1. */
static int update(mongoc_collection_t *c, mongoc_client_session_t *cs, const bson_t *filter,
		  const bson_t *upd, bson_t *reply, struct err *e, const char *what)
{
	bson_t *opts = in_session(cs);
	bson_error_t be;
	bool ok;

	bson_destroy(reply);
	ok = mongoc_collection_update_one(c, filter, upd, opts, reply, &be);
	bson_destroy(opts);
	if (!ok)
		return mg_fail(&be, reply, e, what);
	return (int)get_int(reply, "modifiedCount");
}

/* Runs findAndModify with fo; *found tells whether a document matched, out (if given)
 * receives a copy of it as fo returns it. */
static int modify_with(mongoc_collection_t *c, const bson_t *filter, mongoc_find_and_modify_opts_t *fo,
		       bson_t **out, bool *found, bson_t *reply, struct err *e, const char *what)
{
	bson_t value;
	bson_error_t be;

	bson_destroy(reply);
	if (!mongoc_collection_find_and_modify_with_opts(c, filter, fo, reply, &be))
		return mg_fail(&be, reply, e, what);
	*found = fam_value(reply, &value);
	if (out)
		*out = *found ? bson_copy(&value) : NULL;
	return 0;
}

/* findAndModify in the session, returning the document after the update. */
static int modify(mongoc_collection_t *c, mongoc_client_session_t *cs, const bson_t *filter,
		  const bson_t *upd, bson_t **out, bool *found, bson_t *reply, struct err *e, const char *what)
{
	mongoc_find_and_modify_opts_t *fo = mongoc_find_and_modify_opts_new();
	bson_t *extra = in_session(cs);
	int rc;

	mongoc_find_and_modify_opts_set_update(fo, upd);
	mongoc_find_and_modify_opts_set_flags(fo, MONGOC_FIND_AND_MODIFY_RETURN_NEW);
	mongoc_find_and_modify_opts_append(fo, extra);
	rc = modify_with(c, filter, fo, out, found, reply, e, what);
	mongoc_find_and_modify_opts_destroy(fo);
	bson_destroy(extra);
	return rc;
}

/* --- plans and customers: documents ------------------------------------------------------- */

static bool get_str_is(const bson_t *d, const char *key, const char *want)
{
	char v[32];

	get_str(d, key, v, sizeof(v));
	return !strcmp(v, want);
}

/* A term as plans and subscriptions both keep it; a document from before terms is a term of
 * its duration_days, in UTC. */
static void term_read(const bson_t *d, struct sub_life *l)
{
	char unit[8];

	memset(l, 0, sizeof(*l));
	get_str(d, "term_unit", unit, sizeof(unit));
	if (period_unit_parse(unit, &l->term_unit))
		l->term_unit = PERIOD_DAY;
	l->term_count = get_int_or(d, "term_count", get_int(d, "duration_days"));
	get_str(d, "term_zone", l->term_zone, sizeof(l->term_zone));
	if (!*l->term_zone)
		snprintf(l->term_zone, sizeof(l->term_zone), "UTC");
}

static void append_term(bson_t *b, enum period_unit unit, int64_t count, const char *zone)
{
	BSON_APPEND_UTF8(b, "term_unit", period_unit_name(unit));
	BSON_APPEND_INT64(b, "term_count", count);
	BSON_APPEND_UTF8(b, "term_zone", zone);
}

/* A new subscription's term, its plan's (and its days, as kept before terms). */
static void append_term_of_plan(bson_t *sub, const bson_t *plan)
{
	struct sub_life t;

	term_read(plan, &t);
	append_term(sub, t.term_unit, t.term_count, t.term_zone);
	BSON_APPEND_INT64(sub, "duration_days", term_days(t.term_unit, t.term_count));
}

static void plan_read(const bson_t *d, struct plan *p)
{
	struct sub_life t;
	bson_iter_t it;

	memset(p, 0, sizeof(*p));
	get_id(d, "_id", p->id, sizeof(p->id));
	p->name = get_strdup(d, "name");
	p->description = get_strdup(d, "description");
	p->price_cents = get_int(d, "price_cents");
	term_read(d, &t);
	p->interval = t.term_unit;
	p->interval_count = t.term_count;
	snprintf(p->timezone, sizeof(p->timezone), "%s", t.term_zone);
	p->renews = get_str_is(d, "renewal", "auto");
	p->total_capacity = get_int(d, "total_capacity");
	p->subscriptions_left = get_int(d, "subscriptions_left");
	p->subscriptions_held = get_int(d, "subscriptions_held");
	get_str(d, "status", p->status, sizeof(p->status));
	p->features = json_object_new_array();
	if (bson_iter_init_find(&it, d, "features") && BSON_ITER_HOLDS_ARRAY(&it)) {
		bson_iter_t a;
		bson_iter_recurse(&it, &a);
		while (bson_iter_next(&a))
			if (BSON_ITER_HOLDS_UTF8(&a))
				json_object_array_add(p->features, json_object_new_string(bson_iter_utf8(&a, NULL)));
	}
	p->created_at = get_int(d, "created_at");
	p->updated_at = get_int(d, "updated_at");
	p->max_per_order = get_int_or(d, "max_per_order", PLAN_MAX_PER_ORDER_DEFAULT);
	p->max_per_customer = get_int(d, "max_per_customer");
	p->waitlist_enabled = get_int(d, "waitlist_enabled") != 0;
	p->waiting = get_int(d, "waiting");
}

static void append_features(bson_t *b, struct json_object *f)
{
	bson_t arr;
	char key[24];

	BSON_APPEND_ARRAY_BEGIN(b, "features", &arr);
	for (size_t i = 0; f && i < json_object_array_length(f); i++) {
		snprintf(key, sizeof(key), "%zu", i);
		bson_append_utf8(&arr, key, -1, json_object_get_string(json_object_array_get_idx(f, i)), -1);
	}
	bson_append_array_end(b, &arr);
}

/* The plan fields that a create or an update sets, as a document. */
static void append_plan(bson_t *b, const struct plan *p)
{
	char lower[404];
	size_t i;

	BSON_APPEND_UTF8(b, "name", p->name);
	/* Names are unique case-insensitively, by a unique index on the lower-cased copy. */
	for (i = 0; p->name[i] && i < sizeof(lower) - 1; i++)
		lower[i] = (p->name[i] >= 'A' && p->name[i] <= 'Z') ? (char)(p->name[i] + 32) : p->name[i];
	lower[i] = '\0';
	BSON_APPEND_UTF8(b, "name_key", lower);
	BSON_APPEND_UTF8(b, "description", p->description);
	BSON_APPEND_INT64(b, "price_cents", p->price_cents);
	append_term(b, p->interval, p->interval_count, p->timezone);
	BSON_APPEND_UTF8(b, "renewal", p->renews ? "auto" : "none");
	BSON_APPEND_INT64(b, "total_capacity", p->total_capacity);
	BSON_APPEND_INT64(b, "subscriptions_left", p->subscriptions_left);
	BSON_APPEND_INT64(b, "subscriptions_held", p->subscriptions_held);
	BSON_APPEND_UTF8(b, "status", p->status);
	BSON_APPEND_INT64(b, "max_per_order", p->max_per_order);
	BSON_APPEND_INT64(b, "max_per_customer", p->max_per_customer);
	BSON_APPEND_BOOL(b, "waitlist_enabled", p->waitlist_enabled);
	append_features(b, p->features);
	BSON_APPEND_DATE_TIME(b, "updated_at", p->updated_at);
}

static void customer_read(const bson_t *d, struct customer *c)
{
	memset(c, 0, sizeof(*c));
	get_id(d, "_id", c->id, sizeof(c->id));
	c->email = get_strdup(d, "email");
	c->name = get_strdup(d, "name");
	c->created_at = get_int(d, "created_at");
	get_str(d, "processor_customer_id", c->processor_id, sizeof(c->processor_id));
}

static char *email_key(const char *email)
{
	char *k = xstrdup(email);

	for (char *c = k; *c; c++)
		if (*c >= 'A' && *c <= 'Z')
			*c = (char)(*c + 32);
	return k;
}

static bson_t *customer_doc(const struct customer *c)
{
	char *key = email_key(c->email);
	bson_t *d = bson_new();

	append_oid(d, "_id", c->id);
	BSON_APPEND_UTF8(d, "email", c->email);
	BSON_APPEND_UTF8(d, "email_key", key);
	BSON_APPEND_UTF8(d, "name", c->name);
	BSON_APPEND_DATE_TIME(d, "created_at", c->created_at);
	free(key);
	return d;
}

/* --- events and seats --------------------------------------------------------------------- */

static void append_counts(bson_t *doc, const char *key, const struct seat_counts *c)
{
	bson_t sub;

	BSON_APPEND_DOCUMENT_BEGIN(doc, key, &sub);
	BSON_APPEND_INT64(&sub, "total_capacity", c->total);
	BSON_APPEND_INT64(&sub, "subscriptions_left", c->left);
	BSON_APPEND_INT64(&sub, "subscriptions_held", c->held);
	bson_append_document_end(doc, &sub);
}

static bool read_counts(const bson_t *doc, const char *key, struct seat_counts *c)
{
	bson_iter_t it;
	const uint8_t *data;
	uint32_t len;
	bson_t sub;

	if (!bson_iter_init_find(&it, doc, key) || !BSON_ITER_HOLDS_DOCUMENT(&it))
		return false;
	bson_iter_document(&it, &len, &data);
	bson_init_static(&sub, data, len);
	c->total = get_int(&sub, "total_capacity");
	c->left = get_int(&sub, "subscriptions_left");
	c->held = get_int(&sub, "subscriptions_held");
	return true;
}

/* The event feed's positions: a unit takes its events' positions from one counter document
 * in its transaction, so two units that write events conflict there and one of them is
 * retried after the other committed (MongoDB aborts the later writer of a document): positions
 * follow commit order, and a unit undone gives its positions back. The price is that units
 * writing events commit one at a time. *first: the first of n positions. */
static int feed_take(struct mg *s, mongoc_client_session_t *cs, size_t n, int64_t *first, bson_t *reply,
		     struct err *e)
{
	bson_t *f = BCON_NEW("_id", BCON_UTF8("events")), *upd = BCON_NEW("$inc", "{", "seq", BCON_INT64((int64_t)n), "}");
	bson_t *doc = NULL;
	bool found = false;
	int rc = modify(s->counters, cs, f, upd, &doc, &found, reply, e, "feed position");

	if (rc == 0 && !found) {
		err_set(e, ERR_INTERNAL, NULL, "the feed's counter document is missing");
		rc = -1;
	}
	if (rc == 0)
		*first = get_int(doc, "seq") - (int64_t)n + 1;
	bson_destroy(doc);
	bson_destroy(f);
	bson_destroy(upd);
	return rc;
}

/* The outbox's document of a mail an event sends, queued and due at once, in the transaction. */
static int mail_put(struct mg *s, mongoc_client_session_t *cs, const struct mail_spec *m, const char *event_id,
		    int64_t now, bson_t *reply, struct err *e)
{
	bson_t doc = BSON_INITIALIZER;
	char id[ID_LEN + 1];
	int rc;

	id_new(id);
	append_oid(&doc, "_id", id);
	BSON_APPEND_UTF8(&doc, "kind", m->kind);
	append_oid(&doc, "customer_id", m->customer_id);
	append_oid(&doc, "event_id", event_id);
	BSON_APPEND_UTF8(&doc, "data", m->data ? m->data : "{}");
	if (m->secret)
		BSON_APPEND_UTF8(&doc, "secret", m->secret);
	BSON_APPEND_UTF8(&doc, "status", "queued");
	BSON_APPEND_INT64(&doc, "attempts", 0);
	BSON_APPEND_DATE_TIME(&doc, "next_attempt_at", now);
	BSON_APPEND_UTF8(&doc, "last_error", "");
	BSON_APPEND_DATE_TIME(&doc, "created_at", now);
	BSON_APPEND_DATE_TIME(&doc, "updated_at", now);
	rc = insert(s->mail, cs, &doc, reply, e, "mail");
	bson_destroy(&doc);
	return rc;
}

static int events_put(struct mg *s, mongoc_client_session_t *cs, const struct actor *a, int64_t now,
		      const char *plan_id, const struct event_spec *ev, size_t nev, const struct seat_counts *before,
		      const struct seat_counts *after, bson_t *reply, struct err *e)
{
	char id[ID_LEN + 1];
	int64_t pos = 0;
	int rc = nev ? feed_take(s, cs, nev, &pos, reply, e) : 0;

	for (size_t i = 0; i < nev && rc == 0; i++) {
		bson_t doc = BSON_INITIALIZER;

		id_new(id);
		append_oid(&doc, "_id", id);
		BSON_APPEND_INT64(&doc, "seq", pos + (int64_t)i);
		BSON_APPEND_DATE_TIME(&doc, "at", now);
		BSON_APPEND_UTF8(&doc, "action", ev[i].action);
		BSON_APPEND_UTF8(&doc, "actor_type", a->type);
		BSON_APPEND_UTF8(&doc, "actor_id", a->id ? a->id : "");
		BSON_APPEND_UTF8(&doc, "resource_type", ev[i].resource_type);
		BSON_APPEND_UTF8(&doc, "resource_id", ev[i].resource_id);
		BSON_APPEND_UTF8(&doc, "plan_id", plan_id ? plan_id : "");
		if (store_event_before(&ev[i], before))
			append_counts(&doc, "before", before);
		if (store_event_after(&ev[i], after))
			append_counts(&doc, "after", after);
		/* what the unit moved, for check's sums of seats held and given back */
		if (store_event_before(&ev[i], before) && store_event_after(&ev[i], after))
			BSON_APPEND_INT64(&doc, "left_delta", after->left - before->left);
		if (ev[i].detail)
			BSON_APPEND_UTF8(&doc, "detail", ev[i].detail);
		BSON_APPEND_UTF8(&doc, "trace_id", a->trace_id ? a->trace_id : "");
		BSON_APPEND_UTF8(&doc, "ip", a->ip ? a->ip : "");
		rc = insert(s->audit, cs, &doc, reply, e, "audit");
		bson_destroy(&doc);
		if (rc == 0 && ev[i].mail)
			rc = mail_put(s, cs, ev[i].mail, id, now, reply, e);
	}
	return rc;
}

/* Moves a plan's seat counts, in the transaction; the counts after into *after. */
static int seats_move(struct mg *s, mongoc_client_session_t *cs, const char *plan_id, int64_t dleft, int64_t dheld,
		      int64_t now, struct seat_counts *after, int64_t *waiting, bson_t *reply, struct err *e)
{
	bson_t *filter = by_id(plan_id), *upd, *doc = NULL;
	bool found;
	int rc = -1;

	/* The filter keeps the counts from going negative even if a caller errs. */
	BCON_APPEND(filter, "subscriptions_left", "{", "$gte", BCON_INT64(-dleft), "}",
		    "subscriptions_held", "{", "$gte", BCON_INT64(-dheld), "}");
	upd = BCON_NEW("$inc", "{", "subscriptions_left", BCON_INT64(dleft), "subscriptions_held",
		       BCON_INT64(dheld), "}", "$set", "{", "updated_at", BCON_DATE_TIME(now), "}");
	if (modify(s->plans, cs, filter, upd, &doc, &found, reply, e, "seats"))
		goto out;
	if (!found) {
		err_set(e, ERR_INTERNAL, NULL, "seat counts of plan %s would go negative", plan_id);
		goto out;
	}
	after->total = get_int(doc, "total_capacity");
	after->left = get_int(doc, "subscriptions_left");
	after->held = get_int(doc, "subscriptions_held");
	if (waiting)
		*waiting = get_int(doc, "waiting");
	rc = 0;
out:
	bson_destroy(doc);
	bson_destroy(filter);
	bson_destroy(upd);
	return rc;
}

/* --- waiting lists: offers ---------------------------------------------------------------- */

static void entry_read(const bson_t *d, struct waitlist_entry *w)
{
	memset(w, 0, sizeof(*w));
	get_id(d, "_id", w->id, sizeof(w->id));
	get_id(d, "plan_id", w->plan_id, sizeof(w->plan_id));
	get_id(d, "customer_id", w->customer_id, sizeof(w->customer_id));
	w->quantity = get_int(d, "quantity");
	get_str(d, "status", w->status, sizeof(w->status));
	get_str(d, "token_hash", w->token_hash, sizeof(w->token_hash));
	get_id(d, "session_id", w->session_id, sizeof(w->session_id));
	get_str(d, "offer_key", w->offer_key, sizeof(w->offer_key));
	get_str(d, "offer_secret", w->offer_secret, sizeof(w->offer_secret));
	get_str(d, "secret_hash", w->secret_hash, sizeof(w->secret_hash));
	w->offer_ttl_ms = get_int(d, "offer_ttl_ms");
	w->offer_expires_at = get_int(d, "offer_expires_at");
	w->seq = get_int(d, "seq");
	w->created_at = get_int(d, "created_at");
	w->updated_at = get_int(d, "updated_at");
}

/* The plan's free seats to its line, in the caller's transaction, which has written the plan's
 * document (store.h, *offers*): a unit changing the line meanwhile conflicts there. */
static int offers_make(struct mg *s, mongoc_client_session_t *cs, const char *plan_id, int64_t now,
		       const struct actor *a, bson_t *reply, struct err *e)
{
	bson_oid_t pid;
	int rc = 0;

	bson_oid_init_from_string(&pid, plan_id);
	while (rc == 0) {
		bson_t *head = BCON_NEW("plan_id", BCON_OID(&pid), "status", BCON_UTF8("waiting"));
		bson_t *sort = BCON_NEW("seq", BCON_INT32(1)), *doc = NULL, *plan = NULL, *f = NULL, *upd = NULL;
		bson_t *sub = NULL, *mf = NULL, *mark = NULL;
		struct waitlist_entry w;
		struct event_spec ev[OFFER_EVENTS];
		struct outbox_mail m;
		struct seat_counts before, after;
		bool found = false;
		int n = find_one(s->waitlist, head, sort, cs, &doc, e, "waiting list");

		if (n <= 0) {
			rc = n < 0 ? -1 : 1;
			goto next;
		}
		entry_read(doc, &w);
		f = by_id(plan_id);
		BCON_APPEND(f, "subscriptions_left", "{", "$gte", BCON_INT64(w.quantity), "}");
		upd = BCON_NEW("$inc", "{", "subscriptions_left", BCON_INT64(-w.quantity), "subscriptions_held",
			       BCON_INT64(w.quantity), "waiting", BCON_INT64(-1), "}", "$set", "{", "updated_at",
			       BCON_DATE_TIME(now), "}");
		if (modify(s->plans, cs, f, upd, &plan, &found, reply, e, "offer")) {
			rc = -1;
			goto next;
		}
		if (!found) {
			rc = 1;   /* the first in line does not fit: everyone behind it waits too */
			goto next;
		}
		after = (struct seat_counts){get_int(plan, "total_capacity"), get_int(plan, "subscriptions_left"),
					     get_int(plan, "subscriptions_held")};
		before = store_counts_before(after, -w.quantity, w.quantity);
		sub = bson_new();
		append_oid(sub, "_id", w.session_id);
		append_oid(sub, "plan_id", plan_id);
		append_oid(sub, "customer_id", w.customer_id);
		BCON_APPEND(sub, "idem_key", BCON_UTF8(w.offer_key), "status", BCON_UTF8("pending"), "amount_cents",
			    BCON_INT64(get_int(plan, "price_cents") * w.quantity), "payment_id", BCON_UTF8(""), "token_hash",
			    BCON_UTF8(""), "hold_deadline", BCON_DATE_TIME(now + w.offer_ttl_ms), "created_at",
			    BCON_DATE_TIME(now), "updated_at", BCON_DATE_TIME(now), "quantity", BCON_INT64(w.quantity),
			    "secret_hash", BCON_UTF8(w.secret_hash), "attempt_key", BCON_UTF8(""), "attempt_until",
			    BCON_DATE_TIME(0));
		append_oid(sub, "entry_id", w.id);
		append_term_of_plan(sub, plan);
		mf = by_id(w.id);
		mark = BCON_NEW("$set", "{", "status", BCON_UTF8("offered"), "offer_expires_at",
				BCON_DATE_TIME(now + w.offer_ttl_ms), "updated_at", BCON_DATE_TIME(now), "}");
		w.offer_expires_at = now + w.offer_ttl_ms;
		store_offer_events(&w, ev, &m, a ? a->trace_id : NULL);
		if (insert(s->subs, cs, sub, reply, e, "offer") || update(s->waitlist, cs, mf, mark, reply, e, "offer") < 0 ||
		    events_put(s, cs, a, now, plan_id, ev, OFFER_EVENTS, &before, &after, reply, e))
			rc = -1;
		outbox_mail_clear(&m);
next:
		bson_destroy(head);
		bson_destroy(sort);
		bson_destroy(doc);
		bson_destroy(plan);
		bson_destroy(f);
		bson_destroy(upd);
		bson_destroy(sub);
		bson_destroy(mf);
		bson_destroy(mark);
	}
	return rc < 0 ? -1 : 0;
}

/* --- plans -------------------------------------------------------------------------------- */

static int mg_plan_get(struct store *st, const char *id, struct plan *out, bool *found, struct err *e)
{
	bson_t *f = by_id(id), *doc = NULL;
	int r = find_one(MG(st)->plans, f, NULL, NULL, &doc, e, "plan");

	bson_destroy(f);
	*found = r == 1;
	if (r == 1)
		plan_read(doc, out);
	bson_destroy(doc);
	return r < 0 ? -1 : 0;
}

struct plan_create_arg {
	const struct plan *p;
	const struct event_spec *ev;
	size_t nev;
	const struct actor *a;
};

static int plan_create_tx(struct mg *s, mongoc_client_session_t *cs, void *arg, bson_t *reply, struct err *e)
{
	struct plan_create_arg *x = arg;
	struct seat_counts after = {x->p->total_capacity, x->p->subscriptions_left, x->p->subscriptions_held};
	bson_t doc = BSON_INITIALIZER;
	int rc;

	append_oid(&doc, "_id", x->p->id);
	append_plan(&doc, x->p);
	BSON_APPEND_DATE_TIME(&doc, "created_at", x->p->created_at);
	/* its line: entries waiting, and the last place given (an entry's seq) */
	BSON_APPEND_INT64(&doc, "waiting", 0);
	BSON_APPEND_INT64(&doc, "line_seq", 0);
	rc = insert(s->plans, cs, &doc, reply, e, "plan");
	if (rc && e->kind == ERR_CONFLICT)
		rc = 1;  /* the name is taken */
	else if (rc == 0)
		rc = events_put(s, cs, x->a, x->p->created_at, x->p->id, x->ev, x->nev, NULL, &after, reply, e);
	bson_destroy(&doc);
	return rc;
}

static int mg_plan_create(struct store *st, const struct plan *p, const struct event_spec *ev, size_t nev,
			  const struct actor *a, enum write_result *res, struct err *e)
{
	struct plan_create_arg x = {p, ev, nev, a};
	int rc = transaction(MG(st), plan_create_tx, &x, e);

	*res = rc == 1 ? WRITE_DUPLICATE : WRITE_DONE;
	return rc < 0 ? -1 : 0;
}

static int mg_plan_list(struct store *st, const char *status, struct plan **out, size_t *n, struct err *e)
{
	bson_t *filter = status ? BCON_NEW("status", BCON_UTF8(status)) : bson_new();
	bson_t *opts = BCON_NEW("sort", "{", "price_cents", BCON_INT32(1), "name", BCON_INT32(1), "_id",
				BCON_INT32(1), "}");
	mongoc_cursor_t *cur = mongoc_collection_find_with_opts(MG(st)->plans, filter, opts, NULL);
	const bson_t *doc;
	bson_error_t be;
	size_t cap = 0;
	int rc = 0;

	*out = NULL;
	*n = 0;
	while (mongoc_cursor_next(cur, &doc)) {
		if (*n == cap) {
			cap = cap ? 2 * cap : 16;
			*out = xrealloc(*out, cap * sizeof(**out));
		}
		plan_read(doc, &(*out)[(*n)++]);
	}
	if (mongoc_cursor_error(cur, &be)) {
		rc = mg_fail(&be, NULL, e, "plans");
		for (size_t i = 0; i < *n; i++)
			plan_clear(&(*out)[i]);
		free(*out);
		*out = NULL;
		*n = 0;
	}
	mongoc_cursor_destroy(cur);
	bson_destroy(filter);
	bson_destroy(opts);
	return rc;
}

/* The patched fields applied to p as read; -1 when the capacity would leave fewer than 0
 * seats. */
static int patch_apply(struct plan *p, const struct plan_patch *pt, int64_t now)
{
	if (pt->fields & PLAN_F_CAPACITY) {
		int64_t delta = pt->total_capacity - p->total_capacity;
		if (p->subscriptions_left + delta < 0)
			return -1;
		p->total_capacity = pt->total_capacity;
		p->subscriptions_left += delta;
	}
	if (pt->fields & PLAN_F_NAME) {
		free(p->name);
		p->name = xstrdup(pt->name);
	}
	if (pt->fields & PLAN_F_DESCRIPTION) {
		free(p->description);
		p->description = xstrdup(pt->description);
	}
	if (pt->fields & PLAN_F_PRICE)
		p->price_cents = pt->price_cents;
	if (pt->fields & PLAN_F_INTERVAL) {
		p->interval = pt->interval;
		p->interval_count = pt->interval_count;
	}
	if (pt->fields & PLAN_F_TIMEZONE)
		snprintf(p->timezone, sizeof(p->timezone), "%s", pt->timezone);
	if (pt->fields & PLAN_F_RENEWAL)
		p->renews = pt->renews;
	if (pt->fields & PLAN_F_STATUS)
		snprintf(p->status, sizeof(p->status), "%s", pt->status);
	if (pt->fields & PLAN_F_MAX_ORDER)
		p->max_per_order = pt->max_per_order;
	if (pt->fields & PLAN_F_MAX_CUSTOMER)
		p->max_per_customer = pt->max_per_customer;
	if (pt->fields & PLAN_F_WAITLIST)
		p->waitlist_enabled = pt->waitlist_enabled;
	if (pt->fields & PLAN_F_FEATURES) {
		json_object_put(p->features);
		p->features = json_object_get(pt->features);
	}
	p->updated_at = now;
	return 0;
}

struct plan_update_arg {
	const char *id;
	const struct plan_patch *pt;
	int64_t now;
	const struct event_spec *ev;
	size_t nev;
	const struct actor *a;
	enum write_result res;
	struct plan out;
};

static int plan_update_tx(struct mg *s, mongoc_client_session_t *cs, void *arg, bson_t *reply, struct err *e)
{
	struct plan_update_arg *x = arg;
	bson_t *f = by_id(x->id), *doc = NULL, *filter = NULL, set = BSON_INITIALIZER, *upd = NULL;
	struct seat_counts before, after;
	struct plan p = {0};
	int r, rc = -1;

	plan_clear(&x->out);
	if ((r = find_one(s->plans, f, NULL, cs, &doc, e, "plan")) <= 0) {
		x->res = WRITE_NOT_FOUND;
		rc = r < 0 ? -1 : 1;
		goto out;
	}
	plan_read(doc, &p);
	before = (struct seat_counts){p.total_capacity, p.subscriptions_left, p.subscriptions_held};
	if (patch_apply(&p, x->pt, x->now)) {
		x->res = WRITE_SEATS_SHORT;
		rc = 1;
		goto out;
	}
	/* Conditional on the counts read: a purchase committed in between makes this transaction
	 * conflict and run again, so its decrement is never overwritten. */
	filter = by_id(x->id);
	BCON_APPEND(filter, "subscriptions_left", BCON_INT64(before.left), "subscriptions_held", BCON_INT64(before.held));
	append_plan(&set, &p);
	upd = BCON_NEW("$set", BCON_DOCUMENT(&set));
	if ((r = update(s->plans, cs, filter, upd, reply, e, "plan update")) < 0) {
		if (e->kind == ERR_CONFLICT) {
			x->res = WRITE_DUPLICATE;
			rc = 1;
		}
		goto out;
	}
	if (r == 0 && get_int(reply, "matchedCount") == 0) {
		err_set(e, ERR_RETRYABLE, NULL, "plan %s changed meanwhile", x->id);
		goto out;
	}
	after = (struct seat_counts){p.total_capacity, p.subscriptions_left, p.subscriptions_held};
	if (events_put(s, cs, x->a, x->now, x->id, x->ev, x->nev, &before, &after, reply, e))
		goto out;
	/* more seats: the line's first take them */
	if (p.waiting > 0 && after.left > before.left) {
		bson_t *again = NULL, *pf = by_id(x->id);
		int n = offers_make(s, cs, x->id, x->now, x->a, reply, e) ? -1 :
			find_one(s->plans, pf, NULL, cs, &again, e, "plan");
		bson_destroy(pf);
		if (n == 1) {
			plan_clear(&p);
			plan_read(again, &p);
		}
		bson_destroy(again);
		if (n < 0)
			goto out;
	}
	x->res = WRITE_DONE;
	x->out = p;
	memset(&p, 0, sizeof(p));
	rc = 0;
out:
	plan_clear(&p);
	bson_destroy(f);
	bson_destroy(doc);
	bson_destroy(filter);
	bson_destroy(upd);
	bson_destroy(&set);
	return rc;
}

static int mg_plan_update(struct store *st, const char *id, const struct plan_patch *pt, int64_t now,
			  const struct event_spec *ev, size_t nev, const struct actor *a, struct plan *out,
			  enum write_result *res, struct err *e)
{
	struct plan_update_arg x = {.id = id, .pt = pt, .now = now, .ev = ev, .nev = nev, .a = a};
	int rc = -1;

	for (int attempt = 0; attempt < 5; attempt++) {
		err_clear(e);
		if ((rc = transaction(MG(st), plan_update_tx, &x, e)) >= 0 || e->kind != ERR_RETRYABLE)
			break;
	}
	*res = x.res;
	if (rc == 0)
		*out = x.out;
	else
		plan_clear(&x.out);
	return rc < 0 ? -1 : 0;
}

/* --- customers ---------------------------------------------------------------------------- */

static int mg_customer_get(struct store *st, const char *id, struct customer *out, bool *found, struct err *e)
{
	bson_t *f = by_id(id), *doc = NULL;
	int r = find_one(MG(st)->customers, f, NULL, NULL, &doc, e, "customer");

	bson_destroy(f);
	*found = r == 1;
	if (r == 1)
		customer_read(doc, out);
	bson_destroy(doc);
	return r < 0 ? -1 : 0;
}

static int mg_customer_processor_set(struct store *st, const char *id, const char *processor_id, struct err *e)
{
	/* a document from before has no field: as none kept */
	bson_t *f = by_id(id), *u = BCON_NEW("$set", "{", "processor_customer_id", BCON_UTF8(processor_id), "}"), reply;
	int n;

	BCON_APPEND(f, "processor_customer_id", "{", "$in", "[", BCON_UTF8(""), BCON_NULL, "]", "}");
	bson_init(&reply);
	n = update(MG(st)->customers, NULL, f, u, &reply, e, "customer");
	bson_destroy(&reply);
	bson_destroy(f);
	bson_destroy(u);
	return n < 0 ? -1 : 0;
}

static int mg_customer_create(struct store *st, const struct customer *c, enum write_result *res, struct err *e)
{
	bson_t *d = customer_doc(c), reply;
	int rc;

	bson_init(&reply);
	*res = WRITE_DONE;
	rc = insert(MG(st)->customers, NULL, d, &reply, e, "customer");
	if (rc && e->kind == ERR_CONFLICT) {
		*res = WRITE_DUPLICATE;
		err_clear(e);
		rc = 0;
	}
	bson_destroy(&reply);
	bson_destroy(d);
	return rc;
}

/* --- sign-in ------------------------------------------------------------------------------ */

struct login_arg {
	const struct login_req *r;
	const struct event_spec *ev;
	const struct actor *a;
	enum login_result res;
};

/* An address's links are counted after a write to its document of login_limits, so that two
 * requests of one address conflict and the second counts again after the first. */
static int login_link_tx(struct mg *s, mongoc_client_session_t *cs, void *arg, bson_t *reply, struct err *e)
{
	struct login_arg *x = arg;
	const struct login_req *r = x->r;
	bson_t *f = BCON_NEW("_id", BCON_UTF8(r->email)), *u = BCON_NEW("$set", "{", "at", BCON_DATE_TIME(r->now), "}");
	bson_t *opts = in_session(cs), *doc = NULL, *link = NULL;
	bson_error_t be;
	char customer[ID_LEN + 1] = "";
	int64_t n;
	int rc = -1;

	x->res = LOGIN_LIMITED;
	BSON_APPEND_BOOL(opts, "upsert", true);
	bson_destroy(reply);
	if (!mongoc_collection_update_one(s->link_limits, f, u, opts, reply, &be)) {
		rc = mg_fail(&be, reply, e, "login limit");
		goto out;
	}
	bson_destroy(f);
	bson_destroy(opts);
	opts = in_session(cs);
	f = BCON_NEW("email", BCON_UTF8(r->email), "created_at", "{", "$lte", BCON_DATE_TIME(r->since), "}");
	bson_destroy(reply);
	if (!mongoc_collection_delete_many(s->links, f, opts, reply, &be)) {
		rc = mg_fail(&be, reply, e, "login links");
		goto out;
	}
	bson_destroy(f);
	f = BCON_NEW("email", BCON_UTF8(r->email), "created_at", "{", "$gt", BCON_DATE_TIME(r->since), "}");
	if ((n = mongoc_collection_count_documents(s->links, f, opts, NULL, NULL, &be)) < 0) {
		rc = mg_fail(&be, NULL, e, "login links");
		goto out;
	}
	if (n >= r->limit) {
		rc = 0;
		goto out;
	}
	bson_destroy(f);
	f = BCON_NEW("email_key", BCON_UTF8(r->email));
	if (find_one(s->customers, f, NULL, cs, &doc, e, "customer") < 0)
		goto out;
	if (doc)
		get_id(doc, "_id", customer, sizeof(customer));
	link = bson_new();
	append_oid(link, "_id", r->link_id);
	BSON_APPEND_UTF8(link, "email", r->email);
	if (*customer)
		append_oid(link, "customer_id", customer);
	else
		BSON_APPEND_NULL(link, "customer_id");
	BSON_APPEND_UTF8(link, "token_hash", r->token_hash);
	BSON_APPEND_DATE_TIME(link, "created_at", r->now);
	BSON_APPEND_DATE_TIME(link, "expires_at", r->expires_at);
	BSON_APPEND_NULL(link, "used_at");
	if (insert(s->links, cs, link, reply, e, "login link"))
		goto out;
	x->res = *customer ? LOGIN_SENT : LOGIN_UNKNOWN;
	rc = 0;
	if (*customer) {
		struct mail_spec m = *x->ev->mail;
		struct event_spec one = *x->ev;
		m.customer_id = customer;
		one.resource_id = customer;
		one.mail = &m;
		rc = events_put(s, cs, x->a, r->now, NULL, &one, 1, NULL, NULL, reply, e);
	}
out:
	bson_destroy(f);
	bson_destroy(u);
	bson_destroy(opts);
	bson_destroy(doc);
	bson_destroy(link);
	return rc;
}

static int mg_login_link(struct store *st, const struct login_req *r, const struct event_spec *ev,
			 const struct actor *a, enum login_result *res, struct err *e)
{
	struct login_arg x = {r, ev, a, LOGIN_LIMITED};
	int rc = transaction(MG(st), login_link_tx, &x, e);

	*res = x.res;
	return rc < 0 ? -1 : 0;
}

struct exchange_arg {
	const char *link_id, *token_hash;
	struct customer_session *cs;
};

static int login_exchange_tx(struct mg *s, mongoc_client_session_t *cs, void *arg, bson_t *reply, struct err *e)
{
	struct exchange_arg *x = arg;
	struct customer_session *c = x->cs;
	bson_t *f = by_id(x->link_id), *u, *doc = NULL, *sess;
	bool found = false;
	int rc;

	BCON_APPEND(f, "token_hash", BCON_UTF8(x->token_hash), "used_at", BCON_NULL, "expires_at", "{", "$gt",
		    BCON_DATE_TIME(c->created_at), "}", "customer_id", "{", "$type", BCON_UTF8("objectId"), "}");
	u = BCON_NEW("$set", "{", "used_at", BCON_DATE_TIME(c->created_at), "}");
	rc = modify(s->links, cs, f, u, &doc, &found, reply, e, "login link");
	bson_destroy(f);
	bson_destroy(u);
	if (rc || !found) {
		bson_destroy(doc);
		return rc ? -1 : 1;
	}
	get_id(doc, "customer_id", c->customer_id, sizeof(c->customer_id));
	bson_destroy(doc);
	sess = by_id(c->id);
	append_oid(sess, "customer_id", c->customer_id);
	BSON_APPEND_UTF8(sess, "token_hash", c->token_hash);
	BSON_APPEND_DATE_TIME(sess, "created_at", c->created_at);
	BSON_APPEND_DATE_TIME(sess, "expires_at", c->expires_at);
	BSON_APPEND_NULL(sess, "ended_at");
	rc = insert(s->sessions, cs, sess, reply, e, "customer session");
	bson_destroy(sess);
	return rc;
}

static int mg_login_exchange(struct store *st, const char *link_id, const char *token_hash,
			     struct customer_session *cs, bool *ok, struct err *e)
{
	struct exchange_arg x = {link_id, token_hash, cs};
	int rc = transaction(MG(st), login_exchange_tx, &x, e);

	*ok = rc == 0;
	return rc < 0 ? -1 : 0;
}

static int mg_session_get(struct store *st, const char *id, struct customer_session *out, bool *found,
			  struct err *e)
{
	bson_t *f = by_id(id), *doc = NULL;
	int r = find_one(MG(st)->sessions, f, NULL, NULL, &doc, e, "customer session");

	bson_destroy(f);
	memset(out, 0, sizeof(*out));
	if ((*found = r == 1)) {
		get_id(doc, "_id", out->id, sizeof(out->id));
		get_id(doc, "customer_id", out->customer_id, sizeof(out->customer_id));
		get_str(doc, "token_hash", out->token_hash, sizeof(out->token_hash));
		out->created_at = get_int(doc, "created_at");
		out->expires_at = get_int(doc, "expires_at");
		out->ended_at = get_int(doc, "ended_at");
	}
	bson_destroy(doc);
	return r < 0 ? -1 : 0;
}

static int mg_session_end(struct store *st, const char *id, int64_t now, bool *found, struct err *e)
{
	bson_t *f = by_id(id), *u = BCON_NEW("$set", "{", "ended_at", BCON_DATE_TIME(now), "}"), reply;
	int n;

	BSON_APPEND_NULL(f, "ended_at");
	bson_init(&reply);
	n = update(MG(st)->sessions, NULL, f, u, &reply, e, "customer session");
	bson_destroy(&reply);
	bson_destroy(f);
	bson_destroy(u);
	*found = n > 0;
	return n < 0 ? -1 : 0;
}

/* --- idempotency keys --------------------------------------------------------------------- */

static void key_read(const bson_t *d, struct key_record *k)
{
	char state[16];

	memset(k, 0, sizeof(*k));
	get_str(d, "_id", k->key, sizeof(k->key));
	get_str(d, "fingerprint", k->fingerprint, sizeof(k->fingerprint));
	get_str(d, "state", state, sizeof(state));
	k->state = !strcmp(state, "done") ? KEY_DONE : !strcmp(state, "held") ? KEY_HELD : KEY_STARTED;
	k->locked_until = get_int(d, "locked_until");
	get_id(d, "subscription_id", k->subscription_id, sizeof(k->subscription_id));
	k->reply.status = (int)get_int(d, "response_status");
	if (k->state == KEY_DONE)
		k->reply.body = get_strdup(d, "response_body");
	k->created_at = get_int(d, "created_at");
}

/* The claim of a key whose insert ran into the unique _id: read it, and take over the lease
 * of a request that died, if nobody else just did. */
static int key_existing(struct mg *s, const struct claim_req *r, struct claim *out, struct err *e)
{
	bson_t *f = BCON_NEW("_id", BCON_UTF8(r->key)), *doc = NULL, *take = NULL, *upd = NULL, reply;
	bool found;
	int rc = -1;

	bson_init(&reply);
	out->result = CLAIM_EXISTS;
	if (find_one(s->keys, f, NULL, NULL, &doc, e, "key") <= 0) {
		if (e->kind == ERR_NONE)
			err_set(e, ERR_RETRYABLE, NULL, "key %s vanished while claimed", r->key);
		goto out;
	}
	key_read(doc, &out->key);
	if (!strcmp(out->key.fingerprint, r->fingerprint) && out->key.state != KEY_DONE &&
	    out->key.locked_until <= r->now) {
		take = BCON_NEW("_id", BCON_UTF8(r->key), "state", "{", "$ne", BCON_UTF8("done"), "}", "locked_until",
				"{", "$lte", BCON_DATE_TIME(r->now), "}");
		upd = BCON_NEW("$set", "{", "locked_until", BCON_DATE_TIME(r->lease_until), "}");
		if (modify(s->keys, NULL, take, upd, NULL, &found, &reply, e, "key lease"))
			goto out;
		out->taken_over = found;
		if (found)
			out->key.locked_until = r->lease_until;
	}
	rc = 0;
out:
	bson_destroy(&reply);
	bson_destroy(f);
	bson_destroy(doc);
	bson_destroy(take);
	bson_destroy(upd);
	return rc;
}

static bson_t *key_doc(const struct claim_req *r, const char *state, const char *sub_id)
{
	bson_t *doc = BCON_NEW("_id", BCON_UTF8(r->key), "fingerprint", BCON_UTF8(r->fingerprint), "state",
			       BCON_UTF8(state), "locked_until", BCON_DATE_TIME(r->lease_until), "created_at",
			       BCON_DATE_TIME(r->now));
	if (sub_id)
		append_oid(doc, "subscription_id", sub_id);
	return doc;
}

static int mg_key_claim(struct store *st, const struct claim_req *r, struct claim *out, struct err *e)
{
	struct mg *s = MG(st);
	bson_t *doc = key_doc(r, "started", NULL), reply;
	int rc = -1;

	memset(out, 0, sizeof(*out));
	bson_init(&reply);
	if (refuse_standalone(s, e))
		goto out;
	/* The unique _id decides the race: the first insert wins, every other sees the key. */
	if (insert(s->keys, NULL, doc, &reply, e, "key") == 0) {
		out->result = CLAIM_NEW;
		rc = 0;
	} else if (e->kind == ERR_CONFLICT) {
		err_clear(e);
		rc = key_existing(s, r, out, e);
	}
out:
	if (rc)
		claim_clear(out);
	bson_destroy(&reply);
	bson_destroy(doc);
	return rc;
}

static int mg_key_get(struct store *st, const char *key, struct key_record *out, bool *found, struct err *e)
{
	bson_t *f = BCON_NEW("_id", BCON_UTF8(key)), *doc = NULL;
	int r = find_one(MG(st)->keys, f, NULL, NULL, &doc, e, "key");

	bson_destroy(f);
	*found = r == 1;
	if (r == 1)
		key_read(doc, out);
	bson_destroy(doc);
	return r < 0 ? -1 : 0;
}

static int mg_key_forget(struct store *st, const char *key, struct err *e)
{
	bson_t *f = BCON_NEW("_id", BCON_UTF8(key), "state", BCON_UTF8("started"));
	bson_error_t be;
	int rc = 0;

	if (!mongoc_collection_delete_one(MG(st)->keys, f, NULL, NULL, &be))
		rc = mg_fail(&be, NULL, e, "key forget");
	bson_destroy(f);
	return rc;
}

/* The filter and update that store a final reply on a key not yet done. New, bson_destroy. */
static bson_t *key_done_filter(const char *key)
{
	return BCON_NEW("_id", BCON_UTF8(key), "state", "{", "$ne", BCON_UTF8("done"), "}");
}

static bson_t *key_done(const struct reply *r)
{
	return BCON_NEW("$set", "{", "state", BCON_UTF8("done"), "locked_until", BCON_DATE_TIME(0),
			"response_status", BCON_INT32(r->status), "response_body", BCON_UTF8(r->body), "}");
}

static int mg_key_finish(struct store *st, const char *key, const struct reply *r, bool *matched, struct err *e)
{
	bson_t *f = key_done_filter(key), *upd = key_done(r), reply;
	int rc;

	bson_init(&reply);
	rc = update(MG(st)->keys, NULL, f, upd, &reply, e, "key finish");
	*matched = rc >= 0 && get_int(&reply, "matchedCount") > 0;
	bson_destroy(&reply);
	bson_destroy(f);
	bson_destroy(upd);
	return rc < 0 ? -1 : 0;
}

/* --- subscriptions ------------------------------------------------------------------------ */

/* The subscription document as a struct; plan_name from the plan name given (the caller
 * reads plans in one query for a whole list). */
static void sub_read(const bson_t *d, struct subscription *o)
{
	memset(o, 0, sizeof(*o));
	get_id(d, "_id", o->id, sizeof(o->id));
	get_str(d, "status", o->status, sizeof(o->status));
	get_id(d, "plan_id", o->plan_id, sizeof(o->plan_id));
	get_id(d, "customer_id", o->customer_id, sizeof(o->customer_id));
	get_str(d, "idem_key", o->idem_key, sizeof(o->idem_key));
	get_str(d, "payment_id", o->payment_id, sizeof(o->payment_id));
	get_str(d, "token_hash", o->token_hash, sizeof(o->token_hash));
	o->amount_cents = get_int(d, "amount_cents");
	o->duration_days = get_int(d, "duration_days");
	o->start_at = get_int(d, "start_at");
	o->end_at = get_int(d, "end_at");
	o->hold_deadline = get_int(d, "hold_deadline");
	o->created_at = get_int(d, "created_at");
	o->updated_at = get_int(d, "updated_at");
	o->seq = o->created_at;
	o->quantity = get_int_or(d, "quantity", 1);
	get_str(d, "secret_hash", o->secret_hash, sizeof(o->secret_hash));
	get_str(d, "attempt_key", o->attempt_key, sizeof(o->attempt_key));
	o->attempt_until = get_int(d, "attempt_until");
	get_id(d, "previous_id", o->previous_id, sizeof(o->previous_id));
	get_id(d, "entry_id", o->entry_id, sizeof(o->entry_id));
	term_read(d, &o->life);
	/* one from before periods: anchored so that its one period ends at its end */
	o->life.anchor_at = get_int_or(d, "anchor_at", o->end_at ? o->end_at - o->duration_days * 86400000 : 0);
	o->life.anchor_index = get_int(d, "anchor_index");
	o->life.period_index = get_int(d, "period_index");
	o->life.period_start = get_int(d, "period_start");
	o->life.cancel_at_period_end = get_int(d, "cancel_at_period_end") != 0;
	get_str(d, "cancellation_reason", o->life.cancellation_reason, sizeof(o->life.cancellation_reason));
	o->life.ended_at = get_int(d, "ended_at");
	o->life.next_attempt_at = get_int(d, "next_attempt_at");
	o->life.attempts = get_int(d, "attempts");
	get_str(d, "payment_method", o->life.payment_method, sizeof(o->life.payment_method));
	get_str(d, "period_payment", o->life.period_payment, sizeof(o->life.period_payment));
}

/* A life's fields as a move sets them. */
static void append_life(bson_t *b, const struct sub_life *l)
{
	append_term(b, l->term_unit, l->term_count, l->term_zone);
	BSON_APPEND_DATE_TIME(b, "anchor_at", l->anchor_at);
	BSON_APPEND_INT64(b, "anchor_index", l->anchor_index);
	BSON_APPEND_INT64(b, "period_index", l->period_index);
	BSON_APPEND_DATE_TIME(b, "period_start", l->period_start);
	BSON_APPEND_BOOL(b, "cancel_at_period_end", l->cancel_at_period_end);
	BSON_APPEND_UTF8(b, "cancellation_reason", l->cancellation_reason);
	BSON_APPEND_DATE_TIME(b, "ended_at", l->ended_at);
	BSON_APPEND_DATE_TIME(b, "next_attempt_at", l->next_attempt_at);
	BSON_APPEND_INT64(b, "attempts", l->attempts);
	BSON_APPEND_UTF8(b, "payment_method", l->payment_method);
	BSON_APPEND_UTF8(b, "period_payment", l->period_payment);
}

/* Fills the plan names of n subscriptions with one query on plans, as SQLite's join does. */
static int plan_names(struct mg *s, struct subscription *subs, size_t n, struct err *e)
{
	bson_t filter = BSON_INITIALIZER, in, ids;
	const bson_t *doc;
	mongoc_cursor_t *cur;
	bson_error_t be;
	char key[24], id[ID_LEN + 1];
	int rc = 0;

	if (n == 0)
		return 0;
	BSON_APPEND_DOCUMENT_BEGIN(&filter, "_id", &in);
	BSON_APPEND_ARRAY_BEGIN(&in, "$in", &ids);
	for (size_t i = 0; i < n; i++) {
		snprintf(key, sizeof(key), "%zu", i);
		append_oid(&ids, key, subs[i].plan_id);
	}
	bson_append_array_end(&in, &ids);
	bson_append_document_end(&filter, &in);
	cur = mongoc_collection_find_with_opts(s->plans, &filter, NULL, NULL);
	while (mongoc_cursor_next(cur, &doc)) {
		get_id(doc, "_id", id, sizeof(id));
		for (size_t i = 0; i < n; i++)
			if (!subs[i].plan_name && !strcmp(subs[i].plan_id, id)) {
				subs[i].plan_name = get_strdup(doc, "name");
				subs[i].plan_renews = get_str_is(doc, "renewal", "auto");
			}
	}
	if (mongoc_cursor_error(cur, &be))
		rc = mg_fail(&be, NULL, e, "plan names");
	mongoc_cursor_destroy(cur);
	bson_destroy(&filter);
	for (size_t i = 0; i < n; i++)
		if (!subs[i].plan_name)
			subs[i].plan_name = xstrdup("");
	return rc;
}

static int sub_find(struct mg *s, mongoc_client_session_t *cs, const char *id, struct subscription *out,
		    bool *found, struct err *e)
{
	bson_t *f = by_id(id), *doc = NULL;
	int r = find_one(s->subs, f, NULL, cs, &doc, e, "subscription");

	bson_destroy(f);
	*found = r == 1;
	if (r == 1)
		sub_read(doc, out);
	bson_destroy(doc);
	if (r == 1 && plan_names(s, out, 1, e)) {
		subscription_clear(out);
		return -1;
	}
	return r < 0 ? -1 : 0;
}

static int mg_sub_get(struct store *st, const char *id, struct subscription *out, bool *found, struct err *e)
{
	return sub_find(MG(st), NULL, id, out, found, e);
}

struct hold_arg {
	const struct hold_req *r;
	const struct actor *a;
	struct hold_out *out;
};

/* The sum of field over the documents of c matching match, by an aggregation in the session
 * (a transaction's or a snapshot's); -1 on error. */
static int64_t sum_in(mongoc_collection_t *c, mongoc_client_session_t *cs, bson_t *match, const char *field,
		      struct err *e)
{
	char expr[64];
	bson_t *pipeline, *opts = in_session(cs);
	mongoc_cursor_t *cur;
	const bson_t *doc, *errdoc = NULL;
	bson_error_t be;
	int64_t n = 0;

	snprintf(expr, sizeof(expr), "$%s", field);
	pipeline = BCON_NEW("pipeline", "[", "{", "$match", BCON_DOCUMENT(match), "}", "{", "$group", "{", "_id",
			    BCON_NULL, "n", "{", "$sum", BCON_UTF8(expr), "}", "}", "}", "]");
	cur = mongoc_collection_aggregate(c, MONGOC_QUERY_NONE, pipeline, opts, NULL);
	if (mongoc_cursor_next(cur, &doc))
		n = get_int(doc, "n");
	else if (mongoc_cursor_error_document(cur, &be, &errdoc))
		n = mg_fail(&be, errdoc, e, "sum");
	mongoc_cursor_destroy(cur);
	bson_destroy(pipeline);
	bson_destroy(opts);
	bson_destroy(match);
	return n;
}

/* The seats a customer holds or owns on a plan: its pending and active subscriptions. */
static int64_t owned_seats(struct mg *s, mongoc_client_session_t *cs, const char *customer_id, const char *plan_id,
			   struct err *e)
{
	bson_oid_t c, p;

	bson_oid_init_from_string(&c, customer_id);
	bson_oid_init_from_string(&p, plan_id);
	return sum_in(s->subs, cs, BCON_NEW("customer_id", BCON_OID(&c), "plan_id", BCON_OID(&p), "status", "{", "$in",
					    "[", BCON_UTF8("pending"), BCON_UTF8("active"), BCON_UTF8("past_due"), "]", "}"),
		      "quantity", e);
}

static int mg_payment_totals(struct store *st, struct payment_total **out, size_t *n, struct err *e)
{
	bson_t *pipeline = BCON_NEW("pipeline", "[", "{", "$group", "{", "_id", "{", "kind", BCON_UTF8("$kind"), "status",
				    BCON_UTF8("$status"), "}", "count", "{", "$sum", BCON_INT32(1), "}", "amount", "{",
				    "$sum", BCON_UTF8("$amount_cents"), "}", "}", "}", "{", "$sort", "{", "_id.kind",
				    BCON_INT32(1), "_id.status", BCON_INT32(1), "}", "}", "{", "$limit",
				    BCON_INT32(PAYMENT_TOTALS_MAX), "}", "]");
	mongoc_cursor_t *cur = mongoc_collection_aggregate(MG(st)->payments, MONGOC_QUERY_NONE, pipeline, NULL, NULL);
	const bson_t *doc, *errdoc = NULL;
	bson_error_t be;
	bson_iter_t it, sub;
	int rc = 0;

	*out = xcalloc(PAYMENT_TOTALS_MAX, sizeof(**out));
	*n = 0;
	while (*n < PAYMENT_TOTALS_MAX && mongoc_cursor_next(cur, &doc)) {
		struct payment_total *t = &(*out)[(*n)++];
		if (bson_iter_init_find(&it, doc, "_id") && BSON_ITER_HOLDS_DOCUMENT(&it) && bson_iter_recurse(&it, &sub)) {
			while (bson_iter_next(&sub)) {
				const char *v = BSON_ITER_HOLDS_UTF8(&sub) ? bson_iter_utf8(&sub, NULL) : "";
				if (!strcmp(bson_iter_key(&sub), "kind"))
					snprintf(t->kind, sizeof(t->kind), "%s", v);
				else if (!strcmp(bson_iter_key(&sub), "status"))
					snprintf(t->status, sizeof(t->status), "%s", v);
			}
		}
		t->count = get_int(doc, "count");
		t->amount_cents = get_int(doc, "amount");
	}
	if (mongoc_cursor_error_document(cur, &be, &errdoc))
		rc = mg_fail(&be, errdoc, e, "payment totals");
	mongoc_cursor_destroy(cur);
	bson_destroy(pipeline);
	return rc;
}

static int mg_sub_totals(struct store *st, struct sub_total **out, size_t *n, struct err *e)
{
	bson_t *pipeline = BCON_NEW("pipeline", "[", "{", "$group", "{", "_id", BCON_UTF8("$status"), "count", "{", "$sum",
				    BCON_INT32(1), "}", "seats", "{", "$sum", BCON_UTF8("$quantity"), "}", "}", "}",
				    "{", "$sort", "{", "_id", BCON_INT32(1), "}", "}", "{", "$limit",
				    BCON_INT32(SUB_TOTALS_MAX), "}", "]");
	mongoc_cursor_t *cur = mongoc_collection_aggregate(MG(st)->subs, MONGOC_QUERY_NONE, pipeline, NULL, NULL);
	const bson_t *doc, *errdoc = NULL;
	bson_error_t be;
	int rc = 0;

	*out = xcalloc(SUB_TOTALS_MAX, sizeof(**out));
	*n = 0;
	while (*n < SUB_TOTALS_MAX && mongoc_cursor_next(cur, &doc)) {
		struct sub_total *t = &(*out)[(*n)++];
		get_str(doc, "_id", t->status, sizeof(t->status));
		t->count = get_int(doc, "count");
		t->seats = get_int(doc, "seats");
	}
	if (mongoc_cursor_error_document(cur, &be, &errdoc))
		rc = mg_fail(&be, errdoc, e, "subscription totals");
	mongoc_cursor_destroy(cur);
	bson_destroy(pipeline);
	return rc;
}

static int mg_held_by_kind(struct store *st, const char *plan_id, int64_t *paying, int64_t *sessions,
			   struct err *e)
{
	bson_oid_t p;

	bson_oid_init_from_string(&p, plan_id);
	*paying = sum_in(MG(st)->subs, NULL, BCON_NEW("plan_id", BCON_OID(&p), "status", BCON_UTF8("pending"),
						      "secret_hash", BCON_UTF8("")), "quantity", e);
	*sessions = sum_in(MG(st)->subs, NULL, BCON_NEW("plan_id", BCON_OID(&p), "status", BCON_UTF8("pending"),
							"secret_hash", "{", "$gt", BCON_UTF8(""), "}"), "quantity", e);
	return *paying < 0 || *sessions < 0 ? -1 : 0;
}

/* The customer of a hold, in its transaction: the one named, or the one with the email,
 * created atomically by an upsert on the unique email_key. 1 if absent. */
static int hold_customer(struct mg *s, mongoc_client_session_t *cs, const char *customer_id,
			 const struct customer *customer, char id[ID_LEN + 1], bson_t *reply, struct err *e)
{
	bson_t *filter, *doc = NULL, *d = NULL, *upd = NULL, *extra = NULL;
	mongoc_find_and_modify_opts_t *fo = NULL;
	bool found = false;
	int rc = -1;

	if (customer_id) {
		filter = by_id(customer_id);
		rc = find_one(s->customers, filter, NULL, cs, &doc, e, "customer");
		snprintf(id, ID_LEN + 1, "%s", customer_id);
		rc = rc < 0 ? -1 : rc == 0 ? 1 : 0;
		goto out;
	}
	char *key = email_key(customer->email);
	filter = BCON_NEW("email_key", BCON_UTF8(key));
	free(key);
	d = customer_doc(customer);
	upd = BCON_NEW("$setOnInsert", BCON_DOCUMENT(d));
	extra = in_session(cs);
	fo = mongoc_find_and_modify_opts_new();
	mongoc_find_and_modify_opts_set_update(fo, upd);
	mongoc_find_and_modify_opts_set_flags(fo, MONGOC_FIND_AND_MODIFY_UPSERT | MONGOC_FIND_AND_MODIFY_RETURN_NEW);
	mongoc_find_and_modify_opts_append(fo, extra);
	if (modify_with(s->customers, filter, fo, &doc, &found, reply, e, "customer"))
		goto out;
	if (!found) {
		err_set(e, ERR_INTERNAL, NULL, "upsert of a customer returned nothing");
		goto out;
	}
	get_id(doc, "_id", id, ID_LEN + 1);
	rc = 0;
out:
	if (fo)
		mongoc_find_and_modify_opts_destroy(fo);
	bson_destroy(filter);
	bson_destroy(doc);
	bson_destroy(d);
	bson_destroy(upd);
	bson_destroy(extra);
	return rc;
}

/* A plan change's hold: the subscription it replaces is an active one of the customer, read in
 * the transaction (the change's last step moves it only if it is still active, so a cancel
 * committed meanwhile is caught there). 0 yes, 1 no, -1 error. */
static int previous_active(struct mg *s, mongoc_client_session_t *cs, const char *id, const char *customer_id,
			   struct err *e)
{
	bson_t *f = by_id(id), *doc = NULL;
	bson_oid_t c;
	int r;

	bson_oid_init_from_string(&c, customer_id);
	BCON_APPEND(f, "customer_id", BCON_OID(&c), "status", BCON_UTF8("active"));
	r = find_one(s->subs, f, NULL, cs, &doc, e, "previous subscription");
	bson_destroy(f);
	bson_destroy(doc);
	return r < 0 ? -1 : r == 1 ? 0 : 1;
}

static int hold_tx(struct mg *s, mongoc_client_session_t *cs, void *arg, bson_t *reply, struct err *e)
{
	struct hold_arg *x = arg;
	const struct hold_req *r = x->r;
	struct subscription *o = &x->out->sub;
	bson_t *filter = by_id(r->plan_id), *upd = NULL, *plan = NULL, *why = NULL, *sub = NULL, *key = NULL;
	struct seat_counts before, after;
	struct actor buyer = *x->a;
	char customer_id[ID_LEN + 1], status[16];
	int64_t now = r->claim.now;
	bool found;
	int n, rc = -1;

	subscription_clear(o);
	/* The unique _id of the key decides a race between two requests with one key. */
	key = key_doc(&r->claim, "held", r->subscription_id);
	if (insert(s->keys, cs, key, reply, e, "key")) {
		if (e->kind == ERR_CONFLICT) {
			x->out->result = HOLD_KEY_EXISTS;
			rc = 1;
		}
		goto out;
	}
	if ((n = hold_customer(s, cs, r->customer_id, r->customer, customer_id, reply, e)) != 0) {
		x->out->result = HOLD_NO_CUSTOMER;
		rc = n;
		goto out;
	}
	if (r->previous_id && (n = previous_active(s, cs, r->previous_id, customer_id, e)) != 0) {
		x->out->result = HOLD_PREVIOUS_INACTIVE;
		rc = n;
		goto out;
	}
	/* nobody waiting: while anyone does, free seats are the line's */
	BCON_APPEND(filter, "status", BCON_UTF8("active"), "subscriptions_left", "{", "$gte", BCON_INT64(r->quantity),
		    "}", "max_per_order", "{", "$gte", BCON_INT64(r->quantity), "}", "waiting", "{", "$not", "{", "$gt",
		    BCON_INT64(0), "}", "}");
	upd = BCON_NEW("$inc", "{", "subscriptions_left", BCON_INT64(-r->quantity), "subscriptions_held",
		       BCON_INT64(r->quantity), "}", "$set", "{", "updated_at", BCON_DATE_TIME(now), "}");
	if (modify(s->plans, cs, filter, upd, &plan, &found, reply, e, "seat hold"))
		goto out;
	if (!found) {
		bson_t *f = by_id(r->plan_id);
		n = find_one(s->plans, f, NULL, cs, &why, e, "plan");
		bson_destroy(f);
		if (n < 0)
			goto out;
		if (n == 1) {
			get_str(why, "status", status, sizeof(status));
			x->out->available = get_int(why, "subscriptions_left");
			x->out->limit = get_int_or(why, "max_per_order", PLAN_MAX_PER_ORDER_DEFAULT);
			x->out->waiting = get_int(why, "waiting");
		}
		x->out->result = n == 0 ? HOLD_NO_PLAN : strcmp(status, "active") ? HOLD_PLAN_INACTIVE :
			r->quantity > x->out->limit ? HOLD_ORDER_LIMIT : HOLD_SOLD_OUT;
		rc = 1;
		goto out;
	}
	/* Counted after the plan's document is written in this transaction: a hold of the plan
	 * that commits meanwhile makes one of the two conflict and run again. */
	if ((x->out->limit = get_int(plan, "max_per_customer")) > 0) {
		if ((x->out->held = owned_seats(s, cs, customer_id, r->plan_id, e)) < 0)
			goto out;
		if (x->out->held + r->quantity > x->out->limit) {
			x->out->result = HOLD_CUSTOMER_LIMIT;
			rc = 1;
			goto out;
		}
	}
	snprintf(o->id, sizeof(o->id), "%s", r->subscription_id);
	snprintf(o->status, sizeof(o->status), "pending");
	snprintf(o->plan_id, sizeof(o->plan_id), "%s", r->plan_id);
	snprintf(o->customer_id, sizeof(o->customer_id), "%s", customer_id);
	snprintf(o->idem_key, sizeof(o->idem_key), "%s", r->claim.key);
	o->plan_name = get_strdup(plan, "name");
	o->quantity = r->quantity;
	o->amount_cents = get_int(plan, "price_cents") * r->quantity;
	term_read(plan, &o->life);
	o->plan_renews = get_str_is(plan, "renewal", "auto");
	o->duration_days = term_days(o->life.term_unit, o->life.term_count);
	o->hold_deadline = r->deadline;
	o->created_at = o->updated_at = o->seq = now;
	store_hold_fill(o, r);
	sub = bson_new();
	append_oid(sub, "_id", o->id);
	append_oid(sub, "plan_id", r->plan_id);
	append_oid(sub, "customer_id", customer_id);
	BCON_APPEND(sub, "idem_key", BCON_UTF8(r->claim.key), "status", BCON_UTF8("pending"), "amount_cents",
		    BCON_INT64(o->amount_cents), "payment_id", BCON_UTF8(""), "token_hash", BCON_UTF8(""), "hold_deadline", BCON_DATE_TIME(r->deadline),
		    "created_at", BCON_DATE_TIME(now), "updated_at", BCON_DATE_TIME(now), "quantity",
		    BCON_INT64(r->quantity), "secret_hash", BCON_UTF8(o->secret_hash), "attempt_key",
		    BCON_UTF8(o->attempt_key), "attempt_until", BCON_DATE_TIME(o->attempt_until));
	append_term_of_plan(sub, plan);
	if (r->previous_id)
		append_oid(sub, "previous_id", r->previous_id);
	if (insert(s->subs, cs, sub, reply, e, "subscription"))
		goto out;
	after = (struct seat_counts){get_int(plan, "total_capacity"), get_int(plan, "subscriptions_left"),
				     get_int(plan, "subscriptions_held")};
	before = store_counts_before(after, -r->quantity, r->quantity);
	buyer.id = customer_id;
	if (events_put(s, cs, &buyer, now, r->plan_id, r->events, r->nevents, &before, &after, reply, e))
		goto out;
	if (r->reply) {
		/* a session's answer, known once its subscription is: stored in the same transaction */
		struct reply done = r->reply(o, r->reply_arg);
		bson_t *kf = key_done_filter(r->claim.key), *ku = key_done(&done);
		n = update(s->keys, cs, kf, ku, reply, e, "key done");
		bson_destroy(kf);
		bson_destroy(ku);
		free(done.body);
		if (n < 0)
			goto out;
	}
	x->out->result = HOLD_TAKEN;
	rc = 0;
out:
	bson_destroy(filter);
	bson_destroy(upd);
	bson_destroy(plan);
	bson_destroy(why);
	bson_destroy(sub);
	bson_destroy(key);
	return rc;
}

static int mg_hold(struct store *st, const struct hold_req *r, const struct actor *a, struct hold_out *out,
		   struct err *e)
{
	struct hold_arg x = {r, a, out};
	int rc;

	memset(out, 0, sizeof(*out));
	rc = transaction(MG(st), hold_tx, &x, e);
	if (rc)
		subscription_clear(&out->sub);
	if (rc == 1 && out->result == HOLD_KEY_EXISTS)
		return key_existing(MG(st), &r->claim, &out->claim, e);
	return rc < 0 ? -1 : 0;
}

static void append_payment(bson_t *doc, const struct payment *p)
{
	BSON_APPEND_UTF8(doc, "_id", p->id);
	BSON_APPEND_UTF8(doc, "idem_key", p->idem_key);
	BSON_APPEND_UTF8(doc, "kind", p->kind);
	BSON_APPEND_UTF8(doc, "status", p->status);
	BSON_APPEND_UTF8(doc, "decline_code", p->decline_code);
	append_oid(doc, "subscription_id", p->subscription_id);
	BSON_APPEND_INT64(doc, "amount_cents", p->amount_cents);
	BSON_APPEND_DATE_TIME(doc, "created_at", p->created_at);
}

static void payment_read(const bson_t *d, struct payment *p)
{
	memset(p, 0, sizeof(*p));
	get_str(d, "_id", p->id, sizeof(p->id));
	get_str(d, "idem_key", p->idem_key, sizeof(p->idem_key));
	get_str(d, "kind", p->kind, sizeof(p->kind));
	get_str(d, "status", p->status, sizeof(p->status));
	get_str(d, "decline_code", p->decline_code, sizeof(p->decline_code));
	get_id(d, "subscription_id", p->subscription_id, sizeof(p->subscription_id));
	p->amount_cents = get_int(d, "amount_cents");
	p->created_at = get_int(d, "created_at");
}

struct transition_arg {
	const struct transition *t;
	const struct actor *a;
	bool also_refused;
};

/* One move of a transition, in the transaction: 0 moved, 1 its condition did not hold, -1
 * error. */
static int move_one(struct mg *s, mongoc_client_session_t *cs, const struct transition *t, const struct actor *a,
		    bson_t *reply, struct err *e)
{
	bson_t *filter = by_id(t->sub_id), *upd = bson_new(), *doc = NULL, *pay = NULL, *kf = NULL, *ku = NULL;
	bson_t set, cond;
	struct seat_counts before, after;
	char plan_id[ID_LEN + 1], key[UUID_LEN + 1];
	int64_t dleft, dheld, waiting = 0;
	bool found;
	int rc = -1;

	BSON_APPEND_UTF8(filter, "status", t->from);
	if (t->attempt)
		BSON_APPEND_UTF8(filter, "attempt_key", t->attempt);
	if (t->secret_hash)
		BCON_APPEND(filter, "secret_hash", "{", "$in", "[", BCON_UTF8(""), BCON_NULL, "]", "}");
	if (t->live_after || t->due_by) {
		BSON_APPEND_DOCUMENT_BEGIN(filter, "hold_deadline", &cond);
		if (t->live_after)
			BSON_APPEND_DATE_TIME(&cond, "$gt", t->live_after);
		if (t->due_by)
			BSON_APPEND_DATE_TIME(&cond, "$lte", t->due_by);
		bson_append_document_end(filter, &cond);
	}
	if (t->life.check) {
		/* one from before periods keeps no next attempt nor schedule: absent reads as 0 */
		BSON_APPEND_DATE_TIME(filter, "end_at", t->life.end_at);
		if (t->life.next_attempt_at)
			BSON_APPEND_DATE_TIME(filter, "next_attempt_at", t->life.next_attempt_at);
		else
			BCON_APPEND(filter, "next_attempt_at", "{", "$in", "[", BCON_DATE_TIME(0), BCON_NULL, "]", "}");
		if (t->life.cancel_at_period_end)
			BSON_APPEND_BOOL(filter, "cancel_at_period_end", true);
		else
			BCON_APPEND(filter, "cancel_at_period_end", "{", "$ne", BCON_BOOL(true), "}");
		if (t->life.payment_method && *t->life.payment_method)
			BSON_APPEND_UTF8(filter, "payment_method", t->life.payment_method);
		else
			BCON_APPEND(filter, "payment_method", "{", "$in", "[", BCON_UTF8(""), BCON_NULL, "]", "}");
	}
	BSON_APPEND_DOCUMENT_BEGIN(upd, "$set", &set);
	BSON_APPEND_UTF8(&set, "status", t->to);
	BSON_APPEND_DATE_TIME(&set, "updated_at", t->now);
	if (t->attempt_end)
		BSON_APPEND_UTF8(&set, "attempt_key", "");
	if (t->attempt_release)
		BSON_APPEND_DATE_TIME(&set, "attempt_until", 0);
	if (t->secret_hash)
		BSON_APPEND_UTF8(&set, "secret_hash", t->secret_hash);
	if (t->payment_id)
		BSON_APPEND_UTF8(&set, "payment_id", t->payment_id);
	if (t->start_at)
		BSON_APPEND_DATE_TIME(&set, "start_at", t->start_at);
	if (t->end_at)
		BSON_APPEND_DATE_TIME(&set, "end_at", t->end_at);
	if (t->token_hash)
		BSON_APPEND_UTF8(&set, "token_hash", t->token_hash);
	if (t->life.set)
		append_life(&set, t->life.set);
	bson_append_document_end(upd, &set);
	if (modify(s->subs, cs, filter, upd, &doc, &found, reply, e, "subscription"))
		goto out;
	if (!found) {
		rc = 1;
		goto out;
	}
	get_id(doc, "plan_id", plan_id, sizeof(plan_id));
	get_str(doc, "idem_key", key, sizeof(key));
	dleft = t->dleft * get_int_or(doc, "quantity", 1);
	dheld = t->dheld * get_int_or(doc, "quantity", 1);
	if (seats_move(s, cs, plan_id, dleft, dheld, t->now, &after, &waiting, reply, e))
		goto out;
	before = store_counts_before(after, dleft, dheld);
	if (t->entry_to) {
		bson_oid_t sid;
		bson_oid_init_from_string(&sid, t->sub_id);
		bson_t *ef = BCON_NEW("session_id", BCON_OID(&sid), "status", BCON_UTF8("offered"));
		bson_t *eu = BCON_NEW("$set", "{", "status", BCON_UTF8(t->entry_to), "updated_at", BCON_DATE_TIME(t->now), "}");
		int n = update(s->waitlist, cs, ef, eu, reply, e, "waiting-list entry");
		bson_destroy(ef);
		bson_destroy(eu);
		if (n < 0)
			goto out;
	}
	if (t->payment) {
		pay = bson_new();
		append_payment(pay, t->payment);
		if (insert(s->payments, cs, pay, reply, e, "payment"))
			goto out;
	}
	if (events_put(s, cs, a, t->now, plan_id, t->events, t->nevents, &before, &after, reply, e))
		goto out;
	if (t->reply) {
		kf = key_done_filter(t->reply_key ? t->reply_key : key);
		ku = key_done(t->reply);
		if (update(s->keys, cs, kf, ku, reply, e, "key done") < 0)
			goto out;
	}
	if (dleft > 0 && waiting > 0 && offers_make(s, cs, plan_id, t->now, a, reply, e))
		goto out;
	rc = 0;
out:
	bson_destroy(filter);
	bson_destroy(upd);
	bson_destroy(doc);
	bson_destroy(pay);
	bson_destroy(kf);
	bson_destroy(ku);
	return rc;
}

static int transition_tx(struct mg *s, mongoc_client_session_t *cs, void *arg, bson_t *reply, struct err *e)
{
	struct transition_arg *x = arg;
	int rc = move_one(s, cs, x->t, x->a, reply, e);

	x->also_refused = false;
	if (rc == 0 && x->t->also && (rc = move_one(s, cs, x->t->also, x->a, reply, e)) == 1)
		x->also_refused = true;
	return rc;
}

static int mg_transition(struct store *st, const struct transition *t, const struct actor *a,
			 struct transition_out *out, struct err *e)
{
	struct transition_arg x = {t, a, false};
	bool found;
	int rc;

	memset(out, 0, sizeof(*out));
	if ((rc = transaction(MG(st), transition_tx, &x, e)) < 0)
		return -1;
	if (sub_find(MG(st), NULL, t->sub_id, &out->sub, &found, e))
		return -1;
	out->result = rc == 0 ? MOVED : x.also_refused ? MOVE_ALSO_REFUSED : found ? MOVE_REFUSED : MOVE_NOT_FOUND;
	return 0;
}

/* Up to limit payments of a cursor into a new array; destroys the cursor. */
static int payments_of(mongoc_cursor_t *cur, int limit, struct payment **out, size_t *n, struct err *e,
		       const char *what)
{
	const bson_t *doc;
	bson_error_t be;
	int rc = 0;

	*n = 0;
	*out = xcalloc((size_t)limit, sizeof(**out));
	while (*n < (size_t)limit && mongoc_cursor_next(cur, &doc))
		payment_read(doc, &(*out)[(*n)++]);
	if (mongoc_cursor_error(cur, &be))
		rc = mg_fail(&be, NULL, e, what);
	mongoc_cursor_destroy(cur);
	return rc;
}

static int mg_payments_in(struct store *st, const char *status, int limit, struct payment **out, size_t *n,
			  struct err *e)
{
	bson_t *filter = BCON_NEW("status", BCON_UTF8(status));
	bson_t *opts = BCON_NEW("sort", "{", "created_at", BCON_INT32(1), "}", "limit", BCON_INT64(limit));
	int rc = payments_of(mongoc_collection_find_with_opts(MG(st)->payments, filter, opts, NULL), limit, out, n, e,
			     "payments in a status");

	bson_destroy(filter);
	bson_destroy(opts);
	return rc;
}

/* The values of a {"$in": [...]} of strings. */
static void append_in(bson_t *b, const char *key, const char *const *values, int n)
{
	bson_t doc, arr;
	char k[16];

	bson_append_document_begin(b, key, -1, &doc);
	bson_append_array_begin(&doc, "$in", -1, &arr);
	for (int i = 0; i < n; i++) {
		snprintf(k, sizeof(k), "%d", i);
		BSON_APPEND_UTF8(&arr, k, values[i]);
	}
	bson_append_array_end(&doc, &arr);
	bson_append_document_end(b, &doc);
}

/* A customer's subscriptions (their ids and statuses, by the customer's index), then the money
 * of those: what was taken or refunded, and what is authorized for a seat that keeps it. */
static int mg_customer_payments(struct store *st, const char *customer_id, int limit, struct payment **out,
				size_t *n, struct err *e)
{
	static const char *const kinds[] = {"charge", "renewal", "refund"}, *const taken[] = {"succeeded", "refunded"};
	bson_t *filter = bson_new(), *opts = BCON_NEW("projection", "{", "_id", BCON_INT32(1), "status", BCON_INT32(1), "}");
	bson_t all, kept, or, a, b, ina, inb;
	const bson_t *doc;
	bson_error_t be;
	mongoc_cursor_t *cur;
	int rc = 0, na = 0, nk = 0;
	char key[16], status[16];

	*out = NULL;
	*n = 0;
	append_oid(filter, "customer_id", customer_id);
	cur = mongoc_collection_find_with_opts(MG(st)->subs, filter, opts, NULL);
	bson_destroy(filter);
	bson_destroy(opts);
	bson_init(&all);
	bson_init(&kept);
	while (mongoc_cursor_next(cur, &doc)) {
		bson_iter_t it;
		if (!bson_iter_init_find(&it, doc, "_id") || !BSON_ITER_HOLDS_OID(&it))
			continue;
		get_str(doc, "status", status, sizeof(status));
		snprintf(key, sizeof(key), "%d", na++);
		BSON_APPEND_OID(&all, key, bson_iter_oid(&it));
		if (strcmp(status, "pending") && strcmp(status, "failed") && strcmp(status, "expired")) {
			snprintf(key, sizeof(key), "%d", nk++);
			BSON_APPEND_OID(&kept, key, bson_iter_oid(&it));
		}
	}
	if (mongoc_cursor_error(cur, &be))
		rc = mg_fail(&be, NULL, e, "a customer's subscriptions");
	mongoc_cursor_destroy(cur);
	filter = bson_new();
	append_in(filter, "kind", kinds, 3);
	bson_append_array_begin(filter, "$or", -1, &or);
	bson_append_document_begin(&or, "0", -1, &a);
	bson_append_document_begin(&a, "subscription_id", -1, &ina);
	bson_append_array(&ina, "$in", -1, &all);
	bson_append_document_end(&a, &ina);
	append_in(&a, "status", taken, 2);
	bson_append_document_end(&or, &a);
	bson_append_document_begin(&or, "1", -1, &b);
	bson_append_document_begin(&b, "subscription_id", -1, &inb);
	bson_append_array(&inb, "$in", -1, &kept);
	bson_append_document_end(&b, &inb);
	BSON_APPEND_UTF8(&b, "status", "authorized");
	bson_append_document_end(&or, &b);
	bson_append_array_end(filter, &or);
	opts = BCON_NEW("sort", "{", "created_at", BCON_INT32(-1), "_id", BCON_INT32(-1), "}", "limit", BCON_INT64(limit));
	if (rc == 0 && na > 0)
		rc = payments_of(mongoc_collection_find_with_opts(MG(st)->payments, filter, opts, NULL), limit, out, n, e,
				 "a customer's payments");
	else if (rc == 0)
		*out = xcalloc(1, sizeof(**out));
	bson_destroy(&all);
	bson_destroy(&kept);
	bson_destroy(filter);
	bson_destroy(opts);
	return rc;
}

struct mark_arg {
	const char *id, *from, *to;
	const struct event_spec *ev;
	size_t nev;
	const struct actor *a;
};

static int mark_tx(struct mg *s, mongoc_client_session_t *cs, void *arg, bson_t *reply, struct err *e)
{
	struct mark_arg *x = arg;
	bson_t *filter = BCON_NEW("_id", BCON_UTF8(x->id), "status", BCON_UTF8(x->from));
	bson_t *upd = BCON_NEW("$set", "{", "status", BCON_UTF8(x->to), "}"), *pay = NULL, *sub = NULL, *f = NULL;
	char plan_id[ID_LEN + 1] = "", sub_id[ID_LEN + 1] = "";
	bool found;
	int rc = modify(s->payments, cs, filter, upd, &pay, &found, reply, e, "payment mark");

	if (rc == 0 && !found)
		rc = 1;  /* not in `from`: nothing to commit */
	if (rc == 0 && found) {
		get_id(pay, "subscription_id", sub_id, sizeof(sub_id));
		f = by_id(sub_id);
		if ((rc = find_one(s->subs, f, NULL, cs, &sub, e, "subscription")) >= 0) {
			if (sub)
				get_id(sub, "plan_id", plan_id, sizeof(plan_id));
			rc = events_put(s, cs, x->a, now_ms(), plan_id, x->ev, x->nev, NULL, NULL, reply, e) ? -1 : 0;
		}
	}
	bson_destroy(filter);
	bson_destroy(upd);
	bson_destroy(pay);
	bson_destroy(sub);
	bson_destroy(f);
	return rc;
}

static int mg_payment_mark(struct store *st, const char *id, const char *from, const char *to,
			   const struct event_spec *ev, size_t nev, const struct actor *a, bool *moved, struct err *e)
{
	struct mark_arg x = {id, from, to, ev, nev, a};
	int rc = transaction(MG(st), mark_tx, &x, e);

	*moved = rc == 0;
	return rc < 0 ? -1 : 0;
}

static int mg_attempt_take(struct store *st, const char *sub_id, const char *expect, const char *key, int64_t now,
			   int64_t until, bool *taken, struct err *e)
{
	bson_t *filter = by_id(sub_id), *upd, reply;
	int n;

	/* one document: MongoDB applies the conditional update atomically */
	BCON_APPEND(filter, "status", BCON_UTF8("pending"), "hold_deadline", "{", "$gt", BCON_DATE_TIME(now), "}",
		    "attempt_key", BCON_UTF8(expect));
	if (store_attempt_needs_lapse(expect, key))
		BCON_APPEND(filter, "attempt_until", "{", "$lte", BCON_DATE_TIME(now), "}");
	upd = BCON_NEW("$set", "{", "attempt_key", BCON_UTF8(key), "attempt_until", BCON_DATE_TIME(until), "}");
	bson_init(&reply);
	n = update(MG(st)->subs, NULL, filter, upd, &reply, e, "attempt");
	*taken = n > 0;
	bson_destroy(&reply);
	bson_destroy(filter);
	bson_destroy(upd);
	return n < 0 ? -1 : 0;
}

struct payment_arg {
	const struct payment *p;
	const struct event_spec *ev;
	size_t nev;
	const struct actor *a;
};

static int payment_tx(struct mg *s, mongoc_client_session_t *cs, void *arg, bson_t *reply, struct err *e)
{
	struct payment_arg *x = arg;
	bson_t *doc = bson_new(), *f = by_id(x->p->subscription_id), *sub = NULL;
	char plan_id[ID_LEN + 1] = "";
	int rc;

	append_payment(doc, x->p);
	rc = insert(s->payments, cs, doc, reply, e, "payment");
	if (rc && e->kind == ERR_CONFLICT) {
		rc = 1;  /* recorded already: (idem_key, kind) is unique */
	} else if (rc == 0 && (rc = find_one(s->subs, f, NULL, cs, &sub, e, "subscription")) >= 0) {
		if (sub)
			get_id(sub, "plan_id", plan_id, sizeof(plan_id));
		rc = events_put(s, cs, x->a, x->p->created_at, plan_id, x->ev, x->nev, NULL, NULL, reply, e);
	}
	bson_destroy(doc);
	bson_destroy(f);
	bson_destroy(sub);
	return rc;
}

static int mg_payment_record(struct store *st, const struct payment *p, const struct event_spec *ev, size_t nev,
			     const struct actor *a, bool *existed, struct err *e)
{
	struct payment_arg x = {p, ev, nev, a};
	int rc = transaction(MG(st), payment_tx, &x, e);

	*existed = rc == 1;
	return rc < 0 ? -1 : 0;
}

/* --- pages -------------------------------------------------------------------------------- */

/* Runs a find sorted newest first on (key, _id) after the page's position; read fills item i. */
static int page_find(mongoc_collection_t *c, bson_t *filter, const char *key, const struct seq_page *pg,
		     void (*read)(const bson_t *doc, void *items, size_t i), void *items, size_t *n, struct err *e)
{
	bson_t *opts = BCON_NEW("sort", "{", key, BCON_INT32(-1), "_id", BCON_INT32(-1), "}", "limit",
				BCON_INT64(pg->limit));
	mongoc_cursor_t *cur;
	const bson_t *doc;
	bson_error_t be;
	bson_oid_t oid;
	int rc = 0;

	*n = 0;
	if (pg->before_seq) {
		bson_oid_init_from_string(&oid, pg->before_id);
		BCON_APPEND(filter, "$or", "[", "{", key, "{", "$lt", BCON_DATE_TIME(pg->before_seq), "}", "}",
			    "{", key, BCON_DATE_TIME(pg->before_seq), "_id", "{", "$lt", BCON_OID(&oid), "}", "}", "]");
	}
	cur = mongoc_collection_find_with_opts(c, filter, opts, NULL);
	while ((int)*n < pg->limit && mongoc_cursor_next(cur, &doc))
		read(doc, items, (*n)++);
	if (mongoc_cursor_error(cur, &be))
		rc = mg_fail(&be, NULL, e, "list");
	mongoc_cursor_destroy(cur);
	bson_destroy(opts);
	return rc;
}

static void sub_item(const bson_t *doc, void *items, size_t i)
{
	sub_read(doc, &((struct subscription *)items)[i]);
}

static int mg_sub_list(struct store *st, const char *customer_id, const char *status, const struct seq_page *pg,
		       struct subscription **out, size_t *n, struct err *e)
{
	bson_t *filter = bson_new();
	int rc;

	*out = xcalloc((size_t)pg->limit + 1, sizeof(**out));
	append_oid(filter, "customer_id", customer_id);
	if (status)
		BSON_APPEND_UTF8(filter, "status", status);
	rc = page_find(MG(st)->subs, filter, "created_at", pg, sub_item, *out, n, e);
	if (rc == 0)
		rc = plan_names(MG(st), *out, *n, e);
	bson_destroy(filter);
	if (rc) {
		for (size_t i = 0; i < *n; i++)
			subscription_clear(&(*out)[i]);
		free(*out);
		*out = NULL;
		*n = 0;
	}
	return rc;
}

static void audit_item(const bson_t *doc, void *items, size_t i)
{
	struct audit_event *a = &((struct audit_event *)items)[i];
	bson_iter_t it;

	get_id(doc, "_id", a->id, sizeof(a->id));
	a->at = a->seq = get_int(doc, "at");
	get_str(doc, "action", a->action, sizeof(a->action));
	get_str(doc, "actor_type", a->actor_type, sizeof(a->actor_type));
	get_str(doc, "actor_id", a->actor_id, sizeof(a->actor_id));
	get_str(doc, "resource_type", a->resource_type, sizeof(a->resource_type));
	get_str(doc, "resource_id", a->resource_id, sizeof(a->resource_id));
	get_str(doc, "plan_id", a->plan_id, sizeof(a->plan_id));
	a->has_before = read_counts(doc, "before", &a->before);
	a->has_after = read_counts(doc, "after", &a->after);
	if (bson_iter_init_find(&it, doc, "detail") && BSON_ITER_HOLDS_UTF8(&it))
		a->detail = xstrdup(bson_iter_utf8(&it, NULL));
	get_str(doc, "trace_id", a->trace_id, sizeof(a->trace_id));
	get_str(doc, "ip", a->ip, sizeof(a->ip));
}

static int mg_audit_list(struct store *st, const struct audit_filter *f, const struct seq_page *pg,
			 struct audit_event **out, size_t *n, struct err *e)
{
	bson_t *filter = bson_new();
	int rc;

	*out = xcalloc((size_t)pg->limit + 1, sizeof(**out));
	if (f->plan_id)
		BSON_APPEND_UTF8(filter, "plan_id", f->plan_id);
	if (f->trace_id)
		BSON_APPEND_UTF8(filter, "trace_id", f->trace_id);
	if (f->action)
		BSON_APPEND_UTF8(filter, "action", f->action);
	rc = page_find(MG(st)->audit, filter, "at", pg, audit_item, *out, n, e);
	bson_destroy(filter);
	if (rc) {
		for (size_t i = 0; i < *n; i++)
			audit_event_clear(&(*out)[i]);
		free(*out);
		*out = NULL;
		*n = 0;
	}
	return rc;
}

/* --- the reaper's facts ------------------------------------------------------------------- */

static int mg_lease_take(struct store *st, const char *name, const char *holder, int64_t now, int64_t until,
			 bool *taken, struct err *e)
{
	bson_t *f = BCON_NEW("_id", BCON_UTF8(name), "$or", "[", "{", "until", "{", "$lte", BCON_DATE_TIME(now), "}",
			     "}", "{", "holder", BCON_UTF8(holder), "}", "]");
	bson_t *upd = BCON_NEW("$set", "{", "holder", BCON_UTF8(holder), "until", BCON_DATE_TIME(until), "}"), reply;
	mongoc_find_and_modify_opts_t *fo = mongoc_find_and_modify_opts_new();
	bool found;
	int rc = 0;

	/* An upsert that matches no free lease runs into the unique _id of the held one. */
	*taken = false;
	bson_init(&reply);
	mongoc_find_and_modify_opts_set_update(fo, upd);
	mongoc_find_and_modify_opts_set_flags(fo, MONGOC_FIND_AND_MODIFY_UPSERT | MONGOC_FIND_AND_MODIFY_RETURN_NEW);
	if (modify_with(MG(st)->leases, f, fo, NULL, &found, &reply, e, "lease") == 0)
		*taken = true;
	else if (e->kind == ERR_CONFLICT)
		err_clear(e);
	else
		rc = -1;
	bson_destroy(&reply);
	mongoc_find_and_modify_opts_destroy(fo);
	bson_destroy(f);
	bson_destroy(upd);
	return rc;
}

/* The documents of a find as an array of items; read fills item i. */
static int find_all(mongoc_collection_t *c, const bson_t *filter, const bson_t *opts, size_t size,
		    void (*read)(const bson_t *doc, void *items, size_t i), void **out, size_t *n, struct err *e)
{
	mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c, filter, opts, NULL);
	const bson_t *doc;
	bson_error_t be;
	size_t cap = 0;
	int rc = 0;

	*out = NULL;
	*n = 0;
	while (mongoc_cursor_next(cur, &doc)) {
		if (*n == cap) {
			cap = cap ? 2 * cap : 16;
			*out = xrealloc(*out, cap * size);
		}
		read(doc, *out, (*n)++);
	}
	if (mongoc_cursor_error(cur, &be))
		rc = mg_fail(&be, NULL, e, "find");
	mongoc_cursor_destroy(cur);
	return rc;
}

static void feed_item(const bson_t *doc, void *items, size_t i)
{
	memset(&((struct audit_event *)items)[i], 0, sizeof(struct audit_event));
	audit_item(doc, items, i);
	((struct audit_event *)items)[i].seq = get_int(doc, "seq");
}

static int mg_feed_read(struct store *st, int64_t after, const char *type, int limit, struct audit_event **out,
			size_t *n, struct err *e)
{
	bson_t *filter = BCON_NEW("seq", "{", "$gt", BCON_INT64(after), "}");
	bson_t *opts = BCON_NEW("sort", "{", "seq", BCON_INT32(1), "}", "limit", BCON_INT64(limit));
	int rc;

	if (type)
		BSON_APPEND_UTF8(filter, "action", type);
	rc = find_all(MG(st)->audit, filter, opts, sizeof(**out), feed_item, (void **)out, n, e);
	bson_destroy(filter);
	bson_destroy(opts);
	return rc;
}

/* --- waiting lists ------------------------------------------------------------------------ */

struct join_arg {
	const struct join_req *r;
	const struct actor *a;
	struct join_out *out;
};

static int join_tx(struct mg *s, mongoc_client_session_t *cs, void *arg, bson_t *reply, struct err *e)
{
	struct join_arg *x = arg;
	const struct join_req *r = x->r;
	const struct waitlist_entry *w = r->entry;
	struct join_out *out = x->out;
	bson_t *filter = by_id(w->plan_id), *upd = NULL, *plan = NULL, *why = NULL, *live = NULL, *doc = NULL;
	bson_t *livef = NULL;
	struct seat_counts counts;
	struct actor buyer = *x->a;
	char customer_id[ID_LEN + 1], status[16] = "";
	bson_oid_t pid, cid;
	bool found = false;
	int n, rc = -1;

	memset(out, 0, sizeof(*out));
	if ((n = hold_customer(s, cs, r->customer_id, r->customer, customer_id, reply, e)) != 0) {
		out->result = JOIN_NO_CUSTOMER;
		rc = n;
		goto out;
	}
	/* the plan's document written first: joins, holds and offers of the plan meet there */
	BCON_APPEND(filter, "status", BCON_UTF8("active"), "waitlist_enabled", BCON_BOOL(true), "max_per_order", "{",
		    "$gte", BCON_INT64(w->quantity), "}", "$or", "[", "{", "subscriptions_left", "{", "$lt",
		    BCON_INT64(w->quantity), "}", "}", "{", "waiting", "{", "$gt", BCON_INT64(0), "}", "}", "]");
	upd = BCON_NEW("$inc", "{", "waiting", BCON_INT64(1), "line_seq", BCON_INT64(1), "}", "$set", "{", "updated_at",
		       BCON_DATE_TIME(w->created_at), "}");
	if (modify(s->plans, cs, filter, upd, &plan, &found, reply, e, "join"))
		goto out;
	if (!found) {
		bson_t *f = by_id(w->plan_id);
		n = find_one(s->plans, f, NULL, cs, &why, e, "plan");
		bson_destroy(f);
		if (n < 0)
			goto out;
		if (n == 1) {
			get_str(why, "status", status, sizeof(status));
			out->limit = get_int_or(why, "max_per_order", PLAN_MAX_PER_ORDER_DEFAULT);
			out->available = get_int(why, "subscriptions_left");
		}
		out->result = n == 0 ? JOIN_NO_PLAN : strcmp(status, "active") ? JOIN_PLAN_INACTIVE :
			!get_int(why, "waitlist_enabled") ? JOIN_DISABLED :
			w->quantity > out->limit ? JOIN_ORDER_LIMIT : JOIN_SEATS_AVAILABLE;
		rc = 1;
		goto out;
	}
	bson_oid_init_from_string(&pid, w->plan_id);
	bson_oid_init_from_string(&cid, customer_id);
	if ((out->limit = get_int(plan, "max_per_customer")) > 0) {
		int64_t waiting = sum_in(s->waitlist, cs, BCON_NEW("customer_id", BCON_OID(&cid), "plan_id", BCON_OID(&pid),
								    "status", BCON_UTF8("waiting")), "quantity", e);
		if (waiting < 0 || (out->held = owned_seats(s, cs, customer_id, w->plan_id, e)) < 0)
			goto out;
		out->held += waiting;
		if (out->held + w->quantity > out->limit) {
			out->result = JOIN_CUSTOMER_LIMIT;
			rc = 1;
			goto out;
		}
	}
	livef = BCON_NEW("plan_id", BCON_OID(&pid), "customer_id", BCON_OID(&cid), "status", "{", "$in", "[",
			 BCON_UTF8("waiting"), BCON_UTF8("offered"), "]", "}");
	if ((n = find_one(s->waitlist, livef, NULL, cs, &live, e, "waiting list")) != 0) {
		out->result = JOIN_ALREADY_WAITING;
		rc = n < 0 ? -1 : 1;
		goto out;
	}
	out->entry = *w;
	out->entry.seq = get_int(plan, "line_seq");
	out->entry.position = get_int(plan, "waiting");
	snprintf(out->entry.customer_id, sizeof(out->entry.customer_id), "%s", customer_id);
	snprintf(out->entry.status, sizeof(out->entry.status), "waiting");
	doc = bson_new();
	append_oid(doc, "_id", w->id);
	append_oid(doc, "plan_id", w->plan_id);
	append_oid(doc, "customer_id", customer_id);
	append_oid(doc, "session_id", w->session_id);
	BCON_APPEND(doc, "quantity", BCON_INT64(w->quantity), "status", BCON_UTF8("waiting"), "token_hash",
		    BCON_UTF8(w->token_hash), "offer_key", BCON_UTF8(w->offer_key), "offer_secret",
		    BCON_UTF8(w->offer_secret), "secret_hash", BCON_UTF8(w->secret_hash), "offer_ttl_ms",
		    BCON_INT64(w->offer_ttl_ms), "offer_expires_at", BCON_DATE_TIME(0), "seq", BCON_INT64(out->entry.seq),
		    "created_at", BCON_DATE_TIME(w->created_at), "updated_at", BCON_DATE_TIME(w->created_at));
	if (insert(s->waitlist, cs, doc, reply, e, "waiting-list entry"))
		goto out;
	counts = (struct seat_counts){get_int(plan, "total_capacity"), get_int(plan, "subscriptions_left"),
				      get_int(plan, "subscriptions_held")};
	buyer.id = customer_id;
	if (events_put(s, cs, &buyer, w->created_at, w->plan_id, r->events, r->nevents, &counts, &counts, reply, e))
		goto out;
	out->result = JOIN_DONE;
	rc = 0;
out:
	bson_destroy(filter);
	bson_destroy(upd);
	bson_destroy(plan);
	bson_destroy(why);
	bson_destroy(live);
	bson_destroy(livef);
	bson_destroy(doc);
	return rc;
}

static int mg_waitlist_join(struct store *st, const struct join_req *r, const struct actor *a, struct join_out *out,
			    struct err *e)
{
	struct join_arg x = {r, a, out};

	return transaction(MG(st), join_tx, &x, e) < 0 ? -1 : 0;
}

/* The place in line of a waiting entry: the plan's waiting entries up to it. */
static int64_t position_of(struct mg *s, const struct waitlist_entry *w, struct err *e)
{
	bson_oid_t pid;
	bson_t *f;
	bson_error_t be;
	int64_t n;

	bson_oid_init_from_string(&pid, w->plan_id);
	f = BCON_NEW("plan_id", BCON_OID(&pid), "status", BCON_UTF8("waiting"), "seq", "{", "$lte", BCON_INT64(w->seq), "}");
	n = mongoc_collection_count_documents(s->waitlist, f, NULL, NULL, NULL, &be);
	bson_destroy(f);
	return n < 0 ? mg_fail(&be, NULL, e, "position") : n;
}

static int mg_entry_get(struct store *st, const char *id, struct waitlist_entry *out, bool *found, struct err *e)
{
	bson_t *f = by_id(id), *doc = NULL;
	int n = find_one(MG(st)->waitlist, f, NULL, NULL, &doc, e, "waiting-list entry");

	*found = n == 1;
	if (n == 1) {
		entry_read(doc, out);
		if (!strcmp(out->status, "waiting") && (out->position = position_of(MG(st), out, e)) < 0)
			n = -1;
	}
	bson_destroy(f);
	bson_destroy(doc);
	return n < 0 ? -1 : 0;
}

static void entry_item(const bson_t *doc, void *items, size_t i)
{
	entry_read(doc, &((struct waitlist_entry *)items)[i]);
}

static int mg_waitlist_list(struct store *st, const char *plan_id, int64_t after, int limit,
			    struct waitlist_entry **out, size_t *n, struct err *e)
{
	bson_oid_t pid;
	bson_t *filter, *opts = BCON_NEW("sort", "{", "seq", BCON_INT32(1), "}", "limit", BCON_INT64(limit));
	int64_t pos = 0;
	int rc;

	bson_oid_init_from_string(&pid, plan_id);
	filter = BCON_NEW("plan_id", BCON_OID(&pid), "seq", "{", "$gt", BCON_INT64(after), "}");
	rc = find_all(MG(st)->waitlist, filter, opts, sizeof(**out), entry_item, (void **)out, n, e);
	/* places in line: the waiting ones before the page, then one more for each waiting one */
	for (size_t i = 0; rc == 0 && i < *n; i++) {
		if (strcmp((*out)[i].status, "waiting"))
			continue;
		if (pos == 0 && (pos = position_of(MG(st), &(*out)[i], e)) < 0)
			rc = -1;
		else
			(*out)[i].position = pos++;
	}
	bson_destroy(filter);
	bson_destroy(opts);
	return rc;
}

static int mg_customer_entries(struct store *st, const char *customer_id, int limit, struct waitlist_entry **out,
			       size_t *n, struct err *e)
{
	bson_t *filter = bson_new(), *opts = BCON_NEW("sort", "{", "created_at", BCON_INT32(-1), "_id", BCON_INT32(-1), "}",
						      "limit", BCON_INT64(limit));
	int rc;

	append_oid(filter, "customer_id", customer_id);
	rc = find_all(MG(st)->waitlist, filter, opts, sizeof(**out), entry_item, (void **)out, n, e);
	for (size_t i = 0; rc == 0 && i < *n; i++) {
		int64_t pos;
		if (strcmp((*out)[i].status, "waiting"))
			continue;
		if ((pos = position_of(MG(st), &(*out)[i], e)) < 0)
			rc = -1;
		else
			(*out)[i].position = pos;
	}
	bson_destroy(filter);
	bson_destroy(opts);
	return rc;
}

struct leave_arg {
	const char *id;
	int64_t now;
	const struct event_spec *ev;
	size_t nev;
	const struct actor *a;
	bool *moved;
};

static int leave_tx(struct mg *s, mongoc_client_session_t *cs, void *arg, bson_t *reply, struct err *e)
{
	struct leave_arg *x = arg;
	bson_t *f = by_id(x->id), *upd = NULL, *doc = NULL, *pf = NULL, *pu = NULL, *plan = NULL;
	struct seat_counts counts;
	char plan_id[ID_LEN + 1];
	bool found = false;
	int rc = -1;

	*x->moved = false;
	BSON_APPEND_UTF8(f, "status", "waiting");
	upd = BCON_NEW("$set", "{", "status", BCON_UTF8("left"), "updated_at", BCON_DATE_TIME(x->now), "}");
	if (modify(s->waitlist, cs, f, upd, &doc, &found, reply, e, "leave"))
		goto out;
	if (!found) {
		rc = 0;
		goto out;
	}
	get_id(doc, "plan_id", plan_id, sizeof(plan_id));
	pf = by_id(plan_id);
	pu = BCON_NEW("$inc", "{", "waiting", BCON_INT64(-1), "}", "$set", "{", "updated_at", BCON_DATE_TIME(x->now), "}");
	if (modify(s->plans, cs, pf, pu, &plan, &found, reply, e, "leave") || !found)
		goto out;
	counts = (struct seat_counts){get_int(plan, "total_capacity"), get_int(plan, "subscriptions_left"),
				      get_int(plan, "subscriptions_held")};
	if (events_put(s, cs, x->a, x->now, plan_id, x->ev, x->nev, &counts, &counts, reply, e) ||
	    offers_make(s, cs, plan_id, x->now, x->a, reply, e))
		goto out;
	*x->moved = true;
	rc = 0;
out:
	bson_destroy(f);
	bson_destroy(upd);
	bson_destroy(doc);
	bson_destroy(pf);
	bson_destroy(pu);
	bson_destroy(plan);
	return rc;
}

static int mg_waitlist_leave(struct store *st, const char *id, int64_t now, const struct event_spec *ev, size_t nev,
			     const struct actor *a, bool *moved, struct waitlist_entry *out, bool *found,
			     struct err *e)
{
	struct leave_arg x = {id, now, ev, nev, a, moved};

	if (transaction(MG(st), leave_tx, &x, e) < 0)
		return -1;
	return mg_entry_get(st, id, out, found, e);
}

/* --- webhooks ----------------------------------------------------------------------------- */

static int mg_webhook_create(struct store *st, struct webhook *w, struct err *e)
{
	struct mg *s = MG(st);
	bson_t *f = BCON_NEW("_id", BCON_UTF8("events")), *counter = NULL, doc = BSON_INITIALIZER, reply = BSON_INITIALIZER;
	int rc = find_one(s->counters, f, NULL, NULL, &counter, e, "feed counter");

	if (rc >= 0) {
		w->cursor = counter ? get_int(counter, "seq") : 0;
		append_oid(&doc, "_id", w->id);
		BSON_APPEND_UTF8(&doc, "url", w->url);
		BSON_APPEND_UTF8(&doc, "events", w->events);
		BSON_APPEND_UTF8(&doc, "description", w->description);
		BSON_APPEND_UTF8(&doc, "secret", w->secret);
		BSON_APPEND_UTF8(&doc, "status", w->status);
		BSON_APPEND_DATE_TIME(&doc, "created_at", w->created_at);
		BSON_APPEND_INT64(&doc, "cursor", w->cursor);
		rc = insert(s->webhooks, NULL, &doc, &reply, e, "webhook endpoint");
	}
	bson_destroy(&reply);
	bson_destroy(&doc);
	bson_destroy(counter);
	bson_destroy(f);
	return rc < 0 ? -1 : 0;
}

static void webhook_item(const bson_t *doc, void *items, size_t i)
{
	struct webhook *w = &((struct webhook *)items)[i];

	memset(w, 0, sizeof(*w));
	get_id(doc, "_id", w->id, sizeof(w->id));
	w->url = get_strdup(doc, "url");
	w->events = get_strdup(doc, "events");
	w->description = get_strdup(doc, "description");
	get_str(doc, "secret", w->secret, sizeof(w->secret));
	get_str(doc, "status", w->status, sizeof(w->status));
	w->created_at = get_int(doc, "created_at");
	w->cursor = get_int(doc, "cursor");
}

static int mg_webhook_list(struct store *st, struct webhook **out, size_t *n, struct err *e)
{
	bson_t *filter = bson_new();
	bson_t *opts = BCON_NEW("sort", "{", "created_at", BCON_INT32(1), "_id", BCON_INT32(1), "}", "limit",
				BCON_INT64(WEBHOOKS_MAX));
	int rc = find_all(MG(st)->webhooks, filter, opts, sizeof(**out), webhook_item, (void **)out, n, e);

	bson_destroy(filter);
	bson_destroy(opts);
	return rc;
}

static int mg_webhook_delete(struct store *st, const char *id, bool *found, struct err *e)
{
	struct mg *s = MG(st);
	bson_t *f = by_id(id), *of = BCON_NEW("endpoint_id", BCON_UTF8(id)), reply;
	bson_error_t be;
	int rc = 0;

	*found = false;
	if (!mongoc_collection_delete_one(s->webhooks, f, NULL, &reply, &be))
		rc = mg_fail(&be, &reply, e, "webhook endpoint");
	else
		*found = get_int(&reply, "deletedCount") == 1;
	bson_destroy(&reply);
	if (rc == 0 && !mongoc_collection_delete_many(s->deliveries, of, NULL, NULL, &be))
		rc = mg_fail(&be, NULL, e, "webhook deliveries");
	bson_destroy(f);
	bson_destroy(of);
	return rc;
}

struct webhook_advance_arg {
	const char *endpoint_id;
	const struct delivery *d;
	int64_t cursor;
	bool disable;
};

static int webhook_advance_tx(struct mg *s, mongoc_client_session_t *cs, void *arg, bson_t *reply, struct err *e)
{
	struct webhook_advance_arg *x = arg;
	const struct delivery *d = x->d;
	bson_t *f = by_id(x->endpoint_id), *upd = BCON_NEW("$max", "{", "cursor", BCON_INT64(x->cursor), "}");
	int rc = 0;

	if (d) {
		bson_t *df = BCON_NEW("endpoint_id", BCON_UTF8(x->endpoint_id), "seq", BCON_INT64(d->seq));
		bson_t *set = BCON_NEW("$set", "{", "event_id", BCON_UTF8(d->event_id), "attempts", BCON_INT32(d->attempts),
				       "last_status", BCON_INT32(d->last_status), "last_error", BCON_UTF8(d->last_error),
				       "state", BCON_UTF8(d->state), "next_attempt_at", BCON_DATE_TIME(d->next_attempt_at),
				       "updated_at", BCON_DATE_TIME(d->updated_at), "}",
				       "$setOnInsert", "{", "first_attempt_at", BCON_DATE_TIME(d->first_attempt_at), "}");
		bson_t *opts = in_session(cs);
		bson_error_t be;

		BSON_APPEND_BOOL(opts, "upsert", true);
		bson_destroy(reply);
		if (!mongoc_collection_update_one(s->deliveries, df, set, opts, reply, &be))
			rc = mg_fail(&be, reply, e, "webhook delivery");
		bson_destroy(opts);
		bson_destroy(df);
		bson_destroy(set);
	}
	if (x->disable)
		BCON_APPEND(upd, "$set", "{", "status", BCON_UTF8("disabled"), "}");
	if (rc == 0 && update(s->webhooks, cs, f, upd, reply, e, "webhook endpoint") < 0)
		rc = -1;
	bson_destroy(f);
	bson_destroy(upd);
	return rc;
}

static int mg_webhook_advance(struct store *st, const char *endpoint_id, const struct delivery *d, int64_t cursor,
			      bool disable, struct err *e)
{
	struct webhook_advance_arg x = {endpoint_id, d, cursor, disable};

	return transaction(MG(st), webhook_advance_tx, &x, e) < 0 ? -1 : 0;
}

static void delivery_item(const bson_t *doc, void *items, size_t i)
{
	struct delivery *d = &((struct delivery *)items)[i];

	memset(d, 0, sizeof(*d));
	get_str(doc, "endpoint_id", d->endpoint_id, sizeof(d->endpoint_id));
	d->seq = get_int(doc, "seq");
	get_str(doc, "event_id", d->event_id, sizeof(d->event_id));
	d->attempts = (int)get_int(doc, "attempts");
	d->last_status = (int)get_int(doc, "last_status");
	get_str(doc, "last_error", d->last_error, sizeof(d->last_error));
	get_str(doc, "state", d->state, sizeof(d->state));
	d->first_attempt_at = get_int(doc, "first_attempt_at");
	d->next_attempt_at = get_int(doc, "next_attempt_at");
	d->updated_at = get_int(doc, "updated_at");
}

static int mg_delivery_list(struct store *st, const char *endpoint_id, const struct seq_page *pg,
			    struct delivery **out, size_t *n, struct err *e)
{
	bson_t *filter = BCON_NEW("endpoint_id", BCON_UTF8(endpoint_id), "seq", "{", "$lt",
				  BCON_INT64(pg->before_seq ? pg->before_seq : INT64_MAX), "}");
	bson_t *opts = BCON_NEW("sort", "{", "seq", BCON_INT32(-1), "}", "limit", BCON_INT64(pg->limit));
	int rc = find_all(MG(st)->deliveries, filter, opts, sizeof(**out), delivery_item, (void **)out, n, e);

	bson_destroy(filter);
	bson_destroy(opts);
	return rc;
}

/* --- the outbox ---------------------------------------------------------------------------- */

static void mail_read(const bson_t *doc, struct mail *m)
{
	bson_iter_t it;

	memset(m, 0, sizeof(*m));
	get_id(doc, "_id", m->id, sizeof(m->id));
	get_str(doc, "kind", m->kind, sizeof(m->kind));
	get_id(doc, "customer_id", m->customer_id, sizeof(m->customer_id));
	get_id(doc, "event_id", m->event_id, sizeof(m->event_id));
	m->data = get_strdup(doc, "data");
	if (bson_iter_init_find(&it, doc, "secret") && BSON_ITER_HOLDS_UTF8(&it))
		m->secret = xstrdup(bson_iter_utf8(&it, NULL));
	get_str(doc, "status", m->status, sizeof(m->status));
	m->attempts = (int)get_int(doc, "attempts");
	m->next_attempt_at = get_int(doc, "next_attempt_at");
	get_str(doc, "last_error", m->last_error, sizeof(m->last_error));
	m->created_at = get_int(doc, "created_at");
	m->updated_at = get_int(doc, "updated_at");
}

static void mail_item(const bson_t *doc, void *items, size_t i)
{
	mail_read(doc, &((struct mail *)items)[i]);
}

static int mg_mail_due(struct store *st, int64_t now, int limit, struct mail **out, size_t *n, struct err *e)
{
	bson_t *f = BCON_NEW("status", BCON_UTF8("queued"), "next_attempt_at", "{", "$lte", BCON_DATE_TIME(now), "}");
	bson_t *opts = BCON_NEW("sort", "{", "next_attempt_at", BCON_INT32(1), "_id", BCON_INT32(1), "}", "limit",
				BCON_INT64(limit));
	int rc = find_all(MG(st)->mail, f, opts, sizeof(**out), mail_item, (void **)out, n, e);

	bson_destroy(f);
	bson_destroy(opts);
	return rc;
}

static int mg_mail_list(struct store *st, const char *status, const struct seq_page *pg, struct mail **out,
			size_t *n, struct err *e)
{
	bson_t *f = bson_new();
	bson_t *opts = BCON_NEW("sort", "{", "created_at", BCON_INT32(-1), "_id", BCON_INT32(-1), "}", "limit",
				BCON_INT64(pg->limit));
	int rc;

	if (status)
		BSON_APPEND_UTF8(f, "status", status);
	if (pg->before_seq) {
		bson_oid_t oid;
		bson_oid_init_from_string(&oid, id_valid(pg->before_id) ? pg->before_id : "000000000000000000000000");
		BCON_APPEND(f, "$or", "[", "{", "created_at", "{", "$lt", BCON_DATE_TIME(pg->before_seq), "}", "}",
			    "{", "created_at", BCON_DATE_TIME(pg->before_seq), "_id", "{", "$lt", BCON_OID(&oid), "}", "}",
			    "]");
	}
	rc = find_all(MG(st)->mail, f, opts, sizeof(**out), mail_item, (void **)out, n, e);
	bson_destroy(f);
	bson_destroy(opts);
	return rc;
}

struct mail_mark_arg {
	const struct mail *m;
	int attempts;
	const struct event_spec *ev;
	size_t nev;
	const struct actor *a;
};

static int mail_mark_tx(struct mg *s, mongoc_client_session_t *cs, void *arg, bson_t *reply, struct err *e)
{
	struct mail_mark_arg *x = arg;
	int64_t now = now_ms();
	bson_t *f = by_id(x->m->id), *upd;
	int n;

	BCON_APPEND(f, "status", BCON_UTF8("queued"), "attempts", BCON_INT64(x->attempts));
	upd = BCON_NEW("$set", "{", "status", BCON_UTF8(x->m->status), "attempts", BCON_INT64(x->m->attempts),
		       "next_attempt_at", BCON_DATE_TIME(x->m->next_attempt_at), "last_error", BCON_UTF8(x->m->last_error),
		       "updated_at", BCON_DATE_TIME(now), "}");
	n = update(s->mail, cs, f, upd, reply, e, "mail mark");
	bson_destroy(f);
	bson_destroy(upd);
	if (n < 0)
		return -1;
	if (n == 0)
		return 1;  /* moved on meanwhile: nothing to commit */
	return events_put(s, cs, x->a, now, NULL, x->ev, x->nev, NULL, NULL, reply, e) ? -1 : 0;
}

static int mg_mail_mark(struct store *st, const struct mail *m, int attempts, const struct event_spec *ev, size_t nev,
			const struct actor *a, bool *moved, struct err *e)
{
	struct mail_mark_arg x = {m, attempts, ev, nev, a};
	int rc = transaction(MG(st), mail_mark_tx, &x, e);

	*moved = rc == 0;
	return rc < 0 ? -1 : 0;
}

static int mg_holds_overdue(struct store *st, int64_t now, int limit, struct subscription **out, size_t *n,
			    struct err *e)
{
	bson_t *f = BCON_NEW("status", BCON_UTF8("pending"), "hold_deadline", "{", "$lte", BCON_DATE_TIME(now), "}");
	bson_t *opts = BCON_NEW("sort", "{", "hold_deadline", BCON_INT32(1), "}", "limit", BCON_INT64(limit));
	int rc = find_all(MG(st)->subs, f, opts, sizeof(**out), sub_item, (void **)out, n, e);

	if (rc == 0)
		rc = plan_names(MG(st), *out, *n, e);
	bson_destroy(f);
	bson_destroy(opts);
	return rc;
}

static int mg_subs_to_remind(struct store *st, int64_t by, int limit, struct subscription **out, size_t *n,
			     struct err *e)
{
	/* by the index of status and end_at; a document from before reminders has none sent */
	bson_t *f = BCON_NEW("status", BCON_UTF8("active"), "end_at", "{", "$lte", BCON_DATE_TIME(by), "}",
			     "$expr", "{", "$ne", "[", BCON_UTF8("$reminded_end_at"), BCON_UTF8("$end_at"), "]", "}");
	bson_t *opts = BCON_NEW("sort", "{", "end_at", BCON_INT32(1), "}", "limit", BCON_INT64(limit));
	int rc = find_all(MG(st)->subs, f, opts, sizeof(**out), sub_item, (void **)out, n, e);

	if (rc == 0)
		rc = plan_names(MG(st), *out, *n, e);
	bson_destroy(f);
	bson_destroy(opts);
	return rc;
}

struct remind_arg {
	const char *sub_id;
	int64_t end_at;
	const struct event_spec *ev;
	size_t nev;
	const struct actor *a;
};

static int remind_tx(struct mg *s, mongoc_client_session_t *cs, void *arg, bson_t *reply, struct err *e)
{
	struct remind_arg *x = arg;
	bson_t *f = by_id(x->sub_id), *u, *doc = NULL;
	char plan_id[ID_LEN + 1] = "";
	bool found = false;
	int rc;

	BCON_APPEND(f, "status", BCON_UTF8("active"), "end_at", BCON_DATE_TIME(x->end_at), "reminded_end_at", "{", "$ne",
		    BCON_DATE_TIME(x->end_at), "}");
	u = BCON_NEW("$set", "{", "reminded_end_at", BCON_DATE_TIME(x->end_at), "}");
	rc = modify(s->subs, cs, f, u, &doc, &found, reply, e, "reminder");
	bson_destroy(f);
	bson_destroy(u);
	if (rc || !found) {
		bson_destroy(doc);
		return rc ? -1 : 1;
	}
	get_id(doc, "plan_id", plan_id, sizeof(plan_id));
	bson_destroy(doc);
	return events_put(s, cs, x->a, now_ms(), plan_id, x->ev, x->nev, NULL, NULL, reply, e) ? -1 : 0;
}

static int mg_remind(struct store *st, const char *sub_id, int64_t end_at, const struct event_spec *ev, size_t nev,
		     const struct actor *a, bool *marked, struct err *e)
{
	struct remind_arg x = {sub_id, end_at, ev, nev, a};
	int rc = transaction(MG(st), remind_tx, &x, e);

	*marked = rc == 0;
	return rc < 0 ? -1 : 0;
}

static int64_t due_of(const struct subscription *s)
{
	return !strcmp(s->status, "past_due") ? s->life.next_attempt_at : s->end_at;
}

static int by_due(const void *a, const void *b)
{
	int64_t x = due_of(a), y = due_of(b);

	return x < y ? -1 : x > y;
}

static int mg_subs_due(struct store *st, int64_t now, int limit, struct subscription **out, size_t *n, struct err *e)
{
	/* each by its own index (status with end_at, status with next_attempt_at), then merged */
	static const char *const field[2] = {"end_at", "next_attempt_at"};
	static const char *const status[2] = {"active", "past_due"};
	struct subscription *part[2] = {NULL, NULL};
	size_t np[2] = {0, 0};
	int rc = 0;

	*out = NULL;
	*n = 0;
	for (int i = 0; i < 2 && rc == 0; i++) {
		bson_t *f = BCON_NEW("status", BCON_UTF8(status[i]), field[i], "{", "$lte", BCON_DATE_TIME(now), "}");
		bson_t *opts = BCON_NEW("sort", "{", field[i], BCON_INT32(1), "}", "limit", BCON_INT64(limit));
		rc = find_all(MG(st)->subs, f, opts, sizeof(**out), sub_item, (void **)&part[i], &np[i], e);
		bson_destroy(f);
		bson_destroy(opts);
	}
	*out = xcalloc(np[0] + np[1] + 1, sizeof(**out));
	for (int i = 0; i < 2; i++) {
		if (np[i])
			memcpy(*out + *n, part[i], np[i] * sizeof(**out));
		*n += np[i];
		free(part[i]);
	}
	qsort(*out, *n, sizeof(**out), by_due);
	for (size_t i = (size_t)limit; i < *n; i++)
		subscription_clear(&(*out)[i]);
	if (*n > (size_t)limit)
		*n = (size_t)limit;
	if (rc == 0)
		rc = plan_names(MG(st), *out, *n, e);
	if (rc) {
		for (size_t i = 0; i < *n; i++)
			subscription_clear(&(*out)[i]);
		free(*out);
		*out = NULL;
		*n = 0;
	}
	return rc;
}

static int mg_charges_unrefunded(struct store *st, int limit, struct payment **out, size_t *n, struct err *e)
{
	/* One aggregation on the server: charges whose subscription failed or expired, without a
	 * refund of the same key. */
	bson_t *pipeline = BCON_NEW(
		"pipeline", "[",
		"{", "$match", "{", "kind", BCON_UTF8("charge"), "status", BCON_UTF8("succeeded"), "}", "}",
		"{", "$lookup", "{", "from", BCON_UTF8("subscriptions"), "localField", BCON_UTF8("subscription_id"),
		"foreignField", BCON_UTF8("_id"), "as", BCON_UTF8("sub"), "}", "}",
		"{", "$unwind", BCON_UTF8("$sub"), "}",
		"{", "$match", "{", "$or", "[",
		"{", "sub.status", "{", "$in", "[", BCON_UTF8("failed"), BCON_UTF8("expired"), "]", "}", "}",
		"{", "$expr", "{", "$and", "[", "{", "$ne", "[", BCON_UTF8("$sub.payment_id"), BCON_UTF8("$_id"), "]", "}",
		"{", "$ne", "[", BCON_UTF8("$sub.attempt_key"), BCON_UTF8("$idem_key"), "]", "}", "]", "}", "}",
		"]", "}", "}",
		"{", "$lookup", "{", "from", BCON_UTF8("payments"), "localField", BCON_UTF8("idem_key"),
		"foreignField", BCON_UTF8("idem_key"), "as", BCON_UTF8("all"), "}", "}",
		"{", "$match", "{", "all.kind", "{", "$ne", BCON_UTF8("refund"), "}", "}", "}",
		"{", "$limit", BCON_INT64(limit), "}",
		"]");
	int rc = payments_of(mongoc_collection_aggregate(MG(st)->payments, MONGOC_QUERY_NONE, pipeline, NULL, NULL), limit,
			     out, n, e, "unrefunded charges");

	bson_destroy(pipeline);
	return rc;
}

static int mg_keys_purge(struct store *st, int64_t before, int *n, struct err *e)
{
	bson_t *f = BCON_NEW("state", "{", "$in", "[", BCON_UTF8("done"), BCON_UTF8("started"), "]", "}",
			     "created_at", "{", "$lt", BCON_DATE_TIME(before), "}");
	bson_t reply;
	bson_error_t be;
	int rc = 0;

	*n = 0;
	if (!mongoc_collection_delete_many(MG(st)->keys, f, NULL, &reply, &be))
		rc = mg_fail(&be, &reply, e, "key purge");
	else
		*n = (int)get_int(&reply, "deletedCount");
	bson_destroy(&reply);
	bson_destroy(f);
	return rc;
}

/* --- the snapshot for check ----------------------------------------------------------------- */

/* Walks a sorted find in the snapshot session, calling visit for each document. */
static int walk(mongoc_collection_t *c, mongoc_client_session_t *cs, const bson_t *sort,
		int (*visit)(const bson_t *doc, void *ctx), void *ctx, struct err *e)
{
	bson_t *filter = bson_new(), *opts = in_session(cs);
	mongoc_cursor_t *cur;
	const bson_t *doc;
	bson_error_t be;
	int rc = 0;

	BSON_APPEND_DOCUMENT(opts, "sort", sort);
	cur = mongoc_collection_find_with_opts(c, filter, opts, NULL);
	while (rc == 0 && mongoc_cursor_next(cur, &doc))
		rc = visit(doc, ctx);
	if (rc == 0 && mongoc_cursor_error(cur, &be))
		rc = mg_fail(&be, NULL, e, "snapshot");
	mongoc_cursor_destroy(cur);
	bson_destroy(filter);
	bson_destroy(opts);
	return rc;
}

struct snap {
	struct mg *s;
	mongoc_client_session_t *cs;
	const struct snapshot_visitor *v;
	struct err *e;
};

static int snap_plan(const bson_t *doc, void *ctx)
{
	struct snap *x = ctx;
	struct plan p;
	struct plan_tally t = {&p, 0, 0, false, 0};
	bson_t *f, *last = NULL;
	struct seat_counts c;
	int rc = -1;

	plan_read(doc, &p);
	/* Each event keeps the counts before and after its unit: left went down by the seats
	 * taken, up by those given back. */
	t.held_seats = -sum_in(x->s->audit, x->cs, BCON_NEW("plan_id", BCON_UTF8(p.id), "action", BCON_UTF8("seat.held")),
			       "left_delta", x->e);
	t.released_seats = sum_in(x->s->audit, x->cs,
				  BCON_NEW("plan_id", BCON_UTF8(p.id), "action", BCON_UTF8("seat.released")), "left_delta", x->e);
	if (x->e->kind != ERR_NONE)
		goto out;
	f = BCON_NEW("plan_id", BCON_UTF8(p.id), "after", "{", "$exists", BCON_BOOL(true), "}");
	bson_t *sort = BCON_NEW("at", BCON_INT32(-1), "_id", BCON_INT32(-1));
	int r = find_one(x->s->audit, f, sort, x->cs, &last, x->e, "last event");
	bson_destroy(sort);
	bson_destroy(f);
	if (r < 0)
		goto out;
	if (r == 1 && read_counts(last, "after", &c)) {
		t.has_last = true;
		t.last_left = c.left;
	}
	rc = x->v->plan(x->v->arg, &t);
out:
	bson_destroy(last);
	plan_clear(&p);
	return rc;
}

static int snap_sub(const bson_t *doc, void *ctx)
{
	struct snap *x = ctx;
	struct subscription s;
	int rc;

	sub_read(doc, &s);
	rc = x->v->subscription(x->v->arg, &s);
	subscription_clear(&s);
	return rc;
}

static int snap_payment(const bson_t *doc, void *ctx)
{
	struct snap *x = ctx;
	struct payment p;

	payment_read(doc, &p);
	return x->v->payment(x->v->arg, &p);
}

static int snap_entry(const bson_t *doc, void *ctx)
{
	struct snap *x = ctx;
	struct waitlist_entry w;

	entry_read(doc, &w);
	return x->v->entry(x->v->arg, &w);
}

/* A mail with the action of the event its unit wrote, read in the same snapshot. */
static int snap_mail(const bson_t *doc, void *ctx)
{
	struct snap *x = ctx;
	struct mail m;
	bson_t *f, *ev = NULL;
	int rc;

	mail_read(doc, &m);
	f = by_id(id_valid(m.event_id) ? m.event_id : "000000000000000000000000");
	rc = find_one(x->s->audit, f, NULL, x->cs, &ev, x->e, "mail's event");
	if (rc == 1)
		get_str(ev, "action", m.event_action, sizeof(m.event_action));
	rc = rc < 0 ? -1 : x->v->mail(x->v->arg, &m);
	bson_destroy(ev);
	bson_destroy(f);
	mail_clear(&m);
	return rc;
}

static int mg_snapshot(struct store *st, const struct snapshot_visitor *v, struct err *e)
{
	struct mg *s = MG(st);
	mongoc_session_opt_t *so = mongoc_session_opts_new();
	mongoc_client_session_t *cs = NULL;
	bson_t *by_plan = BCON_NEW("_id", BCON_INT32(1));
	bson_t *by_key = BCON_NEW("idem_key", BCON_INT32(1), "_id", BCON_INT32(1));
	bson_t *by_key_kind = BCON_NEW("idem_key", BCON_INT32(1), "kind", BCON_INT32(1));
	bson_t *by_line = BCON_NEW("plan_id", BCON_INT32(1), "seq", BCON_INT32(1));
	struct snap x = {s, NULL, v, e};
	bson_error_t be;
	int rc = -1;

	/* Every read of a snapshot session sees the same point in time (MongoDB 5.0 and later). */
	mongoc_session_opts_set_snapshot(so, true);
	if (refuse_standalone(s, e))
		goto out;
	if (!(cs = mongoc_client_start_session(s->client, so, &be))) {
		mg_fail(&be, NULL, e, "snapshot session");
		goto out;
	}
	x.cs = cs;
	rc = walk(s->plans, cs, by_plan, snap_plan, &x, e);
	if (rc == 0)
		rc = walk(s->subs, cs, by_key, snap_sub, &x, e);
	if (rc == 0)
		rc = walk(s->payments, cs, by_key_kind, snap_payment, &x, e);
	if (rc == 0 && v->entry)
		rc = walk(s->waitlist, cs, by_line, snap_entry, &x, e);
	if (rc == 0 && v->mail)
		rc = walk(s->mail, cs, by_plan, snap_mail, &x, e);
out:
	mongoc_client_session_destroy(cs);
	mongoc_session_opts_destroy(so);
	bson_destroy(by_plan);
	bson_destroy(by_key);
	bson_destroy(by_key_kind);
	bson_destroy(by_line);
	return rc;
}

/* --- lifecycle ---------------------------------------------------------------------------- */

static int mg_ping(struct store *st, struct err *e)
{
	struct mg *s = MG(st);
	bson_t *cmd = BCON_NEW("ping", BCON_INT32(1)), reply;
	bson_error_t be;
	int rc = 0;

	if (!mongoc_client_command_simple(s->client, "admin", cmd, NULL, &reply, &be))
		rc = mg_fail(&be, &reply, e, "ping");
	else
		rc = refuse_standalone(s, e);
	bson_destroy(&reply);
	bson_destroy(cmd);
	return rc;
}

static int mg_reset(struct store *st, struct err *e)
{
	struct mg *s = MG(st);
	mongoc_collection_t *all[] = {s->audit, s->payments, s->keys, s->subs, s->customers, s->plans, s->leases,
				      s->webhooks, s->deliveries, s->waitlist, s->mail, s->links, s->link_limits,
				      s->sessions};
	bson_t *empty = bson_new();
	bson_error_t be;
	int rc = 0;

	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]) && rc == 0; i++)
		if (!mongoc_collection_delete_many(all[i], empty, NULL, NULL, &be))
			rc = mg_fail(&be, NULL, e, "reset");
	bson_destroy(empty);
	return rc;
}

static void mg_close(struct store *st)
{
	struct mg *s = MG(st);

	mongoc_collection_destroy(s->plans);
	mongoc_collection_destroy(s->customers);
	mongoc_collection_destroy(s->subs);
	mongoc_collection_destroy(s->keys);
	mongoc_collection_destroy(s->payments);
	mongoc_collection_destroy(s->audit);
	mongoc_collection_destroy(s->leases);
	mongoc_collection_destroy(s->counters);
	mongoc_collection_destroy(s->webhooks);
	mongoc_collection_destroy(s->deliveries);
	mongoc_collection_destroy(s->waitlist);
	mongoc_collection_destroy(s->mail);
	mongoc_collection_destroy(s->links);
	mongoc_collection_destroy(s->link_limits);
	mongoc_collection_destroy(s->sessions);
	mongoc_database_destroy(s->db);
	mongoc_client_destroy(s->client);
	free(s);
}

static const struct store_ops mongo_ops = {
	.name = "mongodb",
	.close = mg_close,
	.ping = mg_ping,
	.reset = mg_reset,
	.plan_create = mg_plan_create,
	.plan_get = mg_plan_get,
	.plan_list = mg_plan_list,
	.plan_update = mg_plan_update,
	.customer_create = mg_customer_create,
	.customer_get = mg_customer_get,
	.customer_processor_set = mg_customer_processor_set,
	.key_claim = mg_key_claim,
	.key_finish = mg_key_finish,
	.key_forget = mg_key_forget,
	.key_get = mg_key_get,
	.hold = mg_hold,
	.transition = mg_transition,
	.payments_in = mg_payments_in,
	.payment_mark = mg_payment_mark,
	.held_by_kind = mg_held_by_kind,
	.payment_totals = mg_payment_totals,
	.sub_totals = mg_sub_totals,
	.attempt_take = mg_attempt_take,
	.payment_record = mg_payment_record,
	.sub_get = mg_sub_get,
	.sub_list = mg_sub_list,
	.audit_list = mg_audit_list,
	.feed_read = mg_feed_read,
	.waitlist_join = mg_waitlist_join,
	.entry_get = mg_entry_get,
	.waitlist_list = mg_waitlist_list,
	.waitlist_leave = mg_waitlist_leave,
	.webhook_create = mg_webhook_create,
	.webhook_list = mg_webhook_list,
	.webhook_delete = mg_webhook_delete,
	.webhook_advance = mg_webhook_advance,
	.delivery_list = mg_delivery_list,
	.mail_due = mg_mail_due,
	.mail_mark = mg_mail_mark,
	.login_link = mg_login_link,
	.login_exchange = mg_login_exchange,
	.session_get = mg_session_get,
	.session_end = mg_session_end,
	.customer_payments = mg_customer_payments,
	.customer_entries = mg_customer_entries,
	.subs_to_remind = mg_subs_to_remind,
	.remind = mg_remind,
	.mail_list = mg_mail_list,
	.lease_take = mg_lease_take,
	.holds_overdue = mg_holds_overdue,
	.subs_due = mg_subs_due,
	.charges_unrefunded = mg_charges_unrefunded,
	.keys_purge = mg_keys_purge,
	.snapshot = mg_snapshot,
};

/* One index: {name, key, unique?}. */
static void index_add(bson_t *arr, int i, const char *name, bson_t *key, bool unique)
{
	char k[8];
	bson_t ix;

	snprintf(k, sizeof(k), "%d", i);
	BSON_APPEND_DOCUMENT_BEGIN(arr, k, &ix);
	BSON_APPEND_UTF8(&ix, "name", name);
	BSON_APPEND_DOCUMENT(&ix, "key", key);
	if (unique)
		BSON_APPEND_BOOL(&ix, "unique", true);
	bson_append_document_end(arr, &ix);
	bson_destroy(key);
}

/* createIndexes for one collection; idempotent (same name and keys: nothing to do). */
static int indexes(struct mg *s, const char *coll, int n, const char *const *names, bson_t **keys,
		   const bool *unique, struct err *e)
{
	bson_t cmd = BSON_INITIALIZER, arr, reply;
	bson_error_t be;
	int rc = 0;

	BSON_APPEND_UTF8(&cmd, "createIndexes", coll);
	BSON_APPEND_ARRAY_BEGIN(&cmd, "indexes", &arr);
	for (int i = 0; i < n; i++)
		index_add(&arr, i, names[i], keys[i], unique[i]);
	bson_append_array_end(&cmd, &arr);
	if (!mongoc_database_write_command_with_opts(s->db, &cmd, NULL, &reply, &be))
		rc = mg_fail(&be, &reply, e, "createIndexes");
	bson_destroy(&reply);
	bson_destroy(&cmd);
	return rc;
}

/* Gives the documents written before a field existed its default (a filter must see it);
 * idempotent, so many processes starting at once may all run it. Consumes upd. */
static int backfill(mongoc_collection_t *c, const char *field, bson_t *upd, struct err *e)
{
	bson_t *filter = BCON_NEW(field, "{", "$exists", BCON_BOOL(false), "}");
	bson_error_t be;
	int rc = mongoc_collection_update_many(c, filter, upd, NULL, NULL, &be) ? 0 : mg_fail(&be, NULL, e, "backfill");

	bson_destroy(filter);
	bson_destroy(upd);
	return rc;
}

/* The feed's counter, made once. Events an older version wrote have no position: they take
 * 1..n in the order they were written, and the counter starts after them. Of many processes
 * starting at once one inserts the counter and numbers them; the others go on at once (new
 * events take positions after n). */
static int feed_counter(struct mg *s, struct err *e)
{
	bson_t *f = BCON_NEW("_id", BCON_UTF8("events"));
	bson_t *unplaced = BCON_NEW("seq", "{", "$exists", BCON_BOOL(false), "}");
	bson_t *opts = BCON_NEW("upsert", BCON_BOOL(true)), *doc = NULL, *upd = NULL, reply = BSON_INITIALIZER;
	bson_error_t be;
	int64_t n;
	int rc = find_one(s->counters, f, NULL, NULL, &doc, e, "feed counter");

	if (rc != 0) {
		rc = rc < 0 ? -1 : 0;
		goto out;
	}
	if ((n = mongoc_collection_count_documents(s->audit, unplaced, NULL, NULL, NULL, &be)) < 0) {
		rc = mg_fail(&be, NULL, e, "count events");
		goto out;
	}
	upd = BCON_NEW("$setOnInsert", "{", "seq", BCON_INT64(n), "}");
	if (!mongoc_collection_update_one(s->counters, f, upd, opts, &reply, &be)) {
		rc = mg_fail(&be, &reply, e, "feed counter");
		goto out;
	}
	if (get_int(&reply, "upsertedCount") == 1 && n > 0) {
		bson_t *sort = BCON_NEW("sort", "{", "at", BCON_INT32(1), "_id", BCON_INT32(1), "}");
		mongoc_cursor_t *cur = mongoc_collection_find_with_opts(s->audit, unplaced, sort, NULL);
		const bson_t *ev;
		int64_t pos = 0;

		while (rc == 0 && pos < n && mongoc_cursor_next(cur, &ev)) {
			bson_iter_t it;
			bson_t *one, *set = BCON_NEW("$set", "{", "seq", BCON_INT64(++pos), "}");

			bson_iter_init_find(&it, ev, "_id");
			one = BCON_NEW("_id", BCON_OID(bson_iter_oid(&it)), "seq", "{", "$exists", BCON_BOOL(false), "}");
			if (!mongoc_collection_update_one(s->audit, one, set, NULL, NULL, &be))
				rc = mg_fail(&be, NULL, e, "number events");
			bson_destroy(one);
			bson_destroy(set);
		}
		if (rc == 0 && mongoc_cursor_error(cur, &be))
			rc = mg_fail(&be, NULL, e, "number events");
		mongoc_cursor_destroy(cur);
		bson_destroy(sort);
	}
out:
	bson_destroy(&reply);
	bson_destroy(doc);
	bson_destroy(upd);
	bson_destroy(opts);
	bson_destroy(unplaced);
	bson_destroy(f);
	return rc;
}

static int schema(struct mg *s, struct err *e)
{
	static const char *const plan_n[] = {"name_key_unique", "status_price"};
	static const bool plan_u[] = {true, false};
	static const char *const cust_n[] = {"email_key_unique"};
	static const bool cust_u[] = {true};
	static const char *const sub_n[] = {"idem_key_unique", "hold_deadline", "customer_created", "plan_status",
					    "status_end", "status_next_attempt"};
	static const bool sub_u[] = {true, false, false, false, false, false};
	static const char *const pay_n[] = {"idem_key_kind_unique", "subscription", "status_created"};
	static const bool pay_u[] = {true, false, false};
	static const char *const aud_n[] = {"plan_at", "trace_at", "action_at", "at", "feed"};
	static const bool aud_u[] = {false, false, false, false, false};
	static const char *const key_n[] = {"state_created"};
	static const char *const del_n[] = {"endpoint_seq_unique"};
	static const bool del_u[] = {true};
	static const char *const line_n[] = {"plan_status_seq", "session", "customer_created"};
	static const bool line_u[] = {false, true, false};
	static const bool key_u[] = {false};
	static const char *const mail_n[] = {"status_next_attempt", "created", "status_created"};
	static const bool mail_u[] = {false, false, false};
	static const char *const link_n[] = {"email_created"};
	static const bool link_u[] = {false};
	bson_t *link_k[] = {BCON_NEW("email", BCON_INT32(1), "created_at", BCON_INT32(1))};
	bson_t *mail_k[] = {BCON_NEW("status", BCON_INT32(1), "next_attempt_at", BCON_INT32(1), "_id", BCON_INT32(1)),
			    BCON_NEW("created_at", BCON_INT32(-1), "_id", BCON_INT32(-1)),
			    BCON_NEW("status", BCON_INT32(1), "created_at", BCON_INT32(-1), "_id", BCON_INT32(-1))};
	bson_t *plan_k[] = {BCON_NEW("name_key", BCON_INT32(1)), BCON_NEW("status", BCON_INT32(1), "price_cents", BCON_INT32(1))};
	bson_t *cust_k[] = {BCON_NEW("email_key", BCON_INT32(1))};
	bson_t *sub_k[] = {BCON_NEW("idem_key", BCON_INT32(1)),
			   BCON_NEW("status", BCON_INT32(1), "hold_deadline", BCON_INT32(1)),
			   BCON_NEW("customer_id", BCON_INT32(1), "created_at", BCON_INT32(-1), "_id", BCON_INT32(-1)),
			   BCON_NEW("plan_id", BCON_INT32(1), "status", BCON_INT32(1)),
			   BCON_NEW("status", BCON_INT32(1), "end_at", BCON_INT32(1)),
			   BCON_NEW("status", BCON_INT32(1), "next_attempt_at", BCON_INT32(1))};
	bson_t *pay_k[] = {BCON_NEW("idem_key", BCON_INT32(1), "kind", BCON_INT32(1)),
			   BCON_NEW("subscription_id", BCON_INT32(1)),
			   BCON_NEW("status", BCON_INT32(1), "created_at", BCON_INT32(1))};
	bson_t *aud_k[] = {BCON_NEW("plan_id", BCON_INT32(1), "at", BCON_INT32(-1), "_id", BCON_INT32(-1)),
			   BCON_NEW("trace_id", BCON_INT32(1), "at", BCON_INT32(-1), "_id", BCON_INT32(-1)),
			   BCON_NEW("action", BCON_INT32(1), "at", BCON_INT32(-1), "_id", BCON_INT32(-1)),
			   BCON_NEW("at", BCON_INT32(-1), "_id", BCON_INT32(-1)),
			   BCON_NEW("seq", BCON_INT32(1))};
	bson_t *key_k[] = {BCON_NEW("state", BCON_INT32(1), "created_at", BCON_INT32(1))};
	bson_t *del_k[] = {BCON_NEW("endpoint_id", BCON_INT32(1), "seq", BCON_INT32(-1))};
	bson_t *line_k[] = {BCON_NEW("plan_id", BCON_INT32(1), "status", BCON_INT32(1), "seq", BCON_INT32(1)),
			    BCON_NEW("session_id", BCON_INT32(1)),
			    BCON_NEW("customer_id", BCON_INT32(1), "created_at", BCON_INT32(-1))};
	int rc = 0;

	/* Each call consumes its keys, so all run even after a failure. */
	rc |= indexes(s, "plans", 2, plan_n, plan_k, plan_u, e);
	rc |= indexes(s, "customers", 1, cust_n, cust_k, cust_u, e);
	rc |= indexes(s, "subscriptions", 6, sub_n, sub_k, sub_u, e);
	rc |= indexes(s, "payments", 3, pay_n, pay_k, pay_u, e);
	rc |= indexes(s, "audit_events", 5, aud_n, aud_k, aud_u, e);
	rc |= indexes(s, "idempotency_keys", 1, key_n, key_k, key_u, e);
	rc |= indexes(s, "webhook_deliveries", 1, del_n, del_k, del_u, e);
	rc |= indexes(s, "waitlist", 3, line_n, line_k, line_u, e);
	rc |= indexes(s, "mail", 3, mail_n, mail_k, mail_u, e);
	rc |= indexes(s, "login_links", 1, link_n, link_k, link_u, e);
	rc |= backfill(s->plans, "max_per_order", BCON_NEW("$set", "{", "max_per_order", BCON_INT64(PLAN_MAX_PER_ORDER_DEFAULT),
							  "max_per_customer", BCON_INT64(0), "}"), e);
	rc |= backfill(s->plans, "waiting", BCON_NEW("$set", "{", "waiting", BCON_INT64(0), "line_seq", BCON_INT64(0),
						     "waitlist_enabled", BCON_BOOL(false), "}"), e);
	rc |= feed_counter(s, e);
	return rc ? -1 : 0;
}

/* Transactions need a replica set (or mongos); a standalone mongod cannot run them. */
static int topology(struct mg *s, const char *url, struct err *e)
{
	char shown[256];

	bson_t *cmd = BCON_NEW("hello", BCON_INT32(1)), reply;
	bson_error_t be;
	bson_iter_t it;
	int rc = 0;

	if (!mongoc_client_command_simple(s->client, "admin", cmd, NULL, &reply, &be)) {
		rc = mg_fail(&be, &reply, e, "hello");
	} else if (!bson_iter_init_find(&it, &reply, "setName") &&
		   !(bson_iter_init_find(&it, &reply, "msg") && BSON_ITER_HOLDS_UTF8(&it) &&
		     !strcmp(bson_iter_utf8(&it, NULL), "isdbgrid"))) {
		snprintf(s->not_replset, sizeof(s->not_replset),
			 "MongoDB at %.80s is a standalone server, which cannot run the transactions a purchase "
			 "needs: start mongod with --replSet rs0 and run rs.initiate() once, or use "
			 "`docker compose up`, which starts a single-node replica set",
			 store_url_redact(url, shown, sizeof(shown)));
	}
	bson_destroy(&reply);
	bson_destroy(cmd);
	return rc;
}

static void mongoc_init_once(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	/* Threads of a worker open their stores at once. */
	pthread_once(&once, mongoc_init);
}

struct store *store_mongo_open(const char *url, struct err *e)
{
	struct mg *s = xcalloc(1, sizeof(*s));
	mongoc_uri_t *uri = NULL;
	mongoc_write_concern_t *wc = NULL;
	bson_error_t be;
	const char *dbname;

	mongoc_init_once();
	s->base.ops = &mongo_ops;
	if (!(uri = mongoc_uri_new_with_error(url, &be))) {
		err_set(e, ERR_UNAVAILABLE, NULL, "NUMATIX_DB is not a MongoDB URI: %s", be.message);
		goto fail;
	}
	if (!mongoc_uri_has_option(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS))
		mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, SERVER_SELECTION_MS);
	/* Every write waits for a majority: a 2xx survives the loss of the primary. */
	wc = mongoc_write_concern_new();
	mongoc_write_concern_set_wmajority(wc, 10000);
	mongoc_uri_set_write_concern(uri, wc);
	mongoc_uri_set_appname(uri, "numatix");
	if (!(s->client = mongoc_client_new_from_uri_with_error(uri, &be))) {
		err_set(e, ERR_UNAVAILABLE, NULL, "MongoDB client: %s", be.message);
		goto fail;
	}
	mongoc_client_set_error_api(s->client, MONGOC_ERROR_API_VERSION_2);
	dbname = mongoc_uri_get_database(uri);
	s->db = mongoc_client_get_database(s->client, dbname ? dbname : "numatix");
	s->plans = mongoc_database_get_collection(s->db, "plans");
	s->customers = mongoc_database_get_collection(s->db, "customers");
	s->subs = mongoc_database_get_collection(s->db, "subscriptions");
	s->keys = mongoc_database_get_collection(s->db, "idempotency_keys");
	s->payments = mongoc_database_get_collection(s->db, "payments");
	s->audit = mongoc_database_get_collection(s->db, "audit_events");
	s->leases = mongoc_database_get_collection(s->db, "leases");
	s->counters = mongoc_database_get_collection(s->db, "counters");
	s->webhooks = mongoc_database_get_collection(s->db, "webhook_endpoints");
	s->deliveries = mongoc_database_get_collection(s->db, "webhook_deliveries");
	s->waitlist = mongoc_database_get_collection(s->db, "waitlist");
	s->mail = mongoc_database_get_collection(s->db, "mail");
	s->links = mongoc_database_get_collection(s->db, "login_links");
	s->link_limits = mongoc_database_get_collection(s->db, "login_limits");
	s->sessions = mongoc_database_get_collection(s->db, "customer_sessions");
	if (topology(s, url, e) || schema(s, e))
		goto fail;
	mongoc_write_concern_destroy(wc);
	mongoc_uri_destroy(uri);
	return &s->base;
fail:
	mongoc_write_concern_destroy(wc);
	mongoc_uri_destroy(uri);
	mg_close(&s->base);
	return NULL;
}
