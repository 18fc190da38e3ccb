"""test_hostile.py - hostile and malformed input: each gets its JSON 4xx error, no worker
crashes, and no seat count moves."""

import json
import socket
import subprocess
import unittest
import uuid

from stack import ADMIN, Stack

S = None
PLAN = None


def setUpModule():
    global S, PLAN
    S = Stack().start()
    PLAN = S.create_plan(capacity=3)


def tearDownModule():
    S.cleanup()


def purchase_raw(raw, key=None, ctype="application/json"):
    return S.request("POST", "/api/subscriptions/purchase", raw=raw,
                     headers={"Idempotency-Key": key or str(uuid.uuid4()), "Content-Type": ctype})


class Hostile(unittest.TestCase):
    def setUp(self):
        self.before = S.plan(PLAN["id"])
        self.workers = S.server_pids()[1]

    def tearDown(self):
        after = S.plan(PLAN["id"])
        self.assertEqual((after["subscriptions_left"], after["subscriptions_held"]),
                         (self.before["subscriptions_left"], self.before["subscriptions_held"]))
        self.assertEqual(S.server_pids()[1], self.workers, "a worker died")

    def assert4xx(self, r, status=400, code="VALIDATION_ERROR"):
        self.assertEqual(r.status, status, r)
        self.assertIsNotNone(r.json, r)
        self.assertEqual(r.json["code"], code, r)
        self.assertEqual(r.json["traceId"], r.header("X-Trace-Id"))

    def test_not_json(self):
        for raw in (b"{", b"[1,2", b"nul", b"{'planId': 1}", b"{}{}", b'{"a":1} x', b"", b"   ",
                    b'{"planId": "x",}', b"\xff\xfe{}", b'{"name": "\xc3\x28"}', b"// c\n{}"):
            self.assert4xx(purchase_raw(raw))

    def test_wrong_shapes(self):
        pid = PLAN["id"]
        good = {"planId": pid, "paymentMethodId": "pm_card_visa", "customer": {"email": "h@example.com", "name": "H"}}
        cases = [
            [1, 2], "text", 42, None, True,
            dict(good, planId={"$gt": ""}), dict(good, planId={"$ne": None}), dict(good, planId=[pid]),
            dict(good, planId=123), dict(good, planId=pid.upper()), dict(good, planId=pid + "0"),
            dict(good, paymentMethodId=None), dict(good, paymentMethodId="card_visa"),
            dict(good, paymentMethodId={"$regex": ".*"}), dict(good, customer="h@example.com"),
            dict(good, customer={"email": {"$gt": ""}, "name": "H"}),
            dict(good, customer={"email": "h@example.com", "name": "H", "admin": True}),
            dict(good, customer={"email": "not an email", "name": "H"}),
            dict(good, customer={"email": "h@example.com"}), dict(good, status="active"),
            dict(good, __proto__={"admin": True}), dict(good, customerId={"$gt": ""}),
            dict(good, quantity=0), dict(good, quantity=-3), dict(good, quantity=2**63), dict(good, quantity=1e3),
            dict(good, quantity="1"), dict(good, quantity={"$gt": 0}), dict(good, quantity=[1]), dict(good, quantity=None),
            dict(good, quantity=1001), dict(good, quantity=True),
        ]
        for body in cases:
            r = S.request("POST", "/api/subscriptions/purchase", body, {"Idempotency-Key": str(uuid.uuid4())})
            self.assert4xx(r)
            self.assertIn("field", r.json["details"])

    def test_nul_bytes(self):
        pid = PLAN["id"]
        self.assert4xx(purchase_raw(b'{"planId": "%s\x00", "paymentMethodId": "pm_card_visa"}' % pid.encode()))
        self.assert4xx(purchase_raw(b'{"planId": "%s", "paymentMethodId": "pm_card_visa\\u0000x",'
                                    b' "customer": {"email": "n@example.com", "name": "N"}}' % pid.encode()))
        self.assert4xx(purchase_raw(b'{"planId": "%s", "paymentMethodId": "pm_card_visa",'
                                    b' "customer": {"email": "n@example.com", "name": "N\\u0000"}}' % pid.encode()))
        r = S.admin("GET", "/api/audit-logs?traceId=a%00b")
        self.assert4xx(r)

    def test_requests_nginx_cannot_read(self):
        """What nginx refuses before any location — a %00 in the path, a space in it, a request
        line that is not one, a header line without a colon, no Host, a Content-Length that is
        no number, headers or a URI too large — still gets the JSON error, never an HTML page."""
        def send(raw):
            with socket.create_connection(("127.0.0.1", S.direct_port), timeout=30) as c:
                c.sendall(raw)
                data = b""
                while chunk := c.recv(65536):
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
            return int(lines[0].split()[1]), headers, body

        cases = [
            (b"GET /api/plans%00 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET /api/subscriptions/%00/cancel HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET /api/pl ans HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GARBAGE\r\n\r\n", 400),
            (b"GET /api/plans HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
            (b"GET /api/plans HTTP/1.1\r\n\r\n", 400),
            (b"POST /api/plans HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
            (b"GET /api/plans HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 400),
            (b"GET /api/plans?" + b"a" * 40000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        ]
        for raw, status in cases:
            got, headers, body = send(raw)
            self.assertEqual(got, status, (raw[:60], body[:200]))
            self.assertTrue(headers.get("content-type", "").startswith("application/json"), (raw[:60], body[:200]))
            err = json.loads(body)
            self.assertEqual(err["code"], "URI_TOO_LONG" if status == 414 else "VALIDATION_ERROR")
            self.assertEqual(err["traceId"], headers.get("x-trace-id"))
            self.assertNotIn("nginx/", headers.get("server", ""))

    def test_deep_nesting(self):
        for depth in (20, 1000, 8000):  # 8000 levels: 16 KB, within the body limit
            self.assert4xx(purchase_raw(b"[" * depth + b"]" * depth))
            d = min(depth, 2500)  # 6 bytes a level
            self.assert4xx(purchase_raw(b'{"a":' * d + b"1" + b"}" * d))

    def test_too_large(self):
        pad = "x" * 20000
        r = S.request("POST", "/api/subscriptions/purchase",
                      {"planId": PLAN["id"], "paymentMethodId": "pm_card_visa", "pad": pad},
                      {"Idempotency-Key": str(uuid.uuid4())})
        self.assert4xx(r, 413, "PAYLOAD_TOO_LARGE")
        # beyond nginx's own limit: nginx answers, still in JSON
        r = purchase_raw(b"[" + b"1," * 50000 + b"1]")
        self.assert4xx(r, 413, "PAYLOAD_TOO_LARGE")
        r = S.admin("POST", "/api/plans", {"name": "big", "price_cents": 1, "total_capacity": 1,
                                           "description": "y" * 17000})
        self.assert4xx(r, 413, "PAYLOAD_TOO_LARGE")

    def test_bad_keys_and_headers(self):
        body = {"planId": PLAN["id"], "paymentMethodId": "pm_card_visa",
                "customer": {"email": "k@example.com", "name": "K"}}
        for key in ("", " ", "x" * 300, "'; DROP TABLE plans; --", "00000000-0000-0000-0000-00000000000g"):
            r = S.request("POST", "/api/subscriptions/purchase", body, {"Idempotency-Key": key})
            self.assertIn(r.json["code"], ("INVALID_IDEMPOTENCY_KEY", "MISSING_IDEMPOTENCY_KEY"), r)
            self.assertEqual(r.status, 400)
        r = S.request("POST", "/api/subscriptions/purchase", body,
                      {"Idempotency-Key": str(uuid.uuid4()), "Authorization": "Bearer " + "A" * 5000})
        # an unknown bearer on a public route changes nothing about the purchase rules
        self.assertIn(r.status, (201, 409))
        if r.status == 201:
            S.admin("POST", "/api/subscriptions/%s/cancel" % r.json["id"])

    def test_sql_in_fields(self):
        r = S.request("GET", "/api/plans/%27%20OR%20%271%27=%271")
        self.assertEqual(r.status, 404)
        r = S.admin("GET", "/api/audit-logs?action=%27%20OR%201%3D1%20--")
        self.assertEqual((r.status, r.json["logs"]), (200, []))

    def test_wrong_types_on_admin_routes(self):
        for body in ({"total_capacity": "5"}, {"total_capacity": -1}, {"total_capacity": {"$inc": 1}},
                     {"subscriptions_left": 100}, {"status": None}, {"features": [{"$gt": ""}]}, [1],
                     {"max_per_order": 0}, {"max_per_order": None}, {"max_per_order": "3"}, {"max_per_order": 2**64},
                     {"max_per_customer": 0}, {"max_per_customer": -1}, {"max_per_customer": {"$gt": 1}},
                     {"max_per_customer": 1.5}, {"max_per_customer": [2]}):
            self.assert4xx(S.admin("PATCH", "/api/plans/" + PLAN["id"], body))
        self.assertEqual((S.plan(PLAN["id"])["max_per_order"], S.plan(PLAN["id"])["max_per_customer"]), (10, None))

    def test_checkout_sessions(self):
        pid = PLAN["id"]
        good = {"planId": pid, "customer": {"email": "h@example.com", "name": "H"}}
        for body in (dict(good, expiresIn=0), dict(good, expiresIn=59), dict(good, expiresIn=86401),
                     dict(good, expiresIn="900"), dict(good, expiresIn=None), dict(good, expiresIn=-1e9),
                     dict(good, quantity=0), dict(good, quantity="2"), dict(good, planId={"$ne": ""}),
                     dict(good, paymentMethodId="pm_card_visa"), dict(good, status="completed"),
                     dict(good, customerId="0" * 24, customer=good["customer"]), [good], "x"):
            r = S.request("POST", "/api/checkout-sessions", body, {"Idempotency-Key": str(uuid.uuid4())})
            self.assert4xx(r)
        for raw in (b"{", b"\xff", b'{"planId":' + b"[" * 5000 + b"]" * 5000 + b"}"):
            r = S.request("POST", "/api/checkout-sessions", raw=raw,
                          headers={"Idempotency-Key": str(uuid.uuid4()), "Content-Type": "application/json"})
            self.assert4xx(r)
        # session routes with hostile ids and secrets
        for sid in ("x", "0" * 23, "%27%20OR%201=1", "../../etc/passwd", "0" * 24 + "/complete"):
            r = S.admin("GET", "/api/checkout-sessions/" + sid)
            self.assertIn(r.status, (404, 405), r)
        for secret in ("cst_" + "0" * 24 + "_" + "A" * 43, "cst_", "cst_" + "x" * 68, "sat_" + "0" * 24 + "_" + "A" * 43,
                       "Bearer cst_", "cst_%00"):
            r = S.request("GET", "/api/checkout-sessions/" + "0" * 24, headers={"Authorization": "Bearer " + secret})
            self.assertIn(r.status, (401, 403), r)
        for body in ({"paymentMethodId": {"$gt": ""}}, {"paymentMethodId": "visa"}, {"paymentMethodId": None},
                     {"paymentMethodId": "pm_card_visa", "amount_cents": 1}, [1]):
            r = S.admin("POST", "/api/checkout-sessions/%s/complete" % ("0" * 24), body,
                        {"Idempotency-Key": str(uuid.uuid4())})
            self.assert4xx(r)
        for body in ({"status": "completed"}, [1], "x"):
            self.assert4xx(S.admin("POST", "/api/checkout-sessions/%s/expire" % ("0" * 24), body))

    def test_change_plan(self):
        own = S.create_plan(capacity=2)
        sub = S.purchase(own["id"]).json
        path = "/api/subscriptions/%s/change-plan" % sub["id"]
        auth = {"Authorization": "Bearer " + sub["accessToken"]}
        for body in ({"planId": {"$ne": ""}}, {"planId": [PLAN["id"]]}, {"planId": PLAN["id"], "paymentMethodId": {"$gt": ""}},
                     {"planId": PLAN["id"], "paymentMethodId": "x"}, {"planId": PLAN["id"], "quantity": 5},
                     {"planId": PLAN["id"], "customerId": sub["customerId"]}, {}, [PLAN["id"]], "x", None,
                     {"planId": own["id"]}):
            self.assert4xx(S.request("POST", path, body, dict(auth, **{"Idempotency-Key": str(uuid.uuid4())})))
        for sid in ("x", "0" * 24, "..%2fplans"):
            r = S.request("POST", "/api/subscriptions/%s/change-plan" % sid, {"planId": PLAN["id"]},
                          dict(auth, **{"Idempotency-Key": str(uuid.uuid4())}))
            self.assertIn(r.status, (403, 404, 405), r)
        self.assertEqual(S.request("GET", "/api/subscriptions/" + sub["id"], headers=auth).json["status"], "active")
        self.assertEqual(S.plan(own["id"])["subscriptions_left"], 1)

    def test_no_route_reveals_or_changes_another_buyers_data(self):
        # buyer A's access token and client secret, tried on every route the server has, against
        # buyer B's subscription, session, customer and plan: never a 2xx, never B's data
        own = S.create_plan(capacity=6, price=700)
        other = S.create_plan(capacity=6, price=900)
        line = S.create_plan(capacity=1, waitlist_enabled=True)
        S.purchase(line["id"])

        def buyer(tag):
            email = "%s-%s@example.com" % (tag, uuid.uuid4().hex[:8])
            sub = S.purchase(own["id"], email=email).json
            sess = S.request("POST", "/api/checkout-sessions", {"planId": own["id"], "customer": {"email": email, "name": tag}},
                             {"Idempotency-Key": str(uuid.uuid4())}).json
            entry = S.request("POST", "/api/plans/%s/waitlist" % line["id"], {"customer": {"email": email, "name": tag}},
                              {"Idempotency-Key": str(uuid.uuid4())}).json
            return {"email": email, "sub": sub, "session": sess, "entry": entry}

        a, b = buyer("a"), buyer("b")
        ids = {"subscriptions": b["sub"]["id"], "checkout-sessions": b["session"]["id"],
               "customers": b["sub"]["customerId"], "plans": other["id"], "waitlist": b["entry"]["id"]}
        bodies = {"cancel": {}, "change-plan": {"planId": other["id"], "paymentMethodId": "pm_card_visa"},
                  "complete": {"paymentMethodId": "pm_card_visa"}, "expire": {},
                  "/api/plans": {"name": "Stolen " + uuid.uuid4().hex[:6], "price_cents": 1, "total_capacity": 1},
                  "/api/customers": {"email": "stolen-%s@example.com" % uuid.uuid4().hex[:6], "name": "S"},
                  "plans/:id": {"total_capacity": 1}}
        public = {("GET", "/api/health"), ("GET", "/api/plans"), ("GET", "/api/plans/:id"), ("GET", "/api/plans/:id/stats"),
                  ("POST", "/api/subscriptions/purchase"), ("POST", "/api/checkout-sessions"), ("GET", "/api/metrics"),
                  ("POST", "/api/plans/:id/waitlist"),
                  # sign-in is anyone's; a customer's session is tried on every route in test_signin
                  ("POST", "/api/customer/login"), ("POST", "/api/customer/sessions"),
                  # its credential is Stripe's signature, not a bearer token (test_stripe)
                  ("POST", "/api/stripe/webhook")}
        routes = [tuple(l.split()) for l in S.command("routes").stdout.splitlines() if l.strip()]
        self.assertGreaterEqual(len(routes), 18)
        tried = 0
        for method, pattern in routes:
            if (method, pattern) in public:
                continue
            kind = pattern.split("/")[2]
            path = pattern.replace(":id", ids.get(kind, "0" * 24))
            body = bodies.get(pattern.rsplit("/", 1)[-1], bodies.get(pattern, bodies.get("plans/:id") if kind == "plans" else None))
            for token in (a["sub"]["accessToken"], a["session"]["clientSecret"], a["entry"]["accessToken"]):
                r = S.request(method, path, body if method in ("POST", "PATCH") else None, {"Authorization": "Bearer " + token, "Idempotency-Key": str(uuid.uuid4())})
                self.assertIn(r.status, (401, 403), (method, path, r))
                for secret in (b["email"], b["sub"]["accessToken"], b["session"]["clientSecret"], b["entry"]["accessToken"]):
                    self.assertNotIn(secret, r.raw)
                tried += 1
        self.assertGreaterEqual(tried, 57)   # 19 routes that need a token, three tokens each
        # nothing of B's moved
        admin_view = S.admin("GET", "/api/subscriptions/" + b["sub"]["id"]).json
        self.assertEqual((admin_view["status"], admin_view["planId"]), ("active", own["id"]))
        self.assertEqual(S.admin("GET", "/api/checkout-sessions/" + b["session"]["id"]).json["status"], "open")
        self.assertEqual(S.plan(other["id"])["total_capacity"], 6)
        self.assertEqual(S.admin("GET", "/api/waitlist/" + b["entry"]["id"]).json["status"], "waiting")

    def test_invalid_utf8_is_refused_on_its_field(self):
        # issue 22.6: json-c checks only the byte structure; overlong forms, surrogates and code
        # points past U+10FFFF were stored, and GET /api/plans served text a strict client cannot
        # decode. Raw bytes and \u escapes, in every kind of string field.
        bad = [b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xe0\x80\xaf"]
        for b in bad:
            name = b"Plan " + uuid.uuid4().hex[:8].encode() + b
            for field, body in (
                    ("name", b'{"name":"' + name + b'","price_cents":1,"total_capacity":1}'),
                    ("description", b'{"name":"P' + uuid.uuid4().hex.encode() + b'","description":"d' + b +
                     b'","price_cents":1,"total_capacity":1}'),
                    ("features", b'{"name":"P' + uuid.uuid4().hex.encode() + b'","features":["f' + b +
                     b'"],"price_cents":1,"total_capacity":1}')):
                r = S.admin("POST", "/api/plans", raw=body, headers={"Content-Type": "application/json"})
                self.assertEqual((r.status, r.json["code"], r.json["details"]["field"]), (400, "VALIDATION_ERROR", field),
                                 (b, r))
            cust = b'{"planId":"%s","paymentMethodId":"pm_card_visa","customer":{"email":"%s@example.com","name":"N%s"}}'
            for field, body in (("customer.name", cust % (PLAN["id"].encode(), uuid.uuid4().hex.encode(), b)),
                                ("customer.email", cust % (PLAN["id"].encode(), uuid.uuid4().hex.encode() + b, b"n"))):
                r = purchase_raw(body)
                self.assertEqual((r.status, r.json["code"], r.json["details"]["field"]), (400, "VALIDATION_ERROR", field),
                                 (b, r))
            r = S.admin("POST", "/api/customers", raw=b'{"email":"e%s@example.com","name":"N%s"}' % (uuid.uuid4().hex.encode(), b),
                        headers={"Content-Type": "application/json"})
            self.assertEqual((r.status, r.json["details"]["field"]), (400, "name"), (b, r))
            # an unknown field whose very name is not text: refused without echoing it
            r = purchase_raw(b'{"x' + b + b'":1}')
            self.assertEqual((r.status, r.json["details"]["field"]), (400, ""), (b, r))
            r.raw.encode("utf-8")
        r = S.admin("GET", "/api/audit-logs?action=%C0%80", direct=True)   # (Prism decodes the query itself)
        self.assertEqual((r.status, r.json["details"]["field"]), (400, "action"), r)
        # every answer the service gives is text a strict decoder reads
        for path in ("/api/plans?status=all", "/api/audit-logs?limit=200"):
            self.assertEqual(S.admin("GET", path).status, 200, path)
        raw = subprocess.run(["curl", "-fsS", "-H", "Authorization: Bearer " + ADMIN,
                              "http://127.0.0.1:%d/api/plans?status=all" % S.direct_port], capture_output=True, check=True).stdout
        json.loads(raw.decode("utf-8", errors="strict"))
        # half a surrogate pair escaped alone (\ud800) is no character either (json-c would have
        # read it as U+FFFD, so that two different names became one): refused, nothing stored
        for esc in (b"\\ud800", b"\\udc00x", b"\\udbff\\u0041"):
            r = S.admin("POST", "/api/plans", raw=b'{"name":"Lone %s %s","price_cents":1,"total_capacity":1}' %
                        (esc, uuid.uuid4().hex[:6].encode()), headers={"Content-Type": "application/json"})
            self.assertEqual((r.status, r.json["code"]), (400, "VALIDATION_ERROR"), (esc, r))
        r = S.admin("POST", "/api/plans", raw=b'{"name":"Pair \\ud83c\\udf9f %s","price_cents":1,"total_capacity":1}' %
                    uuid.uuid4().hex[:6].encode(), headers={"Content-Type": "application/json"})
        self.assertEqual((r.status, r.json["name"][:6]), (201, "Pair \U0001f39f"), r)
        # well-formed text of every length of character still passes
        ok = S.admin("POST", "/api/plans", {"name": "Ünïcode € \U0001f39f " + uuid.uuid4().hex[:6], "price_cents": 1,
                                             "total_capacity": 1})
        self.assertEqual(ok.status, 201, ok)

    def test_a_key_replays_only_to_its_caller(self):
        # issue 22.5: buyer B's own token with the Idempotency-Key buyer A used, on A's resource,
        # got A's stored answer back (without the key: 403); on every keyed route that takes a token
        own, other = S.create_plan(capacity=10, price=700), S.create_plan(capacity=10, price=900)
        line = S.create_plan(capacity=1, waitlist_enabled=True)
        S.purchase(line["id"])

        def buyer(tag):
            email = "%s-%s@example.com" % (tag, uuid.uuid4().hex[:8])
            cust = {"email": email, "name": tag}

            def session():
                return S.request("POST", "/api/checkout-sessions", {"planId": own["id"], "customer": cust},
                                 {"Idempotency-Key": str(uuid.uuid4())}).json
            return {"cancel": S.purchase(own["id"], email=email).json, "change": S.purchase(own["id"], email=email).json,
                    "complete": session(), "expire": session(),
                    "leave": S.request("POST", "/api/plans/%s/waitlist" % line["id"], {"customer": cust},
                                       {"Idempotency-Key": str(uuid.uuid4())}).json}

        a, b = buyer("a"), buyer("b")
        routes = [("cancel", "/api/subscriptions/%s/cancel", "accessToken", {}),
                  ("change", "/api/subscriptions/%s/change-plan", "accessToken",
                   {"planId": other["id"], "paymentMethodId": "pm_card_visa"}),
                  ("complete", "/api/checkout-sessions/%s/complete", "clientSecret", {"paymentMethodId": "pm_card_visa"}),
                  ("expire", "/api/checkout-sessions/%s/expire", "clientSecret", {}),
                  ("leave", "/api/waitlist/%s/leave", "accessToken", {})]
        for what, path, secret, body in routes:
            key, url = str(uuid.uuid4()), path % a[what]["id"]
            mine = S.request("POST", url, body, {"Authorization": "Bearer " + a[what][secret], "Idempotency-Key": key})
            self.assertIn(mine.status, (200, 201), (what, mine))
            again = S.request("POST", url, body, {"Authorization": "Bearer " + a[what][secret], "Idempotency-Key": key})
            self.assertEqual((again.status, again.header("Idempotent-Replayed")), (mine.status, "true"), (what, again))
            theirs = S.request("POST", url, body, {"Authorization": "Bearer " + b[what][secret], "Idempotency-Key": key})
            self.assertEqual(theirs.status, 403, (what, theirs))
            self.assertEqual(theirs.json["code"], "FORBIDDEN", what)
            self.assertIsNone(theirs.header("Idempotent-Replayed"), what)
            self.assertNotIn(a[what]["id"], theirs.raw, what)
        # nothing of B's moved
        self.assertEqual(S.admin("GET", "/api/subscriptions/" + b["cancel"]["id"]).json["status"], "active")
        self.assertEqual(S.admin("GET", "/api/checkout-sessions/" + b["expire"]["id"]).json["status"], "open")
        self.assertEqual(S.admin("GET", "/api/waitlist/" + b["leave"]["id"]).json["status"], "waiting")

    def test_no_secret_kept_in_the_clear(self):
        """The secrets a buyer is shown once (a subscription's access token, bought or changed, a
        checkout session's client secret, a waiting-list token and its offer's client secret) are
        nowhere in the store in the clear, not even in the answers kept for replays, which still
        give them back."""
        own, other = S.create_plan(capacity=3, price=500), S.create_plan(capacity=3, price=900)
        line = S.create_plan(capacity=1, waitlist_enabled=True)

        def twice(method, path, body, headers=None, status=201):
            h = dict(headers or {}, **{"Idempotency-Key": str(uuid.uuid4())})
            first, again = S.request(method, path, body, h), S.request(method, path, body, h)
            self.assertEqual(first.status, status, first)
            self.assertEqual((again.status, again.raw, again.header("Idempotent-Replayed")), (status, first.raw, "true"))
            return first.json

        buyer = {"email": "sealed-%s@example.com" % uuid.uuid4().hex[:8], "name": "S"}
        sub = twice("POST", "/api/subscriptions/purchase", {"planId": own["id"], "paymentMethodId": "pm_card_visa", "customer": buyer})
        sess = twice("POST", "/api/checkout-sessions", {"planId": own["id"], "customer": buyer})
        changed = twice("POST", "/api/subscriptions/%s/change-plan" % sub["id"],
                        {"planId": other["id"], "paymentMethodId": "pm_card_visa"},
                        {"Authorization": "Bearer " + sub["accessToken"]}, status=200)
        seat = S.purchase(line["id"]).json
        entry = twice("POST", "/api/plans/%s/waitlist" % line["id"], {"customer": buyer})
        S.request("POST", "/api/subscriptions/%s/cancel" % seat["id"], {}, {"Authorization": "Bearer " + seat["accessToken"]})
        mine = {"Authorization": "Bearer " + entry["accessToken"]}
        offered = S.request("GET", "/api/waitlist/" + entry["id"], headers=mine).json
        self.assertEqual(offered["status"], "offered")
        # the offer's secret (kept sealed) opens its session; the admin reads the same
        opened = S.request("GET", "/api/checkout-sessions/" + offered["checkoutSessionId"],
                           headers={"Authorization": "Bearer " + offered["clientSecret"]})
        self.assertEqual((opened.status, opened.json["status"]), (200, "open"))
        self.assertEqual(S.admin("GET", "/api/waitlist/" + entry["id"]).json["clientSecret"], offered["clientSecret"])
        secrets = [sub["accessToken"], sess["clientSecret"], changed["accessToken"], seat["accessToken"],
                   entry["accessToken"], offered["clientSecret"]]
        kept = S.store_bytes()
        for secret in secrets:
            tail = secret[29:]  # after "sat_<id>_": the secret part alone
            self.assertEqual(len(tail), 43)
            self.assertFalse(tail.encode() in kept, "%s... is kept in the clear" % secret[:33])

    def test_check_still_passes(self):
        ok, out = S.check()
        self.assertTrue(ok, out)


if __name__ == "__main__":
    unittest.main()
