/* config.h - settings from the environment, checked once at start. */
#ifndef NUMATIX_CONFIG_H
#define NUMATIX_CONFIG_H

#include <stdbool.h>

#include "err.h"

struct config {
	char *db_url;            /* NUMATIX_DB */
	char *db_replica_url;    /* NUMATIX_DB_REPLICA: a PostgreSQL standby for public reads, or NULL */
	int replica_max_lag_ms;  /* NUMATIX_REPLICA_MAX_LAG_MS */
	char *admin_token;       /* NUMATIX_ADMIN_TOKEN; NULL: admin routes answer 401 */
	char *socket;            /* NUMATIX_SOCKET: unix path or host:port */
	char *run_as;            /* NUMATIX_USER: "user" or "user:group" a server started as root
				    becomes once its socket is bound; NULL: none given */
	int workers;             /* NUMATIX_WORKERS */
	int threads;             /* NUMATIX_THREADS: requests in flight per worker */
	int store_handles;       /* NUMATIX_STORE_HANDLES: database connections per worker */
	int hold_ttl_s;          /* NUMATIX_HOLD_TTL */
	int checkout_ttl_s;      /* NUMATIX_CHECKOUT_TTL: a session's lifetime by default */
	int offer_ttl_s;         /* NUMATIX_OFFER_TTL: a waiting-list offer's lifetime */
	int payment_latency_ms;  /* NUMATIX_PAYMENT_LATENCY_MS: the simulated processor's round trip */
	char *processor;         /* NUMATIX_PROCESSOR: "sim" or "stripe" */
	char *sim_db;            /* NUMATIX_SIM_DB: the simulated processor's records */
	char *stripe_key;        /* NUMATIX_STRIPE_SECRET_KEY: never logged */
	char *stripe_api;        /* NUMATIX_STRIPE_API_BASE */
	char **stripe_webhook_secrets; /* NUMATIX_STRIPE_WEBHOOK_SECRET: NULL-terminated, or NULL */
	char *stripe_publishable_key;  /* NUMATIX_STRIPE_PUBLISHABLE_KEY, or NULL */
	char *currency;          /* NUMATIX_CURRENCY */
	int max_body;            /* NUMATIX_MAX_BODY bytes */
	int reap_interval_s;     /* NUMATIX_REAP_INTERVAL */
	int renew_interval_s;    /* NUMATIX_RENEW_INTERVAL: between the renewer's passes */
	int renewal_notice_days; /* NUMATIX_RENEWAL_NOTICE_DAYS: a period's end mailed about this many days before */
	int dunning_days[16];    /* NUMATIX_DUNNING_DAYS: ascending days after a period's end */
	int ndunning;
	int key_retention_h;     /* NUMATIX_KEY_RETENTION_HOURS */
	int webhook_retry_h;     /* NUMATIX_WEBHOOK_RETRY_HOURS: how long a failing delivery is retried */
	int log_level;           /* NUMATIX_LOG_LEVEL: debug, info, warn, error (enum log_level) */
	char *log_path;          /* NUMATIX_LOG: "stderr" or a file appended to */
	char **cors_origins;     /* NUMATIX_CORS_ORIGINS: allowed origins, NULL-terminated; "*" any */
	/* Mail (mailer.h): NULL smtp_url: mails stay queued */
	char *smtp_url;          /* NUMATIX_SMTP_URL: smtp://host:port or smtps://host:port */
	char *smtp_user;         /* NUMATIX_SMTP_USER, or NULL */
	char *smtp_password;     /* NUMATIX_SMTP_PASSWORD: never logged */
	char *mail_from;         /* NUMATIX_MAIL_FROM: an address, or "Name <address>" */
	char *public_url;        /* NUMATIX_PUBLIC_URL: where the pages are, for links in mail */
	int mail_interval_s;     /* NUMATIX_MAIL_INTERVAL: between the mail sender's passes */
};

/* Fills cfg from the environment and, for what the environment does not set, from the file
 * NUMATIX_CONFIG names (KEY=VALUE lines, as systemd's EnvironmentFile). A bad value, an
 * unknown key or an unreadable file fails with a message naming it. Free with config_free. */
int config_load(struct config *cfg, struct err *e);
void config_free(struct config *cfg);
/* The project's root (the directory above the binary's cgi-bin/); new, free(). */
char *config_project_root(void);
/* Whether origin (an Origin header) is one NUMATIX_CORS_ORIGINS allows. */
bool config_origin_allowed(const struct config *cfg, const char *origin);

#endif
