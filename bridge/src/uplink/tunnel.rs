//! What the hub puts under rumqttc itself: TLS (`mqtts://`, `wss://`) and MQTT over WebSocket
//! (`ws://`, `wss://`).
//!
//! rumqttc's own TLS would link a second rustls into the binary (rumqttc 0.25 is on rustls
//! 0.23, the hub on 0.22 with rumqttd) and its WebSocket a second tungstenite, against issue
//! #20's size budget. So the uplink opens the TCP connection, makes the TLS handshake with the
//! hub's rustls (through tokio-rustls) and the WebSocket handshake with the tungstenite the
//! HTTP server already links (subprotocol `mqtt`), then hands the connection to rumqttc over a
//! Unix socket in a private directory of the data dir (`.uplink`, mode 0700: only the hub's
//! user can connect). rumqttc connects to the socket, a task copies the bytes both ways (over
//! WebSocket: each read is one binary message), and the socket file is removed once taken. A
//! handshake that fails (unknown CA, wrong name, expired certificate, a refused upgrade) is the
//! uplink's error, said as such in `GET /v1/uplinks`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The CA bundle used without `ca_file` (Debian's `ca-certificates`).
pub(super) const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How long the TCP connection and the handshakes may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The PEM files of a TLS uplink: `ca_file`, `client_cert`, `client_key`.
#[derive(Debug, Clone, Copy)]
pub(super) struct TlsFiles<'a> {
    pub(super) ca_file: Option<&'a Path>,
    pub(super) client_cert: Option<&'a Path>,
    pub(super) client_key: Option<&'a Path>,
}

/// One uplink's way to its broker when rumqttc cannot connect directly.
pub(super) struct Tunnel {
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The WebSocket URL (`ws://` or `wss://`), for MQTT over WebSocket.
    ws: Option<String>,
    host: String,
    port: u16,
    socket: PathBuf,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("ws", &self.ws)
            .finish_non_exhaustive()
    }
}

fn pem(path: &Path, key: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{key}: {}: {e}", path.display()))
}

/// Where an uplink connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Upstream {
    /// `mqtts://` or `wss://`.
    pub(super) tls: bool,
    /// `ws://` or `wss://`: the URL's path (`/mqtt` when none is written).
    pub(super) ws_path: Option<String>,
    pub(super) host: String,
    pub(super) port: u16,
}

impl Upstream {
    /// `mqtt://host[:port]` (1883), `mqtts://host[:port]` (8883), `ws://host[:port][/path]`
    /// (80) or `wss://host[:port][/path]` (443); the path defaults to `/mqtt`.
    pub(super) fn parse(url: &str) -> Result<Upstream, String> {
        let err = || {
            format!(
                "invalid broker url {url:?}: expected mqtt://, mqtts://, ws:// or wss://host[:port]"
            )
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(err)?;
        let (tls, ws, default_port) = match scheme {
            "mqtt" => (false, false, 1883),
            "mqtts" => (true, false, 8883),
            "ws" => (false, true, 80),
            "wss" => (true, true, 443),
            _ => return Err(err()),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) if ws => (&rest[..i], Some(rest[i..].to_owned())),
            _ => (rest, None),
        };
        if path
            .as_deref()
            .is_some_and(|p| p.contains(char::is_whitespace))
        {
            return Err(err());
        }
        let (host, port) = crate::ingest::external::parse_mqtt_url(&format!("mqtt://{authority}"))
            .map_err(|_| err())?;
        // No port written: the scheme's.
        let has_port = authority
            .trim_end_matches('/')
            .rsplit_once(':')
            .is_some_and(|(h, p)| {
                !h.is_empty() && !p.contains(']') && p.bytes().all(|b| b.is_ascii_digit())
            });
        let port = if has_port { port } else { default_port };
        let ws_path = ws.then(|| {
            path.filter(|p| p != "/")
                .unwrap_or_else(|| "/mqtt".to_owned())
        });
        Ok(Upstream {
            tls,
            ws_path,
            host,
            port,
        })
    }
}

/// A TLS client configuration from `files` (errors start with the key at fault).
fn client_config(files: TlsFiles<'_>) -> Result<ClientConfig, String> {
    let ca_path = files
        .ca_file
        .map_or_else(|| PathBuf::from(SYSTEM_CA_FILE), Path::to_path_buf);
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem(&ca_path, "ca_file")?[..]) {
        let cert = cert.map_err(|e| format!("ca_file: {}: {e}", ca_path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("ca_file: {}: {e}", ca_path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("ca_file: {}: no certificate", ca_path.display()));
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    match (files.client_cert, files.client_key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> =
                rustls_pemfile::certs(&mut &pem(cert, "client_cert")?[..])
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("client_cert: {}: {e}", cert.display()))?;
            let key_der: PrivateKeyDer<'static> =
                rustls_pemfile::private_key(&mut &pem(key, "client_key")?[..])
                    .map_err(|e| format!("client_key: {}: {e}", key.display()))?
                    .ok_or_else(|| format!("client_key: {}: no private key", key.display()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("client_cert: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// A connection made, before it is handed to rumqttc (boxed: the streams are large).
enum Established {
    Tls(Box<TlsStream<TcpStream>>),
    Ws(Box<WebSocketStream<TcpStream>>),
    Wss(Box<WebSocketStream<TlsStream<TcpStream>>>),
}

impl Tunnel {
    /// The tunnel `up` needs (`None` for `mqtt://`), reading the TLS files now; uplink
    /// `name`'s socket goes into `data_dir/.uplink`.
    pub(super) fn new(
        up: &Upstream,
        files: TlsFiles<'_>,
        name: &str,
        data_dir: &Path,
    ) -> Result<Option<Tunnel>, String> {
        if !up.tls && up.ws_path.is_none() {
            return Ok(None);
        }
        let tls = if up.tls {
            let server = ServerName::try_from(up.host.clone())
                .map_err(|e| format!("url: {:?} is not a server name: {e}", up.host))?;
            Some((TlsConnector::from(Arc::new(client_config(files)?)), server))
        } else {
            None
        };
        let ws = up.ws_path.as_ref().map(|path| {
            let scheme = if up.tls { "wss" } else { "ws" };
            let host = if up.host.contains(':') {
                format!("[{}]", up.host)
            } else {
                up.host.clone()
            };
            format!("{scheme}://{host}:{}{path}", up.port)
        });
        Ok(Some(Tunnel {
            tls,
            ws,
            host: up.host.clone(),
            port: up.port,
            socket: data_dir.join(".uplink").join(format!("{name}.sock")),
        }))
    }

    /// Connects and makes the handshakes; then listens on the private socket and hands the
    /// connection to the first one made there (rumqttc's, next). Returns the socket.
    pub(super) async fn open(&self) -> Result<PathBuf, String> {
        let established = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.establish())
            .await
            .map_err(|_| {
                format!(
                    "no connection to {}:{} within {HANDSHAKE_TIMEOUT:?}",
                    self.host, self.port
                )
            })??;
        let listener = self.listen()?;
        let socket = self.socket.clone();
        tokio::spawn(async move {
            let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, listener.accept()).await;
            let _ = std::fs::remove_file(&socket);
            let Ok(Ok((mut local, _))) = accepted else {
                return;
            };
            match established {
                Established::Tls(mut tls) => {
                    let _ = tokio::io::copy_bidirectional(&mut local, &mut *tls).await;
                }
                Established::Ws(ws) => splice_ws(local, *ws).await,
                Established::Wss(ws) => splice_ws(local, *ws).await,
            }
        });
        Ok(self.socket.clone())
    }

    async fn establish(&self) -> Result<Established, String> {
        let at = format!("{}:{}", self.host, self.port);
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connecting to {at}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let tls = |tcp| async move {
            let (connector, server) = self.tls.as_ref().ok_or("no TLS settings")?;
            connector
                .connect(server.clone(), tcp)
                .await
                .map_err(|e| format!("TLS handshake with {at}: {e}"))
        };
        Ok(match &self.ws {
            None => Established::Tls(Box::new(tls(tcp).await?)),
            Some(url) if self.tls.is_some() => {
                Established::Wss(Box::new(ws_handshake(url, tls(tcp).await?).await?))
            }
            Some(url) => Established::Ws(Box::new(ws_handshake(url, tcp).await?)),
        })
    }

    /// Binds the socket in a directory only this user may enter.
    fn listen(&self) -> Result<UnixListener, String> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.socket.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let _ = std::fs::remove_file(&self.socket);
        UnixListener::bind(&self.socket).map_err(|e| format!("{}: {e}", self.socket.display()))
    }
}

/// The WebSocket handshake for MQTT (subprotocol `mqtt`) over `stream`.
async fn ws_handshake<S>(url: &str, stream: S) -> Result<WebSocketStream<S>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("url: {url}: {e}"))?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        tokio_tungstenite::tungstenite::http::HeaderValue::from_static("mqtt"),
    );
    tokio_tungstenite::client_async(request, stream)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| format!("WebSocket handshake with {url}: {e}"))
}

/// Copies bytes between rumqttc's Unix connection and a WebSocket: each read becomes one
/// binary message, each binary message is written as it comes (MQTT over WebSocket allows a
/// packet across messages and several in one). Ends when either side closes.
async fn splice_ws<S>(local: UnixStream, ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut rd, mut wr) = local.into_split();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        break;
                    }
                }
            },
            m = ws_rx.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if wr.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = ws_tx.close().await;
}
