//! The hub binary as a whole: its command line, a crash under load, `/metrics`, identity, and the API
//! descriptions against a running hub.

#[path = "../support/mod.rs"]
mod support;

mod api_docs;
mod cli;
mod crash;
mod identity;
mod metrics;
mod stall;
