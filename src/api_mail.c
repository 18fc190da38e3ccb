/* api_mail.c - the outbox as the admin reads it (GET /api/mail). The sending is mailer.c's. */
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "view.h"

void api_mail_list(struct request *rq, struct response *rs)
{
	struct mail *m = NULL;
	struct page_req pg = {0};
	struct err e = {0};
	char next[CURSOR_LEN];
	char *status = request_query(rq, "status");
	size_t n = 0;

	if (status && strcmp(status, "queued") && strcmp(status, "sent") && strcmp(status, "failed")) {
		response_invalid(rs, rq, "status", "must be queued, sent or failed");
		goto out;
	}
	if (api_page(rq, rs, 50, 200, &pg))
		goto out;
	if (ledger_mail_list(rq->lg, status, &pg, &m, &n, next, &e)) {
		api_page_error(rs, rq, &e);
		goto out;
	}
	struct json_object *arr = json_object_new_array();
	for (size_t i = 0; i < n; i++)
		json_object_array_add(arr, view_mail(&m[i]));
	api_page_response(rs, "mail", arr, next);
out:
	for (size_t i = 0; i < n; i++)
		mail_clear(&m[i]);
	free(m);
	free(pg.cursor);
	free(status);
}
