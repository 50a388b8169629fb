//! [`Replay`]: a connection (a socket, or a TLS stream over one) with the bytes already read
//! from it in front, for hyper after the server has read the first request head itself
//! (`server.rs`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::guard::Permit;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The connection with the bytes already read from it in front. Once they have been read it
/// holds no buffer. It holds the connection's slot under the caps until it is dropped.
#[derive(Debug)]
pub(super) struct Replay<S> {
    prefix: Vec<u8>,
    at: usize,
    io: S,
    pub(super) permit: Permit,
}

impl<S> Replay<S> {
    pub(super) fn new(prefix: Vec<u8>, io: S, permit: Permit) -> Self {
        Self {
            prefix,
            at: 0,
            io,
            permit,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::http::guard::HttpGuard;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (accepted.unwrap().0, client.unwrap())
    }

    fn permit() -> Permit {
        let guard = Arc::new(HttpGuard::new(&crate::config::BridgeConfig::default()));
        guard.admit([127, 0, 0, 1].into()).unwrap()
    }

    #[tokio::test]
    async fn replay_reads_the_prefix_then_the_socket_and_frees_the_prefix() {
        use tokio::io::AsyncReadExt;
        let (server, mut client) = pair().await;
        client.write_all(b" world").await.unwrap();
        client.shutdown().await.unwrap();
        let mut replay = Replay::new(b"hello".to_vec(), server, permit());
        let mut first = [0u8; 3];
        replay.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"hel");
        let mut rest = String::new();
        tokio::time::timeout(Duration::from_secs(10), replay.read_to_string(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rest, "lo world");
        assert_eq!(replay.prefix.capacity(), 0);
    }
}
