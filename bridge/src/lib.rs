//! The edgewatch bridge: takes inbound MQTT publishes, stores every reading once, in order, in
//! an append-only event log on sled with a global `seq`, and serves history and live streams
//! over HTTP.
//!
//! # Layout: one module per stage of the data flow (ARCHITECTURE.md)
//! * [`ingest`]: where a reading is decoded. The one seam for inbound publishes (the
//!   embedded broker's link, [`ingest::external`] for an existing MQTT broker): decode, reject
//!   (counted, kept in a bounded ring), hand readings and presence to the writer.
//! * [`writer`]: the one task that writes: bounded queue, group commit, acknowledgement after
//!   the flush, broadcast of committed batches.
//! * [`uplink`]: store-and-forward to central MQTT brokers, from the log after a saved cursor.
//! * [`store`]: where a reading is stored, the only module that names sled: event log,
//!   per-series chunks, catalogue, presence, rollups, dedupe, delivery records, retention.
//! * [`presence`]: `online` / `stale` / `offline` per device, kept current by a sweep.
//! * [`live`]: where a reading is fanned out: [`live::fanout`] (filter trie, bounded
//!   per-subscriber queues, conflation, gaps) and [`live::LiveFeed`] (resumable watches: replay
//!   from the log after a seq, then live).
//! * [`http`]: where a reading is written to a browser or an app: [`http::app`] builds the
//!   whole router; the history API ([`http::api`]), the live transports ([`http::live`]: SSE,
//!   WebSocket, long poll, access), the dashboard, the API descriptions, CORS, and the HTTP/1
//!   server that writes event streams straight to the connection, over TLS too
//!   ([`http::tls`], with [`http::redirect`] from plain HTTP).
//! * [`metrics`]: `GET /metrics`, read from the stages' own counters at scrape time.
//! * [`config`]: [`BridgeConfig`], the `[bridge]` section.
//! * leaves shared by several stages: [`histogram`] (the latency and batch-size histogram),
//!   `json` (the JSON wire format of readings and rollups, written straight into a buffer),
//!   `split` (a parallel map over the cores).
//! * [`Bridge`] (this file): starts and stops ingest, writer, presence and sources together.

pub mod config;
pub mod histogram;
pub mod http;
pub mod ingest;
mod json;
pub mod live;
pub mod metrics;
pub mod presence;
mod split;
pub mod store;
pub mod uplink;
pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::BridgeConfig;
pub use http::{app, AppState};
pub use ingest::{run_ingest, Delivery, Ingest, Publish};
pub use store::{Store, StoreError, StoredReading};
pub use writer::{CommittedBatch, Outcome, WriterHandle};

/// Errors starting or stopping the bridge.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The external broker settings are invalid.
    #[error(transparent)]
    External(#[from] ingest::external::ExternalError),
    /// The writer failed at shutdown.
    #[error(transparent)]
    Writer(#[from] writer::WriterError),
    /// A task could not be joined.
    #[error("bridge task failed: {0}")]
    Task(String),
}

/// How long [`Bridge::shutdown`] waits for sources to stop before it stops the writer anyway.
pub const SOURCE_STOP_GRACE: Duration = Duration::from_secs(5);

/// A running bridge: store, writer, ingest and any sources.
#[derive(Debug)]
pub struct Bridge {
    cfg: BridgeConfig,
    store: Store,
    ingest: Ingest,
    committed: broadcast::Sender<CommittedBatch>,
    presence: broadcast::Sender<store::PresenceUpdate>,
    board: presence::Presence,
    http_guard: Arc<http::guard::HttpGuard>,
    writer_task: JoinHandle<Result<(), writer::WriterError>>,
    writer_stop: CancellationToken,
    sources: TaskTracker,
    sources_stop: CancellationToken,
}

/// Opens the store, starts the writer and, when `cfg.mqtt_url` is set, the external source.
///
/// Cancelling `shutdown` stops the sources; call [`Bridge::shutdown`] to drain the writer and
/// flush.
pub async fn start(cfg: BridgeConfig, shutdown: CancellationToken) -> Result<Bridge, BridgeError> {
    start_with(cfg, ingest::mapping::Mappings::default(), shutdown).await
}

/// As [`start`], with ingest mappings (`[ingest]`) in force from the first publish; an external
/// source also subscribes to their topics.
pub async fn start_with(
    cfg: BridgeConfig,
    mappings: ingest::mapping::Mappings,
    shutdown: CancellationToken,
) -> Result<Bridge, BridgeError> {
    let dir = cfg.data_dir.clone();
    let opts = cfg.store_options();
    let store = tokio::task::spawn_blocking(move || Store::open(&dir, &opts))
        .await
        .map_err(|e| BridgeError::Task(e.to_string()))??;
    info!(data_dir = %cfg.data_dir.display(), last_seq = store.last_seq()?, "store open");
    let writer_stop = CancellationToken::new();
    let w = writer::spawn_writer(store.clone(), cfg.writer(), writer_stop.clone());
    let rejects = Arc::new(ingest::Rejects::new(cfg.rejects_kept));
    let ingest = Ingest::new(w.handle, rejects, cfg.max_payload_bytes);
    let also_subscribe = mappings.filters();
    ingest.set_mappings(mappings);
    let board = presence::Presence::new(cfg.presence(), cfg.broadcast_capacity);
    let statuses = w.presence.subscribe();
    let bridge = Bridge {
        store,
        ingest,
        committed: w.committed,
        presence: w.presence,
        board,
        http_guard: Arc::new(http::guard::HttpGuard::new(&cfg)),
        writer_task: w.task,
        writer_stop,
        sources: TaskTracker::new(),
        sources_stop: shutdown.child_token(),
        cfg,
    };
    bridge.sources.spawn(presence::run(
        bridge.board.clone(),
        bridge.store.clone(),
        statuses,
        bridge.sources_stop.clone(),
    ));
    if let Some(mut ext) = bridge.cfg.external() {
        ingest::external::parse_mqtt_url(&ext.url)?;
        ext.also_subscribe = also_subscribe;
        let (ingest, stop) = (bridge.ingest.clone(), bridge.sources_stop.clone());
        bridge.sources.spawn(async move {
            if let Err(err) = ingest::external::run_external(ext, ingest, stop).await {
                warn!(%err, "external source failed");
            }
        });
    }
    Ok(bridge)
}

impl Bridge {
    /// The ingest seam: `ingest().handle(delivery).await` feeds one publish.
    pub fn ingest(&self) -> &Ingest {
        &self.ingest
    }

    /// Consumes `source` (e.g. the embedded broker's in-process link) on a task of the hub
    /// until it ends or the hub shuts down.
    pub fn run_source<S, I>(&self, source: S)
    where
        S: Stream<Item = I> + Send + 'static,
        I: Into<Delivery> + Send + 'static,
    {
        let (ingest, stop) = (self.ingest.clone(), self.sources_stop.clone());
        self.sources.spawn(run_ingest(source, ingest, stop));
    }

    /// The store, for read access.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A receiver of committed batches (live fan-out). Bounded: see [`writer`].
    pub fn live(&self) -> broadcast::Receiver<CommittedBatch> {
        self.committed.subscribe()
    }

    /// A receiver of durable presence changes (live `status` events). Bounded like
    /// [`Bridge::live`].
    pub fn presence(&self) -> broadcast::Receiver<store::PresenceUpdate> {
        self.presence.subscribe()
    }

    /// Device presence as shown (`online` / `stale` / `offline`), kept current by a sweep
    /// task of the hub.
    pub fn device_presence(&self) -> &presence::Presence {
        &self.board
    }

    /// A receiver of shown-status changes (live `status` events): explicit statuses and
    /// devices going stale or coming back. Bounded like [`Bridge::live`].
    pub fn status_changes(&self) -> broadcast::Receiver<presence::StatusChange> {
        self.board.subscribe()
    }

    /// The HTTP handlers' state.
    pub fn app_state(&self) -> AppState {
        AppState::new(
            self.store.clone(),
            self.ingest.rejects().clone(),
            Some(self.ingest_writer().clone()),
            &self.cfg,
        )
        .with_presence(self.board.clone())
        .with_guard(self.http_guard.clone())
        .with_payloads(self.ingest.last_payloads().clone())
    }

    /// The HTTP limits of this hub (`bridge.http_*`): serve with them
    /// ([`http::serve_guarded`]) so `/metrics` counts the connections they refuse.
    pub fn http_guard(&self) -> Arc<http::guard::HttpGuard> {
        self.http_guard.clone()
    }

    fn ingest_writer(&self) -> &WriterHandle {
        self.ingest.writer()
    }

    /// The HTTP router without live routes and `/metrics` (see [`http::app`]).
    pub fn router(&self) -> axum::Router {
        app(self.app_state(), None, None)
    }

    /// Serves the API on `listener` until `shutdown` completes.
    pub async fn serve_http(
        &self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        http::serve_guarded(listener, self.router(), self.http_guard(), shutdown).await
    }

    /// The `/metrics` registry over this hub's store, ingest and writer; add the live side
    /// with [`metrics::Metrics::with_live`].
    pub fn metrics(&self) -> metrics::Metrics {
        metrics::Metrics::new(self.store.clone(), self.ingest.clone())
            .with_http_counts(self.http_guard.counts())
    }

    /// The config the hub runs with.
    pub fn config(&self) -> &BridgeConfig {
        &self.cfg
    }

    /// Stops the sources, then drains the writer's queue, commits and flushes.
    pub async fn shutdown(self) -> Result<(), BridgeError> {
        self.sources_stop.cancel();
        self.sources.close();
        if tokio::time::timeout(SOURCE_STOP_GRACE, self.sources.wait())
            .await
            .is_err()
        {
            warn!("ingest sources still running at shutdown");
        }
        self.writer_stop.cancel();
        let res = self
            .writer_task
            .await
            .map_err(|e| BridgeError::Task(e.to_string()))?;
        res?;
        self.store.flush()?;
        info!("bridge stopped");
        Ok(())
    }
}
