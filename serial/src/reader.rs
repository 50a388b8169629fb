//! [`run_serial`]: the task that reads one port: open, read, decode, publish, reopen after an
//! unplug, stop on the token.

use std::fmt;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgewatch_protocol::frame::{FrameDecoder, FrameError, LineDecoder};
use tokio::io::AsyncReadExt;
use tokio_serial::{DataBits, FlowControl, Parity, SerialPortBuilderExt, SerialStream, StopBits};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::{SerialFormat, SerialPortConfig};
use crate::publish::{to_publish, SerialPublish, SerialReading};
use crate::ratelimit::RateLimitedLog;
use crate::stats::SerialStats;

/// The longest wait between two attempts to reopen a port, unless `reopen_delay_ms` is longer.
pub const MAX_REOPEN_DELAY: Duration = Duration::from_secs(10);

/// Bytes read from the port at once.
const READ_CHUNK: usize = 4096;

/// The error reason of a decoded frame that cannot be published (no metric, invalid id, ...).
const INVALID_READING: &str = "invalid_reading";

/// The reason under which failed publishes are rate-limited in the log.
const PUBLISH_FAILED: &str = "publish_failed";

/// Reads one serial port and publishes its readings until `stop` is cancelled; see the
/// [crate documentation](crate) for the formats and what happens on errors and unplugs. Never
/// returns an error: a port that cannot be opened is retried.
pub async fn run_serial(
    cfg: SerialPortConfig,
    publish: SerialPublish,
    stats: Arc<SerialStats>,
    stop: CancellationToken,
) {
    let span = info_span!("serial", port = %cfg.path.display(), device = %cfg.device_id);
    let reader = Reader {
        cfg,
        publish,
        stats,
        log: RateLimitedLog::default(),
    };
    reader.run(stop).instrument(span).await;
}

/// Why reading a port ended.
enum PortEnd {
    /// The stop token was cancelled.
    Stopped,
    /// The port went away (read error or end of file).
    Lost(String),
}

/// The decoder of the port's format.
enum Decoder {
    Cobs(FrameDecoder),
    Lines(LineDecoder),
}

impl Decoder {
    fn new(format: SerialFormat, max_len: usize) -> Self {
        match format {
            SerialFormat::Cobs => Decoder::Cobs(FrameDecoder::new(max_len)),
            SerialFormat::Lines => Decoder::Lines(LineDecoder::new(max_len)),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        match self {
            Decoder::Cobs(d) => d.push(bytes),
            Decoder::Lines(d) => d.push(bytes),
        }
    }

    fn next_reading(&mut self) -> Option<Result<SerialReading, FrameError>> {
        match self {
            Decoder::Cobs(d) => d.next_frame().map(|r| r.map(SerialReading::Frame)),
            Decoder::Lines(d) => d.next_line().map(|r| r.map(SerialReading::Line)),
        }
    }
}

/// What the reopen loop remembers between attempts.
#[derive(Debug, Default)]
struct Outage {
    /// Whether the port was ever open (a later open is a reopen).
    ever_open: bool,
    /// Failed open attempts since the port was last open (or since the start).
    failures: u32,
    /// Whether the outage was logged (once, at warn level; the attempts at debug).
    logged: bool,
}

/// One port's reader task state.
struct Reader {
    cfg: SerialPortConfig,
    publish: SerialPublish,
    stats: Arc<SerialStats>,
    log: RateLimitedLog,
}

impl Reader {
    async fn run(mut self, stop: CancellationToken) {
        let base = self.cfg.reopen_delay();
        let mut outage = Outage::default();
        loop {
            if stop.is_cancelled() {
                break;
            }
            let flow = match self.open() {
                Ok(port) => self.read_opened(port, &mut outage, &stop).await,
                Err(err) => {
                    self.open_failed(&err, &mut outage);
                    ControlFlow::Continue(())
                }
            };
            if flow.is_break() {
                break;
            }
            let delay = reopen_backoff(base, outage.failures);
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        info!("serial reader stopped");
    }

    /// Reads a port that just opened until it is lost (continue: reopen after the backoff) or
    /// `stop` fires (break).
    async fn read_opened(
        &mut self,
        port: SerialStream,
        outage: &mut Outage,
        stop: &CancellationToken,
    ) -> ControlFlow<()> {
        if outage.ever_open {
            self.stats.reopens.fetch_add(1, Ordering::Relaxed);
            info!(
                failed_attempts = outage.failures,
                "serial port is back; reading again"
            );
        } else {
            info!(baud = self.cfg.baud, format = %self.cfg.format, "serial port open");
        }
        outage.ever_open = true;
        self.stats.connected.store(true, Ordering::Relaxed);
        let (end, bytes) = self.read_port(port, stop).await;
        self.stats.connected.store(false, Ordering::Relaxed);
        // A port that fails before delivering anything (flapping, or an open that succeeds on
        // a dead device) keeps backing off instead of retrying fast.
        if bytes > 0 {
            outage.failures = 0;
            outage.logged = false;
        } else {
            outage.failures = outage.failures.saturating_add(1);
        }
        match end {
            PortEnd::Stopped => return ControlFlow::Break(()),
            PortEnd::Lost(reason) if !outage.logged => {
                warn!(
                    %reason,
                    retry_ms = self.cfg.reopen_delay_ms,
                    "serial port lost; trying to reopen it until it is back"
                );
                outage.logged = true;
            }
            PortEnd::Lost(reason) => {
                debug!(%reason, "serial port lost again before any data");
            }
        }
        ControlFlow::Continue(())
    }

    /// Logs a failed open (the first of an outage at warn level, the rest at debug) and counts
    /// it.
    fn open_failed(&self, err: &tokio_serial::Error, outage: &mut Outage) {
        if !outage.logged {
            outage.logged = true;
            warn!(
                %err,
                retry_ms = self.cfg.reopen_delay_ms,
                "cannot open serial port; retrying until it appears"
            );
        } else {
            debug!(%err, attempt = outage.failures + 1, "serial port still unavailable");
        }
        outage.failures = outage.failures.saturating_add(1);
    }

    fn open(&self) -> Result<SerialStream, tokio_serial::Error> {
        let path = self.cfg.path.to_string_lossy();
        tokio_serial::new(path, self.cfg.baud)
            .data_bits(DataBits::Eight)
            .parity(Parity::None)
            .stop_bits(StopBits::One)
            .flow_control(FlowControl::None)
            .open_native_async()
    }

    /// Reads and publishes until the port fails or `stop` fires; also returns how many bytes
    /// were read.
    async fn read_port(
        &mut self,
        mut port: SerialStream,
        stop: &CancellationToken,
    ) -> (PortEnd, u64) {
        let mut decoder = Decoder::new(self.cfg.format, self.cfg.max_frame_len);
        let mut buf = vec![0u8; READ_CHUNK];
        let mut total = 0u64;
        loop {
            let read = tokio::select! {
                biased;
                () = stop.cancelled() => return (PortEnd::Stopped, total),
                read = port.read(&mut buf) => read,
            };
            let n = match read {
                Ok(0) => return (PortEnd::Lost("end of file".to_owned()), total),
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => return (PortEnd::Lost(err.to_string()), total),
            };
            total += n as u64;
            decoder.push(&buf[..n]);
            while let Some(item) = decoder.next_reading() {
                match item {
                    Ok(reading) => {
                        if self.handle(reading, stop).await.is_break() {
                            return (PortEnd::Stopped, total);
                        }
                    }
                    Err(err) => self.reject(err.reason(), &err),
                }
            }
        }
    }

    /// Publishes one decoded reading. Breaks only if `stop` fired meanwhile.
    async fn handle(
        &mut self,
        reading: SerialReading,
        stop: &CancellationToken,
    ) -> ControlFlow<()> {
        let (topic, payload) = match to_publish(&self.cfg.device_id, reading) {
            Ok(publish) => publish,
            Err(err) => {
                self.reject(INVALID_READING, &err);
                return ControlFlow::Continue(());
            }
        };
        self.stats.frames_ok.fetch_add(1, Ordering::Relaxed);
        let publish = (self.publish)(topic.clone(), payload);
        let res = tokio::select! {
            biased;
            () = stop.cancelled() => return ControlFlow::Break(()),
            res = publish => res,
        };
        match res {
            Ok(()) => {
                self.stats.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                self.stats.publish_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.log.allow(PUBLISH_FAILED, Instant::now()) {
                    warn!(%topic, %err, suppressed, "publishing a serial reading failed; dropped");
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// Counts a skipped frame or line and logs it, rate-limited per reason.
    fn reject(&mut self, reason: &'static str, err: &dyn fmt::Display) {
        self.stats.count_error(reason);
        if let Some(suppressed) = self.log.allow(reason, Instant::now()) {
            warn!(reason, %err, suppressed, "skipped a serial frame");
        }
    }
}

/// The wait before reopen attempt number `failures + 1`: `base` doubled per failure, at most
/// [`MAX_REOPEN_DELAY`] (or `base` if that is longer).
fn reopen_backoff(base: Duration, failures: u32) -> Duration {
    let cap = base.max(MAX_REOPEN_DELAY);
    base.saturating_mul(1u32 << failures.min(16)).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let base = Duration::from_millis(1000);
        let waits: Vec<u64> = (0..8)
            .map(|n| reopen_backoff(base, n).as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [1000, 2000, 4000, 8000, 10_000, 10_000, 10_000, 10_000]
        );
        assert_eq!(
            reopen_backoff(Duration::from_secs(30), 5),
            Duration::from_secs(30)
        );
        assert_eq!(
            reopen_backoff(Duration::from_millis(10), u32::MAX),
            MAX_REOPEN_DELAY
        );
    }
}
