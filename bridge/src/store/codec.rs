//! Byte formats of the log blocks and series chunks: varints, values, units.
//!
//! Everything here is pure (no sled, no locks) so that it can be tested byte for byte. Decoders
//! take untrusted bytes: every read is bounds-checked and a short or malformed input is an
//! error, never a panic or an unbounded allocation.
//!
//! # Values
//! A value that is a decimal with at most [`MAX_DECIMALS`] digits after the point (`21`, `21.5`,
//! `-3.25`) is stored as the integer `value * 10^k` (zig-zag varint), which is exact: the encoder
//! checks that dividing back gives the same bits. Anything else (huge, tiny, `-0.0`, non-finite)
//! is stored as its 8 raw bytes.
//!
//! # Log block (value of key `L` first-seq)
//! `n` (varint), then `n` entries; the seq of entry `i` is first-seq + `i`:
//!
//! | field | encoding |
//! | --- | --- |
//! | flags | u8: bits 0-2 value mode (0-6 decimals, 7 raw), bit 3 unit absent, bit 4 unit named, bit 5 receive time from the previous entry's |
//! | series id | varint |
//! | event time | zig-zag varint delta from the previous entry's event time (first: from 0) |
//! | receive time | zig-zag varint delta from the previous entry's receive time when bit 5 is set (every entry but the first), else from this entry's event time (blocks written before bit 5 existed: a reading sent long after its event time took 4 or 5 bytes here) |
//! | value | zig-zag varint of the scaled integer, or 8 bytes little-endian |
//! | unit | only when named: varint length + UTF-8 |
//!
//! # Chunk (value of key `C` sid min-time first-seq)
//! Columns of `n` rows of one series sorted by (event time, seq):
//! `version` u8 (2; 1 = written before the receive mode existed, mode 0 implied), `n` varint,
//! event times (first zig-zag, then zig-zag delta-of-delta), seqs (first varint, then zig-zag
//! delta-of-delta), a receive mode byte and the receive times: mode 0 zig-zag deltas of
//! `recv - ts` (live data: a reading arrives a few ms after its event time), mode 1 the first
//! `recv - ts`, then zig-zag deltas of `recv` (a backfill: readings sent long after their event
//! times arrive close together); the encoder writes whichever is shorter; a value
//! mode byte (0-6 decimals: zig-zag deltas of the scaled integers; 0xFF: 8 raw bytes each), and
//! the unit exceptions (count, then row index + 1 = absent / 2 = named + string).

/// Most digits after the decimal point a value may have to be stored as a scaled integer.
pub(crate) const MAX_DECIMALS: u8 = 6;
const RAW_MODE: u8 = 7;
const CHUNK_VERSION: u8 = 2;
/// Chunks written before the receive mode byte (always mode 0).
const CHUNK_VERSION_1: u8 = 1;
const RECV_FROM_TS: u8 = 0;
const RECV_FROM_PREV: u8 = 1;
const CHUNK_RAW: u8 = 0xFF;
const F_UNIT_ABSENT: u8 = 8;
const F_UNIT_NAMED: u8 = 16;
const F_RECV_PREV: u8 = 32;
/// Largest scaled integer magnitude (every integer up to it is exact in an f64).
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;
const POW10: [f64; 7] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6];

/// Bytes that are not a valid block or chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed {0}")]
pub(crate) struct Malformed(pub(crate) &'static str);

/// A unit that differs from the series' base unit (the first unit the series was stored with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UnitOverride {
    /// The reading had no unit.
    Absent,
    /// The reading had this unit.
    Named(String),
}

/// One reading of a known series, as kept in open chunks and decoded from chunks and blocks.
/// `unit: None` means the series' base unit (almost always; keeps a row at 40 bytes).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub(crate) seq: u64,
    pub(crate) ts: i64,
    pub(crate) recv: i64,
    pub(crate) value: f64,
    pub(crate) unit: Option<Box<UnitOverride>>,
}

/// A log block entry: the row and the series it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LogRow {
    pub(crate) sid: u32,
    pub(crate) row: Row,
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint at `pos`; `None` when truncated or longer than 64 bits.
pub(crate) fn get_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    let mut shift = 0u32;
    loop {
        let byte = *b.get(*pos)?;
        *pos += 1;
        if shift > 63 || (shift == 63 && byte > 1) {
            return None;
        }
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
    }
}

pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_i(out: &mut Vec<u8>, v: i64) {
    put_varint(out, zigzag(v));
}

fn get_i(b: &[u8], pos: &mut usize) -> Option<i64> {
    get_varint(b, pos).map(unzigzag)
}

fn get_f64(b: &[u8], pos: &mut usize) -> Option<f64> {
    let raw: [u8; 8] = b.get(*pos..pos.checked_add(8)?)?.try_into().ok()?;
    *pos += 8;
    Some(f64::from_le_bytes(raw))
}

fn get_str(b: &[u8], pos: &mut usize) -> Option<String> {
    let len = usize::try_from(get_varint(b, pos)?).ok()?;
    let end = pos.checked_add(len)?;
    let s = std::str::from_utf8(b.get(*pos..end)?).ok()?;
    *pos = end;
    Some(s.to_owned())
}

/// `value * 10^k` when that integer gives back exactly `value`.
fn scaled(value: f64, k: u8) -> Option<i64> {
    let p = POW10[usize::from(k)];
    let m = (value * p).round();
    // Also refuses NaN and infinities.
    if m.is_nan() || m.abs() > MAX_EXACT {
        return None;
    }
    let m = m as i64;
    (unscaled(m, k).to_bits() == value.to_bits()).then_some(m)
}

fn unscaled(m: i64, k: u8) -> f64 {
    m as f64 / POW10[usize::from(k)]
}

/// The fewest decimals that store `value` exactly, if any.
pub(crate) fn decimals(value: f64) -> Option<u8> {
    (0..=MAX_DECIMALS).find(|k| scaled(value, *k).is_some())
}

// ---------- log blocks ----------

/// Encodes consecutive log entries (their seqs are implicit).
pub(crate) fn encode_block(rows: &[LogRow]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + rows.len() * 8);
    put_varint(&mut out, rows.len() as u64);
    let mut prev_ts = 0i64;
    let mut prev_recv = None;
    for LogRow { sid, row } in rows {
        let k = decimals(row.value);
        let mut flags = k.unwrap_or(RAW_MODE);
        match row.unit.as_deref() {
            None => {}
            Some(UnitOverride::Absent) => flags |= F_UNIT_ABSENT,
            Some(UnitOverride::Named(_)) => flags |= F_UNIT_NAMED,
        }
        if prev_recv.is_some() {
            flags |= F_RECV_PREV;
        }
        out.push(flags);
        put_varint(&mut out, u64::from(*sid));
        put_i(&mut out, row.ts.wrapping_sub(prev_ts));
        put_i(&mut out, row.recv.wrapping_sub(prev_recv.unwrap_or(row.ts)));
        match k.and_then(|k| scaled(row.value, k)) {
            Some(m) => put_i(&mut out, m),
            None => out.extend_from_slice(&row.value.to_le_bytes()),
        }
        if let Some(UnitOverride::Named(u)) = row.unit.as_deref() {
            put_varint(&mut out, u.len() as u64);
            out.extend_from_slice(u.as_bytes());
        }
        prev_ts = row.ts;
        prev_recv = Some(row.recv);
    }
    out
}

/// Number of entries in a block, without decoding them.
pub(crate) fn block_len(b: &[u8]) -> Result<u64, Malformed> {
    get_varint(b, &mut 0).ok_or(Malformed("log block"))
}

/// Decodes a block whose first entry has seq `first_seq`.
pub(crate) fn decode_block(b: &[u8], first_seq: u64) -> Result<Vec<LogRow>, Malformed> {
    decode_block_opt(b, first_seq).ok_or(Malformed("log block"))
}

fn decode_block_opt(b: &[u8], first_seq: u64) -> Option<Vec<LogRow>> {
    let mut pos = 0;
    let n = get_varint(b, &mut pos)?;
    // Every entry takes at least 4 bytes: bounds the allocation by the input size.
    let mut rows = Vec::with_capacity(usize::try_from(n).ok()?.min(b.len() / 4));
    let mut prev_ts = 0i64;
    let mut prev_recv = None;
    for i in 0..n {
        let flags = *b.get(pos)?;
        pos += 1;
        if flags & !(7 | F_UNIT_ABSENT | F_UNIT_NAMED | F_RECV_PREV) != 0 {
            return None;
        }
        let sid = u32::try_from(get_varint(b, &mut pos)?).ok()?;
        let ts = prev_ts.wrapping_add(get_i(b, &mut pos)?);
        let recv_base = if flags & F_RECV_PREV != 0 {
            prev_recv?
        } else {
            ts
        };
        let recv = recv_base.wrapping_add(get_i(b, &mut pos)?);
        prev_recv = Some(recv);
        let mode = flags & 7;
        let value = if mode == RAW_MODE {
            get_f64(b, &mut pos)?
        } else if mode <= MAX_DECIMALS {
            unscaled(get_i(b, &mut pos)?, mode)
        } else {
            return None;
        };
        let unit = match (flags & F_UNIT_ABSENT != 0, flags & F_UNIT_NAMED != 0) {
            (false, false) => None,
            (true, false) => Some(Box::new(UnitOverride::Absent)),
            (false, true) => Some(Box::new(UnitOverride::Named(get_str(b, &mut pos)?))),
            (true, true) => return None,
        };
        rows.push(LogRow {
            sid,
            row: Row {
                seq: first_seq.checked_add(i)?,
                ts,
                recv,
                value,
                unit,
            },
        });
        prev_ts = ts;
    }
    (pos == b.len()).then_some(rows)
}

// ---------- chunks ----------

/// Encodes rows of one series; they must be sorted by (event time, seq) and non-empty.
///
/// Long: one pass writing the chunk format field by field, the mirror of `decode_chunk_opt`;
/// split, the two would no longer read side by side.
pub(crate) fn encode_chunk(rows: &[Row]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + rows.len() * 5);
    out.push(CHUNK_VERSION);
    put_varint(&mut out, rows.len() as u64);
    let (mut prev_ts, mut prev_delta) = (0i64, 0i64);
    for (i, r) in rows.iter().enumerate() {
        if i == 0 {
            put_i(&mut out, r.ts);
        } else {
            let delta = r.ts.wrapping_sub(prev_ts);
            put_i(&mut out, delta.wrapping_sub(prev_delta));
            prev_delta = delta;
        }
        prev_ts = r.ts;
    }
    let (mut prev_seq, mut prev_step) = (0u64, 0i64);
    for (i, r) in rows.iter().enumerate() {
        if i == 0 {
            put_varint(&mut out, r.seq);
        } else {
            let step = r.seq.wrapping_sub(prev_seq) as i64;
            put_i(&mut out, step.wrapping_sub(prev_step));
            prev_step = step;
        }
        prev_seq = r.seq;
    }
    let mut from_ts = Vec::with_capacity(rows.len() * 2);
    let mut prev_off = 0i64;
    for r in rows {
        let off = r.recv.wrapping_sub(r.ts);
        put_i(&mut from_ts, off.wrapping_sub(prev_off));
        prev_off = off;
    }
    let mut from_prev = Vec::with_capacity(rows.len() * 2);
    let mut prev_recv = None;
    for r in rows {
        put_i(
            &mut from_prev,
            r.recv.wrapping_sub(prev_recv.unwrap_or(r.ts)),
        );
        prev_recv = Some(r.recv);
    }
    if from_prev.len() < from_ts.len() {
        out.push(RECV_FROM_PREV);
        out.extend_from_slice(&from_prev);
    } else {
        out.push(RECV_FROM_TS);
        out.extend_from_slice(&from_ts);
    }
    match chunk_decimals(rows) {
        Some((k, ms)) => {
            out.push(k);
            let mut prev = 0i64;
            for m in ms {
                put_i(&mut out, m.wrapping_sub(prev));
                prev = m;
            }
        }
        None => {
            out.push(CHUNK_RAW);
            for r in rows {
                out.extend_from_slice(&r.value.to_le_bytes());
            }
        }
    }
    let exceptions: Vec<(usize, &UnitOverride)> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.unit.as_deref().map(|u| (i, u)))
        .collect();
    put_varint(&mut out, exceptions.len() as u64);
    for (i, u) in exceptions {
        put_varint(&mut out, i as u64);
        match u {
            UnitOverride::Absent => out.push(1),
            UnitOverride::Named(s) => {
                out.push(2);
                put_varint(&mut out, s.len() as u64);
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
    out
}

/// One decimal count for the whole chunk and the scaled integers, when every value fits.
fn chunk_decimals(rows: &[Row]) -> Option<(u8, Vec<i64>)> {
    let mut k = 0u8;
    for r in rows {
        k = k.max(decimals(r.value)?);
    }
    while k <= MAX_DECIMALS {
        let ms: Option<Vec<i64>> = rows.iter().map(|r| scaled(r.value, k)).collect();
        if let Some(ms) = ms {
            return Some((k, ms));
        }
        k += 1;
    }
    None
}

/// Decodes a chunk.
pub(crate) fn decode_chunk(b: &[u8]) -> Result<Vec<Row>, Malformed> {
    decode_chunk_opt(b).ok_or(Malformed("chunk"))
}

/// The largest seq in a chunk, read without decoding its rows (the times are skipped, the seq
/// column read; nothing is allocated).
pub(crate) fn chunk_max_seq(b: &[u8]) -> Result<u64, Malformed> {
    let malformed = || Malformed("chunk");
    let version = *b.first().ok_or_else(malformed)?;
    if version != CHUNK_VERSION && version != CHUNK_VERSION_1 {
        return Err(malformed());
    }
    let mut pos = 1;
    let n = get_varint(b, &mut pos).ok_or_else(malformed)?;
    if n == 0 || n > (b.len() / 4) as u64 {
        return Err(malformed());
    }
    for _ in 0..n {
        get_varint(b, &mut pos).ok_or_else(malformed)?;
    }
    let mut seq = get_varint(b, &mut pos).ok_or_else(malformed)?;
    let (mut max, mut step) = (seq, 0i64);
    for _ in 1..n {
        step = step.wrapping_add(get_i(b, &mut pos).ok_or_else(malformed)?);
        seq = seq.wrapping_add(step as u64);
        max = max.max(seq);
    }
    Ok(max)
}

/// Decodes a chunk, `None` when it is malformed.
///
/// Long: one pass reading the chunk format field by field, the mirror of `encode_chunk`.
fn decode_chunk_opt(b: &[u8]) -> Option<Vec<Row>> {
    let version = *b.first()?;
    if version != CHUNK_VERSION && version != CHUNK_VERSION_1 {
        return None;
    }
    let mut pos = 1;
    let n = usize::try_from(get_varint(b, &mut pos)?).ok()?;
    // Each row takes at least 4 bytes (time, seq, offset, value).
    if n == 0 || n > b.len() / 4 {
        return None;
    }
    let mut rows: Vec<Row> = Vec::with_capacity(n);
    let (mut ts, mut delta) = (0i64, 0i64);
    for i in 0..n {
        if i == 0 {
            ts = get_i(b, &mut pos)?;
        } else {
            delta = delta.wrapping_add(get_i(b, &mut pos)?);
            ts = ts.wrapping_add(delta);
        }
        rows.push(Row {
            seq: 0,
            ts,
            recv: 0,
            value: 0.0,
            unit: None,
        });
    }
    let (mut seq, mut step) = (0u64, 0i64);
    for (i, r) in rows.iter_mut().enumerate() {
        seq = if i == 0 {
            get_varint(b, &mut pos)?
        } else {
            step = step.wrapping_add(get_i(b, &mut pos)?);
            seq.wrapping_add(step as u64)
        };
        r.seq = seq;
    }
    let recv_mode = if version == CHUNK_VERSION_1 {
        RECV_FROM_TS
    } else {
        pos += 1;
        *b.get(pos - 1)?
    };
    match recv_mode {
        RECV_FROM_TS => {
            let mut off = 0i64;
            for r in rows.iter_mut() {
                off = off.wrapping_add(get_i(b, &mut pos)?);
                r.recv = r.ts.wrapping_add(off);
            }
        }
        RECV_FROM_PREV => {
            let mut prev = None;
            for r in rows.iter_mut() {
                r.recv = prev.unwrap_or(r.ts).wrapping_add(get_i(b, &mut pos)?);
                prev = Some(r.recv);
            }
        }
        _ => return None,
    }
    let mode = *b.get(pos)?;
    pos += 1;
    if mode == CHUNK_RAW {
        for r in rows.iter_mut() {
            r.value = get_f64(b, &mut pos)?;
        }
    } else if mode <= MAX_DECIMALS {
        let mut m = 0i64;
        for r in rows.iter_mut() {
            m = m.wrapping_add(get_i(b, &mut pos)?);
            r.value = unscaled(m, mode);
        }
    } else {
        return None;
    }
    let exceptions = get_varint(b, &mut pos)?;
    for _ in 0..exceptions {
        let i = usize::try_from(get_varint(b, &mut pos)?).ok()?;
        let tag = *b.get(pos)?;
        pos += 1;
        let unit = match tag {
            1 => UnitOverride::Absent,
            2 => UnitOverride::Named(get_str(b, &mut pos)?),
            _ => return None,
        };
        rows.get_mut(i)?.unit = Some(Box::new(unit));
    }
    (pos == b.len()).then_some(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: u64, ts: i64, recv: i64, value: f64, unit: Option<UnitOverride>) -> Row {
        Row {
            seq,
            ts,
            recv,
            value,
            unit: unit.map(Box::new),
        }
    }

    fn edge_values() -> Vec<f64> {
        vec![
            0.0,
            -0.0,
            21.5,
            -3.25,
            0.1,
            123.456789,
            1e300,
            -1e-300,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            9_007_199_254_740_992.0,
            9_007_199_254_740_993.0,
            -9_007_199_254_740_992.0,
            i64::MAX as f64,
            4.35,
            1.0 / 3.0,
        ]
    }

    #[test]
    fn decimals_are_exact_or_refused() {
        assert_eq!(decimals(21.0), Some(0));
        assert_eq!(decimals(21.37), Some(2));
        assert_eq!(decimals(-0.0), None);
        assert_eq!(decimals(1.0 / 3.0), None);
        assert_eq!(decimals(f64::MAX), None);
        for v in edge_values() {
            if let Some(k) = decimals(v) {
                let m = scaled(v, k).expect("scaled");
                assert_eq!(unscaled(m, k).to_bits(), v.to_bits(), "{v}");
            }
        }
    }

    #[test]
    fn blocks_round_trip_edge_values() {
        let times = [i64::MIN, -1, 0, 1_790_000_000_000, i64::MAX, i64::MIN + 1];
        let mut rows = Vec::new();
        for (i, v) in edge_values().into_iter().enumerate() {
            let ts = times[i % times.len()];
            let unit = match i % 3 {
                0 => None,
                1 => Some(UnitOverride::Absent),
                _ => Some(UnitOverride::Named("kPa".to_owned())),
            };
            rows.push(LogRow {
                sid: [0, 1, 70_000, u32::MAX][i % 4],
                row: row(
                    u64::MAX - 100 + i as u64,
                    ts,
                    times[(i + 1) % times.len()],
                    v,
                    unit,
                ),
            });
        }
        let b = encode_block(&rows);
        let back = decode_block(&b, u64::MAX - 100).expect("decodes");
        assert_eq!(back.len(), rows.len());
        for (a, b) in back.iter().zip(&rows) {
            assert_eq!(a.row.value.to_bits(), b.row.value.to_bits());
            assert_eq!(
                (a.sid, a.row.seq, a.row.ts, a.row.recv),
                (b.sid, b.row.seq, b.row.ts, b.row.recv)
            );
            assert_eq!(a.row.unit, b.row.unit);
        }
        assert_eq!(block_len(&b), Ok(rows.len() as u64));
        // The seq of the last entry would overflow: refused.
        assert!(decode_block(&b, u64::MAX - 3).is_err());
    }

    #[test]
    fn typical_block_entries_are_small() {
        let rows: Vec<LogRow> = (0..1000)
            .map(|i| LogRow {
                sid: 1 + i % 1000,
                row: row(
                    1 + u64::from(i),
                    1_790_000_000_000 + i64::from(i / 1000) * 1000,
                    1_790_000_000_003,
                    20.0 + f64::from(i % 97) / 100.0,
                    None,
                ),
            })
            .collect();
        let b = encode_block(&rows);
        assert!(b.len() <= 8 * rows.len(), "{} bytes", b.len());
    }

    /// Readings sent days after their event time (a backfill) cost no more than live ones:
    /// receive times are coded from the previous entry's.
    #[test]
    fn backfilled_block_entries_are_small() {
        let now = 1_790_000_000_000i64;
        let rows: Vec<LogRow> = (0..1000)
            .map(|i| LogRow {
                sid: 1 + i % 100,
                row: row(
                    1 + u64::from(i),
                    now - 3 * 86_400_000 + i64::from(i / 100) * 1000,
                    now + i64::from(i / 50),
                    20.0 + f64::from(i % 97) / 100.0,
                    None,
                ),
            })
            .collect();
        let b = encode_block(&rows);
        assert!(b.len() <= 7 * rows.len(), "{} bytes", b.len());
        let back = decode_block(&b, 1).unwrap();
        assert_eq!(back, rows);
    }

    /// Blocks written before receive times were coded from the previous entry still decode.
    #[test]
    fn blocks_with_receive_times_from_event_times_decode() {
        let mut b = vec![2u8];
        for (ts_delta, recv_off, value) in [(1_000i64, 7i64, 215i64), (1_000, 9, 216)] {
            b.push(1); // one decimal, no unit flags, receive time from the event time
            put_varint(&mut b, 4);
            put_i(&mut b, ts_delta);
            put_i(&mut b, recv_off);
            put_i(&mut b, value);
        }
        let rows = decode_block(&b, 10).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].row.ts, rows[0].row.recv), (1_000, 1_007));
        assert_eq!((rows[1].row.ts, rows[1].row.recv), (2_000, 2_009));
        assert_eq!((rows[1].row.seq, rows[1].row.value), (11, 21.6));
        // Bit 5 on the first entry has no previous receive time: malformed.
        let mut bad = b.clone();
        bad[1] |= F_RECV_PREV;
        assert!(decode_block(&bad, 10).is_err());
    }

    #[test]
    fn chunks_round_trip_edge_values() {
        let values = edge_values();
        let mut rows: Vec<Row> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let unit = match i % 5 {
                    1 => Some(UnitOverride::Absent),
                    3 => Some(UnitOverride::Named("°F".to_owned())),
                    _ => None,
                };
                row(
                    1000 - i as u64 * 7,
                    i64::MIN + i as i64 * 1000,
                    i64::MAX - i as i64,
                    *v,
                    unit,
                )
            })
            .collect();
        rows.push(row(u64::MAX, i64::MAX, i64::MIN, 1.5, None));
        let b = encode_chunk(&rows);
        assert_eq!(chunk_max_seq(&b), Ok(u64::MAX));
        rows.pop();
        assert_eq!(chunk_max_seq(&encode_chunk(&rows)), Ok(1000));
        rows.push(row(u64::MAX, i64::MAX, i64::MIN, 1.5, None));
        let back = decode_chunk(&b).expect("decodes");
        assert_eq!(back.len(), rows.len());
        for (a, b) in back.iter().zip(&rows) {
            assert_eq!(a.value.to_bits(), b.value.to_bits());
            assert_eq!(
                (a.seq, a.ts, a.recv, &a.unit),
                (b.seq, b.ts, b.recv, &b.unit)
            );
        }
    }

    #[test]
    fn decimal_chunks_are_compact_and_exact() {
        let rows: Vec<Row> = (0..512)
            .map(|i| {
                let ts = 1_790_000_000_000 + i * 1000;
                row(
                    7 + i as u64 * 1000,
                    ts,
                    ts + 4,
                    (2100 + 5 * (i % 13)) as f64 / 100.0,
                    None,
                )
            })
            .collect();
        let b = encode_chunk(&rows);
        assert!(b.len() <= 4 * rows.len() + 16, "{} bytes", b.len());
        assert_eq!(decode_chunk(&b).expect("decodes"), rows);
        // Mixed integral and huge values fall back to raw bytes, still exact.
        let mixed = vec![row(1, 0, 0, 1.0, None), row(2, 1, 1, 1e300, None)];
        assert_eq!(decode_chunk(&encode_chunk(&mixed)).expect("decodes"), mixed);
    }

    /// A backfill (sent days after the event times, arriving together) is as compact as live
    /// data; chunks written before the receive mode byte still decode.
    #[test]
    fn backfilled_chunks_are_compact_and_version_1_decodes() {
        let now = 1_790_000_000_000i64;
        let rows: Vec<Row> = (0..512)
            .map(|i| {
                let ts = now - 3 * 86_400_000 + i * 1000;
                row(7 + i as u64 * 100, ts, now + i / 3, 21.5, None)
            })
            .collect();
        let b = encode_chunk(&rows);
        // One byte each for time, seq, receive time and value (receive times as `recv - ts`
        // deltas would take two).
        assert!(b.len() <= 4 * rows.len() + 24, "{} bytes", b.len());
        assert_eq!(decode_chunk(&b).expect("decodes"), rows);

        // Version 1: no mode byte, receive times as deltas of recv - ts.
        let v1 = [
            CHUNK_VERSION_1,
            2,
            0xd0, // ts 1000 as zig-zag varint: 2000 = 0xd0 0x0f
            0x0f,
            2,    // ts delta-of-delta 1 (zig-zag 2): ts 1001
            5,    // first seq 5
            2,    // seq step 1: 6
            8,    // offset 4: recv 1004
            2,    // offset 4 + 1 = 5: recv 1006
            1,    // one decimal
            0xae, // 215 zig-zag = 430 = 0xae 0x03
            0x03,
            2, // +1: 216
            0, // no unit exceptions
        ];
        let back = decode_chunk(&v1).expect("version 1 decodes");
        assert_eq!(
            back,
            vec![
                row(5, 1000, 1004, 21.5, None),
                row(6, 1001, 1006, 21.6, None)
            ]
        );
    }

    #[test]
    fn truncated_or_corrupt_input_is_an_error() {
        let rows = vec![
            row(5, 100, 105, 0.25, Some(UnitOverride::Named("C".to_owned()))),
            row(6, 200, 201, 1e300, Some(UnitOverride::Absent)),
        ];
        let chunk = encode_chunk(&rows);
        for n in 0..chunk.len() {
            assert!(decode_chunk(&chunk[..n]).is_err(), "chunk cut at {n}");
        }
        let block = encode_block(
            &rows
                .iter()
                .map(|r| LogRow {
                    sid: 9,
                    row: r.clone(),
                })
                .collect::<Vec<_>>(),
        );
        for n in 0..block.len() {
            assert!(decode_block(&block[..n], 5).is_err(), "block cut at {n}");
        }
        let mut long = chunk.clone();
        long.push(0);
        assert!(decode_chunk(&long).is_err());
        // Claims of huge counts fail without allocating for them.
        let mut huge = vec![CHUNK_VERSION];
        put_varint(&mut huge, u64::MAX);
        assert!(decode_chunk(&huge).is_err());
        let mut huge = Vec::new();
        put_varint(&mut huge, u64::MAX);
        assert!(decode_block(&huge, 0).is_err());
        assert!(get_varint(&[0xff; 11], &mut 0).is_none());
        // Flipping any single byte never panics.
        for i in 0..chunk.len() {
            let mut c = chunk.clone();
            c[i] ^= 0x5a;
            let _ = decode_chunk(&c);
        }
        for i in 0..block.len() {
            let mut c = block.clone();
            c[i] ^= 0x5a;
            let _ = decode_block(&c, 5);
        }
    }

    fn any_row() -> impl proptest::strategy::Strategy<Value = Row> {
        use proptest::prelude::*;
        let unit = prop_oneof![
            Just(None),
            Just(Some(UnitOverride::Absent)),
            "[a-zA-Z%°/ ]{0,6}".prop_map(|s| Some(UnitOverride::Named(s))),
        ];
        let value = prop_oneof![
            any::<u64>().prop_map(f64::from_bits),
            (-1_000_000i64..1_000_000, 0u32..4).prop_map(|(m, k)| m as f64 / 10f64.powi(k as i32)),
        ];
        (any::<u64>(), any::<i64>(), any::<i64>(), value, unit).prop_map(
            |(seq, ts, recv, value, unit)| Row {
                seq,
                ts,
                recv,
                value,
                unit: unit.map(Box::new),
            },
        )
    }

    fn same(a: &Row, b: &Row) -> bool {
        (a.seq, a.ts, a.recv, a.value.to_bits(), &a.unit)
            == (b.seq, b.ts, b.recv, b.value.to_bits(), &b.unit)
    }

    proptest::proptest! {
        #[test]
        fn any_chunk_round_trips(mut rows in proptest::collection::vec(any_row(), 1..300)) {
            rows.sort_by_key(|r| (r.ts, r.seq));
            let back = decode_chunk(&encode_chunk(&rows)).expect("decodes");
            proptest::prop_assert_eq!(back.len(), rows.len());
            for (a, b) in back.iter().zip(&rows) {
                proptest::prop_assert!(same(a, b), "{:?} != {:?}", a, b);
            }
        }

        #[test]
        fn any_block_round_trips(
            rows in proptest::collection::vec((proptest::prelude::any::<u32>(), any_row()), 1..300),
            first in 0u64..u64::MAX / 2,
        ) {
            let rows: Vec<LogRow> = rows
                .into_iter()
                .enumerate()
                .map(|(i, (sid, mut row))| {
                    row.seq = first + i as u64;
                    LogRow { sid, row }
                })
                .collect();
            let back = decode_block(&encode_block(&rows), first).expect("decodes");
            proptest::prop_assert_eq!(back.len(), rows.len());
            for (a, b) in back.iter().zip(&rows) {
                proptest::prop_assert!(a.sid == b.sid && same(&a.row, &b.row));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode_chunk(&bytes);
            let _ = decode_block(&bytes, 1);
            let _ = block_len(&bytes);
            for res in crate::store::rollup::Resolution::BOTH {
                let _ = crate::store::rollup::decode_page(&bytes, 0, res, |_, _| {});
            }
        }
    }
}
