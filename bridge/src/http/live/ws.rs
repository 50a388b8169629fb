//! WebSocket: `GET /v1/ws`, subprotocol `edgewatch.v1`, JSON text messages with a `type`.
//!
//! Client → server:
//! * `{"type":"subscribe","filter":"sensors/#","since":1234}` (`since` optional: replay the
//!   stored readings after that seq first);
//! * `{"type":"unsubscribe","filter":"sensors/#"}`;
//! * `{"type":"publish","topic":"sensors/d1/cmd","payload":"on"}` (into the broker; allowed
//!   topics are `live.publish_filters`, default none);
//! * `{"type":"ping"}`.
//!
//! Server → client: `reading` (with `seq`), `status`, `subscribed {filter, cursor}`,
//! `unsubscribed {filter}`, `published {topic}`, `gap {filter, resumeAfter, dropped}`,
//! `reset {filter, requested, oldest}`, `error {code, message}`, `pong`.
//!
//! An invalid message gets an `error` and the connection stays open. The server pings every
//! `ws_ping_secs` and closes a connection silent for `ws_idle_timeout_secs`.
//!
//! Close codes: 1000 normal; 1001 the hub is shutting down; 1009 message over
//! `ws_max_message_bytes`; 1011 internal error; 4000 too slow (sustained lag);
//! 4001 idle (no frame or pong within the idle timeout).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use edgewatch_protocol::TopicFilter;
use futures::stream::SplitSink;
use futures::stream::{BoxStream, SelectAll};
use futures::FutureExt;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::access::Caller;
use super::{read_filters, LiveError, LiveState, WatchParams};
use crate::live::fanout::{LiveEvent, Stage};
use crate::live::WatchItem;

/// The subprotocol this endpoint speaks.
pub const SUBPROTOCOL: &str = "edgewatch.v1";

/// Close code: the client could not keep up for too long.
pub const CLOSE_LAGGING: u16 = 4000;
/// Close code: nothing received from the client within the idle timeout.
pub const CLOSE_IDLE: u16 = 4001;

/// Initial WebSocket read buffer per connection, bytes.
const READ_BUFFER: usize = 512;

/// Ready messages are framed into one buffer and written with one flush, up to about this
/// many bytes (fewer system calls when readings arrive faster than the socket is written).
/// tungstenite keeps its write buffer's capacity, so this also bounds what an active
/// connection holds between batches.
const WRITE_BATCH_BYTES: usize = 4 * 1024;

/// WebSocket (subprotocol `edgewatch.v1`)
///
/// Upgrade to a WebSocket. With `filter` the connection starts subscribed; else send
/// `subscribe` messages. Protocol: /v1/asyncapi.yaml.
#[utoipa::path(
    get,
    path = "/v1/ws",
    operation_id = "websocket",
    tag = "live",
    params(super::schema::WsQuery),
    extensions(("x-websocket" = json!(websocket_extension()))),
    responses(
        (status = 101, description = "Switching protocols."),
        (status = 400, description = "Invalid parameter, or an invalid upgrade request (code `not_websocket`).",
            body = crate::http::ErrorBody),
        (status = 403, response = crate::http::Forbidden),
        (status = 426, description = "Not a WebSocket upgrade request (code `not_websocket`).",
            body = crate::http::ErrorBody,
            example = json!({"error": {"code": "not_websocket", "message": "WebSocket request couldn't be upgraded since no upgrade state was present: send a WebSocket upgrade request"}})),
        (status = 503, response = crate::http::Overloaded),
    )
)]
pub(super) async fn upgrade(
    State(state): State<LiveState>,
    caller: Caller,
    Query(pairs): Query<Vec<(String, String)>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return LiveError::not_websocket(&rejection).into_response(),
    };
    let params = match WatchParams::parse(pairs, &["filter", "since"]) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let params = (!params.filters.is_empty()).then_some(params);
    upgrade_with(state, caller, ws, params).await
}

/// Upgrades; with `params`, the connection starts subscribed to its filters.
pub(super) async fn upgrade_with(
    state: LiveState,
    caller: Caller,
    ws: WebSocketUpgrade,
    params: Option<WatchParams>,
) -> Response {
    let initial = match params {
        Some(p) => {
            let filters = match read_filters(&p.filters, Some("sensors/#"), &caller) {
                Ok(f) => f,
                Err(e) => return e.into_response(),
            };
            let since = match p
                .since
                .as_deref()
                .map(|v| super::parse_cursor("since", v))
                .transpose()
            {
                Ok(s) => s,
                Err(e) => return e.into_response(),
            };
            filters.into_iter().map(|f| (f, since)).collect()
        }
        None => Vec::new(),
    };
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        return LiveError::busy().into_response();
    };
    let open = state.metrics.open(crate::live::connections::Transport::Ws);
    let max = state.cfg.ws_max_message_bytes;
    ws.protocols([SUBPROTOCOL])
        .max_message_size(max)
        .max_frame_size(max)
        // Client messages are small JSON; the read buffer grows for a larger one. Every
        // connection holds this buffer for its lifetime (tungstenite's default is 128 KiB).
        .read_buffer_size(READ_BUFFER)
        // Frames are queued in tungstenite's buffer and written by an explicit flush, once
        // per batch of ready messages (see `Connection::run`).
        .write_buffer_size(WRITE_BATCH_BYTES)
        .on_upgrade(move |socket| {
            let span = tracing::info_span!("ws", conn = next_connection_id());
            tracing::Instrument::instrument(
                async move {
                    tracing::debug!("websocket open");
                    Connection::new(state, caller).run(socket, initial).await;
                    drop((permit, open));
                    tracing::debug!("websocket closed");
                },
                span,
            )
        })
}

/// A process-unique id for a connection's log span.
fn next_connection_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
enum ClientMessage {
    Subscribe {
        filter: String,
        since: Option<u64>,
    },
    Unsubscribe {
        filter: String,
    },
    Publish {
        topic: String,
        payload: serde_json::Value,
        qos: Option<u8>,
    },
    Ping,
}

/// What a connection's subscriptions yield to its loop.
enum Outgoing {
    /// A reading or status event (its JSON is the message).
    Event(Arc<LiveEvent>),
    /// A control message (gap, reset).
    Text(Arc<str>),
    Lagging,
}

/// One WebSocket connection. Its subscriptions are streams polled by the connection's own
/// task (no task or channel per subscription): the loop takes from them only when the
/// socket has taken what came before, so a slow client leaves events in its fan-out queues,
/// where the slow-consumer policy (conflate, gap, disconnect) applies.
struct Connection {
    state: LiveState,
    caller: Caller,
    /// Cancels a subscription's stream, by filter.
    subs: HashMap<String, CancellationToken>,
    streams: SelectAll<BoxStream<'static, Outgoing>>,
}

impl Connection {
    fn new(state: LiveState, caller: Caller) -> Self {
        Self {
            state,
            caller,
            subs: HashMap::new(),
            streams: SelectAll::new(),
        }
    }

    async fn run(mut self, socket: WebSocket, initial: Vec<(TopicFilter, Option<u64>)>) {
        let (mut sink, mut stream) = socket.split();
        for (filter, since) in initial {
            let reply = self.subscribe(filter, since).await;
            if sink.send(text(&reply)).await.is_err() {
                return self.end();
            }
        }
        let ping_every = Duration::from_secs(self.state.cfg.ws_ping_secs.max(1));
        let idle_limit = Duration::from_secs(self.state.cfg.ws_idle_timeout_secs.max(1));
        let mut ping = tokio::time::interval(ping_every);
        ping.tick().await;
        let mut last_heard = tokio::time::Instant::now();
        // Made once: a fresh `cancelled()` per loop turn would take the token's lock (shared by
        // every live connection) twice per message, to register and to unregister.
        let shutdown = self.state.shutdown.clone().cancelled_owned();
        tokio::pin!(shutdown);
        let close = loop {
            tokio::select! {
                Some(first) = self.streams.next(), if !self.streams.is_empty() => {
                    match self.write_batch(&mut sink, first).await {
                        Ok(true) => {}
                        Ok(false) => {
                            break Some((CLOSE_LAGGING, "too slow: disconnected after sustained lag"));
                        }
                        Err(()) => break None,
                    }
                }
                incoming = stream.next() => {
                    last_heard = tokio::time::Instant::now();
                    match incoming {
                        Some(Ok(Message::Text(t))) => {
                            let reply = self.handle(t.as_str()).await;
                            if let Some(reply) = reply {
                                if sink.send(text(&reply)).await.is_err() {
                                    break None;
                                }
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            let reply = error("binary_not_supported", "send JSON text messages");
                            if sink.send(text(&reply)).await.is_err() {
                                break None;
                            }
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(Message::Close(_))) | None => break None,
                        Some(Err(err)) => {
                            // Oversize messages end here (tungstenite reports them as errors).
                            tracing::debug!(%err, "websocket read error");
                            let too_big = err.to_string().to_lowercase().contains("too long")
                                || err.to_string().to_lowercase().contains("too big");
                            break too_big.then_some((1009, "message too big"));
                        }
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > idle_limit {
                        break Some((CLOSE_IDLE, "idle: no frame or pong received"));
                    }
                    if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                        break None;
                    }
                }
                () = &mut shutdown => break Some((1001, "hub shutting down")),
            }
        };
        if let Some((code, reason)) = close {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from(reason),
            };
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                sink.send(Message::Close(Some(frame))),
            )
            .await;
        }
        self.end();
    }

    /// Frames `first` and whatever else is ready (up to [`WRITE_BATCH_BYTES`]), then flushes
    /// once. `Ok(false)`: a subscription was closed for lagging (what was queued before it is
    /// written); `Err`: the socket failed.
    async fn write_batch(
        &mut self,
        sink: &mut SplitSink<WebSocket, Message>,
        first: Outgoing,
    ) -> Result<bool, ()> {
        let mut written: Vec<Arc<LiveEvent>> = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        let mut keep_open = true;
        while let Some(out) = next.take() {
            let text = match out {
                Outgoing::Event(ev) => {
                    let t = ev.ws_text();
                    written.push(ev);
                    t
                }
                Outgoing::Text(t) => Utf8Bytes::from(&*t),
                Outgoing::Lagging => {
                    keep_open = false;
                    break;
                }
            };
            bytes += text.len();
            sink.feed(Message::Text(text)).await.map_err(|_| ())?;
            if bytes < WRITE_BATCH_BYTES {
                // Whatever is ready now; the loop polls again with its own waker.
                next = self.streams.next().now_or_never().flatten();
            }
        }
        sink.flush().await.map_err(|_| ())?;
        let stats = self.state.feed.fanout().stats();
        for ev in written.drain(..) {
            stats.observe_written(Stage::WsWrite, &ev);
        }
        Ok(keep_open)
    }

    fn end(self) {
        for token in self.subs.into_values() {
            token.cancel();
        }
    }

    /// Handles one client message; returns the reply, if any.
    async fn handle(&mut self, text: &str) -> Option<String> {
        let msg: ClientMessage = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(err) => {
                let code = if serde_json::from_str::<serde_json::Value>(text).is_err() {
                    "invalid_json"
                } else {
                    "invalid_message"
                };
                return Some(error(code, &err.to_string()));
            }
        };
        match msg {
            ClientMessage::Ping => Some(json!({"type": "pong"}).to_string()),
            ClientMessage::Subscribe { filter, since } => {
                let filter = match read_filters(&[filter], None, &self.caller) {
                    Ok(mut f) => f.remove(0),
                    Err(e) => return Some(error_from(&e)),
                };
                Some(self.subscribe(filter, since).await)
            }
            ClientMessage::Unsubscribe { filter } => match self.subs.remove(&filter) {
                Some(token) => {
                    // Its stream ends at its next poll, before yielding anything more.
                    token.cancel();
                    Some(json!({"type": "unsubscribed", "filter": filter}).to_string())
                }
                None => Some(error(
                    "not_subscribed",
                    &format!("not subscribed to {filter:?}"),
                )),
            },
            ClientMessage::Publish {
                topic,
                payload,
                qos,
            } => Some(publish(&self.state, &self.caller, topic, payload, qos).await),
        }
    }

    async fn subscribe(&mut self, filter: TopicFilter, since: Option<u64>) -> String {
        let key = filter.as_str().to_owned();
        if let Some(old) = self.subs.remove(&key) {
            old.cancel();
        } else if self.subs.len() >= self.state.cfg.ws_max_subscriptions {
            self.state.metrics.ws_subscription_refused();
            return error(
                "too_many_subscriptions",
                &format!(
                    "at most {} subscriptions per connection (live.ws_max_subscriptions); unsubscribe first",
                    self.state.cfg.ws_max_subscriptions
                ),
            );
        }
        let watch = match self.state.feed.watch(vec![filter], since).await {
            Ok(w) => w,
            Err(err) => return error("internal", &err.to_string()),
        };
        let cursor = watch.cursor();
        let name: Arc<str> = key.clone().into();
        let token = CancellationToken::new();
        let items = futures::stream::unfold(Some(watch), move |watch| {
            let name = name.clone();
            async move {
                let mut watch = watch?;
                let msg = match watch.next().await {
                    WatchItem::Event(ev) => Outgoing::Event(ev),
                    WatchItem::Gap { resume_after, dropped } => Outgoing::Text(
                        json!({"type": "gap", "filter": &*name, "resumeAfter": resume_after, "dropped": dropped})
                            .to_string()
                            .into(),
                    ),
                    WatchItem::Reset { requested, oldest } => Outgoing::Text(
                        json!({"type": "reset", "filter": &*name, "requested": requested, "oldest": oldest})
                            .to_string()
                            .into(),
                    ),
                    // The connection closes; nothing follows.
                    WatchItem::Closed => return Some((Outgoing::Lagging, None)),
                };
                Some((msg, Some(watch)))
            }
        })
        .take_until(token.clone().cancelled_owned());
        self.streams.push(items.boxed());
        self.subs.insert(key.clone(), token);
        json!({"type": "subscribed", "filter": key, "cursor": cursor}).to_string()
    }
}

/// Publishes into the broker for a client (a free function: a `Connection` is not `Sync`,
/// so no reference to it may be held across an await).
async fn publish(
    state: &LiveState,
    caller: &Caller,
    topic: String,
    payload: serde_json::Value,
    qos: Option<u8>,
) -> String {
    if let Err(err) = edgewatch_protocol::topic::validate_topic_name(&topic) {
        return error("bad_topic", &err.to_string());
    }
    if qos.is_some_and(|q| q > 1) {
        return error("bad_qos", "qos must be 0 or 1");
    }
    if !caller.may_publish(&topic) {
        return error("forbidden", &format!("not allowed to publish to {topic:?}"));
    }
    let Some(publisher) = &state.publisher else {
        return error(
            "publish_unavailable",
            "this hub has no in-process broker to publish to",
        );
    };
    let bytes = match payload {
        serde_json::Value::String(s) => Bytes::from(s),
        other => Bytes::from(other.to_string()),
    };
    match publisher(topic.clone(), bytes).await {
        Ok(()) => json!({"type": "published", "topic": topic}).to_string(),
        Err(err) => error("publish_failed", &err),
    }
}

fn text(s: &str) -> Message {
    Message::Text(Utf8Bytes::from(s))
}

fn error(code: &str, message: &str) -> String {
    json!({"type": "error", "code": code, "message": message}).to_string()
}

fn error_from(e: &LiveError) -> String {
    e.body().to_string()
}

/// The `x-websocket` extension of every route that accepts a WebSocket upgrade: OpenAPI has
/// no way to describe the protocol after `101 Switching Protocols`, so this points at the
/// AsyncAPI channel and lists the close codes.
pub fn websocket_extension() -> serde_json::Value {
    serde_json::json!({
        "subprotocol": SUBPROTOCOL,
        "description": format!(
            "Send `Upgrade: websocket` (subprotocol `{SUBPROTOCOL}`). Messages are described in /v1/asyncapi.yaml (channel `ws`)."
        ),
        "asyncapi": "/v1/asyncapi.yaml#/channels/ws",
        "closeCodes": {
            "1000": "normal",
            "1001": "hub shutting down",
            "1009": "message too big",
            "1011": "internal error",
            CLOSE_LAGGING.to_string(): "too slow (sustained lag)",
            CLOSE_IDLE.to_string(): "idle timeout",
        }
    })
}
