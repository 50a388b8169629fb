//! Every reading stored once, against the real hub and its embedded broker: distinct readings
//! are never merged (readings without a device timestamp included), a resend of a timestamped
//! reading is stored once, and every publish ingest takes is accounted for in `/metrics`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::support::{
    accounted, loopback_config, metric_sums, poll_until, publish_all, start_hub, stored,
};

/// Waits (bounded) until ingest has handled all `received` publishes (after that nothing more
/// can be stored, so an excess would show), then until `GET /v1/series` counts at least `want`
/// readings; returns the count.
async fn settle_stored(http: &str, received: f64, want: u64) -> u64 {
    quiet_metrics(http, received).await;
    poll_until(Duration::from_secs(30), || stored(http), |n| *n >= want).await
}

/// Waits (bounded) until the accounting has taken in `received` publishes and nothing is in
/// flight to the writer.
async fn quiet_metrics(http: &str, received: f64) -> std::collections::HashMap<String, f64> {
    poll_until(
        Duration::from_secs(30),
        || metric_sums(http),
        |m| {
            let handled = accounted(m);
            let taken = m["edgewatch_publishes_received_total"]
                + m.get("edgewatch_readings_split_total")
                    .copied()
                    .unwrap_or(0.0);
            m["edgewatch_publishes_received_total"] >= received && handled >= taken
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_equal_readings_without_timestamps_is_stored_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&loopback_config(dir.path(), ""), &[]);
    let http = hub.http();
    let burst = (0..1000)
        .map(|_| {
            (
                "sensors/same-1/temperature".to_owned(),
                br#"{"value":21.5,"unit":"C"}"#.to_vec(),
            )
        })
        .collect();
    publish_all(hub.addr("mqtt"), "burst", burst).await;
    assert_eq!(settle_stored(&http, 1000.0, 1000).await, 1000);
    let m = quiet_metrics(&http, 1000.0).await;
    assert_eq!(m["edgewatch_readings_stored_total"], 1000.0);
    assert_eq!(m["edgewatch_readings_duplicate_total"], 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_publish_is_accounted_for_after_a_mixed_load() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&loopback_config(dir.path(), ""), &[]);
    let http = hub.http();
    let mut msgs: Vec<(String, Vec<u8>)> = Vec::new();
    // 300 good readings: 200 without a timestamp (equal values), 100 with distinct ones.
    for i in 0..200 {
        msgs.push((format!("sensors/mix-{}/temperature", i % 4), b"20".to_vec()));
    }
    for i in 0..100 {
        msgs.push((
            "sensors/mix-ts/humidity".to_owned(),
            format!(
                r#"{{"value":{i},"timestamp":"2026-11-28T10:{:02}:{:02}Z"}}"#,
                i / 60,
                i % 60
            )
            .into_bytes(),
        ));
    }
    // The same timestamped reading 5 times: one stored, 4 duplicates.
    for _ in 0..5 {
        msgs.push((
            "sensors/mix-ts/pressure".to_owned(),
            br#"{"value":1013.2,"timestamp":"2026-11-28T10:00:00Z"}"#.to_vec(),
        ));
    }
    // 25 rejects: bad values, a device mismatch, an empty payload, a bad topic.
    for _ in 0..10 {
        msgs.push(("sensors/mix-0/temperature".to_owned(), b"warm".to_vec()));
    }
    for _ in 0..10 {
        msgs.push((
            "sensors/mix-0/temperature".to_owned(),
            br#"{"deviceId":"other","value":1}"#.to_vec(),
        ));
    }
    for _ in 0..4 {
        msgs.push(("sensors/a/b/c".to_owned(), b"1".to_vec()));
    }
    msgs.push(("sensors/mix-0/temperature".to_owned(), b" ".to_vec()));
    // 2 presence changes.
    msgs.push(("sensors/mix-0/status".to_owned(), b"online".to_vec()));
    msgs.push(("sensors/mix-1/status".to_owned(), b"offline".to_vec()));
    // 30 publishes of a Tasmota plug: not a reading topic.
    for i in 0..30 {
        msgs.push((
            "tele/tasmota/SENSOR".to_owned(),
            format!(r#"{{"ENERGY":{{"Power":{i}}}}}"#).into_bytes(),
        ));
    }
    let total = msgs.len();
    assert_eq!(total, 300 + 5 + 25 + 2 + 30);
    publish_all(hub.addr("mqtt"), "mixed", msgs).await;
    assert_eq!(settle_stored(&http, total as f64, 301).await, 301);
    let m = quiet_metrics(&http, total as f64).await;
    let received = m["edgewatch_publishes_received_total"];
    let parts = [
        ("stored", m["edgewatch_readings_stored_total"], 301.0),
        ("duplicates", m["edgewatch_readings_duplicate_total"], 4.0),
        ("presence", m["edgewatch_presence_recorded_total"], 2.0),
        ("rejected", m["edgewatch_readings_rejected_total"], 25.0),
        ("ignored", m["edgewatch_publishes_ignored_total"], 30.0),
        ("failed", m["edgewatch_writer_items_failed_total"], 0.0),
    ];
    println!("received {received}: {parts:?}");
    assert_eq!(received, total as f64);
    for (name, got, want) in parts {
        assert_eq!(got, want, "{name}");
    }
    assert_eq!(received, parts.iter().map(|p| p.1).sum::<f64>());
}

/// One MQTT 3.1.1 packet: fixed header byte, remaining length, body.
fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// A raw MQTT 3.1.1 connection, so a test can send a PUBLISH with the DUP flag set, as a device
/// does when it resends one whose PUBACK it did not see.
struct RawClient(TcpStream);

impl RawClient {
    fn connect(addr: SocketAddr, client_id: &str) -> RawClient {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut body = string(b"MQTT");
        body.extend_from_slice(&[4, 0x02, 0, 60]);
        body.extend(string(client_id.as_bytes()));
        let mut c = RawClient(s);
        c.0.write_all(&packet(0x10, &body)).unwrap();
        let mut connack = [0u8; 4];
        c.0.read_exact(&mut connack).unwrap();
        assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
        c
    }

    /// PUBLISH at QoS 1 (DUP flag as given); waits for its PUBACK.
    fn publish_qos1(&mut self, topic: &str, payload: &[u8], packet_id: u16, dup: bool) {
        let mut body = string(topic.as_bytes());
        body.extend_from_slice(&packet_id.to_be_bytes());
        body.extend_from_slice(payload);
        let header = 0x32 | if dup { 0x08 } else { 0 };
        self.0.write_all(&packet(header, &body)).unwrap();
        let mut puback = [0u8; 4];
        self.0.read_exact(&mut puback).unwrap();
        let id = packet_id.to_be_bytes();
        assert_eq!(puback, [0x40, 2, id[0], id[1]], "PUBACK");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_resend_with_dup_is_recognised_when_it_carries_its_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&loopback_config(dir.path(), ""), &[]);
    let http = hub.http();
    let mqtt = hub.addr("mqtt");
    let (stamped, bare) = tokio::task::spawn_blocking(move || {
        let mut c = RawClient::connect(mqtt, "resender");
        // A device that lost the PUBACK of packet 7 resends it with DUP set.
        let stamped = br#"{"value":5.5,"timestamp":"2026-11-28T10:00:00Z"}"#;
        c.publish_qos1("sensors/dup-1/temperature", stamped, 7, false);
        c.publish_qos1("sensors/dup-1/temperature", stamped, 7, true);
        // The same without a timestamp: the embedded broker forwards the resend as a new
        // publication (MQTT 3.1.1 section 4.3.2; rumqttd does not pass the DUP flag on), so
        // there is nothing to tell it from a second reading of the same value.
        c.publish_qos1("sensors/dup-1/humidity", b"40", 8, false);
        c.publish_qos1("sensors/dup-1/humidity", b"40", 8, true);
        ("sensors/dup-1/temperature", "sensors/dup-1/humidity")
    })
    .await
    .unwrap();
    assert_eq!(settle_stored(&http, 4.0, 3).await, 3);
    let m = quiet_metrics(&http, 4.0).await;
    assert_eq!(m["edgewatch_readings_duplicate_total"], 1.0);
    let count = |topic: &'static str| {
        let http = http.clone();
        async move {
            let v = crate::support::get_json(&format!("{http}/v1/series")).await;
            v["series"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["topic"] == topic)
                .map(|s| s["count"].as_u64().unwrap())
        }
    };
    assert_eq!(
        count(stamped).await,
        Some(1),
        "resend of a timestamped reading"
    );
    assert_eq!(
        count(bare).await,
        Some(2),
        "resend without a timestamp: a new publication"
    );
}
