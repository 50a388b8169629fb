//! Why the broker could not start or link.

use std::net::SocketAddr;

use crate::config::ListenerKind;

/// Why the broker could not start or link.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The configuration is invalid; the error names the dotted key.
    #[error("invalid broker configuration: {0}")]
    Config(#[from] edgewatch_protocol::InvalidSetting),
    /// The broker's own runtime could not be started.
    #[error("cannot start the listener runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// An address could not be bound (typically: the port is already in use).
    #[error(
        "cannot listen for {listener} on {addr} (port {port}): {source}; another address or port goes in {moved_by}",
        port = addr.port(),
        moved_by = moved_by(*listener)
    )]
    Bind {
        /// Which listener.
        listener: ListenerKind,
        /// The address it wanted.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A listener stopped or never accepted connections.
    #[error("{listener} listener on {addr} did not become ready: {reason}")]
    NotReady {
        /// Which listener.
        listener: ListenerKind,
        /// Its address.
        addr: SocketAddr,
        /// What happened.
        reason: String,
    },
    /// The router refused an in-process link.
    #[error("cannot open in-process link {client_id:?}: {reason}")]
    Link {
        /// The link's client id.
        client_id: String,
        /// What rumqttd said.
        reason: String,
    },
}

/// Where a listener's address is set: the config key, the flag and the variable.
fn moved_by(listener: ListenerKind) -> &'static str {
    match listener {
        ListenerKind::Mqtt => "broker.mqtt.listen (--mqtt-listen, EDGEWATCH_MQTT_LISTEN)",
        ListenerKind::Mqtt5 => "broker.mqtt5.listen (--mqtt5-listen, EDGEWATCH_MQTT5_LISTEN)",
        ListenerKind::WebSocket => "broker.websocket.listen (--ws-listen, EDGEWATCH_WS_LISTEN)",
        ListenerKind::Tls => "broker.tls.listen (--tls-listen, EDGEWATCH_TLS_LISTEN)",
    }
}
