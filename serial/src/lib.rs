//! The edgewatch serial reader: sensors on a (USB) serial port, published into the broker like
//! any device.
//!
//! This is the only crate that names `tokio-serial`. It knows nothing of the bridge or the
//! broker: readings leave through a publish function the caller passes ([`SerialPublish`],
//! normally the embedded broker's in-process publisher), and a `CancellationToken` stops it.
//!
//! # Layout
//! * [`config`]: [`SerialPortConfig`] (one `[[serial]]` entry of the config file) and
//!   [`SerialFormat`].
//! * [`publish`]: [`to_publish`], a decoded reading as an MQTT topic and JSON payload.
//! * [`reader`]: [`run_serial`], the task that opens, reads, decodes, publishes and reopens.
//! * [`stats`]: [`SerialStats`], the counters of one port's reader.
//! * `ratelimit`: at most one warning per reason per [`LOG_INTERVAL`].
//!
//! # Formats
//! Each port is configured ([`SerialPortConfig`], one `[[serial]]` entry of the config file)
//! with one of two formats, both defined in [`edgewatch_protocol::frame`]:
//! * [`SerialFormat::Cobs`]: postcard-encoded readings
//!   ([`CompactReading`](edgewatch_protocol::payload::CompactReading)), COBS-encoded and ended
//!   by a 0x00 byte. A frame that carries no `device_id` gets the port's `device_id`; a frame
//!   without a `metric` is rejected.
//! * [`SerialFormat::Lines`]: `metric=value [unit]` text lines ending in `\n`, e.g.
//!   `temperature=21.5 C`; the device is the port's `device_id`.
//!
//! # Flow
//! [`run_serial`] opens the port (the configured baud, 8 data bits, no parity, one stop bit, no
//! flow control), feeds what it reads into a
//! [`FrameDecoder`](edgewatch_protocol::frame::FrameDecoder) or
//! [`LineDecoder`](edgewatch_protocol::frame::LineDecoder) and turns each reading into an MQTT
//! publish with [`to_publish`]: topic `sensors/{deviceId}/{metric}`, JSON payload
//! `{"deviceId":..,"value":..,"unit":..,"timestamp":..}` (`unit` and the RFC 3339 `timestamp`
//! only when the reading has them; without a timestamp the hub uses the receive
//! time). The publish goes through the caller's [`SerialPublish`], normally the embedded
//! broker's in-process publisher, so a serial reading is stored, fanned out and forwarded
//! exactly like one a device published over MQTT. Publishes are awaited one at a time: a slow
//! broker slows the reader down and the port's buffer (then the device) absorbs it.
//!
//! # Failures
//! * Garbage, truncated and oversize frames (and lines that do not parse) are skipped; the
//!   decoder resynchronises at the next delimiter. Each is counted by reason
//!   ([`FrameError::reason`](edgewatch_protocol::frame::FrameError::reason), plus
//!   `invalid_reading` for a decoded frame that cannot be published, e.g. without a metric) in [`SerialStats`] and logged at most once per reason
//!   per [`LOG_INTERVAL`], with the number of suppressed repeats.
//! * A failed publish is counted ([`SerialStatsSnapshot::publish_errors`]), logged the same
//!   rate-limited way, and the reading is dropped; the reader goes on.
//! * When the port disappears (USB unplug: a read error or end of file) or cannot be opened,
//!   the reader logs it once and tries to (re)open the same path after `reopen_delay_ms`,
//!   doubling the delay after each failed attempt up to [`MAX_REOPEN_DELAY`] (or
//!   `reopen_delay_ms` if that is longer). When the port is back it logs that and resumes with
//!   a fresh decoder; bytes of a frame cut by the unplug are lost. A port that opens but fails
//!   again before delivering a byte counts as a failed attempt, so a flapping device is
//!   retried with the growing delay and not logged each time.
//! * Cancelling the stop token ends [`run_serial`] promptly, also in the middle of a read, a
//!   publish or a reopen delay.
//!
//! Everything the reader logs is inside a `serial` span with the port path and device id.

pub mod config;
pub mod publish;
mod ratelimit;
pub mod reader;
pub mod stats;

pub use config::{SerialFormat, SerialPortConfig};
pub use publish::{to_publish, SerialPublish, SerialReading};
pub use ratelimit::LOG_INTERVAL;
pub use reader::{run_serial, MAX_REOPEN_DELAY};
pub use stats::{SerialStats, SerialStatsSnapshot};
