// Devices you already own on the dashboard: a hub with every ingest preset, `edgewatch sim`
// publishing like Tasmota, Zigbee2MQTT, Shelly, ESPHome and Home Assistant firmware, and the
// dashboard listing each simulated device with its metrics and units (docs/mappings.md).
// Run with scripts/browser-test tests/browser/presets.test.mjs.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { launchBrowser, openPage, screenshotDir } from './support/browser.mjs';
import { Hub, waitFor } from './support/hub.mjs';

const SHAPES = ['tasmota', 'zigbee2mqtt', 'shelly', 'esphome', 'homeassistant'];

/** Metrics (with their units) each shape's devices must show; a shape may report more. */
const EXPECTED = {
  tasmota: { 'ENERGY.Power': 'W', 'ENERGY.Voltage': 'V', 'ENERGY.Total': 'kWh', 'AM2301.Temperature': 'C', 'AM2301.Humidity': '%' },
  zigbee2mqtt: { temperature: 'C', humidity: '%', battery: '%', linkquality: 'lqi', voltage: 'mV' },
  shelly: { temperature: 'C', humidity: '%', battery: '%' },
  esphome: { temperature: 'C', humidity: '%' },
  homeassistant: { temperature: 'C', humidity: '%' },
};

let hub;
let browser;

before(async () => {
  hub = await new Hub({ config: '[ingest]\npresets = ["tasmota", "zigbee2mqtt", "shelly", "esphome", "homeassistant"]' }).start();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await hub?.dispose();
});

test('simulated devices of every firmware preset are listed with their metrics and units', async () => {
  // `--id-prefix X` names the devices.
  await Promise.all(SHAPES.map((shape) => hub.sim(['--devices', '2', '--shape', shape, '--duration', '3s', '--id-prefix', shape])));
  const ids = SHAPES.flatMap((shape) => [`${shape}-0`, `${shape}-1`]);
  const series = await waitFor(async () => {
    const list = (await hub.api('/v1/series')).series;
    return ids.every((id) => list.some((s) => s.deviceId === id)) && list;
  }, { timeoutMs: 10_000, what: 'a series of every simulated device in GET /v1/series' });

  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  await page.waitForSelector('#connection[data-state="connected"]', { timeout: 10_000 });
  for (const id of ids) await page.waitForSelector(`#devices-body tr[data-device="${id}"]`, { timeout: 5000 });
  assert.equal(await page.locator('#devices-body tr').count(), ids.length, 'one row per device, nothing else');
  const fmt = new Intl.NumberFormat('en-US', { maximumFractionDigits: 3 });
  for (const shape of SHAPES) {
    for (const id of [`${shape}-0`, `${shape}-1`]) {
      const row = page.locator(`#devices-body tr[data-device="${id}"]`);
      assert.equal(await row.locator('.device-id').textContent(), id);
      assert.match(await row.locator('.status').textContent(), /^(online|offline|stale)$/, `${id}: status in words`);
      const shown = await row.locator('.chip').evaluateAll((els) =>
        Object.fromEntries(els.map((el) => [el.dataset.metric, { value: el.querySelector('.value').textContent, unit: el.querySelector('.unit').textContent }])),
      );
      const stored = series.filter((s) => s.deviceId === id);
      assert.deepEqual(Object.keys(shown).sort(), stored.map((s) => s.metric).sort(), `${id}: a chip for each of its series`);
      for (const [metric, unit] of Object.entries(EXPECTED[shape])) {
        assert.ok(shown[metric], `${id}: ${metric} listed (${JSON.stringify(shown)})`);
        assert.equal(shown[metric].unit, unit, `${id}: ${metric} in ${unit}`);
        const s = stored.find((x) => x.metric === metric);
        assert.equal(shown[metric].value, fmt.format(s.lastValue), `${id}: ${metric} shows the last value`);
      }
    }
  }
  // Filtering by a metric finds the Tasmota plugs only.
  await page.fill('#device-filter', 'ENERGY.Power');
  await waitFor(async () => (await page.locator('#devices-body tr').count()) === 2, { timeoutMs: 2000, what: 'the two Tasmota plugs' });
  assert.deepEqual(await page.locator('#devices-body tr').evaluateAll((els) => els.map((e) => e.dataset.device)), ['tasmota-0', 'tasmota-1']);
  await page.fill('#device-filter', '');
  await page.screenshot({ path: path.join(screenshotDir(), 'presets.png'), fullPage: true });

  // A Tasmota plug's page charts all its metrics, one labelled axis per unit.
  await page.click('#devices-body tr[data-device="tasmota-0"] .device-id');
  await waitFor(() => page.evaluate(() => globalThis.edgewatch.chart.deviceId === 'tasmota-0' && !globalThis.edgewatch.chart.loading && globalThis.edgewatch.chart.plots.length > 0), { timeoutMs: 5000, what: 'tasmota-0 charted' });
  await page.waitForTimeout(200);
  const axes = await page.evaluate(() =>
    globalThis.edgewatch.chart.plots.flatMap(({ u }) => u.axes.slice(1).map((a) => a.label)),
  );
  const units = [...new Set(series.filter((s) => s.deviceId === 'tasmota-0').map((s) => s.unit ?? 'no unit'))];
  assert.deepEqual([...axes].sort(), units.sort(), 'one axis per unit, labelled');
  const charted = await page.evaluate(() => globalThis.edgewatch.chart.plots.flatMap((p) => p.members.map((s) => s.metric)));
  assert.equal(charted.length, series.filter((s) => s.deviceId === 'tasmota-0').length, 'every metric charted');
  await page.screenshot({ path: path.join(screenshotDir(), 'presets-tasmota.png'), fullPage: true });
  assert.deepEqual(page.errors, []);
  await page.close();
});
