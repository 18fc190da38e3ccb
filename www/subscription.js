// subscription.js - view a subscription with its access token: its period and renewal, cancel it
// now or at its period's end (and undo that), pay a failed renewal with another card, change plan.
// The id and token travel in the URL fragment, which browsers never send to a server or a log.
import { api, retrying, money, when, el } from './api.js';

const params = new URLSearchParams(location.hash.slice(1));
let id = params.get('id');
// a signed-in customer's session opens their own subscriptions (account.js)
let token = params.get('token') || sessionStorage.getItem('numatix-customer-session');
let current = null;      // the subscription shown
let plans = [];
let changeKey = null;    // the Idempotency-Key of the change attempt in the form
const facts = document.getElementById('sub');
const status = document.getElementById('sub-status');
const cancel = document.getElementById('cancel');
const atEnd = document.getElementById('cancel-at-end');
const resume = document.getElementById('resume');

function say(kind, text) {
  status.className = `notice ${kind}`;
  status.textContent = text;
}

function render(s) {
  const live = s.status === 'active' || s.status === 'past_due';
  const rows = [['Status', s.status.replace('_', ' ')], ['Plan', s.planName], ['Amount', money(s.amount_cents)],
                ['Period', `${when(s.currentPeriodStart)} – ${when(s.currentPeriodEnd)}`]];
  if (s.status === 'active') rows.push(s.renews ? ['Renews on', when(s.currentPeriodEnd)] : ['Ends on', when(s.currentPeriodEnd)]);
  if (s.status === 'past_due') rows.push(['Renewal', `due since ${when(s.currentPeriodEnd)}, not yet paid`]);
  if (s.endedAt) rows.push(['Ended', when(s.endedAt)]);
  rows.push(['Card', s.paymentMethodId || '—'], ['Subscription', s.id], ['Payment', s.paymentId || '—']);
  if (s.quantity > 1) rows.splice(2, 0, ['Seats', String(s.quantity)]);
  facts.replaceChildren(...rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', { 'data-field': k.toLowerCase() }, v)]));
  cancel.hidden = !live;
  atEnd.hidden = s.status !== 'active' || s.cancelAtPeriodEnd;
  resume.hidden = !live || !s.cancelAtPeriodEnd;
  // a renewal that failed: when it is tried again, and a card to pay it with now
  const dunning = document.getElementById('dunning');
  dunning.hidden = s.status !== 'past_due';
  if (s.status === 'past_due')
    document.getElementById('dunning-next').textContent = s.nextPaymentAttemptAt
      ? `We try your card again on ${when(s.nextPaymentAttemptAt)}.` : '';
  current = s;
  offerChange();
}

// The difference for the days left, as the service prorates it (it decides; this is a preview).
function difference(plan) {
  const start = Date.parse(current.startDate), end = Date.parse(current.endDate), now = Date.now();
  if (!(end > now) || !(end > start)) return 0;
  return Math.round((plan.price_cents * current.quantity - current.amount_cents) * (end - Math.max(now, start)) / (end - start));
}

function showDifference() {
  const plan = plans.find((p) => p.id === document.getElementById('change-plan').value);
  const d = plan ? difference(plan) : 0;
  document.getElementById('change-diff').textContent = !plan ? '' : d > 0 ? `You pay about ${money(d)} now.`
    : d < 0 ? `You get about ${money(-d)} back.` : 'No difference to pay.';
}

async function offerChange() {
  const section = document.getElementById('change');
  if (current.status !== 'active') { section.hidden = true; return; }
  try { plans = (await api('GET', '/api/plans')).plans; } catch (e) { plans = []; }
  const choices = plans.filter((p) => p.id !== current.planId && p.subscriptions_left >= current.quantity);
  const select = document.getElementById('change-plan');
  select.replaceChildren(...choices.map((p) => el('option', { value: p.id }, `${p.name} — ${money(p.price_cents)}`)));
  section.hidden = choices.length === 0;
  changeKey = crypto.randomUUID();
  showDifference();
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

// One of the holder's moves on the subscription: the answer is the subscription after it.
async function move(button, path, body, done, refusals = {}) {
  button.disabled = true;
  try {
    render(await api('POST', `/api/subscriptions/${encodeURIComponent(id)}/${path}`,
                     { token, key: crypto.randomUUID(), body }));
    say('ok', done(current));
  } catch (e) {
    say('bad', refusals[e.code] || `Could not do that (${e.code}).`);
  } finally {
    button.disabled = false;
  }
}

atEnd.addEventListener('click', () => move(atEnd, 'cancel', { atPeriodEnd: true },
  (s) => `Your subscription ends on ${when(s.currentPeriodEnd)}; nothing more is charged.`,
  { SUBSCRIPTION_NOT_ACTIVE: 'This subscription is no longer active.' }));
resume.addEventListener('click', () => move(resume, 'resume', undefined,
  (s) => `Your subscription renews on ${when(s.currentPeriodEnd)}.`,
  { SUBSCRIPTION_ENDED: 'Its period is over: it can no longer be resumed.' }));
document.getElementById('dunning-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  move(document.getElementById('dunning-submit'), 'payment-method',
       { paymentMethodId: document.getElementById('dunning-card').value },
       (s) => s.status === 'active' ? `Paid: your subscription renews on ${when(s.currentPeriodEnd)}.`
         : 'That card was declined too; your subscription is still past due.');
});

document.getElementById('change-plan').addEventListener('change', () => { changeKey = crypto.randomUUID(); showDifference(); });
document.getElementById('change-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const button = document.getElementById('change-submit');
  const box = document.getElementById('change-status');
  const planId = document.getElementById('change-plan').value;
  if (button.disabled || !planId) return;
  button.disabled = true;
  box.className = 'notice warn';
  box.textContent = 'Changing your plan…';
  try {
    const s = await retrying(`/api/subscriptions/${encodeURIComponent(id)}/change-plan`,
                             { planId, paymentMethodId: document.getElementById('change-card').value }, changeKey, { token });
    // the new subscription has its own access link; the old one keeps reading the old subscription
    id = s.id;
    token = s.accessToken;
    history.replaceState(null, '', `#id=${encodeURIComponent(id)}&token=${encodeURIComponent(token)}`);
    box.className = 'notice ok';
    box.textContent = `Your plan is now ${s.planName}. Keep this page's new link: it is your new access key.`;
    render(s);
  } catch (e) {
    box.className = 'notice bad';
    box.textContent = e.code === 'PAYMENT_FAILED' ? 'The difference was declined; your subscription is unchanged.'
      : e.code === 'PLAN_SOLD_OUT' ? 'That plan has no seats left for you; your subscription is unchanged.'
      : `Could not change the plan (${e.code}); your subscription is unchanged.`;
    changeKey = crypto.randomUUID();
  } finally {
    button.disabled = false;
  }
});

load();
