// The dashboard in headless Chromium against a real hub: load, live devices, presence, chart,
// forced transports. Run with scripts/browser-test (or `node --test tests/browser/`).
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

const rowValue = (page, topic) => page.locator(`tr[data-key="${topic}"] .value`).textContent({ timeout: 1000 });

test('the page loads with no console errors and shows the empty state', async () => {
  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  await page.waitForSelector('#connection[data-state="connected"]', { timeout: 10_000 });
  assert.equal(await page.isVisible('#devices-empty'), true, 'empty state shown before any reading');
  assert.match(await page.textContent('#pub-example'), /mosquitto_pub .* -t sensors\/d1\/temperature/);
  await page.screenshot({ path: path.join(screenshotDir(), 'empty.png') });
  await page.waitForTimeout(500);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('a device appears within 2 s of its first reading and its value updates live', async () => {
  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  await page.waitForSelector('#connection[data-state="connected"]', { timeout: 10_000 });
  const d = await device('kitchen');
  const sent = Date.now();
  await d.publish('temperature', 21.5);
  await page.waitForSelector('tr[data-key="sensors/kitchen/temperature"]', { timeout: 2000 });
  assert.ok(Date.now() - sent < 2000);
  await waitFor(async () => (await rowValue(page, 'sensors/kitchen/temperature')) === '21.5', { timeoutMs: 2000, what: 'value 21.5' });
  await d.publish('temperature', 22.25);
  await waitFor(async () => (await rowValue(page, 'sensors/kitchen/temperature')) === '22.25', { timeoutMs: 2000, what: 'value 22.25' });
  await waitFor(async () => (await page.textContent('tr[data-key="sensors/kitchen/temperature"] .status')) === 'online', { timeoutMs: 2000, what: 'online' });
  assert.match(await page.textContent('#conn-text'), /WebSocket · connected/);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('the device goes offline when its connection drops (last will)', async () => {
  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  const d = await device('garage');
  await d.publish('temperature', 12);
  const status = page.locator('tr[data-key="sensors/garage/temperature"] .status');
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
    const status = page.locator('tr[data-key="sensors/serial-1/temperature"] .status');
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

test('the chart has points from history and from live data', async () => {
  const d = await device('attic');
  // History: readings with event times over the last ten minutes.
  const now = Date.now();
  for (let i = 10; i >= 1; i--) {
    await d.publish('temperature', 15 + i / 10, 'C', { timestamp: new Date(now - i * 60_000).toISOString() });
  }
  await waitFor(async () => (await hub.readings('sensors/attic/temperature')).length === 10, { what: 'history stored' });
  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  await page.click('tr[data-key="sensors/attic/temperature"]', { timeout: 5000 });
  const points = () =>
    page.evaluate(() => {
      const s = globalThis.edgewatch.chart.series.find((x) => x.topic === 'sensors/attic/temperature');
      return s ? { history: s.historyCount, live: s.liveCount, total: s.xs.length } : null;
    });
  await waitFor(async () => (await points())?.history >= 5, { timeoutMs: 5000, what: 'history points' });
  for (let i = 0; i < 5; i++) await d.publish('temperature', 18 + i);
  await waitFor(async () => (await points())?.live === 5, { timeoutMs: 3000, what: 'live points' });
  const p = await points();
  assert.ok(p.total >= p.history + 5, JSON.stringify(p));
  // The legend is redrawn with the chart (next frame), after the point is counted.
  await waitFor(async () => /attic temperature: 22 C/.test(await page.textContent('#chart-legend')), {
    timeoutMs: 2000,
    what: 'legend shows the last live value',
  });
  // Hover shows value and time.
  const box = await page.locator('#chart .u-over').boundingBox();
  await page.mouse.move(box.x + box.width - 3, box.y + box.height / 2);
  await waitFor(() => page.isVisible('#chart-tip'), { timeoutMs: 2000, what: 'tooltip' });
  assert.match(await page.textContent('#chart-tip'), /attic temperature: \d/);
  // Range buttons reload history.
  await page.click('button.range[data-range="3600000"]');
  await waitFor(async () => (await points())?.history >= 5, { timeoutMs: 5000, what: 'history after range change' });
  const file = path.join(screenshotDir(), 'dashboard.png');
  await page.mouse.move(box.x + box.width * 0.7, box.y + box.height / 2);
  await page.screenshot({ path: file });
  assert.deepEqual(page.errors, []);
  await page.close();
});

for (const transport of ['sse', 'poll']) {
  test(`forcing ?transport=${transport} keeps updates flowing`, async () => {
    const page = await openPage(browser.context, `${hub.httpUrl}/?transport=${transport}`);
    await page.waitForSelector(`#connection[data-state="connected"][data-transport="${transport}"]`, { timeout: 10_000 });
    const d = await device(`t-${transport}`);
    const topic = `sensors/t-${transport}/humidity`;
    for (let i = 1; i <= 5; i++) {
      await d.publish('humidity', 40 + i, '%');
      await waitFor(async () => (await rowValue(page, topic).catch(() => null)) === String(40 + i), { timeoutMs: 3000, what: `${transport} value ${40 + i}` });
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

test('keyboard: rows are reachable and toggle the chart with Enter', async () => {
  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  await page.waitForSelector('#devices-body tr');
  await page.focus('#devices-body tr[tabindex="0"]');
  await page.keyboard.press('ArrowDown');
  const key = await page.evaluate(() => document.activeElement.dataset.key);
  assert.ok(key, 'a row has focus');
  await page.keyboard.press('Enter');
  await waitFor(() => page.evaluate((k) => globalThis.edgewatch.chart.has(k), key), { timeoutMs: 2000, what: 'row plotted' });
  assert.deepEqual(page.errors, []);
  await page.close();
});

// ---- overlaid series, phone width, dark mode, range buttons ----------------------------------

/** Publishes `n` readings one minute apart ending a minute ago, offset by `shiftMs`. */
async function publishHistory(d, metric, base, { n = 10, shiftMs = 0 } = {}) {
  const now = Date.now();
  for (let i = n; i >= 1; i--) {
    await d.publish(metric, base + i / 10, 'C', { timestamp: new Date(now - i * 60_000 - shiftMs).toISOString() });
  }
}

/** What the chart holds and draws, per plotted series (from the page's test hook). */
const chartState = (page) =>
  page.evaluate(() => {
    const { chart } = globalThis.edgewatch;
    const u = chart.plot;
    return {
      series: chart.series.map((s, i) => {
        const firstLive = s.xs[s.historyCount] ?? Infinity;
        const xs = u ? u.data[0] : [];
        const ys = u ? u.data[i + 1] : [];
        let drawnHistory = 0;
        for (let j = 0; j < xs.length; j++) if (xs[j] < firstLive && ys[j] !== null && ys[j] !== undefined) drawnHistory++;
        return { topic: s.topic, color: s.color, history: s.historyCount, live: s.liveCount, drawnHistory, alignedLength: ys.length };
      }),
      xLength: u ? u.data[0].length : 0,
    };
  });

/**
 * For each plotted series, how many of the midpoints between its consecutive history points
 * have a pixel of its colour on the chart canvas nearby: the line is really drawn there.
 */
const historyPixels = (page) =>
  page.evaluate(() => {
    const { chart } = globalThis.edgewatch;
    const u = chart.plot;
    const ctx = u.ctx;
    const rgb = (hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
    return chart.series.map((s, i) => {
      const [r, g, b] = rgb(s.color);
      let hits = 0;
      let checked = 0;
      for (let j = 0; j + 1 < s.historyCount; j++) {
        const x = u.valToPos((s.xs[j] + s.xs[j + 1]) / 2, 'x', true);
        const y = u.valToPos((s.ys[j] + s.ys[j + 1]) / 2, 'y', true);
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
      return { topic: s.topic, checked, hits, series: i + 1 };
    });
  });

test('overlaid series each draw their own history (own bucket times) and live points', async () => {
  // Two devices whose history buckets never share a timestamp: the merge into uPlot's one x
  // array leaves holes in each series, which must be drawn across, not dropped.
  const a = await device('ov-a');
  const b = await device('ov-b');
  await publishHistory(a, 'temperature', 10);
  await publishHistory(b, 'temperature', 30, { shiftMs: 17_000 });
  for (const id of ['ov-a', 'ov-b']) {
    await waitFor(async () => (await hub.readings(`sensors/${id}/temperature`)).length === 10, { what: `${id} history stored` });
  }
  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  await page.click('tr[data-key="sensors/ov-a/temperature"]', { timeout: 5000 });
  await page.click('tr[data-key="sensors/ov-b/temperature"]', { timeout: 5000 });
  await waitFor(async () => (await chartState(page)).series.every((s) => s.history >= 8), { timeoutMs: 5000, what: 'history of both series' });
  await a.publish('temperature', 12);
  await b.publish('temperature', 32);
  await waitFor(async () => (await chartState(page)).series.every((s) => s.live >= 1), { timeoutMs: 3000, what: 'live points of both series' });
  await page.waitForTimeout(200); // a frame to draw them
  const state = await chartState(page);
  assert.equal(state.series.length, 2, JSON.stringify(state));
  assert.ok(state.xLength >= 20, `aligned x has both series' points: ${JSON.stringify(state)}`);
  for (const s of state.series) {
    assert.equal(s.alignedLength, state.xLength, `${s.topic}: one value slot per x`);
    assert.ok(s.drawnHistory >= 8, `${s.topic}: history in uPlot's data: ${JSON.stringify(state)}`);
  }
  const pixels = await historyPixels(page);
  for (const p of pixels) {
    assert.ok(p.checked >= 7 && p.hits >= p.checked - 1, `${p.topic}: its colour drawn between history points: ${JSON.stringify(pixels)}`);
  }
  // Hovering over a history point of one series shows the nearest value of the other too.
  const target = await page.evaluate(() => {
    const { chart } = globalThis.edgewatch;
    const s = chart.series[1];
    const u = chart.plot;
    return { left: u.valToPos(s.xs[4], 'x'), top: u.valToPos(s.ys[4], 'y') };
  });
  const box = await page.locator('#chart .u-over').boundingBox();
  await page.mouse.move(box.x + target.left, box.y + target.top);
  await waitFor(() => page.isVisible('#chart-tip'), { timeoutMs: 2000, what: 'tooltip' });
  const tip = await page.textContent('#chart-tip');
  assert.match(tip, /ov-a temperature: 10\.\d+ C/, tip);
  assert.match(tip, /ov-b temperature: 30\.\d+ C/, tip);
  await page.screenshot({ path: path.join(screenshotDir(), 'overlay.png') });
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('the range buttons request rollups over 15 min, 1 h, 24 h and 7 d', async () => {
  const d = await device('ranges');
  await d.publish('temperature', 20);
  const topic = 'sensors/ranges/temperature';
  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  const requests = [];
  page.on('request', (req) => {
    const url = new URL(req.url());
    if (url.pathname === '/v1/rollups' && url.searchParams.get('filter') === topic) requests.push(url.searchParams);
  });
  await page.click(`tr[data-key="${topic}"]`, { timeout: 5000 });
  await waitFor(() => requests.length === 1, { timeoutMs: 3000, what: 'history request on plotting' });
  const span = (q) => Number(q.get('to')) - Number(q.get('from'));
  assert.equal(span(requests[0]), 15 * 60_000, 'default range is 15 min');
  const ranges = [
    ['1 h', 3_600_000],
    ['24 h', 86_400_000],
    ['7 d', 604_800_000],
    ['15 min', 900_000],
  ];
  for (const [label, ms] of ranges) {
    const before = requests.length;
    const clickedAt = Date.now();
    await page.getByRole('button', { name: label, exact: true }).click();
    await waitFor(() => requests.length === before + 1, { timeoutMs: 3000, what: `rollups request for ${label}` });
    const q = requests[before];
    assert.equal(span(q), ms, `${label}: from/to span`);
    assert.ok(Math.abs(Number(q.get('to')) - clickedAt) < 5000, `${label}: the range ends now`);
    assert.equal(await page.getAttribute(`button.range[data-range="${ms}"]`, 'aria-pressed'), 'true', `${label} pressed`);
    assert.equal(await page.locator('button.range[aria-pressed="true"]').count(), 1, 'one range pressed');
  }
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('phone width (390 px): no horizontal overflow, device list and chart usable', async () => {
  const d = await device('phone');
  await publishHistory(d, 'temperature', 20, { n: 5 });
  await d.publish('temperature', 21.25);
  const page = await browser.context.newPage();
  page.errors = [];
  page.on('pageerror', (err) => page.errors.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => msg.type() === 'error' && page.errors.push(`console: ${msg.text()}`));
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${hub.httpUrl}/`);
  const row = page.locator('tr[data-key="sensors/phone/temperature"]');
  await row.waitFor({ timeout: 5000 });
  const overflow = () => page.evaluate(() => ({ scroll: document.documentElement.scrollWidth, inner: innerWidth }));
  let o = await overflow();
  assert.ok(o.scroll <= o.inner, `page wider than the phone: ${JSON.stringify(o)}`);
  // The row's device, value and age are on screen, not clipped away.
  for (const sel of ['.device-id', '.value', '.age']) {
    const bb = await row.locator(sel).boundingBox();
    assert.ok(bb && bb.width > 0 && bb.x >= 0 && bb.x + bb.width <= 390, `${sel} inside the viewport: ${JSON.stringify(bb)}`);
  }
  assert.equal(await row.locator('.value').textContent(), '21.25');
  // Filtering works at this width.
  await page.fill('#device-filter', 'phone');
  await waitFor(async () => (await page.locator('#devices-body tr').count()) === 1, { timeoutMs: 2000, what: 'filtered to one row' });
  const filterBox = await page.locator('#device-filter').boundingBox();
  assert.ok(filterBox.x >= 0 && filterBox.x + filterBox.width <= 390, `filter inside: ${JSON.stringify(filterBox)}`);
  // Tapping the row plots it; the chart fits the width and has its history.
  await row.click();
  await waitFor(() => page.evaluate(() => globalThis.edgewatch.chart.series[0]?.historyCount >= 4), { timeoutMs: 5000, what: 'chart history' });
  await page.locator('#chart .u-over').scrollIntoViewIfNeeded();
  const chartBox = await page.locator('#chart .uplot').boundingBox();
  assert.ok(chartBox.width >= 250 && chartBox.x >= 0 && chartBox.x + chartBox.width <= 390, `chart fits: ${JSON.stringify(chartBox)}`);
  for (const b of await page.locator('button.range').all()) {
    const bb = await b.boundingBox();
    assert.ok(bb.x >= 0 && bb.x + bb.width <= 390 && bb.height >= 24, `range button reachable: ${JSON.stringify(bb)}`);
  }
  await page.getByRole('button', { name: '1 h', exact: true }).click();
  await waitFor(async () => (await page.getAttribute('button.range[data-range="3600000"]', 'aria-pressed')) === 'true', { timeoutMs: 2000, what: '1 h pressed' });
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
  await page.locator('tr[data-key="sensors/dark/temperature"]').waitFor({ timeout: 5000 });
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
      cell: cs(document.querySelector('tr[data-key="sensors/dark/temperature"] .value')).color,
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
