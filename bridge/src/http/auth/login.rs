//! People's logins: the login page, `POST /v1/login` (session cookie), `POST /v1/logout`, and
//! `GET /v1/me` (who the caller is, for the dashboard).
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /login` | the login page (HTML; public) |
//! | `POST /v1/login` | `{"username","password"}` → `200` + `Set-Cookie` (HttpOnly, SameSite=Strict), `401 bad_credentials`, `429 throttled`, `404 no_accounts` |
//! | `POST /v1/logout` | ends the cookie's session, clears the cookie; `204` |
//! | `GET /v1/me` | `{"name","kind","read","publish","metrics","loginAvailable"}` or `401` |

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::sessions::COOKIE;
use super::{AuthError, Authority, Caller, LoginOutcome, Principal, PrincipalKind};

/// Largest login request body.
const MAX_LOGIN_BODY: usize = 4 * 1024;
/// Longest username and password looked at.
const MAX_FIELD: usize = 1024;

const LOGIN_PAGE: &[u8] = include_bytes!("../../../assets/dashboard/login.html");

/// A login.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    /// Account name (`[[broker.users]] username`).
    pub username: String,
    /// Its password.
    pub password: String,
}

/// Who the caller is and what it may do.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    /// Token name, JWT subject, username, or `anonymous`.
    pub name: String,
    /// `anonymous`, `token`, `jwt` or `person`.
    pub kind: String,
    /// Topic filters it may read.
    pub read: Vec<String>,
    /// Topics (filters) it may publish to over WebSocket.
    pub publish: Vec<String>,
    /// Whether it may read `/metrics`.
    pub metrics: bool,
    /// Whether people can log in here (accounts are configured).
    pub login_available: bool,
}

impl FromRequestParts<Arc<Authority>> for Caller {
    type Rejection = AuthError;

    async fn from_request_parts(
        parts: &mut Parts,
        auth: &Arc<Authority>,
    ) -> Result<Self, AuthError> {
        auth.resolve(parts, false)
    }
}

/// The login routes.
pub fn routes(auth: Arc<Authority>) -> Router {
    Router::new()
        .route("/login", get(page))
        .route("/v1/login", post(login))
        .route("/v1/logout", post(logout))
        .route("/v1/me", get(me))
        .layer(DefaultBodyLimit::max(MAX_LOGIN_BODY))
        .with_state(auth)
}

/// The login page
#[utoipa::path(
    get,
    path = "/login",
    operation_id = "loginPage",
    tag = "auth",
    responses((status = 200, description = "HTML page.", content_type = "text/html", body = String))
)]
pub(crate) async fn page() -> Response {
    let mut res = LOGIN_PAGE.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res
}

/// Log in with an account; sets the session cookie
#[utoipa::path(
    post,
    path = "/v1/login",
    operation_id = "login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in; `Set-Cookie: edgewatch_session=...; HttpOnly; SameSite=Strict`.", body = Me),
        (status = 400, response = crate::http::BadRequest),
        (status = 401, description = "Wrong username or password.", body = crate::http::ErrorBody),
        (status = 404, description = "No accounts are configured.", body = crate::http::ErrorBody),
        (status = 429, description = "Too many attempts; retry later.", body = crate::http::ErrorBody),
    )
)]
pub(crate) async fn login(
    State(auth): State<Arc<Authority>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<LoginRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(check) = auth.people.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "no_accounts",
            "no accounts are configured",
        );
    };
    let Ok(Json(req)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expected a JSON body {\"username\": ..., \"password\": ...}",
        );
    };
    if req.username.len() > MAX_FIELD || req.password.len() > MAX_FIELD {
        return error(
            StatusCode::UNAUTHORIZED,
            "bad_credentials",
            "wrong username or password",
        );
    }
    let name = req.username.clone();
    match check(Some(peer.ip()), req.username, req.password).await {
        LoginOutcome::Accepted {
            permissions,
            metrics,
        } => {
            auth.stats
                .logins_accepted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let principal = Arc::new(Principal {
                name,
                kind: PrincipalKind::Person,
                permissions,
                metrics,
            });
            let id = auth.sessions.open(principal.clone());
            let cookie = format!(
                "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
                auth.sessions.lifetime().as_secs(),
                if auth.secure_cookies { "; Secure" } else { "" }
            );
            tracing::info!(username = %principal.name, ip = %peer.ip(), "dashboard login");
            let mut res = Json(describe(&auth, &principal)).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                res.headers_mut().insert(header::SET_COOKIE, v);
            }
            res
        }
        LoginOutcome::Refused => {
            auth.stats
                .logins_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            error(
                StatusCode::UNAUTHORIZED,
                "bad_credentials",
                "wrong username or password",
            )
        }
        LoginOutcome::Throttled => {
            auth.stats
                .logins_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut res = error(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                "too many login attempts; retry later",
            );
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            res
        }
    }
}

/// End the session and clear its cookie
#[utoipa::path(
    post,
    path = "/v1/logout",
    operation_id = "logout",
    tag = "auth",
    responses((status = 204, description = "Logged out (also when no session was open)."))
)]
pub(crate) async fn logout(State(auth): State<Arc<Authority>>, headers: HeaderMap) -> Response {
    let (mut parts, ()) = axum::http::Request::new(()).into_parts();
    parts.headers = headers;
    if let Some(id) = super::cookie(&parts, COOKIE) {
        auth.sessions.close(id);
    }
    let mut res = StatusCode::NO_CONTENT.into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "edgewatch_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    res
}

/// Who the caller is and what it may read and publish
#[utoipa::path(
    get,
    path = "/v1/me",
    operation_id = "me",
    tag = "auth",
    responses(
        (status = 200, description = "The caller.", body = Me),
        (status = 401, description = "No valid credential.", body = crate::http::ErrorBody),
    )
)]
pub(crate) async fn me(State(auth): State<Arc<Authority>>, caller: Caller) -> Json<Me> {
    Json(describe(&auth, &caller.0))
}

fn describe(auth: &Authority, p: &Principal) -> Me {
    let names = |list: &[edgewatch_protocol::TopicFilter]| {
        list.iter().map(|f| f.as_str().to_owned()).collect()
    };
    Me {
        name: p.name.clone(),
        kind: p.kind.as_str().to_owned(),
        read: names(p.permissions.read_filters()),
        publish: names(p.permissions.publish_filters()),
        metrics: auth.may_read_metrics(p),
        login_available: auth.people.is_some(),
    }
}

fn error(status: StatusCode, code: &'static str, message: &'static str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}
