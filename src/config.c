/* config.c - settings from the environment, checked once at start. */
#include "config.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "store.h"
#include "util.h"

/* Every setting there is; the file may name no other. */
static const char *const known[] = {
	"NUMATIX_DB", "NUMATIX_ADMIN_TOKEN", "NUMATIX_SOCKET", "NUMATIX_WORKERS", "NUMATIX_THREADS",
	"NUMATIX_STORE_HANDLES", "NUMATIX_DB_REPLICA", "NUMATIX_REPLICA_MAX_LAG_MS", "NUMATIX_HOLD_TTL", "NUMATIX_PAYMENT_LATENCY_MS", "NUMATIX_MAX_BODY",
	"NUMATIX_REAP_INTERVAL", "NUMATIX_KEY_RETENTION_HOURS", "NUMATIX_LOG_LEVEL", "NUMATIX_LOG",
	"NUMATIX_CORS_ORIGINS", "NUMATIX_CHECKOUT_TTL", "NUMATIX_USER", "NUMATIX_WEBHOOK_RETRY_HOURS",
	"NUMATIX_OFFER_TTL",
};
#define NKNOWN (sizeof(known) / sizeof(known[0]))

/* Values read from the configuration file, by index into known[]; NULL: not in the file. */
static char *from_file[NKNOWN];

static int known_index(const char *name, size_t len)
{
	for (size_t i = 0; i < NKNOWN; i++)
		if (strlen(known[i]) == len && !strncmp(known[i], name, len))
			return (int)i;
	return -1;
}

/* A setting: the environment's value, else the file's, else NULL. Empty counts as unset. */
static const char *setting(const char *name)
{
	const char *v = getenv(name);
	int i;

	if (v && *v)
		return v;
	i = known_index(name, strlen(name));
	return i >= 0 && from_file[i] && *from_file[i] ? from_file[i] : NULL;
}

static char *trim(char *s)
{
	char *end;

	while (*s == ' ' || *s == '\t')
		s++;
	end = s + strlen(s);
	while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\n' || end[-1] == '\r'))
		*--end = '\0';
	return s;
}

static void file_forget(void)
{
	for (size_t i = 0; i < NKNOWN; i++) {
		free(from_file[i]);
		from_file[i] = NULL;
	}
}

/* Reads KEY=VALUE lines: blank lines and # comments skipped, a value may be quoted. */
static int file_read(const char *path, struct err *e)
{
	FILE *f = fopen(path, "r");
	char buf[4096];
	int lineno = 0, rc = 0;

	if (!f) {
		err_set(e, ERR_INVALID, "CONFIG", "NUMATIX_CONFIG: cannot read %s: %s", path, strerror(errno));
		return -1;
	}
	while (!rc && fgets(buf, sizeof(buf), f)) {
		char *line = trim(buf), *eq, *key, *val;
		size_t vl;
		int i;

		lineno++;
		if (!*line || *line == '#')
			continue;
		if (!(eq = strchr(line, '='))) {
			err_set(e, ERR_INVALID, "CONFIG", "%s:%d: expected KEY=VALUE", path, lineno);
			rc = -1;
			break;
		}
		*eq = '\0';
		key = trim(line);
		val = trim(eq + 1);
		vl = strlen(val);
		if (vl >= 2 && (val[0] == '"' || val[0] == '\'') && val[vl - 1] == val[0]) {
			val[vl - 1] = '\0';
			val++;
		}
		if ((i = known_index(key, strlen(key))) < 0) {
			err_set(e, ERR_INVALID, "CONFIG", "%s:%d: no setting \"%s\" (see numatix --help)", path,
				lineno, key);
			rc = -1;
			break;
		}
		free(from_file[i]);
		from_file[i] = xstrdup(val);
	}
	fclose(f);
	return rc;
}

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
	const char *v = setting(name);
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

/* An origin as browsers send it: scheme://host[:port], nothing after. */
static bool origin_valid(const char *o)
{
	const char *host;
	size_t hl;

	if (!strncmp(o, "http://", 7))
		host = o + 7;
	else if (!strncmp(o, "https://", 8))
		host = o + 8;
	else
		return false;
	hl = strcspn(host, ":/?#");
	if (hl == 0 || host[hl] == '/' || host[hl] == '?' || host[hl] == '#')
		return false;
	if (host[hl] == ':') {
		const char *port = host + hl + 1;
		if (!*port || strspn(port, "0123456789") != strlen(port) || strlen(port) > 5)
			return false;
	}
	return true;
}

/* NUMATIX_CORS_ORIGINS: "*" or origins separated by commas or spaces. */
static int cors_parse(struct config *cfg, const char *v, struct err *e)
{
	char *copy, *tok, *save = NULL;
	size_t n = 0;

	cfg->cors_origins = xcalloc(1, sizeof(char *));
	if (!v)
		return 0;
	copy = xstrdup(v);
	for (tok = strtok_r(copy, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
		if (strcmp(tok, "*") && !origin_valid(tok)) {
			err_set(e, ERR_INVALID, "CONFIG",
				"NUMATIX_CORS_ORIGINS must list origins such as https://shop.example:8443 (or *), not \"%s\"",
				tok);
			free(copy);
			return -1;
		}
		cfg->cors_origins = xrealloc(cfg->cors_origins, (n + 2) * sizeof(char *));
		cfg->cors_origins[n++] = xstrdup(tok);
		cfg->cors_origins[n] = NULL;
	}
	free(copy);
	return 0;
}

bool config_origin_allowed(const struct config *cfg, const char *origin)
{
	if (!origin || !cfg->cors_origins)
		return false;
	for (char **o = cfg->cors_origins; *o; o++)
		if (!strcmp(*o, "*") || !strcmp(*o, origin))
			return true;
	return false;
}

int config_load(struct config *cfg, struct err *e)
{
	const char *v;
	char *root = NULL;
	long cores = sysconf(_SC_NPROCESSORS_ONLN);
	int rc = -1;

	memset(cfg, 0, sizeof(*cfg));
	root = config_project_root();
	file_forget();
	v = getenv("NUMATIX_CONFIG");
	if (v && *v && file_read(v, e))
		goto out;
	v = setting("NUMATIX_DB");
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
	v = setting("NUMATIX_DB_REPLICA");
	if (v && *v) {
		char shown[256];
		if (strcmp(store_kind(v), "postgresql") || strcmp(store_kind(cfg->db_url), "postgresql")) {
			err_set(e, ERR_INVALID, "CONFIG", "NUMATIX_DB_REPLICA must name a PostgreSQL standby of a PostgreSQL "
				"NUMATIX_DB, not \"%s\"", store_url_redact(v, shown, sizeof(shown)));
			goto out;
		}
		cfg->db_replica_url = xstrdup(v);
	}
	v = setting("NUMATIX_ADMIN_TOKEN");
	if (v && *v) {
		if (strlen(v) < 16) {
			err_set(e, ERR_INVALID, "CONFIG", "NUMATIX_ADMIN_TOKEN must be at least 16 characters");
			goto out;
		}
		cfg->admin_token = xstrdup(v);
	}
	v = setting("NUMATIX_USER");
	cfg->run_as = v && *v ? xstrdup(v) : NULL;
	v = setting("NUMATIX_SOCKET");
	cfg->socket = v && *v ? xstrdup(v) : xasprintf("%s/var/numatix.sock", root);
	if (env_int("NUMATIX_WORKERS", cores > 0 ? (int)(2 * cores) : 2, 1, 256, &cfg->workers, e) ||
	    env_int("NUMATIX_THREADS", 64, 1, 1024, &cfg->threads, e) ||
	    env_int("NUMATIX_STORE_HANDLES", 4, 1, 256, &cfg->store_handles, e) ||
	    env_int("NUMATIX_HOLD_TTL", 600, 1, 86400, &cfg->hold_ttl_s, e) ||
	    env_int("NUMATIX_CHECKOUT_TTL", 900, 60, 86400, &cfg->checkout_ttl_s, e) ||
	    env_int("NUMATIX_OFFER_TTL", 86400, 1, 7 * 86400, &cfg->offer_ttl_s, e) ||
	    env_int("NUMATIX_PAYMENT_LATENCY_MS", 0, 0, 60000, &cfg->payment_latency_ms, e) ||
	    env_int("NUMATIX_MAX_BODY", 16384, 256, 1 << 20, &cfg->max_body, e) ||
	    env_int("NUMATIX_REAP_INTERVAL", 10, 1, 3600, &cfg->reap_interval_s, e) ||
	    env_int("NUMATIX_KEY_RETENTION_HOURS", 24, 1, 24 * 365, &cfg->key_retention_h, e) ||
	    env_int("NUMATIX_WEBHOOK_RETRY_HOURS", 72, 1, 24 * 30, &cfg->webhook_retry_h, e) ||
	    env_int("NUMATIX_REPLICA_MAX_LAG_MS", 1000, 0, 3600000, &cfg->replica_max_lag_ms, e))
		goto out;
	v = setting("NUMATIX_LOG_LEVEL");
	if ((cfg->log_level = v ? log_level_parse(v) : LOG_LEVEL_INFO) < 0) {
		err_set(e, ERR_INVALID, "CONFIG", "NUMATIX_LOG_LEVEL must be debug, info, warn or error, not \"%s\"", v);
		goto out;
	}
	v = setting("NUMATIX_LOG");
	cfg->log_path = xstrdup(v ? v : "stderr");
	if (strcmp(cfg->log_path, "stderr") && cfg->log_path[0] != '/') {
		err_set(e, ERR_INVALID, "CONFIG", "NUMATIX_LOG must be stderr or an absolute file path, not \"%s\"",
			cfg->log_path);
		goto out;
	}
	if (cors_parse(cfg, setting("NUMATIX_CORS_ORIGINS"), e))
		goto out;
	rc = 0;
out:
	file_forget();
	free(root);
	if (rc)
		config_free(cfg);
	return rc;
}

void config_free(struct config *cfg)
{
	free(cfg->db_url);
	free(cfg->db_replica_url);
	free(cfg->admin_token);
	free(cfg->socket);
	free(cfg->run_as);
	free(cfg->log_path);
	for (char **o = cfg->cors_origins; o && *o; o++)
		free(*o);
	free(cfg->cors_origins);
	memset(cfg, 0, sizeof(*cfg));
}
