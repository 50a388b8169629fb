//! The caps of [`crate::caps`] and the rate limit of [`crate::rate`] applied to one MQTT
//! connection's packets, by the codec wrapper ([`crate::connect_policy`]).
//!
//! Incoming:
//! * CONNECT: a last will whose topic is over `max_topic_bytes` / `max_topic_levels` closes the
//!   connection; a retained will is accounted in the retained ledger when the client connects
//!   (its retain flag is cleared if it does not fit).
//! * SUBSCRIBE / UNSUBSCRIBE: see [`crate::subscriptions`].
//! * PUBLISH, in this order: a topic over the length or level bound closes the connection (as
//!   Mosquitto does for an invalid topic; nothing is acknowledged); a new topic outside
//!   `sensors/` past `max_topics_outside_readings` is dropped (QoS 0) or closes the connection
//!   (QoS 1/2: it cannot be acknowledged and a silent drop would leave the client waiting);
//!   the rate limit drops (QoS 0) or delays (QoS 1/2); a retained publish that does not fit the
//!   retained caps loses its retain flag and is still delivered.
//!
//! An MQTT 5 publish that names its topic by alias only is checked against the topic the alias
//! stands for (kept per connection, like rumqttd does).
//!
//! A dropped packet is taken out of the read buffer and the codec reads the next one, so
//! rumqttd never sees it and nothing is written back.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttd::protocol::{Error, Packet, Publish, PublishProperties};

use crate::caps::BrokerCaps;
use crate::rate::{PublishRate, RateVerdict};
use crate::subscriptions::ConnectionSubscriptions;

/// What to do with an incoming packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// Hand it to rumqttd.
    Pass,
    /// Drop it: read the next packet instead.
    Drop,
}

/// One connection's view of the caps and its own rate buckets.
#[derive(Debug)]
pub struct ClientLimits {
    caps: Arc<BrokerCaps>,
    subscriptions: ConnectionSubscriptions,
    rate: PublishRate,
    /// MQTT 5 topic aliases this client set: alias → topic (copied, at most rumqttd's 4,096).
    aliases: HashMap<u16, Bytes>,
}

impl Clone for ClientLimits {
    /// A new connection: shared caps, fresh subscriptions and full buckets.
    fn clone(&self) -> Self {
        Self::new(self.caps.clone())
    }
}

impl ClientLimits {
    /// The broker's caps and counters.
    pub fn caps(&self) -> &BrokerCaps {
        &self.caps
    }

    pub fn new(caps: Arc<BrokerCaps>) -> Self {
        let rate = PublishRate::new(
            caps.caps.max_publishes_per_sec,
            caps.caps.max_publish_bytes_per_sec,
            Instant::now(),
        );
        Self {
            caps,
            subscriptions: ConnectionSubscriptions::default(),
            rate,
            aliases: HashMap::new(),
        }
    }

    /// Applies the caps to a packet read from the client; `header` is its first byte (the
    /// publish's QoS is not public in rumqttd's `Publish`). An error closes the connection.
    pub fn inbound(
        &mut self,
        packet: &mut Packet,
        header: u8,
        v5: bool,
        may_read: &dyn Fn(&str) -> bool,
    ) -> Result<Inbound, Error> {
        match packet {
            Packet::Publish(publish, props) => {
                let topic = self.resolve_alias(publish, props.as_ref());
                self.publish(publish, topic, (header >> 1) & 0b11)
            }
            Packet::Subscribe(sub, _) => {
                self.subscriptions.filter(sub, &self.caps, v5, may_read);
                Ok(Inbound::Pass)
            }
            Packet::Unsubscribe(unsub, _) => {
                self.subscriptions.unsubscribe(&mut unsub.filters);
                Ok(Inbound::Pass)
            }
            Packet::Connect(_, _, Some(will), _, _) => {
                self.topic_bounds(&will.topic)?;
                if !self
                    .caps
                    .retain(&will.topic, will.message.len(), will.retain)
                {
                    will.retain = false;
                }
                Ok(Inbound::Pass)
            }
            _ => Ok(Inbound::Pass),
        }
    }

    /// Takes the filters of the persistent session rumqttd resumes as held by this connection
    /// (see [`crate::durable`]).
    pub fn seed_subscriptions(&mut self, filters: Vec<String>) {
        self.subscriptions.seed(filters);
    }

    /// Whether this connection holds `filter` (granted here, or resumed with its session).
    pub fn holds_filter(&self, filter: &str) -> bool {
        self.subscriptions.holds(filter)
    }

    /// The topic an MQTT 5 topic alias of this connection stands for.
    pub fn alias_topic(&self, alias: u16) -> Option<Bytes> {
        self.aliases.get(&alias).cloned()
    }

    /// Completes a packet written to the client (refused filters' SUBACK codes).
    pub fn outbound(&self, packet: &mut Packet) {
        if let Packet::SubAck(ack, _) = packet {
            self.subscriptions.complete(ack);
        }
    }

    /// Whether this connection holds `filter`.
    pub fn holds(&self, filter: &str) -> bool {
        self.subscriptions.holds(filter)
    }

    /// Whether a publish on `topic` goes to this client, and with which retain flag (see
    /// [`ConnectionSubscriptions::forward`]).
    pub fn forward(&self, topic: &[u8], sending: crate::delivery::Sending) -> Option<bool> {
        self.subscriptions.forward(topic, sending)
    }

    fn topic_bounds(&self, topic: &[u8]) -> Result<(), Error> {
        if self.caps.topic_within_bounds(topic) {
            return Ok(());
        }
        self.caps
            .counters
            .topics_refused
            .fetch_add(1, Ordering::Relaxed);
        self.caps
            .warn("topic too long or too deep: connection closed", topic);
        Err(Error::BoundaryCrossed(topic.len()))
    }

    /// The topic a publish goes to: its own, or the one its MQTT 5 alias stands for.
    fn resolve_alias(&mut self, publish: &Publish, props: Option<&PublishProperties>) -> Bytes {
        let Some(alias) = props.and_then(|p| p.topic_alias) else {
            return publish.topic.clone();
        };
        if publish.topic.is_empty() {
            // Unknown alias: rumqttd closes the connection.
            return self.aliases.get(&alias).cloned().unwrap_or_default();
        }
        if (1..=4096).contains(&alias) {
            self.aliases
                .insert(alias, Bytes::copy_from_slice(&publish.topic));
        }
        publish.topic.clone()
    }

    fn publish(&mut self, publish: &mut Publish, topic: Bytes, qos: u8) -> Result<Inbound, Error> {
        let c = &self.caps.counters;
        self.topic_bounds(&topic)?;
        if !self.caps.admit_topic(&topic) {
            c.new_topics_refused.fetch_add(1, Ordering::Relaxed);
            self.caps.warn(
                "new topic refused: max_topics_outside_readings reached",
                &topic,
            );
            return match qos {
                0 => Ok(Inbound::Drop),
                _ => Err(Error::BoundaryCrossed(topic.len())),
            };
        }
        let bytes = topic.len() + publish.payload.len();
        match self.rate.publish(bytes, qos, Instant::now()) {
            RateVerdict::Pass => {}
            RateVerdict::Drop => {
                c.rate_dropped.fetch_add(1, Ordering::Relaxed);
                self.caps
                    .warn("QoS 0 publish dropped: client over its rate", &topic);
                return Ok(Inbound::Drop);
            }
            RateVerdict::Delay(wait) => {
                c.rate_delayed.fetch_add(1, Ordering::Relaxed);
                pause(wait);
            }
        }
        if !self
            .caps
            .retain(&topic, publish.payload.len(), publish.retain)
        {
            publish.retain = false;
        }
        Ok(Inbound::Pass)
    }
}

/// Pauses this connection's task: on the broker's multi-threaded runtime its worker hands its
/// other tasks over first (as [`crate::backpressure`] does for PUBACKs).
fn pause(wait: Duration) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| std::thread::sleep(wait));
        }
        _ => std::thread::sleep(wait),
    }
}
