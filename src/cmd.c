/* cmd.c - the commands of the one binary, in one table. */
#include "cmd.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcgiapp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app.h"
#include "check.h"
#include "config.h"
#include "http.h"
#include "ids.h"
#include "log.h"
#include "reaper.h"
#include "webhook.h"
#include "mailer.h"
#include "renewer.h"
#include "router.h"
#include "server.h"
#include "store.h"
#include "util.h"
#include "worker.h"

struct demo_plan {
	const char *name, *description;
	int64_t price_cents;
	enum period_unit interval;
	int64_t interval_count, capacity;
	bool renews;
	const char *features[4];
};

static const struct demo_plan demo_plans[] = {
	{"C Systems Workshop", "Two days of hands-on systems programming in C, in a room of twelve.",
	 49000, PERIOD_DAY, 30, 12, false, {"Two full days", "Printed notes", "Lunch included", NULL}},
	{"Beta Access", "Early access to the next release, with a direct line to the team.",
	 0, PERIOD_MONTH, 1, 100, true, {"Early builds", "Private forum", NULL, NULL}},
	{"Database Internals Cohort", "Eight weeks through storage engines, transactions and recovery.",
	 120000, PERIOD_WEEK, 8, 25, false, {"Weekly live sessions", "Code reviews", "Certificate", NULL}},
};

/* The store with a ledger over it, for a command. */
static struct store *open_store(const struct config *cfg, struct ledger *lg)
{
	struct err e = {0};
	struct store *s = store_open(cfg->db_url, &e);

	if (!s)
		fprintf(stderr, "numatix: %s\n", e.msg);
	else
		app_ledger_init(lg, s, cfg);
	return s;
}

static int cmd_seed(const struct config *cfg, int argc, char **argv)
{
	struct actor a = {"seed", "system", "seed", NULL};
	struct ledger lg;
	struct store *s = open_store(cfg, &lg);
	int created = 0, rc = 1;

	(void)argc;
	(void)argv;
	if (!s)
		return 1;
	for (size_t i = 0; i < sizeof(demo_plans) / sizeof(demo_plans[0]); i++) {
		const struct demo_plan *d = &demo_plans[i];
		struct plan p = {0};
		struct err e = {0};

		id_new(p.id);
		p.name = xstrdup(d->name);
		p.description = xstrdup(d->description);
		p.price_cents = d->price_cents;
		p.interval = d->interval;
		p.interval_count = d->interval_count;
		p.renews = d->renews;
		strcpy(p.timezone, "UTC");
		p.total_capacity = p.subscriptions_left = d->capacity;
		p.max_per_order = PLAN_MAX_PER_ORDER_DEFAULT;
		strcpy(p.status, "active");
		p.features = json_object_new_array();
		for (int f = 0; d->features[f]; f++)
			json_object_array_add(p.features, json_object_new_string(d->features[f]));
		p.created_at = p.updated_at = now_ms();
		if (ledger_plan_create(&lg, &a, &p, &e) == 0)
			created++;
		else if (!e.code || strcmp(e.code, "PLAN_NAME_TAKEN")) {
			fprintf(stderr, "numatix: seeding %s: %s\n", d->name, e.msg);
			plan_clear(&p);
			goto out;
		}
		plan_clear(&p);
	}
	printf("seed: %d demo plans created, %zu present\n", created, sizeof(demo_plans) / sizeof(demo_plans[0]));
	rc = 0;
out:
	store_close(s);
	return rc;
}

static int cmd_reset(const struct config *cfg, int argc, char **argv)
{
	struct store *s;
	struct ledger lg;
	struct err e = {0};
	int rc = 1;

	if (argc < 3 || strcmp(argv[2], "--yes")) {
		fprintf(stderr, "numatix: reset deletes every plan, subscription and payment; run 'numatix reset --yes'\n");
		return 2;
	}
	if (!(s = open_store(cfg, &lg)))
		return 1;
	if (s->ops->reset(s, &e))
		fprintf(stderr, "numatix: reset: %s\n", e.msg);
	else
		rc = 0;
	store_close(s);
	return rc;
}

static void print_violation(void *arg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void print_violation(void *arg, const char *fmt, ...)
{
	va_list ap;

	(void)arg;
	fputs("violation: ", stdout);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
}

static int cmd_check(const struct config *cfg, int argc, char **argv)
{
	struct store *s;
	struct ledger lg;
	struct err e = {0};
	int violations = 0, rc = 1;

	(void)argc;
	(void)argv;
	if (!(s = open_store(cfg, &lg)))
		return 1;
	if (check_run(&lg, print_violation, NULL, &violations, &e))
		fprintf(stderr, "numatix: check: %s\n", e.msg);
	else if (violations)
		printf("check: %d violations\n", violations);
	else {
		printf("check: all invariants hold\n");
		rc = 0;
	}
	store_close(s);
	return rc;
}

static int cmd_deliver(const struct config *cfg, int argc, char **argv)
{
	struct deliver_stats st;
	struct store *s;
	struct ledger lg;
	struct err e = {0};
	char holder[96];
	int rc = 1;

	(void)argc;
	(void)argv;
	if (!(s = open_store(cfg, &lg)))
		return 1;
	lease_holder(holder);
	if (webhook_deliver(&lg, holder, (int64_t)cfg->webhook_retry_h * 3600 * 1000, NULL, &st, &e))
		fprintf(stderr, "numatix: deliver: %s\n", e.msg);
	else {
		if (st.ran)
			printf("deliver: %d delivered, %d failed, %d to retry\n", st.delivered, st.failed, st.retrying);
		else
			printf("deliver: another sender is running; nothing done\n");
		rc = 0;
	}
	store_close(s);
	return rc;
}

static int cmd_renew(const struct config *cfg, int argc, char **argv)
{
	struct renew_stats st;
	struct store *s;
	struct ledger lg;
	struct err e = {0};
	char holder[96];
	int rc = 1;

	(void)argc;
	(void)argv;
	if (!(s = open_store(cfg, &lg)))
		return 1;
	lease_holder(holder);
	if (renewer_run(&lg, holder, NULL, &st, &e))
		fprintf(stderr, "numatix: renew: %s\n", e.msg);
	else {
		if (st.ran)
			printf("renew: %d renewed, %d past due, %d cancelled, %d ended, %d late renewals refunded, "
			       "%d left for the next pass, %d reminded\n", st.life.renewed, st.life.past_due,
			       st.life.cancelled, st.life.ended, st.life.refunded, st.life.unknown, st.life.reminded);
		else
			printf("renew: another renewer is running; nothing done\n");
		rc = 0;
	}
	store_close(s);
	return rc;
}

static int cmd_mail(const struct config *cfg, int argc, char **argv)
{
	struct mail_settings ms;
	struct mail_stats st;
	struct store *s;
	struct ledger lg;
	struct err e = {0};
	char holder[96];
	int rc = 1;

	(void)argc;
	(void)argv;
	if (!(s = open_store(cfg, &lg)))
		return 1;
	lease_holder(holder);
	mailer_settings(&ms, cfg);
	if (mailer_run(&lg, &ms, holder, NULL, &st, &e))
		fprintf(stderr, "numatix: mail: %s\n", e.msg);
	else {
		if (!ms.smtp.url)
			printf("mail: NUMATIX_SMTP_URL is not set; mails stay queued\n");
		else if (st.ran)
			printf("mail: %d sent, %d to retry, %d failed%s\n", st.sent, st.deferred, st.failed,
			       st.unavailable ? "; then the mail server took no more (see the log): the rest wait" : "");
		else
			printf("mail: another sender is running; nothing done\n");
		rc = 0;
	}
	store_close(s);
	return rc;
}

static int cmd_reap(const struct config *cfg, int argc, char **argv)
{
	struct reap_stats st;
	struct store *s;
	struct ledger lg;
	struct err e = {0};
	char holder[96];
	int rc = 1;

	(void)argc;
	(void)argv;
	if (!(s = open_store(cfg, &lg)))
		return 1;
	lease_holder(holder);
	if (reaper_run(&lg, holder, &st, &e))
		fprintf(stderr, "numatix: reap: %s\n", e.msg);
	else {
		if (st.ran)
			printf("reap: %d holds expired, %d charges refunded, %d keys purged\n", st.expired,
			       st.refunded, st.purged);
		else
			printf("reap: another reaper is running; nothing done\n");
		rc = 0;
	}
	store_close(s);
	return rc;
}

static int cmd_backup(const struct config *cfg, int argc, char **argv)
{
	struct store *s;
	struct ledger lg;
	struct err e = {0};
	int rc = 1;

	if (argc != 3 || argv[2][0] == '-') {
		fprintf(stderr, "numatix: backup needs one FILE to write: numatix backup FILE\n");
		return 2;
	}
	if (!(s = open_store(cfg, &lg)))
		return 1;
	if (!s->ops->backup)
		fprintf(stderr, "numatix: backup copies SQLite stores; back up %s with its own tool (%s)\n",
			s->ops->name, strcmp(s->ops->name, "mongodb") ? "pg_dump" : "mongodump");
	else if (s->ops->backup(s, argv[2], &e))
		fprintf(stderr, "numatix: %s\n", e.msg);
	else {
		printf("backup: %s written\n", argv[2]);
		rc = 0;
	}
	store_close(s);
	return rc;
}

/* The route table as served: METHOD PATTERN, one per line (for operators and the test that
 * holds www/openapi.yaml to it). */
static int cmd_routes(const struct config *cfg, int argc, char **argv)
{
	const char *method, *pattern;

	(void)cfg;
	(void)argc;
	(void)argv;
	for (int i = 0; (pattern = router_name(i, &method)); i++)
		printf("%s %s\n", method, pattern);
	return 0;
}

static int cmd_serve(const struct config *cfg, int argc, char **argv)
{
	(void)argc;
	return server_run(cfg, argv);
}

static int cmd_cgi(const struct config *cfg, int argc, char **argv)
{
	(void)argc;
	(void)argv;
	return worker_cgi(cfg);
}

static int cmd_worker(const struct config *cfg, int argc, char **argv)
{
	(void)argc;
	(void)argv;
	/* spawn-fcgi hands us the listening socket as stdin. */
	return worker_run(0, cfg);
}

static const struct cmd {
	const char *name;
	int (*fn)(const struct config *cfg, int argc, char **argv);
	const char *help;
} cmds[] = {
	{"serve", cmd_serve, "run the FastCGI server: socket, worker pool, reaper, webhook sender"},
	{"worker", cmd_worker, "serve FastCGI on the socket given as stdin (spawn-fcgi)"},
	{"cgi", cmd_cgi, "answer one CGI request (also chosen when GATEWAY_INTERFACE is set)"},
	{"seed", cmd_seed, "create the demo plans that are missing"},
	{"reset", cmd_reset, "delete all data (--yes)"},
	{"check", cmd_check, "verify the invariants on the live store; exit 1 on a violation"},
	{"reap", cmd_reap, "release expired holds and settle abandoned purchases once (for cron)"},
	{"renew", cmd_renew, "renew, retry and end the subscriptions that are due once (for cron)"},
	{"deliver", cmd_deliver, "send the webhook deliveries that are due once (for cron)"},
	{"mail", cmd_mail, "send the mails of the outbox that are due once (for cron)"},
	{"backup", cmd_backup, "copy the live SQLite store into FILE, consistently, while it serves"},
	{"routes", cmd_routes, "list the API's routes as the server matches them"},
};

/* The environment every command reads (README, *Configuration*). */
static const char ENVIRONMENT[] =
	"environment:\n"
	"  NUMATIX_DB             sqlite:///path/file.db, postgresql://..., or mongodb://...\n"
	"  NUMATIX_ADMIN_TOKEN    the admin bearer token (16 characters at least)\n"
	"  NUMATIX_SOCKET         FastCGI listen address: a unix socket path or host:port\n"
	"  NUMATIX_WORKERS        worker processes (default 2 per core)\n"
	"  NUMATIX_THREADS        requests in flight per worker (default 64)\n"
	"  NUMATIX_STORE_HANDLES  database connections per worker for writes, as many for reads (4)\n"
	"  NUMATIX_DB_REPLICA     a PostgreSQL standby for the public plan reads, within\n"
	"                         NUMATIX_REPLICA_MAX_LAG_MS of lag (1000)\n"
	"  NUMATIX_HOLD_TTL       seconds a seat stays held while its payment runs (600)\n"
	"  NUMATIX_CHECKOUT_TTL   seconds a checkout session holds its seats by default (900)\n"
	"  NUMATIX_OFFER_TTL      seconds a waiting-list offer holds its seats (86400)\n"
	"  NUMATIX_USER           the account (user or user:group) a server started as root becomes\n"
	"  NUMATIX_CORS_ORIGINS   origins whose pages may call the API, comma separated, or *\n"
	"  NUMATIX_LOG            stderr (default) or an absolute file path, JSON lines\n"
	"  NUMATIX_LOG_LEVEL      debug, info (default), warn or error\n"
	"  NUMATIX_PAYMENT_LATENCY_MS, NUMATIX_MAX_BODY, NUMATIX_REAP_INTERVAL,\n"
	"  NUMATIX_KEY_RETENTION_HOURS, NUMATIX_WEBHOOK_RETRY_HOURS (72)\n"
	"  NUMATIX_CONFIG         a file of KEY=VALUE lines for any of these; the environment wins\n";

/* Help goes to stdout and exits 0 when asked for; after a mistake, to stderr with 2. */
static int usage(FILE *out, int rc)
{
	fprintf(out, "usage: numatix <command> [--help]\n\ncommands:\n");
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		fprintf(out, "  %-8s %s\n", cmds[i].name, cmds[i].help);
	fprintf(out, "\n%s", ENVIRONMENT);
	return rc;
}

static bool wants_help(const char *arg)
{
	return arg && (!strcmp(arg, "--help") || !strcmp(arg, "-h") || !strcmp(arg, "help"));
}

int cmd_main(int argc, char **argv)
{
	const char *name = argc > 1 ? argv[1] : NULL;
	struct config cfg;
	struct err e = {0};
	int rc = 2;

	if (!name) {
		/* Started by a web server from cgi-bin, or by spawn-fcgi with a socket as stdin. */
		if (getenv("GATEWAY_INTERFACE"))
			name = "cgi";
		else if (!FCGX_IsCGI())
			name = "worker";
		else
			return usage(stderr, 2);
	}
	if (wants_help(name))
		return usage(stdout, 0);
	/* once, before any thread: the webhook sender's HTTP client */
	curl_global_init(CURL_GLOBAL_DEFAULT);
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		if (strcmp(cmds[i].name, name))
			continue;
		if (argc > 2 && wants_help(argv[2])) {
			printf("usage: numatix %s%s\n  %s\n\n%s", cmds[i].name,
			       !strcmp(cmds[i].name, "reset") ? " --yes" : !strcmp(cmds[i].name, "backup") ? " FILE" : "",
			       cmds[i].help, ENVIRONMENT);
			return 0;
		}
		if (config_load(&cfg, &e)) {
			fprintf(stderr, "numatix: %s\n", e.msg);
			if (!strcmp(name, "cgi")) {
				/* A web server shows stderr to nobody: the client still gets a JSON 503. */
				char *body = error_body("SERVICE_UNAVAILABLE", "The service is misconfigured", "-", NULL);
				printf("Status: 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n\r\n%s", body);
				free(body);
			}
			return 1;
		}
		if (log_open(cfg.log_level, cfg.log_path)) {
			fprintf(stderr, "numatix: NUMATIX_LOG: cannot open %s: %s\n", cfg.log_path, strerror(errno));
			config_free(&cfg);
			return 1;
		}
		rc = cmds[i].fn(&cfg, argc, argv);
		config_free(&cfg);
		return rc;
	}
	fprintf(stderr, "numatix: no command \"%s\"\n", name);
	return usage(stderr, 2);
}
