/* config.c - settings from the environment, checked once at start. */
#include "config.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store.h"
#include "util.h"

char *config_project_root(void)
{
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

	if (n <= 0)
		return xstrdup(".");
	exe[n] = '\0';
	/* <root>/cgi-bin/numatix */
	return xstrdup(dirname(dirname(exe)));
}

static int env_int(const char *name, int def, int min, int max, int *out, struct err *e)
{
	const char *v = getenv(name);
	char *end;
	long n;

	if (!v || !*v) {
		*out = def;
		return 0;
	}
	errno = 0;
	n = strtol(v, &end, 10);
	if (errno || *end || n < min || n > max) {
		err_set(e, ERR_INVALID, "CONFIG", "%s must be an integer from %d to %d, not \"%s\"",
			name, min, max, v);
		return -1;
	}
	*out = (int)n;
	return 0;
}

int config_load(struct config *cfg, struct err *e)
{
	const char *v;
	char *root = NULL;
	long cores = sysconf(_SC_NPROCESSORS_ONLN);
	int rc = -1;

	memset(cfg, 0, sizeof(*cfg));
	root = config_project_root();
	v = getenv("NUMATIX_DB");
	if (v && *v) {
		if (!store_url_supported(v)) {
			char shown[256];
			err_set(e, ERR_INVALID, "CONFIG",
				"NUMATIX_DB must be sqlite://, postgresql:// (or host=... dbname=...) or mongodb://, not \"%s\"",
				store_url_redact(v, shown, sizeof(shown)));
			goto out;
		}
		cfg->db_url = xstrdup(v);
	} else {
		cfg->db_url = xasprintf("sqlite://%s/var/numatix.db", root);
	}
	v = getenv("NUMATIX_ADMIN_TOKEN");
	if (v && *v) {
		if (strlen(v) < 16) {
			err_set(e, ERR_INVALID, "CONFIG", "NUMATIX_ADMIN_TOKEN must be at least 16 characters");
			goto out;
		}
		cfg->admin_token = xstrdup(v);
	}
	v = getenv("NUMATIX_SOCKET");
	cfg->socket = v && *v ? xstrdup(v) : xasprintf("%s/var/numatix.sock", root);
	if (env_int("NUMATIX_WORKERS", cores > 0 ? (int)(2 * cores) : 2, 1, 256, &cfg->workers, e) ||
	    env_int("NUMATIX_THREADS", 64, 1, 1024, &cfg->threads, e) ||
	    env_int("NUMATIX_STORE_HANDLES", 4, 1, 256, &cfg->store_handles, e) ||
	    env_int("NUMATIX_HOLD_TTL", 600, 1, 86400, &cfg->hold_ttl_s, e) ||
	    env_int("NUMATIX_PAYMENT_LATENCY_MS", 0, 0, 60000, &cfg->payment_latency_ms, e) ||
	    env_int("NUMATIX_MAX_BODY", 16384, 256, 1 << 20, &cfg->max_body, e) ||
	    env_int("NUMATIX_REAP_INTERVAL", 10, 1, 3600, &cfg->reap_interval_s, e) ||
	    env_int("NUMATIX_KEY_RETENTION_HOURS", 24, 1, 24 * 365, &cfg->key_retention_h, e))
		goto out;
	rc = 0;
out:
	free(root);
	if (rc)
		config_free(cfg);
	return rc;
}

void config_free(struct config *cfg)
{
	free(cfg->db_url);
	free(cfg->admin_token);
	free(cfg->socket);
	memset(cfg, 0, sizeof(*cfg));
}
