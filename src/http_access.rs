//! Who may use the hub's HTTP side: the [`Authority`] built from `[auth]`, the accounts of
//! `[[broker.users]]` (people log in to the dashboard with them) and `[live]`'s anonymous
//! filters; the loopback-only rule for a hub without HTTP credentials; and tokens (JWT, app
//! tokens) as MQTT passwords.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use edgewatch_bridge::http::auth::{Authority, LoginOutcome, PeopleLogin};
use edgewatch_broker::login::Verdict;
use edgewatch_broker::{BrokerConfig, Credentials};
use edgewatch_protocol::permissions::Grants;

use crate::config::AppConfig;

/// How the HTTP listener is open, for the log and the ready line (`http_access=...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HttpAccess {
    /// No HTTP credential configured: anonymous, loopback only.
    LoopbackOnly,
    /// Credentials required.
    Credentials,
    /// Credentials configured, and `auth.allow_anonymous`.
    Anonymous,
}

impl HttpAccess {
    pub(crate) fn of(cfg: &AppConfig) -> Self {
        let credentials = cfg.auth.has_credentials() || !cfg.broker.users.is_empty();
        match (credentials, cfg.auth.allow_anonymous) {
            (false, false) => Self::LoopbackOnly,
            (_, true) => Self::Anonymous,
            (true, false) => Self::Credentials,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::LoopbackOnly => "loopback-only",
            Self::Credentials => "credentials",
            Self::Anonymous => "anonymous",
        }
    }
}

/// The address the HTTP listener binds: `listen`, or with [`HttpAccess::LoopbackOnly`] its
/// loopback counterpart (same port), with a warning when that changed it.
pub(crate) fn http_bind_addr(listen: SocketAddr, access: HttpAccess) -> SocketAddr {
    if access != HttpAccess::LoopbackOnly || listen.ip().is_loopback() {
        if access == HttpAccess::Anonymous && !listen.ip().is_loopback() {
            tracing::warn!(
                %listen,
                "auth.allow_anonymous: the HTTP API, live streams and dashboard are open to anyone who reaches {listen}"
            );
        }
        return listen;
    }
    let loopback = match listen.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    let bound = SocketAddr::new(loopback, listen.port());
    tracing::warn!(
        requested = %listen,
        %bound,
        "no HTTP credentials are configured ([[auth.tokens]], [auth.jwt] or [[broker.users]]): \
         the HTTP listener binds loopback only; configure credentials, or set \
         auth.allow_anonymous = true to open it to the network (see docs/security.md)"
    );
    bound
}

/// The hub's authority: `[auth]`, anonymous filters from `[live]`, and people's logins
/// checked against `credentials` (the broker's, so its login limits apply) when accounts exist.
pub(crate) fn authority(
    cfg: &AppConfig,
    credentials: Option<Credentials>,
    tls: bool,
) -> anyhow::Result<Arc<Authority>> {
    let people = if cfg.broker.users.is_empty() {
        None
    } else {
        let credentials = credentials.unwrap_or_else(|| cfg.broker.credentials());
        Some(people_login(credentials, Arc::new(cfg.broker.clone())))
    };
    let auth = Authority::new(
        &cfg.auth,
        &cfg.live.read_filters,
        &cfg.live.publish_filters,
        people,
    )
    .map_err(|e| anyhow::anyhow!("{}: {}", e.key, e.message))?;
    Ok(Arc::new(auth.with_secure_cookies(tls)))
}

/// Lets devices and apps log in to the broker with a JWT or an app token as the password
/// (EMQX style; any username): the token's permissions apply, as over HTTP. Set before the
/// broker listens.
pub(crate) fn accept_tokens_over_mqtt(credentials: &Credentials, authority: &Arc<Authority>) {
    let authority = authority.clone();
    credentials.set_token_login(Arc::new(move |_username, password| {
        authority.mqtt_token(password)
    }));
}

/// Checks a person's password like a device's login (same limiter, same backoff), and gives
/// the account's role grants.
fn people_login(credentials: Credentials, broker: Arc<BrokerConfig>) -> PeopleLogin {
    Arc::new(move |ip, username, password| {
        let credentials = credentials.clone();
        let broker = broker.clone();
        Box::pin(async move {
            // The client id of a dashboard session; `%c` patterns resolve with it.
            const CLIENT: &str = "dashboard";
            match credentials.decide(ip, CLIENT, &username, password).await {
                v if v.accepted() => LoginOutcome::Accepted {
                    permissions: credentials
                        .permissions(&username, CLIENT)
                        .unwrap_or_else(|| Grants::all().for_principal(&username, CLIENT)),
                    metrics: broker.may_read_metrics(&username),
                },
                Verdict::Wrong => LoginOutcome::Refused,
                _ => LoginOutcome::Throttled,
            }
        })
    })
}
