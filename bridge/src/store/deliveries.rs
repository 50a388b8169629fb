//! Deliveries from an external broker's session that the store took and that may still be
//! resent, so that a resend is recognised by what it is, whatever its payload.
//!
//! A broker resends a QoS 1 PUBLISH that it has not seen acknowledged, with the same packet id
//! and the DUP flag set, when our session reconnects (after a network fault, or after the
//! bridge was killed between committing a reading and sending its PUBACK). Recognising such a
//! resend by content is not possible in general: a reading without a device timestamp resent a
//! second later looks exactly like a new reading with the same value. So each reading from an
//! external session is written *in the same commit* with its delivery: packet id and a digest
//! of topic and payload. A later PUBLISH with DUP set whose packet id and digest match a
//! remembered delivery is that delivery again: a duplicate, acknowledged and not stored.
//!
//! # How long a delivery is remembered
//! Until the broker has its acknowledgement. A PUBACK written to the connection is not yet
//! that: a `kill -9` of the bridge resets the connection and the broker drops what it had not
//! read (seen: thousands of PUBACKs). So the external source follows its PUBACKs with a barrier
//! (an UNSUBSCRIBE the broker answers in order) and reports a delivery as acknowledged only
//! once the barrier's answer came back ([`AckedDeliveries`]); the record is removed in the
//! next commit. After a reconnect, the records that none of the broker's resends matched go as
//! soon as its first new publish arrives ([`DeliveryId::resends_done`]): the broker has their
//! PUBACKs. While a record is kept, its packet id and digest match one resend per connection
//! (a broker may hold two identical publishes under one packet id). A session the broker no
//! longer has (CONNACK with session present 0) resends nothing: every record goes. At most
//! [`MAX_RECORDS`] are kept; beyond that the oldest go first.
//!
//! What this cannot tell apart: two publishes with the same packet id, topic and payload that
//! the broker holds unacknowledged at once, one committed and one not, when the bridge dies.
//! A broker keeps packet ids unique among unacknowledged publishes (MQTT 5 section 2.2.1), but
//! Mosquitto 2.0 was seen reusing them once more than 65,535 messages were queued for the
//! session; with identical payloads a few of those are then taken for resends. Distinct
//! payloads (a timestamp, a counter, a changing value) are never confused.
//!
//! # On disk
//! `P` + ordinal (u64 BE) -> packet id (u16 BE) + digest (u64 BE), one key per delivery.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::layout::{u64_from, Writes};
use super::StoreError;

/// Key tag of a delivery record.
pub(super) const DELIVERY: u8 = b'P';

/// Most delivery records kept (about 60 bytes of memory each).
pub(super) const MAX_RECORDS: usize = 1_000_000;

/// One PUBLISH received from an external broker's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryId {
    /// Its MQTT packet identifier.
    pub packet_id: u16,
    /// [`delivery_digest`] of its topic and payload.
    pub digest: u64,
    /// Its DUP flag: the broker says it may have sent it before.
    pub redelivered: bool,
    /// The connection it came on (numbered from 1 by the source, per process): a record
    /// matches at most one resend per connection.
    pub connection: u64,
    /// The first publish without DUP on a resumed session: the broker has resent everything
    /// it held unacknowledged (brokers resend before they send anything new), so the records
    /// none of those resends matched are forgotten before this one is taken.
    pub resends_done: bool,
}

/// What the external source says about deliveries since the last commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckedDeliveries {
    /// (packet id, digest) of deliveries whose PUBACK the broker has confirmed (a barrier
    /// written after it was answered): one record of each goes.
    pub acked: Vec<(u16, u64)>,
    /// The broker has no session for us any more: it resends nothing, every record goes.
    pub session_lost: bool,
}

impl AckedDeliveries {
    /// Nothing to report.
    pub fn is_empty(&self) -> bool {
        self.acked.is_empty() && !self.session_lost
    }
}

/// The digest of a delivery's topic and payload (64-bit FNV-1a; stable across builds, since it
/// is stored).
pub fn delivery_digest(topic: &str, payload: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut h = OFFSET;
    for b in topic.as_bytes().iter().chain(&[0xff]).chain(payload) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    h
}

fn key(ordinal: u64) -> [u8; 9] {
    let mut k = [DELIVERY; 9];
    k[1..].copy_from_slice(&ordinal.to_be_bytes());
    k
}

fn value(id: (u16, u64)) -> [u8; 10] {
    let mut v = [0u8; 10];
    v[..2].copy_from_slice(&id.0.to_be_bytes());
    v[2..].copy_from_slice(&id.1.to_be_bytes());
    v
}

type Key = (u16, u64);

#[derive(Debug, Clone, Copy)]
struct Record {
    ordinal: u64,
    /// The connection whose resend it matched (0: none since it was loaded or taken).
    matched_on: u64,
    /// The connection it was taken on (0: loaded at open).
    added_on: u64,
}

/// The remembered deliveries, in memory and on disk alike.
#[derive(Debug, Default)]
pub(super) struct Deliveries {
    /// [`MAX_RECORDS`], smaller in tests.
    max_records: usize,
    /// Records pushed out by the bound since open (each one a resend that would no longer be
    /// recognised).
    pub(super) evicted: u64,
    by_id: HashMap<Key, Vec<Record>>,
    /// Ordinal -> key, oldest first (for [`MAX_RECORDS`] and [`AckedDeliveries::session_lost`]).
    order: BTreeMap<u64, Key>,
    next: u64,
}

/// What one commit changes: staged in its batch, applied to memory once it landed.
#[derive(Debug, Default)]
pub(super) struct Staged {
    added: Vec<(u64, Key, u64)>,
    /// Key -> ordinals of the records staged for it (a resend in the same commit finds them).
    added_by_id: HashMap<Key, Vec<u64>>,
    matched: Vec<(Key, u64, u64)>,
    matched_set: HashSet<u64>,
    removed: Vec<(Key, u64)>,
    removed_set: HashSet<u64>,
    /// Of `removed`, those the bound pushed out.
    evicted: u64,
}

impl Staged {
    fn is_removed(&self, ordinal: u64) -> bool {
        self.removed_set.contains(&ordinal)
    }

    fn is_matched(&self, ordinal: u64) -> bool {
        self.matched_set.contains(&ordinal)
    }

    fn remove(&mut self, id: Key, ordinal: u64) {
        self.removed.push((id, ordinal));
        self.removed_set.insert(ordinal);
    }

    fn set_matched(&mut self, id: Key, ordinal: u64, connection: u64) {
        self.matched.push((id, ordinal, connection));
        self.matched_set.insert(ordinal);
    }
}

impl Deliveries {
    /// Reads the records back.
    pub(super) fn load(tree: &sled::Tree) -> Result<Self, StoreError> {
        Self::load_bounded(tree, MAX_RECORDS)
    }

    fn load_bounded(tree: &sled::Tree, max_records: usize) -> Result<Self, StoreError> {
        let mut d = Deliveries {
            next: 1,
            max_records: max_records.max(1),
            ..Deliveries::default()
        };
        for r in tree.scan_prefix([DELIVERY]) {
            let (k, v) = r?;
            if k.len() != 9 || v.len() != 10 {
                return Err(StoreError::Corrupt { what: "delivery" });
            }
            let ordinal = u64_from(&k[1..]);
            let id = (u16::from_be_bytes([v[0], v[1]]), u64_from(&v[2..]));
            d.insert(ordinal, id, 0);
            d.next = ordinal + 1;
        }
        Ok(d)
    }

    fn insert(&mut self, ordinal: u64, id: Key, added_on: u64) {
        self.by_id.entry(id).or_default().push(Record {
            ordinal,
            matched_on: 0,
            added_on,
        });
        self.order.insert(ordinal, id);
    }

    /// Records kept now.
    pub(super) fn len(&self) -> usize {
        self.order.len()
    }

    /// Stages what the external source reported: removals of acknowledged deliveries (the
    /// oldest record of each), or of every record. Call before [`Deliveries::take`].
    pub(super) fn stage_acked(&self, acked: &AckedDeliveries, staged: &mut Staged, b: &mut Writes) {
        if acked.session_lost {
            for (ordinal, id) in &self.order {
                b.remove(&key(*ordinal)[..]);
                staged.remove(*id, *ordinal);
            }
            return;
        }
        for id in &acked.acked {
            let Some(records) = self.by_id.get(id) else {
                continue;
            };
            if let Some(r) = records.iter().find(|r| !staged.is_removed(r.ordinal)) {
                b.remove(&key(r.ordinal)[..]);
                staged.remove(*id, r.ordinal);
            }
        }
    }

    /// Takes one delivery: `true` when it is the resend of a remembered one (a duplicate);
    /// else its record is staged.
    pub(super) fn take(&self, id: &DeliveryId, staged: &mut Staged, b: &mut Writes) -> bool {
        let k = (id.packet_id, id.digest);
        if id.resends_done {
            // The broker has resent what it holds unacknowledged: a record that no resend
            // matched on this connection (and that this connection did not add) has its
            // PUBACK at the broker, which will never resend it.
            for (rid, records) in &self.by_id {
                for r in records {
                    if r.matched_on != id.connection
                        && r.added_on != id.connection
                        && !staged.is_removed(r.ordinal)
                        && !staged.is_matched(r.ordinal)
                    {
                        b.remove(&key(r.ordinal)[..]);
                        staged.remove(*rid, r.ordinal);
                    }
                }
            }
        }
        if id.redelivered {
            let kept = self.by_id.get(&k).into_iter().flatten().find(|r| {
                r.matched_on != id.connection
                    && !staged.is_removed(r.ordinal)
                    && !staged.is_matched(r.ordinal)
            });
            let new = || {
                staged
                    .added_by_id
                    .get(&k)
                    .into_iter()
                    .flatten()
                    .find(|o| !staged.is_matched(**o))
                    .copied()
            };
            if let Some(ordinal) = kept.map(|r| r.ordinal).or_else(new) {
                staged.set_matched(k, ordinal, id.connection);
                return true;
            }
        }
        let ordinal = self.next + staged.added.len() as u64;
        b.insert(&key(ordinal)[..], &value(k)[..]);
        staged.added.push((ordinal, k, id.connection));
        staged.added_by_id.entry(k).or_default().push(ordinal);
        false
    }

    /// Stages the removal of the oldest records beyond [`MAX_RECORDS`].
    pub(super) fn stage_cap(&self, staged: &mut Staged, b: &mut Writes) {
        let after = (self.order.len() + staged.added.len()).saturating_sub(staged.removed.len());
        let mut over = after.saturating_sub(self.max_records);
        for (ordinal, id) in &self.order {
            if over == 0 {
                break;
            }
            if !staged.is_removed(*ordinal) {
                b.remove(&key(*ordinal)[..]);
                staged.remove(*id, *ordinal);
                staged.evicted += 1;
                over -= 1;
            }
        }
    }

    /// The commit landed: apply what it staged.
    pub(super) fn commit(&mut self, staged: Staged) {
        if staged.evicted > 0 && self.evicted == 0 {
            tracing::warn!(
                max = self.max_records,
                "external delivery records reached their bound: the oldest are dropped, and a \
                 broker resend of one of them would be stored again \
                 (edgewatch_external_delivery_records_evicted_total)"
            );
        }
        self.evicted += staged.evicted;
        for (id, ordinal) in staged.removed {
            self.order.remove(&ordinal);
            if let Some(records) = self.by_id.get_mut(&id) {
                records.retain(|r| r.ordinal != ordinal);
                if records.is_empty() {
                    self.by_id.remove(&id);
                }
            }
        }
        for (ordinal, id, connection) in staged.added {
            self.insert(ordinal, id, connection);
            self.next = ordinal + 1;
        }
        for (id, ordinal, connection) in staged.matched {
            if let Some(r) = self
                .by_id
                .get_mut(&id)
                .and_then(|v| v.iter_mut().find(|r| r.ordinal == ordinal))
            {
                r.matched_on = connection;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(packet_id: u16, digest: u64, redelivered: bool, connection: u64) -> DeliveryId {
        DeliveryId {
            packet_id,
            digest,
            redelivered,
            connection,
            resends_done: false,
        }
    }

    fn tree() -> (tempfile::TempDir, sled::Tree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let t = db.open_tree("t").unwrap();
        (dir, t)
    }

    /// One commit: `acked` first, then every delivery; returns which were resends.
    fn commit(
        d: &mut Deliveries,
        tree: &sled::Tree,
        acked: &AckedDeliveries,
        ids: &[DeliveryId],
    ) -> Vec<bool> {
        let mut staged = Staged::default();
        let mut b = Writes::default();
        d.stage_acked(acked, &mut staged, &mut b);
        let out = ids.iter().map(|i| d.take(i, &mut staged, &mut b)).collect();
        d.stage_cap(&mut staged, &mut b);
        b.apply(tree).unwrap();
        d.commit(staged);
        out
    }

    fn none() -> AckedDeliveries {
        AckedDeliveries::default()
    }

    #[test]
    fn a_resend_is_recognised_by_packet_id_digest_and_dup_flag() {
        let (_dir, t) = tree();
        let mut d = Deliveries::load(&t).unwrap();
        assert_eq!(
            commit(
                &mut d,
                &t,
                &none(),
                &[id(1, 10, false, 1), id(2, 20, false, 1)]
            ),
            [false, false]
        );
        // After a reconnect: the resends of both, a new publish reusing id 1, and resends that
        // match nothing.
        let got = commit(
            &mut d,
            &t,
            &none(),
            &[
                id(1, 10, true, 2),
                id(1, 10, false, 2),
                id(1, 11, true, 2),
                id(3, 10, true, 2),
                id(2, 20, true, 2),
            ],
        );
        assert_eq!(got, [true, false, false, false, true]);
    }

    #[test]
    fn each_record_matches_one_resend_per_connection() {
        let (_dir, t) = tree();
        let mut d = Deliveries::load(&t).unwrap();
        // Two identical publishes under one packet id (a broker reusing ids in flight), and a
        // third the bridge never committed.
        commit(
            &mut d,
            &t,
            &none(),
            &[id(7, 70, false, 1), id(7, 70, false, 1)],
        );
        let resends = [id(7, 70, true, 2), id(7, 70, true, 2), id(7, 70, true, 2)];
        assert_eq!(commit(&mut d, &t, &none(), &resends), [true, true, false]);
        // On the next connection each record matches again (their PUBACKs may be lost again).
        let again = [id(7, 70, true, 3), id(7, 70, true, 3)];
        assert_eq!(commit(&mut d, &t, &none(), &again), [true, true]);
    }

    #[test]
    fn a_resend_in_the_same_commit_as_its_original_is_recognised() {
        let (_dir, t) = tree();
        let mut d = Deliveries::load(&t).unwrap();
        let got = commit(
            &mut d,
            &t,
            &none(),
            &[id(5, 50, false, 1), id(5, 50, true, 2)],
        );
        assert_eq!(got, [false, true]);
    }

    #[test]
    fn acknowledged_deliveries_are_forgotten_durably() {
        let (_dir, t) = tree();
        let mut d = Deliveries::load(&t).unwrap();
        commit(
            &mut d,
            &t,
            &none(),
            &[id(1, 10, false, 1), id(2, 20, false, 1)],
        );
        let acked = AckedDeliveries {
            acked: vec![(1, 10)],
            session_lost: false,
        };
        commit(&mut d, &t, &acked, &[]);
        let d = Deliveries::load(&t).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(
            t.scan_prefix([DELIVERY]).count(),
            1,
            "disk holds what memory holds"
        );
        let mut d = d;
        assert_eq!(
            commit(
                &mut d,
                &t,
                &none(),
                &[id(1, 10, true, 1), id(2, 20, true, 1)]
            ),
            [false, true]
        );
    }

    #[test]
    fn a_lost_session_forgets_everything() {
        let (_dir, t) = tree();
        let mut d = Deliveries::load(&t).unwrap();
        commit(
            &mut d,
            &t,
            &none(),
            &[id(1, 10, false, 1), id(2, 20, false, 1)],
        );
        let lost = AckedDeliveries {
            acked: vec![],
            session_lost: true,
        };
        assert_eq!(commit(&mut d, &t, &lost, &[id(3, 30, false, 2)]), [false]);
        assert_eq!(d.len(), 1);
        assert_eq!(Deliveries::load(&t).unwrap().len(), 1);
    }

    #[test]
    fn the_first_new_publish_after_the_resends_forgets_what_was_not_resent() {
        let (_dir, t) = tree();
        let mut d = Deliveries::load(&t).unwrap();
        commit(
            &mut d,
            &t,
            &none(),
            &[
                id(1, 10, false, 1),
                id(2, 20, false, 1),
                id(3, 30, false, 1),
            ],
        );
        // Reopened: the broker resends 2 only (it has the PUBACKs of 1 and 3), then sends 4.
        let mut d = Deliveries::load(&t).unwrap();
        let first_new = DeliveryId {
            resends_done: true,
            ..id(4, 40, false, 1)
        };
        assert_eq!(
            commit(&mut d, &t, &none(), &[id(2, 20, true, 1), first_new]),
            [true, false]
        );
        assert_eq!(d.len(), 2, "2 (resent, still unacknowledged) and 4");
        // A later publish reusing 1 with the same content, resent: not taken for the old one.
        assert_eq!(
            commit(
                &mut d,
                &t,
                &none(),
                &[id(1, 10, false, 1), id(1, 10, true, 2)]
            ),
            [false, true]
        );
        assert_eq!(Deliveries::load(&t).unwrap().len(), 3);
    }

    #[test]
    fn the_bound_drops_the_oldest_and_counts_them() {
        let (_dir, t) = tree();
        let mut d = Deliveries::load_bounded(&t, 3).unwrap();
        // Older records go (records of the commit under way are not candidates: a batch is
        // far below the bound).
        for p in 1..=5u16 {
            commit(&mut d, &t, &none(), &[id(p, u64::from(p), false, 1)]);
        }
        assert_eq!((d.len(), d.evicted), (3, 2));
        assert_eq!(t.scan_prefix([DELIVERY]).count(), 3);
        // The oldest two are gone, the newest three still recognised.
        let resends: Vec<_> = (1..=5u16).map(|p| id(p, u64::from(p), true, 2)).collect();
        assert_eq!(
            commit(&mut d, &t, &none(), &resends)[..],
            [false, false, true, true, true]
        );
    }

    #[test]
    fn digests_differ_by_topic_and_payload() {
        let a = delivery_digest("sensors/d1/t", b"21.5");
        assert_eq!(a, delivery_digest("sensors/d1/t", b"21.5"));
        assert_ne!(a, delivery_digest("sensors/d1/u", b"21.5"));
        assert_ne!(a, delivery_digest("sensors/d1/t", b"21.6"));
        assert_ne!(
            delivery_digest("ab", b"c"),
            delivery_digest("a", b"bc"),
            "the topic ends where the payload starts"
        );
    }
}
