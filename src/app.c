/* app.c - handling one request: route, authenticate, parse, keep idempotent, dispatch, log. */
#include "app.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "idem.h"
#include "jsonx.h"
#include "log.h"
#include "router.h"
#include "util.h"

bool app_token_valid(struct request *rq, const char *token, char sub_id[ID_LEN + 1])
{
	struct subscription sub = {0};
	struct err e = {0};
	char hash[65];
	bool ok;

	if (!token_subscription(token, sub_id) || rq->store->ops->sub_get(rq->store, sub_id, &sub, &e))
		return false;
	sha256_hex(token, strlen(token), hash);
	ok = secret_equal(hash, sub.token_hash);
	subscription_clear(&sub);
	return ok;
}

/* Who the request acts as. Returns 0, or -1 after answering 401/403. */
static int authenticate(struct request *rq, struct response *rs, enum auth_need need)
{
	const char *h = rq->authorization;
	char sub_id[ID_LEN + 1];

	if (h && !strncasecmp(h, "Bearer ", 7)) {
		rq->bearer = h + 7;
		while (*rq->bearer == ' ')
			rq->bearer++;
		rq->is_admin = rq->cfg->admin_token && secret_equal(rq->bearer, rq->cfg->admin_token);
	}
	rq->audit.trace_id = rq->trace_id;
	rq->audit.ip = rq->remote_addr;
	rq->audit.actor_type = rq->is_admin ? "admin" : "customer";
	if (need == AUTH_ANYONE || rq->is_admin)
		return 0;
	if (!rq->bearer || !*rq->bearer) {
		response_error(rs, rq, 401, "UNAUTHORIZED", "A bearer token is required", NULL);
		return -1;
	}
	if (need == AUTH_ADMIN) {
		if (app_token_valid(rq, rq->bearer, sub_id))
			response_error(rs, rq, 403, "FORBIDDEN", "An access token cannot do this", NULL);
		else
			response_error(rs, rq, 401, "UNAUTHORIZED", "The bearer token is not valid", NULL);
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

void app_handle(struct request *rq, struct response *rs)
{
	char allow[sizeof(rs->allow)];
	const struct route *r;
	struct key_claim claim = {0};
	bool claimed = false;
	int64_t start = now_ms();
	int status;

	memset(rs, 0, sizeof(*rs));
	r = router_match(rq->method, rq->path, rq->param, sizeof(rq->param), allow, sizeof(allow), &status);
	if (!r) {
		if (status == 405) {
			response_error(rs, rq, 405, "METHOD_NOT_ALLOWED", "This method is not allowed here", NULL);
			snprintf(rs->allow, sizeof(rs->allow), "%s", allow);
		} else {
			response_error(rs, rq, 404, "NOT_FOUND", "No such route", NULL);
		}
		goto out;
	}
	if (rq->content_length > rq->cfg->max_body || rq->body_len > (size_t)rq->cfg->max_body) {
		response_error(rs, rq, 413, "PAYLOAD_TOO_LARGE", "The request body is too large", NULL);
		goto out;
	}
	if (authenticate(rq, rs, r->auth) || parse_body(rq, rs))
		goto out;
	if (r->idem == IDEM_HONOURED && !idem_claim(rq, rs, false, &claim, &claimed) && rq->idem_key)
		goto out;
	r->handler(rq, rs);
	if (claimed)
		idem_settle(rq, rs);
out:
	key_claim_clear(&claim);
	LOG_INFO(rq->trace_id, "%s %s %d %lldms%s", rq->method, rq->path, rs->status,
		 (long long)(now_ms() - start), rs->replayed ? " replayed" : "");
}
