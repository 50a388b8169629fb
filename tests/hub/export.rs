//! `edgewatch export` against a real hub: readings published over MQTT, exported through the
//! hub's HTTP API (`--hub`) and from its data directory once it is stopped (`--data-dir`),
//! compared with what `GET /v1/readings` answers; a running hub's directory is refused in
//! words; bad arguments are said; a reader that goes away ends it quietly.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use edgewatch_protocol::timefmt::format_rfc3339;
use serde_json::Value;

use edgewatch_testkit::base_time;

use crate::support::{bin, free_port, loopback_config, publish_all, start_hub, Hub};

const DEVICES: [&str; 3] = ["d1", "d2", "d3"];
/// Readings per series: 6 series, 2,400 readings, three of the hub's default pages (1,000).
const PER_SERIES: i64 = 400;
/// d1's temperature unit: a comma and quotes, for CSV quoting.
const ODD_UNIT: &str = "°C, \"raw\"";
/// Longest an export may take (a debug build on a busy 2-core machine).
const EXPORT_LIMIT: Duration = Duration::from_secs(60);

/// Every series' readings, one second apart in event time from `base`.
fn readings(base: i64) -> Vec<(String, Vec<u8>)> {
    let mut msgs = Vec::new();
    for i in 0..PER_SERIES {
        for d in DEVICES {
            let unit = if d == "d1" { ODD_UNIT } else { "C" };
            for (metric, unit) in [("temperature", unit), ("humidity", "%")] {
                let payload = serde_json::json!({
                    "value": i as f64 + 0.25,
                    "unit": unit,
                    "timestamp": base + i * 1000,
                });
                msgs.push((
                    format!("sensors/{d}/{metric}"),
                    payload.to_string().into_bytes(),
                ));
            }
        }
    }
    msgs
}

/// `GET url` with an optional bearer token: (status, body).
async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = res.status().as_u16();
    (status, res.text().await.unwrap_or_default())
}

/// The readings of `GET /v1/readings?QUERY&limit=10000` (JSON): the reference.
async fn api_readings(hub: &Hub, query: &str, token: Option<&str>) -> Vec<Value> {
    let url = format!("{}/v1/readings?{query}&limit=10000", hub.http());
    let (status, body) = get(&url, token).await;
    assert_eq!(status, 200, "{url}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["nextAfter"], Value::Null, "{url}: more than one page");
    v["readings"].as_array().expect("readings").clone()
}

/// Publishes [`readings`] to `hub` and waits (bounded) until the API has all of them.
async fn publish_and_wait(hub: &Hub, base: i64, token: Option<&str>) -> Vec<Value> {
    publish_all(hub.addr("mqtt"), "export-test", readings(base)).await;
    let expected = DEVICES.len() * 2 * PER_SERIES as usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let all = api_readings(hub, "filter=sensors/%23", token).await;
        if all.len() == expected {
            return all;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stored {} of {expected} readings",
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `edgewatch export ARGS...` (with `env`, and without `EDGEWATCH_TOKEN` unless given),
/// bounded by [`EXPORT_LIMIT`]: killed on timeout.
async fn export(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.arg("export")
        .args(args)
        .env_remove("EDGEWATCH_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("start edgewatch export");
    tokio::time::timeout(EXPORT_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("export {args:?} did not end within {EXPORT_LIMIT:?}"))
        .expect("export output")
}

/// Stdout of a successful export.
async fn export_ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = export(args, env).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "export {args:?}: {stderr}");
    assert!(stderr.is_empty(), "export {args:?}: {stderr}");
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// NDJSON lines as JSON values.
fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// CSV (RFC 4180: quoted fields, `""` for a quote) as rows of fields.
fn csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(
        !quoted && field.is_empty() && row.is_empty(),
        "CSV ends mid-row"
    );
    rows
}

/// The API's readings as the CSV rows `export` should write.
fn as_csv_rows(readings: &[Value]) -> Vec<Vec<String>> {
    let s = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_default();
    readings
        .iter()
        .map(|r| {
            vec![
                r["seq"].to_string(),
                s(&r["topic"]),
                s(&r["deviceId"]),
                s(&r["metric"]),
                r["value"].as_f64().expect("value").to_string(),
                s(&r["unit"]),
                s(&r["timestamp"]),
                s(&r["receivedAt"]),
            ]
        })
        .collect()
}

/// CSV output: the header once, then `expected`'s rows.
fn assert_csv(text: &str, expected: &[Value]) {
    let rows = csv(text);
    assert_eq!(
        rows.first().map(|r| r.join(",")).as_deref(),
        Some("seq,topic,deviceId,metric,value,unit,timestamp,receivedAt")
    );
    assert_eq!(rows[1..], as_csv_rows(expected)[..]);
}

/// A hub on a fresh directory with one app token that reads everything; anonymous callers
/// are refused once a token is configured.
fn hub_with_token(dir: &Path) -> (Hub, String) {
    let (token, hash) = edgewatch_bridge::http::auth::tokens::generate();
    let extra =
        format!("[[auth.tokens]]\nname = \"export\"\nhash = \"{hash}\"\nread = [\"sensors/#\"]\n");
    (start_hub(&loopback_config(dir, &extra), &[]), token)
}

/// (a) `--hub` as NDJSON and as CSV, over several pages, is what `GET /v1/readings` answers;
/// the token goes as a bearer token (flag or `EDGEWATCH_TOKEN`), and without it the hub's
/// refusal is said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_over_http_is_what_the_readings_api_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, token) = hub_with_token(dir.path());
    let all = publish_and_wait(&hub, base_time(), Some(&token)).await;
    let url = hub.http();

    let lines = export_ok(
        &["--hub", &url, "--token", &token, "--format", "ndjson"],
        &[],
    )
    .await;
    assert_eq!(ndjson(&lines), all);

    let text = export_ok(&["--hub", &url], &[("EDGEWATCH_TOKEN", &token)]).await;
    assert_csv(&text, &all);
    assert!(text.contains(",\"°C, \"\"raw\"\"\","), "quoted unit");

    let refused = export(&["--hub", &url], &[]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("401") && stderr.contains("--token"),
        "{stderr}"
    );
    assert!(refused.stdout.is_empty());
    hub.terminate();
}

/// (b) Once the hub is stopped, `--data-dir` with a filter and an event-time range writes the
/// same bytes as `--hub` did with them while it ran, and the same readings as the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_from_a_stopped_hubs_data_dir_is_what_the_hub_served() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&loopback_config(dir.path(), ""), &[]);
    let base = base_time();
    publish_and_wait(&hub, base, None).await;
    // d1's readings from its 100th second (RFC 3339) to before its 300th (epoch ms).
    let (from, to) = (format_rfc3339(base + 100_000), (base + 300_000).to_string());
    let query = format!("filter=sensors/d1/%23&from={}&to={to}", base + 100_000);
    let expected = api_readings(&hub, &query, None).await;
    assert_eq!(expected.len(), 2 * 200, "d1's two series, 200 s each");
    let select = ["--filter", "sensors/d1/#", "--from", &from, "--to", &to];
    let url = hub.http();
    let hub_csv = export_ok(&[&["--hub", &url][..], &select].concat(), &[]).await;
    let hub_ndjson = export_ok(
        &[&["--hub", &url, "--format", "ndjson"][..], &select].concat(),
        &[],
    )
    .await;
    assert!(hub.terminate().success());

    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let out = dir.path().join("d1.ndjson");
    let written = export_ok(
        &[
            &["--data-dir", data, "--format", "ndjson", "--out"][..],
            &[out.to_str().unwrap()],
            &select,
        ]
        .concat(),
        &[],
    )
    .await;
    assert!(written.is_empty(), "--out writes nothing to stdout");
    let from_dir = std::fs::read_to_string(&out).unwrap();
    assert_eq!(from_dir, hub_ndjson);
    assert_eq!(ndjson(&from_dir), expected);

    let from_dir = export_ok(&[&["--data-dir", data][..], &select].concat(), &[]).await;
    assert_eq!(from_dir, hub_csv);
    assert_csv(&from_dir, &expected);

    // Everything, several of its pages, as the API answered while the hub ran.
    let everything = export_ok(&["--data-dir", data, "--format", "ndjson"], &[]).await;
    assert_eq!(ndjson(&everything).len(), 2400);

    // `edgewatch export ... | head`: the reader is gone before the first write.
    let mut child = std::process::Command::new(bin())
        .args(["export", "--data-dir", data])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let gone = tokio::task::spawn_blocking(move || child.wait_with_output());
    let gone = tokio::time::timeout(EXPORT_LIMIT, gone)
        .await
        .expect("export ended")
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert_eq!(gone.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// (c) The data directory of a running hub is locked: said in words (use `--hub`), non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_from_a_running_hubs_data_dir_says_to_use_hub() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&loopback_config(dir.path(), ""), &[]);
    publish_all(
        hub.addr("mqtt"),
        "export-test",
        vec![("sensors/d1/t".to_owned(), b"1".to_vec())],
    )
    .await;
    let data = dir.path().join("data");
    let out = export(&["--data-dir", data.to_str().unwrap()], &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("a hub is running on"), "{stderr}");
    assert!(stderr.contains("--hub"), "{stderr}");
    assert!(
        !stderr.contains("Os {") && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    hub.terminate();
}

/// Bad arguments are said in words with status 2, a missing store or hub with 1; a directory
/// without a store is left as it was (no store is created in it), no `--out` file is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_arguments_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().to_str().unwrap();
    let out_file = dir.path().join("out.csv");
    let out = out_file.to_str().unwrap();
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let cases: [(&[&str], i32, &str); 10] = [
        (
            &["--data-dir", empty, "--filter", "sensors/#/x"],
            2,
            "--filter",
        ),
        (&["--data-dir", empty, "--from", "yesterday"], 2, "--from"),
        (
            &["--data-dir", empty, "--from", "2000", "--to", "1000"],
            2,
            "--from must be before --to",
        ),
        (&["--hub", "https://127.0.0.1:1"], 2, "plain HTTP"),
        (&["--hub", "127.0.0.1:8080"], 2, "http://"),
        (&[], 2, "--data-dir"),
        (
            &["--data-dir", empty, "--hub", "http://127.0.0.1:1"],
            2,
            "cannot be used with",
        ),
        (
            &["--data-dir", empty, "--out", out],
            1,
            "holds no edgewatch store",
        ),
        (
            &["--data-dir", &format!("{empty}/missing")],
            1,
            "no such directory",
        ),
        (
            &["--hub", &unreachable, "--out", out],
            1,
            "cannot get readings from the hub",
        ),
    ];
    for (args, code, words) in cases {
        let result = export(args, &[]).await;
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(words), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "nothing created: {left:?}");
}
