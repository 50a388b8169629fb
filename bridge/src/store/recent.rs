//! Fingerprints of the most recently stored readings: the cheap first test for a redelivery.
//!
//! A redelivered reading (same series, event time and value bits) arrives soon after the
//! original was stored: an MQTT session resends what it had in flight, a device resends what it
//! had not seen acknowledged. So the store remembers a 64-bit fingerprint of each of the last
//! `window` stored readings (by seq). A reading whose fingerprint is not among them is new and
//! costs one hash lookup, however late its event time; only a match is confirmed against the
//! stored rows (the open chunk, then the sealed chunks covering its time). A reading identical
//! to one stored more than `window` seqs earlier is stored again.
//!
//! Memory: about 26 bytes per remembered reading (a hash set slot and a ring entry), so about
//! 6.5 MiB at the default window of 262,144 readings once that many are stored.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// The fingerprint of (series, event time, value bits).
pub(super) fn fingerprint(sid: u32, ts: i64, value_bits: u64) -> u64 {
    // Two rounds of a 128-bit multiply fold (well mixed; collisions are confirmed anyway).
    const K0: u64 = 0x9e37_79b9_7f4a_7c15;
    const K1: u64 = 0xbf58_476d_1ce4_e5b9;
    const K2: u64 = 0x94d0_49bb_1331_11eb;
    let fold = |a: u64, b: u64| {
        let m = u128::from(a) * u128::from(b);
        (m as u64) ^ ((m >> 64) as u64)
    };
    let h = fold(ts as u64 ^ K0, value_bits ^ K1);
    fold(h ^ u64::from(sid), K2)
}

/// The fingerprints already are hashes: the set uses them as they are.
#[derive(Debug, Default)]
pub(super) struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// The last `window` stored readings' fingerprints, oldest first.
pub(super) struct Recent {
    window: usize,
    ring: VecDeque<u64>,
    set: HashSet<u64, BuildHasherDefault<Identity>>,
    /// Extra ring entries of a fingerprint held more than once (distinct readings that share
    /// it: about 2e-9 per window), so that forgetting one keeps the other.
    shared: HashMap<u64, u32>,
}

/// Sizes only: the store's state is debug-printed as a whole, and this holds up to `window`
/// fingerprints.
impl std::fmt::Debug for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recent")
            .field("window", &self.window)
            .field("held", &self.ring.len())
            .field("shared", &self.shared.len())
            .finish()
    }
}

impl Recent {
    pub(super) fn new(window: usize) -> Recent {
        Recent {
            window: window.max(1),
            ring: VecDeque::new(),
            set: HashSet::default(),
            shared: HashMap::new(),
        }
    }

    /// Whether a reading with this fingerprint may be among the remembered ones.
    pub(super) fn may_hold(&self, fp: u64) -> bool {
        self.set.contains(&fp)
    }

    /// Remembers the next stored reading. Call [`Recent::trim`] once the batch is committed.
    pub(super) fn push(&mut self, fp: u64) {
        self.ring.push_back(fp);
        if !self.set.insert(fp) {
            *self.shared.entry(fp).or_insert(0) += 1;
        }
    }

    /// Forgets the last `n` pushes (a batch that did not reach sled).
    pub(super) fn unpush(&mut self, n: usize) {
        for _ in 0..n {
            if let Some(fp) = self.ring.pop_back() {
                self.forget(fp);
            }
        }
    }

    /// Drops the oldest fingerprints beyond the window.
    pub(super) fn trim(&mut self) {
        while self.ring.len() > self.window {
            if let Some(fp) = self.ring.pop_front() {
                self.forget(fp);
            }
        }
    }

    fn forget(&mut self, fp: u64) {
        match self.shared.get_mut(&fp) {
            Some(1) => {
                self.shared.remove(&fp);
            }
            Some(n) => *n -= 1,
            None => {
                self.set.remove(&fp);
            }
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.ring.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_window_and_forgets_older_and_undone() {
        let mut r = Recent::new(3);
        let fps: Vec<u64> = (0..5).map(|i| fingerprint(1, i * 1000, 7)).collect();
        for fp in &fps[..4] {
            r.push(*fp);
        }
        r.trim();
        assert_eq!(r.len(), 3);
        assert!(!r.may_hold(fps[0]));
        assert!(r.may_hold(fps[1]) && r.may_hold(fps[3]));
        r.push(fps[4]);
        r.unpush(1);
        assert!(!r.may_hold(fps[4]));
        assert!(r.may_hold(fps[3]));
    }

    #[test]
    fn a_shared_fingerprint_stays_until_both_are_forgotten() {
        let mut r = Recent::new(2);
        r.push(42);
        r.push(42);
        r.push(7);
        r.trim();
        assert!(r.may_hold(42), "the younger holder is still in the window");
        r.push(8);
        r.trim();
        assert!(!r.may_hold(42));
        assert!(r.may_hold(7) && r.may_hold(8));
    }

    #[test]
    fn fingerprints_differ_by_each_part() {
        let a = fingerprint(1, 1_790_000_000_000, 21.5f64.to_bits());
        assert_ne!(a, fingerprint(2, 1_790_000_000_000, 21.5f64.to_bits()));
        assert_ne!(a, fingerprint(1, 1_790_000_000_001, 21.5f64.to_bits()));
        assert_ne!(a, fingerprint(1, 1_790_000_000_000, 21.6f64.to_bits()));
    }
}
