//! [`FleetShared`]: what every device task of a run shares: configuration, counters, the run's
//! limits, the start of sending and what the connections said.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use rumqttc::ConnectionError;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::FleetConfig;
use crate::connection::{explain, Failure};
use crate::report::FleetStats;
use crate::shape::Shape;
use crate::signal::MetricSpec;

/// The state every device task of one run shares.
#[derive(Debug)]
pub(crate) struct FleetShared {
    pub(crate) config: FleetConfig,
    /// The signals each device samples (the native metrics, or the shape's).
    pub(crate) specs: Vec<MetricSpec>,
    pub(crate) stats: FleetStats,
    pub(crate) interval: Duration,
    /// Publishes left to produce (`max`).
    budget: Option<AtomicU64>,
    /// Cancelled when sending starts; devices connect before and sample only after.
    go: CancellationToken,
    /// When sending started (set once, just before `go` is cancelled).
    sending_start: OnceLock<Instant>,
    /// Microseconds from `sending_start` to the last delivery (written at QoS 0,
    /// acknowledged at QoS 1) or end of sampling: the end of sending.
    sending_until_us: AtomicU64,
    /// Whether any device of the run ever connected.
    any_connected: AtomicBool,
    /// The latest connection failure, and since when failures are permanent ones.
    failures: Mutex<Failures>,
    /// Wakes the fleet while it waits for the connects: a device connected or failed.
    pub(crate) connect_events: Notify,
}

impl FleetShared {
    /// The shared state of a run of `config`; sending starts with [`FleetShared::start_sending`].
    pub(crate) fn new(config: FleetConfig) -> Self {
        FleetShared {
            specs: config
                .signal_names()
                .iter()
                .map(|m| match config.shape {
                    Shape::Native => MetricSpec::for_name(m),
                    _ => Shape::spec(m),
                })
                .collect(),
            stats: FleetStats::default(),
            interval: config.effective_interval(),
            budget: config.max.map(AtomicU64::new),
            go: CancellationToken::new(),
            sending_start: OnceLock::new(),
            sending_until_us: AtomicU64::new(0),
            any_connected: AtomicBool::new(false),
            failures: Mutex::new(Failures::default()),
            connect_events: Notify::new(),
            config,
        }
    }

    /// Takes one publish from the `max` budget; false when it is used up.
    pub(crate) fn claim_budget(&self) -> bool {
        match &self.budget {
            None => true,
            Some(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }

    /// Lets every device start sampling, as of `at`.
    pub(crate) fn start_sending(&self, at: Instant) {
        let _ = self.sending_start.set(at);
        self.go.cancel();
    }

    /// A token cancelled when sending starts.
    pub(crate) fn go(&self) -> CancellationToken {
        self.go.clone()
    }

    /// When sending started, if it did.
    pub(crate) fn sending_start(&self) -> Option<Instant> {
        self.sending_start.get().copied()
    }

    /// The run was still sending now: a delivery, or a device stopped sampling.
    pub(crate) fn mark_sending(&self) {
        if let Some(start) = self.sending_start() {
            let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.sending_until_us.fetch_max(us, Ordering::Relaxed);
        }
    }

    /// Sending time: from the start of sending to the last delivery or end of sampling,
    /// whichever came later. Devices that still wait to deliver after that (never connected,
    /// until the drain timeout) do not count.
    pub(crate) fn sending_time(&self) -> Duration {
        Duration::from_micros(self.sending_until_us.load(Ordering::Relaxed))
    }

    /// A device connected (CONNACK accepted).
    pub(crate) fn note_connected(&self) {
        self.any_connected.store(true, Ordering::Relaxed);
        self.connect_events.notify_one();
    }

    /// A device's connection failed with `error`.
    pub(crate) fn note_failure(&self, error: &ConnectionError) {
        let failure = explain(error, &self.config.broker_host, self.config.broker_port);
        let mut failures = self.failures();
        if failure.permanent {
            failures.refused_since.get_or_insert_with(Instant::now);
        } else {
            failures.refused_since = None;
        }
        failures.last = Some(failure);
        drop(failures);
        self.connect_events.notify_one();
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, Failures> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether any device of the run ever connected.
    pub(crate) fn any_connected(&self) -> bool {
        self.any_connected.load(Ordering::Relaxed)
    }

    /// The latest connection failure, if any.
    pub(crate) fn last_failure(&self) -> Option<Failure> {
        self.failures().last.clone()
    }

    /// When the latest failures are permanent ones (every failure since the first of them):
    /// that failure, and when it has gone on for its settle time.
    pub(crate) fn refusal(&self) -> Option<(Failure, Instant)> {
        let failures = self.failures();
        match (&failures.last, failures.refused_since) {
            (Some(last), Some(since)) if last.permanent => {
                Some((last.clone(), since + last.settle))
            }
            _ => None,
        }
    }
}

/// What the devices' connection failures said.
#[derive(Debug, Default)]
struct Failures {
    /// The latest one.
    last: Option<Failure>,
    /// Since when every failure was a permanent one.
    refused_since: Option<Instant>,
}
