//! Device authentication: username/password entries whose passwords are stored as argon2
//! hashes (PHC strings, as printed by `edgewatch passwd`).

use std::collections::HashMap;
use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Hashes `password` with argon2id and a random salt; the result is a PHC string
/// (`$argon2id$v=19$...`) that goes into `[[broker.users]] password_hash`.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash password: {e}"))
}

/// Checks `password` against a PHC hash string. A malformed hash never matches.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Checks that `phc` is a well-formed password hash; the error says what is wrong.
pub fn validate_hash(phc: &str) -> Result<(), String> {
    PasswordHash::new(phc)
        .map(|_| ())
        .map_err(|e| format!("not a password hash ({e}); generate one with `edgewatch passwd`"))
}

/// The configured device credentials: username → argon2 hash. Cheap to clone.
#[derive(Clone, Default)]
pub struct Credentials {
    users: Arc<HashMap<String, String>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print hashes.
        f.debug_struct("Credentials")
            .field("users", &self.users.len())
            .finish()
    }
}

impl Credentials {
    /// Builds the table from `(username, hash)` pairs.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            users: Arc::new(pairs.into_iter().collect()),
        }
    }

    /// True when no user is configured (anonymous access).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks a login. Runs argon2 (tens of milliseconds) on a blocking thread so the
    /// listener's runtime keeps serving other connections meanwhile.
    pub async fn check(&self, username: String, password: String) -> bool {
        let Some(hash) = self.users.get(&username).cloned() else {
            tracing::warn!(%username, "MQTT login refused: unknown user");
            return false;
        };
        let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .unwrap_or(false);
        if !ok {
            tracing::warn!(%username, "MQTT login refused: wrong password");
        }
        ok
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
        assert!(creds.check("d1".into(), "pw".into()).await);
        assert!(!creds.check("d1".into(), "px".into()).await);
        assert!(!creds.check("d2".into(), "pw".into()).await);
    }
}
