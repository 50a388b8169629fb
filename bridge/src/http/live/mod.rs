//! Live delivery over HTTP: Server-Sent Events, WebSocket, long polling, and the watch route
//! that answers whichever of the three the client asks for.
//!
//! | route | transport |
//! | --- | --- |
//! | `GET /v1/stream?filter=..` | SSE (`Last-Event-ID` header or `lastEventId` to resume) |
//! | `GET /v1/ws` | WebSocket, subprotocol `edgewatch.v1` (see [`ws`]) |
//! | `GET /v1/poll?filter=..&since=..&timeout=..` | long poll |
//! | `GET /v1/watch?filter=..`, `GET /v1/sensors/{deviceId}/watch` | WebSocket upgrade → WebSocket, `Accept: text/event-stream` → SSE, else long poll |
//!
//! Every transport uses MQTT topic filters and the log's `seq` as its cursor; who may read
//! what is decided in [`access`].

pub mod access;
mod poll;
pub mod schema;
mod sse;
pub mod ws;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use edgewatch_protocol::TopicFilter;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::live::LiveFeed;
use crate::live::{LiveConfig, PublishFn};
use access::Caller;

/// State of the live routes.
#[derive(Clone)]
pub struct LiveState {
    /// Opens watches.
    pub feed: LiveFeed,
    /// Settings.
    pub cfg: Arc<LiveConfig>,
    /// Cancelled at shutdown: every stream ends.
    pub shutdown: CancellationToken,
    /// Broker publisher for WebSocket `publish` messages, when the broker is in-process.
    pub publisher: Option<PublishFn>,
    /// Open live connections.
    pub connections: Arc<tokio::sync::Semaphore>,
    /// Open connections by transport, for `/metrics`.
    pub metrics: Arc<crate::live::connections::LiveMetrics>,
    auth: Arc<crate::http::auth::Authority>,
}

impl std::fmt::Debug for LiveState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveState")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl LiveState {
    /// State for the live routes; every caller anonymous with the configured
    /// `read_filters` / `publish_filters` until [`LiveState::with_authority`].
    pub fn new(
        feed: LiveFeed,
        cfg: LiveConfig,
        shutdown: CancellationToken,
        publisher: Option<PublishFn>,
    ) -> Self {
        let auth = crate::http::auth::Authority::open(&cfg.read_filters, &cfg.publish_filters);
        Self {
            auth: Arc::new(auth),
            connections: Arc::new(tokio::sync::Semaphore::new(cfg.max_connections.max(1))),
            metrics: Arc::default(),
            feed,
            cfg: Arc::new(cfg),
            shutdown,
            publisher,
        }
    }

    /// Decides callers with `auth` (the hub's, shared with the history routes).
    pub fn with_authority(mut self, auth: Arc<crate::http::auth::Authority>) -> Self {
        self.auth = auth;
        self
    }
}

/// The handlers of [`routes`].
#[derive(Debug, utoipa::OpenApi)]
#[openapi(paths(poll::poll, sse::stream, ws::upgrade, watch, watch_device))]
pub struct LiveApi;

/// The live routes.
pub fn routes(state: LiveState) -> Router {
    Router::new()
        .route("/v1/stream", get(sse::stream))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/poll", get(poll::poll))
        .route("/v1/watch", get(watch))
        .route("/v1/sensors/{device_id}/watch", get(watch_device))
        .with_state(state)
}

/// A live-endpoint error with the API's JSON shape.
#[derive(Debug)]
pub struct LiveError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl LiveError {
    pub(crate) fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: message.into(),
        }
    }

    pub(crate) fn busy() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "too_many_connections",
            message: "too many live connections; retry later".into(),
        }
    }

    /// A request to a WebSocket route that is not a valid upgrade, as JSON (axum's own
    /// rejection is plain text) with the rejection's status (400, 405 or 426).
    pub(crate) fn not_websocket(
        rejection: &axum::extract::ws::rejection::WebSocketUpgradeRejection,
    ) -> Self {
        Self {
            status: rejection.status(),
            code: "not_websocket",
            message: format!(
                "{}: send a WebSocket upgrade request",
                rejection.body_text()
            ),
        }
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: message.into(),
        }
    }
}

impl LiveError {
    /// The error as a WebSocket `error` message body.
    pub(crate) fn body(&self) -> serde_json::Value {
        json!({"type": "error", "code": self.code, "message": self.message})
    }
}

impl IntoResponse for LiveError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        res
    }
}

/// Parses the repeated `filter` parameters (default: `default`) and checks read access.
pub(crate) fn read_filters(
    raw: &[String],
    default: Option<&str>,
    caller: &Caller,
) -> Result<Vec<TopicFilter>, LiveError> {
    let mut out = Vec::new();
    for f in raw {
        let parsed = TopicFilter::parse_bounded(f)
            .map_err(|e| LiveError::bad("bad_filter", format!("parameter filter: {e}")))?;
        out.push(parsed);
    }
    if out.is_empty() {
        match default {
            Some(d) => {
                let d = TopicFilter::parse_bounded(d)
                    .map_err(|e| LiveError::bad("bad_filter", e.to_string()))?;
                if caller.may_read(&d) {
                    out.push(d);
                } else {
                    // No filter asked for: everything this caller may read.
                    out = caller
                        .scope(Vec::new())
                        .map_err(|e| LiveError::forbidden(e.message()))?;
                }
            }
            None => {
                return Err(LiveError::bad(
                    "missing_filter",
                    "parameter filter is required",
                ))
            }
        }
    }
    if let Some(denied) = out.iter().find(|f| !caller.may_read(f)) {
        return Err(LiveError::forbidden(format!(
            "not allowed to read {:?}",
            denied.as_str()
        )));
    }
    Ok(out)
}

/// Parses a seq cursor parameter or header.
pub(crate) fn parse_cursor(name: &str, value: &str) -> Result<u64, LiveError> {
    value.trim().parse::<u64>().map_err(|_| {
        LiveError::bad(
            "bad_cursor",
            format!("{name}: expected a seq number, got {value:?}"),
        )
    })
}

/// Query parameters shared by the watch routes, collected from repeated keys.
#[derive(Debug, Default)]
pub(crate) struct WatchParams {
    pub(crate) filters: Vec<String>,
    pub(crate) since: Option<String>,
    pub(crate) last_event_id: Option<String>,
    pub(crate) timeout: Option<String>,
    pub(crate) limit: Option<String>,
}

impl WatchParams {
    pub(crate) fn parse(pairs: Vec<(String, String)>, allowed: &[&str]) -> Result<Self, LiveError> {
        let mut p = WatchParams::default();
        for (k, v) in pairs {
            if k == "access_token" {
                // The caller's credential, taken by the access check (`crate::http::auth`).
                continue;
            }
            if !allowed.contains(&k.as_str()) {
                return Err(LiveError::bad(
                    "unknown_parameter",
                    format!(
                        "unknown parameter {k:?}; this endpoint takes {}",
                        allowed.join(", ")
                    ),
                ));
            }
            match k.as_str() {
                "filter" => p.filters.push(v),
                "since" => p.since = Some(v),
                "lastEventId" => p.last_event_id = Some(v),
                "timeout" => p.timeout = Some(v),
                "limit" => p.limit = Some(v),
                _ => {}
            }
        }
        Ok(p)
    }
}

const WATCH_PARAMS: &[&str] = &["filter", "since", "lastEventId", "timeout", "limit"];

/// One resource, the client's choice of transport
///
/// A WebSocket upgrade gets the WebSocket protocol, `Accept: text/event-stream` gets SSE,
/// anything else a long poll.
#[utoipa::path(
    get,
    path = "/v1/watch",
    operation_id = "watch",
    tag = "live",
    params(schema::WatchQuery),
    extensions(("x-websocket" = json!(ws::websocket_extension()))),
    responses(
        (status = 101, description = "Switching protocols (WebSocket)."),
        (status = 200, description = "Long-poll answer, or an SSE stream when asked for.", content(
            (schema::PollResult = "application/json"),
            (schema::EventStream = "text/event-stream", example = json!(schema::EVENT_STREAM_EXAMPLE)),
        )),
        (status = 400, response = crate::http::BadRequest),
        (status = 403, response = crate::http::Forbidden),
        (status = 500, response = crate::http::Internal),
        (status = 503, response = crate::http::Overloaded),
    )
)]
async fn watch(
    State(state): State<LiveState>,
    Query(pairs): Query<Vec<(String, String)>>,
    request: axum::extract::Request,
) -> Response {
    negotiate(state, pairs, None, request).await
}

/// Watch one device (`sensors/{deviceId}/#`)
#[utoipa::path(
    get,
    path = "/v1/sensors/{deviceId}/watch",
    operation_id = "watchDevice",
    tag = "live",
    params(
        ("deviceId" = String, Path, description = "Device id: 1-64 of `A-Z a-z 0-9 _ . : -`."),
        schema::DeviceWatchQuery,
    ),
    extensions(("x-websocket" = json!(ws::websocket_extension()))),
    responses(
        (status = 101, description = "Switching protocols (WebSocket)."),
        (status = 200, description = "Long-poll answer, or an SSE stream when asked for.", content(
            (schema::PollResult = "application/json"),
            (schema::EventStream = "text/event-stream", example = json!(schema::EVENT_STREAM_EXAMPLE)),
        )),
        (status = 400, response = crate::http::BadRequest),
        (status = 403, response = crate::http::Forbidden),
        (status = 500, response = crate::http::Internal),
        (status = 503, response = crate::http::Overloaded),
    )
)]
async fn watch_device(
    State(state): State<LiveState>,
    Path(device_id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
    request: axum::extract::Request,
) -> Response {
    if !edgewatch_protocol::payload::is_valid_id(&device_id) {
        return LiveError::bad("bad_device_id", format!("invalid device id {device_id:?}"))
            .into_response();
    }
    negotiate(
        state,
        pairs,
        Some(format!("sensors/{device_id}/#")),
        request,
    )
    .await
}

/// One resource, the client's choice: WebSocket upgrade, SSE, or a long poll.
async fn negotiate(
    state: LiveState,
    mut pairs: Vec<(String, String)>,
    device_filter: Option<String>,
    request: axum::extract::Request,
) -> Response {
    if let Some(f) = device_filter {
        pairs.retain(|(k, _)| k != "filter");
        pairs.push(("filter".into(), f));
    }
    let (mut parts, _body) = request.into_parts();
    let caller = match Caller::from_request_parts(&mut parts, &state).await {
        Ok(c) => c,
        Err(refused) => return refused.into_response(),
    };
    let headers: HeaderMap = parts.headers.clone();
    let wants_ws = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if wants_ws {
        let upgrade =
            match axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &state).await
            {
                Ok(u) => u,
                Err(rejection) => return LiveError::not_websocket(&rejection).into_response(),
            };
        let params = match WatchParams::parse(pairs, WATCH_PARAMS) {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        return ws::upgrade_with(state, caller, upgrade, Some(params)).await;
    }
    let wants_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if wants_sse {
        sse::respond(state, caller, headers, pairs).await
    } else {
        poll::respond(state, caller, pairs).await
    }
}
