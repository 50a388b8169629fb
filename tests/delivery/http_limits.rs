//! Every HTTP client is bounded (issue #17): connection caps (global and per address), head
//! and idle timeouts on every path, the `Host` check before any `Origin` comparison, the
//! per-client request rate, and the WebSocket subscription cap. Small numbers, generous
//! waits: every assertion is about what happens, never how fast.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use edgewatch_bridge::live::LiveConfig;
use edgewatch_bridge::BridgeConfig;
use futures::SinkExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use super::live_delivery::{start_hub_with, ws_answer, ws_connect, TestHub};
use edgewatch_testkit::http_get;

/// Longest any close or answer is waited for.
const WAIT: Duration = Duration::from_secs(20);

/// A connection to `addr` from the loopback address `from` (127.0.0.x: a distinct client).
async fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::from(from), 0)).unwrap();
    timeout(WAIT, socket.connect(addr))
        .await
        .expect("connect in time")
        .unwrap()
}

/// Reads until the server closes; what it sent.
async fn read_until_closed(tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    match timeout(WAIT, tcp.read_to_end(&mut out)).await {
        Ok(_) => String::from_utf8_lossy(&out).into_owned(),
        Err(_) => panic!(
            "server did not close within {WAIT:?}; sent {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
}

/// One request on a fresh connection from `from`; the whole answer (`connection: close`).
async fn request_from(from: [u8; 4], addr: SocketAddr, head: &str) -> String {
    let mut tcp = connect_from(from, addr).await;
    tcp.write_all(head.as_bytes()).await.unwrap();
    read_until_closed(&mut tcp).await
}

fn get(path: &str, host: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n")
}

fn metrics(hub: &TestHub) -> String {
    hub.bridge.metrics().render()
}

fn small_limits() -> BridgeConfig {
    BridgeConfig {
        http_max_connections: 30,
        http_max_connections_per_ip: 10,
        http_header_timeout_secs: 1,
        http_rate_per_sec: 0,
        ..BridgeConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_caps_get_503_and_idle_ones_close_after_the_timeout() {
    let hub = start_hub_with(LiveConfig::default(), small_limits()).await;
    // 10 idle connections from one address fill its share; the 11th is refused.
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(connect_from([127, 0, 0, 2], hub.addr).await);
    }
    let mut over = connect_from([127, 0, 0, 2], hub.addr).await;
    let answer = read_until_closed(&mut over).await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");
    // Two more addresses fill the global cap of 30; a fourth is refused too.
    for from in [[127, 0, 0, 3], [127, 0, 0, 4]] {
        for _ in 0..10 {
            idle.push(connect_from(from, hub.addr).await);
        }
    }
    let answer = request_from([127, 0, 0, 5], hub.addr, &get("/healthz", "h", "")).await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    // Each idle connection is closed after the 1 s head timeout, without an answer.
    for tcp in &mut idle {
        let sent = read_until_closed(tcp).await;
        assert_eq!(sent, "");
    }
    let text = metrics(&hub);
    for line in [
        "edgewatch_http_connections_refused_total{reason=\"per_ip\"} 1\n",
        "edgewatch_http_connections_refused_total{reason=\"global\"} 1\n",
        "edgewatch_http_connections_refused_total{reason=\"head_timeout\"} 30\n",
    ] {
        assert!(text.contains(line), "{line} missing in\n{text}");
    }
    // The slots are free again.
    let (status, _) = http_get(hub.addr, "/healthz").await;
    assert_eq!(status, 200);
}

/// Slowloris (a few bytes at a time, never a whole head) is closed within the head timeout on
/// every path: the first head (read before choosing the event-stream path or hyper), a head
/// longer than that first read, and a later request of a keep-alive connection (hyper). An
/// idle keep-alive connection is closed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_and_idle_keep_alive_connections_are_closed() {
    let hub = start_hub_with(LiveConfig::default(), small_limits()).await;
    // About 10 s of trickling at 8 bytes per 200 ms: the 1 s timeout fires long before, even
    // on a loaded machine.
    let first = format!(
        "GET /v1/stream?filter=sensors/%23 HTTP/1.1\r\nAccept: text/event-stream\r\n{}",
        "X-Pad: 0123456789\r\n".repeat(20)
    );
    let long = format!("GET /healthz HTTP/1.1\r\nX-Pad: {}\r\n", "a".repeat(9000));
    let keep = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut tasks = Vec::new();
    for (name, prefix, trickle) in [
        ("first head", String::new(), first.clone()),
        (
            "long head",
            long[..8500].to_owned(),
            long[8500..].to_owned(),
        ),
        ("second request", keep.to_owned(), first.clone()),
        ("idle keep-alive", keep.to_owned(), String::new()),
    ] {
        let addr = hub.addr;
        tasks.push(tokio::spawn(async move {
            let mut tcp = connect_from([127, 0, 0, 6], addr).await;
            tcp.write_all(prefix.as_bytes()).await.unwrap();
            // 8 bytes every 200 ms: never a whole head within 1 s... nor within 20 s.
            let mut sent = 0;
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            let closed = timeout(WAIT, async {
                loop {
                    let piece = &trickle.as_bytes()[sent.min(trickle.len())..];
                    let piece = &piece[..piece.len().min(8)];
                    sent += piece.len();
                    if !piece.is_empty() && tcp.write_all(piece).await.is_err() {
                        return;
                    }
                    match timeout(Duration::from_millis(200), tcp.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => return,
                        Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                        Err(_) => {}
                    }
                }
            })
            .await;
            assert!(closed.is_ok(), "{name}: still open after {WAIT:?}");
            assert!(
                sent < trickle.len().max(1),
                "{name}: the whole head went out"
            );
            String::from_utf8_lossy(&got).into_owned()
        }));
    }
    for task in tasks {
        let got = task.await.unwrap();
        // Only the keep-alive requests' own answers came back.
        assert!(got.is_empty() || got.starts_with("HTTP/1.1 "), "{got}");
    }
    let (status, _) = http_get(hub.addr, "/healthz").await;
    assert_eq!(status, 200);
}

/// DNS rebinding: a page on `evil.example` that resolves to the hub sends
/// `Host: evil.example` and (same origin) `Origin: http://evil.example`. Every route refuses it
/// with 421 before comparing the Origin; IP literals, localhost and listed names pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_names_are_refused_before_the_origin_check() {
    let bridge = BridgeConfig {
        http_allowed_hosts: vec!["hub.example.lan".to_owned(), "*.hubs.lan".to_owned()],
        ..small_limits()
    };
    let hub = start_hub_with(LiveConfig::default(), bridge).await;
    let evil = "Origin: http://evil.example\r\n";
    let ws = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    for (path, extra) in [
        (
            "/v1/stream?filter=sensors/%23",
            format!("{evil}Accept: text/event-stream\r\n"),
        ),
        ("/v1/ws", format!("{evil}{ws}")),
        ("/v1/series", evil.to_owned()),
    ] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: evil.example\r\n{extra}\r\n");
        let answer = request_from([127, 0, 0, 7], hub.addr, &head).await;
        assert!(answer.starts_with("HTTP/1.1 421 "), "{path}: {answer}");
        assert!(answer.contains("host_not_allowed"), "{path}: {answer}");
    }
    let port = hub.addr.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "[::1]".to_owned(),
        "hub.example.lan:8080".to_owned(),
        "HUB.example.lan".to_owned(),
        "a.hubs.lan".to_owned(),
    ] {
        let answer = request_from([127, 0, 0, 7], hub.addr, &get("/healthz", &host, "")).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{host}: {answer}");
    }
    let text = metrics(&hub);
    let line = "edgewatch_http_requests_refused_total{reason=\"host\"} 3\n";
    assert!(text.contains(line), "{line} missing in\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_gets_429_and_others_are_served() {
    let bridge = BridgeConfig {
        http_rate_per_sec: 1,
        http_rate_burst: 5,
        ..small_limits()
    };
    let hub = start_hub_with(LiveConfig::default(), bridge).await;
    let head = get("/healthz", "127.0.0.1", "");
    let mut limited = None;
    // A burst of 5, then at most a few more as the bucket refills at 1/s.
    for _ in 0..20 {
        let answer = request_from([127, 0, 0, 8], hub.addr, &head).await;
        if !answer.starts_with("HTTP/1.1 200 ") {
            limited = Some(answer);
            break;
        }
    }
    let answer = limited.expect("no 429 in 20 requests at a rate of 1/s, burst 5");
    assert!(answer.starts_with("HTTP/1.1 429 "), "{answer}");
    assert!(answer.contains("retry-after: 1\r\n"), "{answer}");
    let body: Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another client is not affected.
    let answer = request_from([127, 0, 0, 9], hub.addr, &head).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let text = metrics(&hub);
    assert!(
        text.contains("edgewatch_http_requests_refused_total{reason=\"rate\"} 1\n"),
        "{text}"
    );
}

/// Sends `msg` on a WebSocket; the next JSON message back.
async fn say<S>(ws: &mut S, msg: Value) -> Value
where
    S: futures::Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
        + futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    ws.send(Message::Text(msg.to_string().into()))
        .await
        .unwrap();
    ws_answer(ws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_subscriptions_over_the_cap_get_an_error_and_the_connection_stays_open() {
    let live = LiveConfig {
        ws_max_subscriptions: 3,
        ..LiveConfig::default()
    };
    let hub = start_hub_with(live, BridgeConfig::default()).await;
    let mut ws = ws_connect(hub.addr).await;
    let ws = &mut ws;
    let sub = |f: &str| serde_json::json!({"type": "subscribe", "filter": f});
    for f in ["sensors/a/#", "sensors/b/#", "sensors/c/#"] {
        assert_eq!(say(ws, sub(f)).await["type"], "subscribed");
    }
    let answer = say(ws, sub("sensors/d/#")).await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["code"], "too_many_subscriptions", "{answer}");
    // The same filter again replaces its subscription; after an unsubscribe there is room.
    assert_eq!(say(ws, sub("sensors/a/#")).await["type"], "subscribed");
    let unsub = serde_json::json!({"type": "unsubscribe", "filter": "sensors/b/#"});
    assert_eq!(say(ws, unsub).await["type"], "unsubscribed");
    assert_eq!(say(ws, sub("sensors/d/#")).await["type"], "subscribed");
    assert_eq!(
        say(ws, serde_json::json!({"type": "ping"})).await["type"],
        "pong"
    );
    assert_eq!(hub.live_metrics.ws_subscriptions_refused(), 1);
}

/// The head timeout bounds heads only: a long poll answered after it, an open WebSocket and an
/// open event stream outlive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_and_open_streams_outlive_the_head_timeout() {
    let hub = start_hub_with(LiveConfig::default(), small_limits()).await;
    let mut ws = ws_connect(hub.addr).await;
    let sse = "GET /v1/stream?filter=sensors/%23 HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n";
    let mut stream = connect_from([127, 0, 0, 10], hub.addr).await;
    stream.write_all(sse.as_bytes()).await.unwrap();
    let (status, body) = http_get(hub.addr, "/v1/poll?filter=sensors/%23&timeout=3").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        say(&mut ws, serde_json::json!({"type": "ping"})).await["type"],
        "pong"
    );
    // The stream sent its head and is still open: a read now only waits.
    let mut buf = vec![0u8; 4096];
    let n = timeout(WAIT, stream.read(&mut buf)).await.unwrap().unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 "), "{:?}", &buf[..n]);
    let more = timeout(Duration::from_millis(500), stream.read(&mut buf)).await;
    assert!(
        !matches!(more, Ok(Ok(0)) | Ok(Err(_))),
        "event stream closed"
    );
}
