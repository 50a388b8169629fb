//! One MQTT connection's part in [`Durable`]: the codec wrapper hands it every packet it passes
//! to rumqttd, and dropping it (the connection's end) records the last will and the time the
//! session went offline.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttd::protocol::{Packet, Publish, PublishProperties};

use super::queue::{Queued, QueuedDelivery};
use super::{lock, now_ms, Durable, Session, SessionRecord};
use crate::client_limits::ClientLimits;

/// One connection's view of [`Durable`] (fresh per connection, like the codec).
#[derive(Debug)]
pub struct DurableConnection {
    shared: Arc<Durable>,
    /// The client id of this connection's tracked session.
    session: Option<String>,
    /// Its retained last will (topic, payload, QoS, message expiry), until a DISCONNECT
    /// discards it.
    will: Option<(Bytes, Bytes, u8, Option<u32>)>,
    /// Messages queued for its session before a restart, delivered after the CONNACK.
    queued: QueuedDelivery,
    /// When the client last acknowledged a message (PUBACK, PUBREC) or connected: the recent
    /// publishes after it are recorded for the session when it goes offline ([`super::queue`]).
    last_ack: Option<Instant>,
}

impl Clone for DurableConnection {
    /// A new connection: the shared state, nothing of this one.
    fn clone(&self) -> Self {
        Self::new(self.shared.clone())
    }
}

impl Drop for DurableConnection {
    fn drop(&mut self) {
        if let Some((topic, payload, qos, expiry)) = self.will.take() {
            // The connection ended without a DISCONNECT: rumqttd publishes the will, unless the
            // whole broker is stopping (its connection tasks are dropped before that).
            if !self.shared.stopping() {
                match payload.is_empty() {
                    true => self.shared.clear_retained(&topic),
                    false => self.shared.set_retained(&topic, &payload, qos, expiry),
                }
            }
        }
        self.end_session();
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
    /// Messages queued for it before a restart.
    due: Vec<Queued>,
}

impl DurableConnection {
    pub fn new(shared: Arc<Durable>) -> Self {
        Self {
            shared,
            session: None,
            will: None,
            queued: QueuedDelivery::default(),
            last_ack: None,
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
            Packet::Connect(connect, props, will, will_props, _) => {
                let expiry = will_props.as_ref().and_then(|p| p.message_expiry_interval);
                self.will = will
                    .as_ref()
                    .filter(|w| w.retain)
                    .map(|w| (w.topic.clone(), w.message.clone(), w.qos as u8, expiry));
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
                    self.last_ack = Some(Instant::now());
                }
                self.queued.set_due(outcome.due);
            }
            Packet::Publish(publish, _)
                if !publish.retain && !publish.payload.is_empty() && (header >> 1) & 0b11 == 0 => {}
            Packet::Publish(publish, props) => {
                self.publish(publish, props.as_ref(), header, limits)
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
            Packet::PubAck(..) | Packet::PubRec(..) if self.session.is_some() => {
                self.last_ack = Some(Instant::now());
            }
            Packet::Disconnect(..) => {
                self.closed();
                // Offline from the DISCONNECT on, not from the end of the connection's task: a
                // publish read on another connection right after it is queued for the session
                // (as rumqttd's router, which has the DISCONNECT by then, queues it).
                self.end_session();
            }
            _ => {}
        }
    }

    /// A retained, empty or QoS 1/2 publish.
    fn publish(
        &self,
        publish: &Publish,
        props: Option<&PublishProperties>,
        header: u8,
        limits: Option<&mut ClientLimits>,
    ) {
        let alias = props.and_then(|p| p.topic_alias);
        let topic = match (publish.topic.is_empty(), alias, limits) {
            (true, Some(alias), Some(limits)) => limits.alias_topic(alias),
            _ => Some(publish.topic.clone()),
        };
        let Some(topic) = topic.filter(|t| !t.is_empty()) else {
            return;
        };
        let qos = (header >> 1) & 0b11;
        if qos > 0 && (self.shared.any_offline() || self.shared.any_online()) {
            self.shared.published(&topic, qos, &publish.payload);
        }
        if publish.payload.is_empty() {
            self.shared.clear_retained(&topic);
        } else if publish.retain {
            let expiry = props.and_then(|p| p.message_expiry_interval);
            self.shared
                .set_retained(&topic, &publish.payload, qos, expiry);
        }
    }

    /// Writes the messages queued for this session before a restart, after a CONNACK that
    /// accepted the connection (see [`super::queue`]).
    pub fn after_connack(&self, v5: bool, out: &mut bytes::BytesMut) {
        self.queued.write_due(v5, out);
    }

    /// Whether a PUBACK with `pkid` is the client's for one of those messages (it is not
    /// rumqttd's to see).
    pub fn queued_ack(&self, pkid: u16) -> bool {
        let Some(message) = self.queued.acknowledged(pkid) else {
            return false;
        };
        self.shared.acknowledged(&message);
        self.shared
            .counters
            .queued_delivered
            .fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The session's connection ended: what was delivered from its queue and not acknowledged
    /// goes back to it, and it is offline.
    fn end_session(&mut self) {
        if let Some(client_id) = self.session.take() {
            let unacknowledged = self.queued.unacknowledged();
            self.shared.not_acknowledged(&client_id, unacknowledged);
            self.shared.disconnected(&client_id, self.last_ack.take());
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
            if let Some(old) = sessions.remove(client_id) {
                self.drop_queue(client_id, &old.record.filters);
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
                self.drop_queue(client_id, &old.record.filters);
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
        let due = match session.connected {
            0 => self.came_back(client_id, &session.record.filters),
            _ => Vec::new(),
        };
        session.connected += 1;
        self.online.fetch_add(1, Ordering::Relaxed);
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
            due,
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

    /// A tracked session's connection ended; `since`: the client's last acknowledgement.
    fn disconnected(&self, client_id: &str, since: Option<Instant>) {
        let mut sessions = lock(&self.sessions);
        let Some(session) = sessions.get_mut(client_id) else {
            self.online.fetch_sub(1, Ordering::Relaxed);
            return;
        };
        session.connected = session.connected.saturating_sub(1);
        if session.connected > 0 {
            self.online.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        session.record.disconnected_at_ms = Some(now_ms());
        session.expires = session
            .record
            .expiry_secs
            .filter(|_| session.record.v5)
            .map(|secs| Instant::now() + Duration::from_secs(u64::from(secs)));
        self.put_session(client_id, &session.record);
        // Offline (and queued for) before it stops counting as online: a publish read
        // meanwhile is remembered or recorded, never neither.
        self.went_offline(client_id, &session.record.filters, since);
        self.online.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use rumqttd::protocol::{
        Connect, Disconnect, DisconnectReasonCode, Filter, LastWill, PubAck, PubAckReason, Publish,
        QoS, RetainForwardRule, Subscribe, Unsubscribe,
    };

    use super::super::record::{self, Entry};
    use super::super::SessionBounds;
    use super::*;
    use crate::caps::{BrokerCaps, Caps};
    use crate::config::LimitsConfig;

    #[derive(Default)]
    struct MemoryStore(Mutex<BTreeMap<Vec<u8>, Vec<u8>>>);

    impl super::super::StateStore for MemoryStore {
        fn put(&self, key: &[u8], value: &[u8]) -> Result<(), String> {
            self.0.lock().unwrap().insert(key.to_vec(), value.to_vec());
            Ok(())
        }
        fn remove(&self, key: &[u8]) -> Result<(), String> {
            self.0.lock().unwrap().remove(key);
            Ok(())
        }
        fn entries(&self) -> Result<super::super::Entries, String> {
            Ok(self.0.lock().unwrap().clone().into_iter().collect())
        }
    }

    impl MemoryStore {
        fn read(&self) -> Vec<Entry> {
            let entries = self.0.lock().unwrap().clone();
            entries
                .iter()
                .filter_map(|(k, v)| record::read(k, v))
                .collect()
        }
    }

    fn durable(bounds: SessionBounds) -> (Arc<Durable>, Arc<MemoryStore>) {
        let caps = Arc::new(BrokerCaps::new(Caps::from(&LimitsConfig::default())));
        // No router here: a discard fails and is logged.
        let links: Arc<super::super::SessionLinks> = Arc::new(|_, _| Err("no router".into()));
        let durable = Arc::new(Durable::new(caps.clone(), bounds, links));
        let store = Arc::new(MemoryStore::default());
        let attached: Arc<dyn super::super::StateStore> = store.clone();
        assert!(durable.store.set(attached).is_ok());
        (durable, store)
    }

    fn connect(id: &str, clean: bool, will: Option<LastWill>) -> Packet {
        let connect = Connect {
            keep_alive: 30,
            client_id: id.into(),
            clean_session: clean,
        };
        Packet::Connect(connect, None, will, None, None)
    }

    fn subscribe(paths: &[&str]) -> Packet {
        let filters = paths
            .iter()
            .map(|p| Filter {
                path: (*p).into(),
                qos: QoS::AtLeastOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: RetainForwardRule::OnEverySubscribe,
            })
            .collect();
        Packet::Subscribe(Subscribe { pkid: 1, filters }, None)
    }

    fn session(store: &MemoryStore, id: &str) -> Option<SessionRecord> {
        store.read().into_iter().find_map(|e| match e {
            Entry::Session(i, r) if i == id => Some(r),
            _ => None,
        })
    }

    #[test]
    fn sessions_are_bounded_resumed_seeded_and_ended_by_a_clean_session() {
        let bounds = SessionBounds {
            max_sessions: 1,
            max_filters: 2,
        };
        let (shared, store) = durable(bounds);
        let mut a = DurableConnection::new(shared.clone());
        a.packet(&mut connect("c1", false, None), 0x10, false, None);
        a.packet(&mut subscribe(&["a/1", "a/2", "a/3"]), 0x82, false, None);
        let record = session(&store, "c1").unwrap();
        assert_eq!(
            record.filters,
            [("a/1".to_owned(), 1), ("a/2".to_owned(), 1)]
        );
        assert_eq!(shared.counters.filters_refused.load(Ordering::Relaxed), 1);

        let mut b = DurableConnection::new(shared.clone());
        b.packet(&mut connect("c2", false, None), 0x10, false, None);
        assert!(session(&store, "c2").is_none(), "over max_sessions");
        assert_eq!(shared.counters.sessions_refused.load(Ordering::Relaxed), 1);

        drop(a);
        assert!(session(&store, "c1").unwrap().disconnected_at_ms.is_some());
        let caps = Arc::new(BrokerCaps::new(Caps::from(&LimitsConfig::default())));
        let mut limits = ClientLimits::new(caps);
        let mut c = DurableConnection::new(shared.clone());
        c.packet(
            &mut connect("c1", false, None),
            0x10,
            false,
            Some(&mut limits),
        );
        assert!(limits.holds_filter("a/1") && limits.holds_filter("a/2"));
        assert_eq!(shared.session_filters("c1").map(|f| f.len()), Some(2));
        let unsub = Unsubscribe {
            pkid: 2,
            filters: vec!["a/1".into()],
        };
        c.packet(&mut Packet::Unsubscribe(unsub, None), 0xa2, false, None);
        assert_eq!(session(&store, "c1").unwrap().filters.len(), 1);
        assert!(session(&store, "c1").unwrap().disconnected_at_ms.is_none());

        let mut d = DurableConnection::new(shared.clone());
        d.packet(&mut connect("c1", true, None), 0x10, false, None);
        assert!(session(&store, "c1").is_none(), "a clean session ends it");
        assert_eq!(shared.sessions_persisted(), 0);
    }

    #[test]
    fn retained_publishes_and_wills_are_recorded() {
        let (shared, store) = durable(SessionBounds::default());
        let retained = |store: &MemoryStore| -> Vec<(String, String)> {
            let entries = store.read().into_iter();
            entries
                .filter_map(|e| match e {
                    Entry::Retained(t, _, p, _) => {
                        Some((String::from_utf8(t).unwrap(), String::from_utf8(p).unwrap()))
                    }
                    _ => None,
                })
                .collect()
        };
        let mut c = DurableConnection::new(shared.clone());
        let publish = |topic: &'static str, payload: &'static str, retain: bool| {
            Packet::Publish(Publish::new(topic, payload, retain), None)
        };
        c.packet(&mut publish("t/1", "x", true), 0x33, false, None);
        c.packet(&mut publish("t/2", "y", false), 0x32, false, None);
        assert_eq!(retained(&store), [("t/1".into(), "x".into())]);
        c.packet(&mut publish("t/1", "", false), 0x30, false, None);
        assert!(retained(&store).is_empty(), "an empty payload clears");

        let will = |topic: &str| {
            let will = LastWill {
                topic: Bytes::copy_from_slice(topic.as_bytes()),
                message: Bytes::from_static(b"offline"),
                qos: QoS::AtLeastOnce,
                retain: true,
            };
            connect("dev", true, Some(will))
        };
        // Ended without DISCONNECT: the will is published, and so recorded.
        let mut d = DurableConnection::new(shared.clone());
        d.packet(&mut will("s/d1/status"), 0x10, false, None);
        drop(d);
        // A DISCONNECT discards it.
        let mut d = DurableConnection::new(shared.clone());
        d.packet(&mut will("s/d2/status"), 0x10, false, None);
        d.closed();
        drop(d);
        // The broker's stop publishes no will.
        let mut d = DurableConnection::new(shared.clone());
        d.packet(&mut will("s/d3/status"), 0x10, false, None);
        shared.stop();
        drop(d);
        assert_eq!(retained(&store), [("s/d1/status".into(), "offline".into())]);
        assert_eq!(shared.retained_persisted(), 1);
    }
    #[test]
    fn a_publish_read_just_before_the_disconnect_is_queued_for_the_session() {
        let (shared, store) = durable(SessionBounds::default());
        let queued = |store: &MemoryStore| -> Vec<String> {
            let mut entries: Vec<(u64, String)> = store
                .read()
                .into_iter()
                .filter_map(|e| match e {
                    Entry::Queued(id, seq, m) if id == "sub" => {
                        Some((seq, String::from_utf8(m.payload.to_vec()).unwrap()))
                    }
                    _ => None,
                })
                .collect();
            entries.sort();
            entries.into_iter().map(|(_, p)| p).collect()
        };
        let mut sub = DurableConnection::new(shared.clone());
        sub.packet(&mut connect("sub", false, None), 0x10, false, None);
        sub.packet(&mut subscribe(&["t/#"]), 0x82, false, None);
        let mut publisher = DurableConnection::new(shared.clone());
        let mut publish = |payload: &'static str| {
            let mut packet = Packet::Publish(Publish::new("t/a", payload, false), None);
            publisher.packet(&mut packet, 0x32, false, None);
        };
        publish("acknowledged");
        let ack = PubAck {
            pkid: 1,
            reason: PubAckReason::Success,
        };
        sub.packet(&mut Packet::PubAck(ack, None), 0x40, false, None);
        // Read on the publisher's connection before the subscriber's DISCONNECT was: rumqttd
        // routed it to the session while online, the offline recording did not see it.
        publish("raced the disconnect");
        sub.packet(
            &mut Packet::Disconnect(
                Disconnect {
                    reason_code: DisconnectReasonCode::NormalDisconnection,
                },
                None,
            ),
            0xe0,
            false,
            None,
        );
        publish("while offline");
        assert_eq!(queued(&store), ["raced the disconnect", "while offline"]);
        assert_eq!(shared.queued_persisted(), 2);

        // Back without a restart: rumqttd delivers them itself, the records go.
        let mut back = DurableConnection::new(shared.clone());
        back.packet(&mut connect("sub", false, None), 0x10, false, None);
        assert!(queued(&store).is_empty());
        drop(back);
        assert_eq!(shared.online.load(Ordering::Relaxed), 0);
    }
}
