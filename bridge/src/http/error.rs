//! The errors of the HTTP API: the JSON body every error has, [`ApiError`], and the shared
//! error responses of the OpenAPI document.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;
use tracing::error;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{ToResponse, ToSchema};

use crate::json;
use crate::store::StoreError;

/// The body of every HTTP error: `{"error":{"code":"...","message":"..."}}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(
    as = Error,
    example = json!({"error": {"code": "bad_filter", "message": "parameter filter: '#' must be the last level"}})
)]
pub struct ErrorBody {
    /// What went wrong.
    #[schema(inline)]
    pub error: ErrorDetail,
}

/// The `error` member of an error body.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// Stable machine-readable code (see docs/errors.md).
    #[schema(examples(
        "bad_filter",
        "bad_time",
        "bad_range",
        "bad_parameter",
        "unknown_parameter",
        "too_large",
        "overloaded",
        "not_found",
        "not_ready",
        "internal",
        "bad_cursor",
        "bad_timeout",
        "bad_limit",
        "missing_filter",
        "forbidden",
        "too_many_connections",
        "bad_device_id",
        "origin_not_allowed",
        "not_websocket"
    ))]
    pub code: String,
    /// Human-readable explanation naming the parameter.
    pub message: String,
}

impl ErrorBody {
    /// An error body with `code` and `message`.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: message.into(),
            },
        }
    }
}

/// A shared error response of the OpenAPI document (`#/components/responses/{name}`): the
/// [`ErrorBody`] schema with one example, plus `Retry-After` when the client should retry.
pub(crate) fn error_response<'r>(
    name: &'r str,
    description: &str,
    (code, message): (&str, &str),
    retry_after: bool,
) -> (&'r str, RefOr<utoipa::openapi::Response>) {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("Error")))
        .example(Some(json!({"error": {"code": code, "message": message}})))
        .build();
    let mut response = ResponseBuilder::new()
        .description(description)
        .content("application/json", content);
    if retry_after {
        response = response.header(
            "Retry-After",
            utoipa::openapi::HeaderBuilder::new()
                .schema(u32::schema())
                .description(Some("Seconds to wait before retrying."))
                .build(),
        );
    }
    (name, response.build().into())
}

use utoipa::PartialSchema as _;

/// `400`: an invalid parameter; code and message name it.
#[derive(Debug)]
pub struct BadRequest;
impl<'r> ToResponse<'r> for BadRequest {
    fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
        error_response(
            "BadRequest",
            "Invalid parameter: the code and message name it.",
            (
                "bad_time",
                "parameter from: invalid time (expected RFC 3339 or epoch milliseconds)",
            ),
            false,
        )
    }
}

/// `413`: the answer would exceed a configured limit.
#[derive(Debug)]
pub struct TooLarge;
impl<'r> ToResponse<'r> for TooLarge {
    fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
        error_response(
            "TooLarge",
            "The answer would exceed a configured limit (page, points).",
            (
                "too_large",
                "parameter limit: 50000 is over the maximum page of 10000",
            ),
            false,
        )
    }
}

/// `503` with `Retry-After`: too many queries or live connections.
#[derive(Debug)]
pub struct Overloaded;
impl<'r> ToResponse<'r> for Overloaded {
    fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
        error_response(
            "Overloaded",
            "Too many concurrent queries or live connections; retry after the `Retry-After` seconds.",
            (
                "overloaded",
                "too many history queries in progress; retry shortly",
            ),
            true,
        )
    }
}

/// `401`: no valid credential (see docs/security.md).
#[derive(Debug)]
pub struct Unauthorized;
impl<'r> ToResponse<'r> for Unauthorized {
    fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
        error_response(
            "Unauthorized",
            "No credential where one is required (`unauthorized`), or a wrong one (`invalid_credential`, `token_expired`, `token_wrong_audience`, ..., `session_expired`). Answered with `WWW-Authenticate: Bearer`.",
            ("unauthorized", "a credential is required"),
            false,
        )
    }
}

/// `403`: the caller may not read the filter, or the Origin is not allowed.
#[derive(Debug)]
pub struct Forbidden;
impl<'r> ToResponse<'r> for Forbidden {
    fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
        error_response(
            "Forbidden",
            "The caller may not read this filter, or the Origin is not allowed.",
            ("forbidden", "not allowed to read \"$SYS/#\""),
            false,
        )
    }
}

/// `500`: the store failed.
#[derive(Debug)]
pub struct Internal;
impl<'r> ToResponse<'r> for Internal {
    fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
        error_response(
            "Internal",
            "The store failed; see the hub's log.",
            ("internal", "the store could not answer; see the hub's log"),
            false,
        )
    }
}

/// `404`: no such resource.
#[derive(Debug)]
pub struct NotFound;
impl<'r> ToResponse<'r> for NotFound {
    fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
        error_response(
            "NotFound",
            "No such resource.",
            ("not_found", "no such resource"),
            false,
        )
    }
}

/// `503` of `/readyz`, with `Retry-After`.
#[derive(Debug)]
pub struct NotReady;
impl<'r> ToResponse<'r> for NotReady {
    fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
        error_response(
            "NotReady",
            "Not ready: the writer is not committing.",
            ("not_ready", "the writer is not committing"),
            true,
        )
    }
}

/// An API error: status, stable code and message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn bad(code: &'static str, message: String) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code,
            message,
        }
    }

    pub(crate) fn too_large(message: String) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "too_large",
            message,
        }
    }

    pub(crate) fn overloaded() -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "overloaded",
            message: "too many history queries in progress; retry shortly".to_owned(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        error!(%err, "history query failed");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "the store could not answer; see the hub's log".to_owned(),
        }
    }
}

impl From<json::JsonError> for ApiError {
    fn from(err: json::JsonError) -> Self {
        error!(%err, "history answer could not be written");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "the answer could not be written; see the hub's log".to_owned(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody::new(self.code, self.message));
        let mut res = (self.status, body).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

pub(crate) async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: "no such resource".to_owned(),
    }
}
