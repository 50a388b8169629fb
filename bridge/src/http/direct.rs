//! A response written straight to the connection and the connection then closed: the lean
//! path of `server.rs` for event streams (see its module comment for why). Works on any
//! stream, so over TLS too: a plain socket takes each batch in one vectored write; a TLS
//! stream (which has no vectored writes) gets the batch joined into one buffer, so one batch
//! is one TLS record, not one per frame.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use axum::body::Body;
use axum::http::{header, Response, StatusCode};
use bytes::Bytes;
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Body frames gathered into one write when the body has several ready.
const BATCH: usize = 16;

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

/// Writes `response` to `io` and closes the connection: the head, then every body frame as
/// it comes (frames ready together go out in one write). Ends early when the peer goes
/// away or a write fails.
pub(super) async fn write_response<S>(mut io: S, response: Response<Body>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
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
    if io.write_all(&head).await.is_err() || io.flush().await.is_err() {
        return;
    }
    drop(head);
    if framing != Framing::Empty {
        let mut batch = Batch::default();
        loop {
            let ended = match poll_fn(|cx| next_batch(&mut batch, &mut body, &mut io, cx)).await {
                Next::Frames => false,
                Next::End => true,
                // A failing body is aborted as hyper does it: no last chunk.
                Next::Failed | Next::PeerGone => return,
            };
            if !batch.is_empty() && batch.write(&mut io, framing).await.is_err() {
                return;
            }
            if ended {
                break;
            }
        }
        if framing == Framing::Chunked
            && (io.write_all(b"0\r\n\r\n").await.is_err() || io.flush().await.is_err())
        {
            return;
        }
    }
    let _ = io.shutdown().await;
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

/// Fills `batch` from `body`; while the body has nothing, watches the connection for the
/// peer leaving. The read is polled in place (for a socket: its waker slot, no waiter list),
/// so an idle stream costs nothing per frame.
fn next_batch<S: AsyncRead + Unpin>(
    batch: &mut Batch,
    body: &mut Body,
    io: &mut S,
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
        // Bytes the peer sends after its request are read and ignored; a pending read has
        // registered the waker.
        let mut buf = ReadBuf::new(&mut scratch);
        match Pin::new(&mut *io).poll_read(cx, &mut buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(Next::PeerGone),
            Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Next::PeerGone),
            Poll::Ready(Ok(())) => {}
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

    /// Writes the batch (as one chunk when chunked), flushes, and empties the batch. A socket
    /// usually takes it at once; otherwise this waits until it can take more. On a socket
    /// nothing but the count written lives across that wait; a stream without vectored
    /// writes (TLS) gets one buffer with the whole batch.
    async fn write<S>(&mut self, io: &mut S, framing: Framing) -> io::Result<()>
    where
        S: AsyncWrite + Unpin,
    {
        let mut line = [0u8; 20];
        let n = match framing {
            Framing::Chunked => chunk_size_line(self.bytes, &mut line),
            Framing::Empty | Framing::Length(_) => 0,
        };
        let size_line = &line[..n];
        let written = if io.is_write_vectored() {
            let mut written = 0;
            poll_fn(|cx| self.poll_write(Pin::new(&mut *io), cx, size_line, &mut written)).await
        } else {
            let mut joined = Vec::with_capacity(size_line.len() + self.bytes + 2);
            joined.extend_from_slice(size_line);
            for frame in &self.frames[..self.len] {
                joined.extend_from_slice(frame);
            }
            if !size_line.is_empty() {
                joined.extend_from_slice(b"\r\n");
            }
            io.write_all(&joined).await
        };
        for frame in &mut self.frames[..self.len] {
            *frame = Bytes::new();
        }
        self.len = 0;
        self.bytes = 0;
        written?;
        io.flush().await
    }

    /// Writes what `io` takes of the batch's bytes after `written` (the chunk's size line
    /// first and `\r\n` last when `size_line` is not empty); ready when all are written.
    fn poll_write<S: AsyncWrite>(
        &self,
        mut io: Pin<&mut S>,
        cx: &mut Context<'_>,
        size_line: &[u8],
        written: &mut usize,
    ) -> Poll<io::Result<()>> {
        let mut parts: [&[u8]; BATCH + 2] = [&[]; BATCH + 2];
        if !size_line.is_empty() {
            parts[0] = size_line;
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
            match io.as_mut().poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(wrote)) => *written += wrote,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
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
    use axum::http::HeaderValue;
    use std::time::Duration;
    use tokio::net::{TcpListener, TcpStream};

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
    async fn a_stream_without_vectored_writes_gets_each_batch_in_one_write() {
        // An in-memory pipe has no vectored writes, as a TLS stream: the same bytes go out.
        let (server, mut client) = tokio::io::duplex(1024);
        let frames = futures::stream::iter(["data: 1\n\n", "data: 22\n\n"])
            .map(|s| Ok::<_, std::convert::Infallible>(Bytes::from_static(s.as_bytes())));
        use futures::StreamExt as _;
        let writer = tokio::spawn(write_response(
            server,
            Response::new(Body::from_stream(frames)),
        ));
        let mut out = Vec::new();
        use tokio::io::AsyncReadExt;
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut out))
            .await
            .expect("server did not close")
            .unwrap();
        writer.await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1;
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
}
