//! App tokens: random secrets shown once by `edgewatch token create`, stored in the config
//! only as their BLAKE2b-256 hash.
//!
//! A token is `ewt_` and 64 hex digits (256 random bits). With that much entropy a fast hash
//! is enough (no password stretching): nobody can guess a token from its hash. Lookup hashes
//! the presented token and finds the hash in a map, so no comparison runs over the secret.

use std::collections::HashMap;

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use rand::RngCore;

/// What every app token starts with; a bearer token without it is taken for a JWT.
pub const TOKEN_PREFIX: &str = "ewt_";
/// What a stored hash starts with.
const HASH_PREFIX: &str = "blake2b:";

/// The hash of a token, as stored.
pub type TokenHash = [u8; 32];

/// A new random token and its config `hash` value.
pub fn generate() -> (String, String) {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let token = format!("{TOKEN_PREFIX}{}", hex(&secret));
    let hash = format!("{HASH_PREFIX}{}", hex(&hash_token(&token)));
    (token, hash)
}

/// BLAKE2b-256 of the token's bytes.
pub fn hash_token(token: &str) -> TokenHash {
    let mut h = Blake2b::<U32>::new();
    h.update(token.as_bytes());
    h.finalize().into()
}

/// Parses a config `hash` value (`blake2b:` + 64 hex digits).
pub fn parse_hash(text: &str) -> Result<TokenHash, String> {
    let bad = || {
        format!("expected {HASH_PREFIX} and 64 hex digits (`edgewatch token create` prints one)")
    };
    let digits = text.strip_prefix(HASH_PREFIX).ok_or_else(bad)?;
    if digits.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(digits.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
            .map_err(|_| bad())?;
    }
    Ok(out)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Configured tokens by hash.
#[derive(Debug, Default)]
pub struct TokenTable<T> {
    by_hash: HashMap<TokenHash, T>,
}

impl<T> TokenTable<T> {
    /// A table of `(hash, entry)` pairs.
    pub fn new(entries: impl IntoIterator<Item = (TokenHash, T)>) -> Self {
        Self {
            by_hash: entries.into_iter().collect(),
        }
    }

    /// The entry of `token`, when it is a configured token.
    pub fn find(&self, token: &str) -> Option<&T> {
        if self.by_hash.is_empty() {
            return None;
        }
        self.by_hash.get(&hash_token(token))
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_is_found_by_its_stored_hash_only() {
        let (token, stored) = generate();
        assert!(
            token.starts_with(TOKEN_PREFIX) && token.len() == 68,
            "{token}"
        );
        let table = TokenTable::new([(parse_hash(&stored).unwrap(), "grafana")]);
        assert_eq!(table.find(&token), Some(&"grafana"));
        let mut wrong = token.clone();
        wrong.pop();
        wrong.push(if token.ends_with('0') { '1' } else { '0' });
        assert_eq!(table.find(&wrong), None);
        assert_eq!(table.find(&stored), None, "the hash is not a token");
        let (other, _) = generate();
        assert_ne!(other, token);
    }

    #[test]
    fn malformed_hashes_are_refused() {
        for bad in [
            "",
            "blake2b:",
            "sha256:00",
            "blake2b:zz",
            &format!("blake2b:{}", "0".repeat(63)),
        ] {
            assert!(parse_hash(bad).is_err(), "{bad}");
        }
        assert!(parse_hash(&format!("blake2b:{}", "ab".repeat(32))).is_ok());
    }
}
