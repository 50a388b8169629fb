//! Binding and readiness of the listeners: every address is bind-checked before rumqttd binds
//! it (a port in use is a startup error naming the port; port 0 is resolved here), the checked
//! socket is held until the listener is served (a front accepts on it; for rumqttd it is
//! released right before rumqttd binds, so no other process takes the port meanwhile), and a
//! listener is ready once its socket listens.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::EffectiveListener;
use crate::error::BrokerError;

/// How long a listener may take to accept its first connection after start.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener's address, checked, and the socket bound on it.
#[derive(Debug)]
pub(crate) struct Bound {
    pub(crate) listener: EffectiveListener,
    /// Held until the listener is served: the front accepts on it, or it is dropped right
    /// before rumqttd binds the address.
    pub(crate) socket: std::net::TcpListener,
}

/// Binds every address once (holding them all, so two listeners on one port are caught too)
/// and resolves port 0.
pub(crate) fn bind_check(listeners: Vec<EffectiveListener>) -> Result<Vec<Bound>, BrokerError> {
    let mut out = Vec::new();
    for l in listeners {
        let sock = if l.addr.port() == 0 {
            bind_free(l.addr)
        } else {
            std::net::TcpListener::bind(l.addr)
        }
        .map_err(|source| BrokerError::Bind {
            listener: l.kind,
            addr: l.addr,
            source,
        })?;
        let addr = sock.local_addr().unwrap_or(l.addr);
        out.push(Bound {
            listener: EffectiveListener { kind: l.kind, addr },
            socket: sock,
        });
    }
    Ok(out)
}

/// Ports tried for a listener configured with port 0: below Linux's default ephemeral range
/// (32768-60999), so that between our check and rumqttd's own bind an outgoing connection
/// cannot take the port.
const PORT_0_RANGE: std::ops::Range<u16> = 20_000..32_000;

/// Binds a free port for a port-0 address, preferring [`PORT_0_RANGE`].
fn bind_free(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let span = u32::from(PORT_0_RANGE.end - PORT_0_RANGE.start);
    // A cheap spread of starting points (no RNG dependency): time and process id.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    for i in 0..64u32 {
        let offset = seed.wrapping_add(i.wrapping_mul(7_919)) % span;
        let port = PORT_0_RANGE.start + u16::try_from(offset).unwrap_or(0);
        if let Ok(sock) = std::net::TcpListener::bind(SocketAddr::new(addr.ip(), port)) {
            return Ok(sock);
        }
    }
    std::net::TcpListener::bind(addr)
}

/// Whether something listens on `addr`: a bind that does not listen, with SO_REUSEADDR, is
/// refused only by a listening socket.
fn probe_listening(addr: SocketAddr) -> bool {
    use rustix::net::{AddressFamily, SocketType};
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let Ok(fd) = rustix::net::socket(family, SocketType::STREAM, None) else {
        return false;
    };
    if rustix::net::sockopt::set_socket_reuseaddr(&fd, true).is_err() {
        return false;
    }
    matches!(
        rustix::net::bind(&fd, &addr),
        Err(rustix::io::Errno::ADDRINUSE)
    )
}

/// Waits until rumqttd's socket for `listener` is listening.
///
/// rumqttd binds inside `Server::start` and reports nothing. The probe binds the same address
/// with SO_REUSEADDR and never listens: that fails with `AddrInUse` once rumqttd's socket
/// listens, and before that it cannot stand in rumqttd's way (sockets with SO_REUSEADDR may
/// share an address as long as at most one listens; a probe that listened, as a plain
/// `TcpListener::bind` does, made rumqttd's own bind fail now and then). We test that instead
/// of opening a probe connection, because rumqttd logs every probe connection as an error
/// ("connection closed by peer", "tls handshake eof") at each start.
pub(crate) async fn wait_ready(
    listener: &EffectiveListener,
    task: &JoinHandle<()>,
) -> Result<(), BrokerError> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if task.is_finished() {
            return Err(BrokerError::NotReady {
                listener: listener.kind,
                addr: listener.addr,
                reason: "listener task ended (see the log for rumqttd's error)".into(),
            });
        }
        if probe_listening(listener.addr) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BrokerError::NotReady {
                listener: listener.kind,
                addr: listener.addr,
                reason: format!("not listening within {READY_TIMEOUT:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
