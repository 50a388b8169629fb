//! HTTP and SSE clients, and what the hub's HTTP API counts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` over a raw socket (`Connection: close`); returns (status, body). Bounded by 20 s.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect http");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("http answered in time")
}

/// GET `url` as JSON.
pub async fn get_json(url: &str) -> serde_json::Value {
    let text = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: {e}: {text}"))
}

/// Total readings stored, from `GET /v1/series` of the hub at `http` (`http://ADDR`).
pub async fn stored(http: &str) -> u64 {
    let v = get_json(&format!("{http}/v1/series")).await;
    v["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|s| s["count"].as_u64().expect("count"))
        .sum()
}

/// The `value`s of `GET /v1/readings?filter=FILTER`, in seq order.
pub async fn stored_values(http: &str, filter: &str) -> Vec<f64> {
    let v = get_json(&format!("{http}/v1/readings?filter={filter}&limit=10000")).await;
    v["readings"]
        .as_array()
        .expect("readings")
        .iter()
        .map(|r| r["value"].as_f64().expect("value"))
        .collect()
}

/// What ingest has finished with, from [`metric_sums`]: stored, duplicate, presence,
/// rejected, ignored and failed (docs/metrics.md "Accounting"); at a quiet moment it equals
/// the publishes received plus `edgewatch_readings_split_total`.
pub fn accounted(m: &HashMap<String, f64>) -> f64 {
    [
        "edgewatch_readings_stored_total",
        "edgewatch_readings_duplicate_total",
        "edgewatch_presence_recorded_total",
        "edgewatch_readings_rejected_total",
        "edgewatch_publishes_ignored_total",
        "edgewatch_writer_items_failed_total",
    ]
    .iter()
    .map(|name| m.get(*name).copied().unwrap_or(0.0))
    .sum()
}

/// `GET /metrics`: every sample of each metric name summed (labels ignored). A name the hub
/// does not export is absent.
pub async fn metric_sums(http: &str) -> HashMap<String, f64> {
    let text = reqwest::get(format!("{http}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("GET /metrics body");
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name_labels.split('{').next().unwrap_or_default().to_owned();
        if let Ok(v) = value.parse::<f64>() {
            *out.entry(name).or_insert(0.0) += v;
        }
    }
    out
}

/// A minimal Server-Sent Events reader over a real HTTP connection.
pub struct Sse {
    body: Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl std::fmt::Debug for Sse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sse")
            .field("buf", &self.buf)
            .finish_non_exhaustive()
    }
}

/// One event: its `event:` name (empty if none), `id:` and `data:`.
#[derive(Debug, Default, Clone)]
pub struct SseEvent {
    /// The `event:` field (empty when the frame has none).
    pub event: String,
    /// The `id:` field.
    pub id: Option<String>,
    /// The `data:` lines, joined.
    pub data: String,
}

impl Sse {
    /// Opens `url` with `Accept: text/event-stream` (and `Last-Event-ID` when given); the
    /// response itself when its status is not a success.
    pub async fn open(url: &str, last_event_id: Option<u64>) -> Result<Sse, reqwest::Response> {
        // One client for the process: building one loads the TLS roots (tens of milliseconds
        // of CPU with rustls), which a test opening a thousand streams at once cannot afford
        // on its runtime's threads. Concurrent streams still get a connection each.
        static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
        Sse::open_with(CLIENT.get_or_init(reqwest::Client::new), url, last_event_id).await
    }

    /// [`Sse::open`] with `client` (e.g. one that trusts a test certificate).
    pub async fn open_with(
        client: &reqwest::Client,
        url: &str,
        last_event_id: Option<u64>,
    ) -> Result<Sse, reqwest::Response> {
        let mut req = client.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let res = req.send().await.expect("send the SSE request");
        if !res.status().is_success() {
            return Err(res);
        }
        Ok(Sse {
            body: Box::pin(res.bytes_stream()),
            buf: String::new(),
        })
    }

    /// The next event (comments and retry-only frames skipped); `None` at the end of the
    /// stream.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent::default();
                let mut has_data = false;
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        has_data = true;
                    }
                }
                if has_data {
                    return Some(ev);
                }
                continue;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }

    /// Reads events until `pred` accepts one's JSON data, and returns that (bounded by
    /// `within`; panics after it or at the end of the stream).
    pub async fn until(
        &mut self,
        within: Duration,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.next())
                .await
                .expect("no matching SSE event in time")
                .expect("stream ended");
            let v: serde_json::Value = serde_json::from_str(&ev.data).expect("JSON data");
            if pred(&v) {
                return v;
            }
        }
    }
}
