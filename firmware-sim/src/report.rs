//! Counters shared by a running fleet, and the final [`Report`] (text and JSON).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::shape::Shape;

/// Live counters of a fleet, updated by every device task (relaxed atomics: they are
/// statistics, read once per second by the progress line). They count publishes: in the
/// native shape one publish is one reading.
#[derive(Debug, Default)]
pub struct FleetStats {
    /// Readings produced by the signals (dropouts excluded).
    pub sampled: AtomicU64,
    /// Readings written to the network (counted again when re-sent after a reconnect).
    pub sent: AtomicU64,
    /// Readings the broker acknowledged (PUBACK; QoS 1 only).
    pub acknowledged: AtomicU64,
    /// Readings dropped because a device's offline buffer was full (oldest dropped first), or
    /// because they could not be encoded (logged).
    pub dropped: AtomicU64,
    /// Samples a simulated dropout fault swallowed (other shapes: publishes it skipped).
    pub dropouts: AtomicU64,
    /// Connection attempts or connections that failed.
    pub errors: AtomicU64,
    /// Successful connections after the first one, per device.
    pub reconnects: AtomicU64,
    /// Devices connected right now.
    pub connected: AtomicU64,
    /// Readings still buffered or unacknowledged when their device stopped.
    pub unsent: AtomicU64,
}

impl FleetStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// End-to-end check results of `--verify`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VerifyReport {
    /// Distinct readings of this fleet the verifying subscriber received.
    pub received: u64,
    /// Readings received more than once (not detectable with the `number` format).
    pub duplicates: u64,
    /// Readings that should have arrived but did not: acknowledged (QoS 1) or sent (QoS 0)
    /// minus distinct received, never below zero.
    pub missing: u64,
    /// Publish-to-receive latency from the timestamp in the reading (`None` with the `number`
    /// format, which carries no timestamp). Readings buffered while offline count their time
    /// in the buffer.
    pub latency_ms: Option<Percentiles>,
    /// Readings received after the tracking bound was reached (not checked for duplicates).
    pub untracked: u64,
    /// Whether readings were identified (device, metric, event time), so that `received`
    /// counts distinct readings and duplicates are seen. False for the `number` format and for
    /// shapes other than `native`: then every arrival counts, a re-sent publish too, and
    /// `duplicates` is 0 because it cannot be told.
    pub exact: bool,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: i64,
    /// 90th percentile.
    pub p90: i64,
    /// 99th percentile.
    pub p99: i64,
    /// Largest.
    pub max: i64,
}

impl Percentiles {
    /// Percentiles of `samples` (sorted in place); `None` if empty.
    pub fn from_samples(samples: &mut [i64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples[i.min(samples.len() - 1)]
        };
        Some(Self {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: samples[samples.len() - 1],
        })
    }
}

/// What a run did. Printed by [`crate::cli::run`] as text, or as JSON with `--json`. Fleet
/// counts are of publishes; in the native shape each publish is one reading.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// `fleet` or `serial`.
    pub mode: &'static str,
    /// The devices' shape (`native`, `tasmota`, ...).
    pub shape: Shape,
    /// Simulated devices.
    pub devices: u64,
    /// Devices connected when sending started.
    pub connected_at_start: u64,
    /// Seconds from the start until sending started: connecting the fleet (staggered by
    /// `--connect-rate`), and the `--verify` subscriber's connect.
    pub connect_s: f64,
    /// Why devices were not connected when sending started (the latest connection failure),
    /// if some were not.
    pub connect_failure: Option<String>,
    /// Readings produced (see [`FleetStats::sampled`]); frames written in serial mode.
    pub sampled: u64,
    /// Readings written to the network, including re-sends after reconnects.
    pub sent: u64,
    /// Readings acknowledged by the broker (QoS 1; 0 for QoS 0).
    pub acknowledged: u64,
    /// Readings dropped from full offline buffers (serial: frames the pty could not take).
    pub dropped: u64,
    /// Samples lost to simulated dropout faults.
    pub dropouts: u64,
    /// Connection errors (serial: garbage or truncated frames injected).
    pub errors: u64,
    /// Reconnections.
    pub reconnects: u64,
    /// Readings neither sent nor acknowledged when the run ended.
    pub unsent: u64,
    /// Sending time in seconds: from when sending started (after the connects) until the last
    /// delivery (written at QoS 0, acknowledged at QoS 1) or the end of sampling, whichever
    /// came later. Neither a drain timeout spent waiting in vain nor the `--verify` wait is
    /// part of it.
    pub elapsed_s: f64,
    /// Delivered publishes per second of sending time: acknowledged/s for QoS 1, sent/s for
    /// QoS 0.
    pub achieved_rate: f64,
    /// Numbers in each publish: 1 in the native shape (one reading), 12 for Tasmota, 5 for
    /// Zigbee2MQTT, 1 for the others.
    pub readings_per_publish: u64,
    /// Delivered publishes (acknowledged for QoS 1, sent for QoS 0) times
    /// `readings_per_publish`: the readings a hub that stores every number of a publish
    /// should hold from this run.
    pub expected_readings: u64,
    /// CPU time of this whole process (user + system) from the start of sending until every
    /// device ended (connecting not included), in seconds. With an embedded broker in the same
    /// process it includes the broker.
    pub cpu_s: f64,
    /// CPU seconds per second of run per 10,000 delivered readings/s: the generator's cost
    /// (`cpu_s / elapsed_s / (achieved_rate / 10000)`), 0 when nothing was delivered.
    pub cpu_per_10k_rate: f64,
    /// `--verify` results.
    pub verify: Option<VerifyReport>,
}

impl Report {
    /// Fills in the rate and CPU figures from the wall time and CPU time used.
    pub(crate) fn finish(&mut self, elapsed: Duration, cpu: Duration, qos1: bool) {
        self.elapsed_s = elapsed.as_secs_f64();
        let delivered = if qos1 { self.acknowledged } else { self.sent };
        self.readings_per_publish = self.shape.readings_per_publish();
        self.expected_readings = delivered.saturating_mul(self.readings_per_publish);
        self.achieved_rate = if self.elapsed_s > 0.0 {
            delivered as f64 / self.elapsed_s
        } else {
            0.0
        };
        self.cpu_s = cpu.as_secs_f64();
        self.cpu_per_10k_rate = if self.achieved_rate > 0.0 && self.elapsed_s > 0.0 {
            (self.cpu_s / self.elapsed_s) / (self.achieved_rate / 10_000.0)
        } else {
            0.0
        };
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = if self.shape == Shape::Native {
            "readings"
        } else {
            "publishes"
        };
        if self.mode == "fleet" {
            writeln!(
                f,
                "fleet run: {} device(s), {:.1} s sending after {:.1} s connecting ({}/{} connected)",
                self.devices, self.elapsed_s, self.connect_s, self.connected_at_start, self.devices
            )?;
        } else {
            writeln!(
                f,
                "{} run: {} device(s), {:.1} s",
                self.mode, self.devices, self.elapsed_s
            )?;
        }
        if let Some(why) = &self.connect_failure {
            writeln!(
                f,
                "  not connected when sending started: {} device(s); last failure: {why}",
                self.devices.saturating_sub(self.connected_at_start)
            )?;
        }
        if self.shape != Shape::Native {
            writeln!(
                f,
                "  shape {}: counts are publishes, {} number(s) each; expected readings at a hub \
                 that stores every number: {}",
                self.shape, self.readings_per_publish, self.expected_readings
            )?;
        }
        writeln!(
            f,
            "  sampled {}  sent {}  acknowledged {}  unsent {}",
            self.sampled, self.sent, self.acknowledged, self.unsent
        )?;
        writeln!(
            f,
            "  dropped (buffer full) {}  dropouts {}  errors {}  reconnects {}",
            self.dropped, self.dropouts, self.errors, self.reconnects
        )?;
        write!(
            f,
            "  achieved {:.0} {unit}/s  cpu {:.2} s  ({:.3} cpu-s/s per 10k {unit}/s)",
            self.achieved_rate, self.cpu_s, self.cpu_per_10k_rate
        )?;
        if let Some(v) = &self.verify {
            self.fmt_verify(f, v)?;
        }
        Ok(())
    }
}

impl Report {
    fn fmt_verify(&self, f: &mut fmt::Formatter<'_>, v: &VerifyReport) -> fmt::Result {
        write!(
            f,
            "\n  verify: received {}  duplicates {}  missing {}  untracked {}",
            v.received, v.duplicates, v.missing, v.untracked
        )?;
        if !v.exact {
            let what = if self.shape == Shape::Native {
                "readings without a timestamp (format number)".to_owned()
            } else {
                format!("{} publishes", self.shape)
            };
            write!(
                f,
                "\n  verify is not exact: {what} are counted, not identified, so a re-sent one \
                 counts as received and duplicates cannot be told"
            )?;
        }
        match &v.latency_ms {
            Some(p) => write!(
                f,
                "\n  latency ms: p50 {}  p90 {}  p99 {}  max {}",
                p.p50, p.p90, p.p99, p.max
            ),
            None if self.shape == Shape::Native => {
                write!(f, "\n  latency: not measured (no timestamps)")
            }
            None => write!(
                f,
                "\n  latency: not measured ({} publishes carry no millisecond event time)",
                self.shape
            ),
        }
    }
}

/// CPU time (user + system) this process has used, from `/proc/self/stat` (fields 14 and 15,
/// in clock ticks of `USER_HZ`, which Linux fixes at 100 for this interface). Zero where
/// `/proc` is not available.
pub fn process_cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // The command name (field 2) may contain spaces; fields after it start past the last ')'.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut v: Vec<i64> = (1..=100).rev().collect();
        let p = Percentiles::from_samples(&mut v).unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.max), (51, 90, 99, 100));
        assert!(Percentiles::from_samples(&mut []).is_none());
    }

    #[test]
    fn cpu_time_grows() {
        let before = process_cpu_time();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(120) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(process_cpu_time() > before, "{x}");
    }
}
