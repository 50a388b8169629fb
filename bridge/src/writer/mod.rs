//! The writer: the one task that owns every write to the store.
//!
//! Ingest sends [`WriteCmd`]s into a bounded queue. The writer takes whatever is queued (up to
//! `batch_max` items) and applies it to the store as one atomic batch, which assigns the seqs,
//! and broadcasts the stored readings for live delivery at once. Durability is a separate,
//! overlapping step (group commit): a flush starts when none is running and `flush_interval`
//! has passed since the previous one started, and covers every batch applied before it; when it
//! completes, those batches' acknowledgements are sent. So live delivery does not wait for the
//! disk, acknowledgements do, and the disk sees at most one flush per `flush_interval`.
//!
//! A batch is published before it is durable only while its seqs lie inside the store's durable
//! seq reservation (see the store's documentation), so a crash can lose readings that clients
//! saw (their devices were not acknowledged and send them again, under new seqs) but never makes
//! the store reuse a seq a client holds as its cursor. Otherwise (the first batch after open) it
//! waits for its flush.
//!
//! # Queues and what happens when they are full
//! * Input (`queue_capacity` commands): [`WriterHandle::write`] *awaits* a free slot. That
//!   pushes back onto ingest, and from there onto the MQTT link (the external source stops
//!   reading its socket; the broker keeps the messages).
//! * Applied but not yet durable: at most [`UNFLUSHED_BATCHES`] x `batch_max` items. Beyond
//!   that the writer stops taking input until the running flush completes (backpressure as
//!   above).
//! * Output ([`broadcast`], `broadcast_capacity` batches): never blocks the writer. A receiver
//!   that falls more than that many batches behind loses the oldest ones and its next `recv`
//!   returns `RecvError::Lagged(n)` with the number of batches it missed; it can resume from
//!   the store with the last seq it saw.

mod handle;
mod retention;
mod stats;

use handle::Commands;
pub use handle::WriterHandle;
use retention::{retention_step, BudgetLog};
pub use stats::{WriteOutcomes, WriterStats};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgewatch_protocol::Reading;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::store::{
    AckedDeliveries, BudgetStatus, Origin, PresenceUpdate, RetentionPolicy, Store, StoredReading,
};

/// Most applied-but-not-durable items, in batches of `batch_max`.
pub const UNFLUSHED_BATCHES: usize = 4;

/// A batch of stored readings, in seq order, published once applied (see the module
/// documentation for when it is durable).
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
    /// Not a reading topic (outside `sensors/`): counted and dropped by ingest.
    Ignored,
}

/// One unit of work for the writer.
#[derive(Debug)]
pub enum WriteCmd {
    /// Store a reading.
    Reading {
        /// The reading.
        reading: Reading,
        /// What tells a resend of it from a new reading.
        origin: Origin,
        /// Completed after the batch holding it is durable. Dropped without a value if the
        /// batch failed.
        done: Option<oneshot::Sender<Outcome>>,
    },
    /// Store several readings of one publish (a mapped payload with several fields): all in
    /// the same batch, so all of them or none; `done` gets the last one's outcome.
    Readings {
        /// The readings, in order.
        readings: Vec<Reading>,
        /// What tells a resend of them from new readings (the same for each).
        origin: Origin,
        /// As for one reading.
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

/// How often an idle writer commits delivery acknowledgements on their own.
const ACKED_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// Writer settings.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Input queue capacity, in commands.
    pub queue_capacity: usize,
    /// Most readings per batch.
    pub batch_max: usize,
    /// Least time between the starts of two flushes (group commit): acknowledgements wait up
    /// to this much longer, the disk syncs at most this often. Live delivery does not wait.
    /// Zero flushes whenever no flush is running.
    pub flush_interval: Duration,
    /// Committed-batch broadcast capacity, in batches.
    pub broadcast_capacity: usize,
    /// Retention, run between batches in small steps; `None` keeps everything.
    pub retention: Option<RetentionPolicy>,
    /// Time between retention steps when there is nothing more to remove.
    pub retention_interval: Duration,
    /// A test seam: stall once, as a slow or full disk would.
    pub stall: Option<Stall>,
}

/// A one-time stall of the writer, for tests of what a slow disk does upstream: once
/// `after_readings` readings are stored, the writer takes nothing for `duration`. Set from
/// the environment variable `EDGEWATCH_TEST_WRITER_STALL=<after_readings>:<milliseconds>`
/// ([`Stall::from_env`]); never set in normal operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    /// Readings stored before the stall.
    pub after_readings: u64,
    /// How long the writer stalls.
    pub duration: Duration,
}

impl Stall {
    /// The stall asked for by `EDGEWATCH_TEST_WRITER_STALL`, if any (malformed: none).
    pub fn from_env() -> Option<Stall> {
        let value = std::env::var("EDGEWATCH_TEST_WRITER_STALL").ok()?;
        let (after, ms) = value.split_once(':')?;
        Some(Stall {
            after_readings: after.trim().parse().ok()?,
            duration: Duration::from_millis(ms.trim().parse().ok()?),
        })
    }
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
            stall: None,
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
        acked: Arc::default(),
    };
    let out = Outputs {
        committed: committed.clone(),
        presence: presence.clone(),
        healthy,
        stats,
    };
    let task = tokio::spawn(run(store, cfg, rx, out, stop, handle.clone()));
    Writer {
        handle,
        committed,
        presence,
        task,
    }
}

/// The writer's task.
///
/// Long: one `select!` loop over the writer's inputs (flush done, commands, idle acked
/// commits, stop, flush and retention timers); each arm is a call or two, and the loop's
/// state (flushing, pending, closing) reads best in one place.
async fn run(
    store: Store,
    cfg: WriterConfig,
    mut rx: mpsc::Receiver<WriteCmd>,
    out: Outputs,
    stop: CancellationToken,
    input: WriterHandle,
) -> Result<(), WriterError> {
    let batch_max = cfg.batch_max.max(1);
    let max_unflushed = UNFLUSHED_BATCHES * batch_max;
    let mut durable = Durability::new(store.seq_reserved().unwrap_or(0));
    let mut closing = false;
    let mut input_done = false;
    let mut next_retention = Instant::now() + cfg.retention_interval;
    let mut budget_log = BudgetLog::default();
    let mut next_flush = Instant::now();
    let mut flushing: Option<(Group, JoinHandle<Result<(), crate::store::StoreError>>)> = None;
    let mut pending = Group::default();
    let mut buf: Vec<WriteCmd> = Vec::with_capacity(batch_max);
    let mut next_acked_commit = Instant::now() + ACKED_COMMIT_INTERVAL;
    let mut stall = cfg.stall;
    loop {
        if flushing.is_none() && !pending.is_empty() && (input_done || Instant::now() >= next_flush)
        {
            let s = store.clone();
            let task = tokio::spawn(async move { s.flush_async().await });
            flushing = Some((std::mem::take(&mut pending), task));
            next_flush = Instant::now() + cfg.flush_interval;
        }
        if input_done && flushing.is_none() && pending.is_empty() {
            break;
        }
        let unflushed = pending.readings + flushing.as_ref().map_or(0, |(g, _)| g.readings);
        let room = if input_done || unflushed >= max_unflushed {
            0
        } else {
            batch_max
        };
        tokio::select! {
            biased;
            done = async { (&mut flushing.as_mut().expect("guarded").1).await }, if flushing.is_some() => {
                let (group, _) = flushing.take().expect("guarded");
                flush_done(group, done, &mut durable, &out);
            }
            n = rx.recv_many(&mut buf, room), if room > 0 => {
                if n == 0 {
                    input_done = true;
                    continue;
                }
                let stored = out.stats.outcomes.stored.load(Ordering::Relaxed);
                if let Some(s) = stall.take_if(|s| stored >= s.after_readings) {
                    warn!(?s, "test seam: the writer stalls (EDGEWATCH_TEST_WRITER_STALL)");
                    tokio::time::sleep(s.duration).await;
                }
                if let Some((applied, release)) = apply(&store, std::mem::take(&mut buf), &out, &input).await {
                    durable.publish(release, &out);
                    pending.add(applied);
                }
                buf.reserve(batch_max);
                next_acked_commit = Instant::now() + ACKED_COMMIT_INTERVAL;
            }
            () = tokio::time::sleep_until(next_acked_commit), if !input_done => {
                // Idle: commit what the external source acknowledged on its own.
                if input.has_acked() {
                    if let Some((applied, release)) = apply(&store, Vec::new(), &out, &input).await {
                        durable.publish(release, &out);
                        pending.add(applied);
                    }
                }
                next_acked_commit = Instant::now() + ACKED_COMMIT_INTERVAL;
            }
            () = stop.cancelled(), if !closing => {
                // Refuse new items, then drain what is queued.
                rx.close();
                closing = true;
            }
            () = tokio::time::sleep_until(next_flush), if flushing.is_none() && !pending.is_empty() => {}
            () = tokio::time::sleep_until(next_retention), if cfg.retention.is_some() && !closing => {
                let more = retention_step(&store, cfg.retention, &mut budget_log).await;
                next_retention = Instant::now()
                    + if more { Duration::from_millis(50) } else { cfg.retention_interval };
            }
        }
    }
    out.healthy.store(false, Ordering::Relaxed);
    // Everything is flushed; publish whatever still waited for a reservation.
    durable.flushed(u64::MAX, &out);
    let s = store.clone();
    let released = tokio::task::spawn_blocking(move || s.release_reservation())
        .await
        .unwrap_or_else(|_| store.flush());
    info!("writer stopped");
    released.map_err(WriterError::from)
}

/// A flush ended: acknowledge its group's items once it succeeded; else they stay
/// unacknowledged (their senders resend).
fn flush_done(
    group: Group,
    done: Result<Result<(), crate::store::StoreError>, tokio::task::JoinError>,
    durable: &mut Durability,
    out: &Outputs,
) {
    match done {
        Ok(Ok(())) => {
            out.healthy.store(true, Ordering::Relaxed);
            durable.flushed(group.reserved, out);
            group.acknowledge(&out.stats);
        }
        Ok(Err(err)) => {
            error!(%err, readings = group.readings, "flush failed; the batches' items stay unacknowledged");
            out.failed();
        }
        Err(err) => {
            error!(%err, readings = group.readings, "flush task failed; the batches' items stay unacknowledged");
            out.failed();
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

impl Outputs {
    /// A batch failed to apply or flush: the writer is unhealthy until a flush succeeds.
    fn failed(&self) {
        self.healthy.store(false, Ordering::Relaxed);
        self.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` items of a batch that could not be applied: left unacknowledged, counted.
    fn not_stored(&self, n: usize) {
        self.stats
            .outcomes
            .failed
            .fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Acknowledgements of applied batches that wait for one flush, and the reservation it makes
/// durable.
#[derive(Default)]
struct Group {
    acks: Vec<(oneshot::Sender<Outcome>, Outcome)>,
    /// When each batch's apply started (commit latency is measured to the flush's end).
    started: Vec<std::time::Instant>,
    readings: usize,
    reserved: u64,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.started.is_empty()
    }

    fn add(&mut self, applied: Applied) {
        self.readings += applied.items;
        self.acks.extend(applied.acks);
        self.reserved = applied.reserved;
        self.started.push(applied.started);
    }

    fn acknowledge(self, stats: &WriterStats) {
        for started in self.started {
            stats
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        for (done, outcome) in self.acks {
            let _ = done.send(outcome);
        }
    }
}

/// What an applied batch publishes live.
struct Release {
    /// Highest seq in it (0 when it holds only presence changes).
    max_seq: u64,
    readings: Vec<StoredReading>,
    presence: Vec<PresenceUpdate>,
}

/// Decides when applied batches may be published: at once while their seqs are inside the
/// durable seq reservation (a crash cannot make the store hand them out again), else after the
/// flush that makes the reservation covering them durable. Publishing keeps seq order.
struct Durability {
    reserved: u64,
    held: VecDeque<Release>,
}

impl Durability {
    fn new(reserved: u64) -> Self {
        Self {
            reserved,
            held: VecDeque::new(),
        }
    }

    fn publish(&mut self, release: Release, out: &Outputs) {
        if self.held.is_empty() && release.max_seq <= self.reserved {
            send(release, out);
        } else {
            self.held.push_back(release);
        }
    }

    /// A flush completed that made the reservation `reserved` durable.
    fn flushed(&mut self, reserved: u64, out: &Outputs) {
        self.reserved = self.reserved.max(reserved);
        while self
            .held
            .front()
            .is_some_and(|r| r.max_seq <= self.reserved)
        {
            if let Some(r) = self.held.pop_front() {
                send(r, out);
            }
        }
    }
}

fn send(release: Release, out: &Outputs) {
    for update in release.presence {
        let _ = out.presence.send(update);
    }
    if !release.readings.is_empty() {
        // No receivers is fine: nobody is watching live.
        let _ = out.committed.send(release.readings.into());
    }
}

/// A batch applied to the store (seqs assigned, visible to queries, not yet durable).
struct Applied {
    /// Commands in the batch.
    items: usize,
    acks: Vec<(oneshot::Sender<Outcome>, Outcome)>,
    reserved: u64,
    started: std::time::Instant,
}

/// Applies one batch on the blocking pool and sorts its outcomes: acknowledgements for after
/// the flush, stored readings for the live side.
///
/// Long: the outcomes of a batch are matched to their commands in one pass.
async fn apply(
    store: &Store,
    cmds: Vec<WriteCmd>,
    out: &Outputs,
    input: &WriterHandle,
) -> Option<(Applied, Release)> {
    let started = std::time::Instant::now();
    let items = cmds.len();
    if items > 0 {
        out.stats.batch_size.observe(items as f64);
    }
    let Commands {
        readings,
        origins,
        reading_acks,
        presence,
        presence_acks,
    } = Commands::from(cmds);
    let s = store.clone();
    let acked = input.take_acked();
    let applied = tokio::task::spawn_blocking(move || {
        let r = s
            .apply_from(&readings, &origins, &presence, &acked)
            .and_then(|seqs| Ok((seqs, s.seq_reserved()?)));
        (r, readings, presence, acked)
    })
    .await;
    let (seqs, reserved, readings, presence) = match applied {
        Ok((Ok((seqs, reserved)), readings, presence, _)) => (seqs, reserved, readings, presence),
        Ok((Err(err), readings, presence, acked)) => {
            error!(%err, readings = readings.len(), "batch not stored; its items stay unacknowledged");
            out.failed();
            out.not_stored(readings.len() + presence.len());
            input.restore_acked(acked);
            return None;
        }
        Err(err) => {
            error!(%err, "batch apply panicked; its items stay unacknowledged");
            out.failed();
            out.not_stored(items);
            return None;
        }
    };
    let mut stored = Vec::with_capacity(readings.len());
    let mut acks = Vec::with_capacity(readings.len() + presence_acks.len());
    let duplicates = seqs.iter().filter(|s| s.is_none()).count();
    for ((seq, reading), done) in seqs.into_iter().zip(readings).zip(reading_acks) {
        let outcome = match seq {
            Some(seq) => {
                stored.push(StoredReading { seq, reading });
                Outcome::Stored(seq)
            }
            None => Outcome::Duplicate,
        };
        if let Some(done) = done {
            acks.push((done, outcome));
        }
    }
    acks.extend(
        presence_acks
            .into_iter()
            .flatten()
            .map(|done| (done, Outcome::Presence)),
    );
    let o = &out.stats.outcomes;
    o.stored.fetch_add(stored.len() as u64, Ordering::Relaxed);
    o.duplicates.fetch_add(duplicates as u64, Ordering::Relaxed);
    o.presence
        .fetch_add(presence.len() as u64, Ordering::Relaxed);
    let release = Release {
        max_seq: stored.last().map_or(0, |r| r.seq),
        readings: stored,
        presence,
    };
    Some((
        Applied {
            items,
            acks,
            reserved,
            started,
        },
        release,
    ))
}
