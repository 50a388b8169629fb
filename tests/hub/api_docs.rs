//! The API descriptions cannot drift from the code:
//! * `/v1/openapi.json` and `/v1/asyncapi.yaml` served by a real hub are the files in `docs/`;
//! * every route registered in the sources (`.route("...")` in `bridge/src` and `src`) is in
//!   the OpenAPI document;
//! * real HTTP answers (success and error) validate against the OpenAPI response schemas;
//! * messages captured from a real WebSocket and a real SSE session validate against the
//!   AsyncAPI message schemas.
//!
//! The schemas are checked with a small JSON Schema validator below (the subset the two
//! documents use); the official validators run in `scripts/api-test`.

use std::path::Path;
use std::time::Duration;

use crate::support::{get_json, loopback_config, start_hub, wait_for};
use futures::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Validates `v` against `schema` (resolving local `$ref`s in `root`); errors name the path.
fn validate(root: &Value, schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else {
        return; // `true` / `{}`-like schemas accept everything.
    };
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        let target = resolve(root, r).unwrap_or_else(|| panic!("unresolved $ref {r}"));
        validate(root, target, v, path, errors);
    }
    if let Some(t) = obj.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "number" => v.is_number(),
            "integer" => v.is_i64() || v.is_u64(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        });
        if !ok {
            errors.push(format!("{path}: {v} is not of type {t}"));
            return;
        }
    }
    if let Some(c) = obj.get("const") {
        if c != v {
            errors.push(format!("{path}: {v} != const {c}"));
        }
    }
    if let Some(e) = obj.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            errors.push(format!("{path}: {v} not in enum {e:?}"));
        }
    }
    if let (Some(min), Some(n)) = (obj.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if n < min {
            errors.push(format!("{path}: {n} < minimum {min}"));
        }
    }
    if obj.get("format").and_then(Value::as_str) == Some("date-time") {
        if let Some(s) = v.as_str() {
            let ok = s.len() >= 20 && s.as_bytes()[10] == b'T' && s.ends_with('Z');
            if !ok {
                errors.push(format!("{path}: {s:?} is not an RFC 3339 UTC date-time"));
            }
        }
    }
    if let Some(all) = obj.get("allOf").and_then(Value::as_array) {
        for s in all {
            validate(root, s, v, path, errors);
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = obj.get(key).and_then(Value::as_array) {
            let passing = alts
                .iter()
                .filter(|s| {
                    let mut e = Vec::new();
                    validate(root, s, v, path, &mut e);
                    e.is_empty()
                })
                .count();
            let ok = if key == "oneOf" {
                passing == 1
            } else {
                passing >= 1
            };
            if !ok {
                errors.push(format!("{path}: {passing} alternatives of {key} match {v}"));
            }
        }
    }
    if let Some(map) = v.as_object() {
        let props = obj.get("properties").and_then(Value::as_object);
        if let Some(req) = obj.get("required").and_then(Value::as_array) {
            for r in req.iter().filter_map(Value::as_str) {
                if !map.contains_key(r) {
                    errors.push(format!("{path}: missing required {r:?}"));
                }
            }
        }
        for (k, val) in map {
            let sub = format!("{path}.{k}");
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(root, s, val, &sub, errors),
                None => match obj.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        errors.push(format!("{path}: unexpected property {k:?}"));
                    }
                    Some(s @ Value::Object(_)) => validate(root, s, val, &sub, errors),
                    _ => {}
                },
            }
        }
    }
    if let (Some(items), Some(arr)) = (obj.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            validate(root, items, x, &format!("{path}[{i}]"), errors);
        }
    }
}

fn resolve<'a>(root: &'a Value, r: &str) -> Option<&'a Value> {
    let pointer = r.strip_prefix('#')?;
    root.pointer(pointer)
}

fn check(root: &Value, schema: &Value, v: &Value, what: &str) {
    let mut errors = Vec::new();
    validate(root, schema, v, "$", &mut errors);
    assert!(errors.is_empty(), "{what}: {v}\n{}", errors.join("\n"));
}

/// Paths given to `.route("...")` in the sources of the hub.
fn registered_routes() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    let mut dirs = vec![root.join("bridge/src"), root.join("src")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().map(Result::unwrap) {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut routes = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + 7..];
            let lit = rest.trim_start();
            if let Some(lit) = lit.strip_prefix('"') {
                let end = lit.find('"').unwrap();
                routes.push(lit[..end].to_owned());
            }
        }
    }
    routes.sort();
    routes.dedup();
    routes
}

/// `/a/{x}/b` and `/a/{*y}/b` both become `/a/{}/b`.
fn shape(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { "{}" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

fn response_schema<'a>(doc: &'a Value, path: &str, status: u16, ct: &str) -> &'a Value {
    let op = &doc["paths"][path]["get"];
    let mut res = &op["responses"][status.to_string()];
    assert!(
        !res.is_null(),
        "{path}: status {status} is not documented in openapi.json"
    );
    if let Some(r) = res.get("$ref").and_then(Value::as_str) {
        res = resolve(doc, r).unwrap();
    }
    let schema = &res["content"][ct]["schema"];
    assert!(
        !schema.is_null(),
        "{path} {status}: no {ct} schema in openapi.json"
    );
    schema
}

async fn get_checked(doc: &Value, base: &str, doc_path: &str, url_path: &str) -> (u16, Value) {
    let res = reqwest::get(format!("{base}{url_path}")).await.unwrap();
    let status = res.status().as_u16();
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/json"), "{url_path}: {ct}");
    let body: Value = res.json().await.unwrap();
    let schema = response_schema(doc, doc_path, status, "application/json");
    check(doc, schema, &body, &format!("GET {url_path} -> {status}"));
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_descriptions_match_the_running_hub() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(
        &loopback_config(dir.path(), "[live]\npoll_max_timeout_secs = 2\n"),
        &[],
    );
    let base = hub.http();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));

    // Served documents are the ones in docs/.
    let served_doc = |name: &'static str| {
        let url = format!("{base}/v1/{name}");
        async move {
            let served = reqwest::get(url).await.unwrap().text().await.unwrap();
            let file = std::fs::read_to_string(root.join("docs").join(name)).unwrap();
            assert_eq!(served, file, "served {name} is docs/{name}");
            served
        }
    };
    let served = served_doc("openapi.json").await;
    let served_async = served_doc("asyncapi.yaml").await;
    let docs_page = reqwest::get(format!("{base}/docs")).await.unwrap();
    assert_eq!(docs_page.status(), 200);
    let page = docs_page.text().await.unwrap();
    assert!(
        !page.contains("https://"),
        "the /docs page loads nothing external"
    );

    let openapi: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(openapi["openapi"], "3.1.0");
    let asyncapi: Value = serde_yaml::from_str(&served_async).unwrap();
    assert_eq!(asyncapi["asyncapi"], "3.0.0");

    // Every registered route is described.
    let documented: Vec<String> = openapi["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| shape(k))
        .collect();
    let routes = registered_routes();
    assert!(routes.len() >= 15, "found routes: {routes:?}");
    for r in &routes {
        assert!(
            documented.contains(&shape(r)),
            "route {r} is registered but not in docs/openapi.json"
        );
    }

    // Some data: readings, a status, a reject.
    let mut opts = MqttOptions::new("api-docs-test", "127.0.0.1", hub.addr("mqtt").port());
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let publish = |topic: &'static str, payload: &'static str, retain: bool| {
        let client = client.clone();
        async move {
            client
                .publish(topic, QoS::AtLeastOnce, retain, payload)
                .await
                .unwrap();
        }
    };
    publish(
        "sensors/temperature",
        r#"{"deviceId":"d1","value":21.5,"unit":"C","timestamp":"2026-11-28T10:00:00Z"}"#,
        false,
    )
    .await;
    publish("sensors/d1/humidity", "55", false).await;
    publish(
        "sensors/d2/temperature",
        r#"{"value":70.1,"unit":"F"}"#,
        false,
    )
    .await;
    publish("sensors/d1/status", "online", true).await;
    publish("sensors/d1/humidity", "wet", false).await;
    wait_for(Duration::from_secs(20), "3 readings stored", || async {
        let v = get_json(&format!("{base}/v1/readings")).await;
        match v["readings"].as_array().unwrap().len() {
            3 => Ok(()),
            n => Err(n),
        }
    })
    .await;

    // Real HTTP answers validate against the OpenAPI schemas.
    for (doc_path, url) in [
        ("/v1/series", "/v1/series"),
        ("/v1/devices", "/v1/devices"),
        (
            "/v1/readings",
            "/v1/readings?filter=sensors/%2B/temperature&limit=2",
        ),
        ("/v1/readings", "/v1/readings?after=1"),
        ("/v1/readings", "/v1/readings?filter=sensors/%23%23"),
        ("/v1/readings", "/v1/readings?from=yesterday"),
        ("/v1/readings", "/v1/readings?limit=100000000"),
        ("/v1/readings", "/v1/readings?bogus=1"),
        (
            "/v1/rollups",
            "/v1/rollups?from=2026-11-28T00:00:00Z&to=2026-11-29T00:00:00Z",
        ),
        ("/v1/rollups", "/v1/rollups?step=1ms&from=0"),
        ("/v1/rollups", "/v1/rollups?from=10&to=5"),
        ("/v1/rejects", "/v1/rejects"),
        ("/v1/poll", "/v1/poll?since=0&timeout=0"),
        ("/v1/poll", "/v1/poll?timeout=999"),
        ("/v1/poll", "/v1/poll?filter=%24SYS/%23&timeout=0"),
        ("/v1/watch", "/v1/watch?since=1&timeout=0"),
        (
            "/v1/sensors/{deviceId}/watch",
            "/v1/sensors/d1/watch?since=0&timeout=0",
        ),
        ("/v1/sensors/{deviceId}/watch", "/v1/sensors/bad%20id/watch"),
        ("/v1/ws", "/v1/ws"),
        ("/healthz", "/healthz"),
        ("/readyz", "/readyz"),
        ("/assets/{path}", "/assets/nope.js"),
    ] {
        get_checked(&openapi, &base, doc_path, url).await;
    }
    // NDJSON lines are Readings.
    let ndjson = reqwest::Client::new()
        .get(format!("{base}/v1/readings"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let reading_schema = &openapi["components"]["schemas"]["Reading"];
    for line in ndjson.lines() {
        check(
            &openapi,
            reading_schema,
            &serde_json::from_str(line).unwrap(),
            "ndjson",
        );
    }
    let csv = reqwest::Client::new()
        .get(format!("{base}/v1/readings"))
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(csv.lines().count(), 4);

    // A real WebSocket session validates against the AsyncAPI `ws` channel.
    let ws_messages = &asyncapi["channels"]["ws"]["messages"];
    let by_type = |msg: &Value| -> Value {
        let t = msg["type"].as_str().expect("every message has a type");
        let m = ws_messages
            .as_object()
            .unwrap()
            .values()
            .map(|m| resolve(&asyncapi, m["$ref"].as_str().unwrap()).unwrap())
            .find(|m| m["name"] == t)
            .unwrap_or_else(|| panic!("no AsyncAPI ws message named {t}"));
        m["payload"].clone()
    };
    let mut req = format!("ws://{}/v1/ws", hub.addr("http"))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "edgewatch.v1".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let client_messages = [
        r#"{"type":"subscribe","filter":"sensors/#","since":0}"#,
        r#"{"type":"ping"}"#,
        r#"{"type":"unsubscribe","filter":"sensors/nothing"}"#,
        r#"{"type":"publish","topic":"sensors/d1/cmd","payload":"on"}"#,
        r#"{"type":"subscribe","filter":"$SYS/#"}"#,
        r#"{"type":"nonsense"}"#,
        "not json",
    ];
    for m in client_messages {
        let v: Value = serde_json::from_str(m).unwrap_or(Value::Null);
        if v.is_object() && v["type"] != "nonsense" {
            check(&asyncapi, &by_type(&v), &v, "client message");
        }
        ws.send(Message::Text(m.into())).await.unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut published = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !["subscribed", "reading", "status", "pong", "error"]
        .iter()
        .all(|t| seen.contains(*t))
        || seen.len() < 5
    {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("WebSocket messages in time; seen {seen:?}"))
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            check(&asyncapi, &by_type(&v), &v, "WebSocket server message");
            seen.insert(v["type"].as_str().unwrap().to_owned());
        }
        // Status events are live only (not replayed): publish once the subscription is on.
        if !published && seen.contains("subscribed") {
            publish("sensors/d1/status", "offline", true).await;
            publish("sensors/d1/humidity", "56", false).await;
            published = true;
        }
    }
    ws.send(Message::Text(
        r#"{"type":"unsubscribe","filter":"sensors/#"}"#.into(),
    ))
    .await
    .unwrap();
    loop {
        if let Message::Text(t) = ws.next().await.unwrap().unwrap() {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            check(&asyncapi, &by_type(&v), &v, "WebSocket server message");
            if v["type"] == "unsubscribed" {
                break;
            }
        }
    }

    // A real SSE session validates against the AsyncAPI `sse` channel.
    let sse_messages = &asyncapi["channels"]["sse"]["messages"];
    let res = reqwest::Client::new()
        .get(format!("{base}/v1/stream?filter=sensors/%23"))
        .header("accept", "text/event-stream")
        .header("last-event-id", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut buf = String::new();
    let mut readings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while readings < 4 {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("SSE events in time")
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let (mut event, mut id, mut data) = (None, None, String::new());
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            let Some(event) = event else { continue };
            let m = sse_messages
                .as_object()
                .unwrap()
                .values()
                .map(|m| resolve(&asyncapi, m["$ref"].as_str().unwrap()).unwrap())
                .find(|m| m["name"] == event.as_str())
                .unwrap_or_else(|| panic!("no AsyncAPI sse message named {event}"));
            let v: Value = serde_json::from_str(&data).unwrap();
            check(&asyncapi, &m["payload"], &v, "SSE event");
            if event == "reading" {
                assert_eq!(id.as_deref(), Some(v["seq"].to_string().as_str()));
                readings += 1;
            }
        }
    }
}
