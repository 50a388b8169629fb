//! Free loopback ports.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// A free loopback port (bound, then released: a small race is accepted). Chosen in
/// 10000-19999, outside Linux's ephemeral range (32768-60999, used by outgoing connections,
/// which tests open by the hundred, and by listeners bound to port 0), so a port picked here
/// and bound a moment later, or kept across a restart of the process that holds it, is not
/// taken in between by an outgoing connection.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    for _ in 0..200 {
        let n = seed.wrapping_add(NEXT.fetch_add(7_919, Ordering::Relaxed));
        let port = 10_000 + (n % 10_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_and_outside_the_ephemeral_range() {
        // Free when chosen; on a shared machine another process may take one in the moment
        // before it is bound again (seen once in a full run), so one miss in 20 is allowed.
        let mut taken = 0;
        for _ in 0..20 {
            let p = free_port();
            assert!((10_000..20_000).contains(&p), "{p}");
            if TcpListener::bind(("127.0.0.1", p)).is_err() {
                taken += 1;
            }
        }
        assert!(taken <= 1, "{taken} of 20 ports were not free");
    }
}
