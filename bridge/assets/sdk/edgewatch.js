// edgewatch.js: the JavaScript client of an edgewatch hub's live streams.
// A plain ES module with no dependencies and no build step; served by the hub at
// /v1/sdk/edgewatch.js and usable in browsers and in Node 22+ (global fetch and WebSocket).
//
//   import { EdgewatchClient } from '/v1/sdk/edgewatch.js';
//
//   const client = new EdgewatchClient({ filters: ['sensors/+/temperature'] });
//   client.addEventListener('reading', (e) => {
//     const r = e.detail; // { seq, topic, deviceId, metric, value, unit, timestamp, receivedAt }
//     console.log(r.deviceId, r.value, r.unit);
//   });
//   client.addEventListener('state', (e) => console.log(e.detail.state, e.detail.transport));
//   client.connect();
//   client.publish('sensors/d1/cmd', 'on'); // over WebSocket; queued while disconnected
//
// From another origin, with an app token (`edgewatch token create`) or a JWT; the hub must
// list the page's origin in `live.allowed_origins` (docs/security.md):
//
//   import { EdgewatchClient } from 'https://edge-box:8443/v1/sdk/edgewatch.js';
//   const client = new EdgewatchClient({ baseUrl: 'https://edge-box:8443', token: 'ewt_...',
//                                        filters: ['sensors/d1/#'] });
//
// Credentials. `token` (a string, or a function returning one or a promise of one, called
// before each connection round, e.g. to refresh a JWT) goes to the hub as
// `Authorization: Bearer` on every fetch (long polls, the SSE stream, which this client reads
// with fetch, and the cursor request before it) and as the `access_token` query parameter on
// the WebSocket URL (a WebSocket cannot carry headers; the hub redacts it from its logs). An
// EventSource of your own on `/v1/stream` or `/v1/watch` needs `?access_token=` the same way.
// Without `token` nothing is added: on the hub's own origin the browser sends the dashboard's
// session cookie by itself; with `baseUrl` on another origin, fetches use
// `credentials: 'include'` so that the cookie goes along where the hub's CORS allows it (the
// origin listed one by one in `live.allowed_origins`; a hub allowing only `"*"` answers
// without credentials, so pass `credentials: 'same-origin'` there). Option `credentials`
// overrides the fetch mode in every case.
//
// Refused credentials. A 401 or 403 from the hub (no, wrong or expired credential, an ended
// session, a filter the caller may not read) is final: the client emits `error` with the
// hub's code (`unauthorized`, `invalid_credential`, `token_expired`, `session_expired`,
// `forbidden`) and `status`, stops reconnecting and goes to state `closed`. Retrying would
// only hammer the hub with a credential it refuses; fix the credential (a new `token`) and
// call `connect()` again. Browsers hide the status of a refused WebSocket handshake, so after
// one the client asks the hub once over fetch (`/v1/poll?timeout=0`) to learn whether the
// credential was the reason. Over WebSocket a filter the caller may not read is refused per
// subscription (`error` with code `forbidden`); the connection and the other filters stay.
// Cross-origin, a browser that blocks an answer for want of CORS headers (an origin not in
// `live.allowed_origins`) tells the page nothing about it: that looks like a network failure
// and is retried with backoff.
//
// Transports are tried in order (WebSocket, then Server-Sent Events, then long polling) and
// the client falls back when one fails to open. After a drop it reconnects with exponential
// backoff and jitter, resuming from the last `seq` it saw; readings are deduplicated by `seq`,
// so none is emitted twice. Dead connections are detected by heartbeat: application pings on
// WebSocket, the server's comment heartbeats on SSE, a request deadline on long polls.
//
// Events (all CustomEvent, payload in `detail`):
//   reading  a reading: { type, seq, topic, deviceId, metric, value, unit, timestamp, receivedAt }
//   status   device presence: { type, topic, deviceId, online, status, at }
//   gap      the server dropped readings for this slow client: { resumeAfter, dropped }; the
//            client resumes from `resumeAfter` by itself (option `resumeOnGap`)
//   reset    the resume point is older than the retained log: { requested, oldest }
//   state    { state: 'connecting'|'connected'|'reconnecting'|'closed', transport, attempt }
//   message  every message from the server, raw: { transport, message }
//   error    { code, message, status? } from the server or about the connection: `status` is
//            the HTTP status of a refused request; `connect_failed` (a transport did not
//            open, retried), `token_failed` (options.token threw, retried), the hub's codes

/** Transport names, in the default order of negotiation. */
export const TRANSPORTS = Object.freeze(['websocket', 'sse', 'poll']);

const DEFAULTS = Object.freeze({
  filters: ['sensors/#'],
  transports: TRANSPORTS,
  since: null,
  openTimeoutMs: 10_000,
  initialBackoffMs: 500,
  maxBackoffMs: 15_000,
  pingIntervalMs: 15_000,
  /** A WebSocket with nothing received for this long is considered dead. */
  wsDeadAfterMs: 35_000,
  /** An SSE stream with nothing received (not even a heartbeat comment) for this long is dead. */
  sseDeadAfterMs: 45_000,
  /** Seconds a long poll waits at the server. */
  pollTimeoutS: 25,
  maxBufferedPublishes: 100,
  resumeOnGap: true,
  /** How many recent seqs are remembered to drop duplicates. */
  dedupeWindow: 10_000,
});

/**
 * For a WebSocket request's promise where nobody waits for the reply: a refusal from the hub
 * is already an `error` event (see `_handle`), a lost connection a `state` event.
 */
const ignore = () => {};

class ConnectionFailed extends Error {
  /** `status` and `code`: the hub's HTTP status and error code, when it answered with one. */
  constructor(message, { status = null, code = null } = {}) {
    super(message);
    this.status = status;
    this.code = code;
  }

  /** A refusal of the credential or the permission: reconnecting cannot help. */
  get refused() {
    return this.status === 401 || this.status === 403;
  }
}

/**
 * True when an MQTT topic filter matches a topic (`+` one level, `#` the rest).
 * @param {string} filter
 * @param {string} topic
 */
export function topicMatches(filter, topic) {
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return true;
    if (i >= t.length) return false;
    if (f[i] !== '+' && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}

export class EdgewatchClient extends EventTarget {
  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl] hub origin, default: the page's origin
   * @param {string[]} [options.filters] MQTT topic filters, default ['sensors/#']
   * @param {string[]} [options.transports] order of negotiation; one entry forces a transport
   * @param {number|null} [options.since] resume after this seq (replays stored readings)
   * @param {string|(() => string|Promise<string>)|null} [options.token] app token (`ewt_...`)
   *   or JWT; a function is called before each connection round
   * @param {'include'|'same-origin'|'omit'} [options.credentials] fetch credentials mode,
   *   default `include` for a `baseUrl` on another origin without `token`, else `same-origin`
   */
  constructor(options = {}) {
    super();
    this.options = { ...DEFAULTS, ...options };
    const base = options.baseUrl ?? globalThis.location?.origin;
    if (!base) throw new TypeError('EdgewatchClient: baseUrl is required outside a browser');
    this.baseUrl = String(base).replace(/\/+$/, '');
    /** The credential; may be replaced before calling `connect()` again. */
    this.token = options.token ?? null;
    this._token = null; // the token of the current round (a function's result)
    const pageOrigin = globalThis.location?.origin;
    this._crossOrigin = Boolean(pageOrigin) && new URL(this.baseUrl).origin !== pageOrigin;
    this.filters = [...new Set(this.options.filters)];
    this.transports = this.options.transports.filter((t) => TRANSPORTS.includes(t));
    if (this.transports.length === 0) throw new TypeError(`EdgewatchClient: transports must be among ${TRANSPORTS}`);

    /** Resume cursor: readings after this seq are wanted (null: from now on). */
    this.cursor = this.options.since ?? null;
    /** Per-filter cursors for WebSocket, where every filter is its own ordered subscription. */
    this._filterCursors = new Map(this.filters.map((f) => [f, this.cursor]));
    this._seen = new Set();
    this._seenOrder = [];
    this._seenFloor = -1;

    this.state = 'idle';
    this.transport = null;
    this.attempt = 0;
    this._conn = null;
    this._preferred = null; // the transport that connected last
    this._broken = new Set(); // transports that failed while a later one worked
    this._retryTimer = null;
    this._generation = 0; // bumps on every (re)connection round; stale callbacks check it
    this._outbox = []; // publishes waiting for a WebSocket
    this._pending = []; // WebSocket requests awaiting their reply, in order
  }

  /** Opens the connection (negotiating the transport). Returns this. */
  connect() {
    if (this.state !== 'idle' && this.state !== 'closed') return this;
    this.attempt = 0;
    this._connected = false;
    this._round();
    return this;
  }

  /** Closes the connection for good; queued publishes are rejected. */
  close() {
    this._generation++;
    clearTimeout(this._retryTimer);
    this._conn?.close();
    this._conn = null;
    for (const p of this._outbox.splice(0)) p.reject(new Error('client closed'));
    this._failPending(new Error('client closed'));
    if (this.state !== 'closed') this._setState('closed', this.transport);
  }

  /** Adds a topic filter to the live subscription. */
  subscribe(filter) {
    if (this.filters.includes(filter)) return;
    this.filters.push(filter);
    this._filterCursors.set(filter, null);
    if (this._conn?.transport === 'websocket') {
      this._request({ type: 'subscribe', filter }).catch(ignore);
    } else if (this._conn) {
      this._restart(); // SSE and long polling carry the filters in the URL
    }
  }

  /** Removes a topic filter from the live subscription. */
  unsubscribe(filter) {
    if (!this.filters.includes(filter)) return;
    this.filters = this.filters.filter((f) => f !== filter);
    this._filterCursors.delete(filter);
    if (this._conn?.transport === 'websocket') {
      this._request({ type: 'unsubscribe', filter }).catch(ignore);
    } else if (this._conn) {
      this._restart();
    }
  }

  /**
   * Publishes into the hub's broker (WebSocket only; which topics are allowed is the hub's
   * configuration). Queued while disconnected, up to `maxBufferedPublishes` (the oldest is
   * dropped and rejected). Resolves when the hub confirms.
   * @param {string} topic
   * @param {unknown} payload string or JSON value
   * @param {{qos?: 0|1}} [opts]
   */
  publish(topic, payload, opts = {}) {
    const message = { type: 'publish', topic, payload, qos: opts.qos ?? 0 };
    if (this._conn?.transport === 'websocket') return this._request(message);
    if (this._conn) {
      return Promise.reject(new Error(`publish needs the WebSocket transport, connected over ${this._conn.transport}`));
    }
    if (this.state === 'closed') return Promise.reject(new Error('client closed'));
    return new Promise((resolve, reject) => {
      this._outbox.push({ message, resolve, reject });
      while (this._outbox.length > this.options.maxBufferedPublishes) {
        this._outbox.shift().reject(new Error('publish dropped: outgoing buffer full'));
      }
    });
  }

  // ---- negotiation and reconnection ------------------------------------------------------

  _order() {
    const usable = this.transports.filter((t) => !this._broken.has(t));
    const order = usable.length ? usable : [...this.transports];
    if (this._preferred && order.includes(this._preferred)) {
      return [this._preferred, ...order.filter((t) => t !== this._preferred)];
    }
    return order;
  }

  async _round() {
    const gen = ++this._generation;
    this.attempt++;
    const phase = this._connected ? 'reconnecting' : 'connecting';
    const failed = [];
    try {
      this._token = typeof this.token === 'function' ? await this.token() : this.token;
    } catch (err) {
      if (gen !== this._generation) return;
      this._emitError({ code: 'token_failed', message: `options.token: ${err?.message ?? err}` });
      this._scheduleRetry(gen);
      return;
    }
    for (const transport of this._order()) {
      if (gen !== this._generation) return;
      this._setState(phase, transport);
      try {
        const conn = await this._open(transport, gen);
        if (gen !== this._generation) {
          conn.close();
          return;
        }
        for (const t of failed) this._broken.add(t);
        this._conn = conn;
        this._preferred = transport;
        this._connected = true;
        this.attempt = 0;
        this._setState('connected', transport);
        this._flushOutbox();
        return;
      } catch (err) {
        if (gen !== this._generation) return;
        if (err.refused) {
          this._refused(err);
          return;
        }
        failed.push(transport);
        this._emitError({ code: 'connect_failed', message: `${transport}: ${err.message}` });
      }
    }
    this._scheduleRetry(gen);
  }

  /** The hub refused the credential or the permission (401/403): say so and stop. */
  _refused(err) {
    this._emitError({ code: err.code ?? (err.status === 401 ? 'unauthorized' : 'forbidden'), message: err.message, status: err.status });
    this.close();
  }

  _scheduleRetry(gen) {
    const { initialBackoffMs, maxBackoffMs } = this.options;
    const exp = Math.min(maxBackoffMs, initialBackoffMs * 2 ** Math.max(0, this.attempt - 1));
    const delay = exp / 2 + Math.random() * (exp / 2); // "equal jitter"
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => {
      if (gen === this._generation) this._round();
    }, delay);
  }

  /** Called by a connection that dropped after it had connected. */
  _dropped(conn, reason) {
    if (conn !== this._conn) return;
    this._conn = null;
    conn.close();
    this._failPending(new Error(`connection lost: ${reason}`));
    this.attempt = 0; // the first retry round will be attempt 1
    this._setState('reconnecting', conn.transport);
    this._generation++;
    this._scheduleRetry(this._generation);
  }

  /** Reconnects right away (new filters, or resuming after a gap). */
  _restart() {
    const conn = this._conn;
    this._conn = null;
    conn?.close();
    this._failPending(new Error('connection restarted'));
    this.attempt = 0;
    this._round();
  }

  _setState(state, transport) {
    const changed = state !== this.state || transport !== this.transport || state !== 'connected';
    this.state = state;
    this.transport = transport ?? null;
    if (changed) this._emit('state', { state, transport: this.transport, attempt: this.attempt });
  }

  _open(transport, gen) {
    switch (transport) {
      case 'websocket':
        return this._openWebSocket(gen);
      case 'sse':
        return this._openSse(gen);
      default:
        return this._openPoll(gen);
    }
  }

  _url(path, params) {
    const url = new URL(this.baseUrl + path);
    for (const [k, v] of params) if (v !== null && v !== undefined) url.searchParams.append(k, String(v));
    return url;
  }

  _filterParams() {
    return this.filters.map((f) => ['filter', f]);
  }

  /** `init` for a fetch to the hub: the token as a bearer header, the credentials mode. */
  _fetchInit(init = {}) {
    const headers = { ...init.headers };
    if (this._token) headers.authorization = `Bearer ${this._token}`;
    const credentials = this.options.credentials ?? (this._crossOrigin && !this._token ? 'include' : 'same-origin');
    return { ...init, headers, credentials };
  }

  /**
   * Why a WebSocket handshake failed, if the hub refused the credential or the filters: a
   * browser hides the handshake's HTTP status, so the same question goes once over fetch.
   * Resolves with a refusal (401/403) or null.
   */
  async _whyRefused() {
    try {
      const url = this._url('/v1/poll', [...this._filterParams(), ['timeout', 0], ['limit', 1]]);
      const res = await fetchWithTimeout(url, this._fetchInit({ cache: 'no-store' }), this.options.openTimeoutMs);
      if (res.status === 401 || res.status === 403) return await failure(res);
      await res.body?.cancel();
    } catch {
      // not reachable or blocked by CORS: no reason to learn
    }
    return null;
  }

  // ---- WebSocket -------------------------------------------------------------------------

  _openWebSocket() {
    return new Promise((resolve, reject) => {
      const url = this._url('/v1/ws', [['access_token', this._token || null]]);
      url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
      let ws;
      try {
        ws = new WebSocket(url, 'edgewatch.v1');
      } catch (err) {
        reject(new ConnectionFailed(err.message));
        return;
      }
      let opened = false;
      let lastRx = Date.now();
      let pinger = null;
      const conn = {
        transport: 'websocket',
        send: (msg) => ws.send(JSON.stringify(msg)),
        close: () => {
          clearInterval(pinger);
          clearTimeout(openTimer);
          ws.onclose = ws.onmessage = ws.onerror = null;
          if (ws.readyState <= 1) ws.close(1000);
        },
      };
      const openTimer = setTimeout(() => {
        conn.close();
        reject(new ConnectionFailed('timed out opening'));
      }, this.options.openTimeoutMs);
      ws.onopen = () => {
        clearTimeout(openTimer);
        opened = true;
        lastRx = Date.now();
        for (const filter of this.filters) {
          const since = this._filterCursors.get(filter) ?? this.cursor;
          const msg = since === null ? { type: 'subscribe', filter } : { type: 'subscribe', filter, since };
          this._request(msg, conn).catch(ignore);
        }
        pinger = setInterval(() => {
          if (Date.now() - lastRx > this.options.wsDeadAfterMs) {
            this._dropped(conn, 'no message within the heartbeat timeout');
          } else {
            this._request({ type: 'ping' }, conn).catch(() => {});
          }
        }, this.options.pingIntervalMs);
        resolve(conn);
      };
      ws.onmessage = (ev) => {
        lastRx = Date.now();
        let msg;
        try {
          msg = JSON.parse(ev.data);
        } catch {
          this._emitError({ code: 'bad_message', message: 'the hub sent invalid JSON' });
          return;
        }
        this._handle(msg, 'websocket');
      };
      ws.onerror = () => {}; // a close event follows with the details
      ws.onclose = (ev) => {
        clearInterval(pinger);
        clearTimeout(openTimer);
        const why = `closed with code ${ev.code}${ev.reason ? ` (${ev.reason})` : ''}`;
        if (opened) this._dropped(conn, why);
        else this._whyRefused().then((refusal) => reject(refusal ?? new ConnectionFailed(why)));
      };
    });
  }

  /** Sends a WebSocket request whose reply (or error) comes back in order. */
  _request(message, conn = this._conn) {
    return new Promise((resolve, reject) => {
      if (!conn || conn.transport !== 'websocket') {
        reject(new Error('not connected over WebSocket'));
        return;
      }
      this._pending.push({ type: message.type, resolve, reject });
      try {
        conn.send(message);
      } catch (err) {
        this._pending.pop();
        reject(err);
      }
    });
  }

  _failPending(err) {
    for (const p of this._pending.splice(0)) p.reject(err);
  }

  _flushOutbox() {
    if (this._conn?.transport !== 'websocket') {
      for (const p of this._outbox.splice(0)) {
        p.reject(new Error(`publish needs the WebSocket transport, connected over ${this._conn?.transport}`));
      }
      return;
    }
    for (const p of this._outbox.splice(0)) this._request(p.message).then(p.resolve, p.reject);
  }

  // ---- Server-Sent Events ----------------------------------------------------------------

  /** The seq of the newest stored reading, so that a first SSE stream can resume too. */
  async _headCursor() {
    const url = this._url('/v1/poll', [...this._filterParams(), ['timeout', 0], ['limit', 1]]);
    const res = await fetchWithTimeout(url, this._fetchInit({ cache: 'no-store' }), this.options.openTimeoutMs);
    if (!res.ok) throw await failure(res);
    const body = await res.json();
    return typeof body.next === 'number' ? body.next : null;
  }

  async _openSse() {
    if (this.cursor === null) this.cursor = await this._headCursor();
    const url = this._url('/v1/stream', [...this._filterParams(), ['lastEventId', this.cursor]]);
    const abort = new AbortController();
    const res = await fetchWithTimeout(
      url,
      this._fetchInit({ headers: { accept: 'text/event-stream' }, cache: 'no-store', signal: abort.signal }),
      this.options.openTimeoutMs,
    );
    if (!res.ok) throw await failure(res);
    if (!(res.headers.get('content-type') ?? '').startsWith('text/event-stream')) {
      abort.abort();
      throw new ConnectionFailed('not an event stream');
    }
    let lastRx = Date.now();
    let closed = false;
    const watchdog = setInterval(() => {
      if (Date.now() - lastRx > this.options.sseDeadAfterMs) this._dropped(conn, 'no heartbeat within the timeout');
    }, Math.min(5_000, this.options.sseDeadAfterMs / 3));
    const conn = {
      transport: 'sse',
      close: () => {
        closed = true;
        clearInterval(watchdog);
        abort.abort();
      },
    };
    const parser = new SseParser((event, data, id) => {
      let msg;
      try {
        msg = JSON.parse(data);
      } catch {
        return;
      }
      if (event === 'reading' && msg.seq === undefined && id) msg.seq = Number(id);
      if (!msg.type) msg.type = event;
      this._handle(msg, 'sse');
    });
    (async () => {
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          lastRx = Date.now();
          parser.push(decoder.decode(value, { stream: true }));
        }
        if (!closed) this._dropped(conn, 'the hub ended the stream');
      } catch (err) {
        if (!closed) this._dropped(conn, err.message);
      }
    })();
    return conn;
  }

  // ---- long polling ----------------------------------------------------------------------

  async _openPoll() {
    let closed = false;
    let abort = null;
    const conn = {
      transport: 'poll',
      close: () => {
        closed = true;
        abort?.abort();
      },
    };
    const pollOnce = async (timeoutS) => {
      abort = new AbortController();
      const url = this._url('/v1/poll', [...this._filterParams(), ['since', this.cursor], ['timeout', timeoutS]]);
      const deadline = timeoutS * 1000 + this.options.openTimeoutMs;
      const res = await fetchWithTimeout(url, this._fetchInit({ cache: 'no-store', signal: abort.signal }), deadline);
      if (!res.ok) throw await failure(res);
      const body = await res.json();
      if (closed) return;
      for (const msg of body.readings ?? []) this._handle({ type: 'reading', ...msg }, 'poll');
      // `next` is always the following `since`, except after a gap when resuming is wanted.
      let next = typeof body.next === 'number' ? body.next : this.cursor;
      for (const ev of body.events ?? []) {
        if (ev.type === 'gap' && this.options.resumeOnGap && typeof ev.resumeAfter === 'number') {
          next = Math.min(next ?? ev.resumeAfter, ev.resumeAfter);
        }
        this._handle(ev, 'poll', { noResume: true });
      }
      this.cursor = next;
    };
    await pollOnce(0); // answers at once: the hub is there, the cursor is known
    (async () => {
      let failures = 0;
      while (!closed) {
        try {
          await pollOnce(this.options.pollTimeoutS);
          failures = 0;
        } catch (err) {
          if (closed) return;
          if (err.refused && conn === this._conn) {
            this._refused(err); // the session ended or the token expired
            return;
          }
          // One failed poll is retried at once; a second one in a row is a dropped connection.
          if (++failures >= 2) {
            this._dropped(conn, err.message);
            return;
          }
        }
      }
    })();
    return conn;
  }

  // ---- messages --------------------------------------------------------------------------

  _handle(msg, transport, { noResume = false } = {}) {
    switch (msg.type) {
      case 'reading':
        if (this._accept(msg)) {
          this._emit('message', { transport, message: msg });
          this._emit('reading', msg);
        }
        return;
      case 'status':
      case 'reset':
        this._emit('message', { transport, message: msg });
        this._emit(msg.type, msg);
        return;
      case 'gap':
        this._emit('message', { transport, message: msg });
        this._emit('gap', msg);
        if (this.options.resumeOnGap && !noResume && typeof msg.resumeAfter === 'number') this._resumeFrom(msg);
        return;
      case 'error':
        this._emit('message', { transport, message: msg });
        if (transport === 'websocket' && this._pending.length) this._pending.shift().reject(Object.assign(new Error(msg.message), { code: msg.code }));
        this._emitError({ code: msg.code, message: msg.message });
        return;
      case 'subscribed': {
        if (this._filterCursors.get(msg.filter) == null && typeof msg.cursor === 'number') {
          this._filterCursors.set(msg.filter, msg.cursor);
          if (this.cursor === null) this.cursor = msg.cursor;
        }
        this._settle(msg);
        return;
      }
      case 'unsubscribed':
      case 'published':
      case 'pong':
        this._settle(msg);
        return;
      default:
        this._emit('message', { transport, message: msg });
    }
  }

  _settle(msg) {
    const p = this._pending.shift();
    p?.resolve(msg);
  }

  /** Records a reading's seq; false when it was already emitted. */
  _accept(r) {
    const seq = r.seq;
    if (typeof seq !== 'number') return true;
    if (this._seen.has(seq) || seq <= this._seenFloor) return false;
    this._seen.add(seq);
    this._seenOrder.push(seq);
    if (this._seenOrder.length > this.options.dedupeWindow) {
      const old = this._seenOrder.shift();
      this._seen.delete(old);
      if (old > this._seenFloor) this._seenFloor = old;
    }
    if (this.cursor === null || seq > this.cursor) this.cursor = seq;
    for (const [filter, c] of this._filterCursors) {
      if ((c === null || seq > c) && topicMatches(filter, r.topic)) this._filterCursors.set(filter, seq);
    }
    return true;
  }

  /** After a gap: resume from the seq the hub named, so that the dropped readings replay. */
  _resumeFrom(gap) {
    const at = gap.resumeAfter;
    if (this.cursor === null || at < this.cursor) this.cursor = at;
    if (gap.filter && this._filterCursors.has(gap.filter)) {
      this._filterCursors.set(gap.filter, at);
      this._request({ type: 'subscribe', filter: gap.filter, since: at }).catch(ignore);
      return;
    }
    for (const f of this._filterCursors.keys()) {
      const c = this._filterCursors.get(f);
      if (c === null || at < c) this._filterCursors.set(f, at);
    }
    this._restart();
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _emitError(err) {
    const detail = { code: err.code ?? 'client', message: err.message ?? String(err) };
    if (err.status) detail.status = err.status;
    this._emit('error', detail);
  }
}

/** Incremental text/event-stream parser (the WHATWG rules the client needs). */
class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = '';
    this.event = '';
    this.data = [];
    this.id = '';
  }

  push(text) {
    this.buffer += text;
    let start = 0;
    for (;;) {
      const nl = this.buffer.slice(start).search(/\r\n|\r|\n/);
      if (nl < 0) break;
      const end = start + nl;
      const line = this.buffer.slice(start, end);
      start = end + (this.buffer.startsWith('\r\n', end) ? 2 : 1);
      this.line(line);
    }
    this.buffer = this.buffer.slice(start);
  }

  line(line) {
    if (line === '') {
      if (this.data.length) this.onEvent(this.event || 'message', this.data.join('\n'), this.id);
      this.event = '';
      this.data = [];
      return;
    }
    if (line.startsWith(':')) return; // comment (heartbeat)
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.event = value;
    else if (field === 'data') this.data.push(value);
    else if (field === 'id') this.id = value;
  }
}

async function fetchWithTimeout(url, init, ms) {
  const timeout = new AbortController();
  const timer = setTimeout(() => timeout.abort(), ms);
  const signal = init.signal ? anySignal([init.signal, timeout.signal]) : timeout.signal;
  try {
    return await fetch(url, { ...init, signal });
  } catch (err) {
    throw new ConnectionFailed(timeout.signal.aborted ? 'timed out' : err.message);
  } finally {
    clearTimeout(timer);
  }
}

function anySignal(signals) {
  if (AbortSignal.any) return AbortSignal.any(signals);
  const ctrl = new AbortController();
  for (const s of signals) s.addEventListener('abort', () => ctrl.abort(), { once: true });
  return ctrl.signal;
}

/** A ConnectionFailed for an answer that is not ok, with the hub's status and error code. */
async function failure(res) {
  try {
    const body = await res.json();
    if (body?.error) {
      return new ConnectionFailed(`HTTP ${res.status} ${body.error.code}: ${body.error.message}`, { status: res.status, code: body.error.code });
    }
  } catch {
    // not JSON
  }
  return new ConnectionFailed(`HTTP ${res.status}`, { status: res.status });
}
