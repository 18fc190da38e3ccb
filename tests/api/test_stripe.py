"""test_stripe.py - NUMATIX_PROCESSOR=stripe through the faults a real Stripe integration meets,
against the Stripe test server (tests/stripe): a 500 then success under the same
Idempotency-Key, a burst of 429s, Stripe-Should-Retry: false, the connection cut after Stripe
accepted a confirm (the client's retry gets its 201; without one, the reaper finds the
PaymentIntent and voids it), a capture that fails after the settling commit. Each ends with
exact counts of PaymentIntents, captures and voids in the server's books and the ledger's."""

import hashlib
import hmac
import json
import time
import unittest
import uuid

from stack import Stack, StripeServer, answered, until

S = X = None


def setUpModule():
    global S, X
    X = StripeServer.get()
    # holds of 10 s (leases of 5): a purchase whose every Stripe call fails ends well within them, and
    # a retry after its lease still finds its hold; the reaper runs
    # only when a test asks (numatix reap)
    S = Stack(NUMATIX_PROCESSOR="stripe", NUMATIX_HOLD_TTL=10, NUMATIX_REAP_INTERVAL=3600).start()


def tearDownModule():
    S.cleanup()


def intents_of(key):
    """The server's PaymentIntents made for one payment key (its metadata)."""
    return [pi for pi in X.state()["intents"] if pi["metadata"].get("numatix_key") == key]


def events(mode):
    """How the test server sends this stack's events from now on."""
    X.control("POST", "/__control/webhook", {"key": S.env["NUMATIX_STRIPE_SECRET_KEY"], "mode": mode})


class StripeFaults(unittest.TestCase):
    def setUp(self):
        X.control("DELETE", "/__control/faults")
        self.addCleanup(X.control, "DELETE", "/__control/faults")
        events("now")
        self.plan = S.create_plan(capacity=10, price=2500)

    def assertOnePaid(self, key, r):
        self.assertEqual(r.status, 201, r)
        pis = intents_of(key)
        self.assertEqual(len(pis), 1, pis)
        self.assertEqual((pis[0]["id"], pis[0]["amount"]), (r.json["paymentId"], 2500))
        return pis[0]

    def assertCaptured(self, key):
        """The one PaymentIntent of key ends captured. Stripe's event ("now") may settle the
        purchase before the request does; then the request replays the stored 201 while the
        event's handler is still capturing, so the capture is waited for, not assumed."""
        until(lambda: [pi["status"] for pi in intents_of(key)] == ["succeeded"], timeout=30,
              what="the capture of " + key)

    def assertChecks(self):
        ok, out = S.check()
        self.assertTrue(ok, out)

    def test_500_then_success_under_the_same_key_charges_once(self):
        X.fault("POST /v1/payment_intents", status=500, times=2)
        key = str(uuid.uuid4())
        pi = self.assertOnePaid(key, S.purchase(self.plan["id"], key=key))
        self.assertCaptured(key)
        self.assertEqual(pi["capture_method"], "manual")
        self.assertChecks()

    def test_a_burst_of_429s_is_waited_out(self):
        X.fault("POST /v1/payment_intents", status=429, type="rate_limit_error", times=3)
        key = str(uuid.uuid4())
        self.assertOnePaid(key, S.purchase(self.plan["id"], key=key))
        self.assertChecks()

    def test_should_retry_false_is_not_retried_and_the_clients_retry_settles(self):
        X.fault("POST /v1/payment_intents", status=500, shouldRetry="false")
        key, email = str(uuid.uuid4()), "retry-%s@example.com" % uuid.uuid4().hex[:8]
        r = S.purchase(self.plan["id"], key=key, email=email)
        self.assertEqual((r.status, r.json["code"]), (503, "SERVICE_UNAVAILABLE"), r)
        self.assertIsNotNone(r.header("Retry-After"))
        self.assertEqual(intents_of(key), [])
        self.assertEqual(S.plan(self.plan["id"])["subscriptions_held"], 1, "the key stays bound to its hold")
        # the retry takes the key over once its lease ends, and pays under the same key
        r = answered(lambda: S.purchase(self.plan["id"], key=key, email=email))
        self.assertOnePaid(key, r)
        self.assertEqual(S.purchase(self.plan["id"], key=key, email=email).header("Idempotent-Replayed"), "true")
        self.assertChecks()

    def test_the_connection_cut_after_a_confirm_is_answered_by_the_retry(self):
        # Stripe ran the confirm; its answer never came back: the client's own retry under the
        # same Idempotency-Key gets the stored answer, the same PaymentIntent
        X.fault("POST /v1/payment_intents", after=True, cut=True)
        key = str(uuid.uuid4())
        self.assertOnePaid(key, S.purchase(self.plan["id"], key=key))
        self.assertCaptured(key)
        self.assertChecks()

    def test_every_answer_lost_and_no_retry_the_reaper_voids_what_stripe_holds(self):
        events("never")   # (with events on, Stripe's own word settles it: StripeEvents)
        X.fault("POST /v1/payment_intents", after=True, cut=True, times=50)
        key, email = str(uuid.uuid4()), "lost-%s@example.com" % uuid.uuid4().hex[:8]
        r = S.purchase(self.plan["id"], key=key, email=email)
        self.assertEqual((r.status, r.json["code"]), (503, "SERVICE_UNAVAILABLE"), r)
        X.control("DELETE", "/__control/faults")
        pis = intents_of(key)
        self.assertEqual([pi["status"] for pi in pis], ["requires_capture"], "Stripe holds the money")
        # the hold ends; the reaper finds the PaymentIntent by its key and releases it
        until(lambda: S.reap() or S.plan(self.plan["id"])["subscriptions_held"] == 0, timeout=30,
              what="the hold expired")
        self.assertEqual([pi["status"] for pi in intents_of(key)], ["canceled"])
        self.assertEqual(S.plan(self.plan["id"])["subscriptions_left"], 10)
        self.assertEqual(len(S.audit("payment.voided", self.plan["id"])), 1)
        self.assertEqual(S.audit("payment.captured", self.plan["id"]), [])
        # the late retry is told its hold expired, and nothing is charged again
        late = S.purchase(self.plan["id"], key=key, email=email)
        self.assertEqual((late.status, late.json["code"]), (409, "HOLD_EXPIRED"), late)
        self.assertEqual(len(intents_of(key)), 1)
        self.assertChecks()

    def test_a_capture_that_fails_after_the_settle_is_taken_by_the_reaper_once(self):
        X.fault("POST /v1/payment_intents/", status=500, times=50)
        key = str(uuid.uuid4())
        r = S.purchase(self.plan["id"], key=key)
        pi = self.assertOnePaid(key, r)
        self.assertEqual(pi["status"], "requires_capture", "sold: the capture is left to the reaper")
        X.control("DELETE", "/__control/faults")
        S.reap()
        S.reap()
        self.assertEqual(intents_of(key)[0]["status"], "succeeded")
        captured = S.audit("payment.captured", self.plan["id"])
        self.assertEqual([c["resourceId"] for c in captured], [pi["id"]])
        self.assertChecks()

    def test_a_payment_method_stripe_does_not_know_is_a_400_and_gives_the_seat_back(self):
        key = str(uuid.uuid4())
        r = S.purchase(self.plan["id"], key=key, method="pm_card_noSuchCard")
        self.assertEqual((r.status, r.json["code"]), (400, "VALIDATION_ERROR"), r)
        self.assertEqual(r.json.get("details", {}).get("field"), "paymentMethodId", r)
        self.assertEqual(S.plan(self.plan["id"])["subscriptions_left"], 10)
        self.assertEqual([pi["status"] for pi in intents_of(key)], ["requires_confirmation"])
        self.assertChecks()

    def test_a_decline_reads_stripes_decline_code(self):
        r = S.purchase(self.plan["id"], method="pm_card_chargeDeclinedExpiredCard")
        self.assertEqual((r.status, r.json["code"], r.json["details"]["declineCode"]),
                         (402, "PAYMENT_FAILED", "expired_card"), r)
        self.assertEqual(S.plan(self.plan["id"])["subscriptions_left"], 10)
        self.assertChecks()


def signed(body, secret=None, t=None):
    secret = secret or S.env["NUMATIX_STRIPE_WEBHOOK_SECRET"]
    t = int(time.time()) if t is None else t
    mac = hmac.new(secret.encode(), b"%d." % t + body, hashlib.sha256).hexdigest()
    return "t=%d,v1=%s" % (t, mac)


def post_event(body, signature):
    h = {"Content-Type": "application/json"}
    if signature is not None:
        h["Stripe-Signature"] = signature
    return S.request("POST", "/api/stripe/webhook", headers=h, raw=body)


class StripeEvents(unittest.TestCase):
    def setUp(self):
        X.control("DELETE", "/__control/faults")
        self.addCleanup(X.control, "DELETE", "/__control/faults")
        self.addCleanup(events, "now")
        self.plan = S.create_plan(capacity=10, price=2500)

    def assertChecks(self):
        ok, out = S.check()
        self.assertTrue(ok, out)

    def test_a_bad_stale_or_missing_signature_changes_nothing(self):
        events("now")
        key = str(uuid.uuid4())
        r = S.purchase(self.plan["id"], key=key)
        self.assertEqual(r.status, 201, r)
        pi = intents_of(key)[0]
        body = json.dumps({"id": "evt_" + uuid.uuid4().hex, "type": "charge.dispute.created",
                           "data": {"object": {"id": "dp_1", "object": "dispute", "payment_intent": pi["id"],
                                               "amount": 2500}}}).encode()
        head = S.feed_head()
        for sig in (None, "", "t=1,v1=00", signed(body, secret="whsec_" + "0" * 32), signed(body, t=int(time.time()) - 301),
                    signed(body)[:-1] + "0", "v1=" + signed(body).split("v1=")[1]):
            e = post_event(body, sig)
            self.assertEqual((e.status, e.json["code"]), (400, "INVALID_SIGNATURE"), (sig, e))
        self.assertEqual(S.events_after(head), [])
        # the same body, signed: flagged once, however often Stripe sends it
        for _ in range(2):
            e = post_event(body, signed(body))
            self.assertEqual(e.status, 200, e)
        flags = S.audit("subscription.disputed", self.plan["id"])
        self.assertEqual([f["resourceId"] for f in flags], ["dp_1"])
        self.assertEqual(S.plan(self.plan["id"])["subscriptions_left"], 9, "a dispute moves no seat")
        self.assertChecks()

    def test_the_event_before_the_lost_answer_settles_and_the_retry_gets_its_201(self):
        events("before")
        X.fault("POST /v1/payment_intents", after=True, cut=True, times=50)
        key, email = str(uuid.uuid4()), "evt-%s@example.com" % uuid.uuid4().hex[:8]
        r = S.purchase(self.plan["id"], key=key, email=email)
        self.assertEqual(r.status, 503, r)
        X.control("DELETE", "/__control/faults")
        # Stripe's event came first and settled it: the retry replays that 201
        again = S.purchase(self.plan["id"], key=key, email=email)
        self.assertEqual(again.status, 201, again)
        self.assertEqual(again.header("Idempotent-Replayed"), "true")
        pis = intents_of(key)
        self.assertEqual([(pi["id"], pi["status"]) for pi in pis], [(again.json["paymentId"], "succeeded")])
        self.assertEqual(len(S.audit("payment.authorized", self.plan["id"])), 1)
        self.assertEqual(S.plan(self.plan["id"])["subscriptions_left"], 9)
        self.assertChecks()

    def session(self):
        sess = S.request("POST", "/api/checkout-sessions", {"planId": self.plan["id"], "customer": {
            "email": "sess-%s@example.com" % uuid.uuid4().hex[:8], "name": "S"}}, {"Idempotency-Key": str(uuid.uuid4())}).json
        h = {"Idempotency-Key": str(uuid.uuid4()), "Authorization": "Bearer " + sess["clientSecret"]}
        return sess, h, "/api/checkout-sessions/%s/complete" % sess["id"]

    def test_a_session_completed_by_its_event_first_keeps_its_money(self):
        # the event settles the completion before Stripe answers it: the request's own settle
        # finds the session completed by this very attempt, and answers its 201
        events("before")
        sess, h, path = self.session()
        r = S.request("POST", path, {"paymentMethodId": "pm_card_visa"}, h)
        self.assertEqual(r.status, 201, r)
        again = S.request("POST", path, {"paymentMethodId": "pm_card_visa"}, h)
        self.assertEqual((again.status, again.raw), (201, r.raw))
        pis = intents_of(h["Idempotency-Key"])
        self.assertEqual([(pi["status"], pi["latest_charge"]) for pi in pis], [("succeeded", pis[0]["latest_charge"])])
        state = X.state()
        self.assertEqual([rf for rf in state["refunds"] if rf["payment_intent"] == pis[0]["id"]], [])
        self.assertEqual(S.audit("payment.refunded", self.plan["id"]) + S.audit("payment.voided", self.plan["id"]), [])
        self.assertChecks()

    def test_a_declined_session_completion_whose_event_came_first_answers_402(self):
        events("before")
        sess, h, path = self.session()
        r = S.request("POST", path, {"paymentMethodId": "pm_card_chargeDeclined"}, h)
        self.assertEqual((r.status, r.json["code"]), (402, "PAYMENT_FAILED"), r)
        self.assertEqual(S.request("GET", "/api/checkout-sessions/" + sess["id"],
                                   headers={"Authorization": "Bearer " + sess["clientSecret"]}).json["status"], "open")
        self.assertChecks()

    def test_events_twice_and_out_of_order_change_nothing(self):
        events("twice")
        r = S.purchase(self.plan["id"])
        self.assertEqual(r.status, 201, r)
        events("held")
        r2 = S.purchase(self.plan["id"])
        self.assertEqual(r2.status, 201, r2)
        sent = X.control("POST", "/__control/webhook/flush", {"key": S.env["NUMATIX_STRIPE_SECRET_KEY"]})
        self.assertEqual(sent["sent"], ["payment_intent.succeeded", "payment_intent.amount_capturable_updated"])
        self.assertEqual(sent["statuses"], [200, 200])
        self.assertEqual(len(S.audit("payment.authorized", self.plan["id"])), 2)
        self.assertEqual(S.plan(self.plan["id"])["subscriptions_left"], 8)
        self.assertChecks()


class ResumedPlanChange(unittest.TestCase):
    """A plan change whose every answer from Stripe was lost, retried by its client after the
    key's lease: the difference has moved on with the clock (a plan of a million dollars a
    month: a cent every 26 ms), and asked again Stripe would refuse another amount under the
    same key. The resumed change settles with the authorization its first attempt made."""

    @classmethod
    def setUpClass(cls):
        cls.S = Stack(NUMATIX_PROCESSOR="stripe", NUMATIX_HOLD_TTL=20, NUMATIX_REAP_INTERVAL=3600).start()

    @classmethod
    def tearDownClass(cls):
        cls.S.cleanup()

    def test_the_first_authorization_is_kept(self):
        S = self.S
        a = S.create_plan(capacity=2, price=1000)
        b = S.create_plan(capacity=2, price=100000000)
        sub = S.purchase(a["id"]).json
        X.fault("POST /v1/payment_intents", after=True, cut=True, times=50)
        self.addCleanup(X.control, "DELETE", "/__control/faults")
        key = str(uuid.uuid4())
        h = {"Authorization": "Bearer " + sub["accessToken"], "Idempotency-Key": key}
        body = {"planId": b["id"], "paymentMethodId": "pm_card_visa"}
        r = S.request("POST", "/api/subscriptions/%s/change-plan" % sub["id"], body, h)
        self.assertEqual(r.status, 503, r)
        X.control("DELETE", "/__control/faults")
        r = answered(lambda: S.request("POST", "/api/subscriptions/%s/change-plan" % sub["id"], body, h))
        self.assertEqual(r.status, 200, r)
        pis = [pi for pi in X.state()["intents"] if pi["metadata"].get("numatix_key") == key]
        self.assertEqual([(pi["id"], pi["status"]) for pi in pis], [(r.json["paymentId"], "succeeded")])
        ok, out = S.check()
        self.assertTrue(ok, out)


class StripeSettings(unittest.TestCase):
    def test_malformed_settings_are_refused_at_start_and_never_echoed(self):
        secret = "sk_live_" + "x" * 4 + "!"
        for name, value, words in [
                ("NUMATIX_STRIPE_SECRET_KEY", secret, "secret (sk_) or restricted (rk_) key"),
                ("NUMATIX_STRIPE_SECRET_KEY", "pk_test_0123456789", "secret (sk_) or restricted (rk_) key"),
                ("NUMATIX_STRIPE_WEBHOOK_SECRET", "whsec_0123456789,nope", "whsec_"),
                ("NUMATIX_STRIPE_API_BASE", "ftp://api.stripe.com", "http(s) URL"),
                ("NUMATIX_CURRENCY", "USD", "ISO 4217")]:
            env = dict(S.env, NUMATIX_PROCESSOR="stripe", NUMATIX_STRIPE_SECRET_KEY="sk_test_0123456789")
            env[name] = value
            r = S.command_env(env, "check")
            self.assertNotEqual(r.returncode, 0, (name, value))
            self.assertIn(words, r.stderr, (name, r.stderr))
            if "SECRET" in name:
                self.assertNotIn(value, r.stdout + r.stderr)
        env = dict(S.env, NUMATIX_PROCESSOR="stripe")
        env.pop("NUMATIX_STRIPE_SECRET_KEY", None)
        r = S.command_env(env, "check")
        self.assertIn("needs NUMATIX_STRIPE_SECRET_KEY", r.stderr)


if __name__ == "__main__":
    unittest.main()
