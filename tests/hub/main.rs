//! The hub binary as a whole: its command line, a crash under load, `/metrics`, the API
//! descriptions against a running hub, and HTTPS and its redirect.

#[path = "../support/mod.rs"]
mod support;

mod api_docs;
mod cli;
mod crash;
mod metrics;
mod stall;
mod tls;
