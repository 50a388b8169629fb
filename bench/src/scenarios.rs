//! The scenarios. Each one starts what it needs, runs its load loops bounded in count and time,
//! and pushes figures (median, min, max of its runs) into the report.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use rumqttc::QoS;

use crate::load::{self, Fleet, LoadSpec, Probe, Receiver, Shape};
use crate::procs::{self, EdgewatchTuning, Server, Target};
use crate::report::{percentile_ms, Figure, Report};

/// Sizes and times of one mode (`--smoke`, `--quick` or full).
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub(crate) mode: &'static str,
    pub(crate) runs: usize,
    /// Runs of the one-shot measurements that take a whole load each (the `history` preloads
    /// and ingest loads, the decisive `sim` steps, `store_bench`): `runs` in full mode, 1 in
    /// the quick and smoke modes (which stay short).
    pub(crate) repeat_runs: usize,
    pub(crate) warmup: Duration,
    pub(crate) measure: Duration,
    pub(crate) relay_publishers: usize,
    /// `latency`: devices publishing, each to its own topic `sensors/d{k}/temperature`.
    pub(crate) latency_devices: usize,
    /// `latency`: readings/s of each device, one pass per entry (total = devices x rate).
    pub(crate) latency_device_rates: Vec<f64>,
    /// `latency`: subscribers of each client type, subscriber `k` on `sensors/d{k % devices}/#`.
    pub(crate) latency_subscribers: usize,
    /// `latency`: only these clients (`mosquitto`, `sse`, `ws`, `mqtt`); `None` is all of them.
    pub(crate) latency_clients: Option<Vec<String>>,
    /// `latency`: wait after a window for its last readings to arrive.
    pub(crate) latency_tail: Duration,
    /// `fanout`: idle watchers of each transport on `sensors/#` (memory, then deliveries/s).
    pub(crate) fanout_watchers: usize,
    /// `fanout`: readings/s offered to the watchers, from `fanout_devices` devices.
    pub(crate) fanout_rate: f64,
    pub(crate) fanout_devices: usize,
    pub(crate) history_readings: u64,
    pub(crate) history_publishers: usize,
    pub(crate) history_timeout: Duration,
    pub(crate) ingest_secs: Duration,
    pub(crate) preload_rate: f64,
    /// `sim`: first offered rate of the ladder, doubled until `edgewatch sim` falls short.
    pub(crate) sim_start_rate: f64,
    /// `sim`: highest offered rate tried.
    pub(crate) sim_max_rate: f64,
    /// `sim`: `--duration` of each step.
    pub(crate) sim_secs: f64,
}

impl Params {
    pub(crate) fn smoke() -> Self {
        Self {
            mode: "smoke",
            runs: 1,
            repeat_runs: 1,
            warmup: Duration::from_millis(500),
            measure: Duration::from_secs(1),
            relay_publishers: 4,
            latency_devices: 20,
            latency_device_rates: vec![10.0],
            latency_subscribers: 20,
            latency_clients: None,
            latency_tail: Duration::from_millis(300),
            fanout_watchers: 20,
            fanout_rate: 100.0,
            fanout_devices: 10,
            history_readings: 10_000,
            history_publishers: 100,
            history_timeout: Duration::from_secs(30),
            ingest_secs: Duration::from_secs(2),
            preload_rate: 10_000.0,
            sim_start_rate: 5_000.0,
            sim_max_rate: 10_000.0,
            sim_secs: 2.0,
        }
    }

    pub(crate) fn quick() -> Self {
        Self {
            mode: "quick",
            runs: 3,
            repeat_runs: 1,
            warmup: Duration::from_millis(700),
            measure: Duration::from_millis(1500),
            relay_publishers: 10,
            latency_devices: 1000,
            latency_device_rates: vec![10.0],
            latency_subscribers: 1000,
            latency_clients: None,
            latency_tail: Duration::from_millis(300),
            fanout_watchers: 10_000,
            fanout_rate: 60.0,
            fanout_devices: 100,
            history_readings: 300_000,
            history_publishers: 1000,
            history_timeout: Duration::from_secs(120),
            ingest_secs: Duration::from_secs(6),
            preload_rate: 40_000.0,
            sim_start_rate: 20_000.0,
            sim_max_rate: 320_000.0,
            sim_secs: 1.5,
        }
    }

    pub(crate) fn full() -> Self {
        Self {
            mode: "full",
            runs: 3,
            repeat_runs: 3,
            warmup: Duration::from_secs(2),
            measure: Duration::from_secs(10),
            relay_publishers: 10,
            latency_devices: 1000,
            latency_device_rates: vec![1.0, 10.0, 50.0],
            latency_subscribers: 1000,
            latency_clients: None,
            latency_tail: Duration::from_secs(1),
            fanout_watchers: 10_000,
            fanout_rate: 100.0,
            fanout_devices: 100,
            history_readings: 10_000_000,
            history_publishers: 1000,
            history_timeout: Duration::from_secs(1200),
            ingest_secs: Duration::from_secs(20),
            preload_rate: 80_000.0,
            sim_start_rate: 5_000.0,
            sim_max_rate: 640_000.0,
            sim_secs: 10.0,
        }
    }
}

/// What every scenario needs.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) edgewatch: PathBuf,
    pub(crate) mosquitto: Option<PathBuf>,
    pub(crate) work: PathBuf,
    pub(crate) p: Params,
    pub(crate) http: reqwest::Client,
    /// RSS (MiB) of every freshly started server, one second after it was ready.
    pub(crate) fresh_rss: std::sync::Mutex<Vec<(Target, f64)>>,
}

impl Ctx {
    /// Footprint figures from the fresh-start RSS samples of all scenarios.
    pub(crate) fn push_fresh_rss(&self, report: &mut Report) {
        let samples = self.fresh_rss.lock().map(|v| v.clone()).unwrap_or_default();
        for target in self.targets() {
            let runs: Vec<f64> = samples
                .iter()
                .filter(|s| s.0 == target)
                .map(|s| s.1)
                .collect();
            if !runs.is_empty() {
                report.push(
                    Figure::new(
                        "footprint",
                        target.name(),
                        "RSS idle (fresh start)",
                        "MiB",
                        runs,
                    )
                    .note("1 s after ready, before any load; one sample per server started"),
                );
            }
        }
    }

    fn targets(&self) -> Vec<Target> {
        let mut t = Vec::new();
        if self.mosquitto.is_some() {
            t.push(Target::Mosquitto);
        }
        t.push(Target::Edgewatch);
        t
    }

    async fn start(&self, target: Target, name: &str) -> Result<Server> {
        let server = self.start_inner(target, name).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(mut v) = self.fresh_rss.lock() {
            v.push((target, mib(server.rss_kib())));
        }
        Ok(server)
    }

    async fn start_inner(&self, target: Target, name: &str) -> Result<Server> {
        let dir = self.work.join(name);
        match target {
            Target::Edgewatch => {
                procs::start_edgewatch(
                    &self.edgewatch,
                    &dir,
                    &dir.join("data"),
                    &EdgewatchTuning::default(),
                )
                .await
            }
            Target::Mosquitto => {
                let bin = self.mosquitto.as_deref().context("no mosquitto")?;
                procs::start_mosquitto(bin, &dir).await
            }
        }
    }

    fn live_spec(
        &self,
        publishers: usize,
        qos: QoS,
        rate: Option<f64>,
        secs: Duration,
    ) -> LoadSpec {
        LoadSpec {
            publishers,
            qos,
            rate,
            duration: secs,
            max_messages: match rate {
                Some(r) => (r * secs.as_secs_f64()) as u64 + publishers as u64,
                None => 50_000_000,
            },
            shape: Shape::Live,
        }
    }
}

/// Counts, server CPU and harness CPU over a measurement window.
struct Window {
    started: Instant,
    counts: Vec<u64>,
    sut_cpu: f64,
    own_cpu: f64,
}

struct Measured {
    rates: Vec<f64>,
    sut_cores: f64,
    gen_cores: f64,
}

impl Window {
    fn open(server: &Server, probes: &[&Probe]) -> Self {
        Self {
            started: Instant::now(),
            counts: probes
                .iter()
                .map(|p| p.count.load(Ordering::Relaxed))
                .collect(),
            sut_cpu: server.cpu_secs(),
            own_cpu: procs::own_cpu_secs(),
        }
    }

    fn close(self, server: &Server, probes: &[&Probe]) -> Measured {
        let secs = self.started.elapsed().as_secs_f64();
        Measured {
            rates: probes
                .iter()
                .zip(&self.counts)
                .map(|(p, c0)| (p.count.load(Ordering::Relaxed) - c0) as f64 / secs)
                .collect(),
            sut_cores: (server.cpu_secs() - self.sut_cpu) / secs,
            gen_cores: (procs::own_cpu_secs() - self.own_cpu) / secs,
        }
    }
}

fn qos_name(qos: QoS) -> &'static str {
    match qos {
        QoS::AtMostOnce => "QoS0",
        QoS::AtLeastOnce => "QoS1",
        QoS::ExactlyOnce => "QoS2",
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
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
            for run in 0..p.runs {
                let sub = load::mqtt_subscriber(server.mqtt, qos, &format!("relay{run}")).await?;
                let spec = ctx.live_spec(p.relay_publishers, qos, None, p.warmup + p.measure);
                let fleet = Fleet::start(server.mqtt, &spec, &format!("relay{run}")).await?;
                tokio::time::sleep(p.warmup).await;
                let w = Window::open(&server, &[&sub.probe]);
                tokio::time::sleep(p.measure).await;
                let m = w.close(&server, &[&sub.probe]);
                fleet.stop();
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
    let p = &ctx.p;
    let qos = QoS::AtLeastOnce;
    let mut by_target: Vec<(Target, Vec<f64>)> = Vec::new();
    for target in ctx.targets() {
        let server = ctx
            .start(target, &format!("fullpath-{}", target.name()))
            .await?;
        let (mut rates, mut sse_rates, mut ws_rates) = (vec![], vec![], vec![]);
        let (mut idle, mut loaded, mut sut) = (vec![], vec![], vec![]);
        for run in 0..p.runs {
            tokio::time::sleep(Duration::from_millis(700)).await;
            idle.push(mib(server.rss_kib()));
            let receivers: Vec<Receiver> = match target {
                Target::Mosquitto => {
                    vec![load::mqtt_subscriber(server.mqtt, qos, &format!("full{run}")).await?]
                }
                Target::Edgewatch => vec![
                    load::sse_client(&ctx.http, &server.http_base()).await?,
                    load::ws_client(server.http.context("http")?).await?,
                ],
            };
            let probes: Vec<&Probe> = receivers.iter().map(|r| &*r.probe).collect();
            let spec = ctx.live_spec(p.relay_publishers, qos, None, p.warmup + p.measure);
            let fleet = Fleet::start(server.mqtt, &spec, &format!("full{run}")).await?;
            tokio::time::sleep(p.warmup).await;
            let w = Window::open(&server, &probes);
            tokio::time::sleep(p.measure).await;
            loaded.push(mib(server.rss_kib()));
            let m = w.close(&server, &probes);
            fleet.stop();
            drop(fleet);
            let slowest = m.rates.iter().copied().fold(f64::INFINITY, f64::min);
            rates.push(slowest);
            if target == Target::Edgewatch {
                sse_rates.push(m.rates[0]);
                ws_rates.push(m.rates[1]);
            }
            sut.push(m.sut_cores);
            drop(receivers);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let t = target.name();
        let what = match target {
            Target::Mosquitto => "relay to 1 MQTT subscriber",
            Target::Edgewatch => "stored + 1 SSE + 1 WebSocket (slower of the two)",
        };
        report.push(
            Figure::new("fullpath", t, "delivered QoS1", "readings/s", rates.clone()).note(
                format!(
                    "{} publishers at max rate, QoS1; {what}",
                    p.relay_publishers
                ),
            ),
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
        by_target.push((target, rates));
        drop(server);
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

/// Binary sizes (one measurement: they do not vary between runs).
pub(crate) fn binary_sizes(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len() as f64 / 1_048_576.0);
    report.push(Figure::new(
        "footprint",
        "edgewatch",
        "binary size (release, as built)",
        "MiB",
        vec![size(&ctx.edgewatch)?],
    ));
    let stripped = ctx.work.join("edgewatch.stripped");
    let ok = std::process::Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&ctx.edgewatch)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        report.push(Figure::new(
            "footprint",
            "edgewatch",
            "binary size (stripped)",
            "MiB",
            vec![size(&stripped)?],
        ));
    }
    if let Some(m) = &ctx.mosquitto {
        report.push(
            Figure::new(
                "footprint",
                "mosquitto",
                "binary size (Debian, stripped)",
                "MiB",
                vec![size(m)?],
            )
            .note("plus shared libraries (libmosquitto, libssl, libcjson, ...), not counted"),
        );
    }
    Ok(())
}

const LATENCY_POINTS: [(&str, f64); 5] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
    ("max", 100.0),
];

/// Opens `n` receivers of one client type, at most 64 connecting at once; receiver `k` watches
/// `filter(k)`.
async fn open_receivers(
    server: &Server,
    client: Client,
    n: usize,
    tag: &str,
    filter: impl Fn(usize) -> String,
) -> Result<Vec<Receiver>> {
    let http = server.http;
    let mqtt = server.mqtt;
    let opened: Vec<Result<Receiver>> = futures::stream::iter(0..n)
        .map(|k| {
            let f = filter(k);
            async move {
                match client {
                    Client::Mqtt => {
                        load::mqtt_watch(mqtt, QoS::AtMostOnce, &format!("{tag}-{k}"), &f).await
                    }
                    Client::Sse => load::sse_watch(http.context("http")?, &f).await,
                    Client::WebSocket => load::ws_watch(http.context("http")?, &f).await,
                }
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    opened.into_iter().collect()
}

/// A live client type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Mqtt,
    Sse,
    WebSocket,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::Mqtt => "MQTT",
            Client::Sse => "SSE",
            Client::WebSocket => "WebSocket",
        }
    }

    /// The value of `--latency-client` that selects this client on `target`.
    fn flag(self, target: Target) -> &'static str {
        match (self, target) {
            (Client::Mqtt, Target::Mosquitto) => "mosquitto",
            (Client::Mqtt, Target::Edgewatch) => "mqtt",
            (Client::Sse, _) => "sse",
            (Client::WebSocket, _) => "ws",
        }
    }
}

/// latency (issue #4): publish-to-client at 10,000 readings/s from 1,000 devices (10/s each,
/// spread evenly) with 1,000 subscribers, subscriber `k` watching one device
/// (`sensors/d{k}/#`), one client type at a time: SSE and WebSocket on edgewatch, MQTT on both
/// (the broker-only floor of this box and harness). Latency = the client's receive time minus
/// the send time the device wrote into the reading (one clock, this process).
pub(crate) async fn latency(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let p = &ctx.p;
    let devices = p.latency_devices.max(1);
    let subs = p.latency_subscribers.max(1);
    // Each reading matches the subscribers watching its device.
    let per_reading = subs as f64 / devices as f64;
    for &device_rate in &p.latency_device_rates {
        let rate = (devices as f64 * device_rate) as u64;
        for target in ctx.targets() {
            let clients: Vec<Client> = match target {
                Target::Mosquitto => vec![Client::Mqtt],
                Target::Edgewatch => vec![Client::Sse, Client::WebSocket, Client::Mqtt],
            };
            let clients: Vec<Client> = clients
                .into_iter()
                .filter(|c| {
                    p.latency_clients
                        .as_ref()
                        .map_or(true, |only| only.iter().any(|o| o == c.flag(target)))
                })
                .collect();
            if clients.is_empty() {
                continue;
            }
            let server = ctx
                .start(target, &format!("latency-{}", target.name()))
                .await?;
            for client in clients {
                let mut per_run: Vec<[f64; 5]> = vec![];
                let mut delivered: Vec<f64> = vec![];
                let mut merged: Vec<u32> = vec![];
                let (mut sut, mut gen) = (vec![], vec![]);
                let mut server_p99: Vec<String> = vec![];
                let mut splits: Vec<String> = vec![];
                for run in 0..p.runs {
                    let tag = format!("lat-{}-{run}", client.name());
                    let receivers = open_receivers(&server, client, subs, &tag, |k| {
                        format!("sensors/d{}/#", k % devices)
                    })
                    .await
                    .with_context(|| format!("opening {subs} {} subscribers", client.name()))?;
                    let conns = load::DeviceFleet::connect(server.mqtt, devices, &tag).await?;
                    let fleet = load::DeviceFleet::run(conns, device_rate, p.warmup + p.measure);
                    tokio::time::sleep(p.warmup).await;
                    for r in &receivers {
                        r.probe.start_recording();
                    }
                    let probes: Vec<&Probe> = receivers.iter().map(|r| &*r.probe).collect();
                    let stages0 = server_stages(ctx, &server, client).await;
                    let w = Window::open(&server, &probes);
                    let sent0 = fleet.stats.sent.load(Ordering::Relaxed);
                    tokio::time::sleep(p.measure).await;
                    let sent = fleet.stats.sent.load(Ordering::Relaxed) - sent0;
                    let m = w.close(&server, &probes);
                    drop(fleet);
                    // Let the last readings of the window arrive.
                    tokio::time::sleep(p.latency_tail).await;
                    if let (Some(a), Some(b)) = (stages0, server_stages(ctx, &server, client).await)
                    {
                        server_p99.push(a.p99_until(&b));
                    }
                    let mut lat: Vec<u32> = Vec::new();
                    let (mut to_hub, mut to_client) = (Vec::new(), Vec::new());
                    for r in &receivers {
                        r.probe.recording.store(false, Ordering::Relaxed);
                        lat.extend(r.probe.take_latencies());
                        for (h, c) in r.probe.take_splits() {
                            to_hub.push(h);
                            to_client.push(c);
                        }
                    }
                    if !to_hub.is_empty() {
                        let p99 = |v: &mut Vec<i32>| {
                            v.sort_unstable();
                            v[(v.len() - 1) * 99 / 100]
                        };
                        splits.push(format!("{} / {} ms", p99(&mut to_hub), p99(&mut to_client)));
                    }
                    lat.sort_unstable();
                    delivered.push(lat.len() as f64 / (sent.max(1) as f64 * per_reading));
                    per_run.push(LATENCY_POINTS.map(|(_, q)| percentile_ms(&lat, q)));
                    merged.extend_from_slice(&lat);
                    sut.push(m.sut_cores);
                    gen.push(m.gen_cores);
                    drop(receivers);
                    tokio::time::sleep(p.latency_tail / 2).await;
                }
                let t = target.name();
                let c = client.name();
                for (k, (name, _)) in LATENCY_POINTS.iter().enumerate() {
                    if *name == "p99.9" {
                        continue;
                    }
                    let runs = per_run.iter().map(|a| a[k]).collect();
                    let mut note = format!(
                        "{devices} devices x {device_rate}/s, {subs} {c} subscribers on sensors/dN/#"
                    );
                    if *name == "p99" && !server_p99.is_empty() {
                        note.push_str(&format!(
                            "; server side, p99 per run (histogram bucket bounds): {}",
                            server_p99.join(" / ")
                        ));
                    }
                    if *name == "p99" && !splits.is_empty() {
                        note.push_str(&format!(
                            "; split at the hub's receivedAt (wall clock, 1 ms resolution), p99 of \
                             send -> hub / hub -> client per run: {}",
                            splits.join(", ")
                        ));
                    }
                    report.push(
                        Figure::new("latency", t, &format!("{c} {name} @{rate}/s"), "ms", runs)
                            .note(note),
                    );
                }
                report.push(Figure::new(
                    "latency",
                    t,
                    &format!("{c} received fraction @{rate}/s"),
                    "ratio",
                    delivered,
                ));
                report.push(Figure::new(
                    "latency",
                    t,
                    &format!("{c} server CPU @{rate}/s"),
                    "cores",
                    sut,
                ));
                report.push(Figure::new(
                    "latency",
                    t,
                    &format!("{c} harness CPU @{rate}/s"),
                    "cores",
                    gen,
                ));
                merged.sort_unstable();
                let curve = LATENCY_POINTS
                    .iter()
                    .map(|(n, q)| ((*n).to_owned(), percentile_ms(&merged, *q)))
                    .collect();
                report
                    .latency
                    .entry(rate)
                    .or_default()
                    .insert(format!("{t} {c}"), curve);
            }
            drop(server);
        }
    }
    Ok(())
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

/// fan-out (issue #4), once per transport: `fanout_watchers` idle watchers on `sensors/#`
/// (memory per connection from the RSS growth while they open), then readings at
/// `fanout_rate` from `fanout_devices` devices, each delivered to every watcher (deliveries/s).
pub(crate) async fn fanout(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let p = &ctx.p;
    let n = p.fanout_watchers.max(1);
    for client in [Client::Sse, Client::WebSocket] {
        let c = client.name();
        let (mut per_conn, mut rates, mut completeness, mut sut, mut gen, mut open_secs) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for run in 0..p.runs {
            let dir = ctx.work.join(format!("fanout-{c}-{run}"));
            let server = procs::start_edgewatch(
                &ctx.edgewatch,
                &dir,
                &dir.join("data"),
                &EdgewatchTuning {
                    max_live_connections: Some(n as u32 + 1000),
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
            open_secs.push(opened.elapsed().as_secs_f64());
            tokio::time::sleep(Duration::from_secs(2)).await;
            let rss1 = server.rss_kib();
            per_conn.push(rss1.saturating_sub(rss0) as f64 / n as f64);
            let probes: Vec<&Probe> = watchers.iter().map(|r| &*r.probe).collect();
            let devices = p.fanout_devices.max(1);
            let conns =
                load::DeviceFleet::connect(server.mqtt, devices, &format!("fan{run}")).await?;
            let fleet =
                load::DeviceFleet::run(conns, p.fanout_rate / devices as f64, p.warmup + p.measure);
            tokio::time::sleep(p.warmup).await;
            let w = Window::open(&server, &probes);
            tokio::time::sleep(p.measure).await;
            let m = w.close(&server, &probes);
            drop(fleet);
            let total: f64 = m.rates.iter().sum();
            rates.push(total);
            completeness.push(total / (p.fanout_rate * n as f64));
            sut.push(m.sut_cores);
            gen.push(m.gen_cores);
            drop(probes);
            drop(watchers);
            server.stop(Duration::from_secs(5)).await?;
        }
        report.push(
            Figure::new(
                "fanout",
                "edgewatch",
                &format!("deliveries/s, {n} {c} watchers"),
                "deliveries/s",
                rates,
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
            completeness,
        ));
        report.push(
            Figure::new(
                "fanout",
                "edgewatch",
                &format!("memory per idle {c}"),
                "KiB",
                per_conn,
            )
            .note(format!("RSS growth over opening {n}, divided by {n}")),
        );
        report.push(Figure::new(
            "fanout",
            "edgewatch",
            &format!("{c} server CPU"),
            "cores",
            sut,
        ));
        report.push(Figure::new(
            "fanout",
            "edgewatch",
            &format!("{c} harness CPU"),
            "cores",
            gen,
        ));
        report.push(Figure::new(
            "fanout",
            "edgewatch",
            &format!("time to open {n} {c}"),
            "s",
            open_secs,
        ));
    }
    Ok(())
}

/// RSS (MiB) of a loaded server, then its orderly stop and the disk its data dir takes per
/// stored reading (bytes allocated).
async fn stop_and_measure_disk(server: Server, data: &Path, stored: u64) -> Result<(f64, f64)> {
    let rss = mib(server.rss_kib());
    server.stop(Duration::from_secs(30)).await?;
    let (allocated, _) = procs::disk_usage(data);
    Ok((allocated as f64 / stored.max(1) as f64, rss))
}

async fn stored_count(ctx: &Ctx, base: &str) -> Result<u64> {
    let v: serde_json::Value = serde_json::from_slice(
        &ctx.http
            .get(format!("{base}/v1/series"))
            .send()
            .await?
            .bytes()
            .await?,
    )?;
    Ok(v["series"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["count"].as_u64()).sum())
        .unwrap_or(0))
}

/// What the store wrote since start, from `/metrics`: `(kind, values, bytes)` for log,
/// chunk and rollup, plus sealed readings.
async fn store_writes(ctx: &Ctx, base: &str) -> Result<String> {
    let text = ctx
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let mut parts = vec![];
    for kind in ["log", "chunk", "rollup"] {
        let n = value(&format!(
            "edgewatch_store_written_values_total{{kind=\"{kind}\"}}"
        ));
        let b = value(&format!(
            "edgewatch_store_written_bytes_total{{kind=\"{kind}\"}}"
        ));
        parts.push(format!("{kind} {n:.0} values / {:.1} MB", b / 1e6));
    }
    let sealed = value("edgewatch_store_sealed_readings_total");
    let chunks = value("edgewatch_store_written_values_total{kind=\"chunk\"}");
    parts.push(format!(
        "{:.0} readings per sealed chunk",
        sealed / chunks.max(1.0)
    ));
    Ok(parts.join(", "))
}

async fn timed_get(ctx: &Ctx, url: &str) -> Result<(f64, serde_json::Value)> {
    let t = Instant::now();
    let resp = ctx.http.get(url).send().await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !status.is_success() {
        bail!(
            "GET {url}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok((ms, serde_json::from_slice(&body)?))
}

/// What a load into edgewatch left in its store.
struct Stored {
    samples: Vec<(f64, u64)>,
    sent: u64,
    acked: u64,
    stored: u64,
    rejected: u64,
    load_secs: f64,
    sut_cores: f64,
    gen_cores: f64,
}

/// Runs a fleet into edgewatch and follows the stored count (`/v1/series`) until the fleet is
/// done and the count reached `spec.max_messages` or stopped moving for 3 s.
async fn load_and_store(ctx: &Ctx, server: &Server, spec: &LoadSpec, tag: &str) -> Result<Stored> {
    let base = server.http_base();
    let before = stored_count(ctx, &base).await?;
    let cpu0 = server.cpu_secs();
    let own0 = procs::own_cpu_secs();
    let fleet = Fleet::start(server.mqtt, spec, tag).await?;
    let started = Instant::now();
    let mut samples: Vec<(f64, u64)> = vec![(0.0, 0)];
    let mut last_report = Instant::now();
    let mut unchanged_since = Instant::now();
    let mut sending_secs = None;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let c = stored_count(ctx, &base).await?.saturating_sub(before);
        let t = started.elapsed();
        if samples.last().is_some_and(|s| s.1 != c) {
            unchanged_since = Instant::now();
        }
        samples.push((t.as_secs_f64(), c));
        if last_report.elapsed() > Duration::from_secs(10) {
            println!("    {tag}: {c} of {} stored", spec.max_messages);
            last_report = Instant::now();
        }
        let sent = fleet.stats.sent.load(Ordering::Relaxed);
        if sending_secs.is_none() && (sent >= spec.max_messages || t >= spec.duration) {
            sending_secs = Some(t.as_secs_f64());
        }
        // Settled: nothing new stored for 3 s and every QoS1 publish acknowledged (a client
        // still holding unacknowledged publishes gets up to 10 s more before the fleet, and
        // whatever it still queues, is dropped).
        let all_acked =
            spec.qos == QoS::AtMostOnce || fleet.stats.acked.load(Ordering::Relaxed) >= sent;
        let quiet = unchanged_since.elapsed();
        let settled =
            quiet > Duration::from_secs(3) && (all_acked || quiet > Duration::from_secs(10));
        if c >= spec.max_messages
            || (sending_secs.is_some() && settled)
            || t > spec.duration + Duration::from_secs(60)
        {
            break;
        }
    }
    let load_secs = sending_secs.unwrap_or_else(|| started.elapsed().as_secs_f64());
    let busy = started.elapsed().as_secs_f64();
    let rejected = timed_get(ctx, &format!("{base}/v1/rejects"))
        .await
        .map(|(_, v)| v["total"].as_u64().unwrap_or(0))
        .unwrap_or(0);
    let out = Stored {
        stored: samples.last().map_or(0, |s| s.1),
        samples,
        sent: fleet.stats.sent.load(Ordering::Relaxed),
        acked: fleet.stats.acked.load(Ordering::Relaxed),
        rejected,
        load_secs,
        sut_cores: (server.cpu_secs() - cpu0) / busy,
        gen_cores: (procs::own_cpu_secs() - own0) / busy,
    };
    drop(fleet);
    Ok(out)
}

/// Stored readings/s in three equal windows of `[0, until]` s, after the first stored reading.
fn window_rates(samples: &[(f64, u64)], until: f64) -> Vec<f64> {
    let first = samples
        .iter()
        .position(|s| s.1 > 0)
        .map_or(0.0, |i| samples[i.saturating_sub(1)].0);
    let at = |t: f64| -> f64 {
        let i = samples
            .iter()
            .position(|s| s.0 >= t)
            .unwrap_or(samples.len() - 1);
        if i == 0 {
            return samples[0].1 as f64;
        }
        let (a, b) = (samples[i - 1], samples[i]);
        let f = if b.0 > a.0 {
            ((t - a.0) / (b.0 - a.0)).min(1.0)
        } else {
            1.0
        };
        a.1 as f64 + f * (b.1 as f64 - a.1 as f64)
    };
    let span = (until - first).max(0.25);
    (0..3)
        .map(|k| {
            let (a, b) = (
                first + span * k as f64 / 3.0,
                first + span * (k + 1) as f64 / 3.0,
            );
            (at(b) - at(a)) / (b - a)
        })
        .collect()
}

/// history: sustained ingest (QoS1, 1,000 devices, max rate, bounded time) on one store; then a
/// rate-limited preload of N readings (100 series at 1 Hz event time) on another, query
/// latencies, bytes on disk per reading and time to ready with that store.
pub(crate) async fn history(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let p = &ctx.p;
    let n = p.history_readings;
    let series = 100usize;
    let hour_ms = 3_600_000;
    let t0_ms = (load::unix_ms_now() - 3 * 24 * hour_ms) / hour_ms * hour_ms;
    let tuning = EdgewatchTuning::default();

    // Sustained ingest at max rate, `repeat_runs` loads on fresh servers.
    {
        let (mut rates, mut lost, mut sut, mut gen, mut notes) =
            (vec![], vec![], vec![], vec![], vec![]);
        for r in 0..p.repeat_runs.max(1) {
            let dir = ctx.work.join(format!("ingest{r}"));
            let server =
                procs::start_edgewatch(&ctx.edgewatch, &dir, &dir.join("data"), &tuning).await?;
            let spec = LoadSpec {
                publishers: p.history_publishers,
                qos: QoS::AtLeastOnce,
                rate: None,
                duration: p.ingest_secs,
                max_messages: 100_000_000,
                shape: Shape::History { series, t0_ms },
            };
            let s = load_and_store(ctx, &server, &spec, &format!("ingest{r}")).await?;
            let windows = window_rates(&s.samples, s.load_secs);
            if p.repeat_runs > 1 {
                rates.push(crate::report::summarize(&windows).0);
            } else {
                rates = windows;
            }
            lost.push(s.acked.saturating_sub(s.stored + s.rejected) as f64);
            sut.push(s.sut_cores);
            gen.push(s.gen_cores);
            notes.push(format!(
                "sent {}, acknowledged {}, stored {}, rejected {}",
                s.sent, s.acked, s.stored, s.rejected
            ));
            server.stop(Duration::from_secs(30)).await?;
            let _ = std::fs::remove_dir_all(&dir);
        }
        let runs_are = if p.repeat_runs > 1 {
            format!(
                "runs = {} loads on fresh servers, each the median of its 3 equal windows",
                p.repeat_runs
            )
        } else {
            "runs = 3 equal windows of one load".to_owned()
        };
        report.push(
            Figure::new(
                "history",
                "edgewatch",
                "sustained ingest, persisted",
                "readings/s",
                rates,
            )
            .note(format!(
                "QoS1 JSON, {} devices at max rate for {:.0} s; {runs_are}; {}",
                p.history_publishers,
                p.ingest_secs.as_secs_f64(),
                notes.join(" / ")
            )),
        );
        report.push(
            Figure::new(
                "history",
                "edgewatch",
                "acknowledged but not stored",
                "readings",
                lost,
            )
            .note("PUBACKed QoS1 readings missing from the store after the load settled"),
        );
        report.push(Figure::new(
            "history",
            "edgewatch",
            "server CPU during ingest",
            "cores",
            sut,
        ));
        report.push(Figure::new(
            "history",
            "edgewatch",
            "harness CPU during ingest",
            "cores",
            gen,
        ));
    }

    // The same, driven by one `edgewatch sim` process (1,000 devices, JSON, QoS1): the
    // harness's rumqttc fleet above paces itself; the sim is the lighter generator.
    let (mut sim_rates, mut sim_notes) = (vec![], vec![]);
    for r in 0..p.repeat_runs.max(1) {
        let dir = ctx.work.join(format!("ingest-sim{r}"));
        let server =
            procs::start_edgewatch(&ctx.edgewatch, &dir, &dir.join("data"), &tuning).await?;
        let base = server.http_base();
        let cpu0 = server.cpu_secs();
        let t0 = Instant::now();
        let secs = p.ingest_secs.as_secs_f64();
        let out = tokio::time::timeout(
            Duration::from_secs_f64(secs + 60.0),
            tokio::process::Command::new(&ctx.edgewatch)
                .arg("sim")
                .arg("--broker")
                .arg(format!("mqtt://{}", server.mqtt))
                .args([
                    "--devices",
                    "1000",
                    "--rate",
                    "400000",
                    "--qos",
                    "1",
                    "--format",
                    "json",
                ])
                .args([
                    "--connect-rate",
                    "5000",
                    "--no-faults",
                    "--json",
                    "--id-prefix",
                    "ingest",
                ])
                .arg("--duration")
                .arg(format!("{secs}"))
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .context("edgewatch sim did not finish in time")??;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("edgewatch sim --json output")?;
        let acked = v["acknowledged"].as_u64().unwrap_or(0);
        // Wait until everything acknowledged is stored (bounded), then rate = stored / time
        // from the start of the load to the moment the last reading was stored.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut stored = stored_count(ctx, &base).await?;
        while stored < acked && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            stored = stored_count(ctx, &base).await?;
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let sut_cores = (server.cpu_secs() - cpu0) / elapsed;
        sim_rates.push(stored as f64 / elapsed);
        sim_notes.push(format!(
            "acknowledged {acked}, stored {stored}, server {sut_cores:.2} cores"
        ));
        server.stop(Duration::from_secs(30)).await?;
        let _ = std::fs::remove_dir_all(&dir);
    }
    report.push(
        Figure::new(
            "history",
            "edgewatch",
            "sustained ingest, persisted, edgewatch sim",
            "readings/s",
            sim_rates,
        )
        .note(format!(
            "1 `edgewatch sim` process: 1,000 devices, JSON, QoS1, offered 400,000/s for {:.0} s; \
             stored / (load start -> last reading stored); one run per fresh server: {}",
            p.ingest_secs.as_secs_f64(),
            sim_notes.join(" / ")
        )),
    );

    // Preload at a fixed rate the box sustains (`repeat_runs` times, each into a fresh
    // server), then query the last one.
    let preloads = p.repeat_runs.max(1);
    let (mut ratios, mut disk, mut rss_after, mut disk_notes) = (vec![], vec![], vec![], vec![]);
    let mut kept = None;
    for r in 0..preloads {
        let dir = ctx.work.join(format!("history{r}"));
        let data = dir.join("data");
        let server = procs::start_edgewatch(&ctx.edgewatch, &dir, &data, &tuning).await?;
        let spec = LoadSpec {
            publishers: p.history_publishers,
            qos: QoS::AtLeastOnce,
            rate: Some(p.preload_rate),
            duration: p.history_timeout,
            max_messages: n,
            shape: Shape::History { series, t0_ms },
        };
        let s = load_and_store(ctx, &server, &spec, &format!("preload{r}")).await?;
        ratios.push(s.stored as f64 / s.sent.max(1) as f64);
        disk_notes.push(format!(
            "sent {}, acknowledged {}, stored {}",
            s.sent, s.acked, s.stored
        ));
        if s.stored < n {
            println!("    warning: only {} of {n} readings stored", s.stored);
        }
        if r + 1 < preloads {
            let (per, rss) = stop_and_measure_disk(server, &data, s.stored).await?;
            disk.push(per);
            rss_after.push(rss);
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            kept = Some((server, dir, data, s.stored));
        }
    }
    let (server, dir, data, stored) = kept.context("no preload")?;
    let base = server.http_base();
    report.push(
        Figure::new("history", "edgewatch", "preload: stored / sent", "ratio", ratios).note(format!(
            "{n} readings at {} readings/s, QoS1, {} devices, {preloads} preload(s) into fresh servers: {}",
            p.preload_rate,
            p.history_publishers,
            disk_notes.join(" / ")
        )),
    );

    // 1 hour of 1 Hz data for one series.
    let per_series_secs = (stored / series as u64).max(3601) as i64;
    let mut one_series = vec![];
    let mut returned = 0usize;
    for run in 0..p.runs {
        let mut times = vec![];
        for q in 0..20i64 {
            let s = (q * 7 + run as i64) % series as i64;
            let offset = (q * 977 + run as i64 * 131) % (per_series_secs - 3600).max(1);
            let from = t0_ms + offset * 1000;
            let url = format!(
                "{base}/v1/readings?filter=sensors/h{s}/temperature&from={from}&to={}&limit=10000",
                from + hour_ms
            );
            let (ms, v) = timed_get(ctx, &url).await?;
            returned = v["readings"].as_array().map_or(0, Vec::len);
            times.push(ms);
        }
        one_series.push(crate::report::summarize(&times).0);
    }
    report.push(
        Figure::new(
            "history",
            "edgewatch",
            "1 h of 1 Hz, one series (goal <= 5)",
            "ms",
            one_series,
        )
        .note(format!(
            "run = median of 20 queries; last query returned {returned} readings"
        )),
    );
    // 24 h x 100 series rolled up to about 1,000 points.
    let mut rollup = vec![];
    let mut points = 0usize;
    for _ in 0..p.runs {
        let mut times = vec![];
        for _ in 0..5 {
            let url = format!(
                "{base}/v1/rollups?filter=sensors/%23&from={t0_ms}&to={}",
                t0_ms + 24 * hour_ms
            );
            let (ms, v) = timed_get(ctx, &url).await?;
            points = v["series"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| s["points"].as_array().map_or(0, Vec::len))
                        .sum()
                })
                .unwrap_or(0);
            times.push(ms);
        }
        rollup.push(crate::report::summarize(&times).0);
    }
    let covered_h = (stored / series as u64) as f64 / 3600.0;
    report.push(
        Figure::new(
            "history",
            "edgewatch",
            "24 h x 100 series rollup (goal <= 50)",
            "ms",
            rollup,
        )
        .note(format!(
            "run = median of 5 queries; {points} points returned over all series; \
                 data covers {covered_h:.1} h of the 24 h window"
        )),
    );
    let writes = store_writes(ctx, &base).await?;
    let (per, rss) = stop_and_measure_disk(server, &data, stored).await?;
    disk.push(per);
    rss_after.push(rss);
    let (_, apparent_after) = procs::disk_usage(&data);
    report.push(
        Figure::new(
            "history",
            "edgewatch",
            "disk per reading (goal <= 40)",
            "bytes",
            disk,
        )
        .note(format!(
            "du of the data dir after orderly stop / readings stored, one run per preload; last run: \
             apparent size {:.1} B/reading; written since start: {writes}",
            apparent_after as f64 / stored.max(1) as f64
        )),
    );
    report.push(Figure::new(
        "history",
        "edgewatch",
        "RSS after preload",
        "MiB",
        rss_after,
    ));
    let mut ready = vec![];
    let mut rss_restart = vec![];
    for _ in 0..p.runs {
        let s = procs::start_edgewatch(&ctx.edgewatch, &dir, &data, &tuning).await?;
        ready.push(s.ready_after.as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_restart.push(mib(s.rss_kib()));
        s.stop(Duration::from_secs(30)).await?;
    }
    report.push(
        Figure::new(
            "history",
            "edgewatch",
            &format!("start to ready, {stored} stored"),
            "ms",
            ready,
        )
        .note("spawn of `edgewatch run` to its ready line"),
    );
    report.push(Figure::new(
        "history",
        "edgewatch",
        "RSS idle after restart",
        "MiB",
        rss_restart,
    ));
    Ok(())
}

/// One step of the `sim` ladder: what `edgewatch sim --json` reported, plus the server's CPU.
#[derive(Debug, Clone)]
struct SimStep {
    offered: f64,
    achieved: f64,
    sent: u64,
    acked: u64,
    errors: u64,
    sim_cores: f64,
    sim_per_10k: f64,
    server_cores: f64,
}

impl SimStep {
    /// Sustained: at least 95% of the offered rate delivered (sent for QoS0, acknowledged for
    /// QoS1) over the run, connection ramp-up included.
    fn sustained(&self) -> bool {
        self.achieved >= 0.95 * self.offered
    }
}

/// Runs one `edgewatch sim` process against a freshly started server at `rate` readings/s.
async fn sim_step(ctx: &Ctx, target: Target, qos: u8, rate: f64, name: &str) -> Result<SimStep> {
    let p = &ctx.p;
    // One retry: on this shared box a start occasionally fails (the reason is in the error).
    let server = match ctx.start_inner(target, name).await {
        Ok(s) => s,
        Err(e) => {
            println!("    start failed, retrying once: {e:#}");
            ctx.start_inner(target, &format!("{name}-retry")).await?
        }
    };
    let cpu0 = server.cpu_secs();
    let t0 = Instant::now();
    let mut cmd = tokio::process::Command::new(&ctx.edgewatch);
    cmd.arg("sim")
        .arg("--broker")
        .arg(format!("mqtt://{}", server.mqtt))
        .args(["--devices", "100", "--rate"])
        .arg(format!("{rate:.0}"))
        .arg("--duration")
        .arg(format!("{}", p.sim_secs))
        .arg("--qos")
        .arg(qos.to_string())
        // All 100 devices connect within 20 ms, so the ramp-up barely counts against the rate.
        .args(["--connect-rate", "5000"])
        .args(["--no-faults", "--json", "--id-prefix"])
        .arg(name)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs_f64(p.sim_secs + 40.0), cmd.output())
        .await
        .context("edgewatch sim did not finish in time")??;
    let server_cores = (server.cpu_secs() - cpu0) / t0.elapsed().as_secs_f64();
    // Wait until the server is gone before the next step starts another one.
    server.stop(Duration::from_secs(5)).await?;
    if !out.status.success() {
        bail!(
            "edgewatch sim exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("edgewatch sim --json output")?;
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let u = |k: &str| v[k].as_u64().unwrap_or(0);
    let elapsed = f("elapsed_s").max(1e-9);
    Ok(SimStep {
        offered: rate,
        achieved: f("achieved_rate"),
        sent: u("sent"),
        acked: u("acknowledged"),
        errors: u("errors"),
        sim_cores: f("cpu_s") / elapsed,
        sim_per_10k: f("cpu_per_10k_rate"),
        server_cores,
    })
}

/// One more run of a decisive `sim` step (`what` names it in the progress line).
async fn repeat_step(
    ctx: &Ctx,
    target: Target,
    qos: u8,
    rate: f64,
    name: &str,
    what: &str,
) -> Result<SimStep> {
    let s = sim_step(ctx, target, qos, rate, name).await?;
    println!(
        "    {} QoS{qos}: repeat of the {what} step: offered {:.0}/s achieved {:.0}/s",
        target.name(),
        s.offered,
        s.achieved
    );
    Ok(s)
}

/// sim: the highest rate one `edgewatch sim` process (100 devices) sustains against each
/// server, QoS0 and QoS1, and its CPU per 10,000 readings/s. The offered rate doubles from
/// `sim_start_rate` until the achieved rate falls below 95% of it; one more step at the
/// geometric mean of the last sustained and the first failed rate narrows the ceiling. Every
/// step starts a fresh server, so an overloaded step does not slow the next one.
pub(crate) async fn sim(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let p = &ctx.p;
    for qos in [0u8, 1] {
        for target in ctx.targets() {
            let t = target.name();
            let mut steps: Vec<SimStep> = Vec::new();
            let mut rate = p.sim_start_rate;
            let mut failed: Option<f64> = None;
            let mut k = 0;
            loop {
                let s = sim_step(ctx, target, qos, rate, &format!("sim{qos}-{t}-{k}")).await?;
                k += 1;
                println!(
                    "    {t} QoS{qos}: offered {:.0}/s achieved {:.0}/s (sim {:.2} cores, server {:.2} cores, {} errors)",
                    s.offered, s.achieved, s.sim_cores, s.server_cores, s.errors
                );
                let ok = s.sustained();
                steps.push(s);
                if ok && failed.is_none() {
                    if rate * 2.0 > p.sim_max_rate {
                        break;
                    }
                    rate *= 2.0;
                } else if failed.is_none() {
                    failed = Some(rate);
                    let good = steps.iter().filter(|s| s.sustained()).map(|s| s.offered);
                    match good.fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r)))) {
                        Some(g) => rate = (g * rate).sqrt().round(),
                        None => break,
                    }
                } else {
                    break;
                }
            }
            let best = steps
                .iter()
                .filter(|s| s.sustained())
                .max_by(|a, b| a.offered.total_cmp(&b.offered))
                .cloned();
            let peak = steps
                .iter()
                .max_by(|a, b| a.achieved.total_cmp(&b.achieved))
                .cloned()
                .context("no sim step")?;
            let ladder = steps
                .iter()
                .map(|s| format!("{:.0}->{:.0}", s.offered, s.achieved))
                .collect::<Vec<_>>()
                .join(", ");
            // The decisive steps again, each on a fresh server: the figures are their runs.
            let mut best_runs: Vec<SimStep> = best.iter().cloned().collect();
            let mut peak_runs = vec![peak.clone()];
            let same = best.as_ref().is_some_and(|b| b.offered == peak.offered);
            for r in 1..p.repeat_runs {
                if let Some(b) = &best {
                    let name = format!("sim{qos}-{t}-best{r}");
                    let s = repeat_step(ctx, target, qos, b.offered, &name, "highest sustained")
                        .await?;
                    if same {
                        peak_runs.push(s.clone());
                    }
                    best_runs.push(s);
                }
                if !same {
                    let name = format!("sim{qos}-{t}-peak{r}");
                    peak_runs.push(
                        repeat_step(ctx, target, qos, peak.offered, &name, "highest achieved")
                            .await?,
                    );
                }
            }
            let delivered = if qos == 1 { "acknowledged" } else { "sent" };
            let of =
                |runs: &[SimStep], f: fn(&SimStep) -> f64| runs.iter().map(f).collect::<Vec<_>>();
            report.push(
                Figure::new(
                    "sim",
                    t,
                    &format!("sim max sustained QoS{qos}"),
                    "readings/s",
                    if best_runs.is_empty() { vec![0.0] } else { of(&best_runs, |s| s.achieved) },
                )
                .note(format!(
                    "1 `edgewatch sim` process, 100 devices, {} s per step, {delivered}/s >= 95% of offered; \
                     ladder offered->achieved: {ladder}{}; runs: the highest sustained step{}",
                    p.sim_secs,
                    if failed.is_none() { " (never fell short: the ceiling is higher)" } else { "" },
                    if best_runs.len() > 1 { " and its repeats on fresh servers" } else { "" }
                )),
            );
            report.push(
                Figure::new(
                    "sim",
                    t,
                    &format!("sim highest achieved QoS{qos}"),
                    "readings/s",
                    of(&peak_runs, |s| s.achieved),
                )
                .note(format!(
                    "offered {:.0}/s; first run: sent {}, acknowledged {}, errors {}",
                    peak.offered, peak.sent, peak.acked, peak.errors
                )),
            );
            if let Some(b) = &best {
                report.push(
                    Figure::new(
                        "sim",
                        t,
                        &format!("sim CPU per 10k/s QoS{qos}"),
                        "cores",
                        of(&best_runs, |s| s.sim_per_10k),
                    )
                    .note(format!(
                        "at the highest sustained step ({:.0}/s offered)",
                        b.offered
                    )),
                );
            }
            report.push(
                Figure::new(
                    "sim",
                    t,
                    &format!("sim CPU at highest achieved QoS{qos}"),
                    "cores",
                    of(&peak_runs, |s| s.sim_cores),
                )
                .note("the generator process alone; 2 cores is the whole box"),
            );
            report.push(Figure::new(
                "sim",
                t,
                &format!("server CPU at highest achieved QoS{qos}"),
                "cores",
                of(&peak_runs, |s| s.server_cores),
            ));
        }
    }
    Ok(())
}
