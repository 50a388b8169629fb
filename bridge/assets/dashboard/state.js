// The dashboard's shared state: the devices and their metrics, the view, what the next frame
// redraws, and the one requestAnimationFrame everything is drawn in. Other modules change it
// through these objects and functions (never by reassigning an import).

import { STATUS_HISTORY_MAX } from './constants.js';

/** deviceId → Device: one row of the list each. */
export const devices = new Map();
export const view = { route: 'list', page: null, selected: null, sort: 'device', dir: 1, filter: '', order: [] };
export const dirty = {
  structure: true, // devices added, filter or sort changed
  page: false, // the device page's text
};
export const dirtyDevices = new Set();
let frameRequested = false;
let draw = () => {}; // the page's frame (app.js)
export const rateWindow = []; // receive times of the readings of the last 5 s, for readings/s
export const session = {
  /** What the live stream and the sparklines ask for: set from GET /v1/me (`readFilters`). */
  liveFilters: ['sensors/#'],
};

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

export function device(id) {
  let d = devices.get(id);
  if (!d) {
    d = new Device(id);
    devices.set(id, d);
    dirty.structure = true;
  }
  return d;
}

export function metric(dev, name) {
  let m = dev.metrics.get(name);
  if (!m) {
    m = new Metric(dev, name);
    dev.metrics.set(name, m);
    dev.chipsDirty = true;
    dirty.structure = true; // the filter matches metric names
  }
  return m;
}

export function markDevice(dev) {
  dirtyDevices.add(dev);
  if (view.sort !== 'device') dirty.structure = true;
  if (view.page === dev.id) dirty.page = true;
}

/** Records a status change in the device's bounded history (`how`: where the page learnt it). */
export function setStatus(dev, status, source, atMs, how) {
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

/** Sets what a frame draws (once, at start). */
export function onFrame(fn) {
  draw = fn;
}

/** Asks for one frame; everything that changed until then is drawn in it. */
export function schedule() {
  if (frameRequested) return;
  frameRequested = true;
  requestAnimationFrame(frame);
}

function frame() {
  frameRequested = false;
  draw();
}
