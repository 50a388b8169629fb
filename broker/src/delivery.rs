//! What the broker writes to one client, corrected where rumqttd 0.20 gets it wrong, by the
//! codec wrapper ([`crate::connect_policy`]), which sees every packet both ways.
//!
//! * **Delivery QoS.** rumqttd sends every message at the subscription's QoS; MQTT says
//!   min(publish QoS, subscription QoS). rumqttd keeps no publish QoS with a stored message,
//!   so the wrapper marks each publish it reads with its QoS and retain flag ([`mark`], in the
//!   payload-format-indicator property, which the router passes through untouched) and takes
//!   the mark off again before writing ([`take_mark`]). A QoS 1 or 2 send of a QoS 0 message
//!   goes out as QoS 0, a QoS 2 send of a QoS 1 message as QoS 1. rumqttd still waits for the
//!   acknowledgements it asked for, so the wrapper answers them itself: a PUBACK (or PUBREC,
//!   then PUBCOMP for its PUBREL, which the client never sees) for a message sent as QoS 0, a
//!   PUBREC for the client's PUBACK of a message sent as QoS 1. rumqttd refuses acks out of
//!   order, so ours are queued behind the client's own and released in send order.
//! * **Client Maximum Packet Size** (MQTT 5 CONNECT): a packet larger than the client allows
//!   is not sent, as the specification asks; its acknowledgement is made up in the same way.
//! * **UNSUBACK.** rumqttd answers an UNSUBSCRIBE with one UNSUBACK per filter it removed and
//!   none for a filter it did not hold (the client then waits forever). The wrapper answers
//!   each UNSUBSCRIBE once, with one reason per filter (MQTT 5: 0x11 no subscription existed
//!   for a filter the connection did not hold): it hands rumqttd a PINGREQ after the
//!   UNSUBSCRIBE and writes the UNSUBACK in place of its PINGRESP, which the router answers in
//!   order with its other acks; rumqttd's own UNSUBACKs are not written.
//! * **Oversize packets from the client** (MQTT 5): DISCONNECT 0x95 (packet too large) is
//!   written before the connection is closed, in the same way (in place of a PINGRESP).
//!
//! Everything here is per connection and bounded: the acknowledgement queues hold at most the
//! messages rumqttd has in flight for the client (it sends no more until they are
//! acknowledged), and at most [`MAX_REPLIES`] replies wait for their PINGRESP (past that the
//! connection is closed, counted by the caller).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{
    Disconnect, DisconnectReasonCode, Error, Packet, PingReq, PubAck, PubAckReason, PubComp,
    PubCompReason, PubRec, PubRecReason, Publish, PublishProperties, UnsubAck, UnsubAckReason,
};

/// A `$SYS` message seen again within this long is the same one (see `Delivery::seen_sys`).
const SYS_REPEAT: Duration = Duration::from_secs(2);

/// At most this many `$SYS` topics are remembered per connection (the hub publishes fewer).
const MAX_SYS_TOPICS: usize = 64;

/// Replies waiting for a PINGRESP to take the place of, at most, per connection.
pub const MAX_REPLIES: usize = 4096;

/// The mark's bits in the payload-format-indicator byte (MQTT allows 0 and 1 there, so a
/// marked value is never a client's).
const MARKED: u8 = 0x80;
/// The publish had no payload format indicator.
const NO_FORMAT: u8 = 0x40;
/// The publish was retained.
const RETAINED: u8 = 0x20;
/// The publish's QoS, two bits from here.
const QOS_SHIFT: u8 = 3;

/// The user property naming the connection a publish came from, added while some client
/// holds a noLocal subscription (a NUL-led key: no valid MQTT string has one).
const ORIGIN_KEY: &str = "\u{0}edgewatch-origin";

/// Filters with noLocal held now, over every connection: the origin is only added to publishes
/// while there are some.
pub(crate) static NO_LOCAL_FILTERS: AtomicUsize = AtomicUsize::new(0);

/// Numbers connections, for noLocal.
static NEXT_CONNECTION: AtomicU32 = AtomicU32::new(1);

/// What a publish was when a client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub qos: u8,
    pub retain: bool,
    /// The connection it came from, when noLocal filters were held when it came.
    pub connection: Option<u32>,
}

/// Marks a publish read from a client with its QoS and retain flag (see the module doc), and
/// with the connection it came from (`from`) while noLocal subscriptions exist.
pub fn mark(retain: bool, qos: u8, from: u32, props: &mut Option<PublishProperties>) {
    let props = props.get_or_insert_with(PublishProperties::default);
    if NO_LOCAL_FILTERS.load(Ordering::Relaxed) > 0 {
        props
            .user_properties
            .push((ORIGIN_KEY.to_owned(), from.to_string()));
    }
    let format = match props.payload_format_indicator {
        Some(v) => v & 1,
        None => NO_FORMAT,
    };
    let retained = if retain { RETAINED } else { 0 };
    props.payload_format_indicator = Some(MARKED | format | retained | ((qos & 0b11) << QOS_SHIFT));
}

/// A QoS 0 publish from an in-process link, marked as [`mark`] does for clients' publishes.
pub fn local_publish(topic: impl Into<Bytes>, payload: impl Into<Bytes>, retain: bool) -> Packet {
    let mut props = None;
    mark(retain, 0, 0, &mut props);
    Packet::Publish(Publish::new(topic.into(), payload.into(), retain), props)
}

/// Takes the mark off a publish about to be written, restoring its properties as the client
/// sent them; `None` for an unmarked publish (from an in-process link or a will).
pub fn take_mark(props: &mut Option<PublishProperties>) -> Option<Origin> {
    let p = props.as_mut()?;
    let m = p.payload_format_indicator.filter(|m| m & MARKED != 0)?;
    p.payload_format_indicator = (m & NO_FORMAT == 0).then_some(m & 1);
    let mut connection = None;
    if !p.user_properties.is_empty() {
        p.user_properties.retain(|(k, v)| {
            let ours = k == ORIGIN_KEY;
            if ours {
                connection = v.parse().ok();
            }
            !ours
        });
    }
    if *p == PublishProperties::default() {
        *props = None;
    }
    Some(Origin {
        qos: (m >> QOS_SHIFT) & 0b11,
        retain: m & RETAINED != 0,
        connection,
    })
}

/// Who acknowledges a message rumqttd sent with a packet id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acker {
    /// The client: it got the message at the QoS rumqttd asked for (or QoS 1 for 2).
    Client,
    /// We do: a PUBACK (QoS 1) for a message the client got at QoS 0 or not at all.
    OurPubAck,
    /// We do: a PUBREC (QoS 2) for a message the client got at QoS 0 or not at all.
    OurPubRec,
}

/// What the next PINGRESP from rumqttd stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    /// The client's own PINGREQ.
    Pong,
    /// The answer to an UNSUBSCRIBE.
    Unsubscribed(u16, Vec<UnsubAckReason>),
    /// A DISCONNECT with this reason, after which the connection is closed.
    Disconnect(DisconnectReasonCode),
}

/// A packet the wrapper hands rumqttd although the client did not send it.
#[derive(Debug)]
enum Synthetic {
    /// An acknowledgement made by us.
    Ack(Box<Packet>),
    /// A PINGREQ whose PINGRESP becomes this reply.
    Ping(Reply),
    /// The end of the connection.
    Close,
}

#[derive(Debug, Default)]
struct State {
    /// For rumqttd, ahead of what the client sends.
    stash: VecDeque<Synthetic>,
    /// QoS 1/2 messages sent, waiting for their PUBACK or PUBREC, in send order.
    acks: VecDeque<(u16, Acker)>,
    /// PUBRELs sent, waiting for their PUBCOMP, in send order: (packet id, made by us).
    comps: VecDeque<(u16, bool)>,
    /// QoS 2 sends that went out as QoS 1: the client's PUBACK is a PUBREC for rumqttd.
    as_qos1: Vec<u16>,
    /// PUBRELs rumqttd will write that the client must not see (we make their PUBCOMP).
    our_pubrels: Vec<u16>,
    /// What each PINGRESP stands for, in the order rumqttd was given the PINGREQs.
    replies: VecDeque<Reply>,
    /// The last `$SYS` message written per topic: (payload address and length, when).
    sys_sent: HashMap<Bytes, ((usize, usize), Instant)>,
}

impl State {
    /// Moves our acknowledgements at the head of the queues to the stash, in order.
    fn release(&mut self) {
        while let Some(&(pkid, acker)) = self.acks.front() {
            let ack = match acker {
                Acker::Client => break,
                Acker::OurPubAck => Packet::PubAck(
                    PubAck {
                        pkid,
                        reason: PubAckReason::Success,
                    },
                    None,
                ),
                Acker::OurPubRec => {
                    self.our_pubrels.push(pkid);
                    Packet::PubRec(
                        PubRec {
                            pkid,
                            reason: PubRecReason::Success,
                        },
                        None,
                    )
                }
            };
            self.acks.pop_front();
            self.stash.push_back(Synthetic::Ack(Box::new(ack)));
        }
        while let Some(&(pkid, true)) = self.comps.front() {
            self.comps.pop_front();
            let comp = PubComp {
                pkid,
                reason: PubCompReason::Success,
            };
            self.stash
                .push_back(Synthetic::Ack(Box::new(Packet::PubComp(comp, None))));
        }
    }
}

/// One connection's corrections (see the module doc).
#[derive(Debug)]
pub struct Delivery {
    state: Mutex<State>,
    /// This connection's number (for noLocal).
    pub connection: u32,
    /// Whether the client speaks MQTT 5 (3.1.1 has no properties).
    pub v5: bool,
    /// The client's Maximum Packet Size (MQTT 5 CONNECT), bytes.
    pub client_max_packet: Option<usize>,
    /// The largest packet the broker reads from this client, bytes, as a CONNACK states it.
    pub broker_max_packet: Option<u32>,
}

impl Delivery {
    /// A new connection's: `v5` when its client speaks MQTT 5.
    pub fn new(v5: bool) -> Self {
        Self {
            state: Mutex::default(),
            connection: NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed),
            v5,
            client_max_packet: None,
            broker_max_packet: None,
        }
    }
}

/// How a publish came to be written, for [`Delivery::write`]'s `forward`.
#[derive(Debug, Clone, Copy)]
pub struct Sending {
    /// rumqttd sends it as a retained message (on a subscribe).
    pub retained_now: bool,
    /// Its publisher retained it.
    pub retained_by_publisher: bool,
    /// It came from this very connection.
    pub own: bool,
}

impl Delivery {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A packet for rumqttd that the client did not send, if one is due: read before the
    /// client's next packet.
    pub fn synthetic(&self) -> Option<Packet> {
        let mut st = self.state();
        match st.stash.pop_front()? {
            Synthetic::Ack(packet) => Some(*packet),
            Synthetic::Ping(reply) => {
                st.replies.push_back(reply);
                Some(Packet::PingReq(PingReq))
            }
            Synthetic::Close => Some(Packet::Disconnect(
                Disconnect {
                    reason_code: DisconnectReasonCode::NormalDisconnection,
                },
                None,
            )),
        }
    }

    /// Corrects a packet read from the client before rumqttd gets it: acknowledgements of
    /// messages whose QoS we lowered, and the client's own PINGREQs. `Err` when too many
    /// replies wait (the caller closes the connection).
    pub fn inbound(&self, packet: &mut Packet) -> Result<(), Error> {
        let mut st = self.state();
        match packet {
            Packet::PubAck(ack, _) => {
                let pkid = ack.pkid;
                if st.acks.front() == Some(&(pkid, Acker::Client)) {
                    st.acks.pop_front();
                }
                if let Some(i) = st.as_qos1.iter().position(|p| *p == pkid) {
                    st.as_qos1.swap_remove(i);
                    st.our_pubrels.push(pkid);
                    let rec = PubRec {
                        pkid,
                        reason: PubRecReason::Success,
                    };
                    *packet = Packet::PubRec(rec, None);
                }
                st.release();
            }
            Packet::PubRec(rec, _) => {
                if st.acks.front() == Some(&(rec.pkid, Acker::Client)) {
                    st.acks.pop_front();
                }
                st.release();
            }
            Packet::PubComp(comp, _) => {
                if st.comps.front() == Some(&(comp.pkid, false)) {
                    st.comps.pop_front();
                }
                st.release();
            }
            Packet::PingReq(_) => return push_reply(&mut st, Reply::Pong, false),
            _ => {}
        }
        Ok(())
    }

    /// Answers an UNSUBSCRIBE of `filters` (whether the connection held each) with one
    /// UNSUBACK, after rumqttd has handled it.
    pub fn unsubscribed(&self, pkid: u16, held: &[bool]) -> Result<(), Error> {
        let reasons = held
            .iter()
            .map(|&h| {
                if h {
                    UnsubAckReason::Success
                } else {
                    UnsubAckReason::NoSubscriptionExisted
                }
            })
            .collect();
        push_reply(&mut self.state(), Reply::Unsubscribed(pkid, reasons), true)
    }

    /// Writes DISCONNECT with `reason` to the client, then closes the connection.
    pub fn disconnect(&self, reason: DisconnectReasonCode) {
        let mut st = self.state();
        st.stash
            .push_back(Synthetic::Ping(Reply::Disconnect(reason)));
    }

    /// Writes `packet` to `out` with `encode` (rumqttd's codec), corrected; returns the bytes
    /// written. `forward` decides a publish by its topic and how it is sent: `None` not to
    /// send it to this client, else the retain flag to send it with.
    pub fn write(
        &self,
        packet: Packet,
        out: &mut BytesMut,
        encode: &dyn Fn(Packet, &mut BytesMut) -> Result<usize, Error>,
        forward: &dyn Fn(&[u8], Sending) -> Option<bool>,
    ) -> Result<usize, Error> {
        match packet {
            Packet::Publish(publish, props) => self.publish(publish, props, out, encode, forward),
            Packet::PubRel(rel, props) => {
                let mut st = self.state();
                if let Some(i) = st.our_pubrels.iter().position(|p| *p == rel.pkid) {
                    st.our_pubrels.swap_remove(i);
                    st.comps.push_back((rel.pkid, true));
                    st.release();
                    return Ok(0);
                }
                st.comps.push_back((rel.pkid, false));
                drop(st);
                encode(Packet::PubRel(rel, props), out)
            }
            Packet::PingResp(pong) => {
                let reply = self.state().replies.pop_front().unwrap_or(Reply::Pong);
                match reply {
                    Reply::Pong => encode(Packet::PingResp(pong), out),
                    Reply::Unsubscribed(pkid, reasons) => {
                        encode(Packet::UnsubAck(UnsubAck { pkid, reasons }, None), out)
                    }
                    Reply::Disconnect(reason_code) => {
                        self.state().stash.push_back(Synthetic::Close);
                        encode(Packet::Disconnect(Disconnect { reason_code }, None), out)
                    }
                }
            }
            // Ours go out in place of a PINGRESP (see the module doc).
            Packet::UnsubAck(..) => Ok(0),
            other => encode(other, out),
        }
    }

    fn publish(
        &self,
        mut publish: Publish,
        mut props: Option<PublishProperties>,
        out: &mut BytesMut,
        encode: &dyn Fn(Packet, &mut BytesMut) -> Result<usize, Error>,
        forward: &dyn Fn(&[u8], Sending) -> Option<bool>,
    ) -> Result<usize, Error> {
        let origin = take_mark(&mut props);
        if !self.v5 {
            // An MQTT 5 publisher's properties: rumqttd's 3.1.1 encoder panics on any
            // (`unreachable!`), ending the subscriber's connection.
            props = None;
        }
        let sys = crate::sys::sys_topic(&publish.topic).map(Bytes::copy_from_slice);
        let sending = Sending {
            retained_now: publish.retain,
            retained_by_publisher: origin.is_some_and(|o| o.retain),
            own: origin.is_some_and(|o| o.connection == Some(self.connection)),
        };
        let mut wanted = forward(sys.as_deref().unwrap_or(&publish.topic), sending);
        if let Some(sys) = sys {
            if wanted.is_some() && self.seen_sys(&sys, &publish.payload) {
                wanted = None;
            }
            publish.topic = sys;
        }
        if let Some(retain) = wanted {
            publish.retain = retain;
        }
        let plain = Publish::new(
            publish.topic.clone(),
            publish.payload.clone(),
            publish.retain,
        );
        let start = out.len();
        let written = encode(Packet::Publish(publish, props.clone()), out)?;
        let header = out[start];
        let sent_qos = (header >> 1) & 0b11;
        let qos = origin.map_or(sent_qos, |o| o.qos.min(sent_qos));
        let dropped = wanted.is_none() || self.client_max_packet.is_some_and(|m| written > m);
        if sent_qos == 0 {
            if dropped {
                out.truncate(start);
                return Ok(0);
            }
            return Ok(written);
        }
        let Some(pkid) = crate::wire::publish_pkid(&out[start..]) else {
            return Ok(written);
        };
        let mut st = self.state();
        if dropped || qos == 0 {
            out.truncate(start);
            let acker = if sent_qos == 1 {
                Acker::OurPubAck
            } else {
                Acker::OurPubRec
            };
            st.acks.push_back((pkid, acker));
            st.release();
            drop(st);
            if dropped {
                return Ok(0);
            }
            return encode(Packet::Publish(plain, props), out);
        }
        if qos == 1 && sent_qos == 2 {
            out[start] = (header & !0b0110) | 0b0010;
            st.as_qos1.push(pkid);
        }
        st.acks.push_back((pkid, Acker::Client));
        Ok(written)
    }
}

impl Delivery {
    /// Whether this `$SYS` message was just written: rumqttd sends it once per matching
    /// filter (a `$SYS` one and `#`, say), which share its payload's bytes.
    fn seen_sys(&self, topic: &Bytes, payload: &Bytes) -> bool {
        let id = (payload.as_ptr() as usize, payload.len());
        let now = Instant::now();
        let mut st = self.state();
        let seen = st
            .sys_sent
            .get(topic)
            .is_some_and(|(last, at)| *last == id && now.duration_since(*at) < SYS_REPEAT);
        if !seen && st.sys_sent.len() < MAX_SYS_TOPICS {
            st.sys_sent.insert(topic.clone(), (id, now));
        }
        seen
    }
}

fn push_reply(st: &mut State, reply: Reply, synthetic: bool) -> Result<(), Error> {
    if st.replies.len() + st.stash.len() >= MAX_REPLIES {
        return Err(Error::BoundaryCrossed(MAX_REPLIES));
    }
    if synthetic {
        st.stash.push_back(Synthetic::Ping(reply));
    } else {
        st.replies.push_back(reply);
    }
    Ok(())
}
