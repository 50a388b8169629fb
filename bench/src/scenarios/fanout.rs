//! fan-out (issue #4): idle watchers (memory per connection), then deliveries/s.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{open_receivers, Client, Ctx, Window};
use crate::load::Probe;
use crate::procs::{self, EdgewatchTuning};
use crate::report::{Figure, Report};

/// fan-out (issue #4), once per transport: `fanout_watchers` idle watchers on `sensors/#`
/// (memory per connection from the RSS growth while they open), then readings at
/// `fanout_rate` from `fanout_devices` devices, each delivered to every watcher (deliveries/s).
pub(crate) async fn fanout(ctx: &Ctx, report: &mut Report) -> Result<()> {
    for client in [Client::Sse, Client::WebSocket] {
        let mut runs = FanoutRuns::default();
        for run in 0..ctx.p.runs {
            fanout_run(ctx, client, run, &mut runs).await?;
        }
        push_fanout_figures(ctx, report, client, runs);
    }
    Ok(())
}

/// What the runs of one transport measured.
#[derive(Default)]
struct FanoutRuns {
    /// KiB of RSS per idle watcher.
    per_conn: Vec<f64>,
    /// Deliveries/s over all watchers.
    rates: Vec<f64>,
    /// Delivered / offered deliveries.
    completeness: Vec<f64>,
    sut: Vec<f64>,
    gen: Vec<f64>,
    /// Seconds to open every watcher.
    open_secs: Vec<f64>,
}

/// One run on a fresh server: open the watchers (memory), then offer readings (deliveries/s).
async fn fanout_run(ctx: &Ctx, client: Client, run: usize, runs: &mut FanoutRuns) -> Result<()> {
    let p = &ctx.p;
    let n = p.fanout_watchers.max(1);
    let c = client.name();
    let dir = ctx.work.join(format!("fanout-{c}-{run}"));
    let server = procs::start_edgewatch(
        &ctx.edgewatch,
        &dir,
        &dir.join("data"),
        &EdgewatchTuning {
            max_live_connections: Some(n as u32 + 1000),
            ..EdgewatchTuning::default()
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = server.rss_kib();
    let opened = Instant::now();
    let watchers = open_receivers(&server, client, n, &format!("fan-{c}-{run}"), |_| {
        "sensors/#".to_owned()
    })
    .await
    .with_context(|| format!("opening {n} {c} watchers"))?;
    runs.open_secs.push(opened.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = server.rss_kib();
    runs.per_conn
        .push(rss1.saturating_sub(rss0) as f64 / n as f64);
    let probes: Vec<&Probe> = watchers.iter().map(|r| &*r.probe).collect();
    let devices = p.fanout_devices.max(1);
    let conns =
        crate::devices::DeviceFleet::connect(server.mqtt, devices, &format!("fan{run}")).await?;
    let fleet = crate::devices::DeviceFleet::run(
        conns,
        p.fanout_rate / devices as f64,
        p.warmup + p.measure,
    );
    tokio::time::sleep(p.warmup).await;
    let w = Window::open(&server, &probes);
    tokio::time::sleep(p.measure).await;
    let m = w.close(&server, &probes);
    drop(fleet);
    let total: f64 = m.rates.iter().sum();
    runs.rates.push(total);
    runs.completeness.push(total / (p.fanout_rate * n as f64));
    runs.sut.push(m.sut_cores);
    runs.gen.push(m.gen_cores);
    drop(probes);
    drop(watchers);
    server.stop(Duration::from_secs(5)).await?;
    Ok(())
}

/// The figures of one transport.
fn push_fanout_figures(ctx: &Ctx, report: &mut Report, client: Client, runs: FanoutRuns) {
    let p = &ctx.p;
    let n = p.fanout_watchers.max(1);
    let c = client.name();
    report.push(
        Figure::new(
            "fanout",
            "edgewatch",
            &format!("deliveries/s, {n} {c} watchers"),
            "deliveries/s",
            runs.rates,
        )
        .note(format!(
            "{n} {c} on sensors/#, {} readings/s offered from {} devices ({} deliveries/s)",
            p.fanout_rate,
            p.fanout_devices,
            p.fanout_rate * n as f64
        )),
    );
    report.push(Figure::new(
        "fanout",
        "edgewatch",
        &format!("{c} delivered / offered"),
        "ratio",
        runs.completeness,
    ));
    report.push(
        Figure::new(
            "fanout",
            "edgewatch",
            &format!("memory per idle {c}"),
            "KiB",
            runs.per_conn,
        )
        .note(format!("RSS growth over opening {n}, divided by {n}")),
    );
    report.push(Figure::new(
        "fanout",
        "edgewatch",
        &format!("{c} server CPU"),
        "cores",
        runs.sut,
    ));
    report.push(Figure::new(
        "fanout",
        "edgewatch",
        &format!("{c} harness CPU"),
        "cores",
        runs.gen,
    ));
    report.push(Figure::new(
        "fanout",
        "edgewatch",
        &format!("time to open {n} {c}"),
        "s",
        runs.open_secs,
    ));
}
