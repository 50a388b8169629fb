//! The writer's input side: [`WriterHandle`] queues readings and presence changes and
//! collects the external source's delivery acknowledgements.

use super::*;

/// Sending side of the writer's bounded input queue. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    pub(super) tx: mpsc::Sender<WriteCmd>,
    pub(super) healthy: Arc<AtomicBool>,
    pub(super) stats: Arc<WriterStats>,
    /// What the external source reported about its deliveries since the last batch; taken
    /// by the next batch (see [`WriterHandle::deliveries_acked`]).
    pub(super) acked: Arc<std::sync::Mutex<AckedDeliveries>>,
}

impl WriterHandle {
    /// The broker has the acknowledgements of these deliveries (packet id, digest): their
    /// records go in the next batch (or within `ACKED_COMMIT_INTERVAL` (1 s) when idle). Bounded
    /// by what the source holds unacknowledged (its Receive Maximum) per barrier (every 100 ms).
    pub fn deliveries_acked(&self, acked: impl IntoIterator<Item = (u16, u64)>) {
        if let Ok(mut a) = self.acked.lock() {
            a.acked.extend(acked);
        }
    }

    /// The broker has no session for us any more: every delivery record goes.
    pub fn delivery_session_lost(&self) {
        if let Ok(mut a) = self.acked.lock() {
            a.acked.clear();
            a.session_lost = true;
        }
    }

    pub(super) fn has_acked(&self) -> bool {
        self.acked.lock().is_ok_and(|a| !a.is_empty())
    }

    pub(super) fn take_acked(&self) -> AckedDeliveries {
        self.acked
            .lock()
            .map(|mut a| std::mem::take(&mut *a))
            .unwrap_or_default()
    }

    /// Gives back what a failed batch took.
    pub(super) fn restore_acked(&self, back: AckedDeliveries) {
        if let Ok(mut a) = self.acked.lock() {
            if back.session_lost {
                a.session_lost = true;
                a.acked.clear();
            } else if !a.session_lost {
                a.acked.extend(back.acked);
            }
        }
    }
    /// Queues a command, waiting while the queue is full (backpressure).
    pub async fn send(&self, cmd: WriteCmd) -> Result<(), WriterClosed> {
        self.tx.send(cmd).await.map_err(|_| WriterClosed)
    }

    /// Queues a reading that carries its device's event time; `done` is completed once it is
    /// durable (or found a duplicate).
    pub async fn write(
        &self,
        reading: Reading,
        done: Option<oneshot::Sender<Outcome>>,
    ) -> Result<(), WriterClosed> {
        self.write_from(reading, Origin::DEVICE_TIME, done).await
    }

    /// Queues a reading with its [`Origin`] (see [`Store::apply_from`]).
    pub async fn write_from(
        &self,
        reading: Reading,
        origin: Origin,
        done: Option<oneshot::Sender<Outcome>>,
    ) -> Result<(), WriterClosed> {
        self.send(WriteCmd::Reading {
            reading,
            origin,
            done,
        })
        .await
    }

    /// Queues the readings of one publish, stored together in one batch (all or none); `done`
    /// is completed with the last one's outcome.
    pub async fn write_group(
        &self,
        readings: Vec<Reading>,
        origin: Origin,
        done: Option<oneshot::Sender<Outcome>>,
    ) -> Result<(), WriterClosed> {
        self.send(WriteCmd::Readings {
            readings,
            origin,
            done,
        })
        .await
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

/// A batch of commands, by kind, in input order.
#[derive(Default)]
pub(super) struct Commands {
    pub(super) readings: Vec<Reading>,
    pub(super) origins: Vec<Origin>,
    pub(super) reading_acks: Vec<Option<oneshot::Sender<Outcome>>>,
    pub(super) presence: Vec<PresenceUpdate>,
    pub(super) presence_acks: Vec<Option<oneshot::Sender<Outcome>>>,
}

impl From<Vec<WriteCmd>> for Commands {
    fn from(cmds: Vec<WriteCmd>) -> Self {
        let mut c = Commands::default();
        for cmd in cmds {
            match cmd {
                WriteCmd::Reading {
                    reading,
                    origin,
                    done,
                } => {
                    c.readings.push(reading);
                    c.origins.push(origin);
                    c.reading_acks.push(done);
                }
                WriteCmd::Readings {
                    readings,
                    origin,
                    done,
                } => {
                    let n = readings.len();
                    c.origins.extend(std::iter::repeat_n(origin, n));
                    c.readings.extend(readings);
                    c.reading_acks
                        .extend(std::iter::repeat_with(|| None).take(n.saturating_sub(1)));
                    if n > 0 {
                        c.reading_acks.push(done);
                    }
                }
                WriteCmd::Presence { update, done } => {
                    c.presence.push(update);
                    c.presence_acks.push(done);
                }
            }
        }
        c
    }
}
