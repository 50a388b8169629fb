//! What an uplink shows: its state, cursor, lag and counters (`GET /v1/uplinks`, `/metrics`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use edgewatch_protocol::timefmt::{format_rfc3339, now_ms};
use serde::Serialize;
use utoipa::ToSchema;

use super::UplinkConfig;
use crate::store::Store;

/// Where an uplink is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UplinkState {
    /// Opening a connection.
    Connecting,
    /// Connected: forwarding, or caught up and waiting for readings.
    Connected,
    /// The last connection failed or was lost; waiting before the next attempt.
    BackingOff,
    /// The hub is stopping.
    Stopped,
}

/// One uplink, as `GET /v1/uplinks` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UplinkStatus {
    /// The section's `name`.
    pub name: String,
    /// The upstream broker (`mqtt://host:port`).
    pub url: String,
    /// Where it is.
    pub state: UplinkState,
    /// Since when, RFC 3339.
    pub since: String,
    /// The last error (connection refused, lost, ...), if any since start.
    pub last_error: Option<String>,
    /// When it happened, RFC 3339.
    pub last_error_at: Option<String>,
    /// The last seq forwarded and acknowledged over a contiguous prefix.
    pub cursor: u64,
    /// The log's last seq.
    pub head: u64,
    /// Seqs from the oldest reading after the cursor to the head: readings not forwarded yet
    /// (or outside the filters); 0 when caught up.
    pub lag_readings: u64,
    /// Age of the oldest reading not forwarded yet, by receive time, in seconds (0 when
    /// caught up).
    pub lag_seconds: f64,
    /// Readings acknowledged upstream since start.
    pub forwarded: u64,
    /// Readings sent again since start (after a reconnect, before their acknowledgement).
    pub resent: u64,
    /// Messages whose MQTT 5 PUBACK refused them for good (not authorised, topic or payload
    /// format invalid): counted, not sent again. Other failure reasons reconnect and resend.
    pub refused: u64,
    /// Readings retention removed before this uplink forwarded them (since start).
    pub dropped: u64,
    /// Connections made since start.
    pub connects: u64,
    /// Downlinked messages published into the local broker since start.
    pub downlink_published: u64,
    /// Downlinked messages dropped since start (outside `downlink_publish`, over
    /// `downlink_rate`, too large, or the local publish failed).
    pub downlink_dropped: u64,
}

/// The counters and state one uplink task updates and readers copy.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) name: String,
    url: String,
    state: Mutex<StateInfo>,
    pub(super) cursor: AtomicU64,
    pub(super) forwarded: AtomicU64,
    pub(super) resent: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) connects: AtomicU64,
    pub(super) downlink_published: AtomicU64,
    pub(super) downlink_dropped: AtomicU64,
    /// The highest seq handed to any connection: sending one at or below it again is a resend.
    pub(super) max_sent: AtomicU64,
}

#[derive(Debug, Clone)]
struct StateInfo {
    state: UplinkState,
    since_ms: i64,
    last_error: Option<(String, i64)>,
}

impl Shared {
    pub(super) fn new(cfg: &UplinkConfig) -> Shared {
        Shared {
            name: cfg.name.clone(),
            url: cfg.url.clone(),
            state: Mutex::new(StateInfo {
                state: UplinkState::Connecting,
                since_ms: now_ms(),
                last_error: None,
            }),
            cursor: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            downlink_published: AtomicU64::new(0),
            downlink_dropped: AtomicU64::new(0),
            max_sent: AtomicU64::new(0),
        }
    }

    fn info(&self) -> std::sync::MutexGuard<'_, StateInfo> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves to `state` (and records `error`, if any).
    pub(super) fn set(&self, state: UplinkState, error: Option<String>) {
        let mut i = self.info();
        if i.state != state {
            i.state = state;
            i.since_ms = now_ms();
        }
        if let Some(e) = error {
            i.last_error = Some((e, now_ms()));
        }
    }

    /// A copy for readers; `head` is the log's last seq.
    pub(super) fn status(&self, store: &Store, head: u64) -> UplinkStatus {
        let info = self.info().clone();
        let cursor = self.cursor.load(Ordering::Relaxed);
        // The oldest reading after the cursor (none: caught up, whatever seqs a crash skipped).
        let oldest = if cursor < head {
            store
                .log_after(cursor, 1)
                .ok()
                .and_then(|r| r.into_iter().next())
        } else {
            None
        };
        let (lag_readings, lag_seconds) = oldest.map_or((0, 0.0), |r| {
            let age = (now_ms() - r.reading.received_at_ms).max(0) as f64 / 1000.0;
            (head.saturating_sub(r.seq) + 1, age)
        });
        UplinkStatus {
            name: self.name.clone(),
            url: self.url.clone(),
            state: info.state,
            since: format_rfc3339(info.since_ms),
            last_error: info.last_error.as_ref().map(|(e, _)| e.clone()),
            last_error_at: info.last_error.as_ref().map(|(_, at)| format_rfc3339(*at)),
            cursor,
            head,
            lag_readings,
            lag_seconds,
            forwarded: self.forwarded.load(Ordering::Relaxed),
            resent: self.resent.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            dropped: store.uplink_dropped(&self.name),
            connects: self.connects.load(Ordering::Relaxed),
            downlink_published: self.downlink_published.load(Ordering::Relaxed),
            downlink_dropped: self.downlink_dropped.load(Ordering::Relaxed),
        }
    }
}
