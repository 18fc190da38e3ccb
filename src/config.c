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
#include "valid.h"

/* Every setting there is; the file may name no other. */
static const char *const known[] = {
	"NUMATIX_DB", "NUMATIX_ADMIN_TOKEN", "NUMATIX_SOCKET", "NUMATIX_WORKERS", "NUMATIX_THREADS",
	"NUMATIX_STORE_HANDLES", "NUMATIX_DB_REPLICA", "NUMATIX_REPLICA_MAX_LAG_MS", "NUMATIX_HOLD_TTL", "NUMATIX_PAYMENT_LATENCY_MS", "NUMATIX_MAX_BODY",
	"NUMATIX_REAP_INTERVAL", "NUMATIX_KEY_RETENTION_HOURS", "NUMATIX_LOG_LEVEL", "NUMATIX_LOG",
	"NUMATIX_CORS_ORIGINS", "NUMATIX_CHECKOUT_TTL", "NUMATIX_USER", "NUMATIX_WEBHOOK_RETRY_HOURS",
	"NUMATIX_OFFER_TTL", "NUMATIX_RENEW_INTERVAL", "NUMATIX_DUNNING_DAYS",
	"NUMATIX_SMTP_URL", "NUMATIX_SMTP_USER", "NUMATIX_SMTP_PASSWORD", "NUMATIX_MAIL_FROM", "NUMATIX_PUBLIC_URL",
	"NUMATIX_MAIL_INTERVAL", "NUMATIX_RENEWAL_NOTICE_DAYS",
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

/* Whether s is prefix followed by at least 8 letters, digits or underscores (a Stripe key's shape). */
static bool key_shaped(const char *s, const char *prefix)
{
	size_t n = strlen(prefix), len = strlen(s);

	if (strncmp(s, prefix, n) || len < n + 8)
		return false;
	return strspn(s + n, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") == len - n;
}

/* A setting's value, new, or NULL when it is unset or empty. */
static char *setting_dup(const char *name)
{
	const char *v = setting(name);

	return v && *v ? xstrdup(v) : NULL;
}

/* Whether s has a control character (a header's line break). */
static bool has_control(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return true;
	return false;
}

/* Mail's settings: the server's URL, the sender's address, the pages' address for links. */
static int mail_settings(struct config *cfg, struct err *e)
{
	cfg->smtp_url = setting_dup("NUMATIX_SMTP_URL");
	cfg->smtp_user = setting_dup("NUMATIX_SMTP_USER");
	cfg->smtp_password = setting_dup("NUMATIX_SMTP_PASSWORD");
	cfg->mail_from = setting_dup("NUMATIX_MAIL_FROM");
	cfg->public_url = setting_dup("NUMATIX_PUBLIC_URL");
	if (!cfg->mail_from)
		cfg->mail_from = xstrdup("Numatix <numatix@localhost>");
	if (!cfg->public_url)
		cfg->public_url = xstrdup("http://localhost:8080");
	if (cfg->smtp_url && ((strncmp(cfg->smtp_url, "smtp://", 7) && strncmp(cfg->smtp_url, "smtps://", 8)) ||
			      has_control(cfg->smtp_url) || strchr(cfg->smtp_url, '@'))) {
		err_set(e, ERR_INVALID, "CONFIG", "NUMATIX_SMTP_URL must be smtp://host:port or smtps://host:port"
			" (the user and password go in NUMATIX_SMTP_USER and NUMATIX_SMTP_PASSWORD)");
		return -1;
	}
	char name[256], addr[256];
	if (has_control(cfg->mail_from) || strlen(cfg->mail_from) > 200 ||
	    !mailbox_split(cfg->mail_from, name, sizeof(name), addr, sizeof(addr))) {
		err_set(e, ERR_INVALID, "CONFIG", "NUMATIX_MAIL_FROM must be an address, or Name <address>, on one line");
		return -1;
	}
	size_t n = strlen(cfg->public_url);
	while (n > 0 && cfg->public_url[n - 1] == '/')
		cfg->public_url[--n] = '\0';
	if ((strncmp(cfg->public_url, "https://", 8) && strncmp(cfg->public_url, "http://", 7)) ||
	    has_control(cfg->public_url) || strpbrk(cfg->public_url, " ?#\"<>@\\") || n > 200) {
		err_set(e, ERR_INVALID, "CONFIG", "NUMATIX_PUBLIC_URL must be an http(s) URL without a user, a password"
			" or a query");
		return -1;
	}
	return 0;
}

/* Stripe's settings. Malformed ones are refused by their name alone: a key is never echoed. */
static int stripe_settings(struct config *cfg, struct err *e)
{
	const char *key = setting("NUMATIX_STRIPE_SECRET_KEY"), *api = setting("NUMATIX_STRIPE_API_BASE");
	const char *hooks = setting("NUMATIX_STRIPE_WEBHOOK_SECRET"), *pk = setting("NUMATIX_STRIPE_PUBLISHABLE_KEY");
	const char *cur = setting("NUMATIX_CURRENCY");

	cfg->currency = xstrdup(cur && *cur ? cur : "usd");
	if (strlen(cfg->currency) != 3 || strspn(cfg->currency, "abcdefghijklmnopqrstuvwxyz") != 3) {
		err_set(e, ERR_INVALID, "CONFIG", "NUMATIX_CURRENCY must be an ISO 4217 code in lower case (usd), not \"%.8s\"",
			cfg->currency);
		return -1;
	}
	cfg->stripe_api = xstrdup(api && *api ? api : "https://api.stripe.com");
	if ((strncmp(cfg->stripe_api, "https://", 8) && strncmp(cfg->stripe_api, "http://", 7)) ||
	    strlen(cfg->stripe_api) > 200 || strpbrk(cfg->stripe_api, " \t\r\n?#")) {
		err_set(e, ERR_INVALID, "CONFIG", "NUMATIX_STRIPE_API_BASE must be an http(s) URL without a query");
		return -1;
	}
	if (key && *key) {
		if (!key_shaped(key, "sk_test_") && !key_shaped(key, "sk_live_") && !key_shaped(key, "rk_test_") &&
		    !key_shaped(key, "rk_live_")) {
			err_set(e, ERR_INVALID, "CONFIG", "NUMATIX_STRIPE_SECRET_KEY must be a secret (sk_) or restricted (rk_) key");
			return -1;
		}
		cfg->stripe_key = xstrdup(key);
	} else if (!strcmp(cfg->processor, "stripe")) {
		err_set(e, ERR_INVALID, "CONFIG", "NUMATIX_PROCESSOR=stripe needs NUMATIX_STRIPE_SECRET_KEY");
		return -1;
	}
	if (hooks && *hooks) {
		size_t n = 0;
		char *copy = xstrdup(hooks), *save = NULL;
		cfg->stripe_webhook_secrets = xcalloc(3, sizeof(char *));
		for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
			while (*t == ' ')
				t++;
			if (n == 2 || !key_shaped(t, "whsec_")) {
				free(copy);
				err_set(e, ERR_INVALID, "CONFIG", "NUMATIX_STRIPE_WEBHOOK_SECRET must be one or two whsec_ secrets, "
					"comma separated");
				return -1;
			}
			cfg->stripe_webhook_secrets[n++] = xstrdup(t);
		}
		free(copy);
	}
	if (pk && *pk) {
		if (!key_shaped(pk, "pk_test_") && !key_shaped(pk, "pk_live_")) {
			err_set(e, ERR_INVALID, "CONFIG", "NUMATIX_STRIPE_PUBLISHABLE_KEY must be a publishable (pk_) key");
			return -1;
		}
		cfg->stripe_publishable_key = xstrdup(pk);
	}
	return 0;
}

/* NUMATIX_PROCESSOR and the simulated processor's file: NUMATIX_SIM_DB, by default beside a
 * SQLite store's file (numatix.db -> numatix.processor.db), else under the project's var/. */
static int processor_settings(struct config *cfg, const char *root, struct err *e)
{
	const char *v = setting("NUMATIX_PROCESSOR");

	cfg->processor = xstrdup(v && *v ? v : "sim");
	if (strcmp(cfg->processor, "sim") && strcmp(cfg->processor, "stripe")) {
		err_set(e, ERR_INVALID, "CONFIG", "NUMATIX_PROCESSOR must be sim or stripe, not \"%s\"", cfg->processor);
		return -1;
	}
	if (stripe_settings(cfg, e))
		return -1;
	v = setting("NUMATIX_SIM_DB");
	if (v && *v) {
		if (v[0] != '/') {
			err_set(e, ERR_INVALID, "CONFIG", "NUMATIX_SIM_DB must be an absolute file path, not \"%s\"", v);
			return -1;
		}
		cfg->sim_db = xstrdup(v);
	} else if (!strncmp(cfg->db_url, "sqlite://", 9)) {
		const char *path = cfg->db_url + 9;
		size_t len = strcspn(path, "?");
		cfg->sim_db = len > 3 && !strncmp(path + len - 3, ".db", 3) ? xasprintf("%.*s.processor.db", (int)(len - 3), path)
									 : xasprintf("%.*s.processor", (int)len, path);
	} else {
		cfg->sim_db = xasprintf("%s/var/numatix.processor.db", root);
	}
	return 0;
}

/* "1,3,5,7": the days after a period's end on which a failed renewal is tried again, each
 * 1...90 and after the one before; "" none (the first failure cancels). */
static int dunning_parse(struct config *cfg, const char *v, struct err *e)
{
	const char *p = v ? v : "1,3,5,7";

	cfg->ndunning = 0;
	while (*p) {
		char *end;
		long d = strtol(p, &end, 10);
		if (end == p || d < 1 || d > 90 || (cfg->ndunning && d <= cfg->dunning_days[cfg->ndunning - 1]) ||
		    cfg->ndunning == (int)(sizeof(cfg->dunning_days) / sizeof(*cfg->dunning_days)) ||
		    (*end && *end != ',') || (*end == ',' && !end[1])) {
			err_set(e, ERR_INVALID, "CONFIG",
				"NUMATIX_DUNNING_DAYS must be ascending days 1...90 separated by commas (at most 16), not \"%s\"", v);
			return -1;
		}
		cfg->dunning_days[cfg->ndunning++] = (int)d;
		p = *end ? end + 1 : end;
	}
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
	    env_int("NUMATIX_RENEW_INTERVAL", 10, 1, 3600, &cfg->renew_interval_s, e) ||
	    env_int("NUMATIX_MAIL_INTERVAL", 1, 1, 3600, &cfg->mail_interval_s, e) ||
	    env_int("NUMATIX_RENEWAL_NOTICE_DAYS", 7, 0, 60, &cfg->renewal_notice_days, e) ||
	    env_int("NUMATIX_KEY_RETENTION_HOURS", 24, 1, 24 * 365, &cfg->key_retention_h, e) ||
	    env_int("NUMATIX_WEBHOOK_RETRY_HOURS", 72, 1, 24 * 30, &cfg->webhook_retry_h, e) ||
	    env_int("NUMATIX_REPLICA_MAX_LAG_MS", 1000, 0, 3600000, &cfg->replica_max_lag_ms, e))
		goto out;
	if (processor_settings(cfg, root, e) || dunning_parse(cfg, setting("NUMATIX_DUNNING_DAYS"), e))
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
	if (cors_parse(cfg, setting("NUMATIX_CORS_ORIGINS"), e) || mail_settings(cfg, e))
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
	free(cfg->processor);
	free(cfg->sim_db);
	free(cfg->stripe_key);
	free(cfg->stripe_api);
	free(cfg->stripe_publishable_key);
	free(cfg->currency);
	for (char **w = cfg->stripe_webhook_secrets; w && *w; w++)
		free(*w);
	free(cfg->stripe_webhook_secrets);
	for (char **o = cfg->cors_origins; o && *o; o++)
		free(*o);
	free(cfg->cors_origins);
	free(cfg->smtp_url);
	free(cfg->smtp_user);
	free(cfg->smtp_password);
	free(cfg->mail_from);
	free(cfg->public_url);
	memset(cfg, 0, sizeof(*cfg));
}
