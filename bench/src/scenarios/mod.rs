//! The scenarios. Each one starts what it needs, runs its load loops bounded in count and time,
//! and pushes figures (median, min, max of its runs) into the report.
//!
//! # Layout
//! * this file: [`Params`] (sizes and times of a mode), [`Ctx`] (what every scenario needs),
//!   measurement windows and the live client types shared by `latency` and `fanout`.
//! * `relay`: `relay` (MQTT relay) and `fullpath` (stored + SSE + WebSocket vs a relay).
//! * `footprint`: `binary_sizes`.
//! * `latency`: publish-to-client latency per client type, with the hub's own histograms.
//! * `fanout`: thousands of idle watchers, then deliveries/s.
//! * `stored`: loading readings into edgewatch and reading back what its store holds.
//! * `history`: sustained ingest, preload, queries, disk per reading, time to ready.
//! * `sim`: the rate ladder of one `edgewatch sim` process.
//! * `memory`: RSS under issue #20's load (1,000 devices, 10,000/s), after it, per idle
//!   connection.
//! * `uplink`: store-and-forward to a central broker through an outage, beside Mosquitto's
//!   bridge: catch-up rate, readings lost, memory held while disconnected.

mod auth;
mod fanout;
mod footprint;
mod history;
mod latency;
mod memory;
mod relay;
mod sim;
mod stored;
mod uplink;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use rumqttc::QoS;

use crate::load::{LoadSpec, Probe, Shape};
use crate::procs::{self, EdgewatchTuning, Server, Target};
use crate::publishers::Fleet;
use crate::receivers::{self, Receiver};
use crate::report::{Figure, Report};

pub(crate) use auth::auth;
pub(crate) use fanout::fanout;
pub(crate) use footprint::binary_sizes;
pub(crate) use history::history;
pub(crate) use latency::latency;
pub(crate) use memory::memory;
pub(crate) use relay::{fullpath, relay};
pub(crate) use sim::sim;
pub(crate) use uplink::uplink;

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
    /// `memory`: devices of the load, readings/s in all, seconds, wait after it, idle
    /// connections opened after that.
    pub(crate) memory_devices: usize,
    pub(crate) memory_rate: u64,
    pub(crate) memory_secs: u64,
    pub(crate) memory_after: Duration,
    pub(crate) memory_idle: usize,
    /// `sim`: `--duration` of each step.
    pub(crate) sim_secs: f64,
    /// `uplink`: readings/s offered to the edge, time before the central broker stops, how
    /// long it stays down, and the longest wait for the catch-up.
    pub(crate) uplink_rate: f64,
    pub(crate) uplink_warm: Duration,
    pub(crate) uplink_outage: Duration,
    pub(crate) uplink_catchup_max: Duration,
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
            memory_devices: 10,
            memory_rate: 100,
            memory_secs: 2,
            memory_after: Duration::from_secs(1),
            memory_idle: 20,
            sim_secs: 2.0,
            uplink_rate: 200.0,
            uplink_warm: Duration::from_secs(1),
            uplink_outage: Duration::from_secs(2),
            uplink_catchup_max: Duration::from_secs(30),
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
            memory_devices: 1_000,
            memory_rate: 10_000,
            memory_secs: 20,
            memory_after: Duration::from_secs(30),
            memory_idle: 1_000,
            sim_secs: 1.5,
            uplink_rate: 2_000.0,
            uplink_warm: Duration::from_secs(5),
            uplink_outage: Duration::from_secs(20),
            uplink_catchup_max: Duration::from_secs(120),
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
            memory_devices: 1_000,
            memory_rate: 10_000,
            memory_secs: 60,
            memory_after: Duration::from_secs(30),
            memory_idle: 5_000,
            sim_secs: 10.0,
            uplink_rate: 2_000.0,
            uplink_warm: Duration::from_secs(5),
            uplink_outage: Duration::from_secs(60),
            uplink_catchup_max: Duration::from_secs(300),
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

/// What a load published that its receivers never got, in percent of what it published: the
/// fleet is stopped, the receivers drain (until nothing arrives for 1 s, at most 10 s), then
/// each receiver's total since it subscribed (before the fleet started) is compared with what
/// the broker accepted: acknowledged at QoS 1, written to the socket at QoS 0. One figure per
/// receiver.
async fn loss_after_drain(fleet: &Fleet, probes: &[&Probe], qos: QoS) -> Vec<f64> {
    fleet.stop();
    let total = || -> u64 { probes.iter().map(|p| p.count.load(Ordering::Relaxed)).sum() };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = (total(), Instant::now());
    while Instant::now() < deadline && last.1.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = total();
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let published = published(fleet, qos);
    probes
        .iter()
        .map(|p| {
            let got = p.count.load(Ordering::Relaxed);
            100.0 * published.saturating_sub(got) as f64 / published.max(1) as f64
        })
        .collect()
}

/// What the broker accepted from `fleet`: acknowledged (QoS 1), else written.
fn published(fleet: &Fleet, qos: QoS) -> u64 {
    match qos {
        QoS::AtMostOnce => fleet.stats.sent.load(Ordering::Relaxed),
        _ => fleet.stats.acked.load(Ordering::Relaxed),
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
                        receivers::mqtt_watch(mqtt, QoS::AtMostOnce, &format!("{tag}-{k}"), &f)
                            .await
                    }
                    Client::Sse => receivers::sse_watch(http.context("http")?, &f).await,
                    Client::WebSocket => receivers::ws_watch(http.context("http")?, &f).await,
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
