/* api_health.c - /api/health: whether this worker reaches its store. */
#include "api.h"
#include "log.h"
#include "version.h"

void api_health(struct request *rq, struct response *rs)
{
	struct json_object *o = json_object_new_object();
	struct err e = {0};
	const char *store;
	int ok = ledger_ping(rq->lg, &store, &e) == 0;

	if (!ok)
		LOG_WARN(rq->trace_id, "health: %s", e.msg);
	json_object_object_add(o, "status", json_object_new_string(ok ? "ok" : "unavailable"));
	json_object_object_add(o, "store", json_object_new_string(store));
	json_object_object_add(o, "version", json_object_new_string(NUMATIX_VERSION));
	json_object_object_add(o, "traceId", json_object_new_string(rq->trace_id));
	if (!ok)
		rs->retry_after = 5;
	response_json(rs, ok ? 200 : 503, o);
}
