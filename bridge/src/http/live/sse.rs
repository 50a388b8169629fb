//! Server-Sent Events: `GET /v1/stream?filter=..`.
//!
//! Events: `reading` (with `id:` = seq), `status`, `gap`, `reset`, and `error` right before
//! the server ends a stream (sustained lag). The first frame carries a `retry:` hint; comment
//! heartbeats keep proxies from timing the stream out. `Last-Event-ID` (header, or the
//! `lastEventId` query parameter for clients that cannot set headers) resumes: the missed
//! readings that match are replayed from the log, then the stream continues live.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{stream, Stream, StreamExt};
use serde_json::json;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::access::Caller;
use super::{parse_cursor, read_filters, LiveError, LiveState, WatchParams};
use crate::live::connections::{ConnectionGuard, Transport};
use crate::live::fanout::FanoutStats;
use crate::live::{Watch, WatchItem};

/// Server-Sent Events stream of matching readings
#[utoipa::path(
    get,
    path = "/v1/stream",
    operation_id = "stream",
    tag = "live",
    params(
        super::schema::StreamQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "SSE resume cursor (sent by `EventSource` on reconnect)."),
    ),
    responses(
        (status = 200,
            description = "`text/event-stream`. Events: `reading` (id = seq, data = LiveReading), `status` (StatusEvent), `gap` (GapEvent), `reset` (ResetEvent) and `error` (`{\"type\":\"error\",\"code\":\"lagging\",...}`) just before the server ends a lagging stream. The first frame carries `retry:`; comment heartbeats every `sse_heartbeat_secs`. See the AsyncAPI document, channel `sse`.",
            content((super::schema::EventStream = "text/event-stream", example = json!(super::schema::EVENT_STREAM_EXAMPLE)))),
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
        .feed
        .watch(filters, since)
        .await
        .map_err(|e| LiveError::internal(e.to_string()))?;
    let open = state.metrics.open(Transport::Sse);
    let hello = Bytes::from(format!(
        "retry: {}\n: edgewatch stream\n\n",
        state.cfg.sse_retry_ms
    ));
    let heartbeat = Duration::from_secs(state.cfg.sse_heartbeat_secs.max(1));
    let stats = state.feed.fanout().stats_arc();
    let body = Body::from_stream(frames(
        hello,
        watch,
        heartbeat,
        state.shutdown.clone(),
        stats,
        (permit, open),
    ));
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

/// What one SSE stream owns while it is open.
struct StreamState {
    watch: Watch,
    heartbeat: Duration,
    /// Wakes the stream to check for silence. Frames do not re-arm it (a timer reset per frame
    /// costs a timer-wheel update); when it fires early, it is re-armed for `last_frame +
    /// heartbeat`.
    next_beat: Pin<Box<tokio::time::Sleep>>,
    /// When the last frame was handed to the connection.
    last_frame: tokio::time::Instant,
    /// Made once per stream: a fresh `cancelled()` per frame would take the token's lock
    /// (shared by every live connection) twice per frame, to register and to unregister.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    stats: Arc<FanoutStats>,
    _permit: (tokio::sync::OwnedSemaphorePermit, ConnectionGuard),
}

/// The body of one SSE response: `hello`, then one frame per watch item, with a comment
/// heartbeat after `heartbeat` of silence; ends after a lag disconnection or at shutdown.
///
/// Reading frames are formatted once per reading and shared by every stream they go to
/// ([`LiveEvent::sse_frame`]); the body hands hyper those shared `Bytes` without copying.
fn frames(
    hello: Bytes,
    watch: Watch,
    heartbeat: Duration,
    shutdown: CancellationToken,
    stats: Arc<FanoutStats>,
    permit: (tokio::sync::OwnedSemaphorePermit, ConnectionGuard),
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let state = StreamState {
        watch,
        heartbeat,
        next_beat: Box::pin(tokio::time::sleep(heartbeat)),
        last_frame: tokio::time::Instant::now(),
        shutdown: Box::pin(shutdown.cancelled_owned()),
        stats,
        _permit: permit,
    };
    let first = stream::once(async move { Ok::<_, Infallible>(hello) });
    first.chain(stream::unfold(Some(Box::new(state)), |state| async move {
        let mut st = state?;
        let (frame, keep_going) = loop {
            tokio::select! {
                biased;
                () = st.shutdown.as_mut() => return None,
                item = st.watch.next() => {
                    if let WatchItem::Event(ev) = &item {
                        st.stats.observe_written(crate::live::fanout::Stage::SseWrite, ev);
                    }
                    st.last_frame = tokio::time::Instant::now();
                    break to_frame(&item);
                }
                () = &mut st.next_beat => {
                    let now = tokio::time::Instant::now();
                    let due = st.last_frame + st.heartbeat;
                    if due > now {
                        // Frames were written since it was armed: not silent yet.
                        st.next_beat.as_mut().reset(due);
                        continue;
                    }
                    st.last_frame = now;
                    st.next_beat.as_mut().reset(now + st.heartbeat);
                    break (Bytes::from_static(b":\n\n"), true);
                }
            }
        };
        Some((Ok(frame), keep_going.then_some(st)))
    }))
}

/// One watch item as an SSE frame; false when the stream must end after it.
fn to_frame(item: &WatchItem) -> (Bytes, bool) {
    let control = |event: &str, data: serde_json::Value| {
        Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
    };
    match item {
        WatchItem::Event(ev) => (ev.sse_frame(), true),
        WatchItem::Gap {
            resume_after,
            dropped,
        } => (
            control(
                "gap",
                json!({"type": "gap", "resumeAfter": resume_after, "dropped": dropped}),
            ),
            true,
        ),
        WatchItem::Reset { requested, oldest } => (
            control(
                "reset",
                json!({"type": "reset", "requested": requested, "oldest": oldest}),
            ),
            true,
        ),
        WatchItem::Closed => (
            control(
                "error",
                json!({"type": "error", "code": "lagging", "message": "disconnected: too slow to keep up"}),
            ),
            false,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::fanout::{EventKind, LiveEvent};

    #[test]
    fn frames_carry_event_id_and_data() {
        let ev = Arc::new(LiveEvent::new(
            42,
            EventKind::Reading,
            "sensors/d1/t".into(),
            r#"{"type":"reading","seq":42}"#.into(),
        ));
        let (frame, more) = to_frame(&WatchItem::Event(ev.clone()));
        assert!(more);
        assert_eq!(
            &frame[..],
            b"event: reading\nid: 42\ndata: {\"type\":\"reading\",\"seq\":42}\n\n"
        );
        // Formatted once, shared after.
        assert_eq!(ev.sse_frame().as_ptr(), frame.as_ptr());
        let status = Arc::new(LiveEvent::new(
            42,
            EventKind::Status,
            "sensors/d1/status".into(),
            r#"{"type":"status"}"#.into(),
        ));
        assert_eq!(
            &to_frame(&WatchItem::Event(status)).0[..],
            b"event: status\ndata: {\"type\":\"status\"}\n\n"
        );
        let (gap, more) = to_frame(&WatchItem::Gap {
            resume_after: 7,
            dropped: 3,
        });
        assert!(more);
        assert_eq!(
            &gap[..],
            b"event: gap\ndata: {\"dropped\":3,\"resumeAfter\":7,\"type\":\"gap\"}\n\n"
        );
        let (closed, more) = to_frame(&WatchItem::Closed);
        assert!(!more);
        assert!(closed.starts_with(b"event: error\ndata: {"));
    }
}
