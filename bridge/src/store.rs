//! The event log and its read models, on sled. This is the only module that names sled.
//!
//! # On-disk layout
//!
//! Everything lives in one sled tree so that one [`sled::Batch`] applies a whole commit (log
//! entries, index entries, catalogue, rollups, the seq high-water mark) atomically: after a crash
//! the store holds either all of a batch or none of it, and no recovery pass is needed. Keys
//! start with a one-byte tag:
//!
//! | key | value |
//! | --- | --- |
//! | `L` seq(u64 BE) | log entry: flags, series id, event time, receive delta, value (varints) |
//! | `I` sid(u32 BE) time(i64, sign-flipped BE) seq(u64 BE) | empty: per-series time index |
//! | `S` sid(u32 BE) | series catalogue record (postcard) |
//! | `D` deviceId | device presence (postcard) |
//! | `M` / `H` sid bucket-start | 1-minute / 1-hour rollup (postcard) |
//! | `Zseq` | highest seq ever assigned (so retention emptying the log cannot reset seq) |
//!
//! A log entry stores the series as a small integer id, times as zig-zag varints (receive time as
//! a delta from event time), integral values as varints and other values as 8 raw bytes. The
//! unit is stored only when it differs from the unit the series was created with.
//!
//! # Concurrency
//!
//! Writes ([`Store::apply`], [`Store::retain_step`]) are meant to come from one task (the
//! writer); they serialise on an internal `std::sync::Mutex` that is never held across an
//! `.await`. Reads go straight to sled (lock-free) and see only whole batches.

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use edgewatch_protocol::{Reading, SeriesKey, TopicFilter};
use serde::{Deserialize, Serialize};

const LOG: u8 = b'L';
const IDX: u8 = b'I';
const SERIES: u8 = b'S';
const DEVICE: u8 = b'D';
const MINUTE: u8 = b'M';
const HOUR: u8 = b'H';
const META_SEQ: &[u8] = b"Zseq";

/// One minute and one hour in milliseconds: the two rollup resolutions.
pub const MINUTE_MS: i64 = 60_000;
/// See [`MINUTE_MS`].
pub const HOUR_MS: i64 = 3_600_000;

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

/// Tuning for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How many recent (series, event time, value) keys are remembered to recognise a
    /// redelivered reading without an index lookup. Older duplicates are still found through
    /// the index; this only makes the common case cheap.
    pub dedupe_window: usize,
    /// sled page cache size in bytes.
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            dedupe_window: 65_536,
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

/// Aggregates over one time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Sum of values (avg = sum / count).
    pub sum: f64,
    /// Number of readings.
    pub count: u64,
    /// Value of the latest reading by event time (ties: highest seq).
    pub last: f64,
    /// Event time of `last`.
    pub last_ts: i64,
    /// Seq of `last`.
    pub last_seq: u64,
}

impl Aggregate {
    fn one(value: f64, ts: i64, seq: u64) -> Self {
        Self {
            min: value,
            max: value,
            sum: value,
            count: 1,
            last: value,
            last_ts: ts,
            last_seq: seq,
        }
    }

    fn merge(&mut self, o: &Aggregate) {
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.sum += o.sum;
        self.count += o.count;
        if (o.last_ts, o.last_seq) > (self.last_ts, self.last_seq) {
            self.last = o.last;
            self.last_ts = o.last_ts;
            self.last_seq = o.last_seq;
        }
    }

    /// Mean value.
    pub fn avg(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }
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
    /// Rollup buckets deleted.
    pub rollups_deleted: u64,
    /// Whether more old data is left (call again soon).
    pub more: bool,
}

/// Retention policy for [`Store::retain_step`].
#[derive(Debug, Clone, Copy)]
pub struct RetentionPolicy {
    /// Readings and rollups older than this (by receive time / bucket start) are removed.
    pub max_age_ms: Option<i64>,
    /// When the database is larger than this, the oldest readings are removed.
    pub disk_budget_bytes: Option<u64>,
    /// At most this many log entries are removed per step.
    pub step: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SeriesRecord {
    device_id: String,
    metric: String,
    /// Unit of the first reading; log entries only store a unit when it differs.
    base_unit: Option<String>,
    unit: Option<String>,
    last_value: f64,
    last_timestamp_ms: i64,
    last_received_ms: i64,
    last_seq: u64,
    count: u64,
    /// Highest event time ever stored: newer readings cannot be duplicates.
    max_timestamp_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PresenceRecord {
    online: bool,
    since_ms: i64,
}

type DedupeKey = (u32, i64, u64);

/// Bounded FIFO set of recently stored keys.
#[derive(Debug)]
struct RecentKeys {
    set: HashSet<DedupeKey>,
    order: VecDeque<DedupeKey>,
    cap: usize,
}

impl RecentKeys {
    fn insert(&mut self, k: DedupeKey) {
        if self.set.insert(k) {
            self.order.push_back(k);
            while self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

#[derive(Debug)]
struct State {
    next_seq: u64,
    next_sid: u32,
    sids: HashMap<String, HashMap<String, u32>>,
    series: HashMap<u32, SeriesRecord>,
    recent: RecentKeys,
}

impl State {
    fn sid(&self, device: &str, metric: &str) -> Option<u32> {
        self.sids.get(device).and_then(|m| m.get(metric)).copied()
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

// ---------- key and value encoding ----------

fn ts_bytes(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

fn ts_from(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    (u64::from_be_bytes(a) ^ (1 << 63)) as i64
}

fn u64_from(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn u32_from(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

fn log_key(seq: u64) -> [u8; 9] {
    let mut k = [LOG; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn idx_prefix(sid: u32, ts: i64) -> [u8; 13] {
    let mut k = [IDX; 13];
    k[1..5].copy_from_slice(&sid.to_be_bytes());
    k[5..13].copy_from_slice(&ts_bytes(ts));
    k
}

fn idx_key(sid: u32, ts: i64, seq: u64) -> [u8; 21] {
    let mut k = [IDX; 21];
    k[..13].copy_from_slice(&idx_prefix(sid, ts));
    k[13..].copy_from_slice(&seq.to_be_bytes());
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

fn rollup_key(tag: u8, sid: u32, bucket: i64) -> [u8; 13] {
    let mut k = idx_prefix(sid, bucket);
    k[0] = tag;
    k
}

fn floor_to(t: i64, step: i64) -> i64 {
    t.div_euclid(step) * step
}

fn ceil_to(t: i64, step: i64) -> i64 {
    let f = floor_to(t, step);
    if f == t {
        t
    } else {
        f.saturating_add(step)
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    let mut shift = 0u32;
    loop {
        let byte = *b.get(*pos)?;
        *pos += 1;
        if shift > 63 {
            return None;
        }
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

const F_INT: u8 = 1;
const F_UNIT_INLINE: u8 = 2;
const F_UNIT_NONE: u8 = 4;

/// Largest magnitude stored as a varint integer (exactly representable in f64).
const MAX_EXACT_INT: f64 = 9_007_199_254_740_992.0;

#[derive(Debug, Clone, PartialEq)]
enum UnitCode {
    Base,
    None,
    Inline(String),
}

#[derive(Debug, Clone, PartialEq)]
struct LogEntry {
    sid: u32,
    ts: i64,
    received: i64,
    value: f64,
    unit: UnitCode,
}

fn encode_entry(e: &LogEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    let int = e.value.fract() == 0.0
        && e.value.abs() <= MAX_EXACT_INT
        && !(e.value == 0.0 && e.value.is_sign_negative());
    let mut flags = 0u8;
    if int {
        flags |= F_INT;
    }
    match &e.unit {
        UnitCode::Base => {}
        UnitCode::None => flags |= F_UNIT_NONE,
        UnitCode::Inline(_) => flags |= F_UNIT_INLINE,
    }
    out.push(flags);
    put_varint(&mut out, u64::from(e.sid));
    put_varint(&mut out, zigzag(e.ts));
    put_varint(&mut out, zigzag(e.received.wrapping_sub(e.ts)));
    if int {
        put_varint(&mut out, zigzag(e.value as i64));
    } else {
        out.extend_from_slice(&e.value.to_le_bytes());
    }
    if let UnitCode::Inline(u) = &e.unit {
        put_varint(&mut out, u.len() as u64);
        out.extend_from_slice(u.as_bytes());
    }
    out
}

fn decode_entry(b: &[u8]) -> Option<LogEntry> {
    let flags = *b.first()?;
    let mut pos = 1;
    let sid = u32::try_from(get_varint(b, &mut pos)?).ok()?;
    let ts = unzigzag(get_varint(b, &mut pos)?);
    let received = ts.wrapping_add(unzigzag(get_varint(b, &mut pos)?));
    let value = if flags & F_INT != 0 {
        unzigzag(get_varint(b, &mut pos)?) as f64
    } else {
        let raw: [u8; 8] = b.get(pos..pos + 8)?.try_into().ok()?;
        pos += 8;
        f64::from_le_bytes(raw)
    };
    let unit = if flags & F_UNIT_INLINE != 0 {
        let len = usize::try_from(get_varint(b, &mut pos)?).ok()?;
        let s = std::str::from_utf8(b.get(pos..pos.checked_add(len)?)?).ok()?;
        UnitCode::Inline(s.to_owned())
    } else if flags & F_UNIT_NONE != 0 {
        UnitCode::None
    } else {
        UnitCode::Base
    };
    Some(LogEntry {
        sid,
        ts,
        received,
        value,
        unit,
    })
}

fn to_reading(e: LogEntry, rec: &SeriesRecord) -> Reading {
    let unit = match e.unit {
        UnitCode::Base => rec.base_unit.clone(),
        UnitCode::None => None,
        UnitCode::Inline(u) => Some(u),
    };
    Reading {
        device_id: rec.device_id.clone(),
        metric: rec.metric.clone(),
        value: e.value,
        unit,
        timestamp_ms: e.ts,
        received_at_ms: e.received,
    }
}

fn decode_rec<T: for<'de> Deserialize<'de>>(b: &[u8], what: &'static str) -> Result<T, StoreError> {
    postcard::from_bytes(b).map_err(|_| StoreError::Corrupt { what })
}

fn encode_rec<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising plain structs of strings and numbers to a Vec cannot fail.
    postcard::to_allocvec(v).unwrap_or_default()
}

fn matches_any(filters: &[TopicFilter], rec: &SeriesRecord) -> bool {
    if filters.is_empty() {
        return true;
    }
    let topic = format!("sensors/{}/{}", rec.device_id, rec.metric);
    filters.iter().any(|f| f.matches(&topic))
}

fn series_info(rec: &SeriesRecord) -> SeriesInfo {
    SeriesInfo {
        key: SeriesKey {
            device_id: rec.device_id.clone(),
            metric: rec.metric.clone(),
        },
        unit: rec.unit.clone(),
        last_value: rec.last_value,
        last_timestamp_ms: rec.last_timestamp_ms,
        last_seen_ms: rec.last_received_ms,
        last_seq: rec.last_seq,
        count: rec.count,
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

impl Store {
    /// Opens (or creates) the store in `dir` and recovers the next seq and the catalogue.
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

        let mut last_seq = match tree.get(META_SEQ)? {
            Some(v) if v.len() == 8 => u64_from(&v),
            Some(_) => {
                return Err(StoreError::Corrupt {
                    what: "seq high-water mark",
                })
            }
            None => 0,
        };
        if let Some(r) = tree.range(log_key(0)..=log_key(u64::MAX)).next_back() {
            let (k, _) = r?;
            last_seq = last_seq.max(u64_from(&k[1..]));
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
            series.insert(sid, rec);
            next_sid = next_sid.max(sid.saturating_add(1));
        }
        let cap = opts.dedupe_window.max(1);
        let state = State {
            next_seq: last_seq + 1,
            next_sid,
            sids,
            series,
            recent: RecentKeys {
                set: HashSet::new(),
                order: VecDeque::new(),
                cap,
            },
        };
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                tree,
                state: Mutex::new(state),
            }),
        })
    }

    fn state(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        self.inner.state.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Whether a reading with this series, event time and value is already in the log.
    fn index_has(&self, sid: u32, ts: i64, value: f64) -> Result<bool, StoreError> {
        for r in self.inner.tree.scan_prefix(idx_prefix(sid, ts)) {
            let (k, _) = r?;
            if k.len() != 21 {
                continue;
            }
            let seq = u64_from(&k[13..]);
            if let Some(v) = self.inner.tree.get(log_key(seq))? {
                if decode_entry(&v).is_some_and(|e| e.value.to_bits() == value.to_bits()) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Applies one batch atomically: assigns seqs to the readings that are not duplicates,
    /// writes log, index, catalogue and rollups, and records presence changes. Returns, for each
    /// input reading in order, its seq or `None` when it was a duplicate of a stored reading.
    ///
    /// Not flushed: call [`Store::flush_async`] (or [`Store::flush`]) before acknowledging.
    pub fn apply(
        &self,
        readings: &[Reading],
        presence: &[PresenceUpdate],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let mut st = self.state()?;
        let tree = &self.inner.tree;
        let mut batch = sled::Batch::default();
        let mut next_seq = st.next_seq;
        let mut next_sid = st.next_sid;
        let mut new_sids: HashMap<(String, String), u32> = HashMap::new();
        let mut touched: HashMap<u32, SeriesRecord> = HashMap::new();
        let mut batch_keys: Vec<DedupeKey> = Vec::new();
        let mut batch_key_set: HashSet<DedupeKey> = HashSet::new();
        let mut rollups: HashMap<(u8, u32, i64), Aggregate> = HashMap::new();
        let mut out = Vec::with_capacity(readings.len());

        for r in readings {
            let existing = st.sid(&r.device_id, &r.metric);
            let (sid, on_disk) = match existing {
                Some(sid) => (sid, true),
                None => {
                    let key = (r.device_id.clone(), r.metric.clone());
                    let sid = *new_sids.entry(key).or_insert_with(|| {
                        let s = next_sid;
                        next_sid = next_sid.saturating_add(1);
                        s
                    });
                    (sid, false)
                }
            };
            let rec = match touched.entry(sid) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let rec = match st.series.get(&sid) {
                        Some(rec) => rec.clone(),
                        None => SeriesRecord {
                            device_id: r.device_id.clone(),
                            metric: r.metric.clone(),
                            base_unit: r.unit.clone(),
                            unit: r.unit.clone(),
                            last_value: r.value,
                            last_timestamp_ms: r.timestamp_ms,
                            last_received_ms: r.received_at_ms,
                            last_seq: 0,
                            count: 0,
                            max_timestamp_ms: i64::MIN,
                        },
                    };
                    v.insert(rec)
                }
            };
            let dkey = (sid, r.timestamp_ms, r.value.to_bits());
            let duplicate = batch_key_set.contains(&dkey)
                || st.recent.set.contains(&dkey)
                || (on_disk
                    && r.timestamp_ms
                        <= st.series.get(&sid).map_or(i64::MIN, |s| s.max_timestamp_ms)
                    && self.index_has(sid, r.timestamp_ms, r.value)?);
            if duplicate {
                out.push(None);
                continue;
            }
            let seq = next_seq;
            next_seq += 1;
            let unit = if r.unit == rec.base_unit {
                UnitCode::Base
            } else {
                match &r.unit {
                    None => UnitCode::None,
                    Some(u) => UnitCode::Inline(u.clone()),
                }
            };
            let entry = LogEntry {
                sid,
                ts: r.timestamp_ms,
                received: r.received_at_ms,
                value: r.value,
                unit,
            };
            batch.insert(&log_key(seq)[..], encode_entry(&entry));
            batch.insert(&idx_key(sid, r.timestamp_ms, seq)[..], &[][..]);
            rec.count += 1;
            rec.last_value = r.value;
            rec.last_timestamp_ms = r.timestamp_ms;
            rec.last_received_ms = r.received_at_ms;
            rec.last_seq = seq;
            rec.max_timestamp_ms = rec.max_timestamp_ms.max(r.timestamp_ms);
            if r.unit.is_some() {
                rec.unit.clone_from(&r.unit);
            }
            for (tag, step) in [(MINUTE, MINUTE_MS), (HOUR, HOUR_MS)] {
                let bucket = floor_to(r.timestamp_ms, step);
                let one = Aggregate::one(r.value, r.timestamp_ms, seq);
                match rollups.entry((tag, sid, bucket)) {
                    std::collections::hash_map::Entry::Occupied(mut o) => o.get_mut().merge(&one),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let mut agg = one;
                        if on_disk {
                            if let Some(old) = tree.get(rollup_key(tag, sid, bucket))? {
                                let mut old: Aggregate = decode_rec(&old, "rollup")?;
                                old.merge(&one);
                                agg = old;
                            }
                        }
                        v.insert(agg);
                    }
                }
            }
            batch_key_set.insert(dkey);
            batch_keys.push(dkey);
            out.push(Some(seq));
        }

        for p in presence {
            let key = device_key(&p.device_id);
            let unchanged = match tree.get(&key)? {
                Some(v) => decode_rec::<PresenceRecord>(&v, "presence")?.online == p.online,
                None => false,
            };
            if !unchanged {
                batch.insert(
                    key,
                    encode_rec(&PresenceRecord {
                        online: p.online,
                        since_ms: p.at_ms,
                    }),
                );
            }
        }
        for (sid, rec) in &touched {
            batch.insert(&series_key(*sid)[..], encode_rec(rec));
        }
        for ((tag, sid, bucket), agg) in &rollups {
            batch.insert(&rollup_key(*tag, *sid, *bucket)[..], encode_rec(agg));
        }
        if next_seq != st.next_seq {
            batch.insert(META_SEQ, &(next_seq - 1).to_be_bytes()[..]);
        }
        tree.apply_batch(batch)?;

        // Durable in sled's write order: now publish the staged state.
        st.next_seq = next_seq;
        st.next_sid = next_sid;
        for ((device, metric), sid) in new_sids {
            st.sids.entry(device).or_default().insert(metric, sid);
        }
        st.series.extend(touched);
        for k in batch_keys {
            st.recent.insert(k);
        }
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

    fn catalogue(&self) -> Result<BTreeMap<u32, SeriesRecord>, StoreError> {
        let mut out = BTreeMap::new();
        for r in self.inner.tree.scan_prefix([SERIES]) {
            let (k, v) = r?;
            if k.len() == 5 {
                out.insert(u32_from(&k[1..]), decode_rec(&v, "series")?);
            }
        }
        Ok(out)
    }

    /// Every series, sorted by device then metric.
    pub fn series(&self) -> Result<Vec<SeriesInfo>, StoreError> {
        let mut v: Vec<SeriesInfo> = self.catalogue()?.values().map(series_info).collect();
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
        for rec in self.catalogue()?.values() {
            let d = by_id
                .entry(rec.device_id.clone())
                .or_insert_with(|| blank(&rec.device_id));
            d.metrics.push(rec.metric.clone());
            d.last_seen_ms = Some(
                d.last_seen_ms
                    .map_or(rec.last_received_ms, |t| t.max(rec.last_received_ms)),
            );
        }
        let mut v: Vec<DeviceInfo> = by_id.into_values().collect();
        for d in &mut v {
            d.metrics.sort();
        }
        Ok(v)
    }

    /// The log entry at `seq`, as a reading.
    pub fn get(&self, seq: u64) -> Result<Option<Reading>, StoreError> {
        let Some(v) = self.inner.tree.get(log_key(seq))? else {
            return Ok(None);
        };
        let e = decode_entry(&v).ok_or(StoreError::Corrupt { what: "log" })?;
        let rec = self.state()?.series.get(&e.sid).cloned();
        let rec = rec.ok_or(StoreError::Corrupt {
            what: "log (unknown series)",
        })?;
        Ok(Some(to_reading(e, &rec)))
    }

    /// Readings in seq order after `after` (up to `limit`), regardless of filter: the replay
    /// primitive for live resume and the uplink.
    pub fn log_after(&self, after: u64, limit: usize) -> Result<Vec<StoredReading>, StoreError> {
        let q = ReadingQuery {
            after,
            limit,
            ..ReadingQuery::default()
        };
        Ok(self.readings(&q)?.readings)
    }

    /// Raw readings matching the query, in seq order, one page.
    pub fn readings(&self, q: &ReadingQuery) -> Result<ReadingPage, StoreError> {
        let cat = self.catalogue()?;
        let limit = q.limit.max(1);
        let matched: HashMap<u32, &SeriesRecord> = cat
            .iter()
            .filter(|(_, r)| matches_any(&q.filters, r))
            .map(|(s, r)| (*s, r))
            .collect();
        if matched.is_empty() {
            return Ok(ReadingPage::default());
        }
        let from = q.from_ms.unwrap_or(i64::MIN);
        let to = q.to_ms.unwrap_or(i64::MAX);
        if from >= to {
            return Ok(ReadingPage::default());
        }
        let tree = &self.inner.tree;
        let mut rows: Vec<StoredReading> = Vec::new();
        let unbounded_time = q.from_ms.is_none() && q.to_ms.is_none();
        if unbounded_time && matched.len() * 2 >= cat.len() {
            // Broad query: walk the log from the cursor.
            let start = q.after.saturating_add(1);
            for r in tree.range(log_key(start)..=log_key(u64::MAX)) {
                let (k, v) = r?;
                let e = decode_entry(&v).ok_or(StoreError::Corrupt { what: "log" })?;
                let Some(rec) = matched.get(&e.sid) else {
                    continue;
                };
                if e.ts < from || e.ts >= to {
                    continue;
                }
                rows.push(StoredReading {
                    seq: u64_from(&k[1..]),
                    reading: to_reading(e, rec),
                });
                if rows.len() > limit {
                    break;
                }
            }
        } else {
            // Selective query: per-series index ranges, keep the `limit + 1` smallest seqs.
            let mut heap: BinaryHeap<u64> = BinaryHeap::new();
            for sid in matched.keys() {
                let lo = idx_prefix(*sid, from);
                let hi = idx_prefix(*sid, to);
                for r in tree.range(lo..hi) {
                    let (k, _) = r?;
                    if k.len() != 21 {
                        continue;
                    }
                    let seq = u64_from(&k[13..]);
                    if seq <= q.after {
                        continue;
                    }
                    if heap.len() <= limit {
                        heap.push(seq);
                    } else if heap.peek().is_some_and(|top| seq < *top) {
                        heap.pop();
                        heap.push(seq);
                    }
                }
            }
            let seqs = heap.into_sorted_vec();
            for seq in seqs {
                let Some(v) = tree.get(log_key(seq))? else {
                    continue;
                };
                let e = decode_entry(&v).ok_or(StoreError::Corrupt { what: "log" })?;
                let Some(rec) = matched.get(&e.sid) else {
                    continue;
                };
                rows.push(StoredReading {
                    seq,
                    reading: to_reading(e, rec),
                });
            }
        }
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

    /// Adds raw readings of one series with event time in `[from, to)` into step buckets.
    fn raw_into(
        &self,
        sid: u32,
        from: i64,
        to: i64,
        step: i64,
        buckets: &mut BTreeMap<i64, Aggregate>,
    ) -> Result<(), StoreError> {
        if from >= to {
            return Ok(());
        }
        let tree = &self.inner.tree;
        for r in tree.range(idx_prefix(sid, from)..idx_prefix(sid, to)) {
            let (k, _) = r?;
            if k.len() != 21 {
                continue;
            }
            let seq = u64_from(&k[13..]);
            let Some(v) = tree.get(log_key(seq))? else {
                continue;
            };
            let e = decode_entry(&v).ok_or(StoreError::Corrupt { what: "log" })?;
            let one = Aggregate::one(e.value, e.ts, seq);
            let b = floor_to(e.ts, step);
            buckets
                .entry(b)
                .and_modify(|a| a.merge(&one))
                .or_insert(one);
        }
        Ok(())
    }

    /// Rolled-up points per matching series, from the coarsest stored resolution that divides
    /// `step_ms` (raw readings fill unaligned range edges, so results are exact).
    pub fn rollups(
        &self,
        q: &RollupQuery,
    ) -> Result<(RollupSource, Vec<SeriesRollup>), StoreError> {
        let step = q.step_ms.max(1);
        let source = RollupSource::for_step(step);
        let cat = self.catalogue()?;
        let mut out = Vec::new();
        let tree = &self.inner.tree;
        for (sid, rec) in cat.iter().filter(|(_, r)| matches_any(&q.filters, r)) {
            let mut buckets: BTreeMap<i64, Aggregate> = BTreeMap::new();
            let (tag, unit) = match source {
                RollupSource::Hour => (HOUR, HOUR_MS),
                RollupSource::Minute => (MINUTE, MINUTE_MS),
                RollupSource::Raw => (0, 0),
            };
            if unit == 0 {
                self.raw_into(*sid, q.from_ms, q.to_ms, step, &mut buckets)?;
            } else {
                let a_from = ceil_to(q.from_ms, unit);
                let a_to = floor_to(q.to_ms, unit);
                if a_from >= a_to {
                    self.raw_into(*sid, q.from_ms, q.to_ms, step, &mut buckets)?;
                } else {
                    self.raw_into(*sid, q.from_ms, a_from, step, &mut buckets)?;
                    for r in tree.range(rollup_key(tag, *sid, a_from)..rollup_key(tag, *sid, a_to))
                    {
                        let (k, v) = r?;
                        let agg: Aggregate = decode_rec(&v, "rollup")?;
                        let b = floor_to(ts_from(&k[5..13]), step);
                        buckets
                            .entry(b)
                            .and_modify(|a| a.merge(&agg))
                            .or_insert(agg);
                    }
                    self.raw_into(*sid, a_to, q.to_ms, step, &mut buckets)?;
                }
            }
            out.push(SeriesRollup {
                key: SeriesKey {
                    device_id: rec.device_id.clone(),
                    metric: rec.metric.clone(),
                },
                unit: rec.unit.clone(),
                points: buckets.into_iter().collect(),
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((source, out))
    }

    /// One small retention step: removes up to `policy.step` of the oldest log entries that are
    /// older than the age limit (or any oldest entries while over the disk budget), with their
    /// index entries, and up to `policy.step` expired rollup buckets. Holds the write lock only
    /// for this step, so ingest is delayed by at most one small batch.
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
        let step = policy.step.max(1);
        let mut st = self.state()?;
        let tree = &self.inner.tree;
        let mut batch = sled::Batch::default();
        let mut outcome = RetentionOutcome::default();
        let mut dec: HashMap<u32, u64> = HashMap::new();
        for r in tree.range(log_key(0)..=log_key(u64::MAX)) {
            let (k, v) = r?;
            let e = decode_entry(&v).ok_or(StoreError::Corrupt { what: "log" })?;
            let expired = cutoff.is_some_and(|c| e.received < c);
            if !(expired || over_budget) {
                break;
            }
            if outcome.readings_deleted as usize >= step {
                outcome.more = true;
                break;
            }
            let seq = u64_from(&k[1..]);
            batch.remove(k);
            batch.remove(&idx_key(e.sid, e.ts, seq)[..]);
            *dec.entry(e.sid).or_default() += 1;
            outcome.readings_deleted += 1;
        }
        if let Some(c) = cutoff {
            'tags: for (tag, unit) in [(MINUTE, MINUTE_MS), (HOUR, HOUR_MS)] {
                // A bucket goes once all of it is older than the cutoff.
                let last_start = c.saturating_sub(unit);
                for sid in st.series.keys() {
                    for r in tree
                        .range(rollup_key(tag, *sid, i64::MIN)..rollup_key(tag, *sid, last_start))
                    {
                        let (k, _) = r?;
                        if outcome.rollups_deleted as usize >= step {
                            outcome.more = true;
                            break 'tags;
                        }
                        batch.remove(k);
                        outcome.rollups_deleted += 1;
                    }
                }
            }
        }
        if outcome.readings_deleted == 0 && outcome.rollups_deleted == 0 {
            return Ok(outcome);
        }
        let mut updated = Vec::new();
        for (sid, n) in dec {
            if let Some(rec) = st.series.get(&sid) {
                let mut rec = rec.clone();
                rec.count = rec.count.saturating_sub(n);
                batch.insert(&series_key(sid)[..], encode_rec(&rec));
                updated.push((sid, rec));
            }
        }
        tree.apply_batch(batch)?;
        st.series.extend(updated);
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_entry_round_trips() {
        for (value, unit) in [
            (21.5, UnitCode::Base),
            (-3.0, UnitCode::None),
            (1e300, UnitCode::Inline("kPa".to_owned())),
            (-0.0, UnitCode::Base),
            (9_007_199_254_740_992.0, UnitCode::Base),
            (f64::MIN_POSITIVE, UnitCode::Base),
        ] {
            let e = LogEntry {
                sid: 70_000,
                ts: 1_790_000_000_123,
                received: 1_790_000_000_100,
                value,
                unit,
            };
            let b = encode_entry(&e);
            let d = decode_entry(&b).expect("decodes");
            assert_eq!(d.value.to_bits(), e.value.to_bits());
            assert_eq!(d, e);
        }
        let small = encode_entry(&LogEntry {
            sid: 3,
            ts: 1_790_000_000_000,
            received: 1_790_000_000_004,
            value: 21.0,
            unit: UnitCode::Base,
        });
        assert!(small.len() <= 12, "{} bytes", small.len());
    }

    #[test]
    fn truncated_entries_do_not_panic() {
        let b = encode_entry(&LogEntry {
            sid: 1,
            ts: 5,
            received: 6,
            value: 0.25,
            unit: UnitCode::Inline("C".to_owned()),
        });
        for n in 0..b.len() {
            assert!(decode_entry(&b[..n]).is_none());
        }
    }

    #[test]
    fn time_keys_sort_like_times() {
        let ts = [i64::MIN, -5, -1, 0, 1, 1_790_000_000_000, i64::MAX];
        for w in ts.windows(2) {
            assert!(ts_bytes(w[0]) < ts_bytes(w[1]));
            assert_eq!(ts_from(&ts_bytes(w[0])), w[0]);
        }
        assert_eq!(floor_to(-1, 60_000), -60_000);
        assert_eq!(ceil_to(60_001, 60_000), 120_000);
    }
}
