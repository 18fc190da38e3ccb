"""test_money.py - what plan changes charge and credit, against the real stack under a clock the
test moves (libfaketime, tests/faketime.sh): a credit is never more than the unpaid-for part of
what was paid, and a buyer pays, for each plan of a chain of changes, the price of the time they
held it.

The price of a part of a period is its share: amount x (part / period), rounded half away from
zero to the cent (API.md, *Changing plan*). A subscription of a chain, held from s to s' in a
period ending at e, costs share(e - s) - share(e - s'); the money of a chain (captures less
refunds, read from the audit trail by each request's trace id) is the sum of those."""

import datetime
import os
import random
import threading
import time
import unittest
import uuid

from stack import Clock, Stack

S = None
CLOCK = None
DAY = 86400


def setUpModule():
    global S, CLOCK
    CLOCK = Clock()
    S = Stack(**CLOCK.env()).start()


def tearDownModule():
    S.cleanup()
    CLOCK.cleanup()


def ms(rfc3339):
    t = datetime.datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    return int(t.timestamp() * 1000 + 0.5)


def share(amount, left, period):
    num = amount * left
    return (abs(num) + period // 2) // period * (1 if num >= 0 else -1)


def money(trace, stack=None):
    """(captured, refunded) in cents by the requests of one trace id."""
    logs = (stack or S).admin("GET", "/api/audit-logs?limit=100&traceId=" + trace).json["logs"]
    # every authorization a seat keeps is captured (the reaper records the capture later); what
    # none keeps is voided, never taken
    authorized = {l["resourceId"]: l["after"]["amount_cents"] for l in logs if l["action"] == "payment.authorized"}
    voided = {l["resourceId"] for l in logs if l["action"] == "payment.voided"}
    captured = sum(amount for pay, amount in authorized.items() if pay not in voided)
    refunded = sum(l["after"]["amount_cents"] for l in logs if l["action"] == "payment.refunded")
    return captured, refunded


class Chain:
    """One buyer's subscription and its plan changes, with what each step should cost."""

    def __init__(self, tc, plan, quantity=1):
        self.tc = tc
        self.traces = []
        r = S.purchase(plan["id"], quantity=quantity, headers={"X-Trace-Id": self._trace()})
        tc.assertEqual(r.status, 201, r)
        self.sub = r.json
        self.start, self.end = ms(r.json["startDate"]), ms(r.json["endDate"])
        self.period = self.end - self.start
        self.expected = r.json["amount_cents"]

    def _trace(self):
        self.traces.append("money-" + uuid.uuid4().hex)
        return self.traces[-1]

    def change(self, plan):
        old, body = self.sub, {"planId": plan["id"], "paymentMethodId": "pm_card_visa"}
        r = S.request("POST", "/api/subscriptions/%s/change-plan" % old["id"], body,
                      {"Authorization": "Bearer " + old["accessToken"], "Idempotency-Key": str(uuid.uuid4()),
                       "X-Trace-Id": self._trace()})
        self.tc.assertEqual(r.status, 200, r)
        # the new subscription starts at the instant the difference was reckoned for
        at = ms(r.json["startDate"])
        left, days = self.end - at, plan["duration_days"] * DAY * 1000
        if days == self.period:
            # a plan of the same length takes the rest of the period
            self.tc.assertEqual(ms(r.json["endDate"]), self.end, "a change keeps the period's end")
            self.expected += share(r.json["amount_cents"], left, self.period) - share(old["amount_cents"], left, self.period)
        else:
            # one of another length begins a period of its own: its whole price, less the old
            # plan's share of what is left
            self.tc.assertEqual(ms(r.json["endDate"]), at + days, "a plan of another length begins its own period")
            self.expected += r.json["amount_cents"] - share(old["amount_cents"], left, self.period)
            self.start, self.end, self.period = at, at + days, days
        self.sub = r.json
        return r

    def cancel(self):
        r = S.request("POST", "/api/subscriptions/%s/cancel" % self.sub["id"], {},
                      {"Authorization": "Bearer " + self.sub["accessToken"], "X-Trace-Id": self._trace()})
        self.tc.assertEqual((r.status, r.json["status"]), (200, "cancelled"), r)

    def assert_paid(self, what):
        captured = refunded = 0
        for t in self.traces:
            c, r = money(t)
            captured, refunded = captured + c, refunded + r
        self.tc.assertLessEqual(refunded, captured, "%s: refunded more than was captured" % what)
        self.tc.assertEqual(captured - refunded, self.expected, "%s: paid %d, the time held costs %d" %
                            (what, captured - refunded, self.expected))


class PlanChangeMoney(unittest.TestCase):
    def test_a_second_change_refunds_what_the_first_charged(self):
        # issue 22.1: A 1000 / 30 days, B 100,000 / 30 days; half the period on A, then to B and
        # straight back: the buyer got 99,000 back for 49,500 paid
        a = S.create_plan(capacity=5, price=1000, duration_days=30)
        b = S.create_plan(capacity=5, price=100000, duration_days=30)
        chain = Chain(self, a)
        CLOCK.advance(15 * DAY)
        up = chain.change(b)
        down = chain.change(a)
        (c_up, r_up), (c_down, r_down) = money(chain.traces[1]), money(chain.traces[2])
        self.assertEqual((c_up, r_up), (49500, 0))
        self.assertEqual(c_down, 0)
        # back within the same second or so: at most what the first change charged
        self.assertLessEqual(r_down, 49500)
        self.assertGreaterEqual(r_down, 49500 - 2)
        self.assertEqual(down.json["previousSubscriptionId"], up.json["id"])
        chain.assert_paid("A, B, A")
        ok, out = S.check()
        self.assertTrue(ok, out)

    def test_a_plan_of_another_length_begins_its_own_period(self):
        # found in review: a year at 36,500 changed at once to a 30-day plan at 3,000 kept the
        # year's end, and the buyer held the monthly plan a year for 3,000
        year = S.create_plan(capacity=5, price=36500, duration_days=365)
        month = S.create_plan(capacity=5, price=3000, duration_days=30)
        chain = Chain(self, year)
        down = chain.change(month)
        self.assertEqual(ms(down.json["endDate"]) - ms(down.json["startDate"]), 30 * DAY * 1000)
        captured, refunded = money(chain.traces[1])
        self.assertEqual(captured, 0)
        self.assertLessEqual(refunded, 36500 - 3000)
        chain.assert_paid("a year, then a month")
        chain = Chain(self, month)
        CLOCK.advance(10 * DAY)
        up = chain.change(year)
        self.assertEqual(ms(up.json["endDate"]) - ms(up.json["startDate"]), 365 * DAY * 1000)
        chain.assert_paid("10 days of a month, then a year")

    def test_a_period_that_ended_never_changes_plan(self):
        # issue 22.2: 31 days past a 30-day end, a change to a dear yearly plan was free and
        # granted a whole new year
        a = S.create_plan(capacity=5, price=1000, duration_days=30)
        year = S.create_plan(capacity=5, price=100000, duration_days=365)
        chain = Chain(self, a)
        CLOCK.advance(61 * DAY)
        before = (S.plan(a["id"]), S.plan(year["id"]))
        for method in (None, "pm_card_visa"):
            body = {"planId": year["id"]}
            if method:
                body["paymentMethodId"] = method
            r = S.request("POST", "/api/subscriptions/%s/change-plan" % chain.sub["id"], body,
                          {"Authorization": "Bearer " + chain.sub["accessToken"], "Idempotency-Key": str(uuid.uuid4())})
            self.assertEqual((r.status, r.json["code"]), (409, "SUBSCRIPTION_ENDED"), r)
        self.assertEqual((S.plan(a["id"]), S.plan(year["id"])), before)
        g = S.request("GET", "/api/subscriptions/" + chain.sub["id"],
                      headers={"Authorization": "Bearer " + chain.sub["accessToken"]})
        self.assertEqual((g.json["planId"], g.json["endDate"]), (a["id"], chain.sub["endDate"]))
        chain.assert_paid("no change")

    def test_random_chains_pay_for_the_time_on_each_plan(self):
        seed = int(os.environ.get("NUMATIX_TEST_SEED") or random.randrange(1 << 30))
        rnd = random.Random(seed)
        plans = [S.create_plan(capacity=1000, price=p, duration_days=d)
                 for p, d in ((0, 30), (1000, 30), (100000, 30), (333, 7), (4999, 365), (123457, 30))]
        for n in range(30):
            what = "seed %d, chain %d" % (seed, n)
            chain = Chain(self, rnd.choice(plans), quantity=rnd.randint(1, 3))
            for step in range(rnd.randint(1, 8)):
                # some time passes: none, or a random part of what is left of the period
                left_s = (chain.end - ms(chain.sub["startDate"])) / 1000.0
                if rnd.random() < 0.7:
                    CLOCK.advance(rnd.uniform(0, left_s / 2))
                if rnd.random() < 0.1:
                    chain.cancel()
                    break
                chain.change(rnd.choice([p for p in plans if p["id"] != chain.sub["planId"]]))
                chain.assert_paid("%s, step %d" % (what, step))
            chain.assert_paid(what)
        ok, out = S.check()
        self.assertTrue(ok, out)


class PeriodEndsWhileTheChangePays(unittest.TestCase):
    """Found in review: a change whose period ended while its difference was being charged still
    went through, for a period already over. The payment takes seconds here; the clock moves past
    the end once the new plan's seats are held, and the change must end 409 SUBSCRIPTION_ENDED
    with the seats back and the charge refunded."""

    @classmethod
    def setUpClass(cls):
        cls.clock = Clock()
        # the hold outlives the jump of the clock: only the period ends meanwhile
        cls.S = Stack(NUMATIX_PAYMENT_LATENCY_MS=8000, NUMATIX_HOLD_TTL=DAY, **cls.clock.env()).start()

    @classmethod
    def tearDownClass(cls):
        cls.S.cleanup()
        cls.clock.cleanup()

    def test_the_change_is_refused_and_refunded(self):
        S = self.S
        a = S.create_plan(capacity=5, price=100, duration_days=1)
        b = S.create_plan(capacity=5, price=1000000, duration_days=1)
        sub = S.purchase(a["id"]).json
        self.clock.advance(DAY - 1800)   # half an hour of the period left
        trace = "money-" + uuid.uuid4().hex
        out = []
        t = threading.Thread(target=lambda: out.append(S.request(
            "POST", "/api/subscriptions/%s/change-plan" % sub["id"], {"planId": b["id"], "paymentMethodId": "pm_card_visa"},
            {"Authorization": "Bearer " + sub["accessToken"], "Idempotency-Key": str(uuid.uuid4()), "X-Trace-Id": trace})))
        t.start()
        end = time.time() + 60
        while S.plan(b["id"])["subscriptions_held"] == 0 and t.is_alive() and time.time() < end:
            time.sleep(0.05)
        self.assertEqual(S.plan(b["id"])["subscriptions_held"], 1, "the new plan's seat held while the difference is charged")
        self.clock.advance(3600)
        t.join()
        r = out[0]
        self.assertEqual((r.status, r.json["code"]), (409, "SUBSCRIPTION_ENDED"), r)
        self.assertEqual((S.plan(b["id"])["subscriptions_left"], S.plan(b["id"])["subscriptions_held"]), (5, 0))
        captured, refunded = money(trace, S)
        self.assertEqual(captured, refunded)
        # the old subscription is untouched by the change; its period over, the renewer ends it
        # (the plan does not renew), on its own plan
        end = time.time() + 120
        while True:
            g = S.request("GET", "/api/subscriptions/" + sub["id"], headers={"Authorization": "Bearer " + sub["accessToken"]})
            if g.json["status"] != "active" or time.time() > end:
                break
            time.sleep(0.1)
        self.assertEqual((g.json["status"], g.json["planId"]), ("ended", a["id"]))
        self.assertEqual(S.plan(a["id"])["subscriptions_left"], 5)
        ok, out = S.check()
        self.assertTrue(ok, out)


if __name__ == "__main__":
    unittest.main()
