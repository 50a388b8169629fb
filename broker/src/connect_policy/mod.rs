//! Our CONNECT policy, applied by wrapping rumqttd's v4/v5 codecs.
//!
//! rumqttd's `Server` takes any [`Protocol`] and clones it for every connection, so a wrapper
//! sees each connection's packets before rumqttd does. It applies the keep-alive policy:
//!
//! * keep-alive 0 ("never time me out", allowed by MQTT 3.1.1 and 5 and sent by common
//!   clients) is refused by rumqttd. We rewrite it to `keep_alive_max_secs`: the broker then
//!   closes the connection only after 1.5 × that much silence (at the default 65,535 s, about
//!   27 hours), which is the longest rumqttd can express;
//! * a keep-alive below `keep_alive_min_secs` is raised to it (more tolerant, never stricter);
//! * a keep-alive above `keep_alive_max_secs` is lowered to it; MQTT 5 clients are told
//!   through the CONNACK's server keep-alive property, as the specification asks.
//!
//! It also feeds the [`IngestGate`]: it counts the publishes devices send and holds PUBACKs
//! back while the bridge is behind (see [`crate::backpressure`]).
//!
//! It applies the caps on what a client can make the broker keep and the per-client rate
//! limit ([`crate::client_limits`]): refused filters, bounded topics, retained caps, dropped or
//! delayed publishes.
//!
//! This wrapper is also where per-topic authorization will go.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;

use crate::auth::Credentials;
use crate::backpressure::IngestGate;
use crate::caps::BrokerCaps;
use crate::client_limits::ClientLimits;
use crate::delivery::{self, Delivery};
use crate::durable::{Durable, DurableConnection};
use crate::login::Verdict;
use crate::peer::{PeerSlot, Peers};
use crate::wire::{publish_pkid, publish_qos};

mod corrections;
mod feed;
use edgewatch_protocol::permissions::Permissions;
use rumqttd::protocol::ConnectReturnCode;
use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::BytesMut;
use rumqttd::protocol::{Error, Packet, Protocol};

/// Keep-alive bounds applied to every CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlivePolicy {
    /// Lower bound for a non-zero keep-alive, seconds.
    pub min_secs: u16,
    /// Upper bound, and the value that replaces 0, seconds.
    pub max_secs: u16,
}

impl KeepAlivePolicy {
    /// The keep-alive the broker will enforce for a client that asked for `requested`.
    pub fn effective(&self, requested: u16) -> u16 {
        if requested == 0 {
            self.max_secs
        } else {
            requested.clamp(self.min_secs.max(1), self.max_secs)
        }
    }
}

/// A codec that applies [`KeepAlivePolicy`] on top of rumqttd's codec `P`.
#[derive(Debug)]
pub struct PolicyProtocol<P> {
    inner: P,
    policy: KeepAlivePolicy,
    /// Set when this connection's keep-alive was changed and the client must be told (MQTT 5
    /// CONNACK server keep-alive); 0 means nothing to announce, else seconds + 1. Per
    /// connection: rumqttd clones the codec for each one.
    announce_keep_alive: AtomicU32,
    /// Whether this codec speaks MQTT 5 (only v5 CONNACKs carry properties).
    v5: bool,
    /// Backpressure from the bridge, when one is attached.
    gate: Option<Arc<IngestGate>>,
    /// Connected clients, over all listeners (a client counts from its CONNECT until its
    /// connection task ends, which drops this per-connection codec).
    connections: Option<Arc<AtomicI64>>,
    /// Whether this connection's CONNECT was counted.
    counted: AtomicBool,
    /// Connections per address, when addresses are known (see [`crate::peer`]).
    peers: Option<Arc<Peers>>,
    /// This connection's peer, taken from the accept loop when the codec is cloned for it.
    peer: Option<SocketAddr>,
    /// This connection's place in `peers`, from its CONNECT on.
    slot: Option<PeerSlot>,
    /// Set once we closed the connection (see `close`).
    closing: bool,
    /// Device accounts, when logins are required: the codec decides each login.
    credentials: Option<Credentials>,
    /// The CONNACK code of a login refused by us (see `decide_login`).
    refused: Option<ConnectReturnCode>,
    /// What the logged-in account may read and publish; `None`: everything.
    permissions: Option<Permissions>,
    /// Packet ids of denied QoS 1/2 publishes whose MQTT 5 PUBACK says so (0x87).
    denied: Mutex<Vec<u16>>,
    /// Caps and rate limit, when configured (per connection: fresh in each clone).
    limits: Option<ClientLimits>,
    /// Corrections to what rumqttd writes (see [`crate::delivery`]).
    delivery: Delivery,
    /// Set once the CONNECT was read.
    connected: bool,
    /// Set when a DISCONNECT with a reason is on its way and nothing more is read.
    refusing: bool,
    /// Retained messages and sessions recorded across restarts ([`crate::durable`]).
    durable: Option<DurableConnection>,
    /// Packet ids of QoS 2 publishes handed to the bridge and not yet released (PUBREL): a
    /// publish resent with one of them is the same message (see `feed_bridge`).
    qos2_fed: std::collections::HashSet<u16>,
    /// The last will (topic, payload) of an accepted CONNECT, until a DISCONNECT discards it:
    /// the bridge gets it if the connection ends without one (see `feed_will`).
    will: Option<(bytes::Bytes, bytes::Bytes)>,
}

impl<P> Drop for PolicyProtocol<P> {
    fn drop(&mut self) {
        self.feed_will();
        if let (true, Some(n)) = (*self.counted.get_mut(), &self.connections) {
            n.fetch_sub(1, Ordering::Relaxed);
        }
        if *self.counted.get_mut() {
            tracing::debug!(peer = ?self.peer, "MQTT connection ended");
        }
    }
}

impl<P: Clone> Clone for PolicyProtocol<P> {
    /// A codec for a new connection: the shared parts are shared, the per-connection state
    /// starts fresh.
    fn clone(&self) -> Self {
        // rumqttd clones the codec in its accept loop right after accepting (and logging) the
        // connection this clone is for.
        let peer = crate::peer::take_accepted()
            .map(|addr| self.peers.as_ref().map_or(addr, |p| p.resolve(addr)));
        let mut codec = Self::fresh(self.inner.clone(), self.v5, self.policy);
        codec.gate.clone_from(&self.gate);
        codec.connections.clone_from(&self.connections);
        codec.peers.clone_from(&self.peers);
        codec.peer = peer;
        codec.credentials.clone_from(&self.credentials);
        codec.limits.clone_from(&self.limits);
        codec.durable.clone_from(&self.durable);
        codec
    }
}

impl PolicyProtocol<rumqttd::protocol::v4::V4> {
    /// MQTT 3.1.1.
    pub fn v4(policy: KeepAlivePolicy) -> Self {
        Self::fresh(rumqttd::protocol::v4::V4, false, policy)
    }
}

impl PolicyProtocol<rumqttd::protocol::v5::V5> {
    /// MQTT 5.
    pub fn v5(policy: KeepAlivePolicy) -> Self {
        Self::fresh(rumqttd::protocol::v5::V5, true, policy)
    }
}

impl<P> PolicyProtocol<P> {
    /// A codec with nothing attached and no connection state.
    fn fresh(inner: P, v5: bool, policy: KeepAlivePolicy) -> Self {
        Self {
            inner,
            policy,
            announce_keep_alive: AtomicU32::new(0),
            v5,
            gate: None,
            connections: None,
            counted: AtomicBool::new(false),
            peers: None,
            peer: None,
            slot: None,
            closing: false,
            credentials: None,
            refused: None,
            permissions: None,
            denied: Mutex::default(),
            limits: None,
            delivery: Delivery::new(v5),
            connected: false,
            refusing: false,
            durable: None,
            qos2_fed: Default::default(),
            will: None,
        }
    }
}

impl<P> PolicyProtocol<P> {
    /// Attaches the bridge's backpressure gate.
    pub fn with_gate(mut self, gate: Arc<IngestGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Decides logins against `credentials` (when it has users).
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = (!credentials.is_empty()).then_some(credentials);
        self
    }

    /// Applies the per-address connection cap of `peers` (when the address is known).
    pub fn with_peers(mut self, peers: Arc<Peers>) -> Self {
        self.peers = Some(peers);
        self
    }

    /// Applies the caps and rate limit of `caps` to every connection.
    pub fn with_caps(mut self, caps: Arc<BrokerCaps>) -> Self {
        self.limits = Some(ClientLimits::new(caps));
        self
    }

    /// Records retained messages and persistent sessions in `durable`.
    pub fn with_durable(mut self, durable: Arc<Durable>) -> Self {
        self.durable = Some(DurableConnection::new(durable));
        self
    }

    /// Counts connected clients in `n`.
    pub fn with_connection_count(mut self, n: Arc<AtomicI64>) -> Self {
        self.connections = Some(n);
        self
    }
}

impl<P> PolicyProtocol<P> {
    /// A CONNECT: the per-address cap, the connection count and the keep-alive policy.
    fn admit_connect(&mut self, connect: &mut rumqttd::protocol::Connect) -> Result<(), Error> {
        tracing::debug!(client_id = %connect.client_id, peer = ?self.peer, "MQTT client connecting");
        self.admit_peer(&connect.client_id)?;
        if let Some(n) = &self.connections {
            if !self.counted.swap(true, Ordering::Relaxed) {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
        let requested = connect.keep_alive;
        let effective = self.policy.effective(requested);
        if effective != requested {
            tracing::debug!(
                client_id = %connect.client_id,
                requested,
                effective,
                "keep-alive adjusted by policy"
            );
            connect.keep_alive = effective;
            // A client that asked for 0 wants no timeout; telling it a server keep-alive
            // would make it start pinging, which is fine for MQTT 5 clients.
            self.announce_keep_alive
                .store(u32::from(effective) + 1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Closes the connection after the packets already read from it, for `why`.
    ///
    /// Returning an error from `read_mut` would make rumqttd drop every packet of the batch it
    /// is reading, also publishes read before this one and already counted by the ingest gate
    /// (whose backlog would then never come down). A DISCONNECT in their place lets the router
    /// take those first and then end the connection; nothing after it is read. rumqttd then
    /// discards the client's last will, as for any DISCONNECT.
    fn close(&mut self, why: Error) -> Result<Packet, Error> {
        tracing::debug!(%why, "closing an MQTT connection after its packets so far");
        self.closing = true;
        self.will = None; // our DISCONNECT: rumqttd discards the will
        if let Some(durable) = &mut self.durable {
            durable.closed();
        }
        let disconnect = rumqttd::protocol::Disconnect {
            reason_code: rumqttd::protocol::DisconnectReasonCode::NormalDisconnection,
        };
        Ok(Packet::Disconnect(disconnect, None))
    }

    /// Decides the login of a CONNECT here rather than in rumqttd's auth hook, which can only
    /// close a refused connection without a CONNACK (clients then report "connection lost"
    /// and retry at once). An accepted login's password is replaced by the credentials'
    /// ticket, which the hook accepts. A refused CONNECT is rewritten to what rumqttd itself
    /// refuses with a CONNACK (no client id with a persistent session: code 2) and `write`
    /// turns that CONNACK's code into the refusal: 3.1.1 4 (bad username or password), 5 (not
    /// authorised: no login) or 3 (server unavailable: too many checks waiting); MQTT 5 0x86,
    /// 0x87 or 0x89. The refused client never reaches rumqttd's router, so it cannot take over
    /// the session of the client id it named. A password that is a token (a JWT or an app
    /// token, when the hub has set [`Credentials::set_token_login`]) is decided by the token:
    /// its permissions, or refused as a bad username or password (an expired token too).
    fn decide_login(&mut self, packet: &mut Packet) {
        let (Some(credentials), Packet::Connect(connect, _, will, _, login)) =
            (&self.credentials, packet)
        else {
            return;
        };
        let code = match login.as_mut() {
            None => Some(ConnectReturnCode::NotAuthorized),
            Some(login) => {
                let password = std::mem::take(&mut login.password);
                if let Some(outcome) = credentials.token_login(&login.username, &password) {
                    // A token as the password: its own permissions, no password check.
                    login.password = credentials.ticket().to_owned();
                    match outcome {
                        Ok(permissions) => {
                            self.permissions = Some(permissions);
                            None
                        }
                        Err(_) => Some(ConnectReturnCode::BadUserNamePassword),
                    }
                } else {
                    let decide = credentials.decide(
                        self.peer.map(|p| p.ip()),
                        &connect.client_id,
                        &login.username,
                        password,
                    );
                    let verdict = wait(decide);
                    login.password = credentials.ticket().to_owned();
                    match verdict {
                        v if v.accepted() => {
                            self.permissions =
                                credentials.permissions(&login.username, &connect.client_id);
                            None
                        }
                        Verdict::Busy if self.v5 => Some(ConnectReturnCode::ServerBusy),
                        Verdict::Busy => Some(ConnectReturnCode::ServiceUnavailable),
                        _ => Some(ConnectReturnCode::BadUserNamePassword),
                    }
                }
            }
        };
        let will_denied = will.as_ref().is_some_and(|w| {
            let permissions = self.permissions.as_ref();
            permissions.is_some_and(|p| !p.may_publish(&String::from_utf8_lossy(&w.topic)))
        });
        if will_denied {
            // The will would publish where the account may not: it is dropped.
            self.deny(
                "last will dropped",
                will.as_ref().map_or(&[][..], |w| &w.topic),
            );
            *will = None;
        }
        if let Some(code) = code {
            let password = credentials.ticket().to_owned();
            let username = login
                .as_ref()
                .map(|l| l.username.clone())
                .unwrap_or_default();
            *login = Some(rumqttd::protocol::Login { username, password });
            connect.client_id.clear();
            connect.clean_session = false;
            self.refused = Some(code);
        }
    }

    /// Applies the account's publish permission to a PUBLISH; `false` drops it. A denied QoS 0
    /// publish is dropped; a denied QoS 1/2 one is acknowledged (as Mosquitto does; MQTT 5:
    /// reason 0x87 not authorized) but goes nowhere: its topic becomes `$edgewatch/denied`,
    /// which no one may subscribe to and the bridge does not receive, with an empty payload.
    fn permit_publish(&mut self, packet: &mut Packet, qos: u8, pkid: Option<u16>) -> bool {
        let Packet::Publish(publish, props) = packet else {
            return true;
        };
        // No client publishes where the hub's `$SYS` values are (`crate::sys`).
        let internal = crate::sys::sys_topic(&publish.topic).is_some();
        // An alias-only publish (empty topic) is refused: its topic is not checked here.
        let topic = std::str::from_utf8(&publish.topic).unwrap_or("");
        match &self.permissions {
            None if !internal => return true,
            Some(p) if !internal && !topic.is_empty() && p.may_publish(topic) => return true,
            _ => {}
        }
        let shown = publish.topic.clone();
        self.deny("publish denied", &shown);
        if qos == 0 {
            return false;
        }
        publish.topic = bytes::Bytes::from_static(DENIED_TOPIC.as_bytes());
        publish.payload = bytes::Bytes::new();
        publish.retain = false;
        if let Some(props) = props {
            props.topic_alias = None;
        }
        if let Some(pkid) = pkid {
            let mut denied = self.denied.lock().unwrap_or_else(|e| e.into_inner());
            if denied.len() >= 64 {
                denied.remove(0);
            }
            denied.push(pkid);
        }
        true
    }

    /// Counts and logs (rate-limited) something the account's permissions refused.
    fn deny(&self, what: &str, topic: &[u8]) {
        if let Some(limits) = &self.limits {
            limits
                .caps()
                .counters
                .publishes_denied
                .fetch_add(1, Ordering::Relaxed);
            limits.caps().warn(what, topic);
        }
    }

    /// Takes this connection's place among its address's connections, or refuses it.
    fn admit_peer(&mut self, client_id: &str) -> Result<(), Error> {
        let (Some(peers), Some(peer), None) = (&self.peers, self.peer, &self.slot) else {
            return Ok(());
        };
        match peers.admit(peer.ip(), client_id) {
            Some(slot) => {
                self.slot = Some(slot);
                Ok(())
            }
            None => {
                let refused = peers.refused();
                if refused.is_power_of_two() || refused % 1_000 == 0 {
                    tracing::warn!(%peer, %client_id, refused, "MQTT connection refused: too many connections from this address (broker.limits.max_connections_per_ip)");
                }
                // Closes the connection before rumqttd handles the CONNECT.
                Err(Error::InvalidConnectReturnCode(0x97))
            }
        }
    }
}

impl<P: Protocol> Protocol for PolicyProtocol<P> {
    fn read_mut(&mut self, stream: &mut BytesMut, max_size: usize) -> Result<Packet, Error> {
        let (mut packet, header, pkid) = loop {
            if self.closing {
                // Closed by us (see `close`): what the client still sends is not read.
                stream.clear();
                return Err(Error::InsufficientBytes(1));
            }
            if let Some(packet) = self.delivery.synthetic() {
                self.closing = matches!(packet, Packet::Disconnect(..));
                return Ok(packet);
            }
            if self.refusing {
                stream.clear();
                return Err(Error::InsufficientBytes(1));
            }
            // The fixed header's first byte: a publish's QoS, which rumqttd's `Publish` keeps
            // private.
            let header = stream.first().copied().unwrap_or(0);
            if self.v5 && V5_UNREACHABLE.contains(&(header >> 4)) {
                // rumqttd's MQTT 5 decoder panics (`unreachable!`) on these with a body; a
                // client never sends them: a protocol error, the connection is closed.
                stream.clear();
                return self.close(Error::InvalidPacketType(header >> 4));
            }
            // rumqttd keeps a publish's packet id private too: read it from the bytes when a
            // denied publish may need it for its PUBACK.
            let pkid = match self.permissions {
                _ if header >> 4 == 3 && publish_qos(header) == 2 => publish_pkid(stream),
                Some(_) if self.v5 && header >> 4 == 3 => publish_pkid(stream),
                _ => None,
            };
            let before = stream.len();
            let mut packet = match self.inner.read_mut(stream, max_size) {
                Ok(packet) => {
                    crate::sys::count_read(before - stream.len());
                    packet
                }
                Err(err @ Error::PayloadSizeLimitExceeded(_)) if self.connected => {
                    return self.refuse_oversize(stream, err)
                }
                Err(err) => return Err(err),
            };
            let held = self.held(&packet);
            if self.queued_ack(&packet)
                || !self.permit_publish(&mut packet, publish_qos(header), pkid)
            {
                continue;
            }
            match self.limit(&mut packet, header) {
                Next::Keep => {}
                Next::Skip => continue,
                Next::Fail(err) => return Err(err),
                Next::Close(err) => return self.close(err),
            }
            match self.backlog_admission(&packet, header) {
                Next::Keep => {}
                Next::Skip => continue,
                Next::Close(err) | Next::Fail(err) => return self.close(err),
            }
            if let Err(err) = self.correct_inbound(&mut packet, header, held, max_size) {
                return self.close(err);
            }
            break (packet, header, pkid);
        };
        if let Packet::Connect(connect, ..) = &mut packet {
            self.admit_connect(connect)?;
        }
        // After the per-address cap: a refused connection costs no password check.
        self.decide_login(&mut packet);
        if let (Some(durable), None) = (&mut self.durable, self.refused) {
            durable.packet(&mut packet, header, self.v5, self.limits.as_mut());
        }
        self.feed_bridge(&packet, header, pkid);
        Ok(packet)
    }

    fn write(&self, mut packet: Packet, write: &mut BytesMut) -> Result<usize, Error> {
        if let (Packet::PubAck(..), Some(gate)) = (&packet, &self.gate) {
            // Runs on the broker's own runtime, outside rumqttd's locks: holding the ack here
            // pauses only this connection's task (see `crate::backpressure`).
            if !gate.wait_for_room() {
                tracing::warn!("closing an MQTT connection whose acknowledgement waited longer than broker.limits.ack_stall_max_secs for the bridge: the device sends the reading again when it reconnects");
                return Err(Error::InvalidReason(0x89));
            }
        }
        if let Some(limits) = &self.limits {
            limits.outbound(&mut packet);
        }
        if let (Packet::ConnAck(ack, _), Some(code)) = (&mut packet, self.refused) {
            ack.code = code;
        }
        if let (Packet::PubAck(ack, _), Some(_)) = (&mut packet, &self.permissions) {
            // Only restricted accounts have denied publishes: no lock on other PUBACKs.
            let mut denied = self.denied.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = denied.iter().position(|pkid| *pkid == ack.pkid) {
                denied.remove(i);
                ack.reason = rumqttd::protocol::PubAckReason::NotAuthorized;
            }
        }
        if self.v5 {
            if let Packet::ConnAck(_, props) = &mut packet {
                let props = props.get_or_insert_with(Default::default);
                let announce = self.announce_keep_alive.swap(0, Ordering::Relaxed);
                if announce > 0 {
                    props.server_keep_alive = Some(u16::try_from(announce - 1).unwrap_or(u16::MAX));
                }
                props.max_packet_size = self.delivery.broker_max_packet;
            }
        }
        let forward = |topic: &[u8], sending: delivery::Sending| match &self.limits {
            Some(l) => l.forward(topic, sending),
            None => Some(sending.retained_now),
        };
        let publish = matches!(packet, Packet::Publish(..));
        let accepted =
            matches!(&packet, Packet::ConnAck(ack, _) if ack.code == ConnectReturnCode::Success);
        let mut n = self
            .delivery
            .write(packet, write, &|p, w| self.inner.write(p, w), &forward)?;
        if accepted {
            n += self.write_queued(write);
        }
        crate::sys::count_written(n, publish);
        Ok(n)
    }
}

/// Runs `future` to completion from the codec (which is not async): on the broker's
/// multi-threaded runtime this worker hands its other tasks over first, as the PUBACK hold
/// does; elsewhere (unit tests) it just blocks.
fn wait<F: std::future::Future>(future: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| rt.block_on(future))
        }
        _ => futures::executor::block_on(future),
    }
}

/// What becomes of a packet read.
enum Next {
    /// It goes to rumqttd.
    Keep,
    /// It is dropped; read the next one.
    Skip,
    /// The connection ends after the packets before it.
    Close(Error),
    /// The connection ends now (a refused CONNECT).
    Fail(Error),
}

/// Where a denied QoS 1/2 publish goes: a `$` topic, which `#` does not match (the bridge
/// and wildcard subscribers never see it) and which no restricted account may subscribe to.
const DENIED_TOPIC: &str = "$edgewatch/denied";

/// Packet types a client never sends that rumqttd 0.20's MQTT 5 decoder panics on when they
/// have a body: CONNACK and UNSUBACK (found by `broker/tests/codec_fuzz.rs`).
const V5_UNREACHABLE: [u8; 2] = [2, 11];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_keep_alive() {
        let p = KeepAlivePolicy {
            min_secs: 5,
            max_secs: 600,
        };
        assert_eq!(p.effective(0), 600);
        assert_eq!(p.effective(1), 5);
        assert_eq!(p.effective(60), 60);
        assert_eq!(p.effective(3600), 600);
        let p = KeepAlivePolicy {
            min_secs: 0,
            max_secs: 10,
        };
        assert_eq!(p.effective(1), 1);
    }
}
