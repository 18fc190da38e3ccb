/* test_contract.c - the contract every store must keep, run through the ledger: the purchase
 * state machine, its crash points, the reaper and check, on SQLite always, on PostgreSQL when
 * NUMATIX_TEST_PG names a server (make test starts one), and on a live MongoDB when MONGO_URI
 * names a replica set. A fault wrapper (below, test-only) fails one
 * primitive once, which is how a crash between two units of a purchase is reached. */
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "api.h"
#include "app.h"
#include "config.h"
#include "check.h"
#include "ledger.h"
#include "processor.h"
#include "purchase.h"
#include "reaper.h"
#include "signin.h"
#include "store.h"
#include "util.h"
#include "waitlist.h"

static char store_url[512];

/* --- the fault wrapper: the real store's ops and the simulated processor's, with some that
 * can fail once ------------------------------------------------------------------------------ */

static const struct store_ops *real_ops;
static char sim_path[300];           /* the simulated processor's file */
static struct processor_settings sim; /* as the ledger made last, for the wrapper */
static struct processor faulty_proc;

/* A ledger over s as a worker makes it (app_ledger_init): answers kept on keys sealed; its
 * processor the simulated one behind the fault wrapper. */
static struct ledger ledger_of(struct store *s, int hold_ttl_s, int payment_latency_ms)
{
	struct config cfg = {.admin_token = (char *)"contract-test-admin-token", .hold_ttl_s = hold_ttl_s,
			     .payment_latency_ms = payment_latency_ms, .key_retention_h = 24, .offer_ttl_s = 600,
			     .processor = (char *)"sim", .sim_db = sim_path};
	struct ledger lg;

	app_ledger_init(&lg, s, &cfg);
	sim = lg.processor;
	lg.proc = &faulty_proc;
	return lg;
}
static struct store_ops faulty_ops;
static const char *fail_at;          /* "hold", "transition", "authorize", "refund" or NULL */

static bool trip(const char *op, struct err *e)
{
	if (!fail_at || strcmp(fail_at, op))
		return false;
	fail_at = NULL;
	err_set(e, ERR_UNAVAILABLE, NULL, "injected crash at %s", op);
	return true;
}

/* lease_ends() moves the time a claim of one key sees past that key's lease, so a retry finds
 * the lease over without waiting for it, while the hold, whose deadline is read on the real
 * clock, still runs however slow the machine. Other keys see the real clock. */
static char lease_over_key[UUID_LEN + 1];
static int64_t lease_skew_ms;

static int64_t claim_now(const struct claim_req *r)
{
	return strcmp(r->key, lease_over_key) ? r->now : r->now + lease_skew_ms;
}

static int f_hold(struct store *s, const struct hold_req *r, const struct actor *a, struct hold_out *o, struct err *e)
{
	struct hold_req moved = *r;

	moved.claim.now = claim_now(&r->claim);
	return trip("hold", e) ? -1 : real_ops->hold(s, &moved, a, o, e);
}

static int f_key_claim(struct store *s, const struct claim_req *r, struct claim *out, struct err *e)
{
	struct claim_req moved = *r;

	moved.now = claim_now(r);
	return real_ops->key_claim(s, &moved, out, e);
}

static int f_transition(struct store *s, const struct transition *t, const struct actor *a, struct transition_out *o,
			struct err *e)
{
	return trip("transition", e) ? -1 : real_ops->transition(s, t, a, o, e);
}

/* The process's simulated processor (a forked child opens its own). */
static struct processor *real_proc(void)
{
	return processor_shared(&sim);
}

/* A processor call that fails once: nothing done, no answer. */
static enum pay_outcome proc_trip(const char *op, struct pay_result *out)
{
	struct err e = {0};

	if (!trip(op, &e))
		return PAY_OK;
	memset(out, 0, sizeof(*out));
	snprintf(out->msg, sizeof(out->msg), "%.150s", e.msg);
	return out->outcome = PAY_UNKNOWN;
}

static enum pay_outcome fp_authorize(struct processor *p, const struct pay_req *r, struct pay_result *out)
{
	(void)p;
	return proc_trip("authorize", out) ? PAY_UNKNOWN : real_proc()->ops->authorize(real_proc(), r, out);
}

static enum pay_outcome fp_charge_saved(struct processor *p, const struct pay_req *r, struct pay_result *out)
{
	(void)p;
	return real_proc()->ops->charge_saved(real_proc(), r, out);
}

static enum pay_outcome fp_capture(struct processor *p, const struct pay_ref *ref, struct pay_result *out)
{
	(void)p;
	return real_proc()->ops->capture(real_proc(), ref, out);
}

static enum pay_outcome fp_cancel(struct processor *p, const struct pay_ref *ref, struct pay_result *out)
{
	(void)p;
	return real_proc()->ops->cancel(real_proc(), ref, out);
}

static enum pay_outcome fp_refund(struct processor *p, const char *id, const char *rkey, int64_t max,
				  struct pay_result *out)
{
	(void)p;
	return proc_trip("refund", out) ? PAY_UNKNOWN : real_proc()->ops->refund(real_proc(), id, rkey, max, out);
}

static enum pay_outcome fp_lookup(struct processor *p, const struct pay_ref *ref, struct pay_result *out)
{
	(void)p;
	return real_proc()->ops->lookup(real_proc(), ref, out);
}

static const struct processor_ops faulty_proc_ops = {
	.name = "faulty",
	.authorize = fp_authorize,
	.charge_saved = fp_charge_saved,
	.capture = fp_capture,
	.cancel = fp_cancel,
	.refund = fp_refund,
	.lookup = fp_lookup,
};
static struct processor faulty_proc = {&faulty_proc_ops};

struct fixture {
	struct store *s;
	struct ledger lg;
	char plan_id[ID_LEN + 1];
};

static struct fixture *fixture_new(int capacity, int hold_ttl_s)
{
	struct fixture *x = xcalloc(1, sizeof(*x));
	struct err e = {0};
	struct plan p = {0};
	struct actor a = {"test", "admin", NULL, NULL};

	x->s = store_open(store_url, &e);
	assert_non_null(x->s);
	assert_int_equal(x->s->ops->reset(x->s, &e), 0);
	real_ops = x->s->ops;
	faulty_ops = *real_ops;
	faulty_ops.hold = f_hold;
	faulty_ops.key_claim = f_key_claim;
	faulty_ops.transition = f_transition;
	x->s->ops = &faulty_ops;
	fail_at = NULL;
	lease_skew_ms = 0;
	lease_over_key[0] = '\0';
	x->lg = ledger_of(x->s, hold_ttl_s, 0);
	id_new(p.id);
	p.name = xasprintf("Plan %s", p.id);
	p.description = xstrdup("");
	p.price_cents = 1500;
	p.interval = PERIOD_DAY;
	p.interval_count = 30;
	strcpy(p.timezone, "UTC");
	p.total_capacity = p.subscriptions_left = capacity;
	p.max_per_order = PLAN_MAX_PER_ORDER_DEFAULT;
	strcpy(p.status, "active");
	p.features = json_object_new_array();
	p.created_at = p.updated_at = now_ms();
	if (ledger_plan_create(&x->lg, &a, &p, &e))
		fail_msg("plan create: %s", e.msg);
	snprintf(x->plan_id, sizeof(x->plan_id), "%s", p.id);
	plan_clear(&p);
	return x;
}

static void fixture_free(struct fixture *x)
{
	x->s->ops = real_ops;
	store_close(x->s);
	free(x);
}

static void ignore(void *arg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void ignore(void *arg, const char *fmt, ...)
{
	va_list ap;

	(void)arg;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static int violations(struct fixture *x)
{
	struct err e = {0};
	int v = -1;

	assert_int_equal(check_run(&x->lg, ignore, NULL, &v, &e), 0);
	return v;
}

static struct plan plan_now(struct fixture *x)
{
	struct plan p = {0};
	struct err e = {0};

	assert_int_equal(ledger_plan_get(&x->lg, x->plan_id, &p, &e), 0);
	return p;
}

static void buy(struct fixture *x, const char *key, const char *method, struct purchase_result *r)
{
	struct actor a = {"test", "customer", NULL, NULL};
	struct purchase_req p = {key, "fingerprint-of-this-request", x->plan_id, 1, method, NULL, "ada@example.com", "Ada"};

	purchase_run(&x->lg, &a, &p, r);
}

static void new_key(char key[UUID_LEN + 1])
{
	uuid_new(key);
}

/* The id an answer names ("id" of its body) into id. */
static void answer_id(const struct purchase_result *r, char id[ID_LEN + 1])
{
	snprintf(id, ID_LEN + 1, "%.24s", strstr(r->reply.body, "\"id\":\"") + 6);
}

/* A subscription bought on the fixture's plan, its id into id. */
static void bought(struct fixture *x, char id[ID_LEN + 1])
{
	struct purchase_result r;
	char key[UUID_LEN + 1];

	new_key(key);
	buy(x, key, "pm_card_visa", &r);
	assert_int_equal(r.reply.status, 201);
	answer_id(&r, id);
	purchase_result_clear(&r);
}

/* Waits until the key's lease has ended: the retry after a crash may then take over. */
/* The lease on key runs out: the next claim of it sees a time past the lease's end. */
static void lease_ends(struct fixture *x, const char *key)
{
	struct key_record k = {0};
	struct err e = {0};
	bool found;

	assert_int_equal(x->s->ops->key_get(x->s, key, &k, &found, &e), 0);
	assert_true(found);
	snprintf(lease_over_key, sizeof(lease_over_key), "%s", key);
	lease_skew_ms = k.locked_until - now_ms() + 1;
	key_record_clear(&k);
}

/* --- the tests ----------------------------------------------------------------------------- */

static void test_purchase_and_replay(void **state)
{
	struct fixture *x = fixture_new(2, 600);
	struct purchase_result r, again;
	char key[UUID_LEN + 1];
	struct plan p;

	(void)state;
	new_key(key);
	buy(x, key, "pm_card_visa", &r);
	assert_int_equal(r.end, PURCHASE_ANSWERED);
	assert_int_equal(r.reply.status, 201);
	assert_false(r.replayed);
	buy(x, key, "pm_card_visa", &again);
	assert_int_equal(again.end, PURCHASE_ANSWERED);
	assert_true(again.replayed);
	assert_string_equal(again.reply.body, r.reply.body);
	p = plan_now(x);
	assert_int_equal(p.subscriptions_left, 1);
	assert_int_equal(p.subscriptions_held, 0);
	assert_int_equal(violations(x), 0);
	plan_clear(&p);
	purchase_result_clear(&r);
	purchase_result_clear(&again);
	fixture_free(x);
}

static void test_refusals_keep_no_key(void **state)
{
	struct fixture *x = fixture_new(1, 600);
	struct purchase_result r;
	struct key_record k = {0};
	char key[UUID_LEN + 1];
	struct err e = {0};
	bool found;

	(void)state;
	new_key(key);
	buy(x, key, "pm_card_visa", &r);
	assert_int_equal(r.reply.status, 201);
	purchase_result_clear(&r);
	new_key(key);
	buy(x, key, "pm_card_visa", &r);
	assert_int_equal(r.end, PURCHASE_REFUSED);
	assert_string_equal(r.err.code, "PLAN_SOLD_OUT");
	assert_int_equal(x->s->ops->key_get(x->s, key, &k, &found, &e), 0);
	assert_false(found);
	purchase_result_clear(&r);
	snprintf(x->plan_id, sizeof(x->plan_id), "%s", "0123456789abcdef01234567");
	buy(x, key, "pm_card_visa", &r);
	assert_string_equal(r.err.code, "PLAN_NOT_FOUND");
	purchase_result_clear(&r);
	fixture_free(x);
}

static void test_key_reused_and_in_progress(void **state)
{
	struct fixture *x = fixture_new(3, 600);
	struct actor a = {"test", "customer", NULL, NULL};
	struct purchase_result r;
	char key[UUID_LEN + 1];

	(void)state;
	new_key(key);
	fail_at = "authorize";
	buy(x, key, "pm_card_visa", &r);  /* dies after its hold: the key stays leased */
	assert_int_equal(r.end, PURCHASE_REFUSED);
	purchase_result_clear(&r);
	buy(x, key, "pm_card_visa", &r);
	assert_int_equal(r.end, PURCHASE_IN_PROGRESS);
	assert_true(r.retry_after_s >= 1);
	purchase_result_clear(&r);
	struct purchase_req other = {key, "another-fingerprint", x->plan_id, 1, "pm_card_visa", NULL, "b@example.com", "B"};
	purchase_run(&x->lg, &a, &other, &r);
	assert_int_equal(r.end, PURCHASE_KEY_REUSED);
	purchase_result_clear(&r);
	fixture_free(x);
}

static void test_decline_gives_the_seat_back(void **state)
{
	struct fixture *x = fixture_new(1, 600);
	struct purchase_result r;
	char key[UUID_LEN + 1];
	struct plan p;

	(void)state;
	new_key(key);
	buy(x, key, "pm_card_chargeDeclinedInsufficientFunds", &r);
	assert_int_equal(r.reply.status, 402);
	assert_non_null(strstr(r.reply.body, "insufficient_funds"));
	p = plan_now(x);
	assert_int_equal(p.subscriptions_left, 1);
	assert_int_equal(violations(x), 0);
	plan_clear(&p);
	purchase_result_clear(&r);
	fixture_free(x);
}

/* Crash after the charge, before the settle: the retry resumes at the charge, which the
 * processor answers from its records, and settles once. */
static void test_crash_after_charge_retry_settles_once(void **state)
{
	struct fixture *x = fixture_new(2, 600);
	struct purchase_result r;
	char key[UUID_LEN + 1];
	struct plan p;

	(void)state;
	new_key(key);
	fail_at = "transition";
	buy(x, key, "pm_card_visa", &r);
	assert_int_equal(r.end, PURCHASE_REFUSED);
	assert_int_equal(r.err.kind, ERR_UNAVAILABLE);
	purchase_result_clear(&r);
	p = plan_now(x);
	assert_int_equal(p.subscriptions_held, 1);
	plan_clear(&p);
	lease_ends(x, key);
	buy(x, key, "pm_card_visa", &r);
	assert_int_equal(r.end, PURCHASE_ANSWERED);
	assert_int_equal(r.reply.status, 201);
	purchase_result_clear(&r);
	p = plan_now(x);
	assert_int_equal(p.subscriptions_left, 1);
	assert_int_equal(p.subscriptions_held, 0);
	assert_int_equal(violations(x), 0);
	plan_clear(&p);
	fixture_free(x);
}

/* Crash after the charge and no retry: the reaper expires the hold past its deadline and the
 * processor refunds the charge; check finds every charge refunded or kept by a seat. */
static void test_crash_after_charge_reaper_refunds(void **state)
{
	struct fixture *x = fixture_new(2, 1);
	struct purchase_result r;
	struct reap_stats st;
	struct err e = {0};
	char key[UUID_LEN + 1];
	struct plan p;

	(void)state;
	new_key(key);
	fail_at = "transition";
	buy(x, key, "pm_card_visa", &r);
	assert_int_equal(r.end, PURCHASE_REFUSED);
	purchase_result_clear(&r);
	lease_ends(x, key);
	do {
		assert_int_equal(reaper_run(&x->lg, "test", &st, &e), 0);
	} while (st.expired == 0);
	p = plan_now(x);
	assert_int_equal(p.subscriptions_left, 2);
	assert_int_equal(p.subscriptions_held, 0);
	plan_clear(&p);
	/* the processor voided the authorization the crashed request made: nothing was taken */
	struct pay_result pr;
	assert_int_equal(real_proc()->ops->lookup(real_proc(), &(struct pay_ref){key, NULL, NULL, NULL}, &pr), PAY_OK);
	assert_int_equal(pr.state, PAYS_VOIDED);
	/* the retry now gets the stored HOLD_EXPIRED, and nothing is charged again */
	buy(x, key, "pm_card_visa", &r);
	assert_int_equal(r.reply.status, 409);
	assert_non_null(strstr(r.reply.body, "HOLD_EXPIRED"));
	purchase_result_clear(&r);
	assert_int_equal(violations(x), 0);
	fixture_free(x);
}

static void test_cancel_and_capacity(void **state)
{
	struct fixture *x = fixture_new(1, 600);
	struct actor a = {"test", "admin", NULL, NULL};
	struct purchase_result r;
	struct subscription sub = {0};
	struct plan_patch pt = {.fields = PLAN_F_CAPACITY};
	struct plan p = {0};
	struct err e = {0};
	char key[UUID_LEN + 1], sub_id[ID_LEN + 1];

	(void)state;
	new_key(key);
	buy(x, key, "pm_card_visa", &r);
	assert_int_equal(r.reply.status, 201);
	snprintf(sub_id, sizeof(sub_id), "%.24s", strstr(r.reply.body, "\"id\":\"") + 6);
	purchase_result_clear(&r);
	pt.total_capacity = 0 + 1 - 1;
	assert_int_equal(ledger_plan_update(&x->lg, &a, x->plan_id, &pt, &p, &e), -1);
	assert_string_equal(e.code, "CAPACITY_BELOW_SOLD");
	assert_int_equal(ledger_sub_cancel(&x->lg, &a, sub_id, &sub, &e), 0);
	assert_string_equal(sub.status, "cancelled");
	subscription_clear(&sub);
	assert_int_equal(ledger_sub_cancel(&x->lg, &a, sub_id, &sub, &e), -1);
	assert_string_equal(e.code, "ALREADY_CANCELLED");
	p = plan_now(x);
	assert_int_equal(p.subscriptions_left, 1);
	plan_clear(&p);
	assert_int_equal(violations(x), 0);
	fixture_free(x);
}

/* A subscription's life on the store: what is due found once its period ends, a life move
 * only from the life as read (a stale read moves nothing), the life kept whole, and an end
 * giving the seat back. */
static void test_life_moves_from_what_was_read(void **state)
{
	struct fixture *x = fixture_new(1, 600);
	struct actor a = {"test", "system", "renewer", NULL};
	const struct event_spec ev[] = {{"subscription.updated", "subscription", "", EV_NO_COUNTS, NULL, NULL}};
	const struct event_spec end_ev[] = {{"subscription.ended", "subscription", "", EV_BEFORE_AFTER, NULL, NULL},
					    {"seat.released", "subscription", "", EV_BEFORE_AFTER, NULL, NULL}};
	struct purchase_result r;
	struct subscription sub = {0}, *due = NULL;
	struct transition_out o;
	struct err e = {0};
	struct plan p;
	size_t n = 0;
	char key[UUID_LEN + 1], sub_id[ID_LEN + 1];

	(void)state;
	new_key(key);
	buy(x, key, "pm_card_visa", &r);
	assert_int_equal(r.reply.status, 201);
	snprintf(sub_id, sizeof(sub_id), "%.24s", strstr(r.reply.body, "\"id\":\"") + 6);
	purchase_result_clear(&r);
	assert_int_equal(ledger_sub_get(&x->lg, sub_id, &sub, &e), 0);
	assert_int_equal(sub.life.term_unit, PERIOD_DAY);
	assert_int_equal(sub.life.term_count, 30);
	assert_string_equal(sub.life.term_zone, "UTC");
	assert_int_equal(sub.life.period_start, sub.start_at);
	assert_string_equal(sub.life.payment_method, "pm_card_visa");
	/* nothing due before the end, the subscription at it */
	assert_int_equal(x->lg.store->ops->subs_due(x->lg.store, sub.end_at - 1, 10, &due, &n, &e), 0);
	for (size_t i = 0; i < n; i++)
		assert_string_not_equal(due[i].id, sub_id);
	for (size_t i = 0; i < n; i++)
		subscription_clear(&due[i]);
	free(due);
	assert_int_equal(x->lg.store->ops->subs_due(x->lg.store, sub.end_at, 200, &due, &n, &e), 0);
	bool found = false;
	for (size_t i = 0; i < n; i++) {
		found |= !strcmp(due[i].id, sub_id);
		subscription_clear(&due[i]);
	}
	free(due);
	assert_true(found);
	/* a move from a stale read (another card) moves nothing */
	struct sub_life l = sub.life;
	l.cancel_at_period_end = true;
	snprintf(l.payment_method, sizeof(l.payment_method), "pm_card_mastercard");
	struct transition t = {.sub_id = sub_id, .from = "active", .to = "active", .now = sub.start_at + 1,
			       .events = ev, .nevents = 1,
			       .life = {&l, true, sub.end_at, 0, false, "pm_card_amex"}};
	assert_int_equal(ledger_transition(&x->lg, &t, &a, &o, &e), 0);
	assert_int_equal(o.result, MOVE_REFUSED);
	transition_out_clear(&o);
	/* from the life as read: kept whole */
	t.life.payment_method = sub.life.payment_method;
	assert_int_equal(ledger_transition(&x->lg, &t, &a, &o, &e), 0);
	assert_int_equal(o.result, MOVED);
	assert_true(o.sub.life.cancel_at_period_end);
	assert_string_equal(o.sub.life.payment_method, "pm_card_mastercard");
	assert_int_equal(o.sub.life.anchor_at, sub.life.anchor_at);
	transition_out_clear(&o);
	/* the old read is stale now: the schedule changed */
	assert_int_equal(ledger_transition(&x->lg, &t, &a, &o, &e), 0);
	assert_int_equal(o.result, MOVE_REFUSED);
	transition_out_clear(&o);
	/* the end, from the life as it is: the seat back */
	l.ended_at = sub.end_at;
	struct transition end = {.sub_id = sub_id, .from = "active", .to = "ended", .now = sub.end_at, .dleft = 1,
				 .events = end_ev, .nevents = 2,
				 .life = {&l, true, sub.end_at, 0, true, "pm_card_mastercard"}};
	assert_int_equal(ledger_transition(&x->lg, &end, &a, &o, &e), 0);
	assert_int_equal(o.result, MOVED);
	assert_string_equal(o.sub.status, "ended");
	assert_int_equal(o.sub.life.ended_at, sub.end_at);
	transition_out_clear(&o);
	p = plan_now(x);
	assert_int_equal(p.subscriptions_left, 1);
	plan_clear(&p);
	subscription_clear(&sub);
	assert_int_equal(violations(x), 0);
	fixture_free(x);
}

/* Quantities move that many seats, all or nothing, within the plan's limits. */
static void test_quantities_and_limits(void **state)
{
	struct fixture *x = fixture_new(6, 600);
	struct actor a = {"test", "admin", NULL, NULL}, buyer = {"test", "customer", NULL, NULL};
	struct plan_patch pt = {.fields = PLAN_F_MAX_ORDER | PLAN_F_MAX_CUSTOMER, .max_per_order = 4,
				.max_per_customer = 5};
	struct purchase_result r;
	struct plan p = {0};
	struct err e = {0};
	char key[UUID_LEN + 1];
	struct purchase_req q = {key, "fp", x->plan_id, 3, "pm_card_visa", NULL, "q@example.com", "Q"};

	(void)state;
	assert_int_equal(ledger_plan_update(&x->lg, &a, x->plan_id, &pt, &p, &e), 0);
	assert_int_equal(p.max_per_order, 4);
	assert_int_equal(p.max_per_customer, 5);
	plan_clear(&p);
	new_key(key);
	purchase_run(&x->lg, &buyer, &q, &r);
	assert_int_equal(r.reply.status, 201);
	assert_non_null(strstr(r.reply.body, "\"quantity\":3"));
	assert_non_null(strstr(r.reply.body, "\"amount_cents\":4500"));
	purchase_result_clear(&r);
	/* the customer holds 3 of 5: 3 more are refused, nothing moves */
	new_key(key);
	purchase_run(&x->lg, &buyer, &q, &r);
	assert_int_equal(r.end, PURCHASE_REFUSED);
	assert_string_equal(r.err.code, "CUSTOMER_LIMIT_REACHED");
	assert_string_equal(r.err.details, "{\"limit\":5,\"held\":3}");
	purchase_result_clear(&r);
	/* above max_per_order: a validation error of quantity */
	q.quantity = 5;
	q.email = "other@example.com";
	new_key(key);
	purchase_run(&x->lg, &buyer, &q, &r);
	assert_int_equal(r.end, PURCHASE_REFUSED);
	assert_string_equal(r.err.code, "VALIDATION_ERROR");
	purchase_result_clear(&r);
	/* 3 left: 4 are refused whole */
	q.quantity = 4;
	new_key(key);
	purchase_run(&x->lg, &buyer, &q, &r);
	assert_string_equal(r.err.code, "PLAN_SOLD_OUT");
	assert_string_equal(r.err.details, "{\"available\":3,\"waiting\":0}");
	purchase_result_clear(&r);
	/* a decline gives all its seats back */
	q.quantity = 3;
	new_key(key);
	purchase_run(&x->lg, &buyer, &(struct purchase_req){key, "fp", x->plan_id, 3, "pm_card_chargeDeclined", NULL,
							    "other@example.com", "O"}, &r);
	assert_int_equal(r.reply.status, 402);
	purchase_result_clear(&r);
	p = plan_now(x);
	assert_int_equal(p.subscriptions_left, 3);
	assert_int_equal(p.subscriptions_held, 0);
	plan_clear(&p);
	assert_int_equal(violations(x), 0);
	fixture_free(x);
}

/* A checkout session of quantity 1, open for expires_s; its id into id. */
static void session_new(struct fixture *x, int expires_s, char id[ID_LEN + 1])
{
	struct actor a = {"test", "customer", NULL, NULL};
	char key[UUID_LEN + 1];
	struct checkout_req q = {key, "fp", x->plan_id, 1, expires_s, NULL, "cs@example.com", "CS"};
	struct purchase_result r;

	new_key(key);
	checkout_create(&x->lg, &a, &q, &r);
	assert_int_equal(r.reply.status, 201);
	answer_id(&r, id);
	purchase_result_clear(&r);
}

static void complete(struct fixture *x, const char *id, const char *key, struct purchase_result *r)
{
	struct actor a = {"test", "customer", NULL, NULL};

	checkout_complete(&x->lg, &a, id, key, "pm_card_visa", r);
}

static enum pay_state processor_state_of(const char *key)
{
	struct pay_result pr;

	assert_int_equal(real_proc()->ops->lookup(real_proc(), &(struct pay_ref){key, NULL, NULL, NULL}, &pr), PAY_OK);
	return pr.state;
}

/* A completion that crashed after its charge: the retry with its key settles it once. */
static void test_session_completion_crash_retry_settles_once(void **state)
{
	struct fixture *x = fixture_new(2, 600);
	struct purchase_result r;
	char id[ID_LEN + 1], k2[UUID_LEN + 1], k3[UUID_LEN + 1];
	struct plan p;

	(void)state;
	session_new(x, 600, id);
	new_key(k2);
	fail_at = "transition";
	complete(x, id, k2, &r);
	assert_int_equal(r.end, PURCHASE_REFUSED);
	purchase_result_clear(&r);
	complete(x, id, k2, &r);
	assert_int_equal(r.reply.status, 201);
	purchase_result_clear(&r);
	new_key(k3);
	complete(x, id, k3, &r);
	assert_int_equal(r.end, PURCHASE_REFUSED);
	assert_string_equal(r.err.code, "SESSION_COMPLETED");
	purchase_result_clear(&r);
	p = plan_now(x);
	assert_int_equal(p.subscriptions_left, 1);
	assert_int_equal(p.subscriptions_held, 0);
	plan_clear(&p);
	assert_int_equal(violations(x), 0);
	fixture_free(x);
}

/* A completion that crashed after its charge, never retried: the reaper expires the session at
 * its deadline and the charge is refunded. */
static void test_session_completion_crash_reaper_refunds(void **state)
{
	struct fixture *x = fixture_new(2, 600);
	struct purchase_result r;
	struct reap_stats st;
	struct err e = {0};
	char id[ID_LEN + 1], k2[UUID_LEN + 1];
	struct plan p;

	(void)state;
	session_new(x, 1, id);
	new_key(k2);
	fail_at = "transition";
	complete(x, id, k2, &r);
	assert_int_equal(r.end, PURCHASE_REFUSED);
	purchase_result_clear(&r);
	do {
		assert_int_equal(reaper_run(&x->lg, "test", &st, &e), 0);
	} while (st.expired == 0);
	p = plan_now(x);
	assert_int_equal(p.subscriptions_left, 2);
	assert_int_equal(p.subscriptions_held, 0);
	plan_clear(&p);
	assert_int_equal(violations(x), 0);
	assert_int_equal(processor_state_of(k2), PAYS_VOIDED);
	complete(x, id, k2, &r);
	assert_string_equal(r.err.code, "SESSION_EXPIRED");
	purchase_result_clear(&r);
	/* the reaper's expiry reads as the session's */
	{
		struct audit_filter f = {x->plan_id, NULL, "checkout.expired"};
		struct page_req pg = {10, NULL};
		struct audit_event *evs = NULL;
		size_t n = 0;
		char next[CURSOR_LEN];
		assert_int_equal(ledger_audit_list(&x->lg, &f, &pg, &evs, &n, next, &e), 0);
		assert_int_equal(n, 1);
		assert_string_equal(evs[0].resource_id, id);
		for (size_t i = 0; i < n; i++)
			audit_event_clear(&evs[i]);
		free(evs);
	}
	fixture_free(x);
}

/* An attempt whose request died is taken over by the next card once its lease ends: its charge
 * is refunded, the new one kept. */
static void test_session_dead_attempt_taken_over(void **state)
{
	struct fixture *x = fixture_new(2, 2);   /* leases of 1 s */
	struct purchase_result r;
	char id[ID_LEN + 1], k2[UUID_LEN + 1], k3[UUID_LEN + 1];
	struct subscription sub = {0};
	struct err e = {0};

	(void)state;
	session_new(x, 600, id);
	new_key(k2);
	fail_at = "transition";
	complete(x, id, k2, &r);
	purchase_result_clear(&r);
	/* while its lease runs, another card is told to wait */
	new_key(k3);
	complete(x, id, k3, &r);
	assert_int_equal(r.end, PURCHASE_IN_PROGRESS);
	purchase_result_clear(&r);
	assert_int_equal(ledger_sub_get(&x->lg, id, &sub, &e), 0);
	while (now_ms() <= sub.attempt_until) {
		struct timespec ts = {0, 20 * 1000000L};
		nanosleep(&ts, NULL);
	}
	subscription_clear(&sub);
	complete(x, id, k3, &r);
	assert_int_equal(r.reply.status, 201);
	purchase_result_clear(&r);
	assert_int_equal(violations(x), 0);
	assert_int_equal(processor_state_of(k2), PAYS_VOIDED);
	fixture_free(x);
}

/* A plan of its own beside the fixture's, at price. */
static void other_plan(struct fixture *x, int64_t price, int64_t capacity, char id[ID_LEN + 1])
{
	struct actor a = {"test", "admin", NULL, NULL};
	struct plan p = {0};
	struct err e = {0};

	id_new(p.id);
	p.name = xasprintf("Other %s", p.id);
	p.description = xstrdup("");
	p.price_cents = price;
	p.interval = PERIOD_DAY;
	p.interval_count = 30;
	strcpy(p.timezone, "UTC");
	p.total_capacity = p.subscriptions_left = capacity;
	p.max_per_order = PLAN_MAX_PER_ORDER_DEFAULT;
	strcpy(p.status, "active");
	p.features = json_object_new_array();
	p.created_at = p.updated_at = now_ms();
	assert_int_equal(ledger_plan_create(&x->lg, &a, &p, &e), 0);
	snprintf(id, ID_LEN + 1, "%s", p.id);
	plan_clear(&p);
}

static void change(struct fixture *x, const char *sub_id, const char *plan_id, const char *key, struct purchase_result *r)
{
	struct actor a = {"test", "customer", NULL, NULL};
	struct change_req c = {key, "fp-change", sub_id, plan_id, "pm_card_visa"};

	plan_change(&x->lg, &a, &c, r);
}

/* An upgrade crashed after its charge: the retry settles it once, the old subscription changed. */
static void test_plan_change_crash_retry_settles_once(void **state)
{
	struct fixture *x = fixture_new(2, 600);
	struct purchase_result r;
	struct subscription old = {0};
	struct err e = {0};
	char key[UUID_LEN + 1], sub_id[ID_LEN + 1], dear[ID_LEN + 1];
	struct plan p;

	(void)state;
	bought(x, sub_id);
	other_plan(x, 4500, 3, dear);
	new_key(key);
	fail_at = "transition";
	change(x, sub_id, dear, key, &r);
	assert_int_equal(r.end, PURCHASE_REFUSED);
	purchase_result_clear(&r);
	lease_ends(x, key);
	change(x, sub_id, dear, key, &r);
	assert_int_equal(r.reply.status, 200);
	assert_non_null(strstr(r.reply.body, sub_id));
	purchase_result_clear(&r);
	assert_int_equal(ledger_sub_get(&x->lg, sub_id, &old, &e), 0);
	assert_string_equal(old.status, "changed");
	subscription_clear(&old);
	p = plan_now(x);
	assert_int_equal(p.subscriptions_left, 2);
	plan_clear(&p);
	assert_int_equal(violations(x), 0);
	fixture_free(x);
}

/* The old subscription is cancelled between the change's charge and its last unit: the change
 * is not made, its seats go back and its charge is refunded. */
static void test_plan_change_loses_to_a_cancel(void **state)
{
	struct fixture *x = fixture_new(2, 600);
	struct actor admin = {"test", "admin", NULL, NULL};
	struct purchase_result r;
	struct subscription old = {0};
	struct err e = {0};
	char key[UUID_LEN + 1], sub_id[ID_LEN + 1], dear[ID_LEN + 1];
	struct plan p = {0};

	(void)state;
	bought(x, sub_id);
	other_plan(x, 4500, 3, dear);
	new_key(key);
	fail_at = "transition";
	change(x, sub_id, dear, key, &r);
	purchase_result_clear(&r);
	assert_int_equal(ledger_sub_cancel(&x->lg, &admin, sub_id, &old, &e), 0);
	subscription_clear(&old);
	lease_ends(x, key);
	change(x, sub_id, dear, key, &r);
	assert_int_equal(r.reply.status, 409);
	assert_non_null(strstr(r.reply.body, "SUBSCRIPTION_NOT_ACTIVE"));
	purchase_result_clear(&r);
	assert_int_equal(ledger_plan_get(&x->lg, dear, &p, &e), 0);
	assert_int_equal(p.subscriptions_left, 3);
	assert_int_equal(p.subscriptions_held, 0);
	plan_clear(&p);
	assert_int_equal(processor_state_of(key), PAYS_VOIDED);
	assert_int_equal(violations(x), 0);
	fixture_free(x);
}

/* A downgrade whose credit the processor did not take: the reaper makes it, once. */
static void test_plan_change_credit_made_by_the_reaper(void **state)
{
	struct fixture *x = fixture_new(2, 600);
	struct purchase_result r;
	struct reap_stats st;
	struct payment *pending = NULL;
	struct err e = {0};
	size_t n = 0;
	char key[UUID_LEN + 1], sub_id[ID_LEN + 1], cheap[ID_LEN + 1];

	(void)state;
	bought(x, sub_id);
	other_plan(x, 500, 3, cheap);
	new_key(key);
	fail_at = "refund";   /* the credit's call to the processor fails */
	change(x, sub_id, cheap, key, &r);
	assert_int_equal(r.reply.status, 200);
	purchase_result_clear(&r);
	assert_int_equal(x->s->ops->payments_in(x->s, "pending", 10, &pending, &n, &e), 0);
	assert_int_equal(n, 1);
	assert_int_equal(pending[0].amount_cents, 1000);
	free(pending);
	assert_int_equal(reaper_run(&x->lg, "test", &st, &e), 0);
	assert_int_equal(st.refunded, 1);
	assert_int_equal(x->s->ops->payments_in(x->s, "pending", 10, &pending, &n, &e), 0);
	assert_int_equal(n, 0);
	free(pending);
	/* made from the purchase's captured charge, once */
	struct subscription bought_sub = {0};
	struct pay_result pr;
	assert_int_equal(ledger_sub_get(&x->lg, sub_id, &bought_sub, &e), 0);
	assert_int_equal(real_proc()->ops->lookup(real_proc(), &(struct pay_ref){bought_sub.idem_key, NULL, NULL, NULL}, &pr), PAY_OK);
	assert_int_equal(pr.state, PAYS_CAPTURED);
	assert_int_equal(pr.refunded_cents, 1000);
	subscription_clear(&bought_sub);
	assert_int_equal(reaper_run(&x->lg, "test", &st, &e), 0);
	assert_int_equal(real_proc()->ops->lookup(real_proc(), &(struct pay_ref){key, NULL, NULL, NULL}, &pr), PAY_OK);
	assert_int_equal(violations(x), 0);
	fixture_free(x);
}

/* Processes race for the seats, each with its own store handle: exactly capacity win. */
static void test_racing_processes_sell_exactly_capacity(void **state)
{
	enum { PROCS = 6, EACH = 5, CAPACITY = 7 };
	struct fixture *x = fixture_new(CAPACITY, 600);
	int fds[2], won = 0, status;
	struct plan p;

	(void)state;
	assert_int_equal(pipe(fds), 0);
	for (int i = 0; i < PROCS; i++) {
		if (fork() == 0) {
			struct err e = {0};
			struct store *s = store_open(store_url, &e);
			struct ledger lg = ledger_of(s, 600, 0);
			struct actor a = {"race", "customer", NULL, NULL};
			char n = 0, key[UUID_LEN + 1], email[64];
			for (int j = 0; j < EACH; j++) {
				struct purchase_result r;
				uuid_new(key);
				snprintf(email, sizeof(email), "racer%d-%d@example.com", i, j);
				struct purchase_req pr = {key, "fp", x->plan_id, 1, "pm_card_visa", NULL, email, "Racer"};
				purchase_run(&lg, &a, &pr, &r);
				n += r.end == PURCHASE_ANSWERED && r.reply.status == 201;
				purchase_result_clear(&r);
			}
			if (write(fds[1], &n, 1) != 1)
				_exit(1);
			store_close(s);
			_exit(0);
		}
	}
	close(fds[1]);
	for (int i = 0; i < PROCS; i++) {
		char n;
		assert_int_equal(read(fds[0], &n, 1), 1);
		won += n;
	}
	close(fds[0]);
	while (wait(&status) > 0)
		assert_int_equal(status, 0);
	assert_int_equal(won, CAPACITY);
	p = plan_now(x);
	assert_int_equal(p.subscriptions_left, 0);
	plan_clear(&p);
	assert_int_equal(violations(x), 0);
	fixture_free(x);
}

/* Sessions completed around their own deadline by racing processes while the reaper runs:
 * each ends completed or expired, never both; no seat is lost and no charge of an expired
 * session is kept. */
static void test_sessions_race_their_deadline(void **state)
{
	enum { PROCS = 4, EACH = 5, N = PROCS * EACH };
	struct fixture *x = fixture_new(N, 600);
	struct report {
		char sid[ID_LEN + 1], key[UUID_LEN + 1];
		int status;
	} got[N];
	char ids[N][ID_LEN + 1];
	int64_t deadline[N];
	int fds[2], status, done = 0, completed = 0;
	struct reap_stats st;
	struct err e = {0};
	struct plan p;

	(void)state;
	for (int i = 0; i < N; i++) {
		struct subscription sub = {0};
		session_new(x, 2, ids[i]);
		assert_int_equal(ledger_sub_get(&x->lg, ids[i], &sub, &e), 0);
		deadline[i] = sub.hold_deadline;
		subscription_clear(&sub);
	}
	assert_int_equal(pipe(fds), 0);
	for (int i = 0; i < PROCS; i++) {
		if (fork() == 0) {
			struct store *s = store_open(store_url, &e);
			struct ledger lg = ledger_of(s, 600, 25);   /* a 25 ms processor */
			struct actor a = {"race", "customer", NULL, NULL};
			for (int j = 0; j < EACH; j++) {
				int k = i * EACH + j;
				struct report rp = {{0}, {0}, 0};
				struct purchase_result r;
				/* complete from 60 ms before the deadline to 40 ms after it */
				int64_t at = deadline[k] - 60 + (k * 7) % 100;
				while (now_ms() < at) {
					struct timespec ts = {0, 1000000L};
					nanosleep(&ts, NULL);
				}
				uuid_new(rp.key);
				snprintf(rp.sid, sizeof(rp.sid), "%s", ids[k]);
				checkout_complete(&lg, &a, ids[k], rp.key, "pm_card_visa", &r);
				rp.status = r.end == PURCHASE_ANSWERED ? r.reply.status : r.err.code &&
					    !strcmp(r.err.code, "SESSION_EXPIRED") ? 409 : -1;
				purchase_result_clear(&r);
				if (write(fds[1], &rp, sizeof(rp)) != (ssize_t)sizeof(rp))
					_exit(1);
			}
			store_close(s);
			_exit(0);
		}
	}
	close(fds[1]);
	/* the reaper runs throughout, as the server's would */
	while (done < N) {
		struct pollfd pfd = {fds[0], POLLIN, 0};
		assert_int_equal(reaper_run(&x->lg, "test", &st, &e), 0);
		if (poll(&pfd, 1, 5) == 1) {
			assert_int_equal(read(fds[0], &got[done], sizeof(got[done])), (ssize_t)sizeof(got[done]));
			done++;
		}
	}
	close(fds[0]);
	while (wait(&status) > 0)
		assert_int_equal(status, 0);
	for (int i = 0; i < N; i++) {
		struct subscription sub = {0};
		assert_int_equal(ledger_sub_get(&x->lg, got[i].sid, &sub, &e), 0);
		if (got[i].status == 201) {
			completed++;
			assert_string_equal(sub.status, "active");
		} else {
			assert_int_equal(got[i].status, 409);
			assert_string_equal(sub.status, "expired");
			/* its money, if any was authorized, is voided, never taken */
			enum pay_state ps = processor_state_of(got[i].key);
			assert_true(ps == PAYS_NONE || ps == PAYS_VOIDED || ps == PAYS_DECLINED);
		}
		subscription_clear(&sub);
	}
	p = plan_now(x);
	assert_int_equal(p.subscriptions_left, N - completed);
	assert_int_equal(p.subscriptions_held, 0);
	plan_clear(&p);
	assert_int_equal(violations(x), 0);
	fixture_free(x);
}

/* The event feed read while processes buy and cancel on two plans at once: every position
 * is seen once, in order, with no gap; each plan's seat counts, read in feed order, follow
 * one another (a later change of a plan never comes before an earlier one); and the last
 * page holds every event the store has. */
static void test_feed_in_commit_order(void **state)
{
	enum { PROCS = 4, EACH = 12 };
	struct fixture *x = fixture_new(PROCS * EACH, 600);
	char plans[2][ID_LEN + 1];
	struct { struct seat_counts before, after; bool known; } last[2];
	int fds[2], status, seen = 0;
	int64_t pos = 0;
	bool running = true;

	(void)state;
	memset(last, 0, sizeof(last));
	snprintf(plans[0], sizeof(plans[0]), "%s", x->plan_id);
	other_plan(x, 900, PROCS * EACH, plans[1]);
	assert_int_equal(pipe(fds), 0);
	for (int i = 0; i < PROCS; i++) {
		if (fork() == 0) {
			struct err e = {0};
			struct store *s = store_open(store_url, &e);
			struct ledger lg = ledger_of(s, 600, 0);
			struct actor a = {"feed", "customer", NULL, NULL};
			char key[UUID_LEN + 1], email[64], id[ID_LEN + 1];

			close(fds[0]);
			for (int j = 0; j < EACH; j++) {
				struct purchase_result r;
				uuid_new(key);
				snprintf(email, sizeof(email), "feed%d-%d@example.com", i, j);
				struct purchase_req pr = {key, "fp", plans[(i + j) % 2], 1, "pm_card_visa", NULL, email, "Feeder"};
				purchase_run(&lg, &a, &pr, &r);
				if (r.reply.status == 201 && j % 2) {
					struct subscription sub = {0};
					answer_id(&r, id);
					if (ledger_sub_cancel(&lg, &a, id, &sub, &e))
						_exit(2);
					subscription_clear(&sub);
				}
				purchase_result_clear(&r);
			}
			store_close(s);
			_exit(0);
		}
	}
	close(fds[1]);
	while (true) {
		struct audit_event *ev = NULL;
		struct pollfd pf = {fds[0], POLLIN, 0};
		struct err e = {0};
		size_t n = 0;

		/* after the writers are gone, one more read sees whatever they committed last */
		if (running && poll(&pf, 1, 0) == 1)
			running = false;
		assert_int_equal(ledger_feed(&x->lg, pos, NULL, 37, &ev, &n, &e), 0);
		for (size_t i = 0; i < n; i++) {
			int k = !strcmp(ev[i].plan_id, plans[1]);
			if (pos)
				assert_int_equal(ev[i].seq, pos + 1);
			pos = ev[i].seq;
			seen++;
			if (strcmp(ev[i].plan_id, plans[0]) && strcmp(ev[i].plan_id, plans[1]))
				continue;
			if (ev[i].has_before && last[k].known &&
			    memcmp(&ev[i].before, &last[k].after, sizeof(ev[i].before)) &&
			    memcmp(&ev[i].before, &last[k].before, sizeof(ev[i].before)))
				fail_msg("position %lld: plan %d's counts go from left %lld to a change made at left %lld",
					 (long long)ev[i].seq, k, (long long)last[k].after.left, (long long)ev[i].before.left);
			if (ev[i].has_after) {
				last[k].before = ev[i].has_before ? ev[i].before : ev[i].after;
				last[k].after = ev[i].after;
				last[k].known = true;
			}
			audit_event_clear(&ev[i]);
		}
		free(ev);
		if (!running && n == 0)
			break;
	}
	close(fds[0]);
	while (wait(&status) > 0)
		assert_int_equal(status, 0);
	/* plan.created twice, then per purchase seat.held, payment.authorized and
	 * subscription.activated, per cancel subscription.cancelled and seat.released */
	assert_int_equal(seen, 2 + PROCS * EACH * 3 + PROCS * (EACH / 2) * 2);
	for (int k = 0; k < 2; k++) {
		struct plan p = {0};
		struct err e = {0};
		assert_int_equal(ledger_plan_get(&x->lg, plans[k], &p, &e), 0);
		assert_int_equal(last[k].after.left, p.subscriptions_left);
		assert_int_equal(last[k].after.held, p.subscriptions_held);
		plan_clear(&p);
	}
	assert_int_equal(violations(x), 0);
	fixture_free(x);
}

static void waitlist_on(struct fixture *x)
{
	struct actor a = {"test", "admin", NULL, NULL};
	struct plan_patch pt = {.fields = PLAN_F_WAITLIST, .waitlist_enabled = true};
	struct plan p = {0};
	struct err e = {0};

	assert_int_equal(ledger_plan_update(&x->lg, &a, x->plan_id, &pt, &p, &e), 0);
	plan_clear(&p);
}

static void join(struct fixture *x, const char *email, int64_t quantity, struct waitlist_entry *w)
{
	struct actor a = {"test", "customer", NULL, NULL};
	struct join_spec js = {x->plan_id, quantity, NULL, email, "Waiter"};
	char token[TOKEN_LEN + 1];
	struct err e = {0};

	if (waitlist_join(&x->lg, &a, &js, w, token, &e))
		fail_msg("join %s: %s %s", email, e.code ? e.code : "", e.msg);
}

static const char *status_of(struct fixture *x, const struct waitlist_entry *w, struct waitlist_entry *now)
{
	struct err e = {0};

	assert_int_equal(waitlist_get(&x->lg, w->id, now, &e), 0);
	return now->status;
}

/* Seats freed go to the line in the same unit, first come first served, an entry offered only
 * when its whole quantity is free and nobody jumping it; a new buyer gets none while anyone
 * waits; an offer that runs out passes its seats on, one that is left too, one completed is
 * converted. */
static void test_waitlist_offers_in_order(void **state)
{
	struct fixture *x = fixture_new(2, 600);
	struct actor admin = {"test", "admin", NULL, NULL};
	struct waitlist_entry a, b, c, now;
	struct subscription sub = {0};
	struct purchase_result r;
	struct reap_stats rs;
	struct err e = {0};
	char s1[ID_LEN + 1], s2[ID_LEN + 1], key[UUID_LEN + 1];
	struct plan p;

	(void)state;
	waitlist_on(x);
	bought(x, s1);
	bought(x, s2);
	x->lg.offer_ttl_s = 1;
	join(x, "a@example.com", 2, &a);
	join(x, "b@example.com", 1, &b);
	join(x, "c@example.com", 1, &c);
	assert_int_equal((int)a.position, 1);
	assert_int_equal((int)c.position, 3);
	/* joined already; and while anyone waits, seats are not sold */
	{
		struct join_spec js = {x->plan_id, 1, NULL, "a@example.com", "Again"};
		char token[TOKEN_LEN + 1];
		assert_int_equal(waitlist_join(&x->lg, &admin, &js, &now, token, &e), -1);
		assert_string_equal(e.code, "ALREADY_WAITING");
	}
	/* one seat free: the first needs two, and nobody behind it jumps the line */
	assert_int_equal(ledger_sub_cancel(&x->lg, &admin, s1, &sub, &e), 0);
	subscription_clear(&sub);
	assert_string_equal(status_of(x, &a, &now), "waiting");
	assert_string_equal(status_of(x, &b, &now), "waiting");
	assert_int_equal((int)now.position, 2);
	new_key(key);
	buy(x, key, "pm_card_visa", &r);
	assert_int_equal(r.end, PURCHASE_REFUSED);
	assert_string_equal(r.err.code, "PLAN_SOLD_OUT");
	assert_non_null(strstr(r.err.details, "\"waiting\":3"));
	purchase_result_clear(&r);
	/* two free: the first is offered both, in the cancel's own unit */
	assert_int_equal(ledger_sub_cancel(&x->lg, &admin, s2, &sub, &e), 0);
	subscription_clear(&sub);
	assert_string_equal(status_of(x, &a, &now), "offered");
	p = plan_now(x);
	assert_int_equal(p.subscriptions_left, 0);
	assert_int_equal(p.subscriptions_held, 2);
	assert_int_equal(p.waiting, 2);
	plan_clear(&p);
	assert_int_equal(violations(x), 0);
	/* its offer runs out: the reaper expires it, its seats go to the next two in that unit */
	while (now_ms() <= now.offer_expires_at) {
		struct timespec ts = {0, 50 * 1000000L};
		nanosleep(&ts, NULL);
	}
	x->lg.offer_ttl_s = 600;
	assert_int_equal(reaper_run(&x->lg, "test", &rs, &e), 0);
	assert_string_equal(status_of(x, &a, &now), "expired");
	assert_string_equal(status_of(x, &b, &now), "offered");
	assert_string_equal(status_of(x, &c, &now), "offered");
	/* the second leaves its offer: its seat is free again (nobody waits) */
	assert_int_equal(waitlist_leave(&x->lg, &admin, b.id, &now, &e), 0);
	assert_string_equal(now.status, "left");
	p = plan_now(x);
	assert_int_equal(p.subscriptions_left, 1);
	assert_int_equal(p.waiting, 0);
	plan_clear(&p);
	/* the third completes its offer with its session */
	assert_string_equal(status_of(x, &c, &now), "offered");
	new_key(key);
	complete(x, now.session_id, key, &r);
	assert_int_equal(r.reply.status, 201);
	purchase_result_clear(&r);
	assert_string_equal(status_of(x, &c, &now), "converted");
	assert_int_equal(waitlist_leave(&x->lg, &admin, c.id, &now, &e), -1);
	assert_string_equal(e.code, "ENTRY_NOT_LIVE");
	/* a waiting entry leaving lets the one behind it, which fits, be offered */
	assert_int_equal(violations(x), 0);
	fixture_free(x);
}

/* --- sign-in ------------------------------------------------------------------------------ */

/* The login links mailed to customer_id so far, their tokens unsealed from their rows, newest
 * first; returns how many (at most max). */
static int login_tokens(struct fixture *x, const char *customer_id, char tokens[][TOKEN_LEN + 1], int max)
{
	struct seq_page pg = {0, "", 100};
	struct mail *m = NULL;
	struct err e = {0};
	size_t n = 0;
	int k = 0;

	assert_int_equal(x->s->ops->mail_list(x->s, NULL, &pg, &m, &n, &e), 0);
	for (size_t i = 0; i < n; i++) {
		if (strcmp(m[i].kind, "login") || strcmp(m[i].customer_id, customer_id))
			continue;
		assert_non_null(m[i].secret);
		assert_int_equal(strncmp(m[i].secret, "nx1.", 4), 0);   /* sealed, never in the clear */
		assert_null(strstr(m[i].data, "lnk_"));
		char *t = ledger_unseal(&x->lg, m[i].secret);
		assert_non_null(t);
		if (k < max)
			snprintf(tokens[k++], TOKEN_LEN + 1, "%s", t);
		free(t);
	}
	for (size_t i = 0; i < n; i++)
		mail_clear(&m[i]);
	free(m);
	return k;
}

/* A customer's id, made by a purchase of the fixture's plan by ada@example.com. */
static void customer_of(struct fixture *x, char id[ID_LEN + 1])
{
	struct subscription sub = {0};
	struct err e = {0};
	char sub_id[ID_LEN + 1];

	bought(x, sub_id);
	assert_int_equal(ledger_sub_get(&x->lg, sub_id, &sub, &e), 0);
	snprintf(id, ID_LEN + 1, "%s", sub.customer_id);
	subscription_clear(&sub);
}

static void test_signin_links_and_sessions(void **state)
{
	struct fixture *x = fixture_new(3, 600);
	struct actor a = {"test", "customer", NULL, NULL};
	struct customer_session cs;
	struct err e = {0};
	char customer[ID_LEN + 1], tokens[4][TOKEN_LEN + 1], session[TOKEN_LEN + 1], who[ID_LEN + 1], sid[ID_LEN + 1];
	bool ok;

	(void)state;
	customer_of(x, customer);
	/* any case of the address; a stranger's costs the same and mails nothing */
	assert_int_equal(signin_request(&x->lg, &a, "ADA@Example.com", &e), 0);
	assert_int_equal(signin_request(&x->lg, &a, "nobody@example.com", &e), 0);
	assert_int_equal(login_tokens(x, customer, tokens, 4), 1);
	/* exchanged once */
	assert_int_equal(signin_exchange(&x->lg, tokens[0], session, &cs, &ok, &e), 0);
	assert_true(ok);
	assert_string_equal(cs.customer_id, customer);
	assert_true(signin_session(&x->lg, session, who, sid));
	assert_string_equal(who, customer);
	assert_int_equal(signin_exchange(&x->lg, tokens[0], session + 0, &cs, &ok, &e), 0);
	assert_false(ok);
	/* a forged token of the same link, and another kind of token */
	char forged[TOKEN_LEN + 1];
	snprintf(forged, sizeof(forged), "%s", tokens[0]);
	forged[TOKEN_LEN - 1] = forged[TOKEN_LEN - 1] == 'A' ? 'B' : 'A';
	assert_int_equal(signin_exchange(&x->lg, forged, session, &cs, &ok, &e), 0);
	assert_false(ok);
	/* three links per address in the window: the rest are counted and mail nothing */
	for (int i = 0; i < 4; i++)
		assert_int_equal(signin_request(&x->lg, &a, "ada@example.com", &e), 0);
	assert_int_equal(login_tokens(x, customer, tokens, 4), 3);
	/* a session ended is gone */
	assert_int_equal(signin_exchange(&x->lg, tokens[0], session, &cs, &ok, &e), 0);
	assert_true(ok);
	assert_true(signin_session(&x->lg, session, who, sid));
	assert_int_equal(signin_end(&x->lg, sid, &e), 0);
	assert_false(signin_session(&x->lg, session, who, sid));
	assert_int_equal(violations(x), 0);
	fixture_free(x);
}

/* A link past its deadline, and a link made for no customer, are never exchanged. */
static void test_signin_link_expired_or_nobodys(void **state)
{
	struct fixture *x = fixture_new(1, 600);
	struct customer_session cs = {0};
	struct err e = {0};
	char customer[ID_LEN + 1], link[ID_LEN + 1], token[TOKEN_LEN + 1], hash[65];
	enum login_result res;
	bool ok;

	(void)state;
	customer_of(x, customer);
	const struct event_spec ev = {"customer.login_requested", "customer", NULL, EV_NO_COUNTS, NULL,
				      &(struct mail_spec){"login", NULL, "{}", "nx1.x"}};
	struct actor a = {"test", "customer", NULL, NULL};
	int64_t now = now_ms();
	for (int who = 0; who < 2; who++) {
		id_new(link);
		link_token_new(link, token);
		sha256_hex(token, strlen(token), hash);
		const struct login_req r = {who ? "stranger@example.com" : "ada@example.com", link, hash, now, now + 1000,
					    now - 60000, 3};
		assert_int_equal(x->s->ops->login_link(x->s, &r, &ev, &a, &res, &e), 0);
		assert_int_equal(res, who ? LOGIN_UNKNOWN : LOGIN_SENT);
		id_new(cs.id);
		snprintf(cs.token_hash, sizeof(cs.token_hash), "%064d", who);
		cs.created_at = who ? now : now + 1000;   /* the customer's at its deadline: over */
		cs.expires_at = cs.created_at + 1000;
		assert_int_equal(x->s->ops->login_exchange(x->s, link, hash, &cs, &ok, &e), 0);
		assert_false(ok);
	}
	fixture_free(x);
}

/* Processes race: for one link, exactly one session; for one address, exactly three links. */
static void test_signin_races_across_processes(void **state)
{
	enum { PROCS = 6 };
	struct fixture *x = fixture_new(1, 600);
	struct actor a = {"test", "customer", NULL, NULL};
	struct err e = {0};
	char customer[ID_LEN + 1], tokens[8][TOKEN_LEN + 1];
	int fds[2], won = 0, status;

	(void)state;
	customer_of(x, customer);
	assert_int_equal(signin_request(&x->lg, &a, "ada@example.com", &e), 0);
	assert_int_equal(login_tokens(x, customer, tokens, 8), 1);
	for (int round = 0; round < 2; round++) {
		assert_int_equal(pipe(fds), 0);
		for (int i = 0; i < PROCS; i++) {
			if (fork() == 0) {
				struct err ce = {0};
				struct store *s = store_open(store_url, &ce);
				struct ledger lg = ledger_of(s, 600, 0);
				struct customer_session cs;
				char session[TOKEN_LEN + 1], n = 0;
				bool ok = false;
				if (round == 0)
					n = signin_exchange(&lg, tokens[0], session, &cs, &ok, &ce) == 0 && ok;
				else
					n = signin_request(&lg, &a, "ada@example.com", &ce) == 0;
				if (write(fds[1], &n, 1) != 1)
					_exit(1);
				store_close(s);
				_exit(0);
			}
		}
		close(fds[1]);
		won = 0;
		for (int i = 0; i < PROCS; i++) {
			char n;
			assert_int_equal(read(fds[0], &n, 1), 1);
			won += n;
		}
		close(fds[0]);
		while (wait(&status) > 0)
			assert_int_equal(status, 0);
		if (round == 0)
			assert_int_equal(won, 1);             /* one session from one link */
		else
			assert_int_equal(won, PROCS);         /* every request answered */
	}
	/* the first link and two of the racers' */
	assert_int_equal(login_tokens(x, customer, tokens, 8), 3);
	assert_int_equal(violations(x), 0);
	fixture_free(x);
}

/* A period's reminder, asked by racing processes: one marks it, with one event and one mail; the
 * next period is another. */
static void test_reminder_once_a_period_across_processes(void **state)
{
	enum { PROCS = 6 };
	struct fixture *x = fixture_new(1, 600);
	struct subscription sub = {0};
	struct err e = {0};
	char id[ID_LEN + 1];
	int fds[2], won = 0, status;

	(void)state;
	bought(x, id);
	assert_int_equal(ledger_sub_get(&x->lg, id, &sub, &e), 0);
	assert_int_equal(pipe(fds), 0);
	for (int i = 0; i < PROCS; i++) {
		if (fork() == 0) {
			struct err ce = {0};
			struct store *s = store_open(store_url, &ce);
			struct actor a = {"race", "system", "renewer", NULL};
			const struct event_spec ev = {"subscription.period_ending", "subscription", id, EV_NO_COUNTS, NULL,
						      &(struct mail_spec){"reminder", sub.customer_id, "{}", NULL}};
			bool marked = false;
			char n = s->ops->remind(s, id, sub.end_at, &ev, 1, &a, &marked, &ce) == 0 && marked;
			if (write(fds[1], &n, 1) != 1)
				_exit(1);
			store_close(s);
			_exit(0);
		}
	}
	close(fds[1]);
	for (int i = 0; i < PROCS; i++) {
		char n;
		assert_int_equal(read(fds[0], &n, 1), 1);
		won += n;
	}
	close(fds[0]);
	while (wait(&status) > 0)
		assert_int_equal(status, 0);
	assert_int_equal(won, 1);
	/* no longer to remind; and a period that is not its own is never marked */
	struct subscription *due = NULL;
	size_t n = 0;
	bool marked = true;
	struct actor a = {"test", "system", "renewer", NULL};
	assert_int_equal(x->s->ops->subs_to_remind(x->s, sub.end_at, 10, &due, &n, &e), 0);
	for (size_t i = 0; i < n; i++) {
		assert_string_not_equal(due[i].id, id);
		subscription_clear(&due[i]);
	}
	free(due);
	assert_int_equal(x->s->ops->remind(x->s, id, sub.end_at + 1, NULL, 0, &a, &marked, &e), 0);
	assert_false(marked);
	subscription_clear(&sub);
	assert_int_equal(violations(x), 0);
	fixture_free(x);
}

static int run_on(const char *url, const char *name)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_purchase_and_replay),
		cmocka_unit_test(test_refusals_keep_no_key),
		cmocka_unit_test(test_key_reused_and_in_progress),
		cmocka_unit_test(test_decline_gives_the_seat_back),
		cmocka_unit_test(test_life_moves_from_what_was_read),
		cmocka_unit_test(test_crash_after_charge_retry_settles_once),
		cmocka_unit_test(test_crash_after_charge_reaper_refunds),
		cmocka_unit_test(test_cancel_and_capacity),
		cmocka_unit_test(test_quantities_and_limits),
		cmocka_unit_test(test_session_completion_crash_retry_settles_once),
		cmocka_unit_test(test_session_completion_crash_reaper_refunds),
		cmocka_unit_test(test_session_dead_attempt_taken_over),
		cmocka_unit_test(test_plan_change_crash_retry_settles_once),
		cmocka_unit_test(test_plan_change_loses_to_a_cancel),
		cmocka_unit_test(test_plan_change_credit_made_by_the_reaper),
		cmocka_unit_test(test_racing_processes_sell_exactly_capacity),
		cmocka_unit_test(test_sessions_race_their_deadline),
		cmocka_unit_test(test_feed_in_commit_order),
		cmocka_unit_test(test_waitlist_offers_in_order),
		cmocka_unit_test(test_signin_links_and_sessions),
		cmocka_unit_test(test_signin_link_expired_or_nobodys),
		cmocka_unit_test(test_signin_races_across_processes),
		cmocka_unit_test(test_reminder_once_a_period_across_processes),
	};

	snprintf(store_url, sizeof(store_url), "%s", url);
	return _cmocka_run_group_tests(name, tests, sizeof(tests) / sizeof(tests[0]), NULL, NULL);
}

int main(void)
{
	char dir[] = "/tmp/numatix-contract-XXXXXX", url[256];
	const char *mongo = getenv("MONGO_URI"), *pg = getenv("NUMATIX_TEST_PG");
	int failed;

	if (!mkdtemp(dir))
		return 1;
	snprintf(url, sizeof(url), "sqlite://%s/contract.db", dir);
	snprintf(sim_path, sizeof(sim_path), "%s/contract.processor.db", dir);
	failed = run_on(url, "contract_sqlite");
	/* tests/run.sh starts a throwaway PostgreSQL and names it here */
	if (pg && *pg)
		failed += run_on(pg, "contract_postgresql");
	else
		printf("contract_postgresql: skipped, NUMATIX_TEST_PG names no server\n");
	if (mongo && *mongo) {
		/* A database of its own on that server: every test resets it. */
		const char *host = strstr(mongo, "://"), *q;
		host = host ? host + 3 : mongo;
		q = host + strcspn(host, "/?");
		snprintf(url, sizeof(url), "%.*s/numatix_contract%s", (int)(q - mongo), mongo, strchr(q, '?') ? strchr(q, '?') : "");
		failed += run_on(url, "contract_mongodb");
	}
	else
		printf("contract_mongodb: skipped, MONGO_URI names no live replica set\n");
	return failed ? 1 : 0;
}
