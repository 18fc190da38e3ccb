"""test_replica.py - public reads from a PostgreSQL standby (NUMATIX_DB_REPLICA): a real
streaming standby made by pg_basebackup -R on loopback beside a primary of its own. The plan
reads are served by it (counted by the service and by the standby itself); a replay paused past
NUMATIX_REPLICA_MAX_LAG_MS sends them to the primary; the standby stopped under load costs no
error; every write, and every read that decides a seat, stays on the primary."""

import os
import shutil
import subprocess
import tempfile
import threading
import unittest

from stack import ROOT, Stack, until

PG = os.path.join(ROOT, "tests", "pg_server.sh")
# the standby's bound of lag: above the blips of a loaded machine (the lag reads as the time since
# the last replayed transaction while WAL is in flight, about a second on an idle primary)
BOUND_MS = 5000
# the standby's lag as the service reads it (store_pg.c, pg_replica_lag)
LAG = ("SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 ELSE"
       " (extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()) * 1000)::bigint END")


def psql(url, sql):
    return subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", url, "-c", sql], check=True,
                          capture_output=True, text=True).stdout.strip()




class Standby(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="numatix-replica-")
        os.chmod(cls.dir, 0o755)   # the servers run as postgres
        cls.primary_dir, cls.standby_dir = os.path.join(cls.dir, "primary"), os.path.join(cls.dir, "standby")
        cls.primary = subprocess.run([PG, "start", cls.primary_dir], check=True, capture_output=True, text=True).stdout.strip()
        cls.standby = None
        try:
            # the schema first, so the standby starts with it
            subprocess.run([os.environ.get("NUMATIX_BIN") or os.path.join(ROOT, "cgi-bin", "numatix"), "check"],
                           env=dict(os.environ, NUMATIX_DB=cls.primary), capture_output=True)
            cls.standby = subprocess.run([PG, "standby", cls.standby_dir, cls.primary_dir], check=True, capture_output=True,
                                         text=True, env=dict(os.environ, PG_OPTS="-c log_statement=all")).stdout.strip()
            cls.S = Stack(store_url=cls.primary, NUMATIX_DB_REPLICA=cls.standby, NUMATIX_REPLICA_MAX_LAG_MS=BOUND_MS,
                          NUMATIX_WORKERS=2).start()
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "S", None):
            cls.S.cleanup()
        for d in (cls.standby_dir, cls.primary_dir):
            if os.path.exists(os.path.join(d, "data", "postmaster.pid")):
                subprocess.run([PG, "stop", d], capture_output=True)
        shutil.rmtree(cls.dir, ignore_errors=True)

    def reads(self):
        m = {}
        for line in self.S.request("GET", "/api/metrics").raw.splitlines():
            if line.startswith("numatix_public_reads_total{"):
                m[line.split('"')[1]] = int(line.rsplit(" ", 1)[1])
        return m

    def replicated(self, plan_id):
        """Waits until the standby has the plan (its replay caught up)."""
        until(lambda: psql(self.standby, "SELECT count(*) FROM plans WHERE id = '%s'" % plan_id) == "1",
              what="the plan on the standby")

    def test_1_the_standby_serves_the_plan_reads(self):
        S = self.S
        p = S.create_plan(capacity=5, price=700)
        self.replicated(p["id"])
        log = os.path.join(self.standby_dir, "server.log")
        logged = open(log, errors="replace").read().count("FROM plans")
        before = self.reads()
        for path in ["/api/plans", "/api/plans/" + p["id"], "/api/plans/%s/stats" % p["id"]] * 20:
            r = S.request("GET", path)
            self.assertEqual(r.status, 200, r)
        after = self.reads()
        served = after["standby"] - before["standby"]
        self.assertEqual(served + after["primary"] - before["primary"], 60)
        # an idle primary's standby is not behind: it answers (a moment of lag may send some to
        # the primary on a loaded machine)
        self.assertGreater(served, 0)
        # and the standby itself ran those reads (it logs every statement)
        self.assertGreaterEqual(open(log, errors="replace").read().count("FROM plans") - logged, served)
        # writes and seats stay on the primary
        self.assertEqual(S.purchase(p["id"]).status, 201)
        until(lambda: S.plan(p["id"])["subscriptions_left"] == 4, what="the purchase seen in the reads")
        ok, out = S.check()
        self.assertTrue(ok, out)

    def test_2_a_standby_behind_its_bound_leaves_the_reads_to_the_primary(self):
        S = self.S
        p = S.create_plan(capacity=5, price=700)
        self.replicated(p["id"])
        psql(self.standby, "SELECT pg_wal_replay_pause()")
        try:
            self.assertEqual(S.admin("PATCH", "/api/plans/" + p["id"], {"price_cents": 900}).status, 200)
            # the standby still has 700; once its lag is past the bound (and each worker's last
            # reading of it, REPLICA_CHECK_MS old at most, is too), the primary's 900 is read
            until(lambda: int(psql(self.standby, LAG)) > BOUND_MS + 300, what="the standby's lag past its bound")
            before = self.reads()
            for _ in range(20):
                self.assertEqual(S.plan(p["id"])["price_cents"], 900)
            after = self.reads()
            self.assertEqual((after["primary"] - before["primary"], after["standby"] - before["standby"]), (20, 0))
            self.assertEqual(psql(self.standby, "SELECT price_cents FROM plans WHERE id = '%s'" % p["id"]), "700")
        finally:
            psql(self.standby, "SELECT pg_wal_replay_resume()")
        until(lambda: psql(self.standby, "SELECT price_cents FROM plans WHERE id = '%s'" % p["id"]) == "900",
              what="the standby caught up")

    def test_3_the_standby_stopped_under_load_costs_no_error(self):
        S = self.S
        p = S.create_plan(capacity=5, price=700)
        self.replicated(p["id"])
        answers, done = [], threading.Event()

        def read():
            while not done.is_set():
                answers.append(S.request("GET", "/api/plans/%s/stats" % p["id"]).status)
        readers = [threading.Thread(target=read) for _ in range(4)]
        for t in readers:
            t.start()
        try:
            until(lambda: len(answers) > 50, what="reads under way")
            subprocess.run([PG, "stop", self.standby_dir], check=True, capture_output=True)
            before = self.reads()
            until(lambda: self.reads()["primary"] - before["primary"] > 100, what="reads on the primary")
        finally:
            done.set()
            for t in readers:
                t.join()
        self.assertEqual(set(answers), {200})
        # every buyer's purchase and read still works
        self.assertEqual(S.purchase(p["id"]).status, 201)
        self.assertEqual(S.plan(p["id"])["subscriptions_left"], 4)


if __name__ == "__main__":
    unittest.main()
