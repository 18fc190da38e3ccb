/* test_ledger.c - the service layer (purchase, idempotency, reaper, check, lists) against the
 * in-memory test double of the store: no database, no nginx, every crash point and every
 * clock-driven case set up by hand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "api.h"
#include "app.h"
#include "config.h"
#include "check.h"
#include "idem.h"
#include "ledger.h"
#include "processor_mem.h"
#include "purchase.h"
#include "reaper.h"
#include "store_mem.h"
#include "util.h"

struct world {
	struct store *s;
	struct processor *proc;
	struct ledger lg;
	char plan_id[ID_LEN + 1];
};

static const struct actor buyer = {"trace", "customer", NULL, NULL};

static int setup(void **state)
{
	struct world *w = xcalloc(1, sizeof(*w));
	struct actor admin = {"trace", "admin", NULL, NULL};
	struct plan p = {0};
	struct err e = {0};

	w->s = mem_store_new();
	{
		struct config cfg = {.admin_token = (char *)"ledger-test-admin-token", .hold_ttl_s = 600,
				     .key_retention_h = 24, .offer_ttl_s = 600};
		app_ledger_init(&w->lg, w->s, &cfg);
	}
	w->proc = w->lg.proc = procmem_new();
	id_new(p.id);
	p.name = xstrdup("Workshop");
	p.description = xstrdup("");
	p.price_cents = 4900;
	p.interval = PERIOD_DAY;
	p.interval_count = 30;
	strcpy(p.timezone, "UTC");
	p.total_capacity = p.subscriptions_left = 2;
	p.max_per_order = PLAN_MAX_PER_ORDER_DEFAULT;
	strcpy(p.status, "active");
	p.features = json_object_new_array();
	p.created_at = p.updated_at = now_ms();
	assert_int_equal(ledger_plan_create(&w->lg, &admin, &p, &e), 0);
	snprintf(w->plan_id, sizeof(w->plan_id), "%s", p.id);
	plan_clear(&p);
	*state = w;
	return 0;
}

static int teardown(void **state)
{
	struct world *w = *state;

	store_close(w->s);
	procmem_free(w->proc);
	free(w);
	return 0;
}

static void buy(struct world *w, const char *key, const char *method, const char *email, struct purchase_result *r)
{
	struct purchase_req p = {key, "fp", w->plan_id, 1, method, NULL, email, "Ada"};

	purchase_run(&w->lg, &buyer, &p, r);
}

static void quiet(void *arg, const char *fmt, ...)
{
	(void)arg;
	(void)fmt;
}

static int violations(struct world *w)
{
	struct err e = {0};
	int v = -1;

	assert_int_equal(check_run(&w->lg, quiet, NULL, &v, &e), 0);
	return v;
}

static struct plan plan_now(struct world *w)
{
	struct plan p = {0};
	struct err e = {0};

	assert_int_equal(ledger_plan_get(&w->lg, w->plan_id, &p, &e), 0);
	return p;
}

static void sub_of(const struct purchase_result *r, char id[ID_LEN + 1])
{
	struct json_object *o = json_tokener_parse(r->reply.body), *v;

	assert_non_null(o);
	assert_true(json_object_object_get_ex(o, "id", &v));
	snprintf(id, ID_LEN + 1, "%s", json_object_get_string(v));
	json_object_put(o);
}

static int count_events(struct world *w, const char *action)
{
	struct audit_filter f = {w->plan_id, NULL, action};
	struct page_req pg = {100, NULL};
	struct audit_event *ev;
	char next[CURSOR_LEN];
	struct err e = {0};
	size_t n;

	assert_int_equal(ledger_audit_list(&w->lg, &f, &pg, &ev, &n, next, &e), 0);
	for (size_t i = 0; i < n; i++)
		audit_event_clear(&ev[i]);
	free(ev);
	return (int)n;
}

static void test_purchase_writes_its_events(void **state)
{
	struct world *w = *state;
	struct purchase_result r;
	struct plan p;

	buy(w, "6f1c2a34-0000-4000-8000-000000000001", "pm_card_visa", "ada@example.com", &r);
	assert_int_equal(r.end, PURCHASE_ANSWERED);
	assert_int_equal(r.reply.status, 201);
	assert_non_null(strstr(r.reply.body, "\"accessToken\":\"sat_"));
	purchase_result_clear(&r);
	p = plan_now(w);
	assert_int_equal(p.subscriptions_left, 1);
	assert_int_equal(p.subscriptions_held, 0);
	plan_clear(&p);
	assert_int_equal(count_events(w, "seat.held"), 1);
	assert_int_equal(count_events(w, "payment.authorized"), 1);
	assert_int_equal(count_events(w, "subscription.activated"), 1);
	assert_int_equal(violations(w), 0);
}

static void test_refusal_codes(void **state)
{
	struct world *w = *state;
	struct purchase_result r;
	struct key_record k = {0};
	struct err e = {0};
	bool found;

	buy(w, "6f1c2a34-0000-4000-8000-000000000002", "pm_card_visa", "a@example.com", &r);
	purchase_result_clear(&r);
	buy(w, "6f1c2a34-0000-4000-8000-000000000003", "pm_card_visa", "b@example.com", &r);
	purchase_result_clear(&r);
	buy(w, "6f1c2a34-0000-4000-8000-000000000004", "pm_card_visa", "c@example.com", &r);
	assert_int_equal(r.end, PURCHASE_REFUSED);
	assert_int_equal(r.err.kind, ERR_CONFLICT);
	assert_string_equal(r.err.code, "PLAN_SOLD_OUT");
	purchase_result_clear(&r);
	/* a refused purchase keeps no key: it stays usable */
	assert_int_equal(w->s->ops->key_get(w->s, "6f1c2a34-0000-4000-8000-000000000004", &k, &found, &e), 0);
	assert_false(found);
	struct purchase_req nobody = {"6f1c2a34-0000-4000-8000-000000000005", "fp", w->plan_id, 1, "pm_card_visa",
				      "0123456789abcdef01234567", NULL, NULL};
	purchase_run(&w->lg, &buyer, &nobody, &r);
	assert_string_equal(r.err.code, "CUSTOMER_NOT_FOUND");
	purchase_result_clear(&r);
	snprintf(w->plan_id, sizeof(w->plan_id), "0123456789abcdef01234567");
	buy(w, "6f1c2a34-0000-4000-8000-000000000006", "pm_card_visa", "d@example.com", &r);
	assert_int_equal(r.err.kind, ERR_NOT_FOUND);
	assert_string_equal(r.err.code, "PLAN_NOT_FOUND");
	purchase_result_clear(&r);
}

static void test_key_outcomes(void **state)
{
	struct world *w = *state;
	const char *key = "6f1c2a34-0000-4000-8000-000000000007";
	struct purchase_result r, replay;

	procmem_fail_next(w->proc, "authorize", false);
	buy(w, key, "pm_card_visa", "a@example.com", &r);
	assert_int_equal(r.end, PURCHASE_REFUSED);
	purchase_result_clear(&r);
	/* its lease runs: the same request is in progress, another is refused */
	buy(w, key, "pm_card_visa", "a@example.com", &r);
	assert_int_equal(r.end, PURCHASE_IN_PROGRESS);
	assert_true(r.retry_after_s >= 1);
	purchase_result_clear(&r);
	struct purchase_req other = {key, "other fp", w->plan_id, 1, "pm_card_visa", NULL, "a@example.com", "Ada"};
	purchase_run(&w->lg, &buyer, &other, &r);
	assert_int_equal(r.end, PURCHASE_KEY_REUSED);
	purchase_result_clear(&r);
	/* its lease ended: the retry resumes at the charge and settles */
	mem_key_lease(w->s, key, 0);
	buy(w, key, "pm_card_visa", "a@example.com", &r);
	assert_int_equal(r.reply.status, 201);
	assert_false(r.replayed);
	buy(w, key, "pm_card_visa", "a@example.com", &replay);
	assert_true(replay.replayed);
	assert_string_equal(replay.reply.body, r.reply.body);
	purchase_result_clear(&r);
	purchase_result_clear(&replay);
	assert_int_equal(count_events(w, "seat.held"), 1);
	assert_int_equal(violations(w), 0);
}

static void test_decline_gives_the_seat_back(void **state)
{
	struct world *w = *state;
	struct purchase_result r;
	struct plan p;

	buy(w, "6f1c2a34-0000-4000-8000-000000000008", "pm_card_chargeDeclinedExpiredCard", "a@example.com", &r);
	assert_int_equal(r.reply.status, 402);
	assert_non_null(strstr(r.reply.body, "expired_card"));
	purchase_result_clear(&r);
	p = plan_now(w);
	assert_int_equal(p.subscriptions_left, 2);
	plan_clear(&p);
	assert_int_equal(count_events(w, "seat.released"), 1);
	assert_int_equal(count_events(w, "payment.declined"), 1);
	assert_int_equal(violations(w), 0);
}

/* Crash between the charge and the settle, then a retry: one charge, one seat. */
static void test_crash_after_charge_settles_once(void **state)
{
	struct world *w = *state;
	const char *key = "6f1c2a34-0000-4000-8000-000000000009";
	struct purchase_result r;

	mem_fail_next(w->s, "transition");
	buy(w, key, "pm_card_visa", "a@example.com", &r);
	assert_int_equal(r.end, PURCHASE_REFUSED);
	assert_int_equal(r.err.kind, ERR_UNAVAILABLE);
	purchase_result_clear(&r);
	assert_int_equal(procmem_authorized(w->proc), 1);
	mem_key_lease(w->s, key, 0);
	buy(w, key, "pm_card_visa", "a@example.com", &r);
	assert_int_equal(r.reply.status, 201);
	purchase_result_clear(&r);
	assert_int_equal(procmem_authorized(w->proc), 1);
	assert_int_equal(procmem_captured(w->proc), 1);
	assert_int_equal(count_events(w, "payment.authorized"), 1);
	assert_int_equal(violations(w), 0);
}

/* The hold ran out while the request was gone: the retry asks the processor for nothing, the
 * seat goes back, and the key answers HOLD_EXPIRED from then on. */
static void test_hold_expired_before_the_charge_settled(void **state)
{
	struct world *w = *state;
	const char *key = "6f1c2a34-0000-4000-8000-00000000000a";
	struct purchase_result r;
	struct key_record k = {0};
	struct err e = {0};
	struct plan p;
	bool found;

	procmem_fail_next(w->proc, "authorize", false);
	buy(w, key, "pm_card_visa", "a@example.com", &r);
	purchase_result_clear(&r);
	assert_int_equal(w->s->ops->key_get(w->s, key, &k, &found, &e), 0);
	mem_sub_deadline(w->s, k.subscription_id, now_ms() - 1);
	key_record_clear(&k);
	mem_key_lease(w->s, key, 0);
	buy(w, key, "pm_card_visa", "a@example.com", &r);
	assert_int_equal(r.reply.status, 409);
	assert_non_null(strstr(r.reply.body, "HOLD_EXPIRED"));
	purchase_result_clear(&r);
	p = plan_now(w);
	assert_int_equal(p.subscriptions_left, 2);
	assert_int_equal(p.subscriptions_held, 0);
	plan_clear(&p);
	assert_int_equal(procmem_authorized(w->proc), 0);
	assert_int_equal(procmem_captured(w->proc), 0);
	assert_int_equal(violations(w), 0);
}

/* Crash after the authorization and no retry: the reaper expires the hold past its deadline
 * and the processor voids it; a late retry neither charges again nor takes a seat. */
static void test_reaper_settles_an_abandoned_purchase(void **state)
{
	struct world *w = *state;
	const char *key = "6f1c2a34-0000-4000-8000-00000000000b";
	struct purchase_result r;
	struct key_record k = {0};
	struct reap_stats st;
	struct err e = {0};
	bool found;

	mem_fail_next(w->s, "transition");
	buy(w, key, "pm_card_visa", "a@example.com", &r);
	purchase_result_clear(&r);
	assert_int_equal(w->s->ops->key_get(w->s, key, &k, &found, &e), 0);
	mem_sub_deadline(w->s, k.subscription_id, now_ms() - 1);
	key_record_clear(&k);
	assert_int_equal(reaper_run(&w->lg, "test", &st, &e), 0);
	assert_true(st.ran);
	assert_int_equal(st.expired, 1);
	assert_int_equal(count_events(w, "subscription.expired"), 1);
	assert_int_equal(count_events(w, "payment.voided"), 1);
	mem_key_lease(w->s, key, 0);
	buy(w, key, "pm_card_visa", "a@example.com", &r);
	assert_int_equal(r.reply.status, 409);
	purchase_result_clear(&r);
	assert_int_equal(procmem_authorized(w->proc), 1);
	assert_int_equal(procmem_voided(w->proc), 1);
	assert_int_equal(procmem_captured(w->proc), 0);
	assert_int_equal(violations(w), 0);
}

static void test_check_reports_a_broken_count(void **state)
{
	struct world *w = *state;
	struct purchase_result r;

	buy(w, "6f1c2a34-0000-4000-8000-00000000000c", "pm_card_visa", "a@example.com", &r);
	purchase_result_clear(&r);
	assert_int_equal(violations(w), 0);
	mem_plan_counts(w->s, w->plan_id, 2, 0);  /* a seat sold, yet counted as left */
	assert_true(violations(w) >= 2);
}

static void test_pages_and_cursors(void **state)
{
	struct world *w = *state;
	struct actor admin = {"trace", "admin", NULL, NULL};
	struct plan_patch pt = {.fields = PLAN_F_CAPACITY, .total_capacity = 10};
	struct subscription *subs, first;
	struct purchase_result r;
	struct page_req pg = {2, NULL};
	char next[CURSOR_LEN], cursor[CURSOR_LEN], keys[3][UUID_LEN + 1], sub_id[ID_LEN + 1];
	struct err e = {0};
	struct plan p;
	size_t n;

	assert_int_equal(ledger_plan_update(&w->lg, &admin, w->plan_id, &pt, &p, &e), 0);
	assert_int_equal(p.subscriptions_left, 10);
	plan_clear(&p);
	for (int i = 0; i < 3; i++) {
		uuid_new(keys[i]);
		buy(w, keys[i], "pm_card_visa", "same@example.com", &r);
		assert_int_equal(r.reply.status, 201);
		sub_of(&r, sub_id);
		purchase_result_clear(&r);
	}
	assert_int_equal(ledger_sub_get(&w->lg, sub_id, &first, &e), 0);
	assert_int_equal(ledger_sub_list(&w->lg, first.customer_id, NULL, &pg, &subs, &n, next, &e), 0);
	assert_int_equal(n, 2);
	assert_string_equal(subs[0].id, sub_id);  /* newest first */
	assert_true(*next);
	for (size_t i = 0; i < n; i++)
		subscription_clear(&subs[i]);
	free(subs);
	snprintf(cursor, sizeof(cursor), "%s", next);
	pg.cursor = cursor;
	assert_int_equal(ledger_sub_list(&w->lg, first.customer_id, NULL, &pg, &subs, &n, next, &e), 0);
	assert_int_equal(n, 1);
	assert_string_equal(next, "");
	subscription_clear(&subs[0]);
	free(subs);
	snprintf(cursor, sizeof(cursor), "12x");
	assert_int_equal(ledger_sub_list(&w->lg, first.customer_id, NULL, &pg, &subs, &n, next, &e), -1);
	assert_string_equal(e.code, "VALIDATION_ERROR");
	subscription_clear(&first);
	pt.total_capacity = 1;
	assert_int_equal(ledger_plan_update(&w->lg, &admin, w->plan_id, &pt, &p, &e), -1);
	assert_string_equal(e.code, "CAPACITY_BELOW_SOLD");
}

static void test_idempotency_of_other_routes(void **state)
{
	struct world *w = *state;
	const char *key = "6f1c2a34-0000-4000-8000-00000000000d";
	struct reply created = {201, "{\"id\":\"x\"}"};
	struct idem_claim c;
	struct err e = {0};

	assert_int_equal(idem_claim(&w->lg, key, "fp1", &c, &e), 0);
	assert_int_equal(c.outcome, IDEM_RUN);
	idem_claim_clear(&c);
	assert_int_equal(idem_claim(&w->lg, key, "fp1", &c, &e), 0);
	assert_int_equal(c.outcome, IDEM_IN_PROGRESS);
	idem_claim_clear(&c);
	idem_settle(&w->lg, key, &created, "trace");
	assert_int_equal(idem_claim(&w->lg, key, "fp1", &c, &e), 0);
	assert_int_equal(c.outcome, IDEM_REPLAY);
	assert_string_equal(c.reply.body, created.body);
	idem_claim_clear(&c);
	assert_int_equal(idem_claim(&w->lg, key, "fp2", &c, &e), 0);
	assert_int_equal(c.outcome, IDEM_REUSED);
	idem_claim_clear(&c);
	/* a refused request forgets its key */
	struct reply refused = {409, "{}"};
	const char *key2 = "6f1c2a34-0000-4000-8000-00000000000e";
	assert_int_equal(idem_claim(&w->lg, key2, "fp", &c, &e), 0);
	idem_claim_clear(&c);
	idem_settle(&w->lg, key2, &refused, "trace");
	assert_int_equal(idem_claim(&w->lg, key2, "another", &c, &e), 0);
	assert_int_equal(c.outcome, IDEM_RUN);
	idem_claim_clear(&c);
}

/* The prorated difference of a plan change: the part of the period left, to the cent, half away
 * from zero. */
static void test_plan_change_prorate(void **state)
{
	const int64_t day = 24LL * 3600 * 1000, start = 1000 * day, end = start + 30 * day;

	(void)state;
	assert_int_equal(plan_change_prorate(9000, 3000, start, end, start), 6000);
	assert_int_equal(plan_change_prorate(9000, 3000, start, end, start + 15 * day), 3000);
	assert_int_equal(plan_change_prorate(3000, 9000, start, end, start + 10 * day), -4000);
	assert_int_equal(plan_change_prorate(1000, 0, start, end, start + 29 * day), 33);      /* 33.33 */
	assert_int_equal(plan_change_prorate(1001, 0, start, end, start + 15 * day), 501);     /* 500.5 up */
	assert_int_equal(plan_change_prorate(0, 1001, start, end, start + 15 * day), -501);    /* and down */
	/* each share rounded on its own: 2/3 of 2 cents and 2/3 of 1 cent both round to 1, so the
	 * difference is 0 (the exact difference, 2/3, would round to 1); with 1/3 left, 0 and 1 */
	assert_int_equal(plan_change_prorate(2, 1, start, start + 3, start + 1), 0);
	assert_int_equal(plan_change_prorate(1, 2, start, start + 3, start + 2), -1);
	/* issue 22.1: a chain's second change is prorated over the period the chain began with */
	assert_int_equal(plan_change_prorate(1000, 100000, start, end, start + 15 * day), 500 - 50000);
	assert_int_equal(plan_change_prorate(9000, 3000, start, end, end), 0);
	assert_int_equal(plan_change_prorate(9000, 3000, start, end, end + day), 0);
	assert_int_equal(plan_change_prorate(9000, 3000, start, end, start - day), 6000);
	assert_int_equal(plan_change_prorate(INT64_C(100000000000) * 1000, 0, start, end, start),
			 INT64_C(100000000000) * 1000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_purchase_writes_its_events, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refusal_codes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_key_outcomes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_decline_gives_the_seat_back, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crash_after_charge_settles_once, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hold_expired_before_the_charge_settled, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reaper_settles_an_abandoned_purchase, setup, teardown),
		cmocka_unit_test_setup_teardown(test_check_reports_a_broken_count, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pages_and_cursors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_idempotency_of_other_routes, setup, teardown),
		cmocka_unit_test(test_plan_change_prorate),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
