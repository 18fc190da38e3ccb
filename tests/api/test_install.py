"""test_install.py - `make install` into a DESTDIR, and the service run from there: the installed
binary under the installed settings file tells a service manager when it is ready, reloading and
stopping (systemd's notify protocol, read here from a real datagram socket), Debian's nginx
serves the installed site and pages in front of it, and a purchase works. The systemd units pass
`systemd-analyze verify` and its security review, the logrotate rule passes `logrotate -d`, and
a second install keeps an operator's edited settings."""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import uuid

from stack import ROOT, free_port, start_site_nginx

PREFIX = "/usr"
D = None          # the DESTDIR
WORK = None       # state, socket and logs of the run from DESTDIR


def setUpModule():
    global D, WORK
    D = tempfile.mkdtemp(prefix="numatix-destdir-")
    WORK = tempfile.mkdtemp(prefix="numatix-installed-")
    r = subprocess.run(["make", "--no-print-directory", "install", "DESTDIR=" + D, "PREFIX=" + PREFIX],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def tearDownModule():
    shutil.rmtree(D, ignore_errors=True)
    shutil.rmtree(WORK, ignore_errors=True)


def installed(path):
    return os.path.join(D, path.lstrip("/"))


class Files(unittest.TestCase):
    def test_layout(self):
        for path in ("/usr/bin/numatix", "/usr/share/numatix/www/index.html", "/usr/share/numatix/www/api.html",
                     "/usr/share/numatix/www/openapi.yaml", "/etc/nginx/sites-available/numatix",
                     "/etc/nginx/numatix/numatix-locations.conf", "/etc/nginx/numatix/numatix-limits.conf",
                     "/etc/nginx/numatix/numatix-fastcgi.conf", "/etc/nginx/numatix/numatix-errors.conf",
                     "/etc/numatix/numatix.conf",
                     "/usr/lib/systemd/system/numatix.service", "/usr/lib/systemd/system/numatix-reap.timer",
                     "/usr/lib/sysusers.d/numatix.conf", "/etc/logrotate.d/numatix"):
            self.assertTrue(os.path.exists(installed(path)), path)
        self.assertTrue(os.access(installed("/usr/bin/numatix"), os.X_OK))
        self.assertEqual(os.stat(installed("/etc/numatix/numatix.conf")).st_mode & 0o777, 0o640)
        site = open(installed("/etc/nginx/sites-available/numatix")).read()
        self.assertIn("root /usr/share/numatix/www;", site)
        unit = open(installed("/usr/lib/systemd/system/numatix.service")).read()
        self.assertIn("ExecStart=/usr/bin/numatix serve", unit)
        self.assertIn("Environment=NUMATIX_CONFIG=/etc/numatix/numatix.conf", unit)
        self.assertIn("Type=notify", unit)
        self.assertNotIn("@", re.sub(r"(?m)^#.*$", "", unit).replace("@system-service", "")
                         .replace("@privileged", "").replace("@resources", ""))

    def test_units_verify_and_are_hardened(self):
        units = tempfile.mkdtemp(prefix="numatix-units-")
        try:
            for u in ("numatix.service", "numatix-reap.service", "numatix-reap.timer"):
                text = open(installed("/usr/lib/systemd/system/" + u)).read()
                # verify checks that ExecStart exists: point it at the installed binary
                with open(os.path.join(units, u), "w") as f:
                    f.write(text.replace("/usr/bin/numatix", installed("/usr/bin/numatix")))
            r = subprocess.run(["systemd-analyze", "verify"] + [os.path.join(units, u) for u in os.listdir(units)],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            r = subprocess.run(["systemd-analyze", "security", "--offline=yes", os.path.join(units, "numatix.service")],
                               capture_output=True, text=True, timeout=60)
            level = re.search(r"Overall exposure level for numatix.service: ([0-9.]+)", r.stdout + r.stderr)
            self.assertIsNotNone(level, r.stdout + r.stderr)
            self.assertLessEqual(float(level.group(1)), 2.0, r.stdout)
        finally:
            shutil.rmtree(units)

    def test_sysusers_then_logrotate_rule(self):
        # the user the units and the rule name, made as the install's next step says
        r = subprocess.run(["systemd-sysusers", installed("/usr/lib/sysusers.d/numatix.conf")],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        groups = subprocess.run(["id", "-nG", "numatix"], capture_output=True, text=True).stdout.split()
        self.assertIn("www-data", groups)
        state = os.path.join(WORK, "logrotate.state")
        r = subprocess.run(["logrotate", "-d", "-s", state, installed("/etc/logrotate.d/numatix")],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("/var/log/numatix/*.log", r.stdout + r.stderr)
        self.assertNotIn("error", (r.stdout + r.stderr).lower())

    def test_a_second_install_keeps_edited_settings(self):
        conf = installed("/etc/numatix/numatix.conf")
        with open(conf, "a") as f:
            f.write("NUMATIX_HOLD_TTL=321\n")
        r = subprocess.run(["make", "--no-print-directory", "install", "DESTDIR=" + D, "PREFIX=" + PREFIX],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("kept", r.stdout)
        self.assertIn("NUMATIX_HOLD_TTL=321", open(conf).read())


class Running(unittest.TestCase):
    """The installed binary and site, run from the DESTDIR."""

    def setUp(self):
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_path = os.path.join(WORK, "notify-%s.sock" % uuid.uuid4().hex[:8])
        self.notify.bind(self.notify_path)
        self.notify.settimeout(30)
        self.port = free_port()
        self.env = dict(os.environ)
        for k in list(self.env):
            if k.startswith("NUMATIX_"):
                del self.env[k]
        # the installed settings file, with what a test machine cannot use (/var/lib, /run)
        # overridden by the environment, which wins
        self.env.update({
            "NUMATIX_CONFIG": installed("/etc/numatix/numatix.conf"),
            "NUMATIX_DB": "sqlite://%s/numatix.db" % WORK,
            "NUMATIX_SOCKET": os.path.join(WORK, "numatix.sock"),
            "NUMATIX_ADMIN_TOKEN": "installed-admin-token-0123456789",
            "NUMATIX_WORKERS": "2",
            "NOTIFY_SOCKET": self.notify_path,
        })
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.notify.close()
        os.unlink(self.notify_path)

    def states(self, until):
        """Notify datagrams until one has the assignment `until`."""
        got = []
        while True:
            msg = self.notify.recv(4096).decode()
            got.append(msg)
            if until in msg.split("\n"):
                return got

    def nginx(self):
        conf = os.path.join(WORK, "nginx-%d" % self.port)
        p = start_site_nginx(conf, installed("/etc/nginx/sites-available/numatix"), self.port,
                             installed("/etc/nginx/numatix"),
                             (("root /usr/share/numatix/www;", "root %s;" % installed("/usr/share/numatix/www")),
                              ("unix:/run/numatix/numatix.sock", "unix:" + self.env["NUMATIX_SOCKET"]),
                              ("/var/log/nginx/", conf + "/")))
        self.procs.insert(0, p)
        return p

    def get(self, method, path, body=None, headers=None):
        for _ in range(100):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                conn.request(method, path, body=json.dumps(body) if body is not None else None,
                             headers=dict({"Content-Type": "application/json"}, **(headers or {})))
                r = conn.getresponse()
                return r.status, r.read().decode()
            except ConnectionRefusedError:
                # nginx is still binding its port: poll as run.sh does
                time.sleep(0.05)
            finally:
                conn.close()
        raise AssertionError("nginx never answered")

    def test_serves_from_the_installed_files_and_reports_its_states(self):
        binary = installed("/usr/bin/numatix")
        r = subprocess.run([binary, "seed"], env=self.env, capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        server = subprocess.Popen([binary, "serve"], env=self.env, stderr=subprocess.PIPE)
        self.procs.append(server)
        self.assertIn("READY=1", self.states("READY=1")[-1])
        # the socket: read and written by the server's user and group only; the installed unit
        # runs the server in nginx's group (www-data), so nginx's workers and no one else reach it
        self.assertEqual(os.stat(self.env["NUMATIX_SOCKET"]).st_mode & 0o777, 0o660)
        self.assertIn("Group=www-data", open(installed("/usr/lib/systemd/system/numatix.service")).read())
        self.nginx()
        status, page = self.get("GET", "/")
        self.assertEqual(status, 200)
        self.assertIn("<title>Numatix", page)
        status, body = self.get("GET", "/api/health")
        self.assertEqual((status, json.loads(body)["status"]), (200, "ok"), body)
        status, body = self.get("GET", "/api/plans")
        plan = json.loads(body)["plans"][0]
        status, body = self.get("POST", "/api/subscriptions/purchase",
                                {"planId": plan["id"], "paymentMethodId": "pm_card_visa",
                                 "customer": {"email": "installed@example.com", "name": "Installed"}},
                                {"Idempotency-Key": str(uuid.uuid4())})
        self.assertEqual(status, 201, body)
        # a reload: RELOADING=1, then the new image is READY=1 again, and still serves
        server.send_signal(signal.SIGHUP)
        got = self.states("READY=1")
        self.assertIn("RELOADING=1", got[0].split("\n"), got)
        self.assertEqual(self.get("GET", "/api/health")[0], 200)
        server.send_signal(signal.SIGTERM)
        self.assertEqual(self.states("STOPPING=1")[-1], "STOPPING=1")
        self.assertEqual(server.wait(timeout=60), 0)
        # the log went where the installed settings say (stderr), as JSON lines
        lines = [l for l in server.stderr.read().decode().splitlines() if l.startswith("{")]
        self.assertTrue(any(json.loads(l).get("event") == "request" for l in lines))
        r = subprocess.run([binary, "check"], env=self.env, capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    @unittest.skipUnless(os.getuid() == 0, "needs root: it is about giving root up")
    def test_started_as_root_it_runs_as_numatix_user(self):
        import pwd
        nobody = pwd.getpwnam("nobody")
        # a directory of the account's own, outside the test's root-only one; the readiness
        # messages come from the account too, so their socket is there and writable
        home = tempfile.mkdtemp(prefix="numatix-nobody-")
        self.addCleanup(shutil.rmtree, home, True)
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
        self.notify.close()
        os.unlink(self.notify_path)
        self.notify_path = os.path.join(home, "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(30)
        os.chmod(self.notify_path, 0o777)
        binary = installed("/usr/bin/numatix")
        self.env.update({"NUMATIX_DB": "sqlite://%s/numatix.db" % home, "NUMATIX_SOCKET": os.path.join(home, "n.sock"),
                         "NUMATIX_USER": "nobody:nogroup", "NOTIFY_SOCKET": self.notify_path})

        # the store's files belong to the account
        r = subprocess.run([binary, "seed"], env=self.env, capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        for name in os.listdir(home):
            os.chown(os.path.join(home, name), nobody.pw_uid, nobody.pw_gid)
        server = subprocess.Popen([binary, "serve"], env=self.env, stderr=subprocess.PIPE)
        self.procs.append(server)
        self.states("READY=1")
        uids = lambda pid: open("/proc/%d/status" % pid).read().split("Uid:")[1].split("\n")[0].split()
        kids = [int(p) for p in subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True,
                                                text=True).stdout.split()]
        self.assertGreaterEqual(len(kids), 3)   # 2 workers and the reaper
        for pid in [server.pid] + kids:
            self.assertEqual(set(uids(pid)), {str(nobody.pw_uid)}, pid)   # real, effective, saved, fs
        st = os.stat(self.env["NUMATIX_SOCKET"])
        self.assertEqual((st.st_uid, st.st_mode & 0o777), (nobody.pw_uid, 0o660))
        self.nginx()
        plan = json.loads(self.get("GET", "/api/plans")[1])["plans"][0]
        status, body = self.get("POST", "/api/subscriptions/purchase",
                                {"planId": plan["id"], "paymentMethodId": "pm_card_visa",
                                 "customer": {"email": "as-nobody@example.com", "name": "N"}},
                                {"Idempotency-Key": str(uuid.uuid4())})
        self.assertEqual(status, 201, body)
        server.send_signal(signal.SIGTERM)
        self.assertEqual(server.wait(timeout=60), 0)
        self.assertIn("running as nobody:nogroup", server.stderr.read().decode())
        # an unknown account is refused at start, before anything is served
        r = subprocess.run([binary, "serve"], env=dict(self.env, NUMATIX_USER="no-such-user-here"),
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 1)
        self.assertIn("there is no user no-such-user-here", r.stderr)

    def test_the_site_limits_writes_per_client_and_cuts_slow_clients(self):
        binary = installed("/usr/bin/numatix")
        self.assertEqual(subprocess.run([binary, "seed"], env=self.env, capture_output=True, timeout=60).returncode, 0)
        server = subprocess.Popen([binary, "serve"], env=self.env, stderr=subprocess.DEVNULL)
        self.procs.append(server)
        self.states("READY=1")
        self.nginx()
        plan = json.loads(self.get("GET", "/api/plans")[1])["plans"][0]
        # 60 purchases as fast as one client can send them: the burst passes, the rest is 429,
        # in JSON with Retry-After, and never reaches a worker
        answers = []
        for i in range(60):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            conn.request("POST", "/api/subscriptions/purchase",
                         body=json.dumps({"planId": plan["id"], "paymentMethodId": "pm_card_visa",
                                          "customer": {"email": "fast-%d@example.com" % i, "name": "Fast"}}),
                         headers={"Content-Type": "application/json", "Idempotency-Key": str(uuid.uuid4())})
            r = conn.getresponse()
            answers.append((r.status, r.getheader("Retry-After"), r.getheader("X-Trace-Id"), r.read().decode()))
            conn.close()
        limited = [a for a in answers if a[0] == 429]
        sold = [a for a in answers if a[0] == 201]
        self.assertEqual(len(limited) + len(sold), 60, [a[0] for a in answers])
        self.assertGreaterEqual(len(sold), 20)
        self.assertGreaterEqual(len(limited), 20)
        for status, retry, trace, body in limited:
            err = json.loads(body)
            self.assertEqual((err["code"], retry, err["traceId"]), ("RATE_LIMITED", "1", trace))
        left = json.loads(self.get("GET", "/api/plans/" + plan["id"])[1])["subscriptions_left"]
        self.assertEqual(left, plan["subscriptions_left"] - len(sold))
        # reads are not limited
        self.assertTrue(all(self.get("GET", "/api/plans")[0] == 200 for _ in range(40)))
        # a client that never finishes its request headers is cut off after nginx's 10 s
        slow = socket.create_connection(("127.0.0.1", self.port))
        slow.sendall(b"GET /api/plans HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        begun = time.monotonic()
        slow.settimeout(30)
        self.assertEqual(slow.recv(1024), b"")
        self.assertLess(time.monotonic() - begun, 15)
        slow.close()
        r = subprocess.run([binary, "check"], env=self.env, capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main()
