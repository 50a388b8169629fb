// The dashboard's uplink line against a real hub with one [[uplink]]: "backing off" while the
// central broker is down, "up to date" once a real Mosquitto is there and the readings went up.
// Run with scripts/browser-test tests/browser/uplink.test.mjs.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { launchBrowser, openPage, screenshotDir } from './support/browser.mjs';
import { Hub, freePort, waitFor } from './support/hub.mjs';

const MOSQUITTO = '/usr/sbin/mosquitto';
let hub;
let browser;
let centralPort;
let central = null;
let centralDir;

before(async () => {
  centralPort = await freePort();
  centralDir = fs.mkdtempSync(path.join(os.tmpdir(), 'edgewatch-central-'));
  hub = await new Hub({
    config: ['[[uplink]]', 'name = "central"', `url = "mqtt://127.0.0.1:${centralPort}"`, 'site = "s1"', 'backoff_max_ms = 500'].join('\n'),
  }).start();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await hub?.dispose();
  central?.kill('SIGKILL');
  fs.rmSync(centralDir, { recursive: true, force: true });
});

test('the uplink line says backing off while the central broker is down, then up to date', { skip: !fs.existsSync(MOSQUITTO) && 'mosquitto not installed' }, async () => {
  const sensor = await hub.sensor('d1');
  for (let i = 0; i < 5; i++) await sensor.publish('temperature', 20 + i);
  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  const line = page.locator('#uplinks .uplink');
  await page.waitForSelector('#uplinks .uplink[data-state="backing_off"]', { timeout: 15_000 });
  assert.match(await line.textContent(), /^↑ central: backing off, 5 behind/);
  assert.match(await line.getAttribute('title'), /Connection refused|connection refused|refused/i);

  const conf = path.join(centralDir, 'mosquitto.conf');
  fs.writeFileSync(conf, `listener ${centralPort} 127.0.0.1\nallow_anonymous true\nuser root\n`);
  central = spawn(MOSQUITTO, ['-c', conf], { stdio: 'ignore' });
  await page.waitForSelector('#uplinks .uplink[data-state="connected"]', { timeout: 20_000 });
  await waitFor(async () => /up to date/.test(await line.textContent()), { timeoutMs: 15_000, what: 'the uplink caught up' });
  const [u] = (await hub.api('/v1/uplinks')).uplinks;
  assert.equal(u.forwarded, 5);
  await page.screenshot({ path: path.join(screenshotDir(), 'uplink.png') });
  assert.deepEqual(page.errors, []);
  await page.close();
  await sensor.end();
});
