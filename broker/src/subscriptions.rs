//! One connection's subscriptions, bounded: refused filters are taken out of a SUBSCRIBE
//! before rumqttd sees it, and their failure codes put back into the SUBACK for that packet
//! id at their positions, so the client gets one code per filter it sent, in order.
//!
//! A filter is refused when it is longer than [`crate::caps::MAX_FILTER_BYTES`] or deeper than
//! [`crate::caps::MAX_FILTER_LEVELS`] (MQTT 5: 0x8F topic filter invalid), when the connection
//! already holds `max_subscriptions_per_client` other filters, or when it would be a new
//! distinct filter past `max_filters` (MQTT 5: 0x97 quota exceeded). MQTT 3.1.1 has one
//! failure code, 0x80. Subscribing again to a filter the connection holds is always granted.
//!
//! The count is per connection. A persistent session (clean session false) that reconnects gets
//! its old subscriptions back from rumqttd; when the session is one [`crate::durable`] keeps,
//! they are seeded here ([`ConnectionSubscriptions::seed`]) and count against the cap, else the
//! count starts fresh and across reconnects the session can hold more than the per-client cap;
//! `max_filters` still bounds the distinct filters the broker keeps for everyone together.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use edgewatch_protocol::TopicFilter;
use rumqttd::protocol::{Filter, RetainForwardRule, SubAck, Subscribe, SubscribeReasonCode};

use crate::caps::{filter_within_bounds, BrokerCaps};
use crate::delivery::{Sending, NO_LOCAL_FILTERS};

/// Failure codes to insert into a SUBACK: (position in the client's SUBSCRIBE, code).
type Refusals = Vec<(usize, SubscribeReasonCode)>;

/// At most this many SUBSCRIBEs with refusals wait for their SUBACK; older entries are
/// dropped (a client that pipelines more only gets short SUBACKs for them).
const MAX_PENDING: usize = 64;

/// MQTT 5 subscription options rumqttd ignores, kept for the filters that set them and applied
/// by [`ConnectionSubscriptions::forward`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Options {
    /// noLocal: not the connection's own publishes.
    no_local: bool,
    /// retainAsPublished: live forwards keep the publisher's retain flag.
    retain_as_published: bool,
    /// Retain handling 2, or 1 on a filter already held: no retained messages on this
    /// subscribe.
    skip_retained: bool,
}

impl Drop for ConnectionSubscriptions {
    fn drop(&mut self) {
        let no_local = self.options.values().filter(|o| o.no_local).count();
        NO_LOCAL_FILTERS.fetch_sub(no_local, Ordering::Relaxed);
    }
}

/// The filters one connection was granted.
#[derive(Debug, Default)]
pub struct ConnectionSubscriptions {
    granted: HashSet<String>,
    /// Options of the granted filters that set any (see [`Options`]).
    options: HashMap<String, Options>,
    /// SUBSCRIBEs with refused filters, waiting for their SUBACK (packet id, refusals).
    pending: Mutex<Vec<(u16, Refusals)>>,
}

impl ConnectionSubscriptions {
    /// Takes refused filters out of `sub`, remembering their codes for its SUBACK.
    pub fn filter(
        &mut self,
        sub: &mut Subscribe,
        caps: &BrokerCaps,
        v5: bool,
        may_read: &dyn Fn(&str) -> bool,
    ) {
        let max = caps.caps.max_subscriptions_per_client;
        let mut refusals = Refusals::new();
        let mut position = 0;
        sub.filters.retain_mut(|f| {
            let at = position;
            position += 1;
            let sys = crate::sys::internal_filter(&f.path);
            let refusal = if !filter_within_bounds(&f.path) {
                caps.counters
                    .filters_refused
                    .fetch_add(1, Ordering::Relaxed);
                caps.warn("filter refused: too long or too deep", f.path.as_bytes());
                Some(SubscribeReasonCode::TopicFilterInvalid)
            } else if f.path.starts_with('$') && !f.path.starts_with("$share/") && sys.is_none() {
                // rumqttd drops the connection, without a SUBACK, on a `$` filter; there are
                // no `$` topics to read but `$SYS` (shared-subscription groups aside).
                caps.counters
                    .subscriptions_denied
                    .fetch_add(1, Ordering::Relaxed);
                caps.warn("filter refused: no `$` topics here", f.path.as_bytes());
                Some(SubscribeReasonCode::NotAuthorized)
            } else if !may_read(&f.path) {
                caps.counters
                    .subscriptions_denied
                    .fetch_add(1, Ordering::Relaxed);
                caps.warn(
                    "filter refused: not permitted to this account",
                    f.path.as_bytes(),
                );
                Some(SubscribeReasonCode::NotAuthorized)
            } else if self.granted.contains(&f.path) {
                self.set_options(f, true);
                None
            } else if self.granted.len() >= max || !caps.admit_filter(&f.path) {
                caps.counters
                    .subscriptions_refused
                    .fetch_add(1, Ordering::Relaxed);
                caps.warn("filter refused: subscription cap", f.path.as_bytes());
                Some(SubscribeReasonCode::QuotaExceeded)
            } else {
                self.granted.insert(f.path.clone());
                self.set_options(f, false);
                None
            };
            match refusal {
                Some(code) => {
                    refusals.push((
                        at,
                        if v5 {
                            code
                        } else {
                            SubscribeReasonCode::Failure
                        },
                    ));
                    false
                }
                None => {
                    if let Some(internal) = sys {
                        // rumqttd gets the filter under `crate::sys::INTERNAL`.
                        f.path = internal;
                    }
                    true
                }
            }
        });
        if !refusals.is_empty() {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if pending.len() >= MAX_PENDING {
                pending.remove(0);
            }
            pending.push((sub.pkid, refusals));
        }
    }

    /// Takes `filters` as held: the subscriptions of the persistent session rumqttd resumes for
    /// this connection (they passed the caps when they were made).
    pub fn seed(&mut self, filters: Vec<String>) {
        // A `$SYS` filter is recorded as the filter rumqttd holds (`crate::sys`).
        self.granted.extend(filters.into_iter().map(
            |f| match f.strip_prefix(crate::sys::INTERNAL) {
                Some(sys) => sys.to_owned(),
                None => f,
            },
        ));
    }

    /// Frees the connection's slots of unsubscribed filters (a `$SYS` one is renamed to the
    /// filter rumqttd holds).
    pub fn unsubscribe(&mut self, filters: &mut [String]) {
        for f in filters {
            self.granted.remove(f.as_str());
            self.drop_options(f);
            if let Some(internal) = crate::sys::internal_filter(f) {
                *f = internal;
            }
        }
    }

    /// Keeps the options of a granted filter that sets any; `held`: it was held already.
    fn set_options(&mut self, f: &Filter, held: bool) {
        let options = Options {
            no_local: f.nolocal,
            retain_as_published: f.preserve_retain,
            skip_retained: match f.retain_forward_rule {
                RetainForwardRule::OnEverySubscribe => false,
                RetainForwardRule::OnNewSubscribe => held,
                RetainForwardRule::Never => true,
            },
        };
        self.drop_options(&f.path);
        if options.no_local || options.retain_as_published || options.skip_retained {
            if options.no_local {
                NO_LOCAL_FILTERS.fetch_add(1, Ordering::Relaxed);
            }
            self.options.insert(f.path.clone(), options);
        }
    }

    fn drop_options(&mut self, filter: &str) {
        if self.options.remove(filter).is_some_and(|o| o.no_local) {
            NO_LOCAL_FILTERS.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether a publish on `topic` goes to this client (`None`: not sent), and its retain
    /// flag, by the options of the filters it matches: sent if one matching filter wants it
    /// (noLocal filters do not want the connection's own publishes; skip-retained filters do
    /// not want retained messages sent on subscribe), retained if rumqttd sends it as
    /// retained or it was published retained and a wanting filter has retainAsPublished.
    /// rumqttd does not say which subscription a message is for, so an overlapping filter
    /// without these options takes it (documented in docs/mqtt.md).
    pub fn forward(&self, topic: &[u8], sending: Sending) -> Option<bool> {
        let plain = Some(sending.retained_now);
        if topic.first() == Some(&b'$') {
            // A `$SYS` topic: only for a `$SYS` filter of this connection (`#` is not one).
            let topic = std::str::from_utf8(topic).ok()?;
            let held = self.granted.iter().any(|g| {
                crate::sys::internal_filter(g).is_some()
                    && TopicFilter::parse(g).is_ok_and(|f| f.matches(topic))
            });
            return held.then_some(sending.retained_now);
        }
        if self.options.is_empty() {
            return plain;
        }
        let Ok(topic) = std::str::from_utf8(topic) else {
            return plain;
        };
        let (mut matched, mut wanted, mut as_published) = (false, false, false);
        for path in &self.granted {
            let unshared = match path.strip_prefix("$share/") {
                Some(rest) => rest.split_once('/').map_or(rest, |(_, f)| f),
                None => path,
            };
            if !TopicFilter::parse(unshared).is_ok_and(|f| f.matches(topic)) {
                continue;
            }
            matched = true;
            let o = self.options.get(path);
            if o.is_some_and(|o| {
                (sending.own && o.no_local) || (sending.retained_now && o.skip_retained)
            }) {
                continue;
            }
            wanted = true;
            as_published |= o.is_some_and(|o| o.retain_as_published);
        }
        if !matched {
            return plain;
        }
        wanted.then_some(sending.retained_now || (sending.retained_by_publisher && as_published))
    }

    /// Puts the refused filters' codes back into the SUBACK for their SUBSCRIBE.
    pub fn complete(&self, ack: &mut SubAck) {
        let refusals = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            match pending.iter().position(|(pkid, _)| *pkid == ack.pkid) {
                Some(i) => pending.remove(i).1,
                None => return,
            }
        };
        for (at, code) in refusals {
            let at = at.min(ack.return_codes.len());
            ack.return_codes.insert(at, code);
        }
    }

    /// Whether this connection holds `filter`.
    pub fn holds(&self, filter: &str) -> bool {
        self.granted.contains(filter)
    }

    /// Filters this connection holds.
    pub fn len(&self) -> usize {
        self.granted.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.granted.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::{Caps, MAX_FILTER_LEVELS};
    use crate::config::LimitsConfig;
    use rumqttd::protocol::QoS;

    fn caps(per_client: usize, distinct: usize) -> BrokerCaps {
        let mut caps = Caps::from(&LimitsConfig::default());
        caps.max_subscriptions_per_client = per_client;
        caps.max_filters = distinct;
        BrokerCaps::new(caps)
    }

    fn subscribe(pkid: u16, paths: &[String]) -> Subscribe {
        let filters = paths
            .iter()
            .map(|p| Filter {
                path: p.clone(),
                qos: QoS::AtLeastOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: RetainForwardRule::OnEverySubscribe,
            })
            .collect();
        Subscribe { pkid, filters }
    }

    /// What rumqttd answers for the filters it was given.
    fn router_ack(sub: &Subscribe) -> SubAck {
        SubAck {
            pkid: sub.pkid,
            return_codes: sub
                .filters
                .iter()
                .map(|_| SubscribeReasonCode::QoS1)
                .collect(),
        }
    }

    #[test]
    fn excess_and_invalid_filters_are_refused_in_place() {
        let caps = caps(3, 100);
        let mut conn = ConnectionSubscriptions::default();
        let deep = vec!["a"; MAX_FILTER_LEVELS + 1].join("/");
        let paths: Vec<String> = ["a/1", "a/2", &deep, "a/3", "a/4", "a/1"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let mut sub = subscribe(7, &paths);
        conn.filter(&mut sub, &caps, true, &|_| true);
        let kept: Vec<&str> = sub.filters.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(kept, ["a/1", "a/2", "a/3", "a/1"]);
        let mut ack = router_ack(&sub);
        conn.complete(&mut ack);
        use SubscribeReasonCode::*;
        assert_eq!(
            ack.return_codes,
            [QoS1, QoS1, TopicFilterInvalid, QoS1, QuotaExceeded, QoS1]
        );
        assert_eq!(caps.counters.filters_refused.load(Ordering::Relaxed), 1);
        assert_eq!(
            caps.counters.subscriptions_refused.load(Ordering::Relaxed),
            1
        );

        // After an unsubscribe the slot is free again; v4 gets 0x80 for every refusal.
        conn.unsubscribe(&mut ["a/2".to_owned()]);
        let mut sub = subscribe(8, &["a/4".into(), "a/5".into()]);
        conn.filter(&mut sub, &caps, false, &|_| true);
        let mut ack = router_ack(&sub);
        conn.complete(&mut ack);
        assert_eq!(ack.return_codes, [QoS1, Failure]);
        assert_eq!(conn.len(), 3);
    }

    #[test]
    fn every_filter_refused_leaves_an_empty_subscribe_and_a_full_suback() {
        let caps = caps(100, 1);
        let mut a = ConnectionSubscriptions::default();
        let mut sub = subscribe(1, &["x/1".into()]);
        a.filter(&mut sub, &caps, true, &|_| true);
        let mut b = ConnectionSubscriptions::default();
        let mut sub = subscribe(2, &["x/2".into(), "x/3".into()]);
        b.filter(&mut sub, &caps, true, &|_| true);
        assert!(sub.filters.is_empty());
        let mut ack = router_ack(&sub);
        b.complete(&mut ack);
        use SubscribeReasonCode::*;
        assert_eq!(ack.return_codes, [QuotaExceeded, QuotaExceeded]);
        // An existing filter is still open to others.
        let mut sub = subscribe(3, &["x/1".into()]);
        b.filter(&mut sub, &caps, true, &|_| true);
        assert_eq!(sub.filters.len(), 1);
        assert_eq!(caps.filters(), 1);
    }
}
