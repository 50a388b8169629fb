//! The HTTP/1 server behind [`crate::http::serve`]: accept loop, orderly stop, and a lean path
//! for event streams.
//!
//! hyper keeps a read buffer (8 KiB, 16 KiB once a request head has been read) and a write
//! buffer (8 KiB) for as long as an HTTP/1 connection lives. An idle Server-Sent Events stream
//! lives for hours and writes a few hundred bytes a minute, so those buffers were most of its
//! memory: 19.1 KiB per idle SSE stream through hyper, 3.9 KiB with this path (10,000 open,
//! `scripts/bench --scenario footprint`, BENCHMARKS.md). Here every connection's first request head is read into a small temporary buffer
//! first, and then:
//!
//! * a `GET` over HTTP/1.1 for an event stream (`Accept: text/event-stream`, or `/v1/stream`),
//!   with no request body and no upgrade, is answered by the same router (same routes, access
//!   checks, errors and metrics). Its response is written straight to the socket with
//!   `connection: close`: the head, then the body as chunks (or with `content-length` when
//!   its size is known, e.g. a JSON error). The head buffer is freed before the body starts,
//!   so the connection then owns the socket and the response body, nothing else.
//! * anything else goes to hyper, with the bytes read so far replayed in front of the socket
//!   ([`Replay`]); keep-alive, pipelining, upgrades (WebSocket) and hyper's own answers to
//!   bad requests are as before.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use axum::Router;
use bytes::Bytes;
use http_body::Body as _;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service as _;

use super::guard::{HttpGuard, Permit};
use super::replay::Replay;

/// Largest first request head read before deciding; a longer one goes to hyper as it is.
const HEAD_MAX: usize = 8 * 1024;
/// First size of the head buffer; doubled up to [`HEAD_MAX`] while the head is incomplete.
const HEAD_FIRST: usize = 1024;
/// Headers parsed in the first request head; with more, the request goes to hyper (whose
/// limit is 100).
const HEAD_MAX_HEADERS: usize = 64;
/// What a connection over a cap gets before it is closed (written once, without waiting).
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: 86\r\nconnection: close\r\n\r\n{\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many HTTP connections; retry\"}}";
/// Body frames gathered into one write when the body has several ready.
const BATCH: usize = 16;

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting, lets
/// hyper finish its connections' requests in flight (idle keep-alive connections close), and
/// waits for every connection to end. Event streams end when their bodies do (the live
/// routes end them at shutdown). A connection over `guard`'s caps gets [`REFUSED`] and is
/// closed at once.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    guard: Arc<HttpGuard>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // Turns the handlers into routes once; each connection then holds a reference to the
    // shared route table, not its own copy (about 14 KiB per connection otherwise).
    let router = router.with_state(());
    guard.log_cap();
    let closing = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_failed(err).await;
                    continue;
                }
            },
        };
        let (tcp, peer) = tcp;
        let Some(permit) = guard.admit(peer.ip()) else {
            // Best effort: the socket takes these bytes at once or the client goes without.
            let _ = tcp.try_write(REFUSED);
            drop(tcp);
            continue;
        };
        // Live streams write small frames: without TCP_NODELAY each would wait for the
        // client's delayed ACK (up to 40 ms on Linux).
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY");
        }
        let conn = Conn { tcp, peer, permit };
        connections.spawn(connection(conn, router.clone(), closing.clone()));
    }
    drop(listener);
    closing.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// An error from `accept`: a connection that failed before it was accepted is skipped;
/// anything else (out of file descriptors) is logged and retried after a second.
async fn accept_failed(err: io::Error) {
    if matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(%err, "accepting an HTTP connection failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// An accepted connection: the socket, the peer's address and its slot under the caps
/// (held as long as the socket, also after a WebSocket upgrade).
#[derive(Debug)]
struct Conn {
    tcp: TcpStream,
    peer: SocketAddr,
    permit: Permit,
}

/// One accepted connection. Everything but the event-stream phase is boxed, so the task of
/// an open event stream is no bigger than that phase needs. A first request head that does
/// not arrive within `bridge.http_header_timeout_secs` closes the connection.
async fn connection(conn: Conn, mut router: Router, closing: CancellationToken) {
    let Conn { tcp, peer, permit } = conn;
    let first = tokio::select! {
        () = closing.cancelled() => return,
        first = Box::pin(read_head(&tcp, permit.guard().header_timeout)) => first,
    };
    let mut request = match first {
        First::Gone => return,
        First::TimedOut => {
            // Counted, not warned about: browsers open spare connections that stay idle.
            let timeouts = &permit.guard().counts.head_timeouts;
            timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(%peer, "no request head in time: connection closed");
            return;
        }
        First::Other(prefix) => {
            let io = Replay::new(prefix, tcp, permit);
            Box::pin(serve_hyper(io, peer, router, closing)).await;
            return;
        }
        First::Stream(request) => request,
    };
    request.extensions_mut().insert(ConnectInfo(peer));
    // The router answers this request like any other (its service is always ready).
    let Ok(response) = Box::pin(router.call(*request)).await;
    drop((router, closing));
    write_response(tcp, response).await;
    drop(permit);
}

/// What the first request head of a connection asks for.
enum First {
    /// The peer closed (or failed) before sending a whole head.
    Gone,
    /// The head did not arrive in time.
    TimedOut,
    /// Not for the lean path: these bytes, then the rest of the connection, go to hyper.
    Other(Vec<u8>),
    /// An event-stream request, complete (a `GET` carries no body here).
    Stream(Box<Request<Body>>),
}

/// Reads the first request head, at most [`HEAD_MAX`] bytes within `timeout`.
async fn read_head(tcp: &TcpStream, timeout: Duration) -> First {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; HEAD_FIRST];
    let mut len = 0;
    loop {
        let ready = tokio::select! {
            ready = tcp.readable() => ready,
            () = tokio::time::sleep_until(deadline) => return First::TimedOut,
        };
        if ready.is_err() {
            return First::Gone;
        }
        match tcp.try_read(&mut buf[len..]) {
            Ok(0) => return First::Gone,
            Ok(n) => len += n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return First::Gone,
        }
        match sniff(&buf[..len]) {
            Sniff::Partial if len < buf.len() => {}
            Sniff::Partial if buf.len() < HEAD_MAX => buf.resize((buf.len() * 2).min(HEAD_MAX), 0),
            Sniff::Stream(request) => return First::Stream(request),
            Sniff::Partial | Sniff::Other => {
                buf.truncate(len);
                return First::Other(buf);
            }
        }
    }
}

/// The verdict on the bytes of a first request head read so far.
#[derive(Debug)]
enum Sniff {
    /// Incomplete head: read more.
    Partial,
    /// For hyper: any method but `GET`, not HTTP/1.1, a body, an upgrade, bytes after the
    /// head (pipelining), not an event stream, or anything hyper should judge (bad syntax,
    /// too many headers).
    Other,
    /// An event-stream request, as the router takes it.
    Stream(Box<Request<Body>>),
}

fn sniff(bytes: &[u8]) -> Sniff {
    let mut headers = [httparse::EMPTY_HEADER; HEAD_MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let len = match head.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Sniff::Partial,
        Err(_) => return Sniff::Other,
    };
    let (Some("GET"), Some(1), Some(target)) = (head.method, head.version, head.path) else {
        return Sniff::Other;
    };
    if len != bytes.len() || !target.starts_with('/') {
        return Sniff::Other;
    }
    let mut event_stream = target.split('?').next() == Some("/v1/stream");
    let mut builder = Request::builder()
        .method(Method::GET)
        .uri(target)
        .version(Version::HTTP_11);
    for h in head.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Sniff::Other;
        };
        let Ok(value) = HeaderValue::from_bytes(h.value) else {
            return Sniff::Other;
        };
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::EXPECT
            || (name == header::CONNECTION && contains_ignore_case(h.value, b"upgrade"))
        {
            return Sniff::Other;
        }
        if name == header::ACCEPT && contains_ignore_case(h.value, b"text/event-stream") {
            event_stream = true;
        }
        builder = builder.header(name, value);
    }
    if !event_stream {
        return Sniff::Other;
    }
    match builder.body(Body::empty()) {
        Ok(request) => Sniff::Stream(Box::new(request)),
        Err(_) => Sniff::Other,
    }
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// A connection served by hyper as before: keep-alive, upgrades; at shutdown, requests in
/// flight finish and the connection closes. Every request head (and the wait for it on an
/// idle connection) has `bridge.http_header_timeout_secs`; the read buffer, and so a head,
/// is at most `bridge.http_max_head_bytes` (larger: 431).
async fn serve_hyper(io: Replay, peer: SocketAddr, router: Router, closing: CancellationToken) {
    let guard = io.permit.guard();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(guard.header_timeout)
        .max_buf_size(guard.max_head_bytes);
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        router.clone().call(req)
    });
    let conn = builder
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = closing.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::trace!(%err, "HTTP connection ended with an error");
    }
}

/// How a response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// No body (1xx, 204, 304).
    Empty,
    /// `content-length`: the body's size is known.
    Length(u64),
    /// `transfer-encoding: chunked`: a stream.
    Chunked,
}

/// Writes `response` to `tcp` and closes the connection: the head, then every body frame as
/// it comes (frames ready together go out in one write). Ends early when the peer goes
/// away or a write fails.
async fn write_response(mut tcp: TcpStream, response: Response<Body>) {
    let (parts, mut body) = response.into_parts();
    let framing = if parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else {
        match body.size_hint().exact() {
            Some(n) => Framing::Length(n),
            None => Framing::Chunked,
        }
    };
    let head = encode_head(&parts, framing);
    drop(parts);
    if tcp.write_all(&head).await.is_err() {
        return;
    }
    drop(head);
    if framing != Framing::Empty {
        let mut batch = Batch::default();
        loop {
            let ended = match poll_fn(|cx| next_batch(&mut batch, &mut body, &tcp, cx)).await {
                Next::Frames => false,
                Next::End => true,
                // A failing body is aborted as hyper does it: no last chunk.
                Next::Failed | Next::PeerGone => return,
            };
            if !batch.is_empty() && batch.write(&tcp, framing).await.is_err() {
                return;
            }
            if ended {
                break;
            }
        }
        if framing == Framing::Chunked && tcp.write_all(b"0\r\n\r\n").await.is_err() {
            return;
        }
    }
    let _ = tcp.shutdown().await;
}

/// What the wait for the next write ended with.
enum Next {
    /// Frames in the batch.
    Frames,
    /// The body ended (the batch may hold its last frames).
    End,
    /// The body failed.
    Failed,
    /// The peer closed its side or the connection failed.
    PeerGone,
}

/// Fills `batch` from `body`; while the body has nothing, watches the socket for the peer
/// leaving. The socket's read readiness is polled in place (its waker slot, no waiter list),
/// so an idle stream costs nothing per frame.
fn next_batch(
    batch: &mut Batch,
    body: &mut Body,
    tcp: &TcpStream,
    cx: &mut Context<'_>,
) -> Poll<Next> {
    match batch.fill(body, cx) {
        Poll::Ready(Ok(false)) => return Poll::Ready(Next::Frames),
        Poll::Ready(Ok(true)) => return Poll::Ready(Next::End),
        Poll::Ready(Err(())) => return Poll::Ready(Next::Failed),
        Poll::Pending => {}
    }
    let mut scratch = [0u8; 64];
    loop {
        match tcp.poll_read_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(Next::PeerGone),
            // Bytes the peer sends after its request are read and ignored; WouldBlock
            // clears the readiness, and the next poll registers the waker.
            Poll::Ready(Ok(())) => match tcp.try_read(&mut scratch) {
                Ok(0) => return Poll::Ready(Next::PeerGone),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(Next::PeerGone),
            },
        }
    }
}

/// Status line and headers, with our own framing headers, `date` and `connection: close`.
fn encode_head(parts: &axum::http::response::Parts, framing: Framing) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    let mut line = |name: &[u8], value: &[u8]| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    for (name, value) in &parts.headers {
        if name != header::CONTENT_LENGTH
            && name != header::TRANSFER_ENCODING
            && name != header::CONNECTION
        {
            line(name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if !parts.headers.contains_key(header::DATE) {
        line(
            b"date",
            httpdate::fmt_http_date(SystemTime::now()).as_bytes(),
        );
    }
    match framing {
        Framing::Empty => {}
        Framing::Length(n) => line(b"content-length", n.to_string().as_bytes()),
        Framing::Chunked => line(b"transfer-encoding", b"chunked"),
    }
    line(b"connection", b"close");
    out.extend_from_slice(b"\r\n");
    out
}

/// Body frames ready to be written together.
#[derive(Default)]
struct Batch {
    frames: [Bytes; BATCH],
    len: usize,
    bytes: usize,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes the body's ready frames until it has none ready, it ends (`Ok(true)`) or the
    /// batch is full. Pending only while the batch is empty.
    fn fill(&mut self, body: &mut Body, cx: &mut Context<'_>) -> Poll<Result<bool, ()>> {
        while self.len < BATCH {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are not sent (hyper sends none over HTTP/1 either unless asked).
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            self.bytes += data.len();
                            self.frames[self.len] = data;
                            self.len += 1;
                        }
                    }
                }
                Poll::Ready(Some(Err(_))) => return Poll::Ready(Err(())),
                Poll::Ready(None) => return Poll::Ready(Ok(true)),
                Poll::Pending if self.is_empty() => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        Poll::Ready(Ok(false))
    }

    /// Writes the batch (as one chunk when chunked) and empties it. The socket usually
    /// takes it at once; otherwise this waits until it can take more. Nothing but the count
    /// written lives across that wait.
    async fn write(&mut self, tcp: &TcpStream, framing: Framing) -> io::Result<()> {
        let mut written = 0;
        let result = loop {
            match self.try_write(tcp, framing, &mut written) {
                Ok(true) => break Ok(()),
                Ok(false) => {
                    if let Err(err) = tcp.writable().await {
                        break Err(err);
                    }
                }
                Err(err) => break Err(err),
            }
        };
        for frame in &mut self.frames[..self.len] {
            *frame = Bytes::new();
        }
        self.len = 0;
        self.bytes = 0;
        result
    }

    /// Writes what the socket takes now of the batch's bytes after `written`; true when all
    /// are written.
    fn try_write(
        &self,
        tcp: &TcpStream,
        framing: Framing,
        written: &mut usize,
    ) -> io::Result<bool> {
        let mut size_line = [0u8; 20];
        let mut parts: [&[u8]; BATCH + 2] = [&[]; BATCH + 2];
        if framing == Framing::Chunked {
            let n = chunk_size_line(self.bytes, &mut size_line);
            parts[0] = &size_line[..n];
            parts[self.len + 1] = b"\r\n";
        }
        for (slot, frame) in parts[1..].iter_mut().zip(&self.frames[..self.len]) {
            *slot = frame;
        }
        let parts = &parts[..self.len + 2];
        let total: usize = parts.iter().map(|p| p.len()).sum();
        while *written < total {
            // The parts not yet written, the first one cut where the last write stopped.
            let mut skip = *written;
            let mut slices = [io::IoSlice::new(&[]); BATCH + 2];
            let mut n = 0;
            for part in parts {
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                slices[n] = io::IoSlice::new(&part[skip..]);
                skip = 0;
                n += 1;
            }
            match tcp.try_write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(wrote) => *written += wrote,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(err) => return Err(err),
            }
        }
        Ok(true)
    }
}

/// `{size:X}\r\n` into `out`; returns its length.
fn chunk_size_line(size: usize, out: &mut [u8; 20]) -> usize {
    let digits = (usize::BITS - size.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, digit) in out[..digits].iter_mut().enumerate() {
        *digit = b"0123456789ABCDEF"[(size >> (4 * (digits - 1 - i))) & 0xF];
    }
    out[digits..digits + 2].copy_from_slice(b"\r\n");
    digits + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_request(bytes: &[u8]) -> Request<Body> {
        match sniff(bytes) {
            Sniff::Stream(request) => *request,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn event_stream_heads_are_taken_and_rebuilt_as_sent() {
        let request = stream_request(
            b"GET /v1/watch?filter=sensors/%23 HTTP/1.1\r\nHost: hub:8080\r\nAccept: text/html\r\naccept: TEXT/Event-Stream\r\nLast-Event-ID: 7\r\n\r\n",
        );
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), "/v1/watch");
        assert_eq!(request.uri().query(), Some("filter=sensors/%23"));
        assert_eq!(request.version(), Version::HTTP_11);
        let accept: Vec<_> = request.headers().get_all(header::ACCEPT).iter().collect();
        assert_eq!(accept, ["text/html", "TEXT/Event-Stream"]);
        assert_eq!(request.headers()["last-event-id"], "7");
        // `/v1/stream` is taken without an Accept header.
        stream_request(b"GET /v1/stream?filter=a HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn everything_else_goes_to_hyper_or_waits_for_more() {
        let sse = "Accept: text/event-stream\r\n";
        for head in [
            format!("POST /v1/stream HTTP/1.1\r\n{sse}\r\n"),
            format!("HEAD /v1/stream HTTP/1.1\r\n{sse}\r\n"),
            format!("GET /v1/stream HTTP/1.0\r\n{sse}\r\n"),
            format!("GET /v1/ws HTTP/1.1\r\nUpgrade: websocket\r\n{sse}\r\n"),
            format!("GET /v1/watch HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n{sse}\r\n"),
            "GET /v1/stream HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_owned(),
            "GET /v1/stream HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned(),
            "GET /v1/stream HTTP/1.1\r\nExpect: 100-continue\r\n\r\n".to_owned(),
            format!("GET http://hub/v1/stream HTTP/1.1\r\n{sse}\r\n"),
            "GET /v1/series HTTP/1.1\r\nAccept: application/json\r\n\r\n".to_owned(),
            "GET /v1/stream HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n".to_owned(),
            "GET /v1/stream HTTP/1.1\r\nBad Name: x\r\n\r\n".to_owned(),
            "NOT HTTP AT ALL\r\n\r\n".to_owned(),
            format!(
                "GET /v1/stream HTTP/1.1\r\n{}\r\n",
                "X-A: b\r\n".repeat(HEAD_MAX_HEADERS + 1)
            ),
        ] {
            assert!(matches!(sniff(head.as_bytes()), Sniff::Other), "{head:?}");
        }
        for part in ["GE", "GET /v1/stream HTTP/1.1\r\nAccept: text/ev"] {
            assert!(matches!(sniff(part.as_bytes()), Sniff::Partial), "{part:?}");
        }
    }

    #[test]
    fn chunk_size_lines_are_upper_hex() {
        let mut out = [0u8; 20];
        for (size, line) in [
            (0, "0\r\n"),
            (9, "9\r\n"),
            (255, "FF\r\n"),
            (4096, "1000\r\n"),
            (usize::MAX, "FFFFFFFFFFFFFFFF\r\n"),
        ] {
            let n = chunk_size_line(size, &mut out);
            assert_eq!(std::str::from_utf8(&out[..n]).unwrap(), line);
        }
    }

    #[test]
    fn heads_carry_our_framing_date_and_close() {
        let mut res = Response::new(());
        *res.status_mut() = StatusCode::FORBIDDEN;
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        let (parts, ()) = res.into_parts();
        let head = String::from_utf8(encode_head(&parts, Framing::Length(12))).unwrap();
        assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{head}");
        assert!(
            head.contains("content-type: application/json\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\ndate: "), "{head}");
        assert!(head.contains("content-length: 12\r\n"), "{head}");
        assert!(
            !head.contains("999") && !head.contains("keep-alive"),
            "{head}"
        );
        assert!(head.ends_with("connection: close\r\n\r\n"), "{head}");
        let head = String::from_utf8(encode_head(&parts, Framing::Chunked)).unwrap();
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    }

    fn permit() -> Permit {
        let guard = Arc::new(HttpGuard::new(&crate::config::BridgeConfig::default()));
        guard.admit([127, 0, 0, 1].into()).unwrap()
    }

    #[test]
    fn the_refusal_is_well_formed() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "too_many_connections");
    }

    /// A local socket pair: (server side, client side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (accepted.unwrap().0, client.unwrap())
    }

    async fn read_to_end(mut client: TcpStream) -> String {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut out))
            .await
            .expect("server did not close")
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn streamed_bodies_go_out_as_chunks_and_end_with_the_last_chunk() {
        let (server, client) = pair().await;
        let frames = futures::stream::iter(["data: 1\n\n", "", "data: 22\n\n"])
            .map(|s| Ok::<_, std::convert::Infallible>(Bytes::from_static(s.as_bytes())));
        use futures::StreamExt as _;
        let writer = tokio::spawn(write_response(
            server,
            Response::new(Body::from_stream(frames)),
        ));
        let text = read_to_end(client).await;
        writer.await.unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1;
        // Frames ready together share one chunk; empty frames are skipped.
        assert_eq!(body, "13\r\ndata: 1\n\ndata: 22\n\n\r\n0\r\n\r\n");
    }

    #[tokio::test]
    async fn a_stream_ends_when_its_client_leaves() {
        let (server, client) = pair().await;
        let writer = tokio::spawn(write_response(
            server,
            Response::new(Body::from_stream(futures::stream::pending::<
                Result<Bytes, std::convert::Infallible>,
            >())),
        ));
        drop(client);
        tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("stream of a closed connection still open")
            .unwrap();
    }

    #[test]
    fn the_task_of_an_open_stream_stays_small() {
        // The task of an open event stream holds the socket, the body, the frame batch and
        // the wait for a frame or the peer: about 1.3 KiB in a debug build. The hyper
        // connection and the head buffer are boxed and gone by then; inline they would add
        // kilobytes to every stream.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tcp, _client) = pair().await;
            let peer = tcp.peer_addr().unwrap();
            let conn = Conn {
                tcp,
                peer,
                permit: permit(),
            };
            let task = connection(conn, Router::new(), CancellationToken::new());
            let size = std::mem::size_of_val(&task);
            assert!(size <= 2048, "connection future: {size} bytes");
        });
    }
}
