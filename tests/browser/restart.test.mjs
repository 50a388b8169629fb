// Restarting the hub: the dashboard shows "reconnecting", then recovers with no missing and
// no repeated readings (compared with /v1/readings), on every transport.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { launchBrowser, openPage, screenshotDir } from './support/browser.mjs';
import { Hub, waitFor } from './support/hub.mjs';

let hub;
let browser;

before(async () => {
  hub = await new Hub().start();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await hub?.dispose();
});

async function publishAll(deviceId, values) {
  const d = await hub.device(deviceId);
  for (const v of values) await d.publish('temperature', v);
  await d.end();
}

for (const transport of ['websocket', 'sse', 'poll']) {
  test(`restart over ${transport}: reconnecting, then no missing points`, async () => {
    const deviceId = `restart-${transport}`;
    const topic = `sensors/${deviceId}/temperature`;
    const page = await openPage(browser.context, `${hub.httpUrl}/?transport=${transport}`);
    await page.waitForSelector(`#connection[data-state="connected"][data-transport="${transport}"]`, { timeout: 10_000 });
    await page.evaluate((t) => {
      globalThis.received = [];
      globalThis.states = [];
      globalThis.edgewatch.client.addEventListener('reading', (e) => e.detail.topic === t && globalThis.received.push(e.detail.seq));
      globalThis.edgewatch.client.addEventListener('state', (e) => globalThis.states.push(e.detail.state));
    }, topic);

    await publishAll(deviceId, [1, 2, 3, 4, 5]);
    await waitFor(() => page.evaluate(() => globalThis.received.length === 5), { timeoutMs: 5000, what: 'first readings' });

    await hub.stop();
    await page.waitForSelector('#connection[data-state="reconnecting"]', { timeout: 10_000 });
    assert.match(await page.textContent('#conn-text'), /reconnecting/);
    await page.screenshot({ path: path.join(screenshotDir(), `reconnecting-${transport}.png`) });

    await hub.start();
    // Published while the page may still be waiting to reconnect: must arrive by resume.
    await publishAll(deviceId, [6, 7, 8, 9, 10]);
    await page.waitForSelector(`#connection[data-state="connected"][data-transport="${transport}"]`, { timeout: 20_000 });
    await publishAll(deviceId, [11, 12]);

    // PUBACK comes from the broker; storing follows a moment later.
    const stored = (await waitFor(async () => {
      const list = await hub.readings(topic);
      return list.length >= 12 && list;
    }, { timeoutMs: 5000, what: '12 readings stored (GET /v1/readings)' })).map((r) => r.seq);
    assert.equal(stored.length, 12, 'GET /v1/readings holds each published reading once');
    await waitFor(() => page.evaluate((n) => globalThis.received.length >= n, stored.length), { timeoutMs: 5000, what: 'all readings' });
    await page.waitForTimeout(300); // a duplicate would arrive now
    const received = await page.evaluate(() => globalThis.received);
    assert.deepEqual(received, stored, 'every stored reading exactly once, in seq order');
    const states = await page.evaluate(() => globalThis.states);
    assert.ok(states.includes('reconnecting') && states.at(-1) === 'connected', states.join(','));
    // The device row shows the last value after the restart.
    await waitFor(async () => (await page.textContent(`#devices-body tr[data-device="${deviceId}"] [data-metric="temperature"] .value`)) === '12', { timeoutMs: 3000, what: 'last value' });
    await page.close();
  });
}
