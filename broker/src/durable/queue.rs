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
//! A publish read just before a subscriber's DISCONNECT (on another connection's task) reaches
//! rumqttd's router while the session is still online: rumqttd keeps it for the session, but
//! the offline recording above never saw it. So while any persisted session is online, the
//! QoS 1/2 publishes of the last [`RECENT_WINDOW`] (at most [`RECENT_MAX`] of them, copies of
//! at most [`RECENT_BYTES`] in all) are kept in memory; when a persisted session goes offline,
//! those that match its filters and were read after its last PUBACK/PUBREC (or its CONNECT)
//! are recorded for it, before anything published later. One it did receive and had not
//! acknowledged yet is delivered again after a restart (at least once, as QoS 1 allows).
//!
//! Degradations: a QoS 2 message queued before a restart is delivered at QoS 1 after it
//! (at least once), and the queued messages come before anything rumqttd sends, without the
//! topic aliases or properties of the original publish.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgewatch_protocol::{FilterIndex, TopicFilter};

use super::{lock, record, Durable};

/// Messages recorded per offline session at most.
pub const MAX_QUEUED: usize = 1000;

/// How long a publish is kept for a persisted session that goes offline right after it.
pub const RECENT_WINDOW: Duration = Duration::from_secs(10);
/// Publishes kept for that at most.
pub const RECENT_MAX: usize = 1024;
/// Their topics and payloads in bytes at most.
pub const RECENT_BYTES: usize = 1 << 20;

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
    /// The recent QoS 1/2 publishes while a persisted session is online (oldest first).
    recent: VecDeque<Recent>,
    /// Bytes of topic and payload in `recent`.
    recent_bytes: usize,
}

/// A QoS 1/2 publish read while a persisted session was online.
struct Recent {
    at: Instant,
    topic: Box<str>,
    qos: u8,
    payload: Box<[u8]>,
}

impl Durable {
    /// Whether any persisted session is offline (a publish may be queued): an atomic read,
    /// no lock, on every QoS 1/2 publish.
    pub(super) fn any_offline(&self) -> bool {
        self.offline_filters.load(Ordering::Relaxed) > 0
    }

    /// Whether a persisted session is online (recent publishes are kept for it).
    pub(super) fn any_online(&self) -> bool {
        self.online.load(Ordering::Relaxed) > 0
    }

    /// A persisted session went offline (or was restored): the recent publishes matching
    /// `filters` read after `since` (its last acknowledgement) are recorded for it, and those
    /// matching from now on.
    pub(super) fn went_offline(
        &self,
        client_id: &str,
        filters: &[(String, u8)],
        since: Option<Instant>,
    ) {
        let mut q = lock(&self.queues);
        let id: Arc<str> = Arc::from(client_id);
        let parsed: Vec<(TopicFilter, u8)> = filters
            .iter()
            .filter_map(|(path, qos)| Some((TopicFilter::parse(path).ok()?, *qos)))
            .collect();
        if let (Some(since), Some(store)) = (since, self.store.get()) {
            let missed: Vec<(u8, Box<str>, Box<[u8]>)> = q
                .recent
                .iter()
                .filter(|m| m.at > since)
                .filter_map(|m| {
                    let sub_qos = parsed
                        .iter()
                        .filter(|(f, _)| f.matches(&m.topic))
                        .map(|(_, qos)| *qos)
                        .max()?;
                    Some((m.qos.min(sub_qos), m.topic.clone(), m.payload.clone()))
                })
                .collect();
            for (qos, topic, payload) in missed {
                self.record_for(&mut q, store.as_ref(), &id, qos, topic.as_bytes(), &payload);
            }
        }
        for (f, qos) in parsed {
            q.index.insert(&f, (id.clone(), qos));
        }
        self.offline_filters.store(q.index.len(), Ordering::Relaxed);
    }

    /// Keeps a client's QoS 1/2 publish in memory for a persisted session that goes offline
    /// right after it (only while one is online), and records it for every offline session it
    /// matches: one lock, so a session going offline meanwhile gets it exactly once.
    pub(super) fn published(&self, topic: &[u8], qos: u8, payload: &[u8]) {
        let (Some(store), Ok(topic_str)) = (self.store.get(), std::str::from_utf8(topic)) else {
            return;
        };
        let mut q = lock(&self.queues);
        if self.any_online() {
            q.remember(topic_str, qos, payload);
        }
        if !self.any_offline() {
            return;
        }
        // The highest matching filter QoS per session.
        let mut wanted: HashMap<Arc<str>, u8> = HashMap::new();
        q.index.for_each_match(topic_str, |(id, sub_qos)| {
            let e = wanted.entry(id.clone()).or_insert(0);
            *e = (*e).max(*sub_qos);
        });
        for (id, sub_qos) in wanted {
            self.record_for(
                &mut q,
                store.as_ref(),
                &id,
                qos.min(sub_qos),
                topic,
                payload,
            );
        }
    }

    /// Records one message for session `id`, within [`MAX_QUEUED`].
    fn record_for(
        &self,
        q: &mut Queues,
        store: &dyn record::StateStore,
        id: &Arc<str>,
        qos: u8,
        topic: &[u8],
        payload: &[u8],
    ) {
        let held =
            q.recorded.get(id).map_or(0, VecDeque::len) + q.pending.get(&**id).map_or(0, Vec::len);
        if held >= MAX_QUEUED {
            let n = self.counters.queued_refused.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(client_id = %id, refused = n, max = MAX_QUEUED, "MQTT message for an offline session not persisted: its queue is full (the broker still queues it until the hub stops)");
            }
            return;
        }
        let seq = q.next_seq;
        q.next_seq += 1;
        let key = record::queued_key(id, seq);
        let value = record::queued_value(qos, topic, payload);
        self.write(store.put(&key, &value));
        q.recorded.entry(id.clone()).or_default().push_back(key);
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

impl Queues {
    /// Keeps a copy of a publish, dropping what is older than [`RECENT_WINDOW`] or past
    /// [`RECENT_MAX`] / [`RECENT_BYTES`].
    fn remember(&mut self, topic: &str, qos: u8, payload: &[u8]) {
        let now = Instant::now();
        let size = topic.len() + payload.len();
        while let Some(old) = self.recent.front() {
            let full = self.recent.len() >= RECENT_MAX || self.recent_bytes + size > RECENT_BYTES;
            if !full && now.duration_since(old.at) < RECENT_WINDOW {
                break;
            }
            self.recent_bytes -= old.topic.len() + old.payload.len();
            self.recent.pop_front();
        }
        if size <= RECENT_BYTES {
            self.recent_bytes += size;
            self.recent.push_back(Recent {
                at: now,
                topic: topic.into(),
                qos,
                payload: payload.into(),
            });
        }
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
