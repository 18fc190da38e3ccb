"""test_mongo_live.py - the shared black-box suites (API, a subscription's life, hostile input, concurrency, webhooks,
kill-a-worker) against a live MongoDB replica set, when MONGO_URI names one; each stack gets a
database of its own. Without MONGO_URI it is skipped, and says so: no MongoDB server can be
installed on these machines, so there the MongoDB store is verified by test_mongo_wire.py."""

import os
import subprocess
import sys
import unittest

SUITES = ["test_api", "test_life", "test_hostile", "test_concurrency", "test_webhooks", "test_recovery"]
HERE = os.path.dirname(os.path.abspath(__file__))


@unittest.skipUnless(os.environ.get("MONGO_URI"),
                     "SKIPPED: live MongoDB suite - MONGO_URI is not set (make test-mongo MONGO_URI=mongodb://...)")
class LiveMongo(unittest.TestCase):
    pass


def make(suite):
    def test(self):
        env = dict(os.environ, NUMATIX_TEST_STORE="mongodb")
        r = subprocess.run([sys.executable, os.path.join(HERE, "runner.py"), suite], env=env,
                           capture_output=True, text=True, timeout=1800)
        sys.stdout.write(r.stdout[-20000:])
        last = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
        self.assertTrue(last, r.stdout[-3000:] + r.stderr[-3000:])
        self.assertEqual(last[-1].split()[2], "0", "failures in %s against MongoDB" % suite)
    return test


for s in SUITES:
    setattr(LiveMongo, "test_" + s, make(s))


if __name__ == "__main__":
    unittest.main()
