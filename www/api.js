// api.js - talking to /api: JSON in and out, errors as {status, code, message}, and purchases
// that are safe to retry (one Idempotency-Key per attempt, reused on every retry).
export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = (body && body.code) || 'NETWORK_ERROR';
    this.details = (body && body.details) || {};
    this.traceId = body && body.traceId;
  }
}

export async function api(method, path, { body, token, key, timeoutMs = 15000 } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  if (key) headers['Idempotency-Key'] = key;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                              signal: controller.signal, cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, { code: 'NETWORK_ERROR', message: 'The network failed; your request is safe to retry.' });
  } finally {
    clearTimeout(timer);
  }
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) {
    const err = new ApiError(res.status, data);
    err.retryAfter = Number(res.headers.get('Retry-After')) || 1;
    throw err;
  }
  return data;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A request that is safe to retry: its key is made once and sent again on every retry, so a
// timeout, a cut connection or a double click can never hold or buy twice. Retries only what
// the server says is safe.
export async function retrying(path, body, key, { token, attempts = 4, onRetry } = {}) {
  for (let i = 1; ; i++) {
    try {
      return await api('POST', path, { body, key, token });
    } catch (e) {
      const retryable = e.code === 'NETWORK_ERROR' || e.status === 503 || e.code === 'REQUEST_IN_PROGRESS';
      if (!retryable || i >= attempts) throw e;
      if (onRetry) onRetry(i);
      await sleep(Math.min(e.retryAfter || 1, 3) * 1000);
    }
  }
}

// A purchase in one request (hold and pay), retried under its one key.
export const purchase = (body, key, opts) => retrying('/api/subscriptions/purchase', body, key, opts);

export function money(cents) {
  return new Intl.NumberFormat(undefined, { style: 'currency', currency: 'USD' }).format(cents / 100);
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : '—';
}

// Builds an element: el('p', {class: 'x'}, 'text', child, ...). Text is never parsed as HTML.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}
