// Live data: the JS client (/v1/sdk/edgewatch.js) and what its readings and status events change.

import { EdgewatchClient } from '/v1/sdk/edgewatch.js';
import { SPARK_POINTS, transports } from './constants.js';
import { device, markDevice, metric, rateWindow, schedule, setStatus, view } from './state.js';
import { showConnection, toLogin } from './api.js';
import { chart } from './chart.js';
import { ensureSelection } from './list.js';
import { loadCatalogue, refreshDevices } from './catalogue.js';

const presenceAsked = new Set(); // devices whose unknown presence triggered a refresh

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

export const client = new EdgewatchClient({ filters: ['sensors/#'], transports });
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
