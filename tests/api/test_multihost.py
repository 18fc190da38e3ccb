"""test_multihost.py - workers on several machines against one PostgreSQL, for real: two hosts
made with network namespaces (ip netns, veth) each run a FastCGI server over TCP
(NUMATIX_SOCKET=host:port) against one PostgreSQL reached over TCP, and nginx balances /api/
across both. 500 buyers race for 100 seats through it; then one host's whole server is
SIGKILLed in the middle of a load. Runs with the PostgreSQL suites, as root (namespaces)."""

import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest
import uuid

from stack import BIN, ROOT, Stack, assert_settled_once, free_port, pool, settle_purchase

# a /16 of its own for each run, so two runs on one machine do not collide
NET = "10.%d" % random.randint(100, 250)


def sh(*args):
    subprocess.run(args, check=True, capture_output=True)


class Hosts:
    """Two hosts: namespace i has NET.i.2 on a veth whose other end, NET.i.1, is this machine;
    PostgreSQL listens on the NET.i.1 ends."""

    def __init__(self):
        self.tag = uuid.uuid4().hex[:6]
        self.names = ["nxa" + self.tag, "nxb" + self.tag]
        self.procs = {}
        self.logs = {}
        self.dir = tempfile.mkdtemp(prefix="numatix-hosts-")

    def up(self):
        for i, ns in enumerate(self.names, 1):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", "h" + ns, "type", "veth", "peer", "name", "n" + ns)
            sh("ip", "link", "set", "n" + ns, "netns", ns)
            sh("ip", "addr", "add", "%s.%d.1/24" % (NET, i), "dev", "h" + ns)
            sh("ip", "link", "set", "h" + ns, "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", "%s.%d.2/24" % (NET, i), "dev", "n" + ns)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "n" + ns, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def serve(self, i, db_for, env):
        """Starts host i's whole FastCGI server (master, workers, reaper) in its namespace."""
        ns = self.names[i]
        log = open(os.path.join(self.dir, ns + ".log"), "ab")
        e = dict(env, NUMATIX_SOCKET="%s.%d.2:9000" % (NET, i + 1), NUMATIX_DB=db_for(i + 1))
        self.procs[i] = subprocess.Popen(["ip", "netns", "exec", ns, BIN, "serve"], env=e, stdout=log,
                                         stderr=log, start_new_session=True)
        self.logs[i] = log.name

    def upstreams(self):
        return " ".join("%s.%d.2:9000" % (NET, i + 1) for i in range(len(self.names)))

    def kill(self, i):
        os.killpg(self.procs[i].pid, signal.SIGKILL)
        self.procs[i].wait()

    def served(self, i):
        """Purchases host i answered, by its JSON request log lines."""
        n = 0
        for line in open(self.logs[i], errors="replace"):
            if line.startswith("{"):
                entry = json.loads(line)
                n += entry.get("event") == "request" and entry.get("route") == "/api/subscriptions/purchase"
        return n

    def down(self):
        for i, p in self.procs.items():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
        for ns in self.names:
            subprocess.run(["ip", "link", "del", "h" + ns], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def can_make_hosts():
    return os.geteuid() == 0 and shutil.which("ip") and os.environ.get("NUMATIX_TEST_STORE") == "postgresql"


@unittest.skipUnless(can_make_hosts(), "SKIPPED: several-hosts test - needs root, ip netns and the PostgreSQL suites")
class SeveralHosts(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.H = Hosts()
        cls.pgdir = tempfile.mkdtemp(prefix="numatix-pg-hosts-")
        cls.port = free_port()
        try:
            cls.H.up()
            env = dict(os.environ, PG_LISTEN="%s.1.1,%s.2.1" % (NET, NET), PG_PORT=str(cls.port))
            local = subprocess.run([os.path.join(ROOT, "tests", "pg_server.sh"), "start", cls.pgdir], env=env,
                                   check=True, capture_output=True, text=True).stdout.strip()
            # each host reaches PostgreSQL over TCP, at its own gateway address
            db_for = lambda i: "postgresql://postgres@%s.%d.1:%d/numatix" % (NET, i, cls.port)
            server_env = dict(os.environ, NUMATIX_WORKERS="3", NUMATIX_HOLD_TTL="6", NUMATIX_REAP_INTERVAL="1",
                              NUMATIX_PAYMENT_LATENCY_MS="30", NUMATIX_ADMIN_TOKEN="test-admin-token-0123456789abcdef",
                              # one simulated processor for every host, as one remote service
                              NUMATIX_SIM_DB=os.path.join(cls.pgdir, "sim.processor.db"))
            for i in range(2):
                cls.H.serve(i, db_for, server_env)
            cls.S = Stack(store_url=local, NUMATIX_UPSTREAMS=cls.H.upstreams()).start()
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "S", None):
            cls.S.cleanup()
        cls.H.down()
        subprocess.run([os.path.join(ROOT, "tests", "pg_server.sh"), "stop", cls.pgdir], capture_output=True)
        shutil.rmtree(cls.pgdir, ignore_errors=True)

    def test_1_race_across_hosts(self):
        S = self.S
        p = S.create_plan(capacity=100)
        results = pool(64, list(range(500)), lambda i: S.purchase(p["id"]))
        statuses = sorted(r.status for r in results)
        self.assertEqual(statuses.count(201), 100, statuses)
        self.assertEqual([r.json["code"] for r in results if r.status != 201], ["PLAN_SOLD_OUT"] * 400)
        self.assertEqual(S.plan(p["id"])["subscriptions_left"], 0)
        self.assertGreater(self.H.served(0), 0)
        self.assertGreater(self.H.served(1), 0)
        ok, out = S.check()
        self.assertTrue(ok, out)

    def test_2_host_killed_mid_load(self):
        S = self.S
        p = S.create_plan(capacity=100)
        jobs = [str(uuid.uuid4()) for _ in range(200)]
        first = {}
        lock = threading.Lock()
        killed = threading.Event()

        def buy(key):
            # while host A is gone nginx answers 503; a request cut with it is retried with its key
            r = settle_purchase(S, p["id"], key, "mh-%s@example.com" % key[:8], cut_ok=True)
            with lock:
                first.setdefault(key, r)
            return r

        def killer():
            # once both hosts are selling, the whole server of host A dies at once
            end = time.time() + 30
            while time.time() < end and not (self.H.served(0) > 5 and S.plan(p["id"])["subscriptions_left"] < 80):
                time.sleep(0.02)
            self.H.kill(0)
            killed.set()

        t = threading.Thread(target=killer)
        t.start()
        results = pool(32, jobs, buy)
        t.join()
        self.assertTrue(killed.is_set())
        created = [r for r in results if r.status == 201]
        # nothing oversold, every 201 kept, and every cut request retried with its key settled once
        assert_settled_once(self, S, p["id"], 100, created,
                            [(key, "mh-%s@example.com" % key[:8], first[key]) for key in jobs[:40]])
        ok, out = S.check()
        self.assertTrue(ok, out)


if __name__ == "__main__":
    unittest.main()
