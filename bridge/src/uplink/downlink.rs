//! The downlink: messages from the central broker (the uplink's `downlink` filters, e.g.
//! `site/{site}/commands/#`) published into the local broker for devices.
//!
//! Each message's local topic is its upstream topic without `downlink_strip`; it is published
//! only if the downlink's own permissions allow it (`downlink_publish`, topic filters as a
//! device account's publish grants), its payload is at most [`MAX_PAYLOAD`] bytes and the
//! downlink is under `downlink_rate` messages per second. Anything else is dropped, counted
//! (`edgewatch_uplink_downlink_dropped_total`) and logged (at most every 10 s). A message is
//! acknowledged upstream when it is received: at most once into the local broker.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgewatch_protocol::permissions::Permissions;
use edgewatch_protocol::TopicFilter;

use super::status::Shared;
use super::UplinkConfig;
use crate::live::PublishFn;

/// Largest payload published into the local broker.
pub(super) const MAX_PAYLOAD: usize = 256 * 1024;
/// How long one local publish may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Least time between two log lines about dropped messages.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// One uplink's downlink.
pub(super) struct Downlink {
    strip: String,
    permissions: Permissions,
    publish: PublishFn,
    /// Token bucket: messages it may publish now, refilled at `rate` per second.
    tokens: f64,
    rate: f64,
    refilled: Instant,
    logged: Option<Instant>,
}

impl std::fmt::Debug for Downlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downlink")
            .field("strip", &self.strip)
            .finish_non_exhaustive()
    }
}

impl Downlink {
    /// The downlink of `cfg`, if it has one, publishing through `publish`.
    pub(super) fn new(cfg: &UplinkConfig, publish: PublishFn) -> Option<Downlink> {
        if cfg.downlink.is_empty() {
            return None;
        }
        let allowed = cfg
            .downlink_publish
            .iter()
            .filter_map(|f| TopicFilter::parse_bounded(f).ok())
            .collect();
        let rate = f64::from(cfg.downlink_rate.max(1));
        Some(Downlink {
            strip: cfg.downlink_strip(),
            permissions: Permissions::from_filters(Vec::new(), allowed),
            publish,
            tokens: rate,
            rate,
            refilled: Instant::now(),
            logged: None,
        })
    }

    /// Publishes one message from upstream locally, or drops it (counted).
    pub(super) async fn deliver(&mut self, shared: &Shared, topic: &str, payload: Bytes) {
        let verdict = self.check(topic, payload.len());
        let local = match verdict {
            Ok(local) => local,
            Err(why) => return self.drop_one(shared, topic, why),
        };
        let publish = (self.publish)(local.clone(), payload);
        match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
            Ok(Ok(())) => {
                shared.downlink_published.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(err)) => self.drop_one(
                shared,
                topic,
                format!("local publish to {local:?} failed: {err}"),
            ),
            Err(_) => self.drop_one(
                shared,
                topic,
                format!("local publish to {local:?} timed out"),
            ),
        }
    }

    /// The local topic, or why the message is dropped.
    fn check(&mut self, topic: &str, len: usize) -> Result<String, String> {
        let Some(local) = topic
            .strip_prefix(self.strip.as_str())
            .filter(|t| !t.is_empty())
        else {
            return Err(format!("the topic does not start with {:?}", self.strip));
        };
        if local.starts_with('$') || local.contains(['+', '#', '\0']) {
            return Err(format!("{local:?} is not a topic to publish to"));
        }
        if !self.permissions.may_publish(local) {
            return Err(format!("{local:?} is outside downlink_publish"));
        }
        if len > MAX_PAYLOAD {
            return Err(format!("payload of {len} bytes is over {MAX_PAYLOAD}"));
        }
        let now = Instant::now();
        let refill = now.duration_since(self.refilled).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.refilled = now;
        if self.tokens < 1.0 {
            return Err(format!("over downlink_rate ({}/s)", self.rate));
        }
        self.tokens -= 1.0;
        Ok(local.to_owned())
    }

    fn drop_one(&mut self, shared: &Shared, topic: &str, why: String) {
        let n = shared.downlink_dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if !matches!(self.logged, Some(t) if t.elapsed() < LOG_EVERY) {
            self.logged = Some(Instant::now());
            tracing::warn!(uplink = %shared.name, topic, reason = %why, dropped_so_far = n, "downlink message dropped");
        }
    }
}
