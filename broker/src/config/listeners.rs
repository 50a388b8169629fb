//! The listener sections: written in part (`[broker.mqtt5] enabled = false`: what is left
//! out keeps that listener's default), and which listeners run on which address (the loopback
//! rule).

use std::net::SocketAddr;

use serde::{Deserialize, Deserializer};

use super::{BrokerConfig, ListenerConfig};

/// Which listeners run, after the secure default was applied, and on which address.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EffectiveListener {
    pub(crate) kind: crate::ListenerKind,
    pub(crate) addr: SocketAddr,
}

impl BrokerConfig {
    /// Whether the loopback rule applies: no accounts and no `allow_anonymous`, so every
    /// listener binds to loopback only (same port).
    pub fn loopback_only(&self) -> bool {
        !self.requires_login() && !self.allow_anonymous
    }

    /// Writes the addresses the listeners will bind into the config (the loopback rule
    /// applied), as `run` uses them; `true` when an address changed.
    pub fn apply_loopback_rule(&mut self) -> bool {
        if !self.loopback_only() {
            return false;
        }
        let mut changed = false;
        for addr in [
            &mut self.mqtt.listen,
            &mut self.mqtt5.listen,
            &mut self.websocket.listen,
            &mut self.tls.listen,
        ] {
            if !addr.ip().is_loopback() {
                *addr = SocketAddr::new(loopback(addr), addr.port());
                changed = true;
            }
        }
        changed
    }

    /// The listeners to start, with the secure default applied: without credentials and
    /// without `allow_anonymous`, a non-loopback address is narrowed to loopback (same port).
    pub(crate) fn effective_listeners(&self) -> Vec<EffectiveListener> {
        use crate::ListenerKind as K;
        let narrow = self.loopback_only();
        let mut out = Vec::new();
        let mut push = |kind, enabled: bool, addr: SocketAddr| {
            if !enabled {
                return;
            }
            let addr = if narrow && !addr.ip().is_loopback() {
                SocketAddr::new(loopback(&addr), addr.port())
            } else {
                addr
            };
            out.push(EffectiveListener { kind, addr });
        };
        push(K::Mqtt, self.mqtt.enabled, self.mqtt.listen);
        push(K::Mqtt5, self.mqtt5.enabled, self.mqtt5.listen);
        push(K::WebSocket, self.websocket.enabled, self.websocket.listen);
        push(K::Tls, self.tls.enabled, self.tls.listen);
        out
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Partial {
    enabled: Option<bool>,
    listen: Option<SocketAddr>,
}

fn with_default<'de, D: Deserializer<'de>>(
    d: D,
    default: &str,
) -> Result<ListenerConfig, D::Error> {
    let p = Partial::deserialize(d)?;
    let base = ListenerConfig::enabled(default);
    Ok(ListenerConfig {
        enabled: p.enabled.unwrap_or(base.enabled),
        listen: p.listen.unwrap_or(base.listen),
    })
}

pub(super) const MQTT: &str = "0.0.0.0:1883";
pub(super) const MQTT5: &str = "0.0.0.0:1884";
pub(super) const WEBSOCKET: &str = "0.0.0.0:8083";

pub(super) fn mqtt<'de, D: Deserializer<'de>>(d: D) -> Result<ListenerConfig, D::Error> {
    with_default(d, MQTT)
}

pub(super) fn mqtt5<'de, D: Deserializer<'de>>(d: D) -> Result<ListenerConfig, D::Error> {
    with_default(d, MQTT5)
}

pub(super) fn websocket<'de, D: Deserializer<'de>>(d: D) -> Result<ListenerConfig, D::Error> {
    with_default(d, WEBSOCKET)
}

/// The loopback address of `addr`'s family.
fn loopback(addr: &SocketAddr) -> std::net::IpAddr {
    if addr.is_ipv6() {
        std::net::Ipv6Addr::LOCALHOST.into()
    } else {
        std::net::Ipv4Addr::LOCALHOST.into()
    }
}
