//! Series in memory and the life of their open chunks: appending rows, deciding when a chunk
//! is sealed (size, event-time span, replay bound), staging the seal with its rollup pages,
//! undoing a batch that did not reach sled, rebuilding open chunks by replaying the log, and
//! recognising a redelivered reading in the open chunk or the sealed chunk covering its time.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use edgewatch_protocol::{Reading, SeriesKey};
use serde::{Deserialize, Serialize};

use super::codec::{self, Row, UnitOverride};
use super::layout::*;
use super::recent::{fingerprint, Recent};
use super::rollup::{self, Resolution};
use super::{SeriesInfo, StoreError, CHUNK_MAX_ROWS, CHUNK_ROWS, CHUNK_SPAN_MS, SCATTERED_ROWS};

/// The latest reading of a series (by seq).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(super) struct LastReading {
    pub(super) value: f64,
    pub(super) ts: i64,
    pub(super) recv: i64,
    pub(super) seq: u64,
}

/// The persisted part of a series: written when the series is created and when it seals.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SeriesRecord {
    pub(super) device_id: String,
    pub(super) metric: String,
    /// Unit of the first reading; rows store a unit only when it differs.
    pub(super) base_unit: Option<String>,
    /// Unit of the latest reading that had one, as of the last write.
    pub(super) unit: Option<String>,
    /// Latest reading as of the last write.
    pub(super) last: Option<LastReading>,
    /// Every reading of this series up to this seq is in a sealed chunk.
    pub(super) sealed_through: u64,
    /// Readings in sealed chunks that retention has not deleted.
    pub(super) sealed_count: u64,
    /// Highest event time in sealed chunks.
    pub(super) sealed_max_ts: i64,
}

/// Names of a series, shared with queries without copying strings.
#[derive(Debug)]
pub(super) struct Names {
    pub(super) device_id: String,
    pub(super) metric: String,
    pub(super) topic: String,
    pub(super) base_unit: Option<String>,
}

/// A series in memory: its record plus the live part derived from the open chunk.
#[derive(Debug)]
pub(super) struct Series {
    pub(super) names: Arc<Names>,
    pub(super) rec: SeriesRecord,
    /// Readings not sealed yet, in seq order.
    pub(super) open: Vec<Row>,
    /// Lowest and highest event time in `open` (`MAX`, `MIN` when empty).
    pub(super) open_span: (i64, i64),
    /// Readings in the log (sealed and open).
    pub(super) count: u64,
    /// Highest event time stored: a newer reading cannot be a duplicate.
    pub(super) max_ts: i64,
    pub(super) unit: Option<String>,
    pub(super) last: Option<LastReading>,
}

impl Series {
    pub(super) fn push(&mut self, row: Row, unit: &Option<String>) {
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
    pub(super) fn set_open(&mut self, rows: Vec<Row>) {
        self.open_span = rows.iter().fold((i64::MAX, i64::MIN), |(lo, hi), r| {
            (lo.min(r.ts), hi.max(r.ts))
        });
        self.open = rows;
    }

    pub(super) fn info(&self) -> SeriesInfo {
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

    pub(super) fn unit_of(&self, r: &Reading) -> Option<Box<UnitOverride>> {
        if r.unit == self.names.base_unit {
            None
        } else {
            Some(Box::new(match &r.unit {
                None => UnitOverride::Absent,
                Some(u) => UnitOverride::Named(u.clone()),
            }))
        }
    }

    /// Whether the open chunk must be sealed now: it holds [`CHUNK_ROWS`] readings within
    /// [`CHUNK_SPAN_MS`], or [`SCATTERED_ROWS`] spread over more time. Sealing cuts the rows
    /// into chunks spanning at most [`CHUNK_SPAN_MS`]; readings spread over far-apart times (a
    /// backfill interleaved with live data, publishers that drifted apart) would otherwise
    /// make many small chunks, and rewrite the rollup pages of every time they touch, at each
    /// seal.
    pub(super) fn seal_due(&self) -> bool {
        let (lo, hi) = self.open_span;
        let n = self.open.len();
        n >= SCATTERED_ROWS || (n >= CHUNK_ROWS && hi.saturating_sub(lo) <= CHUNK_SPAN_MS)
    }
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) next_seq: u64,
    /// The seq reservation as written to `Zseq` (see the store's documentation).
    pub(super) reserved: u64,
    pub(super) next_sid: u32,
    pub(super) sids: HashMap<String, HashMap<String, u32>>,
    pub(super) series: HashMap<u32, Series>,
    /// (seq of the first open row, sid) of every series with an open chunk.
    pub(super) open_index: BTreeSet<(u64, u32)>,
    /// Highest seq deleted by retention.
    pub(super) floor: u64,
    /// Replay checkpoint as persisted.
    pub(super) replay_from: u64,
    /// Bound on open rows, from [`StoreOptions::dedupe_window`].
    pub(super) window: u64,
    /// What committed batches wrote since open.
    pub(super) written: WriteCounters,
    /// Bytes of the rollup pages that committed seals overwrote, since open (the disk budget
    /// counts live bytes from this and `written`). Staged seals add to it; a rollback takes
    /// their share back.
    pub(super) rollup_bytes_replaced: u64,
    /// Fingerprints of the last `window` stored readings.
    pub(super) recent: Recent,
    /// The external session's deliveries taken lately (recognising the broker's resends).
    pub(super) deliveries: super::deliveries::Deliveries,
}

/// What committed batches wrote, by kind (values only; sled adds its own framing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteCounters {
    /// Log blocks written and their bytes.
    pub log_blocks: u64,
    pub log_bytes: u64,
    /// Sealed chunks written, the readings in them, and their bytes.
    pub chunks: u64,
    pub chunk_rows: u64,
    pub chunk_bytes: u64,
    /// Rollup pages written (each seal rewrites the pages its readings fall in) and their bytes.
    pub rollup_pages: u64,
    pub rollup_bytes: u64,
}

impl State {
    pub(super) fn sid(&self, device: &str, metric: &str) -> Option<u32> {
        self.sids.get(device).and_then(|m| m.get(metric)).copied()
    }

    pub(super) fn checkpoint(&self) -> u64 {
        self.open_index
            .first()
            .map_or(self.next_seq, |(seq, _)| *seq)
    }
}

/// What a query copied from one series under the lock.
#[derive(Debug)]
pub(super) struct SeriesSnapshot {
    pub(super) sid: u32,
    pub(super) names: Arc<Names>,
    pub(super) unit: Option<String>,
    /// Rows in sealed chunks with a higher seq were sealed after this snapshot and are in
    /// `open` instead.
    pub(super) sealed_through: u64,
    /// Open rows inside the query's time range.
    pub(super) open: Vec<Row>,
}

/// What `apply` must restore for a series if the batch does not reach sled.
#[derive(Debug)]
pub(super) struct Undo {
    pub(super) created: bool,
    pub(super) open_len: usize,
    pub(super) first_open: Option<u64>,
    pub(super) count: u64,
    pub(super) max_ts: i64,
    pub(super) unit: Option<String>,
    pub(super) last: Option<LastReading>,
}

/// A seal staged in a batch: the rows taken out of the open chunk (seq order) and the new
/// record.
#[derive(Debug)]
pub(super) struct StagedSeal {
    pub(super) sid: u32,
    pub(super) taken: Vec<Row>,
    pub(super) rec: SeriesRecord,
    /// Chunks, chunk bytes, rollup pages and page bytes this seal writes.
    pub(super) chunks: u64,
    pub(super) chunk_bytes: u64,
    pub(super) pages: u64,
    pub(super) page_bytes: u64,
    /// Bytes of the stored pages those pages replace.
    pub(super) replaced_page_bytes: u64,
}

impl Series {
    pub(super) fn new(r: &Reading) -> Series {
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

    pub(super) fn from_record(rec: SeriesRecord) -> Series {
        let names = Arc::new(Names {
            topic: edgewatch_protocol::SeriesTopic::new(&rec.device_id, &rec.metric).to_string(),
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
    pub(super) fn created() -> Undo {
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

    pub(super) fn of(s: &Series) -> Undo {
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

pub(super) fn snapshot_of(sid: u32, s: &Series, from: i64, to: i64) -> SeriesSnapshot {
    SeriesSnapshot {
        sid,
        names: s.names.clone(),
        unit: s.unit.clone(),
        sealed_through: s.rec.sealed_through,
        open: if from < to {
            s.open
                .iter()
                .filter(|r| r.ts >= from && r.ts < to)
                .cloned()
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// The replay checkpoint once the batch is applied: the first seq of the oldest open chunk
/// that stays open, or the next seq.
pub(super) fn checkpoint_after(
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

/// Sealed chunks decoded while checking one batch for duplicates, by key: late readings of a
/// series usually fall into the same few chunks.
pub(super) type DecodedChunks = HashMap<sled::IVec, Vec<Row>>;

/// Whether `r` (event time not newer than the series' newest) is already stored: same event
/// time and value bits, in the open chunk or in a sealed chunk covering that time.
pub(super) fn is_stored(
    tree: &sled::Tree,
    s: &Series,
    floor: u64,
    sid: u32,
    r: &Reading,
    decoded: &mut DecodedChunks,
) -> Result<bool, StoreError> {
    let (ts, bits) = (r.timestamp_ms, r.value.to_bits());
    let same = |row: &Row| row.ts == ts && row.value.to_bits() == bits;
    if s.open.iter().any(same) {
        return Ok(true);
    }
    if s.rec.sealed_through == 0 || ts > s.rec.sealed_max_ts {
        return Ok(false);
    }
    let lo = chunk_key(sid, ts.saturating_sub(CHUNK_SPAN_MS), 0);
    let hi = chunk_key(sid, ts, u64::MAX);
    for item in tree.range(lo..=hi) {
        let (k, v) = item?;
        let rows = match decoded.entry(k) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(codec::decode_chunk(&v)?),
        };
        if rows.iter().any(|row| same(row) && row.seq > floor) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Splits rows sorted by event time into runs spanning at most [`CHUNK_SPAN_MS`] and
/// [`CHUNK_MAX_ROWS`] rows; a longer stretch is cut into equal parts. (A seal takes at least
/// [`CHUNK_ROWS`] rows, often a few more: the room above keeps those few from becoming a chunk
/// of their own.)
pub(super) fn split_runs(sorted: &[Row]) -> Vec<&[Row]> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=sorted.len() {
        if i == sorted.len() || sorted[i].ts.saturating_sub(sorted[start].ts) > CHUNK_SPAN_MS {
            let stretch = &sorted[start..i];
            let parts = stretch.len().div_ceil(CHUNK_MAX_ROWS);
            runs.extend(stretch.chunks(stretch.len().div_ceil(parts)));
            start = i;
        }
    }
    runs
}

/// Seals the open chunks that are due (full, too wide in time, or too far behind the log head)
/// into `batch`, with their rollup pages and series records. Memory keeps the rows until the
/// batch is applied (the caller then installs the records). On an error the batch must not be
/// applied; the series keep their open rows.
pub(super) fn stage_seals(
    tree: &sled::Tree,
    st: &mut State,
    touched: &HashMap<u32, Undo>,
    next_seq: u64,
    batch: &mut Writes,
) -> Result<Vec<StagedSeal>, StoreError> {
    let mut seals = Vec::new();
    match stage_seals_into(tree, st, touched, next_seq, batch, &mut seals) {
        Ok(()) => {
            st.rollup_bytes_replaced += seals.iter().map(|s| s.replaced_page_bytes).sum::<u64>();
            Ok(seals)
        }
        Err(e) => {
            // Nothing staged reaches sled: the series staged so far get their rows back.
            for seal in seals {
                if let Some(s) = st.series.get_mut(&seal.sid) {
                    s.set_open(seal.taken);
                }
            }
            Err(e)
        }
    }
}

/// Stages the seals of every series due for sealing into `batch` (see [`stage_seals`]).
///
/// Long: the seal of one series is one sequence (sort, cut, encode, merge into rollup
/// pages, stage) whose steps share the staged state; it reads best in order.
fn stage_seals_into(
    tree: &sled::Tree,
    st: &mut State,
    touched: &HashMap<u32, Undo>,
    next_seq: u64,
    batch: &mut Writes,
    seals: &mut Vec<StagedSeal>,
) -> Result<(), StoreError> {
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
    seals.reserve(due.len());
    for sid in due {
        let Some(s) = st.series.get_mut(&sid) else {
            continue;
        };
        if s.open.is_empty() {
            continue;
        }
        // The rows leave the open chunk only once everything is staged (see the end).
        let mut sorted = s.open.clone();
        sorted.sort_by_key(|r| (r.ts, r.seq));
        let (mut chunks, mut chunk_bytes, mut pages, mut page_bytes) = (0, 0, 0, 0);
        let mut replaced_page_bytes = 0;
        for run in split_runs(&sorted) {
            let first_seq = run.iter().map(|r| r.seq).min().unwrap_or(0);
            let chunk = codec::encode_chunk(run);
            chunks += 1;
            chunk_bytes += chunk.len() as u64;
            batch.insert(&chunk_key(sid, run[0].ts, first_seq)[..], chunk);
        }
        for res in Resolution::BOTH {
            for (page_start, mut page) in rollup::pages_of(&sorted, res) {
                let key = sid_time_key(res.tag(), sid, page_start);
                if let Some(old) = tree.get(key)? {
                    replaced_page_bytes += old.len() as u64;
                    rollup::decode_page(&old, page_start, res, |start, agg| {
                        page.entry(start)
                            .and_modify(|a| a.merge(&agg))
                            .or_insert(agg);
                    })?;
                }
                let encoded = rollup::encode_page(page_start, res, &page);
                pages += 1;
                page_bytes += encoded.len() as u64;
                batch.insert(&key[..], encoded);
            }
        }
        let mut rec = s.rec.clone();
        rec.sealed_through = s.open.last().map_or(rec.sealed_through, |r| r.seq);
        rec.sealed_count += s.open.len() as u64;
        rec.sealed_max_ts = sorted
            .last()
            .map_or(rec.sealed_max_ts, |r| r.ts.max(rec.sealed_max_ts));
        rec.unit.clone_from(&s.unit);
        rec.last = s.last;
        batch.insert(&series_key(sid)[..], encode_rec(&rec, "series")?);
        let taken = std::mem::take(&mut s.open);
        s.set_open(Vec::new());
        seals.push(StagedSeal {
            sid,
            taken,
            rec,
            chunks,
            chunk_bytes,
            pages,
            page_bytes,
            replaced_page_bytes,
        });
    }
    Ok(())
}

/// Puts memory back as it was before a batch that did not reach sled.
pub(super) fn rollback(st: &mut State, undo: HashMap<u32, Undo>, seals: Vec<StagedSeal>) {
    let replaced: u64 = seals.iter().map(|s| s.replaced_page_bytes).sum();
    st.rollup_bytes_replaced = st.rollup_bytes_replaced.saturating_sub(replaced);
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

/// Rebuilds the open chunks from the log after the replay checkpoint, and the recent
/// fingerprints from the last `window` readings.
pub(super) fn replay(tree: &sled::Tree, st: &mut State) -> Result<(), StoreError> {
    let oldest = st.floor.saturating_add(1).max(1);
    let start = st.replay_from.max(oldest);
    let recent_from = st.next_seq.saturating_sub(st.window).max(oldest);
    let first_key = match block_holding(tree, start.min(recent_from))? {
        Some((first, _)) => first,
        None => start,
    };
    for r in tree.range(log_key(first_key)..=log_key(u64::MAX)) {
        let (k, v) = r?;
        for lr in codec::decode_block(&v, u64_from(&k[1..]))? {
            if lr.row.seq >= recent_from {
                st.recent
                    .push(fingerprint(lr.sid, lr.row.ts, lr.row.value.to_bits()));
            }
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
    st.recent.trim();
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
    use crate::store::HOUR_MS;

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
            assert!(r.len() <= CHUNK_MAX_ROWS);
            assert!(r[r.len() - 1].ts - r[0].ts <= CHUNK_SPAN_MS);
        }
        // A seal of a few more than CHUNK_ROWS readings within the span is one chunk.
        let runs = split_runs(&rows[..CHUNK_ROWS + 7]);
        assert_eq!(runs.len(), 1);
        let rows: Vec<Row> = (0..3000)
            .map(|i| Row {
                seq: i,
                ts: i as i64,
                recv: 0,
                value: 1.0,
                unit: None,
            })
            .collect();
        let lens: Vec<usize> = split_runs(&rows).iter().map(|r| r.len()).collect();
        // Longer than CHUNK_MAX_ROWS within the span: equal parts, no small tail.
        assert_eq!(lens, vec![1000, 1000, 1000]);
        assert!(split_runs(&[]).is_empty());
    }
}
