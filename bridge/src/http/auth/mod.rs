//! Who is calling over HTTP, and what it may read and publish: the one place every HTTP
//! transport (history, catalogue, rejects, live streams, `/metrics`) asks.
//!
//! A caller presents, in this order of precedence:
//!
//! 1. `Authorization: Bearer <token>`: an app token (`ewt_...`, `[[auth.tokens]]`) or a JWT
//!    (`[auth.jwt]`);
//! 2. the session cookie ([`sessions::COOKIE`]) a person gets from `POST /v1/login` with a
//!    `[[broker.users]]` account (its role's grants);
//! 3. on the live routes only (EventSource and WebSocket cannot set headers everywhere), an
//!    `access_token` query parameter, treated like a bearer token and redacted from logs;
//! 4. nothing: anonymous, with `live.read_filters` / `live.publish_filters`, only when no
//!    credential is configured at all (the HTTP listener then binds loopback only) or
//!    `auth.allow_anonymous` is set. Otherwise `401`.
//!
//! A presented credential that is wrong is `401` even where anonymous access is allowed
//! (except a stale session cookie, which falls back to anonymous there): a client with a bad
//! token should hear so, not silently see less. Permissions are [`Permissions`] from
//! `edgewatch_protocol`, the model the MQTT broker enforces too.

pub mod config;
pub mod jwt;
pub mod login;
pub mod openapi;
pub mod sessions;
pub mod tokens;
pub mod verified;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use edgewatch_protocol::permissions::Permissions;
use edgewatch_protocol::{InvalidSetting, TopicFilter};
use futures::future::BoxFuture;
use serde_json::json;

pub use config::{AuthConfig, TokenConfig};
use sessions::Sessions;
use tokens::TokenTable;

/// Longest bearer token looked at; longer is refused unread.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// No credential.
    Anonymous,
    /// An app token from `[[auth.tokens]]`.
    Token,
    /// A JWT.
    Jwt,
    /// A person logged in with an account (session cookie).
    Person,
}

impl PrincipalKind {
    /// The name in `GET /v1/me` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Anonymous => "anonymous",
            Self::Token => "token",
            Self::Jwt => "jwt",
            Self::Person => "person",
        }
    }
}

/// A caller's identity and permissions.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Token name, JWT subject, username, or `anonymous`.
    pub name: String,
    /// How it authenticated.
    pub kind: PrincipalKind,
    /// What it may read and publish.
    pub permissions: Permissions,
    /// Whether it may read `GET /metrics`.
    pub metrics: bool,
}

impl Principal {
    /// Anonymous with the given filters.
    fn anonymous(read: &[String], publish: &[String], metrics: bool) -> Self {
        Self {
            name: "anonymous".to_owned(),
            kind: PrincipalKind::Anonymous,
            permissions: Permissions::from_filters(parse_filters(read), parse_filters(publish)),
            metrics,
        }
    }

    /// Anonymous reading and publishing everything (tests).
    pub fn anonymous_everything() -> Self {
        Self::anonymous(&["#".to_owned()], &["#".to_owned()], true)
    }
}

/// Parses configured filters (validated at start-up), skipping invalid ones.
fn parse_filters(list: &[String]) -> Vec<TopicFilter> {
    list.iter()
        .filter_map(|f| TopicFilter::parse_bounded(f).ok())
        .collect()
}

/// The caller of a request, as the handlers see it.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Principal>);

impl Caller {
    /// Whether every topic `filter` can match lies inside what this caller may read.
    pub fn may_read(&self, filter: &TopicFilter) -> bool {
        self.0.permissions.may_read(filter)
    }

    /// Whether a stored `topic` may be shown to this caller.
    pub fn may_read_topic(&self, topic: &str) -> bool {
        self.0.permissions.may_read_topic(topic)
    }

    /// Whether this caller may publish to `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.0.permissions.may_publish(topic)
    }

    /// Whether this caller sees every (non-`$`) topic, so answers need no filtering.
    pub fn reads_everything(&self) -> bool {
        self.0.permissions.reads_everything()
    }

    /// The filters a query should use: `requested`, each of which must be readable (else the
    /// error names the first that is not), or with none requested everything this caller
    /// may read (`[]` when that is everything).
    pub fn scope(&self, requested: Vec<TopicFilter>) -> Result<Vec<TopicFilter>, AuthError> {
        if let Some(denied) = requested.iter().find(|f| !self.may_read(f)) {
            return Err(AuthError::forbidden(format!(
                "not allowed to read {:?}",
                denied.as_str()
            )));
        }
        if !requested.is_empty() || self.reads_everything() {
            return Ok(requested);
        }
        let own = self.0.permissions.read_filters();
        if own.is_empty() {
            return Err(AuthError::forbidden(
                "not allowed to read any topic".to_owned(),
            ));
        }
        Ok(own.to_vec())
    }
}

/// What became of a person's login attempt (see [`PeopleLogin`]).
#[derive(Debug, Clone)]
pub enum LoginOutcome {
    /// Right password: the account's permissions and whether it may read `/metrics`.
    Accepted {
        /// What the account may read and publish.
        permissions: Permissions,
        /// Whether it may read `/metrics`.
        metrics: bool,
    },
    /// Wrong username or password.
    Refused,
    /// Not checked: too many attempts from this address or for this name, or the checkers
    /// are busy.
    Throttled,
}

/// Checks a person's username and password (the broker's accounts and login limiter):
/// `(client address, username, password)`.
pub type PeopleLogin =
    Arc<dyn Fn(Option<IpAddr>, String, String) -> BoxFuture<'static, LoginOutcome> + Send + Sync>;

/// A refused request: status, stable code and message, as the API's JSON error.
#[derive(Debug)]
pub struct AuthError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl AuthError {
    fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            code,
            message: message.into(),
        }
    }

    /// `403 forbidden`.
    pub fn forbidden(message: String) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message,
        }
    }

    /// The stable error code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message (never contains a credential).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"edgewatch\""),
            );
        }
        res
    }
}

/// Refusals by reason, for `/metrics`.
#[derive(Debug, Default)]
pub struct AuthStats {
    missing: AtomicU64,
    invalid: AtomicU64,
    forbidden: AtomicU64,
    logins_refused: AtomicU64,
    logins_accepted: AtomicU64,
}

impl AuthStats {
    /// `(reason, count)` pairs.
    pub fn snapshot(&self) -> [(&'static str, u64); 5] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("missing_credential", get(&self.missing)),
            ("invalid_credential", get(&self.invalid)),
            ("forbidden", get(&self.forbidden)),
            ("login_refused", get(&self.logins_refused)),
            ("login_accepted", get(&self.logins_accepted)),
        ]
    }
}

/// Decides who a caller is. One per hub, shared by every route.
pub struct Authority {
    anonymous: Option<Arc<Principal>>,
    tokens: TokenTable<Arc<Principal>>,
    jwt: Option<jwt::JwtVerifier>,
    verified: verified::Verified,
    sessions: Sessions,
    people: Option<PeopleLogin>,
    metrics_public: bool,
    credentials: bool,
    secure_cookies: bool,
    stats: AuthStats,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("anonymous", &self.anonymous.is_some())
            .field("tokens", &!self.tokens.is_empty())
            .field("jwt", &self.jwt.is_some())
            .field("people", &self.people.is_some())
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// No credentials: every caller anonymous with `read` / `publish` (and `/metrics`).
    pub fn open(read: &[String], publish: &[String]) -> Self {
        let cfg = AuthConfig::default();
        Self::new(&cfg, read, publish, None).expect("the default [auth] is valid")
    }

    /// From `[auth]`, the anonymous filters (`live.read_filters` / `live.publish_filters`)
    /// and, when people may log in, the account check.
    pub fn new(
        cfg: &AuthConfig,
        read: &[String],
        publish: &[String],
        people: Option<PeopleLogin>,
    ) -> Result<Self, InvalidSetting> {
        cfg.validate()?;
        let credentials = cfg.has_credentials() || people.is_some();
        let anonymous = (!credentials || cfg.allow_anonymous).then(|| {
            Arc::new(Principal::anonymous(
                read,
                publish,
                !credentials || cfg.metrics_public,
            ))
        });
        let tokens = TokenTable::new(cfg.tokens.iter().filter_map(|t| {
            let hash = tokens::parse_hash(&t.hash).ok()?;
            let principal = Principal {
                name: t.name.clone(),
                kind: PrincipalKind::Token,
                permissions: Permissions::from_filters(
                    parse_filters(&t.read),
                    parse_filters(&t.publish),
                ),
                metrics: t.metrics,
            };
            Some((hash, Arc::new(principal)))
        }));
        Ok(Self {
            anonymous,
            tokens,
            jwt: jwt::JwtVerifier::from_config(&cfg.jwt)?,
            verified: verified::Verified::default(),
            sessions: Sessions::new(
                Duration::from_secs(cfg.session_hours * 3600),
                cfg.max_sessions,
            ),
            people,
            metrics_public: cfg.metrics_public,
            credentials,
            secure_cookies: false,
            stats: AuthStats::default(),
        })
    }

    /// Marks session cookies `Secure` (the HTTP listener speaks TLS).
    pub fn with_secure_cookies(mut self, secure: bool) -> Self {
        self.secure_cookies = secure;
        self
    }

    /// Whether any credential is configured (tokens, JWT keys or accounts): if not, the HTTP
    /// listener must stay on loopback.
    pub fn has_credentials(&self) -> bool {
        self.credentials
    }

    /// Whether callers without a credential are let in.
    pub fn allows_anonymous(&self) -> bool {
        self.anonymous.is_some()
    }

    /// Refusals and logins, for `/metrics`.
    pub fn stats(&self) -> &AuthStats {
        &self.stats
    }

    /// Open login sessions and sessions ended by `auth.max_sessions`.
    pub fn session_stats(&self) -> (usize, u64) {
        self.sessions.stats()
    }

    /// Who sent the request with these `parts`; `query_token`: whether an `access_token`
    /// query parameter is accepted (live routes only).
    pub fn resolve(&self, parts: &Parts, query_token: bool) -> Result<Caller, AuthError> {
        let res = self.identify(parts, query_token);
        if let Err(err) = &res {
            let counter = if err.code == "unauthorized" {
                &self.stats.missing
            } else {
                &self.stats.invalid
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                code = err.code,
                path = parts.uri.path(),
                "HTTP request refused: no valid credential"
            );
        }
        res.map(Caller)
    }

    fn identify(&self, parts: &Parts, query_token: bool) -> Result<Arc<Principal>, AuthError> {
        if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .ok_or_else(|| {
                    AuthError::unauthorized(
                        "invalid_credential",
                        "Authorization must be `Bearer <token>`",
                    )
                })?;
            return self.bearer(token.trim());
        }
        if let Some(id) = cookie(parts, sessions::COOKIE) {
            match self.sessions.find(id) {
                Some(p) => return Ok(p),
                None if self.anonymous.is_some() => {}
                None => {
                    return Err(AuthError::unauthorized(
                        "session_expired",
                        "the session has ended; log in again",
                    ))
                }
            }
        }
        if query_token {
            if let Some(token) = query_param(parts.uri.query(), "access_token") {
                return self.bearer(&token);
            }
        }
        self.anonymous.clone().ok_or_else(|| {
            AuthError::unauthorized(
                "unauthorized",
                "a credential is required: a bearer token, a session cookie (POST /v1/login) or, on live routes, access_token",
            )
        })
    }

    /// An app token or a JWT.
    fn bearer(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        let invalid = || AuthError::unauthorized("invalid_credential", "the token is not valid");
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid());
        }
        if token.starts_with(tokens::TOKEN_PREFIX) {
            return self.tokens.find(token).cloned().ok_or_else(invalid);
        }
        let verifier = self.jwt.as_ref().ok_or_else(invalid)?;
        if let Some(known) = self.verified.find(token) {
            return Ok(known);
        }
        let claims = verifier
            .verify(token)
            .map_err(|e| AuthError::unauthorized(e.code(), e.to_string()))?;
        let principal = Arc::new(Principal {
            name: claims.subject,
            kind: PrincipalKind::Jwt,
            permissions: Permissions::from_filters(
                parse_filters(&claims.read),
                parse_filters(&claims.publish),
            ),
            metrics: claims.metrics,
        });
        self.verified
            .remember(token, principal.clone(), claims.expires_at);
        Ok(principal)
    }

    /// An MQTT login whose password is a token (EMQX style): `None` when `password` is not a
    /// token this hub takes (an app token when tokens are configured, a JWT when a JWT key
    /// is), else the token's permissions or why it is refused (expired, wrong audience, ...).
    pub fn mqtt_token(&self, password: &str) -> Option<Result<Permissions, String>> {
        let app = password.starts_with(tokens::TOKEN_PREFIX) && !self.tokens.is_empty();
        let jwt =
            self.jwt.is_some() && password.starts_with("eyJ") && password.matches('.').count() == 2;
        if !app && !jwt {
            return None;
        }
        let outcome = self.bearer(password).map(|p| p.permissions.clone());
        Some(outcome.map_err(|e| e.code.to_owned()))
    }

    /// Whether `caller` may read `GET /metrics`.
    pub fn may_read_metrics(&self, caller: &Principal) -> bool {
        caller.metrics || self.metrics_public
    }

    /// Counts a `403` answered to an authenticated caller.
    pub fn count_forbidden(&self) {
        self.stats.forbidden.fetch_add(1, Ordering::Relaxed);
    }
}

/// Middleware of `GET /metrics`: the caller must be allowed to read it (`401`/`403` else).
pub async fn require_metrics(
    axum::extract::State(auth): axum::extract::State<Arc<Authority>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let caller = match auth.resolve(&parts, false) {
        Ok(c) => c,
        Err(err) => return err.into_response(),
    };
    if !auth.may_read_metrics(&caller.0) {
        auth.count_forbidden();
        return AuthError::forbidden("not allowed to read /metrics".to_owned()).into_response();
    }
    parts.extensions.insert(caller);
    next.run(axum::extract::Request::from_parts(parts, body))
        .await
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// The percent-decoded value of query parameter `name`.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let query = query.filter(|q| q.contains(name))?;
    let uri: axum::http::Uri = format!("/?{query}").parse().ok()?;
    let axum::extract::Query(pairs) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri).ok()?;
    pairs.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// `uri` with the value of every `access_token` parameter replaced by `REDACTED`, for logs.
pub fn redact_uri(uri: &axum::http::Uri) -> std::borrow::Cow<'_, str> {
    let Some(query) = uri.query().filter(|q| q.contains("access_token")) else {
        return std::borrow::Cow::Borrowed(uri.path_and_query().map_or("/", |p| p.as_str()));
    };
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("access_token", _)) => "access_token=REDACTED".to_owned(),
            _ => pair.to_owned(),
        })
        .collect();
    std::borrow::Cow::Owned(format!("{}?{}", uri.path(), redacted.join("&")))
}

#[cfg(test)]
mod tests;
