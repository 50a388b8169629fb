//! `kill -9` of the all-in-one hub under load: what can be lost is what the broker had
//! acknowledged and the writer had not yet made durable. This test measures it and checks it
//! against that bound; the README quotes the figure.

use std::time::Duration;

use crate::support::{loopback_config_fixed_ports, poll_until, settle, start_hub, stored};
use edgewatch_sim::{Faults, FleetConfig};
use tokio_util::sync::CancellationToken;

/// Readings the hub can hold between the broker's acknowledgement and a durable commit:
/// the in-process link buffer (4,096), the writer queue (`bridge.queue_capacity`, 8,192), the
/// batches applied and waiting for a flush (4 x `bridge.batch_max`, 4,000) and what rumqttd
/// queues for the link (`broker.router.max_outgoing_packet_count`, 1,000).
const BOUND: u64 = 4_096 + 8_192 + 4 * 1_000 + 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_at_most_what_was_acknowledged_but_not_yet_durable() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config_fixed_ports(dir.path(), "");
    let hub = start_hub(&config, &[]);
    let mqtt = hub.addr("mqtt");
    let fleet = FleetConfig {
        broker_host: mqtt.ip().to_string(),
        broker_port: mqtt.port(),
        devices: 50,
        interval: Duration::from_millis(50),
        duration: Some(Duration::from_secs(8)),
        qos: 1,
        faults: Faults::none(),
        ..FleetConfig::default()
    };
    let run = tokio::spawn(edgewatch_sim::run_fleet(fleet, CancellationToken::new()));
    // Three seconds of load before the kill: the scenario the README quotes figures for.
    tokio::time::sleep(Duration::from_secs(3)).await;
    hub.kill9();
    let hub = start_hub(&config, &[]);
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.unsent, 0, "{report:?}");
    // Let the last readings settle (the count stops moving), then compare.
    let http = hub.http();
    poll_until(Duration::from_secs(30), || stored(&http), |n| *n > 0).await;
    let n = settle(Duration::from_secs(30), Duration::from_millis(500), || {
        stored(&http)
    })
    .await;
    let lost = report.acknowledged.saturating_sub(n);
    println!(
        "kill -9 under load: acknowledged {}, stored {n}, lost {lost} (bound {BOUND}); rate {:.0}/s",
        report.acknowledged, report.achieved_rate
    );
    assert!(
        n <= report.acknowledged,
        "stored more than acknowledged: duplicates? {n} vs {report:?}"
    );
    assert!(
        lost <= BOUND,
        "lost {lost} readings, over the bound {BOUND}; {report:?}"
    );
}
