//! `[[uplink]]`: where an uplink forwards, what, and in which shape.

use std::path::PathBuf;
use std::time::Duration;

use edgewatch_protocol::{InvalidSetting, TopicFilter};
use serde::{Deserialize, Serialize};

use super::format::Template;
use super::tunnel::Upstream;

/// The MQTT version spoken upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum Protocol {
    /// MQTT 3.1.1 (`protocol = 4`).
    V311,
    /// MQTT 5 (`protocol = 5`): each message also carries its seq as a user property.
    V5,
}

impl TryFrom<u8> for Protocol {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        match v {
            4 => Ok(Protocol::V311),
            5 => Ok(Protocol::V5),
            other => Err(format!(
                "unknown MQTT protocol {other}: expected 4 (3.1.1) or 5"
            )),
        }
    }
}

impl From<Protocol> for u8 {
    fn from(p: Protocol) -> u8 {
        match p {
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }
}

/// How readings are put into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadFormat {
    /// One reading per message, a JSON object, on `topic`.
    Json,
    /// Up to `batch_max` readings per message, a JSON array of those objects, on `batch_topic`.
    JsonArray,
}

/// One `[[uplink]]` section. Every field but `name` and `url` has a default; unknown fields
/// are an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    /// Names the uplink in `/metrics`, `GET /v1/uplinks` and the log, and its forwarding cursor
    /// in the store: renaming an uplink starts it again from the oldest stored reading.
    /// Letters, digits, `-` and `_`, at most 64. Required.
    pub name: String,
    /// The upstream broker: `mqtt://host[:port]` (port 1883 by default), `mqtts://host[:port]`
    /// (TLS, 8883), `ws://host[:port][/path]` (MQTT over WebSocket, 80, path `/mqtt`) or
    /// `wss://host[:port][/path]` (over TLS, 443). Required.
    pub url: String,
    /// `mqtts://`, `wss://`: the CA certificates (PEM) the broker's certificate must chain to. Default
    /// the system's bundle, `/etc/ssl/certs/ca-certificates.crt`.
    pub ca_file: Option<PathBuf>,
    /// `mqtts://`, `wss://`: a client certificate chain (PEM) to log in with, with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// `mqtts://`, `wss://`: the private key of `client_cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
    /// The client id upstream. Default `edgewatch-{site}-{name}`.
    pub client_id: Option<String>,
    /// Username upstream, if the broker wants one.
    pub username: Option<String>,
    /// Password upstream (with `username`).
    pub password: Option<String>,
    /// 4 (MQTT 3.1.1) or 5. Default 5.
    pub protocol: Protocol,
    /// This hub's site name, for the templates (`{site}`). Default `edge`.
    pub site: String,
    /// Which readings to forward: MQTT topic filters on the readings' topics
    /// (`sensors/{deviceId}/{metric}`). Default `["sensors/#"]`.
    pub filters: Vec<String>,
    /// The upstream topic of a reading (`json`): `{site}`, `{deviceId}`, `{metric}` are
    /// replaced. Default `site/{site}/sensors/{deviceId}/{metric}`.
    pub topic: String,
    /// The `deviceId` written in the payload: a template like `topic`. Default `{deviceId}`;
    /// for a central `edgewatch bridge` that stores several sites, e.g. `{site}-{deviceId}`
    /// with `topic = "sensors/{site}-{deviceId}/{metric}"`.
    pub device_id: String,
    /// `json` (one reading per message) or `json-array` (up to `batch_max` per message on
    /// `batch_topic`). Default `json`.
    pub format: PayloadFormat,
    /// Most readings in one `json-array` message. Default 100.
    pub batch_max: usize,
    /// The topic of `json-array` messages (`{site}` replaced). Default `site/{site}/batch`.
    pub batch_topic: String,
    /// Where each device's presence goes, retained (`online`, `stale`, `offline`), with
    /// `{site}` and `{deviceId}` replaced; empty to forward no presence.
    /// Default `site/{site}/status/{deviceId}`.
    pub presence_topic: String,
    /// Messages sent and not yet acknowledged, at most. Default 100.
    pub inflight: u16,
    /// MQTT keep-alive in seconds. Default 30.
    pub keep_alive_secs: u64,
    /// First reconnect delay in milliseconds; it doubles (with jitter) up to `backoff_max_ms`.
    /// Default 200.
    pub backoff_min_ms: u64,
    /// Largest reconnect delay in milliseconds. Default 30000.
    pub backoff_max_ms: u64,
    /// Upstream topic filters forwarded into the local broker for devices (a downlink), with
    /// `{site}` replaced, e.g. `["site/{site}/commands/#"]`. Default none.
    pub downlink: Vec<String>,
    /// Taken off the front of a downlinked topic to make the local topic (`{site}` replaced).
    /// Default `site/{site}/`.
    pub downlink_strip: String,
    /// Local topics the downlink may publish to, as a device account's publish grants;
    /// anything else is dropped, counted and logged. Default `["commands/#"]`.
    pub downlink_publish: Vec<String>,
    /// Most downlinked messages per second; more are dropped and counted. Default 100.
    pub downlink_rate: u32,
    /// Readings not forwarded yet are kept past `bridge.retention_days`, but not longer than
    /// this many days (by receive time); older ones are released, counted in
    /// `edgewatch_uplink_dropped_total` and logged. `bridge.disk_budget_mb` counts them and
    /// still applies. Default 7.
    pub hold_days: u32,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            name: String::new(),
            url: String::new(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            client_id: None,
            username: None,
            password: None,
            protocol: Protocol::V5,
            site: "edge".to_owned(),
            filters: vec!["sensors/#".to_owned()],
            topic: "site/{site}/sensors/{deviceId}/{metric}".to_owned(),
            device_id: "{deviceId}".to_owned(),
            format: PayloadFormat::Json,
            batch_max: 100,
            batch_topic: "site/{site}/batch".to_owned(),
            presence_topic: "site/{site}/status/{deviceId}".to_owned(),
            inflight: 100,
            keep_alive_secs: 30,
            backoff_min_ms: 200,
            backoff_max_ms: 30_000,
            hold_days: 7,
            downlink: Vec::new(),
            downlink_strip: "site/{site}/".to_owned(),
            downlink_publish: vec!["commands/#".to_owned()],
            downlink_rate: 100,
        }
    }
}

/// Most `[[uplink]]` sections.
pub const MAX_UPLINKS: usize = 16;
/// Largest `inflight`.
pub const MAX_INFLIGHT: u16 = 10_000;
/// Largest `batch_max`.
pub const MAX_BATCH: usize = 10_000;
/// Most `filters` of one uplink.
pub const MAX_FILTERS: usize = 64;

impl UplinkConfig {
    /// The client id upstream.
    pub fn client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("edgewatch-{}-{}", self.site, self.name))
    }

    /// MQTT keep-alive.
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_secs)
    }

    /// The downlink's upstream filters, `{site}` replaced.
    pub fn downlink_filters(&self) -> Vec<String> {
        self.downlink
            .iter()
            .map(|f| f.replace("{site}", &self.site))
            .collect()
    }

    /// The prefix taken off downlinked topics, `{site}` replaced.
    pub fn downlink_strip(&self) -> String {
        self.downlink_strip.replace("{site}", &self.site)
    }

    /// The parsed filters (checked by [`validate_all`]).
    pub fn topic_filters(&self) -> Vec<TopicFilter> {
        self.filters
            .iter()
            .filter_map(|f| TopicFilter::parse_bounded(f).ok())
            .collect()
    }

    /// Checks what serde cannot; `i` is the section's index, for the dotted key.
    pub fn validate(&self, i: usize) -> Result<(), InvalidSetting> {
        let key = |k: &str| format!("uplink[{i}].{k}");
        let bad = |k: &str, m: String| Err(InvalidSetting::new(key(k), m));
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !name_ok(&self.name) {
            return bad(
                "name",
                format!("{:?}: 1 to 64 letters, digits, '-' or '_'", self.name),
            );
        }
        let upstream = match Upstream::parse(&self.url) {
            Ok(u) => u,
            Err(m) => return bad("url", m),
        };
        if let Err((k, m)) = self.check_tls(&upstream) {
            return bad(k, m);
        }
        if !name_ok(&self.site) {
            return bad(
                "site",
                format!("{:?}: 1 to 64 letters, digits, '-' or '_'", self.site),
            );
        }
        if self.filters.is_empty() || self.filters.len() > MAX_FILTERS {
            return bad("filters", format!("1 to {MAX_FILTERS} topic filters"));
        }
        for f in &self.filters {
            if let Err(err) = TopicFilter::parse_bounded(f) {
                return bad("filters", format!("{f:?}: {err}"));
            }
        }
        if let Err((k, m)) = self.check_templates() {
            return bad(k, m);
        }
        if self.inflight == 0 || self.inflight > MAX_INFLIGHT {
            return bad("inflight", format!("1 to {MAX_INFLIGHT}"));
        }
        if self.batch_max == 0 || self.batch_max > MAX_BATCH {
            return bad("batch_max", format!("1 to {MAX_BATCH}"));
        }
        if self.keep_alive_secs == 0 || self.keep_alive_secs > 65_535 {
            return bad("keep_alive_secs", "1 to 65535".into());
        }
        if self.backoff_min_ms == 0 || self.backoff_min_ms > self.backoff_max_ms {
            return bad(
                "backoff_min_ms",
                "at least 1 and at most backoff_max_ms".into(),
            );
        }
        if let Err((k, m)) = self.check_downlink() {
            return bad(k, m);
        }
        if self.password.is_some() && self.username.is_none() {
            return bad("password", "needs username".into());
        }
        if let Some(id) = &self.client_id {
            if id.is_empty() || id.len() > 256 {
                return bad("client_id", "1 to 256 bytes".into());
            }
        }
        Ok(())
    }
}

impl UplinkConfig {
    /// The templates parse; the failing key and why, if not.
    fn check_templates(&self) -> Result<(), (&'static str, String)> {
        let templates = [
            ("topic", &self.topic, true),
            ("device_id", &self.device_id, false),
            ("batch_topic", &self.batch_topic, true),
        ];
        for (k, t, is_topic) in templates {
            if let Err(m) = Template::parse(t, is_topic) {
                return Err((k, m));
            }
        }
        if !self.presence_topic.is_empty() {
            if let Err(m) = Template::parse(&self.presence_topic, true) {
                return Err(("presence_topic", m));
            }
            if self.presence_topic.contains("{metric}") {
                return Err((
                    "presence_topic",
                    "{metric} has no value for presence".into(),
                ));
            }
        }
        if self.batch_topic.contains("{deviceId}") || self.batch_topic.contains("{metric}") {
            return Err((
                "batch_topic",
                "only {site} can be used: a batch holds several series".into(),
            ));
        }
        Ok(())
    }
}

impl UplinkConfig {
    /// The downlink's filters and bounds hold.
    fn check_downlink(&self) -> Result<(), (&'static str, String)> {
        if self.downlink.len() > MAX_FILTERS {
            return Err(("downlink", format!("at most {MAX_FILTERS} filters")));
        }
        for f in self.downlink_filters() {
            if let Err(err) = TopicFilter::parse_bounded(&f) {
                return Err(("downlink", format!("{f:?}: {err}")));
            }
        }
        if self.downlink_publish.len() > MAX_FILTERS {
            return Err(("downlink_publish", format!("at most {MAX_FILTERS} filters")));
        }
        for f in &self.downlink_publish {
            if let Err(err) = TopicFilter::parse_bounded(f) {
                return Err(("downlink_publish", format!("{f:?}: {err}")));
            }
        }
        if self.downlink_rate == 0 || self.downlink_rate > 100_000 {
            return Err(("downlink_rate", "1 to 100000".into()));
        }
        Ok(())
    }

    /// The PEM files `mqtts://` uses.
    pub(super) fn tls_files(&self) -> super::tunnel::TlsFiles<'_> {
        super::tunnel::TlsFiles {
            ca_file: self.ca_file.as_deref(),
            client_cert: self.client_cert.as_deref(),
            client_key: self.client_key.as_deref(),
        }
    }

    /// The TLS keys fit the URL, and with `mqtts://` the files they name can be used.
    fn check_tls(&self, upstream: &Upstream) -> Result<(), (&'static str, String)> {
        let tls_keys = [
            ("ca_file", self.ca_file.is_some()),
            ("client_cert", self.client_cert.is_some()),
            ("client_key", self.client_key.is_some()),
        ];
        if !upstream.tls {
            if let Some((k, _)) = tls_keys.iter().find(|(_, set)| *set) {
                return Err((k, "only with an mqtts:// or wss:// url".into()));
            }
            return Ok(());
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err((
                "client_key",
                "client_cert and client_key go together".into(),
            ));
        }
        super::tunnel::Tunnel::new(
            upstream,
            self.tls_files(),
            &self.name,
            std::path::Path::new("."),
        )
        .map(|_| ())
        .map_err(|m| {
            let key = tls_keys
                .iter()
                .map(|(k, _)| *k)
                .find(|k| m.starts_with(k))
                .unwrap_or("url");
            (key, m)
        })
    }
}

/// Checks every section and that names are unique.
pub fn validate_all(uplinks: &[UplinkConfig]) -> Result<(), InvalidSetting> {
    if uplinks.len() > MAX_UPLINKS {
        return Err(InvalidSetting::new(
            "uplink",
            format!("at most {MAX_UPLINKS} uplinks"),
        ));
    }
    for (i, u) in uplinks.iter().enumerate() {
        u.validate(i)?;
        if uplinks[..i].iter().any(|o| o.name == u.name) {
            return Err(InvalidSetting::new(
                format!("uplink[{i}].name"),
                format!("{:?} is used by another uplink", u.name),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(extra: &str) -> Result<(), InvalidSetting> {
        let text = format!("name = \"central\"\nurl = \"mqtt://127.0.0.1:1883\"\n{extra}");
        let cfg: UplinkConfig =
            toml::from_str(&text).map_err(|e| InvalidSetting::new("toml", e.to_string()))?;
        cfg.validate(0)
    }

    #[test]
    fn defaults_hold_and_bad_settings_name_their_key() {
        one("").unwrap();
        let cases = [
            ("name = \"a b\"", "uplink[0].name"),
            ("url = \"http://x\"", "uplink[0].url"),
            ("filters = [\"a/#/b\"]", "uplink[0].filters"),
            ("topic = \"site/{nope}\"", "uplink[0].topic"),
            ("batch_topic = \"b/{deviceId}\"", "uplink[0].batch_topic"),
            (
                "presence_topic = \"p/{metric}\"",
                "uplink[0].presence_topic",
            ),
            ("inflight = 0", "uplink[0].inflight"),
            (
                "backoff_min_ms = 5000\nbackoff_max_ms = 10",
                "uplink[0].backoff_min_ms",
            ),
            ("password = \"x\"", "uplink[0].password"),
            ("downlink = [\"a/#/b\"]", "uplink[0].downlink"),
            ("downlink_publish = [\"#x\"]", "uplink[0].downlink_publish"),
            ("downlink_rate = 0", "uplink[0].downlink_rate"),
        ];
        for (extra, key) in cases {
            let text = format!("name = \"central\"\nurl = \"mqtt://127.0.0.1:1883\"\n{extra}");
            // Later keys win in the cases that set name or url again.
            let text = dedupe_keys(&text);
            let cfg: UplinkConfig = toml::from_str(&text).unwrap();
            let err = cfg.validate(0).unwrap_err();
            assert_eq!(err.key, key, "{extra}: {err}");
        }
        assert!(toml::from_str::<UplinkConfig>("name = \"a\"\nprotocol = 3").is_err());
        let two = |a: &str, b: &str| {
            let mk = |n: &str| UplinkConfig {
                name: n.to_owned(),
                url: "mqtt://h".to_owned(),
                ..UplinkConfig::default()
            };
            validate_all(&[mk(a), mk(b)])
        };
        assert!(two("a", "b").is_ok());
        assert_eq!(two("a", "a").unwrap_err().key, "uplink[1].name");
    }

    #[test]
    fn urls_take_the_port_of_their_scheme() {
        let up = |u: &str| Upstream::parse(u).map(|u| (u.tls, u.host, u.port));
        assert_eq!(up("mqtt://h"), Ok((false, "h".into(), 1883)));
        assert_eq!(up("mqtts://h"), Ok((true, "h".into(), 8883)));
        assert_eq!(up("mqtts://h:1234"), Ok((true, "h".into(), 1234)));
        assert_eq!(up("mqtts://[::1]"), Ok((true, "::1".into(), 8883)));
        assert_eq!(up("mqtt://[::1]:99"), Ok((false, "::1".into(), 99)));
        assert_eq!(up("ws://h"), Ok((false, "h".into(), 80)));
        assert_eq!(up("wss://h:8084/x"), Ok((true, "h".into(), 8084)));
        let path = |u: &str| Upstream::parse(u).unwrap().ws_path;
        assert_eq!(path("ws://h"), Some("/mqtt".into()));
        assert_eq!(path("wss://h:1/a/b"), Some("/a/b".into()));
        assert_eq!(path("mqtt://h"), None);
        for bad in [
            "http://h",
            "h:1883",
            "mqtts://",
            "mqtts://h:x",
            "tcp://h",
            "mqtt://h/x",
        ] {
            assert!(up(bad).is_err(), "{bad}");
        }
        assert_eq!(
            one("ca_file = \"/x\"").unwrap_err().key,
            "uplink[0].ca_file"
        );
        let text = "name = \"c\"\nurl = \"mqtts://h\"\nca_file = \"/nonexistent/ca.pem\"";
        let cfg: UplinkConfig = toml::from_str(text).unwrap();
        let err = cfg.validate(0).unwrap_err();
        assert_eq!(err.key, "uplink[0].ca_file", "{err}");
    }

    /// Keeps the last line of each key (a test shorthand for overriding a default line).
    fn dedupe_keys(text: &str) -> String {
        let mut lines: Vec<&str> = Vec::new();
        for line in text.lines() {
            let key = line.split('=').next().unwrap_or("").trim();
            lines.retain(|l| l.split('=').next().unwrap_or("").trim() != key);
            lines.push(line);
        }
        lines.join("\n")
    }
}
