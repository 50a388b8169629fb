//! Simulated edgewatch device firmware.
//!
//! A fleet of MQTT sensors (1 to 100,000 clients in one process) with realistic seeded
//! signals, offline buffering and reconnects; a load mode with a report of what was sent,
//! acknowledged and (with `verify`) received end to end; and an emulated serial sensor on a
//! pseudo-terminal. It talks to any MQTT 3.1.1 broker: the embedded hub or, e.g., Mosquitto.
//! It does not decode or store readings: that is the bridge's job.
//!
//! # Shapes
//! Devices publish edgewatch's own readings (`--shape native`: `sensors/D/{metric}`, presence
//! `sensors/D/status`) or imitate a popular firmware ([`Shape`]; device `D`):
//! * `tasmota`: `tele/D/SENSOR` = `{"Time":"2026-12-07T10:00:00","ENERGY":{"TotalStartTime":..,
//!   "Total":1.234,"Yesterday":0.5,"Today":0.2,"Power":12,"ApparentPower":15,
//!   "ReactivePower":9,"Factor":0.8,"Voltage":230,"Current":0.052},"AM2301":{"Temperature":21.3,
//!   "Humidity":45.0,"DewPoint":9.1},"TempUnit":"C"}` (12 numbers; `Time` local without offset,
//!   the simulated clock on UTC); presence `tele/D/LWT` `Online` / `Offline`.
//! * `zigbee2mqtt`: `zigbee2mqtt/D` = `{"temperature":21.5,"humidity":45,"battery":97,
//!   "linkquality":120,"voltage":2985}` (5 numbers); presence `zigbee2mqtt/D/availability`
//!   `{"state":"online"}` / `{"state":"offline"}`.
//! * `shelly`: `shellies/D/sensor/temperature` = `21.5`, `.../humidity` = `45`,
//!   `.../battery` = `97`; presence `shellies/D/online` `true` / `false`.
//! * `esphome`: `D/sensor/temperature/state` = `21.5`, `D/sensor/humidity/state` = `45.0`;
//!   presence `D/status` `online` / `offline`.
//! * `homeassistant`: `homeassistant/sensor/D/temperature/state` = `21.5`,
//!   `.../humidity/state` = `45`; presence `homeassistant/sensor/D/availability` `online` /
//!   `offline`.
//!
//! Presence is retained; its offline payload is the last will and is published at an orderly
//! end. Counts (`max`, `rate`, the report's) are of publishes; the report's
//! `expected_readings` is delivered publishes times the numbers in each (what a hub that
//! stores every number should hold). `--verify` counts shaped publishes without identifying
//! them (no event time to tell a re-send), and says so.
//!
//! # A run
//! Devices connect first (staggered at `connect_rate`); sending, and `duration`, start when
//! all are connected or `connect_timeout` after the last connect slot. The report's rate is
//! per second of sending. A broker that refuses the first connections (nothing listens, a bad
//! login), or a connect timeout with no device connected, fails the run with
//! [`SimError::Connect`], in words.
//!
//! Entry points: [`cli::run`] for `edgewatch sim`, [`run_fleet`] and
//! [`spawn_serial_emulator`] for the demo and tests.
//!
//! # Layout
//! * `signal`: seeded per-metric signals (daily cycle, noise, drift, spikes, faults).
//! * `payload`: topic and payload bytes of a reading (JSON, number, postcard).
//! * `shape`: the firmware shapes: topics, payloads, presence, Tasmota's energy counters.
//! * `config`: [`FleetConfig`], what a fleet run is asked to do, and its checks.
//! * `connection`: connection failures in words, and which are permanent.
//! * `shared`: the state every device of a run shares (limits, start of sending, failures).
//! * `device`: one device task: connection, sampling schedule, bounded offline buffer.
//! * `fleet`: [`run_fleet`]: staggered connects, start of sending, run limits, progress line.
//! * `verify`: the `--verify` subscriber: exactly-once check and latency percentiles.
//! * `report`: shared counters, the final [`Report`] and the process CPU time.
//! * `serial_emulator`: a sensor writing COBS frames or text lines to a pty.
//! * `duration`: `--duration 5s`-style values.
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
mod connection;
mod device;
pub mod duration;
pub mod fleet;
pub mod payload;
pub mod report;
pub mod serial_emulator;
pub mod shape;
mod shared;
pub mod signal;
mod verify;

pub use cli::{run, SimArgs};
pub use duration::parse_duration;
pub use fleet::{run_fleet, FleetConfig};
pub use payload::{Format, TopicShape};
pub use report::{Percentiles, Report, VerifyReport};
pub use serial_emulator::{
    spawn_serial_emulator, SerialConfig, SerialCounts, SerialEmulator, SerialFormat,
};
pub use shape::Shape;
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
    /// The broker refused the connection (nothing listens on the port, a refused login), or
    /// no device connected within the connect timeout.
    #[error("{reason}")]
    Connect {
        /// What happened, in words.
        reason: String,
    },
    /// The `--verify` subscriber could not subscribe.
    #[error("verify subscriber: {reason}")]
    Verify {
        /// The connection or subscribe failure.
        reason: String,
    },
    /// Standard output could not be written (other than a reader that went away).
    #[error("cannot write to standard output")]
    Output {
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The pseudo-terminal could not be opened.
    #[error("cannot open a pseudo-terminal for the serial emulator")]
    Pty {
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
