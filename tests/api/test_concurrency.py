"""test_concurrency.py - real parallel clients through nginx against 8 workers; exact counts.
The simulated processor takes 20 ms a charge, so purchases overlap as they would live."""

import collections
import random
import threading
import unittest
import uuid

from stack import Stack, parallel, pool

S = None


def setUpModule():
    global S
    S = Stack(NUMATIX_WORKERS=8, NUMATIX_PAYMENT_LATENCY_MS=20).start()


def tearDownModule():
    S.cleanup()


def audit_count(plan_id, action):
    n, cursor = 0, None
    while True:
        q = "/api/audit-logs?limit=200&planId=%s&action=%s" % (plan_id, action)
        r = S.admin("GET", q + ("&cursor=" + cursor if cursor else "")).json
        n += len(r["logs"])
        cursor = r["nextCursor"]
        if not cursor:
            return n


class Concurrency(unittest.TestCase):
    def assertChecks(self):
        ok, out = S.check()
        self.assertTrue(ok, out)

    def test_200_buyers_race_for_10_seats(self):
        p = S.create_plan(capacity=10)
        results = parallel(200, lambda i: S.purchase(p["id"]))
        statuses = collections.Counter((r.status, r.json["code"] if r.status != 201 else "") for r in results)
        self.assertEqual(statuses, {(201, ""): 10, (409, "PLAN_SOLD_OUT"): 190}, statuses)
        q = S.plan(p["id"])
        self.assertEqual((q["subscriptions_left"], q["subscriptions_held"], q["isSoldOut"]), (0, 0, True))
        self.assertEqual(len({r.json["id"] for r in results if r.status == 201}), 10)
        self.assertEqual(audit_count(p["id"], "payment.authorized"), 10)
        self.assertChecks()

    def test_200_buyers_random_quantities_for_50_seats(self):
        p = S.create_plan(capacity=50)
        rng = random.Random(11)
        wants = [rng.randint(1, 4) for _ in range(200)]
        results = parallel(200, lambda i: S.purchase(p["id"], quantity=wants[i]))
        sold = 0
        for want, r in zip(wants, results):
            self.assertIn(r.status, (201, 409), r)
            if r.status == 201:
                # all or nothing: an order gets every seat it asked for
                self.assertEqual((r.json["quantity"], r.json["amount_cents"]), (want, 1000 * want))
                sold += want
            else:
                self.assertEqual(r.json["code"], "PLAN_SOLD_OUT")
                self.assertLess(r.json["details"]["available"], want)
        self.assertEqual(sold, 50)
        q = S.plan(p["id"])
        self.assertEqual((q["subscriptions_left"], q["subscriptions_held"], q["isSoldOut"]), (0, 0, True))
        self.assertChecks()

    def test_one_customer_50_purchases_against_limit_of_3(self):
        p = S.create_plan(capacity=40, max_per_customer=3)
        email = "limited-%s@example.com" % uuid.uuid4().hex[:8]
        results = parallel(50, lambda i: S.purchase(p["id"], email=email))
        c = collections.Counter((r.status, r.json.get("code", "")) for r in results)
        self.assertEqual(c, {(201, ""): 3, (409, "CUSTOMER_LIMIT_REACHED"): 47}, c)
        refused = [r for r in results if r.status == 409][0].json["details"]
        self.assertEqual(refused["limit"], 3)
        self.assertEqual(S.plan(p["id"])["subscriptions_left"], 37)
        # another customer is not held back by the first one's limit
        self.assertEqual(S.purchase(p["id"], quantity=3).status, 201)
        self.assertChecks()

    def test_sessions_race_their_own_expiry(self):
        # every session is completed and expired at once, while the reaper runs: each ends
        # completed or expired, never both, and no seat or charge is lost
        p = S.create_plan(capacity=40)
        sessions = []
        for i in range(40):
            r = S.request("POST", "/api/checkout-sessions",
                          {"planId": p["id"], "quantity": 1,
                           "customer": {"email": "race-%d-%s@example.com" % (i, uuid.uuid4().hex[:6]), "name": "R"}},
                          {"Idempotency-Key": str(uuid.uuid4())})
            self.assertEqual(r.status, 201, r)
            sessions.append(r.json)
        self.assertTrue(S.plan(p["id"])["isSoldOut"])

        def act(job):
            sess, action = job
            h = {"Authorization": "Bearer " + sess["clientSecret"]}
            path = "/api/checkout-sessions/%s/%s" % (sess["id"], action)
            if action == "complete":
                h["Idempotency-Key"] = str(uuid.uuid4())
                return S.request("POST", path, {"paymentMethodId": "pm_card_visa"}, h)
            return S.request("POST", path, None, h)

        jobs = [(s, a) for s in sessions for a in ("complete", "expire")]
        random.Random(5).shuffle(jobs)
        results = pool(32, jobs, act)
        by_session = collections.defaultdict(dict)
        for (sess, action), r in zip(jobs, results):
            self.assertFalse(isinstance(r, Exception), r)
            by_session[sess["id"]][action] = r
        completed = 0
        for sid, rs in by_session.items():
            c, e = rs["complete"], rs["expire"]
            if c.status == 201:
                completed += 1
                self.assertEqual((e.status, e.json["code"]), (409, "SESSION_COMPLETED"), e)
            else:
                self.assertEqual((c.status, c.json["code"]), (409, "SESSION_EXPIRED"), c)
                self.assertEqual((e.status, e.json["status"]), (200, "expired"), e)
            final = S.admin("GET", "/api/checkout-sessions/" + sid).json["status"]
            self.assertEqual(final, "completed" if c.status == 201 else "expired")
        q = S.plan(p["id"])
        self.assertEqual((q["subscriptions_left"], q["subscriptions_held"]), (40 - completed, 0))
        self.assertChecks()

    def test_plan_changes_race_buyers_for_the_last_seats(self):
        # 10 subscribers of plan A change to plan B while 30 buyers race them for B's 5 seats:
        # B sells exactly 5, every change either moves (A gets the seat back) or leaves A as it was
        a = S.create_plan(capacity=10, price=2000)
        b = S.create_plan(capacity=5, price=1000)
        subs = [S.purchase(a["id"]).json for _ in range(10)]
        jobs = [("change", sub) for sub in subs] + [("buy", i) for i in range(30)]
        random.Random(3).shuffle(jobs)

        def run(job):
            kind, arg = job
            if kind == "buy":
                return S.purchase(b["id"])
            return S.request("POST", "/api/subscriptions/%s/change-plan" % arg["id"], {"planId": b["id"]},
                             {"Authorization": "Bearer " + arg["accessToken"], "Idempotency-Key": str(uuid.uuid4())})

        results = pool(40, jobs, run)
        moved = bought = 0
        for (kind, _), r in zip(jobs, results):
            self.assertFalse(isinstance(r, Exception), r)
            if r.status in (200, 201):
                moved += kind == "change"
                bought += kind == "buy"
            else:
                self.assertEqual((r.status, r.json["code"]), (409, "PLAN_SOLD_OUT"), r)
        self.assertEqual(moved + bought, 5)
        qa, qb = S.plan(a["id"]), S.plan(b["id"])
        self.assertEqual((qb["subscriptions_left"], qb["subscriptions_held"]), (0, 0))
        self.assertEqual((qa["subscriptions_left"], qa["subscriptions_held"]), (moved, 0))
        self.assertChecks()

    def test_feed_poller_sees_1000_concurrent_changes_once_in_order(self):
        # 500 purchases on two plans, each two units (the hold, the payment), while a poller
        # reads the feed: every position once, in order, no gap; each plan's counts follow one
        # another in feed order; the last poll has every event
        plans = [S.create_plan(capacity=250), S.create_plan(capacity=250)]
        ids = {p["id"]: i for i, p in enumerate(plans)}
        start = S.feed_head()
        seen, done = [], threading.Event()

        def poll():
            after = start
            while True:
                finished = done.is_set()
                r = S.admin("GET", "/api/events?limit=97&after=%d" % after)
                assert r.status == 200, r
                seen.extend(r.json["events"])
                after = r.json["nextAfter"]
                if finished and not r.json["events"]:
                    return

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            results = parallel(500, lambda i: S.purchase(plans[i % 2]["id"]))
        finally:
            done.set()
            poller.join()
        self.assertEqual(collections.Counter(r.status for r in results), {201: 500})
        self.assertEqual([e["seq"] for e in seen], list(range(start + 1, start + 1 + len(seen))))
        # (the reaper records captures as it passes, of these purchases and of earlier tests': of
        # these, some of the 500, each once)
        captured = collections.Counter(e["data"]["resourceId"] for e in seen if e["type"] == "payment.captured" and
                                       e["data"].get("planId") in ids)
        self.assertLessEqual(len(captured), 500)
        self.assertEqual(set(captured.values()) - {1}, set(), "a payment captured twice")
        types = collections.Counter(e["type"] for e in seen if e["type"] != "payment.captured")
        self.assertEqual(types, {"seat.held": 500, "payment.authorized": 500, "subscription.activated": 500})
        last = [None, None]
        for e in seen:
            k, d = ids.get(e["data"]["planId"]), e["data"]
            if k is None or d["after"] is None:
                continue
            if last[k] is not None:
                self.assertIn(d["before"], last[k], (e, last[k]))
            last[k] = (d["before"], d["after"])
        for k, p in enumerate(plans):
            q = S.plan(p["id"])
            self.assertEqual(last[k][1]["subscriptions_left"], q["subscriptions_left"])
        self.assertChecks()

    def test_300_buyers_race_a_line_of_40_for_freed_seats(self):
        # 20 seats sold, 40 in line (1 or 2 seats each); then at once: 300 buyers, 10 cancels
        # and three capacity increases of 2. Every freed seat goes to the line, in the order
        # it joined, never to a buyer, never twice, never past capacity.
        p = S.create_plan(capacity=20, waitlist_enabled=True)
        subs = [r.json for r in parallel(20, lambda i: S.purchase(p["id"]))]
        self.assertEqual({s["status"] for s in subs}, {"active"})
        rng = random.Random(15)
        line = []
        for i in range(40):
            r = S.request("POST", "/api/plans/%s/waitlist" % p["id"],
                          {"customer": {"email": "line%d@example.com" % i, "name": "L"}, "quantity": rng.randint(1, 2)},
                          {"Idempotency-Key": str(uuid.uuid4())})
            self.assertEqual((r.status, r.json["position"]), (201, i + 1), r)
            line.append(r.json)

        def act(i):
            if i < 300:
                return S.purchase(p["id"])
            if i < 310:
                s = subs[i - 300]
                return S.request("POST", "/api/subscriptions/%s/cancel" % s["id"], {},
                                 {"Authorization": "Bearer " + s["accessToken"]})
            for cap in (22, 24, 26):
                r = S.admin("PATCH", "/api/plans/" + p["id"], {"total_capacity": cap})
                assert r.status == 200, r
            return r
        results = parallel(311, act)
        self.assertEqual(collections.Counter((r.status, r.json.get("code")) for r in results[:300]),
                         {(409, "PLAN_SOLD_OUT"): 300})
        self.assertEqual({r.status for r in results[300:]}, {200})
        now = [S.admin("GET", "/api/waitlist/" + w["id"]).json for w in line]
        offered = [w for w in now if w["status"] == "offered"]
        k = len(offered)
        # strictly in arrival order: the offered are the first k, the rest wait, in order
        self.assertEqual([w["status"] for w in now], ["offered"] * k + ["waiting"] * (40 - k))
        self.assertEqual([w["position"] for w in now[k:]], list(range(1, 40 - k + 1)))
        q = S.plan(p["id"])
        seats = sum(w["quantity"] for w in offered)
        # 16 seats came free (10 cancels, 6 of capacity); the line took all it could, in order
        self.assertEqual(q["total_capacity"], 26)
        self.assertEqual(q["subscriptions_held"], seats)
        self.assertEqual(q["subscriptions_left"], 16 - seats)
        self.assertLess(q["subscriptions_left"], now[k]["quantity"])
        self.assertLessEqual(10 + seats, 26)
        # each offer its own session holding the entry's seats, and offered once
        sessions = {w["checkoutSessionId"] for w in offered}
        self.assertEqual(len(sessions), k)
        for w in offered:
            sess = S.admin("GET", "/api/checkout-sessions/" + w["checkoutSessionId"]).json
            self.assertEqual((sess["status"], sess["quantity"]), ("open", w["quantity"]))
        ids = {w["id"] for w in line}
        offers = [e for e in S.events_after(0) if e["type"] == "waitlist.offered" and e["data"]["resourceId"] in ids]
        self.assertEqual([e["data"]["resourceId"] for e in offers], [w["id"] for w in offered])
        self.assertChecks()

    def test_2000_attempts_on_500_seats(self):
        p = S.create_plan(capacity=500)
        results = pool(64, list(range(2000)), lambda i: S.purchase(p["id"]))
        c = collections.Counter(r.status if not isinstance(r, Exception) else repr(r) for r in results)
        self.assertEqual(c, {201: 500, 409: 1500}, c)
        self.assertTrue(all(r.json["code"] == "PLAN_SOLD_OUT" for r in results if r.status == 409))
        st = S.request("GET", "/api/plans/%s/stats" % p["id"]).json
        self.assertEqual((st["subscriptionsSold"], st["subscriptionsLeft"], st["subscriptionsHeld"]), (500, 0, 0))
        self.assertChecks()

    def test_50_identical_requests_one_key(self):
        p = S.create_plan(capacity=5)
        key = str(uuid.uuid4())
        email = "same-%s@example.com" % key[:8]
        results = parallel(50, lambda i: S.purchase(p["id"], key=key, email=email))
        wins = [r for r in results if r.status == 201]
        busy = [r for r in results if r.status == 409]
        self.assertEqual(len(wins) + len(busy), 50, [r for r in results if r.status not in (201, 409)])
        self.assertGreaterEqual(len(wins), 1)
        self.assertEqual(len({r.raw for r in wins}), 1, "every 201 is the same response")
        for r in busy:
            self.assertEqual(r.json["code"], "REQUEST_IN_PROGRESS")
            self.assertGreaterEqual(int(r.header("Retry-After")), 1)
        self.assertEqual(S.plan(p["id"])["subscriptions_left"], 4)
        self.assertEqual(audit_count(p["id"], "payment.authorized"), 1)
        self.assertEqual(audit_count(p["id"], "seat.held"), 1)
        # after it finished, a retry replays it
        again = S.purchase(p["id"], key=key, email=email)
        self.assertEqual((again.status, again.raw), (201, wins[0].raw))
        self.assertChecks()

    def test_mixed_load(self):
        p = S.create_plan(capacity=40)
        methods = ["pm_card_visa"] * 6 + ["pm_card_chargeDeclined", "pm_card_chargeDeclinedExpiredCard"]
        rng = random.Random(7)
        jobs = [("buy", rng.choice(methods)) for _ in range(300)] + [("capacity", 30 + i) for i in range(20)]
        rng.shuffle(jobs)
        bought = []

        def run(job):
            kind, arg = job
            if kind == "buy":
                r = S.purchase(p["id"], method=arg)
                if r.status == 201 and rng.random() < 0.3:
                    c = S.request("POST", "/api/subscriptions/%s/cancel" % r.json["id"],
                                  headers={"Authorization": "Bearer " + r.json["accessToken"]})
                    return ("cancel", r, c)
                return ("buy", r, None)
            return ("capacity", S.admin("PATCH", "/api/plans/" + p["id"], {"total_capacity": arg}), None)

        results = pool(32, jobs, run)
        errors = [r for r in results if isinstance(r, Exception)]
        self.assertEqual(errors, [])
        active = cancelled = 0
        for kind, r, c in results:
            if kind == "capacity":
                self.assertIn(r.status, (200, 409), r)
                if r.status == 409:
                    self.assertEqual(r.json["code"], "CAPACITY_BELOW_SOLD")
                continue
            self.assertIn(r.status, (201, 402, 409), r)
            if r.status == 402:
                self.assertEqual(r.json["code"], "PAYMENT_FAILED")
            if r.status == 409:
                self.assertEqual(r.json["code"], "PLAN_SOLD_OUT")
            if r.status == 201:
                if c is not None:
                    self.assertEqual(c.status, 200, c)
                    cancelled += 1
                else:
                    active += 1
        q = S.plan(p["id"])
        self.assertEqual(q["subscriptions_held"], 0)
        self.assertEqual(q["total_capacity"] - q["subscriptions_left"], active)
        self.assertGreater(active, 0)
        self.assertChecks()


if __name__ == "__main__":
    unittest.main()
