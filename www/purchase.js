// purchase.js - the purchase page: plans with live seat counts, and a purchase dialog in two
// steps, as a ticket shop's: hold the seats (a checkout session, with a countdown to its
// deadline), then pay. Each step keeps one Idempotency-Key through retries and double clicks.
import { api, retrying, money, el } from './api.js';

const list = document.getElementById('plans');
const status = document.getElementById('status');
const dialog = document.getElementById('buy');
const form = document.getElementById('buy-form');
const result = document.getElementById('buy-result');
const holdButton = document.getElementById('hold-submit');
const payButton = document.getElementById('buy-submit');
const holdStep = document.getElementById('hold-step');
const payStep = document.getElementById('pay-step');
const countdown = document.getElementById('hold-countdown');
const quantity = document.getElementById('buy-quantity');
let current = null;      // the plan being bought
let session = null;      // the open checkout session (its seats are held)
let holdKey = null;      // the Idempotency-Key of the hold
let payKey = null;       // the Idempotency-Key of the payment attempt
let busy = false;
let ticking = null;
let lastFocus = null;

// A plan's term as a buyer reads it: "month", "8 weeks", "30 days".
function term(p) {
  if (!p.interval) return `${p.duration_days} days`;
  return p.interval_count === 1 ? p.interval : `${p.interval_count} ${p.interval}s`;
}

function planCard(p) {
  const left = p.subscriptions_left;
  const seats = p.isSoldOut ? 'Sold out' : `${left} of ${p.total_capacity} seats left`;
  const meter = el('span');
  meter.style.width = `${Math.min(100, p.occupancyPercentage)}%`;
  return el('li', { class: 'plan' + (p.isSoldOut ? ' soldout' : ''), 'data-plan': p.id },
    el('h2', {}, p.name),
    p.isSoldOut ? el('span', { class: 'badge soldout' }, 'Sold out')
      : left <= 3 ? el('span', { class: 'badge few' }, 'Almost gone') : null,
    el('div', { class: 'price' }, money(p.price_cents), el('small', {}, ` / ${term(p)}`)),
    p.description ? el('p', {}, p.description) : null,
    p.features.length ? el('ul', { class: 'features' }, p.features.map((f) => el('li', {}, f))) : null,
    el('div', { class: 'meter', role: 'presentation' }, meter),
    el('p', { class: 'seats', 'data-seats': left }, seats),
    p.isSoldOut && p.waitlist_enabled
      ? el('button', { type: 'button', class: 'join', 'aria-label': `Join the waiting list of ${p.name}`,
                       onclick: () => openJoin(p) }, 'Join the waiting list')
      : el('button', { type: 'button', disabled: p.isSoldOut, 'aria-label': `Buy seats of ${p.name}`,
                       onclick: () => open(p) }, p.isSoldOut ? 'Sold out' : 'Buy seats'));
}

// --- the waiting list: a sold-out plan's line; seats that come free are offered in order ---
const joinDialog = document.getElementById('join');
const joinResult = document.getElementById('join-result');
const joinButton = document.getElementById('join-submit');
let joining = null;      // the plan whose line is joined
let joinKey = null;

function openJoin(plan) {
  joining = plan;
  joinKey = crypto.randomUUID();
  document.getElementById('join-plan').textContent =
    `${plan.name} is sold out. Join its line: when seats come free they are offered to the line in order, ` +
    'and you get a link to pay for yours.';
  document.getElementById('join-quantity').max = String(plan.max_per_order);
  joinResult.textContent = '';
  joinResult.className = 'notice';
  joinButton.hidden = false;
  joinButton.disabled = false;
  if (dialog.open) dialog.close();
  joinDialog.showModal();
  document.getElementById('join-name').focus();
}

joinButton.addEventListener('click', async () => {
  if (busy) return;
  const name = document.getElementById('join-name').value.trim();
  const email = document.getElementById('join-email').value.trim();
  const n = Number(document.getElementById('join-quantity').value);
  if (!name || !/^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(email) || !Number.isInteger(n) || n < 1) {
    joinResult.className = 'notice bad';
    joinResult.textContent = 'Please enter your name, a valid email address and the seats you want.';
    return;
  }
  busy = true;
  joinButton.disabled = true;
  try {
    const w = await retrying(`/api/plans/${joining.id}/waitlist`, { quantity: n, customer: { email, name } }, joinKey);
    const link = `waitlist.html#id=${encodeURIComponent(w.id)}&token=${encodeURIComponent(w.accessToken)}`;
    joinResult.className = 'notice ok';
    joinResult.replaceChildren(el('strong', {}, `You are number ${w.position} in line. `),
      el('a', { href: link, id: 'entry-link' }, 'Follow your place and pay when your seats are offered'),
      ' (keep this link: it is your access key).');
    joinButton.hidden = true;
  } catch (e) {
    joinButton.disabled = false;
    joinKey = crypto.randomUUID();
    joinResult.className = 'notice bad';
    joinResult.textContent = {
      SEATS_AVAILABLE: 'Seats are free right now: close this and buy them instead.',
      ALREADY_WAITING: 'You are in this line already.',
      WAITLIST_DISABLED: 'This plan has no waiting list.',
      CUSTOMER_LIMIT_REACHED: 'You already hold as many seats of this plan as one customer may have.',
    }[e.code] || `Could not join (${e.message}). Press the button again: it is safe.`;
  } finally {
    busy = false;
    refresh();
  }
});

document.getElementById('join-cancel').addEventListener('click', () => joinDialog.close());

async function refresh() {
  try {
    const { plans } = await api('GET', '/api/plans');
    list.replaceChildren(...plans.map(planCard));
    list.setAttribute('aria-busy', 'false');
    if (!plans.length) status.textContent = 'No plans are on sale right now.';
    else if (status.dataset.kind === 'error') { status.textContent = ''; status.className = 'notice'; delete status.dataset.kind; }
  } catch (e) {
    status.className = 'notice warn';
    status.dataset.kind = 'error';
    status.textContent = 'Could not load the plans; retrying…';
  }
}

function step(which) {
  holdStep.disabled = which !== 'hold';
  payStep.disabled = which !== 'pay';
  holdButton.hidden = which !== 'hold';
  payButton.hidden = which !== 'pay';
  holdButton.disabled = payButton.disabled = false;
}

function open(plan) {
  current = plan;
  session = null;
  holdKey = crypto.randomUUID();
  lastFocus = document.activeElement;
  const most = Math.min(plan.max_per_order, plan.subscriptions_left);
  document.getElementById('buy-plan').textContent = `${plan.name} — ${money(plan.price_cents)} a seat`;
  quantity.max = String(most);
  quantity.value = '1';
  document.getElementById('buy-limits').textContent = `Up to ${plan.max_per_order} seats an order` +
    (plan.max_per_customer ? `, ${plan.max_per_customer} a customer.` : '.');
  result.textContent = '';
  result.className = 'notice';
  countdown.hidden = true;
  step('hold');
  dialog.showModal();
  document.getElementById('buy-name').focus();
}

function stopClock() {
  clearInterval(ticking);
  ticking = null;
}

// Counts down to the session's deadline; at 0 the seats are gone back and the hold starts over.
function startClock() {
  const end = Date.parse(session.expiresAt);
  const tick = () => {
    const s = Math.max(0, Math.round((end - Date.now()) / 1000));
    countdown.dataset.seconds = String(s);
    countdown.textContent = `${session.quantity} seat${session.quantity > 1 ? 's' : ''} held for you — ` +
      `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')} left to pay ${money(session.amount_cents)}`;
    if (s === 0 && !busy) {
      stopClock();
      session = null;
      holdKey = crypto.randomUUID();
      countdown.hidden = true;
      step('hold');
      show('bad', 'The hold ended and the seats were released. Hold them again to buy.');
      refresh();
    }
  };
  countdown.hidden = false;
  tick();
  ticking = setInterval(tick, 1000);
}

async function close() {
  stopClock();
  dialog.close();
  if (session) {
    // an unpaid hold gives its seats back at once rather than at its deadline
    const s = session;
    session = null;
    try { await api('POST', `/api/checkout-sessions/${s.id}/expire`, { token: s.clientSecret }); } catch (e) { /* the reaper will */ }
    refresh();
  }
  if (lastFocus) lastFocus.focus();
}

function show(kind, ...content) {
  result.className = `notice ${kind}`;
  result.replaceChildren(...content);
}

const onRetry = () => show('warn', 'The connection stumbled; retrying safely…');

holdButton.addEventListener('click', async () => {
  if (busy) return;   // a double click holds nothing twice; the key would make it harmless anyway
  const name = document.getElementById('buy-name').value.trim();
  const email = document.getElementById('buy-email').value.trim();
  const n = Number(quantity.value);
  if (!name || !/^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(email)) {
    show('bad', 'Please enter your name and a valid email address.');
    return;
  }
  if (!Number.isInteger(n) || n < 1 || n > current.max_per_order) {
    show('bad', `Choose from 1 to ${current.max_per_order} seats.`);
    return;
  }
  busy = true;
  holdButton.disabled = true;
  show('warn', 'Holding your seats…');
  try {
    session = await retrying('/api/checkout-sessions', { planId: current.id, quantity: n, customer: { email, name } },
                             holdKey, { onRetry });
    payKey = crypto.randomUUID();
    step('pay');
    show('ok', 'Your seats are held. Pay before the time runs out.');
    startClock();
    document.getElementById('buy-card').focus();
  } catch (e) {
    holdButton.disabled = false;
    holdKey = crypto.randomUUID();
    if (e.code === 'PLAN_SOLD_OUT') {
      const a = e.details.available, waiting = e.details.waiting;
      if (waiting && current.waitlist_enabled) {
        show('bad', `${waiting} ${waiting > 1 ? 'people are' : 'person is'} waiting for these seats; freed seats go to the line first. `,
             el('button', { type: 'button', class: 'secondary', id: 'join-instead', onclick: () => openJoin(current) },
                'Join the waiting list'));
      } else {
        show('bad', a ? `Sorry — only ${a} seat${a > 1 ? 's are' : ' is'} left.` : 'Sorry — this plan just sold out.');
      }
    } else if (e.code === 'CUSTOMER_LIMIT_REACHED') {
      show('bad', `You already hold ${e.details.held} of the ${e.details.limit} seats one customer may have.`);
    } else if (e.code === 'PLAN_INACTIVE') {
      show('bad', 'This plan is no longer on sale.');
    } else if (e.code === 'VALIDATION_ERROR') {
      show('bad', `Please check your details: ${e.message}`);
    } else {
      show('bad', `Something went wrong (${e.code}). Press the button again: it is safe.`);
    }
  } finally {
    busy = false;
    refresh();
  }
});

form.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  if (busy || !session) return;   // a double click pays nothing twice; the key would make it harmless anyway
  busy = true;
  payButton.disabled = true;
  show('warn', 'Charging your card…');
  try {
    const sub = await retrying(`/api/checkout-sessions/${session.id}/complete`,
                               { paymentMethodId: document.getElementById('buy-card').value }, payKey,
                               { token: session.clientSecret, onRetry });
    stopClock();
    session = null;
    countdown.hidden = true;
    const link = `subscription.html#id=${encodeURIComponent(sub.id)}&token=${encodeURIComponent(sub.accessToken)}`;
    show('ok', el('strong', {}, sub.quantity > 1 ? `Your ${sub.quantity} seats are booked. ` : 'Your seat is booked. '),
         `Subscription ${sub.id}, valid until ${new Date(sub.endDate).toLocaleDateString()}. `,
         el('a', { href: link, id: 'sub-link' }, 'View or cancel your subscription'),
         ' (keep this link: it is your access key).');
    payButton.hidden = true;
  } catch (e) {
    if (e.code === 'PAYMENT_ACTION_REQUIRED') {
      // 3-D Secure: the seats stay held while the buyer confirms with their bank; the same
      // payment is then completed under the same key
      show('warn', 'Your bank asks you to confirm this payment. Your seats are still held. ',
           el('button', { type: 'button', id: 'bank-confirm', onclick: confirmWithBank }, 'Confirm with your bank'));
    } else if (e.code === 'PAYMENT_FAILED') {
      const why = { insufficient_funds: 'insufficient funds', expired_card: 'the card has expired' }[e.details.declineCode] || 'the card was declined';
      show('bad', `Payment failed: ${why}. You were not charged; your seats are still held. Try another card.`);
      payKey = crypto.randomUUID();   // a new attempt with another card
      payButton.disabled = false;
    } else if (e.code === 'SESSION_EXPIRED') {
      stopClock();
      session = null;
      countdown.hidden = true;
      holdKey = crypto.randomUUID();
      step('hold');
      show('bad', 'The hold ended before the payment finished; the seats were released and any charge refunded.');
    } else {
      show('bad', `Something went wrong (${e.code}). Your payment is safe to retry: press the button again.`);
      payButton.disabled = false;   // the same key: a retry cannot charge twice
    }
  } finally {
    busy = false;
    refresh();
  }
});

// The bank's page. With the simulated processor it is its stand-in route; a Stripe
// integration would call Stripe.js's handleNextAction with details.paymentIntentClientSecret
// here (not built: README, "Where this differs"). Then the payment is completed again.
async function confirmWithBank() {
  if (busy || !session) return;
  const button = document.getElementById('bank-confirm');
  if (button) button.disabled = true;
  try {
    await retrying(`/api/checkout-sessions/${session.id}/authenticate`, {}, null, { token: session.clientSecret });
    form.requestSubmit();
  } catch (e) {
    show('bad', `Your bank could not confirm the payment (${e.code}). Your seats are still held: try again or use another card.`);
    payButton.disabled = false;
  }
}

document.getElementById('buy-cancel').addEventListener('click', close);
dialog.addEventListener('cancel', (ev) => { ev.preventDefault(); close(); });

refresh();
setInterval(refresh, 3000);
