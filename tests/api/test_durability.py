"""test_durability.py - no answer leaves before the commit it depends on is durable (issue 22.4).

The SQLite store commits with synchronous=NORMAL and makes commits durable itself, with an
fdatasync of the WAL after the write lock is let go (group commit). strace watches every process
of the server while each route that writes is called once, one request at a time: between the
worker reading a request and writing its answer, some process must have finished an fdatasync
(or fsync) — whoever's sync it is, it covers the commit, as the gate counts. On main the one-step
writes outside a unit (a customer made, a webhook endpoint, the answer kept on a key) answered
2xx with no sync at all."""

import os
import re
import subprocess
import tempfile
import time
import unittest
import uuid

from stack import Stack

S = None


def setUpModule():
    global S
    if not os.environ.get("NUMATIX_TEST_STORE"):
        # one worker with one thread: one request at a time reaches the store
        S = Stack(NUMATIX_WORKERS=1, NUMATIX_THREADS=1).start()


def tearDownModule():
    if S:
        S.cleanup()


LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")


class Strace:
    """strace on the master and every process and thread of the server, from attach to stop."""

    def __init__(self, pids):
        self.path = tempfile.mktemp(prefix="numatix-strace-")
        args = ["strace", "-f", "-ttt", "-qq", "-y", "-s", "8192", "-e", "trace=read,write,pwrite64,fdatasync,fsync",
                "-o", self.path]
        for p in pids:
            args += ["-p", str(p)]
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        # attached once every thread of every process is traced (the kernel says who traces a
        # task: /proc/<pid>/task/<tid>/status, TracerPid), and a request's read shows
        end = time.time() + 60
        while time.time() < end:
            if all(self.traced(p) for p in pids):
                trace = "attach-" + uuid.uuid4().hex
                S.request("GET", "/api/health", headers={"X-Trace-Id": trace})
                if os.path.exists(self.path) and trace in open(self.path, errors="replace").read():
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError("strace did not attach: %s" % (self.proc.stderr.read() if self.proc.poll() is not None else "still running"))

    @staticmethod
    def traced(pid):
        """Whether every thread of pid is traced."""
        try:
            tasks = os.listdir("/proc/%d/task" % pid)
        except OSError:
            return True   # gone: nothing of it to trace
        for tid in tasks:
            try:
                status = open("/proc/%d/task/%s/status" % (pid, tid)).read()
            except OSError:
                continue
            if re.search(r"^TracerPid:\s+0$", status, re.M):
                return False
        return True

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        lines = [m.groups() for m in map(LINE.match, open(self.path, errors="replace")) if m]
        os.unlink(self.path)
        return [(int(pid), float(t), call) for pid, t, call in lines]


SYNC = re.compile(r"^f(data)?sync\(\d+<([^>]*)>")


RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")


def completed(calls):
    """The calls as they returned: a call another traced task interrupted in strace's output
    ("read(5<...>, <unfinished ...>", then from that pid "<... read resumed>"data", ...) = n")
    joined into one, at the time it returned. A worker waiting in read() for its next request
    while the background services make calls of their own is such a call."""
    out, pending = [], {}
    for pid, t, c in calls:
        if c.endswith("<unfinished ...>"):
            pending[pid] = c[:-len("<unfinished ...>")]
            continue
        m = RESUMED.match(c)
        if m and pid in pending:
            c = pending.pop(pid) + m.group(2)
        out.append((pid, t, c))
    return out


def answered_after_sync(trace, calls, wal_path):
    """Whether the request with this trace id, once it had written to the store's WAL (wal_path;
    the simulated processor's file is not the store's), was answered only after a sync of that
    WAL began and ended; and the status it was answered with."""
    done = completed(calls)
    reader, read_at = next((p, t) for p, t, c in done if c.startswith("read(") and trace in c)
    answer = next((t, c) for _, t, c in done if c.startswith("write(") and "Status: " in c and trace in c and t >= read_at)
    status = int(re.search(r"Status: (\d+)", answer[1]).group(1))
    # the last write of a WAL page the request's own thread made while it ran (SQLite's
    # pwrite64; another process's, the reaper's for one, is that process's to sync)
    wal = [(t, re.match(r"pwrite64\(\d+<([^>]*)>", c).group(1)) for p, t, c in done
           if p == reader and read_at <= t <= answer[0] and re.match(r"pwrite64\(\d+<%s>" % re.escape(wal_path), c)]
    if not wal:
        return True, status
    last, path = wal[-1]
    # a sync of that file begun after it and ended before the answer: "fdatasync(7</x-wal>) = 0",
    # or "fdatasync(7</x-wal> <unfinished ...>" then, from that pid, "<... fdatasync resumed>) = 0"
    begun = {}
    for pid, t, c in calls:
        m = SYNC.match(c)
        if m and m.group(2) == path and t >= last:
            if c.rstrip().endswith("= 0"):
                if t <= answer[0]:
                    return True, status
            else:
                begun[pid] = t
        elif pid in begun and re.match(r"<\.\.\. f(data)?sync resumed>", c):
            if c.rstrip().endswith("= 0") and t <= answer[0]:
                return True, status
            del begun[pid]
    return False, status


@unittest.skipIf(os.environ.get("NUMATIX_TEST_STORE"), "SKIPPED: the SQLite store's own syncs")
class EveryWriteIsDurableBeforeItsAnswer(unittest.TestCase):
    def test_every_route_that_writes(self):
        plan = S.create_plan(capacity=20, price=1000)
        other = S.create_plan(capacity=20, price=2000)
        line = S.create_plan(capacity=1, waitlist_enabled=True)
        S.purchase(line["id"])
        sub = S.purchase(plan["id"]).json
        sub2 = S.purchase(plan["id"]).json
        session = S.request("POST", "/api/checkout-sessions", {"planId": plan["id"], "customer": {
            "email": "d-%s@example.com" % uuid.uuid4().hex[:8], "name": "D"}}, {"Idempotency-Key": str(uuid.uuid4())}).json
        session2 = S.request("POST", "/api/checkout-sessions", {"planId": plan["id"], "customer": {
            "email": "d-%s@example.com" % uuid.uuid4().hex[:8], "name": "D"}}, {"Idempotency-Key": str(uuid.uuid4())}).json
        entry = S.request("POST", "/api/plans/%s/waitlist" % line["id"], {"customer": {
            "email": "w-%s@example.com" % uuid.uuid4().hex[:8], "name": "W"}}, {"Idempotency-Key": str(uuid.uuid4())}).json
        hook = S.admin("POST", "/api/webhook-endpoints", {"url": "http://127.0.0.1:9/x", "events": ["*"]}).json

        def cust():
            return {"email": "c-%s@example.com" % uuid.uuid4().hex[:8], "name": "C"}

        admin, keyed = True, True
        calls = [
            ("customer", "POST", "/api/customers", cust(), admin, not keyed),
            ("customer, keyed", "POST", "/api/customers", cust(), admin, keyed),
            ("webhook endpoint", "POST", "/api/webhook-endpoints", {"url": "http://127.0.0.1:9/y", "events": ["*"]}, admin, not keyed),
            ("webhook endpoint, keyed", "POST", "/api/webhook-endpoints", {"url": "http://127.0.0.1:9/z", "events": ["*"]}, admin, keyed),
            ("webhook deleted", "DELETE", "/api/webhook-endpoints/" + hook["id"], None, admin, not keyed),
            ("plan", "POST", "/api/plans", {"name": "D " + uuid.uuid4().hex, "price_cents": 1, "total_capacity": 1}, admin, not keyed),
            ("plan, keyed", "POST", "/api/plans", {"name": "D " + uuid.uuid4().hex, "price_cents": 1, "total_capacity": 1}, admin, keyed),
            ("plan changed, keyed", "PATCH", "/api/plans/" + other["id"], {"price_cents": 2001}, admin, keyed),
            ("purchase", "POST", "/api/subscriptions/purchase", {"planId": plan["id"], "paymentMethodId": "pm_card_visa",
                                                                "customer": cust()}, not admin, keyed),
            ("purchase declined", "POST", "/api/subscriptions/purchase", {"planId": plan["id"], "paymentMethodId":
                                                                         "pm_card_chargeDeclined", "customer": cust()}, not admin, keyed),
            ("cancel, keyed", "POST", "/api/subscriptions/%s/cancel" % sub["id"], {}, sub["accessToken"], keyed),
            ("change plan", "POST", "/api/subscriptions/%s/change-plan" % sub2["id"], {"planId": other["id"], "paymentMethodId":
                                                                                        "pm_card_visa"}, sub2["accessToken"], keyed),
            ("session", "POST", "/api/checkout-sessions", {"planId": plan["id"], "customer": cust()}, not admin, keyed),
            ("session completed", "POST", "/api/checkout-sessions/%s/complete" % session["id"], {"paymentMethodId": "pm_card_visa"},
             session["clientSecret"], keyed),
            ("session expired, keyed", "POST", "/api/checkout-sessions/%s/expire" % session2["id"], {}, session2["clientSecret"], keyed),
            ("waiting list joined", "POST", "/api/plans/%s/waitlist" % line["id"], {"customer": cust()}, not admin, keyed),
            ("waiting list left, keyed", "POST", "/api/waitlist/%s/leave" % entry["id"], {}, entry["accessToken"], keyed),
        ]
        master, workers = S.server_pids()
        kids = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
        st = Strace([master] + [int(k) for k in kids])
        traces = []
        try:
            for what, method, path, body, who, with_key in calls:
                trace = "durable-" + uuid.uuid4().hex
                h = {"X-Trace-Id": trace}
                if with_key:
                    h["Idempotency-Key"] = str(uuid.uuid4())
                if who is True:
                    r = S.admin(method, path, body, h)
                elif who:
                    r = S.request(method, path, body, dict(h, Authorization="Bearer " + who))
                else:
                    r = S.request(method, path, body, h)
                self.assertIn(r.status, (200, 201, 204, 402), (what, r))
                traces.append((what, trace, r.status))
        finally:
            strace = st.stop()
        late = []
        for what, trace, status in traces:
            synced, seen = answered_after_sync(trace, strace, S.env["NUMATIX_DB"][len("sqlite://"):] + "-wal")
            self.assertEqual(seen, status, what)
            if not synced:
                late.append("%s (%d)" % (what, status))
        self.assertEqual(late, [], "answered before any sync made its commit durable")


if __name__ == "__main__":
    unittest.main()
