// account.js - a customer's own page: sign in with an email link (the link's token arrives in
// the URL fragment and is exchanged by a POST, so a mail scanner fetching the link uses nothing),
// then their subscriptions (period, renews or ends on, cancel now or at period end, resume, a new
// access link, and the subscription page for a plan change or another card), receipts and places
// in line. The session token is kept for this browser session only (sessionStorage); the
// subscription and waiting-list pages use it too.
import { api, money, when, el } from './api.js';

const SESSION = 'numatix-customer-session';
const AFTER = 'numatix-after-signin';   // where a mail's link wanted to go, once signed in
const status = document.getElementById('account-status');
const show = (id, on) => { document.getElementById(id).hidden = !on; };
let session = sessionStorage.getItem(SESSION);
let planOf = new Map();   // subscription id -> its plan's name, for the receipts

function say(kind, ...content) {
  status.className = `notice ${kind}`;
  status.replaceChildren(...content);
}

function signedOut(message) {
  sessionStorage.removeItem(SESSION);
  session = null;
  for (const id of ['me', 'subs', 'receipts', 'lines']) show(id, false);
  show('signin', true);
  if (message) say('warn', message);
}

const call = (method, path, body) => api(method, path, { token: session, body,
  key: method === 'POST' ? crypto.randomUUID() : undefined });

// A subscription's next step as its holder reads it.
function next(s) {
  if (s.status === 'active') return s.renews ? `Renews on ${when(s.currentPeriodEnd)}` : `Ends on ${when(s.currentPeriodEnd)}`;
  if (s.status === 'past_due') return s.nextPaymentAttemptAt ? `Payment failed; tried again ${when(s.nextPaymentAttemptAt)}` : 'Payment failed';
  if (s.endedAt) return `Ended ${when(s.endedAt)}`;
  return '—';
}

function actions(s) {
  const live = s.status === 'active' || s.status === 'past_due';
  const out = [el('a', { href: `subscription.html#id=${encodeURIComponent(s.id)}`, 'data-action': 'manage' },
                  live ? 'Change plan or card' : 'Details')];
  const button = (label, action, fn, cls = 'secondary') =>
    el('button', { type: 'button', class: cls, 'data-action': action, onclick: (ev) => fn(ev.currentTarget) }, label);
  if (s.status === 'active' && !s.cancelAtPeriodEnd)
    out.push(button('Cancel at period end', 'cancel-at-end', (b) => move(b, s, 'cancel', { atPeriodEnd: true },
      (n) => `Your ${n.planName} subscription ends on ${when(n.currentPeriodEnd)}; nothing more is charged.`)));
  if (live && s.cancelAtPeriodEnd)
    out.push(button('Keep renewing', 'resume', (b) => move(b, s, 'resume', undefined,
      (n) => `Your ${n.planName} subscription renews on ${when(n.currentPeriodEnd)}.`)));
  if (live)
    out.push(button('Cancel now', 'cancel', (b) => {
      if (confirm(`Cancel ${s.planName} now? Your seat goes back on sale.`))
        move(b, s, 'cancel', {}, (n) => `Your ${n.planName} subscription is cancelled; its seat is back on sale.`);
    }, 'danger'));
  if (s.status !== 'pending')
    out.push(button('New access link', 'access-link', (b) => accessLink(b, s)));
  const box = el('div', { class: 'actions' }, ...out);
  if (!live) return box;
  // another card for the renewals (a past-due one is charged on it at once)
  const card = el('select', { 'aria-label': `Card for ${s.planName}`, 'data-field': 'card' },
    el('option', { value: 'pm_card_visa', selected: s.paymentMethodId === 'pm_card_visa' }, 'Visa (test card)'),
    el('option', { value: 'pm_card_mastercard', selected: s.paymentMethodId === 'pm_card_mastercard' }, 'Mastercard (test card)'));
  const change = button('Use this card', 'card', (b) => move(b, s, 'payment-method', { paymentMethodId: card.value },
    (n) => n.status === 'past_due' ? 'That card was declined too; the renewal is still due.'
      : `Renewals of ${n.planName} are charged to ${n.paymentMethodId} from now on.`));
  return el('div', {}, box, el('div', { class: 'inline actions' }, card, change));
}

async function move(button, s, path, body, done) {
  button.disabled = true;
  try {
    const n = await call('POST', `/api/subscriptions/${encodeURIComponent(s.id)}/${path}`, body);
    say('ok', done(n));
  } catch (e) {
    if (e.status === 401) return signedOut('Your session ended: sign in again.');
    say('bad', e.code === 'SUBSCRIPTION_NOT_ACTIVE' ? 'This subscription is no longer active.'
      : e.code === 'ALREADY_CANCELLED' ? 'This subscription was already cancelled.'
      : `Could not do that (${e.code}).`);
  }
  await loadSubscriptions();
}

// A new access token: the old link stops working; this one opens the subscription without signing in.
async function accessLink(button, s) {
  button.disabled = true;
  const box = document.getElementById('access-link');
  try {
    const n = await call('POST', `/api/subscriptions/${encodeURIComponent(s.id)}/access-token`, {});
    const href = `subscription.html#id=${encodeURIComponent(n.id)}&token=${encodeURIComponent(n.accessToken)}`;
    box.replaceChildren(`A new access link for ${n.planName} (the old one no longer works): `,
                        el('a', { href, id: 'new-access-link' }, 'open it'), '. Keep it private.');
    box.hidden = false;
  } catch (e) {
    say('bad', `Could not make a new link (${e.code}).`);
  } finally {
    button.disabled = false;
  }
}

async function loadSubscriptions() {
  const subs = (await call('GET', '/api/customer/subscriptions?limit=100')).subscriptions
    .filter((s) => s.status !== 'pending' && s.status !== 'failed' && s.status !== 'expired');
  const body = document.querySelector('#subs-table tbody');
  body.replaceChildren(...subs.map((s) => el('tr', { 'data-id': s.id, 'data-status': s.status },
    el('td', {}, s.planName, s.quantity > 1 ? ` × ${s.quantity}` : ''),
    el('td', { 'data-field': 'status' }, s.status.replace('_', ' ') + (s.cancelAtPeriodEnd && s.status === 'active' ? ' (ends at period end)' : '')),
    el('td', {}, `${when(s.currentPeriodStart)} – ${when(s.currentPeriodEnd)}`),
    el('td', { 'data-field': 'next' }, next(s)),
    el('td', { class: 'num' }, money(s.amount_cents)),
    el('td', {}, actions(s)))));
  show('subs-none', subs.length === 0);
  show('subs-table', subs.length > 0);
  for (const s of subs) planOf.set(s.id, s.planName);
}

async function loadReceipts() {
  const pays = (await call('GET', '/api/customer/payments')).payments;
  const what = { charge: 'Payment', renewal: 'Renewal', refund: 'Refund' };
  document.querySelector('#receipts-table tbody').replaceChildren(...pays.map((p) => el('tr', { 'data-id': p.id },
    el('td', {}, when(p.createdAt)),
    el('td', {}, what[p.kind] || p.kind, p.status === 'refunded' ? ' (refunded)' : ''),
    el('td', { class: 'num' }, money(p.kind === 'refund' ? -p.amountCents : p.amountCents)),
    el('td', {}, planOf.get(p.subscriptionId) || el('code', {}, p.subscriptionId)))));
  show('receipts-none', pays.length === 0);
  show('receipts-table', pays.length > 0);
}

async function loadLines() {
  const entries = (await call('GET', '/api/customer/waitlist')).entries
    .filter((w) => w.status === 'waiting' || w.status === 'offered');
  show('lines', entries.length > 0);
  let names = new Map();
  try { names = new Map((await api('GET', '/api/plans')).plans.map((p) => [p.id, p.name])); } catch (e) { /* ids then */ }
  document.querySelector('#lines-table tbody').replaceChildren(...entries.map((w) => el('tr', { 'data-id': w.id },
    el('td', {}, names.get(w.planId) || w.planId),
    el('td', {}, String(w.quantity)),
    el('td', { 'data-field': 'status' }, w.status === 'waiting' ? `Place ${w.position} in line`
                                         : `Seats held for you until ${when(w.offerExpiresAt)}`),
    el('td', {}, el('div', { class: 'actions' },
      el('a', { href: `waitlist.html#id=${encodeURIComponent(w.id)}` }, w.status === 'offered' ? 'Pay for them' : 'Open'),
      el('button', { type: 'button', class: 'secondary', 'data-action': 'leave', onclick: (ev) => leave(ev.currentTarget, w) },
         'Leave the line'))))));
}

async function leave(button, w) {
  button.disabled = true;
  try {
    await call('POST', `/api/waitlist/${encodeURIComponent(w.id)}/leave`, {});
    say('ok', 'You left the line; any seats offered to you went to the next in line.');
  } catch (e) {
    if (e.status === 401) return signedOut('Your session ended: sign in again.');
    say('bad', `Could not leave (${e.code}).`);
  }
  await loadLines();
}

async function loadAccount() {
  let me;
  try {
    me = await call('GET', '/api/customer');
  } catch (e) {
    return e.status === 401 ? signedOut('Your session ended: sign in again.') : say('bad', `Could not load your account (${e.code}).`);
  }
  show('signin', false);
  document.getElementById('me-facts').replaceChildren(el('dt', {}, 'Name'), el('dd', {}, me.name),
                                                      el('dt', {}, 'Email'), el('dd', { 'data-field': 'email' }, me.email));
  show('me', true);
  show('subs', true);
  show('receipts', true);
  try {
    await loadSubscriptions();
    await loadReceipts();
    await loadLines();
  } catch (e) {
    if (e.status === 401) signedOut('Your session ended: sign in again.');
    else say('bad', `Could not load everything (${e.code}).`);
  }
}

// The link's landing: its token exchanged once, then out of the address bar and the history.
async function exchange(loginToken) {
  history.replaceState(null, '', 'account.html');
  try {
    const s = await api('POST', '/api/customer/sessions', { body: { loginToken } });
    session = s.sessionToken;
    sessionStorage.setItem(SESSION, session);
  } catch (e) {
    return signedOut(e.status === 401 ? 'This sign-in link was used already or has expired: ask for another below.'
                                      : `Could not sign you in (${e.code}); ask for another link.`);
  }
  const after = sessionStorage.getItem(AFTER);
  sessionStorage.removeItem(AFTER);
  if (after) location.replace(after);
  else loadAccount();
}

document.getElementById('signin-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const input = document.getElementById('signin-email');
  const button = document.getElementById('signin-submit');
  if (!input.value || !input.checkValidity()) return say('bad', 'Enter the email address you bought with.');
  button.disabled = true;
  try {
    await api('POST', '/api/customer/login', { body: { email: input.value.trim() } });
    say('ok', `If ${input.value.trim()} is the address of a customer, a sign-in link is on its way. It works for 15 minutes.`);
  } catch (e) {
    say('bad', e.status === 429 ? 'Too many sign-in requests: wait a minute.' : `Could not send the link (${e.code}).`);
  } finally {
    button.disabled = false;
  }
});

document.getElementById('signout').addEventListener('click', async () => {
  try { await call('DELETE', '/api/customer/sessions/current'); } catch (e) { /* gone already */ }
  signedOut();
  say('ok', 'You are signed out.');
});

const params = new URLSearchParams(location.hash.slice(1));
const login = params.get('login');
// a mail's link to one subscription or place in line: there once signed in
const target = params.get('subscription') ? `subscription.html#id=${encodeURIComponent(params.get('subscription'))}`
  : params.get('entry') ? `waitlist.html#id=${encodeURIComponent(params.get('entry'))}` : null;
if (login) exchange(login);
else if (target && session) location.replace(target);
else if (target) { sessionStorage.setItem(AFTER, target); signedOut('Sign in to see it: we mail you a link.'); }
else if (session) loadAccount();
else signedOut();
// a link opened in this same tab (only its fragment differs) is a new landing
window.addEventListener('hashchange', () => location.reload());
