/* ledger.c - plans, customers, subscriptions and the audit trail: the refusal codes, the
 * events of each change, and cursors, once for every store. */
#include "ledger.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "outbox.h"
#include "util.h"

/* A store error passes as it is; a refusal gets its code. */
static int refuse(struct err *e, enum err_kind kind, const char *code, const char *what, const char *id)
{
	err_set(e, kind, code, "%s %s", what, id);
	return -1;
}

int64_t ledger_lease_ms(const struct ledger *lg)
{
	/* Half the hold: a retry after a crash resumes while the seat is still held. Capped,
	 * because no live request runs longer than nginx waits for it. */
	int64_t ms = (int64_t)lg->hold_ttl_s * 500;

	if (ms > 60000)
		ms = 60000;
	return ms < 1000 ? 1000 : ms;
}

int ledger_ping(struct ledger *lg, const char **store_name, struct err *e)
{
	*store_name = lg->store->ops->name;
	return lg->store->ops->ping(lg->store, e);
}

int ledger_plan_create(struct ledger *lg, const struct actor *a, const struct plan *p, struct err *e)
{
	const struct event_spec ev[] = {{"plan.created", "plan", p->id, EV_AFTER, NULL, NULL}};
	enum write_result res;

	if (lg->store->ops->plan_create(lg->store, p, ev, 1, a, &res, e))
		return -1;
	if (res == WRITE_DUPLICATE)
		return refuse(e, ERR_CONFLICT, "PLAN_NAME_TAKEN", "a plan is named", p->name);
	return 0;
}

int ledger_plan_update(struct ledger *lg, const struct actor *a, const char *id,
		       const struct plan_patch *pt, struct plan *out, struct err *e)
{
	const struct event_spec ev[] = {{"plan.updated", "plan", id, EV_BEFORE_AFTER, NULL, NULL}};
	enum write_result res;

	if (lg->store->ops->plan_update(lg->store, id, pt, now_ms(), ev, 1, a, out, &res, e))
		return -1;
	switch (res) {
	case WRITE_DONE:
		return 0;
	case WRITE_NOT_FOUND:
		return refuse(e, ERR_NOT_FOUND, "PLAN_NOT_FOUND", "no plan", id);
	case WRITE_DUPLICATE:
		return refuse(e, ERR_CONFLICT, "PLAN_NAME_TAKEN", "a plan is named", pt->name);
	case WRITE_SEATS_SHORT:
		return refuse(e, ERR_CONFLICT, "CAPACITY_BELOW_SOLD", "capacity below the seats taken of", id);
	}
	return 0;
}

int ledger_plan_get(struct ledger *lg, const char *id, struct plan *out, struct err *e)
{
	bool found;

	if (lg->store->ops->plan_get(lg->store, id, out, &found, e))
		return -1;
	return found ? 0 : refuse(e, ERR_NOT_FOUND, "PLAN_NOT_FOUND", "no plan", id);
}

int ledger_plan_held(struct ledger *lg, const char *id, int64_t *paying, int64_t *sessions, struct err *e)
{
	return lg->store->ops->held_by_kind(lg->store, id, paying, sessions, e);
}

int ledger_sub_totals(struct ledger *lg, struct sub_total **out, size_t *n, struct err *e)
{
	return lg->store->ops->sub_totals(lg->store, out, n, e);
}

int ledger_payment_totals(struct ledger *lg, struct payment_total **out, size_t *n, struct err *e)
{
	return lg->store->ops->payment_totals(lg->store, out, n, e);
}

int ledger_plan_list(struct ledger *lg, const char *status, struct plan **out, size_t *n, struct err *e)
{
	return lg->store->ops->plan_list(lg->store, status, out, n, e);
}

/* The standby a public read may go to now, or NULL. */
static struct store *standby_of(struct ledger *lg)
{
	return lg->replica ? replica_reader(lg->replica) : NULL;
}

/* A public read the standby could not answer: the primary's turn (err cleared). */
static void standby_failed(struct ledger *lg, struct err *e)
{
	LOG_WARN(NULL, "standby: %s; the primary answers", e->msg);
	replica_failed(lg->replica);
	err_clear(e);
}

int ledger_public_plan_get(struct ledger *lg, const char *id, struct plan *out, bool *standby, struct err *e)
{
	struct store *r = standby_of(lg);
	bool found = false;

	*standby = false;
	if (r && r->ops->plan_get(r, id, out, &found, e))
		standby_failed(lg, e);
	else if (r && found)
		return *standby = true, 0;
	/* (a plan the standby lacks may be one it has not replayed yet) */
	return ledger_plan_get(lg, id, out, e);
}

int ledger_public_plan_list(struct ledger *lg, const char *status, struct plan **out, size_t *n, bool *standby,
			    struct err *e)
{
	struct store *r = standby_of(lg);

	*standby = false;
	if (r && r->ops->plan_list(r, status, out, n, e) == 0)
		return *standby = true, 0;
	if (r)
		standby_failed(lg, e);
	return ledger_plan_list(lg, status, out, n, e);
}

int ledger_public_plan_held(struct ledger *lg, const char *id, int64_t *paying, int64_t *sessions, bool *standby,
			    struct err *e)
{
	struct store *r = standby_of(lg);

	*standby = false;
	if (r && r->ops->held_by_kind(r, id, paying, sessions, e) == 0)
		return *standby = true, 0;
	if (r)
		standby_failed(lg, e);
	return ledger_plan_held(lg, id, paying, sessions, e);
}

int ledger_customer_create(struct ledger *lg, const struct customer *c, struct err *e)
{
	enum write_result res;

	if (lg->store->ops->customer_create(lg->store, c, &res, e))
		return -1;
	return res == WRITE_DONE ? 0 : refuse(e, ERR_CONFLICT, "CUSTOMER_EXISTS", "a customer has the email", c->email);
}

int ledger_customer_get(struct ledger *lg, const char *id, struct customer *out, struct err *e)
{
	bool found;

	if (lg->store->ops->customer_get(lg->store, id, out, &found, e))
		return -1;
	return found ? 0 : refuse(e, ERR_NOT_FOUND, "CUSTOMER_NOT_FOUND", "no customer", id);
}

char *ledger_seal(const struct ledger *lg, const char *plain)
{
	return lg->sealing ? seal_text(lg->seal_key, plain) : xstrdup(plain);
}

char *ledger_unseal(const struct ledger *lg, const char *kept)
{
	char *plain = NULL;

	if (!lg->sealing)
		return xstrdup(kept);
	return seal_open(lg->seal_key, kept, &plain) ? NULL : plain;
}

struct reply ledger_reply_kept(const struct ledger *lg, const struct reply *r)
{
	return (struct reply){r->status, ledger_seal(lg, r->body)};
}

int ledger_transition(struct ledger *lg, const struct transition *t, const struct actor *a,
		      struct transition_out *out, struct err *e)
{
	struct transition kt = *t;
	struct reply kept = {0};
	int rc;

	if (t->reply) {
		kept = ledger_reply_kept(lg, t->reply);
		kt.reply = &kept;
	}
	rc = lg->store->ops->transition(lg->store, &kt, a, out, e);
	free(kept.body);
	return rc;
}

int ledger_key_finish(struct ledger *lg, const char *key, const struct reply *r, bool *matched, struct err *e)
{
	struct reply kept = ledger_reply_kept(lg, r);
	int rc = lg->store->ops->key_finish(lg->store, key, &kept, matched, e);

	free(kept.body);
	return rc;
}

int ledger_reply_read(const struct ledger *lg, struct reply *r, struct err *e)
{
	char *plain;

	if (!r->body)
		return 0;
	if (!(plain = ledger_unseal(lg, r->body))) {
		err_set(e, ERR_CONFLICT, "REPLAY_UNAVAILABLE",
			"the answer kept on this key was sealed under another NUMATIX_ADMIN_TOKEN");
		return -1;
	}
	free(r->body);
	r->body = plain;
	return 0;
}

int ledger_sub_get(struct ledger *lg, const char *id, struct subscription *out, struct err *e)
{
	bool found;

	if (lg->store->ops->sub_get(lg->store, id, out, &found, e))
		return -1;
	return found ? 0 : refuse(e, ERR_NOT_FOUND, "SUBSCRIPTION_NOT_FOUND", "no subscription", id);
}

int ledger_sub_cancel(struct ledger *lg, const struct actor *a, const char *id, struct subscription *out,
		      struct err *e)
{
	/* from what was read of it: a renewal or a schedule moving it meanwhile is read again */
	for (int tries = 0; tries < 5; tries++) {
		struct subscription cur = {0};
		struct transition_out o;
		struct outbox_mail m;
		if (ledger_sub_get(lg, id, &cur, e))
			return -1;
		if (strcmp(cur.status, "active") && strcmp(cur.status, "past_due")) {
			if (!strcmp(cur.status, "cancelled"))
				refuse(e, ERR_CONFLICT, "ALREADY_CANCELLED", "cancelled already:", id);
			else
				refuse(e, ERR_CONFLICT, "SUBSCRIPTION_NOT_ACTIVE", "not active:", id);
			subscription_clear(&cur);
			return -1;
		}
		struct sub_life l = cur.life;
		outbox_ended(&m, &cur, "cancelled", now_ms(), a->trace_id);
		const struct event_spec ev[] = {
			{"subscription.cancelled", "subscription", id, EV_BEFORE_AFTER, NULL, &m.spec},
			{"seat.released", "subscription", id, EV_BEFORE_AFTER, NULL, NULL},
		};
		struct transition t = {.sub_id = id, .from = cur.status, .to = "cancelled", .now = now_ms(),
				       .dleft = 1, .events = ev, .nevents = 2,
				       .life = {&l, true, cur.end_at, cur.life.next_attempt_at, cur.life.cancel_at_period_end,
						cur.life.payment_method}};
		l.ended_at = t.now;
		l.next_attempt_at = 0;
		snprintf(l.cancellation_reason, sizeof(l.cancellation_reason), "requested");
		int rc = lg->store->ops->transition(lg->store, &t, a, &o, e);
		subscription_clear(&cur);
		outbox_mail_clear(&m);
		if (rc)
			return -1;
		if (o.result == MOVED) {
			*out = o.sub;
			return 0;
		}
		transition_out_clear(&o);
	}
	return refuse(e, ERR_RETRYABLE, NULL, "kept changing:", id);
}

int ledger_token_replace(struct ledger *lg, const struct actor *a, const char *id, char token[TOKEN_LEN + 1],
			 struct subscription *out, struct err *e)
{
	static const char *const holders[] = {"active", "past_due", "cancelled", "ended", "changed"};

	for (int tries = 0; tries < 5; tries++) {
		struct subscription cur = {0};
		struct transition_out o;
		char hash[65];
		size_t i;
		if (ledger_sub_get(lg, id, &cur, e))
			return -1;
		for (i = 0; i < sizeof(holders) / sizeof(holders[0]) && strcmp(cur.status, holders[i]); i++)
			;
		if (i == sizeof(holders) / sizeof(holders[0])) {
			subscription_clear(&cur);
			return refuse(e, ERR_CONFLICT, "SUBSCRIPTION_NOT_ACTIVE", "never active, it has no access token:", id);
		}
		/* the same status in, the same out: only the hash moves, the old token's gone with it */
		const struct event_spec ev = {"subscription.token_replaced", "subscription", id, EV_NO_COUNTS, NULL, NULL};
		token_new(id, token);
		sha256_hex(token, strlen(token), hash);
		struct transition t = {.sub_id = id, .from = cur.status, .to = cur.status, .now = now_ms(),
				       .token_hash = hash, .events = &ev, .nevents = 1};
		int rc = lg->store->ops->transition(lg->store, &t, a, &o, e);
		subscription_clear(&cur);
		if (rc)
			return -1;
		if (o.result == MOVED) {
			*out = o.sub;
			return 0;
		}
		transition_out_clear(&o);
	}
	explicit_bzero(token, TOKEN_LEN + 1);
	return refuse(e, ERR_RETRYABLE, NULL, "kept changing:", id);
}

/* Cursors name the last row of a page: "<seq>.<id>". */
static int cursor_decode(const char *cursor, struct seq_page *pg, struct err *e)
{
	char *end;

	pg->before_seq = 0;
	pg->before_id[0] = '\0';
	if (!cursor || !*cursor)
		return 0;
	pg->before_seq = strtoll(cursor, &end, 10);
	if (pg->before_seq <= 0 || *end != '.' || !id_valid(end + 1)) {
		err_set(e, ERR_INVALID, "VALIDATION_ERROR", "cursor is not one this service gave");
		return -1;
	}
	snprintf(pg->before_id, sizeof(pg->before_id), "%s", end + 1);
	return 0;
}

static void cursor_encode(int64_t seq, const char *id, char next[CURSOR_LEN])
{
	snprintf(next, CURSOR_LEN, "%" PRId64 ".%s", seq, id);
}

int ledger_cursor_read(const char *cursor, int64_t *seq, struct err *e)
{
	struct seq_page pg;

	if (cursor_decode(cursor, &pg, e))
		return -1;
	*seq = pg.before_seq;
	return 0;
}

void ledger_cursor_write(int64_t seq, const char *id, char next[CURSOR_LEN])
{
	cursor_encode(seq, id, next);
}

/* Asks the store for one row more than the page, to know whether another page follows. */
int ledger_sub_list(struct ledger *lg, const char *customer_id, const char *status,
		    const struct page_req *pr, struct subscription **out, size_t *n,
		    char next[CURSOR_LEN], struct err *e)
{
	struct seq_page pg = {.limit = pr->limit + 1};
	struct customer c = {0};

	*out = NULL;
	*n = 0;
	next[0] = '\0';
	if (cursor_decode(pr->cursor, &pg, e) || ledger_customer_get(lg, customer_id, &c, e))
		return -1;
	customer_clear(&c);
	if (lg->store->ops->sub_list(lg->store, customer_id, status, &pg, out, n, e))
		return -1;
	if (*n > (size_t)pr->limit) {
		subscription_clear(&(*out)[--*n]);
		cursor_encode((*out)[*n - 1].seq, (*out)[*n - 1].id, next);
	}
	return 0;
}

int ledger_feed(struct ledger *lg, int64_t after, const char *type, int limit, struct audit_event **out,
		size_t *n, struct err *e)
{
	*out = NULL;
	*n = 0;
	return lg->store->ops->feed_read(lg->store, after, type, limit, out, n, e);
}

int ledger_webhook_list(struct ledger *lg, struct webhook **out, size_t *n, struct err *e)
{
	*out = NULL;
	*n = 0;
	return lg->store->ops->webhook_list(lg->store, out, n, e);
}

int ledger_webhook_delete(struct ledger *lg, const char *id, struct err *e)
{
	bool found = false;

	if (!id_valid(id))
		return refuse(e, ERR_NOT_FOUND, "WEBHOOK_ENDPOINT_NOT_FOUND", "no webhook endpoint", id);
	if (lg->store->ops->webhook_delete(lg->store, id, &found, e))
		return -1;
	return found ? 0 : refuse(e, ERR_NOT_FOUND, "WEBHOOK_ENDPOINT_NOT_FOUND", "no webhook endpoint", id);
}

int ledger_webhook_get(struct ledger *lg, const char *id, struct webhook *out, struct err *e)
{
	struct webhook *all = NULL;
	size_t n = 0;
	int rc = -1;

	memset(out, 0, sizeof(*out));
	if (ledger_webhook_list(lg, &all, &n, e))
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (rc && !strcmp(all[i].id, id)) {
			*out = all[i];
			rc = 0;
		} else {
			webhook_clear(&all[i]);
		}
	}
	free(all);
	if (rc)
		refuse(e, ERR_NOT_FOUND, "WEBHOOK_ENDPOINT_NOT_FOUND", "no webhook endpoint", id);
	return rc;
}

int ledger_delivery_list(struct ledger *lg, const char *endpoint_id, const struct page_req *pr,
			 struct delivery **out, size_t *n, char next[CURSOR_LEN], struct err *e)
{
	struct seq_page pg = {.limit = pr->limit + 1};
	struct webhook w;

	*out = NULL;
	*n = 0;
	next[0] = '\0';
	if (cursor_decode(pr->cursor, &pg, e) || ledger_webhook_get(lg, endpoint_id, &w, e))
		return -1;
	webhook_clear(&w);
	if (lg->store->ops->delivery_list(lg->store, endpoint_id, &pg, out, n, e))
		return -1;
	if (*n > (size_t)pr->limit) {
		--*n;
		cursor_encode((*out)[*n - 1].seq, (*out)[*n - 1].event_id, next);
	}
	return 0;
}

int ledger_mail_list(struct ledger *lg, const char *status, const struct page_req *pr, struct mail **out, size_t *n,
		     char next[CURSOR_LEN], struct err *e)
{
	struct seq_page pg = {.limit = pr->limit + 1};

	*out = NULL;
	*n = 0;
	next[0] = '\0';
	if (cursor_decode(pr->cursor, &pg, e) || lg->store->ops->mail_list(lg->store, status, &pg, out, n, e))
		return -1;
	if (*n > (size_t)pr->limit) {
		mail_clear(&(*out)[--*n]);
		cursor_encode((*out)[*n - 1].created_at, (*out)[*n - 1].id, next);
	}
	return 0;
}

int ledger_audit_list(struct ledger *lg, const struct audit_filter *f, const struct page_req *pr,
		      struct audit_event **out, size_t *n, char next[CURSOR_LEN], struct err *e)
{
	struct seq_page pg = {.limit = pr->limit + 1};

	*out = NULL;
	*n = 0;
	next[0] = '\0';
	if (cursor_decode(pr->cursor, &pg, e) || lg->store->ops->audit_list(lg->store, f, &pg, out, n, e))
		return -1;
	if (*n > (size_t)pr->limit) {
		audit_event_clear(&(*out)[--*n]);
		cursor_encode((*out)[*n - 1].seq, (*out)[*n - 1].id, next);
	}
	return 0;
}

void ledger_refuse_order_limit(int64_t quantity, int64_t limit, struct err *e)
{
	err_set(e, ERR_INVALID, "VALIDATION_ERROR", "quantity %" PRId64 " is above the plan's max_per_order", quantity);
	snprintf(e->details, sizeof(e->details),
		 "{\"field\":\"quantity\",\"reason\":\"must be at most %" PRId64 " (the plan's max_per_order)\"}", limit);
}

void ledger_refuse_customer_limit(int64_t held, int64_t limit, struct err *e)
{
	err_set(e, ERR_CONFLICT, "CUSTOMER_LIMIT_REACHED", "customer holds %" PRId64 " of %" PRId64 " seats", held, limit);
	snprintf(e->details, sizeof(e->details), "{\"limit\":%" PRId64 ",\"held\":%" PRId64 "}", limit, held);
}

void ledger_hold_refused(const struct hold_out *h, int64_t quantity, struct err *e)
{
	switch (h->result) {
	case HOLD_ORDER_LIMIT:
		ledger_refuse_order_limit(quantity, h->limit, e);
		break;
	case HOLD_CUSTOMER_LIMIT:
		ledger_refuse_customer_limit(h->held, h->limit, e);
		break;
	default:
		err_set(e, ERR_CONFLICT, "PLAN_SOLD_OUT", "%" PRId64 " seats asked, %" PRId64 " left", quantity,
			h->available);
		/* while anyone waits, free seats go to the line, not to a new buyer */
		snprintf(e->details, sizeof(e->details), "{\"available\":%" PRId64 ",\"waiting\":%" PRId64 "}",
			 h->available, h->waiting);
		break;
	}
}

char *ledger_payment_detail(const struct payment *p)
{
	struct json_object *o = json_object_new_object();
	char *s;

	json_object_object_add(o, "paymentId", json_object_new_string(p->id));
	json_object_object_add(o, "amount_cents", json_object_new_int64(p->amount_cents));
	json_object_object_add(o, "status", json_object_new_string(p->status));
	if (*p->decline_code)
		json_object_object_add(o, "declineCode", json_object_new_string(p->decline_code));
	s = xstrdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	json_object_put(o);
	return s;
}
