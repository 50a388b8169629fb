//! `edgewatch demo`: the hub with a demo fleet, so the dashboard has something to show before
//! any hardware is plugged in.
//!
//! 19 simulated sensors publish over MQTT to the embedded broker at 1 Hz; a 20th runs as
//! emulated serial firmware on a pseudo-terminal, read by the hub's serial reader like a real
//! USB sensor.

use std::time::Duration;

use anyhow::Context as _;
use edgewatch_sim::FleetConfig;

use crate::config::AppConfig;
use crate::hub::{self, Source};

/// Simulated MQTT sensors in the demo (plus one serial sensor).
const MQTT_SENSORS: u32 = 19;

/// Runs until SIGINT / SIGTERM.
pub(crate) async fn run(cfg: AppConfig) -> anyhow::Result<()> {
    let stop_requested = crate::signals::stop_requested();
    let running = hub::start(cfg, Source::Embedded).await?;
    let mqtt = running
        .mqtt_addr()
        .context("the demo needs the MQTT listener enabled")?;
    let stop = running.stopping();

    let fleet = FleetConfig {
        broker_host: mqtt.ip().to_string(),
        broker_port: mqtt.port(),
        devices: MQTT_SENSORS,
        interval: Duration::from_secs(1),
        jitter: Duration::from_millis(100),
        id_prefix: "demo".to_owned(),
        ..FleetConfig::default()
    };
    let fleet_stop = stop.clone();
    let fleet_task = tokio::spawn(async move { edgewatch_sim::run_fleet(fleet, fleet_stop).await });
    let serial = crate::serial::spawn_demo_sensor(running.publish.clone(), stop.clone())?;

    println!(
        "demo: {MQTT_SENSORS} simulated MQTT sensors on mqtt://{mqtt} and 1 serial sensor on {}",
        serial.display()
    );
    println!("demo: open {} (Ctrl-C stops)", running.dashboard_url());

    stop_requested.await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(8), fleet_task).await;
    running.stop().await
}
