"""A real SMTP server on loopback for the mail tests: aiosmtpd's controller in the test process.
It keeps every message it took, raw, and answers DATA as a test scripts it (451, 550, or 250);
a test can have it refuse our sender (MAIL FROM) until told otherwise."""
import asyncio
import email
import email.policy
import re
import threading

from aiosmtpd.controller import Controller

from stack import free_port, until


class _Handler:
    def __init__(self, box):
        self.box = box

    async def handle_MAIL(self, server, session, envelope, address, options):
        with self.box.lock:
            self.box.mail_froms += 1
            refusal = self.box.sender_refusal
        if refusal:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.box.lock:
            self.box.attempts += 1
            answer = self.box.script.pop(0) if self.box.script else "250 OK"
            if answer.startswith("250"):
                self.box.raw.append((envelope.rcpt_tos, envelope.original_content or envelope.content))
            gate = None
            if self.box.gate and self.box.gate[0] in envelope.rcpt_tos:
                gate = self.box.gate[1]
                self.box.gate = None
        if gate:
            # the message is taken; the answer waits until the test lets it go
            self.box.held.set()
            await asyncio.get_running_loop().run_in_executor(None, gate.wait)
        return answer


class Mailbox:
    """Started on a free port (or the port given). script: the answers to the next DATAs."""

    def __init__(self, port=None):
        self.lock = threading.Lock()
        self.raw = []
        self.script = []
        self.attempts = 0
        self.mail_froms = 0
        self.sender_refusal = None
        self.gate = None
        self.held = threading.Event()
        self.port = port or free_port()
        self.controller = None

    def start(self):
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self):
        with self.lock:
            if self.gate:
                self.gate[1].set()
        if self.controller:
            self.controller.stop()
            self.controller = None

    @property
    def url(self):
        return "smtp://127.0.0.1:%d" % self.port

    def hold_next(self, rcpt):
        """The next message to rcpt is taken, and its answer held until the event returned is
        set: held is set once the sender waits for it."""
        with self.lock:
            self.held.clear()
            self.gate = (rcpt, threading.Event())
            return self.gate[1]

    def refuse_sender(self, answer):
        """Every MAIL FROM answered with answer (None: taken again) from now on."""
        with self.lock:
            self.sender_refusal = answer

    def answer(self, *codes):
        with self.lock:
            self.script.extend(codes)

    def messages(self):
        """Every message taken, parsed: (recipients, email.message.EmailMessage, raw bytes)."""
        with self.lock:
            taken = list(self.raw)
        return [(rcpt, email.message_from_bytes(raw, policy=email.policy.default), raw) for rcpt, raw in taken]

    def wait_for(self, n, what="mail"):
        return until(lambda: (lambda m: m if len(m) >= n else None)(self.messages()), what="%d %s" % (n, what))

    def to(self, address, subject_has=None):
        return [m for r, m, _ in self.messages() if address in r and (not subject_has or subject_has in m["subject"])]

    def login_links(self, address):
        """The sign-in tokens mailed to address (any case), oldest first: each link's
        account.html#login=<token>, read from the plain-text part."""
        out = []
        for r, m, _ in self.messages():
            if m["subject"] == "Your sign-in link" and address.lower() in [x.lower() for x in r]:
                out += re.findall(r"/account\.html#login=(lnk_[A-Za-z0-9_-]+)", m.get_body(("plain",)).get_content())
        return list(dict.fromkeys(out))

    def login_link(self, address, n=1):
        """The n-th sign-in token mailed to address, waited for."""
        return until(lambda: (lambda ls: ls[n - 1] if len(ls) >= n else None)(self.login_links(address)),
                     what="sign-in link %d to %s" % (n, address))
