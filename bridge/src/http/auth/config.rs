//! Settings of HTTP authentication (the `[auth]` section): app tokens, JWT keys, sessions,
//! and whether callers without a credential are let in.

use edgewatch_protocol::{InvalidSetting, TopicFilter};
use serde::{Deserialize, Serialize};

/// Most filters in one token's `read` or `publish` list.
pub const MAX_GRANT_FILTERS: usize = 256;

/// `[auth]`: who may use the HTTP side (API, live streams, dashboard, `/metrics`).
///
/// A caller presents an app token (`[[auth.tokens]]`) or a JWT (`[auth.jwt]`) as a bearer
/// token, or the session cookie a person gets by logging in with a `[[broker.users]]`
/// account. With none of the three configured, the HTTP listener binds loopback only and
/// every local caller is anonymous.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Let callers without a credential in, with `live.read_filters` / `live.publish_filters`,
    /// even though credentials are configured, and on any address. Logged as a warning.
    /// Default false.
    pub allow_anonymous: bool,
    /// `GET /metrics` without a credential. Default false (a principal needs `metrics`).
    pub metrics_public: bool,
    /// How long a login session lasts, hours (1 to 8760). Default 12.
    pub session_hours: u64,
    /// Sessions kept at most; logging in beyond it ends the session closest to expiry.
    /// Default 10000.
    pub max_sessions: usize,
    /// App tokens (`edgewatch token create` prints an entry).
    pub tokens: Vec<TokenConfig>,
    /// JSON Web Tokens.
    pub jwt: super::jwt::JwtConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            allow_anonymous: false,
            metrics_public: false,
            session_hours: 12,
            max_sessions: 10_000,
            tokens: Vec::new(),
            jwt: super::jwt::JwtConfig::default(),
        }
    }
}

/// One app token: its name, the hash of its secret, and what it may do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Shown in logs and `GET /v1/me`.
    pub name: String,
    /// `blake2b:` and the hex BLAKE2b-256 of the token (the token itself is never stored).
    pub hash: String,
    /// Topic filters it may read.
    #[serde(default)]
    pub read: Vec<String>,
    /// Topics (filters) it may publish to over WebSocket.
    #[serde(default)]
    pub publish: Vec<String>,
    /// May read `GET /metrics`.
    #[serde(default)]
    pub metrics: bool,
}

impl AuthConfig {
    /// Whether any HTTP credential is configured here (people's accounts are counted by the
    /// caller, which knows `[[broker.users]]`).
    pub fn has_credentials(&self) -> bool {
        !self.tokens.is_empty() || self.jwt.is_configured()
    }

    /// Checks what serde cannot; errors name the key.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if !(1..=8760).contains(&self.session_hours) {
            return Err(InvalidSetting::new(
                "auth.session_hours",
                "must be 1 to 8760",
            ));
        }
        if self.max_sessions == 0 {
            return Err(InvalidSetting::new(
                "auth.max_sessions",
                "must be at least 1",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let key = |field: &str| format!("auth.tokens[{i}].{field}");
            if t.name.is_empty() || t.name.len() > 128 {
                return Err(InvalidSetting::new(key("name"), "must be 1 to 128 bytes"));
            }
            if !names.insert(&t.name) {
                return Err(InvalidSetting::new(
                    key("name"),
                    "another token has this name",
                ));
            }
            super::tokens::parse_hash(&t.hash).map_err(|e| InvalidSetting::new(key("hash"), e))?;
            for (field, list) in [("read", &t.read), ("publish", &t.publish)] {
                if list.len() > MAX_GRANT_FILTERS {
                    return Err(InvalidSetting::new(
                        key(field),
                        format!("at most {MAX_GRANT_FILTERS} filters"),
                    ));
                }
                for f in list {
                    TopicFilter::parse_bounded(f)
                        .map_err(|e| InvalidSetting::new(key(field), e.to_string()))?;
                }
            }
        }
        super::jwt::JwtVerifier::from_config(&self.jwt)?;
        Ok(())
    }
}
