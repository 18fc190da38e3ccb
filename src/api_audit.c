/* api_audit.c - the audit trail: /api/audit-logs newest first, filtered and paged; /api/events
 * the same events as a feed in commit order, read by position. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "ids.h"
#include "valid.h"
#include "view.h"

void api_audit_list(struct request *rq, struct response *rs)
{
	struct audit_event *ev = NULL;
	struct audit_filter f = {0};
	struct page_req pg = {0};
	struct err e = {0};
	char *plan = request_query(rq, "planId"), *trace = request_query(rq, "traceId");
	char *action = request_query(rq, "action"), next[CURSOR_LEN];
	size_t n = 0, i;

	if (plan && !id_valid(plan)) {
		response_invalid(rs, rq, "planId", "must be a 24-character hex id");
		goto out;
	}
	if (trace && !trace_id_valid(trace)) {
		response_invalid(rs, rq, "traceId", "must be 1 to 64 of A-Z a-z 0-9 . _ -");
		goto out;
	}
	if (action && !utf8_valid(action, strlen(action))) {
		response_invalid(rs, rq, "action", "must be valid UTF-8");
		goto out;
	}
	if (api_page(rq, rs, 50, 200, &pg))
		goto out;
	f.plan_id = plan;
	f.trace_id = trace;
	f.action = action;
	if (ledger_audit_list(rq->lg, &f, &pg, &ev, &n, next, &e)) {
		api_page_error(rs, rq, &e);
		goto out;
	}
	struct json_object *arr = json_object_new_array();
	for (i = 0; i < n; i++)
		json_object_array_add(arr, view_audit_event(&ev[i]));
	api_page_response(rs, "logs", arr, next);
out:
	for (i = 0; i < n; i++)
		audit_event_clear(&ev[i]);
	free(ev);
	free(plan);
	free(trace);
	free(action);
	free(pg.cursor);
}

bool api_event_type_valid(const char *t)
{
	size_t n = strlen(t);

	return n > 0 && n < sizeof(((struct audit_event *)0)->action) && strspn(t, "abcdefghijklmnopqrstuvwxyz._") == n;
}

void api_events(struct request *rq, struct response *rs)
{
	struct audit_event *ev = NULL;
	struct err e = {0};
	char *type = request_query(rq, "type");
	int64_t after, limit;
	size_t n = 0, i;

	if (api_query_int(rq, rs, "after", 0, INT64_MAX, 0, &after) ||
	    api_query_int(rq, rs, "limit", 1, 1000, 100, &limit))
		goto out;
	if (type && !api_event_type_valid(type)) {
		response_invalid(rs, rq, "type", "must be an event type such as seat.held");
		goto out;
	}
	if (ledger_feed(rq->lg, after, type, (int)limit, &ev, &n, &e)) {
		response_err(rs, rq, &e);
		goto out;
	}
	struct json_object *o = json_object_new_object(), *arr = json_object_new_array();
	for (i = 0; i < n; i++)
		json_object_array_add(arr, view_feed_event(&ev[i]));
	json_object_object_add(o, "events", arr);
	json_object_object_add(o, "nextAfter", json_object_new_int64(n ? ev[n - 1].seq : after));
	response_json(rs, 200, o);
out:
	for (i = 0; i < n; i++)
		audit_event_clear(&ev[i]);
	free(ev);
	free(type);
}
