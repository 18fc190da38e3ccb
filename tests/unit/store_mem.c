/* store_mem.c - an in-memory test double of the store, for the service tests: the
 * primitives of store.h over plain arrays, one process, no durability. Each primitive is
 * atomic because nothing else runs. Only for tests; it also lets a test break a fact on
 * purpose (mem_plan_counts) to see check report it. */
#include "store_mem.h"
#include "store_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util.h"

#define MAX 64

struct mem_key {
	struct key_record k;
	bool used;
};

struct mem {
	struct store base;
	struct plan plans[MAX];
	int nplans;
	struct customer customers[MAX];
	int ncustomers;
	struct subscription subs[MAX];
	int nsubs;
	struct payment pays[MAX];
	int npays;
	struct audit_event events[4 * MAX];
	int nevents;
	struct mem_key keys[MAX];
	int64_t seq;
	int64_t lease_until;
	char lease_holder[64];
	const char *fail;
};

#define M(s) ((struct mem *)(s))

void mem_fail_next(struct store *s, const char *op)
{
	M(s)->fail = op;
}

static bool failing(struct store *s, const char *op, struct err *e)
{
	if (!M(s)->fail || strcmp(M(s)->fail, op))
		return false;
	M(s)->fail = NULL;
	err_set(e, ERR_UNAVAILABLE, NULL, "injected crash at %s", op);
	return true;
}

static struct plan *plan_find(struct mem *m, const char *id)
{
	for (int i = 0; i < m->nplans; i++)
		if (!strcmp(m->plans[i].id, id))
			return &m->plans[i];
	return NULL;
}

static void plan_copy(struct plan *dst, const struct plan *src)
{
	*dst = *src;
	dst->name = xstrdup(src->name);
	dst->description = xstrdup(src->description);
	dst->features = json_object_get(src->features);
}

static struct subscription *sub_find(struct mem *m, const char *id)
{
	for (int i = 0; i < m->nsubs; i++)
		if (!strcmp(m->subs[i].id, id))
			return &m->subs[i];
	return NULL;
}

static void sub_copy(struct mem *m, struct subscription *dst, const struct subscription *src)
{
	struct plan *p = plan_find(m, src->plan_id);

	*dst = *src;
	dst->plan_name = xstrdup(p ? p->name : "");
	dst->plan_renews = p && p->renews;
}

static struct mem_key *key_find(struct mem *m, const char *key)
{
	for (int i = 0; i < MAX; i++)
		if (m->keys[i].used && !strcmp(m->keys[i].k.key, key))
			return &m->keys[i];
	return NULL;
}

static void key_copy(struct key_record *dst, const struct key_record *src)
{
	*dst = *src;
	dst->reply.body = xstrdup(src->reply.body);
}

static void events_put(struct mem *m, const struct actor *a, int64_t now, const char *plan_id,
		       const struct event_spec *ev, size_t nev, const struct seat_counts *before,
		       const struct seat_counts *after)
{
	for (size_t i = 0; i < nev; i++) {
		struct audit_event *e = &m->events[m->nevents++];
		memset(e, 0, sizeof(*e));
		e->seq = ++m->seq;
		id_new(e->id);
		e->at = now;
		snprintf(e->action, sizeof(e->action), "%s", ev[i].action);
		snprintf(e->actor_type, sizeof(e->actor_type), "%s", a->type);
		snprintf(e->actor_id, sizeof(e->actor_id), "%s", a->id ? a->id : "");
		snprintf(e->resource_type, sizeof(e->resource_type), "%s", ev[i].resource_type);
		snprintf(e->resource_id, sizeof(e->resource_id), "%s", ev[i].resource_id);
		snprintf(e->plan_id, sizeof(e->plan_id), "%s", plan_id ? plan_id : "");
		if ((e->has_before = store_event_before(&ev[i], before) != NULL))
			e->before = *before;
		if ((e->has_after = store_event_after(&ev[i], after) != NULL))
			e->after = *after;
		e->detail = xstrdup(ev[i].detail);
		snprintf(e->trace_id, sizeof(e->trace_id), "%s", a->trace_id ? a->trace_id : "");
	}
}

static void mem_close(struct store *s)
{
	mem_reset_all(s);
	free(s);
}

static int mem_ping(struct store *s, struct err *e)
{
	(void)s;
	(void)e;
	return 0;
}

void mem_reset_all(struct store *s)
{
	struct mem *m = M(s);

	for (int i = 0; i < m->nplans; i++)
		plan_clear(&m->plans[i]);
	for (int i = 0; i < m->ncustomers; i++)
		customer_clear(&m->customers[i]);
	for (int i = 0; i < m->nsubs; i++)
		subscription_clear(&m->subs[i]);
	for (int i = 0; i < m->nevents; i++)
		audit_event_clear(&m->events[i]);
	for (int i = 0; i < MAX; i++)
		key_record_clear(&m->keys[i].k);
	memset((char *)m + sizeof(m->base), 0, sizeof(*m) - sizeof(m->base));
}

static int mem_reset(struct store *s, struct err *e)
{
	(void)e;
	mem_reset_all(s);
	return 0;
}

static int mem_plan_create(struct store *s, const struct plan *p, const struct event_spec *ev, size_t nev,
			   const struct actor *a, enum write_result *res, struct err *e)
{
	struct mem *m = M(s);
	struct seat_counts after = {p->total_capacity, p->subscriptions_left, p->subscriptions_held};

	(void)e;
	for (int i = 0; i < m->nplans; i++)
		if (!strcasecmp(m->plans[i].name, p->name)) {
			*res = WRITE_DUPLICATE;
			return 0;
		}
	plan_copy(&m->plans[m->nplans++], p);
	events_put(m, a, p->created_at, p->id, ev, nev, NULL, &after);
	*res = WRITE_DONE;
	return 0;
}

static int mem_plan_get(struct store *s, const char *id, struct plan *out, bool *found, struct err *e)
{
	struct plan *p = plan_find(M(s), id);

	(void)e;
	if ((*found = p != NULL))
		plan_copy(out, p);
	return 0;
}

static int mem_plan_list(struct store *s, const char *status, struct plan **out, size_t *n, struct err *e)
{
	struct mem *m = M(s);

	(void)e;
	*out = xcalloc((size_t)m->nplans + 1, sizeof(**out));
	*n = 0;
	for (int i = 0; i < m->nplans; i++)
		if (!status || !strcmp(m->plans[i].status, status))
			plan_copy(&(*out)[(*n)++], &m->plans[i]);
	return 0;
}

static int mem_plan_update(struct store *s, const char *id, const struct plan_patch *pt, int64_t now,
			   const struct event_spec *ev, size_t nev, const struct actor *a, struct plan *out,
			   enum write_result *res, struct err *e)
{
	struct plan *p = plan_find(M(s), id);
	struct seat_counts before, after;

	(void)e;
	*res = WRITE_NOT_FOUND;
	if (!p)
		return 0;
	before = (struct seat_counts){p->total_capacity, p->subscriptions_left, p->subscriptions_held};
	if (pt->fields & PLAN_F_CAPACITY) {
		int64_t delta = pt->total_capacity - p->total_capacity;
		*res = WRITE_SEATS_SHORT;
		if (p->subscriptions_left + delta < 0)
			return 0;
		p->total_capacity = pt->total_capacity;
		p->subscriptions_left += delta;
	}
	if (pt->fields & PLAN_F_PRICE)
		p->price_cents = pt->price_cents;
	if (pt->fields & PLAN_F_STATUS)
		snprintf(p->status, sizeof(p->status), "%s", pt->status);
	if (pt->fields & PLAN_F_MAX_ORDER)
		p->max_per_order = pt->max_per_order;
	if (pt->fields & PLAN_F_MAX_CUSTOMER)
		p->max_per_customer = pt->max_per_customer;
	p->updated_at = now;
	after = (struct seat_counts){p->total_capacity, p->subscriptions_left, p->subscriptions_held};
	events_put(M(s), a, now, id, ev, nev, &before, &after);
	plan_copy(out, p);
	*res = WRITE_DONE;
	return 0;
}

static int mem_customer_create(struct store *s, const struct customer *c, enum write_result *res, struct err *e)
{
	struct mem *m = M(s);
	struct customer *n = &m->customers[m->ncustomers];

	(void)e;
	for (int i = 0; i < m->ncustomers; i++)
		if (!strcasecmp(m->customers[i].email, c->email)) {
			*res = WRITE_DUPLICATE;
			return 0;
		}
	*n = *c;
	n->email = xstrdup(c->email);
	n->name = xstrdup(c->name);
	m->ncustomers++;
	*res = WRITE_DONE;
	return 0;
}

static struct customer *customer_by(struct mem *m, const char *id, const char *email)
{
	for (int i = 0; i < m->ncustomers; i++)
		if ((id && !strcmp(m->customers[i].id, id)) || (email && !strcasecmp(m->customers[i].email, email)))
			return &m->customers[i];
	return NULL;
}

static int mem_customer_get(struct store *s, const char *id, struct customer *out, bool *found, struct err *e)
{
	struct customer *c = customer_by(M(s), id, NULL);

	(void)e;
	if ((*found = c != NULL)) {
		*out = *c;
		out->email = xstrdup(c->email);
		out->name = xstrdup(c->name);
	}
	return 0;
}

/* The claim's rule, as every store keeps it. */
static bool key_existing(struct mem *m, const struct claim_req *r, struct claim *out)
{
	struct mem_key *k = key_find(m, r->key);

	if (!k)
		return false;
	out->result = CLAIM_EXISTS;
	if (!strcmp(k->k.fingerprint, r->fingerprint) && k->k.state != KEY_DONE && k->k.locked_until <= r->now) {
		k->k.locked_until = r->lease_until;
		out->taken_over = true;
	}
	key_copy(&out->key, &k->k);
	return true;
}

static struct mem_key *key_add(struct mem *m, const struct claim_req *r, enum key_state state, const char *sub_id)
{
	for (int i = 0; i < MAX; i++)
		if (!m->keys[i].used) {
			struct mem_key *k = &m->keys[i];
			memset(k, 0, sizeof(*k));
			k->used = true;
			snprintf(k->k.key, sizeof(k->k.key), "%s", r->key);
			snprintf(k->k.fingerprint, sizeof(k->k.fingerprint), "%s", r->fingerprint);
			k->k.state = state;
			k->k.locked_until = r->lease_until;
			snprintf(k->k.subscription_id, sizeof(k->k.subscription_id), "%s", sub_id ? sub_id : "");
			k->k.created_at = r->now;
			return k;
		}
	abort();
}

static int mem_key_claim(struct store *s, const struct claim_req *r, struct claim *out, struct err *e)
{
	(void)e;
	memset(out, 0, sizeof(*out));
	if (!key_existing(M(s), r, out)) {
		key_add(M(s), r, KEY_STARTED, NULL);
		out->result = CLAIM_NEW;
	}
	return 0;
}

static void key_done(struct mem_key *k, const struct reply *r)
{
	k->k.state = KEY_DONE;
	k->k.locked_until = 0;
	k->k.reply.status = r->status;
	free(k->k.reply.body);
	k->k.reply.body = xstrdup(r->body);
}

static int mem_key_finish(struct store *s, const char *key, const struct reply *r, bool *matched, struct err *e)
{
	struct mem_key *k = key_find(M(s), key);

	(void)e;
	if ((*matched = k && k->k.state != KEY_DONE))
		key_done(k, r);
	return 0;
}

static int mem_key_forget(struct store *s, const char *key, struct err *e)
{
	struct mem_key *k = key_find(M(s), key);

	(void)e;
	if (k && k->k.state == KEY_STARTED) {
		key_record_clear(&k->k);
		k->used = false;
	}
	return 0;
}

static int mem_key_get(struct store *s, const char *key, struct key_record *out, bool *found, struct err *e)
{
	struct mem_key *k = key_find(M(s), key);

	(void)e;
	if ((*found = k != NULL))
		key_copy(out, &k->k);
	return 0;
}

static int mem_hold(struct store *s, const struct hold_req *r, const struct actor *a, struct hold_out *out,
		    struct err *e)
{
	struct mem *m = M(s);
	struct customer *c;
	struct plan *p;
	struct subscription *sub;
	struct seat_counts before, after;
	struct actor buyer = *a;
	enum write_result res;

	memset(out, 0, sizeof(*out));
	if (failing(s, "hold", e))
		return -1;
	if (key_existing(m, &r->claim, &out->claim)) {
		out->result = HOLD_KEY_EXISTS;
		return 0;
	}
	c = r->customer_id ? customer_by(m, r->customer_id, NULL) : customer_by(m, NULL, r->customer->email);
	if (!c && r->customer_id) {
		out->result = HOLD_NO_CUSTOMER;
		return 0;
	}
	p = plan_find(m, r->plan_id);
	if (!p || strcmp(p->status, "active") || p->subscriptions_left < r->quantity || r->quantity > p->max_per_order) {
		out->result = !p ? HOLD_NO_PLAN : strcmp(p->status, "active") ? HOLD_PLAN_INACTIVE :
			r->quantity > p->max_per_order ? HOLD_ORDER_LIMIT : HOLD_SOLD_OUT;
		if (p) {
			out->available = p->subscriptions_left;
			out->limit = p->max_per_order;
		}
		return 0;
	}
	if (r->previous_id) {
		struct subscription *prev = sub_find(m, r->previous_id);
		if (!prev || !c || strcmp(prev->customer_id, c->id) || strcmp(prev->status, "active")) {
			out->result = HOLD_PREVIOUS_INACTIVE;
			return 0;
		}
	}
	if (c && (out->limit = p->max_per_customer) > 0) {
		for (int i = 0; i < m->nsubs; i++)
			if (!strcmp(m->subs[i].customer_id, c->id) && !strcmp(m->subs[i].plan_id, p->id) &&
			    (!strcmp(m->subs[i].status, "pending") || !strcmp(m->subs[i].status, "active")))
				out->held += m->subs[i].quantity;
		if (out->held + r->quantity > out->limit) {
			out->result = HOLD_CUSTOMER_LIMIT;
			return 0;
		}
	}
	if (!c) {
		mem_customer_create(s, r->customer, &res, e);
		c = &m->customers[m->ncustomers - 1];
	}
	before = (struct seat_counts){p->total_capacity, p->subscriptions_left, p->subscriptions_held};
	p->subscriptions_left -= r->quantity;
	p->subscriptions_held += r->quantity;
	after = (struct seat_counts){p->total_capacity, p->subscriptions_left, p->subscriptions_held};
	sub = &m->subs[m->nsubs++];
	memset(sub, 0, sizeof(*sub));
	snprintf(sub->id, sizeof(sub->id), "%s", r->subscription_id);
	snprintf(sub->status, sizeof(sub->status), "pending");
	snprintf(sub->plan_id, sizeof(sub->plan_id), "%s", p->id);
	snprintf(sub->customer_id, sizeof(sub->customer_id), "%s", c->id);
	snprintf(sub->idem_key, sizeof(sub->idem_key), "%s", r->claim.key);
	sub->quantity = r->quantity;
	sub->amount_cents = p->price_cents * r->quantity;
	sub->life.term_unit = p->interval;
	sub->life.term_count = p->interval_count;
	snprintf(sub->life.term_zone, sizeof(sub->life.term_zone), "%s", p->timezone);
	sub->duration_days = term_days(p->interval, p->interval_count);
	sub->hold_deadline = r->deadline;
	sub->created_at = sub->updated_at = r->claim.now;
	sub->seq = ++m->seq;
	store_hold_fill(sub, r);
	buyer.id = c->id;
	events_put(m, &buyer, r->claim.now, p->id, r->events, r->nevents, &before, &after);
	key_add(m, &r->claim, KEY_HELD, sub->id);
	if (r->reply) {
		struct reply done = r->reply(sub, r->reply_arg);
		mem_key_finish(s, r->claim.key, &done, &(bool){false}, e);
		free(done.body);
	}
	out->result = HOLD_TAKEN;
	sub_copy(m, &out->sub, sub);
	return 0;
}

static bool payment_exists(struct mem *m, const struct payment *p)
{
	for (int i = 0; i < m->npays; i++)
		if (!strcmp(m->pays[i].idem_key, p->idem_key) && !strcmp(m->pays[i].kind, p->kind))
			return true;
	return false;
}

static int mem_move(struct store *s, const struct transition *t, const struct actor *a,
		    struct transition_out *out, struct err *e)
{
	struct mem *m = M(s);
	struct subscription *sub = sub_find(m, t->sub_id);
	struct seat_counts before, after;
	struct plan *p;

	memset(out, 0, sizeof(*out));
	if (failing(s, "transition", e))
		return -1;
	if (!sub) {
		out->result = MOVE_NOT_FOUND;
		return 0;
	}
	if (strcmp(sub->status, t->from) || (t->live_after && sub->hold_deadline <= t->live_after) ||
	    (t->due_by && sub->hold_deadline > t->due_by) || (t->attempt && strcmp(sub->attempt_key, t->attempt)) ||
	    (t->life.check && (sub->end_at != t->life.end_at || sub->life.next_attempt_at != t->life.next_attempt_at ||
			       sub->life.cancel_at_period_end != t->life.cancel_at_period_end ||
			       strcmp(sub->life.payment_method, t->life.payment_method ? t->life.payment_method : "")))) {
		out->result = MOVE_REFUSED;
		sub_copy(m, &out->sub, sub);
		return 0;
	}
	if (t->payment && payment_exists(m, t->payment)) {
		err_set(e, ERR_INTERNAL, NULL, "a %s payment exists for key %s", t->payment->kind, t->payment->idem_key);
		return -1;
	}
	p = plan_find(m, sub->plan_id);
	before = (struct seat_counts){p->total_capacity, p->subscriptions_left, p->subscriptions_held};
	p->subscriptions_left += t->dleft * sub->quantity;
	p->subscriptions_held += t->dheld * sub->quantity;
	after = (struct seat_counts){p->total_capacity, p->subscriptions_left, p->subscriptions_held};
	snprintf(sub->status, sizeof(sub->status), "%s", t->to);
	sub->updated_at = t->now;
	if (t->attempt_end)
		sub->attempt_key[0] = '\0';
	if (t->payment_id)
		snprintf(sub->payment_id, sizeof(sub->payment_id), "%s", t->payment_id);
	if (t->token_hash)
		snprintf(sub->token_hash, sizeof(sub->token_hash), "%s", t->token_hash);
	if (t->start_at)
		sub->start_at = t->start_at;
	if (t->end_at)
		sub->end_at = t->end_at;
	if (t->life.set)
		sub->life = *t->life.set;
	if (t->payment)
		m->pays[m->npays++] = *t->payment;
	events_put(m, a, t->now, p->id, t->events, t->nevents, &before, &after);
	if (t->reply)
		mem_key_finish(s, t->reply_key ? t->reply_key : sub->idem_key, t->reply, &(bool){false}, e);
	out->result = MOVED;
	sub_copy(m, &out->sub, sub);
	return 0;
}

/* Both moves or neither: the second is checked before the first is made. */
static int mem_transition(struct store *s, const struct transition *t, const struct actor *a,
			  struct transition_out *out, struct err *e)
{
	if (t->also) {
		struct subscription *other = sub_find(M(s), t->also->sub_id), *sub = sub_find(M(s), t->sub_id);
		bool first_ok = sub && !strcmp(sub->status, t->from) &&
				(!t->live_after || sub->hold_deadline > t->live_after) &&
				(!t->attempt || !strcmp(sub->attempt_key, t->attempt));
		if (first_ok && (!other || strcmp(other->status, t->also->from))) {
			memset(out, 0, sizeof(*out));
			out->result = MOVE_ALSO_REFUSED;
			sub_copy(M(s), &out->sub, sub);
			return 0;
		}
	}
	if (mem_move(s, t, a, out, e))
		return -1;
	if (out->result == MOVED && t->also) {
		struct transition_out o2;
		if (mem_move(s, t->also, a, &o2, e))
			return -1;
		transition_out_clear(&o2);
	}
	return 0;
}

static int mem_payments_in(struct store *s, const char *status, int limit, struct payment **out, size_t *n,
			   struct err *e)
{
	struct mem *m = M(s);

	(void)e;
	*out = xcalloc((size_t)limit, sizeof(**out));
	*n = 0;
	for (int i = 0; i < m->npays && (int)*n < limit; i++)
		if (!strcmp(m->pays[i].status, status))
			(*out)[(*n)++] = m->pays[i];
	return 0;
}

static int mem_payment_mark(struct store *s, const char *id, const char *from, const char *to,
			    const struct event_spec *ev, size_t nev, const struct actor *a, bool *moved, struct err *e)
{
	struct mem *m = M(s);

	if (failing(s, "payment_mark", e))
		return -1;
	*moved = false;
	for (int i = 0; i < m->npays; i++)
		if (!strcmp(m->pays[i].id, id) && !strcmp(m->pays[i].status, from)) {
			snprintf(m->pays[i].status, sizeof(m->pays[i].status), "%s", to);
			struct subscription *sub = sub_find(m, m->pays[i].subscription_id);
			events_put(m, a, now_ms(), sub ? sub->plan_id : "", ev, nev, NULL, NULL);
			*moved = true;
		}
	return 0;
}

static int mem_payment_record(struct store *s, const struct payment *p, const struct event_spec *ev, size_t nev,
			      const struct actor *a, bool *existed, struct err *e)
{
	struct mem *m = M(s);
	struct subscription *sub = sub_find(m, p->subscription_id);

	(void)e;
	if ((*existed = payment_exists(m, p)))
		return 0;
	m->pays[m->npays++] = *p;
	events_put(m, a, p->created_at, sub ? sub->plan_id : "", ev, nev, NULL, NULL);
	return 0;
}

static int mem_sub_get(struct store *s, const char *id, struct subscription *out, bool *found, struct err *e)
{
	struct subscription *sub = sub_find(M(s), id);

	(void)e;
	if ((*found = sub != NULL))
		sub_copy(M(s), out, sub);
	return 0;
}

static int mem_sub_list(struct store *s, const char *customer_id, const char *status, const struct seq_page *pg,
			struct subscription **out, size_t *n, struct err *e)
{
	struct mem *m = M(s);

	(void)e;
	*out = xcalloc((size_t)pg->limit + 1, sizeof(**out));
	*n = 0;
	for (int i = m->nsubs - 1; i >= 0 && (int)*n < pg->limit; i--) {
		const struct subscription *sub = &m->subs[i];
		if (strcmp(sub->customer_id, customer_id) || (status && strcmp(sub->status, status)) ||
		    (pg->before_seq && sub->seq >= pg->before_seq))
			continue;
		sub_copy(m, &(*out)[(*n)++], sub);
	}
	return 0;
}

static int mem_audit_list(struct store *s, const struct audit_filter *f, const struct seq_page *pg,
			  struct audit_event **out, size_t *n, struct err *e)
{
	struct mem *m = M(s);

	(void)e;
	*out = xcalloc((size_t)pg->limit + 1, sizeof(**out));
	*n = 0;
	for (int i = m->nevents - 1; i >= 0 && (int)*n < pg->limit; i--) {
		const struct audit_event *a = &m->events[i];
		if ((f->plan_id && strcmp(a->plan_id, f->plan_id)) || (f->action && strcmp(a->action, f->action)) ||
		    (pg->before_seq && a->seq >= pg->before_seq))
			continue;
		(*out)[*n] = *a;
		(*out)[(*n)++].detail = xstrdup(a->detail);
	}
	return 0;
}

/* The feed's position of an event is its place in the array: one writer, nothing undone. */
static int mem_feed_read(struct store *s, int64_t after, const char *type, int limit, struct audit_event **out,
			 size_t *n, struct err *e)
{
	struct mem *m = M(s);

	(void)e;
	*out = xcalloc((size_t)limit + 1, sizeof(**out));
	*n = 0;
	for (int i = (int)(after > 0 ? after : 0); i < m->nevents && (int)*n < limit; i++) {
		if (type && strcmp(m->events[i].action, type))
			continue;
		(*out)[*n] = m->events[i];
		(*out)[*n].seq = i + 1;
		(*out)[(*n)++].detail = xstrdup(m->events[i].detail);
	}
	return 0;
}

static int mem_payment_totals(struct store *s, struct payment_total **out, size_t *n, struct err *e)
{
	struct mem *m = M(s);

	(void)e;
	*out = xcalloc(PAYMENT_TOTALS_MAX, sizeof(**out));
	*n = 0;
	for (int i = 0; i < m->npays; i++) {
		size_t j;
		for (j = 0; j < *n; j++)
			if (!strcmp((*out)[j].kind, m->pays[i].kind) && !strcmp((*out)[j].status, m->pays[i].status))
				break;
		if (j == *n) {
			if (*n == PAYMENT_TOTALS_MAX)
				continue;
			snprintf((*out)[j].kind, sizeof((*out)[j].kind), "%s", m->pays[i].kind);
			snprintf((*out)[j].status, sizeof((*out)[j].status), "%s", m->pays[i].status);
			(*n)++;
		}
		(*out)[j].count++;
		(*out)[j].amount_cents += m->pays[i].amount_cents;
	}
	return 0;
}

static int mem_sub_totals(struct store *s, struct sub_total **out, size_t *n, struct err *e)
{
	struct mem *m = M(s);

	(void)e;
	*out = xcalloc(SUB_TOTALS_MAX, sizeof(**out));
	*n = 0;
	for (int i = 0; i < m->nsubs; i++) {
		size_t j;
		for (j = 0; j < *n && strcmp((*out)[j].status, m->subs[i].status); j++)
			;
		if (j == *n) {
			if (*n == SUB_TOTALS_MAX)
				continue;
			snprintf((*out)[j].status, sizeof((*out)[j].status), "%s", m->subs[i].status);
			(*n)++;
		}
		(*out)[j].count++;
		(*out)[j].seats += m->subs[i].quantity;
	}
	return 0;
}

static int mem_held_by_kind(struct store *s, const char *plan_id, int64_t *paying, int64_t *sessions,
			    struct err *e)
{
	struct mem *m = M(s);

	(void)e;
	*paying = *sessions = 0;
	for (int i = 0; i < m->nsubs; i++)
		if (!strcmp(m->subs[i].plan_id, plan_id) && !strcmp(m->subs[i].status, "pending"))
			*(*m->subs[i].secret_hash ? sessions : paying) += m->subs[i].quantity;
	return 0;
}

static int mem_attempt_take(struct store *s, const char *sub_id, const char *expect, const char *key, int64_t now,
			    int64_t until, bool *taken, struct err *e)
{
	struct subscription *sub = sub_find(M(s), sub_id);

	(void)e;
	*taken = sub && !strcmp(sub->status, "pending") && sub->hold_deadline > now && !strcmp(sub->attempt_key, expect) &&
		 (!store_attempt_needs_lapse(expect, key) || sub->attempt_until <= now);
	if (*taken) {
		snprintf(sub->attempt_key, sizeof(sub->attempt_key), "%s", key);
		sub->attempt_until = until;
	}
	return 0;
}

static int mem_lease_take(struct store *s, const char *name, const char *holder, int64_t now, int64_t until,
			  bool *taken, struct err *e)
{
	struct mem *m = M(s);

	(void)name;
	(void)e;
	if ((*taken = m->lease_until <= now || !strcmp(m->lease_holder, holder))) {
		m->lease_until = until;
		snprintf(m->lease_holder, sizeof(m->lease_holder), "%s", holder);
	}
	return 0;
}

static int mem_holds_overdue(struct store *s, int64_t now, int limit, struct subscription **out, size_t *n,
			     struct err *e)
{
	struct mem *m = M(s);

	(void)e;
	*out = xcalloc((size_t)limit, sizeof(**out));
	*n = 0;
	for (int i = 0; i < m->nsubs && (int)*n < limit; i++)
		if (!strcmp(m->subs[i].status, "pending") && m->subs[i].hold_deadline <= now)
			sub_copy(m, &(*out)[(*n)++], &m->subs[i]);
	return 0;
}

static int mem_subs_due(struct store *s, int64_t now, int limit, struct subscription **out, size_t *n, struct err *e)
{
	struct mem *m = M(s);

	(void)e;
	*out = xcalloc((size_t)limit, sizeof(**out));
	*n = 0;
	for (int i = 0; i < m->nsubs && (int)*n < limit; i++) {
		const struct subscription *x = &m->subs[i];
		if ((!strcmp(x->status, "active") && x->end_at <= now) ||
		    (!strcmp(x->status, "past_due") && x->life.next_attempt_at <= now))
			sub_copy(m, &(*out)[(*n)++], x);
	}
	return 0;
}

static int mem_charges_unrefunded(struct store *s, int limit, struct payment **out, size_t *n, struct err *e)
{
	struct mem *m = M(s);

	(void)e;
	*out = xcalloc((size_t)limit, sizeof(**out));
	*n = 0;
	for (int i = 0; i < m->npays && (int)*n < limit; i++) {
		const struct payment *c = &m->pays[i];
		struct subscription *sub = sub_find(m, c->subscription_id);
		struct payment refund = *c;
		snprintf(refund.kind, sizeof(refund.kind), "refund");
		if (!strcmp(c->kind, "charge") && !strcmp(c->status, "succeeded") && sub &&
		    (!strcmp(sub->status, "failed") || !strcmp(sub->status, "expired") ||
		     (strcmp(sub->payment_id, c->id) && strcmp(sub->attempt_key, c->idem_key))) &&
		    !payment_exists(m, &refund))
			(*out)[(*n)++] = *c;
	}
	return 0;
}

static int mem_keys_purge(struct store *s, int64_t before, int *n, struct err *e)
{
	struct mem *m = M(s);

	(void)e;
	*n = 0;
	for (int i = 0; i < MAX; i++)
		if (m->keys[i].used && m->keys[i].k.state != KEY_HELD && m->keys[i].k.created_at < before) {
			key_record_clear(&m->keys[i].k);
			m->keys[i].used = false;
			(*n)++;
		}
	return 0;
}

static int by_key(const void *a, const void *b)
{
	return strcmp(((const struct subscription *)a)->idem_key, ((const struct subscription *)b)->idem_key);
}

static int pay_by_key(const void *a, const void *b)
{
	return strcmp(((const struct payment *)a)->idem_key, ((const struct payment *)b)->idem_key);
}

static int mem_snapshot(struct store *s, const struct snapshot_visitor *v, struct err *e)
{
	struct mem *m = M(s);
	struct subscription subs[MAX];
	struct payment pays[MAX];

	(void)e;
	for (int i = 0; i < m->nplans; i++) {
		struct plan_tally t = {&m->plans[i], 0, 0, false, 0};
		for (int j = 0; j < m->nevents; j++)
			if (!strcmp(m->events[j].plan_id, m->plans[i].id)) {
				const struct audit_event *ev = &m->events[j];
				if (!strcmp(ev->action, "seat.held"))
					t.held_seats += ev->before.left - ev->after.left;
				if (!strcmp(ev->action, "seat.released"))
					t.released_seats += ev->after.left - ev->before.left;
				if (m->events[j].has_after) {
					t.has_last = true;
					t.last_left = m->events[j].after.left;
				}
			}
		if (v->plan(v->arg, &t))
			return 0;
	}
	memcpy(subs, m->subs, sizeof(subs[0]) * (size_t)m->nsubs);
	qsort(subs, (size_t)m->nsubs, sizeof(subs[0]), by_key);
	for (int i = 0; i < m->nsubs; i++)
		if (v->subscription(v->arg, &subs[i]))
			return 0;
	memcpy(pays, m->pays, sizeof(pays[0]) * (size_t)m->npays);
	qsort(pays, (size_t)m->npays, sizeof(pays[0]), pay_by_key);
	for (int i = 0; i < m->npays; i++)
		if (v->payment(v->arg, &pays[i]))
			return 0;
	return 0;
}

static const struct store_ops mem_ops = {
	.name = "memory",
	.close = mem_close,
	.ping = mem_ping,
	.reset = mem_reset,
	.plan_create = mem_plan_create,
	.plan_get = mem_plan_get,
	.plan_list = mem_plan_list,
	.plan_update = mem_plan_update,
	.customer_create = mem_customer_create,
	.customer_get = mem_customer_get,
	.key_claim = mem_key_claim,
	.key_finish = mem_key_finish,
	.key_forget = mem_key_forget,
	.key_get = mem_key_get,
	.hold = mem_hold,
	.attempt_take = mem_attempt_take,
	.payments_in = mem_payments_in,
	.payment_mark = mem_payment_mark,
	.held_by_kind = mem_held_by_kind,
	.payment_totals = mem_payment_totals,
	.sub_totals = mem_sub_totals,
	.transition = mem_transition,
	.payment_record = mem_payment_record,
	.sub_get = mem_sub_get,
	.sub_list = mem_sub_list,
	.audit_list = mem_audit_list,
	.feed_read = mem_feed_read,
	.lease_take = mem_lease_take,
	.holds_overdue = mem_holds_overdue,
	.subs_due = mem_subs_due,
	.charges_unrefunded = mem_charges_unrefunded,
	.keys_purge = mem_keys_purge,
	.snapshot = mem_snapshot,
};

struct store *mem_store_new(void)
{
	struct mem *m = xcalloc(1, sizeof(*m));

	m->base.ops = &mem_ops;
	return &m->base;
}

void mem_plan_counts(struct store *s, const char *plan_id, int64_t left, int64_t held)
{
	struct plan *p = plan_find(M(s), plan_id);

	p->subscriptions_left = left;
	p->subscriptions_held = held;
}

void mem_sub_deadline(struct store *s, const char *sub_id, int64_t deadline)
{
	sub_find(M(s), sub_id)->hold_deadline = deadline;
}

void mem_key_lease(struct store *s, const char *key, int64_t until)
{
	key_find(M(s), key)->k.locked_until = until;
}
