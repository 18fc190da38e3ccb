/* store_pg.c - the PostgreSQL store on libpq.
 *
 * Each primitive is one short READ COMMITTED transaction with durable commits
 * (synchronous_commit on). A seat is one
 *   UPDATE plans SET subscriptions_left = subscriptions_left - 1 ... WHERE id = $1
 *     AND status = 'active' AND subscriptions_left > 0 RETURNING ...
 * under a CHECK (subscriptions_left >= 0): PostgreSQL re-checks the WHERE clause on the row
 * a concurrent update committed, so two buyers never take one seat. Unique races are decided
 * by INSERT ... ON CONFLICT DO NOTHING (a failed insert would abort the transaction).
 * Deadlocks and serialization failures are retried a bounded number of times;
 * statement_timeout and lock_timeout make a stuck lock a 503, never a hung worker. The
 * schema is migrated at start under an advisory lock, so many workers and machines can start
 * at once. One connection per process, opened after fork, reset when it breaks. */
#include <libpq-fe.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_impl.h"
#include "util.h"

#define MAX_PREPARED 128
#define MAX_PARAMS 20
#define TX_ATTEMPTS 5

struct pg {
	struct store base;
	PGconn *conn;
	bool in_tx;
	const char *prepared[MAX_PREPARED];  /* static SQL texts: the statement's name is its slot */
	int nprepared;
};

#define PG(s) ((struct pg *)(s))

static const char *const MIGRATIONS[] = {
	/* 1 */
	"CREATE TABLE plans ("
	" id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL,"
	" price_cents BIGINT NOT NULL, duration_days BIGINT NOT NULL, total_capacity BIGINT NOT NULL,"
	" subscriptions_left BIGINT NOT NULL CHECK (subscriptions_left >= 0),"
	" subscriptions_held BIGINT NOT NULL CHECK (subscriptions_held >= 0),"
	" status TEXT NOT NULL, features TEXT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);"
	"CREATE UNIQUE INDEX plans_name ON plans (lower(name));"
	"CREATE TABLE customers (id TEXT PRIMARY KEY, email TEXT NOT NULL, name TEXT NOT NULL,"
	" created_at BIGINT NOT NULL);"
	"CREATE UNIQUE INDEX customers_email ON customers (lower(email));"
	"CREATE TABLE subscriptions ("
	" seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, plan_id TEXT NOT NULL REFERENCES plans(id),"
	" customer_id TEXT NOT NULL REFERENCES customers(id), idem_key TEXT NOT NULL UNIQUE,"
	" status TEXT NOT NULL, amount_cents BIGINT NOT NULL, duration_days BIGINT NOT NULL,"
	" payment_id TEXT NOT NULL DEFAULT '', token_hash TEXT NOT NULL, start_at BIGINT NOT NULL DEFAULT 0,"
	" end_at BIGINT NOT NULL DEFAULT 0, hold_deadline BIGINT NOT NULL, created_at BIGINT NOT NULL,"
	" updated_at BIGINT NOT NULL);"
	"CREATE INDEX subscriptions_hold ON subscriptions (status, hold_deadline);"
	"CREATE INDEX subscriptions_customer ON subscriptions (customer_id, seq);"
	"CREATE INDEX subscriptions_plan ON subscriptions (plan_id, status);"
	"CREATE TABLE idempotency_keys ("
	" key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, state TEXT NOT NULL, locked_until BIGINT NOT NULL,"
	" subscription_id TEXT NOT NULL DEFAULT '', response_status INTEGER NOT NULL DEFAULT 0,"
	" response_body TEXT, created_at BIGINT NOT NULL);"
	"CREATE INDEX idempotency_keys_age ON idempotency_keys (state, created_at);"
	"CREATE TABLE payments ("
	" id TEXT PRIMARY KEY, idem_key TEXT NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL,"
	" decline_code TEXT NOT NULL DEFAULT '', subscription_id TEXT NOT NULL, amount_cents BIGINT NOT NULL,"
	" created_at BIGINT NOT NULL, UNIQUE (idem_key, kind));"
	"CREATE TABLE audit_events ("
	" seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, at BIGINT NOT NULL, action TEXT NOT NULL,"
	" actor_type TEXT NOT NULL, actor_id TEXT NOT NULL DEFAULT '', resource_type TEXT NOT NULL,"
	" resource_id TEXT NOT NULL, plan_id TEXT NOT NULL DEFAULT '', b_total BIGINT, b_left BIGINT,"
	" b_held BIGINT, a_total BIGINT, a_left BIGINT, a_held BIGINT, detail TEXT,"
	" trace_id TEXT NOT NULL DEFAULT '', ip TEXT NOT NULL DEFAULT '');"
	"CREATE INDEX audit_plan ON audit_events (plan_id, seq);"
	"CREATE INDEX audit_trace ON audit_events (trace_id, seq);"
	"CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until BIGINT NOT NULL);"
	"CREATE TABLE processor ("
	" key TEXT PRIMARY KEY, state INTEGER NOT NULL, charge_id TEXT NOT NULL DEFAULT '',"
	" refund_id TEXT NOT NULL DEFAULT '', decline_code TEXT NOT NULL DEFAULT '',"
	" amount_cents BIGINT NOT NULL DEFAULT 0, created_at BIGINT NOT NULL);",
	/* 2: quantities, per-order and per-customer limits, checkout sessions */
	"ALTER TABLE plans ADD COLUMN max_per_order BIGINT NOT NULL DEFAULT 10,"
	" ADD COLUMN max_per_customer BIGINT NOT NULL DEFAULT 0;"
	"ALTER TABLE subscriptions ADD COLUMN quantity BIGINT NOT NULL DEFAULT 1 CHECK (quantity >= 1),"
	" ADD COLUMN secret_hash TEXT NOT NULL DEFAULT '', ADD COLUMN attempt_key TEXT NOT NULL DEFAULT '',"
	" ADD COLUMN attempt_until BIGINT NOT NULL DEFAULT 0, ADD COLUMN previous_id TEXT NOT NULL DEFAULT '';"
	"CREATE INDEX payments_pending ON payments (created_at) WHERE status = 'pending';"
	"UPDATE subscriptions SET attempt_key = idem_key WHERE status = 'pending';"
	"CREATE INDEX subscriptions_owner ON subscriptions (customer_id, plan_id, status);",
	/* 3: the event feed's positions, given after commit (feed_position); the events written so
	 * far take theirs in the order they were written */
	"ALTER TABLE audit_events ADD COLUMN pos BIGINT UNIQUE,"
	" ADD COLUMN txid xid8 NOT NULL DEFAULT pg_current_xact_id();"
	"UPDATE audit_events a SET pos = o.n"
	" FROM (SELECT seq, row_number() OVER (ORDER BY seq) n FROM audit_events) o WHERE a.seq = o.seq;"
	"CREATE INDEX audit_unplaced ON audit_events (seq) WHERE pos IS NULL;",
	/* 4: webhook endpoints and their deliveries */
	"CREATE TABLE webhook_endpoints ("
	" id TEXT PRIMARY KEY, url TEXT NOT NULL, events TEXT NOT NULL, description TEXT NOT NULL DEFAULT '',"
	" secret TEXT NOT NULL, status TEXT NOT NULL, created_at BIGINT NOT NULL, cursor BIGINT NOT NULL);"
	"CREATE TABLE webhook_deliveries ("
	" endpoint_id TEXT NOT NULL, seq BIGINT NOT NULL, event_id TEXT NOT NULL, attempts INTEGER NOT NULL,"
	" last_status INTEGER NOT NULL, last_error TEXT NOT NULL, state TEXT NOT NULL,"
	" first_attempt_at BIGINT NOT NULL, next_attempt_at BIGINT NOT NULL, updated_at BIGINT NOT NULL,"
	" PRIMARY KEY (endpoint_id, seq));",
	/* 5: waiting lists */
	"ALTER TABLE plans ADD COLUMN waitlist_enabled BOOLEAN NOT NULL DEFAULT false,"
	" ADD COLUMN waiting BIGINT NOT NULL DEFAULT 0 CHECK (waiting >= 0);"
	"ALTER TABLE subscriptions ADD COLUMN entry_id TEXT NOT NULL DEFAULT '';"
	"CREATE TABLE waitlist ("
	" seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, plan_id TEXT NOT NULL REFERENCES plans(id),"
	" customer_id TEXT NOT NULL, quantity BIGINT NOT NULL CHECK (quantity >= 1), status TEXT NOT NULL,"
	" token_hash TEXT NOT NULL, session_id TEXT NOT NULL UNIQUE, offer_key TEXT NOT NULL,"
	" offer_secret TEXT NOT NULL, secret_hash TEXT NOT NULL, offer_ttl_ms BIGINT NOT NULL,"
	" offer_expires_at BIGINT NOT NULL DEFAULT 0, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);"
	"CREATE INDEX waitlist_line ON waitlist (plan_id, status, seq);"
	"CREATE UNIQUE INDEX waitlist_live ON waitlist (plan_id, customer_id) WHERE status IN ('waiting', 'offered');",
	/* 6: charges are authorized, then captured or voided; the simulated processor keeps its
	 * records apart, as the remote service it plays */
	"CREATE INDEX payments_authorized ON payments (created_at) WHERE status = 'authorized'; DROP TABLE processor;",
	/* 7: a subscription's life. A plan's term is an interval counted in a time zone, with its
	 * renewal (an older plan: days, not renewing); a subscription keeps the term its periods are
	 * counted in, their anchor, the current period and its end (an older one: one period of its
	 * days, anchored so that it ends at its end_at; its period's start unknown, 0). */
	"ALTER TABLE plans ADD COLUMN term_unit TEXT NOT NULL DEFAULT 'day',"
	" ADD COLUMN term_count BIGINT NOT NULL DEFAULT 30, ADD COLUMN term_zone TEXT NOT NULL DEFAULT 'UTC',"
	" ADD COLUMN renewal TEXT NOT NULL DEFAULT 'none';"
	"UPDATE plans SET term_count = duration_days; ALTER TABLE plans DROP COLUMN duration_days;"
	"ALTER TABLE subscriptions ADD COLUMN term_unit TEXT NOT NULL DEFAULT 'day',"
	" ADD COLUMN term_count BIGINT NOT NULL DEFAULT 0, ADD COLUMN term_zone TEXT NOT NULL DEFAULT 'UTC',"
	" ADD COLUMN anchor_at BIGINT NOT NULL DEFAULT 0, ADD COLUMN anchor_index BIGINT NOT NULL DEFAULT 0,"
	" ADD COLUMN period_index BIGINT NOT NULL DEFAULT 0, ADD COLUMN period_start BIGINT NOT NULL DEFAULT 0,"
	" ADD COLUMN cancel_at_period_end BOOLEAN NOT NULL DEFAULT false,"
	" ADD COLUMN cancellation_reason TEXT NOT NULL DEFAULT '', ADD COLUMN ended_at BIGINT NOT NULL DEFAULT 0,"
	" ADD COLUMN next_attempt_at BIGINT NOT NULL DEFAULT 0, ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0,"
	" ADD COLUMN payment_method TEXT NOT NULL DEFAULT '', ADD COLUMN period_payment TEXT NOT NULL DEFAULT '';"
	"UPDATE subscriptions SET term_count = duration_days,"
	" anchor_at = CASE WHEN end_at > 0 THEN end_at - duration_days * 86400000 ELSE 0 END;"
	"CREATE INDEX subscriptions_due ON subscriptions (status, end_at);"
	"CREATE INDEX subscriptions_retry ON subscriptions (status, next_attempt_at);"
	"CREATE INDEX payments_late ON payments (created_at) WHERE status = 'late';"
	"CREATE INDEX payments_open ON payments (created_at) WHERE status = 'open';",
	/* 8: the outbox. A mail is found due by its next attempt while it is queued, listed by its
	 * time (of a status or all), and checked against the event of its unit. */
	"CREATE TABLE mail ("
	" id TEXT PRIMARY KEY, kind TEXT NOT NULL, customer_id TEXT NOT NULL, event_id TEXT NOT NULL,"
	" data TEXT NOT NULL, secret TEXT, status TEXT NOT NULL, attempts BIGINT NOT NULL DEFAULT 0,"
	" next_attempt_at BIGINT NOT NULL, last_error TEXT NOT NULL DEFAULT '',"
	" created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);"
	"CREATE INDEX mail_due ON mail (next_attempt_at) WHERE status = 'queued';"
	"CREATE INDEX mail_time ON mail (created_at, id);"
	"CREATE INDEX mail_status ON mail (status, created_at, id);",
	/* 9: customers' sign-in. A link is counted by its address and time, and found by its id, as
	 * a session is; each keeps its token's hash only. */
	"CREATE TABLE login_links ("
	" id TEXT PRIMARY KEY, email TEXT NOT NULL, customer_id TEXT, token_hash TEXT NOT NULL,"
	" created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, used_at BIGINT);"
	"CREATE INDEX login_links_email ON login_links (email, created_at);"
	"CREATE TABLE customer_sessions ("
	" id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, token_hash TEXT NOT NULL,"
	" created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, ended_at BIGINT);"
	"CREATE INDEX payments_subscription ON payments (subscription_id, created_at);"
	"CREATE INDEX waitlist_customer ON waitlist (customer_id, created_at);"
	/* the period whose reminder was sent (its end): one per period */
	"ALTER TABLE subscriptions ADD COLUMN reminded_end_at BIGINT NOT NULL DEFAULT 0;"
	/* the payment processor's own customer (a Stripe Customer's id), made once */
	"ALTER TABLE customers ADD COLUMN processor_customer_id TEXT NOT NULL DEFAULT '';",
};

/* --- statements --------------------------------------------------------------------------- */

/* Maps a failed result (or a broken connection) to the store's error kinds; clears res. */
static int pg_fail(struct pg *s, PGresult *res, struct err *e)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *msg = res ? PQresultErrorMessage(res) : PQerrorMessage(s->conn);

	if (state && (!strcmp(state, "40001") || !strcmp(state, "40P01") || !strcmp(state, "55P03") ||
		      !strcmp(state, "57014")))
		/* serialization failure, deadlock, lock_timeout, statement_timeout */
		err_set(e, ERR_RETRYABLE, NULL, "postgresql %s: %.200s", state, msg);
	else if (state && !strncmp(state, "23", 2))
		err_set(e, ERR_INTERNAL, NULL, "postgresql constraint %s: %.200s", state, msg);
	else
		err_set(e, ERR_UNAVAILABLE, NULL, "postgresql %s: %.200s", state ? state : "connection", msg);
	PQclear(res);
	return -1;
}

static bool is_unique_violation(const struct err *e)
{
	return e->kind == ERR_INTERNAL && strstr(e->msg, "constraint 23505");
}

/* The connection, opened again first if it broke (the server restarted): 0, or -1 with e when
 * the server cannot be reached. Every primitive starts here. */
static int connected(struct pg *s, struct err *e)
{
	if (PQstatus(s->conn) == CONNECTION_OK)
		return 0;
	PQreset(s->conn);
	s->nprepared = 0;
	return PQstatus(s->conn) == CONNECTION_OK ? 0 : pg_fail(s, NULL, e);
}

/* After the server restarted, the first use of the old connection fails: when no
 * transaction was open (nothing half-done), reconnect once and let the caller run again. */
static bool reconnected(struct pg *s)
{
	struct err ignored = {0};

	return !s->in_tx && PQstatus(s->conn) == CONNECTION_BAD && connected(s, &ignored) == 0;
}

/* Runs sql (prepared once per connection) with arguments by fmt: 't' text (NULL binds NULL),
 * 'i' int64, 'I' int64 where 0 binds NULL. New result, PQclear; NULL on error (e filled). */
static PGresult *q(struct pg *s, const char *sql, struct err *e, const char *fmt, ...)
{
	const char *values[MAX_PARAMS];
	char ints[MAX_PARAMS][24], name[16];
	PGresult *res;
	va_list ap;
	int slot, n = (int)strlen(fmt);
	bool retried = false;

again:
	for (slot = 0; slot < s->nprepared && s->prepared[slot] != sql; slot++)
		;
	snprintf(name, sizeof(name), "s%d", slot);
	if (slot == s->nprepared) {
		if (slot == MAX_PREPARED)
			abort(); /* more distinct statements than the table holds: raise MAX_PREPARED */
		res = PQprepare(s->conn, name, sql, 0, NULL);
		if (PQresultStatus(res) != PGRES_COMMAND_OK) {
			pg_fail(s, res, e);
			if (!retried && (retried = true) && reconnected(s))
				goto again;
			return NULL;
		}
		PQclear(res);
		s->prepared[s->nprepared++] = sql;
	}
	va_start(ap, fmt);
	for (int i = 0; i < n; i++) {
		if (fmt[i] == 't') {
			values[i] = va_arg(ap, const char *);
		} else {
			int64_t v = va_arg(ap, int64_t);
			snprintf(ints[i], sizeof(ints[i]), "%" PRId64, v);
			values[i] = fmt[i] == 'I' && !v ? NULL : ints[i];
		}
	}
	va_end(ap);
	res = PQexecPrepared(s->conn, name, n, values, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK) {
		pg_fail(s, res, e);
		if (!retried && (retried = true) && reconnected(s)) {
			err_clear(e);
			goto again;
		}
		return NULL;
	}
	return res;
}

/* Runs a statement without rows of interest; the number of rows it touched, or -1. */
static int run(PGresult *res)
{
	int n;

	if (!res)
		return -1;
	n = atoi(PQcmdTuples(res));
	PQclear(res);
	return n;
}

static int exec(struct pg *s, const char *sql, struct err *e)
{
	PGresult *res = PQexec(s->conn, sql);

	if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
		return pg_fail(s, res, e);
	PQclear(res);
	return 0;
}

static int64_t col_int(PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static char *col_str(PGresult *r, int row, int col)
{
	return xstrdup(PQgetvalue(r, row, col));
}

static void col_copy(PGresult *r, int row, int col, char *dst, size_t len)
{
	snprintf(dst, len, "%s", PQgetvalue(r, row, col));
}

/* A unit of work: 0 to commit, 1 to roll back because its condition does not hold (no
 * error), -1 on error. */
typedef int (*tx_fn)(struct pg *s, void *arg, struct err *e);

/* Runs fn in one transaction, again after a deadlock or serialization failure (bounded).
 * Returns what fn returned, or -1. A broken connection is reset for the next call. */
static int tx(struct pg *s, const char *begin, tx_fn fn, void *arg, struct err *e)
{
	int rc = -1;

	if (connected(s, e))
		return -1;
	for (int attempt = 1; attempt <= TX_ATTEMPTS; attempt++) {
		err_clear(e);
		if (exec(s, begin, e)) {
			if (attempt == 1 && reconnected(s))
				continue;
			break;
		}
		s->in_tx = true;
		rc = fn(s, arg, e);
		if (rc == 0 && exec(s, "COMMIT", e) == 0) {
			s->in_tx = false;
			return 0;
		}
		s->in_tx = false;
		if (PQtransactionStatus(s->conn) != PQTRANS_IDLE) {
			struct err ignored = {0};
			exec(s, "ROLLBACK", &ignored);
		}
		if (rc > 0)
			return rc;
		rc = -1;
		if (e->kind != ERR_RETRYABLE || !strstr(e->msg, "postgresql 40"))
			break;
	}
	return rc;
}

#define WRITE "BEGIN"
#define SNAPSHOT "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

/* --- events and seats --------------------------------------------------------------------- */

/* The outbox's row of a mail an event sends, queued and due at once. */
static int mail_put(struct pg *s, const struct mail_spec *m, const char *event_id, int64_t now, struct err *e)
{
	static const char sql[] =
		"INSERT INTO mail (id, kind, customer_id, event_id, data, secret, status, next_attempt_at,"
		" created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $7, $7)";
	char id[ID_LEN + 1];

	id_new(id);
	return run(q(s, sql, e, "tttttti", id, m->kind, m->customer_id, event_id, m->data ? m->data : "{}", m->secret,
		     now)) < 0 ? -1 : 0;
}

static int events_put(struct pg *s, const struct actor *a, int64_t now, const char *plan_id,
		      const struct event_spec *ev, size_t nev, const struct seat_counts *b,
		      const struct seat_counts *af, struct err *e)
{
	static const char sql[] =
		"INSERT INTO audit_events (id, at, action, actor_type, actor_id, resource_type, resource_id,"
		" plan_id, b_total, b_left, b_held, a_total, a_left, a_held, detail, trace_id, ip)"
		" VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17)";
	char id[ID_LEN + 1];

	for (size_t i = 0; i < nev; i++) {
		bool hb = store_event_before(&ev[i], b) != NULL, ha = store_event_after(&ev[i], af) != NULL;
		char nums[6][24];
		const char *v[6] = {NULL};

		if (hb) {
			snprintf(nums[0], 24, "%" PRId64, b->total), v[0] = nums[0];
			snprintf(nums[1], 24, "%" PRId64, b->left), v[1] = nums[1];
			snprintf(nums[2], 24, "%" PRId64, b->held), v[2] = nums[2];
		}
		if (ha) {
			snprintf(nums[3], 24, "%" PRId64, af->total), v[3] = nums[3];
			snprintf(nums[4], 24, "%" PRId64, af->left), v[4] = nums[4];
			snprintf(nums[5], 24, "%" PRId64, af->held), v[5] = nums[5];
		}
		id_new(id);
		if (run(q(s, sql, e, "tittttttttttttttt", id, now, ev[i].action, a->type, a->id ? a->id : "",
			  ev[i].resource_type, ev[i].resource_id, plan_id ? plan_id : "", v[0], v[1], v[2], v[3], v[4],
			  v[5], ev[i].detail, a->trace_id ? a->trace_id : "", a->ip ? a->ip : "")) < 0 ||
		    (ev[i].mail && mail_put(s, ev[i].mail, id, now, e)))
			return -1;
	}
	return 0;
}

/* *waiting (when given): the plan's waiting entries. */
static int seats_move(struct pg *s, const char *plan_id, int64_t dleft, int64_t dheld, int64_t now,
		      struct seat_counts *after, int64_t *waiting, struct err *e)
{
	static const char sql[] =
		"UPDATE plans SET subscriptions_left = subscriptions_left + $1, subscriptions_held = subscriptions_held + $2,"
		" updated_at = $3 WHERE id = $4 AND subscriptions_left + $1 >= 0 AND subscriptions_held + $2 >= 0"
		" RETURNING total_capacity, subscriptions_left, subscriptions_held, waiting";
	PGresult *r = q(s, sql, e, "iiit", dleft, dheld, now, plan_id);

	if (!r)
		return -1;
	if (PQntuples(r) == 0) {
		PQclear(r);
		err_set(e, ERR_INTERNAL, NULL, "seat counts of plan %s would go negative", plan_id);
		return -1;
	}
	*after = (struct seat_counts){col_int(r, 0, 0), col_int(r, 0, 1), col_int(r, 0, 2)};
	if (waiting)
		*waiting = col_int(r, 0, 3);
	PQclear(r);
	return 0;
}

/* --- waiting lists: offers ---------------------------------------------------------------- */

#define ENTRY_COLS                                                                                   \
	"w.id, w.plan_id, w.customer_id, w.quantity, w.status, w.token_hash, w.session_id, w.offer_key," \
	" w.offer_secret, w.secret_hash, w.offer_ttl_ms, w.offer_expires_at, w.seq, w.created_at,"      \
	" w.updated_at, CASE WHEN w.status = 'waiting' THEN (SELECT count(*) FROM waitlist x"             \
	" WHERE x.plan_id = w.plan_id AND x.status = 'waiting' AND x.seq <= w.seq) ELSE 0 END"

static void entry_read(PGresult *r, int row, struct waitlist_entry *w)
{
	memset(w, 0, sizeof(*w));
	col_copy(r, row, 0, w->id, sizeof(w->id));
	col_copy(r, row, 1, w->plan_id, sizeof(w->plan_id));
	col_copy(r, row, 2, w->customer_id, sizeof(w->customer_id));
	w->quantity = col_int(r, row, 3);
	col_copy(r, row, 4, w->status, sizeof(w->status));
	col_copy(r, row, 5, w->token_hash, sizeof(w->token_hash));
	col_copy(r, row, 6, w->session_id, sizeof(w->session_id));
	col_copy(r, row, 7, w->offer_key, sizeof(w->offer_key));
	col_copy(r, row, 8, w->offer_secret, sizeof(w->offer_secret));
	col_copy(r, row, 9, w->secret_hash, sizeof(w->secret_hash));
	w->offer_ttl_ms = col_int(r, row, 10);
	w->offer_expires_at = col_int(r, row, 11);
	w->seq = col_int(r, row, 12);
	w->created_at = col_int(r, row, 13);
	w->updated_at = col_int(r, row, 14);
	w->position = col_int(r, row, 15);
}

/* A term as plans and subscriptions both keep it: its count at col, its unit and zone at
 * unit_col and unit_col + 1. */
static void term_read(PGresult *r, int row, int col, int unit_col, struct sub_life *l)
{
	memset(l, 0, sizeof(*l));
	l->term_count = col_int(r, row, col);
	period_unit_parse(PQgetvalue(r, row, unit_col), &l->term_unit);
	col_copy(r, row, unit_col + 1, l->term_zone, sizeof(l->term_zone));
}

/* The plan's free seats to its line, in the caller's unit, which holds the plan's row
 * (store.h, *offers*). */
static int offers_make(struct pg *s, const char *plan_id, int64_t now, const struct actor *a, struct err *e)
{
	static const char head[] =
		"SELECT " ENTRY_COLS " FROM waitlist w WHERE w.plan_id = $1 AND w.status = 'waiting' ORDER BY w.seq LIMIT 1";
	static const char take[] =
		"UPDATE plans SET subscriptions_left = subscriptions_left - $1,"
		" subscriptions_held = subscriptions_held + $1, waiting = waiting - 1, updated_at = $2"
		" WHERE id = $3 AND subscriptions_left >= $1"
		" RETURNING total_capacity, subscriptions_left, subscriptions_held, price_cents, term_count, term_unit,"
		" term_zone";
	static const char ins[] =
		"INSERT INTO subscriptions (id, plan_id, customer_id, idem_key, status, amount_cents,"
		" duration_days, token_hash, hold_deadline, created_at, updated_at, quantity, secret_hash, entry_id,"
		" term_count, term_unit, term_zone)"
		" VALUES ($1, $2, $3, $4, 'pending', $5, $6, '', $7, $8, $9, $10, $11, $12, $13, $14, $15)";
	static const char mark[] =
		"UPDATE waitlist SET status = 'offered', offer_expires_at = $1, updated_at = $2 WHERE id = $3";

	for (;;) {
		struct waitlist_entry w;
		struct event_spec ev[OFFER_EVENTS];
		struct outbox_mail m;
		struct seat_counts before, after;
		struct sub_life term;
		int64_t price, until;
		PGresult *r = q(s, head, e, "t", plan_id);

		if (!r)
			return -1;
		if (PQntuples(r) == 0) {
			PQclear(r);
			return 0;
		}
		entry_read(r, 0, &w);
		PQclear(r);
		if (!(r = q(s, take, e, "iit", w.quantity, now, plan_id)))
			return -1;
		if (PQntuples(r) == 0) {
			PQclear(r);
			return 0;   /* the first in line does not fit: everyone behind it waits too */
		}
		after = (struct seat_counts){col_int(r, 0, 0), col_int(r, 0, 1), col_int(r, 0, 2)};
		price = col_int(r, 0, 3);
		term_read(r, 0, 4, 5, &term);
		PQclear(r);
		before = store_counts_before(after, -w.quantity, w.quantity);
		until = now + w.offer_ttl_ms;
		w.offer_expires_at = until;
		store_offer_events(&w, ev, &m, a ? a->trace_id : NULL);
		int rc = run(q(s, ins, e, "ttttiiiiiittitt", w.session_id, plan_id, w.customer_id, w.offer_key,
			       price * w.quantity, term_days(term.term_unit, term.term_count), until, now, now, w.quantity,
			       w.secret_hash, w.id, term.term_count, period_unit_name(term.term_unit), term.term_zone)) < 0 ||
			 run(q(s, mark, e, "iit", until, now, w.id)) < 0 ||
			 events_put(s, a, now, plan_id, ev, OFFER_EVENTS, &before, &after, e);
		outbox_mail_clear(&m);
		if (rc)
			return -1;
	}
}

/* --- plans and customers ------------------------------------------------------------------- */

#define PLAN_COLS                                                                            \
	"id, name, description, price_cents, term_count, total_capacity, subscriptions_left," \
	" subscriptions_held, status, features, created_at, updated_at, max_per_order, max_per_customer," \
	" waitlist_enabled, waiting, term_unit, term_zone, renewal"
#define PLAN_NCOLS 19

static void plan_read(PGresult *r, int row, struct plan *p)
{
	memset(p, 0, sizeof(*p));
	col_copy(r, row, 0, p->id, sizeof(p->id));
	p->name = col_str(r, row, 1);
	p->description = col_str(r, row, 2);
	p->price_cents = col_int(r, row, 3);
	p->interval_count = col_int(r, row, 4);
	p->total_capacity = col_int(r, row, 5);
	p->subscriptions_left = col_int(r, row, 6);
	p->subscriptions_held = col_int(r, row, 7);
	col_copy(r, row, 8, p->status, sizeof(p->status));
	p->features = json_tokener_parse(PQgetvalue(r, row, 9));
	if (!p->features)
		p->features = json_object_new_array();
	p->created_at = col_int(r, row, 10);
	p->updated_at = col_int(r, row, 11);
	p->max_per_order = col_int(r, row, 12);
	p->max_per_customer = col_int(r, row, 13);
	p->waitlist_enabled = !strcmp(PQgetvalue(r, row, 14), "t");
	p->waiting = col_int(r, row, 15);
	period_unit_parse(PQgetvalue(r, row, 16), &p->interval);
	col_copy(r, row, 17, p->timezone, sizeof(p->timezone));
	p->renews = !strcmp(PQgetvalue(r, row, 18), "auto");
}

static const char *features_text(struct json_object *f)
{
	return f ? json_object_to_json_string_ext(f, JSON_C_TO_STRING_PLAIN) : "[]";
}

static int pg_plan_get(struct store *st, const char *id, struct plan *out, bool *found, struct err *e)
{
	static const char sql[] = "SELECT " PLAN_COLS " FROM plans WHERE id = $1";
	PGresult *r;

	if (connected(PG(st), e) || !(r = q(PG(st), sql, e, "t", id)))
		return -1;
	if ((*found = PQntuples(r) == 1))
		plan_read(r, 0, out);
	PQclear(r);
	return 0;
}

struct plan_create_arg {
	const struct plan *p;
	const struct event_spec *ev;
	size_t nev;
	const struct actor *a;
};

static int plan_create_tx(struct pg *s, void *arg, struct err *e)
{
	static const char sql[] = "INSERT INTO plans (" PLAN_COLS ")"
				  " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15::boolean,0,$16,$17,$18)"
				  " ON CONFLICT DO NOTHING";
	struct plan_create_arg *x = arg;
	const struct plan *p = x->p;
	struct seat_counts after = {p->total_capacity, p->subscriptions_left, p->subscriptions_held};
	int n = run(q(s, sql, e, "tttiiiiittiiiitttt", p->id, p->name, p->description, p->price_cents, p->interval_count,
		      p->total_capacity, p->subscriptions_left, p->subscriptions_held, p->status,
		      features_text(p->features), p->created_at, p->updated_at, p->max_per_order,
		      p->max_per_customer, p->waitlist_enabled ? "true" : "false", period_unit_name(p->interval),
		      p->timezone, p->renews ? "auto" : "none"));

	if (n <= 0)
		return n < 0 ? -1 : 1;
	return events_put(s, x->a, p->created_at, p->id, x->ev, x->nev, NULL, &after, e);
}

static int pg_plan_create(struct store *st, const struct plan *p, const struct event_spec *ev, size_t nev,
			  const struct actor *a, enum write_result *res, struct err *e)
{
	struct plan_create_arg x = {p, ev, nev, a};
	int rc = tx(PG(st), WRITE, plan_create_tx, &x, e);

	*res = rc == 1 ? WRITE_DUPLICATE : WRITE_DONE;
	return rc < 0 ? -1 : 0;
}

static int pg_plan_list(struct store *st, const char *status, struct plan **out, size_t *n, struct err *e)
{
	static const char sql[] = "SELECT " PLAN_COLS " FROM plans WHERE $1::text IS NULL OR status = $1"
				  " ORDER BY price_cents, name, id";
	PGresult *r;

	*out = NULL;
	*n = 0;
	if (connected(PG(st), e) || !(r = q(PG(st), sql, e, "t", status)))
		return -1;
	*out = xcalloc((size_t)PQntuples(r) + 1, sizeof(**out));
	for (int i = 0; i < PQntuples(r); i++)
		plan_read(r, i, &(*out)[(*n)++]);
	PQclear(r);
	return 0;
}

struct plan_update_arg {
	const char *id;
	const struct plan_patch *pt;
	int64_t now;
	const struct event_spec *ev;
	size_t nev;
	const struct actor *a;
	struct plan *out;
	enum write_result res;
};

static int plan_update_tx(struct pg *s, void *arg, struct err *e)
{
	static const char lock[] = "SELECT " PLAN_COLS " FROM plans WHERE id = $1 FOR UPDATE";
	/* The capacity moves what is left by its delta, conditionally, in the row's lock. */
	static const char sql[] =
		"UPDATE plans SET name = coalesce($1, name), description = coalesce($2, description),"
		" price_cents = coalesce($3::bigint, price_cents), term_count = coalesce($4::bigint, term_count),"
		" term_unit = coalesce($13, term_unit), term_zone = coalesce($14, term_zone),"
		" renewal = coalesce($15, renewal),"
		" features = coalesce($5, features), status = coalesce($6, status),"
		" subscriptions_left = subscriptions_left + coalesce($7::bigint - total_capacity, 0),"
		" total_capacity = coalesce($7::bigint, total_capacity), updated_at = $8,"
		" max_per_order = coalesce($10::bigint, max_per_order),"
		" max_per_customer = coalesce($11::bigint, max_per_customer),"
		" waitlist_enabled = coalesce($12::boolean, waitlist_enabled)"
		" WHERE id = $9 AND subscriptions_left + coalesce($7::bigint - total_capacity, 0) >= 0"
		" RETURNING " PLAN_COLS;
	struct plan_update_arg *x = arg;
	const struct plan_patch *pt = x->pt;
	struct seat_counts before, after;
	char price[24], duration[24], capacity[24], now[24], per_order[24], per_customer[24];
	PGresult *r;

	if (!(r = q(s, lock, e, "t", x->id)))
		return -1;
	if (PQntuples(r) == 0) {
		PQclear(r);
		x->res = WRITE_NOT_FOUND;
		return 1;
	}
	before = (struct seat_counts){col_int(r, 0, 5), col_int(r, 0, 6), col_int(r, 0, 7)};
	PQclear(r);
	snprintf(price, sizeof(price), "%" PRId64, pt->price_cents);
	snprintf(duration, sizeof(duration), "%" PRId64, pt->interval_count);
	snprintf(capacity, sizeof(capacity), "%" PRId64, pt->total_capacity);
	snprintf(now, sizeof(now), "%" PRId64, x->now);
	snprintf(per_order, sizeof(per_order), "%" PRId64, pt->max_per_order);
	snprintf(per_customer, sizeof(per_customer), "%" PRId64, pt->max_per_customer);
	r = q(s, sql, e, "ttttttttttttttt", pt->fields & PLAN_F_NAME ? pt->name : NULL,
	      pt->fields & PLAN_F_DESCRIPTION ? pt->description : NULL, pt->fields & PLAN_F_PRICE ? price : NULL,
	      pt->fields & PLAN_F_INTERVAL ? duration : NULL,
	      pt->fields & PLAN_F_FEATURES ? features_text(pt->features) : NULL,
	      pt->fields & PLAN_F_STATUS ? pt->status : NULL, pt->fields & PLAN_F_CAPACITY ? capacity : NULL, now,
	      x->id, pt->fields & PLAN_F_MAX_ORDER ? per_order : NULL,
	      pt->fields & PLAN_F_MAX_CUSTOMER ? per_customer : NULL,
	      pt->fields & PLAN_F_WAITLIST ? (pt->waitlist_enabled ? "true" : "false") : NULL,
	      pt->fields & PLAN_F_INTERVAL ? period_unit_name(pt->interval) : NULL,
	      pt->fields & PLAN_F_TIMEZONE ? pt->timezone : NULL,
	      pt->fields & PLAN_F_RENEWAL ? (pt->renews ? "auto" : "none") : NULL);
	if (!r)
		return -1;
	if (PQntuples(r) == 0) {
		PQclear(r);
		x->res = WRITE_SEATS_SHORT;
		return 1;
	}
	plan_read(r, 0, x->out);
	PQclear(r);
	after = (struct seat_counts){x->out->total_capacity, x->out->subscriptions_left, x->out->subscriptions_held};
	if (events_put(s, x->a, x->now, x->id, x->ev, x->nev, &before, &after, e))
		return -1;
	/* more seats: the line's first take them */
	if (x->out->waiting > 0 && after.left > before.left) {
		bool found;
		plan_clear(x->out);
		if (offers_make(s, x->id, x->now, x->a, e) || pg_plan_get(&s->base, x->id, x->out, &found, e))
			return -1;
	}
	return 0;
}

static int pg_plan_update(struct store *st, const char *id, const struct plan_patch *pt, int64_t now,
			  const struct event_spec *ev, size_t nev, const struct actor *a, struct plan *out,
			  enum write_result *res, struct err *e)
{
	struct plan_update_arg x = {id, pt, now, ev, nev, a, out, WRITE_DONE};
	int rc = tx(PG(st), WRITE, plan_update_tx, &x, e);

	if (rc < 0 && is_unique_violation(e)) {
		err_clear(e);
		x.res = WRITE_DUPLICATE;
		rc = 1;
	}
	*res = x.res;
	if (rc)
		plan_clear(out);
	return rc < 0 ? -1 : 0;
}

static const char CUSTOMER_INSERT[] =
	"INSERT INTO customers (id, email, name, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";

static int pg_customer_create(struct store *st, const struct customer *c, enum write_result *res, struct err *e)
{
	int n;

	if (connected(PG(st), e) || (n = run(q(PG(st), CUSTOMER_INSERT, e, "ttti", c->id, c->email, c->name,
					     c->created_at))) < 0)
		return -1;
	*res = n ? WRITE_DONE : WRITE_DUPLICATE;
	return 0;
}

static int pg_customer_get(struct store *st, const char *id, struct customer *out, bool *found, struct err *e)
{
	static const char sql[] =
		"SELECT id, email, name, created_at, processor_customer_id FROM customers WHERE id = $1";
	PGresult *r;

	if (connected(PG(st), e) || !(r = q(PG(st), sql, e, "t", id)))
		return -1;
	if ((*found = PQntuples(r) == 1)) {
		memset(out, 0, sizeof(*out));
		col_copy(r, 0, 0, out->id, sizeof(out->id));
		out->email = col_str(r, 0, 1);
		out->name = col_str(r, 0, 2);
		out->created_at = col_int(r, 0, 3);
		col_copy(r, 0, 4, out->processor_id, sizeof(out->processor_id));
	}
	PQclear(r);
	return 0;
}

static int pg_customer_processor_set(struct store *st, const char *id, const char *processor_id, struct err *e)
{
	static const char sql[] =
		"UPDATE customers SET processor_customer_id = $1 WHERE id = $2 AND processor_customer_id = ''";

	return connected(PG(st), e) || run(q(PG(st), sql, e, "tt", processor_id, id)) < 0 ? -1 : 0;
}

/* --- sign-in ------------------------------------------------------------------------------ */

struct login_arg {
	const struct login_req *r;
	const struct event_spec *ev;
	const struct actor *a;
	enum login_result res;
};

/* An address's links are counted under a lock of its own (an advisory lock of the transaction,
 * keyed by the address's hash): two requests of one address count one after the other. */
static int login_link_tx(struct pg *s, void *arg, struct err *e)
{
	static const char lock[] = "SELECT pg_advisory_xact_lock(7261032, hashtext($1))";
	static const char forget[] = "DELETE FROM login_links WHERE email = $1 AND created_at <= $2";
	static const char count[] = "SELECT count(*) FROM login_links WHERE email = $1 AND created_at > $2";
	static const char who[] = "SELECT id FROM customers WHERE lower(email) = $1";
	static const char put[] = "INSERT INTO login_links (id, email, customer_id, token_hash, created_at, expires_at)"
				  " VALUES ($1, $2, $3, $4, $5, $6)";
	struct login_arg *x = arg;
	const struct login_req *r = x->r;
	char customer[ID_LEN + 1] = "";
	PGresult *res;

	x->res = LOGIN_LIMITED;
	if (run(q(s, lock, e, "t", r->email)) < 0 || run(q(s, forget, e, "ti", r->email, r->since)) < 0 ||
	    !(res = q(s, count, e, "ti", r->email, r->since)))
		return -1;
	int64_t n = col_int(res, 0, 0);
	PQclear(res);
	if (n >= r->limit)
		return 0;
	if (!(res = q(s, who, e, "t", r->email)))
		return -1;
	if (PQntuples(res) == 1)
		col_copy(res, 0, 0, customer, sizeof(customer));
	PQclear(res);
	if (run(q(s, put, e, "ttttii", r->link_id, r->email, *customer ? customer : NULL, r->token_hash, r->now,
		  r->expires_at)) < 0)
		return -1;
	x->res = *customer ? LOGIN_SENT : LOGIN_UNKNOWN;
	if (!*customer)
		return 0;
	struct mail_spec m = *x->ev->mail;
	struct event_spec one = *x->ev;
	m.customer_id = customer;
	one.resource_id = customer;
	one.mail = &m;
	return events_put(s, x->a, r->now, NULL, &one, 1, NULL, NULL, e);
}

static int pg_login_link(struct store *st, const struct login_req *r, const struct event_spec *ev,
			 const struct actor *a, enum login_result *res, struct err *e)
{
	struct login_arg x = {r, ev, a, LOGIN_LIMITED};
	int rc = tx(PG(st), WRITE, login_link_tx, &x, e);

	*res = x.res;
	return rc < 0 ? -1 : 0;
}

/* The link used and the session made in one statement. */
static int pg_login_exchange(struct store *st, const char *link_id, const char *token_hash,
			     struct customer_session *cs, bool *ok, struct err *e)
{
	static const char sql[] =
		"WITH used AS (UPDATE login_links SET used_at = $1 WHERE id = $2 AND token_hash = $3 AND used_at IS NULL"
		" AND expires_at > $1 AND customer_id IS NOT NULL RETURNING customer_id)"
		" INSERT INTO customer_sessions (id, customer_id, token_hash, created_at, expires_at)"
		" SELECT $4, customer_id, $5, $1, $6 FROM used RETURNING customer_id";
	PGresult *r;

	*ok = false;
	if (connected(PG(st), e) ||
	    !(r = q(PG(st), sql, e, "itttti", cs->created_at, link_id, token_hash, cs->id, cs->token_hash, cs->expires_at)))
		return -1;
	if ((*ok = PQntuples(r) == 1))
		col_copy(r, 0, 0, cs->customer_id, sizeof(cs->customer_id));
	PQclear(r);
	return 0;
}

static int pg_session_get(struct store *st, const char *id, struct customer_session *out, bool *found,
			  struct err *e)
{
	static const char sql[] = "SELECT id, customer_id, token_hash, created_at, expires_at, coalesce(ended_at, 0)"
				  " FROM customer_sessions WHERE id = $1";
	PGresult *r;

	memset(out, 0, sizeof(*out));
	if (connected(PG(st), e) || !(r = q(PG(st), sql, e, "t", id)))
		return -1;
	if ((*found = PQntuples(r) == 1)) {
		col_copy(r, 0, 0, out->id, sizeof(out->id));
		col_copy(r, 0, 1, out->customer_id, sizeof(out->customer_id));
		col_copy(r, 0, 2, out->token_hash, sizeof(out->token_hash));
		out->created_at = col_int(r, 0, 3);
		out->expires_at = col_int(r, 0, 4);
		out->ended_at = col_int(r, 0, 5);
	}
	PQclear(r);
	return 0;
}

static int pg_session_end(struct store *st, const char *id, int64_t now, bool *found, struct err *e)
{
	static const char sql[] = "UPDATE customer_sessions SET ended_at = $1 WHERE id = $2 AND ended_at IS NULL";
	int n;

	*found = false;
	if (connected(PG(st), e) || (n = run(q(PG(st), sql, e, "it", now, id))) < 0)
		return -1;
	*found = n > 0;
	return 0;
}

/* --- idempotency keys --------------------------------------------------------------------- */

static const char KEY_SELECT[] =
	"SELECT key, fingerprint, state, locked_until, subscription_id, response_status, response_body, created_at"
	" FROM idempotency_keys WHERE key = $1";

static void key_read(PGresult *r, struct key_record *k)
{
	const char *state = PQgetvalue(r, 0, 2);

	memset(k, 0, sizeof(*k));
	col_copy(r, 0, 0, k->key, sizeof(k->key));
	col_copy(r, 0, 1, k->fingerprint, sizeof(k->fingerprint));
	k->state = !strcmp(state, "done") ? KEY_DONE : !strcmp(state, "held") ? KEY_HELD : KEY_STARTED;
	k->locked_until = col_int(r, 0, 3);
	col_copy(r, 0, 4, k->subscription_id, sizeof(k->subscription_id));
	k->reply.status = (int)col_int(r, 0, 5);
	if (!PQgetisnull(r, 0, 6))
		k->reply.body = col_str(r, 0, 6);
	k->created_at = col_int(r, 0, 7);
}

/* The claim of a key that exists, in the caller's transaction: read it locked, take over the
 * lease of a request that died. 1 when it exists, 0 when absent, -1 on error. */
static int key_existing(struct pg *s, const struct claim_req *r, struct claim *out, struct err *e)
{
	static const char lock[] =
		"SELECT key, fingerprint, state, locked_until, subscription_id, response_status, response_body,"
		" created_at FROM idempotency_keys WHERE key = $1 FOR UPDATE";
	static const char relock[] = "UPDATE idempotency_keys SET locked_until = $1 WHERE key = $2";
	PGresult *res = q(s, lock, e, "t", r->key);

	if (!res)
		return -1;
	if (PQntuples(res) == 0) {
		PQclear(res);
		return 0;
	}
	out->result = CLAIM_EXISTS;
	key_read(res, &out->key);
	PQclear(res);
	if (!strcmp(out->key.fingerprint, r->fingerprint) && out->key.state != KEY_DONE &&
	    out->key.locked_until <= r->now) {
		if (run(q(s, relock, e, "it", r->lease_until, r->key)) < 0)
			return -1;
		out->taken_over = true;
		out->key.locked_until = r->lease_until;
	}
	return 1;
}

struct claim_arg {
	const struct claim_req *r;
	struct claim *out;
};

static int key_claim_tx(struct pg *s, void *arg, struct err *e)
{
	static const char ins[] =
		"INSERT INTO idempotency_keys (key, fingerprint, state, locked_until, created_at)"
		" VALUES ($1, $2, 'started', $3, $4) ON CONFLICT DO NOTHING";
	struct claim_arg *x = arg;
	int n = run(q(s, ins, e, "ttii", x->r->key, x->r->fingerprint, x->r->lease_until, x->r->now));

	claim_clear(x->out);
	if (n < 0)
		return -1;
	if (n == 1) {
		x->out->result = CLAIM_NEW;
		return 0;
	}
	return key_existing(s, x->r, x->out, e) < 0 ? -1 : 0;
}

static int pg_key_claim(struct store *st, const struct claim_req *r, struct claim *out, struct err *e)
{
	struct claim_arg x = {r, out};

	memset(out, 0, sizeof(*out));
	if (tx(PG(st), WRITE, key_claim_tx, &x, e)) {
		claim_clear(out);
		return -1;
	}
	return 0;
}

static int pg_key_get(struct store *st, const char *key, struct key_record *out, bool *found, struct err *e)
{
	PGresult *r;

	if (connected(PG(st), e) || !(r = q(PG(st), KEY_SELECT, e, "t", key)))
		return -1;
	if ((*found = PQntuples(r) == 1))
		key_read(r, out);
	PQclear(r);
	return 0;
}

static int pg_key_forget(struct store *st, const char *key, struct err *e)
{
	static const char sql[] = "DELETE FROM idempotency_keys WHERE key = $1 AND state = 'started'";

	return connected(PG(st), e) || run(q(PG(st), sql, e, "t", key)) < 0 ? -1 : 0;
}

static const char KEY_DONE_SQL[] =
	"UPDATE idempotency_keys SET state = 'done', locked_until = 0, response_status = $1, response_body = $2"
	" WHERE key = $3 AND state <> 'done'";

static int pg_key_finish(struct store *st, const char *key, const struct reply *rp, bool *matched, struct err *e)
{
	int n;

	if (connected(PG(st), e) || (n = run(q(PG(st), KEY_DONE_SQL, e, "itt", (int64_t)rp->status, rp->body, key))) < 0)
		return -1;
	*matched = n > 0;
	return 0;
}

/* --- subscriptions ------------------------------------------------------------------------ */

#define SUB_COLS                                                                                \
	"s.id, s.status, s.plan_id, p.name, s.customer_id, s.idem_key, s.payment_id, s.token_hash," \
	" s.amount_cents, s.duration_days, s.start_at, s.end_at, s.hold_deadline, s.created_at,"    \
	" s.updated_at, s.seq, s.quantity, s.secret_hash, s.attempt_key, s.attempt_until, s.previous_id," \
	" s.entry_id, s.term_count, s.term_unit, s.term_zone, s.anchor_at, s.anchor_index, s.period_index,"  \
	" s.period_start, s.cancel_at_period_end, s.cancellation_reason, s.ended_at, s.next_attempt_at,"   \
	" s.attempts, s.payment_method, p.renewal, s.period_payment"

static void sub_read(PGresult *r, int row, struct subscription *o)
{
	memset(o, 0, sizeof(*o));
	col_copy(r, row, 0, o->id, sizeof(o->id));
	col_copy(r, row, 1, o->status, sizeof(o->status));
	col_copy(r, row, 2, o->plan_id, sizeof(o->plan_id));
	o->plan_name = col_str(r, row, 3);
	col_copy(r, row, 4, o->customer_id, sizeof(o->customer_id));
	col_copy(r, row, 5, o->idem_key, sizeof(o->idem_key));
	col_copy(r, row, 6, o->payment_id, sizeof(o->payment_id));
	col_copy(r, row, 7, o->token_hash, sizeof(o->token_hash));
	o->amount_cents = col_int(r, row, 8);
	o->duration_days = col_int(r, row, 9);
	o->start_at = col_int(r, row, 10);
	o->end_at = col_int(r, row, 11);
	o->hold_deadline = col_int(r, row, 12);
	o->created_at = col_int(r, row, 13);
	o->updated_at = col_int(r, row, 14);
	o->seq = col_int(r, row, 15);
	o->quantity = col_int(r, row, 16);
	col_copy(r, row, 17, o->secret_hash, sizeof(o->secret_hash));
	col_copy(r, row, 18, o->attempt_key, sizeof(o->attempt_key));
	o->attempt_until = col_int(r, row, 19);
	col_copy(r, row, 20, o->previous_id, sizeof(o->previous_id));
	col_copy(r, row, 21, o->entry_id, sizeof(o->entry_id));
	term_read(r, row, 22, 23, &o->life);
	o->life.anchor_at = col_int(r, row, 25);
	o->life.anchor_index = col_int(r, row, 26);
	o->life.period_index = col_int(r, row, 27);
	o->life.period_start = col_int(r, row, 28);
	o->life.cancel_at_period_end = !strcmp(PQgetvalue(r, row, 29), "t");
	col_copy(r, row, 30, o->life.cancellation_reason, sizeof(o->life.cancellation_reason));
	o->life.ended_at = col_int(r, row, 31);
	o->life.next_attempt_at = col_int(r, row, 32);
	o->life.attempts = col_int(r, row, 33);
	col_copy(r, row, 34, o->life.payment_method, sizeof(o->life.payment_method));
	o->plan_renews = !strcmp(PQgetvalue(r, row, 35), "auto");
	col_copy(r, row, 36, o->life.period_payment, sizeof(o->life.period_payment));
}

static const char SUB_BY_ID[] = "SELECT " SUB_COLS " FROM subscriptions s JOIN plans p ON p.id = s.plan_id WHERE s.id = $1";

static int sub_find(struct pg *s, const char *id, struct subscription *out, bool *found, struct err *e)
{
	PGresult *r = q(s, SUB_BY_ID, e, "t", id);

	if (!r)
		return -1;
	if ((*found = PQntuples(r) == 1))
		sub_read(r, 0, out);
	PQclear(r);
	return 0;
}

static int pg_sub_get(struct store *st, const char *id, struct subscription *out, bool *found, struct err *e)
{
	return connected(PG(st), e) ? -1 : sub_find(PG(st), id, out, found, e);
}

static int pg_held_by_kind(struct store *st, const char *plan_id, int64_t *paying, int64_t *sessions,
			   struct err *e)
{
	static const char sql[] =
		"SELECT coalesce(sum(quantity) FILTER (WHERE secret_hash = ''), 0),"
		" coalesce(sum(quantity) FILTER (WHERE secret_hash <> ''), 0)"
		" FROM subscriptions WHERE plan_id = $1 AND status = 'pending'";
	PGresult *r;

	if (connected(PG(st), e) || !(r = q(PG(st), sql, e, "t", plan_id)))
		return -1;
	*paying = col_int(r, 0, 0);
	*sessions = col_int(r, 0, 1);
	PQclear(r);
	return 0;
}

static int pg_payment_totals(struct store *st, struct payment_total **out, size_t *n, struct err *e)
{
	static const char sql[] = "SELECT kind, status, count(*), coalesce(sum(amount_cents), 0) FROM payments"
				  " GROUP BY kind, status ORDER BY kind, status LIMIT $1";
	PGresult *r;

	*out = xcalloc(PAYMENT_TOTALS_MAX, sizeof(**out));
	*n = 0;
	if (connected(PG(st), e) || !(r = q(PG(st), sql, e, "i", (int64_t)PAYMENT_TOTALS_MAX)))
		return -1;
	for (int i = 0; i < PQntuples(r); i++) {
		struct payment_total *t = &(*out)[(*n)++];
		col_copy(r, i, 0, t->kind, sizeof(t->kind));
		col_copy(r, i, 1, t->status, sizeof(t->status));
		t->count = col_int(r, i, 2);
		t->amount_cents = col_int(r, i, 3);
	}
	PQclear(r);
	return 0;
}

static int pg_sub_totals(struct store *st, struct sub_total **out, size_t *n, struct err *e)
{
	static const char sql[] = "SELECT status, count(*), coalesce(sum(quantity), 0) FROM subscriptions"
				  " GROUP BY status ORDER BY status LIMIT $1";
	PGresult *r;

	*out = xcalloc(SUB_TOTALS_MAX, sizeof(**out));
	*n = 0;
	if (connected(PG(st), e) || !(r = q(PG(st), sql, e, "i", (int64_t)SUB_TOTALS_MAX)))
		return -1;
	for (int i = 0; i < PQntuples(r); i++) {
		struct sub_total *t = &(*out)[(*n)++];
		col_copy(r, i, 0, t->status, sizeof(t->status));
		t->count = col_int(r, i, 1);
		t->seats = col_int(r, i, 2);
	}
	PQclear(r);
	return 0;
}

struct hold_arg {
	const struct hold_req *r;
	const struct actor *a;
	struct hold_out *out;
};

static int hold_tx(struct pg *s, void *arg, struct err *e)
{
	static const char key_ins[] =
		"INSERT INTO idempotency_keys (key, fingerprint, state, locked_until, subscription_id, created_at)"
		" VALUES ($1, $2, 'held', $3, $4, $5) ON CONFLICT DO NOTHING";
	/* a session's answer, known once its subscription is: stored in the same transaction */
	static const char key_done[] =
		"UPDATE idempotency_keys SET state = 'done', locked_until = 0, response_status = $1,"
		" response_body = $2 WHERE key = $3";
	static const char by_id[] = "SELECT id FROM customers WHERE id = $1";
	static const char by_email[] = "SELECT id FROM customers WHERE lower(email) = lower($1)";
	static const char take[] =
		"UPDATE plans SET subscriptions_left = subscriptions_left - $3, subscriptions_held = subscriptions_held + $3,"
		" updated_at = $1 WHERE id = $2 AND status = 'active' AND subscriptions_left >= $3 AND max_per_order >= $3"
		" AND waiting = 0"
		" RETURNING name, price_cents, term_count, total_capacity, subscriptions_left, subscriptions_held,"
		" max_per_customer, term_unit, term_zone, renewal";
	static const char why[] = "SELECT status, subscriptions_left, max_per_order, waiting FROM plans WHERE id = $1";
	/* Read after the plan's row is ours: every hold of the plan that committed before is seen. */
	static const char owned[] =
		"SELECT coalesce(sum(quantity), 0) FROM subscriptions"
		" WHERE customer_id = $1 AND plan_id = $2 AND status IN ('pending', 'active', 'past_due')";
	static const char ins[] =
		"INSERT INTO subscriptions (id, plan_id, customer_id, idem_key, status, amount_cents, duration_days,"
		" token_hash, hold_deadline, created_at, updated_at, quantity, secret_hash, attempt_key, attempt_until,"
		" previous_id, term_count, term_unit, term_zone)"
		" VALUES ($1, $2, $3, $4, 'pending', $5, $6, '', $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)";
	/* a plan change: the subscription it replaces, still active, locked until the unit ends */
	static const char previous[] =
		"SELECT 1 FROM subscriptions WHERE id = $1 AND customer_id = $2 AND status = 'active' FOR UPDATE";
	struct hold_arg *x = arg;
	const struct hold_req *r = x->r;
	struct subscription *sub = &x->out->sub;
	struct seat_counts before, after;
	struct actor buyer = *x->a;
	char customer_id[ID_LEN + 1];
	int64_t now = r->claim.now;
	PGresult *res;
	int n;

	hold_out_clear(x->out);
	if ((n = run(q(s, key_ins, e, "ttiti", r->claim.key, r->claim.fingerprint, r->claim.lease_until,
		       r->subscription_id, now))) < 0)
		return -1;
	if (n == 0) {
		/* The key exists: nothing is taken, but a lease may be taken over (committed). */
		x->out->result = HOLD_KEY_EXISTS;
		return key_existing(s, &r->claim, &x->out->claim, e) < 0 ? -1 : 0;
	}
	if (!r->customer_id && run(q(s, CUSTOMER_INSERT, e, "ttti", r->customer->id, r->customer->email,
				     r->customer->name, r->customer->created_at)) < 0)
		return -1;
	res = r->customer_id ? q(s, by_id, e, "t", r->customer_id) : q(s, by_email, e, "t", r->customer->email);
	if (!res)
		return -1;
	if (PQntuples(res) == 0) {
		PQclear(res);
		x->out->result = HOLD_NO_CUSTOMER;
		return 1;
	}
	col_copy(res, 0, 0, customer_id, sizeof(customer_id));
	PQclear(res);
	if (r->previous_id) {
		if (!(res = q(s, previous, e, "tt", r->previous_id, customer_id)))
			return -1;
		n = PQntuples(res);
		PQclear(res);
		if (n == 0) {
			x->out->result = HOLD_PREVIOUS_INACTIVE;
			return 1;
		}
	}
	if (!(res = q(s, take, e, "iti", now, r->plan_id, r->quantity)))
		return -1;
	if (PQntuples(res) == 0) {
		PQclear(res);
		if (!(res = q(s, why, e, "t", r->plan_id)))
			return -1;
		if (PQntuples(res) == 1) {
			x->out->available = col_int(res, 0, 1);
			x->out->limit = col_int(res, 0, 2);
			x->out->waiting = col_int(res, 0, 3);
		}
		x->out->result = PQntuples(res) == 0 ? HOLD_NO_PLAN
			       : strcmp(PQgetvalue(res, 0, 0), "active") ? HOLD_PLAN_INACTIVE
			       : r->quantity > x->out->limit ? HOLD_ORDER_LIMIT : HOLD_SOLD_OUT;
		PQclear(res);
		return 1;
	}
	if ((x->out->limit = col_int(res, 0, 6)) > 0) {
		PGresult *o = q(s, owned, e, "tt", customer_id, r->plan_id);
		if (!o) {
			PQclear(res);
			return -1;
		}
		x->out->held = col_int(o, 0, 0);
		PQclear(o);
		if (x->out->held + r->quantity > x->out->limit) {
			PQclear(res);
			x->out->result = HOLD_CUSTOMER_LIMIT;
			return 1;
		}
	}
	snprintf(sub->id, sizeof(sub->id), "%s", r->subscription_id);
	snprintf(sub->status, sizeof(sub->status), "pending");
	snprintf(sub->plan_id, sizeof(sub->plan_id), "%s", r->plan_id);
	snprintf(sub->customer_id, sizeof(sub->customer_id), "%s", customer_id);
	snprintf(sub->idem_key, sizeof(sub->idem_key), "%s", r->claim.key);
	sub->plan_name = col_str(res, 0, 0);
	sub->quantity = r->quantity;
	sub->amount_cents = col_int(res, 0, 1) * r->quantity;
	term_read(res, 0, 2, 7, &sub->life);
	sub->plan_renews = !strcmp(PQgetvalue(res, 0, 9), "auto");
	sub->duration_days = term_days(sub->life.term_unit, sub->life.term_count);
	after = (struct seat_counts){col_int(res, 0, 3), col_int(res, 0, 4), col_int(res, 0, 5)};
	PQclear(res);
	before = store_counts_before(after, -r->quantity, r->quantity);
	sub->hold_deadline = r->deadline;
	sub->created_at = sub->updated_at = now;
	buyer.id = customer_id;
	store_hold_fill(sub, r);
	if (run(q(s, ins, e, "ttttiiiiiittititt", sub->id, r->plan_id, customer_id, r->claim.key, sub->amount_cents,
		  sub->duration_days, r->deadline, now, now, r->quantity, sub->secret_hash, sub->attempt_key,
		  sub->attempt_until, sub->previous_id, sub->life.term_count, period_unit_name(sub->life.term_unit),
		  sub->life.term_zone)) < 0 ||
	    events_put(s, &buyer, now, r->plan_id, r->events, r->nevents, &before, &after, e))
		return -1;
	if (r->reply) {
		struct reply done = r->reply(sub, r->reply_arg);
		n = run(q(s, key_done, e, "itt", (int64_t)done.status, done.body, r->claim.key));
		free(done.body);
		if (n < 0)
			return -1;
	}
	x->out->result = HOLD_TAKEN;
	return 0;
}

static int pg_hold(struct store *st, const struct hold_req *r, const struct actor *a, struct hold_out *out,
		   struct err *e)
{
	struct hold_arg x = {r, a, out};
	int rc;

	memset(out, 0, sizeof(*out));
	rc = tx(PG(st), WRITE, hold_tx, &x, e);
	if (rc)
		subscription_clear(&out->sub);
	if (rc < 0)
		hold_out_clear(out);
	return rc < 0 ? -1 : 0;
}

#define PAY_COLS "id, idem_key, kind, status, decline_code, subscription_id, amount_cents, created_at"

static int payment_put(struct pg *s, const struct payment *p, struct err *e)
{
	static const char ins[] = "INSERT INTO payments (" PAY_COLS ") VALUES ($1,$2,$3,$4,$5,$6,$7,$8)"
				  " ON CONFLICT DO NOTHING";

	return run(q(s, ins, e, "ttttttii", p->id, p->idem_key, p->kind, p->status, p->decline_code,
		     p->subscription_id, p->amount_cents, p->created_at));
}

struct transition_arg {
	const struct transition *t;
	const struct actor *a;
	struct transition_out *out;
};

/* One move of a transition, in the caller's transaction: 1 moved, 0 its condition did not
 * hold (nothing written by it), -1 error. */
static int move_one(struct pg *s, const struct transition *t, const struct actor *a, struct err *e)
{
	static const char move[] =
		"UPDATE subscriptions SET status = $1, updated_at = $2, payment_id = coalesce($3, payment_id),"
		" start_at = coalesce($4::bigint, start_at), end_at = coalesce($5::bigint, end_at),"
		" token_hash = coalesce($6, token_hash), attempt_key = CASE WHEN $11::bigint = 1 THEN '' ELSE attempt_key END,"
		" secret_hash = coalesce($18::text, secret_hash),"
		" attempt_until = CASE WHEN $19::bigint = 1 THEN 0 ELSE attempt_until END"
		" WHERE id = $7 AND status = $8 AND ($9::bigint IS NULL OR hold_deadline > $9::bigint)"
		" AND ($10::bigint IS NULL OR hold_deadline <= $10::bigint) AND ($12::text IS NULL OR attempt_key = $12)"
		" AND ($13::bigint = 0 OR (end_at = $14::bigint AND next_attempt_at = $15::bigint"
		"      AND cancel_at_period_end = $16::boolean AND payment_method = $17))"
		" AND ($18::text IS NULL OR secret_hash = '')"
		" RETURNING plan_id, idem_key, quantity";
	static const char life[] =
		"UPDATE subscriptions SET term_unit = $1, term_count = $2, term_zone = $3, anchor_at = $4,"
		" anchor_index = $5, period_index = $6, period_start = $7, cancel_at_period_end = $8::boolean,"
		" cancellation_reason = $9, ended_at = $10, next_attempt_at = $11, attempts = $12, payment_method = $13,"
		" period_payment = $14 WHERE id = $15";
	const struct sub_life *l = t->life.set;
	static const char entry[] =
		"UPDATE waitlist SET status = $1, updated_at = $2 WHERE session_id = $3 AND status = 'offered'";
	struct seat_counts before, after;
	char plan_id[ID_LEN + 1], key[UUID_LEN + 1];
	int64_t dleft, dheld, waiting = 0;
	PGresult *r;

	if (!(r = q(s, move, e, "titIItttIIitiiittti", t->to, t->now, t->payment_id, t->start_at, t->end_at, t->token_hash,
		    t->sub_id, t->from, t->live_after, t->due_by, (int64_t)t->attempt_end, t->attempt,
		    (int64_t)t->life.check, t->life.end_at, t->life.next_attempt_at,
		    t->life.cancel_at_period_end ? "true" : "false", t->life.payment_method ? t->life.payment_method : "",
		    t->secret_hash, (int64_t)t->attempt_release)))
		return -1;
	if (PQntuples(r) == 0) {
		PQclear(r);
		return 0;
	}
	col_copy(r, 0, 0, plan_id, sizeof(plan_id));
	col_copy(r, 0, 1, key, sizeof(key));
	dleft = t->dleft * col_int(r, 0, 2);
	dheld = t->dheld * col_int(r, 0, 2);
	PQclear(r);
	if (seats_move(s, plan_id, dleft, dheld, t->now, &after, &waiting, e))
		return -1;
	before = store_counts_before(after, dleft, dheld);
	if (l && run(q(s, life, e, "titiiiittiiittt", period_unit_name(l->term_unit), l->term_count, l->term_zone,
		       l->anchor_at, l->anchor_index, l->period_index, l->period_start,
		       l->cancel_at_period_end ? "true" : "false", l->cancellation_reason, l->ended_at,
		       l->next_attempt_at, l->attempts, l->payment_method, l->period_payment, t->sub_id)) < 0)
		return -1;
	if (t->entry_to && run(q(s, entry, e, "tit", t->entry_to, t->now, t->sub_id)) < 0)
		return -1;
	if (t->payment && payment_put(s, t->payment, e) != 1) {
		if (e->kind == ERR_NONE)
			err_set(e, ERR_INTERNAL, NULL, "a %s payment exists for key %s", t->payment->kind, key);
		return -1;
	}
	if (events_put(s, a, t->now, plan_id, t->events, t->nevents, &before, &after, e))
		return -1;
	if (t->reply && run(q(s, KEY_DONE_SQL, e, "itt", (int64_t)t->reply->status, t->reply->body,
			      t->reply_key ? t->reply_key : key)) < 0)
		return -1;
	if (dleft > 0 && waiting > 0 && offers_make(s, plan_id, t->now, a, e))
		return -1;
	return 1;
}

static int transition_tx(struct pg *s, void *arg, struct err *e)
{
	struct transition_arg *x = arg;
	const struct transition *t = x->t;
	bool found;
	int n, also = 1;

	transition_out_clear(x->out);
	if ((n = move_one(s, t, x->a, e)) == 1 && t->also)
		also = move_one(s, t->also, x->a, e);
	if (n < 0 || also < 0)
		return -1;
	if (n == 0) {
		if (sub_find(s, t->sub_id, &x->out->sub, &found, e))
			return -1;
		x->out->result = found ? MOVE_REFUSED : MOVE_NOT_FOUND;
		return 1;
	}
	if (also == 0) {
		x->out->result = MOVE_ALSO_REFUSED;  /* its facts are read once the unit is undone */
		return 1;
	}
	if (sub_find(s, t->sub_id, &x->out->sub, &found, e))
		return -1;
	x->out->result = MOVED;
	return 0;
}

static int pg_transition(struct store *st, const struct transition *t, const struct actor *a,
			 struct transition_out *out, struct err *e)
{
	struct transition_arg x = {t, a, out};
	int rc;

	memset(out, 0, sizeof(*out));
	bool found;

	rc = tx(PG(st), WRITE, transition_tx, &x, e);
	if (rc < 0)
		transition_out_clear(out);
	else if (out->result == MOVE_ALSO_REFUSED && sub_find(PG(st), t->sub_id, &out->sub, &found, e))
		return -1;
	return rc < 0 ? -1 : 0;
}

static int pg_attempt_take(struct store *st, const char *sub_id, const char *expect, const char *key, int64_t now,
			   int64_t until, bool *taken, struct err *e)
{
	static const char sql[] =
		"UPDATE subscriptions SET attempt_key = $1, attempt_until = $2"
		" WHERE id = $3 AND status = 'pending' AND hold_deadline > $4 AND attempt_key = $5"
		" AND ($6::bigint = 0 OR attempt_until <= $4)";
	int n;

	if (connected(PG(st), e))
		return -1;
	n = run(q(PG(st), sql, e, "tititi", key, until, sub_id, now, expect,
		  (int64_t)store_attempt_needs_lapse(expect, key)));
	*taken = n > 0;
	return n < 0 ? -1 : 0;
}

struct payment_arg {
	const struct payment *p;
	const struct event_spec *ev;
	size_t nev;
	const struct actor *a;
};

static int payment_tx(struct pg *s, void *arg, struct err *e)
{
	static const char plan[] = "SELECT plan_id FROM subscriptions WHERE id = $1";
	struct payment_arg *x = arg;
	char plan_id[ID_LEN + 1] = "";
	PGresult *r;
	int n = payment_put(s, x->p, e);

	if (n <= 0)
		return n < 0 ? -1 : 1;
	if (!(r = q(s, plan, e, "t", x->p->subscription_id)))
		return -1;
	if (PQntuples(r) == 1)
		col_copy(r, 0, 0, plan_id, sizeof(plan_id));
	PQclear(r);
	return events_put(s, x->a, x->p->created_at, plan_id, x->ev, x->nev, NULL, NULL, e);
}

static int pg_payment_record(struct store *st, const struct payment *p, const struct event_spec *ev, size_t nev,
			     const struct actor *a, bool *existed, struct err *e)
{
	struct payment_arg x = {p, ev, nev, a};
	int rc = tx(PG(st), WRITE, payment_tx, &x, e);

	*existed = rc == 1;
	return rc < 0 ? -1 : 0;
}

static int pg_sub_list(struct store *st, const char *customer_id, const char *status, const struct seq_page *pg,
		       struct subscription **out, size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT " SUB_COLS " FROM subscriptions s JOIN plans p ON p.id = s.plan_id"
		" WHERE s.customer_id = $1 AND ($2::text IS NULL OR s.status = $2) AND s.seq < $3"
		" ORDER BY s.seq DESC LIMIT $4";
	PGresult *r;

	*out = NULL;
	*n = 0;
	if (connected(PG(st), e) || !(r = q(PG(st), sql, e, "ttii", customer_id, status,
					  pg->before_seq ? pg->before_seq : INT64_MAX, (int64_t)pg->limit)))
		return -1;
	*out = xcalloc((size_t)PQntuples(r) + 1, sizeof(**out));
	for (int i = 0; i < PQntuples(r); i++)
		sub_read(r, i, &(*out)[(*n)++]);
	PQclear(r);
	return 0;
}

#define AUDIT_COLS \
	"id, at, action, actor_type, actor_id, resource_type, resource_id, plan_id, b_total, b_left," \
	" b_held, a_total, a_left, a_held, detail, trace_id, ip, seq"

static void audit_read(PGresult *r, int i, struct audit_event *a)
{
	col_copy(r, i, 0, a->id, sizeof(a->id));
	a->at = col_int(r, i, 1);
	col_copy(r, i, 2, a->action, sizeof(a->action));
	col_copy(r, i, 3, a->actor_type, sizeof(a->actor_type));
	col_copy(r, i, 4, a->actor_id, sizeof(a->actor_id));
	col_copy(r, i, 5, a->resource_type, sizeof(a->resource_type));
	col_copy(r, i, 6, a->resource_id, sizeof(a->resource_id));
	col_copy(r, i, 7, a->plan_id, sizeof(a->plan_id));
	if ((a->has_before = !PQgetisnull(r, i, 9)))
		a->before = (struct seat_counts){col_int(r, i, 8), col_int(r, i, 9), col_int(r, i, 10)};
	if ((a->has_after = !PQgetisnull(r, i, 12)))
		a->after = (struct seat_counts){col_int(r, i, 11), col_int(r, i, 12), col_int(r, i, 13)};
	a->detail = PQgetisnull(r, i, 14) ? NULL : col_str(r, i, 14);
	col_copy(r, i, 15, a->trace_id, sizeof(a->trace_id));
	col_copy(r, i, 16, a->ip, sizeof(a->ip));
	a->seq = col_int(r, i, 17);
}

static int pg_audit_list(struct store *st, const struct audit_filter *f, const struct seq_page *pg,
			 struct audit_event **out, size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT " AUDIT_COLS " FROM audit_events"
		" WHERE ($1::text IS NULL OR plan_id = $1) AND ($2::text IS NULL OR trace_id = $2)"
		" AND ($3::text IS NULL OR action = $3) AND seq < $4 ORDER BY seq DESC LIMIT $5";
	PGresult *r;

	*out = NULL;
	*n = 0;
	if (connected(PG(st), e) || !(r = q(PG(st), sql, e, "tttii", f->plan_id, f->trace_id, f->action,
					  pg->before_seq ? pg->before_seq : INT64_MAX, (int64_t)pg->limit)))
		return -1;
	*out = xcalloc((size_t)PQntuples(r) + 1, sizeof(**out));
	for (int i = 0; i < PQntuples(r); i++)
		audit_read(r, i, &(*out)[(*n)++]);
	PQclear(r);
	return 0;
}

/* The event feed. A BIGSERIAL is drawn as a row is written, not as its transaction commits: a
 * unit that draws 7 may commit after one that drew 8, so seq alone would let a poller that saw
 * 8 skip 7 for ever. The feed's positions (pos) are therefore given after commit, by one
 * sequencer at a time (a transaction-scoped advisory lock; whoever reads the feed, or the
 * webhook sender, runs it first), to every committed event that has none, following the
 * highest position given: no gap, and a reader sees a position only once every lower one is
 * committed. Their order keeps each transaction's events together and orders transactions
 * by the last seq each drew. Every unit writes its events after taking its last row lock, so
 * of two units that touch one row (one plan), the later one's events are drawn after the
 * earlier one committed: they come after its events, and a plan's seat counts read in feed
 * order follow one another. Units that share no row may come in either order, as they may
 * in any serial order of them. */
static int feed_position_tx(struct pg *s, void *arg, struct err *e)
{
	static const char place[] =
		"UPDATE audit_events a SET pos = h.top + o.n"
		" FROM (SELECT seq, row_number() OVER (ORDER BY k, seq) n FROM"
		"  (SELECT seq, max(seq) OVER (PARTITION BY txid) k FROM audit_events WHERE pos IS NULL) x) o,"
		" (SELECT coalesce(max(pos), 0) top FROM audit_events) h WHERE a.seq = o.seq";
	static const char lock[] = "SELECT pg_try_advisory_xact_lock(7261032)";
	PGresult *r;
	bool mine;

	(void)arg;
	/* Taken in a statement of its own, so that the next one's snapshot sees what the last
	 * sequencer placed. Someone else placing now: their positions appear when they commit. */
	if (!(r = q(s, lock, e, "")))
		return -1;
	mine = !strcmp(PQgetvalue(r, 0, 0), "t");
	PQclear(r);
	if (!mine)
		return 1;
	return run(q(s, place, e, "")) < 0 ? -1 : 0;
}

static int pg_feed_read(struct store *st, int64_t after, const char *type, int limit, struct audit_event **out,
			size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT " AUDIT_COLS ", pos FROM audit_events WHERE pos > $1 AND ($2::text IS NULL OR action = $2)"
		" ORDER BY pos LIMIT $3";
	PGresult *r;

	*out = NULL;
	*n = 0;
	if (tx(PG(st), WRITE, feed_position_tx, NULL, e) < 0 ||
	    !(r = q(PG(st), sql, e, "iti", after, type, (int64_t)limit)))
		return -1;
	*out = xcalloc((size_t)PQntuples(r) + 1, sizeof(**out));
	for (int i = 0; i < PQntuples(r); i++) {
		audit_read(r, i, &(*out)[(*n)++]);
		(*out)[i].seq = col_int(r, i, 18);
	}
	PQclear(r);
	return 0;
}

/* --- waiting lists ------------------------------------------------------------------------ */

struct join_arg {
	const struct join_req *r;
	const struct actor *a;
	struct join_out *out;
};

static int join_tx(struct pg *s, void *arg, struct err *e)
{
	static const char by_id[] = "SELECT id FROM customers WHERE id = $1";
	static const char by_email[] = "SELECT id FROM customers WHERE lower(email) = lower($1)";
	static const char take[] =
		"UPDATE plans SET waiting = waiting + 1, updated_at = $2"
		" WHERE id = $3 AND status = 'active' AND waitlist_enabled AND max_per_order >= $1"
		" AND (subscriptions_left < $1 OR waiting > 0)"
		" RETURNING waiting, max_per_customer, total_capacity, subscriptions_left, subscriptions_held";
	static const char why[] =
		"SELECT status, waitlist_enabled, max_per_order, subscriptions_left FROM plans WHERE id = $1";
	/* read after the plan's row is ours: every join and hold of the plan before is seen */
	static const char owned[] =
		"SELECT (SELECT coalesce(sum(quantity), 0) FROM subscriptions WHERE customer_id = $1 AND plan_id = $2"
		"  AND status IN ('pending', 'active', 'past_due')) + (SELECT coalesce(sum(quantity), 0) FROM waitlist"
		"  WHERE customer_id = $1 AND plan_id = $2 AND status = 'waiting')";
	static const char live[] =
		"SELECT 1 FROM waitlist WHERE plan_id = $1 AND customer_id = $2 AND status IN ('waiting', 'offered')";
	static const char ins[] =
		"INSERT INTO waitlist (id, plan_id, customer_id, quantity, status, token_hash, session_id, offer_key,"
		" offer_secret, secret_hash, offer_ttl_ms, created_at, updated_at)"
		" VALUES ($1, $2, $3, $4, 'waiting', $5, $6, $7, $8, $9, $10, $11, $12) RETURNING seq";
	struct join_arg *x = arg;
	const struct join_req *r = x->r;
	const struct waitlist_entry *w = r->entry;
	struct join_out *out = x->out;
	struct seat_counts counts;
	struct actor buyer = *x->a;
	char customer_id[ID_LEN + 1];
	int64_t limit, position;
	PGresult *res;
	int n;

	memset(out, 0, sizeof(*out));
	if (!r->customer_id && run(q(s, CUSTOMER_INSERT, e, "ttti", r->customer->id, r->customer->email,
				     r->customer->name, r->customer->created_at)) < 0)
		return -1;
	if (!(res = r->customer_id ? q(s, by_id, e, "t", r->customer_id) : q(s, by_email, e, "t", r->customer->email)))
		return -1;
	if (PQntuples(res) == 0) {
		PQclear(res);
		out->result = JOIN_NO_CUSTOMER;
		return 1;
	}
	col_copy(res, 0, 0, customer_id, sizeof(customer_id));
	PQclear(res);
	if (!(res = q(s, take, e, "iit", w->quantity, w->created_at, w->plan_id)))
		return -1;
	if (PQntuples(res) == 0) {
		PQclear(res);
		if (!(res = q(s, why, e, "t", w->plan_id)))
			return -1;
		n = PQntuples(res);
		if (n == 1) {
			out->limit = col_int(res, 0, 2);
			out->available = col_int(res, 0, 3);
		}
		out->result = n == 0 ? JOIN_NO_PLAN : strcmp(PQgetvalue(res, 0, 0), "active") ? JOIN_PLAN_INACTIVE :
			strcmp(PQgetvalue(res, 0, 1), "t") ? JOIN_DISABLED :
			w->quantity > out->limit ? JOIN_ORDER_LIMIT : JOIN_SEATS_AVAILABLE;
		PQclear(res);
		return 1;
	}
	position = col_int(res, 0, 0);
	limit = col_int(res, 0, 1);
	counts = (struct seat_counts){col_int(res, 0, 2), col_int(res, 0, 3), col_int(res, 0, 4)};
	PQclear(res);
	if (limit > 0) {
		if (!(res = q(s, owned, e, "tt", customer_id, w->plan_id)))
			return -1;
		out->held = col_int(res, 0, 0);
		PQclear(res);
		if (out->held + w->quantity > limit) {
			out->limit = limit;
			out->result = JOIN_CUSTOMER_LIMIT;
			return 1;
		}
	}
	if (!(res = q(s, live, e, "tt", w->plan_id, customer_id)))
		return -1;
	n = PQntuples(res);
	PQclear(res);
	if (n) {
		out->result = JOIN_ALREADY_WAITING;
		return 1;
	}
	if (!(res = q(s, ins, e, "tttitttttiii", w->id, w->plan_id, customer_id, w->quantity, w->token_hash,
		      w->session_id, w->offer_key, w->offer_secret, w->secret_hash, w->offer_ttl_ms, w->created_at,
		      w->created_at)))
		return -1;
	out->entry = *w;
	out->entry.seq = col_int(res, 0, 0);
	PQclear(res);
	out->entry.position = position;
	snprintf(out->entry.customer_id, sizeof(out->entry.customer_id), "%s", customer_id);
	snprintf(out->entry.status, sizeof(out->entry.status), "waiting");
	buyer.id = customer_id;
	if (events_put(s, &buyer, w->created_at, w->plan_id, r->events, r->nevents, &counts, &counts, e))
		return -1;
	out->result = JOIN_DONE;
	return 0;
}

static int pg_waitlist_join(struct store *st, const struct join_req *r, const struct actor *a, struct join_out *out,
			    struct err *e)
{
	struct join_arg x = {r, a, out};
	int rc = tx(PG(st), WRITE, join_tx, &x, e);

	if (rc < 0 && is_unique_violation(e)) {
		/* two joins of one customer at once: the live-entry index decided */
		err_clear(e);
		memset(out, 0, sizeof(*out));
		out->result = JOIN_ALREADY_WAITING;
		rc = 1;
	}
	return rc < 0 ? -1 : 0;
}

static int pg_entry_get(struct store *st, const char *id, struct waitlist_entry *out, bool *found, struct err *e)
{
	static const char sql[] = "SELECT " ENTRY_COLS " FROM waitlist w WHERE w.id = $1";
	PGresult *r;

	if (connected(PG(st), e) || !(r = q(PG(st), sql, e, "t", id)))
		return -1;
	if ((*found = PQntuples(r) == 1))
		entry_read(r, 0, out);
	PQclear(r);
	return 0;
}

static int pg_waitlist_list(struct store *st, const char *plan_id, int64_t after, int limit,
			    struct waitlist_entry **out, size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT " ENTRY_COLS " FROM waitlist w WHERE w.plan_id = $1 AND w.seq > $2 ORDER BY w.seq LIMIT $3";
	PGresult *r;

	*out = NULL;
	*n = 0;
	if (connected(PG(st), e) || !(r = q(PG(st), sql, e, "tii", plan_id, after, (int64_t)limit)))
		return -1;
	*out = xcalloc((size_t)PQntuples(r) + 1, sizeof(**out));
	for (int i = 0; i < PQntuples(r); i++)
		entry_read(r, i, &(*out)[(*n)++]);
	PQclear(r);
	return 0;
}

static int pg_customer_entries(struct store *st, const char *customer_id, int limit, struct waitlist_entry **out,
			       size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT " ENTRY_COLS " FROM waitlist w WHERE w.customer_id = $1 ORDER BY w.created_at DESC, w.id DESC LIMIT $2";
	PGresult *r;

	*out = NULL;
	*n = 0;
	if (connected(PG(st), e) || !(r = q(PG(st), sql, e, "ti", customer_id, (int64_t)limit)))
		return -1;
	*out = xcalloc((size_t)PQntuples(r) + 1, sizeof(**out));
	for (int i = 0; i < PQntuples(r); i++)
		entry_read(r, i, &(*out)[(*n)++]);
	PQclear(r);
	return 0;
}

struct leave_arg {
	const char *id;
	int64_t now;
	const struct event_spec *ev;
	size_t nev;
	const struct actor *a;
	bool *moved;
};

static int leave_tx(struct pg *s, void *arg, struct err *e)
{
	static const char plan_of[] = "SELECT plan_id FROM waitlist WHERE id = $1";
	static const char lock[] = "SELECT 1 FROM plans WHERE id = $1 FOR UPDATE";
	static const char leave[] =
		"UPDATE waitlist SET status = 'left', updated_at = $1 WHERE id = $2 AND status = 'waiting'";
	static const char line[] =
		"UPDATE plans SET waiting = waiting - 1, updated_at = $1 WHERE id = $2"
		" RETURNING total_capacity, subscriptions_left, subscriptions_held";
	struct leave_arg *x = arg;
	struct seat_counts counts;
	char plan_id[ID_LEN + 1];
	PGresult *r;
	int n;

	if (!(r = q(s, plan_of, e, "t", x->id)))
		return -1;
	if (PQntuples(r) == 0) {
		PQclear(r);
		return 0;
	}
	col_copy(r, 0, 0, plan_id, sizeof(plan_id));
	PQclear(r);
	/* The plan's row first, as every unit that changes its line takes it; the entry is read
	 * after it is ours (a statement of its own sees what committed meanwhile). */
	if (run(q(s, lock, e, "t", plan_id)) < 0 || (n = run(q(s, leave, e, "it", x->now, x->id))) < 0)
		return -1;
	if (n == 0)
		return 0;
	if (!(r = q(s, line, e, "it", x->now, plan_id)))
		return -1;
	counts = (struct seat_counts){col_int(r, 0, 0), col_int(r, 0, 1), col_int(r, 0, 2)};
	PQclear(r);
	if (events_put(s, x->a, x->now, plan_id, x->ev, x->nev, &counts, &counts, e) ||
	    offers_make(s, plan_id, x->now, x->a, e))
		return -1;
	*x->moved = true;
	return 0;
}

static int pg_waitlist_leave(struct store *st, const char *id, int64_t now, const struct event_spec *ev, size_t nev,
			     const struct actor *a, bool *moved, struct waitlist_entry *out, bool *found,
			     struct err *e)
{
	struct leave_arg x = {id, now, ev, nev, a, moved};

	*moved = false;
	if (tx(PG(st), WRITE, leave_tx, &x, e) < 0)
		return -1;
	return pg_entry_get(st, id, out, found, e);
}

/* --- webhooks ----------------------------------------------------------------------------- */

static int pg_webhook_create(struct store *st, struct webhook *w, struct err *e)
{
	/* the feed placed first, so that the cursor is its last position as the endpoint is made */
	static const char sql[] =
		"INSERT INTO webhook_endpoints (id, url, events, description, secret, status, created_at, cursor)"
		" SELECT $1, $2, $3, $4, $5, $6, $7, coalesce(max(pos), 0) FROM audit_events RETURNING cursor";
	PGresult *r;

	if (tx(PG(st), WRITE, feed_position_tx, NULL, e) < 0 ||
	    !(r = q(PG(st), sql, e, "tttttti", w->id, w->url, w->events, w->description, w->secret, w->status,
		    w->created_at)))
		return -1;
	w->cursor = col_int(r, 0, 0);
	PQclear(r);
	return 0;
}

static int pg_webhook_list(struct store *st, struct webhook **out, size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT id, url, events, description, secret, status, created_at, cursor FROM webhook_endpoints"
		" ORDER BY created_at, id LIMIT $1";
	PGresult *r;

	*out = NULL;
	*n = 0;
	if (connected(PG(st), e) || !(r = q(PG(st), sql, e, "i", (int64_t)WEBHOOKS_MAX)))
		return -1;
	*out = xcalloc((size_t)PQntuples(r) + 1, sizeof(**out));
	for (int i = 0; i < PQntuples(r); i++) {
		struct webhook *w = &(*out)[(*n)++];
		col_copy(r, i, 0, w->id, sizeof(w->id));
		w->url = col_str(r, i, 1);
		w->events = col_str(r, i, 2);
		w->description = col_str(r, i, 3);
		col_copy(r, i, 4, w->secret, sizeof(w->secret));
		col_copy(r, i, 5, w->status, sizeof(w->status));
		w->created_at = col_int(r, i, 6);
		w->cursor = col_int(r, i, 7);
	}
	PQclear(r);
	return 0;
}

struct webhook_delete_arg {
	const char *id;
	bool *found;
};

static int webhook_delete_tx(struct pg *s, void *arg, struct err *e)
{
	struct webhook_delete_arg *x = arg;
	int n;

	if (run(q(s, "DELETE FROM webhook_deliveries WHERE endpoint_id = $1", e, "t", x->id)) < 0 ||
	    (n = run(q(s, "DELETE FROM webhook_endpoints WHERE id = $1", e, "t", x->id))) < 0)
		return -1;
	*x->found = n == 1;
	return 0;
}

static int pg_webhook_delete(struct store *st, const char *id, bool *found, struct err *e)
{
	struct webhook_delete_arg x = {id, found};

	*found = false;
	return tx(PG(st), WRITE, webhook_delete_tx, &x, e) < 0 ? -1 : 0;
}

struct webhook_advance_arg {
	const char *endpoint_id;
	const struct delivery *d;
	int64_t cursor;
	bool disable;
};

static int webhook_advance_tx(struct pg *s, void *arg, struct err *e)
{
	static const char keep[] =
		"INSERT INTO webhook_deliveries (endpoint_id, seq, event_id, attempts, last_status, last_error, state,"
		" first_attempt_at, next_attempt_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)"
		" ON CONFLICT (endpoint_id, seq) DO UPDATE SET attempts = excluded.attempts,"
		" last_status = excluded.last_status, last_error = excluded.last_error, state = excluded.state,"
		" next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at";
	static const char move[] =
		"UPDATE webhook_endpoints SET cursor = greatest(cursor, $1),"
		" status = CASE WHEN $2::bigint = 1 THEN 'disabled' ELSE status END WHERE id = $3";
	struct webhook_advance_arg *x = arg;
	const struct delivery *d = x->d;

	if (d && run(q(s, keep, e, "titiittiii", x->endpoint_id, d->seq, d->event_id, (int64_t)d->attempts,
		       (int64_t)d->last_status, d->last_error, d->state, d->first_attempt_at, d->next_attempt_at,
		       d->updated_at)) < 0)
		return -1;
	return run(q(s, move, e, "iit", x->cursor, (int64_t)x->disable, x->endpoint_id)) < 0 ? -1 : 0;
}

static int pg_webhook_advance(struct store *st, const char *endpoint_id, const struct delivery *d, int64_t cursor,
			      bool disable, struct err *e)
{
	struct webhook_advance_arg x = {endpoint_id, d, cursor, disable};

	return tx(PG(st), WRITE, webhook_advance_tx, &x, e) < 0 ? -1 : 0;
}

static int pg_delivery_list(struct store *st, const char *endpoint_id, const struct seq_page *pg,
			    struct delivery **out, size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT endpoint_id, seq, event_id, attempts, last_status, last_error, state, first_attempt_at,"
		" next_attempt_at, updated_at FROM webhook_deliveries WHERE endpoint_id = $1 AND seq < $2"
		" ORDER BY seq DESC LIMIT $3";
	PGresult *r;

	*out = NULL;
	*n = 0;
	if (connected(PG(st), e) ||
	    !(r = q(PG(st), sql, e, "tii", endpoint_id, pg->before_seq ? pg->before_seq : INT64_MAX, (int64_t)pg->limit)))
		return -1;
	*out = xcalloc((size_t)PQntuples(r) + 1, sizeof(**out));
	for (int i = 0; i < PQntuples(r); i++) {
		struct delivery *d = &(*out)[(*n)++];
		col_copy(r, i, 0, d->endpoint_id, sizeof(d->endpoint_id));
		d->seq = col_int(r, i, 1);
		col_copy(r, i, 2, d->event_id, sizeof(d->event_id));
		d->attempts = (int)col_int(r, i, 3);
		d->last_status = (int)col_int(r, i, 4);
		col_copy(r, i, 5, d->last_error, sizeof(d->last_error));
		col_copy(r, i, 6, d->state, sizeof(d->state));
		d->first_attempt_at = col_int(r, i, 7);
		d->next_attempt_at = col_int(r, i, 8);
		d->updated_at = col_int(r, i, 9);
	}
	PQclear(r);
	return 0;
}

/* --- the outbox ---------------------------------------------------------------------------- */

#define MAIL_COLS                                                                                    \
	"m.id, m.kind, m.customer_id, m.event_id, m.data, m.secret, m.status, m.attempts,"          \
	" m.next_attempt_at, m.last_error, m.created_at, m.updated_at"

static void mail_read(PGresult *r, int i, struct mail *m)
{
	memset(m, 0, sizeof(*m));
	col_copy(r, i, 0, m->id, sizeof(m->id));
	col_copy(r, i, 1, m->kind, sizeof(m->kind));
	col_copy(r, i, 2, m->customer_id, sizeof(m->customer_id));
	col_copy(r, i, 3, m->event_id, sizeof(m->event_id));
	m->data = col_str(r, i, 4);
	m->secret = PQgetisnull(r, i, 5) ? NULL : col_str(r, i, 5);
	col_copy(r, i, 6, m->status, sizeof(m->status));
	m->attempts = (int)col_int(r, i, 7);
	m->next_attempt_at = col_int(r, i, 8);
	col_copy(r, i, 9, m->last_error, sizeof(m->last_error));
	m->created_at = col_int(r, i, 10);
	m->updated_at = col_int(r, i, 11);
}

/* The rows of r as mails into *out. */
static int mails_of(PGresult *r, struct mail **out, size_t *n)
{
	*out = xcalloc((size_t)PQntuples(r) + 1, sizeof(**out));
	for (int i = 0; i < PQntuples(r); i++)
		mail_read(r, i, &(*out)[(*n)++]);
	PQclear(r);
	return 0;
}

static int pg_mail_due(struct store *st, int64_t now, int limit, struct mail **out, size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT " MAIL_COLS " FROM mail m WHERE m.status = 'queued' AND m.next_attempt_at <= $1"
		" ORDER BY m.next_attempt_at, m.id LIMIT $2";
	PGresult *r;

	*out = NULL;
	*n = 0;
	if (connected(PG(st), e) || !(r = q(PG(st), sql, e, "ii", now, (int64_t)limit)))
		return -1;
	return mails_of(r, out, n);
}

static int pg_mail_list(struct store *st, const char *status, const struct seq_page *pg, struct mail **out,
			size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT " MAIL_COLS " FROM mail m WHERE ($1::text IS NULL OR m.status = $1::text)"
		" AND ($2::bigint = 0 OR (m.created_at, m.id) < ($2::bigint, $3::text))"
		" ORDER BY m.created_at DESC, m.id DESC LIMIT $4";
	PGresult *r;

	*out = NULL;
	*n = 0;
	if (connected(PG(st), e) ||
	    !(r = q(PG(st), sql, e, "titi", status, pg->before_seq, pg->before_id, (int64_t)pg->limit)))
		return -1;
	return mails_of(r, out, n);
}

struct mail_mark_arg {
	const struct mail *m;
	int attempts;
	const struct event_spec *ev;
	size_t nev;
	const struct actor *a;
};

static int mail_mark_tx(struct pg *s, void *arg, struct err *e)
{
	static const char sql[] =
		"UPDATE mail SET status = $1, attempts = $2, next_attempt_at = $3, last_error = $4, updated_at = $5"
		" WHERE id = $6 AND status = 'queued' AND attempts = $7";
	struct mail_mark_arg *x = arg;
	int64_t now = now_ms();
	int n = run(q(s, sql, e, "tiititi", x->m->status, (int64_t)x->m->attempts, x->m->next_attempt_at,
		      x->m->last_error, now, x->m->id, (int64_t)x->attempts));

	if (n < 0)
		return -1;
	if (n == 0)
		return 1;  /* moved on meanwhile: nothing to commit */
	return events_put(s, x->a, now, NULL, x->ev, x->nev, NULL, NULL, e) ? -1 : 0;
}

static int pg_mail_mark(struct store *st, const struct mail *m, int attempts, const struct event_spec *ev, size_t nev,
			const struct actor *a, bool *moved, struct err *e)
{
	struct mail_mark_arg x = {m, attempts, ev, nev, a};
	int rc = tx(PG(st), WRITE, mail_mark_tx, &x, e);

	*moved = rc == 0;
	return rc < 0 ? -1 : 0;
}

/* --- the reaper's facts ------------------------------------------------------------------- */

static int pg_lease_take(struct store *st, const char *name, const char *holder, int64_t now, int64_t until,
			 bool *taken, struct err *e)
{
	static const char sql[] =
		"INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE"
		" SET holder = $2, until = $3 WHERE leases.until <= $4 OR leases.holder = $2";
	int n;

	if (connected(PG(st), e) || (n = run(q(PG(st), sql, e, "ttii", name, holder, until, now))) < 0)
		return -1;
	*taken = n == 1;
	return 0;
}

static int subs_read(struct pg *s, const char *sql, int64_t now, int limit, struct subscription **out, size_t *n,
		     struct err *e)
{
	PGresult *r;

	*out = NULL;
	*n = 0;
	if (connected(s, e) || !(r = q(s, sql, e, "ii", now, (int64_t)limit)))
		return -1;
	*out = xcalloc((size_t)PQntuples(r) + 1, sizeof(**out));
	for (int i = 0; i < PQntuples(r); i++)
		sub_read(r, i, &(*out)[(*n)++]);
	PQclear(r);
	return 0;
}

static int pg_subs_due(struct store *st, int64_t now, int limit, struct subscription **out, size_t *n, struct err *e)
{
	/* each branch by its own index, at most limit rows each, then merged by when it is due */
	static const char sql[] =
		"(SELECT " SUB_COLS ", s.end_at AS due FROM subscriptions s JOIN plans p ON p.id = s.plan_id"
		" WHERE s.status = 'active' AND s.end_at <= $1 ORDER BY s.end_at LIMIT $2)"
		" UNION ALL (SELECT " SUB_COLS ", s.next_attempt_at AS due FROM subscriptions s"
		" JOIN plans p ON p.id = s.plan_id WHERE s.status = 'past_due' AND s.next_attempt_at <= $1"
		" ORDER BY s.next_attempt_at LIMIT $2) ORDER BY due LIMIT $2";

	return subs_read(PG(st), sql, now, limit, out, n, e);
}

static int pg_subs_to_remind(struct store *st, int64_t by, int limit, struct subscription **out, size_t *n,
			     struct err *e)
{
	static const char sql[] =
		"SELECT " SUB_COLS " FROM subscriptions s JOIN plans p ON p.id = s.plan_id WHERE s.status = 'active'"
		" AND s.end_at <= $1 AND s.reminded_end_at <> s.end_at ORDER BY s.end_at LIMIT $2";

	return subs_read(PG(st), sql, by, limit, out, n, e);
}

struct remind_arg {
	const char *sub_id;
	int64_t end_at;
	const struct event_spec *ev;
	size_t nev;
	const struct actor *a;
};

static int remind_tx(struct pg *s, void *arg, struct err *e)
{
	static const char sql[] =
		"UPDATE subscriptions SET reminded_end_at = $1 WHERE id = $2 AND status = 'active' AND end_at = $1"
		" AND reminded_end_at <> $1 RETURNING plan_id";
	struct remind_arg *x = arg;
	char plan_id[ID_LEN + 1];
	PGresult *r = q(s, sql, e, "it", x->end_at, x->sub_id);

	if (!r)
		return -1;
	if (PQntuples(r) == 0) {
		PQclear(r);
		return 1;   /* reminded already, or moved on: nothing to commit */
	}
	col_copy(r, 0, 0, plan_id, sizeof(plan_id));
	PQclear(r);
	return events_put(s, x->a, now_ms(), plan_id, x->ev, x->nev, NULL, NULL, e) ? -1 : 0;
}

static int pg_remind(struct store *st, const char *sub_id, int64_t end_at, const struct event_spec *ev, size_t nev,
		     const struct actor *a, bool *marked, struct err *e)
{
	struct remind_arg x = {sub_id, end_at, ev, nev, a};
	int rc = tx(PG(st), WRITE, remind_tx, &x, e);

	*marked = rc == 0;
	return rc < 0 ? -1 : 0;
}

static int pg_holds_overdue(struct store *st, int64_t now, int limit, struct subscription **out, size_t *n,
			    struct err *e)
{
	static const char sql[] = "SELECT " SUB_COLS " FROM subscriptions s JOIN plans p ON p.id = s.plan_id"
				  " WHERE s.status = 'pending' AND s.hold_deadline <= $1 ORDER BY s.hold_deadline LIMIT $2";

	return subs_read(PG(st), sql, now, limit, out, n, e);
}

static void payment_read(PGresult *r, int row, struct payment *p)
{
	memset(p, 0, sizeof(*p));
	col_copy(r, row, 0, p->id, sizeof(p->id));
	col_copy(r, row, 1, p->idem_key, sizeof(p->idem_key));
	col_copy(r, row, 2, p->kind, sizeof(p->kind));
	col_copy(r, row, 3, p->status, sizeof(p->status));
	col_copy(r, row, 4, p->decline_code, sizeof(p->decline_code));
	col_copy(r, row, 5, p->subscription_id, sizeof(p->subscription_id));
	p->amount_cents = col_int(r, row, 6);
	p->created_at = col_int(r, row, 7);
}

/* The payments a query of PAY_COLS with its limit as $1 finds, into a new array. */
static int payments_query(struct store *st, const char *sql, int limit, struct payment **out, size_t *n,
			  struct err *e)
{
	PGresult *r;

	*out = NULL;
	*n = 0;
	if (connected(PG(st), e) || !(r = q(PG(st), sql, e, "i", (int64_t)limit)))
		return -1;
	*out = xcalloc((size_t)PQntuples(r) + 1, sizeof(**out));
	for (int i = 0; i < PQntuples(r); i++)
		payment_read(r, i, &(*out)[(*n)++]);
	PQclear(r);
	return 0;
}

static int pg_customer_payments(struct store *st, const char *customer_id, int limit, struct payment **out,
				size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT p.id, p.idem_key, p.kind, p.status, p.decline_code, p.subscription_id, p.amount_cents, p.created_at"
		" FROM subscriptions s JOIN payments p ON p.subscription_id = s.id WHERE s.customer_id = $1"
		" AND p.kind IN ('charge', 'renewal', 'refund') AND (p.status IN ('succeeded', 'refunded') OR (p.status = 'authorized' AND s.status NOT IN ('pending', 'failed', 'expired')))"
		" ORDER BY p.created_at DESC, p.id DESC LIMIT $2";
	PGresult *r;

	*out = NULL;
	*n = 0;
	if (connected(PG(st), e) || !(r = q(PG(st), sql, e, "ti", customer_id, (int64_t)limit)))
		return -1;
	*out = xcalloc((size_t)PQntuples(r) + 1, sizeof(**out));
	for (int i = 0; i < PQntuples(r); i++)
		payment_read(r, i, &(*out)[(*n)++]);
	PQclear(r);
	return 0;
}

static int pg_payments_in(struct store *st, const char *status, int limit, struct payment **out, size_t *n,
			  struct err *e)
{
	/* each status its own statement, so that its partial index serves it */
	static const char pending[] =
		"SELECT " PAY_COLS " FROM payments WHERE status = 'pending' ORDER BY created_at LIMIT $1";
	static const char authorized[] =
		"SELECT " PAY_COLS " FROM payments WHERE status = 'authorized' ORDER BY created_at LIMIT $1";
	static const char late[] =
		"SELECT " PAY_COLS " FROM payments WHERE status = 'late' ORDER BY created_at LIMIT $1";
	static const char open[] =
		"SELECT " PAY_COLS " FROM payments WHERE status = 'open' ORDER BY created_at LIMIT $1";
	const char *sql = !strcmp(status, "pending") ? pending : !strcmp(status, "authorized") ? authorized :
			  !strcmp(status, "late") ? late : !strcmp(status, "open") ? open : NULL;

	if (!sql) {
		err_set(e, ERR_INTERNAL, NULL, "no payments are kept in status %s", status);
		return -1;
	}
	return payments_query(st, sql, limit, out, n, e);
}

struct mark_arg {
	const char *id, *from, *to;
	const struct event_spec *ev;
	size_t nev;
	const struct actor *a;
};

static int mark_tx(struct pg *s, void *arg, struct err *e)
{
	static const char sql[] =
		"UPDATE payments p SET status = $1 FROM subscriptions s"
		" WHERE p.id = $2 AND p.status = $3 AND s.id = p.subscription_id RETURNING s.plan_id";
	struct mark_arg *x = arg;
	char plan_id[ID_LEN + 1] = "";
	PGresult *r = q(s, sql, e, "ttt", x->to, x->id, x->from);

	if (!r)
		return -1;
	if (PQntuples(r) == 0) {
		PQclear(r);
		return 1;  /* not in `from`: nothing to commit */
	}
	col_copy(r, 0, 0, plan_id, sizeof(plan_id));
	PQclear(r);
	return events_put(s, x->a, now_ms(), plan_id, x->ev, x->nev, NULL, NULL, e) ? -1 : 0;
}

static int pg_payment_mark(struct store *st, const char *id, const char *from, const char *to,
			   const struct event_spec *ev, size_t nev, const struct actor *a, bool *moved, struct err *e)
{
	struct mark_arg x = {id, from, to, ev, nev, a};
	int rc = tx(PG(st), WRITE, mark_tx, &x, e);

	*moved = rc == 0;
	return rc < 0 ? -1 : 0;
}

static int pg_charges_unrefunded(struct store *st, int limit, struct payment **out, size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT " PAY_COLS " FROM payments c WHERE c.kind = 'charge' AND c.status = 'succeeded'"
		" AND EXISTS (SELECT 1 FROM subscriptions s WHERE s.id = c.subscription_id"
		"   AND (s.status IN ('failed', 'expired') OR (s.payment_id <> c.id AND s.attempt_key <> c.idem_key)))"
		" AND NOT EXISTS (SELECT 1 FROM payments r WHERE r.idem_key = c.idem_key AND r.kind = 'refund') LIMIT $1";

	return payments_query(st, sql, limit, out, n, e);
}

static int pg_keys_purge(struct store *st, int64_t before, int *n, struct err *e)
{
	static const char sql[] = "DELETE FROM idempotency_keys WHERE state IN ('done', 'started') AND created_at < $1";

	if (connected(PG(st), e) || (*n = run(q(PG(st), sql, e, "i", before))) < 0)
		return -1;
	return 0;
}

/* --- the snapshot for check ----------------------------------------------------------------- */

struct snap_arg {
	const struct snapshot_visitor *v;
};

static int snapshot_tx(struct pg *s, void *arg, struct err *e)
{
	/* one pass over the audit for every plan's tallies, not a scan per plan */
	static const char plans[] =
		"WITH t AS (SELECT plan_id,"
		"   coalesce(sum(b_left - a_left) FILTER (WHERE action = 'seat.held'), 0) AS held,"
		"   coalesce(sum(a_left - b_left) FILTER (WHERE action = 'seat.released'), 0) AS released"
		"   FROM audit_events GROUP BY plan_id)"
		" SELECT " PLAN_COLS ", coalesce(t.held, 0), coalesce(t.released, 0), l.a_left"
		" FROM plans p LEFT JOIN t ON t.plan_id = p.id"
		" LEFT JOIN LATERAL (SELECT a.a_left FROM audit_events a WHERE a.plan_id = p.id"
		"   AND a.a_left IS NOT NULL ORDER BY a.seq DESC LIMIT 1) l ON true ORDER BY p.id";
	static const char subs[] = "SELECT " SUB_COLS " FROM subscriptions s JOIN plans p ON p.id = s.plan_id"
				   " ORDER BY s.idem_key COLLATE \"C\"";
	static const char pays[] = "SELECT " PAY_COLS " FROM payments ORDER BY idem_key COLLATE \"C\", kind";
	static const char entries[] = "SELECT " ENTRY_COLS " FROM waitlist w ORDER BY w.plan_id, w.seq";
	static const char mails[] =
		"SELECT " MAIL_COLS ", coalesce(a.action, '') FROM mail m LEFT JOIN audit_events a ON a.id = m.event_id"
		" ORDER BY m.id COLLATE \"C\"";
	const struct snapshot_visitor *v = ((struct snap_arg *)arg)->v;
	PGresult *r;
	int rc = 0;

	/* the check reads the whole store: a request's statement timeout is not its bound */
	if (exec(s, "SET LOCAL statement_timeout = '10min'", e) || !(r = q(s, plans, e, "")))
		return -1;
	for (int i = 0; i < PQntuples(r) && rc == 0; i++) {
		struct plan p;
		/* the tallies follow PLAN_COLS */
		struct plan_tally t = {&p, col_int(r, i, PLAN_NCOLS), col_int(r, i, PLAN_NCOLS + 1),
				       !PQgetisnull(r, i, PLAN_NCOLS + 2), col_int(r, i, PLAN_NCOLS + 2)};
		plan_read(r, i, &p);
		rc = v->plan(v->arg, &t);
		plan_clear(&p);
	}
	PQclear(r);
	if (rc || !(r = q(s, subs, e, "")))
		return rc ? 0 : -1;
	for (int i = 0; i < PQntuples(r) && rc == 0; i++) {
		struct subscription sub;
		sub_read(r, i, &sub);
		rc = v->subscription(v->arg, &sub);
		subscription_clear(&sub);
	}
	PQclear(r);
	if (rc || !(r = q(s, pays, e, "")))
		return rc ? 0 : -1;
	for (int i = 0; i < PQntuples(r) && rc == 0; i++) {
		struct payment p;
		payment_read(r, i, &p);
		rc = v->payment(v->arg, &p);
	}
	PQclear(r);
	if (rc || !v->entry || !(r = q(s, entries, e, "")))
		return rc || !v->entry ? 0 : -1;
	for (int i = 0; i < PQntuples(r) && rc == 0; i++) {
		struct waitlist_entry w;
		entry_read(r, i, &w);
		rc = v->entry(v->arg, &w);
	}
	PQclear(r);
	if (rc || !v->mail || !(r = q(s, mails, e, "")))
		return rc || !v->mail ? 0 : -1;
	for (int i = 0; i < PQntuples(r) && rc == 0; i++) {
		struct mail m;
		mail_read(r, i, &m);
		col_copy(r, i, 12, m.event_action, sizeof(m.event_action));
		rc = v->mail(v->arg, &m);
		mail_clear(&m);
	}
	PQclear(r);
	return 0;
}

static int pg_snapshot(struct store *st, const struct snapshot_visitor *v, struct err *e)
{
	struct snap_arg x = {v};

	return tx(PG(st), SNAPSHOT, snapshot_tx, &x, e) < 0 ? -1 : 0;
}

/* --- lifecycle ---------------------------------------------------------------------------- */

static int pg_ping(struct store *st, struct err *e)
{
	return connected(PG(st), e) || exec(PG(st), "SELECT 1", e) ? -1 : 0;
}

static int pg_replica_lag(struct store *st, int64_t *lag_ms, struct err *e)
{
	/* replayed all it received: not behind (its primary may simply be idle); else the time
	 * since the last transaction it replayed (replay paused, or slow) */
	static const char sql[] =
		"SELECT CASE WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() IS NULL"
		" OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
		" ELSE coalesce((extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()) * 1000)::bigint,"
		" 9223372036854775807) END";
	struct pg *s = PG(st);
	PGresult *r;

	if (connected(s, e) || !(r = q(s, sql, e, "")))
		return -1;
	*lag_ms = col_int(r, 0, 0);
	PQclear(r);
	return 0;
}

static int pg_reset(struct store *st, struct err *e)
{
	return connected(PG(st), e) ||
	       exec(PG(st), "TRUNCATE audit_events, payments, idempotency_keys, subscriptions, customers, plans,"
			    " leases, webhook_endpoints, webhook_deliveries, waitlist, mail, login_links, customer_sessions", e) ? -1 : 0;
}

static void pg_close(struct store *st)
{
	PQfinish(PG(st)->conn);
	free(st);
}

static const struct store_ops pg_ops = {
	.name = "postgresql",
	.close = pg_close,
	.ping = pg_ping,
	.replica_lag = pg_replica_lag,
	.reset = pg_reset,
	.plan_create = pg_plan_create,
	.plan_get = pg_plan_get,
	.plan_list = pg_plan_list,
	.plan_update = pg_plan_update,
	.customer_create = pg_customer_create,
	.customer_get = pg_customer_get,
	.customer_processor_set = pg_customer_processor_set,
	.key_claim = pg_key_claim,
	.key_finish = pg_key_finish,
	.key_forget = pg_key_forget,
	.key_get = pg_key_get,
	.hold = pg_hold,
	.transition = pg_transition,
	.payments_in = pg_payments_in,
	.payment_mark = pg_payment_mark,
	.held_by_kind = pg_held_by_kind,
	.payment_totals = pg_payment_totals,
	.sub_totals = pg_sub_totals,
	.attempt_take = pg_attempt_take,
	.payment_record = pg_payment_record,
	.sub_get = pg_sub_get,
	.sub_list = pg_sub_list,
	.audit_list = pg_audit_list,
	.feed_read = pg_feed_read,
	.waitlist_join = pg_waitlist_join,
	.entry_get = pg_entry_get,
	.waitlist_list = pg_waitlist_list,
	.waitlist_leave = pg_waitlist_leave,
	.webhook_create = pg_webhook_create,
	.webhook_list = pg_webhook_list,
	.webhook_delete = pg_webhook_delete,
	.webhook_advance = pg_webhook_advance,
	.delivery_list = pg_delivery_list,
	.mail_due = pg_mail_due,
	.mail_mark = pg_mail_mark,
	.mail_list = pg_mail_list,
	.login_link = pg_login_link,
	.login_exchange = pg_login_exchange,
	.session_get = pg_session_get,
	.session_end = pg_session_end,
	.customer_payments = pg_customer_payments,
	.customer_entries = pg_customer_entries,
	.subs_to_remind = pg_subs_to_remind,
	.remind = pg_remind,
	.lease_take = pg_lease_take,
	.holds_overdue = pg_holds_overdue,
	.subs_due = pg_subs_due,
	.charges_unrefunded = pg_charges_unrefunded,
	.keys_purge = pg_keys_purge,
	.snapshot = pg_snapshot,
};

/* Applies the migrations not yet applied, one transaction under an advisory lock, so that many
 * processes starting at once apply each once. */
static int migrate_tx(struct pg *s, void *arg, struct err *e)
{
	PGresult *r;
	int have;

	(void)arg;
	if (exec(s, "SELECT pg_advisory_xact_lock(7261031)", e) ||
	    exec(s, "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)", e))
		return -1;
	r = PQexec(s->conn, "SELECT coalesce(max(version), 0) FROM schema_migrations");
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
		return pg_fail(s, r, e);
	have = atoi(PQgetvalue(r, 0, 0));
	PQclear(r);
	for (int v = have; v < (int)(sizeof(MIGRATIONS) / sizeof(MIGRATIONS[0])); v++) {
		char mark[96];
		snprintf(mark, sizeof(mark), "INSERT INTO schema_migrations VALUES (%d, %" PRId64 ")", v + 1, now_ms());
		if (exec(s, MIGRATIONS[v], e) || exec(s, mark, e))
			return -1;
	}
	return 0;
}

static bool in_recovery(struct pg *s)
{
	PGresult *r = PQexec(s->conn, "SELECT pg_is_in_recovery()");
	bool yes = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && !strcmp(PQgetvalue(r, 0, 0), "t");

	PQclear(r);
	return yes;
}

struct store *store_pg_open(const char *url, struct err *e)
{
	struct pg *s = xcalloc(1, sizeof(*s));
	char shown[256];

	s->base.ops = &pg_ops;
	s->conn = PQconnectdb(url);
	if (PQstatus(s->conn) != CONNECTION_OK) {
		err_set(e, ERR_UNAVAILABLE, NULL, "PostgreSQL at %s: %.160s", store_url_redact(url, shown, sizeof(shown)),
			PQerrorMessage(s->conn));
		goto fail;
	}
	/* A stuck lock or statement answers 503, never hangs a worker; every commit is durable. */
	if (exec(s, "SET statement_timeout = 5000; SET lock_timeout = 3000; SET synchronous_commit = on;"
		    " SET client_min_messages = warning", e))
		goto fail;
	/* a standby (read-only) has its primary's schema: only a primary is migrated */
	if (!in_recovery(s) && tx(s, WRITE, migrate_tx, NULL, e) < 0)
		goto fail;
	return &s->base;
fail:
	pg_close(&s->base);
	return NULL;
}
