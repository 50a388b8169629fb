//! One MQTT connection's part in [`Durable`]: the codec wrapper hands it every packet it passes
//! to rumqttd, and dropping it (the connection's end) records the last will and the time the
//! session went offline.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttd::protocol::Packet;

use super::{lock, now_ms, Durable, Session, SessionRecord};
use crate::client_limits::ClientLimits;

/// One connection's view of [`Durable`] (fresh per connection, like the codec).
#[derive(Debug)]
pub struct DurableConnection {
    shared: Arc<Durable>,
    /// The client id of this connection's tracked session.
    session: Option<String>,
    /// Its retained last will (topic, payload, QoS), until a DISCONNECT discards it.
    will: Option<(Bytes, Bytes, u8)>,
}

impl Clone for DurableConnection {
    /// A new connection: the shared state, nothing of this one.
    fn clone(&self) -> Self {
        Self::new(self.shared.clone())
    }
}

impl Drop for DurableConnection {
    fn drop(&mut self) {
        if let Some((topic, payload, qos)) = self.will.take() {
            // The connection ended without a DISCONNECT: rumqttd publishes the will, unless the
            // whole broker is stopping (its connection tasks are dropped before that).
            if !self.shared.stopping() {
                match payload.is_empty() {
                    true => self.shared.clear_retained(&topic),
                    false => self.shared.set_retained(&topic, &payload, qos),
                }
            }
        }
        if let Some(client_id) = self.session.take() {
            self.shared.disconnected(&client_id);
        }
    }
}

/// What [`Durable::connect`] decided for a CONNECT.
#[derive(Debug, Default)]
struct Connected {
    /// The session is tracked (persisted and expired here).
    tracked: bool,
    /// Hand the CONNECT on with clean session false (MQTT 5 Clean Start 1 with an expiry: the
    /// old session is discarded already).
    keep_session: bool,
    /// Filters of the session rumqttd resumes.
    resumed: Vec<String>,
}

impl DurableConnection {
    pub fn new(shared: Arc<Durable>) -> Self {
        Self {
            shared,
            session: None,
            will: None,
        }
    }

    /// Records what `packet` (as handed to rumqttd) changes; `header` is its first byte.
    pub fn packet(
        &mut self,
        packet: &mut Packet,
        header: u8,
        v5: bool,
        limits: Option<&mut ClientLimits>,
    ) {
        if !self.shared.attached() {
            return;
        }
        match packet {
            Packet::Connect(connect, props, will, _, _) => {
                self.will = will
                    .as_ref()
                    .filter(|w| w.retain)
                    .map(|w| (w.topic.clone(), w.message.clone(), w.qos as u8));
                if connect.client_id.is_empty() || self.session.is_some() {
                    return; // an id rumqttd assigns cannot be resumed
                }
                let expiry = v5.then(|| props.as_ref().and_then(|p| p.session_expiry_interval));
                let outcome =
                    self.shared
                        .connect(&connect.client_id, connect.clean_session, expiry);
                if outcome.keep_session {
                    connect.clean_session = false;
                }
                if let (Some(limits), false) = (limits, outcome.resumed.is_empty()) {
                    limits.seed_subscriptions(outcome.resumed);
                }
                if outcome.tracked {
                    self.session = Some(connect.client_id.clone());
                }
            }
            Packet::Publish(publish, props) => {
                let alias = props.as_ref().and_then(|p| p.topic_alias);
                let topic = match (publish.topic.is_empty(), alias, limits) {
                    (true, Some(alias), Some(limits)) => limits.alias_topic(alias),
                    _ => Some(publish.topic.clone()),
                };
                let Some(topic) = topic.filter(|t| !t.is_empty()) else {
                    return;
                };
                if publish.payload.is_empty() {
                    self.shared.clear_retained(&topic);
                } else if publish.retain {
                    let qos = (header >> 1) & 0b11;
                    self.shared.set_retained(&topic, &publish.payload, qos);
                }
            }
            Packet::Subscribe(sub, _) => {
                if let Some(client_id) = &self.session {
                    let filters = sub.filters.iter().map(|f| (f.path.clone(), f.qos as u8));
                    self.shared.subscribed(client_id, filters.collect());
                }
            }
            Packet::Unsubscribe(unsub, _) => {
                if let Some(client_id) = &self.session {
                    self.shared.unsubscribed(client_id, &unsub.filters);
                }
            }
            Packet::Disconnect(..) => self.closed(),
            _ => {}
        }
    }

    /// The connection ends with a DISCONNECT (the client's or ours): rumqttd discards the will.
    pub fn closed(&mut self) {
        self.will = None;
    }
}

/// MQTT 5's "never expires".
const NEVER: u32 = u32::MAX;

impl Durable {
    /// A CONNECT with `client_id`; `expiry`: `None` for MQTT 3.1.1, else the MQTT 5 Session
    /// Expiry Interval (absent: 0).
    fn connect(&self, client_id: &str, clean: bool, expiry: Option<Option<u32>>) -> Connected {
        let (v5, expiry) = match expiry {
            None => (false, None),
            Some(e) => (true, Some(e.unwrap_or(0))),
        };
        let persistent = match expiry {
            None => !clean,
            Some(secs) => secs > 0 || !clean,
        };
        let mut sessions = lock(&self.sessions);
        if !persistent {
            // rumqttd starts a clean session and forgets the old one.
            if sessions.remove(client_id).is_some() {
                self.remove_session(client_id);
            }
            return Connected::default();
        }
        let known = sessions.contains_key(client_id);
        if !known && sessions.len() >= self.bounds.max_sessions {
            let n = self
                .counters
                .sessions_refused
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            if n.is_power_of_two() {
                tracing::warn!(%client_id, refused = n, max = self.bounds.max_sessions, "MQTT session not persisted: the persisted-session bound is reached (it lasts until the hub stops)");
            }
            return Connected::default();
        }
        let keep_session = clean; // MQTT 5 Clean Start 1 with an expiry above 0
        if keep_session {
            super::blocking(|| self.discard_in_router(client_id));
            if let Some(old) = sessions.get_mut(client_id) {
                old.record.filters.clear();
            }
        }
        let record = SessionRecord {
            v5,
            expiry_secs: expiry.filter(|s| *s != NEVER),
            disconnected_at_ms: None,
            filters: Vec::new(),
        };
        let session = sessions.entry(client_id.to_owned()).or_insert(Session {
            record,
            connected: 0,
            expires: None,
        });
        session.connected += 1;
        session.expires = None;
        session.record.v5 = v5;
        session.record.expiry_secs = expiry.filter(|s| *s != NEVER);
        session.record.disconnected_at_ms = None;
        let resumed = session.record.filters.iter().map(|f| f.0.clone()).collect();
        self.put_session(client_id, &session.record);
        Connected {
            tracked: true,
            keep_session,
            resumed,
        }
    }

    /// A tracked session's SUBSCRIBE, as handed to rumqttd.
    fn subscribed(&self, client_id: &str, filters: Vec<(String, u8)>) {
        let mut sessions = lock(&self.sessions);
        let Some(session) = sessions.get_mut(client_id) else {
            return;
        };
        let held = &mut session.record.filters;
        for (path, qos) in filters {
            if let Some(f) = held.iter_mut().find(|f| f.0 == path) {
                f.1 = qos;
            } else if held.len() < self.bounds.max_filters {
                held.push((path, qos));
            } else {
                let n = self
                    .counters
                    .filters_refused
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                if n.is_power_of_two() {
                    tracing::warn!(%client_id, filter = %path, refused = n, "MQTT subscription not persisted: the session has the most filters persisted");
                }
            }
        }
        self.put_session(client_id, &session.record);
    }

    /// A tracked session's UNSUBSCRIBE.
    fn unsubscribed(&self, client_id: &str, filters: &[String]) {
        let mut sessions = lock(&self.sessions);
        if let Some(session) = sessions.get_mut(client_id) {
            session.record.filters.retain(|f| !filters.contains(&f.0));
            self.put_session(client_id, &session.record);
        }
    }

    /// A tracked session's connection ended.
    fn disconnected(&self, client_id: &str) {
        let mut sessions = lock(&self.sessions);
        let Some(session) = sessions.get_mut(client_id) else {
            return;
        };
        session.connected = session.connected.saturating_sub(1);
        if session.connected > 0 {
            return;
        }
        session.record.disconnected_at_ms = Some(now_ms());
        session.expires = session
            .record
            .expiry_secs
            .filter(|_| session.record.v5)
            .map(|secs| Instant::now() + Duration::from_secs(u64::from(secs)));
        self.put_session(client_id, &session.record);
    }
}
