//! The log an operator reads: devices connecting and leaving (with and without DISCONNECT)
//! and an orderly stop log nothing at ERROR, and a log that is not a terminal has no colour
//! codes. Before, rumqttd logged `router-drop error=Link(Recv(Disconnected))`-style lines at
//! ERROR for normal disconnects and about 20 `no-connection id N is already gone` at a stop
//! (issue #19, logs point).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::support::{bin, loopback_config, Process};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

/// How long a step may take (a debug build on a busy 2-core machine).
const STEP: Duration = Duration::from_secs(20);

/// Connects `id` and waits for its CONNACK.
async fn connect(mqtt: SocketAddr, id: &str) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(id, mqtt.ip().to_string(), mqtt.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, 16);
    tokio::time::timeout(STEP, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("{id}: connection failed: {e}"),
            }
        }
    })
    .await
    .expect("CONNACK in time");
    (client, events)
}

/// Polls `events` until `done` holds for an incoming packet.
async fn until(events: &mut EventLoop, done: impl Fn(&Packet) -> bool) {
    tokio::time::timeout(STEP, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(p)) if done(&p) => break,
                Ok(_) => {}
                Err(e) => panic!("connection failed: {e}"),
            }
        }
    })
    .await
    .expect("the broker answered in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_an_orderly_stop_log_nothing_at_error_and_no_colour() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), "");
    // Standard error is a pipe here, not a terminal: no colour even without NO_COLOR.
    let mut hub = Process::spawn(
        Command::new(bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("EDGEWATCH_LOG", "info")
            .env_remove("NO_COLOR"),
    );
    let ready = hub.line_starting_with("edgewatch ready", Duration::from_secs(60));
    let addr = |name: &str| -> SocketAddr {
        let word = ready.split_whitespace().find_map(|w| w.strip_prefix(name));
        word.and_then(|a| a.parse().ok())
            .expect("listener in the ready line")
    };
    let mqtt = addr("mqtt=");

    // A subscriber and a publisher; the publisher leaves with DISCONNECT.
    let (sub, mut sub_events) = connect(mqtt, "logs-sub").await;
    sub.subscribe("sensors/#", QoS::AtLeastOnce).await.unwrap();
    until(&mut sub_events, |p| matches!(p, Packet::SubAck(_))).await;
    let (publisher, mut pub_events) = connect(mqtt, "logs-pub").await;
    publisher
        .publish("sensors/d1/temperature", QoS::AtLeastOnce, false, "21.5")
        .await
        .unwrap();
    until(&mut pub_events, |p| matches!(p, Packet::PubAck(_))).await;
    until(&mut sub_events, |p| matches!(p, Packet::Publish(_))).await;
    publisher.disconnect().await.unwrap();
    let _ = tokio::time::timeout(STEP, pub_events.poll()).await;
    // Devices that publish at QoS 0 and send DISCONNECT at once, as `mosquitto_pub` does:
    // the router then sees the connection go twice (DISCONNECT, then the socket's close).
    for i in 0..3 {
        let (client, mut events) = connect(mqtt, &format!("logs-q0-{i}")).await;
        client
            .publish("sensors/d2/temperature", QoS::AtMostOnce, false, "20")
            .await
            .unwrap();
        client.disconnect().await.unwrap();
        let sent = tokio::time::timeout(STEP, async {
            while let Ok(e) = events.poll().await {
                if matches!(e, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        });
        sent.await.expect("DISCONNECT sent in time");
    }
    // A device that goes away without DISCONNECT (its socket is dropped), twice.
    for i in 0..2 {
        let (_client, events) = connect(mqtt, &format!("logs-drop-{i}")).await;
        drop(events);
    }
    // Devices still connected at the stop, as in the demo (its stop logged one `no-connection
    // id N is already gone` per connected device).
    let mut idle = Vec::new();
    for i in 0..5 {
        idle.push(connect(mqtt, &format!("logs-idle-{i}")).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The orderly stop with these and the subscriber still connected.
    let status = hub.terminate(Duration::from_secs(20));
    drop((sub_events, idle));
    assert!(status.success(), "exit status {status}");
    let mut log = Vec::new();
    while let Ok(line) = hub.stderr().recv_timeout(Duration::from_secs(5)) {
        log.push(line);
    }
    let text = log.join("\n");
    assert!(
        log.iter().any(|l| l.contains("MQTT listener ready")),
        "the log was captured:\n{text}"
    );
    let errors: Vec<&String> = log.iter().filter(|l| l.contains(" ERROR ")).collect();
    assert!(
        errors.is_empty(),
        "lines at ERROR: {errors:#?}\nwhole log:\n{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "ESC (colour codes) in the log:\n{text}"
    );
}
