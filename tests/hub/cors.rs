//! CORS through the real hub (issue #18 point 5), from `live.allowed_origins`: a listed origin
//! is reflected with credentials on the API, SSE, the SDK and the WebSocket handshake and its
//! preflight is answered; another origin gets no CORS header; `"*"` allows any origin
//! without credentials; an empty list (the default) sends no CORS header at all.

use std::time::Duration;

use reqwest::{Client, Method, Response};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{loopback_config, start_hub, Hub};

/// Longest any answer is waited for.
const WAIT: Duration = Duration::from_secs(30);
/// The origin of the app in these tests.
const APP: &str = "https://app.example";

fn hub_allowing(dir: &std::path::Path, origins: &str) -> Hub {
    let extra = format!("[live]\nallowed_origins = {origins}\n");
    start_hub(&loopback_config(dir, &extra), &[])
}

fn client() -> Client {
    Client::builder().timeout(WAIT).build().unwrap()
}

/// A preflight for a `GET` with `Authorization` from `origin`.
async fn preflight(hub: &Hub, path: &str, origin: &str) -> Response {
    client()
        .request(Method::OPTIONS, format!("{}{path}", hub.http()))
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap()
}

async fn get_from(hub: &Hub, path: &str, origin: &str, accept: &str) -> Response {
    client()
        .get(format!("{}{path}", hub.http()))
        .header("origin", origin)
        .header("accept", accept)
        .send()
        .await
        .unwrap()
}

fn header<'a>(res: &'a Response, name: &str) -> &'a str {
    res.headers().get(name).map_or("", |v| v.to_str().unwrap())
}

fn cors_headers(res: &Response) -> Vec<String> {
    let names = res.headers().keys().map(|k| k.as_str().to_owned());
    names.filter(|k| k.starts_with("access-control-")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_origin_may_use_the_api_sse_sdk_and_websocket_with_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_allowing(dir.path(), &format!("[{APP:?}]"));
    for path in ["/v1/readings?filter=sensors/%23", "/v1/stream", "/v1/ws"] {
        let pre = preflight(&hub, path, APP).await;
        assert!(pre.status().is_success(), "{path}: {}", pre.status());
        assert_eq!(header(&pre, "access-control-allow-origin"), APP, "{path}");
        assert_eq!(header(&pre, "access-control-allow-credentials"), "true");
        assert_eq!(
            header(&pre, "access-control-allow-methods"),
            "GET,POST,OPTIONS"
        );
        assert_eq!(
            header(&pre, "access-control-allow-headers"),
            "authorization,content-type,last-event-id"
        );
        assert_eq!(header(&pre, "access-control-max-age"), "600");
    }
    for (path, accept) in [
        ("/v1/readings?filter=sensors/%23", "application/json"),
        ("/v1/sdk/edgewatch.js", "*/*"),
    ] {
        let res = get_from(&hub, path, APP, accept).await;
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(header(&res, "access-control-allow-origin"), APP, "{path}");
        assert_eq!(header(&res, "access-control-allow-credentials"), "true");
        assert_eq!(header(&res, "access-control-expose-headers"), "retry-after");
    }
    // An event stream: its head is written by the server's lean path, CORS headers included.
    let sse = timeout(
        WAIT,
        get_from(
            &hub,
            "/v1/stream?filter=sensors/%23",
            APP,
            "text/event-stream",
        ),
    )
    .await
    .expect("the stream's head in time");
    assert_eq!(sse.status(), 200);
    assert_eq!(header(&sse, "content-type"), "text/event-stream");
    assert_eq!(header(&sse, "access-control-allow-origin"), APP);
    drop(sse);
    // The WebSocket handshake.
    let mut req = format!("ws://{}/v1/ws", hub.addr("http"))
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("origin", APP.parse().unwrap());
    let (_ws, res) = timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("the handshake in time")
        .unwrap();
    assert_eq!(res.status(), 101);
    let allowed = res.headers().get("access-control-allow-origin");
    assert_eq!(allowed.map(|v| v.to_str().unwrap()), Some(APP));

    // Another origin: no CORS header, its preflight refused by the router.
    let other = preflight(&hub, "/v1/readings", "https://evil.example").await;
    assert!(cors_headers(&other).is_empty(), "{:?}", other.headers());
    assert!(!other.status().is_success(), "{}", other.status());
    let res = get_from(
        &hub,
        "/v1/series",
        "https://evil.example",
        "application/json",
    )
    .await;
    assert!(cors_headers(&res).is_empty(), "{:?}", res.headers());
    // Outside /v1/: no CORS header either.
    let metrics = preflight(&hub, "/metrics", APP).await;
    assert!(cors_headers(&metrics).is_empty(), "{:?}", metrics.headers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_star_allows_any_origin_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_allowing(dir.path(), r#"["*"]"#);
    let pre = preflight(&hub, "/v1/readings", "https://anyone.example").await;
    assert!(pre.status().is_success(), "{}", pre.status());
    assert_eq!(header(&pre, "access-control-allow-origin"), "*");
    assert_eq!(header(&pre, "access-control-allow-credentials"), "");
    let res = get_from(
        &hub,
        "/v1/series",
        "https://anyone.example",
        "application/json",
    )
    .await;
    assert_eq!(header(&res, "access-control-allow-origin"), "*");
    assert_eq!(header(&res, "access-control-allow-credentials"), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_allowed_origins_means_no_cors_headers() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&loopback_config(dir.path(), ""), &[]);
    let pre = preflight(&hub, "/v1/readings", APP).await;
    assert!(cors_headers(&pre).is_empty(), "{:?}", pre.headers());
    let res = get_from(&hub, "/v1/series", APP, "application/json").await;
    assert_eq!(res.status(), 200);
    assert!(cors_headers(&res).is_empty(), "{:?}", res.headers());
}
