//! What the broker writes to clients, where rumqttd 0.20 alone gets it wrong (issue #19,
//! `broker::delivery`): delivery QoS, topic aliases, UNSUBACK, the client's Maximum Packet
//! Size and DISCONNECT 0x95. A raw MQTT client over real TCP, so every byte the broker sends
//! is seen as it is.

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use edgewatch_broker::{Broker, ListenerKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use support::{test_config, WAIT};

/// A packet as read: the fixed header's first byte and the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Raw {
    first: u8,
    body: Vec<u8>,
}

impl Raw {
    fn kind(&self) -> u8 {
        self.first >> 4
    }
    fn qos(&self) -> u8 {
        (self.first >> 1) & 3
    }
}

/// A received PUBLISH, decoded.
#[derive(Debug)]
struct Msg {
    qos: u8,
    retain: bool,
    topic: String,
    pkid: u16,
    /// MQTT 5 property bytes.
    props: Vec<u8>,
    payload: Vec<u8>,
}

fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn read_varint(bytes: &[u8], at: &mut usize) -> usize {
    let (mut n, mut shift) = (0, 0);
    loop {
        let b = bytes[*at];
        *at += 1;
        n |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return n;
        }
    }
}

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    varint(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// A raw client over TCP, speaking MQTT 3.1.1 or 5.
struct Client {
    tcp: TcpStream,
    v5: bool,
    buf: Vec<u8>,
}

impl Client {
    /// Connects with clean start and `props` (MQTT 5 CONNECT property bytes); returns the
    /// client and its CONNACK.
    async fn connect(addr: SocketAddr, id: &str, v5: bool, props: &[u8]) -> (Client, Raw) {
        Self::connect_as(addr, id, v5, props, None).await
    }

    /// [`Client::connect`] with a username and password.
    async fn connect_as(
        addr: SocketAddr,
        id: &str,
        v5: bool,
        props: &[u8],
        login: Option<(&str, &str)>,
    ) -> (Client, Raw) {
        let tcp = timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        let mut c = Client {
            tcp,
            v5,
            buf: Vec::new(),
        };
        let mut body = Vec::new();
        string(b"MQTT", &mut body);
        let flags = if login.is_some() { 0xC2 } else { 0x02 };
        body.extend_from_slice(&[if v5 { 5 } else { 4 }, flags, 0, 30]);
        if v5 {
            varint(props.len(), &mut body);
            body.extend_from_slice(props);
        }
        string(id.as_bytes(), &mut body);
        if let Some((user, password)) = login {
            string(user.as_bytes(), &mut body);
            string(password.as_bytes(), &mut body);
        }
        c.send(&packet(0x10, &body)).await;
        let ack = c.next().await.expect("CONNACK");
        assert_eq!(ack.kind(), 2, "CONNACK");
        assert_eq!(ack.body[1], 0, "accepted");
        (c, ack)
    }

    async fn send(&mut self, bytes: &[u8]) {
        timeout(WAIT, self.tcp.write_all(bytes))
            .await
            .unwrap()
            .unwrap();
    }

    /// The next packet, or `None` when the broker closed the connection.
    async fn next(&mut self) -> Option<Raw> {
        self.next_within(WAIT).await.expect("a packet in time")
    }

    /// The next packet within `wait`: `Err` on timeout, `Ok(None)` on close.
    async fn next_within(&mut self, wait: Duration) -> Result<Option<Raw>, ()> {
        timeout(wait, async {
            loop {
                if self.buf.len() >= 2 {
                    let mut at = 1;
                    if self.buf[1..].iter().take(4).any(|b| b & 0x80 == 0) {
                        let len = read_varint(&self.buf, &mut at);
                        if self.buf.len() >= at + len {
                            let raw = Raw {
                                first: self.buf[0],
                                body: self.buf[at..at + len].to_vec(),
                            };
                            self.buf.drain(..at + len);
                            return Some(raw);
                        }
                    }
                }
                let mut chunk = [0u8; 4096];
                match self.tcp.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .map_err(|_| ())
    }

    async fn subscribe(&mut self, pkid: u16, filters: &[(&str, u8)]) -> Raw {
        let mut body = pkid.to_be_bytes().to_vec();
        if self.v5 {
            body.push(0);
        }
        for (f, options) in filters {
            string(f.as_bytes(), &mut body);
            body.push(*options);
        }
        self.send(&packet(0x82, &body)).await;
        let ack = self.next().await.expect("SUBACK");
        assert_eq!(ack.kind(), 9, "SUBACK: {ack:?}");
        ack
    }

    async fn unsubscribe(&mut self, pkid: u16, filters: &[&str]) {
        let mut body = pkid.to_be_bytes().to_vec();
        if self.v5 {
            body.push(0);
        }
        for f in filters {
            string(f.as_bytes(), &mut body);
        }
        self.send(&packet(0xA2, &body)).await;
    }

    async fn publish(&mut self, topic: &str, qos: u8, pkid: u16, payload: &[u8]) {
        self.publish_as(topic, qos, false, pkid, payload).await;
    }

    async fn publish_as(&mut self, topic: &str, qos: u8, retain: bool, pkid: u16, payload: &[u8]) {
        let mut body = Vec::new();
        string(topic.as_bytes(), &mut body);
        if qos > 0 {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        if self.v5 {
            body.push(0);
        }
        body.extend_from_slice(payload);
        self.send(&packet(0x30 | (qos << 1) | u8::from(retain), &body))
            .await;
    }

    /// Publishes at QoS 1 and waits for the PUBACK.
    async fn publish_acked(&mut self, topic: &str, pkid: u16, payload: &[u8]) {
        self.publish(topic, 1, pkid, payload).await;
        let ack = self.next().await.expect("PUBACK");
        assert_eq!(ack.kind(), 4, "PUBACK: {ack:?}");
    }

    async fn ack(&mut self, kind: u8, pkid: u16) {
        let first = match kind {
            4 => 0x40,
            5 => 0x50,
            7 => 0x70,
            _ => unreachable!(),
        };
        self.send(&packet(first, &pkid.to_be_bytes())).await;
    }

    /// The next PUBLISH, acknowledged as its QoS asks (a QoS 2 one through PUBCOMP).
    async fn message(&mut self) -> Msg {
        loop {
            let raw = self.next().await.expect("a message");
            if raw.kind() == 6 {
                // PUBREL of a QoS 2 message already taken: complete it.
                let pkid = u16::from_be_bytes([raw.body[0], raw.body[1]]);
                self.ack(7, pkid).await;
                continue;
            }
            assert_eq!(raw.kind(), 3, "PUBLISH: {raw:?}");
            let msg = self.decode(&raw);
            match msg.qos {
                1 => self.ack(4, msg.pkid).await,
                2 => self.ack(5, msg.pkid).await,
                _ => {}
            }
            return msg;
        }
    }

    fn decode(&self, raw: &Raw) -> Msg {
        let b = &raw.body;
        let tlen = usize::from(u16::from_be_bytes([b[0], b[1]]));
        let topic = String::from_utf8(b[2..2 + tlen].to_vec()).unwrap();
        let mut at = 2 + tlen;
        let mut pkid = 0;
        if raw.qos() > 0 {
            pkid = u16::from_be_bytes([b[at], b[at + 1]]);
            at += 2;
        }
        let mut props = Vec::new();
        if self.v5 {
            let plen = read_varint(b, &mut at);
            props = b[at..at + plen].to_vec();
            at += plen;
        }
        Msg {
            qos: raw.qos(),
            retain: raw.first & 1 == 1,
            topic,
            pkid,
            props,
            payload: b[at..].to_vec(),
        }
    }

    /// Whether the connection is still up: a PINGREQ is answered (after any messages, which
    /// are acknowledged).
    async fn alive(&mut self) -> bool {
        self.send(&[0xC0, 0]).await;
        loop {
            match self.next().await {
                Some(raw) if raw.kind() == 13 => return true,
                Some(raw) if raw.kind() == 3 => {
                    let m = self.decode(&raw);
                    if m.qos == 1 {
                        self.ack(4, m.pkid).await;
                    }
                }
                Some(_) => {}
                None => return false,
            }
        }
    }
}

/// A broker whose bridge feed is open, as the hub's is.
async fn broker_with_feed() -> (Broker, edgewatch_broker::InboundStream) {
    let mut broker = Broker::prepare(&test_config()).unwrap();
    let feed = broker.ingest_feed().unwrap();
    broker.listen().await.unwrap();
    (broker, feed)
}

async fn broker() -> (Broker, SocketAddr, SocketAddr) {
    let mut cfg = test_config();
    cfg.limits.max_packet_size = 1024;
    let broker = Broker::start(&cfg).await.unwrap();
    let v4 = broker.addr(ListenerKind::Mqtt).unwrap();
    let v5 = broker.addr(ListenerKind::Mqtt5).unwrap();
    (broker, v4, v5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_go_out_at_the_lower_of_publish_and_subscription_qos() {
    let (_broker, v4, v5) = broker().await;
    for (sub_addr, v5_sub) in [(v5, true), (v4, false)] {
        let (mut sub, _) = Client::connect(sub_addr, &format!("sub{v5_sub}"), v5_sub, &[]).await;
        sub.subscribe(1, &[("q/#", 2)]).await;
        let (mut publ, _) = Client::connect(v4, &format!("pub{v5_sub}"), false, &[]).await;
        // Many QoS 0 messages between QoS 1 and 2 ones: the acknowledgements rumqttd waits
        // for are made up in order, or it would stop sending (or close the connection).
        let mut expected = Vec::new();
        let mut pkid = 1;
        for i in 0..60u16 {
            let qos = [0, 0, 1, 0, 2][usize::from(i % 5)];
            let topic = format!("q/{qos}");
            publ.publish(&topic, qos, pkid, format!("{i}").as_bytes())
                .await;
            match qos {
                1 => assert_eq!(publ.next().await.unwrap().kind(), 4),
                2 => {
                    assert_eq!(publ.next().await.unwrap().kind(), 5);
                    publ.send(&packet(0x62, &pkid.to_be_bytes())).await;
                    assert_eq!(publ.next().await.unwrap().kind(), 7);
                }
                _ => {}
            }
            pkid += 1;
            expected.push((qos, i));
        }
        for (qos, i) in expected {
            let m = sub.message().await;
            assert_eq!(
                (m.qos, m.payload),
                (qos, format!("{i}").into_bytes()),
                "message {i} on {}",
                m.topic
            );
        }
        assert!(sub.alive().await);
        // A QoS 1 subscription gets a QoS 2 message at QoS 1.
        sub.subscribe(2, &[("r/#", 1)]).await;
        publ.publish("r/2", 2, pkid, b"two").await;
        // rumqttd takes a QoS 2 message on its PUBREL.
        assert_eq!(publ.next().await.unwrap().kind(), 5);
        publ.send(&packet(0x62, &pkid.to_be_bytes())).await;
        let m = sub.message().await;
        assert_eq!((m.qos, m.topic.as_str()), (1, "r/2"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_message_goes_out_under_another_topics_alias() {
    let (_broker, v4, v5) = broker().await;
    // Topic Alias Maximum 10 (property 0x22).
    let (mut sub, _) = Client::connect(v5, "alias", true, &[0x22, 0, 10]).await;
    sub.subscribe(1, &[("t/+", 0)]).await;
    let (mut publ, _) = Client::connect(v4, "pub", false, &[]).await;
    for round in 0..2 {
        for t in ["a", "b", "c"] {
            publ.publish(&format!("t/{t}"), 0, 0, format!("{t}{round}").as_bytes())
                .await;
        }
    }
    for round in 0..2 {
        for t in ["a", "b", "c"] {
            let m = sub.message().await;
            assert_eq!(m.topic, format!("t/{t}"));
            assert_eq!(m.payload, format!("{t}{round}").into_bytes());
            assert!(!m.props.contains(&0x23), "no topic alias: {:?}", m.props);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_publish_with_properties_reaches_an_mqtt311_subscriber() {
    let (_broker, v4, v5) = broker().await;
    let (mut sub, _) = Client::connect(v4, "old", false, &[]).await;
    sub.subscribe(1, &[("p/#", 1)]).await;
    let (mut publ, _) = Client::connect(v5, "new", true, &[]).await;
    // Content type "text/plain" (0x03) and a user property (0x26).
    let mut body = Vec::new();
    string(b"p/1", &mut body);
    body.extend_from_slice(&1u16.to_be_bytes());
    let mut props = vec![0x03];
    string(b"text/plain", &mut props);
    props.push(0x26);
    string(b"k", &mut props);
    string(b"v", &mut props);
    varint(props.len(), &mut body);
    body.extend_from_slice(&props);
    body.extend_from_slice(b"21.5");
    publ.send(&packet(0x32, &body)).await;
    assert_eq!(publ.next().await.unwrap().kind(), 4);
    let m = sub.message().await;
    assert_eq!(
        (m.topic.as_str(), m.qos, m.payload),
        ("p/1", 1, b"21.5".to_vec())
    );
    assert!(sub.alive().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unsubscribe_gets_one_unsuback_with_a_reason_per_filter() {
    let (_broker, v4, v5) = broker().await;
    let (mut c, _) = Client::connect(v5, "u5", true, &[]).await;
    c.unsubscribe(1, &["never/subscribed"]).await;
    let ack = c.next().await.unwrap();
    assert_eq!((ack.kind(), ack.body.clone()), (11, vec![0, 1, 0, 0x11]));
    c.subscribe(2, &[("a", 0), ("b", 1)]).await;
    c.unsubscribe(3, &["a", "nope", "b"]).await;
    let ack = c.next().await.unwrap();
    assert_eq!(
        (ack.kind(), ack.body.clone()),
        (11, vec![0, 3, 0, 0x00, 0x11, 0x00])
    );
    // Exactly one: the next packet is the PINGRESP.
    assert!(c.alive().await);

    let (mut c, _) = Client::connect(v4, "u4", false, &[]).await;
    c.unsubscribe(9, &["never/subscribed"]).await;
    let ack = c.next().await.unwrap();
    assert_eq!((ack.kind(), ack.body.clone()), (11, vec![0, 9]));
    assert!(c.alive().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_clients_maximum_packet_size_is_not_sent() {
    let (_broker, v4, v5) = broker().await;
    // Maximum Packet Size 200 (property 0x27).
    let (mut sub, _) = Client::connect(v5, "small", true, &[0x27, 0, 0, 0, 200]).await;
    sub.subscribe(1, &[("m/#", 1)]).await;
    let (mut publ, _) = Client::connect(v4, "pub", false, &[]).await;
    // More big ones than rumqttd's in-flight window: their acks must be made up.
    for i in 0..120u16 {
        publ.publish_acked("m/big", i + 1, &[b'x'; 500]).await;
    }
    publ.publish_acked("m/small", 500, &[b'y'; 100]).await;
    let m = sub.message().await;
    assert_eq!((m.topic.as_str(), m.payload.len()), ("m/small", 100));
    assert!(sub.alive().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_packet_gets_disconnect_0x95_and_the_connack_says_the_maximum() {
    let (broker, _v4, v5) = broker().await;
    let (mut c, connack) = Client::connect(v5, "big", true, &[]).await;
    // Maximum Packet Size (0x27) = broker.limits.max_packet_size, 1024.
    let props = &connack.body[2..];
    let at = props
        .windows(5)
        .position(|w| w == [0x27, 0, 0, 4, 0])
        .map(|_| ());
    assert!(at.is_some(), "CONNACK properties: {props:?}");
    c.publish("sensors/d1/t", 0, 0, &[b'z'; 2000]).await;
    let got = c.next().await.expect("DISCONNECT before the close");
    assert_eq!((got.kind(), got.body[0]), (14, 0x95), "{got:?}");
    assert_eq!(c.next().await, None, "then closed");
    let refused = broker
        .caps()
        .counters
        .packets_too_large
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_retain_handling_and_retain_as_published_are_applied() {
    let (_broker, v4, v5) = broker().await;
    let (mut publ, _) = Client::connect(v4, "pub", false, &[]).await;
    publ.publish_as("r/kept", 1, true, 1, b"old").await;
    assert_eq!(publ.next().await.unwrap().kind(), 4);

    // noLocal (options bit 2): not its own publishes, others' yes.
    let (mut c, _) = Client::connect(v5, "opts", true, &[]).await;
    c.subscribe(1, &[("n/#", 0x04)]).await;
    c.publish("n/own", 0, 0, b"mine").await;
    publ.publish("n/other", 0, 0, b"theirs").await;
    let m = c.message().await;
    assert_eq!(m.topic, "n/other");

    // Retain handling 2 (bits 4-5): no retained message on subscribe.
    c.subscribe(2, &[("r/#", 0x20)]).await;
    assert!(c.alive().await, "PINGRESP first: nothing retained was sent");
    c.unsubscribe(3, &["r/#"]).await;
    assert_eq!(c.next().await.unwrap().kind(), 11);
    // Retain handling 1: on a new subscription only.
    c.subscribe(4, &[("r/#", 0x10)]).await;
    let m = c.message().await;
    assert_eq!((m.topic.as_str(), m.retain), ("r/kept", true));
    c.subscribe(5, &[("r/#", 0x10)]).await;
    assert!(
        c.alive().await,
        "PINGRESP first: held already, nothing retained"
    );

    // retainAsPublished (bit 3): a live retained publish keeps its flag; without it, not.
    c.subscribe(6, &[("p/#", 0x08)]).await;
    let (mut plain, _) = Client::connect(v5, "plain", true, &[]).await;
    plain.subscribe(1, &[("p/#", 0)]).await;
    publ.publish_as("p/1", 0, true, 0, b"live").await;
    let m = c.message().await;
    assert_eq!((m.topic.as_str(), m.retain), ("p/1", true));
    let m = plain.message().await;
    assert_eq!((m.topic.as_str(), m.retain), ("p/1", false));
}

/// Every message `c` gets within `wait`: (topic, payload).
async fn messages_within(c: &mut Client, wait: Duration) -> Vec<(String, String)> {
    let mut got = Vec::new();
    let end = tokio::time::Instant::now() + wait;
    loop {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        match c.next_within(left).await {
            Ok(Some(raw)) if raw.kind() == 3 => {
                let m = c.decode(&raw);
                got.push((m.topic, String::from_utf8_lossy(&m.payload).into_owned()));
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("connection closed"),
            Err(()) => return got,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_topics_reach_the_clients_that_subscribe_to_them_once_each() {
    let mut cfg = test_config();
    cfg.sys_interval_secs = 1;
    let broker = Broker::start(&cfg).await.unwrap();
    let v4 = broker.addr(ListenerKind::Mqtt).unwrap();
    // What MQTT Explorer sends: `#` and `$SYS/#` in one SUBSCRIBE; both granted.
    let (mut explorer, _) = Client::connect(v4, "explorer", false, &[]).await;
    let ack = explorer.subscribe(1, &[("#", 0), ("$SYS/#", 0)]).await;
    assert_eq!(ack.body, [0, 1, 0, 0]);
    let (mut plain, _) = Client::connect(v4, "plain", false, &[]).await;
    plain.subscribe(1, &[("#", 0)]).await;
    // No client can publish a `$SYS` value.
    let (mut spoof, _) = Client::connect(v4, "spoof", false, &[]).await;
    spoof
        .publish("edgewatch-internal/$SYS/broker/version", 0, 0, b"fake")
        .await;
    spoof.publish("sensors/d1/t", 0, 0, b"21.5").await;

    let got = messages_within(&mut explorer, Duration::from_millis(2600)).await;
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    for wanted in [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/messages/received",
        "$SYS/broker/publish/messages/sent",
        "$SYS/broker/load/publish/received/1min",
        "sensors/d1/t",
    ] {
        assert!(topics.contains(&wanted), "{wanted} missing from {topics:?}");
    }
    assert!(!topics.iter().any(|t| t.starts_with("edgewatch-internal")));
    assert!(got
        .iter()
        .all(|(t, p)| t != "$SYS/broker/version" || p.starts_with("edgewatch ")));
    let connected: Vec<&str> = got
        .iter()
        .filter(|(t, _)| t == "$SYS/broker/clients/connected")
        .map(|(_, p)| p.as_str())
        .collect();
    assert!(connected.contains(&"3"), "{connected:?}");
    // Once each although two of its filters match: no uptime value twice.
    let mut uptimes: Vec<&str> = got
        .iter()
        .filter(|(t, _)| t == "$SYS/broker/uptime")
        .map(|(_, p)| p.as_str())
        .collect();
    let n = uptimes.len();
    uptimes.dedup();
    assert_eq!(uptimes.len(), n, "{uptimes:?}");

    // `#` alone is no `$SYS` filter.
    let got = messages_within(&mut plain, Duration::from_millis(1500)).await;
    assert!(got.iter().all(|(t, _)| t == "sensors/d1/t"), "{got:?}");
    // Unsubscribing `$SYS/#` stops them (and is acknowledged as held).
    explorer.unsubscribe(2, &["$SYS/#"]).await;
    let ack = loop {
        let raw = explorer.next().await.unwrap();
        if raw.kind() == 11 {
            break raw;
        }
    };
    assert_eq!(ack.body, [0, 2]);
    let got = messages_within(&mut explorer, Duration::from_millis(1500)).await;
    assert!(got.iter().all(|(t, _)| !t.starts_with('$')), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_topics_need_a_sys_grant_when_accounts_have_roles() {
    use edgewatch_broker::config::UserConfig;
    let mut cfg = test_config();
    cfg.sys_interval_secs = 1;
    cfg.roles = toml::from_str(
        r##"
        [viewer]
        read = ["#"]
        [operator]
        read = ["#", "$SYS/#"]
    "##,
    )
    .unwrap();
    for (user, role) in [("viewer", "viewer"), ("operator", "operator")] {
        cfg.users.push(UserConfig {
            username: user.into(),
            password_hash: edgewatch_broker::hash_password("pw").unwrap(),
            role: Some(role.into()),
        });
    }
    let broker = Broker::start(&cfg).await.unwrap();
    let v4 = broker.addr(ListenerKind::Mqtt).unwrap();
    let (mut viewer, _) = Client::connect_as(v4, "v", false, &[], Some(("viewer", "pw"))).await;
    let ack = viewer.subscribe(1, &[("$SYS/#", 0)]).await;
    assert_eq!(ack.body, [0, 1, 0x80], "`#` does not grant `$SYS`");
    assert!(viewer.alive().await);
    let (mut op, _) = Client::connect_as(v4, "o", false, &[], Some(("operator", "pw"))).await;
    let ack = op.subscribe(1, &[("$SYS/broker/uptime", 0)]).await;
    assert_eq!(ack.body, [0, 1, 0]);
    let got = messages_within(&mut op, Duration::from_millis(1500)).await;
    assert!(!got.is_empty());
    assert!(
        got.iter().all(|(t, _)| t == "$SYS/broker/uptime"),
        "{got:?}"
    );
}

/// The bridge's feed (`IngestGate::forward`) takes each publish as rumqttd receives it: an
/// MQTT 5 publish sent by topic alias arrives under its topic, and a QoS 2 message resent
/// (DUP) before its PUBREL arrives once, as rumqttd passes it on once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_gets_aliased_publishes_by_topic_and_a_resent_qos2_message_once() {
    let (broker, mut feed) = broker_with_feed().await;
    let v5 = broker.addr(ListenerKind::Mqtt5).unwrap();
    let (mut c, _) = Client::connect(v5, "aliases", true, &[]).await;
    // QoS 0 with Topic Alias 1 (property 0x23), then by alias alone (empty topic).
    for (topic, payload) in [("sensors/d1/t", "1"), ("", "2")] {
        let mut body = Vec::new();
        string(topic.as_bytes(), &mut body);
        body.extend_from_slice(&[3, 0x23, 0, 1]);
        body.extend_from_slice(payload.as_bytes());
        c.send(&packet(0x30, &body)).await;
    }
    // QoS 2, packet id 7, sent twice (the second with DUP) before its PUBREL.
    let mut body = Vec::new();
    string(b"sensors/d1/q", &mut body);
    body.extend_from_slice(&[0, 7, 0]);
    body.extend_from_slice(b"3");
    c.send(&packet(0x34, &body)).await;
    c.send(&packet(0x3C, &body)).await;
    for _ in 0..2 {
        assert_eq!(c.next().await.expect("PUBREC").kind(), 5);
    }
    c.send(&packet(0x62, &[0, 7])).await;
    assert_eq!(c.next().await.expect("PUBCOMP").kind(), 7);
    // Released: the same packet id is a new message now.
    let mut body = Vec::new();
    string(b"sensors/d1/q", &mut body);
    body.extend_from_slice(&[0, 7, 0]);
    body.extend_from_slice(b"4");
    c.send(&packet(0x34, &body)).await;
    assert_eq!(c.next().await.expect("PUBREC").kind(), 5);

    let mut got = Vec::new();
    while got.len() < 4 {
        let p = timeout(WAIT, feed.recv()).await.expect("in time").unwrap();
        got.push((p.topic, String::from_utf8(p.payload.to_vec()).unwrap()));
    }
    let want = [
        ("sensors/d1/t", "1"),
        ("sensors/d1/t", "2"),
        ("sensors/d1/q", "3"),
        ("sensors/d1/q", "4"),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect();
    assert_eq!(got, want);
    let more = timeout(Duration::from_millis(300), feed.recv()).await;
    assert!(more.is_err(), "nothing more: {more:?}");
    broker.stop();
}

/// The QoS 2 guard of the bridge's feed is bounded: a client that never sends PUBREL makes the
/// codec remember at most 1,024 packet ids; a message resent past that reaches the bridge
/// again (as a reading the store's duplicate window then judges), one within it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_qos2_guard_remembers_a_bounded_number_of_unreleased_messages() {
    let (broker, mut feed) = broker_with_feed().await;
    let v4 = broker.addr(ListenerKind::Mqtt).unwrap();
    let (mut c, _) = Client::connect(v4, "no-pubrel", false, &[]).await;
    let qos2 = |pkid: u16, dup: bool| {
        let mut body = Vec::new();
        string(b"sensors/d1/q", &mut body);
        body.extend_from_slice(&pkid.to_be_bytes());
        body.extend_from_slice(pkid.to_string().as_bytes());
        packet(if dup { 0x3C } else { 0x34 }, &body)
    };
    const SENT: u16 = 1_100;
    for pkid in 1..=SENT {
        c.send(&qos2(pkid, false)).await;
    }
    c.send(&qos2(5, true)).await; // remembered: not fed again
    c.send(&qos2(SENT, true)).await; // past the bound: fed again
    let mut got = Vec::new();
    while let Ok(Some(p)) = timeout(Duration::from_millis(500), feed.recv()).await {
        got.push(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    assert_eq!(
        got.len(),
        usize::from(SENT) + 1,
        "{:?}",
        &got[got.len().saturating_sub(3)..]
    );
    assert_eq!(got.last().map(String::as_str), Some("1100"));
    broker.stop();
}
