//! Readings from devices to storage and to live clients: every reading stored once, the
//! device side (fleets, restarts, serial sensors, the demo), and live delivery over SSE,
//! WebSocket and long polling.

#[path = "../support/mod.rs"]
mod support;

mod device_side;
mod exactly_once;
mod http_limits;
mod live_delivery;
