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

static CLOCK: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the harness started.
pub(crate) fn now_us() -> u64 {
    CLOCK.get_or_init(Instant::now).elapsed().as_micros() as u64
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
}

impl Probe {
    fn record(&self, data: &[u8]) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if self.recording.load(Ordering::Relaxed) {
            if let Some(sent) = value_of(data) {
                if sent < self.since_us.load(Ordering::Relaxed) {
                    return;
                }
                let lat = now_us().saturating_sub(sent);
                if let Ok(mut v) = self.latencies_us.lock() {
                    v.push(lat.min(u64::from(u32::MAX)) as u32);
                }
            }
        }
    }

    /// Starts recording the latency of readings sent from now on.
    pub(crate) fn start_recording(&self) {
        self.since_us.store(now_us(), Ordering::Relaxed);
        self.recording.store(true, Ordering::Relaxed);
    }

    /// Takes the recorded latencies (µs).
    pub(crate) fn take_latencies(&self) -> Vec<u32> {
        self.latencies_us
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
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
    client.subscribe("sensors/#", qos).await?;
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
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let probe = Arc::new(Probe::default());
    let mut request = format!("ws://{http_addr}/v1/ws").into_client_request()?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "edgewatch.v1".parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
    ws.send(Message::text(
        r#"{"type":"subscribe","filter":"sensors/#"}"#,
    ))
    .await?;
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
    fn reads_value() {
        assert_eq!(value_of(br#"{"a":1,"value":12345,"x":2}"#), Some(12345));
        assert_eq!(value_of(br#"{"value":987.0}"#), Some(987));
        assert_eq!(value_of(b"{}"), None);
    }
}
