/* purchase.c - the purchase state machine of DESIGN.md. */
#include "purchase.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "idem.h"
#include "log.h"
#include "payment.h"
#include "util.h"
#include "view.h"

#define DAY_MS (24LL * 3600 * 1000)

/* Answers with the response stored on the key: the purchase ended, perhaps in another request
 * (a concurrent retry, or the reaper that expired the hold). */
static void answer_stored(struct request *rq, struct response *rs)
{
	struct key_claim k = {0};
	struct err e = {0};

	if (rq->store->ops->key_get(rq->store, rq->idem_key, &k, &e) == 0 && k.state == KEY_REPLAY) {
		free(rs->body);
		rs->status = k.status;
		rs->body = k.body;
		k.body = NULL;
	} else {
		LOG_ERROR(rq->trace_id, "key %s has no final response: %s", rq->idem_key, e.msg);
		response_error(rs, rq, 503, "SERVICE_UNAVAILABLE", "The purchase could not be settled; retry shortly", NULL);
	}
	key_claim_clear(&k);
}

/* Step 3: a seat for a new purchase. Returns 0, or -1 after answering (the key forgotten, as
 * nothing happened). */
static int hold(struct request *rq, struct response *rs, const struct purchase_req *p,
		struct subscription *sub)
{
	struct store *s = rq->store;
	struct customer c = {0};
	struct err e = {0};
	char sub_id[ID_LEN + 1];
	int64_t now = now_ms();
	int rc = -1;

	if (p->customer_id) {
		if (s->ops->customer_get(s, p->customer_id, &c, &e))
			goto out;
	} else {
		id_new(c.id);
		c.email = xstrdup(p->email);
		c.name = xstrdup(p->name);
		c.created_at = now;
		if (s->ops->customer_upsert(s, &c, &e))
			goto out;
	}
	id_new(sub_id);
	rq->audit.actor_id = c.id;
	/* No access token yet: it is made, and its hash stored, when the purchase is confirmed. */
	struct hold_req hr = {sub_id, rq->idem_key, p->plan_id, c.id, "", now,
			      now + (int64_t)rq->cfg->hold_ttl_s * 1000};
	rc = s->ops->seat_hold(s, &hr, &rq->audit, sub, &e);
	rq->audit.actor_id = NULL;
out:
	if (rc) {
		struct err ignored = {0};
		if (e.kind == ERR_RETRYABLE || e.kind == ERR_UNAVAILABLE || e.kind == ERR_INTERNAL)
			LOG_WARN(rq->trace_id, "purchase hold: %s", e.msg);
		response_err(rs, rq, &e);
		s->ops->key_forget(s, rq->idem_key, &ignored);
	}
	customer_clear(&c);
	return rc;
}

/* Step 5, expired: the hold is gone or past its deadline. Expire it if nobody did, refund
 * the charge unless the subscription ended active, answer what the key holds. */
static void expire(struct request *rq, struct response *rs, const struct subscription *sub,
		   const struct payment *charge)
{
	struct store *s = rq->store;
	struct subscription now_sub = {0};
	struct err e = {0};
	char *body = error_body("HOLD_EXPIRED",
				"The seat hold expired before the payment finished; any charge is refunded",
				rq->trace_id, NULL);
	struct outcome o = {409, body};

	if (s->ops->hold_release(s, sub->id, "expired", now_ms(), &o, &rq->audit, &e) &&
	    e.kind != ERR_CONFLICT) {
		response_err(rs, rq, &e);
		goto out;
	}
	if (s->ops->sub_get(s, sub->id, &now_sub, &e)) {
		response_err(rs, rq, &e);
		goto out;
	}
	if (strcmp(now_sub.status, "active") && strcmp(now_sub.status, "cancelled") &&
	    !strcmp(charge->status, "succeeded") && payment_refund(s, charge, &rq->audit, &e)) {
		/* The reaper refunds charges of expired holds that were left unrefunded. */
		LOG_WARN(rq->trace_id, "refund of %s deferred to the reaper: %s", charge->id, e.msg);
	}
	answer_stored(rq, rs);
out:
	subscription_clear(&now_sub);
	free(body);
}

/* Steps 4 and 5: charge outside any transaction, then settle in one atomic unit. */
static void charge_and_settle(struct request *rq, struct response *rs, struct subscription *sub,
			      const char *payment_method, const char *token)
{
	struct store *s = rq->store;
	struct payment charge;
	struct err e = {0};
	char *body = NULL;
	int64_t now;

	if (payment_charge(s, sub, payment_method, rq->cfg->payment_latency_ms, &rq->audit, &charge, &e)) {
		/* The key stays bound to the hold; a retry after the lease resumes here. */
		LOG_WARN(rq->trace_id, "charge for %s: %s", sub->id, e.msg);
		response_err(rs, rq, &e);
		return;
	}
	if (strcmp(charge.status, "succeeded")) {
		struct json_object *d = json_object_new_object();
		json_object_object_add(d, "declineCode", json_object_new_string(charge.decline_code));
		body = error_body("PAYMENT_FAILED", "The payment was declined; the seat was given back",
				  rq->trace_id, d);
		struct outcome o = {402, body};
		if (s->ops->hold_release(s, sub->id, "failed", now_ms(), &o, &rq->audit, &e) == 0) {
			rs->status = 402;
			rs->body = body;
			body = NULL;
		} else if (e.kind == ERR_CONFLICT) {
			answer_stored(rq, rs);
		} else {
			response_err(rs, rq, &e);
		}
		goto out;
	}
	now = now_ms();
	sub->start_at = now;
	sub->end_at = now + sub->duration_days * DAY_MS;
	snprintf(sub->payment_id, sizeof(sub->payment_id), "%s", charge.id);
	snprintf(sub->status, sizeof(sub->status), "active");
	sub->updated_at = now;
	struct json_object *view = view_purchase(sub, token, rq->trace_id);
	body = xstrdup(json_object_to_json_string_ext(view, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(view);
	struct outcome o = {201, body};
	if (s->ops->hold_confirm(s, sub, charge.id, now, &o, &rq->audit, &e) == 0) {
		rs->status = 201;
		rs->body = body;
		body = NULL;
	} else if (e.kind == ERR_CONFLICT) {
		expire(rq, rs, sub, &charge);
	} else {
		/* Not confirmed, not released: the hold stays until a retry or the reaper settles it. */
		response_err(rs, rq, &e);
	}
out:
	free(body);
}

void purchase_run(struct request *rq, struct response *rs, const struct purchase_req *p)
{
	struct store *s = rq->store;
	struct key_claim claim = {0};
	struct subscription sub = {0};
	struct err e = {0};
	char token[TOKEN_LEN + 1], token_hash[65], actor[ID_LEN + 1] = "";
	bool claimed;

	if (!idem_claim(rq, rs, true, &claim, &claimed))
		goto out;
	if (*claim.subscription_id) {
		/* Resuming a request that died after its hold: charge (once per key) and settle. */
		if (s->ops->sub_get(s, claim.subscription_id, &sub, &e)) {
			response_err(rs, rq, &e);
			goto out;
		}
		if (strcmp(sub.status, "pending")) {
			answer_stored(rq, rs);
			goto out;
		}
		LOG_INFO(rq->trace_id, "resuming purchase %s at its charge", sub.id);
	} else if (hold(rq, rs, p, &sub)) {
		goto out;
	}
	/* The plaintext token exists only in this response: a resumed purchase mints a new one,
	 * and confirm stores its hash. */
	token_new(sub.id, token);
	sha256_hex(token, strlen(token), token_hash);
	snprintf(sub.token_hash, sizeof(sub.token_hash), "%s", token_hash);
	snprintf(actor, sizeof(actor), "%s", sub.customer_id);
	rq->audit.actor_id = actor;
	charge_and_settle(rq, rs, &sub, p->payment_method, token);
	rq->audit.actor_id = NULL;
out:
	subscription_clear(&sub);
	key_claim_clear(&claim);
}
