// tests/stripe/server.mjs - a Stripe-speaking server for the tests, on loopback only.
//
//   node tests/stripe/server.mjs PORT
//
// stripe-stateful-mock (npm, pinned in the lock file) serves customers, charges and refunds with
// Stripe's own error shapes, idempotency and failure injection, but has no PaymentIntents. This
// layer adds them on top of it: a PaymentIntent confirmed with a pm_card_* test method makes a
// charge of the mock's (tok_* of the same name), uncaptured when capture_method=manual; capture,
// cancel (an uncaptured charge refunded: the authorization released), retrieve, list by
// customer, and refunds by payment_intent, each POST idempotent by its Idempotency-Key as
// Stripe's are (same key and parameters: the first answer again; other parameters: 400
// idempotency_error; while the first runs: 409).
//
// Stripe's events: each change of a PaymentIntent (authorized, succeeded, failed, canceled) and a
// dispute are sent, signed as Stripe signs them (Stripe-Signature: t=...,v1=HMAC-SHA256 of
// "t.body"), to the endpoint registered for the secret key that made the PaymentIntent.
//
// Test-only switches (never Stripe's): POST /__control/webhook registers a key's endpoint, its
// secret and how events go ("now", "before" the API call answers, "twice", "held" until
// /__control/webhook/flush sends them in reverse order, "never"); POST /__control/dispute opens a
// dispute on a PaymentIntent; POST /__control/faults queues faults for the next
// requests that match ("METHOD /path prefix"): an answer of its own (status, error type,
// Stripe-Should-Retry) given before the request runs, or after it ran (its answer lost), or the
// connection cut after it ran; GET /__control/state is every PaymentIntent and refund, for the
// tests to reconcile the ledger with.
import { createRequire } from "node:module";
import crypto from "node:crypto";
import http from "node:http";

const require = createRequire(import.meta.url);
const express = require("express");
const { createExpressApp } = require("stripe-stateful-mock");
const log = require("loglevel");
log.setLevel("silent");

const port = Number(process.argv[2] || 0);

// --- the mock underneath, on an internal loopback port ----------------------------------------
const inner = http.createServer(createExpressApp());
await new Promise((ok) => inner.listen(0, "127.0.0.1", ok));
const innerBase = `http://127.0.0.1:${inner.address().port}`;

async function mock(method, path, params, auth, key) {
  const headers = { authorization: auth };
  let body;
  if (params) {
    headers["content-type"] = "application/x-www-form-urlencoded";
    body = new URLSearchParams(flatten(params)).toString();
  }
  if (key) headers["idempotency-key"] = key;
  const r = await fetch(innerBase + path, { method, headers, body });
  return { status: r.status, body: await r.json().catch(() => ({})) };
}

function flatten(o, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(o)) {
    const name = prefix ? `${prefix}[${k}]` : k;
    if (v !== null && typeof v === "object") flatten(v, name, out);
    else if (v !== undefined) out[name] = String(v);
  }
  return out;
}

const id = (prefix) => prefix + "_" + crypto.randomBytes(12).toString("hex");
const intents = new Map();   // id -> PaymentIntent
const refunds = [];          // every refund made through payment_intent
const faults = [];           // queued by /__control/faults
const latency = new Map();   // secret key -> ms an authorization takes (/__control/latency)
const hooks = new Map();     // secret key -> {url, secret, mode, held: []} (/__control/webhook)

// --- events -------------------------------------------------------------------------------------
function signed(secret, body, t = Math.floor(Date.now() / 1000)) {
  return `t=${t},v1=` + crypto.createHmac("sha256", secret).update(`${t}.${body}`).digest("hex");
}

async function deliver(hook, event) {
  const body = JSON.stringify(event);
  try {
    const r = await fetch(hook.url, { method: "POST", body,
      headers: { "content-type": "application/json", "stripe-signature": signed(hook.secret, body) } });
    await r.text();
    return r.status;
  } catch (e) {
    return 0;
  }
}

// Sends an event of the key's PaymentIntent; with mode "before", the call that caused it waits.
async function emit(token, type, object) {
  const hook = hooks.get(token);
  if (!hook || hook.mode === "never") return;
  const event = { id: id("evt"), object: "event", type, created: Math.floor(Date.now() / 1000), livemode: false,
                  api_version: "2024-06-20", data: { object } };
  if (hook.mode === "held") return void hook.held.push(event);
  const sends = hook.mode === "twice" ? 2 : 1;
  const run = (async () => { for (let i = 0; i < sends; i++) await deliver(hook, event); })();
  if (hook.mode === "before") await run;
}

function stripeError(res, status, error) {
  res.status(status).json({ error });
}

// --- idempotency of this layer's POSTs --------------------------------------------------------
const keys = new Map();      // key -> {fingerprint, status, body} or {fingerprint, running: true}

function idempotent(handler) {
  return async (req, res) => {
    const key = req.header("idempotency-key");
    const fingerprint = req.method + " " + req.path + " " + JSON.stringify(req.body);
    if (key) {
      const seen = keys.get(key);
      if (seen && seen.fingerprint !== fingerprint)
        return stripeError(res, 400, { type: "idempotency_error", message: `Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '${key}' if you meant to execute a different request.` });
      if (seen && seen.running)
        return stripeError(res, 409, { type: "idempotency_error", message: "There is currently another in-progress request using this Stripe API key (or connected account) and idempotency key. Please try again later." });
      if (seen) {
        res.set("Idempotent-Replayed", "true");
        return res.status(seen.status).json(seen.body);
      }
      keys.set(key, { fingerprint, running: true });
    }
    let status = 500, body = { error: { type: "api_error", message: "An unknown error occurred" } };
    try {
      [status, body] = await handler(req);
    } catch (e) {
      body = { error: { type: "api_error", message: String(e && e.message) } };
    }
    if (key) keys.set(key, { fingerprint, status, body });
    res.status(status).json(body);
  };
}

// --- PaymentMethods ---------------------------------------------------------------------------
// A card confirmed with setup_future_usage is attached to the PaymentIntent's Customer, as at
// Stripe; a later PaymentIntent charging it for another Customer is refused. Test cards
// (pm_card_visa) are shared by every buyer here, so a card's attachment is kept per Numatix
// customer (its Stripe Customer's metadata): another Stripe Customer made for the same buyer,
// charged with the card saved to the first, is what is refused.
const attached = new Map();  // "<card> <numatix customer>" -> the Stripe Customer it is attached to
const customers = [];        // the Customers made through this layer: {id, metadata, token}
const buyerOf = (customer) => ((customers.find((c) => c.id === customer) || {}).metadata || {}).numatix_customer;

// --- PaymentIntents -----------------------------------------------------------------------------
const source = (method, offSession) => {
  const name = String(method || "").replace(/^pm_card_/, "");
  // Stripe's 4000 0000 0000 0341: attaches (the buyer present), then every charge without them fails
  if (name === "chargeCustomerFail" && !offSession) return "tok_visa";
  // 4000 0027 6000 3184: charged once the buyer has authenticated (confirm asks first)
  if (name === "authenticationRequired") return "tok_visa";
  return "tok_" + (name || "visa");
};

function view(pi, expand) {
  const out = { ...pi };
  delete out._charge;
  delete out._refunded;
  delete out._token;
  out.latest_charge = pi._charge ? (expand ? { id: pi._charge, object: "charge", amount_refunded: pi._refunded } : pi._charge) : null;
  return out;
}
const wantsCharge = (req) => [].concat((req.body && req.body.expand) || req.query.expand || []).includes("latest_charge");

// the card whose bank asks the buyer (3-D Secure) on every payment
const asksTheBuyer = (pi) => String(pi.payment_method || "") === "pm_card_authenticationRequired" && !pi._authenticated;

async function confirm(pi, auth) {
  const manual = pi.capture_method === "manual";
  if (asksTheBuyer(pi)) {
    if (pi.off_session) {
      // no buyer to ask: Stripe's authentication_required card error
      const error = { type: "card_error", code: "authentication_required", decline_code: "authentication_required",
                      message: "Your card was declined. This transaction requires authentication." };
      pi.status = "requires_payment_method";
      pi.last_payment_error = error;
      await emit(pi._token, "payment_intent.payment_failed", view(pi, false));
      return [402, { error: { ...error, payment_intent: view(pi, false) } }];
    }
    pi.status = "requires_action";
    pi.next_action = { type: "use_stripe_sdk", use_stripe_sdk: { type: "three_d_secure_redirect" } };
    await emit(pi._token, "payment_intent.requires_action", view(pi, false));
    return [200, view(pi, false)];
  }
  pi.next_action = null;
  const r = await mock("POST", "/v1/charges", {
    amount: pi.amount, currency: pi.currency, source: source(pi.payment_method, pi.off_session),
    capture: manual ? "false" : "true", metadata: { payment_intent: pi.id },
  }, auth, pi.id + "-confirm");
  if (r.status === 200) {
    pi._charge = r.body.id;
    const buyer = buyerOf(pi.customer);
    if (pi.setup_future_usage && buyer && !attached.has(pi.payment_method + " " + buyer))
      attached.set(pi.payment_method + " " + buyer, pi.customer);
    pi.status = manual ? "requires_capture" : "succeeded";
    pi.amount_capturable = manual ? pi.amount : 0;
    pi.amount_received = manual ? 0 : pi.amount;
    pi.last_payment_error = null;
    await emit(pi._token, manual ? "payment_intent.amount_capturable_updated" : "payment_intent.succeeded", view(pi, false));
    return [200, view(pi, false)];
  }
  const error = r.body.error || { type: "api_error", message: "charge failed" };
  if (r.status === 402 && error.type === "card_error") {
    pi.status = "requires_payment_method";
    pi.last_payment_error = error;
    await emit(pi._token, "payment_intent.payment_failed", view(pi, false));
    return [402, { error: { ...error, payment_intent: view(pi, false) } }];
  }
  // a token the mock does not know (it throws): Stripe's answer to a payment method it has not
  if ((r.status === 400 && r.body.error && r.body.error.param === "source") || (r.status === 500 && !r.body.error))
    return [400, { error: { type: "invalid_request_error", code: "resource_missing", param: "payment_method",
                            message: `No such PaymentMethod: '${pi.payment_method}'` } }];
  return [r.status, { error }];
}

const app = express();
app.use(express.urlencoded({ extended: true }));

// Stripe's authentication: the secret key as the Basic user (or a Bearer token)
app.use((req, res, next) => {
  if (req.path.startsWith("/__control")) return next();
  const h = req.header("authorization") || "";
  const basic = h.startsWith("Basic ") ? Buffer.from(h.slice(6), "base64").toString().split(":")[0] : null;
  const token = basic || (h.startsWith("Bearer ") ? h.slice(7) : null);
  if (!token) return stripeError(res, 401, { type: "invalid_request_error", message: "You did not provide an API key." });
  if (!/^(sk|rk)_test_/.test(token)) return stripeError(res, 401, { type: "invalid_request_error", message: "Invalid API Key provided." });
  req.auth = "Bearer sk_test_" + token.replace(/^(sk|rk)_test_/, "");
  req.token = token;
  next();
});

// an authorization's round trip, per secret key (each test stack has its own); a request whose
// client went away meanwhile is lost in transit: never run
app.use((req, res, next) => {
  const ms = req.method === "POST" && req.path === "/v1/payment_intents" ? latency.get(req.token) : 0;
  if (!ms) return next();
  setTimeout(() => (req.socket.destroyed ? undefined : next()), ms);
});

// the switches' faults, before or after the request runs
app.use((req, res, next) => {
  const at = faults.findIndex((f) => (req.method + " " + req.path).startsWith(f.match));
  if (at < 0) return next();
  const f = faults[at];
  if (--f.times <= 0) faults.splice(at, 1);
  const answer = () => {
    if (f.shouldRetry !== undefined) res.set("Stripe-Should-Retry", String(f.shouldRetry));
    stripeError(res, f.status || 500, { type: f.type || "api_error", message: "injected by the test" });
  };
  if (!f.after) return f.cut ? req.socket.destroy() : answer();
  // the request runs; what it answered is lost
  const send = res.json.bind(res);
  res.json = () => (f.cut ? req.socket.destroy() : (res.json = send, answer()));
  next();
});

app.post("/v1/payment_intents", idempotent(async (req) => {
  const p = req.body;
  const amount = Number(p.amount);
  if (!Number.isInteger(amount) || amount < 1)
    return [400, { error: { type: "invalid_request_error", code: "parameter_invalid_integer", param: "amount", message: "Invalid integer" } }];
  if (!/^[a-z]{3}$/.test(p.currency || ""))
    return [400, { error: { type: "invalid_request_error", code: "parameter_missing", param: "currency", message: "Missing required param: currency." } }];
  const to = attached.get(p.payment_method + " " + buyerOf(p.customer));
  if (to && to !== p.customer)
    return [400, { error: { type: "invalid_request_error", code: "payment_method_invalid_parameter", param: "payment_method",
                            message: "The provided PaymentMethod was previously attached to a different Customer." } }];
  const pi = {
    id: id("pi"), object: "payment_intent", amount, currency: p.currency, customer: p.customer || null,
    payment_method: p.payment_method || null, capture_method: p.capture_method || "automatic",
    setup_future_usage: p.setup_future_usage || null, off_session: p.off_session === "true",
    metadata: p.metadata || {}, status: p.payment_method ? "requires_confirmation" : "requires_payment_method",
    amount_capturable: 0, amount_received: 0, last_payment_error: null, created: Math.floor(Date.now() / 1000),
    _charge: null, _refunded: 0, _token: req.token,
  };
  pi.client_secret = pi.id + "_secret_" + crypto.randomBytes(8).toString("hex");
  intents.set(pi.id, pi);
  if (p.confirm === "true") return confirm(pi, req.auth);
  return [200, view(pi, false)];
}));

function intentOr404(req) {
  const pi = intents.get(req.params.id);
  return pi ? null : [404, { error: { type: "invalid_request_error", code: "resource_missing", param: "intent", message: `No such payment_intent: '${req.params.id}'` } }];
}
const unexpected = (pi, what) => [400, { error: { type: "invalid_request_error", code: "payment_intent_unexpected_state", message: `This PaymentIntent could not be ${what} because it has a status of ${pi.status}.`, payment_intent: view(pi, false) } }];

app.post("/v1/payment_intents/:id/capture", idempotent(async (req) => {
  const missing = intentOr404(req);
  if (missing) return missing;
  const pi = intents.get(req.params.id);
  if (pi.status !== "requires_capture") return unexpected(pi, "captured");
  const r = await mock("POST", `/v1/charges/${pi._charge}/capture`, {}, req.auth, pi.id + "-capture");
  if (r.status !== 200) return [r.status, { error: r.body.error }];
  pi.status = "succeeded";
  pi.amount_received = pi.amount;
  pi.amount_capturable = 0;
  await emit(pi._token, "payment_intent.succeeded", view(pi, false));
  return [200, view(pi, wantsCharge(req))];
}));

app.post("/v1/payment_intents/:id/cancel", idempotent(async (req) => {
  const missing = intentOr404(req);
  if (missing) return missing;
  const pi = intents.get(req.params.id);
  if (pi.status === "succeeded" || pi.status === "canceled") return unexpected(pi, "canceled");
  if (pi.status === "requires_capture") {
    // the authorization released: the uncaptured charge refunded at the mock
    const r = await mock("POST", "/v1/refunds", { charge: pi._charge }, req.auth, pi.id + "-release");
    if (r.status !== 200) return [r.status, { error: r.body.error }];
  }
  pi.status = "canceled";
  pi.amount_capturable = 0;
  await emit(pi._token, "payment_intent.canceled", view(pi, false));
  return [200, view(pi, wantsCharge(req))];
}));

app.get("/v1/payment_intents/:id", (req, res) => {
  const missing = intentOr404(req);
  if (missing) return res.status(missing[0]).json(missing[1]);
  res.json(view(intents.get(req.params.id), wantsCharge(req)));
});

app.get("/v1/payment_intents", (req, res) => {
  const all = [...intents.values()].filter((pi) => !req.query.customer || pi.customer === req.query.customer).reverse();
  const limit = Math.min(Number(req.query.limit || 10), 100);
  res.json({ object: "list", data: all.slice(0, limit).map((pi) => view(pi, false)), has_more: all.length > limit, url: "/v1/payment_intents" });
});

// refunds of a PaymentIntent's captured charge; the rest (a charge's refunds) is the mock's
app.post("/v1/refunds", (req, res, next) => (req.body.payment_intent ? next() : forward(req, res)), idempotent(async (req) => {
  const pi = intents.get(req.body.payment_intent);
  if (!pi) return [404, { error: { type: "invalid_request_error", code: "resource_missing", param: "payment_intent", message: "No such payment_intent" } }];
  if (pi.status !== "succeeded") return [400, { error: { type: "invalid_request_error", code: "charge_not_refundable", message: "This PaymentIntent has no captured charge to refund." } }];
  const left = pi.amount_received - pi._refunded;
  const amount = req.body.amount === undefined ? left : Number(req.body.amount);
  if (!Number.isInteger(amount) || amount < 1 || amount > left)
    return [400, { error: { type: "invalid_request_error", code: "amount_too_large", param: "amount", message: `Refund amount ($${amount / 100}) is greater than unrefunded amount on charge ($${left / 100})` } }];
  const r = await mock("POST", "/v1/refunds", { charge: pi._charge, amount }, req.auth, req.header("idempotency-key"));
  if (r.status !== 200) return [r.status, { error: r.body.error }];
  pi._refunded += amount;
  const refund = { ...r.body, payment_intent: pi.id, metadata: req.body.metadata || {} };
  refunds.push(refund);
  await emit(pi._token, "charge.refunded", { id: pi._charge, object: "charge", payment_intent: pi.id, amount_refunded: pi._refunded });
  return [200, refund];
}));

app.get("/v1/refunds", (req, res, next) => {
  if (!req.query.payment_intent) return forward(req, res);
  const data = refunds.filter((r) => r.payment_intent === req.query.payment_intent).reverse();
  res.json({ object: "list", data, has_more: false, url: "/v1/refunds" });
});

// --- the switches -----------------------------------------------------------------------------------
app.post("/__control/faults", express.json(), (req, res) => {
  for (const f of [].concat(req.body)) faults.push({ times: 1, ...f });
  res.json({ queued: faults.length });
});
app.post("/__control/latency", express.json(), (req, res) => {
  latency.set(req.body.key, Number(req.body.ms) || 0);
  res.json({ ok: true });
});
app.post("/__control/webhook", express.json(), (req, res) => {
  const old = hooks.get(req.body.key);
  hooks.set(req.body.key, { url: req.body.url || (old && old.url), secret: req.body.secret || (old && old.secret),
                            mode: req.body.mode || "now", held: old ? old.held : [] });
  res.json({ ok: true });
});
app.post("/__control/webhook/flush", express.json(), async (req, res) => {
  const hook = hooks.get(req.body.key);
  const held = hook ? hook.held.splice(0).reverse() : [];
  const statuses = [];
  for (const e of held) statuses.push(await deliver(hook, e));
  res.json({ sent: held.map((e) => e.type), statuses });
});
app.post("/__control/dispute", express.json(), async (req, res) => {
  const pi = intents.get(req.body.payment_intent);
  if (!pi) return res.status(404).json({ error: "no such payment_intent" });
  const dispute = { id: id("dp"), object: "dispute", amount: pi.amount_received, charge: pi._charge,
                    payment_intent: pi.id, reason: "fraudulent", status: "needs_response" };
  const hook = hooks.get(pi._token);
  const status = hook ? await deliver(hook, { id: id("evt"), object: "event", type: "charge.dispute.created",
    created: Math.floor(Date.now() / 1000), livemode: false, data: { object: dispute } }) : 0;
  res.json({ dispute, status });
});
// what Stripe.js's handleNextAction does once the buyer passed their bank's check: the
// PaymentIntent (named by its client secret, as the page knows it) is confirmed again
app.post("/__control/authenticate", express.json(), async (req, res) => {
  const pi = [...intents.values()].find((p) => p.client_secret === req.body.client_secret);
  if (!pi || pi.status !== "requires_action") return res.status(409).json({ error: "no PaymentIntent waits for the buyer" });
  pi._authenticated = true;
  const [status, body] = await confirm(pi, "Bearer sk_test_" + pi._token.replace(/^(sk|rk)_test_/, ""));
  res.status(status).json(body);
});
app.delete("/__control/faults", (req, res) => {
  faults.length = 0;
  res.json({ queued: 0 });
});
app.get("/__control/state", (req, res) => {
  res.json({ intents: [...intents.values()].map((pi) => ({ ...view(pi, true) })), refunds,
             customers: customers.map((c) => ({ id: c.id, metadata: c.metadata })) });
});

// Customers: made at the mock, each POST idempotent here by its key as Stripe keeps keys, for 24
// hours; POST /__control/idempotency/expire forgets them all, as a day passing would.
app.post("/v1/customers", idempotent(async (req) => {
  const r = await mock("POST", "/v1/customers", req.body, req.auth, null);
  if (r.status === 200) customers.push({ id: r.body.id, metadata: r.body.metadata || {}, token: req.token });
  return [r.status, r.body];
}));
app.post("/__control/idempotency/expire", (req, res) => {
  keys.clear();
  res.json({ expired: true });
});

// everything else: the mock's own
async function forward(req, res) {
  const r = await mock(req.method, req.originalUrl, req.method === "GET" ? null : req.body, req.auth,
                       req.header("idempotency-key"));
  res.status(r.status).json(r.body);
}
app.use((req, res) => forward(req, res));

const server = app.listen(port, "127.0.0.1", () => {
  console.log(`stripe test server on http://127.0.0.1:${server.address().port}`);
});
process.on("SIGTERM", () => { server.close(); inner.close(); process.exit(0); });
