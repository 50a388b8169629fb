//! `mqtts://` upstreams: TLS made with the hub's own rustls (through tokio-rustls), under
//! rumqttc.
//!
//! rumqttc's own TLS would link a second rustls into the binary (rumqttc 0.25 is on rustls
//! 0.23, the hub on 0.22 with rumqttd), against issue #20's size budget. So the uplink opens the
//! TCP connection and makes the TLS handshake itself, then hands the TLS stream to rumqttc
//! over a Unix socket in a private directory of the data dir (`.uplink`, mode 0700: only the
//! hub's user can connect): rumqttc connects to the socket, a task copies the bytes both ways,
//! and the socket file is removed once taken. A handshake that fails (unknown CA, wrong name,
//! expired certificate) is the uplink's error, said as such in `GET /v1/uplinks`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpStream, UnixListener};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// The PEM files of an `mqtts://` uplink: `ca_file`, `client_cert`, `client_key`.
#[derive(Debug, Clone, Copy)]
pub(super) struct TlsFiles<'a> {
    pub(super) ca_file: Option<&'a Path>,
    pub(super) client_cert: Option<&'a Path>,
    pub(super) client_key: Option<&'a Path>,
}

/// The CA bundle used without `ca_file` (Debian's `ca-certificates`).
pub(super) const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How long the TCP connection and the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One uplink's TLS settings, read at start.
pub(super) struct TlsUpstream {
    connector: TlsConnector,
    name: ServerName<'static>,
    host: String,
    port: u16,
    socket: PathBuf,
}

impl std::fmt::Debug for TlsUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsUpstream")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

fn pem(path: &Path, key: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{key}: {}: {e}", path.display()))
}

impl TlsUpstream {
    /// Reads the CA bundle and the client certificate and key `files` names; uplink `name`'s
    /// socket goes into `data_dir/.uplink`.
    pub(super) fn new(
        files: TlsFiles<'_>,
        name: &str,
        (host, port): (&str, u16),
        data_dir: &Path,
    ) -> Result<Self, String> {
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
        let config = match (files.client_cert, files.client_key) {
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
                    .map_err(|e| format!("client_cert: {e}"))?
            }
            _ => builder.with_no_client_auth(),
        };
        let server = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("url: {host:?} is not a server name: {e}"))?;
        Ok(TlsUpstream {
            connector: TlsConnector::from(Arc::new(config)),
            name: server,
            host: host.to_owned(),
            port,
            socket: data_dir.join(".uplink").join(format!("{name}.sock")),
        })
    }

    /// Connects and makes the handshake; then listens on the private socket and hands the
    /// TLS stream to the first connection on it (rumqttc's, made next). Returns the socket.
    pub(super) async fn open(&self) -> Result<PathBuf, String> {
        let connect = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("connecting to {}:{}: {e}", self.host, self.port))?;
            let _ = tcp.set_nodelay(true);
            self.connector
                .connect(self.name.clone(), tcp)
                .await
                .map_err(|e| format!("TLS handshake with {}:{}: {e}", self.host, self.port))
        };
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect)
            .await
            .map_err(|_| {
                format!(
                    "TLS: no connection to {}:{} within {HANDSHAKE_TIMEOUT:?}",
                    self.host, self.port
                )
            })??;
        let listener = self.listen()?;
        let socket = self.socket.clone();
        tokio::spawn(async move {
            let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, listener.accept()).await;
            let _ = std::fs::remove_file(&socket);
            if let Ok(Ok((mut local, _))) = accepted {
                let mut tls = tls;
                let _ = tokio::io::copy_bidirectional(&mut local, &mut tls).await;
            }
        });
        Ok(self.socket.clone())
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
