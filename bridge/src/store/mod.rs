//! The event log and its read models, on sled. This is the only module that names sled.
//!
//! # Model
//!
//! The log is the record: every stored reading is in exactly one log block. The per-series
//! chunks and the rollup pages are read models derived from it (DESIGN.md principle 1):
//! * the writer's batch becomes one or more **log blocks** (up to [`BLOCK_MAX`] consecutive
//!   readings each, seqs implicit);
//! * each series has an **open chunk** in memory (its readings not yet sealed). A chunk is
//!   sealed to sled when it holds [`CHUNK_ROWS`] readings within [`CHUNK_SPAN_MS`] (or
//!   [`SCATTERED_ROWS`] spread wider), or when its oldest reading is more than
//!   [`StoreOptions::dedupe_window`] seqs behind the log head: sorted by event time and cut into
//!   sealed chunks spanning at most [`CHUNK_SPAN_MS`] each. Sealing also merges the chunk's
//!   readings into the minute and hour **rollup pages**, in the same batch;
//! * queries merge sealed chunks and pages from sled with the open chunks in memory.
//!
//! Open chunks are never written on their own: [`Store::open`] rebuilds them by replaying the
//! log after the replay checkpoint (at most `dedupe_window` readings), so a commit writes its
//! log blocks plus whatever it seals, and nothing per reading elsewhere.
//!
//! # Files
//! * `mod.rs` (this file): the public types and the [`Store`] API (open, apply, queries,
//!   retention).
//! * `chunks`: series in memory and their open chunks: sealing, replay, undo, duplicate lookup.
//! * `codec`: byte formats of log blocks and chunks (values, units, varints).
//! * `rollup`: [`Aggregate`], minute/hour buckets and the pages that hold them.
//! * `layout`: key tags and encodings, small records, finding the block that holds a seq.
//! * `recent`: fingerprints of the last stored readings, the first test for a redelivery.
//! * `deliveries`: the external session's recent deliveries, to recognise the broker's resends.
//! * `budget`: live bytes and the disk budget's rule.
//! * `forwarding`: the uplinks' cursors (a tree of their own, `uplink`) and the hold they put
//!   on retention: readings not forwarded yet outlive `retention_days`, up to a bound.
//! * `broker_state`: the embedded broker's retained messages and persistent sessions, in a
//!   tree of their own (`broker`), opaque bytes encoded by the broker crate.
//!
//! # On-disk layout
//!
//! One sled tree, so that one [`sled::Batch`] applies a whole commit (blocks, seals, pages,
//! catalogue, checkpoints) atomically: after a crash the store holds all of a batch or none of
//! it. Keys start with a one-byte tag; times in keys are sign-flipped big-endian so they sort:
//!
//! | key | value |
//! | --- | --- |
//! | `L` first seq (u64 BE) | log block (`codec`) |
//! | `C` sid (u32 BE) min event time first seq | sealed chunk of one series (`codec`) |
//! | `M` sid hour start | the minute buckets of that hour (`rollup`) |
//! | `H` sid day start | the hour buckets of that day (`rollup`) |
//! | `S` sid (u32 BE) | series record (postcard): names, base unit, last reading, sealed-through seq, sealed count |
//! | `D` deviceId | device presence (postcard) |
//! | `P` ordinal (u64 BE) | a recent external delivery: packet id, digest (`deliveries`) |
//! | `Zformat` | on-disk format ([`FORMAT`]); a store without it (older build) is refused |
//! | `Zseq` | seq reservation: no seq at or below it is ever assigned again (see below) |
//! | `Zreplay` | replay checkpoint: every reading before this seq is sealed or deleted |
//! | `Zfloor` | highest seq deleted by retention (older chunk rows are hidden) |
//!
//! # Duplicates
//!
//! A reading that carries its device's event time ([`Origin::device_time`]) with the same
//! series, event time and value bits as one of the last [`StoreOptions::dedupe_window`] stored
//! readings is not stored again (a redelivery comes soon after the original). A reading whose
//! event time is its receive time is never compared by content: a burst of equal values can
//! share a millisecond. A reading from an external broker's session is written with its
//! delivery (`deliveries`), and the broker's resend of that delivery is a duplicate whatever the
//! payload. A reading newer than everything of its series is new without a
//! lookup; otherwise its fingerprint is looked up among those of the recent readings (`recent`,
//! in memory, rebuilt from the log tail at open), and only a match is confirmed in the open
//! chunk, then in the sealed chunks that can cover its event time. So late readings (a device
//! sending what it buffered offline) cost a hash lookup, not a read of sled.
//!
//! # Seq reservation
//!
//! The writer publishes a batch live as soon as it is applied, before it is durable (the
//! acknowledgements wait for the flush). A crash can then lose seqs that clients have already
//! seen, and a restart must not hand those seqs out again (a client resuming after such a seq
//! would skip the new reading that reused it). So `Zseq` holds a *reservation* kept
//! ahead of the log head (a [`SEQ_RESERVE_FRACTION`] of the dedupe window), written in the
//! batches themselves, well before the head gets there: [`Store::seq_reserved`] says up to which seq an applied batch may be published
//! once the flush that follows it completes. [`Store::open`] continues after the reservation
//! (after a crash seq jumps by at most the reserve); an orderly close
//! ([`Store::release_reservation`]) writes the real head back so a clean restart has no jump.
//! Retention emptying the log cannot reset seq either.
//!
//! # Retention
//!
//! Whole log blocks go (oldest first); then, per series, sealed chunks all of whose readings are
//! gone, walking in time order and stopping at the first chunk that still holds one (so a chunk
//! of late readings can delay the removal of newer chunks until its own readings expire). Rows
//! at or below `Zfloor` are hidden meanwhile. Rollup pages go when their whole span is older
//! than the age limit. A disk budget is measured on the live bytes of blocks, chunks and pages,
//! not on the size of sled's files (which lags deletions), and never removes the newest
//! readings: see `budget`.
//!
//! # Concurrency
//!
//! Writes ([`Store::apply`], [`Store::retain_step`]) are meant to come from one task (the
//! writer); they serialise on an internal `std::sync::Mutex` that is never held across an
//! `.await`. Queries take that lock only to copy what they need from the open chunks, then
//! read sled (lock-free) and see only whole batches; rows sealed meanwhile are recognised by
//! their seq so nothing is counted twice.

mod activity;
mod apply;
pub mod backup;
mod broker_state;
mod budget;
mod chunks;
mod codec;
mod deliveries;
mod forwarding;
mod layout;
mod query;
mod recent;
mod retention;
mod rollup;
mod types;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use edgewatch_protocol::{Reading, SeriesKey, TopicFilter};

pub use activity::SeriesActivity;
pub use broker_state::{BrokerState, Entry as BrokerStateEntry};
pub use budget::{BudgetStatus, LiveBytes, KEEP_SHARE_PERCENT, LIVE_SHARE_PERCENT};
pub use chunks::WriteCounters;
use chunks::*;
use codec::{LogRow, Malformed, Row, UnitOverride};
pub use deliveries::{delivery_digest, AckedDeliveries, DeliveryId};
use layout::*;
use rollup::{ceil_to, floor_to, Buckets, Resolution};
pub use rollup::{Aggregate, HOUR_MS, MINUTE_MS};
pub use types::*;

/// On-disk format written and read by this build (key `Zformat`).
pub const FORMAT: u64 = 2;

/// Most readings in one log block (a larger batch is split).
pub const BLOCK_MAX: usize = 1000;
/// An open chunk is sealed when it holds this many readings.
pub const CHUNK_ROWS: usize = 512;
/// Most readings in one sealed chunk.
pub const CHUNK_MAX_ROWS: usize = 2 * CHUNK_ROWS;
/// An open chunk whose event times span more than [`CHUNK_SPAN_MS`] is sealed when it holds
/// this many readings (or by the replay bound).
pub const SCATTERED_ROWS: usize = 8 * CHUNK_ROWS;
/// Largest event-time span of one sealed chunk: a time-range query looks this far back.
pub const CHUNK_SPAN_MS: i64 = 15 * 60_000;
/// The seq reservation (`Zseq`) is kept up to this fraction of
/// [`StoreOptions::dedupe_window`] ahead of the log head (16,384 seqs by default), renewed
/// when the head is within half of it. After a crash, seq jumps by at most that much, and for
/// the readings just after it the duplicate window is that much shorter (the window and the
/// replay bound count seqs).
pub const SEQ_RESERVE_FRACTION: u64 = 16;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened (missing permissions, locked by another process...).
    #[error("cannot open the store at {}: {reason}", path.display())]
    Open {
        /// The data directory.
        path: PathBuf,
        /// Why, in words ([`open_reason`]).
        reason: String,
    },
    /// A read or write failed.
    #[error("store I/O failed: {0}")]
    Io(#[source] sled::Error),
    /// A record could not be decoded.
    #[error("corrupt {what} record in the store")]
    Corrupt {
        /// Which kind of record.
        what: &'static str,
    },
    /// A record could not be encoded (nothing was written).
    #[error("cannot encode a {what} record")]
    Encode {
        /// Which kind of record.
        what: &'static str,
    },
    /// A writer panicked while holding the store's state.
    #[error("store state poisoned by an earlier panic")]
    Poisoned,
    /// The data directory holds a store in another on-disk format.
    #[error(
        "the store at {path} has on-disk format {found}, this build reads format {FORMAT}; \
         move the data directory away to start afresh"
    )]
    Format {
        /// The data directory.
        path: PathBuf,
        /// The format found (0: an older build without a format mark).
        found: u64,
    },
}

impl StoreError {
    /// Whether the store could not be opened because another process (a running hub) holds
    /// its data directory.
    pub fn is_locked(&self) -> bool {
        matches!(self, StoreError::Open { reason, .. } if reason == LOCKED_REASON)
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(e)
    }
}

impl From<Malformed> for StoreError {
    fn from(e: Malformed) -> Self {
        StoreError::Corrupt { what: e.0 }
    }
}

/// Tuning for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The window, in readings (seqs), in which a redelivered reading is recognised; also the
    /// most readings kept in open chunks in memory, and the bound on the log tail
    /// [`Store::open`] replays. A series whose oldest open reading falls this many seqs behind
    /// is sealed. Costs about 26 bytes per reading of memory for the fingerprints.
    pub dedupe_window: usize,
    /// sled page cache size in bytes.
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            dedupe_window: 262_144,
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug)]
struct Inner {
    db: sled::Db,
    tree: sled::Tree,
    /// The data directory it was opened in.
    dir: PathBuf,
    state: Mutex<State>,
    /// Live byte count for the disk budget (only the retention task uses it; taken before
    /// `state`, never after).
    account: Mutex<budget::Account>,
    /// What retention last found and removed, for `/metrics` and the log.
    budget: Mutex<BudgetStatus>,
    /// What the running uplinks have not forwarded yet (`forwarding`).
    holds: Mutex<forwarding::Holds>,
}

impl Inner {
    /// Writes the real head as `Zseq` (ending the reservation) and flushes.
    fn release_reservation(&self) -> Result<(), StoreError> {
        {
            let mut st = self.state.lock().map_err(|_| StoreError::Poisoned)?;
            let head = st.next_seq - 1;
            if st.reserved != head {
                self.tree.insert(META_SEQ, &head.to_be_bytes()[..])?;
                st.reserved = head;
            }
        }
        self.db.flush()?;
        Ok(())
    }
}

impl Drop for Inner {
    /// The last handle going away is an orderly close: everything applied is flushed, so the
    /// next open may continue at the next seq.
    fn drop(&mut self) {
        if let Err(err) = self.release_reservation() {
            tracing::warn!(%err, "closing the store: final flush failed");
        }
    }
}

/// Handle to the store. Cloning is cheap (one `Arc`).
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// How long [`Store::open`] retries while the database's file lock is still held.
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens the database, retrying while its file lock is held: sled releases the lock only when
/// its background flusher of a just-dropped instance (same process, e.g. a restart) has ended.
/// Another process holding the database still fails, after [`LOCK_RETRY`].
fn open_with_lock_retry(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_RETRY;
    loop {
        match config.open() {
            Err(sled::Error::Io(err))
                if err.kind() == std::io::ErrorKind::WouldBlock
                    || err.to_string().contains("could not acquire lock") =>
            {
                if std::time::Instant::now() >= deadline {
                    return Err(sled::Error::Io(err));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// The reason of a [`StoreError::Open`] when another process holds the data directory.
const LOCKED_REASON: &str = "the data directory is in use by another process (another \
     edgewatch running on it?): stop that one, or give this one another directory \
     (bridge.data_dir, --data-dir, EDGEWATCH_DATA_DIR)";

/// Why sled could not open a store, in words: a lock held by another process (another
/// edgewatch on the same data directory) says so and what to do.
fn open_reason(err: &sled::Error) -> String {
    match err {
        // sled wraps the failed lock in an error of its own wording (kind Other).
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock") =>
        {
            LOCKED_REASON.to_owned()
        }
        sled::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`: recovers the next seq and the catalogue, and
    /// rebuilds the open chunks by replaying the log after the replay checkpoint.
    pub fn open(dir: &Path, opts: &StoreOptions) -> Result<Store, StoreError> {
        let open_err = |source: sled::Error| StoreError::Open {
            path: dir.to_path_buf(),
            reason: open_reason(&source),
        };
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(opts.cache_bytes)
            .mode(sled::Mode::HighThroughput);
        let db = open_with_lock_retry(&config).map_err(open_err)?;
        let tree = db.open_tree("edgewatch").map_err(open_err)?;

        match read_u64(&tree, META_FORMAT, "format")? {
            FORMAT => {}
            0 if tree.is_empty() => {
                tree.insert(META_FORMAT, &FORMAT.to_be_bytes()[..])?;
            }
            found => {
                return Err(StoreError::Format {
                    path: dir.to_path_buf(),
                    found,
                })
            }
        }
        let mut last_seq = read_u64(&tree, META_SEQ, "seq high-water mark")?;
        let replay_from = read_u64(&tree, META_REPLAY, "replay checkpoint")?;
        let floor = read_u64(&tree, META_FLOOR, "retention floor")?;
        if let Some(r) = tree.range(log_key(0)..=log_key(u64::MAX)).next_back() {
            let (k, v) = r?;
            let n = codec::block_len(&v)?;
            last_seq = last_seq.max(u64_from(&k[1..]).saturating_add(n.saturating_sub(1)));
        }
        let mut sids: HashMap<String, HashMap<String, u32>> = HashMap::new();
        let mut series = HashMap::new();
        let mut next_sid = 1u32;
        for r in tree.scan_prefix([SERIES]) {
            let (k, v) = r?;
            if k.len() != 5 {
                continue;
            }
            let sid = u32_from(&k[1..]);
            let rec: SeriesRecord = decode_rec(&v, "series")?;
            sids.entry(rec.device_id.clone())
                .or_default()
                .insert(rec.metric.clone(), sid);
            next_sid = next_sid.max(sid.saturating_add(1));
            series.insert(sid, Series::from_record(rec));
        }
        let mut st = State {
            next_seq: last_seq + 1,
            reserved: last_seq,
            next_sid,
            sids,
            series,
            open_index: BTreeSet::new(),
            floor,
            replay_from,
            window: opts.dedupe_window.max(1) as u64,
            written: WriteCounters::default(),
            rollup_bytes_replaced: 0,
            recent: recent::Recent::new(opts.dedupe_window),
            deliveries: deliveries::Deliveries::load(&tree)?,
        };
        replay(&tree, &mut st)?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                tree,
                dir: dir.to_path_buf(),
                state: Mutex::new(st),
                account: Mutex::new(budget::Account::default()),
                budget: Mutex::new(BudgetStatus::default()),
                holds: Mutex::new(forwarding::Holds::new()),
            }),
        })
    }

    fn state(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        self.inner.state.lock().map_err(|_| StoreError::Poisoned)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Makes everything applied so far durable (blocking).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.db.flush()?;
        Ok(())
    }

    /// Makes everything applied so far durable.
    pub async fn flush_async(&self) -> Result<(), StoreError> {
        self.inner.db.flush_async().await?;
        Ok(())
    }

    /// The seq reservation as last applied: once a flush that started after the batch that
    /// wrote it has completed, every seq up to it is safe to publish (a restart continues
    /// after it). See the module documentation.
    pub fn seq_reserved(&self) -> Result<u64, StoreError> {
        Ok(self.state()?.reserved)
    }

    /// Ends the reservation for an orderly close: writes the real head as `Zseq` and flushes,
    /// so the next open continues at the next seq. Call when nothing else writes; a later
    /// [`Store::apply`] reserves again. Dropping the last handle does the same.
    pub fn release_reservation(&self) -> Result<(), StoreError> {
        self.inner.release_reservation()
    }

    /// External deliveries remembered to recognise the broker's resends (see
    /// [`Store::apply_from`]).
    pub fn delivery_records(&self) -> Result<usize, StoreError> {
        Ok(self.state()?.deliveries.len())
    }

    /// External delivery records dropped by their bound since open (see
    /// [`Store::delivery_records`]).
    pub fn delivery_records_evicted(&self) -> Result<u64, StoreError> {
        Ok(self.state()?.deliveries.evicted)
    }

    /// Highest seq assigned so far (0 when none).
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(self.state()?.next_seq - 1)
    }

    /// Counters and size on disk.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let (last_seq, readings, series, written) = {
            let st = self.state()?;
            (
                st.next_seq - 1,
                st.series.values().map(|s| s.count).sum(),
                st.series.len() as u64,
                st.written,
            )
        };
        Ok(StoreStats {
            size_on_disk: self.inner.db.size_on_disk()?,
            readings,
            last_seq,
            series,
            written,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data directory from a build with another layout is refused with a clear error, not
    /// misread; an empty one gets the current format mark.
    #[test]
    fn other_formats_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let tree = db.open_tree("edgewatch").unwrap();
            tree.insert(log_key(1), &[0u8, 1, 2, 3][..]).unwrap();
            db.flush().unwrap();
        }
        let err = Store::open(dir.path(), &StoreOptions::default()).unwrap_err();
        assert!(matches!(err, StoreError::Format { found: 0, .. }), "{err}");

        let fresh = tempfile::tempdir().unwrap();
        drop(Store::open(fresh.path(), &StoreOptions::default()).unwrap());
        let store = Store::open(fresh.path(), &StoreOptions::default()).unwrap();
        assert_eq!(store.last_seq().unwrap(), 0);
    }
}
