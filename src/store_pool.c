/* store_pool.c - a store for the threads of one worker process: each primitive borrows one of
 * a few real store handles for the length of the call and gives it back. Every primitive is
 * one atomic unit and nothing spans two of them, so a purchase that waits for its payment
 * holds no handle meanwhile: many purchases in flight share a few database connections.
 * Reads and writes borrow from two sets of handles, so writers stuck behind a lock (held
 * from outside, say) never keep a read waiting. Handles are opened when first needed; one
 * that cannot be opened answers 503 and is tried again by the next call. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "store.h"
#include "util.h"

struct handles {
	pthread_mutex_t lock;
	pthread_cond_t freed;
	int size, opened, nfree;       /* opened: handles open or being opened */
	int nall;
	struct store **all;            /* the handles open, to close at the end */
	struct store **idle;           /* those not lent out */
};

struct pool {
	struct store base;
	struct store_ops ops;          /* the table below, named after the backend */
	char *url;
	struct handles readers, writers;
};

#define POOL(s) ((struct pool *)(s))

static struct store *borrow_from(struct handles *p, const char *url, struct err *e)
{
	struct store *h = NULL;

	pthread_mutex_lock(&p->lock);
	while (p->nfree == 0 && p->opened == p->size)
		pthread_cond_wait(&p->freed, &p->lock);
	if (p->nfree > 0) {
		h = p->idle[--p->nfree];
	} else {
		p->opened++;             /* this slot is ours while we open it, outside the lock */
		pthread_mutex_unlock(&p->lock);
		h = store_open(url, e);
		pthread_mutex_lock(&p->lock);
		if (h) {
			p->all[p->nall++] = h;
		} else {
			LOG_ERROR(NULL, "store: %s", e->msg);
			p->opened--;
			pthread_cond_signal(&p->freed);
		}
	}
	pthread_mutex_unlock(&p->lock);
	return h;
}

static void give_back(struct handles *p, struct store *h)
{
	pthread_mutex_lock(&p->lock);
	p->idle[p->nfree++] = h;
	pthread_cond_signal(&p->freed);
	pthread_mutex_unlock(&p->lock);
}

/* One forwarding primitive: borrow from `set` (readers or writers), call, give back. */
#define FORWARD_TO(set, name, params, args)                                  \
	static int pool_##name params                                        \
	{                                                                    \
		struct handles *p = &POOL(s)->set;                           \
		struct store *h = borrow_from(p, POOL(s)->url, e);           \
		int rc;                                                      \
		if (!h)                                                      \
			return -1;                                           \
		rc = h->ops->name args;                                      \
		give_back(p, h);                                             \
		return rc;                                                   \
	}
#define FORWARD(name, params, args) FORWARD_TO(writers, name, params, args)
#define READ(name, params, args) FORWARD_TO(readers, name, params, args)

READ(ping, (struct store *s, struct err *e), (h, e))

static int pool_replica_lag(struct store *s, int64_t *lag_ms, struct err *e)
{
	struct handles *p = &POOL(s)->readers;
	struct store *h = borrow_from(p, POOL(s)->url, e);
	int rc = -1;

	if (!h)
		return -1;
	if (h->ops->replica_lag)
		rc = h->ops->replica_lag(h, lag_ms, e);
	else
		err_set(e, ERR_UNAVAILABLE, NULL, "the %s store has no standbys", h->ops->name);
	give_back(p, h);
	return rc;
}
FORWARD(reset, (struct store *s, struct err *e), (h, e))
FORWARD(plan_create, (struct store *s, const struct plan *pl, const struct event_spec *ev, size_t nev,
		      const struct actor *a, enum write_result *res, struct err *e), (h, pl, ev, nev, a, res, e))
READ(plan_get, (struct store *s, const char *id, struct plan *out, bool *found, struct err *e),
	(h, id, out, found, e))
READ(plan_list, (struct store *s, const char *status, struct plan **out, size_t *n, struct err *e),
	(h, status, out, n, e))
FORWARD(plan_update, (struct store *s, const char *id, const struct plan_patch *pt, int64_t now,
		      const struct event_spec *ev, size_t nev, const struct actor *a, struct plan *out,
		      enum write_result *res, struct err *e), (h, id, pt, now, ev, nev, a, out, res, e))
FORWARD(customer_create, (struct store *s, const struct customer *c, enum write_result *res, struct err *e),
	(h, c, res, e))
FORWARD(customer_processor_set, (struct store *s, const char *id, const char *processor_id, struct err *e),
	(h, id, processor_id, e))
READ(customer_get, (struct store *s, const char *id, struct customer *out, bool *found, struct err *e),
	(h, id, out, found, e))
FORWARD(key_claim, (struct store *s, const struct claim_req *r, struct claim *out, struct err *e), (h, r, out, e))
FORWARD(key_finish, (struct store *s, const char *key, const struct reply *r, bool *matched, struct err *e),
	(h, key, r, matched, e))
FORWARD(key_forget, (struct store *s, const char *key, struct err *e), (h, key, e))
READ(key_get, (struct store *s, const char *key, struct key_record *out, bool *found, struct err *e),
	(h, key, out, found, e))
FORWARD(hold, (struct store *s, const struct hold_req *r, const struct actor *a, struct hold_out *out,
	       struct err *e), (h, r, a, out, e))
FORWARD(transition, (struct store *s, const struct transition *t, const struct actor *a,
		     struct transition_out *out, struct err *e), (h, t, a, out, e))
READ(payment_totals, (struct store *s, struct payment_total **out, size_t *n, struct err *e), (h, out, n, e))
READ(sub_totals, (struct store *s, struct sub_total **out, size_t *n, struct err *e), (h, out, n, e))
READ(held_by_kind, (struct store *s, const char *plan_id, int64_t *paying, int64_t *sessions, struct err *e),
	(h, plan_id, paying, sessions, e))
READ(payments_in, (struct store *s, const char *status, int limit, struct payment **out, size_t *n, struct err *e),
     (h, status, limit, out, n, e))
FORWARD(payment_mark, (struct store *s, const char *id, const char *from, const char *to, const struct event_spec *ev,
		       size_t nev, const struct actor *a, bool *moved, struct err *e), (h, id, from, to, ev, nev, a, moved, e))
FORWARD(attempt_take, (struct store *s, const char *sub_id, const char *expect, const char *key, int64_t now,
		       int64_t until, bool *taken, struct err *e), (h, sub_id, expect, key, now, until, taken, e))
FORWARD(payment_record, (struct store *s, const struct payment *pm, const struct event_spec *ev, size_t nev,
			 const struct actor *a, bool *existed, struct err *e), (h, pm, ev, nev, a, existed, e))
READ(sub_get, (struct store *s, const char *id, struct subscription *out, bool *found, struct err *e),
	(h, id, out, found, e))
READ(sub_list, (struct store *s, const char *customer_id, const char *status, const struct seq_page *pg,
		   struct subscription **out, size_t *n, struct err *e), (h, customer_id, status, pg, out, n, e))
READ(audit_list, (struct store *s, const struct audit_filter *f, const struct seq_page *pg,
		     struct audit_event **out, size_t *n, struct err *e), (h, f, pg, out, n, e))
FORWARD(webhook_create, (struct store *s, struct webhook *w, struct err *e), (h, w, e))
READ(webhook_list, (struct store *s, struct webhook **out, size_t *n, struct err *e), (h, out, n, e))
FORWARD(webhook_delete, (struct store *s, const char *id, bool *found, struct err *e), (h, id, found, e))
FORWARD(webhook_advance, (struct store *s, const char *endpoint_id, const struct delivery *d, int64_t cursor,
			  bool disable, struct err *e), (h, endpoint_id, d, cursor, disable, e))
READ(delivery_list, (struct store *s, const char *endpoint_id, const struct seq_page *pg, struct delivery **out,
		     size_t *n, struct err *e), (h, endpoint_id, pg, out, n, e))
READ(mail_due, (struct store *s, int64_t now, int limit, struct mail **out, size_t *n, struct err *e),
     (h, now, limit, out, n, e))
FORWARD(mail_mark, (struct store *s, const struct mail *m, int attempts, const struct event_spec *ev, size_t nev,
		    const struct actor *a, bool *moved, struct err *e), (h, m, attempts, ev, nev, a, moved, e))
READ(mail_list, (struct store *s, const char *status, const struct seq_page *pg, struct mail **out, size_t *n,
		 struct err *e), (h, status, pg, out, n, e))
FORWARD(login_link, (struct store *s, const struct login_req *r, const struct event_spec *ev, const struct actor *a,
		     enum login_result *res, struct err *e), (h, r, ev, a, res, e))
FORWARD(login_exchange, (struct store *s, const char *link_id, const char *token_hash, struct customer_session *cs,
			 bool *ok, struct err *e), (h, link_id, token_hash, cs, ok, e))
READ(session_get, (struct store *s, const char *id, struct customer_session *out, bool *found, struct err *e),
     (h, id, out, found, e))
FORWARD(session_end, (struct store *s, const char *id, int64_t now, bool *found, struct err *e), (h, id, now, found, e))
READ(customer_payments, (struct store *s, const char *customer_id, int limit, struct payment **out, size_t *n,
			  struct err *e), (h, customer_id, limit, out, n, e))
READ(customer_entries, (struct store *s, const char *customer_id, int limit, struct waitlist_entry **out, size_t *n,
			 struct err *e), (h, customer_id, limit, out, n, e))
READ(subs_to_remind, (struct store *s, int64_t by, int limit, struct subscription **out, size_t *n, struct err *e),
     (h, by, limit, out, n, e))
FORWARD(remind, (struct store *s, const char *sub_id, int64_t end_at, const struct event_spec *ev, size_t nev,
		 const struct actor *a, bool *marked, struct err *e), (h, sub_id, end_at, ev, nev, a, marked, e))
FORWARD(waitlist_join, (struct store *s, const struct join_req *r, const struct actor *a, struct join_out *out,
			 struct err *e), (h, r, a, out, e))
READ(entry_get, (struct store *s, const char *id, struct waitlist_entry *out, bool *found, struct err *e),
     (h, id, out, found, e))
READ(waitlist_list, (struct store *s, const char *plan_id, int64_t after, int limit, struct waitlist_entry **out,
		     size_t *n, struct err *e), (h, plan_id, after, limit, out, n, e))
FORWARD(waitlist_leave, (struct store *s, const char *id, int64_t now, const struct event_spec *ev, size_t nev,
			 const struct actor *a, bool *moved, struct waitlist_entry *out, bool *found, struct err *e),
	(h, id, now, ev, nev, a, moved, out, found, e))
READ(feed_read, (struct store *s, int64_t after, const char *type, int limit, struct audit_event **out,
		 size_t *n, struct err *e), (h, after, type, limit, out, n, e))
FORWARD(lease_take, (struct store *s, const char *name, const char *holder, int64_t now, int64_t until,
		     bool *taken, struct err *e), (h, name, holder, now, until, taken, e))
READ(holds_overdue, (struct store *s, int64_t now, int limit, struct subscription **out, size_t *n,
			struct err *e), (h, now, limit, out, n, e))
READ(subs_due, (struct store *s, int64_t now, int limit, struct subscription **out, size_t *n, struct err *e),
	(h, now, limit, out, n, e))
READ(charges_unrefunded, (struct store *s, int limit, struct payment **out, size_t *n, struct err *e),
	(h, limit, out, n, e))
FORWARD(keys_purge, (struct store *s, int64_t before, int *n, struct err *e), (h, before, n, e))
READ(snapshot, (struct store *s, const struct snapshot_visitor *v, struct err *e), (h, v, e))

static void handles_init(struct handles *p, int size)
{
	p->size = size < 1 ? 1 : size;
	p->all = xcalloc((size_t)p->size, sizeof(*p->all));
	p->idle = xcalloc((size_t)p->size, sizeof(*p->idle));
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->freed, NULL);
}

static void handles_close(struct handles *p)
{
	for (int i = 0; i < p->nall; i++)
		store_close(p->all[i]);
	pthread_cond_destroy(&p->freed);
	pthread_mutex_destroy(&p->lock);
	free(p->all);
	free(p->idle);
}

static void pool_close(struct store *st)
{
	struct pool *p = POOL(st);

	handles_close(&p->readers);
	handles_close(&p->writers);
	free(p->url);
	free(p);
}

static const struct store_ops pool_ops = {
	.name = "pool",
	.close = pool_close,
	.ping = pool_ping,
	.replica_lag = pool_replica_lag,
	.reset = pool_reset,
	.plan_create = pool_plan_create,
	.plan_get = pool_plan_get,
	.plan_list = pool_plan_list,
	.plan_update = pool_plan_update,
	.customer_create = pool_customer_create,
	.customer_get = pool_customer_get,
	.customer_processor_set = pool_customer_processor_set,
	.key_claim = pool_key_claim,
	.key_finish = pool_key_finish,
	.key_forget = pool_key_forget,
	.key_get = pool_key_get,
	.hold = pool_hold,
	.transition = pool_transition,
	.attempt_take = pool_attempt_take,
	.payments_in = pool_payments_in,
	.payment_mark = pool_payment_mark,
	.held_by_kind = pool_held_by_kind,
	.payment_totals = pool_payment_totals,
	.sub_totals = pool_sub_totals,
	.payment_record = pool_payment_record,
	.sub_get = pool_sub_get,
	.sub_list = pool_sub_list,
	.audit_list = pool_audit_list,
	.feed_read = pool_feed_read,
	.waitlist_join = pool_waitlist_join,
	.entry_get = pool_entry_get,
	.waitlist_list = pool_waitlist_list,
	.waitlist_leave = pool_waitlist_leave,
	.webhook_create = pool_webhook_create,
	.webhook_list = pool_webhook_list,
	.webhook_delete = pool_webhook_delete,
	.webhook_advance = pool_webhook_advance,
	.delivery_list = pool_delivery_list,
	.mail_due = pool_mail_due,
	.mail_mark = pool_mail_mark,
	.mail_list = pool_mail_list,
	.login_link = pool_login_link,
	.login_exchange = pool_login_exchange,
	.session_get = pool_session_get,
	.session_end = pool_session_end,
	.customer_payments = pool_customer_payments,
	.customer_entries = pool_customer_entries,
	.subs_to_remind = pool_subs_to_remind,
	.remind = pool_remind,
	.lease_take = pool_lease_take,
	.holds_overdue = pool_holds_overdue,
	.subs_due = pool_subs_due,
	.charges_unrefunded = pool_charges_unrefunded,
	.keys_purge = pool_keys_purge,
	.snapshot = pool_snapshot,
};

struct store *store_pool_new(const char *url, int size)
{
	struct pool *p = xcalloc(1, sizeof(*p));

	p->ops = pool_ops;
	p->ops.name = store_kind(url);
	p->base.ops = &p->ops;
	p->url = xstrdup(url);
	handles_init(&p->readers, size);
	handles_init(&p->writers, size);
	return &p->base;
}
