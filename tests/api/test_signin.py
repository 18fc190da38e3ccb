"""A customer's sign-in by an email link, through a real SMTP server on loopback (aiosmtpd): the
same 202 for every address, at most 3 links per address per 15 minutes, a link that works once
and for 15 minutes (the server's clock moved by libfaketime), exchanged by a POST for a session
of 24 hours that reaches the customer's own subscriptions and entries and nobody else's (404),
ended at once by DELETE. The link's token is in the mail and nowhere else: not in the outbox's
row, not in any answer kept."""
import threading
import unittest
import uuid

from smtp_sink import Mailbox
from stack import Clock, Stack, until

PUBLIC = "https://seats.example.com"


class SignIn(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.box = Mailbox().start()
        cls.clock = Clock()
        cls.S = Stack(NUMATIX_SMTP_URL=cls.box.url, NUMATIX_PUBLIC_URL=PUBLIC,
                      NUMATIX_MAIL_FROM="Numatix Seats <seats@example.com>", NUMATIX_RENEW_INTERVAL=3600,
                      **cls.clock.env()).start()
        cls.plan = cls.S.create_plan(capacity=50, price=900)

    @classmethod
    def tearDownClass(cls):
        cls.S.cleanup()
        cls.box.stop()
        cls.clock.cleanup()

    def setUp(self):
        self.addCleanup(self.assertChecks)

    def assertChecks(self):
        ok, out = self.S.check()
        self.assertTrue(ok, out)

    def customer(self):
        """A buyer with a subscription: (email, the purchase's answer)."""
        email = "Sign-%s@Example.com" % uuid.uuid4().hex[:10]
        r = self.S.purchase(self.plan["id"], email=email)
        self.assertEqual(r.status, 201, r)
        return email, r.json

    def login(self, email):
        r = self.S.request("POST", "/api/customer/login", {"email": email})
        self.assertEqual((r.status, r.json), (202, {"status": "sent"}), r)

    def links(self, email):
        return self.box.login_links(email)

    def link(self, email, n=1):
        return self.box.login_link(email, n)

    def exchange(self, token):
        return self.S.request("POST", "/api/customer/sessions", {"loginToken": token})

    def signed_in(self, email):
        n = len(self.links(email))     # counted before: the new link may come at once
        self.login(email)
        r = self.exchange(self.link(email, n + 1))
        self.assertEqual(r.status, 201, r)
        return {"Authorization": "Bearer " + r.json["sessionToken"]}

    def login_rows(self, customer_id):
        r = self.S.admin("GET", "/api/mail?limit=200")
        self.assertEqual(r.status, 200, r)
        return [m for m in r.json["mail"] if m["customerId"] == customer_id and m["kind"] == "login"]

    def test_a_link_signs_in_once_and_the_session_reaches_the_customers_own(self):
        email, sub = self.customer()
        self.login(email.upper())      # any case of the address
        token = self.link(email)
        [mail] = [m for r, m, _ in self.box.messages()
                  if m["subject"] == "Your sign-in link" and email.lower() in [x.lower() for x in r]]
        text = mail.get_body(("plain",)).get_content()
        self.assertRegex(text, r"It works once, until \d{4}-\d\d-\d\d \d\d:\d\d UTC\.")
        [row] = self.login_rows(sub["customerId"])
        self.assertNotIn(token, str(row))
        # its secret part: the last 43 characters (base64url, which may hold "_" itself)
        self.assertNotIn(token[-43:], str(row), "the token's secret part is not in its row")
        self.assertEqual(len(self.S.audit("customer.login_requested")) >= 1, True)
        r = self.exchange(token)
        self.assertEqual(r.status, 201, r)
        self.assertTrue(r.json["sessionToken"].startswith("cse_"), r)
        self.assertEqual(r.json["customerId"], sub["customerId"])
        again = self.exchange(token)
        self.assertEqual((again.status, again.json["code"]), (401, "UNAUTHORIZED"), "a link works once")
        h = {"Authorization": "Bearer " + r.json["sessionToken"]}
        me = self.S.request("GET", "/api/customer", headers=h)
        self.assertEqual((me.status, me.json["id"], me.json["email"].lower()), (200, sub["customerId"], email.lower()))
        mine = self.S.request("GET", "/api/customer/subscriptions", headers=h)
        self.assertEqual([s["id"] for s in mine.json["subscriptions"]], [sub["id"]])
        got = self.S.request("GET", "/api/subscriptions/" + sub["id"], headers=h)
        self.assertEqual((got.status, got.json["id"]), (200, sub["id"]))
        # the session acts on the customer's own subscription as its access token would
        c = self.S.request("POST", "/api/subscriptions/%s/cancel" % sub["id"], {}, h)
        self.assertEqual((c.status, c.json["status"]), (200, "cancelled"), c)
        self.assertEqual(self.S.audit("subscription.cancelled", self.plan["id"])[0]["actorId"], sub["customerId"])
        # ended at once
        self.assertEqual(self.S.request("DELETE", "/api/customer/sessions/current", headers=h).status, 204)
        gone = self.S.request("GET", "/api/customer", headers=h)
        self.assertEqual((gone.status, gone.json["code"]), (401, "UNAUTHORIZED"))
        self.assertEqual(self.S.request("GET", "/api/subscriptions/" + sub["id"], headers=h).status, 401)

    def test_a_new_access_token_ends_the_old_one_at_once(self):
        email, sub = self.customer()
        old = {"Authorization": "Bearer " + sub["accessToken"]}
        path = "/api/subscriptions/%s/access-token" % sub["id"]
        # the token's holder cannot make another; the customer can, and the admin
        r = self.S.request("POST", path, {}, dict(old, **{"Idempotency-Key": str(uuid.uuid4())}))
        self.assertEqual((r.status, r.json["code"]), (403, "FORBIDDEN"), r)
        h = self.signed_in(email)
        key = {"Idempotency-Key": str(uuid.uuid4())}
        r = self.S.request("POST", path, {}, dict(h, **key))
        self.assertEqual((r.status, r.json["id"]), (200, sub["id"]), r)
        new = r.json["accessToken"]
        self.assertTrue(new.startswith("sat_%s_" % sub["id"]) and new != sub["accessToken"])
        self.assertEqual(self.S.request("GET", "/api/subscriptions/" + sub["id"], headers=old).status, 401)
        got = self.S.request("GET", "/api/subscriptions/" + sub["id"], headers={"Authorization": "Bearer " + new})
        self.assertEqual((got.status, got.json["status"]), (200, "active"))
        # its key replays the same answer (kept sealed), and makes no other token
        again = self.S.request("POST", path, {}, dict(h, **key))
        self.assertEqual((again.status, again.json["accessToken"], again.header("Idempotent-Replayed")),
                         (200, new, "true"))
        self.assertEqual(len(self.S.audit("subscription.token_replaced", self.plan["id"])), 1)
        r = self.S.admin("POST", "/api/subscriptions/%s/access-token" % sub["id"], {})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.S.request("GET", "/api/subscriptions/" + sub["id"],
                                        headers={"Authorization": "Bearer " + new}).status, 401)
        # nobody else's
        _, theirs = self.customer()
        r = self.S.request("POST", "/api/subscriptions/%s/access-token" % theirs["id"], {}, h)
        self.assertEqual((r.status, r.json["code"]), (404, "SUBSCRIPTION_NOT_FOUND"), r)

    def test_the_customers_receipts_and_places_in_line(self):
        email, sub = self.customer()
        full = self.S.create_plan(capacity=1, price=300, waitlist_enabled=True)
        self.assertEqual(self.S.purchase(full["id"]).status, 201)
        r = self.S.request("POST", "/api/plans/%s/waitlist" % full["id"],
                           {"customerId": sub["customerId"]}, {"Idempotency-Key": str(uuid.uuid4())})
        self.assertEqual(r.status, 201, r)
        entry = r.json
        h = self.signed_in(email)
        pays = self.S.request("GET", "/api/customer/payments", headers=h)
        self.assertEqual(pays.status, 200, pays)
        self.assertEqual([(p["id"], p["kind"], p["amountCents"], p["subscriptionId"]) for p in pays.json["payments"]],
                         [(sub["paymentId"], "charge", 900, sub["id"])])
        line = self.S.request("GET", "/api/customer/waitlist", headers=h)
        self.assertEqual([(w["id"], w["status"], w["position"]) for w in line.json["entries"]],
                         [(entry["id"], "waiting", 1)])
        # the entry's own routes take the session too, and leave it
        left = self.S.request("POST", "/api/waitlist/%s/leave" % entry["id"], {}, h)
        self.assertEqual((left.status, left.json["status"]), (200, "left"), left)
        # someone else's receipts are not theirs to see
        other, _ = self.customer()
        h2 = self.signed_in(other)
        self.assertEqual(len(self.S.request("GET", "/api/customer/payments", headers=h2).json["payments"]), 1)
        self.assertEqual(self.S.request("GET", "/api/customer/waitlist", headers=h2).json["entries"], [])
        self.assertEqual(self.S.request("GET", "/api/waitlist/" + entry["id"], headers=h2).status, 404)
        self.assertEqual(self.S.request("GET", "/api/customer/payments?limit=0", headers=h).status, 400)

    def test_a_session_on_every_route_never_reaches_another_customers_data(self):
        """Customer A's session on every route the server has, against customer B's subscription,
        session, entry and customer: never a 2xx on B's, never B's data in an answer."""
        line = self.S.create_plan(capacity=1, waitlist_enabled=True)
        self.S.purchase(line["id"])

        def buyer(tag):
            email = "%s-%s@example.com" % (tag, uuid.uuid4().hex[:8])
            sub = self.S.purchase(self.plan["id"], email=email).json
            sess = self.S.request("POST", "/api/checkout-sessions", {"planId": self.plan["id"], "customer": {
                "email": email, "name": tag}}, {"Idempotency-Key": str(uuid.uuid4())}).json
            entry = self.S.request("POST", "/api/plans/%s/waitlist" % line["id"], {"customer": {"email": email, "name": tag}},
                                   {"Idempotency-Key": str(uuid.uuid4())}).json
            return {"email": email, "sub": sub, "session": sess, "entry": entry}

        a, b = buyer("a"), buyer("b")
        h = self.signed_in(a["email"])
        ids = {"subscriptions": b["sub"]["id"], "checkout-sessions": b["session"]["id"],
               "customers": b["sub"]["customerId"], "plans": self.plan["id"], "waitlist": b["entry"]["id"]}
        # anyone's routes, and the customer's own (which name no one else)
        skip = {("GET", "/api/health"), ("GET", "/api/plans"), ("GET", "/api/plans/:id"), ("GET", "/api/plans/:id/stats"),
                ("POST", "/api/subscriptions/purchase"), ("POST", "/api/checkout-sessions"), ("GET", "/api/metrics"),
                ("POST", "/api/plans/:id/waitlist"), ("POST", "/api/stripe/webhook"), ("POST", "/api/customer/login"),
                ("POST", "/api/customer/sessions"), ("DELETE", "/api/customer/sessions/current")}
        routes = [tuple(l.split()) for l in self.S.command("routes").stdout.splitlines() if l.strip()]
        tried = 0
        for method, pattern in routes:
            if (method, pattern) in skip:
                continue
            path = pattern.replace(":id", ids.get(pattern.split("/")[2], "0" * 24))
            r = self.S.request(method, path, {} if method in ("POST", "PATCH") else None,
                               dict(h, **{"Idempotency-Key": str(uuid.uuid4())}))
            if pattern.startswith("/api/customer/") or pattern == "/api/customer":
                self.assertEqual(r.status, 200, (method, path, r))     # A's own
            else:
                self.assertIn(r.status, (401, 403, 404), (method, path, r))
            for secret in (b["email"], b["sub"]["accessToken"], b["session"]["clientSecret"], b["entry"]["accessToken"],
                           b["sub"]["id"], b["entry"]["id"]):
                self.assertNotIn(secret, r.raw, (method, path))
            tried += 1
        self.assertGreaterEqual(tried, 25)
        # nothing of B's changed
        r = self.S.request("GET", "/api/subscriptions/" + b["sub"]["id"],
                           headers={"Authorization": "Bearer " + b["sub"]["accessToken"]})
        self.assertEqual(r.json["status"], "active")

    def test_another_customers_resources_are_not_found(self):
        email, _ = self.customer()
        _, theirs = self.customer()
        h = self.signed_in(email)
        for method, path, body in (("GET", "/api/subscriptions/" + theirs["id"], None),
                                   ("POST", "/api/subscriptions/%s/cancel" % theirs["id"], {}),
                                   ("GET", "/api/subscriptions/000000000000000000000000", None),
                                   ("GET", "/api/subscriptions/not-an-id", None)):
            r = self.S.request(method, path, body, h)
            self.assertEqual((r.status, r.json["code"]), (404, "SUBSCRIPTION_NOT_FOUND"), (method, path, r))
        r = self.S.request("GET", "/api/subscriptions/" + theirs["id"],
                           headers={"Authorization": "Bearer " + theirs["accessToken"]})
        self.assertEqual(r.json["status"], "active", "nothing of theirs changed")
        # nor an admin's route, nor a checkout session's
        self.assertEqual(self.S.request("GET", "/api/audit-logs", headers=h).status, 403)
        # and the customer routes are a customer's: neither the admin's nor an access token's
        self.assertEqual(self.S.admin("GET", "/api/customer").status, 403)
        self.assertEqual(self.S.request("GET", "/api/customer", headers={
            "Authorization": "Bearer " + theirs["accessToken"]}).status, 403)

    def test_every_address_gets_the_same_answer_and_only_a_customer_a_mail(self):
        stranger = "nobody-%s@example.com" % uuid.uuid4().hex[:10]
        email, sub = self.customer()
        # byte for byte alike, but for the trace id each answer has
        answers = [self.S.request("POST", "/api/customer/login", {"email": e}) for e in (stranger, email)]
        self.assertEqual([(r.status, r.raw) for r in answers], [(202, answers[0].raw)] * 2)
        self.assertEqual(sorted(answers[0].headers), sorted(answers[1].headers))
        self.link(email)
        # mails go oldest first: the stranger's would have gone before the customer's
        self.assertEqual(self.box.to(stranger), [])
        self.assertEqual(len(self.login_rows(sub["customerId"])), 1)

    def test_three_links_per_address_per_window(self):
        email, sub = self.customer()
        for _ in range(5):
            self.login(email)
        self.assertEqual(len(self.login_rows(sub["customerId"])), 3)
        self.link(email, 3)
        # the window moves on: a fourth link once the first is 15 minutes old
        self.clock.advance(15 * 60 + 1)
        self.login(email)
        self.assertEqual(len(self.login_rows(sub["customerId"])), 4)

    def test_a_link_expires_after_15_minutes(self):
        email, _ = self.customer()
        self.login(email)
        token = self.link(email)
        self.clock.advance(15 * 60 + 1)
        r = self.exchange(token)
        self.assertEqual((r.status, r.json["code"]), (401, "UNAUTHORIZED"), r)

    def test_a_session_lasts_24_hours(self):
        email, _ = self.customer()
        h = self.signed_in(email)
        self.assertEqual(self.S.request("GET", "/api/customer", headers=h).status, 200)
        self.clock.advance(24 * 3600 + 1)
        self.assertEqual(self.S.request("GET", "/api/customer", headers=h).status, 401)

    def test_two_exchanges_of_one_link_race_and_one_wins(self):
        email, _ = self.customer()
        self.login(email)
        token = self.link(email)
        start, out = threading.Barrier(8), []

        def go():
            start.wait()
            out.append(self.exchange(token).status)

        threads = [threading.Thread(target=go) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(sorted(out), [201] + [401] * 7)

    def test_bad_input_is_a_clear_400_and_a_forged_token_a_401(self):
        for body in ({}, {"email": "not-an-address"}, {"email": 7}, {"email": "a@b.c", "extra": 1}):
            r = self.S.request("POST", "/api/customer/login", body)
            self.assertEqual((r.status, r.json["code"]), (400, "VALIDATION_ERROR"), (body, r))
        for body in ({}, {"loginToken": 5}, {"loginToken": ""}):
            r = self.S.request("POST", "/api/customer/sessions", body)
            self.assertEqual((r.status, r.json["code"]), (400, "VALIDATION_ERROR"), (body, r))
        email, _ = self.customer()
        self.login(email)
        token = self.link(email)
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        for t in (forged, "lnk_nonsense", "cse_" + token[4:], "x" * 200):
            r = self.exchange(t)
            self.assertEqual((r.status, r.json["code"]), (401, "UNAUTHORIZED"), (t, r))
        # the real one still works
        self.assertEqual(self.exchange(token).status, 201)
        self.assertEqual(self.S.request("GET", "/api/customer", headers={"Authorization": "Bearer cse_" + "x" * 68}).status,
                         401)


if __name__ == "__main__":
    unittest.main()
