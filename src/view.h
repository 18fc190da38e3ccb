/* view.h - the JSON representations of the API (API.md), one function per object.
 * Each returns a new json_object reference. */
#ifndef NUMATIX_VIEW_H
#define NUMATIX_VIEW_H

#include <json-c/json.h>

#include "model.h"

struct json_object *view_plan(const struct plan *p);
/* paying, sessions: the plan's held seats by kind, read just after it. */
struct json_object *view_plan_stats(const struct plan *p, int64_t paying, int64_t sessions);
struct json_object *view_customer(const struct customer *c);
/* The subscription as GET shows it. */
struct json_object *view_subscription(const struct subscription *s);
/* The purchase's 201 body: the subscription with its access token and the trace id. */
/* A checkout session: its pending subscription seen as a session (API.md). */
struct json_object *view_session(const struct subscription *s);
struct json_object *view_purchase(const struct subscription *s, const char *access_token,
				  const char *trace_id);
struct json_object *view_audit_event(const struct audit_event *a);
/* An event of the feed (and of a webhook delivery): {"seq", "id", "type", "at", "traceId",
 * "data"}, data holding what the change touched and its seat counts. */
struct json_object *view_feed_event(const struct audit_event *a);
/* A webhook endpoint; its secret only when with_secret (the answer to its creation). */
struct json_object *view_webhook(const struct webhook *w, bool with_secret);
/* A payment as its customer's receipt: kind (charge, renewal, refund), amount, time, subscription. */
struct json_object *view_receipt(const struct payment *p);
struct json_object *view_delivery(const struct delivery *d);
/* A mail of the outbox as the admin sees it: no data but its kind and whom it goes to. */
struct json_object *view_mail(const struct mail *m);
/* A waiting-list entry; its access token when given (the answer to joining), its offer's
 * client secret only when with_secret (the admin, or the entry's own token). */
/* access_token: the entry's, shown once at its join; client_secret: its offer's (opened, see
 * ledger_unseal), shown while offered. Either NULL. */
struct json_object *view_entry(const struct waitlist_entry *w, const char *access_token, const char *client_secret);
/* An RFC 3339 string, or null for 0. */
struct json_object *view_time(int64_t ms);

#endif
