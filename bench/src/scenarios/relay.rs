//! relay: N publishers -> 1 MQTT subscriber; fullpath: edgewatch storing and delivering to
//! SSE and WebSocket vs Mosquitto relaying.

use std::time::Duration;

use anyhow::{Context, Result};
use rumqttc::QoS;

use super::stored::metric;
use super::{loss_after_drain, mib, published, qos_name, Ctx, Window};
use crate::load::Probe;
use crate::procs::{Server, Target};
use crate::publishers::Fleet;
use crate::receivers::{self, Receiver};
use crate::report::{Figure, Report};

/// Messages MQTT subscribers skipped in rumqttd's router log so far (edgewatch only).
async fn router_skipped(ctx: &Ctx, server: &Server) -> Option<f64> {
    let base = format!("http://{}", server.http?);
    metric(ctx, &base, "edgewatch_mqtt_subscriber_skipped_total")
        .await
        .ok()
}

/// relay: N publishers -> 1 MQTT subscriber, max rate, QoS0 and QoS1.
pub(crate) async fn relay(ctx: &Ctx, report: &mut Report, qos_list: &[QoS]) -> Result<()> {
    let p = &ctx.p;
    for &qos in qos_list {
        let q = qos_name(qos);
        for target in ctx.targets() {
            let server = ctx
                .start(target, &format!("relay-{q}-{}", target.name()))
                .await?;
            let (mut rates, mut sut, mut gen, mut per10k) = (vec![], vec![], vec![], vec![]);
            let (mut lost, mut skipped) = (vec![], vec![]);
            for run in 0..p.runs {
                let skipped_before = router_skipped(ctx, &server).await;
                let sub =
                    receivers::mqtt_subscriber(server.mqtt, qos, &format!("relay{run}")).await?;
                let spec = ctx.live_spec(p.relay_publishers, qos, None, p.warmup + p.measure);
                let fleet = Fleet::start(server.mqtt, &spec, &format!("relay{run}")).await?;
                tokio::time::sleep(p.warmup).await;
                let w = Window::open(&server, &[&sub.probe]);
                tokio::time::sleep(p.measure).await;
                let m = w.close(&server, &[&sub.probe]);
                lost.extend(loss_after_drain(&fleet, &[&sub.probe], qos).await);
                if let (Some(before), Some(after)) =
                    (skipped_before, router_skipped(ctx, &server).await)
                {
                    skipped.push(100.0 * (after - before) / published(&fleet, qos).max(1) as f64);
                }
                drop(fleet);
                drop(sub);
                rates.push(m.rates[0]);
                sut.push(m.sut_cores);
                gen.push(m.gen_cores);
                per10k.push(m.gen_cores / (m.rates[0].max(1.0) / 10_000.0));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let t = target.name();
            report.push(
                Figure::new("relay", t, &format!("delivered {q}"), "readings/s", rates).note(
                    format!(
                        "{} publishers at max rate -> 1 MQTT subscriber on sensors/#",
                        p.relay_publishers
                    ),
                ),
            );
            report.push(
                Figure::new("relay", t, &format!("not delivered {q}"), "%", lost).note(
                    "of what the broker accepted (QoS1: acknowledged; QoS0: written), counted after the subscriber drained",
                ),
            );
            if !skipped.is_empty() {
                report.push(
                    Figure::new("relay", t, &format!("skipped by the router log {q}"), "%", skipped)
                        .note("of what the broker accepted: messages the subscriber's cursor jumped over in rumqttd's log for sensors/# (edgewatch_mqtt_subscriber_skipped_total)"),
                );
            }
            report.push(Figure::new(
                "relay",
                t,
                &format!("server CPU {q}"),
                "cores",
                sut,
            ));
            report.push(Figure::new(
                "relay",
                t,
                &format!("harness CPU {q}"),
                "cores",
                gen,
            ));
            report.push(Figure::new(
                "relay",
                t,
                &format!("harness CPU per 10k/s {q}"),
                "cores",
                per10k,
            ));
            drop(server);
        }
    }
    Ok(())
}

/// full path: edgewatch storing + one SSE + one WebSocket subscriber vs Mosquitto relaying to
/// one MQTT subscriber, QoS1, max rate; also the footprint under this load.
pub(crate) async fn fullpath(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let mut by_target: Vec<(Target, Vec<f64>)> = Vec::new();
    for target in ctx.targets() {
        let rates = fullpath_target(ctx, target, report).await?;
        by_target.push((target, rates));
    }
    if let [(Target::Mosquitto, m), (Target::Edgewatch, e)] = by_target.as_slice() {
        let ratios = e.iter().zip(m).map(|(e, m)| e / m.max(1.0)).collect();
        report.push(
            Figure::new(
                "fullpath",
                "edgewatch",
                "ratio vs mosquitto (goal >= 1.0)",
                "x",
                ratios,
            )
            .note("per run: edgewatch full path rate / mosquitto relay rate"),
        );
    }
    Ok(())
}

/// What one full-path run measured.
struct FullpathRun {
    /// RSS (MiB) 0.7 s before the run.
    idle: f64,
    /// RSS (MiB) at the end of the measurement window.
    loaded: f64,
    /// Delivered readings/s of each receiver (edgewatch: SSE, then WebSocket).
    rates: Vec<f64>,
    /// What each receiver never got, % of what was published ([`loss_after_drain`]).
    lost: Vec<f64>,
    sut_cores: f64,
}

/// The full-path runs on one target, on one fresh server; pushes their figures and returns the
/// delivered rates (the slower receiver of each run).
async fn fullpath_target(ctx: &Ctx, target: Target, report: &mut Report) -> Result<Vec<f64>> {
    let p = &ctx.p;
    let server = ctx
        .start(target, &format!("fullpath-{}", target.name()))
        .await?;
    let (mut rates, mut sse_rates, mut ws_rates) = (vec![], vec![], vec![]);
    let (mut idle, mut loaded, mut sut, mut lost) = (vec![], vec![], vec![], vec![]);
    for run in 0..p.runs {
        let r = fullpath_run(ctx, &server, target, run).await?;
        lost.push(r.lost.iter().copied().fold(0.0, f64::max));
        idle.push(r.idle);
        loaded.push(r.loaded);
        let slowest = r.rates.iter().copied().fold(f64::INFINITY, f64::min);
        rates.push(slowest);
        if target == Target::Edgewatch {
            sse_rates.push(r.rates[0]);
            ws_rates.push(r.rates[1]);
        }
        sut.push(r.sut_cores);
    }
    let t = target.name();
    let what = match target {
        Target::Mosquitto => "relay to 1 MQTT subscriber",
        Target::Edgewatch => "stored + 1 SSE + 1 WebSocket (slower of the two)",
    };
    report.push(
        Figure::new("fullpath", t, "delivered QoS1", "readings/s", rates.clone()).note(format!(
            "{} publishers at max rate, QoS1; {what}",
            p.relay_publishers
        )),
    );
    if target == Target::Edgewatch {
        report.push(Figure::new(
            "fullpath",
            t,
            "SSE delivered",
            "readings/s",
            sse_rates,
        ));
        report.push(Figure::new(
            "fullpath",
            t,
            "WebSocket delivered",
            "readings/s",
            ws_rates,
        ));
    }
    report.push(
        Figure::new("fullpath", t, "not delivered", "%", lost).note(
            "the receiver that missed most, of what the broker acknowledged, after it drained",
        ),
    );
    report.push(Figure::new("fullpath", t, "server CPU", "cores", sut));
    report.push(
        Figure::new("footprint", t, "RSS idle between full-path runs", "MiB", idle)
            .note("0.7 s before each run; after the first run this includes memory kept from the previous load"),
    );
    report.push(Figure::new(
        "footprint",
        t,
        "RSS under full-path load",
        "MiB",
        loaded,
    ));
    drop(server);
    Ok(rates)
}

/// One full-path run: the receivers (MQTT on Mosquitto; SSE and WebSocket on edgewatch), a
/// QoS1 fleet at max rate, warm-up, then the measurement window.
async fn fullpath_run(
    ctx: &Ctx,
    server: &Server,
    target: Target,
    run: usize,
) -> Result<FullpathRun> {
    let p = &ctx.p;
    let qos = QoS::AtLeastOnce;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let idle = mib(server.rss_kib());
    let receivers: Vec<Receiver> = match target {
        Target::Mosquitto => {
            vec![receivers::mqtt_subscriber(server.mqtt, qos, &format!("full{run}")).await?]
        }
        Target::Edgewatch => vec![
            receivers::sse_client(&ctx.http, &server.http_base()).await?,
            receivers::ws_client(server.http.context("http")?).await?,
        ],
    };
    let probes: Vec<&Probe> = receivers.iter().map(|r| &*r.probe).collect();
    let spec = ctx.live_spec(p.relay_publishers, qos, None, p.warmup + p.measure);
    let fleet = Fleet::start(server.mqtt, &spec, &format!("full{run}")).await?;
    tokio::time::sleep(p.warmup).await;
    let w = Window::open(server, &probes);
    tokio::time::sleep(p.measure).await;
    let loaded = mib(server.rss_kib());
    let m = w.close(server, &probes);
    let lost = loss_after_drain(&fleet, &probes, qos).await;
    drop(fleet);
    drop(receivers);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(FullpathRun {
        idle,
        loaded,
        rates: m.rates,
        lost,
        sut_cores: m.sut_cores,
    })
}
