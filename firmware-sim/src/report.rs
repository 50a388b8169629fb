//! Counters shared by a running fleet, and the final [`Report`] (text and JSON).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Live counters of a fleet, updated by every device task (relaxed atomics: they are
/// statistics, read once per second by the progress line).
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
    /// Samples a simulated dropout fault swallowed.
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

/// What a run did. Printed by [`crate::cli::run`] as text, or as JSON with `--json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// `fleet` or `serial`.
    pub mode: &'static str,
    /// Simulated devices.
    pub devices: u64,
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
    /// Wall time of the run in seconds.
    pub elapsed_s: f64,
    /// Delivered readings per second: acknowledged/s for QoS 1, sent/s for QoS 0.
    pub achieved_rate: f64,
    /// CPU time of this whole process (user + system) during the run, in seconds. With an
    /// embedded broker in the same process it includes the broker.
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
        writeln!(
            f,
            "{} run: {} device(s), {:.1} s",
            self.mode, self.devices, self.elapsed_s
        )?;
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
            "  achieved {:.0} readings/s  cpu {:.2} s  ({:.3} cpu-s/s per 10k readings/s)",
            self.achieved_rate, self.cpu_s, self.cpu_per_10k_rate
        )?;
        if let Some(v) = &self.verify {
            write!(
                f,
                "\n  verify: received {}  duplicates {}  missing {}  untracked {}",
                v.received, v.duplicates, v.missing, v.untracked
            )?;
            match &v.latency_ms {
                Some(p) => write!(
                    f,
                    "\n  latency ms: p50 {}  p90 {}  p99 {}  max {}",
                    p.p50, p.p90, p.p99, p.max
                )?,
                None => write!(f, "\n  latency: not measured (no timestamps)")?,
            }
        }
        Ok(())
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
