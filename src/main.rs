//! `edgewatch`: one binary for an edge box. An embedded MQTT broker takes sensor readings, a
//! bridge stores every reading in an append-only sled event log and serves history and live
//! streams over HTTP, and a dashboard shows them.
//!
//! This crate is the command line: it parses flags, loads the configuration, composes the
//! parts from the member crates, and stops them in order.
//!
//! # Layout
//! * `broker_state`: the embedded broker's retained messages and persistent sessions in the
//!   bridge's store, restored at start.
//! * `cli`: the clap command line (`run`, `bridge`, `demo`, `sim`, `check-config`, `passwd`,
//!   `token create`).
//! * `config`: the whole `edgewatch.toml` (file, environment and flag overrides) with errors
//!   that name the dotted key and the file.
//! * `http_access`: who may use HTTP (`[auth]`, accounts), and loopback-only without credentials.
//! * `hub`: starts the broker, the bridge, the fan-out and HTTP, and stops them on a signal.
//! * `logging`: the log on stderr: filter, colour only on a terminal, rumqttd's normal events
//!   that it logs at ERROR left out.
//! * `demo`: the hub plus a simulated fleet and an emulated serial sensor.
//! * `export`: `edgewatch export`, stored readings as CSV or NDJSON from a data directory or a
//!   running hub.
//! * `serial`: serial ports in the hub, and the standalone `edgewatch serial` reader.
//! * `signals`: SIGINT / SIGTERM as a future.

/// jemalloc rather than glibc's malloc, for memory an edge box gets back: with glibc, an idle
/// MQTT connection held 56 KiB (rumqttd's per-connection buffers, allocated large and touched
/// little; glibc's arenas keep the pages), and the memory a 10,000 readings/s load took stayed
/// taken after it; with jemalloc 7 KiB, and a background thread returns freed pages within
/// about a second (BENCHMARKS.md, "Memory"; `scripts/mem-profile`). Its settings are built in
/// from `.cargo/config.toml`; `--no-default-features` builds with glibc's malloc instead.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod broker_state;
mod cli;
mod config;
mod demo;
mod export;
mod http_access;
mod hub;
mod logging;
mod serial;
mod signals;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
