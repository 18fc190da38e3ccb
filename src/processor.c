/* processor.c - the processor a process uses, opened once per process on first use. */
#include "processor.h"

#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static struct processor *shared;
static pid_t shared_pid;

struct processor *processor_shared(const struct processor_settings *ps)
{
	struct processor *p;

	pthread_mutex_lock(&shared_lock);
	/* a forked child never uses its parent's handle (a SQLite connection, a TLS session) */
	if (shared && shared_pid != getpid())
		shared = NULL;
	if (!shared) {
		if (!strcmp(ps->kind, "sim"))
			shared = processor_sim_open(ps->sim_db, ps->latency_ms);
		else if (!strcmp(ps->kind, "stripe"))
			shared = processor_stripe_open(ps->stripe_key, ps->stripe_api, ps->currency, ps->webhook_secrets);
		if (!shared)
			LOG_ERROR(NULL, "the %s payment processor cannot be opened", ps->kind);
		shared_pid = getpid();
	}
	p = shared;
	pthread_mutex_unlock(&shared_lock);
	return p;
}

const char *pay_outcome_name(enum pay_outcome o)
{
	static const char *const names[] = {"ok", "declined", "action_required", "unknown", "invalid"};

	return (unsigned)o < sizeof(names) / sizeof(names[0]) ? names[o] : "unknown";
}
