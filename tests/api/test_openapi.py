"""test_openapi.py - www/openapi.yaml is the API as served: it passes a maintained linter
(@redocly/cli, strict), every route the server matches is documented and every documented
route is served, real responses of every route validate against their documented schemas, and
nginx serves the document and its readable page (generated from it, never drifting)."""

import os
import re
import subprocess
import unittest
import uuid

import jsonschema
import yaml

from smtp_sink import Mailbox
from stack import BIN, ROOT, Stack

S = BOX = None
SPEC = None


def setUpModule():
    global S, SPEC, BOX
    with open(os.path.join(ROOT, "www", "openapi.yaml")) as f:
        SPEC = yaml.safe_load(f)
    BOX = Mailbox().start()
    S = Stack(NUMATIX_SMTP_URL=BOX.url, NUMATIX_MAIL_FROM="spec@example.com").start()


def tearDownModule():
    S.cleanup()
    BOX.stop()


def documented():
    """(METHOD, /api/path/:id) for every operation in the document."""
    out = set()
    for path, item in SPEC["paths"].items():
        for method in ("get", "post", "put", "patch", "delete"):
            if method in item:
                out.add((method.upper(), re.sub(r"\{[^}]+\}", ":id", path)))
    return out


def template_of(path):
    """The documented path template a concrete path falls under."""
    matches = [t for t in SPEC["paths"]
               if re.match("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(t)) + "$", path)]
    # a static route wins over a pattern, as in the server's table
    matches.sort(key=lambda t: "{" in t)
    return matches[0] if matches else None


class Document(unittest.TestCase):
    def test_linter_passes_strict(self):
        redocly = os.path.join(ROOT, "node_modules", ".bin", "redocly")
        r = subprocess.run([redocly, "lint", "--config", os.path.join(ROOT, "tests", "api", "redocly.yaml"),
                            os.path.join(ROOT, "www", "openapi.yaml")], capture_output=True, text=True,
                           timeout=120, cwd=ROOT)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("valid", r.stdout + r.stderr)

    def test_every_served_route_is_documented_and_every_documented_route_served(self):
        r = subprocess.run([BIN, "routes"], capture_output=True, text=True, env=S.env, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        served = {tuple(line.split(" ", 1)) for line in r.stdout.splitlines() if line}
        self.assertGreater(len(served), 10)
        self.assertEqual(served - documented(), set(), "served but not documented")
        self.assertEqual(documented() - served, set(), "documented but not served")

    def test_documented_routes_answer_through_nginx(self):
        # not the router's own 404/405: every documented operation reaches its handler
        for method, path in sorted(documented()):
            concrete = path.replace(":id", "0" * 24)
            r = S.request(method, concrete, body={} if method in ("POST", "PATCH") else None,
                          headers={"Idempotency-Key": str(uuid.uuid4())})
            self.assertFalse(r.status == 404 and r.json and r.json.get("message") == "No such route",
                             "%s %s: %r" % (method, path, r))
            self.assertNotEqual(r.status, 405, "%s %s: %r" % (method, path, r))

    def test_the_readable_page_is_generated_from_the_document(self):
        r = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "scripts", "apidoc.py"), "--check"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_nginx_serves_the_document_and_the_page(self):
        r = S.request("GET", "/openapi.yaml")
        self.assertEqual(r.status, 200)
        self.assertEqual(yaml.safe_load(r.raw)["openapi"], "3.1.0")
        r = S.request("GET", "/api.html")
        self.assertEqual(r.status, 200)
        self.assertIn("POST /api/subscriptions/purchase", r.raw)
        self.assertIn("script-src 'self'", r.header("Content-Security-Policy"))
        self.assertNotIn("<script", r.raw)
        self.assertNotIn("style=", r.raw)


class Responses(unittest.TestCase):
    """Real answers of every route, each checked against the schema its status documents."""

    seen = set()

    def conforms(self, method, path, r):
        template = template_of(path.split("?")[0])
        self.assertIsNotNone(template, path)
        op = SPEC["paths"][template][method.lower()]
        self.assertIn(str(r.status), op["responses"], "%s %s answered an undocumented %d: %r" %
                      (method, template, r.status, r))
        resp = op["responses"][str(r.status)]
        while "$ref" in resp:
            resp = SPEC["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
        content = resp.get("content", {})
        if r.status == 204:
            self.assertEqual((content, r.raw), ({}, ""), "%s %s: a 204 has no body" % (method, template))
        elif "application/json" in content:
            self.assertTrue(r.header("Content-Type").startswith("application/json"), r.header("Content-Type"))
            schema = content["application/json"]["schema"]
            resolver = jsonschema.RefResolver.from_schema(SPEC)
            jsonschema.Draft202012Validator(schema, resolver=resolver).validate(r.json)
        else:
            self.assertTrue(r.header("Content-Type").startswith("text/plain"), r.header("Content-Type"))
        for name in resp.get("headers", {}):
            if name == "X-Trace-Id":
                self.assertTrue(r.header(name), "%s %s: no X-Trace-Id" % (method, template))
        Responses.seen.add((method, template, r.status))
        return r

    def call(self, method, path, body=None, headers=None, admin=False):
        h = dict(headers or {})
        if admin:
            h["Authorization"] = "Bearer " + S.env["NUMATIX_ADMIN_TOKEN"]
        return self.conforms(method, path, S.request(method, path, body, h))

    def test_every_route_and_its_answers(self):
        key = lambda: {"Idempotency-Key": str(uuid.uuid4())}
        self.call("GET", "/api/health")
        self.call("GET", "/api/metrics")
        self.call("GET", "/api/plans")
        self.call("GET", "/api/plans?status=all")
        self.call("GET", "/api/plans?status=bogus")
        plan = self.call("POST", "/api/plans", {"name": "Spec " + uuid.uuid4().hex[:8], "price_cents": 500,
                                                "total_capacity": 1, "features": ["a"]}, admin=True).json
        self.call("POST", "/api/plans", {"name": plan["name"], "price_cents": 1, "total_capacity": 1}, admin=True)
        self.call("POST", "/api/plans", {"name": "x", "price_cents": -1, "total_capacity": 1}, admin=True)
        self.call("POST", "/api/plans", {"name": "x", "price_cents": 1, "total_capacity": 1})
        pid = plan["id"]
        self.call("GET", "/api/plans/" + pid)
        self.call("GET", "/api/plans/" + "f" * 24)
        self.call("GET", "/api/plans/%s/stats" % pid)
        self.call("PATCH", "/api/plans/" + pid, {"description": "now described"}, admin=True)
        self.call("PATCH", "/api/plans/" + pid, {"total_capacity": 0}, admin=True)
        bought_email = "spec-%s@example.com" % uuid.uuid4().hex[:8]
        bought = self.call("POST", "/api/subscriptions/purchase",
                           {"planId": pid, "paymentMethodId": "pm_card_visa",
                            "customer": {"email": bought_email, "name": "Spec"}},
                           key()).json
        self.call("POST", "/api/subscriptions/purchase",
                  {"planId": pid, "paymentMethodId": "pm_card_visa", "customerId": bought["customerId"]}, key())
        self.call("PATCH", "/api/plans/" + pid, {"total_capacity": 3}, admin=True)
        self.call("POST", "/api/subscriptions/purchase",
                  {"planId": pid, "paymentMethodId": "pm_card_chargeDeclined", "customerId": bought["customerId"]},
                  key())
        self.call("POST", "/api/subscriptions/purchase", {"planId": pid, "paymentMethodId": "pm_card_visa"})
        k = key()
        self.call("POST", "/api/subscriptions/purchase",
                  {"planId": pid, "paymentMethodId": "pm_card_visa", "customerId": bought["customerId"]}, k)
        self.call("POST", "/api/subscriptions/purchase",
                  {"planId": pid, "paymentMethodId": "pm_card_amex", "customerId": bought["customerId"]}, k)
        self.call("POST", "/api/subscriptions/purchase",
                  {"planId": pid, "paymentMethodId": "pm_card_visa", "customerId": bought["customerId"]},
                  {"Idempotency-Key": str(uuid.uuid4()), "Content-Type": "application/json"})
        big = S.request("POST", "/api/subscriptions/purchase", raw=b'{"planId":"' + b"a" * 20000 + b'"}',
                        headers=dict(key(), **{"Content-Type": "application/json"}))
        self.conforms("POST", "/api/subscriptions/purchase", big)
        token = {"Authorization": "Bearer " + bought["accessToken"]}
        sid = bought["id"]
        self.call("GET", "/api/subscriptions/" + sid, headers=token)
        self.call("GET", "/api/subscriptions/" + sid)
        self.call("GET", "/api/subscriptions/" + "e" * 24, admin=True)
        pricier = self.call("POST", "/api/plans", {"name": "Spec P " + uuid.uuid4().hex[:8], "price_cents": 900,
                                                   "total_capacity": 2}, admin=True).json
        moved = self.call("POST", "/api/subscriptions/%s/change-plan" % sid, {"planId": pricier["id"],
                          "paymentMethodId": "pm_card_visa"}, dict(token, **key())).json
        self.call("POST", "/api/subscriptions/%s/change-plan" % moved["id"], {"planId": pid, "paymentMethodId": "bad"},
                  dict({"Authorization": "Bearer " + moved["accessToken"]}, **key()))
        self.call("POST", "/api/subscriptions/%s/change-plan" % sid, {"planId": pid}, dict(token, **key()))
        self.call("GET", "/api/subscriptions/" + moved["id"], headers={"Authorization": "Bearer " + moved["accessToken"]})
        sid = self.call("POST", "/api/subscriptions/purchase",
                        {"planId": pid, "paymentMethodId": "pm_card_visa", "customerId": bought["customerId"]},
                        key()).json["id"]
        # a subscription's life: an end scheduled, resumed, a card saved; refusals
        self.call("POST", "/api/subscriptions/%s/cancel" % sid, {"atPeriodEnd": True}, admin=True)
        self.call("POST", "/api/subscriptions/%s/cancel" % sid, {"atPeriodEnd": "yes"}, admin=True)
        self.call("POST", "/api/subscriptions/%s/resume" % sid, admin=True)
        self.call("POST", "/api/subscriptions/%s/resume" % sid, {}, admin=True)
        self.call("POST", "/api/subscriptions/%s/payment-method" % sid, {"paymentMethodId": "pm_card_mastercard"},
                  admin=True)
        self.call("POST", "/api/subscriptions/%s/payment-method" % sid, {"paymentMethodId": "card"}, admin=True)
        self.call("POST", "/api/subscriptions/%s/payment-method" % ("d" * 24), {"paymentMethodId": "pm_card_visa"},
                  admin=True)
        self.call("POST", "/api/subscriptions/%s/cancel" % sid, admin=True)
        self.call("POST", "/api/subscriptions/%s/cancel" % sid, admin=True)
        self.call("POST", "/api/subscriptions/%s/payment-method" % sid, {"paymentMethodId": "pm_card_visa"},
                  admin=True)
        self.call("POST", "/api/plans", {"name": "y", "price_cents": 1, "total_capacity": 1}, headers=token)
        # sign-in, and the customer's own routes
        self.call("POST", "/api/customer/login", {"email": bought_email})
        self.call("POST", "/api/customer/login", {"email": "not-an-address"})
        link = BOX.login_link(bought_email)
        session = self.call("POST", "/api/customer/sessions", {"loginToken": link}).json
        self.call("POST", "/api/customer/sessions", {"loginToken": link})
        self.call("POST", "/api/customer/sessions", {})
        mine = {"Authorization": "Bearer " + session["sessionToken"]}
        self.call("GET", "/api/customer", headers=mine)
        self.call("GET", "/api/customer", admin=True)
        self.call("GET", "/api/customer")
        self.call("GET", "/api/customer/subscriptions?limit=1", headers=mine)
        self.call("GET", "/api/customer/subscriptions?limit=0", headers=mine)
        self.call("GET", "/api/customer/payments", headers=mine)
        self.call("GET", "/api/customer/payments?limit=500", headers=mine)
        self.call("GET", "/api/customer/waitlist?limit=5", headers=mine)
        self.call("GET", "/api/customer/waitlist", headers=token)
        self.call("GET", "/api/subscriptions/" + "e" * 24, headers=mine)
        fresh = self.call("POST", "/api/subscriptions/%s/access-token" % bought["id"], {}, dict(mine, **key())).json
        self.call("POST", "/api/subscriptions/%s/access-token" % bought["id"], None, dict(mine, **key()))
        self.call("POST", "/api/subscriptions/%s/access-token" % bought["id"], {"x": 1}, dict(mine, **key()))
        self.call("POST", "/api/subscriptions/%s/access-token" % ("e" * 24), {}, dict(mine, **key()))
        self.call("POST", "/api/subscriptions/%s/access-token" % bought["id"], {},
                  {"Authorization": "Bearer " + fresh["accessToken"]})
        self.call("DELETE", "/api/customer/sessions/current", headers=mine)
        self.call("DELETE", "/api/customer/sessions/current", headers=mine)
        cust = self.call("POST", "/api/customers", {"email": "c-%s@example.com" % uuid.uuid4().hex[:8],
                                                    "name": "C"}, admin=True).json
        self.call("POST", "/api/customers", {"email": cust["email"], "name": "C"}, admin=True)
        self.call("GET", "/api/customers/%s/subscriptions?limit=1" % bought["customerId"], admin=True)
        self.call("GET", "/api/customers/%s/subscriptions?limit=0" % bought["customerId"], admin=True)
        self.call("GET", "/api/customers/%s/subscriptions" % ("d" * 24), admin=True)
        self.call("GET", "/api/audit-logs?limit=5&planId=" + pid, admin=True)
        self.call("GET", "/api/audit-logs", headers=token)
        self.call("GET", "/api/events?limit=20", admin=True)
        self.call("GET", "/api/events?after=-1", admin=True)
        self.call("GET", "/api/events", headers=token)
        hook = self.call("POST", "/api/webhook-endpoints", {"url": "http://127.0.0.1:9/hook", "events": ["seat.held"]},
                         admin=True).json
        self.call("POST", "/api/webhook-endpoints", {"url": "ftp://x", "events": ["*"]}, admin=True)
        self.call("GET", "/api/webhook-endpoints", admin=True)
        self.call("GET", "/api/webhook-endpoints/%s/deliveries?limit=5" % hook["id"], admin=True)
        self.call("GET", "/api/webhook-endpoints/%s/deliveries" % ("e" * 24), admin=True)
        self.call("DELETE", "/api/webhook-endpoints/" + hook["id"], admin=True)
        self.call("DELETE", "/api/webhook-endpoints/" + hook["id"], admin=True)
        wl = self.call("POST", "/api/plans", {"name": "Spec W " + uuid.uuid4().hex[:8], "price_cents": 100,
                                              "total_capacity": 1, "waitlist_enabled": True}, admin=True).json
        waiter = {"customer": {"email": "wl-%s@example.com" % uuid.uuid4().hex[:8], "name": "W"}}
        self.call("POST", "/api/plans/%s/waitlist" % wl["id"], waiter, key())
        self.call("POST", "/api/subscriptions/purchase", {"planId": wl["id"], "paymentMethodId": "pm_card_visa",
                                                          "customer": {"email": "wlb@example.com", "name": "B"}}, key())
        entry = self.call("POST", "/api/plans/%s/waitlist" % wl["id"], waiter, key()).json
        self.call("POST", "/api/plans/%s/waitlist" % wl["id"], waiter, key())
        self.call("POST", "/api/plans/%s/waitlist" % wl["id"], {"quantity": 0}, key())
        self.call("POST", "/api/plans/%s/waitlist" % ("c" * 24), waiter, key())
        self.call("GET", "/api/waitlist/" + entry["id"], headers={"Authorization": "Bearer " + entry["accessToken"]})
        self.call("GET", "/api/waitlist/" + entry["id"], headers=token)
        self.call("GET", "/api/waitlist/" + entry["id"])
        self.call("GET", "/api/waitlist/" + "c" * 24, admin=True)
        self.call("GET", "/api/plans/%s/waitlist?limit=5" % wl["id"], admin=True)
        self.call("GET", "/api/plans/%s/waitlist" % wl["id"], headers=token)
        self.call("GET", "/api/plans/%s/waitlist?limit=0" % wl["id"], admin=True)
        self.call("GET", "/api/plans/%s/waitlist" % ("c" * 24), admin=True)
        self.call("POST", "/api/waitlist/%s/leave" % entry["id"], {"x": 1}, admin=True)
        self.call("POST", "/api/waitlist/%s/leave" % entry["id"], None,
                  {"Authorization": "Bearer " + entry["accessToken"]})
        plan2 = self.call("POST", "/api/plans", {"name": "Spec S " + uuid.uuid4().hex[:8], "price_cents": 300,
                                                 "total_capacity": 3, "max_per_customer": 2}, admin=True).json
        cs_body = {"planId": plan2["id"], "quantity": 2, "customer": {"email": "cs@example.com", "name": "S"}}
        sess = self.call("POST", "/api/checkout-sessions", cs_body, key()).json
        self.call("POST", "/api/checkout-sessions", dict(cs_body, quantity=1), key())
        self.call("POST", "/api/checkout-sessions", dict(cs_body, expiresIn=1), key())
        secret = {"Authorization": "Bearer " + sess["clientSecret"]}
        self.call("GET", "/api/checkout-sessions/" + sess["id"], headers=secret)
        self.call("GET", "/api/checkout-sessions/" + sess["id"], headers=token)
        self.call("GET", "/api/checkout-sessions/" + "c" * 24, admin=True)
        self.call("POST", "/api/checkout-sessions/%s/complete" % sess["id"], {"paymentMethodId": "pm_card_chargeDeclined"},
                  dict(secret, **key()))
        self.call("POST", "/api/checkout-sessions/%s/complete" % sess["id"], {"paymentMethodId": "pm_card_visa"},
                  dict(secret, **key()))
        self.call("POST", "/api/checkout-sessions/%s/expire" % sess["id"], headers=secret)
        other = self.call("POST", "/api/checkout-sessions", dict(cs_body, quantity=1,
                                                                 customer={"email": "cs2@example.com", "name": "T"}),
                          key()).json
        self.call("POST", "/api/checkout-sessions/%s/expire" % other["id"], {},
                  {"Authorization": "Bearer " + other["clientSecret"]})
        # 3-D Secure: the bank asks, the simulated bank's page, then the completion pays
        asked = self.call("POST", "/api/checkout-sessions", dict(cs_body, quantity=1,
                                                                 customer={"email": "cs3@example.com", "name": "U"}),
                          key()).json
        asks = {"Authorization": "Bearer " + asked["clientSecret"]}
        self.call("POST", "/api/checkout-sessions/%s/authenticate" % asked["id"], {}, asks)
        self.call("POST", "/api/checkout-sessions/%s/complete" % asked["id"],
                  {"paymentMethodId": "pm_card_authenticationRequired"}, dict(asks, **key()))
        self.call("POST", "/api/checkout-sessions/%s/authenticate" % asked["id"], None, asks)
        self.call("POST", "/api/checkout-sessions/%s/complete" % asked["id"],
                  {"paymentMethodId": "pm_card_authenticationRequired"}, dict(asks, **key()))
        self.call("GET", "/api/renewals?days=60", admin=True)
        self.call("GET", "/api/renewals?days=91", admin=True)
        self.call("GET", "/api/renewals", headers=token)
        self.call("GET", "/api/payments/summary", admin=True)
        self.call("GET", "/api/payments/summary", headers=token)
        self.call("GET", "/api/mail?limit=5", admin=True)
        self.call("GET", "/api/mail?status=queued", admin=True)
        self.call("GET", "/api/mail?status=lost", admin=True)
        self.call("GET", "/api/mail", headers=token)
        # Stripe's events: with the simulated processor, no such route
        self.call("POST", "/api/stripe/webhook", {"id": "evt_1", "type": "charge.refunded", "data": {"object": {}}},
                  {"Stripe-Signature": "t=1,v1=00"})
        # every operation was seen answering at least once, and each status the test meant to see
        ops = {(m, t) for m, t, _ in Responses.seen}
        self.assertEqual(len(ops), len(documented()), sorted(documented()))
        statuses = {s for _, _, s in Responses.seen}
        self.assertTrue({200, 201, 400, 401, 402, 403, 404, 409, 413, 422} <= statuses, sorted(statuses))


if __name__ == "__main__":
    unittest.main()
