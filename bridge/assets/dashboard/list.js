// The device list: one row per device (status, age, metric chips with sparklines), its filter,
// sort and keyboard use, and which device the list view's chart shows.

import { $, SPARK_POINTS, STATUS_RANK, numberFormat, timeFormat } from './constants.js';
import { deviceHref, formatAge } from './format.js';
import { devices, dirty, dirtyDevices, schedule, view } from './state.js';
import { chart } from './chart.js';

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
export const onScreen = new Set();
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

export function updateRow(dev) {
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

export function updateAge(dev, now) {
  setText(dev.shown, 'age', dev.cells.age, dev.lastSeen ? formatAge(now - dev.lastSeen) : '—');
  const title = dev.lastSeen ? timeFormat.format(dev.lastSeen) : 'never';
  if (dev.shown.ageTitle !== title) {
    dev.shown.ageTitle = title;
    dev.cells.age.title = `last reading received ${title}`;
  }
}

let sparkColor = '#0b61c4';
export function readThemeColors() {
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

export function renderTable() {
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

export function setupTable() {
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
      dirty.structure = true;
      schedule();
    });
  }
  $('device-filter').addEventListener('input', (e) => {
    view.filter = e.target.value;
    dirty.structure = true;
    schedule();
  });
}

export function moveFocus(tr, focus) {
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
export function ensureSelection() {
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
