//! The embedded MQTT broker of edgewatch, and the only crate that names `rumqttd`.
//!
//! Devices publish readings to this broker over MQTT 3.1.1, MQTT 5, MQTT over WebSocket or
//! MQTT over TLS; the bridge receives every publish from our codec as rumqttd reads it (the
//! feed, [`backpressure`]).
//!
//! # Layout
//! * [`config`]: our own [`BrokerConfig`] (serde, unknown keys rejected) and its mapping to
//!   rumqttd's configuration, with router settings that work.
//! * [`auth`]: device credentials: argon2 password hashes. Our codec decides each login when
//!   it reads the CONNECT, so a refused one gets a CONNACK with its reason (rumqttd's auth hook
//!   could only close the connection).
//! * [`password`]: argon2id password hashes.
//! * [`login`]: login limiting: bounded argon2 checks, backoff per address and username, a
//!   dummy check for unknown usernames, remembered successes.
//! * [`peer`]: each connection's peer address (rumqttd does not give it out) and the
//!   per-address connection cap.
//! * [`backpressure`]: the bridge's feed (every publish, handed over by the codec) and its
//!   backpressure: holds PUBACKs while the bridge is behind, so QoS 1 devices slow down
//!   instead of readings piling up.
//! * [`connect_policy`]: a wrapper around rumqttd's v4/v5 codecs that applies our keep-alive
//!   policy to CONNECT (rumqttd refuses keep-alive 0, which MQTT allows).
//! * [`delivery`]: corrections to what rumqttd writes to each client (delivery QoS, client
//!   Maximum Packet Size, one UNSUBACK per UNSUBSCRIBE, DISCONNECT 0x95), made by the wrapper.
//! * [`caps`], [`subscriptions`], [`rate`], [`client_limits`]: caps on what clients make the
//!   broker keep (filters, topics, retained messages) and per-client publish rates, applied by
//!   the codec wrapper; what rumqttd keeps and never frees is described in [`caps`].
//! * [`server`]: binds and bind-checks listeners, runs rumqttd's router and servers on our tokio
//!   runtime, waits for readiness and stops them.
//! * `front`: our accept loop in front of rumqttd's WebSocket and TLS listeners, whose
//!   handshakes rumqttd performs one at a time with no time limit.
//! * `nodelay`: TCP_NODELAY for rumqttd's accepted sockets (inherited from the listener).
//! * [`sys`]: `$SYS` topics with Mosquitto's names, published under an internal prefix and
//!   renamed for the clients allowed to read them by the wrapper.
//! * [`sys_publisher`]: the values of the `$SYS` topics, published every
//!   `broker.sys_interval_secs`.
//! * `bind`: bind-check and readiness of the listeners.
//! * [`wire`]: a PUBLISH's QoS and packet id read from its bytes.
//! * [`durable`]: retained messages and persistent sessions across a restart of the hub: every
//!   change recorded into a store the composition provides, restored before the listeners open;
//!   MQTT 5 session expiry.
//! * [`link`]: in-process links to the router and the bridge's feed, exposed as a `Stream` of
//!   [`InboundPublish`], and a publisher handle.
//!
//! rumqttd's own `Broker::start()` blocks forever and cannot be stopped, so this crate composes
//! rumqttd's public parts (`Router`, `Server`, `local::LinkBuilder`) itself.

pub mod auth;
pub mod backpressure;
mod bind;
pub mod caps;
pub mod client_limits;
pub mod config;
pub mod connect_policy;
pub mod cursor_jumps;
pub mod delivery;
pub mod durable;
mod error;
mod front;
pub mod link;
pub mod login;
mod nodelay;
pub mod password;
pub mod peer;
pub mod rate;
pub mod server;
pub mod subscriptions;
pub mod sys;
pub mod sys_publisher;
pub mod wire;

pub use auth::{hash_password, verify_password, Credentials};
pub use backpressure::IngestGate;
pub use config::ListenerKind;
pub use config::{BrokerConfig, ListenerConfig};
pub use link::{InboundPublish, InboundStream, LinkPublisher};
pub use server::{Broker, BrokerError};
