//! Putting the persisted state back into rumqttd's router at start, before any device can
//! connect ([`Durable::restore`]).
//!
//! * Retained messages: published with retain set through one in-process link, within the
//!   retained caps and the topic caps of [`crate::caps`] (a message over them now, the caps
//!   having been lowered, is counted in `retained_not_restored` and deleted). They come back
//!   at QoS 0 (rumqttd's local links cannot publish QoS 1/2; its `Publish` keeps the QoS
//!   private), so a subscriber gets them at QoS 0 whatever it asked for. One with an MQTT 5
//!   message expiry comes back with what is left of it, or not at all once it has passed.
//! * Sessions: for each, an in-process link with its client id and clean session false
//!   subscribes to its filters at their QoS and sends DISCONNECT in the same batch; rumqttd's
//!   router then keeps the session in its graveyard, as for a client gone offline. A client
//!   reconnecting with clean session false gets session present 1 and what was published to
//!   its filters since the restore. Filters count against `max_filters` (over it: not
//!   restored, counted in the persisted-filter refusals). MQTT 5 sessions whose expiry passed
//!   while the hub was down are deleted; the others expire counting from when their connection
//!   ended, or from the restore when that was not recorded (the hub was killed while they were
//!   connected; or stopped: the broker's connection tasks end in the background and their last
//!   writes can come after the store's final flush).
//!
//! Sessions are restored after the retained messages, so a session's subscriptions get the
//! matching retained messages (rumqttd sends them on a new subscription), once, at the
//! client's first reconnection: like a client that subscribes again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttd::protocol::{Filter, Packet, Publish, PublishProperties, RetainForwardRule, Subscribe};

use super::record::{self, Entry, SessionRecord, StateStore};
use super::{lock, now_ms, Durable, Session};
use crate::caps::filter_within_bounds;

/// What [`Durable::restore`] put back and left out.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Retained messages published.
    pub retained: usize,
    /// Sessions rebuilt.
    pub sessions: usize,
    /// Entries deleted: unreadable, over a cap now, or expired sessions.
    pub dropped: usize,
}

/// A retained message as stored: topic, QoS, payload, when it expires (ms since the epoch).
type RetainedEntry = (Vec<u8>, u8, Vec<u8>, Option<i64>);

/// The client id of the link that publishes the retained messages.
const RESTORE_CLIENT: &str = "edgewatch-restore";

impl Durable {
    /// Attaches `store` and puts its retained messages and sessions back into the router.
    /// Blocking (waits for the router); once per broker; call before the listeners open.
    pub fn restore(&self, store: Arc<dyn StateStore>) -> Result<Restored, String> {
        let mut retained = Vec::new();
        let mut sessions = Vec::new();
        let mut queued = Vec::new();
        let mut out = Restored::default();
        for (key, value) in store.entries()? {
            match record::read(&key, &value) {
                Some(Entry::Retained(topic, qos, payload, expires)) => {
                    retained.push((topic, qos, payload, expires))
                }
                Some(Entry::Session(id, record)) => sessions.push((id, record)),
                Some(Entry::Queued(id, seq, message)) => queued.push((id, seq, message)),
                None => {
                    tracing::warn!(key = %String::from_utf8_lossy(&key), "unreadable broker state entry deleted");
                    store.remove(&key)?;
                    out.dropped += 1;
                }
            }
        }
        if self.store.set(store).is_err() {
            return Err("the broker's state store is attached already".into());
        }
        self.restore_retained(retained, &mut out)?;
        self.restore_sessions(sessions, &mut out)?;
        self.restore_queued(queued);
        out.dropped += self.drop_orphans();
        Ok(out)
    }

    fn restore_retained(
        &self,
        retained: Vec<RetainedEntry>,
        out: &mut Restored,
    ) -> Result<(), String> {
        let mut packets = Vec::new();
        let now = now_ms();
        for (topic, qos, payload, expires) in retained {
            // Seconds left of an MQTT 5 message expiry (rumqttd counts whole seconds).
            let left = expires.map(|at| u32::try_from((at - now) / 1000).unwrap_or(0));
            if left == Some(0) {
                self.write(self.store()?.remove(&record::retained_key(&topic)));
                out.dropped += 1;
                continue;
            }
            let fits = self.caps.topic_within_bounds(&topic)
                && self.caps.admit_topic(&topic)
                && self.caps.retain(&topic, payload.len(), true);
            if !fits {
                self.counters
                    .retained_not_restored
                    .fetch_add(1, Ordering::Relaxed);
                self.write(self.store()?.remove(&record::retained_key(&topic)));
                out.dropped += 1;
                continue;
            }
            lock(&self.retained).insert(std::hash::BuildHasher::hash_one(&self.hasher, &topic));
            let mut props = left.map(|secs| PublishProperties {
                message_expiry_interval: Some(secs),
                ..PublishProperties::default()
            });
            // Its QoS, so subscribers get it at min(its QoS, theirs) (`crate::delivery`).
            crate::delivery::mark(true, qos, 0, &mut props);
            packets.push(Packet::Publish(Publish::new(topic, payload, true), props));
        }
        out.retained = packets.len();
        if !packets.is_empty() {
            self.send_batch(RESTORE_CLIENT, true, packets)?;
        }
        self.counters
            .retained_restored
            .fetch_add(out.retained as u64, Ordering::Relaxed);
        Ok(())
    }

    fn restore_sessions(
        &self,
        sessions: Vec<(String, SessionRecord)>,
        out: &mut Restored,
    ) -> Result<(), String> {
        let now = now_ms();
        for (client_id, mut record) in sessions {
            let offline_since = record.disconnected_at_ms.unwrap_or(now);
            let left_ms = match (record.v5, record.expiry_secs) {
                (true, Some(secs)) => Some(i64::from(secs) * 1000 - (now - offline_since)),
                _ => None,
            };
            let full = lock(&self.sessions).len() >= self.bounds.max_sessions;
            if left_ms.is_some_and(|ms| ms <= 0) || full {
                let counter = match full {
                    true => &self.counters.sessions_refused,
                    false => &self.counters.sessions_expired,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.remove_session(&client_id);
                out.dropped += 1;
                continue;
            }
            record.filters.retain(|(path, _)| {
                let ok = filter_within_bounds(path) && self.caps.admit_filter(path);
                if !ok {
                    self.counters
                        .filters_refused
                        .fetch_add(1, Ordering::Relaxed);
                }
                ok
            });
            record.filters.truncate(self.bounds.max_filters);
            record.disconnected_at_ms = Some(offline_since);
            let packets = match record.filters.is_empty() {
                true => Vec::new(),
                false => vec![subscribe_packet(&record.filters)],
            };
            self.send_batch(&client_id, false, packets)?;
            self.put_session(&client_id, &record);
            let expires = left_ms.map(|ms| Instant::now() + Duration::from_millis(ms as u64));
            self.went_offline(&client_id, &record.filters, None);
            let session = Session {
                record,
                connected: 0,
                expires,
            };
            lock(&self.sessions).insert(client_id, session);
            out.sessions += 1;
        }
        self.counters
            .sessions_restored
            .fetch_add(out.sessions as u64, Ordering::Relaxed);
        Ok(())
    }

    fn store(&self) -> Result<&Arc<dyn StateStore>, String> {
        self.store.get().ok_or_else(|| "no state store".to_owned())
    }

    /// Opens an in-process link as `client_id` and hands the router `packets` then a
    /// DISCONNECT, as one batch (the router reads a link's buffered packets together).
    fn send_batch(&self, client_id: &str, clean: bool, packets: Vec<Packet>) -> Result<(), String> {
        let (mut tx, _rx) = (self.links)(client_id, clean)?;
        tx.buffer().extend(packets);
        futures::executor::block_on(tx.send(super::disconnect_packet()))
            .map(|_| ())
            .map_err(|e| format!("restoring {client_id:?}: {e}"))
    }
}

/// A SUBSCRIBE of `filters` at their QoS (a session without filters subscribes to none).
fn subscribe_packet(filters: &[(String, u8)]) -> Packet {
    let filters = filters
        .iter()
        .map(|(path, qos)| Filter {
            path: path.clone(),
            qos: rumqttd::protocol::qos(*qos).unwrap_or(rumqttd::protocol::QoS::AtMostOnce),
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::OnEverySubscribe,
        })
        .collect();
    Packet::Subscribe(Subscribe { pkid: 1, filters }, None)
}
