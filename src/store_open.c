/* store_open.c - choosing the backend by connection string. */
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
