//! Open live connections by transport (SSE, WebSocket, long poll), counted by the transports
//! and read by [`crate::metrics`].

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// A live transport, for the `transport` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Server-Sent Events.
    Sse,
    /// WebSocket.
    Ws,
    /// Long poll (a request in progress).
    Poll,
}

impl Transport {
    /// The `transport` label value.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Ws => "ws",
            Transport::Poll => "poll",
        }
    }
}

/// Open live connections by transport (held by [`crate::http::live::LiveState`]).
#[derive(Debug, Default)]
pub struct LiveMetrics {
    sse: AtomicI64,
    ws: AtomicI64,
    poll: AtomicI64,
    ws_subscriptions_refused: AtomicU64,
}

impl LiveMetrics {
    fn gauge(&self, t: Transport) -> &AtomicI64 {
        match t {
            Transport::Sse => &self.sse,
            Transport::Ws => &self.ws,
            Transport::Poll => &self.poll,
        }
    }

    /// Counts one open connection until the guard is dropped.
    pub fn open(self: &Arc<Self>, t: Transport) -> ConnectionGuard {
        self.gauge(t).fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            metrics: self.clone(),
            transport: t,
        }
    }

    /// Counts a WebSocket subscribe refused at `live.ws_max_subscriptions`.
    pub fn ws_subscription_refused(&self) {
        self.ws_subscriptions_refused
            .fetch_add(1, Ordering::Relaxed);
    }

    /// WebSocket subscribes refused at `live.ws_max_subscriptions` since start.
    pub fn ws_subscriptions_refused(&self) -> u64 {
        self.ws_subscriptions_refused.load(Ordering::Relaxed)
    }

    /// Open connections of transport `t`.
    pub fn connections(&self, t: Transport) -> i64 {
        self.gauge(t).load(Ordering::Relaxed)
    }
}

/// Decrements its transport's gauge on drop.
#[derive(Debug)]
pub struct ConnectionGuard {
    metrics: Arc<LiveMetrics>,
    transport: Transport,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics
            .gauge(self.transport)
            .fetch_sub(1, Ordering::Relaxed);
    }
}
