//! The hub fed through the ingest seam, queried through the router (`oneshot`) and a real port.

use std::time::Duration;

use crate::bridge_config;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use edgewatch_bridge::{Bridge, Delivery, Outcome, Publish};
use edgewatch_testkit::{base_time, http_get, HOUR};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

async fn feed(hub: &Bridge, topic: &str, payload: impl Into<Bytes>) -> Outcome {
    let (tx, rx) = oneshot::channel();
    let publish = Publish {
        topic: topic.to_owned(),
        payload: payload.into(),
        received_at_ms: base_time() + 10 * HOUR,
    };
    hub.ingest()
        .handle(Delivery {
            publish,
            ack: Some(tx),
            id: None,
        })
        .await
        .expect("writer running");
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("acked in time")
        .expect("ack sent")
}

async fn get(
    hub: &Bridge,
    uri: &str,
    accept: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, Bytes) {
    let mut req = Request::get(uri);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let res = hub
        .router()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

fn json(b: &Bytes) -> Value {
    serde_json::from_slice(b)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(b)))
}

async fn hub_in(dir: &std::path::Path) -> Bridge {
    edgewatch_bridge::start(bridge_config(dir), CancellationToken::new())
        .await
        .expect("start")
}

#[tokio::test]
async fn malformed_payloads_are_rejected_and_counted_between_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_in(dir.path()).await;
    let limit = hub.config().max_payload_bytes;
    let t = base_time();
    let good = |i: i64| {
        format!(
            r#"{{"value":{i}.5,"unit":"C","timestamp":{}}}"#,
            t + i * 1000
        )
    };
    let at_limit = {
        let mut p = good(100).into_bytes();
        p.resize(limit, b' ');
        p
    };
    let over_limit = {
        let mut p = good(101).into_bytes();
        p.resize(limit + 1, b' ');
        p
    };
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("sensors/d1/temp", b"{\"value\":".to_vec(), "invalid_json"),
        ("sensors/d1/temp", b"NaN".to_vec(), "non_finite_value"),
        (
            "sensors/d1/temp",
            b"{\"value\":\"Infinity\"}".to_vec(),
            "non_finite_value",
        ),
        ("sensors/d1/temp", b"-inf".to_vec(), "non_finite_value"),
        (
            "sensors/d1/temp",
            b"{\"value\":1e400}".to_vec(),
            "invalid_json",
        ),
        (
            "sensors/d1/temp",
            b"{\"value\":true}".to_vec(),
            "invalid_value",
        ),
        (
            "sensors/d1/temp",
            b"{\"value\":[1]}".to_vec(),
            "invalid_value",
        ),
        (
            "sensors/d1/temp",
            vec![0xff, 0xfe, 0x80, 0x81],
            "unknown_format",
        ),
        ("sensors/d1/temp", b"".to_vec(), "empty_payload"),
        (
            "sensors/temp",
            b"{\"value\":1}".to_vec(),
            "missing_device_id",
        ),
        ("sensors/d1/temp", over_limit, "payload_too_large"),
    ];
    let mut expected_good = 0;
    for (i, (topic, payload, _)) in bad.iter().enumerate() {
        assert_eq!(
            feed(&hub, "sensors/d1/temp", good(i as i64)).await,
            Outcome::Stored(expected_good + 1)
        );
        expected_good += 1;
        let out = feed(&hub, topic, payload.clone()).await;
        assert!(
            matches!(out, Outcome::Rejected(_)),
            "{topic} {:?} -> {out:?}",
            String::from_utf8_lossy(payload)
        );
    }
    assert!(matches!(
        feed(&hub, "sensors/d1/temp", at_limit).await,
        Outcome::Stored(_)
    ));
    expected_good += 1;
    // shared channel and a bare number and presence
    assert!(matches!(
        feed(
            &hub,
            "sensors/temp",
            format!(r#"{{"deviceId":"d2","value":3,"timestamp":{t}}}"#)
        )
        .await,
        Outcome::Stored(_)
    ));
    assert!(matches!(
        feed(&hub, "sensors/d3/hum", "41").await,
        Outcome::Stored(_)
    ));
    assert_eq!(
        feed(&hub, "sensors/d1/status", "online").await,
        Outcome::Presence
    );
    assert_eq!(hub.store().last_seq().unwrap(), expected_good + 2);

    let (status, _, body) = get(&hub, "/v1/rejects", None).await;
    assert_eq!(status, StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["total"], bad.len());
    let mut want: std::collections::BTreeMap<&str, u64> = Default::default();
    for (_, _, reason) in &bad {
        *want.entry(reason).or_default() += 1;
    }
    for (reason, n) in want {
        assert_eq!(v["byReason"][reason], n, "reason {reason}: {v}");
    }
    assert_eq!(v["recent"].as_array().unwrap().len(), bad.len());
    assert_eq!(v["recent"][0]["topic"], "sensors/d1/temp");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn api_serves_series_devices_readings_rollups_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_in(dir.path()).await;
    let t = base_time();
    for k in 0..240i64 {
        let p = format!(
            r#"{{"value":{},"unit":"C","timestamp":{}}}"#,
            k % 10,
            t + k * 1000
        );
        assert!(matches!(
            feed(&hub, "sensors/d1/temp", p).await,
            Outcome::Stored(_)
        ));
    }
    feed(
        &hub,
        "sensors/d2/hum",
        format!(r#"{{"value":50,"timestamp":{t}}}"#),
    )
    .await;
    feed(&hub, "sensors/d2/status", "offline").await;

    let (s, _, b) = get(&hub, "/v1/series", None).await;
    assert_eq!(s, StatusCode::OK);
    let v = json(&b);
    assert_eq!(v["series"][0]["topic"], "sensors/d1/temp");
    assert_eq!(v["series"][0]["count"], 240);
    assert_eq!(v["series"][0]["unit"], "C");
    assert_eq!(v["series"][0]["lastValue"], 9.0);

    let (_, _, b) = get(&hub, "/v1/devices", None).await;
    let v = json(&b);
    assert_eq!(v["devices"][0]["deviceId"], "d1");
    // d1 never published a status: its readings (just received) say it is online.
    assert_eq!(v["devices"][0]["status"], "online");
    assert_eq!(v["devices"][0]["statusSource"], "readings");
    assert_eq!(v["devices"][0]["online"], serde_json::Value::Null);
    // d2 said offline: that wins over its readings.
    assert_eq!(v["devices"][1]["status"], "offline");
    assert_eq!(v["devices"][1]["statusSource"], "status");
    assert_eq!(v["devices"][1]["metrics"][0], "hum");

    // Paging by seq cursor, RFC 3339 and epoch-ms times.
    let from = edgewatch_protocol::timefmt::format_rfc3339(t + 60_000);
    let uri = format!(
        "/v1/readings?filter=sensors/%2B/temp&from={from}&to={}&limit=50",
        t + 180_000
    );
    let (s, h, b) = get(&hub, &uri, None).await;
    assert_eq!(s, StatusCode::OK);
    let v = json(&b);
    let rows = v["readings"].as_array().unwrap();
    assert_eq!(rows.len(), 50);
    assert_eq!(rows[0]["seq"], 61);
    assert_eq!(rows[0]["deviceId"], "d1");
    assert_eq!(rows[0]["value"], 0.0);
    assert_eq!(rows[0]["timestamp"], from);
    assert!(rows[0]["receivedAt"].is_string());
    assert_eq!(v["nextAfter"], 110);
    assert_eq!(h["x-next-after"], "110");
    let (_, _, b) = get(&hub, &format!("{uri}&after=110&limit=100"), None).await;
    let v = json(&b);
    assert_eq!(v["readings"].as_array().unwrap().len(), 70);
    assert_eq!(v["nextAfter"], Value::Null);

    let (s, h, b) = get(
        &hub,
        &format!("{uri}&filter=sensors/d2/%23"),
        Some("application/x-ndjson"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-type"], "application/x-ndjson");
    let lines: Vec<&str> = std::str::from_utf8(&b).unwrap().lines().collect();
    assert_eq!(lines.len(), 50);
    assert_eq!(json(&Bytes::from(lines[0].to_owned()))["seq"], 61);
    let (_, h, b) = get(&hub, "/v1/readings?filter=sensors/d2/hum", Some("text/csv")).await;
    assert!(h["content-type"].to_str().unwrap().starts_with("text/csv"));
    let csv = std::str::from_utf8(&b).unwrap();
    assert_eq!(
        csv.lines().next(),
        Some("seq,topic,deviceId,metric,value,unit,timestamp,receivedAt")
    );
    assert!(csv
        .lines()
        .nth(1)
        .unwrap()
        .starts_with("241,sensors/d2/hum,d2,hum,50,,"));

    // Rollups: 1-minute step from the minute rollups; auto step.
    let (s, _, b) = get(
        &hub,
        &format!(
            "/v1/rollups?filter=sensors/d1/temp&from={t}&to={}&step=1m",
            t + 240_000
        ),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let v = json(&b);
    assert_eq!(v["source"], "1m");
    let pts = v["series"][0]["points"].as_array().unwrap();
    assert_eq!(pts.len(), 4);
    for p in pts {
        assert_eq!(
            (p["min"].as_f64(), p["max"].as_f64(), p["count"].as_u64()),
            (Some(0.0), Some(9.0), Some(60))
        );
        assert_eq!(p["avg"].as_f64(), Some(4.5));
        assert_eq!(p["last"].as_f64(), Some(9.0));
    }
    let (_, _, b) = get(&hub, &format!("/v1/rollups?from={t}&to={}", t + HOUR), None).await;
    let v = json(&b);
    assert_eq!(v["stepMs"], 5000);
    assert_eq!(v["source"], "raw");
    assert_eq!(v["series"][0]["points"].as_array().unwrap().len(), 48);

    // Errors name the parameter.
    for (uri, status, code, needle) in [
        (
            "/v1/readings?filter=sensors/%23/x",
            400,
            "bad_filter",
            "filter",
        ),
        ("/v1/readings?from=yesterday", 400, "bad_time", "from"),
        ("/v1/readings?from=2000&to=1000", 400, "bad_range", "from"),
        ("/v1/readings?limit=0", 400, "bad_parameter", "limit"),
        ("/v1/readings?limit=100000000", 413, "too_large", "limit"),
        (
            "/v1/readings?colour=red",
            400,
            "unknown_parameter",
            "colour",
        ),
        ("/v1/rollups?step=fast", 400, "bad_parameter", "step"),
        (
            "/v1/rollups?step=1ms&from=0&to=100000000000",
            413,
            "too_large",
            "step",
        ),
        ("/v1/nothing", 404, "not_found", "no such"),
    ] {
        let (s, _, b) = get(&hub, uri, None).await;
        assert_eq!(s.as_u16(), status, "{uri}");
        let v = json(&b);
        assert_eq!(v["error"]["code"], code, "{uri}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{uri}: {v}"
        );
    }
    assert_eq!(get(&hub, "/healthz", None).await.0, StatusCode::OK);
    assert_eq!(get(&hub, "/readyz", None).await.0, StatusCode::OK);

    // A real port: serve until cancelled.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = {
        let stop = stop.clone();
        tokio::spawn(edgewatch_bridge::http::serve(
            listener,
            hub.router(),
            async move { stop.cancelled().await },
        ))
    };
    let (s, body) = http_get(addr, "/v1/readings?filter=sensors/d2/hum").await;
    assert_eq!(s, 200);
    assert_eq!(json(&Bytes::from(body))["readings"][0]["seq"], 241);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
    let mut live = hub.live();
    feed(&hub, "sensors/d9/x", "1").await;
    let batch = tokio::time::timeout(Duration::from_secs(5), live.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch[0].seq, 242);
    hub.shutdown().await.unwrap();

    // Reopen: data is there, seq continues.
    let hub = hub_in(dir.path()).await;
    assert_eq!(hub.store().last_seq().unwrap(), 242);
    assert_eq!(feed(&hub, "sensors/d9/x", "2").await, Outcome::Stored(243));
    hub.shutdown().await.unwrap();
}
