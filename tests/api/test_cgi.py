"""test_cgi.py - shared hosting: the binary as plain CGI under Debian's nginx and fcgiwrap, with
the shipped site nginx/fcgiwrap.conf and the settings in a file outside the web root. The
purchase page and a purchase work through it in Chromium; CGI processes racing for the last
seats sell exactly the capacity; a retried key is answered once; `numatix reap` (the cron
line) releases an abandoned hold; `numatix deliver` (another) sends the webhooks; check passes."""

import hashlib
import hmac
import http.client
import http.server
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest
import uuid

from stack import BIN, ROOT, free_port, parallel, start_site_nginx

ADMIN = "cgi-admin-token-0123456789abcdef"
W = None


class CgiHost:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="numatix-cgi-")
        self.port = free_port()
        self.limited_port = free_port()
        self.conf = os.path.join(self.dir, "numatix.conf")
        self.db = os.path.join(self.dir, "var", "numatix.db")
        os.makedirs(os.path.dirname(self.db))
        with open(self.conf, "w") as f:
            f.write("NUMATIX_DB=sqlite://%s\nNUMATIX_ADMIN_TOKEN=%s\nNUMATIX_HOLD_TTL=2\n" % (self.db, ADMIN))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NUMATIX_")}
        self.env["NUMATIX_CONFIG"] = self.conf
        self.procs = []

    def start(self):
        sock = os.path.join(self.dir, "fcgiwrap.sock")
        # fcgiwrap -c forks its children: its own process group, so that stop() ends them all
        self.procs.append(subprocess.Popen(["/usr/sbin/fcgiwrap", "-c", "8", "-s", "unix:" + sock],
                                           stdout=subprocess.DEVNULL, start_new_session=True,
                                           stderr=open(os.path.join(self.dir, "fcgiwrap.log"), "ab")))
        r = subprocess.run([BIN, "seed"], env=self.env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        # the shipped site, with this machine's paths and port in place of /srv/numatix and :80
        ngx = os.path.join(self.dir, "nginx")
        self.procs.append(start_site_nginx(ngx, os.path.join(ROOT, "nginx", "fcgiwrap.conf"), self.port,
                                           os.path.join(ROOT, "nginx"),
                                           (("unix:/run/fcgiwrap.socket", "unix:" + sock),
                                            # 24 CGI buyers race from this one address: no per-client limit
                                            ("include numatix/numatix-limits.conf;",
                                             'map $uri $numatix_write_client { default ""; } '
                                             "limit_req_zone $numatix_write_client zone=numatix_writes:1m rate=1r/s;"),
                                            ("/srv/numatix/numatix.conf", self.conf), ("/srv/numatix", ROOT))))
        # and the site exactly as shipped, its per-client limits included, on a port of its own
        self.procs.append(start_site_nginx(os.path.join(self.dir, "nginx-limited"),
                                           os.path.join(ROOT, "nginx", "fcgiwrap.conf"), self.limited_port,
                                           os.path.join(ROOT, "nginx"),
                                           (("unix:/run/fcgiwrap.socket", "unix:" + sock),
                                            ("/srv/numatix/numatix.conf", self.conf), ("/srv/numatix", ROOT))))
        for _ in range(200):
            try:
                if self.request("GET", "/api/health")[0] == 200:
                    return self
            except OSError:
                time.sleep(0.05)   # nginx is still binding its port: poll as run.sh does
        raise RuntimeError("the CGI host did not answer: " + open(os.path.join(ngx, "error.log")).read())

    def stop(self):
        for p in reversed(self.procs):
            if p.args[0].endswith("fcgiwrap"):
                os.killpg(p.pid, signal.SIGTERM)
            else:
                p.send_signal(signal.SIGQUIT)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def request(self, method, path, body=None, headers=None, port=None):
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=60)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers=dict({"Content-Type": "application/json"}, **(headers or {})))
            r = conn.getresponse()
            raw = r.read().decode()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(raw) if raw.startswith("{") else raw
        finally:
            conn.close()

    def plan(self, capacity):
        status, _, body = self.request("POST", "/api/plans", {"name": "CGI " + uuid.uuid4().hex[:10],
                                                              "price_cents": 900, "total_capacity": capacity},
                                       {"Authorization": "Bearer " + ADMIN})
        assert status == 201, body
        return body

    def purchase(self, plan_id, key=None, method="pm_card_visa", email=None):
        return self.request("POST", "/api/subscriptions/purchase",
                            {"planId": plan_id, "paymentMethodId": method,
                             "customer": {"email": email or "cgi-%s@example.com" % uuid.uuid4().hex[:12],
                                          "name": "CGI"}},
                            {"Idempotency-Key": key or str(uuid.uuid4())})

    def command(self, *args):
        return subprocess.run([BIN] + list(args), env=self.env, capture_output=True, text=True, timeout=60)


def setUpModule():
    global W
    W = CgiHost().start()


def tearDownModule():
    W.stop()


class SharedHosting(unittest.TestCase):
    def test_1_the_purchase_page_and_a_purchase_in_chromium(self):
        status, headers, page = W.request("GET", "/")
        self.assertEqual(status, 200)
        self.assertIn("purchase.js", page)
        self.assertIn("default-src 'self'", headers["content-security-policy"])
        p = W.plan(3)
        shot = os.path.join(ROOT, "tests", "artifacts", "purchase-cgi.png")
        r = subprocess.run(["node", os.path.join(ROOT, "tests", "browser", "cgi.mjs"),
                            "http://127.0.0.1:%d" % W.port, p["id"], shot],
                           capture_output=True, text=True, timeout=180, cwd=ROOT)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertTrue(r.stdout.startswith("ok "), r.stdout)
        sub_id = r.stdout.split()[1]
        status, _, sub = W.request("GET", "/api/subscriptions/" + sub_id, headers={"Authorization": "Bearer " + ADMIN})
        self.assertEqual((status, sub["status"], sub["planId"]), (200, "active", p["id"]))
        status, _, plan = W.request("GET", "/api/plans/" + p["id"])
        self.assertEqual(plan["subscriptions_left"], 2)

    def test_2_cgi_processes_racing_sell_exactly_the_capacity(self):
        p = W.plan(5)
        results = parallel(24, lambda i: W.purchase(p["id"]))
        statuses = [r[0] for r in results]
        self.assertEqual(statuses.count(201), 5, statuses)
        self.assertEqual(statuses.count(409), 19, statuses)
        self.assertTrue(all(r[2]["code"] == "PLAN_SOLD_OUT" for r in results if r[0] == 409))
        status, _, plan = W.request("GET", "/api/plans/" + p["id"])
        self.assertEqual((plan["subscriptions_left"], plan["subscriptions_held"]), (0, 0))

    def test_3_a_retried_key_is_answered_once(self):
        p = W.plan(5)
        key = str(uuid.uuid4())
        first = W.purchase(p["id"], key, email="retry@example.com")
        again = W.purchase(p["id"], key, email="retry@example.com")
        self.assertEqual(first[0], 201)
        self.assertEqual((again[0], again[2]), (201, first[2]))
        self.assertEqual(again[1].get("idempotent-replayed"), "true")
        status, _, plan = W.request("GET", "/api/plans/" + p["id"])
        self.assertEqual(plan["subscriptions_left"], 4)
        # HEAD, as plain CGI answers it: GET's status and headers, no body
        hstatus, head, hbody = W.request("HEAD", "/api/plans/" + p["id"])
        self.assertEqual((hstatus, hbody, head.get("content-type")), (200, "", "application/json; charset=utf-8"))
        # the same key with another body is another request: refused, nothing sold
        self.assertEqual(W.purchase(p["id"], key, email="other@example.com")[0], 422)

    def test_4_a_cgi_process_killed_mid_purchase_then_the_cron_reaper(self):
        # the host kills a CGI process (a CPU or time limit) while its payment runs: its seat
        # stays held until `numatix reap`, run by cron, finds the hold past its deadline
        p = W.plan(2)
        body = json.dumps({"planId": p["id"], "paymentMethodId": "pm_card_visa",
                           "customer": {"email": "killed@example.com", "name": "Killed"}}).encode()
        env = dict(W.env, GATEWAY_INTERFACE="CGI/1.1", REQUEST_METHOD="POST",
                   PATH_INFO="/api/subscriptions/purchase", CONTENT_TYPE="application/json",
                   CONTENT_LENGTH=str(len(body)), HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()),
                   NUMATIX_PAYMENT_LATENCY_MS="30000")
        proc = subprocess.Popen([BIN], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        proc.stdin.write(body)
        proc.stdin.close()
        deadline = time.monotonic() + 30
        while W.request("GET", "/api/plans/" + p["id"])[2]["subscriptions_held"] != 1:
            self.assertLess(time.monotonic(), deadline, "the hold never showed")
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        expired = 0
        deadline = time.monotonic() + 30
        while not expired:
            r = W.command("reap")
            self.assertEqual(r.returncode, 0, r.stderr)
            expired = int(r.stdout.split()[1]) if r.stdout.startswith("reap: ") and r.stdout.split()[1].isdigit() else 0
            self.assertLess(time.monotonic(), deadline, r.stdout)
            if not expired:
                time.sleep(0.2)   # the hold's deadline (NUMATIX_HOLD_TTL=2) is still ahead
        self.assertEqual(expired, 1)
        status, _, plan = W.request("GET", "/api/plans/" + p["id"])
        self.assertEqual((plan["subscriptions_left"], plan["subscriptions_held"]), (2, 0))
        r = W.command("check")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_7_webhooks_sent_by_the_cron_deliverer(self):
        # no server runs here: `numatix deliver`, the cron line, sends what is due, signed
        got = []

        class Hook(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                got.append((self.headers["Numatix-Signature"], raw))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        self.addCleanup(srv.server_close)
        self.addCleanup(srv.shutdown)
        admin = {"Authorization": "Bearer " + ADMIN}
        status, _, ep = W.request("POST", "/api/webhook-endpoints",
                                  {"url": "http://127.0.0.1:%d/h" % srv.server_address[1], "events": ["*"]}, admin)
        self.assertEqual(status, 201, ep)
        self.addCleanup(W.request, "DELETE", "/api/webhook-endpoints/" + ep["id"], None, admin)
        p = W.plan(1)
        self.assertEqual(W.purchase(p["id"])[0], 201)
        r = W.command("deliver")
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "deliver: 4 delivered, 0 failed, 0 to retry"), r.stderr)
        types = [json.loads(raw)["type"] for sig, raw in got]
        self.assertEqual(types, ["plan.created", "seat.held", "payment.authorized", "subscription.activated"])
        for sig, raw in got:
            t, v1 = [kv.split("=", 1)[1] for kv in sig.split(",")]
            self.assertEqual(v1, hmac.new(ep["secret"].encode(), t.encode() + b"." + raw, hashlib.sha256).hexdigest())
        # nothing more is due: a second run sends nothing again
        r = W.command("deliver")
        self.assertEqual(r.stdout.strip(), "deliver: 0 delivered, 0 failed, 0 to retry")
        self.assertEqual(len(got), 4)

    def test_6_the_shipped_site_limits_each_client(self):
        # 50 purchase POSTs as fast as one client sends them (invalid bodies: each CGI run is
        # short, and nothing is sold either way): the burst reaches the CGI, the rest is 429
        answers = [W.request("POST", "/api/subscriptions/purchase", {}, {"Idempotency-Key": str(uuid.uuid4())},
                             port=W.limited_port) for _ in range(50)]
        limited = [a for a in answers if a[0] == 429]
        self.assertGreaterEqual(len([a for a in answers if a[0] == 400]), 20)
        self.assertGreaterEqual(len(limited), 10, [a[0] for a in answers])
        for status, headers, body in limited:
            self.assertEqual((body["code"], headers["retry-after"]), ("RATE_LIMITED", "1"))
        # reads are not limited
        self.assertTrue(all(W.request("GET", "/api/plans", port=W.limited_port)[0] == 200 for _ in range(30)))

    def test_5_the_store_is_outside_the_web_root(self):
        status, _, _ = W.request("GET", "/../var/numatix.db")
        self.assertIn(status, (400, 404))
        self.assertEqual(W.request("GET", "/api/metrics")[0], 404)


if __name__ == "__main__":
    unittest.main()
