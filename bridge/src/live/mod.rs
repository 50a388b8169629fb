//! Resumable live streams: "what matches my filters after seq N", replayed from the event log
//! and then continued from the fan-out, with no hole and no duplicate at the seam.
//!
//! [`LiveFeed::watch`] first subscribes to the fan-out (so every event committed from then on
//! is queued), then reads the log's last seq `B`. Everything up to `B` is replayed from the
//! log in pages; everything after `B` arrives live. Events that show up on both sides (the
//! fan-out task may still be publishing seqs ≤ `B`) are dropped by seq, so each reading is
//! delivered exactly once, in seq order.
//!
//! The fan-out task ([`run_fanout`]) turns committed batches into [`LiveEvent`]s, serialized
//! once. If it falls behind the writer's broadcast channel, it re-reads the missed seqs from
//! the log instead of losing them.
//!
//! No hole is silent. When reading the log fails (the fan-out catching up, or a watch
//! replaying after its cursor), the failure is logged with the seqs concerned, counted
//! ([`FanoutStats::catchup_failures`](crate::live::fanout::FanoutStats)) and the subscribers
//! concerned get the same `gap` a slow consumer gets, whose `resume_after` is the last seq they
//! received in order: replaying from the log after it (once the store answers again) fills
//! the hole.

mod config;
pub mod connections;

pub use config::{LiveConfig, PublishFn};

mod event;
pub mod fanout;
mod queue;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use edgewatch_protocol::timefmt::{format_rfc3339, now_ms};
use edgewatch_protocol::TopicFilter;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::presence::{DeviceStatus, StatusChange};
use crate::store::{ReadingPage, ReadingQuery, Store, StoreError, StoredReading};
use crate::writer::CommittedBatch;
use fanout::{Delivery, EventKind, Fanout, FanoutConfig, FanoutStats, LiveEvent, Subscription};

/// Readings read from the log per replay step.
const REPLAY_PAGE: usize = 500;

/// The JSON message of a stored reading, shared by SSE, WebSocket and long polling; `None`
/// (logged and counted in `stats`) when it cannot be written: nothing is sent in its place.
pub fn reading_event(r: &StoredReading, stats: &FanoutStats) -> Option<Arc<LiveEvent>> {
    match crate::json::reading_message(r) {
        Ok(json) => Some(Arc::new(LiveEvent::new(
            r.seq,
            EventKind::Reading,
            r.reading.topic().into(),
            json.into(),
        ))),
        Err(err) => {
            stats.unencodable.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                %err,
                seq = r.seq,
                device_id = %r.reading.device_id,
                metric = %r.reading.metric,
                "live event not sent: cannot serialize the reading"
            );
            None
        }
    }
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

/// The log as live delivery reads it (the fan-out catching up, a watch replaying): the
/// [`Store`] in production; a test seam, so that tests can make reads fail. Generic, so
/// monomorphized: no cost in production.
#[doc(hidden)]
pub trait CatchUpLog: Clone + std::fmt::Debug + Send + Sync + 'static {
    /// The last committed seq.
    fn last_seq(&self) -> Result<u64, StoreError>;
    /// Up to `limit` readings after `after`, in seq order.
    fn log_after(&self, after: u64, limit: usize) -> Result<Vec<StoredReading>, StoreError>;
    /// A page of the readings matching `q`.
    fn readings(&self, q: &ReadingQuery) -> Result<ReadingPage, StoreError>;
}

impl CatchUpLog for Store {
    fn last_seq(&self) -> Result<u64, StoreError> {
        Store::last_seq(self)
    }

    fn log_after(&self, after: u64, limit: usize) -> Result<Vec<StoredReading>, StoreError> {
        Store::log_after(self, after, limit)
    }

    fn readings(&self, q: &ReadingQuery) -> Result<ReadingPage, StoreError> {
        Store::readings(self, q)
    }
}

/// Why reading the log on the live path failed.
#[derive(Debug, thiserror::Error)]
enum CatchUpError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the log read on the blocking pool did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Publishes every reading the log holds after `*last`, page by page, moving `*last` on as
/// pages are published. On an error, `*last` is the last seq published.
async fn catch_up<L: CatchUpLog>(
    fanout: &Fanout,
    log: &L,
    last: &mut u64,
) -> Result<(), CatchUpError> {
    loop {
        let (reader, after) = (log.clone(), *last);
        let page =
            tokio::task::spawn_blocking(move || reader.log_after(after, REPLAY_PAGE)).await??;
        let Some(end) = page.last().map(|r| r.seq) else {
            return Ok(());
        };
        let events: Vec<_> = page
            .iter()
            .filter_map(|r| reading_event(r, fanout.stats()))
            .collect();
        fanout.publish(&events);
        *last = end;
        if page.len() < REPLAY_PAGE {
            return Ok(());
        }
    }
}

/// Feeds the fan-out from the writer's committed batches and status changes until `stop`.
pub async fn run_fanout(
    fanout: Fanout,
    store: Store,
    committed: broadcast::Receiver<CommittedBatch>,
    presence: broadcast::Receiver<StatusChange>,
    stop: CancellationToken,
) {
    run_fanout_from(fanout, store, committed, presence, stop).await;
}

/// [`run_fanout`] over any [`CatchUpLog`].
pub(crate) async fn run_fanout_from<L: CatchUpLog>(
    fanout: Fanout,
    log: L,
    mut committed: broadcast::Receiver<CommittedBatch>,
    mut presence: broadcast::Receiver<StatusChange>,
    stop: CancellationToken,
) {
    let mut last = match log.last_seq() {
        Ok(seq) => seq,
        Err(err) => {
            // Only a catch-up before the first batch would start from here.
            tracing::error!(%err, "fan-out cannot read the last seq; starting from 0");
            0
        }
    };
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
            Ok(batch) => publish_batch(&fanout, &batch, &mut last),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    after = last,
                    "fan-out fell behind the writer; replaying from the log"
                );
                // Catch up from the log; later batches that overlap are filtered by seq.
                catch_up_or_open_hole(&fanout, &log, &mut last).await;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Publishes a committed batch's readings after `last` (the ones a catch-up has not
/// published already).
fn publish_batch(fanout: &Fanout, batch: &[StoredReading], last: &mut u64) {
    if let Some(first) = batch.first() {
        let waited_ms = now_ms().saturating_sub(first.reading.received_at_ms);
        fanout
            .stats()
            .link_to_fanout
            .observe(waited_ms.max(0) as f64 / 1000.0);
    }
    let events: Vec<_> = batch
        .iter()
        .filter(|r| r.seq > *last)
        .filter_map(|r| reading_event(r, fanout.stats()))
        .collect();
    if let Some(r) = batch.last() {
        *last = (*last).max(r.seq);
    }
    fanout.publish(&events);
}

/// Replays what the fan-out missed from the log. If the log cannot answer, what is missing
/// is after `last`, up to at most the log's end now (the batches still in the channel
/// deliver what they hold of it); every subscriber may be concerned, so each is sent a gap
/// to resume from.
async fn catch_up_or_open_hole<L: CatchUpLog>(fanout: &Fanout, log: &L, last: &mut u64) {
    if let Err(err) = catch_up(fanout, log, last).await {
        fanout
            .stats()
            .catchup_failures
            .fetch_add(1, Ordering::Relaxed);
        let subscribers = fanout.open_hole();
        let log_end = log.last_seq().ok();
        tracing::error!(
            %err,
            after = *last,
            log_end,
            subscribers,
            "fan-out could not catch up from the log: readings after `after` may be \
             missing from live streams; every subscriber is sent a gap to resume from"
        );
    }
}

/// Starts the fan-out for `bridge` (a task fed by its committed batches and status changes,
/// ending with `stop`) and returns the feed that opens resumable watches on it.
pub fn start(bridge: &crate::Bridge, cfg: &FanoutConfig, stop: CancellationToken) -> LiveFeed {
    let fanout = Fanout::new(cfg.clone());
    tokio::spawn(run_fanout(
        fanout.clone(),
        bridge.store().clone(),
        bridge.live(),
        bridge.status_changes(),
        stop,
    ));
    LiveFeed::new(fanout, bridge.store().clone())
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
    /// Readings were dropped for this slow consumer, or could not be read from the log;
    /// replaying after `resume_after` fills the hole.
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
pub struct LiveFeed<L = Store> {
    fanout: Fanout,
    store: L,
}

impl<L: CatchUpLog> LiveFeed<L> {
    /// A hub over `fanout` and the log in `store`.
    pub fn new(fanout: Fanout, store: L) -> Self {
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
    ) -> Result<Watch<L>, WatchError> {
        let opened = self.open(filters, since).await;
        if let Err(err) = &opened {
            tracing::error!(%err, ?since, "cannot open a live watch");
        }
        opened
    }

    async fn open(
        &self,
        filters: Vec<TopicFilter>,
        since: Option<u64>,
    ) -> Result<Watch<L>, WatchError> {
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
pub struct Watch<L = Store> {
    sub: Subscription,
    store: L,
    filters: Vec<TopicFilter>,
    pending: VecDeque<WatchItem>,
    /// Replay cursor while replaying from the log (up to `boundary`).
    replay_after: Option<u64>,
    /// Last seq in the log when the watch started: replay covers up to here, live after it.
    boundary: u64,
    /// Highest reading seq delivered (or, after a failed replay, covered by the gap sent);
    /// live events at or below it are duplicates.
    last_sent: u64,
}

impl<L: CatchUpLog> Watch<L> {
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
                Ok(Err(err)) => return Some(self.replay_failed(&err.into(), after)),
                Err(err) => return Some(self.replay_failed(&err.into(), after)),
            };
            let boundary = self.boundary;
            for r in page.readings.iter().filter(|r| r.seq <= boundary) {
                if let Some(ev) = reading_event(r, self.sub.stats()) {
                    self.pending.push_back(WatchItem::Event(ev));
                }
            }
            self.replay_after = match page.next_after {
                Some(next) if next < boundary => Some(next),
                _ => None,
            };
        }
    }

    /// Replay after `after` failed: everything up to `after` was delivered, the rest up to the
    /// boundary may not be. The client gets a gap at `after` and the watch goes on live past
    /// the boundary (what it would replay is the hole the client fills).
    fn replay_failed(&mut self, err: &CatchUpError, after: u64) -> WatchItem {
        self.sub
            .stats()
            .catchup_failures
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            %err,
            after,
            through = self.boundary,
            "replay from the log failed: the client is sent a gap to resume from"
        );
        self.replay_after = None;
        self.last_sent = self.last_sent.max(self.boundary);
        WatchItem::Gap {
            resume_after: after,
            dropped: 0,
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use edgewatch_protocol::Reading;

    use super::*;
    use crate::live::fanout::FanoutConfig;

    /// The store, failing every read of readings while `failing` is set.
    #[derive(Debug, Clone)]
    struct FlakyLog {
        store: Store,
        failing: Arc<AtomicBool>,
    }

    impl FlakyLog {
        fn injected_failure(&self) -> Result<(), StoreError> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(StoreError::Corrupt {
                    what: "log block (injected)",
                });
            }
            Ok(())
        }
    }

    impl CatchUpLog for FlakyLog {
        fn last_seq(&self) -> Result<u64, StoreError> {
            self.store.last_seq()
        }

        fn log_after(&self, after: u64, limit: usize) -> Result<Vec<StoredReading>, StoreError> {
            self.injected_failure()?;
            self.store.log_after(after, limit)
        }

        fn readings(&self, q: &ReadingQuery) -> Result<ReadingPage, StoreError> {
            self.injected_failure()?;
            self.store.readings(q)
        }
    }

    fn reading(i: i64) -> Reading {
        Reading {
            device_id: "d1".to_owned(),
            metric: "temperature".to_owned(),
            value: i as f64,
            unit: Some("C".to_owned()),
            timestamp_ms: 1_790_000_000_000 + i,
            received_at_ms: 1_790_000_000_000 + i,
        }
    }

    /// Stores readings `from..=to`, one commit each, as the writer would publish them.
    fn commit(store: &Store, from: i64, to: i64) -> Vec<CommittedBatch> {
        (from..=to)
            .map(|i| {
                let stored = store.append_batch(&[reading(i)]).unwrap();
                stored
                    .into_iter()
                    .map(|(seq, reading)| StoredReading { seq, reading })
                    .collect()
            })
            .collect()
    }

    async fn next<L: CatchUpLog>(w: &mut Watch<L>) -> WatchItem {
        tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("a watch item within 10 s")
    }

    fn seq(item: &WatchItem) -> u64 {
        match item {
            WatchItem::Event(ev) => ev.seq,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// A store failure while the fan-out catches up from the log reaches the live subscriber
    /// as a gap (and the counter), live delivery goes on, and resuming from the gap's cursor
    /// once the store answers again replays everything that was missing.
    #[tokio::test]
    async fn failed_catch_up_sends_a_gap_to_resume_from() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::BridgeConfig {
            data_dir: dir.path().to_path_buf(),
            retention_days: 0,
            ..Default::default()
        };
        // A hub for its store and metrics; its writer stays idle (readings are committed
        // directly below, and the batches handed to the fan-out by hand).
        let hub = crate::start(cfg, CancellationToken::new()).await.unwrap();
        let store = hub.store().clone();
        commit(&store, 1, 3);
        let fanout = Fanout::new(FanoutConfig::default());
        let live_hub = LiveFeed::new(fanout.clone(), store.clone());
        let filters = vec![TopicFilter::parse("sensors/#").unwrap()];
        let mut live = live_hub.watch(filters.clone(), None).await.unwrap();
        assert_eq!(live.cursor(), 3);

        // Room for one batch: the fan-out falls behind as soon as two wait.
        let (tx, rx) = broadcast::channel(1);
        let (_presence_tx, presence_rx) = broadcast::channel(1);
        let failing = Arc::new(AtomicBool::new(true));
        let log = FlakyLog {
            store: store.clone(),
            failing: failing.clone(),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_fanout_from(
            fanout.clone(),
            log,
            rx,
            presence_rx,
            stop.clone(),
        ));
        // Let it read the last seq (3) before anything else is committed.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }

        // Readings 4, 5 and 6 are committed; the fan-out misses 4 and 5 and cannot read them
        // back.
        for batch in commit(&store, 4, 6) {
            tx.send(batch).unwrap();
        }
        let gap = next(&mut live).await;
        let WatchItem::Gap { resume_after, .. } = gap else {
            panic!("expected a gap, got {gap:?}");
        };
        assert_eq!(
            gap,
            WatchItem::Gap {
                resume_after: 3,
                dropped: 0
            }
        );
        assert_eq!(seq(&next(&mut live).await), 6);
        let stats = fanout.stats();
        assert_eq!(stats.catchup_failures.load(Ordering::Relaxed), 1);
        assert_eq!(stats.gaps.load(Ordering::Relaxed), 1);
        let metrics = hub
            .metrics()
            .with_live(fanout.clone(), Arc::default())
            .render();
        assert!(
            metrics
                .lines()
                .any(|l| l == "edgewatch_live_catchup_failures_total 1"),
            "{metrics}"
        );

        // Live delivery goes on after the hole.
        for batch in commit(&store, 7, 7) {
            tx.send(batch).unwrap();
        }
        assert_eq!(seq(&next(&mut live).await), 7);

        // The store answers again: resuming from the gap's cursor loses nothing.
        failing.store(false, Ordering::SeqCst);
        let mut resumed = live_hub.watch(filters, Some(resume_after)).await.unwrap();
        let mut replayed = Vec::new();
        while let Some(item) = resumed.try_next().await {
            replayed.push(seq(&item));
        }
        assert_eq!(replayed, [4, 5, 6, 7]);

        // And a later catch-up from the log works again, with no further gap.
        for batch in commit(&store, 8, 10) {
            tx.send(batch).unwrap();
        }
        for want in 8..=10 {
            assert_eq!(seq(&next(&mut live).await), want);
        }
        assert_eq!(stats.catchup_failures.load(Ordering::Relaxed), 1);
        assert_eq!(stats.gaps.load(Ordering::Relaxed), 1);
        stop.cancel();
        task.await.unwrap();
        hub.shutdown().await.unwrap();
    }

    /// A store failure while a watch replays after its cursor reaches the client as a gap at
    /// the last seq replayed (not as a silent jump to the live events), and is counted.
    #[tokio::test]
    async fn failed_replay_sends_a_gap_to_resume_from() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &crate::store::StoreOptions::default()).unwrap();
        commit(&store, 1, 5);
        let fanout = Fanout::new(FanoutConfig::default());
        let failing = Arc::new(AtomicBool::new(false));
        let log = FlakyLog {
            store: store.clone(),
            failing: failing.clone(),
        };
        let live_hub = LiveFeed::new(fanout.clone(), log);
        let filters = vec![TopicFilter::parse("sensors/#").unwrap()];
        let mut w = live_hub.watch(filters.clone(), Some(2)).await.unwrap();

        failing.store(true, Ordering::SeqCst);
        let gap = WatchItem::Gap {
            resume_after: 2,
            dropped: 0,
        };
        assert_eq!(w.try_next().await, Some(gap));
        assert_eq!(fanout.stats().catchup_failures.load(Ordering::Relaxed), 1);
        // Live events in the hole (5, still on its way from the fan-out when the watch opened)
        // are left to the resume; later ones (6) are delivered.
        let in_hole = store.log_after(4, 1).unwrap();
        let later = commit(&store, 6, 6);
        let events: Vec<_> = in_hole
            .iter()
            .chain(later[0].iter())
            .filter_map(|r| reading_event(r, fanout.stats()))
            .collect();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [5, 6]);
        fanout.publish(&events);
        assert_eq!(seq(&next(&mut w).await), 6);
        assert_eq!(w.try_next().await, None);

        failing.store(false, Ordering::SeqCst);
        let mut resumed = live_hub.watch(filters, Some(2)).await.unwrap();
        let mut replayed = Vec::new();
        while let Some(item) = resumed.try_next().await {
            replayed.push(seq(&item));
        }
        assert_eq!(replayed, [3, 4, 5, 6]);
    }
}
