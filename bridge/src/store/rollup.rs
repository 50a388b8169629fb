//! Rollups: aggregates per 1-minute and 1-hour bucket, packed into pages.
//!
//! A page holds the buckets of one series inside one page span: the 60 minute buckets of an
//! hour (key `M`) or the 24 hour buckets of a day (key `H`). Pages are written when a chunk is
//! sealed (read-modify-write, in the seal's batch), so they cover exactly the sealed readings;
//! readings still in open chunks are aggregated at query time. A query over 24 h of one series
//! therefore reads 24 minute pages instead of 1,440 records.
//!
//! Page value: `n` (varint), then per bucket: slot (u8, bucket index in the page), count
//! (varint), min, max, sum, last (f64 little-endian), last event time (zig-zag varint offset from
//! the bucket start), last seq (varint).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::codec::{get_varint, put_varint, unzigzag, zigzag, Malformed, Row};

/// One minute and one hour in milliseconds: the two rollup resolutions.
pub const MINUTE_MS: i64 = 60_000;
/// See [`MINUTE_MS`].
pub const HOUR_MS: i64 = 3_600_000;
/// Span of an hour-bucket page.
pub(crate) const DAY_MS: i64 = 24 * HOUR_MS;

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
    pub(crate) fn one(value: f64, ts: i64, seq: u64) -> Self {
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

    pub(crate) fn merge(&mut self, o: &Aggregate) {
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

/// The two stored resolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolution {
    Minute,
    Hour,
}

impl Resolution {
    pub(crate) const BOTH: [Resolution; 2] = [Resolution::Minute, Resolution::Hour];

    pub(crate) fn bucket_ms(self) -> i64 {
        match self {
            Resolution::Minute => MINUTE_MS,
            Resolution::Hour => HOUR_MS,
        }
    }

    pub(crate) fn page_ms(self) -> i64 {
        match self {
            Resolution::Minute => HOUR_MS,
            Resolution::Hour => DAY_MS,
        }
    }

    /// Key tag of its pages.
    pub(crate) fn tag(self) -> u8 {
        match self {
            Resolution::Minute => b'M',
            Resolution::Hour => b'H',
        }
    }
}

pub(crate) fn floor_to(t: i64, step: i64) -> i64 {
    t.div_euclid(step).saturating_mul(step)
}

pub(crate) fn ceil_to(t: i64, step: i64) -> i64 {
    let f = floor_to(t, step);
    if f == t {
        t
    } else {
        f.saturating_add(step)
    }
}

/// Buckets of one page: bucket start -> aggregate.
pub(crate) type Page = BTreeMap<i64, Aggregate>;

pub(crate) fn encode_page(page_start: i64, res: Resolution, page: &Page) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + page.len() * 44);
    put_varint(&mut out, page.len() as u64);
    for (start, a) in page {
        let slot = (start.wrapping_sub(page_start) / res.bucket_ms()) as u8;
        out.push(slot);
        put_varint(&mut out, a.count);
        for f in [a.min, a.max, a.sum, a.last] {
            out.extend_from_slice(&f.to_le_bytes());
        }
        put_varint(&mut out, zigzag(a.last_ts.wrapping_sub(*start)));
        put_varint(&mut out, a.last_seq);
    }
    out
}

/// Decodes a page, calling `each(bucket start, aggregate)` in bucket order.
pub(crate) fn decode_page(
    b: &[u8],
    page_start: i64,
    res: Resolution,
    mut each: impl FnMut(i64, Aggregate),
) -> Result<(), Malformed> {
    let bad = Malformed("rollup page");
    let slots = (res.page_ms() / res.bucket_ms()) as u8;
    let mut pos = 0;
    let n = get_varint(b, &mut pos).ok_or(bad)?;
    let f = |pos: &mut usize| -> Result<f64, Malformed> {
        let raw: [u8; 8] = b
            .get(*pos..*pos + 8)
            .and_then(|s| s.try_into().ok())
            .ok_or(bad)?;
        *pos += 8;
        Ok(f64::from_le_bytes(raw))
    };
    for _ in 0..n {
        let slot = *b.get(pos).ok_or(bad)?;
        pos += 1;
        if slot >= slots {
            return Err(bad);
        }
        let start = page_start.wrapping_add(i64::from(slot) * res.bucket_ms());
        let count = get_varint(b, &mut pos).ok_or(bad)?;
        let (min, max, sum, last) = (f(&mut pos)?, f(&mut pos)?, f(&mut pos)?, f(&mut pos)?);
        let last_ts = start.wrapping_add(unzigzag(get_varint(b, &mut pos).ok_or(bad)?));
        let last_seq = get_varint(b, &mut pos).ok_or(bad)?;
        each(
            start,
            Aggregate {
                min,
                max,
                sum,
                count,
                last,
                last_ts,
                last_seq,
            },
        );
    }
    if pos == b.len() {
        Ok(())
    } else {
        Err(bad)
    }
}

/// Most buckets a query keeps in a dense vector; wider ranges use a map.
const DENSE_MAX: i128 = 1 << 20;

/// The step buckets of one series in a query: a vector indexed by bucket when the range is
/// narrow enough (the usual dashboard query), else a map.
#[derive(Debug)]
pub(crate) struct Buckets {
    step: i64,
    origin: i64,
    dense: Vec<Option<Aggregate>>,
    sparse: BTreeMap<i64, Aggregate>,
}

impl Buckets {
    /// Buckets of width `step` (> 0) for event times in `[from, to)`.
    pub(crate) fn new(from: i64, to: i64, step: i64) -> Buckets {
        let origin = floor_to(from, step);
        let n = (i128::from(to) - i128::from(origin) + i128::from(step) - 1) / i128::from(step);
        let dense = if (1..=DENSE_MAX).contains(&n) {
            vec![None; n as usize]
        } else {
            Vec::new()
        };
        Buckets {
            step,
            origin,
            dense,
            sparse: BTreeMap::new(),
        }
    }

    /// Merges `agg` into the bucket holding event time `ts`.
    pub(crate) fn add(&mut self, ts: i64, agg: &Aggregate) {
        let b = floor_to(ts, self.step);
        let idx = b.checked_sub(self.origin).map(|d| d / self.step);
        let slot = idx
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.dense.get_mut(i));
        match slot {
            Some(Some(a)) => a.merge(agg),
            Some(slot) => *slot = Some(*agg),
            None => {
                self.sparse
                    .entry(b)
                    .and_modify(|a| a.merge(agg))
                    .or_insert(*agg);
            }
        }
    }

    /// Adds raw rows.
    pub(crate) fn add_rows<'a>(&mut self, rows: impl IntoIterator<Item = &'a Row>) {
        for r in rows {
            self.add(r.ts, &Aggregate::one(r.value, r.ts, r.seq));
        }
    }

    /// Non-empty buckets in time order.
    pub(crate) fn into_points(self) -> Vec<(i64, Aggregate)> {
        let (origin, step) = (self.origin, self.step);
        let mut out: Vec<(i64, Aggregate)> = self
            .dense
            .into_iter()
            .enumerate()
            .filter_map(|(i, a)| a.map(|a| (origin.saturating_add(i as i64 * step), a)))
            .collect();
        if !self.sparse.is_empty() {
            out.extend(self.sparse);
            out.sort_by_key(|p| p.0);
        }
        out
    }
}

/// Groups sealed rows into pages of `res`: page start -> buckets.
pub(crate) fn pages_of(rows: &[Row], res: Resolution) -> BTreeMap<i64, Page> {
    let mut pages: BTreeMap<i64, Page> = BTreeMap::new();
    for r in rows {
        let one = Aggregate::one(r.value, r.ts, r.seq);
        pages
            .entry(floor_to(r.ts, res.page_ms()))
            .or_default()
            .entry(floor_to(r.ts, res.bucket_ms()))
            .and_modify(|a| a.merge(&one))
            .or_insert(one);
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_round_trip_and_reject_bad_bytes() {
        let rows: Vec<Row> = (0..200)
            .map(|i| Row {
                seq: 10 + i as u64,
                ts: -HOUR_MS + i * 37_000,
                recv: 0,
                value: (i % 7) as f64 - 2.5,
                unit: None,
            })
            .collect();
        for res in Resolution::BOTH {
            for (start, page) in pages_of(&rows, res) {
                let b = encode_page(start, res, &page);
                let mut back = Page::new();
                decode_page(&b, start, res, |s, a| {
                    back.insert(s, a);
                })
                .expect("decodes");
                assert_eq!(back, page);
                for n in 0..b.len() {
                    assert!(decode_page(&b[..n], start, res, |_, _| {}).is_err());
                }
            }
        }
        // Dense and sparse buckets agree with a plain map, also for negative times.
        for (from, to, step) in [(-HOUR_MS, HOUR_MS, 7_000), (i64::MIN, i64::MAX, HOUR_MS)] {
            let mut b = Buckets::new(from, to, step);
            b.add_rows(&rows);
            let mut want: BTreeMap<i64, Aggregate> = BTreeMap::new();
            for r in &rows {
                let one = Aggregate::one(r.value, r.ts, r.seq);
                want.entry(floor_to(r.ts, step))
                    .and_modify(|a| a.merge(&one))
                    .or_insert(one);
            }
            assert_eq!(b.into_points(), want.into_iter().collect::<Vec<_>>());
        }
        let mut bad_slot = Vec::new();
        put_varint(&mut bad_slot, 1);
        bad_slot.push(60);
        assert!(decode_page(&bad_slot, 0, Resolution::Minute, |_, _| {}).is_err());
        assert_eq!(floor_to(-1, MINUTE_MS), -MINUTE_MS);
        assert_eq!(ceil_to(60_001, MINUTE_MS), 120_000);
        assert_eq!(floor_to(i64::MIN, HOUR_MS), i64::MIN);
    }
}
