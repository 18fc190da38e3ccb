"""stack.py - the real Numatix stack for black-box tests: scripts/run.sh starts the FastCGI
server and nginx on a free loopback port with a fresh SQLite store in a temporary directory;
a client speaks HTTP to nginx exactly as curl or a browser would.

Each test module starts one stack (setUpModule) and stops it (tearDownModule). The stack's
logs are printed when a test of the module fails (see runner.py)."""

import atexit
import collections
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# NUMATIX_BIN: another build of the binary (make asan runs the suites against its own)
BIN = os.environ.get("NUMATIX_BIN") or os.path.join(ROOT, "cgi-bin", "numatix")
ADMIN = "test-admin-token-0123456789abcdef"


def pg_database(server_url, name):
    """Creates database `name` on the PostgreSQL server_url names; its connection string."""
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", server_url, "-c", 'CREATE DATABASE "%s"' % name],
                   check=True, capture_output=True)
    u = urllib.parse.urlsplit(server_url)
    # built by hand: urlunsplit drops the empty host of postgresql:///db?host=/socket/dir
    return "%s://%s/%s%s" % (u.scheme, u.netloc, name, "?" + u.query if u.query else "")


def store_url(dir):
    """The store a test stack uses: SQLite in its directory; with NUMATIX_TEST_STORE=postgresql,
    a database of its own on the throwaway server NUMATIX_TEST_PG names (tests/run.sh starts
    it); with NUMATIX_TEST_STORE=mongodb, a database of its own on the live MongoDB that
    MONGO_URI names."""
    if os.environ.get("NUMATIX_TEST_STORE") == "postgresql":
        return pg_database(os.environ["NUMATIX_TEST_PG"], "numatix_test_" + uuid.uuid4().hex[:12])
    if os.environ.get("NUMATIX_TEST_STORE") == "mongodb":
        u = urllib.parse.urlsplit(os.environ["MONGO_URI"])
        return urllib.parse.urlunsplit((u.scheme, u.netloc, "/numatix_test_" + uuid.uuid4().hex[:12], u.query, ""))
    return "sqlite://%s/numatix.db" % dir


def unseal(text, admin=ADMIN):
    """An answer kept on a key, opened as src/seal.c seals it: "nx1." and base64 of a 12-byte
    nonce, the AES-256-GCM ciphertext and its tag, under HMAC-SHA256(admin token, label)."""
    import base64
    import hashlib
    import hmac
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    assert text.startswith("nx1."), text[:40]
    raw = base64.b64decode(text[4:])
    key = hmac.new(admin.encode(), b"numatix: answers sealed at rest, v1", hashlib.sha256).digest()
    return AESGCM(key).decrypt(raw[:12], raw[12:], None).decode()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.raw = body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    def header(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return "<%d %s>" % (self.status, self.raw[:300])


SERVICES = ("numatix-reaper", "numatix-sender", "numatix-renewer", "numatix-mailer")

class StripeServer:
    """The Stripe-speaking test server (tests/stripe/server.mjs over stripe-stateful-mock), on a
    loopback port of its own; one per test process, started on first use."""

    shared = None

    def __init__(self):
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="numatix-stripe-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(["node", os.path.join(ROOT, "tests", "stripe", "server.mjs"), str(self.port)],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log)
        line = self.proc.stdout.readline()
        if b"stripe test server on" not in line:
            raise RuntimeError("the Stripe test server did not start: " + open(self.log.name).read())
        self.base = "http://127.0.0.1:%d" % self.port
        # stopped with the test process that started it
        atexit.register(self.stop)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if StripeServer.shared is self:
            StripeServer.shared = None

    @classmethod
    def get(cls):
        if not cls.shared:
            cls.shared = StripeServer()
        return cls.shared

    def control(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def fault(self, match, **f):
        """Queues a fault for the next request that matches ("POST /v1/payment_intents")."""
        return self.control("POST", "/__control/faults", dict(f, match=match))

    def state(self):
        return self.control("GET", "/__control/state")

    def env(self, port, latency_ms=0):
        """A stack's settings: a secret key of its own, whose authorizations take latency_ms (as
        NUMATIX_PAYMENT_LATENCY_MS makes the simulated processor's), and whose events go to the
        stack's webhook route on port, signed with a webhook secret of its own."""
        key, secret = "sk_test_" + uuid.uuid4().hex, "whsec_" + uuid.uuid4().hex
        self.control("POST", "/__control/latency", {"key": key, "ms": int(latency_ms or 0)})
        self.control("POST", "/__control/webhook", {"key": key, "secret": secret,
                                                    "url": "http://127.0.0.1:%d/api/stripe/webhook" % port})
        return {"NUMATIX_PROCESSOR": "stripe", "NUMATIX_STRIPE_SECRET_KEY": key, "NUMATIX_STRIPE_API_BASE": self.base,
                "NUMATIX_STRIPE_WEBHOOK_SECRET": secret}


def processor_env(port, latency_ms=0):
    """The processor a test stack uses: the simulated one; with NUMATIX_TEST_PROCESSOR=stripe,
    Stripe's API as the test server speaks it."""
    if os.environ.get("NUMATIX_TEST_PROCESSOR") == "stripe":
        return StripeServer.get().env(port, latency_ms)
    return {}


class Stack:
    """One running stack. env adds to the service's environment."""

    current = None

    def __init__(self, store_url=None, **env):
        self.dir = tempfile.mkdtemp(prefix="numatix-test-")
        self.port = free_port()
        self.env = dict(os.environ)
        self.env.update({
            "PORT": str(self.port),
            "NUMATIX_VAR": self.dir,
            "NUMATIX_ADMIN_TOKEN": ADMIN,
            "NUMATIX_DB": store_url or globals()["store_url"](self.dir),
            # the simulated processor's records: its own file, as the remote service it plays
            "NUMATIX_SIM_DB": os.path.join(self.dir, "sim.processor.db"),
            "NUMATIX_WORKERS": "4",
            # every test client is 127.0.0.1: the per-client limits would throttle the load tests
            "NUMATIX_RATE_LIMIT": "off",
        })
        self.env.update({k: str(v) for k, v in env.items()})
        if self.env.get("NUMATIX_PROCESSOR") == "stripe" and "NUMATIX_STRIPE_SECRET_KEY" not in env:
            # a Stripe stack asked for by name: the test server's settings for it
            self.env.update(StripeServer.get().env(self.port, self.env.get("NUMATIX_PAYMENT_LATENCY_MS")))
        else:
            self.env.update(processor_env(self.port, self.env.get("NUMATIX_PAYMENT_LATENCY_MS")))
        self.log_path = os.path.join(self.dir, "stack.log")
        self.proc = None

    def start(self):
        self.direct_port = self.port
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([os.path.join(ROOT, "scripts", "run.sh")], env=self.env,
                                     stdout=subprocess.PIPE, stderr=self.log)
        # run.sh prints the URL once nginx answers /api/health: that line is the readiness signal.
        for line in self.proc.stdout:
            self.log.write(line)
            self.log.flush()
            if line.startswith(b"Numatix is running"):
                break
        else:
            raise RuntimeError("the stack did not start:\n" + self.logs())
        threading.Thread(target=self._drain, daemon=True).start()
        Stack.current = self
        if os.environ.get("NUMATIX_TEST_PRISM"):
            self.prism = Prism(self.direct_port)
            self.port = self.prism.port
        return self

    def _drain(self):
        for line in self.proc.stdout:
            self.log.write(line)
            self.log.flush()

    def stop(self):
        if getattr(self, "prism", None):
            self.prism.stop()
            self.prism = None
            self.port = self.direct_port
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if Stack.current is self:
            Stack.current = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self, tail=80):
        out = []
        for name in ("stack.log", "nginx/nginx-error.log"):
            path = os.path.join(self.dir, name)
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    lines = f.readlines()[-tail:]
                out.append("--- %s (last %d lines)\n%s" % (name, len(lines), "".join(lines)))
        return "\n".join(out)

    # --- the service's own commands, on this stack's store ---------------------------------

    def command(self, *args):
        return self.command_env(self.env, *args)

    @staticmethod
    def command_env(env, *args):
        # under the test's clock when the stack runs under one (tests/faketime.sh)
        return subprocess.run([env.get("NUMATIX_BIN") or BIN] + list(args), env=env, capture_output=True, text=True,
                              timeout=120)

    def reap(self):
        """Runs one reaper pass (`numatix reap`), as cron would."""
        r = self.command("reap")
        assert r.returncode == 0, r.stdout + r.stderr

    def renew(self):
        """Runs one renewer pass (`numatix renew`), as cron would: again while the server's own
        renewer holds the lease, until a pass of this one ran. Returns what it reported."""
        def once():
            r = self.command("renew")
            assert r.returncode == 0, r.stdout + r.stderr
            return None if "another renewer is running" in r.stdout else r.stdout
        return until(once, what="a renewer pass of its own")

    def audit(self, action, plan_id=None, trace=None):
        """Every audit event of an action (of a plan, of a trace), newest first, page after page."""
        out, cursor = [], None
        while True:
            q = "/api/audit-logs?limit=200&action=" + action
            q += "&planId=" + plan_id if plan_id else ""
            q += "&traceId=" + trace if trace else ""
            r = self.admin("GET", q + ("&cursor=" + cursor if cursor else "")).json
            out += r["logs"]
            cursor = r["nextCursor"]
            if not cursor:
                return out

    def check(self):
        """Runs `numatix check`; returns (passed, output)."""
        r = self.command("check")
        return r.returncode == 0, r.stdout + r.stderr

    @staticmethod
    def _ppid(pid):
        try:
            return int(open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return 0

    @staticmethod
    def _comm(pid):
        try:
            return open("/proc/%d/comm" % pid).read().strip()
        except OSError:
            return ""

    def service_pid(self, name):
        """The pid of the master's background process named name (numatix-sender), or 0."""
        master, _ = self.server_pids()
        kids = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout
        return next((int(k) for k in kids.split() if self._comm(int(k)) == name), 0)

    def server_pids(self):
        """The master's pid and its workers' pids (its background processes, numatix-reaper and
        numatix-sender, apart)."""
        out = subprocess.run(["pgrep", "-f", "%s serve" % BIN], capture_output=True, text=True).stdout
        serving = {int(p) for p in out.split()}
        # a master's children run the same command line, and once pids wrap around a child's
        # pid can be the lower: the master is the one whose parent is not itself serving
        masters = [m for m in sorted(serving) if self._ppid(m) not in serving]
        for m in masters:
            env = open("/proc/%d/environ" % m, "rb").read()
            if ("NUMATIX_VAR=%s" % self.dir).encode() in env:
                kids = subprocess.run(["pgrep", "-P", str(m)], capture_output=True, text=True).stdout
                return m, [int(k) for k in kids.split() if self._comm(int(k)) not in SERVICES]
        raise RuntimeError("no master found")

    def metric(self, series):
        """The value of one series of /api/metrics, as written (name and labels), or None."""
        r = self.request("GET", "/api/metrics", direct=True)
        for line in r.raw.splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    # --- HTTP ------------------------------------------------------------------------------

    def request(self, method, path, body=None, headers=None, raw=None, timeout=60, direct=False):
        """direct: to nginx itself, past Prism's proxy when the suites run through it; so goes any
        raw body, bytes a test made by hand (Prism parses bodies itself: see prism.py)."""
        direct = direct or raw is not None
        conn = http.client.HTTPConnection("127.0.0.1", self.direct_port if direct else self.port, timeout=timeout)
        h = {}
        if raw is not None:
            data = raw
        elif body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        else:
            data = None
        h.update(headers or {})
        try:
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            payload = r.read().decode("utf-8", errors="replace")
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, payload)
        finally:
            conn.close()

    def admin(self, method, path, body=None, headers=None, **kw):
        h = {"Authorization": "Bearer " + ADMIN}
        h.update(headers or {})
        return self.request(method, path, body, h, **kw)

    def store_bytes(self):
        """Everything the store holds, as bytes: the SQLite files themselves (the database and
        its write-ahead log, old page images included), or PostgreSQL's pg_dump."""
        url = self.env["NUMATIX_DB"]
        if url.startswith("sqlite://"):
            path = url[len("sqlite://"):]
            return b"".join(open(p, "rb").read() for p in (path, path + "-wal") if os.path.exists(p))
        return subprocess.run(["pg_dump", "--data-only", url], check=True, capture_output=True).stdout

    def events_after(self, after=0):
        """Every event of the feed after a position, oldest first."""
        evs = []
        while True:
            r = self.admin("GET", "/api/events?limit=1000&after=%d" % after).json
            if not r["events"]:
                return evs
            evs += r["events"]
            after = r["nextAfter"]

    def feed_head(self):
        """The feed's last position now."""
        evs = self.events_after(0)
        return evs[-1]["seq"] if evs else 0

    def create_plan(self, capacity=10, price=1000, **fields):
        body = {"name": fields.pop("name", "Plan " + uuid.uuid4().hex[:12]), "price_cents": price,
                "total_capacity": capacity}
        body.update(fields)
        r = self.admin("POST", "/api/plans", body)
        assert r.status == 201, r
        return r.json

    def purchase(self, plan_id, key=None, method="pm_card_visa", email=None, quantity=None, **kw):
        body = {"planId": plan_id, "paymentMethodId": method,
                "customer": {"email": email or "buyer-%s@example.com" % uuid.uuid4().hex[:16],
                             "name": "Test Buyer"}}
        if quantity is not None:
            body["quantity"] = quantity
        headers = {"Idempotency-Key": key or str(uuid.uuid4())}
        headers.update(kw.pop("headers", None) or {})
        return self.request("POST", "/api/subscriptions/purchase", body, headers, **kw)

    def plan(self, plan_id):
        r = self.request("GET", "/api/plans/" + plan_id)
        assert r.status == 200, r
        return r.json


class Prism:
    """Stoplight's Prism (npm, pinned in the lock file) as a validation proxy in front of nginx on
    loopback: every request and answer is checked against www/openapi.yaml and passed on as it
    is. Its violations, in either direction, are kept in PRISM_VIOLATIONS for the runner, which
    counts each as a failure. requests counts what went through."""

    def __init__(self, upstream_port):
        self.port = free_port()
        self.log_path = tempfile.mktemp(prefix="numatix-prism-", suffix=".log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([os.path.join(ROOT, "node_modules", ".bin", "prism"), "proxy",
                                      os.path.join(ROOT, "www", "openapi.yaml"), "http://127.0.0.1:%d" % upstream_port,
                                      "--host", "127.0.0.1", "--port", str(self.port), "--errors", "false"],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        end = time.time() + 120
        while "Prism is listening" not in open(self.log_path, errors="replace").read():
            if self.proc.poll() is not None or time.time() > end:
                raise RuntimeError("prism did not start:\n" + open(self.log_path, errors="replace").read()[-3000:])
            time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()
        text = open(self.log_path, errors="replace").read()
        os.unlink(self.log_path)
        PRISM_EXCHANGES.extend(prism_exchanges(text))


def prism_exchanges(text):
    """Prism's log as exchanges: {"request": "post /api/x", "status": 201, "violations": [...]}.
    Each starts at "Request received"; its answer's status comes on the line naming its path
    ("The upstream call to /api/x has returned 201"), its violations after it (concurrent
    exchanges interleave: a violation goes with the last request received)."""
    out = []
    for line in text.splitlines():
        if "[HTTP SERVER]" in line and "Request received" in line:
            out.append({"request": line.split("[HTTP SERVER]", 1)[1].split("\u2139")[0].strip(), "status": None,
                        "violations": []})
        elif "Forwarding" in line and out and "url" not in out[-1]:
            out[-1]["url"] = line.split(" request to ", 1)[-1].rstrip(".")
        elif "has returned" in line and "The upstream call to" in line:
            path = line.split("The upstream call to", 1)[1].split(" has returned")[0].strip()
            status = int(line.rsplit(" ", 1)[1])
            for x in reversed(out):
                if x["status"] is None and x["request"].split(" ", 1)[1].split("?")[0] == path.split("?")[0]:
                    x["status"] = status
                    break
        elif "Violation:" in line and out:
            out[-1]["violations"].append(line.split("Violation:", 1)[1].strip())
    return out


PRISM_EXCHANGES = []


class Clock:
    """The server's wall clock, moved forward by the test: the stack runs the binary through
    tests/faketime.sh (libfaketime), which reads the offset from this file at every call. The
    clock keeps running between moves; the monotonic clock is never moved."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="numatix-clock-")
        self.path = os.path.join(self.dir, "offset")
        self.offset_s = 0.0
        self._write()

    def _write(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write("%+.3fs\n" % self.offset_s)
        os.replace(tmp, self.path)      # a reader sees the old offset or the new, never half

    def advance(self, seconds):
        self.offset_s += seconds
        self._write()

    def env(self):
        """What a Stack needs to run under this clock."""
        return {"NUMATIX_BIN": os.path.join(ROOT, "tests", "faketime.sh"), "NUMATIX_CLOCK_BIN": BIN,
                "NUMATIX_TEST_CLOCK": self.path}

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def answered(send, timeout=60):
    """send() again while it is told 409 REQUEST_IN_PROGRESS (its key's lease runs), as a client
    retrying with its key does; the first other answer."""
    return until(lambda: (lambda r: None if (r.json or {}).get("code") == "REQUEST_IN_PROGRESS" else r)(send()),
                 timeout=timeout, what="an answer other than REQUEST_IN_PROGRESS")


def exited(pid):
    """True once process pid has exited: gone from /proc, or a zombie its parent has not reaped
    yet (a look that races the reaping counts as gone)."""
    try:
        return open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def until(cond, timeout=60, what="condition"):
    """Polls cond() until it gives something true, and returns that; fails the test after timeout
    seconds. The state waited for is the service's own (a delivery made, a standby caught up):
    the bound only ends a test that would otherwise hang."""
    end = time.time() + timeout
    while time.time() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def settle_purchase(S, plan_id, key, email, method="pm_card_visa", seen=None, cut_ok=False, attempts=400):
    """A careful buyer's client: retries its purchase with the same key, honouring Retry-After,
    until a final answer (201, 402, or 409 sold out / hold expired) and returns it. It retries a
    503 (a store or upstream away) and 409 REQUEST_IN_PROGRESS; with cut_ok, a cut connection
    too; any other answer fails the test. seen(r), if given, sees every answer on the way."""
    for _ in range(attempts):
        try:
            r = S.purchase(plan_id, key=key, email=email, method=method, timeout=30)
        except OSError:
            if not cut_ok:
                raise
            time.sleep(0.1)
            continue
        if seen:
            seen(r)
        if r.status in (201, 402) or (r.status == 409 and r.json["code"] in ("PLAN_SOLD_OUT", "HOLD_EXPIRED")):
            return r
        if r.status == 503 or (r.status == 409 and r.json["code"] == "REQUEST_IN_PROGRESS"):
            time.sleep(min(float(r.header("Retry-After") or 1), 2) / 4)
            continue
        raise AssertionError("unexpected answer %r" % r)
    raise AssertionError("purchase %s never settled" % key)


def start_site_nginx(conf_dir, site_path, port, includes, replace=()):
    """Debian's nginx in the foreground serving one shipped site file (a server block for port
    80) on 127.0.0.1:port, each (old, new) of replace applied to it first. Its includes resolve
    as under /etc/nginx: numatix/ from the directory `includes`, mime.types and fastcgi_params
    from the system's. Its files go under conf_dir. Returns the Popen."""
    os.makedirs(os.path.join(conf_dir, "tmp"), exist_ok=True)
    for name, target in (("numatix", includes), ("mime.types", "/etc/nginx/mime.types"),
                         ("fastcgi_params", "/etc/nginx/fastcgi_params")):
        if not os.path.lexists(os.path.join(conf_dir, name)):
            os.symlink(target, os.path.join(conf_dir, name))
    site = open(site_path).read().replace("listen 80;", "listen 127.0.0.1:%d;" % port).replace("listen [::]:80;", "")
    for old, new in replace:
        site = site.replace(old, new)
    with open(os.path.join(conf_dir, "site.conf"), "w") as f:
        f.write(site)
    with open(os.path.join(conf_dir, "nginx.conf"), "w") as f:
        f.write(("{user} daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n"
                 "events {{ worker_connections 512; }}\n"
                 "http {{ include mime.types; default_type application/octet-stream; access_log off;\n"
                 "  client_body_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; proxy_temp_path {d}/tmp;\n"
                 "  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n"
                 "  include site.conf; }}\n").format(d=conf_dir, user="user root root;" if os.getuid() == 0 else ""))
    return subprocess.Popen(["/usr/sbin/nginx", "-p", conf_dir, "-c", os.path.join(conf_dir, "nginx.conf"),
                             "-e", os.path.join(conf_dir, "error.log")])


def assert_settled_once(tc, S, plan_id, capacity, created, retries):
    """What a fault must leave behind, asserted on test case tc: nothing oversold (the seats of
    the 201s and the seats left add up to capacity, none still held), every 201 active in the
    store, and each retried (key, email, first answer) answered the same again: settled once."""
    plan = S.plan(plan_id)
    tc.assertEqual(len(created) + plan["subscriptions_left"], capacity)
    tc.assertEqual(plan["subscriptions_held"], 0)
    for r in created:
        got = S.admin("GET", "/api/subscriptions/" + r.json["id"])
        tc.assertEqual((got.status, got.json["status"]), (200, "active"), got)
    for key, email, first in retries:
        again = S.purchase(plan_id, key=key, email=email)
        tc.assertEqual(again.status, first.status)
        if first.status == 201:
            tc.assertEqual(again.json["id"], first.json["id"])


def small_disk(size_mb):
    """A fresh tmpfs of size_mb mounted on a new directory (root only); its path."""
    disk = tempfile.mkdtemp(prefix="numatix-disk-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dm" % size_mb, "tmpfs", disk], check=True)
    return disk


def release_disk(disk):
    subprocess.run(["umount", "-l", disk])
    os.rmdir(disk)


def sell_through_a_full_disk(tc, S, disk, n=150, freed=None):
    """The disk under S's store filled to its last 1.5 MB, then n purchases one after another:
    each a 201 or a JSON 503 with Retry-After (never a 500 or a cut connection), some of each;
    the filler removed (then freed() if given), every key retried settles once (a 201, or a
    hold that expired meanwhile), the early 201s answer the same subscription, the plan counts
    exactly the 201s, and check passes."""
    p = S.create_plan(capacity=100000)
    filler = os.path.join(disk, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)  # unbuffered: nothing left to flush
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, max(0, os.path.getsize(filler) - 1536 * 1024))
    answers, keys = [], []
    for i in range(n):
        key, email = str(uuid.uuid4()), "full%d@example.com" % i
        r = S.purchase(p["id"], key=key, email=email)
        answers.append((r.status, r.json.get("code") if r.json else r.raw[:80]))
        keys.append((key, email, r))
    kinds = collections.Counter(answers)
    tc.assertTrue(set(kinds) <= {(201, None), (503, "SERVICE_UNAVAILABLE")}, kinds)
    tc.assertIn((503, "SERVICE_UNAVAILABLE"), kinds, "the disk never filled")
    tc.assertIn((201, None), kinds, "nothing was sold before the disk filled")
    tc.assertTrue(all(r.header("Retry-After") for k, e, r in keys if r.status == 503))
    # space again: the same keys settle, and nothing acknowledged was lost
    os.unlink(filler)
    if freed:
        freed()
    settled = {k: settle_purchase(S, p["id"], k, e) for k, e, r in keys}
    for k, e, r in keys:
        if r.status == 201:
            tc.assertEqual((settled[k].status, settled[k].json["id"]), (201, r.json["id"]))
        else:
            # a key cut after its hold may find the hold gone by the time its retry runs (the
            # outage, then the lease, outlasted it on a slow machine): that is a settlement too,
            # the seat back and any charge refunded; never anything else
            tc.assertIn((settled[k].status, settled[k].json.get("code")), ((201, None), (409, "HOLD_EXPIRED")), settled[k])
    sold = sum(settled[k].status == 201 for k, e, r in keys)
    # a handle whose server was restarted answers one 503 (Retry-After) before it reconnects
    for _ in range(20):
        r = S.request("GET", "/api/plans/" + p["id"])
        if r.status != 503:
            break
        time.sleep(float(r.header("Retry-After") or 1))
    tc.assertEqual(r.status, 200, r)
    tc.assertEqual(r.json["subscriptions_held"], 0)
    tc.assertEqual(r.json["total_capacity"] - r.json["subscriptions_left"], sold)
    ok, text = S.check()
    tc.assertTrue(ok, text)


def parallel(n, fn, *args):
    """Runs fn(i, *args) in n threads released together by a barrier; returns the results in
    order. Real parallel HTTP clients, each with its own connection."""
    barrier = threading.Barrier(n)
    results = [None] * n

    def run(i):
        barrier.wait()
        try:
            results[i] = fn(i, *args)
        except Exception as e:  # a client error is a result the test asserts on
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def pool(n_clients, jobs, fn):
    """Runs fn(job) for every job over n_clients concurrent threads; results in job order."""
    results = [None] * len(jobs)
    lock = threading.Lock()
    it = iter(range(len(jobs)))

    def worker():
        while True:
            with lock:
                i = next(it, None)
            if i is None:
                return
            try:
                results[i] = fn(jobs[i])
            except Exception as e:
                results[i] = e

    threads = [threading.Thread(target=worker) for _ in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
