//! MQTT 5 session expiry: a task ends the disconnected sessions whose Session Expiry Interval
//! has passed, in rumqttd (see [`super::Durable::discard_in_router`]) and in the store.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{lock, Durable};

/// How often expired sessions are looked for: a session ends at most this much after its
/// expiry.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

impl Durable {
    /// Ends every disconnected session whose expiry has passed; returns how many.
    pub fn expire_due(&self, now: Instant) -> usize {
        let mut sessions = lock(&self.sessions);
        let due: Vec<String> = sessions
            .iter()
            .filter(|(_, s)| s.connected == 0 && s.expires.is_some_and(|at| at <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for client_id in &due {
            // Under the lock: a CONNECT with this client id waits until the discard is done.
            self.discard_in_router(client_id);
            if let Some(old) = sessions.remove(client_id) {
                self.drop_queue(client_id, &old.record.filters);
            }
            self.remove_session(client_id);
            self.counters
                .sessions_expired
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%client_id, "MQTT session expired");
        }
        due.len()
    }
}

/// Runs [`Durable::expire_due`] every [`CHECK_EVERY`] until aborted (the broker's stop).
pub async fn run(durable: Arc<Durable>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let d = durable.clone();
        // Discarding waits for the router's answer: off the async workers.
        if tokio::task::spawn_blocking(move || d.expire_due(Instant::now()))
            .await
            .is_err()
        {
            return;
        }
    }
}
