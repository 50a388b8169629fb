// The dashboard in headless Chromium against a real hub: load, one row per device with its
// metrics, presence, chart, forced transports, keyboard, phone width, dark mode. The device page,
// ranges, rollups, CSV and the hub-lost banner on failed polls: device-page.test.mjs.
// Run with scripts/browser-test (or `node --test tests/browser/`).
import assert from 'node:assert/strict';
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

/** The value shown in the chip of `metric` in the row of `deviceId`. */
const chipValue = (page, deviceId, metric) => page.locator(`#devices-body tr[data-device="${deviceId}"] [data-metric="${metric}"] .value`).textContent({ timeout: 1000 });
const statusOf = (page, deviceId) => page.locator(`#devices-body tr[data-device="${deviceId}"] .status`);

test('the page loads with no console errors and shows the empty state', async () => {
  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  await page.waitForSelector('#connection[data-state="connected"]', { timeout: 10_000 });
  assert.equal(await page.isVisible('#devices-empty'), true, 'empty state shown before any reading');
  assert.match(await page.textContent('#pub-example'), /mosquitto_pub .* -t sensors\/d1\/temperature/);
  assert.match(await page.textContent('#chart-empty'), /No readings yet/);
  await page.screenshot({ path: path.join(screenshotDir(), 'empty.png') });
  await page.waitForTimeout(500);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('a device appears as one row within 2 s of its first reading, its metrics as chips with units, updated live', async () => {
  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  await page.waitForSelector('#connection[data-state="connected"]', { timeout: 10_000 });
  const d = await device('kitchen');
  const sent = Date.now();
  await d.publish('temperature', 21.5);
  await page.waitForSelector('#devices-body tr[data-device="kitchen"]', { timeout: 2000 });
  assert.ok(Date.now() - sent < 2000);
  await waitFor(async () => (await chipValue(page, 'kitchen', 'temperature')) === '21.5', { timeoutMs: 2000, what: 'value 21.5' });
  // A second metric of the same device: a second chip in the same row, not a second row.
  await d.publish('humidity', 48, '%');
  await waitFor(async () => (await chipValue(page, 'kitchen', 'humidity').catch(() => null)) === '48', { timeoutMs: 2000, what: 'humidity chip' });
  assert.equal(await page.locator('#devices-body tr[data-device="kitchen"]').count(), 1, 'one row per device');
  const chips = await page.locator('#devices-body tr[data-device="kitchen"] .chip').allTextContents();
  assert.deepEqual(chips.map((t) => t.replace(/\s+/g, ' ').trim()), ['humidity 48%', 'temperature 21.5C']);
  assert.equal(await page.textContent('#devices-body tr[data-device="kitchen"] [data-metric="temperature"] .unit'), 'C');
  assert.equal(await page.locator('#devices-body tr[data-device="kitchen"] canvas.spark').count(), 2, 'a sparkline per metric');
  await d.publish('temperature', 22.25);
  await waitFor(async () => (await chipValue(page, 'kitchen', 'temperature')) === '22.25', { timeoutMs: 2000, what: 'value 22.25' });
  await waitFor(async () => (await statusOf(page, 'kitchen').textContent({ timeout: 1000 })) === 'online', { timeoutMs: 2000, what: 'online' });
  assert.match(await page.textContent('#devices-body tr[data-device="kitchen"] .age'), /^\d+ s$/, 'last seen');
  assert.match(await page.textContent('#device-count'), /1 device, 2 metrics/);
  // The first device to report is charted at once: the chart is never empty with data around.
  await waitFor(() => page.evaluate(() => globalThis.edgewatch.chart.deviceId === 'kitchen' && globalThis.edgewatch.chart.plots.length > 0), { timeoutMs: 3000, what: 'kitchen charted' });
  assert.equal(await page.isHidden('#chart-empty'), true);
  assert.match(await page.textContent('#conn-text'), /WebSocket · connected/);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('the device goes offline when its connection drops (last will)', async () => {
  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  const d = await device('garage');
  await d.publish('temperature', 12);
  const status = statusOf(page, 'garage');
  await waitFor(async () => (await status.textContent({ timeout: 1000 })) === 'online', { timeoutMs: 3000, what: 'garage online' });
  const crashed = Date.now();
  d.crash();
  // The broker sees the socket close, publishes the will (retained `offline`), the bridge
  // stores it as presence: first check the hub itself, so a failure says which side is wrong.
  const presence = async () => (await hub.api('/v1/devices')).devices.find((x) => x.deviceId === 'garage')?.status;
  await waitFor(async () => (await presence()) === 'offline', {
    timeoutMs: 5000,
    what: 'hub: GET /v1/devices to show garage "offline" after its MQTT socket was destroyed (last will published by the broker and stored as presence)',
  });
  // The page learns it from a live `status` event or from its periodic /v1/devices refresh.
  await waitFor(async () => (await status.textContent({ timeout: 1000 })) === 'offline', { timeoutMs: 5000, what: 'dashboard: garage row shown offline' });
  assert.ok(Date.now() - crashed < 10_000, 'offline shown within 10 s of the connection drop');
  assert.equal(await status.getAttribute('data-status'), 'offline');
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('a device whose readings stop turns stale; a stopped hub shows the connection lost, then recovers', async () => {
  // Its own hub: a 1 s minimum silence, and it is stopped and restarted below.
  const quiet = await new Hub({ bridge: ['presence_stale_after_min_s = 1'] }).start();
  try {
    const page = await openPage(browser.context, `${quiet.httpUrl}/`);
    await page.waitForSelector('#connection[data-state="connected"]', { timeout: 10_000 });
    assert.equal(await page.isHidden('#hub-lost'), true, 'no connection banner while connected');
    // A sensor that never publishes a status topic (like the demo's serial sensor).
    const sensor = await quiet.sensor('serial-1');
    const status = statusOf(page, 'serial-1');
    for (let i = 0; i < 3; i++) {
      await sensor.publish('temperature', 20 + i);
      await new Promise((r) => setTimeout(r, 200));
    }
    await waitFor(async () => (await status.textContent({ timeout: 1000 })) === 'online', { timeoutMs: 3000, what: 'serial-1 online while it reports' });
    // Silent: stale after the 1 s threshold, on the hub and on the page.
    const hubStatus = async () => (await quiet.api('/v1/devices')).devices.find((x) => x.deviceId === 'serial-1');
    const d = await waitFor(async () => {
      const x = await hubStatus();
      return x?.status === 'stale' && x;
    }, { timeoutMs: 5000, what: 'hub: GET /v1/devices shows serial-1 "stale" after 1 s without readings' });
    assert.equal(d.statusSource, 'readings');
    assert.equal(d.online, null, 'never published a status');
    await waitFor(async () => (await status.textContent({ timeout: 1000 })) === 'stale', { timeoutMs: 3000, what: 'dashboard: serial-1 shown stale' });
    assert.equal(await status.getAttribute('data-status'), 'stale');
    await page.screenshot({ path: path.join(screenshotDir(), 'stale.png') });
    // It reports again: online again.
    await sensor.publish('temperature', 25);
    await waitFor(async () => (await status.textContent({ timeout: 1000 })) === 'online', { timeoutMs: 3000, what: 'serial-1 online again after a reading' });
    assert.deepEqual(page.errors, []);
    await sensor.end();

    // The hub goes away: a banner says the page is not live, and no device stays green.
    const colors = () =>
      page.evaluate(() => {
        const probe = document.createElement('span');
        probe.style.background = 'var(--online)';
        document.body.append(probe);
        const online = getComputedStyle(probe).backgroundColor;
        probe.remove();
        const dots = [...document.querySelectorAll('#devices-body .status')].map((el) => getComputedStyle(el, '::before').backgroundColor);
        return { online, dots };
      });
    const before = await colors();
    assert.ok(before.dots.includes(before.online), `a green device before the hub stops: ${JSON.stringify(before)}`);
    await quiet.stop();
    await page.waitForSelector('#hub-lost:not([hidden])', { timeout: 15_000 });
    assert.match(await page.textContent('#hub-lost'), /Connection to the hub lost at .*not live/s);
    assert.equal(await page.getAttribute('body', 'data-hub'), 'lost');
    const lost = await colors();
    assert.ok(lost.dots.length > 0 && lost.dots.every((c) => c !== lost.online), `no green device while the hub is unreachable: ${JSON.stringify(lost)}`);
    const banner = await page.locator('#hub-lost').boundingBox();
    assert.ok(banner && banner.height > 10 && banner.y < 200, `banner visible at the top: ${JSON.stringify(banner)}`);
    await page.screenshot({ path: path.join(screenshotDir(), 'hub-lost.png') });

    // The hub comes back: the banner goes, the list is live again.
    await quiet.start();
    await page.waitForSelector('#connection[data-state="connected"]', { timeout: 20_000 });
    await page.waitForSelector('#hub-lost', { state: 'hidden', timeout: 5000 });
    assert.equal(await page.getAttribute('body', 'data-hub'), 'live');
    // serial-1 has been silent since before the restart: stale, from the hub's records.
    await waitFor(async () => (await status.textContent({ timeout: 1000 })) === 'stale', { timeoutMs: 5000, what: 'serial-1 stale after the restart' });
    await page.close();
  } finally {
    await quiet.dispose();
  }
});

/** Clicks the row of `deviceId` outside its link: charts it in the list view. */
const selectRow = (page, deviceId) => page.click(`#devices-body tr[data-device="${deviceId}"] td.age`, { timeout: 5000 });

test('the chart has points from history and from live data', async () => {
  const d = await device('attic');
  // History: readings with event times over the last ten minutes.
  const now = Date.now();
  for (let i = 10; i >= 1; i--) {
    await d.publish('temperature', 15 + i / 10, 'C', { timestamp: new Date(now - i * 60_000).toISOString() });
  }
  await waitFor(async () => (await hub.readings('sensors/attic/temperature')).length === 10, { what: 'history stored' });
  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  await selectRow(page, 'attic');
  assert.equal(await page.getAttribute('#devices-body tr[data-device="attic"]', 'aria-current'), 'true', 'the charted row is marked');
  const points = () =>
    page.evaluate(() => {
      const c = globalThis.edgewatch.chart;
      const s = c.deviceId === 'attic' && !c.loading ? c.series.find((x) => x.metric === 'temperature') : null;
      return s ? { history: s.historyCount, live: s.liveCount, total: s.xs.length } : null;
    });
  // 1 h (the default) is raw: each of the ten readings is a point.
  await waitFor(async () => (await points())?.history === 10, { timeoutMs: 5000, what: 'ten history points' });
  for (let i = 0; i < 5; i++) await d.publish('temperature', 18 + i);
  await waitFor(async () => (await points())?.live === 5, { timeoutMs: 3000, what: 'live points' });
  const p = await points();
  assert.equal(p.total, p.history + 5, JSON.stringify(p));
  // The legend is redrawn with the chart (next frame), after the point is counted.
  await waitFor(async () => /temperature: 22 C/.test(await page.textContent('#chart-legend')), { timeoutMs: 2000, what: 'legend shows the last live value' });
  assert.match(await page.textContent('#chart-title'), /attic/);
  // Hover shows value and time.
  const box = await page.locator('#chart .u-over').first().boundingBox();
  await page.mouse.move(box.x + box.width - 3, box.y + box.height / 2);
  await waitFor(() => page.isVisible('#chart-tip'), { timeoutMs: 2000, what: 'tooltip' });
  assert.match(await page.textContent('#chart-tip'), /temperature: \d/);
  // 24 h: rollups of the same history.
  await page.getByRole('button', { name: '24 h', exact: true }).click();
  await waitFor(() => page.evaluate(() => globalThis.edgewatch.chart.mode === 'rollup' && !globalThis.edgewatch.chart.loading && globalThis.edgewatch.chart.series[0]?.historyCount >= 1), { timeoutMs: 5000, what: 'rollups after range change' });
  await page.mouse.move(box.x + box.width * 0.7, box.y + box.height / 2);
  await page.screenshot({ path: path.join(screenshotDir(), 'dashboard.png') });
  assert.deepEqual(page.errors, []);
  await page.close();
});

for (const transport of ['sse', 'poll']) {
  test(`forcing ?transport=${transport} keeps updates flowing`, async () => {
    const page = await openPage(browser.context, `${hub.httpUrl}/?transport=${transport}`);
    await page.waitForSelector(`#connection[data-state="connected"][data-transport="${transport}"]`, { timeout: 10_000 });
    const d = await device(`t-${transport}`);
    for (let i = 1; i <= 5; i++) {
      await d.publish('humidity', 40 + i, '%');
      await waitFor(async () => (await chipValue(page, `t-${transport}`, 'humidity').catch(() => null)) === String(40 + i), { timeoutMs: 3000, what: `${transport} value ${40 + i}` });
    }
    assert.match(await page.textContent('#conn-text'), transport === 'sse' ? /SSE · connected/ : /Long polling · connected/);
    await page.screenshot({ path: path.join(screenshotDir(), `transport-${transport}.png`) });
    assert.deepEqual(page.errors, []);
    await page.close();
  });
}

test('the stream panel lists raw live messages for a typed filter', async () => {
  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  await page.fill('#stream-filter', 'sensors/+/pressure');
  await page.click('#stream-toggle');
  await waitFor(async () => /connected/.test(await page.textContent('#stream-state')), { timeoutMs: 5000, what: 'stream connected' });
  const d = await device('cellar');
  await d.publish('temperature', 9); // not matching
  await d.publish('pressure', 1013, 'hPa');
  await waitFor(async () => (await page.locator('#stream-log li').count()) >= 1, { timeoutMs: 3000, what: 'stream message' });
  const text = await page.textContent('#stream-log');
  assert.match(text, /"topic":"sensors\/cellar\/pressure"/);
  assert.doesNotMatch(text, /sensors\/cellar\/temperature/);
  assert.equal(await page.isDisabled('#stream-filter'), true, 'the filter is locked while watching');
  await page.click('#stream-toggle'); // stop
  await waitFor(async () => (await page.textContent('#stream-state')) === 'Stopped.', { timeoutMs: 2000, what: 'stream stopped' });
  await page.fill('#stream-filter', 'sensors/#/bad');
  await page.click('#stream-toggle');
  assert.match(await page.textContent('#stream-state'), /not a valid topic filter/);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('keyboard: rows are reachable, Space charts a device, Enter opens its page and Back returns to it', async () => {
  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  await page.waitForSelector('#devices-body tr');
  await page.focus('#devices-body tr[tabindex="0"]');
  await page.keyboard.press('ArrowDown');
  const id = await page.evaluate(() => document.activeElement.dataset.device);
  assert.ok(id, 'a row has focus');
  assert.equal(await page.locator('#devices-body tr[tabindex="0"]').count(), 1, 'one row in the tab order (roving focus)');
  await page.keyboard.press(' ');
  await waitFor(() => page.evaluate((k) => globalThis.edgewatch.chart.deviceId === k, id), { timeoutMs: 2000, what: 'device charted' });
  await waitFor(async () => (await page.getAttribute(`#devices-body tr[data-device="${id}"]`, 'aria-current')) === 'true', { timeoutMs: 2000, what: 'row marked' });
  await page.keyboard.press('End');
  assert.equal(await page.evaluate(() => document.activeElement === document.querySelector('#devices-body').lastElementChild), true, 'End: last row');
  await page.keyboard.press('Home');
  assert.equal(await page.evaluate(() => document.activeElement === document.querySelector('#devices-body').firstElementChild), true, 'Home: first row');
  await page.keyboard.press('ArrowDown');
  await page.keyboard.press('Enter');
  await waitFor(async () => (await page.evaluate(() => location.hash)) === `#/device/${encodeURIComponent(id)}`, { timeoutMs: 2000, what: 'device page route' });
  await page.waitForSelector('#device-panel:not([hidden])');
  assert.equal(await page.textContent('#device-title'), id);
  assert.equal(await page.evaluate(() => document.activeElement.id), 'device-title', 'focus moves to the page title');
  assert.equal(await page.isHidden('#devices-panel'), true);
  await page.click('#back-link');
  await page.waitForSelector('#devices-panel:not([hidden])');
  assert.equal(await page.evaluate(() => document.activeElement.dataset?.device), id, 'focus back on the row');
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('sorting: by status (online first), by last seen (newest first), reversed on a second click, and back by device', async () => {
  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  await page.waitForSelector('#devices-body tr[data-device="garage"] .status[data-status="offline"]', { timeout: 5000 });
  const rows = () =>
    page.evaluate(() =>
      [...document.querySelectorAll('#devices-body tr')].map((tr) => ({ id: tr.dataset.device, status: tr.querySelector('.status').textContent, seen: globalThis.edgewatch.devices.get(tr.dataset.device).lastSeen })),
    );
  const rank = { online: 0, stale: 1, offline: 2, unknown: 3 };
  const sorted = (list, key, dir) => list.every((r, i) => i === 0 || dir * (key(r) - key(list[i - 1])) >= 0);
  await page.click('th[data-sort="status"] button');
  await waitFor(async () => sorted(await rows(), (r) => rank[r.status], 1), { timeoutMs: 2000, what: 'online first' });
  assert.equal(await page.getAttribute('th[data-sort="status"]', 'aria-sort'), 'ascending');
  assert.equal(await page.getAttribute('th[data-sort="device"]', 'aria-sort'), 'none');
  await page.click('th[data-sort="status"] button');
  await waitFor(async () => sorted(await rows(), (r) => rank[r.status], -1), { timeoutMs: 2000, what: 'offline first' });
  assert.equal(await page.getAttribute('th[data-sort="status"]', 'aria-sort'), 'descending');
  await page.click('th[data-sort="seen"] button');
  await waitFor(async () => sorted(await rows(), (r) => r.seen, -1), { timeoutMs: 2000, what: 'newest first' });
  await page.click('th[data-sort="device"] button');
  await waitFor(async () => {
    const ids = (await rows()).map((r) => r.id);
    return ids.join() === [...ids].sort((a, b) => a.localeCompare(b, undefined, { numeric: true })).join();
  }, { timeoutMs: 2000, what: 'by device id' });
  assert.deepEqual(page.errors, []);
  await page.close();
});

// ---- several metrics in one plot, request ranges, phone width, dark mode ------------------------

/** Publishes `n` readings one minute apart ending a minute ago, offset by `shiftMs`. */
async function publishHistory(d, metric, base, { n = 10, shiftMs = 0, unit = 'C' } = {}) {
  const now = Date.now();
  for (let i = n; i >= 1; i--) {
    await d.publish(metric, base + i / 10, unit, { timestamp: new Date(now - i * 60_000 - shiftMs).toISOString() });
  }
}

/** What the first plot holds and draws, per charted metric (from the page's test hook). */
const chartState = (page) =>
  page.evaluate(() => {
    const { chart } = globalThis.edgewatch;
    const plot = chart.plots[0];
    const u = plot?.u;
    return {
      series: (plot?.members ?? []).map((s, i) => {
        const firstLive = s.xs[s.historyCount] ?? Infinity;
        const xs = u.data[0];
        const ys = u.data[i + 1];
        let drawnHistory = 0;
        for (let j = 0; j < xs.length; j++) if (xs[j] < firstLive && ys[j] !== null && ys[j] !== undefined) drawnHistory++;
        return { metric: s.metric, color: s.color, history: s.historyCount, live: s.liveCount, drawnHistory, alignedLength: ys.length };
      }),
      xLength: u ? u.data[0].length : 0,
    };
  });

/**
 * For each metric of the first plot, how many of the midpoints between its consecutive history
 * points have a pixel of its colour on the chart canvas nearby: the line is really drawn there.
 */
const historyPixels = (page) =>
  page.evaluate(() => {
    const { chart } = globalThis.edgewatch;
    const { u, members } = chart.plots[0];
    const ctx = u.ctx;
    const rgb = (hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
    return members.map((s, i) => {
      const [r, g, b] = rgb(s.color);
      const scale = u.series[i + 1].scale;
      let hits = 0;
      let checked = 0;
      for (let j = 0; j + 1 < s.historyCount; j++) {
        const x = u.valToPos((s.xs[j] + s.xs[j + 1]) / 2, 'x', true);
        const y = u.valToPos((s.ys[j] + s.ys[j + 1]) / 2, scale, true);
        const size = 7;
        const img = ctx.getImageData(Math.round(x - size / 2), Math.round(y - size / 2), size, size).data;
        checked++;
        for (let p = 0; p < img.length; p += 4) {
          if (img[p + 3] > 100 && Math.abs(img[p] - r) < 60 && Math.abs(img[p + 1] - g) < 60 && Math.abs(img[p + 2] - b) < 60) {
            hits++;
            break;
          }
        }
      }
      return { metric: s.metric, checked, hits };
    });
  });

test('metrics of one unit share a plot; each draws its own readings (own times) and live points', async () => {
  // Two metrics whose readings never share a timestamp: the merge into uPlot's one x array
  // leaves holes in each, which must be drawn across, not dropped.
  const d = await device('ov');
  await publishHistory(d, 'temperature', 10);
  await publishHistory(d, 'dewpoint', 30, { shiftMs: 17_000 });
  for (const m of ['temperature', 'dewpoint']) {
    await waitFor(async () => (await hub.readings(`sensors/ov/${m}`)).length === 10, { what: `${m} history stored` });
  }
  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  await selectRow(page, 'ov');
  await waitFor(async () => {
    const st = await chartState(page);
    return st.series.length === 2 && st.series.every((s) => s.history === 10);
  }, { timeoutMs: 5000, what: 'history of both metrics' });
  await d.publish('temperature', 12);
  await d.publish('dewpoint', 32);
  await waitFor(async () => (await chartState(page)).series.every((s) => s.live >= 1), { timeoutMs: 3000, what: 'live points of both metrics' });
  await page.waitForTimeout(200); // a frame to draw them
  const state = await chartState(page);
  assert.equal(await page.evaluate(() => globalThis.edgewatch.chart.plots.length), 1, 'one unit, one plot');
  assert.ok(state.xLength >= 22, `aligned x has both metrics' points: ${JSON.stringify(state)}`);
  for (const s of state.series) {
    assert.equal(s.alignedLength, state.xLength, `${s.metric}: one value slot per x`);
    assert.ok(s.drawnHistory >= 10, `${s.metric}: history in uPlot's data: ${JSON.stringify(state)}`);
  }
  const pixels = await historyPixels(page);
  for (const p of pixels) {
    assert.ok(p.checked >= 9 && p.hits >= p.checked - 1, `${p.metric}: its colour drawn between history points: ${JSON.stringify(pixels)}`);
  }
  // Hovering over a point of one metric shows the nearest value of the other too.
  const target = await page.evaluate(() => {
    const { u, members } = globalThis.edgewatch.chart.plots[0];
    const s = members.find((m) => m.metric === 'temperature');
    return { left: u.valToPos(s.xs[4], 'x'), top: u.valToPos(s.ys[4], u.series[1].scale) };
  });
  const box = await page.locator('#chart .u-over').first().boundingBox();
  await page.mouse.move(box.x + target.left, box.y + target.top);
  await waitFor(() => page.isVisible('#chart-tip'), { timeoutMs: 2000, what: 'tooltip' });
  const tip = await page.textContent('#chart-tip');
  assert.match(tip, /temperature: 10\.\d+ C/, tip);
  assert.match(tip, /dewpoint: 30\.\d+ C/, tip);
  await page.screenshot({ path: path.join(screenshotDir(), 'overlay.png') });
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('the range buttons ask for raw readings over 5 min and 1 h, rollups over 24 h and 7 d', async () => {
  const d = await device('ranges');
  await d.publish('temperature', 20);
  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  const requests = [];
  page.on('request', (req) => {
    const url = new URL(req.url());
    if ((url.pathname === '/v1/readings' || url.pathname === '/v1/rollups') && url.searchParams.get('filter') === 'sensors/ranges/#') {
      requests.push({ path: url.pathname, q: url.searchParams });
    }
  });
  await selectRow(page, 'ranges');
  await waitFor(() => requests.length === 1, { timeoutMs: 3000, what: 'history request on charting' });
  const span = (q) => Number(q.get('to')) - Number(q.get('from'));
  assert.equal(requests[0].path, '/v1/readings', 'the default range is raw');
  assert.equal(span(requests[0].q), 3_600_000, 'default range is 1 h');
  const ranges = [
    ['5 min', 300_000, '/v1/readings'],
    ['24 h', 86_400_000, '/v1/rollups'],
    ['7 d', 604_800_000, '/v1/rollups'],
    ['1 h', 3_600_000, '/v1/readings'],
  ];
  for (const [label, ms, route] of ranges) {
    const before = requests.length;
    const clickedAt = Date.now();
    await page.getByRole('button', { name: label, exact: true }).click();
    await waitFor(() => requests.length === before + 1, { timeoutMs: 3000, what: `history request for ${label}` });
    const { path: asked, q } = requests[before];
    assert.equal(asked, route, `${label}: ${route}`);
    assert.equal(span(q), ms, `${label}: from/to span`);
    assert.ok(Math.abs(Number(q.get('to')) - clickedAt) < 5000, `${label}: the range ends now`);
    assert.equal(await page.getAttribute(`button.range[data-range="${ms}"]`, 'aria-pressed'), 'true', `${label} pressed`);
    assert.equal(await page.locator('button.range[aria-pressed="true"]').count(), 1, 'one range pressed');
  }
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('phone width (375 px): device ids whole and told apart, no horizontal overflow, list and chart usable', async () => {
  // Ids that only differ at the end: a cut "demo-sensor-li…" would make them look the same.
  const ids = ['demo-sensor-living-room-01', 'demo-sensor-living-room-02'];
  for (const id of ids) {
    const x = await device(id);
    await x.publish('temperature', 19.5);
    await x.publish('humidity', 41, '%');
  }
  const d = await device('phone');
  await publishHistory(d, 'temperature', 20, { n: 5 });
  await d.publish('temperature', 21.25);
  const page = await browser.context.newPage();
  page.errors = [];
  page.on('pageerror', (err) => page.errors.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => msg.type() === 'error' && page.errors.push(`console: ${msg.text()}`));
  await page.setViewportSize({ width: 375, height: 812 });
  await page.goto(`${hub.httpUrl}/`);
  const row = page.locator('#devices-body tr[data-device="phone"]');
  await row.waitFor({ timeout: 5000 });
  for (const id of ids) await page.locator(`#devices-body tr[data-device="${id}"]`).waitFor({ timeout: 5000 });
  const overflow = () => page.evaluate(() => ({ scroll: document.documentElement.scrollWidth, inner: innerWidth }));
  let o = await overflow();
  assert.ok(o.scroll <= o.inner, `page wider than the phone: ${JSON.stringify(o)}`);
  // Each id is shown whole (wrapped if need be, never cut with an ellipsis) inside the screen.
  const shown = await page.evaluate((list) =>
    list.map((id) => {
      const a = document.querySelector(`#devices-body tr[data-device="${id}"] .device-id`);
      const cell = a.closest('th');
      const rects = [...a.getClientRects()];
      const cellBox = cell.getBoundingClientRect();
      return {
        id,
        text: a.textContent,
        title: a.title,
        left: Math.min(...rects.map((r) => r.left)),
        right: Math.max(...rects.map((r) => r.right)),
        cellLeft: cellBox.left,
        cellRight: cellBox.right,
        clipped: cell.scrollWidth > cell.clientWidth + 1,
        ellipsis: getComputedStyle(cell).textOverflow === 'ellipsis' && getComputedStyle(cell).overflow === 'hidden',
      };
    }), [...ids, 'phone']);
  for (const s of shown) {
    assert.equal(s.text, s.id, `${s.id}: the whole id`);
    assert.ok(s.title.includes(s.id), `${s.id}: full id in the title`);
    assert.ok(s.left >= 0 && s.right <= 375 && s.right <= s.cellRight + 1 && s.left >= s.cellLeft - 1, `${s.id}: inside its cell and the screen: ${JSON.stringify(s)}`);
    assert.ok(!s.clipped && !s.ellipsis, `${s.id}: not cut: ${JSON.stringify(s)}`);
  }
  // Status in words and the values are on screen.
  for (const sel of ['.device-id', '.status', '.age', '[data-metric="temperature"] .value']) {
    const bb = await row.locator(sel).boundingBox();
    assert.ok(bb && bb.width > 0 && bb.x >= 0 && bb.x + bb.width <= 375, `${sel} inside the viewport: ${JSON.stringify(bb)}`);
  }
  assert.equal(await row.locator('.status').textContent(), 'online');
  assert.equal(await row.locator('[data-metric="temperature"] .value').textContent(), '21.25');
  await page.screenshot({ path: path.join(screenshotDir(), 'phone-list.png'), fullPage: true });
  // Filtering works at this width.
  await page.fill('#device-filter', 'phone');
  await waitFor(async () => (await page.locator('#devices-body tr').count()) === 1, { timeoutMs: 2000, what: 'filtered to one row' });
  const filterBox = await page.locator('#device-filter').boundingBox();
  assert.ok(filterBox.x >= 0 && filterBox.x + filterBox.width <= 375, `filter inside: ${JSON.stringify(filterBox)}`);
  // Tapping the row charts it; the chart fits the width and has its history.
  await row.locator('td.age').click();
  await waitFor(() => page.evaluate(() => globalThis.edgewatch.chart.deviceId === 'phone' && globalThis.edgewatch.chart.series[0]?.historyCount >= 5), { timeoutMs: 5000, what: 'chart history' });
  await page.locator('#chart .u-over').first().scrollIntoViewIfNeeded();
  const chartBox = await page.locator('#chart .uplot').first().boundingBox();
  assert.ok(chartBox.width >= 250 && chartBox.x >= 0 && chartBox.x + chartBox.width <= 375, `chart fits: ${JSON.stringify(chartBox)}`);
  for (const b of await page.locator('button.range').all()) {
    const bb = await b.boundingBox();
    assert.ok(bb.x >= 0 && bb.x + bb.width <= 375 && bb.height >= 24, `range button reachable: ${JSON.stringify(bb)}`);
  }
  await page.getByRole('button', { name: '24 h', exact: true }).click();
  await waitFor(async () => (await page.getAttribute('button.range[data-range="86400000"]', 'aria-pressed')) === 'true', { timeoutMs: 2000, what: '24 h pressed' });
  o = await overflow();
  assert.ok(o.scroll <= o.inner, `page wider than the phone with the chart: ${JSON.stringify(o)}`);
  await page.screenshot({ path: path.join(screenshotDir(), 'phone.png'), fullPage: true });
  assert.deepEqual(page.errors, []);
  await page.close();
});

/** WCAG contrast ratio of two `rgb()`/`rgba()` colours (alpha composited on `under`). */
function contrast(fg, bg) {
  const parse = (c) => c.match(/[\d.]+/g).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => {
      const s = v / 255;
      return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
    };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const [l1, l2] = [lum(parse(fg)), lum(parse(bg))].sort((x, y) => y - x);
  return (l1 + 0.05) / (l2 + 0.05);
}

test('dark mode follows the system preference with readable contrast', async () => {
  const d = await device('dark');
  await d.publish('temperature', 19.5);
  const page = await browser.context.newPage();
  page.errors = [];
  page.on('pageerror', (err) => page.errors.push(`pageerror: ${err.message}`));
  await page.emulateMedia({ colorScheme: 'dark' });
  await page.goto(`${hub.httpUrl}/`);
  await page.locator('#devices-body tr[data-device="dark"]').waitFor({ timeout: 5000 });
  const colors = await page.evaluate(() => {
    const cs = (el) => getComputedStyle(el);
    const panel = document.querySelector('.panel');
    return {
      page: cs(document.documentElement).backgroundColor,
      body: cs(document.body).backgroundColor,
      text: cs(document.body).color,
      panel: cs(panel).backgroundColor,
      panelText: cs(panel.querySelector('h2')).color,
      muted: cs(document.querySelector('.footnote')).color,
      cell: cs(document.querySelector('#devices-body tr[data-device="dark"] [data-metric="temperature"] .value')).color,
    };
  });
  const lum = (c) => c.match(/[\d.]+/g).slice(0, 3).map(Number).reduce((a, v) => a + v, 0) / 3;
  assert.equal(colors.body, 'rgba(0, 0, 0, 0)', 'body transparent: the page background shows');
  assert.ok(lum(colors.page) < 50, `dark page background: ${colors.page}`);
  assert.ok(lum(colors.panel) < 60, `dark panels: ${colors.panel}`);
  for (const [what, fg, bg] of [
    ['body text on the page', colors.text, colors.page],
    ['panel text', colors.panelText, colors.panel],
    ['values in the list', colors.cell, colors.panel],
    ['muted text on a panel', colors.muted, colors.panel],
  ]) {
    const ratio = contrast(fg, bg);
    assert.ok(ratio >= 4.5, `${what}: contrast ${ratio.toFixed(2)} (${fg} on ${bg})`);
  }
  // Light mode, for comparison: the same page switches when the preference changes.
  await page.emulateMedia({ colorScheme: 'light' });
  const light = await page.evaluate(() => getComputedStyle(document.documentElement).backgroundColor);
  assert.ok(lum(light) > 200, `light background after switching: ${light}`);
  await page.emulateMedia({ colorScheme: 'dark' });
  await page.screenshot({ path: path.join(screenshotDir(), 'dark.png') });
  assert.deepEqual(page.errors, []);
  await page.close();
});
