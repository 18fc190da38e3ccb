"""test_api.py - every route and error code of API.md against the real stack (nginx, the
FastCGI pool, SQLite)."""

import os
import socket
import unittest
import uuid

from stack import ADMIN, Stack, until

S = None


def setUpModule():
    global S
    S = Stack().start()


def tearDownModule():
    S.cleanup()



def settled_by_stripes_event(r):
    """Whether a purchase's 201 is the answer Stripe's event stored first: with Stripe, the
    event for its PaymentIntent may settle the purchase before the request's own settle does
    (whichever comes first wins, README "Stripe"), and the request answers what that unit
    stored, replayed byte for byte, its traceId the event's request's. Never with the simulated
    processor, which sends no events."""
    if r.header("Idempotent-Replayed") != "true":
        return False
    assert S.env.get("NUMATIX_PROCESSOR") == "stripe", "a first request answered as a replay: %r" % r
    return True

class Envelope(unittest.TestCase):
    def assertError(self, r, status, code):
        self.assertEqual(r.status, status, r)
        self.assertIsNotNone(r.json, r)
        self.assertEqual(r.json["code"], code, r)
        self.assertTrue(r.json["message"])
        # an answer another request made first (with Stripe, the processor's event may settle a
        # decline before the purchase's own request does) is replayed with that request's trace
        if r.header("Idempotent-Replayed") != "true":
            self.assertEqual(r.json["traceId"], r.header("X-Trace-Id"))
        self.assertTrue(r.header("Content-Type").startswith("application/json"))


class Plans(Envelope):
    def test_create_get_list_stats(self):
        p = S.create_plan(capacity=5, price=2500, description="d", features=["a", "b"], duration_days=7)
        for k in ("id", "name", "description", "price_cents", "duration_days", "total_capacity",
                  "subscriptions_left", "subscriptions_held", "status", "features", "isSoldOut",
                  "occupancyPercentage", "createdAt", "updatedAt"):
            self.assertIn(k, p)
        self.assertEqual(len(p["id"]), 24)
        self.assertEqual((p["subscriptions_left"], p["subscriptions_held"], p["status"]), (5, 0, "active"))
        self.assertEqual(p["features"], ["a", "b"])
        self.assertRegex(p["createdAt"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertEqual(S.plan(p["id"]), p)
        r = S.request("GET", "/api/plans")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json["count"], len(r.json["plans"]))
        self.assertIn(p["id"], [x["id"] for x in r.json["plans"]])
        keys = [(x["price_cents"], x["name"]) for x in r.json["plans"]]
        self.assertEqual(keys, sorted(keys))
        st = S.request("GET", "/api/plans/%s/stats" % p["id"]).json
        self.assertEqual(st, {"planId": p["id"], "name": p["name"], "totalCapacity": 5,
                              "subscriptionsLeft": 5, "subscriptionsHeld": 0, "subscriptionsSold": 0,
                              "heldByKind": {"payments": 0, "checkoutSessions": 0}, "maxPerOrder": 10,
                              "maxPerCustomer": None, "waiting": 0, "occupancyPercentage": 0, "isSoldOut": False})

    def test_defaults(self):
        r = S.admin("POST", "/api/plans", {"name": "Defaults " + uuid.uuid4().hex, "price_cents": 0,
                                            "total_capacity": 1})
        self.assertEqual(r.status, 201, r)
        self.assertEqual((r.json["duration_days"], r.json["features"], r.json["description"]), (30, [], ""))

    def test_status_filter(self):
        p = S.create_plan()
        r = S.admin("PATCH", "/api/plans/" + p["id"], {"status": "inactive"})
        self.assertEqual(r.json["status"], "inactive")
        ids = lambda q: [x["id"] for x in S.request("GET", "/api/plans" + q).json["plans"]]
        self.assertNotIn(p["id"], ids(""))
        self.assertIn(p["id"], ids("?status=inactive"))
        self.assertIn(p["id"], ids("?status=all"))
        self.assertError(S.request("GET", "/api/plans?status=sold"), 400, "VALIDATION_ERROR")

    def test_not_found(self):
        self.assertError(S.request("GET", "/api/plans/" + "0" * 24), 404, "PLAN_NOT_FOUND")
        self.assertError(S.request("GET", "/api/plans/not-an-id"), 404, "PLAN_NOT_FOUND")
        self.assertError(S.request("GET", "/api/plans/%7B%22$gt%22:%22%22%7D"), 404, "PLAN_NOT_FOUND")
        self.assertError(S.request("GET", "/api/plans/" + "0" * 24 + "/stats"), 404, "PLAN_NOT_FOUND")
        self.assertError(S.admin("PATCH", "/api/plans/" + "0" * 24, {"price_cents": 1}), 404, "PLAN_NOT_FOUND")

    def test_name_taken(self):
        p = S.create_plan()
        self.assertError(S.admin("POST", "/api/plans", {"name": p["name"], "price_cents": 1,
                                                       "total_capacity": 1}), 409, "PLAN_NAME_TAKEN")
        q = S.create_plan()
        self.assertError(S.admin("PATCH", "/api/plans/" + q["id"], {"name": p["name"]}), 409, "PLAN_NAME_TAKEN")

    def test_admin_only(self):
        body = {"name": "x" + uuid.uuid4().hex, "price_cents": 1, "total_capacity": 1}
        self.assertError(S.request("POST", "/api/plans", body), 401, "UNAUTHORIZED")
        self.assertError(S.request("POST", "/api/plans", body, {"Authorization": "Bearer wrong"}), 401, "UNAUTHORIZED")
        self.assertError(S.request("POST", "/api/plans", body, {"Authorization": "Basic " + ADMIN}), 401, "UNAUTHORIZED")
        p = S.create_plan()
        sub = S.purchase(p["id"]).json
        self.assertError(S.request("POST", "/api/plans", body, {"Authorization": "Bearer " + sub["accessToken"]}),
                         403, "FORBIDDEN")
        self.assertError(S.request("PATCH", "/api/plans/" + p["id"], {"price_cents": 5}), 401, "UNAUTHORIZED")
        self.assertEqual(S.plan(p["id"])["price_cents"], p["price_cents"])

    def test_validation(self):
        base = {"name": "V " + uuid.uuid4().hex, "price_cents": 100, "total_capacity": 3}
        cases = [
            ({}, "name"), (dict(base, name=""), "name"), (dict(base, name="x" * 101), "name"),
            (dict(base, name="   "), "name"), (dict(base, price_cents=-1), "price_cents"),
            (dict(base, price_cents=1.5), "price_cents"), (dict(base, price_cents="100"), "price_cents"),
            (dict(base, total_capacity=0), "total_capacity"), (dict(base, total_capacity=10**9 + 1), "total_capacity"),
            (dict(base, total_capacity=True), "total_capacity"), (dict(base, duration_days=0), "duration_days"),
            (dict(base, description="x" * 501), "description"), (dict(base, features="a"), "features"),
            (dict(base, features=[1]), "features"), (dict(base, extra=1), "extra"),
            (dict(base, name={"$gt": ""}), "name"), (dict(base, total_capacity=2**70), "total_capacity"),
        ]
        for body, field in cases:
            r = S.admin("POST", "/api/plans", body)
            self.assertError(r, 400, "VALIDATION_ERROR")
            self.assertEqual(r.json["details"]["field"], field, (body, r))
            self.assertTrue(r.json["details"]["reason"])
        # a name of 100 characters counts characters, not bytes
        r = S.admin("POST", "/api/plans", dict(base, name="é" * 100))
        self.assertEqual(r.status, 201, r)

    def test_capacity_change(self):
        p = S.create_plan(capacity=3)
        for _ in range(2):
            self.assertEqual(S.purchase(p["id"]).status, 201)
        r = S.admin("PATCH", "/api/plans/" + p["id"], {"total_capacity": 5})
        self.assertEqual((r.status, r.json["total_capacity"], r.json["subscriptions_left"]), (200, 5, 3), r)
        r = S.admin("PATCH", "/api/plans/" + p["id"], {"total_capacity": 2})
        self.assertEqual((r.status, r.json["subscriptions_left"], r.json["isSoldOut"]), (200, 0, True), r)
        self.assertError(S.admin("PATCH", "/api/plans/" + p["id"], {"total_capacity": 1}), 409, "CAPACITY_BELOW_SOLD")
        self.assertEqual(S.plan(p["id"])["total_capacity"], 2)
        self.assertError(S.admin("PATCH", "/api/plans/" + p["id"], {}), 400, "VALIDATION_ERROR")
        self.assertError(S.admin("PATCH", "/api/plans/" + p["id"], {"subscriptions_left": 9}), 400, "VALIDATION_ERROR")
        self.assertError(S.admin("PATCH", "/api/plans/" + p["id"], {"status": "gone"}), 400, "VALIDATION_ERROR")

    def test_update_fields(self):
        p = S.create_plan()
        r = S.admin("PATCH", "/api/plans/" + p["id"], {"description": "new", "price_cents": 7,
                                                       "duration_days": 9, "features": ["z"]})
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.json["description"], r.json["price_cents"], r.json["duration_days"],
                          r.json["features"]), ("new", 7, 9, ["z"]))


class Routing(Envelope):
    def test_unknown_route(self):
        self.assertError(S.request("GET", "/api/nothing"), 404, "NOT_FOUND")
        self.assertError(S.request("GET", "/api/plans/x/y/z"), 404, "NOT_FOUND")
        self.assertError(S.request("GET", "/api/../api/plans/x/y"), 404, "NOT_FOUND")

    def test_method_not_allowed(self):
        r = S.request("DELETE", "/api/plans")
        self.assertError(r, 405, "METHOD_NOT_ALLOWED")
        self.assertEqual(r.header("Allow"), "GET, HEAD, POST")
        r = S.request("PUT", "/api/plans/" + "0" * 24)
        self.assertError(r, 405, "METHOD_NOT_ALLOWED")
        self.assertEqual(r.header("Allow"), "GET, HEAD, PATCH")
        self.assertEqual(S.request("HEAD", "/api/subscriptions/purchase", direct=True).status, 401)
        r = S.request("HEAD", "/api/customers", direct=True)
        self.assertEqual((r.status, r.header("Allow"), r.raw), (405, "POST", ""))
        self.assertEqual(S.request("GET", "/api/subscriptions/purchase").status, 401)

    def test_head_on_every_get_route(self):
        # RFC 9110: a server that supports GET supports HEAD: the same status and headers, no body
        p = S.create_plan(capacity=3)
        sub = S.purchase(p["id"]).json
        ids = {"plans": p["id"], "subscriptions": sub["id"], "customers": sub["customerId"],
               "checkout-sessions": sub["id"], "waitlist": "0" * 24, "webhook-endpoints": "0" * 24}
        routes = [l.split() for l in S.command("routes").stdout.splitlines() if l.startswith("GET ")]
        self.assertGreaterEqual(len(routes), 14)
        for _, pattern in routes:
            path = pattern.replace(":id", ids.get(pattern.split("/")[2], "0" * 24))
            for auth in ({}, {"Authorization": "Bearer " + ADMIN}):
                # (Prism answers HEAD with a 500 of its own: past it, straight to nginx). What a
                # route answers may change meanwhile (the reaper records captures, the audit log
                # grows): the HEAD is judged against a GET before it and one after that agree
                def around():
                    before = S.request("GET", path, headers=auth, direct=True)
                    h = S.request("HEAD", path, headers=auth, direct=True)
                    after = S.request("GET", path, headers=auth, direct=True)
                    same = (before.status, len(before.raw.encode())) == (after.status, len(after.raw.encode()))
                    return (before, h) if same or pattern == "/api/metrics" else None
                get, head = until(around, what="%s unchanged around its HEAD" % path)
                self.assertEqual(head.status, get.status, path)
                self.assertEqual(head.raw, "", path)
                for h in ("Content-Type", "Cache-Control", "Allow", "Retry-After"):
                    self.assertEqual(head.header(h), get.header(h), (path, h))
                self.assertTrue(head.header("X-Trace-Id"), path)
                # the length of the body GET sends (the metrics change between two reads)
                if pattern != "/api/metrics":
                    self.assertEqual(int(head.header("Content-Length")), len(get.raw.encode()), path)
        # on the wire: nothing after the head, and the connection stays usable
        with socket.create_connection(("127.0.0.1", S.direct_port), timeout=30) as c:
            c.sendall(b"HEAD /api/plans HTTP/1.1\r\nHost: t\r\n\r\nGET /api/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            raw = b""
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    break
                raw += chunk
        first, rest = raw.split(b"\r\n\r\n", 1)
        self.assertTrue(first.startswith(b"HTTP/1.1 200"), first)
        self.assertTrue(rest.startswith(b"HTTP/1.1 200"), rest[:200])

    def test_trace_id(self):
        r = S.request("GET", "/api/health", headers={"X-Trace-Id": "my.trace-1_A"})
        self.assertEqual(r.header("X-Trace-Id"), "my.trace-1_A")
        r = S.request("GET", "/api/nothing", headers={"X-Trace-Id": "bad trace!"})
        self.assertNotEqual(r.header("X-Trace-Id"), "bad trace!")
        self.assertEqual(r.json["traceId"], r.header("X-Trace-Id"))
        r = S.request("GET", "/api/health", headers={"X-Trace-Id": "x" * 65})
        self.assertNotEqual(r.header("X-Trace-Id"), "x" * 65)

    def test_traceparent(self):
        # W3C Trace Context: a caller's trace is the request's trace id (X-Trace-Id, log lines,
        # events), the answer names a span of the request's own, tracestate passes through
        trace, parent = uuid.uuid4().hex, "b7ad6b7169203331"
        p = S.create_plan(capacity=2)
        r = S.purchase(p["id"], headers={"traceparent": "00-%s-%s-01" % (trace, parent), "tracestate": "congo=t61rcWkgMzE",
                                         "X-Trace-Id": "overridden"})
        self.assertEqual((r.status, r.header("X-Trace-Id")), (201, trace))
        by_event = settled_by_stripes_event(r)
        if not by_event:
            self.assertEqual(r.json["traceId"], trace)
        version, t, span, flags = r.header("traceparent").split("-")
        self.assertEqual((version, t, flags), ("00", trace, "01"))
        self.assertRegex(span, r"^[0-9a-f]{16}$")
        self.assertNotEqual(span, parent)
        self.assertEqual(r.header("tracestate"), "congo=t61rcWkgMzE")
        actions = {l["action"] for l in S.admin("GET", "/api/audit-logs?traceId=" + trace).json["logs"]}
        self.assertIn("seat.held", actions)
        if not by_event:
            self.assertIn("subscription.activated", actions)
        logged = [l for l in open(S.log_path, errors="replace") if '"trace_id":"%s"' % trace in l]
        self.assertTrue(logged)
        # each request its own span
        again = S.request("GET", "/api/health", headers={"traceparent": "00-%s-%s-00" % (trace, parent)})
        self.assertNotEqual(again.header("traceparent").split("-")[2], span)
        self.assertEqual(again.header("traceparent").split("-")[3], "00")
        # a malformed traceparent is ignored, never refused: a trace of the request's own
        for bad in ("00-%s-%s-01-x" % (trace, parent), "ff-%s-%s-01" % (trace, parent), "00-%s-%s-01" % ("0" * 32, parent),
                    "00-%s-%s-01" % (trace.upper(), parent), "garbage", "00-%s-0000000000000000-01" % trace):
            r = S.request("GET", "/api/health", headers={"traceparent": bad, "tracestate": "a=b"})
            self.assertEqual(r.status, 200, bad)
            self.assertNotEqual(r.header("X-Trace-Id"), trace, bad)
            self.assertIsNone(r.header("tracestate"), bad)
            self.assertEqual(r.header("traceparent").split("-")[1], r.header("X-Trace-Id"), bad)
        # a caller's own X-Trace-Id still names one trace: the same W3C id every time
        a = S.request("GET", "/api/health", headers={"X-Trace-Id": "my.trace-1_A"}).header("traceparent")
        b = S.request("GET", "/api/health", headers={"X-Trace-Id": "my.trace-1_A"}).header("traceparent")
        self.assertEqual(a.split("-")[1], b.split("-")[1])

    def test_health(self):
        r = S.request("GET", "/api/health")
        self.assertEqual(r.status, 200)
        self.assertEqual((r.json["status"], r.json["store"]), ("ok", os.environ.get("NUMATIX_TEST_STORE", "sqlite")))
        self.assertTrue(r.json["version"])

    def test_security_headers(self):
        r = S.request("GET", "/api/health")
        self.assertEqual(r.header("X-Content-Type-Options"), "nosniff")
        self.assertEqual(r.header("Cache-Control"), "no-store")
        r = S.request("GET", "/")
        self.assertEqual(r.status, 200)
        self.assertIn("default-src 'self'", r.header("Content-Security-Policy"))


class Purchase(Envelope):
    def test_success(self):
        p = S.create_plan(capacity=2, price=4200, duration_days=10)
        key = str(uuid.uuid4())
        r = S.purchase(p["id"], key=key)
        self.assertEqual(r.status, 201, r)
        b = r.json
        for k in ("id", "status", "planId", "planName", "customerId", "startDate", "endDate",
                  "amount_cents", "paymentId", "accessToken", "traceId"):
            self.assertIn(k, b)
        self.assertEqual((b["status"], b["planId"], b["planName"], b["amount_cents"]),
                         ("active", p["id"], p["name"], 4200))
        self.assertTrue(b["paymentId"].startswith(("pay_", "pi_")))  # the simulated processor's, or a PaymentIntent
        if not settled_by_stripes_event(r):
            self.assertEqual(b["traceId"], r.header("X-Trace-Id"))
            self.assertIsNone(r.header("Idempotent-Replayed"))
        q = S.plan(p["id"])
        self.assertEqual((q["subscriptions_left"], q["subscriptions_held"], q["occupancyPercentage"]), (1, 0, 50))
        g = S.request("GET", "/api/subscriptions/" + b["id"], headers={"Authorization": "Bearer " + b["accessToken"]})
        self.assertEqual(g.status, 200, g)
        self.assertNotIn("accessToken", g.json)
        self.assertEqual((g.json["status"], g.json["startDate"], g.json["paymentId"]),
                         ("active", b["startDate"], b["paymentId"]))
        self.assertEqual(S.admin("GET", "/api/subscriptions/" + b["id"]).json, g.json)

    def test_replay_is_byte_identical(self):
        p = S.create_plan(capacity=3)
        key = str(uuid.uuid4())
        body = {"planId": p["id"], "paymentMethodId": "pm_card_visa",
                "customer": {"email": "replay@example.com", "name": "R"}}
        a = S.request("POST", "/api/subscriptions/purchase", body, {"Idempotency-Key": key})
        # the same meaning with other key order and whitespace
        raw = ('{ "customer": {"name": "R", "email": "replay@example.com"},\n "paymentMethodId": "pm_card_visa", '
               '"planId": "%s" }' % p["id"]).encode()
        b = S.request("POST", "/api/subscriptions/purchase", raw=raw,
                      headers={"Idempotency-Key": key, "Content-Type": "application/json"})
        self.assertEqual((a.status, b.status), (201, 201))
        self.assertEqual(a.raw, b.raw)
        self.assertEqual(b.header("Idempotent-Replayed"), "true")
        self.assertEqual(S.plan(p["id"])["subscriptions_left"], 2)
        # the same key for another request
        body["paymentMethodId"] = "pm_card_mastercard"
        self.assertError(S.request("POST", "/api/subscriptions/purchase", body, {"Idempotency-Key": key}),
                         422, "IDEMPOTENCY_KEY_REUSED")
        self.assertError(S.admin("POST", "/api/plans", {"name": "k" + key, "price_cents": 1, "total_capacity": 1},
                                 {"Idempotency-Key": key}), 422, "IDEMPOTENCY_KEY_REUSED")
        self.assertEqual(S.plan(p["id"])["subscriptions_left"], 2)

    def test_key_required_and_well_formed(self):
        p = S.create_plan(capacity=1)
        body = {"planId": p["id"], "paymentMethodId": "pm_card_visa",
                "customer": {"email": "k@example.com", "name": "K"}}
        self.assertError(S.request("POST", "/api/subscriptions/purchase", body), 400, "MISSING_IDEMPOTENCY_KEY")
        for bad in ("abc", "12345678-1234-1234-1234-1234567890123", "{\"$gt\":\"\"}",
                    "g2345678-1234-1234-1234-123456789012", "123456781234123412341234567890ab"):
            self.assertError(S.request("POST", "/api/subscriptions/purchase", body, {"Idempotency-Key": bad}),
                             400, "INVALID_IDEMPOTENCY_KEY")
        self.assertEqual(S.plan(p["id"])["subscriptions_left"], 1)

    def test_declines_give_the_seat_back(self):
        p = S.create_plan(capacity=1)
        for method, code in (("pm_card_chargeDeclined", "generic_decline"),
                             ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
                             ("pm_card_chargeDeclinedExpiredCard", "expired_card")):
            key = str(uuid.uuid4())
            r = S.purchase(p["id"], key=key, method=method)
            self.assertError(r, 402, "PAYMENT_FAILED")
            self.assertEqual(r.json["details"]["declineCode"], code)
            self.assertEqual(S.plan(p["id"])["subscriptions_left"], 1)
            again = S.purchase(p["id"], key=key, method=method, email=None)
            # a different customer email is a different request: the key is bound
            self.assertEqual(again.status, 422)
        self.assertEqual(S.purchase(p["id"], method="pm_card_amex").status, 201)

    def test_decline_replays(self):
        p = S.create_plan(capacity=1)
        key = str(uuid.uuid4())
        a = S.purchase(p["id"], key=key, method="pm_card_chargeDeclined", email="d@example.com")
        b = S.purchase(p["id"], key=key, method="pm_card_chargeDeclined", email="d@example.com")
        self.assertEqual((a.status, b.status, a.raw), (402, 402, b.raw))
        self.assertEqual(b.header("Idempotent-Replayed"), "true")

    def test_sold_out_keeps_key_usable(self):
        p = S.create_plan(capacity=1)
        self.assertEqual(S.purchase(p["id"]).status, 201)
        key = str(uuid.uuid4())
        r = S.purchase(p["id"], key=key, email="late@example.com")
        self.assertError(r, 409, "PLAN_SOLD_OUT")
        self.assertEqual(S.plan(p["id"])["subscriptions_left"], 0)
        S.admin("PATCH", "/api/plans/" + p["id"], {"total_capacity": 2})
        self.assertEqual(S.purchase(p["id"], key=key, email="late@example.com").status, 201)

    def test_inactive_and_missing_plan(self):
        p = S.create_plan(capacity=1)
        S.admin("PATCH", "/api/plans/" + p["id"], {"status": "inactive"})
        self.assertError(S.purchase(p["id"]), 409, "PLAN_INACTIVE")
        self.assertError(S.purchase("0" * 24), 404, "PLAN_NOT_FOUND")
        self.assertEqual(S.plan(p["id"])["subscriptions_left"], 1)

    def test_customers(self):
        email = "Mixed.Case-%s@Example.com" % uuid.uuid4().hex[:8]
        c = S.admin("POST", "/api/customers", {"email": email, "name": "Casey"})
        self.assertEqual(c.status, 201, c)
        self.assertEqual(set(c.json), {"id", "email", "name", "createdAt"})
        self.assertError(S.admin("POST", "/api/customers", {"email": email.lower(), "name": "Other"}),
                         409, "CUSTOMER_EXISTS")
        self.assertError(S.request("POST", "/api/customers", {"email": "z@example.com", "name": "Z"}),
                         401, "UNAUTHORIZED")
        self.assertError(S.admin("POST", "/api/customers", {"email": "not-an-email", "name": "Z"}),
                         400, "VALIDATION_ERROR")
        p = S.create_plan(capacity=5)
        r = S.request("POST", "/api/subscriptions/purchase",
                      {"planId": p["id"], "paymentMethodId": "pm_card_visa", "customerId": c.json["id"]},
                      {"Idempotency-Key": str(uuid.uuid4())})
        self.assertEqual((r.status, r.json["customerId"]), (201, c.json["id"]), r)
        # found by email, case-insensitively
        r2 = S.purchase(p["id"], email=email.upper())
        self.assertEqual(r2.json["customerId"], c.json["id"])
        self.assertError(S.request("POST", "/api/subscriptions/purchase",
                                   {"planId": p["id"], "paymentMethodId": "pm_card_visa", "customerId": "1" * 24},
                                   {"Idempotency-Key": str(uuid.uuid4())}), 404, "CUSTOMER_NOT_FOUND")
        # both or neither
        for extra in ({"customerId": c.json["id"], "customer": {"email": "a@b.co", "name": "A"}}, {}):
            body = dict({"planId": p["id"], "paymentMethodId": "pm_card_visa"}, **extra)
            self.assertError(S.request("POST", "/api/subscriptions/purchase", body,
                                       {"Idempotency-Key": str(uuid.uuid4())}), 400, "VALIDATION_ERROR")
        # a customer's subscriptions, paged
        lst = S.admin("GET", "/api/customers/%s/subscriptions?limit=1" % c.json["id"])
        self.assertEqual(lst.status, 200, lst)
        self.assertEqual(len(lst.json["subscriptions"]), 1)
        self.assertEqual(lst.json["subscriptions"][0]["id"], r2.json["id"])
        nxt = S.admin("GET", "/api/customers/%s/subscriptions?limit=1&cursor=%s" % (c.json["id"], lst.json["nextCursor"]))
        self.assertEqual([s["id"] for s in nxt.json["subscriptions"]], [r.json["id"]])
        self.assertIsNone(nxt.json["nextCursor"])
        act = S.admin("GET", "/api/customers/%s/subscriptions?status=cancelled" % c.json["id"])
        self.assertEqual(act.json["subscriptions"], [])
        self.assertError(S.admin("GET", "/api/customers/%s/subscriptions?limit=0" % c.json["id"]), 400, "VALIDATION_ERROR")
        self.assertError(S.admin("GET", "/api/customers/%s/subscriptions?cursor=abc" % c.json["id"]), 400, "VALIDATION_ERROR")
        self.assertError(S.admin("GET", "/api/customers/%s/subscriptions" % ("2" * 24)), 404, "CUSTOMER_NOT_FOUND")
        self.assertError(S.request("GET", "/api/customers/%s/subscriptions" % c.json["id"]), 401, "UNAUTHORIZED")


class Subscriptions(Envelope):
    def test_tokens(self):
        p = S.create_plan(capacity=5)
        a = S.purchase(p["id"]).json
        b = S.purchase(p["id"]).json
        path = "/api/subscriptions/" + a["id"]
        self.assertError(S.request("GET", path), 401, "UNAUTHORIZED")
        self.assertError(S.request("GET", path, headers={"Authorization": "Bearer nope"}), 401, "UNAUTHORIZED")
        forged = a["accessToken"][:-4] + "AAAA"
        self.assertError(S.request("GET", path, headers={"Authorization": "Bearer " + forged}), 401, "UNAUTHORIZED")
        self.assertError(S.request("GET", path, headers={"Authorization": "Bearer " + b["accessToken"]}), 403, "FORBIDDEN")
        self.assertError(S.admin("GET", "/api/subscriptions/" + "3" * 24), 404, "SUBSCRIPTION_NOT_FOUND")
        self.assertError(S.admin("GET", "/api/subscriptions/nope"), 404, "SUBSCRIPTION_NOT_FOUND")

    def test_cancel_gives_seat_back(self):
        p = S.create_plan(capacity=1)
        a = S.purchase(p["id"]).json
        self.assertTrue(S.plan(p["id"])["isSoldOut"])
        auth = {"Authorization": "Bearer " + a["accessToken"]}
        self.assertError(S.request("POST", "/api/subscriptions/%s/cancel" % a["id"], headers={"Authorization": "Bearer x"}),
                         401, "UNAUTHORIZED")
        r = S.request("POST", "/api/subscriptions/%s/cancel" % a["id"], headers=auth)
        self.assertEqual((r.status, r.json["status"]), (200, "cancelled"), r)
        self.assertEqual(S.plan(p["id"])["subscriptions_left"], 1)
        self.assertError(S.request("POST", "/api/subscriptions/%s/cancel" % a["id"], headers=auth), 409, "ALREADY_CANCELLED")
        self.assertEqual(S.plan(p["id"])["subscriptions_left"], 1)
        b = S.purchase(p["id"]).json
        r = S.admin("POST", "/api/subscriptions/%s/cancel" % b["id"], {})
        self.assertEqual(r.status, 200, r)
        self.assertError(S.admin("POST", "/api/subscriptions/%s/cancel" % b["id"], {"reason": "x"}), 400, "VALIDATION_ERROR")


class Quantities(Envelope):
    def test_limits_on_plans(self):
        p = S.create_plan(capacity=5)
        self.assertEqual((p["max_per_order"], p["max_per_customer"]), (10, None))
        q = S.create_plan(capacity=5, max_per_order=2, max_per_customer=4)
        self.assertEqual((q["max_per_order"], q["max_per_customer"]), (2, 4))
        r = S.admin("PATCH", "/api/plans/" + q["id"], {"max_per_order": 3, "max_per_customer": None})
        self.assertEqual((r.status, r.json["max_per_order"], r.json["max_per_customer"]), (200, 3, None), r)
        r = S.admin("PATCH", "/api/plans/" + q["id"], {"max_per_customer": 2})
        self.assertEqual((r.status, r.json["max_per_order"], r.json["max_per_customer"]), (200, 3, 2), r)
        for body, field in [({"max_per_order": 0}, "max_per_order"), ({"max_per_order": 1001}, "max_per_order"),
                            ({"max_per_order": None}, "max_per_order"), ({"max_per_customer": 0}, "max_per_customer"),
                            ({"max_per_customer": "3"}, "max_per_customer"), ({"max_per_order": 2.5}, "max_per_order")]:
            r = S.admin("PATCH", "/api/plans/" + q["id"], body)
            self.assertError(r, 400, "VALIDATION_ERROR")
            self.assertEqual(r.json["details"]["field"], field, (body, r))
        self.assertEqual(S.plan(q["id"])["max_per_order"], 3)

    def test_quantity_takes_seats_all_or_nothing(self):
        p = S.create_plan(capacity=5, price=700, max_per_order=4)
        r = S.purchase(p["id"], quantity=3)
        self.assertEqual((r.status, r.json["quantity"], r.json["amount_cents"]), (201, 3, 2100), r)
        q = S.plan(p["id"])
        self.assertEqual((q["subscriptions_left"], q["occupancyPercentage"]), (2, 60))
        g = S.admin("GET", "/api/subscriptions/" + r.json["id"]).json
        self.assertEqual(g["quantity"], 3)
        short = S.purchase(p["id"], quantity=3)
        self.assertError(short, 409, "PLAN_SOLD_OUT")
        self.assertEqual(short.json["details"], {"available": 2, "waiting": 0})
        self.assertEqual(S.plan(p["id"])["subscriptions_left"], 2)
        over = S.purchase(p["id"], quantity=5)
        self.assertError(over, 400, "VALIDATION_ERROR")
        self.assertEqual(over.json["details"]["field"], "quantity")
        for bad in (0, -1, 1001, 1.5, "2", True, [2]):
            b = S.purchase(p["id"], quantity=bad)
            self.assertError(b, 400, "VALIDATION_ERROR")
            self.assertEqual(b.json["details"]["field"], "quantity", (bad, b))
        b = S.request("POST", "/api/subscriptions/purchase",
                      {"planId": p["id"], "paymentMethodId": "pm_card_visa", "quantity": None,
                       "customer": {"email": "null-q@example.com", "name": "Q"}},
                      {"Idempotency-Key": str(uuid.uuid4())})
        self.assertError(b, 400, "VALIDATION_ERROR")
        self.assertEqual(S.plan(p["id"])["subscriptions_left"], 2)
        # a cancel gives every seat of the subscription back
        c = S.admin("POST", "/api/subscriptions/%s/cancel" % r.json["id"])
        self.assertEqual((c.status, c.json["quantity"]), (200, 3), c)
        self.assertEqual(S.plan(p["id"])["subscriptions_left"], 5)
        # a decline gives them back too
        d = S.purchase(p["id"], quantity=4, method="pm_card_chargeDeclined")
        self.assertError(d, 402, "PAYMENT_FAILED")
        self.assertEqual(S.plan(p["id"])["subscriptions_left"], 5)
        ok, out = S.check()
        self.assertTrue(ok, out)

    def test_customer_limit(self):
        p = S.create_plan(capacity=10, max_per_customer=3)
        email = "limit-%s@example.com" % uuid.uuid4().hex[:8]
        self.assertEqual(S.purchase(p["id"], email=email, quantity=2).status, 201)
        r = S.purchase(p["id"], email=email.upper(), quantity=2)
        self.assertError(r, 409, "CUSTOMER_LIMIT_REACHED")
        self.assertEqual(r.json["details"], {"limit": 3, "held": 2})
        self.assertEqual(S.plan(p["id"])["subscriptions_left"], 8)
        # a declined purchase holds nothing afterwards
        self.assertEqual(S.purchase(p["id"], email=email, method="pm_card_chargeDeclined").status, 402)
        one = S.purchase(p["id"], email=email)
        self.assertEqual(one.status, 201, one)
        self.assertError(S.purchase(p["id"], email=email), 409, "CUSTOMER_LIMIT_REACHED")
        # a cancel frees the customer's allowance
        S.admin("POST", "/api/subscriptions/%s/cancel" % one.json["id"])
        self.assertEqual(S.purchase(p["id"], email=email).status, 201)
        ok, out = S.check()
        self.assertTrue(ok, out)


def session_create(plan_id, quantity=None, email=None, key=None, **extra):
    body = {"planId": plan_id, "customer": {"email": email or "cs-%s@example.com" % uuid.uuid4().hex[:12],
                                            "name": "Session Buyer"}}
    if quantity is not None:
        body["quantity"] = quantity
    body.update(extra)
    return S.request("POST", "/api/checkout-sessions", body, {"Idempotency-Key": key or str(uuid.uuid4())})


def session_call(sess, action, body=None, key=None, secret=None):
    h = {"Authorization": "Bearer " + (secret or sess["clientSecret"])}
    if action == "complete":
        h["Idempotency-Key"] = key or str(uuid.uuid4())
    path = "/api/checkout-sessions/" + sess["id"] + ("/" + action if action else "")
    return S.request("POST" if action else "GET", path, body, h)


class CheckoutSessions(Envelope):
    def test_hold_then_pay(self):
        p = S.create_plan(capacity=5, price=900)
        key = str(uuid.uuid4())
        r = session_create(p["id"], quantity=2, key=key)
        self.assertEqual(r.status, 201, r)
        s = r.json
        self.assertEqual((s["status"], s["quantity"], s["amount_cents"], s["subscriptionId"]), ("open", 2, 1800, None))
        self.assertTrue(s["clientSecret"].startswith("cst_"))
        self.assertEqual(S.plan(p["id"])["subscriptions_held"], 2)
        # a retry replays the creation, secret included, and holds nothing more
        again = session_create(p["id"], quantity=2, key=key, email=None)
        self.assertIn(again.status, (201, 422))
        g = session_call(s, None)
        self.assertEqual((g.status, g.json["status"]), (200, "open"), g)
        self.assertNotIn("clientSecret", g.json)
        # a decline keeps the session open with its seats
        d = session_call(s, "complete", {"paymentMethodId": "pm_card_chargeDeclined"})
        self.assertError(d, 402, "PAYMENT_FAILED")
        self.assertEqual(S.plan(p["id"])["subscriptions_held"], 2)
        self.assertEqual(session_call(s, None).json["status"], "open")
        ck = str(uuid.uuid4())
        c = session_call(s, "complete", {"paymentMethodId": "pm_card_visa"}, key=ck)
        self.assertEqual(c.status, 201, c)
        self.assertEqual((c.json["status"], c.json["quantity"], c.json["amount_cents"], c.json["id"]),
                         ("active", 2, 1800, s["id"]))
        self.assertTrue(c.json["accessToken"].startswith("sat_"))
        replay = session_call(s, "complete", {"paymentMethodId": "pm_card_visa"}, key=ck)
        self.assertEqual((replay.status, replay.raw), (201, c.raw))
        again = session_call(s, "complete", {"paymentMethodId": "pm_card_visa"})
        self.assertError(again, 409, "SESSION_COMPLETED")
        done = session_call(s, None).json
        self.assertEqual((done["status"], done["subscriptionId"]), ("completed", s["id"]))
        self.assertError(session_call(s, "expire"), 409, "SESSION_COMPLETED")
        q = S.plan(p["id"])
        self.assertEqual((q["subscriptions_left"], q["subscriptions_held"]), (3, 0))
        ok, out = S.check()
        self.assertTrue(ok, out)

    def test_expire_gives_seats_back(self):
        p = S.create_plan(capacity=3)
        s = session_create(p["id"], quantity=3).json
        self.assertTrue(S.plan(p["id"])["isSoldOut"])
        self.assertError(S.purchase(p["id"]), 409, "PLAN_SOLD_OUT")
        e = session_call(s, "expire", {})
        self.assertEqual((e.status, e.json["status"]), (200, "expired"), e)
        self.assertEqual(session_call(s, "expire").json["status"], "expired")
        self.assertEqual(S.plan(p["id"])["subscriptions_left"], 3)
        self.assertError(session_call(s, "complete", {"paymentMethodId": "pm_card_visa"}), 409, "SESSION_EXPIRED")
        # held seats by kind: an open session's, apart from a payment's
        session_create(p["id"], quantity=2)
        st = S.request("GET", "/api/plans/%s/stats" % p["id"]).json
        self.assertEqual((st["subscriptionsHeld"], st["heldByKind"]), (2, {"payments": 0, "checkoutSessions": 2}))
        ok, out = S.check()
        self.assertTrue(ok, out)

    def test_secrets_and_validation(self):
        p = S.create_plan(capacity=10, max_per_customer=2)
        a = session_create(p["id"]).json
        b = session_create(p["id"]).json
        self.assertError(session_call(a, None, secret=b["clientSecret"]), 403, "FORBIDDEN")
        self.assertError(session_call(a, None, secret=a["clientSecret"][:-3] + "AAA"), 401, "UNAUTHORIZED")
        self.assertError(S.request("GET", "/api/checkout-sessions/" + a["id"]), 401, "UNAUTHORIZED")
        self.assertEqual(S.admin("GET", "/api/checkout-sessions/" + a["id"]).status, 200)
        self.assertError(S.admin("GET", "/api/checkout-sessions/" + "4" * 24), 404, "SESSION_NOT_FOUND")
        # a client secret opens no subscription route, an access token no session route
        self.assertError(S.request("GET", "/api/subscriptions/" + a["id"],
                                   headers={"Authorization": "Bearer " + a["clientSecret"]}), 403, "FORBIDDEN")
        for body, field in [({"expiresIn": 59}, "expiresIn"), ({"expiresIn": 86401}, "expiresIn"),
                            ({"quantity": 0}, "quantity"), ({"extra": 1}, "extra"), ({"planId": "x"}, "planId")]:
            r = session_create(p["id"], **body)
            self.assertError(r, 400, "VALIDATION_ERROR")
            self.assertEqual(r.json["details"]["field"], field, (body, r))
        r = S.request("POST", "/api/checkout-sessions", {"planId": p["id"], "customer": {"email": "x@y.co", "name": "X"}})
        self.assertError(r, 400, "MISSING_IDEMPOTENCY_KEY")
        self.assertError(session_call(a, "complete", {"paymentMethodId": "card"}), 400, "VALIDATION_ERROR")
        self.assertError(session_call(a, "complete", {}), 400, "VALIDATION_ERROR")
        # open sessions count toward the customer's limit
        email = "cap-%s@example.com" % uuid.uuid4().hex[:8]
        self.assertEqual(session_create(p["id"], quantity=2, email=email).status, 201)
        lim = session_create(p["id"], email=email)
        self.assertError(lim, 409, "CUSTOMER_LIMIT_REACHED")
        self.assertEqual(lim.json["details"], {"limit": 2, "held": 2})
        ok, out = S.check()
        self.assertTrue(ok, out)


def change_plan(sub, plan_id, method=None, key=None, token=None):
    body = {"planId": plan_id}
    if method:
        body["paymentMethodId"] = method
    return S.request("POST", "/api/subscriptions/%s/change-plan" % sub["id"], body,
                     {"Authorization": "Bearer " + (token or sub["accessToken"]),
                      "Idempotency-Key": key or str(uuid.uuid4())})


class ChangePlan(Envelope):
    def test_upgrade_charges_the_difference(self):
        a = S.create_plan(capacity=3, price=3000, duration_days=30)
        b = S.create_plan(capacity=3, price=9000, duration_days=30)
        sub = S.purchase(a["id"], quantity=2).json
        # something to charge: a payment method is needed, and nothing moves without one
        self.assertError(change_plan(sub, b["id"]), 400, "VALIDATION_ERROR")
        key = str(uuid.uuid4())
        r = change_plan(sub, b["id"], "pm_card_visa", key=key)
        self.assertEqual(r.status, 200, r)
        new = r.json
        self.assertEqual((new["status"], new["planId"], new["quantity"], new["previousSubscriptionId"]),
                         ("active", b["id"], 2, sub["id"]))
        self.assertNotEqual(new["accessToken"], sub["accessToken"])
        self.assertEqual(new["endDate"], sub["endDate"])
        # the difference for the whole period left (just begun): 2 x (90 - 30) dollars, to the cent
        charges = [l for l in S.admin("GET", "/api/audit-logs?action=payment.authorized&planId=" + b["id"]).json["logs"]]
        self.assertEqual([c["after"]["amount_cents"] for c in charges], [12000])
        replay = change_plan(sub, b["id"], "pm_card_visa", key=key)
        self.assertEqual((replay.status, replay.raw), (200, r.raw))
        old = S.request("GET", "/api/subscriptions/" + sub["id"], headers={"Authorization": "Bearer " + sub["accessToken"]})
        self.assertEqual((old.status, old.json["status"]), (200, "changed"))
        self.assertEqual((S.plan(a["id"])["subscriptions_left"], S.plan(b["id"])["subscriptions_left"]), (3, 1))
        self.assertError(change_plan(sub, b["id"], "pm_card_visa"), 409, "SUBSCRIPTION_NOT_ACTIVE")
        self.assertEqual(len(S.admin("GET", "/api/audit-logs?action=subscription.plan_changed&planId=" + a["id"]).json["logs"]), 1)
        ok, out = S.check()
        self.assertTrue(ok, out)

    def test_downgrade_credits_and_decline_changes_nothing(self):
        a = S.create_plan(capacity=2, price=9000)
        b = S.create_plan(capacity=2, price=3000)
        c = S.create_plan(capacity=2, price=20000)
        sub = S.purchase(a["id"]).json
        d = change_plan(sub, c["id"], "pm_card_chargeDeclined")
        self.assertError(d, 402, "PAYMENT_FAILED")
        self.assertEqual((S.plan(a["id"])["subscriptions_left"], S.plan(c["id"])["subscriptions_left"]), (1, 2))
        self.assertError(change_plan(sub, a["id"]), 400, "VALIDATION_ERROR")
        r = change_plan(sub, b["id"])
        self.assertEqual((r.status, r.json["planId"], r.json["amount_cents"]), (200, b["id"], 3000), r)
        credits = S.admin("GET", "/api/audit-logs?action=payment.refunded").json["logs"]
        self.assertTrue(any(l["resourceType"] == "payment" for l in credits))
        self.assertEqual((S.plan(a["id"])["subscriptions_left"], S.plan(b["id"])["subscriptions_left"]), (2, 1))
        # the new token reads the new subscription; the old one still reads the old
        g = S.request("GET", "/api/subscriptions/" + r.json["id"], headers={"Authorization": "Bearer " + r.json["accessToken"]})
        self.assertEqual((g.status, g.json["previousSubscriptionId"]), (200, sub["id"]))
        ok, out = S.check()
        self.assertTrue(ok, out)

    def test_sold_out_and_wrong_input(self):
        a = S.create_plan(capacity=2, price=1000)
        full = S.create_plan(capacity=1, price=1000)
        S.purchase(full["id"])
        sub = S.purchase(a["id"]).json
        self.assertError(change_plan(sub, full["id"]), 409, "PLAN_SOLD_OUT")
        self.assertError(change_plan(sub, "f" * 24), 404, "PLAN_NOT_FOUND")
        self.assertError(change_plan(sub, "nope"), 400, "VALIDATION_ERROR")
        self.assertError(change_plan(sub, full["id"], method="card"), 400, "VALIDATION_ERROR")
        other = S.purchase(a["id"]).json
        self.assertError(change_plan(sub, full["id"], token=other["accessToken"]), 403, "FORBIDDEN")
        r = S.request("POST", "/api/subscriptions/%s/change-plan" % sub["id"], {"planId": full["id"]},
                      {"Authorization": "Bearer " + sub["accessToken"]})
        self.assertError(r, 400, "MISSING_IDEMPOTENCY_KEY")
        self.assertEqual(S.plan(a["id"])["subscriptions_left"], 0)
        ok, out = S.check()
        self.assertTrue(ok, out)


class Audit(Envelope):
    def test_audit_trail(self):
        p = S.create_plan(capacity=2)
        trace = "audit-" + uuid.uuid4().hex
        r = S.request("POST", "/api/subscriptions/purchase",
                      {"planId": p["id"], "paymentMethodId": "pm_card_visa",
                       "customer": {"email": "audit@example.com", "name": "Au"}},
                      {"Idempotency-Key": str(uuid.uuid4()), "X-Trace-Id": trace})
        self.assertEqual(r.status, 201)
        logs = S.admin("GET", "/api/audit-logs?traceId=" + trace).json["logs"]
        actions = [l["action"] for l in logs]
        self.assertEqual(sorted(actions), ["payment.authorized", "seat.held", "subscription.activated"])
        held = [l for l in logs if l["action"] == "seat.held"][0]
        self.assertEqual(held["before"]["subscriptions_left"], 2)
        self.assertEqual(held["after"]["subscriptions_left"], 1)
        self.assertEqual(held["after"]["subscriptions_held"], 1)
        self.assertEqual(held["planId"], p["id"])
        self.assertEqual(held["ip"], "127.0.0.1")
        for k in ("id", "at", "action", "actorType", "actorId", "resourceType", "resourceId", "before",
                  "after", "traceId", "ip"):
            self.assertIn(k, held)
        by_plan = S.admin("GET", "/api/audit-logs?planId=" + p["id"]).json["logs"]
        self.assertEqual(by_plan[-1]["action"], "plan.created")
        ats = [l["at"] for l in by_plan]
        self.assertEqual(ats, sorted(ats, reverse=True))
        page = S.admin("GET", "/api/audit-logs?limit=2&planId=" + p["id"]).json
        self.assertEqual(len(page["logs"]), 2)
        rest = S.admin("GET", "/api/audit-logs?planId=%s&cursor=%s" % (p["id"], page["nextCursor"])).json
        self.assertEqual([l["id"] for l in page["logs"] + rest["logs"]], [l["id"] for l in by_plan])
        only = S.admin("GET", "/api/audit-logs?action=plan.created&planId=" + p["id"]).json["logs"]
        self.assertEqual(len(only), 1)
        self.assertError(S.request("GET", "/api/audit-logs"), 401, "UNAUTHORIZED")
        self.assertError(S.admin("GET", "/api/audit-logs?planId=zz"), 400, "VALIDATION_ERROR")
        self.assertError(S.admin("GET", "/api/audit-logs?limit=1000"), 400, "VALIDATION_ERROR")


class Waitlists(Envelope):
    def join(self, plan_id, email, quantity=None, key=None):
        body = {"customer": {"email": email, "name": "Waiter"}}
        if quantity:
            body["quantity"] = quantity
        return S.request("POST", "/api/plans/%s/waitlist" % plan_id, body, {"Idempotency-Key": key or str(uuid.uuid4())})

    def test_join_wait_offer_complete(self):
        p = S.create_plan(capacity=1, waitlist_enabled=True)
        self.assertTrue(p["waitlist_enabled"])
        # seats free and nobody waiting: buy instead
        self.assertError(self.join(p["id"], "early@example.com"), 409, "SEATS_AVAILABLE")
        bought = S.purchase(p["id"]).json
        key = str(uuid.uuid4())
        a = self.join(p["id"], "wa@example.com", key=key)
        self.assertEqual(a.status, 201, a)
        self.assertEqual((a.json["status"], a.json["position"], a.json["quantity"], a.json["checkoutSessionId"]),
                         ("waiting", 1, 1, None))
        self.assertTrue(a.json["accessToken"].startswith("wlt_"))
        again = self.join(p["id"], "wa@example.com", key=key)
        self.assertEqual((again.status, again.raw), (201, a.raw))
        self.assertError(self.join(p["id"], "wa@example.com"), 409, "ALREADY_WAITING")
        b = self.join(p["id"], "wb@example.com").json
        self.assertEqual(b["position"], 2)
        # nobody buys past the line
        r = S.purchase(p["id"])
        self.assertError(r, 409, "PLAN_SOLD_OUT")
        self.assertEqual(r.json["details"], {"available": 0, "waiting": 2})
        # a's own token reads a; b's token cannot; nobody's cannot
        ta, tb = {"Authorization": "Bearer " + a.json["accessToken"]}, {"Authorization": "Bearer " + b["accessToken"]}
        self.assertEqual(S.request("GET", "/api/waitlist/" + a.json["id"], headers=ta).json["position"], 1)
        self.assertError(S.request("GET", "/api/waitlist/" + a.json["id"], headers=tb), 403, "FORBIDDEN")
        self.assertError(S.request("GET", "/api/waitlist/" + a.json["id"]), 401, "UNAUTHORIZED")
        self.assertError(S.request("GET", "/api/plans/%s/waitlist" % p["id"], headers=ta), 403, "FORBIDDEN")
        # the seat comes free: a is offered it in the cancel's unit, b moves up
        S.request("POST", "/api/subscriptions/%s/cancel" % bought["id"], {},
                  {"Authorization": "Bearer " + bought["accessToken"]})
        got = S.request("GET", "/api/waitlist/" + a.json["id"], headers=ta).json
        self.assertEqual((got["status"], got["position"]), ("offered", None))
        self.assertTrue(got["clientSecret"].startswith("cst_" + got["checkoutSessionId"]))
        self.assertIsNotNone(got["offerExpiresAt"])
        self.assertEqual(S.request("GET", "/api/waitlist/" + b["id"], headers=tb).json["position"], 1)
        plan = S.plan(p["id"])
        self.assertEqual((plan["subscriptions_left"], plan["subscriptions_held"]), (0, 1))
        session = S.request("GET", "/api/checkout-sessions/" + got["checkoutSessionId"],
                            headers={"Authorization": "Bearer " + got["clientSecret"]}).json
        self.assertEqual((session["status"], session["quantity"]), ("open", 1))
        done = S.request("POST", "/api/checkout-sessions/%s/complete" % got["checkoutSessionId"],
                         {"paymentMethodId": "pm_card_visa"},
                         {"Authorization": "Bearer " + got["clientSecret"], "Idempotency-Key": str(uuid.uuid4())})
        self.assertEqual(done.status, 201, done)
        conv = S.admin("GET", "/api/waitlist/" + a.json["id"]).json
        self.assertEqual((conv["status"], conv["clientSecret"]), ("converted", None))
        line = S.admin("GET", "/api/plans/%s/waitlist" % p["id"]).json
        self.assertEqual([(x["id"], x["status"]) for x in line["entries"]], [(a.json["id"], "converted"), (b["id"], "waiting")])
        # b leaves: the line is empty, a new buyer may buy the next free seat
        left = S.request("POST", "/api/waitlist/%s/leave" % b["id"], None, tb)
        self.assertEqual((left.status, left.json["status"]), (200, "left"))
        self.assertError(S.request("POST", "/api/waitlist/%s/leave" % a.json["id"], {}, ta), 409, "ENTRY_NOT_LIVE")
        types = [e["type"] for e in S.admin("GET", "/api/events?type=waitlist.offered&after=0&limit=1000").json["events"]
                 if e["data"]["resourceId"] == a.json["id"]]
        self.assertEqual(types, ["waitlist.offered"])
        ok, out = S.check()
        self.assertTrue(ok, out)

    def test_an_offer_left_passes_on(self):
        p = S.create_plan(capacity=2, waitlist_enabled=True)
        subs = [S.purchase(p["id"]).json for _ in range(2)]
        big = self.join(p["id"], "big@example.com", quantity=2).json
        small = self.join(p["id"], "small@example.com").json
        S.request("POST", "/api/subscriptions/%s/cancel" % subs[0]["id"], {},
                  {"Authorization": "Bearer " + subs[0]["accessToken"]})
        # one seat free, but the first in line needs two: nobody is offered, nobody jumps
        self.assertEqual(S.admin("GET", "/api/waitlist/" + small["id"]).json["status"], "waiting")
        S.request("POST", "/api/subscriptions/%s/cancel" % subs[1]["id"], {},
                  {"Authorization": "Bearer " + subs[1]["accessToken"]})
        self.assertEqual(S.admin("GET", "/api/waitlist/" + big["id"]).json["status"], "offered")
        r = S.request("POST", "/api/waitlist/%s/leave" % big["id"], None, {"Authorization": "Bearer " + big["accessToken"]})
        self.assertEqual(r.json["status"], "left")
        self.assertEqual(S.admin("GET", "/api/waitlist/" + small["id"]).json["status"], "offered")
        self.assertEqual(S.plan(p["id"])["subscriptions_left"], 1)
        ok, out = S.check()
        self.assertTrue(ok, out)

    def test_capacity_increase_offers(self):
        p = S.create_plan(capacity=1, waitlist_enabled=True)
        S.purchase(p["id"])
        w = self.join(p["id"], "cap@example.com").json
        S.admin("PATCH", "/api/plans/" + p["id"], {"total_capacity": 2})
        self.assertEqual(S.admin("GET", "/api/waitlist/" + w["id"]).json["status"], "offered")

    def test_refusals(self):
        off = S.create_plan(capacity=1)
        S.purchase(off["id"])
        self.assertError(self.join(off["id"], "x@example.com"), 409, "WAITLIST_DISABLED")
        self.assertError(self.join("f" * 24, "x@example.com"), 404, "PLAN_NOT_FOUND")
        p = S.create_plan(capacity=1, waitlist_enabled=True, max_per_order=2)
        S.purchase(p["id"])
        self.assertError(self.join(p["id"], "x@example.com", quantity=3), 400, "VALIDATION_ERROR")
        r = S.request("POST", "/api/plans/%s/waitlist" % p["id"], {"customer": {"email": "k@example.com", "name": "K"}})
        self.assertError(r, 400, "MISSING_IDEMPOTENCY_KEY")
        for body in ({}, {"customer": {"email": "bad", "name": "B"}}, {"customerId": "zz"},
                     {"customer": {"email": "q@example.com", "name": "Q"}, "quantity": 0},
                     {"customer": {"email": "q@example.com", "name": "Q"}, "extra": 1}):
            r = S.request("POST", "/api/plans/%s/waitlist" % p["id"], body, {"Idempotency-Key": str(uuid.uuid4())})
            self.assertError(r, 400, "VALIDATION_ERROR")
        self.assertError(S.admin("GET", "/api/waitlist/" + "a" * 24), 404, "ENTRY_NOT_FOUND")
        self.assertError(S.admin("GET", "/api/plans/%s/waitlist?limit=0" % p["id"]), 400, "VALIDATION_ERROR")
        self.assertError(S.admin("PATCH", "/api/plans/" + p["id"], {"waitlist_enabled": "yes"}), 400, "VALIDATION_ERROR")


class Events(Envelope):
    def test_feed_in_order(self):
        start = S.feed_head()
        p = S.create_plan(capacity=2)
        s = S.request("POST", "/api/checkout-sessions", {"planId": p["id"], "customer": {"email": "feed@example.com", "name": "F"}},
                      {"Idempotency-Key": str(uuid.uuid4()), "X-Trace-Id": "feed-trace"}).json
        S.request("POST", "/api/checkout-sessions/%s/expire" % s["id"], {},
                  {"Authorization": "Bearer " + s["clientSecret"], "Idempotency-Key": str(uuid.uuid4())})
        b = S.purchase(p["id"]).json
        r = S.admin("GET", "/api/events?after=%d" % start)
        self.assertEqual(r.status, 200)
        evs = r.json["events"]
        self.assertEqual([e["type"] for e in evs],
                         ["plan.created", "seat.held", "checkout.created", "checkout.expired", "seat.released",
                          "seat.held", "payment.authorized", "subscription.activated"])
        self.assertEqual([e["seq"] for e in evs], list(range(start + 1, start + 9)))
        self.assertEqual(r.json["nextAfter"], start + 8)
        held = evs[1]
        self.assertEqual(set(held), {"seq", "id", "type", "at", "traceId", "data"})
        self.assertEqual(held["traceId"], "feed-trace")
        self.assertEqual((held["data"]["planId"], held["data"]["resourceId"]), (p["id"], s["id"]))
        self.assertEqual((held["data"]["before"]["subscriptions_left"], held["data"]["after"]["subscriptions_left"]), (2, 1))
        self.assertEqual(evs[6]["data"]["payment"]["status"], "authorized")
        self.assertEqual(evs[7]["data"]["resourceId"], b["id"])
        # paging by position, and a type alone
        two = S.admin("GET", "/api/events?after=%d&limit=2" % start).json
        self.assertEqual(([e["seq"] for e in two["events"]], two["nextAfter"]), ([start + 1, start + 2], start + 2))
        only = S.admin("GET", "/api/events?after=%d&type=seat.held" % start).json
        self.assertEqual([e["seq"] for e in only["events"]], [start + 2, start + 6])
        # nothing after the end: the same position again
        end = S.admin("GET", "/api/events?after=%d" % (start + 8)).json
        self.assertEqual((end["events"], end["nextAfter"]), ([], start + 8))

    def test_feed_refusals(self):
        self.assertError(S.request("GET", "/api/events"), 401, "UNAUTHORIZED")
        for q in ("after=-1", "after=x", "after=", "after=1.5", "after=99999999999999999999", "limit=0", "limit=1001",
                  "limit=ten", "type=Seat.Held", "type=" + "a" * 40, "type=%00"):
            r = S.admin("GET", "/api/events?" + q)
            self.assertError(r, 400, "VALIDATION_ERROR")


class Idempotency(Envelope):
    def test_other_routes_honour_the_key(self):
        key = str(uuid.uuid4())
        body = {"name": "Idem " + key, "price_cents": 1, "total_capacity": 1}
        a = S.admin("POST", "/api/plans", body, {"Idempotency-Key": key})
        b = S.admin("POST", "/api/plans", body, {"Idempotency-Key": key})
        self.assertEqual((a.status, b.status, a.raw), (201, 201, b.raw))
        self.assertEqual(b.header("Idempotent-Replayed"), "true")
        names = [x["name"] for x in S.request("GET", "/api/plans?status=all").json["plans"]]
        self.assertEqual(names.count(body["name"]), 1)

    def test_rejected_request_stores_nothing(self):
        key = str(uuid.uuid4())
        bad = {"name": "", "price_cents": 1, "total_capacity": 1}
        self.assertEqual(S.admin("POST", "/api/plans", bad, {"Idempotency-Key": key}).status, 400)
        good = {"name": "Later " + key, "price_cents": 1, "total_capacity": 1}
        # the same key with a corrected body is a new request: validation stored nothing
        self.assertEqual(S.admin("POST", "/api/plans", dict(bad, name="Later " + key), {"Idempotency-Key": key}).status, 201)
        self.assertEqual(good["name"], "Later " + key)


if __name__ == "__main__":
    unittest.main()
