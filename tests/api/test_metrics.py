"""test_metrics.py - GET /api/metrics in Prometheus's text format, summed over every worker:
after a known load through four workers, the counters are exact; promtool finds nothing to
lint; and a real Prometheus server (Debian's) scrapes a running stack and answers rate() and
histogram_quantile() over what it scraped."""

import json
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse
import urllib.request

from stack import Stack, free_port, pool

S = None


def setUpModule():
    global S
    S = Stack(NUMATIX_WORKERS=4).start()


def tearDownModule():
    S.cleanup()


def scrape():
    r = S.request("GET", "/api/metrics")
    assert r.status == 200, r
    assert r.header("Content-Type").startswith("text/plain; version=0.0.4"), r.header("Content-Type")
    values = {}
    for line in r.raw.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


class Metrics(unittest.TestCase):
    def test_counts_add_up_over_all_workers(self):
        before = scrape()
        p = S.create_plan(capacity=20)
        methods = ["pm_card_visa"] * 20 + ["pm_card_chargeDeclined"] * 6
        # a declined card holds its seat for a moment, so a buyer may find the plan sold out
        # and a later one still get that seat: count every answer, of both rounds
        results = pool(16, methods, lambda m: S.purchase(p["id"], method=m))
        results += pool(8, list(range(8)), lambda i: S.purchase(p["id"]))
        created = sum(r.status == 201 for r in results)
        declined = sum(r.status == 402 for r in results)
        self.assertEqual(created + sum(r.status == 409 for r in results) + declined, 34)
        after = scrape()

        def delta(name):
            return after.get(name, 0) - before.get(name, 0)

        route = 'method="POST",route="/api/subscriptions/purchase"'
        self.assertEqual(delta('numatix_purchases_total{outcome="created"}'), created)
        self.assertEqual(delta('numatix_purchases_total{outcome="PAYMENT_FAILED"}'), declined)
        self.assertEqual(delta('numatix_purchases_total{outcome="PLAN_SOLD_OUT"}'),
                         34 - created - declined)
        self.assertEqual(delta('numatix_requests_total{%s,code="201"}' % route), created)
        # the subscriptions by status: every purchase made one, active or failed
        self.assertEqual(delta('numatix_subscriptions{status="active"}'), created)
        self.assertEqual(delta('numatix_subscriptions{status="failed"}'), declined)
        self.assertIn('numatix_subscriptions{status="past_due"}', after)
        self.assertEqual(delta('numatix_requests_total{%s,code="402"}' % route), declined)
        self.assertEqual(delta('numatix_request_duration_seconds_count{%s}' % route), 34)
        self.assertEqual(delta('numatix_processor_call_duration_seconds_count{op="authorize"}'), created + declined)
        plan = 'plan="%s",name="%s"' % (p["id"], p["name"])
        self.assertEqual(after['numatix_plan_seats_left{%s}' % plan], 20 - created)
        self.assertEqual(after['numatix_plan_seats_held{%s}' % plan], 0)
        # a plan taken off sale leaves the series: their number is the catalogue's
        S.admin("PATCH", "/api/plans/" + p["id"], {"status": "inactive"})
        self.assertNotIn('numatix_plan_seats_left{%s}' % plan, scrape())
        # every purchase was answered by one of the four workers, yet one set of counters saw them
        self.assertEqual(len(S.server_pids()[1]), 4)

    def test_text_format(self):
        S.create_plan(capacity=1, name='Quoted "plan" \\ with a backslash')
        body = S.request("GET", "/api/metrics").raw
        self.assertIn("# TYPE numatix_requests_total counter", body)
        self.assertIn("# TYPE numatix_request_duration_seconds histogram", body)
        self.assertIn('name="Quoted \\"plan\\" \\\\ with a backslash"', body)
        for line in body.splitlines():
            if line and not line.startswith("#"):
                self.assertRegex(line, r'^[a-z_]+(\{([a-z_]+="([^"\\]|\\.)*",?)*\})? [0-9.e+]+$')
        # promtool, Prometheus's own linter: nothing to say
        r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True)
        self.assertEqual((r.returncode, r.stdout + r.stderr), (0, ""))


class PrometheusScrapes(unittest.TestCase):
    """Debian's Prometheus server scraping the stack every second on loopback, while buyers buy."""

    def query(self, expr):
        url = "http://127.0.0.1:%d/api/v1/query?query=%s" % (self.port, urllib.parse.quote(expr))
        with urllib.request.urlopen(url, timeout=10) as r:
            out = json.load(r)
        self.assertEqual(out["status"], "success", out)
        return [float(v["value"][1]) for v in out["data"]["result"]]

    def until(self, expr, ok, timeout=120):
        end, got = time.time() + timeout, None
        while time.time() < end:
            try:
                got = self.query(expr)
            except OSError:
                got = None
            if got and ok(got):
                return got
            time.sleep(0.2)
        raise AssertionError("%s: %r after %d s\n%s" % (expr, got, timeout, open(self.log_path).read()[-3000:]))

    def test_rate_and_quantile_over_a_scraped_stack(self):
        self.dir = tempfile.mkdtemp(prefix="numatix-prom-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.port = free_port()
        conf = os.path.join(self.dir, "prometheus.yml")
        with open(conf, "w") as f:
            f.write("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                    "scrape_configs:\n- job_name: numatix\n  metrics_path: /api/metrics\n"
                    "  static_configs: [{targets: ['127.0.0.1:%d']}]\n" % S.port)
        self.log_path = os.path.join(self.dir, "prometheus.log")
        log = open(self.log_path, "w")
        prom = subprocess.Popen(["prometheus", "--config.file=" + conf, "--storage.tsdb.path=" + os.path.join(self.dir, "data"),
                                 "--web.listen-address=127.0.0.1:%d" % self.port], stdout=log, stderr=log)
        self.addCleanup(lambda: (prom.terminate(), prom.wait(timeout=30), log.close()))
        p = S.create_plan(capacity=100000)
        done = threading.Event()

        def buy():
            while not done.is_set():
                S.purchase(p["id"])
        buyers = [threading.Thread(target=buy) for _ in range(4)]
        for t in buyers:
            t.start()
        try:
            self.until('up{job="numatix"}', lambda v: v == [1.0])
            rate = self.until('rate(numatix_purchases_total{outcome="created"}[5s])', lambda v: v[0] > 0)
            q = self.until('histogram_quantile(0.9, sum by (le) (rate(numatix_request_duration_seconds_bucket'
                           '{route="/api/subscriptions/purchase"}[5s])))', lambda v: not math.isnan(v[0]))
        finally:
            done.set()
            for t in buyers:
                t.join()
        # a purchase's time resolves within the buckets: neither 0 nor past the last bound
        self.assertGreater(q[0], 0)
        self.assertLess(q[0], 10)
        self.assertGreater(rate[0], 0)
        seats = self.until('numatix_plan_seats_left{plan="%s"}' % p["id"], lambda v: v[0] < 100000)
        self.assertLess(seats[0], 100000)


if __name__ == "__main__":
    unittest.main()
