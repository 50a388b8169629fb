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
// Modules (ES modules, no build step; each imports only from the ones listed before it):
// constants · format · state · api (API and the hub link) · chart-axes · chart-data · chart ·
// list (device list) · catalogue · live (live data) · device-page (routes and the device page) ·
// stream (stream panel) · app (this one: frame, ticker, start). The hub serves each file from
// its list in bridge/src/http/dashboard.rs: a new module needs an entry there.

import { $, DEVICES_REFRESH_MS, UPLINKS_REFRESH_MS, timeZone, transports } from './constants.js';
import { devices, dirty, dirtyDevices, onFrame, rateWindow, schedule, session, view } from './state.js';
import { api, hubLink, reportError, showConnection, toLogin } from './api.js';
import { chart, setupChartTools } from './chart.js';
import { onScreen, readThemeColors, renderTable, setupTable, updateAge, updateRow } from './list.js';
import { loadCatalogue, loadSparklines, readFilters, refreshDevices, refreshUplinks } from './catalogue.js';
import { client } from './live.js';
import { renderDevicePage, route } from './device-page.js';
import { renderStream, setupStream } from './stream.js';

function frame() {
  if (dirty.structure && view.route === 'list') {
    dirty.structure = false;
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
    if (view.sort === 'seen') dirty.structure = true;
  } else {
    dirty.page = true; // "last seen ... ago"
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
      session.liveFilters = readFilters(me.read ?? []);
      for (const f of session.liveFilters) client.subscribe(f);
      if (!session.liveFilters.includes('sensors/#')) client.unsubscribe('sensors/#');
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

onFrame(frame);

// For tests and the curious: the live state of the page.
globalThis.edgewatch = { client, devices, chart, view, hubLink };

start();
