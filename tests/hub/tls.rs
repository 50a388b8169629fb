//! HTTPS through the real hub (issue #18 point 6): history, an SSE stream and a WebSocket over
//! TLS, the plain-HTTP redirect, a stalled handshake that holds up no other client, and
//! certificate files that are wrong. Real clients: reqwest (rustls) and tokio-tungstenite
//! over tokio-rustls, trusting a self-signed certificate made by the `openssl` command.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{bin, loopback_config, publish_all, start_hub, wait_for, Hub, Sse};

/// Longest any answer, event or close is waited for.
const WAIT: Duration = Duration::from_secs(30);

/// A self-signed server certificate for `localhost` and 127.0.0.1 (an EC key: quick to
/// make) in `dir`: (certificate, key).
fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // A server certificate, not a CA (webpki refuses a CA as the end entity).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(
        status.success(),
        "openssl could not make a test certificate"
    );
    (cert, key)
}

/// The `[bridge]` lines for HTTPS with `cert` and `key`, a redirect listener, and `extra`.
fn tls_settings(cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "http_tls_cert = {:?}\nhttp_tls_key = {:?}\nhttp_redirect_listen = \"127.0.0.1:0\"\n{extra}",
        cert.display().to_string(),
        key.display().to_string()
    )
}

/// A hub over HTTPS (and its redirect) with `extra` `[bridge]` lines; its certificate.
fn start_tls_hub(dir: &Path, extra: &str) -> (Hub, PathBuf) {
    let (cert, key) = make_cert(dir);
    let config = loopback_config(dir, &tls_settings(&cert, &key, extra));
    (start_hub(&config, &[]), cert)
}

/// `https://localhost:PORT` of the hub (by name: the certificate's, and what clients send
/// as SNI).
fn https_base(hub: &Hub) -> String {
    format!("https://localhost:{}", hub.addr("https").port())
}

/// An HTTPS client that trusts only `cert` and finds `localhost` at 127.0.0.1.
fn client(cert: &Path) -> reqwest::Client {
    let pem = std::fs::read(cert).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], 0)))
        .timeout(WAIT)
        .build()
        .unwrap()
}

async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    let res = client.get(url).send().await.unwrap();
    assert_eq!(res.status(), 200, "{url}");
    res.json().await.unwrap()
}

/// Publishes `n` readings of `d1` (values 0..n) and waits until they are stored.
async fn publish_readings(hub: &Hub, client: &reqwest::Client, n: usize) {
    let msgs = (0..n)
        .map(|i| {
            (
                "sensors/d1/temperature".to_owned(),
                i.to_string().into_bytes(),
            )
        })
        .collect();
    publish_all(hub.addr("mqtt"), "tls-test-device", msgs).await;
    let url = format!("{}/v1/readings?filter=sensors/%23", https_base(hub));
    wait_for(WAIT, "readings stored", || async {
        let v = get_json(client, &url).await;
        let stored = v["readings"].as_array().map_or(0, Vec::len);
        if stored == n {
            Ok(())
        } else {
            Err(stored)
        }
    })
    .await;
}

/// A WebSocket over TLS to `path` of the hub, trusting only `cert`; the handshake's
/// response headers too.
async fn wss_connect(
    hub: &Hub,
    cert: &Path,
    path: &str,
) -> (
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::handshake::client::Response,
) {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let pem = std::fs::read(cert).unwrap();
    for c in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(hub.addr("https"))
        .await
        .unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("TLS handshake in time")
        .unwrap();
    let port = hub.addr("https").port();
    let mut req = format!("wss://localhost:{port}{path}")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "edgewatch.v1".parse().unwrap());
    timeout(WAIT, tokio_tungstenite::client_async(req, tls))
        .await
        .expect("WebSocket handshake in time")
        .unwrap()
}

/// The next JSON text message.
async fn ws_json<S>(ws: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = timeout(WAIT, ws.next())
            .await
            .expect("a WebSocket message in time")
            .expect("the WebSocket is open")
            .unwrap();
        if let Message::Text(text) = msg {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_sse_and_websocket_work_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, cert) = start_tls_hub(dir.path(), "");
    assert!(
        hub.listeners.iter().all(|(name, _)| name != "http"),
        "no plain-HTTP server: {:?}",
        hub.listeners
    );
    let client = client(&cert);
    let base = https_base(&hub);
    publish_readings(&hub, &client, 3).await;

    // History.
    let page = get_json(&client, &format!("{base}/v1/readings?filter=sensors/%23")).await;
    let values: Vec<f64> = page["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, [0.0, 1.0, 2.0]);

    // SSE (the lean path, written straight to the TLS stream): the log from seq 0, then live.
    let url = format!("{base}/v1/stream?filter=sensors/%23");
    let mut sse = Sse::open_with(&client, &url, Some(0))
        .await
        .expect("SSE stream opens");
    for want in [0.0, 1.0, 2.0] {
        let v = sse.until(WAIT, |v| v["value"].is_number()).await;
        assert_eq!(v["value"].as_f64(), Some(want), "{v}");
    }

    // WebSocket over TLS: replay, then a live reading.
    let (mut ws, res) = wss_connect(&hub, &cert, "/v1/ws").await;
    assert_eq!(res.status(), 101);
    let sub = json!({"type": "subscribe", "filter": "sensors/#", "since": 0});
    ws.send(Message::text(sub.to_string())).await.unwrap();
    let mut values = Vec::new();
    while values.len() < 4 {
        let v = ws_json(&mut ws).await;
        if v["type"] == "reading" {
            values.push(v["value"].as_f64().unwrap());
            if values.len() == 3 {
                let msgs = vec![("sensors/d1/temperature".to_owned(), b"7".to_vec())];
                publish_all(hub.addr("mqtt"), "tls-test-device", msgs).await;
            }
        }
    }
    assert_eq!(values, [0.0, 1.0, 2.0, 7.0]);
    // The live reading reached the SSE stream too.
    let v = sse.until(WAIT, |v| v["value"].is_number()).await;
    assert_eq!(v["value"].as_f64(), Some(7.0), "{v}");

    // The dashboard, over HTTPS.
    let page = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);

    // Plain HTTP on the HTTPS port gets no HTTP answer: the handshake fails, the socket closes.
    let mut plain = TcpStream::connect(hub.addr("https")).unwrap();
    plain.set_read_timeout(Some(WAIT)).unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redirect_listener_sends_every_request_to_the_https_port() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, cert) = start_tls_hub(dir.path(), "");
    let redirect = hub.addr("http_redirect");
    let https_port = hub.addr("https").port();
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(WAIT)
        .build()
        .unwrap();
    for (method, path) in [
        (
            reqwest::Method::GET,
            "/v1/readings?filter=sensors/%23&limit=5",
        ),
        (reqwest::Method::POST, "/anything/at/all"),
        (reqwest::Method::GET, "/"),
    ] {
        let url = format!("http://localhost:{}{path}", redirect.port());
        let res = plain
            .request(method.clone(), &url)
            .header("host", format!("localhost:{}", redirect.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 308, "{method} {path}");
        assert_eq!(
            res.headers()["location"],
            format!("https://localhost:{https_port}{path}").as_str(),
            "{method} {path}"
        );
    }
    // The host the request names, not the listener's address.
    let res = plain
        .get(format!("http://{redirect}/healthz"))
        .header("host", "hub.example.lan:80")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["location"],
        format!("https://hub.example.lan:{https_port}/healthz").as_str()
    );
    // A client that follows redirects ends on the HTTPS server.
    let url = format!("http://localhost:{}/healthz", redirect.port());
    let res = client(&cert).get(url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.url().scheme(), "https");
}

/// A client that opens a TCP connection to the HTTPS port and never starts its handshake
/// holds up nobody: each connection handshakes in its own task. It is closed once
/// `bridge.http_header_timeout_secs` has passed, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_holds_up_no_other_client_and_is_closed_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, cert) = start_tls_hub(dir.path(), "http_header_timeout_secs = 8\n");
    let opened = Instant::now();
    // One connection that sends nothing, one that sends half a ClientHello.
    let silent = TcpStream::connect(hub.addr("https")).unwrap();
    let mut partial = TcpStream::connect(hub.addr("https")).unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let client = client(&cert);
    let res = timeout(
        WAIT,
        client.get(format!("{}/healthz", https_base(&hub))).send(),
    )
    .await
    .expect("an answer in time")
    .unwrap();
    assert_eq!(res.status(), 200);
    let answered = opened.elapsed();
    // The stalled connections are still open: the answer did not wait for them.
    for stalled in [&silent, &partial] {
        stalled.set_nonblocking(true).unwrap();
        let read = (&mut &*stalled).read(&mut [0u8; 64]);
        assert!(
            read.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "answered after {answered:?}, but a stalled connection was already closed: {read:?}"
        );
        stalled.set_nonblocking(false).unwrap();
    }
    for mut stalled in [silent, partial] {
        stalled.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 64];
        let read = stalled.read(&mut buf);
        assert!(
            matches!(read, Ok(0))
                || read
                    .as_ref()
                    .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
            "a stalled handshake was not closed: {read:?}"
        );
    }
    let closed = opened.elapsed();
    assert!(
        closed >= Duration::from_secs(7),
        "stalled connections closed after {closed:?}, before the 8 s timeout"
    );
    let url = format!("{}/metrics", https_base(&hub));
    let counted = "edgewatch_http_connections_refused_total{reason=\"head_timeout\"} 2\n";
    wait_for(WAIT, "both stalled handshakes counted", || async {
        let text = client.get(&url).send().await.unwrap().text().await.unwrap();
        if text.contains(counted) {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;
}

#[test]
fn certificate_files_that_are_wrong_stop_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a PEM file\n").unwrap();
    let missing = dir.path().join("missing.pem");
    for (cert, key, named) in [
        // No private key in the key file (it holds the certificate).
        (&cert, &cert, "bridge.http_tls_key"),
        (&garbage, &key, "bridge.http_tls_cert"),
        (&cert, &missing, "bridge.http_tls_key"),
    ] {
        let config = loopback_config(dir.path(), &tls_settings(cert, key, ""));
        let out = Command::new(bin())
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(named), "{named} not in {stderr}");
    }
}

/// Every listener has a flag (and a variable): with MQTT 5 and WebSocket off in the file and
/// no TLS section, `--mqtt5-listen`, `--ws-listen` and `--tls-listen` with `--tls-cert` /
/// `--tls-key` start all three.
#[test]
fn every_listener_is_set_by_a_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path());
    let config = dir.path().join("edgewatch.toml");
    let text = format!(
        "[broker.mqtt]\nlisten = \"127.0.0.1:0\"\n[broker.mqtt5]\nenabled = false\n\
         [broker.websocket]\nenabled = false\n\
         [bridge]\ndata_dir = {:?}\nhttp_listen = \"127.0.0.1:0\"\n",
        dir.path().join("data").display().to_string()
    );
    std::fs::write(&config, text).unwrap();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let hub = crate::support::start_hub(
        &config,
        &[
            "--mqtt5-listen",
            "127.0.0.1:0",
            "--ws-listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
    );
    for listener in ["mqtt", "mqtt5", "websocket", "tls"] {
        assert!(hub.addr(listener).ip().is_loopback(), "{listener}");
    }
    hub.terminate();
}
