// The edgewatch dashboard: a client of the hub's public API like any other.
// The catalogue comes from /v1/devices and /v1/series, history from /v1/readings (raw, short
// ranges) and /v1/rollups (long ranges, sparklines), rejects from /v1/rejects, live data from
// the JS client (/v1/sdk/edgewatch.js). Everything the page draws is batched into one
// requestAnimationFrame; incoming messages only update state and mark what changed.
//
// Views (hash routes): `#/` the device list (one row per device) with a chart of the selected
// device and the stream panel; `#/device/ID` one device: its charts, last readings, status
// history and rejects. `?transport=websocket|sse|poll` forces the client's transport.
//
// Sections: constants · state · API and the hub link · catalogue · live data · device list ·
// routes and the device page · charts · stream panel · frame and start.
// (One file: the hub serves the dashboard's assets from a fixed list in
// bridge/src/http/dashboard.rs, so splitting it into modules needs a route there first.)

import { EdgewatchClient, TRANSPORTS } from '/v1/sdk/edgewatch.js';

// ---- constants (every in-page buffer has its bound here) --------------------------------------

const SPARK_POINTS = 60; // values per metric's sparkline
const STREAM_MAX_ITEMS = 200; // lines in the stream panel
const STATUS_HISTORY_MAX = 50; // status changes kept per device
const PENDING_MAX = 5000; // live readings held while a chart's history loads
const RAW_PAGE = 5000; // readings per GET /v1/readings page
const RAW_MAX_POINTS = 20_000; // raw readings one chart load keeps; beyond, rollups are shown
const SERIES_MAX_POINTS = 50_000; // points (history + live) one chart series holds
const REJECTS_SHOWN = 20; // rejects listed on a device page
const RAW_MAX_RANGE_MS = 3_600_000; // ranges up to this are raw readings; longer ones rollups
const DEFAULT_RANGE_MS = 3_600_000;
const ROLLUP_STEPS_MS = [1000, 5000, 10_000, 30_000, 60_000, 300_000, 900_000, 3_600_000];
const ROLLUP_BUCKETS = 360; // at most about this many buckets per range
const UNITS_PER_PLOT = 2; // a plot has a left and a right y-axis, one unit each
const COMPACT_PLOTS = 2; // plots of the list view's chart; the device page shows all
const DEVICES_REFRESH_MS = 3000;
const UPLINKS_REFRESH_MS = 5000;
const REJECTS_REFRESH_MS = 5000;
const POLL_FAILURES_LOST = 2; // failed device polls in a row before the page says the hub is gone
const PALETTE = ['#2f7ed8', '#e8590c', '#2b8a3e', '#c2255c', '#7048e8', '#0c8599', '#b08800', '#5c940d', '#d6336c', '#1098ad', '#f08c00', '#495057'];
const TRANSPORT_LABELS = { websocket: 'WebSocket', sse: 'SSE', poll: 'Long polling' };
const STATUS_RANK = { online: 0, stale: 1, offline: 2, unknown: 3 };
const SOURCE_TEXT = { status: 'from its status topic', readings: 'from its readings', none: '' };
const AXIS_FONT = '12px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
const AXIS_LABEL_FONT = 'bold 12px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const forced = params.get('transport');
const transports = TRANSPORTS.includes(forced) ? [forced] : TRANSPORTS;
const timeZone = Intl.DateTimeFormat().resolvedOptions().timeZone;
const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 3 });
const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'short', timeStyle: 'medium' });
const clockFormat = new Intl.DateTimeFormat(undefined, { timeStyle: 'medium' });
// Axis labels: 24-hour clock, the shortest unambiguous label (room for more ticks on a phone).
const hmsFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' });
const hmFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
const dayFormat = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });

// ---- state ------------------------------------------------------------------------------------

/** deviceId → Device: one row of the list each. */
const devices = new Map();
const view = { route: 'list', page: null, selected: null, sort: 'device', dir: 1, filter: '', order: [] };
let structureDirty = true; // devices added, filter or sort changed
let pageDirty = false; // the device page's text
const dirtyDevices = new Set();
let frameRequested = false;
const rateWindow = []; // receive times of the readings of the last 5 s, for readings/s
/** What the live stream and the sparklines ask for: set from GET /v1/me (`readFilters`). */
let liveFilters = ['sensors/#'];

class Device {
  constructor(id) {
    this.id = id;
    this.status = 'unknown';
    this.source = 'none';
    this.since = 0; // ms: since when `status` holds
    this.lastSeen = 0; // ms: receive time of its latest reading
    this.reportingIntervalMs = null;
    this.staleAfterMs = null;
    this.metrics = new Map(); // name → Metric
    this.history = []; // status changes, oldest first, at most STATUS_HISTORY_MAX
    this.el = null;
    this.cells = null;
    this.shown = {}; // text last written to each cell, to skip unchanged writes
    this.chipsDirty = true; // the set of metrics changed
    this.stale = false; // changed while scrolled out of view
  }
}

class Metric {
  constructor(device, name) {
    this.device = device;
    this.name = name;
    this.topic = `sensors/${device.id}/${name}`;
    this.unit = null;
    this.value = null;
    this.time = 0; // ms: event time of the latest reading
    this.seen = 0; // ms: its receive time
    this.seq = null;
    this.spark = []; // at most SPARK_POINTS values
    this.chip = null;
    this.dirty = true;
  }
}

function device(id) {
  let d = devices.get(id);
  if (!d) {
    d = new Device(id);
    devices.set(id, d);
    structureDirty = true;
  }
  return d;
}

function metric(dev, name) {
  let m = dev.metrics.get(name);
  if (!m) {
    m = new Metric(dev, name);
    dev.metrics.set(name, m);
    dev.chipsDirty = true;
    structureDirty = true; // the filter matches metric names
  }
  return m;
}

function markDevice(dev) {
  dirtyDevices.add(dev);
  if (view.sort !== 'device') structureDirty = true;
  if (view.page === dev.id) pageDirty = true;
}

/** Records a status change in the device's bounded history (`how`: where the page learnt it). */
function setStatus(dev, status, source, atMs, how) {
  const changed = dev.status !== status;
  dev.status = status;
  dev.source = source ?? dev.source;
  dev.since = atMs || dev.since;
  const last = dev.history[dev.history.length - 1];
  if (!last || last.status !== status) {
    dev.history.push({ status, source: dev.source, at: atMs || Date.now(), how });
    dev.history.sort((a, b) => a.at - b.at);
    if (dev.history.length > STATUS_HISTORY_MAX) dev.history.splice(0, dev.history.length - STATUS_HISTORY_MAX);
  }
  if (changed) markDevice(dev);
}

function schedule() {
  if (frameRequested) return;
  frameRequested = true;
  requestAnimationFrame(frame);
}

// ---- API and the hub link ---------------------------------------------------------------------

/** Sends the browser to the login page (and back here after it). */
function toLogin() {
  location.assign('/login?next=' + encodeURIComponent(location.pathname + location.search + location.hash));
}

/** GET `path` as JSON. Rejects with an Error carrying `status` (HTTP) or `network: true`. */
async function api(path) {
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

function reportError(err) {
  // For the curious; the page shows failures in the banner or next to what failed.
  console.warn('edgewatch:', err?.message ?? err);
}

/**
 * The page's own link to the hub: the live client's state, and whether the periodic device
 * polls get answers (a WebSocket can look open for a while after the hub is gone; a proxy can
 * keep answering the stream while the API fails). While it is down, a banner says so and the
 * device list is dimmed with grey status dots: what is on screen is not live.
 */
const hubLink = { state: 'connecting', attempt: 1, pollFailures: 0, lostAt: null };

function updateHubLink() {
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

function showConnection({ state, transport, attempt }) {
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

// ---- catalogue: devices, series, sparklines, uplinks --------------------------------------------

/**
 * The filters to watch for a caller who may read `read` (GET /v1/me): `sensors/#` when that
 * is covered, else the readable filters themselves. Asking for more than one may read is
 * refused (403), not narrowed.
 */
function readFilters(read) {
  if (read.some((f) => f === '#' || f === '+/#' || f === 'sensors/#')) return ['sensors/#'];
  return read.length ? read : ['sensors/#'];
}

function applyDevices(list) {
  for (const d of list) {
    const dev = device(d.deviceId);
    const since = d.since ? Date.parse(d.since) : 0;
    // A live status event newer than this answer wins.
    if (dev.status !== d.status && !(dev.since && since && dev.since > since)) setStatus(dev, d.status, d.statusSource, since, 'hub');
    else if (dev.history.length === 0) setStatus(dev, d.status, d.statusSource, since, 'hub');
    dev.source = d.statusSource ?? dev.source;
    const seen = d.lastSeen ? Date.parse(d.lastSeen) : 0;
    if (seen > dev.lastSeen) {
      dev.lastSeen = seen;
      markDevice(dev);
    }
    dev.reportingIntervalMs = d.reportingIntervalMs ?? null;
    dev.staleAfterMs = d.staleAfterMs ?? null;
    for (const name of d.metrics ?? []) metric(dev, name);
    if (view.page === dev.id) pageDirty = true;
  }
}

function applySeries(list) {
  for (const s of list) {
    const dev = device(s.deviceId);
    const m = metric(dev, s.metric);
    const t = Date.parse(s.lastTimestamp);
    if (t >= m.time) {
      m.value = s.lastValue;
      m.unit = s.unit;
      m.time = t;
      m.seen = Date.parse(s.lastSeen);
      m.seq = s.lastSeq;
      m.dirty = true;
    }
    if (m.seen > dev.lastSeen) dev.lastSeen = m.seen;
    markDevice(dev);
  }
}

function showListError(err) {
  reportError(err);
  const el = $('devices-error');
  el.hidden = !err;
  if (err) el.textContent = `Could not load the device list: ${err.message}. It is asked for again when the hub answers.`;
}

async function loadCatalogue() {
  try {
    const [{ devices: devs }, { series }] = await Promise.all([api('/v1/devices'), api('/v1/series')]);
    hubLink.pollFailures = 0;
    applyDevices(devs);
    applySeries(series);
    $('devices-error').hidden = true;
    ensureSelection();
  } catch (err) {
    showListError(err);
  }
  updateHubLink();
  schedule();
}

/** Presence from /v1/devices: on load, after reconnects, for new devices, and periodically. */
let devicesRequest = null;
let devicesAgain = false;
const presenceAsked = new Set(); // devices whose unknown presence triggered a refresh
function refreshDevices() {
  if (devicesRequest) {
    devicesAgain = true; // one more right after the one in flight
    return devicesRequest;
  }
  devicesRequest = api('/v1/devices')
    .then(({ devices: devs }) => {
      hubLink.pollFailures = 0;
      applyDevices(devs);
      ensureSelection();
    })
    .catch((err) => {
      reportError(err);
      if (err.network || err.status >= 500) hubLink.pollFailures++;
    })
    .finally(() => {
      updateHubLink();
      schedule();
      devicesRequest = null;
      if (devicesAgain) {
        devicesAgain = false;
        refreshDevices();
      }
    });
  return devicesRequest;
}

async function loadSparklines() {
  const to = Date.now();
  const q = new URLSearchParams({ from: String(to - 15 * 60_000), to: String(to), step: '30s' });
  for (const f of liveFilters) q.append('filter', f);
  try {
    const { series } = await api(`/v1/rollups?${q}`);
    for (const s of series) {
      const m = metric(device(s.deviceId), s.metric);
      m.spark = s.points.map((p) => p.avg).concat(m.spark).slice(-SPARK_POINTS);
      m.dirty = true;
      markDevice(m.device);
    }
  } catch (err) {
    reportError(err); // sparklines then start from the live readings
  }
  schedule();
}

/**
 * One line per uplink (GET /v1/uplinks): its state and how far behind it is. Hidden without
 * uplinks (the list is empty for a caller not allowed to see them) or when the hub does not answer.
 */
async function refreshUplinks() {
  const el = $('uplinks');
  try {
    const res = await fetch('/v1/uplinks', { cache: 'no-store' }).catch(() => null);
    const body = res && res.ok ? await res.json().catch(() => null) : null;
    const list = body?.uplinks ?? [];
    el.hidden = list.length === 0;
    el.replaceChildren(...list.map((u) => {
      const item = document.createElement('span');
      item.className = 'uplink';
      item.dataset.state = u.state;
      const lag = u.lagReadings > 0 ? `, ${u.lagReadings} behind (${Number(u.lagSeconds).toFixed(1)} s)` : ', up to date';
      item.textContent = `↑ ${u.name}: ${String(u.state).replace('_', ' ')}${lag}`;
      item.title = `${u.url} · forwarded ${u.forwarded}, resent ${u.resent}, dropped ${u.dropped}` + (u.lastError ? ` · last error: ${u.lastError}` : '');
      return item;
    }));
  } catch (err) {
    reportError(err); // an answer of another shape: the line stays as it was
  }
}

// ---- live data --------------------------------------------------------------------------------

function onReading(r) {
  const dev = device(r.deviceId);
  // A device seen for the first time: fetch its presence (its status was set on connect).
  if (dev.status === 'unknown' && !presenceAsked.has(r.deviceId)) {
    presenceAsked.add(r.deviceId);
    refreshDevices();
  }
  const received = r.receivedAt ? Date.parse(r.receivedAt) : Date.now();
  // A device shown stale because its readings stopped is back: show it at once (the hub's
  // `status` event follows within its sweep period). An explicit `offline` is not overridden.
  if (dev.status === 'stale' && dev.source === 'readings') setStatus(dev, 'online', 'readings', received, 'reading');
  const m = metric(dev, r.metric);
  const t = Date.parse(r.timestamp);
  if (t >= m.time) {
    m.value = r.value;
    m.unit = r.unit ?? m.unit;
    m.time = t;
    m.seen = received;
    m.seq = r.seq;
  }
  m.spark.push(r.value);
  if (m.spark.length > SPARK_POINTS) m.spark.shift();
  m.dirty = true;
  if (received > dev.lastSeen) dev.lastSeen = received;
  markDevice(dev);
  chart.onReading(r, t);
  rateWindow.push(performance.now());
  if (!view.selected) ensureSelection();
  schedule();
}

function onStatus(s) {
  const dev = device(s.deviceId);
  setStatus(dev, s.status ?? (s.online ? 'online' : 'offline'), s.statusSource, s.at ? Date.parse(s.at) : Date.now(), 'live');
  schedule();
}

const client = new EdgewatchClient({ filters: ['sensors/#'], transports });
client.addEventListener('reading', (e) => onReading(e.detail));
client.addEventListener('status', (e) => onStatus(e.detail));
client.addEventListener('state', (e) => {
  showConnection(e.detail);
  // Presence changes are not replayed on resume: refresh the catalogue after a reconnect, and
  // a chart whose history failed to load (the hub was away) asks again.
  if (e.detail.state === 'connected') {
    loadCatalogue();
    if (chart.error) chart.load();
  }
});
client.addEventListener('reset', () => loadCatalogue());
// The session ended (logout elsewhere, expiry, a restart): the client has stopped; log in again.
client.addEventListener('error', (e) => e.detail.status === 401 && toLogin());

// ---- device list ------------------------------------------------------------------------------

const compare = {
  device: (a, b) => a.id.localeCompare(b.id, undefined, { numeric: true }),
  status: (a, b) => STATUS_RANK[a.status] - STATUS_RANK[b.status] || compare.device(a, b),
  seen: (a, b) => b.lastSeen - a.lastSeen || compare.device(a, b),
};

function haystack(dev) {
  let s = `${dev.id} ${dev.status}`;
  for (const m of dev.metrics.values()) s += ` ${m.name} ${m.unit ?? ''}`;
  return s.toLowerCase();
}

function visibleDevices() {
  const words = view.filter.toLowerCase().split(/\s+/).filter(Boolean);
  const list = [];
  for (const dev of devices.values()) {
    if (!words.length) list.push(dev);
    else {
      const hay = haystack(dev);
      if (words.every((w) => hay.includes(w))) list.push(dev);
    }
  }
  const cmp = compare[view.sort];
  list.sort((a, b) => view.dir * cmp(a, b));
  return list;
}

const deviceHref = (id) => `#/device/${encodeURIComponent(id)}`;

function rowElement(dev) {
  if (dev.el) return dev.el;
  const tr = document.createElement('tr');
  tr.dataset.device = dev.id;
  tr.tabIndex = -1;
  tr.setAttribute('role', 'row'); // explicit roles: the phone layout makes the table a grid of blocks
  tr.innerHTML = '<th scope="row" role="rowheader" class="device-cell"><a class="device-id" tabindex="-1"></a></th><td role="cell" class="col-status"><span class="status"></span></td><td role="cell" class="num age"></td><td role="cell" class="metrics"><ul class="chips"></ul></td>';
  const link = tr.querySelector('a');
  link.href = deviceHref(dev.id);
  link.textContent = dev.id;
  link.title = `${dev.id}: open the device page`;
  dev.cells = { status: tr.querySelector('.status'), age: tr.querySelector('.age'), chips: tr.querySelector('.chips') };
  dev.el = tr;
  tr.device = dev;
  rowVisibility.observe(tr);
  return tr;
}

function chipElement(m) {
  const li = document.createElement('li');
  li.className = 'chip';
  li.dataset.topic = m.topic;
  li.dataset.metric = m.name;
  li.innerHTML = '<span class="m"></span> <span class="value"></span><span class="unit"></span><canvas class="spark" width="96" height="28" aria-hidden="true"></canvas>';
  li.querySelector('.m').textContent = m.name;
  m.chip = { li, value: li.querySelector('.value'), unit: li.querySelector('.unit'), canvas: li.querySelector('canvas'), shown: {} };
  return li;
}

/**
 * Rows scrolled out of view are not written to: a change only marks them stale, and they are
 * brought up to date when they scroll back in. With hundreds of devices, live readings then
 * cost a few cell writes per frame instead of a relayout of the whole table.
 */
const onScreen = new Set();
const rowVisibility = new IntersectionObserver(
  (entries) => {
    for (const e of entries) {
      const dev = e.target.device;
      if (e.isIntersecting) {
        onScreen.add(dev);
        if (dev.stale) {
          dev.stale = false;
          dirtyDevices.add(dev);
          schedule();
        }
      } else {
        onScreen.delete(dev);
      }
    }
  },
  { root: document.querySelector('#devices-panel .table-wrap'), rootMargin: '240px 0px' },
);

function setText(shown, key, el, text) {
  if (shown[key] === text) return;
  shown[key] = text;
  el.textContent = text;
}

function updateRow(dev) {
  rowElement(dev);
  const { cells, shown } = dev;
  if (shown.statusAttr !== dev.status) {
    cells.status.dataset.status = dev.status;
    shown.statusAttr = dev.status;
  }
  setText(shown, 'status', cells.status, dev.status);
  updateAge(dev, Date.now());
  const current = String(view.selected === dev.id);
  if (shown.current !== current) {
    shown.current = current;
    if (current === 'true') dev.el.setAttribute('aria-current', 'true');
    else dev.el.removeAttribute('aria-current');
  }
  const list = [...dev.metrics.values()].sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
  if (dev.chipsDirty) {
    dev.chipsDirty = false;
    cells.chips.replaceChildren(...list.map((m) => m.chip?.li ?? chipElement(m)));
    for (const m of list) m.dirty = true;
  }
  for (const m of list) {
    if (!m.dirty) continue;
    m.dirty = false;
    const c = m.chip;
    setText(c.shown, 'value', c.value, m.value === null ? '—' : numberFormat.format(m.value));
    setText(c.shown, 'unit', c.unit, m.unit ?? '');
    drawSpark(c.canvas, m.spark);
  }
}

function updateAge(dev, now) {
  setText(dev.shown, 'age', dev.cells.age, dev.lastSeen ? formatAge(now - dev.lastSeen) : '—');
  const title = dev.lastSeen ? timeFormat.format(dev.lastSeen) : 'never';
  if (dev.shown.ageTitle !== title) {
    dev.shown.ageTitle = title;
    dev.cells.age.title = `last reading received ${title}`;
  }
}

function formatAge(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

let sparkColor = '#0b61c4';
function readThemeColors() {
  const css = getComputedStyle(document.documentElement);
  sparkColor = css.getPropertyValue('--spark').trim() || sparkColor;
  chart.theme(css.getPropertyValue('--muted').trim(), css.getPropertyValue('--grid').trim());
}

function drawSpark(canvas, values) {
  const ctx = canvas.getContext('2d');
  const { width: w, height: h } = canvas;
  ctx.clearRect(0, 0, w, h);
  if (values.length < 2) return;
  let min = Infinity;
  let max = -Infinity;
  for (const v of values) {
    if (v < min) min = v;
    if (v > max) max = v;
  }
  const span = max - min || 1;
  const pad = 3;
  const stepX = (w - 2 * pad) / (SPARK_POINTS - 1);
  const x0 = pad + (SPARK_POINTS - values.length) * stepX; // right-aligned: the newest at the edge
  ctx.beginPath();
  for (let i = 0; i < values.length; i++) {
    const y = h - pad - ((values[i] - min) / span) * (h - 2 * pad);
    if (i === 0) ctx.moveTo(x0 + i * stepX, y);
    else ctx.lineTo(x0 + i * stepX, y);
  }
  ctx.strokeStyle = sparkColor;
  ctx.lineWidth = 2;
  ctx.stroke();
}

function renderTable() {
  const body = $('devices-body');
  const list = visibleDevices();
  const same = list.length === view.order.length && list.every((d, i) => d === view.order[i]);
  if (!same) {
    const focused = document.activeElement?.closest?.('tr[data-device]');
    for (const dev of list) if (!dev.el) updateRow(dev);
    body.replaceChildren(...list.map((d) => d.el));
    view.order = list;
    ensureRovingFocus();
    if (focused && focused.isConnected) focused.focus({ preventScroll: true });
  }
  const total = devices.size;
  let metrics = 0;
  for (const dev of devices.values()) metrics += dev.metrics.size;
  $('device-count').textContent = total ? `(${total} device${total === 1 ? '' : 's'}, ${metrics} metric${metrics === 1 ? '' : 's'}${list.length < total ? `, ${list.length} shown` : ''})` : '';
  $('devices-empty').hidden = total > 0;
  $('devices-table').hidden = total === 0;
}

function ensureRovingFocus() {
  const body = $('devices-body');
  if (!body.querySelector('tr[tabindex="0"]') && body.firstElementChild) body.firstElementChild.tabIndex = 0;
}

function setupTable() {
  const body = $('devices-body');
  body.addEventListener('click', (e) => {
    const tr = e.target.closest('tr[data-device]');
    if (!tr) return;
    moveFocus(tr, !e.target.closest('a'));
    if (!e.target.closest('a')) select(tr.dataset.device); // the link opens the device page
  });
  body.addEventListener('keydown', (e) => {
    const tr = e.target.closest('tr[data-device]');
    if (!tr) return;
    const go = { ArrowDown: tr.nextElementSibling, ArrowUp: tr.previousElementSibling, Home: body.firstElementChild, End: body.lastElementChild }[e.key];
    if (go !== undefined) {
      e.preventDefault();
      if (go) moveFocus(go, true);
    } else if (e.key === 'Enter') {
      e.preventDefault();
      location.hash = deviceHref(tr.dataset.device);
    } else if (e.key === ' ') {
      e.preventDefault();
      select(tr.dataset.device);
    }
  });
  for (const th of document.querySelectorAll('th[data-sort]')) {
    th.querySelector('button').addEventListener('click', () => {
      const key = th.dataset.sort;
      // A column sorts ascending first (last seen: newest first); a second click reverses.
      view.dir = view.sort === key ? -view.dir : 1;
      view.sort = key;
      for (const other of document.querySelectorAll('th[data-sort]')) {
        other.setAttribute('aria-sort', other === th ? (view.dir > 0 ? 'ascending' : 'descending') : 'none');
      }
      structureDirty = true;
      schedule();
    });
  }
  $('device-filter').addEventListener('input', (e) => {
    view.filter = e.target.value;
    structureDirty = true;
    schedule();
  });
}

function moveFocus(tr, focus) {
  for (const other of $('devices-body').querySelectorAll('tr[tabindex="0"]')) other.tabIndex = -1;
  tr.tabIndex = 0;
  if (focus) tr.focus();
}

/** Charts `id` in the list view's chart (the row gets `aria-current`). */
function select(id) {
  const before = view.selected ? devices.get(view.selected) : null;
  view.selected = id;
  if (before) dirtyDevices.add(before);
  const dev = devices.get(id);
  if (dev) dirtyDevices.add(dev);
  if (view.route === 'list') chart.show(id);
  schedule();
}

/** The list's chart opens with something: the most recently active device with readings. */
function ensureSelection() {
  if (view.selected && devices.has(view.selected)) {
    if (view.route === 'list' && chart.deviceId !== view.selected) chart.show(view.selected);
    return;
  }
  let best = null;
  for (const dev of devices.values()) {
    if (!dev.metrics.size) continue;
    if (!best || dev.lastSeen > best.lastSeen || (dev.lastSeen === best.lastSeen && compare.device(dev, best) < 0)) best = dev;
  }
  if (best) select(best.id);
}

// ---- routes and the device page -----------------------------------------------------------------

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

function route() {
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
    loadRejects();
    rejectsTimer = setInterval(loadRejects, REJECTS_REFRESH_MS);
    pageDirty = true;
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

function renderChartHead() {
  const title = $('chart-title');
  const id = chart.deviceId;
  if (view.route === 'device') title.textContent = 'Charts';
  else if (!id) title.textContent = 'Chart';
  else {
    const link = document.createElement('a');
    link.href = deviceHref(id);
    link.textContent = id;
    link.title = `${id}: open the device page`;
    title.replaceChildren('Chart: ', link);
  }
  $('chart-csv').disabled = !id;
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

function renderDevicePage() {
  if (!pageDirty || view.route !== 'device') return;
  pageDirty = false;
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
    const how = { hub: 'the hub’s device list', live: 'live status event', reading: 'a reading arrived' }[h.how] ?? h.how;
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

function formatDuration(ms) {
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 120 && s % 60 !== 0) return `${numberFormat.format(Math.round(s * 10) / 10)} s`;
  if (s < 7200 && s % 3600 !== 0) return `${Math.round(s / 60)} min`;
  return `${Math.round(s / 3600)} h`;
}

/** GET /v1/rejects, the ones of the page's device (`deviceId`), newest first. */
let rejectsGeneration = 0;
async function loadRejects() {
  const id = view.page;
  if (!id) return;
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

// ---- charts -------------------------------------------------------------------------------------

const measureCtx = document.createElement('canvas').getContext('2d');
function textWidth(text, font = AXIS_FONT) {
  measureCtx.font = font;
  return measureCtx.measureText(text).width;
}

const decimalFormats = new Map();
function formatTick(v, incr) {
  const s = String(+Math.abs(incr).toPrecision(6));
  const d = s.includes('e-') ? Number(s.split('e-')[1]) : (s.split('.')[1]?.length ?? 0);
  const digits = Math.min(6, d);
  if (!decimalFormats.has(digits)) decimalFormats.set(digits, new Intl.NumberFormat(undefined, { minimumFractionDigits: digits, maximumFractionDigits: digits }));
  return decimalFormats.get(digits).format(v);
}

/** The x-axis labels of a range: seconds at 5 min, hours and minutes up to a day, days beyond. */
function xFormatter(rangeMs) {
  return (u, splits, axisIdx, space, incr) =>
    splits.map((v) => {
      const d = new Date(v * 1000);
      const midnight = d.getHours() === 0 && d.getMinutes() === 0 && d.getSeconds() === 0;
      if (incr >= 86400 || (rangeMs > RAW_MAX_RANGE_MS && midnight)) return dayFormat.format(d);
      return incr < 60 ? hmsFormat.format(d) : hmFormat.format(d);
    });
}

/** Room each x label needs (px), from the widest label this range can show. */
function xSpace(rangeMs) {
  const sample = new Date(2026, 11, 30, 23, 58, 58);
  const texts = rangeMs <= 600_000 ? [hmsFormat.format(sample)] : [hmFormat.format(sample), dayFormat.format(sample)];
  return Math.ceil(Math.max(...texts.map((t) => textWidth(t)))) + 24;
}

function niceStep(rangeMs) {
  const want = rangeMs / ROLLUP_BUCKETS;
  return ROLLUP_STEPS_MS.find((s) => s >= want) ?? ROLLUP_STEPS_MS[ROLLUP_STEPS_MS.length - 1];
}

/** x tick steps (s): uPlot's own skip 2 min, which a phone needs at 5 min; beyond a day, whole days. */
const TIME_TICKS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400];
const DAY_TICKS = [86_400, 2 * 86_400, 3 * 86_400, 7 * 86_400];

const unitKey = (unit) => `u:${unit ?? ''}`;
const unitLabel = (unit) => (unit ? unit : 'no unit');
const hexAlpha = (hex, a) => `${hex}${Math.round(a * 255).toString(16).padStart(2, '0')}`;

/**
 * The charts of one device: every metric, one y-axis per unit with the unit as its label (two
 * units per plot, left and right; more units, more plots sharing the time axis and cursor).
 * Ranges up to RAW_MAX_RANGE_MS plot the stored readings themselves (GET /v1/readings) and
 * live readings as they come; longer ranges plot rollups (GET /v1/rollups): a min–max band
 * and the average line, live readings folded into their bucket. The two are never mixed.
 * The x-axis spans exactly now − range .. now.
 */
class DeviceChart {
  constructor(host, tip) {
    this.host = host;
    this.tip = tip;
    this.deviceId = null;
    this.rangeMs = DEFAULT_RANGE_MS;
    this.mode = 'raw'; // 'raw' | 'rollup'
    this.stepMs = 0; // rollup bucket width
    this.fallback = false; // raw asked for, too many readings: rollups
    /** One per metric: { topic, metric, unit, color, xs (s), ys, seqs, mins, maxs, counts, historyCount, liveCount } */
    this.series = [];
    this.plots = []; // { units, members, el, u }
    this.hidden = new Set(); // metrics switched off in the legend
    this.loading = false;
    this.error = null;
    this.generation = 0;
    this.pending = []; // live readings while loading, at most PENDING_MAX
    this.compact = true;
    this.dirty = false;
    this.layoutDirty = false;
    this.hovered = null;
    this.axisColor = '#57606a';
    this.gridColor = 'rgba(0,0,0,0.08)';
    this.xMin = 0;
    this.xMax = 0;
    this.width = 0;
    new ResizeObserver(() => this.resize()).observe(host);
  }

  show(deviceId) {
    if (deviceId === this.deviceId && !this.error) return;
    this.deviceId = deviceId;
    this.hidden.clear();
    renderChartHead();
    this.load();
  }

  setRange(ms) {
    this.rangeMs = ms;
    this.load();
  }

  setCompact(compact) {
    if (compact === this.compact) return;
    this.compact = compact;
    this.layoutDirty = true;
    this.dirty = true;
  }

  theme(axis, grid) {
    this.axisColor = axis || this.axisColor;
    this.gridColor = grid || this.gridColor;
    this.layoutDirty = true;
    this.dirty = true;
  }

  seriesFor(name, unit) {
    let s = this.series.find((x) => x.metric === name);
    if (!s) {
      const used = new Set(this.series.map((x) => x.color));
      s = { topic: `sensors/${this.deviceId}/${name}`, metric: name, unit: unit ?? null, color: PALETTE.find((c) => !used.has(c)) ?? PALETTE[this.series.length % PALETTE.length], xs: [], ys: [], seqs: [], mins: [], maxs: [], counts: [], historyCount: 0, liveCount: 0 };
      this.series.push(s);
      this.series.sort((a, b) => a.metric.localeCompare(b.metric, undefined, { numeric: true }));
      this.layoutDirty = true;
    } else if (unit != null && unit !== s.unit) {
      s.unit = unit;
      this.layoutDirty = true;
    }
    return s;
  }

  async load() {
    const generation = ++this.generation;
    const id = this.deviceId;
    this.series = [];
    this.pending = [];
    this.error = null;
    this.fallback = false;
    this.mode = this.rangeMs <= RAW_MAX_RANGE_MS ? 'raw' : 'rollup';
    this.stepMs = this.mode === 'rollup' ? niceStep(this.rangeMs) : 0;
    this.layoutDirty = true;
    this.dirty = true;
    if (!id) {
      this.loading = false;
      schedule();
      return;
    }
    this.loading = true;
    // Metrics known from the catalogue get their axes at once, even with no point in the range.
    const known = devices.get(id);
    if (known) for (const m of known.metrics.values()) this.seriesFor(m.name, m.unit);
    schedule();
    const to = Date.now();
    const from = to - this.rangeMs;
    try {
      let filters = [`sensors/${id}/#`];
      let got;
      try {
        got = await this.fetch(filters, from, to, generation);
      } catch (err) {
        // A caller who may read some of the device's topics only: ask for those one by one.
        if (err.status !== 403 || !known?.metrics.size) throw err;
        filters = [...known.metrics.values()].map((m) => m.topic);
        got = await this.fetch(filters, from, to, generation);
      }
      if (generation !== this.generation) return;
      this.fill(got);
    } catch (err) {
      if (generation !== this.generation) return;
      reportError(err);
      this.error = err;
    } finally {
      if (generation === this.generation) {
        this.loading = false;
        this.pending = [];
        this.layoutDirty = true; // the mode may have changed (raw over its bound: rollups)
        this.dirty = true;
        schedule();
      }
    }
  }

  /** Raw readings (all pages, up to RAW_MAX_POINTS) or rollups; raw over the bound: rollups. */
  async fetch(filters, from, to, generation) {
    if (this.mode === 'raw') {
      const readings = [];
      let after = null;
      for (;;) {
        const q = new URLSearchParams({ from: String(from), to: String(to), limit: String(RAW_PAGE) });
        for (const f of filters) q.append('filter', f);
        if (after !== null) q.set('after', String(after));
        const page = await api(`/v1/readings?${q}`);
        if (generation !== this.generation) return null;
        readings.push(...page.readings);
        if (readings.length > RAW_MAX_POINTS) {
          this.mode = 'rollup';
          this.fallback = true;
          this.stepMs = niceStep(this.rangeMs);
          break;
        }
        if (page.nextAfter === null || page.nextAfter === undefined || page.readings.length === 0) return { readings };
        after = page.nextAfter;
      }
    }
    const q = new URLSearchParams({ from: String(from), to: String(to), step: String(this.stepMs) });
    for (const f of filters) q.append('filter', f);
    const body = await api(`/v1/rollups?${q}`);
    return { rollups: body };
  }

  fill(got) {
    if (!got) return;
    if (got.readings) {
      let maxSeq = 0;
      for (const r of got.readings) {
        const s = this.seriesFor(r.metric, r.unit);
        s.xs.push(Date.parse(r.timestamp) / 1000);
        s.ys.push(r.value);
        s.seqs.push(r.seq);
        if (r.seq > maxSeq) maxSeq = r.seq;
      }
      for (const s of this.series) {
        sortByX(s);
        s.historyCount = s.xs.length;
      }
      // Live readings that arrived while loading and are not in the answer.
      for (const r of this.pending) if (r.seq > maxSeq) this.addLive(r, Date.parse(r.timestamp));
    } else {
      this.stepMs = got.rollups.stepMs;
      for (const rs of got.rollups.series) {
        const s = this.seriesFor(rs.metric, rs.unit);
        for (const p of rs.points) {
          s.xs.push(p.tMs / 1000);
          s.ys.push(p.avg);
          s.mins.push(p.min);
          s.maxs.push(p.max);
          s.counts.push(p.count);
        }
        s.historyCount = s.xs.length;
      }
      // Live readings that arrived while loading may already be in the buckets: left out.
    }
  }

  onReading(r, tMs) {
    if (r.deviceId !== this.deviceId) return;
    if (this.loading) {
      if (this.pending.length < PENDING_MAX) this.pending.push(r);
      return;
    }
    this.addLive(r, tMs);
  }

  addLive(r, tMs) {
    const s = this.seriesFor(r.metric, r.unit);
    const x = tMs / 1000;
    if (this.mode === 'raw') {
      insertPoint(s, x, r.value, r.seq);
    } else {
      // Fold into its bucket, like the hub's rollups.
      const bx = (Math.floor(tMs / this.stepMs) * this.stepMs) / 1000;
      let i = s.xs.length - 1;
      while (i >= 0 && s.xs[i] > bx) i--;
      if (i >= 0 && s.xs[i] === bx) {
        const n = s.counts[i];
        s.ys[i] = (s.ys[i] * n + r.value) / (n + 1);
        s.counts[i] = n + 1;
        if (r.value < s.mins[i]) s.mins[i] = r.value;
        if (r.value > s.maxs[i]) s.maxs[i] = r.value;
      } else {
        s.xs.splice(i + 1, 0, bx);
        s.ys.splice(i + 1, 0, r.value);
        s.mins.splice(i + 1, 0, r.value);
        s.maxs.splice(i + 1, 0, r.value);
        s.counts.splice(i + 1, 0, 1);
      }
    }
    if (s.xs.length > SERIES_MAX_POINTS) dropFront(s, s.xs.length - SERIES_MAX_POINTS);
    s.liveCount++;
    this.dirty = true;
  }

  /** Drops points that slid out of the range; called once a second. */
  trim() {
    const min = (Date.now() - this.rangeMs - this.stepMs) / 1000;
    for (const s of this.series) {
      let i = 0;
      while (i < s.xs.length && s.xs[i] < min) i++;
      if (i > 0) dropFront(s, i);
    }
    this.dirty = true;
  }

  /** Units in metric order, grouped UNITS_PER_PLOT to a plot. */
  groups() {
    const units = [];
    for (const s of this.series) if (!units.includes(s.unit)) units.push(s.unit);
    const groups = [];
    for (let i = 0; i < units.length; i += UNITS_PER_PLOT) groups.push(units.slice(i, i + UNITS_PER_PLOT));
    return groups;
  }

  plotHeight(count) {
    const width = Math.max(240, this.host.clientWidth);
    if (!this.compact) return Math.round(Math.min(300, Math.max(200, width * 0.3)));
    return count > 1 ? 180 : Math.round(Math.min(320, Math.max(200, width * 0.45)));
  }

  rebuild() {
    this.layoutDirty = false;
    for (const p of this.plots) p.u.destroy();
    this.plots = [];
    this.hovered = null;
    this.tip.hidden = true;
    this.host.replaceChildren();
    if (!globalThis.uPlot || !this.series.length) return;
    let groups = this.groups();
    this.moreUnits = 0;
    if (this.compact && groups.length > COMPACT_PLOTS) {
      this.moreUnits = groups.slice(COMPACT_PLOTS).flat().length;
      groups = groups.slice(0, COMPACT_PLOTS);
    }
    const width = Math.max(240, this.host.clientWidth);
    this.width = width;
    const height = this.plotHeight(groups.length);
    const rollup = this.mode === 'rollup';
    this.xMax = Date.now() / 1000;
    this.xMin = this.xMax - this.rangeMs / 1000;
    const grid = { stroke: this.gridColor, width: 1 };
    const ticks = { stroke: this.gridColor, width: 1, size: 5 };
    const syncKey = `edgewatch-${this.generation}`;
    for (const units of groups) {
      const members = this.series.filter((s) => units.includes(s.unit));
      const el = document.createElement('div');
      el.className = 'plot';
      el.dataset.units = units.map(unitLabel).join(' ');
      this.host.append(el);
      const scales = { x: { time: true, range: () => [this.xMin, this.xMax] } };
      for (const unit of units) scales[unitKey(unit)] = { auto: true };
      const series = [{}];
      const bands = [];
      for (const s of members) {
        const show = !this.hidden.has(s.metric);
        series.push({ label: s.metric, scale: unitKey(s.unit), stroke: s.color, width: 1.5, spanGaps: true, show });
        if (rollup) {
          const base = series.length - 1;
          const edge = { scale: unitKey(s.unit), stroke: hexAlpha(s.color, 0.35), width: 0.5, spanGaps: true, points: { show: false }, show };
          series.push({ ...edge, label: `${s.metric} min` }, { ...edge, label: `${s.metric} max` });
          bands.push({ series: [base + 2, base + 1], fill: hexAlpha(s.color, 0.18) });
        }
      }
      const axes = [
        {
          stroke: this.axisColor,
          grid,
          ticks,
          font: AXIS_FONT,
          space: xSpace(this.rangeMs),
          values: xFormatter(this.rangeMs),
          incrs: this.rangeMs > 86_400_000 ? DAY_TICKS : TIME_TICKS,
          size: 34,
          gap: 4,
        },
        ...units.map((unit, i) => ({
          scale: unitKey(unit),
          side: i === 0 ? 3 : 1,
          label: unitLabel(unit),
          labelFont: AXIS_LABEL_FONT,
          labelSize: 18,
          labelGap: 0,
          font: AXIS_FONT,
          stroke: this.axisColor,
          grid: i === 0 ? grid : { show: false },
          ticks,
          space: 28,
          gap: 4,
          values: (u, splits, axisIdx, space, incr) => splits.map((v) => formatTick(v, incr)),
          size: yAxisSize,
        })),
      ];
      const opts = {
        width,
        height,
        scales,
        series,
        bands,
        axes,
        legend: { show: false },
        padding: [8, units.length > 1 ? 0 : 12, 0, 0],
        // Series of one plot may have points at different times: hover picks each series' nearest.
        cursor: { drag: { x: false, y: false }, sync: { key: syncKey }, dataIdx: nearestDefined },
        hooks: { setCursor: [(u) => this.showTip(u)] },
      };
      const u = new uPlot(opts, this.plotData(members), el);
      u.over.addEventListener('mouseenter', () => (this.hovered = u));
      u.over.addEventListener('mouseleave', () => {
        if (this.hovered === u) this.hovered = null;
        this.tip.hidden = true;
      });
      this.plots.push({ units, members, el, u });
    }
    this.dirty = true;
  }

  plotData(members) {
    const rollup = this.mode === 'rollup';
    return alignColumns(members.map((s) => ({ xs: s.xs, cols: rollup ? [s.ys, s.mins, s.maxs] : [s.ys] })));
  }

  resize() {
    const width = Math.max(240, this.host.clientWidth);
    if (width === this.width) return;
    this.width = width;
    const height = this.plotHeight(this.plots.length);
    for (const p of this.plots) p.u.setSize({ width, height });
  }

  render() {
    if (this.layoutDirty) this.rebuild();
    if (!this.dirty) return;
    this.dirty = false;
    // Exactly the range, ending now, however sparse the data.
    const now = Date.now() / 1000;
    this.xMax = now;
    this.xMin = now - this.rangeMs / 1000;
    for (const p of this.plots) {
      p.u.batch(() => {
        p.u.setData(this.plotData(p.members), false);
        p.u.setScale('x', { min: this.xMin, max: this.xMax });
      });
    }
    this.renderLegend();
    this.renderNote();
  }

  renderNote() {
    let note;
    const stepText = formatDuration(this.stepMs);
    if (!this.deviceId) note = '';
    else if (this.error) note = `Could not load the history of ${this.deviceId}: ${this.error.message}. Pick a range to try again; live readings are still added.`;
    else if (this.loading) note = `Loading ${this.deviceId}…`;
    else {
      let points = 0;
      for (const s of this.series) points += s.xs.length;
      if (this.mode === 'raw') note = `Raw readings: ${numberFormat.format(points)} point${points === 1 ? '' : 's'} in range.`;
      else if (this.fallback) note = `More than ${numberFormat.format(RAW_MAX_POINTS)} readings in this range: rollups per ${stepText} instead (band: min–max, line: average).`;
      else note = `Rollups per ${stepText}: band from min to max, line the average.`;
      if (points === 0) note += ' No readings in this range.';
      if (this.moreUnits) note += ` ${this.moreUnits} more unit${this.moreUnits === 1 ? '' : 's'} on the device page.`;
    }
    const el = $('chart-note');
    if (el.textContent !== note) el.textContent = note;
    el.classList.toggle('inline-error', Boolean(this.error));
    const empty = $('chart-empty');
    empty.hidden = this.series.length > 0 || this.loading;
    if (!empty.hidden) empty.textContent = this.deviceId ? `No readings of ${this.deviceId} yet.` : 'No readings yet: the chart shows the most recently active device as soon as one reports.';
  }

  /** One toggle button per metric, with its last value and unit. */
  renderLegend() {
    const legend = $('chart-legend');
    const charted = new Set(this.plots.flatMap((p) => p.members));
    const items = this.series.filter((s) => charted.has(s)).map((s) => {
      if (!s.legend) {
        const btn = document.createElement('button');
        btn.type = 'button';
        btn.className = 'legend-item';
        btn.dataset.metric = s.metric;
        const swatch = document.createElement('span');
        swatch.className = 'swatch';
        swatch.style.background = s.color;
        const text = document.createElement('span');
        btn.append(swatch, text);
        btn.addEventListener('click', () => this.toggle(s.metric));
        s.legend = { btn, text, shown: null };
      }
      const m = devices.get(this.deviceId)?.metrics.get(s.metric);
      const last = m?.value ?? (s.ys.length ? s.ys[s.ys.length - 1] : null);
      const unit = m?.unit ?? s.unit;
      const label = `${s.metric}: ${last === null ? '—' : numberFormat.format(last)}${unit ? ` ${unit}` : ''}`;
      if (s.legend.shown !== label) {
        s.legend.shown = label;
        s.legend.text.textContent = label;
      }
      s.legend.btn.setAttribute('aria-pressed', String(!this.hidden.has(s.metric)));
      s.legend.btn.title = `${this.hidden.has(s.metric) ? 'Show' : 'Hide'} ${s.metric}`;
      return s.legend.btn;
    });
    const current = [...legend.children];
    if (current.length !== items.length || current.some((el, i) => el !== items[i])) legend.replaceChildren(...items);
  }

  toggle(name) {
    if (this.hidden.has(name)) this.hidden.delete(name);
    else this.hidden.add(name);
    const show = !this.hidden.has(name);
    for (const p of this.plots) {
      p.u.series.forEach((ser, i) => {
        if (i > 0 && (ser.label === name || ser.label === `${name} min` || ser.label === `${name} max`)) p.u.setSeries(i, { show });
      });
    }
    this.dirty = true;
    schedule();
  }

  showTip(u) {
    if (u !== this.hovered) return; // synced plots move their cursors too; the tip follows the pointer
    const idx = u.cursor.idx;
    if (idx === null || idx === undefined || u.cursor.left < 0) {
      this.tip.hidden = true;
      return;
    }
    const plot = this.plots.find((p) => p.u === u);
    if (!plot) return;
    const x = u.posToVal(u.cursor.left, 'x');
    const per = this.mode === 'rollup' ? 3 : 1;
    const lines = plot.members.map((s, j) => {
      const si = 1 + j * per;
      const k = u.cursor.idxs?.[si] ?? idx;
      const v = k === null || k === undefined ? null : u.data[si][k];
      const unit = s.unit ? ` ${escapeHtml(s.unit)}` : '';
      let text = v === null || v === undefined ? '—' : `${numberFormat.format(v)}${unit}`;
      if (per === 3 && v !== null && v !== undefined) text += ` <span class="t">(${numberFormat.format(u.data[si + 1][k])} – ${numberFormat.format(u.data[si + 2][k])})</span>`;
      return `<div><span class="swatch" style="background:${s.color}"></span> ${escapeHtml(s.metric)}: ${text}</div>`;
    });
    const what = this.mode === 'rollup' ? ` · ${formatDuration(this.stepMs)} bucket, average (min – max)` : '';
    this.tip.innerHTML = `<div class="t">${timeFormat.format(new Date(x * 1000))}${what}</div>${lines.join('')}`;
    this.tip.hidden = false;
    // Beside the cursor, on the side with more room; see-through so the lines under it show.
    const over = u.over.getBoundingClientRect();
    const host = this.tip.offsetParent?.getBoundingClientRect() ?? over;
    const { offsetWidth: w, offsetHeight: h } = this.tip;
    let left = over.left - host.left + u.cursor.left + 14;
    if (left + w > host.width || u.cursor.left > over.width / 2) left -= w + 28;
    let top = over.top - host.top + u.cursor.top + 14;
    if (u.cursor.top > over.height / 2) top -= h + 28;
    this.tip.style.left = `${Math.max(0, left)}px`;
    this.tip.style.top = `${Math.max(0, top)}px`;
  }

  /** The charted points inside the x range as CSV (raw: one line per reading; rollups: per bucket). */
  csv() {
    const id = this.deviceId;
    const lo = this.xMin;
    const hi = this.xMax;
    const shown = this.series.filter((s) => !this.hidden.has(s.metric) && this.plots.some((p) => p.members.includes(s)));
    const rows = [];
    for (const s of shown) {
      for (let i = 0; i < s.xs.length; i++) {
        const x = s.xs[i];
        if (x < lo - this.stepMs / 1000 || x > hi) continue;
        rows.push({ x, s, i });
      }
    }
    rows.sort((a, b) => a.x - b.x || (a.s.seqs[a.i] ?? 0) - (b.s.seqs[b.i] ?? 0) || a.s.metric.localeCompare(b.s.metric));
    const iso = (x) => new Date(Math.round(x * 1000)).toISOString();
    if (this.mode === 'raw') {
      const lines = ['seq,time,deviceId,metric,value,unit'];
      for (const { x, s, i } of rows) lines.push([s.seqs[i] ?? '', iso(x), id, s.metric, s.ys[i], s.unit ?? ''].map(csvField).join(','));
      return lines.join('\r\n') + '\r\n';
    }
    const lines = ['time,deviceId,metric,min,avg,max,count,unit,stepMs'];
    for (const { x, s, i } of rows) lines.push([iso(x), id, s.metric, s.mins[i], s.ys[i], s.maxs[i], s.counts[i], s.unit ?? '', this.stepMs].map(csvField).join(','));
    return lines.join('\r\n') + '\r\n';
  }

  fileName() {
    const range = { 300000: '5min', 3600000: '1h', 86400000: '24h', 604800000: '7d' }[this.rangeMs] ?? `${this.rangeMs}ms`;
    const safe = String(this.deviceId).replace(/[^A-Za-z0-9._-]+/g, '_');
    return `edgewatch-${safe}-${range}-${this.mode === 'raw' ? 'raw' : 'rollups'}.csv`;
  }
}

/** uPlot axis `size`: the widest tick label plus ticks and gap, so labels are never cut. */
function yAxisSize(u, values, axisIdx, cycleNum) {
  const axis = u.axes[axisIdx];
  if (cycleNum > 1 && axis._size) return axis._size; // keep it stable between layout passes
  let w = 0;
  for (const v of values ?? []) w = Math.max(w, textWidth(v));
  return Math.ceil(w) + 14;
}

function sortByX(s) {
  let sorted = true;
  for (let i = 1; i < s.xs.length && sorted; i++) if (s.xs[i] < s.xs[i - 1]) sorted = false;
  if (sorted) return;
  const order = s.xs.map((_, i) => i).sort((a, b) => s.xs[a] - s.xs[b] || s.seqs[a] - s.seqs[b]);
  s.xs = order.map((i) => s.xs[i]);
  s.ys = order.map((i) => s.ys[i]);
  s.seqs = order.map((i) => s.seqs[i]);
}

/** Adds a raw point keeping x sorted (a late or replayed reading goes into its place). */
function insertPoint(s, x, y, seq) {
  const n = s.xs.length;
  if (n === 0 || x >= s.xs[n - 1]) {
    s.xs.push(x);
    s.ys.push(y);
    s.seqs.push(seq);
    return;
  }
  let i = n;
  while (i > 0 && s.xs[i - 1] > x) i--;
  s.xs.splice(i, 0, x);
  s.ys.splice(i, 0, y);
  s.seqs.splice(i, 0, seq);
}

function dropFront(s, n) {
  for (const key of ['xs', 'ys', 'seqs', 'mins', 'maxs', 'counts']) if (s[key].length) s[key].splice(0, n);
  s.historyCount = Math.max(0, s.historyCount - n);
}

function csvField(v) {
  const s = String(v ?? '');
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/**
 * uPlot wants one x array shared by all series of a plot; ours each have their own sorted
 * timestamps. Merges them in one linear pass into the union of the x values, with `undefined`
 * where a member has no point: uPlot draws straight across those (unlike `null`, a gap).
 * `members`: [{ xs, cols: [ys, ...] }] → [xs, ...cols of each member in order].
 */
function alignColumns(members) {
  if (members.length === 1) return [members[0].xs.slice(), ...members[0].cols.map((c) => c.slice())];
  const k = members.length;
  const pos = new Array(k).fill(0);
  const xs = [];
  const out = members.map((m) => m.cols.map(() => []));
  for (;;) {
    let x = Infinity;
    for (let i = 0; i < k; i++) {
      const v = members[i].xs[pos[i]];
      if (v < x) x = v;
    }
    if (x === Infinity) break;
    const n = xs.length;
    xs.push(x);
    for (let i = 0; i < k; i++) {
      const m = members[i];
      // Several points of one series at the same x: the last one wins.
      while (m.xs[pos[i]] === x) {
        for (let c = 0; c < m.cols.length; c++) out[i][c][n] = m.cols[c][pos[i]];
        pos[i]++;
      }
      for (let c = 0; c < m.cols.length; c++) if (out[i][c].length <= n) out[i][c][n] = undefined;
    }
  }
  return [xs, ...out.flat()];
}

/** cursor.dataIdx: the index of the point of series `si` nearest to `xValue`. */
function nearestDefined(u, si, closestIdx, xValue) {
  const ys = u.data[si];
  if (si === 0 || ys[closestIdx] != null) return closestIdx;
  const xs = u.data[0];
  let lo = closestIdx - 1;
  let hi = closestIdx + 1;
  while (lo >= 0 && ys[lo] == null) lo--;
  while (hi < ys.length && ys[hi] == null) hi++;
  const dLo = lo >= 0 ? xValue - xs[lo] : Infinity;
  const dHi = hi < ys.length ? xs[hi] - xValue : Infinity;
  if (dLo === Infinity && dHi === Infinity) return closestIdx;
  return dLo <= dHi ? lo : hi;
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

const chart = new DeviceChart($('chart'), $('chart-tip'));

function setupChartTools() {
  for (const btn of document.querySelectorAll('button.range')) {
    btn.addEventListener('click', () => {
      for (const b of document.querySelectorAll('button.range')) b.setAttribute('aria-pressed', String(b === btn));
      chart.setRange(Number(btn.dataset.range));
      schedule();
    });
  }
  $('chart-csv').addEventListener('click', () => {
    if (!chart.deviceId) return;
    const url = URL.createObjectURL(new Blob([chart.csv()], { type: 'text/csv;charset=utf-8' }));
    const a = document.createElement('a');
    a.href = url;
    a.download = chart.fileName();
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  });
}

// ---- stream panel -------------------------------------------------------------------------------

const streamView = { client: null, queue: [] };

function validFilter(f) {
  if (!f || f.length > 1024) return false;
  const levels = f.split('/');
  return levels.every((l, i) => (l.includes('#') ? l === '#' && i === levels.length - 1 : !l.includes('+') || l === '+'));
}

function setupStream() {
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

function renderStream() {
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

// ---- frame, ticker, start -----------------------------------------------------------------------

function frame() {
  frameRequested = false;
  if (structureDirty && view.route === 'list') {
    structureDirty = false;
    renderTable();
  }
  for (const dev of dirtyDevices) {
    if (!dev.el) continue;
    if (onScreen.has(dev) && view.route === 'list') updateRow(dev);
    else dev.stale = true;
  }
  dirtyDevices.clear();
  chart.render();
  renderDevicePage();
  renderStream();
}

function tick() {
  const now = performance.now();
  while (rateWindow.length && now - rateWindow[0] > 5000) rateWindow.shift();
  const rate = rateWindow.length / 5;
  $('conn-rate').textContent = rate >= 10 ? String(Math.round(rate)) : rate.toFixed(1).replace(/\.0$/, '');
  if (view.route === 'list') {
    const wall = Date.now();
    for (const dev of onScreen) updateAge(dev, wall);
    if (view.sort === 'seen') structureDirty = true;
  } else {
    pageDirty = true; // "last seen ... ago"
  }
  chart.trim();
  schedule();
}

function setupEmptyState() {
  const host = location.hostname.includes(':') ? `[${location.hostname}]` : location.hostname;
  const line = `mosquitto_pub -h ${host} -p 1883 -t sensors/d1/temperature -m '{"value":21.5,"unit":"C"}'`;
  $('pub-example').textContent = line;
  $('copy-example').addEventListener('click', async () => {
    const btn = $('copy-example');
    try {
      await navigator.clipboard.writeText(line);
      btn.textContent = 'Copied';
    } catch {
      getSelection().selectAllChildren($('pub-example'));
      btn.textContent = 'Press Ctrl+C';
    }
    setTimeout(() => (btn.textContent = 'Copy'), 2000);
  });
}

/** Who is logged in, with a logout button for a person's session. Resolves with /v1/me. */
async function showWho() {
  const me = await api('/v1/me');
  if (me.kind === 'anonymous') return me;
  $('who-name').textContent = me.name;
  $('who').hidden = false;
  const out = $('logout');
  out.hidden = me.kind !== 'person';
  out.addEventListener('click', async () => {
    await fetch('/v1/logout', { method: 'POST' }).catch(() => null);
    toLogin();
  });
  return me;
}

function start() {
  $('tz').textContent = timeZone;
  // The live stream and the sparklines ask for what this caller may read.
  const who = showWho().then(
    (me) => {
      liveFilters = readFilters(me.read ?? []);
      for (const f of liveFilters) client.subscribe(f);
      if (!liveFilters.includes('sensors/#')) client.unsubscribe('sensors/#');
      return true;
    },
    (err) => {
      reportError(err);
      return err.status !== 401; // 401: on the way to the login page
    },
  );
  setupEmptyState();
  setupTable();
  setupChartTools();
  setupStream();
  readThemeColors();
  matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => {
    readThemeColors();
    for (const dev of devices.values()) {
      for (const m of dev.metrics.values()) m.dirty = true;
      dirtyDevices.add(dev);
    }
    schedule();
  });
  addEventListener('hashchange', route);
  // The skip link moves focus without touching the hash (which holds the route).
  $('skip').addEventListener('click', (e) => {
    e.preventDefault();
    $(view.route === 'device' ? 'device-title' : 'devices-title').focus();
  });
  route();
  showConnection({ state: 'connecting', transport: transports[0], attempt: 1 });
  loadCatalogue()
    .then(() => who)
    .then(() => loadSparklines())
    .finally(schedule);
  who.then((go) => go && client.connect());
  setInterval(tick, 1000);
  // Presence also arrives live as `status` events; polling it keeps the list right on hubs or
  // transports that do not send them, after missed events, and tells when the hub stops answering.
  setInterval(refreshDevices, DEVICES_REFRESH_MS);
  refreshUplinks();
  setInterval(refreshUplinks, UPLINKS_REFRESH_MS);
  schedule();
}

// For tests and the curious: the live state of the page.
globalThis.edgewatch = { client, devices, chart, view, hubLink };

start();
