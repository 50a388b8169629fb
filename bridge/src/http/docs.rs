//! The API descriptions and their reader, embedded in the binary (the box may be offline).
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /v1/openapi.json` | OpenAPI 3.1 description of the HTTP API (`docs/openapi.json`) |
//! | `GET /v1/asyncapi.yaml` | AsyncAPI 3.0 description of MQTT, WebSocket and SSE (`docs/asyncapi.yaml`) |
//! | `GET /v1/asyncapi.json` | the same AsyncAPI document as JSON (what `/docs` renders) |
//! | `GET /docs` | a page that renders both, no external resources |
//!
//! The OpenAPI document is generated from the handlers: each handler carries a
//! `#[utoipa::path]` naming its parameters and response types (the types the handler really
//! returns, deriving `ToSchema`), and [`ApiDoc`] lists them. What the macros cannot say is
//! added by [`Conventions`]. `docs/openapi.json` is that document; a test fails when the
//! committed file differs from what the code generates (`UPDATE_DOCS=1 cargo test -p
//! edgewatch-bridge openapi` rewrites it), and the binary serves and prints (`edgewatch
//! openapi`) the file compiled in, so the generator is not in the binary. The AsyncAPI document
//! is written by hand in `docs/` and compiled in. `tests/hub/api_docs.rs` checks that every route
//! the router registers is described and that real responses and real WebSocket / SSE
//! messages validate against the schemas, and `scripts/api-test` runs the official validators
//! and schemathesis.

use std::sync::OnceLock;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi};

use crate::http::auth::openapi::Security;
use crate::http::ErrorBody;

/// The OpenAPI 3.1 description of every HTTP route of the hub.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "edgewatch HTTP API",
        version = "1.0.0",
        description = "History, catalogue, live delivery (SSE, WebSocket, long poll) and operations of an edgewatch hub. Live message formats and the MQTT side: /v1/asyncapi.yaml. Guides: docs/*.md in the repository, or /docs on a running hub.\n\nAll errors are JSON `{\"error\":{\"code\",\"message\"}}`. Times are RFC 3339 (UTC) in answers; parameters take RFC 3339 or epoch milliseconds. Topic filters follow MQTT rules. Versioning: everything under `/v1` and the `edgewatch.v1` subprotocol only changes compatibly (see docs/versioning.md).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    servers((
        url = "http://{host}:{port}",
        description = "An edgewatch hub (`bridge.http_listen`).",
        variables(
            ("host" = (default = "localhost")),
            ("port" = (default = "8080")),
        ),
    )),
    tags(
        (name = "history", description = "Stored readings, catalogue, rollups."),
        (name = "live", description = "Live delivery: SSE, WebSocket, long poll."),
        (name = "operations", description = "Health, readiness, rejects, metrics."),
        (name = "docs", description = "API descriptions."),
        (name = "dashboard", description = "Embedded dashboard and JS client."),
        (name = "auth", description = "People's logins (session cookie) and who the caller is. See docs/security.md."),
    ),
    paths(
        crate::http::api::series,
        crate::http::api::devices,
        crate::http::api::readings,
        crate::http::api::rollups,
        crate::http::api::rejects,
        crate::http::uplinks::uplinks,
        crate::http::backup::backup,
        crate::http::device::last_payload,
        crate::http::device::status_history,
        crate::http::api::healthz,
        crate::http::api::readyz,
        crate::metrics::scrape,
        openapi_json,
        asyncapi_yaml,
        asyncapi_json,
        docs_page,
        crate::http::dashboard::index,
        crate::http::dashboard::asset,
        crate::http::dashboard::sdk,
        crate::http::auth::login::page,
        crate::http::auth::login::login,
        crate::http::auth::login::logout,
        crate::http::auth::login::me,
    ),
    components(responses(
        crate::http::BadRequest,
        crate::http::TooLarge,
        crate::http::Overloaded,
        crate::http::Forbidden,
        crate::http::Internal,
        crate::http::NotFound,
        crate::http::NotReady,
        crate::http::Unauthorized,
    )),
    modifiers(&Conventions, &Security),
)]
pub struct ApiDoc;

/// What the derive macros cannot express:
/// * the live routes: their handlers are private to [`crate::http::live`], so
///   [`crate::http::live::LiveApi`] lists them there and is merged in here (paths and the
///   schemas they reference);
/// * an optional header is absent, never `null`: the macros make every `Option` nullable, so
///   `null` is dropped from header parameters' types.
#[derive(Debug)]
pub struct Conventions;

impl Modify for Conventions {
    fn modify(&self, doc: &mut Document) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::schema::{Schema, SchemaType, Type};
        use utoipa::openapi::RefOr;

        doc.merge(crate::http::live::LiveApi::openapi());
        let operations = doc
            .paths
            .paths
            .values_mut()
            .filter_map(|item| item.get.as_mut());
        let headers = operations
            .flat_map(|op| op.parameters.iter_mut().flatten())
            .filter(|p| p.parameter_in == ParameterIn::Header);
        for header in headers {
            if let Some(RefOr::T(Schema::Object(object))) = header.schema.as_mut() {
                if let SchemaType::Array(types) = &object.schema_type {
                    let mut types: Vec<Type> = types
                        .iter()
                        .filter(|t| **t != Type::Null)
                        .cloned()
                        .collect();
                    object.schema_type = match types.len() {
                        1 => SchemaType::Type(types.remove(0)),
                        _ => SchemaType::Array(types),
                    };
                }
            }
        }
    }
}

/// The document as the code generates it (pretty JSON with a final newline): what
/// `docs/openapi.json` must hold (a test compares them).
pub fn openapi_json_text() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// The document as served and printed by `edgewatch openapi`: `docs/openapi.json`, compiled
/// in. Not generated at run time: the generator (utoipa's derives for every type and route)
/// then stays out of the binary, about 0.3 MB (issue #20's size budget); the test above keeps
/// the file equal to what the code generates.
pub const OPENAPI_JSON: &str = include_str!("../../../docs/openapi.json");

fn openapi_text() -> &'static str {
    OPENAPI_JSON
}

/// The AsyncAPI 3.0 document.
pub const ASYNCAPI_YAML: &str = include_str!("../../../docs/asyncapi.yaml");
/// The `/docs` page.
const DOCS_HTML: &str = include_str!("../../assets/docs/index.html");

/// The documentation routes.
pub fn routes() -> Router {
    Router::new()
        .route("/v1/openapi.json", get(openapi_json))
        .route("/v1/asyncapi.yaml", get(asyncapi_yaml))
        .route("/v1/asyncapi.json", get(asyncapi_json))
        .route("/docs", get(docs_page))
}

/// This document
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "openapi",
    tag = "docs",
    responses((status = 200, description = "OpenAPI 3.1.", body = Object))
)]
async fn openapi_json() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], openapi_text())
}

/// AsyncAPI 3.0 description of MQTT, WebSocket and SSE
#[utoipa::path(
    get,
    path = "/v1/asyncapi.yaml",
    operation_id = "asyncapi",
    tag = "docs",
    responses((status = 200, description = "AsyncAPI 3.0 (YAML; a mapping).", content_type = "application/yaml", body = Object))
)]
async fn asyncapi_yaml() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/yaml; charset=utf-8")],
        ASYNCAPI_YAML,
    )
}

/// The AsyncAPI document converted to JSON once.
fn asyncapi_value() -> &'static Result<serde_json::Value, String> {
    static DOC: OnceLock<Result<serde_json::Value, String>> = OnceLock::new();
    DOC.get_or_init(|| serde_yaml::from_str(ASYNCAPI_YAML).map_err(|e| e.to_string()))
}

/// The AsyncAPI document as JSON
#[utoipa::path(
    get,
    path = "/v1/asyncapi.json",
    operation_id = "asyncapiJson",
    tag = "docs",
    responses(
        (status = 200, description = "AsyncAPI 3.0.", body = Object),
        (status = 500, response = crate::http::Internal),
    )
)]
async fn asyncapi_json() -> Response {
    match asyncapi_value() {
        Ok(v) => Json(v.clone()).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(ErrorBody::new("internal", e.clone())),
        )
            .into_response(),
    }
}

/// Human-readable rendering of both descriptions (offline)
#[utoipa::path(
    get,
    path = "/docs",
    operation_id = "docsPage",
    tag = "docs",
    responses((status = 200, description = "HTML page.", content_type = "text/html", body = String))
)]
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
    use std::path::Path;

    #[test]
    fn embedded_documents_parse() {
        let openapi: serde_json::Value = serde_json::from_str(super::openapi_text()).unwrap();
        assert_eq!(openapi["openapi"], "3.1.0");
        let asyncapi = super::asyncapi_value().as_ref().unwrap();
        assert_eq!(asyncapi["asyncapi"], "3.0.0");
    }

    /// `docs/openapi.json` is what the code generates. `UPDATE_DOCS=1` rewrites it.
    #[test]
    fn committed_openapi_is_the_generated_one() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let generated = super::openapi_json_text();
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(&file, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&file).unwrap();
        assert!(
            committed == generated,
            "docs/openapi.json differs from the document the code generates; run \
             `UPDATE_DOCS=1 cargo test -p edgewatch-bridge openapi` and commit the result"
        );
    }
}
