//! Device authentication: username/password entries whose passwords are stored as argon2
//! hashes (PHC strings, as printed by `edgewatch passwd`), checked through the login limiter.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::login::{LoginGate, LoginLimits, LoginStats, Verdict};
pub use crate::password::{hash_password, validate_hash, verify_password};
use crate::peer::Peers;
use edgewatch_protocol::permissions::{Grants, Permissions};

/// The configured device credentials: username → argon2 hash, with the login limiter
/// ([`crate::login`]) in front of every check. Cheap to clone; clones share the limiter.
#[derive(Clone)]
pub struct Credentials {
    /// The accounts (every clone shares them; [`Credentials::replace_accounts`] swaps them).
    accounts: Arc<RwLock<Arc<Accounts>>>,
    gate: Arc<LoginGate>,
    peers: Option<Arc<Peers>>,
    /// What our codec puts in place of the password of a login it decided (see
    /// [`crate::connect_policy`]): rumqttd's auth hook then only compares it. Random per
    /// process; a client that sends it as its password is checked like any other.
    ticket: Arc<str>,
    /// Logins with a token as the password (set once, by the hub, before devices connect).
    tokens: Arc<std::sync::OnceLock<TokenLogin>>,
}

/// Username → argon2 hash, and what each account may read and publish (an account not in
/// `grants`: everything).
#[derive(Default)]
struct Accounts {
    users: HashMap<String, String>,
    grants: HashMap<String, Grants>,
}

/// Checks a password that is a token (a JWT, an app token), EMQX style: `None` when the
/// password is not one (it is then checked as a password), else the permissions the token
/// gives, or why it is refused. Arguments: username, password.
pub type TokenLogin = Arc<dyn Fn(&str, &str) -> Option<Result<Permissions, String>> + Send + Sync>;

impl Default for Credentials {
    fn default() -> Self {
        Self::new([])
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print hashes.
        f.debug_struct("Credentials")
            .field("users", &self.accounts().users.len())
            .finish()
    }
}

impl Credentials {
    /// Builds the table from `(username, hash)` pairs, with default login limits.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Self::with_limits(pairs, LoginLimits::default())
    }

    /// Builds the table from `(username, hash)` pairs, with these login limits.
    pub fn with_limits(
        pairs: impl IntoIterator<Item = (String, String)>,
        limits: LoginLimits,
    ) -> Self {
        let mut random = [0u8; 32];
        argon2::password_hash::rand_core::RngCore::fill_bytes(
            &mut argon2::password_hash::rand_core::OsRng,
            &mut random,
        );
        let ticket: String = random.iter().map(|b| format!("{b:02x}")).collect();
        Self {
            accounts: Arc::new(RwLock::new(Arc::new(Accounts {
                users: pairs.into_iter().collect(),
                grants: HashMap::new(),
            }))),
            gate: Arc::new(LoginGate::new(limits)),
            peers: None,
            ticket: ticket.into(),
            tokens: Arc::default(),
        }
    }

    /// What each account may read and publish (an account not named: everything).
    pub fn with_grants(self, grants: HashMap<String, Grants>) -> Self {
        let users = self.accounts().users.clone();
        *self.write() = Arc::new(Accounts { users, grants });
        self
    }

    fn accounts(&self) -> Arc<Accounts> {
        match self.accounts.read() {
            Ok(a) => a.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Arc<Accounts>> {
        self.accounts.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts the accounts and grants of `new` in force for every clone of these credentials
    /// (a configuration reload): later logins and permission decisions use them, and the
    /// remembered logins are forgotten (a changed or removed password is checked again).
    /// Connections already open keep what they were given at their CONNECT.
    pub fn replace_accounts(&self, new: &Credentials) {
        let accounts = new.accounts();
        *self.write() = accounts;
        self.gate.forget_remembered();
    }

    /// The permissions of an account logged in as `username` with `client_id`; `None` when
    /// it may do everything.
    pub fn permissions(&self, username: &str, client_id: &str) -> Option<Permissions> {
        self.accounts()
            .grants
            .get(username)
            .filter(|g| **g != Grants::all())
            .map(|g| g.for_principal(username, client_id))
    }

    /// Accepts tokens as passwords, checked by `check` (see [`TokenLogin`]); every clone of
    /// these credentials (every connection's codec) sees it. Once only; a second call is
    /// ignored.
    pub fn set_token_login(&self, check: TokenLogin) {
        let _ = self.tokens.set(check);
    }

    /// What a token login decides, when `password` is a token and token logins are on.
    pub(crate) fn token_login(
        &self,
        username: &str,
        password: &str,
    ) -> Option<Result<Permissions, String>> {
        let check = self.tokens.get()?;
        let outcome = check(username, password)?;
        if let Err(reason) = &outcome {
            tracing::warn!(%username, %reason, "MQTT token login refused");
        }
        Some(outcome)
    }

    /// Takes client addresses from `peers`, for the per-address part of the limits.
    pub fn with_peers(mut self, peers: Arc<Peers>) -> Self {
        self.peers = Some(peers);
        self
    }

    /// True when no user is configured (anonymous access).
    pub fn is_empty(&self) -> bool {
        self.accounts().users.is_empty()
    }

    /// Logins by outcome, for metrics.
    pub fn stats(&self) -> Arc<LoginStats> {
        self.gate.stats()
    }

    /// Decides a login of `client_id` from `ip` (when known). Runs argon2 (tens of
    /// milliseconds) on the limiter's threads.
    pub async fn decide(
        &self,
        ip: Option<std::net::IpAddr>,
        client_id: &str,
        username: &str,
        password: String,
    ) -> Verdict {
        let ip = ip.or_else(|| self.peers.as_ref().and_then(|p| p.ip_of(client_id)));
        let hash = self.accounts().users.get(username).cloned();
        let verdict = self.gate.check(ip, username, password, hash).await;
        if !verdict.accepted() {
            // Refusals in a flood are throttled by the backoff; a log line each is affordable.
            tracing::warn!(%username, %client_id, ?ip, reason = verdict.as_str(), "MQTT login refused");
        }
        verdict
    }

    /// Checks a login of `client_id`, whose address is looked up among the connections.
    pub async fn check(&self, client_id: &str, username: String, password: String) -> bool {
        self.decide(None, client_id, &username, password)
            .await
            .accepted()
    }

    /// The stand-in password of a login our codec decided.
    pub(crate) fn ticket(&self) -> &str {
        &self.ticket
    }

    /// Whether `password` is the stand-in of a login our codec accepted.
    pub(crate) fn ticket_ok(&self, password: &str) -> bool {
        let (a, b) = (password.as_bytes(), self.ticket.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("s3cret", "not-a-hash"));
        assert!(validate_hash(&h).is_ok());
        assert!(validate_hash("plain").is_err());
    }

    #[tokio::test]
    async fn credentials_check() {
        let creds = Credentials::new([("d1".to_owned(), hash_password("pw").unwrap())]);
        assert!(creds.check("c1", "d1".into(), "pw".into()).await);
        assert!(!creds.check("c1", "d1".into(), "px".into()).await);
        assert!(!creds.check("c2", "d2".into(), "pw".into()).await);
    }
}
