//! The live routes' side of access: the caller ([`Caller`], decided by
//! [`crate::http::auth::Authority`], with the `access_token` query parameter accepted here) and
//! the `Origin` check of WebSocket and SSE requests against `allowed_origins`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

pub use crate::http::auth::Caller;

use super::LiveState;

/// A refused request: JSON error body.
#[derive(Debug)]
pub enum Refused {
    /// The origin is not allowed.
    Origin(StatusCode, &'static str, String),
    /// No valid credential.
    Auth(crate::http::auth::AuthError),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Origin(status, code, message) => (
                status,
                Json(json!({"error": {"code": code, "message": message}})),
            )
                .into_response(),
            Refused::Auth(err) => err.into_response(),
        }
    }
}

impl FromRequestParts<LiveState> for Caller {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, state: &LiveState) -> Result<Self, Refused> {
        check_origin(parts, &state.cfg.allowed_origins)?;
        state.auth.resolve(parts, true).map_err(Refused::Auth)
    }
}

/// `allowed_origins` empty: requests without `Origin` and same-origin requests pass (what a
/// browser sends for the dashboard); `"*"` allows any; otherwise the exact origin must be
/// listed (e.g. `https://app.example.com`).
fn check_origin(parts: &Parts, allowed: &[String]) -> Result<(), Refused> {
    let Some(origin) = parts.headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    if allowed.iter().any(|a| a == "*" || a == origin) {
        return Ok(());
    }
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let same = origin
        .split_once("://")
        .is_some_and(|(_, rest)| !host.is_empty() && rest.trim_end_matches('/') == host);
    if same {
        return Ok(());
    }
    Err(Refused::Origin(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        format!("origin {origin:?} is not in live.allowed_origins"),
    ))
}

#[cfg(test)]
mod tests {
    use edgewatch_protocol::permissions::covers;
    use edgewatch_protocol::TopicFilter;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s).unwrap()
    }

    #[test]
    fn coverage() {
        let g = f("sensors/#");
        for ok in [
            "sensors/#",
            "sensors/+/temperature",
            "sensors/d1/t",
            "sensors",
        ] {
            assert!(covers(&g, &f(ok)), "{ok}");
        }
        for no in ["#", "+/x", "other/#", "$SYS/#"] {
            assert!(!covers(&g, &f(no)), "{no}");
        }
        assert!(covers(&f("sensors/+/t"), &f("sensors/d1/t")));
        assert!(!covers(&f("sensors/+/t"), &f("sensors/+/#")));
        assert!(!covers(&f("#"), &f("$SYS/x")));
        assert!(covers(&f("#"), &f("a/+/b")));
    }
}
