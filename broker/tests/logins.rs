//! Login limiting and the per-address connection cap against the real embedded broker, with
//! raw MQTT connections from chosen loopback addresses (127.0.0.1 and 127.0.0.2 are both
//! this machine).
//!
//! The per-address parts need the accept tap, so every test here installs it as the global
//! subscriber (one per test binary: the first test to run wins, the others find it there).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use edgewatch_broker::config::UserConfig;
use edgewatch_broker::{Broker, BrokerConfig, ListenerKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(30);

fn install_tap() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = tracing_subscriber::registry()
        .with(edgewatch_broker::peer::accept_tap())
        .try_init();
}

fn config() -> BrokerConfig {
    let mut cfg = BrokerConfig::default();
    cfg.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    cfg.mqtt5.enabled = false;
    cfg.websocket.enabled = false;
    cfg
}

/// An MQTT 3.1.1 CONNECT (clean session, keep-alive 60 s), with a login when given.
fn connect_packet(client_id: &str, login: Option<(&str, &str)>) -> Vec<u8> {
    let field = |s: &str, out: &mut Vec<u8>| {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    let flags = 0x02 | if login.is_some() { 0xC0 } else { 0 };
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60];
    field(client_id, &mut body);
    if let Some((user, pass)) = login {
        field(user, &mut body);
        field(pass, &mut body);
    }
    assert!(body.len() < 128, "one-byte remaining length");
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// Connects from `from` and returns the CONNACK return code, or `None` when the broker closed
/// the connection without one. The connection is returned too, to keep it open.
async fn connect_from(
    from: IpAddr,
    broker: SocketAddr,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> (Option<u8>, TcpStream) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut tcp = socket.connect(broker).await.unwrap();
    tcp.write_all(&connect_packet(client_id, login))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    let code = match timeout(WAIT, tcp.read_exact(&mut connack)).await {
        Ok(Ok(_)) if connack[0] == 0x20 => Some(connack[3]),
        Ok(_) => None,
        Err(_) => panic!("no CONNACK and no close from the broker within {WAIT:?}"),
    };
    (code, tcp)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_address_cap_are_closed_and_others_still_connect() {
    install_tap();
    let mut cfg = config();
    cfg.limits.max_connections_per_ip = 2;
    let broker = Broker::start(&cfg).await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt).unwrap();

    let (a, _keep_a) = connect_from(ip("127.0.0.1"), addr, "a", None).await;
    let (b, keep_b) = connect_from(ip("127.0.0.1"), addr, "b", None).await;
    assert_eq!((a, b), (Some(0), Some(0)));
    // This also proves the broker learns each connection's address from rumqttd (the tap):
    // were it unknown, no per-address cap would apply and this one would connect.
    let (c, _) = connect_from(ip("127.0.0.1"), addr, "c", None).await;
    assert_eq!(c, None, "a third connection from 127.0.0.1 was accepted");
    assert_eq!(broker.peers().refused(), 1);
    let (d, _keep_d) = connect_from(ip("127.0.0.2"), addr, "d", None).await;
    assert_eq!(d, Some(0), "another address has its own count");

    // A place is freed when its connection ends.
    drop(keep_b);
    edgewatch_testkit::wait_until(WAIT, "the closed connection to stop counting", || {
        broker.peers().connections_from(ip("127.0.0.1")) == 1
    })
    .await;
    let (e, _keep_e) = connect_from(ip("127.0.0.1"), addr, "e", None).await;
    assert_eq!(e, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_flood_is_throttled_and_a_right_login_gets_through() {
    install_tap();
    let mut cfg = config();
    for (user, pass) in [("d1", "right-1"), ("d2", "right-2")] {
        cfg.users.push(UserConfig {
            username: user.into(),
            password_hash: edgewatch_broker::hash_password(pass).unwrap(),
            role: None,
        });
    }
    let broker = Broker::start(&cfg).await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt).unwrap();
    let (ok, _d1) = connect_from(ip("127.0.0.1"), addr, "d1-a", Some(("d1", "right-1"))).await;
    assert_eq!(ok, Some(0));

    // 200 wrong logins for d1 at once from 127.0.0.1.
    let flood: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(async move {
                let id = format!("x{i}");
                connect_from(ip("127.0.0.1"), addr, &id, Some(("d1", "guess")))
                    .await
                    .0
            })
        })
        .collect();
    // Meanwhile a device of another address logs in for the first time, and d1's own device
    // (same address and username as the flood) reconnects.
    let (d2, _d2) = connect_from(ip("127.0.0.2"), addr, "d2-a", Some(("d2", "right-2"))).await;
    assert_eq!(
        d2,
        Some(0),
        "a right login from another address was refused"
    );
    let (d1, _d1b) = connect_from(ip("127.0.0.1"), addr, "d1-b", Some(("d1", "right-1"))).await;
    assert_eq!(
        d1,
        Some(0),
        "a remembered right login was refused during the flood"
    );
    for attempt in flood {
        assert_ne!(
            attempt.await.unwrap(),
            Some(0),
            "a wrong password connected"
        );
    }

    let counts: std::collections::HashMap<_, _> =
        broker.login_stats().snapshot().into_iter().collect();
    // At most four checks of one address at a time and a backoff after the first failures:
    // only a few of the 200 cost a password check.
    assert!(counts["wrong"] <= 12, "{counts:?}");
    assert!(counts["backoff"] + counts["busy"] >= 188, "{counts:?}");
    assert_eq!(counts["remembered"], 1, "{counts:?}");
    assert_eq!(counts["accepted"], 2, "{counts:?}");
}

/// Connects over MQTT-over-WebSocket from `from` (a hand-made handshake and masked binary
/// frames) and returns the CONNACK return code, or `None` when refused or closed.
async fn ws_connect_from(
    from: IpAddr,
    broker: SocketAddr,
    client_id: &str,
) -> (Option<u8>, TcpStream) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut tcp = socket.connect(broker).await.unwrap();
    let head = format!(
        "GET /mqtt HTTP/1.1\r\nHost: {broker}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        match timeout(WAIT, tcp.read_exact(&mut byte)).await {
            Ok(Ok(_)) => response.push(byte[0]),
            _ => return (None, tcp),
        }
    }
    assert!(
        response.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    let packet = connect_packet(client_id, None);
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x82, 0x80 | packet.len() as u8];
    frame.extend(mask);
    frame.extend(packet.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&frame).await.unwrap();
    // An unmasked binary frame from the server: 0x82, length 4, the CONNACK.
    let mut reply = [0u8; 6];
    let code = match timeout(WAIT, tcp.read_exact(&mut reply)).await {
        Ok(Ok(_)) if reply[2] == 0x20 => Some(reply[5]),
        _ => None,
    };
    (code, tcp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_count_under_their_own_address_not_the_fronts() {
    install_tap();
    let mut cfg = config();
    cfg.websocket.enabled = true;
    cfg.websocket.listen = "127.0.0.1:0".parse().unwrap();
    cfg.limits.max_connections_per_ip = 1;
    let broker = Broker::start(&cfg).await.unwrap();
    let (tcp, ws) = (
        broker.addr(ListenerKind::Mqtt).unwrap(),
        broker.addr(ListenerKind::WebSocket).unwrap(),
    );
    let (a, _keep_a) = connect_from(ip("127.0.0.1"), tcp, "a", None).await;
    assert_eq!(a, Some(0));
    // Through the front, rumqttd sees loopback; the connection must count as 127.0.0.2's.
    let (b, _keep_b) = ws_connect_from(ip("127.0.0.2"), ws, "b").await;
    assert_eq!(
        b,
        Some(0),
        "a WebSocket client was counted under another address"
    );
    let (c, _) = ws_connect_from(ip("127.0.0.2"), ws, "c").await;
    assert_eq!(
        c, None,
        "the per-address cap does not apply through the front"
    );
}

/// An MQTT 5 CONNECT (clean start, keep-alive 60 s, no properties), with a login when given.
fn connect_packet_v5(client_id: &str, login: Option<(&str, &str)>) -> Vec<u8> {
    let v4 = connect_packet(client_id, login);
    // Same layout with protocol level 5 and an empty property list after the keep-alive.
    let mut body = v4[2..].to_vec();
    body[6] = 5;
    body.insert(10, 0);
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// Sends `connect` from 127.0.0.1 and returns the CONNACK's code (3.1.1 return code or MQTT 5
/// reason code), or `None` when the broker closed without one.
async fn connack_code(broker: SocketAddr, connect: &[u8]) -> Option<u8> {
    let mut tcp = TcpStream::connect(broker).await.unwrap();
    tcp.write_all(connect).await.unwrap();
    let mut head = [0u8; 4];
    match timeout(WAIT, tcp.read_exact(&mut head)).await {
        Ok(Ok(_)) if head[0] == 0x20 => Some(head[3]),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_gets_a_connack_saying_why() {
    install_tap();
    let mut cfg = config();
    cfg.mqtt5.enabled = true;
    cfg.mqtt5.listen = "127.0.0.1:0".parse().unwrap();
    cfg.users.push(UserConfig {
        username: "d1".into(),
        password_hash: edgewatch_broker::hash_password("right-1").unwrap(),
        role: None,
    });
    let broker = Broker::start(&cfg).await.unwrap();
    let (v4, v5) = (
        broker.addr(ListenerKind::Mqtt).unwrap(),
        broker.addr(ListenerKind::Mqtt5).unwrap(),
    );
    let right = Some(("d1", "right-1"));
    assert_eq!(connack_code(v4, &connect_packet("a", right)).await, Some(0));
    assert_eq!(
        connack_code(v5, &connect_packet_v5("b", right)).await,
        Some(0)
    );
    // 3.1.1: 4 bad user name or password, 5 not authorised (no login at all).
    let wrong = Some(("d1", "guess"));
    assert_eq!(connack_code(v4, &connect_packet("c", wrong)).await, Some(4));
    assert_eq!(connack_code(v4, &connect_packet("d", None)).await, Some(5));
    let unknown = Some(("nobody", "x"));
    assert_eq!(
        connack_code(v4, &connect_packet("e", unknown)).await,
        Some(4)
    );
    // MQTT 5: 0x86 and 0x87.
    assert_eq!(
        connack_code(v5, &connect_packet_v5("f", wrong)).await,
        Some(0x86)
    );
    assert_eq!(
        connack_code(v5, &connect_packet_v5("g", None)).await,
        Some(0x87)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_does_not_take_over_the_session_it_names() {
    install_tap();
    let mut cfg = config();
    cfg.users.push(UserConfig {
        username: "d1".into(),
        password_hash: edgewatch_broker::hash_password("right-1").unwrap(),
        role: None,
    });
    let broker = Broker::start(&cfg).await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt).unwrap();
    let from = ip("127.0.0.1");
    let (ok, mut device) = connect_from(from, addr, "sensor-1", Some(("d1", "right-1"))).await;
    assert_eq!(ok, Some(0));
    // Someone else names the device's client id with a wrong password.
    let (refused, _) = connect_from(ip("127.0.0.2"), addr, "sensor-1", Some(("d1", "x"))).await;
    assert_eq!(refused, Some(4));
    // The device is still connected: a PINGREQ is answered.
    device.write_all(&[0xC0, 0x00]).await.unwrap();
    let mut pong = [0u8; 2];
    timeout(WAIT, device.read_exact(&mut pong))
        .await
        .expect("PINGRESP in time")
        .expect("the device's connection was taken over");
    assert_eq!(pong, [0xD0, 0x00]);
}

/// Sends `packet` on `tcp` and reads one packet back: (first byte, body), or `None` when
/// nothing came within `limit` (or the connection closed).
async fn exchange(tcp: &mut TcpStream, packet: &[u8], limit: Duration) -> Option<(u8, Vec<u8>)> {
    tcp.write_all(packet).await.ok()?;
    read_one(tcp, limit).await
}

/// Reads one MQTT packet: (first byte, body).
async fn read_one(tcp: &mut TcpStream, limit: Duration) -> Option<(u8, Vec<u8>)> {
    timeout(limit, async {
        let mut first = [0u8; 1];
        tcp.read_exact(&mut first).await.ok()?;
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let mut b = [0u8; 1];
            tcp.read_exact(&mut b).await.ok()?;
            len |= usize::from(b[0] & 0x7f) << shift;
            shift += 7;
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        tcp.read_exact(&mut body).await.ok()?;
        Some((first[0], body))
    })
    .await
    .ok()
    .flatten()
}

/// A QoS 1 PUBLISH (MQTT 5 with an empty property list when `v5`).
fn publish_packet(topic: &str, payload: &[u8], pkid: u16, v5: bool) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend(topic.as_bytes());
    body.extend(pkid.to_be_bytes());
    if v5 {
        body.push(0);
    }
    body.extend(payload);
    let mut packet = vec![0x32, body.len() as u8];
    packet.extend(body);
    packet
}

/// A SUBSCRIBE of `filters` at QoS 1 (MQTT 5 with an empty property list when `v5`).
fn subscribe_packet(filters: &[&str], v5: bool) -> Vec<u8> {
    let mut body = 7u16.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    for f in filters {
        body.extend((f.len() as u16).to_be_bytes());
        body.extend(f.as_bytes());
        body.push(1);
    }
    let mut packet = vec![0x82, body.len() as u8];
    packet.extend(body);
    packet
}

fn permissions_config() -> BrokerConfig {
    let mut cfg = config();
    cfg.mqtt5.enabled = true;
    cfg.mqtt5.listen = "127.0.0.1:0".parse().unwrap();
    let toml = r#"
        [device]
        publish = ["sensors/%u/#"]
        [viewer]
        read = ["sensors/+/temperature"]
    "#;
    cfg.roles = toml::from_str(toml).unwrap();
    for (user, role) in [
        ("sensor-1", Some("device")),
        ("app", Some("viewer")),
        ("admin", None),
    ] {
        cfg.users.push(UserConfig {
            username: user.into(),
            password_hash: edgewatch_broker::hash_password("pw").unwrap(),
            role: role.map(str::to_owned),
        });
    }
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_publish_and_subscribe_only_where_their_role_allows() {
    install_tap();
    let broker = Broker::start(&permissions_config()).await.unwrap();
    let (v4, v5) = (
        broker.addr(ListenerKind::Mqtt).unwrap(),
        broker.addr(ListenerKind::Mqtt5).unwrap(),
    );
    let short = Duration::from_millis(500);
    // The admin (no role) watches everything.
    let (code, mut admin) = connect_from(ip("127.0.0.1"), v4, "admin", Some(("admin", "pw"))).await;
    assert_eq!(code, Some(0));
    let (kind, _) = exchange(&mut admin, &subscribe_packet(&["sensors/#"], false), WAIT)
        .await
        .unwrap();
    assert_eq!(kind, 0x90, "SUBACK");

    // A device publishes under its own name: acknowledged and delivered.
    let (code, mut device) = connect_from(ip("127.0.0.1"), v4, "d", Some(("sensor-1", "pw"))).await;
    assert_eq!(code, Some(0));
    let own = publish_packet("sensors/sensor-1/temperature", b"21.5", 1, false);
    assert_eq!(
        exchange(&mut device, &own, WAIT).await.unwrap().0,
        0x40,
        "PUBACK"
    );
    let (kind, body) = read_one(&mut admin, WAIT).await.expect("delivered");
    assert_eq!(kind & 0xf0, 0x30);
    assert!(String::from_utf8_lossy(&body).contains("sensors/sensor-1/temperature"));
    // Under another device's name: acknowledged (3.1.1 has no refusal) but not delivered.
    let other = publish_packet("sensors/sensor-2/temperature", b"99", 2, false);
    assert_eq!(
        exchange(&mut device, &other, WAIT).await.unwrap().0,
        0x40,
        "PUBACK"
    );
    assert!(
        read_one(&mut admin, short).await.is_none(),
        "a denied publish was delivered"
    );

    // MQTT 5: the PUBACK says 0x87 not authorized.
    let (code, mut device5) = {
        let socket = TcpSocket::new_v4().unwrap();
        let mut tcp = socket.connect(v5).await.unwrap();
        let code = exchange(
            &mut tcp,
            &connect_packet_v5("d5", Some(("sensor-1", "pw"))),
            WAIT,
        )
        .await
        .map(|(_, body)| body[1]);
        (code, tcp)
    };
    assert_eq!(code, Some(0));
    let other5 = publish_packet("sensors/sensor-2/temperature", b"99", 3, true);
    let (kind, body) = exchange(&mut device5, &other5, WAIT).await.unwrap();
    assert_eq!((kind, body[2]), (0x40, 0x87), "MQTT 5 PUBACK reason");
    assert!(read_one(&mut admin, short).await.is_none());

    // A viewer gets its readable filter and a failure for the rest, in order.
    let (code, mut app) = connect_from(ip("127.0.0.1"), v4, "app", Some(("app", "pw"))).await;
    assert_eq!(code, Some(0));
    let filters = [
        "sensors/+/temperature",
        "sensors/#",
        "sensors/sensor-1/temperature",
    ];
    let (kind, body) = exchange(&mut app, &subscribe_packet(&filters, false), WAIT)
        .await
        .unwrap();
    assert_eq!(
        (kind, &body[2..]),
        (0x90, &[1u8, 0x80, 1][..]),
        "SUBACK codes"
    );
    let counters: std::collections::HashMap<_, _> = broker
        .caps()
        .samples()
        .into_iter()
        .map(|s| (s.name, (s.read)()))
        .collect();
    assert_eq!(counters["edgewatch_mqtt_publishes_denied_total"], 2.0);
    assert_eq!(counters["edgewatch_mqtt_subscriptions_denied_total"], 1.0);
}

/// An MQTT 3.1.1 CONNECT with a login and a QoS 0 last will.
fn connect_with_will(client_id: &str, login: (&str, &str), will: (&str, &str)) -> Vec<u8> {
    let field = |s: &str, out: &mut Vec<u8>| {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xC6, 0, 60];
    for s in [client_id, will.0, will.1, login.0, login.1] {
        field(s, &mut body);
    }
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_outside_the_accounts_topics_is_dropped() {
    install_tap();
    let broker = Broker::start(&permissions_config()).await.unwrap();
    let v4 = broker.addr(ListenerKind::Mqtt).unwrap();
    let (code, mut admin) = connect_from(ip("127.0.0.1"), v4, "admin", Some(("admin", "pw"))).await;
    assert_eq!(code, Some(0));
    let (kind, _) = exchange(&mut admin, &subscribe_packet(&["sensors/#"], false), WAIT)
        .await
        .unwrap();
    assert_eq!(kind, 0x90);
    let login = ("sensor-1", "pw");
    for (id, will_topic) in [
        ("w1", "sensors/sensor-2/status"),
        ("w2", "sensors/sensor-1/status"),
    ] {
        let mut tcp = TcpStream::connect(v4).await.unwrap();
        let connect = connect_with_will(id, login, (will_topic, "offline"));
        let (kind, body) = exchange(&mut tcp, &connect, WAIT).await.unwrap();
        assert_eq!((kind, body[1]), (0x20, 0), "CONNACK");
        // Gone without a DISCONNECT: the broker publishes the will, if it kept it.
        drop(tcp);
    }
    let (kind, body) = read_one(&mut admin, WAIT).await.expect("the allowed will");
    assert_eq!(kind & 0xf0, 0x30);
    let text = String::from_utf8_lossy(&body).into_owned();
    assert!(text.contains("sensors/sensor-1/status"), "{text}");
    let more = read_one(&mut admin, Duration::from_millis(500)).await;
    assert!(more.is_none(), "the denied will was published: {more:?}");
}
