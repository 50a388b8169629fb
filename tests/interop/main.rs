//! Other MQTT software with the hub: Debian's Mosquitto clients against the embedded broker,
//! and the bridge against a real Mosquitto broker.

#[path = "../support/mod.rs"]
mod support;

mod external_bridge;
mod mosquitto_clients;
