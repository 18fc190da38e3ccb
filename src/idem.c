/* idem.c - Idempotency-Key handling shared by every write route. */
#include "idem.h"

#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "ids.h"
#include "jsonx.h"
#include "log.h"
#include "util.h"

void idem_fingerprint(const struct request *rq, char out[65])
{
	char *canon = jsonx_canonical(rq->json);
	char *text = xasprintf("%s\n%s\n%s", rq->method, rq->path, canon);

	sha256_hex(text, strlen(text), out);
	free(text);
	free(canon);
}

long long idem_lease_ms(const struct request *rq)
{
	/* Half the hold: a retry after a crash resumes while the seat is still held. Capped,
	 * because no live request runs longer than nginx waits for it. */
	long long ms = (long long)rq->cfg->hold_ttl_s * 500;

	if (ms > 60000)
		ms = 60000;
	return ms < 1000 ? 1000 : ms;
}

int idem_claim(struct request *rq, struct response *rs, bool required, struct key_claim *claim,
	       bool *claimed)
{
	struct err e = {0};
	char fp[65];
	int64_t now = now_ms();

	*claimed = false;
	memset(claim, 0, sizeof(*claim));
	if (!rq->idem_key) {
		if (required)
			response_error(rs, rq, 400, "MISSING_IDEMPOTENCY_KEY",
				       "The Idempotency-Key header is required", NULL);
		return 0;
	}
	if (!uuid_valid(rq->idem_key)) {
		response_error(rs, rq, 400, "INVALID_IDEMPOTENCY_KEY",
			       "The Idempotency-Key header must be a UUID", NULL);
		return 0;
	}
	/* Keys compare in one case: a client that upper-cases a UUID means the same key. */
	for (char *c = rq->idem_key; *c; c++)
		if (*c >= 'A' && *c <= 'F')
			*c = (char)(*c - 'A' + 'a');
	idem_fingerprint(rq, fp);
	if (rq->store->ops->key_claim(rq->store, rq->idem_key, fp, now, now + idem_lease_ms(rq), claim, &e)) {
		LOG_WARN(rq->trace_id, "claiming key %s: %s", rq->idem_key, e.msg);
		response_err(rs, rq, &e);
		return 0;
	}
	switch (claim->state) {
	case KEY_NEW:
	case KEY_RESUME:
		*claimed = true;
		return 1;
	case KEY_REPLAY:
		free(rs->body);
		rs->status = claim->status;
		rs->body = claim->body;
		claim->body = NULL;
		rs->replayed = true;
		return 0;
	case KEY_IN_PROGRESS: {
		long long wait = (claim->locked_until - now + 999) / 1000;
		response_error(rs, rq, 409, "REQUEST_IN_PROGRESS",
			       "A request with this Idempotency-Key is still running; retry later", NULL);
		rs->retry_after = wait < 1 ? 1 : (int)wait;
		return 0;
	}
	case KEY_MISMATCH:
		response_error(rs, rq, 422, "IDEMPOTENCY_KEY_REUSED",
			       "This Idempotency-Key was used for a different request", NULL);
		return 0;
	}
	return 0;
}

void idem_settle(struct request *rq, struct response *rs)
{
	struct err e = {0};
	int rc;

	if (rs->status >= 200 && rs->status < 300) {
		struct outcome o = {rs->status, rs->body};
		rc = rq->store->ops->key_finish(rq->store, rq->idem_key, &o, now_ms(), &e);
	} else {
		rc = rq->store->ops->key_forget(rq->store, rq->idem_key, &e);
	}
	/* The effect already happened; a key left unsettled is forgotten by the reaper when its
	 * lease ends, so the answer stands. */
	if (rc)
		LOG_WARN(rq->trace_id, "settling key %s: %s", rq->idem_key, e.msg);
}
