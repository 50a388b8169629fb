//! The wrapper's corrections to packets in both directions, beside its policy: see
//! [`crate::delivery`].

use std::sync::atomic::Ordering;

use bytes::BytesMut;
use rumqttd::protocol::{Error, Packet};

use super::{Next, PolicyProtocol};
use crate::client_limits::Inbound;
use crate::delivery;
use crate::wire::{packet_size_limit, publish_qos};
use edgewatch_protocol::TopicFilter;

impl<P> PolicyProtocol<P> {
    /// Our corrections to a packet rumqttd is about to get (see [`crate::delivery`]); `held`:
    /// for an UNSUBSCRIBE, whether the connection held each filter. An error closes the
    /// connection.
    pub(super) fn correct_inbound(
        &mut self,
        packet: &mut Packet,
        header: u8,
        held: Option<Vec<bool>>,
        max_size: usize,
    ) -> Result<(), Error> {
        match packet {
            Packet::Publish(publish, props) => {
                crate::sys::TRAFFIC
                    .publishes_received
                    .fetch_add(1, Ordering::Relaxed);
                let from = self.delivery.connection;
                delivery::mark(publish.retain, publish_qos(header), from, props);
            }
            Packet::Unsubscribe(unsub, _) => {
                let held = held.unwrap_or_else(|| vec![true; unsub.filters.len()]);
                self.delivery.unsubscribed(unsub.pkid, &held)?;
            }
            Packet::Connect(_, props, ..) => {
                self.connected = true;
                if let Some(p) = props {
                    self.delivery.client_max_packet =
                        p.max_packet_size.and_then(|m| usize::try_from(m).ok());
                    // No broker-to-client topic aliases: rumqttd assigns them per subscription
                    // filter, not per topic, so a message on `b` could go out under the alias
                    // it gave `a`. Without a Topic Alias Maximum from the client it uses none.
                    p.topic_alias_max = None;
                }
                if self.v5 {
                    self.delivery.broker_max_packet = Some(packet_size_limit(max_size));
                }
            }
            _ => self.delivery.inbound(packet)?,
        }
        Ok(())
    }

    /// Whether `packet` is the client's PUBACK of a message queued for its session before a
    /// restart (not rumqttd's to see: [`crate::durable::queue`]).
    pub(super) fn queued_ack(&self, packet: &Packet) -> bool {
        match (packet, &self.durable) {
            (Packet::PubAck(ack, _), Some(durable)) => durable.queued_ack(ack.pkid),
            _ => false,
        }
    }

    /// The caps and rate limit on a packet read (see [`crate::client_limits`]).
    pub(super) fn limit(&mut self, packet: &mut Packet, header: u8) -> Next {
        let permissions = self.permissions.as_ref();
        let may_read = |filter: &str| {
            permissions.is_none_or(|p| TopicFilter::parse(filter).is_ok_and(|f| p.may_read(&f)))
        };
        let verdict = match &mut self.limits {
            Some(l) => l.inbound(packet, header, self.v5, &may_read),
            None => Ok(Inbound::Pass),
        };
        match verdict {
            Ok(Inbound::Pass) => Next::Keep,
            Ok(_) => Next::Skip,
            Err(err) if matches!(packet, Packet::Connect(..)) => Next::Fail(err),
            Err(err) => Next::Close(err),
        }
    }

    /// Writes the messages queued for this connection's session before a restart, after the
    /// CONNACK that accepted it ([`crate::durable::queue`]); returns the bytes written.
    pub(super) fn write_queued(&self, write: &mut BytesMut) -> usize {
        let Some(durable) = &self.durable else {
            return 0;
        };
        let before = write.len();
        durable.after_connack(self.v5, write);
        write.len() - before
    }

    /// For an UNSUBSCRIBE: whether this connection holds each of its filters.
    pub(super) fn held(&self, packet: &Packet) -> Option<Vec<bool>> {
        let (Packet::Unsubscribe(unsub, _), Some(limits)) = (packet, &self.limits) else {
            return None;
        };
        Some(unsub.filters.iter().map(|f| limits.holds(f)).collect())
    }

    /// A client's packet over the broker's maximum size: MQTT 5 clients get DISCONNECT 0x95
    /// (packet too large) before the connection closes; MQTT 3.1.1 has no way to say it.
    pub(super) fn refuse_oversize(
        &mut self,
        stream: &mut BytesMut,
        err: Error,
    ) -> Result<Packet, Error> {
        stream.clear();
        if let Some(limits) = &self.limits {
            limits
                .caps()
                .counters
                .packets_too_large
                .fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(%err, "MQTT packet over the maximum packet size: connection closed");
        if !self.v5 {
            return self.close(err);
        }
        self.refusing = true;
        self.delivery
            .disconnect(rumqttd::protocol::DisconnectReasonCode::PacketTooLarge);
        self.delivery.synthetic().ok_or(err)
    }
}
