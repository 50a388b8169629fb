//! Operational metrics in the Prometheus text exposition format (version 0.0.4) at
//! `GET /metrics`.
//!
//! The parts keep their own cheap counters (atomics); this module only reads them at scrape
//! time and renders them, so nothing here sits on the ingest path. What is measured:
//!
//! | metric | type | source |
//! | --- | --- | --- |
//! | `edgewatch_publishes_received_total` | counter | ingest |
//! | `edgewatch_readings_ingested_total` | counter | ingest (handed to the writer) |
//! | `edgewatch_presence_changes_total` | counter | ingest |
//! | `edgewatch_readings_rejected_total{reason}` | counter | ingest rejects |
//! | `edgewatch_publishes_ignored_total` | counter | ingest (topics outside `sensors/`) |
//! | `edgewatch_readings_stored_total` | counter | writer (each with a new seq) |
//! | `edgewatch_readings_duplicate_total` | counter | writer (a resend of a stored reading) |
//! | `edgewatch_presence_recorded_total` | counter | writer |
//! | `edgewatch_writer_items_failed_total` | counter | writer (items of batches the store could not apply) |
//! | `edgewatch_external_delivery_records` | gauge | store (external deliveries kept until the broker has their PUBACK) |
//! | `edgewatch_external_delivery_records_evicted_total` | counter | store (records dropped at their bound) |
//! | `edgewatch_writer_batch_size` | histogram | writer (items per commit) |
//! | `edgewatch_writer_commit_duration_seconds` | histogram | writer (from a batch's apply until the flush that covers it completes) |
//! | `edgewatch_writer_commit_failures_total` | counter | writer |
//! | `edgewatch_writer_queue_free` / `_capacity` | gauge | writer input queue |
//! | `edgewatch_log_size_bytes`, `edgewatch_log_readings`, `edgewatch_series`, `edgewatch_last_seq` | gauge | store |
//! | `edgewatch_retention_readings_removed_total{reason}` | counter | retention: readings removed since start, `age` or `budget` |
//! | `edgewatch_store_live_bytes{kind}` | gauge | store: live bytes of `log` blocks, sealed `chunk`s and `rollup` pages, what the disk budget measures (only with a budget) |
//! | `edgewatch_disk_budget_bytes`, `edgewatch_disk_budget_live_limit_bytes`, `edgewatch_disk_budget_kept_readings`, `edgewatch_disk_budget_exceeded` | gauge | retention: the budget, the share of it live bytes are kept under, the newest readings it never removes, 1 when files or live bytes stay above it (`edgewatch_log_size_bytes` is the files' size) |
//! | `edgewatch_devices_online` | gauge | presence (`sensors/{deviceId}/status`) |
//! | `edgewatch_live_connections{transport}` | gauge | SSE / WebSocket / long-poll |
//! | `edgewatch_live_subscriptions`, `edgewatch_live_subscriptions_conflating`, `edgewatch_live_queue_depth_max` | gauge | fan-out (per-subscriber lag) |
//! | `edgewatch_live_events_delivered_total`, `_conflated_dropped_total`, `_gaps_total`, `_lag_disconnects_total` | counter | fan-out |
//! | `edgewatch_live_catchup_failures_total` | counter | fan-out and watch replay: reads of the log that failed, each answered with a `gap` to the subscribers concerned (and an error log line) |
//! | `edgewatch_live_events_unencodable_total` | counter | fan-out and watch replay: readings whose live JSON could not be written, not sent (and logged) |
//! | `edgewatch_live_link_to_fanout_seconds`, `edgewatch_live_publish_seconds`, `edgewatch_live_fanout_to_write_seconds{transport}` | histogram | stages of live latency (link → stored, at the fan-out → queued → written) |
//! | `edgewatch_http_requests_total{route,method,status}` | counter | HTTP middleware |
//! | `edgewatch_http_request_duration_seconds{route}` | histogram | HTTP middleware (time to response head) |
//! | `process_resident_memory_bytes`, `process_open_fds` | gauge | `/proc/self` (Linux) |
//!
//! # Accounting
//! Every publish ingest takes ends as exactly one of these, so at any quiet moment (nothing
//! queued for the writer):
//!
//! ```text
//! edgewatch_publishes_received_total = edgewatch_readings_stored_total
//!     + edgewatch_readings_duplicate_total + edgewatch_presence_recorded_total
//!     + sum(edgewatch_readings_rejected_total) + edgewatch_publishes_ignored_total
//!     + edgewatch_writer_items_failed_total
//! ```
//!
//! Values owned by the embedded broker are added by the composition with
//! [`Metrics::with_sample`]: `edgewatch_mqtt_connections` (clients connected now, counted by
//! the broker's codec wrapper from CONNECT to the end of the connection),
//! `edgewatch_mqtt_ingest_backlog` (publishes waiting for the bridge) and
//! `edgewatch_mqtt_held_acks_total` (PUBACKs held back by backpressure) and
//! `edgewatch_mqtt_ingest_skipped_total` (publishes the broker dropped before the bridge read
//! them).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::histogram::{Histogram, LATENCY_BUCKETS};
use crate::ingest::Ingest;
use crate::live::connections::{LiveMetrics, Transport};
use crate::live::fanout::Fanout;
use crate::store::{BudgetStatus, Store};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Per-route HTTP request counts and latencies.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Arc<Histogram>>>,
}

impl HttpMetrics {
    fn record(&self, route: &str, method: &str, status: u16, seconds: f64) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_owned(), method.to_owned(), status))
                .or_insert(0) += 1;
        }
        let h = match self.latency.lock() {
            Ok(mut m) => m
                .entry(route.to_owned())
                .or_insert_with(|| Arc::new(Histogram::new(LATENCY_BUCKETS)))
                .clone(),
            Err(_) => return,
        };
        h.observe(seconds);
    }
}

/// Everything `/metrics` reports. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    ingest: Ingest,
    live: OnceLock<(Fanout, Arc<LiveMetrics>)>,
    http: HttpMetrics,
    samples: Mutex<Vec<Sample>>,
}

/// A value owned elsewhere (the embedded broker), read at each scrape.
#[derive(Clone)]
pub struct Sample {
    /// Metric name, following Prometheus conventions.
    pub name: &'static str,
    /// `# HELP` text.
    pub help: &'static str,
    /// `gauge` or `counter`.
    pub kind: &'static str,
    /// Reads the current value.
    pub read: Arc<dyn Fn() -> f64 + Send + Sync>,
}

impl std::fmt::Debug for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sample")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics over the store and ingest of a hub (see [`crate::Bridge::metrics`]).
    pub fn new(store: Store, ingest: Ingest) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                ingest,
                live: OnceLock::new(),
                http: HttpMetrics::default(),
                samples: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Adds the live side: the fan-out and the per-transport connection gauges (once; later
    /// calls are ignored).
    pub fn with_live(self, fanout: Fanout, live: Arc<LiveMetrics>) -> Self {
        let _ = self.inner.live.set((fanout, live));
        self
    }

    /// Adds a value owned elsewhere, read at each scrape.
    pub fn with_sample(self, sample: Sample) -> Self {
        if let Ok(mut samples) = self.inner.samples.lock() {
            samples.push(sample);
        }
        self
    }

    /// The `/metrics` route.
    pub fn routes(&self) -> Router {
        Router::new()
            .route("/metrics", get(scrape))
            .with_state(self.clone())
    }

    /// Adds the request-counting middleware to every route of `router` (call it on the
    /// fully merged router so `MatchedPath` names the route).
    pub fn track_http(&self, router: Router) -> Router {
        router.layer(axum::middleware::from_fn_with_state(self.clone(), track))
    }

    /// Renders the exposition text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let i = &self.inner;
        let c = i.ingest.counters();
        counters(
            &mut out,
            &[
                (
                    "edgewatch_publishes_received_total",
                    "Inbound MQTT publishes seen by ingest.",
                    &c.received,
                ),
                (
                    "edgewatch_readings_ingested_total",
                    "Readings decoded and handed to the writer.",
                    &c.readings,
                ),
                (
                    "edgewatch_presence_changes_total",
                    "Device presence changes (sensors/{deviceId}/status) handed to the writer.",
                    &c.presence,
                ),
                (
                    "edgewatch_publishes_ignored_total",
                    "Inbound publishes on topics outside sensors/ (not readings; not stored).",
                    &c.ignored,
                ),
            ],
        );
        let o = &i.ingest.writer().stats().outcomes;
        counters(
            &mut out,
            &[
                (
                    "edgewatch_readings_stored_total",
                    "Readings stored in the event log, each with a new seq.",
                    &o.stored,
                ),
                (
                    "edgewatch_readings_duplicate_total",
                    "Readings recognised as a resend of a stored reading and not stored again.",
                    &o.duplicates,
                ),
                (
                    "edgewatch_presence_recorded_total",
                    "Presence changes recorded by the writer.",
                    &o.presence,
                ),
                (
                    "edgewatch_writer_items_failed_total",
                    "Items of writer batches the store could not apply (left unacknowledged).",
                    &o.failed,
                ),
            ],
        );
        let rejects = i.ingest.rejects().snapshot();
        head(
            &mut out,
            "edgewatch_readings_rejected_total",
            "counter",
            "Inbound publishes rejected, by reason.",
        );
        if rejects.by_reason.is_empty() {
            let _ = writeln!(
                out,
                "edgewatch_readings_rejected_total{{reason=\"none\"}} 0"
            );
        }
        for (reason, n) in &rejects.by_reason {
            let _ = writeln!(
                out,
                "edgewatch_readings_rejected_total{{reason=\"{}\"}} {n}",
                escape(reason)
            );
        }

        let w = i.ingest.writer();
        let ws = w.stats();
        head(
            &mut out,
            "edgewatch_writer_batch_size",
            "histogram",
            "Items (readings and presence changes) per committed writer batch.",
        );
        ws.batch_size
            .render(&mut out, "edgewatch_writer_batch_size", "");
        head(
            &mut out,
            "edgewatch_writer_commit_duration_seconds",
            "histogram",
            "Time to apply a batch to the log and make it durable.",
        );
        ws.commit_seconds
            .render(&mut out, "edgewatch_writer_commit_duration_seconds", "");
        counter(
            &mut out,
            "edgewatch_writer_commit_failures_total",
            "Writer batches that could not be stored.",
            ws.commit_failures.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "edgewatch_writer_queue_capacity",
            "Capacity of the writer's input queue, commands.",
            w.queue_capacity() as f64,
        );
        gauge(
            &mut out,
            "edgewatch_writer_queue_free",
            "Free slots in the writer's input queue.",
            w.free_slots() as f64,
        );
        if let Ok(n) = i.store.delivery_records() {
            gauge(
                &mut out,
                "edgewatch_external_delivery_records",
                "External-broker deliveries remembered until the broker has their PUBACK.",
                n as f64,
            );
        }
        if let Ok(n) = i.store.delivery_records_evicted() {
            counter(
                &mut out,
                "edgewatch_external_delivery_records_evicted_total",
                "External-broker delivery records dropped at their bound of 1,000,000 (a resend of one would be stored again).",
                n,
            );
        }
        gauge(
            &mut out,
            "edgewatch_writer_healthy",
            "1 while the writer is committing, 0 after a failed commit.",
            f64::from(u8::from(w.is_healthy())),
        );

        if let Ok(s) = i.store.stats() {
            gauge(
                &mut out,
                "edgewatch_log_size_bytes",
                "Bytes the event log database occupies on disk.",
                s.size_on_disk as f64,
            );
            gauge(
                &mut out,
                "edgewatch_log_readings",
                "Readings currently kept in the event log.",
                s.readings as f64,
            );
            gauge(
                &mut out,
                "edgewatch_series",
                "Stored series (device, metric).",
                s.series as f64,
            );
            gauge(
                &mut out,
                "edgewatch_last_seq",
                "Highest sequence number assigned.",
                s.last_seq as f64,
            );
            let w = s.written;
            labelled_counter(
                &mut out,
                "edgewatch_store_written_bytes_total",
                "Bytes of values committed to the database since start, by kind (log blocks, sealed chunks, rollup pages; the database adds its own framing).",
                "kind",
                &[("log", w.log_bytes), ("chunk", w.chunk_bytes), ("rollup", w.rollup_bytes)],
            );
            labelled_counter(
                &mut out,
                "edgewatch_store_written_values_total",
                "Values committed to the database since start, by kind (a seal writes one or more chunks and rewrites the rollup pages its readings fall in).",
                "kind",
                &[("log", w.log_blocks), ("chunk", w.chunks), ("rollup", w.rollup_pages)],
            );
            counter(
                &mut out,
                "edgewatch_store_sealed_readings_total",
                "Readings moved from open chunks into sealed chunks since start.",
                w.chunk_rows,
            );
        }
        if let Ok(b) = i.store.budget_status() {
            render_budget(&mut out, &b);
        }
        if let Ok(devices) = i.store.devices() {
            let online = devices.iter().filter(|d| d.online == Some(true)).count();
            gauge(
                &mut out,
                "edgewatch_devices_online",
                "Devices whose last status (sensors/{deviceId}/status) is online.",
                online as f64,
            );
        }

        if let Some((fanout, live)) = i.live.get() {
            head(
                &mut out,
                "edgewatch_live_connections",
                "gauge",
                "Open live connections by transport.",
            );
            for t in [Transport::Sse, Transport::Ws, Transport::Poll] {
                let _ = writeln!(
                    out,
                    "edgewatch_live_connections{{transport=\"{}\"}} {}",
                    t.label(),
                    live.connections(t)
                );
            }
            let q = fanout.queue_stats();
            gauge(
                &mut out,
                "edgewatch_live_subscriptions",
                "Open fan-out subscriptions.",
                q.subscriptions as f64,
            );
            gauge(
                &mut out,
                "edgewatch_live_subscriptions_conflating",
                "Subscriptions currently lagging (conflating to the latest value per topic).",
                q.conflating as f64,
            );
            gauge(
                &mut out,
                "edgewatch_live_queue_depth_max",
                "Deepest subscriber queue, events (the worst per-subscriber lag).",
                q.max_depth as f64,
            );
            gauge(
                &mut out,
                "edgewatch_live_queue_depth_sum",
                "Events queued over all subscribers.",
                q.total_depth as f64,
            );
            let st = fanout.stats();
            counters(
                &mut out,
                &[
                    (
                        "edgewatch_live_events_delivered_total",
                        "Events queued to live subscribers.",
                        &st.delivered,
                    ),
                    (
                        "edgewatch_live_conflated_dropped_total",
                        "Readings dropped for slow subscribers (superseded while conflated).",
                        &st.dropped,
                    ),
                    (
                        "edgewatch_live_gaps_total",
                        "Gap notices sent to slow subscribers.",
                        &st.gaps,
                    ),
                    (
                        "edgewatch_live_lag_disconnects_total",
                        "Subscribers disconnected for sustained lag.",
                        &st.lag_disconnects,
                    ),
                    (
                        "edgewatch_live_catchup_failures_total",
                        "Reads of the log for live delivery (fan-out catch-up, watch replay) that failed; the subscribers concerned were sent a gap.",
                        &st.catchup_failures,
                    ),
                    (
                        "edgewatch_live_events_unencodable_total",
                        "Readings whose live event could not be serialized, so were not sent (logged).",
                        &st.unencodable,
                    ),
                ],
            );
            for (name, help, h) in [
                (
                    "edgewatch_live_link_to_fanout_seconds",
                    "Broker link to committed reading at the fan-out (ingest, group commit, fsync).",
                    &st.link_to_fanout,
                ),
                (
                    "edgewatch_live_publish_seconds",
                    "One fan-out publish call (match and queue a committed batch).",
                    &st.publish_seconds,
                ),
            ] {
                head(&mut out, name, "histogram", help);
                h.render(&mut out, name, "");
            }
            head(
                &mut out,
                "edgewatch_live_fanout_to_write_seconds",
                "histogram",
                "Live reading made by the fan-out to written by its transport.",
            );
            st.sse_write.render(
                &mut out,
                "edgewatch_live_fanout_to_write_seconds",
                "transport=\"sse\"",
            );
            st.ws_write.render(
                &mut out,
                "edgewatch_live_fanout_to_write_seconds",
                "transport=\"ws\"",
            );
        }

        head(
            &mut out,
            "edgewatch_http_requests_total",
            "counter",
            "HTTP requests by matched route, method and status.",
        );
        if let Ok(m) = i.http.requests.lock() {
            for ((route, method, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "edgewatch_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                    escape(route),
                    escape(method)
                );
            }
        }
        head(
            &mut out,
            "edgewatch_http_request_duration_seconds",
            "histogram",
            "Time to the response head by matched route (streams: time to open).",
        );
        let hist: Vec<(String, Arc<Histogram>)> = match i.http.latency.lock() {
            Ok(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => Vec::new(),
        };
        for (route, h) in hist {
            h.render(
                &mut out,
                "edgewatch_http_request_duration_seconds",
                &format!("route=\"{}\"", escape(&route)),
            );
        }

        if let Ok(samples) = i.samples.lock() {
            for sample in samples.iter() {
                head(&mut out, sample.name, sample.kind, sample.help);
                let _ = writeln!(out, "{} {}", sample.name, (sample.read)());
            }
        }

        if let Some(rss) = process_rss_bytes() {
            gauge(
                &mut out,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                rss as f64,
            );
        }
        if let Some(fds) = process_open_fds() {
            gauge(
                &mut out,
                "process_open_fds",
                "Number of open file descriptors.",
                fds as f64,
            );
        }
        out
    }
}

/// Prometheus metrics (text exposition format 0.0.4)
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Metrics; names and meaning in docs/metrics.md.",
            content_type = "text/plain", body = String,
            example = json!("# HELP edgewatch_readings_ingested_total Readings decoded and handed to the writer.\n# TYPE edgewatch_readings_ingested_total counter\nedgewatch_readings_ingested_total 1200\n")),
        (status = 500, description = "Metrics could not be gathered."),
    )
)]
async fn scrape(State(m): State<Metrics>) -> Response {
    match tokio::task::spawn_blocking(move || m.render()).await {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Counts one request under its matched route (`unmatched` for the fallback).
async fn track(State(m): State<Metrics>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let res = next.run(req).await;
    m.inner.http.record(
        &route,
        &method,
        res.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    res
}

/// What retention removed and where the store stands against its disk budget.
fn render_budget(out: &mut String, b: &BudgetStatus) {
    labelled_counter(
        out,
        "edgewatch_retention_readings_removed_total",
        "Readings retention removed since start, by reason (age: older than retention_days; budget: the oldest, to fit the disk budget).",
        "reason",
        &[("age", b.removed_for_age), ("budget", b.removed_for_budget)],
    );
    gauge(
        out,
        "edgewatch_disk_budget_bytes",
        "The disk budget (disk_budget_mb) in bytes; 0: no budget.",
        b.budget_bytes.unwrap_or(0) as f64,
    );
    let Some(budget) = b.budget_bytes else {
        return;
    };
    gauge(
        out,
        "edgewatch_disk_budget_live_limit_bytes",
        "Live bytes retention keeps the store under: a share of the budget, the rest is left for the database's own overhead and lag.",
        b.live_limit_bytes.unwrap_or(budget) as f64,
    );
    gauge(
        out,
        "edgewatch_disk_budget_kept_readings",
        "The newest readings the disk budget never removes.",
        b.kept_readings as f64,
    );
    gauge(
        out,
        "edgewatch_disk_budget_exceeded",
        "1 when the database files (edgewatch_log_size_bytes) are larger than the budget, or the last settled retention step left live bytes above their limit with only kept readings left to remove; else 0.",
        f64::from(u8::from(b.exceeded)),
    );
    if let Some(live) = b.live {
        head(
            out,
            "edgewatch_store_live_bytes",
            "gauge",
            "Bytes of values the store holds, by kind (log blocks, sealed chunks, rollup pages): what the disk budget measures. The files are larger: the database's framing and space it has not reclaimed yet.",
        );
        for (kind, v) in [
            ("log", live.log),
            ("chunk", live.chunks),
            ("rollup", live.rollups),
        ] {
            let _ = writeln!(out, "edgewatch_store_live_bytes{{kind=\"{kind}\"}} {v}");
        }
    }
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    head(out, name, "counter", help);
    let _ = writeln!(out, "{name} {v}");
}

/// One counter with a label: `name{label="value"} n` per item.
fn labelled_counter(out: &mut String, name: &str, help: &str, label: &str, items: &[(&str, u64)]) {
    head(out, name, "counter", help);
    for (value, n) in items {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

/// Several counters read from atomics: `(name, help, value)`.
fn counters(out: &mut String, list: &[(&str, &str, &AtomicU64)]) {
    for (name, help, v) in list {
        counter(out, name, help, v.load(Ordering::Relaxed));
    }
}

fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    head(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {v}");
}

/// Escapes a label value (backslash, quote, newline).
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Resident set size from `/proc/self/statm` (Linux; `None` elsewhere).
fn process_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // In pages of the kernel's size: 4 KiB on x86_64, 16 KiB on a Raspberry Pi 5's kernel.
    Some(pages * rustix::param::page_size() as u64)
}

/// Entries of `/proc/self/fd` (Linux; `None` elsewhere).
fn process_open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn resident_set_size_agrees_with_the_kernels_own_figure() {
        // /proc/self/status gives VmRSS in kB whatever the page size.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        let ours = super::process_rss_bytes().unwrap();
        let theirs = kb * 1024;
        // Both are read a moment apart: allow 8 MiB of movement.
        assert!(ours.abs_diff(theirs) < 8 << 20, "{ours} vs {theirs}");
    }

    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = Histogram::new(&[1.0, 10.0]);
        h.observe(0.5);
        h.observe(5.0);
        h.observe(50.0);
        let mut out = String::new();
        h.render(&mut out, "x", "route=\"/a\"");
        assert!(out.contains("x_bucket{route=\"/a\",le=\"1\"} 1\n"));
        assert!(out.contains("x_bucket{route=\"/a\",le=\"10\"} 2\n"));
        assert!(out.contains("x_bucket{route=\"/a\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_sum{route=\"/a\"} 55.5\n"));
        assert!(out.contains("x_count{route=\"/a\"} 3\n"));
    }

    #[test]
    fn budget_metrics_render() {
        let mut out = String::new();
        render_budget(&mut out, &BudgetStatus::default());
        assert!(out.contains("edgewatch_retention_readings_removed_total{reason=\"age\"} 0\n"));
        assert!(out.contains("edgewatch_disk_budget_bytes 0\n"));
        assert!(!out.contains("edgewatch_disk_budget_exceeded"));
        let status = BudgetStatus {
            budget_bytes: Some(8 << 20),
            live_limit_bytes: Some(4 << 20),
            live: Some(crate::store::LiveBytes {
                log: 3,
                chunks: 2,
                rollups: 1,
            }),
            file_bytes: 9 << 20,
            kept_readings: 7,
            floor_reached: false,
            exceeded: true,
            removed_for_age: 5,
            removed_for_budget: 11,
        };
        let mut out = String::new();
        render_budget(&mut out, &status);
        for line in [
            "edgewatch_retention_readings_removed_total{reason=\"age\"} 5",
            "edgewatch_retention_readings_removed_total{reason=\"budget\"} 11",
            "edgewatch_disk_budget_bytes 8388608",
            "edgewatch_disk_budget_live_limit_bytes 4194304",
            "edgewatch_disk_budget_kept_readings 7",
            "edgewatch_disk_budget_exceeded 1",
            "edgewatch_store_live_bytes{kind=\"log\"} 3",
            "edgewatch_store_live_bytes{kind=\"chunk\"} 2",
            "edgewatch_store_live_bytes{kind=\"rollup\"} 1",
            "# TYPE edgewatch_store_live_bytes gauge",
        ] {
            assert!(
                out.contains(&format!("{line}\n")),
                "{line} missing in\n{out}"
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
