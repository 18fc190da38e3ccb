/* store_mongo.c - the MongoDB store on libmongoc.
 *
 * A seat is taken by one findAndModify filtered on {_id, status: "active",
 * subscriptions_left: {$gt: 0}} with $inc: MongoDB applies it to the one document atomically,
 * whatever the number of workers or machines. A step that touches several documents (the hold
 * with its subscription, audit event and key; a confirmation; a release) runs in a short
 * multi-document transaction, w: "majority", read concern "snapshot", retried on
 * TransientTransactionError and UnknownTransactionCommitResult as the driver documents. No transaction ever spans the payment call. Transactions need a replica set: on a
 * standalone mongod the store refuses to serve and says how to fix it.
 *
 * One mongoc client per worker process, made after fork by store_open. */
#include <mongoc/mongoc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"
#include "util.h"

#define SERVER_SELECTION_MS 3000

struct mg {
	struct store base;
	mongoc_client_t *client;
	mongoc_database_t *db;
	mongoc_collection_t *plans, *customers, *subs, *keys, *payments, *audit, *leases;
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
		err_set(e, ERR_CONFLICT, "CONFLICT", "%s: duplicate key: %s", what, be->message);
	} else if (be->code == 112 /* WriteConflict */ || be->code == 251 /* NoSuchTransaction */ ||
		   (reply && mongoc_error_has_label(reply, "TransientTransactionError"))) {
		err_set(e, ERR_RETRYABLE, "SERVICE_UNAVAILABLE", "%s: transient: %s", what, be->message);
	} else {
		/* Network errors, server selection, "not primary" (10107, 13435), timeouts: the store
		 * cannot be reached now; the client retries. */
		err_set(e, ERR_UNAVAILABLE, "SERVICE_UNAVAILABLE", "%s: %s (domain %u, code %u)", what,
			be->message, be->domain, be->code);
	}
	return -1;
}

static int refuse_standalone(struct mg *s, struct err *e)
{
	if (!*s->not_replset)
		return 0;
	err_set(e, ERR_UNAVAILABLE, "SERVICE_UNAVAILABLE", "%s", s->not_replset);
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

/* The document whose _id is the hex id, into *out (new); -1 with ERR_NOT_FOUND and code when
 * there is none. */
static int get_by_id(mongoc_collection_t *c, const char *id, const char *code, bson_t **out, struct err *e)
{
	bson_t *f = by_id(id);
	int r = find_one(c, f, NULL, NULL, out, e, code);

	bson_destroy(f);
	if (r == 0)
		err_set(e, ERR_NOT_FOUND, code, "no document %s (%s)", id, code);
	return r > 0 ? 0 : -1;
}

static int64_t count(mongoc_collection_t *c, const bson_t *filter, struct err *e)
{
	bson_error_t be;
	int64_t n = mongoc_collection_count_documents(c, filter, NULL, NULL, NULL, &be);

	if (n < 0)
		mg_fail(&be, NULL, e, "count");
	return n;
}

/* --- transactions ------------------------------------------------------------------------- */

typedef int (*txn_fn)(struct mg *s, mongoc_client_session_t *cs, void *arg, bson_t *reply, struct err *e);

#define TXN_ATTEMPTS 5

/* Runs fn as one multi-document transaction, retried as the driver's documentation shows:
 * the whole transaction again on TransientTransactionError, the commit alone on
 * UnknownTransactionCommitResult (the driver raises its write concern to majority for the
 * retry). The attempts are bounded, unlike mongoc_client_session_with_transaction's two
 * minutes: a request that cannot commit soon answers 503 and the client retries. */
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
		if (fn(s, cs, arg, &reply, e)) {
			transient = mongoc_error_has_label(&reply, "TransientTransactionError");
			bson_error_t ignored;
			mongoc_client_session_abort_transaction(cs, &ignored);
			if (transient && attempt < TXN_ATTEMPTS)
				continue;
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

/* --- audit -------------------------------------------------------------------------------- */

static int audit_put(mongoc_collection_t *c, mongoc_client_session_t *cs, const struct audit_ctx *a,
		     int64_t now, const char *action, const char *rtype, const char *rid, const char *plan_id,
		     const char *before, const char *after, bson_t *reply, struct err *e)
{
	char id[ID_LEN + 1];
	bson_t doc = BSON_INITIALIZER, sub;
	bson_error_t be;
	int rc;

	id_new(id);
	append_oid(&doc, "_id", id);
	BSON_APPEND_DATE_TIME(&doc, "at", now);
	BSON_APPEND_UTF8(&doc, "action", action);
	BSON_APPEND_UTF8(&doc, "actor_type", a->actor_type);
	BSON_APPEND_UTF8(&doc, "actor_id", a->actor_id ? a->actor_id : "");
	BSON_APPEND_UTF8(&doc, "resource_type", rtype);
	BSON_APPEND_UTF8(&doc, "resource_id", rid);
	BSON_APPEND_UTF8(&doc, "plan_id", plan_id ? plan_id : "");
	/* before/after are stored as documents, so the audit trail can be queried in MongoDB */
	if (before && bson_init_from_json(&sub, before, -1, &be)) {
		BSON_APPEND_DOCUMENT(&doc, "before", &sub);
		bson_destroy(&sub);
	}
	if (after && bson_init_from_json(&sub, after, -1, &be)) {
		BSON_APPEND_DOCUMENT(&doc, "after", &sub);
		bson_destroy(&sub);
	}
	BSON_APPEND_UTF8(&doc, "trace_id", a->trace_id ? a->trace_id : "");
	BSON_APPEND_UTF8(&doc, "ip", a->ip ? a->ip : "");
	rc = insert(c, cs, &doc, reply, e, "audit");
	bson_destroy(&doc);
	return rc;
}

/* Moves a plan's seat counts and writes one audit event per action, in the transaction. */
static int seats_move(struct mg *s, mongoc_client_session_t *cs, const char *plan_id, int dleft, int dheld,
		      int64_t now, const struct audit_ctx *a, const char *const *actions, const char *rtype,
		      const char *rid, bson_t *reply, struct err *e)
{
	bson_t *filter = by_id(plan_id), *upd, *doc = NULL;
	char *before = NULL, *after = NULL;
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
		err_set(e, ERR_INTERNAL, "INTERNAL", "seat counts of plan %s would go negative", plan_id);
		goto out;
	}
	int64_t total = get_int(doc, "total_capacity"), left = get_int(doc, "subscriptions_left");
	int64_t held = get_int(doc, "subscriptions_held");
	before = audit_counts_json(total, left - dleft, held - dheld);
	after = audit_counts_json(total, left, held);
	for (; *actions; actions++)
		if (audit_put(s->audit, cs, a, now, *actions, rtype, rid, plan_id, before, after, reply, e))
			goto out;
	rc = 0;
out:
	free(before);
	free(after);
	bson_destroy(doc);
	bson_destroy(filter);
	bson_destroy(upd);
	return rc;
}

/* --- plans -------------------------------------------------------------------------------- */

static void plan_read(const bson_t *d, struct plan *p)
{
	bson_iter_t it;

	memset(p, 0, sizeof(*p));
	get_id(d, "_id", p->id, sizeof(p->id));
	p->name = get_strdup(d, "name");
	p->description = get_strdup(d, "description");
	p->price_cents = get_int(d, "price_cents");
	p->duration_days = get_int(d, "duration_days");
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
	BSON_APPEND_INT64(b, "duration_days", p->duration_days);
	BSON_APPEND_INT64(b, "total_capacity", p->total_capacity);
	BSON_APPEND_INT64(b, "subscriptions_left", p->subscriptions_left);
	BSON_APPEND_INT64(b, "subscriptions_held", p->subscriptions_held);
	BSON_APPEND_UTF8(b, "status", p->status);
	append_features(b, p->features);
	BSON_APPEND_DATE_TIME(b, "updated_at", p->updated_at);
}

static int mg_plan_get(struct store *st, const char *id, struct plan *out, struct err *e)
{
	bson_t *doc = NULL;

	if (get_by_id(MG(st)->plans, id, "PLAN_NOT_FOUND", &doc, e))
		return -1;
	plan_read(doc, out);
	bson_destroy(doc);
	return 0;
}

struct plan_create_arg {
	struct plan *p;
	const struct audit_ctx *a;
};

static int plan_create_tx(struct mg *s, mongoc_client_session_t *cs, void *arg, bson_t *reply, struct err *e)
{
	struct plan_create_arg *x = arg;
	bson_t doc = BSON_INITIALIZER;
	char *after = NULL;
	int rc = -1;

	append_oid(&doc, "_id", x->p->id);
	append_plan(&doc, x->p);
	BSON_APPEND_DATE_TIME(&doc, "created_at", x->p->created_at);
	if (insert(s->plans, cs, &doc, reply, e, "plan")) {
		if (e->kind == ERR_CONFLICT)
			err_set(e, ERR_CONFLICT, "PLAN_NAME_TAKEN", "a plan is named \"%s\" already", x->p->name);
		goto out;
	}
	after = audit_counts_json(x->p->total_capacity, x->p->subscriptions_left, x->p->subscriptions_held);
	rc = audit_put(s->audit, cs, x->a, x->p->created_at, "plan.created", "plan", x->p->id, x->p->id, NULL,
		       after, reply, e);
out:
	free(after);
	bson_destroy(&doc);
	return rc;
}

static int mg_plan_create(struct store *st, struct plan *p, const struct audit_ctx *a, struct err *e)
{
	struct plan_create_arg x = {p, a};

	return transaction(MG(st), plan_create_tx, &x, e);
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

struct plan_update_arg {
	const char *id;
	const struct plan_patch *pt;
	int64_t now;
	const struct audit_ctx *a;
	struct plan out;
};

static int plan_update_tx(struct mg *s, mongoc_client_session_t *cs, void *arg, bson_t *reply, struct err *e)
{
	struct plan_update_arg *x = arg;
	const struct plan_patch *pt = x->pt;
	bson_t *f = by_id(x->id), *doc = NULL, *filter = NULL, set = BSON_INITIALIZER, *upd = NULL;
	char *before = NULL, *after = NULL;
	struct plan p = {0};
	int r, rc = -1;

	plan_clear(&x->out);
	if ((r = find_one(s->plans, f, NULL, cs, &doc, e, "plan")) <= 0) {
		if (r == 0)
			err_set(e, ERR_NOT_FOUND, "PLAN_NOT_FOUND", "no plan %s", x->id);
		goto out;
	}
	plan_read(doc, &p);
	before = audit_counts_json(p.total_capacity, p.subscriptions_left, p.subscriptions_held);
	if (plan_apply_patch(&p, pt, x->now, e))
		goto out;
	/* Conditional on the counts read: a purchase committed in between makes this transaction
	 * conflict and run again, so its decrement is never overwritten. */
	filter = by_id(x->id);
	BCON_APPEND(filter, "subscriptions_left", BCON_INT64(get_int(doc, "subscriptions_left")),
		    "subscriptions_held", BCON_INT64(get_int(doc, "subscriptions_held")));
	append_plan(&set, &p);
	upd = BCON_NEW("$set", BCON_DOCUMENT(&set));
	if ((r = update(s->plans, cs, filter, upd, reply, e, "plan update")) < 0) {
		if (e->kind == ERR_CONFLICT)
			err_set(e, ERR_CONFLICT, "PLAN_NAME_TAKEN", "a plan is named \"%s\" already", p.name);
		goto out;
	}
	if (r == 0 && get_int(reply, "matchedCount") == 0) {
		err_set(e, ERR_RETRYABLE, "SERVICE_UNAVAILABLE", "plan %s changed meanwhile", x->id);
		goto out;
	}
	after = audit_counts_json(p.total_capacity, p.subscriptions_left, p.subscriptions_held);
	if (audit_put(s->audit, cs, x->a, x->now, "plan.updated", "plan", x->id, x->id, before, after, reply, e))
		goto out;
	x->out = p;
	memset(&p, 0, sizeof(p));
	rc = 0;
out:
	plan_clear(&p);
	free(before);
	free(after);
	bson_destroy(f);
	bson_destroy(doc);
	bson_destroy(filter);
	bson_destroy(upd);
	bson_destroy(&set);
	return rc;
}

static int mg_plan_update(struct store *st, const char *id, const struct plan_patch *pt, int64_t now,
			  const struct audit_ctx *a, struct plan *out, struct err *e)
{
	struct plan_update_arg x = {.id = id, .pt = pt, .now = now, .a = a};

	for (int attempt = 0; attempt < 5; attempt++) {
		if (transaction(MG(st), plan_update_tx, &x, e) == 0) {
			*out = x.out;
			return 0;
		}
		if (e->kind != ERR_RETRYABLE)
			break;
	}
	plan_clear(&x.out);
	return -1;
}

/* --- customers ---------------------------------------------------------------------------- */

static void customer_read(const bson_t *d, struct customer *c)
{
	memset(c, 0, sizeof(*c));
	get_id(d, "_id", c->id, sizeof(c->id));
	c->email = get_strdup(d, "email");
	c->name = get_strdup(d, "name");
	c->created_at = get_int(d, "created_at");
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

static int mg_customer_get(struct store *st, const char *id, struct customer *out, struct err *e)
{
	bson_t *doc = NULL;

	if (get_by_id(MG(st)->customers, id, "CUSTOMER_NOT_FOUND", &doc, e))
		return -1;
	customer_read(doc, out);
	bson_destroy(doc);
	return 0;
}

static int mg_customer_create(struct store *st, struct customer *c, struct err *e)
{
	bson_t *d = customer_doc(c), reply;
	int rc;

	bson_init(&reply);
	rc = insert(MG(st)->customers, NULL, d, &reply, e, "customer");
	if (rc && e->kind == ERR_CONFLICT)
		err_set(e, ERR_CONFLICT, "CUSTOMER_EXISTS", "a customer has the email %s already", c->email);
	bson_destroy(&reply);
	bson_destroy(d);
	return rc;
}

static int mg_customer_upsert(struct store *st, struct customer *c, struct err *e)
{
	struct mg *s = MG(st);
	char *key = email_key(c->email);
	bson_t *filter = BCON_NEW("email_key", BCON_UTF8(key)), *d = customer_doc(c), *upd, *doc = NULL, reply;
	bool found = false;
	int rc = -1;

	/* One atomic upsert on the unique email_key index: found, or created from c. Two racing
	 * upserts of a new email can both miss; the loser gets a duplicate key and reads the
	 * winner's customer. */
	bson_init(&reply);
	upd = BCON_NEW("$setOnInsert", BCON_DOCUMENT(d));
	mongoc_find_and_modify_opts_t *fo = mongoc_find_and_modify_opts_new();
	mongoc_find_and_modify_opts_set_update(fo, upd);
	mongoc_find_and_modify_opts_set_flags(fo, MONGOC_FIND_AND_MODIFY_UPSERT | MONGOC_FIND_AND_MODIFY_RETURN_NEW);
	if (modify_with(s->customers, filter, fo, &doc, &found, &reply, e, "customer") == 0)
		rc = 0;
	else if (e->kind == ERR_CONFLICT && find_one(s->customers, filter, NULL, NULL, &doc, e, "customer") > 0)
		rc = 0, found = true;
	if (rc == 0 && !found) {
		err_set(e, ERR_INTERNAL, "INTERNAL", "upsert of customer %s returned nothing", c->email);
		rc = -1;
	}
	if (rc == 0) {
		customer_clear(c);
		customer_read(doc, c);
	}
	mongoc_find_and_modify_opts_destroy(fo);
	bson_destroy(&reply);
	bson_destroy(filter);
	bson_destroy(d);
	bson_destroy(upd);
	bson_destroy(doc);
	free(key);
	return rc;
}

/* --- idempotency keys --------------------------------------------------------------------- */

static void key_read(const bson_t *d, struct key_claim *k, char fp[65], char state[16])
{
	memset(k, 0, sizeof(*k));
	get_str(d, "fingerprint", fp, 65);
	get_str(d, "state", state, 16);
	k->locked_until = get_int(d, "locked_until");
	get_id(d, "subscription_id", k->subscription_id, sizeof(k->subscription_id));
	k->status = (int)get_int(d, "response_status");
	if (!strcmp(state, "done"))
		k->body = get_strdup(d, "response_body");
}

static int mg_key_claim(struct store *st, const char *key, const char *fingerprint, int64_t now,
			int64_t lease_until, struct key_claim *out, struct err *e)
{
	struct mg *s = MG(st);
	bson_t *doc = BCON_NEW("_id", BCON_UTF8(key), "fingerprint", BCON_UTF8(fingerprint), "state",
			       BCON_UTF8("started"), "locked_until", BCON_DATE_TIME(lease_until), "created_at",
			       BCON_DATE_TIME(now));
	bson_t *f = BCON_NEW("_id", BCON_UTF8(key)), *found_doc = NULL, *take = NULL, *upd = NULL, reply;
	char fp[65], state[16];
	bool found;
	int rc = -1;

	memset(out, 0, sizeof(*out));
	bson_init(&reply);
	if (refuse_standalone(s, e))
		goto out;
	/* The unique _id decides the race: the first insert wins, every other sees the key. */
	if (insert(s->keys, NULL, doc, &reply, e, "key") == 0) {
		out->state = KEY_NEW;
		rc = 0;
		goto out;
	}
	if (e->kind != ERR_CONFLICT)
		goto out;
	if (find_one(s->keys, f, NULL, NULL, &found_doc, e, "key") <= 0) {
		err_set(e, ERR_RETRYABLE, "SERVICE_UNAVAILABLE", "key %s vanished while claimed", key);
		goto out;
	}
	key_read(found_doc, out, fp, state);
	if (strcmp(fp, fingerprint))
		out->state = KEY_MISMATCH;
	else if (!strcmp(state, "done"))
		out->state = KEY_REPLAY;
	else if (out->locked_until > now)
		out->state = KEY_IN_PROGRESS;
	else {
		/* Take over the lease of a request that died, if nobody else just did. */
		take = BCON_NEW("_id", BCON_UTF8(key), "state", "{", "$ne", BCON_UTF8("done"), "}", "locked_until",
				"{", "$lte", BCON_DATE_TIME(now), "}");
		upd = BCON_NEW("$set", "{", "locked_until", BCON_DATE_TIME(lease_until), "}");
		if (modify(s->keys, NULL, take, upd, NULL, &found, &reply, e, "key lease"))
			goto out;
		out->state = found ? KEY_RESUME : KEY_IN_PROGRESS;
		if (!found)
			out->locked_until = lease_until;
	}
	rc = 0;
out:
	if (rc)
		key_claim_clear(out);
	bson_destroy(&reply);
	bson_destroy(doc);
	bson_destroy(f);
	bson_destroy(found_doc);
	bson_destroy(take);
	bson_destroy(upd);
	return rc;
}

static int mg_key_get(struct store *st, const char *key, struct key_claim *out, struct err *e)
{
	bson_t *f = BCON_NEW("_id", BCON_UTF8(key)), *doc = NULL;
	char fp[65], state[16];
	int r = find_one(MG(st)->keys, f, NULL, NULL, &doc, e, "key");

	bson_destroy(f);
	if (r == 0)
		err_set(e, ERR_NOT_FOUND, "NOT_FOUND", "no idempotency key %s", key);
	if (r <= 0)
		return -1;
	key_read(doc, out, fp, state);
	out->state = !strcmp(state, "done") ? KEY_REPLAY : KEY_IN_PROGRESS;
	bson_destroy(doc);
	return 0;
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

/* The update that stores a final response on a key. New, bson_destroy. */
static bson_t *key_done(const struct outcome *o)
{
	return BCON_NEW("$set", "{", "state", BCON_UTF8("done"), "locked_until", BCON_DATE_TIME(0),
			"response_status", BCON_INT32(o->status), "response_body", BCON_UTF8(o->body), "}");
}

static int mg_key_finish(struct store *st, const char *key, const struct outcome *o, int64_t now,
			 struct err *e)
{
	bson_t *f = BCON_NEW("_id", BCON_UTF8(key)), *upd = key_done(o), reply;
	int rc;

	(void)now;
	bson_init(&reply);
	rc = update(MG(st)->keys, NULL, f, upd, &reply, e, "key finish") < 0 ? -1 : 0;
	bson_destroy(&reply);
	bson_destroy(f);
	bson_destroy(upd);
	return rc;
}

/* --- subscriptions and the purchase steps ------------------------------------------------- */

static int sub_read(struct mg *s, const bson_t *d, struct subscription *o, struct err *e)
{
	struct plan p = {0};

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
	/* The plan's current name, as SQLite's join gives it. */
	if (mg_plan_get(&s->base, o->plan_id, &p, e))
		return -1;
	o->plan_name = p.name;
	p.name = NULL;
	plan_clear(&p);
	return 0;
}

static int mg_sub_get(struct store *st, const char *id, struct subscription *out, struct err *e)
{
	bson_t *doc = NULL;
	int rc = get_by_id(MG(st)->subs, id, "SUBSCRIPTION_NOT_FOUND", &doc, e);

	if (rc == 0)
		rc = sub_read(MG(st), doc, out, e);
	bson_destroy(doc);
	return rc;
}

struct hold_arg {
	const struct hold_req *r;
	const struct audit_ctx *a;
	struct subscription *out;
};

static int seat_hold_tx(struct mg *s, mongoc_client_session_t *cs, void *arg, bson_t *reply, struct err *e)
{
	struct hold_arg *x = arg;
	const struct hold_req *r = x->r;
	struct subscription *o = x->out;
	bson_t *filter = by_id(r->plan_id), *upd, *plan = NULL, *why = NULL, *sub = NULL, *kf = NULL, *ku = NULL;
	char *before = NULL, *after = NULL;
	bool found;
	int rc = -1;

	subscription_clear(o);
	BCON_APPEND(filter, "status", BCON_UTF8("active"), "subscriptions_left", "{", "$gt", BCON_INT64(0), "}");
	upd = BCON_NEW("$inc", "{", "subscriptions_left", BCON_INT64(-1), "subscriptions_held", BCON_INT64(1), "}",
		       "$set", "{", "updated_at", BCON_DATE_TIME(r->now), "}");
	if (modify(s->plans, cs, filter, upd, &plan, &found, reply, e, "seat hold"))
		goto out;
	if (!found) {
		bson_t *f = by_id(r->plan_id);
		int n = find_one(s->plans, f, NULL, cs, &why, e, "plan");
		char status[16];
		bson_destroy(f);
		if (n < 0)
			goto out;
		if (n == 0) {
			err_set(e, ERR_NOT_FOUND, "PLAN_NOT_FOUND", "no plan %s", r->plan_id);
			goto out;
		}
		get_str(why, "status", status, sizeof(status));
		if (strcmp(status, "active"))
			err_set(e, ERR_CONFLICT, "PLAN_INACTIVE", "plan %s is not on sale", r->plan_id);
		else
			err_set(e, ERR_CONFLICT, "PLAN_SOLD_OUT", "plan %s is sold out", r->plan_id);
		goto out;
	}
	snprintf(o->id, sizeof(o->id), "%s", r->subscription_id);
	snprintf(o->status, sizeof(o->status), "pending");
	snprintf(o->plan_id, sizeof(o->plan_id), "%s", r->plan_id);
	snprintf(o->customer_id, sizeof(o->customer_id), "%s", r->customer_id);
	snprintf(o->idem_key, sizeof(o->idem_key), "%s", r->idem_key);
	snprintf(o->token_hash, sizeof(o->token_hash), "%s", r->token_hash);
	o->plan_name = get_strdup(plan, "name");
	o->amount_cents = get_int(plan, "price_cents");
	o->duration_days = get_int(plan, "duration_days");
	o->hold_deadline = r->deadline;
	o->created_at = o->updated_at = r->now;
	sub = bson_new();
	append_oid(sub, "_id", o->id);
	append_oid(sub, "plan_id", r->plan_id);
	append_oid(sub, "customer_id", r->customer_id);
	BCON_APPEND(sub, "idem_key", BCON_UTF8(r->idem_key), "status", BCON_UTF8("pending"), "amount_cents",
		    BCON_INT64(o->amount_cents), "duration_days", BCON_INT64(o->duration_days), "payment_id",
		    BCON_UTF8(""), "token_hash", BCON_UTF8(r->token_hash), "hold_deadline", BCON_DATE_TIME(r->deadline),
		    "created_at", BCON_DATE_TIME(r->now), "updated_at", BCON_DATE_TIME(r->now));
	if (insert(s->subs, cs, sub, reply, e, "subscription"))
		goto out;
	int64_t total = get_int(plan, "total_capacity"), left = get_int(plan, "subscriptions_left");
	int64_t held = get_int(plan, "subscriptions_held");
	before = audit_counts_json(total, left + 1, held - 1);
	after = audit_counts_json(total, left, held);
	if (audit_put(s->audit, cs, x->a, r->now, "seat.held", "subscription", o->id, r->plan_id, before, after,
		      reply, e))
		goto out;
	kf = BCON_NEW("_id", BCON_UTF8(r->idem_key));
	ku = bson_new();
	bson_t set;
	BSON_APPEND_DOCUMENT_BEGIN(ku, "$set", &set);
	BSON_APPEND_UTF8(&set, "state", "held");
	append_oid(&set, "subscription_id", o->id);
	bson_append_document_end(ku, &set);
	if (update(s->keys, cs, kf, ku, reply, e, "key hold") < 0)
		goto out;
	rc = 0;
out:
	free(before);
	free(after);
	bson_destroy(filter);
	bson_destroy(upd);
	bson_destroy(plan);
	bson_destroy(why);
	bson_destroy(sub);
	bson_destroy(kf);
	bson_destroy(ku);
	return rc;
}

static int mg_seat_hold(struct store *st, const struct hold_req *r, const struct audit_ctx *a,
			struct subscription *out, struct err *e)
{
	struct hold_arg x = {r, a, out};

	memset(out, 0, sizeof(*out));
	if (transaction(MG(st), seat_hold_tx, &x, e)) {
		subscription_clear(out);
		return -1;
	}
	return 0;
}

struct settle_arg {
	const struct subscription *sub;
	const char *sub_id;
	const char *payment_id;
	const char *status;       /* release: "failed" | "expired" */
	int64_t now;
	const struct outcome *o;
	const struct audit_ctx *a;
};

static int hold_confirm_tx(struct mg *s, mongoc_client_session_t *cs, void *arg, bson_t *reply, struct err *e)
{
	static const char *const actions[] = {"subscription.activated", NULL};
	struct settle_arg *x = arg;
	bson_t *f = by_id(x->sub->id), *upd, *kf = BCON_NEW("_id", BCON_UTF8(x->sub->idem_key)), *ku = key_done(x->o);
	int n, rc = -1;

	BCON_APPEND(f, "status", BCON_UTF8("pending"), "hold_deadline", "{", "$gt", BCON_DATE_TIME(x->now), "}");
	upd = BCON_NEW("$set", "{", "status", BCON_UTF8("active"), "payment_id", BCON_UTF8(x->payment_id),
		       "start_at", BCON_DATE_TIME(x->sub->start_at), "end_at", BCON_DATE_TIME(x->sub->end_at),
		       "token_hash", BCON_UTF8(x->sub->token_hash), "updated_at", BCON_DATE_TIME(x->now), "}");
	if ((n = update(s->subs, cs, f, upd, reply, e, "confirm")) < 0)
		goto out;
	if (n == 0) {
		err_set(e, ERR_CONFLICT, "HOLD_EXPIRED", "the hold of subscription %s is gone", x->sub->id);
		goto out;
	}
	if (seats_move(s, cs, x->sub->plan_id, 0, -1, x->now, x->a, actions, "subscription", x->sub->id, reply, e) ||
	    update(s->keys, cs, kf, ku, reply, e, "key finish") < 0)
		goto out;
	rc = 0;
out:
	bson_destroy(f);
	bson_destroy(upd);
	bson_destroy(kf);
	bson_destroy(ku);
	return rc;
}

static int mg_hold_confirm(struct store *st, const struct subscription *sub, const char *payment_id, int64_t now,
			   const struct outcome *o, const struct audit_ctx *a, struct err *e)
{
	struct settle_arg x = {sub, sub->id, payment_id, NULL, now, o, a};

	return transaction(MG(st), hold_confirm_tx, &x, e);
}

static int hold_release_tx(struct mg *s, mongoc_client_session_t *cs, void *arg, bson_t *reply, struct err *e)
{
	struct settle_arg *x = arg;
	bson_t *f = by_id(x->sub_id), *upd, *doc = NULL, *kf = NULL, *ku = key_done(x->o);
	char plan_id[ID_LEN + 1], key[UUID_LEN + 1], action[40];
	const char *actions[] = {action, "seat.released", NULL};
	bool found;
	int rc = -1;

	BCON_APPEND(f, "status", BCON_UTF8("pending"));
	upd = BCON_NEW("$set", "{", "status", BCON_UTF8(x->status), "updated_at", BCON_DATE_TIME(x->now), "}");
	if (modify(s->subs, cs, f, upd, &doc, &found, reply, e, "release"))
		goto out;
	if (!found) {
		err_set(e, ERR_CONFLICT, "HOLD_EXPIRED", "subscription %s is no longer pending", x->sub_id);
		goto out;
	}
	get_id(doc, "plan_id", plan_id, sizeof(plan_id));
	get_str(doc, "idem_key", key, sizeof(key));
	snprintf(action, sizeof(action), "subscription.%s", x->status);
	kf = BCON_NEW("_id", BCON_UTF8(key));
	if (seats_move(s, cs, plan_id, 1, -1, x->now, x->a, actions, "subscription", x->sub_id, reply, e) ||
	    update(s->keys, cs, kf, ku, reply, e, "key finish") < 0)
		goto out;
	rc = 0;
out:
	bson_destroy(f);
	bson_destroy(upd);
	bson_destroy(doc);
	bson_destroy(kf);
	bson_destroy(ku);
	return rc;
}

static int mg_hold_release(struct store *st, const char *sub_id, const char *status, int64_t now,
			   const struct outcome *o, const struct audit_ctx *a, struct err *e)
{
	struct settle_arg x = {NULL, sub_id, NULL, status, now, o, a};

	return transaction(MG(st), hold_release_tx, &x, e);
}

struct cancel_arg {
	const char *id;
	int64_t now;
	const struct audit_ctx *a;
	struct subscription *out;
};

static int sub_cancel_tx(struct mg *s, mongoc_client_session_t *cs, void *arg, bson_t *reply, struct err *e)
{
	static const char *const actions[] = {"subscription.cancelled", "seat.released", NULL};
	struct cancel_arg *x = arg;
	bson_t *f = by_id(x->id), *upd, *doc = NULL, *any = NULL;
	char status[16];
	bool found;
	int n, rc = -1;

	BCON_APPEND(f, "status", BCON_UTF8("active"));
	upd = BCON_NEW("$set", "{", "status", BCON_UTF8("cancelled"), "updated_at", BCON_DATE_TIME(x->now), "}");
	if (modify(s->subs, cs, f, upd, &doc, &found, reply, e, "cancel"))
		goto out;
	if (!found) {
		bson_t *byid = by_id(x->id);
		n = find_one(s->subs, byid, NULL, cs, &any, e, "subscription");
		bson_destroy(byid);
		if (n == 0)
			err_set(e, ERR_NOT_FOUND, "SUBSCRIPTION_NOT_FOUND", "no subscription %s", x->id);
		if (n <= 0)
			goto out;
		get_str(any, "status", status, sizeof(status));
		if (!strcmp(status, "cancelled"))
			err_set(e, ERR_CONFLICT, "ALREADY_CANCELLED", "subscription %s is cancelled already", x->id);
		else
			err_set(e, ERR_CONFLICT, "SUBSCRIPTION_NOT_ACTIVE", "subscription %s is %s", x->id, status);
		goto out;
	}
	subscription_clear(x->out);
	if (sub_read(s, doc, x->out, e) ||
	    seats_move(s, cs, x->out->plan_id, 1, 0, x->now, x->a, actions, "subscription", x->id, reply, e))
		goto out;
	rc = 0;
out:
	bson_destroy(f);
	bson_destroy(upd);
	bson_destroy(doc);
	bson_destroy(any);
	return rc;
}

static int mg_sub_cancel(struct store *st, const char *id, int64_t now, const struct audit_ctx *a,
			 struct subscription *out, struct err *e)
{
	struct cancel_arg x = {id, now, a, out};

	memset(out, 0, sizeof(*out));
	if (transaction(MG(st), sub_cancel_tx, &x, e)) {
		subscription_clear(out);
		return -1;
	}
	return 0;
}

/* --- payments ----------------------------------------------------------------------------- */

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

struct payment_arg {
	struct payment *p;
	bool *existed;
	const struct audit_ctx *a;
};

static int payment_record_tx(struct mg *s, mongoc_client_session_t *cs, void *arg, bson_t *reply, struct err *e)
{
	struct payment_arg *x = arg;
	struct payment *p = x->p;
	bson_t *f = BCON_NEW("idem_key", BCON_UTF8(p->idem_key), "kind", BCON_UTF8(p->kind)), *doc = NULL, *ins;
	bson_t *sf = by_id(p->subscription_id), *sub = NULL;
	char action[40], plan_id[ID_LEN + 1] = "", *after = NULL;
	int n, rc = -1;

	*x->existed = false;
	if ((n = find_one(s->payments, f, NULL, cs, &doc, e, "payment")) < 0)
		goto out;
	if (n == 1) {
		payment_read(doc, p);
		*x->existed = true;
		rc = 0;
		goto out;
	}
	ins = BCON_NEW("_id", BCON_UTF8(p->id), "idem_key", BCON_UTF8(p->idem_key), "kind", BCON_UTF8(p->kind),
		       "status", BCON_UTF8(p->status), "decline_code", BCON_UTF8(p->decline_code),
		       "amount_cents", BCON_INT64(p->amount_cents), "created_at", BCON_DATE_TIME(p->created_at));
	append_oid(ins, "subscription_id", p->subscription_id);
	/* The unique (idem_key, kind) index makes a racing second record fail, not duplicate. */
	n = insert(s->payments, cs, ins, reply, e, "payment");
	bson_destroy(ins);
	if (n)
		goto out;
	if (find_one(s->subs, sf, NULL, cs, &sub, e, "subscription") < 0)
		goto out;
	if (sub)
		get_id(sub, "plan_id", plan_id, sizeof(plan_id));
	snprintf(action, sizeof(action), "payment.%s", !strcmp(p->kind, "refund") ? "refunded" : p->status);
	after = audit_payment_json(p);
	rc = audit_put(s->audit, cs, x->a, p->created_at, action, "payment", p->id, plan_id, NULL, after, reply, e);
out:
	free(after);
	bson_destroy(f);
	bson_destroy(doc);
	bson_destroy(sf);
	bson_destroy(sub);
	return rc;
}

static int mg_payment_record(struct store *st, struct payment *p, bool *existed, const struct audit_ctx *a,
			     struct err *e)
{
	struct payment_arg x = {p, existed, a};

	return transaction(MG(st), payment_record_tx, &x, e);
}

/* --- lists -------------------------------------------------------------------------------- */

/* Cursors are "<ms>_<id>": the sort key of the last item of the page before. */
static int cursor_parse(const char *cursor, int64_t *at, char id[ID_LEN + 1])
{
	char *end;

	if (!cursor || !*cursor)
		return 0;
	*at = strtoll(cursor, &end, 10);
	if (*end != '_' || !id_valid(end + 1))
		return -1;
	snprintf(id, ID_LEN + 1, "%s", end + 1);
	return 1;
}

/* Adds {$or: [{key: {$lt: at}}, {key: at, _id: {$lt: id}}]} for a cursor. */
static void append_after(bson_t *filter, const char *key, int64_t at, const char *id)
{
	bson_oid_t oid;

	bson_oid_init_from_string(&oid, id);
	BCON_APPEND(filter, "$or", "[", "{", key, "{", "$lt", BCON_DATE_TIME(at), "}", "}",
		    "{", key, BCON_DATE_TIME(at), "_id", "{", "$lt", BCON_OID(&oid), "}", "}", "]");
}

/* Runs a paged find sorted newest first on key; calls read for each document. */
static int page_find(mongoc_collection_t *c, bson_t *filter, const char *key, struct page *pg,
		     int (*read)(void *ctx, const bson_t *doc, size_t i, struct err *e), void *ctx, size_t *n,
		     struct err *e)
{
	bson_t *opts = BCON_NEW("sort", "{", key, BCON_INT32(-1), "_id", BCON_INT32(-1), "}", "limit",
				BCON_INT64(pg->limit + 1));
	mongoc_cursor_t *cur;
	const bson_t *doc;
	bson_error_t be;
	char id[ID_LEN + 1];
	int64_t at = 0, last_at = 0;
	int rc = 0;

	*n = 0;
	pg->next_cursor[0] = '\0';
	switch (cursor_parse(pg->cursor, &at, id)) {
	case -1:
		bson_destroy(opts);
		err_set(e, ERR_INVALID, "VALIDATION_ERROR", "cursor is not one this service gave");
		return -1;
	case 1:
		append_after(filter, key, at, id);
		break;
	}
	cur = mongoc_collection_find_with_opts(c, filter, opts, NULL);
	while (mongoc_cursor_next(cur, &doc)) {
		if (*n == (size_t)pg->limit) {
			snprintf(pg->next_cursor, sizeof(pg->next_cursor), "%lld_%s", (long long)last_at, id);
			break;
		}
		if (read(ctx, doc, *n, e)) {
			rc = -1;
			break;
		}
		last_at = get_int(doc, key);
		get_id(doc, "_id", id, sizeof(id));
		(*n)++;
	}
	if (rc == 0 && mongoc_cursor_error(cur, &be))
		rc = mg_fail(&be, NULL, e, "list");
	mongoc_cursor_destroy(cur);
	bson_destroy(opts);
	return rc;
}

struct sub_page {
	struct mg *s;
	struct subscription *items;
};

static int sub_page_read(void *ctx, const bson_t *doc, size_t i, struct err *e)
{
	struct sub_page *p = ctx;

	return sub_read(p->s, doc, &p->items[i], e);
}

static int mg_sub_list(struct store *st, const char *customer_id, const char *status, struct page *pg,
		       struct subscription **out, size_t *n, struct err *e)
{
	bson_t *filter = bson_new();
	struct sub_page p = {MG(st), xcalloc((size_t)pg->limit + 1, sizeof(struct subscription))};
	int rc;

	append_oid(filter, "customer_id", customer_id);
	if (status)
		BSON_APPEND_UTF8(filter, "status", status);
	rc = page_find(MG(st)->subs, filter, "created_at", pg, sub_page_read, &p, n, e);
	bson_destroy(filter);
	if (rc) {
		for (size_t i = 0; i <= *n && i < (size_t)pg->limit; i++)
			subscription_clear(&p.items[i]);
		free(p.items);
		*out = NULL;
		*n = 0;
		return -1;
	}
	*out = p.items;
	return 0;
}

static char *doc_json(const bson_t *doc, const char *key)
{
	bson_iter_t it;
	const uint8_t *data;
	uint32_t len;
	bson_t sub;
	char *j, *copy;

	if (!bson_iter_init_find(&it, doc, key) || !BSON_ITER_HOLDS_DOCUMENT(&it))
		return NULL;
	bson_iter_document(&it, &len, &data);
	bson_init_static(&sub, data, len);
	j = bson_as_relaxed_extended_json(&sub, NULL);
	copy = xstrdup(j);
	bson_free(j);
	return copy;
}

static int audit_page_read(void *ctx, const bson_t *doc, size_t i, struct err *e)
{
	struct audit_event *a = &((struct audit_event *)ctx)[i];

	(void)e;
	get_id(doc, "_id", a->id, sizeof(a->id));
	a->at = get_int(doc, "at");
	get_str(doc, "action", a->action, sizeof(a->action));
	get_str(doc, "actor_type", a->actor_type, sizeof(a->actor_type));
	get_str(doc, "actor_id", a->actor_id, sizeof(a->actor_id));
	get_str(doc, "resource_type", a->resource_type, sizeof(a->resource_type));
	get_str(doc, "resource_id", a->resource_id, sizeof(a->resource_id));
	get_str(doc, "plan_id", a->plan_id, sizeof(a->plan_id));
	a->before = doc_json(doc, "before");
	a->after = doc_json(doc, "after");
	get_str(doc, "trace_id", a->trace_id, sizeof(a->trace_id));
	get_str(doc, "ip", a->ip, sizeof(a->ip));
	return 0;
}

static int mg_audit_list(struct store *st, const struct audit_filter *f, struct page *pg,
			 struct audit_event **out, size_t *n, struct err *e)
{
	bson_t *filter = bson_new();
	struct audit_event *items = xcalloc((size_t)pg->limit + 1, sizeof(*items));
	int rc;

	if (f->plan_id)
		BSON_APPEND_UTF8(filter, "plan_id", f->plan_id);
	if (f->trace_id)
		BSON_APPEND_UTF8(filter, "trace_id", f->trace_id);
	if (f->action)
		BSON_APPEND_UTF8(filter, "action", f->action);
	rc = page_find(MG(st)->audit, filter, "at", pg, audit_page_read, items, n, e);
	bson_destroy(filter);
	if (rc) {
		for (size_t i = 0; i < *n; i++)
			audit_event_clear(&items[i]);
		free(items);
		*out = NULL;
		*n = 0;
		return -1;
	}
	*out = items;
	return 0;
}

/* --- reaper ------------------------------------------------------------------------------- */

static bool mg_lease_take(struct store *st, const char *name, const char *holder, int64_t now, int64_t until,
			  struct err *e)
{
	bson_t *f = BCON_NEW("_id", BCON_UTF8(name), "$or", "[", "{", "until", "{", "$lte", BCON_DATE_TIME(now), "}",
			     "}", "{", "holder", BCON_UTF8(holder), "}", "]");
	bson_t *upd = BCON_NEW("$set", "{", "holder", BCON_UTF8(holder), "until", BCON_DATE_TIME(until), "}"), reply;
	mongoc_find_and_modify_opts_t *fo = mongoc_find_and_modify_opts_new();
	bool found, taken = false;

	/* An upsert that matches no free lease runs into the unique _id of the held one. */
	bson_init(&reply);
	mongoc_find_and_modify_opts_set_update(fo, upd);
	mongoc_find_and_modify_opts_set_flags(fo, MONGOC_FIND_AND_MODIFY_UPSERT | MONGOC_FIND_AND_MODIFY_RETURN_NEW);
	if (modify_with(MG(st)->leases, f, fo, NULL, &found, &reply, e, "lease") == 0)
		taken = true;
	else if (e->kind == ERR_CONFLICT)
		err_clear(e);
	bson_destroy(&reply);
	mongoc_find_and_modify_opts_destroy(fo);
	bson_destroy(f);
	bson_destroy(upd);
	return taken;
}

static int mg_holds_overdue(struct store *st, int64_t now, int limit, struct hold_ref **out, size_t *n,
			    struct err *e)
{
	bson_t *f = BCON_NEW("status", BCON_UTF8("pending"), "hold_deadline", "{", "$lte", BCON_DATE_TIME(now), "}");
	bson_t *opts = BCON_NEW("sort", "{", "hold_deadline", BCON_INT32(1), "}", "limit", BCON_INT64(limit));
	mongoc_cursor_t *cur = mongoc_collection_find_with_opts(MG(st)->subs, f, opts, NULL);
	const bson_t *doc;
	bson_error_t be;
	int rc = 0;

	*n = 0;
	*out = xcalloc((size_t)limit, sizeof(**out));
	while (mongoc_cursor_next(cur, &doc)) {
		get_id(doc, "_id", (*out)[*n].subscription_id, sizeof((*out)[*n].subscription_id));
		get_str(doc, "idem_key", (*out)[*n].idem_key, sizeof((*out)[*n].idem_key));
		(*n)++;
	}
	if (mongoc_cursor_error(cur, &be))
		rc = mg_fail(&be, NULL, e, "overdue holds");
	mongoc_cursor_destroy(cur);
	bson_destroy(f);
	bson_destroy(opts);
	return rc;
}

static int mg_charges_unsettled(struct store *st, int limit, struct payment **out, size_t *n, struct err *e)
{
	struct mg *s = MG(st);
	/* Charges whose subscription failed or expired, without a refund of the same key. */
	bson_t *pipeline = BCON_NEW(
		"pipeline", "[",
		"{", "$match", "{", "kind", BCON_UTF8("charge"), "status", BCON_UTF8("succeeded"), "}", "}",
		"{", "$lookup", "{", "from", BCON_UTF8("subscriptions"), "localField", BCON_UTF8("subscription_id"),
		"foreignField", BCON_UTF8("_id"), "as", BCON_UTF8("sub"), "}", "}",
		"{", "$match", "{", "sub.status", "{", "$in", "[", BCON_UTF8("failed"), BCON_UTF8("expired"), "]", "}", "}", "}",
		"{", "$lookup", "{", "from", BCON_UTF8("payments"), "localField", BCON_UTF8("idem_key"),
		"foreignField", BCON_UTF8("idem_key"), "as", BCON_UTF8("all"), "}", "}",
		"{", "$match", "{", "all.kind", "{", "$ne", BCON_UTF8("refund"), "}", "}", "}",
		"{", "$limit", BCON_INT64(limit), "}",
		"]");
	mongoc_cursor_t *cur = mongoc_collection_aggregate(s->payments, MONGOC_QUERY_NONE, pipeline, NULL, NULL);
	const bson_t *doc;
	bson_error_t be;
	int rc = 0;

	*n = 0;
	*out = xcalloc((size_t)limit, sizeof(**out));
	while (*n < (size_t)limit && mongoc_cursor_next(cur, &doc))
		payment_read(doc, &(*out)[(*n)++]);
	if (mongoc_cursor_error(cur, &be))
		rc = mg_fail(&be, NULL, e, "unsettled charges");
	mongoc_cursor_destroy(cur);
	bson_destroy(pipeline);
	return rc;
}

static int mg_keys_purge(struct store *st, int64_t now, int64_t before, int *n, struct err *e)
{
	bson_t *f = BCON_NEW("$or", "[", "{", "state", BCON_UTF8("done"), "created_at", "{", "$lt",
			     BCON_DATE_TIME(before), "}", "}", "{", "state", BCON_UTF8("started"), "locked_until", "{",
			     "$lte", BCON_DATE_TIME(now), "}", "}", "]");
	bson_t reply;
	bson_error_t be;
	int rc = 0;

	if (!mongoc_collection_delete_many(MG(st)->keys, f, NULL, &reply, &be))
		rc = mg_fail(&be, &reply, e, "purge keys");
	else
		*n = (int)get_int(&reply, "deletedCount");
	bson_destroy(&reply);
	bson_destroy(f);
	return rc;
}

/* --- invariants --------------------------------------------------------------------------- */

static int mg_check(struct store *st, check_report_fn report, void *arg, int *violations, struct err *e)
{
	struct mg *s = MG(st);
	struct plan *plans = NULL;
	size_t np = 0, i;
	int rc = -1;

	*violations = 0;
	if (mg_plan_list(st, NULL, &plans, &np, e))
		return -1;
	for (i = 0; i < np; i++) {
		struct plan *p = &plans[i];
		bson_oid_t oid;
		bson_oid_init_from_string(&oid, p->id);
		bson_t *fp = BCON_NEW("plan_id", BCON_OID(&oid), "status", BCON_UTF8("pending"));
		bson_t *fa = BCON_NEW("plan_id", BCON_OID(&oid), "status", BCON_UTF8("active"));
		bson_t *fh = BCON_NEW("plan_id", BCON_UTF8(p->id), "action", BCON_UTF8("seat.held"));
		bson_t *fr = BCON_NEW("plan_id", BCON_UTF8(p->id), "action", BCON_UTF8("seat.released"));
		bson_t *fl = BCON_NEW("plan_id", BCON_UTF8(p->id), "after.subscriptions_left", "{", "$exists",
				      BCON_BOOL(true), "}");
		bson_t *sort = BCON_NEW("at", BCON_INT32(-1), "_id", BCON_INT32(-1)), *last = NULL;
		int64_t pending = count(s->subs, fp, e), active = count(s->subs, fa, e);
		int64_t holds = count(s->audit, fh, e), releases = count(s->audit, fr, e);
		int found = find_one(s->audit, fl, sort, NULL, &last, e, "audit");

		bson_destroy(fp);
		bson_destroy(fa);
		bson_destroy(fh);
		bson_destroy(fr);
		bson_destroy(fl);
		bson_destroy(sort);
		if (pending < 0 || active < 0 || holds < 0 || releases < 0 || found < 0) {
			bson_destroy(last);
			goto out;
		}
		if (p->subscriptions_left < 0 || p->subscriptions_left + pending + active != p->total_capacity) {
			report(arg, "plan %s: left %lld + pending %lld + active %lld != total %lld", p->id,
			       (long long)p->subscriptions_left, (long long)pending, (long long)active,
			       (long long)p->total_capacity);
			(*violations)++;
		}
		if (p->subscriptions_held != pending) {
			report(arg, "plan %s: subscriptions_held %lld != pending subscriptions %lld", p->id,
			       (long long)p->subscriptions_held, (long long)pending);
			(*violations)++;
		}
		if (holds - releases != pending + active) {
			report(arg, "plan %s: audit has %lld seat.held - %lld seat.released, but %lld seats are taken",
			       p->id, (long long)holds, (long long)releases, (long long)(pending + active));
			(*violations)++;
		}
		bson_iter_t top, it;
		if (!last || !bson_iter_init(&top, last) ||
		    !bson_iter_find_descendant(&top, "after.subscriptions_left", &it) ||
		    bson_iter_as_int64(&it) != p->subscriptions_left) {
			report(arg, "plan %s: the last audit event does not end at %lld seats left", p->id,
			       (long long)p->subscriptions_left);
			(*violations)++;
		}
		bson_destroy(last);
	}
	/* 3: charges against subscriptions, by scanning the successful charges. */
	{
		bson_t *f = BCON_NEW("kind", BCON_UTF8("charge"), "status", BCON_UTF8("succeeded"));
		mongoc_cursor_t *cur = mongoc_collection_find_with_opts(s->payments, f, NULL, NULL);
		const bson_t *doc;
		bson_error_t be;

		while (mongoc_cursor_next(cur, &doc)) {
			char sid[ID_LEN + 1], key[UUID_LEN + 1], pid[32], status[16] = "(none)";
			bson_t *sf, *sub = NULL, *rf;
			get_id(doc, "subscription_id", sid, sizeof(sid));
			get_str(doc, "idem_key", key, sizeof(key));
			get_str(doc, "_id", pid, sizeof(pid));
			sf = by_id(sid);
			if (find_one(s->subs, sf, NULL, NULL, &sub, e, "subscription") > 0)
				get_str(sub, "status", status, sizeof(status));
			rf = BCON_NEW("idem_key", BCON_UTF8(key), "kind", BCON_UTF8("refund"));
			if (strcmp(status, "active") && strcmp(status, "cancelled") && strcmp(status, "pending") &&
			    count(s->payments, rf, e) == 0) {
				report(arg, "charge %s succeeded, but subscription %s is %s and nothing was refunded",
				       pid, sid, status);
				(*violations)++;
			}
			bson_destroy(sf);
			bson_destroy(sub);
			bson_destroy(rf);
		}
		if (mongoc_cursor_error(cur, &be))
			mg_fail(&be, NULL, e, "check charges");
		mongoc_cursor_destroy(cur);
		bson_destroy(f);
		f = BCON_NEW("status", "{", "$in", "[", BCON_UTF8("active"), BCON_UTF8("cancelled"), "]", "}");
		cur = mongoc_collection_find_with_opts(s->subs, f, NULL, NULL);
		while (mongoc_cursor_next(cur, &doc)) {
			char sid[ID_LEN + 1], pay[32];
			get_id(doc, "_id", sid, sizeof(sid));
			get_str(doc, "payment_id", pay, sizeof(pay));
			bson_t *pf = BCON_NEW("_id", BCON_UTF8(pay), "kind", BCON_UTF8("charge"), "status",
					      BCON_UTF8("succeeded"));
			if (count(s->payments, pf, e) != 1) {
				report(arg, "subscription %s was activated without a successful charge", sid);
				(*violations)++;
			}
			bson_destroy(pf);
		}
		if (mongoc_cursor_error(cur, &be))
			mg_fail(&be, NULL, e, "check subscriptions");
		mongoc_cursor_destroy(cur);
		bson_destroy(f);
	}
	rc = e->kind == ERR_NONE ? 0 : -1;
out:
	for (i = 0; i < np; i++)
		plan_clear(&plans[i]);
	free(plans);
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
	mongoc_collection_t *all[] = {s->audit, s->payments, s->keys, s->subs, s->customers, s->plans, s->leases};
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
	.customer_upsert = mg_customer_upsert,
	.key_claim = mg_key_claim,
	.key_forget = mg_key_forget,
	.key_finish = mg_key_finish,
	.key_get = mg_key_get,
	.seat_hold = mg_seat_hold,
	.hold_confirm = mg_hold_confirm,
	.hold_release = mg_hold_release,
	.payment_record = mg_payment_record,
	.sub_get = mg_sub_get,
	.sub_cancel = mg_sub_cancel,
	.sub_list = mg_sub_list,
	.audit_list = mg_audit_list,
	.lease_take = mg_lease_take,
	.holds_overdue = mg_holds_overdue,
	.charges_unsettled = mg_charges_unsettled,
	.keys_purge = mg_keys_purge,
	.check = mg_check,
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

static int schema(struct mg *s, struct err *e)
{
	static const char *const plan_n[] = {"name_key_unique", "status_price"};
	static const bool plan_u[] = {true, false};
	static const char *const cust_n[] = {"email_key_unique"};
	static const bool cust_u[] = {true};
	static const char *const sub_n[] = {"idem_key_unique", "hold_deadline", "customer_created", "plan_status"};
	static const bool sub_u[] = {true, false, false, false};
	static const char *const pay_n[] = {"idem_key_kind_unique", "subscription"};
	static const bool pay_u[] = {true, false};
	static const char *const aud_n[] = {"plan_at", "trace_at", "action_at", "at"};
	static const bool aud_u[] = {false, false, false, false};
	static const char *const key_n[] = {"state_created"};
	static const bool key_u[] = {false};
	bson_t *plan_k[] = {BCON_NEW("name_key", BCON_INT32(1)), BCON_NEW("status", BCON_INT32(1), "price_cents", BCON_INT32(1))};
	bson_t *cust_k[] = {BCON_NEW("email_key", BCON_INT32(1))};
	bson_t *sub_k[] = {BCON_NEW("idem_key", BCON_INT32(1)),
			   BCON_NEW("status", BCON_INT32(1), "hold_deadline", BCON_INT32(1)),
			   BCON_NEW("customer_id", BCON_INT32(1), "created_at", BCON_INT32(-1), "_id", BCON_INT32(-1)),
			   BCON_NEW("plan_id", BCON_INT32(1), "status", BCON_INT32(1))};
	bson_t *pay_k[] = {BCON_NEW("idem_key", BCON_INT32(1), "kind", BCON_INT32(1)),
			   BCON_NEW("subscription_id", BCON_INT32(1))};
	bson_t *aud_k[] = {BCON_NEW("plan_id", BCON_INT32(1), "at", BCON_INT32(-1), "_id", BCON_INT32(-1)),
			   BCON_NEW("trace_id", BCON_INT32(1), "at", BCON_INT32(-1), "_id", BCON_INT32(-1)),
			   BCON_NEW("action", BCON_INT32(1), "at", BCON_INT32(-1), "_id", BCON_INT32(-1)),
			   BCON_NEW("at", BCON_INT32(-1), "_id", BCON_INT32(-1))};
	bson_t *key_k[] = {BCON_NEW("state", BCON_INT32(1), "created_at", BCON_INT32(1))};
	int rc = 0;

	/* Each call consumes its keys, so all run even after a failure. */
	rc |= indexes(s, "plans", 2, plan_n, plan_k, plan_u, e);
	rc |= indexes(s, "customers", 1, cust_n, cust_k, cust_u, e);
	rc |= indexes(s, "subscriptions", 4, sub_n, sub_k, sub_u, e);
	rc |= indexes(s, "payments", 2, pay_n, pay_k, pay_u, e);
	rc |= indexes(s, "audit_events", 4, aud_n, aud_k, aud_u, e);
	rc |= indexes(s, "idempotency_keys", 1, key_n, key_k, key_u, e);
	return rc ? -1 : 0;
}

/* Transactions need a replica set (or mongos); a standalone mongod cannot run them. */
static int topology(struct mg *s, const char *url, struct err *e)
{
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
			 url);
	}
	bson_destroy(&reply);
	bson_destroy(cmd);
	return rc;
}

static void mongoc_init_once(void)
{
	static bool done;

	if (!done) {
		mongoc_init();
		done = true;
	}
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
		err_set(e, ERR_UNAVAILABLE, "SERVICE_UNAVAILABLE", "NUMATIX_DB is not a MongoDB URI: %s", be.message);
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
		err_set(e, ERR_UNAVAILABLE, "SERVICE_UNAVAILABLE", "MongoDB client: %s", be.message);
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
