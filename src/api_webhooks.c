/* api_webhooks.c - /api/webhook-endpoints: create (the secret shown once), list, delete, and
 * an endpoint's deliveries. The sending is webhook.c's. */
#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "ids.h"
#include "view.h"
#include "webhook.h"

static const struct field endpoint_fields[] = {
	{"url", V_STRING, true, 1, 2048, NULL, NULL},
	{"events", V_STRINGS, true, 0, 50, NULL, NULL},
	{"description", V_STRING, false, 0, 500, NULL, NULL},
	{NULL, 0, false, 0, 0, NULL, NULL},
};

/* An absolute http or https URL with a host. */
static bool url_valid(const char *url)
{
	CURLU *u = curl_url();
	char *scheme = NULL, *host = NULL;
	bool ok = u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
		  curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
		  curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
		  (!strcmp(scheme, "http") || !strcmp(scheme, "https")) && *host;

	curl_free(scheme);
	curl_free(host);
	curl_url_cleanup(u);
	/* as written, not as curl would mend it ("http:///x" reads as http://x to curl) */
	const char *rest = !strncmp(url, "http://", 7) ? url + 7 : !strncmp(url, "https://", 8) ? url + 8 : NULL;
	return ok && rest && *rest && *rest != '/' && !strpbrk(url, " \t\r\n");
}

/* ["*"] alone, or one or more event types. */
static const char *events_invalid(struct json_object *events)
{
	size_t n = json_object_array_length(events);

	if (n == 0)
		return "must name at least one event type, or \"*\" for all";
	for (size_t i = 0; i < n; i++) {
		const char *t = json_object_get_string(json_object_array_get_idx(events, i));
		if (!strcmp(t, "*") ? n != 1 : !api_event_type_valid(t))
			return "must be [\"*\"] alone, or event types such as seat.held";
	}
	return NULL;
}

void api_webhooks_create(struct request *rq, struct response *rs)
{
	struct json_object *events;
	struct webhook w = {0};
	struct err e = {0};
	const char *url, *why;

	if (api_body(rq, rs, endpoint_fields))
		return;
	url = api_str(rq, "url", NULL);
	json_object_object_get_ex(rq->json, "events", &events);
	if (!url_valid(url)) {
		response_invalid(rs, rq, "url", "must be an absolute http:// or https:// URL");
		return;
	}
	if ((why = events_invalid(events))) {
		response_invalid(rs, rq, "events", why);
		return;
	}
	if (webhook_create(rq->lg, url, json_object_to_json_string_ext(events, JSON_C_TO_STRING_PLAIN),
			   api_str(rq, "description", NULL), &w, &e))
		response_err(rs, rq, &e);
	else
		response_json(rs, 201, view_webhook(&w, true));
	webhook_clear(&w);
}

void api_webhooks_list(struct request *rq, struct response *rs)
{
	struct webhook *all = NULL;
	struct err e = {0};
	size_t n = 0;

	if (ledger_webhook_list(rq->lg, &all, &n, &e)) {
		response_err(rs, rq, &e);
		return;
	}
	struct json_object *o = json_object_new_object(), *arr = json_object_new_array();
	for (size_t i = 0; i < n; i++) {
		json_object_array_add(arr, view_webhook(&all[i], false));
		webhook_clear(&all[i]);
	}
	free(all);
	json_object_object_add(o, "endpoints", arr);
	response_json(rs, 200, o);
}

void api_webhooks_delete(struct request *rq, struct response *rs)
{
	struct err e = {0};

	if (ledger_webhook_delete(rq->lg, rq->param, &e))
		response_err(rs, rq, &e);
	else
		rs->status = 204;
}

void api_webhooks_deliveries(struct request *rq, struct response *rs)
{
	struct delivery *d = NULL;
	struct page_req pg = {0};
	struct err e = {0};
	char next[CURSOR_LEN];
	size_t n = 0;

	if (!id_valid(rq->param)) {
		response_error(rs, rq, 404, "WEBHOOK_ENDPOINT_NOT_FOUND", "Webhook endpoint not found", NULL);
		return;
	}
	if (api_page(rq, rs, 50, 200, &pg))
		goto out;
	if (ledger_delivery_list(rq->lg, rq->param, &pg, &d, &n, next, &e)) {
		api_page_error(rs, rq, &e);
		goto out;
	}
	struct json_object *arr = json_object_new_array();
	for (size_t i = 0; i < n; i++)
		json_object_array_add(arr, view_delivery(&d[i]));
	api_page_response(rs, "deliveries", arr, next);
out:
	free(d);
	free(pg.cursor);
}
