//! What every edgewatch test crate shares (a dev-dependency only).
//!
//! # Layout
//! * `ports`: free loopback ports that do not collide with the ones the kernel hands out.
//! * `wait`: waits on a condition, always bounded.
//! * `process`: a child process killed on drop, its output read line by line.
//! * `hub`: the `edgewatch` binary, started and waited for (`edgewatch ready ...`).
//! * `mosquitto`: a real Mosquitto (Debian package) on a free port.
//! * `mqtt`: publishing through a real MQTT connection.
//! * `http`: HTTP and SSE clients, and what the hub's HTTP API counts.
//! * `readings`: readings for store and writer tests, and test log output.

mod http;
mod hub;
mod mosquitto;
mod mqtt;
mod ports;
mod process;
mod readings;
mod wait;

pub use http::{accounted, get_json, http_get, metric_sums, stored, stored_values, Sse, SseEvent};
pub use hub::{loopback_config, loopback_config_fixed_ports, Hub};
pub use mosquitto::Mosquitto;
pub use mqtt::publish_all;
pub use ports::free_port;
pub use process::{have, wait_listening, Process};
pub use readings::{base_time, init_logs, reading, HOUR};
pub use wait::{poll_until, settle, wait_for, wait_until};
