/* router.c - the route table: each route's method, path pattern, handler and needs. */
#include "router.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static const struct route routes[] = {
	{"GET", "/api/health", api_health, AUTH_ANYONE, IDEM_NONE, 0},
	{"GET", "/api/plans", api_plans_list, AUTH_ANYONE, IDEM_NONE, 0},
	{"POST", "/api/plans", api_plans_create, AUTH_ADMIN, IDEM_HONOURED, 0},
	{"GET", "/api/plans/:id", api_plans_get, AUTH_ANYONE, IDEM_NONE, 0},
	{"PATCH", "/api/plans/:id", api_plans_update, AUTH_ADMIN, IDEM_HONOURED, 0},
	{"GET", "/api/plans/:id/stats", api_plans_stats, AUTH_ANYONE, IDEM_NONE, 0},
	{"POST", "/api/plans/:id/waitlist", api_waitlist_join, AUTH_ANYONE, IDEM_HONOURED, 0},
	{"GET", "/api/plans/:id/waitlist", api_waitlist_list, AUTH_ADMIN, IDEM_NONE, 0},
	{"GET", "/api/waitlist/:id", api_waitlist_get, AUTH_ENTRY, IDEM_NONE, 0},
	{"POST", "/api/waitlist/:id/leave", api_waitlist_leave, AUTH_ENTRY, IDEM_HONOURED, 0},
	{"POST", "/api/subscriptions/purchase", api_subscriptions_purchase, AUTH_ANYONE, IDEM_OWN, 0},
	{"GET", "/api/subscriptions/:id", api_subscriptions_get, AUTH_BEARER, IDEM_NONE, 0},
	{"POST", "/api/subscriptions/:id/cancel", api_subscriptions_cancel, AUTH_BEARER, IDEM_HONOURED, 0},
	{"POST", "/api/subscriptions/:id/change-plan", api_subscriptions_change_plan, AUTH_BEARER, IDEM_OWN, 0},
	{"GET", "/api/renewals", api_renewals, AUTH_ADMIN, IDEM_NONE, 0},
	{"POST", "/api/subscriptions/:id/resume", api_subscriptions_resume, AUTH_BEARER, IDEM_HONOURED, 0},
	{"POST", "/api/subscriptions/:id/payment-method", api_subscriptions_payment_method, AUTH_BEARER, IDEM_HONOURED, 0},
	{"POST", "/api/subscriptions/:id/access-token", api_subscriptions_access_token, AUTH_BEARER, IDEM_HONOURED, 0},
	{"POST", "/api/checkout-sessions", api_checkout_create, AUTH_ANYONE, IDEM_OWN, 0},
	{"GET", "/api/checkout-sessions/:id", api_checkout_get, AUTH_SECRET, IDEM_NONE, 0},
	{"POST", "/api/checkout-sessions/:id/complete", api_checkout_complete, AUTH_SECRET, IDEM_OWN, 0},
	{"POST", "/api/checkout-sessions/:id/expire", api_checkout_expire, AUTH_SECRET, IDEM_HONOURED, 0},
	{"POST", "/api/checkout-sessions/:id/authenticate", api_checkout_authenticate, AUTH_SECRET, IDEM_HONOURED, 0},
	{"POST", "/api/customers", api_customers_create, AUTH_ADMIN, IDEM_HONOURED, 0},
	{"GET", "/api/customers/:id/subscriptions", api_customers_subscriptions, AUTH_ADMIN, IDEM_NONE, 0},
	/* a customer's sign-in, and their own (a session token) */
	{"POST", "/api/customer/login", api_customer_login, AUTH_ANYONE, IDEM_NONE, 0},
	{"POST", "/api/customer/sessions", api_customer_sessions_create, AUTH_ANYONE, IDEM_NONE, 0},
	{"DELETE", "/api/customer/sessions/current", api_customer_sessions_end, AUTH_SIGNED_IN, IDEM_NONE, 0},
	{"GET", "/api/customer", api_customer_me, AUTH_SIGNED_IN, IDEM_NONE, 0},
	{"GET", "/api/customer/subscriptions", api_customer_subscriptions, AUTH_SIGNED_IN, IDEM_NONE, 0},
	{"GET", "/api/customer/payments", api_customer_payments, AUTH_SIGNED_IN, IDEM_NONE, 0},
	{"GET", "/api/customer/waitlist", api_customer_waitlist, AUTH_SIGNED_IN, IDEM_NONE, 0},
	{"GET", "/api/audit-logs", api_audit_list, AUTH_ADMIN, IDEM_NONE, 0},
	{"GET", "/api/events", api_events, AUTH_ADMIN, IDEM_NONE, 0},
	{"GET", "/api/payments/summary", api_payments_summary, AUTH_ADMIN, IDEM_NONE, 0},
	{"POST", "/api/webhook-endpoints", api_webhooks_create, AUTH_ADMIN, IDEM_HONOURED, 0},
	{"GET", "/api/webhook-endpoints", api_webhooks_list, AUTH_ADMIN, IDEM_NONE, 0},
	{"DELETE", "/api/webhook-endpoints/:id", api_webhooks_delete, AUTH_ADMIN, IDEM_NONE, 0},
	{"GET", "/api/webhook-endpoints/:id/deliveries", api_webhooks_deliveries, AUTH_ADMIN, IDEM_NONE, 0},
	{"GET", "/api/mail", api_mail_list, AUTH_ADMIN, IDEM_NONE, 0},
	/* Stripe's events: the Stripe-Signature header is the credential; bodies up to nginx's 64 KiB */
	{"POST", "/api/stripe/webhook", api_stripe_webhook, AUTH_ANYONE, IDEM_NONE, 65536},
	/* loopback only: nginx refuses it from anywhere else */
	{"GET", "/api/metrics", api_metrics, AUTH_ANYONE, IDEM_NONE, 0},
};

int router_index(const struct route *r)
{
	return r ? (int)(r - routes) : -1;
}

const char *router_name(int i, const char **method)
{
	if (i < 0 || (size_t)i >= sizeof(routes) / sizeof(routes[0]))
		return NULL;
	*method = routes[i].method;
	return routes[i].pattern;
}

/* Whether path matches pattern; the :id segment goes to param. */
static bool matches(const char *pattern, const char *path, char *param, size_t plen)
{
	while (*pattern && *path) {
		if (*pattern != '/' || *path != '/')
			return false;
		pattern++;
		path++;
		size_t pl = strcspn(pattern, "/"), sl = strcspn(path, "/");
		if (pl == 3 && !strncmp(pattern, ":id", 3)) {
			if (sl == 0 || sl >= plen)
				return false;
			memcpy(param, path, sl);
			param[sl] = '\0';
		} else if (pl != sl || strncmp(pattern, path, sl)) {
			return false;
		}
		pattern += pl;
		path += sl;
	}
	return !*pattern && !*path;
}

long router_body_limit(const char *method, const char *path, long def)
{
	char param[ID_LEN + 41], allow[64];
	int status;
	const struct route *r = router_match(method, path, param, sizeof(param), allow, sizeof(allow), &status);

	return r && r->max_body > def ? r->max_body : def;
}

const struct route *router_match(const char *method, const char *path, char *param, size_t plen,
				 char *allow, size_t alen, int *status)
{
	size_t i;

	allow[0] = '\0';
	/* The table's order decides between a static route and a pattern: POST
	 * /api/subscriptions/purchase is the purchase, while GET on it asks for a subscription
	 * whose id is "purchase" (and finds none). */
	/* RFC 9110: a server that supports GET on a resource supports HEAD (its answer without
	 * the body, which the writer leaves out) */
	if (!strcmp(method, "HEAD"))
		method = "GET";
	for (i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
		if (!matches(routes[i].pattern, path, param, plen))
			continue;
		if (!strcmp(routes[i].method, method))
			return &routes[i];
		if (!strstr(allow, routes[i].method))
			snprintf(allow + strlen(allow), alen - strlen(allow), "%s%s%s", *allow ? ", " : "",
				 routes[i].method, !strcmp(routes[i].method, "GET") ? ", HEAD" : "");
	}
	*status = *allow ? 405 : 404;
	return NULL;
}
