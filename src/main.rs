//! `edgewatch`: one binary for an edge box. An embedded MQTT broker takes sensor readings, a
//! bridge stores every reading in an append-only sled event log and serves history and live
//! streams over HTTP, and a dashboard shows them.
//!
//! This crate is the command line: it parses flags, loads the configuration, composes the
//! parts from the member crates, and stops them in order.
//!
//! # Layout
//! * `cli`: the clap command line (`run`, `check-config`, `passwd`).
//! * `config`: the whole `edgewatch.toml` (file, environment and flag overrides) with errors
//!   that name the dotted key and the file.
//! * `hub`: starts the broker (and the bridge) and stops them on a signal.
//! * `signals`: SIGINT / SIGTERM as a future.

mod cli;
mod config;
mod hub;
mod signals;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
