//! Operational metrics in the Prometheus text exposition format (version 0.0.4) at
//! `GET /metrics`.
//!
//! The parts keep their own cheap counters (atomics and [`crate::histogram::Histogram`]); this
//! module reads them at scrape time, so nothing here sits on the ingest or live path. The
//! registry, label families and the text encoding are the Prometheus project's client library
//! (`prometheus-client`, issue #16 point 3; before/after figures in BENCHMARKS.md, "/metrics:
//! library vs hand-written"):
//! * `collect`: the collectors that read the store, ingest, writer, fan-out and the values
//!   added with [`Metrics::with_sample`], at each scrape;
//! * `store`: the store's collector (log, writes, retention and disk budget, devices);
//! * `http`: the per-request middleware and its two label families (bounded labels);
//! * `process`: resident memory and open file descriptors from `/proc/self`.
//!
//! Counters are registered under their family name (without `_total`) and exposed, as
//! before, as `name_total` with `# TYPE name_total counter`: the library's 0.0.4 encoder adds
//! the suffix. What is measured:
//!
//! | metric | type | source |
//! | --- | --- | --- |
//! | `edgewatch_publishes_received_total` | counter | ingest |
//! | `edgewatch_readings_ingested_total` | counter | ingest (handed to the writer) |
//! | `edgewatch_presence_changes_total` | counter | ingest |
//! | `edgewatch_readings_rejected_total{reason}` | counter | ingest rejects |
//! | `edgewatch_publishes_ignored_total` | counter | ingest (topics outside `sensors/` no mapping matches) |
//! | `edgewatch_readings_split_total` | counter | ingest (readings beyond the first of a mapped publish) |
//! | `edgewatch_ingest_mapped_readings_total{mapping}`, `edgewatch_ingest_mapping_rejects_total{mapping}` | counter | ingest mappings (`[ingest]`, only when there are some) |
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
//! | `edgewatch_http_connections` | gauge | HTTP server: open connections (every kind) |
//! | `edgewatch_http_connections_refused_total{reason}` | counter | HTTP server: connections closed at `global` (`bridge.http_max_connections`) or `per_ip` cap, or when their first request head (over HTTPS: the TLS handshake and first head) did not arrive in time (`head_timeout`) |
//! | `edgewatch_http_requests_refused_total{reason}` | counter | HTTP requests refused before a handler: `rate` (429) or `host` (421) |
//! | `edgewatch_live_ws_subscriptions_refused_total` | counter | WebSocket subscribes over `live.ws_max_subscriptions` |
//! | `edgewatch_uplink_connected`, `_lag_readings`, `_lag_seconds`, `_cursor` `{uplink}` | gauge | uplinks (`[[uplink]]`) |
//! | `edgewatch_uplink_forwarded_total`, `_resent_total`, `_refused_total`, `_dropped_total`, `_connects_total` `{uplink}` | counter | uplinks |
//! | `process_resident_memory_bytes`, `process_open_fds` | gauge | `/proc/self` (Linux) |
//!
//! # Accounting
//! Every publish ingest takes ends as exactly one of these, so at any quiet moment (nothing
//! queued for the writer):
//!
//! ```text
//! edgewatch_publishes_received_total + edgewatch_readings_split_total
//!     = edgewatch_readings_stored_total
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
//! `edgewatch_mqtt_ingest_skipped_total` (publishes the broker accepted that did not reach the
//! bridge: its feed was full).

mod collect;
mod http;
mod process;
mod store;
mod uplink;

use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;

use crate::ingest::Ingest;
use crate::live::connections::LiveMetrics;
use crate::live::fanout::Fanout;
use crate::store::Store;
use collect::Sources;
pub use http::HttpCounts;

/// The content type of the text exposition format (version 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Everything `/metrics` reports. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Built once in [`Metrics::new`]: collectors only, read at each scrape. Parts added later
    /// ([`Metrics::with_live`], [`Metrics::with_sample`]) go into `sources`, which the
    /// collectors read, so the registry itself is never changed after start.
    registry: Registry,
    sources: Arc<Sources>,
    http: Arc<http::HttpMetrics>,
}

/// A value owned elsewhere (the embedded broker), read at each scrape.
#[derive(Clone)]
pub struct Sample {
    /// Metric name as exposed, following Prometheus conventions (a counter's ends in
    /// `_total`).
    pub name: &'static str,
    /// `# HELP` text.
    pub help: &'static str,
    /// Gauge or counter.
    pub kind: SampleKind,
    /// Reads the current value.
    pub read: Arc<dyn Fn() -> f64 + Send + Sync>,
}

/// What a [`Sample`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleKind {
    /// A value that goes up and down.
    Gauge,
    /// A count since start; the name ends in `_total`.
    Counter,
}

impl std::fmt::Debug for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sample")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics over the store and ingest of a hub (see [`crate::Bridge::metrics`]).
    pub fn new(store: Store, ingest: Ingest) -> Self {
        let sources = Arc::new(Sources {
            store,
            ingest,
            live: OnceLock::new(),
            http_counts: OnceLock::new(),
            uplinks: OnceLock::new(),
            samples: Mutex::new(Vec::new()),
        });
        let http = Arc::new(http::HttpMetrics::default());
        let mut registry = Registry::default();
        // In this order in the exposition.
        registry.register_collector(Box::new(collect::Pipeline(sources.clone())));
        registry.register_collector(Box::new(store::Storage(sources.clone())));
        registry.register_collector(Box::new(collect::Live(sources.clone())));
        registry.register_collector(Box::new(http::HttpCollector(http.clone())));
        registry.register_collector(Box::new(http::Guard(sources.clone())));
        registry.register_collector(Box::new(uplink::Uplinks(sources.clone())));
        registry.register_collector(Box::new(collect::Samples(sources.clone())));
        registry.register_collector(Box::new(process::Process));
        Self {
            inner: Arc::new(Inner {
                registry,
                sources,
                http,
            }),
        }
    }

    /// Adds the live side: the fan-out and the per-transport connection gauges (once; later
    /// calls are ignored).
    pub fn with_live(self, fanout: Fanout, live: Arc<LiveMetrics>) -> Self {
        let _ = self.inner.sources.live.set((fanout, live));
        self
    }

    /// Adds the HTTP limits' counts (`crate::http::guard::HttpGuard::counts`; once, later
    /// calls are ignored).
    pub fn with_http_counts(self, counts: Arc<HttpCounts>) -> Self {
        let _ = self.inner.sources.http_counts.set(counts);
        self
    }

    /// Adds the uplinks (once; later calls are ignored).
    pub fn with_uplinks(self, uplinks: crate::uplink::Uplinks) -> Self {
        let _ = self.inner.sources.uplinks.set(uplinks);
        self
    }

    /// Adds a value owned elsewhere, read at each scrape.
    pub fn with_sample(self, sample: Sample) -> Self {
        debug_assert!(
            sample.kind != SampleKind::Counter || sample.name.ends_with("_total"),
            "counter {} must end in _total",
            sample.name
        );
        if let Ok(mut samples) = self.inner.sources.samples.lock() {
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
        router.layer(axum::middleware::from_fn_with_state(
            self.inner.http.clone(),
            http::track,
        ))
    }

    /// Renders the exposition text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(48 * 1024);
        // Writing to a String does not fail and the collectors only write, so an error
        // cannot happen here; were one to, the text so far is still served.
        let _ = prometheus_text::encode(&mut out, &self.inner.registry);
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::live::fanout::FanoutConfig;

    /// Every family and its type as the hand-written exposition had them before the client
    /// library (issue #16 point 3): names, `_total` suffixes and types must not move. With a
    /// disk budget, `edgewatch_disk_budget_*` and `edgewatch_store_live_bytes` join them. The
    /// HTTP limits' families came later (issue #17).
    const FAMILIES: &[(&str, &str)] = &[
        ("edgewatch_devices_online", "gauge"),
        ("edgewatch_disk_budget_bytes", "gauge"),
        ("edgewatch_external_delivery_records", "gauge"),
        (
            "edgewatch_external_delivery_records_evicted_total",
            "counter",
        ),
        ("edgewatch_http_connections", "gauge"),
        ("edgewatch_http_connections_refused_total", "counter"),
        ("edgewatch_http_request_duration_seconds", "histogram"),
        ("edgewatch_http_requests_refused_total", "counter"),
        ("edgewatch_http_requests_total", "counter"),
        ("edgewatch_last_seq", "gauge"),
        ("edgewatch_live_catchup_failures_total", "counter"),
        ("edgewatch_live_conflated_dropped_total", "counter"),
        ("edgewatch_live_connections", "gauge"),
        ("edgewatch_live_events_delivered_total", "counter"),
        ("edgewatch_live_events_unencodable_total", "counter"),
        ("edgewatch_live_fanout_to_write_seconds", "histogram"),
        ("edgewatch_live_gaps_total", "counter"),
        ("edgewatch_live_lag_disconnects_total", "counter"),
        ("edgewatch_live_link_to_fanout_seconds", "histogram"),
        ("edgewatch_live_publish_seconds", "histogram"),
        ("edgewatch_live_queue_depth_max", "gauge"),
        ("edgewatch_live_queue_depth_sum", "gauge"),
        ("edgewatch_live_subscriptions", "gauge"),
        ("edgewatch_live_subscriptions_conflating", "gauge"),
        ("edgewatch_live_ws_subscriptions_refused_total", "counter"),
        ("edgewatch_log_readings", "gauge"),
        ("edgewatch_log_size_bytes", "gauge"),
        ("edgewatch_mqtt_connections", "gauge"),
        ("edgewatch_mqtt_held_acks_total", "counter"),
        ("edgewatch_presence_changes_total", "counter"),
        ("edgewatch_presence_recorded_total", "counter"),
        ("edgewatch_publishes_ignored_total", "counter"),
        ("edgewatch_publishes_received_total", "counter"),
        ("edgewatch_readings_duplicate_total", "counter"),
        ("edgewatch_readings_ingested_total", "counter"),
        ("edgewatch_readings_rejected_total", "counter"),
        ("edgewatch_readings_split_total", "counter"),
        ("edgewatch_readings_stored_total", "counter"),
        ("edgewatch_retention_readings_removed_total", "counter"),
        ("edgewatch_series", "gauge"),
        ("edgewatch_store_sealed_readings_total", "counter"),
        ("edgewatch_store_written_bytes_total", "counter"),
        ("edgewatch_store_written_values_total", "counter"),
        ("edgewatch_writer_batch_size", "histogram"),
        ("edgewatch_writer_commit_duration_seconds", "histogram"),
        ("edgewatch_writer_commit_failures_total", "counter"),
        ("edgewatch_writer_healthy", "gauge"),
        ("edgewatch_writer_items_failed_total", "counter"),
        ("edgewatch_writer_queue_capacity", "gauge"),
        ("edgewatch_writer_queue_free", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
    ];

    #[tokio::test]
    async fn names_and_types_are_those_of_the_hand_written_exposition() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::BridgeConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let hub = crate::start(cfg, CancellationToken::new()).await.unwrap();
        let metrics = hub
            .metrics()
            .with_live(Fanout::new(FanoutConfig::default()), Arc::default())
            .with_sample(Sample {
                name: "edgewatch_mqtt_connections",
                help: "MQTT clients connected to the embedded broker.",
                kind: SampleKind::Gauge,
                read: Arc::new(|| 2.0),
            })
            .with_sample(Sample {
                name: "edgewatch_mqtt_held_acks_total",
                help: "PUBACKs held back because the bridge was behind (backpressure).",
                kind: SampleKind::Counter,
                read: Arc::new(|| 7.0),
            });
        let text = metrics.render();
        let types: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
            .collect();
        let expected: BTreeMap<&str, &str> = FAMILIES.iter().copied().collect();
        assert_eq!(types, expected, "{text}");
        for line in [
            "# HELP edgewatch_readings_ingested_total Readings decoded and handed to the writer.",
            "edgewatch_readings_ingested_total 0",
            "edgewatch_readings_rejected_total{reason=\"none\"} 0",
            "edgewatch_mqtt_connections 2.0",
            "edgewatch_mqtt_held_acks_total 7.0",
            "edgewatch_live_connections{transport=\"poll\"} 0",
            "edgewatch_live_fanout_to_write_seconds_bucket{transport=\"ws\",le=\"0.0005\"} 0",
            "edgewatch_writer_batch_size_bucket{le=\"2500\"} 0",
            "edgewatch_writer_commit_duration_seconds_count 0",
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "{line} missing in\n{text}"
            );
        }
        hub.shutdown().await.unwrap();
    }
}
