/* fuzz_request.c - libFuzzer target: what a client controls of a request's head — method, path,
 * query string, Authorization, Idempotency-Key, X-Trace-Id, Content-Length — given as fields
 * separated by NUL bytes, through reading the request, routing it, its query parameters and its
 * key's checks. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "router.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const names[] = {"REQUEST_METHOD=", "PATH_INFO=", "QUERY_STRING=", "HTTP_AUTHORIZATION=",
					    "HTTP_IDEMPOTENCY_KEY=", "HTTP_X_TRACE_ID=", "CONTENT_LENGTH="};
	enum { N = sizeof(names) / sizeof(names[0]) };
	char *env[N + 1] = {0}, param[128], allow[96];
	struct request rq;
	struct response rs = {0};
	size_t n = 0;
	int status;

	/* the fields, NUL-separated */
	for (size_t at = 0; n < N && at <= size; n++) {
		size_t len = strnlen((const char *)data + at, size - at);
		env[n] = xasprintf("%s%.*s", names[n], (int)len, (const char *)data + at);
		at += len + 1;
	}
	request_init(&rq, env);
	router_match(rq.method, rq.path, param, sizeof(param), allow, sizeof(allow), &status);
	free(request_query(&rq, "limit"));
	free(request_query(&rq, "after"));
	free(request_query(&rq, "cursor"));
	free(request_query(&rq, "type"));
	request_idem_key(&rq, &rs, false);
	response_free(&rs);
	request_free(&rq);
	for (size_t i = 0; i < n; i++)
		free(env[i]);
	return 0;
}
