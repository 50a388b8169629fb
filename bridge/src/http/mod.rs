//! The HTTP API (axum): history, catalogue, rejects, health.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /v1/series` | every series with topic, unit, last value, last seen, count |
//! | `GET /v1/devices` | devices with their status (`online` / `stale` / `offline`), see [`crate::presence`] |
//! | `GET /v1/readings?filter=&from=&to=&limit=&after=` | raw readings in seq order, paged by seq |
//! | `GET /v1/rollups?filter=&from=&to=&step=` | min/max/avg/count/last per time bucket |
//! | `GET /v1/rejects` | reject counters and the most recent rejects |
//! | `GET /healthz`, `GET /readyz` | liveness, readiness (the writer is committing) |
//!
//! `filter` is an MQTT topic filter and may repeat; times are RFC 3339 or epoch milliseconds;
//! `from` is inclusive, `to` exclusive. Errors are `{"error":{"code":"...","message":"..."}}`.
//! History queries run on the blocking pool, at most `http_max_queries` at once; more get
//! `503 Service Unavailable` with `Retry-After: 1` instead of queuing.

pub mod api;
pub mod auth;
mod backup;
mod cors;
pub mod dashboard;
mod device;
mod direct;
pub mod docs;
pub mod dto;
mod error;
pub mod formats;
pub mod guard;
pub mod live;
pub mod params;
pub mod redirect;
mod replay;
mod server;
pub mod tls;
pub mod uplinks;

pub use dto::*;
pub use error::*;
pub use params::{
    auto_step, CountParam, ReadingsQuery, RollupsQuery, UnsignedParam, DEFAULT_PAGE,
    DEFAULT_ROLLUP_SPAN_MS, TARGET_POINTS,
};

use std::future::Future;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::BridgeConfig;
use crate::ingest::Rejects;
use crate::metrics::Metrics;
use crate::presence::Presence as PresenceBoard;
use crate::store::Store;
use crate::writer::WriterHandle;
use api::*;

/// Shared state of the HTTP handlers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    store: Store,
    rejects: Arc<Rejects>,
    writer: Option<WriterHandle>,
    queries: Arc<Semaphore>,
    max_page: usize,
    max_points: usize,
    presence: PresenceBoard,
    guard: Arc<guard::HttpGuard>,
    auth: Arc<auth::Authority>,
    uplinks: Option<crate::uplink::Uplinks>,
    /// Devices' last payloads, when ingest keeps them.
    payloads: Option<Arc<crate::ingest::last_payload::LastPayloads>>,
}

impl AppState {
    /// State over `store` and `rejects`. `writer`, when given, drives `/readyz`.
    pub fn new(
        store: Store,
        rejects: Arc<Rejects>,
        writer: Option<WriterHandle>,
        cfg: &BridgeConfig,
    ) -> Self {
        AppState {
            store,
            rejects,
            writer,
            queries: Arc::new(Semaphore::new(cfg.http_max_queries.max(1))),
            max_page: cfg.http_max_page.max(1),
            max_points: cfg.http_max_points.max(1),
            presence: PresenceBoard::new(cfg.presence(), 1),
            guard: Arc::new(guard::HttpGuard::new(cfg)),
            auth: Arc::new(auth::Authority::open(&["#".to_owned()], &[])),
            uplinks: None,
            payloads: None,
        }
    }

    /// Decides callers with `auth` (the hub's, shared with the live routes and `/metrics`)
    /// instead of letting every caller read everything.
    pub fn with_authority(mut self, auth: Arc<auth::Authority>) -> Self {
        self.auth = auth;
        self
    }

    /// Who decides callers.
    pub fn authority(&self) -> &Arc<auth::Authority> {
        &self.auth
    }

    /// Shows device status from `presence` (the hub's board, kept current by its sweep task)
    /// instead of a board of this state's own, which `GET /v1/devices` alone keeps current.
    pub fn with_presence(mut self, presence: PresenceBoard) -> Self {
        self.presence = presence;
        self
    }

    /// Serves devices' last payloads from `payloads` (`GET /v1/devices/{deviceId}/payload`).
    pub fn with_payloads(
        mut self,
        payloads: Arc<crate::ingest::last_payload::LastPayloads>,
    ) -> Self {
        self.payloads = Some(payloads);
        self
    }

    /// Shows `uplinks` at `GET /v1/uplinks` (an empty list without).
    pub fn with_uplinks(mut self, uplinks: crate::uplink::Uplinks) -> Self {
        self.uplinks = Some(uplinks);
        self
    }

    /// Holds requests to `guard` (the hub's, shared with its server and `/metrics`) instead
    /// of limits of this state's own.
    pub fn with_guard(mut self, guard: Arc<guard::HttpGuard>) -> Self {
        self.guard = guard;
        self
    }
}

/// Everything the hub serves over HTTP, as one router: the history and operations API, the
/// live routes (when given), the dashboard and the API descriptions, and with `metrics`
/// `GET /metrics` and the per-request counters; request tracing outermost. The binary serves
/// it; in-process tests call it the same way.
pub fn app(api: AppState, live: Option<live::LiveState>, metrics: Option<&Metrics>) -> Router {
    let guard = api.guard.clone();
    let authority = api.auth.clone();
    let origins = live.as_ref().map(|l| l.cfg.allowed_origins.clone());
    let mut app = api_routes(api)
        .merge(auth::login::routes(authority.clone()))
        .merge(dashboard::routes())
        .merge(docs::routes());
    if let Some(live) = live {
        app = app.merge(live::routes(live));
    }
    app = cors::apply(app, origins.as_deref().unwrap_or_default());
    // Host and rate first: no handler (nor its Origin check, nor CORS) sees a refused request.
    app = app.layer(axum::middleware::from_fn_with_state(guard, guard::check));
    if let Some(metrics) = metrics {
        let scrape = metrics.routes().layer(axum::middleware::from_fn_with_state(
            authority,
            auth::require_metrics,
        ));
        app = metrics.track_http(app.merge(scrape));
    }
    trace_requests(app)
}

/// The history, catalogue and operations routes (with the JSON 404 fallback).
fn api_routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/series", get(series))
        .route("/v1/devices", get(devices))
        .route("/v1/devices/{device_id}/payload", get(device::last_payload))
        .route(
            "/v1/devices/{device_id}/history",
            get(device::status_history),
        )
        .route("/v1/readings", get(readings))
        .route("/v1/rollups", get(rollups))
        .route("/v1/rejects", get(rejects))
        .route("/v1/uplinks", get(uplinks::uplinks))
        .route("/v1/backup", get(backup::backup))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state)
}

/// Wraps `router` in a request span (`http` target: method, uri, matched route) with the
/// status and latency logged at debug level when the response head is ready. Apply it last.
fn trace_requests(router: Router) -> Router {
    use tower_http::trace::{DefaultOnResponse, TraceLayer};
    router.layer(
        TraceLayer::new_for_http()
            .make_span_with(|req: &axum::http::Request<_>| {
                let route = req
                    .extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map_or("unmatched", axum::extract::MatchedPath::as_str);
                tracing::info_span!(
                    "request",
                    method = %req.method(),
                    uri = %auth::redact_uri(req.uri()),
                    route,
                )
            })
            .on_response(DefaultOnResponse::new().level(tracing::Level::DEBUG)),
    )
}

/// Serves `router` on an already bound listener until `shutdown` completes (see
/// `server.rs`: event streams skip hyper's per-connection buffers), with the default
/// connection limits and timeouts (`bridge.http_*`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let guard = Arc::new(guard::HttpGuard::new(&BridgeConfig::default()));
    serve_guarded(listener, router, guard, shutdown).await
}

/// [`serve`] with the connection limits and timeouts of `guard` (the one the router's
/// [`AppState`] holds, so `/metrics` counts its refusals).
pub async fn serve_guarded(
    listener: TcpListener,
    router: Router,
    guard: Arc<guard::HttpGuard>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::http::server::serve(listener, router, guard, None, shutdown).await
}
