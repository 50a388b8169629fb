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
mod budget;
mod chunks;
mod codec;
mod deliveries;
mod layout;
mod recent;
mod rollup;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use edgewatch_protocol::{Reading, SeriesKey, TopicFilter};

pub use activity::SeriesActivity;
pub use budget::{BudgetStatus, LiveBytes, KEEP_SHARE_PERCENT, LIVE_SHARE_PERCENT};
pub use chunks::WriteCounters;
use chunks::*;
use codec::{LogRow, Malformed, Row, UnitOverride};
pub use deliveries::{delivery_digest, AckedDeliveries, DeliveryId};
use layout::*;
use rollup::{ceil_to, floor_to, Buckets, Resolution};
pub use rollup::{Aggregate, HOUR_MS, MINUTE_MS};

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
    #[error("cannot open the store at {path}: {source}")]
    Open {
        /// The data directory.
        path: PathBuf,
        /// What sled said.
        #[source]
        source: sled::Error,
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

/// A reading with the seq the log assigned to it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReading {
    /// Global, strictly increasing sequence number.
    pub seq: u64,
    /// The reading.
    pub reading: Reading,
}

/// What the store needs to know of where a reading came from to tell a resend from a new
/// reading (see [`Store::apply_from`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The event time is the device's own (from the payload), not the receive time.
    pub device_time: bool,
    /// The external broker delivery it came in, when it came from one.
    pub delivery: Option<DeliveryId>,
}

impl Origin {
    /// A reading with its device's own event time, not from an external broker.
    pub const DEVICE_TIME: Origin = Origin {
        device_time: true,
        delivery: None,
    };
}

/// A device presence change from `sensors/{deviceId}/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceUpdate {
    /// The device.
    pub device_id: String,
    /// `true` for `online`.
    pub online: bool,
    /// When the status was received, epoch ms.
    pub at_ms: i64,
}

/// One series in the catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesInfo {
    /// Device and metric.
    pub key: SeriesKey,
    /// The unit of the latest reading that had one.
    pub unit: Option<String>,
    /// Value of the latest stored reading (highest seq).
    pub last_value: f64,
    /// Event time of that reading, epoch ms.
    pub last_timestamp_ms: i64,
    /// Receive time of that reading, epoch ms.
    pub last_seen_ms: i64,
    /// Its seq.
    pub last_seq: u64,
    /// Readings of this series currently in the log.
    pub count: u64,
}

/// A device: presence (if it ever sent a status) and what it reported.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    /// Device id.
    pub device_id: String,
    /// Last status: `Some(true)` online, `Some(false)` offline, `None` never sent one.
    pub online: Option<bool>,
    /// When the presence last changed, epoch ms.
    pub since_ms: Option<i64>,
    /// Latest receive time over its series.
    pub last_seen_ms: Option<i64>,
    /// Metrics it reported, sorted.
    pub metrics: Vec<String>,
}

/// A history query over raw readings. Event times: `from_ms` inclusive, `to_ms` exclusive.
#[derive(Debug, Clone, Default)]
pub struct ReadingQuery {
    /// Topic filters; a reading matches if any matches its topic. Empty matches everything.
    pub filters: Vec<TopicFilter>,
    /// Earliest event time (inclusive).
    pub from_ms: Option<i64>,
    /// Latest event time (exclusive).
    pub to_ms: Option<i64>,
    /// Only readings with seq greater than this (the paging cursor; 0 = from the start).
    pub after: u64,
    /// Page size.
    pub limit: usize,
}

/// One page of readings in seq order, as the store holds them: each row with its series'
/// names, so an answer can be written without copying three strings per reading.
#[derive(Debug, Clone, Default)]
pub struct RowPage {
    rows: Vec<(Arc<Names>, Row)>,
    /// Cursor for the next page when more rows match, else `None`.
    pub next_after: Option<u64>,
}

/// A stored reading borrowed from a [`RowPage`] (or from a [`StoredReading`]).
#[derive(Debug, Clone, Copy)]
pub struct ReadingView<'a> {
    /// Global sequence number.
    pub seq: u64,
    /// Device id.
    pub device_id: &'a str,
    /// Metric name.
    pub metric: &'a str,
    /// Unit, if the reading had one.
    pub unit: Option<&'a str>,
    /// The value.
    pub value: f64,
    /// Event time, epoch ms.
    pub timestamp_ms: i64,
    /// Receive time, epoch ms.
    pub received_at_ms: i64,
}

impl ReadingView<'_> {
    /// `sensors/{deviceId}/{metric}`.
    pub fn topic(&self) -> edgewatch_protocol::SeriesTopic<'_> {
        edgewatch_protocol::SeriesTopic::new(self.device_id, self.metric)
    }
}

impl<'a> From<&'a StoredReading> for ReadingView<'a> {
    fn from(r: &'a StoredReading) -> Self {
        ReadingView {
            seq: r.seq,
            device_id: &r.reading.device_id,
            metric: &r.reading.metric,
            unit: r.reading.unit.as_deref(),
            value: r.reading.value,
            timestamp_ms: r.reading.timestamp_ms,
            received_at_ms: r.reading.received_at_ms,
        }
    }
}

impl RowPage {
    /// Readings on this page.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the page is empty.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The readings, borrowed, in seq order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = ReadingView<'_>> {
        self.rows.iter().map(|(n, row)| ReadingView {
            seq: row.seq,
            device_id: &n.device_id,
            metric: &n.metric,
            unit: match row.unit.as_deref() {
                None => n.base_unit.as_deref(),
                Some(UnitOverride::Absent) => None,
                Some(UnitOverride::Named(u)) => Some(u),
            },
            value: row.value,
            timestamp_ms: row.ts,
            received_at_ms: row.recv,
        })
    }

    /// The readings, owned.
    pub fn into_page(self) -> ReadingPage {
        ReadingPage {
            readings: self
                .rows
                .into_iter()
                .map(|(n, row)| StoredReading {
                    seq: row.seq,
                    reading: to_reading(row, &n),
                })
                .collect(),
            next_after: self.next_after,
        }
    }
}

/// One page of readings in seq order.
#[derive(Debug, Clone, Default)]
pub struct ReadingPage {
    /// The readings.
    pub readings: Vec<StoredReading>,
    /// Cursor for the next page when more rows match, else `None`.
    pub next_after: Option<u64>,
}

/// A rollup query. Event times: `from_ms` inclusive, `to_ms` exclusive; buckets are aligned to
/// multiples of `step_ms` since the epoch.
#[derive(Debug, Clone)]
pub struct RollupQuery {
    /// Topic filters (empty = all series).
    pub filters: Vec<TopicFilter>,
    /// Range start.
    pub from_ms: i64,
    /// Range end.
    pub to_ms: i64,
    /// Bucket width, > 0.
    pub step_ms: i64,
}

/// The rolled-up points of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesRollup {
    /// Device and metric.
    pub key: SeriesKey,
    /// Unit of the series.
    pub unit: Option<String>,
    /// Non-empty buckets in time order: (bucket start ms, aggregate).
    pub points: Vec<(i64, Aggregate)>,
}

/// Where the data for a rollup query came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollupSource {
    /// Hourly rollups (plus raw readings at unaligned edges).
    Hour,
    /// Minute rollups (plus raw readings at unaligned edges).
    Minute,
    /// Raw readings.
    Raw,
}

impl RollupSource {
    /// The source used for a step.
    pub fn for_step(step_ms: i64) -> Self {
        if step_ms % HOUR_MS == 0 {
            RollupSource::Hour
        } else if step_ms % MINUTE_MS == 0 {
            RollupSource::Minute
        } else {
            RollupSource::Raw
        }
    }

    /// Label for responses and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RollupSource::Hour => "1h",
            RollupSource::Minute => "1m",
            RollupSource::Raw => "raw",
        }
    }

    fn resolution(self) -> Option<Resolution> {
        match self {
            RollupSource::Hour => Some(Resolution::Hour),
            RollupSource::Minute => Some(Resolution::Minute),
            RollupSource::Raw => None,
        }
    }
}

/// Size and counters, for health and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes sled occupies on disk.
    pub size_on_disk: u64,
    /// Readings currently in the log.
    pub readings: u64,
    /// Highest seq ever assigned (0 = none yet).
    pub last_seq: u64,
    /// Series in the catalogue.
    pub series: u64,
    /// What committed batches wrote since the store was opened.
    pub written: WriteCounters,
}

/// What one retention step removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Log entries deleted.
    pub readings_deleted: u64,
    /// Of those, deleted for the disk budget (the others for their age).
    pub budget_deleted: u64,
    /// Rollup pages deleted.
    pub rollups_deleted: u64,
    /// Whether more old data is left (call again soon).
    pub more: bool,
}

/// Retention policy for [`Store::retain_step`].
#[derive(Debug, Clone, Copy)]
pub struct RetentionPolicy {
    /// Readings (by receive time) and rollup pages (by the end of the page's span) older than
    /// this are removed.
    pub max_age_ms: Option<i64>,
    /// Disk budget: while the store's live bytes are above [`LIVE_SHARE_PERCENT`] of this,
    /// the oldest readings are removed, except the newest that take up
    /// [`KEEP_SHARE_PERCENT`] of it (see [`Store::retain_step`] and [`BudgetStatus`]).
    pub disk_budget_bytes: Option<u64>,
    /// At most this many log entries are removed per step (whole blocks; at least one block).
    pub step: usize,
}

#[derive(Debug)]
struct Inner {
    db: sled::Db,
    tree: sled::Tree,
    state: Mutex<State>,
    /// Live byte count for the disk budget (only the retention task uses it; taken before
    /// `state`, never after).
    account: Mutex<budget::Account>,
    /// What retention last found and removed, for `/metrics` and the log.
    budget: Mutex<BudgetStatus>,
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

fn matches_any(filters: &[TopicFilter], topic: &str) -> bool {
    filters.is_empty() || filters.iter().any(|f| f.matches(topic))
}

fn to_reading(row: Row, names: &Names) -> Reading {
    let unit = match row.unit.map(|b| *b) {
        None => names.base_unit.clone(),
        Some(UnitOverride::Absent) => None,
        Some(UnitOverride::Named(u)) => Some(u),
    };
    Reading {
        device_id: names.device_id.clone(),
        metric: names.metric.clone(),
        value: row.value,
        unit,
        timestamp_ms: row.ts,
        received_at_ms: row.recv,
    }
}

/// Series per thread below which a rollup query is not split (thread start-up would cost
/// more than it saves).
const SERIES_PER_THREAD: usize = 8;

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

impl Store {
    /// Opens (or creates) the store in `dir`: recovers the next seq and the catalogue, and
    /// rebuilds the open chunks by replaying the log after the replay checkpoint.
    pub fn open(dir: &Path, opts: &StoreOptions) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: dir.to_path_buf(),
            source,
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
                state: Mutex::new(st),
                account: Mutex::new(budget::Account::default()),
                budget: Mutex::new(BudgetStatus::default()),
            }),
        })
    }

    fn state(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        self.inner.state.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Applies one batch atomically: assigns seqs to the readings that are not duplicates,
    /// writes log blocks and whatever chunks become due for sealing (with their rollups), and
    /// records presence changes. Returns, for each input reading in order, its seq or `None`
    /// when it was a duplicate of a stored reading.
    ///
    /// Every reading is taken to carry its device's own event time (so a reading with the
    /// same series, event time and value as a recent one is a duplicate); see
    /// [`Store::apply_from`] to say otherwise.
    ///
    /// Not flushed: call [`Store::flush_async`] (or [`Store::flush`]) before acknowledging.
    pub fn apply(
        &self,
        readings: &[Reading],
        presence: &[PresenceUpdate],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        self.apply_from(readings, &[], presence, &AckedDeliveries::default())
    }

    /// As [`Store::apply`], with each reading's [`Origin`] (`origins[i]` for `readings[i]`;
    /// missing entries are [`Origin::DEVICE_TIME`]). A reading is a duplicate when
    /// * its origin is a delivery the broker marked as a resend (DUP) and the store took that
    ///   delivery (same packet id, topic and payload) lately: see [`DeliveryId`]; or
    /// * it carries its device's event time, and a reading of the same series with the same
    ///   event time and value was stored within the last
    ///   [`StoreOptions::dedupe_window`] readings.
    ///
    /// A reading whose event time is its receive time is never merged by content.
    ///
    /// `acked` lists the external deliveries whose acknowledgement the broker has: their
    /// records are removed in this commit.
    pub fn apply_from(
        &self,
        readings: &[Reading],
        origins: &[Origin],
        presence: &[PresenceUpdate],
        acked: &AckedDeliveries,
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let mut guard = self.state()?;
        let st = &mut *guard;
        let tree = &self.inner.tree;
        let mut batch = Writes::default();
        let mut undo: HashMap<u32, Undo> = HashMap::new();
        let mut block: Vec<LogRow> = Vec::with_capacity(readings.len().min(BLOCK_MAX));
        let mut next_seq = st.next_seq;
        let mut next_sid = st.next_sid;
        let mut out = Vec::with_capacity(readings.len());
        let mut failure = None;
        let mut decoded = DecodedChunks::new();
        let (mut log_blocks, mut log_bytes) = (0u64, 0u64);
        let mut remembered = 0usize;
        let mut reserved = st.reserved;
        let mut taken = deliveries::Staged::default();
        st.deliveries.stage_acked(acked, &mut taken, &mut batch);

        for (i, r) in readings.iter().enumerate() {
            let origin = origins.get(i).copied().unwrap_or(Origin::DEVICE_TIME);
            if let Some(id) = &origin.delivery {
                if st.deliveries.take(id, &mut taken, &mut batch) {
                    out.push(None);
                    continue;
                }
            }
            let sid = match st.sid(&r.device_id, &r.metric) {
                Some(sid) => sid,
                None => {
                    let sid = next_sid;
                    next_sid = next_sid.saturating_add(1);
                    let s = Series::new(r);
                    match encode_rec(&s.rec, "series") {
                        Ok(rec) => batch.insert(&series_key(sid)[..], rec),
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                    st.sids
                        .entry(r.device_id.clone())
                        .or_default()
                        .insert(r.metric.clone(), sid);
                    st.series.insert(sid, s);
                    undo.insert(sid, Undo::created());
                    sid
                }
            };
            let Some(s) = st.series.get_mut(&sid) else {
                failure = Some(StoreError::Corrupt { what: "series map" });
                break;
            };
            let fp = recent::fingerprint(sid, r.timestamp_ms, r.value.to_bits());
            // Newer than the series' newest: new. Else new unless recently stored (then the
            // stored rows confirm it).
            if origin.device_time && r.timestamp_ms <= s.max_ts && st.recent.may_hold(fp) {
                match is_stored(tree, s, st.floor, sid, r, &mut decoded) {
                    Ok(true) => {
                        out.push(None);
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            undo.entry(sid).or_insert_with(|| Undo::of(s));
            let seq = next_seq;
            next_seq += 1;
            let row = Row {
                seq,
                ts: r.timestamp_ms,
                recv: r.received_at_ms,
                value: r.value,
                unit: s.unit_of(r),
            };
            if block.len() == BLOCK_MAX {
                log_bytes += put_block(&mut batch, &block) as u64;
                log_blocks += 1;
                block.clear();
            }
            block.push(LogRow {
                sid,
                row: row.clone(),
            });
            s.push(row, &r.unit);
            st.recent.push(fp);
            remembered += 1;
            out.push(Some(seq));
        }
        if !block.is_empty() {
            log_bytes += put_block(&mut batch, &block) as u64;
            log_blocks += 1;
        }

        let mut seals = Vec::new();
        if failure.is_none() {
            match stage_seals(tree, st, &undo, next_seq, &mut batch) {
                Ok(s) => seals = s,
                Err(e) => failure = Some(e),
            }
        }
        if failure.is_none() {
            if let Err(e) = stage_presence(tree, presence, &mut batch) {
                failure = Some(e);
            }
        }
        if failure.is_none() {
            st.deliveries.stage_cap(&mut taken, &mut batch);
            let checkpoint = checkpoint_after(st, &undo, &seals, next_seq);
            if checkpoint != st.replay_from {
                batch.insert(META_REPLAY, &checkpoint.to_be_bytes()[..]);
            }
            let reserve = (st.window / SEQ_RESERVE_FRACTION).max(1);
            if next_seq != st.next_seq && next_seq - 1 + reserve / 2 > st.reserved {
                reserved = next_seq - 1 + reserve;
                batch.insert(META_SEQ, &reserved.to_be_bytes()[..]);
            }
            if let Err(e) = batch.apply(tree) {
                failure = Some(e.into());
            }
        }
        if let Some(e) = failure {
            st.recent.unpush(remembered);
            rollback(st, undo, seals);
            return Err(e);
        }
        st.recent.trim();
        st.deliveries.commit(taken);
        // Durable in sled's write order: publish the staged state.
        st.next_seq = next_seq;
        st.next_sid = next_sid;
        st.reserved = reserved;
        let w = &mut st.written;
        w.log_blocks += log_blocks;
        w.log_bytes += log_bytes;
        for seal in &seals {
            w.chunks += seal.chunks;
            w.chunk_rows += seal.taken.len() as u64;
            w.chunk_bytes += seal.chunk_bytes;
            w.rollup_pages += seal.pages;
            w.rollup_bytes += seal.page_bytes;
        }
        let mut old_first: HashMap<u32, Option<u64>> =
            undo.iter().map(|(sid, u)| (*sid, u.first_open)).collect();
        for seal in seals {
            old_first
                .entry(seal.sid)
                .or_insert(seal.taken.first().map(|r| r.seq));
            if let Some(s) = st.series.get_mut(&seal.sid) {
                s.rec = seal.rec;
            }
        }
        for (sid, first) in old_first {
            if let Some(first) = first {
                st.open_index.remove(&(first, sid));
            }
            if let Some(first) = st.series.get(&sid).and_then(|s| s.open.first()) {
                st.open_index.insert((first.seq, sid));
            }
        }
        st.replay_from = st.checkpoint();
        Ok(out)
    }

    /// Applies the readings as one batch, flushes, and returns the stored ones with their seq
    /// (duplicates are left out).
    pub fn append_batch(&self, readings: &[Reading]) -> Result<Vec<(u64, Reading)>, StoreError> {
        let seqs = self.apply(readings, &[])?;
        self.flush()?;
        Ok(seqs
            .into_iter()
            .zip(readings)
            .filter_map(|(s, r)| s.map(|s| (s, r.clone())))
            .collect())
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

    /// Every series, sorted by device then metric.
    pub fn series(&self) -> Result<Vec<SeriesInfo>, StoreError> {
        let mut v: Vec<SeriesInfo> = self.state()?.series.values().map(Series::info).collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(v)
    }

    /// Every device that sent a status or a reading, sorted by id.
    pub fn devices(&self) -> Result<Vec<DeviceInfo>, StoreError> {
        let mut by_id: BTreeMap<String, DeviceInfo> = BTreeMap::new();
        let blank = |id: &str| DeviceInfo {
            device_id: id.to_owned(),
            online: None,
            since_ms: None,
            last_seen_ms: None,
            metrics: Vec::new(),
        };
        for r in self.inner.tree.scan_prefix([DEVICE]) {
            let (k, v) = r?;
            let id = String::from_utf8_lossy(&k[1..]).into_owned();
            let p: PresenceRecord = decode_rec(&v, "presence")?;
            let d = by_id.entry(id.clone()).or_insert_with(|| blank(&id));
            d.online = Some(p.online);
            d.since_ms = Some(p.since_ms);
        }
        let st = self.state()?;
        for s in st.series.values() {
            let id = &s.names.device_id;
            let d = by_id.entry(id.clone()).or_insert_with(|| blank(id));
            d.metrics.push(s.names.metric.clone());
            if let Some(last) = s.last {
                d.last_seen_ms = Some(d.last_seen_ms.map_or(last.recv, |t| t.max(last.recv)));
            }
        }
        drop(st);
        let mut v: Vec<DeviceInfo> = by_id.into_values().collect();
        for d in &mut v {
            d.metrics.sort();
        }
        Ok(v)
    }

    /// Names of every series, for turning log rows into readings.
    fn all_names(&self) -> Result<HashMap<u32, Arc<Names>>, StoreError> {
        Ok(self
            .state()?
            .series
            .iter()
            .map(|(sid, s)| (*sid, s.names.clone()))
            .collect())
    }

    /// The log entry at `seq`, as a reading.
    pub fn get(&self, seq: u64) -> Result<Option<Reading>, StoreError> {
        let Some((first, block)) = block_holding(&self.inner.tree, seq)? else {
            return Ok(None);
        };
        let rows = codec::decode_block(&block, first)?;
        let Some(row) = rows.into_iter().find(|r| r.row.seq == seq) else {
            return Ok(None);
        };
        let names = self.all_names()?;
        let n = names.get(&row.sid).ok_or(StoreError::Corrupt {
            what: "log (unknown series)",
        })?;
        Ok(Some(to_reading(row.row, n)))
    }

    /// Readings in seq order after `after` (up to `limit`), regardless of filter: the replay
    /// primitive for live resume and the uplink.
    pub fn log_after(&self, after: u64, limit: usize) -> Result<Vec<StoredReading>, StoreError> {
        let names = self.all_names()?;
        let mut rows = self.walk_log(after, limit.max(1), &names)?;
        rows.truncate(limit);
        Ok(RowPage {
            rows,
            next_after: None,
        }
        .into_page()
        .readings)
    }

    /// Up to `limit + 1` readings of the series in `names` after `after`, from the log.
    fn walk_log(
        &self,
        after: u64,
        limit: usize,
        names: &HashMap<u32, Arc<Names>>,
    ) -> Result<Vec<(Arc<Names>, Row)>, StoreError> {
        let tree = &self.inner.tree;
        let start = after.saturating_add(1);
        let first_key = match block_holding(tree, start)? {
            Some((first, _)) => first,
            None => start,
        };
        let mut out = Vec::new();
        for r in tree.range(log_key(first_key)..=log_key(u64::MAX)) {
            let (k, v) = r?;
            for lr in codec::decode_block(&v, u64_from(&k[1..]))? {
                if lr.row.seq <= after {
                    continue;
                }
                let Some(n) = names.get(&lr.sid) else {
                    continue;
                };
                out.push((n.clone(), lr.row));
                if out.len() > limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Copies, under the lock, what a query needs of the series matching `filters`.
    /// With `may_walk_log`, a query matching at least half the series is answered from the
    /// log (returned `true`) and no open rows are copied.
    fn snapshot(
        &self,
        filters: &[TopicFilter],
        from: i64,
        to: i64,
        may_walk_log: bool,
    ) -> Result<(Vec<SeriesSnapshot>, bool, u64), StoreError> {
        let st = self.state()?;
        let matched: Vec<(&u32, &Series)> = st
            .series
            .iter()
            .filter(|(_, s)| matches_any(filters, &s.names.topic))
            .collect();
        let walk_log = may_walk_log && matched.len() * 2 >= st.series.len();
        let (from, to) = if walk_log { (0, 0) } else { (from, to) };
        let out = matched
            .into_iter()
            .map(|(sid, s)| snapshot_of(*sid, s, from, to))
            .collect();
        Ok((out, walk_log, st.floor))
    }

    /// Sealed rows of one series with event time in `[from, to)`, seq in
    /// `(floor, sealed_through]`.
    fn sealed_rows(
        &self,
        sid: u32,
        from: i64,
        to: i64,
        floor: u64,
        sealed_through: u64,
        mut each: impl FnMut(Row),
    ) -> Result<(), StoreError> {
        if from >= to {
            return Ok(());
        }
        let lo = chunk_key(sid, from.saturating_sub(CHUNK_SPAN_MS), 0);
        let hi = chunk_key(sid, to, 0);
        for r in self.inner.tree.range(lo..hi) {
            let (_, v) = r?;
            for row in codec::decode_chunk(&v)? {
                if row.ts >= from && row.ts < to && row.seq > floor && row.seq <= sealed_through {
                    each(row);
                }
            }
        }
        Ok(())
    }

    /// Raw readings matching the query, in seq order, one page.
    pub fn readings(&self, q: &ReadingQuery) -> Result<ReadingPage, StoreError> {
        Ok(self.reading_rows(q)?.into_page())
    }

    /// [`Store::readings`] without copying the series' names into every reading.
    pub fn reading_rows(&self, q: &ReadingQuery) -> Result<RowPage, StoreError> {
        let limit = q.limit.max(1);
        let from = q.from_ms.unwrap_or(i64::MIN);
        let to = q.to_ms.unwrap_or(i64::MAX);
        if from >= to {
            return Ok(RowPage::default());
        }
        let unbounded_time = q.from_ms.is_none() && q.to_ms.is_none();
        let (snaps, walk_log, floor) = self.snapshot(&q.filters, from, to, unbounded_time)?;
        if snaps.is_empty() {
            return Ok(RowPage::default());
        }
        let mut rows = if walk_log {
            // Broad query: walk the log from the cursor.
            let names = snaps.iter().map(|s| (s.sid, s.names.clone())).collect();
            self.walk_log(q.after, limit, &names)?
        } else {
            // Selective query: chunks and open rows per series, keep the smallest seqs.
            let keep = limit + 1;
            let mut picked: Vec<(u64, usize, Row)> = Vec::new();
            let prune = |v: &mut Vec<(u64, usize, Row)>| {
                if v.len() > keep {
                    v.select_nth_unstable_by_key(keep - 1, |e| e.0);
                    v.truncate(keep);
                }
            };
            for (i, s) in snaps.iter().enumerate() {
                self.sealed_rows(s.sid, from, to, floor, s.sealed_through, |row| {
                    if row.seq > q.after {
                        picked.push((row.seq, i, row));
                    }
                })?;
                for row in &s.open {
                    if row.seq > q.after {
                        picked.push((row.seq, i, row.clone()));
                    }
                }
                if picked.len() > 4 * keep + 4096 {
                    prune(&mut picked);
                }
            }
            prune(&mut picked);
            picked.sort_unstable_by_key(|e| e.0);
            picked
                .into_iter()
                .map(|(_, i, row)| (snaps[i].names.clone(), row))
                .collect()
        };
        let next_after = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|(_, r)| r.seq)
        } else {
            None
        };
        Ok(RowPage { rows, next_after })
    }

    /// Adds the stored pages of `res` with bucket starts in `[from, to)` into step buckets.
    fn pages_into(
        &self,
        sid: u32,
        res: Resolution,
        from: i64,
        to: i64,
        buckets: &mut Buckets,
    ) -> Result<(), StoreError> {
        let lo = sid_time_key(res.tag(), sid, floor_to(from, res.page_ms()));
        let hi = sid_time_key(res.tag(), sid, to);
        for r in self.inner.tree.range(lo..hi) {
            let (k, v) = r?;
            let page_start = ts_from(k.get(5..13).ok_or(StoreError::Corrupt {
                what: "rollup page key",
            })?);
            rollup::decode_page(&v, page_start, res, |start, agg| {
                if start >= from && start < to {
                    buckets.add(start, &agg);
                }
            })?;
        }
        Ok(())
    }

    /// The buckets of one series for a rollup query, from a snapshot of it.
    fn series_buckets(
        &self,
        s: &SeriesSnapshot,
        q: &RollupQuery,
        step: i64,
        res: Option<Resolution>,
        floor: u64,
    ) -> Result<Vec<(i64, Aggregate)>, StoreError> {
        let mut buckets = Buckets::new(q.from_ms, q.to_ms, step);
        let raw = |from: i64, to: i64, b: &mut Buckets| {
            self.sealed_rows(s.sid, from, to, floor, s.sealed_through, |r| {
                b.add(r.ts, &Aggregate::one(r.value, r.ts, r.seq));
            })
        };
        let aligned = res.map(|res| {
            let unit = res.bucket_ms();
            (res, ceil_to(q.from_ms, unit), floor_to(q.to_ms, unit))
        });
        match aligned {
            Some((res, a_from, a_to)) if a_from < a_to => {
                raw(q.from_ms, a_from, &mut buckets)?;
                self.pages_into(s.sid, res, a_from, a_to, &mut buckets)?;
                raw(a_to, q.to_ms, &mut buckets)?;
            }
            _ => raw(q.from_ms, q.to_ms, &mut buckets)?,
        }
        // Open rows are never in pages.
        buckets.add_rows(&s.open);
        Ok(buckets.into_points())
    }

    /// Rolled-up points per matching series, from the coarsest stored resolution that divides
    /// `step_ms` (raw readings fill unaligned range edges, so results are exact).
    pub fn rollups(
        &self,
        q: &RollupQuery,
    ) -> Result<(RollupSource, Vec<SeriesRollup>), StoreError> {
        let step = q.step_ms.max(1);
        let source = RollupSource::for_step(step);
        let res = source.resolution();
        let (snaps, _, floor) = self.snapshot(&q.filters, q.from_ms, q.to_ms, false)?;
        // Series are independent: a big answer (24 h x 100 series) uses every core.
        let mut out = crate::split::map(snaps, SERIES_PER_THREAD, |mut s| {
            let mut attempt = 0;
            let buckets = loop {
                let buckets = self.series_buckets(&s, q, step, res, floor)?;
                // Pages hold sealed rows: if the series sealed since the snapshot, the rows
                // now in pages were also counted from the open copy. Take a new snapshot.
                let st = self.state()?;
                let Some(now) = st.series.get(&s.sid) else {
                    break buckets;
                };
                if res.is_none() || now.rec.sealed_through == s.sealed_through {
                    break buckets;
                }
                attempt += 1;
                s = snapshot_of(s.sid, now, q.from_ms, q.to_ms);
                if attempt >= 3 {
                    // Keep the writer out while this series is read once more.
                    break self.series_buckets(&s, q, step, res, floor)?;
                }
            };
            Ok::<_, StoreError>(SeriesRollup {
                key: SeriesKey {
                    device_id: s.names.device_id.clone(),
                    metric: s.names.metric.clone(),
                },
                unit: s.unit.clone(),
                points: buckets,
            })
        })?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((source, out))
    }

    /// One small retention step, oldest first and up to about `policy.step` readings: removes
    /// the log blocks whose readings are all older than the age limit and, with a disk budget,
    /// the oldest blocks while live bytes are above their share of the budget, never the newest
    /// readings (the rule is in the `budget` module); then the sealed chunks holding only
    /// removed readings and the rollup pages whose whole span is older than the age limit.
    /// Never removes a reading applied after the step started. With a budget, the first steps
    /// after open count the live bytes instead, in pieces (`more` set), and remove nothing.
    /// Holds the write lock only to take a snapshot and to install the result, so ingest is
    /// delayed by at most one small batch.
    pub fn retain_step(
        &self,
        now_ms: i64,
        policy: &RetentionPolicy,
    ) -> Result<RetentionOutcome, StoreError> {
        let cutoff = policy.max_age_ms.map(|a| now_ms.saturating_sub(a));
        let budget = policy.disk_budget_bytes;
        if cutoff.is_none() && budget.is_none() {
            return Ok(RetentionOutcome::default());
        }
        let tree = &self.inner.tree;
        let mut account = self
            .inner
            .account
            .lock()
            .map_err(|_| StoreError::Poisoned)?;
        if budget.is_some() && !account.is_counted() {
            if !account.is_scanning() {
                let st = self.state()?;
                let sealed = st
                    .series
                    .iter()
                    .map(|(sid, s)| (*sid, s.rec.sealed_through))
                    .collect();
                account.start_scan(marks_of(&st), st.next_seq, sealed);
            }
            if !account.scan_piece(tree)? {
                self.record_budget(budget, None, None, &RetentionOutcome::default())?;
                return Ok(RetentionOutcome {
                    more: true,
                    ..RetentionOutcome::default()
                });
            }
        }
        let step = policy.step.max(1) as u64;
        // Find what to delete without holding the state lock: the writer's `apply` waits on
        // it, and a sweep over every series' rollup pages took long enough to show as a
        // periodic stall of live delivery (p99 ~200 ms every `retention_interval_s`). Only this
        // task deletes, so the snapshot stays valid; series created meanwhile have nothing
        // old to delete, and readings applied meanwhile (seq above `head`) are not touched.
        let (mut floor, sids, head, readings, marks) = {
            let st = self.state()?;
            (
                st.floor,
                st.series.keys().copied().collect::<Vec<u32>>(),
                st.next_seq - 1,
                st.series.values().map(|s| s.count).sum::<u64>(),
                marks_of(&st),
            )
        };
        let plan = match (budget, account.live(&marks)) {
            (Some(b), Some(live)) => budget::plan(b, &live, readings, head),
            _ => None,
        };
        let mut batch = Writes::default();
        let mut outcome = RetentionOutcome::default();
        let mut freed = LiveBytes::default();
        // Live bytes the budget's removals free: each block with its readings' share of chunks.
        let mut freed_estimate = 0f64;
        let mut deleted: HashMap<u32, Vec<u64>> = HashMap::new();
        for r in tree.range(log_key(0)..=log_key(u64::MAX)) {
            let (k, v) = r?;
            let rows = codec::decode_block(&v, u64_from(&k[1..]))?;
            let last = rows.last().map_or(0, |r| r.row.seq);
            if last > head {
                break;
            }
            let expired = cutoff.is_some_and(|c| rows.iter().all(|r| r.row.recv < c));
            let for_budget = !expired
                && plan.is_some_and(|p| freed_estimate < p.to_free as f64 && last <= p.keep_after);
            if !(expired || for_budget) {
                break;
            }
            if outcome.readings_deleted > 0 && outcome.readings_deleted + rows.len() as u64 > step {
                outcome.more = true;
                break;
            }
            batch.remove(k);
            outcome.readings_deleted += rows.len() as u64;
            if for_budget {
                outcome.budget_deleted += rows.len() as u64;
            }
            freed.log += v.len() as u64;
            freed_estimate += v.len() as f64 * plan.map_or(1.0, |p| p.per_log_byte);
            for lr in rows {
                floor = floor.max(lr.row.seq);
                deleted.entry(lr.sid).or_default().push(lr.row.seq);
            }
        }
        // Settled short of the budget: only kept readings (or none) were left to remove.
        let floor_reached =
            !outcome.more && plan.is_some_and(|p| freed_estimate < p.to_free as f64);
        // Look again soon: the next step sees what this one freed, exactly.
        outcome.more |= outcome.budget_deleted > 0;
        let mut chunks_deleted = 0u64;
        if outcome.readings_deleted > 0 {
            for sid in &sids {
                let mut prefix = [CHUNK; 5];
                prefix[1..].copy_from_slice(&sid.to_be_bytes());
                for r in tree.scan_prefix(prefix) {
                    let (k, v) = r?;
                    let rows = codec::decode_chunk(&v)?;
                    if rows.iter().any(|r| r.seq > floor) {
                        break;
                    }
                    batch.remove(k);
                    chunks_deleted += 1;
                    freed.chunks += v.len() as u64;
                }
            }
        }
        if let Some(c) = cutoff {
            'res: for res in Resolution::BOTH {
                let last_start = c.saturating_sub(res.page_ms());
                for sid in &sids {
                    let lo = sid_time_key(res.tag(), *sid, i64::MIN);
                    let hi = sid_time_key(res.tag(), *sid, last_start.saturating_add(1));
                    for r in tree.range(lo..hi) {
                        let (k, v) = r?;
                        if outcome.rollups_deleted >= step {
                            outcome.more = true;
                            break 'res;
                        }
                        batch.remove(k);
                        outcome.rollups_deleted += 1;
                        freed.rollups += v.len() as u64;
                    }
                }
            }
        }
        if outcome.readings_deleted > 0 || outcome.rollups_deleted > 0 || chunks_deleted > 0 {
            self.install_removal(batch, floor, &deleted)?;
            account.deleted(freed);
        }
        let live = account.live(&marks_of(&*self.state()?));
        self.record_budget(budget, live, plan.map(|p| (p, floor_reached)), &outcome)?;
        Ok(outcome)
    }

    /// Applies a retention step's deletions and updates the series they touched.
    fn install_removal(
        &self,
        mut batch: Writes,
        floor: u64,
        deleted: &HashMap<u32, Vec<u64>>,
    ) -> Result<(), StoreError> {
        let tree = &self.inner.tree;
        let mut st = self.state()?;
        let mut updated = Vec::new();
        for (sid, seqs) in deleted {
            if let Some(s) = st.series.get(sid) {
                let sealed = seqs.iter().filter(|q| **q <= s.rec.sealed_through).count() as u64;
                let mut rec = s.rec.clone();
                rec.sealed_count = rec.sealed_count.saturating_sub(sealed);
                rec.unit.clone_from(&s.unit);
                rec.last = s.last;
                batch.insert(&series_key(*sid)[..], encode_rec(&rec, "series")?);
                updated.push((*sid, rec, seqs.len() as u64));
            }
        }
        if floor != st.floor {
            batch.insert(META_FLOOR, &floor.to_be_bytes()[..]);
        }
        batch.apply(tree)?;
        let st = &mut *st;
        st.floor = floor;
        for (sid, rec, n) in updated {
            if let Some(s) = st.series.get_mut(&sid) {
                s.rec = rec;
                s.count = s.count.saturating_sub(n);
                if let Some(first) = s.open.first() {
                    st.open_index.remove(&(first.seq, sid));
                }
                let rows = std::mem::take(&mut s.open);
                s.set_open(rows.into_iter().filter(|r| r.seq > floor).collect());
                if let Some(first) = s.open.first() {
                    st.open_index.insert((first.seq, sid));
                }
            }
        }
        Ok(())
    }

    /// Records a retention step in the [`BudgetStatus`]: what it removed, the live bytes after
    /// it and, when it settled (nothing more to remove now), whether it stopped at the floor.
    fn record_budget(
        &self,
        budget: Option<u64>,
        live: Option<LiveBytes>,
        plan: Option<(budget::Plan, bool)>,
        outcome: &RetentionOutcome,
    ) -> Result<(), StoreError> {
        let readings: u64 = self.state()?.series.values().map(|s| s.count).sum();
        let mut status = self.inner.budget.lock().map_err(|_| StoreError::Poisoned)?;
        status.removed_for_budget += outcome.budget_deleted;
        status.removed_for_age += outcome.readings_deleted - outcome.budget_deleted;
        status.budget_bytes = budget;
        status.live_limit_bytes = budget.map(budget::live_limit);
        status.live = live;
        let Some(b) = budget else {
            status.kept_readings = 0;
            status.floor_reached = false;
            return Ok(());
        };
        status.kept_readings = match (plan, live) {
            (Some((p, _)), _) => p.kept,
            (None, Some(l)) => budget::kept_readings(b, &l, readings),
            (None, None) => 0,
        };
        if live.is_some() && !outcome.more {
            status.floor_reached = plan.is_some_and(|(_, reached)| reached);
        }
        Ok(())
    }

    /// Where the store stands against its disk budget: what retention removed and found at
    /// its last step, with the files' size now.
    pub fn budget_status(&self) -> Result<BudgetStatus, StoreError> {
        let mut s = self
            .inner
            .budget
            .lock()
            .map(|s| *s)
            .map_err(|_| StoreError::Poisoned)?;
        s.file_bytes = self.inner.db.size_on_disk()?;
        s.exceeded = match (s.budget_bytes, s.live) {
            (Some(b), Some(_)) => s.floor_reached || s.file_bytes > b,
            _ => false,
        };
        Ok(s)
    }
}

/// The counters live bytes are derived from.
fn marks_of(st: &State) -> budget::Marks {
    budget::Marks {
        written: st.written,
        rollup_bytes_replaced: st.rollup_bytes_replaced,
    }
}

fn stage_presence(
    tree: &sled::Tree,
    presence: &[PresenceUpdate],
    batch: &mut Writes,
) -> Result<(), StoreError> {
    let mut latest: HashMap<&str, bool> = HashMap::new();
    for p in presence {
        let key = device_key(&p.device_id);
        let current = match latest.get(p.device_id.as_str()) {
            Some(online) => Some(*online),
            None => match tree.get(&key)? {
                Some(v) => Some(decode_rec::<PresenceRecord>(&v, "presence")?.online),
                None => None,
            },
        };
        if current != Some(p.online) {
            batch.insert(
                key,
                encode_rec(
                    &PresenceRecord {
                        online: p.online,
                        since_ms: p.at_ms,
                    },
                    "presence",
                )?,
            );
            latest.insert(&p.device_id, p.online);
        }
    }
    Ok(())
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
