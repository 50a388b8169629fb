// The edgewatch dashboard: a client of the hub's public API like any other.
// History and the catalogue come from /v1/series, /v1/devices and /v1/rollups; live data from
// the JS client (/v1/sdk/edgewatch.js). Everything the page draws is batched into one
// requestAnimationFrame; incoming messages only update state and mark what changed.
//
// `?transport=websocket|sse|poll` forces the client's transport.

import { EdgewatchClient, TRANSPORTS } from '/v1/sdk/edgewatch.js';

const SPARK_POINTS = 60;
const STREAM_MAX_ITEMS = 200;
const MAX_CHART_SERIES = 8;
const DEVICES_REFRESH_MS = 3000;
const UPLINKS_REFRESH_MS = 5000;
const PALETTE = ['#2f7ed8', '#e8590c', '#2b8a3e', '#c2255c', '#7048e8', '#0c8599', '#b08800', '#5c940d'];
const TRANSPORT_LABELS = { websocket: 'WebSocket', sse: 'SSE', poll: 'Long polling' };

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const forced = params.get('transport');
const transports = TRANSPORTS.includes(forced) ? [forced] : TRANSPORTS;
const timeZone = Intl.DateTimeFormat().resolvedOptions().timeZone;
const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 3 });
const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'short', timeStyle: 'medium' });

// ---- state ----------------------------------------------------------------------------------

/** One row per series (device + metric); devices known only by presence get a row too. */
const rows = new Map(); // key → Row
const devices = new Map(); // deviceId → { status, source, since }
const view = { sort: 'device', dir: 1, filter: '', order: [] };
let structureDirty = true; // rows added, filter or sort changed
const dirtyRows = new Set();
let frameRequested = false;
const rateWindow = []; // receive times of recent readings, for readings/s
/** What the live stream and the sparklines ask for: set from GET /v1/me (`readFilters`). */
let liveFilters = ['sensors/#'];

class Row {
  constructor(key, deviceId, metric) {
    this.key = key;
    this.deviceId = deviceId;
    this.metric = metric; // null for a device without readings yet
    this.topic = metric ? `sensors/${deviceId}/${metric}` : null;
    this.unit = null;
    this.value = null;
    this.time = 0; // ms of the last reading's event time
    this.spark = [];
    this.el = null;
    this.shown = {}; // text last written to each cell, to skip unchanged writes
  }

  get status() {
    return devices.get(this.deviceId)?.status ?? 'unknown';
  }
}

function seriesRow(deviceId, metric) {
  const key = `sensors/${deviceId}/${metric}`;
  let row = rows.get(key);
  if (!row) {
    row = new Row(key, deviceId, metric);
    rows.set(key, row);
    rows.delete(`device:${deviceId}`); // the placeholder row, if any
    structureDirty = true;
  }
  return row;
}

function device(deviceId) {
  let d = devices.get(deviceId);
  if (!d) {
    d = { status: 'unknown', source: 'none', since: null };
    devices.set(deviceId, d);
    if (![...rows.values()].some((r) => r.deviceId === deviceId)) {
      rows.set(`device:${deviceId}`, new Row(`device:${deviceId}`, deviceId, null));
      structureDirty = true;
    }
  }
  return d;
}

function markDevice(deviceId) {
  for (const row of rows.values()) if (row.deviceId === deviceId) dirtyRows.add(row);
  if (view.sort === 'status') structureDirty = true;
}

function schedule() {
  if (frameRequested) return;
  frameRequested = true;
  requestAnimationFrame(frame);
}

// ---- data from the API ----------------------------------------------------------------------

/** Sends the browser to the login page (and back here after it). */
function toLogin() {
  location.assign('/login?next=' + encodeURIComponent(location.pathname + location.search));
}

async function api(path) {
  const res = await fetch(path, { cache: 'no-store' });
  if (res.status === 401) toLogin();
  const body = await res.json().catch(() => null);
  if (!res.ok) throw Object.assign(new Error(body?.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${res.status}`), { status: res.status });
  return body;
}

/**
 * The filters to watch for a caller who may read `read` (GET /v1/me): `sensors/#` when that
 * is covered, else the readable filters themselves. Asking for more than one may read is
 * refused (403), not narrowed.
 */
function readFilters(read) {
  if (read.some((f) => f === '#' || f === '+/#' || f === 'sensors/#')) return ['sensors/#'];
  return read.length ? read : ['sensors/#'];
}

function applyDevices(devs) {
  for (const d of devs) {
    const known = device(d.deviceId);
    // A live status event newer than this answer wins.
    if (known.status !== d.status && !(known.since && d.since && Date.parse(known.since) > Date.parse(d.since))) {
      known.status = d.status;
      known.since = d.since;
      markDevice(d.deviceId);
    }
    known.source = d.statusSource ?? known.source;
  }
}

/** Presence from /v1/devices: on load, after reconnects, for new devices, and periodically. */
let devicesRequest = null;
const presenceAsked = new Set(); // devices whose unknown presence triggered a refresh
let devicesAgain = false;
function refreshDevices() {
  if (devicesRequest) {
    devicesAgain = true; // one more right after the one in flight
    return devicesRequest;
  }
  devicesRequest = api('/v1/devices')
    .then(({ devices: devs }) => {
      applyDevices(devs);
      schedule();
    })
    .catch(reportError)
    .finally(() => {
      devicesRequest = null;
      if (devicesAgain) {
        devicesAgain = false;
        refreshDevices();
      }
    });
  return devicesRequest;
}

/**
 * One line per uplink (GET /v1/uplinks): its state and how far behind it is. Hidden without
 * uplinks (the list is empty for a caller not allowed to see them).
 */
async function refreshUplinks() {
  const el = document.getElementById('uplinks');
  const res = await fetch('/v1/uplinks', { cache: 'no-store' }).catch(() => null);
  const body = res && res.ok ? await res.json().catch(() => null) : null;
  const list = body?.uplinks ?? [];
  el.hidden = list.length === 0;
  el.replaceChildren(...list.map((u) => {
    const item = document.createElement('span');
    item.className = 'uplink';
    item.dataset.state = u.state;
    const lag = u.lagReadings > 0 ? `, ${u.lagReadings} behind (${u.lagSeconds.toFixed(1)} s)` : ', up to date';
    const state = u.state.replace('_', ' ');
    item.textContent = `↑ ${u.name}: ${state}${lag}`;
    item.title = `${u.url} · forwarded ${u.forwarded}, resent ${u.resent}, dropped ${u.dropped}` +
      (u.lastError ? ` · last error: ${u.lastError}` : '');
    return item;
  }));
}

async function loadCatalogue() {
  const [{ devices: devs }, { series }] = await Promise.all([api('/v1/devices'), api('/v1/series')]);
  applyDevices(devs);
  for (const s of series) {
    device(s.deviceId);
    const row = seriesRow(s.deviceId, s.metric);
    const t = Date.parse(s.lastTimestamp);
    if (t >= row.time) {
      row.value = s.lastValue;
      row.unit = s.unit;
      row.time = t;
      dirtyRows.add(row);
    }
  }
  schedule();
}

async function loadSparklines() {
  const to = Date.now();
  const q = new URLSearchParams({ from: String(to - 15 * 60_000), to: String(to), step: '30s' });
  for (const f of liveFilters) q.append('filter', f);
  const { series } = await api(`/v1/rollups?${q}`);
  for (const s of series) {
    const row = rows.get(s.topic) ?? seriesRow(s.deviceId, s.metric);
    const history = s.points.map((p) => p.avg);
    row.spark = history.concat(row.spark).slice(-SPARK_POINTS);
    dirtyRows.add(row);
  }
  schedule();
}

// ---- live data ------------------------------------------------------------------------------

function onReading(r) {
  const d = device(r.deviceId);
  // A device seen for the first time: fetch its presence (its status was set on connect).
  if (d.status === 'unknown' && !presenceAsked.has(r.deviceId)) {
    presenceAsked.add(r.deviceId);
    refreshDevices();
  }
  // A device shown stale because its readings stopped is back: show it at once (the hub's
  // `status` event follows within its sweep period). An explicit `offline` is not overridden.
  if (d.status === 'stale' && d.source === 'readings') {
    d.status = 'online';
    d.since = r.receivedAt ?? new Date().toISOString();
    markDevice(r.deviceId);
  }
  const row = seriesRow(r.deviceId, r.metric);
  const t = Date.parse(r.timestamp);
  if (t >= row.time) {
    row.value = r.value;
    row.unit = r.unit ?? row.unit;
    row.time = t;
  }
  row.spark.push(r.value);
  if (row.spark.length > SPARK_POINTS) row.spark.shift();
  dirtyRows.add(row);
  chart.append(r, t);
  rateWindow.push(performance.now());
  schedule();
}

function onStatus(s) {
  const d = device(s.deviceId);
  d.status = s.status ?? (s.online ? 'online' : 'offline');
  d.source = s.statusSource ?? d.source;
  d.since = s.at ?? new Date().toISOString();
  markDevice(s.deviceId);
  schedule();
}

const client = new EdgewatchClient({ filters: ['sensors/#'], transports });
client.addEventListener('reading', (e) => onReading(e.detail));
client.addEventListener('status', (e) => onStatus(e.detail));
client.addEventListener('state', (e) => {
  showConnection(e.detail);
  // Presence changes are not replayed on resume: refresh the catalogue after a reconnect.
  if (e.detail.state === 'connected') loadCatalogue().catch(reportError);
});
client.addEventListener('reset', () => loadCatalogue().catch(reportError));
// The session ended (logout elsewhere, expiry, a restart): the client has stopped; log in again.
client.addEventListener('error', (e) => e.detail.status === 401 && toLogin());

/**
 * The page's own link to the hub. While it is down, a banner says so and the device list is
 * dimmed with grey status dots: what is on screen is the last data received, not live.
 */
const hubLink = { lostAt: null };
function showHubLink(state, attempt) {
  const lost = state === 'reconnecting' || state === 'closed' || (state === 'connecting' && attempt > 1);
  if (lost && hubLink.lostAt === null) hubLink.lostAt = new Date();
  if (!lost) hubLink.lostAt = null;
  document.body.dataset.hub = lost ? 'lost' : state === 'connected' ? 'live' : 'connecting';
  $('hub-lost').hidden = !lost;
  if (!lost) return;
  $('hub-lost-since').textContent = ` at ${hubLink.lostAt.toLocaleTimeString()}`;
  $('hub-lost-retry').textContent = state === 'closed' ? 'Reload the page to reconnect.' : `Reconnecting${attempt > 1 ? ` (attempt ${attempt})` : ''}…`;
}

function showConnection({ state, transport, attempt }) {
  showHubLink(state, attempt);
  const box = $('connection');
  box.dataset.state = state;
  box.dataset.transport = transport ?? '';
  const label = TRANSPORT_LABELS[transport] ?? '';
  let text = state;
  if (state === 'reconnecting' && attempt > 0) text += ` (attempt ${attempt})`;
  else if (state === 'connecting' && attempt > 1) text += ` (attempt ${attempt})`;
  $('conn-text').textContent = label ? `${label} · ${text}` : text;
}

function reportError(err) {
  // Shown in the connection line; a failed request is not a page error.
  console.warn('edgewatch:', err.message ?? err);
}

// ---- device table ---------------------------------------------------------------------------

const compare = {
  device: (a, b) => a.deviceId.localeCompare(b.deviceId, undefined, { numeric: true }) || (a.metric ?? '').localeCompare(b.metric ?? ''),
  status: (a, b) => a.status.localeCompare(b.status) || compare.device(a, b),
  metric: (a, b) => (a.metric ?? '').localeCompare(b.metric ?? '') || compare.device(a, b),
  value: (a, b) => (a.value ?? -Infinity) - (b.value ?? -Infinity) || compare.device(a, b),
  age: (a, b) => b.time - a.time || compare.device(a, b),
};

function visibleRows() {
  const words = view.filter.toLowerCase().split(/\s+/).filter(Boolean);
  const list = [];
  for (const row of rows.values()) {
    const hay = `${row.deviceId} ${row.metric ?? ''} ${row.status} ${row.unit ?? ''}`.toLowerCase();
    if (words.every((w) => hay.includes(w))) list.push(row);
  }
  const cmp = compare[view.sort];
  list.sort((a, b) => view.dir * cmp(a, b));
  return list;
}

function rowElement(row) {
  if (row.el) return row.el;
  const tr = document.createElement('tr');
  tr.dataset.key = row.key;
  tr.dataset.device = row.deviceId;
  tr.tabIndex = -1;
  tr.innerHTML = `<td class="col-plot"><input type="checkbox" tabindex="-1"></td><td class="device-id"></td><td><span class="status"></span></td><td class="metric"></td><td class="num"><span class="value"></span><span class="unit"></span></td><td class="num age"></td><td class="spark"><canvas width="144" height="40" aria-hidden="true"></canvas></td>`;
  const check = tr.querySelector('input');
  check.setAttribute('aria-label', row.topic ? `Plot ${row.deviceId} ${row.metric}` : `${row.deviceId} has no readings yet`);
  check.disabled = !row.topic;
  tr.children[1].textContent = row.deviceId;
  tr.children[3].textContent = row.metric ?? '—';
  row.cells = {
    check,
    status: tr.querySelector('.status'),
    value: tr.querySelector('.value'),
    unit: tr.querySelector('.unit'),
    age: tr.querySelector('.age'),
    canvas: tr.querySelector('canvas'),
  };
  row.el = tr;
  tr.row = row;
  rowVisibility.observe(tr);
  return tr;
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
      const row = e.target.row;
      if (e.isIntersecting) {
        onScreen.add(row);
        if (row.stale) {
          row.stale = false;
          dirtyRows.add(row);
          schedule();
        }
      } else {
        onScreen.delete(row);
      }
    }
  },
  { root: document.querySelector('.table-wrap'), rootMargin: '240px 0px' },
);

function setText(row, cell, text) {
  if (row.shown[cell] === text) return;
  row.shown[cell] = text;
  row.cells[cell].textContent = text;
}

function updateRow(row) {
  rowElement(row);
  const status = row.status;
  if (row.shown.statusAttr !== status) {
    row.cells.status.dataset.status = status;
    row.shown.statusAttr = status;
  }
  setText(row, 'status', status);
  setText(row, 'value', row.value === null ? '—' : numberFormat.format(row.value));
  setText(row, 'unit', row.unit ?? '');
  updateAge(row, Date.now());
  const plotted = chart.has(row.topic);
  row.cells.check.checked = plotted;
  row.el.setAttribute('aria-selected', String(plotted));
  drawSpark(row);
}

function updateAge(row, now) {
  setText(row, 'age', row.time ? formatAge(now - row.time) : '—');
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

function drawSpark(row) {
  const canvas = row.cells.canvas;
  const ctx = canvas.getContext('2d');
  const { width: w, height: h } = canvas;
  ctx.clearRect(0, 0, w, h);
  const values = row.spark;
  if (values.length < 2) return;
  let min = Infinity;
  let max = -Infinity;
  for (const v of values) {
    if (v < min) min = v;
    if (v > max) max = v;
  }
  const span = max - min || 1;
  const pad = 3;
  ctx.beginPath();
  for (let i = 0; i < values.length; i++) {
    const x = (i / (SPARK_POINTS - 1)) * (w - 2 * pad) + pad + (SPARK_POINTS - values.length) * ((w - 2 * pad) / (SPARK_POINTS - 1));
    const y = h - pad - ((values[i] - min) / span) * (h - 2 * pad);
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  }
  ctx.strokeStyle = sparkColor;
  ctx.lineWidth = 2;
  ctx.stroke();
}

function renderTable() {
  const body = $('devices-body');
  const list = visibleRows();
  const same = list.length === view.order.length && list.every((r, i) => r === view.order[i]);
  if (!same) {
    const focused = document.activeElement?.closest?.('tr[data-key]');
    for (const row of list) if (!row.el) updateRow(row);
    body.replaceChildren(...list.map((r) => r.el));
    view.order = list;
    ensureRovingFocus();
    if (focused && focused.isConnected) focused.focus({ preventScroll: true });
  }
  const total = rows.size;
  $('device-count').textContent = total ? `(${devices.size} devices, ${[...rows.values()].filter((r) => r.topic).length} series${list.length < total ? `, ${list.length} shown` : ''})` : '';
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
    const tr = e.target.closest('tr[data-key]');
    if (!tr) return;
    moveFocus(tr);
    toggleRow(rows.get(tr.dataset.key));
  });
  body.addEventListener('keydown', (e) => {
    const tr = e.target.closest('tr[data-key]');
    if (!tr) return;
    const go = { ArrowDown: tr.nextElementSibling, ArrowUp: tr.previousElementSibling, Home: body.firstElementChild, End: body.lastElementChild }[e.key];
    if (go !== undefined) {
      e.preventDefault();
      if (go) moveFocus(go);
    } else if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      toggleRow(rows.get(tr.dataset.key));
    }
  });
  for (const th of document.querySelectorAll('th[data-sort]')) {
    th.querySelector('button').addEventListener('click', () => {
      const key = th.dataset.sort;
      // A new column sorts ascending (age: newest first), except values: largest first.
      view.dir = view.sort === key ? -view.dir : key === 'value' ? -1 : 1;
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

function moveFocus(tr) {
  for (const other of $('devices-body').querySelectorAll('tr[tabindex="0"]')) other.tabIndex = -1;
  tr.tabIndex = 0;
  tr.focus();
}

function toggleRow(row) {
  if (!row?.topic) return;
  if (chart.has(row.topic)) chart.remove(row.topic);
  else chart.add(row.topic, row.deviceId, row.metric);
  for (const r of rows.values()) if (r.el) dirtyRows.add(r);
  schedule();
}

// ---- chart ----------------------------------------------------------------------------------

class LiveChart {
  constructor(container, tip) {
    this.container = container;
    this.tip = tip;
    this.series = []; // { topic, label, color, xs, ys, liveCount, historyCount, loading, legend }
    this.rangeMs = 15 * 60_000;
    this.plot = null;
    this.dirty = false;
    this.axisColor = '#57606a';
    this.gridColor = 'rgba(0,0,0,0.08)';
    new ResizeObserver(() => this.resize()).observe(container);
  }

  has(topic) {
    return this.series.some((s) => s.topic === topic);
  }

  add(topic, deviceId, metric) {
    if (this.has(topic)) return;
    if (this.series.length >= MAX_CHART_SERIES) this.series.shift();
    const used = new Set(this.series.map((s) => s.color));
    const color = PALETTE.find((c) => !used.has(c)) ?? PALETTE[0];
    const s = { topic, label: `${deviceId} ${metric}`, color, xs: [], ys: [], liveCount: 0, historyCount: 0 };
    this.series.push(s);
    this.rebuild();
    this.loadHistory(s);
  }

  remove(topic) {
    this.series = this.series.filter((s) => s.topic !== topic);
    this.rebuild();
  }

  setRange(ms) {
    this.rangeMs = ms;
    for (const s of this.series) {
      s.xs = [];
      s.ys = [];
      s.historyCount = 0;
      this.loadHistory(s);
    }
    this.dirty = true;
  }

  async loadHistory(s) {
    const to = Date.now();
    const from = to - this.rangeMs;
    s.loading = true;
    const q = new URLSearchParams({ filter: s.topic, from: String(from), to: String(to) });
    try {
      const { series } = await api(`/v1/rollups?${q}`);
      if (!this.series.includes(s)) return;
      const points = series.find((x) => x.topic === s.topic)?.points ?? [];
      // Live points that arrived meanwhile stay; history fills in before them.
      const firstLive = s.xs.length ? s.xs[0] : Infinity;
      const hx = [];
      const hy = [];
      for (const p of points) {
        const x = p.tMs / 1000;
        if (x < firstLive) {
          hx.push(x);
          hy.push(p.avg);
        }
      }
      s.xs = hx.concat(s.xs);
      s.ys = hy.concat(s.ys);
      s.historyCount = hx.length;
    } catch (err) {
      reportError(err);
    } finally {
      s.loading = false;
      this.dirty = true;
      schedule();
    }
  }

  append(r, tMs) {
    for (const s of this.series) {
      if (s.topic !== r.topic) continue;
      const x = tMs / 1000;
      const n = s.xs.length;
      if (n === 0 || x >= s.xs[n - 1]) {
        s.xs.push(x);
        s.ys.push(r.value);
      } else {
        let i = n; // late or replayed reading: keep x sorted
        while (i > 0 && s.xs[i - 1] > x) i--;
        s.xs.splice(i, 0, x);
        s.ys.splice(i, 0, r.value);
      }
      s.liveCount++;
      this.dirty = true;
    }
  }

  theme(axis, grid) {
    this.axisColor = axis || this.axisColor;
    this.gridColor = grid || this.gridColor;
    if (this.plot) this.rebuild();
  }

  size() {
    const width = Math.max(200, this.container.clientWidth);
    return { width, height: Math.round(Math.min(340, Math.max(200, width * 0.45))) };
  }

  rebuild() {
    this.plot?.destroy();
    this.plot = null;
    this.tip.hidden = true;
    $('chart-empty').hidden = this.series.length > 0;
    this.renderLegend();
    if (this.series.length === 0 || !globalThis.uPlot) return;
    const axis = { stroke: this.axisColor, grid: { stroke: this.gridColor, width: 1 }, ticks: { stroke: this.gridColor } };
    const opts = {
      ...this.size(),
      scales: { x: { time: true } },
      legend: { show: false },
      // Series have their own timestamps, so at most x values a series has no point: hover
      // picks each series' nearest point of its own (`u.cursor.idxs`).
      cursor: { drag: { x: false, y: false }, dataIdx: nearestDefined },
      series: [{}, ...this.series.map((s) => ({ label: s.label, stroke: s.color, width: 1.5, spanGaps: true, points: { show: false } }))],
      axes: [axis, { ...axis, size: 56 }],
      hooks: { setCursor: [(u) => this.showTip(u)] },
    };
    this.plot = new uPlot(opts, this.data(), this.container);
    this.dirty = true;
  }

  data() {
    return alignSeries(this.series);
  }

  resize() {
    if (this.plot) this.plot.setSize(this.size());
  }

  /** Drops points that slid out of the range; called once a second. */
  trim() {
    const min = (Date.now() - this.rangeMs) / 1000;
    for (const s of this.series) {
      let i = 0;
      while (i < s.xs.length && s.xs[i] < min) i++;
      if (i > 0) {
        s.xs.splice(0, i);
        s.ys.splice(0, i);
        s.historyCount = Math.max(0, s.historyCount - i);
      }
    }
    this.dirty = true;
  }

  render() {
    if (!this.dirty) return;
    this.dirty = false;
    if (!this.plot) {
      if (this.series.length && globalThis.uPlot) this.rebuild();
      if (!this.plot) return;
    }
    // The window ends now and spans the range, or less when the data is younger than the
    // range (a new hub would otherwise draw a sliver at the right edge); at least a minute.
    const now = Date.now() / 1000;
    let min = now - this.rangeMs / 1000;
    const first = Math.min(...this.series.map((s) => (s.xs.length ? s.xs[0] : Infinity)));
    if (Number.isFinite(first) && first > min) min = Math.max(min, Math.min(first - 5, now - 60));
    this.plot.batch(() => {
      this.plot.setData(this.data(), false);
      this.plot.setScale('x', { min, max: now });
    });
    this.renderLegend();
  }

  /** One legend entry per series, built once; live updates only rewrite changed text. */
  renderLegend() {
    const legend = $('chart-legend');
    const items = this.series.map((s) => {
      if (!s.legend) {
        const span = document.createElement('span');
        const swatch = document.createElement('span');
        swatch.className = 'swatch';
        swatch.style.background = s.color;
        const text = document.createElement('span');
        const remove = document.createElement('button');
        remove.type = 'button';
        remove.textContent = '×';
        remove.setAttribute('aria-label', `Remove ${s.label} from the chart`);
        remove.addEventListener('click', () => toggleRow(rows.get(s.topic)));
        span.append(swatch, text, remove);
        s.legend = { span, text, shown: null };
      }
      // The chart plots bucket averages; the legend shows the last reading itself.
      const row = rows.get(s.topic);
      const lastValue = row?.value ?? (s.ys.length ? s.ys[s.ys.length - 1] : null);
      const last = lastValue === null ? '—' : numberFormat.format(lastValue);
      const unit = row?.unit ?? '';
      const label = `${s.label}: ${last}${unit ? ` ${unit}` : ''}`;
      if (s.legend.shown !== label) {
        s.legend.shown = label;
        s.legend.text.textContent = label;
      }
      return s.legend.span;
    });
    const current = [...legend.children];
    if (current.length !== items.length || current.some((el, i) => el !== items[i])) legend.replaceChildren(...items);
  }

  showTip(u) {
    const idx = u.cursor.idx;
    if (idx === null || idx === undefined || u.cursor.left < 0) {
      this.tip.hidden = true;
      return;
    }
    const x = u.posToVal(u.cursor.left, 'x');
    const lines = this.series.map((s, i) => {
      const j = u.cursor.idxs?.[i + 1] ?? idx;
      const v = j === null || j === undefined ? null : u.data[i + 1][j];
      const unit = rows.get(s.topic)?.unit ?? '';
      return `<div><span class="swatch" style="display:inline-block;width:.6rem;height:.6rem;border-radius:50%;background:${s.color}"></span> ${escapeHtml(s.label)}: ${v === null || v === undefined ? '—' : `${numberFormat.format(v)} ${escapeHtml(unit)}`}</div>`;
    });
    this.tip.innerHTML = `<div class="t">${timeFormat.format(new Date(x * 1000))}</div>${lines.join('')}`;
    this.tip.hidden = false;
    // Beside the cursor, on the side with more room; the tip is see-through so the lines under
    // it stay visible.
    const over = u.over.getBoundingClientRect();
    const host = this.container.parentElement.getBoundingClientRect();
    const { offsetWidth: w, offsetHeight: h } = this.tip;
    let left = over.left - host.left + u.cursor.left + 14;
    if (left + w > host.width || u.cursor.left > over.width / 2) left -= w + 28;
    let top = over.top - host.top + u.cursor.top + 14;
    if (u.cursor.top > over.height / 2) top -= h + 28;
    this.tip.style.left = `${Math.max(0, left)}px`;
    this.tip.style.top = `${Math.max(0, top)}px`;
  }
}

/**
 * uPlot wants one x array shared by all series; ours each have their own sorted timestamps
 * (history buckets, then live readings). Merges them in one linear pass into the union of the
 * x values, with `undefined` where a series has no point: uPlot draws straight across those
 * (unlike `null`, which would be a gap), so every series keeps its whole line.
 */
function alignSeries(list) {
  if (list.length === 1) return [list[0].xs.slice(), list[0].ys.slice()];
  const k = list.length;
  const pos = new Array(k).fill(0);
  const xs = [];
  const cols = list.map(() => []);
  for (;;) {
    let x = Infinity;
    for (let i = 0; i < k; i++) {
      const v = list[i].xs[pos[i]];
      if (v < x) x = v;
    }
    if (x === Infinity) break;
    const n = xs.length;
    xs.push(x);
    for (let i = 0; i < k; i++) {
      const s = list[i];
      // Several points of one series at the same x: the last one wins.
      while (s.xs[pos[i]] === x) cols[i][n] = s.ys[pos[i]++];
      if (cols[i].length <= n) cols[i][n] = undefined;
    }
  }
  return [xs, ...cols];
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

const chart = new LiveChart($('chart'), $('chart-tip'));

function setupRanges() {
  for (const btn of document.querySelectorAll('button.range')) {
    btn.addEventListener('click', () => {
      for (const b of document.querySelectorAll('button.range')) b.setAttribute('aria-pressed', String(b === btn));
      chart.setRange(Number(btn.dataset.range));
      schedule();
    });
  }
}

// ---- stream panel ---------------------------------------------------------------------------

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
  const items = streamView.queue.splice(0).slice(-STREAM_MAX_ITEMS);
  const frag = document.createDocumentFragment();
  for (let i = items.length - 1; i >= 0; i--) {
    const { at, message } = items[i];
    const li = document.createElement('li');
    const time = document.createElement('time');
    time.dateTime = at.toISOString();
    time.textContent = at.toLocaleTimeString();
    const kind = document.createElement('span');
    kind.className = `kind kind-${message.type}`;
    kind.textContent = message.type;
    li.append(time, kind, JSON.stringify(message));
    frag.append(li);
  }
  log.prepend(frag);
  while (log.childElementCount > STREAM_MAX_ITEMS) log.lastElementChild.remove();
}

// ---- frame and ticker -----------------------------------------------------------------------

function frame() {
  frameRequested = false;
  if (structureDirty) {
    structureDirty = false;
    renderTable();
  }
  for (const row of dirtyRows) {
    if (!row.el) continue;
    if (onScreen.has(row)) updateRow(row);
    else row.stale = true;
  }
  dirtyRows.clear();
  chart.render();
  renderStream();
}

function tick() {
  const now = performance.now();
  while (rateWindow.length && now - rateWindow[0] > 5000) rateWindow.shift();
  const rate = rateWindow.length / 5;
  $('conn-rate').textContent = rate >= 10 ? String(Math.round(rate)) : rate.toFixed(1).replace(/\.0$/, '');
  const wall = Date.now();
  for (const row of onScreen) updateAge(row, wall);
  if (view.sort === 'age' || view.sort === 'value') structureDirty = true;
  chart.trim();
  schedule();
}

// ---- start ----------------------------------------------------------------------------------

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
  setupRanges();
  setupStream();
  readThemeColors();
  matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => {
    readThemeColors();
    for (const r of rows.values()) if (r.el) dirtyRows.add(r);
    schedule();
  });
  showConnection({ state: 'connecting', transport: transports[0], attempt: 1 });
  loadCatalogue()
    .then(() => who)
    .then(() => loadSparklines())
    .catch(reportError)
    .finally(schedule);
  who.then((go) => go && client.connect());
  setInterval(tick, 1000);
  // Presence also arrives live as `status` events; polling it keeps the list right on hubs or
  // transports that do not send them, and after missed events.
  setInterval(refreshDevices, DEVICES_REFRESH_MS);
  refreshUplinks();
  setInterval(refreshUplinks, UPLINKS_REFRESH_MS);
  schedule();
}

// For tests and the curious: the live state of the page.
globalThis.edgewatch = { client, rows, devices, chart };

start();
