/* api.h - the request handlers, one file per resource (api_<resource>.c). Each reads the
 * request and fills the response; none writes to the client itself. */
#ifndef NUMATIX_API_H
#define NUMATIX_API_H

#include "http.h"

typedef void (*handler_fn)(struct request *rq, struct response *rs);

void api_plans_list(struct request *rq, struct response *rs);
void api_plans_get(struct request *rq, struct response *rs);
void api_plans_stats(struct request *rq, struct response *rs);
void api_plans_create(struct request *rq, struct response *rs);
void api_plans_update(struct request *rq, struct response *rs);

void api_subscriptions_purchase(struct request *rq, struct response *rs);
void api_subscriptions_get(struct request *rq, struct response *rs);
void api_subscriptions_cancel(struct request *rq, struct response *rs);

void api_customers_create(struct request *rq, struct response *rs);
void api_customers_subscriptions(struct request *rq, struct response *rs);

void api_audit_list(struct request *rq, struct response *rs);
void api_health(struct request *rq, struct response *rs);
void api_metrics(struct request *rq, struct response *rs);

/* Shared by handlers: validates rq->json against fields; on failure answers 400 and
 * returns -1. */
struct field;
int api_body(struct request *rq, struct response *rs, const struct field *fields);
/* A page's limit and cursor from the query (limit 1..max, default def); -1 after a 400.
 * pg->cursor: new, free(). */
int api_page(struct request *rq, struct response *rs, int def, int max, struct page_req *pg);
/* A page of a list: {key: items, "nextCursor"}; takes items' reference. */
void api_page_response(struct response *rs, const char *key, struct json_object *items, const char *next);
/* A list's failure: a bad cursor is a 400 on "cursor", anything else as its outcome says. */
void api_page_error(struct response *rs, const struct request *rq, const struct err *e);

/* How a purchase's final answers read, for the ledger to store on its key. */
extern const struct ledger_replies api_replies;

#endif
