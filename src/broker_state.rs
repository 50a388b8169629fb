//! The embedded broker's retained messages and persistent sessions, kept in a tree of the
//! bridge's store (`edgewatch_bridge::store::BrokerState`) through the broker's
//! [`StateStore`] trait, and put back into the broker at start.

use std::sync::Arc;

use anyhow::Context as _;
use edgewatch_bridge::store::BrokerState;
use edgewatch_broker::durable::{Entries, StateStore};
use edgewatch_broker::Broker;

/// [`BrokerState`] as the broker's [`StateStore`].
struct SledState(BrokerState);

impl StateStore for SledState {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), String> {
        self.0.put(key, value).map_err(|e| e.to_string())
    }

    fn remove(&self, key: &[u8]) -> Result<(), String> {
        self.0.remove(key).map_err(|e| e.to_string())
    }

    fn entries(&self) -> Result<Entries, String> {
        self.0.entries().map_err(|e| e.to_string())
    }
}

/// Puts the persisted retained messages and sessions back into `broker` and records their
/// changes from now on. Before the bridge's link (which must not take the restored retained
/// messages as new readings; `edgewatch_broker::link` drops them) and before the listeners.
pub(crate) async fn restore(
    broker: &mut Broker,
    bridge: &edgewatch_bridge::Bridge,
) -> anyhow::Result<()> {
    let state = bridge
        .store()
        .broker_state()
        .context("opening the broker's state in the store")?;
    let restored = broker
        .restore_state(Arc::new(SledState(state)))
        .await
        .context("restoring the broker's retained messages and sessions")?;
    tracing::info!(
        retained = restored.retained,
        sessions = restored.sessions,
        dropped = restored.dropped,
        "MQTT retained messages and persistent sessions restored"
    );
    Ok(())
}
