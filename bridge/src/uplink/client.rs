//! The MQTT client of an uplink (rumqttc), MQTT 3.1.1 or 5 behind one small interface: one
//! connection at a time, each made afresh (no state of rumqttc's is kept across a reconnect:
//! the uplink resends what was not acknowledged itself, from its cursor).

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, PubAckReason, PublishProperties};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::{Outgoing, QoS};

use super::config::{Protocol, UplinkConfig};

/// What the connection did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Happened {
    /// The broker accepted the connection.
    Connected,
    /// The client wrote the next PUBLISH with this packet id.
    Written(u16),
    /// The broker acknowledged a PUBLISH; `refused` holds an MQTT 5 failure reason that
    /// sending again cannot mend (not authorised, topic or payload format invalid). Any other
    /// failure reason ends the connection, so the message is sent again from the cursor.
    Acked {
        packet_id: u16,
        refused: Option<String>,
    },
    /// A PUBLISH from the broker (the downlink's subscriptions).
    Message { topic: String, payload: Bytes },
    /// Something else (pings, ...).
    Other,
}

/// The client half: hands messages to the event loop.
pub(super) enum Client {
    V311(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// The connection half: must be polled for anything to happen.
pub(super) enum Connection {
    V311(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("uplink::Client")
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("uplink::Connection")
    }
}

/// A new client and its connection (not connected yet: the first poll connects). `capacity`
/// bounds the requests waiting for the event loop; the uplink never has more than its window
/// plus one round of presence in it.
/// With `socket`, rumqttc connects to that Unix socket (an `mqtts://` connection made by
/// `tls`) instead of the URL's host.
pub(super) fn connect(
    cfg: &UplinkConfig,
    capacity: usize,
    socket: Option<&std::path::Path>,
) -> Result<(Client, Connection), String> {
    let up = super::tunnel::Upstream::parse(&cfg.url)?;
    let (host, port) = match socket {
        Some(path) => (path.display().to_string(), 0),
        None => (up.host, up.port),
    };
    let id = cfg.client_id();
    let max_packet = 16 * 1024 * 1024;
    Ok(match cfg.protocol {
        Protocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(id, host, port);
            o.set_keep_alive(cfg.keep_alive())
                .set_clean_session(true)
                .set_inflight(cfg.inflight)
                .set_max_packet_size(max_packet, max_packet);
            if let Some(user) = &cfg.username {
                o.set_credentials(user, cfg.password.clone().unwrap_or_default());
            }
            if socket.is_some() {
                o.set_transport(rumqttc::Transport::Unix);
            }
            let (c, l) = rumqttc::AsyncClient::new(o, capacity);
            (Client::V311(c), Connection::V311(Box::new(l)))
        }
        Protocol::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(id, host, port);
            o.set_keep_alive(cfg.keep_alive())
                .set_clean_start(true)
                .set_outgoing_inflight_upper_limit(cfg.inflight)
                .set_max_packet_size(Some(max_packet as u32));
            if let Some(user) = &cfg.username {
                o.set_credentials(user, cfg.password.clone().unwrap_or_default());
            }
            if socket.is_some() {
                o.set_transport(rumqttc::Transport::Unix);
            }
            let (c, l) = rumqttc::v5::AsyncClient::new(o, capacity);
            (Client::V5(c), Connection::V5(Box::new(l)))
        }
    })
}

impl Client {
    /// Queues a QoS 1 PUBLISH without waiting. `seqs` (first, last) go into MQTT 5 user
    /// properties `seq` (and `lastSeq` for several readings).
    pub(super) fn publish(
        &self,
        topic: String,
        payload: Bytes,
        retain: bool,
        seqs: Option<(u64, u64)>,
    ) -> Result<(), String> {
        match self {
            Client::V311(c) => c
                .try_publish(topic, QoS::AtLeastOnce, retain, payload)
                .map_err(|e| e.to_string()),
            Client::V5(c) => {
                let mut props = PublishProperties::default();
                if let Some((first, last)) = seqs {
                    props
                        .user_properties
                        .push(("seq".into(), first.to_string()));
                    if last != first {
                        props
                            .user_properties
                            .push(("lastSeq".into(), last.to_string()));
                    }
                }
                if seqs.is_some() {
                    props.content_type = Some("application/json".into());
                }
                c.try_publish_with_properties(topic, QoS5::AtLeastOnce, retain, payload, props)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Subscribes to `filters` with QoS 1 (MQTT 5: no local, so the uplink's own messages do
    /// not come back).
    pub(super) fn subscribe(&self, filters: &[String]) -> Result<(), String> {
        match self {
            Client::V311(c) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
                )
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe_many(filters.iter().map(|f| {
                    let mut filter =
                        rumqttc::v5::mqttbytes::v5::Filter::new(f.clone(), QoS5::AtLeastOnce);
                    filter.nolocal = true;
                    filter
                }))
                .map_err(|e| e.to_string()),
        }
    }

    /// Asks for an orderly DISCONNECT (best effort).
    pub(super) fn disconnect(&self) {
        match self {
            Client::V311(c) => drop(c.try_disconnect()),
            Client::V5(c) => drop(c.try_disconnect()),
        }
    }
}

impl Connection {
    /// The next thing the connection did; an error ends the connection.
    pub(super) async fn poll(&mut self) -> Result<Happened, String> {
        match self {
            Connection::V311(l) => match l.poll().await.map_err(|e| e.to_string())? {
                rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) => Ok(Happened::Connected),
                rumqttc::Event::Incoming(rumqttc::Packet::PubAck(a)) => Ok(Happened::Acked {
                    packet_id: a.pkid,
                    refused: None,
                }),
                rumqttc::Event::Outgoing(Outgoing::Publish(p)) => Ok(Happened::Written(p)),
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => Ok(Happened::Message {
                    topic: p.topic,
                    payload: p.payload,
                }),
                _ => Ok(Happened::Other),
            },
            Connection::V5(l) => match l.poll().await.map_err(|e| e.to_string())? {
                rumqttc::v5::Event::Incoming(Packet5::ConnAck(_)) => Ok(Happened::Connected),
                rumqttc::v5::Event::Incoming(Packet5::PubAck(a)) => {
                    let refused = match a.reason {
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => None,
                        // Sending it again cannot help: counted and skipped.
                        r @ (PubAckReason::NotAuthorized
                        | PubAckReason::TopicNameInvalid
                        | PubAckReason::PayloadFormatInvalid) => Some(format!("{r:?}")),
                        // Unspecified, implementation specific, quota exceeded, packet id in
                        // use: the broker may take it later.
                        other => return Err(format!("the broker refused a message for now ({other:?}); sending again from the cursor")),
                    };
                    Ok(Happened::Acked {
                        packet_id: a.pkid,
                        refused,
                    })
                }
                rumqttc::v5::Event::Outgoing(Outgoing::Publish(p)) => Ok(Happened::Written(p)),
                rumqttc::v5::Event::Incoming(Packet5::Publish(p)) => Ok(Happened::Message {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload,
                }),
                _ => Ok(Happened::Other),
            },
        }
    }
}

/// The delay before reconnect attempt `attempt` (0 first): doubling from `min` up to `max`,
/// with up to a quarter taken off at random so that many hubs do not come back in step.
pub(super) fn backoff(attempt: u32, min: Duration, max: Duration, random: u64) -> Duration {
    let base = min.saturating_mul(1u32 << attempt.min(20)).min(max);
    let jitter = base / 4;
    let off = if jitter.is_zero() {
        Duration::ZERO
    } else {
        Duration::from_nanos(random % (jitter.as_nanos() as u64).max(1))
    };
    base - off
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_maximum_with_jitter() {
        let (min, max) = (Duration::from_millis(200), Duration::from_secs(30));
        assert_eq!(backoff(0, min, max, 0), min);
        assert_eq!(backoff(3, min, max, 0), Duration::from_millis(1600));
        assert_eq!(backoff(30, min, max, 0), max);
        let j = backoff(3, min, max, u64::MAX);
        assert!(
            j >= Duration::from_millis(1200) && j <= Duration::from_millis(1600),
            "{j:?}"
        );
    }
}
