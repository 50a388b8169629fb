//! [`BridgeConfig`]: every setting of the bridge, the `[bridge]` section of the config file.

use edgewatch_protocol::InvalidSetting;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ingest::external::ExternalConfig;
use crate::presence::PresenceConfig;
use crate::store::{RetentionPolicy, StoreOptions};
use crate::writer::WriterConfig;

/// Largest `presence_stale_after_min_s`: 30 days.
pub const MAX_PRESENCE_STALE_S: u64 = 30 * 86_400;

/// Bridge settings. Every field has a default; unknown fields are an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// Directory of the sled database (created if missing). Default `data`.
    pub data_dir: PathBuf,
    /// Writer input queue capacity, in readings. When full, ingest waits (backpressure onto
    /// the MQTT link). Default 8192.
    pub queue_capacity: usize,
    /// Most readings committed in one batch. Default 1000.
    pub batch_max: usize,
    /// Group commit, in milliseconds: the least time between the starts of two flushes to disk.
    /// The writer applies each batch at once and publishes it live; the flush that makes it
    /// durable (and sends its acknowledgements) starts when none is running and this long
    /// after the previous one started. Larger: fewer disk syncs, later acknowledgements; live
    /// delivery does not wait for it. 0 flushes whenever no flush is running. Default 5.
    pub flush_interval_ms: u64,
    /// Capacity of the committed-batch broadcast used by live fan-out, in batches. A receiver
    /// further behind is told how many batches it missed. Default 1024.
    pub broadcast_capacity: usize,
    /// Readings kept in memory in the series' open chunks: redelivered duplicates among them
    /// are found without reading the disk (older ones through the sealed chunks), and at most
    /// this many readings of the log are replayed at start-up. Default 262144.
    pub dedupe_window: usize,
    /// sled page cache in MiB. Default 64.
    pub cache_mb: u64,
    /// Keep readings and rollups this many days (by receive time); 0 keeps them forever.
    /// Default 30.
    pub retention_days: u32,
    /// Disk budget in MiB; 0 means no budget. Retention removes the oldest readings while the
    /// store's live bytes (log blocks, sealed chunks, rollup pages; not the files, which lag
    /// deletions as sled reclaims space lazily) are above half of it, never the newest readings
    /// worth a quarter of it (`store::RetentionPolicy`). Default 0.
    pub disk_budget_mb: u64,
    /// Seconds between retention steps when there is nothing to remove. Default 10.
    pub retention_interval_s: u64,
    /// Most log entries (and rollup buckets) one retention step removes, so ingest is never
    /// held up for long. Default 5000.
    pub retention_step: usize,
    /// Largest accepted payload in bytes; larger ones are rejected as `payload_too_large`.
    /// Default 16384.
    pub max_payload_bytes: usize,
    /// How many recent rejects `GET /v1/rejects` keeps. Default 100.
    pub rejects_kept: usize,
    /// HTTP listen address. Default `127.0.0.1:8080`.
    pub http_listen: String,
    /// PEM certificate chain (the server's certificate first): with `http_tls_key`, the
    /// server on `http_listen` speaks HTTPS only (API, live streams, WebSocket, dashboard).
    /// Both or neither. Default unset (plain HTTP).
    pub http_tls_cert: Option<PathBuf>,
    /// PEM private key of `http_tls_cert` (PKCS#8, PKCS#1 or SEC1). Default unset.
    pub http_tls_key: Option<PathBuf>,
    /// A plain-HTTP address that answers every request with `308 Permanent Redirect` to the
    /// same path and query over HTTPS (the request's host, the port of `http_listen`). Needs
    /// `http_tls_cert`. Default unset.
    pub http_redirect_listen: Option<String>,
    /// History queries served at once; more get `503` with `Retry-After`. Default 32.
    pub http_max_queries: usize,
    /// Largest `limit` of `GET /v1/readings` (larger is `413`). Default 10000.
    pub http_max_page: usize,
    /// Most points (series x buckets) a rollup query may return (more is `413`). Default 200000.
    pub http_max_points: usize,
    /// Open HTTP connections (every kind: requests, event streams, WebSockets); a connection
    /// over the cap gets a minimal `503` and is closed. At most half the process's open-file
    /// limit (lowered with a warning at start). Default 4096.
    pub http_max_connections: usize,
    /// Open HTTP connections from one client address (an IPv6 client: its /64); over it, as
    /// above. Default 256.
    pub http_max_connections_per_ip: usize,
    /// Seconds a request head may take to arrive, on every connection and every request of
    /// it; the wait for the next request on an idle keep-alive connection counts too, so it
    /// is also the idle timeout. The connection is closed. Default 10.
    pub http_header_timeout_secs: u64,
    /// Largest request head (request line and headers), bytes, 8192 to 1048576; larger gets
    /// `431`. With `http_max_connections`, it bounds the memory of heads in flight. Default
    /// 16384.
    pub http_max_head_bytes: usize,
    /// Requests per second per client address (token bucket; an IPv6 client: its /64); over
    /// it: `429` with `Retry-After`. 0: no limit. Default 200.
    pub http_rate_per_sec: u32,
    /// Requests a client may send at once above the rate (the bucket's size). Default 1000.
    pub http_rate_burst: u32,
    /// Host names the HTTP server answers to (DNS rebinding defence), e.g. `hub.example.lan`
    /// or `*.example.lan`; `"*"` allows any. IP literals, `localhost` (and `*.localhost`), this
    /// machine's host name and `{hostname}.local` are always allowed; other names get `421`.
    /// Default empty.
    pub http_allowed_hosts: Vec<String>,
    /// External broker to consume, `mqtt://host:port`; unset when the embedded broker feeds
    /// the bridge. Default unset.
    pub mqtt_url: Option<String>,
    /// Client id on the external broker; the broker keeps our persistent session under it.
    /// Default `edgewatch-bridge`.
    pub mqtt_client_id: String,
    /// Topic filter subscribed on the external broker. Default `sensors/#`.
    pub mqtt_subscribe: String,
    /// Unacknowledged publishes from the external broker we hold at most: our MQTT 5 Receive
    /// Maximum, capped at 32767. Default 10000.
    pub mqtt_ack_queue: usize,
    /// A device that reports readings is shown `stale` after this many of its observed
    /// reporting intervals without a reading (see [`crate::presence`]). 1 to 100. Default 3.
    pub presence_stale_intervals: u32,
    /// ... and never before this many seconds of silence (also the threshold while its
    /// interval is not known yet). 1 to 2592000 (30 days). Default 60.
    pub presence_stale_after_min_s: u64,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            queue_capacity: 8192,
            batch_max: 1000,
            flush_interval_ms: 5,
            broadcast_capacity: 1024,
            dedupe_window: 262_144,
            cache_mb: 64,
            retention_days: 30,
            disk_budget_mb: 0,
            retention_interval_s: 10,
            retention_step: 5000,
            max_payload_bytes: 16 * 1024,
            rejects_kept: 100,
            http_listen: "127.0.0.1:8080".to_owned(),
            http_tls_cert: None,
            http_tls_key: None,
            http_redirect_listen: None,
            http_max_queries: 32,
            http_max_page: 10_000,
            http_max_points: 200_000,
            http_max_connections: 4096,
            http_max_connections_per_ip: 256,
            http_header_timeout_secs: 10,
            http_max_head_bytes: 16 * 1024,
            http_rate_per_sec: 200,
            http_rate_burst: 1000,
            http_allowed_hosts: Vec::new(),
            mqtt_url: None,
            mqtt_client_id: "edgewatch-bridge".to_owned(),
            mqtt_subscribe: "sensors/#".to_owned(),
            mqtt_ack_queue: 10_000,
            presence_stale_intervals: 3,
            presence_stale_after_min_s: 60,
        }
    }
}

impl BridgeConfig {
    /// Store tuning from this config.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            dedupe_window: self.dedupe_window.max(2 * self.batch_max),
            cache_bytes: self.cache_mb.saturating_mul(1024 * 1024),
        }
    }

    /// Retention policy, `None` when neither age nor budget is set.
    pub fn retention(&self) -> Option<RetentionPolicy> {
        let max_age_ms =
            (self.retention_days > 0).then(|| i64::from(self.retention_days) * 86_400_000);
        let disk_budget_bytes =
            (self.disk_budget_mb > 0).then(|| self.disk_budget_mb.saturating_mul(1024 * 1024));
        if max_age_ms.is_none() && disk_budget_bytes.is_none() {
            return None;
        }
        Some(RetentionPolicy {
            max_age_ms,
            disk_budget_bytes,
            step: self.retention_step.max(1),
        })
    }

    /// Writer settings from this config.
    pub fn writer(&self) -> WriterConfig {
        WriterConfig {
            queue_capacity: self.queue_capacity.max(1),
            batch_max: self.batch_max.max(1),
            flush_interval: Duration::from_millis(self.flush_interval_ms),
            broadcast_capacity: self.broadcast_capacity.max(1),
            retention: self.retention(),
            retention_interval: Duration::from_secs(self.retention_interval_s.max(1)),
            stall: crate::writer::Stall::from_env(),
        }
    }

    /// Presence settings from this config.
    pub fn presence(&self) -> PresenceConfig {
        PresenceConfig {
            stale_after_min: Duration::from_secs(self.presence_stale_after_min_s.max(1)),
            stale_intervals: self.presence_stale_intervals.max(1),
        }
    }

    /// Checks what the types cannot; the message starts with the dotted key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        self.validate_http()?;
        self.validate_tls()?;
        if !(1..=100).contains(&self.presence_stale_intervals) {
            return Err(InvalidSetting::new(
                "bridge.presence_stale_intervals",
                format!("must be 1 to 100, not {}", self.presence_stale_intervals),
            ));
        }
        if !(1..=MAX_PRESENCE_STALE_S).contains(&self.presence_stale_after_min_s) {
            return Err(InvalidSetting::new(
                "bridge.presence_stale_after_min_s",
                format!(
                    "must be 1 to {MAX_PRESENCE_STALE_S} (30 days), not {}",
                    self.presence_stale_after_min_s
                ),
            ));
        }
        Ok(())
    }

    /// The HTTP limits: caps and the timeout at least 1, a head buffer hyper accepts, no
    /// empty host name.
    fn validate_http(&self) -> Result<(), InvalidSetting> {
        for (key, v) in [
            ("http_max_connections", self.http_max_connections as u64),
            (
                "http_max_connections_per_ip",
                self.http_max_connections_per_ip as u64,
            ),
            ("http_header_timeout_secs", self.http_header_timeout_secs),
        ] {
            if v == 0 {
                return Err(InvalidSetting::new(
                    format!("bridge.{key}"),
                    "must be at least 1",
                ));
            }
        }
        if !(8192..=1 << 20).contains(&self.http_max_head_bytes) {
            return Err(InvalidSetting::new(
                "bridge.http_max_head_bytes",
                format!("must be 8192 to 1048576, not {}", self.http_max_head_bytes),
            ));
        }
        if self.http_allowed_hosts.iter().any(|h| h.trim().is_empty()) {
            return Err(InvalidSetting::new(
                "bridge.http_allowed_hosts",
                "a host name is empty",
            ));
        }
        Ok(())
    }

    /// HTTPS: certificate and key both or neither, both files present (their contents are
    /// read at start, `http::tls`), and a redirect only to an HTTPS server.
    fn validate_tls(&self) -> Result<(), InvalidSetting> {
        match (&self.http_tls_cert, &self.http_tls_key) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(InvalidSetting::new(
                    "bridge.http_tls_key",
                    "missing: bridge.http_tls_cert is set (set both or neither)",
                ))
            }
            (None, Some(_)) => {
                return Err(InvalidSetting::new(
                    "bridge.http_tls_cert",
                    "missing: bridge.http_tls_key is set (set both or neither)",
                ))
            }
            (Some(cert), Some(key)) => {
                for (name, path) in [("http_tls_cert", cert), ("http_tls_key", key)] {
                    if !path.is_file() {
                        return Err(InvalidSetting::new(
                            format!("bridge.{name}"),
                            format!("file {} does not exist", path.display()),
                        ));
                    }
                }
            }
        }
        let Some(redirect) = &self.http_redirect_listen else {
            return Ok(());
        };
        if self.http_tls_cert.is_none() {
            return Err(InvalidSetting::new(
                "bridge.http_redirect_listen",
                "redirects to HTTPS, which needs bridge.http_tls_cert and bridge.http_tls_key",
            ));
        }
        if redirect.parse::<SocketAddr>().is_err() {
            return Err(InvalidSetting::new(
                "bridge.http_redirect_listen",
                format!("not an address: {redirect:?} (expected e.g. 0.0.0.0:80)"),
            ));
        }
        Ok(())
    }

    /// External source settings, when `mqtt_url` is set.
    pub fn external(&self) -> Option<ExternalConfig> {
        let url = self.mqtt_url.clone()?;
        let mut c = ExternalConfig::new(url);
        c.client_id.clone_from(&self.mqtt_client_id);
        c.subscribe.clone_from(&self.mqtt_subscribe);
        c.ack_queue = self.mqtt_ack_queue.max(1);
        c.max_packet_bytes = c.max_packet_bytes.max(self.max_payload_bytes + 1024);
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_limits_are_checked() {
        assert!(BridgeConfig::default().validate().is_ok());
        let bad = [
            BridgeConfig {
                http_max_connections: 0,
                ..BridgeConfig::default()
            },
            BridgeConfig {
                http_max_connections_per_ip: 0,
                ..BridgeConfig::default()
            },
            BridgeConfig {
                http_header_timeout_secs: 0,
                ..BridgeConfig::default()
            },
            BridgeConfig {
                http_max_head_bytes: 8191,
                ..BridgeConfig::default()
            },
            BridgeConfig {
                http_allowed_hosts: vec![" ".to_owned()],
                ..BridgeConfig::default()
            },
        ];
        for cfg in bad {
            let err = cfg.validate().unwrap_err();
            assert!(err.to_string().starts_with("bridge.http_"), "{err}");
        }
    }

    #[test]
    fn tls_settings_are_checked_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("x.pem");
        std::fs::write(&pem, "").unwrap();
        let with = |cert: Option<&str>, key: Option<&str>, redirect: Option<&str>| BridgeConfig {
            http_tls_cert: cert.map(|c| dir.path().join(c)),
            http_tls_key: key.map(|k| dir.path().join(k)),
            http_redirect_listen: redirect.map(str::to_owned),
            ..BridgeConfig::default()
        };
        let key_of = |cfg: BridgeConfig| cfg.validate().unwrap_err().key;
        assert_eq!(
            key_of(with(Some("x.pem"), None, None)),
            "bridge.http_tls_key"
        );
        assert_eq!(
            key_of(with(None, Some("x.pem"), None)),
            "bridge.http_tls_cert"
        );
        assert_eq!(
            key_of(with(Some("no.pem"), Some("x.pem"), None)),
            "bridge.http_tls_cert"
        );
        assert_eq!(
            key_of(with(Some("x.pem"), Some("no.pem"), None)),
            "bridge.http_tls_key"
        );
        for redirect in [
            with(None, None, Some("0.0.0.0:80")),
            with(Some("x.pem"), Some("x.pem"), Some("port 80")),
        ] {
            assert_eq!(key_of(redirect), "bridge.http_redirect_listen");
        }
        assert!(with(Some("x.pem"), Some("x.pem"), Some("127.0.0.1:0"))
            .validate()
            .is_ok());
    }
}
