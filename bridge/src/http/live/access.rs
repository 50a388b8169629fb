//! Who is calling, and what it may read and publish: the one place transports ask.
//!
//! Today every caller is anonymous and gets the configured read filters (default
//! `sensors/#`) and publish topics (default none). Token authentication slots in here
//! (resolve the caller from a header or query token) without touching the transports.
//! WebSocket and SSE requests also have their `Origin` checked against `allowed_origins`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use edgewatch_protocol::permissions::covers;
use edgewatch_protocol::TopicFilter;
use serde_json::json;

use super::LiveState;

/// The caller of a live endpoint and its permissions.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Filters whose topics this caller may read.
    pub read: Vec<TopicFilter>,
    /// Filters of topics this caller may publish to over WebSocket.
    pub publish: Vec<TopicFilter>,
}

impl Caller {
    /// Whether every topic `filter` can match lies inside what this caller may read.
    ///
    /// A requested filter is allowed when some granted filter covers it: the granted
    /// filter matches the requested one read as a topic (`sensors/#` covers `sensors/+/t`),
    /// with `#` only covered by a granted `#` at the same or an earlier level.
    pub fn may_read(&self, filter: &TopicFilter) -> bool {
        self.read.iter().any(|g| covers(g, filter))
    }

    /// Whether this caller may publish to `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|g| g.matches(topic))
    }
}

/// A refused request: JSON error body.
#[derive(Debug)]
pub struct Refused(StatusCode, &'static str, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(json!({"error": {"code": self.1, "message": self.2}})),
        )
            .into_response()
    }
}

impl FromRequestParts<LiveState> for Caller {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, state: &LiveState) -> Result<Self, Refused> {
        check_origin(parts, &state.cfg.allowed_origins)?;
        Ok(Caller {
            read: state.read_filters.clone(),
            publish: state.publish_filters.clone(),
        })
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
    Err(Refused(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        format!("origin {origin:?} is not in live.allowed_origins"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
