// Routes (`#/` the list, `#/device/ID` one device) and the device page: facts, last readings,
// status history and rejects.

import { $, REJECTS_REFRESH_MS, REJECTS_SHOWN, SOURCE_TEXT, STATUS_HISTORY_MAX, clockFormat, numberFormat, timeFormat } from './constants.js';
import { formatAge, formatDuration } from './format.js';
import { device, devices, dirty, dirtyDevices, schedule, view } from './state.js';
import { api, reportError } from './api.js';
import { chart, renderChartHead } from './chart.js';
import { ensureSelection, moveFocus } from './list.js';

const LIST_PANELS = ['devices-panel', 'stream-panel'];
const PAGE_PANELS = ['device-panel', 'last-panel', 'history-panel', 'rejects-panel'];
let rejectsTimer = null;

function parseRoute() {
  const m = /^#\/device\/(.+)$/.exec(location.hash);
  if (m) {
    try {
      return { route: 'device', id: decodeURIComponent(m[1]) };
    } catch {
      // a malformed id: the list
    }
  }
  return { route: 'list', id: null };
}

export function route() {
  const { route: next, id } = parseRoute();
  const previousPage = view.page;
  view.route = next;
  view.page = id;
  document.body.dataset.view = next;
  for (const p of LIST_PANELS) $(p).hidden = next !== 'list';
  for (const p of PAGE_PANELS) $(p).hidden = next !== 'device';
  clearInterval(rejectsTimer);
  rejectsTimer = null;
  if (next === 'device') {
    document.title = `${id} · edgewatch`;
    $('skip').href = '#device-title';
    $('skip').textContent = 'Skip to the device';
    view.selected = id;
    chart.setCompact(false);
    chart.show(id);
    $('rejects-body').replaceChildren();
    $('rejects-table').hidden = true;
    $('rejects-state').textContent = 'Loading…';
    $('payload-text').hidden = true;
    $('payload-state').textContent = 'Loading…';
    loadRejects();
    loadHistory(id);
    rejectsTimer = setInterval(loadRejects, REJECTS_REFRESH_MS);
    dirty.page = true;
    renderDevicePage();
    $('device-title').focus({ preventScroll: true });
    scrollTo(0, 0);
  } else {
    document.title = 'edgewatch';
    $('skip').href = '#devices-title';
    $('skip').textContent = 'Skip to devices';
    chart.setCompact(true);
    ensureSelection();
    for (const dev of devices.values()) dirtyDevices.add(dev);
    if (previousPage) {
      const row = devices.get(previousPage)?.el;
      if (row?.isConnected) {
        moveFocus(row, true);
        row.scrollIntoView({ block: 'nearest' });
      }
    }
  }
  renderChartHead();
  schedule();
}

/** A time on the device page: the time of day when it is today, else date and time. */
function fmtTime(ms) {
  if (!ms) return '—';
  return new Date(ms).toDateString() === new Date().toDateString() ? clockFormat.format(ms) : timeFormat.format(ms);
}

function statusSpan(status) {
  const span = document.createElement('span');
  span.className = 'status';
  span.dataset.status = status;
  span.textContent = status;
  return span;
}

export function renderDevicePage() {
  if (!dirty.page || view.route !== 'device') return;
  dirty.page = false;
  const id = view.page;
  const dev = devices.get(id);
  $('device-title').textContent = id;
  const facts = [];
  const fact = (term, ...content) => {
    const dt = document.createElement('dt');
    dt.textContent = term;
    const dd = document.createElement('dd');
    dd.append(...content);
    facts.push(dt, dd);
  };
  if (!dev) {
    fact('Status', 'no readings or status known for this device (yet)');
  } else {
    const since = dev.since ? ` since ${fmtTime(dev.since)}` : '';
    const source = SOURCE_TEXT[dev.source] ? `, ${SOURCE_TEXT[dev.source]}` : '';
    fact('Status', statusSpan(dev.status), `${since}${source}`);
    const seen = document.createElement('span');
    seen.className = 'page-age';
    seen.textContent = dev.lastSeen ? `${formatAge(Date.now() - dev.lastSeen)} ago (${fmtTime(dev.lastSeen)})` : 'never';
    fact('Last seen', seen);
    fact('Reports every', dev.reportingIntervalMs ? `about ${formatDuration(dev.reportingIntervalMs)}` : 'not known yet');
    if (dev.staleAfterMs) fact('Stale after', formatDuration(dev.staleAfterMs));
    fact('Metrics', String(dev.metrics.size));
  }
  $('device-facts').replaceChildren(...facts);

  const rows = [];
  const list = dev ? [...dev.metrics.values()].sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true })) : [];
  for (const m of list) {
    const tr = document.createElement('tr');
    tr.dataset.metric = m.name;
    const cells = [m.name, m.value === null ? '—' : numberFormat.format(m.value), m.unit ?? '', fmtTime(m.time), fmtTime(m.seen), m.seq ?? '—'];
    cells.forEach((text, i) => {
      const td = document.createElement(i === 0 ? 'th' : 'td');
      if (i === 0) td.scope = 'row';
      if (i === 1 || i === 5) td.className = 'num';
      if (i === 4) td.className = 'col-received';
      td.textContent = String(text);
      tr.append(td);
    });
    rows.push(tr);
  }
  $('last-body').replaceChildren(...rows);

  const items = (dev?.history ?? []).slice().reverse().map((h) => {
    const li = document.createElement('li');
    const time = document.createElement('time');
    time.dateTime = new Date(h.at).toISOString();
    time.textContent = fmtTime(h.at);
    const how = { hub: 'the hub’s device list', live: 'live status event', reading: 'a reading arrived', record: 'the hub’s record' }[h.how] ?? h.how;
    const note = document.createElement('span');
    note.className = 'hint-inline';
    note.textContent = `${SOURCE_TEXT[h.source] ? `${SOURCE_TEXT[h.source]} · ` : ''}${how}`;
    li.append(time, ' ', statusSpan(h.status), ' ', note);
    return li;
  });
  if (!items.length) {
    const li = document.createElement('li');
    li.textContent = 'No status known yet.';
    items.push(li);
  }
  $('history-list').replaceChildren(...items);
}

/** GET /v1/devices/{id}/history: the hub's record of the device's status changes since it
 * started, merged into the page's bounded history (a change already known is not repeated). */
async function loadHistory(id) {
  try {
    const body = await api(`/v1/devices/${encodeURIComponent(id)}/history`);
    if (view.page !== id) return;
    const dev = device(id);
    for (const c of body.changes ?? []) {
      const at = Date.parse(c.at);
      if (dev.history.some((h) => h.status === c.status && Math.abs(h.at - at) < 1000)) continue;
      dev.history.push({ status: c.status, source: c.statusSource, at, how: 'record' });
    }
    dev.history.sort((a, b) => a.at - b.at);
    if (dev.history.length > STATUS_HISTORY_MAX) dev.history.splice(0, dev.history.length - STATUS_HISTORY_MAX);
    dirty.page = true;
    schedule();
  } catch (err) {
    if (view.page === id) reportError(err);
  }
}

/** GET /v1/devices/{id}/payload: the last raw payload of the page's device. */
async function loadPayload(id, generation) {
  const state = $('payload-state');
  const text = $('payload-text');
  try {
    const p = await api(`/v1/devices/${encodeURIComponent(id)}/payload`);
    if (generation !== rejectsGeneration || view.page !== id) return;
    text.textContent = p.payload + (p.truncated ? '…' : '');
    text.hidden = false;
    state.textContent = `On ${p.topic}, received ${fmtTime(Date.parse(p.receivedAt))}, ${p.payloadLen} bytes${p.truncated ? ' (the first 512 shown)' : ''}.`;
  } catch (err) {
    if (generation !== rejectsGeneration || view.page !== id) return;
    text.hidden = true;
    state.textContent = err.status === 404
      ? 'No payload from this device since the hub started.'
      : `Could not load the last payload: ${err.message}.`;
  }
}

/** GET /v1/rejects, the ones of the page's device (`deviceId`), newest first; and its last
 * payload. */
let rejectsGeneration = 0;
async function loadRejects() {
  const id = view.page;
  if (!id) return;
  loadPayload(id, rejectsGeneration + 1);
  const generation = ++rejectsGeneration;
  const state = $('rejects-state');
  try {
    const body = await api('/v1/rejects');
    if (generation !== rejectsGeneration || view.page !== id) return;
    const recent = body.recent ?? [];
    const mine = recent.filter((r) => r.deviceId === id).reverse();
    const shown = mine.slice(0, REJECTS_SHOWN);
    $('rejects-body').replaceChildren(...shown.map((r) => {
      const tr = document.createElement('tr');
      for (const [i, text] of [fmtTime(Date.parse(r.receivedAt)), r.reason, r.topic, r.message, `${r.payloadPreview}${r.payloadLen > r.payloadPreview.length ? '…' : ''} (${r.payloadLen} B)`].entries()) {
        const td = document.createElement('td');
        td.textContent = text;
        if (i === 4) td.className = 'payload';
        tr.append(td);
      }
      return tr;
    }));
    $('rejects-table').hidden = shown.length === 0;
    state.textContent = mine.length
      ? `${mine.length} of the hub’s ${recent.length} most recent rejects came from ${id}${mine.length > shown.length ? ` (the newest ${shown.length} shown)` : ''}.`
      : `None of the hub’s ${recent.length} most recent rejects came from ${id}.`;
  } catch (err) {
    if (generation !== rejectsGeneration) return;
    reportError(err);
    state.textContent = `Could not load the rejects: ${err.message}.`;
  }
}
