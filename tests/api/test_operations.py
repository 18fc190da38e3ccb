"""test_operations.py - what an operator relies on: one JSON log line per request with its trace
id and nothing secret, log level and destination, settings from a file with the environment
winning, every bad value refused by name, CORS for pages of another origin, `numatix backup`
while purchases run (and the copy restores and passes check), and --help on every command."""

import json
import os
import shutil
import sqlite3
import subprocess
import threading
import unittest
import uuid

from stack import ADMIN, BIN, Stack, pool

S = None
ORIGIN = "http://127.0.0.1:9911"


def setUpModule():
    global S
    S = Stack(NUMATIX_CORS_ORIGINS=ORIGIN + ", https://shop.example").start()


def tearDownModule():
    S.cleanup()


def json_lines(path):
    """Every line of the service's log that is JSON, parsed; and the lines that are neither
    JSON nor the run script's or nginx's own."""
    parsed, stray = [], []
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("{"):
                parsed.append(json.loads(line))
            elif "numatix[" in line or "trace=" in line:
                stray.append(line)
    return parsed, stray


class Logs(unittest.TestCase):
    def test_one_json_line_per_request_with_its_trace_id_and_nothing_secret(self):
        p = S.create_plan(capacity=3)
        traces = []
        tokens = []
        for i in range(3):
            trace = "ops-trace-%d-%s" % (i, uuid.uuid4().hex[:8])
            r = S.purchase(p["id"], headers={"X-Trace-Id": trace})
            self.assertEqual(r.status, 201, r)
            self.assertEqual(r.header("X-Trace-Id"), trace)
            traces.append(trace)
            tokens.append(r.json["accessToken"])
            r = S.request("GET", "/api/subscriptions/" + r.json["id"],
                          headers={"Authorization": "Bearer " + tokens[-1], "X-Trace-Id": trace + "-read"})
            self.assertEqual(r.status, 200, r)
        lines, stray = json_lines(S.log_path)
        self.assertEqual(stray, [])
        for trace in traces:
            mine = [l for l in lines if l.get("trace_id") == trace and l.get("event") == "request"]
            self.assertEqual(len(mine), 1, mine)
            line = mine[0]
            self.assertEqual((line["method"], line["path"], line["route"], line["status"]),
                             ("POST", "/api/subscriptions/purchase", "/api/subscriptions/purchase", 201))
            self.assertEqual(line["level"], "info")
            self.assertIsInstance(line["duration_ms"], int)
            self.assertRegex(line["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        reads = [l for l in lines if (l.get("trace_id") or "").endswith("-read")]
        self.assertEqual(len(reads), 3)
        self.assertEqual({l["route"] for l in reads}, {"/api/subscriptions/:id"})
        # the service's lines (run.sh itself prints the admin token of `make run` for the operator)
        text = "\n".join(json.dumps(l) for l in lines)
        for secret in [ADMIN] + tokens:
            self.assertNotIn(secret, text)

    def test_level_and_destination(self):
        for level, expect_requests in (("info", True), ("warn", False)):
            st = Stack(NUMATIX_LOG_LEVEL=level)
            st.env["NUMATIX_LOG"] = os.path.join(st.dir, "numatix.log")
            st.start()
            try:
                for _ in range(5):
                    self.assertEqual(st.request("GET", "/api/plans").status, 200)
                st.stop()
                lines, _ = json_lines(st.env["NUMATIX_LOG"])
                requests = [l for l in lines if l.get("event") == "request"]
                self.assertEqual(len(requests) >= 5, expect_requests, (level, lines[-5:]))
                if not expect_requests:
                    self.assertTrue(all(l["level"] in ("warn", "error") for l in lines), lines)
                # nothing of the service's own in the stack's stderr once it goes to a file
                _, stray = json_lines(st.log_path)
                self.assertEqual(stray, [])
                self.assertFalse([l for l in json_lines(st.log_path)[0] if l.get("event") == "request"])
            finally:
                st.cleanup()


class Configuration(unittest.TestCase):
    def run_check(self, env):
        e = dict(S.env)
        e.update(env)
        return subprocess.run([BIN, "check"], env=e, capture_output=True, text=True, timeout=60)

    def test_every_bad_value_is_refused_by_name(self):
        cases = {
            "NUMATIX_WORKERS": "0", "NUMATIX_THREADS": "lots", "NUMATIX_HOLD_TTL": "-5",
            "NUMATIX_MAX_BODY": "12", "NUMATIX_STORE_HANDLES": "1e3", "NUMATIX_REAP_INTERVAL": "99999",
            "NUMATIX_KEY_RETENTION_HOURS": "0", "NUMATIX_PAYMENT_LATENCY_MS": "999999",
            "NUMATIX_LOG_LEVEL": "verbose", "NUMATIX_LOG": "relative/file.log",
            "NUMATIX_CORS_ORIGINS": "http://ok.example, https://shop.example/path",
            "NUMATIX_ADMIN_TOKEN": "short", "NUMATIX_DB": "ftp://example.com/db",
        }
        for name, value in cases.items():
            r = self.run_check({name: value})
            self.assertEqual(r.returncode, 1, (name, r.stdout, r.stderr))
            self.assertIn(name, r.stderr, (name, r.stderr))
        r = self.run_check({"NUMATIX_LOG": "/nonexistent-dir/numatix.log"})
        self.assertEqual(r.returncode, 1)
        self.assertIn("NUMATIX_LOG", r.stderr)

    def test_a_file_of_settings_with_the_environment_winning(self):
        path = os.path.join(S.dir, "numatix.conf")
        with open(path, "w") as f:
            f.write("# settings for this test\n\n"
                    "NUMATIX_CORS_ORIGINS = \"http://from-file.example:8080\"\n"
                    "NUMATIX_LOG_LEVEL=error\n"
                    "NUMATIX_HOLD_TTL='30'\n")
        st = Stack(NUMATIX_CONFIG=path, NUMATIX_LOG_LEVEL="info")
        st.env.pop("NUMATIX_CORS_ORIGINS", None)
        st.start()
        try:
            r = st.request("GET", "/api/plans", headers={"Origin": "http://from-file.example:8080"})
            self.assertEqual(r.header("Access-Control-Allow-Origin"), "http://from-file.example:8080")
            r = st.request("GET", "/api/plans", headers={"Origin": ORIGIN})
            self.assertIsNone(r.header("Access-Control-Allow-Origin"))
            # the environment's info beat the file's error: the request lines are there
            lines, _ = json_lines(st.log_path)
            self.assertTrue([l for l in lines if l.get("event") == "request"])
        finally:
            st.cleanup()
        for content, needle in (("NUMATIX_WORKERZ=4\n", "NUMATIX_WORKERZ"), ("just words\n", ":1:"),
                                ("NUMATIX_WORKERS=0\n", "NUMATIX_WORKERS")):
            with open(path, "w") as f:
                f.write(content)
            r = self.run_check({"NUMATIX_CONFIG": path, "NUMATIX_WORKERS": ""})
            self.assertEqual(r.returncode, 1, content)
            self.assertIn(needle, r.stderr)
        r = self.run_check({"NUMATIX_CONFIG": path + ".missing"})
        self.assertEqual(r.returncode, 1)
        self.assertIn("NUMATIX_CONFIG", r.stderr)

    def test_help_on_every_command(self):
        r = subprocess.run([BIN, "--help"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0)
        commands = [l.split()[0] for l in r.stdout.split("commands:\n")[1].split("\n\n")[0].splitlines()]
        self.assertTrue({"serve", "cgi", "check", "reap", "backup", "routes", "seed"} <= set(commands), commands)
        for c in commands:
            r = subprocess.run([BIN, c, "--help"], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, c)
            self.assertTrue(r.stdout.startswith("usage: numatix " + c), r.stdout)
            self.assertIn("NUMATIX_CONFIG", r.stdout)
        r = subprocess.run([BIN, "frobnicate"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 2)
        self.assertIn("frobnicate", r.stderr)


class Cors(unittest.TestCase):
    def test_preflight_of_an_allowed_origin(self):
        r = S.request("OPTIONS", "/api/subscriptions/purchase",
                      headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                               "Access-Control-Request-Headers": "content-type, idempotency-key"})
        self.assertEqual(r.status, 204, r)
        self.assertEqual(r.header("Access-Control-Allow-Origin"), ORIGIN)
        self.assertIn("POST", r.header("Access-Control-Allow-Methods"))
        allowed = r.header("Access-Control-Allow-Headers").lower()
        for h in ("content-type", "idempotency-key", "authorization"):
            self.assertIn(h, allowed)
        self.assertEqual(r.header("Vary"), "Origin")
        self.assertEqual(r.raw, "")

    def test_preflight_of_another_origin_is_refused(self):
        r = S.request("OPTIONS", "/api/subscriptions/purchase",
                      headers={"Origin": "http://127.0.0.1:9912", "Access-Control-Request-Method": "POST"})
        self.assertEqual(r.status, 403, r)
        self.assertEqual(r.json["code"], "CORS_ORIGIN_NOT_ALLOWED")
        self.assertIsNone(r.header("Access-Control-Allow-Origin"))

    def test_requests_of_an_allowed_origin_may_read_the_answer(self):
        p = S.create_plan(capacity=1)
        r = S.purchase(p["id"], headers={"Origin": "https://shop.example"})
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "https://shop.example")
        self.assertIn("X-Trace-Id", r.header("Access-Control-Expose-Headers"))
        r = S.purchase(p["id"], headers={"Origin": "http://elsewhere.example"})
        self.assertEqual(r.status, 409, r)
        self.assertIsNone(r.header("Access-Control-Allow-Origin"))

    def test_options_without_cors_lists_the_methods(self):
        r = S.request("OPTIONS", "/api/plans")
        self.assertEqual(r.status, 204)
        self.assertEqual(set(r.header("Allow").split(", ")), {"GET", "HEAD", "POST"})
        self.assertEqual(S.request("OPTIONS", "/api/nothing-here").status, 404)


class GracefulStop(unittest.TestCase):
    def test_a_stop_checkpoints_so_the_file_alone_holds_every_commit(self):
        st = Stack()
        st.start()
        try:
            p = st.create_plan(capacity=100)
            ids = [r.json["id"] for r in pool(8, range(40), lambda i: st.purchase(p["id"])) if r.status == 201]
            self.assertEqual(len(ids), 40)
            st.stop()
            db = os.path.join(st.dir, "numatix.db")
            self.assertFalse(os.path.exists(db + "-wal"), "WAL left beside the database after a stop")
            # the database file copied alone (what a careless backup does) has every purchase
            copy = os.path.join(st.dir, "copy.db")
            shutil.copyfile(db, copy)
            conn = sqlite3.connect(copy)
            found = {row[0] for row in conn.execute("SELECT id FROM subscriptions WHERE status = 'active'")}
            conn.close()
            self.assertTrue(set(ids) <= found)
        finally:
            st.cleanup()


class CheckSeesBrokenLines(unittest.TestCase):
    def test_check_reports_a_waiting_list_out_of_joint(self):
        # a healthy line passes; each way of breaking one, written into the stopped store, is named
        st = Stack()
        st.start()
        try:
            p = st.create_plan(capacity=1, waitlist_enabled=True)
            self.assertEqual(st.purchase(p["id"]).status, 201)
            r = st.request("POST", "/api/plans/%s/waitlist" % p["id"], {"customer": {"email": "q@example.com", "name": "Q"}},
                           {"Idempotency-Key": str(uuid.uuid4())})
            self.assertEqual(r.status, 201)
            ok, out = st.check()
            self.assertTrue(ok, out)
            st.stop()
            db = os.path.join(st.dir, "numatix.db")
            for breakage, said in (("UPDATE plans SET waiting = 2 WHERE id = '%s'" % p["id"], "count of entries waiting is off by 1"),
                                   ("UPDATE plans SET total_capacity = 2, subscriptions_left = 1 WHERE id = '%s'" % p["id"],
                                    "1 seats left, and the first in its line"),
                                   ("UPDATE waitlist SET status = 'offered'", "is offered without its session")):
                shutil.copyfile(db, db + ".good")
                conn = sqlite3.connect(db)
                conn.execute(breakage)
                conn.commit()
                conn.close()
                ok, out = st.check()
                self.assertFalse(ok, breakage)
                self.assertIn(said, out)
                shutil.copyfile(db + ".good", db)
        finally:
            st.cleanup()


class Backup(unittest.TestCase):
    def test_backup_while_purchases_run_restores_and_passes_check(self):
        p = S.create_plan(capacity=400)
        acknowledged = []
        lock = threading.Lock()
        stop = threading.Event()

        def buy(_):
            while not stop.is_set():
                r = S.purchase(p["id"])
                if r.status == 201:
                    with lock:
                        acknowledged.append(r.json["id"])

        threads = [threading.Thread(target=buy, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        copies = []
        try:
            while len(acknowledged) < 20:
                threading.Event().wait(0.02)
            for i in range(3):
                with lock:
                    before = list(acknowledged)
                path = os.path.join(S.dir, "backup-%d.db" % i)
                r = S.command("backup", path)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertFalse(os.path.exists(path + ".partial"))
                copies.append((path, before))
        finally:
            stop.set()
            for t in threads:
                t.join()
        self.assertGreater(len(acknowledged), 20)
        # restore: each copy is a whole store that serves, passes check and has every purchase
        # acknowledged before its backup began
        for path, before in copies:
            st = Stack(store_url="sqlite://" + path)
            st.start()
            try:
                ok, out = st.check()
                self.assertTrue(ok, out)
                for sid in before:
                    r = st.admin("GET", "/api/subscriptions/" + sid)
                    self.assertEqual((r.status, r.json["status"]), (200, "active"), r)
                plan = st.plan(p["id"])
                self.assertGreaterEqual(400 - plan["subscriptions_left"], len(before))
            finally:
                st.cleanup()

    def test_backup_refuses_what_it_cannot_do(self):
        r = S.command("backup")
        self.assertEqual(r.returncode, 2)
        r = S.command("backup", "/nonexistent-dir/copy.db")
        self.assertEqual(r.returncode, 1)
        self.assertIn("/nonexistent-dir/copy.db", r.stderr)


if __name__ == "__main__":
    unittest.main()
