//! TCP_NODELAY for rumqttd's connections.
//!
//! rumqttd never disables Nagle's algorithm on the sockets it accepts. Its small writes
//! (PUBACKs, forwarded publishes) then wait for the peer's delayed ACK, up to 40 ms on Linux,
//! which shows as tens of milliseconds of publish-to-subscriber latency. rumqttd binds its
//! listening sockets itself and does not expose them, but on Linux an accepted socket
//! inherits TCP_NODELAY from its listening socket. So, once a listener is up, we find its
//! socket among this process's file descriptors (`/proc/self/fd`), take a second descriptor
//! for it with `pidfd_getfd` (safe, no raw descriptor is borrowed), check that it is the
//! listening socket on the expected address, and set TCP_NODELAY on it.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use rustix::net::sockopt;
use rustix::process::{getpid, pidfd_getfd, pidfd_open, PidfdFlags, PidfdGetfdFlags};

/// Sets TCP_NODELAY on this process's listening socket bound to `addr`. Returns whether one
/// was found; errors (an old kernel without `pidfd_getfd`, say) are reported, never fatal.
pub(crate) fn set_on_listener(addr: SocketAddr) -> std::io::Result<bool> {
    let pidfd = pidfd_open(getpid(), PidfdFlags::empty())?;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Some(raw) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .map(|target| target.to_string_lossy().starts_with("socket:"))
            .unwrap_or(false);
        if !is_socket {
            continue;
        }
        // The descriptor may have been closed since the listing: skip it then.
        let Ok(fd) = pidfd_getfd(&pidfd, raw, PidfdGetfdFlags::empty()) else {
            continue;
        };
        if is_listener_on(&fd, addr) {
            sockopt::set_tcp_nodelay(&fd, true)?;
            return Ok(true);
        }
    }
    Ok(false)
}

fn is_listener_on(fd: &OwnedFd, addr: SocketAddr) -> bool {
    let listening = sockopt::socket_acceptconn(fd).unwrap_or(false);
    let bound = rustix::net::getsockname(fd)
        .ok()
        .and_then(|a| SocketAddr::try_from(a).ok());
    listening && bound == Some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(set_on_listener(addr).unwrap(), "listener not found");
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
