//! An emulated serial sensor on a pseudo-terminal.
//!
//! [`spawn_serial_emulator`] opens a pty pair, puts it in raw mode (no echo, no line editing,
//! every byte passes as is) and starts one thread that writes a device's readings to the
//! master side at an interval, as COBS frames ([`encode_frame`]) or text lines
//! (`temperature=21.5 C`). A reader opens [`SerialEmulator::path`] (e.g. `/dev/pts/7`) like a
//! USB serial port.
//!
//! The emulator keeps its own handle on the slave side open, so a reader closing the port and
//! opening it again (an unplug) changes nothing for the emulator and the raw settings stay.
//! The pty queues what nobody reads, up to the kernel's buffer; when a write would block, the
//! queued input is discarded (like bytes on a wire nobody listens to) and the reading counted
//! as dropped, so a reader that comes back gets fresh readings after at most one partial frame,
//! which its decoder skips.
//!
//! With `garbage_every = Some(n)`, every n-th reading is preceded by injected noise: random
//! bytes or a truncated frame (lines: a line that does not parse), to test a reader's
//! resynchronisation.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;
use std::{fmt, io};

use edgewatch_protocol::frame::encode_frame;
use edgewatch_protocol::payload::{CompactReading, EncodeError};
use edgewatch_protocol::timefmt::now_ms;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::pty::OpenptFlags;
use rustix::termios::{OptionalActions, QueueSelector};

use crate::signal::{Faults, MetricSpec, Signal};

/// How readings are written to the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SerialFormat {
    /// postcard + COBS frames, each ending in 0x00.
    #[default]
    Cobs,
    /// `metric=value unit` text lines ending in `\n`.
    Lines,
}

/// What the emulated sensor sends.
#[derive(Debug, Clone, PartialEq)]
pub struct SerialConfig {
    /// Device id written into COBS frames.
    pub device_id: String,
    /// Metrics, one reading each per interval.
    pub metrics: Vec<String>,
    /// Frame format.
    pub format: SerialFormat,
    /// Time between two rounds of readings.
    pub interval: Duration,
    /// Signal seed (device index 0).
    pub seed: u64,
    /// Spikes and faults of the signals.
    pub faults: Faults,
    /// Inject garbage or a truncated frame before every n-th reading.
    pub garbage_every: Option<u32>,
}

impl Default for SerialConfig {
    fn default() -> Self {
        Self {
            device_id: "serial-0".to_owned(),
            metrics: vec!["temperature".to_owned(), "humidity".to_owned()],
            format: SerialFormat::Cobs,
            interval: Duration::from_secs(1),
            seed: 1,
            faults: Faults::default(),
            garbage_every: None,
        }
    }
}

/// Counters of an emulator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SerialCounts {
    /// Readings written completely.
    pub written: u64,
    /// Readings not (completely) written because nobody read the port.
    pub dropped: u64,
    /// Garbage or truncated frames injected.
    pub injected: u64,
}

#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    injected: AtomicU64,
}

/// A running emulated serial sensor; stops when dropped.
pub struct SerialEmulator {
    path: PathBuf,
    counters: Arc<Counters>,
    /// Dropping the sender wakes the writer thread and ends it.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for SerialEmulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerialEmulator")
            .field("path", &self.path)
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl SerialEmulator {
    /// The slave device path to open, e.g. `/dev/pts/7`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counters so far.
    pub fn counts(&self) -> SerialCounts {
        SerialCounts {
            written: self.counters.written.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            injected: self.counters.injected.load(Ordering::Relaxed),
        }
    }

    /// Stops the writer thread and closes the pty; returns the final counters.
    pub fn stop(mut self) -> SerialCounts {
        self.shutdown();
        self.counts()
    }

    fn shutdown(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for SerialEmulator {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Opens a pseudo-terminal and starts writing `cfg`'s readings to it.
pub fn spawn_serial_emulator(cfg: SerialConfig) -> io::Result<SerialEmulator> {
    if cfg.metrics.is_empty() || cfg.interval.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "serial emulator needs at least one metric and an interval above 0",
        ));
    }
    // CLOEXEC: a child process (such as a hub started by a test) must not inherit the master,
    // or closing it here would not hang up the terminal.
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let path = PathBuf::from(
        name.to_str()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "pty name is not UTF-8"))?,
    );
    let slave = rustix::fs::open(
        &path,
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut termios = rustix::termios::tcgetattr(&slave)?;
    termios.make_raw();
    rustix::termios::tcsetattr(&slave, OptionalActions::Now, &termios)?;
    let flags = rustix::fs::fcntl_getfl(&master)?;
    rustix::fs::fcntl_setfl(&master, flags | OFlags::NONBLOCK)?;

    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = mpsc::channel();
    let writer = Writer {
        signals: cfg
            .metrics
            .iter()
            .enumerate()
            .map(|(m, name)| {
                Signal::new(
                    MetricSpec::for_name(name),
                    cfg.faults,
                    cfg.seed,
                    0,
                    m as u64,
                )
            })
            .collect(),
        rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5e71a1),
        cfg,
        master,
        slave,
        counters: counters.clone(),
        readings: 0,
        next_garbage: 0,
    };
    let thread = std::thread::Builder::new()
        .name("serial-emulator".to_owned())
        .spawn(move || writer.run(&stop_rx))?;
    Ok(SerialEmulator {
        path,
        counters,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// The writer thread's state.
struct Writer {
    cfg: SerialConfig,
    signals: Vec<Signal>,
    rng: ChaCha8Rng,
    master: OwnedFd,
    /// Held open so reader close/reopen never hangs up the pty.
    slave: OwnedFd,
    counters: Arc<Counters>,
    readings: u64,
    /// Reading count at which the next noise is injected.
    next_garbage: u64,
}

impl Writer {
    fn run(mut self, stop: &mpsc::Receiver<()>) {
        // `recv_timeout` is the interval timer: it returns early only when the emulator stops.
        while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(self.cfg.interval) {
            let timestamp_ms = now_ms();
            for m in 0..self.signals.len() {
                let Some(value) = self.signals[m].sample(timestamp_ms) else {
                    continue;
                };
                self.readings += 1;
                if let Some(every) = self.cfg.garbage_every {
                    if every > 0 && self.readings >= self.next_garbage.max(u64::from(every)) {
                        self.next_garbage = self.readings + u64::from(every);
                        let noise = self.noise(m, value, timestamp_ms);
                        self.counters.injected.fetch_add(1, Ordering::Relaxed);
                        let _ = self.write_all(&noise);
                    }
                }
                let written = match self.encode(m, value, timestamp_ms) {
                    Ok(bytes) => self.write_all(&bytes),
                    Err(error) => {
                        tracing::error!(%error, "serial reading dropped: cannot encode it");
                        false
                    }
                };
                let counter = if written {
                    &self.counters.written
                } else {
                    &self.counters.dropped
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn encode(&self, metric: usize, value: f64, timestamp_ms: i64) -> Result<Vec<u8>, EncodeError> {
        let spec = self.signals[metric].spec();
        match self.cfg.format {
            SerialFormat::Cobs => encode_frame(&CompactReading {
                device_id: Some(self.cfg.device_id.clone()),
                metric: Some(spec.name.clone()),
                value,
                unit: spec.unit.map(str::to_owned),
                timestamp_ms: Some(timestamp_ms),
            }),
            SerialFormat::Lines => Ok(match spec.unit {
                Some(unit) => format!("{}={value} {unit}\n", spec.name),
                None => format!("{}={value}\n", spec.name),
            }
            .into_bytes()),
        }
    }

    /// Random bytes or a truncated reading, ending in the format's delimiter so the next real
    /// reading starts clean.
    fn noise(&mut self, metric: usize, value: f64, timestamp_ms: i64) -> Vec<u8> {
        let delimiter = match self.cfg.format {
            SerialFormat::Cobs => 0u8,
            SerialFormat::Lines => b'\n',
        };
        let reading = if self.rng.gen::<bool>() {
            None
        } else {
            match self.encode(metric, value, timestamp_ms) {
                Ok(whole) => Some(whole),
                Err(error) => {
                    tracing::warn!(%error, "noise: cannot encode a reading; random bytes instead");
                    None
                }
            }
        };
        let mut bytes = match reading {
            Some(mut whole) => {
                whole.truncate(whole.len() / 2);
                if self.cfg.format == SerialFormat::Lines {
                    // `temperat` without `=`: never a valid line.
                    whole.retain(|b| *b != b'=');
                }
                whole
            }
            None => {
                let len = self.rng.gen_range(1..40);
                (0..len)
                    .map(|_| self.rng.gen_range(1u8..=255))
                    .filter(|b| *b != b'\n')
                    .collect()
            }
        };
        bytes.retain(|b| *b != delimiter);
        bytes.push(delimiter);
        bytes
    }

    /// Writes all of `bytes`; false if the pty is full (nobody reading), in which case what it
    /// holds is discarded.
    fn write_all(&self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match rustix::io::write(&self.master, bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(Errno::INTR) => {}
                Err(_) => {
                    let _ = rustix::termios::tcflush(&self.slave, QueueSelector::IFlush);
                    return false;
                }
            }
        }
        true
    }
}
