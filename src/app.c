/* app.c - handling one request: route, authenticate, parse, keep idempotent, dispatch, log. */
#include "app.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "config.h"
#include "idem.h"
#include "jsonx.h"
#include "log.h"
#include "metrics.h"
#include "router.h"
#include "util.h"
#include "waitlist.h"

void app_ledger_init(struct ledger *lg, struct store *s, const struct config *cfg)
{
	lg->store = s;
	lg->proc = NULL;
	lg->replies = &api_replies;
	lg->hold_ttl_s = cfg->hold_ttl_s;
	lg->processor = (struct processor_settings){cfg->processor, cfg->sim_db, cfg->payment_latency_ms,
						    cfg->stripe_key, cfg->stripe_api, cfg->currency, cfg->stripe_webhook_secrets};
	lg->key_retention_h = cfg->key_retention_h;
	lg->offer_ttl_s = cfg->offer_ttl_s;
	lg->ndunning = cfg->ndunning;
	memcpy(lg->dunning_days, cfg->dunning_days, sizeof(lg->dunning_days));
	lg->renewal_notice_days = cfg->renewal_notice_days;
	/* without an admin token there is nothing the store does not see to seal with */
	lg->sealing = cfg->admin_token != NULL;
	if (lg->sealing)
		seal_key(cfg->admin_token, lg->seal_key);
}

/* A signed-in customer's request (or one that needs a customer): their own routes, and on the
 * routes of a subscription's or an entry's token the customer's own ones, anyone else's not
 * found, before an Idempotency-Key can replay anything. Returns 0, or -1 after answering. */
static int customer_owns(struct request *rq, struct response *rs, enum auth_need need)
{
	struct err e = {0};
	bool mine = false;

	if (need == AUTH_SIGNED_IN) {
		if (rq->auth.who == AUTH_CUSTOMER)
			return 0;
		response_error(rs, rq, 403, "FORBIDDEN", "These routes are a signed-in customer's (a session token)", NULL);
		return -1;
	}
	if (need == AUTH_BEARER) {
		struct subscription sub = {0};
		if (id_valid(rq->param) && ledger_sub_get(rq->lg, rq->param, &sub, &e) == 0)
			mine = !strcmp(sub.customer_id, rq->auth.customer_id);
		subscription_clear(&sub);
	} else if (need == AUTH_ENTRY) {
		struct waitlist_entry w = {0};
		if (id_valid(rq->param) && waitlist_get(rq->lg, rq->param, &w, &e) == 0)
			mine = !strcmp(w.customer_id, rq->auth.customer_id);
	} else {
		response_error(rs, rq, 403, "FORBIDDEN", "A customer's session cannot do this", NULL);
		return -1;
	}
	if (mine)
		return 0;
	if (e.kind != ERR_NONE && e.kind != ERR_NOT_FOUND)
		response_err(rs, rq, &e);
	else if (need == AUTH_BEARER)
		response_error(rs, rq, 404, "SUBSCRIPTION_NOT_FOUND", "Subscription not found", NULL);
	else
		response_error(rs, rq, 404, "ENTRY_NOT_FOUND", "Waiting-list entry not found", NULL);
	return -1;
}

/* Who the request acts as. Returns 0, or -1 after answering 401/403. */
static int authenticate(struct request *rq, struct response *rs, enum auth_need need)
{
	auth_identify(rq->lg, rq->authorization, rq->cfg->admin_token, need != AUTH_ANYONE, &rq->auth);
	rq->is_admin = rq->auth.who == AUTH_ADMIN_TOKEN;
	rq->actor.trace_id = rq->trace_id;
	rq->actor.ip = rq->remote_addr;
	rq->actor.type = rq->is_admin ? "admin" : "customer";
	if (rq->auth.who == AUTH_CUSTOMER)
		rq->actor.id = rq->auth.customer_id;
	if (need == AUTH_ANYONE || (rq->is_admin && need != AUTH_SIGNED_IN))
		return 0;
	if (rq->auth.who == AUTH_NOBODY) {
		response_error(rs, rq, 401, "UNAUTHORIZED", "A bearer token is required", NULL);
		return -1;
	}
	if (rq->auth.who == AUTH_INVALID) {
		response_error(rs, rq, 401, "UNAUTHORIZED", "The bearer token is not valid", NULL);
		return -1;
	}
	if (rq->auth.who == AUTH_CUSTOMER || need == AUTH_SIGNED_IN)
		return customer_owns(rq, rs, need);
	/* A buyer's token opens resources of its own kind */
	if ((need == AUTH_BEARER && rq->auth.who != AUTH_SUBSCRIPTION) ||
	    (need == AUTH_SECRET && rq->auth.who != AUTH_SESSION) ||
	    (need == AUTH_ENTRY && rq->auth.who != AUTH_WAITLIST) || need == AUTH_ADMIN) {
		response_error(rs, rq, 403, "FORBIDDEN", "This token cannot do this", NULL);
		return -1;
	}
	/* and the one it names alone: told here, before an Idempotency-Key can replay anything */
	if (strcmp(rq->auth.sub_id, rq->param)) {
		response_error(rs, rq, 403, "FORBIDDEN", need == AUTH_BEARER ? "This token belongs to another subscription" :
			       need == AUTH_SECRET ? "This client secret belongs to another session" :
			       "This access token belongs to another entry", NULL);
		return -1;
	}
	return 0;
}

static int parse_body(struct request *rq, struct response *rs)
{
	char reason[160];

	if (rq->body_len == 0)
		return 0;
	if (jsonx_parse(rq->body, rq->body_len, &rq->json, reason, sizeof(reason))) {
		response_invalid(rs, rq, "", reason);
		return -1;
	}
	return 0;
}

/* OPTIONS on a route: the methods it has, and for a CORS preflight from an allowed origin
 * what that origin's page may send; a preflight from any other origin is refused. */
static void options(struct request *rq, struct response *rs, const char *allow)
{
	snprintf(rs->allow, sizeof(rs->allow), "%s", allow);
	if (rq->origin && rq->cors_request_method && !rs->cors_origin) {
		response_error(rs, rq, 403, "CORS_ORIGIN_NOT_ALLOWED",
			       "Pages of this origin may not call the API (NUMATIX_CORS_ORIGINS)", NULL);
		return;
	}
	rs->status = 204;
	rs->cors_preflight = rs->cors_origin != NULL;
}

void app_handle(struct request *rq, struct response *rs)
{
	char allow[sizeof(rs->allow)];
	const struct route *r;
	bool claimed = false;
	int64_t start = now_ms(), start_us = mono_us();
	int status;

	memset(rs, 0, sizeof(*rs));
	r = router_match(rq->method, rq->path, rq->param, sizeof(rq->param), allow, sizeof(allow), &status);
	if (rq->origin && config_origin_allowed(rq->cfg, rq->origin))
		rs->cors_origin = rq->origin;
	if (!r) {
		if (status == 405 && !strcmp(rq->method, "OPTIONS")) {
			options(rq, rs, allow);
		} else if (status == 405) {
			response_error(rs, rq, 405, "METHOD_NOT_ALLOWED", "This method is not allowed here", NULL);
			snprintf(rs->allow, sizeof(rs->allow), "%s", allow);
		} else {
			response_error(rs, rq, 404, "NOT_FOUND", "No such route", NULL);
		}
		goto out;
	}
	long max_body = r->max_body > rq->cfg->max_body ? r->max_body : rq->cfg->max_body;
	if (rq->content_length > max_body || rq->body_len > (size_t)max_body) {
		response_error(rs, rq, 413, "PAYLOAD_TOO_LARGE", "The request body is too large", NULL);
		goto out;
	}
	if (authenticate(rq, rs, r->auth) || parse_body(rq, rs))
		goto out;
	if (r->idem == IDEM_HONOURED) {
		if (request_idem_key(rq, rs, false))
			goto out;
		if (rq->idem_key && !(claimed = api_idem_begin(rq, rs)))
			goto out;
	}
	r->handler(rq, rs);
	if (claimed) {
		struct reply reply = {rs->status, rs->body};
		idem_settle(rq->lg, rq->idem_key, &reply, rq->trace_id);
	}
out:
	metrics_request(router_index(r), rs->status, mono_us() - start_us);
	log_request(rq->trace_id, rq->method, rq->path, r ? r->pattern : NULL, rs->status, now_ms() - start,
		    rs->replayed);
}
