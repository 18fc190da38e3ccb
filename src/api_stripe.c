/* api_stripe.c - POST /api/stripe/webhook: Stripe's events.
 *
 * The Stripe-Signature header is the credential (checked against every configured secret,
 * 300 s of tolerance): a bad, stale or missing one is 400 INVALID_SIGNATURE and nothing changes.
 * Each event id is recorded once (a duplicate answers 200 and does nothing). An event is only a
 * trigger: the PaymentIntent it names is read again from Stripe and settled through the ledger's
 * own step, the one the purchase's request uses, so whichever comes first wins and the other
 * changes nothing. A dispute is flagged for the operator. 5xx only when the store is unavailable,
 * so that Stripe sends the event again. */
#include <stdio.h>
#include <string.h>

#include "api.h"
#include "idem.h"
#include "jsonx.h"
#include "log.h"
#include "payment.h"
#include "purchase.h"

/* What one event asks of the ledger. 0, or -1 with e when the store could not. */
static int handle(struct request *rq, const char *type, struct json_object *object, struct err *e)
{
	struct actor a = rq->actor;

	a.type = "system";
	a.id = "stripe";
	if (!strncmp(type, "payment_intent.", 15)) {
		struct json_object *meta = jsonx_obj(object, "metadata");
		const char *sub = jsonx_str(meta, "subscription"), *key = jsonx_str(meta, "numatix_key"), *id = jsonx_str(object, "id");
		if (!sub || !key || !id)
			return 0;   /* not a payment of ours */
		return purchase_event(rq->lg, &a, sub, key, id, e);
	}
	if (!strcmp(type, "charge.dispute.created")) {
		const char *pi = jsonx_str(object, "payment_intent"), *dispute = jsonx_str(object, "id");
		struct pay_result pr;
		int64_t amount = jsonx_int(object, "amount");
		if (!pi || !dispute)
			return 0;
		/* the subscription it is of, from the PaymentIntent's own metadata */
		const struct pay_ref ref = {"", pi, NULL, NULL};
		switch (payment_lookup(rq->lg, &ref, &pr)) {
		case PAY_OK:
			break;
		case PAY_INVALID:
			return 0;   /* not a payment Stripe knows: nothing of ours */
		default:
			err_set(e, ERR_UNAVAILABLE, NULL, "the disputed payment %s could not be read: %s", pi, pr.msg);
			return -1;
		}
		return *pr.subscription_id ? purchase_dispute(rq->lg, &a, pr.subscription_id, dispute, pi, amount, e) : 0;
	}
	return 0;   /* charge.refunded and the rest: the ledger keeps its own record */
}

void api_stripe_webhook(struct request *rq, struct response *rs)
{
	char why[160], key[128];
	struct idem_claim c = {0};
	struct err e = {0};
	bool none;
	struct json_object *o;

	if (payment_verify_event(rq->lg, rq->body ? rq->body : "", rq->body_len, rq->stripe_signature, &none, why,
				 sizeof(why))) {
		if (none) {
			response_error(rs, rq, 404, "NOT_FOUND", "No such route: the payment processor sends no events", NULL);
			return;
		}
		LOG_WARN(rq->trace_id, "stripe event refused: %s", why);
		response_error(rs, rq, 400, "INVALID_SIGNATURE", "The Stripe-Signature header does not verify", NULL);
		return;
	}
	const char *id = jsonx_str(rq->json, "id"), *type = jsonx_str(rq->json, "type");
	struct json_object *object = jsonx_obj(jsonx_obj(rq->json, "data"), "object");
	if (!id || !type || !object || strlen(id) > 100) {
		response_error(rs, rq, 400, "VALIDATION_ERROR", "An event has an id, a type and data.object", NULL);
		return;
	}
	/* each event once: its id kept as a key of the idempotent routes' */
	snprintf(key, sizeof(key), "stripe-event-%s", id);
	if (idem_claim(rq->lg, key, "stripe-event", &c, &e)) {
		rs->retry_after = 1;
		response_error(rs, rq, 503, "SERVICE_UNAVAILABLE", "The store is unavailable; Stripe sends the event again", NULL);
		return;
	}
	if (c.outcome == IDEM_IN_PROGRESS) {
		/* being handled now: Stripe sends it again, in case this one fails */
		idem_claim_clear(&c);
		rs->retry_after = 1;
		response_error(rs, rq, 409, "REQUEST_IN_PROGRESS", "This event is being handled", NULL);
		return;
	}
	if (c.outcome != IDEM_RUN) {
		/* seen before: nothing more to do */
		o = json_object_new_object();
		json_object_object_add(o, "received", json_object_new_boolean(1));
		json_object_object_add(o, "duplicate", json_object_new_boolean(1));
		response_json(rs, 200, o);
		idem_claim_clear(&c);
		return;
	}
	idem_claim_clear(&c);
	if (handle(rq, type, object, &e)) {
		LOG_WARN(rq->trace_id, "stripe event %s (%s): %s", id, type, e.msg);
		rs->retry_after = 1;
		response_error(rs, rq, 503, "SERVICE_UNAVAILABLE", "The event could not be settled now; Stripe sends it again",
			       NULL);
	} else {
		o = json_object_new_object();
		json_object_object_add(o, "received", json_object_new_boolean(1));
		response_json(rs, 200, o);
	}
	/* a 2xx is kept (a duplicate does nothing); anything else forgets the id, for Stripe's retry */
	struct reply r = {rs->status, rs->body};
	idem_settle(rq->lg, key, &r, rq->trace_id);
}
