//! The dashboard and the JavaScript client, embedded in the binary (the box may be offline).
//!
//! | route | file |
//! | --- | --- |
//! | `GET /` | `assets/dashboard/index.html` |
//! | `GET /assets/{path}` | `assets/dashboard/{path}` (app, styles, vendored uPlot and its licence) |
//! | `GET /v1/sdk/edgewatch.js` | `assets/sdk/edgewatch.js` |

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

/// Embedded files: (path under `/assets/`, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/dashboard/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/dashboard/style.css"),
    ),
    (
        "vendor/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/dashboard/vendor/uPlot.iife.min.js"),
    ),
    (
        "vendor/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/dashboard/vendor/uPlot.min.css"),
    ),
    (
        "vendor/uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../assets/dashboard/vendor/uPlot.LICENSE"),
    ),
];

const INDEX: &[u8] = include_bytes!("../assets/dashboard/index.html");
const SDK: &[u8] = include_bytes!("../assets/sdk/edgewatch.js");

/// The dashboard routes.
pub fn routes() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route("/assets/{*path}", get(asset))
        .route(
            "/v1/sdk/edgewatch.js",
            get(|| async { file("text/javascript; charset=utf-8", SDK) }),
        )
}

fn file(content_type: &'static str, body: &'static [u8]) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Embedded files change only with the binary; revalidate rather than cache forever.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

async fn asset(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|(p, _, _)| *p == path) {
        Some((_, ct, body)) => file(ct, body),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"code": "not_found", "message": format!("no asset {path:?}")}})),
        )
            .into_response(),
    }
}
