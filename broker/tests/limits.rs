//! The caps on client state and the per-client rate limit (`broker::caps`, issue #17), with
//! real MQTT clients against the embedded broker on free loopback ports.

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edgewatch_broker::{Broker, InboundStream, ListenerKind};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS, SubscribeFilter};
use tokio::time::timeout;

use support::{options, test_config, WAIT};

/// Polls `ev` until `pick` returns something, or the connection fails (`Err`).
async fn poll_until<T>(
    ev: &mut EventLoop,
    mut pick: impl FnMut(Packet) -> Option<T>,
) -> Result<T, String> {
    timeout(WAIT, async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(p)) => {
                    if let Some(t) = pick(p) {
                        return Ok(t);
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .expect("bounded wait")
}

/// Subscribes to `paths` at QoS 1 in one SUBSCRIBE; returns the SUBACK's codes.
async fn subscribe_qos1(
    client: &AsyncClient,
    ev: &mut EventLoop,
    paths: &[&str],
) -> Vec<rumqttc::SubscribeReasonCode> {
    let filters = paths
        .iter()
        .map(|p| SubscribeFilter::new((*p).to_owned(), QoS::AtLeastOnce));
    client.subscribe_many(filters).await.unwrap();
    poll_until(ev, |p| match p {
        Packet::SubAck(ack) => Some(ack.return_codes),
        _ => None,
    })
    .await
    .unwrap()
}

/// A connected client with its event loop.
async fn connect(id: &str, addr: SocketAddr) -> (AsyncClient, EventLoop) {
    let (client, mut ev) = AsyncClient::new(options(id, addr), 1000);
    poll_until(&mut ev, |p| matches!(p, Packet::ConnAck(_)).then_some(()))
        .await
        .unwrap();
    (client, ev)
}

/// Publishes the link received within `quiet` of each other: (topic, payload).
async fn drain(link: &mut InboundStream, quiet: Duration) -> Vec<(String, String)> {
    let mut got = Vec::new();
    while let Ok(Some(p)) = timeout(quiet, link.recv()).await {
        got.push((
            p.topic.to_string(),
            String::from_utf8_lossy(&p.payload).into_owned(),
        ));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_over_the_cap_or_bounds_are_refused_in_place_and_the_rest_work() {
    use rumqttc::SubscribeReasonCode as C;
    let mut cfg = test_config();
    cfg.limits.max_subscriptions_per_client = 3;
    let broker = Broker::start(&cfg).await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt).unwrap();
    let (client, mut ev) = connect("subs", addr).await;
    let deep = vec!["x"; 33].join("/");
    let paths = ["a/1", &deep, "a/2", "a/3", "a/4"];
    let codes = subscribe_qos1(&client, &mut ev, &paths).await;
    let ok = C::Success(QoS::AtLeastOnce);
    assert_eq!(codes, [ok, C::Failure, ok, ok, C::Failure]);
    let c = &broker.caps().counters;
    assert_eq!(c.filters_refused.load(Ordering::Relaxed), 1);
    assert_eq!(c.subscriptions_refused.load(Ordering::Relaxed), 1);

    // The granted filters route; the refused one does not.
    let (publisher, _pev) = connect("pub", addr).await;
    let mut ev_pub = _pev;
    tokio::spawn(async move { while ev_pub.poll().await.is_ok() {} });
    for t in ["a/4", "a/3"] {
        publisher
            .publish(t, QoS::AtMostOnce, false, t)
            .await
            .unwrap();
    }
    let got = poll_until(&mut ev, |p| match p {
        Packet::Publish(p) => Some(p.topic),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(got, "a/3");

    // An unsubscribe frees a slot.
    client.unsubscribe("a/1").await.unwrap();
    poll_until(&mut ev, |p| matches!(p, Packet::UnsubAck(_)).then_some(()))
        .await
        .unwrap();
    client.subscribe("a/4", QoS::AtMostOnce).await.unwrap();
    let codes = poll_until(&mut ev, |p| match p {
        Packet::SubAck(ack) => Some(ack.return_codes),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(codes, [C::Success(QoS::AtMostOnce)]);

    // Every filter refused: rumqttd gets an empty SUBSCRIBE, the client a full SUBACK.
    client.subscribe("a/9", QoS::AtMostOnce).await.unwrap();
    let codes = poll_until(&mut ev, |p| match p {
        Packet::SubAck(ack) => Some(ack.return_codes),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(codes, [C::Failure]);
    // The connection carries on.
    client
        .publish("a/3", QoS::AtLeastOnce, false, "again")
        .await
        .unwrap();
    let got = poll_until(&mut ev, |p| match p {
        Packet::Publish(p) => Some(p.payload),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(&got[..], b"again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_refusals_say_quota_exceeded_and_filter_invalid() {
    use rumqttc::v5::mqttbytes::v5::{Filter, Packet as P5, SubscribeReasonCode as C5};
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::{AsyncClient as Client5, Event as E5, MqttOptions as Opt5};

    let mut cfg = test_config();
    cfg.limits.max_subscriptions_per_client = 1;
    let broker = Broker::start(&cfg).await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt5).unwrap();
    let mut o = Opt5::new("v5-subs", addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(10));
    let (client, mut ev) = Client5::new(o, 10);
    let long = "y".repeat(1025);
    let filters = ["b/1", long.as_str(), "b/2"].map(|p| Filter::new(p, Q5::AtMostOnce));
    client.subscribe_many(filters).await.unwrap();
    let codes = timeout(WAIT, async {
        loop {
            if let E5::Incoming(P5::SubAck(ack)) = ev.poll().await.unwrap() {
                return ack.return_codes;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        codes,
        [
            C5::Success(Q5::AtMostOnce),
            C5::TopicFilterInvalid,
            C5::QuotaExceeded
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_over_the_bounds_closes_the_connection_unacknowledged() {
    let broker = Broker::start(&test_config()).await.unwrap();
    let mut link = broker.subscribe("bridge-test", &["#"], 1024).await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt).unwrap();
    for (i, topic) in ["t".repeat(257), vec!["l"; 17].join("/")]
        .iter()
        .enumerate()
    {
        let (client, mut ev) = connect(&format!("long{i}"), addr).await;
        client
            .publish(topic.as_str(), QoS::AtLeastOnce, false, "1")
            .await
            .unwrap();
        let acked = poll_until(&mut ev, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
        assert!(acked.is_err(), "connection should close, got {acked:?}");
    }
    // At the bounds: accepted.
    let (client, mut ev) = connect("at-bounds", addr).await;
    let at_bounds = ["t".repeat(256), vec!["l"; 16].join("/")];
    for topic in &at_bounds {
        client
            .publish(topic.as_str(), QoS::AtLeastOnce, false, "1")
            .await
            .unwrap();
        poll_until(&mut ev, |p| matches!(p, Packet::PubAck(_)).then_some(()))
            .await
            .unwrap();
    }
    let got: Vec<String> = drain(&mut link, Duration::from_millis(300))
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(got, at_bounds);
    assert_eq!(
        broker
            .caps()
            .counters
            .topics_refused
            .load(Ordering::Relaxed),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_topics_outside_readings_past_the_cap_are_refused() {
    let mut cfg = test_config();
    cfg.limits.max_topics_outside_readings = 2;
    let broker = Broker::start(&cfg).await.unwrap();
    let mut link = broker.subscribe("bridge-test", &["#"], 1024).await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt).unwrap();
    let (client, mut ev) = connect("topics", addr).await;
    for t in ["tele/a", "tele/b", "tele/c", "sensors/d1/t", "tele/a"] {
        client
            .publish(t, QoS::AtMostOnce, false, "0")
            .await
            .unwrap();
    }
    let mut ev = tokio::spawn(async move {
        while let Ok(Ok(_)) = timeout(Duration::from_millis(300), ev.poll()).await {}
        ev
    })
    .await
    .unwrap();
    let got: Vec<String> = drain(&mut link, Duration::from_millis(300))
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(got, ["tele/a", "tele/b", "sensors/d1/t", "tele/a"]);
    // A QoS 1 publish to a new topic closes the connection without a PUBACK (and what the
    // broker read with it in the same batch is not taken either: rumqttd drops the batch).
    client
        .publish("tele/d", QoS::AtLeastOnce, false, "1")
        .await
        .unwrap();
    let acked = poll_until(&mut ev, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    assert!(acked.is_err(), "connection should close, got {acked:?}");
    assert!(drain(&mut link, Duration::from_millis(300))
        .await
        .is_empty());
    let caps = broker.caps();
    assert_eq!(caps.counters.new_topics_refused.load(Ordering::Relaxed), 2);
    assert_eq!(caps.topics_outside_readings(), 2);
}

/// Publishes retained messages at QoS 1, each acknowledged before the next.
async fn publish_retained(client: &AsyncClient, ev: &mut EventLoop, msgs: &[(&str, &str)]) {
    for (topic, payload) in msgs {
        client
            .publish(*topic, QoS::AtLeastOnce, true, *payload)
            .await
            .unwrap();
        poll_until(ev, |p| matches!(p, Packet::PubAck(_)).then_some(()))
            .await
            .unwrap();
    }
}

/// The retained messages a new subscriber to `filter` gets: (topic, payload), sorted.
async fn retained_now(addr: SocketAddr, id: &str, filter: &str) -> Vec<(String, String)> {
    let (client, mut ev) = connect(id, addr).await;
    client.subscribe(filter, QoS::AtMostOnce).await.unwrap();
    let mut got = Vec::new();
    while let Ok(Ok(event)) = timeout(Duration::from_millis(500), ev.poll()).await {
        if let Event::Incoming(Packet::Publish(p)) = event {
            assert!(p.retain, "a retained message arrives with its flag");
            let payload = String::from_utf8_lossy(&p.payload).into_owned();
            got.push((p.topic, payload));
        }
    }
    got.sort();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_past_the_caps_are_delivered_but_not_retained() {
    let mut cfg = test_config();
    cfg.limits.max_retained_messages = 2;
    cfg.limits.max_retained_payload_bytes = 100;
    let broker = Broker::start(&cfg).await.unwrap();
    let mut link = broker.subscribe("bridge-test", &["#"], 1024).await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt).unwrap();
    let (client, mut ev) = connect("retainer", addr).await;
    let big = "x".repeat(101);
    let msgs = [
        ("junk/r1", "1"),
        ("junk/r2", "2"),
        ("junk/r3", "3"),
        ("junk/r1", big.as_str()),
    ];
    publish_retained(&client, &mut ev, &msgs).await;
    // Every one was delivered live.
    assert_eq!(drain(&mut link, Duration::from_millis(300)).await.len(), 4);
    let pair = |t: &str, p: &str| (t.to_owned(), p.to_owned());
    assert_eq!(
        retained_now(addr, "late1", "junk/#").await,
        [pair("junk/r1", "1"), pair("junk/r2", "2")]
    );
    assert_eq!(
        broker
            .caps()
            .counters
            .retain_refused
            .load(Ordering::Relaxed),
        2
    );
    // An empty payload clears one: room for another.
    publish_retained(&client, &mut ev, &[("junk/r1", ""), ("junk/r3", "3")]).await;
    assert_eq!(
        retained_now(addr, "late2", "junk/#").await,
        [pair("junk/r2", "2"), pair("junk/r3", "3")]
    );
    assert_eq!(broker.caps().retained(), (2, 16));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_its_rate_a_client_loses_qos0_and_waits_for_qos1() {
    const RATE: u64 = 100;
    let mut cfg = test_config();
    cfg.limits.max_publishes_per_sec_per_client = RATE;
    let broker = Broker::start(&cfg).await.unwrap();
    let mut link = broker.subscribe("bridge-test", &["#"], 4096).await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt).unwrap();
    let (client, mut ev) = connect("fast", addr).await;
    tokio::spawn(async move { while ev.poll().await.is_ok() {} });
    let started = Instant::now();
    for i in 0..1000 {
        client
            .publish("sensors/d1/t", QoS::AtMostOnce, false, i.to_string())
            .await
            .unwrap();
    }
    let got = drain(&mut link, Duration::from_millis(500)).await.len() as u64;
    let elapsed = started.elapsed().as_secs_f64();
    let dropped = broker.caps().counters.rate_dropped.load(Ordering::Relaxed);
    assert_eq!(got + dropped, 1000);
    // A full bucket (RATE) plus what refilled while the publishes arrived.
    assert!(
        got <= RATE + (elapsed * RATE as f64) as u64 + 1,
        "{got} in {elapsed} s"
    );
    assert!(got >= RATE, "{got}");

    // QoS 1: nothing lost, the client is slowed to the rate.
    let (client, mut ev) = connect("steady", addr).await;
    let started = Instant::now();
    for i in 0..(2 * RATE) {
        client
            .publish("sensors/d2/t", QoS::AtLeastOnce, false, i.to_string())
            .await
            .unwrap();
    }
    let mut acks = 0;
    while acks < 2 * RATE {
        poll_until(&mut ev, |p| matches!(p, Packet::PubAck(_)).then_some(()))
            .await
            .unwrap();
        acks += 1;
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(800), "{elapsed:?}");
    let got = drain(&mut link, Duration::from_millis(500)).await;
    assert_eq!(got.len() as u64, 2 * RATE);
    assert!(broker.caps().counters.rate_delayed.load(Ordering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_topic_alias_is_accounted_as_its_topic() {
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::{AsyncClient as Client5, Event as E5, MqttOptions as Opt5};

    let mut cfg = test_config();
    cfg.limits.max_retained_messages = 2;
    let broker = Broker::start(&cfg).await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt5).unwrap();
    let mut o = Opt5::new("v5-alias", addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(10));
    let (client, mut ev) = Client5::new(o, 10);
    let alias = |n| PublishProperties {
        topic_alias: Some(n),
        ..Default::default()
    };
    // c/1 retained, then replaced through its alias (still one message), then c/2: fits.
    let sends = [
        ("c/1", "a", Some(1)),
        ("", "b", Some(1)),
        ("c/2", "c", None),
    ];
    for (topic, payload, a) in sends {
        let props = a.map(alias).unwrap_or_default();
        client
            .publish_with_properties(topic, Q5::AtLeastOnce, true, payload, props)
            .await
            .unwrap();
        timeout(WAIT, async {
            loop {
                if let E5::Incoming(P5::PubAck(_)) = ev.poll().await.unwrap() {
                    return;
                }
            }
        })
        .await
        .unwrap();
    }
    let caps = broker.caps();
    assert_eq!(caps.counters.retain_refused.load(Ordering::Relaxed), 0);
    assert_eq!(caps.retained(), (2, 8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_will_is_bounded_and_accounted_like_a_publish() {
    let mut cfg = test_config();
    cfg.limits.max_retained_messages = 1;
    let broker = Broker::start(&cfg).await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt).unwrap();
    // A will topic over the bound: the connection is closed before its CONNACK.
    let mut o = options("long-will", addr);
    o.set_last_will(rumqttc::LastWill::new(
        "w".repeat(300),
        "x",
        QoS::AtMostOnce,
        false,
    ));
    let (_client, mut ev) = AsyncClient::new(o, 10);
    let acked = poll_until(&mut ev, |p| matches!(p, Packet::ConnAck(_)).then_some(())).await;
    assert!(acked.is_err(), "connection should close, got {acked:?}");
    assert_eq!(
        broker
            .caps()
            .counters
            .topics_refused
            .load(Ordering::Relaxed),
        1
    );
    // A retained will takes its place in the retained ledger when its client connects; a
    // second one does not fit and loses its retain flag.
    for (i, topic) in ["sensors/d1/status", "sensors/d2/status"]
        .iter()
        .enumerate()
    {
        let mut o = options(&format!("will{i}"), addr);
        o.set_last_will(rumqttc::LastWill::new(
            *topic,
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        let (_client, mut ev) = AsyncClient::new(o, 10);
        poll_until(&mut ev, |p| matches!(p, Packet::ConnAck(_)).then_some(()))
            .await
            .unwrap();
    }
    assert_eq!(broker.caps().retained(), (1, 24));
    assert_eq!(
        broker
            .caps()
            .counters
            .retain_refused
            .load(Ordering::Relaxed),
        1
    );
}

/// MQTT Explorer subscribes `#` and `$SYS/#` in one SUBSCRIBE. rumqttd drops the connection on
/// any `$` filter without a SUBACK; there are no `$` topics to read (`$share/` groups aside),
/// so such a filter is refused in place (3.1.1 0x80, MQTT 5 0x87) and the rest is granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dollar_filter_other_than_sys_is_refused_in_place_and_the_connection_carries_on() {
    use rumqttc::SubscribeReasonCode as C;
    let broker = Broker::start(&test_config()).await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt).unwrap();
    let (client, mut ev) = connect("explorer", addr).await;
    let codes = subscribe_qos1(&client, &mut ev, &["#", "$SYS/#", "$edgewatch/#"]).await;
    // `$SYS/#` is served by the hub (`broker::sys`); other `$` filters have no topics.
    assert_eq!(
        codes,
        [
            C::Success(QoS::AtLeastOnce),
            C::Success(QoS::AtLeastOnce),
            C::Failure
        ]
    );
    client
        .publish("sensors/d1/t", QoS::AtLeastOnce, false, "still here")
        .await
        .unwrap();
    let got = poll_until(&mut ev, |p| match p {
        Packet::Publish(p) if p.topic == "sensors/d1/t" => Some(p.payload),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(&got[..], b"still here");
}
