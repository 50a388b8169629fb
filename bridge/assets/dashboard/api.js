// The hub's API (GET as JSON, the way to the login page) and the page's link to the hub: the
// connection box and the "hub lost" banner.

import { $, DEVICES_REFRESH_MS, POLL_FAILURES_LOST, TRANSPORT_LABELS } from './constants.js';

/** Sends the browser to the login page (and back here after it). */
export function toLogin() {
  location.assign('/login?next=' + encodeURIComponent(location.pathname + location.search + location.hash));
}

/** GET `path` as JSON. Rejects with an Error carrying `status` (HTTP) or `network: true`. */
export async function api(path) {
  let res;
  try {
    res = await fetch(path, { cache: 'no-store' });
  } catch (err) {
    throw Object.assign(new Error(`the hub did not answer (${err.message})`), { network: true });
  }
  if (res.status === 401) toLogin();
  const body = await res.json().catch(() => null);
  if (!res.ok) throw Object.assign(new Error(body?.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${res.status}`), { status: res.status });
  return body;
}

export function reportError(err) {
  // For the curious; the page shows failures in the banner or next to what failed.
  console.warn('edgewatch:', err?.message ?? err);
}

/**
 * The page's own link to the hub: the live client's state, and whether the periodic device
 * polls get answers (a WebSocket can look open for a while after the hub is gone; a proxy can
 * keep answering the stream while the API fails). While it is down, a banner says so and the
 * device list is dimmed with grey status dots: what is on screen is not live.
 */
export const hubLink = { state: 'connecting', attempt: 1, pollFailures: 0, lostAt: null };

export function updateHubLink() {
  const { state, attempt, pollFailures } = hubLink;
  const clientLost = state === 'reconnecting' || state === 'closed' || (state === 'connecting' && attempt > 1);
  const pollsLost = pollFailures >= POLL_FAILURES_LOST;
  const lost = clientLost || pollsLost;
  if (lost && hubLink.lostAt === null) hubLink.lostAt = new Date();
  if (!lost) hubLink.lostAt = null;
  document.body.dataset.hub = lost ? 'lost' : state === 'connected' ? 'live' : 'connecting';
  $('hub-lost').hidden = !lost;
  if (!lost) return;
  $('hub-lost-since').textContent = ` at ${hubLink.lostAt.toLocaleTimeString()}`;
  let retry;
  if (state === 'closed') retry = 'Reload the page to reconnect.';
  else if (clientLost) retry = `Reconnecting${attempt > 1 ? ` (attempt ${attempt})` : ''}…`;
  else retry = `The hub has not answered the last ${pollFailures} requests; asking again every ${DEVICES_REFRESH_MS / 1000} s…`;
  $('hub-lost-retry').textContent = retry;
}

export function showConnection({ state, transport, attempt }) {
  hubLink.state = state;
  hubLink.attempt = attempt;
  updateHubLink();
  const box = $('connection');
  box.dataset.state = state;
  box.dataset.transport = transport ?? '';
  const label = TRANSPORT_LABELS[transport] ?? '';
  let text = state;
  if (state === 'reconnecting' && attempt > 0) text += ` (attempt ${attempt})`;
  else if (state === 'connecting' && attempt > 1) text += ` (attempt ${attempt})`;
  $('conn-text').textContent = label ? `${label} · ${text}` : text;
}
