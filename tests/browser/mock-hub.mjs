// A tiny stand-in for the hub's HTTP side, for developing the dashboard without the Rust
// build: serves the static files and the API/stream contract from an in-memory log.
// Not used by the tests (they run the real hub). Run: node tests/browser/mock-hub.mjs [port]
// Feed it with POST /mock/reading {"deviceId","metric","value","unit"} and
// POST /mock/status {"deviceId","online"}.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocketServer } from 'ws';
import { topicMatches } from '../../bridge/assets/sdk/edgewatch.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bridge/assets');
const TYPES = { '.js': 'text/javascript', '.css': 'text/css', '.html': 'text/html; charset=utf-8' };

export function startMockHub(port = 0) {
  const log = [];
  const presence = new Map();
  const listeners = new Set();
  let seq = 0;

  const emit = (msg) => {
    for (const l of listeners) l(msg);
  };
  const addReading = ({ deviceId, metric, value, unit = null, timestamp }) => {
    const now = new Date();
    const r = {
      type: 'reading',
      seq: ++seq,
      topic: `sensors/${deviceId}/${metric}`,
      deviceId,
      metric,
      value,
      unit,
      timestamp: timestamp ?? now.toISOString(),
      receivedAt: now.toISOString(),
    };
    log.push(r);
    emit(r);
    return r;
  };
  const setStatus = ({ deviceId, online }) => {
    const at = new Date().toISOString();
    presence.set(deviceId, { online, at });
    emit({ type: 'status', topic: `sensors/${deviceId}/status`, deviceId, online, status: online ? 'online' : 'offline', at });
  };
  const matching = (filters, after) => log.filter((r) => r.seq > after && filters.some((f) => topicMatches(f, r.topic)));
  const json = (res, status, body) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };

  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://x');
    const q = url.searchParams;
    const filters = q.getAll('filter').length ? q.getAll('filter') : ['sensors/#'];
    if (req.method === 'POST' && url.pathname.startsWith('/mock/')) {
      let body = '';
      for await (const c of req) body += c;
      const msg = JSON.parse(body);
      if (url.pathname === '/mock/reading') json(res, 200, addReading(msg));
      else {
        setStatus(msg);
        json(res, 200, {});
      }
      return;
    }
    let file = null;
    if (url.pathname === '/') file = 'dashboard/index.html';
    else if (url.pathname.startsWith('/assets/')) file = `dashboard/${url.pathname.slice(8)}`;
    else if (url.pathname === '/v1/sdk/edgewatch.js') file = 'sdk/edgewatch.js';
    if (file) {
      const full = path.join(root, path.normalize(file));
      if (!full.startsWith(root) || !fs.existsSync(full)) return json(res, 404, { error: { code: 'not_found', message: 'no such file' } });
      res.writeHead(200, { 'content-type': TYPES[path.extname(full)] ?? 'application/octet-stream' });
      res.end(fs.readFileSync(full));
      return;
    }
    switch (url.pathname) {
      case '/v1/series': {
        const last = new Map();
        for (const r of log) last.set(r.topic, { r, count: (last.get(r.topic)?.count ?? 0) + 1 });
        return json(res, 200, {
          series: [...last.values()].map(({ r, count }) => ({
            topic: r.topic, deviceId: r.deviceId, metric: r.metric, unit: r.unit, lastValue: r.value,
            lastTimestamp: r.timestamp, lastSeen: r.receivedAt, lastSeq: r.seq, count,
          })),
        });
      }
      case '/v1/devices': {
        const ids = new Set([...presence.keys(), ...log.map((r) => r.deviceId)]);
        return json(res, 200, {
          devices: [...ids].map((id) => {
            const p = presence.get(id);
            return { deviceId: id, status: p ? (p.online ? 'online' : 'offline') : 'unknown', online: p ? p.online : null, since: p?.at ?? null, lastSeen: null, metrics: [] };
          }),
        });
      }
      case '/v1/readings': {
        const rows = matching(filters, Number(q.get('after') ?? 0)).slice(0, Number(q.get('limit') ?? 1000));
        return json(res, 200, { readings: rows.map(({ type, ...r }) => r), nextAfter: null });
      }
      case '/v1/rollups': {
        const to = Number(q.get('to') ?? Date.now());
        const from = Number(q.get('from') ?? to - 86_400_000);
        const stepMs = Math.max(1000, Math.ceil((to - from) / 1000));
        const bySeries = new Map();
        for (const r of matching(filters, 0)) {
          const t = Date.parse(r.timestamp);
          if (t < from || t >= to) continue;
          const s = bySeries.get(r.topic) ?? { topic: r.topic, deviceId: r.deviceId, metric: r.metric, unit: r.unit, buckets: new Map() };
          bySeries.set(r.topic, s);
          const b = Math.floor(t / stepMs) * stepMs;
          const a = s.buckets.get(b) ?? { sum: 0, count: 0, min: Infinity, max: -Infinity, last: 0 };
          a.sum += r.value; a.count++; a.min = Math.min(a.min, r.value); a.max = Math.max(a.max, r.value); a.last = r.value;
          s.buckets.set(b, a);
        }
        return json(res, 200, {
          from: new Date(from).toISOString(), to: new Date(to).toISOString(), stepMs, source: 'raw',
          series: [...bySeries.values()].map(({ buckets, ...s }) => ({
            ...s,
            points: [...buckets].map(([t, a]) => ({ t: new Date(t).toISOString(), tMs: t, min: a.min, max: a.max, avg: a.sum / a.count, count: a.count, last: a.last })),
          })),
        });
      }
      case '/v1/poll': {
        let since = q.has('since') ? Number(q.get('since')) : seq;
        const ready = matching(filters, since);
        const timeout = Number(q.get('timeout') ?? 25) * 1000;
        const answer = (readings, events) => {
          const next = readings.length ? readings[readings.length - 1].seq : Math.max(since, seq);
          json(res, 200, { readings, events, next });
        };
        if (ready.length || timeout === 0) return answer(ready, []);
        const l = (msg) => {
          if (!filters.some((f) => topicMatches(f, msg.topic))) return;
          listeners.delete(l);
          clearTimeout(timer);
          if (msg.type === 'reading') answer([msg], []);
          else answer([], [msg]);
        };
        const timer = setTimeout(() => {
          listeners.delete(l);
          answer([], []);
        }, timeout);
        listeners.add(l);
        req.on('close', () => listeners.delete(l));
        return undefined;
      }
      case '/v1/stream': {
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
        res.write('retry: 2000\n: edgewatch stream\n\n');
        const send = (msg) => {
          if (!filters.some((f) => topicMatches(f, msg.topic))) return;
          res.write(`event: ${msg.type}\n${msg.seq ? `id: ${msg.seq}\n` : ''}data: ${JSON.stringify(msg)}\n\n`);
        };
        const since = req.headers['last-event-id'] ?? q.get('lastEventId');
        if (since !== null && since !== undefined) for (const r of matching(filters, Number(since))) send(r);
        const heartbeat = setInterval(() => res.write(':\n\n'), 15_000);
        listeners.add(send);
        req.on('close', () => {
          clearInterval(heartbeat);
          listeners.delete(send);
        });
        return undefined;
      }
      default:
        return json(res, 404, { error: { code: 'not_found', message: `no route ${url.pathname}` } });
    }
  });

  const wss = new WebSocketServer({ noServer: true, handleProtocols: (p) => (p.has('edgewatch.v1') ? 'edgewatch.v1' : false) });
  server.on('upgrade', (req, socket, head) => {
    if (!req.url.startsWith('/v1/ws')) return socket.destroy();
    wss.handleUpgrade(req, socket, head, (ws) => {
      const subs = new Map();
      ws.on('message', (data) => {
        const msg = JSON.parse(String(data));
        if (msg.type === 'ping') return ws.send(JSON.stringify({ type: 'pong' }));
        if (msg.type === 'subscribe') {
          const send = (m) => topicMatches(msg.filter, m.topic) && ws.send(JSON.stringify(m));
          if (msg.since !== undefined) for (const r of matching([msg.filter], msg.since)) ws.send(JSON.stringify(r));
          subs.set(msg.filter, send);
          listeners.add(send);
          return ws.send(JSON.stringify({ type: 'subscribed', filter: msg.filter, cursor: msg.since ?? seq }));
        }
        return ws.send(JSON.stringify({ type: 'error', code: 'unsupported', message: msg.type }));
      });
      ws.on('close', () => {
        for (const l of subs.values()) listeners.delete(l);
      });
    });
  });

  return new Promise((resolve) => {
    server.listen(port, '127.0.0.1', () => {
      const url = `http://127.0.0.1:${server.address().port}`;
      resolve({
        url, addReading, setStatus,
        close: () => new Promise((done) => {
          for (const c of wss.clients) c.terminate();
          server.closeAllConnections();
          server.close(() => done());
        }),
      });
    });
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const hub = await startMockHub(Number(process.argv[2] ?? 0));
  console.log(`mock hub at ${hub.url}`);
}
