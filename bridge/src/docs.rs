//! The API descriptions and their reader, embedded in the binary (the box may be offline).
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /v1/openapi.json` | OpenAPI 3.1 description of the HTTP API (`docs/openapi.json`) |
//! | `GET /v1/asyncapi.yaml` | AsyncAPI 3.0 description of MQTT, WebSocket and SSE (`docs/asyncapi.yaml`) |
//! | `GET /v1/asyncapi.json` | the same AsyncAPI document as JSON (what `/docs` renders) |
//! | `GET /docs` | a page that renders both, no external resources |
//!
//! The documents are written once, in `docs/`, and compiled in. They cannot drift from the
//! code unnoticed: `bridge/tests/api_docs.rs` checks that every route the router registers is
//! described and that real responses and real WebSocket / SSE messages validate against the
//! schemas, and `scripts/api-test` runs the official validators and schemathesis.

use std::sync::OnceLock;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

/// The OpenAPI 3.1 document.
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");
/// The AsyncAPI 3.0 document.
pub const ASYNCAPI_YAML: &str = include_str!("../../docs/asyncapi.yaml");
/// The `/docs` page.
const DOCS_HTML: &str = include_str!("../assets/docs/index.html");

/// The documentation routes.
pub fn routes() -> Router {
    Router::new()
        .route(
            "/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON) }),
        )
        .route(
            "/v1/asyncapi.yaml",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/yaml; charset=utf-8")],
                    ASYNCAPI_YAML,
                )
            }),
        )
        .route("/v1/asyncapi.json", get(asyncapi_json))
        .route("/docs", get(docs_page))
}

/// The AsyncAPI document converted to JSON once.
fn asyncapi_value() -> &'static Result<serde_json::Value, String> {
    static DOC: OnceLock<Result<serde_json::Value, String>> = OnceLock::new();
    DOC.get_or_init(|| serde_yaml::from_str(ASYNCAPI_YAML).map_err(|e| e.to_string()))
}

async fn asyncapi_json() -> Response {
    match asyncapi_value() {
        Ok(v) => Json(v.clone()).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"code": "internal", "message": e}})),
        )
            .into_response(),
    }
}

async fn docs_page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DOCS_HTML,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn embedded_documents_parse() {
        let openapi: serde_json::Value = serde_json::from_str(super::OPENAPI_JSON).unwrap();
        assert_eq!(openapi["openapi"], "3.1.0");
        let asyncapi = super::asyncapi_value().as_ref().unwrap();
        assert_eq!(asyncapi["asyncapi"], "3.0.0");
    }
}
