/* idem.c - Idempotency-Keys of the routes whose effect is one atomic step. */
#include "idem.h"

#include <stdlib.h>
#include <string.h>

#include "jsonx.h"
#include "log.h"
#include "util.h"

void idem_claim_clear(struct idem_claim *c)
{
	free(c->reply.body);
	memset(c, 0, sizeof(*c));
}

void idem_fingerprint(const char *method, const char *path, struct json_object *body, char out[65])
{
	char *canon = jsonx_canonical(body);
	char *text = xasprintf("%s\n%s\n%s", method, path, canon);

	sha256_hex(text, strlen(text), out);
	free(text);
	free(canon);
}

int idem_claim(struct ledger *lg, const char *key, const char *fingerprint, struct idem_claim *out,
	       struct err *e)
{
	int64_t now = now_ms(), wait;
	struct claim_req r = {key, fingerprint, now, now + ledger_lease_ms(lg)};
	struct claim c;

	memset(out, 0, sizeof(*out));
	if (lg->store->ops->key_claim(lg->store, &r, &c, e))
		return -1;
	if (c.result == CLAIM_NEW || c.taken_over) {
		out->outcome = IDEM_RUN;
	} else if (strcmp(c.key.fingerprint, fingerprint)) {
		out->outcome = IDEM_REUSED;
	} else if (c.key.state == KEY_DONE) {
		if (ledger_reply_read(lg, &c.key.reply, e)) {
			claim_clear(&c);
			return -1;
		}
		out->outcome = IDEM_REPLAY;
		out->reply = c.key.reply;
		c.key.reply.body = NULL;
	} else {
		out->outcome = IDEM_IN_PROGRESS;
		wait = (c.key.locked_until - now + 999) / 1000;
		out->retry_after_s = wait < 1 ? 1 : (int)wait;
	}
	claim_clear(&c);
	return 0;
}

void idem_settle(struct ledger *lg, const char *key, const struct reply *r, const char *trace_id)
{
	struct err e = {0};
	bool matched = true;
	int rc;

	if (r->status >= 200 && r->status < 300) {
		rc = ledger_key_finish(lg, key, r, &matched, &e);
	} else
		rc = lg->store->ops->key_forget(lg->store, key, &e);
	/* The effect already happened and its answer goes out; a key left unsettled is
	 * resumed by a retry after its lease, or purged after the retention. */
	if (rc)
		LOG_WARN(trace_id, "settling key %s: %s", key, e.msg);
	else if (!matched)
		LOG_ERROR(trace_id, "key %s was gone or done before its answer was stored", key);
}
