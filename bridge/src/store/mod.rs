//! The event log and its read models, on sled. This is the only module that names sled.
//!
//! # Model
//!
//! The log is the record: every stored reading is in exactly one log block. The per-series
//! chunks and the rollup pages are read models derived from it (DESIGN.md principle 1):
//! * the writer's batch becomes one or more **log blocks** (up to [`BLOCK_MAX`] consecutive
//!   readings each, seqs implicit);
//! * each series has an **open chunk** in memory (its readings not yet sealed). A chunk is
//!   sealed to sled, sorted by event time, when it holds [`CHUNK_ROWS`] readings, when its event
//!   times span more than [`CHUNK_SPAN_MS`], or when its oldest reading is more than
//!   [`StoreOptions::dedupe_window`] seqs behind the log head. Sealing also merges the chunk's
//!   readings into the minute and hour **rollup pages**, in the same batch;
//! * queries merge sealed chunks and pages from sled with the open chunks in memory.
//!
//! Open chunks are never written on their own: [`Store::open`] rebuilds them by replaying the
//! log after the replay checkpoint (at most `dedupe_window` readings), so a commit writes its
//! log blocks plus whatever it seals, and nothing per reading elsewhere.
//!
//! # On-disk layout
//!
//! One sled tree, so that one [`sled::Batch`] applies a whole commit (blocks, seals, pages,
//! catalogue, checkpoints) atomically: after a crash the store holds all of a batch or none of
//! it. Keys start with a one-byte tag; times in keys are sign-flipped big-endian so they sort:
//!
//! | key | value |
//! | --- | --- |
//! | `L` first seq (u64 BE) | log block ([`codec`]) |
//! | `C` sid (u32 BE) min event time first seq | sealed chunk of one series ([`codec`]) |
//! | `M` sid hour start | the minute buckets of that hour ([`rollup`]) |
//! | `H` sid day start | the hour buckets of that day ([`rollup`]) |
//! | `S` sid (u32 BE) | series record (postcard): names, base unit, last reading, sealed-through seq, sealed count |
//! | `D` deviceId | device presence (postcard) |
//! | `Zseq` | highest seq ever assigned (retention emptying the log cannot reset seq) |
//! | `Zreplay` | replay checkpoint: every reading before this seq is sealed or deleted |
//! | `Zfloor` | highest seq deleted by retention (older chunk rows are hidden) |
//!
//! # Concurrency
//!
//! Writes ([`Store::apply`], [`Store::retain_step`]) are meant to come from one task (the
//! writer); they serialise on an internal `std::sync::Mutex` that is never held across an
//! `.await`. Queries take that lock only to copy what they need from the open chunks, then
//! read sled (lock-free) and see only whole batches; rows sealed meanwhile are recognised by
//! their seq so nothing is counted twice.

mod codec;
mod rollup;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use edgewatch_protocol::{Reading, SeriesKey, TopicFilter};
use serde::{Deserialize, Serialize};

use codec::{LogRow, Malformed, Row, UnitOverride};
use rollup::{ceil_to, floor_to, Resolution};
pub use rollup::{Aggregate, HOUR_MS, MINUTE_MS};

const LOG: u8 = b'L';
const CHUNK: u8 = b'C';
const SERIES: u8 = b'S';
const DEVICE: u8 = b'D';
const META_SEQ: &[u8] = b"Zseq";
const META_REPLAY: &[u8] = b"Zreplay";
const META_FLOOR: &[u8] = b"Zfloor";

/// Most readings in one log block (a larger batch is split).
pub const BLOCK_MAX: usize = 1000;
/// Readings in a full chunk.
pub const CHUNK_ROWS: usize = 512;
/// Largest event-time span of one sealed chunk: a time-range query looks this far back.
pub const CHUNK_SPAN_MS: i64 = 15 * 60_000;

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
    /// A writer panicked while holding the store's state.
    #[error("store state poisoned by an earlier panic")]
    Poisoned,
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
    /// Most readings kept in open chunks in memory: the window in which a redelivered reading
    /// is recognised without reading sled, and the bound on the log tail [`Store::open`]
    /// replays. A series whose oldest open reading falls this many seqs behind is sealed.
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
}

/// What one retention step removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Log entries deleted.
    pub readings_deleted: u64,
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
    /// When the database is larger than this, the oldest readings are removed.
    pub disk_budget_bytes: Option<u64>,
    /// At most this many log entries are removed per step (whole blocks; at least one block).
    pub step: usize,
}

/// The latest reading of a series (by seq).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct LastReading {
    value: f64,
    ts: i64,
    recv: i64,
    seq: u64,
}

/// The persisted part of a series: written when the series is created and when it seals.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SeriesRecord {
    device_id: String,
    metric: String,
    /// Unit of the first reading; rows store a unit only when it differs.
    base_unit: Option<String>,
    /// Unit of the latest reading that had one, as of the last write.
    unit: Option<String>,
    /// Latest reading as of the last write.
    last: Option<LastReading>,
    /// Every reading of this series up to this seq is in a sealed chunk.
    sealed_through: u64,
    /// Readings in sealed chunks that retention has not deleted.
    sealed_count: u64,
    /// Highest event time in sealed chunks.
    sealed_max_ts: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PresenceRecord {
    online: bool,
    since_ms: i64,
}

/// Names of a series, shared with queries without copying strings.
#[derive(Debug)]
struct Names {
    device_id: String,
    metric: String,
    topic: String,
    base_unit: Option<String>,
}

/// A series in memory: its record plus the live part derived from the open chunk.
#[derive(Debug)]
struct Series {
    names: Arc<Names>,
    rec: SeriesRecord,
    /// Readings not sealed yet, in seq order.
    open: Vec<Row>,
    /// Lowest and highest event time in `open` (`MAX`, `MIN` when empty).
    open_span: (i64, i64),
    /// Readings in the log (sealed and open).
    count: u64,
    /// Highest event time stored: a newer reading cannot be a duplicate.
    max_ts: i64,
    unit: Option<String>,
    last: Option<LastReading>,
}

impl Series {
    fn push(&mut self, row: Row, unit: &Option<String>) {
        self.count += 1;
        self.max_ts = self.max_ts.max(row.ts);
        self.last = Some(LastReading {
            value: row.value,
            ts: row.ts,
            recv: row.recv,
            seq: row.seq,
        });
        if unit.is_some() {
            self.unit.clone_from(unit);
        }
        self.open_span = (self.open_span.0.min(row.ts), self.open_span.1.max(row.ts));
        self.open.push(row);
    }

    /// Replaces the open rows (after a seal, a rollback or retention).
    fn set_open(&mut self, rows: Vec<Row>) {
        self.open_span = rows.iter().fold((i64::MAX, i64::MIN), |(lo, hi), r| {
            (lo.min(r.ts), hi.max(r.ts))
        });
        self.open = rows;
    }

    fn info(&self) -> SeriesInfo {
        let last = self.last.unwrap_or_default();
        SeriesInfo {
            key: SeriesKey {
                device_id: self.names.device_id.clone(),
                metric: self.names.metric.clone(),
            },
            unit: self.unit.clone(),
            last_value: last.value,
            last_timestamp_ms: last.ts,
            last_seen_ms: last.recv,
            last_seq: last.seq,
            count: self.count,
        }
    }

    fn unit_of(&self, r: &Reading) -> Option<Box<UnitOverride>> {
        if r.unit == self.names.base_unit {
            None
        } else {
            Some(Box::new(match &r.unit {
                None => UnitOverride::Absent,
                Some(u) => UnitOverride::Named(u.clone()),
            }))
        }
    }

    /// Whether the open chunk must be sealed now.
    fn seal_due(&self) -> bool {
        let (lo, hi) = self.open_span;
        self.open.len() >= CHUNK_ROWS
            || (!self.open.is_empty() && hi.saturating_sub(lo) > CHUNK_SPAN_MS)
    }
}

#[derive(Debug)]
struct State {
    next_seq: u64,
    next_sid: u32,
    sids: HashMap<String, HashMap<String, u32>>,
    series: HashMap<u32, Series>,
    /// (seq of the first open row, sid) of every series with an open chunk.
    open_index: BTreeSet<(u64, u32)>,
    /// Highest seq deleted by retention.
    floor: u64,
    /// Replay checkpoint as persisted.
    replay_from: u64,
    /// Bound on open rows, from [`StoreOptions::dedupe_window`].
    window: u64,
}

impl State {
    fn sid(&self, device: &str, metric: &str) -> Option<u32> {
        self.sids.get(device).and_then(|m| m.get(metric)).copied()
    }

    fn checkpoint(&self) -> u64 {
        self.open_index
            .first()
            .map_or(self.next_seq, |(seq, _)| *seq)
    }
}

#[derive(Debug)]
struct Inner {
    db: sled::Db,
    tree: sled::Tree,
    state: Mutex<State>,
}

/// Handle to the store. Cloning is cheap (one `Arc`).
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

// ---------- keys ----------

fn ts_bytes(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

fn ts_from(b: &[u8]) -> i64 {
    (u64_from(b) ^ (1 << 63)) as i64
}

fn u64_from(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(..8) {
        a.copy_from_slice(s);
    }
    u64::from_be_bytes(a)
}

fn u32_from(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(..4) {
        a.copy_from_slice(s);
    }
    u32::from_be_bytes(a)
}

fn log_key(seq: u64) -> [u8; 9] {
    let mut k = [LOG; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn sid_time_key(tag: u8, sid: u32, ts: i64) -> [u8; 13] {
    let mut k = [tag; 13];
    k[1..5].copy_from_slice(&sid.to_be_bytes());
    k[5..13].copy_from_slice(&ts_bytes(ts));
    k
}

fn chunk_key(sid: u32, min_ts: i64, first_seq: u64) -> [u8; 21] {
    let mut k = [CHUNK; 21];
    k[..13].copy_from_slice(&sid_time_key(CHUNK, sid, min_ts));
    k[13..].copy_from_slice(&first_seq.to_be_bytes());
    k
}

fn series_key(sid: u32) -> [u8; 5] {
    let mut k = [SERIES; 5];
    k[1..].copy_from_slice(&sid.to_be_bytes());
    k
}

fn device_key(device: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(device.len() + 1);
    k.push(DEVICE);
    k.extend_from_slice(device.as_bytes());
    k
}

fn decode_rec<T: for<'de> Deserialize<'de>>(b: &[u8], what: &'static str) -> Result<T, StoreError> {
    postcard::from_bytes(b).map_err(|_| StoreError::Corrupt { what })
}

fn encode_rec<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising plain structs of strings and numbers to a Vec cannot fail.
    postcard::to_allocvec(v).unwrap_or_default()
}

fn read_u64(tree: &sled::Tree, key: &[u8], what: &'static str) -> Result<u64, StoreError> {
    match tree.get(key)? {
        Some(v) if v.len() == 8 => Ok(u64_from(&v)),
        Some(_) => Err(StoreError::Corrupt { what }),
        None => Ok(0),
    }
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

/// What a query copied from one series under the lock.
#[derive(Debug)]
struct SeriesSnapshot {
    sid: u32,
    names: Arc<Names>,
    unit: Option<String>,
    /// Rows in sealed chunks with a higher seq were sealed after this snapshot and are in
    /// `open` instead.
    sealed_through: u64,
    /// Open rows inside the query's time range.
    open: Vec<Row>,
}

/// What `apply` must restore for a series if the batch does not reach sled.
#[derive(Debug)]
struct Undo {
    created: bool,
    open_len: usize,
    first_open: Option<u64>,
    count: u64,
    max_ts: i64,
    unit: Option<String>,
    last: Option<LastReading>,
}

/// A seal staged in a batch: the rows taken out of the open chunk (seq order) and the new
/// record.
#[derive(Debug)]
struct StagedSeal {
    sid: u32,
    taken: Vec<Row>,
    rec: SeriesRecord,
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
            next_sid,
            sids,
            series,
            open_index: BTreeSet::new(),
            floor,
            replay_from,
            window: opts.dedupe_window.max(1) as u64,
        };
        replay(&tree, &mut st)?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                tree,
                state: Mutex::new(st),
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
    /// Not flushed: call [`Store::flush_async`] (or [`Store::flush`]) before acknowledging.
    pub fn apply(
        &self,
        readings: &[Reading],
        presence: &[PresenceUpdate],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let mut guard = self.state()?;
        let st = &mut *guard;
        let tree = &self.inner.tree;
        let mut batch = sled::Batch::default();
        let mut undo: HashMap<u32, Undo> = HashMap::new();
        let mut block: Vec<LogRow> = Vec::with_capacity(readings.len().min(BLOCK_MAX));
        let mut next_seq = st.next_seq;
        let mut next_sid = st.next_sid;
        let mut out = Vec::with_capacity(readings.len());
        let mut failure = None;

        for r in readings {
            let sid = match st.sid(&r.device_id, &r.metric) {
                Some(sid) => sid,
                None => {
                    let sid = next_sid;
                    next_sid = next_sid.saturating_add(1);
                    let s = Series::new(r);
                    batch.insert(&series_key(sid)[..], encode_rec(&s.rec));
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
            if r.timestamp_ms <= s.max_ts {
                match is_stored(tree, s, st.floor, sid, r) {
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
                put_block(&mut batch, &block);
                block.clear();
            }
            block.push(LogRow {
                sid,
                row: row.clone(),
            });
            s.push(row, &r.unit);
            out.push(Some(seq));
        }
        put_block(&mut batch, &block);

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
            let checkpoint = checkpoint_after(st, &undo, &seals, next_seq);
            if checkpoint != st.replay_from {
                batch.insert(META_REPLAY, &checkpoint.to_be_bytes()[..]);
            }
            if next_seq != st.next_seq {
                batch.insert(META_SEQ, &(next_seq - 1).to_be_bytes()[..]);
            }
            if let Err(e) = tree.apply_batch(batch) {
                failure = Some(e.into());
            }
        }
        if let Some(e) = failure {
            rollback(st, undo, seals);
            return Err(e);
        }
        // Durable in sled's write order: publish the staged state.
        st.next_seq = next_seq;
        st.next_sid = next_sid;
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

    /// Highest seq assigned so far (0 when none).
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(self.state()?.next_seq - 1)
    }

    /// Counters and size on disk.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let (last_seq, readings, series) = {
            let st = self.state()?;
            (
                st.next_seq - 1,
                st.series.values().map(|s| s.count).sum(),
                st.series.len() as u64,
            )
        };
        Ok(StoreStats {
            size_on_disk: self.inner.db.size_on_disk()?,
            readings,
            last_seq,
            series,
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
        Ok(rows)
    }

    /// Up to `limit + 1` readings of the series in `names` after `after`, from the log.
    fn walk_log(
        &self,
        after: u64,
        limit: usize,
        names: &HashMap<u32, Arc<Names>>,
    ) -> Result<Vec<StoredReading>, StoreError> {
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
                out.push(StoredReading {
                    seq: lr.row.seq,
                    reading: to_reading(lr.row, n),
                });
                if out.len() > limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Copies, under the lock, what a query needs of the series matching `filters`.
    fn snapshot(
        &self,
        filters: &[TopicFilter],
        from: i64,
        to: i64,
    ) -> Result<(Vec<SeriesSnapshot>, usize, u64), StoreError> {
        let st = self.state()?;
        let mut out = Vec::new();
        for (sid, s) in &st.series {
            if !matches_any(filters, &s.names.topic) {
                continue;
            }
            out.push(snapshot_of(*sid, s, from, to));
        }
        Ok((out, st.series.len(), st.floor))
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
        let limit = q.limit.max(1);
        let from = q.from_ms.unwrap_or(i64::MIN);
        let to = q.to_ms.unwrap_or(i64::MAX);
        if from >= to {
            return Ok(ReadingPage::default());
        }
        let (snaps, total, floor) = self.snapshot(&q.filters, from, to)?;
        if snaps.is_empty() {
            return Ok(ReadingPage::default());
        }
        let unbounded_time = q.from_ms.is_none() && q.to_ms.is_none();
        let mut rows = if unbounded_time && snaps.len() * 2 >= total {
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
                .map(|(seq, i, row)| StoredReading {
                    seq,
                    reading: to_reading(row, &snaps[i].names),
                })
                .collect()
        };
        let next_after = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|r| r.seq)
        } else {
            None
        };
        Ok(ReadingPage {
            readings: rows,
            next_after,
        })
    }

    /// Adds the stored pages of `res` with bucket starts in `[from, to)` into step buckets.
    fn pages_into(
        &self,
        sid: u32,
        res: Resolution,
        from: i64,
        to: i64,
        step: i64,
        buckets: &mut BTreeMap<i64, rollup::Aggregate>,
    ) -> Result<(), StoreError> {
        let lo = sid_time_key(res.tag(), sid, floor_to(from, res.page_ms()));
        let hi = sid_time_key(res.tag(), sid, to);
        for r in self.inner.tree.range(lo..hi) {
            let (k, v) = r?;
            let page_start = ts_from(&k[5..13]);
            rollup::decode_page(&v, page_start, res, |start, agg| {
                if start >= from && start < to {
                    buckets
                        .entry(floor_to(start, step))
                        .and_modify(|a| a.merge(&agg))
                        .or_insert(agg);
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
    ) -> Result<BTreeMap<i64, Aggregate>, StoreError> {
        let mut buckets = BTreeMap::new();
        let raw = |from: i64, to: i64, b: &mut BTreeMap<i64, Aggregate>| {
            let mut rows = Vec::new();
            self.sealed_rows(s.sid, from, to, floor, s.sealed_through, |r| rows.push(r))?;
            rollup::add_rows(&rows, step, b);
            Ok::<(), StoreError>(())
        };
        let aligned = res.map(|res| {
            let unit = res.bucket_ms();
            (res, ceil_to(q.from_ms, unit), floor_to(q.to_ms, unit))
        });
        match aligned {
            Some((res, a_from, a_to)) if a_from < a_to => {
                raw(q.from_ms, a_from, &mut buckets)?;
                self.pages_into(s.sid, res, a_from, a_to, step, &mut buckets)?;
                raw(a_to, q.to_ms, &mut buckets)?;
            }
            _ => raw(q.from_ms, q.to_ms, &mut buckets)?,
        }
        // Open rows are never in pages.
        rollup::add_rows(&s.open, step, &mut buckets);
        Ok(buckets)
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
        let (snaps, _, floor) = self.snapshot(&q.filters, q.from_ms, q.to_ms)?;
        let mut out = Vec::with_capacity(snaps.len());
        for mut s in snaps {
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
            out.push(SeriesRollup {
                key: SeriesKey {
                    device_id: s.names.device_id.clone(),
                    metric: s.names.metric.clone(),
                },
                unit: s.unit.clone(),
                points: buckets.into_iter().collect(),
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((source, out))
    }

    /// One small retention step: removes the oldest log blocks whose readings are all older
    /// than the age limit (or the oldest blocks while over the disk budget), up to about
    /// `policy.step` readings, then sealed chunks holding only removed readings and rollup
    /// pages whose whole span is older than the age limit. Holds the write lock only for this
    /// step, so ingest is delayed by at most one small batch.
    pub fn retain_step(
        &self,
        now_ms: i64,
        policy: &RetentionPolicy,
    ) -> Result<RetentionOutcome, StoreError> {
        let over_budget = match policy.disk_budget_bytes {
            Some(b) => self.inner.db.size_on_disk()? > b,
            None => false,
        };
        let cutoff = policy.max_age_ms.map(|a| now_ms.saturating_sub(a));
        if !over_budget && cutoff.is_none() {
            return Ok(RetentionOutcome::default());
        }
        let step = policy.step.max(1) as u64;
        let mut st = self.state()?;
        let tree = &self.inner.tree;
        let mut batch = sled::Batch::default();
        let mut outcome = RetentionOutcome::default();
        let mut deleted: HashMap<u32, Vec<u64>> = HashMap::new();
        let mut floor = st.floor;
        for r in tree.range(log_key(0)..=log_key(u64::MAX)) {
            let (k, v) = r?;
            let rows = codec::decode_block(&v, u64_from(&k[1..]))?;
            let expired = cutoff.is_some_and(|c| rows.iter().all(|r| r.row.recv < c));
            if !(expired || over_budget) {
                break;
            }
            if outcome.readings_deleted > 0 && outcome.readings_deleted + rows.len() as u64 > step {
                outcome.more = true;
                break;
            }
            batch.remove(k);
            outcome.readings_deleted += rows.len() as u64;
            for lr in rows {
                floor = floor.max(lr.row.seq);
                deleted.entry(lr.sid).or_default().push(lr.row.seq);
            }
        }
        let mut chunks_deleted = 0u64;
        if outcome.readings_deleted > 0 {
            for sid in st.series.keys() {
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
                }
            }
        }
        if let Some(c) = cutoff {
            'res: for res in Resolution::BOTH {
                let last_start = c.saturating_sub(res.page_ms());
                for sid in st.series.keys() {
                    let lo = sid_time_key(res.tag(), *sid, i64::MIN);
                    let hi = sid_time_key(res.tag(), *sid, last_start.saturating_add(1));
                    for r in tree.range(lo..hi) {
                        let (k, _) = r?;
                        if outcome.rollups_deleted >= step {
                            outcome.more = true;
                            break 'res;
                        }
                        batch.remove(k);
                        outcome.rollups_deleted += 1;
                    }
                }
            }
        }
        if outcome.readings_deleted == 0 && outcome.rollups_deleted == 0 && chunks_deleted == 0 {
            return Ok(outcome);
        }
        let mut updated = Vec::new();
        for (sid, seqs) in &deleted {
            if let Some(s) = st.series.get(sid) {
                let sealed = seqs.iter().filter(|q| **q <= s.rec.sealed_through).count() as u64;
                let mut rec = s.rec.clone();
                rec.sealed_count = rec.sealed_count.saturating_sub(sealed);
                rec.unit.clone_from(&s.unit);
                rec.last = s.last;
                batch.insert(&series_key(*sid)[..], encode_rec(&rec));
                updated.push((*sid, rec, seqs.len() as u64));
            }
        }
        if floor != st.floor {
            batch.insert(META_FLOOR, &floor.to_be_bytes()[..]);
        }
        tree.apply_batch(batch)?;
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
        Ok(outcome)
    }
}

impl Series {
    fn new(r: &Reading) -> Series {
        Series::from_record(SeriesRecord {
            device_id: r.device_id.clone(),
            metric: r.metric.clone(),
            base_unit: r.unit.clone(),
            unit: None,
            last: None,
            sealed_through: 0,
            sealed_count: 0,
            sealed_max_ts: i64::MIN,
        })
    }

    fn from_record(rec: SeriesRecord) -> Series {
        let names = Arc::new(Names {
            topic: format!("sensors/{}/{}", rec.device_id, rec.metric),
            device_id: rec.device_id.clone(),
            metric: rec.metric.clone(),
            base_unit: rec.base_unit.clone(),
        });
        Series {
            names,
            open: Vec::new(),
            open_span: (i64::MAX, i64::MIN),
            count: rec.sealed_count,
            max_ts: rec.sealed_max_ts,
            unit: rec.unit.clone(),
            last: rec.last,
            rec,
        }
    }
}

impl Undo {
    fn created() -> Undo {
        Undo {
            created: true,
            open_len: 0,
            first_open: None,
            count: 0,
            max_ts: i64::MIN,
            unit: None,
            last: None,
        }
    }

    fn of(s: &Series) -> Undo {
        Undo {
            created: false,
            open_len: s.open.len(),
            first_open: s.open.first().map(|r| r.seq),
            count: s.count,
            max_ts: s.max_ts,
            unit: s.unit.clone(),
            last: s.last,
        }
    }
}

fn snapshot_of(sid: u32, s: &Series, from: i64, to: i64) -> SeriesSnapshot {
    SeriesSnapshot {
        sid,
        names: s.names.clone(),
        unit: s.unit.clone(),
        sealed_through: s.rec.sealed_through,
        open: s
            .open
            .iter()
            .filter(|r| r.ts >= from && r.ts < to)
            .cloned()
            .collect(),
    }
}

/// The replay checkpoint once the batch is applied: the first seq of the oldest open chunk
/// that stays open, or the next seq.
fn checkpoint_after(
    st: &State,
    touched: &HashMap<u32, Undo>,
    seals: &[StagedSeal],
    next_seq: u64,
) -> u64 {
    let sealed: HashSet<u32> = seals.iter().map(|s| s.sid).collect();
    let mut cp = next_seq;
    if let Some((first, _)) = st.open_index.iter().find(|(_, sid)| !sealed.contains(sid)) {
        cp = cp.min(*first);
    }
    for sid in touched.keys().filter(|sid| !sealed.contains(sid)) {
        if let Some(first) = st.series.get(sid).and_then(|s| s.open.first()) {
            cp = cp.min(first.seq);
        }
    }
    cp
}

fn put_block(batch: &mut sled::Batch, rows: &[LogRow]) {
    if let Some(first) = rows.first() {
        batch.insert(&log_key(first.row.seq)[..], codec::encode_block(rows));
    }
}

/// The block holding `seq` (or the nearest earlier block when `seq` is past its end).
fn block_holding(tree: &sled::Tree, seq: u64) -> Result<Option<(u64, sled::IVec)>, StoreError> {
    let Some(r) = tree.range(log_key(0)..=log_key(seq)).next_back() else {
        return Ok(None);
    };
    let (k, v) = r?;
    let first = u64_from(&k[1..]);
    let n = codec::block_len(&v)?;
    if seq < first.saturating_add(n) {
        Ok(Some((first, v)))
    } else {
        Ok(None)
    }
}

/// Whether `r` (event time not newer than the series' newest) is already stored: same event
/// time and value bits, in the open chunk or in a sealed chunk covering that time.
fn is_stored(
    tree: &sled::Tree,
    s: &Series,
    floor: u64,
    sid: u32,
    r: &Reading,
) -> Result<bool, StoreError> {
    let (ts, bits) = (r.timestamp_ms, r.value.to_bits());
    if s.open
        .iter()
        .any(|row| row.ts == ts && row.value.to_bits() == bits)
    {
        return Ok(true);
    }
    if s.rec.sealed_through == 0 || ts > s.rec.sealed_max_ts {
        return Ok(false);
    }
    let lo = chunk_key(sid, ts.saturating_sub(CHUNK_SPAN_MS), 0);
    let hi = chunk_key(sid, ts, u64::MAX);
    for item in tree.range(lo..=hi) {
        let (_, v) = item?;
        if codec::decode_chunk(&v)?
            .iter()
            .any(|row| row.ts == ts && row.value.to_bits() == bits && row.seq > floor)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Splits rows sorted by event time into runs spanning at most [`CHUNK_SPAN_MS`] and
/// [`CHUNK_ROWS`] rows.
fn split_runs(sorted: &[Row]) -> Vec<&[Row]> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=sorted.len() {
        let end_here = i == sorted.len()
            || i - start >= CHUNK_ROWS
            || sorted[i].ts.saturating_sub(sorted[start].ts) > CHUNK_SPAN_MS;
        if end_here {
            runs.push(&sorted[start..i]);
            start = i;
        }
    }
    runs
}

/// Seals the open chunks that are due (full, too wide in time, or too far behind the log head)
/// into `batch`, with their rollup pages and series records. Memory keeps the rows until the
/// batch is applied (the caller then installs the records).
fn stage_seals(
    tree: &sled::Tree,
    st: &mut State,
    touched: &HashMap<u32, Undo>,
    next_seq: u64,
    batch: &mut sled::Batch,
) -> Result<Vec<StagedSeal>, StoreError> {
    let mut due: HashSet<u32> = touched
        .keys()
        .copied()
        .filter(|sid| st.series.get(sid).is_some_and(Series::seal_due))
        .collect();
    // Replay bound: the oldest open chunks, by their first seq (the index is updated after
    // the batch, so new series are not in it yet; they are young anyway).
    let behind = next_seq.saturating_sub(st.window);
    for (first, sid) in &st.open_index {
        if *first >= behind {
            break;
        }
        due.insert(*sid);
    }
    let mut seals = Vec::with_capacity(due.len());
    for sid in due {
        let Some(s) = st.series.get_mut(&sid) else {
            continue;
        };
        if s.open.is_empty() {
            continue;
        }
        let taken = std::mem::take(&mut s.open);
        s.set_open(Vec::new());
        let mut sorted = taken.clone();
        sorted.sort_by_key(|r| (r.ts, r.seq));
        for run in split_runs(&sorted) {
            let first_seq = run.iter().map(|r| r.seq).min().unwrap_or(0);
            batch.insert(
                &chunk_key(sid, run[0].ts, first_seq)[..],
                codec::encode_chunk(run),
            );
        }
        for res in Resolution::BOTH {
            for (page_start, mut page) in rollup::pages_of(&sorted, res) {
                let key = sid_time_key(res.tag(), sid, page_start);
                if let Some(old) = tree.get(key)? {
                    rollup::decode_page(&old, page_start, res, |start, agg| {
                        page.entry(start)
                            .and_modify(|a| a.merge(&agg))
                            .or_insert(agg);
                    })?;
                }
                batch.insert(&key[..], rollup::encode_page(page_start, res, &page));
            }
        }
        let mut rec = s.rec.clone();
        rec.sealed_through = taken.last().map_or(rec.sealed_through, |r| r.seq);
        rec.sealed_count += taken.len() as u64;
        rec.sealed_max_ts = sorted
            .last()
            .map_or(rec.sealed_max_ts, |r| r.ts.max(rec.sealed_max_ts));
        rec.unit.clone_from(&s.unit);
        rec.last = s.last;
        batch.insert(&series_key(sid)[..], encode_rec(&rec));
        seals.push(StagedSeal { sid, taken, rec });
    }
    Ok(seals)
}

fn stage_presence(
    tree: &sled::Tree,
    presence: &[PresenceUpdate],
    batch: &mut sled::Batch,
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
                encode_rec(&PresenceRecord {
                    online: p.online,
                    since_ms: p.at_ms,
                }),
            );
            latest.insert(&p.device_id, p.online);
        }
    }
    Ok(())
}

/// Puts memory back as it was before a batch that did not reach sled.
fn rollback(st: &mut State, undo: HashMap<u32, Undo>, seals: Vec<StagedSeal>) {
    let mut taken: HashMap<u32, Vec<Row>> = seals.into_iter().map(|s| (s.sid, s.taken)).collect();
    for (sid, u) in undo {
        if u.created {
            if let Some(s) = st.series.remove(&sid) {
                if let Some(m) = st.sids.get_mut(&s.names.device_id) {
                    m.remove(&s.names.metric);
                    if m.is_empty() {
                        st.sids.remove(&s.names.device_id);
                    }
                }
            }
            continue;
        }
        let Some(s) = st.series.get_mut(&sid) else {
            continue;
        };
        let mut rows = taken
            .remove(&sid)
            .unwrap_or_else(|| std::mem::take(&mut s.open));
        rows.truncate(u.open_len);
        s.set_open(rows);
        s.count = u.count;
        s.max_ts = u.max_ts;
        s.unit = u.unit;
        s.last = u.last;
    }
    // Seals of untouched series (replay bound) only moved rows out: put them back.
    for (sid, rows) in taken {
        if let Some(s) = st.series.get_mut(&sid) {
            s.set_open(rows);
        }
    }
}

/// Rebuilds the open chunks from the log after the replay checkpoint.
fn replay(tree: &sled::Tree, st: &mut State) -> Result<(), StoreError> {
    let start = st.replay_from.max(st.floor.saturating_add(1)).max(1);
    let first_key = match block_holding(tree, start)? {
        Some((first, _)) => first,
        None => start,
    };
    for r in tree.range(log_key(first_key)..=log_key(u64::MAX)) {
        let (k, v) = r?;
        for lr in codec::decode_block(&v, u64_from(&k[1..]))? {
            if lr.row.seq < start {
                continue;
            }
            let s = st.series.get_mut(&lr.sid).ok_or(StoreError::Corrupt {
                what: "log (unknown series)",
            })?;
            if lr.row.seq <= s.rec.sealed_through {
                continue;
            }
            let unit = match lr.row.unit.as_deref() {
                None => s.names.base_unit.clone(),
                Some(UnitOverride::Absent) => None,
                Some(UnitOverride::Named(u)) => Some(u.clone()),
            };
            s.push(lr.row, &unit);
        }
    }
    for (sid, s) in &st.series {
        if let Some(first) = s.open.first() {
            st.open_index.insert((first.seq, *sid));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_keys_sort_like_times() {
        let ts = [i64::MIN, -5, -1, 0, 1, 1_790_000_000_000, i64::MAX];
        for w in ts.windows(2) {
            assert!(ts_bytes(w[0]) < ts_bytes(w[1]));
            assert_eq!(ts_from(&ts_bytes(w[0])), w[0]);
        }
        assert!(chunk_key(1, i64::MAX, u64::MAX) < chunk_key(2, i64::MIN, 0));
    }

    #[test]
    fn runs_respect_rows_and_span() {
        let rows: Vec<Row> = (0..1500)
            .map(|i| Row {
                seq: i,
                ts: if i < 1200 {
                    i as i64 * 1000
                } else {
                    10 * HOUR_MS + i as i64
                },
                recv: 0,
                value: 1.0,
                unit: None,
            })
            .collect();
        let runs = split_runs(&rows);
        assert_eq!(runs.iter().map(|r| r.len()).sum::<usize>(), 1500);
        for r in &runs {
            assert!(r.len() <= CHUNK_ROWS);
            assert!(r[r.len() - 1].ts - r[0].ts <= CHUNK_SPAN_MS);
        }
    }
}
