//! Live fan-out: every stored reading goes to the subscribers whose topic filters match it.
//!
//! One task feeds [`Fanout::publish`] with committed events in `seq` order. Matching uses a
//! [`FilterIndex`] (a trie over filter levels), so its cost depends on the topic and on the
//! number of matching subscribers, not on the number of subscribers.
//!
//! # Bounded queues and slow consumers
//! Each subscription has a queue of at most `queue_capacity` events. Publishing never waits:
//! a slow consumer is degraded, and never slows the writer or other subscribers.
//!
//! 1. **Conflation.** When a queue is full, further events are kept as the latest one per
//!    topic (at most `conflate_max_topics` topics); a superseded event is dropped and counted.
//! 2. **Gap.** When the consumer has drained its queue, it receives a [`Delivery::Gap`]
//!    carrying `resume_after`, the last `seq` it received before the hole (a client replays the
//!    hole from the log with that cursor), and the number of events dropped; then the
//!    conflated latest values, in `seq` order.
//! 3. **Holes.** When the fan-out cannot read back from the log what it missed (a store
//!    error while catching up), [`Fanout::open_hole`] puts every subscription in the same
//!    state as step 1: each gets the same [`Delivery::Gap`], with the last seq it received in
//!    order as `resume_after`, so no hole is ever silent.
//! 4. **Disconnection.** A subscription that stays in conflation longer than `lag_timeout`, or
//!    whose conflation map would exceed `conflate_max_topics`, is closed
//!    ([`Delivery::Closed`]) and its transport disconnects the client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use edgewatch_protocol::{FilterIndex, TopicFilter};
use serde::{Deserialize, Serialize};

pub use super::event::{Delivery, EventKind, LiveEvent};
use super::queue::{PushOutcome, Queue};
use crate::histogram::{Histogram, LATENCY_BUCKETS};

/// Fan-out settings (`[live.fanout]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FanoutConfig {
    /// Events queued per subscription before conflation starts.
    pub queue_capacity: usize,
    /// Distinct topics a conflating subscription may hold before it is disconnected.
    pub conflate_max_topics: usize,
    /// Seconds a subscription may stay in conflation (sustained lag) before it is closed.
    pub lag_timeout_secs: u64,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 4096,
            conflate_max_topics: 4096,
            lag_timeout_secs: 30,
        }
    }
}

/// Counters and stage timings, for metrics.
#[derive(Debug)]
pub struct FanoutStats {
    /// Events handed to subscriber queues.
    pub delivered: AtomicU64,
    /// Events dropped by conflation.
    pub dropped: AtomicU64,
    /// Subscriptions closed for lagging.
    pub lag_disconnects: AtomicU64,
    /// Gap notices sent.
    pub gaps: AtomicU64,
    /// Catch-ups from the log that failed (the fan-out re-reading what it missed, or a watch
    /// replaying after its cursor): each sent the subscribers concerned a gap.
    pub catchup_failures: AtomicU64,
    /// Readings that could not be serialized into a live event, so were not sent (logged).
    pub unencodable: AtomicU64,
    /// Seconds from the broker link taking a reading to the fan-out receiving it stored
    /// (ingest, writer queue, apply, broadcast; the flush to disk runs beside this path, see
    /// the writer); first reading of each batch.
    pub link_to_fanout: Histogram,
    /// Seconds one [`Fanout::publish`] call takes (matching and queueing a batch).
    pub publish_seconds: Histogram,
    /// Seconds from the fan-out making an event to an SSE stream handing it to the HTTP
    /// connection.
    pub sse_write: Histogram,
    /// Seconds from the fan-out making an event to a WebSocket writing it to its socket.
    pub ws_write: Histogram,
}

impl Default for FanoutStats {
    fn default() -> Self {
        Self {
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            lag_disconnects: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            catchup_failures: AtomicU64::new(0),
            unencodable: AtomicU64::new(0),
            link_to_fanout: Histogram::new(LATENCY_BUCKETS),
            publish_seconds: Histogram::new(LATENCY_BUCKETS),
            sse_write: Histogram::new(LATENCY_BUCKETS),
            ws_write: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

/// Where a live event's delivery is timed (see [`FanoutStats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Handed to the SSE response body.
    SseWrite,
    /// Written to the WebSocket.
    WsWrite,
}

impl FanoutStats {
    /// Records the time since `ev` was made, for readings (replayed and status events are not
    /// live readings).
    pub fn observe_written(&self, stage: Stage, ev: &LiveEvent) {
        if ev.kind != EventKind::Reading {
            return;
        }
        let h = match stage {
            Stage::SseWrite => &self.sse_write,
            Stage::WsWrite => &self.ws_write,
        };
        h.observe(ev.made_at.elapsed().as_secs_f64());
    }
}

/// Queue depths over all subscriptions, at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Open subscriptions.
    pub subscriptions: usize,
    /// Subscriptions conflating (lagging).
    pub conflating: usize,
    /// Events waiting in the deepest queue.
    pub max_depth: usize,
    /// Events waiting over all queues.
    pub total_depth: usize,
}

type SubId = u64;

/// The fan-out registry. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Fanout {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    cfg: FanoutConfig,
    index: RwLock<FilterIndex<SubId>>,
    queues: RwLock<HashMap<SubId, Arc<Queue>>>,
    next_id: AtomicU64,
    stats: Arc<FanoutStats>,
}

impl Fanout {
    /// An empty registry.
    pub fn new(cfg: FanoutConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                cfg,
                index: RwLock::new(FilterIndex::new()),
                queues: RwLock::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                stats: Arc::default(),
            }),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &FanoutStats {
        &self.shared.stats
    }

    /// Counters, shared (for transports that time their writes).
    pub fn stats_arc(&self) -> Arc<FanoutStats> {
        self.shared.stats.clone()
    }

    /// Number of open subscriptions.
    pub fn subscriptions(&self) -> usize {
        self.shared.queues.read().map(|q| q.len()).unwrap_or(0)
    }

    /// Queue depths right now (per-subscriber lag, for metrics). Locks each queue briefly.
    pub fn queue_stats(&self) -> QueueStats {
        let mut out = QueueStats::default();
        let Ok(queues) = self.shared.queues.read() else {
            return out;
        };
        for q in queues.values() {
            let Some((depth, conflating)) = q.depth() else {
                continue;
            };
            out.subscriptions += 1;
            out.total_depth += depth;
            out.max_depth = out.max_depth.max(depth);
            if conflating {
                out.conflating += 1;
            }
        }
        out
    }

    /// Registers a subscription to `filters`. Events published after this call that match any
    /// of them are queued for it (once per event, however many of its filters match).
    pub fn subscribe(&self, filters: Vec<TopicFilter>) -> Subscription {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(Queue::new(self.shared.cfg.queue_capacity));
        if let Ok(mut queues) = self.shared.queues.write() {
            queues.insert(id, queue.clone());
        }
        if let Ok(mut index) = self.shared.index.write() {
            for f in &filters {
                index.insert(f, id);
            }
        }
        Subscription {
            id,
            filters,
            queue,
            shared: self.shared.clone(),
        }
    }

    /// Queues each event for every matching subscription. Never waits on a consumer.
    pub fn publish(&self, events: &[Arc<LiveEvent>]) {
        let Ok(index) = self.shared.index.read() else {
            return;
        };
        let Ok(queues) = self.shared.queues.read() else {
            return;
        };
        let now = Instant::now();
        let cfg = &self.shared.cfg;
        let _timer = PublishTimer(now, &self.shared.stats.publish_seconds);
        let lag_timeout = Duration::from_secs(cfg.lag_timeout_secs);
        let mut seen: Vec<SubId> = Vec::new();
        for ev in events {
            seen.clear();
            index.for_each_match(&ev.topic, |id| seen.push(*id));
            if seen.len() > 1 {
                seen.sort_unstable();
                seen.dedup();
            }
            for id in &seen {
                if let Some(q) = queues.get(id) {
                    match q.push(ev, now, cfg.conflate_max_topics, lag_timeout) {
                        PushOutcome::Queued => {
                            self.shared.stats.delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        PushOutcome::Conflated { superseded } => {
                            if superseded {
                                self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        PushOutcome::ClosedNow => {
                            self.shared
                                .stats
                                .lag_disconnects
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        PushOutcome::Closed => {}
                    }
                }
            }
        }
    }
}

impl Fanout {
    /// Marks a hole in the sequence for every open subscription: events were committed that
    /// the fan-out cannot deliver (reading them back from the log failed). Each subscription
    /// is sent a [`Delivery::Gap`] once it has drained what it holds, with the last seq it
    /// received in order as the resume cursor, exactly as a slow consumer is (until then new
    /// events are conflated). Returns how many subscriptions were marked.
    pub fn open_hole(&self) -> usize {
        let Ok(queues) = self.shared.queues.read() else {
            return 0;
        };
        let now = Instant::now();
        queues.values().filter(|q| q.open_hole(now)).count()
    }
}

/// One subscriber's registration. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    id: SubId,
    filters: Vec<TopicFilter>,
    queue: Arc<Queue>,
    shared: Arc<Shared>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut index) = self.shared.index.write() {
            for f in &self.filters {
                index.remove(f, &self.id);
            }
        }
        if let Ok(mut queues) = self.shared.queues.write() {
            queues.remove(&self.id);
        }
    }
}

impl Subscription {
    /// The filters this subscription matches.
    pub fn filters(&self) -> &[TopicFilter] {
        &self.filters
    }

    /// The counters of the fan-out this subscription belongs to.
    pub fn stats(&self) -> &FanoutStats {
        &self.shared.stats
    }

    /// Waits for the next delivery. After [`Delivery::Closed`] it keeps returning `Closed`.
    pub async fn next(&mut self) -> Delivery {
        loop {
            let queue = self.queue.clone();
            let notified = queue.notify.notified();
            if let Some(d) = self.try_next() {
                return d;
            }
            notified.await;
        }
    }

    /// The next delivery if one is ready.
    pub fn try_next(&mut self) -> Option<Delivery> {
        let d = self.queue.pop();
        if matches!(d, Some(Delivery::Gap { .. })) {
            self.shared.stats.gaps.fetch_add(1, Ordering::Relaxed);
        }
        d
    }

    /// Moves up to `max` ready deliveries into `out` without waiting; returns how many.
    pub fn drain_ready(&mut self, out: &mut Vec<Delivery>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            match self.try_next() {
                Some(d) => {
                    let closed = d == Delivery::Closed;
                    out.push(d);
                    n += 1;
                    if closed {
                        break;
                    }
                }
                None => break,
            }
        }
        n
    }
}

/// Observes the time of one `publish` call when dropped.
struct PublishTimer<'a>(Instant, &'a Histogram);

impl Drop for PublishTimer<'_> {
    fn drop(&mut self) {
        self.1.observe(self.0.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, topic: &str) -> Arc<LiveEvent> {
        Arc::new(LiveEvent::new(
            seq,
            EventKind::Reading,
            topic.into(),
            format!("{{\"seq\":{seq}}}").into(),
        ))
    }

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s).unwrap()
    }

    fn seq_of(d: Delivery) -> u64 {
        match d {
            Delivery::Event(e) => e.seq,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn delivers_matching_events_in_order_once() {
        let fo = Fanout::new(FanoutConfig::default());
        let mut a = fo.subscribe(vec![f("sensors/+/temperature"), f("sensors/#")]);
        let mut b = fo.subscribe(vec![f("sensors/d2/#")]);
        fo.publish(&[
            ev(1, "sensors/d1/temperature"),
            ev(2, "sensors/d2/humidity"),
        ]);
        assert_eq!(seq_of(a.next().await), 1);
        assert_eq!(seq_of(a.next().await), 2);
        assert!(
            a.try_next().is_none(),
            "no duplicate for overlapping filters"
        );
        assert_eq!(seq_of(b.next().await), 2);
        assert!(b.try_next().is_none());
        drop(a);
        assert_eq!(fo.subscriptions(), 1);
    }

    #[tokio::test]
    async fn slow_consumer_is_conflated_then_told_about_the_gap() {
        let fo = Fanout::new(FanoutConfig {
            queue_capacity: 3,
            ..Default::default()
        });
        let mut slow = fo.subscribe(vec![f("sensors/#")]);
        let mut fast = fo.subscribe(vec![f("sensors/#")]);
        let events: Vec<_> = (1..=10)
            .map(|i| {
                ev(
                    i,
                    if i % 2 == 0 {
                        "sensors/a/t"
                    } else {
                        "sensors/b/t"
                    },
                )
            })
            .collect();
        for e in &events {
            fo.publish(std::slice::from_ref(e));
            // The fast one keeps up.
            assert_eq!(seq_of(fast.next().await), e.seq);
        }
        assert_eq!(seq_of(slow.next().await), 1);
        assert_eq!(seq_of(slow.next().await), 2);
        assert_eq!(seq_of(slow.next().await), 3);
        assert_eq!(
            slow.next().await,
            Delivery::Gap {
                resume_after: 3,
                dropped: 5
            }
        );
        // Latest per topic, in seq order: b=9, a=10.
        assert_eq!(seq_of(slow.next().await), 9);
        assert_eq!(seq_of(slow.next().await), 10);
        assert!(slow.try_next().is_none());
        // Back to normal.
        fo.publish(&[ev(11, "sensors/a/t")]);
        assert_eq!(seq_of(slow.next().await), 11);
        assert_eq!(fo.stats().dropped.load(Ordering::Relaxed), 5);
    }

    #[tokio::test]
    async fn sustained_lag_closes_the_subscription() {
        let fo = Fanout::new(FanoutConfig {
            queue_capacity: 2,
            conflate_max_topics: 3,
            lag_timeout_secs: 3600,
        });
        let mut sub = fo.subscribe(vec![f("#")]);
        for i in 1..=10 {
            fo.publish(&[ev(i, &format!("t/{i}"))]);
        }
        assert_eq!(sub.next().await, Delivery::Closed);
        assert_eq!(sub.next().await, Delivery::Closed);
        assert_eq!(fo.stats().lag_disconnects.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_hole_reaches_every_subscriber_as_a_gap_after_what_it_holds() {
        let fo = Fanout::new(FanoutConfig::default());
        let mut idle = fo.subscribe(vec![f("sensors/#")]);
        let mut busy = fo.subscribe(vec![f("sensors/#")]);
        fo.publish(&[ev(1, "sensors/a/t"), ev(2, "sensors/a/t")]);
        assert_eq!(seq_of(idle.next().await), 1);
        assert_eq!(seq_of(idle.next().await), 2);
        assert_eq!(fo.open_hole(), 2);
        fo.publish(&[ev(5, "sensors/a/t")]);
        let gap = Delivery::Gap {
            resume_after: 2,
            dropped: 0,
        };
        assert_eq!(idle.next().await, gap);
        assert_eq!(seq_of(idle.next().await), 5);
        // What was queued before the hole comes first.
        assert_eq!(seq_of(busy.next().await), 1);
        assert_eq!(seq_of(busy.next().await), 2);
        assert_eq!(busy.next().await, gap);
        assert_eq!(seq_of(busy.next().await), 5);
        assert!(busy.try_next().is_none());
        assert_eq!(fo.stats().gaps.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn many_subscribers_with_distinct_filters() {
        let fo = Fanout::new(FanoutConfig::default());
        let mut subs: Vec<_> = (0..10_000)
            .map(|i| fo.subscribe(vec![f(&format!("sensors/d{i}/#"))]))
            .collect();
        fo.publish(&[ev(1, "sensors/d1234/temperature")]);
        assert_eq!(seq_of(subs[1234].next().await), 1);
        assert_eq!(fo.stats().delivered.load(Ordering::Relaxed), 1);
        assert!(subs[1233].try_next().is_none());
    }
}
