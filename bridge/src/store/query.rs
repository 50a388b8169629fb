//! Reading the store: catalogue, devices, raw readings, the log after a seq, rollups.

use super::chunks::*;
use super::layout::*;
use super::*;

pub(super) fn matches_any(filters: &[TopicFilter], topic: &str) -> bool {
    filters.is_empty() || filters.iter().any(|f| f.matches(topic))
}

pub(super) fn to_reading(row: Row, names: &Names) -> Reading {
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

impl Store {
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
            let mut picked = self.page_rows(&snaps, (from, to), floor, q.after, limit + 1)?;
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

    /// The `keep` rows with the smallest seqs after `after` of the series in `snaps`, with
    /// event times in `[from, to)`, as (seq, index in `snaps`, row), in no order.
    ///
    /// Reads at most what it keeps plus one chunk's worth per chunk it has to look into: a
    /// series' sealed chunks are decoded one at a time in order of their first seq (their
    /// keys carry it), and once `keep` rows are held, a chunk whose first seq is above the
    /// largest held cannot add one, nor can any after it. The chunks of one seal cover
    /// interleaved seqs, so a page may decode the other chunks of the seals it reads from.
    /// Of the chunks that start before the cursor (`after`), only the seq column is read,
    /// and only those holding a seq after it are decoded.
    fn page_rows(
        &self,
        snaps: &[SeriesSnapshot],
        (from, to): (i64, i64),
        floor: u64,
        after: u64,
        keep: usize,
    ) -> Result<Vec<(u64, usize, Row)>, StoreError> {
        let mut picked: Vec<(u64, usize, Row)> = Vec::with_capacity(keep.min(4096) + 1);
        let prune = |v: &mut Vec<(u64, usize, Row)>| {
            if v.len() > keep {
                v.select_nth_unstable_by_key(keep - 1, |e| e.0);
                v.truncate(keep);
            }
        };
        // The largest seq held once `keep` are held: nothing above it can be returned.
        let bar = |v: &[(u64, usize, Row)]| {
            (v.len() >= keep).then(|| v.iter().map(|e| e.0).max().unwrap_or(0))
        };
        let lower = after.max(floor);
        for (i, s) in snaps.iter().enumerate() {
            for row in &s.open {
                if row.seq > after && row.ts >= from && row.ts < to {
                    picked.push((row.seq, i, row.clone()));
                }
            }
            prune(&mut picked);
            for (first_seq, key) in self.chunk_keys_by_seq(s.sid, from, to)? {
                if first_seq > s.sealed_through || bar(&picked).is_some_and(|b| first_seq > b) {
                    break;
                }
                let Some(chunk) = self.inner.tree.get(key)? else {
                    continue; // removed by retention since the listing
                };
                // Before the cursor: skipped when its seq column says it holds nothing after it.
                if first_seq <= lower && codec::chunk_max_seq(&chunk)? <= lower {
                    continue;
                }
                #[cfg(test)]
                tests::CHUNKS_DECODED.with(|n| n.set(n.get() + 1));
                for row in codec::decode_chunk(&chunk)? {
                    if row.ts >= from
                        && row.ts < to
                        && row.seq > lower
                        && row.seq <= s.sealed_through
                    {
                        picked.push((row.seq, i, row));
                    }
                }
                prune(&mut picked);
            }
        }
        Ok(picked)
    }

    /// The keys of one series' sealed chunks that may hold event times in `[from, to)`,
    /// sorted by the first seq each chunk holds (keys only: no chunk is decoded).
    fn chunk_keys_by_seq(
        &self,
        sid: u32,
        from: i64,
        to: i64,
    ) -> Result<Vec<(u64, sled::IVec)>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let lo = chunk_key(sid, from.saturating_sub(CHUNK_SPAN_MS), 0);
        let hi = chunk_key(sid, to, 0);
        let mut keys = Vec::new();
        for k in self.inner.tree.range(lo..hi).keys() {
            let k = k?;
            let first_seq = k
                .get(13..21)
                .map(u64_from)
                .ok_or(StoreError::Corrupt { what: "chunk key" })?;
            keys.push((first_seq, k));
        }
        keys.sort_unstable_by_key(|e| e.0);
        Ok(keys)
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
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    thread_local! {
        /// Sealed chunks decoded by page queries on this thread.
        pub(super) static CHUNKS_DECODED: Cell<u64> = const { Cell::new(0) };
    }

    const T0: i64 = 1_700_000_000_000;

    fn reading(device: &str, i: i64) -> Reading {
        // Every 7th reading arrives 20 minutes late: chunks of one seal interleave in seq.
        let late = if i % 7 == 3 { 20 * 60_000 } else { 0 };
        Reading {
            device_id: device.to_owned(),
            metric: "t".to_owned(),
            value: i as f64,
            unit: None,
            timestamp_ms: T0 + i * 1000 - late,
            received_at_ms: T0 + i * 1000,
        }
    }

    /// Two series of 30,000 readings each, interleaved.
    fn big_store(dir: &std::path::Path) -> Store {
        let store = Store::open(dir, &StoreOptions::default()).unwrap();
        for b in 0..60 {
            let batch: Vec<Reading> = (b * 500..(b + 1) * 500)
                .flat_map(|i| [reading("d1", i), reading("d2", i)])
                .collect();
            store.append_batch(&batch).unwrap();
        }
        store
    }

    fn query(store: &Store, from: i64, to: i64, after: u64, limit: usize) -> (Vec<u64>, u64) {
        CHUNKS_DECODED.with(|n| n.set(0));
        let q = ReadingQuery {
            filters: vec![TopicFilter::parse("sensors/d1/#").unwrap()],
            from_ms: Some(from),
            to_ms: Some(to),
            after,
            limit,
        };
        let page = store.reading_rows(&q).unwrap();
        let seqs = page.rows.iter().map(|(_, r)| r.seq).collect();
        (seqs, CHUNKS_DECODED.with(Cell::get))
    }

    /// What a page must hold: d1's readings (odd seqs) in the time range, after the cursor.
    fn expected(store: &Store, from: i64, to: i64, after: u64, limit: usize) -> Vec<u64> {
        store
            .log_after(after, 1_000_000)
            .unwrap()
            .into_iter()
            .filter(|s| s.reading.device_id == "d1")
            .filter(|s| (from..to).contains(&s.reading.timestamp_ms))
            .map(|s| s.seq)
            .take(limit)
            .collect()
    }

    /// `from=0&limit=1` on a large series decodes a chunk or two, not the series (it read all
    /// 675,766 readings of a series into memory before).
    #[test]
    fn a_small_page_of_a_large_series_reads_a_few_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = big_store(dir.path());
        let sealed = store.series().unwrap()[0].count;
        assert_eq!(sealed, 30_000);
        let (seqs, decoded) = query(&store, 0, i64::MAX, 0, 1);
        assert_eq!(seqs, [1]);
        assert!(decoded <= 3, "{decoded} chunks decoded for one reading");
        let (seqs, decoded) = query(&store, 0, i64::MAX, 0, 1000);
        assert_eq!(seqs, expected(&store, 0, i64::MAX, 0, 1000));
        // 1,000 readings are 2 seals' worth (512 each) of d1; their chunks, and one more.
        assert!(decoded <= 8, "{decoded} chunks decoded for 1,000 readings");
        // Deep in the series: the chunks before the cursor are skipped by their seqs.
        let (seqs, decoded) = query(&store, 0, i64::MAX, 50_000, 10);
        assert_eq!(seqs, expected(&store, 0, i64::MAX, 50_000, 10));
        assert!(
            decoded <= 4,
            "{decoded} chunks decoded for 10 readings after 50,000"
        );
    }

    /// Pages are what the log says they are, whatever the cursor, range and size.
    #[test]
    fn pages_match_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = big_store(dir.path());
        let mid = T0 + 10_000 * 1000;
        for (from, to) in [(0, i64::MAX), (mid, mid + 3_600_000), (mid, mid + 1)] {
            for after in [0, 1_001, 30_000, 59_990, 70_000] {
                for limit in [1, 10, 700] {
                    let (seqs, _) = query(&store, from, to, after, limit);
                    let want = expected(&store, from, to, after, limit);
                    assert_eq!(
                        seqs, want,
                        "from {from} to {to} after {after} limit {limit}"
                    );
                }
            }
        }
    }
}
