"""test_pg_faults.py - PostgreSQL restarted (fast shutdown, then start) in the middle of a
purchase load: requests during the outage get 503 with Retry-After; afterwards nothing is
oversold, every 201 is in the database, clients that retry with their keys settle exactly
once, and `check` passes. And PostgreSQL's disk filling up under purchases. Runs when the
suites run against PostgreSQL (tests/run.sh)."""

import os
import subprocess
import threading
import time
import unittest
import urllib.parse
import uuid

from stack import (ROOT, Stack, assert_settled_once, pool, release_disk, sell_through_a_full_disk, settle_purchase,
                   small_disk)


def server_dir():
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(os.environ["NUMATIX_TEST_PG"]).query)
    return q["host"][0]


def pg(command):
    subprocess.run([os.path.join(ROOT, "tests", "pg_server.sh"), command, server_dir()], check=True)


@unittest.skipUnless(os.environ.get("NUMATIX_TEST_STORE") == "postgresql",
                     "SKIPPED: PostgreSQL fault test - the suites run against SQLite here")
class RestartMidLoad(unittest.TestCase):
    def test_restart_mid_load(self):
        S = Stack(NUMATIX_WORKERS=4, NUMATIX_HOLD_TTL=6, NUMATIX_REAP_INTERVAL=1,
                  NUMATIX_PAYMENT_LATENCY_MS=50).start()
        try:
            p = S.create_plan(capacity=100)
            jobs = [str(uuid.uuid4()) for _ in range(300)]
            seen_503 = []
            answers = {}
            lock = threading.Lock()
            outage = threading.Event()

            def seen(r):
                if r.status == 503:
                    with lock:
                        seen_503.append(r)
                    outage.set()

            def buy(key):
                r = settle_purchase(S, p["id"], key, "pg-%s@example.com" % key[:8], seen=seen, cut_ok=True)
                with lock:
                    answers.setdefault(key, []).append(r)
                return r

            def restart():
                time.sleep(0.3)          # load runs: the plan is selling
                pg("stop")
                # the outage lasts until the service has been seen answering 503
                end = time.time() + 30
                while not outage.is_set() and time.time() < end:
                    r = S.request("GET", "/api/health")
                    if r.status == 503:
                        self.assertTrue(r.header("Retry-After"))
                        outage.set()
                    else:
                        time.sleep(0.05)
                pg("resume")

            t = threading.Thread(target=restart)
            t.start()
            results = pool(16, jobs, buy)
            t.join()
            self.assertTrue(outage.is_set(), "no request saw the outage")
            for r in seen_503:
                self.assertEqual(r.json["code"], "SERVICE_UNAVAILABLE")
                self.assertTrue(r.header("Retry-After"), r)
            created = [r for r in results if not isinstance(r, Exception) and r.status == 201]
            self.assertEqual([r for r in results if isinstance(r, Exception)], [])
            # no oversell (a hold that expired during the outage gave its seat back), every 201
            # in the database and active, and a key retried now gets the same answer
            assert_settled_once(self, S, p["id"], 100, created,
                                [(key, "pg-%s@example.com" % key[:8], answers[key][0]) for key in jobs[:20]])
            ok, out = S.check()
            self.assertTrue(ok, out)
        finally:
            S.cleanup()



@unittest.skipUnless(os.environ.get("NUMATIX_TEST_STORE") == "postgresql",
                     "SKIPPED: PostgreSQL fault test - the suites run against SQLite here")
class DiskFull(unittest.TestCase):
    """A PostgreSQL server of its own on a 64 MB disk (small WAL segments, so that the WAL it
    keeps fits) fills while purchases run: PostgreSQL refuses to extend its files — or, when
    it cannot write its WAL, PANICs, and its crash recovery may fail on the full disk and end
    the server — each answer a 201 or a JSON 503; once space is freed (and the server started
    again if it ended, as its supervisor would) the same keys settle once, nothing
    acknowledged is lost, check passes and pg_amcheck finds every table and index sound."""

    @staticmethod
    def supervise(server):
        """What systemd's Restart= does for a PostgreSQL that ended: wait until the server
        answers, or has ended (its postmaster.pid gone), and start it again then."""
        end = time.time() + 60
        while time.time() < end:
            if subprocess.run(["pg_isready", "-q", "-h", server]).returncode == 0:
                return
            if not os.path.exists(os.path.join(server, "data", "postmaster.pid")):
                subprocess.run([os.path.join(ROOT, "tests", "pg_server.sh"), "resume", server], check=True)
                return
            time.sleep(0.1)
        raise AssertionError("PostgreSQL neither answered nor ended")

    def test_a_full_disk_answers_503_and_sales_resume(self):
        if os.geteuid() != 0:
            self.skipTest("SKIPPED: mounting a small filesystem needs root")
        disk = small_disk(64)
        server = os.path.join(disk, "pg")
        S = None
        try:
            env = dict(os.environ, PG_INITDB_OPTS="--wal-segsize=1", PG_OPTS="-c min_wal_size=2MB -c max_wal_size=4MB")
            url = subprocess.run([os.path.join(ROOT, "tests", "pg_server.sh"), "start", server], env=env,
                                 check=True, capture_output=True, text=True).stdout.strip()
            # a retry may resume a purchase the full disk cut after its hold: once its lease
            # (half the hold) has run out; or find the hold expired meanwhile, which settles it too
            S = Stack(url, NUMATIX_WORKERS=2, NUMATIX_HOLD_TTL=10).start()
            sell_through_a_full_disk(self, S, disk, n=400, freed=lambda: self.supervise(server))
            r = subprocess.run(["/usr/lib/postgresql/%s/bin/pg_amcheck" % pg_major(), "--install-missing",
                                "--heapallindexed", "-h", server, "-U", "postgres", "numatix"],
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        finally:
            if S:
                S.cleanup()
            if os.path.exists(os.path.join(server, "data", "postmaster.pid")):
                subprocess.run([os.path.join(ROOT, "tests", "pg_server.sh"), "stop", server])
            release_disk(disk)


def pg_major():
    return sorted(os.listdir("/usr/lib/postgresql"), key=int)[-1]

if __name__ == "__main__":
    unittest.main()
