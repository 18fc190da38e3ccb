/* server.c - the FastCGI server's master process. It never opens the store while it serves: each
 * worker, the reaper and the webhook sender open their own handle after fork and keep it. */
#include "server.h"

#include <errno.h>
#include <fcgiapp.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "app.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "reaper.h"
#include "mailer.h"
#include "renewer.h"
#include "webhook.h"
#include "store.h"
#include "util.h"
#include "worker.h"

#define LISTEN_FD_ENV "NUMATIX_LISTEN_FD"
#define STOP_GRACE_S 30

/* The background processes beside the workers, each one long-lived with one store handle. */
enum { SVC_REAPER, SVC_SENDER, SVC_RENEWER, SVC_MAILER, NSVC };

struct pool {
	pid_t *pids;          /* 0: a free slot to fill */
	int n;
	pid_t svc[NSVC];      /* 0: to start */
	pid_t svc_dead[NSVC]; /* the last one killed, whose lease its successor releases; or 0 */
	int64_t respawn_at;   /* ms; a worker that dies at once is not respawned in a tight loop */
};

static bool is_unix_path(const char *addr)
{
	return strchr(addr, '/') || !strchr(addr, ':');
}

static int listen_open(const struct config *cfg)
{
	const char *inherited = getenv(LISTEN_FD_ENV);
	struct stat st;
	int fd;

	if (inherited && *inherited) {
		fd = atoi(inherited);
		unsetenv(LISTEN_FD_ENV);
		fcntl(fd, F_SETFD, FD_CLOEXEC);
		return fd;
	}
	/* A socket file left by a crashed server would make bind() fail. */
	if (is_unix_path(cfg->socket) && stat(cfg->socket, &st) == 0 && S_ISSOCK(st.st_mode))
		unlink(cfg->socket);
	fd = FCGX_OpenSocket(cfg->socket, 1024);
	if (fd < 0) {
		LOG_ERROR(NULL, "cannot listen on %s: %s", cfg->socket, strerror(errno));
		return -1;
	}
	/* The web server's user shares our group (www-data under Debian's nginx). */
	if (is_unix_path(cfg->socket))
		chmod(cfg->socket, 0660);
	fcntl(fd, F_SETFD, FD_CLOEXEC);
	return fd;
}

/* Started as root: once the socket is bound (and given to the account, which nginx reaches
 * through the group), the master becomes NUMATIX_USER for good, before it forks a worker or
 * opens the store; its children and a SIGHUP re-exec inherit that. The store's files must
 * belong to that account. -1 when the account is unknown or root cannot be given up. */
static int drop_root(const struct config *cfg)
{
	char name[128], *group;
	struct passwd *pw;
	struct group *gr;
	uid_t uid;
	gid_t gid;

	if (geteuid() != 0)
		return 0;
	if (!cfg->run_as) {
		LOG_WARN(NULL, "running as root: set NUMATIX_USER to the account the server should run as");
		return 0;
	}
	snprintf(name, sizeof(name), "%s", cfg->run_as);
	if ((group = strchr(name, ':')))
		*group++ = '\0';
	if (!(pw = getpwnam(name))) {
		LOG_ERROR(NULL, "NUMATIX_USER: there is no user %s", name);
		return -1;
	}
	uid = pw->pw_uid;
	gid = pw->pw_gid;
	if (group) {
		if (!(gr = getgrnam(group))) {
			LOG_ERROR(NULL, "NUMATIX_USER: there is no group %s", group);
			return -1;
		}
		gid = gr->gr_gid;
	}
	if (is_unix_path(cfg->socket) && chown(cfg->socket, uid, gid)) {
		LOG_ERROR(NULL, "cannot give %s to %s: %s", cfg->socket, cfg->run_as, strerror(errno));
		return -1;
	}
	if (initgroups(name, gid) || setgid(gid) || setuid(uid) || setuid(0) == 0) {
		LOG_ERROR(NULL, "cannot become %s: %s", cfg->run_as, strerror(errno));
		return -1;
	}
	LOG_INFO(NULL, "running as %s (uid %d, gid %d)", cfg->run_as, (int)uid, (int)gid);
	return 0;
}

static pid_t spawn_worker(int fd, const struct config *cfg, const sigset_t *orig)
{
	pid_t pid = fork();

	if (pid == 0) {
		sigprocmask(SIG_SETMASK, orig, NULL);
		exit(worker_run(fd, cfg));
	}
	if (pid < 0)
		LOG_ERROR(NULL, "fork: %s", strerror(errno));
	return pid < 0 ? 0 : pid;
}

/* A stop asked of a background process while it works (its signals stay blocked). */
static bool stop_pending(void)
{
	sigset_t pending;

	sigpending(&pending);
	return sigismember(&pending, SIGTERM) || sigismember(&pending, SIGINT) || sigismember(&pending, SIGHUP);
}

static void reap_pass(struct ledger *lg, const struct config *cfg, const char *holder)
{
	struct reap_stats st;
	struct err e = {0};

	(void)cfg;
	if (reaper_run(lg, holder, &st, &e))
		LOG_WARN(NULL, "reaper: %s", e.msg);
	else if (st.ran)
		metrics_reaper_pass(st.expired, st.refunded);
}

static void send_pass(struct ledger *lg, const struct config *cfg, const char *holder)
{
	struct deliver_stats st;
	struct err e = {0};

	if (webhook_deliver(lg, holder, (int64_t)cfg->webhook_retry_h * 3600 * 1000, stop_pending, &st, &e))
		LOG_WARN(NULL, "webhooks: %s", e.msg);
}

static void renew_pass(struct ledger *lg, const struct config *cfg, const char *holder)
{
	struct renew_stats st;
	struct err e = {0};

	(void)cfg;
	if (renewer_run(lg, holder, stop_pending, &st, &e))
		LOG_WARN(NULL, "renewer: %s", e.msg);
	else if (st.ran)
		metrics_renewer_pass(&st.life);
}

static void mail_pass(struct ledger *lg, const struct config *cfg, const char *holder)
{
	/* passes that ended on a server taking no mail, in a row, and when the next may run */
	static int outages;
	static int64_t next_pass_at;
	struct mail_settings ms;
	struct mail_stats st;
	struct err e = {0};

	if (now_ms() < next_pass_at)
		return;
	mailer_settings(&ms, cfg);
	int rc = mailer_run(lg, &ms, holder, stop_pending, &st, &e);
	if (rc)
		LOG_WARN(NULL, "mailer: %s", e.msg);
	else if (st.ran)
		metrics_mailer_pass(&st);
	outages = rc || st.unavailable ? outages + 1 : st.ran ? 0 : outages;
	next_pass_at = now_ms() + mail_outage_wait_ms(outages);
}

static const struct service {
	const char *name;     /* for ps and for the operator */
	const char *lease;    /* the lease a pass holds */
	void (*pass)(struct ledger *lg, const struct config *cfg, const char *holder);
} services[NSVC] = {
	[SVC_REAPER] = {"numatix-reaper", REAPER_LEASE, reap_pass},
	[SVC_SENDER] = {"numatix-sender", WEBHOOK_LEASE, send_pass},
	[SVC_RENEWER] = {"numatix-renewer", RENEWER_LEASE, renew_pass},
	[SVC_MAILER] = {"numatix-mailer", MAILER_LEASE, mail_pass},
};

/* A predecessor killed mid-pass (kill -9, the OOM killer) left its lease held until it runs
 * out (the reaper's a minute). It is dead for sure — the master collected it — so its lease is
 * given back at once: the same step as its own release, taken under its name. A holder on
 * another machine is not known dead; its lease runs out. */
static void release_dead(struct store *s, const struct service *svc, pid_t dead)
{
	char holder[96];
	struct err e = {0};
	bool taken = false;

	lease_holder_of(dead, holder);
	if (s->ops->lease_take(s, svc->lease, holder, now_ms(), 0, &taken, &e))
		LOG_WARN(NULL, "%s: releasing the lease of %s: %s", svc->name, holder, e.msg);
	else if (taken)
		LOG_INFO(NULL, "%s: released the lease of %s, killed before it could", svc->name, holder);
}

/* A background process: a pass every interval (the reaper's NUMATIX_REAP_INTERVAL; the webhook
 * sender's one second). It keeps the master's blocked signals and waits for them between
 * passes, so a stop or a reload never cuts a pass short. dead: a predecessor killed, or 0. */
static void service_loop(const struct config *cfg, const struct service *svc, int interval_s, pid_t dead)
{
	struct timespec ts = {interval_s, 0};
	struct store *s = NULL;
	struct ledger lg;
	char holder[96];
	sigset_t stop;

	prctl(PR_SET_NAME, svc->name);
	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGHUP);
	lease_holder(holder);
	do {
		struct err e = {0};
		if (!s && !(s = store_open(cfg->db_url, &e))) {
			LOG_WARN(NULL, "%s: %s", svc->name, e.msg);
			continue;
		}
		if (dead) {
			release_dead(s, svc, dead);
			dead = 0;
		}
		app_ledger_init(&lg, s, cfg);
		svc->pass(&lg, cfg, holder);
	} while (sigtimedwait(&stop, NULL, &ts) < 0);
	store_close(s);
}

static pid_t spawn_service(const struct config *cfg, int which, pid_t dead)
{
	pid_t pid = fork();

	if (pid == 0) {
		service_loop(cfg, &services[which],
			     which == SVC_REAPER    ? cfg->reap_interval_s
			     : which == SVC_RENEWER ? cfg->renew_interval_s
			     : which == SVC_MAILER  ? cfg->mail_interval_s
						    : 1,
			     dead);
		_exit(0);
	}
	return pid < 0 ? 0 : pid;
}

static void fill(struct pool *p, int fd, const struct config *cfg, const sigset_t *orig)
{
	if (now_ms() < p->respawn_at)
		return;
	for (int i = 0; i < p->n; i++)
		if (!p->pids[i] && (p->pids[i] = spawn_worker(fd, cfg, orig)) == 0)
			break;
	for (int i = 0; i < NSVC; i++)
		if (!p->svc[i])
			if ((p->svc[i] = spawn_service(cfg, i, p->svc_dead[i])))
				p->svc_dead[i] = 0;
}

/* Collects exited children; a worker's slot is freed for respawn. */
static void collect(struct pool *p, bool stopping)
{
	int status;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		bool svc = false;
		for (int i = 0; i < NSVC; i++)
			if (pid == p->svc[i]) {
				p->svc[i] = 0;
				if (WIFSIGNALED(status)) {
					p->svc_dead[i] = pid;
					LOG_WARN(NULL, "%s %d ended (signal %d); starting another", services[i].name, (int)pid,
						 WTERMSIG(status));
				}
				svc = true;
				if (!stopping)
					p->respawn_at = now_ms() + 1000;
			}
		if (svc)
			continue;
		for (int i = 0; i < p->n; i++)
			if (p->pids[i] == pid) {
				p->pids[i] = 0;
				if (!stopping) {
					metrics_worker_restart();
					LOG_WARN(NULL, "worker %d ended (%s %d); starting another", (int)pid,
						 WIFSIGNALED(status) ? "signal" : "status",
						 WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
					if (WIFEXITED(status))
						p->respawn_at = now_ms() + 1000;
				}
			}
	}
}

static int live(const struct pool *p)
{
	int n = 0;

	for (int i = 0; i < NSVC; i++)
		n += p->svc[i] != 0;
	for (int i = 0; i < p->n; i++)
		n += p->pids[i] != 0;
	return n;
}

static void signal_all(const struct pool *p, int sig)
{
	for (int i = 0; i < p->n; i++)
		if (p->pids[i])
			kill(p->pids[i], sig);
	for (int i = 0; i < NSVC; i++)
		if (p->svc[i])
			kill(p->svc[i], sig);
}

/* SIGTERM to every child, then wait for in-flight requests to finish. */
static void stop_all(struct pool *p, const sigset_t *waitset)
{
	struct timespec ts = {1, 0};
	int64_t deadline = now_ms() + STOP_GRACE_S * 1000;

	signal_all(p, SIGTERM);
	while (live(p) > 0 && now_ms() < deadline) {
		sigtimedwait(waitset, NULL, &ts);
		collect(p, true);
	}
	if (live(p) > 0) {
		LOG_WARN(NULL, "children still running after %ds; killing them", STOP_GRACE_S);
		signal_all(p, SIGKILL);
		while (waitpid(-1, NULL, 0) > 0)
			;
	}
}

/* After the last child has gone: an SQLite store's last connection to close checkpoints the
 * WAL into the database and deletes it, but workers closing at the same moment may each see
 * another still open. Opened and closed once more here, alone, it is surely the last, so the
 * database file by itself holds every commit after a stop. */
static void checkpoint(const struct config *cfg)
{
	struct err e = {0};
	struct store *s;

	if (strcmp(store_kind(cfg->db_url), "sqlite"))
		return;
	if (!(s = store_open(cfg->db_url, &e)))
		LOG_WARN(NULL, "checkpoint at stop: %s", e.msg);
	store_close(s);
}

int server_run(const struct config *cfg, char **argv)
{
	struct pool p = {0};
	sigset_t set, orig;
	int fd, sig, rc = 1;
	char fdbuf[16];

	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigprocmask(SIG_BLOCK, &set, &orig);
	signal(SIGPIPE, SIG_IGN);
	if ((fd = listen_open(cfg)) < 0 || drop_root(cfg))
		return 1;
	/* Before the first fork: the workers and the background processes count into the same memory. */
	metrics_init();
	p.n = cfg->workers;
	p.pids = xcalloc((size_t)p.n, sizeof(*p.pids));
	fill(&p, fd, cfg, &orig);
	LOG_INFO(NULL, "listening on %s with %d workers", cfg->socket, p.n);
	/* The socket accepts from here on (workers take connections as they come up). */
	notify("READY=1\nSTATUS=serving");
	for (;;) {
		/* A child of the image before a SIGHUP re-exec may have ended while SIGCHLD was not
		 * blocked, which discards it: look for ended children every second regardless. */
		int64_t wait = p.respawn_at && p.respawn_at - now_ms() < 1000 ? p.respawn_at - now_ms() : 1000;
		if (wait < 0)
			wait = 0;
		struct timespec ts = {wait / 1000, (long)(wait % 1000) * 1000000L};
		sig = sigtimedwait(&set, NULL, &ts);
		if (sig == SIGTERM || sig == SIGINT) {
			LOG_INFO(NULL, "stopping: in-flight requests finish first");
			notify("STOPPING=1");
			stop_all(&p, &set);
			checkpoint(cfg);
			if (is_unix_path(cfg->socket))
				unlink(cfg->socket);
			rc = 0;
			break;
		}
		if (sig == SIGHUP) {
			/* The new image serves on the same socket; the old workers finish their
			 * requests and are reaped by it, as its children still. */
			LOG_INFO(NULL, "reloading: re-executing with the listening socket kept open");
			/* The new image says READY=1 again once it serves. */
			notify("RELOADING=1");
			signal_all(&p, SIGTERM);
			fcntl(fd, F_SETFD, 0);
			snprintf(fdbuf, sizeof(fdbuf), "%d", fd);
			setenv(LISTEN_FD_ENV, fdbuf, 1);
			sigprocmask(SIG_SETMASK, &orig, NULL);
			execv("/proc/self/exe", argv);
			LOG_ERROR(NULL, "re-exec failed: %s", strerror(errno));
			sigprocmask(SIG_BLOCK, &set, NULL);
			fcntl(fd, F_SETFD, FD_CLOEXEC);
		}
		collect(&p, false);
		if (p.respawn_at && now_ms() >= p.respawn_at)
			p.respawn_at = 0;
		fill(&p, fd, cfg, &orig);
	}
	free(p.pids);
	close(fd);
	return rc;
}
