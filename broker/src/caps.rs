//! Caps on the state MQTT clients make the broker keep, shared by every connection's codec
//! wrapper ([`crate::connect_policy`]), with their counters for `/metrics`.
//!
//! What rumqttd 0.20 keeps, read from its router (`router/routing.rs`, `router/logs.rs`,
//! `router/graveyard.rs`), and what bounds it here:
//!
//! * **A filter** a client subscribes to gets a commit log (`DataLog::native`), an entry in
//!   `filter_indexes` and `subscription_map`, and its index is added to every cached topic it
//!   matches. None of it is ever removed: not on UNSUBSCRIBE, not on disconnect, clean session
//!   or not (a disconnect only removes the connection from `subscription_map`'s sets). A
//!   persistent session (clean session false) also keeps its filter names and data requests
//!   in the graveyard under its client id until that client id connects again. Bounded by
//!   `max_subscriptions_per_client` (per connection) and `max_filters` (distinct filters over
//!   the broker's life, since they are never freed); filters longer than
//!   [`MAX_FILTER_BYTES`] or deeper than [`MAX_FILTER_LEVELS`] are refused.
//! * **A topic** published once is cached with the filters it matches
//!   (`DataLog::publish_filters`, topic → filter indexes) forever; the bridge's link subscribes
//!   to `#`, so every topic not starting with `$` is cached. Bounded by the topic's length and
//!   levels (`max_topic_bytes`, `max_topic_levels`) and, outside `sensors/`, by
//!   `max_topics_outside_readings` distinct topics. A publish is kept in the commit log of
//!   each matching filter, bounded by `broker.router` (segments per filter).
//! * **A retained message** is kept whole (topic, payload, properties) in
//!   `DataLog::retained_publishes` until a publish with an empty payload on its topic (retained
//!   or not) or its MQTT 5 message expiry. Bounded by the ledger below.
//! * Per client id the graveyard keeps the connection's last ten events even for clean
//!   sessions (a few hundred bytes per distinct client id; not bounded here).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use edgewatch_protocol::{MAX_FILTER_BYTES, MAX_FILTER_LEVELS};

use crate::config::LimitsConfig;

/// Topics of readings and presence; not counted against `max_topics_outside_readings`.
const READINGS_PREFIX: &[u8] = b"sensors/";

/// The caps, taken from `broker.limits`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    pub max_subscriptions_per_client: usize,
    pub max_filters: usize,
    pub max_topic_bytes: usize,
    pub max_topic_levels: usize,
    pub max_topics_outside_readings: usize,
    pub max_retained_messages: usize,
    pub max_retained_bytes: u64,
    pub max_retained_payload_bytes: usize,
    pub max_publishes_per_sec: u64,
    pub max_publish_bytes_per_sec: u64,
}

impl From<&LimitsConfig> for Caps {
    fn from(l: &LimitsConfig) -> Self {
        Self {
            max_subscriptions_per_client: l.max_subscriptions_per_client,
            max_filters: l.max_filters,
            max_topic_bytes: l.max_topic_bytes,
            max_topic_levels: l.max_topic_levels,
            max_topics_outside_readings: l.max_topics_outside_readings,
            max_retained_messages: l.max_retained_messages,
            max_retained_bytes: l.max_retained_bytes,
            max_retained_payload_bytes: l.max_retained_payload_bytes,
            max_publishes_per_sec: l.max_publishes_per_sec_per_client,
            max_publish_bytes_per_sec: l.max_publish_bytes_per_sec_per_client,
        }
    }
}

/// What the caps refused, for `/metrics`.
#[derive(Debug, Default)]
pub struct CapCounters {
    /// Filters refused in a SUBACK because of a subscription cap (per client or distinct).
    pub subscriptions_refused: AtomicU64,
    /// Filters refused in a SUBACK for their length or levels.
    pub filters_refused: AtomicU64,
    /// Connections closed for a publish (or will) topic over the length or level bound.
    pub topics_refused: AtomicU64,
    /// Publishes refused for a new topic outside `sensors/` over the distinct-topic cap.
    pub new_topics_refused: AtomicU64,
    /// Retained publishes delivered without being retained (a retained-message cap).
    pub retain_refused: AtomicU64,
    /// QoS 0 publishes dropped by the per-client rate limit.
    pub rate_dropped: AtomicU64,
    /// QoS 1/2 publishes delayed by the per-client rate limit.
    pub rate_delayed: AtomicU64,
    /// Filters refused in a SUBACK because the account may not read them.
    pub subscriptions_denied: AtomicU64,
    /// Publishes (and wills) dropped because the account may not publish to their topic.
    pub publishes_denied: AtomicU64,
    /// Connections closed for a packet over the broker's maximum packet size.
    pub packets_too_large: AtomicU64,
}

/// Retained messages the broker holds: topic → bytes (topic + payload).
#[derive(Debug, Default)]
struct RetainedLedger {
    topics: HashMap<Box<[u8]>, u64>,
    bytes: u64,
}

/// The caps with their shared ledgers. One per broker, shared by every connection.
#[derive(Debug)]
pub struct BrokerCaps {
    pub caps: Caps,
    pub counters: CapCounters,
    hasher: RandomState,
    /// Hashes of every filter rumqttd was given (it never frees them).
    filters: Mutex<HashSet<u64>>,
    /// Hashes of every topic outside `sensors/` rumqttd was given.
    topics: Mutex<HashSet<u64>>,
    retained: Mutex<RetainedLedger>,
    log: Throttle,
}

/// Whether `filter` is within [`MAX_FILTER_BYTES`] and [`MAX_FILTER_LEVELS`].
pub fn filter_within_bounds(filter: &str) -> bool {
    filter.len() <= MAX_FILTER_BYTES && filter.split('/').count() <= MAX_FILTER_LEVELS
}

impl BrokerCaps {
    pub fn new(caps: Caps) -> Self {
        Self {
            caps,
            counters: CapCounters::default(),
            hasher: RandomState::new(),
            filters: Mutex::default(),
            topics: Mutex::default(),
            retained: Mutex::default(),
            log: Throttle::default(),
        }
    }

    /// Whether a publish (or will) topic is within `max_topic_bytes` and `max_topic_levels`.
    pub fn topic_within_bounds(&self, topic: &[u8]) -> bool {
        topic.len() <= self.caps.max_topic_bytes
            && topic.iter().filter(|&&b| b == b'/').count() < self.caps.max_topic_levels
    }

    /// Takes a filter into the distinct-filter ledger; false when it is new and the ledger is
    /// full. Hashes with a per-process key: a collision only lets one more filter in.
    pub fn admit_filter(&self, filter: &str) -> bool {
        admit(
            &self.filters,
            self.hasher.hash_one(filter),
            self.caps.max_filters,
        )
    }

    /// Takes a publish topic into the distinct-topic ledger (topics outside `sensors/`);
    /// false when it is new and the ledger is full.
    pub fn admit_topic(&self, topic: &[u8]) -> bool {
        if topic.starts_with(READINGS_PREFIX) || topic.starts_with(b"$") {
            return true;
        }
        admit(
            &self.topics,
            self.hasher.hash_one(topic),
            self.caps.max_topics_outside_readings,
        )
    }

    /// Distinct topics outside `sensors/` seen.
    pub fn topics_outside_readings(&self) -> usize {
        lock(&self.topics).len()
    }

    /// Distinct filters subscribed to.
    pub fn filters(&self) -> usize {
        lock(&self.filters).len()
    }

    /// Records a publish on `topic` in the retained ledger, as rumqttd will: an empty payload
    /// clears the topic, a retained one sets it. Returns whether the retain flag may stay;
    /// false (counted) when keeping it would pass a retained-message cap.
    pub fn retain(&self, topic: &[u8], payload_len: usize, retain: bool) -> bool {
        if payload_len > 0 && !retain {
            return true; // most publishes: no lock
        }
        let mut ledger = lock(&self.retained);
        if payload_len == 0 {
            if let Some(old) = ledger.topics.remove(topic) {
                ledger.bytes -= old;
            }
            return true;
        }
        let size = (topic.len() + payload_len) as u64;
        let old = ledger.topics.get(topic).copied();
        let count = ledger.topics.len() + usize::from(old.is_none());
        let bytes = ledger.bytes - old.unwrap_or(0) + size;
        if payload_len > self.caps.max_retained_payload_bytes
            || count > self.caps.max_retained_messages
            || bytes > self.caps.max_retained_bytes
        {
            drop(ledger);
            self.counters.retain_refused.fetch_add(1, Ordering::Relaxed);
            self.warn(
                "retained message not retained: over a retained-message cap",
                topic,
            );
            return false;
        }
        ledger.topics.insert(topic.into(), size);
        ledger.bytes = bytes;
        true
    }

    /// Retained messages and their bytes (topic + payload) in the ledger.
    pub fn retained(&self) -> (usize, u64) {
        let ledger = lock(&self.retained);
        (ledger.topics.len(), ledger.bytes)
    }

    /// Logs a refusal at most once per 10 s over all connections (with how many were not).
    pub fn warn(&self, what: &str, topic: &[u8]) {
        if let Some(suppressed) = self.log.allow(Instant::now()) {
            let shown = &topic[..topic.len().min(80)];
            tracing::warn!(
                topic = %String::from_utf8_lossy(shown),
                topic_bytes = topic.len(),
                suppressed,
                "MQTT limit: {what}"
            );
        }
    }
}

/// One value of [`BrokerCaps::samples`] for `/metrics`.
pub struct CapSample {
    /// Metric name (a counter's ends in `_total`).
    pub name: &'static str,
    /// `# HELP` text.
    pub help: &'static str,
    /// Counter (else gauge).
    pub counter: bool,
    /// Reads the current value.
    pub read: Box<dyn Fn() -> f64 + Send + Sync>,
}

impl std::fmt::Debug for CapSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapSample")
            .field("name", &self.name)
            .finish()
    }
}

impl BrokerCaps {
    /// The counters and ledger sizes, for the composition to expose in `/metrics`.
    pub fn samples(self: &Arc<Self>) -> Vec<CapSample> {
        type Pick = fn(&CapCounters) -> &AtomicU64;
        let counters: [(&'static str, &'static str, Pick); 10] = [
            (
                "edgewatch_mqtt_subscriptions_denied_total",
                "MQTT filters refused in a SUBACK because the account's role may not read them.",
                |c| &c.subscriptions_denied,
            ),
            (
                "edgewatch_mqtt_publishes_denied_total",
                "MQTT publishes and last wills dropped because the account's role may not publish to their topic.",
                |c| &c.publishes_denied,
            ),
            (
                "edgewatch_mqtt_subscriptions_refused_total",
                "MQTT filters refused in a SUBACK by a subscription cap (per client or distinct filters).",
                |c| &c.subscriptions_refused,
            ),
            (
                "edgewatch_mqtt_filters_refused_total",
                "MQTT filters refused in a SUBACK for being over 1 KiB or 32 levels.",
                |c| &c.filters_refused,
            ),
            (
                "edgewatch_mqtt_topics_refused_total",
                "MQTT connections closed for a publish or will topic over max_topic_bytes or max_topic_levels.",
                |c| &c.topics_refused,
            ),
            (
                "edgewatch_mqtt_new_topics_refused_total",
                "MQTT publishes refused for a new topic outside sensors/ past max_topics_outside_readings.",
                |c| &c.new_topics_refused,
            ),
            (
                "edgewatch_mqtt_retain_refused_total",
                "Retained MQTT publishes delivered but not retained (a retained-message cap).",
                |c| &c.retain_refused,
            ),
            (
                "edgewatch_mqtt_rate_dropped_total",
                "QoS 0 MQTT publishes dropped by the per-client rate limit.",
                |c| &c.rate_dropped,
            ),
            (
                "edgewatch_mqtt_rate_delayed_total",
                "QoS 1/2 MQTT publishes delayed by the per-client rate limit.",
                |c| &c.rate_delayed,
            ),
            (
                "edgewatch_mqtt_packets_too_large_total",
                "MQTT connections closed for a packet over the broker's maximum packet size (MQTT 5: DISCONNECT 0x95 first).",
                |c| &c.packets_too_large,
            ),
        ];
        let mut out: Vec<CapSample> = counters
            .into_iter()
            .map(|(name, help, pick)| {
                let caps = self.clone();
                CapSample {
                    name,
                    help,
                    counter: true,
                    read: Box::new(move || pick(&caps.counters).load(Ordering::Relaxed) as f64),
                }
            })
            .collect();
        out.extend(self.gauge_samples());
        out
    }

    fn gauge_samples(self: &Arc<Self>) -> impl Iterator<Item = CapSample> + '_ {
        type Read = fn(&BrokerCaps) -> f64;
        let gauges: [(&'static str, &'static str, Read); 4] = [
            (
                "edgewatch_mqtt_retained_messages",
                "Retained messages the broker holds.",
                |c| c.retained().0 as f64,
            ),
            (
                "edgewatch_mqtt_retained_bytes",
                "Bytes (topic + payload) of the retained messages the broker holds.",
                |c| c.retained().1 as f64,
            ),
            (
                "edgewatch_mqtt_filters",
                "Distinct filters MQTT clients subscribed to since start (kept by the broker).",
                |c| c.filters() as f64,
            ),
            (
                "edgewatch_mqtt_topics_outside_readings",
                "Distinct topics outside sensors/ published to since start (kept by the broker).",
                |c| c.topics_outside_readings() as f64,
            ),
        ];
        gauges.into_iter().map(|(name, help, read)| {
            let caps = self.clone();
            CapSample {
                name,
                help,
                counter: false,
                read: Box::new(move || read(&caps)),
            }
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn admit(set: &Mutex<HashSet<u64>>, hash: u64, max: usize) -> bool {
    let mut set = lock(set);
    if set.contains(&hash) {
        return true;
    }
    if set.len() >= max {
        return false;
    }
    set.insert(hash);
    true
}

/// At most one log line per [`Throttle::EVERY`].
#[derive(Debug, Default)]
struct Throttle {
    state: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl Throttle {
    const EVERY: Duration = Duration::from_secs(10);

    /// `Some(lines suppressed since the last one)` when a line may be logged now.
    fn allow(&self, now: Instant) -> Option<u64> {
        let mut last = lock(&self.state);
        match *last {
            Some(t) if now.saturating_duration_since(t) < Self::EVERY => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.suppressed.swap(0, Ordering::Relaxed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> BrokerCaps {
        let mut caps = Caps::from(&LimitsConfig::default());
        caps.max_retained_messages = 2;
        caps.max_retained_bytes = 30;
        caps.max_retained_payload_bytes = 10;
        caps.max_topics_outside_readings = 1;
        BrokerCaps::new(caps)
    }

    #[test]
    fn retained_ledger_follows_rumqttd_and_refuses_past_each_cap() {
        let c = caps();
        assert!(c.retain(b"a/1", 5, true)); // 8 bytes
        assert!(c.retain(b"a/1", 9, true)); // replaced: 12 bytes
        assert_eq!(c.retained(), (1, 12));
        assert!(!c.retain(b"a/2", 11, true)); // payload over 10
        assert!(c.retain(b"a/2", 10, true)); // 13 more bytes
        assert!(!c.retain(b"a/3", 1, true)); // a third message
        assert!(c.retain(b"a/3", 1, false)); // not retained: nothing to refuse
        assert!(c.retain(b"a/1", 0, false)); // an empty payload clears, retained or not
        assert_eq!(c.retained(), (1, 13));
        assert!(!c.retain(b"a/long-topic", 10, true)); // 13 + 22 bytes > 30
        assert!(c.retain(b"a/3", 10, true));
        assert_eq!(c.retained(), (2, 26));
        assert_eq!(c.counters.retain_refused.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn topics_outside_readings_are_capped_and_bounds_count_levels() {
        let c = caps();
        assert!(c.admit_topic(b"tele/a"));
        assert!(c.admit_topic(b"tele/a"));
        assert!(!c.admit_topic(b"tele/b"));
        assert!(c.admit_topic(b"sensors/d1/t"));
        assert!(c.admit_topic(b"$SYS/x"));
        assert_eq!(c.topics_outside_readings(), 1);
        let sixteen = vec!["l"; 16].join("/");
        assert!(c.topic_within_bounds(sixteen.as_bytes()));
        assert!(!c.topic_within_bounds(format!("{sixteen}/l").as_bytes()));
        assert!(c.topic_within_bounds("t".repeat(256).as_bytes()));
        assert!(!c.topic_within_bounds("t".repeat(257).as_bytes()));
        assert!(filter_within_bounds(&vec!["+"; 32].join("/")));
        assert!(!filter_within_bounds(&vec!["+"; 33].join("/")));
    }
}
