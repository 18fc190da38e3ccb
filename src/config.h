/* config.h - settings from the environment, checked once at start. */
#ifndef NUMATIX_CONFIG_H
#define NUMATIX_CONFIG_H

#include "err.h"

struct config {
	char *db_url;            /* NUMATIX_DB */
	char *admin_token;       /* NUMATIX_ADMIN_TOKEN; NULL: admin routes answer 401 */
	char *socket;            /* NUMATIX_SOCKET: unix path or host:port */
	int workers;             /* NUMATIX_WORKERS */
	int threads;             /* NUMATIX_THREADS: requests in flight per worker */
	int store_handles;       /* NUMATIX_STORE_HANDLES: database connections per worker */
	int hold_ttl_s;          /* NUMATIX_HOLD_TTL */
	int payment_latency_ms;  /* NUMATIX_PAYMENT_LATENCY_MS */
	int max_body;            /* NUMATIX_MAX_BODY bytes */
	int reap_interval_s;     /* NUMATIX_REAP_INTERVAL */
	int key_retention_h;     /* NUMATIX_KEY_RETENTION_HOURS */
};

/* Fills cfg from the environment; a bad value fails with a message naming the variable.
 * The strings are new; free with config_free. */
int config_load(struct config *cfg, struct err *e);
void config_free(struct config *cfg);
/* The project's root (the directory above the binary's cgi-bin/); new, free(). */
char *config_project_root(void);

#endif
