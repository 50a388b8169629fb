//! Device shapes against the embedded broker: every shape's publishes arrive on its
//! firmware's topics, presence is retained with the last will's payload at the end, and the
//! report counts publishes and the readings they carry.

use std::collections::HashSet;
use std::time::Duration;

use edgewatch_broker::{Broker, BrokerConfig, ListenerKind};
use edgewatch_sim::{run_fleet, Faults, FleetConfig, Shape};
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

/// The retained message on `topic`, read by a fresh subscriber (bounded wait).
async fn retained(port: u16, topic: &str) -> Option<String> {
    let mut opts = MqttOptions::new(format!("retained-{}", topic.len()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    let found = timeout(Duration::from_secs(5), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topic => {
                    return Some(String::from_utf8_lossy(&p.payload).into_owned());
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten();
    let _ = client.disconnect().await;
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shape_publishes_its_firmware_topics_and_counts_publishes() {
    let broker = embedded_broker().await;
    let addr = broker.addr(ListenerKind::Mqtt).unwrap();
    for shape in [
        Shape::Tasmota,
        Shape::Zigbee2mqtt,
        Shape::Shelly,
        Shape::Esphome,
        Shape::Homeassistant,
    ] {
        let prefix = format!("shape{shape}");
        let mut link = broker
            .subscribe(&format!("observer-{shape}"), &["#"], 10_000)
            .await
            .unwrap();
        let cfg = FleetConfig {
            broker_host: addr.ip().to_string(),
            broker_port: addr.port(),
            devices: 3,
            shape,
            interval: Duration::from_millis(100),
            max: Some(30),
            faults: Faults::none(),
            verify: true,
            id_prefix: prefix.clone(),
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
        assert_eq!(report.shape, shape);
        assert_eq!((report.sampled, report.acknowledged), (30, 30), "{report}");
        assert_eq!(report.readings_per_publish, shape.readings_per_publish());
        assert_eq!(report.expected_readings, 30 * shape.readings_per_publish());
        let verify = report.verify.clone().unwrap();
        assert!(
            !verify.exact,
            "{shape}: shaped publishes are counted, not identified"
        );
        assert_eq!((verify.received, verify.missing), (30, 0), "{report}");
        assert!(
            report.to_string().contains("verify is not exact"),
            "{report}"
        );

        // What a subscriber of `#` saw: the shape's readings of this fleet's devices.
        let mut readings = 0;
        let mut devices = HashSet::new();
        while let Ok(Some(p)) = timeout(Duration::from_millis(500), link.recv()).await {
            let Some(device) = shape.device_of(&p.topic) else {
                continue;
            };
            if !device.starts_with(&prefix) {
                continue;
            }
            readings += 1;
            devices.insert(device.to_owned());
            let text = String::from_utf8(p.payload.to_vec()).unwrap();
            if matches!(shape, Shape::Tasmota | Shape::Zigbee2mqtt) {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert!(v.is_object(), "{text}");
            } else {
                assert!(text.parse::<f64>().is_ok(), "{}: {text}", p.topic);
            }
        }
        assert_eq!(readings, 30, "{shape}");
        assert_eq!(devices.len(), 3, "{shape}: {devices:?}");

        // Presence: retained, and at the orderly end the last will's payload.
        let presence = shape.presence(&format!("{prefix}-0"));
        assert_eq!(
            retained(addr.port(), &presence.topic).await.as_deref(),
            Some(presence.offline),
            "{shape}"
        );
    }
}
