//! The device side against the real hub binary: a simulated fleet, a hub restart under load,
//! a serial sensor on a pseudo-terminal, and the one-command demo.

use std::time::{Duration, Instant};

use crate::support::{
    get_json, loopback_config, loopback_config_fixed_ports, poll_until, settle, spawn_hub,
    start_hub, stored, wait_for, Sse,
};
use edgewatch_sim::{Faults, FleetConfig};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Waits (bounded) until the store holds `want` readings; returns what it holds.
async fn wait_stored(http: &str, want: u64, within: Duration) -> u64 {
    poll_until(within, || stored(http), |n| *n == want).await
}

fn fleet(mqtt: std::net::SocketAddr, devices: u32, interval_ms: u64, secs: u64) -> FleetConfig {
    FleetConfig {
        broker_host: mqtt.ip().to_string(),
        broker_port: mqtt.port(),
        devices,
        interval: Duration::from_millis(interval_ms),
        duration: Some(Duration::from_secs(secs)),
        qos: 1,
        faults: Faults::none(),
        ..FleetConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_devices_for_ten_seconds_stored_exactly_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&loopback_config(dir.path(), ""), &[]);
    let cfg = fleet(hub.addr("mqtt"), 200, 1000, 10);
    let report = edgewatch_sim::run_fleet(cfg, CancellationToken::new())
        .await
        .unwrap();
    assert!(report.acknowledged > 3_000, "{report:?}");
    assert_eq!(report.unsent, 0, "{report:?}");
    let n = wait_stored(&hub.http(), report.acknowledged, Duration::from_secs(20)).await;
    assert_eq!(n, report.acknowledged, "stored vs acknowledged; {report:?}");
    let devices = get_json(&format!("{}/v1/devices", hub.http())).await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_restart_mid_run_devices_deliver_their_buffers_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config_fixed_ports(dir.path(), "");
    let hub = start_hub(&config, &[]);
    let mqtt = hub.addr("mqtt");
    let cfg = fleet(mqtt, 20, 100, 10);
    let run = tokio::spawn(edgewatch_sim::run_fleet(cfg, CancellationToken::new()));
    // Mid-run: every device is connected and has readings stored.
    let devices = format!("{}/v1/devices", hub.http());
    wait_for(Duration::from_secs(30), "all 20 devices stored", || async {
        let n = get_json(&devices).await["devices"]
            .as_array()
            .unwrap()
            .len();
        if n == 20 {
            Ok(())
        } else {
            Err(n)
        }
    })
    .await;
    let status = tokio::task::spawn_blocking(move || hub.terminate())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    // Down for a moment while the devices keep sampling into their offline buffers: the
    // outage is the behaviour under test.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hub = start_hub(&config, &[]);
    let report = run.await.unwrap().unwrap();
    assert!(report.reconnects >= 20, "{report:?}");
    assert_eq!(report.dropped, 0, "{report:?}");
    assert_eq!(report.unsent, 0, "{report:?}");
    assert_eq!(report.acknowledged, report.sampled, "{report:?}");
    let n = wait_stored(&hub.http(), report.sampled, Duration::from_secs(20)).await;
    assert_eq!(
        n, report.sampled,
        "every sampled reading stored exactly once; {report:?}"
    );
}

/// Reads SSE events from `url` until `pred` accepts one's data (bounded).
async fn sse_until(url: &str, within: Duration, pred: impl FnMut(&Value) -> bool) -> Value {
    Sse::open(url, None)
        .await
        .expect("SSE stream opens")
        .until(within, pred)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_sensor_on_a_pty_reaches_store_and_sse_and_survives_an_unplug() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = edgewatch_sim::spawn_serial_emulator(edgewatch_sim::SerialConfig {
        device_id: "bench-1".to_owned(),
        interval: Duration::from_millis(200),
        ..edgewatch_sim::SerialConfig::default()
    })
    .unwrap();
    // The hub reads a stable path, as with /dev/serial/by-id; replugging re-points it.
    let link = dir.path().join("ttyUSB-bench");
    std::os::unix::fs::symlink(emulator.path(), &link).unwrap();
    let extra = format!(
        "serial = [{{ path = {:?}, device_id = \"bench-1\", format = \"cobs\", reopen_delay_ms = 100 }}]\n",
        link.display().to_string()
    );
    // `serial` is a top-level key: it must come before the first table.
    let config = loopback_config(dir.path(), "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{extra}{text}")).unwrap();
    let hub = start_hub(&config, &[]);
    let http = hub.http();

    let stream = format!("{http}/v1/stream?filter=sensors/bench-1/%23");
    let first = sse_until(&stream, Duration::from_secs(20), |v| v["type"] == "reading").await;
    assert_eq!(first["deviceId"], "bench-1");
    let page = get_json(&format!("{http}/v1/readings?filter=sensors/bench-1/%23")).await;
    assert!(
        !page["readings"].as_array().unwrap().is_empty(),
        "not in the store: {page}"
    );

    // Unplug: the emulator goes away; plug a new one in on the same path.
    drop(emulator);
    tokio::task::block_in_place(|| hub.wait_for_log("serial port lost", Duration::from_secs(20)));
    let replugged = edgewatch_sim::spawn_serial_emulator(edgewatch_sim::SerialConfig {
        device_id: "bench-1".to_owned(),
        interval: Duration::from_millis(200),
        seed: 7,
        ..edgewatch_sim::SerialConfig::default()
    })
    .unwrap();
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(replugged.path(), &link).unwrap();
    let plugged_at = edgewatch_protocol::timefmt::now_ms();
    let after = sse_until(&stream, Duration::from_secs(20), |v| {
        v["type"] == "reading"
            && edgewatch_protocol::timefmt::parse_time(v["receivedAt"].as_str().unwrap()).unwrap()
                > plugged_at
    })
    .await;
    assert_eq!(after["deviceId"], "bench-1");
    drop(replugged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_serves_the_dashboard_and_stores_all_twenty_devices_within_ten_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "demo",
        "--data-dir",
        &dir.path().join("data").display().to_string(),
        "--mqtt-listen",
        &format!("127.0.0.1:{}", crate::support::free_port()),
        "--http-listen",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let config = loopback_config(dir.path(), "");
    let mut args = args;
    args.extend(["--config".to_owned(), config.display().to_string()]);
    let started = Instant::now();
    let hub = spawn_hub(&args);
    let http = hub.http();
    let page = reqwest::get(format!("{http}/")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<html"));
    let series = format!("{http}/v1/series");
    let ids = poll_until(
        Duration::from_secs(10).saturating_sub(started.elapsed()),
        || async {
            let v = get_json(&series).await;
            let mut ids: Vec<String> = v["series"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["deviceId"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            ids.dedup();
            ids
        },
        |ids| ids.len() >= 20,
    )
    .await;
    assert_eq!(
        ids.len(),
        20,
        "devices with stored readings after {:?}: {ids:?}",
        started.elapsed()
    );
    assert!(
        ids.iter().any(|d| d == "demo-serial"),
        "the serial sensor: {ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_slows_qos1_devices_instead_of_losing_acknowledged_readings() {
    let dir = tempfile::tempdir().unwrap();
    // A small router memory (two 1 MiB segments: rumqttd drops a whole segment when it rolls
    // over, so one segment of about 9,000 readings is the slack), a small in-flight window
    // (100 devices x 10), and a backlog limit well inside the slack. Without backpressure
    // (EDGEWATCH_TEST_BACKLOG=100000000) this test fails: acknowledged readings are lost.
    let limits = std::env::var("EDGEWATCH_TEST_BACKLOG").unwrap_or_else(|_| "2000".into());
    let extra = format!(
        "[broker.limits]\ningest_backlog_max = {limits}\nmax_inflight = 10\n\
         [broker.router]\nmax_segment_size = 1048576\nmax_segment_count = 2\n"
    );
    let hub = start_hub(&loopback_config(dir.path(), &extra), &[]);
    let mut cfg = fleet(hub.addr("mqtt"), 100, 1, 6);
    cfg.rate = Some(200_000.0); // far more than the store takes
    let report = edgewatch_sim::run_fleet(cfg, CancellationToken::new())
        .await
        .unwrap();
    let http = hub.http();
    // Settle: the count stops moving.
    let n = settle(Duration::from_secs(30), Duration::from_millis(500), || {
        stored(&http)
    })
    .await;
    assert!(report.acknowledged > 1_000, "{report:?}");
    assert!(
        n >= report.acknowledged,
        "acknowledged readings lost under overload: stored {n}; {report:?}"
    );
}
