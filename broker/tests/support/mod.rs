//! What the broker's test binaries share: a config with every plain listener on a free
//! loopback port, and client options. Included with `#[path = "support/mod.rs"] mod support;`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use edgewatch_broker::BrokerConfig;
use rumqttc::MqttOptions;

/// How long a test waits for anything.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// A broker with every plain listener on a free loopback port.
pub(crate) fn test_config() -> BrokerConfig {
    let mut cfg = BrokerConfig::default();
    for l in [&mut cfg.mqtt, &mut cfg.mqtt5, &mut cfg.websocket] {
        l.enabled = true;
        l.listen = "127.0.0.1:0".parse().unwrap();
    }
    cfg
}

/// rumqttc options for `id` on `addr`, keep-alive 30 s.
pub(crate) fn options(id: &str, addr: SocketAddr) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o
}
