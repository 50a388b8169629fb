//! The load generator (rumqttc publishers) and the receivers (MQTT, SSE, WebSocket) that count
//! deliveries and measure publish-to-receive latency.
//!
//! Latency: every payload's `value` is the send time in microseconds since the harness started
//! (one monotonic clock in this process); a receiver subtracts it from its own receive time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;

static CLOCK: OnceLock<(Instant, i64)> = OnceLock::new();

fn clock() -> &'static (Instant, i64) {
    CLOCK.get_or_init(|| (Instant::now(), unix_ms_now()))
}

/// Microseconds since the harness started.
pub(crate) fn now_us() -> u64 {
    clock().0.elapsed().as_micros() as u64
}

/// The wall-clock time (Unix ms) of a [`now_us`] reading, to compare with the hub's
/// `receivedAt` (same machine, same clock; millisecond resolution).
fn wall_ms_of(us: u64) -> i64 {
    clock().1 + (us / 1000) as i64
}

/// Unix ms of an RFC 3339 UTC time with milliseconds as the hub writes it
/// (`2026-11-29T12:00:00.123Z`).
fn parse_rfc3339_ms(s: &[u8]) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let b = s.get(r)?;
        b.iter().try_fold(0i64, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    // Days since 1970-01-01 of a civil date (H. Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + ms)
}

/// RFC 3339 UTC with milliseconds, from Unix milliseconds.
pub(crate) fn rfc3339_ms(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

pub(crate) fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What the publishers send.
#[derive(Debug, Clone)]
pub(crate) enum Shape {
    /// `sensors/b{k}/temperature`, value = send time (µs), timestamp = now.
    Live,
    /// History preload: publisher `k` writes series `h{k % series}` at 1 Hz event times from
    /// `t0_ms`, interleaved so each series gets one reading per second.
    History { series: usize, t0_ms: i64 },
}

/// One load run.
#[derive(Debug, Clone)]
pub(crate) struct LoadSpec {
    pub(crate) publishers: usize,
    pub(crate) qos: QoS,
    /// Total readings/s over all publishers; `None` publishes as fast as the broker takes them.
    pub(crate) rate: Option<f64>,
    /// Upper bound on the run's time.
    pub(crate) duration: Duration,
    /// Upper bound on readings over all publishers.
    pub(crate) max_messages: u64,
    pub(crate) shape: Shape,
}

/// Counters of a load run.
#[derive(Debug, Default)]
pub(crate) struct LoadStats {
    pub(crate) sent: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) errors: AtomicU64,
}

/// A running fleet of publishers; stopped (tasks aborted) when dropped.
#[derive(Debug)]
pub(crate) struct Fleet {
    pub(crate) stats: Arc<LoadStats>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Fleet {
    /// Connects every publisher (all CONNACKed), then starts publishing.
    pub(crate) async fn start(broker: SocketAddr, spec: &LoadSpec, tag: &str) -> Result<Self> {
        let stats = Arc::new(LoadStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        let mut clients = Vec::new();
        let mut connected = Vec::new();
        for k in 0..spec.publishers {
            let mut opts = MqttOptions::new(
                format!("bench-{tag}-{k}"),
                broker.ip().to_string(),
                broker.port(),
            );
            opts.set_keep_alive(Duration::from_secs(60))
                .set_clean_session(true)
                .set_inflight(100)
                .set_max_packet_size(1 << 16, 1 << 16);
            let (client, mut eventloop) = AsyncClient::new(opts, 256);
            let (tx, rx) = tokio::sync::oneshot::channel();
            let stats2 = stats.clone();
            let stop2 = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut tx = Some(tx);
                while !stop2.load(Ordering::Relaxed) {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            if let Some(tx) = tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            stats2.acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(_) => {
                            stats2.errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }));
            clients.push(client);
            connected.push(rx);
        }
        let all = futures::future::join_all(connected);
        tokio::time::timeout(Duration::from_secs(60), all)
            .await
            .context("publishers not connected within 60 s")?;
        let per_pub_max = spec.max_messages / spec.publishers as u64;
        let per_pub_rate = spec.rate.map(|r| r / spec.publishers as f64);
        for (k, client) in clients.into_iter().enumerate() {
            let stats = stats.clone();
            let stop = stop.clone();
            let spec = spec.clone();
            tasks.push(tokio::spawn(async move {
                publish_loop(k, client, spec, per_pub_max, per_pub_rate, stats, stop).await;
            }));
        }
        Ok(Self { stats, stop, tasks })
    }

    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn publish_loop(
    k: usize,
    client: AsyncClient,
    spec: LoadSpec,
    max: u64,
    rate: Option<f64>,
    stats: Arc<LoadStats>,
    stop: Arc<AtomicBool>,
) {
    let started = Instant::now();
    let deadline = started + spec.duration;
    let (topic, device) = match spec.shape {
        Shape::Live => (format!("sensors/b{k}/temperature"), format!("b{k}")),
        Shape::History { series, .. } => (
            format!("sensors/h{}/temperature", k % series),
            format!("h{}", k % series),
        ),
    };
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent: u64 = 0;
    let mut ts_cache = (i64::MIN, String::new());
    while sent < max && !stop.load(Ordering::Relaxed) {
        let due = match rate {
            Some(r) => {
                ticker.tick().await;
                let target = (started.elapsed().as_secs_f64() * r) as u64;
                target.saturating_sub(sent).min(max - sent)
            }
            None => 64.min(max - sent),
        };
        if Instant::now() >= deadline {
            break;
        }
        for _ in 0..due {
            let payload = match spec.shape {
                Shape::Live => {
                    let ms = unix_ms_now();
                    if ts_cache.0 != ms {
                        ts_cache = (ms, rfc3339_ms(ms));
                    }
                    format!(
                        r#"{{"deviceId":"{device}","value":{},"unit":"C","timestamp":"{}"}}"#,
                        now_us(),
                        ts_cache.1
                    )
                }
                Shape::History { series, t0_ms } => {
                    let per_series = (spec.publishers / series).max(1) as u64;
                    let slot = sent * per_series + (k / series) as u64;
                    let value = (slot % 400) as f64 / 10.0;
                    format!(
                        r#"{{"deviceId":"{device}","value":{value},"unit":"C","timestamp":"{}"}}"#,
                        rfc3339_ms(t0_ms + slot as i64 * 1000)
                    )
                }
            };
            if client
                .publish(topic.as_str(), spec.qos, false, payload)
                .await
                .is_err()
            {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            sent += 1;
            stats.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
    // No DISCONNECT here: it would overtake unacknowledged QoS1 publishes. The client stays
    // connected until the fleet is dropped.
    drop(client);
}

/// What a receiver saw; latencies are recorded only while `recording` is set.
#[derive(Debug, Default)]
pub(crate) struct Probe {
    pub(crate) count: AtomicU64,
    pub(crate) connected: AtomicU64,
    pub(crate) recording: AtomicBool,
    /// Only readings sent at or after this time (µs, [`now_us`]) are recorded.
    pub(crate) since_us: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
    /// For readings that carry the hub's `receivedAt`: (send -> hub receive, hub receive ->
    /// client receive), ms, wall clock.
    split_ms: Mutex<Vec<(i32, i32)>>,
}

impl Probe {
    fn record(&self, data: &[u8]) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if self.recording.load(Ordering::Relaxed) {
            if let Some(sent) = value_of(data) {
                if sent < self.since_us.load(Ordering::Relaxed) {
                    return;
                }
                let now = now_us();
                let lat = now.saturating_sub(sent);
                if let Ok(mut v) = self.latencies_us.lock() {
                    v.push(lat.min(u64::from(u32::MAX)) as u32);
                }
                if let Some(hub) = received_at_of(data) {
                    let to_hub = hub - wall_ms_of(sent);
                    let to_client = wall_ms_of(now) - hub;
                    if let Ok(mut v) = self.split_ms.lock() {
                        v.push((to_hub as i32, to_client as i32));
                    }
                }
            }
        }
    }

    /// Starts recording the latency of readings sent from now on.
    pub(crate) fn start_recording(&self) {
        self.since_us.store(now_us(), Ordering::Relaxed);
        self.recording.store(true, Ordering::Relaxed);
    }

    /// Takes the recorded (send -> hub, hub -> client) splits, ms.
    pub(crate) fn take_splits(&self) -> Vec<(i32, i32)> {
        self.split_ms
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    /// Takes the recorded latencies (µs).
    pub(crate) fn take_latencies(&self) -> Vec<u32> {
        self.latencies_us
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// The hub's `receivedAt` of a JSON reading, Unix ms.
fn received_at_of(data: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"receivedAt\":\"";
    let at = find(data, KEY)? + KEY.len();
    parse_rfc3339_ms(data.get(at..at + 24)?)
}

/// The integer part of the `"value":` field of a JSON reading.
fn value_of(data: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"value\":";
    let at = find(data, KEY)? + KEY.len();
    let digits = data[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |n, b| n * 10 + u64::from(b - b'0'));
    Some(digits)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A receiver task; aborted when dropped.
#[derive(Debug)]
pub(crate) struct Receiver {
    pub(crate) probe: Arc<Probe>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An MQTT subscriber on `sensors/#`.
pub(crate) async fn mqtt_subscriber(broker: SocketAddr, qos: QoS, tag: &str) -> Result<Receiver> {
    mqtt_watch(broker, qos, tag, "sensors/#").await
}

/// An MQTT subscriber on `filter`.
pub(crate) async fn mqtt_watch(
    broker: SocketAddr,
    qos: QoS,
    tag: &str,
    filter: &str,
) -> Result<Receiver> {
    let probe = Arc::new(Probe::default());
    let mut opts = MqttOptions::new(
        format!("bench-sub-{tag}"),
        broker.ip().to_string(),
        broker.port(),
    );
    opts.set_keep_alive(Duration::from_secs(60))
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 1 << 16);
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    client.subscribe(filter, qos).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let p = probe.clone();
    let task = tokio::spawn(async move {
        let _client = client;
        let mut tx = Some(tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(publish))) => p.record(&publish.payload),
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    p.connected.store(1, Ordering::Relaxed);
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .context("MQTT subscriber not subscribed within 10 s")??;
    Ok(Receiver { probe, task })
}

/// An SSE client on `/v1/stream?filter=sensors/%23`. Returns once the response headers arrived.
pub(crate) async fn sse_client(http: &reqwest::Client, base: &str) -> Result<Receiver> {
    let probe = Arc::new(Probe::default());
    let resp = http
        .get(format!("{base}/v1/stream?filter=sensors/%23"))
        .header("accept", "text/event-stream")
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("SSE: HTTP {}", resp.status());
    }
    probe.connected.store(1, Ordering::Relaxed);
    let p = probe.clone();
    let task = tokio::spawn(async move {
        let mut stream = resp.bytes_stream();
        let mut line: Vec<u8> = Vec::with_capacity(512);
        while let Some(Ok(chunk)) = stream.next().await {
            let mut rest: &[u8] = &chunk;
            while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&rest[..nl]);
                if line.starts_with(b"data: ") && find(&line, b"\"type\":\"reading\"").is_some() {
                    p.record(&line);
                }
                line.clear();
                rest = &rest[nl + 1..];
            }
            line.extend_from_slice(rest);
        }
    });
    Ok(Receiver { probe, task })
}

/// A WebSocket client on `/v1/ws` subscribed to `sensors/#`. Returns once `subscribed` arrived.
pub(crate) async fn ws_client(http_addr: SocketAddr) -> Result<Receiver> {
    ws_watch(http_addr, "sensors/#").await
}

/// A WebSocket client on `/v1/ws` subscribed to `filter`, with small buffers (tungstenite's
/// default read buffer is 128 KiB per connection, too much for thousands in one process).
/// Returns once `subscribed` arrived.
pub(crate) async fn ws_watch(http_addr: SocketAddr, filter: &str) -> Result<Receiver> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    use tokio_tungstenite::tungstenite::Message;
    let probe = Arc::new(Probe::default());
    let mut request = format!("ws://{http_addr}/v1/ws").into_client_request()?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "edgewatch.v1".parse()?);
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), true).await?;
    let subscribe = serde_json::json!({"type": "subscribe", "filter": filter}).to_string();
    ws.send(Message::text(subscribe)).await?;
    let subscribed = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(msg) = ws.next().await {
            if let Message::Text(t) = msg? {
                if t.as_str().contains("\"subscribed\"") {
                    return Ok(());
                }
            }
        }
        bail!("WebSocket closed before `subscribed`")
    })
    .await;
    subscribed.context("no `subscribed` within 30 s")??;
    probe.connected.store(1, Ordering::Relaxed);
    let p = probe.clone();
    let task = tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Text(t) => {
                    let b = t.as_bytes();
                    if find(b, b"\"type\":\"reading\"").is_some() {
                        p.record(b);
                    }
                }
                Message::Ping(data) => {
                    let _ = ws.send(Message::Pong(data)).await;
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    });
    Ok(Receiver { probe, task })
}

/// The MQTT remaining-length varint of `n`, appended to `out`.
fn put_remaining_length(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

/// A length-prefixed MQTT string.
fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// An MQTT 3.1.1 CONNECT with a clean session and a 60 s keep-alive.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + client_id.len());
    put_str(&mut body, b"MQTT");
    body.push(4); // protocol level 3.1.1
    body.push(0x02); // clean session
    body.extend_from_slice(&60u16.to_be_bytes());
    put_str(&mut body, client_id.as_bytes());
    let mut out = vec![0x10];
    put_remaining_length(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// An MQTT QoS 0 PUBLISH of `payload` to `topic`, written into `out` (cleared first).
fn publish_packet(out: &mut Vec<u8>, topic: &str, payload: &[u8]) {
    out.clear();
    out.push(0x30);
    put_remaining_length(out, 2 + topic.len() + payload.len());
    put_str(out, topic.as_bytes());
    out.extend_from_slice(payload);
}

/// One device of a [`DeviceFleet`]: its connection and topic.
struct Device {
    tcp: tokio::net::TcpStream,
    topic: String,
    id: String,
}

/// Devices that each publish QoS 0 readings to `sensors/d{k}/temperature` at a fixed rate,
/// spread evenly in time: reading `i` of the whole fleet is due at `i / (devices * rate)` s
/// and comes from device `i % devices`. One task drives every connection over raw MQTT 3.1.1
/// (a CONNECT, then PUBLISH packets), so the generator costs little CPU next to the hub on a
/// small machine, and each reading's `value` (the send time, µs) is taken right before its
/// packet is written to the socket. Stopped when dropped.
#[derive(Debug)]
pub(crate) struct DeviceFleet {
    pub(crate) stats: Arc<LoadStats>,
    task: JoinHandle<()>,
}

impl Drop for DeviceFleet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DeviceFleet {
    /// Connects `devices` devices (each CONNACKed); publishing starts when [`Self::run`] is
    /// called.
    pub(crate) async fn connect(
        broker: SocketAddr,
        devices: usize,
        tag: &str,
    ) -> Result<Vec<DeviceConn>> {
        let conns: Vec<Result<DeviceConn>> = futures::stream::iter(0..devices)
            .map(|k| async move {
                let mut tcp = tokio::net::TcpStream::connect(broker).await?;
                tcp.set_nodelay(true)?;
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                tcp.write_all(&connect_packet(&format!("bench-{tag}-d{k}")))
                    .await?;
                let mut connack = [0u8; 4];
                tokio::time::timeout(Duration::from_secs(30), tcp.read_exact(&mut connack))
                    .await
                    .context("no CONNACK within 30 s")??;
                if connack[0] != 0x20 || connack[3] != 0 {
                    bail!("device d{k}: CONNACK refused: {connack:?}");
                }
                Ok(DeviceConn(Device {
                    tcp,
                    topic: format!("sensors/d{k}/temperature"),
                    id: format!("d{k}"),
                }))
            })
            .buffered(64)
            .collect()
            .await;
        conns.into_iter().collect()
    }

    /// Starts publishing `per_device_rate` readings/s from each of `devices` for at most
    /// `duration`.
    pub(crate) fn run(devices: Vec<DeviceConn>, per_device_rate: f64, duration: Duration) -> Self {
        let stats = Arc::new(LoadStats::default());
        let stats2 = stats.clone();
        let task = tokio::spawn(async move {
            drive_devices(devices, per_device_rate, duration, &stats2).await;
        });
        Self { stats, task }
    }
}

/// A connected device, ready to publish.
#[derive(Debug)]
pub(crate) struct DeviceConn(Device);

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("topic", &self.topic)
            .finish()
    }
}

async fn drive_devices(
    mut devices: Vec<DeviceConn>,
    per_device_rate: f64,
    duration: Duration,
    stats: &LoadStats,
) {
    use tokio::io::AsyncWriteExt;
    if devices.is_empty() {
        return;
    }
    let n_devices = devices.len() as u64;
    let total_rate = per_device_rate * n_devices as f64;
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut next_ping = started + Duration::from_secs(30);
    let mut sent: u64 = 0;
    let mut packet = Vec::with_capacity(256);
    let mut payload = String::with_capacity(160);
    let mut ts_cache = (i64::MIN, String::new());
    loop {
        ticker.tick().await;
        let elapsed = started.elapsed();
        if elapsed >= duration {
            return;
        }
        if Instant::now() >= next_ping {
            next_ping += Duration::from_secs(30);
            for d in &mut devices {
                if d.0.tcp.write_all(&[0xC0, 0x00]).await.is_err() {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let due = (elapsed.as_secs_f64() * total_rate) as u64;
        while sent < due {
            let d = &mut devices[(sent % n_devices) as usize].0;
            let ms = unix_ms_now();
            if ts_cache.0 != ms {
                ts_cache = (ms, rfc3339_ms(ms));
            }
            payload.clear();
            use std::fmt::Write as _;
            let _ = write!(
                payload,
                r#"{{"deviceId":"{}","value":{},"unit":"C","timestamp":"{}"}}"#,
                d.id,
                now_us(),
                ts_cache.1
            );
            publish_packet(&mut packet, &d.topic, payload.as_bytes());
            // Small packets almost always fit the socket buffer: no await in the common case.
            let written = match d.tcp.try_write(&packet) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(_) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    sent += 1;
                    continue;
                }
            };
            if written < packet.len() && d.tcp.write_all(&packet[written..]).await.is_err() {
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            sent += 1;
            stats.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Splits a chunked HTTP/1.1 body into lines (without `\n` or a trailing `\r`).
#[derive(Debug, Default)]
struct ChunkedLines {
    /// Bytes left in the current chunk; `None` while reading a chunk-size line.
    remaining: Option<usize>,
    /// Bytes of `\r\n` still to skip after a chunk's data.
    skip: usize,
    size_line: Vec<u8>,
    line: Vec<u8>,
}

impl ChunkedLines {
    /// Feeds body bytes; calls `on_line` for every complete line of the decoded data.
    fn feed(&mut self, mut data: &[u8], on_line: &mut impl FnMut(&[u8])) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            match self.remaining {
                None => {
                    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                        self.size_line.extend_from_slice(data);
                        return;
                    };
                    self.size_line.extend_from_slice(&data[..nl]);
                    data = &data[nl + 1..];
                    let hex: Vec<u8> = self
                        .size_line
                        .iter()
                        .copied()
                        .take_while(u8::is_ascii_hexdigit)
                        .collect();
                    self.size_line.clear();
                    let size = std::str::from_utf8(&hex)
                        .ok()
                        .and_then(|h| usize::from_str_radix(h, 16).ok())
                        .unwrap_or(0);
                    self.remaining = Some(size);
                }
                Some(0) => {
                    // End of a chunk: its CRLF follows.
                    self.remaining = None;
                    self.skip = 2;
                }
                Some(left) => {
                    let n = left.min(data.len());
                    self.lines(&data[..n], on_line);
                    self.remaining = Some(left - n);
                    data = &data[n..];
                }
            }
        }
    }

    fn lines(&mut self, mut data: &[u8], on_line: &mut impl FnMut(&[u8])) {
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&data[..nl]);
            let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
            on_line(line);
            self.line.clear();
            data = &data[nl + 1..];
        }
        self.line.extend_from_slice(data);
    }
}

/// Percent-encodes the characters of a topic filter that are special in a query string.
pub(crate) fn encode_filter(filter: &str) -> String {
    filter.replace('#', "%23").replace('+', "%2B")
}

/// A lean SSE client on `/v1/stream?filter=..` over a plain TCP connection (one HTTP/1.1
/// request, chunked body decoded here): cheap enough to run thousands next to the hub.
/// Returns once the response head arrived.
pub(crate) async fn sse_watch(http_addr: SocketAddr, filter: &str) -> Result<Receiver> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = Arc::new(Probe::default());
    let mut tcp = tokio::net::TcpStream::connect(http_addr).await?;
    tcp.set_nodelay(true)?;
    let request = format!(
        "GET /v1/stream?filter={} HTTP/1.1\r\nHost: {http_addr}\r\nAccept: text/event-stream\r\n\r\n",
        encode_filter(filter)
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(512);
    let mut buf = vec![0u8; 2048];
    let body_start = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n = tcp.read(&mut buf).await?;
            if n == 0 {
                bail!("SSE: connection closed before the response head");
            }
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = find(&head, b"\r\n\r\n") {
                return Ok(end + 4);
            }
            if head.len() > 16 * 1024 {
                bail!("SSE: response head over 16 KiB");
            }
        }
    })
    .await
    .context("SSE: no response head within 30 s")??;
    if !head.starts_with(b"HTTP/1.1 200") {
        let status = String::from_utf8_lossy(&head[..head.len().min(40)]).into_owned();
        bail!("SSE: {status}");
    }
    let chunked = find(&head.to_ascii_lowercase(), b"transfer-encoding: chunked").is_some();
    probe.connected.store(1, Ordering::Relaxed);
    let p = probe.clone();
    let task = tokio::spawn(async move {
        let mut on_line = |line: &[u8]| {
            if line.starts_with(b"data: ") && find(line, b"\"type\":\"reading\"").is_some() {
                p.record(line);
            }
        };
        let mut decoder = ChunkedLines::default();
        let mut feed = |data: &[u8], decoder: &mut ChunkedLines| {
            if chunked {
                decoder.feed(data, &mut on_line);
            } else {
                decoder.lines(data, &mut on_line);
            }
        };
        feed(&head[body_start..], &mut decoder);
        drop(head);
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => feed(&buf[..n], &mut decoder),
            }
        }
    });
    Ok(Receiver { probe, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_860_000_123), "2026-11-28T10:00:00.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn parses_the_hubs_receive_time() {
        assert_eq!(parse_rfc3339_ms(b"1970-01-01T00:00:01.234Z"), Some(1234));
        assert_eq!(
            parse_rfc3339_ms(b"2026-11-29T12:00:00.123Z"),
            Some(1_795_953_600_123)
        );
        assert_eq!(
            parse_rfc3339_ms(b"2024-02-29T23:59:59.999Z"),
            Some(1_709_251_199_999)
        );
        assert_eq!(parse_rfc3339_ms(b"2024-02-29T23:59"), None);
        let msg = br#"{"type":"reading","value":5,"receivedAt":"2026-11-29T12:00:00.123Z"}"#;
        assert_eq!(received_at_of(msg), Some(1_795_953_600_123));
        for ms in [0, 951_782_400_000, 1_795_860_000_123] {
            assert_eq!(parse_rfc3339_ms(rfc3339_ms(ms).as_bytes()), Some(ms));
        }
    }

    #[test]
    fn reads_value() {
        assert_eq!(value_of(br#"{"a":1,"value":12345,"x":2}"#), Some(12345));
        assert_eq!(value_of(br#"{"value":987.0}"#), Some(987));
        assert_eq!(value_of(b"{}"), None);
    }

    #[test]
    fn mqtt_remaining_length() {
        let enc = |n| {
            let mut v = Vec::new();
            put_remaining_length(&mut v, n);
            v
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x80, 0x01]);
        assert_eq!(enc(16_383), [0xff, 0x7f]);
        assert_eq!(enc(16_384), [0x80, 0x80, 0x01]);
        let mut p = Vec::new();
        publish_packet(&mut p, "a/b", b"12");
        assert_eq!(p, [0x30, 7, 0, 3, b'a', b'/', b'b', b'1', b'2']);
    }

    #[test]
    fn chunked_lines_survive_any_split() {
        let body = b"1c\r\nretry: 2000\r\n: edgewatch\r\n\r\n\r\n2f\r\nevent: reading\ndata: {\"type\":\"reading\"}\nid: 7\n\n\r\n0\r\n\r\n";
        let mut want = Vec::new();
        let mut whole = ChunkedLines::default();
        whole.feed(body, &mut |l: &[u8]| want.push(l.to_vec()));
        assert_eq!(
            want,
            [
                &b"retry: 2000"[..],
                b": edgewatch",
                b"",
                b"event: reading",
                b"data: {\"type\":\"reading\"}",
                b"id: 7",
                b""
            ]
        );
        for cut in 0..body.len() {
            let mut got = Vec::new();
            let mut d = ChunkedLines::default();
            d.feed(&body[..cut], &mut |l: &[u8]| got.push(l.to_vec()));
            d.feed(&body[cut..], &mut |l: &[u8]| got.push(l.to_vec()));
            assert_eq!(got, want, "split at {cut}");
        }
    }
}
