//! A fleet of simulated devices against one broker: staggered connects, then sending for the
//! run's duration (or count, or until shutdown), the progress line and the final [`Report`].
//!
//! Connecting is not part of the duration: devices connect at `connect_rate` per second, and
//! sending starts once all are connected, or `connect_timeout` after the last device's connect
//! slot with some still unconnected (they keep trying; the report says how many and why). A
//! broker that refuses the first connections ends the run with [`SimError::Connect`]: at once
//! when nothing listens on the port, after 3 s of refusals of the login (a broker's login
//! backoff refuses even a right password for a moment); so does a connect timeout with no
//! device connected.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use crate::config::FleetConfig;
use crate::device::run_device;
use crate::payload::Format;
use crate::report::{process_cpu_time, FleetStats, Report};
use crate::shape::Shape;
use crate::shared::FleetShared;
use crate::verify::{Verifier, VerifyTarget};
use crate::SimError;

/// How long resolving the broker's host name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the fleet: connects the devices, then sends until `duration` passes, `max` publishes
/// were produced, or `shutdown` is cancelled, then lets devices deliver what they hold (bounded
/// by `drain_timeout`) and returns the report. Without `duration` and `max` only `shutdown`
/// ends the run.
pub async fn run_fleet(
    config: FleetConfig,
    shutdown: CancellationToken,
) -> Result<Report, SimError> {
    config.validate()?;
    raise_open_file_limit(u64::from(config.devices) + 256);
    check_resolves(&config).await?;
    let started = Instant::now();
    let verifier = if config.verify {
        Some(Verifier::start(verify_target(&config)).await?)
    } else {
        None
    };
    let shared = Arc::new(FleetShared::new(config));
    let mut tasks = spawn_devices(&shared, &shutdown);
    let connected = match wait_for_connects(&shared, started, &shutdown).await {
        Ok(connected) => connected,
        Err(error) => {
            // No device is connected: nothing to deliver or to say goodbye with.
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            if let Some(verifier) = verifier {
                verifier.abandon();
            }
            return Err(error);
        }
    };
    let sending_started = Instant::now();
    shared.start_sending(sending_started);
    let cpu_before = process_cpu_time();
    wait_for_devices(tasks, &shared, started).await;
    // The rate is per second of sending: neither connecting, nor devices that waited in vain
    // to deliver (the drain timeout), nor the verify wait count.
    let sending = shared.sending_time();
    let cpu = process_cpu_time().saturating_sub(cpu_before);
    let cfg = &shared.config;
    let qos1 = cfg.qos == 1;
    let mut report = counts_report(cfg, &shared.stats);
    report.connected_at_start = connected;
    report.connect_s = sending_started.duration_since(started).as_secs_f64();
    if connected < u64::from(cfg.devices) {
        report.connect_failure = Some(
            shared
                .last_failure()
                .map_or_else(|| "no answer yet".to_owned(), |f| f.reason),
        );
    }
    if let Some(verifier) = verifier {
        let expected = if qos1 {
            report.acknowledged
        } else {
            report.sent
        };
        report.verify = Some(verifier.finish(expected).await);
    }
    report.finish(sending, cpu, qos1);
    Ok(report)
}

/// Resolves the broker's host name once, so a misspelt one is said at once.
async fn check_resolves(cfg: &FleetConfig) -> Result<(), SimError> {
    let host = cfg.broker_host.as_str();
    let lookup = tokio::net::lookup_host((host, cfg.broker_port));
    let reason = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(mut addrs)) => match addrs.next() {
            Some(_) => return Ok(()),
            None => format!("cannot resolve {host}: it has no address"),
        },
        Ok(Err(e)) => format!("cannot resolve {host}: {e}"),
        Err(_) => format!(
            "cannot resolve {host}: no answer within {} s",
            RESOLVE_TIMEOUT.as_secs()
        ),
    };
    Err(SimError::Connect { reason })
}

/// What the `verify` subscriber needs of the fleet's config.
fn verify_target(cfg: &FleetConfig) -> VerifyTarget {
    VerifyTarget {
        broker_host: cfg.broker_host.clone(),
        broker_port: cfg.broker_port,
        username: cfg.username.clone(),
        password: cfg.password.clone(),
        id_prefix: cfg.id_prefix.clone(),
        metrics: cfg.metrics.clone(),
        shape: cfg.shape,
        timestamps: cfg.shape == Shape::Native && cfg.format != Format::Number,
    }
}

/// Time between two devices' connect slots.
fn connect_slot(cfg: &FleetConfig) -> Duration {
    Duration::from_secs_f64(1.0 / f64::from(cfg.connect_rate.max(1)))
}

/// Starts one task per device, each at its connect slot (`connect_rate` per second).
fn spawn_devices(shared: &Arc<FleetShared>, shutdown: &CancellationToken) -> JoinSet<()> {
    let cfg = &shared.config;
    let devices_token = shutdown.child_token();
    let mut tasks = JoinSet::new();
    let slot = connect_slot(cfg);
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
    tasks
}

/// Waits until every device connected (`Ok` with how many are), the connect timeout passed
/// with some connected, or `shutdown`. `Err` when the broker refused the first connections, or
/// none connected in time. Prints `connecting N/M` once per second if asked.
async fn wait_for_connects(
    shared: &FleetShared,
    started: Instant,
    shutdown: &CancellationToken,
) -> Result<u64, SimError> {
    let (cfg, stats) = (&shared.config, &shared.stats);
    let devices = u64::from(cfg.devices);
    let deadline = started + connect_slot(cfg) * (cfg.devices - 1) + cfg.connect_timeout;
    let mut progress = tokio::time::interval_at(
        Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut printed = false;
    let outcome = loop {
        let connected = FleetStats::get(&stats.connected);
        if connected >= devices || shutdown.is_cancelled() {
            break Ok(connected);
        }
        // Refusals end the run while no device got in (after their settle time).
        let mut wake_at = deadline;
        if let (false, Some((failure, final_at))) = (shared.any_connected(), shared.refusal()) {
            if Instant::now() >= final_at {
                break Err(SimError::Connect {
                    reason: failure.reason,
                });
            }
            wake_at = wake_at.min(final_at);
        }
        if Instant::now() >= deadline {
            break not_all_connected(shared, connected, started);
        }
        tokio::select! {
            () = shared.connect_events.notified() => {}
            () = tokio::time::sleep_until(wake_at) => {}
            () = shutdown.cancelled() => {}
            _ = progress.tick(), if cfg.progress => {
                printed = true;
                let _ = write!(
                    std::io::stderr(),
                    "\r[{:>5.0}s] connecting {connected}/{devices}  errors {}   ",
                    started.elapsed().as_secs_f64(),
                    FleetStats::get(&stats.errors),
                );
            }
        }
    };
    if printed {
        let _ = writeln!(std::io::stderr());
    }
    outcome
}

/// The connect timeout passed: with some devices connected sending starts (said on stderr);
/// with none the run fails.
fn not_all_connected(
    shared: &FleetShared,
    connected: u64,
    started: Instant,
) -> Result<u64, SimError> {
    let cfg = &shared.config;
    let waited = started.elapsed().as_secs_f64();
    let why = shared
        .last_failure()
        .map_or_else(|| "no answer".to_owned(), |f| f.reason);
    if connected == 0 {
        return Err(SimError::Connect {
            reason: format!("no device connected within {waited:.0} s: {why}"),
        });
    }
    let text = format!(
        "{connected} of {} devices connected within {waited:.1} s (connect timeout {} s after \
         the last connect slot); sending starts, the others keep trying (last failure: {why})",
        cfg.devices,
        cfg.connect_timeout.as_secs_f64(),
    );
    if cfg.progress {
        let _ = writeln!(std::io::stderr(), "warning: {text}");
    } else {
        tracing::warn!("{text}");
    }
    Ok(connected)
}

/// Waits until every device task ended, printing the progress line once per second if asked.
async fn wait_for_devices(mut tasks: JoinSet<()>, shared: &FleetShared, started: Instant) {
    let (cfg, stats) = (&shared.config, &shared.stats);
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
}

/// The report's counters, read from the fleet's stats once the devices ended.
fn counts_report(cfg: &FleetConfig, stats: &FleetStats) -> Report {
    Report {
        mode: "fleet",
        shape: cfg.shape,
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
    }
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
