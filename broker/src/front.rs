//! Our own accept loop in front of rumqttd for the MQTT-over-WebSocket and MQTT-over-TLS
//! listeners.
//!
//! rumqttd's accept loop performs the WebSocket handshake and the TLS handshake itself, one
//! connection at a time, with no time limit: one client that opens a TCP connection to either
//! port and sends nothing stops every later device from connecting there, for as long as it
//! stays (measured: a WebSocket handshake got no answer until the idle connection closed).
//! So for these two listeners the public port is ours. Each connection gets its own task
//! that, within `connect_timeout_ms`:
//!
//! * WebSocket: reads the upgrade request head (at most [`HEAD_MAX`] bytes), then hands the
//!   connection, head included, to rumqttd's WebSocket listener on a loopback port, which
//!   now finds a complete request waiting and answers at once;
//! * TLS: completes the TLS handshake (rustls), then hands the decrypted stream to a plain
//!   MQTT 3.1.1 listener of rumqttd on a loopback port.
//!
//! Bytes are then copied both ways until either side closes. rumqttd sees every such
//! connection coming from loopback, so the front records which loopback address stands for
//! which client ([`crate::peer::Peers::register_proxied`]) and the per-address limits apply to
//! the real client. The copy costs a little CPU per message on these two listeners; MQTT over
//! plain TCP (the devices' usual path) is not fronted.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use tokio::task::JoinHandle;

use crate::bind::Bound;
use crate::config::EffectiveListener;
use crate::peer::Peers;

/// Largest WebSocket upgrade request head accepted.
pub(crate) const HEAD_MAX: usize = 8 * 1024;

/// What the front does before handing a connection on.
#[derive(Clone)]
pub(crate) enum Handshake {
    /// Read the WebSocket upgrade request head.
    WebSocket,
    /// Complete a TLS handshake.
    Tls(tokio_rustls::TlsAcceptor),
}

/// One fronted listener.
#[derive(Clone)]
pub(crate) struct Front {
    /// rumqttd's listener on loopback.
    pub(crate) upstream: SocketAddr,
    pub(crate) handshake: Handshake,
    /// How long a client has for its handshake.
    pub(crate) timeout: Duration,
    pub(crate) peers: Arc<Peers>,
}

impl Front {
    /// Accepts on `public` (the bind check's socket) until the runtime stops.
    pub(crate) async fn run(self, public: std::net::TcpListener) -> io::Result<()> {
        public.set_nonblocking(true)?;
        let listener = TcpListener::from_std(public)?;
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let front = self.clone();
            tokio::spawn(async move {
                if let Err(err) = front.serve(tcp, peer).await {
                    tracing::debug!(%peer, %err, "fronted MQTT connection ended");
                }
            });
        }
    }

    async fn serve(self, tcp: TcpStream, peer: SocketAddr) -> io::Result<()> {
        let _ = tcp.set_nodelay(true);
        match &self.handshake {
            Handshake::WebSocket => {
                let mut tcp = tcp;
                let head = tokio::time::timeout(self.timeout, read_head(&mut tcp))
                    .await
                    .map_err(|_| timed_out("WebSocket handshake"))??;
                self.forward(tcp, peer, &head).await
            }
            Handshake::Tls(acceptor) => {
                let tls = tokio::time::timeout(self.timeout, acceptor.accept(tcp))
                    .await
                    .map_err(|_| timed_out("TLS handshake"))??;
                self.forward(tls, peer, &[]).await
            }
        }
    }

    /// Connects to rumqttd, sends `first`, then copies both ways.
    async fn forward<S>(&self, mut client: S, peer: SocketAddr, first: &[u8]) -> io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let socket = if self.upstream.is_ipv6() {
            TcpSocket::new_v6()?
        } else {
            TcpSocket::new_v4()?
        };
        socket.bind(SocketAddr::new(self.upstream.ip(), 0))?;
        // Registered before connecting: rumqttd clones our codec as soon as it accepts.
        let _proxied = self.peers.register_proxied(socket.local_addr()?, peer);
        let mut upstream = socket.connect(self.upstream).await?;
        let _ = upstream.set_nodelay(true);
        upstream.write_all(first).await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        Ok(())
    }
}

/// A listener as configured, rumqttd's settings for it, and its front if it has one.
pub(crate) struct ListenerSettings {
    /// The configured address and the bind check's socket on it.
    pub(crate) public: Bound,
    pub(crate) server: rumqttd::ServerSettings,
    /// The front and rumqttd's internal loopback listener behind it.
    pub(crate) front: Option<(Front, Bound)>,
}

/// Starts the fronts (WebSocket, TLS) on their held public sockets and releases the sockets of
/// the addresses rumqttd binds itself, right before it does: returns rumqttd's listeners with
/// their settings, and the fronts' tasks.
#[allow(clippy::type_complexity)]
pub(crate) fn start_fronts(
    runtime: &tokio::runtime::Runtime,
    settings: Vec<ListenerSettings>,
) -> (
    Vec<(EffectiveListener, rumqttd::ServerSettings)>,
    Vec<(EffectiveListener, JoinHandle<()>)>,
) {
    let (mut rumqttd, mut fronts) = (Vec::new(), Vec::new());
    for ListenerSettings {
        public,
        server,
        front,
    } in settings
    {
        let served = match front {
            Some((front, internal)) => {
                let addr = public.listener.addr;
                let task = runtime.spawn(async move {
                    if let Err(err) = front.run(public.socket).await {
                        tracing::error!(%addr, %err, "MQTT listener stopped");
                    }
                });
                fronts.push((public.listener, task));
                internal
            }
            None => public,
        };
        let Bound { listener, socket } = served;
        drop(socket);
        rumqttd.push((listener, server));
    }
    (rumqttd, fronts)
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} took too long"))
}

/// Reads an HTTP request head (up to the empty line), at most [`HEAD_MAX`] bytes.
async fn read_head(tcp: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(head);
        }
        if head.len() > HEAD_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "WebSocket request head too large",
            ));
        }
    }
}

/// A TLS acceptor for the certificate chain and key in these PEM files.
pub(crate) fn tls_acceptor(
    cert_path: &std::path::Path,
    key_path: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let certs = rustls_pemfile::certs(&mut &read(cert_path)?[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    let key = rustls_pemfile::private_key(&mut &read(key_path)?[..])
        .map_err(|e| format!("{}: {e}", key_path.display()))?
        .ok_or_else(|| format!("{}: no private key", key_path.display()))?;
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate or key: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
