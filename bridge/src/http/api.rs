//! The handlers of the history, catalogue and operations routes (see [`super`]).

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use edgewatch_protocol::timefmt::now_ms;
use tracing::error;

use crate::json;
use crate::store::{ReadingQuery, RollupQuery, RowPage, Store, StoreError};
use crate::writer::WriterHandle;

use super::auth::{AuthError, Caller};
use super::dto::*;
use super::error::*;
use super::formats;
use super::params::*;
use super::AppState;

impl axum::extract::FromRequestParts<AppState> for Caller {
    type Rejection = AuthError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, AuthError> {
        state.auth.resolve(parts, false)
    }
}

/// `caller.scope(requested)`, counting a refusal.
fn scope(
    state: &AppState,
    caller: &Caller,
    requested: Vec<edgewatch_protocol::TopicFilter>,
) -> Result<Vec<edgewatch_protocol::TopicFilter>, ApiError> {
    caller.scope(requested).map_err(|err| {
        state.auth.count_forbidden();
        ApiError {
            status: err.status(),
            code: err.code(),
            message: err.message().to_owned(),
        }
    })
}

/// Runs a store query on the blocking pool under the query limit.
pub(crate) async fn query<T, F>(state: &AppState, f: F) -> Result<T, ApiError>
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
pub(crate) async fn series(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<SeriesList>, ApiError> {
    let list = query(&state, |s| s.series()).await?;
    let series = list
        .iter()
        .filter(|s| caller.reads_everything() || caller.may_read_topic(&s.key.topic()))
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
pub(crate) async fn devices(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<DeviceList>, ApiError> {
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
        .filter_map(|(d, p)| visible_device(&caller, d).map(|metrics| (d, p, metrics)))
        .map(|(d, p, metrics)| Device {
            device_id: d.device_id.clone(),
            status: p.status,
            status_source: p.source,
            online: d.online,
            since: p.since_ms.map(Timestamp),
            reporting_interval_ms: p.interval_ms,
            stale_after_ms: p.stale_after_ms,
            last_seen: d.last_seen_ms.map(Timestamp),
            metrics,
        })
        .collect();
    Ok(Json(DeviceList { devices }))
}

/// The metrics of device `d` that `caller` may read; `None` (device hidden) when it may read
/// neither a metric nor its status topic.
fn visible_device(caller: &Caller, d: &crate::store::DeviceInfo) -> Option<Vec<String>> {
    if caller.reads_everything() {
        return Some(d.metrics.clone());
    }
    let topic = |metric: &str| format!("sensors/{}/{metric}", d.device_id);
    let metrics: Vec<String> = d
        .metrics
        .iter()
        .filter(|m| caller.may_read_topic(&topic(m)))
        .cloned()
        .collect();
    (!metrics.is_empty() || caller.may_read_topic(&topic("status"))).then_some(metrics)
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
pub(crate) async fn rejects(State(state): State<AppState>, caller: Caller) -> Json<RejectList> {
    let snap = state.rejects.snapshot();
    let everything = caller.reads_everything();
    let recent: Vec<Reject> = snap
        .recent
        .iter()
        .filter(|r| {
            // A mapped device's reject (topic outside sensors/): shown to whoever may read
            // that device.
            let device = r.device_id.as_deref();
            everything
                || caller.may_read_topic(&r.topic)
                || device.is_some_and(|d| caller.may_read_topic(&format!("sensors/{d}/status")))
        })
        .map(|r| Reject {
            received_at: Timestamp(r.received_at_ms),
            topic: r.topic.clone(),
            device_id: r.device_id.clone(),
            reason: r.reason.to_owned(),
            message: r.message.clone(),
            payload_len: r.payload_len as u64,
            payload_preview: r.payload_preview.clone(),
        })
        .collect();
    if !everything {
        // Counters over every device are not this caller's to see: it gets its own rejects.
        let mut by_reason = std::collections::BTreeMap::new();
        for r in &recent {
            *by_reason.entry(r.reason.clone()).or_insert(0u64) += 1;
        }
        return Json(RejectList {
            total: recent.len() as u64,
            by_reason,
            recent,
        });
    }
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
pub(crate) async fn healthz() -> Json<Health> {
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
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
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
                let mut body = String::from(formats::CSV_HEADER);
                body.push_str(&formats::csv_rows(page));
                Ok(body.into_bytes())
            }
        }
    }
}

pub(crate) fn negotiate(headers: &HeaderMap) -> Format {
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
pub(crate) async fn readings(
    State(state): State<AppState>,
    caller: Caller,
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
        filters: scope(&state, &caller, p.filter)?,
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
pub(crate) async fn rollups(
    State(state): State<AppState>,
    caller: Caller,
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
        filters: scope(&state, &caller, p.filter)?,
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
            source,
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
    use crate::store::StoredReading;

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
            let live = crate::http::live::schema::LiveReading {
                kind: crate::http::live::schema::ReadingType::Reading,
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
