//! The receivers the harness measures deliveries with: MQTT subscribers, SSE, WebSocket
//! and the watch routes. Each counts deliveries and keeps publish-to-receive latencies.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;

use crate::load::{find, Probe};

/// A receiver task; aborted when dropped.
#[derive(Debug)]
pub(crate) struct Receiver {
    pub(crate) probe: Arc<Probe>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An MQTT subscriber on `sensors/#`.
pub(crate) async fn mqtt_subscriber(broker: SocketAddr, qos: QoS, tag: &str) -> Result<Receiver> {
    mqtt_watch(broker, qos, tag, "sensors/#").await
}

/// An MQTT subscriber on `filter`.
pub(crate) async fn mqtt_watch(
    broker: SocketAddr,
    qos: QoS,
    tag: &str,
    filter: &str,
) -> Result<Receiver> {
    let probe = Arc::new(Probe::default());
    let mut opts = MqttOptions::new(
        format!("bench-sub-{tag}"),
        broker.ip().to_string(),
        broker.port(),
    );
    opts.set_keep_alive(Duration::from_secs(60))
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 1 << 16);
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    client.subscribe(filter, qos).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let p = probe.clone();
    let task = tokio::spawn(async move {
        let _client = client;
        let mut tx = Some(tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(publish))) => p.record(&publish.payload),
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    p.connected.store(1, Ordering::Relaxed);
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .context("MQTT subscriber not subscribed within 10 s")??;
    Ok(Receiver { probe, task })
}

/// An SSE client on `/v1/stream?filter=sensors/%23`. Returns once the response headers arrived.
pub(crate) async fn sse_client(http: &reqwest::Client, base: &str) -> Result<Receiver> {
    let probe = Arc::new(Probe::default());
    let resp = http
        .get(format!("{base}/v1/stream?filter=sensors/%23"))
        .header("accept", "text/event-stream")
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("SSE: HTTP {}", resp.status());
    }
    probe.connected.store(1, Ordering::Relaxed);
    let p = probe.clone();
    let task = tokio::spawn(async move {
        let mut stream = resp.bytes_stream();
        let mut line: Vec<u8> = Vec::with_capacity(512);
        while let Some(Ok(chunk)) = stream.next().await {
            let mut rest: &[u8] = &chunk;
            while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&rest[..nl]);
                if line.starts_with(b"data: ") && find(&line, b"\"type\":\"reading\"").is_some() {
                    p.record(&line);
                }
                line.clear();
                rest = &rest[nl + 1..];
            }
            line.extend_from_slice(rest);
        }
    });
    Ok(Receiver { probe, task })
}

/// A WebSocket client on `/v1/ws` subscribed to `sensors/#`. Returns once `subscribed` arrived.
pub(crate) async fn ws_client(http_addr: SocketAddr) -> Result<Receiver> {
    ws_watch(http_addr, "sensors/#").await
}

/// A WebSocket client on `/v1/ws` subscribed to `filter`, with small buffers (tungstenite's
/// default read buffer is 128 KiB per connection, too much for thousands in one process).
/// Returns once `subscribed` arrived.
pub(crate) async fn ws_watch(http_addr: SocketAddr, filter: &str) -> Result<Receiver> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    use tokio_tungstenite::tungstenite::Message;
    let probe = Arc::new(Probe::default());
    let mut request = format!("ws://{http_addr}/v1/ws").into_client_request()?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "edgewatch.v1".parse()?);
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), true).await?;
    let subscribe = serde_json::json!({"type": "subscribe", "filter": filter}).to_string();
    ws.send(Message::text(subscribe)).await?;
    let subscribed = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(msg) = ws.next().await {
            if let Message::Text(t) = msg? {
                if t.as_str().contains("\"subscribed\"") {
                    return Ok(());
                }
            }
        }
        bail!("WebSocket closed before `subscribed`")
    })
    .await;
    subscribed.context("no `subscribed` within 30 s")??;
    probe.connected.store(1, Ordering::Relaxed);
    let p = probe.clone();
    let task = tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Text(t) => {
                    let b = t.as_bytes();
                    if find(b, b"\"type\":\"reading\"").is_some() {
                        p.record(b);
                    }
                }
                Message::Ping(data) => {
                    let _ = ws.send(Message::Pong(data)).await;
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    });
    Ok(Receiver { probe, task })
}

/// Splits a chunked HTTP/1.1 body into lines (without `\n` or a trailing `\r`).
#[derive(Debug, Default)]
struct ChunkedLines {
    /// Bytes left in the current chunk; `None` while reading a chunk-size line.
    remaining: Option<usize>,
    /// Bytes of `\r\n` still to skip after a chunk's data.
    skip: usize,
    size_line: Vec<u8>,
    line: Vec<u8>,
}

impl ChunkedLines {
    /// Feeds body bytes; calls `on_line` for every complete line of the decoded data.
    fn feed(&mut self, mut data: &[u8], on_line: &mut impl FnMut(&[u8])) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            match self.remaining {
                None => {
                    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                        self.size_line.extend_from_slice(data);
                        return;
                    };
                    self.size_line.extend_from_slice(&data[..nl]);
                    data = &data[nl + 1..];
                    let hex: Vec<u8> = self
                        .size_line
                        .iter()
                        .copied()
                        .take_while(u8::is_ascii_hexdigit)
                        .collect();
                    self.size_line.clear();
                    let size = std::str::from_utf8(&hex)
                        .ok()
                        .and_then(|h| usize::from_str_radix(h, 16).ok())
                        .unwrap_or(0);
                    self.remaining = Some(size);
                }
                Some(0) => {
                    // End of a chunk: its CRLF follows.
                    self.remaining = None;
                    self.skip = 2;
                }
                Some(left) => {
                    let n = left.min(data.len());
                    self.lines(&data[..n], on_line);
                    self.remaining = Some(left - n);
                    data = &data[n..];
                }
            }
        }
    }

    fn lines(&mut self, mut data: &[u8], on_line: &mut impl FnMut(&[u8])) {
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&data[..nl]);
            let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
            on_line(line);
            self.line.clear();
            data = &data[nl + 1..];
        }
        self.line.extend_from_slice(data);
    }
}

/// Percent-encodes the characters of a topic filter that are special in a query string.
pub(crate) fn encode_filter(filter: &str) -> String {
    filter.replace('#', "%23").replace('+', "%2B")
}

/// A lean SSE client on `/v1/stream?filter=..` over a plain TCP connection (one HTTP/1.1
/// request, chunked body decoded here): cheap enough to run thousands next to the hub.
/// Returns once the response head arrived.
pub(crate) async fn sse_watch(http_addr: SocketAddr, filter: &str) -> Result<Receiver> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = Arc::new(Probe::default());
    let mut tcp = tokio::net::TcpStream::connect(http_addr).await?;
    tcp.set_nodelay(true)?;
    let request = format!(
        "GET /v1/stream?filter={} HTTP/1.1\r\nHost: {http_addr}\r\nAccept: text/event-stream\r\n\r\n",
        encode_filter(filter)
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(512);
    let mut buf = vec![0u8; 2048];
    let body_start = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n = tcp.read(&mut buf).await?;
            if n == 0 {
                bail!("SSE: connection closed before the response head");
            }
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = find(&head, b"\r\n\r\n") {
                return Ok(end + 4);
            }
            if head.len() > 16 * 1024 {
                bail!("SSE: response head over 16 KiB");
            }
        }
    })
    .await
    .context("SSE: no response head within 30 s")??;
    if !head.starts_with(b"HTTP/1.1 200") {
        let status = String::from_utf8_lossy(&head[..head.len().min(40)]).into_owned();
        bail!("SSE: {status}");
    }
    let chunked = find(&head.to_ascii_lowercase(), b"transfer-encoding: chunked").is_some();
    probe.connected.store(1, Ordering::Relaxed);
    let p = probe.clone();
    let task = tokio::spawn(async move {
        let mut on_line = |line: &[u8]| {
            if line.starts_with(b"data: ") && find(line, b"\"type\":\"reading\"").is_some() {
                p.record(line);
            }
        };
        let mut decoder = ChunkedLines::default();
        let mut feed = |data: &[u8], decoder: &mut ChunkedLines| {
            if chunked {
                decoder.feed(data, &mut on_line);
            } else {
                decoder.lines(data, &mut on_line);
            }
        };
        feed(&head[body_start..], &mut decoder);
        drop(head);
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => feed(&buf[..n], &mut decoder),
            }
        }
    });
    Ok(Receiver { probe, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_lines_survive_any_split() {
        let body = b"1c\r\nretry: 2000\r\n: edgewatch\r\n\r\n\r\n2f\r\nevent: reading\ndata: {\"type\":\"reading\"}\nid: 7\n\n\r\n0\r\n\r\n";
        let mut want = Vec::new();
        let mut whole = ChunkedLines::default();
        whole.feed(body, &mut |l: &[u8]| want.push(l.to_vec()));
        assert_eq!(
            want,
            [
                &b"retry: 2000"[..],
                b": edgewatch",
                b"",
                b"event: reading",
                b"data: {\"type\":\"reading\"}",
                b"id: 7",
                b""
            ]
        );
        for cut in 0..body.len() {
            let mut got = Vec::new();
            let mut d = ChunkedLines::default();
            d.feed(&body[..cut], &mut |l: &[u8]| got.push(l.to_vec()));
            d.feed(&body[cut..], &mut |l: &[u8]| got.push(l.to_vec()));
            assert_eq!(got, want, "split at {cut}");
        }
    }
}
