//! Identity on the HTTP side through a real hub: no credential, a wrong one, a token for one
//! device, a person's login, and a principal reading outside its permission, on history,
//! catalogue, rejects, `/metrics`, SSE, long polling and WebSocket, with reqwest, a WebSocket
//! client and curl. The leak test: a principal for `sensors/d1/#` never sees device d2, by
//! any route.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::{Client, StatusCode};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{loopback_config, start_hub, wait_for, Hub};

const WAIT: Duration = Duration::from_secs(20);
const JWT_SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

/// An HS256 JWT for `aud`, expiring `exp_in` seconds from now, reading `read`.
fn jwt(aud: &str, exp_in: i64, read: &[&str]) -> String {
    jwt_with(aud, exp_in, json!({"read": read}))
}

/// An HS256 JWT for `aud`, expiring `exp_in` seconds from now, with these `edgewatch` claims.
fn jwt_with(aud: &str, exp_in: i64, grants: Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({"sub": "jwt-app", "aud": aud, "exp": now + exp_in, "edgewatch": grants});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// A hub with device accounts d1, d2 (may publish only under their name), a person `alice`
/// (reads d1 only), a person `ops` (no role: everything), a token for d1 and a metrics token.
struct Setup {
    hub: Hub,
    _dir: tempfile::TempDir,
    d1_token: String,
    metrics_token: String,
}

fn hash(password: &str) -> String {
    edgewatch_broker::hash_password(password).unwrap()
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (d1_token, d1_hash) = edgewatch_bridge::http::auth::tokens::generate();
    let (metrics_token, metrics_hash) = edgewatch_bridge::http::auth::tokens::generate();
    let user = |name: &str, role: Option<&str>| {
        let role = role
            .map(|r| format!("role = \"{r}\"\n"))
            .unwrap_or_default();
        format!(
            "[[broker.users]]\nusername = \"{name}\"\npassword_hash = \"{}\"\n{role}",
            hash(&format!("pw-{name}"))
        )
    };
    let extra = format!(
        "{}{}{}{}\
         [broker.roles.device]\npublish = [\"sensors/%u/#\"]\n\
         [broker.roles.viewer]\nread = [\"sensors/d1/#\"]\n\
         [[auth.tokens]]\nname = \"d1-app\"\nhash = \"{d1_hash}\"\nread = [\"sensors/d1/#\"]\n\
         [[auth.tokens]]\nname = \"scraper\"\nhash = \"{metrics_hash}\"\nmetrics = true\n\
         [auth.jwt]\nsecret = \"{JWT_SECRET}\"\naudience = \"edgewatch\"\n",
        user("d1", Some("device")),
        user("d2", Some("device")),
        user("alice", Some("viewer")),
        user("ops", None),
    );
    let config = loopback_config(dir.path(), &extra);
    let hub = start_hub(&config, &[]);
    Setup {
        hub,
        _dir: dir,
        d1_token,
        metrics_token,
    }
}

/// Publishes one reading as device `name` (its own account) and a reject-worthy payload.
async fn publish_as(hub: &Hub, name: &str, value: f64) {
    let addr = hub.addr("mqtt");
    let mut opts = MqttOptions::new(format!("{name}-client"), addr.ip().to_string(), addr.port());
    opts.set_credentials(name, format!("pw-{name}"));
    let (client, mut events) = AsyncClient::new(opts, 16);
    let topic = format!("sensors/{name}/temperature");
    client
        .publish(&topic, QoS::AtLeastOnce, false, value.to_string())
        .await
        .unwrap();
    client
        .publish(
            format!("sensors/{name}/humidity"),
            QoS::AtLeastOnce,
            false,
            "not a number",
        )
        .await
        .unwrap();
    wait_acks(&mut events, 2).await;
    client.disconnect().await.ok();
}

/// Polls `events` until `n` PUBACKs arrived (bounded by [`WAIT`]).
async fn wait_acks(events: &mut rumqttc::EventLoop, n: usize) {
    let mut acked = 0;
    tokio::time::timeout(WAIT, async {
        while acked < n {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = events.poll().await {
                acked += 1;
            }
        }
    })
    .await
    .expect("publishes acknowledged");
}

async fn get(client: &Client, url: &str, auth: Option<&str>) -> (StatusCode, Value) {
    let mut req = client.get(url);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_only_what_the_caller_may_read() {
    let s = setup();
    let http = s.hub.http();
    let client = Client::new();
    publish_as(&s.hub, "d1", 21.5).await;
    publish_as(&s.hub, "d2", 99.5).await;
    // Wait until both readings are stored (the `ops` person reads everything).
    let ops = login(&client, &http, "ops").await;
    wait_for(WAIT, "both readings stored", || async {
        let (_, v) = get_cookie(&client, &format!("{http}/v1/series"), &ops).await;
        (v["series"].as_array().map_or(0, Vec::len) == 2)
            .then_some(())
            .ok_or(())
    })
    .await;

    let routes = [
        "/v1/series",
        "/v1/devices",
        "/v1/readings",
        "/v1/rollups",
        "/v1/rejects",
        "/v1/me",
        "/metrics",
    ];
    // No credential and a wrong one: 401 with the JSON error, nothing else.
    for route in routes {
        let url = format!("{http}{route}");
        let (status, body) = get(&client, &url, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{route}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{route}");
        let (status, body) = get(&client, &url, Some("Bearer ewt_0000")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{route}: {body}");
        assert!(
            !body.to_string().contains("ewt_0000"),
            "the token is not echoed"
        );
    }
    // Public: health, readiness, the API documents, the login page, the dashboard's files.
    for route in [
        "/healthz",
        "/readyz",
        "/v1/openapi.json",
        "/v1/asyncapi.yaml",
        "/login",
        "/",
    ] {
        let res = client.get(format!("{http}{route}")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{route}");
    }

    let d1 = format!("Bearer {}", s.d1_token);
    let leak = |route: &str, body: &Value| {
        let text = body.to_string();
        assert!(
            !text.contains("d2"),
            "{route} leaked d2 to the d1 token: {text}"
        );
    };
    for route in [
        "/v1/series",
        "/v1/devices",
        "/v1/readings",
        "/v1/rollups",
        "/v1/rejects",
    ] {
        let (status, body) = get(&client, &format!("{http}{route}"), Some(&d1)).await;
        assert_eq!(status, StatusCode::OK, "{route}: {body}");
        assert!(body.to_string().contains("d1"), "{route} shows d1: {body}");
        leak(route, &body);
    }
    let (_, me) = get(&client, &format!("{http}/v1/me"), Some(&d1)).await;
    assert_eq!(me["name"], "d1-app");
    assert_eq!(me["read"], json!(["sensors/d1/#"]));
    // A filter outside the permission is 403, not an empty answer; the message names only the
    // caller's own filter.
    for route in [
        "/v1/readings?filter=sensors/d2/%23",
        "/v1/rollups?filter=sensors/%2B/temperature",
        "/v1/readings?filter=%23",
    ] {
        let (status, body) = get(&client, &format!("{http}{route}"), Some(&d1)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{route}: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
    }
    // /metrics needs its own permission: the d1 token may not, the scraper token may.
    let (status, _) = get(&client, &format!("{http}/metrics"), Some(&d1)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let scraper = format!("Bearer {}", s.metrics_token);
    let (status, body) = get(&client, &format!("{http}/metrics"), Some(&scraper)).await;
    assert_eq!(status, StatusCode::OK);
    let text = body.as_str().unwrap();
    // The refusals above are counted (no credential: 7 routes; then wrong tokens and 403s).
    let value = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(&format!("{name} ")));
        line.and_then(|l| l.split(' ').nth(1)?.parse().ok())
            .unwrap_or(-1.0)
    };
    assert!(
        value("edgewatch_http_credential_missing_total") >= 7.0,
        "{text}"
    );
    assert!(
        value("edgewatch_http_credential_invalid_total") >= 7.0,
        "{text}"
    );
    assert!(value("edgewatch_http_forbidden_total") >= 4.0, "{text}");
    assert!(
        value("edgewatch_http_logins_accepted_total") >= 1.0,
        "{text}"
    );
    assert!(
        value("edgewatch_http_login_failures_total") >= 1.0,
        "{text}"
    );
    // A token that may read nothing: the catalogue is empty, a history query is refused.
    let (status, body) = get(&client, &format!("{http}/v1/series"), Some(&scraper)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"series": []})));
    let (status, _) = get(&client, &format!("{http}/v1/readings"), Some(&scraper)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A JWT: its claims decide; expired or for another audience: 401 saying so.
    let good = format!("Bearer {}", jwt("edgewatch", 600, &["sensors/d1/#"]));
    let (status, body) = get(&client, &format!("{http}/v1/series"), Some(&good)).await;
    assert_eq!(status, StatusCode::OK);
    leak("/v1/series (jwt)", &body);
    assert_eq!(body["series"].as_array().unwrap().len(), 1, "{body}");
    let (status, _) = get(
        &client,
        &format!("{http}/v1/readings?filter=sensors/d2/%23"),
        Some(&good),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for (bad, code) in [
        (jwt("edgewatch", -600, &["sensors/#"]), "token_expired"),
        (
            jwt("elsewhere", 600, &["sensors/#"]),
            "token_wrong_audience",
        ),
    ] {
        let (status, body) = get(
            &client,
            &format!("{http}/v1/series"),
            Some(&format!("Bearer {bad}")),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
    }

    // The person alice (role viewer: d1 only) through her session cookie.
    let alice = login(&client, &http, "alice").await;
    let (status, body) = get_cookie(&client, &format!("{http}/v1/series"), &alice).await;
    assert_eq!(status, StatusCode::OK);
    leak("/v1/series (alice)", &body);
    assert_eq!(body["series"].as_array().unwrap().len(), 1);
    let (status, _) = get_cookie(&client, &format!("{http}/metrics"), &alice).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "viewer role has no metrics");
    let (status, _) = get_cookie(&client, &format!("{http}/metrics"), &ops).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an account without a role may read metrics"
    );
    // Logout ends the session.
    let res = client
        .post(format!("{http}/v1/logout"))
        .header("cookie", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let (status, body) = get_cookie(&client, &format!("{http}/v1/series"), &alice).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "session_expired");

    live_routes(&s, &client, &http, &ops).await;
    with_curl(&s, &http);
}

/// curl, as an operator would use it: status codes and an SSE event with the query token.
fn with_curl(s: &Setup, http: &str) {
    assert!(
        crate::support::have("curl"),
        "curl is needed (scripts/test installs it)"
    );
    let curl = |args: &[&str]| -> String {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(args)
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let status = |args: &[&str]| curl(&[&["-o", "/dev/null", "-w", "%{http_code}"], args].concat());
    let readings = format!("{http}/v1/readings");
    assert_eq!(status(&[&readings]), "401");
    assert_eq!(
        status(&["-H", "Authorization: Bearer ewt_wrong", &readings]),
        "401"
    );
    let bearer = format!("Authorization: Bearer {}", s.d1_token);
    assert_eq!(status(&["-H", &bearer, &readings]), "200");
    let denied = format!("{http}/v1/readings?filter=sensors/d2/%23");
    assert_eq!(status(&["-H", &bearer, &denied]), "403");
    let body = curl(&["-H", &bearer, &readings]);
    assert!(
        body.contains("\"deviceId\":\"d1\"") && !body.contains("d2"),
        "{body}"
    );
    // SSE: --max-time ends the stream; what arrived before is on stdout.
    let stream = format!("{http}/v1/stream?since=0&access_token={}", s.d1_token);
    let events = curl(&["-N", "--max-time", "2", &stream]);
    assert!(
        events.contains("event: reading") && events.contains("\"deviceId\":\"d1\""),
        "{events}"
    );
    assert!(!events.contains("d2"), "{events}");
    let poll = format!("{http}/v1/poll?since=0&timeout=0");
    let answer = curl(&["-H", &bearer, &poll]);
    assert!(answer.contains("d1") && !answer.contains("d2"), "{answer}");
}

/// SSE, long poll and WebSocket: the same decisions, with the query token on these routes.
async fn live_routes(s: &Setup, client: &Client, http: &str, ops: &str) {
    let token = &s.d1_token;
    // SSE with no credential: 401; with the token as access_token: only d1, from the start.
    let (status, _) = get(client, &format!("{http}/v1/stream?since=0"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let url = format!("{http}/v1/stream?since=0&access_token={token}");
    let mut sse = edgewatch_testkit::Sse::open(&url, None)
        .await
        .expect("stream opens");
    let first = sse.until(WAIT, |v| v["type"] == "reading").await;
    assert_eq!(first["deviceId"], "d1");
    // Outside the permission: 403 on every live transport.
    let denied = format!("{http}/v1/stream?filter=sensors/d2/%23&access_token={token}");
    let res = client
        .get(&denied)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let (status, _) = get(
        client,
        &format!("{http}/v1/poll?filter=sensors/d2/%23&since=0&timeout=0"),
        Some(&format!("Bearer {token}")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = get(
        client,
        &format!("{http}/v1/poll?since=0&timeout=0"),
        Some(&format!("Bearer {token}")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!body.to_string().contains("d2"), "poll leaked d2: {body}");
    // The query token is for live routes only.
    let (status, _) = get(
        client,
        &format!("{http}/v1/series?access_token={token}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // WebSocket: no credential refused at the handshake; with the bearer header a
    // subscription outside the permission is an error message, inside it works; publishing
    // needs a publish permission.
    let ws_url = http.replace("http://", "ws://") + "/v1/ws";
    let mut req = ws_url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "edgewatch.v1".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req.clone()).await.is_err());
    let mut authed = req.clone();
    authed
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(authed)
        .await
        .expect("ws with token");
    for msg in [
        json!({"type": "subscribe", "filter": "sensors/d2/#", "since": 0}),
        json!({"type": "publish", "topic": "sensors/d1/cmd", "payload": "on"}),
        json!({"type": "subscribe", "filter": "sensors/d1/#", "since": 0}),
    ] {
        ws.send(Message::text(msg.to_string())).await.unwrap();
    }
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(Ok(Message::Text(t))) = ws.next().await {
            let v: Value = serde_json::from_str(&t).unwrap();
            let done = v["type"] == "reading";
            seen.push(v);
            if done {
                break;
            }
        }
    })
    .await
    .expect("a reading over the WebSocket");
    let text = serde_json::to_string(&seen).unwrap();
    assert_eq!(seen[0]["type"], "error", "{text}");
    assert_eq!(
        seen[1]["type"], "error",
        "publish without permission: {text}"
    );
    assert!(!text.contains("\"deviceId\":\"d2\""), "{text}");
    assert_eq!(seen.last().unwrap()["deviceId"], "d1");
    // The person's cookie opens an EventSource-style stream too.
    let res = client
        .get(format!("{http}/v1/stream?since=0"))
        .header("accept", "text/event-stream")
        .header("cookie", ops)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// Logs `name` in (password `pw-NAME`) and returns the `Cookie` header value.
async fn login(client: &Client, http: &str, name: &str) -> String {
    let res = client
        .post(format!("{http}/v1/login"))
        .json(&json!({"username": name, "password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "a wrong password");
    assert!(res.headers().get("set-cookie").is_none());
    // The wrong attempt put the name in backoff (100 ms at first).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let res = client
        .post(format!("{http}/v1/login"))
        .json(&json!({"username": name, "password": format!("pw-{name}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "login {name}");
    let cookie = res
        .headers()
        .get("set-cookie")
        .expect("a session cookie")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let me: Value = res.json().await.unwrap();
    assert_eq!(me["name"], name);
    assert_eq!(me["kind"], "person");
    cookie.split(';').next().unwrap().to_owned()
}

async fn get_cookie(client: &Client, url: &str, cookie: &str) -> (StatusCode, Value) {
    let res = client
        .get(url)
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_the_http_listener_stays_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "http_listen = \"127.0.0.1:0\"",
        "http_listen = \"0.0.0.0:0\"",
    );
    std::fs::write(&config, text).unwrap();
    let hub = start_hub(&config, &[]);
    assert!(hub.addr("http").ip().is_loopback(), "{}", hub.http());
    hub.wait_for_log("binds loopback only", WAIT);
    // Anonymous locally, as before: the demo needs no setup.
    let (status, _) = get(&Client::new(), &format!("{}/v1/series", hub.http()), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get(&Client::new(), &format!("{}/metrics", hub.http()), None).await;
    assert_eq!(status, StatusCode::OK);
}

/// Connects to the hub's MQTT listener as `username` / `password`: the client and its event
/// loop once the CONNACK accepted it, or the refusal's return code.
pub(crate) async fn mqtt_login(
    hub: &Hub,
    username: &str,
    password: &str,
) -> Result<(AsyncClient, rumqttc::EventLoop), rumqttc::ConnectReturnCode> {
    let addr = hub.addr("mqtt");
    let mut opts = MqttOptions::new(
        format!("tok-{username}"),
        addr.ip().to_string(),
        addr.port(),
    );
    opts.set_credentials(username, password);
    let (client, mut events) = AsyncClient::new(opts, 16);
    let outcome = tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Err(code),
                Err(err) => panic!("MQTT connection failed: {err}"),
            }
        }
    })
    .await
    .expect("a CONNACK in time");
    outcome.map(|()| (client, events))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_or_an_app_token_is_an_mqtt_password_with_its_own_permissions() {
    let s = setup();
    let http = s.hub.http();
    // A JWT that may publish under sensors/jwt-dev/ only: its reading is stored, one for
    // another device is not.
    let grants = json!({"publish": ["sensors/jwt-dev/#"]});
    let token = jwt_with("edgewatch", 600, grants.clone());
    let (client, mut events) = mqtt_login(&s.hub, "any-name", &token)
        .await
        .expect("JWT login");
    for (topic, value) in [
        ("sensors/jwt-dev/temperature", "1.5"),
        ("sensors/d2/temperature", "66.6"),
    ] {
        client
            .publish(topic, QoS::AtLeastOnce, false, value)
            .await
            .unwrap();
    }
    wait_acks(&mut events, 2).await;
    let client_http = Client::new();
    let ops = login(&client_http, &http, "ops").await;
    wait_for(WAIT, "the JWT device's reading stored", || async {
        let (_, v) = get_cookie(&client_http, &format!("{http}/v1/series"), &ops).await;
        v.to_string().contains("jwt-dev").then_some(()).ok_or(())
    })
    .await;
    let (_, v) = get_cookie(
        &client_http,
        &format!("{http}/v1/readings?filter=sensors/d2/%23"),
        &ops,
    )
    .await;
    assert!(
        !v.to_string().contains("66.6"),
        "the denied publish was stored: {v}"
    );

    // Expired, or for another audience, or signed with another key: refused as a bad
    // username or password.
    let expired = jwt_with("edgewatch", -600, grants.clone());
    let elsewhere = jwt_with("elsewhere", 600, grants);
    for bad in [expired.as_str(), elsewhere.as_str(), "ewt_0000"] {
        let refused = mqtt_login(&s.hub, "any-name", bad).await.err();
        assert_eq!(
            refused,
            Some(rumqttc::ConnectReturnCode::BadUserNamePassword),
            "{bad}"
        );
    }

    // The d1 app token as a password: it reads sensors/d1/# and nothing else.
    let (client, mut events) = mqtt_login(&s.hub, "d1-app", &s.d1_token)
        .await
        .expect("token login");
    client
        .subscribe("sensors/d1/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .subscribe("sensors/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut codes = Vec::new();
    tokio::time::timeout(WAIT, async {
        while codes.len() < 2 {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack))) = events.poll().await
            {
                codes.extend(ack.return_codes);
            }
        }
    })
    .await
    .expect("two SUBACKs");
    assert_eq!(
        codes,
        [
            rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce),
            rumqttc::SubscribeReasonCode::Failure
        ]
    );
    // At `info`, rumqttd's four lines per connection stay out of the log (rumqttd=warn unless
    // the filter names rumqttd); our own refusals are there.
    let log: Vec<String> = s.hub.stderr().try_iter().collect();
    assert!(
        log.iter().any(|l| l.contains("MQTT token login refused")),
        "{log:?}"
    );
    assert!(
        !log.iter()
            .any(|l| l.contains("Client connection registered")),
        "rumqttd's per-connection INFO lines are logged"
    );
}
