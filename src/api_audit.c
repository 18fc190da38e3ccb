/* api_audit.c - /api/audit-logs: the audit trail, newest first, filtered and paged. */
#include <stdlib.h>

#include "api.h"
#include "ids.h"
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
