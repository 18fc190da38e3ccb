// pages.mjs - the pages in a real browser (Debian's headless Chromium, driven by playwright-core)
// against the real stack started by scripts/run.sh on a free loopback port. Prints one line per
// test, keeps a screenshot of each page in tests/artifacts/, and ends with "RESULT p f s".
import { launch, buyThrough, holdThrough, payThrough } from './shop.mjs';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, readdirSync, rmSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { createServer as createHttpServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const ARTIFACTS = join(ROOT, 'tests', 'artifacts');
const ADMIN = 'browser-admin-token-0123456789';
mkdirSync(ARTIFACTS, { recursive: true });

const freePort = () => new Promise((resolve) => {
  const s = createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
});

// Two more loopback origins serving a bare page: the shop's own frontend on another port, whose
// origin the service allows (NUMATIX_CORS_ORIGINS), and a stranger's, which it does not.
async function startOrigin() {
  const port = await freePort();
  const server = createHttpServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end('<!doctype html><title>another origin</title><p>another origin</p>');
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  return { base: `http://127.0.0.1:${port}`, server };
}
const SHOP = await startOrigin();
const STRANGER = await startOrigin();

async function startStack(extra = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'numatix-browser-'));
  const port = await freePort();
  const proc = spawn(join(ROOT, 'scripts', 'run.sh'), [], {
    env: { ...process.env, PORT: String(port), NUMATIX_VAR: dir, NUMATIX_ADMIN_TOKEN: ADMIN, NUMATIX_WORKERS: '4',
           NUMATIX_PAYMENT_LATENCY_MS: '150', NUMATIX_CORS_ORIGINS: SHOP.base, ...extra(dir) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  proc.stderr.on('data', (d) => { log += d; });
  await new Promise((resolve, reject) => {
    proc.stdout.on('data', (d) => { log += d; if (String(d).includes('Numatix is running')) resolve(); });
    proc.on('exit', () => reject(new Error('the stack did not start:\n' + log)));
  });
  return { base: `http://127.0.0.1:${port}`, proc, dir, logs: () => log };
}

// A real SMTP server on loopback (aiosmtpd, Debian's python3-aiosmtpd) writing each mail it takes
// to a Maildir: the sign-in test reads its link from there, as a customer reads their mail.
async function startMailbox() {
  const dir = mkdtempSync(join(tmpdir(), 'numatix-maildir-'));
  const port = await freePort();
  const proc = spawn('/usr/bin/python3', ['-m', 'aiosmtpd', '-n', '-l', `127.0.0.1:${port}`, '-c',
                                          'aiosmtpd.handlers.Mailbox', join(dir, 'mail')], { stdio: 'ignore' });
  // listening once it answers a connection
  for (let i = 0; ; i++) {
    const up = await new Promise((resolve) => {
      const c = connect(port, '127.0.0.1', () => { c.end(); resolve(true); });
      c.on('error', () => resolve(false));
    });
    if (up) break;
    if (i > 400) throw new Error('aiosmtpd did not start');
    await new Promise((r) => setTimeout(r, 25));
  }
  // The sign-in links mailed to address: each message's plain text, quoted-printable undone.
  const links = (address) => {
    const out = [];
    for (const sub of ['new', 'cur']) {
      let names = [];
      try { names = readdirSync(join(dir, 'mail', sub)); } catch (e) { continue; }
      for (const n of names) {
        const raw = readFileSync(join(dir, 'mail', sub, n), 'utf8');
        if (!raw.toLowerCase().includes(`to: ${address.toLowerCase()}`) && !raw.toLowerCase().includes(`<${address.toLowerCase()}>`)) continue;
        const text = raw.replace(/=\r?\n/g, '').replace(/=([0-9A-F]{2})/g, (_, h) => String.fromCharCode(parseInt(h, 16)));
        for (const m of text.matchAll(/#login=(lnk_[A-Za-z0-9_-]+)/g)) if (!out.includes(m[1])) out.push(m[1]);
      }
    }
    return out;
  };
  return { url: `smtp://127.0.0.1:${port}`, proc, dir, links };
}
const MAIL = await startMailbox();

const S = await startStack(() => ({ NUMATIX_SMTP_URL: MAIL.url, NUMATIX_MAIL_FROM: 'Numatix <seats@example.com>' }));
const api = async (method, path, body, token = ADMIN) => {
  const r = await fetch(S.base + path, { method, headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
                                         body: body ? JSON.stringify(body) : undefined });
  return { status: r.status, json: await r.json() };
};
const newPlan = async (capacity, extra = {}) => (await api('POST', '/api/plans',
  { name: `Browser ${Math.random().toString(36).slice(2, 10)}`, price_cents: 2500, total_capacity: capacity, features: ['Hands-on'], ...extra })).json;
const left = async (id) => (await api('GET', `/api/plans/${id}`)).json.subscriptions_left;
const heldEvents = async (id) => (await api('GET', `/api/audit-logs?planId=${id}&action=seat.held&limit=200`)).json.logs.length;

const browser = await launch();
const consoleErrors = [];
async function newPage(viewport = { width: 1200, height: 900 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(`${page.url()}: ${m.text()}`); });
  page.on('pageerror', (e) => consoleErrors.push(`${page.url()}: ${e.message}`));
  return { context, page };
}

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

test('buy a seat and see the count drop', async () => {
  const p = await newPlan(5);
  const { context, page } = await newPage();
  await page.goto(S.base + '/');
  const seats = page.locator(`li[data-plan="${p.id}"] .seats`);
  await assert.doesNotReject(seats.waitFor());
  assert.equal(await seats.textContent(), '5 of 5 seats left');
  const result = await buyThrough(page, p.id);
  assert.match(await result.textContent(), /Your seat is booked/);
  await page.waitForFunction((id) => document.querySelector(`li[data-plan="${id}"] .seats`)?.dataset.seats === '4', p.id);
  assert.equal(await left(p.id), 4);
  await page.screenshot({ path: join(ARTIFACTS, 'purchase-success.png'), fullPage: true });
  await context.close();
});

test('two browsers race for the last seat: one holds it, the other is told it is sold out', async () => {
  const p = await newPlan(1);
  const a = await newPage(), b = await newPage();
  for (const { page } of [a, b]) {
    await page.goto(S.base + '/');
    await page.locator(`li[data-plan="${p.id}"] button`).click();
    await page.locator('#buy-name').fill('Racer');
    await page.locator('#buy-email').fill(`racer-${Math.random().toString(36).slice(2)}@example.com`);
  }
  await Promise.all([a.page.locator('#hold-submit').click(), b.page.locator('#hold-submit').click()]);
  const texts = await Promise.all([a, b].map(async ({ page }) => {
    await page.waitForFunction(() => /held|sold out/.test(document.querySelector('#buy-result.ok, #buy-result.bad')?.textContent || ''));
    return page.locator('#buy-result').textContent();
  }));
  assert.equal(texts.filter((t) => /seats are held/.test(t)).length, 1, texts.join(' | '));
  assert.equal(texts.filter((t) => /sold out/.test(t)).length, 1, texts.join(' | '));
  assert.equal(await left(p.id), 0);
  const winner = /seats are held/.test(texts[0]) ? a : b, loser = winner === a ? b : a;
  assert.match(await (await payThrough(winner.page)).textContent(), /Your seat is booked/);
  await loser.page.screenshot({ path: join(ARTIFACTS, 'purchase-race.png'), fullPage: true });
  await winner.page.locator('#buy-cancel').click();
  await winner.page.waitForFunction((id) => document.querySelector(`li[data-plan="${id}"] button`)?.disabled, p.id);
  await winner.page.screenshot({ path: join(ARTIFACTS, 'purchase-soldout.png'), fullPage: true });
  await a.context.close();
  await b.context.close();
});

test('a declined card keeps the seats held for another card; closing gives them back', async () => {
  const p = await newPlan(3);
  const { context, page } = await newPage();
  await page.goto(S.base + '/');
  const result = await buyThrough(page, p.id, { card: 'pm_card_chargeDeclinedInsufficientFunds' });
  assert.match(await result.textContent(), /Payment failed: insufficient funds.*still held/);
  assert.equal(await left(p.id), 2);
  await page.screenshot({ path: join(ARTIFACTS, 'purchase-declined.png'), fullPage: true });
  await page.locator('#buy-cancel').click();
  await page.waitForFunction((id) => document.querySelector(`li[data-plan="${id}"] .seats`)?.dataset.seats === '3', p.id);
  assert.equal(await left(p.id), 3);
  await context.close();
});

test('a card whose bank asks (3-D Secure): the seats stay held, the buyer confirms, then booked once', async () => {
  const p = await newPlan(3);
  const { context, page } = await newPage();
  await page.goto(S.base + '/');
  const held = await holdThrough(page, p.id);
  assert.match(await held.textContent(), /held/);
  await page.getByLabel(/Card/).selectOption('pm_card_authenticationRequired');
  await page.locator('#buy-submit').click();
  await page.locator('#bank-confirm').waitFor();
  assert.match(await page.locator('#buy-result').textContent(), /bank asks you to confirm.*still held/);
  assert.equal(await left(p.id), 2);
  await page.screenshot({ path: join(ARTIFACTS, 'purchase-3ds.png'), fullPage: true });
  await page.locator('#bank-confirm').click();
  await page.waitForFunction(() => /booked|failed|wrong/i.test(document.querySelector('#buy-result.ok, #buy-result.bad')?.textContent || ''));
  assert.match(await page.locator('#buy-result').textContent(), /Your seat is booked/);
  const plan = (await api('GET', `/api/plans/${p.id}`)).json;
  assert.deepEqual([plan.subscriptions_left, plan.subscriptions_held], [2, 0]);
  await context.close();
});

test('quantity and the countdown: three seats held with a clock, then bought in one order', async () => {
  const p = await newPlan(5, { max_per_order: 3 });
  const { context, page } = await newPage();
  await page.goto(S.base + '/');
  const over = await holdThrough(page, p.id, { quantity: 4 });
  assert.match(await over.textContent(), /Choose from 1 to 3 seats/);
  await page.locator('#buy-quantity').fill('3');
  await page.locator('#hold-submit').click();
  await page.locator('#hold-countdown:not([hidden])').waitFor();
  assert.equal(await left(p.id), 2);
  const first = Number(await page.locator('#hold-countdown').getAttribute('data-seconds'));
  assert.ok(first > 800 && first <= 900, String(first));
  assert.match(await page.locator('#hold-countdown').textContent(), /3 seats held for you — 1[45]:\d\d left to pay \$75\.00/);
  // the clock runs: the number of seconds left goes down
  await page.waitForFunction((s) => Number(document.querySelector('#hold-countdown').dataset.seconds) < s, first);
  await page.screenshot({ path: join(ARTIFACTS, 'purchase-countdown.png'), fullPage: true });
  const paid = await payThrough(page);
  assert.match(await paid.textContent(), /Your 3 seats are booked/);
  assert.equal(await left(p.id), 2);
  const held = (await api('GET', `/api/plans/${p.id}`)).json.subscriptions_held;
  assert.equal(held, 0);
  await context.close();
});

test('a double click on buy makes one subscription', async () => {
  const p = await newPlan(5);
  const { context, page } = await newPage();
  await page.goto(S.base + '/');
  const held = await holdThrough(page, p.id, { click: 'dblclick' });
  assert.match(await held.textContent(), /held/);
  const result = await payThrough(page, { click: 'dblclick' });
  assert.match(await result.textContent(), /Your seat is booked/);
  assert.equal(await left(p.id), 4);
  assert.equal(await heldEvents(p.id), 1);
  await context.close();
});

test('cancelling on the subscription page gives the seat back', async () => {
  const p = await newPlan(2);
  const { context, page } = await newPage({ width: 390, height: 844 });   // a phone
  await page.goto(S.base + '/');
  await buyThrough(page, p.id);
  assert.equal(await left(p.id), 1);
  await page.screenshot({ path: join(ARTIFACTS, 'purchase-phone.png'), fullPage: true });
  await page.locator('#sub-link').click();
  await page.locator('dd[data-field="status"]').waitFor();
  assert.equal(await page.locator('dd[data-field="status"]').textContent(), 'active');
  await page.screenshot({ path: join(ARTIFACTS, 'subscription.png'), fullPage: true });
  page.once('dialog', (d) => d.accept());
  await page.getByRole('button', { name: 'Cancel subscription' }).click();
  await page.waitForFunction(() => document.querySelector('dd[data-field="status"]')?.textContent === 'cancelled');
  assert.equal(await left(p.id), 2);
  await page.screenshot({ path: join(ARTIFACTS, 'subscription-cancelled.png'), fullPage: true });
  await context.close();
});

test('cancel at period end on the subscription page, then keep renewing', async () => {
  const p = await newPlan(2, { interval: 'month', renewal: 'auto' });
  const { context, page } = await newPage();
  await page.goto(S.base + '/');
  await buyThrough(page, p.id);
  await page.locator('#sub-link').click();
  await page.locator('dd[data-field="renews on"]').waitFor();
  await page.getByRole('button', { name: 'Cancel at period end' }).click();
  await page.locator('dd[data-field="ends on"]').waitFor();
  assert.match(await page.locator('#sub-status').textContent(), /ends on .*nothing more is charged/);
  assert.equal(await page.locator('dd[data-field="status"]').textContent(), 'active');
  assert.equal(await left(p.id), 1, 'the seat is kept to the end of the period');
  await page.screenshot({ path: join(ARTIFACTS, 'subscription-ends.png'), fullPage: true });
  await page.getByRole('button', { name: 'Keep renewing' }).click();
  await page.locator('dd[data-field="renews on"]').waitFor();
  assert.equal(await page.getByRole('button', { name: 'Cancel at period end' }).isVisible(), true);
  await context.close();
});

test('changing plan on the subscription page: a decline changes nothing, then the seats move', async () => {
  const a = await newPlan(3, { price_cents: 2000 });
  const b = await newPlan(2, { price_cents: 5000 });
  const { context, page } = await newPage();
  await page.goto(S.base + '/');
  await buyThrough(page, a.id, { quantity: 2 });
  await page.locator('#sub-link').click();
  await page.locator('#change:not([hidden])').waitFor();
  await page.getByLabel('New plan').selectOption(b.id);
  assert.match(await page.locator('#change-diff').textContent(), /You pay about \$60\.00 now/);
  await page.getByLabel(/Card for a difference/).selectOption('pm_card_chargeDeclined');
  await page.locator('#change-submit').click();
  await page.locator('#change-status.bad').waitFor();
  assert.match(await page.locator('#change-status').textContent(), /declined; your subscription is unchanged/);
  assert.deepEqual([await left(a.id), await left(b.id)], [1, 2]);
  await page.getByLabel(/Card for a difference/).selectOption('pm_card_visa');
  await page.locator('#change-submit').click();
  await page.locator('#change-status.ok').waitFor();
  assert.equal(await page.locator('dd[data-field="plan"]').textContent(), b.name);
  assert.equal(await page.locator('dd[data-field="seats"]').textContent(), '2');
  assert.deepEqual([await left(a.id), await left(b.id)], [3, 0]);
  assert.match(page.url(), /#id=[0-9a-f]{24}&token=sat_/);
  await page.screenshot({ path: join(ARTIFACTS, 'subscription-changed.png'), fullPage: true });
  await context.close();
});

test('a sold-out plan\'s waiting list: join, follow the place in line, pay for the offer with its countdown', async () => {
  const p = await newPlan(1, { waitlist_enabled: true });
  const { context, page } = await newPage();
  await page.goto(S.base + '/');
  const first = await buyThrough(page, p.id);
  assert.match(await first.textContent(), /booked/);
  const subLink = await page.locator('#sub-link').getAttribute('href');
  await page.getByRole('button', { name: 'Close' }).first().click();
  // sold out: the card offers the line
  const joinButton = page.locator(`li[data-plan="${p.id}"]`).getByRole('button', { name: /waiting list/ });
  await joinButton.waitFor();
  await joinButton.click();
  await page.locator('#join-name').fill('Grace Hopper');
  await page.locator('#join-email').fill(`grace-${Math.random().toString(36).slice(2)}@example.com`);
  await page.locator('#join-submit').click();
  await page.locator('#join-result.ok').waitFor();
  assert.match(await page.locator('#join-result').textContent(), /number 1 in line/);
  await page.screenshot({ path: join(ARTIFACTS, 'waitlist-joined.png'), fullPage: true });
  await page.locator('#entry-link').click();
  await page.waitForFunction(() => document.querySelector('dd[data-field="place in line"]')?.textContent === '1');
  await page.screenshot({ path: join(ARTIFACTS, 'waitlist-waiting.png'), fullPage: true });
  // the first buyer cancels: the seat is offered to the line in that same step, and the page shows it
  const params = new URLSearchParams(subLink.split('#')[1]);
  assert.equal((await api('POST', `/api/subscriptions/${params.get('id')}/cancel`, {}, params.get('token'))).status, 200);
  await page.locator('#offer:not([hidden])').waitFor({ timeout: 10000 });
  assert.match(await page.locator('#offer-countdown').textContent(), /1 seat held for you — 23:59:\d\d left to pay/);
  assert.equal(await left(p.id), 0);
  await page.screenshot({ path: join(ARTIFACTS, 'waitlist-offered.png'), fullPage: true });
  await page.locator('#offer-pay').click();
  await page.locator('#entry-status.ok').waitFor();
  assert.match(await page.locator('#entry-status').textContent(), /Your seats are booked/);
  await page.waitForFunction(() => document.querySelector('dd[data-field="status"]')?.textContent === 'Bought');
  await context.close();
});

test('the dashboard shows a plan\'s line', async () => {
  const p = await newPlan(1, { waitlist_enabled: true });
  const bought = await fetch(S.base + '/api/subscriptions/purchase', { method: 'POST',
    headers: { 'Content-Type': 'application/json', 'Idempotency-Key': crypto.randomUUID() },
    body: JSON.stringify({ planId: p.id, paymentMethodId: 'pm_card_visa', customer: { email: `dash-buyer-${p.id}@example.com`, name: 'B' } }) });
  assert.equal(bought.status, 201);
  for (const who of ['one', 'two']) {
    const r = await fetch(S.base + `/api/plans/${p.id}/waitlist`, { method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Idempotency-Key': crypto.randomUUID() },
      body: JSON.stringify({ customer: { email: `dash-${who}-${p.id}@example.com`, name: who } }) });
    assert.equal(r.status, 201);
  }
  const { context, page } = await newPage();
  await page.goto(S.base + '/admin.html');
  await page.locator('#token').fill(ADMIN);
  await page.locator('#login-form button[type="submit"]').click();
  const line = page.locator(`tr[data-plan="${p.id}"] td[data-col="waiting"] button`);
  await line.waitFor();
  assert.equal(await line.textContent(), '2 waiting');
  await line.click();
  await page.locator('#line:not([hidden])').waitFor();
  assert.deepEqual(await page.locator('#line-rows tr td:first-child').allTextContents(), ['1', '2']);
  await page.locator('#line').screenshot({ path: join(ARTIFACTS, 'dashboard-line.png') });
  await context.close();
});

test('a plan created in the dashboard appears on the purchase page', async () => {
  const { context, page } = await newPage();
  await page.goto(S.base + '/admin.html');
  await page.getByLabel('Admin token').fill('wrong-token-wrong-token');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#login-status.bad').waitFor();
  await page.getByLabel('Admin token').fill(ADMIN);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#console').waitFor();
  const name = `Dashboard ${Math.random().toString(36).slice(2, 8)}`;
  await page.getByLabel('Name').fill(name);
  await page.locator('#new-capacity').fill('7');
  await page.getByRole('button', { name: 'Create plan' }).click();
  await page.locator('#create-status.ok').waitFor();
  const row = page.locator('#plan-rows tr', { hasText: name });
  await row.waitFor();
  assert.equal(await row.locator('[data-col="left"]').textContent(), '7');
  // a purchase shows up as sold, in the audit events, and in the chart
  const id = await row.getAttribute('data-plan');
  const shop = await newPage();
  await shop.page.goto(S.base + '/');
  await shop.page.locator(`li[data-plan="${id}"]`).waitFor();
  assert.match(await shop.page.locator(`li[data-plan="${id}"] h2`).textContent(), new RegExp(name));
  await buyThrough(shop.page, id);
  await page.locator('#chart-plan').selectOption(id);
  await page.waitForFunction((pid) => document.querySelector(`#plan-rows tr[data-plan="${pid}"] [data-col="sold"]`)?.textContent === '1', id, { timeout: 15000 });
  await page.locator('#chart svg path.line').waitFor();
  assert.ok(await page.locator('#audit-rows tr', { hasText: 'subscription.activated' }).count() >= 1);
  // held seats by kind, and the limits, edited in place
  await shop.page.locator('#buy-cancel').click();
  const held = await holdThrough(shop.page, id, { quantity: 2 });
  assert.match(await held.textContent(), /held/);
  await page.waitForFunction((pid) => /2 in checkout/.test(document.querySelector(`#plan-rows tr[data-plan="${pid}"] [data-col="held-kinds"]`)?.textContent || ''), id, { timeout: 15000 });
  await row.getByLabel(/Seats per order/).fill('4');
  await row.getByLabel(/Seats per customer/).fill('2');
  await row.getByRole('button', { name: 'Save' }).click();
  await page.waitForFunction((pid) => document.querySelector(`#plan-rows tr[data-plan="${pid}"] [data-col="limits"]`)?.textContent === '4 an order, 2 a customer', id);
  const edited = (await api('GET', `/api/plans/${id}`)).json;
  assert.deepEqual([edited.max_per_order, edited.max_per_customer], [4, 2]);
  await page.screenshot({ path: join(ARTIFACTS, 'dashboard.png'), fullPage: true });
  // the token is kept for the browser session
  await page.reload();
  await page.locator('#console:not([hidden])').waitFor();
  await shop.context.close();
  await context.close();
});

test('a page of an allowed origin buys through the API; a stranger\'s page cannot', async () => {
  const p = await newPlan(2);
  const buy = ({ base, planId }) => fetch(`${base}/api/subscriptions/purchase`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'Idempotency-Key': crypto.randomUUID() },
    body: JSON.stringify({ planId, paymentMethodId: 'pm_card_visa', customer: { email: `cors-${Date.now()}@example.com`, name: 'Cross Origin' } }),
  }).then(async (r) => ({ status: r.status, trace: r.headers.get('X-Trace-Id'), body: await r.json() }),
          (e) => ({ error: String(e) }));
  const { context, page } = await newPage();
  await page.goto(SHOP.base + '/');
  // JSON with an Idempotency-Key is not a simple request: Chromium sends the preflight first
  const ok = await page.evaluate(buy, { base: S.base, planId: p.id });
  assert.equal(ok.status, 201, JSON.stringify(ok));
  assert.equal(ok.body.status, 'active');
  assert.match(ok.trace, /^[0-9a-f]{32}$/);
  await page.goto(STRANGER.base + '/');
  const refused = await page.evaluate(buy, { base: S.base, planId: p.id });
  assert.match(refused.error || '', /Failed to fetch/, JSON.stringify(refused));
  await context.close();
  // the stranger's request never reached a handler: one seat sold, not two
  assert.equal(await left(p.id), 1);
  consoleErrors.splice(0, consoleErrors.length, ...consoleErrors.filter((e) => !e.startsWith(STRANGER.base)));
});

// A renewal that fails, on a stack of its own whose clock the test moves (libfaketime, as the
// API suites do): the subscription page shows it past due with its next try, the dashboard lists
// it, and another card pays the period it would have had.
test('a failed renewal: past due on the page and the dashboard, then paid with another card', async () => {
  const clock = join(mkdtempSync(join(tmpdir(), 'numatix-clock-')), 'offset');
  writeFileSync(clock, '+0s\n');
  const T = await startStack((dir) => ({ NUMATIX_BIN: join(ROOT, 'tests', 'faketime.sh'),
    NUMATIX_CLOCK_BIN: join(ROOT, 'cgi-bin', 'numatix'), NUMATIX_TEST_CLOCK: clock, NUMATIX_RENEW_INTERVAL: '1' }));
  try {
    const plan = await (await fetch(T.base + '/api/plans', { method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${ADMIN}` },
      body: JSON.stringify({ name: 'Renewing', price_cents: 1900, total_capacity: 3, interval: 'week', renewal: 'auto' }) })).json();
    const bought = await (await fetch(T.base + '/api/subscriptions/purchase', { method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Idempotency-Key': crypto.randomUUID() },
      body: JSON.stringify({ planId: plan.id, paymentMethodId: 'pm_card_chargeCustomerFail',
                             customer: { email: 'renews@example.com', name: 'R' } }) })).json();
    writeFileSync(clock, `+${8 * 86400}s\n`);   // past the week: the renewer's next pass tries the card
    const { context, page } = await newPage();
    await page.goto(`${T.base}/subscription.html#id=${bought.id}&token=${bought.accessToken}`);
    // the page as a buyer who comes back sees it: read again until the renewer has been by
    for (let tries = 0; ; tries++) {
      await page.locator('dd[data-field="status"]').waitFor();
      if (await page.locator('dd[data-field="status"]').textContent() === 'past due') break;
      assert.ok(tries < 120, 'the renewal was never tried');
      await page.waitForTimeout(500);
      await page.reload();
    }
    await page.locator('#dunning:not([hidden])').waitFor();
    assert.match(await page.locator('#dunning-next').textContent(), /We try your card again on/);
    await page.screenshot({ path: join(ARTIFACTS, 'subscription-past-due.png'), fullPage: true });
    const admin = await newPage();
    await admin.page.goto(T.base + '/admin.html');
    await admin.page.locator('#token').fill(ADMIN);
    await admin.page.locator('#login-form button[type="submit"]').click();
    await admin.page.locator('#renewal-rows tr[data-status="past_due"]').waitFor();
    assert.match(await admin.page.locator('#renewal-rows').textContent(), /retry the card/);
    await admin.page.locator('#renewal-rows').screenshot({ path: join(ARTIFACTS, 'dashboard-renewals.png') });
    await admin.context.close();
    await page.getByLabel(/Pay now with another card/).selectOption('pm_card_visa');
    await page.locator('#dunning-submit').click();
    await page.waitForFunction(() => document.querySelector('dd[data-field="status"]')?.textContent === 'active');
    assert.match(await page.locator('#sub-status').textContent(), /Paid: your subscription renews on/);
    assert.equal(await page.locator('#dunning').isHidden(), true);
    await context.close();
  } catch (e) {
    console.log(T.logs().split('\n').filter((l) => !l.includes('"event":"request"') || !l.includes('"status":200')).slice(-40).join('\n'));
    throw e;
  } finally {
    T.proc.kill('SIGTERM');
    await new Promise((r) => T.proc.on('exit', r));
    rmSync(T.dir, { recursive: true, force: true });
    rmSync(dirname(clock), { recursive: true, force: true });
  }
});

// A customer comes back: asks for a sign-in link, opens it from the mail, sees what they bought
// and paid, cancels at period end, and makes a new access link that ends the old one.
test('the account page: a mailed sign-in link, subscriptions and receipts; cancel at period end, resume, another card, leave a line, a new access link, sign out', async () => {
  const p = await newPlan(4, { interval: 'month', renewal: 'auto' });
  const email = `account-${Math.random().toString(36).slice(2, 10)}@example.com`;
  const bought = await (await fetch(S.base + '/api/subscriptions/purchase', { method: 'POST',
    headers: { 'Content-Type': 'application/json', 'Idempotency-Key': crypto.randomUUID() },
    body: JSON.stringify({ planId: p.id, paymentMethodId: 'pm_card_visa', customer: { email, name: 'Ada Account' } }) })).json();
  // and a place in a sold-out plan's line
  const full = await newPlan(1, { waitlist_enabled: true });
  await fetch(S.base + '/api/subscriptions/purchase', { method: 'POST',
    headers: { 'Content-Type': 'application/json', 'Idempotency-Key': crypto.randomUUID() },
    body: JSON.stringify({ planId: full.id, paymentMethodId: 'pm_card_visa', customer: { email: `x-${email}`, name: 'X' } }) });
  const entry = await (await fetch(`${S.base}/api/plans/${full.id}/waitlist`, { method: 'POST',
    headers: { 'Content-Type': 'application/json', 'Idempotency-Key': crypto.randomUUID() },
    body: JSON.stringify({ customerId: bought.customerId }) })).json();
  const { context, page } = await newPage();
  await page.goto(S.base + '/account.html');
  await page.getByLabel('Email address').fill(email);
  await page.locator('#signin-submit').click();
  await page.locator('#account-status.ok').waitFor();
  assert.match(await page.locator('#account-status').textContent(), /a sign-in link is on its way/);
  let token;
  for (let i = 0; !(token = MAIL.links(email)[0]); i++) {
    assert.ok(i < 600, 'no sign-in link was mailed');
    await page.waitForTimeout(50);
  }
  await page.goto(`${S.base}/account.html#login=${token}`);
  await page.locator('#me:not([hidden])').waitFor();
  assert.equal(await page.locator('dd[data-field="email"]').textContent(), email);
  assert.equal(new URL(page.url()).hash, '', 'the token is out of the address bar');
  const row = page.locator(`#subs-table tr[data-id="${bought.id}"]`);
  await row.waitFor();
  assert.match(await row.locator('[data-field="next"]').textContent(), /^Renews on/);
  await page.locator(`#receipts-table tr[data-id="${bought.paymentId}"]`).waitFor();
  await row.locator('[data-action="cancel-at-end"]').click();
  await page.waitForFunction((id) => /Ends on/.test(document.querySelector(`#subs-table tr[data-id="${id}"] [data-field="next"]`)?.textContent || ''), bought.id);
  assert.equal((await api('GET', `/api/subscriptions/${bought.id}`)).json.cancelAtPeriodEnd, true);
  await row.locator('[data-action="resume"]').click();
  await page.waitForFunction((id) => /Renews on/.test(document.querySelector(`#subs-table tr[data-id="${id}"] [data-field="next"]`)?.textContent || ''), bought.id);
  assert.equal((await api('GET', `/api/subscriptions/${bought.id}`)).json.cancelAtPeriodEnd, false);
  await row.locator('select[data-field="card"]').selectOption('pm_card_mastercard');
  await row.locator('[data-action="card"]').click();
  await page.locator('#account-status.ok').filter({ hasText: 'pm_card_mastercard' }).waitFor();
  assert.equal((await api('GET', `/api/subscriptions/${bought.id}`)).json.paymentMethodId, 'pm_card_mastercard');
  const place = page.locator(`#lines-table tr[data-id="${entry.id}"]`);
  assert.match(await place.locator('[data-field="status"]').textContent(), /Place 1 in line/);
  await page.screenshot({ path: join(ARTIFACTS, 'account-line.png'), fullPage: true });
  await place.locator('[data-action="leave"]').click();
  await place.waitFor({ state: 'detached' });
  assert.equal((await api('GET', `/api/waitlist/${entry.id}`)).json.status, 'left');
  await row.locator('[data-action="access-link"]').click();
  await page.locator('#new-access-link').waitFor();
  await page.screenshot({ path: join(ARTIFACTS, 'account.png'), fullPage: true });
  const old = await fetch(`${S.base}/api/subscriptions/${bought.id}`, { headers: { Authorization: `Bearer ${bought.accessToken}` } });
  assert.equal(old.status, 401, 'the old access link no longer works');
  // the new link opens the subscription page without the session
  const href = await page.locator('#new-access-link').getAttribute('href');
  const other = await newPage();
  await other.page.goto(`${S.base}/${href}`);
  await other.page.waitForFunction(() => document.querySelector('dd[data-field="status"]')?.textContent === 'active');
  await other.context.close();
  // the signed-in customer's subscription page, through the session
  await row.locator('[data-action="manage"]').click();
  await page.waitForFunction(() => document.querySelector('dd[data-field="status"]')?.textContent === 'active');
  // signed out, the used link signs in no more
  await page.goto(S.base + '/account.html');
  await page.locator('#signout').click();
  await page.locator('#signin:not([hidden])').waitFor();
  await page.goto(`${S.base}/account.html#login=${token}`);
  await page.locator('#account-status.warn').waitFor();
  assert.match(await page.locator('#account-status').textContent(), /used already or has expired/);
  await context.close();
});

test('no console errors on any page', async () => {
  const { context, page } = await newPage();
  for (const path of ['/', '/subscription.html#id=x&token=y', '/waitlist.html#id=x&token=y', '/account.html', '/admin.html', '/api.html']) {
    await page.goto(S.base + path);
    await page.waitForLoadState('networkidle');
  }
  await page.goto(S.base + '/api.html#purchase');
  await page.screenshot({ path: join(ARTIFACTS, 'api.png') });
  await page.goto(S.base + '/');
  await page.screenshot({ path: join(ARTIFACTS, 'purchase.png'), fullPage: true });
  await context.close();
  // Answered API refusals (a decline, a sold-out plan, an invalid access link) are part of the
  // flows above; Chromium logs each as a failed resource load. Anything else is an error.
  const real = consoleErrors.filter((e) => !/Failed to load resource: the server responded with a status of (401|402|403|409)/.test(e));
  assert.deepEqual(real, []);
});

let passed = 0, failed = 0;
for (const t of tests) {
  try {
    await t.fn();
    passed++;
    console.log(`${t.name} ... ok`);
  } catch (e) {
    failed++;
    console.log(`${t.name} ... FAIL\n${e.stack}`);
  }
}
await browser.close();
SHOP.server.close();
STRANGER.server.close();
if (failed) console.log(S.logs().split('\n').slice(-60).join('\n'));
S.proc.kill('SIGTERM');
await new Promise((r) => S.proc.on('exit', r));
rmSync(S.dir, { recursive: true, force: true });
MAIL.proc.kill('SIGTERM');
rmSync(MAIL.dir, { recursive: true, force: true });
console.log(`RESULT ${passed} ${failed} 0`);
process.exit(failed ? 1 : 0);
