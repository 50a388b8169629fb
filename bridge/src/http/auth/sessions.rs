//! Login sessions of people: a random id in an HttpOnly cookie, the principal in memory.
//!
//! Kept in memory only: a restart logs everyone out. At most `auth.max_sessions`; a login
//! beyond that ends the session closest to expiry (counted). A session id is 256 random bits;
//! the table is keyed by its hash, like app tokens, so lookups never compare the secret.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngCore;

use super::tokens::{hash_token, hex, TokenHash};
use super::Principal;

/// The session cookie's name.
pub const COOKIE: &str = "edgewatch_session";

#[derive(Debug)]
struct Session {
    principal: Arc<Principal>,
    expires: Instant,
}

/// Open sessions. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Sessions {
    table: Mutex<HashMap<TokenHash, Session>>,
    lifetime: Duration,
    max: usize,
    evicted: AtomicU64,
}

impl Sessions {
    /// At most `max` sessions of `lifetime` each.
    pub fn new(lifetime: Duration, max: usize) -> Self {
        Self {
            table: Mutex::new(HashMap::new()),
            lifetime,
            max: max.max(1),
            evicted: AtomicU64::new(0),
        }
    }

    /// How long a session lasts.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Opens a session for `principal`; returns the id to put in the cookie.
    pub fn open(&self, principal: Arc<Principal>) -> String {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let id = hex(&secret);
        let now = Instant::now();
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.retain(|_, s| s.expires > now);
        if table.len() >= self.max {
            let oldest = table.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k);
            if let Some(k) = oldest {
                table.remove(&k);
                self.evicted.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    max = self.max,
                    "auth.max_sessions reached: ended the oldest session"
                );
            }
        }
        table.insert(
            hash_token(&id),
            Session {
                principal,
                expires: now + self.lifetime,
            },
        );
        id
    }

    /// The principal of session `id`, unless it has expired or ended.
    pub fn find(&self, id: &str) -> Option<Arc<Principal>> {
        let key = hash_token(id);
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        match table.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.principal.clone()),
            Some(_) => {
                table.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends session `id` (logout).
    pub fn close(&self, id: &str) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.remove(&hash_token(id));
    }

    /// Open sessions (expired ones not yet swept included) and sessions ended by the cap.
    pub fn stats(&self) -> (usize, u64) {
        let open = self.table.lock().unwrap_or_else(|e| e.into_inner()).len();
        (open, self.evicted.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_end_by_logout_expiry_and_the_cap() {
        let s = Sessions::new(Duration::from_secs(60), 2);
        let p = Arc::new(Principal::anonymous_everything());
        let a = s.open(p.clone());
        let b = s.open(p.clone());
        assert!(s.find(&a).is_some() && s.find(&b).is_some());
        assert!(s.find("nope").is_none());
        let c = s.open(p.clone());
        assert!(s.find(&a).is_none(), "the oldest session made way");
        assert!(s.find(&c).is_some());
        assert_eq!(s.stats(), (2, 1));
        s.close(&c);
        assert!(s.find(&c).is_none());
        let short = Sessions::new(Duration::ZERO, 2);
        let d = short.open(p);
        assert!(short.find(&d).is_none(), "expired");
    }
}
