//! What every HTTP client is held to before a handler runs: open connections (global and per
//! client address), requests per second per client address (token bucket), and the `Host`
//! header (DNS rebinding). One [`HttpGuard`] per hub, shared by the accept loop
//! (`server.rs`), the request layer ([`check`]) and `/metrics`.
//!
//! A client is its IP address; an IPv6 client is its /64 (one host usually has a whole /64
//! to pick addresses from).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::ErrorBody;
use crate::config::BridgeConfig;
use crate::metrics::HttpCounts;

/// Most clients the rate limiter tracks at once; beyond it (after idle entries are dropped),
/// new clients are not limited until entries free up.
const RATE_CLIENTS_MAX: usize = 16_384;
/// Least time between two sweeps of the rate table for idle entries when it is full.
const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// Least time between two log lines about refused connections or requests.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// The smallest read buffer hyper accepts.
pub(crate) const MIN_HEAD_BYTES: usize = 8192;

/// The HTTP limits of a hub and their counters.
#[derive(Debug)]
pub struct HttpGuard {
    max_connections: usize,
    configured_connections: usize,
    max_per_client: usize,
    pub(crate) header_timeout: Duration,
    pub(crate) max_head_bytes: usize,
    rate_per_sec: f64,
    rate_burst: f64,
    hosts: Hosts,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    buckets: Mutex<RateTable>,
    /// Open connections and refusals, for `/metrics`.
    pub(crate) counts: Arc<HttpCounts>,
    logged: Mutex<Option<Instant>>,
}

impl HttpGuard {
    /// The limits of `cfg` (`bridge.http_*`). The global cap is at most half the process's
    /// open-file limit, so HTTP alone can never take the descriptors MQTT devices and the
    /// store need (over the limit, `accept` fails for every listener).
    pub fn new(cfg: &BridgeConfig) -> Self {
        let fd_limit = open_file_limit();
        Self {
            max_connections: connection_cap(cfg.http_max_connections, fd_limit),
            configured_connections: cfg.http_max_connections,
            max_per_client: cfg.http_max_connections_per_ip.max(1),
            header_timeout: Duration::from_secs(cfg.http_header_timeout_secs.max(1)),
            max_head_bytes: cfg.http_max_head_bytes.max(MIN_HEAD_BYTES),
            rate_per_sec: f64::from(cfg.http_rate_per_sec),
            rate_burst: f64::from(cfg.http_rate_burst.max(1)),
            hosts: Hosts::new(&cfg.http_allowed_hosts),
            per_client: Mutex::new(HashMap::new()),
            buckets: Mutex::new(RateTable::default()),
            counts: Arc::default(),
            logged: Mutex::new(None),
        }
    }

    /// Open connections and refusals since start (what `/metrics` reads).
    pub fn counts(&self) -> Arc<HttpCounts> {
        self.counts.clone()
    }

    /// Takes a connection slot for a client at `ip`; `None` (counted, logged at most every
    /// 10 s) when the global or the client's cap is reached.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Permit> {
        let client = client_of(ip);
        let mut per = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        if self.counts.open.load(Ordering::Relaxed) >= self.max_connections {
            drop(per);
            self.refused(&self.counts.refused_global, "http_max_connections", ip);
            return None;
        }
        let n = per.entry(client).or_insert(0);
        if *n >= self.max_per_client {
            drop(per);
            self.refused(
                &self.counts.refused_per_ip,
                "http_max_connections_per_ip",
                ip,
            );
            return None;
        }
        *n += 1;
        self.counts.open.fetch_add(1, Ordering::Relaxed);
        Some(Permit {
            guard: self.clone(),
            client,
        })
    }

    fn release(&self, client: IpAddr) {
        let mut per = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                per.remove(&client);
            }
        }
        self.counts.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a refusal and logs a warning, at most one line per [`LOG_EVERY`].
    pub(crate) fn refused(&self, counter: &AtomicU64, what: &str, ip: IpAddr) {
        counter.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return;
        }
        *logged = Some(now);
        drop(logged);
        let c = &self.counts;
        tracing::warn!(
            limit = what,
            client = %ip,
            refused_global = c.refused_global.load(Ordering::Relaxed),
            refused_per_ip = c.refused_per_ip.load(Ordering::Relaxed),
            head_timeouts = c.head_timeouts.load(Ordering::Relaxed),
            rate_limited = c.rate_limited.load(Ordering::Relaxed),
            host_refused = c.host_refused.load(Ordering::Relaxed),
            "HTTP client refused (one line per 10 s at most; counts since start, see /metrics)"
        );
    }

    /// Takes one request's token for the client at `ip`; `Err(seconds to wait)` when its
    /// bucket is empty.
    fn take_token(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        if self.rate_per_sec <= 0.0 {
            return Ok(());
        }
        let mut table = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        table.take(client_of(ip), now, self.rate_per_sec, self.rate_burst)
    }
}

impl HttpGuard {
    /// Logs the global cap when the open-file limit lowered it (once, when serving starts).
    pub(crate) fn log_cap(&self) {
        if self.max_connections < self.configured_connections {
            tracing::warn!(
                configured = self.configured_connections,
                effective = self.max_connections,
                open_file_limit = ?open_file_limit(),
                "bridge.http_max_connections lowered to half the open-file limit (raise the limit, e.g. LimitNOFILE in systemd)"
            );
        }
    }
}

/// `configured`, but at most half of `fd_limit` (and at least 1).
fn connection_cap(configured: usize, fd_limit: Option<u64>) -> usize {
    let half = fd_limit.map_or(usize::MAX, |n| usize::try_from(n / 2).unwrap_or(usize::MAX));
    configured.min(half).max(1)
}

/// The soft limit on open files of this process (`/proc/self/limits`; `None` elsewhere or
/// when unlimited).
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A connection's slot; freed on drop.
#[derive(Debug)]
pub(crate) struct Permit {
    guard: Arc<HttpGuard>,
    client: IpAddr,
}

impl Permit {
    /// The limits this slot was taken under.
    pub(crate) fn guard(&self) -> &HttpGuard {
        &self.guard
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.guard.release(self.client);
    }
}

/// The client an address belongs to: itself, or an IPv6 address's /64.
fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// Token buckets by client.
#[derive(Debug, Default)]
struct RateTable {
    buckets: HashMap<IpAddr, Bucket>,
    swept: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateTable {
    fn take(&mut self, client: IpAddr, now: Instant, rate: f64, burst: f64) -> Result<(), u64> {
        if !self.buckets.contains_key(&client) && self.buckets.len() >= RATE_CLIENTS_MAX {
            self.sweep(now, rate, burst);
            if self.buckets.len() >= RATE_CLIENTS_MAX {
                // Every tracked client is active: this one goes unlimited for now.
                return Ok(());
            }
        }
        let b = self.buckets.entry(client).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / rate).ceil().max(1.0) as u64)
        }
    }

    /// Drops the buckets that have refilled (a full bucket is the same as none).
    fn sweep(&mut self, now: Instant, rate: f64, burst: f64) {
        if self
            .swept
            .is_some_and(|t| now.duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        self.swept = Some(now);
        self.buckets
            .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
    }
}

/// The host names requests may name.
#[derive(Debug)]
struct Hosts {
    any: bool,
    exact: Vec<String>,
    suffixes: Vec<String>,
}

impl Hosts {
    fn new(listed: &[String]) -> Self {
        let mut exact: Vec<String> = listed
            .iter()
            .filter(|h| !h.starts_with("*."))
            .map(|h| h.to_ascii_lowercase())
            .collect();
        if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            let name = name.trim().to_ascii_lowercase();
            if !name.is_empty() {
                exact.push(format!("{name}.local"));
                exact.push(name);
            }
        }
        exact.push("localhost".to_owned());
        let mut suffixes: Vec<String> = listed
            .iter()
            .filter_map(|h| h.strip_prefix('*'))
            .map(|h| h.to_ascii_lowercase())
            .collect();
        suffixes.push(".localhost".to_owned());
        Self {
            any: listed.iter().any(|h| h == "*"),
            exact,
            suffixes,
        }
    }

    /// Whether a `Host` value (name or IP literal, with or without port) is allowed.
    fn allows(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        let name = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
        if name.parse::<IpAddr>().is_ok()
            || (name.starts_with('[') && name.ends_with(']'))
                && name[1..name.len() - 1].parse::<Ipv6Addr>().is_ok()
        {
            return true;
        }
        self.exact.contains(&name) || self.suffixes.iter().any(|s| name.ends_with(s))
    }
}

/// `host:port` -> `host`; `[v6]:port` -> `[v6]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The request layer: `Host` first (before any handler compares `Origin` with it), then the
/// client's rate (when the server gave the peer's address).
pub(crate) async fn check(
    State(guard): State<Arc<HttpGuard>>,
    req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let host = req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    if let Some(host) = host {
        if !guard.hosts.allows(host) {
            let ip = peer.unwrap_or(IpAddr::from([0, 0, 0, 0]));
            guard.refused(&guard.counts.host_refused, "http_allowed_hosts", ip);
            let body = ErrorBody::new(
                "host_not_allowed",
                format!("host {host:?} is not in bridge.http_allowed_hosts"),
            );
            return (StatusCode::MISDIRECTED_REQUEST, Json(body)).into_response();
        }
    } else if req.headers().contains_key(header::HOST) {
        // A Host header that is not text.
        let body = ErrorBody::new("host_not_allowed", "the Host header is not valid");
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    if let Some(ip) = peer {
        if let Err(wait) = guard.take_token(ip, Instant::now()) {
            guard.refused(&guard.counts.rate_limited, "http_rate_per_sec", ip);
            let body = ErrorBody::new(
                "rate_limited",
                "too many requests from this client (bridge.http_rate_per_sec); retry later",
            );
            let mut res = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            return res;
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_allow_ip_literals_loopback_names_and_listed_names_only() {
        let hosts = Hosts::new(&["hub.example.lan".to_owned(), "*.hubs.lan".to_owned()]);
        for ok in [
            "127.0.0.1:8080",
            "10.1.2.3",
            "[::1]:8080",
            "[fe80::1]",
            "localhost",
            "LOCALHOST:80",
            "app.localhost",
            "hub.example.lan",
            "Hub.Example.Lan.:8080",
            "x.hubs.lan",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for no in [
            "evil.example",
            "evil.example:8080",
            "hub.example.lan.evil.example",
            "localhost.evil.example",
            "[not-ip]",
            "hubs.lan.evil",
            "",
        ] {
            assert!(!hosts.allows(no), "{no}");
        }
        assert!(Hosts::new(&["*".to_owned()]).allows("evil.example"));
    }

    #[test]
    fn the_global_cap_leaves_half_the_open_files() {
        assert_eq!(connection_cap(4096, Some(1024)), 512);
        assert_eq!(connection_cap(4096, Some(20_000)), 4096);
        assert_eq!(connection_cap(4096, None), 4096);
        assert_eq!(connection_cap(4096, Some(1)), 1);
        // This process has a limit on Linux.
        assert!(open_file_limit().is_some_and(|n| n > 0));
    }

    #[test]
    fn ipv6_clients_are_their_64_and_mapped_v4_is_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_of(a), client_of(b));
        assert_ne!(client_of(a), client_of(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_of(mapped), IpAddr::from([10, 0, 0, 1]));
    }

    #[test]
    fn buckets_refill_at_the_rate_and_refilled_ones_are_dropped_when_full() {
        let mut t = RateTable::default();
        let ip = IpAddr::from([10, 0, 0, 1]);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(t.take(ip, t0, 2.0, 5.0), Ok(()));
        }
        assert_eq!(t.take(ip, t0, 2.0, 5.0), Err(1));
        assert_eq!(
            t.take(ip, t0 + Duration::from_millis(600), 2.0, 5.0),
            Ok(())
        );
        // The table is bounded: when full, refilled buckets go; active ones stay.
        let mut t = RateTable::default();
        for i in 0..RATE_CLIENTS_MAX as u32 {
            t.take(IpAddr::from(i.to_be_bytes()), t0, 1.0, 2.0).unwrap();
        }
        let late = t0 + Duration::from_secs(5);
        t.take(ip, late, 1.0, 2.0).unwrap();
        assert_eq!(t.buckets.len(), 1);
    }

    #[test]
    fn connection_slots_are_capped_globally_and_per_client_and_freed_on_drop() {
        let cfg = BridgeConfig {
            http_max_connections: 3,
            http_max_connections_per_ip: 2,
            ..BridgeConfig::default()
        };
        let g = Arc::new(HttpGuard::new(&cfg));
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let p1 = g.admit(a).unwrap();
        let _p2 = g.admit(a).unwrap();
        assert!(g.admit(a).is_none());
        let _p3 = g.admit(b).unwrap();
        assert!(g.admit(b).is_none());
        drop(p1);
        assert!(g.admit(a).is_some());
        let c = &g.counts;
        assert_eq!(c.refused_per_ip.load(Ordering::Relaxed), 1);
        assert_eq!(c.refused_global.load(Ordering::Relaxed), 1);
        assert_eq!(c.open.load(Ordering::Relaxed), 2);
        assert_eq!(g.per_client.lock().unwrap().len(), 2);
    }
}
