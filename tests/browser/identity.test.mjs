// Identity in Chromium against the real hub (issue 18, points 5 and 8): a person logs in at
// /login and watches the dashboard with the session cookie; an app on another origin uses the
// JS SDK (/v1/sdk/edgewatch.js) with an app token or a JWT over CORS; an origin that is not in
// live.allowed_origins is refused. Each principal sees device d1 only, never d2.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { launchBrowser, openPage, screenshotDir } from './support/browser.mjs';
import { Hub, createToken, userEntry, waitFor } from './support/hub.mjs';

const JWT_SECRET = crypto.randomBytes(32).toString('hex');

let hub;
let browser;
let app; // the app's origin, listed in live.allowed_origins
let stranger; // another origin, not listed
let token; // app token for sensors/d1/#
const devices = {};
let dashboard; // the logged-in dashboard page, shared by the login and logout tests
let value = 10; // every reading published gets a new value

before(async () => {
  // Two origins besides the hub's: 127.0.0.1 on two other ports (a port makes another origin;
  // so would `localhost` for 127.0.0.1).
  app = await appServer();
  stranger = await appServer();
  const tokenEntry = createToken('--name', 'app', '--read', 'sensors/d1/#');
  token = tokenEntry.token;
  hub = new Hub({
    config: [
      userEntry('alice', 'alice-pw', 'viewer'),
      userEntry('d1', 'd1-pw', 'device'),
      userEntry('d2', 'd2-pw', 'device'),
      '[broker.roles.viewer]',
      'read = ["sensors/d1/#"]',
      'publish = []',
      '[broker.roles.device]',
      'read = []',
      'publish = ["sensors/%u/#"]',
      '[live]',
      `allowed_origins = [${JSON.stringify(app.origin)}]`,
      tokenEntry.entry,
      '[auth.jwt]',
      `secret = ${JSON.stringify(JWT_SECRET)}`,
    ].join('\n'),
  });
  await hub.start();
  assert.match(hub.readyLine, /http_access=credentials/);
  app.hub = stranger.hub = hub.httpUrl;
  app.token = stranger.token = token;
  for (const id of ['d1', 'd2']) devices[id] = await hub.device(id, { username: id, password: `${id}-pw` });
  browser = await launchBrowser();
});

after(async () => {
  for (const d of Object.values(devices)) await d.end();
  await browser?.close();
  await app?.close();
  await stranger?.close();
  await hub?.dispose();
  if (hub && token) assert.ok(!hub.output.includes(token), 'the hub never prints the token');
});

/**
 * Publishes a d2 reading, then a d1 reading (after d2's PUBACK): a d2 reading that leaked
 * would arrive before the d1 one a test waits for.
 */
async function publishBoth(metric = 'temperature') {
  const v2 = ++value;
  await devices.d2.publish(metric, v2);
  const v1 = ++value;
  await devices.d1.publish(metric, v1);
  return { v1, v2 };
}

/** An HS256 JWT signed with the hub's secret. */
function jwt(claims) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${body}.${crypto.createHmac('sha256', JWT_SECRET).update(body).digest('base64url')}`;
}

/** The distinct device ids of a `/v1/series` answer. */
const deviceIds = (body) => [...new Set(body.series.map((s) => s.deviceId))];

const shot = (page, name) => page.screenshot({ path: path.join(screenshotDir(), name) });

// ---- people: the login page and the dashboard with the session cookie ----------------------

test('the dashboard without a session goes to /login?next=/', async () => {
  const page = await openPage(browser.context, `${hub.httpUrl}/`);
  await page.waitForURL((u) => u.pathname === '/login', { timeout: 5000 });
  assert.equal(new URL(page.url()).searchParams.get('next'), '/');
  assert.equal(await page.isVisible('#login'), true);
  assert.equal(await page.isVisible('#login-error'), false);
  await page.close();
});

test('login: a wrong password shows the error; the right one opens the dashboard with d1 live, never d2', async () => {
  const page = await openPage(browser.context, `${hub.httpUrl}/login?next=/`);
  await page.fill('#username', 'alice');
  await page.fill('#password', 'not-her-password');
  await page.click('#login button[type=submit]');
  await page.waitForSelector('#login-error', { state: 'visible', timeout: 5000 });
  assert.equal(await page.textContent('#login-error'), 'Wrong username or password.');
  assert.equal(new URL(page.url()).pathname, '/login');
  assert.equal(await page.inputValue('#password'), '', 'the wrong password is cleared');
  assert.deepEqual(await browser.context.cookies(hub.httpUrl), [], 'no cookie for a wrong password');
  await shot(page, 'login-wrong-password.png');

  // The hub delays the next check of an address and username after a wrong password (from
  // 100 ms): type at a person's pace.
  await page.waitForTimeout(300);
  await page.fill('#password', 'alice-pw');
  await page.click('#login button[type=submit]');
  await page.waitForURL(`${hub.httpUrl}/`, { timeout: 5000 });
  // Chromium logs the 401 of the wrong password as a console error; nothing else may be.
  assert.deepEqual(page.errors, ['console: Failed to load resource: the server responded with a status of 401 (Unauthorized)']);
  page.errors.length = 0;
  await page.waitForSelector('#who', { state: 'visible', timeout: 5000 });
  assert.equal(await page.textContent('#who-name'), 'alice');
  assert.match(await page.textContent('#who'), /Logged in as alice/);
  assert.equal(await page.isVisible('#logout'), true);
  const [cookie] = await browser.context.cookies(hub.httpUrl);
  assert.equal(cookie?.name, 'edgewatch_session');
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Strict');

  await page.waitForSelector('#connection[data-state="connected"]', { timeout: 10_000 });
  assert.equal(await page.getAttribute('#connection', 'data-transport'), 'websocket');
  const { v1 } = await publishBoth();
  await waitFor(async () => (await page.locator('#devices-body tr[data-device="d1"] [data-metric="temperature"] .value').textContent({ timeout: 1000 })) === String(v1), {
    timeoutMs: 5000,
    what: `dashboard: d1 temperature ${v1}`,
  });
  assert.equal(await page.locator('tr[data-device="d2"]').count(), 0, 'no d2 row');
  assert.deepEqual(await page.evaluate(() => [...globalThis.edgewatch.devices.keys()]), ['d1']);
  // d2's readings are in the hub (its account may publish them): hidden, not missing.
  const everything = jwt({ sub: 'test', exp: Math.floor(Date.now() / 1000) + 600, edgewatch: { read: ['sensors/#'] } });
  assert.deepEqual(deviceIds(await hub.api('/v1/series', { authorization: `Bearer ${everything}` })).sort(), ['d1', 'd2']);
  assert.deepEqual(deviceIds(await page.evaluate(() => fetch('/v1/series').then((r) => r.json()))), ['d1']);
  await shot(page, 'dashboard-logged-in.png');
  assert.deepEqual(page.errors, []);
  dashboard = page;
});

for (const transport of ['sse', 'poll']) {
  test(`the dashboard over ${transport} with the session cookie: d1 live, never d2`, async () => {
    const page = await openPage(browser.context, `${hub.httpUrl}/?transport=${transport}`);
    await page.waitForSelector(`#connection[data-state="connected"][data-transport="${transport}"]`, { timeout: 10_000 });
    await page.evaluate(() => {
      globalThis.got = [];
      globalThis.edgewatch.client.addEventListener('reading', (e) => globalThis.got.push(e.detail.deviceId));
    });
    const { v1 } = await publishBoth('humidity');
    await waitFor(async () => (await page.locator('#devices-body tr[data-device="d1"] [data-metric="humidity"] .value').textContent({ timeout: 1000 })) === String(v1), {
      timeoutMs: 5000,
      what: `dashboard over ${transport}: d1 humidity ${v1}`,
    });
    assert.deepEqual(await page.evaluate(() => globalThis.got), ['d1']);
    assert.equal(await page.locator('tr[data-device="d2"]').count(), 0, 'no d2 row');
    assert.deepEqual(page.errors, []);
    await page.close();
  });
}

test('Log out returns to the login page; the API then answers 401, also to the old cookie', async () => {
  assert.ok(dashboard, 'the login test left a dashboard open');
  const [cookie] = await browser.context.cookies(hub.httpUrl);
  await dashboard.click('#logout');
  await dashboard.waitForURL((u) => u.pathname === '/login', { timeout: 5000 });
  assert.equal(new URL(dashboard.url()).searchParams.get('next'), '/');
  assert.deepEqual(await browser.context.cookies(hub.httpUrl), [], 'the cookie is cleared');
  const fromPage = await dashboard.evaluate(async () => {
    const res = await fetch('/v1/series');
    return { status: res.status, code: (await res.json()).error?.code };
  });
  assert.deepEqual(fromPage, { status: 401, code: 'unauthorized' });
  // The session itself has ended: its cookie, sent again, is refused.
  const res = await fetch(`${hub.httpUrl}/v1/series`, { headers: { cookie: `${cookie.name}=${cookie.value}` } });
  assert.equal(res.status, 401);
  assert.equal((await res.json()).error.code, 'session_expired');
  await shot(dashboard, 'logged-out.png');
  await dashboard.close();
});

// ---- an app on another origin: the SDK with a token over CORS ------------------------------

for (const transport of ['websocket', 'sse', 'poll']) {
  test(`an app on a listed origin: the SDK over ${transport} with the token gets d1 live and /v1/series, never d2`, async () => {
    await browser.context.clearCookies();
    const page = await openPage(browser.context, `${app.origin}/?transport=${transport}`);
    await waitFor(() => page.evaluate(() => globalThis.app?.done), { timeoutMs: 5000, what: 'the app page ran' });
    const seen = await page.evaluate(() => ({ sdkFrom: app.sdkFrom, series: app.series, seriesError: app.seriesError }));
    assert.equal(seen.sdkFrom, 'hub', 'the SDK is imported from the hub');
    assert.equal(seen.seriesError, null);
    assert.equal(seen.series.status, 200);
    assert.deepEqual(deviceIds(seen.series.body), ['d1']);
    await waitFor(() => page.evaluate(() => app.client.state === 'connected' && app.client.transport), { timeoutMs: 10_000, what: `SDK connected over ${transport}` });
    const { v1 } = await publishBoth();
    await waitFor(() => page.evaluate((v) => app.readings.some((r) => r.value === v), v1), { timeoutMs: 5000, what: `reading ${v1} of d1` });
    const got = await page.evaluate(() => app.readings.map((r) => r.deviceId));
    assert.ok(got.length > 0 && got.every((d) => d === 'd1'), got.join());
    assert.deepEqual(await page.evaluate(() => app.errors), []);
    if (transport === 'websocket') await shot(page, 'cross-origin-app.png');
    assert.deepEqual(page.errors, []);
    await page.evaluate(() => app.client.close());
    await page.close();
  });
}

test('an app on a listed origin: EventSource with access_token, and a JWT from a token function', async () => {
  await browser.context.clearCookies();
  const page = await openPage(browser.context, `${app.origin}/?transport=none`);
  await waitFor(() => page.evaluate(() => globalThis.app?.done), { timeoutMs: 5000, what: 'the app page ran' });
  const good = jwt({ sub: 'app-jwt', exp: Math.floor(Date.now() / 1000) + 600, edgewatch: { read: ['sensors/d1/#'] } });
  await page.evaluate(
    ({ hub, token, good }) => {
      const filter = encodeURIComponent('sensors/d1/#');
      globalThis.es = { opened: false, readings: [] };
      const es = new EventSource(`${hub}/v1/stream?filter=${filter}&access_token=${token}`);
      es.onopen = () => (globalThis.es.opened = true);
      es.addEventListener('reading', (e) => globalThis.es.readings.push(JSON.parse(e.data)));
      globalThis.es.source = es;
      globalThis.jwtClient = { readings: [], calls: 0 };
      const c = new EdgewatchClient({
        baseUrl: hub,
        token: async () => {
          globalThis.jwtClient.calls++;
          return good;
        },
        filters: ['sensors/d1/#'],
        transports: ['sse'],
      });
      c.addEventListener('reading', (e) => globalThis.jwtClient.readings.push(e.detail));
      globalThis.jwtClient.client = c.connect();
    },
    { hub: hub.httpUrl, token, good },
  );
  await waitFor(() => page.evaluate(() => globalThis.es.opened && globalThis.jwtClient.client.state === 'connected'), {
    timeoutMs: 10_000,
    what: 'EventSource open and the JWT client connected',
  });
  const { v1 } = await publishBoth();
  await waitFor(
    () => page.evaluate((v) => [globalThis.es, globalThis.jwtClient].every((x) => x.readings.some((r) => r.value === v)), v1),
    { timeoutMs: 5000, what: `reading ${v1} on both` },
  );
  const got = await page.evaluate(() => {
    globalThis.es.source.close();
    globalThis.jwtClient.client.close();
    return { es: globalThis.es.readings.map((r) => r.deviceId), jwt: globalThis.jwtClient.readings.map((r) => r.deviceId), calls: globalThis.jwtClient.calls };
  });
  assert.ok(got.es.every((d) => d === 'd1'), got.es.join());
  assert.ok(got.jwt.every((d) => d === 'd1'), got.jwt.join());
  assert.equal(got.calls, 1);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test('a refused credential is an error event with the hub code, then state closed, no retries', async () => {
  await browser.context.clearCookies();
  const page = await openPage(browser.context, `${app.origin}/?transport=none`);
  await waitFor(() => page.evaluate(() => globalThis.app?.done), { timeoutMs: 5000, what: 'the app page ran' });
  const hubRequests = [];
  page.on('request', (r) => r.url().startsWith(hub.httpUrl) && hubRequests.push(r.url()));
  page.on('websocket', (ws) => hubRequests.push(ws.url()));
  const expired = jwt({ sub: 'old', exp: Math.floor(Date.now() / 1000) - 3600, edgewatch: { read: ['sensors/d1/#'] } });
  const cases = [
    ['wrong app token', `ewt_${'0'.repeat(64)}`, 'sensors/d1/#', 'invalid_credential', 401],
    ['expired JWT', expired, 'sensors/d1/#', 'token_expired', 401],
    ['no token (no cookie either)', null, 'sensors/d1/#', 'unauthorized', 401],
    ['a filter outside the token', token, 'sensors/d2/#', 'forbidden', 403],
  ];
  for (const [name, credential, filter, code, status] of cases) {
    for (const transport of ['websocket', 'sse', 'poll']) {
      const what = `${name} over ${transport}`;
      hubRequests.length = 0;
      const got = await page.evaluate(
        async ({ hub, credential, filter, transport }) => {
          // Backoff of 50-100 ms: a client that retried would make several rounds in 600 ms.
          const c = new EdgewatchClient({ baseUrl: hub, token: credential, filters: [filter], transports: [transport], initialBackoffMs: 50, maxBackoffMs: 100 });
          const errors = [];
          const states = [];
          c.addEventListener('error', (e) => errors.push(e.detail));
          c.addEventListener('state', (e) => states.push(e.detail.state));
          c.connect();
          const until = Date.now() + 5000;
          while (c.state !== 'closed' && !(c.state === 'connected' && errors.length) && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
          await new Promise((r) => setTimeout(r, 600));
          const out = { errors, states: [...states], state: c.state };
          c.close();
          return out;
        },
        { hub: hub.httpUrl, credential, filter, transport },
      );
      if (transport === 'websocket' && code === 'forbidden') {
        // Over WebSocket the hub refuses the subscription, not the connection.
        assert.equal(got.state, 'connected', `${what}: ${JSON.stringify(got)}`);
        assert.deepEqual(got.errors.map((e) => e.code), ['forbidden'], what);
        continue;
      }
      assert.equal(got.state, 'closed', `${what}: ${JSON.stringify(got)}`);
      assert.deepEqual(got.states, ['connecting', 'closed'], `${what}: no reconnecting`);
      assert.deepEqual(got.errors.map((e) => [e.code, e.status]), [[code, status]], `${what}: ${JSON.stringify(got.errors)}`);
      // WebSocket: the refused handshake and one fetch to learn why; SSE: its cursor request
      // (and a preflight, with a token); long polling: the first poll (and a preflight).
      assert.ok(hubRequests.length <= 3, `${what}: ${hubRequests.length} requests: ${hubRequests.join(' ')}`);
    }
  }
  await page.close();
});

test('a cookie session works cross-origin from a listed origin (same site) with the SDK without a token', async () => {
  // Log in on the hub's page; the SameSite=Strict cookie goes along from 127.0.0.1 on another
  // port (same site), because the SDK sends credentials to a hub on another origin.
  const login = await openPage(browser.context, `${hub.httpUrl}/login`);
  const status = await login.evaluate(async () => {
    const res = await fetch('/v1/login', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: 'alice', password: 'alice-pw' }) });
    return res.status;
  });
  assert.equal(status, 200);
  await login.close();
  for (const transport of ['websocket', 'sse', 'poll']) {
    const page = await openPage(browser.context, `${app.origin}/?transport=${transport}&auth=cookie`);
    await waitFor(() => page.evaluate(() => globalThis.app?.done), { timeoutMs: 5000, what: 'the app page ran' });
    assert.deepEqual(deviceIds(await page.evaluate(() => app.series.body)), ['d1'], `${transport}: /v1/series with the cookie`);
    await waitFor(() => page.evaluate(() => app.client.state === 'connected'), { timeoutMs: 10_000, what: `SDK connected over ${transport} with the cookie` });
    const { v1 } = await publishBoth();
    await waitFor(() => page.evaluate((v) => app.readings.some((r) => r.value === v), v1), { timeoutMs: 5000, what: `${transport}: reading ${v1}` });
    assert.ok((await page.evaluate(() => app.readings.map((r) => r.deviceId))).every((d) => d === 'd1'));
    await page.evaluate(() => app.client.close());
    assert.deepEqual(page.errors, []);
    await page.close();
  }
  await browser.context.clearCookies();
});

test('an origin not in live.allowed_origins: the SDK import and /v1/series fail by CORS, no stream opens', async () => {
  await browser.context.clearCookies();
  const page = await openPage(browser.context, `${stranger.origin}/?transport=websocket`);
  await waitFor(() => page.evaluate(() => globalThis.app?.done), { timeoutMs: 10_000, what: 'the page ran' });
  const seen = await page.evaluate(() => ({ sdkFrom: app.sdkFrom, sdkError: app.sdkError, series: app.series, seriesError: app.seriesError }));
  assert.match(seen.sdkError, /TypeError: Failed to fetch dynamically imported module/);
  assert.equal(seen.sdkFrom, 'this origin (copy)');
  assert.equal(seen.series, null, 'no answer readable');
  assert.match(seen.seriesError, /TypeError: Failed to fetch/);
  // By hand: a WebSocket and an EventSource with the token.
  const raw = await page.evaluate(async ({ hub, token }) => {
    const ws = await new Promise((resolve) => {
      const w = new WebSocket(`${hub.replace(/^http/, 'ws')}/v1/ws?access_token=${token}`, 'edgewatch.v1');
      w.onopen = () => resolve('open');
      w.onclose = (e) => resolve(`closed ${e.code}`);
      setTimeout(() => resolve('no answer'), 5000);
    });
    const es = await new Promise((resolve) => {
      const s = new EventSource(`${hub}/v1/stream?filter=${encodeURIComponent('sensors/d1/#')}&access_token=${token}`);
      s.onopen = () => resolve('open');
      s.onerror = () => resolve(`error, readyState ${s.readyState}`);
      setTimeout(() => resolve('no answer'), 5000);
      globalThis.rawEs = s;
    });
    globalThis.rawEs.close();
    return { ws, es };
  }, { hub: hub.httpUrl, token });
  assert.deepEqual(raw, { ws: 'closed 1006', es: 'error, readyState 2' });
  // The SDK (a copy served by this origin) keeps trying with backoff and never connects.
  await publishBoth();
  await page.waitForTimeout(1500);
  await shot(page, 'cross-origin-refused.png');
  const sdk = await page.evaluate(() => {
    const out = { states: app.states, readings: app.readings.length, errors: app.errors.map((e) => e.code), state: app.client.state };
    app.client.close();
    return out;
  });
  assert.ok(!sdk.states.includes('connected'), sdk.states.join());
  assert.equal(sdk.readings, 0);
  assert.ok(sdk.errors.length >= 1 && sdk.errors.every((c) => c === 'connect_failed'), sdk.errors.join());
  await page.close();
});

// ---- the second origins' server ------------------------------------------------------------

/**
 * A web server on 127.0.0.1 (a port of its own: an origin of its own) serving one app page,
 * which imports the SDK from the hub (`hub`, set once the hub runs) and uses it with `token`,
 * and `/sdk.js`, a copy of the hub's SDK for when the import from the hub is refused.
 */
async function appServer() {
  const state = { hub: null, token: null };
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(appPage(state));
    } else if (url.pathname === '/sdk.js') {
      const sdk = await fetch(`${state.hub}/v1/sdk/edgewatch.js`, { signal: AbortSignal.timeout(5000) }).then((r) => r.text());
      res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' });
      res.end(sdk);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    origin: `http://127.0.0.1:${server.address().port}`,
    set hub(v) {
      state.hub = v;
    },
    set token(v) {
      state.token = v;
    },
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(resolve);
      }),
  };
}

/**
 * The app: imports the SDK from the hub (else this origin's copy), reads `GET /v1/series`,
 * and watches `?filter=` (default sensors/d1/#) over `?transport=` (`none`: no client) with the
 * token, or with `?auth=cookie` with the browser's cookies. What it sees is in `window.app`
 * and on the page.
 */
function appPage({ hub, token }) {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>An app on another origin</title>
<link rel="icon" href="data:,">
<style>body { font: 14px system-ui, sans-serif; margin: 2em; } .errors { color: #b00020; }</style>
</head>
<body>
<h1>An app on another origin</h1>
<p>Hub <code id="hub"></code>; SDK from <span id="sdk">…</span>; live: <span id="state">idle</span></p>
<h2>Series (GET /v1/series)</h2>
<ul id="series"></ul>
<h2>Live readings</h2>
<ul id="readings"></ul>
<h2>Errors</h2>
<ul id="errors" class="errors"></ul>
<script type="module">
const HUB = ${JSON.stringify(hub)};
const TOKEN = ${JSON.stringify(token)};
const q = new URLSearchParams(location.search);
const token = q.get('auth') === 'cookie' ? null : TOKEN;
const transport = q.get('transport') ?? 'websocket';
const filter = q.get('filter') ?? 'sensors/d1/#';
const app = (window.app = { sdkFrom: null, sdkError: null, series: null, seriesError: null, readings: [], states: [], errors: [], client: null, done: false });
const $ = (id) => document.getElementById(id);
const line = (list, text) => {
  const li = document.createElement('li');
  li.textContent = text;
  $(list).append(li);
};
$('hub').textContent = HUB;
let sdk;
try {
  sdk = await import(HUB + '/v1/sdk/edgewatch.js');
  app.sdkFrom = 'hub';
} catch (err) {
  app.sdkError = String(err);
  line('errors', 'import the SDK from the hub: ' + err);
  sdk = await import('/sdk.js');
  app.sdkFrom = 'this origin (copy)';
}
$('sdk').textContent = app.sdkFrom;
window.EdgewatchClient = sdk.EdgewatchClient;
try {
  const init = token ? { headers: { authorization: 'Bearer ' + token } } : { credentials: 'include' };
  const res = await fetch(HUB + '/v1/series', init);
  app.series = { status: res.status, body: await res.json() };
  for (const s of app.series.body.series ?? []) line('series', s.topic + ' = ' + s.lastValue);
} catch (err) {
  app.seriesError = String(err);
  line('errors', 'GET /v1/series: ' + err);
}
if (transport !== 'none') {
  const client = new sdk.EdgewatchClient({ baseUrl: HUB, token, filters: [filter], transports: [transport], initialBackoffMs: 200, maxBackoffMs: 1000 });
  client.addEventListener('state', (e) => {
    app.states.push(e.detail.state);
    $('state').textContent = e.detail.state + ' over ' + e.detail.transport;
  });
  client.addEventListener('reading', (e) => {
    app.readings.push(e.detail);
    line('readings', e.detail.topic + ' = ' + e.detail.value);
  });
  client.addEventListener('error', (e) => {
    app.errors.push(e.detail);
    line('errors', e.detail.code + ': ' + e.detail.message);
  });
  app.client = client.connect();
}
app.done = true;
</script>
</body>
</html>
`;
}
