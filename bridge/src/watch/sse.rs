//! Server-Sent Events: `GET /v1/stream?filter=..`.
//!
//! Events: `reading` (with `id:` = seq), `status`, `gap`, `reset`, and `error` right before
//! the server ends a stream (sustained lag). The first frame carries a `retry:` hint; comment
//! heartbeats keep proxies from timing the stream out. `Last-Event-ID` (header, or the
//! `lastEventId` query parameter for clients that cannot set headers) resumes: the missed
//! readings that match are replayed from the log, then the stream continues live.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{stream, Stream, StreamExt};
use serde_json::json;

use super::access::Caller;
use super::{parse_cursor, read_filters, LiveError, LiveState, WatchParams};
use crate::fanout::EventKind;
use crate::live::{Watch, WatchItem};
use crate::metrics::{ConnectionGuard, Transport};

/// Server-Sent Events stream of matching readings
#[utoipa::path(
    get,
    path = "/v1/stream",
    operation_id = "stream",
    tag = "live",
    params(
        super::openapi::StreamQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "SSE resume cursor (sent by `EventSource` on reconnect)."),
    ),
    responses(
        (status = 200,
            description = "`text/event-stream`. Events: `reading` (id = seq, data = LiveReading), `status` (StatusEvent), `gap` (GapEvent), `reset` (ResetEvent) and `error` (`{\"type\":\"error\",\"code\":\"lagging\",...}`) just before the server ends a lagging stream. The first frame carries `retry:`; comment heartbeats every `sse_heartbeat_secs`. See the AsyncAPI document, channel `sse`.",
            content((super::openapi::EventStream = "text/event-stream", example = json!(super::openapi::EVENT_STREAM_EXAMPLE)))),
        (status = 400, response = crate::http::BadRequest),
        (status = 403, response = crate::http::Forbidden),
        (status = 500, response = crate::http::Internal),
        (status = 503, response = crate::http::Overloaded),
    )
)]
pub(super) async fn stream(
    State(state): State<LiveState>,
    caller: Caller,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    respond(state, caller, headers, pairs).await
}

pub(super) async fn respond(
    state: LiveState,
    caller: Caller,
    headers: HeaderMap,
    pairs: Vec<(String, String)>,
) -> Response {
    match open(state, caller, headers, pairs).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn open(
    state: LiveState,
    caller: Caller,
    headers: HeaderMap,
    pairs: Vec<(String, String)>,
) -> Result<Response, LiveError> {
    let params = WatchParams::parse(pairs, &["filter", "lastEventId", "since"])?;
    let filters = read_filters(&params.filters, Some("sensors/#"), &caller)?;
    let since = match headers.get("last-event-id") {
        Some(v) => Some(parse_cursor(
            "Last-Event-ID",
            v.to_str()
                .map_err(|_| LiveError::bad("bad_cursor", "Last-Event-ID is not text"))?,
        )?),
        None => match params.last_event_id.as_deref().or(params.since.as_deref()) {
            Some(v) => Some(parse_cursor("lastEventId", v)?),
            None => None,
        },
    };
    let permit = state
        .connections
        .clone()
        .try_acquire_owned()
        .map_err(|_| LiveError::busy())?;
    let watch = state
        .hub
        .watch(filters, since)
        .await
        .map_err(|e| LiveError::internal(e.to_string()))?;
    let open = state.metrics.open(Transport::Sse);
    let retry = Duration::from_millis(state.cfg.sse_retry_ms);
    let hello = Event::default().retry(retry).comment("edgewatch stream");
    let events = stream::once(async move { Ok::<_, Infallible>(hello) })
        .chain(events(watch, (permit, open)))
        .take_until(state.shutdown.clone().cancelled_owned());
    let sse = Sse::new(events).keep_alive(
        KeepAlive::new().interval(Duration::from_secs(state.cfg.sse_heartbeat_secs.max(1))),
    );
    let mut res = sse.into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

/// The SSE events of one watch; ends after a lag disconnection.
fn events(
    watch: Watch,
    permit: (tokio::sync::OwnedSemaphorePermit, ConnectionGuard),
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(Some((watch, permit)), |state| async move {
        let (mut watch, permit) = state?;
        let item = watch.next().await;
        let (event, keep_going) = to_event(&item);
        Some((Ok(event), keep_going.then_some((watch, permit))))
    })
}

/// One watch item as an SSE event; false when the stream must end after it.
fn to_event(item: &WatchItem) -> (Event, bool) {
    match item {
        WatchItem::Event(ev) => {
            let e = Event::default().data(&*ev.json);
            match ev.kind {
                EventKind::Reading => (e.event("reading").id(ev.seq.to_string()), true),
                EventKind::Status => (e.event("status"), true),
            }
        }
        WatchItem::Gap { resume_after, dropped } => (
            Event::default().event("gap").data(
                json!({"type": "gap", "resumeAfter": resume_after, "dropped": dropped}).to_string(),
            ),
            true,
        ),
        WatchItem::Reset { requested, oldest } => (
            Event::default().event("reset").data(
                json!({"type": "reset", "requested": requested, "oldest": oldest}).to_string(),
            ),
            true,
        ),
        WatchItem::Closed => (
            Event::default().event("error").data(
                json!({"type": "error", "code": "lagging", "message": "disconnected: too slow to keep up"})
                    .to_string(),
            ),
            false,
        ),
    }
}
