// Runs the real hub (`target/release/edgewatch run`) for a test: temp config and data dir,
// fixed free ports (so that a restart keeps them), killed at the end.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import mqtt from 'mqtt';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const BINARY = process.env.EDGEWATCH_BIN ?? path.join(REPO, 'target/release/edgewatch');

/** Whether `port` can be listened on at 127.0.0.1 right now. */
function canListen(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/**
 * A TCP port that was free a moment ago, kept by the hub across a restart. Taken below the
 * kernel's ephemeral range (/proc/sys/net/ipv4/ip_local_port_range, 32768 and up here): a port
 * from that range can be handed to any outgoing connection (a device, the browser) while the
 * hub is stopped, and the restarted hub then fails to bind it.
 */
export async function freePort() {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    if (await canListen(port)) return port;
  }
  throw new Error('no free port found in 20000-31999 after 200 tries');
}

/** Resolves with the value of `fn()` once truthy; rejects after `timeoutMs`. */
export async function waitFor(fn, { timeoutMs = 5000, intervalMs = 50, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/**
 * `edgewatch passwd NAME` with `password` on stdin: the `[[broker.users]]` entry it prints,
 * plus `role = "ROLE"` when given.
 */
export function userEntry(name, password, role = null) {
  const entry = execFileSync(BINARY, ['passwd', name], { input: `${password}\n`, encoding: 'utf8', timeout: 30_000 }).trim();
  return role ? `${entry}\nrole = ${JSON.stringify(role)}` : entry;
}

/**
 * `edgewatch token create ARGS...`: `{ token, entry }`, the token (stdout's first line) and the
 * `[[auth.tokens]]` entry printed after it.
 */
export function createToken(...args) {
  const out = execFileSync(BINARY, ['token', 'create', ...args], { encoding: 'utf8', timeout: 30_000, stdio: ['ignore', 'pipe', 'pipe'] });
  const [token, ...rest] = out.split('\n');
  if (!token.startsWith('ewt_')) throw new Error(`edgewatch token create printed no token first:\n${out}`);
  return { token, entry: rest.join('\n').trim() };
}

export class Hub {
  /**
   * `bridge`: extra `key = value` lines for the config's `[bridge]` section; `config`: TOML text
   * appended to the config (sections other than the generated `[broker.mqtt]`,
   * `[broker.mqtt5]`, `[broker.websocket]` and `[bridge]`, e.g. accounts, roles, `[live]`,
   * `[auth]`).
   */
  constructor({ bridge = [], config = '' } = {}) {
    this.bridgeConfig = bridge;
    this.extraConfig = config;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'edgewatch-browser-'));
    this.dataDir = path.join(this.dir, 'data');
    this.config = path.join(this.dir, 'edgewatch.toml');
    this.proc = null;
    this.output = '';
  }

  get httpUrl() {
    return `http://127.0.0.1:${this.httpPort}`;
  }

  async start() {
    if (!fs.existsSync(BINARY)) throw new Error(`${BINARY} is missing: run cargo build --release first`);
    this.mqttPort ??= await freePort();
    this.httpPort ??= await freePort();
    fs.writeFileSync(
      this.config,
      [
        '[broker.mqtt]',
        'enabled = true',
        `listen = "127.0.0.1:${this.mqttPort}"`,
        '[broker.mqtt5]',
        'enabled = false',
        'listen = "127.0.0.1:0"',
        '[broker.websocket]',
        'enabled = false',
        'listen = "127.0.0.1:0"',
        ...(this.bridgeConfig.length ? ['[bridge]', ...this.bridgeConfig] : []),
        this.extraConfig,
        '',
      ].join('\n'),
    );
    const args = ['run', '--config', this.config, '--data-dir', this.dataDir, '--http-listen', `127.0.0.1:${this.httpPort}`];
    const proc = spawn(BINARY, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, EDGEWATCH_LOG: process.env.EDGEWATCH_LOG ?? 'warn' } });
    this.proc = proc;
    proc.stderr.on('data', (d) => (this.output += d));
    await new Promise((resolve, reject) => {
      let buf = '';
      const timer = setTimeout(() => reject(new Error(`hub not ready within 30 s:\n${this.output}`)), 30_000);
      proc.stdout.on('data', (d) => {
        buf += d;
        this.output += d;
        if (/edgewatch ready .*http=/.test(buf)) {
          this.readyLine = buf.split('\n').find((l) => l.includes('edgewatch ready'));
          clearTimeout(timer);
          resolve();
        }
      });
      proc.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`hub exited with ${code} before ready:\n${this.output}`));
      });
    });
    return this;
  }

  /** SIGTERM (orderly shutdown), SIGKILL after 10 s. */
  async stop() {
    const proc = this.proc;
    this.proc = null;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  }

  async dispose() {
    await this.stop();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** GET `pathAndQuery` as JSON; `headers`, e.g. `{ authorization: 'Bearer ...' }`. */
  async api(pathAndQuery, headers = {}) {
    const res = await fetch(this.httpUrl + pathAndQuery, { headers });
    if (!res.ok) throw new Error(`${pathAndQuery}: HTTP ${res.status} ${await res.text()}`);
    return res.json();
  }

  /**
   * `edgewatch sim --broker mqtt://127.0.0.1:PORT ARGS...` against this hub; resolves with its
   * output once it exits 0, rejects with the output otherwise (or after `timeoutMs`).
   */
  sim(args, { timeoutMs = 60_000 } = {}) {
    return new Promise((resolve, reject) => {
      const proc = spawn(BINARY, ['sim', '--broker', `mqtt://127.0.0.1:${this.mqttPort}`, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      proc.stdout.on('data', (d) => (out += d));
      proc.stderr.on('data', (d) => (out += d));
      const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
      proc.on('exit', (code, signal) => {
        clearTimeout(timer);
        if (code === 0) resolve(out);
        else reject(new Error(`edgewatch sim ${args.join(' ')} exited with ${code ?? signal}:\n${out}`));
      });
    });
  }

  /** Every stored reading matching `filter`, in seq order. */
  async readings(filter) {
    const out = [];
    let after = 0;
    for (;;) {
      const q = new URLSearchParams({ filter, after: String(after), limit: '1000' });
      const page = await this.api(`/v1/readings?${q}`);
      out.push(...page.readings);
      if (page.nextAfter === null || page.nextAfter === undefined || page.readings.length === 0) return out;
      after = page.nextAfter;
    }
  }

  /** A device that only publishes readings: no status topic, no last will (a serial sensor). */
  async sensor(deviceId, { username, password } = {}) {
    const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${this.mqttPort}`, {
      clientId: `browser-test-sensor-${deviceId}-${process.pid}`,
      username,
      password,
      reconnectPeriod: 0,
      connectTimeout: 5000,
    });
    return {
      client,
      publish: (metric, value, unit = 'C') => client.publishAsync(`sensors/${deviceId}/${metric}`, JSON.stringify({ value, unit }), { qos: 1 }),
      end: () => client.endAsync(true).catch(() => {}),
    };
  }

  /**
   * An MQTT device: last will `offline` (retained) on its status topic, `online` on connect.
   * `username` and `password`: its `[[broker.users]]` account, on a hub that has accounts.
   */
  async device(deviceId, { username, password } = {}) {
    const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${this.mqttPort}`, {
      clientId: `browser-test-${deviceId}-${process.pid}`,
      username,
      password,
      reconnectPeriod: 0,
      connectTimeout: 5000,
      will: { topic: `sensors/${deviceId}/status`, payload: 'offline', qos: 1, retain: true },
    });
    await client.publishAsync(`sensors/${deviceId}/status`, 'online', { qos: 1, retain: true });
    return {
      client,
      publish: (metric, value, unit = 'C', extra = {}) =>
        client.publishAsync(`sensors/${deviceId}/${metric}`, JSON.stringify({ value, unit, ...extra }), { qos: 1 }),
      /** Drops the TCP connection without DISCONNECT, so that the broker sends the will. */
      crash: () => client.stream.destroy(),
      end: () => client.endAsync(true).catch(() => {}),
    };
  }
}
