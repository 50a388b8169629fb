//! Backpressure from the bridge to the devices.
//!
//! rumqttd acknowledges a QoS 1 publish as soon as its router has it, whatever its
//! subscribers do, and keeps what a slow subscriber has not read in a bounded in-memory log
//! whose oldest segments it drops when full. If the bridge (ingest and the writer) falls
//! behind for long, acknowledged readings would be lost that way.
//!
//! [`IngestGate`] counts the publishes that the broker accepted (from devices,
//! seen by our codec wrapper, and from in-process publishers) against those the bridge took
//! from its link. While the difference, the backlog, is above `ingest_backlog_max`, every
//! PUBACK the broker writes waits (up to [`MAX_ACK_WAIT`] each, on the broker's own threads,
//! whose other tasks move to another worker meanwhile),
//! so QoS 1 devices run into their in-flight window and stop sending until the bridge catches
//! up. QoS 0 publishes are not acknowledged and cannot be slowed this way (pausing the
//! connection's reads instead stalled the router in a test: the paused connections stop taking
//! its notifications): under sustained overload they are the ones the broker may drop, as MQTT
//! allows for "at most once". rumqttd then drops the oldest unread publishes of the bridge's
//! link (it logs "Read cursor start jumped"); the link never sees them, and the counters would
//! show a backlog forever, holding every later PUBACK. The link therefore watches the
//! offsets of its commit log: a jump is exactly the publishes dropped, which leave the backlog
//! and are counted as skipped (`edgewatch_mqtt_ingest_skipped_total`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The longest a single PUBACK is held back, so a stalled bridge cannot freeze devices forever.
pub const MAX_ACK_WAIT: Duration = Duration::from_secs(1);

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
    /// Acknowledgements waiting right now; the link wakes them when the backlog is back
    /// under the limit, instead of each polling the counters.
    waiting: AtomicU64,
    room: (Mutex<()>, Condvar),
}

impl IngestGate {
    /// A gate that holds acknowledgements while more than `max_backlog` publishes wait.
    pub fn new(max_backlog: u64) -> Self {
        Self {
            admitted: AtomicU64::new(0),
            drained: AtomicU64::new(0),
            max_backlog: max_backlog.max(1),
            held_acks: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            room: (Mutex::new(()), Condvar::new()),
        }
    }

    /// Counts a publish the broker accepted, if the bridge's link will receive it: the link
    /// subscribes to `#`, which matches every topic but those starting with `$`.
    pub(crate) fn admitted(&self, topic: &[u8]) {
        if topic.first().is_some_and(|b| *b != b'$') {
            self.admitted.fetch_add(1, Ordering::SeqCst);
        }
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

    /// Publishes the broker accepted that never reached the bridge's link.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Called by the link when the broker's cursor jumped over `n` publishes it dropped:
    /// they were admitted and will never be drained, so they leave the backlog here.
    pub(crate) fn skipped_by_broker(&self, n: u64) {
        self.skipped.fetch_add(n, Ordering::Relaxed);
        self.drained_many(n);
    }

    /// Blocks the calling (broker) thread while the backlog is above the limit, at most
    /// [`MAX_ACK_WAIT`]. Called right before a PUBACK is written.
    pub(crate) fn wait_for_room(&self) {
        if self.backlog() <= self.max_backlog {
            return;
        }
        self.held_acks.fetch_add(1, Ordering::Relaxed);
        self.wait();
    }

    /// Wakes waiting acknowledgements if the backlog is back under the limit. Cheap when
    /// nobody waits (one atomic load); called by the link after it took publishes.
    fn wake_if_room(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 && self.backlog() <= self.max_backlog {
            // Taking the lock orders this wake-up after a waiter's check-then-wait. One waiter
            // is woken; it wakes the next when it finds room (a chain): waking all at once made
            // a thousand threads fight over the lock (two thirds of the hub's CPU in perf).
            drop(self.room.0.lock());
            self.room.1.notify_one();
        }
    }

    fn wait(&self) {
        let wait = || {
            let started = Instant::now();
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let mut guard = self.room.0.lock().unwrap_or_else(|e| e.into_inner());
            while self.backlog() > self.max_backlog {
                let Some(left) = MAX_ACK_WAIT.checked_sub(started.elapsed()) else {
                    break;
                };
                // No wake-up is missed: the waiter registers, then checks the backlog under the
                // lock; the link counts, then checks `waiting` and notifies under the lock.
                guard = match self.room.1.wait_timeout(guard, left) {
                    Ok((g, _)) => g,
                    Err(e) => e.into_inner().0,
                };
            }
            drop(guard);
            let others = self.waiting.fetch_sub(1, Ordering::SeqCst) - 1;
            if others > 0 && self.backlog() <= self.max_backlog {
                self.room.1.notify_one();
            }
        };
        // On the broker's multi-threaded runtime, hand this worker's other tasks (subscribers,
        // other connections) to another thread while this connection waits; elsewhere (unit
        // tests) just wait.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait);
            }
            _ => wait(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_what_the_bridge_receives_and_waits_while_behind() {
        let gate = IngestGate::new(2);
        for _ in 0..2 {
            gate.admitted(b"sensors/d1/t");
        }
        gate.admitted(b"tele/plug-1/SENSOR"); // the link takes every topic (`#`)...
        gate.admitted(b"$SYS/broker/uptime"); // ...but those starting with `$`
        assert_eq!(gate.backlog(), 3);
        let started = Instant::now();
        gate.wait_for_room(); // over the limit: waits the maximum
        assert!(started.elapsed() >= MAX_ACK_WAIT);
        assert_eq!(gate.held_acks(), 1);
        gate.drained();
        let started = Instant::now();
        gate.wait_for_room(); // at the limit: no wait
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[test]
    fn a_held_ack_is_released_as_soon_as_the_link_catches_up() {
        let gate = std::sync::Arc::new(IngestGate::new(2));
        for _ in 0..4 {
            gate.admitted(b"sensors/d1/t");
        }
        // Several held acknowledgements: one wake-up from the link releases them all (each
        // woken waiter wakes the next).
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let gate = gate.clone();
                std::thread::spawn(move || {
                    let started = Instant::now();
                    gate.wait_for_room();
                    started.elapsed()
                })
            })
            .collect();
        while gate.waiting.load(Ordering::SeqCst) < 8 {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        gate.drained_many(2); // backlog 2: at the limit, room again
        for waiter in waiters {
            let waited = waiter.join().unwrap();
            assert!(waited >= Duration::from_millis(50), "{waited:?}");
            assert!(waited < MAX_ACK_WAIT / 2, "woken late: {waited:?}");
        }
    }

    #[test]
    fn dropped_publishes_leave_the_backlog_and_are_counted() {
        let gate = IngestGate::new(2);
        for _ in 0..5 {
            gate.admitted(b"sensors/d1/t");
        }
        gate.drained();
        gate.skipped_by_broker(3);
        assert_eq!(gate.backlog(), 1);
        assert_eq!(gate.skipped(), 3);
    }
}
