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

use crate::http::ErrorBody;

/// Embedded files: (path under `/assets/`, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard/app.js"),
    ),
    (
        "constants.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard/constants.js"),
    ),
    (
        "format.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard/format.js"),
    ),
    (
        "state.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard/state.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard/api.js"),
    ),
    (
        "chart-axes.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard/chart-axes.js"),
    ),
    (
        "chart-data.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard/chart-data.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard/chart.js"),
    ),
    (
        "list.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard/list.js"),
    ),
    (
        "catalogue.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard/catalogue.js"),
    ),
    (
        "live.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard/live.js"),
    ),
    (
        "device-page.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard/device-page.js"),
    ),
    (
        "stream.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard/stream.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/dashboard/style.css"),
    ),
    (
        "vendor/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard/vendor/uPlot.iife.min.js"),
    ),
    (
        "vendor/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/dashboard/vendor/uPlot.min.css"),
    ),
    (
        "vendor/uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../../assets/dashboard/vendor/uPlot.LICENSE"),
    ),
];

const INDEX: &[u8] = include_bytes!("../../assets/dashboard/index.html");
const SDK: &[u8] = include_bytes!("../../assets/sdk/edgewatch.js");

/// The dashboard routes.
pub fn routes() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/{*path}", get(asset))
        .route("/v1/sdk/edgewatch.js", get(sdk))
}

/// The live dashboard
#[utoipa::path(
    get,
    path = "/",
    operation_id = "dashboard",
    tag = "dashboard",
    responses((status = 200, description = "HTML page.", content_type = "text/html", body = String))
)]
async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

/// The JavaScript client (ES module)
#[utoipa::path(
    get,
    path = "/v1/sdk/edgewatch.js",
    operation_id = "sdk",
    tag = "dashboard",
    responses((status = 200, description = "JavaScript.", content_type = "text/javascript", body = String))
)]
async fn sdk() -> Response {
    file("text/javascript; charset=utf-8", SDK)
}

fn file(content_type: &'static str, body: &'static [u8]) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Embedded files change only with the binary; revalidate rather than cache forever.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// Dashboard assets (scripts, styles, vendored uPlot)
#[utoipa::path(
    get,
    path = "/assets/{path}",
    operation_id = "dashboardAsset",
    tag = "dashboard",
    params(("path" = String, Path, description = "File under `/assets/`.", example = "app.js")),
    responses(
        (status = 200, description = "The file.", content(
            (String = "text/javascript"),
            (String = "text/css"),
            (String = "text/plain"),
        )),
        (status = 404, response = crate::http::NotFound),
    )
)]
async fn asset(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|(p, _, _)| *p == path) {
        Some((_, ct, body)) => file(ct, body),
        None => (
            StatusCode::NOT_FOUND,
            Json(ErrorBody::new("not_found", format!("no asset {path:?}"))),
        )
            .into_response(),
    }
}
