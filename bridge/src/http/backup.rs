//! `GET /v1/backup`: a consistent copy of the running hub's store, streamed
//! ([`crate::store::backup`]); `edgewatch backup` writes it into a new data directory.
//!
//! For callers who may read every topic. One backup at a time (another gets 409). The snapshot
//! is made first in the data directory (`.backup-N`, as large as the store's files for the
//! time of the download; the writer and retention wait while it is copied), then streamed from
//! there without holding anything up, in chunks through a bounded channel (8 x 64 KiB: a slow
//! client slows the reading of the snapshot, nothing else), and removed at the end or when the
//! client goes away.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::mpsc;

use super::auth::Caller;
use super::{ApiError, AppState};
use crate::store::backup::SnapshotCopy;

/// A backup is being made or streamed.
static RUNNING: AtomicBool = AtomicBool::new(false);
/// Numbers the snapshot directories.
static NEXT: AtomicU64 = AtomicU64::new(1);
/// Bytes per chunk sent.
const CHUNK: usize = 64 * 1024;

/// A consistent backup of the store, streamed
///
/// Every reading up to one seq and none after it, with the catalogue, rollups, device
/// presence, uplink cursors and the broker's retained messages and sessions. The format is
/// described in `bridge/src/store/backup.rs`; `edgewatch backup --hub URL --out DIR` writes it
/// into a new data directory. The head seq is in the `X-Backup-Head` header.
#[utoipa::path(
    get,
    path = "/v1/backup",
    operation_id = "backup",
    tag = "operations",
    responses(
        (status = 200, description = "The backup stream.", content_type = "application/octet-stream",
            headers(("X-Backup-Head" = u64, description = "The last seq the backup holds."))),
        (status = 401, response = super::Unauthorized),
        (status = 403, response = super::Forbidden),
        (status = 409, description = "Another backup is running."),
        (status = 500, response = super::Internal),
    )
)]
pub(crate) async fn backup(State(state): State<AppState>, caller: Caller) -> Response {
    if !caller.reads_everything() {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a backup is for callers who may read every topic",
        );
    }
    if RUNNING.swap(true, Ordering::AcqRel) {
        return error(
            StatusCode::CONFLICT,
            "busy",
            "another backup is running; try again when it is done",
        );
    }
    let store = state.store.clone();
    let dir = store
        .dir()
        .join(format!(".backup-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    let at = dir.clone();
    let snap = tokio::task::spawn_blocking(move || {
        let _ = std::fs::remove_dir_all(&at);
        store.snapshot_into(&at)
    })
    .await;
    let copy = match snap {
        Ok(Ok(copy)) => copy,
        other => {
            let err = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "the snapshot task failed".to_owned(),
            };
            tracing::error!(%err, dir = %dir.display(), "backup: snapshot failed");
            remove(dir);
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the snapshot could not be made; see the hub's log",
            );
        }
    };
    let head = copy.snapshot.head;
    let entries = copy.snapshot.entries;
    tracing::info!(head, entries, "backup: snapshot made, streaming");
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::task::spawn_blocking(move || stream(dir, copy, tx));
    let chunks = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let body = Body::from_stream(chunks);
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::HeaderName::from_static("x-backup-head"),
                head.to_string(),
            ),
        ],
        body,
    )
        .into_response()
}

/// Streams the snapshot (at `dir`) into `tx`, then removes it and lets the next backup run.
fn stream(dir: PathBuf, copy: SnapshotCopy, tx: mpsc::Sender<Result<Bytes, std::io::Error>>) {
    let head = copy.snapshot.head;
    let mut out = Chunks {
        buf: Vec::with_capacity(CHUNK),
        tx: &tx,
    };
    let result = copy.write_frames(&mut out).map_err(|e| e.to_string());
    drop(copy);
    match result {
        Ok(n) => tracing::info!(head, entries = n, "backup: streamed"),
        Err(err) => {
            tracing::warn!(%err, "backup: not streamed to the end (the client went away?)");
            let _ = tx.blocking_send(Err(std::io::Error::other(err)));
        }
    }
    remove(dir);
}

/// Removes the snapshot (tried again briefly: sled's background thread of a handle just
/// dropped may still be closing its files) and lets the next backup run.
fn remove(dir: PathBuf) {
    let mut result = std::fs::remove_dir_all(&dir);
    for _ in 0..5 {
        if result.is_ok() || !dir.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        result = std::fs::remove_dir_all(&dir);
    }
    if let (Err(err), true) = (&result, dir.exists()) {
        tracing::warn!(%err, dir = %dir.display(), "backup: could not remove the snapshot");
    }
    RUNNING.store(false, Ordering::Release);
}

/// Sends what is written in chunks of [`CHUNK`] bytes; fails once the receiver is gone.
struct Chunks<'a> {
    buf: Vec<u8>,
    tx: &'a mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl Write for Chunks<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

fn error(status: StatusCode, code: &'static str, message: &str) -> Response {
    ApiError {
        status,
        code,
        message: message.to_owned(),
    }
    .into_response()
}
