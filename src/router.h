/* router.h - the route table: each route's method, path pattern, handler and needs. */
#ifndef NUMATIX_ROUTER_H
#define NUMATIX_ROUTER_H

#include <stddef.h>

#include "api.h"

enum auth_need {
	AUTH_ANYONE,
	AUTH_ADMIN,     /* the admin token */
	AUTH_BEARER,    /* the admin token or an access token; the handler decides which fits */
	AUTH_SECRET,    /* the admin token or a checkout session's client secret; likewise */
	AUTH_ENTRY,     /* the admin token or a waiting-list entry's access token; likewise */
	AUTH_SIGNED_IN, /* a signed-in customer's session token (their own routes) */
	/* A customer's session token also opens, on AUTH_BEARER and AUTH_ENTRY routes, the
	 * customer's own subscriptions and entries; anyone else's are not found (404). */
};

enum idem_mode {
	IDEM_NONE,      /* reads: the header is ignored */
	IDEM_HONOURED,  /* writes: a present Idempotency-Key is claimed and its response stored */
	IDEM_OWN,       /* the handler drives the key itself (the purchase state machine) */
};

struct route {
	const char *method;
	const char *pattern;    /* segments; ":id" matches one segment */
	handler_fn handler;
	enum auth_need auth;
	enum idem_mode idem;
	long max_body;          /* the largest body this route takes; 0: NUMATIX_MAX_BODY */
};

/* The largest body a request of method and path may have: its route's own, or def. */
long router_body_limit(const char *method, const char *path, long def);

/* The route for method and path, with its :id segment copied into param. NULL when none:
 * *status is then 404, or 405 with the methods the path allows in allow. */
const struct route *router_match(const char *method, const char *path, char *param, size_t plen,
				 char *allow, size_t alen, int *status);

/* The index of r in the route table, and the pattern and method of route i (NULL past the
 * end), for metrics. */
int router_index(const struct route *r);
const char *router_name(int i, const char **method);

#endif
