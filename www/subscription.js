// subscription.js - view and cancel a subscription with its access token. The id and token
// travel in the URL fragment, which browsers never send to a server or a log.
import { api, money, when, el } from './api.js';

const params = new URLSearchParams(location.hash.slice(1));
const id = params.get('id');
const token = params.get('token');
const facts = document.getElementById('sub');
const status = document.getElementById('sub-status');
const cancel = document.getElementById('cancel');

function say(kind, text) {
  status.className = `notice ${kind}`;
  status.textContent = text;
}

function render(s) {
  const rows = [['Status', s.status], ['Plan', s.planName], ['Amount', money(s.amount_cents)],
                ['Starts', when(s.startDate)], ['Ends', when(s.endDate)], ['Subscription', s.id],
                ['Payment', s.paymentId || '—']];
  facts.replaceChildren(...rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', { 'data-field': k.toLowerCase() }, v)]));
  cancel.hidden = s.status !== 'active';
}

async function load() {
  if (!id || !token) {
    say('bad', 'This link is incomplete: it needs the subscription id and its access token.');
    return;
  }
  try {
    render(await api('GET', `/api/subscriptions/${encodeURIComponent(id)}`, { token }));
  } catch (e) {
    say('bad', e.status === 401 || e.status === 403 ? 'This access link is not valid for this subscription.'
                                                  : `Could not load the subscription (${e.code}).`);
  }
}

cancel.addEventListener('click', async () => {
  if (!confirm('Cancel this subscription? Your seat goes back on sale.')) return;
  cancel.disabled = true;
  try {
    render(await api('POST', `/api/subscriptions/${encodeURIComponent(id)}/cancel`, { token, key: crypto.randomUUID() }));
    say('ok', 'Your subscription is cancelled and the seat is back on sale.');
  } catch (e) {
    say('bad', e.code === 'ALREADY_CANCELLED' ? 'This subscription was already cancelled.' : `Could not cancel (${e.code}).`);
  } finally {
    cancel.disabled = false;
  }
});

load();
