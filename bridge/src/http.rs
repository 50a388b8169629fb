//! The HTTP API (axum): history, catalogue, rejects, health.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /v1/series` | every series with topic, unit, last value, last seen, count |
//! | `GET /v1/devices` | devices with presence from `sensors/{deviceId}/status` |
//! | `GET /v1/readings?filter=&from=&to=&limit=&after=` | raw readings in seq order, paged by seq |
//! | `GET /v1/rollups?filter=&from=&to=&step=` | min/max/avg/count/last per time bucket |
//! | `GET /v1/rejects` | reject counters and the most recent rejects |
//! | `GET /healthz`, `GET /readyz` | liveness, readiness (the writer is committing) |
//!
//! `filter` is an MQTT topic filter and may repeat; times are RFC 3339 or epoch milliseconds;
//! `from` is inclusive, `to` exclusive. Errors are `{"error":{"code":"...","message":"..."}}`.
//! History queries run on the blocking pool, at most `http_max_queries` at once; more get
//! `503 Service Unavailable` with `Retry-After: 1` instead of queuing.

use std::future::Future;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use edgewatch_protocol::timefmt::{format_rfc3339, now_ms, parse_time};
use edgewatch_protocol::TopicFilter;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::error;

use crate::config::BridgeConfig;
use crate::ingest::Rejects;
use crate::store::{ReadingQuery, RollupQuery, SeriesRollup, Store, StoreError, StoredReading};
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
        }
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

/// Serves `router` on an already bound listener until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    // Live streams write small frames: without TCP_NODELAY each would wait for the client's
    // delayed ACK (up to 40 ms on Linux).
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY");
        }
    });
    // `into_make_service` turns the router's handlers into routes once. Served directly,
    // axum's `Router` does that for every accepted connection and each connection keeps its
    // own copy of the route table: about 14 KiB per open SSE stream with our routes
    // (measured with heaptrack, 2,000 idle streams, 2026-11-29).
    axum::serve(listener, router.into_make_service())
        .with_graceful_shutdown(shutdown)
        .await
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
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

fn rfc(ms: i64) -> String {
    format_rfc3339(ms)
}

async fn series(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let list = query(&state, |s| s.series()).await?;
    let items: Vec<Value> = list
        .iter()
        .map(|s| {
            json!({
                "topic": s.key.topic(),
                "deviceId": s.key.device_id,
                "metric": s.key.metric,
                "unit": s.unit,
                "lastValue": s.last_value,
                "lastTimestamp": rfc(s.last_timestamp_ms),
                "lastSeen": rfc(s.last_seen_ms),
                "lastSeq": s.last_seq,
                "count": s.count,
            })
        })
        .collect();
    Ok(Json(json!({ "series": items })))
}

async fn devices(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let list = query(&state, |s| s.devices()).await?;
    let items: Vec<Value> = list
        .iter()
        .map(|d| {
            let status = match d.online {
                Some(true) => "online",
                Some(false) => "offline",
                None => "unknown",
            };
            json!({
                "deviceId": d.device_id,
                "status": status,
                "online": d.online,
                "since": d.since_ms.map(rfc),
                "lastSeen": d.last_seen_ms.map(rfc),
                "metrics": d.metrics,
            })
        })
        .collect();
    Ok(Json(json!({ "devices": items })))
}

async fn rejects(State(state): State<AppState>) -> Json<Value> {
    let snap = state.rejects.snapshot();
    let recent: Vec<Value> = snap
        .recent
        .iter()
        .map(|r| {
            json!({
                "receivedAt": rfc(r.received_at_ms),
                "topic": r.topic,
                "reason": r.reason,
                "message": r.message,
                "payloadLen": r.payload_len,
                "payloadPreview": r.payload_preview,
            })
        })
        .collect();
    Json(json!({ "total": snap.total, "byReason": snap.by_reason, "recent": recent }))
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Response {
    let ready = state.writer.as_ref().is_none_or(WriterHandle::is_healthy);
    if ready {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "not_ready",
            message: "the writer is not committing".to_owned(),
        }
        .into_response()
    }
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

fn reading_json(r: &StoredReading) -> Value {
    json!({
        "seq": r.seq,
        "topic": r.reading.topic(),
        "deviceId": r.reading.device_id,
        "metric": r.reading.metric,
        "value": r.reading.value,
        "unit": r.reading.unit,
        "timestamp": rfc(r.reading.timestamp_ms),
        "receivedAt": rfc(r.reading.received_at_ms),
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

async fn readings(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let p = parse_params(&pairs, &["filter", "from", "to", "limit", "after"])?;
    let limit = p.limit.unwrap_or(DEFAULT_PAGE.min(state.max_page));
    if limit > state.max_page {
        return Err(ApiError::too_large(format!(
            "parameter limit: {limit} is over the maximum page of {}",
            state.max_page
        )));
    }
    let q = ReadingQuery {
        filters: p.filters,
        from_ms: p.from,
        to_ms: p.to,
        after: p.after.unwrap_or(0),
        limit,
    };
    let page = query(&state, move |s| s.readings(&q)).await?;
    let format = negotiate(&headers);
    let mut res = match format {
        Format::Json => {
            let rows: Vec<Value> = page.readings.iter().map(reading_json).collect();
            Json(json!({ "readings": rows, "nextAfter": page.next_after })).into_response()
        }
        Format::Ndjson => {
            let mut body = String::new();
            for r in &page.readings {
                body.push_str(&reading_json(r).to_string());
                body.push('\n');
            }
            ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
        }
        Format::Csv => {
            let mut body =
                String::from("seq,topic,deviceId,metric,value,unit,timestamp,receivedAt\n");
            for r in &page.readings {
                let x = &r.reading;
                body.push_str(&format!(
                    "{},{},{},{},{},{},{},{}\n",
                    r.seq,
                    csv_field(&x.topic()),
                    csv_field(&x.device_id),
                    csv_field(&x.metric),
                    x.value,
                    csv_field(x.unit.as_deref().unwrap_or("")),
                    rfc(x.timestamp_ms),
                    rfc(x.received_at_ms)
                ));
            }
            ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response()
        }
    };
    if let Some(n) = page.next_after {
        if let Ok(v) = HeaderValue::from_str(&n.to_string()) {
            res.headers_mut().insert("x-next-after", v);
        }
    }
    Ok(res)
}

fn rollup_json(s: &SeriesRollup) -> Value {
    let points: Vec<Value> = s
        .points
        .iter()
        .map(|(t, a)| {
            json!({
                "t": rfc(*t),
                "tMs": t,
                "min": a.min,
                "max": a.max,
                "avg": a.avg(),
                "count": a.count,
                "last": a.last,
            })
        })
        .collect();
    json!({
        "topic": s.key.topic(),
        "deviceId": s.key.device_id,
        "metric": s.key.metric,
        "unit": s.unit,
        "points": points,
    })
}

async fn rollups(
    State(state): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let p = parse_params(&pairs, &["filter", "from", "to", "step"])?;
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
        filters: p.filters,
        from_ms: from,
        to_ms: to,
        step_ms: step,
    };
    let (source, list) = query(&state, move |s| s.rollups(&q)).await?;
    let total: usize = list.iter().map(|s| s.points.len()).sum();
    if total > state.max_points {
        return Err(ApiError::too_large(format!(
            "{total} points over the maximum of {}; narrow filter or raise step",
            state.max_points
        )));
    }
    let series: Vec<Value> = list.iter().map(rollup_json).collect();
    Ok(Json(json!({
        "from": rfc(from),
        "to": rfc(to),
        "stepMs": step,
        "source": source.as_str(),
        "series": series,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

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
