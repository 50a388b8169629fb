//! Simulated edgewatch device firmware.
//!
//! A fleet of MQTT sensors (1 to 100,000 clients in one process) with realistic seeded
//! signals, offline buffering and reconnects; a load mode with a report of what was sent,
//! acknowledged and (with `verify`) received end to end; and an emulated serial sensor on a
//! pseudo-terminal. It talks to any MQTT 3.1.1 broker: the embedded hub or, e.g., Mosquitto.
//! It does not decode or store readings: that is the bridge's job.
//!
//! Entry points: [`cli::run`] for `edgewatch sim`, [`run_fleet`] and
//! [`spawn_serial_emulator`] for the demo and tests.
//!
//! # Layout
//! * `signal`: seeded per-metric signals (daily cycle, noise, drift, spikes, faults).
//! * `payload`: topic and payload bytes of a reading (JSON, number, postcard).
//! * `config`: [`FleetConfig`], what a fleet run is asked to do, and its checks.
//! * `device`: one device task: connection, sampling schedule, bounded offline buffer; the
//!   state every device of a run shares.
//! * `fleet`: [`run_fleet`]: staggered start of all devices, run limits, progress line.
//! * `verify`: the `--verify` subscriber: exactly-once check and latency percentiles.
//! * `report`: shared counters, the final [`Report`] and the process CPU time.
//! * `serial_emulator`: a sensor writing COBS frames or text lines to a pty.
//! * `cli`: [`SimArgs`] (clap) and [`cli::run`].
//!
//! # Queues
//! | queue | bound | when full |
//! | --- | --- | --- |
//! | device offline buffer | `buffer_capacity` readings (default 1000) | oldest dropped, counted in `dropped` |
//! | rumqttc request channel | 64 requests per device | readings wait in the offline buffer |
//! | QoS 1 in flight | rumqttc's inflight limit (100) | rumqttc stops taking requests |
//! | verify duplicate tracking | 5,000,000 readings | further readings counted `untracked` |
//! | serial pty | the kernel's pty buffer | queued bytes discarded, reading counted `dropped` |

pub mod cli;
mod config;
mod device;
pub mod fleet;
pub mod payload;
pub mod report;
pub mod serial_emulator;
pub mod signal;
mod verify;

pub use cli::{run, SimArgs};
pub use fleet::{run_fleet, FleetConfig};
pub use payload::{Format, TopicShape};
pub use report::{Percentiles, Report, VerifyReport};
pub use serial_emulator::{
    spawn_serial_emulator, SerialConfig, SerialCounts, SerialEmulator, SerialFormat,
};
pub use signal::{Faults, MetricSpec, Signal};

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// An option has a value that cannot work.
    #[error("invalid --{option}: {reason}")]
    Invalid {
        /// The command-line option (without `--`).
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The `--verify` subscriber could not subscribe.
    #[error("verify subscriber: {reason}")]
    Verify {
        /// The connection or subscribe failure.
        reason: String,
    },
    /// The pseudo-terminal could not be opened.
    #[error("cannot open a pseudo-terminal for the serial emulator")]
    Pty {
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
