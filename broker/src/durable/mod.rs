//! What the broker keeps across a restart of the hub: retained messages and persistent
//! sessions (MQTT 3.1.1 clean session 0; MQTT 5 with a session expiry interval above 0).
//!
//! rumqttd keeps both in memory only. This module records every change as it passes our codec
//! wrapper ([`crate::connect_policy`], through [`DurableConnection`]) into a [`StateStore`] the
//! composition provides (the hub gives it a sled tree of the bridge's store; this crate does not
//! name sled), and puts them back into rumqttd's router at start, before the listeners open
//! ([`Durable::restore`], called by [`crate::Broker::restore_state`]).
//!
//! # What is recorded, and when
//! * **Retained messages**: a retained PUBLISH that passed the retained caps
//!   ([`crate::caps::BrokerCaps::retain`]) is written (topic, payload, QoS); a PUBLISH with an
//!   empty payload, retained or not, clears its topic, as rumqttd does; so does an empty publish
//!   through the in-process publisher. An MQTT 5 message expiry is kept as the time it ends: a
//!   message expired by the next start is not restored, the others with what is left of it.
//!   A CONNECT's last will with retain set (and within the
//!   caps) is written when its connection ends without a DISCONNECT: rumqttd then publishes it.
//!   Not when the broker stops (rumqttd does not publish wills then), and a will with an MQTT 5
//!   delay is written at the end of the connection, not when it fires (if the client comes back
//!   within the delay, rumqttd cancels it and our copy is the stale one until the topic changes).
//!   Changes are recorded in the order the codec sees them; when a client id takes over a live
//!   connection, rumqttd can publish a will after the new connection's first publishes, so the
//!   recorded and the broker's retained message of that topic can differ until it changes again.
//! * **Sessions**: at CONNECT (client id, protocol, expiry), at each SUBSCRIBE the codec passes
//!   (filter and QoS; what rumqttd refuses after that, a malformed filter, closes the
//!   connection anyway) and UNSUBSCRIBE, and the time the connection ends (for the expiry).
//!   At most [`SessionBounds::max_sessions`] sessions (`broker.limits.max_persisted_sessions`)
//!   and [`SessionBounds::max_filters`] filters per session (`max_subscriptions_per_client`)
//!   are kept; past them the session or filter is counted and logged, not persisted (rumqttd
//!   still keeps it until the hub stops).
//!
//! * **Messages queued for offline sessions**: every QoS 1/2 publish a client sends, for each
//!   offline persisted session with a matching filter; delivered by the codec after a restart
//!   (see [`queue`]).
//!
//! # Writes
//! No queue: the codec calls the store on the connection's task. The hub's store is a sled tree,
//! whose insert returns once the change is in sled's memory; sled writes it to disk within
//! about half a second (its flush interval), so a `kill -9` loses at most the changes of that
//! last half second. A failed write is counted and logged; the connection goes on.
//!
//! # Restore
//! See [`restore`]: retained messages are published with retain set through an in-process
//! link (QoS 0: rumqttd's local links cannot publish QoS 1/2), within the retained caps; each
//! session is rebuilt by an in-process link with its client id and clean session false that
//! subscribes to its filters at their QoS and disconnects, which leaves rumqttd's router
//! holding the session as if the client had gone offline.
//!
//! # MQTT 5 session expiry
//! rumqttd 0.20 ignores the Session Expiry Interval: it keeps a Clean Start 0 session forever
//! and keeps no session after a Clean Start 1 connection. Here ([`expiry`]):
//! * Clean Start 1 with an expiry above 0: rumqttd's old session for the client id is
//!   discarded (an in-process link with that client id and clean session true, then a
//!   DISCONNECT) and the CONNECT is handed on with clean session false, so rumqttd keeps the
//!   new session; the CONNACK says session present 0 as it must.
//! * A disconnected session whose expiry has passed (checked every
//!   [`expiry::CHECK_EVERY`]) is discarded the same way and its record deleted; expiry 0
//!   (the default) ends it right after the connection (within that check period).
//! * A DISCONNECT's new session expiry property is not applied (the CONNECT's value is kept).

mod connection;
pub mod expiry;
pub mod queue;
mod record;
pub mod restore;

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

pub use connection::DurableConnection;
pub use record::{Entries, SessionRecord, StateStore};

use crate::caps::BrokerCaps;

/// Opens an in-process link with a client id and a clean-session flag; the error is rumqttd's
/// as text.
pub type SessionLinks = dyn Fn(&str, bool) -> Result<(rumqttd::local::LinkTx, rumqttd::local::LinkRx), String>
    + Send
    + Sync;

/// Bounds on the persisted sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionBounds {
    /// Sessions persisted at most; a new one past it is counted, logged and not persisted.
    pub max_sessions: usize,
    /// Filters persisted per session at most; more are counted, logged and not persisted.
    pub max_filters: usize,
}

impl Default for SessionBounds {
    fn default() -> Self {
        Self {
            max_sessions: 10_000,
            max_filters: 100,
        }
    }
}

/// What was persisted, restored and refused, for `/metrics`.
#[derive(Debug, Default)]
pub struct DurableCounters {
    /// Retained messages restored at start.
    pub retained_restored: AtomicU64,
    /// Persistent sessions restored at start.
    pub sessions_restored: AtomicU64,
    /// Retained messages not restored at start: over a retained cap.
    pub retained_not_restored: AtomicU64,
    /// Sessions not persisted: `max_sessions` reached.
    pub sessions_refused: AtomicU64,
    /// Filters not persisted: `max_filters` per session reached.
    pub filters_refused: AtomicU64,
    /// Sessions ended by their MQTT 5 session expiry.
    pub sessions_expired: AtomicU64,
    /// Store writes that failed.
    pub write_errors: AtomicU64,
    /// Messages for offline sessions not persisted: the session's queue was full.
    pub queued_refused: AtomicU64,
    /// Messages queued before a restart delivered after it (acknowledged).
    pub queued_delivered: AtomicU64,
}

/// One known session: its record and whether a connection holds it now.
#[derive(Debug)]
struct Session {
    record: SessionRecord,
    /// Connections with this client id now (rumqttd takes over; briefly two).
    connected: u32,
    /// When a disconnected session with a finite expiry ends.
    expires: Option<Instant>,
}

/// The state shared by every connection's [`DurableConnection`], one per broker.
pub struct Durable {
    store: OnceLock<Arc<dyn StateStore>>,
    caps: Arc<BrokerCaps>,
    bounds: SessionBounds,
    links: Arc<SessionLinks>,
    /// Sessions by client id. Held while a session is discarded in rumqttd, so a CONNECT with
    /// that client id reaches the router only after the discard.
    sessions: Mutex<HashMap<String, Session>>,
    /// Hashes of the retained topics persisted (for the gauge).
    retained: Mutex<HashSet<u64>>,
    hasher: std::collections::hash_map::RandomState,
    /// Set when the broker stops: connections closed by the stop leave no will behind.
    stopping: AtomicBool,
    /// The session expiry task, once [`crate::Broker::restore_state`] started it.
    expiry: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Messages queued for offline sessions ([`queue`]).
    queues: Mutex<queue::Queues>,
    /// Filters of offline sessions in `queues`' index (read without its lock).
    offline_filters: std::sync::atomic::AtomicUsize,
    /// Connections of persisted sessions now (recent publishes are kept while above 0).
    online: std::sync::atomic::AtomicUsize,
    pub counters: DurableCounters,
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable")
            .field("attached", &self.store.get().is_some())
            .field("bounds", &self.bounds)
            .finish_non_exhaustive()
    }
}

impl Durable {
    pub fn new(caps: Arc<BrokerCaps>, bounds: SessionBounds, links: Arc<SessionLinks>) -> Self {
        Self {
            store: OnceLock::new(),
            caps,
            bounds,
            links,
            sessions: Mutex::default(),
            retained: Mutex::default(),
            hasher: Default::default(),
            stopping: AtomicBool::new(false),
            expiry: Mutex::default(),
            queues: Mutex::default(),
            offline_filters: Default::default(),
            online: Default::default(),
            counters: DurableCounters::default(),
        }
    }

    /// Whether a store is attached (nothing is recorded before).
    pub fn attached(&self) -> bool {
        self.store.get().is_some()
    }

    /// The broker's: `broker.limits.max_persisted_sessions` sessions with at most
    /// `max_subscriptions_per_client` filters each.
    pub(crate) fn for_broker(
        caps: &Arc<BrokerCaps>,
        limits: &crate::config::LimitsConfig,
        links: Arc<SessionLinks>,
    ) -> Arc<Self> {
        let bounds = SessionBounds {
            max_sessions: limits.max_persisted_sessions,
            max_filters: limits.max_subscriptions_per_client,
        };
        Arc::new(Self::new(caps.clone(), bounds, links))
    }

    /// The broker is stopping: connections that end now leave no will behind, and sessions no
    /// longer expire.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(task) = lock(&self.expiry).take() {
            task.abort();
        }
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Records a retained message on `topic` (`payload` not empty), with its MQTT 5 message
    /// expiry interval in seconds if it has one.
    pub fn set_retained(&self, topic: &[u8], payload: &[u8], qos: u8, expiry: Option<u32>) {
        let Some(store) = self.store.get() else {
            return;
        };
        let expires_at = expiry.map(|secs| now_ms().saturating_add(i64::from(secs) * 1000));
        let value = record::retained_value(qos, payload, expires_at);
        self.write(store.put(&record::retained_key(topic), &value));
        lock(&self.retained).insert(self.hasher.hash_one(topic));
    }

    /// Clears the retained message of `topic`, if one is recorded.
    pub fn clear_retained(&self, topic: &[u8]) {
        let Some(store) = self.store.get() else {
            return;
        };
        if lock(&self.retained).remove(&self.hasher.hash_one(topic)) {
            self.write(store.remove(&record::retained_key(topic)));
        }
    }

    /// Writes a session's record.
    fn put_session(&self, client_id: &str, record: &SessionRecord) {
        if let Some(store) = self.store.get() {
            let value = record::session_value(record);
            self.write(store.put(&record::session_key(client_id), &value));
        }
    }

    /// Deletes a session's record.
    fn remove_session(&self, client_id: &str) {
        if let Some(store) = self.store.get() {
            self.write(store.remove(&record::session_key(client_id)));
        }
    }

    fn write(&self, result: Result<(), String>) {
        if let Err(err) = result {
            let n = self.counters.write_errors.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(%err, failures = n, "cannot persist the broker's retained messages or sessions");
            }
        }
    }

    /// Retained messages persisted now.
    pub fn retained_persisted(&self) -> usize {
        lock(&self.retained).len()
    }

    /// Sessions persisted now.
    pub fn sessions_persisted(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// The filters of the persisted session of `client_id` with their QoS, if there is one
    /// (what a reconnection with clean session false finds in rumqttd).
    pub fn session_filters(&self, client_id: &str) -> Option<Vec<(String, u8)>> {
        lock(&self.sessions)
            .get(client_id)
            .map(|s| s.record.filters.clone())
    }

    /// Discards rumqttd's session of `client_id`: an in-process link with that client id and
    /// clean session true takes it over (rumqttd drops the saved state) and disconnects.
    fn discard_in_router(&self, client_id: &str) {
        let result = (self.links)(client_id, true).and_then(|(mut tx, _rx)| {
            let bye = disconnect_packet();
            futures::executor::block_on(tx.send(bye))
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        if let Err(err) = result {
            tracing::warn!(%client_id, %err, "cannot discard an MQTT session in the broker");
        }
    }
}

fn load(c: &AtomicU64) -> f64 {
    c.load(Ordering::Relaxed) as f64
}

/// A DISCONNECT as an in-process link sends it.
fn disconnect_packet() -> rumqttd::protocol::Packet {
    rumqttd::protocol::Packet::Disconnect(
        rumqttd::protocol::Disconnect {
            reason_code: rumqttd::protocol::DisconnectReasonCode::NormalDisconnection,
        },
        None,
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Epoch milliseconds now.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs blocking `f` from async-unaware code on a tokio worker: a multi-threaded runtime's
/// worker hands its other tasks over first; elsewhere it just runs.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl Durable {
    /// The gauges and counters, for the composition to expose in `/metrics`.
    pub fn samples(self: &Arc<Self>) -> Vec<crate::caps::CapSample> {
        type Read = fn(&Durable) -> f64;
        let values: [(&'static str, &'static str, bool, Read); 12] = [
            ("edgewatch_mqtt_retained_persisted", "Retained MQTT messages persisted (restored at the next start).", false, |d| d.retained_persisted() as f64),
            ("edgewatch_mqtt_sessions_persisted", "Persistent MQTT sessions persisted (restored at the next start).", false, |d| d.sessions_persisted() as f64),
            ("edgewatch_mqtt_retained_restored_total", "Retained MQTT messages restored at start.", true, |d| load(&d.counters.retained_restored)),
            ("edgewatch_mqtt_sessions_restored_total", "Persistent MQTT sessions restored at start.", true, |d| load(&d.counters.sessions_restored)),
            ("edgewatch_mqtt_retained_not_restored_total", "Persisted retained MQTT messages not restored at start: over a retained-message or topic cap.", true, |d| load(&d.counters.retained_not_restored)),
            ("edgewatch_mqtt_sessions_not_persisted_total", "Persistent MQTT sessions not persisted: the bound on persisted sessions was reached.", true, |d| load(&d.counters.sessions_refused)),
            ("edgewatch_mqtt_session_filters_not_persisted_total", "MQTT subscriptions of persistent sessions not persisted: over the per-session bound, or over max_filters at restore.", true, |d| load(&d.counters.filters_refused)),
            ("edgewatch_mqtt_sessions_expired_total", "MQTT 5 sessions ended by their session expiry interval.", true, |d| load(&d.counters.sessions_expired)),
            ("edgewatch_mqtt_queued_persisted", "MQTT messages persisted for offline persistent sessions (delivered after a restart).", false, |d| d.queued_persisted() as f64),
            ("edgewatch_mqtt_queued_not_persisted_total", "MQTT messages for offline persistent sessions not persisted: the session's queue was full.", true, |d| load(&d.counters.queued_refused)),
            ("edgewatch_mqtt_queued_delivered_total", "MQTT messages queued before a restart delivered after it.", true, |d| load(&d.counters.queued_delivered)),
            ("edgewatch_mqtt_state_write_errors_total", "Writes of retained messages or sessions to the store that failed.", true, |d| load(&d.counters.write_errors)),
        ];
        values
            .into_iter()
            .map(|(name, help, counter, read)| {
                let d = self.clone();
                crate::caps::CapSample {
                    name,
                    help,
                    counter,
                    read: Box::new(move || read(&d)),
                }
            })
            .collect()
    }
}

impl crate::Broker {
    /// Attaches the store of retained messages and persistent sessions, puts what it holds
    /// back into the router and starts MQTT 5 session expiry (see [`crate::durable`]). Call
    /// after [`crate::Broker::prepare`], before any in-process link and
    /// [`crate::Broker::listen`]; once.
    pub async fn restore_state(
        &mut self,
        store: Arc<dyn StateStore>,
    ) -> Result<restore::Restored, crate::BrokerError> {
        let durable = self.durable.clone();
        let restored = tokio::task::spawn_blocking(move || durable.restore(store))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|reason| crate::BrokerError::Link {
                client_id: "edgewatch-restore".into(),
                reason,
            })?;
        let task = tokio::spawn(expiry::run(self.durable.clone()));
        *lock(&self.durable.expiry) = Some(task);
        Ok(restored)
    }

    /// Retained messages and sessions across restarts: the lookup of a persisted session's
    /// filters ([`Durable::session_filters`]), and the counters for metrics.
    pub fn durable(&self) -> &Arc<Durable> {
        &self.durable
    }
}
