//! The uplinks' forwarding cursors and the hold they put on retention.
//!
//! Each uplink's cursor (the last seq acknowledged upstream over a contiguous prefix) is kept
//! in a sled tree of its own, `uplink` (name -> seq, u64 big-endian), apart from the readings'
//! tree: retention, the disk budget and the readings' batches never touch it. A save is in
//! sled's memory at once and on disk within sled's flush interval (0.5 s) or the writer's next
//! flush, whichever comes first; after a crash the uplink resends from the cursor on disk.
//!
//! While an uplink runs it holds the readings after its cursor: retention by age
//! (`bridge.retention_days`) keeps them until forwarded, but not longer than the uplink's own
//! bound (`hold_days`). The disk budget still applies to all readings (a full disk would stop
//! ingest); a reading removed before it was forwarded, by the bound or by the budget, is
//! counted per uplink ([`Store::uplink_dropped`]) and logged.

use std::collections::BTreeMap;

use super::{Store, StoreError};

/// The name of the tree.
const TREE: &str = "uplink";

/// One uplink's hold.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hold {
    /// Readings after this seq are not forwarded yet.
    pub(super) cursor: u64,
    /// Readings received before this (epoch ms) are released even if not forwarded.
    pub(super) max_age_ms: i64,
    /// Readings removed before they were forwarded.
    pub(super) dropped: u64,
}

/// The holds of the running uplinks, by name.
pub(super) type Holds = BTreeMap<String, Hold>;

impl Store {
    /// The cursor saved for uplink `name`, if any.
    pub fn uplink_cursor(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let tree = self.inner.db.open_tree(TREE)?;
        Ok(tree
            .get(name.as_bytes())?
            .map(|v| super::layout::u64_from(&v)))
    }

    /// Saves uplink `name`'s cursor and moves its hold.
    pub fn save_uplink_cursor(&self, name: &str, seq: u64) -> Result<(), StoreError> {
        let tree = self.inner.db.open_tree(TREE)?;
        tree.insert(name.as_bytes(), &seq.to_be_bytes()[..])?;
        if let Some(h) = self.holds()?.get_mut(name) {
            h.cursor = h.cursor.max(seq);
        }
        Ok(())
    }

    /// Uplink `name` holds the readings after `cursor`, up to `max_age_ms` old.
    pub fn hold_for_uplink(
        &self,
        name: &str,
        cursor: u64,
        max_age_ms: i64,
    ) -> Result<(), StoreError> {
        let mut holds = self.holds()?;
        let dropped = holds.get(name).map_or(0, |h| h.dropped);
        holds.insert(
            name.to_owned(),
            Hold {
                cursor,
                max_age_ms,
                dropped,
            },
        );
        Ok(())
    }

    /// Readings removed by retention before uplink `name` forwarded them (since start).
    pub fn uplink_dropped(&self, name: &str) -> u64 {
        self.holds()
            .map_or(0, |h| h.get(name).map_or(0, |h| h.dropped))
    }

    pub(super) fn holds(&self) -> Result<std::sync::MutexGuard<'_, Holds>, StoreError> {
        self.inner.holds.lock().map_err(|_| StoreError::Poisoned)
    }

    /// The oldest hold, as (cursor, receive-time bound) for a retention step at `now_ms`.
    pub(super) fn oldest_hold(&self, now_ms: i64) -> Result<Option<(u64, i64)>, StoreError> {
        Ok(self
            .holds()?
            .values()
            .map(|h| (h.cursor, now_ms.saturating_sub(h.max_age_ms)))
            .min_by_key(|(c, _)| *c))
    }

    /// Counts, for each uplink, the removed seqs it had not forwarded, and logs them.
    pub(super) fn count_unforwarded(&self, removed: &[u64]) -> Result<(), StoreError> {
        if removed.is_empty() {
            return Ok(());
        }
        let mut holds = self.holds()?;
        for (name, h) in holds.iter_mut() {
            let n = removed.iter().filter(|s| **s > h.cursor).count() as u64;
            if n > 0 {
                h.dropped += n;
                tracing::warn!(
                    uplink = %name,
                    readings = n,
                    cursor = h.cursor,
                    "retention removed readings the uplink had not forwarded yet (its hold_days or the disk budget)"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    #[test]
    fn cursors_survive_a_reopen_and_stay_out_of_the_readings_tree() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            assert_eq!(store.uplink_cursor("central").unwrap(), None);
            store.hold_for_uplink("central", 0, 1000).unwrap();
            store.save_uplink_cursor("central", 41).unwrap();
            store.save_uplink_cursor("other", 7).unwrap();
            assert_eq!(store.oldest_hold(5000).unwrap(), Some((41, 4000)));
            assert_eq!(store.last_seq().unwrap(), 0);
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!(store.uplink_cursor("central").unwrap(), Some(41));
        assert_eq!(store.uplink_cursor("other").unwrap(), Some(7));
        assert_eq!(store.oldest_hold(5000).unwrap(), None);
    }
}
