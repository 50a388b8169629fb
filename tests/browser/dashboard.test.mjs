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
  assert.match(await page.textContent('#chart-legend'), /attic temperature: 22 C/);
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
