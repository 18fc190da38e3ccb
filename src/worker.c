/* worker.c - one worker process: NUMATIX_THREADS threads that each accept FastCGI requests
 * and keep their own store handle, so a worker keeps that many purchases in flight while
 * their payments run; and the single request of CGI. */
#include "worker.h"


#include <fcgiapp.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app.h"
#include "config.h"
#include "log.h"
#include "replica.h"
#include "router.h"
#include "store.h"
#include "util.h"

extern char **environ;

/* How bytes come in and go out: a FastCGI stream pair or stdin/stdout. */
struct io {
	int (*read)(void *ctx, char *buf, int n);    /* bytes read, 0 at the end */
	void (*write)(void *ctx, const char *buf, size_t n);
	void *in, *out;
};

static volatile sig_atomic_t stopping;
static int listen_fd = -1;
/* libfcgi's threaded example serialises accept(): one thread waits in it at a time. */
static pthread_mutex_t accept_lock = PTHREAD_MUTEX_INITIALIZER;

/* Wakes a thread out of a blocking call. With SA_RESTART the call starts again: accept() on
 * the listening fd, which by then is /dev/null, fails at once; any other call (a read of a
 * request, the payment's sleep) simply goes on. */
static void on_wake(int sig)
{
	(void)sig;
}

/* Reads the body: all of it when within the limit, else drains it so the gateway is not
 * left writing into a closed request, and keeps nothing. */
static void read_body(struct request *rq, const struct io *io, int max)
{
	/* RFC 3875: read no more than CONTENT_LENGTH; without it, read to the end. */
	size_t want = rq->content_length >= 0 ? (size_t)rq->content_length : SIZE_MAX;
	size_t cap = want < (size_t)max + 1 ? want : (size_t)max + 1, len = 0, drained = 0;
	char *buf = xmalloc(cap + 1), sink[4096];
	int n;

	while (len < cap && (n = io->read(io->in, buf + len, (int)(cap - len))) > 0)
		len += (size_t)n;
	if (len == (size_t)max + 1)
		while (len + drained < want &&
		       (n = io->read(io->in, sink, (int)(want - len - drained < sizeof(sink) ? want - len - drained : sizeof(sink)))) > 0)
			drained += (size_t)n;
	buf[len] = '\0';
	rq->body = buf;
	rq->body_len = len;
}

/* Opens the store on first use; a store that cannot be reached now is tried again on the
 * next request, so a worker never dies of it. */
static struct store *store_get(struct store **s, const struct config *cfg, const char *trace)
{
	struct err e = {0};

	if (!*s && !(*s = store_open(cfg->db_url, &e)))
		LOG_ERROR(trace, "store: %s", e.msg);
	return *s;
}

static void serve(struct store **s, struct replica *replica, const struct config *cfg, char **envp,
		  const struct io *io)
{
	struct request rq;
	struct response rs = {0};
	struct ledger lg;
	char *head;

	request_init(&rq, envp);
	rq.cfg = cfg;
	read_body(&rq, io, (int)router_body_limit(rq.method, rq.path, cfg->max_body));
	if (store_get(s, cfg, rq.trace_id)) {
		app_ledger_init(&lg, *s, cfg);
		lg.replica = replica;
		rq.lg = &lg;
		app_handle(&rq, &rs);
	} else
		response_error(&rs, &rq, 503, "SERVICE_UNAVAILABLE", "The store cannot be reached; retry shortly", NULL);
	head = response_head(&rs, &rq);
	io->write(io->out, head, strlen(head));
	if (rs.body && strcmp(rq.method, "HEAD"))
		io->write(io->out, rs.body, strlen(rs.body));
	free(head);
	response_free(&rs);
	request_free(&rq);
}

static int fcgi_read(void *ctx, char *buf, int n)
{
	return FCGX_GetStr(buf, n, ctx);
}

static void fcgi_write(void *ctx, const char *buf, size_t n)
{
	FCGX_PutStr(buf, (int)n, ctx);
}

struct thread {
	pthread_t id;
	const struct config *cfg;
	struct store *store;          /* the process's pool, shared */
	struct replica *replica;      /* the process's standby for public reads, shared, or NULL */
};

static void *serve_thread(void *arg)
{
	const struct thread *t = arg;
	struct store *store = t->store;
	FCGX_Request req;
	int rc;

	FCGX_InitRequest(&req, listen_fd, 0);
	for (;;) {
		pthread_mutex_lock(&accept_lock);
		rc = stopping ? -1 : FCGX_Accept_r(&req);
		pthread_mutex_unlock(&accept_lock);
		if (rc < 0)
			break;
		struct io io = {fcgi_read, fcgi_write, req.in, req.out};
		serve(&store, t->replica, t->cfg, req.envp, &io);
		FCGX_Finish_r(&req);
	}
	return NULL;
}

int worker_run(int fd, const struct config *cfg)
{
	struct sigaction sa = {0};
	struct thread *threads;
	struct store *pool;
	struct replica *replica;
	sigset_t stop, old;
	int n = cfg->threads, sig, devnull;

	listen_fd = fd;
	signal(SIGPIPE, SIG_IGN);
	sa.sa_handler = on_wake;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGUSR1, &sa, NULL);
	/* The threads never see a stop signal: this thread waits for it. */
	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &stop, &old);
	FCGX_Init();
	/* glibc gives threads arenas of their own, up to 8 per core, and each keeps what its
	 * thread freed: with 64 threads that was most of a worker's resident memory. Requests
	 * allocate little and briefly, so two arenas serve them as fast. */
	mallopt(M_ARENA_MAX, 2);
	threads = xcalloc((size_t)n, sizeof(*threads));
	pool = store_pool_new(cfg->db_url, cfg->store_handles);
	replica = cfg->db_replica_url ? replica_new(cfg->db_replica_url, cfg->store_handles, cfg->replica_max_lag_ms) : NULL;
	for (int i = 0; i < n; i++) {
		threads[i].cfg = cfg;
		threads[i].store = pool;
		threads[i].replica = replica;
		if (pthread_create(&threads[i].id, NULL, serve_thread, &threads[i])) {
			LOG_ERROR(NULL, "cannot start thread %d of %d", i + 1, n);
			n = i;
			break;
		}
	}
	do
		sig = sigwaitinfo(&stop, NULL);
	while (sig == SIGHUP || sig < 0);
	/* No new connection from now on, in any thread; a request under way finishes. The
	 * listening socket itself stays open for the other workers and the next image. */
	stopping = 1;
	devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
	dup2(devnull, listen_fd);
	for (int i = 0; i < n; i++)
		pthread_kill(threads[i].id, SIGUSR1);
	for (int i = 0; i < n; i++)
		pthread_join(threads[i].id, NULL);
	free(threads);
	replica_free(replica);
	store_close(pool);
	close(devnull);
	return 0;
}

static int stdio_read(void *ctx, char *buf, int n)
{
	return (int)fread(buf, 1, (size_t)n, ctx);
}

static void stdio_write(void *ctx, const char *buf, size_t n)
{
	fwrite(buf, 1, n, ctx);
}

int worker_cgi(const struct config *cfg)
{
	struct store *store = NULL;
	struct io io = {stdio_read, stdio_write, stdin, stdout};

	signal(SIGPIPE, SIG_IGN);
	/* (one request: the primary answers it all) */
	serve(&store, NULL, cfg, environ, &io);
	fflush(stdout);
	store_close(store);
	return 0;
}
