//! The hub binary as a whole: its command line, a crash under load, retained messages and MQTT
//! sessions across restarts, `/metrics`, identity, the API descriptions against a running hub,
//! HTTPS and its redirect, CORS, what the log says, and `edgewatch sim` against it.

#[path = "../support/mod.rs"]
mod support;

mod api_docs;
mod backup;
mod cli;
mod cors;
mod crash;
mod durable;
mod export;
mod identity;
mod logs;
mod mappings;
mod metrics;
mod readme;
mod reload;
mod service;
mod sim;
mod stall;
mod tls;
