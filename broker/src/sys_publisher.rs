//! The values of the `$SYS` topics ([`crate::sys`]), published retained under
//! [`crate::sys::INTERNAL`] every `broker.sys_interval_secs` through an in-process link.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::caps::BrokerCaps;
use crate::link::LinkPublisher;
use crate::sys::{INTERNAL, TRAFFIC};

/// A load average: messages per minute, exponentially averaged over `window`.
#[derive(Debug, Clone, Copy)]
struct Load {
    window: f64,
    value: f64,
}

impl Load {
    fn update(&mut self, per_minute: f64, dt: f64) {
        let alpha = 1.0 - (-dt / self.window).exp();
        self.value += (per_minute - self.value) * alpha;
    }
}

/// What the publisher keeps between ticks.
struct Loads {
    last: [u64; 4],
    at: Instant,
    /// Per counter (packets in/out, publishes in/out): 1, 5 and 15 minute averages.
    loads: [[Load; 3]; 4],
}

impl Loads {
    fn new() -> Self {
        let load = |minutes: f64| Load {
            window: minutes * 60.0,
            value: 0.0,
        };
        Self {
            last: counts(),
            at: Instant::now(),
            loads: [[load(1.0), load(5.0), load(15.0)]; 4],
        }
    }

    fn tick(&mut self) {
        let now = counts();
        let dt = self.at.elapsed().as_secs_f64().max(0.001);
        self.at = Instant::now();
        for (i, loads) in self.loads.iter_mut().enumerate() {
            let per_minute = now[i].saturating_sub(self.last[i]) as f64 * 60.0 / dt;
            for l in loads.iter_mut() {
                l.update(per_minute, dt);
            }
        }
        self.last = now;
    }
}

fn counts() -> [u64; 4] {
    let t = &TRAFFIC;
    [
        t.packets_received.load(Ordering::Relaxed),
        t.packets_sent.load(Ordering::Relaxed),
        t.publishes_received.load(Ordering::Relaxed),
        t.publishes_sent.load(Ordering::Relaxed),
    ]
}

/// The values to publish now: (`$SYS/...` topic, payload).
fn snapshot(
    started: Instant,
    connections: &AtomicI64,
    caps: &BrokerCaps,
    loads: &Loads,
) -> Vec<(String, String)> {
    let t = &TRAFFIC;
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
    let mut out = vec![
        (
            "broker/version".to_owned(),
            format!("edgewatch {}", env!("CARGO_PKG_VERSION")),
        ),
        (
            "broker/uptime".to_owned(),
            format!("{} seconds", started.elapsed().as_secs()),
        ),
        (
            "broker/clients/connected".to_owned(),
            connections.load(Ordering::Relaxed).max(0).to_string(),
        ),
        (
            "broker/messages/received".to_owned(),
            n(&t.packets_received),
        ),
        ("broker/messages/sent".to_owned(), n(&t.packets_sent)),
        (
            "broker/publish/messages/received".to_owned(),
            n(&t.publishes_received),
        ),
        (
            "broker/publish/messages/sent".to_owned(),
            n(&t.publishes_sent),
        ),
        ("broker/bytes/received".to_owned(), n(&t.bytes_received)),
        ("broker/bytes/sent".to_owned(), n(&t.bytes_sent)),
        (
            "broker/retained messages/count".to_owned(),
            caps.retained().0.to_string(),
        ),
        (
            "broker/subscriptions/count".to_owned(),
            caps.filters().to_string(),
        ),
    ];
    let names = [
        "messages/received",
        "messages/sent",
        "publish/received",
        "publish/sent",
    ];
    for (name, loads) in names.iter().zip(loads.loads.iter()) {
        for (window, l) in ["1min", "5min", "15min"].iter().zip(loads.iter()) {
            out.push((
                format!("broker/load/{name}/{window}"),
                format!("{:.2}", l.value),
            ));
        }
    }
    out
}

/// Publishes the `$SYS` topics every `interval` until the broker's runtime ends.
pub(crate) async fn publish_every(
    interval: Duration,
    publisher: LinkPublisher,
    connections: Arc<AtomicI64>,
    caps: Arc<BrokerCaps>,
) {
    let started = Instant::now();
    let mut loads = Loads::new();
    let mut ticks = tokio::time::interval(interval);
    loop {
        ticks.tick().await;
        loads.tick();
        for (topic, value) in snapshot(started, &connections, &caps, &loads) {
            let topic = format!("{INTERNAL}$SYS/{topic}");
            if let Err(err) = publisher.publish_internal(topic, Bytes::from(value)).await {
                tracing::debug!(%err, "$SYS publisher stopped");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_average_moves_towards_the_rate() {
        let mut l = Load {
            window: 60.0,
            value: 0.0,
        };
        l.update(600.0, 60.0);
        assert!((l.value - 600.0 * (1.0 - (-1.0f64).exp())).abs() < 1e-9);
        for _ in 0..100 {
            l.update(600.0, 60.0);
        }
        assert!((l.value - 600.0).abs() < 1e-6);
    }
}
