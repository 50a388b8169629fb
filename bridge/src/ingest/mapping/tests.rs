use super::*;

const NOW: i64 = 1_765_101_600_000; // 2025-12-07T10:00:00Z

fn presets(names: &[&str]) -> Mappings {
    let cfg = IngestConfig {
        presets: names.iter().map(|s| (*s).to_owned()).collect(),
        mapping: Vec::new(),
    };
    cfg.compile().unwrap()
}

/// (metric, value, unit) of a mapped publish.
fn readings(m: &Mappings, topic: &str, payload: &str) -> Vec<(String, f64, Option<String>)> {
    match m.map(topic, payload.as_bytes(), NOW) {
        Some(Ok(Mapped::Readings { readings, .. })) => readings
            .into_iter()
            .map(|r| {
                assert_eq!(r.timestamp_ms, NOW);
                (r.metric, r.value, r.unit)
            })
            .collect(),
        other => panic!("{topic}: {other:?}"),
    }
}

fn status(m: &Mappings, topic: &str, payload: &str) -> (String, bool) {
    match m.map(topic, payload.as_bytes(), NOW) {
        Some(Ok(Mapped::Status { device_id, online })) => (device_id, online),
        other => panic!("{topic}: {other:?}"),
    }
}

fn r(metric: &str, value: f64, unit: Option<&str>) -> (String, f64, Option<String>) {
    (metric.to_owned(), value, unit.map(str::to_owned))
}

#[test]
fn tasmota_gives_every_numeric_field_with_dotted_names_and_units() {
    let m = presets(&["tasmota"]);
    let got = readings(
        &m,
        "tele/plug-1/SENSOR",
        r#"{"Time":"2026-12-07T10:00:00","ENERGY":{"TotalStartTime":"2026-01-01T00:00:00","Total":1.234,"Power":12,"Factor":0.8},"AM2301":{"Temperature":21.3,"Humidity":45},"TempUnit":"C"}"#,
    );
    let want = [
        r("AM2301.Humidity", 45.0, Some("%")),
        r("AM2301.Temperature", 21.3, Some("C")),
        r("ENERGY.Factor", 0.8, None),
        r("ENERGY.Power", 12.0, Some("W")),
        r("ENERGY.Total", 1.234, Some("kWh")),
    ];
    let mut got = got;
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, want);
    assert_eq!(
        status(&m, "tele/plug-1/LWT", "Online"),
        ("plug-1".into(), true)
    );
    assert_eq!(
        status(&m, "tele/plug-1/LWT", "Offline"),
        ("plug-1".into(), false)
    );
    assert!(
        m.map("tele/plug-1/STATE", b"{}", NOW).is_none(),
        "not mapped: ignored"
    );
}

#[test]
fn zigbee2mqtt_shelly_esphome_and_homeassistant() {
    let m = presets(&["zigbee2mqtt", "shelly", "esphome", "homeassistant"]);
    let mut z = readings(
        &m,
        "zigbee2mqtt/kitchen",
        r#"{"temperature":21.5,"humidity":45,"battery":97,"linkquality":120,"contact":true}"#,
    );
    z.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        z,
        [
            r("battery", 97.0, Some("%")),
            r("humidity", 45.0, Some("%")),
            r("linkquality", 120.0, Some("lqi")),
            r("temperature", 21.5, Some("C")),
        ]
    );
    let avail = "zigbee2mqtt/kitchen/availability";
    assert_eq!(
        status(&m, avail, r#"{"state":"offline"}"#),
        ("kitchen".into(), false)
    );
    assert_eq!(status(&m, avail, "online"), ("kitchen".into(), true));
    assert!(m.map("zigbee2mqtt/bridge/state", b"online", NOW).is_none());

    let shelly = "shellies/shelly-1/sensor/temperature";
    assert_eq!(
        readings(&m, shelly, "21.5"),
        [r("temperature", 21.5, Some("C"))]
    );
    assert_eq!(
        status(&m, "shellies/shelly-1/online", "false"),
        ("shelly-1".into(), false)
    );
    let esp = "node-1/sensor/humidity/state";
    assert_eq!(
        readings(&m, esp, " 45.0\n"),
        [r("humidity", 45.0, Some("%"))]
    );
    assert_eq!(
        status(&m, "node-1/status", "online"),
        ("node-1".into(), true)
    );
    let ha = "homeassistant/sensor/hall/temperature/state";
    assert_eq!(readings(&m, ha, "19"), [r("temperature", 19.0, Some("C"))]);
}

#[test]
fn what_a_mapping_cannot_decode_is_a_reject_naming_it() {
    let m = presets(&["zigbee2mqtt", "esphome"]);
    let reject = |topic: &str, payload: &str| match m.map(topic, payload.as_bytes(), NOW) {
        Some(Err(e)) => e,
        other => panic!("{topic}: {other:?}"),
    };
    let e = reject("zigbee2mqtt/kitchen", "not json");
    assert_eq!(e.reason, "invalid_json");
    assert!(
        e.message
            .starts_with("mapping \"zigbee2mqtt\" (zigbee2mqtt/{deviceId})"),
        "{}",
        e.message
    );
    assert_eq!(
        reject("zigbee2mqtt/kitchen", r#"{"state":"ON"}"#).reason,
        "mapping_no_value"
    );
    assert_eq!(
        reject("node-1/sensor/t/state", "ON").reason,
        "mapping_no_value"
    );
    assert_eq!(
        reject("node 1/sensor/t/state", "1").reason,
        "invalid_device_id"
    );
    assert_eq!(reject("node-1/status", "maybe").reason, "invalid_status");
    let many: Vec<String> = (0..=MAX_READINGS)
        .map(|i| format!("\"f{i}\":{i}"))
        .collect();
    let e = reject("zigbee2mqtt/big", &format!("{{{}}}", many.join(",")));
    assert_eq!(e.reason, "mapping_too_many_fields");
    let z = m.iter().find(|x| x.name() == "zigbee2mqtt").unwrap();
    assert_eq!(z.rejected.load(Ordering::Relaxed), 3);
}

#[test]
fn a_mapping_of_ones_own_reads_a_field_with_its_timestamp_and_comes_first() {
    let mine = MappingConfig {
        name: "plugs".into(),
        topic: "tele/{deviceId}/SENSOR".into(),
        payload: PayloadRule::Field,
        field: Some("ENERGY.Power".into()),
        metric: Some("power".into()),
        units: [("power".to_owned(), "W".to_owned())].into(),
        timestamp: Some("ts".into()),
        ..MappingConfig::default()
    };
    let cfg = IngestConfig {
        presets: vec!["tasmota".into()],
        mapping: vec![mine],
    };
    let m = cfg.compile().unwrap();
    let got = m.map(
        "tele/p/SENSOR",
        br#"{"ts":"2025-12-07T09:00:00Z","ENERGY":{"Power":7}}"#,
        NOW,
    );
    let Some(Ok(Mapped::Readings {
        readings,
        device_time,
    })) = got
    else {
        panic!("{got:?}");
    };
    assert!(device_time);
    assert_eq!(readings.len(), 1);
    assert_eq!(
        (readings[0].metric.as_str(), readings[0].value),
        ("power", 7.0)
    );
    assert_eq!(readings[0].unit.as_deref(), Some("W"));
    assert_eq!(readings[0].timestamp_ms, NOW - 3_600_000);
    let future = m.map(
        "tele/p/SENSOR",
        br#"{"ts":"2030-01-01T00:00:00Z","ENERGY":{"Power":7}}"#,
        NOW,
    );
    assert!(matches!(future, Some(Err(e)) if e.reason == "timestamp_out_of_range"));
    assert_eq!(
        m.filters(),
        ["tele/+/SENSOR", "tele/+/LWT"],
        "one filter per distinct pattern"
    );
}

#[test]
fn check_config_names_the_bad_key() {
    let bad = |m: MappingConfig| {
        let cfg = IngestConfig {
            presets: Vec::new(),
            mapping: vec![m],
        };
        cfg.validate().unwrap_err()
    };
    let base = MappingConfig {
        name: "m".into(),
        topic: "a/{deviceId}/{metric}".into(),
        ..MappingConfig::default()
    };
    let e = bad(MappingConfig {
        topic: "sensors/{deviceId}/x".into(),
        ..base.clone()
    });
    assert_eq!(e.key, "ingest.mapping[0].topic");
    let e = bad(MappingConfig {
        payload: PayloadRule::Field,
        ..base.clone()
    });
    assert_eq!(e.key, "ingest.mapping[0].field");
    let e = bad(MappingConfig {
        topic: "a/{deviceId}".into(),
        ..base.clone()
    });
    assert_eq!(e.key, "ingest.mapping[0].metric");
    let e = bad(MappingConfig {
        name: "".into(),
        ..base.clone()
    });
    assert_eq!(e.key, "ingest.mapping[0].name");
    let e = bad(MappingConfig {
        presence_topic: Some("a/{metric}".into()),
        ..base.clone()
    });
    assert_eq!(e.key, "ingest.mapping[0].presence_topic");
    let cfg = IngestConfig {
        presets: vec!["tasmota".into(), "sonoff".into()],
        mapping: Vec::new(),
    };
    let e = cfg.validate().unwrap_err();
    assert_eq!(e.key, "ingest.presets[1]");
    assert!(e.message.contains("tasmota, zigbee2mqtt"), "{}", e.message);
    let twice = IngestConfig {
        presets: vec!["esphome".into(), "esphome".into()],
        mapping: Vec::new(),
    };
    assert!(twice
        .validate()
        .unwrap_err()
        .message
        .contains("two mappings"));
}
