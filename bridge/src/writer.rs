//! The writer: the one task that owns every write to the store.
//!
//! Ingest sends [`WriteCmd`]s into a bounded queue. The writer takes whatever is queued, keeps
//! collecting for up to `flush_interval` after the first item or until `batch_max` readings
//! (group commit), applies the batch atomically, waits until sled says it is durable, and only
//! then completes each item's acknowledgement and broadcasts the committed readings.
//!
//! # Queues and what happens when they are full
//! * Input (`queue_capacity` commands): [`WriterHandle::write`] *awaits* a free slot. That
//!   pushes back onto ingest, and from there onto the MQTT link (the external source stops
//!   reading its socket; the broker keeps the messages).
//! * Output ([`broadcast`], `broadcast_capacity` batches): never blocks the writer. A receiver
//!   that falls more than that many batches behind loses the oldest ones and its next `recv`
//!   returns `RecvError::Lagged(n)` with the number of batches it missed; it can resume from
//!   the store with the last seq it saw.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgewatch_protocol::Reading;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::metrics::WriterStats;
use crate::store::{PresenceUpdate, RetentionPolicy, Store, StoredReading};

/// A batch of readings that is durable on disk, in seq order.
pub type CommittedBatch = Arc<[StoredReading]>;

/// How an inbound item ended. Sent on its acknowledgement channel once that is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored durably with this seq.
    Stored(u64),
    /// Same device, metric, event time and value as a stored reading: not stored again.
    Duplicate,
    /// A presence change, recorded durably.
    Presence,
    /// Rejected by the decoder (set by ingest, never by the writer), with the reason label.
    Rejected(&'static str),
}

/// One unit of work for the writer.
#[derive(Debug)]
pub enum WriteCmd {
    /// Store a reading.
    Reading {
        /// The reading.
        reading: Reading,
        /// Completed after the batch holding it is durable. Dropped without a value if the
        /// batch failed.
        done: Option<oneshot::Sender<Outcome>>,
    },
    /// Record a presence change.
    Presence {
        /// The change.
        update: PresenceUpdate,
        /// As for readings.
        done: Option<oneshot::Sender<Outcome>>,
    },
}

/// The writer is gone (shut down or failed).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the writer has stopped")]
pub struct WriterClosed;

/// What can end the writer task with an error.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// The final flush at shutdown failed.
    #[error("final flush failed: {0}")]
    FinalFlush(#[from] crate::store::StoreError),
}

/// Sending side of the writer's bounded input queue. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<WriteCmd>,
    healthy: Arc<AtomicBool>,
    stats: Arc<WriterStats>,
}

impl WriterHandle {
    /// Queues a command, waiting while the queue is full (backpressure).
    pub async fn send(&self, cmd: WriteCmd) -> Result<(), WriterClosed> {
        self.tx.send(cmd).await.map_err(|_| WriterClosed)
    }

    /// Queues a reading; `done` is completed once it is durable (or found a duplicate).
    pub async fn write(
        &self,
        reading: Reading,
        done: Option<oneshot::Sender<Outcome>>,
    ) -> Result<(), WriterClosed> {
        self.send(WriteCmd::Reading { reading, done }).await
    }

    /// Queues a presence change.
    pub async fn set_presence(
        &self,
        update: PresenceUpdate,
        done: Option<oneshot::Sender<Outcome>>,
    ) -> Result<(), WriterClosed> {
        self.send(WriteCmd::Presence { update, done }).await
    }

    /// Free slots in the input queue right now.
    pub fn free_slots(&self) -> usize {
        self.tx.capacity()
    }

    /// Total input queue capacity.
    pub fn queue_capacity(&self) -> usize {
        self.tx.max_capacity()
    }

    /// Batch size and commit latency measurements.
    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }

    /// `false` after the last commit failed (until one succeeds), or once the writer stopped.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.tx.is_closed()
    }
}

/// Writer settings.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Input queue capacity, in commands.
    pub queue_capacity: usize,
    /// Most readings per batch.
    pub batch_max: usize,
    /// Group-commit window: how long to keep collecting after the first item of a batch.
    /// Zero commits whatever is queued at once.
    pub flush_interval: Duration,
    /// Committed-batch broadcast capacity, in batches.
    pub broadcast_capacity: usize,
    /// Retention, run between batches in small steps; `None` keeps everything.
    pub retention: Option<RetentionPolicy>,
    /// Time between retention steps when there is nothing more to remove.
    pub retention_interval: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 8192,
            batch_max: 1000,
            flush_interval: Duration::from_millis(10),
            broadcast_capacity: 1024,
            retention: None,
            retention_interval: Duration::from_secs(10),
        }
    }
}

/// The running writer.
#[derive(Debug)]
pub struct Writer {
    /// Input.
    pub handle: WriterHandle,
    /// Committed batches; subscribe for live fan-out.
    pub committed: broadcast::Sender<CommittedBatch>,
    /// Presence changes, once durable, for live `status` events (same capacity as
    /// `committed`; a lagging receiver is told how many it missed).
    pub presence: broadcast::Sender<PresenceUpdate>,
    /// The task; ends after `stop` is cancelled (or every handle is dropped) and the queue
    /// is drained and flushed.
    pub task: JoinHandle<Result<(), WriterError>>,
}

/// Starts the writer task on `store`. Cancel `stop` to make it drain its queue, flush and end.
pub fn spawn_writer(store: Store, cfg: WriterConfig, stop: CancellationToken) -> Writer {
    let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
    let (committed, _) = broadcast::channel(cfg.broadcast_capacity.max(1));
    let (presence, _) = broadcast::channel(cfg.broadcast_capacity.max(1));
    let healthy = Arc::new(AtomicBool::new(true));
    let stats = Arc::new(WriterStats::default());
    let handle = WriterHandle {
        tx,
        healthy: healthy.clone(),
        stats: stats.clone(),
    };
    let out = Outputs {
        committed: committed.clone(),
        presence: presence.clone(),
        healthy,
        stats,
    };
    let task = tokio::spawn(run(store, cfg, rx, out, stop));
    Writer {
        handle,
        committed,
        presence,
        task,
    }
}

async fn run(
    store: Store,
    cfg: WriterConfig,
    mut rx: mpsc::Receiver<WriteCmd>,
    out: Outputs,
    stop: CancellationToken,
) -> Result<(), WriterError> {
    let batch_max = cfg.batch_max.max(1);
    let mut closing = false;
    let mut next_retention = Instant::now() + cfg.retention_interval;
    let mut buf: Vec<WriteCmd> = Vec::with_capacity(batch_max);
    loop {
        tokio::select! {
            biased;
            n = rx.recv_many(&mut buf, batch_max) => {
                if n == 0 {
                    break;
                }
            }
            () = stop.cancelled(), if !closing => {
                // Refuse new items, then drain what is queued.
                rx.close();
                closing = true;
                continue;
            }
            () = tokio::time::sleep_until(next_retention), if cfg.retention.is_some() && !closing => {
                let more = retention_step(&store, cfg.retention).await;
                next_retention = Instant::now()
                    + if more { Duration::from_millis(50) } else { cfg.retention_interval };
                continue;
            }
        }
        if buf.len() < batch_max && !cfg.flush_interval.is_zero() {
            let deadline = Instant::now() + cfg.flush_interval;
            while buf.len() < batch_max {
                let room = batch_max - buf.len();
                match tokio::time::timeout_at(deadline, rx.recv_many(&mut buf, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        commit(&store, std::mem::take(&mut buf), &out).await;
        buf.reserve(batch_max);
    }
    out.healthy.store(false, Ordering::Relaxed);
    let flushed = store.flush_async().await;
    info!("writer stopped");
    flushed.map_err(WriterError::from)
}

async fn retention_step(store: &Store, policy: Option<RetentionPolicy>) -> bool {
    let Some(policy) = policy else { return false };
    let store = store.clone();
    let now = edgewatch_protocol::timefmt::now_ms();
    match tokio::task::spawn_blocking(move || store.retain_step(now, &policy)).await {
        Ok(Ok(o)) => {
            if o.readings_deleted + o.rollups_deleted > 0 {
                debug!(
                    readings = o.readings_deleted,
                    rollups = o.rollups_deleted,
                    "retention step"
                );
            }
            o.more
        }
        Ok(Err(err)) => {
            warn!(%err, "retention step failed");
            false
        }
        Err(err) => {
            error!(%err, "retention step panicked");
            false
        }
    }
}

/// Where the writer's results go.
struct Outputs {
    committed: broadcast::Sender<CommittedBatch>,
    presence: broadcast::Sender<PresenceUpdate>,
    healthy: Arc<AtomicBool>,
    stats: Arc<WriterStats>,
}

async fn commit(store: &Store, cmds: Vec<WriteCmd>, out: &Outputs) {
    let (committed, presence_out, healthy) = (&out.committed, &out.presence, &*out.healthy);
    let started = std::time::Instant::now();
    out.stats.batch_size.observe(cmds.len() as f64);
    let mut readings = Vec::new();
    let mut reading_acks = Vec::new();
    let mut presence = Vec::new();
    let mut presence_acks = Vec::new();
    for cmd in cmds {
        match cmd {
            WriteCmd::Reading { reading, done } => {
                readings.push(reading);
                reading_acks.push(done);
            }
            WriteCmd::Presence { update, done } => {
                presence.push(update);
                presence_acks.push(done);
            }
        }
    }
    let s = store.clone();
    let applied = tokio::task::spawn_blocking(move || {
        let r = s.apply(&readings, &presence);
        (r, readings, presence)
    })
    .await;
    let (seqs, readings, presence) = match applied {
        Ok((Ok(seqs), readings, presence)) => (seqs, readings, presence),
        Ok((Err(err), readings, _)) => {
            error!(%err, readings = readings.len(), "batch not stored; its items stay unacknowledged");
            healthy.store(false, Ordering::Relaxed);
            out.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(err) => {
            error!(%err, "batch apply panicked; its items stay unacknowledged");
            healthy.store(false, Ordering::Relaxed);
            out.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    if let Err(err) = store.flush_async().await {
        error!(%err, "flush failed; batch items stay unacknowledged");
        healthy.store(false, Ordering::Relaxed);
        out.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
        return;
    }
    healthy.store(true, Ordering::Relaxed);
    out.stats
        .commit_seconds
        .observe(started.elapsed().as_secs_f64());
    let mut stored = Vec::with_capacity(readings.len());
    for ((seq, reading), done) in seqs.into_iter().zip(readings).zip(reading_acks) {
        let outcome = match seq {
            Some(seq) => {
                stored.push(StoredReading { seq, reading });
                Outcome::Stored(seq)
            }
            None => Outcome::Duplicate,
        };
        if let Some(done) = done {
            let _ = done.send(outcome);
        }
    }
    for done in presence_acks.into_iter().flatten() {
        let _ = done.send(Outcome::Presence);
    }
    for update in presence {
        let _ = presence_out.send(update);
    }
    if !stored.is_empty() {
        // No receivers is fine: nobody is watching live.
        let _ = committed.send(stored.into());
    }
}
