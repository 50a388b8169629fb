//! `edgewatch bridge --mqtt URL` against a real Mosquitto (Debian package, installed by
//! scripts/test): readings published to Mosquitto are stored and served, and the bridge
//! picks up again after Mosquitto restarts.

use std::process::Command;
use std::time::Duration;

use crate::support::{poll_until, spawn_hub, stored, stored_values, Mosquitto};

fn publish(port: u16, topic: &str, payload: &str) {
    let st = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            payload,
        ])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Publishes readings `{"value":i,"unit":"C"}` of ext1's temperature, one per `i`.
fn publish_values(port: u16, values: std::ops::Range<u32>) {
    for i in values {
        publish(
            port,
            "sensors/ext1/temperature",
            &format!("{{\"value\":{i},\"unit\":\"C\"}}"),
        );
    }
}

async fn wait_stored(http: &str, want: u64) -> u64 {
    poll_until(Duration::from_secs(30), || stored(http), |n| *n >= want).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_mode_stores_what_an_external_broker_relays_and_survives_its_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start();
    let port = broker.port;
    let config = dir.path().join("edgewatch.toml");
    std::fs::write(
        &config,
        format!(
            "[bridge]\ndata_dir = {:?}\nhttp_listen = \"127.0.0.1:0\"\nmqtt_client_id = \"edgewatch-test\"\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let url = format!("mqtt://127.0.0.1:{port}");
    let hub = spawn_hub(&[
        "bridge".to_owned(),
        "--mqtt".to_owned(),
        url,
        "--config".to_owned(),
        config.display().to_string(),
    ]);
    assert!(
        hub.listeners.iter().all(|(k, _)| k != "mqtt"),
        "no embedded broker in bridge mode"
    );
    let http = hub.http();
    // The bridge subscribes after it connects: publish once it has.
    broker.wait_subscribed("edgewatch-test", "sensors/#", Duration::from_secs(20));
    publish_values(port, 0..20);
    assert_eq!(wait_stored(&http, 20).await, 20);

    // Mosquitto restarts (persistent session kept on disk): the bridge reconnects,
    // re-subscribes and stores what is published afterwards, plus anything queued for it.
    broker.kill();
    broker.start_again();
    broker.wait_subscribed("edgewatch-test", "sensors/#", Duration::from_secs(30));
    publish_values(port, 20..40);
    assert_eq!(wait_stored(&http, 40).await, 40);
    let values = stored_values(&http, "sensors/ext1/%23").await;
    assert_eq!(values, (0..40).map(f64::from).collect::<Vec<_>>());
}
