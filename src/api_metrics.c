/* api_metrics.c - /api/metrics: the server's counters in Prometheus's text format. nginx
 * answers it to loopback clients only. */
#include <stdlib.h>

#include "api.h"
#include "metrics.h"
#include "router.h"

void api_metrics(struct request *rq, struct response *rs)
{
	free(rs->body);
	rs->status = 200;
	rs->body = metrics_render(rq->lg, router_name);
	rs->content_type = "text/plain; version=0.0.4; charset=utf-8";
}
