//! Uplinks: store-and-forward of readings from this hub to central MQTT brokers.
//!
//! Each `[[uplink]]` is a task that reads the event log after its cursor
//! ([`crate::store::Store::log_after`]), publishes the readings that match its filters with
//! QoS 1 in seq order, and moves its cursor (saved in the store) only over a contiguous prefix
//! of acknowledged messages. After an upstream outage or a restart of the hub (orderly or
//! `kill -9`) it resends from its cursor: at least once, in order, each message carrying its
//! seq (in the JSON, and as the MQTT 5 user property `seq`) so the receiver can drop the few
//! repeats. It never slows ingest: it reads what the writer already stored. While it is
//! behind, retention keeps what it has not forwarded (up to `hold_days`, see
//! `store::forwarding`). Device presence goes upstream too, retained.
//!
//! * `config`: `[[uplink]]`;
//! * `format`: topic templates and the JSON of readings;
//! * `window`: the in-flight window and the cursor's contiguous prefix;
//! * `client`: the MQTT client (rumqttc, 3.1.1 or 5), one connection at a time;
//! * `downlink`: messages from the central broker into the local broker, under permissions;
//! * `tunnel`: `mqtts://`, `ws://`, `wss://`: TLS and WebSocket made by the hub, handed to
//!   rumqttc over a private Unix socket;
//! * `run`: one uplink's loop: connect, forward, back off;
//! * `status`: what `GET /v1/uplinks` and `/metrics` show.
//!
//! # Queues
//! The messages in flight are bounded by `inflight`; the requests waiting for the MQTT
//! client's event loop by the same window (presence included). A slow or absent upstream
//! stops nothing but the uplink: the readings wait in the log.

mod client;
pub mod config;
mod downlink;
mod format;
mod run;
pub mod status;
mod tunnel;
mod window;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{PayloadFormat, Protocol, UplinkConfig};
pub use status::{UplinkState, UplinkStatus};

use crate::store::Store;

/// The running uplinks. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Uplinks {
    list: Arc<[Arc<status::Shared>]>,
    store: Store,
    tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    stop: CancellationToken,
}

impl Uplinks {
    /// Starts one task per section (none for an empty list). `publish` publishes into the
    /// local broker (for downlinks; `None` without an embedded broker).
    pub fn start(
        bridge: &crate::Bridge,
        cfgs: &[UplinkConfig],
        publish: Option<crate::live::PublishFn>,
    ) -> Uplinks {
        let stop = CancellationToken::new();
        let store = bridge.store().clone();
        let mut list = Vec::new();
        let mut tasks = Vec::new();
        for cfg in cfgs {
            let shared = Arc::new(status::Shared::new(cfg));
            let ctx = run::Context {
                cfg: cfg.clone(),
                shared: shared.clone(),
                store: store.clone(),
                wake: bridge.live(),
                presence: bridge.device_presence().clone(),
                data_dir: bridge.config().data_dir.clone(),
                presence_rx: (!cfg.presence_topic.is_empty())
                    .then(|| bridge.device_presence().subscribe()),
                stop: stop.child_token(),
                downlink: match &publish {
                    Some(p) => downlink::Downlink::new(cfg, p.clone()),
                    None => {
                        if !cfg.downlink.is_empty() {
                            tracing::warn!(uplink = %cfg.name, "downlink needs the embedded broker (edgewatch run); not subscribed");
                        }
                        None
                    }
                },
            };
            tasks.push(tokio::spawn(run::run(ctx)));
            list.push(shared);
        }
        Uplinks {
            list: list.into(),
            store,
            tasks: Arc::new(std::sync::Mutex::new(tasks)),
            stop,
        }
    }

    /// Whether any uplink is configured.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Each uplink's state, cursor, lag and counters now.
    pub fn status(&self) -> Vec<UplinkStatus> {
        let head = self.store.last_seq().unwrap_or(0);
        self.list
            .iter()
            .map(|s| s.status(&self.store, head))
            .collect()
    }

    /// Stops every uplink: each saves its cursor and disconnects (at most 2 s in all).
    pub async fn stop(&self) {
        self.stop.cancel();
        let tasks = match self.tasks.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => return,
        };
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(Duration::from_secs(2), all)
            .await
            .is_err()
        {
            tracing::warn!("uplinks did not stop within 2 s");
        }
    }
}
