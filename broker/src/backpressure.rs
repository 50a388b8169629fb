//! Backpressure from the bridge to the devices.
//!
//! rumqttd acknowledges a QoS 1 publish as soon as its router has it, whatever its
//! subscribers do, and keeps what a slow subscriber has not read in a bounded in-memory log
//! whose oldest segments it drops when full. If the bridge (ingest and the writer) falls
//! behind for long, acknowledged readings would be lost that way.
//!
//! [`IngestGate`] counts the publishes on `sensors/…` that the broker accepted (from devices,
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
use std::time::{Duration, Instant};

/// The longest a single PUBACK is held back, so a stalled bridge cannot freeze devices forever.
pub const MAX_ACK_WAIT: Duration = Duration::from_secs(1);

/// The topic prefix the bridge's link subscribes to (`sensors/#`).
const INGEST_PREFIX: &[u8] = b"sensors/";

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
        }
    }

    /// Counts a publish the broker accepted, if the bridge's link will receive it.
    pub(crate) fn admitted(&self, topic: &[u8]) {
        if topic.starts_with(INGEST_PREFIX) || topic == b"sensors" {
            self.admitted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a publish the bridge took from its link.
    pub(crate) fn drained(&self) {
        self.drained.fetch_add(1, Ordering::Relaxed);
    }

    /// Publishes accepted and not yet taken by the bridge.
    pub fn backlog(&self) -> u64 {
        self.admitted
            .load(Ordering::Relaxed)
            .saturating_sub(self.drained.load(Ordering::Relaxed))
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
        self.drained.fetch_add(n, Ordering::Relaxed);
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

    fn wait(&self) {
        let wait = || {
            let started = Instant::now();
            while self.backlog() > self.max_backlog && started.elapsed() < MAX_ACK_WAIT {
                std::thread::sleep(Duration::from_millis(1));
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
        for _ in 0..3 {
            gate.admitted(b"sensors/d1/t");
        }
        gate.admitted(b"other/topic");
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
