//! [`SerialStats`]: the counters of one port's reader.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

/// Counters of one port's reader, shared with whoever reports them (metrics, health).
#[derive(Debug, Default)]
pub struct SerialStats {
    pub(crate) frames_ok: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) publish_errors: AtomicU64,
    pub(crate) reopens: AtomicU64,
    pub(crate) connected: AtomicBool,
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

/// A copy of [`SerialStats`] at one moment.
#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SerialStatsSnapshot {
    /// Frames or lines that decoded to a publishable reading.
    pub frames_ok: u64,
    /// Readings the publish function accepted.
    pub published: u64,
    /// Readings the publish function failed (dropped).
    pub publish_errors: u64,
    /// Times the port was opened again after it disappeared.
    pub reopens: u64,
    /// Whether the port is open now.
    pub connected: bool,
    /// Skipped frames or lines by reason (`invalid_cobs`, `too_long`, `invalid_reading`, ...).
    pub errors: BTreeMap<&'static str, u64>,
}

impl SerialStats {
    /// Frames or lines that decoded to a publishable reading.
    pub fn frames_ok(&self) -> u64 {
        self.frames_ok.load(Ordering::Relaxed)
    }

    /// Readings the publish function accepted.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Readings the publish function failed.
    pub fn publish_errors(&self) -> u64 {
        self.publish_errors.load(Ordering::Relaxed)
    }

    /// Times the port was opened again after it disappeared.
    pub fn reopens(&self) -> u64 {
        self.reopens.load(Ordering::Relaxed)
    }

    /// Whether the port is open now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Skipped frames or lines by reason.
    pub fn errors(&self) -> BTreeMap<&'static str, u64> {
        self.errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Total skipped frames or lines, all reasons.
    pub fn error_total(&self) -> u64 {
        self.errors().values().sum()
    }

    /// All counters at once.
    pub fn snapshot(&self) -> SerialStatsSnapshot {
        SerialStatsSnapshot {
            frames_ok: self.frames_ok(),
            published: self.published(),
            publish_errors: self.publish_errors(),
            reopens: self.reopens(),
            connected: self.connected(),
            errors: self.errors(),
        }
    }

    pub(crate) fn count_error(&self, reason: &'static str) {
        *self
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(reason)
            .or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_snapshot() {
        let stats = SerialStats::default();
        stats.count_error("invalid_cobs");
        stats.count_error("invalid_cobs");
        stats.count_error("too_long");
        stats.frames_ok.fetch_add(5, Ordering::Relaxed);
        let snap = stats.snapshot();
        assert_eq!(snap.frames_ok, 5);
        assert_eq!(stats.error_total(), 3);
        assert_eq!(
            snap.errors,
            BTreeMap::from([("invalid_cobs", 2), ("too_long", 1)])
        );
    }
}
