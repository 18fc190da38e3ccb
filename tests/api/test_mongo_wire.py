"""test_mongo_wire.py - the MongoDB store's exact wire behaviour, pinned with MockupDB (a
scriptable wire-protocol server): the commands each store operation sends (filters, updates,
write concern, transaction fields, index specifications), and how each server answer that
matters is handled. The binary runs as CGI, one request per process, against the mock.

No MongoDB server can run on these machines; test_mongo_live.py runs the whole shared suite
against a real one when MONGO_URI is set."""

import collections
import datetime
import hashlib
import hmac
import http.server
import json
import os
import tempfile
import subprocess
import threading
import unittest
import uuid

from bson import ObjectId
from mockupdb import Matcher, MockupDB

from smtp_sink import Mailbox
from stack import ADMIN, BIN, unseal

HELLO = {"ismaster": True, "isWritablePrimary": True, "setName": "rs0", "hosts": [],
         "maxWireVersion": 13, "minWireVersion": 0, "logicalSessionTimeoutMinutes": 30}
PLAN_ID = ObjectId()


def plan_doc(left=9, held=1):
    return {"_id": PLAN_ID, "name": "Wire plan", "name_key": "wire plan", "description": "", "price_cents": 1500,
            "duration_days": 30, "total_capacity": 10, "subscriptions_left": left, "subscriptions_held": held,
            "status": "active", "features": []}


class Wire:
    """A MockupDB that answers every command by a small table, records what it received, and
    lets a test replace the answer to one command (once, or every time)."""

    def __init__(self, hello=None):
        self.hello = hello or HELLO
        self.srv = MockupDB(auto_ismaster=self.hello, verbose=False)
        self.srv.autoresponds(Matcher(), self.handle)
        self.port = self.srv.run()
        self.log = []
        self.overrides = []       # [(command, collection, reply-or-fn, once)]
        self.docs = collections.defaultdict(list)   # find results by collection
        self.fam = {"plans": plan_doc(), "customers": None, "leases": None,
                    "subscriptions": {"_id": ObjectId(), "plan_id": PLAN_ID, "status": "active",
                                      "idem_key": "k"},
                    "counters": {"_id": "events", "seq": 41}}
        # the feed's counter exists: a store opening does not number older events
        self.docs["counters"] = [{"_id": "events", "seq": 41}]
        self.lock = threading.Lock()

    def close(self):
        self.srv.stop()

    def uri(self):
        return "mongodb://127.0.0.1:%d/numatix?directConnection=true&serverSelectionTimeoutMS=1500" % self.port

    def override(self, command, collection, reply, once=True):
        self.overrides.append((command, collection, reply, once))

    def handle(self, req):
        name = req.command_name
        if name in ("hello", "ismaster", "isMaster"):
            # the connection handshake is MockupDB's; a hello sent as a command (OP_MSG) is ours
            if "$db" not in req.doc:
                return False
            req.reply(self.hello)
            return True
        doc = dict(req.doc)
        coll = doc.get(name) if isinstance(doc.get(name), str) else None
        with self.lock:
            self.log.append((name, coll, doc))
            for i, (c, col, reply, once) in enumerate(self.overrides):
                if c == name and col in (None, coll):
                    if once:
                        self.overrides.pop(i)
                    if callable(reply):
                        return reply(req)
                    req.reply(reply)
                    return True
        if name == "insert":
            req.reply({"ok": 1, "n": len(doc.get("documents", []))})
        elif name == "update":
            req.reply({"ok": 1, "n": 1, "nModified": 1})
        elif name == "delete":
            req.reply({"ok": 1, "n": 1})
        elif name == "findAndModify":
            value = self.fam.get(coll)
            if coll == "customers" and value is None:
                value = dict(doc["update"]["$setOnInsert"])
            if coll == "leases":
                value = {"_id": "reaper"}
            req.reply({"ok": 1, "value": value, "lastErrorObject": {"n": 1 if value else 0}})
        elif name in ("find", "aggregate"):
            req.reply({"ok": 1, "cursor": {"id": 0, "ns": "numatix.%s" % coll, "firstBatch": self.docs[coll]}})
        else:
            req.ok()
        return True

    def commands(self, name, coll=None):
        return [d for n, c, d in self.log if n == name and (coll is None or c == coll)]


# the simulated processor's records: a file of their own, never the store's collections
SIM_DB = os.path.join(tempfile.mkdtemp(prefix="numatix-wire-"), "sim.processor.db")


def cgi(wire, method, path, body=None, headers=None):
    env = {"PATH": os.environ["PATH"], "GATEWAY_INTERFACE": "CGI/1.1", "REQUEST_METHOD": method,
           "PATH_INFO": path.partition("?")[0], "QUERY_STRING": path.partition("?")[2], "NUMATIX_DB": wire.uri(), "NUMATIX_ADMIN_TOKEN": ADMIN, "REMOTE_ADDR": "192.0.2.7",
           "NUMATIX_SIM_DB": SIM_DB}
    data = json.dumps(body).encode() if body is not None else b""
    env["CONTENT_LENGTH"] = str(len(data))
    for k, v in (headers or {}).items():
        env["HTTP_" + k.upper().replace("-", "_")] = v
    r = subprocess.run([BIN], input=data, env=env, capture_output=True, timeout=60)
    # under `make asan` a memory error or leak report fails the test
    assert b"Sanitizer" not in r.stderr, r.stderr.decode()[-3000:]
    head, _, payload = r.stdout.partition(b"\r\n\r\n")
    status = int(head.split(b"\r\n")[0].split()[1])
    return status, json.loads(payload) if payload.strip() else None, r.stderr.decode()


def purchase(wire, key=None, method="pm_card_visa"):
    return cgi(wire, "POST", "/api/subscriptions/purchase",
               {"planId": str(PLAN_ID), "paymentMethodId": method,
                "customer": {"email": "wire@example.com", "name": "Wire"}},
               {"Idempotency-Key": key or str(uuid.uuid4())})


def txn_of(doc):
    return (doc["lsid"]["id"], doc.get("txnNumber"))


class MongoWire(unittest.TestCase):
    def setUp(self):
        self.w = Wire()
        # the subscription the payment step reads back for its plan id
        self.w.docs["subscriptions"] = [{"_id": ObjectId(), "plan_id": PLAN_ID, "status": "pending"}]
        self.w.docs["plans"] = [plan_doc()]

    def tearDown(self):
        self.w.close()

    def test_indexes_created_at_start(self):
        st, body, _ = cgi(self.w, "GET", "/api/health")
        self.assertEqual((st, body["store"], body["status"]), (200, "mongodb", "ok"))
        specs = {d["createIndexes"]: d for d in self.w.commands("createIndexes")}
        self.assertEqual(set(specs), {"plans", "customers", "subscriptions", "payments", "audit_events",
                                      "idempotency_keys", "webhook_deliveries", "waitlist", "mail", "login_links"})
        ix = lambda coll: {i["name"]: (dict(i["key"]), i.get("unique", False)) for i in specs[coll]["indexes"]}
        self.assertEqual(ix("subscriptions")["idem_key_unique"], ({"idem_key": 1}, True))
        self.assertEqual(ix("subscriptions")["hold_deadline"], ({"status": 1, "hold_deadline": 1}, False))
        self.assertEqual(ix("payments")["idem_key_kind_unique"], ({"idem_key": 1, "kind": 1}, True))
        self.assertEqual(ix("audit_events")["plan_at"], ({"plan_id": 1, "at": -1, "_id": -1}, False))
        self.assertEqual(ix("audit_events")["feed"], ({"seq": 1}, False))
        self.assertEqual(ix("webhook_deliveries")["endpoint_seq_unique"], ({"endpoint_id": 1, "seq": -1}, True))
        self.assertEqual(ix("waitlist")["plan_status_seq"], ({"plan_id": 1, "status": 1, "seq": 1}, False))
        self.assertEqual(ix("plans")["name_key_unique"], ({"name_key": 1}, True))
        self.assertEqual(ix("customers")["email_key_unique"], ({"email_key": 1}, True))
        self.assertEqual(ix("mail")["status_next_attempt"], ({"status": 1, "next_attempt_at": 1, "_id": 1}, False))
        self.assertEqual(ix("login_links")["email_created"], ({"email": 1, "created_at": 1}, False))
        for d in specs.values():
            self.assertEqual(d["writeConcern"]["w"], "majority")

    def test_purchase_commands(self):
        key = str(uuid.uuid4())
        st, body, err = purchase(self.w, key)
        self.assertEqual(st, 201, (body, err))
        hold = self.w.commands("findAndModify", "plans")[0]
        # and nobody waiting: while anyone does, free seats are the line's
        self.assertEqual(json.loads(json.dumps(hold["query"], default=str)),
                         {"_id": str(PLAN_ID), "status": "active", "subscriptions_left": {"$gte": 1},
                          "max_per_order": {"$gte": 1}, "waiting": {"$not": {"$gt": 0}}})
        self.assertEqual(dict(hold["update"]["$inc"]), {"subscriptions_left": -1, "subscriptions_held": 1})
        self.assertTrue(hold["new"])
        hold_txn = txn_of(hold)
        # the first unit: the key claimed, the customer found or made, the seat, the pending
        # subscription and seat.held, in one transaction with one commit
        in_hold = [(n, c) for n, c, d in self.w.log if "txnNumber" in d and txn_of(d) == hold_txn]
        self.assertEqual(in_hold, [("insert", "idempotency_keys"), ("findAndModify", "customers"),
                                   ("findAndModify", "plans"), ("insert", "subscriptions"),
                                   ("findAndModify", "counters"), ("insert", "audit_events"),
                                   ("commitTransaction", None)])
        first = [d for n, c, d in self.w.log if "txnNumber" in d and txn_of(d) == hold_txn][0]
        self.assertEqual((first["startTransaction"], first["autocommit"]), (True, False))
        self.assertEqual(first["readConcern"]["level"], "snapshot")
        claim = first["documents"][0]
        self.assertEqual((claim["_id"], claim["state"], len(claim["fingerprint"])), (key, "held", 64))
        cust = self.w.commands("findAndModify", "customers")[0]
        self.assertEqual(dict(cust["query"]), {"email_key": "wire@example.com"})
        self.assertTrue(cust["upsert"])
        self.assertIn("$setOnInsert", cust["update"])
        sub = self.w.commands("insert", "subscriptions")[0]["documents"][0]
        self.assertEqual((sub["status"], sub["idem_key"], sub["plan_id"]), ("pending", key, PLAN_ID))
        self.assertEqual(claim["subscription_id"], sub["_id"])
        audit = self.w.commands("insert", "audit_events")[0]["documents"][0]
        self.assertEqual((audit["action"], audit["before"]["subscriptions_left"], audit["after"]["subscriptions_left"]),
                         ("seat.held", 10, 9))
        # its feed position taken from the one counter, in the same transaction: the counter
        # answered 41 after adding the unit's one event
        feed = self.w.commands("findAndModify", "counters")[0]
        self.assertEqual((feed["query"], dict(feed["update"]), feed["new"]), ({"_id": "events"}, {"$inc": {"seq": 1}}, True))
        self.assertEqual(txn_of(feed), hold_txn)
        self.assertEqual(audit["seq"], 41)
        commit = [d for d in self.w.commands("commitTransaction") if txn_of(d) == hold_txn][0]
        self.assertEqual(commit["writeConcern"]["w"], "majority")
        # the simulated processor keeps its own records, apart from the store: nothing of it
        # reaches MongoDB
        self.assertEqual([c for n, c, d in self.w.log if c == "processor"], [])
        # the second unit: pending -> active only while the hold is live, the seat counted
        # sold, the charge recorded, its events and the 201 stored on the key, one commit
        confirm = self.w.commands("findAndModify", "subscriptions")[0]
        self.assertEqual(confirm["query"]["status"], "pending")
        self.assertIn("$gt", confirm["query"]["hold_deadline"])
        self.assertEqual(confirm["update"]["$set"]["status"], "active")
        self.assertTrue(confirm["startTransaction"])
        settle = txn_of(confirm)
        self.assertNotEqual(settle, hold_txn)
        in_settle = [(n, c) for n, c, d in self.w.log if "txnNumber" in d and txn_of(d) == settle]
        self.assertEqual(in_settle, [("findAndModify", "subscriptions"), ("findAndModify", "plans"),
                                     ("insert", "payments"), ("findAndModify", "counters"),
                                     ("insert", "audit_events"), ("insert", "audit_events"),
                                     ("update", "idempotency_keys"), ("commitTransaction", None)])
        charge = self.w.commands("insert", "payments")[0]
        self.assertEqual((charge["documents"][0]["idem_key"], charge["documents"][0]["status"]), (key, "authorized"))
        done = self.w.commands("update", "idempotency_keys")[-1]["updates"][0]
        self.assertEqual(done["q"]["state"], {"$ne": "done"})
        self.assertEqual((done["u"]["$set"]["state"], done["u"]["$set"]["response_status"]), ("done", 201))
        # kept sealed: the access token is nowhere in the clear
        self.assertNotIn(body["accessToken"], json.dumps(self.w.log, default=str))
        self.assertEqual(json.loads(unseal(done["u"]["$set"]["response_body"]))["id"], body["id"])
        # two commits of the store's own per purchase
        self.assertEqual(len(self.w.commands("commitTransaction")), 2)

    def test_a_purchase_the_bank_asks_about_becomes_a_session_in_one_transaction(self):
        key = str(uuid.uuid4())
        st, body, err = purchase(self.w, key, method="pm_card_authenticationRequired")
        self.assertEqual((st, body["code"]), (402, "PAYMENT_ACTION_REQUIRED"), (body, err))
        # the second unit: still pending, only from its own attempt and while it was no session;
        # the secret's hash kept, the attempt parked (its lease 0), checkout.created and the 402
        # kept on the key, one commit
        [move] = self.w.commands("findAndModify", "subscriptions")
        q = json.loads(json.dumps(move["query"], default=str))
        self.assertEqual((q["status"], q["attempt_key"], q["secret_hash"]), ("pending", key, {"$in": ["", None]}))
        s = move["update"]["$set"]
        self.assertEqual((s["status"], len(s["secret_hash"]), str(s["attempt_until"])[:4]), ("pending", 64, "1970"))
        self.assertNotIn(body["details"]["clientSecret"], json.dumps(self.w.log, default=str))
        unit = [(n, c) for n, c, d in self.w.log if "txnNumber" in d and txn_of(d) == txn_of(move)]
        self.assertEqual(unit, [("findAndModify", "subscriptions"), ("findAndModify", "plans"),
                                ("findAndModify", "counters"), ("insert", "audit_events"),
                                ("update", "idempotency_keys"), ("commitTransaction", None)])
        audit = [d for d in self.w.commands("insert", "audit_events") if txn_of(d) == txn_of(move)][0]["documents"][0]
        self.assertEqual(audit["action"], "checkout.created")
        done = self.w.commands("update", "idempotency_keys")[-1]["updates"][0]
        self.assertEqual((done["u"]["$set"]["state"], done["u"]["$set"]["response_status"]), ("done", 402))

    def test_checkout_session_commands(self):
        key = str(uuid.uuid4())
        st, body, err = cgi(self.w, "POST", "/api/checkout-sessions",
                            {"planId": str(PLAN_ID), "quantity": 1, "customer": {"email": "wire@example.com", "name": "W"}},
                            {"Idempotency-Key": key})
        self.assertEqual((st, body["status"]), (201, "open"), (body, err))
        hold = self.w.commands("findAndModify", "plans")[0]
        # the hold and its answer on the key: one transaction, one commit, no charge
        in_hold = [(n, c) for n, c, d in self.w.log if "txnNumber" in d and txn_of(d) == txn_of(hold)]
        self.assertEqual(in_hold, [("insert", "idempotency_keys"), ("findAndModify", "customers"),
                                   ("findAndModify", "plans"), ("insert", "subscriptions"),
                                   ("findAndModify", "counters"), ("insert", "audit_events"),
                                   ("insert", "audit_events"), ("update", "idempotency_keys"),
                                   ("commitTransaction", None)])
        sub = self.w.commands("insert", "subscriptions")[0]["documents"][0]
        secret_hash = hashlib.sha256(body["clientSecret"].encode()).hexdigest()
        self.assertEqual((sub["secret_hash"], sub["attempt_key"]), (secret_hash, ""))
        # the secret itself is kept only in the answer stored for replays of the key, sealed
        self.assertEqual([n for n, c, d in self.w.log if body["clientSecret"] in json.dumps(d, default=str)], [])
        kept = self.w.commands("update", "idempotency_keys")[-1]["updates"][0]["u"]["$set"]["response_body"]
        self.assertEqual(json.loads(unseal(kept))["clientSecret"], body["clientSecret"])
        done = self.w.commands("update", "idempotency_keys")[-1]["updates"][0]
        self.assertEqual((done["q"]["_id"], done["u"]["$set"]["response_status"]), (key, 201))
        self.assertEqual([c for n, c, d in self.w.log if c == "processor"], [])
        # completing it: the attempt is taken by one conditional update of the session's document
        self.w.log.clear()
        self.w.docs["subscriptions"] = [dict(sub, _id=sub["_id"])]
        self.w.docs["plans"] = [plan_doc()]
        pay_key = str(uuid.uuid4())
        st, paid, err = cgi(self.w, "POST", "/api/checkout-sessions/%s/complete" % body["id"],
                            {"paymentMethodId": "pm_card_visa"},
                            {"Idempotency-Key": pay_key, "Authorization": "Bearer " + body["clientSecret"]})
        self.assertEqual(st, 201, (paid, err))
        take = [d for d in self.w.commands("update", "subscriptions")][0]
        q = take["updates"][0]["q"]
        self.assertEqual((q["_id"], q["status"], q["attempt_key"]), (sub["_id"], "pending", ""))
        self.assertIn("$gt", q["hold_deadline"])
        self.assertEqual(take["updates"][0]["u"]["$set"]["attempt_key"], pay_key)
        self.assertNotIn("startTransaction", take)
        # the authorization under the attempt's key, settled only while the attempt is still this one
        self.assertEqual(self.w.commands("insert", "payments")[0]["documents"][0]["idem_key"], pay_key)
        confirm = self.w.commands("findAndModify", "subscriptions")[0]
        self.assertEqual((confirm["query"]["attempt_key"], confirm["update"]["$set"]["status"]), (pay_key, "active"))
        stored = self.w.commands("update", "idempotency_keys")[-1]["updates"][0]
        self.assertEqual((stored["q"]["_id"], stored["u"]["$set"]["response_status"]), (pay_key, 201))

    def test_plan_change_commands(self):
        # an active subscription of the wire plan, a day into its 30-day period, read by its
        # access token (a change to a plan of the same price and length: nothing to pay)
        new_plan = ObjectId()
        started = datetime.datetime.utcnow().replace(microsecond=0) - datetime.timedelta(days=1)
        st, bought, err = purchase(self.w)
        self.assertEqual(st, 201, (bought, err))
        old = {"_id": ObjectId(bought["id"]), "plan_id": PLAN_ID, "customer_id": ObjectId(bought["customerId"]),
               "status": "active", "idem_key": "k", "quantity": 1, "amount_cents": 1500, "duration_days": 30,
               "payment_id": bought["paymentId"], "start_at": started, "end_at": started + datetime.timedelta(days=30),
               "token_hash": hashlib.sha256(bought["accessToken"].encode()).hexdigest(), "attempt_key": "k"}
        self.w.docs["subscriptions"] = [old]
        self.w.docs["customers"] = [{"_id": old["customer_id"], "email": "wire@example.com", "name": "Wire"}]
        self.w.log.clear()
        key = str(uuid.uuid4())
        st, body, err = cgi(self.w, "POST", "/api/subscriptions/%s/change-plan" % bought["id"], {"planId": str(new_plan)},
                            {"Idempotency-Key": key, "Authorization": "Bearer " + bought["accessToken"]})
        self.assertEqual(st, 200, (body, err))
        # the hold checks the old subscription in its own transaction
        hold = self.w.commands("findAndModify", "plans")[0]
        finds = [d for d in self.w.commands("find", "subscriptions") if "txnNumber" in d and txn_of(d) == txn_of(hold)]
        self.assertEqual(dict(finds[0]["filter"])["status"], "active")
        # the last unit: the new subscription active and the old one changed, its seat back, in one transaction
        moves = self.w.commands("findAndModify", "subscriptions")
        self.assertEqual([m["update"]["$set"]["status"] for m in moves], ["active", "changed"])
        self.assertEqual(txn_of(moves[0]), txn_of(moves[1]))
        self.assertEqual((moves[1]["query"]["_id"], moves[1]["query"]["status"]), (old["_id"], "active"))
        in_last = [(n, c) for n, c, d in self.w.log if "txnNumber" in d and txn_of(d) == txn_of(moves[0])]
        self.assertEqual(in_last.count(("findAndModify", "plans")), 2)
        self.assertEqual(in_last[-1], ("commitTransaction", None))

    def test_transient_error_retries_the_transaction(self):
        self.w.override("findAndModify", "plans",
                        {"ok": 0, "code": 112, "codeName": "WriteConflict", "errmsg": "write conflict",
                         "errorLabels": ["TransientTransactionError"]})
        st, body, err = purchase(self.w)
        self.assertEqual(st, 201, (body, err))
        holds = self.w.commands("findAndModify", "plans")
        self.assertGreaterEqual(len(holds), 2)
        self.assertEqual(dict(holds[0]["query"]), dict(holds[1]["query"]))
        self.assertNotEqual(holds[0]["txnNumber"], holds[1]["txnNumber"])
        aborted = [txn_of(d) for d in self.w.commands("abortTransaction")]
        self.assertIn(txn_of(holds[0]), aborted)
        self.assertNotIn(txn_of(holds[0]), [txn_of(d) for d in self.w.commands("commitTransaction")])

    def test_unknown_commit_result_retries_the_commit(self):
        self.w.override("commitTransaction", None,
                        {"ok": 0, "code": 50, "codeName": "MaxTimeMSExpired", "errmsg": "timeout",
                         "errorLabels": ["UnknownTransactionCommitResult"]})
        st, body, err = purchase(self.w)
        self.assertEqual(st, 201, (body, err))
        commits = self.w.commands("commitTransaction")
        self.assertEqual(txn_of(commits[0]), txn_of(commits[1]))
        self.assertEqual(commits[1]["writeConcern"]["w"], "majority")
        # the hold ran once: the commit was retried, not the transaction
        self.assertEqual(len([d for d in self.w.commands("findAndModify", "plans")
                              if txn_of(d) == txn_of(commits[0])]), 1)

    def key_exists(self, doc):
        self.w.override("insert", "idempotency_keys",
                        {"ok": 0, "code": 11000, "codeName": "DuplicateKey", "errmsg": "E11000 duplicate key"})
        self.w.docs["idempotency_keys"] = [doc]

    def test_duplicate_key_decides_the_race(self):
        key = str(uuid.uuid4())
        # the fingerprint of this very request, as the first run stored it
        st, _, _ = purchase(self.w, key)
        fp = self.w.commands("insert", "idempotency_keys")[0]["documents"][0]["fingerprint"]
        import datetime
        future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=30)
        self.key_exists({"_id": key, "fingerprint": fp, "state": "held", "locked_until": future})
        st, body, _ = purchase(self.w, key)
        self.assertEqual((st, body["code"]), (409, "REQUEST_IN_PROGRESS"))
        self.key_exists({"_id": key, "fingerprint": fp, "state": "done", "response_status": 201,
                         "response_body": '{"id":"stored"}'})
        st, body, _ = purchase(self.w, key)
        self.assertEqual((st, body), (201, {"id": "stored"}))
        self.key_exists({"_id": key, "fingerprint": "0" * 64, "state": "done", "response_status": 201,
                         "response_body": "{}"})
        st, body, _ = purchase(self.w, key)
        self.assertEqual((st, body["code"]), (422, "IDEMPOTENCY_KEY_REUSED"))

    def test_not_primary_is_503_and_leaves_nothing(self):
        self.w.override("findAndModify", "plans",
                        {"ok": 0, "code": 10107, "codeName": "NotWritablePrimary", "errmsg": "not primary"}, once=False)
        st, body, _ = purchase(self.w)
        self.assertEqual((st, body["code"]), (503, "SERVICE_UNAVAILABLE"))
        self.assertEqual(self.w.commands("commitTransaction"), [])
        aborted = self.w.commands("abortTransaction")
        self.assertEqual(len(aborted), 1)
        # the key was claimed inside the aborted transaction: nothing kept, a retry may run
        claim = self.w.commands("insert", "idempotency_keys")[0]
        self.assertEqual(txn_of(claim), txn_of(aborted[0]))
        self.assertEqual(self.w.commands("insert", "payments"), [])
        self.assertEqual([c for n, c, d in self.w.log if c == "processor"], [])

    def test_network_error_is_503(self):
        self.w.override("findAndModify", "plans", lambda req: req.hangup() or True, once=False)
        st, body, _ = purchase(self.w)
        self.assertEqual((st, body["code"]), (503, "SERVICE_UNAVAILABLE"))
        self.assertEqual(self.w.commands("commitTransaction"), [])
        self.assertEqual(self.w.commands("insert", "payments"), [])

    def test_sold_out_and_inactive(self):
        self.w.fam["plans"] = None
        st, body, _ = purchase(self.w)
        self.assertEqual((st, body["code"]), (409, "PLAN_SOLD_OUT"))
        self.w.docs["plans"] = [dict(plan_doc(), status="inactive")]
        st, body, _ = purchase(self.w)
        self.assertEqual((st, body["code"]), (409, "PLAN_INACTIVE"))
        self.w.docs["plans"] = []
        st, body, _ = purchase(self.w)
        self.assertEqual((st, body["code"]), (404, "PLAN_NOT_FOUND"))
        self.assertEqual(self.w.commands("commitTransaction"), [])

    def test_webhook_endpoint_created_at_the_feed_head(self):
        st, body, err = cgi(self.w, "POST", "/api/webhook-endpoints",
                            {"url": "https://example.com/hook", "events": ["seat.held"]},
                            {"Authorization": "Bearer " + ADMIN})
        self.assertEqual(st, 201, (body, err))
        doc = self.w.commands("insert", "webhook_endpoints")[0]["documents"][0]
        self.assertEqual((doc["url"], doc["events"], doc["status"], doc["cursor"], doc["secret"]),
                         ("https://example.com/hook", '["seat.held"]', "enabled", 41, body["secret"]))
        self.assertEqual(str(doc["_id"]), body["id"])

    def test_deliver_sends_and_keeps_the_step_in_one_transaction(self):
        got = []

        class Hook(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                got.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        self.addCleanup(srv.server_close)
        self.addCleanup(srv.shutdown)
        secret = "whsec_" + "ab" * 16
        ep = ObjectId()
        self.w.docs["webhook_endpoints"] = [{"_id": ep, "url": "http://127.0.0.1:%d/h" % srv.server_address[1],
                                             "events": '["*"]', "description": "", "secret": secret,
                                             "status": "enabled", "created_at": datetime.datetime(2026, 1, 1),
                                             "cursor": 41}]
        ev = {"_id": ObjectId(), "seq": 42, "at": datetime.datetime(2026, 1, 2), "action": "seat.held",
              "actor_type": "customer", "resource_type": "subscription", "resource_id": "r", "plan_id": str(PLAN_ID),
              "trace_id": "t"}

        def feed(req):
            after = req.doc["filter"]["seq"]["$gt"]
            req.reply({"ok": 1, "cursor": {"id": 0, "ns": "numatix.audit_events",
                                           "firstBatch": [ev] if after < 42 else []}})
            return True
        self.w.override("find", "audit_events", feed, once=False)
        env = {"PATH": os.environ["PATH"], "NUMATIX_DB": self.w.uri(), "NUMATIX_ADMIN_TOKEN": ADMIN}
        r = subprocess.run([BIN, "deliver"], env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("deliver: 1 delivered, 0 failed, 0 to retry", r.stdout)
        self.assertEqual(len(got), 1)
        headers, raw = got[0]
        t, v1 = [kv.split("=", 1)[1] for kv in headers["Numatix-Signature"].split(",")]
        self.assertEqual(v1, hmac.new(secret.encode(), t.encode() + b"." + raw, hashlib.sha256).hexdigest())
        self.assertEqual((json.loads(raw)["seq"], headers["Numatix-Event-Id"]), (42, str(ev["_id"])))
        # the delivery kept and the cursor moved in one transaction, after the POST
        keep = self.w.commands("update", "webhook_deliveries")[0]
        step = txn_of(keep)
        in_step = [(n, c) for n, c, d in self.w.log if "txnNumber" in d and txn_of(d) == step]
        self.assertEqual(in_step, [("update", "webhook_deliveries"), ("update", "webhook_endpoints"),
                                   ("commitTransaction", None)])
        u = keep["updates"][0]
        self.assertEqual((dict(u["q"]), u["upsert"], u["u"]["$set"]["state"], u["u"]["$set"]["attempts"]),
                         ({"endpoint_id": str(ep), "seq": 42}, True, "delivered", 1))
        moved = self.w.commands("update", "webhook_endpoints")[0]["updates"][0]
        self.assertEqual((moved["q"], dict(moved["u"])), ({"_id": ep}, {"$max": {"cursor": 42}}))
        # one sender at a time: the lease taken first and given back last
        leases = [d for d in self.w.commands("findAndModify", "leases") if d["query"]["_id"] == "webhooks"]
        self.assertEqual(len(leases) >= 2, True)
        self.assertEqual(leases[-1]["update"]["$set"]["until"], datetime.datetime(1970, 1, 1))

    def test_join_takes_a_place_in_the_plans_transaction(self):
        self.w.fam["plans"] = dict(plan_doc(left=0, held=0), waitlist_enabled=True, waiting=2, line_seq=7)
        st, body, err = cgi(self.w, "POST", "/api/plans/%s/waitlist" % PLAN_ID,
                            {"customer": {"email": "line@example.com", "name": "L"}, "quantity": 2},
                            {"Idempotency-Key": str(uuid.uuid4())})
        self.assertEqual(st, 201, (body, err))
        self.assertEqual((body["status"], body["position"]), ("waiting", 2))
        take = [d for d in self.w.commands("findAndModify", "plans") if "$or" in d["query"]][0]
        q = json.loads(json.dumps(take["query"], default=str))
        self.assertEqual(q, {"_id": str(PLAN_ID), "status": "active", "waitlist_enabled": True,
                             "max_per_order": {"$gte": 2},
                             "$or": [{"subscriptions_left": {"$lt": 2}}, {"waiting": {"$gt": 0}}]})
        self.assertEqual(dict(take["update"]["$inc"]), {"waiting": 1, "line_seq": 1})
        txn = txn_of(take)
        in_join = [(n, c) for n, c, d in self.w.log if "txnNumber" in d and txn_of(d) == txn]
        self.assertEqual(in_join, [("findAndModify", "customers"), ("findAndModify", "plans"), ("find", "waitlist"),
                                   ("insert", "waitlist"), ("findAndModify", "counters"), ("insert", "audit_events"),
                                   ("commitTransaction", None)])
        entry = self.w.commands("insert", "waitlist")[0]["documents"][0]
        self.assertEqual((entry["status"], entry["quantity"], entry["seq"]), ("waiting", 2, 7))
        # the offer's client secret is kept sealed, its hash for the session
        secret = unseal(entry["offer_secret"])
        self.assertTrue(secret.startswith("cst_" + str(entry["session_id"])))
        self.assertEqual(entry["secret_hash"], hashlib.sha256(secret.encode()).hexdigest())

    def test_cancel_offers_the_freed_seats_in_its_transaction(self):
        entry = {"_id": ObjectId(), "plan_id": PLAN_ID, "customer_id": ObjectId(), "quantity": 1, "status": "waiting",
                 "token_hash": "t", "session_id": ObjectId(), "offer_key": str(uuid.uuid4()),
                 "offer_secret": "cst_x", "secret_hash": "h" * 64, "offer_ttl_ms": 60000, "seq": 1}
        self.w.docs["waitlist"] = [entry]
        calls = []

        def plans(req):
            # the cancel's seat back (one waits), the offer's take, then nothing fits
            calls.append(req.doc)
            value = [dict(plan_doc(left=1, held=0), waiting=1), dict(plan_doc(left=0, held=1), waiting=0), None][
                min(len(calls) - 1, 2)]
            req.reply({"ok": 1, "value": value, "lastErrorObject": {"n": 1 if value else 0}})
            return True
        self.w.override("findAndModify", "plans", plans, once=False)
        sid = self.w.fam["subscriptions"]["_id"]
        # the cancel reads the subscription first, and moves it only from what it read
        self.w.docs["subscriptions"] = [dict(self.w.fam["subscriptions"], end_at=datetime.datetime(2030, 1, 1))]
        st, body, err = cgi(self.w, "POST", "/api/subscriptions/%s/cancel" % sid, {},
                            {"Authorization": "Bearer " + ADMIN})
        self.assertEqual(st, 200, (body, err))
        cancel = self.w.commands("findAndModify", "subscriptions")[0]
        q = dict(cancel["query"])
        self.assertEqual((q["status"], q["end_at"], dict(q["next_attempt_at"]), dict(q["cancel_at_period_end"])),
                         ("active", datetime.datetime(2030, 1, 1), {"$in": [datetime.datetime(1970, 1, 1), None]},
                          {"$ne": True}))
        life = cancel["update"]["$set"]
        self.assertEqual((life["status"], life["cancellation_reason"], life["next_attempt_at"]),
                         ("cancelled", "requested", datetime.datetime(1970, 1, 1)))
        txn = txn_of(cancel)
        in_txn = [(n, c) for n, c, d in self.w.log if "txnNumber" in d and txn_of(d) == txn]
        # the cancellation's mail is a document of the outbox written with its event, in the transaction
        self.assertEqual(in_txn[:9], [("findAndModify", "subscriptions"), ("findAndModify", "plans"),
                                      ("findAndModify", "counters"), ("insert", "audit_events"), ("insert", "mail"),
                                      ("insert", "audit_events"), ("find", "waitlist"), ("findAndModify", "plans"),
                                      ("insert", "subscriptions")])
        ev = [d for d in self.w.commands("insert", "audit_events") if txn_of(d) == txn][0]["documents"][0]
        mail = [d for d in self.w.commands("insert", "mail") if txn_of(d) == txn][0]["documents"][0]
        self.assertEqual((ev["action"], mail["kind"], mail["event_id"], mail["status"], mail["attempts"]),
                         ("subscription.cancelled", "ended", ev["_id"], "queued", 0))
        self.assertEqual(json.loads(mail["data"])["subscriptionId"], str(sid))
        self.assertEqual(in_txn[-1], ("commitTransaction", None))
        take = json.loads(json.dumps(calls[1]["query"], default=str))
        self.assertEqual(take, {"_id": str(PLAN_ID), "subscriptions_left": {"$gte": 1}})
        self.assertEqual(dict(calls[1]["update"]["$inc"]),
                         {"subscriptions_left": -1, "subscriptions_held": 1, "waiting": -1})
        head = [d for d in self.w.commands("find", "waitlist") if txn_of(d) == txn][0]
        self.assertEqual((dict(head["sort"]), head["filter"]["status"]), ({"seq": 1}, "waiting"))
        offer = self.w.commands("insert", "subscriptions")[0]["documents"][0]
        self.assertEqual((offer["_id"], offer["entry_id"], offer["secret_hash"], offer["status"], offer["idem_key"]),
                         (entry["session_id"], entry["_id"], entry["secret_hash"], "pending", entry["offer_key"]))
        marked = [d for d in self.w.commands("update", "waitlist") if txn_of(d) == txn][0]["updates"][0]
        self.assertEqual((marked["q"], marked["u"]["$set"]["status"]), ({"_id": entry["_id"]}, "offered"))
        actions = [d["documents"][0]["action"] for d in self.w.commands("insert", "audit_events") if txn_of(d) == txn]
        self.assertEqual(actions, ["subscription.cancelled", "seat.released", "waitlist.offered", "seat.held",
                                   "checkout.created"])

    def renew(self):
        env = {"PATH": os.environ["PATH"], "NUMATIX_DB": self.w.uri(), "NUMATIX_ADMIN_TOKEN": ADMIN,
               "NUMATIX_SIM_DB": SIM_DB}
        r = subprocess.run([BIN, "renew"], env=env, capture_output=True, timeout=60, text=True)
        assert "Sanitizer" not in r.stderr, r.stderr[-3000:]
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r.stdout

    def test_the_renewer_finds_what_is_due_by_its_two_indexes(self):
        out = self.renew()
        self.assertIn("renew: 0 renewed", out)
        # (the reminders' read is the one with an $expr: test_reminders_are_found_by_the_period_index)
        finds = [d for d in self.w.commands("find", "subscriptions") if "$expr" not in d["filter"]]
        got = sorted((d["filter"]["status"], json.dumps(d["filter"], default=str, sort_keys=True), dict(d["sort"]),
                      d["limit"]) for d in finds)
        self.assertEqual([(g[0], dict(g[2]), g[3]) for g in got],
                         [("active", {"end_at": 1}, 200), ("past_due", {"next_attempt_at": 1}, 200)])
        self.assertIn('"end_at": {"$lte"', got[0][1])
        self.assertIn('"next_attempt_at": {"$lte"', got[1][1])
        # the indexes they read by
        made = [i for d in self.w.commands("createIndexes", "subscriptions") for i in d["indexes"]]
        self.assertIn({"status": 1, "end_at": 1}, [dict(i["key"]) for i in made])
        self.assertIn({"status": 1, "next_attempt_at": 1}, [dict(i["key"]) for i in made])

    def test_reminders_are_found_by_the_period_index_and_marked_once_in_a_transaction(self):
        sid, cid = ObjectId(), ObjectId()
        end = datetime.datetime.utcnow() + datetime.timedelta(days=3)
        start = end - datetime.timedelta(days=30)
        self.w.docs["subscriptions"] = [{"_id": sid, "plan_id": PLAN_ID, "customer_id": cid, "status": "active",
                                         "quantity": 1, "idem_key": "k", "start_at": start, "end_at": end,
                                         "period_start": start, "term_unit": "day", "term_count": 30,
                                         "term_zone": "UTC", "anchor_at": start}]
        self.w.fam["subscriptions"] = {"_id": sid, "plan_id": PLAN_ID}
        out = self.renew()
        self.assertIn("1 reminded", out)
        [find] = [d for d in self.w.commands("find", "subscriptions") if "$expr" in d["filter"]]
        f = json.loads(json.dumps(find["filter"], default=str))
        self.assertEqual((f["status"], list(f["end_at"]), f["$expr"]),
                         ("active", ["$lte"], {"$ne": ["$reminded_end_at", "$end_at"]}))
        self.assertEqual(dict(find["sort"]), {"end_at": 1})
        [mark] = [d for d in self.w.commands("findAndModify", "subscriptions") if "reminded_end_at" in d["query"]]
        q = mark["query"]
        self.assertEqual((q["_id"], q["status"], dict(q["reminded_end_at"])), (sid, "active", {"$ne": q["end_at"]}))
        self.assertEqual(mark["update"]["$set"]["reminded_end_at"], q["end_at"])
        txn = txn_of(mark)
        in_txn = [(n, c) for n, c, d in self.w.log if "txnNumber" in d and txn_of(d) == txn]
        self.assertEqual(in_txn, [("findAndModify", "subscriptions"), ("findAndModify", "counters"),
                                  ("insert", "audit_events"), ("insert", "mail"), ("commitTransaction", None)])
        mail = self.w.commands("insert", "mail")[0]["documents"][0]
        self.assertEqual((mail["kind"], json.loads(mail["data"])["subscriptionId"]), ("reminder", str(sid)))

    def test_the_mail_sender_finds_due_mail_by_its_index_and_marks_it_from_what_it_read(self):
        box = Mailbox().start()
        try:
            mid, cid = ObjectId(), ObjectId()
            now = datetime.datetime.utcnow()
            self.w.docs["mail"] = [{"_id": mid, "kind": "ended", "customer_id": cid, "event_id": ObjectId(),
                                    "data": json.dumps({"subscriptionId": "a" * 24, "planName": "Wire", "quantity": 1,
                                                        "status": "ended", "endedAt": 0}),
                                    "status": "queued", "attempts": 0, "next_attempt_at": now, "last_error": "",
                                    "created_at": now, "updated_at": now}]
            self.w.docs["customers"] = [{"_id": cid, "email": "wire@example.com", "email_key": "wire@example.com",
                                         "name": "Wire Buyer", "created_at": now}]
            env = {"PATH": os.environ["PATH"], "NUMATIX_DB": self.w.uri(), "NUMATIX_ADMIN_TOKEN": ADMIN,
                   "NUMATIX_SIM_DB": SIM_DB, "NUMATIX_SMTP_URL": box.url}
            r = subprocess.run([BIN, "mail"], env=env, capture_output=True, timeout=60, text=True)
            assert "Sanitizer" not in r.stderr, r.stderr[-3000:]
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("mail: 1 sent", r.stdout)
            [due] = self.w.commands("find", "mail")
            f = json.loads(json.dumps(due["filter"], default=str))
            self.assertEqual((f["status"], list(f["next_attempt_at"])), ("queued", ["$lte"]))
            self.assertEqual(dict(due["sort"]), {"next_attempt_at": 1, "_id": 1})
            [mark] = self.w.commands("update", "mail")
            u = mark["updates"][0]
            self.assertEqual(dict(u["q"]), {"_id": mid, "status": "queued", "attempts": 0})
            self.assertEqual((u["u"]["$set"]["status"], u["u"]["$set"]["attempts"]), ("sent", 1))
            self.assertIn("txnNumber", mark)
            [(rcpt, m, _)] = box.messages()
            self.assertEqual((rcpt, m["message-id"]), (["wire@example.com"], "<mail.%s@localhost>" % mid))
        finally:
            box.stop()

    def test_an_end_is_one_transaction_from_the_life_it_read(self):
        end = datetime.datetime(2020, 1, 1)
        due = dict(self.w.fam["subscriptions"], end_at=end, quantity=1, term_unit="day", term_count=30,
                   term_zone="UTC", period_index=0, anchor_at=datetime.datetime(2019, 12, 2))

        def subs(req):
            # the period's end found due, nothing past due
            f = req.doc["filter"]
            docs = [due] if f.get("status") == "active" or "_id" in f else []
            req.reply({"ok": 1, "cursor": {"id": 0, "ns": "numatix.subscriptions", "firstBatch": docs}})
            return True
        self.w.override("find", "subscriptions", subs, once=False)
        self.w.fam["plans"] = dict(plan_doc(left=8, held=1), waiting=0)   # renewal "none" (absent)
        out = self.renew()
        self.assertIn("1 ended", out)
        move = self.w.commands("findAndModify", "subscriptions")[0]
        q = dict(move["query"])
        self.assertEqual((q["status"], q["end_at"], dict(q["cancel_at_period_end"])), ("active", end, {"$ne": True}))
        life = move["update"]["$set"]
        self.assertEqual((life["status"], life["ended_at"], life["cancellation_reason"]), ("ended", end, ""))
        txn = txn_of(move)
        in_txn = [(n, c) for n, c, d in self.w.log if "txnNumber" in d and txn_of(d) == txn]
        self.assertEqual(in_txn[:2], [("findAndModify", "subscriptions"), ("findAndModify", "plans")])
        self.assertEqual(in_txn[-1], ("commitTransaction", None))
        seats = [d for d in self.w.commands("findAndModify", "plans") if txn_of(d) == txn][0]
        self.assertEqual(dict(seats["update"]["$inc"]), {"subscriptions_left": 1, "subscriptions_held": 0})
        actions = [d["documents"][0]["action"] for d in self.w.commands("insert", "audit_events") if txn_of(d) == txn]
        self.assertEqual(actions, ["subscription.ended", "seat.released"])

    def test_a_renewal_is_on_record_before_its_charge_and_settled_in_one_transaction(self):
        end = datetime.datetime(2020, 1, 1)
        due = dict(self.w.fam["subscriptions"], end_at=end, quantity=1, term_unit="day", term_count=30,
                   term_zone="UTC", period_index=0, anchor_at=datetime.datetime(2019, 12, 2),
                   payment_method="pm_card_visa", amount_cents=1500, customer_id=ObjectId())

        def subs(req):
            f = req.doc["filter"]
            docs = [due] if f.get("status") == "active" or "_id" in f else []
            req.reply({"ok": 1, "cursor": {"id": 0, "ns": "numatix.subscriptions", "firstBatch": docs}})
            return True
        self.w.override("find", "subscriptions", subs, once=False)
        self.w.docs["plans"] = [dict(plan_doc(), renewal="auto")]
        self.w.fam["plans"] = dict(plan_doc(), renewal="auto", waiting=0)
        self.w.fam["payments"] = {"_id": "att_x", "subscription_id": due["_id"], "status": "closed"}
        out = self.renew()
        self.assertIn("1 renewed", out)
        key = "%s.1.0." % due["_id"]
        inserts = [d["documents"][0] for d in self.w.commands("insert", "payments")]
        self.assertEqual([(p["kind"], p["status"]) for p in inserts], [("attempt", "open"), ("renewal", "succeeded")])
        self.assertTrue(all(p["idem_key"].startswith(key) for p in inserts), inserts)
        self.assertEqual(inserts[1]["amount_cents"], 1500)
        # the settle: the subscription moved only from the period, next try, schedule and card it
        # had, with the renewal's record and its events, in one transaction
        move = self.w.commands("findAndModify", "subscriptions")[0]
        q = dict(move["query"])
        self.assertEqual((q["status"], q["end_at"], q["payment_method"]), ("active", end, "pm_card_visa"))
        life = move["update"]["$set"]
        self.assertEqual((life["status"], life["period_index"], life["period_start"], life["period_payment"]),
                         ("active", 1, end, inserts[1]["_id"]))
        self.assertEqual(life["end_at"], end + datetime.timedelta(days=30))
        txn = txn_of(move)
        renewal_insert = [d for d in self.w.commands("insert", "payments") if d["documents"][0]["kind"] == "renewal"][0]
        self.assertEqual(txn_of(renewal_insert), txn)
        actions = [d["documents"][0]["action"] for d in self.w.commands("insert", "audit_events") if txn_of(d) == txn]
        self.assertEqual(actions, ["payment.succeeded", "subscription.renewed"])
        # then the attempt closed
        close = [d for d in self.w.commands("findAndModify", "payments")][-1]
        self.assertEqual((dict(close["query"])["status"], close["update"]["$set"]["status"]), ("open", "closed"))
        self.assertTrue(dict(close["query"])["_id"].startswith("att_"))

    def login(self, email="Wire@Example.com"):
        st, body, err = cgi(self.w, "POST", "/api/customer/login", {"email": email})
        self.assertEqual((st, body), (202, {"status": "sent"}), err)

    def test_a_login_link_is_one_transaction_that_counts_then_keeps_it_hashed_and_mails_it_sealed(self):
        cid = ObjectId()
        self.w.docs["customers"] = [{"_id": cid, "email": "wire@example.com", "email_key": "wire@example.com",
                                     "name": "Wire"}]
        self.w.docs["login_links"] = [{"_id": 1, "n": 2}]     # the count's answer: two in the window
        self.login()
        [limit] = self.w.commands("update", "login_limits")
        txn = txn_of(limit)
        u = limit["updates"][0]
        self.assertEqual((u["q"], u["upsert"]), ({"_id": "wire@example.com"}, True))
        in_txn = [(n, c) for n, c, d in self.w.log if "txnNumber" in d and txn_of(d) == txn]
        self.assertEqual(in_txn, [("update", "login_limits"), ("delete", "login_links"), ("aggregate", "login_links"),
                                  ("find", "customers"), ("insert", "login_links"), ("findAndModify", "counters"),
                                  ("insert", "audit_events"), ("insert", "mail"), ("commitTransaction", None)])
        [forget] = self.w.commands("delete", "login_links")
        self.assertEqual(list(forget["deletes"][0]["q"]["created_at"]), ["$lte"])
        [count] = self.w.commands("aggregate", "login_links")
        match = count["pipeline"][0]["$match"]
        self.assertEqual((match["email"], list(match["created_at"])), ("wire@example.com", ["$gt"]))
        [who] = self.w.commands("find", "customers")
        self.assertEqual(dict(who["filter"]), {"email_key": "wire@example.com"})
        link = self.w.commands("insert", "login_links")[0]["documents"][0]
        self.assertEqual((link["email"], link["customer_id"], link["used_at"]), ("wire@example.com", cid, None))
        self.assertEqual(link["expires_at"] - link["created_at"], datetime.timedelta(minutes=15))
        ev = self.w.commands("insert", "audit_events")[0]["documents"][0]
        self.assertEqual((ev["action"], ev["resource_type"], ev["resource_id"]),
                         ("customer.login_requested", "customer", str(cid)))
        mail = self.w.commands("insert", "mail")[0]["documents"][0]
        self.assertEqual((mail["kind"], mail["customer_id"], mail["event_id"]), ("login", cid, ev["_id"]))
        self.assertNotIn("lnk_", mail["data"])
        # the token: sealed on the mail, its hash alone on the link
        token = unseal(mail["secret"])
        self.assertTrue(token.startswith("lnk_%s_" % link["_id"]), token[:30])
        self.assertEqual(hashlib.sha256(token.encode()).hexdigest(), link["token_hash"])
        self.assertNotIn(token, json.dumps([d for _, _, d in self.w.log], default=str))

    def test_a_login_past_the_limit_or_for_a_stranger_writes_no_mail(self):
        self.w.docs["login_links"] = [{"_id": 1, "n": 3}]
        self.login()
        self.assertEqual(self.w.commands("insert", "login_links"), [])
        self.assertEqual(self.w.commands("insert", "mail"), [])
        self.w.docs["login_links"] = []
        self.w.docs["customers"] = []
        self.login("stranger@example.com")
        [link] = [d["documents"][0] for d in self.w.commands("insert", "login_links")]
        self.assertEqual((link["email"], link["customer_id"]), ("stranger@example.com", None))
        self.assertEqual((self.w.commands("insert", "mail"), self.w.commands("insert", "audit_events")), ([], []))

    def test_a_link_is_used_and_its_session_made_in_one_transaction(self):
        cid, lid = ObjectId(), ObjectId()
        token = "lnk_%s_%s" % (lid, "A" * 43)
        self.w.fam["login_links"] = {"_id": lid, "customer_id": cid}
        st, body, err = cgi(self.w, "POST", "/api/customer/sessions", {"loginToken": token})
        self.assertEqual(st, 201, (body, err))
        [use] = self.w.commands("findAndModify", "login_links")
        q = use["query"]
        self.assertEqual((q["_id"], q["token_hash"], q["used_at"], list(q["expires_at"]), dict(q["customer_id"])),
                         (lid, hashlib.sha256(token.encode()).hexdigest(), None, ["$gt"], {"$type": "objectId"}))
        self.assertEqual(list(use["update"]["$set"]), ["used_at"])
        sess = self.w.commands("insert", "customer_sessions")[0]
        self.assertEqual(txn_of(sess), txn_of(use))
        doc = sess["documents"][0]
        self.assertEqual((doc["customer_id"], doc["token_hash"], doc["ended_at"]),
                         (cid, hashlib.sha256(body["sessionToken"].encode()).hexdigest(), None))
        self.assertEqual(doc["expires_at"] - doc["created_at"], datetime.timedelta(hours=24))
        self.assertEqual(body["customerId"], str(cid))
        # a link the update finds no longer: 401, no session
        self.w.fam["login_links"] = None
        st, body, _ = cgi(self.w, "POST", "/api/customer/sessions", {"loginToken": token})
        self.assertEqual((st, body["code"]), (401, "UNAUTHORIZED"))
        self.assertEqual(len(self.w.commands("insert", "customer_sessions")), 1)

    def test_a_session_token_is_read_by_its_id_and_judged_by_its_hash(self):
        cid, sid = ObjectId(), ObjectId()
        token = "cse_%s_%s" % (sid, "B" * 43)
        later = datetime.datetime.utcnow() + datetime.timedelta(hours=1)
        self.w.docs["customer_sessions"] = [{"_id": sid, "customer_id": cid, "ended_at": None, "expires_at": later,
                                             "token_hash": hashlib.sha256(token.encode()).hexdigest()}]
        self.w.docs["customers"] = [{"_id": cid, "email": "wire@example.com", "name": "Wire"}]
        st, body, err = cgi(self.w, "GET", "/api/customer", headers={"Authorization": "Bearer " + token})
        self.assertEqual((st, body.get("id")), (200, str(cid)), (body, err))
        self.assertEqual(dict(self.w.commands("find", "customer_sessions")[0]["filter"]), {"_id": sid})
        # another secret of the same id is no one's
        st, body, _ = cgi(self.w, "GET", "/api/customer", headers={"Authorization": "Bearer " + token[:-1] + "C"})
        self.assertEqual(st, 401)
        # ended: DELETE marks it, only if it was not ended
        st, _, _ = cgi(self.w, "DELETE", "/api/customer/sessions/current", headers={"Authorization": "Bearer " + token})
        self.assertEqual(st, 204)
        [end] = self.w.commands("update", "customer_sessions")
        self.assertEqual((dict(end["updates"][0]["q"]), list(end["updates"][0]["u"]["$set"])),
                         ({"_id": sid, "ended_at": None}, ["ended_at"]))

    def signed_in_as(self, cid):
        sid = ObjectId()
        token = "cse_%s_%s" % (sid, "D" * 43)
        self.w.docs["customer_sessions"] = [{"_id": sid, "customer_id": cid, "ended_at": None,
                                             "expires_at": datetime.datetime.utcnow() + datetime.timedelta(hours=1),
                                             "token_hash": hashlib.sha256(token.encode()).hexdigest()}]
        return {"Authorization": "Bearer " + token}

    def test_a_customers_receipts_are_read_by_their_subscriptions(self):
        cid, kept, held = ObjectId(), ObjectId(), ObjectId()
        h = self.signed_in_as(cid)
        self.w.docs["subscriptions"] = [{"_id": kept, "status": "active"}, {"_id": held, "status": "pending"}]
        self.w.docs["payments"] = [{"_id": "pay_" + "a" * 24, "idem_key": "k", "kind": "charge", "status": "authorized",
                                    "subscription_id": kept, "amount_cents": 900,
                                    "created_at": datetime.datetime(2026, 1, 2)}]
        st, body, err = cgi(self.w, "GET", "/api/customer/payments?limit=7", headers=h)
        self.assertEqual(st, 200, (body, err))
        self.assertEqual([(p["kind"], p["status"], p["amountCents"], p["subscriptionId"]) for p in body["payments"]],
                         [("charge", "authorized", 900, str(kept))])
        [subs] = self.w.commands("find", "subscriptions")
        self.assertEqual((dict(subs["filter"]), dict(subs["projection"])), ({"customer_id": cid}, {"_id": 1, "status": 1}))
        [pays] = self.w.commands("find", "payments")
        f = pays["filter"]
        self.assertEqual(list(f["kind"]["$in"]), ["charge", "renewal", "refund"])
        self.assertEqual([(list(o["subscription_id"]["$in"]), o["status"]) for o in f["$or"]],
                         [([kept, held], {"$in": ["succeeded", "refunded"]}), ([kept], "authorized")])
        self.assertEqual((dict(pays["sort"]), pays["limit"]), ({"created_at": -1, "_id": -1}, 7))

    def test_a_customers_entries_are_read_by_their_index(self):
        cid = ObjectId()
        h = self.signed_in_as(cid)
        self.w.docs["waitlist"] = []
        st, body, err = cgi(self.w, "GET", "/api/customer/waitlist", headers=h)
        self.assertEqual((st, body), (200, {"entries": []}), err)
        [line] = self.w.commands("find", "waitlist")
        self.assertEqual((dict(line["filter"]), dict(line["sort"]), line["limit"]),
                         ({"customer_id": cid}, {"created_at": -1, "_id": -1}, 50))
        made = [i for d in self.w.commands("createIndexes", "waitlist") for i in d["indexes"]]
        self.assertIn({"customer_id": 1, "created_at": -1}, [dict(i["key"]) for i in made])

    def test_quantity_and_customer_limit(self):
        self.w.fam["plans"] = dict(plan_doc(left=6, held=1), max_per_order=10, max_per_customer=4)
        self.w.override("aggregate", "subscriptions",
                        {"ok": 1, "cursor": {"id": 0, "ns": "numatix.subscriptions", "firstBatch": [{"_id": None, "n": 2}]}})
        st, body, err = cgi(self.w, "POST", "/api/subscriptions/purchase",
                            {"planId": str(PLAN_ID), "paymentMethodId": "pm_card_visa", "quantity": 3,
                             "customer": {"email": "wire@example.com", "name": "Wire"}},
                            {"Idempotency-Key": str(uuid.uuid4())})
        self.assertEqual((st, body["code"], body["details"]), (409, "CUSTOMER_LIMIT_REACHED", {"limit": 4, "held": 2}),
                         err)
        hold = self.w.commands("findAndModify", "plans")[0]
        self.assertEqual(dict(hold["query"])["subscriptions_left"], {"$gte": 3})
        self.assertEqual(dict(hold["update"]["$inc"]), {"subscriptions_left": -3, "subscriptions_held": 3})
        # the customer's seats are summed in the hold's own transaction, after the plan's write
        agg = self.w.commands("aggregate", "subscriptions")[0]
        self.assertEqual(txn_of(agg), txn_of(hold))
        match = agg["pipeline"][0]["$match"]
        self.assertEqual((match["plan_id"], dict(match["status"])), (PLAN_ID, {"$in": ["pending", "active", "past_due"]}))
        self.assertEqual(agg["pipeline"][1]["$group"]["n"], {"$sum": "$quantity"})
        # refused: aborted, nothing committed
        self.assertEqual(self.w.commands("commitTransaction"), [])
        self.assertEqual(len(self.w.commands("abortTransaction")), 1)

    def test_documents_from_before_limits_get_defaults(self):
        cgi(self.w, "GET", "/api/health")
        fill = [d for d in self.w.commands("update", "plans") if d["updates"][0]["q"].get("max_per_order")][0]
        u = fill["updates"][0]
        self.assertEqual((dict(u["q"]["max_per_order"]), u["multi"]), ({"$exists": False}, True))
        self.assertEqual(dict(u["u"]["$set"]), {"max_per_order": 10, "max_per_customer": 0})

    def test_events_from_before_the_feed_get_positions(self):
        # no counter yet: the events already written (2, by the count) take 1 and 2 in the order
        # they were written, and the counter starts after them
        self.w.docs["counters"] = []
        old = [{"_id": ObjectId(), "at": datetime.datetime(2026, 1, 1), "action": "plan.created"},
               {"_id": ObjectId(), "at": datetime.datetime(2026, 1, 2), "action": "seat.held"}]
        self.w.docs["audit_events"] = old
        self.w.override("aggregate", "audit_events", {"ok": 1, "cursor": {"id": 0, "ns": "numatix.audit_events",
                                                                         "firstBatch": [{"n": 2}]}})
        self.w.override("update", "counters", {"ok": 1, "n": 1, "nModified": 0,
                                               "upserted": [{"index": 0, "_id": "events"}]})
        cgi(self.w, "GET", "/api/health")
        count = self.w.commands("aggregate", "audit_events")[0]
        self.assertEqual(dict(count["pipeline"][0]["$match"]), {"seq": {"$exists": False}})
        start = self.w.commands("update", "counters")[0]["updates"][0]
        self.assertEqual((start["q"], dict(start["u"]), start["upsert"]),
                         ({"_id": "events"}, {"$setOnInsert": {"seq": 2}}, True))
        listing = [d for d in self.w.commands("find", "audit_events") if d.get("sort")][0]
        self.assertEqual(dict(listing["sort"]), {"at": 1, "_id": 1})
        placed = [d["updates"][0] for d in self.w.commands("update", "audit_events")]
        self.assertEqual([(u["q"]["_id"], u["u"]["$set"]["seq"]) for u in placed],
                         [(old[0]["_id"], 1), (old[1]["_id"], 2)])

    def test_feed_reads_by_position(self):
        ev = {"_id": ObjectId(), "seq": 8, "at": datetime.datetime(2026, 1, 1), "action": "seat.held",
              "actor_type": "customer", "resource_type": "subscription", "resource_id": "x", "plan_id": str(PLAN_ID),
              "before": {"total_capacity": 10, "subscriptions_left": 10, "subscriptions_held": 0},
              "after": {"total_capacity": 10, "subscriptions_left": 9, "subscriptions_held": 1}, "trace_id": "t"}
        self.w.docs["audit_events"] = [ev]
        st, body, err = cgi(self.w, "GET", "/api/events?after=7&limit=5&type=seat.held",
                            headers={"Authorization": "Bearer " + ADMIN})
        self.assertEqual(st, 200, (body, err))
        self.assertEqual(([e["seq"] for e in body["events"]], body["nextAfter"]), ([8], 8))
        self.assertEqual(body["events"][0]["data"]["after"]["subscriptions_left"], 9)
        q = [d for d in self.w.commands("find", "audit_events") if "seq" in d.get("filter", {})][0]
        self.assertEqual((dict(q["filter"]["seq"]), q["filter"]["action"], dict(q["sort"]), q["limit"]),
                         ({"$gt": 7}, "seat.held", {"seq": 1}, 5))

    def test_capacity_change_is_conditional(self):
        st, body, err = cgi(self.w, "PATCH", "/api/plans/%s" % PLAN_ID, {"total_capacity": 12},
                            {"Authorization": "Bearer " + ADMIN})
        self.assertEqual((st, body["total_capacity"], body["subscriptions_left"]), (200, 12, 11), (body, err))
        upd = [d for d in self.w.commands("update", "plans") if "_id" in d["updates"][0]["q"]][0]
        q = upd["updates"][0]["q"]
        self.assertEqual((q["_id"], q["subscriptions_left"], q["subscriptions_held"]), (PLAN_ID, 9, 1))
        self.assertEqual(upd["updates"][0]["u"]["$set"]["subscriptions_left"], 11)
        # read and conditional write in one transaction
        self.assertEqual(upd["autocommit"], False)
        find = [d for d in self.w.commands("find", "plans") if d.get("startTransaction")][0]
        self.assertEqual(txn_of(find), txn_of(upd))


class MongoStandalone(unittest.TestCase):
    def test_standalone_is_refused(self):
        hello = dict(HELLO)
        del hello["setName"]
        w = Wire(hello)
        try:
            st, body, err = cgi(w, "GET", "/api/health")
            self.assertEqual((st, body["status"]), (503, "unavailable"))
            self.assertIn("--replSet", err)
            st, body, _ = purchase(w)
            self.assertEqual((st, body["code"]), (503, "SERVICE_UNAVAILABLE"))
            self.assertEqual(w.commands("insert"), [])
            self.assertEqual(w.commands("findAndModify"), [])
        finally:
            w.close()

    def test_unreachable_is_503(self):
        w = Wire()
        w.close()
        st, body, _ = cgi(w, "GET", "/api/health")
        self.assertEqual(st, 503)
        st, body, _ = purchase(w)
        self.assertEqual((st, body["code"]), (503, "SERVICE_UNAVAILABLE"))


if __name__ == "__main__":
    unittest.main()
