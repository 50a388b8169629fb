//! The serial reader: sensors on a (USB) serial port, published into the broker like any device.
//!
//! This is the only module that names `tokio-serial`.
//!
//! # Formats
//! Each port is configured ([`SerialPortConfig`], one `[[serial]]` entry of the config file)
//! with one of two formats, both defined in [`edgewatch_protocol::frame`]:
//! * [`SerialFormat::Cobs`]: postcard-encoded [`CompactReading`]s, COBS-encoded and ended by a
//!   0x00 byte. A frame that carries no `device_id` gets the port's `device_id`; a frame
//!   without a `metric` is rejected.
//! * [`SerialFormat::Lines`]: `metric=value [unit]` text lines ending in `\n`, e.g.
//!   `temperature=21.5 C`; the device is the port's `device_id`.
//!
//! # Flow
//! [`run_serial`] opens the port (the configured baud, 8 data bits, no parity, one stop bit, no
//! flow control), feeds what it reads into a [`FrameDecoder`] or [`LineDecoder`] and turns each
//! reading into an MQTT publish with [`to_publish`]: topic `sensors/{deviceId}/{metric}`,
//! JSON payload `{"deviceId":..,"value":..,"unit":..,"timestamp":..}` (`unit` and the RFC 3339
//! `timestamp` only when the reading has them; without a timestamp the hub uses the receive
//! time). The publish goes through the caller's [`SerialPublish`], normally the embedded
//! broker's in-process publisher, so a serial reading is stored, fanned out and forwarded
//! exactly like one a device published over MQTT. Publishes are awaited one at a time: a slow
//! broker slows the reader down and the port's buffer (then the device) absorbs it.
//!
//! # Failures
//! * Garbage, truncated and oversize frames (and lines that do not parse) are skipped; the
//!   decoder resynchronises at the next delimiter. Each is counted by reason
//!   ([`FrameError::reason`], plus `invalid_reading` for a decoded frame that cannot be
//!   published, e.g. without a metric) in [`SerialStats`] and logged at most once per reason
//!   per [`LOG_INTERVAL`], with the number of suppressed repeats.
//! * A failed publish is counted ([`SerialStatsSnapshot::publish_errors`]), logged the same
//!   rate-limited way, and the reading is dropped; the reader goes on.
//! * When the port disappears (USB unplug: a read error or end of file) or cannot be opened,
//!   the reader logs it once and tries to (re)open the same path after `reopen_delay_ms`,
//!   doubling the delay after each failed attempt up to [`MAX_REOPEN_DELAY`] (or
//!   `reopen_delay_ms` if that is longer). When the port is back it logs that and resumes with
//!   a fresh decoder; bytes of a frame cut by the unplug are lost. A port that opens but fails
//!   again before delivering a byte counts as a failed attempt, so a flapping device is
//!   retried with the growing delay and not logged each time.
//! * Cancelling the stop token ends [`run_serial`] promptly, also in the middle of a read, a
//!   publish or a reopen delay.
//!
//! Everything the reader logs is inside a `serial` span with the port path and device id.

use edgewatch_protocol::InvalidSetting;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgewatch_protocol::frame::{FrameDecoder, FrameError, LineDecoder, TextReading};
use edgewatch_protocol::payload::{is_valid_id, CompactReading};
use edgewatch_protocol::timefmt::format_rfc3339;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio_serial::{DataBits, FlowControl, Parity, SerialPortBuilderExt, SerialStream, StopBits};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

/// Publishes one reading into the broker: `(topic, payload)`. An `Err` is counted and logged,
/// and the reading dropped.
pub type SerialPublish =
    Arc<dyn Fn(String, Bytes) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The longest wait between two attempts to reopen a port, unless `reopen_delay_ms` is longer.
pub const MAX_REOPEN_DELAY: Duration = Duration::from_secs(10);

/// At most one warning per rejection reason (and for publish failures) in this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Bytes read from the port at once.
const READ_CHUNK: usize = 4096;

/// The error reason of a decoded frame that cannot be published (no metric, invalid id, ...).
const INVALID_READING: &str = "invalid_reading";

/// The reason under which failed publishes are rate-limited in the log.
const PUBLISH_FAILED: &str = "publish_failed";

/// How readings are framed on the port.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SerialFormat {
    /// postcard + COBS frames, each ending in 0x00.
    #[default]
    Cobs,
    /// `metric=value [unit]` text lines ending in `\n`.
    Lines,
}

impl fmt::Display for SerialFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SerialFormat::Cobs => "cobs",
            SerialFormat::Lines => "lines",
        })
    }
}

/// One serial port, a `[[serial]]` entry of the config file. `path` and `device_id` are
/// required; the rest have defaults; unknown fields are an error.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SerialPortConfig {
    /// The device, e.g. `/dev/ttyUSB0` (or a stable `/dev/serial/by-id/...` link).
    pub path: PathBuf,
    /// Baud rate; the line is always 8N1 without flow control. Default 115200.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// `cobs` or `lines`. Default `cobs`.
    #[serde(default)]
    pub format: SerialFormat,
    /// The device id of text lines, and of COBS frames that carry none.
    pub device_id: String,
    /// Longest frame (encoded, without the 0x00) or line (without the `\n`) in bytes; longer
    /// ones are skipped as `too_long`. Default 1024.
    #[serde(default = "default_max_frame_len")]
    pub max_frame_len: usize,
    /// Milliseconds before trying to reopen a port that disappeared or failed to open; doubled
    /// after each failed attempt up to 10 s. Default 1000.
    #[serde(default = "default_reopen_delay_ms")]
    pub reopen_delay_ms: u64,
}

fn default_baud() -> u32 {
    115_200
}

fn default_max_frame_len() -> usize {
    1024
}

fn default_reopen_delay_ms() -> u64 {
    1000
}

impl SerialPortConfig {
    /// A port at `path` for `device_id`, every other setting at its default.
    pub fn new(path: impl Into<PathBuf>, device_id: impl Into<String>) -> Self {
        SerialPortConfig {
            path: path.into(),
            baud: default_baud(),
            format: SerialFormat::default(),
            device_id: device_id.into(),
            max_frame_len: default_max_frame_len(),
            reopen_delay_ms: default_reopen_delay_ms(),
        }
    }

    /// Checks what serde cannot. `index` is the entry's position in the `[[serial]]` list; the
    /// error starts with the key, e.g. `serial[0].baud: must be above 0`.
    pub fn validate(&self, index: usize) -> Result<(), InvalidSetting> {
        let key = |field: &str| format!("serial[{index}].{field}");
        let err = |field: &str, message: String| Err(InvalidSetting::new(key(field), message));
        if self.path.as_os_str().is_empty() {
            return err("path", "must not be empty".to_owned());
        }
        if self.path.to_str().is_none() {
            return err("path", "must be valid UTF-8".to_owned());
        }
        if self.baud == 0 {
            return err("baud", "must be above 0".to_owned());
        }
        if !is_valid_id(&self.device_id) {
            return err(
                "device_id",
                format!(
                    "invalid device id {:?}: must be 1 to 64 characters of A-Z a-z 0-9 _ . : -",
                    self.device_id
                ),
            );
        }
        if !(16..=1_048_576).contains(&self.max_frame_len) {
            return err(
                "max_frame_len",
                "must be between 16 and 1048576 bytes".to_owned(),
            );
        }
        if !(10..=3_600_000).contains(&self.reopen_delay_ms) {
            return err(
                "reopen_delay_ms",
                "must be between 10 and 3600000 milliseconds".to_owned(),
            );
        }
        Ok(())
    }

    fn reopen_delay(&self) -> Duration {
        Duration::from_millis(self.reopen_delay_ms)
    }
}

/// Counters of one port's reader, shared with whoever reports them (metrics, health).
#[derive(Debug, Default)]
pub struct SerialStats {
    frames_ok: AtomicU64,
    published: AtomicU64,
    publish_errors: AtomicU64,
    reopens: AtomicU64,
    connected: AtomicBool,
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

/// A copy of [`SerialStats`] at one moment.
#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SerialStatsSnapshot {
    /// Frames or lines that decoded to a publishable reading.
    pub frames_ok: u64,
    /// Readings the publish function accepted.
    pub published: u64,
    /// Readings the publish function failed (dropped).
    pub publish_errors: u64,
    /// Times the port was opened again after it disappeared.
    pub reopens: u64,
    /// Whether the port is open now.
    pub connected: bool,
    /// Skipped frames or lines by reason (`invalid_cobs`, `too_long`, `invalid_reading`, ...).
    pub errors: BTreeMap<&'static str, u64>,
}

impl SerialStats {
    /// Frames or lines that decoded to a publishable reading.
    pub fn frames_ok(&self) -> u64 {
        self.frames_ok.load(Ordering::Relaxed)
    }

    /// Readings the publish function accepted.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Readings the publish function failed.
    pub fn publish_errors(&self) -> u64 {
        self.publish_errors.load(Ordering::Relaxed)
    }

    /// Times the port was opened again after it disappeared.
    pub fn reopens(&self) -> u64 {
        self.reopens.load(Ordering::Relaxed)
    }

    /// Whether the port is open now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Skipped frames or lines by reason.
    pub fn errors(&self) -> BTreeMap<&'static str, u64> {
        self.errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Total skipped frames or lines, all reasons.
    pub fn error_total(&self) -> u64 {
        self.errors().values().sum()
    }

    /// All counters at once.
    pub fn snapshot(&self) -> SerialStatsSnapshot {
        SerialStatsSnapshot {
            frames_ok: self.frames_ok(),
            published: self.published(),
            publish_errors: self.publish_errors(),
            reopens: self.reopens(),
            connected: self.connected(),
            errors: self.errors(),
        }
    }

    fn count_error(&self, reason: &'static str) {
        *self
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(reason)
            .or_default() += 1;
    }
}

/// A reading as it came off the port, before it becomes a publish.
#[derive(Debug, Clone, PartialEq)]
pub enum SerialReading {
    /// A COBS frame.
    Frame(CompactReading),
    /// A text line.
    Line(TextReading),
}

impl From<CompactReading> for SerialReading {
    fn from(r: CompactReading) -> Self {
        SerialReading::Frame(r)
    }
}

impl From<TextReading> for SerialReading {
    fn from(r: TextReading) -> Self {
        SerialReading::Line(r)
    }
}

/// The JSON payload of a serial reading (the JSON format of
/// [`edgewatch_protocol::payload`]).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonReading<'a> {
    device_id: &'a str,
    value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
}

/// Turns a reading into the MQTT publish the hub ingests: topic `sensors/{deviceId}/{metric}`
/// and a JSON payload. `device_id_default` is used for text lines and for frames without a
/// device id. Errors (in words) for an invalid device id or metric, a frame without a metric,
/// the reserved metric `status` (the presence topic) and a value that is not finite.
pub fn to_publish(
    device_id_default: &str,
    reading: SerialReading,
) -> Result<(String, Bytes), String> {
    let (device_id, metric, value, unit, timestamp_ms) = match &reading {
        SerialReading::Frame(r) => (
            r.device_id.as_deref().unwrap_or(device_id_default),
            r.metric.as_deref().ok_or("frame carries no metric")?,
            r.value,
            r.unit.as_deref(),
            r.timestamp_ms,
        ),
        SerialReading::Line(r) => (
            device_id_default,
            r.metric.as_str(),
            r.value,
            r.unit.as_deref(),
            None,
        ),
    };
    if !is_valid_id(device_id) {
        return Err(format!(
            "invalid device id {device_id:?}: must be 1 to 64 characters of A-Z a-z 0-9 _ . : -"
        ));
    }
    if !is_valid_id(metric) {
        return Err(format!(
            "invalid metric {metric:?}: must be 1 to 64 characters of A-Z a-z 0-9 _ . : -"
        ));
    }
    if metric == "status" {
        return Err("metric \"status\" is reserved for device presence".to_owned());
    }
    if !value.is_finite() {
        return Err(format!("value {value} is not a finite number"));
    }
    let payload = JsonReading {
        device_id,
        value,
        unit: unit.filter(|u| !u.is_empty()),
        timestamp: timestamp_ms.map(format_rfc3339),
    };
    let payload = serde_json::to_vec(&payload).map_err(|e| e.to_string())?;
    Ok((
        format!("sensors/{device_id}/{metric}"),
        Bytes::from(payload),
    ))
}

/// Reads one serial port and publishes its readings until `stop` is cancelled; see the
/// [module documentation](self) for the formats and what happens on errors and unplugs. Never
/// returns an error: a port that cannot be opened is retried.
pub async fn run_serial(
    cfg: SerialPortConfig,
    publish: SerialPublish,
    stats: Arc<SerialStats>,
    stop: CancellationToken,
) {
    let span = info_span!("serial", port = %cfg.path.display(), device = %cfg.device_id);
    let reader = Reader {
        cfg,
        publish,
        stats,
        log: RateLimitedLog::default(),
    };
    reader.run(stop).instrument(span).await;
}

/// Why reading a port ended.
enum PortEnd {
    /// The stop token was cancelled.
    Stopped,
    /// The port went away (read error or end of file).
    Lost(String),
}

/// The decoder of the port's format.
enum Decoder {
    Cobs(FrameDecoder),
    Lines(LineDecoder),
}

impl Decoder {
    fn new(format: SerialFormat, max_len: usize) -> Self {
        match format {
            SerialFormat::Cobs => Decoder::Cobs(FrameDecoder::new(max_len)),
            SerialFormat::Lines => Decoder::Lines(LineDecoder::new(max_len)),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        match self {
            Decoder::Cobs(d) => d.push(bytes),
            Decoder::Lines(d) => d.push(bytes),
        }
    }

    fn next_reading(&mut self) -> Option<Result<SerialReading, FrameError>> {
        match self {
            Decoder::Cobs(d) => d.next_frame().map(|r| r.map(SerialReading::Frame)),
            Decoder::Lines(d) => d.next_line().map(|r| r.map(SerialReading::Line)),
        }
    }
}

/// One port's reader task state.
struct Reader {
    cfg: SerialPortConfig,
    publish: SerialPublish,
    stats: Arc<SerialStats>,
    log: RateLimitedLog,
}

impl Reader {
    async fn run(mut self, stop: CancellationToken) {
        let base = self.cfg.reopen_delay();
        let mut ever_open = false;
        // Failed open attempts since the port was last open (or since the start).
        let mut failures: u32 = 0;
        // Whether the outage was logged (once, at warn level; the attempts at debug).
        let mut outage_logged = false;
        loop {
            if stop.is_cancelled() {
                break;
            }
            match self.open() {
                Ok(port) => {
                    if ever_open {
                        self.stats.reopens.fetch_add(1, Ordering::Relaxed);
                        info!(
                            failed_attempts = failures,
                            "serial port is back; reading again"
                        );
                    } else {
                        info!(baud = self.cfg.baud, format = %self.cfg.format, "serial port open");
                    }
                    ever_open = true;
                    self.stats.connected.store(true, Ordering::Relaxed);
                    let (end, bytes) = self.read_port(port, &stop).await;
                    self.stats.connected.store(false, Ordering::Relaxed);
                    // A port that fails before delivering anything (flapping, or an open that
                    // succeeds on a dead device) keeps backing off instead of retrying fast.
                    if bytes > 0 {
                        failures = 0;
                        outage_logged = false;
                    } else {
                        failures = failures.saturating_add(1);
                    }
                    match end {
                        PortEnd::Stopped => break,
                        PortEnd::Lost(reason) if !outage_logged => {
                            warn!(
                                %reason,
                                retry_ms = self.cfg.reopen_delay_ms,
                                "serial port lost; trying to reopen it until it is back"
                            );
                            outage_logged = true;
                        }
                        PortEnd::Lost(reason) => {
                            debug!(%reason, "serial port lost again before any data");
                        }
                    }
                }
                Err(err) => {
                    if !outage_logged {
                        outage_logged = true;
                        warn!(
                            %err,
                            retry_ms = self.cfg.reopen_delay_ms,
                            "cannot open serial port; retrying until it appears"
                        );
                    } else {
                        debug!(%err, attempt = failures + 1, "serial port still unavailable");
                    }
                    failures = failures.saturating_add(1);
                }
            }
            let delay = reopen_backoff(base, failures);
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        info!("serial reader stopped");
    }

    fn open(&self) -> Result<SerialStream, tokio_serial::Error> {
        let path = self.cfg.path.to_string_lossy();
        tokio_serial::new(path, self.cfg.baud)
            .data_bits(DataBits::Eight)
            .parity(Parity::None)
            .stop_bits(StopBits::One)
            .flow_control(FlowControl::None)
            .open_native_async()
    }

    /// Reads and publishes until the port fails or `stop` fires; also returns how many bytes
    /// were read.
    async fn read_port(
        &mut self,
        mut port: SerialStream,
        stop: &CancellationToken,
    ) -> (PortEnd, u64) {
        let mut decoder = Decoder::new(self.cfg.format, self.cfg.max_frame_len);
        let mut buf = vec![0u8; READ_CHUNK];
        let mut total = 0u64;
        loop {
            let read = tokio::select! {
                biased;
                () = stop.cancelled() => return (PortEnd::Stopped, total),
                read = port.read(&mut buf) => read,
            };
            let n = match read {
                Ok(0) => return (PortEnd::Lost("end of file".to_owned()), total),
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => return (PortEnd::Lost(err.to_string()), total),
            };
            total += n as u64;
            decoder.push(&buf[..n]);
            while let Some(item) = decoder.next_reading() {
                match item {
                    Ok(reading) => {
                        if self.handle(reading, stop).await.is_break() {
                            return (PortEnd::Stopped, total);
                        }
                    }
                    Err(err) => self.reject(err.reason(), &err),
                }
            }
        }
    }

    /// Publishes one decoded reading. Breaks only if `stop` fired meanwhile.
    async fn handle(
        &mut self,
        reading: SerialReading,
        stop: &CancellationToken,
    ) -> ControlFlow<()> {
        let (topic, payload) = match to_publish(&self.cfg.device_id, reading) {
            Ok(publish) => publish,
            Err(err) => {
                self.reject(INVALID_READING, &err);
                return ControlFlow::Continue(());
            }
        };
        self.stats.frames_ok.fetch_add(1, Ordering::Relaxed);
        let publish = (self.publish)(topic.clone(), payload);
        let res = tokio::select! {
            biased;
            () = stop.cancelled() => return ControlFlow::Break(()),
            res = publish => res,
        };
        match res {
            Ok(()) => {
                self.stats.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                self.stats.publish_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.log.allow(PUBLISH_FAILED, Instant::now()) {
                    warn!(%topic, %err, suppressed, "publishing a serial reading failed; dropped");
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// Counts a skipped frame or line and logs it, rate-limited per reason.
    fn reject(&mut self, reason: &'static str, err: &dyn fmt::Display) {
        self.stats.count_error(reason);
        if let Some(suppressed) = self.log.allow(reason, Instant::now()) {
            warn!(reason, %err, suppressed, "skipped a serial frame");
        }
    }
}

/// The wait before reopen attempt number `failures + 1`: `base` doubled per failure, at most
/// [`MAX_REOPEN_DELAY`] (or `base` if that is longer).
fn reopen_backoff(base: Duration, failures: u32) -> Duration {
    let cap = base.max(MAX_REOPEN_DELAY);
    base.saturating_mul(1u32 << failures.min(16)).min(cap)
}

/// At most one log line per reason per [`LOG_INTERVAL`], remembering how many were suppressed.
#[derive(Debug, Default)]
struct RateLimitedLog {
    /// Per reason: when it was last logged and how many were suppressed since.
    last: HashMap<&'static str, (Instant, u64)>,
}

impl RateLimitedLog {
    /// `Some(suppressed since the last line)` if a line for `reason` may be logged at `now`.
    fn allow(&mut self, reason: &'static str, now: Instant) -> Option<u64> {
        match self.last.get_mut(reason) {
            Some((at, suppressed)) if now.saturating_duration_since(*at) < LOG_INTERVAL => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                *at = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                self.last.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(payload: &Bytes) -> serde_json::Value {
        serde_json::from_slice(payload).expect("payload is JSON")
    }

    #[test]
    fn frame_with_everything() {
        let (topic, payload) = to_publish(
            "port-dev",
            SerialReading::Frame(CompactReading {
                device_id: Some("esp-1".into()),
                metric: Some("temperature".into()),
                value: 21.5,
                unit: Some("C".into()),
                timestamp_ms: Some(1_795_860_000_000),
            }),
        )
        .unwrap();
        assert_eq!(topic, "sensors/esp-1/temperature");
        assert_eq!(
            json(&payload),
            serde_json::json!({
                "deviceId": "esp-1",
                "value": 21.5,
                "unit": "C",
                "timestamp": "2026-11-28T10:00:00.000Z",
            })
        );
    }

    #[test]
    fn frame_without_device_uses_default_and_omits_missing_fields() {
        let (topic, payload) = to_publish(
            "port-dev",
            CompactReading {
                metric: Some("humidity".into()),
                value: -3.0,
                unit: Some(String::new()),
                ..CompactReading::default()
            }
            .into(),
        )
        .unwrap();
        assert_eq!(topic, "sensors/port-dev/humidity");
        assert_eq!(
            json(&payload),
            serde_json::json!({"deviceId": "port-dev", "value": -3.0})
        );
    }

    #[test]
    fn line_uses_default_device() {
        let (topic, payload) = to_publish(
            "serial-0",
            TextReading {
                metric: "humidity".into(),
                value: 40.25,
                unit: Some("%".into()),
            }
            .into(),
        )
        .unwrap();
        assert_eq!(topic, "sensors/serial-0/humidity");
        assert_eq!(
            json(&payload),
            serde_json::json!({"deviceId": "serial-0", "value": 40.25, "unit": "%"})
        );
    }

    #[test]
    fn payload_decodes_as_the_same_reading() {
        let (topic, payload) = to_publish(
            "d",
            CompactReading {
                device_id: Some("dev.7".into()),
                metric: Some("pressure".into()),
                value: 1013.25,
                unit: Some("hPa".into()),
                timestamp_ms: Some(1_795_860_000_123),
            }
            .into(),
        )
        .unwrap();
        let now = 1_795_860_001_000;
        let inbound = edgewatch_protocol::payload::decode_publish(&topic, &payload, now);
        let Ok(edgewatch_protocol::payload::Inbound::Reading(r)) = inbound else {
            panic!("not a reading: {inbound:?}");
        };
        assert_eq!(
            (r.device_id.as_str(), r.metric.as_str(), r.value),
            ("dev.7", "pressure", 1013.25)
        );
        assert_eq!(
            (r.unit.as_deref(), r.timestamp_ms),
            (Some("hPa"), 1_795_860_000_123)
        );
    }

    #[test]
    fn invalid_readings_are_errors() {
        let frame = |device: Option<&str>, metric: Option<&str>, value: f64| {
            SerialReading::Frame(CompactReading {
                device_id: device.map(str::to_owned),
                metric: metric.map(str::to_owned),
                value,
                ..CompactReading::default()
            })
        };
        let cases = [
            ("d", frame(None, None, 1.0), "no metric"),
            ("d", frame(Some("a/b"), Some("t"), 1.0), "invalid device id"),
            ("d", frame(Some(""), Some("t"), 1.0), "invalid device id"),
            ("d", frame(None, Some("t#"), 1.0), "invalid metric"),
            ("d", frame(None, Some("status"), 1.0), "reserved"),
            ("d", frame(None, Some("t"), f64::NAN), "not a finite"),
            ("d", frame(None, Some("t"), f64::INFINITY), "not a finite"),
            ("bad id", frame(None, Some("t"), 1.0), "invalid device id"),
            (
                "bad+",
                SerialReading::Line(TextReading {
                    metric: "t".into(),
                    value: 1.0,
                    unit: None,
                }),
                "invalid device id",
            ),
        ];
        for (default, reading, expected) in cases {
            let err = to_publish(default, reading.clone()).unwrap_err();
            assert!(err.contains(expected), "{reading:?}: {err}");
        }
    }

    #[test]
    fn config_defaults_and_validation() {
        let cfg: SerialPortConfig =
            serde_json::from_str(r#"{"path":"/dev/ttyUSB0","device_id":"s1"}"#).unwrap();
        assert_eq!(cfg, SerialPortConfig::new("/dev/ttyUSB0", "s1"));
        assert_eq!(
            (cfg.baud, cfg.format, cfg.max_frame_len, cfg.reopen_delay_ms),
            (115_200, SerialFormat::Cobs, 1024, 1000)
        );
        assert_eq!(cfg.validate(0), Ok(()));
        let lines: SerialPortConfig = serde_json::from_str(
            r#"{"path":"/dev/x","device_id":"s1","format":"lines","baud":9600}"#,
        )
        .unwrap();
        assert_eq!((lines.format, lines.baud), (SerialFormat::Lines, 9600));
        assert!(serde_json::from_str::<SerialPortConfig>(
            r#"{"path":"/dev/x","device_id":"s1","speed":1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<SerialPortConfig>(
            r#"{"path":"/dev/x","device_id":"s1","format":"COBS"}"#
        )
        .is_err());

        let invalid = |edit: fn(&mut SerialPortConfig)| {
            let mut cfg = SerialPortConfig::new("/dev/ttyUSB0", "s1");
            edit(&mut cfg);
            cfg.validate(3).unwrap_err()
        };
        assert!(invalid(|c| c.path = PathBuf::new()).key == "serial[3].path");
        assert!(invalid(|c| c.baud = 0).key == "serial[3].baud");
        assert!(invalid(|c| c.device_id = "a b".into()).key == "serial[3].device_id");
        assert!(invalid(|c| c.max_frame_len = 0).key == "serial[3].max_frame_len");
        assert!(invalid(|c| c.reopen_delay_ms = 0).key == "serial[3].reopen_delay_ms");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let base = Duration::from_millis(1000);
        let waits: Vec<u64> = (0..8)
            .map(|n| reopen_backoff(base, n).as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [1000, 2000, 4000, 8000, 10_000, 10_000, 10_000, 10_000]
        );
        assert_eq!(
            reopen_backoff(Duration::from_secs(30), 5),
            Duration::from_secs(30)
        );
        assert_eq!(
            reopen_backoff(Duration::from_millis(10), u32::MAX),
            MAX_REOPEN_DELAY
        );
    }

    #[test]
    fn log_is_rate_limited_per_reason() {
        let mut log = RateLimitedLog::default();
        let t0 = Instant::now();
        assert_eq!(log.allow("a", t0), Some(0));
        assert_eq!(log.allow("a", t0 + Duration::from_secs(1)), None);
        assert_eq!(log.allow("a", t0 + Duration::from_secs(2)), None);
        assert_eq!(log.allow("b", t0 + Duration::from_secs(2)), Some(0));
        assert_eq!(log.allow("a", t0 + LOG_INTERVAL), Some(2));
        assert_eq!(log.allow("a", t0 + LOG_INTERVAL), None);
    }

    #[test]
    fn stats_snapshot() {
        let stats = SerialStats::default();
        stats.count_error("invalid_cobs");
        stats.count_error("invalid_cobs");
        stats.count_error("too_long");
        stats.frames_ok.fetch_add(5, Ordering::Relaxed);
        let snap = stats.snapshot();
        assert_eq!(snap.frames_ok, 5);
        assert_eq!(stats.error_total(), 3);
        assert_eq!(
            snap.errors,
            BTreeMap::from([("invalid_cobs", 2), ("too_long", 1)])
        );
    }
}
