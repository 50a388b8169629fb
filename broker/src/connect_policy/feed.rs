//! What the bridge gets of each publish a connection reads: the ingest gate's admission
//! (paused, shed, refused or admitted: [`crate::backpressure`]) and the hand-over to the bridge's
//! feed once the packet goes to rumqttd; and the connection's last will, handed over when the
//! connection ends without a DISCONNECT, as rumqttd then publishes it (device presence).

use rumqttd::protocol::{Error, Packet};

use super::{Next, PolicyProtocol};
use crate::backpressure::Admission;
use crate::wire::publish_qos;

/// Unreleased QoS 2 packet ids remembered per connection (see `feed_bridge`).
const QOS2_TRACKED: usize = 1024;

impl<P> PolicyProtocol<P> {
    /// Hands a publish on its way to rumqttd to the bridge ([`IngestGate::forward`]), with its
    /// topic resolved when it came as an MQTT 5 alias. A QoS 2 publish goes once until its
    /// PUBREL: one resent with the same packet id before that is the same message (rumqttd
    /// passes a QoS 2 message on once, at its PUBREL).
    pub(super) fn feed_bridge(&mut self, packet: &Packet, header: u8, pkid: Option<u16>) {
        let gate = match (packet, &self.gate) {
            (Packet::PubRel(rel, _), _) => {
                self.qos2_fed.remove(&rel.pkid);
                return;
            }
            (Packet::Connect(_, _, will, _, _), Some(_)) if self.refused.is_none() => {
                // After our changes: a will the account may not publish is gone already.
                self.will = will.as_ref().map(|w| (w.topic.clone(), w.message.clone()));
                return;
            }
            (Packet::Disconnect(..), _) => {
                self.will = None; // rumqttd discards the will
                return;
            }
            (Packet::Publish(..), Some(gate)) => gate,
            _ => return,
        };
        let Packet::Publish(publish, props) = packet else {
            return;
        };
        if let (2, Some(pkid)) = (publish_qos(header), pkid) {
            // Bounded: past QOS2_TRACKED unreleased messages (no client keeps that many; a
            // client that never sends PUBREL could), a resent one may reach the bridge twice,
            // where the store's duplicate window still catches a timestamped reading.
            let tracked = self.qos2_fed.len() < QOS2_TRACKED || self.qos2_fed.contains(&pkid);
            if tracked && !self.qos2_fed.insert(pkid) {
                return;
            }
        }
        let alias = props.as_ref().and_then(|p| p.topic_alias);
        match (publish.topic.is_empty(), alias, &self.limits) {
            (true, Some(alias), Some(limits)) => {
                if let Some(topic) = limits.alias_topic(alias) {
                    gate.forward(&topic, &publish.payload);
                }
            }
            _ => gate.forward(&publish.topic, &publish.payload),
        }
    }

    /// What the ingest gate says of a packet (see `crate::backpressure`).
    pub(super) fn backlog_admission(&self, packet: &Packet, header: u8) -> Next {
        let (Packet::Publish(publish, _), Some(gate)) = (packet, &self.gate) else {
            return Next::Keep;
        };
        if publish.topic.first() == Some(&b'$') {
            return Next::Keep; // not for the bridge (a denied publish, `$SYS`)
        }
        match gate.admit_publish(publish_qos(header)) {
            Admission::Admitted => Next::Keep,
            // Waited for the bridge for the stall bound in vain: dropped, the next packet if
            // its bytes are here, else rumqttd reads more and calls again.
            Admission::Shed => {
                let n = gate.shed();
                if n.is_power_of_two() || n % 1_000 == 0 {
                    tracing::warn!(shed = n, "dropped a QoS 0 publish: the bridge has been behind for broker.limits.ack_stall_max_secs (a stalled writer?)");
                }
                Next::Skip
            }
            Admission::Refused => {
                let n = gate.refused();
                if n.is_power_of_two() || n % 1_000 == 0 {
                    tracing::warn!(refused = n, "closing an MQTT connection: the bridge is far behind (twice broker.limits.ingest_backlog_max); the device resends its unacknowledged readings after reconnecting");
                }
                Next::Close(Error::InvalidReason(0x97))
            }
        }
    }

    /// The connection ended: without a DISCONNECT, rumqttd publishes its last will, and the
    /// bridge gets it too (unless the whole broker is stopping: then rumqttd publishes none).
    /// A will with an MQTT 5 delay goes to the bridge now, not when it fires.
    pub(super) fn feed_will(&mut self) {
        if let (Some((topic, payload)), Some(gate)) = (self.will.take(), &self.gate) {
            gate.forward_will(&topic, &payload);
        }
    }
}
