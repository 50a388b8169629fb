//! Deliveries from an external broker's session that the store took, so that the broker's
//! resend of one of them is recognised by what it is, whatever its payload.
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
//! A broker reuses a packet id once the PUBLISH that held it is acknowledged; Mosquitto, EMQX and
//! rumqttd hand packet ids out in turn (1, 2, ... 65,535, 1, ...), so an id comes back 65,535
//! deliveries later. The store remembers the last [`KEEP`] deliveries (32,768, half the id
//! space): a resend is recognised while its original is among them, which holds whenever the
//! broker's in-flight window for our session is below 32,768 (Mosquitto's
//! `max_inflight_messages` defaults to 20, EMQX's `max_inflight` to 32), and a record is
//! forgotten, durably, long before its packet id is handed out again. A new delivery that
//! reuses a remembered packet id replaces that record at once (a broker that hands out the
//! lowest free id). The one case this cannot tell apart: such a broker reuses an id for an
//! identical topic and payload, and the bridge dies between receiving the new PUBLISH and
//! committing it; its resend is then taken for the old one. No broker with ids in turn can get
//! there.
//!
//! # On disk
//! `P` + ordinal (u64 BE) -> packet id (u16 BE) + digest (u64 BE), one key per delivery. The
//! ordinal orders the records, so [`Deliveries::load`] rebuilds the same window.

use std::collections::{HashMap, VecDeque};

use super::layout::{u64_from, Writes};
use super::StoreError;

/// Key tag of a delivery record.
pub(super) const DELIVERY: u8 = b'P';

/// Deliveries remembered (see the module documentation).
pub(super) const KEEP: usize = 32_768;

/// One PUBLISH received from an external broker's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryId {
    /// Its MQTT packet identifier.
    pub packet_id: u16,
    /// [`delivery_digest`] of its topic and payload.
    pub digest: u64,
    /// Its DUP flag: the broker says it may have sent it before.
    pub redelivered: bool,
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

fn value(packet_id: u16, digest: u64) -> [u8; 10] {
    let mut v = [0u8; 10];
    v[..2].copy_from_slice(&packet_id.to_be_bytes());
    v[2..].copy_from_slice(&digest.to_be_bytes());
    v
}

/// The remembered deliveries, in memory and on disk alike.
#[derive(Debug)]
pub(super) struct Deliveries {
    keep: usize,
    /// Packet id -> (ordinal, digest) of its latest delivery.
    by_packet: HashMap<u16, (u64, u64)>,
    /// (ordinal, packet id), oldest first; an entry whose packet id was taken by a newer
    /// delivery is skipped when it leaves.
    ring: VecDeque<(u64, u16)>,
    next: u64,
}

/// What one commit adds: the records staged in its batch, applied to memory once it landed.
#[derive(Debug, Default)]
pub(super) struct Staged {
    /// (ordinal, packet id, digest) of each record staged and not replaced within the commit.
    added: Vec<(u64, u16, u64)>,
    /// Ordinals handed out, replaced ones included.
    count: u64,
}

impl Deliveries {
    /// Reads the records back (oldest first).
    pub(super) fn load(tree: &sled::Tree, keep: usize) -> Result<Self, StoreError> {
        let mut d = Deliveries {
            keep: keep.max(1),
            by_packet: HashMap::new(),
            ring: VecDeque::new(),
            next: 1,
        };
        for r in tree.scan_prefix([DELIVERY]) {
            let (k, v) = r?;
            if k.len() != 9 || v.len() != 10 {
                return Err(StoreError::Corrupt { what: "delivery" });
            }
            let ordinal = u64_from(&k[1..]);
            let packet_id = u16::from_be_bytes([v[0], v[1]]);
            if let Some((old, _)) = d.by_packet.get(&packet_id) {
                // Not written by this build (a commit removes the record it replaces), but
                // harmless: the newer record wins.
                let old = *old;
                d.ring.retain(|(o, _)| *o != old);
            }
            d.remember(ordinal, packet_id, u64_from(&v[2..]));
            d.next = ordinal + 1;
        }
        Ok(d)
    }

    fn remember(&mut self, ordinal: u64, packet_id: u16, digest: u64) {
        self.by_packet.insert(packet_id, (ordinal, digest));
        self.ring.push_back((ordinal, packet_id));
    }

    /// Whether `id` is a resend of a remembered delivery, or of one staged earlier in the same
    /// commit.
    pub(super) fn is_resend(&self, id: &DeliveryId, staged: &Staged) -> bool {
        if !id.redelivered {
            return false;
        }
        let latest = staged
            .added
            .iter()
            .rev()
            .find(|(_, p, _)| *p == id.packet_id)
            .map(|(_, _, d)| *d)
            .or_else(|| self.by_packet.get(&id.packet_id).map(|(_, d)| *d));
        latest == Some(id.digest)
    }

    /// Stages the record of a delivery taken in this commit.
    pub(super) fn stage(&self, id: &DeliveryId, staged: &mut Staged, batch: &mut Writes) {
        if let Some((ordinal, _, _)) = staged.added.iter().find(|a| a.1 == id.packet_id) {
            // The broker reused the id within this commit: the newer record replaces it.
            batch.remove(&key(*ordinal)[..]);
            staged.added.retain(|a| a.1 != id.packet_id);
        }
        let ordinal = self.next + staged.count;
        staged.count += 1;
        batch.insert(&key(ordinal)[..], &value(id.packet_id, id.digest)[..]);
        staged.added.push((ordinal, id.packet_id, id.digest));
    }

    /// Stages the removal of the records whose packet id a staged delivery took, and of the
    /// oldest ones this commit pushes out of the window (the same ones [`Deliveries::commit`]
    /// forgets).
    pub(super) fn stage_removals(&self, staged: &Staged, batch: &mut Writes) {
        if staged.added.is_empty() {
            return;
        }
        let mut fresh = 0usize;
        for (_, packet_id, _) in &staged.added {
            match self.by_packet.get(packet_id) {
                Some((ordinal, _)) => batch.remove(&key(*ordinal)[..]),
                None => fresh += 1,
            }
        }
        let mut over = (self.by_packet.len() + fresh).saturating_sub(self.keep);
        for (ordinal, packet_id) in &self.ring {
            if over == 0 {
                break;
            }
            if staged.added.iter().any(|a| a.1 == *packet_id)
                || !self.is_current(*ordinal, *packet_id)
            {
                continue;
            }
            batch.remove(&key(*ordinal)[..]);
            over -= 1;
        }
    }

    fn is_current(&self, ordinal: u64, packet_id: u16) -> bool {
        self.by_packet.get(&packet_id).map(|(o, _)| *o) == Some(ordinal)
    }

    /// The commit landed: remember its deliveries and forget what it removed.
    pub(super) fn commit(&mut self, staged: Staged) {
        self.next += staged.count;
        for (ordinal, packet_id, digest) in staged.added {
            self.remember(ordinal, packet_id, digest);
        }
        while self.by_packet.len() > self.keep {
            let Some((ordinal, packet_id)) = self.ring.pop_front() else {
                break;
            };
            if self.is_current(ordinal, packet_id) {
                self.by_packet.remove(&packet_id);
            }
        }
        // Entries whose packet id a newer delivery took stay in the ring until they reach its
        // front; with a broker that keeps reusing low ids they could pile up behind an old
        // record, so the ring is compacted when it reaches twice the window.
        if self.ring.len() > 2 * self.keep {
            let by_packet = &self.by_packet;
            self.ring
                .retain(|(o, p)| by_packet.get(p).map(|(x, _)| x) == Some(o));
        }
    }

    /// Deliveries remembered now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_packet.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(packet_id: u16, digest: u64, redelivered: bool) -> DeliveryId {
        DeliveryId {
            packet_id,
            digest,
            redelivered,
        }
    }

    fn tree() -> (tempfile::TempDir, sled::Tree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let t = db.open_tree("t").unwrap();
        (dir, t)
    }

    fn commit(d: &mut Deliveries, tree: &sled::Tree, ids: &[DeliveryId]) {
        let mut staged = Staged::default();
        let mut batch = Writes::default();
        for i in ids {
            d.stage(i, &mut staged, &mut batch);
        }
        d.stage_removals(&staged, &mut batch);
        batch.apply(tree).unwrap();
        d.commit(staged);
    }

    #[test]
    fn a_resend_is_recognised_by_packet_id_digest_and_dup_flag() {
        let (_dir, t) = tree();
        let mut d = Deliveries::load(&t, 8).unwrap();
        commit(&mut d, &t, &[id(1, 10, false), id(2, 20, false)]);
        let none = Staged::default();
        assert!(d.is_resend(&id(1, 10, true), &none));
        assert!(
            !d.is_resend(&id(1, 10, false), &none),
            "no DUP: a new publish"
        );
        assert!(!d.is_resend(&id(1, 11, true), &none), "other content");
        assert!(!d.is_resend(&id(3, 10, true), &none), "other packet id");
        // Within one commit too.
        let mut staged = Staged::default();
        let mut batch = Writes::default();
        d.stage(&id(5, 50, false), &mut staged, &mut batch);
        assert!(d.is_resend(&id(5, 50, true), &staged));
    }

    #[test]
    fn the_window_survives_a_reopen_and_forgets_the_oldest() {
        let (_dir, t) = tree();
        let mut d = Deliveries::load(&t, 4).unwrap();
        for p in 1..=6u16 {
            commit(&mut d, &t, &[id(p, u64::from(p), false)]);
        }
        assert_eq!(d.len(), 4);
        let d = Deliveries::load(&t, 4).unwrap();
        assert_eq!(d.len(), 4);
        assert_eq!(
            t.scan_prefix([DELIVERY]).count(),
            4,
            "disk holds what memory holds"
        );
        let none = Staged::default();
        assert!(!d.is_resend(&id(2, 2, true), &none));
        assert!(d.is_resend(&id(3, 3, true), &none));
        assert!(d.is_resend(&id(6, 6, true), &none));
    }

    #[test]
    fn a_reused_packet_id_replaces_its_record() {
        let (_dir, t) = tree();
        let mut d = Deliveries::load(&t, 4).unwrap();
        commit(&mut d, &t, &[id(1, 10, false)]);
        commit(&mut d, &t, &[id(1, 11, false)]);
        let none = Staged::default();
        assert!(!d.is_resend(&id(1, 10, true), &none));
        assert!(d.is_resend(&id(1, 11, true), &none));
        assert_eq!(t.scan_prefix([DELIVERY]).count(), 1);
        let d = Deliveries::load(&t, 4).unwrap();
        assert!(d.is_resend(&id(1, 11, true), &none));
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
