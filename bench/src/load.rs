//! The load's specification, counters and latency clock; the publishers are in
//! [`crate::publishers`], the receivers in [`crate::receivers`], the raw-socket devices of the
//! connection-count scenarios in [`crate::devices`].
//!
//! Latency: every payload's `value` is the send time in microseconds since the harness started
//! (one monotonic clock in this process); a receiver subtracts it from its own receive time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::QoS;

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
pub(crate) fn wall_ms_of(us: u64) -> i64 {
    clock().1 + (us / 1000) as i64
}

/// Unix ms of an RFC 3339 UTC time with milliseconds as the hub writes it
/// (`2026-11-29T12:00:00.123Z`).
pub(crate) fn parse_rfc3339_ms(s: &[u8]) -> Option<i64> {
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
/// What a receiver saw; latencies are recorded only while `recording` is set.
#[derive(Debug, Default)]
pub(crate) struct Probe {
    pub(crate) count: AtomicU64,
    pub(crate) connected: AtomicU64,
    pub(crate) recording: AtomicBool,
    /// Only readings sent at or after this time (µs, [`now_us`]) are recorded.
    pub(crate) since_us: AtomicU64,
    /// ... and, once set (not 0), at or before this one: the window's end.
    until_us: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
    /// For readings that carry the hub's `receivedAt`: (send -> hub receive, hub receive ->
    /// client receive), ms, wall clock.
    split_ms: Mutex<Vec<(i32, i32)>>,
}

impl Probe {
    pub(crate) fn record(&self, data: &[u8]) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if self.recording.load(Ordering::Relaxed) {
            if let Some(sent) = value_of(data) {
                let until = self.until_us.load(Ordering::Relaxed);
                if sent < self.since_us.load(Ordering::Relaxed) || (until != 0 && sent > until) {
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
        self.until_us.store(0, Ordering::Relaxed);
        self.since_us.store(now_us(), Ordering::Relaxed);
        self.recording.store(true, Ordering::Relaxed);
    }

    /// Ends the window: readings sent from now on are no longer recorded (they may still
    /// arrive while the tail is waited for, and were not counted as sent in the window).
    pub(crate) fn end_window(&self) {
        self.until_us.store(now_us(), Ordering::Relaxed);
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
pub(crate) fn received_at_of(data: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"receivedAt\":\"";
    let at = find(data, KEY)? + KEY.len();
    parse_rfc3339_ms(data.get(at..at + 24)?)
}

/// The integer part of the `"value":` field of a JSON reading.
pub(crate) fn value_of(data: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"value\":";
    let at = find(data, KEY)? + KEY.len();
    let digits = data[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |n, b| n * 10 + u64::from(b - b'0'));
    Some(digits)
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
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
}
