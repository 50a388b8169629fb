//! What the writer measures (read by [`crate::metrics`]).

use std::sync::atomic::AtomicU64;

use crate::histogram::{Histogram, BATCH_BUCKETS, LATENCY_BUCKETS};

/// The writer's measurements (kept by [`crate::writer`]).
#[derive(Debug)]
pub struct WriterStats {
    /// Items (readings and presence changes) per committed batch.
    pub batch_size: Histogram,
    /// Time from handing a batch to the store to durable, seconds.
    pub commit_seconds: Histogram,
    /// Batches that failed to apply or flush.
    pub commit_failures: AtomicU64,
    /// How each item handed to the writer ended.
    pub outcomes: WriteOutcomes,
}

/// How the items handed to the writer ended, counted when their batch is applied (an item
/// counted `stored` is acknowledged once the flush that follows completes).
#[derive(Debug, Default)]
pub struct WriteOutcomes {
    /// Readings stored, each with its seq.
    pub stored: AtomicU64,
    /// Readings recognised as a resend of a stored reading, not stored again.
    pub duplicates: AtomicU64,
    /// Presence changes recorded.
    pub presence: AtomicU64,
    /// Items of batches the store failed to apply (left unacknowledged; a QoS 1 sender
    /// resends them).
    pub failed: AtomicU64,
}

impl Default for WriterStats {
    fn default() -> Self {
        Self {
            batch_size: Histogram::new(BATCH_BUCKETS),
            commit_seconds: Histogram::new(LATENCY_BUCKETS),
            commit_failures: AtomicU64::new(0),
            outcomes: WriteOutcomes::default(),
        }
    }
}
