//! Cross-origin requests (CORS) for the routes an app on another origin uses: everything
//! under `/v1/` (the history API, SSE and long polls, the WebSocket handshake, the SDK
//! `/v1/sdk/edgewatch.js` and the API descriptions), from `live.allowed_origins`:
//!
//! * an origin listed as such is reflected with `Access-Control-Allow-Credentials: true`
//!   (sessions use cookies);
//! * with `"*"` listed, any other origin gets `Access-Control-Allow-Origin: *` without
//!   credentials (a browser then sends no cookies);
//! * an empty list: no CORS headers at all, same-origin only.
//!
//! Allowed: methods `GET`, `POST`, `OPTIONS`; request headers `authorization`,
//! `content-type`, `last-event-id`; the app may read `retry-after`; a preflight is cached
//! for 600 s. A request from an origin that is not allowed, or outside `/v1/`, gets no CORS
//! header (a preflight then reaches the router, which refuses the method), so a browser
//! keeps the page from reading the answer.
//!
//! Where: a layer around the router, inside the guard (`guard.rs`): the guard sees every
//! request first, so a preflight is held to the `Host` check and the rate limit like any
//! request; then a preflight is answered here, before any handler and so before any
//! authentication (a browser sends no credentials with a preflight).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use tower::{Layer as _, ServiceExt as _};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

/// How long a browser may cache a preflight's answer.
const MAX_AGE: Duration = Duration::from_secs(600);
/// The routes an app on another origin may use.
const SCOPE: &str = "/v1/";

/// `router` answering cross-origin requests from `allowed` (`live.allowed_origins`); as it is
/// when the list is empty.
pub(super) fn apply(router: Router, allowed: &[String]) -> Router {
    if allowed.is_empty() {
        return router;
    }
    let policy = Arc::new(Policy::new(allowed));
    router.layer(axum::middleware::from_fn_with_state(policy, cross_origin))
}

/// The allowed origins and the two answers.
#[derive(Debug)]
struct Policy {
    /// Origins listed one by one (`https://app.example.com`): reflected, with credentials.
    listed: Vec<String>,
    /// `"*"` listed: any other origin, without credentials.
    any: bool,
    credentialed: CorsLayer,
    public: CorsLayer,
}

impl Policy {
    fn new(allowed: &[String]) -> Self {
        let base = CorsLayer::new()
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([header::RETRY_AFTER])
            .max_age(MAX_AGE);
        Self {
            listed: allowed.iter().filter(|o| *o != "*").cloned().collect(),
            any: allowed.iter().any(|o| o == "*"),
            credentialed: base
                .clone()
                .allow_origin(AllowOrigin::mirror_request())
                .allow_credentials(true),
            public: base.allow_origin(Any),
        }
    }

    /// The answer for `req`: `None` outside [`SCOPE`], without `Origin`, or from an origin
    /// not allowed.
    fn layer_for(&self, req: &Request) -> Option<&CorsLayer> {
        if !req.uri().path().starts_with(SCOPE) {
            return None;
        }
        let origin = req.headers().get(header::ORIGIN)?.as_bytes();
        if self.listed.iter().any(|o| o.as_bytes() == origin) {
            Some(&self.credentialed)
        } else if self.any {
            Some(&self.public)
        } else {
            None
        }
    }
}

/// The middleware: an allowed cross-origin request goes through tower-http's CORS service
/// (a preflight is answered there), anything else to the router as it is, with
/// `Vary: origin` under [`SCOPE`] so that a cache never serves one origin's answer to
/// another.
async fn cross_origin(State(policy): State<Arc<Policy>>, req: Request, next: Next) -> Response {
    if let Some(cors) = policy.layer_for(&req) {
        let Ok(response) = cors.layer(next).oneshot(req).await;
        return response;
    }
    let scoped = req.uri().path().starts_with(SCOPE);
    let mut response = next.run(req).await;
    if scoped {
        response
            .headers_mut()
            .append(header::VARY, HeaderValue::from_static("origin"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;

    fn app(allowed: &[&str]) -> Router {
        let allowed: Vec<String> = allowed.iter().map(|s| (*s).to_owned()).collect();
        let router = Router::new()
            .route("/v1/series", get(|| async { "[]" }))
            .route("/metrics", get(|| async { "" }));
        apply(router, &allowed)
    }

    async fn send(app: &Router, method: Method, path: &str, origin: &str) -> Response {
        let mut req = Request::builder().method(method).uri(path);
        if !origin.is_empty() {
            req = req.header(header::ORIGIN, origin);
        }
        if req.method_ref() == Some(&Method::OPTIONS) {
            req = req
                .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
                .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization");
        }
        app.clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn cors_headers(res: &Response) -> Vec<String> {
        let names = res.headers().keys().map(|k| k.as_str().to_owned());
        names.filter(|k| k.starts_with("access-control-")).collect()
    }

    fn value<'a>(res: &'a Response, name: &str) -> &'a str {
        res.headers().get(name).map_or("", |v| v.to_str().unwrap())
    }

    #[tokio::test]
    async fn a_listed_origin_is_reflected_with_credentials() {
        let app = app(&["https://app.example"]);
        let pre = send(&app, Method::OPTIONS, "/v1/series", "https://app.example").await;
        assert!(pre.status().is_success(), "{}", pre.status());
        assert_eq!(
            value(&pre, "access-control-allow-origin"),
            "https://app.example"
        );
        assert_eq!(value(&pre, "access-control-allow-credentials"), "true");
        assert_eq!(value(&pre, "access-control-max-age"), "600");
        assert_eq!(
            value(&pre, "access-control-allow-methods"),
            "GET,POST,OPTIONS"
        );
        assert_eq!(
            value(&pre, "access-control-allow-headers"),
            "authorization,content-type,last-event-id"
        );
        let get = send(&app, Method::GET, "/v1/series", "https://app.example").await;
        assert_eq!(
            value(&get, "access-control-allow-origin"),
            "https://app.example"
        );
        assert_eq!(value(&get, "access-control-expose-headers"), "retry-after");
    }

    #[tokio::test]
    async fn other_origins_paths_and_empty_lists_get_no_cors_header() {
        let listed = app(&["https://app.example"]);
        for (method, path, origin) in [
            (Method::OPTIONS, "/v1/series", "https://evil.example"),
            (Method::GET, "/v1/series", "https://evil.example"),
            (Method::GET, "/v1/series", ""),
            (Method::OPTIONS, "/metrics", "https://app.example"),
        ] {
            let res = send(&listed, method.clone(), path, origin).await;
            assert!(cors_headers(&res).is_empty(), "{method} {path} {origin}");
        }
        let refused = send(
            &listed,
            Method::OPTIONS,
            "/v1/series",
            "https://evil.example",
        )
        .await;
        assert_eq!(refused.status(), axum::http::StatusCode::METHOD_NOT_ALLOWED);
        let same = send(&listed, Method::GET, "/v1/series", "").await;
        assert_eq!(value(&same, "vary"), "origin");
        let closed = app(&[]);
        let res = send(
            &closed,
            Method::OPTIONS,
            "/v1/series",
            "https://app.example",
        )
        .await;
        assert!(cors_headers(&res).is_empty());
    }

    #[tokio::test]
    async fn a_star_allows_any_origin_without_credentials_and_listed_ones_keep_them() {
        let app = app(&["*", "https://app.example"]);
        let pre = send(&app, Method::OPTIONS, "/v1/series", "https://any.example").await;
        assert_eq!(value(&pre, "access-control-allow-origin"), "*");
        assert_eq!(value(&pre, "access-control-allow-credentials"), "");
        let listed = send(&app, Method::GET, "/v1/series", "https://app.example").await;
        assert_eq!(value(&listed, "access-control-allow-credentials"), "true");
    }
}
