//! Our broker configuration (`[broker]` in `edgewatch.toml`) and its mapping to rumqttd.
//!
//! Defaults written here equal the values in `config/edgewatch.toml`; a test checks that.

use edgewatch_protocol::permissions::Grants;
use edgewatch_protocol::InvalidSetting;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `[broker]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// MQTT 3.1.1 over TCP.
    #[serde(deserialize_with = "listeners::mqtt")]
    pub mqtt: ListenerConfig,
    /// MQTT 5 over TCP (rumqttd serves each protocol version on its own port).
    #[serde(deserialize_with = "listeners::mqtt5")]
    pub mqtt5: ListenerConfig,
    /// MQTT 3.1.1 over WebSocket (subprotocol `mqtt`), for MQTT.js in browsers.
    #[serde(deserialize_with = "listeners::websocket")]
    pub websocket: ListenerConfig,
    /// MQTT 3.1.1 over TLS.
    pub tls: TlsListenerConfig,
    /// Accept clients without credentials on non-loopback addresses. Like Mosquitto 2, when no
    /// user is configured and this is false, every listener binds to loopback only.
    pub allow_anonymous: bool,
    /// Device accounts. Passwords are argon2 hashes printed by `edgewatch passwd`.
    pub users: Vec<UserConfig>,
    /// Roles by name: what their accounts may read and publish.
    pub roles: std::collections::BTreeMap<String, RoleConfig>,
    /// Connection limits.
    pub limits: LimitsConfig,
    /// rumqttd router sizing.
    pub router: RouterConfig,
    /// How often the `$SYS` topics are published, seconds (Mosquitto's `sys_interval`; 0: no
    /// `$SYS` topics). See `crate::sys`.
    pub sys_interval_secs: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            mqtt: ListenerConfig::enabled(listeners::MQTT),
            mqtt5: ListenerConfig::enabled(listeners::MQTT5),
            websocket: ListenerConfig::enabled(listeners::WEBSOCKET),
            tls: TlsListenerConfig::default(),
            allow_anonymous: false,
            users: Vec::new(),
            roles: Default::default(),
            limits: LimitsConfig::default(),
            router: RouterConfig::default(),
            sys_interval_secs: 10,
        }
    }
}

mod listeners;

pub(crate) use listeners::EffectiveListener;

/// One plain listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Whether the listener runs.
    pub enabled: bool,
    /// Address to bind; port 0 picks a free port.
    pub listen: SocketAddr,
}

impl ListenerConfig {
    fn enabled(addr: &str) -> Self {
        Self {
            enabled: true,
            listen: addr.parse().expect("valid default address"),
        }
    }
}

/// The TLS listener: MQTT 3.1.1 over TLS (rustls) with a PEM certificate chain and key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsListenerConfig {
    /// Whether the listener runs.
    pub enabled: bool,
    /// Address to bind.
    pub listen: SocketAddr,
    /// PEM certificate chain.
    pub cert_path: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
}

impl Default for TlsListenerConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "0.0.0.0:8883".parse().expect("valid default address"),
            cert_path: PathBuf::new(),
            key_path: PathBuf::new(),
        }
    }
}

/// One device account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// MQTT username.
    pub username: String,
    /// argon2 PHC hash of the password (`edgewatch passwd` prints one).
    pub password_hash: String,
    /// The role (`[broker.roles.NAME]`) giving what this account may read and publish;
    /// without one, everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// What the accounts of a role may read and publish: topic filters, with `%u` for the
/// username and `%c` for the client id (e.g. `publish = ["sensors/%u/#"]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleConfig {
    /// Filters its accounts may subscribe to (a subscription must be covered by one).
    pub read: Vec<String>,
    /// Filters of the topics its accounts may publish to (the will included).
    pub publish: Vec<String>,
    /// Whether its accounts may read the hub's `GET /metrics` (an account without a role
    /// may). Default false.
    pub metrics: bool,
}

/// Limits applied to every MQTT connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Maximum concurrent MQTT connections (all listeners and in-process links together).
    pub max_connections: usize,
    /// Maximum size of one incoming MQTT packet in bytes, fixed header included (Mosquitto's
    /// `max_packet_size`; MQTT 5 clients are told in the CONNACK); a larger one closes the
    /// connection (MQTT 5: after DISCONNECT 0x95).
    pub max_packet_size: usize,
    /// Maximum unacknowledged QoS 1/2 publishes in flight per connection.
    pub max_inflight: usize,
    /// Time a new connection has to send CONNECT, in milliseconds (at most 65535).
    pub connect_timeout_ms: u16,
    /// A client asking for a shorter keep-alive (but not 0) gets this one, in seconds.
    pub keep_alive_min_secs: u16,
    /// A client asking for a longer keep-alive gets this one, in seconds (MQTT 5 clients are
    /// told through the CONNACK's server keep-alive).
    pub keep_alive_max_secs: u16,
    /// Publishes the broker may hold for the bridge before it holds PUBACKs back (for as long
    /// as the bridge needs, up to `ack_stall_max_secs`), so QoS 1 devices slow down to what
    /// the store takes; above half of it, QoS 0 publishes are dropped.
    pub ingest_backlog_max: u64,
    /// MQTT connections one IP address may have open (CONNECT sent) at once.
    pub max_connections_per_ip: u32,
    /// Password checks (argon2, about 19 MiB each) running at once.
    pub login_concurrency: usize,
    /// Logins waiting for a password check; more are refused at once.
    pub login_queue_max: usize,
    /// How long a successful login is remembered, so it is not checked again, in seconds
    /// (0: never).
    pub login_cache_secs: u64,
    /// The longest backoff of an address or username after repeated failed logins, seconds.
    pub login_backoff_max_secs: u64,
    /// The longest a PUBACK waits for the bridge (a stalled writer) before the connection is
    /// closed instead, seconds: the device then sends its reading again.
    pub ack_stall_max_secs: u64,
    /// Filters one MQTT connection may hold; more in a SUBSCRIBE are refused in the SUBACK
    /// (0x80; MQTT 5: 0x97 quota exceeded). Filters over 1 KiB or 32 levels are always refused.
    pub max_subscriptions_per_client: usize,
    /// Distinct filters MQTT clients may subscribe to over the broker's life (rumqttd keeps a
    /// commit log per filter and never frees it); a new one past this is refused like above.
    pub max_filters: usize,
    /// Longest topic of a publish or last will, in bytes; a longer one closes the connection.
    pub max_topic_bytes: usize,
    /// Most levels in a topic of a publish or last will; a deeper one closes the connection.
    pub max_topic_levels: usize,
    /// Distinct topics outside `sensors/` clients may publish to over the broker's life
    /// (rumqttd caches every topic); a publish to a new one past this is dropped (QoS 0) or
    /// closes the connection (QoS 1/2, not acknowledged).
    pub max_topics_outside_readings: usize,
    /// Retained messages kept at once; a retained publish past this is delivered, not retained.
    pub max_retained_messages: usize,
    /// Bytes (topic + payload) of all retained messages together; as above.
    pub max_retained_bytes: u64,
    /// Largest payload retained; a larger retained publish is delivered, not retained.
    pub max_retained_payload_bytes: usize,
    /// Persistent sessions kept across a restart of the hub (0: none); a new one past this
    /// lasts until the hub stops (see [`crate::durable`]). Each keeps at most
    /// `max_subscriptions_per_client` filters.
    pub max_persisted_sessions: usize,
    /// Publishes per second one MQTT connection may send (0: unlimited); over it QoS 0
    /// publishes are dropped, QoS 1/2 ones delayed (up to 1 s each).
    pub max_publishes_per_sec_per_client: u64,
    /// Publish bytes (topic + payload) per second one MQTT connection may send (0: unlimited);
    /// as above.
    pub max_publish_bytes_per_sec_per_client: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_packet_size: 1_048_576,
            max_inflight: 100,
            connect_timeout_ms: 5_000,
            keep_alive_min_secs: 5,
            keep_alive_max_secs: 65_535,
            ingest_backlog_max: 50_000,
            max_connections_per_ip: 1_024,
            login_concurrency: 2,
            login_queue_max: 64,
            login_cache_secs: 600,
            login_backoff_max_secs: 30,
            ack_stall_max_secs: 60,
            max_subscriptions_per_client: 100,
            max_filters: 10_000,
            max_topic_bytes: 256,
            max_topic_levels: 16,
            max_topics_outside_readings: 10_000,
            max_retained_messages: 10_000,
            max_retained_bytes: 16 * 1024 * 1024,
            max_retained_payload_bytes: 64 * 1024,
            max_persisted_sessions: 10_000,
            max_publishes_per_sec_per_client: 250_000,
            max_publish_bytes_per_sec_per_client: 64 * 1024 * 1024,
        }
    }
}

/// Sizing of rumqttd's router. rumqttd's zero defaults drop every connection (0 connections
/// allowed, 0 outgoing packets) or panic; these work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Packets the router queues per connection before it stops reading that link's
    /// subscriptions until the connection catches up.
    pub max_outgoing_packet_count: u64,
    /// Size of one in-memory segment of the router's per-filter commit log, in bytes.
    pub max_segment_size: usize,
    /// In-memory segments kept per filter; older ones are dropped (a subscriber that far
    /// behind misses them).
    pub max_segment_count: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            max_outgoing_packet_count: 1_000,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 4,
        }
    }
}

/// The kinds of listener the broker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// MQTT 3.1.1 over TCP.
    Mqtt,
    /// MQTT 5 over TCP.
    Mqtt5,
    /// MQTT 3.1.1 over WebSocket.
    WebSocket,
    /// MQTT 3.1.1 over TLS.
    Tls,
}

impl ListenerKind {
    /// The config section name of this listener (`broker.<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Mqtt => "mqtt",
            Self::Mqtt5 => "mqtt5",
            Self::WebSocket => "websocket",
            Self::Tls => "tls",
        }
    }
}

impl std::fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl BrokerConfig {
    /// Checks values that serde cannot: hashes parse, TLS files exist, limits are sane.
    /// Errors name the dotted key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        for (i, u) in self.users.iter().enumerate() {
            if u.username.is_empty() {
                return Err(InvalidSetting::new(
                    format!("broker.users[{i}].username"),
                    "must not be empty",
                ));
            }
            crate::password::validate_hash(&u.password_hash)
                .map_err(|e| InvalidSetting::new(format!("broker.users[{i}].password_hash"), e))?;
            if let Some(role) = u.role.as_ref().filter(|r| !self.roles.contains_key(*r)) {
                return Err(InvalidSetting::new(
                    format!("broker.users[{i}].role"),
                    format!("no role {role:?} in [broker.roles]"),
                ));
            }
        }
        self.role_grants()?;
        if self.tls.enabled {
            for (key, path) in [
                ("cert_path", &self.tls.cert_path),
                ("key_path", &self.tls.key_path),
            ] {
                let what = match key {
                    "cert_path" => "the PEM certificate chain",
                    _ => "the PEM private key",
                };
                if path.as_os_str().is_empty() {
                    return Err(InvalidSetting::new(
                        format!("broker.tls.{key}"),
                        format!("is missing: the TLS listener is enabled and needs {what}"),
                    ));
                }
                if !path.is_file() {
                    return Err(InvalidSetting::new(
                        format!("broker.tls.{key}"),
                        format!("{what}: file {} does not exist", path.display()),
                    ));
                }
            }
        }
        self.validate_limits()?;
        self.validate_caps()
    }

    /// The caps on client state and rates in `broker.limits` (see [`crate::caps`]).
    fn validate_caps(&self) -> Result<(), InvalidSetting> {
        let l = &self.limits;
        let at_least_one: [(&str, u64); 7] = [
            (
                "max_subscriptions_per_client",
                l.max_subscriptions_per_client as u64,
            ),
            ("max_filters", l.max_filters as u64),
            ("max_topic_levels", l.max_topic_levels as u64),
            (
                "max_topics_outside_readings",
                l.max_topics_outside_readings as u64,
            ),
            ("max_retained_messages", l.max_retained_messages as u64),
            ("max_retained_bytes", l.max_retained_bytes),
            (
                "max_retained_payload_bytes",
                l.max_retained_payload_bytes as u64,
            ),
        ];
        for (key, value) in at_least_one {
            if value == 0 {
                return Err(InvalidSetting::new(
                    format!("broker.limits.{key}"),
                    "must be at least 1",
                ));
            }
        }
        // `sensors/{deviceId}/{metric}` with ids of up to 64 bytes must fit.
        if l.max_topic_bytes < 140 || l.max_topic_bytes > 65_535 {
            return Err(InvalidSetting::new(
                "broker.limits.max_topic_bytes",
                "must be between 140 and 65535",
            ));
        }
        if l.max_topic_levels < 3 {
            return Err(InvalidSetting::new(
                "broker.limits.max_topic_levels",
                "must be at least 3 (sensors/{deviceId}/{metric})",
            ));
        }
        Ok(())
    }

    /// The `broker.limits` and `broker.router` part of [`BrokerConfig::validate`].
    fn validate_limits(&self) -> Result<(), InvalidSetting> {
        let l = &self.limits;
        if l.max_connections == 0 {
            return Err(InvalidSetting::new(
                "broker.limits.max_connections",
                "must be at least 1",
            ));
        }
        if l.max_packet_size < 64 {
            return Err(InvalidSetting::new(
                "broker.limits.max_packet_size",
                "must be at least 64 bytes",
            ));
        }
        if l.max_inflight == 0 {
            return Err(InvalidSetting::new(
                "broker.limits.max_inflight",
                "must be at least 1",
            ));
        }
        if l.keep_alive_min_secs > l.keep_alive_max_secs {
            return Err(InvalidSetting::new(
                "broker.limits.keep_alive_min_secs",
                "larger than keep_alive_max_secs",
            ));
        }
        if l.ingest_backlog_max == 0 {
            return Err(InvalidSetting::new(
                "broker.limits.ingest_backlog_max",
                "must be at least 1",
            ));
        }
        for (key, value) in [
            ("max_connections_per_ip", l.max_connections_per_ip as usize),
            ("login_concurrency", l.login_concurrency),
            ("login_queue_max", l.login_queue_max),
            ("ack_stall_max_secs", l.ack_stall_max_secs as usize),
        ] {
            if value == 0 {
                return Err(InvalidSetting::new(
                    format!("broker.limits.{key}"),
                    "must be at least 1",
                ));
            }
        }
        if l.keep_alive_max_secs == 0 {
            return Err(InvalidSetting::new(
                "broker.limits.keep_alive_max_secs",
                "must be at least 1",
            ));
        }
        let r = &self.router;
        if r.max_outgoing_packet_count == 0 {
            return Err(InvalidSetting::new(
                "broker.router.max_outgoing_packet_count",
                "must be at least 1",
            ));
        }
        if r.max_segment_size < 1024 {
            return Err(InvalidSetting::new(
                "broker.router.max_segment_size",
                "must be at least 1024",
            ));
        }
        if r.max_segment_count == 0 {
            return Err(InvalidSetting::new(
                "broker.router.max_segment_count",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// True when devices must log in.
    pub fn requires_login(&self) -> bool {
        !self.users.is_empty()
    }

    /// rumqttd's router configuration.
    pub(crate) fn rumqttd_router(&self) -> rumqttd::RouterConfig {
        rumqttd::RouterConfig {
            // +8 leaves room for our in-process links (bridge, serial readers).
            max_connections: self.limits.max_connections + 8,
            max_outgoing_packet_count: self.router.max_outgoing_packet_count,
            max_segment_size: self.router.max_segment_size,
            max_segment_count: self.router.max_segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        }
    }

    /// rumqttd's settings for one listener.
    pub(crate) fn rumqttd_server(
        &self,
        listener: &EffectiveListener,
        credentials: &crate::Credentials,
    ) -> rumqttd::ServerSettings {
        let mut connections = rumqttd::ConnectionSettings {
            connection_timeout_ms: self.limits.connect_timeout_ms,
            max_payload_size: crate::wire::remaining_limit(self.limits.max_packet_size),
            max_inflight_count: self.limits.max_inflight,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        if !credentials.is_empty() {
            let creds = credentials.clone();
            // Our codec decides every login when it reads the CONNECT and leaves its ticket
            // in place of an accepted password (see `crate::connect_policy`).
            connections.set_auth_handler(move |_client_id, _user, pass| {
                let ok = creds.ticket_ok(&pass);
                async move { ok }
            });
        }
        let tls = (listener.kind == crate::ListenerKind::Tls).then(|| rumqttd::TlsConfig::Rustls {
            capath: None,
            certpath: self.tls.cert_path.display().to_string(),
            keypath: self.tls.key_path.display().to_string(),
        });
        rumqttd::ServerSettings {
            name: listener.kind.name().to_owned(),
            listen: listener.addr,
            tls,
            next_connection_delay_ms: 0,
            connections,
        }
    }

    /// Each role's grants; the error names the role's key.
    fn role_grants(&self) -> Result<BTreeMap<&str, Grants>, InvalidSetting> {
        self.roles
            .iter()
            .map(|(name, role)| {
                Grants::new(role.read.clone(), role.publish.clone())
                    .map(|g| (name.as_str(), g))
                    .map_err(|e| InvalidSetting::new(format!("broker.roles.{name}"), e.to_string()))
            })
            .collect()
    }

    /// What each account may read and publish (accounts without a role: everything).
    fn user_grants(&self) -> HashMap<String, Grants> {
        let roles = self.role_grants().unwrap_or_default();
        self.users
            .iter()
            .map(|u| {
                let grants = match &u.role {
                    Some(role) => roles
                        .get(role.as_str())
                        .cloned()
                        .unwrap_or_else(Grants::none),
                    None => Grants::all(),
                };
                (u.username.clone(), grants)
            })
            .collect()
    }

    /// Whether the account `username` may read `GET /metrics`: no role, or a role with
    /// `metrics = true`.
    pub fn may_read_metrics(&self, username: &str) -> bool {
        self.users
            .iter()
            .find(|u| u.username == username)
            .is_some_and(|u| match &u.role {
                None => true,
                Some(role) => self.roles.get(role).is_some_and(|r| r.metrics),
            })
    }

    /// The users as a credentials table.
    pub fn credentials(&self) -> crate::Credentials {
        let l = &self.limits;
        let limits = crate::login::LoginLimits {
            concurrency: l.login_concurrency,
            queue_max: l.login_queue_max,
            cache_secs: l.login_cache_secs,
            backoff_max_secs: l.login_backoff_max_secs,
        };
        crate::Credentials::with_limits(
            self.users
                .iter()
                .map(|u| (u.username.clone(), u.password_hash.clone())),
            limits,
        )
        .with_grants(self.user_grants())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_checked_and_resolve_per_account() {
        let mut cfg = BrokerConfig::default();
        let hash = crate::password::hash_password("pw").unwrap();
        cfg.users.push(UserConfig {
            username: "sensor-1".into(),
            password_hash: hash.clone(),
            role: Some("device".into()),
        });
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.key, "broker.users[0].role", "{err}");
        cfg.roles.insert(
            "device".into(),
            RoleConfig {
                read: vec![],
                publish: vec!["sensors/%u/#/x".into()],
                metrics: false,
            },
        );
        assert_eq!(cfg.validate().unwrap_err().key, "broker.roles.device");
        cfg.roles.get_mut("device").unwrap().publish = vec!["sensors/%u/#".into()];
        cfg.validate().unwrap();
        let creds = cfg.credentials();
        let p = creds.permissions("sensor-1", "c1").expect("restricted");
        assert!(p.may_publish("sensors/sensor-1/t") && !p.may_publish("sensors/x/t"));
        assert!(creds.permissions("someone-else", "c").is_none());
    }

    #[test]
    fn secure_default_narrows_to_loopback() {
        let cfg = BrokerConfig::default();
        let l = cfg.effective_listeners();
        assert_eq!(l.len(), 3);
        assert!(l.iter().all(|l| l.addr.ip().is_loopback()));
        assert_eq!(l[0].addr.port(), 1883);
    }

    #[test]
    fn credentials_keep_configured_address() {
        let cfg = BrokerConfig {
            users: vec![UserConfig {
                username: "d1".into(),
                password_hash: crate::hash_password("pw").unwrap(),
                role: None,
            }],
            ..Default::default()
        };
        cfg.validate().unwrap();
        assert!(cfg
            .effective_listeners()
            .iter()
            .all(|l| l.addr.ip().is_unspecified()));
    }

    #[test]
    fn allow_anonymous_keeps_configured_address() {
        let cfg = BrokerConfig {
            allow_anonymous: true,
            ..Default::default()
        };
        assert!(cfg
            .effective_listeners()
            .iter()
            .all(|l| l.addr.ip().is_unspecified()));
    }

    #[test]
    fn validate_names_keys() {
        let mut cfg = BrokerConfig::default();
        cfg.users.push(UserConfig {
            username: "u".into(),
            password_hash: "plain".into(),
            role: None,
        });
        assert!(cfg
            .validate()
            .unwrap_err()
            .key
            .eq("broker.users[0].password_hash"));
        let mut cfg = BrokerConfig::default();
        cfg.tls.enabled = true;
        cfg.tls.cert_path = "/nonexistent.pem".into();
        assert!(cfg.validate().unwrap_err().key.eq("broker.tls.cert_path"));
        let mut cfg = BrokerConfig::default();
        cfg.limits.max_topic_bytes = 100;
        assert_eq!(
            cfg.validate().unwrap_err().key,
            "broker.limits.max_topic_bytes"
        );
        let mut cfg = BrokerConfig::default();
        cfg.limits.max_retained_bytes = 0;
        assert_eq!(
            cfg.validate().unwrap_err().key,
            "broker.limits.max_retained_bytes"
        );
        let mut cfg = BrokerConfig::default();
        cfg.limits.max_topic_levels = 2;
        assert_eq!(
            cfg.validate().unwrap_err().key,
            "broker.limits.max_topic_levels"
        );
    }
}
