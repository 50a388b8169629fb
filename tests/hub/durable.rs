//! Retained messages (device presence included) and persistent sessions across a restart of a
//! real hub process on the same data directory, after an orderly stop (SIGTERM) and after
//! `kill -9`; MQTT 5 session expiry; the retained caps bounding what is persisted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};

use crate::support::{loopback_config_fixed_ports, metric_sums, start_hub, stored, Hub};

/// Every wait of these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(20);
/// sled writes what it holds in memory within 0.5 s: a `kill -9` after this loses nothing.
const FLUSHED: Duration = Duration::from_millis(1500);

/// Connects an MQTT 3.1.1 client and returns it with whether the session was present.
async fn connect(
    addr: SocketAddr,
    id: &str,
    clean: bool,
    will: Option<LastWill>,
) -> (AsyncClient, EventLoop, bool) {
    let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(clean);
    if let Some(will) = will {
        opts.set_last_will(will);
    }
    let (client, mut events) = AsyncClient::new(opts, 32);
    let present = tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => return ack.session_present,
                Ok(_) => {}
                Err(e) => panic!("{id}: connection failed: {e}"),
            }
        }
    })
    .await
    .expect("CONNACK in time");
    (client, events, present)
}

/// Polls `events` until `pick` returns something (panics after [`WAIT`]).
async fn until<T>(events: &mut EventLoop, mut pick: impl FnMut(&Packet) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(p)) => {
                    if let Some(t) = pick(&p) {
                        return t;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("connection failed: {e}"),
            }
        }
    })
    .await
    .expect("the awaited packet in time")
}

/// Publishes at QoS 1 and waits for the PUBACK.
async fn publish(
    client: &AsyncClient,
    events: &mut EventLoop,
    topic: &str,
    retain: bool,
    payload: &[u8],
) {
    client
        .publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
        .await
        .unwrap();
    until(events, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
}

/// Subscribes at QoS 1 and waits for the SUBACK.
async fn subscribe(client: &AsyncClient, events: &mut EventLoop, filter: &str) {
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    until(events, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
}

/// Sends DISCONNECT and lets it go out.
async fn disconnect(client: AsyncClient, mut events: EventLoop) {
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(WAIT, async { while events.poll().await.is_ok() {} }).await;
}

/// The retained messages a new subscriber to `filter` gets: waits for `expected` of them,
/// then half a second more for any other.
async fn retained(addr: SocketAddr, filter: &str, expected: usize) -> BTreeMap<String, String> {
    let (client, mut events, _) = connect(addr, "retained-reader", true, None).await;
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let mut got = BTreeMap::new();
    let mut window = WAIT;
    loop {
        match tokio::time::timeout(window, events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) if p.retain => {
                let payload = String::from_utf8_lossy(&p.payload).into_owned();
                got.insert(p.topic.clone(), payload);
                if got.len() >= expected {
                    window = Duration::from_millis(500);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("reader connection failed: {e}"),
            Err(_) => break,
        }
    }
    disconnect(client, events).await;
    got
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A hub with these `broker.limits` lines on a new data directory (kept while the returned
/// directory lives), with the path of its config.
fn start_with(limits: &str) -> (tempfile::TempDir, std::path::PathBuf, Hub) {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config_fixed_ports(dir.path(), limits);
    let hub = start_hub(&config, &[]);
    (dir, config, hub)
}

/// Restarts the hub on `config` (same data directory, same ports), by SIGTERM or `kill -9`.
fn restart(hub: Hub, config: &Path, kill: bool) -> Hub {
    if kill {
        hub.kill9();
    } else {
        assert!(hub.terminate().success());
    }
    start_hub(config, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_and_presence_survive_sigterm_and_kill_9() {
    let (_dir, config, hub) = start_with("");
    let mqtt = hub.addr("mqtt");

    // Device d1: online, retained, with "offline" as its retained last will; it then drops off
    // the network (no DISCONNECT), so the broker publishes the will.
    let will = LastWill::new("sensors/d1/status", "offline", QoS::AtLeastOnce, true);
    let (d1, mut d1_events, _) = connect(mqtt, "d1", true, Some(will)).await;
    publish(&d1, &mut d1_events, "sensors/d1/status", true, b"online").await;
    drop((d1, d1_events));
    let (app, mut app_events, _) = connect(mqtt, "app", true, None).await;
    publish(
        &app,
        &mut app_events,
        "sensors/d3/temperature",
        true,
        b"21.5",
    )
    .await;
    publish(&app, &mut app_events, "config/x", true, b"v1").await;
    publish(&app, &mut app_events, "sensors/d2/status", true, b"online").await;
    // An empty retained payload clears the topic.
    publish(&app, &mut app_events, "sensors/d2/status", true, b"").await;
    disconnect(app, app_events).await;
    let expected = map(&[
        ("config/x", "v1"),
        ("sensors/d1/status", "offline"),
        ("sensors/d3/temperature", "21.5"),
    ]);
    let deadline = tokio::time::Instant::now() + WAIT;
    while retained(mqtt, "#", 3).await != expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the will was not published"
        );
    }
    let readings = stored(&hub.http()).await;
    assert_eq!(readings, 1, "the bridge stored the retained reading once");

    let hub = restart(hub, &config, false);
    assert_eq!(retained(mqtt, "#", 3).await, expected, "after SIGTERM");
    let metrics = metric_sums(&hub.http()).await;
    assert_eq!(
        metrics.get("edgewatch_mqtt_retained_restored_total"),
        Some(&3.0)
    );
    assert_eq!(metrics.get("edgewatch_mqtt_retained_persisted"), Some(&3.0));

    // A change after the restart, then kill -9 once sled has written it.
    let (app, mut app_events, _) = connect(mqtt, "app", true, None).await;
    publish(&app, &mut app_events, "config/x", true, b"v2").await;
    disconnect(app, app_events).await;
    tokio::time::sleep(FLUSHED).await;
    let hub = restart(hub, &config, true);
    let mut expected = expected;
    expected.insert("config/x".into(), "v2".into());
    assert_eq!(retained(mqtt, "#", 3).await, expected, "after kill -9");
    assert_eq!(
        retained(mqtt, "sensors/+/status", 1).await,
        map(&[("sensors/d1/status", "offline")])
    );
    // The restored messages were not stored again as readings.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stored(&hub.http()).await, readings);
    hub.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_survives_sigterm_and_kill_9() {
    let (_dir, config, mut hub) = start_with("");
    let mqtt = hub.addr("mqtt");
    let (s1, mut s1_events, present) = connect(mqtt, "s1", false, None).await;
    assert!(!present);
    subscribe(&s1, &mut s1_events, "alerts/#").await;
    disconnect(s1, s1_events).await;

    for (round, kill) in [(1, false), (2, true)] {
        // Queued for the offline s1 before the stop (`broker::durable::queue`).
        let (p, mut p_events, _) = connect(mqtt, "publisher", true, None).await;
        let queued = format!("q{round}");
        publish(&p, &mut p_events, "alerts/q", false, queued.as_bytes()).await;
        disconnect(p, p_events).await;
        if kill {
            tokio::time::sleep(FLUSHED).await;
        }
        hub = restart(hub, &config, kill);
        // Published after the restart while s1 is offline.
        let (p, mut p_events, _) = connect(mqtt, "publisher", true, None).await;
        let message = format!("m{round}");
        publish(&p, &mut p_events, "alerts/a", false, message.as_bytes()).await;
        disconnect(p, p_events).await;

        let (s1, mut s1_events, present) = connect(mqtt, "s1", false, None).await;
        assert!(present, "round {round}: session present after the restart");
        // The message queued before the stop first (once: the last round's was acknowledged),
        // then the one rumqttd queued since the restart.
        for (topic, payload) in [("alerts/q", &queued), ("alerts/a", &message)] {
            let got = until(&mut s1_events, |p| match p {
                Packet::Publish(p) => Some((p.topic.clone(), p.payload.clone(), p.qos)),
                _ => None,
            })
            .await;
            assert_eq!((got.0.as_str(), &got.1[..]), (topic, payload.as_bytes()));
            assert_eq!(got.2, QoS::AtLeastOnce);
        }
        disconnect(s1, s1_events).await;
    }
    let metrics = metric_sums(&hub.http()).await;
    assert_eq!(
        metrics.get("edgewatch_mqtt_sessions_restored_total"),
        Some(&1.0)
    );
    assert_eq!(metrics.get("edgewatch_mqtt_sessions_persisted"), Some(&1.0));
    assert_eq!(
        metrics.get("edgewatch_mqtt_queued_delivered_total"),
        Some(&1.0),
        "this start's: q2"
    );
    assert_eq!(metrics.get("edgewatch_mqtt_queued_persisted"), Some(&0.0));

    // A clean session ends the persisted one.
    let (c, c_events, _) = connect(mqtt, "s1", true, None).await;
    disconnect(c, c_events).await;
    let hub = restart(hub, &config, false);
    let (s1, s1_events, present) = connect(mqtt, "s1", false, None).await;
    assert!(!present, "a clean session discarded it");
    disconnect(s1, s1_events).await;
    hub.terminate();
}

/// An MQTT 5 client with this clean start and session expiry; returns session present.
async fn connect_v5(
    addr: SocketAddr,
    id: &str,
    clean: bool,
    expiry: u32,
) -> (rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop, bool) {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::Event as E5;
    let mut opts = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_start(clean)
        .set_session_expiry_interval(Some(expiry));
    let (client, mut events) = rumqttc::v5::AsyncClient::new(opts, 32);
    let present = tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(E5::Incoming(P5::ConnAck(ack))) => return ack.session_present,
                Ok(_) => {}
                Err(e) => panic!("{id}: connection failed: {e}"),
            }
        }
    })
    .await
    .expect("CONNACK in time");
    (client, events, present)
}

/// Publishes `topic` retained at QoS 1 with a message expiry of `secs`, and waits for the
/// PUBACK.
async fn publish_v5_expiring(
    client: &rumqttc::v5::AsyncClient,
    events: &mut rumqttc::v5::EventLoop,
    topic: &str,
    secs: u32,
) {
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PublishProperties};
    let props = PublishProperties {
        message_expiry_interval: Some(secs),
        ..PublishProperties::default()
    };
    let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
    let payload = topic.as_bytes().to_vec();
    client
        .publish_with_properties(topic, qos, true, payload, props)
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(rumqttc::v5::Event::Incoming(P5::PubAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("v5 connection failed: {e}"),
            }
        }
    })
    .await
    .expect("PUBACK in time");
}

async fn disconnect_v5(client: rumqttc::v5::AsyncClient, mut events: rumqttc::v5::EventLoop) {
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(WAIT, async { while events.poll().await.is_ok() {} }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_session_expiry_ends_the_session_and_clean_start_keeps_one() {
    let (_dir, config, hub) = start_with("");
    let mqtt5 = hub.addr("mqtt5");

    // Clean Start 1 with an expiry: a session is kept (rumqttd alone keeps none).
    let (c, e, present) = connect_v5(mqtt5, "v5", true, 2).await;
    assert!(!present);
    disconnect_v5(c, e).await;
    let (c, e, present) = connect_v5(mqtt5, "v5", false, 2).await;
    assert!(present, "reconnected within the expiry");
    disconnect_v5(c, e).await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let (c, e, present) = connect_v5(mqtt5, "v5", false, 2).await;
    assert!(!present, "the session expired after 2 s");
    disconnect_v5(c, e).await;
    let metrics = metric_sums(&hub.http()).await;
    assert_eq!(
        metrics.get("edgewatch_mqtt_sessions_expired_total"),
        Some(&1.0)
    );

    // A longer expiry survives a restart; so does a retained message's message expiry.
    let (c, mut e, _) = connect_v5(mqtt5, "v5-long", false, 600).await;
    for (topic, secs) in [("exp/short", 1), ("exp/long", 600)] {
        publish_v5_expiring(&c, &mut e, topic, secs).await;
    }
    disconnect_v5(c, e).await;
    // An MQTT 3.1.1 subscriber gets an MQTT 5 publish with properties (rumqttd's 3.1.1
    // encoder used to panic on them and drop the connection).
    let both = map(&[("exp/long", "exp/long"), ("exp/short", "exp/short")]);
    assert_eq!(retained(hub.addr("mqtt"), "exp/#", 2).await, both);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hub = restart(hub, &config, false);
    let (c, e, present) = connect_v5(mqtt5, "v5-long", false, 600).await;
    assert!(present, "a 600 s session survives the restart");
    disconnect_v5(c, e).await;
    let mqtt = hub.addr("mqtt");
    let expected = map(&[("exp/long", "exp/long")]);
    assert_eq!(
        retained(mqtt, "exp/#", 1).await,
        expected,
        "exp/short expired"
    );
    hub.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_caps_bound_what_is_persisted_and_restored() {
    let (_dir, config, hub) = start_with("[broker.limits]\nmax_retained_messages = 2\n");
    let mqtt = hub.addr("mqtt");
    let (app, mut events, _) = connect(mqtt, "app", true, None).await;
    for topic in ["caps/a", "caps/b", "caps/c"] {
        publish(&app, &mut events, topic, true, topic.as_bytes()).await;
    }
    disconnect(app, events).await;
    let metrics = metric_sums(&hub.http()).await;
    assert_eq!(metrics.get("edgewatch_mqtt_retained_persisted"), Some(&2.0));
    assert_eq!(
        metrics.get("edgewatch_mqtt_retain_refused_total"),
        Some(&1.0)
    );

    let hub = restart(hub, &config, false);
    let expected = map(&[("caps/a", "caps/a"), ("caps/b", "caps/b")]);
    assert_eq!(retained(mqtt, "caps/#", 2).await, expected);
    let metrics = metric_sums(&hub.http()).await;
    assert_eq!(
        metrics.get("edgewatch_mqtt_retained_restored_total"),
        Some(&2.0)
    );
    hub.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_past_the_bound_are_counted_and_not_persisted() {
    let (_dir, config, hub) = start_with("[broker.limits]\nmax_persisted_sessions = 1\n");
    let mqtt = hub.addr("mqtt");
    for id in ["kept", "over"] {
        let (c, mut e, _) = connect(mqtt, id, false, None).await;
        subscribe(&c, &mut e, "b/#").await;
        disconnect(c, e).await;
    }
    let metrics = metric_sums(&hub.http()).await;
    assert_eq!(metrics.get("edgewatch_mqtt_sessions_persisted"), Some(&1.0));
    assert_eq!(
        metrics.get("edgewatch_mqtt_sessions_not_persisted_total"),
        Some(&1.0)
    );
    // The broker still keeps the second session until it stops.
    let (c, e, present) = connect(mqtt, "over", false, None).await;
    assert!(present);
    disconnect(c, e).await;

    let hub = restart(hub, &config, false);
    let (c, e, present) = connect(mqtt, "kept", false, None).await;
    assert!(present, "the session within the bound survives the restart");
    disconnect(c, e).await;
    let (c, e, present) = connect(mqtt, "over", false, None).await;
    assert!(!present, "the session past the bound does not");
    disconnect(c, e).await;
    hub.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_holds_its_filters_against_the_per_client_cap() {
    use rumqttc::SubscribeReasonCode;
    let (_dir, config, hub) = start_with("[broker.limits]\nmax_subscriptions_per_client = 1\n");
    let mqtt = hub.addr("mqtt");
    let (c, mut e, _) = connect(mqtt, "capped", false, None).await;
    subscribe(&c, &mut e, "a/#").await;
    disconnect(c, e).await;

    let hub = restart(hub, &config, false);
    let (c, mut e, present) = connect(mqtt, "capped", false, None).await;
    assert!(present);
    c.subscribe("b/#", QoS::AtLeastOnce).await.unwrap();
    let codes = until(&mut e, |p| match p {
        Packet::SubAck(ack) => Some(ack.return_codes.clone()),
        _ => None,
    })
    .await;
    assert_eq!(codes, [SubscribeReasonCode::Failure], "a/# still counts");
    // Subscribing again to the filter it holds is granted.
    c.subscribe("a/#", QoS::AtLeastOnce).await.unwrap();
    let codes = until(&mut e, |p| match p {
        Packet::SubAck(ack) => Some(ack.return_codes.clone()),
        _ => None,
    })
    .await;
    assert_eq!(codes, [SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    disconnect(c, e).await;
    hub.terminate();
}
