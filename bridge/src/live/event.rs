//! A live event, encoded once for every subscriber and transport, and what a subscription
//! yields.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;

/// What an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A stored reading (has a `seq`).
    Reading,
    /// A device presence change (`sensors/{deviceId}/status`).
    Status,
}

/// One live event, serialized once and shared by every subscriber it goes to.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    /// The reading's global sequence number (status events carry the last seq committed
    /// before them, which is a valid resume cursor).
    pub seq: u64,
    /// Reading or status.
    pub kind: EventKind,
    /// The topic filters are matched against.
    pub topic: Arc<str>,
    /// The JSON message, with a `type` field (`reading` / `status`).
    pub json: Arc<str>,
    /// When the event was made (just before the fan-out queued it): the start of the
    /// fan-out-to-socket stage measured in [`FanoutStats`](super::fanout::FanoutStats).
    pub made_at: Instant,
    /// The SSE frame, formatted by the first stream that writes it.
    sse: OnceLock<Bytes>,
    /// The WebSocket text message, copied once by the first connection that writes it.
    ws: OnceLock<Utf8Bytes>,
}

impl PartialEq for LiveEvent {
    fn eq(&self, other: &Self) -> bool {
        (self.seq, self.kind, &self.topic, &self.json)
            == (other.seq, other.kind, &other.topic, &other.json)
    }
}

impl LiveEvent {
    /// An event made now.
    pub fn new(seq: u64, kind: EventKind, topic: Arc<str>, json: Arc<str>) -> Self {
        Self {
            seq,
            kind,
            topic,
            json,
            made_at: Instant::now(),
            sse: OnceLock::new(),
            ws: OnceLock::new(),
        }
    }

    /// The WebSocket text message of this event (its JSON), made once and then shared by
    /// every connection it goes to (a clone is a reference count, not a copy).
    pub fn ws_text(&self) -> Utf8Bytes {
        self.ws
            .get_or_init(|| Utf8Bytes::from(String::from(&*self.json)))
            .clone()
    }

    /// The Server-Sent Events frame of this event (`event:`, `id:` for readings, `data:`),
    /// formatted once and then shared by every stream it goes to.
    pub fn sse_frame(&self) -> Bytes {
        self.sse
            .get_or_init(|| {
                // The JSON is compact (no newline), so it fits one `data:` line.
                let mut f = String::with_capacity(self.json.len() + 48);
                match self.kind {
                    EventKind::Reading => {
                        let _ = write!(f, "event: reading\nid: {}\n", self.seq);
                    }
                    EventKind::Status => f.push_str("event: status\n"),
                }
                f.push_str("data: ");
                f.push_str(&self.json);
                f.push_str("\n\n");
                Bytes::from(f)
            })
            .clone()
    }
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// The next event.
    Event(Arc<LiveEvent>),
    /// Events were dropped: the consumer was too slow. `resume_after` is the last seq
    /// delivered before the hole.
    Gap {
        /// Replay from the log after this seq to fill the hole.
        resume_after: u64,
        /// How many events were dropped (superseded while conflated).
        dropped: u64,
    },
    /// The subscription was closed because the consumer lagged for too long.
    Closed,
}
