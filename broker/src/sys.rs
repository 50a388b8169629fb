//! `$SYS` topics: broker information for tools (MQTT Explorer, `mosquitto_sub -t '$SYS/#'`),
//! with Mosquitto's names, published retained every `broker.sys_interval_secs`.
//!
//! rumqttd refuses every `$` filter and has no `$` topics, so the codec wrapper stands in:
//! a `$SYS` filter a client may read (anonymous clients, or accounts whose role grants a
//! `$SYS` filter: `#` does not cover `$` topics) is handed to rumqttd as the same filter under
//! [`INTERNAL`], where this module publishes. When writing, a message under [`INTERNAL`] goes
//! to a client only if it holds a `$SYS` filter matching the `$SYS` topic, renamed to it (and
//! once, although rumqttd sends it once per matching filter, `#` included); no client may
//! publish under [`INTERNAL`], and the bridge's link skips it.
//!
//! Topics (published by [`crate::sys_publisher`]): `$SYS/broker/version`, `uptime` ("N seconds"), `clients/connected`,
//! `messages/received|sent` (MQTT packets), `publish/messages/received|sent`,
//! `bytes/received|sent`, `load/messages/received|sent/1min|5min|15min` and
//! `load/publish/received|sent/1min|5min|15min` (per minute, exponentially averaged),
//! `retained messages/count`, `subscriptions/count` (distinct filters).

use std::sync::atomic::{AtomicU64, Ordering};

/// Where `$SYS/...` is published inside rumqttd: `INTERNAL` + `$SYS/...`.
pub const INTERNAL: &str = "edgewatch-internal/";

/// Counters of the codec wrapper over every connection (process-wide).
#[derive(Debug, Default)]
pub struct Traffic {
    pub packets_received: AtomicU64,
    pub packets_sent: AtomicU64,
    pub publishes_received: AtomicU64,
    pub publishes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
}

/// The wrapper's traffic counters.
pub static TRAFFIC: Traffic = Traffic {
    packets_received: AtomicU64::new(0),
    packets_sent: AtomicU64::new(0),
    publishes_received: AtomicU64::new(0),
    publishes_sent: AtomicU64::new(0),
    bytes_received: AtomicU64::new(0),
    bytes_sent: AtomicU64::new(0),
};

/// The rumqttd filter a client's `$SYS` filter stands for, if it is one.
pub fn internal_filter(filter: &str) -> Option<String> {
    (filter == "$SYS" || filter.starts_with("$SYS/")).then(|| format!("{INTERNAL}{filter}"))
}

/// The `$SYS` topic of a topic under [`INTERNAL`], if it is one.
pub fn sys_topic(topic: &[u8]) -> Option<&[u8]> {
    topic.strip_prefix(INTERNAL.as_bytes())
}

/// Counts a packet of `bytes` read.
pub(crate) fn count_read(bytes: usize) {
    let t = &TRAFFIC;
    t.packets_received.fetch_add(1, Ordering::Relaxed);
    t.bytes_received.fetch_add(bytes as u64, Ordering::Relaxed);
}

/// Counts a packet of `bytes` written (none: not written).
pub(crate) fn count_written(bytes: usize, publish: bool) {
    if bytes == 0 {
        return;
    }
    let t = &TRAFFIC;
    t.packets_sent.fetch_add(1, Ordering::Relaxed);
    t.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    if publish {
        t.publishes_sent.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_filters_map_to_the_internal_prefix_and_back() {
        assert_eq!(
            internal_filter("$SYS/#").as_deref(),
            Some("edgewatch-internal/$SYS/#")
        );
        assert_eq!(internal_filter("$SYSTEM/#"), None);
        assert_eq!(internal_filter("sensors/#"), None);
        assert_eq!(
            sys_topic(b"edgewatch-internal/$SYS/broker/uptime"),
            Some(&b"$SYS/broker/uptime"[..])
        );
        assert_eq!(sys_topic(b"sensors/d1/t"), None);
    }
}
