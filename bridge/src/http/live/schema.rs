//! What the live routes answer, for the OpenAPI document ([`super::LiveApi`] lists the
//! handlers; each carries its `#[utoipa::path]`).
//!
//! The live messages are encoded once per reading by the fan-out (shared by every transport),
//! so the types here state their wire shape for the description; `tests/hub/api_docs.rs` checks
//! real long-poll answers and real SSE and WebSocket messages against it.

use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use crate::http::{CountParam, UnsignedParam};

/// `reading`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadingType {
    /// A reading.
    Reading,
}

/// `status`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatusType {
    /// A presence change.
    Status,
}

/// `gap`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GapType {
    /// Readings were dropped.
    Gap,
}

/// `reset`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResetType {
    /// The cursor was older than the log.
    Reset,
}

/// `online`, `stale` or `offline`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnlineStatus {
    /// The device said `online`, or it reports readings.
    Online,
    /// Nothing heard from it for its threshold (its readings stopped).
    Stale,
    /// The device said `offline`, or its last will did.
    Offline,
}

/// What a live status is derived from.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatusEventSource {
    /// The device's `sensors/{deviceId}/status` topic.
    Status,
    /// When its readings arrived.
    Readings,
}

/// A reading as delivered live (SSE `reading` event data, WebSocket `reading` message,
/// long-poll item).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({
    "type": "reading", "seq": 42, "topic": "sensors/d1/temperature", "deviceId": "d1",
    "metric": "temperature", "value": 21.5, "unit": "C",
    "timestamp": "2026-11-28T10:00:00.000Z", "receivedAt": "2026-11-28T10:00:00.012Z"
}))]
pub struct LiveReading {
    /// Always `reading`.
    #[serde(rename = "type")]
    #[schema(inline)]
    pub kind: ReadingType,
    /// Position in the event log: the resume cursor.
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
    pub timestamp: crate::http::Timestamp,
    /// Receive time.
    pub received_at: crate::http::Timestamp,
}

/// A device's shown status changed: it published `sensors/{deviceId}/status`, or its readings
/// stopped for its threshold (`stale`), or came back (`online`). See `GET /v1/devices`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusEvent {
    /// Always `status`.
    #[serde(rename = "type")]
    #[schema(inline)]
    pub kind: StatusType,
    /// The status topic.
    #[schema(examples("sensors/d1/status"))]
    pub topic: String,
    /// Device id.
    pub device_id: String,
    /// Whether `status` is `online`.
    pub online: bool,
    /// `online`, `stale` or `offline`.
    #[schema(inline)]
    pub status: OnlineStatus,
    /// What `status` is derived from: the status topic or the readings.
    #[schema(inline)]
    pub status_source: StatusEventSource,
    /// When the change happened: the status's receive time, the receive time of the reading
    /// that brought the device back, or when its silence crossed the threshold.
    pub at: crate::http::Timestamp,
    /// Receive time of its latest reading as of the hub's last presence sweep (at most one
    /// sweep period old); null if none is known.
    #[schema(required = true)]
    pub last_seen: Option<crate::http::Timestamp>,
}

/// Readings were dropped because the consumer was slow; replay after `resumeAfter` to fill the
/// hole.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GapEvent {
    /// Always `gap`.
    #[serde(rename = "type")]
    #[schema(inline)]
    pub kind: GapType,
    /// WebSocket only: the subscription.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub filter: Option<String>,
    /// Replay after this seq to fill the hole.
    pub resume_after: u64,
    /// Readings dropped.
    pub dropped: u64,
}

/// The requested cursor is older than the log keeps; delivery restarted at `oldest`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResetEvent {
    /// Always `reset`.
    #[serde(rename = "type")]
    #[schema(inline)]
    pub kind: ResetType,
    /// WebSocket only: the subscription.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub filter: Option<String>,
    /// The cursor asked for.
    pub requested: u64,
    /// The oldest seq still in the log.
    pub oldest: u64,
}

/// A notice in a long-poll answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum PollEvent {
    /// A presence change.
    Status(StatusEvent),
    /// Readings were dropped.
    Gap(GapEvent),
    /// The cursor was older than the log.
    Reset(ResetEvent),
}

/// A long-poll answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "readings": [{
        "type": "reading", "seq": 42, "topic": "sensors/d1/temperature", "deviceId": "d1",
        "metric": "temperature", "value": 21.5, "unit": "C",
        "timestamp": "2026-11-28T10:00:00.000Z", "receivedAt": "2026-11-28T10:00:00.012Z"
    }],
    "events": [],
    "next": 42
}))]
pub struct PollResult {
    /// Matching readings in seq order.
    pub readings: Vec<LiveReading>,
    /// Presence changes, gaps and resets.
    pub events: Vec<PollEvent>,
    /// Cursor for the next poll (`since`).
    pub next: u64,
}

/// A stream of SSE frames; each `data:` is one of LiveReading, StatusEvent, GapEvent,
/// ResetEvent.
#[derive(Debug, ToSchema)]
#[schema(value_type = String)]
pub struct EventStream(pub String);

/// What an SSE answer starts with: the `retry:` hint, a comment, then events.
pub const EVENT_STREAM_EXAMPLE: &str = "retry: 2000\n: edgewatch stream\n\nevent: reading\nid: 42\ndata: {\"type\":\"reading\",\"seq\":42,\"topic\":\"sensors/d1/temperature\",\"deviceId\":\"d1\",\"metric\":\"temperature\",\"value\":21.5,\"unit\":\"C\",\"timestamp\":\"2026-11-28T10:00:00.000Z\",\"receivedAt\":\"2026-11-28T10:00:00.012Z\"}\n\n";

/// Query parameters of `GET /v1/stream`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct StreamQuery {
    /// MQTT topic filter (`+` one level, `#` the rest); repeat for several. Default: everything
    /// readable (`sensors/#`).
    #[param(style = Form, explode, example = json!(["sensors/+/temperature"]))]
    pub filter: Option<Vec<String>>,
    /// SSE resume cursor for clients that cannot set the `Last-Event-ID` header.
    #[param(value_type = Option<UnsignedParam>, inline)]
    pub last_event_id: Option<u64>,
    /// Seq cursor: deliver what matches after this seq (replayed from the log), then live.
    #[param(value_type = Option<UnsignedParam>, inline)]
    pub since: Option<u64>,
}

/// Query parameters of `GET /v1/ws`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WsQuery {
    /// MQTT topic filter; repeat for several. With it the connection starts subscribed.
    #[param(style = Form, explode, example = json!(["sensors/+/temperature"]))]
    pub filter: Option<Vec<String>>,
    /// Seq cursor: deliver what matches after this seq (replayed from the log), then live.
    #[param(value_type = Option<UnsignedParam>, inline)]
    pub since: Option<u64>,
}

/// Query parameters of `GET /v1/poll`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PollQuery {
    /// MQTT topic filter (`+` one level, `#` the rest); repeat for several. Default: everything
    /// readable (`sensors/#`).
    #[param(style = Form, explode, example = json!(["sensors/+/temperature"]))]
    pub filter: Option<Vec<String>>,
    /// Seq cursor: deliver what matches after this seq (replayed from the log), then live.
    #[param(value_type = Option<UnsignedParam>, inline)]
    pub since: Option<u64>,
    /// Long-poll wait in seconds (default 25, at most `live.poll_max_timeout_secs`).
    #[param(value_type = Option<UnsignedParam>, inline)]
    pub timeout: Option<u64>,
    /// Most readings in one answer (at most `live.poll_max_readings`).
    #[param(value_type = Option<CountParam>, inline)]
    pub limit: Option<u64>,
}

/// Query parameters of `GET /v1/watch`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct WatchQuery {
    /// MQTT topic filter (`+` one level, `#` the rest); repeat for several. Default: everything
    /// readable (`sensors/#`).
    #[param(style = Form, explode, example = json!(["sensors/+/temperature"]))]
    pub filter: Option<Vec<String>>,
    /// Seq cursor: deliver what matches after this seq (replayed from the log), then live.
    #[param(value_type = Option<UnsignedParam>, inline)]
    pub since: Option<u64>,
    /// SSE resume cursor for clients that cannot set the `Last-Event-ID` header.
    #[param(value_type = Option<UnsignedParam>, inline)]
    pub last_event_id: Option<u64>,
    /// Long-poll wait in seconds (default 25, at most `live.poll_max_timeout_secs`).
    #[param(value_type = Option<UnsignedParam>, inline)]
    pub timeout: Option<u64>,
    /// Long poll: most readings in one answer (at most `live.poll_max_readings`).
    #[param(value_type = Option<CountParam>, inline)]
    pub limit: Option<u64>,
}

/// Query parameters of `GET /v1/sensors/{deviceId}/watch` (the filter is the device's).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct DeviceWatchQuery {
    /// Seq cursor: deliver what matches after this seq (replayed from the log), then live.
    #[param(value_type = Option<UnsignedParam>, inline)]
    pub since: Option<u64>,
    /// SSE resume cursor for clients that cannot set the `Last-Event-ID` header.
    #[param(value_type = Option<UnsignedParam>, inline)]
    pub last_event_id: Option<u64>,
    /// Long-poll wait in seconds (default 25, at most `live.poll_max_timeout_secs`).
    #[param(value_type = Option<UnsignedParam>, inline)]
    pub timeout: Option<u64>,
    /// Long poll: most readings in one answer (at most `live.poll_max_readings`).
    #[param(value_type = Option<CountParam>, inline)]
    pub limit: Option<u64>,
}
