//! JWTs already verified, so a client that sends the same token with every request (or
//! every reconnect) pays for the signature and claim checks once: verifying an HS256 JWT and
//! turning its claims into permissions cost about 17 µs per request in `scripts/bench
//! --quick --scenario auth`, a third of the smallest request's time.
//!
//! Keyed by the BLAKE2b-256 of the token (as app tokens and sessions are), kept until the
//! token's `exp`, at most [`MAX_ENTRIES`]: when full, the expired entries go, and if none
//! has, everything (a flood of distinct valid tokens only costs their verification again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::tokens::{hash_token, TokenHash};
use super::Principal;

/// Most tokens remembered.
pub const MAX_ENTRIES: usize = 4096;

/// Verified tokens and their principals, until their expiry.
#[derive(Debug, Default)]
pub struct Verified {
    table: Mutex<HashMap<TokenHash, (Arc<Principal>, u64)>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Verified {
    /// The principal of `token` when it was verified before and has not expired.
    pub fn find(&self, token: &str) -> Option<Arc<Principal>> {
        let key = hash_token(token);
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let (principal, expires) = table.get(&key)?;
        if now_secs() < *expires {
            return Some(principal.clone());
        }
        table.remove(&key);
        None
    }

    /// Remembers `token`'s principal until `expires_at` (unix seconds). A token without
    /// `exp` is not remembered: it is checked every time.
    pub fn remember(&self, token: &str, principal: Arc<Principal>, expires_at: Option<u64>) {
        let Some(expires) = expires_at else { return };
        let now = now_secs();
        if expires <= now {
            return;
        }
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if table.len() >= MAX_ENTRIES {
            table.retain(|_, (_, e)| *e > now);
            if table.len() >= MAX_ENTRIES {
                table.clear();
            }
        }
        table.insert(hash_token(token), (principal, expires));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_remembered_until_its_expiry_only() {
        let v = Verified::default();
        let p = Arc::new(Principal::anonymous_everything());
        v.remember("a", p.clone(), Some(now_secs() + 60));
        v.remember("old", p.clone(), Some(now_secs() - 1));
        v.remember("forever", p.clone(), None);
        assert!(v.find("a").is_some());
        assert!(v.find("b").is_none());
        assert!(v.find("old").is_none(), "already expired: not kept");
        assert!(v.find("forever").is_none(), "no exp: checked every time");
        for i in 0..MAX_ENTRIES + 10 {
            v.remember(&format!("t{i}"), p.clone(), Some(now_secs() + 60));
        }
        assert!(v.table.lock().unwrap().len() <= MAX_ENTRIES);
    }
}
