/* processor_sim.c - the simulated payment processor, with Stripe's test payment-method names.
 *
 * It plays a remote service: its records live in a SQLite file of their own, never in the
 * store, shared by every process that names the same file (as a real processor is shared by
 * every machine). Its commits are not the store's: WAL with synchronous=NORMAL, as a remote
 * service's durability is not ours to pay for. One connection per process, one call at a time
 * on it; the simulated network latency is spent outside the lock. */
#include "processor.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ids.h"
#include "util.h"

struct sim {
	struct processor base;
	sqlite3 *db;
	pthread_mutex_t lock;
	int latency_ms;
};

#define SIM(p) ((struct sim *)(p))

static const char SCHEMA[] =
	/* a small page cache: it plays a remote service, its memory is not the worker's to spend */
	"PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -256;"
	"CREATE TABLE IF NOT EXISTS sim_payments ("
	" key TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE, state INTEGER NOT NULL,"
	" amount INTEGER NOT NULL DEFAULT 0, refunded INTEGER NOT NULL DEFAULT 0,"
	" decline TEXT NOT NULL DEFAULT '', secret TEXT NOT NULL DEFAULT '', created_at INTEGER NOT NULL,"
	" trace_id TEXT NOT NULL DEFAULT '', method TEXT NOT NULL DEFAULT '');"
	"CREATE TABLE IF NOT EXISTS sim_refunds ("
	" key TEXT PRIMARY KEY, payment_key TEXT NOT NULL, id TEXT NOT NULL, amount INTEGER NOT NULL);";

static const struct {
	const char *method;
	const char *decline_code;
} declines[] = {
	{"pm_card_chargeDeclined", "generic_decline"},
	{"pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"},
	{"pm_card_chargeDeclinedExpiredCard", "expired_card"},
};

const char *processor_test_decline(const char *method, bool off_session)
{
	for (size_t i = 0; i < sizeof(declines) / sizeof(declines[0]); i++)
		if (!strcmp(method, declines[i].method))
			return declines[i].decline_code;
	/* Stripe's 4000 0000 0000 0341: attaches, then every charge without the buyer fails */
	if (off_session && !strcmp(method, "pm_card_chargeCustomerFail"))
		return "card_declined";
	/* a card whose bank asks the buyer to authenticate, charged without them (4000 0027 6000 3184) */
	if (off_session && !strcmp(method, TEST_METHOD_AUTHENTICATION))
		return "authentication_required";
	return NULL;
}

/* The processor's round trip. Models a real network call, not a synchronisation. */
static void network_latency(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	while (ms > 0 && nanosleep(&ts, &ts) != 0)
		;
}

static enum pay_outcome failed(struct sim *s, struct pay_result *out, const char *what)
{
	snprintf(out->msg, sizeof(out->msg), "simulated processor: %s: %s", what, sqlite3_errmsg(s->db));
	sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	pthread_mutex_unlock(&s->lock);
	return out->outcome = PAY_UNKNOWN;
}

static sqlite3_stmt *prepare(struct sim *s, const char *sql)
{
	sqlite3_stmt *st = NULL;

	if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
		return NULL;
	return st;
}

#define PAYMENT_COLS "key, id, state, amount, refunded, decline, secret, trace_id, method"

/* The payment whose key (or, by_id, whose id) is name into out, its key into key_out when
 * given; 1 found, 0 absent, -1 error. */
static int read_payment_by(struct sim *s, const char *name, bool by_id, struct pay_result *out, char *key_out,
			   size_t key_len)
{
	sqlite3_stmt *st = prepare(s, by_id ? "SELECT " PAYMENT_COLS " FROM sim_payments WHERE id = ?"
					    : "SELECT " PAYMENT_COLS " FROM sim_payments WHERE key = ?");
	int rc;

	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		if (key_out)
			snprintf(key_out, key_len, "%s", (const char *)sqlite3_column_text(st, 0));
		snprintf(out->id, sizeof(out->id), "%s", (const char *)sqlite3_column_text(st, 1));
		out->state = (enum pay_state)sqlite3_column_int(st, 2);
		out->amount_cents = sqlite3_column_int64(st, 3);
		out->refunded_cents = sqlite3_column_int64(st, 4);
		snprintf(out->decline_code, sizeof(out->decline_code), "%s", (const char *)sqlite3_column_text(st, 5));
		snprintf(out->client_secret, sizeof(out->client_secret), "%s", (const char *)sqlite3_column_text(st, 6));
		snprintf(out->trace_id, sizeof(out->trace_id), "%s", (const char *)sqlite3_column_text(st, 7));
		snprintf(out->method, sizeof(out->method), "%s", (const char *)sqlite3_column_text(st, 8));
	}
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
}

static int read_payment(struct sim *s, const char *key, struct pay_result *out)
{
	return read_payment_by(s, key, false, out, NULL, 0);
}

/* The key's payment in state, refunded more by refunded_add. */
static int update_payment(struct sim *s, const char *key, enum pay_state state, int64_t refunded_add)
{
	sqlite3_stmt *st = prepare(s, "UPDATE sim_payments SET state = ?2, refunded = refunded + ?3 WHERE key = ?1");
	int rc;

	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 2, state);
	sqlite3_bind_int64(st, 3, refunded_add);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? 0 : -1;
}

static int insert_payment(struct sim *s, const char *key, enum pay_state state, int64_t amount, const char *decline,
			  const struct pay_req *r, struct pay_result *out)
{
	sqlite3_stmt *st = prepare(s, "INSERT INTO sim_payments (key, id, state, amount, decline, secret, created_at,"
				      " trace_id, method) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)");
	int rc;

	if (!st)
		return -1;
	memset(out, 0, sizeof(*out));
	id_new_prefixed("pay_", out->id, sizeof(out->id));
	if (state == PAYS_REQUIRES_ACTION)
		snprintf(out->client_secret, sizeof(out->client_secret), "%s_secret_sim", out->id);
	out->state = state;
	out->amount_cents = amount;
	snprintf(out->decline_code, sizeof(out->decline_code), "%s", decline ? decline : "");
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, out->id, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 3, state);
	sqlite3_bind_int64(st, 4, amount);
	sqlite3_bind_text(st, 5, out->decline_code, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 6, out->client_secret, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 7, now_ms());
	snprintf(out->trace_id, sizeof(out->trace_id), "%s", r && r->trace_id ? r->trace_id : "");
	snprintf(out->method, sizeof(out->method), "%s", r && r->method ? r->method : "");
	sqlite3_bind_text(st, 8, out->trace_id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 9, out->method, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? 0 : -1;
}

/* One call's transaction: the lock, then BEGIN IMMEDIATE (other processes wait their turn). */
static int begin(struct sim *s)
{
	pthread_mutex_lock(&s->lock);
	return sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

static enum pay_outcome commit(struct sim *s, struct pay_result *out, enum pay_outcome o)
{
	if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
		return failed(s, out, "commit");
	pthread_mutex_unlock(&s->lock);
	return out->outcome = o;
}

/* What a payment's state says to a caller that asked for an authorization. */
static enum pay_outcome authorized_outcome(const struct pay_result *r)
{
	switch (r->state) {
	case PAYS_DECLINED:
		return PAY_DECLINED;
	case PAYS_REQUIRES_ACTION:
		return PAY_ACTION_REQUIRED;
	default:
		return PAY_OK;
	}
}

static enum pay_outcome sim_pay(struct processor *p, const struct pay_req *r, bool capture, struct pay_result *out)
{
	struct sim *s = SIM(p);
	const char *decline = processor_test_decline(r->method, r->off_session);
	/* 3-D Secure: the bank asks the buyer, when there is one (without: a decline, as Stripe's) */
	bool asks = !decline && !r->off_session && !strcmp(r->method, TEST_METHOD_AUTHENTICATION);
	enum pay_state state = decline ? PAYS_DECLINED : asks ? PAYS_REQUIRES_ACTION : capture ? PAYS_CAPTURED
												: PAYS_AUTHORIZED;
	int found;

	network_latency(s->latency_ms);
	memset(out, 0, sizeof(*out));
	if (begin(s))
		return failed(s, out, "begin");
	if ((found = read_payment(s, r->key, out)) < 0)
		return failed(s, out, "read");
	if (!found && insert_payment(s, r->key, state, r->amount_cents, decline, r, out))
		return failed(s, out, "insert");
	return commit(s, out, authorized_outcome(out));
}

static enum pay_outcome sim_authorize(struct processor *p, const struct pay_req *r, struct pay_result *out)
{
	return sim_pay(p, r, false, out);
}

static enum pay_outcome sim_charge_saved(struct processor *p, const struct pay_req *r, struct pay_result *out)
{
	return sim_pay(p, r, true, out);
}

/* Moves the key's payment from one of the states `from` allows to `to`; a payment in `to`
 * already is PAY_OK (the call was made before). Absent: closed as `to` when absent_too, else
 * PAY_INVALID. */
static enum pay_outcome sim_move(struct processor *p, const char *key, unsigned from, enum pay_state to,
				 bool absent_too, struct pay_result *out)
{
	struct sim *s = SIM(p);
	int found;

	memset(out, 0, sizeof(*out));
	if (begin(s))
		return failed(s, out, "begin");
	if ((found = read_payment(s, key, out)) < 0)
		return failed(s, out, "read");
	if (!found) {
		if (!absent_too) {
			snprintf(out->msg, sizeof(out->msg), "no payment under this key");
			return commit(s, out, PAY_INVALID);
		}
		if (insert_payment(s, key, to, 0, NULL, NULL, out))
			return failed(s, out, "insert");
		return commit(s, out, PAY_OK);
	}
	if (out->state == to)
		return commit(s, out, PAY_OK);
	if (!(from & (1u << out->state))) {
		snprintf(out->msg, sizeof(out->msg), "the payment is in state %d", (int)out->state);
		return commit(s, out, PAY_INVALID);
	}
	if (update_payment(s, key, to, 0))
		return failed(s, out, "update");
	out->state = to;
	return commit(s, out, PAY_OK);
}

static enum pay_outcome sim_capture(struct processor *p, const struct pay_ref *ref, struct pay_result *out)
{
	return sim_move(p, ref->key, 1u << PAYS_AUTHORIZED, PAYS_CAPTURED, false, out);
}

static enum pay_outcome sim_cancel(struct processor *p, const struct pay_ref *ref, struct pay_result *out)
{
	enum pay_outcome o;

	/* a declined payment has nothing to cancel: answered as it is */
	o = sim_move(p, ref->key, 1u << PAYS_AUTHORIZED | 1u << PAYS_REQUIRES_ACTION, PAYS_VOIDED, true, out);
	if (o == PAY_INVALID && out->state == PAYS_DECLINED)
		o = out->outcome = PAY_OK;
	return o;
}

static enum pay_outcome sim_refund(struct processor *p, const char *payment_id, const char *refund_key,
				   int64_t max_cents, struct pay_result *out)
{
	struct sim *s = SIM(p);
	char key[128] = "";
	sqlite3_stmt *st;
	int found, rc;

	memset(out, 0, sizeof(*out));
	if (begin(s))
		return failed(s, out, "begin");
	if ((found = read_payment_by(s, payment_id, true, out, key, sizeof(key))) < 0)
		return failed(s, out, "read");
	if (!(st = prepare(s, "SELECT id, amount FROM sim_refunds WHERE key = ?")))
		return failed(s, out, "read refund");
	sqlite3_bind_text(st, 1, refund_key, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		snprintf(out->refund_id, sizeof(out->refund_id), "%s", (const char *)sqlite3_column_text(st, 0));
		out->refunded_cents = sqlite3_column_int64(st, 1);
	}
	sqlite3_finalize(st);
	if (rc == SQLITE_ROW)
		return commit(s, out, PAY_OK);
	if (rc != SQLITE_DONE)
		return failed(s, out, "read refund");
	if (!found || out->state != PAYS_CAPTURED) {
		snprintf(out->msg, sizeof(out->msg), "nothing captured to refund");
		return commit(s, out, PAY_INVALID);
	}
	int64_t left = out->amount_cents - out->refunded_cents, amount = max_cents < left ? max_cents : left;
	id_new_prefixed("re_", out->refund_id, sizeof(out->refund_id));
	if (!(st = prepare(s, "INSERT INTO sim_refunds (key, payment_key, id, amount) VALUES (?, ?, ?, ?)")))
		return failed(s, out, "refund");
	sqlite3_bind_text(st, 1, refund_key, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, out->refund_id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, amount < 0 ? 0 : amount);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE || update_payment(s, key, PAYS_CAPTURED, amount < 0 ? 0 : amount))
		return failed(s, out, "refund");
	out->refunded_cents = amount < 0 ? 0 : amount;
	return commit(s, out, PAY_OK);
}

static enum pay_outcome sim_lookup(struct processor *p, const struct pay_ref *ref, struct pay_result *out)
{
	struct sim *s = SIM(p);

	memset(out, 0, sizeof(*out));
	if (begin(s))
		return failed(s, out, "begin");
	if (read_payment(s, ref->key, out) < 0)
		return failed(s, out, "read");
	return commit(s, out, PAY_OK);
}

static void sim_close(struct processor *p)
{
	struct sim *s = SIM(p);

	sqlite3_close(s->db);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

static const struct processor_ops sim_ops = {
	.name = "sim",
	.authorize = sim_authorize,
	.charge_saved = sim_charge_saved,
	.capture = sim_capture,
	.cancel = sim_cancel,
	.refund = sim_refund,
	.lookup = sim_lookup,
	.close = sim_close,
};

/* A file made before its payments kept their trace and method gains the columns (under the
 * write lock: whoever comes first adds them). */
static int columns_added(struct sim *s)
{
	static const char *const added[] = {"trace_id", "method"};
	sqlite3_stmt *st;
	bool has;

	if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
		return -1;
	for (size_t i = 0; i < sizeof(added) / sizeof(added[0]); i++) {
		if (!(st = prepare(s, "SELECT 1 FROM pragma_table_info('sim_payments') WHERE name = ?")))
			goto fail;
		sqlite3_bind_text(st, 1, added[i], -1, SQLITE_STATIC);
		has = sqlite3_step(st) == SQLITE_ROW;
		sqlite3_finalize(st);
		char *sql = xasprintf("ALTER TABLE sim_payments ADD COLUMN %s TEXT NOT NULL DEFAULT ''", added[i]);
		int rc = has ? SQLITE_OK : sqlite3_exec(s->db, sql, NULL, NULL, NULL);
		free(sql);
		if (rc != SQLITE_OK)
			goto fail;
	}
	return sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
fail:
	sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	return -1;
}

int processor_sim_authenticate(struct processor *p, const char *key, struct pay_result *out)
{
	if (!p || p->ops != &sim_ops)
		return -1;
	return sim_move(p, key, 1u << PAYS_REQUIRES_ACTION, PAYS_AUTHORIZED, false, out) == PAY_OK ? 0 : -1;
}

struct processor *processor_sim_open(const char *path, int latency_ms)
{
	struct sim *s = xcalloc(1, sizeof(*s));

	s->base.ops = &sim_ops;
	s->latency_ms = latency_ms;
	pthread_mutex_init(&s->lock, NULL);
	if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) !=
	    SQLITE_OK) {
		sim_close(&s->base);
		return NULL;
	}
	sqlite3_busy_timeout(s->db, 30000);
	/* many processes start at once: the schema is applied under the write lock */
	if (sqlite3_exec(s->db, SCHEMA, NULL, NULL, NULL) != SQLITE_OK || columns_added(s)) {
		sim_close(&s->base);
		return NULL;
	}
	return &s->base;
}
