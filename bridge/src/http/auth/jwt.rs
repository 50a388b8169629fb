//! JSON Web Tokens for the hub's HTTP side (issue #18 point 3): the `[auth.jwt]` settings and
//! [`JwtVerifier`], which turns a bearer token into [`JwtClaims`].
//!
//! Keys, any of them at once: an HS256 secret, an RSA (RS256) or EC P-256 (ES256) public key in
//! a PEM file, a JWKS file of such keys with `kid`s. The algorithm comes from the key, never
//! from the token alone: `none`, HS512, PS256 and the like are never accepted, and HS256 only
//! while a secret is configured. A `kid` naming a JWKS key selects that key alone; otherwise
//! every key of the token's algorithm is tried (with an unknown `kid`, only the secret and the
//! PEM key, which have no `kid`).
//!
//! Claims nest as Mercure's do (`mercure.subscribe` is `{"mercure": {"subscribe": [...]}}`):
//! `{"sub": "app-1", "exp": 1767225600, "edgewatch": {"read": ["sensors/+/temperature"],
//! "publish": ["cmd/app-1/#"], "metrics": true}}`. `edgewatch.read` plus `mercure.subscribe` are
//! the filters the caller may read, `edgewatch.publish` plus `mercure.publish` those it may
//! publish to; Mercure's `*` is an ordinary topic here, not "everything". `exp` is required
//! unless `require_exp = false`, `nbf` checked when present, `aud`/`iss` when configured.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use edgewatch_protocol::{InvalidSetting, TopicFilter};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest token accepted, in bytes, refused before any parsing (real ones are under 2 KiB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Most topic filters in a token's read (or publish) claims together.
pub const MAX_CLAIM_FILTERS: usize = 256;
/// Shortest HS256 secret: the hash output size, as RFC 7518 §3.2 requires.
pub const MIN_SECRET_BYTES: usize = 32;
/// Most keys in a JWKS file: a token without `kid` is tried against each key of its algorithm.
pub const MAX_JWKS_KEYS: usize = 32;
/// Largest key, secret or JWKS file read (a JWKS of 32 RSA 4096 keys is about 25 KiB).
const MAX_KEY_FILE_BYTES: u64 = 256 * 1024;
/// Largest `leeway_secs`: clocks an hour apart need fixing, not a wider window.
const MAX_LEEWAY_SECS: u64 = 3600;
/// Longest `sub`, in bytes: it is written to logs and `/v1/me`.
const MAX_SUBJECT_BYTES: usize = 256;
/// The OID of the P-256 curve (1.2.840.10045.3.1.7) in DER, and the size of its public key
/// (SubjectPublicKeyInfo, uncompressed point) and base64url coordinates.
const P256_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P256_SPKI_BYTES: usize = 91;
const P256_COORD_CHARS: usize = 43;
/// Smallest RSA public key taken, DER (2048 bits: 270 bytes in PKCS#1, 294 in SPKI) and a
/// JWK's base64url modulus (2048 bits).
const MIN_RSA_DER_BYTES: usize = 256;
const MIN_RSA_N_CHARS: usize = 342;

/// `[auth.jwt]` settings.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// HS256 shared secret (at least 32 bytes), inline. Prefer `secret_file`.
    pub secret: Option<String>,
    /// File holding the HS256 secret (trailing newline trimmed).
    pub secret_file: Option<PathBuf>,
    /// PEM file with an RSA (RS256) or EC P-256 (ES256) public key (`PUBLIC KEY` or
    /// `RSA PUBLIC KEY`; a certificate is refused with the command that extracts its key).
    pub public_key_file: Option<PathBuf>,
    /// JWKS file (JSON Web Key Set) with RSA / EC P-256 keys selected by `kid`. Keys for
    /// encryption (`"use": "enc"`) or other algorithms are skipped with a warning.
    pub jwks_file: Option<PathBuf>,
    /// Required `aud` (a token without it or with another is refused). None: `aud` not checked.
    pub audience: Option<String>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Clock skew allowed on exp/nbf, seconds. Default 30, at most 3600.
    pub leeway_secs: u64,
    /// Refuse tokens without `exp` (a token without expiry is a stolen-forever token). Default
    /// true.
    pub require_exp: bool,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            secret: None,
            secret_file: None,
            public_key_file: None,
            jwks_file: None,
            audience: None,
            issuer: None,
            leeway_secs: 30,
            require_exp: true,
        }
    }
}

/// By hand: the inline secret is never printed.
impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .field("public_key_file", &self.public_key_file)
            .field("jwks_file", &self.jwks_file)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway_secs", &self.leeway_secs)
            .field("require_exp", &self.require_exp)
            .finish()
    }
}

impl JwtConfig {
    /// Whether any key is configured (without one, JWTs are not accepted at all).
    pub fn is_configured(&self) -> bool {
        let files = [&self.secret_file, &self.public_key_file, &self.jwks_file];
        self.secret.is_some() || files.iter().any(|file| file.is_some())
    }
}

/// What a verified token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtClaims {
    /// `sub` (or "jwt" when absent): the principal's name in logs and `/v1/me`.
    pub subject: String,
    /// Topic filters it may read: `edgewatch.read` and Mercure-style `mercure.subscribe`.
    pub read: Vec<String>,
    /// Topics it may publish to (filters): `edgewatch.publish` and `mercure.publish`.
    pub publish: Vec<String>,
    /// `edgewatch.metrics: true` allows GET /metrics.
    pub metrics: bool,
    /// `exp` as unix seconds, when present.
    pub expires_at: Option<u64>,
}

/// Why a token was refused. Messages never quote the token. `Malformed` also covers tokens over
/// [`MAX_TOKEN_BYTES`] and headers with `crit`; `BadClaims` is a correctly signed token whose
/// claims are missing or invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is not meant for this hub (aud)")]
    WrongAudience,
    #[error("the token is not from the configured issuer (iss)")]
    WrongIssuer,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token names a key (kid) this hub does not have")]
    UnknownKey,
    #[error("the token's algorithm is not accepted by this hub")]
    AlgorithmNotAllowed,
    #[error("the token's claims are invalid: {0}")]
    BadClaims(String),
}

impl JwtError {
    /// A stable snake_case code for JSON error bodies and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            JwtError::Malformed => "token_malformed",
            JwtError::Expired => "token_expired",
            JwtError::NotYetValid => "token_not_yet_valid",
            JwtError::WrongAudience => "token_wrong_audience",
            JwtError::WrongIssuer => "token_wrong_issuer",
            JwtError::BadSignature => "token_bad_signature",
            JwtError::UnknownKey => "token_unknown_key",
            JwtError::AlgorithmNotAllowed => "token_algorithm_not_allowed",
            JwtError::BadClaims(_) => "token_bad_claims",
        }
    }

    fn from_library(err: jsonwebtoken::errors::Error) -> Self {
        match err.into_kind() {
            ErrorKind::ExpiredSignature => JwtError::Expired,
            ErrorKind::ImmatureSignature => JwtError::NotYetValid,
            ErrorKind::InvalidAudience => JwtError::WrongAudience,
            ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
            ErrorKind::InvalidAlgorithm => JwtError::AlgorithmNotAllowed,
            ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
                "aud" => JwtError::WrongAudience,
                "iss" => JwtError::WrongIssuer,
                _ => JwtError::BadClaims(format!("`{claim}` is missing or not a number")),
            },
            // A key that ring cannot use (for example an RSA key under 2048 bits) verifies
            // nothing: for the caller that is a signature that does not verify.
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::Crypto(_) => JwtError::BadSignature,
            _ => JwtError::Malformed,
        }
    }
}

/// A key as loaded: its algorithm and `kid`.
type Loaded = (Algorithm, Option<String>, DecodingKey);

/// One configured key with the checks every token verified by it goes through.
struct VerifyKey {
    alg: Algorithm,
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

/// Checks bearer tokens against the keys of a [`JwtConfig`]. Built once at startup.
pub struct JwtVerifier {
    keys: Vec<VerifyKey>,
}

/// By hand: a `DecodingKey` holds the secret. Shows each key's algorithm and `kid`.
impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<_> = self.keys.iter().map(|k| (k.alg, &k.kid)).collect();
        f.debug_struct("JwtVerifier").field("keys", &keys).finish()
    }
}

impl JwtVerifier {
    /// None when nothing is configured; Err names the key (e.g. "auth.jwt.public_key_file") and
    /// says what is wrong.
    pub fn from_config(cfg: &JwtConfig) -> Result<Option<Self>, InvalidSetting> {
        check_settings(cfg)?;
        if !cfg.is_configured() {
            return Ok(None);
        }
        let loaded = [load_secret(cfg)?, load_public_key(cfg)?, load_jwks(cfg)?];
        let keys = loaded
            .into_iter()
            .flatten()
            .map(|(alg, kid, key)| VerifyKey {
                validation: validation(cfg, alg),
                alg,
                kid,
                key,
            });
        Ok(Some(Self {
            keys: keys.collect(),
        }))
    }

    /// Verifies `token` (the bearer value, without `Bearer `) and returns what it grants.
    pub fn verify(&self, token: &str) -> Result<JwtClaims, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed);
        }
        let header = parse_header(token).ok_or(JwtError::Malformed)?;
        let alg = match header.alg.as_str() {
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            _ => return Err(JwtError::AlgorithmNotAllowed),
        };
        for key in self.candidates(alg, header.kid.as_deref())? {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation) {
                Ok(data) => return claims_from(data.claims),
                Err(err) => match JwtError::from_library(err) {
                    JwtError::BadSignature => continue,
                    other => return Err(other),
                },
            }
        }
        Err(JwtError::BadSignature)
    }

    /// The keys to try for a token with this algorithm and `kid` (see the module doc).
    fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Result<Vec<&VerifyKey>, JwtError> {
        let named = kid.and_then(|kid| self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)));
        if named.is_some_and(|k| k.alg != alg) || !self.keys.iter().any(|k| k.alg == alg) {
            return Err(JwtError::AlgorithmNotAllowed);
        }
        let keys: Vec<&VerifyKey> = match named {
            Some(key) => vec![key],
            None => self
                .keys
                .iter()
                .filter(|k| k.alg == alg && (kid.is_none() || k.kid.is_none()))
                .collect(),
        };
        if keys.is_empty() {
            return Err(JwtError::UnknownKey);
        }
        Ok(keys)
    }
}

/// The checks of every token verified with a key of algorithm `alg`.
fn validation(cfg: &JwtConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = cfg.leeway_secs;
    v.validate_nbf = true; // exp is checked by default, nbf is not
    let mut required = Vec::new();
    if cfg.require_exp {
        required.push("exp");
    }
    match &cfg.audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        None => v.validate_aud = false,
    }
    if let Some(iss) = &cfg.issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    v.set_required_spec_claims(&required);
    v
}

fn invalid(field: &str, message: impl Into<String>) -> InvalidSetting {
    InvalidSetting::new(format!("auth.jwt.{field}"), message)
}

/// The settings that are not keys.
fn check_settings(cfg: &JwtConfig) -> Result<(), InvalidSetting> {
    if cfg.leeway_secs > MAX_LEEWAY_SECS {
        let message = format!("{} seconds; at most {MAX_LEEWAY_SECS}", cfg.leeway_secs);
        return Err(invalid("leeway_secs", message));
    }
    for (field, value) in [("audience", &cfg.audience), ("issuer", &cfg.issuer)] {
        let problem = match value {
            Some(v) if v.is_empty() => "is empty; leave it out to skip this check",
            Some(_) if !cfg.is_configured() => "is set, but no key (secret, ...) is",
            _ => continue,
        };
        return Err(invalid(field, problem));
    }
    Ok(())
}

/// Reads a key file, at most [`MAX_KEY_FILE_BYTES`].
fn read_file(path: &Path, field: &str) -> Result<Vec<u8>, InvalidSetting> {
    let fail = |e: std::io::Error| invalid(field, format!("cannot read {}: {e}", path.display()));
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_KEY_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(fail)?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        let message = format!("{} is over {MAX_KEY_FILE_BYTES} bytes", path.display());
        return Err(invalid(field, message));
    }
    Ok(bytes)
}

/// The HS256 secret, when one is configured.
fn load_secret(cfg: &JwtConfig) -> Result<Vec<Loaded>, InvalidSetting> {
    let (secret, field) = match (&cfg.secret, &cfg.secret_file) {
        (Some(_), Some(_)) => return Err(invalid("secret", "set secret or secret_file, not both")),
        (Some(secret), None) => (secret.as_bytes().to_vec(), "secret"),
        (None, Some(path)) => {
            let mut bytes = read_file(path, "secret_file")?;
            while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                bytes.pop();
            }
            (bytes, "secret_file")
        }
        (None, None) => return Ok(Vec::new()),
    };
    if secret.len() < MIN_SECRET_BYTES {
        let (len, hint) = (secret.len(), "for example `openssl rand -base64 48`");
        let message =
            format!("the HS256 secret is {len} bytes; {MIN_SECRET_BYTES} are needed ({hint})");
        return Err(invalid(field, message));
    }
    Ok(vec![(
        Algorithm::HS256,
        None,
        DecodingKey::from_secret(&secret),
    )])
}

/// The RSA or EC P-256 public key of the PEM file, when one is configured.
fn load_public_key(cfg: &JwtConfig) -> Result<Vec<Loaded>, InvalidSetting> {
    const FIELD: &str = "public_key_file";
    let Some(path) = &cfg.public_key_file else {
        return Ok(Vec::new());
    };
    let bytes = read_file(path, FIELD)?;
    let fail = |what: &str| invalid(FIELD, format!("{}: {what}", path.display()));
    let pem = pem::parse(&bytes).map_err(|e| fail(&format!("not a PEM file ({e})")))?;
    let refused = match pem.tag() {
        "PUBLIC KEY" | "RSA PUBLIC KEY" => None,
        "CERTIFICATE" => Some(
            "holds a certificate; give its public key \
            (`openssl x509 -in CERT -pubkey -noout`)"
                .to_owned(),
        ),
        tag if tag.contains("PRIVATE") => Some(format!(
            "holds a private key ({tag}); give its public half (`openssl pkey -in KEY -pubout`)"
        )),
        tag => Some(format!("holds a `{tag}` block, not a `PUBLIC KEY`")),
    };
    if let Some(what) = refused {
        return Err(fail(&what));
    }
    let der = pem.contents();
    if let Ok(key) = DecodingKey::from_rsa_pem(&bytes) {
        if der.len() < MIN_RSA_DER_BYTES {
            return Err(fail("the RSA key is shorter than 2048 bits"));
        }
        return Ok(vec![(Algorithm::RS256, None, key)]);
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&bytes) {
        if der.len() != P256_SPKI_BYTES || !der.windows(P256_OID.len()).any(|w| w == P256_OID) {
            return Err(fail("the EC key is not an uncompressed P-256 key (ES256)"));
        }
        return Ok(vec![(Algorithm::ES256, None, key)]);
    }
    Err(fail("not an RSA or EC P-256 public key"))
}

/// A JSON Web Key Set file: `{"keys": [...]}`, other members ignored.
#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

/// The members of a JSON Web Key (RFC 7517/7518) this module reads.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// The usable keys of the JWKS file, when one is configured.
fn load_jwks(cfg: &JwtConfig) -> Result<Vec<Loaded>, InvalidSetting> {
    const FIELD: &str = "jwks_file";
    let Some(path) = &cfg.jwks_file else {
        return Ok(Vec::new());
    };
    let fail = |what: String| invalid(FIELD, format!("{}: {what}", path.display()));
    let set: JwkSet = serde_json::from_slice(&read_file(path, FIELD)?)
        .map_err(|e| fail(format!("not a JSON Web Key Set {{\"keys\": [...]}} ({e})")))?;
    if set.keys.len() > MAX_JWKS_KEYS {
        let message = format!("{} keys; at most {MAX_JWKS_KEYS}", set.keys.len());
        return Err(fail(message));
    }
    let mut keys: Vec<Loaded> = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let kid = jwk.kid.as_ref().map(|kid| format!(" (kid {kid:?})"));
        let name = format!("key {i}{}", kid.unwrap_or_default());
        let Some((alg, key)) = jwk_key(jwk).map_err(|what| fail(format!("{name}: {what}")))? else {
            let path = path.display();
            tracing::warn!(%path, key = %name, "JWKS key skipped: not an RS256 or ES256 signing key");
            continue;
        };
        if jwk.kid.is_some() && keys.iter().any(|(_, kid, _)| *kid == jwk.kid) {
            return Err(fail(format!("{name}: another key has the same kid")));
        }
        keys.push((alg, jwk.kid.clone(), key));
    }
    if keys.is_empty() {
        return Err(fail("no RS256 or ES256 (P-256) signing key".to_owned()));
    }
    Ok(keys)
}

/// A JWK as a verification key: None for a key this hub does not verify with (for encryption,
/// or of another algorithm or curve), Err when a key it would use is broken.
fn jwk_key(jwk: &Jwk) -> Result<Option<(Algorithm, DecodingKey)>, String> {
    let member = |m: &Option<String>, name: &str| m.clone().ok_or(format!("`{name}` is missing"));
    let alg = jwk.alg.as_deref();
    match jwk.kty.as_str() {
        _ if jwk.usage.as_deref() == Some("enc") => Ok(None),
        "RSA" if matches!(alg, None | Some("RS256")) => {
            let (n, e) = (member(&jwk.n, "n")?, member(&jwk.e, "e")?);
            if n.len() < MIN_RSA_N_CHARS {
                return Err("the RSA modulus is shorter than 2048 bits".into());
            }
            let key = DecodingKey::from_rsa_components(&n, &e);
            Ok(Some((
                Algorithm::RS256,
                key.map_err(|_| "`n` or `e` is not base64url")?,
            )))
        }
        "EC" if matches!(alg, None | Some("ES256")) && jwk.crv.as_deref() == Some("P-256") => {
            let (x, y) = (member(&jwk.x, "x")?, member(&jwk.y, "y")?);
            if x.len() != P256_COORD_CHARS || y.len() != P256_COORD_CHARS {
                return Err("`x` and `y` must be 32 bytes each (P-256)".into());
            }
            let key = DecodingKey::from_ec_components(&x, &y);
            Ok(Some((
                Algorithm::ES256,
                key.map_err(|_| "`x` or `y` is not base64url")?,
            )))
        }
        _ => Ok(None),
    }
}

/// The header members read before a key is chosen.
#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    crit: Option<Value>,
}

/// The header of a compact JWS of three parts; None when it is not one.
fn parse_header(token: &str) -> Option<Header> {
    let (head, _) = token
        .split_once('.')
        .filter(|_| token.split('.').count() == 3)?;
    let header: Header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(head).ok()?).ok()?;
    // RFC 7515 §4.1.11: a token with extensions that must be understood is refused, and this
    // module understands none.
    header.crit.is_none().then_some(header)
}

/// The claims this module reads; others are ignored.
#[derive(Deserialize)]
struct RawClaims {
    sub: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
    edgewatch: Option<EdgewatchClaim>,
    mercure: Option<MercureClaim>,
}

/// `edgewatch`: strict, so that a misspelt member is an error rather than a silent nothing.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct EdgewatchClaim {
    read: Vec<String>,
    publish: Vec<String>,
    metrics: bool,
}

/// `mercure`: Mercure's other members (`payload`) are ignored.
#[derive(Deserialize, Default)]
#[serde(default)]
struct MercureClaim {
    subscribe: Vec<String>,
    publish: Vec<String>,
}

/// The grants of a token whose signature and registered claims have been checked.
fn claims_from(claims: Map<String, Value>) -> Result<JwtClaims, JwtError> {
    let raw: RawClaims = serde_json::from_value(Value::Object(claims))
        .map_err(|e| JwtError::BadClaims(e.to_string()))?;
    for (name, time) in [("exp", raw.exp), ("nbf", raw.nbf)] {
        if time.is_some_and(|t| t < 0.0) {
            return Err(JwtError::BadClaims(format!("`{name}` is negative")));
        }
    }
    let subject = raw.sub.unwrap_or_else(|| "jwt".to_owned());
    let bad_length = subject.is_empty() || subject.len() > MAX_SUBJECT_BYTES;
    if bad_length || subject.contains(char::is_control) {
        let message =
            format!("`sub` must be 1 to {MAX_SUBJECT_BYTES} bytes, no control characters");
        return Err(JwtError::BadClaims(message));
    }
    let ours = raw.edgewatch.unwrap_or_default();
    let mercure = raw.mercure.unwrap_or_default();
    Ok(JwtClaims {
        subject,
        read: filters(ours.read, mercure.subscribe, ["read", "subscribe"])?,
        publish: filters(ours.publish, mercure.publish, ["publish", "publish"])?,
        metrics: ours.metrics,
        expires_at: raw.exp.map(|t| t as u64),
    })
}

/// `edgewatch.NAME` and `mercure.NAME` joined, at most [`MAX_CLAIM_FILTERS`] filters, each
/// checked like one from an HTTP request.
fn filters(
    ours: Vec<String>,
    theirs: Vec<String>,
    names: [&str; 2],
) -> Result<Vec<String>, JwtError> {
    let mut all = Vec::new();
    for (list, claim, name) in [(ours, "edgewatch", names[0]), (theirs, "mercure", names[1])] {
        let bad = |what: String| JwtError::BadClaims(format!("`{claim}.{name}`: {what}"));
        if all.len() + list.len() > MAX_CLAIM_FILTERS {
            return Err(bad(format!("over {MAX_CLAIM_FILTERS} filters")));
        }
        for filter in &list {
            TopicFilter::parse_bounded(filter).map_err(|e| bad(e.to_string()))?;
        }
        all.extend(list);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use jsonwebtoken::{encode, get_current_timestamp, EncodingKey, Header as JwsHeader};
    use serde_json::json;

    use super::*;

    const SECRET: &str = "test-only-hs256-secret-0123456789abcdef";
    const RSA_PRIVATE: &str = include_str!("../../../tests/fixtures/jwt/test_rsa_private.pem");
    const RSA_PUBLIC: &str = include_str!("../../../tests/fixtures/jwt/test_rsa_public.pem");
    const EC_PRIVATE: &str = include_str!("../../../tests/fixtures/jwt/test_ec_private.pem");

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/jwt")
            .join(name)
    }

    fn config(secret: bool, public_key: Option<&str>, jwks: bool) -> JwtConfig {
        JwtConfig {
            secret: secret.then(|| SECRET.to_owned()),
            public_key_file: public_key.map(fixture),
            jwks_file: jwks.then(|| fixture("test_jwks.json")),
            ..JwtConfig::default()
        }
    }

    fn verifier(cfg: &JwtConfig) -> JwtVerifier {
        JwtVerifier::from_config(cfg)
            .expect("valid config")
            .expect("configured")
    }

    /// `sub` app-1, expiring in ten minutes, with `extra` merged in (null removes a claim).
    fn claims(extra: Value) -> Value {
        let mut claims = json!({"sub": "app-1", "exp": get_current_timestamp() + 600});
        for (k, v) in extra.as_object().expect("an object") {
            match v {
                Value::Null => claims.as_object_mut().unwrap().remove(k),
                v => claims.as_object_mut().unwrap().insert(k.clone(), v.clone()),
            };
        }
        claims
    }

    fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let key = match alg {
            Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
            Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
            _ => EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
        };
        let header = JwsHeader {
            kid: kid.map(str::to_owned),
            ..JwsHeader::new(alg)
        };
        encode(&header, claims, &key).unwrap()
    }

    /// A token with this header and payload JSON and a junk signature.
    fn unsigned(header: &Value, payload: &Value) -> String {
        let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.c2ln", part(header), part(payload))
    }

    #[test]
    fn hs256_rs256_es256_accepted_with_claims() {
        let grants = json!({"edgewatch": {"read": ["sensors/+/temperature"],
            "publish": ["cmd/app-1/#"], "metrics": true}, "mercure": {"subscribe": ["sensors/d1/#"]}});
        for (cfg, alg) in [
            (config(true, None, false), Algorithm::HS256),
            (
                config(false, Some("test_rsa_public.pem"), false),
                Algorithm::RS256,
            ),
            (
                config(false, Some("test_ec_public.pem"), false),
                Algorithm::ES256,
            ),
        ] {
            let claims = claims(grants.clone());
            let got = verifier(&cfg)
                .verify(&sign(alg, None, &claims))
                .expect("accepted");
            assert_eq!(got.subject, "app-1");
            assert_eq!(got.read, ["sensors/+/temperature", "sensors/d1/#"]);
            assert_eq!(got.publish, ["cmd/app-1/#"]);
            assert!(got.metrics);
            assert_eq!(got.expires_at, claims["exp"].as_u64());
        }
        let bare = verifier(&config(true, None, false));
        let got = bare.verify(&sign(Algorithm::HS256, None, &claims(json!({"sub": null}))));
        let got = got.unwrap();
        assert_eq!(
            (got.subject.as_str(), got.read.len(), got.metrics),
            ("jwt", 0, false)
        );
    }

    #[test]
    fn time_audience_and_issuer_are_checked() {
        let now = get_current_timestamp();
        let v = verifier(&config(true, None, false));
        let hs = |extra| sign(Algorithm::HS256, None, &claims(extra));
        assert_eq!(
            v.verify(&hs(json!({"exp": now - 3600}))),
            Err(JwtError::Expired)
        );
        assert!(
            v.verify(&hs(json!({"exp": now - 10}))).is_ok(),
            "within the 30 s leeway"
        );
        assert_eq!(
            v.verify(&hs(json!({"nbf": now + 3600}))),
            Err(JwtError::NotYetValid)
        );
        assert!(v.verify(&hs(json!({"nbf": now - 5}))).is_ok());
        assert!(
            v.verify(&hs(json!({"aud": "anyone"}))).is_ok(),
            "aud unchecked when unset"
        );
        let strict = verifier(&JwtConfig {
            leeway_secs: 0,
            ..config(true, None, false)
        });
        let late = strict.verify(&hs(json!({"exp": now - 10})));
        assert_eq!(late, Err(JwtError::Expired));
        let cfg = JwtConfig {
            audience: Some("edgewatch".into()),
            issuer: Some("https://idp.test".into()),
            ..config(true, None, false)
        };
        let v = verifier(&cfg);
        let iss = "https://idp.test";
        assert!(v
            .verify(&hs(json!({"aud": "edgewatch", "iss": iss})))
            .is_ok());
        assert!(v
            .verify(&hs(json!({"aud": ["x", "edgewatch"], "iss": iss})))
            .is_ok());
        let wrong_aud = v.verify(&hs(json!({"aud": "other", "iss": iss})));
        assert_eq!(wrong_aud, Err(JwtError::WrongAudience));
        assert_eq!(
            v.verify(&hs(json!({"iss": iss}))),
            Err(JwtError::WrongAudience)
        );
        let wrong_iss = v.verify(&hs(json!({"aud": "edgewatch", "iss": "https://evil.test"})));
        assert_eq!(wrong_iss, Err(JwtError::WrongIssuer));
        assert_eq!(
            v.verify(&hs(json!({"aud": "edgewatch"}))),
            Err(JwtError::WrongIssuer)
        );
    }

    #[test]
    fn exp_is_required_unless_configured_otherwise() {
        let token = sign(Algorithm::HS256, None, &claims(json!({"exp": null})));
        let err = verifier(&config(true, None, false))
            .verify(&token)
            .unwrap_err();
        assert_eq!(err.code(), "token_bad_claims");
        let lax = JwtConfig {
            require_exp: false,
            ..config(true, None, false)
        };
        assert_eq!(verifier(&lax).verify(&token).unwrap().expires_at, None);
        let text_exp = sign(Algorithm::HS256, None, &claims(json!({"exp": "tomorrow"})));
        assert!(matches!(
            verifier(&lax).verify(&text_exp),
            Err(JwtError::BadClaims(_))
        ));
    }

    #[test]
    fn bad_signature_and_tampered_payload_are_refused() {
        let other = EncodingKey::from_secret(b"another-secret-another-secret-0123456789");
        let token = encode(&JwsHeader::default(), &claims(json!({})), &other).unwrap();
        let v = verifier(&config(true, Some("test_rsa_public.pem"), false));
        assert_eq!(v.verify(&token), Err(JwtError::BadSignature));
        let token = sign(Algorithm::RS256, None, &claims(json!({})));
        let forged =
            URL_SAFE_NO_PAD.encode(claims(json!({"edgewatch": {"read": ["#"]}})).to_string());
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_eq!(v.verify(&tampered), Err(JwtError::BadSignature));
        let mut sig = parts[2].to_owned();
        sig.replace_range(10..11, if &sig[10..11] == "A" { "B" } else { "A" });
        let resigned = format!("{}.{}.{sig}", parts[0], parts[1]);
        assert_eq!(v.verify(&resigned), Err(JwtError::BadSignature));
    }

    #[test]
    fn algorithm_comes_from_the_key_not_the_header() {
        let v = verifier(&config(false, Some("test_rsa_public.pem"), false));
        let payload = claims(json!({"edgewatch": {"read": ["#"]}}));
        for alg in ["none", "None", "HS512", "PS256", "RS384"] {
            let token = unsigned(&json!({"alg": alg, "typ": "JWT"}), &payload);
            assert_eq!(
                v.verify(&token),
                Err(JwtError::AlgorithmNotAllowed),
                "{alg}"
            );
        }
        let none = format!(
            "{}.",
            unsigned(&json!({"alg": "none"}), &payload)
                .rsplit_once('.')
                .unwrap()
                .0
        );
        assert_eq!(v.verify(&none), Err(JwtError::AlgorithmNotAllowed));
        // The classic confusion: HS256 keyed with the RSA public key's PEM text.
        let confused = EncodingKey::from_secret(RSA_PUBLIC.as_bytes());
        let token = encode(&JwsHeader::new(Algorithm::HS256), &payload, &confused).unwrap();
        assert_eq!(v.verify(&token), Err(JwtError::AlgorithmNotAllowed));
        let with_secret = verifier(&config(true, Some("test_rsa_public.pem"), false));
        assert_eq!(with_secret.verify(&token), Err(JwtError::BadSignature));
        let es = sign(Algorithm::ES256, None, &payload);
        assert_eq!(v.verify(&es), Err(JwtError::AlgorithmNotAllowed));
    }

    #[test]
    fn jwks_keys_are_selected_by_kid() {
        let v = verifier(&config(true, None, true));
        let payload = claims(json!({}));
        for (alg, kid) in [
            (Algorithm::RS256, "test-rsa-1"),
            (Algorithm::ES256, "test-ec-1"),
        ] {
            assert!(v.verify(&sign(alg, Some(kid), &payload)).is_ok(), "{kid}");
            assert!(
                v.verify(&sign(alg, None, &payload)).is_ok(),
                "{alg:?} without kid"
            );
        }
        let unknown = sign(Algorithm::RS256, Some("nope"), &payload);
        assert_eq!(v.verify(&unknown), Err(JwtError::UnknownKey));
        let crossed = sign(Algorithm::RS256, Some("test-ec-1"), &payload);
        assert_eq!(v.verify(&crossed), Err(JwtError::AlgorithmNotAllowed));
        // A kid no JWKS key has still reaches the secret, which has none.
        assert!(v
            .verify(&sign(Algorithm::HS256, Some("hmac-1"), &payload))
            .is_ok());
        assert!(format!("{v:?}").contains("test-rsa-1"));
    }

    #[test]
    fn malformed_and_oversize_tokens_are_refused() {
        let v = verifier(&config(true, None, false));
        let mut long = sign(Algorithm::HS256, None, &claims(json!({})));
        for token in ["", "abc", "a.b", "a.b.c.d", "!!!.e30.c2ln", "e30.e30.c2ln"] {
            assert_eq!(v.verify(token), Err(JwtError::Malformed), "{token:?}");
        }
        long.push_str(&"A".repeat(MAX_TOKEN_BYTES));
        assert_eq!(v.verify(&long), Err(JwtError::Malformed));
        let crit = unsigned(
            &json!({"alg": "HS256", "crit": ["b64"], "b64": false}),
            &json!({}),
        );
        assert_eq!(v.verify(&crit), Err(JwtError::Malformed));
    }

    #[test]
    fn claims_are_validated() {
        let v = verifier(&config(true, None, false));
        let hs = |extra| v.verify(&sign(Algorithm::HS256, None, &claims(extra)));
        let many: Vec<String> = (0..=MAX_CLAIM_FILTERS).map(|i| format!("s/{i}")).collect();
        let split = (many[..200].to_vec(), many[200..].to_vec());
        for extra in [
            json!({"edgewatch": {"read": ["sensors/#/x"]}}),
            json!({"edgewatch": {"publish": ["a/b+"]}}),
            json!({"mercure": {"subscribe": [""]}}),
            json!({"edgewatch": {"read": many}}),
            json!({"edgewatch": {"read": split.0}, "mercure": {"subscribe": split.1}}),
            json!({"edgewatch": {"read": "sensors/#"}}),
            json!({"edgewatch": {"raed": ["sensors/#"]}}),
            json!({"sub": "a\nb"}),
            json!({"sub": 7}),
        ] {
            let err = hs(extra.clone()).unwrap_err();
            assert!(matches!(err, JwtError::BadClaims(_)), "{extra}: {err:?}");
        }
        assert!(hs(json!({"mercure": {"subscribe": ["*"], "payload": {"a": 1}}})).is_ok());
    }

    #[test]
    fn config_errors_name_the_key() {
        let err = |cfg: JwtConfig| JwtVerifier::from_config(&cfg).unwrap_err();
        let short = err(JwtConfig {
            secret: Some("too-short".into()),
            ..JwtConfig::default()
        });
        assert_eq!(short.key, "auth.jwt.secret");
        assert!(!short.message.contains("too-short"), "{short}");
        let missing = PathBuf::from("/nonexistent/edgewatch-jwt.pem");
        let cfg = JwtConfig {
            public_key_file: Some(missing.clone()),
            ..JwtConfig::default()
        };
        assert_eq!(err(cfg).key, "auth.jwt.public_key_file");
        let cfg = JwtConfig {
            jwks_file: Some(missing),
            ..JwtConfig::default()
        };
        assert_eq!(err(cfg).key, "auth.jwt.jwks_file");
        let private = err(config(false, Some("test_rsa_private.pem"), false));
        assert!(private.message.contains("private key"), "{private}");
        let not_jwks = JwtConfig {
            jwks_file: Some(fixture("test_ec_public.pem")),
            ..JwtConfig::default()
        };
        assert_eq!(err(not_jwks).key, "auth.jwt.jwks_file");
        let both = JwtConfig {
            secret_file: Some(fixture("README.md")),
            ..config(true, None, false)
        };
        assert_eq!(err(both).key, "auth.jwt.secret");
        let leeway = JwtConfig {
            leeway_secs: 86_400,
            ..config(true, None, false)
        };
        assert_eq!(err(leeway).key, "auth.jwt.leeway_secs");
        let keyless = JwtConfig {
            audience: Some("edgewatch".into()),
            ..JwtConfig::default()
        };
        assert_eq!(err(keyless).key, "auth.jwt.audience");
        assert!(JwtVerifier::from_config(&JwtConfig::default())
            .unwrap()
            .is_none());
    }

    #[test]
    fn secret_file_is_trimmed_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt.secret");
        std::fs::write(&path, format!("{SECRET}\n")).unwrap();
        let cfg = JwtConfig {
            secret_file: Some(path),
            ..JwtConfig::default()
        };
        let v = verifier(&cfg);
        assert!(v
            .verify(&sign(Algorithm::HS256, None, &claims(json!({}))))
            .is_ok());
        let inline = config(true, None, false);
        for shown in [
            format!("{v:?}"),
            format!("{:?}", verifier(&inline)),
            format!("{inline:?}"),
        ] {
            assert!(
                !shown.contains(SECRET) && !shown.contains("test-only"),
                "{shown}"
            );
        }
        let parsed: JwtConfig = serde_json::from_value(json!({"secret_file": "/s"})).unwrap();
        assert_eq!((parsed.leeway_secs, parsed.require_exp), (30, true));
    }

    #[test]
    fn error_codes_are_distinct_and_messages_do_not_quote_the_token() {
        let errors = [
            JwtError::Malformed,
            JwtError::Expired,
            JwtError::NotYetValid,
            JwtError::WrongAudience,
            JwtError::WrongIssuer,
            JwtError::BadSignature,
            JwtError::UnknownKey,
            JwtError::AlgorithmNotAllowed,
            JwtError::BadClaims(String::new()),
        ];
        let mut codes: Vec<&str> = errors.iter().map(JwtError::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), errors.len());
        let v = verifier(&config(true, None, false));
        let token = sign(
            Algorithm::HS256,
            Some("kid-xyz"),
            &claims(json!({"exp": 1})),
        );
        let message = v.verify(&token).unwrap_err().to_string();
        assert!(
            token.split('.').all(|part| !message.contains(part)) && !message.contains("kid-xyz")
        );
    }
}
