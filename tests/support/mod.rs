//! The `edgewatch` binary of this package, started through the shared testkit; included by
//! each test binary of `tests/` (`#[path = "../support/mod.rs"]`).
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::path::Path;

pub use edgewatch_testkit::{
    accounted, free_port, get_json, have, loopback_config, loopback_config_fixed_ports,
    metric_sums, poll_until, publish_all, settle, stored, stored_values, wait_for, wait_listening,
    wait_until, Hub, Mosquitto, Process, Sse, SseEvent,
};

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_edgewatch")
}

/// Starts `edgewatch run --config FILE EXTRA...` and waits for its ready line.
pub fn start_hub(config: &Path, extra: &[&str]) -> Hub {
    Hub::start(bin(), config, extra)
}

/// Starts `edgewatch ARGS...` and waits for its ready line.
pub fn spawn_hub(args: &[String]) -> Hub {
    Hub::spawn(bin(), args)
}
