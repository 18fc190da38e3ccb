/* api.c - what the handlers share: body validation and paging parameters. */
#include "api.h"

#include <stdio.h>
#include <stdlib.h>

#include "store.h"
#include "valid.h"

int api_body(struct request *rq, struct response *rs, const struct field *fields)
{
	struct vfail f = {{0}, {0}};

	if (!rq->json) {
		response_invalid(rs, rq, "", "a JSON object body is required");
		return -1;
	}
	if (valid_object(rq->json, fields, &f)) {
		response_invalid(rs, rq, f.field, f.reason);
		return -1;
	}
	return 0;
}

int api_page(struct request *rq, struct response *rs, int def, int max, struct page *pg, char **cursor)
{
	char *limit = request_query(rq, "limit"), *end;
	long n = def;
	int rc = -1;

	*cursor = request_query(rq, "cursor");
	if (limit) {
		n = strtol(limit, &end, 10);
		if (!*limit || *end || n < 1 || n > max) {
			char reason[64];
			snprintf(reason, sizeof(reason), "must be an integer from 1 to %d", max);
			response_invalid(rs, rq, "limit", reason);
			goto out;
		}
	}
	pg->limit = (int)n;
	pg->cursor = *cursor;
	pg->next_cursor[0] = '\0';
	rc = 0;
out:
	free(limit);
	return rc;
}

void api_page_response(struct response *rs, const char *key, struct json_object *items, const struct page *pg)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, key, items);
	json_object_object_add(o, "nextCursor", *pg->next_cursor ? json_object_new_string(pg->next_cursor) : NULL);
	response_json(rs, 200, o);
}

void api_page_error(struct response *rs, const struct request *rq, const struct err *e)
{
	/* The only invalid input a store reports on a list is a cursor it never gave. */
	if (e->kind == ERR_INVALID)
		response_invalid(rs, rq, "cursor", e->msg);
	else
		response_err(rs, rq, e);
}
