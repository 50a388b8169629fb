//! Who is on the other end of an MQTT connection: the peer's IP address, for per-IP limits.
//!
//! rumqttd accepts connections itself and gives neither its auth hook nor our codec wrapper
//! the peer's address. Its accept loop does, in one synchronous step on one thread: accept,
//! log an `accept` event carrying the address, clone the codec for the new connection, spawn
//! the connection's task. So [`accept_tap`], a tracing layer, keeps the address of the last
//! `accept` event in a thread-local, and the codec's `clone` ([`take_accepted`]) takes it on
//! the same thread, before any other connection can be accepted there. No await point lies
//! between the two, so the address always belongs to the connection being cloned.
//!
//! The hub installs the tap (`edgewatch_broker::peer::accept_tap`) whatever the log level.
//! Without it (an embedding that sets up its own logging), addresses are unknown and the
//! per-IP limits do not apply; the global ones still do. A test in
//! `broker/tests/broker/limits.rs` fails if rumqttd stops logging the address this way.
//!
//! [`Peers`] counts connections per IP (the per-IP cap) and remembers which IP a client id
//! connected from, which the login limiter asks for (rumqttd's auth hook only gets the
//! client id).

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};

thread_local! {
    static LAST_ACCEPTED: Cell<Option<SocketAddr>> = const { Cell::new(None) };
}

/// The target and message of rumqttd's accept event.
const ACCEPT_TARGET: &str = "rumqttd::server::broker";
const ACCEPT_MESSAGE: &str = "accept";

/// A tracing layer that records the peer address of each connection rumqttd accepts. It
/// filters for itself: add it to the registry next to (not behind) the log filter.
pub fn accept_tap<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    AcceptTap.with_filter(
        tracing_subscriber::filter::Targets::new().with_target(ACCEPT_TARGET, tracing::Level::INFO),
    )
}

/// Takes the address of the connection accepted last on this thread, if the tap saw one.
pub(crate) fn take_accepted() -> Option<SocketAddr> {
    LAST_ACCEPTED.with(Cell::take)
}

struct AcceptTap;

impl<S: tracing::Subscriber> Layer<S> for AcceptTap {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != ACCEPT_TARGET {
            return;
        }
        let mut visit = AcceptVisit::default();
        event.record(&mut visit);
        if visit.is_accept {
            LAST_ACCEPTED.with(|last| last.set(visit.addr));
        }
    }
}

#[derive(Default)]
struct AcceptVisit {
    is_accept: bool,
    addr: Option<SocketAddr>,
}

impl Visit for AcceptVisit {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.is_accept = format!("{value:?}") == ACCEPT_MESSAGE,
            "addr" => self.addr = format!("{value:?}").parse().ok(),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.is_accept = value == ACCEPT_MESSAGE;
        }
    }
}

/// Connections per IP address and the address of each connected client id.
#[derive(Debug)]
pub struct Peers {
    max_per_ip: u32,
    state: Mutex<PeerState>,
    refused: AtomicU64,
}

#[derive(Debug, Default)]
struct PeerState {
    /// Loopback address of a fronted connection (see [`crate::front`]) → the real client.
    proxied: HashMap<SocketAddr, SocketAddr>,
    per_ip: HashMap<IpAddr, u32>,
    /// Client id → (address, connections with that id). Entries go with their connections.
    clients: HashMap<String, (IpAddr, u32)>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct PeerSlot {
    peers: Arc<Peers>,
    ip: IpAddr,
    client_id: String,
}

impl Peers {
    /// A table allowing `max_per_ip` connections per address.
    pub fn new(max_per_ip: u32) -> Self {
        Self {
            max_per_ip: max_per_ip.max(1),
            state: Mutex::default(),
            refused: AtomicU64::new(0),
        }
    }

    /// Connections refused because their address had `max_per_ip` already.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Admits a connection from `ip` that sent CONNECT with `client_id`, or refuses it when
    /// that address has its maximum already.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr, client_id: &str) -> Option<PeerSlot> {
        let mut state = self.lock();
        let count = state.per_ip.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            drop(state);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *count += 1;
        let entry = state.clients.entry(client_id.to_owned()).or_insert((ip, 0));
        *entry = (ip, entry.1 + 1);
        Some(PeerSlot {
            peers: self.clone(),
            ip,
            client_id: client_id.to_owned(),
        })
    }

    /// Records that rumqttd's connection from `local` (a fronted connection) is `client`'s,
    /// for as long as the returned guard lives.
    pub(crate) fn register_proxied(
        self: &Arc<Self>,
        local: SocketAddr,
        client: SocketAddr,
    ) -> Proxied {
        self.lock().proxied.insert(local, client);
        Proxied {
            peers: self.clone(),
            local,
        }
    }

    /// The real client behind `addr` if it is a fronted connection, else `addr`.
    pub(crate) fn resolve(&self, addr: SocketAddr) -> SocketAddr {
        self.lock().proxied.get(&addr).copied().unwrap_or(addr)
    }

    /// The address the client with this id connected from (the latest, if several).
    pub fn ip_of(&self, client_id: &str) -> Option<IpAddr> {
        self.lock().clients.get(client_id).map(|(ip, _)| *ip)
    }

    /// Open connections from `ip`.
    pub fn connections_from(&self, ip: IpAddr) -> u32 {
        self.lock().per_ip.get(&ip).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PeerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A fronted connection's entry in [`Peers`]; removed on drop.
#[derive(Debug)]
pub(crate) struct Proxied {
    peers: Arc<Peers>,
    local: SocketAddr,
}

impl Drop for Proxied {
    fn drop(&mut self) {
        self.peers.lock().proxied.remove(&self.local);
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut state = self.peers.lock();
        if let Some(count) = state.per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                state.per_ip.remove(&self.ip);
            }
        }
        if let Some((_, n)) = state.clients.get_mut(&self.client_id) {
            *n -= 1;
            if *n == 0 {
                state.clients.remove(&self.client_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_cap_and_client_addresses_are_freed_with_their_connections() {
        let peers = Arc::new(Peers::new(2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = peers.admit(a, "c1").unwrap();
        let s2 = peers.admit(a, "c2").unwrap();
        assert!(peers.admit(a, "c3").is_none());
        assert_eq!(peers.refused(), 1);
        let s3 = peers.admit(b, "c1").unwrap();
        assert_eq!(peers.ip_of("c1"), Some(b));
        assert_eq!(peers.ip_of("c2"), Some(a));
        drop(s1);
        assert_eq!(peers.ip_of("c1"), Some(b), "c1 still has a connection");
        drop((s2, s3));
        assert_eq!(peers.ip_of("c1"), None);
        assert_eq!(peers.connections_from(a), 0);
        assert!(peers.admit(a, "c4").is_some());
    }

    #[test]
    fn the_tap_takes_the_address_of_rumqttds_accept_event() {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(accept_tap());
        tracing::subscriber::with_default(subscriber, || {
            let addr: SocketAddr = "192.0.2.7:40000".parse().unwrap();
            // What rumqttd 0.20's accept loop logs (same target, message and field).
            tracing::info!(target: "rumqttd::server::broker", name = ?"v4-1", ?addr, count = 3, "accept");
            assert_eq!(take_accepted(), Some(addr));
            assert_eq!(take_accepted(), None, "taken once");
            tracing::info!(target: "rumqttd::server::broker", ?addr, "something else");
            tracing::info!(target: "other", ?addr, "accept");
            assert_eq!(take_accepted(), None);
        });
    }
}
