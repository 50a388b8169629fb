//! HTTPS: the HTTP server over TLS (rustls, HTTP/1.1) with a PEM certificate chain and key
//! (`bridge.http_tls_cert`, `bridge.http_tls_key`). Everything the server carries goes over
//! it: the API, event streams (still written straight to the connection, `server.rs`),
//! WebSocket upgrades, long polls and the dashboard. The handshake happens in each
//! connection's task within `bridge.http_header_timeout_secs` (see `server.rs`). The plain
//! listener that sends browsers here is `redirect.rs`.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use edgewatch_protocol::InvalidSetting;
use tokio::net::TcpListener;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use super::guard::HttpGuard;
use crate::config::BridgeConfig;

/// The server's certificate and key, ready for handshakes. Cheap to clone.
#[derive(Clone)]
pub struct HttpTls {
    acceptor: TlsAcceptor,
}

impl fmt::Debug for HttpTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpTls").finish_non_exhaustive()
    }
}

impl HttpTls {
    /// The certificate and key `cfg` names; `None` when it names neither. A missing one, a
    /// file that cannot be read or holds no certificate or key, or a key rustls cannot use
    /// is an error naming the key (`bridge.http_tls_cert` or `bridge.http_tls_key`).
    pub fn from_config(cfg: &BridgeConfig) -> Result<Option<Self>, InvalidSetting> {
        match (&cfg.http_tls_cert, &cfg.http_tls_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Self::load(cert, key).map(Some),
            (Some(_), None) => Err(InvalidSetting::new(
                "bridge.http_tls_key",
                "missing: bridge.http_tls_cert is set (set both or neither)",
            )),
            (None, Some(_)) => Err(InvalidSetting::new(
                "bridge.http_tls_cert",
                "missing: bridge.http_tls_key is set (set both or neither)",
            )),
        }
    }

    /// Reads the certificate chain in `cert` and the private key in `key` (PEM).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, InvalidSetting> {
        const CERT: &str = "bridge.http_tls_cert";
        const KEY: &str = "bridge.http_tls_key";
        let certs = rustls_pemfile::certs(&mut &read(cert, CERT)?[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| InvalidSetting::new(CERT, format!("{}: {e}", cert.display())))?;
        if certs.is_empty() {
            return Err(InvalidSetting::new(
                CERT,
                format!(
                    "no PEM certificate (BEGIN CERTIFICATE) in {}",
                    cert.display()
                ),
            ));
        }
        let private = rustls_pemfile::private_key(&mut &read(key, KEY)?[..])
            .map_err(|e| InvalidSetting::new(KEY, format!("{}: {e}", key.display())))?
            .ok_or_else(|| {
                InvalidSetting::new(
                    KEY,
                    format!(
                        "no PEM private key (PKCS#8, PKCS#1 or SEC1) in {}",
                        key.display()
                    ),
                )
            })?;
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, private)
            .map_err(|e| InvalidSetting::new(KEY, format!("{}: {e}", key.display())))?;
        // The server speaks HTTP/1.1 only; a client that offers h2 falls back to it.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// The whole file at `path`; an error names `key`.
fn read(path: &Path, key: &str) -> Result<Vec<u8>, InvalidSetting> {
    std::fs::read(path)
        .map_err(|e| InvalidSetting::new(key, format!("cannot read {}: {e}", path.display())))
}

/// [`crate::http::serve_guarded`] over TLS: serves `router` on `listener` with `tls` until
/// `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    guard: Arc<HttpGuard>,
    tls: HttpTls,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    super::server::serve(listener, router, guard, Some(tls.acceptor), shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_or_empty_files_are_named_by_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a pem file\n").unwrap();
        let missing = dir.path().join("missing.pem");
        let key_of = |cert: &Path, key: &Path| HttpTls::load(cert, key).unwrap_err();
        let err = key_of(&missing, &empty);
        assert_eq!(err.key, "bridge.http_tls_cert");
        assert!(err.message.contains("missing.pem"), "{err}");
        assert_eq!(key_of(&empty, &empty).key, "bridge.http_tls_cert");
        let cfg = BridgeConfig {
            http_tls_key: Some(empty),
            ..BridgeConfig::default()
        };
        assert_eq!(
            HttpTls::from_config(&cfg).unwrap_err().key,
            "bridge.http_tls_cert"
        );
        assert!(HttpTls::from_config(&BridgeConfig::default())
            .unwrap()
            .is_none());
    }
}
