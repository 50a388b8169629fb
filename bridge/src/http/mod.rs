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

pub mod dashboard;
pub mod docs;
pub mod live;
mod server;

use std::future::Future;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use edgewatch_protocol::timefmt::{now_ms, parse_time, Rfc3339};
use edgewatch_protocol::TopicFilter;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::error;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoParams, ToResponse, ToSchema};

use crate::config::BridgeConfig;
use crate::ingest::Rejects;
use crate::json;
use crate::presence::{DeviceStatus, Presence as PresenceBoard, StatusSource};
use crate::store::{
    ReadingQuery, RollupQuery, RollupSource, RowPage, SeriesRollup as StoredRollup, Store,
    StoreError, StoredReading,
};
use crate::writer::WriterHandle;

/// Default page size of `/v1/readings`.
pub const DEFAULT_PAGE: usize = 1000;
/// Points per series `/v1/rollups` aims for when `step` is omitted.
pub const TARGET_POINTS: i64 = 1000;
/// Rollup range when `from` is omitted: the last 24 hours.
pub const DEFAULT_ROLLUP_SPAN_MS: i64 = 86_400_000;

/// Steps `/v1/rollups` picks from when `step` is omitted.
const NICE_STEPS_MS: &[i64] = &[
    1_000,
    2_000,
    5_000,
    10_000,
    15_000,
    30_000,
    60_000,
    120_000,
    300_000,
    600_000,
    900_000,
    1_800_000,
    3_600_000,
    7_200_000,
    10_800_000,
    21_600_000,
    43_200_000,
    86_400_000,
    604_800_000,
];

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
        }
    }

    /// Shows device status from `presence` (the hub's board, kept current by its sweep task)
    /// instead of a board of this state's own, which `GET /v1/devices` alone keeps current.
    pub fn with_presence(mut self, presence: PresenceBoard) -> Self {
        self.presence = presence;
        self
    }
}

/// The API router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/series", get(series))
        .route("/v1/devices", get(devices))
        .route("/v1/readings", get(readings))
        .route("/v1/rollups", get(rollups))
        .route("/v1/rejects", get(rejects))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state)
}

/// Wraps `router` in a request span (`http` target: method, uri, matched route) with the
/// status and latency logged at debug level when the response head is ready. Apply it last.
pub fn trace_requests(router: Router) -> Router {
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
                    uri = %req.uri(),
                    route,
                )
            })
            .on_response(DefaultOnResponse::new().level(tracing::Level::DEBUG)),
    )
}

/// Serves `router` on an already bound listener until `shutdown` completes (see
/// `server.rs`: event streams skip hyper's per-connection buffers).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::http::server::serve(listener, router, shutdown).await
}

/// The body of every HTTP error: `{"error":{"code":"...","message":"..."}}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(
    as = Error,
    example = json!({"error": {"code": "bad_filter", "message": "parameter filter: '#' must be the last level"}})
)]
pub struct ErrorBody {
    /// What went wrong.
    #[schema(inline)]
    pub error: ErrorDetail,
}

/// The `error` member of an error body.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// Stable machine-readable code (see docs/errors.md).
    #[schema(examples(
        "bad_filter",
        "bad_time",
        "bad_range",
        "bad_parameter",
        "unknown_parameter",
        "too_large",
        "overloaded",
        "not_found",
        "not_ready",
        "internal",
        "bad_cursor",
        "bad_timeout",
        "bad_limit",
        "missing_filter",
        "forbidden",
        "too_many_connections",
        "bad_device_id",
        "origin_not_allowed",
        "not_websocket"
    ))]
    pub code: String,
    /// Human-readable explanation naming the parameter.
    pub message: String,
}

impl ErrorBody {
    /// An error body with `code` and `message`.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: message.into(),
            },
        }
    }
}

/// A shared error response of the OpenAPI document (`#/components/responses/{name}`): the
/// [`ErrorBody`] schema with one example, plus `Retry-After` when the client should retry.
fn error_response<'r>(
    name: &'r str,
    description: &str,
    (code, message): (&str, &str),
    retry_after: bool,
) -> (&'r str, RefOr<utoipa::openapi::Response>) {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("Error")))
        .example(Some(json!({"error": {"code": code, "message": message}})))
        .build();
    let mut response = ResponseBuilder::new()
        .description(description)
        .content("application/json", content);
    if retry_after {
        response = response.header(
            "Retry-After",
            utoipa::openapi::HeaderBuilder::new()
                .schema(u32::schema())
                .description(Some("Seconds to wait before retrying."))
                .build(),
        );
    }
    (name, response.build().into())
}

use utoipa::PartialSchema as _;

/// `400`: an invalid parameter; code and message name it.
#[derive(Debug)]
pub struct BadRequest;
impl<'r> ToResponse<'r> for BadRequest {
    fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
        error_response(
            "BadRequest",
            "Invalid parameter: the code and message name it.",
            (
                "bad_time",
                "parameter from: invalid time (expected RFC 3339 or epoch milliseconds)",
            ),
            false,
        )
    }
}

/// `413`: the answer would exceed a configured limit.
#[derive(Debug)]
pub struct TooLarge;
impl<'r> ToResponse<'r> for TooLarge {
    fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
        error_response(
            "TooLarge",
            "The answer would exceed a configured limit (page, points).",
            (
                "too_large",
                "parameter limit: 50000 is over the maximum page of 10000",
            ),
            false,
        )
    }
}

/// `503` with `Retry-After`: too many queries or live connections.
#[derive(Debug)]
pub struct Overloaded;
impl<'r> ToResponse<'r> for Overloaded {
    fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
        error_response(
            "Overloaded",
            "Too many concurrent queries or live connections; retry after the `Retry-After` seconds.",
            (
                "overloaded",
                "too many history queries in progress; retry shortly",
            ),
            true,
        )
    }
}

/// `403`: the caller may not read the filter, or the Origin is not allowed.
#[derive(Debug)]
pub struct Forbidden;
impl<'r> ToResponse<'r> for Forbidden {
    fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
        error_response(
            "Forbidden",
            "The caller may not read this filter, or the Origin is not allowed.",
            ("forbidden", "not allowed to read \"$SYS/#\""),
            false,
        )
    }
}

/// `500`: the store failed.
#[derive(Debug)]
pub struct Internal;
impl<'r> ToResponse<'r> for Internal {
    fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
        error_response(
            "Internal",
            "The store failed; see the hub's log.",
            ("internal", "the store could not answer; see the hub's log"),
            false,
        )
    }
}

/// `404`: no such resource.
#[derive(Debug)]
pub struct NotFound;
impl<'r> ToResponse<'r> for NotFound {
    fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
        error_response(
            "NotFound",
            "No such resource.",
            ("not_found", "no such resource"),
            false,
        )
    }
}

/// `503` of `/readyz`, with `Retry-After`.
#[derive(Debug)]
pub struct NotReady;
impl<'r> ToResponse<'r> for NotReady {
    fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
        error_response(
            "NotReady",
            "Not ready: the writer is not committing.",
            ("not_ready", "the writer is not committing"),
            true,
        )
    }
}

/// An API error: status, stable code and message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn bad(code: &'static str, message: String) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code,
            message,
        }
    }

    fn too_large(message: String) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "too_large",
            message,
        }
    }

    fn overloaded() -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "overloaded",
            message: "too many history queries in progress; retry shortly".to_owned(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        error!(%err, "history query failed");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "the store could not answer; see the hub's log".to_owned(),
        }
    }
}

impl From<json::JsonError> for ApiError {
    fn from(err: json::JsonError) -> Self {
        error!(%err, "history answer could not be written");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "the answer could not be written; see the hub's log".to_owned(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody::new(self.code, self.message));
        let mut res = (self.status, body).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: "no such resource".to_owned(),
    }
}

/// Runs a store query on the blocking pool under the query limit.
async fn query<T, F>(state: &AppState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(Store) -> Result<T, StoreError> + Send + 'static,
{
    let permit = state
        .queries
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::overloaded())?;
    let store = state.store.clone();
    let res = tokio::task::spawn_blocking(move || {
        let r = f(store);
        drop(permit);
        r
    })
    .await
    .map_err(|err| {
        error!(%err, "history query panicked");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "query failed".to_owned(),
        }
    })?;
    Ok(res?)
}

// A time in answers: epoch milliseconds, serialized as RFC 3339. (The doc comment below is the
// schema's description.)
/// RFC 3339, UTC, millisecond precision
#[derive(Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(
    value_type = String,
    format = DateTime,
    examples("2026-11-28T10:00:00.000Z")
)]
pub struct Timestamp(pub i64);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(Rfc3339::new(self.0).as_str())
    }
}

/// One stored series (device and metric) with its latest reading.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Series {
    /// `sensors/{deviceId}/{metric}`.
    #[schema(examples("sensors/d1/temperature"))]
    pub topic: String,
    /// Device id.
    pub device_id: String,
    /// Metric name.
    pub metric: String,
    /// Unit of the latest reading that had one.
    #[schema(required = true)]
    pub unit: Option<String>,
    /// Value of the latest reading.
    pub last_value: f64,
    /// Event time of the latest reading.
    pub last_timestamp: Timestamp,
    /// Receive time of the latest reading.
    pub last_seen: Timestamp,
    /// Seq of the latest reading.
    pub last_seq: u64,
    /// Readings of this series in the log.
    pub count: u64,
}

/// `GET /v1/series`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeriesList {
    /// Every series, by device and metric.
    pub series: Vec<Series>,
}

/// A device with its status and metrics.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Device {
    /// Device id.
    pub device_id: String,
    /// `online`; `stale` when nothing was heard from it for `staleAfterMs` (it reports readings
    /// but they stopped); `offline` when its last status (or last will) is `offline`, which
    /// wins; `unknown` when neither a status nor a reading is known.
    #[schema(inline)]
    pub status: DeviceStatus,
    /// What `status` is derived from: `status` (its `sensors/{deviceId}/status` topic),
    /// `readings` (when its readings arrived: a device without a status topic, or one that said
    /// `online` and whose readings stopped), `none` with `unknown`.
    #[schema(inline)]
    pub status_source: StatusSource,
    /// The last status the device published on `sensors/{deviceId}/status`: true for `online`;
    /// null when the device never published a status
    #[schema(required = true)]
    pub online: Option<bool>,
    /// Since when `status` has been shown (for `stale`, when the silence crossed `staleAfterMs`).
    #[schema(required = true)]
    pub since: Option<Timestamp>,
    /// The observed reporting interval in ms: a moving average of the gaps between its
    /// readings as the presence sweep sees them, so a device that reports faster than the
    /// sweep period (5 s by default) shows about that period; null until one gap was seen.
    #[schema(required = true)]
    pub reporting_interval_ms: Option<i64>,
    /// The silence in ms after which it is shown `stale`: `bridge.presence_stale_intervals` x
    /// its reporting interval, at least `bridge.presence_stale_after_min_s`.
    pub stale_after_ms: i64,
    /// Latest receive time over its series.
    #[schema(required = true)]
    pub last_seen: Option<Timestamp>,
    /// Metrics it reported, sorted.
    pub metrics: Vec<String>,
}

/// `GET /v1/devices`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceList {
    /// Every known device.
    pub devices: Vec<Device>,
}

/// A stored reading. `timestamp` is the event time (from the payload, else receive time),
/// `receivedAt` the broker's receive time.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(
    as = Reading,
    example = json!({
        "seq": 42, "topic": "sensors/d1/temperature", "deviceId": "d1",
        "metric": "temperature", "value": 21.5, "unit": "C",
        "timestamp": "2026-11-28T10:00:00.000Z", "receivedAt": "2026-11-28T10:00:00.012Z"
    })
)]
pub struct ReadingItem {
    /// Position in the event log.
    pub seq: u64,
    /// `sensors/{deviceId}/{metric}`.
    pub topic: String,
    /// Device id.
    pub device_id: String,
    /// Metric name.
    pub metric: String,
    /// The value.
    pub value: f64,
    /// Unit, when the payload had one.
    #[schema(required = true)]
    pub unit: Option<String>,
    /// Event time.
    pub timestamp: Timestamp,
    /// Receive time.
    pub received_at: Timestamp,
}

impl From<&StoredReading> for ReadingItem {
    fn from(r: &StoredReading) -> Self {
        ReadingItem {
            seq: r.seq,
            topic: r.reading.topic(),
            device_id: r.reading.device_id.clone(),
            metric: r.reading.metric.clone(),
            value: r.reading.value,
            unit: r.reading.unit.clone(),
            timestamp: Timestamp(r.reading.timestamp_ms),
            received_at: Timestamp(r.reading.received_at_ms),
        }
    }
}

/// `GET /v1/readings` as JSON.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadingPage {
    /// Readings in seq order.
    pub readings: Vec<ReadingItem>,
    /// Pass as `after` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_after: Option<u64>,
}

/// `GET /v1/readings` as `application/x-ndjson`: one Reading JSON object per line.
#[derive(Debug, ToSchema)]
#[schema(value_type = String)]
pub struct NdjsonReadings(pub String);

/// `GET /v1/readings` as `text/csv`, header `seq,topic,deviceId,metric,value,unit,timestamp,receivedAt`.
#[derive(Debug, ToSchema)]
#[schema(value_type = String)]
pub struct CsvReadings(pub String);

/// One time bucket of a series.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollupPoint {
    /// Bucket start.
    pub t: Timestamp,
    /// Bucket start, epoch milliseconds.
    pub t_ms: i64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Mean value.
    pub avg: f64,
    /// Readings in the bucket.
    pub count: u64,
    /// Latest value by event time.
    pub last: f64,
}

/// The buckets of one series.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeriesRollup {
    /// `sensors/{deviceId}/{metric}`.
    pub topic: String,
    /// Device id.
    pub device_id: String,
    /// Metric name.
    pub metric: String,
    /// Unit of the series.
    #[schema(required = true)]
    pub unit: Option<String>,
    /// Non-empty buckets in time order.
    pub points: Vec<RollupPoint>,
}

impl From<&StoredRollup> for SeriesRollup {
    fn from(s: &StoredRollup) -> Self {
        SeriesRollup {
            topic: s.key.topic(),
            device_id: s.key.device_id.clone(),
            metric: s.key.metric.clone(),
            unit: s.unit.clone(),
            points: s
                .points
                .iter()
                .map(|(t, a)| RollupPoint {
                    t: Timestamp(*t),
                    t_ms: *t,
                    min: a.min,
                    max: a.max,
                    avg: a.avg(),
                    count: a.count,
                    last: a.last,
                })
                .collect(),
        }
    }
}

/// Which read model answered: raw log, 1-minute or 1-hour rollups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum Source {
    /// The raw event log.
    #[serde(rename = "raw")]
    Raw,
    /// 1-minute rollups.
    #[serde(rename = "1m")]
    Minute,
    /// 1-hour rollups.
    #[serde(rename = "1h")]
    Hour,
}

impl From<RollupSource> for Source {
    fn from(s: RollupSource) -> Self {
        match s {
            RollupSource::Raw => Source::Raw,
            RollupSource::Minute => Source::Minute,
            RollupSource::Hour => Source::Hour,
        }
    }
}

/// `GET /v1/rollups`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rollups {
    /// Range start (inclusive).
    pub from: Timestamp,
    /// Range end (exclusive).
    pub to: Timestamp,
    /// Bucket width, milliseconds.
    #[schema(minimum = 1)]
    pub step_ms: i64,
    /// Which read model answered: raw log, 1-minute or 1-hour rollups.
    #[schema(inline)]
    pub source: Source,
    /// Series with at least one bucket.
    pub series: Vec<SeriesRollup>,
}

/// A rejected publish.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reject {
    /// When it was received.
    pub received_at: Timestamp,
    /// Its topic.
    pub topic: String,
    /// Stable reason label.
    #[schema(examples("invalid_value", "payload_too_large"))]
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// Payload size in bytes.
    pub payload_len: u64,
    /// The first bytes of the payload, lossily as UTF-8.
    pub payload_preview: String,
}

/// `GET /v1/rejects`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = Rejects)]
pub struct RejectList {
    /// All rejects since start.
    pub total: u64,
    /// Per reason.
    pub by_reason: std::collections::BTreeMap<String, u64>,
    /// The most recent ones, oldest first.
    pub recent: Vec<Reject>,
}

/// `ok`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Alive {
    /// Alive.
    Ok,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Always `ok`.
    #[schema(inline)]
    pub status: Alive,
}

/// `ready`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Readiness {
    /// The writer is committing.
    Ready,
}

/// `GET /readyz`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ready {
    /// Always `ready` (else the answer is a 503 error).
    #[schema(inline)]
    pub status: Readiness,
}

/// Every stored series with its last value
#[utoipa::path(
    get,
    path = "/v1/series",
    operation_id = "listSeries",
    tag = "history",
    responses(
        (status = 200, description = "The catalogue.", body = SeriesList, example = json!({"series": [{
            "topic": "sensors/d1/temperature", "deviceId": "d1", "metric": "temperature",
            "unit": "C", "lastValue": 21.5, "lastTimestamp": "2026-11-28T10:00:00.000Z",
            "lastSeen": "2026-11-28T10:00:00.012Z", "lastSeq": 42, "count": 1200
        }]})),
        (status = 500, response = Internal),
        (status = 503, response = Overloaded),
    )
)]
async fn series(State(state): State<AppState>) -> Result<Json<SeriesList>, ApiError> {
    let list = query(&state, |s| s.series()).await?;
    let series = list
        .iter()
        .map(|s| Series {
            topic: s.key.topic(),
            device_id: s.key.device_id.clone(),
            metric: s.key.metric.clone(),
            unit: s.unit.clone(),
            last_value: s.last_value,
            last_timestamp: Timestamp(s.last_timestamp_ms),
            last_seen: Timestamp(s.last_seen_ms),
            last_seq: s.last_seq,
            count: s.count,
        })
        .collect();
    Ok(Json(SeriesList { series }))
}

/// Devices with their status: online, stale (its readings stopped) or offline
#[utoipa::path(
    get,
    path = "/v1/devices",
    operation_id = "listDevices",
    tag = "history",
    responses(
        (status = 200, description = "Devices.", body = DeviceList, example = json!({"devices": [{
            "deviceId": "d1", "status": "online", "statusSource": "status", "online": true,
            "since": "2026-11-28T09:00:00.000Z", "reportingIntervalMs": 10000,
            "staleAfterMs": 60000, "lastSeen": "2026-11-28T10:00:00.012Z",
            "metrics": ["humidity", "temperature"]
        }, {
            "deviceId": "serial-1", "status": "stale", "statusSource": "readings", "online": null,
            "since": "2026-11-28T10:03:00.000Z", "reportingIntervalMs": 60000,
            "staleAfterMs": 180000, "lastSeen": "2026-11-28T10:00:00.000Z",
            "metrics": ["temperature"]
        }]})),
        (status = 500, response = Internal),
        (status = 503, response = Overloaded),
    )
)]
async fn devices(State(state): State<AppState>) -> Result<Json<DeviceList>, ApiError> {
    let board = state.presence.clone();
    let (list, shown) = query(&state, move |s| {
        let list = s.devices()?;
        let shown = board.describe(&s, &list)?;
        Ok((list, shown))
    })
    .await?;
    let devices = list
        .iter()
        .zip(shown)
        .map(|(d, p)| Device {
            device_id: d.device_id.clone(),
            status: p.status,
            status_source: p.source,
            online: d.online,
            since: p.since_ms.map(Timestamp),
            reporting_interval_ms: p.interval_ms,
            stale_after_ms: p.stale_after_ms,
            last_seen: d.last_seen_ms.map(Timestamp),
            metrics: d.metrics.clone(),
        })
        .collect();
    Ok(Json(DeviceList { devices }))
}

/// Reject counters and the most recent rejected publishes
#[utoipa::path(
    get,
    path = "/v1/rejects",
    operation_id = "getRejects",
    tag = "operations",
    responses(
        (status = 200, description = "Rejects.", body = RejectList, example = json!({
            "total": 1, "byReason": {"invalid_value": 1},
            "recent": [{
                "receivedAt": "2026-11-28T10:00:00.000Z", "topic": "sensors/d1/temperature",
                "reason": "invalid_value", "message": "value \"abc\" is not a number",
                "payloadLen": 3, "payloadPreview": "abc"
            }]
        })),
    )
)]
async fn rejects(State(state): State<AppState>) -> Json<RejectList> {
    let snap = state.rejects.snapshot();
    let recent = snap
        .recent
        .iter()
        .map(|r| Reject {
            received_at: Timestamp(r.received_at_ms),
            topic: r.topic.clone(),
            reason: r.reason.to_owned(),
            message: r.message.clone(),
            payload_len: r.payload_len as u64,
            payload_preview: r.payload_preview.clone(),
        })
        .collect();
    Json(RejectList {
        total: snap.total,
        by_reason: snap
            .by_reason
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect(),
        recent,
    })
}

/// Liveness
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses(
        (status = 200, description = "Alive.", body = Health, example = json!({"status": "ok"})),
    )
)]
async fn healthz() -> Json<Health> {
    Json(Health { status: Alive::Ok })
}

/// Readiness: the writer is committing
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready.", body = Ready, example = json!({"status": "ready"})),
        (status = 503, response = NotReady),
    )
)]
async fn readyz(State(state): State<AppState>) -> Response {
    let ready = state.writer.as_ref().is_none_or(WriterHandle::is_healthy);
    if ready {
        Json(Ready {
            status: Readiness::Ready,
        })
        .into_response()
    } else {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "not_ready",
            message: "the writer is not committing".to_owned(),
        }
        .into_response()
    }
}

/// The schema of a seq cursor or wait in a query: a non-negative integer. It is parsed as a
/// `u64`, so it has no `int64` format (whose upper bound it exceeds).
#[derive(Debug)]
pub struct UnsignedParam;

/// An integer schema with a lower bound and no `format`.
fn integer_at_least(min: u64) -> RefOr<utoipa::openapi::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Integer)
        .minimum(Some(min))
        .into()
}

impl utoipa::PartialSchema for UnsignedParam {
    fn schema() -> RefOr<utoipa::openapi::Schema> {
        integer_at_least(0)
    }
}

impl ToSchema for UnsignedParam {}

/// Like [`UnsignedParam`], at least 1: a count.
#[derive(Debug)]
pub struct CountParam;

impl utoipa::PartialSchema for CountParam {
    fn schema() -> RefOr<utoipa::openapi::Schema> {
        integer_at_least(1)
    }
}

impl ToSchema for CountParam {}

/// Query parameters of `GET /v1/readings`, parsed from repeated keys (`filter` may repeat);
/// an unknown parameter is a `400 unknown_parameter`.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadingsQuery {
    /// MQTT topic filter (`+` one level, `#` the rest); repeat for several. Default:
    /// everything.
    #[param(value_type = Option<Vec<String>>, style = Form, explode, example = json!(["sensors/+/temperature"]))]
    pub filter: Vec<TopicFilter>,
    /// Event time, inclusive: RFC 3339 or epoch milliseconds.
    #[param(value_type = Option<String>, example = "2026-11-28T00:00:00Z")]
    pub from: Option<i64>,
    /// Event time, exclusive: RFC 3339 or epoch milliseconds.
    #[param(value_type = Option<String>, example = "1764324000000")]
    pub to: Option<i64>,
    /// Page size (default 1000, at most `bridge.http_max_page`).
    #[param(value_type = Option<CountParam>, inline)]
    pub limit: Option<usize>,
    /// Seq cursor: only readings with a larger seq (`nextAfter` of the previous page).
    #[param(value_type = Option<UnsignedParam>, inline)]
    pub after: Option<u64>,
}

/// Query parameters of `GET /v1/rollups`, parsed like [`ReadingsQuery`].
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RollupsQuery {
    /// MQTT topic filter (`+` one level, `#` the rest); repeat for several. Default:
    /// every series.
    #[param(value_type = Option<Vec<String>>, style = Form, explode, example = json!(["sensors/+/temperature"]))]
    pub filter: Vec<TopicFilter>,
    /// Event time, inclusive: RFC 3339 or epoch milliseconds. Default: 24 hours before `to`.
    #[param(value_type = Option<String>, example = "2026-11-28T00:00:00Z")]
    pub from: Option<i64>,
    /// Event time, exclusive: RFC 3339 or epoch milliseconds. Default: now.
    #[param(value_type = Option<String>, example = "1764324000000")]
    pub to: Option<i64>,
    /// Bucket width: `500ms`, `30s`, `5m`, `1h`, `1d` or milliseconds. Default: about 1000
    /// points over the range.
    #[param(value_type = Option<String>, example = "5m")]
    pub step: Option<i64>,
}

/// Parsed common parameters.
#[derive(Debug, Default)]
struct Params {
    filters: Vec<TopicFilter>,
    from: Option<i64>,
    to: Option<i64>,
    limit: Option<usize>,
    after: Option<u64>,
    step: Option<i64>,
}

impl ReadingsQuery {
    fn parse(pairs: &[(String, String)]) -> Result<Self, ApiError> {
        let p = parse_params(pairs, &["filter", "from", "to", "limit", "after"])?;
        Ok(ReadingsQuery {
            filter: p.filters,
            from: p.from,
            to: p.to,
            limit: p.limit,
            after: p.after,
        })
    }
}

impl RollupsQuery {
    fn parse(pairs: &[(String, String)]) -> Result<Self, ApiError> {
        let p = parse_params(pairs, &["filter", "from", "to", "step"])?;
        Ok(RollupsQuery {
            filter: p.filters,
            from: p.from,
            to: p.to,
            step: p.step,
        })
    }
}

fn parse_params(pairs: &[(String, String)], allowed: &[&str]) -> Result<Params, ApiError> {
    let mut p = Params::default();
    for (k, v) in pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad(
                "unknown_parameter",
                format!(
                    "unknown parameter {k:?}; this endpoint takes {}",
                    allowed.join(", ")
                ),
            ));
        }
        match k.as_str() {
            "filter" => {
                let f = TopicFilter::parse(v)
                    .map_err(|e| ApiError::bad("bad_filter", format!("parameter filter: {e}")))?;
                p.filters.push(f);
            }
            "from" | "to" => {
                let t = parse_time(v).map_err(|e| {
                    ApiError::bad(
                        "bad_time",
                        format!("parameter {k}: {e} (expected RFC 3339 or epoch milliseconds)"),
                    )
                })?;
                if k == "from" {
                    p.from = Some(t);
                } else {
                    p.to = Some(t);
                }
            }
            "limit" => {
                let n = v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    ApiError::bad(
                        "bad_parameter",
                        format!("parameter limit: {v:?} is not a positive integer"),
                    )
                })?;
                p.limit = Some(n);
            }
            "after" => {
                let n = v.parse::<u64>().map_err(|_| {
                    ApiError::bad(
                        "bad_parameter",
                        format!("parameter after: {v:?} is not a seq number"),
                    )
                })?;
                p.after = Some(n);
            }
            "step" => p.step = Some(parse_step(v)?),
            _ => {}
        }
    }
    if let (Some(f), Some(t)) = (p.from, p.to) {
        if f >= t {
            return Err(ApiError::bad(
                "bad_range",
                "parameters from/to: from must be before to".to_owned(),
            ));
        }
    }
    Ok(p)
}

/// `30s`, `5m`, `1h`, `1d`, `500ms` or a number of milliseconds.
fn parse_step(v: &str) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::bad(
            "bad_parameter",
            format!("parameter step: {v:?} is not a duration like 500ms, 30s, 5m, 1h, 1d or milliseconds"),
        )
    };
    let v = v.trim();
    let (num, mult) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = v.strip_suffix('h') {
        (n, 3_600_000)
    } else if let Some(n) = v.strip_suffix('d') {
        (n, 86_400_000)
    } else {
        (v, 1)
    };
    let n: i64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(mult).filter(|ms| *ms > 0).ok_or_else(bad)
}

/// The smallest nice step giving at most about [`TARGET_POINTS`] buckets over `span_ms`.
pub fn auto_step(span_ms: i64) -> i64 {
    let want = (span_ms + TARGET_POINTS - 1) / TARGET_POINTS;
    NICE_STEPS_MS
        .iter()
        .copied()
        .find(|s| *s >= want)
        .unwrap_or_else(|| {
            let day = 86_400_000;
            ((want + day - 1) / day) * day
        })
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Ndjson,
    Csv,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }

    fn render(self, page: &RowPage) -> Result<Vec<u8>, json::JsonError> {
        match self {
            Format::Json => json::reading_page(page.iter(), page.next_after),
            Format::Ndjson => json::reading_lines(page.iter()),
            Format::Csv => {
                let mut body =
                    String::from("seq,topic,deviceId,metric,value,unit,timestamp,receivedAt\n");
                for x in page.iter() {
                    body.push_str(&format!(
                        "{},{},{},{},{},{},{},{}\n",
                        x.seq,
                        csv_field(&x.topic().to_string()),
                        csv_field(x.device_id),
                        csv_field(x.metric),
                        x.value,
                        csv_field(x.unit.unwrap_or("")),
                        Rfc3339::new(x.timestamp_ms),
                        Rfc3339::new(x.received_at_ms)
                    ));
                }
                Ok(body.into_bytes())
            }
        }
    }
}

fn negotiate(headers: &HeaderMap) -> Format {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("application/x-ndjson") {
        Format::Ndjson
    } else if accept.contains("text/csv") {
        Format::Csv
    } else {
        Format::Json
    }
}

/// Raw readings in seq order, paged by seq
///
/// Content negotiation by `Accept`: JSON (default), `application/x-ndjson` (one Reading per
/// line) or `text/csv` (header `seq,topic,deviceId,metric,value,unit,timestamp,receivedAt`).
/// The `X-Next-After` header repeats `nextAfter`.
#[utoipa::path(
    get,
    path = "/v1/readings",
    operation_id = "listReadings",
    tag = "history",
    params(ReadingsQuery),
    responses(
        (status = 200, description = "A page of readings.",
            headers(("X-Next-After" = u64, description = "Cursor for the next page, when there is one.")),
            content(
                (ReadingPage = "application/json", example = json!({"readings": [{
                    "seq": 42, "topic": "sensors/d1/temperature", "deviceId": "d1",
                    "metric": "temperature", "value": 21.5, "unit": "C",
                    "timestamp": "2026-11-28T10:00:00.000Z", "receivedAt": "2026-11-28T10:00:00.012Z"
                }], "nextAfter": null})),
                (NdjsonReadings = "application/x-ndjson", example = json!("{\"seq\":42,\"topic\":\"sensors/d1/temperature\",\"deviceId\":\"d1\",\"metric\":\"temperature\",\"value\":21.5,\"unit\":\"C\",\"timestamp\":\"2026-11-28T10:00:00.000Z\",\"receivedAt\":\"2026-11-28T10:00:00.012Z\"}\n")),
                (CsvReadings = "text/csv", example = json!("seq,topic,deviceId,metric,value,unit,timestamp,receivedAt\n42,sensors/d1/temperature,d1,temperature,21.5,C,2026-11-28T10:00:00.000Z,2026-11-28T10:00:00.012Z\n")),
            )
        ),
        (status = 400, response = BadRequest),
        (status = 413, response = TooLarge),
        (status = 500, response = Internal),
        (status = 503, response = Overloaded),
    )
)]
async fn readings(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let p = ReadingsQuery::parse(&pairs)?;
    let limit = p.limit.unwrap_or(DEFAULT_PAGE.min(state.max_page));
    if limit > state.max_page {
        return Err(ApiError::too_large(format!(
            "parameter limit: {limit} is over the maximum page of {}",
            state.max_page
        )));
    }
    let q = ReadingQuery {
        filters: p.filter,
        from_ms: p.from,
        to_ms: p.to,
        after: p.after.unwrap_or(0),
        limit,
    };
    let format = negotiate(&headers);
    // Rendered on the blocking pool with the query: a page of 10,000 readings is about 2 MB.
    let (body, next_after) = query(&state, move |s| {
        let page = s.reading_rows(&q)?;
        Ok((format.render(&page), page.next_after))
    })
    .await?;
    let body = body?;
    let mut res = ([(header::CONTENT_TYPE, format.content_type())], body).into_response();
    if let Some(n) = next_after {
        if let Ok(v) = HeaderValue::from_str(&n.to_string()) {
            res.headers_mut().insert("x-next-after", v);
        }
    }
    Ok(res)
}

/// min/max/avg/count/last per time bucket and series
///
/// Range defaults to the last 24 hours. Answered from 1-hour or 1-minute rollups when `step`
/// allows, else from the raw log.
#[utoipa::path(
    get,
    path = "/v1/rollups",
    operation_id = "getRollups",
    tag = "history",
    params(RollupsQuery),
    responses(
        (status = 200, description = "Rollups per series.", body = Rollups),
        (status = 400, response = BadRequest),
        (status = 413, response = TooLarge),
        (status = 500, response = Internal),
        (status = 503, response = Overloaded),
    )
)]
async fn rollups(
    State(state): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let p = RollupsQuery::parse(&pairs)?;
    let to = p.to.unwrap_or_else(now_ms);
    let from = p.from.unwrap_or(to.saturating_sub(DEFAULT_ROLLUP_SPAN_MS));
    if from >= to {
        return Err(ApiError::bad(
            "bad_range",
            "parameters from/to: from must be before to".to_owned(),
        ));
    }
    let span = to.saturating_sub(from);
    let step = p.step.unwrap_or_else(|| auto_step(span));
    let buckets = (span / step).saturating_add(1);
    if buckets as u64 > state.max_points as u64 {
        return Err(ApiError::too_large(format!(
            "parameter step: {buckets} buckets per series is over the maximum of {}",
            state.max_points
        )));
    }
    let q = RollupQuery {
        filters: p.filter,
        from_ms: from,
        to_ms: to,
        step_ms: step,
    };
    let max_points = state.max_points;
    // Checked and rendered on the blocking pool with the query: 24 h of 100 series at the
    // default step is 72,000 buckets, about 9 MB of JSON.
    let body = query(&state, move |s| {
        let (source, list) = s.rollups(&q)?;
        let total: usize = list.iter().map(|s| s.points.len()).sum();
        if total > max_points {
            return Ok(Err(total));
        }
        let head = json::RollupsHead {
            from_ms: from,
            to_ms: to,
            step_ms: step,
            source: source.into(),
        };
        Ok(Ok(json::rollups(&head, &list)))
    })
    .await?
    .map_err(|total| {
        ApiError::too_large(format!(
            "{total} points over the maximum of {max_points}; narrow filter or raise step"
        ))
    })??;
    let len: usize = body.iter().map(Bytes::len).sum();
    let body = axum::body::Body::from_stream(futures::stream::iter(
        body.into_iter().map(Ok::<_, std::convert::Infallible>),
    ));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(len)),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_readings_serialize_exactly_like_the_documented_type() {
        let readings: Vec<StoredReading> = [
            (
                "d1",
                "temperature",
                21.5,
                Some("C"),
                1_795_860_000_000,
                1_795_860_000_012,
            ),
            ("dev \"x\"", "hum/idity", -0.0, None, -1, 0),
            ("d2", "big", 1e300, Some("ü"), i64::MAX, i64::MIN),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (d, m, v, u, t, r))| StoredReading {
            seq: i as u64 + 1,
            reading: edgewatch_protocol::Reading {
                device_id: d.to_owned(),
                metric: m.to_owned(),
                value: v,
                unit: u.map(str::to_owned),
                timestamp_ms: t,
                received_at_ms: r,
            },
        })
        .collect();
        let documented = serde_json::to_string(&ReadingPage {
            readings: readings.iter().map(ReadingItem::from).collect(),
            next_after: Some(7),
        })
        .unwrap();
        let views = || readings.iter().map(crate::store::ReadingView::from);
        let written = json::reading_page(views(), Some(7)).unwrap();
        assert_eq!(String::from_utf8(written).unwrap(), documented);
        let lines: String = readings
            .iter()
            .map(|r| serde_json::to_string(&ReadingItem::from(r)).unwrap() + "\n")
            .collect();
        assert_eq!(
            String::from_utf8(json::reading_lines(views()).unwrap()).unwrap(),
            lines
        );
        for r in &readings {
            let item = ReadingItem::from(r);
            let live = crate::http::live::openapi::LiveReading {
                kind: crate::http::live::openapi::ReadingType::Reading,
                seq: item.seq,
                topic: item.topic,
                device_id: item.device_id,
                metric: item.metric,
                value: item.value,
                unit: item.unit,
                timestamp: item.timestamp,
                received_at: item.received_at,
            };
            assert_eq!(
                json::reading_message(r).unwrap(),
                serde_json::to_string(&live).unwrap()
            );
        }
    }

    #[test]
    fn auto_step_aims_for_a_thousand_points() {
        assert_eq!(auto_step(3_600_000), 5_000);
        assert_eq!(auto_step(86_400_000), 120_000);
        assert_eq!(auto_step(1_000), 1_000);
        assert!(auto_step(10 * 604_800_000_000) % 86_400_000 == 0);
    }

    #[test]
    fn steps_parse() {
        assert_eq!(parse_step("5m").ok(), Some(300_000));
        assert_eq!(parse_step("500ms").ok(), Some(500));
        assert_eq!(parse_step("1h").ok(), Some(3_600_000));
        assert_eq!(parse_step("2000").ok(), Some(2000));
        assert!(parse_step("0").is_err());
        assert!(parse_step("-1m").is_err());
        assert!(parse_step("fast").is_err());
        assert!(parse_step("99999999999999999d").is_err());
    }
}
