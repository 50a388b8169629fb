// The JS client (/v1/sdk/edgewatch.js) in Chromium against a real hub: during a stream of
// readings, forced disconnects at random points; every reading arrives exactly once, in seq
// order, on each transport. Plus publish buffering and transport fallback.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { launchBrowser, openPage } from './support/browser.mjs';
import { Hub, waitFor } from './support/hub.mjs';

const READINGS = 10_000;
const DISCONNECTS = 100;

let hub;
let browser;
let page;

before(async () => {
  hub = await new Hub().start();
  browser = await launchBrowser();
  page = await openPage(browser.context, `${hub.httpUrl}/healthz`);
});

after(async () => {
  await browser?.close();
  await hub?.dispose();
});

for (const transport of ['websocket', 'sse', 'poll']) {
  test(`${transport}: ${DISCONNECTS} forced disconnects during ${READINGS} readings, each received once in order`, async () => {
    const deviceId = `resume-${transport}`;
    const filter = `sensors/${deviceId}/#`;
    await page.evaluate(
      async ({ filter, transport }) => {
        const { EdgewatchClient } = await import('/v1/sdk/edgewatch.js');
        const c = new EdgewatchClient({ filters: [filter], transports: [transport], initialBackoffMs: 20, maxBackoffMs: 200 });
        globalThis.t = { client: c, seqs: [], drops: 0 };
        c.addEventListener('reading', (e) => globalThis.t.seqs.push(e.detail.seq));
        await new Promise((resolve) => {
          c.addEventListener('state', (e) => e.detail.state === 'connected' && resolve(), { once: false });
          c.connect();
        });
      },
      { filter, transport },
    );
    const d = await hub.device(deviceId);
    const publishing = (async () => {
      for (let i = 0; i < READINGS; i++) await d.publish('counter', i, 'n');
    })();
    // Drop the connection at random moments while readings flow, until DISCONNECTS drops
    // have hit an open connection (bounded: 120 s).
    const dropsDeadline = Date.now() + 120_000;
    for (let drops = 0; drops < DISCONNECTS && Date.now() < dropsDeadline; ) {
      await new Promise((r) => setTimeout(r, 20 + Math.random() * 60));
      drops = await page.evaluate(() => {
        const c = globalThis.t.client;
        if (c._conn) {
          c._dropped(c._conn, 'forced by the test');
          globalThis.t.drops++;
        }
        return globalThis.t.drops;
      });
    }
    await publishing;
    await d.end();
    // PUBACK comes from the broker; storing follows a moment later.
    const stored = (await waitFor(async () => {
      const list = await hub.readings(filter);
      return list.length >= READINGS && list;
    }, { timeoutMs: 30_000, what: `${READINGS} readings stored (GET /v1/readings)` })).map((r) => r.seq);
    assert.equal(stored.length, READINGS, 'GET /v1/readings holds each published reading once');
    await waitFor(() => page.evaluate((n) => globalThis.t.seqs.length >= n, READINGS), { timeoutMs: 60_000, what: 'all readings' });
    await new Promise((r) => setTimeout(r, 300));
    const { seqs, drops } = await page.evaluate(() => ({ seqs: globalThis.t.seqs, drops: globalThis.t.drops }));
    await page.evaluate(() => globalThis.t.client.close());
    assert.equal(drops, DISCONNECTS, `only ${drops} disconnects happened`);
    assert.deepEqual(seqs, stored);
  });
}

test('falls back from a transport that fails to open, and reports states', async () => {
  const states = await page.evaluate(async (base) => {
    const { EdgewatchClient } = await import('/v1/sdk/edgewatch.js');
    // A filter the hub refuses: SSE fails to open (HTTP 400), long polling too; the client
    // falls back from one to the next, then retries the round with backoff.
    const c = new EdgewatchClient({ baseUrl: base, filters: ['sensors/#/bad'], transports: ['sse', 'poll'], initialBackoffMs: 50, maxBackoffMs: 100 });
    const seen = [];
    c.addEventListener('state', (e) => seen.push(`${e.detail.state}:${e.detail.transport}:${e.detail.attempt}`));
    c.connect();
    await new Promise((r) => setTimeout(r, 800));
    c.close();
    return seen;
  }, hub.httpUrl);
  assert.ok(states.some((s) => s.startsWith('connecting:sse')), states.join(' '));
  assert.ok(states.some((s) => s.startsWith('connecting:poll')), states.join(' '));
  assert.ok(states.some((s) => /:2$/.test(s)), `a second attempt: ${states.join(' ')}`);
  assert.equal(states.at(-1).split(':')[0], 'closed');
});

test('publishes are buffered while disconnected and sent over WebSocket', async () => {
  const result = await page.evaluate(async () => {
    const { EdgewatchClient } = await import('/v1/sdk/edgewatch.js');
    const c = new EdgewatchClient({ filters: ['sensors/pub/#'], transports: ['websocket'], maxBufferedPublishes: 2 });
    const queued = [c.publish('sensors/pub/cmd', 'a'), c.publish('sensors/pub/cmd', 'b'), c.publish('sensors/pub/cmd', 'c')];
    const settled = Promise.allSettled(queued);
    c.connect();
    const out = (await settled).map((r) => (r.status === 'fulfilled' ? 'ok' : `${r.reason.code ?? 'dropped'}`));
    c.close();
    return out;
  });
  // The first was dropped (buffer of 2); the others reached the hub, which answers `published`
  // or an error (publishing is not allowed by default): either way they were sent.
  assert.equal(result[0], 'dropped');
  assert.notEqual(result[1], 'dropped');
  assert.notEqual(result[2], 'dropped');
});
