// The device page (#/device/ID) and the charts in headless Chromium against a real hub: one
// labelled y-axis per unit, last readings, status history, rejects; range buttons that set the
// x-axis span exactly; raw readings at short ranges and rollups (band + average) at long ones;
// axis labels that do not overlap; CSV download; the stale-data banner when polls fail.
// Run with scripts/browser-test tests/browser/device-page.test.mjs.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { launchBrowser, openPage, screenshotDir } from './support/browser.mjs';
import { Hub, waitFor } from './support/hub.mjs';

let hub;
let browser;
const devices = [];

before(async () => {
  hub = await new Hub().start();
  browser = await launchBrowser();
});

after(async () => {
  for (const d of devices) await d.end();
  await browser?.close();
  await hub?.dispose();
});

async function device(id) {
  const d = await hub.device(id);
  devices.push(d);
  return d;
}

const RANGES = [
  ['5 min', 300_000],
  ['1 h', 3_600_000],
  ['24 h', 86_400_000],
  ['7 d', 604_800_000],
];

/** Resolves once the chart shows `deviceId` at `rangeMs`, loaded and drawn. */
async function chartReady(page, deviceId, rangeMs) {
  await waitFor(
    () =>
      page.evaluate(
        ([id, ms]) => {
          const c = globalThis.edgewatch.chart;
          return c.deviceId === id && c.rangeMs === ms && !c.loading && !c.layoutDirty && !c.dirty && c.plots.length > 0;
        },
        [deviceId, rangeMs],
      ),
    { timeoutMs: 8000, what: `chart of ${deviceId} over ${rangeMs} ms drawn` },
  );
}

async function pickRange(page, label, ms, deviceId) {
  await page.getByRole('button', { name: label, exact: true }).click();
  await chartReady(page, deviceId, ms);
}

/** Each plot: its units, the y-axes (scale and label) and the scale of every charted series. */
const plotAxes = (page) =>
  page.evaluate(() =>
    globalThis.edgewatch.chart.plots.map(({ u, units }) => ({
      units,
      axes: u.axes.slice(1).map((a) => ({ scale: a.scale, label: a.label, side: a.side })),
      series: u.series.slice(1).map((s) => ({ label: s.label, scale: s.scale })),
      bands: (u.bands ?? []).length,
    })),
  );

test('the device page charts every metric with a labelled y-axis per unit, and shows last readings, status history and rejects', async () => {
  const d = await device('multi');
  const units = { temperature: 'C', humidity: '%', power: 'W', voltage: 'V', energy: 'kWh' };
  for (const [m, unit] of Object.entries(units)) {
    await d.publish(m, 10, unit, { timestamp: new Date(Date.now() - 120_000).toISOString() });
    await d.publish(m, 12.5, unit);
  }
  // Two payloads the hub cannot read: one of this device, one of another.
  await d.client.publishAsync('sensors/multi/temperature', 'abc', { qos: 1 });
  const other = await device('other');
  await other.client.publishAsync('sensors/other/temperature', 'xyz', { qos: 1 });
  await waitFor(async () => (await hub.api('/v1/rejects')).recent.length >= 2, { what: 'two rejects' });
  await waitFor(async () => (await hub.readings('sensors/multi/#')).length === 10, { what: 'readings stored' });

  // A deep link opens the page directly.
  const page = await openPage(browser.context, `${hub.httpUrl}/#/device/multi`);
  await page.waitForSelector('#device-panel:not([hidden])');
  assert.equal(await page.textContent('#device-title'), 'multi');
  assert.equal(await page.title(), 'multi · edgewatch');
  assert.equal(await page.isHidden('#devices-panel'), true, 'the list is not shown on the device page');
  await chartReady(page, 'multi', 3_600_000);

  // Five units: three plots (two axes each, left and right), every unit once, as a label.
  const plots = await plotAxes(page);
  assert.equal(plots.length, 3, JSON.stringify(plots));
  const labels = plots.flatMap((p) => p.axes.map((a) => a.label));
  assert.deepEqual([...labels].sort(), ['%', 'C', 'V', 'W', 'kWh'].sort(), `one labelled axis per unit: ${JSON.stringify(plots)}`);
  for (const p of plots) {
    assert.ok(p.axes.length <= 2, 'at most two y-axes per plot');
    if (p.axes.length === 2) assert.deepEqual(p.axes.map((a) => a.side), [3, 1], 'left and right');
    for (const s of p.series) {
      const unit = units[s.label];
      assert.equal(s.scale, `u:${unit}`, `${s.label} on the ${unit} scale`);
      assert.ok(p.axes.some((a) => a.scale === s.scale && a.label === unit), `${s.label}: its axis is labelled ${unit}`);
    }
    assert.equal(p.bands, 0, 'raw readings: no band');
  }
  const charted = plots.flatMap((p) => p.series.map((s) => s.label)).sort();
  assert.deepEqual(charted, Object.keys(units).sort(), 'every metric charted');
  const legend = await page.locator('#chart-legend .legend-item').allTextContents();
  assert.deepEqual(legend.sort(), ['energy: 12.5 kWh', 'humidity: 12.5 %', 'power: 12.5 W', 'temperature: 12.5 C', 'voltage: 12.5 V']);
  assert.deepEqual(await page.locator('#chart .plot').evaluateAll((els) => els.map((e) => e.dataset.units)), plots.map((p) => p.units.join(' ')));

  // The last reading of each metric, with its seq from the hub.
  const series = (await hub.api('/v1/series')).series.filter((s) => s.deviceId === 'multi');
  await waitFor(async () => (await page.locator('#last-body tr').count()) === 5, { timeoutMs: 3000, what: 'five last readings' });
  for (const s of series) {
    const cells = await page.locator(`#last-body tr[data-metric="${s.metric}"] > *`).allTextContents();
    assert.equal(cells[0], s.metric);
    assert.equal(cells[1], '12.5');
    assert.equal(cells[2], s.unit);
    assert.equal(cells[5], String(s.lastSeq), `${s.metric}: seq`);
  }
  // The last raw payload the device sent: its undecodable 'abc'.
  await waitFor(async () => (await page.textContent('#payload-text')) === 'abc', { timeoutMs: 6000, what: 'the last raw payload' });
  assert.match(await page.textContent('#payload-state'), /On sensors\/multi\/temperature, received .*, 3 bytes\./);

  // Rejects: this device's only.
  await waitFor(async () => (await page.locator('#rejects-body tr').count()) === 1, { timeoutMs: 6000, what: 'one reject of multi' });
  const reject = await page.textContent('#rejects-body');
  assert.match(reject, /sensors\/multi\/temperature/);
  assert.match(reject, /abc/);
  assert.doesNotMatch(reject, /xyz|sensors\/other/);
  assert.match(await page.textContent('#rejects-state'), /1 of the hub’s 2 most recent rejects came from multi/);

  // Status history: online from the hub, then offline live when the connection drops.
  await waitFor(async () => /online/.test(await page.textContent('#history-list')), { timeoutMs: 3000, what: 'online in the history' });
  assert.match(await page.textContent('#device-facts'), /Status\s*online since/);
  d.crash();
  await waitFor(async () => (await page.locator('#history-list li').first().textContent()).includes('offline'), { timeoutMs: 8000, what: 'offline at the top of the history' });
  const history = await page.locator('#history-list li').allTextContents();
  assert.ok(history.length >= 2 && /online/.test(history[1]), `online below offline: ${JSON.stringify(history)}`);
  assert.equal(await page.getAttribute('#device-facts .status', 'data-status'), 'offline');
  await page.screenshot({ path: path.join(screenshotDir(), 'device-page.png'), fullPage: true });

  // A page opened afterwards has the same history, from the hub's record.
  const again = await openPage(browser.context, `${hub.httpUrl}/#/device/multi`);
  await waitFor(async () => /the hub’s record/.test(await again.textContent('#history-list')), { timeoutMs: 6000, what: 'the hub’s record in a new page' });
  const record = await again.locator('#history-list li').allTextContents();
  assert.ok(/offline/.test(record[0]) && record.slice(1).some((t) => /online/.test(t)), `offline, then online below: ${JSON.stringify(record)}`);
  assert.deepEqual(again.errors, []);
  await again.close();

  // In the list view the same device is charted compactly: two plots, the rest said in words.
  await page.click('#back-link');
  await page.waitForSelector('#devices-panel:not([hidden])');
  await waitFor(() => page.evaluate(() => globalThis.edgewatch.chart.plots.length === 2), { timeoutMs: 3000, what: 'two plots in the list view' });
  assert.match(await page.textContent('#chart-note'), /1 more unit on the device page/);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('the range buttons set the x-axis to exactly now − range .. now, also with one sparse reading', async () => {
  const d = await device('sparse');
  await d.publish('temperature', 7, 'C', { timestamp: new Date(Date.now() - 50 * 60_000).toISOString() });
  await waitFor(async () => (await hub.readings('sensors/sparse/temperature')).length === 1, { what: 'one reading stored' });
  const page = await openPage(browser.context, `${hub.httpUrl}/#/device/sparse`);
  await chartReady(page, 'sparse', 3_600_000);
  assert.equal(await page.getAttribute('button.range[data-range="3600000"]', 'aria-pressed'), 'true', 'opens at 1 h');
  for (const [label, ms] of [...RANGES, ['1 h', 3_600_000]]) {
    await pickRange(page, label, ms, 'sparse');
    const got = await page.evaluate(() => ({ now: Date.now() / 1000, x: globalThis.edgewatch.chart.plots.map(({ u }) => [u.scales.x.min, u.scales.x.max]) }));
    for (const [min, max] of got.x) {
      assert.ok(Math.abs(max - min - ms / 1000) < 0.001, `${label}: x span ${max - min} s, want ${ms / 1000} s`);
      assert.ok(Math.abs(got.now - max) < 2.5, `${label}: the x-axis ends now (${got.now - max} s ago)`);
    }
    const points = await page.evaluate(() => globalThis.edgewatch.chart.series[0].xs.length);
    assert.equal(points, ms >= 3_600_000 ? 1 : 0, `${label}: the one reading is in range only from 1 h up`);
    assert.equal(await page.locator('button.range[aria-pressed="true"]').count(), 1);
  }
  // The window keeps sliding with the clock.
  const first = await page.evaluate(() => globalThis.edgewatch.chart.plots[0].u.scales.x.max);
  await page.waitForTimeout(1500);
  const later = await page.evaluate(() => globalThis.edgewatch.chart.plots[0].u.scales.x.max);
  assert.ok(later > first, `the x-axis follows now: ${first} → ${later}`);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('raw readings at 5 min and 1 h, rollups (min–max band, average line) at 24 h and 7 d: never averages where raw points are shown', async () => {
  const d = await device('band');
  const now = Date.now();
  // Older history: two readings 20 s apart in each of 24 minutes, 10 apart in value.
  for (let i = 24; i >= 8; i--) {
    await d.publish('temperature', 10 + i, 'C', { timestamp: new Date(now - i * 6 * 60_000).toISOString() });
    await d.publish('temperature', 20 + i, 'C', { timestamp: new Date(now - i * 6 * 60_000 + 20_000).toISOString() });
  }
  // Recent: three readings in one second, whose average (5) is none of them.
  for (const [v, dt] of [[1, 90_000], [5, 89_700], [9, 89_400]]) {
    await d.publish('temperature', v, 'C', { timestamp: new Date(now - dt).toISOString() });
  }
  const stored = await waitFor(async () => {
    const list = await hub.readings('sensors/band/temperature');
    return list.length === 37 && list;
  }, { what: '37 readings stored' });
  const page = await openPage(browser.context, `${hub.httpUrl}/#/device/band`);
  const asked = [];
  page.on('request', (req) => {
    const url = new URL(req.url());
    if (url.searchParams.get('filter') === 'sensors/band/#') asked.push(url.pathname);
  });
  await chartReady(page, 'band', 3_600_000);

  const drawn = () =>
    page.evaluate(() => {
      const c = globalThis.edgewatch.chart;
      const { u } = c.plots[0];
      return { mode: c.mode, series: u.series.slice(1).map((s) => s.label), bands: u.bands.length, data: u.data.slice(1).map((col) => col.filter((v) => v !== undefined && v !== null)) };
    });

  for (const [label, ms] of [['5 min', 300_000], ['1 h', 3_600_000]]) {
    asked.length = 0;
    await pickRange(page, label, ms, 'band');
    const got = await drawn();
    assert.equal(got.mode, 'raw', label);
    assert.deepEqual(got.series, ['temperature'], `${label}: one line, no min/max`);
    assert.equal(got.bands, 0, `${label}: no band`);
    const inRange = stored.filter((r) => Date.parse(r.timestamp) >= Date.now() - ms).map((r) => r.value);
    assert.deepEqual([...got.data[0]].sort((a, b) => a - b), [...inRange].sort((a, b) => a - b), `${label}: exactly the stored readings`);
    assert.ok(got.data[0].includes(1) && got.data[0].includes(9), `${label}: the raw values themselves`);
    assert.deepEqual([...new Set(asked)], ['/v1/readings'], `${label}: asked for readings only: ${asked}`);
  }
  // A live reading at a raw range is a point of its own, with its own value.
  await d.publish('temperature', 3);
  await waitFor(() => page.evaluate(() => globalThis.edgewatch.chart.plots[0].u.data[1].includes(3)), { timeoutMs: 3000, what: 'live raw point' });

  for (const [label, ms] of [['24 h', 86_400_000], ['7 d', 604_800_000]]) {
    asked.length = 0;
    await pickRange(page, label, ms, 'band');
    const got = await drawn();
    assert.equal(got.mode, 'rollup', label);
    assert.deepEqual(got.series, ['temperature', 'temperature min', 'temperature max'], label);
    assert.equal(got.bands, 1, `${label}: a min–max band`);
    assert.deepEqual([...new Set(asked)], ['/v1/rollups'], `${label}: asked for rollups only: ${asked}`);
    const [avg, mins, maxs] = got.data;
    assert.ok(mins.some((m, i) => m < maxs[i] && m <= avg[i] && avg[i] <= maxs[i]), `${label}: a bucket with min < max around its average`);
    // The averages are the hub's: compare with GET /v1/rollups at the chart's step.
    const step = await page.evaluate(() => globalThis.edgewatch.chart.stepMs);
    const to = Date.now();
    const q = new URLSearchParams({ filter: 'sensors/band/temperature', from: String(to - ms), to: String(to), step: String(step) });
    const hubAvg = (await hub.api(`/v1/rollups?${q}`)).series[0].points.map((p) => p.avg);
    for (const v of hubAvg.slice(0, -1)) assert.ok(avg.some((a) => Math.abs(a - v) < 1e-9), `${label}: hub average ${v} charted`);
    // The band is really painted: pixels between min and max of the widest bucket.
    const painted = await page.evaluate(() => {
      const { u } = globalThis.edgewatch.chart.plots[0];
      let best = -1;
      let width = 0;
      u.data[0].forEach((x, i) => {
        const w = u.data[3][i] - u.data[2][i];
        if (w > width) [best, width] = [i, w];
      });
      const x = Math.round(u.valToPos(u.data[0][best], 'x', true)) + (best === u.data[0].length - 1 ? -1 : 1);
      let hits = 0;
      for (const f of [0.2, 0.35, 0.65, 0.8]) {
        const v = u.data[2][best] + f * width;
        const y = Math.round(u.valToPos(v, u.series[1].scale, true));
        const px = u.ctx.getImageData(x, y, 1, 1).data;
        if (px[3] > 20) hits++;
      }
      return hits;
    });
    assert.ok(painted >= 3, `${label}: band painted (${painted} of 4 probes)`);
  }
  await page.screenshot({ path: path.join(screenshotDir(), 'rollup-band.png') });
  // A live reading at a long range goes into its bucket: no raw point among the averages.
  const before = await page.evaluate(() => globalThis.edgewatch.chart.series[0].xs.length);
  await d.publish('temperature', 1000);
  await waitFor(() => page.evaluate(() => globalThis.edgewatch.chart.series[0].maxs.includes(1000)), { timeoutMs: 3000, what: 'live reading folded into its bucket' });
  const afterLive = await page.evaluate(() => {
    const s = globalThis.edgewatch.chart.series[0];
    return { n: s.xs.length, avgIs1000: s.ys.includes(1000), step: globalThis.edgewatch.chart.stepMs, xs: s.xs.slice(-2) };
  });
  assert.ok(afterLive.n <= before + 1, `at most one new bucket: ${JSON.stringify(afterLive)}`);
  assert.equal(afterLive.xs.at(-1) % (afterLive.step / 1000), 0, 'bucket-aligned');
  assert.deepEqual(page.errors, []);
  await page.close();
});

/**
 * Whether any two x labels (or two y labels of one axis) of any plot overlap, from uPlot's
 * splits and values and the labels' measured widths.
 */
const labelOverlaps = (page) =>
  page.evaluate(() => {
    const ctx = document.createElement('canvas').getContext('2d');
    const out = [];
    for (const { u } of globalThis.edgewatch.chart.plots) {
      u.axes.forEach((axis, ai) => {
        const splits = axis._splits ?? [];
        const values = axis._values ?? [];
        if (!values.length || axis.show === false) return;
        ctx.font = Array.isArray(axis.font) ? axis.font[0] : axis.font;
        const boxes = [];
        splits.forEach((v, i) => {
          const text = values[i];
          if (text === null || text === undefined || text === '') return;
          const pos = u.valToPos(v, axis.scale);
          if (pos < -1 || pos > (ai === 0 ? u.bbox.width : u.bbox.height) / devicePixelRatio + 1) return;
          const w = ctx.measureText(String(text)).width;
          boxes.push(ai === 0 ? { a: pos - w / 2, b: pos + w / 2, text } : { a: pos - 7, b: pos + 7, text });
        });
        boxes.sort((p, q) => p.a - q.a);
        for (let i = 1; i < boxes.length; i++) {
          if (boxes[i].a < boxes[i - 1].b + 2) out.push(`${ai === 0 ? 'x' : `y(${axis.label})`}: "${boxes[i - 1].text}" and "${boxes[i].text}"`);
        }
        if (ai === 0 && boxes.length < 2) out.push(`x: only ${boxes.length} label(s)`);
      });
    }
    return out;
  });

test('axis labels never overlap, at every range, on a desktop and a phone', async () => {
  const d = await device('ticks');
  const now = Date.now();
  for (let i = 0; i < 30; i++) {
    await d.publish('temperature', 18 + Math.sin(i) * 3, 'C', { timestamp: new Date(now - i * 110_000).toISOString() });
    await d.publish('pressure', 100_000 + i * 37, 'Pa', { timestamp: new Date(now - i * 110_000).toISOString() });
  }
  await waitFor(async () => (await hub.readings('sensors/ticks/#')).length === 60, { what: 'readings stored' });
  for (const width of [1280, 375]) {
    const page = await browser.context.newPage();
    page.errors = [];
    page.on('pageerror', (err) => page.errors.push(`pageerror: ${err.message}`));
    page.on('console', (msg) => msg.type() === 'error' && page.errors.push(`console: ${msg.text()}`));
    await page.setViewportSize({ width, height: 900 });
    await page.goto(`${hub.httpUrl}/#/device/ticks`);
    await chartReady(page, 'ticks', 3_600_000);
    for (const [label, ms] of RANGES) {
      await pickRange(page, label, ms, 'ticks');
      const overlaps = await labelOverlaps(page);
      assert.deepEqual(overlaps, [], `${width} px, ${label}: overlapping axis labels`);
      // The formatter suits the range: labels differ from each other (no "Dec 7" twice on a
      // 24 h axis), seconds at 5 min on a desktop, dates and no seconds at 7 d.
      const xs = await page.evaluate(() => globalThis.edgewatch.chart.plots[0].u.axes[0]._values);
      assert.equal(new Set(xs).size, xs.length, `${width} px, ${label}: distinct x labels ${xs}`);
      if (ms === 300_000 && width > 1000) assert.ok(xs.some((t) => /\d:\d\d:\d\d/.test(t)), `5 min: seconds in ${xs}`);
      if (ms === 604_800_000) assert.ok(xs.every((t) => !/:\d\d:\d\d/.test(t)) && xs.some((t) => /[A-Za-z]{3} \d+/.test(t)), `7 d: days in ${xs}`);
    }
    // A pressure axis with six-digit labels is wide enough for them (nothing cut at the edge).
    const fits = await page.evaluate(() => {
      const { u } = globalThis.edgewatch.chart.plots[0];
      const ctx = document.createElement('canvas').getContext('2d');
      return u.axes.slice(1).map((a) => {
        ctx.font = Array.isArray(a.font) ? a.font[0] : a.font;
        const widest = Math.max(...a._values.map((t) => ctx.measureText(String(t)).width));
        return { label: a.label, size: a._size, widest };
      });
    });
    for (const f of fits) assert.ok(f.size >= f.widest + 8, `${width} px: the ${f.label} axis fits its labels: ${JSON.stringify(f)}`);
    await page.screenshot({ path: path.join(screenshotDir(), `ticks-${width}.png`), fullPage: true });
    assert.deepEqual(page.errors, []);
    await page.close();
  }
});

test('Download CSV saves the charted readings: seq, time, device, metric, value, unit', async () => {
  const d = await device('csv');
  const now = Date.now();
  const sent = [
    ['temperature', 21.5, 'C', now - 240_000],
    ['humidity', 40, '%', now - 200_000],
    ['temperature', 21.75, 'C', now - 120_000],
    ['humidity', 41.5, '%', now - 60_000],
    ['temperature', 22, 'C', now - 30_000],
  ];
  for (const [m, v, unit, t] of sent) await d.publish(m, v, unit, { timestamp: new Date(t).toISOString() });
  // One older than an hour: charted at 24 h, not at 1 h.
  await d.publish('temperature', 5, 'C', { timestamp: new Date(now - 2 * 3_600_000).toISOString() });
  const stored = await waitFor(async () => {
    const list = await hub.readings('sensors/csv/#');
    return list.length === 6 && list;
  }, { what: 'readings stored' });
  const page = await openPage(browser.context, `${hub.httpUrl}/#/device/csv`);
  await chartReady(page, 'csv', 3_600_000);
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#chart-csv')]);
  assert.equal(download.suggestedFilename(), 'edgewatch-csv-1h-raw.csv');
  const text = fs.readFileSync(await download.path(), 'utf8');
  const lines = text.trimEnd().split('\r\n');
  assert.equal(lines[0], 'seq,time,deviceId,metric,value,unit');
  const want = stored
    .filter((r) => Date.parse(r.timestamp) >= now - 3_600_000)
    .sort((a, b) => Date.parse(a.timestamp) - Date.parse(b.timestamp))
    .map((r) => [r.seq, r.timestamp, r.deviceId, r.metric, r.value, r.unit].join(','));
  assert.deepEqual(lines.slice(1), want);
  assert.equal(lines.length, 6, 'the five readings of the last hour');

  // At 7 d the chart shows rollups, and the file says so.
  await pickRange(page, '7 d', 604_800_000, 'csv');
  const [download2] = await Promise.all([page.waitForEvent('download'), page.click('#chart-csv')]);
  assert.equal(download2.suggestedFilename(), 'edgewatch-csv-7d-rollups.csv');
  const rollup = fs.readFileSync(await download2.path(), 'utf8').trimEnd().split('\r\n');
  assert.equal(rollup[0], 'time,deviceId,metric,min,avg,max,count,unit,stepMs');
  const counts = rollup.slice(1).map((l) => l.split(','));
  assert.equal(counts.reduce((n, c) => n + Number(c[6]), 0), 6, `every reading in some bucket: ${rollup.join(' | ')}`);
  assert.ok(counts.every((c) => c[1] === 'csv' && ['temperature', 'humidity'].includes(c[2])));
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('a stale-data banner when the hub stops answering the page’s polls, gone when it answers again', async () => {
  const d = await device('banner');
  await d.publish('temperature', 20);
  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  await page.waitForSelector('#connection[data-state="connected"]', { timeout: 10_000 });
  await page.waitForSelector('#devices-body tr[data-device="banner"] .status[data-status="online"]', { timeout: 5000 });
  assert.equal(await page.isHidden('#hub-lost'), true);
  // The live stream stays up; the API does not answer (as behind a proxy whose upstream is gone).
  await page.route('**/v1/devices', (route) => route.abort('connectionrefused'));
  await page.waitForSelector('#hub-lost:not([hidden])', { timeout: 12_000 });
  assert.match(await page.textContent('#hub-lost'), /Connection to the hub lost at .*not live.*has not answered the last \d+ requests/s);
  assert.equal(await page.getAttribute('body', 'data-hub'), 'lost');
  assert.equal(await page.getAttribute('#connection', 'data-state'), 'connected', 'the stream itself is still up');
  const dot = await page.evaluate(() => getComputedStyle(document.querySelector('#devices-body tr[data-device="banner"] .status'), '::before').backgroundColor);
  const green = await page.evaluate(() => {
    const probe = document.createElement('span');
    probe.style.background = 'var(--online)';
    document.body.append(probe);
    const c = getComputedStyle(probe).backgroundColor;
    probe.remove();
    return c;
  });
  assert.notEqual(dot, green, 'no green dot while the hub does not answer');
  await page.screenshot({ path: path.join(screenshotDir(), 'hub-not-answering.png') });
  await page.unroute('**/v1/devices');
  await page.waitForSelector('#hub-lost', { state: 'hidden', timeout: 8000 });
  assert.equal(await page.getAttribute('body', 'data-hub'), 'live');
  // Chromium reports each refused request as a console error; nothing else may be one.
  assert.deepEqual(page.errors.filter((e) => !/Failed to load resource: net::ERR_CONNECTION_REFUSED/.test(e)), []);
  await page.close();
});

test('more raw readings in range than the page keeps (20,000): rollups instead, said in the note', async () => {
  const d = await device('busy');
  await d.publish('temperature', 20);
  await waitFor(async () => (await hub.readings('sensors/busy/temperature')).length === 1, { what: 'stored' });
  const page = await browser.context.newPage();
  page.errors = [];
  page.on('pageerror', (err) => page.errors.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => msg.type() === 'error' && page.errors.push(`console: ${msg.text()}`));
  // The hub answers every page full, with more to come: as a device at 10 Hz over an hour would.
  let pages = 0;
  await page.route('**/v1/readings?*', (route) => {
    const url = new URL(route.request().url());
    if (url.searchParams.get('filter') !== 'sensors/busy/#') return route.continue();
    pages++;
    const limit = Number(url.searchParams.get('limit'));
    const after = Number(url.searchParams.get('after') ?? 0);
    const readings = Array.from({ length: limit }, (_, i) => {
      const t = new Date(Date.now() - 3_000_000 + (after + i) * 100).toISOString();
      return { seq: after + i + 1, topic: 'sensors/busy/temperature', deviceId: 'busy', metric: 'temperature', value: 20, unit: 'C', timestamp: t, receivedAt: t };
    });
    return route.fulfill({ contentType: 'application/json', body: JSON.stringify({ readings, nextAfter: after + limit }) });
  });
  await page.goto(`${hub.httpUrl}/#/device/busy`);
  await chartReady(page, 'busy', 3_600_000);
  const state = await page.evaluate(() => {
    const c = globalThis.edgewatch.chart;
    return { mode: c.mode, fallback: c.fallback, points: c.series[0].xs.length, bands: c.plots[0].u.bands.length };
  });
  assert.deepEqual({ mode: state.mode, fallback: state.fallback, bands: state.bands }, { mode: 'rollup', fallback: true, bands: 1 }, JSON.stringify(state));
  assert.ok(state.points < 1000, `buckets, not readings: ${JSON.stringify(state)}`);
  assert.ok(pages >= 4 && pages <= 5, `stopped paging at the bound: ${pages} pages`);
  assert.match(await page.textContent('#chart-note'), /More than 20,000 readings in this range: rollups per 10 s instead/);
  assert.deepEqual(page.errors, []);
  await page.close();
});
