/* store.c - choosing the backend by connection string, the release helpers of the store's
 * output structs, and what the backends share. */
#include "store.h"

#include <stdio.h>
#include <string.h>

#include "store_impl.h"

static const struct {
	const char *scheme;
	const char *kind;
	struct store *(*open)(const char *url, struct err *e);
} backends[] = {
	{"sqlite://", "sqlite", store_sqlite_open},
	{"mongodb://", "mongodb", store_mongo_open},
	{"mongodb+srv://", "mongodb", store_mongo_open},
	{"postgresql://", "postgresql", store_pg_open},
	{"postgres://", "postgresql", store_pg_open},
};

/* A libpq key=value connection string ("host=/run/pg dbname=numatix"). */
static bool pg_conninfo(const char *url)
{
	return !strstr(url, "://") && (strstr(url, "dbname=") || strstr(url, "host="));
}

const char *store_kind(const char *url)
{
	if (pg_conninfo(url))
		return "postgresql";
	for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
		if (!strncmp(url, backends[i].scheme, strlen(backends[i].scheme)))
			return backends[i].kind;
	return "unknown";
}

bool store_url_supported(const char *url)
{
	if (pg_conninfo(url))
		return true;
	for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
		if (!strncmp(url, backends[i].scheme, strlen(backends[i].scheme)))
			return true;
	return false;
}

struct store *store_open(const char *url, struct err *e)
{
	if (pg_conninfo(url))
		return store_pg_open(url, e);
	for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
		if (!strncmp(url, backends[i].scheme, strlen(backends[i].scheme)))
			return backends[i].open(url, e);
	err_set(e, ERR_UNAVAILABLE, NULL, "no store in this build serves \"%.*s\"; use sqlite://, postgresql:// or mongodb://",
		(int)strcspn(url, ":"), url);
	return NULL;
}

void store_close(struct store *s)
{
	if (s)
		s->ops->close(s);
}

void claim_clear(struct claim *c)
{
	key_record_clear(&c->key);
	memset(c, 0, sizeof(*c));
}

void hold_out_clear(struct hold_out *h)
{
	claim_clear(&h->claim);
	subscription_clear(&h->sub);
	memset(h, 0, sizeof(*h));
}

void transition_out_clear(struct transition_out *t)
{
	subscription_clear(&t->sub);
	memset(t, 0, sizeof(*t));
}

char *store_url_redact(const char *url, char *out, size_t len)
{
	/* scheme://user:password@host...: the password runs from the ':' after the user to the
	 * last '@' before the path. */
	const char *auth = strstr(url, "://"), *at, *colon, *end, *pw = strstr(url, "password=");

	snprintf(out, len, "%s", url);
	if (pw) {
		/* key=value: password=secret up to the next space */
		const char *rest = pw + 9 + strcspn(pw + 9, " ");
		snprintf(out, len, "%.*spassword=***%s", (int)(pw - url), url, rest);
		return out;
	}
	if (!auth)
		return out;
	auth += 3;
	end = auth + strcspn(auth, "/?");
	for (at = end; at > auth && at[-1] != '@'; at--)
		;
	if (at == auth)
		return out;
	colon = memchr(auth, ':', (size_t)(at - 1 - auth));
	if (colon)
		snprintf(out, len, "%.*s***%s", (int)(colon + 1 - url), url, at - 1);
	return out;
}

struct seat_counts store_counts_before(struct seat_counts after, int dleft, int dheld)
{
	struct seat_counts b = {after.total, after.left - dleft, after.held - dheld};
	return b;
}
