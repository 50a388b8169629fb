// The stream panel: watch any topic filter with a second client, newest message first.

import { EdgewatchClient } from '/v1/sdk/edgewatch.js';
import { $, STREAM_MAX_ITEMS, TRANSPORT_LABELS, clockFormat, transports } from './constants.js';
import { schedule } from './state.js';

const streamView = { client: null, queue: [] };

function validFilter(f) {
  if (!f || f.length > 1024) return false;
  const levels = f.split('/');
  return levels.every((l, i) => (l.includes('#') ? l === '#' && i === levels.length - 1 : !l.includes('+') || l === '+'));
}

export function setupStream() {
  const form = $('stream-form');
  const toggle = $('stream-toggle');
  const state = $('stream-state');
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    if (streamView.client) {
      stopStream();
      return;
    }
    const filter = $('stream-filter').value.trim();
    if (!validFilter(filter)) {
      state.textContent = `“${filter}” is not a valid topic filter: # only as the last level, + alone in a level.`;
      return;
    }
    const c = new EdgewatchClient({ filters: [filter], transports });
    c.addEventListener('message', (ev) => {
      streamView.queue.push({ at: new Date(), message: ev.detail.message });
      if (streamView.queue.length > STREAM_MAX_ITEMS) streamView.queue.shift();
      schedule();
    });
    c.addEventListener('state', (ev) => {
      const { state: st, transport, attempt } = ev.detail;
      if (st === 'closed') return;
      state.textContent = `Watching ${filter} over ${TRANSPORT_LABELS[transport] ?? transport}: ${st}${attempt > 1 ? ` (attempt ${attempt})` : ''}.`;
    });
    c.addEventListener('error', (ev) => {
      if (ev.detail.code !== 'connect_failed') state.textContent = `Error ${ev.detail.code}: ${ev.detail.message}`;
    });
    streamView.client = c.connect();
    toggle.textContent = 'Stop';
    $('stream-filter').disabled = true;
  });
  $('stream-clear').addEventListener('click', () => {
    streamView.queue = [];
    $('stream-log').replaceChildren();
  });
}

function stopStream() {
  streamView.client?.close();
  streamView.client = null;
  $('stream-toggle').textContent = 'Watch';
  $('stream-filter').disabled = false;
  $('stream-state').textContent = 'Stopped.';
}

export function renderStream() {
  if (!streamView.queue.length) return;
  const log = $('stream-log');
  const items = streamView.queue.splice(0);
  const frag = document.createDocumentFragment();
  for (let i = items.length - 1; i >= 0; i--) {
    const { at, message } = items[i];
    const li = document.createElement('li');
    const time = document.createElement('time');
    time.dateTime = at.toISOString();
    time.textContent = clockFormat.format(at);
    const kind = document.createElement('span');
    kind.className = `kind kind-${message.type}`;
    kind.textContent = message.type;
    li.append(time, kind, JSON.stringify(message));
    frag.append(li);
  }
  log.prepend(frag);
  while (log.childElementCount > STREAM_MAX_ITEMS) log.lastElementChild.remove();
}
