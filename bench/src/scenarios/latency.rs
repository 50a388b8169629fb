//! latency (issue #4): publish-to-client latency per client type, with the hub's own
//! latency histograms from `/metrics`.

use std::sync::atomic::Ordering;

use anyhow::{Context, Result};

use super::{open_receivers, Client, Ctx, Window};
use crate::load::Probe;
use crate::procs::{Server, Target};
use crate::receivers::Receiver;
use crate::report::{percentile_ms, Figure, Report};

const LATENCY_POINTS: [(&str, f64); 5] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
    ("max", 100.0),
];

/// latency (issue #4): publish-to-client at 10,000 readings/s from 1,000 devices (10/s each,
/// spread evenly) with 1,000 subscribers, subscriber `k` watching one device
/// (`sensors/d{k}/#`), one client type at a time: SSE and WebSocket on edgewatch, MQTT on both
/// (the broker-only floor of this box and harness). Latency = the client's receive time minus
/// the send time the device wrote into the reading (one clock, this process).
pub(crate) async fn latency(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let p = &ctx.p;
    let devices = p.latency_devices.max(1);
    let subs = p.latency_subscribers.max(1);
    for &device_rate in &p.latency_device_rates {
        let load = LatencyLoad {
            devices,
            subs,
            device_rate,
            rate: (devices as f64 * device_rate) as u64,
        };
        for target in ctx.targets() {
            let clients = latency_clients(ctx, target);
            if clients.is_empty() {
                continue;
            }
            let server = ctx
                .start(target, &format!("latency-{}", target.name()))
                .await?;
            for client in clients {
                let runs = latency_client(ctx, &server, client, &load).await?;
                push_latency_figures(report, target, client, &load, runs);
            }
            drop(server);
        }
    }
    Ok(())
}

/// The load of one latency pass.
struct LatencyLoad {
    devices: usize,
    subs: usize,
    /// Readings/s of each device.
    device_rate: f64,
    /// Readings/s of all devices.
    rate: u64,
}

impl LatencyLoad {
    /// Each reading matches the subscribers watching its device.
    fn per_reading(&self) -> f64 {
        self.subs as f64 / self.devices as f64
    }
}

/// The client types measured on `target`, less those `--latency-client` leaves out.
fn latency_clients(ctx: &Ctx, target: Target) -> Vec<Client> {
    let clients: Vec<Client> = match target {
        Target::Mosquitto => vec![Client::Mqtt],
        Target::Edgewatch => vec![Client::Sse, Client::WebSocket, Client::Mqtt],
    };
    clients
        .into_iter()
        .filter(|c| {
            ctx.p
                .latency_clients
                .as_ref()
                .map_or(true, |only| only.iter().any(|o| o == c.flag(target)))
        })
        .collect()
}

/// What the runs of one client type measured.
#[derive(Default)]
struct LatencyRuns {
    /// Per run: the latency at each of [`LATENCY_POINTS`].
    per_run: Vec<[f64; 5]>,
    /// Per run: received / expected deliveries.
    delivered: Vec<f64>,
    /// Every latency of every run (µs), for the curve.
    merged: Vec<u32>,
    sut: Vec<f64>,
    gen: Vec<f64>,
    /// Per run: the hub's own p99 per stage (SSE and WebSocket only).
    server_p99: Vec<String>,
    /// Per run: p99 of send -> hub and hub -> client (readings that carry `receivedAt`).
    splits: Vec<String>,
}

/// The runs of one client type against `server`.
async fn latency_client(
    ctx: &Ctx,
    server: &Server,
    client: Client,
    load: &LatencyLoad,
) -> Result<LatencyRuns> {
    let mut runs = LatencyRuns::default();
    for run in 0..ctx.p.runs {
        latency_run(ctx, server, client, load, run, &mut runs).await?;
    }
    Ok(runs)
}

/// One run: open the subscribers, run the devices, warm up, record over the window, wait for
/// the tail, then harvest the latencies into `runs`.
async fn latency_run(
    ctx: &Ctx,
    server: &Server,
    client: Client,
    load: &LatencyLoad,
    run: usize,
    runs: &mut LatencyRuns,
) -> Result<()> {
    let p = &ctx.p;
    let (devices, subs) = (load.devices, load.subs);
    let tag = format!("lat-{}-{run}", client.name());
    let receivers = open_receivers(server, client, subs, &tag, |k| {
        format!("sensors/d{}/#", k % devices)
    })
    .await
    .with_context(|| format!("opening {subs} {} subscribers", client.name()))?;
    let conns = crate::devices::DeviceFleet::connect(server.mqtt, devices, &tag).await?;
    let fleet = crate::devices::DeviceFleet::run(conns, load.device_rate, p.warmup + p.measure);
    tokio::time::sleep(p.warmup).await;
    // The sent count and the recording start and end at the same instants: a `/metrics`
    // request between them counted readings received but not sent (fractions above 1).
    let sent0 = fleet.stats.sent.load(Ordering::Relaxed);
    for r in &receivers {
        r.probe.start_recording();
    }
    let probes: Vec<&Probe> = receivers.iter().map(|r| &*r.probe).collect();
    let stages0 = server_stages(ctx, server, client).await;
    let w = Window::open(server, &probes);
    tokio::time::sleep(p.measure).await;
    let sent = fleet.stats.sent.load(Ordering::Relaxed) - sent0;
    for r in &receivers {
        r.probe.end_window();
    }
    let m = w.close(server, &probes);
    drop(fleet);
    // Let the last readings of the window arrive.
    tokio::time::sleep(p.latency_tail).await;
    if let (Some(a), Some(b)) = (stages0, server_stages(ctx, server, client).await) {
        runs.server_p99.push(a.p99_until(&b));
    }
    let (mut lat, split) = harvest(&receivers);
    runs.splits.extend(split);
    lat.sort_unstable();
    runs.delivered
        .push(lat.len() as f64 / (sent.max(1) as f64 * load.per_reading()));
    runs.per_run
        .push(LATENCY_POINTS.map(|(_, q)| percentile_ms(&lat, q)));
    runs.merged.extend_from_slice(&lat);
    runs.sut.push(m.sut_cores);
    runs.gen.push(m.gen_cores);
    drop(receivers);
    tokio::time::sleep(p.latency_tail / 2).await;
    Ok(())
}

/// Stops recording and takes every receiver's latencies (µs, unsorted), plus the p99 of the
/// split at the hub (send -> hub / hub -> client) when readings carried `receivedAt`.
fn harvest(receivers: &[Receiver]) -> (Vec<u32>, Option<String>) {
    let mut lat: Vec<u32> = Vec::new();
    let (mut to_hub, mut to_client) = (Vec::new(), Vec::new());
    for r in receivers {
        r.probe.recording.store(false, Ordering::Relaxed);
        lat.extend(r.probe.take_latencies());
        for (h, c) in r.probe.take_splits() {
            to_hub.push(h);
            to_client.push(c);
        }
    }
    if to_hub.is_empty() {
        return (lat, None);
    }
    let p99 = |v: &mut Vec<i32>| {
        v.sort_unstable();
        v[(v.len() - 1) * 99 / 100]
    };
    let split = format!("{} / {} ms", p99(&mut to_hub), p99(&mut to_client));
    (lat, Some(split))
}

/// The figures of one client type on one target, and its latency curve.
fn push_latency_figures(
    report: &mut Report,
    target: Target,
    client: Client,
    load: &LatencyLoad,
    mut runs: LatencyRuns,
) {
    let (t, c, rate) = (target.name(), client.name(), load.rate);
    for (k, (name, _)) in LATENCY_POINTS.iter().enumerate() {
        if *name == "p99.9" {
            continue;
        }
        let per_point = runs.per_run.iter().map(|a| a[k]).collect();
        let mut note = format!(
            "{} devices x {}/s, {} {c} subscribers on sensors/dN/#",
            load.devices, load.device_rate, load.subs
        );
        if *name == "p99" && !runs.server_p99.is_empty() {
            note.push_str(&format!(
                "; server side, p99 per run (histogram bucket bounds): {}",
                runs.server_p99.join(" / ")
            ));
        }
        if *name == "p99" && !runs.splits.is_empty() {
            note.push_str(&format!(
                "; split at the hub's receivedAt (wall clock, 1 ms resolution), p99 of \
                 send -> hub / hub -> client per run: {}",
                runs.splits.join(", ")
            ));
        }
        report.push(
            Figure::new(
                "latency",
                t,
                &format!("{c} {name} @{rate}/s"),
                "ms",
                per_point,
            )
            .note(note),
        );
    }
    report.push(Figure::new(
        "latency",
        t,
        &format!("{c} received fraction @{rate}/s"),
        "ratio",
        runs.delivered,
    ));
    report.push(Figure::new(
        "latency",
        t,
        &format!("{c} server CPU @{rate}/s"),
        "cores",
        runs.sut,
    ));
    report.push(Figure::new(
        "latency",
        t,
        &format!("{c} harness CPU @{rate}/s"),
        "cores",
        runs.gen,
    ));
    runs.merged.sort_unstable();
    let curve = LATENCY_POINTS
        .iter()
        .map(|(n, q)| ((*n).to_owned(), percentile_ms(&runs.merged, *q)))
        .collect();
    report
        .latency
        .entry(rate)
        .or_default()
        .insert(format!("{t} {c}"), curve);
}

/// The hub's own latency histograms at one moment: the writer's commit (apply + flush), link
/// to fan-out (includes the commit), and fan-out to socket write for the client's transport.
struct Stages {
    commit: Vec<(f64, u64)>,
    to_fanout: Vec<(f64, u64)>,
    to_write: Vec<(f64, u64)>,
}

async fn server_stages(ctx: &Ctx, server: &Server, client: Client) -> Option<Stages> {
    let transport = match client {
        Client::Sse => "sse",
        Client::WebSocket => "ws",
        Client::Mqtt => return None,
    };
    let base = format!("http://{}", server.http?);
    let text = ctx
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(Stages {
        commit: buckets(&text, "edgewatch_writer_commit_duration_seconds", ""),
        to_fanout: buckets(&text, "edgewatch_live_link_to_fanout_seconds", ""),
        to_write: buckets(
            &text,
            "edgewatch_live_fanout_to_write_seconds",
            &format!("transport=\"{transport}\""),
        ),
    })
}

/// Cumulative `(le, count)` pairs of a histogram whose labels include `labels`.
fn buckets(text: &str, name: &str, labels: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|l| l.contains(labels))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect()
}

impl Stages {
    /// "commit <= a ms, link to fan-out <= b ms, fan-out to write <= c ms" over what was
    /// observed between `self` and `later`.
    fn p99_until(&self, later: &Stages) -> String {
        let p99 = |a: &[(f64, u64)], b: &[(f64, u64)]| -> String {
            let diff: Vec<(f64, u64)> = b
                .iter()
                .map(|(le, n)| {
                    let before = a.iter().find(|(l, _)| l == le).map_or(0, |x| x.1);
                    (*le, n.saturating_sub(before))
                })
                .collect();
            let total = diff.last().map_or(0, |x| x.1);
            if total == 0 {
                return "-".into();
            }
            let need = (total as f64 * 0.99).ceil() as u64;
            match diff.iter().find(|(_, n)| *n >= need) {
                Some((le, _)) if le.is_finite() => format!("<= {} ms", le * 1000.0),
                _ => "> 10 s".into(),
            }
        };
        format!(
            "commit {}, link to fan-out {}, fan-out to write {}",
            p99(&self.commit, &later.commit),
            p99(&self.to_fanout, &later.to_fanout),
            p99(&self.to_write, &later.to_write)
        )
    }
}
