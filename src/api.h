/* api.h - the request handlers, one file per resource (api_<resource>.c). Each reads the
 * request and fills the response; none writes to the client itself. */
#ifndef NUMATIX_API_H
#define NUMATIX_API_H

#include "http.h"
#include "valid.h"

typedef void (*handler_fn)(struct request *rq, struct response *rs);

void api_plans_list(struct request *rq, struct response *rs);
void api_plans_get(struct request *rq, struct response *rs);
void api_plans_stats(struct request *rq, struct response *rs);
void api_plans_create(struct request *rq, struct response *rs);
void api_plans_update(struct request *rq, struct response *rs);

void api_subscriptions_purchase(struct request *rq, struct response *rs);
void api_subscriptions_get(struct request *rq, struct response *rs);
void api_subscriptions_cancel(struct request *rq, struct response *rs);
void api_subscriptions_change_plan(struct request *rq, struct response *rs);
void api_subscriptions_resume(struct request *rq, struct response *rs);
void api_renewals(struct request *rq, struct response *rs);
void api_subscriptions_payment_method(struct request *rq, struct response *rs);

void api_checkout_create(struct request *rq, struct response *rs);
void api_checkout_get(struct request *rq, struct response *rs);
void api_checkout_complete(struct request *rq, struct response *rs);
void api_checkout_expire(struct request *rq, struct response *rs);
void api_checkout_authenticate(struct request *rq, struct response *rs);

void api_customers_create(struct request *rq, struct response *rs);
void api_customers_subscriptions(struct request *rq, struct response *rs);
void api_subscriptions_access_token(struct request *rq, struct response *rs);
void api_customer_payments(struct request *rq, struct response *rs);
void api_customer_waitlist(struct request *rq, struct response *rs);
void api_customer_me(struct request *rq, struct response *rs);
void api_customer_subscriptions(struct request *rq, struct response *rs);
void api_customer_login(struct request *rq, struct response *rs);
void api_customer_sessions_create(struct request *rq, struct response *rs);
void api_customer_sessions_end(struct request *rq, struct response *rs);

void api_audit_list(struct request *rq, struct response *rs);
void api_events(struct request *rq, struct response *rs);
void api_waitlist_join(struct request *rq, struct response *rs);
void api_waitlist_get(struct request *rq, struct response *rs);
void api_waitlist_leave(struct request *rq, struct response *rs);
void api_waitlist_list(struct request *rq, struct response *rs);
void api_webhooks_create(struct request *rq, struct response *rs);
void api_webhooks_list(struct request *rq, struct response *rs);
void api_webhooks_delete(struct request *rq, struct response *rs);
void api_webhooks_deliveries(struct request *rq, struct response *rs);
void api_mail_list(struct request *rq, struct response *rs);
/* Whether t spells an event type (seat.held): 1 to 39 of a-z . _ */
bool api_event_type_valid(const char *t);
void api_health(struct request *rq, struct response *rs);
void api_stripe_webhook(struct request *rq, struct response *rs);
void api_payments_summary(struct request *rq, struct response *rs);
void api_metrics(struct request *rq, struct response *rs);

/* Shared by handlers: validates rq->json against fields; on failure answers 400 and
 * returns -1. */

int api_body(struct request *rq, struct response *rs, const struct field *fields);
/* The query's integer at key, lo..hi, or def when absent; -1 after a 400. */
int api_query_int(struct request *rq, struct response *rs, const char *key, int64_t lo, int64_t hi, int64_t def,
		  int64_t *out);
/* A page's limit and cursor from the query (limit 1..max, default def); -1 after a 400.
 * pg->cursor: new, free(). */
int api_page(struct request *rq, struct response *rs, int def, int max, struct page_req *pg);
/* A page of a list: {key: items, "nextCursor"}; takes items' reference. */
void api_page_response(struct response *rs, const char *key, struct json_object *items, const char *next);
/* A list's failure: a bad cursor is a 400 on "cursor", anything else as its outcome says. */
void api_page_error(struct response *rs, const struct request *rq, const struct err *e);

/* A customer object's fields: {"email", "name"}. */
extern const struct field api_customer_fields[];
/* A route whose Idempotency-Key is required: the key present and well formed, the body valid
 * against fields; -1 after answering 400. */
int api_keyed_body(struct request *rq, struct response *rs, const struct field *fields);
/* The integer at key of the (validated) body, or def when absent. */
int64_t api_int(struct request *rq, const char *key, int64_t def);
/* The string at key (or at key.sub) of the body, or NULL. */
const char *api_str(struct request *rq, const char *key, const char *sub);
/* 400 unless method is a payment method id; -1 after answering. */
int api_payment_method(struct request *rq, struct response *rs, const char *method);
/* 400 unless the body names either customerId or customer; -1 after answering. */
int api_customer_given(struct request *rq, struct response *rs);
/* Claims the request's present Idempotency-Key for a request whose effect is claimed by the
 * handler's own units. 1: run it; 0: rs holds the answer (a replay, in progress, reused). */
int api_idem_begin(struct request *rq, struct response *rs);
/* The answer of a purchase or a checkout step. */
struct purchase_result;
void api_purchase_answer(struct request *rq, struct response *rs, const struct purchase_result *r);

/* How a purchase's final answers read, for the ledger to store on its key. */
extern const struct ledger_replies api_replies;

#endif
