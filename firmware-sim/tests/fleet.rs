//! Fleets against real brokers: the embedded edgewatch broker and Mosquitto.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgewatch_broker::{Broker, BrokerConfig, ListenerKind};
use edgewatch_protocol::payload::{decode_publish, Inbound};
use edgewatch_protocol::timefmt::now_ms;
use edgewatch_sim::{run_fleet, Faults, FleetConfig, Format, TopicShape};
use edgewatch_testkit::{poll_until, wait_until, Mosquitto};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

async fn embedded_broker() -> Broker {
    let mut cfg = BrokerConfig::default();
    cfg.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    cfg.mqtt5.enabled = false;
    cfg.websocket.enabled = false;
    cfg.allow_anonymous = true;
    Broker::start(&cfg).await.unwrap()
}

fn key_of(topic: &str, payload: &[u8]) -> Option<(String, String, i64)> {
    match decode_publish(topic, payload, now_ms()) {
        Ok(Inbound::Reading(r)) => Some((r.device_id, r.metric, r.timestamp_ms)),
        _ => None,
    }
}

/// Issue 6: 200 devices for a few seconds against the embedded broker; every acknowledged
/// reading reaches a subscriber exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_devices_every_acknowledged_reading_arrives_once() {
    let broker = embedded_broker().await;
    let addr = broker.addr(ListenerKind::Mqtt).unwrap();
    let mut link = broker
        .subscribe("test-observer", &["sensors/#"], 100_000)
        .await
        .unwrap();
    let collector = tokio::spawn(async move {
        let mut seen: HashMap<(String, String, i64), u32> = HashMap::new();
        while let Ok(Some(p)) = timeout(Duration::from_secs(3), link.recv()).await {
            if let Some(key) = key_of(&p.topic, &p.payload) {
                *seen.entry(key).or_default() += 1;
            }
        }
        seen
    });
    let cfg = FleetConfig {
        broker_host: addr.ip().to_string(),
        broker_port: addr.port(),
        devices: 200,
        interval: Duration::from_millis(500),
        jitter: Duration::from_millis(100),
        duration: Some(Duration::from_secs(6)),
        faults: Faults::none(),
        connect_rate: 1000,
        verify: true,
        id_prefix: "t200".to_owned(),
        ..FleetConfig::default()
    };
    let report = timeout(
        Duration::from_secs(30),
        run_fleet(cfg, CancellationToken::new()),
    )
    .await
    .expect("fleet ends by itself")
    .unwrap();
    println!("{report}");
    let seen = timeout(Duration::from_secs(20), collector)
        .await
        .unwrap()
        .unwrap();
    // ~200 devices × 2 metrics × 12 ticks.
    assert!(report.acknowledged > 3000, "{report}");
    assert_eq!(report.acknowledged, report.sampled, "{report}");
    assert_eq!(
        (report.dropped, report.unsent, report.errors),
        (0, 0, 0),
        "{report}"
    );
    assert_eq!(
        seen.len() as u64,
        report.acknowledged,
        "distinct readings received"
    );
    assert!(seen.values().all(|n| *n == 1), "no reading twice");
    let verify = report.verify.clone().unwrap();
    assert_eq!((verify.missing, verify.duplicates), (0, 0));
    assert_eq!(verify.received, report.acknowledged);
    assert!(verify.latency_ms.is_some());
}

/// The same simulator against Mosquitto, binary payloads on the shared topics, QoS 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_against_mosquitto() {
    if !Mosquitto::installed("fleet_against_mosquitto") {
        return;
    }
    let mosquitto = Mosquitto::start();
    let cfg = FleetConfig {
        broker_port: mosquitto.port,
        devices: 50,
        metrics: vec!["temperature".into(), "co2".into(), "battery".into()],
        qos: 0,
        format: Format::Binary,
        topic_shape: TopicShape::Shared,
        rate: Some(2000.0),
        max: Some(6000),
        duration: Some(Duration::from_secs(10)),
        faults: Faults::none(),
        verify: true,
        id_prefix: "mq".to_owned(),
        ..FleetConfig::default()
    };
    let report = timeout(
        Duration::from_secs(40),
        run_fleet(cfg, CancellationToken::new()),
    )
    .await
    .expect("fleet ends by itself")
    .unwrap();
    println!("{report}");
    assert_eq!(report.sampled, 6000, "--max bounds the count: {report}");
    assert_eq!(report.sent, 6000, "{report}");
    let verify = report.verify.clone().unwrap();
    assert_eq!(
        (verify.received, verify.duplicates, verify.missing),
        (6000, 0, 0)
    );
    assert!(report.achieved_rate > 1000.0, "{report}");
}

/// A reading the observer received: device, metric, timestamp, arrival time (ms).
type Arrival = (String, String, i64, i64);

/// Issue 6: the broker restarts mid-run; devices reconnect and deliver what they buffered, with
/// the original timestamps; with QoS 1 nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing_with_qos1() {
    if !Mosquitto::installed("broker_restart_loses_nothing_with_qos1") {
        return;
    }
    let mut mosquitto = Mosquitto::start();
    let port = mosquitto.port;

    // An observer with a persistent session: Mosquitto keeps its subscription and queues
    // readings for it across the restart.
    let mut opts = MqttOptions::new("restart-observer", "127.0.0.1", port);
    opts.set_clean_session(false);
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    let observer_stop = CancellationToken::new();
    let (sub_tx, sub_rx) = tokio::sync::oneshot::channel();
    // What the observer received, shared so the test can wait on it.
    let seen: Arc<Mutex<Vec<Arrival>>> = Arc::default();
    let observer = {
        let stop = observer_stop.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut sub_tx = Some(sub_tx);
            loop {
                let event = tokio::select! {
                    () = stop.cancelled() => break,
                    e = eventloop.poll() => e,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) if sub_tx.is_some() => {
                        client
                            .subscribe("sensors/#", QoS::AtLeastOnce)
                            .await
                            .unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = sub_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Some((d, m, ts)) = key_of(&p.topic, &p.payload) {
                            seen.lock().unwrap().push((d, m, ts, now_ms()));
                        }
                    }
                    Ok(_) => {}
                    // Broker down: rumqttc reconnects on the next poll; pace the retries.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
    };
    timeout(Duration::from_secs(10), sub_rx)
        .await
        .unwrap()
        .unwrap();

    let cfg = FleetConfig {
        broker_port: port,
        devices: 20,
        interval: Duration::from_millis(100),
        duration: Some(Duration::from_secs(7)),
        faults: Faults::none(),
        backoff_min: Duration::from_millis(200),
        backoff_max: Duration::from_millis(800),
        drain_timeout: Duration::from_secs(8),
        id_prefix: "rs".to_owned(),
        ..FleetConfig::default()
    };
    let fleet = tokio::spawn(run_fleet(cfg, CancellationToken::new()));
    // Mid-run: every device is connected and its readings arrive.
    wait_until(
        Duration::from_secs(20),
        "readings from all 20 devices",
        || {
            let seen = seen.lock().unwrap();
            seen.iter().map(|(d, ..)| d).collect::<HashSet<_>>().len() == 20
        },
    )
    .await;
    let down_ms = now_ms();
    let restarted = tokio::task::spawn_blocking(move || {
        mosquitto.stop();
        // The outage is the behaviour under test: devices buffer what they sample meanwhile.
        std::thread::sleep(Duration::from_millis(1500));
        mosquitto.start_again();
        mosquitto
    });
    let report = timeout(Duration::from_secs(40), fleet)
        .await
        .expect("fleet ends by itself")
        .unwrap()
        .unwrap();
    println!("{report}");
    // Keep Mosquitto running (dropping it kills it) until the observer is done.
    let _mosquitto = restarted.await.expect("mosquitto restarted");
    // Let the observer take what Mosquitto queued for it (bounded: the assertions below say
    // what is missing), then stop it.
    let distinct_seen = || {
        let seen = seen.lock().unwrap();
        seen.iter()
            .map(|(d, m, ts, _)| (d.clone(), m.clone(), *ts))
            .collect::<HashSet<_>>()
            .len() as u64
    };
    let all = poll_until(
        Duration::from_secs(20),
        || std::future::ready(distinct_seen()),
        |n| *n >= report.sampled,
    )
    .await;
    println!("observer has {all} of {} sampled", report.sampled);
    observer_stop.cancel();
    timeout(Duration::from_secs(10), observer)
        .await
        .unwrap()
        .unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());

    assert!(
        report.reconnects >= 20,
        "every device reconnected: {report}"
    );
    assert!(report.errors >= 20, "{report}");
    assert_eq!((report.dropped, report.unsent), (0, 0), "{report}");
    assert_eq!(report.acknowledged, report.sampled, "{report}");
    let distinct: HashSet<_> = seen.iter().map(|(d, m, ts, _)| (d, m, ts)).collect();
    assert_eq!(
        distinct.len() as u64,
        report.sampled,
        "every sampled reading arrived (duplicates allowed for unacked in-flight ones)"
    );
    // Readings taken while the broker was down kept their original timestamps: they arrived
    // well after their event time.
    let buffered = seen
        .iter()
        .filter(|(_, _, ts, at)| *ts > down_ms + 300 && *ts < down_ms + 1200 && at - ts > 150)
        .count();
    assert!(
        buffered >= 20,
        "readings from the outage were delivered late: {buffered}"
    );
}
