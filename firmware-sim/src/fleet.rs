//! A fleet of simulated devices against one broker: staggered start, the run's end (duration,
//! count, shutdown), the progress line and the final [`Report`].

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use crate::config::FleetConfig;
use crate::device::{run_device, FleetShared};
use crate::payload::Format;
use crate::report::{process_cpu_time, FleetStats, Report};
use crate::verify::{Verifier, VerifyTarget};
use crate::SimError;

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
        Some(Verifier::start(verify_target(&config)).await?)
    } else {
        None
    };
    let shared = Arc::new(FleetShared::new(config));
    let tasks = spawn_devices(&shared, &shutdown);
    wait_for_devices(tasks, &shared, started).await;
    let elapsed = started.elapsed();
    let cfg = &shared.config;
    let qos1 = cfg.qos == 1;
    let mut report = counts_report(cfg, &shared.stats);
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

/// What the `verify` subscriber needs of the fleet's config.
fn verify_target(cfg: &FleetConfig) -> VerifyTarget {
    VerifyTarget {
        broker_host: cfg.broker_host.clone(),
        broker_port: cfg.broker_port,
        username: cfg.username.clone(),
        password: cfg.password.clone(),
        id_prefix: cfg.id_prefix.clone(),
        metrics: cfg.metrics.clone(),
        timestamps: cfg.format != Format::Number,
    }
}

/// Starts one task per device, each at its connect slot (`connect_rate` per second).
fn spawn_devices(shared: &Arc<FleetShared>, shutdown: &CancellationToken) -> JoinSet<()> {
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
    tasks
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
