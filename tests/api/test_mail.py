"""The mail a customer gets, through a real SMTP server on loopback (aiosmtpd): every kind written
with its change and sent once, MIME as readers expect, no secret in any byte; a server that
defers, refuses, or is down, against the retry schedule (the server's clock moved by
libfaketime, never a sleep)."""
import calendar
import os
import re
import signal
import threading
import time
import unittest
import uuid

from smtp_sink import Mailbox
from stack import Clock, Stack, until

PUBLIC = "https://seats.example.com"


class Mail(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.box = Mailbox().start()
        cls.clock = Clock()
        cls.S = Stack(NUMATIX_SMTP_URL=cls.box.url, NUMATIX_PUBLIC_URL=PUBLIC + "/",
                      NUMATIX_MAIL_FROM="Numatix Seats <seats@example.com>", NUMATIX_RENEW_INTERVAL=3600,
                      **cls.clock.env()).start()
        cls.secrets = []

    @classmethod
    def tearDownClass(cls):
        cls.S.cleanup()
        cls.box.stop()
        cls.clock.cleanup()

    def address(self):
        return "m-%s@example.com" % uuid.uuid4().hex[:12]

    def buy(self, plan, email, method="pm_card_visa", name="Test Buyer", trace=None):
        h = {"Idempotency-Key": str(uuid.uuid4())}
        if trace:
            h["X-Trace-Id"] = trace
        r = self.S.request("POST", "/api/subscriptions/purchase",
                           {"planId": plan["id"], "paymentMethodId": method, "customer": {"email": email, "name": name}}, h)
        self.assertEqual(r.status, 201, r)
        self.secrets.append(r.json["accessToken"])
        return r.json

    def rows(self, customer_id, kind=None):
        out, cursor = [], ""
        while True:
            r = self.S.admin("GET", "/api/mail?limit=200" + ("&cursor=" + cursor if cursor else ""))
            self.assertEqual(r.status, 200, r)
            out += [m for m in r.json["mail"] if m["customerId"] == customer_id and (not kind or m["kind"] == kind)]
            cursor = r.json["nextCursor"]
            if not cursor:
                return out

    def row_when(self, customer_id, kind, cond, what):
        return until(lambda: next((m for m in self.rows(customer_id, kind) if cond(m)), None), what=what)

    def assertNoSecret(self):
        """No token a test was given, nor its random part, in any message: raw, or its parts
        decoded (quoted-printable may fold a token across lines)."""
        for _, m, raw in self.box.messages():
            seen = [raw.decode("utf-8", "replace")] + [p.get_content() for p in m.walk()
                                                       if p.get_content_maintype() == "text"]
            for s in self.secrets:
                for text in seen:
                    self.assertNotIn(s, text)
                    # its random part: the last 43 characters (base64url, which may hold "_" itself)
                    self.assertNotIn(s[-43:], text, "a token's secret part")

    def test_a_purchase_gets_one_receipt_as_readers_expect(self):
        p = self.S.create_plan(capacity=5, price=1250, name="Receipts %s" % uuid.uuid4().hex[:6])
        to = self.address()
        sent = 'numatix_mails_total{kind="receipt",outcome="sent"}'
        before = self.S.metric(sent)
        s = self.buy(p, to, name="Zoë Ünal")
        row = self.row_when(s["customerId"], "receipt", lambda m: m["status"] == "sent", "the receipt sent")
        # counted by its kind (the counter is the mailer's, added after its pass)
        until(lambda: self.S.metric(sent) > before, what="the receipt counted")
        self.assertEqual(row["attempts"], 1, row)
        [m] = self.box.to(to)
        self.assertEqual(m["message-id"], "<mail.%s@seats.example.com>" % row["id"])
        self.assertEqual(m["to"].addresses[0].display_name, "Zoë Ünal")
        self.assertEqual(m["to"].addresses[0].addr_spec, to)
        self.assertEqual(m["from"].addresses[0].addr_spec, "seats@example.com")
        self.assertIn(p["name"], m["subject"])
        self.assertIsNotNone(m["date"])
        text, html = m.get_body(("plain",)), m.get_body(("html",))
        self.assertEqual(text.get_content_charset(), "utf-8")
        self.assertEqual(html.get_content_type(), "text/html")
        link = PUBLIC + "/account.html#subscription=" + s["id"]
        self.assertIn(link, text.get_content())
        self.assertIn('href="%s"' % link, html.get_content())
        self.assertIn("12.50 USD", text.get_content())
        self.assertIn("Zoë Ünal", text.get_content())
        self.assertNoSecret()
        ok, out = self.S.check()
        self.assertTrue(ok, out)

    def test_a_name_that_looks_like_an_address_stays_one_name(self):
        """A buyer's name is text, never header syntax: one with an encoded word's shape, an
        address and a comma gives a To of exactly the buyer, its name as given."""
        p = self.S.create_plan(capacity=5, price=300)
        to = self.address()
        name = "=?x?= <attacker@evil.example>, Support"
        s = self.buy(p, to, name=name)
        self.row_when(s["customerId"], "receipt", lambda m: m["status"] == "sent", "the receipt sent")
        [m] = self.box.to(to)
        self.assertEqual([a.addr_spec for a in m["to"].addresses], [to], m["to"])
        self.assertEqual(m["to"].addresses[0].display_name, name)

    def test_451_twice_then_250_delivers_once_after_three_attempts(self):
        p = self.S.create_plan(capacity=5, price=700)
        to = self.address()
        self.box.answer("451 4.3.0 Try again later", "451 4.3.0 Try again later")
        s = self.buy(p, to)
        self.row_when(s["customerId"], "receipt", lambda m: m["attempts"] == 1 and m["status"] == "queued",
                      "the first attempt deferred")
        self.clock.advance(11)
        self.row_when(s["customerId"], "receipt", lambda m: m["attempts"] == 2 and m["status"] == "queued",
                      "the second attempt deferred, 10 s later")
        self.clock.advance(31)
        row = self.row_when(s["customerId"], "receipt", lambda m: m["status"] == "sent", "sent at the third")
        self.assertEqual(row["attempts"], 3, row)
        self.assertEqual(len(self.box.to(to)), 1)

    def test_550_fails_at_once_with_mail_failed_in_the_feed(self):
        p = self.S.create_plan(capacity=5, price=700)
        to = self.address()
        head = self.S.feed_head()
        self.box.answer("550 5.1.1 No such user")
        s = self.buy(p, to)
        row = self.row_when(s["customerId"], "receipt", lambda m: m["status"] == "failed", "failed")
        self.assertEqual(row["attempts"], 1, row)
        self.assertIn("550", row["lastError"] or "", row)
        failed = [e for e in self.S.events_after(head) if e["type"] == "mail.failed"]
        self.assertEqual([(e["data"]["resourceType"], e["data"]["resourceId"]) for e in failed], [("mail", row["id"])], failed)
        self.assertEqual(self.box.to(to), [])
        r = self.S.admin("GET", "/api/mail?status=failed")
        self.assertIn(row["id"], [m["id"] for m in r.json["mail"]])
        self.assertEqual(self.S.admin("GET", "/api/mail?status=nope").status, 400)

    def test_a_server_down_loses_nothing(self):
        """However long it lasts: a server that answers nothing spends none of a mail's attempts."""
        p = self.S.create_plan(capacity=5, price=700)
        to = self.address()
        self.box.stop()
        try:
            s = self.buy(p, to)
            row = self.row_when(s["customerId"], "receipt", lambda m: m["lastError"], "an attempt while down")
            self.assertEqual((row["status"], row["attempts"]), ("queued", 0), row)
            # far past the last retry of the schedule (about 22 minutes), a pass after each step
            for _ in range(8):
                passes = self.S.metric("numatix_mailer_passes_total")
                self.clock.advance(16 * 60)
                until(lambda: self.S.metric("numatix_mailer_passes_total") > passes, what="a pass while down")
            row = self.rows(s["customerId"], "receipt")[0]
            self.assertEqual((row["status"], row["attempts"]), ("queued", 0), row)
            # the outbox says how late it is: the mail has waited the whole moved time
            self.assertGreaterEqual(self.S.metric("numatix_mail_outbox_overdue_seconds"), 8 * 16 * 60)
        finally:
            self.box.start()
        self.clock.advance(16 * 60)
        row = self.row_when(s["customerId"], "receipt", lambda m: m["status"] == "sent", "sent once the server is back")
        self.assertEqual(row["attempts"], 1, row)
        self.assertEqual(len(self.box.to(to)), 1)
        until(lambda: self.S.metric("numatix_mail_outbox_overdue_seconds") < 16 * 60, what="the outbox caught up")

    def test_a_refused_sender_fails_no_mail_and_ends_the_pass(self):
        """A 5xx to MAIL FROM (a refused login, a sender not allowed) is about us, not a mail: no
        mail fails, the pass ends at the first, and the server is not asked again at once."""
        p = self.S.create_plan(capacity=5, price=700)
        head = self.S.feed_head()
        one, two = self.address(), self.address()
        self.box.refuse_sender("530 5.7.0 Authentication required")
        try:
            a, b = self.buy(p, one), self.buy(p, two)
            first = until(lambda: [m for c in (a, b) for m in self.rows(c["customerId"], "receipt") if m["lastError"]],
                          what="an attempt refused")
            self.assertEqual(len(first), 1, "the pass ended at the first refusal: %r" % first)
            self.assertIn("530", first[0]["lastError"])
            self.assertEqual((first[0]["status"], first[0]["attempts"]), ("queued", 0), first)
            asked = self.box.mail_froms
            # 10 s after the refusal the server is asked again, with one mail
            self.clock.advance(11)
            until(lambda: self.box.mail_froms > asked, what="the server asked again")
        finally:
            self.box.refuse_sender(None)
        self.clock.advance(31)
        for c, to in ((a, one), (b, two)):
            row = self.row_when(c["customerId"], "receipt", lambda m: m["status"] == "sent", "sent once taken")
            self.assertEqual(row["attempts"], 1, row)
            self.assertEqual(len(self.box.to(to)), 1)
        self.assertEqual([e for e in self.S.events_after(head) if e["type"] == "mail.failed"], [])

    def test_the_sender_killed_mid_send_sends_again_with_the_same_message_id(self):
        p = self.S.create_plan(capacity=5, price=700)
        to = self.address()
        gate = self.box.hold_next(to)
        try:
            s = self.buy(p, to)
            until(lambda: self.box.held.is_set(), what="the sender waiting for the server's answer")
            killed = self.S.service_pid("numatix-mailer")
            self.assertTrue(killed)
            os.kill(killed, signal.SIGKILL)
            until(lambda: self.S.service_pid("numatix-mailer") not in (0, killed), what="another sender")
        finally:
            gate.set()
        row = self.row_when(s["customerId"], "receipt", lambda m: m["status"] == "sent", "sent by the new sender")
        self.assertEqual(row["attempts"], 1, row)
        got = self.box.to(to)
        self.assertEqual(len(got), 2, "taken before the kill, and again after")
        self.assertEqual({m["message-id"] for m in got}, {"<mail.%s@seats.example.com>" % row["id"]})

    def test_a_cancellation_is_mailed(self):
        p = self.S.create_plan(capacity=5, price=700, name="Ends %s" % uuid.uuid4().hex[:6])
        to = self.address()
        bought, cancelled = "buy-" + uuid.uuid4().hex, "cancel-" + uuid.uuid4().hex
        s = self.buy(p, to, trace=bought)
        r = self.S.request("POST", "/api/subscriptions/%s/cancel" % s["id"], {},
                           {"Authorization": "Bearer " + s["accessToken"], "X-Trace-Id": cancelled})
        self.assertEqual(r.status, 200, r)
        self.row_when(s["customerId"], "ended", lambda m: m["status"] == "sent", "the end mailed")
        [m] = self.box.to(to, subject_has="ended")
        self.assertIn("was cancelled", m.get_body(("plain",)).get_content())
        # each mail carries the trace of the request that caused it: the end the cancel's, the
        # receipt (written by the reaper's pass that recorded the capture) the purchase's, as the
        # processor kept it
        self.assertEqual(m["x-trace-id"], cancelled)
        self.row_when(s["customerId"], "receipt", lambda m: m["status"] == "sent", "the receipt mailed")
        [receipt] = self.box.to(to, subject_has="receipt")
        self.assertEqual(receipt["x-trace-id"], bought)
        self.assertNoSecret()

    def test_a_failed_renewal_is_mailed_with_its_next_attempt(self):
        p = self.S.create_plan(capacity=5, price=900, interval="week", renewal="auto",
                               name="Dunning %s" % uuid.uuid4().hex[:6])
        to = self.address()
        s = self.buy(p, to, method="pm_card_chargeCustomerFail")
        end = s["currentPeriodEnd"]
        server = time.time() + self.clock.offset_s
        end_s = time.mktime(time.strptime(end[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        self.clock.advance(max(0, end_s + 60 - server))
        self.S.renew()
        g = self.S.admin("GET", "/api/subscriptions/" + s["id"]).json
        self.assertEqual(g["status"], "past_due", g)
        self.row_when(s["customerId"], "payment_failed", lambda m: m["status"] == "sent", "the failure mailed")
        [m] = self.box.to(to, subject_has="failed")
        body = m.get_body(("plain",)).get_content()
        nxt = g["nextPaymentAttemptAt"]
        self.assertIn("%s %s" % (nxt[:10], nxt[11:16]), body, "the next attempt, in the plan's zone (UTC)")
        self.assertIn(PUBLIC + "/account.html#subscription=" + s["id"], body)
        self.assertNoSecret()

    def test_a_waiting_list_offer_is_mailed_to_the_first_in_line(self):
        p = self.S.create_plan(capacity=1, price=500, waitlist_enabled=True, name="Line %s" % uuid.uuid4().hex[:6])
        s = self.buy(p, self.address())
        waiter = self.address()
        j = self.S.request("POST", "/api/plans/%s/waitlist" % p["id"], {"customer": {"email": waiter, "name": "W"}},
                           {"Idempotency-Key": str(uuid.uuid4())})
        self.assertEqual(j.status, 201, j)
        self.secrets += [v for k, v in j.json.items() if k.endswith("Token") and isinstance(v, str) and len(v) > 20]
        r = self.S.request("POST", "/api/subscriptions/%s/cancel" % s["id"], {},
                           {"Authorization": "Bearer " + s["accessToken"]})
        self.assertEqual(r.status, 200, r)
        [m] = until(lambda: self.box.to(waiter, subject_has="yours"), what="the offer mailed")
        body = m.get_body(("plain",)).get_content()
        self.assertIn(PUBLIC + "/account.html#entry=" + j.json["id"], body)
        self.assertIn(p["name"], body)
        # its deadline, with the zone it is written in
        self.assertRegex(body, r"held for you until \d{4}-\d\d-\d\d \d\d:\d\d UTC\.")
        self.assertNoSecret()
        ok, out = self.S.check()
        self.assertTrue(ok, out)


if __name__ == "__main__":
    unittest.main()


def iso_s(t):
    """Seconds since the epoch of an API time (UTC, milliseconds)."""
    return calendar.timegm(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S")) + int(t[20:23]) / 1000


class Reminders(unittest.TestCase):
    """NUMATIX_RENEWAL_NOTICE_DAYS before a period ends, in the plan's calendar: one mail of its
    renewal (with the amount) or of its end, once per period, however many renewers race."""

    @classmethod
    def setUpClass(cls):
        cls.box = Mailbox().start()
        cls.clock = Clock()
        cls.S = Stack(NUMATIX_SMTP_URL=cls.box.url, NUMATIX_PUBLIC_URL=PUBLIC, NUMATIX_RENEW_INTERVAL=3600,
                      NUMATIX_RENEWAL_NOTICE_DAYS=7, **cls.clock.env()).start()

    @classmethod
    def tearDownClass(cls):
        cls.S.cleanup()
        cls.box.stop()
        cls.clock.cleanup()

    def buy(self, plan, email):
        r = self.S.purchase(plan["id"], email=email)
        self.assertEqual(r.status, 201, r)
        return r.json

    def move_to(self, t):
        """The server's clock to t (seconds since the epoch), if it is not past it."""
        self.clock.advance(max(0, t - (time.time() + self.clock.offset_s)))

    def racing_renewers(self, n=3):
        """n `numatix renew` passes at once, as crons of several machines; their reports."""
        out = []
        threads = [threading.Thread(target=lambda: out.append(self.S.command("renew").stdout)) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    def reminders(self, to):
        return self.box.to(to, subject_has="Coming up")

    def test_one_reminder_a_period_of_its_renewal_or_its_end(self):
        p = self.S.create_plan(capacity=5, price=1500, interval="month", renewal="auto", timezone="Europe/Berlin",
                               name="Monthly %s" % uuid.uuid4().hex[:6])
        renews, ends = "r-%s@example.com" % uuid.uuid4().hex[:8], "e-%s@example.com" % uuid.uuid4().hex[:8]
        a, b = self.buy(p, renews), self.buy(p, ends)
        r = self.S.request("POST", "/api/subscriptions/%s/cancel" % b["id"], {"atPeriodEnd": True},
                           {"Authorization": "Bearer " + b["accessToken"]})
        self.assertEqual(r.status, 200, r)
        # not yet: more than 7 days before the end
        self.assertIn("0 reminded", self.S.renew())
        # 7 days of Berlin's calendar before the end, and a minute
        end = iso_s(a["currentPeriodEnd"])
        self.move_to(end - 7 * 86400 + 60)
        reports = self.racing_renewers()
        self.assertEqual(sum(int(re.search(r"(\d+) reminded", x).group(1)) for x in reports if "reminded" in x), 2,
                         reports)
        until(lambda: self.reminders(renews) and self.reminders(ends), what="both reminders sent")
        [ra] = self.reminders(renews)
        text = ra.get_body(("plain",)).get_content()
        self.assertIn("It renews on", text)
        self.assertIn("15.00 USD", text)
        self.assertIn(PUBLIC + "/account.html#subscription=" + a["id"], text)
        [rb] = self.reminders(ends)
        self.assertIn("It ends on", rb.get_body(("plain",)).get_content())
        events = self.S.audit("subscription.period_ending", p["id"])
        self.assertEqual(sorted(e["resourceId"] for e in events), sorted([a["id"], b["id"]]))
        # again: nothing more for this period
        self.assertIn("0 reminded", self.S.renew())
        # the renewal, then the next period's reminder: one more for the one that renews only
        self.move_to(end + 60)
        self.S.renew()
        g = self.S.admin("GET", "/api/subscriptions/" + a["id"]).json
        self.assertEqual((g["status"], g["periodIndex"]), ("active", 1), g)
        self.move_to(iso_s(g["currentPeriodEnd"]) - 7 * 86400 + 60)
        self.assertIn("1 reminded", self.S.renew())
        until(lambda: len(self.reminders(renews)) == 2, what="the second period's reminder")
        self.assertEqual(len(self.reminders(ends)), 1)
        ok, out = self.S.check()
        self.assertTrue(ok, out)

    def test_a_period_no_longer_than_the_notice_is_not_reminded(self):
        p = self.S.create_plan(capacity=5, price=300, interval="week", renewal="auto",
                               name="Weekly %s" % uuid.uuid4().hex[:6])
        to = "w-%s@example.com" % uuid.uuid4().hex[:8]
        s = self.buy(p, to)
        self.move_to(iso_s(s["currentPeriodEnd"]) - 3600)
        self.assertIn("0 reminded", self.S.renew())
        self.assertEqual(self.S.audit("subscription.period_ending", p["id"]), [])
