/* store_sqlite.c - the embedded SQLite store.
 *
 * Every operation that writes is one BEGIN IMMEDIATE transaction: it takes SQLite's single
 * write lock at the start, so a read followed by a write inside it cannot interleave with
 * another process. WAL mode lets readers run beside the writer; synchronous=FULL makes every
 * commit durable before a 2xx leaves; the busy timeout queues writers instead of failing. */
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"
#include "util.h"

#define STMT_CACHE 64
#define BUSY_TIMEOUT_MS 10000

struct sq {
	struct store base;
	sqlite3 *db;
	struct {
		const char *sql;        /* static text: the cache key is its address */
		sqlite3_stmt *st;
	} cache[STMT_CACHE];
	int ncache;
};

static const char SCHEMA[] =
	"CREATE TABLE IF NOT EXISTS plans ("
	" id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE, description TEXT NOT NULL,"
	" price_cents INTEGER NOT NULL, duration_days INTEGER NOT NULL,"
	" total_capacity INTEGER NOT NULL,"
	" subscriptions_left INTEGER NOT NULL CHECK (subscriptions_left >= 0),"
	" subscriptions_held INTEGER NOT NULL CHECK (subscriptions_held >= 0),"
	" status TEXT NOT NULL, features TEXT NOT NULL, created_at INTEGER NOT NULL,"
	" updated_at INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS customers ("
	" id TEXT PRIMARY KEY, email TEXT NOT NULL UNIQUE COLLATE NOCASE, name TEXT NOT NULL,"
	" created_at INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS subscriptions ("
	" seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,"
	" plan_id TEXT NOT NULL REFERENCES plans(id), customer_id TEXT NOT NULL REFERENCES customers(id),"
	" idem_key TEXT NOT NULL UNIQUE, status TEXT NOT NULL, amount_cents INTEGER NOT NULL,"
	" duration_days INTEGER NOT NULL, payment_id TEXT NOT NULL DEFAULT '', token_hash TEXT NOT NULL,"
	" start_at INTEGER NOT NULL DEFAULT 0, end_at INTEGER NOT NULL DEFAULT 0,"
	" hold_deadline INTEGER NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);"
	"CREATE INDEX IF NOT EXISTS subscriptions_hold ON subscriptions(status, hold_deadline);"
	"CREATE INDEX IF NOT EXISTS subscriptions_customer ON subscriptions(customer_id, seq);"
	"CREATE INDEX IF NOT EXISTS subscriptions_plan ON subscriptions(plan_id, status);"
	"CREATE TABLE IF NOT EXISTS idempotency_keys ("
	" key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, state TEXT NOT NULL,"
	" locked_until INTEGER NOT NULL, subscription_id TEXT NOT NULL DEFAULT '',"
	" response_status INTEGER NOT NULL DEFAULT 0, response_body TEXT,"
	" created_at INTEGER NOT NULL);"
	"CREATE INDEX IF NOT EXISTS idempotency_keys_age ON idempotency_keys(state, created_at);"
	"CREATE TABLE IF NOT EXISTS payments ("
	" id TEXT PRIMARY KEY, idem_key TEXT NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL,"
	" decline_code TEXT NOT NULL DEFAULT '', subscription_id TEXT NOT NULL,"
	" amount_cents INTEGER NOT NULL, created_at INTEGER NOT NULL, UNIQUE (idem_key, kind));"
	"CREATE TABLE IF NOT EXISTS audit_events ("
	" seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, at INTEGER NOT NULL,"
	" action TEXT NOT NULL, actor_type TEXT NOT NULL, actor_id TEXT NOT NULL DEFAULT '',"
	" resource_type TEXT NOT NULL, resource_id TEXT NOT NULL, plan_id TEXT NOT NULL DEFAULT '',"
	" before TEXT, after TEXT, trace_id TEXT NOT NULL DEFAULT '', ip TEXT NOT NULL DEFAULT '');"
	"CREATE INDEX IF NOT EXISTS audit_plan ON audit_events(plan_id, seq);"
	"CREATE INDEX IF NOT EXISTS audit_trace ON audit_events(trace_id, seq);"
	"CREATE TABLE IF NOT EXISTS leases ("
	" name TEXT PRIMARY KEY, holder TEXT NOT NULL, until INTEGER NOT NULL);";

#define SQ(s) ((struct sq *)(s))

/* --- statements --------------------------------------------------------------------------- */

static int db_error(struct sq *s, int rc, struct err *e)
{
	int base = rc & 0xff;

	if (base == SQLITE_BUSY || base == SQLITE_LOCKED)
		err_set(e, ERR_RETRYABLE, "SERVICE_UNAVAILABLE", "sqlite busy: %s", sqlite3_errmsg(s->db));
	else if (base == SQLITE_CONSTRAINT)
		err_set(e, ERR_CONFLICT, "CONFLICT", "sqlite constraint: %s", sqlite3_errmsg(s->db));
	else
		err_set(e, ERR_UNAVAILABLE, "SERVICE_UNAVAILABLE", "sqlite error %d: %s", rc,
			sqlite3_errmsg(s->db));
	return -1;
}

/* A prepared statement for sql with the arguments bound by fmt: 't' text (NULL binds NULL),
 * 'i' int64. Borrowed: valid until the next q() of the same sql. */
static sqlite3_stmt *q(struct sq *s, const char *sql, struct err *e, const char *fmt, ...)
{
	sqlite3_stmt *st = NULL;
	va_list ap;
	int rc, i;

	for (i = 0; i < s->ncache; i++)
		if (s->cache[i].sql == sql) {
			st = s->cache[i].st;
			sqlite3_reset(st);
			sqlite3_clear_bindings(st);
			break;
		}
	if (!st) {
		rc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL);
		if (rc != SQLITE_OK) {
			db_error(s, rc, e);
			return NULL;
		}
		if (s->ncache < STMT_CACHE) {
			s->cache[s->ncache].sql = sql;
			s->cache[s->ncache].st = st;
			s->ncache++;
		} else {
			abort(); /* more distinct statements than the cache holds: raise STMT_CACHE */
		}
	}
	va_start(ap, fmt);
	for (i = 0; fmt[i]; i++) {
		if (fmt[i] == 't') {
			const char *v = va_arg(ap, const char *);
			rc = v ? sqlite3_bind_text(st, i + 1, v, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, i + 1);
		} else {
			rc = sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t));
		}
		if (rc != SQLITE_OK) {
			va_end(ap);
			db_error(s, rc, e);
			return NULL;
		}
	}
	va_end(ap);
	return st;
}

/* Steps st: 1 for a row, 0 when done, -1 on error (e filled). */
static int step(struct sq *s, sqlite3_stmt *st, struct err *e)
{
	int rc = sqlite3_step(st);

	if (rc == SQLITE_ROW)
		return 1;
	if (rc == SQLITE_DONE)
		return 0;
	db_error(s, rc, e);
	return -1;
}

/* Runs a statement without rows; returns the number of rows changed, or -1. */
static int run(struct sq *s, sqlite3_stmt *st, struct err *e)
{
	int r;

	if (!st)
		return -1;
	while ((r = step(s, st, e)) == 1)
		;
	if (r < 0)
		return -1;
	return sqlite3_changes(s->db);
}

static char *col_str(sqlite3_stmt *st, int i)
{
	const unsigned char *t = sqlite3_column_text(st, i);
	return xstrdup(t ? (const char *)t : "");
}

static void col_copy(sqlite3_stmt *st, int i, char *dst, size_t len)
{
	const unsigned char *t = sqlite3_column_text(st, i);
	snprintf(dst, len, "%s", t ? (const char *)t : "");
}

static int tx_begin(struct sq *s, struct err *e)
{
	int rc = sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
	return rc == SQLITE_OK ? 0 : db_error(s, rc, e);
}

static int tx_commit(struct sq *s, struct err *e)
{
	int rc = sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);

	if (rc == SQLITE_OK)
		return 0;
	db_error(s, rc, e);
	sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	return -1;
}

/* Ends a transaction: commits when rc is 0, else rolls back. Returns 0 or -1. */
static int tx_end(struct sq *s, int rc, struct err *e)
{
	for (int i = 0; i < s->ncache; i++)
		sqlite3_reset(s->cache[i].st);
	if (rc == 0)
		return tx_commit(s, e);
	if (sqlite3_get_autocommit(s->db) == 0)
		sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	return -1;
}

/* --- audit -------------------------------------------------------------------------------- */

static int audit_put(struct sq *s, const struct audit_ctx *a, int64_t now, const char *action,
		     const char *rtype, const char *rid, const char *plan_id, const char *before,
		     const char *after, struct err *e)
{
	static const char sql[] =
		"INSERT INTO audit_events (id, at, action, actor_type, actor_id, resource_type,"
		" resource_id, plan_id, before, after, trace_id, ip) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)";
	char id[ID_LEN + 1];

	id_new(id);
	return run(s, q(s, sql, e, "titttttttttt", id, now, action, a->actor_type,
			a->actor_id ? a->actor_id : "", rtype, rid, plan_id ? plan_id : "", before,
			after, a->trace_id ? a->trace_id : "", a->ip ? a->ip : ""), e) < 0 ? -1 : 0;
}

/* Moves a plan's seat counts by dleft and dheld and writes one audit event per action with the
 * counts before and after. The WHERE clause keeps left >= 0 even if a caller errs. */
static int seats_move(struct sq *s, const char *plan_id, int dleft, int dheld, int64_t now,
		      const struct audit_ctx *a, const char *const *actions, const char *rtype,
		      const char *rid, struct err *e)
{
	static const char sql[] =
		"UPDATE plans SET subscriptions_left = subscriptions_left + ?,"
		" subscriptions_held = subscriptions_held + ?, updated_at = ?"
		" WHERE id = ? AND subscriptions_left + ? >= 0 AND subscriptions_held + ? >= 0"
		" RETURNING total_capacity, subscriptions_left, subscriptions_held";
	sqlite3_stmt *st = q(s, sql, e, "iiitii", (int64_t)dleft, (int64_t)dheld, now, plan_id,
			     (int64_t)dleft, (int64_t)dheld);
	char *before = NULL, *after = NULL;
	int64_t total, left, held;
	int r, rc = -1;

	if (!st || (r = step(s, st, e)) < 0)
		return -1;
	if (r == 0) {
		err_set(e, ERR_INTERNAL, "INTERNAL", "seat counts of plan %s would go negative", plan_id);
		return -1;
	}
	total = sqlite3_column_int64(st, 0);
	left = sqlite3_column_int64(st, 1);
	held = sqlite3_column_int64(st, 2);
	sqlite3_reset(st);
	before = audit_counts_json(total, left - dleft, held - dheld);
	after = audit_counts_json(total, left, held);
	for (; *actions; actions++)
		if (audit_put(s, a, now, *actions, rtype, rid, plan_id, before, after, e))
			goto out;
	rc = 0;
out:
	free(before);
	free(after);
	return rc;
}

/* --- plans -------------------------------------------------------------------------------- */

#define PLAN_COLS                                                                            \
	"id, name, description, price_cents, duration_days, total_capacity, subscriptions_left," \
	" subscriptions_held, status, features, created_at, updated_at"

static void plan_read(sqlite3_stmt *st, struct plan *p)
{
	const char *features = (const char *)sqlite3_column_text(st, 9);

	memset(p, 0, sizeof(*p));
	col_copy(st, 0, p->id, sizeof(p->id));
	p->name = col_str(st, 1);
	p->description = col_str(st, 2);
	p->price_cents = sqlite3_column_int64(st, 3);
	p->duration_days = sqlite3_column_int64(st, 4);
	p->total_capacity = sqlite3_column_int64(st, 5);
	p->subscriptions_left = sqlite3_column_int64(st, 6);
	p->subscriptions_held = sqlite3_column_int64(st, 7);
	col_copy(st, 8, p->status, sizeof(p->status));
	p->features = features ? json_tokener_parse(features) : NULL;
	if (!p->features)
		p->features = json_object_new_array();
	p->created_at = sqlite3_column_int64(st, 10);
	p->updated_at = sqlite3_column_int64(st, 11);
}

static const char *features_text(struct json_object *f)
{
	return f ? json_object_to_json_string_ext(f, JSON_C_TO_STRING_PLAIN) : "[]";
}

static int sq_plan_get(struct store *st_, const char *id, struct plan *out, struct err *e)
{
	static const char sql[] = "SELECT " PLAN_COLS " FROM plans WHERE id = ?";
	struct sq *s = SQ(st_);
	sqlite3_stmt *st = q(s, sql, e, "t", id);
	int r;

	if (!st || (r = step(s, st, e)) < 0)
		return -1;
	if (r == 0) {
		err_set(e, ERR_NOT_FOUND, "PLAN_NOT_FOUND", "no plan %s", id);
		return -1;
	}
	plan_read(st, out);
	sqlite3_reset(st);
	return 0;
}

static int sq_plan_create(struct store *st_, struct plan *p, const struct audit_ctx *a, struct err *e)
{
	static const char sql[] = "INSERT INTO plans (" PLAN_COLS ") VALUES (?,?,?,?,?,?,?,?,?,?,?,?)";
	struct sq *s = SQ(st_);
	char *after = NULL;
	int rc = -1;

	if (tx_begin(s, e))
		return -1;
	if (run(s, q(s, sql, e, "tttiiiiittii", p->id, p->name, p->description, p->price_cents,
		     p->duration_days, p->total_capacity, p->subscriptions_left, p->subscriptions_held,
		     p->status, features_text(p->features), p->created_at, p->updated_at), e) < 0) {
		if (e->kind == ERR_CONFLICT)
			err_set(e, ERR_CONFLICT, "PLAN_NAME_TAKEN", "a plan is named \"%s\" already", p->name);
		goto out;
	}
	after = audit_counts_json(p->total_capacity, p->subscriptions_left, p->subscriptions_held);
	rc = audit_put(s, a, p->created_at, "plan.created", "plan", p->id, p->id, NULL, after, e);
out:
	free(after);
	return tx_end(s, rc, e);
}

static int sq_plan_list(struct store *st_, const char *status, struct plan **out, size_t *n,
			struct err *e)
{
	static const char sql[] = "SELECT " PLAN_COLS " FROM plans WHERE ?1 IS NULL OR status = ?1"
				  " ORDER BY price_cents, name, id";
	struct sq *s = SQ(st_);
	sqlite3_stmt *st = q(s, sql, e, "t", status);
	size_t cap = 0;
	int r;

	*out = NULL;
	*n = 0;
	if (!st)
		return -1;
	while ((r = step(s, st, e)) == 1) {
		if (*n == cap) {
			cap = cap ? 2 * cap : 16;
			*out = xrealloc(*out, cap * sizeof(**out));
		}
		plan_read(st, &(*out)[(*n)++]);
	}
	sqlite3_reset(st);
	if (r < 0) {
		for (size_t i = 0; i < *n; i++)
			plan_clear(&(*out)[i]);
		free(*out);
		*out = NULL;
		*n = 0;
		return -1;
	}
	return 0;
}

static int sq_plan_update(struct store *st_, const char *id, const struct plan_patch *pt, int64_t now,
			  const struct audit_ctx *a, struct plan *out, struct err *e)
{
	static const char sql[] =
		"UPDATE plans SET name = ?, description = ?, price_cents = ?, duration_days = ?,"
		" features = ?, status = ?, total_capacity = ?, subscriptions_left = ?, updated_at = ?"
		" WHERE id = ?";
	struct sq *s = SQ(st_);
	struct plan p = {0};
	char *before = NULL, *after = NULL;
	int rc = -1;

	if (tx_begin(s, e))
		return -1;
	/* Inside BEGIN IMMEDIATE no other writer runs, so this read and the write below are one
	 * atomic step: a concurrent purchase's decrement is never overwritten. */
	if (sq_plan_get(st_, id, &p, e))
		goto out;
	before = audit_counts_json(p.total_capacity, p.subscriptions_left, p.subscriptions_held);
	if (plan_apply_patch(&p, pt, now, e))
		goto out;
	if (run(s, q(s, sql, e, "ttiittiiit", p.name, p.description, p.price_cents, p.duration_days,
		     features_text(p.features), p.status, p.total_capacity, p.subscriptions_left, now,
		     id), e) < 0) {
		if (e->kind == ERR_CONFLICT)
			err_set(e, ERR_CONFLICT, "PLAN_NAME_TAKEN", "a plan is named \"%s\" already", p.name);
		goto out;
	}
	after = audit_counts_json(p.total_capacity, p.subscriptions_left, p.subscriptions_held);
	if (audit_put(s, a, now, "plan.updated", "plan", id, id, before, after, e))
		goto out;
	*out = p;
	memset(&p, 0, sizeof(p));
	rc = 0;
out:
	plan_clear(&p);
	free(before);
	free(after);
	return tx_end(s, rc, e);
}

/* --- customers ---------------------------------------------------------------------------- */

static int customer_find(struct sq *s, const char *sql, const char *arg, struct customer *out,
			 struct err *e)
{
	sqlite3_stmt *st = q(s, sql, e, "t", arg);
	int r;

	if (!st || (r = step(s, st, e)) < 0)
		return -1;
	if (r == 0) {
		err_set(e, ERR_NOT_FOUND, "CUSTOMER_NOT_FOUND", "no customer %s", arg);
		return -1;
	}
	memset(out, 0, sizeof(*out));
	col_copy(st, 0, out->id, sizeof(out->id));
	out->email = col_str(st, 1);
	out->name = col_str(st, 2);
	out->created_at = sqlite3_column_int64(st, 3);
	sqlite3_reset(st);
	return 0;
}

static const char CUSTOMER_BY_ID[] = "SELECT id, email, name, created_at FROM customers WHERE id = ?";
static const char CUSTOMER_BY_EMAIL[] =
	"SELECT id, email, name, created_at FROM customers WHERE email = ? COLLATE NOCASE";
static const char CUSTOMER_INSERT[] = "INSERT INTO customers (id, email, name, created_at) VALUES (?,?,?,?)";

static int sq_customer_get(struct store *st_, const char *id, struct customer *out, struct err *e)
{
	return customer_find(SQ(st_), CUSTOMER_BY_ID, id, out, e);
}

static int sq_customer_create(struct store *st_, struct customer *c, struct err *e)
{
	struct sq *s = SQ(st_);

	if (run(s, q(s, CUSTOMER_INSERT, e, "ttti", c->id, c->email, c->name, c->created_at), e) < 0) {
		if (e->kind == ERR_CONFLICT)
			err_set(e, ERR_CONFLICT, "CUSTOMER_EXISTS", "a customer has the email %s already",
				c->email);
		return -1;
	}
	return 0;
}

static int sq_customer_upsert(struct store *st_, struct customer *c, struct err *e)
{
	struct sq *s = SQ(st_);
	struct customer found;
	int rc = -1;

	if (tx_begin(s, e))
		return -1;
	if (customer_find(s, CUSTOMER_BY_EMAIL, c->email, &found, e) == 0) {
		customer_clear(c);
		*c = found;
		rc = 0;
	} else if (e->kind == ERR_NOT_FOUND) {
		rc = run(s, q(s, CUSTOMER_INSERT, e, "ttti", c->id, c->email, c->name, c->created_at), e) < 0 ? -1 : 0;
	}
	return tx_end(s, rc, e);
}

/* --- idempotency keys --------------------------------------------------------------------- */

static const char KEY_SELECT[] =
	"SELECT fingerprint, state, locked_until, subscription_id, response_status, response_body"
	" FROM idempotency_keys WHERE key = ?";

/* Reads a key's row into out; 1 found, 0 absent, -1 error. fp receives the fingerprint. */
static int key_read(struct sq *s, const char *key, struct key_claim *out, char fp[65], char state[16],
		    struct err *e)
{
	sqlite3_stmt *st = q(s, KEY_SELECT, e, "t", key);
	int r;

	if (!st || (r = step(s, st, e)) <= 0)
		return st ? r : -1;
	memset(out, 0, sizeof(*out));
	col_copy(st, 0, fp, 65);
	col_copy(st, 1, state, 16);
	out->locked_until = sqlite3_column_int64(st, 2);
	col_copy(st, 3, out->subscription_id, sizeof(out->subscription_id));
	out->status = sqlite3_column_int(st, 4);
	if (sqlite3_column_type(st, 5) != SQLITE_NULL)
		out->body = col_str(st, 5);
	sqlite3_reset(st);
	return 1;
}

static int sq_key_claim(struct store *st_, const char *key, const char *fingerprint, int64_t now,
			int64_t lease_until, struct key_claim *out, struct err *e)
{
	static const char ins[] =
		"INSERT INTO idempotency_keys (key, fingerprint, state, locked_until, created_at)"
		" VALUES (?, ?, 'started', ?, ?)";
	static const char relock[] = "UPDATE idempotency_keys SET locked_until = ? WHERE key = ?";
	struct sq *s = SQ(st_);
	char fp[65], state[16];
	int r, rc = -1;

	memset(out, 0, sizeof(*out));
	if (tx_begin(s, e))
		return -1;
	r = key_read(s, key, out, fp, state, e);
	if (r < 0)
		goto out;
	if (r == 0) {
		out->state = KEY_NEW;
		rc = run(s, q(s, ins, e, "ttii", key, fingerprint, lease_until, now), e) < 0 ? -1 : 0;
	} else if (strcmp(fp, fingerprint)) {
		out->state = KEY_MISMATCH;
		rc = 0;
	} else if (!strcmp(state, "done")) {
		out->state = KEY_REPLAY;
		rc = 0;
	} else if (out->locked_until > now) {
		out->state = KEY_IN_PROGRESS;
		rc = 0;
	} else {
		out->state = KEY_RESUME;
		rc = run(s, q(s, relock, e, "it", lease_until, key), e) < 0 ? -1 : 0;
	}
out:
	if (rc)
		key_claim_clear(out);
	return tx_end(s, rc, e);
}

static int sq_key_get(struct store *st_, const char *key, struct key_claim *out, struct err *e)
{
	char fp[65], state[16];
	int r = key_read(SQ(st_), key, out, fp, state, e);

	if (r == 0)
		err_set(e, ERR_NOT_FOUND, "NOT_FOUND", "no idempotency key %s", key);
	if (r <= 0)
		return -1;
	out->state = !strcmp(state, "done") ? KEY_REPLAY : KEY_IN_PROGRESS;
	return 0;
}

static int sq_key_forget(struct store *st_, const char *key, struct err *e)
{
	static const char sql[] = "DELETE FROM idempotency_keys WHERE key = ? AND state = 'started'";
	struct sq *s = SQ(st_);

	return run(s, q(s, sql, e, "t", key), e) < 0 ? -1 : 0;
}

static const char KEY_DONE[] =
	"UPDATE idempotency_keys SET state = 'done', locked_until = 0, response_status = ?,"
	" response_body = ? WHERE key = ?";

static int sq_key_finish(struct store *st_, const char *key, const struct outcome *o, int64_t now,
			 struct err *e)
{
	struct sq *s = SQ(st_);

	(void)now;
	return run(s, q(s, KEY_DONE, e, "itt", (int64_t)o->status, o->body, key), e) < 0 ? -1 : 0;
}

/* --- purchase steps ----------------------------------------------------------------------- */

#define SUB_COLS                                                                                \
	"s.id, s.status, s.plan_id, p.name, s.customer_id, s.idem_key, s.payment_id, s.token_hash," \
	" s.amount_cents, s.duration_days, s.start_at, s.end_at, s.hold_deadline, s.created_at,"    \
	" s.updated_at, s.seq"

static void sub_read(sqlite3_stmt *st, struct subscription *o)
{
	memset(o, 0, sizeof(*o));
	col_copy(st, 0, o->id, sizeof(o->id));
	col_copy(st, 1, o->status, sizeof(o->status));
	col_copy(st, 2, o->plan_id, sizeof(o->plan_id));
	o->plan_name = col_str(st, 3);
	col_copy(st, 4, o->customer_id, sizeof(o->customer_id));
	col_copy(st, 5, o->idem_key, sizeof(o->idem_key));
	col_copy(st, 6, o->payment_id, sizeof(o->payment_id));
	col_copy(st, 7, o->token_hash, sizeof(o->token_hash));
	o->amount_cents = sqlite3_column_int64(st, 8);
	o->duration_days = sqlite3_column_int64(st, 9);
	o->start_at = sqlite3_column_int64(st, 10);
	o->end_at = sqlite3_column_int64(st, 11);
	o->hold_deadline = sqlite3_column_int64(st, 12);
	o->created_at = sqlite3_column_int64(st, 13);
	o->updated_at = sqlite3_column_int64(st, 14);
}

static int sq_sub_get(struct store *st_, const char *id, struct subscription *out, struct err *e)
{
	static const char sql[] =
		"SELECT " SUB_COLS " FROM subscriptions s JOIN plans p ON p.id = s.plan_id WHERE s.id = ?";
	struct sq *s = SQ(st_);
	sqlite3_stmt *st = q(s, sql, e, "t", id);
	int r;

	if (!st || (r = step(s, st, e)) < 0)
		return -1;
	if (r == 0) {
		err_set(e, ERR_NOT_FOUND, "SUBSCRIPTION_NOT_FOUND", "no subscription %s", id);
		return -1;
	}
	sub_read(st, out);
	sqlite3_reset(st);
	return 0;
}

static int sq_seat_hold(struct store *st_, const struct hold_req *r, const struct audit_ctx *a,
			struct subscription *out, struct err *e)
{
	static const char take[] =
		"UPDATE plans SET subscriptions_left = subscriptions_left - 1,"
		" subscriptions_held = subscriptions_held + 1, updated_at = ?"
		" WHERE id = ? AND status = 'active' AND subscriptions_left > 0"
		" RETURNING name, price_cents, duration_days, total_capacity, subscriptions_left,"
		" subscriptions_held";
	static const char why[] = "SELECT status FROM plans WHERE id = ?";
	static const char ins[] =
		"INSERT INTO subscriptions (id, plan_id, customer_id, idem_key, status, amount_cents,"
		" duration_days, token_hash, hold_deadline, created_at, updated_at)"
		" VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)";
	static const char mark[] =
		"UPDATE idempotency_keys SET state = 'held', subscription_id = ? WHERE key = ?";
	struct sq *s = SQ(st_);
	sqlite3_stmt *st;
	char *before = NULL, *after = NULL, status[16];
	int64_t total, left, held;
	int n, rc = -1;

	if (tx_begin(s, e))
		return -1;
	if (!(st = q(s, take, e, "it", r->now, r->plan_id)) || (n = step(s, st, e)) < 0)
		goto out;
	if (n == 0) {
		if (!(st = q(s, why, e, "t", r->plan_id)) || (n = step(s, st, e)) < 0)
			goto out;
		if (n == 0) {
			err_set(e, ERR_NOT_FOUND, "PLAN_NOT_FOUND", "no plan %s", r->plan_id);
			goto out;
		}
		col_copy(st, 0, status, sizeof(status));
		if (strcmp(status, "active"))
			err_set(e, ERR_CONFLICT, "PLAN_INACTIVE", "plan %s is not on sale", r->plan_id);
		else
			err_set(e, ERR_CONFLICT, "PLAN_SOLD_OUT", "plan %s is sold out", r->plan_id);
		goto out;
	}
	memset(out, 0, sizeof(*out));
	snprintf(out->id, sizeof(out->id), "%s", r->subscription_id);
	snprintf(out->status, sizeof(out->status), "pending");
	snprintf(out->plan_id, sizeof(out->plan_id), "%s", r->plan_id);
	snprintf(out->customer_id, sizeof(out->customer_id), "%s", r->customer_id);
	snprintf(out->idem_key, sizeof(out->idem_key), "%s", r->idem_key);
	snprintf(out->token_hash, sizeof(out->token_hash), "%s", r->token_hash);
	out->plan_name = col_str(st, 0);
	out->amount_cents = sqlite3_column_int64(st, 1);
	out->duration_days = sqlite3_column_int64(st, 2);
	total = sqlite3_column_int64(st, 3);
	left = sqlite3_column_int64(st, 4);
	held = sqlite3_column_int64(st, 5);
	sqlite3_reset(st);
	out->hold_deadline = r->deadline;
	out->created_at = out->updated_at = r->now;
	if (run(s, q(s, ins, e, "ttttiitiii", out->id, r->plan_id, r->customer_id, r->idem_key,
		     out->amount_cents, out->duration_days, r->token_hash, r->deadline, r->now, r->now),
		e) < 0)
		goto out;
	before = audit_counts_json(total, left + 1, held - 1);
	after = audit_counts_json(total, left, held);
	if (audit_put(s, a, r->now, "seat.held", "subscription", out->id, r->plan_id, before, after, e) ||
	    run(s, q(s, mark, e, "tt", out->id, r->idem_key), e) < 0)
		goto out;
	rc = 0;
out:
	free(before);
	free(after);
	if (rc && out->plan_name)
		subscription_clear(out);
	return tx_end(s, rc, e);
}

static int sq_hold_confirm(struct store *st_, const struct subscription *sub, const char *payment_id,
			   int64_t now, const struct outcome *o, const struct audit_ctx *a, struct err *e)
{
	static const char sql[] =
		"UPDATE subscriptions SET status = 'active', payment_id = ?, start_at = ?, end_at = ?,"
		" token_hash = ?, updated_at = ? WHERE id = ? AND status = 'pending' AND hold_deadline > ?";
	static const char *const actions[] = {"subscription.activated", NULL};
	struct sq *s = SQ(st_);
	int n, rc = -1;

	if (tx_begin(s, e))
		return -1;
	n = run(s, q(s, sql, e, "tiititi", payment_id, sub->start_at, sub->end_at, sub->token_hash, now,
		     sub->id, now), e);
	if (n < 0)
		goto out;
	if (n == 0) {
		err_set(e, ERR_CONFLICT, "HOLD_EXPIRED", "the hold of subscription %s is gone", sub->id);
		goto out;
	}
	if (seats_move(s, sub->plan_id, 0, -1, now, a, actions, "subscription", sub->id, e) ||
	    run(s, q(s, KEY_DONE, e, "itt", (int64_t)o->status, o->body, sub->idem_key), e) < 0)
		goto out;
	rc = 0;
out:
	return tx_end(s, rc, e);
}

static int sq_hold_release(struct store *st_, const char *sub_id, const char *status, int64_t now,
			   const struct outcome *o, const struct audit_ctx *a, struct err *e)
{
	static const char sql[] =
		"UPDATE subscriptions SET status = ?, updated_at = ? WHERE id = ? AND status = 'pending'"
		" RETURNING plan_id, idem_key";
	struct sq *s = SQ(st_);
	sqlite3_stmt *st;
	char plan_id[ID_LEN + 1], key[UUID_LEN + 1], action[40];
	const char *actions[] = {action, "seat.released", NULL};
	int n, rc = -1;

	if (tx_begin(s, e))
		return -1;
	if (!(st = q(s, sql, e, "tit", status, now, sub_id)) || (n = step(s, st, e)) < 0)
		goto out;
	if (n == 0) {
		err_set(e, ERR_CONFLICT, "HOLD_EXPIRED", "subscription %s is no longer pending", sub_id);
		goto out;
	}
	col_copy(st, 0, plan_id, sizeof(plan_id));
	col_copy(st, 1, key, sizeof(key));
	sqlite3_reset(st);
	snprintf(action, sizeof(action), "subscription.%s", status);
	if (seats_move(s, plan_id, 1, -1, now, a, actions, "subscription", sub_id, e) ||
	    run(s, q(s, KEY_DONE, e, "itt", (int64_t)o->status, o->body, key), e) < 0)
		goto out;
	rc = 0;
out:
	return tx_end(s, rc, e);
}

/* --- payments ----------------------------------------------------------------------------- */

#define PAY_COLS "id, idem_key, kind, status, decline_code, subscription_id, amount_cents, created_at"

static void payment_read(sqlite3_stmt *st, struct payment *p)
{
	memset(p, 0, sizeof(*p));
	col_copy(st, 0, p->id, sizeof(p->id));
	col_copy(st, 1, p->idem_key, sizeof(p->idem_key));
	col_copy(st, 2, p->kind, sizeof(p->kind));
	col_copy(st, 3, p->status, sizeof(p->status));
	col_copy(st, 4, p->decline_code, sizeof(p->decline_code));
	col_copy(st, 5, p->subscription_id, sizeof(p->subscription_id));
	p->amount_cents = sqlite3_column_int64(st, 6);
	p->created_at = sqlite3_column_int64(st, 7);
}

static int sq_payment_record(struct store *st_, struct payment *p, bool *existed,
			     const struct audit_ctx *a, struct err *e)
{
	static const char sel[] = "SELECT " PAY_COLS " FROM payments WHERE idem_key = ? AND kind = ?";
	static const char ins[] = "INSERT INTO payments (" PAY_COLS ") VALUES (?,?,?,?,?,?,?,?)";
	static const char plan[] = "SELECT plan_id FROM subscriptions WHERE id = ?";
	struct sq *s = SQ(st_);
	sqlite3_stmt *st;
	char action[40], plan_id[ID_LEN + 1] = "", *after = NULL;
	int n, rc = -1;

	*existed = false;
	if (tx_begin(s, e))
		return -1;
	if (!(st = q(s, sel, e, "tt", p->idem_key, p->kind)) || (n = step(s, st, e)) < 0)
		goto out;
	if (n == 1) {
		payment_read(st, p);
		*existed = true;
		rc = 0;
		goto out;
	}
	if (run(s, q(s, ins, e, "ttttttii", p->id, p->idem_key, p->kind, p->status, p->decline_code,
		     p->subscription_id, p->amount_cents, p->created_at), e) < 0)
		goto out;
	if (!(st = q(s, plan, e, "t", p->subscription_id)) || (n = step(s, st, e)) < 0)
		goto out;
	if (n == 1)
		col_copy(st, 0, plan_id, sizeof(plan_id));
	snprintf(action, sizeof(action), "payment.%s",
		 !strcmp(p->kind, "refund") ? "refunded" : p->status);
	after = audit_payment_json(p);
	rc = audit_put(s, a, p->created_at, action, "payment", p->id, plan_id, NULL, after, e);
out:
	free(after);
	return tx_end(s, rc, e);
}

/* --- subscriptions ------------------------------------------------------------------------ */

static int sq_sub_cancel(struct store *st_, const char *id, int64_t now, const struct audit_ctx *a,
			 struct subscription *out, struct err *e)
{
	static const char sql[] =
		"UPDATE subscriptions SET status = 'cancelled', updated_at = ? WHERE id = ? AND status = 'active'";
	static const char *const actions[] = {"subscription.cancelled", "seat.released", NULL};
	struct sq *s = SQ(st_);
	int n, rc = -1;

	if (tx_begin(s, e))
		return -1;
	if (sq_sub_get(st_, id, out, e))
		goto out;
	if (!strcmp(out->status, "cancelled")) {
		err_set(e, ERR_CONFLICT, "ALREADY_CANCELLED", "subscription %s is cancelled already", id);
		goto out;
	}
	if ((n = run(s, q(s, sql, e, "it", now, id), e)) < 0)
		goto out;
	if (n == 0) {
		err_set(e, ERR_CONFLICT, "SUBSCRIPTION_NOT_ACTIVE", "subscription %s is %s, not active", id,
			out->status);
		goto out;
	}
	if (seats_move(s, out->plan_id, 1, 0, now, a, actions, "subscription", id, e))
		goto out;
	snprintf(out->status, sizeof(out->status), "cancelled");
	out->updated_at = now;
	rc = 0;
out:
	if (rc)
		subscription_clear(out);
	return tx_end(s, rc, e);
}

static int cursor_seq(const char *cursor, int64_t *seq)
{
	char *end;

	*seq = INT64_MAX;
	if (!cursor || !*cursor)
		return 0;
	*seq = strtoll(cursor, &end, 10);
	return *end || *seq <= 0 ? -1 : 0;
}

static int sq_sub_list(struct store *st_, const char *customer_id, const char *status, struct page *pg,
		       struct subscription **out, size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT " SUB_COLS " FROM subscriptions s JOIN plans p ON p.id = s.plan_id"
		" WHERE s.customer_id = ? AND (?2 IS NULL OR s.status = ?2) AND s.seq < ?"
		" ORDER BY s.seq DESC LIMIT ?";
	struct sq *s = SQ(st_);
	sqlite3_stmt *st;
	int64_t seq, last = 0;
	int r;

	*out = NULL;
	*n = 0;
	pg->next_cursor[0] = '\0';
	if (cursor_seq(pg->cursor, &seq)) {
		err_set(e, ERR_INVALID, "VALIDATION_ERROR", "cursor is not one this service gave");
		return -1;
	}
	if (!(st = q(s, sql, e, "ttii", customer_id, status, seq, (int64_t)pg->limit + 1)))
		return -1;
	*out = xcalloc((size_t)pg->limit + 1, sizeof(**out));
	while ((r = step(s, st, e)) == 1) {
		if (*n == (size_t)pg->limit) {
			snprintf(pg->next_cursor, sizeof(pg->next_cursor), "%lld", (long long)last);
			break;
		}
		sub_read(st, &(*out)[*n]);
		last = sqlite3_column_int64(st, 15);
		(*n)++;
	}
	sqlite3_reset(st);
	if (r < 0) {
		for (size_t i = 0; i < *n; i++)
			subscription_clear(&(*out)[i]);
		free(*out);
		*out = NULL;
		*n = 0;
		return -1;
	}
	return 0;
}

/* --- audit log ---------------------------------------------------------------------------- */

static int sq_audit_list(struct store *st_, const struct audit_filter *f, struct page *pg,
			 struct audit_event **out, size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT id, at, action, actor_type, actor_id, resource_type, resource_id, plan_id,"
		" before, after, trace_id, ip, seq FROM audit_events"
		" WHERE (?1 IS NULL OR plan_id = ?1) AND (?2 IS NULL OR trace_id = ?2)"
		" AND (?3 IS NULL OR action = ?3) AND seq < ?4 ORDER BY seq DESC LIMIT ?5";
	struct sq *s = SQ(st_);
	sqlite3_stmt *st;
	int64_t seq, last = 0;
	int r;

	*out = NULL;
	*n = 0;
	pg->next_cursor[0] = '\0';
	if (cursor_seq(pg->cursor, &seq)) {
		err_set(e, ERR_INVALID, "VALIDATION_ERROR", "cursor is not one this service gave");
		return -1;
	}
	if (!(st = q(s, sql, e, "tttii", f->plan_id, f->trace_id, f->action, seq, (int64_t)pg->limit + 1)))
		return -1;
	*out = xcalloc((size_t)pg->limit + 1, sizeof(**out));
	while ((r = step(s, st, e)) == 1) {
		struct audit_event *a = &(*out)[*n];
		if (*n == (size_t)pg->limit) {
			snprintf(pg->next_cursor, sizeof(pg->next_cursor), "%lld", (long long)last);
			break;
		}
		col_copy(st, 0, a->id, sizeof(a->id));
		a->at = sqlite3_column_int64(st, 1);
		col_copy(st, 2, a->action, sizeof(a->action));
		col_copy(st, 3, a->actor_type, sizeof(a->actor_type));
		col_copy(st, 4, a->actor_id, sizeof(a->actor_id));
		col_copy(st, 5, a->resource_type, sizeof(a->resource_type));
		col_copy(st, 6, a->resource_id, sizeof(a->resource_id));
		col_copy(st, 7, a->plan_id, sizeof(a->plan_id));
		a->before = sqlite3_column_type(st, 8) == SQLITE_NULL ? NULL : col_str(st, 8);
		a->after = sqlite3_column_type(st, 9) == SQLITE_NULL ? NULL : col_str(st, 9);
		col_copy(st, 10, a->trace_id, sizeof(a->trace_id));
		col_copy(st, 11, a->ip, sizeof(a->ip));
		last = sqlite3_column_int64(st, 12);
		(*n)++;
	}
	sqlite3_reset(st);
	if (r < 0) {
		for (size_t i = 0; i < *n; i++)
			audit_event_clear(&(*out)[i]);
		free(*out);
		*out = NULL;
		*n = 0;
		return -1;
	}
	return 0;
}

/* --- reaper ------------------------------------------------------------------------------- */

static bool sq_lease_take(struct store *st_, const char *name, const char *holder, int64_t now,
			  int64_t until, struct err *e)
{
	static const char ins[] = "INSERT OR IGNORE INTO leases (name, holder, until) VALUES (?, '', 0)";
	static const char take[] =
		"UPDATE leases SET holder = ?, until = ? WHERE name = ? AND (until <= ? OR holder = ?)";
	struct sq *s = SQ(st_);
	int n = -1;

	if (tx_begin(s, e))
		return false;
	if (run(s, q(s, ins, e, "t", name), e) >= 0)
		n = run(s, q(s, take, e, "titit", holder, until, name, now, holder), e);
	return tx_end(s, n < 0 ? -1 : 0, e) == 0 && n == 1;
}

static int sq_holds_overdue(struct store *st_, int64_t now, int limit, struct hold_ref **out,
			    size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT id, idem_key FROM subscriptions WHERE status = 'pending' AND hold_deadline <= ?"
		" ORDER BY hold_deadline LIMIT ?";
	struct sq *s = SQ(st_);
	sqlite3_stmt *st = q(s, sql, e, "ii", now, (int64_t)limit);
	int r;

	*n = 0;
	*out = xcalloc((size_t)limit, sizeof(**out));
	if (!st)
		return -1;
	while ((r = step(s, st, e)) == 1) {
		col_copy(st, 0, (*out)[*n].subscription_id, sizeof((*out)[*n].subscription_id));
		col_copy(st, 1, (*out)[*n].idem_key, sizeof((*out)[*n].idem_key));
		(*n)++;
	}
	sqlite3_reset(st);
	return r < 0 ? -1 : 0;
}

static int sq_charges_unsettled(struct store *st_, int limit, struct payment **out, size_t *n,
				struct err *e)
{
	static const char sql[] =
		"SELECT " PAY_COLS " FROM payments c WHERE c.kind = 'charge' AND c.status = 'succeeded'"
		" AND EXISTS (SELECT 1 FROM subscriptions s WHERE s.idem_key = c.idem_key"
		"             AND s.status IN ('failed', 'expired'))"
		" AND NOT EXISTS (SELECT 1 FROM payments r WHERE r.idem_key = c.idem_key AND r.kind = 'refund')"
		" LIMIT ?";
	struct sq *s = SQ(st_);
	sqlite3_stmt *st = q(s, sql, e, "i", (int64_t)limit);
	int r;

	*n = 0;
	*out = xcalloc((size_t)limit, sizeof(**out));
	if (!st)
		return -1;
	while ((r = step(s, st, e)) == 1)
		payment_read(st, &(*out)[(*n)++]);
	sqlite3_reset(st);
	return r < 0 ? -1 : 0;
}

static int sq_keys_purge(struct store *st_, int64_t now, int64_t before, int *n, struct err *e)
{
	static const char sql[] =
		"DELETE FROM idempotency_keys WHERE (state = 'done' AND created_at < ?)"
		" OR (state = 'started' AND locked_until <= ?)";
	struct sq *s = SQ(st_);

	*n = run(s, q(s, sql, e, "ii", before, now), e);
	return *n < 0 ? -1 : 0;
}

/* --- invariants --------------------------------------------------------------------------- */

static int sq_check(struct store *st_, check_report_fn report, void *arg, int *violations, struct err *e)
{
	/* 1 and 4: seat counts against subscriptions, and against the audit trail. */
	static const char seats[] =
		"SELECT p.id, p.total_capacity, p.subscriptions_left, p.subscriptions_held,"
		" (SELECT count(*) FROM subscriptions s WHERE s.plan_id = p.id AND s.status = 'pending'),"
		" (SELECT count(*) FROM subscriptions s WHERE s.plan_id = p.id AND s.status = 'active'),"
		" (SELECT count(*) FROM audit_events a WHERE a.plan_id = p.id AND a.action = 'seat.held'),"
		" (SELECT count(*) FROM audit_events a WHERE a.plan_id = p.id AND a.action = 'seat.released'),"
		" (SELECT json_extract(a.after, '$.subscriptions_left') FROM audit_events a"
		"   WHERE a.plan_id = p.id AND a.resource_type IN ('plan', 'subscription')"
		"   ORDER BY a.seq DESC LIMIT 1)"
		" FROM plans p";
	/* 2: one hold and one charge per key. */
	static const char per_key[] =
		"SELECT idem_key, 'subscriptions' FROM subscriptions GROUP BY idem_key HAVING count(*) > 1"
		" UNION ALL SELECT idem_key, kind || ' payments' FROM payments GROUP BY idem_key, kind"
		" HAVING count(*) > 1";
	/* 3: charges against subscriptions. */
	static const char charges[] =
		"SELECT c.id, coalesce(s.id, '(none)'), coalesce(s.status, '(none)') FROM payments c"
		" LEFT JOIN subscriptions s ON s.idem_key = c.idem_key"
		" WHERE c.kind = 'charge' AND c.status = 'succeeded'"
		" AND coalesce(s.status, '') NOT IN ('active', 'cancelled', 'pending')"
		" AND NOT EXISTS (SELECT 1 FROM payments r WHERE r.idem_key = c.idem_key AND r.kind = 'refund')";
	static const char unpaid[] =
		"SELECT s.id FROM subscriptions s WHERE s.status IN ('active', 'cancelled') AND NOT EXISTS"
		" (SELECT 1 FROM payments c WHERE c.idem_key = s.idem_key AND c.kind = 'charge'"
		"  AND c.status = 'succeeded' AND c.id = s.payment_id)";
	struct sq *s = SQ(st_);
	sqlite3_stmt *st;
	int r, rc = -1;

	*violations = 0;
	/* One read transaction: every query sees the same snapshot. */
	if (sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
		return db_error(s, sqlite3_errcode(s->db), e);
	if (!(st = q(s, seats, e, "")))
		goto out;
	while ((r = step(s, st, e)) == 1) {
		const char *id = (const char *)sqlite3_column_text(st, 0);
		int64_t total = sqlite3_column_int64(st, 1), left = sqlite3_column_int64(st, 2);
		int64_t held = sqlite3_column_int64(st, 3), pending = sqlite3_column_int64(st, 4);
		int64_t active = sqlite3_column_int64(st, 5), holds = sqlite3_column_int64(st, 6);
		int64_t releases = sqlite3_column_int64(st, 7);

		if (left < 0 || left + pending + active != total) {
			report(arg, "plan %s: left %lld + pending %lld + active %lld != total %lld", id,
			       (long long)left, (long long)pending, (long long)active, (long long)total);
			(*violations)++;
		}
		if (held != pending) {
			report(arg, "plan %s: subscriptions_held %lld != pending subscriptions %lld", id,
			       (long long)held, (long long)pending);
			(*violations)++;
		}
		if (holds - releases != pending + active) {
			report(arg, "plan %s: audit has %lld seat.held - %lld seat.released, but %lld seats are taken",
			       id, (long long)holds, (long long)releases, (long long)(pending + active));
			(*violations)++;
		}
		if (sqlite3_column_type(st, 8) == SQLITE_NULL || sqlite3_column_int64(st, 8) != left) {
			report(arg, "plan %s: the last audit event does not end at %lld seats left", id,
			       (long long)left);
			(*violations)++;
		}
	}
	sqlite3_reset(st);
	if (r < 0 || !(st = q(s, per_key, e, "")))
		goto out;
	while ((r = step(s, st, e)) == 1) {
		report(arg, "idempotency key %s has more than one of %s", sqlite3_column_text(st, 0),
		       sqlite3_column_text(st, 1));
		(*violations)++;
	}
	sqlite3_reset(st);
	if (r < 0 || !(st = q(s, charges, e, "")))
		goto out;
	while ((r = step(s, st, e)) == 1) {
		report(arg, "charge %s succeeded, but subscription %s is %s and nothing was refunded",
		       sqlite3_column_text(st, 0), sqlite3_column_text(st, 1), sqlite3_column_text(st, 2));
		(*violations)++;
	}
	sqlite3_reset(st);
	if (r < 0 || !(st = q(s, unpaid, e, "")))
		goto out;
	while ((r = step(s, st, e)) == 1) {
		report(arg, "subscription %s was activated without a successful charge",
		       sqlite3_column_text(st, 0));
		(*violations)++;
	}
	sqlite3_reset(st);
	if (r < 0)
		goto out;
	rc = 0;
out:
	sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
	return rc;
}

/* --- lifecycle ---------------------------------------------------------------------------- */

static int sq_ping(struct store *st_, struct err *e)
{
	static const char sql[] = "SELECT count(*) FROM plans";
	struct sq *s = SQ(st_);
	sqlite3_stmt *st = q(s, sql, e, "");
	int r = st ? step(s, st, e) : -1;

	if (st)
		sqlite3_reset(st);
	return r < 0 ? -1 : 0;
}

static int sq_reset(struct store *st_, struct err *e)
{
	struct sq *s = SQ(st_);
	int rc = sqlite3_exec(s->db,
			      "BEGIN IMMEDIATE; DELETE FROM audit_events; DELETE FROM payments;"
			      " DELETE FROM idempotency_keys; DELETE FROM subscriptions; DELETE FROM customers;"
			      " DELETE FROM plans; DELETE FROM leases; COMMIT;",
			      NULL, NULL, NULL);

	if (rc != SQLITE_OK) {
		db_error(s, rc, e);
		sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
		return -1;
	}
	return 0;
}

static void sq_close(struct store *st_)
{
	struct sq *s = SQ(st_);

	for (int i = 0; i < s->ncache; i++)
		sqlite3_finalize(s->cache[i].st);
	sqlite3_close(s->db);
	free(s);
}

static const struct store_ops sqlite_ops = {
	.name = "sqlite",
	.close = sq_close,
	.ping = sq_ping,
	.reset = sq_reset,
	.plan_create = sq_plan_create,
	.plan_get = sq_plan_get,
	.plan_list = sq_plan_list,
	.plan_update = sq_plan_update,
	.customer_create = sq_customer_create,
	.customer_get = sq_customer_get,
	.customer_upsert = sq_customer_upsert,
	.key_claim = sq_key_claim,
	.key_forget = sq_key_forget,
	.key_finish = sq_key_finish,
	.key_get = sq_key_get,
	.seat_hold = sq_seat_hold,
	.hold_confirm = sq_hold_confirm,
	.hold_release = sq_hold_release,
	.payment_record = sq_payment_record,
	.sub_get = sq_sub_get,
	.sub_cancel = sq_sub_cancel,
	.sub_list = sq_sub_list,
	.audit_list = sq_audit_list,
	.lease_take = sq_lease_take,
	.holds_overdue = sq_holds_overdue,
	.charges_unsettled = sq_charges_unsettled,
	.keys_purge = sq_keys_purge,
	.check = sq_check,
};

struct store *store_sqlite_open(const char *url, struct err *e)
{
	const char *path = url + strlen("sqlite://");
	struct sq *s = xcalloc(1, sizeof(*s));
	int rc;

	s->base.ops = &sqlite_ops;
	if (!*path) {
		err_set(e, ERR_UNAVAILABLE, "SERVICE_UNAVAILABLE", "NUMATIX_DB sqlite:// names no file");
		goto fail;
	}
	rc = sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
			     NULL);
	if (rc != SQLITE_OK) {
		err_set(e, ERR_UNAVAILABLE, "SERVICE_UNAVAILABLE", "cannot open %s: %s", path,
			s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
		goto fail;
	}
	sqlite3_busy_timeout(s->db, BUSY_TIMEOUT_MS);
	rc = sqlite3_exec(s->db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;"
			  " PRAGMA foreign_keys = ON;", NULL, NULL, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(s->db, SCHEMA, NULL, NULL, NULL);
	if (rc != SQLITE_OK) {
		db_error(s, rc, e);
		goto fail;
	}
	return &s->base;
fail:
	sq_close(&s->base);
	return NULL;
}
