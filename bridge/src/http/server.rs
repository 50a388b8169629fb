//! The HTTP/1 server behind [`crate::http::serve`] (and, over TLS, `tls::serve`): accept
//! loop, TLS handshakes, orderly stop, and a lean path for event streams.
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
//!   checks, errors and metrics). Its response is written straight to the connection with
//!   `connection: close` (`direct.rs`): the head, then the body as chunks (or with
//!   `content-length` when its size is known, e.g. a JSON error). The head buffer is freed
//!   before the body starts, so the connection then owns the socket and the response body,
//!   nothing else.
//! * anything else goes to hyper, with the bytes read so far replayed in front of the
//!   connection ([`Replay`]); keep-alive, pipelining, upgrades (WebSocket) and hyper's own
//!   answers to bad requests are as before.
//!
//! With TLS, each connection's task does its own handshake (never the accept loop, so a
//! client that stalls its handshake holds up no other), and the handshake and the first
//! request head share one deadline: `bridge.http_header_timeout_secs` from when the
//! connection's task first runs (not from the accept: a burst of accepts on a busy runtime
//! must not spend the time of connections whose tasks have not run yet). Both
//! paths above then run over the TLS stream. The caps and the per-client limits apply to the
//! TCP peer, before the handshake.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, Version};
use axum::Router;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service as _;

use super::direct::write_response;
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

/// Serves `router` on `listener` (over TLS with `tls`) until `shutdown` completes, then stops
/// accepting, lets hyper finish its connections' requests in flight (idle keep-alive
/// connections close), and waits for every connection to end. Event streams end when their
/// bodies do (the live routes end them at shutdown). A connection over `guard`'s caps gets
/// [`REFUSED`] (over TLS: nothing, since a TLS client cannot read plain text) and is closed
/// at once.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    guard: Arc<HttpGuard>,
    tls: Option<TlsAcceptor>,
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
            if tls.is_none() {
                let _ = tcp.try_write(REFUSED);
            }
            drop(tcp);
            continue;
        };
        // Live streams write small frames: without TCP_NODELAY each would wait for the
        // client's delayed ACK (up to 40 ms on Linux).
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY");
        }
        let (router, closing) = (router.clone(), closing.clone());
        match &tls {
            None => connections.spawn(serve_connection(tcp, peer, permit, None, router, closing)),
            Some(tls) => {
                let conn = Conn { tcp, peer, permit };
                connections.spawn(serve_tls(conn, tls.clone(), router, closing))
            }
        };
    }
    drop(listener);
    closing.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// An error from `accept`: a connection that failed before it was accepted is skipped;
/// anything else (out of file descriptors) is logged and retried after a second.
pub(super) async fn accept_failed(err: io::Error) {
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

/// An accepted connection before its TLS handshake: the socket, the peer's address and its
/// slot under the caps (held as long as the socket, also after a WebSocket upgrade).
#[derive(Debug)]
struct Conn {
    tcp: TcpStream,
    peer: SocketAddr,
    permit: Permit,
}

/// The TLS handshake, in the connection's own task and by `deadline`; then the connection
/// as any other, over the TLS stream. A task of its own, so that a plain connection's task
/// is no bigger than a plain connection needs (a TLS session is kilobytes).
async fn serve_tls(conn: Conn, tls: TlsAcceptor, router: Router, closing: CancellationToken) {
    let Conn { tcp, peer, permit } = conn;
    // The TLS handshake and the first request head share one deadline.
    let deadline = Instant::now() + permit.guard().header_timeout;
    let mut accept = pin!(tls.accept(tcp));
    let handshake = tokio::select! {
        () = closing.cancelled() => return,
        // Counted while the socket is still open: a client that sees the close sees the count.
        () = tokio::time::sleep_until(deadline) => return head_timed_out(&permit, peer),
        done = &mut accept => done,
    };
    match handshake {
        Ok(stream) => {
            serve_connection(stream, peer, permit, Some(deadline), router, closing).await;
        }
        Err(err) => tracing::debug!(%peer, %err, "TLS handshake failed: connection closed"),
    }
}

/// Counts a connection closed for want of a request head (or a TLS handshake) in time.
fn head_timed_out(permit: &Permit, peer: SocketAddr) {
    // Counted, not warned about: browsers open spare connections that stay idle.
    let timeouts = &permit.guard().counts.head_timeouts;
    timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::debug!(%peer, "no request head in time: connection closed");
}

/// A connection (a socket, or a TLS stream after its handshake). Everything but the
/// event-stream phase is boxed, so the task of an open event stream is no bigger than that
/// phase needs. A first request head that does not arrive by `deadline` (over TLS: the
/// handshake's; else `bridge.http_header_timeout_secs` after this task first runs) closes the
/// connection.
async fn serve_connection<S>(
    mut io: S,
    peer: SocketAddr,
    permit: Permit,
    deadline: Option<Instant>,
    mut router: Router,
    closing: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let deadline = deadline.unwrap_or_else(|| Instant::now() + permit.guard().header_timeout);
    let first = tokio::select! {
        () = closing.cancelled() => return,
        first = Box::pin(read_head(&mut io, deadline)) => first,
    };
    let mut request = match first {
        First::Gone => return,
        First::TimedOut => return head_timed_out(&permit, peer),
        First::Other(prefix) => {
            let io = Replay::new(prefix, io, permit);
            Box::pin(serve_hyper(io, peer, router, closing)).await;
            return;
        }
        First::Stream(request) => request,
    };
    request.extensions_mut().insert(ConnectInfo(peer));
    // The router answers this request like any other (its service is always ready).
    let Ok(response) = Box::pin(router.call(*request)).await;
    drop((router, closing));
    write_response(io, response).await;
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

/// Reads the first request head, at most [`HEAD_MAX`] bytes, by `deadline`.
async fn read_head<S: AsyncRead + Unpin>(io: &mut S, deadline: Instant) -> First {
    let mut buf = vec![0u8; HEAD_FIRST];
    let mut len = 0;
    loop {
        match tokio::time::timeout_at(deadline, io.read(&mut buf[len..])).await {
            Err(_) => return First::TimedOut,
            Ok(Ok(0) | Err(_)) => return First::Gone,
            Ok(Ok(n)) => len += n,
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
async fn serve_hyper<S>(io: Replay<S>, peer: SocketAddr, router: Router, closing: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
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
            let deadline = Some(Instant::now());
            let router = Router::new();
            let task = serve_connection(
                tcp,
                peer,
                permit(),
                deadline,
                router,
                CancellationToken::new(),
            );
            let size = std::mem::size_of_val(&task);
            assert!(size <= 2048, "connection future: {size} bytes");
        });
    }
}
