/* raw_purchase.c - the bench's baseline: the raw durable purchase transaction on the same
 * SQLite file, with no HTTP, no FastCGI and no service around it. N processes each commit,
 * as fast as they can for S seconds, one transaction that takes a seat of the plan, inserts
 * the pending subscription and its audit event (WAL, synchronous=FULL, BEGIN IMMEDIATE, the
 * same busy timeout as the store). Prints transactions per second.
 *
 * With a payment latency it reproduces the original service's design instead: the payment
 * call (a sleep) inside the open transaction, so every purchase of the plan waits for the one
 * before it.
 *
 *   raw_purchase <db file> <plan id> <processes> <seconds> [payment ms inside the transaction] */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long loop(const char *path, const char *plan, double seconds, int who, int payment_ms)
{
	static const char *const sql[] = {
		"BEGIN IMMEDIATE",
		"UPDATE plans SET subscriptions_left = subscriptions_left - 1, subscriptions_held = subscriptions_held + 1"
		" WHERE id = ?1 AND status = 'active' AND subscriptions_left > 0",
		"INSERT INTO customers (id, email, name, created_at) VALUES (printf('%024x', ?2), printf('raw%d@bench', ?2), 'Raw', 0)",
		"INSERT INTO subscriptions (id, plan_id, customer_id, idem_key, status, amount_cents, duration_days,"
		" token_hash, hold_deadline, created_at, updated_at)"
		" VALUES (printf('%024x', ?2), ?1, printf('%024x', ?2), printf('raw-%d', ?2), 'pending', 100, 30, '', 0, 0, 0)",
		"INSERT INTO audit_events (id, at, action, actor_type, resource_type, resource_id, plan_id)"
		" VALUES (printf('%024x', ?2), 0, 'seat.held', 'system', 'subscription', printf('%024x', ?2), ?1)",
		"COMMIT",
	};
	enum { N = sizeof(sql) / sizeof(sql[0]) };
	sqlite3_stmt *st[N];
	sqlite3 *db;
	double end = now() + seconds;
	/* ids of their own: this run's process id and its place in it, so runs on one file never meet */
	long done = 0, id = ((long)getpid() << 40) + ((long)who << 32);

	if (sqlite3_open(path, &db) != SQLITE_OK)
		return -1;
	/* A writer still waiting for the lock when the time is up gives up, not counted. */
	sqlite3_busy_timeout(db, (int)(seconds * 1000));
	sqlite3_exec(db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL", NULL, NULL, NULL);
	for (int i = 0; i < N; i++)
		if (sqlite3_prepare_v2(db, sql[i], -1, &st[i], NULL) != SQLITE_OK) {
			fprintf(stderr, "raw_purchase: %s\n", sqlite3_errmsg(db));
			return -1;
		}
	while (now() < end) {
		int i;
		id++;
		for (i = 0; i < N; i++) {
			sqlite3_reset(st[i]);
			if (sqlite3_bind_parameter_count(st[i]) >= 1)
				sqlite3_bind_text(st[i], 1, plan, -1, SQLITE_STATIC);
			if (sqlite3_bind_parameter_count(st[i]) >= 2)
				sqlite3_bind_int64(st[i], 2, id);
			if (sqlite3_step(st[i]) != SQLITE_DONE) {
				if (now() < end)
					fprintf(stderr, "raw_purchase: %s\n", sqlite3_errmsg(db));
				sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
				break;
			}
			if (i == 1 && payment_ms) {
				struct timespec ts = {payment_ms / 1000, (long)(payment_ms % 1000) * 1000000L};
				nanosleep(&ts, NULL);
			}
		}
		if (i < N)
			break;
		done++;
	}
	for (int i = 0; i < N; i++)
		sqlite3_finalize(st[i]);
	sqlite3_close(db);
	return done;
}

int main(int argc, char **argv)
{
	int procs, fds[2];
	double seconds, start;
	long total = 0, n;

	if (argc != 5 && argc != 6)
		return 2;
	procs = atoi(argv[3]);
	seconds = atof(argv[4]);
	if (pipe(fds))
		return 1;
	start = now();
	for (int i = 0; i < procs; i++)
		if (fork() == 0) {
			n = loop(argv[1], argv[2], seconds, i + 1, argc == 6 ? atoi(argv[5]) : 0);
			_exit(write(fds[1], &n, sizeof(n)) == sizeof(n) ? 0 : 1);
		}
	for (int i = 0; i < procs; i++)
		if (read(fds[0], &n, sizeof(n)) == sizeof(n) && n > 0)
			total += n;
	while (wait(NULL) > 0)
		;
	printf("%.0f\n", (double)total / (now() - start));
	return 0;
}
