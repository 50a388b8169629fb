//! A fleet of simulated devices against one broker: configuration, staggered start, the
//! run's end (duration, count, shutdown), the progress line and the final [`Report`].

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgewatch_protocol::payload::is_valid_id;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::device::run_device;
use crate::payload::{Format, TopicShape};
use crate::report::{process_cpu_time, FleetStats, Report};
use crate::signal::{Faults, MetricSpec};
use crate::verify::Verifier;
use crate::SimError;

/// Everything a fleet run needs. [`FleetConfig::default`] is one device publishing
/// temperature and humidity every second to `127.0.0.1:1883` until shut down.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// Broker host name or address.
    pub broker_host: String,
    /// Broker MQTT port.
    pub broker_port: u16,
    /// Number of devices, 1 to [`FleetConfig::MAX_DEVICES`].
    pub devices: u32,
    /// Metric names each device reports (see [`MetricSpec::for_name`]).
    pub metrics: Vec<String>,
    /// Time between two samples of one device (ignored with `rate`).
    pub interval: Duration,
    /// Each interval is varied by up to this much either way.
    pub jitter: Duration,
    /// MQTT QoS of readings: 0 or 1.
    pub qos: u8,
    /// Payload format.
    pub format: Format,
    /// Topic shape.
    pub topic_shape: TopicShape,
    /// Seed of every signal and jitter: the same seed gives the same values.
    pub seed: u64,
    /// Device ids are `{id_prefix}-{index}`, index from 0; also the MQTT client id.
    pub id_prefix: String,
    /// MQTT username for every device.
    pub username: Option<String>,
    /// MQTT password for every device.
    pub password: Option<String>,
    /// Total readings per second across the fleet; sets the per-device interval.
    pub rate: Option<f64>,
    /// Stop after this many readings in total.
    pub max: Option<u64>,
    /// Stop sampling after this long.
    pub duration: Option<Duration>,
    /// Subscribe to `sensors/#` on the same broker and check delivery and latency.
    pub verify: bool,
    /// Spikes and faults of the signals.
    pub faults: Faults,
    /// Readings one device keeps while it cannot send; when full the oldest is dropped.
    pub buffer_capacity: usize,
    /// New connections per second across the fleet at start (staggered connects).
    pub connect_rate: u32,
    /// First reconnect delay; doubles per failure, with jitter.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// How long devices keep trying to deliver what they hold once sampling stopped.
    pub drain_timeout: Duration,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Print a progress line to stderr once per second.
    pub progress: bool,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            broker_host: "127.0.0.1".to_owned(),
            broker_port: 1883,
            devices: 1,
            metrics: vec!["temperature".to_owned(), "humidity".to_owned()],
            interval: Duration::from_secs(1),
            jitter: Duration::ZERO,
            qos: 1,
            format: Format::Json,
            topic_shape: TopicShape::Device,
            seed: 1,
            id_prefix: "sim".to_owned(),
            username: None,
            password: None,
            rate: None,
            max: None,
            duration: None,
            verify: false,
            faults: Faults::default(),
            buffer_capacity: 1000,
            connect_rate: 500,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(30),
            progress: false,
        }
    }
}

impl FleetConfig {
    /// Largest fleet one process runs.
    pub const MAX_DEVICES: u32 = 100_000;

    /// Checks the values; the error names the option.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |option: &'static str, reason: String| Err(SimError::Invalid { option, reason });
        if self.devices == 0 || self.devices > Self::MAX_DEVICES {
            return bad(
                "devices",
                format!("must be 1 to {}, got {}", Self::MAX_DEVICES, self.devices),
            );
        }
        if self.metrics.is_empty() || self.metrics.len() > 64 {
            return bad("metrics", "give 1 to 64 metric names".to_owned());
        }
        if let Some(m) = self
            .metrics
            .iter()
            .find(|m| !is_valid_id(m) || *m == "status")
        {
            return bad(
                "metrics",
                format!(
                    "{m:?} is not a metric name (1 to 64 of A-Z a-z 0-9 _ . : -, not `status`)"
                ),
            );
        }
        let longest_id = format!("{}-{}", self.id_prefix, self.devices - 1);
        if !is_valid_id(&longest_id) {
            return bad(
                "id-prefix",
                format!("device id {longest_id:?} must be 1 to 64 of A-Z a-z 0-9 _ . : -"),
            );
        }
        if self.qos > 1 {
            return bad("qos", format!("must be 0 or 1, got {}", self.qos));
        }
        if self.format == Format::Number && self.topic_shape == TopicShape::Shared {
            return bad(
                "format",
                "`number` carries no device id, so it needs `--topic-shape device`".to_owned(),
            );
        }
        match self.rate {
            Some(r) if !(r.is_finite() && r > 0.0 && r <= 10_000_000.0) => {
                return bad("rate", format!("must be above 0 and at most 1e7, got {r}"));
            }
            None if self.interval.is_zero() => {
                return bad("interval-ms", "must be above 0".to_owned());
            }
            _ => {}
        }
        if self.buffer_capacity == 0 {
            return bad("buffer", "must be at least 1".to_owned());
        }
        if self.connect_rate == 0 {
            return bad("connect-rate", "must be at least 1".to_owned());
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return bad(
                "backoff",
                "minimum must be above 0 and at most the maximum".to_owned(),
            );
        }
        Ok(())
    }

    /// The per-device sampling interval: `interval`, or what `rate` implies.
    pub fn effective_interval(&self) -> Duration {
        match self.rate {
            Some(rate) => {
                Duration::from_secs_f64(f64::from(self.devices) * self.metrics.len() as f64 / rate)
            }
            None => self.interval,
        }
    }
}

/// What every device task shares: configuration, counters and the run's limits.
#[derive(Debug)]
pub(crate) struct FleetShared {
    pub(crate) config: FleetConfig,
    pub(crate) specs: Vec<MetricSpec>,
    pub(crate) stats: FleetStats,
    pub(crate) interval: Duration,
    /// When sampling stops (`duration`).
    pub(crate) deadline: Option<Instant>,
    /// Readings left to produce (`max`).
    budget: Option<AtomicU64>,
}

impl FleetShared {
    /// Takes one reading from the `max` budget; false when it is used up.
    pub(crate) fn claim_budget(&self) -> bool {
        match &self.budget {
            None => true,
            Some(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }
}

/// Runs the fleet until `duration` passes, `max` readings were produced, or `shutdown` is
/// cancelled, then lets devices deliver what they hold (bounded by `drain_timeout`) and
/// returns the report. Without `duration` and `max` only `shutdown` ends the run.
pub async fn run_fleet(
    config: FleetConfig,
    shutdown: CancellationToken,
) -> Result<Report, SimError> {
    config.validate()?;
    raise_open_file_limit(u64::from(config.devices) + 256);
    let started = Instant::now();
    let cpu_before = process_cpu_time();
    let verifier = if config.verify {
        Some(Verifier::start(&config).await?)
    } else {
        None
    };
    let shared = Arc::new(FleetShared {
        specs: config
            .metrics
            .iter()
            .map(|m| MetricSpec::for_name(m))
            .collect(),
        stats: FleetStats::default(),
        interval: config.effective_interval(),
        deadline: config.duration.map(|d| Instant::now() + d),
        budget: config.max.map(AtomicU64::new),
        config,
    });
    let cfg = &shared.config;
    let devices_token = shutdown.child_token();
    let mut tasks = JoinSet::new();
    let slot = Duration::from_secs_f64(1.0 / f64::from(cfg.connect_rate));
    let first = Instant::now();
    for index in 0..cfg.devices {
        let start_at = first + slot * index;
        tasks.spawn(run_device(
            shared.clone(),
            index,
            start_at,
            devices_token.clone(),
        ));
    }
    let stats = &shared.stats;
    let mut progress = tokio::time::interval_at(
        Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut last_sent = 0;
    // Devices end by themselves at the deadline or budget; the shutdown token ends them too.
    loop {
        tokio::select! {
            joined = tasks.join_next() => {
                if joined.is_none() { break; }
            }
            _ = progress.tick(), if cfg.progress => {
                let sent = FleetStats::get(&stats.sent);
                let _ = write!(
                    std::io::stderr(),
                    "\r[{:>5.0}s] connected {}/{}  sent {}  acked {}  {}/s  dropped {}  errors {}   ",
                    started.elapsed().as_secs_f64(),
                    FleetStats::get(&stats.connected),
                    cfg.devices,
                    sent,
                    FleetStats::get(&stats.acknowledged),
                    sent - last_sent,
                    FleetStats::get(&stats.dropped),
                    FleetStats::get(&stats.errors),
                );
                last_sent = sent;
            }
        }
    }
    if cfg.progress {
        let _ = writeln!(std::io::stderr());
    }
    let elapsed = started.elapsed();
    let qos1 = cfg.qos == 1;
    let mut report = Report {
        mode: "fleet",
        devices: u64::from(cfg.devices),
        sampled: FleetStats::get(&stats.sampled),
        sent: FleetStats::get(&stats.sent),
        acknowledged: FleetStats::get(&stats.acknowledged),
        dropped: FleetStats::get(&stats.dropped),
        dropouts: FleetStats::get(&stats.dropouts),
        errors: FleetStats::get(&stats.errors),
        reconnects: FleetStats::get(&stats.reconnects),
        unsent: FleetStats::get(&stats.unsent),
        ..Report::default()
    };
    if let Some(verifier) = verifier {
        let expected = if qos1 {
            report.acknowledged
        } else {
            report.sent
        };
        report.verify = Some(verifier.finish(expected).await);
    }
    // Sampling stopped at `elapsed`; the verify wait is not part of the rate.
    report.finish(elapsed, process_cpu_time().saturating_sub(cpu_before), qos1);
    Ok(report)
}

/// Raises the soft open-file limit towards `wanted` (one socket per device), up to the hard
/// limit. Failure is only logged: connects beyond the limit then fail and are counted.
fn raise_open_file_limit(wanted: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= wanted {
        return;
    }
    let target = limit.maximum.map_or(wanted, |max| max.min(wanted));
    limit.current = Some(target);
    if let Err(error) = setrlimit(Resource::Nofile, limit) {
        tracing::warn!(%error, wanted, "cannot raise the open file limit");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_option() {
        let cfg = FleetConfig {
            format: Format::Number,
            topic_shape: TopicShape::Shared,
            ..FleetConfig::default()
        };
        assert!(matches!(
            cfg.validate(),
            Err(SimError::Invalid {
                option: "format",
                ..
            })
        ));
        let cfg = FleetConfig {
            devices: 0,
            ..FleetConfig::default()
        };
        assert!(matches!(
            cfg.validate(),
            Err(SimError::Invalid {
                option: "devices",
                ..
            })
        ));
        let cfg = FleetConfig {
            metrics: vec!["a/b".to_owned()],
            ..FleetConfig::default()
        };
        assert!(matches!(
            cfg.validate(),
            Err(SimError::Invalid {
                option: "metrics",
                ..
            })
        ));
        assert!(FleetConfig::default().validate().is_ok());
    }

    #[test]
    fn rate_sets_the_interval() {
        let cfg = FleetConfig {
            devices: 100,
            rate: Some(1000.0),
            ..FleetConfig::default()
        };
        // 100 devices × 2 metrics at 1000 readings/s: each device ticks every 200 ms.
        assert_eq!(cfg.effective_interval(), Duration::from_millis(200));
    }
}
