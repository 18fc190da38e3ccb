"""test_payments.py - the processor seam seen from outside: money is authorized, the settling
unit records the authorization, it is captured after the commit (the reaper records each
capture), what no seat keeps is voided, never captured, and a plan change's credit is a partial
refund of the charges that paid for the chain. The ledger (the audit trail) and the simulated
processor's own records (its file, read here as the remote service's books) must agree to the
cent, with real parallel clients. With NUMATIX_TEST_PROCESSOR=stripe the same against the
Stripe test server (tests/stripe), whose state is its books."""

import collections
import os
import sqlite3
import threading
import unittest
import uuid

from stack import Stack, StripeServer, answered, parallel

S = None
PRICE = 1500

# the simulated processor's states (enum pay_state)
NONE, REQUIRES_ACTION, AUTHORIZED, CAPTURED, VOIDED, DECLINED = range(6)


def setUpModule():
    global S
    # a reaper that never runs on its own: each test runs it when it means to
    S = Stack(NUMATIX_WORKERS=4, NUMATIX_PAYMENT_LATENCY_MS=20, NUMATIX_REAP_INTERVAL=3600).start()


def tearDownModule():
    S.cleanup()


STRIPE_STATES = {"requires_capture": AUTHORIZED, "succeeded": CAPTURED, "canceled": VOIDED,
                 "requires_payment_method": DECLINED, "requires_action": REQUIRES_ACTION}


def processor_books():
    """The processor's own records: {payment id: (state, amount, refunded)} and the sum of its
    refunds by payment id; the simulated processor's file, or the Stripe test server's state."""
    if S.env.get("NUMATIX_PROCESSOR") == "stripe":
        st = StripeServer.get().state()
        pays = {pi["id"]: (STRIPE_STATES.get(pi["status"], NONE), pi["amount"],
                           (pi["latest_charge"] or {}).get("amount_refunded", 0)) for pi in st["intents"]}
        refunds = collections.Counter()
        for r in st["refunds"]:
            refunds[r["payment_intent"]] += r["amount"]
        return pays, refunds
    db = sqlite3.connect("file:%s?mode=ro" % S.env["NUMATIX_SIM_DB"], uri=True, timeout=30)
    try:
        pays = {i: (st, a, r) for i, st, a, r in db.execute("SELECT id, state, amount, refunded FROM sim_payments")}
        refunds = collections.Counter()
        for pay_id, amount in db.execute(
                "SELECT p.id, r.amount FROM sim_refunds r JOIN sim_payments p ON p.key = r.payment_key"):
            refunds[pay_id] += amount
        return pays, refunds
    finally:
        db.close()


def processor_state_of(key):
    """The state of the payment made under one payment key at the processor (NONE: none)."""
    if S.env.get("NUMATIX_PROCESSOR") == "stripe":
        pis = [pi for pi in StripeServer.get().state()["intents"] if pi["metadata"].get("numatix_key") == key]
        assert len(pis) <= 1, pis
        return STRIPE_STATES.get(pis[0]["status"], NONE) if pis else NONE
    db = sqlite3.connect("file:%s?mode=ro" % S.env["NUMATIX_SIM_DB"], uri=True, timeout=30)
    try:
        rows = db.execute("SELECT state FROM sim_payments WHERE key = ?", (key,)).fetchall()
        return rows[0][0] if rows else NONE
    finally:
        db.close()


def processor_trace(pay_id):
    """The trace the simulated processor keeps with a payment."""
    db = sqlite3.connect("file:%s?mode=ro" % S.env["NUMATIX_SIM_DB"], uri=True, timeout=30)
    try:
        [(trace,)] = db.execute("SELECT trace_id FROM sim_payments WHERE id = ?", (pay_id,)).fetchall()
        return trace
    finally:
        db.close()


def change_plan(sub, plan_id, method="pm_card_visa", trace=None):
    body = {"planId": plan_id}
    if method:
        body["paymentMethodId"] = method
    h = {"Authorization": "Bearer " + sub["accessToken"], "Idempotency-Key": str(uuid.uuid4())}
    if trace:
        h["X-Trace-Id"] = trace
    return S.request("POST", "/api/subscriptions/%s/change-plan" % sub["id"], body, h)


class Payments(unittest.TestCase):
    def assertChecks(self):
        ok, out = S.check()
        self.assertTrue(ok, out)

    def test_60_buyers_for_20_seats_authorized_then_captured_once(self):
        p = S.create_plan(capacity=20, price=PRICE)
        results = parallel(60, lambda i: S.purchase(p["id"]))
        codes = collections.Counter(r.status for r in results)
        self.assertEqual(codes, {201: 20, 409: 40}, codes)
        paid = {r.json["paymentId"] for r in results if r.status == 201}
        authorized = S.audit("payment.authorized", p["id"])
        self.assertEqual({l["resourceId"] for l in authorized}, paid)
        self.assertEqual(S.audit("payment.captured", p["id"]), [])
        # the processor has taken the money right after each settling commit; the reaper records it
        books, _ = processor_books()
        self.assertEqual({i for i in paid if books[i][0] == CAPTURED}, paid)
        S.reap()
        captured = S.audit("payment.captured", p["id"])
        self.assertEqual(sorted(l["resourceId"] for l in captured), sorted(paid))
        self.assertEqual(sum(l["after"]["amount_cents"] for l in captured), 20 * PRICE)
        # a second pass records nothing again
        S.reap()
        self.assertEqual(len(S.audit("payment.captured", p["id"])), 20)
        self.assertEqual(S.audit("payment.voided", p["id"]), [])
        self.assertChecks()

    def test_the_summary_counts_every_state(self):
        S.reap()   # what earlier tests left authorized, captured first
        before = S.admin("GET", "/api/payments/summary").json["byState"]
        p = S.create_plan(capacity=5, price=PRICE)
        for _ in range(3):
            self.assertEqual(S.purchase(p["id"]).status, 201)
        self.assertEqual(S.purchase(p["id"], method="pm_card_chargeDeclined").status, 402)
        mid = S.admin("GET", "/api/payments/summary").json["byState"]
        delta = lambda a, b, k: (b[k]["count"] - a[k]["count"], b[k]["amount_cents"] - a[k]["amount_cents"])
        self.assertEqual(delta(before, mid, "authorized"), (3, 3 * PRICE))
        self.assertEqual(delta(before, mid, "declined"), (1, PRICE))
        S.reap()
        after = S.admin("GET", "/api/payments/summary").json["byState"]
        self.assertEqual(delta(before, after, "authorized"), (0, 0))
        self.assertEqual(delta(before, after, "captured"), (3, 3 * PRICE))
        self.assertEqual(S.request("GET", "/api/payments/summary").status, 401)

    @unittest.skipIf(os.environ.get("NUMATIX_TEST_PROCESSOR") == "stripe",
                     "SKIPPED: Stripe is given no trace (its idempotency compares a retry's parameters, and a retry "
                     "is another request's trace); its PaymentIntent names the payment's key instead")
    def test_the_processor_keeps_the_trace_of_the_request_that_paid(self):
        """An operator follows a purchase from its request to the processor: the trace id it was
        given (X-Trace-Id, or a W3C traceparent's trace-id) is kept with its payment."""
        p = S.create_plan(capacity=5, price=PRICE)
        trace = "pay-" + uuid.uuid4().hex
        r = S.purchase(p["id"], headers={"X-Trace-Id": trace})
        self.assertEqual((r.status, r.header("X-Trace-Id")), (201, trace), r)
        self.assertEqual(processor_trace(r.json["paymentId"]), trace)
        w3c = uuid.uuid4().hex
        r = S.purchase(p["id"], headers={"traceparent": "00-%s-%s-01" % (w3c, uuid.uuid4().hex[:16])})
        self.assertEqual(r.status, 201, r)
        self.assertEqual(processor_trace(r.json["paymentId"]), w3c)

    def test_declines_take_nothing(self):
        p = S.create_plan(capacity=10, price=PRICE)
        results = parallel(10, lambda i: S.purchase(p["id"], method="pm_card_chargeDeclinedInsufficientFunds"))
        self.assertEqual({r.status for r in results}, {402})
        declined = S.audit("payment.declined", p["id"])
        self.assertEqual(len(declined), 10)
        S.reap()
        books, _ = processor_books()
        self.assertEqual([books[l["resourceId"]][0] for l in declined], [DECLINED] * 10)
        self.assertEqual(S.audit("payment.authorized", p["id"]) + S.audit("payment.captured", p["id"]), [])
        self.assertEqual(S.plan(p["id"])["subscriptions_left"], 10)
        self.assertChecks()

    def test_a_credit_is_refunded_from_the_chains_charges_newest_first(self):
        # 10 then 100 dollars: the upgrade's charge alone cannot pay back a change to a free plan
        cheap = S.create_plan(capacity=3, price=1000)
        dear = S.create_plan(capacity=3, price=10000)
        free = S.create_plan(capacity=3, price=0)
        sub = S.purchase(cheap["id"]).json
        up = change_plan(sub, dear["id"])
        self.assertEqual(up.status, 200, up)
        trace = "credit-" + uuid.uuid4().hex
        down = change_plan(up.json, free["id"], method=None, trace=trace)
        self.assertEqual(down.status, 200, down)
        credit = [l for l in S.audit("payment.refunded", trace=trace)]
        self.assertEqual(len(credit), 1)
        amount = credit[0]["after"]["amount_cents"]
        self.assertGreater(amount, 10000 - 1000)   # more than the upgrade charged
        books, refunds = processor_books()
        first, second = sub["paymentId"], up.json["paymentId"]
        # the upgrade's charge given back whole, the rest from the purchase's
        self.assertEqual(refunds[second], books[second][1])
        self.assertEqual(refunds[first] + refunds[second], amount)
        self.assertLessEqual(refunds[first], books[first][1])
        self.assertChecks()

    def test_a_lost_hold_is_voided_never_captured(self):
        # a session whose deadline passes before its card is tried: nothing to take; a purchase
        # expired by the reaper before its settle is in test_recovery (SlowPayment, crashes)
        p = S.create_plan(capacity=2, price=PRICE)
        sess = S.request("POST", "/api/checkout-sessions", {"planId": p["id"], "customer": {
            "email": "v-%s@example.com" % uuid.uuid4().hex[:8], "name": "V"}}, {"Idempotency-Key": str(uuid.uuid4())}).json
        e = S.request("POST", "/api/checkout-sessions/%s/expire" % sess["id"], {},
                      {"Authorization": "Bearer " + sess["clientSecret"]})
        self.assertEqual(e.status, 200, e)
        r = S.request("POST", "/api/checkout-sessions/%s/complete" % sess["id"], {"paymentMethodId": "pm_card_visa"},
                      {"Authorization": "Bearer " + sess["clientSecret"], "Idempotency-Key": str(uuid.uuid4())})
        self.assertEqual((r.status, r.json["code"]), (409, "SESSION_EXPIRED"), r)
        self.assertEqual(S.audit("payment.authorized", p["id"]), [])
        self.assertEqual(S.audit("payment.captured", p["id"]), [])
        self.assertChecks()


class ThreeDSecure(unittest.TestCase):
    """The bank asks the buyer to authenticate (pm_card_authenticationRequired): a session's
    completion answers 402 PAYMENT_ACTION_REQUIRED with its seats kept; the buyer authenticates
    (the simulated bank's page, or the Stripe test server's stand-in for Stripe.js), and the
    next completion pays with that one authorization: exactly one payment, captured once."""

    METHOD = "pm_card_authenticationRequired"

    def session(self, plan):
        r = S.request("POST", "/api/checkout-sessions", {"planId": plan["id"], "expiresIn": 600, "customer": {
            "email": "3ds-%s@example.com" % uuid.uuid4().hex[:8], "name": "T"}}, {"Idempotency-Key": str(uuid.uuid4())})
        self.assertEqual(r.status, 201, r)
        return r.json

    def complete(self, sess, method=None, key=None):
        return S.request("POST", "/api/checkout-sessions/%s/complete" % sess["id"], {"paymentMethodId": method or self.METHOD},
                         {"Idempotency-Key": key or str(uuid.uuid4()), "Authorization": "Bearer " + sess["clientSecret"]})

    def authenticate(self, sess, intent_secret):
        """What the buyer does at the bank."""
        if S.env.get("NUMATIX_PROCESSOR") == "stripe":
            StripeServer.get().control("POST", "/__control/authenticate", {"client_secret": intent_secret})
            return
        r = S.request("POST", "/api/checkout-sessions/%s/authenticate" % sess["id"], {},
                      {"Authorization": "Bearer " + sess["clientSecret"]})
        self.assertEqual(r.status, 200, r)

    def asked(self, r, sess):
        self.assertEqual((r.status, r.json["code"], r.json["details"]["checkoutSessionId"]),
                         (402, "PAYMENT_ACTION_REQUIRED", sess["id"]), r)
        secret = r.json["details"].get("paymentIntentClientSecret")
        self.assertEqual(secret is not None, S.env.get("NUMATIX_PROCESSOR") == "stripe", r.json)
        return secret

    def test_authenticated_then_completed_pays_once(self):
        p = S.create_plan(capacity=3, price=PRICE)
        sess = self.session(p)
        first = str(uuid.uuid4())
        r = self.complete(sess, key=first)
        intent = self.asked(r, sess)
        self.assertEqual(processor_state_of(first), REQUIRES_ACTION)
        self.assertEqual(S.plan(p["id"])["subscriptions_held"], 1)
        self.assertEqual(S.request("GET", "/api/checkout-sessions/" + sess["id"],
                                   headers={"Authorization": "Bearer " + sess["clientSecret"]}).json["status"], "open")
        # before the buyer has authenticated, asking again changes nothing
        self.asked(self.complete(sess), sess)
        self.authenticate(sess, intent)
        r = self.complete(sess)
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.json["status"], "active", r)
        S.reap()
        pays = [e for e in S.audit("payment.captured", p["id"])]
        self.assertEqual([e["after"]["amount_cents"] for e in pays], [PRICE], pays)
        books, _ = processor_books()
        self.assertEqual(books[r.json["paymentId"]][:2], (CAPTURED, PRICE))
        # the payment is the one the buyer authenticated, made under the first completion's key:
        # the later completions made none of their own
        self.assertEqual(processor_state_of(first), CAPTURED)
        self.assertEqual(len(S.audit("payment.authorized", p["id"])), 1)
        self.assertEqual(S.plan(p["id"])["subscriptions_left"], 2)
        self.assertChecks()

    def test_another_card_instead_voids_what_waited(self):
        p = S.create_plan(capacity=3, price=PRICE)
        sess = self.session(p)
        first = str(uuid.uuid4())
        self.asked(self.complete(sess, key=first), sess)
        r = self.complete(sess, method="pm_card_visa")
        self.assertEqual(r.status, 201, r)
        S.reap()
        books, _ = processor_books()
        self.assertEqual(books[r.json["paymentId"]][0], CAPTURED)
        # the payment that waited for the buyer is voided, never captured
        self.assertEqual(processor_state_of(first), VOIDED)
        self.assertChecks()

    def test_a_purchase_becomes_a_session_the_buyer_completes(self):
        """A plain purchase the bank asks about becomes a checkout session with its seats held
        (API.md): its client secret in the 402, the same 402 for the key's replay; authenticated,
        the session completes with that one payment."""
        p = S.create_plan(capacity=3, price=PRICE)
        key, email = str(uuid.uuid4()), "3ds-%s@example.com" % uuid.uuid4().hex[:8]
        r = S.purchase(p["id"], key=key, method=self.METHOD, email=email)
        self.assertEqual((r.status, r.json["code"]), (402, "PAYMENT_ACTION_REQUIRED"), r)
        d = r.json["details"]
        sess = {"id": d["checkoutSessionId"], "clientSecret": d["clientSecret"]}
        intent = self.asked(r, sess)
        again = S.purchase(p["id"], key=key, method=self.METHOD, email=email)
        self.assertEqual((again.status, again.raw, again.header("Idempotent-Replayed")), (402, r.raw, "true"))
        self.assertEqual(S.plan(p["id"])["subscriptions_held"], 1)
        got = S.request("GET", "/api/checkout-sessions/" + sess["id"], headers={"Authorization": "Bearer " + sess["clientSecret"]})
        self.assertEqual((got.status, got.json["status"]), (200, "open"), got)
        self.assertEqual(processor_state_of(key), REQUIRES_ACTION)
        self.authenticate(sess, intent)
        done = self.complete(sess)
        self.assertEqual((done.status, done.json["id"], done.json["status"]), (201, sess["id"], "active"), done)
        self.assertTrue(done.json["accessToken"])
        S.reap()
        self.assertEqual(processor_state_of(key), CAPTURED)
        self.assertEqual(len(S.audit("payment.authorized", p["id"])), 1)
        self.assertEqual(S.plan(p["id"])["subscriptions_left"], 2)
        self.assertChecks()

    def test_the_simulated_bank_has_nothing_to_do_when_nothing_waits(self):
        p = S.create_plan(capacity=3, price=PRICE)
        sess = self.session(p)
        h = {"Authorization": "Bearer " + sess["clientSecret"]}
        r = S.request("POST", "/api/checkout-sessions/%s/authenticate" % sess["id"], {}, h)
        self.assertEqual((r.status, r.json["code"]), (409, "NO_PAYMENT_TO_AUTHENTICATE"), r)
        r = S.request("POST", "/api/checkout-sessions/%s/authenticate" % sess["id"], {"x": 1}, h)
        self.assertEqual(r.status, 400, r)
        r = S.request("POST", "/api/checkout-sessions/%s/authenticate" % sess["id"], {})
        self.assertEqual(r.status, 401, r)
        self.assertEqual(S.plan(p["id"])["subscriptions_held"], 1)

    def test_a_session_that_expires_while_waiting_voids_the_payment(self):
        p = S.create_plan(capacity=3, price=PRICE)
        sess = self.session(p)
        first = str(uuid.uuid4())
        intent = self.asked(self.complete(sess, key=first), sess)
        self.authenticate(sess, intent)
        self.assertEqual(processor_state_of(first), AUTHORIZED)
        r = S.request("POST", "/api/checkout-sessions/%s/expire" % sess["id"], {},
                      {"Authorization": "Bearer " + sess["clientSecret"]})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(S.plan(p["id"])["subscriptions_left"], 3)
        self.assertEqual(self.complete(sess).status, 409)
        S.reap()
        self.assertEqual(processor_state_of(first), VOIDED)
        self.assertChecks()

    def assertChecks(self):
        ok, out = S.check()
        self.assertTrue(ok, out)


class SessionCompletionRetried(unittest.TestCase):
    """A session's completion slower than its key's lease (a 3 s authorization, leases of 2 s),
    retried by its client with the same key once the lease ends: the retry takes the attempt
    over, finds it settled by the first request, and answers the same 201; the money is
    captured once and never given back."""

    @classmethod
    def setUpClass(cls):
        cls.S = Stack(NUMATIX_HOLD_TTL=4, NUMATIX_PAYMENT_LATENCY_MS=3000, NUMATIX_REAP_INTERVAL=3600).start()

    @classmethod
    def tearDownClass(cls):
        cls.S.cleanup()

    def test_both_answer_201_and_the_money_is_kept(self):
        S = self.S
        plan = S.create_plan(capacity=5, price=2500)
        sess = S.request("POST", "/api/checkout-sessions", {"planId": plan["id"], "expiresIn": 120, "customer": {
            "email": "slow-%s@example.com" % uuid.uuid4().hex[:8], "name": "S"}}, {"Idempotency-Key": str(uuid.uuid4())}).json
        h = {"Idempotency-Key": str(uuid.uuid4()), "Authorization": "Bearer " + sess["clientSecret"]}
        path = "/api/checkout-sessions/%s/complete" % sess["id"]
        # two clients with the same key: whichever claims it first runs its 3 s authorization;
        # the other is told to wait, and once the lease ends takes the attempt over while the
        # first still runs
        def client(out):
            out.append(answered(lambda: S.request("POST", path, {"paymentMethodId": "pm_card_visa"}, h)))
        answers = [[], []]
        threads = [threading.Thread(target=client, args=(answers[i],)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        a, b = answers[0][0], answers[1][0]
        self.assertEqual((a.status, b.status), (201, 201), (a, b))
        self.assertEqual((a.json["id"], b.json["id"]), (sess["id"], sess["id"]))
        r = S.command("reap")
        self.assertEqual(r.returncode, 0, r.stderr)
        logs = S.admin("GET", "/api/audit-logs?limit=100&planId=" + plan["id"]).json["logs"]
        actions = collections.Counter(l["action"] for l in logs)
        self.assertEqual((actions["payment.authorized"], actions["payment.captured"]), (1, 1), actions)
        self.assertEqual((actions["payment.refunded"], actions["payment.voided"]), (0, 0), actions)
        ok, out = S.check()
        self.assertTrue(ok, out)


if __name__ == "__main__":
    unittest.main()
