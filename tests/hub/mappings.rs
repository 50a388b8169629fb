//! Ingest mappings end to end (`[ingest]`, docs/mappings.md): the real hub with every preset
//! and a mapping of its own, devices publishing in their firmware's shape over MQTT, and what
//! the HTTP API and `/metrics` then say.

use std::time::Duration;

use crate::support::{
    accounted, get_json, loopback_config, metric_sums, poll_until, publish_all, start_hub,
};

const CONFIG: &str = r#"
[ingest]
presets = ["tasmota", "zigbee2mqtt", "shelly", "esphome", "homeassistant"]

[[ingest.mapping]]
name = "meter"
topic = "meters/{deviceId}/reading"
payload = "field"
field = "power.now"
metric = "power"
units = { power = "W" }
timestamp = "ts"
"#;

fn msg(topic: &str, payload: &str) -> (String, Vec<u8>) {
    (topic.to_owned(), payload.as_bytes().to_vec())
}

/// (device, metric, latest value, unit) of every series, from `GET /v1/series`.
async fn series(http: &str) -> Vec<(String, String, f64, Option<String>)> {
    let v = get_json(&format!("{http}/v1/series")).await;
    let mut out: Vec<_> = v["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|s| {
            (
                s["deviceId"].as_str().unwrap_or_default().to_owned(),
                s["metric"].as_str().unwrap_or_default().to_owned(),
                s["lastValue"].as_f64().unwrap_or(f64::NAN),
                s["unit"].as_str().map(str::to_owned),
            )
        })
        .collect();
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

fn has(
    all: &[(String, String, f64, Option<String>)],
    device: &str,
    metric: &str,
    value: f64,
    unit: Option<&str>,
) {
    let found = all.iter().find(|s| s.0 == device && s.1 == metric);
    let Some(s) = found else {
        panic!("no series {device}/{metric} in {all:?}");
    };
    assert_eq!((s.2, s.3.as_deref()), (value, unit), "{device}/{metric}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_preset_reads_its_devices_like_native_ones() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&loopback_config(dir.path(), CONFIG), &[]);
    let http = hub.http();
    let tasmota = r#"{"Time":"2026-12-07T10:00:00","ENERGY":{"TotalStartTime":"2026-01-01T00:00:00","Total":1.234,"Yesterday":0.5,"Today":0.2,"Power":12,"ApparentPower":15,"ReactivePower":9,"Factor":0.8,"Voltage":230,"Current":0.052},"AM2301":{"Temperature":21.3,"Humidity":45.0,"DewPoint":9.1},"TempUnit":"C"}"#;
    let messages = vec![
        msg("tele/plug-1/LWT", "Online"),
        msg("tele/plug-1/SENSOR", tasmota),
        msg(
            "zigbee2mqtt/kitchen",
            r#"{"temperature":21.5,"humidity":45,"battery":97,"linkquality":120,"voltage":3000}"#,
        ),
        msg("zigbee2mqtt/kitchen/availability", r#"{"state":"online"}"#),
        msg("shellies/shelly-1/sensor/temperature", "21.5"),
        msg("shellies/shelly-1/online", "false"),
        msg("node-1/sensor/humidity/state", "45.0"),
        msg("node-1/status", "online"),
        msg("homeassistant/sensor/hall/temperature/state", "19"),
        msg(
            "meters/m1/reading",
            r#"{"ts":"2026-12-07T09:00:00Z","power":{"now":230.5}}"#,
        ),
        // Not mapped: ignored. Mapped and undecodable: rejects naming their mapping.
        msg("tele/plug-1/STATE", r#"{"POWER":"ON"}"#),
        msg("zigbee2mqtt/kitchen", "not json"),
        msg("node-1/sensor/humidity/state", "unavailable"),
    ];
    let sent = messages.len() as f64;
    publish_all(hub.addr("mqtt"), "devices", messages).await;

    // 12 + 5 + 1 + 1 + 1 + 1 readings, 4 presence changes, 1 ignored, 2 rejected.
    let m = poll_until(
        Duration::from_secs(20),
        || metric_sums(&http),
        |m| {
            m.get("edgewatch_readings_stored_total") == Some(&21.0)
                && m.get("edgewatch_presence_recorded_total") == Some(&4.0)
        },
    )
    .await;
    assert_eq!(m["edgewatch_publishes_received_total"], sent);
    assert_eq!(m["edgewatch_readings_split_total"], 11.0 + 4.0);
    assert_eq!(m["edgewatch_publishes_ignored_total"], 1.0);
    assert_eq!(m["edgewatch_readings_rejected_total"], 2.0);
    assert_eq!(m["edgewatch_ingest_mapped_readings_total"], 21.0);
    assert_eq!(m["edgewatch_ingest_mapping_rejects_total"], 2.0);
    let handled = accounted(&m);
    assert_eq!(
        handled,
        sent + m["edgewatch_readings_split_total"],
        "the accounting adds up"
    );

    let all = series(&http).await;
    has(&all, "plug-1", "ENERGY.Power", 12.0, Some("W"));
    has(&all, "plug-1", "AM2301.Temperature", 21.3, Some("C"));
    has(&all, "plug-1", "ENERGY.Factor", 0.8, None);
    assert_eq!(
        all.iter().filter(|s| s.0 == "plug-1").count(),
        12,
        "every numeric field"
    );
    has(&all, "kitchen", "temperature", 21.5, Some("C"));
    has(&all, "kitchen", "voltage", 3000.0, Some("mV"));
    has(&all, "shelly-1", "temperature", 21.5, Some("C"));
    has(&all, "node-1", "humidity", 45.0, Some("%"));
    has(&all, "hall", "temperature", 19.0, Some("C"));
    has(&all, "m1", "power", 230.5, Some("W"));
    let r = get_json(&format!("{http}/v1/readings?filter=sensors/m1/power")).await;
    assert_eq!(
        r["readings"][0]["timestamp"], "2026-12-07T09:00:00.000Z",
        "the payload's time"
    );

    let devices = get_json(&format!("{http}/v1/devices")).await;
    let status = |id: &str| -> String {
        let list = devices["devices"].as_array().expect("devices");
        let d = list.iter().find(|d| d["deviceId"] == id);
        d.and_then(|d| d["status"].as_str())
            .unwrap_or("absent")
            .to_owned()
    };
    assert_eq!(status("plug-1"), "online");
    assert_eq!(status("kitchen"), "online");
    assert_eq!(status("shelly-1"), "offline");
    assert_eq!(status("node-1"), "online");

    // The last raw payload of a device, whatever its shape (here a mapped reject's).
    let last = get_json(&format!("{http}/v1/devices/plug-1/payload")).await;
    assert_eq!(last["topic"], "tele/plug-1/SENSOR", "{last}");
    assert_eq!(last["payload"], tasmota, "{last}");
    assert_eq!(last["truncated"], false);
    let last = get_json(&format!("{http}/v1/devices/kitchen/payload")).await;
    assert_eq!(
        (last["topic"].as_str(), last["payload"].as_str()),
        (Some("zigbee2mqtt/kitchen"), Some("not json"))
    );

    let rejects = get_json(&format!("{http}/v1/rejects")).await;
    let messages: Vec<&str> = rejects["recent"]
        .as_array()
        .expect("recent")
        .iter()
        .filter_map(|r| r["message"].as_str())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("mapping \"zigbee2mqtt\"") && m.contains("invalid JSON")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.starts_with("mapping \"esphome\"")
            && m.contains("\"unavailable\" is not a number")),
        "{messages:?}"
    );
    hub.terminate();
}
