//! Live delivery with real clients: SSE over HTTP (reqwest), WebSocket (tokio-tungstenite)
//! and long polling, against the bridge composed in-process on sled in a temp dir, HTTP on
//! port 0.

use std::net::SocketAddr;
use std::time::Duration;

use edgewatch_bridge::http::live::LiveState;
use edgewatch_bridge::live::fanout::FanoutConfig;
use edgewatch_bridge::live::LiveConfig;
use edgewatch_bridge::{BridgeConfig, Publish};
use futures::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::support::{wait_until, Sse};
use edgewatch_testkit::http_get;

const WAIT: Duration = Duration::from_secs(60);

pub(crate) struct TestHub {
    pub(crate) addr: SocketAddr,
    feed: mpsc::Sender<Publish>,
    stop: CancellationToken,
    pub(crate) bridge: edgewatch_bridge::Bridge,
    fanout: edgewatch_bridge::live::fanout::Fanout,
    pub(crate) live_metrics: std::sync::Arc<edgewatch_bridge::live::connections::LiveMetrics>,
    _dir: tempfile::TempDir,
}

impl TestHub {
    /// Waits until `n` live clients (SSE, WebSocket or long poll) are subscribed to the
    /// fan-out: from then on they get every reading committed.
    async fn subscribed(&self, n: usize) {
        wait_until(WAIT, &format!("{n} live subscriptions"), || {
            self.fanout.subscriptions() >= n
        })
        .await;
    }

    /// Waits until the store holds `n` readings.
    async fn stored(&self, n: u64) {
        let store = self.bridge.store().clone();
        wait_until(WAIT, &format!("{n} readings stored"), || {
            store.last_seq().unwrap() >= n
        })
        .await;
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start_hub(live: LiveConfig) -> TestHub {
    start_hub_with(live, BridgeConfig::default()).await
}

/// A hub with `bridge` settings (its `data_dir` and `flush_interval_ms` are the test's).
pub(crate) async fn start_hub_with(live: LiveConfig, bridge: BridgeConfig) -> TestHub {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BridgeConfig {
        data_dir: dir.path().join("data"),
        flush_interval_ms: 2,
        ..bridge
    };
    let stop = CancellationToken::new();
    let bridge = edgewatch_bridge::start(cfg, stop.child_token())
        .await
        .unwrap();
    let (feed, rx) = mpsc::channel::<Publish>(4096);
    bridge.run_source(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|p| (p, rx))
    }));
    let live_feed = edgewatch_bridge::live::start(&bridge, &live.fanout, stop.child_token());
    let fanout = live_feed.fanout().clone();
    let state = LiveState::new(live_feed, live, stop.clone(), None);
    let live_metrics = state.metrics.clone();
    let app = edgewatch_bridge::http::app(bridge.app_state(), Some(state), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = stop.clone();
    let guard = bridge.http_guard();
    tokio::spawn(async move {
        let shutdown = async move { s.cancelled().await };
        let _ = edgewatch_bridge::http::serve_guarded(listener, app, guard, shutdown).await;
    });
    TestHub {
        addr,
        feed,
        stop,
        bridge,
        fanout,
        live_metrics,
        _dir: dir,
    }
}

fn now_ms() -> i64 {
    edgewatch_protocol::timefmt::now_ms()
}

/// Publishes `n` readings (value = index, so none is a duplicate of another), `per_sec` a
/// second (0: as fast as ingest takes them).
async fn publish(feed: mpsc::Sender<Publish>, n: usize, per_sec: u64) {
    let pause = (per_sec > 0).then(|| Duration::from_secs_f64(1.0 / per_sec as f64));
    for i in 0..n {
        let p = Publish {
            topic: format!("sensors/d{}/temperature", i % 10),
            payload: format!("{i}").into(),
            received_at_ms: now_ms(),
        };
        feed.send(p).await.unwrap();
        if let Some(p) = pause {
            // A publishing rate is the behaviour these callers ask for.
            if i % 10 == 9 {
                tokio::time::sleep(p * 10).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resume_across_100_forced_disconnects_delivers_each_reading_once_in_order() {
    const N: usize = 10_000;
    let hub = start_hub(LiveConfig::default()).await;
    let url = format!("http://{}/v1/stream?filter=sensors/%23", hub.addr);
    let publisher = tokio::spawn(publish(hub.feed.clone(), N, 4_000));
    let mut rng = rand::thread_rng();
    let mut seqs: Vec<u64> = Vec::with_capacity(N);
    let mut disconnects = 0;
    // Start from the beginning of the log (cursor 0), then resume with Last-Event-ID.
    let mut last: u64 = 0;
    let result = timeout(WAIT, async {
        while seqs.len() < N {
            let mut sse = Sse::open(&url, Some(last)).await.expect("stream opens");
            let budget = if disconnects < 100 {
                rng.gen_range(1..150)
            } else {
                usize::MAX
            };
            let mut got = 0;
            while got < budget && seqs.len() < N {
                let Some(ev) = sse.next().await else { break };
                if ev.event != "reading" {
                    continue;
                }
                let v: Value = serde_json::from_str(&ev.data).unwrap();
                let seq = v["seq"].as_u64().unwrap();
                assert_eq!(ev.id.as_deref(), Some(seq.to_string().as_str()));
                seqs.push(seq);
                last = seq;
                got += 1;
            }
            if seqs.len() < N {
                disconnects += 1; // dropping `sse` closes the connection
            }
        }
    })
    .await;
    result.unwrap_or_else(|_| panic!("timed out with {} of {N} readings", seqs.len()));
    publisher.await.unwrap();
    assert!(disconnects >= 100, "only {disconnects} disconnects");
    let expected: Vec<u64> = (1..=N as u64).collect();
    assert_eq!(seqs, expected, "every reading exactly once, in seq order");
}

pub(crate) async fn ws_connect(
    addr: SocketAddr,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut req = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "edgewatch.v1".parse().unwrap());
    let (ws, res) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        res.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("edgewatch.v1")
    );
    ws
}

/// Reads until the server's close frame; its code, or None if the connection just ended.
async fn ws_close_code<S>(ws: &mut S) -> Option<u16>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            _ => return None,
        }
    }
}

/// The next JSON message, within 10 s.
pub(crate) async fn ws_answer<S>(ws: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    timeout(Duration::from_secs(10), ws_next_json(ws))
        .await
        .expect("an answer in time")
        .expect("a message")
}

async fn ws_next_json<S>(ws: &mut S) -> Option<Value>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_resume_across_100_forced_disconnects_delivers_each_reading_once_in_order() {
    const N: usize = 10_000;
    let hub = start_hub(LiveConfig::default()).await;
    let publisher = tokio::spawn(publish(hub.feed.clone(), N, 4_000));
    let mut rng = rand::thread_rng();
    let mut seqs: Vec<u64> = Vec::with_capacity(N);
    let mut disconnects = 0;
    let mut last: u64 = 0;
    let result = timeout(WAIT, async {
        while seqs.len() < N {
            let mut ws = ws_connect(hub.addr).await;
            let sub =
                serde_json::json!({"type": "subscribe", "filter": "sensors/#", "since": last});
            ws.send(Message::Text(sub.to_string().into()))
                .await
                .unwrap();
            let budget = if disconnects < 100 {
                rng.gen_range(1..150)
            } else {
                usize::MAX
            };
            let mut got = 0;
            while got < budget && seqs.len() < N {
                let Some(v) = ws_next_json(&mut ws).await else {
                    break;
                };
                match v["type"].as_str() {
                    Some("reading") => {
                        let seq = v["seq"].as_u64().unwrap();
                        seqs.push(seq);
                        last = seq;
                        got += 1;
                    }
                    Some("subscribed") => assert_eq!(v["filter"], "sensors/#"),
                    other => panic!("unexpected message {other:?}: {v}"),
                }
            }
            if seqs.len() < N {
                disconnects += 1;
                drop(ws); // abrupt: no close handshake
            }
        }
    })
    .await;
    result.unwrap_or_else(|_| panic!("timed out with {} of {N} readings", seqs.len()));
    publisher.await.unwrap();
    assert!(disconnects >= 100);
    let expected: Vec<u64> = (1..=N as u64).collect();
    assert_eq!(seqs, expected, "every reading exactly once, in seq order");
}

/// The wait of an empty poll runs on paused time (a current-thread runtime): its 1 s is a tokio
/// timer in this process.
#[tokio::test]
async fn long_poll_pages_through_everything_and_waits_for_new() {
    let hub = start_hub(LiveConfig::default()).await;
    publish(hub.feed.clone(), 2_500, 0).await;
    let client = reqwest::Client::new();
    let base = format!("http://{}/v1/poll?filter=sensors/%2B/temperature", hub.addr);
    let mut since = 0;
    let mut seqs = Vec::new();
    while seqs.len() < 2_500 {
        let v: Value = client
            .get(format!("{base}&since={since}&timeout=5"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for r in v["readings"].as_array().unwrap() {
            seqs.push(r["seq"].as_u64().unwrap());
        }
        since = v["next"].as_u64().unwrap();
    }
    assert_eq!(seqs, (1..=2_500).collect::<Vec<u64>>());
    // Nothing new: the poll waits, then answers empty with the same cursor.
    tokio::time::pause();
    let started = tokio::time::Instant::now();
    let v: Value = client
        .get(format!("{base}&since={since}&timeout=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
    // Back to real time: a new reading is answered after its commit, which waits on sled's own
    // flush thread; paused time would jump past that wait.
    tokio::time::resume();
    assert_eq!(v["readings"].as_array().unwrap().len(), 0);
    assert_eq!(v["next"].as_u64(), Some(since));
    // A poll waiting when a reading arrives answers at once.
    let feed = hub.feed.clone();
    let url = format!("{base}&since={since}&timeout=30");
    let waiting = tokio::spawn(async move {
        reqwest::get(url)
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    hub.subscribed(1).await;
    feed.send(Publish {
        topic: "sensors/d1/temperature".into(),
        payload: "99.5".into(),
        received_at_ms: now_ms(),
    })
    .await
    .unwrap();
    let v = timeout(Duration::from_secs(10), waiting)
        .await
        .expect("poll answered")
        .unwrap();
    assert_eq!(v["readings"][0]["value"].as_f64(), Some(99.5));
    assert_eq!(v["next"].as_u64(), Some(since + 1));
}

/// A raw SSE connection with a tiny receive buffer, so that not reading makes the server's
/// queue fill quickly (a client with default buffers would hide megabytes in the kernel).
async fn raw_sse(addr: SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut stream = sock.connect(addr).await.unwrap();
    let req = format!(
        "GET /v1/stream?filter=sensors/%23 HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    stream
}

/// Reads whatever arrives within `window` (or until the response or connection ends);
/// returns the text and whether the server ended the stream.
async fn read_for(stream: &mut tokio::net::TcpStream, window: Duration) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut text = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + window;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&text).into_owned(), true),
            Ok(Ok(n)) => {
                text.extend_from_slice(&buf[..n]);
                // The end of the chunked response body (the connection itself stays open).
                if text.ends_with(b"\r\n0\r\n\r\n") {
                    return (String::from_utf8_lossy(&text).into_owned(), true);
                }
            }
            Err(_) => return (String::from_utf8_lossy(&text).into_owned(), false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_gets_a_gap_then_is_disconnected_while_a_fast_one_keeps_pace() {
    // Counts, not timings, drive this test, so a busy machine changes only how long it takes.
    // A burst of BURST readings is more than the kernel's socket buffers (up to 4 MiB here,
    // about 16,000 events) plus the subscriber queue can hold.
    const BURST: u64 = 30_000;
    let live = LiveConfig {
        fanout: FanoutConfig {
            queue_capacity: 4096,
            conflate_max_topics: 4096,
            lag_timeout_secs: 6,
        },
        ..LiveConfig::default()
    };
    let hub = start_hub(live).await;
    let url = format!("http://{}/v1/stream?filter=sensors/%23", hub.addr);
    let mut fast = Sse::open(&url, None).await.unwrap();
    let mut slow = raw_sse(hub.addr).await;
    hub.subscribed(2).await;

    // The fast client reads everything, in order, with no gap, and reports its progress.
    let (progress_tx, progress) = tokio::sync::watch::channel(0u64);
    let fast_task = tokio::spawn(async move {
        let mut expect = 1;
        while let Some(ev) = fast.next().await {
            assert_eq!(ev.event, "reading", "fast client got {ev:?}");
            assert_eq!(
                ev.id,
                Some(expect.to_string()),
                "fast client missed readings"
            );
            let _ = progress_tx.send(expect);
            expect += 1;
        }
    });
    let mut next_value = 0u64;
    let mut burst = |n: u64| {
        let feed = hub.feed.clone();
        let start = next_value;
        next_value += n;
        let mut fast_progress = progress.clone();
        async move {
            for i in start..start + n {
                let p = Publish {
                    topic: format!("sensors/d{}/temperature", i % 10),
                    payload: format!("{i}").into(),
                    received_at_ms: now_ms(),
                };
                feed.send(p).await.unwrap();
                // Keep the burst within what the fast client can read: the writer commits
                // far faster than a debug-build test client parses, and a client that falls
                // a whole queue behind is rightly degraded too. The slow client still falls
                // behind by the whole burst.
                if (i + 1) % 1000 == 0 {
                    let sent = i + 1;
                    timeout(WAIT, fast_progress.wait_for(|s| *s + 2000 >= sent))
                        .await
                        .expect("fast client fell behind")
                        .unwrap();
                }
            }
        }
    };
    let wait_fast = |seq: u64| {
        let mut rx = progress.clone();
        async move {
            timeout(WAIT, rx.wait_for(|s| *s >= seq))
                .await
                .expect("fast client fell behind")
                .unwrap();
        }
    };

    // Phase 1: a burst while the slow client does not read; once the fast one has it all,
    // the slow one drains and must find a gap notice.
    burst(BURST).await;
    let (text, closed) = read_for(&mut slow, Duration::from_secs(3)).await;
    assert!(!closed, "slow client closed in phase 1");
    wait_fast(BURST).await;
    assert!(
        text.contains("event: gap"),
        "no gap after a stall; read {} bytes",
        text.len()
    );

    // Phase 2: another burst, then a trickle, and the slow client never reads: after the lag
    // timeout it is disconnected, and the last event it gets is an `error` saying why.
    burst(BURST).await;
    let stalled = std::time::Instant::now();
    while stalled.elapsed() < Duration::from_secs(8) {
        burst(200).await;
        // A trickle past the 6 s lag timeout, on real time (real sockets whose kernel buffers
        // fill): the pacing is the behaviour under test.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (text, closed) = read_for(&mut slow, Duration::from_secs(30)).await;
    assert!(
        closed,
        "slow client was not disconnected; read {} bytes",
        text.len()
    );
    let last_event = text
        .rfind("event: ")
        .map(|i| &text[i..])
        .unwrap_or_default();
    assert!(
        last_event.starts_with("event: error"),
        "last event: {last_event:.200}"
    );
    assert!(last_event.contains("lagging"));
    let total = next_value;
    wait_fast(total).await;
    drop(progress);
    fast_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sse_and_a_thousand_websocket_clients_each_get_every_reading() {
    const CLIENTS: usize = 1_000;
    const BURST: usize = 200;
    // 2,000 connections from one address, opened at once: above the per-address defaults.
    let bridge = BridgeConfig {
        http_max_connections: 10_000,
        http_max_connections_per_ip: 10_000,
        http_rate_per_sec: 0,
        ..BridgeConfig::default()
    };
    let hub = start_hub_with(LiveConfig::default(), bridge).await;
    let url = format!("http://{}/v1/stream?filter=sensors/%23", hub.addr);
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(2 * CLIENTS);
    for _ in 0..CLIENTS {
        let url = url.clone();
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut sse = Sse::open(&url, None).await.unwrap();
            ready.send(()).await.unwrap();
            let mut n = 0;
            while n < BURST {
                let ev = sse.next().await.expect("stream ended");
                if ev.event == "reading" {
                    n += 1;
                }
            }
            n
        }));
        let addr = hub.addr;
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = ws_connect(addr).await;
            let sub = serde_json::json!({"type": "subscribe", "filter": "sensors/#"});
            ws.send(Message::Text(sub.to_string().into()))
                .await
                .unwrap();
            let first = ws_next_json(&mut ws).await.unwrap();
            assert_eq!(first["type"], "subscribed");
            ready.send(()).await.unwrap();
            let mut n = 0;
            while n < BURST {
                let v = ws_next_json(&mut ws).await.expect("socket ended");
                if v["type"] == "reading" {
                    n += 1;
                }
            }
            n
        }));
    }
    for _ in 0..2 * CLIENTS {
        timeout(WAIT, ready_rx.recv())
            .await
            .expect("clients did not all connect");
    }
    // SSE subscribes when its response starts: wait for the last ones too.
    hub.subscribed(2 * CLIENTS).await;
    publish(hub.feed.clone(), BURST, 0).await;
    for t in tasks {
        let n = timeout(WAIT, t)
            .await
            .expect("a client did not get the whole burst")
            .unwrap();
        assert_eq!(n, BURST);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_the_hub_carries_on() {
    let hub = start_hub(LiveConfig {
        ws_max_message_bytes: 150_000,
        ..LiveConfig::default()
    })
    .await;
    let base = format!("http://{}", hub.addr);
    let long = format!("sensors/{}", "a/".repeat(35_000));
    for (path, code) in [
        ("/v1/stream?filter=sensors/%23/x", "bad_filter"),
        ("/v1/stream?filter=", "bad_filter"),
        ("/v1/stream?lastEventId=abc", "bad_cursor"),
        ("/v1/poll?since=-1", "bad_cursor"),
        ("/v1/poll?timeout=9999", "bad_timeout"),
        ("/v1/stream?filter=other/%23", "forbidden"),
        ("/v1/stream?bogus=1", "unknown_parameter"),
    ] {
        let res = reqwest::get(format!("{base}{path}")).await.unwrap();
        let status = res.status();
        assert!(status.is_client_error(), "{path}: {status}");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{path}: {v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // Non-numeric Last-Event-ID header.
    let res = reqwest::Client::new()
        .get(format!("{base}/v1/stream"))
        .header("last-event-id", "not-a-number")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // A foreign Origin is refused.
    let res = reqwest::Client::new()
        .get(format!("{base}/v1/stream"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);

    // WebSocket: malformed JSON, unknown type, bad filter each get an error; the connection
    // stays open (ping → pong), then an oversize message closes it with 1009.
    let mut ws = ws_connect(hub.addr).await;
    let long_sub = serde_json::json!({"type": "subscribe", "filter": long}).to_string();
    for (msg, code) in [
        (long_sub.as_str(), "bad_filter"),
        ("{not json", "invalid_json"),
        (r#"{"type":"dance"}"#, "invalid_message"),
        (
            r#"{"type":"subscribe","filter":"sensors/#/x"}"#,
            "bad_filter",
        ),
        (r#"{"type":"subscribe","filter":"$SYS/#"}"#, "forbidden"),
        (
            r#"{"type":"publish","topic":"sensors/d1/t","payload":"1"}"#,
            "forbidden",
        ),
        (
            r#"{"type":"unsubscribe","filter":"sensors/#"}"#,
            "not_subscribed",
        ),
    ] {
        ws.send(Message::Text(msg.into())).await.unwrap();
        let v = timeout(WAIT, ws_next_json(&mut ws))
            .await
            .unwrap()
            .expect("connection closed");
        assert_eq!(v["type"], "error", "{msg}: {v}");
        assert_eq!(v["code"], code, "{msg}: {v}");
    }
    ws.send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .unwrap();
    let v = timeout(WAIT, ws_next_json(&mut ws)).await.unwrap().unwrap();
    assert_eq!(v["type"], "pong");
    let huge = format!(r#"{{"type":"ping","x":"{}"}}"#, "x".repeat(200_000));
    let _ = ws.send(Message::Text(huge.into())).await;
    let close = timeout(WAIT, ws_close_code(&mut ws)).await.unwrap();
    assert_eq!(close, Some(1009));
    // The hub still serves.
    let res = reqwest::get(format!("{base}/v1/poll?timeout=0"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// The idle part runs on paused time (a current-thread runtime): the heartbeat timer and the
/// 2.6 s window are tokio timers in this process, so the clock jumps from beat to beat while
/// the hub and the client are both idle, and the count of beats is exact.
#[tokio::test]
async fn sse_sends_headers_retry_hint_and_comment_heartbeats_when_idle() {
    let hub = start_hub(LiveConfig {
        sse_heartbeat_secs: 1,
        sse_retry_ms: 1234,
        ..LiveConfig::default()
    })
    .await;
    let mut stream = raw_sse(hub.addr).await;
    tokio::time::pause();
    let (text, ended) = read_for(&mut stream, Duration::from_millis(2600)).await;
    assert!(!ended, "stream ended early: {text}");
    let head = text.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("cache-control: no-cache"), "{head}");
    assert!(head.contains("x-accel-buffering: no"), "{head}");
    assert!(text.contains("retry: 1234\n"), "{text}");
    // Nothing was published: after 2.6 s of silence, two heartbeats at a 1 s interval.
    let beats = text.matches(":\n\n").count();
    assert!((2..=3).contains(&beats), "{beats} heartbeats in {text:?}");
    // Back to real time: a reading is sent live after its commit, which waits on sled's own
    // flush thread; paused time would jump past that wait.
    tokio::time::resume();
    // A reading arrives as an `id:`-carrying `reading` frame.
    hub.feed
        .send(Publish {
            topic: "sensors/hb/temperature".into(),
            payload: "21.5".into(),
            received_at_ms: now_ms(),
        })
        .await
        .unwrap();
    let (text, _) = read_for(&mut stream, Duration::from_secs(5)).await;
    assert!(text.contains("event: reading\nid: 1\ndata: {"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_sse_streams_and_closes_websockets_with_1001() {
    let hub = start_hub(LiveConfig::default()).await;
    let mut sse = Sse::open(&format!("http://{}/v1/stream", hub.addr), None)
        .await
        .unwrap();
    let mut ws = ws_connect(hub.addr).await;
    ws.send(Message::Text(
        r#"{"type":"subscribe","filter":"sensors/#"}"#.into(),
    ))
    .await
    .unwrap();
    assert_eq!(ws_next_json(&mut ws).await.unwrap()["type"], "subscribed");
    hub.stop.cancel();
    let end = timeout(Duration::from_secs(5), async {
        while sse.next().await.is_some() {}
    })
    .await;
    assert!(end.is_ok(), "SSE stream did not end at shutdown");
    let code = timeout(Duration::from_secs(5), ws_close_code(&mut ws))
        .await
        .expect("websocket not closed at shutdown");
    assert_eq!(code, Some(1001));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_changes_arrive_as_status_events_on_sse_and_websocket() {
    let hub = start_hub(LiveConfig::default()).await;
    let mut sse = Sse::open(
        &format!("http://{}/v1/stream?filter=sensors/d7/%23", hub.addr),
        None,
    )
    .await
    .unwrap();
    let mut ws = ws_connect(hub.addr).await;
    ws.send(Message::Text(
        r#"{"type":"subscribe","filter":"sensors/+/status"}"#.into(),
    ))
    .await
    .unwrap();
    assert_eq!(ws_next_json(&mut ws).await.unwrap()["type"], "subscribed");
    hub.subscribed(2).await;
    for status in ["online", "offline"] {
        hub.feed
            .send(Publish {
                topic: "sensors/d7/status".into(),
                payload: status.into(),
                received_at_ms: now_ms(),
            })
            .await
            .unwrap();
        let ev = timeout(WAIT, sse.next()).await.unwrap().unwrap();
        assert_eq!(ev.event, "status");
        assert_eq!(ev.id, None, "status events do not move the resume cursor");
        let v: Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(v["deviceId"], "d7");
        assert_eq!(v["status"], status);
        let v = timeout(WAIT, ws_next_json(&mut ws)).await.unwrap().unwrap();
        assert_eq!(v["type"], "status");
        assert_eq!(v["online"], status == "online");
    }
}

/// The entry of `device` in `GET /v1/devices`.
async fn device_entry(addr: SocketAddr, device: &str) -> Value {
    let v: Value = reqwest::get(format!("http://{addr}/v1/devices"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["deviceId"] == device)
        .cloned()
        .unwrap_or(Value::Null)
}

/// The next `status` event of `device` on `sse` (readings skipped), within `within`.
async fn next_status(sse: &mut Sse, device: &str, within: Duration) -> Value {
    timeout(within, async {
        loop {
            let ev = sse.next().await.expect("stream open");
            if ev.event == "status" {
                let v: Value = serde_json::from_str(&ev.data).unwrap();
                if v["deviceId"] == device {
                    return v;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no status event for {device} within {within:?}"))
}

fn reading_of(device: &str, value: u32) -> Publish {
    Publish {
        topic: format!("sensors/{device}/temperature"),
        payload: value.to_string().into(),
        received_at_ms: now_ms(),
    }
}

/// Issue 15: a device that reports readings but never publishes a status topic is `online`
/// while it reports, turns `stale` after its silence threshold (here the configured minimum of
/// 1 s: it reports every 200 ms, 3 x that is less) in `GET /v1/devices` and as a live
/// `status` event, and `online` again (event and list) when it reports again. A device whose status topic says
/// `offline` stays `offline` whatever its readings do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_device_turns_stale_and_online_again_when_it_reports() {
    let hub = start_hub_with(
        LiveConfig::default(),
        BridgeConfig {
            presence_stale_after_min_s: 1,
            ..BridgeConfig::default()
        },
    )
    .await;
    let mut sse = Sse::open(
        &format!("http://{}/v1/stream?filter=sensors/%23", hub.addr),
        None,
    )
    .await
    .unwrap();
    hub.subscribed(1).await;

    // Real time, not paused: presence compares wall-clock timestamps (`lastSeen`, `at`), which
    // tokio's paused clock does not move. The 200 ms between readings is the behaviour under
    // test: a device reporting well within its 1 s threshold.
    for i in 0..5 {
        hub.feed.send(reading_of("quiet", i)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Reporting: online (its first reading made it known; no status event for that).
    let d = device_entry(hub.addr, "quiet").await;
    assert_eq!(d["status"], "online", "{d}");
    assert_eq!(d["statusSource"], "readings", "{d}");
    assert_eq!(d["online"], Value::Null, "never published a status: {d}");
    assert_eq!(d["staleAfterMs"], 1000, "{d}");

    // Silence: a `stale` event once the threshold is crossed, not before.
    let silent_since = std::time::Instant::now();
    let v = next_status(&mut sse, "quiet", Duration::from_secs(10)).await;
    let waited = silent_since.elapsed();
    assert_eq!(v["status"], "stale", "{v}");
    assert_eq!(v["statusSource"], "readings", "{v}");
    assert_eq!(v["online"], false, "{v}");
    assert!(
        waited >= Duration::from_millis(700),
        "stale after {waited:?} of silence, before the 1 s threshold"
    );
    let at = edgewatch_protocol::timefmt::parse_time(v["at"].as_str().unwrap()).unwrap();
    let seen = edgewatch_protocol::timefmt::parse_time(v["lastSeen"].as_str().unwrap()).unwrap();
    assert_eq!(
        at - seen,
        1000,
        "stale exactly at lastSeen + threshold: {v}"
    );
    let d = device_entry(hub.addr, "quiet").await;
    assert_eq!(d["status"], "stale", "{d}");
    assert_eq!(d["statusSource"], "readings", "{d}");
    assert_eq!(d["since"], v["at"], "{d}");

    // It reports again: `online` again, live and in the list.
    hub.feed.send(reading_of("quiet", 9)).await.unwrap();
    let v = next_status(&mut sse, "quiet", Duration::from_secs(10)).await;
    assert_eq!(v["status"], "online", "{v}");
    assert_eq!(v["statusSource"], "readings", "{v}");
    assert_eq!(v["online"], true, "{v}");
    assert_eq!(device_entry(hub.addr, "quiet").await["status"], "online");

    // An explicit `offline` wins over readings, and silence does not turn it `stale`.
    hub.feed.send(reading_of("wired", 1)).await.unwrap();
    hub.feed
        .send(Publish {
            topic: "sensors/wired/status".into(),
            payload: "offline".into(),
            received_at_ms: now_ms(),
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = next_status(&mut sse, "wired", Duration::from_secs(10)).await;
        if v["status"] == "offline" {
            assert_eq!(v["statusSource"], "status", "{v}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no offline event");
    }
    hub.feed.send(reading_of("wired", 2)).await.unwrap();
    // Silence past the 1 s threshold is the behaviour under test: nothing turns it `stale`.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let d = device_entry(hub.addr, "wired").await;
    assert_eq!(d["status"], "offline", "{d}");
    assert_eq!(d["statusSource"], "status", "{d}");
    assert_eq!(d["online"], false, "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_route_answers_websocket_sse_or_long_poll_as_the_client_asks() {
    let hub = start_hub(LiveConfig::default()).await;
    publish(hub.feed.clone(), 20, 0).await; // d0..d9, values 0..19
    hub.stored(20).await;
    let url = format!("http://{}/v1/sensors/d3/watch", hub.addr);

    // Plain GET: a long poll; `since=0` replays what is stored for d3.
    let v: Value = reqwest::get(format!("{url}?since=0&timeout=1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let values: Vec<f64> = v["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, vec![3.0, 13.0]);

    // Accept: text/event-stream: SSE, resuming with Last-Event-ID.
    let mut sse = Sse::open(&url, Some(0)).await.unwrap();
    let ev = timeout(WAIT, sse.next()).await.unwrap().unwrap();
    assert_eq!(ev.event, "reading");
    assert_eq!(
        serde_json::from_str::<Value>(&ev.data).unwrap()["deviceId"],
        "d3"
    );

    // WebSocket upgrade: subscribed to sensors/d3/# from the start.
    let mut req = format!("ws://{}/v1/sensors/d3/watch?since=0", hub.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "edgewatch.v1".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let first = timeout(WAIT, ws_next_json(&mut ws)).await.unwrap().unwrap();
    assert_eq!(first["type"], "subscribed");
    assert_eq!(first["filter"], "sensors/d3/#");
    let reading = timeout(WAIT, ws_next_json(&mut ws)).await.unwrap().unwrap();
    assert_eq!(reading["deviceId"], "d3");

    // An invalid device id is a 400 with the usual error body.
    let res = reqwest::get(format!("http://{}/v1/sensors/d%2B3/watch", hub.addr))
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

/// Writes `pieces` to a new connection with `pause` between them.
async fn send_in_pieces(
    addr: SocketAddr,
    pieces: &[&[u8]],
    pause: Duration,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            // Slowloris pacing: the pause between pieces is the behaviour under test.
            tokio::time::sleep(pause).await;
        }
        stream.write_all(piece).await.unwrap();
    }
    stream
}

/// Reads one response with a `content-length` body (or until the connection closes);
/// returns its head (lower case) and body.
async fn read_response(stream: &mut tokio::net::TcpStream) -> (String, String) {
    read_next_response(stream, &mut Vec::new()).await
}

/// [`read_response`] for one of several responses on a connection: `got` keeps what was
/// read past this one.
async fn read_next_response(
    stream: &mut tokio::net::TcpStream,
    got: &mut Vec<u8>,
) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16384];
    timeout(WAIT, async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map(|v| v.trim().parse::<usize>().unwrap());
                if let Some(len) = len {
                    if got.len() >= end + 4 + len {
                        let body = String::from_utf8_lossy(&got[end + 4..end + 4 + len]);
                        let body = body.into_owned();
                        got.drain(..end + 4 + len);
                        return (head, body);
                    }
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let text = String::from_utf8_lossy(got).into_owned();
                    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
                    return (head.to_ascii_lowercase(), body.to_owned());
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("no response in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_request_head_in_small_pieces_streams_and_ends_at_shutdown() {
    let hub = start_hub(LiveConfig::default()).await;
    let addr = hub.addr;
    let head = format!(
        "GET /v1/sensors/d3/watch HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    let pieces: Vec<&[u8]> = head.as_bytes().chunks(9).collect();
    let mut stream = send_in_pieces(addr, &pieces, Duration::from_millis(20)).await;
    let (text, ended) = read_for(&mut stream, Duration::from_millis(500)).await;
    assert!(!ended, "stream ended early: {text}");
    let lower = text.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200 ok\r\n"), "{text}");
    for h in [
        "content-type: text/event-stream\r\n",
        "transfer-encoding: chunked\r\n",
        "connection: close\r\n",
        "date: ",
    ] {
        assert!(lower.contains(h), "{h} missing: {text}");
    }
    assert!(text.contains("retry: 2000\n"), "{text}");
    // Through the watch route: only d3's readings.
    for device in ["d1", "d3"] {
        hub.feed
            .send(Publish {
                topic: format!("sensors/{device}/temperature"),
                payload: "1.5".into(),
                received_at_ms: now_ms(),
            })
            .await
            .unwrap();
    }
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seen.contains("event: reading") && tokio::time::Instant::now() < deadline {
        let (text, ended) = read_for(&mut stream, Duration::from_millis(200)).await;
        assert!(!ended, "stream ended early: {seen}{text}");
        seen.push_str(&text);
    }
    assert!(seen.contains("\"deviceId\":\"d3\""), "{seen}");
    assert!(!seen.contains("\"deviceId\":\"d1\""), "{seen}");
    // Shutdown ends the body with the last chunk, then the server closes the connection.
    hub.stop.cancel();
    let (text, ended) = read_for(&mut stream, Duration::from_secs(5)).await;
    assert!(ended, "stream not ended at shutdown: {text}");
    assert!(
        text.ends_with("0\r\n\r\n") || seen.ends_with("0\r\n\r\n"),
        "{text}"
    );
    let (rest, closed) = read_for(&mut stream, Duration::from_secs(5)).await;
    assert!(closed && rest.is_empty(), "connection left open: {rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_requests_keep_alive_and_pipeline_after_the_first_head_is_replayed() {
    use tokio::io::AsyncWriteExt;
    let hub = start_hub(LiveConfig::default()).await;
    let addr = hub.addr;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    // The first head in two pieces; the same connection then serves a second request.
    let first = get("/healthz");
    let (a, b) = first.as_bytes().split_at(7);
    let mut stream = send_in_pieces(addr, &[a, b], Duration::from_millis(50)).await;
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    assert!(body.contains("ok"), "{body}");
    stream
        .write_all(get("/v1/poll?timeout=0").as_bytes())
        .await
        .unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(body.contains("\"readings\""), "{body}");
    // Two requests in one write, the first for a stream: both answered in order, by hyper.
    let two = format!(
        "GET /v1/stream?bogus=1 HTTP/1.1\r\nHost: {addr}\r\n\r\n{}",
        get("/healthz")
    );
    let mut stream = send_in_pieces(addr, &[two.as_bytes()], Duration::ZERO).await;
    let mut got = Vec::new();
    let (head, body) = read_next_response(&mut stream, &mut got).await;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    assert!(body.contains("unknown_parameter"), "{body}");
    let (head, _) = read_next_response(&mut stream, &mut got).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // An error on the direct path: a JSON body with content-length, then close.
    let mut stream = send_in_pieces(
        addr,
        &[get("/v1/stream?filter=other/%23").as_bytes()],
        Duration::ZERO,
    )
    .await;
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(body.contains("\"forbidden\""), "{body}");
    let (rest, closed) = read_for(&mut stream, Duration::from_secs(5)).await;
    assert!(closed && rest.is_empty(), "{rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_large_and_cut_off_heads_are_handled_and_the_hub_carries_on() {
    let hub = start_hub(LiveConfig::default()).await;
    let addr = hub.addr;
    // Not HTTP: hyper's 400.
    let mut stream = send_in_pieces(addr, &[b"HELLO THERE\r\n\r\n"], Duration::ZERO).await;
    let (head, _) = read_response(&mut stream).await;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    // A header name with a space: 400.
    let bad = format!("GET /v1/stream HTTP/1.1\r\nHost: {addr}\r\nBad Name: x\r\n\r\n");
    let mut stream = send_in_pieces(addr, &[bad.as_bytes()], Duration::ZERO).await;
    let (head, _) = read_response(&mut stream).await;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    // A head longer than the sniffing buffer: still an event stream (served by hyper).
    let big = format!(
        "GET /v1/stream HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nX-Padding: {}\r\n\r\n",
        "p".repeat(12_000)
    );
    let mut stream = send_in_pieces(addr, &[big.as_bytes()], Duration::ZERO).await;
    let (text, ended) = read_for(&mut stream, Duration::from_millis(500)).await;
    assert!(!ended, "{text}");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("retry: "), "{text}");
    drop(stream);
    // HTTP/1.0 goes to hyper too.
    let old = "GET /v1/stream HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n";
    let mut stream = send_in_pieces(addr, &[old.as_bytes()], Duration::ZERO).await;
    let (text, _) = read_for(&mut stream, Duration::from_millis(500)).await;
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    drop(stream);
    // A head cut off by the client, and a connection that sends nothing.
    drop(send_in_pieces(addr, &[b"GET /v1/stream HTTP/1.1\r\nAcc"], Duration::ZERO).await);
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let res = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_went_away_frees_its_slot() {
    // One live connection allowed: the next stream gets it only once the server has seen the
    // first client leave (while the stream is idle: no heartbeat due for 15 s).
    let hub = start_hub(LiveConfig {
        max_connections: 1,
        ..LiveConfig::default()
    })
    .await;
    let mut first = raw_sse(hub.addr).await;
    let (text, _) = read_for(&mut first, Duration::from_millis(300)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let mut second = raw_sse(hub.addr).await;
    let (text, _) = read_for(&mut second, Duration::from_millis(300)).await;
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut next = raw_sse(hub.addr).await;
        let (text, _) = read_for(&mut next, Duration::from_millis(300)).await;
        if text.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot not freed: {text}"
        );
    }
}

/// A filter of thousands of empty levels (the input that once overflowed a worker's stack when
/// its subscription was dropped, killing the process) is refused on every entry point with a
/// 400 or a WebSocket error, bounds at 32 levels, and the hub carries on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_filters_are_refused_everywhere_and_the_hub_carries_on() {
    let hub = start_hub(LiveConfig::default()).await;
    let deep = format!("sensors{}", "/".repeat(7000));
    for route in [
        "/v1/poll?timeout=0&filter=",
        "/v1/stream?filter=",
        "/v1/watch?timeout=0&filter=",
        "/v1/readings?filter=",
        "/v1/rollups?filter=",
    ] {
        let (status, body) = http_get(hub.addr, &format!("{route}{deep}")).await;
        assert_eq!(status, 400, "{route}: {body}");
        assert!(
            body.contains("7001 levels, the maximum is 32"),
            "{route}: {body}"
        );
    }
    // 32 levels are fine, 33 are not.
    let levels = |n: usize| format!("sensors{}", "/%2B".repeat(n - 1));
    let (status, body) = http_get(
        hub.addr,
        &format!("/v1/poll?timeout=0&filter={}", levels(32)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(
        hub.addr,
        &format!("/v1/poll?timeout=0&filter={}", levels(33)),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // WebSocket: an error message for the deep filter; the connection stays usable.
    let mut ws = ws_connect(hub.addr).await;
    let sub = serde_json::json!({"type": "subscribe", "filter": deep});
    ws.send(Message::Text(sub.to_string().into()))
        .await
        .unwrap();
    let answer = ws_answer(&mut ws).await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["code"], "bad_filter", "{answer}");
    let sub = serde_json::json!({"type": "subscribe", "filter": "sensors/#"});
    ws.send(Message::Text(sub.to_string().into()))
        .await
        .unwrap();
    let answer = ws_answer(&mut ws).await;
    assert_eq!(answer["type"], "subscribed", "{answer}");

    let (status, _) = http_get(hub.addr, "/v1/poll?timeout=0&filter=sensors/%23").await;
    assert_eq!(status, 200);
}
