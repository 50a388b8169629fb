// The dashboard holds up: 500 devices listed, a chart with 10,000 points, 50 readings/s
// arriving, while the main thread stays responsive (no long task, frames keep coming).
// Thresholds are generous because the test machine is shared; they catch a page that
// re-renders everything per reading, not a slow CI box.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { launchBrowser, openPage, screenshotDir } from './support/browser.mjs';
import { Hub, waitFor } from './support/hub.mjs';

const DEVICES = 500;
const RATE = 50; // readings per second
const SECONDS = 5;
const CHART_POINTS = 10_000;

let hub;
let browser;
let feeder;

before(async () => {
  hub = await new Hub().start();
  browser = await launchBrowser();
  feeder = await hub.device('load-feeder');
});

after(async () => {
  await feeder?.end();
  await browser?.close();
  await hub?.dispose();
});

const publish = (id, value) =>
  feeder.client.publishAsync(`sensors/${id}/temperature`, JSON.stringify({ value, unit: 'C' }), { qos: 0 });

test(`${DEVICES} devices, a ${CHART_POINTS}-point chart and ${RATE} readings/s stay smooth`, async () => {
  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  await page.waitForSelector('#connection[data-state="connected"]', { timeout: 10_000 });
  await page.evaluate(() => {
    globalThis.perf = { longTasks: [], gaps: [], last: performance.now(), run: true };
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) globalThis.perf.longTasks.push(Math.round(e.duration));
    }).observe({ type: 'longtask' });
    const loop = (t) => {
      const p = globalThis.perf;
      p.gaps.push(t - p.last);
      p.last = t;
      if (p.run) requestAnimationFrame(loop);
    };
    requestAnimationFrame(loop);
  });

  // 500 devices, one reading each.
  for (let i = 0; i < DEVICES; i++) await publish(`load-${String(i).padStart(3, '0')}`, i);
  await waitFor(async () => (await page.locator('#devices-body tr').count()) >= DEVICES, { timeoutMs: 10_000, what: `${DEVICES} rows` });

  // A charted device with 10,000 points (injected on top of its loaded history).
  await page.click('#devices-body tr[data-device="load-000"] td.age');
  await waitFor(() => page.evaluate(() => {
    const c = globalThis.edgewatch.chart;
    return c.deviceId === 'load-000' && !c.loading && c.series.length === 1;
  }), { timeoutMs: 5000, what: 'history loaded' });
  await page.evaluate((n) => {
    const s = globalThis.edgewatch.chart.series[0];
    const now = Date.now() / 1000;
    const xs = [];
    const ys = [];
    for (let i = 0; i < n; i++) {
      xs.push(now - 850 + (i * 840) / n);
      ys.push(20 + Math.sin(i / 200) * 3);
    }
    s.xs = xs.concat(s.xs);
    s.ys = ys.concat(s.ys);
    globalThis.edgewatch.chart.dirty = true;
  }, CHART_POINTS);

  // Measure only the live phase.
  await page.evaluate(() => {
    const chart = globalThis.edgewatch.chart;
    const render = chart.render.bind(chart);
    globalThis.perf.chartMs = 0;
    globalThis.perf.chartCalls = 0;
    chart.render = () => {
      const t = performance.now();
      render();
      globalThis.perf.chartMs += performance.now() - t;
      globalThis.perf.chartCalls++;
    };
    globalThis.perf.longTasks = [];
    globalThis.perf.gaps = [];
  });
  const start = Date.now();
  let sent = 0;
  while (Date.now() - start < SECONDS * 1000) {
    const due = Math.floor(((Date.now() - start) / 1000) * RATE);
    for (; sent < due; sent++) {
      const id = sent % 5 === 0 ? 'load-000' : `load-${String(sent % DEVICES).padStart(3, '0')}`;
      await publish(id, 1000 + sent);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  const lastPlotted = 1000 + Math.floor((sent - 1) / 5) * 5;
  await waitFor(async () => (await page.textContent('#devices-body tr[data-device="load-000"] [data-metric="temperature"] .value')) === new Intl.NumberFormat('en-US').format(lastPlotted), {
    timeoutMs: 3000,
    what: `load-000 shows ${lastPlotted}`,
  });
  const perf = await page.evaluate(() => {
    globalThis.perf.run = false;
    const gaps = globalThis.perf.gaps.slice(1).sort((a, b) => a - b);
    const s = globalThis.edgewatch.chart.series[0];
    return {
      longTasks: globalThis.perf.longTasks,
      frames: gaps.length,
      p95Gap: Math.round(gaps[Math.floor(gaps.length * 0.95)] ?? 0),
      maxGap: Math.round(gaps.at(-1) ?? 0),
      points: s.xs.length,
      chartMs: Math.round(globalThis.perf.chartMs),
      chartCalls: globalThis.perf.chartCalls,
      rate: Number(document.getElementById('conn-rate').textContent),
    };
  });
  console.log(`# load: ${JSON.stringify({ ...perf, longTasks: perf.longTasks.slice(0, 20) })}`);
  await page.screenshot({ path: path.join(screenshotDir(), 'load.png') });
  assert.ok((await page.locator('#devices-body tr').count()) >= DEVICES, 'every device listed');
  assert.ok(perf.points >= CHART_POINTS, `chart holds ${perf.points} points`);
  assert.ok(perf.frames >= SECONDS * 20, `only ${perf.frames} animation frames in ${SECONDS} s: the page is janky`);
  assert.ok(perf.p95Gap < 100, `95th percentile frame gap ${perf.p95Gap} ms`);
  const worst = Math.max(0, ...perf.longTasks);
  assert.ok(worst < 300, `a ${worst} ms long task while readings arrived`);
  assert.ok(perf.rate >= RATE * 0.5, `readings/s shows ${perf.rate}`);
  assert.deepEqual(page.errors, []);
  await page.close();
});
