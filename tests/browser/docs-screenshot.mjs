// Makes docs/dashboard.png: the real hub fed by `edgewatch sim` (8 devices), a few series
// plotted, the stream panel watching. Not a test; run after a build (EDGEWATCH_BIN picks the binary):
//   node tests/browser/docs-screenshot.mjs
import { spawn } from 'node:child_process';
import path from 'node:path';
import { launchBrowser, openPage } from './support/browser.mjs';
import { BINARY, Hub, REPO, waitFor } from './support/hub.mjs';

const hub = await new Hub().start();
const sim = spawn(BINARY, ['sim', '--broker', `mqtt://127.0.0.1:${hub.mqttPort}`, '--devices', '8', '--interval-ms', '500', '--duration', '90'], {
  stdio: ['ignore', 'ignore', 'inherit'],
});
const browser = await launchBrowser();
try {
  await waitFor(async () => (await hub.api('/v1/series')).series.length >= 16, { timeoutMs: 20_000, what: 'sim series' });
  await new Promise((r) => setTimeout(r, 35_000)); // history for the chart (rollups) and sparklines
  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  await page.waitForSelector('#connection[data-state="connected"]');
  const rows = page.locator('#devices-body tr[data-key$="/temperature"]');
  await waitFor(async () => (await rows.count()) >= 3, { what: 'temperature rows' });
  for (let i = 0; i < 3; i++) await rows.nth(i).click();
  await page.fill('#stream-filter', 'sensors/+/humidity');
  await page.click('#stream-toggle');
  await new Promise((r) => setTimeout(r, 4000));
  await page.locator('#devices-body tr').first().focus();
  // Every plotted series has its history drawn, not only the first one.
  const history = await page.evaluate(() => globalThis.edgewatch.chart.series.map((s) => s.historyCount));
  if (history.length < 3 || history.some((n) => n < 10)) throw new Error(`chart history missing: ${history}`);
  // Hover near the live end: the (see-through) tip opens to the left of the cursor.
  const box = await page.locator('#chart .u-over').boundingBox();
  await page.mouse.move(box.x + box.width * 0.97, box.y + box.height * 0.12);
  await new Promise((r) => setTimeout(r, 300));
  const file = path.join(REPO, 'docs/dashboard.png');
  await page.screenshot({ path: file });
  console.log(`wrote ${file}; page errors: ${JSON.stringify(page.errors)}`);
} finally {
  sim.kill('SIGTERM');
  await browser.close();
  await hub.dispose();
}
