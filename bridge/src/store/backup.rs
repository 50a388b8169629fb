//! Online backup: a consistent copy of the store while the hub runs, as a stream of frames a
//! client writes into a new data directory (`edgewatch backup`).
//!
//! [`Store::snapshot_into`] copies every sled tree into a new database next to the store,
//! holding the state lock for the readings tree: the writer and retention (the only ones
//! changing it, both under that lock) wait, so the copy holds the log up to one seq and
//! nothing after it, with the catalogue, chunks and rollups that go with it. Ingest waits
//! meanwhile (backpressure onto MQTT, as for a slow disk). The other trees (presence, uplink
//! cursors, the broker's retained messages and sessions) are copied as they are at that moment.
//! The copy's head is written as the real last seq, as an orderly close does.
//!
//! The stream ([`BackupFrames`], [`restore_frames`]): the line `edgewatch-backup 1\n`, then
//! frames: `T` + u32 length + a tree name; `K` + u32 + key + u32 + value (into the last tree);
//! `E` + u64 head seq + u64 number of `K` frames. A stream without its `E` frame, or with
//! another count, is incomplete: the restore fails and says so.

use std::io::{Read, Write};
use std::path::Path;

use super::layout::META_SEQ;
use super::{Store, StoreError};

/// The stream's first line.
pub const MAGIC: &[u8] = b"edgewatch-backup 1\n";
/// Longest tree name, key or value accepted when restoring (sled's values here are far
/// smaller; a bigger length means a corrupt stream).
const MAX_FIELD: u32 = 64 << 20;

/// What a snapshot or a restore holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// The last seq it holds (every reading up to it, none after).
    pub head: u64,
    /// Entries copied, every tree.
    pub entries: u64,
}

/// A snapshot made by [`Store::snapshot_into`], open: stream it with
/// [`SnapshotCopy::write_frames`] (from this handle: opening its directory again right after
/// could find sled's lock still held by the handle's background thread).
pub struct SnapshotCopy {
    db: sled::Db,
    /// What it holds.
    pub snapshot: Snapshot,
}

impl std::fmt::Debug for SnapshotCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotCopy")
            .field("snapshot", &self.snapshot)
            .finish_non_exhaustive()
    }
}

impl SnapshotCopy {
    /// Writes it as the backup stream; the number of entries written.
    pub fn write_frames(&self, out: &mut impl Write) -> Result<u64, StoreError> {
        write_frames(&self.db, self.snapshot.head, out)
    }
}

impl Store {
    /// Copies the store into a new sled database at `dir` (which must not exist) while the
    /// writer and retention wait; blocking (call it on the blocking pool).
    pub fn snapshot_into(&self, dir: &Path) -> Result<SnapshotCopy, StoreError> {
        let target = new_db(dir)?;
        let db = &self.inner.db;
        let st = self.state()?;
        let head = st.next_seq - 1;
        let mut entries = 0u64;
        for name in db.tree_names() {
            let (from, to) = (db.open_tree(&name)?, target.open_tree(&name)?);
            for kv in from.iter() {
                let (k, v) = kv?;
                to.insert(k, v)?;
                entries += 1;
            }
        }
        drop(st);
        // As an orderly close leaves it: the next open continues after `head`.
        target
            .open_tree(self.inner.tree.name())?
            .insert(META_SEQ, &head.to_be_bytes()[..])?;
        target.flush()?;
        Ok(SnapshotCopy {
            db: target,
            snapshot: Snapshot { head, entries },
        })
    }
}

/// A new sled database at `dir`, which must not hold one yet.
fn new_db(dir: &Path) -> Result<sled::Db, StoreError> {
    sled::Config::new()
        .path(dir)
        .create_new(true)
        .open()
        .map_err(|source| StoreError::Open {
            path: dir.to_path_buf(),
            reason: source.to_string(),
        })
}

/// Writes a snapshot database as the backup stream, frame by frame.
fn write_frames(db: &sled::Db, head: u64, out: &mut impl Write) -> Result<u64, StoreError> {
    let io = |e: std::io::Error| StoreError::Io(sled::Error::Io(e));
    out.write_all(MAGIC).map_err(io)?;
    let mut n = 0u64;
    for name in db.tree_names() {
        frame(out, b'T', &[&name]).map_err(io)?;
        for kv in db.open_tree(&name)?.iter() {
            let (k, v) = kv?;
            frame(out, b'K', &[&k, &v]).map_err(io)?;
            n += 1;
        }
    }
    out.write_all(b"E").map_err(io)?;
    out.write_all(&head.to_be_bytes()).map_err(io)?;
    out.write_all(&n.to_be_bytes()).map_err(io)?;
    out.flush().map_err(io)?;
    Ok(n)
}

fn frame(out: &mut impl Write, tag: u8, fields: &[&[u8]]) -> std::io::Result<()> {
    out.write_all(&[tag])?;
    for f in fields {
        let len = u32::try_from(f.len()).map_err(|_| std::io::ErrorKind::InvalidData)?;
        out.write_all(&len.to_be_bytes())?;
        out.write_all(f)?;
    }
    Ok(())
}

/// Why a backup stream could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Reading the stream failed (the connection broke...).
    #[error("reading the backup failed: {0}")]
    Read(#[from] std::io::Error),
    /// Not a backup stream, or a corrupt one.
    #[error("not an edgewatch backup, or a damaged one: {0}")]
    Format(&'static str),
    /// The stream ended before its end frame, or its count differs.
    #[error("the backup is incomplete: {0}")]
    Incomplete(String),
    /// Writing the new store failed.
    #[error("writing the restored store failed: {0}")]
    Store(#[from] StoreError),
}

impl From<sled::Error> for RestoreError {
    fn from(e: sled::Error) -> Self {
        RestoreError::Store(StoreError::Io(e))
    }
}

/// Reads a backup stream into a new sled database at `dir` (which must not exist): returns
/// the snapshot's head seq and its entries.
pub fn restore_frames(input: &mut impl Read, dir: &Path) -> Result<Snapshot, RestoreError> {
    restore(input, dir).map_err(|e| match e {
        RestoreError::Read(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            RestoreError::Incomplete("it ends before its end frame".into())
        }
        other => other,
    })
}

fn restore(input: &mut impl Read, dir: &Path) -> Result<Snapshot, RestoreError> {
    let mut magic = vec![0u8; MAGIC.len()];
    input.read_exact(&mut magic)?;
    if magic != MAGIC {
        return Err(RestoreError::Format(
            "it does not start with `edgewatch-backup 1`",
        ));
    }
    let db = new_db(dir)?;
    let mut tree: Option<sled::Tree> = None;
    let mut n = 0u64;
    loop {
        let mut tag = [0u8; 1];
        input.read_exact(&mut tag)?;
        match tag[0] {
            b'T' => tree = Some(db.open_tree(field(input)?)?),
            b'K' => {
                let (k, v) = (field(input)?, field(input)?);
                let Some(t) = &tree else {
                    return Err(RestoreError::Format("an entry before any tree"));
                };
                t.insert(k, v)?;
                n += 1;
            }
            b'E' => {
                let (head, count) = (u64_be(input)?, u64_be(input)?);
                if count != n {
                    let what = format!("{n} entries received, {count} sent");
                    return Err(RestoreError::Incomplete(what));
                }
                db.flush()?;
                return Ok(Snapshot { head, entries: n });
            }
            _ => return Err(RestoreError::Format("an unknown frame")),
        }
    }
}

fn field(input: &mut impl Read) -> Result<Vec<u8>, RestoreError> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len);
    if len > MAX_FIELD {
        return Err(RestoreError::Format("a field longer than 64 MiB"));
    }
    let mut buf = vec![0u8; len as usize];
    input.read_exact(&mut buf)?;
    Ok(buf)
}

fn u64_be(input: &mut impl Read) -> Result<u64, RestoreError> {
    let mut b = [0u8; 8];
    input.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;
    use edgewatch_protocol::Reading;

    fn reading(i: u64) -> Reading {
        Reading {
            device_id: "d1".into(),
            metric: "t".into(),
            value: i as f64,
            unit: Some("C".into()),
            timestamp_ms: 1_765_000_000_000 + i as i64 * 1000,
            received_at_ms: 1_765_000_000_000 + i as i64 * 1000,
        }
    }

    #[test]
    fn a_snapshot_streams_and_restores_into_a_store_that_opens_with_every_reading() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data"), &StoreOptions::default()).unwrap();
        let readings: Vec<Reading> = (0..700).map(reading).collect();
        store.apply(&readings, &[]).unwrap();
        let copy = store.snapshot_into(&dir.path().join("snap")).unwrap();
        assert_eq!(copy.snapshot.head, 700);
        let mut stream = Vec::new();
        let n = copy.write_frames(&mut stream).unwrap();
        drop(copy);
        let restored = restore_frames(&mut stream.as_slice(), &dir.path().join("restored"));
        let restored = restored.unwrap();
        assert_eq!((restored.head, restored.entries), (700, n));
        let copy = Store::open(&dir.path().join("restored"), &StoreOptions::default()).unwrap();
        assert_eq!(copy.last_seq().unwrap(), 700);
        // A cut stream is incomplete, not a store with some readings missing.
        let cut = &stream[..stream.len() - 20];
        let err = restore_frames(&mut &cut[..], &dir.path().join("cut")).unwrap_err();
        assert!(matches!(err, RestoreError::Incomplete(_)), "{err}");
        let err = restore_frames(&mut &b"hello"[..], &dir.path().join("x")).unwrap_err();
        assert!(matches!(err, RestoreError::Incomplete(_)), "{err}");
        let err = restore_frames(
            &mut &b"hello, this is not a backup"[..],
            &dir.path().join("y"),
        );
        assert!(matches!(err, Err(RestoreError::Format(_))), "{err:?}");
    }
}
