//! Where things live in the sled tree: key tags and encodings, the small records, and finding
//! the log block that holds a seq. The table of keys is in the parent module's documentation.

use serde::{Deserialize, Serialize};

use super::codec::{self, LogRow};
use super::StoreError;

pub(super) const LOG: u8 = b'L';
pub(super) const CHUNK: u8 = b'C';
pub(super) const SERIES: u8 = b'S';
pub(super) const DEVICE: u8 = b'D';
pub(super) const META_FORMAT: &[u8] = b"Zformat";
pub(super) const META_SEQ: &[u8] = b"Zseq";
pub(super) const META_REPLAY: &[u8] = b"Zreplay";
pub(super) const META_FLOOR: &[u8] = b"Zfloor";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct PresenceRecord {
    pub(super) online: bool,
    pub(super) since_ms: i64,
}

// ---------- keys ----------

pub(super) fn ts_bytes(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

pub(super) fn ts_from(b: &[u8]) -> i64 {
    (u64_from(b) ^ (1 << 63)) as i64
}

pub(super) fn u64_from(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(..8) {
        a.copy_from_slice(s);
    }
    u64::from_be_bytes(a)
}

pub(super) fn u32_from(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(..4) {
        a.copy_from_slice(s);
    }
    u32::from_be_bytes(a)
}

pub(super) fn log_key(seq: u64) -> [u8; 9] {
    let mut k = [LOG; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn sid_time_key(tag: u8, sid: u32, ts: i64) -> [u8; 13] {
    let mut k = [tag; 13];
    k[1..5].copy_from_slice(&sid.to_be_bytes());
    k[5..13].copy_from_slice(&ts_bytes(ts));
    k
}

pub(super) fn chunk_key(sid: u32, min_ts: i64, first_seq: u64) -> [u8; 21] {
    let mut k = [CHUNK; 21];
    k[..13].copy_from_slice(&sid_time_key(CHUNK, sid, min_ts));
    k[13..].copy_from_slice(&first_seq.to_be_bytes());
    k
}

pub(super) fn series_key(sid: u32) -> [u8; 5] {
    let mut k = [SERIES; 5];
    k[1..].copy_from_slice(&sid.to_be_bytes());
    k
}

pub(super) fn device_key(device: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(device.len() + 1);
    k.push(DEVICE);
    k.extend_from_slice(device.as_bytes());
    k
}

pub(super) fn decode_rec<T: for<'de> Deserialize<'de>>(
    b: &[u8],
    what: &'static str,
) -> Result<T, StoreError> {
    postcard::from_bytes(b).map_err(|_| StoreError::Corrupt { what })
}

pub(super) fn encode_rec<T: Serialize>(v: &T, what: &'static str) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(v).map_err(|_| StoreError::Encode { what })
}

pub(super) fn read_u64(
    tree: &sled::Tree,
    key: &[u8],
    what: &'static str,
) -> Result<u64, StoreError> {
    match tree.get(key)? {
        Some(v) if v.len() == 8 => Ok(u64_from(&v)),
        Some(_) => Err(StoreError::Corrupt { what }),
        None => Ok(0),
    }
}

/// The writes of one commit, applied atomically by [`Writes::apply`]. A single write is a
/// plain insert or remove, atomic by itself; several go in one `sled::Batch`. The difference
/// matters: sled writes out (and waits for) its log buffer twice for every batch, whatever its
/// size, while a plain write only goes to the buffer. Most commits write one log block only.
#[derive(Debug, Default)]
pub(super) struct Writes {
    writes: Vec<(sled::IVec, Option<sled::IVec>)>,
}

impl Writes {
    pub(super) fn insert(&mut self, key: impl Into<sled::IVec>, value: impl Into<sled::IVec>) {
        self.writes.push((key.into(), Some(value.into())));
    }

    pub(super) fn remove(&mut self, key: impl Into<sled::IVec>) {
        self.writes.push((key.into(), None));
    }

    /// Applies every write, all or none.
    pub(super) fn apply(mut self, tree: &sled::Tree) -> sled::Result<()> {
        if self.writes.len() > 1 {
            let mut batch = sled::Batch::default();
            for (key, value) in self.writes {
                match value {
                    Some(v) => batch.insert(key, v),
                    None => batch.remove(key),
                }
            }
            return tree.apply_batch(batch);
        }
        match self.writes.pop() {
            Some((key, Some(v))) => tree.insert(key, v).map(drop),
            Some((key, None)) => tree.remove(key).map(drop),
            None => Ok(()),
        }
    }
}

/// Stages one log block; returns its encoded size (0 when `rows` is empty).
pub(super) fn put_block(batch: &mut Writes, rows: &[LogRow]) -> usize {
    match rows.first() {
        Some(first) => {
            let block = codec::encode_block(rows);
            let len = block.len();
            batch.insert(&log_key(first.row.seq)[..], block);
            len
        }
        None => 0,
    }
}

/// The block holding `seq` (or the nearest earlier block when `seq` is past its end).
pub(super) fn block_holding(
    tree: &sled::Tree,
    seq: u64,
) -> Result<Option<(u64, sled::IVec)>, StoreError> {
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
}
