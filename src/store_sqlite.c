/* store_sqlite.c - the embedded SQLite store.
 *
 * Every primitive that writes is one BEGIN IMMEDIATE transaction: it takes SQLite's single
 * write lock at the start, so a read followed by a write inside it cannot interleave with
 * another process. WAL mode lets readers run beside the writer; every commit is durable
 * before its primitive returns (so before a 2xx leaves, and before any payment call that
 * follows it); the busy timeout queues writers instead of failing.
 * The simulated processor's records live in a second file with a write lock of its own.
 *
 * Writers of this machine queue for SQLite's write lock at a gate first: a robust,
 * process-shared mutex in a small file mapped beside the database. Waiters sleep in the
 * kernel (a futex) and the next one wakes when the lock is let go, instead of every waiter
 * polling the lock through the busy handler, whose sleeps made the tail of a purchase. The
 * wait is bounded (BUSY_TIMEOUT_MS in all, gate and busy handler together), a holder that
 * dies leaves the gate to the next (EOWNERDEAD; SQLite itself rolls its transaction back),
 * and writers on other machines or outside Numatix are still met by the busy handler.
 *
 * Group commit. SQLite has none: with synchronous=FULL each commit fsyncs the WAL while it
 * holds the write lock, so commits of concurrent purchases queue behind each other's fsyncs.
 * Here connections run with synchronous=NORMAL (a commit appends its frames to the WAL
 * without a sync; SQLite still syncs the WAL before every checkpoint and the database after
 * it) and a commit is made durable by an explicit fdatasync of the WAL after the write lock
 * is let go: the gate counts commits and the commits a sync has covered, so one fdatasync
 * makes every commit written before it durable and the writers who waited for it return
 * together. A primitive returns only once its commit is covered, as under FULL. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "store_impl.h"
#include "util.h"

#define STMT_CACHE 128
#define BUSY_TIMEOUT_MS 10000
#define SCHEMA_VERSION 9
#define STR_(x) #x
#define STR(x) STR_(x)

struct stmt_cache {
	struct {
		const char *sql;        /* static text: the cache key is its address */
		sqlite3_stmt *st;
	} at[STMT_CACHE];
	int n;
};

/* The gate of one database file, shared by every process that maps it. Commits are numbered
 * as they begin (announced, under lock): a reader that notes the number before its snapshot has
 * seen no commit with a higher one, and answers once the WAL is synced that far. */
struct gate {
	uint64_t magic;
	pthread_mutex_t lock;           /* the writers' queue */
	pthread_mutex_t sync_lock;      /* one fdatasync of the WAL at a time */
	uint64_t committed;             /* commits whose frames are written, counted under lock */
	uint64_t synced;                /* commits a finished fdatasync covered */
	uint64_t announced;             /* commits begun, counted under lock */
	uint32_t broken;                /* an fdatasync failed: nothing since is known durable */
};
#define GATE_MAGIC 0x6e756d6174697802ULL   /* "numatix" 2 */

/* What the busy handler of a connection has slept for the statement at hand (microseconds);
 * carry: what the gate already took of the transaction's bound. */
struct busy {
	int64_t waited, carry;
};

struct sq {
	struct store base;
	sqlite3 *db;                    /* the ledger */
	struct stmt_cache cache;
	struct busy busy;
	struct gate *gate;              /* NULL: the file could not be mapped; writers poll */
	int gate_fd;                    /* the gate's file, flocked shared while mapped; -1 */
	int wal_fd;                     /* the WAL file, for group commit; -1 without a gate */
};

/* Webhook endpoints, and each one's deliveries (version 4). */
#define WEBHOOK_TABLES \
	"CREATE TABLE IF NOT EXISTS webhook_endpoints (" \
	" id TEXT PRIMARY KEY, url TEXT NOT NULL, events TEXT NOT NULL, description TEXT NOT NULL DEFAULT ''," \
	" secret TEXT NOT NULL, status TEXT NOT NULL, created_at INTEGER NOT NULL, cursor INTEGER NOT NULL);" \
	"CREATE TABLE IF NOT EXISTS webhook_deliveries (" \
	" endpoint_id TEXT NOT NULL, seq INTEGER NOT NULL, event_id TEXT NOT NULL, attempts INTEGER NOT NULL," \
	" last_status INTEGER NOT NULL, last_error TEXT NOT NULL, state TEXT NOT NULL," \
	" first_attempt_at INTEGER NOT NULL, next_attempt_at INTEGER NOT NULL, updated_at INTEGER NOT NULL," \
	" PRIMARY KEY (endpoint_id, seq));"

static const char SCHEMA[] =
	"CREATE TABLE IF NOT EXISTS plans ("
	" id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE, description TEXT NOT NULL,"
	" price_cents INTEGER NOT NULL, duration_days INTEGER NOT NULL,"
	" total_capacity INTEGER NOT NULL,"
	" subscriptions_left INTEGER NOT NULL CHECK (subscriptions_left >= 0),"
	" subscriptions_held INTEGER NOT NULL CHECK (subscriptions_held >= 0),"
	" status TEXT NOT NULL, features TEXT NOT NULL, created_at INTEGER NOT NULL,"
	" updated_at INTEGER NOT NULL, max_per_order INTEGER NOT NULL DEFAULT 10,"
	" max_per_customer INTEGER NOT NULL DEFAULT 0);"
	"CREATE TABLE IF NOT EXISTS customers ("
	" id TEXT PRIMARY KEY, email TEXT NOT NULL UNIQUE COLLATE NOCASE, name TEXT NOT NULL,"
	" created_at INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS subscriptions ("
	" seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,"
	" plan_id TEXT NOT NULL REFERENCES plans(id), customer_id TEXT NOT NULL REFERENCES customers(id),"
	" idem_key TEXT NOT NULL UNIQUE, status TEXT NOT NULL, amount_cents INTEGER NOT NULL,"
	" duration_days INTEGER NOT NULL, payment_id TEXT NOT NULL DEFAULT '', token_hash TEXT NOT NULL,"
	" start_at INTEGER NOT NULL DEFAULT 0, end_at INTEGER NOT NULL DEFAULT 0,"
	" hold_deadline INTEGER NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,"
	" quantity INTEGER NOT NULL DEFAULT 1 CHECK (quantity >= 1), secret_hash TEXT NOT NULL DEFAULT '',"
	" attempt_key TEXT NOT NULL DEFAULT '', attempt_until INTEGER NOT NULL DEFAULT 0,"
	" previous_id TEXT NOT NULL DEFAULT '');"
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
	"CREATE INDEX IF NOT EXISTS payments_pending ON payments(created_at) WHERE status = 'pending';"
	"CREATE TABLE IF NOT EXISTS audit_events ("
	" seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, at INTEGER NOT NULL,"
	" action TEXT NOT NULL, actor_type TEXT NOT NULL, actor_id TEXT NOT NULL DEFAULT '',"
	" resource_type TEXT NOT NULL, resource_id TEXT NOT NULL, plan_id TEXT NOT NULL DEFAULT '',"
	" b_total INTEGER, b_left INTEGER, b_held INTEGER, a_total INTEGER, a_left INTEGER,"
	" a_held INTEGER, detail TEXT, trace_id TEXT NOT NULL DEFAULT '', ip TEXT NOT NULL DEFAULT '');"
	"CREATE INDEX IF NOT EXISTS audit_plan ON audit_events(plan_id, seq);"
	"CREATE INDEX IF NOT EXISTS audit_trace ON audit_events(trace_id, seq);"
	"CREATE TABLE IF NOT EXISTS leases ("
	" name TEXT PRIMARY KEY, holder TEXT NOT NULL, until INTEGER NOT NULL);"
	WEBHOOK_TABLES;

/* Version 5: waiting lists. A new file gets them after SCHEMA, as an older one does. */
static const char MIGRATE_4_5[] =
	"ALTER TABLE plans ADD COLUMN waitlist_enabled INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE plans ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0 CHECK (waiting >= 0);"
	"ALTER TABLE subscriptions ADD COLUMN entry_id TEXT NOT NULL DEFAULT '';"
	"CREATE TABLE IF NOT EXISTS waitlist ("
	" seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, plan_id TEXT NOT NULL,"
	" customer_id TEXT NOT NULL, quantity INTEGER NOT NULL CHECK (quantity >= 1), status TEXT NOT NULL,"
	" token_hash TEXT NOT NULL, session_id TEXT NOT NULL UNIQUE, offer_key TEXT NOT NULL,"
	" offer_secret TEXT NOT NULL, secret_hash TEXT NOT NULL, offer_ttl_ms INTEGER NOT NULL,"
	" offer_expires_at INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);"
	"CREATE INDEX IF NOT EXISTS waitlist_line ON waitlist(plan_id, status, seq);"
	"CREATE UNIQUE INDEX IF NOT EXISTS waitlist_live ON waitlist(plan_id, customer_id)"
	" WHERE status IN ('waiting', 'offered');";

/* Version 6: charges are authorized, then captured or voided; the reaper finds those left
 * authorized by this index. */
static const char MIGRATE_5_6[] =
	"CREATE INDEX IF NOT EXISTS payments_authorized ON payments(created_at) WHERE status = 'authorized';";

/* Version 7: a subscription's life. A plan's term is an interval counted in a time zone, with
 * its renewal (an older plan: days, not renewing); a subscription keeps the term its periods
 * are counted in, their anchor, the current period and its end (an older one: one period of
 * its days, anchored so that it ends at its end_at; its period's start unknown, 0). */
static const char MIGRATE_6_7[] =
	"ALTER TABLE plans ADD COLUMN term_unit TEXT NOT NULL DEFAULT 'day';"
	"ALTER TABLE plans ADD COLUMN term_count INTEGER NOT NULL DEFAULT 30;"
	"ALTER TABLE plans ADD COLUMN term_zone TEXT NOT NULL DEFAULT 'UTC';"
	"ALTER TABLE plans ADD COLUMN renewal TEXT NOT NULL DEFAULT 'none';"
	"UPDATE plans SET term_count = duration_days;"
	"ALTER TABLE plans DROP COLUMN duration_days;"
	"ALTER TABLE subscriptions ADD COLUMN term_unit TEXT NOT NULL DEFAULT 'day';"
	"ALTER TABLE subscriptions ADD COLUMN term_count INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE subscriptions ADD COLUMN term_zone TEXT NOT NULL DEFAULT 'UTC';"
	"ALTER TABLE subscriptions ADD COLUMN anchor_at INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE subscriptions ADD COLUMN anchor_index INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE subscriptions ADD COLUMN period_index INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE subscriptions ADD COLUMN period_start INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE subscriptions ADD COLUMN cancel_at_period_end INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE subscriptions ADD COLUMN cancellation_reason TEXT NOT NULL DEFAULT '';"
	"ALTER TABLE subscriptions ADD COLUMN ended_at INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE subscriptions ADD COLUMN next_attempt_at INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE subscriptions ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE subscriptions ADD COLUMN payment_method TEXT NOT NULL DEFAULT '';"
	"ALTER TABLE subscriptions ADD COLUMN period_payment TEXT NOT NULL DEFAULT '';"
	"UPDATE subscriptions SET term_count = duration_days,"
	" anchor_at = CASE WHEN end_at > 0 THEN end_at - duration_days * 86400000 ELSE 0 END;"
	"CREATE INDEX IF NOT EXISTS subscriptions_due ON subscriptions(status, end_at);"
	"CREATE INDEX IF NOT EXISTS subscriptions_retry ON subscriptions(status, next_attempt_at);"
	"CREATE INDEX IF NOT EXISTS payments_late ON payments(created_at) WHERE status = 'late';"
	"CREATE INDEX IF NOT EXISTS payments_open ON payments(created_at) WHERE status = 'open';";

/* Version 8: the outbox. A mail is found due by its next attempt while it is queued, listed by
 * its time (of a status or all), and checked against the event of its unit. */
static const char MIGRATE_7_8[] =
	"CREATE TABLE IF NOT EXISTS mail ("
	" id TEXT PRIMARY KEY, kind TEXT NOT NULL, customer_id TEXT NOT NULL, event_id TEXT NOT NULL,"
	" data TEXT NOT NULL, secret TEXT, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
	" next_attempt_at INTEGER NOT NULL, last_error TEXT NOT NULL DEFAULT '',"
	" created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);"
	"CREATE INDEX IF NOT EXISTS mail_due ON mail(next_attempt_at) WHERE status = 'queued';"
	"CREATE INDEX IF NOT EXISTS mail_time ON mail(created_at, id);"
	"CREATE INDEX IF NOT EXISTS mail_status ON mail(status, created_at, id);";

/* Version 9: customers' sign-in. A link is counted by its address and time, and found by its id,
 * as a session is; each keeps its token's hash only. */
static const char MIGRATE_8_9[] =
	"CREATE TABLE IF NOT EXISTS login_links ("
	" id TEXT PRIMARY KEY, email TEXT NOT NULL, customer_id TEXT, token_hash TEXT NOT NULL,"
	" created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, used_at INTEGER);"
	"CREATE INDEX IF NOT EXISTS login_links_email ON login_links(email, created_at);"
	"CREATE TABLE IF NOT EXISTS customer_sessions ("
	" id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, token_hash TEXT NOT NULL,"
	" created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, ended_at INTEGER);"
	"CREATE INDEX IF NOT EXISTS payments_subscription ON payments(subscription_id, created_at);"
	"CREATE INDEX IF NOT EXISTS waitlist_customer ON waitlist(customer_id, created_at);"
	/* the period whose reminder was sent (its end): one per period */
	"ALTER TABLE subscriptions ADD COLUMN reminded_end_at INTEGER NOT NULL DEFAULT 0;"
	/* the payment processor's own customer (a Stripe Customer's id), made once */
	"ALTER TABLE customers ADD COLUMN processor_customer_id TEXT NOT NULL DEFAULT '';";

/* Version 1 kept an event's seat counts as JSON text in before/after; version 2 keeps them as
 * numbers, and a payment's summary in detail. */
static const char MIGRATE_1_2[] =
	"ALTER TABLE audit_events ADD COLUMN b_total INTEGER;"
	"ALTER TABLE audit_events ADD COLUMN b_left INTEGER;"
	"ALTER TABLE audit_events ADD COLUMN b_held INTEGER;"
	"ALTER TABLE audit_events ADD COLUMN a_total INTEGER;"
	"ALTER TABLE audit_events ADD COLUMN a_left INTEGER;"
	"ALTER TABLE audit_events ADD COLUMN a_held INTEGER;"
	"ALTER TABLE audit_events ADD COLUMN detail TEXT;"
	"UPDATE audit_events SET"
	" b_total = json_extract(before, '$.total_capacity'), b_left = json_extract(before, '$.subscriptions_left'),"
	" b_held = json_extract(before, '$.subscriptions_held'), a_total = json_extract(after, '$.total_capacity'),"
	" a_left = json_extract(after, '$.subscriptions_left'), a_held = json_extract(after, '$.subscriptions_held')"
	" WHERE resource_type != 'payment';"
	"UPDATE audit_events SET detail = after WHERE resource_type = 'payment';";

/* Version 3: quantities, per-order and per-customer limits, checkout sessions. */
static const char MIGRATE_2_3[] =
	"ALTER TABLE plans ADD COLUMN max_per_order INTEGER NOT NULL DEFAULT 10;"
	"ALTER TABLE plans ADD COLUMN max_per_customer INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE subscriptions ADD COLUMN quantity INTEGER NOT NULL DEFAULT 1 CHECK (quantity >= 1);"
	"ALTER TABLE subscriptions ADD COLUMN secret_hash TEXT NOT NULL DEFAULT '';"
	"ALTER TABLE subscriptions ADD COLUMN attempt_key TEXT NOT NULL DEFAULT '';"
	"ALTER TABLE subscriptions ADD COLUMN attempt_until INTEGER NOT NULL DEFAULT 0;"
	"ALTER TABLE subscriptions ADD COLUMN previous_id TEXT NOT NULL DEFAULT '';"
	"CREATE INDEX IF NOT EXISTS payments_pending ON payments(created_at) WHERE status = 'pending';"
	"UPDATE subscriptions SET attempt_key = idem_key WHERE status = 'pending';";

#define SQ(s) ((struct sq *)(s))

/* --- statements --------------------------------------------------------------------------- */

static int db_error(sqlite3 *db, int rc, struct err *e)
{
	int base = rc & 0xff;

	if (base == SQLITE_BUSY || base == SQLITE_LOCKED)
		err_set(e, ERR_RETRYABLE, NULL, "sqlite busy: %s", sqlite3_errmsg(db));
	else if (base == SQLITE_CONSTRAINT)
		err_set(e, ERR_INTERNAL, NULL, "sqlite constraint: %s", sqlite3_errmsg(db));
	else
		err_set(e, ERR_UNAVAILABLE, NULL, "sqlite error %d: %s", rc, sqlite3_errmsg(db));
	return -1;
}

/* A prepared statement for sql with the arguments bound by fmt: 't' text (NULL binds NULL),
 * 'i' int64, 'I' int64 where 0 binds NULL. Borrowed: valid until the next use of the same sql. */
static sqlite3_stmt *qv(sqlite3 *db, struct stmt_cache *c, const char *sql, struct err *e,
			const char *fmt, va_list ap)
{
	sqlite3_stmt *st = NULL;
	int rc, i;

	for (i = 0; i < c->n; i++)
		if (c->at[i].sql == sql) {
			st = c->at[i].st;
			sqlite3_reset(st);
			sqlite3_clear_bindings(st);
			break;
		}
	if (!st) {
		rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL);
		if (rc != SQLITE_OK) {
			db_error(db, rc, e);
			return NULL;
		}
		if (c->n == STMT_CACHE)
			abort(); /* more distinct statements than the cache holds: raise STMT_CACHE */
		c->at[c->n].sql = sql;
		c->at[c->n].st = st;
		c->n++;
	}
	for (i = 0; fmt[i]; i++) {
		if (fmt[i] == 't') {
			const char *v = va_arg(ap, const char *);
			rc = v ? sqlite3_bind_text(st, i + 1, v, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, i + 1);
		} else {
			int64_t v = va_arg(ap, int64_t);
			rc = fmt[i] == 'I' && !v ? sqlite3_bind_null(st, i + 1) : sqlite3_bind_int64(st, i + 1, v);
		}
		if (rc != SQLITE_OK) {
			db_error(db, rc, e);
			return NULL;
		}
	}
	return st;
}

static sqlite3_stmt *q(struct sq *s, const char *sql, struct err *e, const char *fmt, ...)
{
	va_list ap;
	sqlite3_stmt *st;

	va_start(ap, fmt);
	st = qv(s->db, &s->cache, sql, e, fmt, ap);
	va_end(ap);
	return st;
}

/* Steps st: 1 for a row, 0 when done, -1 on error (e filled). */
static int step(sqlite3_stmt *st, struct err *e)
{
	int rc;

	if (!st)
		return -1;
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		return 1;
	if (rc == SQLITE_DONE)
		return 0;
	db_error(sqlite3_db_handle(st), rc, e);
	return -1;
}

/* Runs a statement without rows; returns the number of rows changed, or -1. */
static int run(sqlite3_stmt *st, struct err *e)
{
	int r;

	while ((r = step(st, e)) == 1)
		;
	return r < 0 ? -1 : sqlite3_changes(sqlite3_db_handle(st));
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

static void cache_reset(struct stmt_cache *c)
{
	for (int i = 0; i < c->n; i++)
		sqlite3_reset(c->at[i].st);
}

/* Sets a gate up as new: no writer queued, nothing counted. */
static void gate_init(struct gate *g)
{
	pthread_mutexattr_t a;

	memset(g, 0, sizeof(*g));
	pthread_mutexattr_init(&a);
	pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
	pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
	pthread_mutex_init(&g->lock, &a);
	pthread_mutex_init(&g->sync_lock, &a);
	pthread_mutexattr_destroy(&a);
	__atomic_store_n(&g->magic, GATE_MAGIC, __ATOMIC_RELEASE);
}

/* Maps the gate of the database file path (path + ".gate"), making it on first use; *fd, the
 * file, stays open with a shared flock(2) while the gate is mapped. NULL when that cannot be
 * done (a read-only directory, say): writers then meet at SQLite's lock alone, as before.
 *
 * What the file holds is only trusted while some process maps it. The kernel gives a robust
 * mutex of a process that dies to the next locker, but nothing survives a reboot: after a crash
 * of the machine, a power cut, or a copy of var/ restored, the file may say the lock is held by
 * a thread that no longer exists, and every writer would wait for it in vain. So whoever finds
 * no other process holding the file (its exclusive lock granted at once) sets the gate up anew,
 * then shares the file like every other user of the gate; flock(2) locks are the kernel's and
 * end with their process, so they are never stale. */
static struct gate *gate_map(const char *path, int *fd)
{
	char *gpath = xasprintf("%s.gate", path);
	struct gate *g = MAP_FAILED;
	struct stat st;
	bool alone;

	*fd = open(gpath, O_RDWR | O_CREAT | O_CLOEXEC, 0660);
	free(gpath);
	if (*fd < 0)
		return NULL;
	alone = flock(*fd, LOCK_EX | LOCK_NB) == 0;
	/* else: others map it (or one is setting it up: its exclusive lock ends once it is) */
	if (!alone && flock(*fd, LOCK_SH))
		goto fail;
	if (fstat(*fd, &st) || (st.st_size < (off_t)sizeof(*g) && (!alone || ftruncate(*fd, sizeof(*g)))))
		goto fail;
	g = mmap(NULL, sizeof(*g), PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
	if (g == MAP_FAILED)
		goto fail;
	if (alone) {
		/* glibc's lock word, read only for the log (a lock taken would enter this thread's
		 * robust list, which the set-up below must not wipe) */
		int word;
		memcpy(&word, &g->lock, sizeof(word));
		if (g->magic == GATE_MAGIC && word)
			LOG_WARN(NULL, "sqlite: the writers' gate was left locked by a process of an earlier boot or copy; set up anew");
		gate_init(g);
		/* from exclusive to shared: whoever takes the file meanwhile finds it set up anew */
		if (flock(*fd, LOCK_SH))
			goto fail;
	} else if (__atomic_load_n(&g->magic, __ATOMIC_ACQUIRE) != GATE_MAGIC) {
		goto fail;
	}
	return g;
fail:
	if (g != MAP_FAILED)
		munmap(g, sizeof(*g));
	close(*fd);
	*fd = -1;
	return NULL;
}

/* Locks m within BUSY_TIMEOUT_MS; a holder that died leaves it to us. 0 or an errno. */
static int shared_lock(pthread_mutex_t *m)
{
	struct timespec deadline;
	int rc;

	/* the monotonic clock: a step of the wall clock neither cuts nor stretches the bound */
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += BUSY_TIMEOUT_MS / 1000;
	rc = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &deadline);
	if (rc == EOWNERDEAD) {
		/* for the writers' queue: its holder died inside a transaction, which SQLite rolls
		 * back by itself; for the sync: the next fdatasync covers what it did not */
		LOG_WARN(NULL, "sqlite: a process died holding the writers' gate; taken over");
		pthread_mutex_consistent(m);
		rc = 0;
	}
	return rc;
}

/* Enters the gate within BUSY_TIMEOUT_MS; *carry: the microseconds it took. */
static int gate_enter(struct gate *g, int64_t *carry, struct err *e)
{
	int64_t start = now_ms();

	*carry = 0;
	if (!g)
		return 0;
	if (shared_lock(&g->lock)) {
		err_set(e, ERR_RETRYABLE, NULL, "sqlite: other writers held the store for %d ms", BUSY_TIMEOUT_MS);
		return -1;
	}
	if (__atomic_load_n(&g->broken, __ATOMIC_ACQUIRE)) {
		pthread_mutex_unlock(&g->lock);
		err_set(e, ERR_UNAVAILABLE, NULL, "sqlite: a sync of the WAL failed; nothing since is known durable");
		return -1;
	}
	*carry = (now_ms() - start) * 1000;
	return 0;
}

/* Makes commit number seq durable: returns once an fdatasync of the WAL that began after its
 * frames were written has finished, doing that fdatasync itself unless another's covers it.
 * After a failed fdatasync nothing is known durable (Linux may have dropped the pages it could
 * not write and cleared the error): the gate stays broken, every answer that would rest on the
 * store is a 503, until the server starts again on it (gate_map sets it up anew). */
static int gate_sync(struct gate *g, int wal_fd, uint64_t seq, struct err *e)
{
	struct timespec now, deadline;
	uint64_t target;
	int rc = 0;

	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += BUSY_TIMEOUT_MS / 1000;
	while (rc == 0 && __atomic_load_n(&g->synced, __ATOMIC_ACQUIRE) < seq) {
		if (__atomic_load_n(&g->broken, __ATOMIC_ACQUIRE))
			break;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (__atomic_load_n(&g->committed, __ATOMIC_ACQUIRE) < seq) {
			/* a commit numbered, not yet written (a reader waits for one it may have seen):
			 * its writer holds the writers' gate until it is. Taking the gate waits for that,
			 * or takes over from a writer that died in its COMMIT; under the gate no commit
			 * is half made, so every one numbered is as written as it will ever be. */
			if (shared_lock(&g->lock)) {
				err_set(e, ERR_RETRYABLE, NULL, "sqlite: other writers held the store for %d ms", BUSY_TIMEOUT_MS);
				return -1;
			}
			target = __atomic_load_n(&g->announced, __ATOMIC_ACQUIRE);
			if (target > __atomic_load_n(&g->committed, __ATOMIC_RELAXED))
				__atomic_store_n(&g->committed, target, __ATOMIC_RELEASE);
			pthread_mutex_unlock(&g->lock);
		}
		if (now.tv_sec > deadline.tv_sec || shared_lock(&g->sync_lock)) {
			err_set(e, ERR_RETRYABLE, NULL, "sqlite: the WAL could not be synced within %d ms", BUSY_TIMEOUT_MS);
			return -1;
		}
		/* every commit counted so far has written its frames: this sync covers them all */
		target = __atomic_load_n(&g->committed, __ATOMIC_ACQUIRE);
		if (__atomic_load_n(&g->synced, __ATOMIC_ACQUIRE) >= seq || __atomic_load_n(&g->broken, __ATOMIC_ACQUIRE)) {
			/* covered, or broken, while we waited for the lock */
		} else if (fdatasync(wal_fd)) {
			LOG_ERROR(NULL, "sqlite: syncing the WAL failed (%s): the store answers 503 until the server is "
				  "started again and `numatix check` has passed", strerror(errno));
			__atomic_store_n(&g->broken, 1, __ATOMIC_RELEASE);
		} else if (target > __atomic_load_n(&g->synced, __ATOMIC_RELAXED)) {
			__atomic_store_n(&g->synced, target, __ATOMIC_RELEASE);
		}
		pthread_mutex_unlock(&g->sync_lock);
	}
	if (__atomic_load_n(&g->broken, __ATOMIC_ACQUIRE) && __atomic_load_n(&g->synced, __ATOMIC_ACQUIRE) < seq) {
		err_set(e, ERR_UNAVAILABLE, NULL, "sqlite: a sync of the WAL failed; nothing since is known durable");
		rc = -1;
	}
	return rc;
}

static void gate_leave(struct gate *g)
{
	if (g)
		pthread_mutex_unlock(&g->lock);
}

static int tx_begin(sqlite3 *db, struct gate *g, struct busy *b, struct err *e)
{
	int rc;

	if (gate_enter(g, &b->carry, e))
		return -1;
	rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
	b->carry = 0;
	if (rc == SQLITE_OK)
		return 0;
	gate_leave(g);
	return db_error(db, rc, e);
}

/* Ends a transaction: commits when rc is 0, else rolls back; then leaves the gate, and
 * returns once the commit is durable. Returns 0 or -1. */
static int tx_end(sqlite3 *db, struct gate *g, int wal_fd, struct stmt_cache *c, int rc, struct err *e)
{
	cache_reset(c);
	if (rc == 0) {
		/* numbered before it is visible to any reader (see struct gate) */
		uint64_t seq = g ? __atomic_add_fetch(&g->announced, 1, __ATOMIC_ACQ_REL) : 0;
		int r = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
		if (g)
			__atomic_store_n(&g->committed, seq, __ATOMIC_RELEASE);
		if (r == SQLITE_OK) {
			if (!g)
				return 0;       /* synchronous=FULL synced it */
			gate_leave(g);
			return gate_sync(g, wal_fd, seq, e);
		}
		db_error(db, r, e);
	}
	if (sqlite3_get_autocommit(db) == 0)
		sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
	gate_leave(g);
	return -1;
}

#define BEGIN(s, e) tx_begin((s)->db, (s)->gate, &(s)->busy, (e))
#define END(s, rc, e) tx_end((s)->db, (s)->gate, (s)->wal_fd, &(s)->cache, (rc), (e))

/* --- events and seats --------------------------------------------------------------------- */

/* The outbox's row of a mail an event sends, queued and due at once. */
static int mail_put(struct sq *s, const struct mail_spec *m, const char *event_id, int64_t now, struct err *e)
{
	static const char sql[] =
		"INSERT INTO mail (id, kind, customer_id, event_id, data, secret, status, next_attempt_at,"
		" created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?7, ?7)";
	char id[ID_LEN + 1];

	id_new(id);
	return run(q(s, sql, e, "tttttti", id, m->kind, m->customer_id, event_id, m->data ? m->data : "{}",
		     m->secret, now), e) < 0 ? -1 : 0;
}

static int events_put(struct sq *s, const struct actor *a, int64_t now, const char *plan_id,
		      const struct event_spec *ev, size_t nev, const struct seat_counts *before,
		      const struct seat_counts *after, struct err *e)
{
	static const char sql[] =
		"INSERT INTO audit_events (id, at, action, actor_type, actor_id, resource_type,"
		" resource_id, plan_id, b_total, b_left, b_held, a_total, a_left, a_held, detail,"
		" trace_id, ip) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)";
	char id[ID_LEN + 1];

	for (size_t i = 0; i < nev; i++) {
		bool b = store_event_before(&ev[i], before) != NULL, af = store_event_after(&ev[i], after) != NULL;
		sqlite3_stmt *st;

		id_new(id);
		st = q(s, sql, e, "titttttt", id, now, ev[i].action, a->type, a->id ? a->id : "",
		       ev[i].resource_type, ev[i].resource_id, plan_id ? plan_id : "");
		if (!st)
			return -1;
		if (b) {
			sqlite3_bind_int64(st, 9, before->total);
			sqlite3_bind_int64(st, 10, before->left);
			sqlite3_bind_int64(st, 11, before->held);
		}
		if (af) {
			sqlite3_bind_int64(st, 12, after->total);
			sqlite3_bind_int64(st, 13, after->left);
			sqlite3_bind_int64(st, 14, after->held);
		}
		if (ev[i].detail)
			sqlite3_bind_text(st, 15, ev[i].detail, -1, SQLITE_TRANSIENT);
		sqlite3_bind_text(st, 16, a->trace_id ? a->trace_id : "", -1, SQLITE_TRANSIENT);
		sqlite3_bind_text(st, 17, a->ip ? a->ip : "", -1, SQLITE_TRANSIENT);
		if (run(st, e) < 0 || (ev[i].mail && mail_put(s, ev[i].mail, id, now, e)))
			return -1;
	}
	return 0;
}

/* Moves a plan's seat counts by dleft and dheld; the counts after into *after. The WHERE
 * clause keeps both >= 0 even if a caller errs. */
/* *waiting (when given): the plan's waiting entries. */
static int seats_move(struct sq *s, const char *plan_id, int64_t dleft, int64_t dheld, int64_t now,
		      struct seat_counts *after, int64_t *waiting, struct err *e)
{
	static const char sql[] =
		"UPDATE plans SET subscriptions_left = subscriptions_left + ?1,"
		" subscriptions_held = subscriptions_held + ?2, updated_at = ?3"
		" WHERE id = ?4 AND subscriptions_left + ?1 >= 0 AND subscriptions_held + ?2 >= 0"
		" RETURNING total_capacity, subscriptions_left, subscriptions_held, waiting";
	sqlite3_stmt *st = q(s, sql, e, "iiit", dleft, dheld, now, plan_id);
	int r = step(st, e);

	if (r < 0)
		return -1;
	if (r == 0) {
		err_set(e, ERR_INTERNAL, NULL, "seat counts of plan %s would go negative", plan_id);
		return -1;
	}
	after->total = sqlite3_column_int64(st, 0);
	after->left = sqlite3_column_int64(st, 1);
	after->held = sqlite3_column_int64(st, 2);
	if (waiting)
		*waiting = sqlite3_column_int64(st, 3);
	sqlite3_reset(st);
	return 0;
}

/* --- waiting lists: offers ---------------------------------------------------------------- */

#define ENTRY_COLS                                                                                   \
	"w.id, w.plan_id, w.customer_id, w.quantity, w.status, w.token_hash, w.session_id, w.offer_key," \
	" w.offer_secret, w.secret_hash, w.offer_ttl_ms, w.offer_expires_at, w.seq, w.created_at,"      \
	" w.updated_at, CASE WHEN w.status = 'waiting' THEN (SELECT count(*) FROM waitlist x"             \
	" WHERE x.plan_id = w.plan_id AND x.status = 'waiting' AND x.seq <= w.seq) ELSE 0 END"

static void entry_read(sqlite3_stmt *st, struct waitlist_entry *w)
{
	memset(w, 0, sizeof(*w));
	col_copy(st, 0, w->id, sizeof(w->id));
	col_copy(st, 1, w->plan_id, sizeof(w->plan_id));
	col_copy(st, 2, w->customer_id, sizeof(w->customer_id));
	w->quantity = sqlite3_column_int64(st, 3);
	col_copy(st, 4, w->status, sizeof(w->status));
	col_copy(st, 5, w->token_hash, sizeof(w->token_hash));
	col_copy(st, 6, w->session_id, sizeof(w->session_id));
	col_copy(st, 7, w->offer_key, sizeof(w->offer_key));
	col_copy(st, 8, w->offer_secret, sizeof(w->offer_secret));
	col_copy(st, 9, w->secret_hash, sizeof(w->secret_hash));
	w->offer_ttl_ms = sqlite3_column_int64(st, 10);
	w->offer_expires_at = sqlite3_column_int64(st, 11);
	w->seq = sqlite3_column_int64(st, 12);
	w->created_at = sqlite3_column_int64(st, 13);
	w->updated_at = sqlite3_column_int64(st, 14);
	w->position = sqlite3_column_int64(st, 15);
}

/* A term as plans and subscriptions both keep it, from column col on. */
#define TERM_COLS "term_unit, term_count, term_zone"

static void term_read(sqlite3_stmt *st, int col, struct sub_life *l)
{
	memset(l, 0, sizeof(*l));
	period_unit_parse((const char *)sqlite3_column_text(st, col), &l->term_unit);
	l->term_count = sqlite3_column_int64(st, col + 1);
	col_copy(st, col + 2, l->term_zone, sizeof(l->term_zone));
}

/* The plan's free seats to its line, in the caller's unit (store.h, *offers*). */
static int offers_make(struct sq *s, const char *plan_id, int64_t now, const struct actor *a, struct err *e)
{
	static const char head[] =
		"SELECT " ENTRY_COLS " FROM waitlist w WHERE w.plan_id = ? AND w.status = 'waiting' ORDER BY w.seq LIMIT 1";
	static const char take[] =
		"UPDATE plans SET subscriptions_left = subscriptions_left - ?1,"
		" subscriptions_held = subscriptions_held + ?1, waiting = waiting - 1, updated_at = ?2"
		" WHERE id = ?3 AND subscriptions_left >= ?1"
		" RETURNING total_capacity, subscriptions_left, subscriptions_held, price_cents, " TERM_COLS;
	static const char ins[] =
		"INSERT INTO subscriptions (id, plan_id, customer_id, idem_key, status, amount_cents,"
		" duration_days, token_hash, hold_deadline, created_at, updated_at, quantity, secret_hash, entry_id,"
		" " TERM_COLS ") VALUES (?, ?, ?, ?, 'pending', ?, ?, '', ?, ?, ?, ?, ?, ?, ?, ?, ?)";
	static const char mark[] =
		"UPDATE waitlist SET status = 'offered', offer_expires_at = ?, updated_at = ? WHERE id = ?";

	for (;;) {
		struct waitlist_entry w;
		struct event_spec ev[OFFER_EVENTS];
		struct outbox_mail m;
		struct seat_counts before, after;
		sqlite3_stmt *st = q(s, head, e, "t", plan_id);
		struct sub_life term;
		int64_t price, until;
		int n = step(st, e);

		if (n <= 0) {
			if (st)
				sqlite3_reset(st);
			return n;
		}
		entry_read(st, &w);
		sqlite3_reset(st);
		if ((n = step(st = q(s, take, e, "iit", w.quantity, now, plan_id), e)) <= 0) {
			if (st)
				sqlite3_reset(st);
			return n;   /* the first in line does not fit: everyone behind it waits too */
		}
		after = (struct seat_counts){sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1),
					     sqlite3_column_int64(st, 2)};
		price = sqlite3_column_int64(st, 3);
		term_read(st, 4, &term);
		sqlite3_reset(st);
		before = store_counts_before(after, -w.quantity, w.quantity);
		until = now + w.offer_ttl_ms;
		w.offer_expires_at = until;
		store_offer_events(&w, ev, &m, a ? a->trace_id : NULL);
		int rc = run(q(s, ins, e, "ttttiiiiiitttit", w.session_id, plan_id, w.customer_id, w.offer_key,
			       price * w.quantity, term_days(term.term_unit, term.term_count), until, now, now, w.quantity,
			       w.secret_hash, w.id, period_unit_name(term.term_unit), term.term_count, term.term_zone),
			     e) < 0 ||
			 run(q(s, mark, e, "iit", until, now, w.id), e) < 0 ||
			 events_put(s, a, now, plan_id, ev, OFFER_EVENTS, &before, &after, e);
		outbox_mail_clear(&m);
		if (rc)
			return -1;
	}
}

/* --- plans -------------------------------------------------------------------------------- */

#define PLAN_COLS                                                                            \
	"id, name, description, price_cents, term_count, total_capacity, subscriptions_left," \
	" subscriptions_held, status, features, created_at, updated_at, max_per_order, max_per_customer," \
	" waitlist_enabled, waiting, term_unit, term_zone, renewal"
#define PLAN_NCOLS 19

static void plan_read(sqlite3_stmt *st, struct plan *p)
{
	const char *features = (const char *)sqlite3_column_text(st, 9);

	memset(p, 0, sizeof(*p));
	col_copy(st, 0, p->id, sizeof(p->id));
	p->name = col_str(st, 1);
	p->description = col_str(st, 2);
	p->price_cents = sqlite3_column_int64(st, 3);
	p->interval_count = sqlite3_column_int64(st, 4);
	p->total_capacity = sqlite3_column_int64(st, 5);
	p->subscriptions_left = sqlite3_column_int64(st, 6);
	p->subscriptions_held = sqlite3_column_int64(st, 7);
	col_copy(st, 8, p->status, sizeof(p->status));
	p->features = features ? json_tokener_parse(features) : NULL;
	if (!p->features)
		p->features = json_object_new_array();
	p->created_at = sqlite3_column_int64(st, 10);
	p->updated_at = sqlite3_column_int64(st, 11);
	p->max_per_order = sqlite3_column_int64(st, 12);
	p->max_per_customer = sqlite3_column_int64(st, 13);
	p->waitlist_enabled = sqlite3_column_int64(st, 14) != 0;
	p->waiting = sqlite3_column_int64(st, 15);
	period_unit_parse((const char *)sqlite3_column_text(st, 16), &p->interval);
	col_copy(st, 17, p->timezone, sizeof(p->timezone));
	p->renews = !strcmp((const char *)sqlite3_column_text(st, 18), "auto");
}

static const char *features_text(struct json_object *f)
{
	return f ? json_object_to_json_string_ext(f, JSON_C_TO_STRING_PLAIN) : "[]";
}

static int read_plan_get(struct store *st_, const char *id, struct plan *out, bool *found, struct err *e)
{
	static const char sql[] = "SELECT " PLAN_COLS " FROM plans WHERE id = ?";
	sqlite3_stmt *st = q(SQ(st_), sql, e, "t", id);
	int r = step(st, e);

	if (r < 0)
		return -1;
	*found = r == 1;
	if (r == 1)
		plan_read(st, out);
	sqlite3_reset(st);
	return 0;
}

static bool is_unique_violation(sqlite3 *db)
{
	return sqlite3_extended_errcode(db) == SQLITE_CONSTRAINT_UNIQUE;
}

static int sq_plan_create(struct store *st_, const struct plan *p, const struct event_spec *ev, size_t nev,
			  const struct actor *a, enum write_result *res, struct err *e)
{
	static const char sql[] = "INSERT INTO plans (" PLAN_COLS ") VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,0,?,?,?)";
	struct sq *s = SQ(st_);
	struct seat_counts after = {p->total_capacity, p->subscriptions_left, p->subscriptions_held};
	int rc = -1;

	*res = WRITE_DONE;
	if (BEGIN(s, e))
		return -1;
	if (run(q(s, sql, e, "tttiiiiittiiiiittt", p->id, p->name, p->description, p->price_cents,
		  p->interval_count, p->total_capacity, p->subscriptions_left, p->subscriptions_held,
		  p->status, features_text(p->features), p->created_at, p->updated_at, p->max_per_order,
		  p->max_per_customer, (int64_t)p->waitlist_enabled, period_unit_name(p->interval), p->timezone,
		  p->renews ? "auto" : "none"), e) < 0) {
		if (is_unique_violation(s->db)) {
			*res = WRITE_DUPLICATE;
			err_clear(e);
		}
		goto out;
	}
	rc = events_put(s, a, p->created_at, p->id, ev, nev, NULL, &after, e);
out:
	if (*res != WRITE_DONE) {
		END(s, -1, e);
		return 0;
	}
	return END(s, rc, e);
}

static int read_plan_list(struct store *st_, const char *status, struct plan **out, size_t *n,
			struct err *e)
{
	static const char sql[] = "SELECT " PLAN_COLS " FROM plans WHERE ?1 IS NULL OR status = ?1"
				  " ORDER BY price_cents, name, id";
	sqlite3_stmt *st = q(SQ(st_), sql, e, "t", status);
	size_t cap = 0;
	int r;

	*out = NULL;
	*n = 0;
	while ((r = step(st, e)) == 1) {
		if (*n == cap) {
			cap = cap ? 2 * cap : 16;
			*out = xrealloc(*out, cap * sizeof(**out));
		}
		plan_read(st, &(*out)[(*n)++]);
	}
	if (st)
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
			  const struct event_spec *ev, size_t nev, const struct actor *a, struct plan *out,
			  enum write_result *res, struct err *e)
{
	/* One statement: the capacity moves what is left by its delta, conditionally, so a
	 * concurrent purchase's decrement is never overwritten. */
	static const char sql[] =
		"UPDATE plans SET name = coalesce(?1, name), description = coalesce(?2, description),"
		" price_cents = coalesce(?3, price_cents), term_count = coalesce(?4, term_count),"
		" term_unit = coalesce(?13, term_unit), term_zone = coalesce(?14, term_zone),"
		" renewal = coalesce(?15, renewal),"
		" features = coalesce(?5, features), status = coalesce(?6, status),"
		" subscriptions_left = subscriptions_left + coalesce(?7 - total_capacity, 0),"
		" total_capacity = coalesce(?7, total_capacity), updated_at = ?8,"
		" max_per_order = coalesce(?10, max_per_order), max_per_customer = coalesce(?11, max_per_customer),"
		" waitlist_enabled = coalesce(?12, waitlist_enabled)"
		" WHERE id = ?9 AND subscriptions_left + coalesce(?7 - total_capacity, 0) >= 0"
		" RETURNING " PLAN_COLS;
	struct sq *s = SQ(st_);
	sqlite3_stmt *st;
	struct seat_counts before, after;
	bool found;
	int r, rc = -1;

	*res = WRITE_DONE;
	if (BEGIN(s, e))
		return -1;
	if (read_plan_get(st_, id, out, &found, e))
		goto out;
	if (!found) {
		*res = WRITE_NOT_FOUND;
		goto out;
	}
	before = (struct seat_counts){out->total_capacity, out->subscriptions_left, out->subscriptions_held};
	plan_clear(out);
	st = q(s, sql, e, "ttIItt", pt->fields & PLAN_F_NAME ? pt->name : NULL,
	       pt->fields & PLAN_F_DESCRIPTION ? pt->description : NULL,
	       (int64_t)0, (int64_t)0, pt->fields & PLAN_F_FEATURES ? features_text(pt->features) : NULL,
	       pt->fields & PLAN_F_STATUS ? pt->status : NULL);
	if (!st)
		goto out;
	/* 0 is a price and a capacity like any other: bind NULL only for fields not patched. */
	if (pt->fields & PLAN_F_PRICE)
		sqlite3_bind_int64(st, 3, pt->price_cents);
	if (pt->fields & PLAN_F_INTERVAL) {
		sqlite3_bind_int64(st, 4, pt->interval_count);
		sqlite3_bind_text(st, 13, period_unit_name(pt->interval), -1, SQLITE_STATIC);
	}
	if (pt->fields & PLAN_F_TIMEZONE)
		sqlite3_bind_text(st, 14, pt->timezone, -1, SQLITE_TRANSIENT);
	if (pt->fields & PLAN_F_RENEWAL)
		sqlite3_bind_text(st, 15, pt->renews ? "auto" : "none", -1, SQLITE_STATIC);
	if (pt->fields & PLAN_F_CAPACITY)
		sqlite3_bind_int64(st, 7, pt->total_capacity);
	if (pt->fields & PLAN_F_MAX_ORDER)
		sqlite3_bind_int64(st, 10, pt->max_per_order);
	if (pt->fields & PLAN_F_MAX_CUSTOMER)
		sqlite3_bind_int64(st, 11, pt->max_per_customer);
	if (pt->fields & PLAN_F_WAITLIST)
		sqlite3_bind_int64(st, 12, pt->waitlist_enabled);
	sqlite3_bind_int64(st, 8, now);
	sqlite3_bind_text(st, 9, id, -1, SQLITE_TRANSIENT);
	if ((r = step(st, e)) < 0) {
		if (is_unique_violation(s->db)) {
			*res = WRITE_DUPLICATE;
			err_clear(e);
		}
		goto out;
	}
	if (r == 0) {
		*res = WRITE_SEATS_SHORT; /* the plan exists: this transaction read it */
		goto out;
	}
	plan_read(st, out);
	sqlite3_reset(st);
	after = (struct seat_counts){out->total_capacity, out->subscriptions_left, out->subscriptions_held};
	rc = events_put(s, a, now, id, ev, nev, &before, &after, e);
	/* more seats: the line's first take them */
	if (rc == 0 && out->waiting > 0 && after.left > before.left) {
		char plan_id[ID_LEN + 1];
		bool again;
		snprintf(plan_id, sizeof(plan_id), "%s", id);
		plan_clear(out);
		rc = offers_make(s, plan_id, now, a, e) || read_plan_get(st_, plan_id, out, &again, e) ? -1 : 0;
	}
out:
	if (*res != WRITE_DONE) {
		plan_clear(out);
		END(s, -1, e);
		return e->kind == ERR_NONE ? 0 : -1;
	}
	if (rc)
		plan_clear(out);
	return END(s, rc, e);
}

/* --- customers ---------------------------------------------------------------------------- */

static const char CUSTOMER_BY_ID[] =
	"SELECT id, email, name, created_at, processor_customer_id FROM customers WHERE id = ?";
static const char CUSTOMER_BY_EMAIL[] =
	"SELECT id, email, name, created_at, processor_customer_id FROM customers WHERE email = ? COLLATE NOCASE";
static const char CUSTOMER_INSERT[] = "INSERT INTO customers (id, email, name, created_at) VALUES (?,?,?,?)";

/* 1 found (into out, if given), 0 absent, -1 error. */
static int customer_find(struct sq *s, const char *sql, const char *arg, struct customer *out, struct err *e)
{
	sqlite3_stmt *st = q(s, sql, e, "t", arg);
	int r = step(st, e);

	if (r == 1 && out) {
		memset(out, 0, sizeof(*out));
		col_copy(st, 0, out->id, sizeof(out->id));
		out->email = col_str(st, 1);
		out->name = col_str(st, 2);
		out->created_at = sqlite3_column_int64(st, 3);
		col_copy(st, 4, out->processor_id, sizeof(out->processor_id));
	}
	if (st)
		sqlite3_reset(st);
	return r;
}

static int sq_customer_processor_set(struct store *st_, const char *id, const char *processor_id, struct err *e)
{
	static const char sql[] =
		"UPDATE customers SET processor_customer_id = ? WHERE id = ? AND processor_customer_id = ''";
	struct sq *s = SQ(st_);

	if (BEGIN(s, e))
		return -1;
	return END(s, run(q(s, sql, e, "tt", processor_id, id), e) < 0 ? -1 : 0, e);
}

static int read_customer_get(struct store *st_, const char *id, struct customer *out, bool *found, struct err *e)
{
	int r = customer_find(SQ(st_), CUSTOMER_BY_ID, id, out, e);

	*found = r == 1;
	return r < 0 ? -1 : 0;
}

static int sq_customer_create(struct store *st_, const struct customer *c, enum write_result *res,
			      struct err *e)
{
	struct sq *s = SQ(st_);

	*res = WRITE_DONE;
	if (BEGIN(s, e))
		return -1;
	if (run(q(s, CUSTOMER_INSERT, e, "ttti", c->id, c->email, c->name, c->created_at), e) >= 0)
		return END(s, 0, e);
	if (!is_unique_violation(s->db))
		return END(s, -1, e);
	*res = WRITE_DUPLICATE;
	err_clear(e);
	/* nothing written: the unit ends without a commit to wait for */
	END(s, -1, e);
	err_clear(e);
	return 0;
}

/* --- sign-in ------------------------------------------------------------------------------ */

static int sq_login_link(struct store *st_, const struct login_req *r, const struct event_spec *ev,
			 const struct actor *a, enum login_result *res, struct err *e)
{
	static const char forget[] = "DELETE FROM login_links WHERE email = ? AND created_at <= ?";
	static const char count[] = "SELECT count(*) FROM login_links WHERE email = ? AND created_at > ?";
	static const char put[] = "INSERT INTO login_links (id, email, customer_id, token_hash, created_at, expires_at)"
				  " VALUES (?, ?, ?, ?, ?, ?)";
	struct sq *s = SQ(st_);
	struct customer c = {0};
	sqlite3_stmt *st;
	int64_t n = 0;
	int found, rc = -1;

	*res = LOGIN_LIMITED;
	if (BEGIN(s, e))
		return -1;
	if (run(q(s, forget, e, "ti", r->email, r->since), e) < 0 || !(st = q(s, count, e, "ti", r->email, r->since)) ||
	    step(st, e) != 1)
		goto out;
	n = sqlite3_column_int64(st, 0);
	sqlite3_reset(st);
	if (n >= r->limit) {
		rc = 0;
		goto out;
	}
	if ((found = customer_find(s, CUSTOMER_BY_EMAIL, r->email, &c, e)) < 0 ||
	    run(q(s, put, e, "ttttii", r->link_id, r->email, found ? c.id : NULL, r->token_hash, r->now, r->expires_at),
		e) < 0)
		goto out;
	*res = found ? LOGIN_SENT : LOGIN_UNKNOWN;
	rc = 0;
	if (found) {
		struct mail_spec m = *ev->mail;
		struct event_spec one = *ev;
		m.customer_id = c.id;
		one.resource_id = c.id;
		one.mail = &m;
		rc = events_put(s, a, r->now, NULL, &one, 1, NULL, NULL, e);
	}
out:
	customer_clear(&c);
	return END(s, rc, e);
}

static int sq_login_exchange(struct store *st_, const char *link_id, const char *token_hash,
			     struct customer_session *cs, bool *ok, struct err *e)
{
	static const char use[] =
		"UPDATE login_links SET used_at = ?1 WHERE id = ?2 AND token_hash = ?3 AND used_at IS NULL"
		" AND expires_at > ?1 AND customer_id IS NOT NULL RETURNING customer_id";
	static const char put[] = "INSERT INTO customer_sessions (id, customer_id, token_hash, created_at, expires_at)"
				  " VALUES (?, ?, ?, ?, ?)";
	struct sq *s = SQ(st_);
	sqlite3_stmt *st;
	int r, rc = -1;

	*ok = false;
	if (BEGIN(s, e))
		return -1;
	if (!(st = q(s, use, e, "itt", cs->created_at, link_id, token_hash)) || (r = step(st, e)) < 0)
		goto out;
	if (r == 1)
		col_copy(st, 0, cs->customer_id, sizeof(cs->customer_id));
	sqlite3_reset(st);
	if (r == 0) {
		rc = 0;
		goto out;
	}
	if (run(q(s, put, e, "tttii", cs->id, cs->customer_id, cs->token_hash, cs->created_at, cs->expires_at), e) < 0)
		goto out;
	*ok = true;
	rc = 0;
out:
	if (rc)
		*ok = false;
	return END(s, rc, e);
}

static int read_session_get(struct store *st_, const char *id, struct customer_session *out, bool *found,
			    struct err *e)
{
	static const char sql[] = "SELECT id, customer_id, token_hash, created_at, expires_at, coalesce(ended_at, 0)"
				  " FROM customer_sessions WHERE id = ?";
	sqlite3_stmt *st = q(SQ(st_), sql, e, "t", id);
	int r = step(st, e);

	memset(out, 0, sizeof(*out));
	if ((*found = r == 1)) {
		col_copy(st, 0, out->id, sizeof(out->id));
		col_copy(st, 1, out->customer_id, sizeof(out->customer_id));
		col_copy(st, 2, out->token_hash, sizeof(out->token_hash));
		out->created_at = sqlite3_column_int64(st, 3);
		out->expires_at = sqlite3_column_int64(st, 4);
		out->ended_at = sqlite3_column_int64(st, 5);
	}
	if (st)
		sqlite3_reset(st);
	return r < 0 ? -1 : 0;
}

static int sq_session_end(struct store *st_, const char *id, int64_t now, bool *found, struct err *e)
{
	static const char sql[] = "UPDATE customer_sessions SET ended_at = ? WHERE id = ? AND ended_at IS NULL";
	struct sq *s = SQ(st_);
	int n;

	*found = false;
	if (BEGIN(s, e))
		return -1;
	if ((n = run(q(s, sql, e, "it", now, id), e)) < 0)
		return END(s, -1, e);
	*found = n > 0;
	return END(s, 0, e);
}

/* --- idempotency keys --------------------------------------------------------------------- */

static const char KEY_SELECT[] =
	"SELECT key, fingerprint, state, locked_until, subscription_id, response_status, response_body,"
	" created_at FROM idempotency_keys WHERE key = ?";

static enum key_state key_state_of(const char *s)
{
	return !strcmp(s, "done") ? KEY_DONE : !strcmp(s, "held") ? KEY_HELD : KEY_STARTED;
}

/* Reads a key's row into out; 1 found, 0 absent, -1 error. */
static int key_read(struct sq *s, const char *key, struct key_record *out, struct err *e)
{
	sqlite3_stmt *st = q(s, KEY_SELECT, e, "t", key);
	char state[16];
	int r = step(st, e);

	if (r == 1) {
		memset(out, 0, sizeof(*out));
		col_copy(st, 0, out->key, sizeof(out->key));
		col_copy(st, 1, out->fingerprint, sizeof(out->fingerprint));
		col_copy(st, 2, state, sizeof(state));
		out->state = key_state_of(state);
		out->locked_until = sqlite3_column_int64(st, 3);
		col_copy(st, 4, out->subscription_id, sizeof(out->subscription_id));
		out->reply.status = sqlite3_column_int(st, 5);
		if (sqlite3_column_type(st, 6) != SQLITE_NULL)
			out->reply.body = col_str(st, 6);
		out->created_at = sqlite3_column_int64(st, 7);
	}
	if (st)
		sqlite3_reset(st);
	return r;
}

/* The claim's first half, inside the caller's transaction: 1 when the key exists (out filled,
 * the lease taken over if it may be), 0 when it is absent. */
static int key_existing(struct sq *s, const struct claim_req *r, struct claim *out, struct err *e)
{
	static const char relock[] = "UPDATE idempotency_keys SET locked_until = ? WHERE key = ?";
	int found = key_read(s, r->key, &out->key, e);

	if (found <= 0)
		return found;
	out->result = CLAIM_EXISTS;
	if (!strcmp(out->key.fingerprint, r->fingerprint) && out->key.state != KEY_DONE &&
	    out->key.locked_until <= r->now) {
		if (run(q(s, relock, e, "it", r->lease_until, r->key), e) < 0)
			return -1;
		out->taken_over = true;
		out->key.locked_until = r->lease_until;
	}
	return 1;
}

static int sq_key_claim(struct store *st_, const struct claim_req *r, struct claim *out, struct err *e)
{
	static const char ins[] =
		"INSERT INTO idempotency_keys (key, fingerprint, state, locked_until, created_at)"
		" VALUES (?, ?, 'started', ?, ?)";
	struct sq *s = SQ(st_);
	int found, rc = -1;

	memset(out, 0, sizeof(*out));
	if (BEGIN(s, e))
		return -1;
	if ((found = key_existing(s, r, out, e)) < 0)
		goto out;
	if (found == 0) {
		out->result = CLAIM_NEW;
		if (run(q(s, ins, e, "ttii", r->key, r->fingerprint, r->lease_until, r->now), e) < 0)
			goto out;
	}
	rc = 0;
out:
	if (rc)
		claim_clear(out);
	return END(s, rc, e);
}

static int read_key_get(struct store *st_, const char *key, struct key_record *out, bool *found, struct err *e)
{
	int r = key_read(SQ(st_), key, out, e);

	*found = r == 1;
	return r < 0 ? -1 : 0;
}

static int sq_key_forget(struct store *st_, const char *key, struct err *e)
{
	static const char sql[] = "DELETE FROM idempotency_keys WHERE key = ? AND state = 'started'";
	struct sq *s = SQ(st_);

	if (BEGIN(s, e))
		return -1;
	return END(s, run(q(s, sql, e, "t", key), e) < 0 ? -1 : 0, e);
}

static const char KEY_DONE_SQL[] =
	"UPDATE idempotency_keys SET state = 'done', locked_until = 0, response_status = ?,"
	" response_body = ? WHERE key = ? AND state != 'done'";

static int sq_key_finish(struct store *st_, const char *key, const struct reply *r, bool *matched,
			 struct err *e)
{
	struct sq *s = SQ(st_);
	int n;

	*matched = false;
	if (BEGIN(s, e))
		return -1;
	n = run(q(s, KEY_DONE_SQL, e, "itt", (int64_t)r->status, r->body, key), e);
	if (END(s, n < 0 ? -1 : 0, e))
		return -1;
	*matched = n > 0;
	return 0;
}

/* --- subscriptions ------------------------------------------------------------------------ */

#define SUB_COLS                                                                                \
	"s.id, s.status, s.plan_id, p.name, s.customer_id, s.idem_key, s.payment_id, s.token_hash," \
	" s.amount_cents, s.duration_days, s.start_at, s.end_at, s.hold_deadline, s.created_at,"    \
	" s.updated_at, s.seq, s.quantity, s.secret_hash, s.attempt_key, s.attempt_until, s.previous_id," \
	" s.entry_id, s.term_unit, s.term_count, s.term_zone, s.anchor_at, s.anchor_index, s.period_index,"  \
	" s.period_start, s.cancel_at_period_end, s.cancellation_reason, s.ended_at, s.next_attempt_at,"   \
	" s.attempts, s.payment_method, p.renewal, s.period_payment"

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
	o->seq = sqlite3_column_int64(st, 15);
	o->quantity = sqlite3_column_int64(st, 16);
	col_copy(st, 17, o->secret_hash, sizeof(o->secret_hash));
	col_copy(st, 18, o->attempt_key, sizeof(o->attempt_key));
	o->attempt_until = sqlite3_column_int64(st, 19);
	col_copy(st, 20, o->previous_id, sizeof(o->previous_id));
	col_copy(st, 21, o->entry_id, sizeof(o->entry_id));
	term_read(st, 22, &o->life);
	o->life.anchor_at = sqlite3_column_int64(st, 25);
	o->life.anchor_index = sqlite3_column_int64(st, 26);
	o->life.period_index = sqlite3_column_int64(st, 27);
	o->life.period_start = sqlite3_column_int64(st, 28);
	o->life.cancel_at_period_end = sqlite3_column_int64(st, 29) != 0;
	col_copy(st, 30, o->life.cancellation_reason, sizeof(o->life.cancellation_reason));
	o->life.ended_at = sqlite3_column_int64(st, 31);
	o->life.next_attempt_at = sqlite3_column_int64(st, 32);
	o->life.attempts = sqlite3_column_int64(st, 33);
	col_copy(st, 34, o->life.payment_method, sizeof(o->life.payment_method));
	o->plan_renews = !strcmp((const char *)sqlite3_column_text(st, 35), "auto");
	col_copy(st, 36, o->life.period_payment, sizeof(o->life.period_payment));
}

static int read_sub_get(struct store *st_, const char *id, struct subscription *out, bool *found, struct err *e)
{
	static const char sql[] =
		"SELECT " SUB_COLS " FROM subscriptions s JOIN plans p ON p.id = s.plan_id WHERE s.id = ?";
	sqlite3_stmt *st = q(SQ(st_), sql, e, "t", id);
	int r = step(st, e);

	if (r < 0)
		return -1;
	*found = r == 1;
	if (r == 1)
		sub_read(st, out);
	sqlite3_reset(st);
	return 0;
}

static int read_held_by_kind(struct store *st_, const char *plan_id, int64_t *paying, int64_t *sessions,
			   struct err *e)
{
	static const char sql[] =
		"SELECT coalesce(sum(quantity) FILTER (WHERE secret_hash = ''), 0),"
		" coalesce(sum(quantity) FILTER (WHERE secret_hash != ''), 0)"
		" FROM subscriptions WHERE plan_id = ? AND status = 'pending'";
	sqlite3_stmt *st = q(SQ(st_), sql, e, "t", plan_id);

	if (step(st, e) < 0)
		return -1;
	*paying = sqlite3_column_int64(st, 0);
	*sessions = sqlite3_column_int64(st, 1);
	sqlite3_reset(st);
	return 0;
}

static int read_payment_totals(struct store *st_, struct payment_total **out, size_t *n, struct err *e)
{
	static const char sql[] = "SELECT kind, status, count(*), coalesce(sum(amount_cents), 0) FROM payments"
				  " GROUP BY kind, status ORDER BY kind, status LIMIT ?";
	sqlite3_stmt *st = q(SQ(st_), sql, e, "i", (int64_t)PAYMENT_TOTALS_MAX);
	int r;

	*out = xcalloc(PAYMENT_TOTALS_MAX, sizeof(**out));
	*n = 0;
	if (!st)
		return -1;
	while ((r = step(st, e)) == 1) {
		struct payment_total *t = &(*out)[(*n)++];
		col_copy(st, 0, t->kind, sizeof(t->kind));
		col_copy(st, 1, t->status, sizeof(t->status));
		t->count = sqlite3_column_int64(st, 2);
		t->amount_cents = sqlite3_column_int64(st, 3);
	}
	sqlite3_reset(st);
	return r < 0 ? -1 : 0;
}

static int read_sub_totals(struct store *st_, struct sub_total **out, size_t *n, struct err *e)
{
	static const char sql[] = "SELECT status, count(*), coalesce(sum(quantity), 0) FROM subscriptions"
				  " GROUP BY status ORDER BY status LIMIT ?";
	sqlite3_stmt *st = q(SQ(st_), sql, e, "i", (int64_t)SUB_TOTALS_MAX);
	int r;

	*out = xcalloc(SUB_TOTALS_MAX, sizeof(**out));
	*n = 0;
	if (!st)
		return -1;
	while ((r = step(st, e)) == 1) {
		struct sub_total *t = &(*out)[(*n)++];
		col_copy(st, 0, t->status, sizeof(t->status));
		t->count = sqlite3_column_int64(st, 1);
		t->seats = sqlite3_column_int64(st, 2);
	}
	sqlite3_reset(st);
	return r < 0 ? -1 : 0;
}

/* The buyer of a hold or a join, in the caller's unit: an existing customer by id, or one
 * found by email or created. 1 with *id set (borrowed from given or found), 0 no such
 * customer, -1 error. found: filled when found by email; customer_clear it. */
static int customer_resolve(struct sq *s, const char *customer_id, const struct customer *c, struct customer *found,
			    const char **id, struct err *e)
{
	int n;

	if (customer_id) {
		*id = customer_id;
		return customer_find(s, CUSTOMER_BY_ID, customer_id, NULL, e);
	}
	if ((n = customer_find(s, CUSTOMER_BY_EMAIL, c->email, found, e)) < 0)
		return -1;
	if (n == 0 && run(q(s, CUSTOMER_INSERT, e, "ttti", c->id, c->email, c->name, c->created_at), e) < 0)
		return -1;
	*id = n ? found->id : c->id;
	return 1;
}

static int sq_hold(struct store *st_, const struct hold_req *r, const struct actor *a, struct hold_out *out,
		   struct err *e)
{
	static const char take[] =
		"UPDATE plans SET subscriptions_left = subscriptions_left - ?1,"
		" subscriptions_held = subscriptions_held + ?1, updated_at = ?2"
		" WHERE id = ?3 AND status = 'active' AND subscriptions_left >= ?1 AND max_per_order >= ?1 AND waiting = 0"
		" RETURNING name, price_cents, total_capacity, subscriptions_left,"
		" subscriptions_held, max_per_customer, " TERM_COLS ", renewal";
	static const char why[] = "SELECT status, subscriptions_left, max_per_order, waiting FROM plans WHERE id = ?";
	static const char owned[] =
		"SELECT coalesce(sum(quantity), 0) FROM subscriptions"
		" WHERE customer_id = ? AND plan_id = ? AND status IN ('pending', 'active', 'past_due')";
	static const char ins[] =
		"INSERT INTO subscriptions (id, plan_id, customer_id, idem_key, status, amount_cents,"
		" duration_days, token_hash, hold_deadline, created_at, updated_at, quantity, secret_hash,"
		" attempt_key, attempt_until, previous_id, " TERM_COLS ")"
		" VALUES (?, ?, ?, ?, 'pending', ?, ?, '', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
	static const char previous[] =
		"SELECT 1 FROM subscriptions WHERE id = ? AND customer_id = ? AND status = 'active'";
	static const char key_ins[] =
		"INSERT INTO idempotency_keys (key, fingerprint, state, locked_until, subscription_id, created_at,"
		" response_status, response_body)"
		" VALUES (?, ?, CASE WHEN ? > 0 THEN 'done' ELSE 'held' END, ?, ?, ?, ?, ?)";
	struct reply done = {0};
	struct sq *s = SQ(st_);
	struct subscription *sub = &out->sub;
	struct customer found_c = {0};
	const char *customer_id = r->customer_id;
	struct seat_counts before, after;
	struct actor buyer;
	sqlite3_stmt *st;
	int64_t now = r->claim.now;
	char status[16];
	int n, rc = -1;

	memset(out, 0, sizeof(*out));
	if (BEGIN(s, e))
		return -1;
	if ((n = key_existing(s, &r->claim, &out->claim, e)) != 0) {
		out->result = HOLD_KEY_EXISTS;
		rc = n < 0 ? -1 : 0;
		return END(s, rc, e);
	}
	if ((n = customer_resolve(s, r->customer_id, r->customer, &found_c, &customer_id, e)) <= 0) {
		out->result = HOLD_NO_CUSTOMER;
		goto refused;
	}
	if (r->previous_id) {
		if ((n = step(st = q(s, previous, e, "tt", r->previous_id, customer_id), e)) < 0)
			goto refused;
		sqlite3_reset(st);
		if (n == 0) {
			out->result = HOLD_PREVIOUS_INACTIVE;
			goto refused;
		}
	}
	if ((n = step(st = q(s, take, e, "iit", r->quantity, now, r->plan_id), e)) < 0)
		goto refused;
	if (n == 0) {
		if ((n = step(st = q(s, why, e, "t", r->plan_id), e)) < 0)
			goto refused;
		if (n == 1) {
			col_copy(st, 0, status, sizeof(status));
			out->available = sqlite3_column_int64(st, 1);
			out->limit = sqlite3_column_int64(st, 2);
			out->waiting = sqlite3_column_int64(st, 3);
		}
		out->result = n == 0 ? HOLD_NO_PLAN : strcmp(status, "active") ? HOLD_PLAN_INACTIVE :
			r->quantity > out->limit ? HOLD_ORDER_LIMIT : HOLD_SOLD_OUT;
		goto refused;
	}
	if ((out->limit = sqlite3_column_int64(st, 5)) > 0) {
		sqlite3_stmt *o = q(s, owned, e, "tt", customer_id, r->plan_id);
		if (step(o, e) < 0)
			goto refused;
		out->held = sqlite3_column_int64(o, 0);
		sqlite3_reset(o);
		if (out->held + r->quantity > out->limit) {
			out->result = HOLD_CUSTOMER_LIMIT;
			goto refused;
		}
	}
	out->result = HOLD_TAKEN;
	snprintf(sub->id, sizeof(sub->id), "%s", r->subscription_id);
	snprintf(sub->status, sizeof(sub->status), "pending");
	snprintf(sub->plan_id, sizeof(sub->plan_id), "%s", r->plan_id);
	snprintf(sub->customer_id, sizeof(sub->customer_id), "%s", customer_id);
	snprintf(sub->idem_key, sizeof(sub->idem_key), "%s", r->claim.key);
	sub->plan_name = col_str(st, 0);
	sub->quantity = r->quantity;
	sub->amount_cents = sqlite3_column_int64(st, 1) * r->quantity;
	after = (struct seat_counts){sqlite3_column_int64(st, 2), sqlite3_column_int64(st, 3),
				     sqlite3_column_int64(st, 4)};
	term_read(st, 6, &sub->life);
	sub->plan_renews = !strcmp((const char *)sqlite3_column_text(st, 9), "auto");
	sub->duration_days = term_days(sub->life.term_unit, sub->life.term_count);
	sqlite3_reset(st);
	before = store_counts_before(after, -r->quantity, r->quantity);
	buyer = *a;
	buyer.id = customer_id;
	sub->hold_deadline = r->deadline;
	sub->created_at = sub->updated_at = now;
	store_hold_fill(sub, r);
	if (r->reply)
		done = r->reply(sub, r->reply_arg);
	if (run(q(s, ins, e, "ttttiiiiiittittit", sub->id, r->plan_id, customer_id, r->claim.key, sub->amount_cents,
		  sub->duration_days, r->deadline, now, now, r->quantity, sub->secret_hash, sub->attempt_key,
		  sub->attempt_until, sub->previous_id, period_unit_name(sub->life.term_unit), sub->life.term_count,
		  sub->life.term_zone), e) < 0 ||
	    events_put(s, &buyer, now, r->plan_id, r->events, r->nevents, &before, &after, e) ||
	    run(q(s, key_ins, e, "ttiitiit", r->claim.key, r->claim.fingerprint, (int64_t)done.status,
		  done.status ? (int64_t)0 : r->claim.lease_until, sub->id, now, (int64_t)done.status, done.body), e) < 0)
		goto out;
	rc = 0;
out:
	free(done.body);
	customer_clear(&found_c);
	if (rc)
		hold_out_clear(out);
	return END(s, rc, e);
refused:
	/* Nothing of a refused hold is kept, the key included. */
	customer_clear(&found_c);
	END(s, -1, e);
	return e->kind == ERR_NONE ? 0 : -1;
}

#define PAY_COLS "id, idem_key, kind, status, decline_code, subscription_id, amount_cents, created_at"

static int payment_put(struct sq *s, const struct payment *p, struct err *e)
{
	static const char ins[] = "INSERT INTO payments (" PAY_COLS ") VALUES (?,?,?,?,?,?,?,?)";

	return run(q(s, ins, e, "ttttttii", p->id, p->idem_key, p->kind, p->status, p->decline_code,
		     p->subscription_id, p->amount_cents, p->created_at), e) < 0 ? -1 : 0;
}

static int life_put(struct sq *s, const char *sql, const char *sub_id, const struct sub_life *l, struct err *e)
{
	return run(q(s, sql, e, "titiiiiitiiittt", period_unit_name(l->term_unit), l->term_count, l->term_zone,
		     l->anchor_at, l->anchor_index, l->period_index, l->period_start, (int64_t)l->cancel_at_period_end,
		     l->cancellation_reason, l->ended_at, l->next_attempt_at, l->attempts, l->payment_method,
		     l->period_payment, sub_id), e) < 0 ? -1 : 0;
}

/* One move of a transition, in the caller's transaction: 1 moved, 0 its condition did not
 * hold (nothing written by it), -1 error. */
static int move_one(struct sq *s, const struct transition *t, const struct actor *a, struct err *e)
{
	static const char move[] =
		"UPDATE subscriptions SET status = ?1, updated_at = ?2, payment_id = coalesce(?3, payment_id),"
		" start_at = coalesce(?4, start_at), end_at = coalesce(?5, end_at),"
		" token_hash = coalesce(?6, token_hash), attempt_key = CASE WHEN ?11 THEN '' ELSE attempt_key END,"
		" secret_hash = coalesce(?18, secret_hash), attempt_until = CASE WHEN ?19 THEN 0 ELSE attempt_until END"
		" WHERE id = ?7 AND status = ?8 AND (?9 IS NULL OR hold_deadline > ?9)"
		" AND (?10 IS NULL OR hold_deadline <= ?10) AND (?12 IS NULL OR attempt_key = ?12)"
		" AND (?13 = 0 OR (end_at = ?14 AND next_attempt_at = ?15 AND cancel_at_period_end = ?16"
		"      AND payment_method = ?17)) AND (?18 IS NULL OR secret_hash = '')"
		" RETURNING plan_id, idem_key, quantity";
	static const char life[] =
		"UPDATE subscriptions SET term_unit = ?, term_count = ?, term_zone = ?, anchor_at = ?, anchor_index = ?,"
		" period_index = ?, period_start = ?, cancel_at_period_end = ?, cancellation_reason = ?, ended_at = ?,"
		" next_attempt_at = ?, attempts = ?, payment_method = ?, period_payment = ? WHERE id = ?";
	static const char entry[] =
		"UPDATE waitlist SET status = ?, updated_at = ? WHERE session_id = ? AND status = 'offered'";
	struct seat_counts before, after;
	char plan_id[ID_LEN + 1], key[UUID_LEN + 1];
	sqlite3_stmt *st;
	int64_t dleft, dheld, waiting = 0;
	int n;

	st = q(s, move, e, "titIItttIIitiiiitti", t->to, t->now, t->payment_id, t->start_at, t->end_at, t->token_hash,
	       t->sub_id, t->from, t->live_after, t->due_by, (int64_t)t->attempt_end, t->attempt,
	       (int64_t)t->life.check, t->life.end_at, t->life.next_attempt_at, (int64_t)t->life.cancel_at_period_end,
	       t->life.payment_method ? t->life.payment_method : "", t->secret_hash, (int64_t)t->attempt_release);
	if ((n = step(st, e)) <= 0) {
		if (st)
			sqlite3_reset(st);
		return n;
	}
	col_copy(st, 0, plan_id, sizeof(plan_id));
	col_copy(st, 1, key, sizeof(key));
	dleft = t->dleft * sqlite3_column_int64(st, 2);
	dheld = t->dheld * sqlite3_column_int64(st, 2);
	sqlite3_reset(st);
	if (seats_move(s, plan_id, dleft, dheld, t->now, &after, &waiting, e))
		return -1;
	before = store_counts_before(after, dleft, dheld);
	if ((t->life.set && life_put(s, life, t->sub_id, t->life.set, e)) ||
	    (t->entry_to && run(q(s, entry, e, "tit", t->entry_to, t->now, t->sub_id), e) < 0) ||
	    (t->payment && payment_put(s, t->payment, e)) ||
	    events_put(s, a, t->now, plan_id, t->events, t->nevents, &before, &after, e))
		return -1;
	if (t->reply && run(q(s, KEY_DONE_SQL, e, "itt", (int64_t)t->reply->status, t->reply->body,
			      t->reply_key ? t->reply_key : key), e) < 0)
		return -1;
	if (dleft > 0 && waiting > 0 && offers_make(s, plan_id, t->now, a, e))
		return -1;
	return 1;
}

static int sq_transition(struct store *st_, const struct transition *t, const struct actor *a,
			 struct transition_out *out, struct err *e)
{
	struct sq *s = SQ(st_);
	bool found;
	int n, also = 1;

	memset(out, 0, sizeof(*out));
	if (BEGIN(s, e))
		return -1;
	if ((n = move_one(s, t, a, e)) == 1 && t->also)
		also = move_one(s, t->also, a, e);
	if (n < 0 || also < 0) {
		END(s, -1, e);
		return -1;
	}
	if (n == 0 || also == 0) {
		/* nothing of the unit is kept; the facts are read after it is undone */
		END(s, -1, e);
		if (read_sub_get(st_, t->sub_id, &out->sub, &found, e))
			return -1;
		out->result = n == 0 ? (found ? MOVE_REFUSED : MOVE_NOT_FOUND) : MOVE_ALSO_REFUSED;
		return 0;
	}
	if (read_sub_get(st_, t->sub_id, &out->sub, &found, e)) {
		END(s, -1, e);
		return -1;
	}
	out->result = MOVED;
	if (END(s, 0, e)) {
		transition_out_clear(out);
		return -1;
	}
	return 0;
}

static int sq_payment_mark(struct store *st_, const char *id, const char *from, const char *to,
			   const struct event_spec *ev, size_t nev, const struct actor *a, bool *moved, struct err *e)
{
	static const char sql[] = "UPDATE payments SET status = ? WHERE id = ? AND status = ?";
	static const char plan[] = "SELECT s.plan_id FROM payments p JOIN subscriptions s ON s.id = p.subscription_id"
				   " WHERE p.id = ?";
	struct sq *s = SQ(st_);
	sqlite3_stmt *st;
	char plan_id[ID_LEN + 1] = "";
	int n, rc = -1;

	*moved = false;
	if (BEGIN(s, e))
		return -1;
	if ((n = run(q(s, sql, e, "ttt", to, id, from), e)) < 0)
		goto out;
	rc = 0;
	if (n == 0)
		goto out;
	*moved = true;
	if ((n = step(st = q(s, plan, e, "t", id), e)) < 0) {
		rc = -1;
		goto out;
	}
	if (n == 1)
		col_copy(st, 0, plan_id, sizeof(plan_id));
	rc = events_put(s, a, now_ms(), plan_id, ev, nev, NULL, NULL, e);
out:
	return END(s, rc, e);
}

static int sq_attempt_take(struct store *st_, const char *sub_id, const char *expect, const char *key, int64_t now,
			   int64_t until, bool *taken, struct err *e)
{
	static const char sql[] =
		"UPDATE subscriptions SET attempt_key = ?1, attempt_until = ?2"
		" WHERE id = ?3 AND status = 'pending' AND hold_deadline > ?4 AND attempt_key = ?5"
		" AND (?6 = 0 OR attempt_until <= ?4)";
	struct sq *s = SQ(st_);
	int n;

	if (BEGIN(s, e))
		return -1;
	n = run(q(s, sql, e, "tititi", key, until, sub_id, now, expect, (int64_t)store_attempt_needs_lapse(expect, key)), e);
	*taken = n > 0;
	return END(s, n < 0 ? -1 : 0, e);
}

static void payment_read(sqlite3_stmt *st, int col, struct payment *p)
{
	memset(p, 0, sizeof(*p));
	col_copy(st, col + 0, p->id, sizeof(p->id));
	col_copy(st, col + 1, p->idem_key, sizeof(p->idem_key));
	col_copy(st, col + 2, p->kind, sizeof(p->kind));
	col_copy(st, col + 3, p->status, sizeof(p->status));
	col_copy(st, col + 4, p->decline_code, sizeof(p->decline_code));
	col_copy(st, col + 5, p->subscription_id, sizeof(p->subscription_id));
	p->amount_cents = sqlite3_column_int64(st, col + 6);
	p->created_at = sqlite3_column_int64(st, col + 7);
}

static int sq_payment_record(struct store *st_, const struct payment *p, const struct event_spec *ev,
			     size_t nev, const struct actor *a, bool *existed, struct err *e)
{
	static const char sel[] = "SELECT 1 FROM payments WHERE idem_key = ? AND kind = ?";
	static const char plan[] = "SELECT plan_id FROM subscriptions WHERE id = ?";
	struct sq *s = SQ(st_);
	sqlite3_stmt *st;
	char plan_id[ID_LEN + 1] = "";
	int n, rc = -1;

	*existed = false;
	if (BEGIN(s, e))
		return -1;
	if ((n = step(q(s, sel, e, "tt", p->idem_key, p->kind), e)) < 0)
		goto out;
	if (n == 1) {
		*existed = true;
		rc = 0;
		goto out;
	}
	if (payment_put(s, p, e) || (n = step(st = q(s, plan, e, "t", p->subscription_id), e)) < 0)
		goto out;
	if (n == 1)
		col_copy(st, 0, plan_id, sizeof(plan_id));
	rc = events_put(s, a, p->created_at, plan_id, ev, nev, NULL, NULL, e);
out:
	return END(s, rc, e);
}

/* Runs a paged query whose rows end in their seq; read fills one item. */
typedef void (*row_fn)(sqlite3_stmt *st, void *item);

static int page_rows(sqlite3_stmt *st, size_t size, int limit, row_fn read, void **out, size_t *n,
		     void (*clear)(void *), struct err *e)
{
	int r;

	*out = xcalloc((size_t)limit + 1, size);
	*n = 0;
	while ((r = step(st, e)) == 1)
		read(st, (char *)*out + (*n)++ * size);
	if (st)
		sqlite3_reset(st);
	if (r < 0) {
		for (size_t i = 0; i < *n; i++)
			clear((char *)*out + i * size);
		free(*out);
		*out = NULL;
		*n = 0;
		return -1;
	}
	return 0;
}

static void sub_row(sqlite3_stmt *st, void *item)
{
	sub_read(st, item);
}

static void sub_clear_v(void *item)
{
	subscription_clear(item);
}

static int read_sub_list(struct store *st_, const char *customer_id, const char *status,
		       const struct seq_page *pg, struct subscription **out, size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT " SUB_COLS " FROM subscriptions s JOIN plans p ON p.id = s.plan_id"
		" WHERE s.customer_id = ? AND (?2 IS NULL OR s.status = ?2) AND s.seq < ?"
		" ORDER BY s.seq DESC LIMIT ?";
	sqlite3_stmt *st = q(SQ(st_), sql, e, "ttii", customer_id, status,
			     pg->before_seq ? pg->before_seq : INT64_MAX, (int64_t)pg->limit);

	return page_rows(st, sizeof(**out), pg->limit, sub_row, (void **)out, n, sub_clear_v, e);
}

static void audit_row(sqlite3_stmt *st, void *item)
{
	struct audit_event *a = item;

	memset(a, 0, sizeof(*a));
	col_copy(st, 0, a->id, sizeof(a->id));
	a->at = sqlite3_column_int64(st, 1);
	col_copy(st, 2, a->action, sizeof(a->action));
	col_copy(st, 3, a->actor_type, sizeof(a->actor_type));
	col_copy(st, 4, a->actor_id, sizeof(a->actor_id));
	col_copy(st, 5, a->resource_type, sizeof(a->resource_type));
	col_copy(st, 6, a->resource_id, sizeof(a->resource_id));
	col_copy(st, 7, a->plan_id, sizeof(a->plan_id));
	if ((a->has_before = sqlite3_column_type(st, 9) != SQLITE_NULL))
		a->before = (struct seat_counts){sqlite3_column_int64(st, 8), sqlite3_column_int64(st, 9),
						 sqlite3_column_int64(st, 10)};
	if ((a->has_after = sqlite3_column_type(st, 12) != SQLITE_NULL))
		a->after = (struct seat_counts){sqlite3_column_int64(st, 11), sqlite3_column_int64(st, 12),
						sqlite3_column_int64(st, 13)};
	a->detail = sqlite3_column_type(st, 14) == SQLITE_NULL ? NULL : col_str(st, 14);
	col_copy(st, 15, a->trace_id, sizeof(a->trace_id));
	col_copy(st, 16, a->ip, sizeof(a->ip));
	a->seq = sqlite3_column_int64(st, 17);
}

static void audit_clear_v(void *item)
{
	audit_event_clear(item);
}

#define AUDIT_COLS \
	"id, at, action, actor_type, actor_id, resource_type, resource_id, plan_id, b_total, b_left," \
	" b_held, a_total, a_left, a_held, detail, trace_id, ip, seq"

static int read_audit_list(struct store *st_, const struct audit_filter *f, const struct seq_page *pg,
			 struct audit_event **out, size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT " AUDIT_COLS " FROM audit_events WHERE (?1 IS NULL OR plan_id = ?1) AND (?2 IS NULL OR trace_id = ?2)"
		" AND (?3 IS NULL OR action = ?3) AND seq < ?4 ORDER BY seq DESC LIMIT ?5";
	sqlite3_stmt *st = q(SQ(st_), sql, e, "tttii", f->plan_id, f->trace_id, f->action,
			     pg->before_seq ? pg->before_seq : INT64_MAX, (int64_t)pg->limit);

	return page_rows(st, sizeof(**out), pg->limit, audit_row, (void **)out, n, audit_clear_v, e);
}

/* The feed's positions are the events' own seq: writers take the database's one write lock in
 * turn, so AUTOINCREMENT numbers them in commit order, and a unit undone gives its numbers back
 * (sqlite_sequence is undone with it): no gap. */
static int read_feed_read(struct store *st_, int64_t after, const char *type, int limit, struct audit_event **out,
			size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT " AUDIT_COLS " FROM audit_events WHERE seq > ?1 AND (?2 IS NULL OR action = ?2)"
		" ORDER BY seq LIMIT ?3";
	sqlite3_stmt *st = q(SQ(st_), sql, e, "iti", after, type, (int64_t)limit);

	return page_rows(st, sizeof(**out), limit, audit_row, (void **)out, n, audit_clear_v, e);
}

static void nothing_v(void *item)
{
	(void)item;
}

/* --- waiting lists ------------------------------------------------------------------------ */

static int sq_waitlist_join(struct store *st_, const struct join_req *r, const struct actor *a, struct join_out *out,
			    struct err *e)
{
	static const char take[] =
		"UPDATE plans SET waiting = waiting + 1, updated_at = ?2"
		" WHERE id = ?3 AND status = 'active' AND waitlist_enabled = 1 AND max_per_order >= ?1"
		" AND (subscriptions_left < ?1 OR waiting > 0)"
		" RETURNING waiting, max_per_customer, total_capacity, subscriptions_left, subscriptions_held";
	static const char why[] =
		"SELECT status, waitlist_enabled, max_per_order, subscriptions_left FROM plans WHERE id = ?";
	static const char owned[] =
		"SELECT (SELECT coalesce(sum(quantity), 0) FROM subscriptions WHERE customer_id = ?1 AND plan_id = ?2"
		"  AND status IN ('pending', 'active', 'past_due')) + (SELECT coalesce(sum(quantity), 0) FROM waitlist"
		"  WHERE customer_id = ?1 AND plan_id = ?2 AND status = 'waiting')";
	static const char live[] =
		"SELECT 1 FROM waitlist WHERE plan_id = ? AND customer_id = ? AND status IN ('waiting', 'offered')";
	static const char ins[] =
		"INSERT INTO waitlist (id, plan_id, customer_id, quantity, status, token_hash, session_id, offer_key,"
		" offer_secret, secret_hash, offer_ttl_ms, created_at, updated_at)"
		" VALUES (?, ?, ?, ?, 'waiting', ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq";
	const struct waitlist_entry *w = r->entry;
	struct sq *s = SQ(st_);
	struct customer found_c = {0};
	struct seat_counts counts;
	const char *customer_id = NULL;
	struct actor buyer;
	sqlite3_stmt *st;
	int64_t limit;
	int n, rc = -1;

	memset(out, 0, sizeof(*out));
	if (BEGIN(s, e))
		return -1;
	if ((n = customer_resolve(s, r->customer_id, r->customer, &found_c, &customer_id, e)) <= 0) {
		out->result = JOIN_NO_CUSTOMER;
		goto refused;
	}
	if ((n = step(st = q(s, take, e, "iit", w->quantity, w->created_at, w->plan_id), e)) < 0)
		goto refused;
	if (n == 0) {
		char status[16] = "";
		bool enabled = false;
		if ((n = step(st = q(s, why, e, "t", w->plan_id), e)) < 0)
			goto refused;
		if (n == 1) {
			col_copy(st, 0, status, sizeof(status));
			enabled = sqlite3_column_int64(st, 1) != 0;
			out->limit = sqlite3_column_int64(st, 2);
			out->available = sqlite3_column_int64(st, 3);
		}
		out->result = n == 0 ? JOIN_NO_PLAN : strcmp(status, "active") ? JOIN_PLAN_INACTIVE :
			!enabled ? JOIN_DISABLED : w->quantity > out->limit ? JOIN_ORDER_LIMIT : JOIN_SEATS_AVAILABLE;
		goto refused;
	}
	out->entry.position = sqlite3_column_int64(st, 0);
	limit = sqlite3_column_int64(st, 1);
	counts = (struct seat_counts){sqlite3_column_int64(st, 2), sqlite3_column_int64(st, 3),
				      sqlite3_column_int64(st, 4)};
	sqlite3_reset(st);
	if (limit > 0) {
		if (step(st = q(s, owned, e, "tt", customer_id, w->plan_id), e) < 0)
			goto refused;
		out->held = sqlite3_column_int64(st, 0);
		sqlite3_reset(st);
		if (out->held + w->quantity > limit) {
			out->limit = limit;
			out->result = JOIN_CUSTOMER_LIMIT;
			goto refused;
		}
	}
	if ((n = step(st = q(s, live, e, "tt", w->plan_id, customer_id), e)) != 0) {
		if (st)
			sqlite3_reset(st);
		out->result = JOIN_ALREADY_WAITING;
		goto refused;
	}
	if (step(st = q(s, ins, e, "tttitttttiii", w->id, w->plan_id, customer_id, w->quantity, w->token_hash,
			w->session_id, w->offer_key, w->offer_secret, w->secret_hash, w->offer_ttl_ms, w->created_at,
			w->created_at), e) != 1)
		goto out;
	out->entry.seq = sqlite3_column_int64(st, 0);
	sqlite3_reset(st);
	{
		int64_t pos = out->entry.position, seq = out->entry.seq;
		out->entry = *w;
		out->entry.position = pos;
		out->entry.seq = seq;
	}
	snprintf(out->entry.customer_id, sizeof(out->entry.customer_id), "%s", customer_id);
	snprintf(out->entry.status, sizeof(out->entry.status), "waiting");
	out->entry.updated_at = w->created_at;
	buyer = *a;
	buyer.id = customer_id;
	if (events_put(s, &buyer, w->created_at, w->plan_id, r->events, r->nevents, &counts, &counts, e))
		goto out;
	out->result = JOIN_DONE;
	rc = 0;
out:
	customer_clear(&found_c);
	return END(s, rc, e);
refused:
	customer_clear(&found_c);
	END(s, -1, e);
	return e->kind == ERR_NONE ? 0 : -1;
}

static int read_entry_get(struct store *st_, const char *id, struct waitlist_entry *out, bool *found, struct err *e)
{
	static const char sql[] = "SELECT " ENTRY_COLS " FROM waitlist w WHERE w.id = ?";
	sqlite3_stmt *st = q(SQ(st_), sql, e, "t", id);
	int r = step(st, e);

	if (r < 0)
		return -1;
	*found = r == 1;
	if (r == 1)
		entry_read(st, out);
	sqlite3_reset(st);
	return 0;
}

static void entry_row(sqlite3_stmt *st, void *item)
{
	entry_read(st, item);
}

static int read_waitlist_list(struct store *st_, const char *plan_id, int64_t after, int limit,
			    struct waitlist_entry **out, size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT " ENTRY_COLS " FROM waitlist w WHERE w.plan_id = ? AND w.seq > ? ORDER BY w.seq LIMIT ?";
	sqlite3_stmt *st = q(SQ(st_), sql, e, "tii", plan_id, after, (int64_t)limit);

	return page_rows(st, sizeof(**out), limit, entry_row, (void **)out, n, nothing_v, e);
}

static int read_customer_entries(struct store *st_, const char *customer_id, int limit, struct waitlist_entry **out,
				 size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT " ENTRY_COLS " FROM waitlist w WHERE w.customer_id = ? ORDER BY w.created_at DESC, w.id DESC LIMIT ?";

	return page_rows(q(SQ(st_), sql, e, "ti", customer_id, (int64_t)limit), sizeof(**out), limit, entry_row,
			 (void **)out, n, nothing_v, e);
}

static int sq_waitlist_leave(struct store *st_, const char *id, int64_t now, const struct event_spec *ev, size_t nev,
			     const struct actor *a, bool *moved, struct waitlist_entry *out, bool *found,
			     struct err *e)
{
	static const char leave[] =
		"UPDATE waitlist SET status = 'left', updated_at = ? WHERE id = ? AND status = 'waiting' RETURNING plan_id";
	static const char line[] =
		"UPDATE plans SET waiting = waiting - 1, updated_at = ? WHERE id = ?"
		" RETURNING total_capacity, subscriptions_left, subscriptions_held";
	struct sq *s = SQ(st_);
	struct seat_counts counts;
	char plan_id[ID_LEN + 1];
	sqlite3_stmt *st;
	int n, rc = -1;

	*moved = false;
	if (BEGIN(s, e))
		return -1;
	if ((n = step(st = q(s, leave, e, "it", now, id), e)) < 0)
		goto out;
	if (n == 1) {
		col_copy(st, 0, plan_id, sizeof(plan_id));
		sqlite3_reset(st);
		if (step(st = q(s, line, e, "it", now, plan_id), e) != 1)
			goto out;
		counts = (struct seat_counts){sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1),
					      sqlite3_column_int64(st, 2)};
		sqlite3_reset(st);
		if (events_put(s, a, now, plan_id, ev, nev, &counts, &counts, e) || offers_make(s, plan_id, now, a, e))
			goto out;
		*moved = true;
	} else if (st) {
		sqlite3_reset(st);
	}
	rc = read_entry_get(st_, id, out, found, e);
out:
	return END(s, rc, e);
}

/* --- webhooks ----------------------------------------------------------------------------- */

static int sq_webhook_create(struct store *st_, struct webhook *w, struct err *e)
{
	/* one statement: the cursor is the feed's last position as the endpoint is made */
	static const char sql[] =
		"INSERT INTO webhook_endpoints (id, url, events, description, secret, status, created_at, cursor)"
		" SELECT ?, ?, ?, ?, ?, ?, ?, coalesce(max(seq), 0) FROM audit_events RETURNING cursor";
	struct sq *s = SQ(st_);
	sqlite3_stmt *st;
	int r;

	if (BEGIN(s, e))
		return -1;
	st = q(s, sql, e, "tttttti", w->id, w->url, w->events, w->description, w->secret, w->status, w->created_at);
	r = step(st, e);
	if (r == 1)
		w->cursor = sqlite3_column_int64(st, 0);
	return END(s, r < 0 || run(st, e) < 0 ? -1 : 0, e);
}

static void webhook_row(sqlite3_stmt *st, void *item)
{
	struct webhook *w = item;

	col_copy(st, 0, w->id, sizeof(w->id));
	w->url = col_str(st, 1);
	w->events = col_str(st, 2);
	w->description = col_str(st, 3);
	col_copy(st, 4, w->secret, sizeof(w->secret));
	col_copy(st, 5, w->status, sizeof(w->status));
	w->created_at = sqlite3_column_int64(st, 6);
	w->cursor = sqlite3_column_int64(st, 7);
}

static void webhook_clear_v(void *item)
{
	webhook_clear(item);
}

static int read_webhook_list(struct store *st_, struct webhook **out, size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT id, url, events, description, secret, status, created_at, cursor FROM webhook_endpoints"
		" ORDER BY created_at, id LIMIT ?";
	sqlite3_stmt *st = q(SQ(st_), sql, e, "i", (int64_t)WEBHOOKS_MAX);

	return page_rows(st, sizeof(**out), WEBHOOKS_MAX, webhook_row, (void **)out, n, webhook_clear_v, e);
}

static int sq_webhook_delete(struct store *st_, const char *id, bool *found, struct err *e)
{
	struct sq *s = SQ(st_);
	int n = -1;

	if (BEGIN(s, e))
		return -1;
	if (run(q(s, "DELETE FROM webhook_deliveries WHERE endpoint_id = ?", e, "t", id), e) >= 0)
		n = run(q(s, "DELETE FROM webhook_endpoints WHERE id = ?", e, "t", id), e);
	if (END(s, n < 0 ? -1 : 0, e))
		return -1;
	*found = n == 1;
	return 0;
}

static int sq_webhook_advance(struct store *st_, const char *endpoint_id, const struct delivery *d, int64_t cursor,
			      bool disable, struct err *e)
{
	static const char keep[] =
		"INSERT INTO webhook_deliveries (endpoint_id, seq, event_id, attempts, last_status, last_error, state,"
		" first_attempt_at, next_attempt_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)"
		" ON CONFLICT (endpoint_id, seq) DO UPDATE SET attempts = excluded.attempts,"
		" last_status = excluded.last_status, last_error = excluded.last_error, state = excluded.state,"
		" next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at";
	static const char move[] =
		"UPDATE webhook_endpoints SET cursor = max(cursor, ?),"
		" status = CASE WHEN ? THEN 'disabled' ELSE status END WHERE id = ?";
	struct sq *s = SQ(st_);
	int rc = 0;

	if (BEGIN(s, e))
		return -1;
	if (d && run(q(s, keep, e, "titiittiii", endpoint_id, d->seq, d->event_id, (int64_t)d->attempts,
		       (int64_t)d->last_status, d->last_error, d->state, d->first_attempt_at, d->next_attempt_at,
		       d->updated_at), e) < 0)
		rc = -1;
	if (rc == 0 && run(q(s, move, e, "iit", cursor, (int64_t)disable, endpoint_id), e) < 0)
		rc = -1;
	return END(s, rc, e);
}

static void delivery_row(sqlite3_stmt *st, void *item)
{
	struct delivery *d = item;

	col_copy(st, 0, d->endpoint_id, sizeof(d->endpoint_id));
	d->seq = sqlite3_column_int64(st, 1);
	col_copy(st, 2, d->event_id, sizeof(d->event_id));
	d->attempts = sqlite3_column_int(st, 3);
	d->last_status = sqlite3_column_int(st, 4);
	col_copy(st, 5, d->last_error, sizeof(d->last_error));
	col_copy(st, 6, d->state, sizeof(d->state));
	d->first_attempt_at = sqlite3_column_int64(st, 7);
	d->next_attempt_at = sqlite3_column_int64(st, 8);
	d->updated_at = sqlite3_column_int64(st, 9);
}

static int read_delivery_list(struct store *st_, const char *endpoint_id, const struct seq_page *pg,
			    struct delivery **out, size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT endpoint_id, seq, event_id, attempts, last_status, last_error, state, first_attempt_at,"
		" next_attempt_at, updated_at FROM webhook_deliveries WHERE endpoint_id = ? AND seq < ?"
		" ORDER BY seq DESC LIMIT ?";
	sqlite3_stmt *st = q(SQ(st_), sql, e, "tii", endpoint_id, pg->before_seq ? pg->before_seq : INT64_MAX,
			     (int64_t)pg->limit);

	return page_rows(st, sizeof(**out), pg->limit, delivery_row, (void **)out, n, nothing_v, e);
}

/* --- the outbox ---------------------------------------------------------------------------- */

#define MAIL_COLS                                                                                    \
	"m.id, m.kind, m.customer_id, m.event_id, m.data, m.secret, m.status, m.attempts,"          \
	" m.next_attempt_at, m.last_error, m.created_at, m.updated_at"

static void mail_row(sqlite3_stmt *st, void *item)
{
	struct mail *m = item;

	memset(m, 0, sizeof(*m));
	col_copy(st, 0, m->id, sizeof(m->id));
	col_copy(st, 1, m->kind, sizeof(m->kind));
	col_copy(st, 2, m->customer_id, sizeof(m->customer_id));
	col_copy(st, 3, m->event_id, sizeof(m->event_id));
	m->data = col_str(st, 4);
	m->secret = sqlite3_column_type(st, 5) == SQLITE_NULL ? NULL : col_str(st, 5);
	col_copy(st, 6, m->status, sizeof(m->status));
	m->attempts = sqlite3_column_int(st, 7);
	m->next_attempt_at = sqlite3_column_int64(st, 8);
	col_copy(st, 9, m->last_error, sizeof(m->last_error));
	m->created_at = sqlite3_column_int64(st, 10);
	m->updated_at = sqlite3_column_int64(st, 11);
}

static void mail_clear_v(void *item)
{
	mail_clear(item);
}

static int read_mail_due(struct store *st_, int64_t now, int limit, struct mail **out, size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT " MAIL_COLS " FROM mail m WHERE m.status = 'queued' AND m.next_attempt_at <= ?"
		" ORDER BY m.next_attempt_at, m.id LIMIT ?";

	return page_rows(q(SQ(st_), sql, e, "ii", now, (int64_t)limit), sizeof(**out), limit, mail_row,
			 (void **)out, n, mail_clear_v, e);
}

static int read_mail_list(struct store *st_, const char *status, const struct seq_page *pg, struct mail **out,
			  size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT " MAIL_COLS " FROM mail m WHERE (?1 IS NULL OR m.status = ?1)"
		" AND (?2 = 0 OR m.created_at < ?2 OR (m.created_at = ?2 AND m.id < ?3))"
		" ORDER BY m.created_at DESC, m.id DESC LIMIT ?4";

	return page_rows(q(SQ(st_), sql, e, "titi", status, pg->before_seq, pg->before_id, (int64_t)pg->limit),
			 sizeof(**out), pg->limit, mail_row, (void **)out, n, mail_clear_v, e);
}

static int sq_mail_mark(struct store *st_, const struct mail *m, int attempts, const struct event_spec *ev,
			size_t nev, const struct actor *a, bool *moved, struct err *e)
{
	static const char sql[] =
		"UPDATE mail SET status = ?1, attempts = ?2, next_attempt_at = ?3, last_error = ?4, updated_at = ?5"
		" WHERE id = ?6 AND status = 'queued' AND attempts = ?7";
	struct sq *s = SQ(st_);
	int64_t now = now_ms();
	int n, rc = -1;

	*moved = false;
	if (BEGIN(s, e))
		return -1;
	if ((n = run(q(s, sql, e, "tiititi", m->status, (int64_t)m->attempts, m->next_attempt_at, m->last_error,
			 now, m->id, (int64_t)attempts), e)) < 0)
		goto out;
	*moved = n > 0;
	rc = n > 0 ? events_put(s, a, now, NULL, ev, nev, NULL, NULL, e) : 0;
out:
	if (rc)
		*moved = false;
	return END(s, rc, e);
}

/* --- the reaper's facts ------------------------------------------------------------------- */

static int sq_lease_take(struct store *st_, const char *name, const char *holder, int64_t now,
			 int64_t until, bool *taken, struct err *e)
{
	static const char ins[] = "INSERT OR IGNORE INTO leases (name, holder, until) VALUES (?, '', 0)";
	static const char take[] =
		"UPDATE leases SET holder = ?, until = ? WHERE name = ? AND (until <= ? OR holder = ?)";
	struct sq *s = SQ(st_);
	int n = -1;

	*taken = false;
	if (BEGIN(s, e))
		return -1;
	if (run(q(s, ins, e, "t", name), e) >= 0)
		n = run(q(s, take, e, "titit", holder, until, name, now, holder), e);
	if (END(s, n < 0 ? -1 : 0, e))
		return -1;
	*taken = n == 1;
	return 0;
}

static int read_holds_overdue(struct store *st_, int64_t now, int limit, struct subscription **out,
			    size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT " SUB_COLS " FROM subscriptions s JOIN plans p ON p.id = s.plan_id"
		" WHERE s.status = 'pending' AND s.hold_deadline <= ? ORDER BY s.hold_deadline LIMIT ?";
	sqlite3_stmt *st = q(SQ(st_), sql, e, "ii", now, (int64_t)limit);

	return page_rows(st, sizeof(**out), limit, sub_row, (void **)out, n, sub_clear_v, e);
}

static int read_subs_due(struct store *st_, int64_t now, int limit, struct subscription **out, size_t *n,
			 struct err *e)
{
	/* each branch by its own index, at most limit rows each, then merged by when it is due */
	static const char sql[] =
		"SELECT * FROM (SELECT " SUB_COLS ", s.end_at AS due FROM subscriptions s JOIN plans p ON p.id = s.plan_id"
		" WHERE s.status = 'active' AND s.end_at <= ?1 ORDER BY s.end_at LIMIT ?2)"
		" UNION ALL SELECT * FROM (SELECT " SUB_COLS ", s.next_attempt_at AS due FROM subscriptions s"
		" JOIN plans p ON p.id = s.plan_id WHERE s.status = 'past_due' AND s.next_attempt_at <= ?1"
		" ORDER BY s.next_attempt_at LIMIT ?2) ORDER BY due LIMIT ?2";
	sqlite3_stmt *st = q(SQ(st_), sql, e, "ii", now, (int64_t)limit);

	return page_rows(st, sizeof(**out), limit, sub_row, (void **)out, n, sub_clear_v, e);
}

static int read_subs_to_remind(struct store *st_, int64_t by, int limit, struct subscription **out, size_t *n,
			       struct err *e)
{
	static const char sql[] =
		"SELECT " SUB_COLS " FROM subscriptions s JOIN plans p ON p.id = s.plan_id"
		" WHERE s.status = 'active' AND s.end_at <= ? AND s.reminded_end_at <> s.end_at ORDER BY s.end_at LIMIT ?";

	return page_rows(q(SQ(st_), sql, e, "ii", by, (int64_t)limit), sizeof(**out), limit, sub_row, (void **)out, n,
			 sub_clear_v, e);
}

static int sq_remind(struct store *st_, const char *sub_id, int64_t end_at, const struct event_spec *ev, size_t nev,
		     const struct actor *a, bool *marked, struct err *e)
{
	static const char sql[] =
		"UPDATE subscriptions SET reminded_end_at = ?1 WHERE id = ?2 AND status = 'active' AND end_at = ?1"
		" AND reminded_end_at <> ?1 RETURNING plan_id";
	struct sq *s = SQ(st_);
	char plan_id[ID_LEN + 1] = "";
	sqlite3_stmt *st;
	int r, rc = -1;

	*marked = false;
	if (BEGIN(s, e))
		return -1;
	if (!(st = q(s, sql, e, "it", end_at, sub_id)) || (r = step(st, e)) < 0)
		goto out;
	if (r == 1)
		col_copy(st, 0, plan_id, sizeof(plan_id));
	sqlite3_reset(st);
	*marked = r == 1;
	rc = r == 1 ? events_put(s, a, now_ms(), plan_id, ev, nev, NULL, NULL, e) : 0;
out:
	if (rc)
		*marked = false;
	return END(s, rc, e);
}

static void payment_row(sqlite3_stmt *st, void *item)
{
	payment_read(st, 0, item);
}

static void no_clear(void *item)
{
	(void)item;
}

static int read_customer_payments(struct store *st_, const char *customer_id, int limit, struct payment **out,
				  size_t *n, struct err *e)
{
	static const char sql[] =
		"SELECT p.id, p.idem_key, p.kind, p.status, p.decline_code, p.subscription_id, p.amount_cents, p.created_at FROM subscriptions s JOIN payments p ON p.subscription_id = s.id"
		" WHERE s.customer_id = ? AND p.kind IN ('charge', 'renewal', 'refund') AND (p.status IN ('succeeded', 'refunded') OR (p.status = 'authorized' AND s.status NOT IN ('pending', 'failed', 'expired')))"
		" ORDER BY p.created_at DESC, p.id DESC LIMIT ?";

	return page_rows(q(SQ(st_), sql, e, "ti", customer_id, (int64_t)limit), sizeof(**out), limit, payment_row,
			 (void **)out, n, no_clear, e);
}

static int read_payments_in(struct store *st_, const char *status, int limit, struct payment **out, size_t *n,
			    struct err *e)
{
	/* each status its own statement, so that its partial index serves it */
	static const char pending[] = "SELECT " PAY_COLS " FROM payments WHERE status = 'pending'"
				      " ORDER BY created_at LIMIT ?";
	static const char authorized[] = "SELECT " PAY_COLS " FROM payments WHERE status = 'authorized'"
					 " ORDER BY created_at LIMIT ?";
	static const char late[] = "SELECT " PAY_COLS " FROM payments WHERE status = 'late'"
				   " ORDER BY created_at LIMIT ?";
	static const char open[] = "SELECT " PAY_COLS " FROM payments WHERE status = 'open'"
				   " ORDER BY created_at LIMIT ?";
	const char *sql = !strcmp(status, "pending") ? pending : !strcmp(status, "authorized") ? authorized :
			  !strcmp(status, "late") ? late : !strcmp(status, "open") ? open : NULL;
	sqlite3_stmt *st;

	if (!sql) {
		err_set(e, ERR_INTERNAL, NULL, "no payments are kept in status %s", status);
		return -1;
	}
	st = q(SQ(st_), sql, e, "i", (int64_t)limit);

	return page_rows(st, sizeof(**out), limit, payment_row, (void **)out, n, no_clear, e);
}

static int read_charges_unrefunded(struct store *st_, int limit, struct payment **out, size_t *n,
				 struct err *e)
{
	static const char sql[] =
		"SELECT " PAY_COLS " FROM payments c WHERE c.kind = 'charge' AND c.status = 'succeeded'"
		" AND EXISTS (SELECT 1 FROM subscriptions s WHERE s.id = c.subscription_id"
		"             AND (s.status IN ('failed', 'expired') OR (s.payment_id != c.id AND s.attempt_key != c.idem_key)))"
		" AND NOT EXISTS (SELECT 1 FROM payments r WHERE r.idem_key = c.idem_key AND r.kind = 'refund')"
		" LIMIT ?";
	sqlite3_stmt *st = q(SQ(st_), sql, e, "i", (int64_t)limit);

	return page_rows(st, sizeof(**out), limit, payment_row, (void **)out, n, no_clear, e);
}

static int sq_keys_purge(struct store *st_, int64_t before, int *n, struct err *e)
{
	/* A key that holds a seat stays until its purchase ends (done). */
	static const char sql[] =
		"DELETE FROM idempotency_keys WHERE state IN ('done', 'started') AND created_at < ?";

	struct sq *s = SQ(st_);

	if (BEGIN(s, e))
		return -1;
	*n = run(q(s, sql, e, "i", before), e);
	return END(s, *n < 0 ? -1 : 0, e);
}

/* --- the snapshot for check ----------------------------------------------------------------- */

static int read_snapshot(struct store *st_, const struct snapshot_visitor *v, struct err *e)
{
	static const char plans[] =
		"SELECT " PLAN_COLS ","
		" (SELECT coalesce(sum(a.b_left - a.a_left), 0) FROM audit_events a"
		"   WHERE a.plan_id = p.id AND a.action = 'seat.held'),"
		" (SELECT coalesce(sum(a.a_left - a.b_left), 0) FROM audit_events a"
		"   WHERE a.plan_id = p.id AND a.action = 'seat.released'),"
		" (SELECT a.a_left FROM audit_events a WHERE a.plan_id = p.id AND a.a_left IS NOT NULL"
		"   ORDER BY a.seq DESC LIMIT 1)"
		" FROM plans p ORDER BY p.id";
	static const char subs[] =
		"SELECT " SUB_COLS " FROM subscriptions s JOIN plans p ON p.id = s.plan_id ORDER BY s.idem_key";
	static const char pays[] = "SELECT " PAY_COLS " FROM payments ORDER BY idem_key, kind";
	static const char entries[] = "SELECT " ENTRY_COLS " FROM waitlist w ORDER BY w.plan_id, w.seq";
	static const char mails[] =
		"SELECT " MAIL_COLS ", coalesce(a.action, '') FROM mail m LEFT JOIN audit_events a ON a.id = m.event_id"
		" ORDER BY m.id";
	struct sq *s = SQ(st_);
	sqlite3_stmt *st;
	int r, rc = -1;

	/* One read transaction: every query sees the same snapshot. */
	if (sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
		return db_error(s->db, sqlite3_errcode(s->db), e);
	st = q(s, plans, e, "");
	while ((r = step(st, e)) == 1) {
		struct plan p;
		/* the tallies follow PLAN_COLS (16 columns) */
		struct plan_tally t = {&p, sqlite3_column_int64(st, PLAN_NCOLS), sqlite3_column_int64(st, PLAN_NCOLS + 1),
				       sqlite3_column_type(st, PLAN_NCOLS + 2) != SQLITE_NULL,
				       sqlite3_column_int64(st, PLAN_NCOLS + 2)};
		plan_read(st, &p);
		r = v->plan(v->arg, &t);
		plan_clear(&p);
		if (r)
			goto out;
	}
	if (r < 0)
		goto out;
	st = q(s, subs, e, "");
	while ((r = step(st, e)) == 1) {
		struct subscription sub;
		sub_read(st, &sub);
		r = v->subscription(v->arg, &sub);
		subscription_clear(&sub);
		if (r)
			goto out;
	}
	if (r < 0)
		goto out;
	st = q(s, pays, e, "");
	while ((r = step(st, e)) == 1) {
		struct payment p;
		payment_read(st, 0, &p);
		if (v->payment(v->arg, &p))
			goto out;
	}
	if (r < 0)
		goto out;
	st = q(s, entries, e, "");
	while ((r = step(st, e)) == 1) {
		struct waitlist_entry w;
		entry_read(st, &w);
		if (v->entry && v->entry(v->arg, &w))
			goto out;
	}
	if (r < 0)
		goto out;
	st = q(s, mails, e, "");
	while ((r = step(st, e)) == 1) {
		struct mail m;
		mail_row(st, &m);
		col_copy(st, 12, m.event_action, sizeof(m.event_action));
		r = v->mail ? v->mail(v->arg, &m) : 0;
		mail_clear(&m);
		if (r)
			goto out;
	}
	rc = r < 0 ? -1 : 0;
out:
	cache_reset(&s->cache);
	sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
	return rc;
}

/* --- lifecycle ---------------------------------------------------------------------------- */

static int read_ping(struct store *st_, struct err *e)
{
	static const char sql[] = "SELECT count(*) FROM plans";
	sqlite3_stmt *st = q(SQ(st_), sql, e, "");
	int r = step(st, e);

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
			      " DELETE FROM plans; DELETE FROM leases; DELETE FROM webhook_deliveries; DELETE FROM waitlist;"
			      " DELETE FROM mail; DELETE FROM login_links; DELETE FROM customer_sessions;"
			      " DELETE FROM webhook_endpoints; COMMIT;",
			      NULL, NULL, NULL);

	if (rc != SQLITE_OK) {
		db_error(s->db, rc, e);
		sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
		return -1;
	}
	return 0;
}

/* The online backup API copies every page in one step, so the copy is one read snapshot of
 * the ledger (in WAL mode writers go on meanwhile). It is written beside path and renamed
 * over it only when complete and synced, so path is never half a database. */
static int sq_backup(struct store *st_, const char *path, struct err *e)
{
	struct sq *s = SQ(st_);
	char *tmp = xasprintf("%s.partial", path);
	sqlite3 *dst = NULL;
	sqlite3_backup *b;
	int rc;

	unlink(tmp);
	rc = sqlite3_open_v2(tmp, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(dst, "PRAGMA synchronous=FULL", NULL, NULL, NULL);
	if (rc != SQLITE_OK) {
		err_set(e, ERR_UNAVAILABLE, NULL, "backup: cannot create %s: %s", tmp, sqlite3_errmsg(dst));
		goto fail;
	}
	if (!(b = sqlite3_backup_init(dst, "main", s->db, "main"))) {
		err_set(e, ERR_UNAVAILABLE, NULL, "backup: %s", sqlite3_errmsg(dst));
		goto fail;
	}
	/* A step that meets a lock returns BUSY or LOCKED and is simply tried again; the busy
	 * handler of s->db has already waited its bounded time for each. */
	do
		rc = sqlite3_backup_step(b, -1);
	while (rc == SQLITE_BUSY || rc == SQLITE_LOCKED);
	sqlite3_backup_finish(b);
	if (rc != SQLITE_DONE) {
		err_set(e, ERR_UNAVAILABLE, NULL, "backup: %s", sqlite3_errstr(rc));
		goto fail;
	}
	if (sqlite3_close(dst) != SQLITE_OK || rename(tmp, path)) {
		dst = NULL;
		err_set(e, ERR_UNAVAILABLE, NULL, "backup: cannot write %s: %s", path, strerror(errno));
		goto fail;
	}
	free(tmp);
	return 0;
fail:
	sqlite3_close(dst);
	unlink(tmp);
	free(tmp);
	return -1;
}

static void cache_free(struct stmt_cache *c)
{
	for (int i = 0; i < c->n; i++)
		sqlite3_finalize(c->at[i].st);
	c->n = 0;
}

static void sq_close(struct store *st_)
{
	struct sq *s = SQ(st_);

	cache_free(&s->cache);
	sqlite3_close(s->db);
	if (s->gate)
		munmap(s->gate, sizeof(*s->gate));
	if (s->gate_fd >= 0)
		close(s->gate_fd);
	if (s->wal_fd >= 0)
		close(s->wal_fd);
	free(s);
}

/* --- reads that answer only what is durable -------------------------------------------------
 *
 * A commit is visible to readers as soon as SQLite has written it to the WAL, before the
 * fdatasync that makes it durable (group commit, tx_end). A read notes how many commits had
 * begun before its snapshot and returns once the WAL is synced that far, so that nothing it
 * shows (a subscription, a stored answer) can be lost by a crash after it was shown. With no
 * commit waiting for its sync that costs two atomic loads. */

static uint64_t read_mark(const struct sq *s)
{
	return s->gate ? __atomic_load_n(&s->gate->announced, __ATOMIC_ACQUIRE) : 0;
}

static int read_settle(struct sq *s, uint64_t mark, struct err *e)
{
	if (!s->gate || __atomic_load_n(&s->gate->synced, __ATOMIC_ACQUIRE) >= mark)
		return 0;
	return gate_sync(s->gate, s->wal_fd, mark, e);
}

/* what a read that cannot be answered gives back */
#define FREE_ALL(out, n) (free(*(out)), *(out) = NULL, *(n) = 0)
#define FREE_EACH(out, n, clear)                             \
	do {                                                 \
		for (size_t i_ = 0; i_ < *(n); i_++)         \
			clear(&(*(out))[i_]);                \
		FREE_ALL(out, n);                            \
	} while (0)

/* sq_<name>: read_<name>, answered once what it read is durable */
#define DURABLE_READ(name, params, args, undo)               \
	static int sq_##name params                          \
	{                                                    \
		struct sq *s_ = SQ(st_);                     \
		uint64_t mark = read_mark(s_);               \
		if (read_##name args)                        \
			return -1;                           \
		if (read_settle(s_, mark, e) == 0)           \
			return 0;                            \
		undo;                                        \
		return -1;                                   \
	}

DURABLE_READ(ping, (struct store *st_, struct err *e),
	     (st_, e), (void)0)
DURABLE_READ(plan_get, (struct store *st_, const char *id, struct plan *out, bool *found, struct err *e),
	     (st_, id, out, found, e), plan_clear(out))
DURABLE_READ(plan_list, (struct store *st_, const char *status, struct plan **out, size_t *n, struct err *e),
	     (st_, status, out, n, e), FREE_EACH(out, n, plan_clear))
DURABLE_READ(customer_get, (struct store *st_, const char *id, struct customer *out, bool *found, struct err *e),
	     (st_, id, out, found, e), customer_clear(out))
DURABLE_READ(session_get, (struct store *st_, const char *id, struct customer_session *out, bool *found,
			      struct err *e),
	     (st_, id, out, found, e), (void)0)
DURABLE_READ(customer_payments, (struct store *st_, const char *customer_id, int limit, struct payment **out,
				    size_t *n, struct err *e),
	     (st_, customer_id, limit, out, n, e), FREE_ALL(out, n))
DURABLE_READ(customer_entries, (struct store *st_, const char *customer_id, int limit, struct waitlist_entry **out,
				   size_t *n, struct err *e),
	     (st_, customer_id, limit, out, n, e), FREE_ALL(out, n))
DURABLE_READ(subs_to_remind, (struct store *st_, int64_t by, int limit, struct subscription **out, size_t *n,
				 struct err *e),
	     (st_, by, limit, out, n, e), FREE_EACH(out, n, subscription_clear))
DURABLE_READ(key_get, (struct store *st_, const char *key, struct key_record *out, bool *found, struct err *e),
	     (st_, key, out, found, e), key_record_clear(out))
DURABLE_READ(payment_totals, (struct store *st_, struct payment_total **out, size_t *n, struct err *e), (st_, out, n, e),
	     FREE_ALL(out, n))
DURABLE_READ(sub_totals, (struct store *st_, struct sub_total **out, size_t *n, struct err *e), (st_, out, n, e),
	     FREE_ALL(out, n))
DURABLE_READ(held_by_kind, (struct store *st_, const char *plan_id, int64_t *paying, int64_t *sessions, struct err *e),
	     (st_, plan_id, paying, sessions, e), (void)0)
DURABLE_READ(payments_in, (struct store *st_, const char *status, int limit, struct payment **out, size_t *n,
			       struct err *e),
	     (st_, status, limit, out, n, e), FREE_ALL(out, n))
DURABLE_READ(sub_get, (struct store *st_, const char *id, struct subscription *out, bool *found, struct err *e),
	     (st_, id, out, found, e), subscription_clear(out))
DURABLE_READ(sub_list, (struct store *st_, const char *customer_id, const char *status, const struct seq_page *pg,
			   struct subscription **out, size_t *n, struct err *e),
	     (st_, customer_id, status, pg, out, n, e), FREE_EACH(out, n, subscription_clear))
DURABLE_READ(audit_list, (struct store *st_, const struct audit_filter *f, const struct seq_page *pg,
			   struct audit_event **out, size_t *n, struct err *e),
	     (st_, f, pg, out, n, e), FREE_EACH(out, n, audit_event_clear))
DURABLE_READ(feed_read, (struct store *st_, int64_t after, const char *type, int limit, struct audit_event **out,
			   size_t *n, struct err *e),
	     (st_, after, type, limit, out, n, e), FREE_EACH(out, n, audit_event_clear))
DURABLE_READ(entry_get, (struct store *st_, const char *id, struct waitlist_entry *out, bool *found, struct err *e),
	     (st_, id, out, found, e), (void)0)
DURABLE_READ(waitlist_list, (struct store *st_, const char *plan_id, int64_t after, int limit,
			   struct waitlist_entry **out, size_t *n, struct err *e),
	     (st_, plan_id, after, limit, out, n, e), FREE_ALL(out, n))
DURABLE_READ(webhook_list, (struct store *st_, struct webhook **out, size_t *n, struct err *e),
	     (st_, out, n, e), FREE_EACH(out, n, webhook_clear))
DURABLE_READ(delivery_list, (struct store *st_, const char *endpoint_id, const struct seq_page *pg,
			   struct delivery **out, size_t *n, struct err *e),
	     (st_, endpoint_id, pg, out, n, e), FREE_ALL(out, n))
DURABLE_READ(subs_due, (struct store *st_, int64_t now, int limit, struct subscription **out, size_t *n,
		       struct err *e),
	     (st_, now, limit, out, n, e), FREE_EACH(out, n, subscription_clear))
DURABLE_READ(holds_overdue, (struct store *st_, int64_t now, int limit, struct subscription **out, size_t *n,
			   struct err *e),
	     (st_, now, limit, out, n, e), FREE_EACH(out, n, subscription_clear))
DURABLE_READ(charges_unrefunded, (struct store *st_, int limit, struct payment **out, size_t *n, struct err *e),
	     (st_, limit, out, n, e), FREE_ALL(out, n))
DURABLE_READ(mail_due, (struct store *st_, int64_t now, int limit, struct mail **out, size_t *n, struct err *e),
	     (st_, now, limit, out, n, e), FREE_EACH(out, n, mail_clear))
DURABLE_READ(mail_list, (struct store *st_, const char *status, const struct seq_page *pg, struct mail **out,
			 size_t *n, struct err *e),
	     (st_, status, pg, out, n, e), FREE_EACH(out, n, mail_clear))
DURABLE_READ(snapshot, (struct store *st_, const struct snapshot_visitor *v, struct err *e),
	     (st_, v, e), (void)0)

static const struct store_ops sqlite_ops = {
	.name = "sqlite",
	.login_link = sq_login_link,
	.login_exchange = sq_login_exchange,
	.session_get = sq_session_get,
	.session_end = sq_session_end,
	.customer_payments = sq_customer_payments,
	.customer_entries = sq_customer_entries,
	.subs_to_remind = sq_subs_to_remind,
	.remind = sq_remind,
	.close = sq_close,
	.ping = sq_ping,
	.reset = sq_reset,
	.plan_create = sq_plan_create,
	.plan_get = sq_plan_get,
	.plan_list = sq_plan_list,
	.plan_update = sq_plan_update,
	.customer_create = sq_customer_create,
	.customer_get = sq_customer_get,
	.customer_processor_set = sq_customer_processor_set,
	.key_claim = sq_key_claim,
	.key_finish = sq_key_finish,
	.key_forget = sq_key_forget,
	.key_get = sq_key_get,
	.hold = sq_hold,
	.transition = sq_transition,
	.payments_in = sq_payments_in,
	.subs_due = sq_subs_due,
	.payment_mark = sq_payment_mark,
	.held_by_kind = sq_held_by_kind,
	.payment_totals = sq_payment_totals,
	.sub_totals = sq_sub_totals,
	.attempt_take = sq_attempt_take,
	.payment_record = sq_payment_record,
	.sub_get = sq_sub_get,
	.sub_list = sq_sub_list,
	.audit_list = sq_audit_list,
	.feed_read = sq_feed_read,
	.waitlist_join = sq_waitlist_join,
	.entry_get = sq_entry_get,
	.waitlist_list = sq_waitlist_list,
	.waitlist_leave = sq_waitlist_leave,
	.webhook_create = sq_webhook_create,
	.webhook_list = sq_webhook_list,
	.webhook_delete = sq_webhook_delete,
	.webhook_advance = sq_webhook_advance,
	.delivery_list = sq_delivery_list,
	.lease_take = sq_lease_take,
	.holds_overdue = sq_holds_overdue,
	.charges_unrefunded = sq_charges_unrefunded,
	.keys_purge = sq_keys_purge,
	.mail_due = sq_mail_due,
	.mail_mark = sq_mail_mark,
	.mail_list = sq_mail_list,
	.snapshot = sq_snapshot,
	.backup = sq_backup,
};

/* Waits for a lock another connection holds (the write lock, or a WAL read mark). SQLite's
 * own handler sleeps 1, 2, 5 ... 100 ms between tries, so a waiter often sleeps long after
 * the lock came free: at 16 connections those sleeps were most of a purchase's p99. Here the
 * sleeps start at 100 us and double up to 2 ms; the bound stays BUSY_TIMEOUT_MS. */
static int busy_wait(void *arg, int attempt)
{
	struct busy *b = arg;
	int64_t us = attempt < 5 ? 100LL << attempt : 2000;
	struct timespec ts = {0, (long)us * 1000L};

	if (attempt == 0)
		b->waited = b->carry;
	if (b->waited >= (int64_t)BUSY_TIMEOUT_MS * 1000)
		return 0;
	nanosleep(&ts, NULL);
	b->waited += us;
	return 1;
}

static int db_open(const char *path, sqlite3 **db, struct busy *waited, struct err *e)
{
	int rc = sqlite3_open_v2(path, db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);

	if (rc != SQLITE_OK) {
		err_set(e, ERR_UNAVAILABLE, NULL, "cannot open %s: %s", path,
			*db ? sqlite3_errmsg(*db) : sqlite3_errstr(rc));
		return -1;
	}
	sqlite3_busy_handler(*db, busy_wait, waited);
	rc = sqlite3_exec(*db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;"
			  " PRAGMA foreign_keys = ON;", NULL, NULL, NULL);
	return rc == SQLITE_OK ? 0 : db_error(*db, rc, e);
}

/* Creates the schema or brings it to SCHEMA_VERSION, in one write transaction, so that many
 * workers starting at once apply it once. */
static int user_version(sqlite3 *db)
{
	sqlite3_stmt *st = NULL;
	int version = -1;

	if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
		version = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	return version;
}

static int schema(struct sq *s, struct err *e)
{
	sqlite3_stmt *st = NULL;
	int version = 0, legacy = 0, rc;

	/* Up to date: a read, so a store write-locked from outside can still be opened for reads. */
	if (user_version(s->db) == SCHEMA_VERSION)
		return 0;
	rc = sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
	if (rc == SQLITE_OK && sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		version = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	st = NULL;
	if (rc == SQLITE_OK && version < SCHEMA_VERSION &&
	    sqlite3_prepare_v2(s->db, "SELECT count(*) FROM pragma_table_info('audit_events') WHERE name = 'before'",
			       -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
		legacy = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	if (rc == SQLITE_OK && version < SCHEMA_VERSION) {
		/* A new file gets the schema; an older one each migration after its version. */
		if (version == 0 && !legacy)
			rc = sqlite3_exec(s->db, SCHEMA, NULL, NULL, NULL);
		if (rc == SQLITE_OK && version == 0 && legacy)
			rc = sqlite3_exec(s->db, MIGRATE_1_2, NULL, NULL, NULL);
		if (rc == SQLITE_OK && (legacy || version == 2))
			rc = sqlite3_exec(s->db, MIGRATE_2_3, NULL, NULL, NULL);
		if (rc == SQLITE_OK && (legacy || version == 2 || version == 3))
			rc = sqlite3_exec(s->db, WEBHOOK_TABLES, NULL, NULL, NULL);
		if (rc == SQLITE_OK && version <= 4)
			rc = sqlite3_exec(s->db, MIGRATE_4_5, NULL, NULL, NULL);
		if (rc == SQLITE_OK && version <= 5)
			rc = sqlite3_exec(s->db, MIGRATE_5_6, NULL, NULL, NULL);
		if (rc == SQLITE_OK && version <= 6)
			rc = sqlite3_exec(s->db, MIGRATE_6_7, NULL, NULL, NULL);
		if (rc == SQLITE_OK)
			rc = sqlite3_exec(s->db, MIGRATE_7_8, NULL, NULL, NULL);
		if (rc == SQLITE_OK)
			rc = sqlite3_exec(s->db, MIGRATE_8_9, NULL, NULL, NULL);
		if (rc == SQLITE_OK)
			rc = sqlite3_exec(s->db, "PRAGMA user_version = " STR(SCHEMA_VERSION), NULL, NULL, NULL);
	}
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
	if (rc != SQLITE_OK) {
		db_error(s->db, rc, e);
		sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
		return -1;
	}
	return 0;
}

/* Sets a connection up for group commit: its gate, the WAL file to sync, and commits that
 * leave the sync to tx_end. The WAL exists once the connection has read (schema() did), and
 * stays the same file while any connection to the database is open, as this one is. Without
 * a gate the connection keeps synchronous=FULL and writers meet at SQLite's lock alone. */
static int group_commit(sqlite3 *db, const char *path, struct gate **g, int *gate_fd, int *wal_fd, struct err *e)
{
	char *wal = xasprintf("%s-wal", path);
	int rc;

	if ((*g = gate_map(path, gate_fd)) && (*wal_fd = open(wal, O_RDONLY | O_CLOEXEC)) < 0) {
		munmap(*g, sizeof(**g));
		*g = NULL;
		close(*gate_fd);
		*gate_fd = -1;
	}
	free(wal);
	if (!*g)
		return 0;
	rc = sqlite3_exec(db, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL);
	return rc == SQLITE_OK ? 0 : db_error(db, rc, e);
}

struct store *store_sqlite_open(const char *url, struct err *e)
{
	const char *path = url + strlen("sqlite://");
	struct sq *s = xcalloc(1, sizeof(*s));

	s->base.ops = &sqlite_ops;
	s->wal_fd = s->gate_fd = -1;
	if (!*path) {
		err_set(e, ERR_UNAVAILABLE, NULL, "NUMATIX_DB sqlite:// names no file");
		goto fail;
	}
	if (db_open(path, &s->db, &s->busy, e) || schema(s, e) ||
	    group_commit(s->db, path, &s->gate, &s->gate_fd, &s->wal_fd, e))
		goto fail;
	return &s->base;
fail:
	sq_close(&s->base);
	return NULL;
}
