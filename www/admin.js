// admin.js - the operator's dashboard: plans with sold / held / left, creating and changing
// plans, recent audit events with their trace ids, and a chart of seats sold over time.
// The admin token is asked once and kept for this browser session only (sessionStorage).
import { api, money, when, el } from './api.js';

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem('numatix-admin-token');
let plans = [];

function say(node, kind, text) {
  node.className = `notice ${kind}`;
  node.textContent = text;
}

async function signIn(candidate) {
  await api('GET', '/api/audit-logs?limit=1', { token: candidate });
  token = candidate;
  sessionStorage.setItem('numatix-admin-token', token);
  $('login').hidden = true;
  $('console').hidden = false;
  await refresh();
}

function planRow(p, stats) {
  const sold = p.total_capacity - p.subscriptions_left - p.subscriptions_held;
  const cap = el('input', { type: 'number', min: 1, step: 1, value: p.total_capacity, 'aria-label': `Seats of ${p.name}` });
  const price = el('input', { type: 'number', min: 0, step: 1, value: p.price_cents, 'aria-label': `Price in cents of ${p.name}` });
  const perOrder = el('input', { type: 'number', min: 1, max: 1000, step: 1, value: p.max_per_order, 'aria-label': `Seats per order of ${p.name}` });
  const perCustomer = el('input', { type: 'number', min: 1, step: 1, value: p.max_per_customer ?? '', placeholder: 'no limit',
                                    'aria-label': `Seats per customer of ${p.name}` });
  const line = el('input', { type: 'checkbox', checked: p.waitlist_enabled, 'aria-label': `Waiting list of ${p.name}` });
  const save = el('button', { type: 'button', class: 'secondary', onclick: () => update(p, {
    total_capacity: Number(cap.value), price_cents: Number(price.value), max_per_order: Number(perOrder.value),
    max_per_customer: perCustomer.value === '' ? null : Number(perCustomer.value), waitlist_enabled: line.checked }) }, 'Save');
  const waiting = stats ? stats.waiting : '?';
  const kinds = stats ? stats.heldByKind : { payments: '?', checkoutSessions: '?' };
  const toggle = el('button', { type: 'button', class: 'secondary',
    onclick: () => update(p, { status: p.status === 'active' ? 'inactive' : 'active' }) },
    p.status === 'active' ? 'Stop sale' : 'Resume sale');
  return el('tr', { 'data-plan': p.id },
    el('th', { scope: 'row' }, p.name), el('td', {}, p.status), el('td', { class: 'num' }, money(p.price_cents)),
    el('td', { class: 'num', 'data-col': 'sold' }, sold),
    el('td', { class: 'num', 'data-col': 'held', title: 'paying / in checkout sessions' }, String(p.subscriptions_held),
       el('small', { 'data-col': 'held-kinds' }, ` (${kinds.payments} paying, ${kinds.checkoutSessions} in checkout)`)),
    el('td', { class: 'num', 'data-col': 'left' }, p.subscriptions_left),
    el('td', { 'data-col': 'limits' }, `${p.max_per_order} an order, ` + (p.max_per_customer ? `${p.max_per_customer} a customer` : 'no customer limit')),
    el('td', { class: 'num', 'data-col': 'waiting' }, p.waitlist_enabled
      ? el('button', { type: 'button', class: 'link', onclick: () => showLine(p) }, `${waiting} waiting`) : 'no list'),
    el('td', {}, el('div', { class: 'inline' }, el('label', {}, 'Seats', cap), el('label', {}, 'Cents', price),
                    el('label', {}, 'Per order', perOrder), el('label', {}, 'Per customer', perCustomer),
                    el('label', {}, 'Waiting list', line), save, toggle)));
}

// A plan's line in order of arrival: who waits (and where), who was offered seats, who bought.
async function showLine(p) {
  try {
    const { entries } = await api('GET', `/api/plans/${p.id}/waitlist?limit=200`, { token });
    $('line-title').textContent = `Waiting list of ${p.name}`;
    $('line-rows').replaceChildren(...entries.map((w) => el('tr', { 'data-entry': w.id },
      el('td', { class: 'num' }, w.position ?? '—'), el('td', {}, w.status), el('td', { class: 'num' }, w.quantity),
      el('td', {}, w.offerExpiresAt ? when(w.offerExpiresAt) : '—'), el('td', {}, when(w.createdAt)))));
    $('line').hidden = false;
  } catch (e) {
    say($('console-status'), 'bad', `Could not read the line of ${p.name} (${e.code}).`);
  }
}

async function update(p, change) {
  try {
    await api('PATCH', `/api/plans/${p.id}`, { token, body: change, key: crypto.randomUUID() });
    say($('console-status'), 'ok', `${p.name} updated.`);
  } catch (e) {
    say($('console-status'), 'bad', e.code === 'CAPACITY_BELOW_SOLD' ? `${p.name}: seats cannot go below those sold or held.` : `${p.name}: ${e.message}`);
  }
  await refresh();
}

async function refresh() {
  try {
    plans = (await api('GET', '/api/plans?status=all')).plans;
    const stats = await Promise.all(plans.map((p) => api('GET', `/api/plans/${p.id}/stats`).catch(() => null)));
    $('plan-rows').replaceChildren(...plans.map((p, i) => planRow(p, stats[i])));
    const chosen = $('chart-plan').value;
    $('chart-plan').replaceChildren(...plans.map((p) => el('option', { value: p.id, selected: p.id === chosen }, p.name)));
    const { byState } = await api('GET', '/api/payments/summary', { token });
    const labels = { authorized: 'Authorized (not yet captured)', captured: 'Captured', voided: 'Voided',
      declined: 'Declined', refunded: 'Refunded', refundPending: 'Refunds pending', disputed: 'Disputed' };
    $('payment-rows').replaceChildren(...Object.entries(labels).map(([k, label]) => el('tr', { 'data-state': k },
      el('td', {}, label), el('td', { class: 'num' }, String(byState[k].count)),
      el('td', { class: 'num' }, money(byState[k].amount_cents)))));
    const { subscriptions } = await api('GET', '/api/renewals?days=7&limit=50', { token });
    $('renewal-rows').replaceChildren(...subscriptions.map((s) => el('tr', { 'data-status': s.status },
      el('td', {}, when(s.status === 'past_due' ? s.nextPaymentAttemptAt : s.currentPeriodEnd)),
      el('td', {}, el('code', {}, s.id)), el('td', {}, s.planName), el('td', {}, s.status.replace('_', ' ')),
      el('td', {}, s.status === 'past_due' ? 'retry the card' : s.renews ? 'renew' : 'end, seats back'),
      el('td', { class: 'num' }, money(s.amount_cents)))));
    const { logs } = await api('GET', '/api/audit-logs?limit=30', { token });
    const names = Object.fromEntries(plans.map((p) => [p.id, p.name]));
    $('audit-rows').replaceChildren(...logs.map((l) => el('tr', {},
      el('td', {}, when(l.at)), el('td', {}, l.action), el('td', {}, names[l.planId] || '—'),
      el('td', { class: 'num' }, l.after && l.after.subscriptions_left !== undefined ? l.after.subscriptions_left : ''),
      el('td', {}, l.actorType), el('td', {}, el('code', {}, l.traceId)))));
    await chart();
  } catch (e) {
    if (e.status === 401) return signOut('Your session ended; sign in again.');
    say($('console-status'), 'warn', `Could not refresh (${e.code}).`);
  }
}

// Seats sold over time: +1 at each activation, -1 at each cancellation of the plan.
async function chart() {
  const id = $('chart-plan').value;
  const box = $('chart');
  if (!id) { box.replaceChildren(); return; }
  const events = [];
  let cursor = null;
  for (let page = 0; page < 10; page++) {
    const r = await api('GET', `/api/audit-logs?planId=${id}&limit=200${cursor ? `&cursor=${cursor}` : ''}`, { token });
    events.push(...r.logs);
    cursor = r.nextCursor;
    if (!cursor) break;
  }
  const points = [];
  let sold = 0;
  for (const ev of events.reverse()) {
    if (ev.action === 'subscription.activated') sold++;
    else if (ev.action === 'subscription.cancelled') sold--;
    else if (ev.action !== 'plan.created') continue;
    points.push([new Date(ev.at).getTime(), sold]);
  }
  points.push([Date.now(), sold]);
  const W = 480, H = 220, P = 32;
  const t0 = points[0][0], t1 = Math.max(points[points.length - 1][0], t0 + 1);
  const max = Math.max(1, ...points.map((p) => p[1]));
  const x = (t) => P + ((t - t0) / (t1 - t0)) * (W - 2 * P);
  const y = (v) => H - P - (v / max) * (H - 2 * P);
  let d = '';
  points.forEach(([t, v], i) => { d += `${i ? 'L' : 'M'}${x(t).toFixed(1)},${y(i ? points[i - 1][1] : v).toFixed(1)} L${x(t).toFixed(1)},${y(v).toFixed(1)} `; });
  const NS = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n);
  };
  add('line', { class: 'axis', x1: P, y1: H - P, x2: W - P, y2: H - P });
  add('line', { class: 'axis', x1: P, y1: P, x2: P, y2: H - P });
  add('path', { class: 'line', d });
  add('text', { x: 4, y: y(max) + 4 }, String(max));
  add('text', { x: 4, y: H - P + 4 }, '0');
  add('text', { x: P, y: H - 8 }, new Date(t0).toLocaleTimeString());
  add('text', { x: W - P - 60, y: H - 8 }, new Date(t1).toLocaleTimeString());
  box.setAttribute('aria-label', `Seats sold over time: ${sold} now`);
  box.replaceChildren(svg, el('p', {}, `${sold} ${sold === 1 ? 'seat' : 'seats'} sold now.`));
}

function signOut(message) {
  sessionStorage.removeItem('numatix-admin-token');
  token = null;
  $('console').hidden = true;
  $('login').hidden = false;
  if (message) say($('login-status'), 'warn', message);
  $('token').focus();
}

$('login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  try {
    await signIn($('token').value.trim());
  } catch (e) {
    say($('login-status'), 'bad', e.status === 401 ? 'That token is not valid.' : `Could not sign in (${e.code}).`);
  }
});

$('create-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const features = $('new-features').value.split(',').map((s) => s.trim()).filter(Boolean);
  const body = { name: $('new-name').value.trim(), description: $('new-description').value.trim(),
                 price_cents: Number($('new-price').value), total_capacity: Number($('new-capacity').value),
                 interval: $('new-interval').value, interval_count: Number($('new-count').value) || 1,
                 renewal: $('new-renews').checked ? 'auto' : 'none', features };
  try {
    const p = await api('POST', '/api/plans', { token, body, key: crypto.randomUUID() });
    say($('create-status'), 'ok', `Created ${p.name}.`);
    $('create-form').reset();
    await refresh();
  } catch (e) {
    say($('create-status'), 'bad', e.code === 'PLAN_NAME_TAKEN' ? 'A plan has that name already.' : e.message);
  }
});

$('chart-plan').addEventListener('change', chart);
$('logout').addEventListener('click', () => signOut());

if (token) signIn(token).catch(() => signOut('Sign in with the admin token.'));
setInterval(() => { if (token) refresh(); }, 5000);
