// Headless Debian Chromium through playwright-core (never a downloaded browser).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Launches Chromium with a fresh user data dir; `close()` removes it. */
export async function launchBrowser() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'edgewatch-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    viewport: { width: 1280, height: 860 },
    timeout: 30_000,
  });
  context.setDefaultTimeout(10_000);
  if (process.env.EDGEWATCH_ASSETS === 'disk') await serveAssetsFromDisk(context);
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/**
 * `EDGEWATCH_ASSETS=disk`: the dashboard assets and the JS client come from bridge/assets/ in the
 * working tree instead of the copies compiled into the hub, so asset edits can be tried without
 * a rebuild. The tests of record run without it.
 */
async function serveAssetsFromDisk(context) {
  const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../../bridge/assets');
  const types = { '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8', '.html': 'text/html; charset=utf-8' };
  // Not the page itself: Chromium treats a fulfilled document as public and then blocks its
  // connections to the hub on 127.0.0.1 (local network access checks).
  const files = { '/v1/sdk/edgewatch.js': 'sdk/edgewatch.js' };
  await context.route(
    (url) => url.pathname in files || url.pathname.startsWith('/assets/'),
    (route) => {
      const { pathname } = new URL(route.request().url());
      const file = path.join(root, files[pathname] ?? `dashboard/${pathname.slice('/assets/'.length)}`);
      if (!file.startsWith(root) || !fs.existsSync(file)) return route.continue();
      return route.fulfill({ status: 200, contentType: types[path.extname(file)] ?? 'application/octet-stream', body: fs.readFileSync(file) });
    },
  );
}

/** Opens a page that records console errors and uncaught exceptions in `page.errors`. */
export async function openPage(context, url) {
  const page = await context.newPage();
  page.errors = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') page.errors.push(`console: ${msg.text()}`);
  });
  page.on('pageerror', (err) => page.errors.push(`pageerror: ${err.message}`));
  await page.goto(url, { waitUntil: 'load' });
  return page;
}

/** Where the tests put screenshots. */
export function screenshotDir() {
  const dir = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../../target/browser-screenshots');
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}
