//! Long polling: `GET /v1/poll?filter=..&since=..&timeout=..&limit=..`.
//!
//! Answers as soon as anything after `since` matches (with everything that is ready, up to
//! `limit`), or at the timeout with an empty list. Either way `next` is the cursor for the
//! following poll. Without `since`, only readings newer than the request are awaited.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::access::Caller;
use super::{parse_cursor, read_filters, LiveError, LiveState, WatchParams};
use crate::live::fanout::FanoutStats;
use crate::live::WatchItem;

/// Default wait when `timeout` is not given, seconds.
const DEFAULT_TIMEOUT_SECS: u64 = 25;

/// Long poll: readings after `since`, waiting up to `timeout`
///
/// Answers as soon as anything after `since` matches (everything ready, up to `limit`), or at
/// the timeout with empty lists. Always pass `next` as the following `since`. Without
/// `since`, only readings newer than the request are awaited.
#[utoipa::path(
    get,
    path = "/v1/poll",
    operation_id = "poll",
    tag = "live",
    params(super::schema::PollQuery),
    responses(
        (status = 200, description = "Readings and notices.", body = super::schema::PollResult),
        (status = 400, response = crate::http::BadRequest),
        (status = 403, response = crate::http::Forbidden),
        (status = 500, response = crate::http::Internal),
        (status = 503, response = crate::http::Overloaded),
    )
)]
pub(super) async fn poll(
    State(state): State<LiveState>,
    caller: Caller,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    respond(state, caller, pairs).await
}

pub(super) async fn respond(
    state: LiveState,
    caller: Caller,
    pairs: Vec<(String, String)>,
) -> Response {
    match answer(state, caller, pairs).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn answer(
    state: LiveState,
    caller: Caller,
    pairs: Vec<(String, String)>,
) -> Result<Value, LiveError> {
    let p = WatchParams::parse(pairs, &["filter", "since", "timeout", "limit"])?;
    let filters = read_filters(&p.filters, Some("sensors/#"), &caller)?;
    let since = p
        .since
        .as_deref()
        .map(|v| parse_cursor("since", v))
        .transpose()?;
    let max_wait = state.cfg.poll_max_timeout_secs;
    let timeout = match p.timeout.as_deref() {
        None => DEFAULT_TIMEOUT_SECS.min(max_wait),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|t| *t <= max_wait)
            .ok_or_else(|| {
                LiveError::bad(
                    "bad_timeout",
                    format!("timeout: expected 0 to {max_wait} seconds, got {v:?}"),
                )
            })?,
    };
    let max = state.cfg.poll_max_readings;
    let limit = match p.limit.as_deref() {
        None => max,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                LiveError::bad(
                    "bad_limit",
                    format!("limit: expected 1 to {max}, got {v:?}"),
                )
            })?,
    };
    let _permit = state
        .connections
        .clone()
        .try_acquire_owned()
        .map_err(|_| LiveError::busy())?;
    let _open = state
        .metrics
        .open(crate::live::connections::Transport::Poll);
    let mut watch = state
        .feed
        .watch(filters, since)
        .await
        .map_err(|e| LiveError::internal(e.to_string()))?;

    let mut items = Vec::new();
    let mut notices = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    // Whatever is ready now (replay included); else wait for the first live item.
    let stats = state.feed.fanout().stats();
    collect_ready(&mut watch, &mut items, &mut notices, limit, stats).await;
    if items.is_empty() && timeout > 0 {
        let first = tokio::select! {
            item = watch.next() => Some(item),
            () = tokio::time::sleep_until(deadline) => None,
            () = state.shutdown.cancelled() => None,
        };
        if let Some(item) = first {
            push(item, &mut items, &mut notices, stats);
            collect_ready(&mut watch, &mut items, &mut notices, limit, stats).await;
        }
    }
    Ok(json!({
        "readings": items,
        "events": notices,
        "next": watch.cursor(),
    }))
}

async fn collect_ready(
    watch: &mut crate::live::Watch,
    items: &mut Vec<Value>,
    notices: &mut Vec<Value>,
    limit: usize,
    stats: &FanoutStats,
) {
    while items.len() < limit {
        match watch.try_next().await {
            Some(item) => push(item, items, notices, stats),
            None => break,
        }
    }
}

fn push(item: WatchItem, items: &mut Vec<Value>, notices: &mut Vec<Value>, stats: &FanoutStats) {
    match item {
        WatchItem::Event(ev) => {
            let v: Value = match serde_json::from_str(&ev.json) {
                Ok(v) => v,
                Err(err) => {
                    // Not sent as `null`: counted and logged like any event not serialized.
                    stats.unencodable.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        %err,
                        seq = ev.seq,
                        topic = %ev.topic,
                        "long-poll event not sent: its JSON does not parse"
                    );
                    return;
                }
            };
            if ev.kind == crate::live::fanout::EventKind::Reading {
                items.push(v);
            } else {
                notices.push(v);
            }
        }
        WatchItem::Gap {
            resume_after,
            dropped,
        } => notices.push(json!({"type": "gap", "resumeAfter": resume_after, "dropped": dropped})),
        WatchItem::Reset { requested, oldest } => {
            notices.push(json!({"type": "reset", "requested": requested, "oldest": oldest}))
        }
        WatchItem::Closed => {}
    }
}
