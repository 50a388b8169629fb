//! The embedded broker with real MQTT clients on free loopback ports.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use edgewatch_broker::config::UserConfig;
use edgewatch_broker::{Broker, BrokerConfig, InboundStream, ListenerKind};
use edgewatch_testkit::wait_until;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::time::timeout;

use support::{options, test_config, WAIT};

/// Polls until the CONNACK; returns its return code.
async fn connack(ev: &mut EventLoop) -> Result<rumqttc::ConnectReturnCode, String> {
    loop {
        match timeout(WAIT, ev.poll())
            .await
            .map_err(|_| "timeout".to_owned())?
        {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack.code),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Subscribes `client` to `filter` and polls `ev` until the SUBACK: from then on the broker
/// routes what is published to `filter` to this client.
async fn subscribed(client: &AsyncClient, ev: &mut EventLoop, filter: &str) {
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = timeout(WAIT, ev.poll())
            .await
            .expect("SUBACK in time")
            .expect("connection open")
        {
            return;
        }
    }
}

/// Drives an event loop in the background, forwarding incoming publishes.
fn drive(mut ev: EventLoop) -> tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_qos1_readings_reach_mqtt_subscriber_and_link_in_order() {
    const N: usize = 10_000;
    let broker = Broker::start(&test_config()).await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt).unwrap();
    let mut link = broker
        .subscribe("bridge-test", &["sensors/#"], 1024)
        .await
        .unwrap();

    let (sub, mut sub_ev) = AsyncClient::new(options("sub", addr), 100);
    connack(&mut sub_ev).await.unwrap();
    // Wait for the SUBACK before publishing.
    subscribed(&sub, &mut sub_ev, "sensors/#").await;
    let mut sub_rx = drive(sub_ev);

    let (publisher, pub_ev) = AsyncClient::new(options("pub", addr), 100);
    let _pub_rx = drive(pub_ev);
    let sender = tokio::spawn(async move {
        for i in 0..N {
            publisher
                .publish(
                    "sensors/d1/temperature",
                    QoS::AtLeastOnce,
                    false,
                    i.to_string(),
                )
                .await
                .unwrap();
        }
        publisher
    });

    let link_side = tokio::spawn(async move {
        for i in 0..N {
            let p = timeout(WAIT, link.recv())
                .await
                .expect("link timed out")
                .expect("link ended");
            assert_eq!(p.topic, "sensors/d1/temperature");
            assert_eq!(
                p.payload,
                i.to_string().as_bytes(),
                "link out of order at {i}"
            );
            assert!(p.received_at_ms > 1_700_000_000_000);
        }
    });
    for i in 0..N {
        let p = timeout(WAIT, sub_rx.recv())
            .await
            .expect("subscriber timed out")
            .unwrap();
        assert_eq!(
            p.payload,
            i.to_string().as_bytes(),
            "subscriber out of order at {i}"
        );
    }
    link_side.await.unwrap();
    let _publisher = sender.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_client_round_trips() {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::{AsyncClient as Client5, Event as E5, MqttOptions as Opt5};

    let broker = Broker::start(&test_config()).await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt5).unwrap();
    let mut o = Opt5::new("v5-client", addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(10));
    let (client, mut ev) = Client5::new(o, 10);
    client
        .subscribe("sensors/+/humidity", Q5::AtLeastOnce)
        .await
        .unwrap();
    let got = timeout(WAIT, async {
        let mut published = false;
        loop {
            match ev.poll().await.unwrap() {
                E5::Incoming(P5::SubAck(_)) if !published => {
                    client
                        .publish("sensors/d7/humidity", Q5::AtLeastOnce, false, "40.5")
                        .await
                        .unwrap();
                    published = true;
                }
                E5::Incoming(P5::Publish(p)) => return p,
                _ => {}
            }
        }
    })
    .await
    .expect("v5 round trip timed out");
    assert_eq!(&got.topic[..], b"sensors/d7/humidity");
    assert_eq!(&got.payload[..], b"40.5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_keep_alive_above_max_is_announced_in_connack() {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::{AsyncClient as Client5, Event as E5, MqttOptions as Opt5};

    let mut cfg = test_config();
    cfg.limits.keep_alive_max_secs = 60;
    let broker = Broker::start(&cfg).await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt5).unwrap();
    let mut o = Opt5::new("v5-ka", addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(600));
    let (_client, mut ev) = Client5::new(o, 10);
    let ack = timeout(WAIT, async {
        loop {
            if let E5::Incoming(P5::ConnAck(ack)) = ev.poll().await.unwrap() {
                return ack;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(ack.properties.and_then(|p| p.server_keep_alive), Some(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_zero_is_accepted_and_not_timed_out() {
    let mut cfg = test_config();
    // With keep-alive 0 mapped to 2 s, a rumqttd timeout would hit after 3 s of silence;
    // the default maps it to 65535 s. Use the default and stay silent for 4 s.
    cfg.limits.keep_alive_min_secs = 1;
    let broker = Broker::start(&cfg).await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt).unwrap();
    let mut o = options("ka0", addr);
    o.set_keep_alive(Duration::ZERO);
    let (client, mut ev) = AsyncClient::new(o, 10);
    assert_eq!(
        connack(&mut ev).await.unwrap(),
        rumqttc::ConnectReturnCode::Success
    );
    // Four seconds of silence are the behaviour under test (rumqttd's keep-alive timer runs
    // on its own threads, on real time).
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Still connected: a subscribe + publish round trip works on the same connection.
    subscribed(&client, &mut ev, "sensors/ka0/#").await;
    let mut rx = drive(ev);
    client
        .publish("sensors/ka0/t", QoS::AtLeastOnce, false, "1")
        .await
        .unwrap();
    let p = timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .expect("connection was dropped");
    assert_eq!(&p.payload[..], b"1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_websocket_round_trips_while_another_connection_idles() {
    let mut cfg = test_config();
    cfg.limits.connect_timeout_ms = 1_000;
    let broker = Broker::start(&cfg).await.unwrap();
    let addr = broker.addr(ListenerKind::WebSocket).unwrap();
    // A connection that never sends its handshake: rumqttd alone handshakes one connection at
    // a time, so this stopped every later WebSocket client; our front times it out instead.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut o = MqttOptions::new("ws-client", format!("ws://{addr}/mqtt"), addr.port());
    o.set_transport(rumqttc::Transport::ws());
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut ev) = AsyncClient::new(o, 10);
    assert_eq!(
        connack(&mut ev).await.unwrap(),
        rumqttc::ConnectReturnCode::Success
    );
    subscribed(&client, &mut ev, "sensors/#").await;
    let mut rx = drive(ev);
    client
        .publish("sensors/ws1/temperature", QoS::AtLeastOnce, false, "19.5")
        .await
        .unwrap();
    let p = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(p.topic, "sensors/ws1/temperature");
    assert_eq!(&p.payload[..], b"19.5");
    let mut buf = [0u8; 16];
    let closed = timeout(WAIT, tokio::io::AsyncReadExt::read(&mut idle, &mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the idle connection was not closed: {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused_and_right_one_connects() {
    let mut cfg = test_config();
    cfg.users.push(UserConfig {
        username: "sensor-1".into(),
        password_hash: edgewatch_broker::hash_password("s3cret").unwrap(),
        role: None,
    });
    let broker = Broker::start(&cfg).await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt).unwrap();

    let mut bad = options("bad", addr);
    bad.set_credentials("sensor-1", "wrong");
    let (_c, mut ev) = AsyncClient::new(bad, 10);
    let refused = connack(&mut ev).await;
    assert!(
        !matches!(refused, Ok(rumqttc::ConnectReturnCode::Success)),
        "wrong password accepted: {refused:?}"
    );

    let mut anon = options("anon", addr);
    anon.set_keep_alive(Duration::from_secs(30));
    let (_c, mut ev) = AsyncClient::new(anon, 10);
    assert!(!matches!(
        connack(&mut ev).await,
        Ok(rumqttc::ConnectReturnCode::Success)
    ));

    // The failure put `sensor-1` into a backoff (100 ms after a first failure) during which
    // its logins are refused without a check; a device retries after it.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut good = options("good", addr);
    good.set_credentials("sensor-1", "s3cret");
    let (_c, mut ev) = AsyncClient::new(good, 10);
    assert_eq!(
        connack(&mut ev).await.unwrap(),
        rumqttc::ConnectReturnCode::Success
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_in_use_is_a_startup_error_naming_the_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut cfg = test_config();
    cfg.mqtt5.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let err = Broker::start(&cfg).await.unwrap_err().to_string();
    assert!(
        err.contains(&port.to_string()) && err.contains("mqtt5"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_default_binds_loopback_only() {
    let mut cfg = BrokerConfig::default();
    cfg.mqtt.listen = "0.0.0.0:0".parse().unwrap();
    cfg.mqtt5.enabled = false;
    cfg.websocket.enabled = false;
    let broker = Broker::start(&cfg).await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt).unwrap();
    assert!(addr.ip().is_loopback(), "{addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_publisher_reaches_subscribers() {
    let broker = Broker::start(&test_config()).await.unwrap();
    let mut link = broker
        .subscribe("watcher", &["sensors/#"], 16)
        .await
        .unwrap();
    let publisher = broker.publisher("serial-reader").await.unwrap();
    publisher
        .publish("sensors/s1/temperature".into(), "22.5".into())
        .await
        .unwrap();
    let got = timeout(WAIT, link.recv()).await.unwrap().unwrap();
    assert_eq!(got.topic, "sensors/s1/temperature");
    assert_eq!(&got.payload[..], b"22.5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_clients_are_counted_until_they_leave() {
    let broker = Broker::start(&test_config()).await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt).unwrap();
    assert_eq!(broker.connections(), 0);
    let (client, mut ev) = AsyncClient::new(options("counted", addr), 10);
    connack(&mut ev).await.unwrap();
    assert_eq!(broker.connections(), 1);
    client.disconnect().await.unwrap();
    // Drive the event loop until the DISCONNECT is out and the socket closes.
    let _ = timeout(Duration::from_secs(5), async {
        while ev.poll().await.is_ok() {}
    })
    .await;
    wait_until(WAIT, "the connection no longer counted", || {
        broker.connections() == 0
    })
    .await;
}

/// The bridge's feed does not depend on rumqttd's router log: with a log far too small for
/// the backlog (two 1 KiB segments per filter) and a bridge that reads nothing until every
/// publish is in, every QoS 0 publish reaches the bridge, in order, none skipped. (Through a
/// router subscription, most of them were dropped with the log's oldest segments.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_gets_every_publish_whatever_the_router_log_holds() {
    const N: usize = 5_000;
    let mut cfg = test_config();
    cfg.router.max_segment_size = 1024;
    cfg.router.max_segment_count = 2;
    let mut broker = Broker::prepare(&cfg).unwrap();
    let mut feed = broker.ingest_feed().unwrap();
    assert!(broker.ingest_feed().is_err(), "one feed");
    broker.listen().await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt).unwrap();

    let (publisher, pub_ev) = AsyncClient::new(options("pub", addr), 100);
    let _pub_rx = drive(pub_ev);
    publish_numbers(&publisher, N).await;
    let gate = broker.ingest_gate().clone();
    wait_until(WAIT, "every publish waiting for the bridge", || {
        gate.backlog() == N as u64
    })
    .await;
    let values = feed_numbers(&mut feed, N, 0).await;
    assert_eq!(values, (0..N).collect::<Vec<_>>());
    assert_eq!((gate.skipped(), gate.backlog()), (0, 0));
    broker.stop();
}

/// A QoS 0 flood faster than the bridge is slowed at the socket, not dropped: once the
/// backlog is above half the limit the broker stops reading the publisher's connection until
/// the bridge takes some, and every publish reaches the bridge, in order, none shed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos0_flood_is_slowed_by_tcp_backpressure_not_dropped() {
    const N: usize = 3_000;
    const LIMIT: u64 = 200;
    let mut cfg = test_config();
    cfg.limits.ingest_backlog_max = LIMIT;
    let mut broker = Broker::prepare(&cfg).unwrap();
    let mut feed = broker.ingest_feed().unwrap();
    broker.listen().await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt).unwrap();
    let gate = broker.ingest_gate().clone();

    let (publisher, pub_ev) = AsyncClient::new(options("flood", addr), 100);
    let _pub_rx = drive(pub_ev);
    let sending = tokio::spawn(async move {
        publish_numbers(&publisher, N).await;
        publisher
    });
    // The bridge reads nothing yet: the backlog stops one above half the limit (the last
    // publish admitted at half; the one the paused read holds is not counted yet).
    wait_until(WAIT, "reads paused", || gate.paused_reads() > 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gate.backlog(), LIMIT / 2 + 1, "the broker kept reading");
    // Now the bridge reads, slowly at first: every publish arrives, in order.
    let values = feed_numbers(&mut feed, N, 500).await;
    assert_eq!(values, (0..N).collect::<Vec<_>>());
    assert_eq!((gate.shed(), gate.skipped(), gate.backlog()), (0, 0, 0));
    assert!(gate.paused_reads() > 1, "paused {}", gate.paused_reads());
    let _publisher = timeout(WAIT, sending).await.unwrap().unwrap();
    broker.stop();
}

/// Publishes 0, 1, ... `n - 1` at QoS 0 to one topic.
async fn publish_numbers(publisher: &AsyncClient, n: usize) {
    for i in 0..n {
        publisher
            .publish(
                "sensors/d1/temperature",
                QoS::AtMostOnce,
                false,
                i.to_string(),
            )
            .await
            .unwrap();
    }
}

/// The numbers of the next `n` publishes of the bridge's feed, the first `slow` of them taken
/// 200 µs apart (a bridge slower than the publisher).
async fn feed_numbers(feed: &mut InboundStream, n: usize, slow: usize) -> Vec<usize> {
    let mut received = Vec::with_capacity(n);
    while received.len() < n {
        if received.len() < slow {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        match timeout(WAIT, feed.recv()).await {
            Ok(Some(p)) => received.push(std::str::from_utf8(&p.payload).unwrap().parse().unwrap()),
            Ok(None) => panic!("feed ended"),
            Err(_) => panic!("received {} of {n}", received.len()),
        }
    }
    received
}

/// A device's last will reaches the bridge when its connection ends without a DISCONNECT (as
/// rumqttd publishes it: device presence), and not after a DISCONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_gets_a_last_will_when_the_connection_drops_without_disconnect() {
    let mut broker = Broker::prepare(&test_config()).unwrap();
    let mut feed = broker.ingest_feed().unwrap();
    broker.listen().await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt).unwrap();
    for (id, disconnect) in [("polite", true), ("dropped", false)] {
        let mut opts = options(id, addr);
        opts.set_last_will(rumqttc::LastWill::new(
            format!("sensors/{id}/status"),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        let (client, mut ev) = AsyncClient::new(opts, 10);
        connack(&mut ev).await.unwrap();
        if disconnect {
            client.disconnect().await.unwrap();
            let _ = timeout(Duration::from_secs(5), async {
                while ev.poll().await.is_ok() {}
            })
            .await;
        }
        drop(client);
        drop(ev); // without a DISCONNECT: the socket just closes
    }
    let will = timeout(WAIT, feed.recv())
        .await
        .expect("a will in time")
        .unwrap();
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("sensors/dropped/status", &b"offline"[..])
    );
    let more = timeout(Duration::from_millis(500), feed.recv()).await;
    assert!(more.is_err(), "no will after a DISCONNECT: {more:?}");
    broker.stop();
}

/// Between `prepare` (which resolves port 0) and `listen`, the hub restores its state: no
/// other process may take a listener's port meanwhile. Every port is held from the bind check
/// on (before, a parallel test's broker took a WebSocket port in that window now and then, and
/// the hub failed to start with "address already in use"), and each listener serves after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_ports_are_held_from_prepare_to_listen() {
    let mut broker = Broker::prepare(&test_config()).unwrap();
    let ports = broker.listeners().to_vec();
    assert_eq!(ports.len(), 3);
    for (kind, addr) in &ports {
        let taken = std::net::TcpListener::bind(addr);
        assert!(
            taken.is_err(),
            "{kind:?} port {addr} could be taken before listen"
        );
    }
    broker.listen().await.unwrap();
    for (kind, addr) in &ports {
        let conn = timeout(WAIT, tokio::net::TcpStream::connect(addr)).await;
        assert!(matches!(conn, Ok(Ok(_))), "{kind:?} on {addr}: {conn:?}");
    }
    broker.stop();
}
