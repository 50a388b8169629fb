// Makes the README's screenshots from the real hub fed by `edgewatch sim` (native devices and
// Tasmota, Zigbee2MQTT and Shelly shapes through the ingest presets), plus an hour of history
// for the greenhouse sensors so that the charts have something to show at once:
//   docs/dashboard.png    the device list, a device charted, the stream panel watching
//   docs/device-page.png  one device's page: charts per unit, last readings, status history, rejects
//   docs/phone.png        the device list 375 px wide
// Not a test; run after a build (EDGEWATCH_BIN picks the binary):
//   node tests/browser/docs-screenshot.mjs
import { spawn } from 'node:child_process';
import path from 'node:path';
import mqtt from 'mqtt';
import { launchBrowser, openPage } from './support/browser.mjs';
import { BINARY, Hub, REPO, waitFor } from './support/hub.mjs';

const hub = await new Hub({ config: '[ingest]\npresets = ["tasmota", "zigbee2mqtt", "shelly"]' }).start();
const broker = `mqtt://127.0.0.1:${hub.mqttPort}`;
const sims = [
  ['--devices', '3', '--id-prefix', 'greenhouse', '--metrics', 'temperature,humidity,co2', '--interval-ms', '1000'],
  ['--devices', '2', '--id-prefix', 'cold-store', '--metrics', 'temperature', '--interval-ms', '2000'],
  ['--devices', '1', '--shape', 'tasmota', '--id-prefix', 'plug', '--interval-ms', '2000'],
  ['--devices', '1', '--shape', 'zigbee2mqtt', '--id-prefix', 'hallway', '--interval-ms', '2000'],
  ['--devices', '1', '--shape', 'shelly', '--id-prefix', 'shelly-ht', '--interval-ms', '3000'],
].map((args) => spawn(BINARY, ['sim', '--broker', broker, '--duration', '600', '--no-faults', ...args], { stdio: 'ignore' }));
const browser = await launchBrowser();
const writer = await mqtt.connectAsync(broker, { clientId: 'docs-screenshot', reconnectPeriod: 0 });
try {
  const series = await waitFor(async () => {
    const list = (await hub.api('/v1/series')).series;
    return list.filter((s) => s.deviceId.startsWith('greenhouse')).length >= 9 && list.length >= 30 && list;
  }, { timeoutMs: 30_000, what: 'sim series' });

  // An hour of history before the sims started, a random walk ending near each live value.
  const now = Date.now() - 5000;
  const step = { temperature: 0.08, humidity: 0.3, co2: 6 };
  for (const s of series.filter((x) => x.deviceId.startsWith('greenhouse'))) {
    let v = s.lastValue;
    const points = [];
    for (let i = 1; i <= 240; i++) {
      v += (Math.random() - 0.5) * 2 * step[s.metric] + Math.sin(i / 25) * step[s.metric] * 0.6;
      points.push([now - i * 15_000, v]);
    }
    for (const [t, value] of points) {
      const payload = { value: Math.round(value * 100) / 100, unit: s.unit, timestamp: new Date(t).toISOString() };
      await writer.publishAsync(s.topic, JSON.stringify(payload), { qos: 1 });
    }
  }
  // A device that went away: its last will says offline.
  const boiler = await hub.device('boiler-room');
  await boiler.publish('temperature', 61.5);
  await boiler.publish('pressure', 1.8, 'bar');
  boiler.crash();
  await new Promise((r) => setTimeout(r, 8000)); // live values and sparklines fill in

  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  await page.waitForSelector('#connection[data-state="connected"]');
  await page.waitForSelector('#devices-body tr[data-device="greenhouse-1"]');
  await page.click('#devices-body tr[data-device="greenhouse-1"] td.age');
  await waitFor(() => page.evaluate(() => globalThis.edgewatch.chart.deviceId === 'greenhouse-1' && !globalThis.edgewatch.chart.loading), { what: 'greenhouse-1 charted' });
  await page.fill('#stream-filter', 'sensors/+/co2');
  await page.click('#stream-toggle');
  await new Promise((r) => setTimeout(r, 4000));
  await page.locator('#devices-body tr[data-device="greenhouse-1"]').focus();
  const box = await page.locator('#chart .u-over').first().boundingBox();
  await page.mouse.move(box.x + box.width * 0.62, box.y + box.height * 0.4);
  await new Promise((r) => setTimeout(r, 300));
  const list = path.join(REPO, 'docs/dashboard.png');
  await page.screenshot({ path: list });

  // The device page, with a reject and status changes seen while it is open.
  await page.click('#devices-body tr[data-device="greenhouse-1"] .device-id');
  await page.waitForSelector('#device-panel:not([hidden])');
  await writer.publishAsync('sensors/greenhouse-1/co2', 'E:sensor-fault', { qos: 1 });
  await writer.publishAsync('sensors/greenhouse-1/status', 'offline', { qos: 1, retain: true });
  await new Promise((r) => setTimeout(r, 1500));
  await writer.publishAsync('sensors/greenhouse-1/status', 'online', { qos: 1, retain: true });
  await waitFor(async () => (await page.locator('#rejects-body tr').count()) > 0, { timeoutMs: 10_000, what: 'the reject listed' });
  await waitFor(async () => (await page.locator('#history-list li').count()) >= 3, { timeoutMs: 5000, what: 'status history' });
  await page.mouse.move(0, 0);
  const device = path.join(REPO, 'docs/device-page.png');
  await page.screenshot({ path: device, fullPage: true });

  // A phone.
  const phone = await browser.context.newPage();
  await phone.setViewportSize({ width: 375, height: 812 });
  await phone.goto(`${hub.httpUrl}/`);
  await phone.waitForSelector('#devices-body tr[data-device="greenhouse-0"]');
  await new Promise((r) => setTimeout(r, 2500));
  const small = path.join(REPO, 'docs/phone.png');
  await phone.screenshot({ path: small });
  console.log(`wrote ${list}, ${device}, ${small}; page errors: ${JSON.stringify(page.errors)}`);
} finally {
  for (const sim of sims) sim.kill('SIGTERM');
  await writer.endAsync(true).catch(() => {});
  await browser.close();
  await hub.dispose();
}
