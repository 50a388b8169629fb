//! Measures `/metrics`: (a) rendering the exposition for a realistic hub and (b) the
//! per-request cost of the HTTP metrics middleware (issue #16 point 3: the Prometheus client
//! library against the hand-written registry).
//!
//! ```text
//! cargo run --release -p edgewatch-bridge --example metrics_bench -- \
//!     [--runs 7] [--renders 500] [--requests 100000]
//! ```
//!
//! The hub: a store with 200 series (50 devices x 4 metrics, 10 readings each) and 50
//! devices with a presence, a fan-out with 100 subscriptions, 30 open live connections, and
//! HTTP counters over 10 routes x 3 methods x 4 statuses (120 label sets) recorded through
//! the middleware. (a) is `Metrics::render` (what `GET /metrics` runs, store reads included).
//! (b) sends `GET /bench/{id}` through a router with the middleware and through the same
//! router without it, alternately, and reports both and their difference: routing and the
//! handler are the same in both, so the difference is the middleware (the `from_fn` layer,
//! the label lookups and the counter and histogram updates). Each figure is the median of
//! `--runs` runs (min-max in parentheses).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Path;
use axum::http::{Method, Request, StatusCode, Uri};
use axum::routing::{any, get};
use axum::Router;
use bytes::Bytes;
use edgewatch_bridge::live::connections::{LiveMetrics, Transport};
use edgewatch_bridge::live::fanout::{Fanout, FanoutConfig};
use edgewatch_bridge::metrics::Metrics;
use edgewatch_bridge::{BridgeConfig, Publish};
use edgewatch_protocol::TopicFilter;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const ROUTES: [&str; 10] = [
    "/v1/series",
    "/v1/devices",
    "/v1/readings",
    "/v1/rollups",
    "/v1/rejects",
    "/v1/stream",
    "/v1/ws",
    "/healthz",
    "/readyz",
    "/docs",
];
const METRICS: [&str; 4] = ["temperature", "humidity", "pressure", "voltage"];

struct Args {
    runs: usize,
    renders: usize,
    requests: usize,
}

fn args() -> Args {
    let mut a = Args {
        runs: 7,
        renders: 500,
        requests: 100_000,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    for pair in v.chunks(2) {
        let n: usize = pair
            .get(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{} needs a number", pair[0]));
        match pair[0].as_str() {
            "--runs" => a.runs = n,
            "--renders" => a.renders = n,
            "--requests" => a.requests = n,
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn main() {
    let args = args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(&args));
}

async fn run(args: &Args) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BridgeConfig {
        data_dir: dir.path().to_path_buf(),
        ..BridgeConfig::default()
    };
    let stop = CancellationToken::new();
    let bridge = edgewatch_bridge::start(cfg, stop.clone()).await.unwrap();
    fill_store(&bridge).await;

    let fanout = Fanout::new(FanoutConfig::default());
    let subs: Vec<_> = (0..100)
        .map(|i| {
            let f = format!("sensors/dev{}/#", i % 50);
            fanout.subscribe(vec![TopicFilter::parse(&f).unwrap()])
        })
        .collect();
    let live = Arc::new(LiveMetrics::default());
    let transports = [Transport::Sse, Transport::Ws, Transport::Poll];
    let guards: Vec<_> = (0..30).map(|i| live.open(transports[i % 3])).collect();
    let metrics = bridge.metrics().with_live(fanout.clone(), live.clone());
    fill_http(&metrics).await;

    let text = metrics.render();
    println!(
        "exposition: {} bytes, {} lines",
        text.len(),
        text.lines().count()
    );
    bench_render(&metrics, args);
    bench_requests(&metrics, args).await;

    drop((subs, guards));
    stop.cancel();
    bridge.shutdown().await.unwrap();
}

/// 50 devices x 4 metrics x 10 readings, plus a presence per device; waits until stored.
async fn fill_store(bridge: &edgewatch_bridge::Bridge) {
    let now = 1_700_000_000_000_i64;
    let mut n = 0;
    for k in 0..10 {
        for dev in 0..50 {
            for m in METRICS {
                let publish = Publish {
                    topic: format!("sensors/dev{dev}/{m}"),
                    payload: Bytes::from(format!("{}.5", 20 + k)),
                    received_at_ms: now + k * 1000,
                };
                bridge.ingest().handle(publish.into()).await.unwrap();
                n += 1;
            }
        }
    }
    for dev in 0..50 {
        let publish = Publish {
            topic: format!("sensors/dev{dev}/status"),
            payload: Bytes::from_static(b"online"),
            received_at_ms: now,
        };
        bridge.ingest().handle(publish.into()).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while bridge.store().stats().unwrap().readings < n {
        assert!(Instant::now() < deadline, "readings were not stored");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Answers with the status in the query (`?s=404`), for any method.
async fn status_from_query(uri: Uri) -> StatusCode {
    uri.query()
        .and_then(|q| q.strip_prefix("s="))
        .and_then(|s| s.parse().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK)
}

/// 10 routes x 3 methods x 4 statuses through the middleware.
async fn fill_http(metrics: &Metrics) {
    let mut router = Router::new();
    for r in ROUTES {
        router = router.route(r, any(status_from_query));
    }
    let app = metrics.track_http(router);
    for r in ROUTES {
        for method in [Method::GET, Method::POST, Method::HEAD] {
            for s in [200, 400, 404, 500] {
                let req = Request::builder()
                    .method(method.clone())
                    .uri(format!("{r}?s={s}"))
                    .body(Body::empty())
                    .unwrap();
                app.clone().oneshot(req).await.unwrap();
            }
        }
    }
}

fn bench_render(metrics: &Metrics, args: &Args) {
    let mut per_render = Vec::new();
    for _ in 0..args.runs {
        let start = Instant::now();
        for _ in 0..args.renders {
            std::hint::black_box(metrics.render());
        }
        per_render.push(start.elapsed().as_secs_f64() * 1e6 / args.renders as f64);
    }
    println!("render: {} µs per render", summary(&mut per_render, 1));
}

async fn bench_requests(metrics: &Metrics, args: &Args) {
    let bare = Router::new().route(
        "/bench/{id}",
        get(|Path(id): Path<u32>| async move { id.to_string() }),
    );
    let tracked = metrics.track_http(bare.clone());
    let (mut with, mut without, mut diff) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let a = requests(&tracked, args.requests).await;
        let b = requests(&bare, args.requests).await;
        with.push(a);
        without.push(b);
        diff.push(a - b);
    }
    println!(
        "request with middleware: {} ns; without: {} ns; middleware: {} ns per request",
        summary(&mut with, 0),
        summary(&mut without, 0),
        summary(&mut diff, 0)
    );
}

/// Nanoseconds per request over `n` requests to `router`.
async fn requests(router: &Router, n: usize) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        let req = Request::get(format!("/bench/{}", i % 8))
            .body(Body::empty())
            .unwrap();
        let res = router.clone().oneshot(req).await.unwrap();
        std::hint::black_box(res);
    }
    start.elapsed().as_secs_f64() * 1e9 / n as f64
}

/// "median (min-max)" with `decimals` decimals.
fn summary(v: &mut [f64], decimals: usize) -> String {
    v.sort_by(f64::total_cmp);
    let median = v[v.len() / 2];
    format!(
        "{median:.decimals$} ({:.decimals$}-{:.decimals$})",
        v[0],
        v[v.len() - 1]
    )
}
