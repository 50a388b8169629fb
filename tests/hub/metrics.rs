//! `/metrics` through a real hub: the exposition parses as Prometheus text format and its
//! counters move as readings flow, are rejected, and as clients stream and query.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{loopback_config, start_hub, wait_for};
use rumqttc::{AsyncClient, MqttOptions, QoS};

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict-enough parser of the text exposition format 0.0.4: `# HELP` / `# TYPE` lines,
/// samples `name{label="value",...} number`, label value escapes. Panics on anything else.
fn parse(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "line {n}: bad type {kind}"
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "line {n}: TYPE repeated for {name}"
            );
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("line {n}: no value: {line}"));
        let name = &line[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "line {n}: bad metric name {name:?}"
        );
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let mut consumed = 0;
            loop {
                let (i, c) = chars.next().expect("unterminated labels");
                if c == '}' {
                    consumed = i + 1;
                    break;
                }
                if c == ',' {
                    continue;
                }
                let start = i;
                let mut eq = i;
                for (j, c) in chars.by_ref() {
                    if c == '=' {
                        eq = j;
                        break;
                    }
                }
                let key = r[start..eq].to_owned();
                assert_eq!(chars.next().map(|x| x.1), Some('"'), "line {n}: quote");
                let mut val = String::new();
                loop {
                    let (_, c) = chars.next().expect("unterminated label value");
                    match c {
                        '\\' => match chars.next().map(|x| x.1) {
                            Some('n') => val.push('\n'),
                            Some(c @ ('\\' | '"')) => val.push(c),
                            other => panic!("line {n}: bad escape {other:?}"),
                        },
                        '"' => break,
                        c => val.push(c),
                    }
                }
                labels.insert(key, val);
                let _ = consumed;
            }
            rest = &r[consumed..];
        }
        let value = rest.trim();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("line {n}: bad value {v:?}")),
        };
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    // Every sample belongs to a declared family.
    for s in &samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                s.name
                    .strip_suffix(suffix)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(&s.name);
        assert!(types.contains_key(family), "no TYPE for {}", s.name);
        if types[family] == "counter" {
            assert!(
                s.name.ends_with("_total"),
                "counter {} lacks _total",
                s.name
            );
        }
    }
    (types, samples)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .find(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

async fn scrape(base: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let res = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(res.status(), 200);
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    parse(&res.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_readings_flow() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&loopback_config(dir.path(), ""), &[]);
    let base = hub.http();

    let (types, before) = scrape(&base).await;
    assert_eq!(types["edgewatch_readings_ingested_total"], "counter");
    assert_eq!(
        types["edgewatch_writer_commit_duration_seconds"],
        "histogram"
    );
    assert_eq!(
        types["edgewatch_http_request_duration_seconds"],
        "histogram"
    );
    assert_eq!(types["edgewatch_live_connections"], "gauge");
    assert_eq!(
        value(&before, "edgewatch_readings_ingested_total", &[]),
        Some(0.0)
    );
    assert!(value(&before, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert_eq!(value(&before, "edgewatch_mqtt_connections", &[]), Some(0.0));
    assert_eq!(types["edgewatch_mqtt_held_acks_total"], "counter");
    for counter in [
        "edgewatch_mqtt_subscriptions_refused_total",
        "edgewatch_mqtt_filters_refused_total",
        "edgewatch_mqtt_topics_refused_total",
        "edgewatch_mqtt_new_topics_refused_total",
        "edgewatch_mqtt_retain_refused_total",
        "edgewatch_mqtt_rate_dropped_total",
        "edgewatch_mqtt_rate_delayed_total",
    ] {
        assert_eq!(types[counter], "counter", "{counter}");
        assert_eq!(value(&before, counter, &[]), Some(0.0), "{counter}");
    }
    assert_eq!(
        value(&before, "edgewatch_mqtt_retained_messages", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&before, "edgewatch_mqtt_ingest_skipped_total", &[]),
        Some(0.0)
    );
    assert!(value(&before, "process_open_fds", &[]).unwrap() >= 3.0);

    // A live SSE client stays open while readings flow.
    let sse = reqwest::Client::new()
        .get(format!("{base}/v1/stream?filter=sensors/%23"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);

    let mut opts = MqttOptions::new("metrics-test", "127.0.0.1", hub.addr("mqtt").port());
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    for i in 0..20 {
        client
            .publish(
                "sensors/m1/temperature",
                QoS::AtLeastOnce,
                false,
                format!("{}", 20.0 + f64::from(i) / 10.0),
            )
            .await
            .unwrap();
    }
    client
        .publish("sensors/m2/humidity", QoS::AtLeastOnce, false, "55")
        .await
        .unwrap();
    client
        .publish(
            "sensors/m1/temperature",
            QoS::AtLeastOnce,
            false,
            "not a number",
        )
        .await
        .unwrap();
    let _ = reqwest::get(format!("{base}/v1/series")).await.unwrap();
    let _ = reqwest::get(format!("{base}/v1/readings?limit=abc"))
        .await
        .unwrap();

    let after = wait_for(Duration::from_secs(20), "the counters to move", || async {
        let (_, s) = scrape(&base).await;
        if value(&s, "edgewatch_readings_ingested_total", &[]) == Some(21.0)
            && value(&s, "edgewatch_last_seq", &[]) == Some(21.0)
            && value(&s, "edgewatch_readings_rejected_total", &[]).unwrap_or(0.0) >= 1.0
            // The fan-out runs after the commit: wait for it too.
            && value(&s, "edgewatch_live_events_delivered_total", &[]) == Some(21.0)
            // The publishing client is connected.
            && value(&s, "edgewatch_mqtt_connections", &[]) == Some(1.0)
            // The commit's duration is observed once its flush completes, which may be after
            // the fan-out delivered it.
            && value(&s, "edgewatch_writer_commit_duration_seconds_count", &[]).unwrap_or(0.0)
                >= 1.0
        {
            Ok(s)
        } else {
            Err(s)
        }
    })
    .await;
    let rejected: f64 = after
        .iter()
        .filter(|s| s.name == "edgewatch_readings_rejected_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(rejected, 1.0);
    assert_eq!(value(&after, "edgewatch_series", &[]), Some(2.0));
    assert!(value(&after, "edgewatch_log_size_bytes", &[]).unwrap() > 0.0);
    assert!(
        value(&after, "edgewatch_writer_batch_size_count", &[]).unwrap() >= 1.0,
        "writer batches observed"
    );
    assert!(
        value(
            &after,
            "edgewatch_writer_commit_duration_seconds_count",
            &[]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        value(
            &after,
            "edgewatch_live_connections",
            &[("transport", "sse")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&after, "edgewatch_live_events_delivered_total", &[]),
        Some(21.0)
    );
    assert_eq!(
        value(
            &after,
            "edgewatch_http_requests_total",
            &[
                ("route", "/v1/series"),
                ("method", "GET"),
                ("status", "200")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &after,
            "edgewatch_http_requests_total",
            &[("route", "/v1/readings"), ("status", "400")]
        ),
        Some(1.0)
    );
    assert!(
        value(
            &after,
            "edgewatch_http_request_duration_seconds_count",
            &[("route", "/metrics")]
        )
        .unwrap()
            >= 1.0
    );
    // Histogram buckets are cumulative and end with +Inf = count.
    let buckets: Vec<&Sample> = after
        .iter()
        .filter(|s| s.name == "edgewatch_writer_batch_size_bucket")
        .collect();
    assert!(buckets.windows(2).all(|w| w[0].value <= w[1].value));
    assert_eq!(
        buckets.last().unwrap().labels["le"],
        "+Inf",
        "last bucket is +Inf"
    );
    assert_eq!(
        buckets.last().unwrap().value,
        value(&after, "edgewatch_writer_batch_size_count", &[]).unwrap()
    );

    drop(sse);
    wait_for(Duration::from_secs(10), "the SSE gauge to drop", || async {
        let (_, s) = scrape(&base).await;
        let sse = value(&s, "edgewatch_live_connections", &[("transport", "sse")]);
        if sse == Some(0.0) {
            Ok(())
        } else {
            Err(sse)
        }
    })
    .await;
}

/// Made-up HTTP methods are counted under one `method="other"` label set: a client sending
/// many of them cannot grow `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_share_one_label() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&loopback_config(dir.path(), ""), &[]);
    let base = hub.http();
    let client = reqwest::Client::new();
    for i in 0..100 {
        let method = reqwest::Method::from_bytes(format!("MADEUP{i}").as_bytes()).unwrap();
        let _ = client
            .request(method, format!("{base}/v1/series"))
            .send()
            .await
            .unwrap();
    }
    let (_, samples) = scrape(&base).await;
    let series: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == "edgewatch_http_requests_total"
                && s.labels.get("route").map(String::as_str) == Some("/v1/series")
        })
        .collect();
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0].labels["method"], "other");
    assert_eq!(series[0].value, 100.0);
}
