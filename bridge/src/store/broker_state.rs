//! The embedded broker's own state across restarts (its retained messages and persistent
//! sessions): a sled tree of the store's database, `broker`, apart from the readings' tree
//! (retention, the disk budget and the readings' batches never touch it). Keys and values are
//! opaque here: the broker crate encodes them (`edgewatch_broker::durable`).

use super::{Store, StoreError};

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// The name of the tree.
const TREE: &str = "broker";

/// The broker's key-value tree. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct BrokerState {
    tree: sled::Tree,
}

impl BrokerState {
    /// Inserts or replaces `key`. Returns once the change is in sled's memory; sled writes it
    /// to disk within its flush interval (0.5 s), and at the store's orderly close.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.tree.insert(key, value)?;
        Ok(())
    }

    /// Deletes `key`.
    pub fn remove(&self, key: &[u8]) -> Result<(), StoreError> {
        self.tree.remove(key)?;
        Ok(())
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        self.tree
            .iter()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into))
            .collect()
    }
}

impl Store {
    /// The embedded broker's state tree (opened on first use).
    pub fn broker_state(&self) -> Result<BrokerState, StoreError> {
        let tree = self.inner.db.open_tree(TREE)?;
        Ok(BrokerState { tree })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    #[test]
    fn entries_survive_a_reopen_and_stay_out_of_the_readings_tree() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            let state = store.broker_state().unwrap();
            state.put(b"Ra/1", b"x").unwrap();
            state.put(b"Ra/2", b"y").unwrap();
            state.remove(b"Ra/1").unwrap();
            assert_eq!(store.last_seq().unwrap(), 0);
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let entries = store.broker_state().unwrap().entries().unwrap();
        assert_eq!(entries, vec![(b"Ra/2".to_vec(), b"y".to_vec())]);
    }
}
