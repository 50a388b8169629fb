#!/usr/bin/env python3
"""Every MQTT transport x credential case with real paho-mqtt 2.x clients against the real hub.

    scripts/mqtt-matrix        (makes the venv, builds the release binary, runs this)
    EDGEWATCH_BIN=path/to/edgewatch target/mqtt-venv/bin/python tests/interop/mqtt_matrix.py

Starts `edgewatch run --config FILE` with every MQTT listener on a port-0 loopback address
(3.1.1 over TCP, MQTT 5 over TCP, 3.1.1 over WebSocket at `/mqtt`, 3.1.1 over TLS with a
self-signed certificate made by `openssl` in a temporary directory), reads the addresses from
the `edgewatch ready mqtt=.. mqtt5=.. websocket=.. tls=.. http=..` line, runs the cases below
on each transport, prints a table transport x case with PASS/FAIL and kills the hub. Exit
status 1 on any failure, 2 if the hub could not be started. Every wait is bounded.

Accounts: `d1` (role `device`: publish `sensors/%u/#`, read nothing), `viewer` (role
`viewer`: read `sensors/#`, publish nothing) and `admin` (no role: everything; used only to
log in over HTTP when the API asks for a credential).

Cases, per transport:
  no credential       CONNECT without username: CONNACK refused, 3.1.1 return code 5 (not
                      authorised) / MQTT 5 reason 0x87, then the connection is closed.
  wrong password      `d1` with a wrong password: 3.1.1 code 4 (bad username or password) /
                      MQTT 5 0x86, then closed. A failed login puts the address and username
                      into a short backoff; the script waits it out before each such case.
  expired token       a JWT (HS256, the hub's `[auth.jwt]` key) as the password, EMQX style:
                      expired, CONNACK 4 / MQTT 5 0x86 then closed; the same claims unexpired
                      connect.
  outside permission  `d1` subscribes `sensors/#`: SUBACK 0x80 / MQTT 5 0x87. It publishes
                      `sensors/d2/temperature` at QoS 1 (acknowledged anyway; MQTT 5 PUBACK
                      reason 0x87) and at QoS 0; `viewer`, subscribed to `sensors/#`, receives
                      neither (checked after a later allowed publish of `d1` arrived, plus a
                      grace period), and the hub stores no `sensors/d2/#` reading.
  correct             `viewer` subscribes `sensors/#` (granted), `d1` publishes
                      `sensors/d1/temperature` at QoS 1 (PUBACK, MQTT 5 reason 0): `viewer`
                      receives it and `GET /v1/readings` returns it (anonymously where the
                      HTTP API allows that, else after `POST /v1/login` as `admin`, with the
                      `edgewatch_session` cookie).

The WebSocket and TLS listeners speak MQTT 3.1.1 only (rumqttd serves MQTT 5 on its own TCP listener), so
MQTT 5 is tested on `[broker.mqtt5]`.

Needs paho-mqtt 2.x (scripts/mqtt-matrix installs 2.1.0 in target/mqtt-venv) and openssl.
"""

import base64
import hashlib
import hmac
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Bounds of every wait.
READY_TIMEOUT = 60.0  # the hub's ready line
STEP_TIMEOUT = 10.0  # one CONNACK, SUBACK, PUBACK, message or stored reading
ABSENT_GRACE = 1.0  # how long a message that must not come is still waited for
STOP_TIMEOUT = 10.0  # the hub's exit after SIGTERM

PASSWORDS = {"d1": "d1-secret", "viewer": "viewer-secret", "admin": "admin-secret"}

# (ready-line name, label, MQTT 5?, WebSocket?, TLS?)
TRANSPORTS = [
    ("mqtt", "MQTT 3.1.1 / TCP", False, False, False),
    ("mqtt5", "MQTT 5 / TCP", True, False, False),
    ("websocket", "MQTT 3.1.1 / WebSocket", False, True, False),
    ("tls", "MQTT 3.1.1 / TLS", False, False, True),
]
CASES = ["no credential", "wrong password", "expired token", "outside permission", "correct"]
# The hub's JWT key (HS256) for the token cases.
JWT_SECRET = "matrix-test-secret-of-at-least-32-bytes"

# The refusals the hub answers with: (3.1.1 return code, MQTT 5 reason code).
NOT_AUTHORISED = (5, 0x87)
BAD_LOGIN = (4, 0x86)
SUBACK_DENIED = (0x80, 0x87)
PUBACK_DENIED_V5 = 0x87


class Failed(Exception):
    """A case's check did not hold; the message says what was seen."""


# --- the hub ------------------------------------------------------------------------------


def hash_entry(binary, username):
    """`echo PASSWORD | edgewatch passwd NAME`: a `[[broker.users]]` entry."""
    out = subprocess.run(
        [binary, "passwd", username],
        input=PASSWORDS[username] + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


def listeners_toml(cert, key):
    """The hub's four MQTT listeners on free loopback ports, TLS with `cert` and `key`."""
    return f"""[broker.mqtt]
enabled = true
listen = "127.0.0.1:0"

[broker.mqtt5]
enabled = true
listen = "127.0.0.1:0"

[broker.websocket]
enabled = true
listen = "127.0.0.1:0"

[broker.tls]
enabled = true
listen = "127.0.0.1:0"
cert_path = {json.dumps(cert)}
key_path = {json.dumps(key)}
"""


def make_cert(work):
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", key, "-out", cert],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=True,
    )
    return cert, key


def jwt(exp_in, publish):
    """An HS256 JWT (standard library only) expiring `exp_in` seconds from now."""
    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": "matrix", "exp": int(time.time()) + exp_in, "edgewatch": {"publish": publish}}
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(JWT_SECRET.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"


def write_config(binary, work, cert, key):
    users = "\n\n".join(
        hash_entry(binary, name) + (f'\nrole = "{role}"' if role else "")
        for name, role in [("d1", "device"), ("viewer", "viewer"), ("admin", None)]
    )
    path = os.path.join(work, "edgewatch.toml")
    with open(path, "w") as f:
        f.write(listeners_toml(cert, key) + f"""
[broker.roles.device]
read = []
publish = ["sensors/%u/#"]

[broker.roles.viewer]
read = ["sensors/#"]
publish = []

{users}

[auth.jwt]
secret = "{JWT_SECRET}"

[bridge]
data_dir = {json.dumps(os.path.join(work, "data"))}
http_listen = "127.0.0.1:0"
""")
    return path


class Hub:
    """`edgewatch run` in the background; stdout is read by a thread (so it never blocks)."""

    def __init__(self, binary, config, log_path):
        self.log_path = log_path
        self.log = open(log_path, "w")
        env = dict(os.environ, NO_COLOR="1",
                   EDGEWATCH_LOG=os.environ.get("EDGEWATCH_LOG", "info"))
        self.proc = subprocess.Popen(
            [binary, "run", "--config", config],
            stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL,
            text=True, env=env,
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_ready(self):
        """The listeners' addresses by name, from the ready line."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            if line.startswith("edgewatch ready "):
                pairs = (w.split("=", 1) for w in line.split()[2:] if "=" in w)
                return {k: v for k, v in pairs}
        raise RuntimeError("the hub did not print its ready line\n" + self.log_tail())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        self.log.close()

    def log_tail(self, n=30):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-n:])


def split_addr(addr):
    host, port = addr.rsplit(":", 1)
    return host.strip("[]"), int(port)


# --- MQTT clients --------------------------------------------------------------------------


class Probe:
    """One paho client, driven by `pump` (no background thread, so no automatic reconnect),
    recording what the broker answered."""

    CONNACK_311 = re.compile(r"Received CONNACK \((\d+), (\d+)\)")

    def __init__(self, transport, addrs, cert, client_id, username=None, password=None):
        name, _, self.v5, ws, tls = transport
        self.host, self.port = split_addr(addrs[name])
        if tls:
            # By host name: the certificate names localhost, and clients send it as SNI.
            self.host = "localhost"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            transport="websockets" if ws else "tcp",
        )
        if ws:
            self.client.ws_set_options(path="/mqtt")
        if tls:
            self.client.tls_set(ca_certs=cert)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client_id = client_id
        self.connack = None  # the CONNACK's code as sent: 3.1.1 return code / MQTT 5 reason
        self.closed = False
        self.subacks = {}  # mid -> [code per filter]
        self.pubacks = {}  # mid -> MQTT 5 reason code (0 for 3.1.1)
        self.messages = []  # (topic, payload)
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = lambda _c, _u, mid, codes, _p: self.subacks.__setitem__(
            mid, [rc.value for rc in codes])
        c.on_publish = lambda _c, _u, mid, rc, _p: self.pubacks.__setitem__(mid, rc.value)
        c.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload.decode()))
        c.on_log = self._on_log

    def _on_connect(self, _c, _u, _flags, reason, _props):
        if self.v5:
            self.connack = reason.value

    def _on_log(self, _c, _u, _level, text):
        # paho hands 3.1.1 clients a reason code mapped to MQTT 5 terms; the wire's return
        # code is in its log line `Received CONNACK (flags, code)`.
        m = self.CONNACK_311.match(text)
        if m and not self.v5:
            self.connack = int(m.group(2))

    def _on_disconnect(self, *_args):
        self.closed = True

    def connect(self):
        """Connects and waits for the CONNACK (or the connection's end); returns its code."""
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except Exception as e:  # noqa: BLE001 (any transport error is a finding)
            raise Failed(f"connect failed: {type(e).__name__}: {e}") from None
        pump([self], lambda: self.connack is not None or self.closed, STEP_TIMEOUT)
        return self.connack

    def connected(self):
        code = self.connect()
        if code != 0:
            raise Failed(f"{self.client_id}: CONNACK {fmt(code)}, expected 0")

    def subscribe(self, topic_filter):
        """Subscribes at QoS 1 and returns the SUBACK's code for the filter."""
        _, mid = self.client.subscribe(topic_filter, qos=1)
        if not pump([self], lambda: mid in self.subacks or self.closed, STEP_TIMEOUT):
            raise Failed(f"no SUBACK for {topic_filter} within {STEP_TIMEOUT:.0f} s")
        if mid not in self.subacks:
            raise Failed(f"connection closed instead of a SUBACK for {topic_filter}")
        return self.subacks[mid][0]

    def publish(self, topic, payload, qos=1, others=()):
        """Publishes; at QoS 1 waits for the PUBACK and returns its reason code."""
        info = self.client.publish(topic, payload, qos=qos)
        if qos == 0:
            pump([self, *others], lambda: info.is_published(), STEP_TIMEOUT)
            return None
        clients = [self, *others]
        if not pump(clients, lambda: info.mid in self.pubacks or self.closed, STEP_TIMEOUT):
            raise Failed(f"no PUBACK for {topic} within {STEP_TIMEOUT:.0f} s")
        if info.mid not in self.pubacks:
            raise Failed(f"connection closed instead of a PUBACK for {topic}")
        return self.pubacks[info.mid]

    def close(self):
        try:
            self.client.disconnect()
            pump([self], lambda: self.closed, 2.0)
        except Exception:  # noqa: BLE001 (already gone)
            pass
        try:
            self.client.socket() and self.client.socket().close()
        except Exception:  # noqa: BLE001
            pass


def pump(probes, done, timeout):
    """Runs the probes' network loops until `done()` or `timeout` seconds; returns `done()`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        busy = False
        for p in probes:
            if not p.closed and p.client.loop(timeout=0.02) == mqtt.MQTT_ERR_SUCCESS:
                busy = True
            elif not p.closed:
                # The socket went away without a DISCONNECT callback yet (refused connect).
                p.closed = p.client.socket() is None
        if not busy:
            time.sleep(0.02)
    return done()


def fmt(code):
    return "none" if code is None else f"0x{code:02x}" if code >= 0x80 else str(code)


# --- HTTP ----------------------------------------------------------------------------------


class Http:
    """`GET /v1/readings`, anonymously or, where the API asks for a credential, with the
    session cookie of `POST /v1/login` as `admin`."""

    def __init__(self, addr):
        self.base = f"http://{addr}"
        self.cookie = None
        self.how = "anonymous"

    def _get(self, path):
        req = urllib.request.Request(self.base + path, headers={"Accept": "application/json"})
        if self.cookie:
            req.add_header("Cookie", self.cookie)
        try:
            with urllib.request.urlopen(req, timeout=STEP_TIMEOUT) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def login(self):
        body = json.dumps({"username": "admin", "password": PASSWORDS["admin"]}).encode()
        req = urllib.request.Request(
            self.base + "/v1/login", data=body, method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(req, timeout=STEP_TIMEOUT) as r:
                    cookies = r.headers.get_all("Set-Cookie") or []
                break
            except urllib.error.HTTPError as e:
                # 429: the address is in a failed login's backoff; it ends within seconds.
                if e.code != 429 or time.monotonic() >= deadline:
                    raise Failed(f"POST /v1/login as admin: HTTP {e.code} "
                                 f"{e.read()[:200]!r}") from None
                time.sleep(0.5)
        for c in cookies:
            if c.startswith("edgewatch_session="):
                self.cookie = c.split(";", 1)[0]
                self.how = "session cookie of admin"
                return
        raise Failed(f"POST /v1/login set no edgewatch_session cookie: {cookies}")

    def readings(self, topic_filter):
        path = "/v1/readings?" + urllib.parse.urlencode({"filter": topic_filter, "limit": 1000})
        status, body = self._get(path)
        if status in (401, 403) and self.cookie is None:
            self.login()
            status, body = self._get(path)
        if status != 200:
            raise Failed(f"GET {path}: HTTP {status} {body[:200]!r}")
        return json.loads(body)["readings"]

    def wait_reading(self, topic, value):
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            got = [r for r in self.readings(topic) if r["value"] == value]
            if got:
                return got[0]
            if time.monotonic() >= deadline:
                raise Failed(f"{topic}={value} not in GET /v1/readings within "
                             f"{STEP_TIMEOUT:.0f} s ({self.how})")
            time.sleep(0.1)


# --- the cases -----------------------------------------------------------------------------


class Matrix:
    def __init__(self, addrs, cert, http):
        self.addrs, self.cert, self.http = addrs, cert, http
        self.n = 0  # client id suffix
        self.failed_logins = 0
        self.last_failed_login = 0.0

    def probe(self, transport, who, username=None, password=None):
        self.n += 1
        return Probe(transport, self.addrs, self.cert, f"{who}-{transport[0]}-{self.n}",
                     username, password)

    def refused(self, transport, probe, expected, closed_too=True):
        code = probe.connect()
        want = expected[1] if transport[2] else expected[0]
        if code != want:
            raise Failed(f"CONNACK {fmt(code)}, expected {fmt(want)}"
                         + (" (connection closed without a CONNACK)" if code is None else ""))
        if closed_too and not pump([probe], lambda: probe.closed, STEP_TIMEOUT):
            raise Failed(f"CONNACK {fmt(code)} but the connection stayed open")
        return f"CONNACK {fmt(code)}, closed"

    def no_credential(self, t):
        p = self.probe(t, "anon")
        try:
            return self.refused(t, p, NOT_AUTHORISED)
        finally:
            p.close()

    def wrong_password(self, t):
        # Wait out the backoff of the previous failed login (100 ms, doubling), so this
        # login's password is really checked.
        if self.failed_logins:
            backoff = 0.1 * 2 ** (self.failed_logins - 1) + 0.2
            time.sleep(max(0.0, self.last_failed_login + backoff - time.monotonic()))
        p = self.probe(t, "d1wrong", "d1", "not-the-password")
        try:
            return self.refused(t, p, BAD_LOGIN)
        finally:
            self.failed_logins += 1
            self.last_failed_login = time.monotonic()
            p.close()

    def expired_token(self, t):
        # A JWT as the password (EMQX style): expired, it is a bad username or password.
        token = jwt(-600, ["sensors/#"])
        p = self.probe(t, "jwtold", "anyone", token)
        try:
            detail = self.refused(t, p, BAD_LOGIN)
        finally:
            p.close()
        # The same token unexpired logs in (so the refusal was the expiry).
        ok = self.probe(t, "jwtnew", "anyone", jwt(600, ["sensors/#"]))
        try:
            ok.connected()
        finally:
            ok.close()
        return detail + "; unexpired: accepted"

    def outside_permission(self, t, marker):
        viewer = self.probe(t, "viewer", "viewer", PASSWORDS["viewer"])
        d1 = self.probe(t, "d1", "d1", PASSWORDS["d1"])
        try:
            viewer.connected()
            granted = viewer.subscribe("sensors/#")
            if granted >= 0x80:
                raise Failed(f"viewer's SUBACK for sensors/# is {fmt(granted)}: refused")
            d1.connected()
            want_sub = SUBACK_DENIED[1] if t[2] else SUBACK_DENIED[0]
            sub = d1.subscribe("sensors/#")
            if sub != want_sub:
                raise Failed(f"d1's SUBACK for sensors/# is {fmt(sub)}, expected {fmt(want_sub)}")
            ack = d1.publish("sensors/d2/temperature", "66.6", qos=1, others=[viewer])
            want_ack = PUBACK_DENIED_V5 if t[2] else 0
            if ack != want_ack:
                raise Failed(f"PUBACK of the denied publish has reason {fmt(ack)}, "
                             f"expected {fmt(want_ack)}")
            d1.publish("sensors/d2/humidity", "66.7", qos=0, others=[viewer])
            # An allowed publish after the denied ones: once it arrived, wait a little more.
            d1.publish("sensors/d1/temperature", marker, qos=1, others=[viewer])
            seen = lambda: ("sensors/d1/temperature", marker) in viewer.messages  # noqa: E731
            if not pump([viewer, d1], seen, STEP_TIMEOUT):
                raise Failed(f"viewer never got the allowed publish after the denied ones: "
                             f"{viewer.messages}")
            pump([viewer, d1], lambda: False, ABSENT_GRACE)
            leaked = [m for m in viewer.messages if m[0].startswith("sensors/d2/")]
            if leaked:
                raise Failed(f"viewer received the denied publishes: {leaked}")
            if d1.messages:
                raise Failed(f"d1 (read nothing) received {d1.messages}")
            if d1.closed:
                raise Failed("d1's connection was closed after its denied publishes")
            self.http.wait_reading("sensors/d1/temperature", float(marker))
            stored = self.http.readings("sensors/d2/#")
            if stored:
                raise Failed(f"the denied publishes were stored: {stored}")
            return (f"SUBACK {fmt(sub)}, PUBACK {fmt(ack)}, not delivered, not stored")
        finally:
            d1.close()
            viewer.close()

    def correct(self, t, value):
        viewer = self.probe(t, "viewer", "viewer", PASSWORDS["viewer"])
        d1 = self.probe(t, "d1", "d1", PASSWORDS["d1"])
        try:
            viewer.connected()
            granted = viewer.subscribe("sensors/#")
            if granted >= 0x80:
                raise Failed(f"viewer's SUBACK for sensors/# is {fmt(granted)}: refused")
            d1.connected()
            ack = d1.publish("sensors/d1/temperature", value, qos=1, others=[viewer])
            if ack != 0:
                raise Failed(f"PUBACK reason {fmt(ack)}, expected 0")
            want = ("sensors/d1/temperature", value)
            if not pump([viewer, d1], lambda: want in viewer.messages, STEP_TIMEOUT):
                raise Failed(f"viewer did not receive {want} within {STEP_TIMEOUT:.0f} s; "
                             f"got {viewer.messages}")
            self.http.wait_reading("sensors/d1/temperature", float(value))
            return f"SUBACK {granted}, PUBACK {ack}, delivered, stored (HTTP {self.http.how})"
        finally:
            d1.close()
            viewer.close()

    def run(self):
        """Runs every case; returns {(transport name, case): (ok, detail)}."""
        results = {}
        for i, t in enumerate(TRANSPORTS):
            # Correct logins first: the hub remembers them, so the backoff a wrong password
            # causes does not refuse them on the next transport.
            order = [
                ("correct", lambda: self.correct(t, f"{21 + i}.5")),
                ("outside permission", lambda: self.outside_permission(t, f"{31 + i}.5")),
                ("no credential", lambda: self.no_credential(t)),
                ("expired token", lambda: self.expired_token(t)),
                ("wrong password", lambda: self.wrong_password(t)),
            ]
            for case, check in order:
                try:
                    results[(t[0], case)] = (True, check())
                except Failed as e:
                    results[(t[0], case)] = (False, str(e))
                except Exception as e:  # noqa: BLE001 (a crash in one case is that case's FAIL)
                    results[(t[0], case)] = (False, f"{type(e).__name__}: {e}")
                ok, detail = results[(t[0], case)]
                print(f"  {t[1]:<24} {case:<19} {'PASS' if ok else 'FAIL'}  {detail}",
                      flush=True)
        return results


def print_table(results):
    width = max(len(t[1]) for t in TRANSPORTS)
    print()
    print(f"{'transport':<{width}}  " + "  ".join(f"{c:<18}" for c in CASES).rstrip())
    for t in TRANSPORTS:
        cells = ("PASS" if results[(t[0], c)][0] else "FAIL" for c in CASES)
        print(f"{t[1]:<{width}}  " + "  ".join(f"{x:<18}" for x in cells).rstrip())


def main():
    binary = os.environ.get("EDGEWATCH_BIN") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release", "edgewatch")
    if not os.access(binary, os.X_OK):
        print(f"error: no hub binary at {binary} (set EDGEWATCH_BIN)", file=sys.stderr)
        return 2
    if shutil.which("openssl") is None:
        print("error: openssl is needed for the TLS listener's certificate", file=sys.stderr)
        return 2
    started = time.monotonic()
    work = tempfile.mkdtemp(prefix="mqtt-matrix-")
    hub = None
    try:
        cert, key = make_cert(work)
        config = write_config(binary, work, cert, key)
        hub = Hub(binary, config, os.path.join(work, "hub.log"))
        try:
            addrs = hub.wait_ready()
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        missing = [t[0] for t in TRANSPORTS if t[0] not in addrs] + (
            [] if "http" in addrs else ["http"])
        if missing:
            print(f"error: the ready line names no {', '.join(missing)}: {addrs}",
                  file=sys.stderr)
            return 2
        print("==> hub ready: " + " ".join(f"{k}={v}" for k, v in addrs.items()), flush=True)
        results = Matrix(addrs, cert, Http(addrs["http"])).run()
        alive = hub.proc.poll() is None
        hub.stop()
        print_table(results)
        failed = [k for k, (ok, _) in results.items() if not ok]
        problems = []
        if not alive:
            problems.append(f"the hub exited during the run (status {hub.proc.returncode})")
        log = open(hub.log_path, errors="replace").read()
        if "panicked" in log:
            problems.append("the hub panicked:\n" + log[log.index("panicked") - 200:][:2000])
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        print(f"\n{len(results) - len(failed)}/{len(results)} passed in "
              f"{time.monotonic() - started:.1f} s")
        if failed or problems:
            print("hub log (last lines):\n" + hub.log_tail(), file=sys.stderr)
            return 1
        return 0
    finally:
        if hub is not None:
            hub.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
