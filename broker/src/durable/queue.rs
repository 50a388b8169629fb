//! Messages queued for offline persistent sessions, kept across a restart.
//!
//! rumqttd queues a QoS 1/2 message for an offline persistent session in its in-memory log,
//! which a restart loses and which cannot be read out. So the QoS 1/2 publishes clients send
//! are also recorded here for every offline persisted session with a matching filter (at
//! min(publish QoS, the highest matching filter's QoS)), at most [`MAX_QUEUED`] per session
//! (Mosquitto's `max_queued_messages` default; past it new ones are not recorded, counted in
//! `edgewatch_mqtt_queued_not_persisted_total` and logged). When the session's client comes
//! back:
//! * without a restart in between, rumqttd delivers them itself: the records are deleted;
//! * after a restart, the records made before it are delivered by the codec wrapper right after
//!   the CONNACK ([`QueuedDelivery`]: QoS 1, packet ids above rumqttd's, the client's PUBACKs taken
//!   out before rumqttd sees them) and each is deleted when acknowledged; one not acknowledged
//!   when the connection ends is delivered again at the next reconnection. Those recorded since
//!   the restart are in rumqttd's log again (the restored session subscribed): deleted.
//!
//! Degradations: a QoS 2 message queued before a restart is delivered at QoS 1 after it
//! (at least once), and the queued messages come before anything rumqttd sends, without the
//! topic aliases or properties of the original publish.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use edgewatch_protocol::{FilterIndex, TopicFilter};

use super::{lock, record, Durable};

/// Messages recorded per offline session at most.
pub const MAX_QUEUED: usize = 1000;

/// Packet ids of delivered queued messages: above rumqttd's (1 to 100), below u16::MAX.
const FIRST_PKID: u16 = 1024;
const LAST_PKID: u16 = 65_000;

/// One recorded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Its store key.
    pub key: Vec<u8>,
    pub topic: Bytes,
    pub qos: u8,
    pub payload: Bytes,
}

/// The queues of the offline persisted sessions.
#[derive(Default)]
pub(super) struct Queues {
    /// Filters of the persisted sessions that are offline now → (client id, QoS).
    index: FilterIndex<(Arc<str>, u8)>,
    /// Keys recorded since this start, per session.
    recorded: HashMap<Arc<str>, VecDeque<Vec<u8>>>,
    /// Records made before this start, per session, delivered by the wrapper when it comes back.
    pending: HashMap<String, Vec<Queued>>,
    next_seq: u64,
}

impl Durable {
    /// Whether any persisted session is offline (a publish may be queued): an atomic read,
    /// no lock, on every QoS 1/2 publish.
    pub(super) fn any_offline(&self) -> bool {
        self.offline_filters.load(Ordering::Relaxed) > 0
    }

    /// A persisted session went offline (or was restored): publishes matching `filters` are
    /// recorded for it from now on.
    pub(super) fn went_offline(&self, client_id: &str, filters: &[(String, u8)]) {
        let mut q = lock(&self.queues);
        let id: Arc<str> = Arc::from(client_id);
        for (path, qos) in filters {
            if let Ok(f) = TopicFilter::parse(path) {
                q.index.insert(&f, (id.clone(), *qos));
            }
        }
        self.offline_filters.store(q.index.len(), Ordering::Relaxed);
    }

    /// A persisted session's client is back with `filters`: nothing more is recorded for it,
    /// the records rumqttd delivers itself are deleted, and those from before this start are
    /// returned for the wrapper to deliver.
    pub(super) fn came_back(&self, client_id: &str, filters: &[(String, u8)]) -> Vec<Queued> {
        let mut q = lock(&self.queues);
        let id: Arc<str> = Arc::from(client_id);
        for (path, qos) in filters {
            if let Ok(f) = TopicFilter::parse(path) {
                q.index.remove(&f, &(id.clone(), *qos));
            }
        }
        self.offline_filters.store(q.index.len(), Ordering::Relaxed);
        let recorded = q.recorded.remove(client_id).unwrap_or_default();
        let pending = q.pending.remove(client_id).unwrap_or_default();
        drop(q);
        if let Some(store) = self.store.get() {
            for key in recorded {
                self.write(store.remove(&key));
            }
        }
        pending
    }

    /// Deletes every record of a session that ended (clean session, expiry, not restored).
    pub(super) fn drop_queue(&self, client_id: &str, filters: &[(String, u8)]) {
        let back = self.came_back(client_id, filters);
        if let Some(store) = self.store.get() {
            for m in back {
                self.write(store.remove(&m.key));
            }
        }
    }

    /// Queued messages delivered but not acknowledged when the connection ended: delivered
    /// again at the next reconnection.
    pub fn not_acknowledged(&self, client_id: &str, messages: Vec<Queued>) {
        if !messages.is_empty() {
            let mut q = lock(&self.queues);
            let pending = q.pending.entry(client_id.to_owned()).or_default();
            let mut all = messages;
            all.append(pending);
            *pending = all;
        }
    }

    /// A queued message the client acknowledged.
    pub fn acknowledged(&self, message: &Queued) {
        if let Some(store) = self.store.get() {
            self.write(store.remove(&message.key));
        }
    }

    /// Records a client's QoS 1/2 publish for every offline session it matches.
    pub(super) fn enqueue(&self, topic: &[u8], qos: u8, payload: &[u8]) {
        let (Some(store), Ok(topic_str)) = (self.store.get(), std::str::from_utf8(topic)) else {
            return;
        };
        let mut q = lock(&self.queues);
        // The highest matching filter QoS per session.
        let mut wanted: HashMap<Arc<str>, u8> = HashMap::new();
        q.index.for_each_match(topic_str, |(id, sub_qos)| {
            let e = wanted.entry(id.clone()).or_insert(0);
            *e = (*e).max(*sub_qos);
        });
        for (id, sub_qos) in wanted {
            let held = q.recorded.get(&id).map_or(0, VecDeque::len)
                + q.pending.get(&*id).map_or(0, Vec::len);
            if held >= MAX_QUEUED {
                let n = self.counters.queued_refused.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(client_id = %id, refused = n, max = MAX_QUEUED, "MQTT message for an offline session not persisted: its queue is full (the broker still queues it until the hub stops)");
                }
                continue;
            }
            let seq = q.next_seq;
            q.next_seq += 1;
            let key = record::queued_key(&id, seq);
            let value = record::queued_value(qos.min(sub_qos), topic, payload);
            self.write(store.put(&key, &value));
            q.recorded.entry(id).or_default().push_back(key);
        }
    }

    /// Takes the records read at start: (client id, sequence, message).
    pub(super) fn restore_queued(&self, entries: Vec<(String, u64, Queued)>) {
        let mut q = lock(&self.queues);
        let mut entries = entries;
        entries.sort_by_key(|(_, seq, _)| *seq);
        for (client_id, seq, message) in entries {
            q.next_seq = q.next_seq.max(seq + 1);
            q.pending.entry(client_id).or_default().push(message);
        }
    }

    /// Records read at start whose session was not restored: deleted.
    pub(super) fn drop_orphans(&self) -> usize {
        let sessions = lock(&self.sessions);
        let mut q = lock(&self.queues);
        let orphans: Vec<String> = q
            .pending
            .keys()
            .filter(|id| !sessions.contains_key(*id))
            .cloned()
            .collect();
        let mut n = 0;
        for id in orphans {
            for m in q.pending.remove(&id).unwrap_or_default() {
                if let Some(store) = self.store.get() {
                    self.write(store.remove(&m.key));
                }
                n += 1;
            }
        }
        n
    }

    /// Messages recorded for offline sessions now.
    pub fn queued_persisted(&self) -> usize {
        let q = lock(&self.queues);
        q.recorded.values().map(VecDeque::len).sum::<usize>()
            + q.pending.values().map(Vec::len).sum::<usize>()
    }
}

/// The queued messages one connection delivers after its CONNACK, and those waiting for the
/// client's PUBACK.
#[derive(Debug, Default)]
pub struct QueuedDelivery {
    /// To write after the CONNACK.
    due: Mutex<Vec<Queued>>,
    /// Written, by packet id, waiting for the PUBACK.
    sent: Mutex<HashMap<u16, Queued>>,
}

impl QueuedDelivery {
    /// Queued messages to write after the CONNACK.
    pub fn set_due(&self, messages: Vec<Queued>) {
        *lock(&self.due) = messages;
    }

    /// Writes the due messages (after a CONNACK that accepted the connection): QoS 1 PUBLISH
    /// bytes with packet ids of their own.
    pub fn write_due(&self, v5: bool, out: &mut bytes::BytesMut) {
        let due = std::mem::take(&mut *lock(&self.due));
        let mut sent = lock(&self.sent);
        let mut pkid = FIRST_PKID;
        for m in due {
            while sent.contains_key(&pkid) {
                pkid += 1;
            }
            if pkid > LAST_PKID {
                break;
            }
            crate::wire::write_qos1_publish(&m.topic, pkid, &m.payload, v5, out);
            sent.insert(pkid, m);
            pkid += 1;
        }
    }

    /// The message a PUBACK with `pkid` acknowledges, if it is one of ours (the PUBACK is then
    /// not handed to rumqttd).
    pub fn acknowledged(&self, pkid: u16) -> Option<Queued> {
        if pkid < FIRST_PKID {
            return None;
        }
        lock(&self.sent).remove(&pkid)
    }

    /// What was not acknowledged (the connection ended): due and sent.
    pub fn unacknowledged(&self) -> Vec<Queued> {
        let mut all = std::mem::take(&mut *lock(&self.due));
        let mut sent: Vec<(u16, Queued)> = lock(&self.sent).drain().collect();
        sent.sort_by_key(|(pkid, _)| *pkid);
        let mut out: Vec<Queued> = sent.into_iter().map(|(_, m)| m).collect();
        out.append(&mut all);
        out
    }
}
