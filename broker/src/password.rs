//! Password hashes: argon2id PHC strings, as printed by `edgewatch passwd`.

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

/// Checks `password` against a PHC hash like [`verify_password`], with the algorithm's memory
/// (`m_cost` KiB, 19 MiB by default) taken from `memory` and kept there for the next check.
///
/// A 19 MiB allocation freed after every check made glibc raise its mmap and trim thresholds
/// for good (it adapts them to the largest block freed), after which the heaps kept tens of
/// megabytes of freed memory: 1,000 wrong logins left the hub at 108 MB instead of 13 MB. A
/// check thread that keeps its block never frees it.
pub fn verify_with_memory(password: &str, phc: &str, memory: &mut Vec<argon2::Block>) -> bool {
    fn check(password: &str, phc: &str, memory: &mut Vec<argon2::Block>) -> Option<bool> {
        let parsed = PasswordHash::new(phc).ok()?;
        let params = argon2::Params::try_from(&parsed).ok()?;
        let algorithm = argon2::Algorithm::try_from(parsed.algorithm).ok()?;
        let version = match parsed.version {
            Some(v) => argon2::Version::try_from(v).ok()?,
            None => argon2::Version::default(),
        };
        let expected = parsed.hash?;
        let mut salt = [0u8; 64];
        let salt = parsed.salt?.decode_b64(&mut salt).ok()?;
        if memory.len() != params.block_count() {
            memory.clear();
            memory.resize(params.block_count(), argon2::Block::default());
        }
        let mut out = vec![0u8; expected.len()];
        Argon2::new(algorithm, version, params)
            .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut memory[..])
            .ok()?;
        let diff = out
            .iter()
            .zip(expected.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        Some(diff == 0)
    }
    check(password, phc, memory).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifying_with_kept_memory_agrees_with_the_library() {
        let hash = hash_password("s3cret").unwrap();
        let mut memory = Vec::new();
        assert!(verify_with_memory("s3cret", &hash, &mut memory));
        assert!(!verify_with_memory("s3cres", &hash, &mut memory));
        assert_eq!(memory.len(), 19 * 1024, "19 MiB of 1 KiB blocks, kept");
        assert!(!verify_with_memory("s3cret", "not-a-hash", &mut memory));
        // Other parameters: the memory is resized.
        let small = argon2::Params::new(1024, 1, 1, None).unwrap();
        let other = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, small)
            .hash_password(b"pw", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(verify_with_memory("pw", &other, &mut memory));
        assert_eq!(memory.len(), 1024);
        assert!(verify_password("pw", &other));
    }
}
