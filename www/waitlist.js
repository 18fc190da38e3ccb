// waitlist.js - a place in a plan's waiting list, followed with the entry's access token: the
// position while waiting; once seats are offered, a countdown and the payment of the offer's
// checkout session; leaving the line. The id and token travel in the URL fragment.
import { api, retrying, money, when, el } from './api.js';

const params = new URLSearchParams(location.hash.slice(1));
const id = params.get('id');
// a signed-in customer's session opens their own places in line (account.js)
const token = params.get('token') || sessionStorage.getItem('numatix-customer-session');
const facts = document.getElementById('entry');
const status = document.getElementById('entry-status');
const offer = document.getElementById('offer');
const leave = document.getElementById('leave');
const countdown = document.getElementById('offer-countdown');
let entry = null;
let payKey = crypto.randomUUID();   // one attempt's key, kept through its retries
let busy = false;
let ticking = null;

function say(kind, ...content) {
  status.className = `notice ${kind}`;
  status.replaceChildren(...content);
}

const words = {
  waiting: 'Waiting in line', offered: 'Seats offered to you', converted: 'Bought',
  expired: 'The offer ran out', left: 'You left the line',
};

function render(w) {
  entry = w;
  const rows = [['Status', words[w.status] || w.status], ['Seats', String(w.quantity)]];
  if (w.status === 'waiting') rows.push(['Place in line', String(w.position)]);
  if (w.status === 'offered') rows.push(['Offer ends', when(w.offerExpiresAt)]);
  facts.replaceChildren(...rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', { 'data-field': k.toLowerCase() }, v)]));
  offer.hidden = w.status !== 'offered';
  leave.hidden = w.status !== 'waiting' && w.status !== 'offered';
  clearInterval(ticking);
  if (w.status === 'offered') {
    const end = Date.parse(w.offerExpiresAt);
    const tick = () => {
      const s = Math.max(0, Math.round((end - Date.now()) / 1000));
      countdown.dataset.seconds = String(s);
      countdown.textContent = `${w.quantity} seat${w.quantity > 1 ? 's' : ''} held for you — ` +
        `${Math.floor(s / 3600)}:${String(Math.floor(s / 60) % 60).padStart(2, '0')}:${String(s % 60).padStart(2, '0')} left to pay`;
    };
    tick();
    ticking = setInterval(tick, 1000);
  }
}

async function load() {
  if (busy) return;
  try {
    render(await api('GET', `/api/waitlist/${encodeURIComponent(id)}`, { token }));
    if (status.dataset.kind === 'error') { say('', ''); delete status.dataset.kind; }
  } catch (e) {
    status.dataset.kind = 'error';
    say('bad', e.status === 401 || e.status === 403 || e.status === 404
      ? 'This link does not open a place in line.' : `Could not load your place (${e.code}); retrying…`);
  }
}

offer.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  if (busy || !entry || entry.status !== 'offered') return;
  busy = true;
  say('warn', 'Charging your card…');
  try {
    const sub = await retrying(`/api/checkout-sessions/${entry.checkoutSessionId}/complete`,
                               { paymentMethodId: document.getElementById('offer-card').value }, payKey,
                               { token: entry.clientSecret });
    const link = `subscription.html#id=${encodeURIComponent(sub.id)}&token=${encodeURIComponent(sub.accessToken)}`;
    say('ok', el('strong', {}, 'Your seats are booked. '), `${money(sub.amount_cents)} paid. `,
        el('a', { href: link, id: 'sub-link' }, 'View your subscription'), ' (keep this link).');
  } catch (e) {
    payKey = crypto.randomUUID();
    say('bad', e.code === 'PAYMENT_FAILED' ? 'Payment failed; your seats are still held. Try another card.'
      : e.code === 'SESSION_EXPIRED' ? 'The offer ran out; its seats went to the next in line.'
      : `Something went wrong (${e.code}). Press the button again: it is safe.`);
  } finally {
    busy = false;
    load();
  }
});

leave.addEventListener('click', async () => {
  if (busy) return;
  busy = true;
  try {
    render(await api('POST', `/api/waitlist/${encodeURIComponent(id)}/leave`, { token, key: crypto.randomUUID() }));
    say('ok', 'You left the line; any seats offered to you went to the next in line.');
  } catch (e) {
    say('bad', `Could not leave (${e.code}).`);
  } finally {
    busy = false;
  }
});

if (!id || !token) say('bad', 'This link does not open a place in line.');
else {
  load();
  setInterval(load, 3000);
}
