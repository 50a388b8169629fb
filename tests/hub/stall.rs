//! A stalled writer (a slow or full disk) under QoS 1 load: the broker holds acknowledgements
//! for as long as the stall lasts, so every reading a device was told arrived is stored.
//! Before, a held PUBACK was let go after one second whatever the writer's state, and the
//! broker's log for the bridge then dropped acknowledged readings: with that behaviour put
//! back, this test failed with 104,214 acknowledged, 97,082 stored, 7,132 skipped.

use std::time::Duration;

use crate::support::{bin, loopback_config, metric_sums, poll_until, settle, stored, Hub};
use edgewatch_sim::{Faults, FleetConfig};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_reading_is_stored_across_a_ten_second_writer_stall() {
    let dir = tempfile::tempdir().unwrap();
    // A small backlog limit, writer queue and router log (128 KiB: about 1,000 readings, more
    // than twice the backlog limit, as it must be), so that the stall fills them quickly and
    // 200 devices with 100 publishes in flight each could overflow the log.
    let config = loopback_config(
        dir.path(),
        "queue_capacity = 256\n\
         [broker.limits]\ningest_backlog_max = 200\n\
         [broker.router]\nmax_segment_size = 32768\nmax_segment_count = 4\n",
    );
    let stall = ("EDGEWATCH_TEST_WRITER_STALL", "2000:10000");
    let hub = Hub::start_with_env(bin(), &config, &[stall]);
    let mqtt = hub.addr("mqtt");
    let fleet = FleetConfig {
        broker_host: mqtt.ip().to_string(),
        broker_port: mqtt.port(),
        devices: 200,
        interval: Duration::from_millis(50),
        duration: Some(Duration::from_secs(14)),
        qos: 1,
        faults: Faults::none(),
        ..FleetConfig::default()
    };
    let report = edgewatch_sim::run_fleet(fleet, CancellationToken::new())
        .await
        .unwrap();
    let http = hub.http();
    // The stall may still be on when the fleet stops (it starts once 2,000 readings are
    // stored): wait for every acknowledged reading, or a minute, then for the count to settle.
    poll_until(
        Duration::from_secs(60),
        || stored(&http),
        |n| *n >= report.acknowledged,
    )
    .await;
    let n = settle(Duration::from_secs(60), Duration::from_millis(500), || {
        stored(&http)
    })
    .await;
    let sums = metric_sums(&http).await;
    let held = sums
        .get("edgewatch_mqtt_held_acks_total")
        .copied()
        .unwrap_or(0.0);
    let skipped = sums
        .get("edgewatch_mqtt_ingest_skipped_total")
        .copied()
        .unwrap_or(-1.0);
    println!(
        "writer stall: acknowledged {}, stored {n}, held acks {held}, skipped {skipped}; {report:?}",
        report.acknowledged
    );
    assert!(
        held > 0.0,
        "the stall never held an acknowledgement: {report:?}"
    );
    assert_eq!(
        skipped, 0.0,
        "the broker dropped publishes of the bridge's log"
    );
    assert!(
        n >= report.acknowledged,
        "acknowledged {} but stored {n}: acknowledged readings were lost",
        report.acknowledged
    );
    // Every publish counted into the backlog reached the bridge: connections the broker
    // closed for the backlog did not leave counted publishes behind.
    assert_eq!(
        sums["edgewatch_mqtt_ingest_backlog"], 0.0,
        "the backlog count drifted"
    );
    let disconnects = sums["edgewatch_mqtt_ack_stall_disconnects_total"];
    assert_eq!(disconnects, 0.0, "a 10 s stall is under the 60 s bound");
}
