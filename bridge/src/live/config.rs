//! Settings of live delivery (the `[live]` section): the fan-out's queues and the
//! transports' limits, and the publish hook WebSocket clients use.

use std::sync::Arc;

use bytes::Bytes;
use edgewatch_protocol::{InvalidSetting, TopicFilter};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::fanout::FanoutConfig;

/// Settings of live delivery (`[live]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveConfig {
    /// Per-subscriber queues and slow-consumer policy.
    pub fanout: FanoutConfig,
    /// SSE comment heartbeat interval, seconds.
    pub sse_heartbeat_secs: u64,
    /// The `retry:` hint sent to SSE clients, milliseconds.
    pub sse_retry_ms: u64,
    /// Interval of server pings on WebSocket connections, seconds.
    pub ws_ping_secs: u64,
    /// A WebSocket with no frame from the client (not even a pong) for this long is closed.
    pub ws_idle_timeout_secs: u64,
    /// Largest WebSocket message accepted from a client, bytes.
    pub ws_max_message_bytes: usize,
    /// Subscriptions one WebSocket connection may hold; a subscribe over it gets an `error`
    /// (`too_many_subscriptions`) and the connection stays open.
    pub ws_max_subscriptions: usize,
    /// Longest `timeout` a long poll may ask for, seconds.
    pub poll_max_timeout_secs: u64,
    /// Most readings one long-poll answer carries.
    pub poll_max_readings: usize,
    /// Origins allowed to open SSE / WebSocket streams from a browser. Empty: same-origin
    /// only (and non-browser clients, which send no Origin); `"*"`: any.
    pub allowed_origins: Vec<String>,
    /// Topic filters anonymous callers may read.
    pub read_filters: Vec<String>,
    /// Topic filters anonymous callers may publish to over WebSocket (default: none).
    pub publish_filters: Vec<String>,
    /// Concurrent live connections (SSE + WebSocket + long polls); more get 503.
    pub max_connections: usize,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            fanout: FanoutConfig::default(),
            sse_heartbeat_secs: 15,
            sse_retry_ms: 2_000,
            ws_ping_secs: 20,
            ws_idle_timeout_secs: 60,
            ws_max_message_bytes: 65_536,
            ws_max_subscriptions: 256,
            poll_max_timeout_secs: 60,
            poll_max_readings: 1_000,
            allowed_origins: Vec::new(),
            read_filters: vec!["sensors/#".to_owned()],
            publish_filters: Vec::new(),
            max_connections: 20_000,
        }
    }
}

impl LiveConfig {
    /// Checks the filters; errors name the key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        for (key, list) in [
            ("read_filters", &self.read_filters),
            ("publish_filters", &self.publish_filters),
        ] {
            for f in list {
                TopicFilter::parse_bounded(f)
                    .map_err(|e| InvalidSetting::new(format!("live.{key}"), e.to_string()))?;
            }
        }
        if self.fanout.queue_capacity == 0 {
            return Err(InvalidSetting::new(
                "live.fanout.queue_capacity",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Publishes into the broker on behalf of a WebSocket client.
pub type PublishFn =
    Arc<dyn Fn(String, Bytes) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;
