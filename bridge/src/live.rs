//! Resumable live streams: "what matches my filters after seq N", replayed from the event log
//! and then continued from the fan-out, with no hole and no duplicate at the seam.
//!
//! [`LiveHub::watch`] first subscribes to the fan-out (so every event committed from then on
//! is queued), then reads the log's last seq `B`. Everything up to `B` is replayed from the
//! log in pages; everything after `B` arrives live. Events that show up on both sides (the
//! fan-out task may still be publishing seqs ≤ `B`) are dropped by seq, so each reading is
//! delivered exactly once, in seq order.
//!
//! The fan-out task ([`run_fanout`]) turns committed batches into [`LiveEvent`]s, serialized
//! once. If it falls behind the writer's broadcast channel, it re-reads the missed seqs from
//! the log instead of losing them.

use std::collections::VecDeque;
use std::sync::Arc;

use edgewatch_protocol::timefmt::{format_rfc3339, now_ms};
use edgewatch_protocol::TopicFilter;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::fanout::{Delivery, EventKind, Fanout, LiveEvent, Subscription};
use crate::presence::{DeviceStatus, StatusChange};
use crate::store::{ReadingQuery, Store, StoredReading};
use crate::writer::CommittedBatch;

/// Readings read from the log per replay step.
const REPLAY_PAGE: usize = 500;

/// The JSON message of a stored reading, shared by SSE, WebSocket and long polling.
pub fn reading_event(r: &StoredReading) -> Arc<LiveEvent> {
    let topic = r.reading.topic();
    let json = crate::json_write::reading_message(r);
    Arc::new(LiveEvent::new(
        r.seq,
        EventKind::Reading,
        topic.into(),
        json.into(),
    ))
}

/// The JSON message of a shown-status change (see [`crate::presence`]); `seq` is the log
/// position it followed.
pub fn status_event(p: &StatusChange, seq: u64) -> Arc<LiveEvent> {
    let topic = format!("sensors/{}/status", p.device_id);
    let json = json!({
        "type": "status",
        "topic": topic,
        "deviceId": p.device_id,
        "online": p.status == DeviceStatus::Online,
        "status": p.status.as_str(),
        "statusSource": p.source.as_str(),
        "at": format_rfc3339(p.at_ms),
        "lastSeen": p.last_seen_ms.map(format_rfc3339),
    });
    Arc::new(LiveEvent::new(
        seq,
        EventKind::Status,
        topic.into(),
        json.to_string().into(),
    ))
}

/// Feeds the fan-out from the writer's committed batches and status changes until `stop`.
pub async fn run_fanout(
    fanout: Fanout,
    store: Store,
    mut committed: broadcast::Receiver<CommittedBatch>,
    mut presence: broadcast::Receiver<StatusChange>,
    stop: CancellationToken,
) {
    let mut last = store.last_seq().unwrap_or(0);
    let mut presence_open = true;
    loop {
        let batch = tokio::select! {
            () = stop.cancelled() => return,
            b = committed.recv() => b,
            p = presence.recv(), if presence_open => {
                match p {
                    Ok(update) => fanout.publish(&[status_event(&update, last)]),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "fan-out missed presence changes");
                    }
                    Err(broadcast::error::RecvError::Closed) => presence_open = false,
                }
                continue;
            }
        };
        match batch {
            Ok(batch) if fanout.subscriptions() == 0 => {
                // Nobody watches: no events to build. A watch that subscribes after this check
                // replays these readings from the log (the writer applied them before it
                // published the batch), exactly as for a batch published just before it
                // subscribed.
                if let Some(r) = batch.last() {
                    last = last.max(r.seq);
                }
            }
            Ok(batch) => {
                if let Some(first) = batch.first() {
                    let waited_ms = now_ms().saturating_sub(first.reading.received_at_ms);
                    fanout
                        .stats()
                        .link_to_fanout
                        .observe(waited_ms.max(0) as f64 / 1000.0);
                }
                let events: Vec<_> = batch
                    .iter()
                    .filter(|r| r.seq > last)
                    .map(reading_event)
                    .collect();
                if let Some(r) = batch.last() {
                    last = last.max(r.seq);
                }
                fanout.publish(&events);
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    after = last,
                    "fan-out fell behind the writer; replaying from the log"
                );
                // Catch up from the log; later batches that overlap are filtered by seq.
                loop {
                    let store2 = store.clone();
                    let page =
                        tokio::task::spawn_blocking(move || store2.log_after(last, REPLAY_PAGE))
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .unwrap_or_default();
                    let Some(end) = page.last().map(|r| r.seq) else {
                        break;
                    };
                    let events: Vec<_> = page.iter().map(reading_event).collect();
                    fanout.publish(&events);
                    last = end;
                    if page.len() < REPLAY_PAGE {
                        break;
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Starts the fan-out for `hub` (a task fed by its committed batches and presence changes,
/// ending with `stop`) and returns it with the state of the live routes.
pub fn start(
    hub: &crate::Hub,
    cfg: crate::watch::LiveConfig,
    stop: CancellationToken,
    publisher: Option<crate::watch::PublishFn>,
) -> (Fanout, crate::watch::LiveState) {
    let fanout = Fanout::new(cfg.fanout.clone());
    tokio::spawn(run_fanout(
        fanout.clone(),
        hub.store().clone(),
        hub.live(),
        hub.status_changes(),
        stop.child_token(),
    ));
    let state = crate::watch::LiveState::new(
        LiveHub::new(fanout.clone(), hub.store().clone()),
        cfg,
        stop,
        publisher,
    );
    (fanout, state)
}

/// Why a watch could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// Reading the log failed.
    #[error("cannot read the event log: {0}")]
    Store(String),
}

/// What a [`Watch`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchItem {
    /// A reading or status event.
    Event(Arc<LiveEvent>),
    /// Readings were dropped for this slow consumer; `resume_after` fills the hole.
    Gap {
        /// The last seq delivered before the hole.
        resume_after: u64,
        /// How many were dropped.
        dropped: u64,
    },
    /// The requested resume point is older than what the log keeps; delivery restarts at
    /// `oldest`.
    Reset {
        /// The cursor the client asked for.
        requested: u64,
        /// The oldest seq still stored.
        oldest: u64,
    },
    /// Closed for sustained lag: disconnect the client.
    Closed,
}

/// Opens resumable watches.
#[derive(Debug, Clone)]
pub struct LiveHub {
    fanout: Fanout,
    store: Store,
}

impl LiveHub {
    /// A hub over `fanout` and the log in `store`.
    pub fn new(fanout: Fanout, store: Store) -> Self {
        Self { fanout, store }
    }

    /// The fan-out registry.
    pub fn fanout(&self) -> &Fanout {
        &self.fanout
    }

    /// The last committed seq.
    pub async fn last_seq(&self) -> Result<u64, WatchError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.last_seq())
            .await
            .map_err(|e| WatchError::Store(e.to_string()))?
            .map_err(|e| WatchError::Store(e.to_string()))
    }

    /// Watches `filters`. With `since`, first replays the stored readings after that seq
    /// (a `Reset` item comes first if they are no longer all stored); without it, only new
    /// events are delivered.
    pub async fn watch(
        &self,
        filters: Vec<TopicFilter>,
        since: Option<u64>,
    ) -> Result<Watch, WatchError> {
        let sub = self.fanout.subscribe(filters.clone());
        let boundary = self.last_seq().await?;
        let mut w = Watch {
            sub,
            store: self.store.clone(),
            filters,
            pending: VecDeque::new(),
            replay_after: None,
            boundary,
            last_sent: boundary,
        };
        if let Some(since) = since {
            let since = since.min(boundary);
            w.last_sent = since;
            if since < boundary {
                w.replay_after = Some(since);
                // A hole right after `since` means retention removed what was asked for.
                let store = self.store.clone();
                let first = tokio::task::spawn_blocking(move || store.log_after(since, 1))
                    .await
                    .map_err(|e| WatchError::Store(e.to_string()))?
                    .map_err(|e| WatchError::Store(e.to_string()))?;
                if let Some(first) = first.first() {
                    if first.seq > since + 1 {
                        w.pending.push_back(WatchItem::Reset {
                            requested: since,
                            oldest: first.seq,
                        });
                    }
                }
            }
        }
        Ok(w)
    }
}

/// One resumable stream of events matching a set of filters.
#[derive(Debug)]
pub struct Watch {
    sub: Subscription,
    store: Store,
    filters: Vec<TopicFilter>,
    pending: VecDeque<WatchItem>,
    /// Replay cursor while replaying from the log (up to `boundary`).
    replay_after: Option<u64>,
    /// Last seq in the log when the watch started: replay covers up to here, live after it.
    boundary: u64,
    /// Highest reading seq delivered; live events at or below it are duplicates.
    last_sent: u64,
}

impl Watch {
    /// The filters watched.
    pub fn filters(&self) -> &[TopicFilter] {
        &self.filters
    }

    /// The resume cursor: the highest seq delivered, or covered (nothing matched up to it).
    pub fn cursor(&self) -> u64 {
        if self.replay_after.is_none() {
            self.last_sent.max(self.boundary)
        } else {
            self.last_sent
        }
    }

    /// Waits for the next item.
    pub async fn next(&mut self) -> WatchItem {
        loop {
            if let Some(item) = self.ready().await {
                return item;
            }
            let d = self.sub.next().await;
            if let Some(item) = self.accept(d) {
                return item;
            }
        }
    }

    /// The next item if one is ready without waiting for new events (replay pages are read).
    pub async fn try_next(&mut self) -> Option<WatchItem> {
        loop {
            if let Some(item) = self.ready().await {
                return Some(item);
            }
            let d = self.sub.try_next()?;
            if let Some(item) = self.accept(d) {
                return Some(item);
            }
        }
    }

    /// Pending items and replay pages.
    async fn ready(&mut self) -> Option<WatchItem> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                if let WatchItem::Event(ev) = &item {
                    if ev.kind == EventKind::Reading {
                        self.last_sent = self.last_sent.max(ev.seq);
                    }
                }
                return Some(item);
            }
            let after = self.replay_after?;
            if after >= self.boundary {
                self.replay_after = None;
                return None;
            }
            let q = ReadingQuery {
                filters: self.filters.clone(),
                after,
                limit: REPLAY_PAGE,
                ..ReadingQuery::default()
            };
            let store = self.store.clone();
            let page = match tokio::task::spawn_blocking(move || store.readings(&q)).await {
                Ok(Ok(page)) => page,
                Ok(Err(err)) => {
                    tracing::warn!(%err, "replay from the log failed; continuing live");
                    self.replay_after = None;
                    return None;
                }
                Err(_) => {
                    self.replay_after = None;
                    return None;
                }
            };
            let boundary = self.boundary;
            for r in page.readings.iter().filter(|r| r.seq <= boundary) {
                self.pending.push_back(WatchItem::Event(reading_event(r)));
            }
            self.replay_after = match page.next_after {
                Some(next) if next < boundary => Some(next),
                _ => None,
            };
        }
    }

    fn accept(&mut self, d: Delivery) -> Option<WatchItem> {
        match d {
            Delivery::Event(ev) => {
                if ev.kind == EventKind::Reading {
                    if ev.seq <= self.last_sent {
                        return None; // already replayed
                    }
                    self.last_sent = ev.seq;
                }
                Some(WatchItem::Event(ev))
            }
            Delivery::Gap {
                resume_after,
                dropped,
            } => Some(WatchItem::Gap {
                resume_after: resume_after.max(self.last_sent),
                dropped,
            }),
            Delivery::Closed => Some(WatchItem::Closed),
        }
    }
}
