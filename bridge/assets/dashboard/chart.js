// The chart of one device (uPlot): ranges, raw readings or rollups, live points, legend,
// tooltip and CSV; its head and tools (range buttons, CSV download).

import {
  $,
  AXIS_FONT,
  AXIS_LABEL_FONT,
  COMPACT_PLOTS,
  DEFAULT_RANGE_MS,
  PALETTE,
  PENDING_MAX,
  RAW_MAX_POINTS,
  RAW_MAX_RANGE_MS,
  RAW_PAGE,
  SERIES_MAX_POINTS,
  UNITS_PER_PLOT,
  numberFormat,
  timeFormat,
} from './constants.js';
import { deviceHref, escapeHtml, formatDuration } from './format.js';
import { devices, schedule, view } from './state.js';
import { api, reportError } from './api.js';
import { DAY_TICKS, TIME_TICKS, formatTick, hexAlpha, nearestDefined, unitKey, unitLabel, xFormatter, xSpace, yAxisSize } from './chart-axes.js';
import { alignColumns, csvField, dropFront, insertPoint, niceStep, sortByX } from './chart-data.js';

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

export const chart = new DeviceChart($('chart'), $('chart-tip'));

export function setupChartTools() {
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

/** The chart's heading (in the list view, a link to the device's page) and the CSV button. */
export function renderChartHead() {
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
