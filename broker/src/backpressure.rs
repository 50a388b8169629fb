//! Backpressure from the bridge to the devices.
//!
//! rumqttd acknowledges a QoS 1 publish as soon as its router has it, whatever its
//! subscribers do, and keeps what a slow subscriber has not read in a bounded in-memory log
//! whose oldest segments it drops when full. If the bridge (ingest and the writer) falls
//! behind for long, acknowledged readings would be lost that way.
//!
//! [`IngestGate`] is also the bridge's feed: our codec wrapper hands it every publish a client
//! sends as rumqttd receives it, and the last will of a connection that ends without a
//! DISCONNECT (rumqttd publishes it then), and in-process publishers hand it theirs
//! ([`IngestGate::forward`], a bounded channel the bridge reads as an [`InboundStream`]). The bridge does not subscribe
//! in rumqttd's router: the router keeps a per-filter in-memory log of `max_segment_size` x
//! `max_segment_count` whether its readers have read it or not, and a `#` log for the bridge
//! held about 190 MiB at 10,000 readings/s (BENCHMARKS.md). The feed holds only what the
//! bridge has not taken yet. The gate counts the publishes forwarded against those the bridge
//! took; the difference is the backlog.
//!
//! * While the backlog is above `ingest_backlog_max`, every PUBACK the broker writes waits
//!   (on the broker's own threads, whose other tasks move to another worker meanwhile), for as
//!   long as it takes: QoS 1 devices run into their in-flight window and stop sending until the
//!   bridge catches up. A PUBACK is never released because time passed: that is what lost
//!   acknowledged readings when the writer stalled (a slow or full disk). If one waits longer
//!   than `ack_stall_max_secs`, its connection is closed instead: the device was not told the
//!   reading arrived, so it sends it again when it reconnects.
//! * QoS 0 publishes are not acknowledged, so they are slowed at the socket, as Mosquitto
//!   does: while the backlog is above half the limit, the codec stops reading the connection
//!   a QoS 0 publish came on (the publish waits, on the broker's thread, the way a held PUBACK
//!   does) until the bridge brings the backlog back to half the limit. The device's TCP
//!   window fills and its writes block: nothing is dropped. Counted in
//!   `edgewatch_mqtt_qos0_paused_total`. The half keeps a QoS 0 flood from ever holding
//!   anyone's acknowledgements. Only a publish that waited `ack_stall_max_secs` in vain (a
//!   stalled writer) is dropped, "at most once" as MQTT allows, counted in
//!   `edgewatch_mqtt_qos0_shed_total` and logged. (Before the bridge had its own feed,
//!   pausing reads stalled it: it read through the router.)
//! * QoS 1 devices whose acknowledgements are held still have their in-flight window of
//!   publishes to send; with many devices that could overflow the router's log too. So a QoS
//!   1/2 publish that arrives while the backlog is at twice the limit closes its connection
//!   before the router sees it (unacknowledged: the device resends it after reconnecting),
//!   counted in `edgewatch_mqtt_backlog_disconnects_total`. The router's log for the bridge
//!   (`max_segment_size` x `max_segment_count`) must hold twice the limit of publishes.
//!
//! The feed's channel holds twice the limit plus [`IN_PROCESS_SLACK`] publishes, so device
//! publishes (refused at twice the limit) always fit. Should it still be full (in-process
//! publishers, which are not refused, in a flood), the publish goes on to MQTT subscribers
//! but not to the bridge: counted as skipped (`edgewatch_mqtt_ingest_skipped_total`) and
//! logged, never silently.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::link::{InboundPublish, InboundStream};

/// Room in the feed beyond twice the backlog limit, for in-process publishers (serial
/// readers, WebSocket clients' publishes), which the gate does not refuse.
pub const IN_PROCESS_SLACK: usize = 4096;

/// What becomes of a publish a device sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// It goes to the router.
    Admitted,
    /// A QoS 0 publish that waited the stall bound for room in vain, dropped.
    Shed,
    /// A QoS 1/2 publish: its connection is closed, unacknowledged.
    Refused,
}

/// Shared counters between the broker's codec and the bridge's link.
#[derive(Debug)]
pub struct IngestGate {
    admitted: AtomicU64,
    drained: AtomicU64,
    max_backlog: u64,
    /// PUBACKs that had to wait, for metrics and tests.
    held_acks: AtomicU64,
    /// Publishes admitted that never reached the link (dropped by the broker under overload).
    skipped: AtomicU64,
    /// QoS 0 publishes whose connection's reads paused because the backlog was above half
    /// the limit.
    paused_reads: AtomicU64,
    /// QoS 0 publishes dropped because they waited `stall_max` for room in vain.
    shed: AtomicU64,
    /// Connections closed because a PUBACK waited longer than `stall_max`.
    stall_disconnects: AtomicU64,
    /// QoS 1/2 publishes refused (connection closed) at twice the backlog limit.
    refused: AtomicU64,
    /// The longest one PUBACK waits before its connection is closed instead.
    stall_max: Duration,
    /// Acknowledgements waiting for the backlog to be back under the limit.
    acks: Waiters,
    /// Connections whose reads wait for the backlog to be back under half the limit.
    reads: Waiters,
    /// The bridge's feed, from the moment it takes it ([`IngestGate::take_feed`]).
    feed: OnceLock<mpsc::Sender<InboundPublish>>,
    /// Set when the broker stops: the connections it closes publish no will.
    stopping: std::sync::atomic::AtomicBool,
}

impl IngestGate {
    /// A gate that holds acknowledgements while more than `max_backlog` publishes wait, each
    /// at most `stall_max` (then the connection is closed instead).
    pub fn new(max_backlog: u64, stall_max: Duration) -> Self {
        Self {
            paused_reads: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            stall_disconnects: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            stall_max,
            admitted: AtomicU64::new(0),
            drained: AtomicU64::new(0),
            max_backlog: max_backlog.max(1),
            held_acks: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            acks: Waiters::default(),
            reads: Waiters::default(),
            feed: OnceLock::new(),
            stopping: Default::default(),
        }
    }

    /// The broker is stopping: rumqttd publishes no will for the connections this closes.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Hands the last will of a connection that ended without a DISCONNECT to the bridge, as
    /// rumqttd publishes it; none while the broker stops.
    pub(crate) fn forward_will(&self, topic: &[u8], payload: &Bytes) {
        if !self.stopping.load(Ordering::SeqCst) {
            self.forward(topic, payload);
        }
    }

    /// Opens the bridge's feed: from now on every publish forwarded goes to the stream
    /// returned, and counts in the backlog until the stream yields it. `None` if it was
    /// taken before (there is one bridge).
    pub(crate) fn take_feed(self: &std::sync::Arc<Self>) -> Option<InboundStream> {
        let capacity = usize::try_from(self.max_backlog.saturating_mul(2))
            .unwrap_or(usize::MAX / 2)
            .saturating_add(IN_PROCESS_SLACK);
        let (tx, rx) = mpsc::channel(capacity);
        self.feed.set(tx).ok()?;
        Some(InboundStream::from_feed(rx, self.clone()))
    }

    /// Hands a publish to the bridge, if it took its feed and the topic is one the bridge
    /// receives: every topic but those starting with `$` (what `#` matches; `$SYS` values are
    /// published by the broker itself, not through here). See the module doc for a full feed.
    pub(crate) fn forward(&self, topic: &[u8], payload: &Bytes) {
        let Some(feed) = self.feed.get() else {
            return;
        };
        if topic.first().is_none_or(|b| *b == b'$') {
            return;
        }
        let Ok(topic) = std::str::from_utf8(topic) else {
            return; // rumqttd's decoder refuses non-UTF-8 topics before we see them
        };
        self.admitted.fetch_add(1, Ordering::SeqCst);
        let publish = InboundPublish {
            topic: topic.to_owned(),
            payload: payload.clone(),
            received_at_ms: crate::link::now_ms(),
        };
        if let Err(err) = feed.try_send(publish) {
            let full = matches!(err, mpsc::error::TrySendError::Full(_));
            self.skipped_by_broker(1);
            let n = self.skipped();
            if full && (n.is_power_of_two() || n.is_multiple_of(10_000)) {
                tracing::warn!(skipped = n, "the bridge's feed is full: a publish reached MQTT subscribers but not the bridge (in-process publishers faster than the store)");
            }
        }
    }

    /// Decides a publish a device sent (see the module doc): a QoS 0 publish waits while
    /// the backlog is above half the limit (its connection reads nothing meanwhile) and is
    /// shed only if that lasts the stall bound; a QoS 1/2 publish closes its connection while
    /// the backlog is at twice the limit (the device resends after reconnecting); anything
    /// else is admitted (and counted once the codec forwards it, [`IngestGate::forward`]).
    pub(crate) fn admit_publish(&self, qos: u8) -> Admission {
        let backlog = self.backlog();
        let half = self.max_backlog / 2;
        if qos == 0 && backlog > half {
            self.paused_reads.fetch_add(1, Ordering::Relaxed);
            if self.wait(&self.reads, half) {
                return Admission::Admitted;
            }
            self.shed.fetch_add(1, Ordering::Relaxed);
            return Admission::Shed;
        }
        if qos > 0 && backlog >= self.max_backlog.saturating_mul(2) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Admission::Refused;
        }
        Admission::Admitted
    }

    /// QoS 0 publishes whose connection's reads paused because the bridge was behind.
    pub fn paused_reads(&self) -> u64 {
        self.paused_reads.load(Ordering::Relaxed)
    }

    /// QoS 1/2 publishes whose connection was closed because the backlog was at twice the
    /// limit.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// QoS 0 publishes dropped because the bridge was stalled for the stall bound.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// Connections closed because a PUBACK waited longer than the stall bound.
    pub fn stall_disconnects(&self) -> u64 {
        self.stall_disconnects.load(Ordering::Relaxed)
    }

    /// Counts a publish the bridge took from its link.
    pub(crate) fn drained(&self) {
        self.drained_many(1);
    }

    /// Counts `n` publishes the bridge took from its link.
    pub(crate) fn drained_many(&self, n: u64) {
        self.drained.fetch_add(n, Ordering::SeqCst);
        self.wake_if_room();
    }

    /// Publishes accepted and not yet taken by the bridge.
    pub fn backlog(&self) -> u64 {
        self.admitted
            .load(Ordering::SeqCst)
            .saturating_sub(self.drained.load(Ordering::SeqCst))
    }

    /// Acknowledgements that had to wait so far.
    pub fn held_acks(&self) -> u64 {
        self.held_acks.load(Ordering::Relaxed)
    }

    /// Publishes the broker accepted that never reached the bridge's feed.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// `n` publishes were admitted but will never be drained (the feed was full): they leave
    /// the backlog here.
    pub(crate) fn skipped_by_broker(&self, n: u64) {
        self.skipped.fetch_add(n, Ordering::Relaxed);
        self.drained_many(n);
    }

    /// Blocks the calling (broker) thread while the backlog is above the limit. Called right
    /// before a PUBACK is written; `false` when it waited the stall bound in vain and the
    /// connection must be closed instead.
    pub(crate) fn wait_for_room(&self) -> bool {
        if self.backlog() <= self.max_backlog {
            return true;
        }
        self.held_acks.fetch_add(1, Ordering::Relaxed);
        let room = self.wait(&self.acks, self.max_backlog);
        if !room {
            self.stall_disconnects.fetch_add(1, Ordering::Relaxed);
        }
        room
    }

    /// Wakes waiting acknowledgements and reads whose threshold the backlog is back under.
    /// Cheap when nobody waits (two atomic loads); called by the link after it took publishes.
    fn wake_if_room(&self) {
        let backlog = self.backlog();
        self.acks.wake_if(backlog, self.max_backlog);
        self.reads.wake_if(backlog, self.max_backlog / 2);
    }

    /// Waits in `waiters` until the backlog is at most `threshold`, at most `stall_max`;
    /// whether there is room.
    fn wait(&self, waiters: &Waiters, threshold: u64) -> bool {
        let wait = || {
            let started = Instant::now();
            waiters.waiting.fetch_add(1, Ordering::SeqCst);
            let mut guard = waiters.room.0.lock().unwrap_or_else(|e| e.into_inner());
            // Decided once, when the loop ends: the backlog may rise again right after.
            let room = loop {
                if self.backlog() <= threshold {
                    break true;
                }
                let Some(left) = self.stall_max.checked_sub(started.elapsed()) else {
                    break false;
                };
                // No wake-up is missed: the waiter registers, then checks the backlog under the
                // lock; the link counts, then checks `waiting` and notifies under the lock.
                guard = match waiters.room.1.wait_timeout(guard, left) {
                    Ok((g, _)) => g,
                    Err(e) => e.into_inner().0,
                };
            };
            drop(guard);
            let others = waiters.waiting.fetch_sub(1, Ordering::SeqCst) - 1;
            if others > 0 && self.backlog() <= threshold {
                waiters.room.1.notify_one();
            }
            room
        };
        // On the broker's multi-threaded runtime, hand this worker's other tasks (subscribers,
        // other connections) to another thread while this connection waits; elsewhere (unit
        // tests) just wait.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }
}

/// Broker threads waiting for the backlog to fall to a threshold. The link wakes one when it
/// gets there; each woken waiter wakes the next if it still finds room (a chain): waking all
/// at once made a thousand threads fight over the lock (two thirds of the hub's CPU in perf).
#[derive(Debug, Default)]
struct Waiters {
    /// Threads waiting right now, so that the link only notifies when someone waits.
    waiting: AtomicU64,
    room: (Mutex<()>, Condvar),
}

impl Waiters {
    fn wake_if(&self, backlog: u64, threshold: u64) {
        if self.waiting.load(Ordering::SeqCst) > 0 && backlog <= threshold {
            // Taking the lock orders this wake-up after a waiter's check-then-wait.
            drop(self.room.0.lock());
            self.room.1.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A gate whose feed is open (kept in the returned stream), as the hub's is.
    fn gate_with_feed(max_backlog: u64, stall_max: Duration) -> (Arc<IngestGate>, InboundStream) {
        let gate = Arc::new(IngestGate::new(max_backlog, stall_max));
        let feed = gate.take_feed().expect("first feed");
        (gate, feed)
    }

    fn forward(gate: &IngestGate, topic: &[u8]) {
        gate.forward(topic, &Bytes::from_static(b"21.5"));
    }

    #[test]
    fn counts_only_what_the_bridge_receives_and_waits_while_behind() {
        let stall_max = Duration::from_millis(300);
        let (gate, _feed) = gate_with_feed(2, stall_max);
        for _ in 0..2 {
            forward(&gate, b"sensors/d1/t");
        }
        forward(&gate, b"tele/plug-1/SENSOR"); // the bridge takes every topic (`#`)...
        forward(&gate, b"$SYS/broker/uptime"); // ...but those starting with `$`
        assert_eq!(gate.backlog(), 3);
        assert!(gate.take_feed().is_none(), "one bridge, one feed");
        let started = Instant::now();
        // Over the limit and nobody drains: waits the stall bound, then says "disconnect"
        // rather than letting the acknowledgement go.
        assert!(!gate.wait_for_room());
        assert!(started.elapsed() >= stall_max);
        assert_eq!((gate.held_acks(), gate.stall_disconnects()), (1, 1));
        gate.drained();
        let started = Instant::now();
        assert!(gate.wait_for_room()); // at the limit: no wait
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn qos0_waits_above_half_the_limit_and_qos1_is_refused_at_twice_the_limit() {
        let stall_max = Duration::from_millis(200);
        let (gate, _feed) = gate_with_feed(4, stall_max);
        let admit = |qos| {
            let admission = gate.admit_publish(qos);
            if admission == Admission::Admitted {
                forward(&gate, b"sensors/d1/t");
            }
            admission
        };
        for _ in 0..2 {
            assert_eq!(admit(0), Admission::Admitted);
        }
        assert_eq!(admit(0), Admission::Admitted, "at half");
        // Above half and nobody drains: the publish waits the stall bound, then is shed.
        let started = Instant::now();
        assert_eq!(admit(0), Admission::Shed, "stalled: shed");
        assert!(started.elapsed() >= stall_max);
        assert_eq!((gate.paused_reads(), gate.shed()), (1, 1));
        for _ in 0..5 {
            assert_eq!(admit(1), Admission::Admitted, "QoS 1");
        }
        assert_eq!(gate.backlog(), 8);
        assert_eq!(admit(1), Admission::Refused, "at twice the limit");
        assert_eq!(gate.refused(), 1);
        gate.drained_many(6);
        assert_eq!(admit(0), Admission::Admitted);
    }

    #[test]
    fn a_paused_qos0_read_goes_on_as_soon_as_the_backlog_is_back_at_half() {
        let (gate, _feed) = gate_with_feed(4, Duration::from_secs(30));
        for _ in 0..4 {
            forward(&gate, b"sensors/d1/t");
        }
        let reader = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                (gate.admit_publish(0), started.elapsed())
            })
        };
        while gate.reads.waiting.load(Ordering::SeqCst) < 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        gate.drained(); // backlog 3: above half, still paused
        std::thread::sleep(Duration::from_millis(50));
        assert!(!reader.is_finished(), "went on above half the limit");
        gate.drained(); // backlog 2: half
        let (admission, waited) = reader.join().unwrap();
        assert_eq!(admission, Admission::Admitted);
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        assert!(waited < Duration::from_secs(10), "woken late: {waited:?}");
        assert_eq!((gate.paused_reads(), gate.shed()), (1, 0));
    }

    #[test]
    fn a_held_ack_is_released_as_soon_as_the_link_catches_up() {
        let (gate, _feed) = gate_with_feed(2, Duration::from_secs(30));
        for _ in 0..4 {
            forward(&gate, b"sensors/d1/t");
        }
        // Several held acknowledgements: one wake-up from the link releases them all (each
        // woken waiter wakes the next).
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let gate = gate.clone();
                std::thread::spawn(move || {
                    let started = Instant::now();
                    assert!(gate.wait_for_room());
                    started.elapsed()
                })
            })
            .collect();
        while gate.acks.waiting.load(Ordering::SeqCst) < 8 {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        gate.drained_many(2); // backlog 2: at the limit, room again
        for waiter in waiters {
            let waited = waiter.join().unwrap();
            assert!(waited >= Duration::from_millis(50), "{waited:?}");
            assert!(waited < Duration::from_secs(10), "woken late: {waited:?}");
        }
    }

    #[test]
    fn without_a_bridge_nothing_counts_and_a_full_feed_is_counted_as_skipped() {
        let gate = Arc::new(IngestGate::new(1, Duration::from_secs(1)));
        forward(&gate, b"sensors/d1/t"); // no bridge yet: nothing waits for it
        assert_eq!(gate.backlog(), 0);
        let _feed = gate.take_feed().unwrap();
        let room = 2 + IN_PROCESS_SLACK;
        for _ in 0..room + 3 {
            forward(&gate, b"sensors/d1/t");
        }
        assert_eq!(gate.backlog(), room as u64, "what the feed holds");
        assert_eq!(gate.skipped(), 3, "what did not fit");
    }
}
