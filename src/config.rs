//! The whole configuration file, `edgewatch.toml`.
//!
//! Precedence: command-line flags override environment variables, which override the file,
//! which overrides the defaults in code (equal to `config/edgewatch.toml`, checked by a test).
//! Errors name the file and the dotted key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use edgewatch_bridge::http::auth::AuthConfig;
use edgewatch_bridge::live::LiveConfig;
use edgewatch_bridge::BridgeConfig;
use edgewatch_broker::BrokerConfig;
use edgewatch_protocol::InvalidSetting;
use serde::{Deserialize, Serialize};

/// Everything in `edgewatch.toml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AppConfig {
    /// `[broker]`: the embedded MQTT broker.
    pub(crate) broker: BrokerConfig,
    /// `[bridge]`: ingest, the event log, history and the HTTP server.
    pub(crate) bridge: BridgeConfig,
    /// `[live]`: live delivery over SSE, WebSocket and long polling.
    pub(crate) live: LiveConfig,
    /// `[auth]`: who may use the HTTP side (tokens, JWT, sessions, anonymous access).
    pub(crate) auth: AuthConfig,
    /// `[[serial]]`: serial sensors read by `edgewatch run`.
    pub(crate) serial: Vec<edgewatch_serial::SerialPortConfig>,
    /// `[[uplink]]`: central MQTT brokers the stored readings are forwarded to.
    pub(crate) uplink: Vec<edgewatch_bridge::uplink::UplinkConfig>,
    /// `[ingest]`: mappings that read devices publishing outside `sensors/` (presets for
    /// Tasmota, Zigbee2MQTT, Shelly, ESPHome, Home Assistant, and your own).
    pub(crate) ingest: edgewatch_bridge::ingest::mapping::IngestConfig,
    /// `[log]`: logging.
    pub(crate) log: LogConfig,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LogConfig {
    /// A tracing filter such as `info` or `info,edgewatch_bridge=debug`. The `EDGEWATCH_LOG`
    /// environment variable overrides it.
    pub(crate) level: String,
    /// One JSON object per line (with the current spans) instead of human-readable text.
    pub(crate) json: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            json: false,
        }
    }
}

/// A configuration error: which file, which key, what is wrong.
#[derive(Debug)]
pub(crate) struct ConfigError {
    pub(crate) file: Option<PathBuf>,
    pub(crate) key: String,
    pub(crate) message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self
            .file
            .as_ref()
            .map_or_else(|| "configuration".to_owned(), |p| p.display().to_string());
        if self.key.is_empty() {
            write!(f, "{file}: {}", self.message)
        } else {
            write!(f, "{file}: `{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Values that override the file (from flags or `EDGEWATCH_*` variables).
#[derive(Debug, Default, Clone)]
pub(crate) struct Overrides {
    pub(crate) mqtt_listen: Option<SocketAddr>,
    pub(crate) mqtt5_listen: Option<SocketAddr>,
    pub(crate) ws_listen: Option<SocketAddr>,
    /// Also enables the TLS listener.
    pub(crate) tls_listen: Option<SocketAddr>,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    pub(crate) http_listen: Option<SocketAddr>,
    pub(crate) data_dir: Option<PathBuf>,
}

impl AppConfig {
    /// Parses TOML text; `file` is only used in error messages.
    pub(crate) fn parse(text: &str, file: Option<&Path>) -> Result<AppConfig, ConfigError> {
        let de = toml::Deserializer::new(text);
        let cfg: AppConfig = serde_path_to_error::deserialize(de).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let message = inner.message().to_owned();
            let key = dotted_key(&path, &message);
            let location = inner
                .span()
                .map(|span| line_of(text, span.start))
                .map(|line| format!(" (line {line})"))
                .unwrap_or_default();
            ConfigError {
                file: file.map(Path::to_path_buf),
                key,
                message: format!("{message}{location}"),
            }
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Reads and parses a file.
    pub(crate) fn load(file: &Path) -> Result<AppConfig, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|err| ConfigError {
            file: Some(file.to_path_buf()),
            key: String::new(),
            message: format!("cannot read: {err}"),
        })?;
        Self::parse(&text, Some(file))
    }

    /// Checks what serde cannot.
    pub(crate) fn validate(&self, file: Option<&Path>) -> Result<(), ConfigError> {
        let named = |e: InvalidSetting| ConfigError {
            file: file.map(Path::to_path_buf),
            key: e.key,
            message: e.message,
        };
        self.broker.validate().map_err(named)?;
        self.live.validate().map_err(named)?;
        self.bridge.validate().map_err(named)?;
        self.auth.validate().map_err(named)?;
        for (i, port) in self.serial.iter().enumerate() {
            port.validate(i).map_err(named)?;
        }
        edgewatch_bridge::uplink::config::validate_all(&self.uplink).map_err(named)?;
        self.ingest.validate().map_err(named)?;
        if self.bridge.http_listen.parse::<SocketAddr>().is_err() {
            return Err(named(InvalidSetting::new(
                "bridge.http_listen",
                format!(
                    "not an address: {:?} (expected e.g. 127.0.0.1:8080)",
                    self.bridge.http_listen
                ),
            )));
        }
        if let Err(err) = crate::logging::parse_filter(&self.log.level) {
            return Err(ConfigError {
                file: file.map(Path::to_path_buf),
                key: "log.level".into(),
                message: format!("not a log filter: {err}"),
            });
        }
        Ok(())
    }

    /// Applies flag / environment overrides.
    pub(crate) fn apply(&mut self, o: &Overrides) {
        let b = &mut self.broker;
        for (listen, enabled, addr) in [
            (&mut b.mqtt.listen, &mut b.mqtt.enabled, o.mqtt_listen),
            (&mut b.mqtt5.listen, &mut b.mqtt5.enabled, o.mqtt5_listen),
            (
                &mut b.websocket.listen,
                &mut b.websocket.enabled,
                o.ws_listen,
            ),
            (&mut b.tls.listen, &mut b.tls.enabled, o.tls_listen),
        ] {
            if let Some(addr) = addr {
                *listen = addr;
                *enabled = true;
            }
        }
        if let Some(cert) = &o.tls_cert {
            b.tls.cert_path.clone_from(cert);
        }
        if let Some(key) = &o.tls_key {
            b.tls.key_path.clone_from(key);
        }
        if let Some(addr) = o.http_listen {
            self.bridge.http_listen = addr.to_string();
        }
        if let Some(dir) = &o.data_dir {
            self.bridge.data_dir.clone_from(dir);
        }
    }
}

/// The dotted key of an error. serde_path_to_error already ends the path with an unknown
/// key's name, except at the top level, where the path is `.` and the name is in the message.
fn dotted_key(path: &str, message: &str) -> String {
    if path != "." {
        return path.to_owned();
    }
    message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_default()
        .to_owned()
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |t| t.matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../config/edgewatch.toml");

    /// Every dotted key the config file can hold: the defaults serialized (lists of tables
    /// as `key[]`), plus the optional keys the shipped file shows commented out.
    fn schema_keys() -> std::collections::BTreeSet<String> {
        fn walk(prefix: &str, v: &toml::Value, out: &mut std::collections::BTreeSet<String>) {
            if !prefix.is_empty() {
                out.insert(prefix.to_owned());
            }
            if let toml::Value::Array(items) = v {
                for item in items {
                    walk(prefix, item, out);
                }
            }
            if let toml::Value::Table(t) = v {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
        }
        let mut out = std::collections::BTreeSet::new();
        let mut cfg = AppConfig::default();
        // One element in each list of tables, so their fields are in the schema.
        cfg.serial.push(edgewatch_serial::SerialPortConfig::new(
            "/dev/ttyUSB0",
            "d1",
        ));
        cfg.broker.users.push(edgewatch_broker::config::UserConfig {
            username: "u".into(),
            password_hash: "h".into(),
            role: Some("device".into()),
        });
        cfg.broker.roles.insert("device".into(), Default::default());
        cfg.uplink
            .push(edgewatch_bridge::uplink::UplinkConfig::default());
        let v = toml::Value::try_from(&cfg).unwrap();
        walk("", &v, &mut out);
        let mut section = String::new();
        for line in SHIPPED.lines() {
            let line = line.trim_start_matches('#').trim();
            if let Some(h) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = h.trim_matches(|c| c == '[' || c == ']').to_owned();
            } else if let Some((k, _)) = line.split_once(" = ") {
                if !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    out.insert(format!("{section}.{k}"));
                }
            }
        }
        out
    }

    /// A key as written in a document, with list indexes dropped: `serial[0].baud` ->
    /// `serial.baud`.
    fn unindexed(key: &str) -> String {
        let mut out = String::new();
        let mut skip = false;
        for c in key.chars() {
            match c {
                '[' => skip = true,
                ']' => skip = false,
                c if !skip => out.push(c),
                _ => {}
            }
        }
        out
    }

    /// Every key a document, a comment, a log line or an error names exists in the schema.
    #[test]
    fn every_key_named_anywhere_exists() {
        let schema = schema_keys();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![
            root.join("README.md"),
            root.join("ARCHITECTURE.md"),
            root.join("config/edgewatch.toml"),
        ];
        let mut dirs: Vec<std::path::PathBuf> =
            ["docs", "src", "bridge/src", "broker/src", "serial/src"]
                .iter()
                .map(|d| root.join(d))
                .collect();
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                    continue;
                }
                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
                if ["md", "rs", "json", "yaml", "toml"].contains(&ext) {
                    files.push(p);
                }
            }
        }
        let mut checked = 0;
        let mut missing = Vec::new();
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            // `key`, "key" and [section] mentions of the four top-level sections.
            for (i, _) in text.match_indices(['`', '"', '[']) {
                let rest = &text[i + 1..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || "._[]".contains(c)))
                    .unwrap_or(rest.len());
                let token = rest[..end].trim_end_matches(['.', ']']);
                let Some((top, _)) = token.split_once('.') else {
                    continue;
                };
                let top = unindexed(top);
                if !["broker", "bridge", "live", "log", "serial"].contains(&top.as_str()) {
                    continue;
                }
                // File names such as `bridge.rs` or `live.js` are not keys.
                let file_name = [".rs", ".toml", ".md", ".js", ".css"];
                if file_name.iter().any(|ext| token.ends_with(ext)) {
                    continue;
                }
                checked += 1;
                let key = unindexed(token);
                // Misspelt on purpose: the examples of the unknown-key error.
                if ["broker.limits.max_conections", "broker.mqtt.listn"].contains(&token) {
                    continue;
                }
                // `bridge.presence_stale_*` names a family of keys; a role's name is the
                // operator's (`broker.roles.NAME`, `broker.roles.device`).
                let family = key.ends_with('_') && schema.iter().any(|k| k.starts_with(&key))
                    || key.starts_with("broker.roles.");
                if !family && !schema.contains(&key) {
                    missing.push(format!("{}: {token}", f.display()));
                }
            }
        }
        assert!(
            checked > 50,
            "only {checked} keys found: is the walk broken?"
        );
        assert!(
            missing.is_empty(),
            "keys that do not exist:\n{}",
            missing.join("\n")
        );
    }

    #[test]
    fn shipped_file_equals_defaults() {
        let parsed = AppConfig::parse(SHIPPED, Some(Path::new("config/edgewatch.toml"))).unwrap();
        assert_eq!(parsed, AppConfig::default());
    }

    /// A listener section written in part keeps the rest of that listener's defaults; an
    /// enabled TLS listener without paths says they are missing.
    #[test]
    fn partial_listener_sections_and_missing_tls_paths() {
        let cfg = AppConfig::parse("[broker.mqtt5]\nenabled = false\n", None).unwrap();
        assert!(!cfg.broker.mqtt5.enabled);
        assert_eq!(cfg.broker.mqtt5.listen.port(), 1884);
        let cfg = AppConfig::parse("[broker.websocket]\nlisten = \"127.0.0.1:9001\"\n", None);
        let cfg = cfg.unwrap();
        assert!(cfg.broker.websocket.enabled);
        assert_eq!(cfg.broker.websocket.listen.port(), 9001);
        let err = AppConfig::parse("[broker.tls]\nenabled = true\n", None).unwrap_err();
        assert_eq!(err.key, "broker.tls.cert_path");
        assert!(err.message.starts_with("is missing"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = AppConfig::parse("[broker.mqtt]\nlistn = \"0.0.0.0:1\"\n", None).unwrap_err();
        assert_eq!(err.key, "broker.mqtt.listn", "{err}");
        let err = AppConfig::parse("[brokr]\n", None).unwrap_err();
        assert_eq!(err.key, "brokr", "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err =
            AppConfig::parse("[broker.limits]\nmax_connections = \"many\"\n", None).unwrap_err();
        assert_eq!(err.key, "broker.limits.max_connections", "{err}");
        let err = AppConfig::parse("[broker.mqtt]\nenabled = true\nlisten = \"nope\"\n", None)
            .unwrap_err();
        assert_eq!(err.key, "broker.mqtt.listen", "{err}");
    }

    #[test]
    fn validation_errors_are_named() {
        let err = AppConfig::parse("[log]\nlevel = \"[[[\"\n", None).unwrap_err();
        assert_eq!(err.key, "log.level");
        let err = AppConfig::parse("[broker.limits]\nmax_connections = 0\n", None).unwrap_err();
        assert_eq!(err.key, "broker.limits.max_connections");
        // The keys of the other crates' checks, as the file spells them (they said
        // the live section under bridge before, which does not exist).
        let err =
            AppConfig::parse("[live]\npublish_filters = [\"sensors/#/x\"]\n", None).unwrap_err();
        assert_eq!(err.key, "live.publish_filters", "{err}");
        let err = AppConfig::parse("[live.fanout]\nqueue_capacity = 0\n", None).unwrap_err();
        assert_eq!(err.key, "live.fanout.queue_capacity", "{err}");
        let err = AppConfig::parse(
            "[[serial]]\npath = \"/dev/x\"\ndevice_id = \"d1\"\nbaud = 0\n",
            None,
        )
        .unwrap_err();
        assert_eq!(err.key, "serial[0].baud", "{err}");
        for bad in [
            "presence_stale_after_min_s = 0",
            "presence_stale_after_min_s = 2592001",
        ] {
            let err = AppConfig::parse(&format!("[bridge]\n{bad}\n"), None).unwrap_err();
            assert_eq!(err.key, "bridge.presence_stale_after_min_s", "{err}");
        }
        for bad in [
            "presence_stale_intervals = 0",
            "presence_stale_intervals = 101",
        ] {
            let err = AppConfig::parse(&format!("[bridge]\n{bad}\n"), None).unwrap_err();
            assert_eq!(err.key, "bridge.presence_stale_intervals", "{err}");
        }
        let err = AppConfig::parse("[bridge]\npresence_stale_intervals = -1\n", None).unwrap_err();
        assert_eq!(err.key, "bridge.presence_stale_intervals", "{err}");
        let ok = AppConfig::parse(
            "[bridge]\npresence_stale_intervals = 5\npresence_stale_after_min_s = 1\n",
            None,
        )
        .unwrap();
        assert_eq!(ok.bridge.presence_stale_after_min_s, 1);
    }

    #[test]
    fn overrides_win() {
        let mut cfg = AppConfig::default();
        cfg.apply(&Overrides {
            mqtt_listen: Some("127.0.0.1:9999".parse().unwrap()),
            http_listen: Some("127.0.0.1:9998".parse().unwrap()),
            data_dir: Some("/tmp/x".into()),
            mqtt5_listen: Some("127.0.0.1:9997".parse().unwrap()),
            ws_listen: Some("127.0.0.1:9996".parse().unwrap()),
            tls_listen: Some("127.0.0.1:9995".parse().unwrap()),
            tls_cert: Some("/tmp/c.pem".into()),
            tls_key: Some("/tmp/k.pem".into()),
        });
        assert_eq!(cfg.broker.mqtt.listen.port(), 9999);
        assert_eq!(cfg.broker.mqtt5.listen.port(), 9997);
        assert_eq!(cfg.broker.websocket.listen.port(), 9996);
        assert!(cfg.broker.tls.enabled, "--tls-listen enables TLS");
        assert_eq!(cfg.broker.tls.listen.port(), 9995);
        assert_eq!(cfg.broker.tls.cert_path, Path::new("/tmp/c.pem"));
        assert_eq!(cfg.broker.tls.key_path, Path::new("/tmp/k.pem"));
        assert_eq!(cfg.bridge.http_listen, "127.0.0.1:9998");
        assert_eq!(cfg.bridge.data_dir, Path::new("/tmp/x"));
    }
}
