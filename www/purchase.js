// purchase.js - the purchase page: plans with live seat counts, and a purchase dialog whose
// attempt keeps one Idempotency-Key through retries and double clicks.
import { api, purchase, money, el } from './api.js';

const list = document.getElementById('plans');
const status = document.getElementById('status');
const dialog = document.getElementById('buy');
const form = document.getElementById('buy-form');
const result = document.getElementById('buy-result');
const submit = document.getElementById('buy-submit');
let current = null;      // the plan being bought
let attemptKey = null;   // the Idempotency-Key of the attempt in the dialog
let busy = false;
let lastFocus = null;

function planCard(p) {
  const left = p.subscriptions_left;
  const seats = p.isSoldOut ? 'Sold out' : `${left} of ${p.total_capacity} seats left`;
  const meter = el('span');
  meter.style.width = `${Math.min(100, p.occupancyPercentage)}%`;
  return el('li', { class: 'plan' + (p.isSoldOut ? ' soldout' : ''), 'data-plan': p.id },
    el('h2', {}, p.name),
    p.isSoldOut ? el('span', { class: 'badge soldout' }, 'Sold out')
      : left <= 3 ? el('span', { class: 'badge few' }, 'Almost gone') : null,
    el('div', { class: 'price' }, money(p.price_cents), el('small', {}, ` / ${p.duration_days} days`)),
    p.description ? el('p', {}, p.description) : null,
    p.features.length ? el('ul', { class: 'features' }, p.features.map((f) => el('li', {}, f))) : null,
    el('div', { class: 'meter', role: 'presentation' }, meter),
    el('p', { class: 'seats', 'data-seats': left }, seats),
    el('button', { type: 'button', disabled: p.isSoldOut, 'aria-label': `Buy a seat of ${p.name}`,
                   onclick: () => open(p) }, p.isSoldOut ? 'Sold out' : 'Buy a seat'));
}

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

function open(plan) {
  current = plan;
  attemptKey = crypto.randomUUID();
  lastFocus = document.activeElement;
  document.getElementById('buy-plan').textContent = `${plan.name} — ${money(plan.price_cents)}`;
  result.textContent = '';
  result.className = 'notice';
  submit.disabled = false;
  submit.hidden = false;
  dialog.showModal();
  document.getElementById('buy-name').focus();
}

function close() {
  dialog.close();
  if (lastFocus) lastFocus.focus();
}

function show(kind, ...content) {
  result.className = `notice ${kind}`;
  result.replaceChildren(...content);
}

form.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  if (busy) return;   // a double click sends nothing twice; the key would make it harmless anyway
  const name = document.getElementById('buy-name').value.trim();
  const email = document.getElementById('buy-email').value.trim();
  if (!name || !/^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(email)) {
    show('bad', 'Please enter your name and a valid email address.');
    return;
  }
  busy = true;
  submit.disabled = true;
  show('warn', 'Reserving your seat and charging your card…');
  const body = { planId: current.id, paymentMethodId: document.getElementById('buy-card').value,
                 customer: { email, name } };
  try {
    const sub = await purchase(body, attemptKey, { onRetry: () => show('warn', 'The connection stumbled; retrying safely…') });
    const link = `subscription.html#id=${encodeURIComponent(sub.id)}&token=${encodeURIComponent(sub.accessToken)}`;
    show('ok', el('strong', {}, 'Your seat is booked. '), `Subscription ${sub.id}, valid until ${new Date(sub.endDate).toLocaleDateString()}. `,
         el('a', { href: link, id: 'sub-link' }, 'View or cancel your subscription'),
         ' (keep this link: it is your access key).');
    submit.hidden = true;
    attemptKey = null;
  } catch (e) {
    if (e.code === 'PAYMENT_FAILED') {
      const why = { insufficient_funds: 'insufficient funds', expired_card: 'the card has expired' }[e.details.declineCode] || 'the card was declined';
      show('bad', `Payment failed: ${why}. You were not charged and the seat was released. Try another card.`);
      attemptKey = crypto.randomUUID();   // a new attempt with another card
      submit.disabled = false;
    } else if (e.code === 'PLAN_SOLD_OUT') {
      show('bad', 'Sorry — this plan just sold out.');
    } else if (e.code === 'PLAN_INACTIVE') {
      show('bad', 'This plan is no longer on sale.');
    } else if (e.code === 'HOLD_EXPIRED') {
      show('bad', 'The payment took too long and the seat was released. Any charge was refunded.');
      attemptKey = crypto.randomUUID();
      submit.disabled = false;
    } else if (e.code === 'VALIDATION_ERROR') {
      show('bad', `Please check your details: ${e.message}`);
      submit.disabled = false;
    } else {
      show('bad', `Something went wrong (${e.code}). Your purchase is safe to retry: press the button again.`);
      submit.disabled = false;   // the same key: a retry cannot buy twice
    }
  } finally {
    busy = false;
    refresh();
  }
});

document.getElementById('buy-cancel').addEventListener('click', close);
dialog.addEventListener('cancel', () => { if (lastFocus) setTimeout(() => lastFocus.focus()); });

refresh();
setInterval(refresh, 3000);
