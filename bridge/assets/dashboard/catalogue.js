// The catalogue: devices and their presence (/v1/devices), series (/v1/series), sparklines
// (/v1/rollups) and uplinks (/v1/uplinks).

import { $, SPARK_POINTS } from './constants.js';
import { device, dirty, markDevice, metric, schedule, session, setStatus, view } from './state.js';
import { api, hubLink, reportError, updateHubLink } from './api.js';
import { ensureSelection } from './list.js';

/**
 * The filters to watch for a caller who may read `read` (GET /v1/me): `sensors/#` when that
 * is covered, else the readable filters themselves. Asking for more than one may read is
 * refused (403), not narrowed.
 */
export function readFilters(read) {
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
    if (view.page === dev.id) dirty.page = true;
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

export async function loadCatalogue() {
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

export function refreshDevices() {
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

export async function loadSparklines() {
  const to = Date.now();
  const q = new URLSearchParams({ from: String(to - 15 * 60_000), to: String(to), step: '30s' });
  for (const f of session.liveFilters) q.append('filter', f);
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
export async function refreshUplinks() {
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
