//! The disk budget: how many bytes the store holds live, and how far retention may go to fit
//! them under `bridge.disk_budget_mb`.
//!
//! sled gives space back lazily: a deleted value's bytes stay in its files until the segment
//! holding them is cleaned, so right after a deletion (and, on a small store, for good) the
//! files are larger than what they hold. Retention that deletes "while the files are larger
//! than the budget" therefore never sees its deletions work and removes everything. So the
//! budget is measured on **live bytes**: the values of the log blocks, sealed chunks and rollup
//! pages the store holds (keys, series and device records and sled's own framing are left
//! out; they are small beside the values). They are counted once, by a scan in small pieces
//! that does not hold up ingest ([`Account::scan_piece`]), and from then on kept up to date
//! from what the writer commits ([`WriteCounters`], the rollup bytes its seals replace) and
//! what retention deletes.
//!
//! The rule ([`plan`]): while live bytes are above [`LIVE_SHARE_PERCENT`] of the budget,
//! retention removes the oldest log blocks (and the sealed chunks left without readings), but
//! never a reading that arrived after the step started, and never the newest readings that
//! take up [`KEEP_SHARE_PERCENT`] of the budget (at the store's average bytes per reading).
//! When that floor stops it, or the files stay larger than the budget, the store says so in
//! [`BudgetStatus`] (the writer logs it, `/metrics` shows it).

use std::collections::HashMap;

use super::chunks::WriteCounters;
use super::layout::{u32_from, u64_from, CHUNK, LOG};
use super::rollup::Resolution;
use super::{StoreError, BLOCK_MAX};

/// Live bytes are brought under this share of the budget, in percent: sled's files hold more
/// than the live values (its framing, and space it has not reclaimed yet), and the rest of the
/// budget is left for that. Measured under steady ingest with the budget holding live bytes
/// at this share (simulated readings, 100 devices x 2 metrics): the files settled at 1.7 to
/// 1.95 times the live bytes with a 64 MiB budget (56 to 63 MiB of files), about twice with
/// 16 MiB (15.5 to 16.5 MiB), and 2.3 to 3.2 times with 8 MiB and less, where sled's own
/// few MiB weigh most (9 to 12 MiB of files for 8 MiB): a small budget is exceeded by the
/// files, and [`BudgetStatus::exceeded`] says so.
pub const LIVE_SHARE_PERCENT: u64 = 50;

/// The newest readings that take up this share of the budget, in percent (at the store's
/// average live bytes per reading), are never removed by the budget.
pub const KEEP_SHARE_PERCENT: u64 = 25;

/// Most value bytes one piece of the counting scan reads (a retention step holds up the
/// writer's next batch while it runs).
const SCAN_PIECE_BYTES: u64 = 4 << 20;
/// Most entries one piece of the counting scan visits.
const SCAN_PIECE_ENTRIES: usize = 20_000;

/// Bytes of values the store holds, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveBytes {
    /// Log blocks.
    pub log: u64,
    /// Sealed chunks (a chunk goes once all its readings are removed from the log; until then
    /// it counts whole).
    pub chunks: u64,
    /// Minute and hour rollup pages.
    pub rollups: u64,
}

impl LiveBytes {
    /// All kinds together.
    pub fn total(&self) -> u64 {
        self.log
            .saturating_add(self.chunks)
            .saturating_add(self.rollups)
    }

    fn add(&mut self, other: LiveBytes) {
        self.log = self.log.saturating_add(other.log);
        self.chunks = self.chunks.saturating_add(other.chunks);
        self.rollups = self.rollups.saturating_add(other.rollups);
    }
}

/// Where the store stands against its disk budget, and what retention removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetStatus {
    /// The budget of the last retention step, bytes (`None`: no budget).
    pub budget_bytes: Option<u64>,
    /// The share of it live bytes are brought under ([`LIVE_SHARE_PERCENT`]).
    pub live_limit_bytes: Option<u64>,
    /// Live bytes after the last retention step (`None` until counted; only counted with a
    /// budget).
    pub live: Option<LiveBytes>,
    /// Bytes of sled's files now.
    pub file_bytes: u64,
    /// Readings the budget never removes at the moment (the newest ones).
    pub kept_readings: u64,
    /// The last settled step (nothing more to remove) left live bytes above their share of
    /// the budget because only the newest, kept readings were left to remove.
    pub floor_reached: bool,
    /// The store is over its budget: the files are larger than the budget now, or
    /// [`BudgetStatus::floor_reached`] (live bytes counted and a budget set; else `false`).
    pub exceeded: bool,
    /// Readings removed for their age since the store was opened.
    pub removed_for_age: u64,
    /// Readings removed for the disk budget since the store was opened.
    pub removed_for_budget: u64,
}

/// The store's counters that live bytes are derived from, as of one moment.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Marks {
    pub(super) written: WriteCounters,
    pub(super) rollup_bytes_replaced: u64,
}

/// A counting scan under way: what it found so far and how to tell what it must skip.
#[derive(Debug)]
struct Scan {
    /// The counters when the scan started: whatever was committed after is counted from them.
    marks: Marks,
    /// Log blocks starting at or after this seq were written after the scan started.
    next_seq: u64,
    /// Per series, the seq up to which it was sealed when the scan started: a chunk whose
    /// first seq is above it was sealed after.
    sealed_through: HashMap<u32, u64>,
    /// Where the next piece starts (`None`: from the first key).
    resume: Option<Vec<u8>>,
    found: LiveBytes,
}

/// The live byte count of one store (kept by the retention task).
#[derive(Debug, Default)]
pub(super) struct Account {
    /// Complete count: what the scan found and the counters at its start.
    counted: Option<(Marks, LiveBytes)>,
    scan: Option<Scan>,
    /// Removed by retention since the scan started.
    deleted: LiveBytes,
}

impl Account {
    /// Whether live bytes are known.
    pub(super) fn is_counted(&self) -> bool {
        self.counted.is_some()
    }

    /// Whether a scan has started and not finished.
    pub(super) fn is_scanning(&self) -> bool {
        self.scan.is_some()
    }

    /// Starts counting. Nothing may be deleted until the scan is complete.
    pub(super) fn start_scan(
        &mut self,
        marks: Marks,
        next_seq: u64,
        sealed_through: HashMap<u32, u64>,
    ) {
        self.counted = None;
        self.deleted = LiveBytes::default();
        self.scan = Some(Scan {
            marks,
            next_seq,
            sealed_through,
            resume: None,
            found: LiveBytes::default(),
        });
    }

    /// Counts one piece of the store; returns `true` once the count is complete.
    pub(super) fn scan_piece(&mut self, tree: &sled::Tree) -> Result<bool, StoreError> {
        let Some(scan) = self.scan.as_mut() else {
            return Ok(self.counted.is_some());
        };
        // Chunks (`C`), hour pages (`H`), log blocks (`L`) and minute pages (`M`) sort between
        // `C` and `N`; device records (`D`) in between are skipped.
        let start = scan.resume.take().unwrap_or_else(|| vec![CHUNK]);
        let (mut bytes, mut entries) = (0u64, 0usize);
        for item in tree.range(start..vec![b'N']) {
            let (k, v) = item?;
            let len = v.len() as u64;
            match k.first().copied() {
                Some(LOG) if u64_from(&k[1..]) < scan.next_seq => scan.found.log += len,
                Some(CHUNK) if k.len() == 21 => {
                    let sid = u32_from(&k[1..5]);
                    let first_seq = u64_from(&k[13..21]);
                    let sealed = scan.sealed_through.get(&sid).copied().unwrap_or(0);
                    if first_seq <= sealed {
                        scan.found.chunks += len;
                    }
                }
                // A page rewritten while the scan runs may be counted at its new size and its
                // growth once more; that error is a few bytes per page.
                Some(tag) if Resolution::BOTH.iter().any(|r| r.tag() == tag) => {
                    scan.found.rollups += len
                }
                _ => {}
            }
            bytes += len;
            entries += 1;
            if bytes >= SCAN_PIECE_BYTES || entries >= SCAN_PIECE_ENTRIES {
                let mut next = k.to_vec();
                next.push(0);
                scan.resume = Some(next);
                return Ok(false);
            }
        }
        let done = (scan.marks, scan.found);
        self.scan = None;
        self.counted = Some(done);
        Ok(true)
    }

    /// Live bytes now, given the store's counters now (`None` until counted).
    pub(super) fn live(&self, now: &Marks) -> Option<LiveBytes> {
        let (then, found) = self.counted.as_ref()?;
        let (w, w0) = (&now.written, &then.written);
        let grew = |a: u64, b: u64| a.saturating_sub(b);
        let added = LiveBytes {
            log: grew(w.log_bytes, w0.log_bytes),
            chunks: grew(w.chunk_bytes, w0.chunk_bytes),
            rollups: grew(w.rollup_bytes, w0.rollup_bytes),
        };
        let replaced = grew(now.rollup_bytes_replaced, then.rollup_bytes_replaced);
        let mut live = *found;
        live.add(added);
        Some(LiveBytes {
            log: live.log.saturating_sub(self.deleted.log),
            chunks: live.chunks.saturating_sub(self.deleted.chunks),
            rollups: live
                .rollups
                .saturating_sub(replaced)
                .saturating_sub(self.deleted.rollups),
        })
    }

    /// Retention deleted these bytes (committed). A deletion while a scan is under way (a step
    /// without a budget) may hit what the scan has or has not counted yet: the scan starts
    /// over.
    pub(super) fn deleted(&mut self, bytes: LiveBytes) {
        if self.counted.is_some() {
            self.deleted.add(bytes);
        }
        self.scan = None;
    }
}

/// How far one retention step may go for the budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Plan {
    /// Live bytes to free to get under [`LIVE_SHARE_PERCENT`] of the budget.
    pub(super) to_free: u64,
    /// Only log blocks whose readings all have a seq at or below this may go.
    pub(super) keep_after: u64,
    /// Readings kept by the floor.
    pub(super) kept: u64,
    /// Live bytes one byte of log block frees with its readings (the log and the chunks hold
    /// every reading once each).
    pub(super) per_log_byte: f64,
}

/// Live bytes may take up this much of `budget`.
pub(super) fn live_limit(budget: u64) -> u64 {
    (u128::from(budget) * u128::from(LIVE_SHARE_PERCENT) / 100) as u64
}

/// Readings the floor keeps: the newest that take up [`KEEP_SHARE_PERCENT`] of `budget` at
/// the average live bytes per reading, at least [`BLOCK_MAX`] (all of them when that average
/// is unknown).
pub(super) fn kept_readings(budget: u64, live: &LiveBytes, readings: u64) -> u64 {
    let reading_bytes = live.log.saturating_add(live.chunks);
    if reading_bytes == 0 {
        return readings;
    }
    let share = u128::from(budget) * u128::from(KEEP_SHARE_PERCENT) / 100;
    let kept = (share * u128::from(readings)).div_ceil(u128::from(reading_bytes));
    kept.max(BLOCK_MAX as u128).min(u128::from(readings)) as u64
}

/// What the budget asks of a step that starts with `live` bytes, `readings` readings and the
/// newest seq `head`; `None` when live bytes are within the budget.
pub(super) fn plan(budget: u64, live: &LiveBytes, readings: u64, head: u64) -> Option<Plan> {
    let limit = live_limit(budget);
    if live.total() <= limit {
        return None;
    }
    let kept = kept_readings(budget, live, readings);
    let per_log_byte = if live.log == 0 {
        1.0
    } else {
        (live.log.saturating_add(live.chunks) as f64 / live.log as f64).max(1.0)
    };
    Some(Plan {
        to_free: live.total() - limit,
        keep_after: head.saturating_sub(kept),
        kept,
        per_log_byte,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_frees_down_to_the_share_and_keeps_the_newest() {
        let live = LiveBytes {
            log: 6_000_000,
            chunks: 3_000_000,
            rollups: 1_000_000,
        };
        // 1,000,000 readings at 9 bytes each; budget 8 MB: limit 4 MB, keep 2 MB of readings.
        let p = plan(8_000_000, &live, 1_000_000, 1_000_000).expect("over the budget");
        assert_eq!(p.to_free, 6_000_000);
        assert_eq!(p.kept, 222_223);
        assert_eq!(p.keep_after, 1_000_000 - 222_223);
        assert!((p.per_log_byte - 1.5).abs() < 1e-9);
        assert_eq!(plan(20_000_000, &live, 1_000_000, 1_000_000), None);
        // Nothing known per reading: keep everything.
        let pages_only = LiveBytes {
            rollups: 9_000_000,
            ..LiveBytes::default()
        };
        let p = plan(1_000_000, &pages_only, 10, 10).expect("over");
        assert_eq!((p.kept, p.keep_after), (10, 0));
        // Extreme figures do not overflow.
        let huge = LiveBytes {
            log: u64::MAX,
            chunks: u64::MAX,
            rollups: u64::MAX,
        };
        let p = plan(u64::MAX, &huge, u64::MAX, u64::MAX).expect("over");
        assert!(p.kept > 0 && p.to_free > 0);
        assert_eq!(plan(0, &LiveBytes::default(), 0, 0), None);
        // A budget too small to keep anything still keeps the newest block's worth.
        let p = plan(1, &live, 1_000_000, 1_000_000).expect("over");
        assert_eq!(p.kept, BLOCK_MAX as u64);
    }

    /// The counting scan resumes piece after piece and counts each kind once, leaving out what
    /// was written after it started (log blocks from `next_seq` on, chunks sealed later).
    #[test]
    fn the_scan_counts_in_pieces() {
        use super::super::layout::{chunk_key, device_key, log_key, sid_time_key};
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let mut want = LiveBytes::default();
        for seq in 1..=30_000u64 {
            let v = vec![7u8; 1 + (seq % 5) as usize];
            if seq <= 25_000 {
                want.log += v.len() as u64;
            }
            tree.insert(log_key(seq), v).unwrap();
        }
        for i in 0..3000u64 {
            let sid = (i % 3) as u32 + 1;
            let v = vec![1u8; 10];
            // First seq i + 1. Series 1 and 2 were sealed through seq 1,000 when the scan
            // started; series 3 is new.
            if sid != 3 && i < 1000 {
                want.chunks += 10;
            }
            tree.insert(chunk_key(sid, i as i64, i + 1), v).unwrap();
        }
        for (tag, n) in [(b'M', 500i64), (b'H', 20)] {
            for t in 0..n {
                tree.insert(sid_time_key(tag, 1, t * 60_000), vec![2u8; 30])
                    .unwrap();
                want.rollups += 30;
            }
        }
        tree.insert(device_key("d1"), vec![0u8; 99]).unwrap();
        tree.insert(b"Zseq", vec![0u8; 8]).unwrap();

        let mut a = Account::default();
        let sealed = HashMap::from([(1, 1000), (2, 1000)]);
        a.start_scan(Marks::default(), 25_001, sealed);
        let mut pieces = 1;
        while !a.scan_piece(&tree).unwrap() {
            pieces += 1;
            assert!(pieces < 100);
        }
        assert!(pieces >= 2, "{pieces} pieces");
        assert_eq!(a.live(&Marks::default()), Some(want));
    }

    #[test]
    fn a_deletion_during_a_scan_restarts_it() {
        let mut a = Account::default();
        a.start_scan(Marks::default(), 1, HashMap::new());
        assert!(a.is_scanning());
        a.deleted(LiveBytes {
            log: 5,
            ..LiveBytes::default()
        });
        assert!(!a.is_scanning() && !a.is_counted());
        assert_eq!(a.live(&Marks::default()), None);
    }
}
