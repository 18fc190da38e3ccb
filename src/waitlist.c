/* waitlist.c - waiting lists over the store's primitives: what a join prepares for its offer,
 * which refusal gets which code, leaving (an offered entry's session expires with it). */
#include "waitlist.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "purchase.h"
#include "util.h"

static void join_refused(const struct join_out *o, const struct join_spec *js, struct err *e)
{
	switch (o->result) {
	case JOIN_NO_PLAN:
		err_set(e, ERR_NOT_FOUND, "PLAN_NOT_FOUND", "no plan %s", js->plan_id);
		break;
	case JOIN_PLAN_INACTIVE:
		err_set(e, ERR_CONFLICT, "PLAN_INACTIVE", "plan %s is not on sale", js->plan_id);
		break;
	case JOIN_DISABLED:
		err_set(e, ERR_CONFLICT, "WAITLIST_DISABLED", "plan %s has no waiting list", js->plan_id);
		break;
	case JOIN_ORDER_LIMIT:
		ledger_refuse_order_limit(js->quantity, o->limit, e);
		break;
	case JOIN_SEATS_AVAILABLE:
		err_set(e, ERR_CONFLICT, "SEATS_AVAILABLE", "%" PRId64 " seats are free", o->available);
		snprintf(e->details, sizeof(e->details), "{\"available\":%" PRId64 "}", o->available);
		break;
	case JOIN_CUSTOMER_LIMIT:
		ledger_refuse_customer_limit(o->held, o->limit, e);
		break;
	case JOIN_ALREADY_WAITING:
		err_set(e, ERR_CONFLICT, "ALREADY_WAITING", "the customer waits for plan %s already", js->plan_id);
		break;
	default:
		err_set(e, ERR_NOT_FOUND, "CUSTOMER_NOT_FOUND", "no customer %s", js->customer_id ? js->customer_id : "");
		break;
	}
}

int waitlist_join(struct ledger *lg, const struct actor *a, const struct join_spec *js, struct waitlist_entry *out,
		  char token[TOKEN_LEN + 1], struct err *e)
{
	struct waitlist_entry w = {0};
	struct customer c = {0};
	struct join_out o;
	int64_t now = now_ms();
	int rc = -1;

	id_new(w.id);
	snprintf(w.plan_id, sizeof(w.plan_id), "%s", js->plan_id);
	w.quantity = js->quantity;
	entry_token_new(w.id, token);
	sha256_hex(token, strlen(token), w.token_hash);
	/* what its offer will be, made now so that the store makes the offer alone */
	id_new(w.session_id);
	uuid_new(w.offer_key);
	{
		char secret[TOKEN_LEN + 1], *kept;
		secret_new(w.session_id, secret);
		sha256_hex(secret, strlen(secret), w.secret_hash);
		kept = ledger_seal(lg, secret);
		snprintf(w.offer_secret, sizeof(w.offer_secret), "%s", kept);
		free(kept);
	}
	w.offer_ttl_ms = (int64_t)lg->offer_ttl_s * 1000;
	w.created_at = w.updated_at = now;
	if (!js->customer_id) {
		id_new(c.id);
		c.email = xstrdup(js->email);
		c.name = xstrdup(js->name);
		c.created_at = now;
	}
	const struct event_spec ev[] = {{"waitlist.joined", "waitlist_entry", w.id, EV_BEFORE_AFTER, NULL, NULL}};
	struct join_req r = {&w, js->customer_id, js->customer_id ? NULL : &c, ev, 1};
	if (lg->store->ops->waitlist_join(lg->store, &r, a, &o, e) == 0) {
		if (o.result == JOIN_DONE) {
			*out = o.entry;
			rc = 0;
		} else {
			join_refused(&o, js, e);
		}
	}
	customer_clear(&c);
	return rc;
}

int waitlist_get(struct ledger *lg, const char *id, struct waitlist_entry *out, struct err *e)
{
	bool found = false;

	if (lg->store->ops->entry_get(lg->store, id, out, &found, e))
		return -1;
	if (!found)
		err_set(e, ERR_NOT_FOUND, "ENTRY_NOT_FOUND", "no waiting-list entry %s", id);
	return found ? 0 : -1;
}

int waitlist_leave(struct ledger *lg, const struct actor *a, const char *id, struct waitlist_entry *out, struct err *e)
{
	const struct event_spec ev[] = {{"waitlist.left", "waitlist_entry", id, EV_BEFORE_AFTER, NULL, NULL}};
	struct subscription session;
	bool moved = false, found = false;

	if (lg->store->ops->waitlist_leave(lg->store, id, now_ms(), ev, 1, a, &moved, out, &found, e))
		return -1;
	if (!found) {
		err_set(e, ERR_NOT_FOUND, "ENTRY_NOT_FOUND", "no waiting-list entry %s", id);
		return -1;
	}
	if (moved || strcmp(out->status, "offered"))
		goto done;
	/* An unused offer: its session expires now and its seats pass on in that unit. A session
	 * completed meanwhile is the customer's: the entry is converted, not left. */
	if (checkout_expire(lg, a, out->session_id, "left", &session, e) == 0)
		subscription_clear(&session);
	else if (strcmp(e->code ? e->code : "", "SESSION_COMPLETED"))
		return -1;
	err_clear(e);
	if (waitlist_get(lg, id, out, e))
		return -1;
done:
	if (!moved && strcmp(out->status, "left")) {
		err_set(e, ERR_CONFLICT, "ENTRY_NOT_LIVE", "entry %s is %s", id, out->status);
		return -1;
	}
	return 0;
}

int waitlist_list(struct ledger *lg, const char *plan_id, const struct page_req *pg, struct waitlist_entry **out,
		  size_t *n, char next[CURSOR_LEN], struct err *e)
{
	struct plan p = {0};
	int64_t after;

	*out = NULL;
	*n = 0;
	next[0] = '\0';
	if (ledger_cursor_read(pg->cursor, &after, e) || ledger_plan_get(lg, plan_id, &p, e))
		return -1;
	plan_clear(&p);
	if (lg->store->ops->waitlist_list(lg->store, plan_id, after, pg->limit + 1, out, n, e))
		return -1;
	if (*n > (size_t)pg->limit) {
		--*n;
		ledger_cursor_write((*out)[*n - 1].seq, (*out)[*n - 1].id, next);
	}
	return 0;
}
