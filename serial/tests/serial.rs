//! The serial reader against the emulated serial sensor on a real pseudo-terminal: both
//! formats, garbage and oversize frames, a port missing at start, an unplug and replug on the
//! same path (a symlink, re-pointed to the new pty), publish failures and cancellation.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgewatch_serial::{run_serial, SerialFormat, SerialPortConfig, SerialPublish, SerialStats};
use edgewatch_sim::{spawn_serial_emulator, Faults, SerialConfig, SerialEmulator};
use edgewatch_testkit::{init_logs, wait_until};
use futures::FutureExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest wait for anything the emulator should deliver.
const WAIT: Duration = Duration::from_secs(10);
/// How quickly the reader must end after its stop token is cancelled.
const STOP_LIMIT: Duration = Duration::from_secs(2);

type Published = mpsc::UnboundedReceiver<(String, Bytes)>;

fn emulator(
    device_id: &str,
    format: edgewatch_sim::SerialFormat,
    metrics: &[&str],
    garbage_every: Option<u32>,
) -> SerialEmulator {
    spawn_serial_emulator(SerialConfig {
        device_id: device_id.to_owned(),
        metrics: metrics.iter().map(|m| (*m).to_owned()).collect(),
        format,
        interval: Duration::from_millis(20),
        faults: Faults {
            enabled: false,
            ..Faults::default()
        },
        garbage_every,
        ..SerialConfig::default()
    })
    .expect("spawn serial emulator")
}

/// A publish function that sends every publish into a channel.
fn collector() -> (SerialPublish, Published) {
    let (tx, rx) = mpsc::unbounded_channel();
    let publish: SerialPublish = Arc::new(move |topic, payload| {
        let sent = tx
            .send((topic, payload))
            .map_err(|_| "receiver gone".to_owned());
        async move { sent }.boxed()
    });
    (publish, rx)
}

struct Running {
    task: JoinHandle<()>,
    stats: Arc<SerialStats>,
    stop: CancellationToken,
}

impl Running {
    /// Cancels the reader and checks it ends within [`STOP_LIMIT`].
    async fn stop(self) -> Arc<SerialStats> {
        self.stop.cancel();
        tokio::time::timeout(STOP_LIMIT, self.task)
            .await
            .expect("reader did not stop in time")
            .expect("reader task panicked");
        self.stats
    }
}

fn start(cfg: SerialPortConfig, publish: SerialPublish) -> Running {
    let stats = Arc::new(SerialStats::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_serial(cfg, publish, stats.clone(), stop.clone()));
    Running { task, stats, stop }
}

fn port(path: &Path, device_id: &str, format: SerialFormat) -> SerialPortConfig {
    SerialPortConfig {
        format,
        reopen_delay_ms: 50,
        ..SerialPortConfig::new(path, device_id)
    }
}

async fn next_publish(rx: &mut Published) -> (String, Value) {
    let (topic, payload) = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("no publish in time")
        .expect("publish channel closed");
    let json = serde_json::from_slice(&payload).expect("payload is JSON");
    (topic, json)
}

/// The next `n` publishes.
async fn publishes(rx: &mut Published, n: usize) -> Vec<(String, Value)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next_publish(rx).await);
    }
    out
}

/// Skips publishes until one for `device_id` arrives.
async fn publish_from(rx: &mut Published, device_id: &str) -> (String, Value) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (topic, payload) = tokio::time::timeout(left, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no publish from {device_id} in time"))
            .expect("publish channel closed");
        if topic.starts_with(&format!("sensors/{device_id}/")) {
            return (
                topic,
                serde_json::from_slice(&payload).expect("payload is JSON"),
            );
        }
    }
}

/// Checks a reading's topic and payload: device, metric, unit and a number value.
fn check_reading(topic: &str, payload: &Value, device_id: &str, with_timestamp: bool) {
    let metric = topic
        .strip_prefix(&format!("sensors/{device_id}/"))
        .unwrap_or_else(|| panic!("unexpected topic {topic}"));
    let unit = match metric {
        "temperature" => "C",
        "humidity" => "%",
        other => panic!("unexpected metric {other} in {topic}"),
    };
    assert_eq!(payload["deviceId"], device_id, "{payload}");
    assert!(
        payload["value"].is_f64() || payload["value"].is_i64(),
        "{payload}"
    );
    assert_eq!(payload["unit"], unit, "{payload}");
    let fields = payload.as_object().expect("payload is an object").len();
    if with_timestamp {
        let ts = payload["timestamp"].as_str().expect("timestamp string");
        let ms = edgewatch_protocol::timefmt::parse_time(ts).expect("RFC 3339 timestamp");
        let age = edgewatch_protocol::timefmt::now_ms() - ms;
        assert!((0..60_000).contains(&age), "timestamp {ts} is {age} ms old");
        assert_eq!(fields, 4, "{payload}");
    } else {
        assert_eq!(fields, 3, "{payload}");
    }
}

fn symlink_to(link: &Path, target: &Path) {
    // Replace atomically: a new link next to it, renamed over the old one.
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("create symlink");
    std::fs::rename(&tmp, link).expect("rename symlink");
}

#[tokio::test]
async fn cobs_frames_are_published() {
    init_logs();
    let emu = emulator(
        "serial-7",
        edgewatch_sim::SerialFormat::Cobs,
        &["temperature", "humidity"],
        None,
    );
    let (publish, mut rx) = collector();
    // The frames carry their device id; the port's is only a fallback.
    let reader = start(port(emu.path(), "fallback", SerialFormat::Cobs), publish);
    let got = publishes(&mut rx, 10).await;
    for (topic, payload) in &got {
        check_reading(topic, payload, "serial-7", true);
    }
    assert!(got.iter().any(|(t, _)| t.ends_with("/temperature")));
    assert!(got.iter().any(|(t, _)| t.ends_with("/humidity")));
    assert!(reader.stats.connected());
    let stats = reader.stop().await.snapshot();
    assert!(stats.frames_ok >= 10 && stats.published >= 10, "{stats:?}");
    assert_eq!((stats.publish_errors, stats.reopens), (0, 0), "{stats:?}");
    assert!(stats.errors.is_empty(), "{stats:?}");
    assert!(!stats.connected);
}

#[tokio::test]
async fn lines_are_published_with_the_ports_device_id() {
    init_logs();
    let emu = emulator(
        "ignored",
        edgewatch_sim::SerialFormat::Lines,
        &["temperature", "humidity"],
        None,
    );
    let (publish, mut rx) = collector();
    let reader = start(port(emu.path(), "bench-1", SerialFormat::Lines), publish);
    let got = publishes(&mut rx, 10).await;
    for (topic, payload) in &got {
        // Text lines have no time: the hub uses the receive time.
        check_reading(topic, payload, "bench-1", false);
    }
    let stats = reader.stop().await.snapshot();
    assert!(stats.errors.is_empty(), "{stats:?}");
    assert!(stats.published >= 10, "{stats:?}");
}

#[tokio::test]
async fn garbage_is_counted_and_good_readings_still_arrive() {
    init_logs();
    for (format, emu_format, with_timestamp) in [
        (SerialFormat::Cobs, edgewatch_sim::SerialFormat::Cobs, true),
        (
            SerialFormat::Lines,
            edgewatch_sim::SerialFormat::Lines,
            false,
        ),
    ] {
        let emu = emulator("noisy", emu_format, &["temperature", "humidity"], Some(3));
        let (publish, mut rx) = collector();
        let reader = start(port(emu.path(), "noisy", format), publish);
        let got = publishes(&mut rx, 20).await;
        for (topic, payload) in &got {
            check_reading(topic, payload, "noisy", with_timestamp);
        }
        let stats = reader.stats.clone();
        wait_until(WAIT, "garbage to be counted", || stats.error_total() >= 4).await;
        let injected = emu.counts().injected;
        let stats = reader.stop().await.snapshot();
        assert!(injected >= 4, "{injected}");
        assert!(stats.published >= 20, "{stats:?}");
        // Every injected piece is one skipped frame or line (a truncated frame ends at the
        // delimiter the emulator writes after it), and nothing else is skipped.
        let errors: u64 = stats.errors.values().sum();
        assert!(
            errors <= injected,
            "{errors} errors, {injected} injected: {stats:?}"
        );
        let reasons: Vec<&str> = stats.errors.keys().copied().collect();
        let allowed: &[&str] = match format {
            SerialFormat::Cobs => &[
                "invalid_cobs",
                "bad_checksum",
                "invalid_postcard",
                "invalid_reading",
            ],
            SerialFormat::Lines => &[
                "invalid_utf8",
                "missing_equals",
                "invalid_metric",
                "invalid_value",
                "non_finite_value",
            ],
        };
        assert!(
            reasons.iter().all(|r| allowed.contains(r)),
            "{format}: {reasons:?}"
        );
    }
}

#[tokio::test]
async fn oversize_frames_are_skipped() {
    init_logs();
    // Frames with a 60-character metric are about 100 bytes, temperature frames about 40.
    let long_metric = "m".repeat(60);
    let emu = emulator(
        "s1",
        edgewatch_sim::SerialFormat::Cobs,
        &["temperature", &long_metric],
        None,
    );
    let (publish, mut rx) = collector();
    let cfg = SerialPortConfig {
        max_frame_len: 64,
        ..port(emu.path(), "s1", SerialFormat::Cobs)
    };
    let reader = start(cfg, publish);
    for (topic, payload) in publishes(&mut rx, 5).await {
        check_reading(&topic, &payload, "s1", true);
    }
    let stats = reader.stats.clone();
    wait_until(WAIT, "oversize frames to be counted", || {
        stats.errors().get("too_long").copied().unwrap_or(0) >= 3
    })
    .await;
    let stats = reader.stop().await.snapshot();
    assert_eq!(
        stats.errors.keys().copied().collect::<Vec<_>>(),
        ["too_long"]
    );
}

#[tokio::test]
async fn unplug_and_replug_on_the_same_path() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyEMU0");
    let first = emulator(
        "first",
        edgewatch_sim::SerialFormat::Cobs,
        &["temperature", "humidity"],
        None,
    );
    symlink_to(&link, first.path());
    let (publish, mut rx) = collector();
    let reader = start(port(&link, "fallback", SerialFormat::Cobs), publish);
    let (topic, payload) = publish_from(&mut rx, "first").await;
    check_reading(&topic, &payload, "first", true);
    assert!(reader.stats.connected());

    // Unplug: the pty goes away; the reader sees EIO or end of file.
    drop(first);
    let stats = reader.stats.clone();
    wait_until(WAIT, "the reader to notice the unplug", || {
        !stats.connected()
    })
    .await;
    // The port stays away for a while: the reader keeps retrying without delivering anything.
    // A window for what must not happen (a delivery or a reconnect): there is no event to wait
    // for instead.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stats.connected());
    while let Ok((topic, _)) = rx.try_recv() {
        assert!(topic.starts_with("sensors/first/"), "{topic}");
    }
    assert_eq!(stats.reopens(), 0);

    // Replug: a new pty (maybe another /dev/pts number) behind the same path.
    let second = emulator(
        "second",
        edgewatch_sim::SerialFormat::Cobs,
        &["temperature", "humidity"],
        None,
    );
    symlink_to(&link, second.path());
    for _ in 0..5 {
        let (topic, payload) = publish_from(&mut rx, "second").await;
        check_reading(&topic, &payload, "second", true);
    }
    assert!(stats.connected());
    let stats = reader.stop().await.snapshot();
    assert_eq!(stats.reopens, 1, "{stats:?}");
    drop(second);
}

#[tokio::test]
async fn port_missing_at_start_is_waited_for() {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyLATE");
    let (publish, mut rx) = collector();
    let reader = start(port(&link, "late", SerialFormat::Lines), publish);
    // A window for what must not happen: no connection, no reading while the port is missing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!reader.stats.connected());
    assert!(rx.try_recv().is_err());

    let emu = emulator(
        "late",
        edgewatch_sim::SerialFormat::Lines,
        &["temperature", "humidity"],
        None,
    );
    symlink_to(&link, emu.path());
    let (topic, payload) = next_publish(&mut rx).await;
    check_reading(&topic, &payload, "late", false);
    let stats = reader.stop().await.snapshot();
    // The first open is not a reopen.
    assert_eq!(stats.reopens, 0, "{stats:?}");
}

#[tokio::test]
async fn publish_failures_are_counted_and_reading_goes_on() {
    init_logs();
    let emu = emulator(
        "s2",
        edgewatch_sim::SerialFormat::Cobs,
        &["temperature", "humidity"],
        None,
    );
    let publish: SerialPublish =
        Arc::new(|_, _| async { Err("broker is down".to_owned()) }.boxed());
    let reader = start(port(emu.path(), "s2", SerialFormat::Cobs), publish);
    let stats = reader.stats.clone();
    wait_until(WAIT, "failed publishes", || stats.publish_errors() >= 10).await;
    let stats = reader.stop().await.snapshot();
    assert_eq!(stats.published, 0);
    assert!(stats.frames_ok >= 10, "{stats:?}");
}

#[tokio::test]
async fn cancellation_stops_the_reader_promptly() {
    init_logs();
    // While reading.
    let emu = emulator(
        "s3",
        edgewatch_sim::SerialFormat::Cobs,
        &["temperature"],
        None,
    );
    let (publish, mut rx) = collector();
    let reader = start(port(emu.path(), "s3", SerialFormat::Cobs), publish);
    next_publish(&mut rx).await;
    reader.stop().await;

    // While a publish never completes.
    let stuck: SerialPublish = Arc::new(|_, _| futures::future::pending().boxed());
    let reader = start(port(emu.path(), "s3", SerialFormat::Cobs), stuck);
    let stats = reader.stats.clone();
    wait_until(WAIT, "a decoded frame", || stats.frames_ok() >= 1).await;
    reader.stop().await;

    // While waiting to reopen a missing port, with a long delay.
    let cfg = SerialPortConfig {
        reopen_delay_ms: 60_000,
        ..port(
            &PathBuf::from("/nonexistent/ttyUSB9"),
            "s3",
            SerialFormat::Cobs,
        )
    };
    let (publish, _rx) = collector();
    let reader = start(cfg, publish);
    // Time for the first open to fail, so that the stop lands in the 60 s reopen delay (a
    // failed open is logged, not counted: nothing to wait for instead).
    tokio::time::sleep(Duration::from_millis(100)).await;
    reader.stop().await;
}
