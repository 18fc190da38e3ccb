"""test_metrics.py - GET /api/metrics in Prometheus's text format, summed over every worker:
after a known load through four workers, the counters are exact."""

import unittest

from stack import Stack, pool

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
        self.assertEqual(delta('numatix_requests_total{%s,status="201"}' % route), created)
        self.assertEqual(delta('numatix_requests_total{%s,status="402"}' % route), declined)
        self.assertEqual(delta('numatix_request_duration_ms_count{%s}' % route), 34)
        self.assertEqual(after['numatix_plan_seats_left{plan="%s"}' % p["id"]], 20 - created)
        self.assertEqual(after['numatix_plan_seats_held{plan="%s"}' % p["id"]], 0)
        # every purchase was answered by one of the four workers, yet one set of counters saw them
        self.assertEqual(len(S.server_pids()[1]), 4)

    def test_text_format(self):
        body = S.request("GET", "/api/metrics").raw
        self.assertIn("# TYPE numatix_requests_total counter", body)
        self.assertIn("# TYPE numatix_request_duration_ms histogram", body)
        for line in body.splitlines():
            if line and not line.startswith("#"):
                self.assertRegex(line, r'^[a-z_]+(\{[^}]*\})? [0-9.e+]+$')


if __name__ == "__main__":
    unittest.main()
