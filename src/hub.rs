//! Composition of the running hub: start the parts in order, print where they listen, stop
//! them in reverse order on a signal.
//!
//! Start: broker (MQTT listeners, unless the bridge consumes an external broker) → bridge
//! (store, writer) → the broker's feed into ingest → fan-out → HTTP (API,
//! live streams, dashboard, API descriptions, `/metrics`; over TLS with
//! `bridge.http_tls_cert`, and then with a redirect from plain HTTP when
//! `bridge.http_redirect_listen` is set).
//! Stop: cancel live streams and stop accepting MQTT → drain ingest and the writer, flush the
//! store → finish HTTP.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use edgewatch_bridge::http::guard::HttpGuard;
use edgewatch_bridge::http::live::LiveState;
use edgewatch_bridge::http::tls::HttpTls;
use edgewatch_bridge::live::PublishFn;
use edgewatch_bridge::metrics::{Metrics, Sample, SampleKind};
use edgewatch_bridge::Publish;
use edgewatch_broker::{Broker, IngestGate, ListenerKind};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::config::AppConfig;

mod reload;

/// How long an orderly stop may take before we exit anyway.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Where readings come from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Source {
    /// The embedded broker (`edgewatch run`).
    Embedded,
    /// An existing MQTT broker (`edgewatch bridge --mqtt URL`).
    External(String),
}

/// A started hub.
pub(crate) struct Running {
    broker: Option<Broker>,
    bridge: edgewatch_bridge::Bridge,
    uplinks: edgewatch_bridge::uplink::Uplinks,
    stop: CancellationToken,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    /// Where the HTTP server listens.
    pub(crate) http_addr: SocketAddr,
    /// Whether it speaks HTTPS.
    https: bool,
    /// Publishes into the embedded broker (serial readers, WebSocket clients).
    pub(crate) publish: Option<PublishFn>,
}

impl Running {
    /// The embedded broker's MQTT 3.1.1 address, if it runs.
    pub(crate) fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.broker
            .as_ref()
            .and_then(|b| b.addr(ListenerKind::Mqtt))
    }

    /// The dashboard's address, `http://ADDR/` or `https://ADDR/`.
    pub(crate) fn dashboard_url(&self) -> String {
        dashboard_url(self.https, self.http_addr)
    }

    /// A token cancelled when the hub stops (for tasks that run beside it).
    pub(crate) fn stopping(&self) -> CancellationToken {
        self.stop.child_token()
    }
}

/// Starts every part and prints the ready line.
pub(crate) async fn start(mut cfg: AppConfig, source: Source) -> anyhow::Result<Running> {
    // Bind HTTP first: a port in use fails before anything else starts.
    let access = crate::http_access::HttpAccess::of(&cfg);
    let http = HttpListeners::bind(&cfg.bridge, access).await?;

    let broker = match &source {
        Source::Embedded => {
            cfg.bridge.mqtt_url = None;
            // Listening starts once the bridge's feed exists (below).
            Some(Broker::prepare(&cfg.broker).context("starting the MQTT broker")?)
        }
        Source::External(url) => {
            cfg.bridge.mqtt_url = Some(url.clone());
            None
        }
    };
    let stop = CancellationToken::new();
    // The bridge gets its own token: at stop, ingest must outlive the live streams until the
    // broker's feed is drained (`Running::stop`), and `Bridge::shutdown` stops it.
    let mappings = cfg
        .ingest
        .compile()
        .map_err(|e| anyhow::anyhow!("`{}`: {}", e.key, e.message))?;
    let bridge =
        edgewatch_bridge::start_with(cfg.bridge.clone(), mappings, CancellationToken::new())
            .await
            .context("starting the bridge")?;

    let authority = crate::http_access::authority(
        &cfg,
        broker.as_ref().map(|b| b.credentials().clone()),
        http.tls.is_some(),
    )?;
    let mut broker = broker;
    let publish = match &mut broker {
        Some(broker) => {
            crate::http_access::accept_tokens_over_mqtt(broker.credentials(), &authority);
            Some(link_and_listen(broker, &bridge).await?)
        }
        None => None,
    };

    let uplinks = edgewatch_bridge::uplink::Uplinks::start(&bridge, &cfg.uplink, publish.clone());
    let feed = edgewatch_bridge::live::start(&bridge, &cfg.live.fanout, stop.child_token());
    let live = LiveState::new(
        feed.clone(),
        cfg.live.clone(),
        stop.clone(),
        publish.clone(),
    )
    .with_authority(authority.clone());
    let mut metrics = bridge
        .metrics()
        .with_live(feed.fanout().clone(), live.metrics.clone());
    if let Some(broker) = &broker {
        metrics = with_broker_samples(metrics, broker);
    }
    let metrics = with_auth_samples(metrics, &authority).with_uplinks(uplinks.clone());
    let api = bridge
        .app_state()
        .with_authority(authority)
        .with_uplinks(uplinks.clone());
    let app = edgewatch_bridge::http::app(api, Some(live), Some(&metrics));
    let (http_addr, https) = (http.addr, http.tls.is_some());
    print_ready(broker.as_ref(), &http, &source, access);
    let http = http.serve(app, bridge.http_guard(), stop.clone());
    let running = Running {
        broker,
        bridge,
        uplinks,
        stop,
        http,
        http_addr,
        https,
        publish,
    };
    crate::serial::spawn_configured(running.publish.clone(), &cfg.serial, &running.stop)?;
    Ok(running)
}

/// The HTTP server's listener (with its certificate and key when it speaks HTTPS) and the
/// plain-HTTP redirect to it, bound.
struct HttpListeners {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    tls: Option<HttpTls>,
    redirect: Option<(tokio::net::TcpListener, SocketAddr)>,
}

impl HttpListeners {
    /// Binds `bridge.http_listen` and `bridge.http_redirect_listen`, and reads the
    /// certificate and key (an error names the key).
    /// Without HTTP credentials (`access`), both bind loopback only.
    async fn bind(
        cfg: &edgewatch_bridge::BridgeConfig,
        access: crate::http_access::HttpAccess,
    ) -> anyhow::Result<Self> {
        let bind = |listen, key| bind_http(listen, key, access);
        let (listener, addr) = bind(&cfg.http_listen, "bridge.http_listen").await?;
        let tls = HttpTls::from_config(cfg)?;
        let redirect = match &cfg.http_redirect_listen {
            Some(listen) => Some(bind(listen, "bridge.http_redirect_listen").await?),
            None => None,
        };
        if tls.is_some() {
            let redirect = redirect.as_ref().map(|(_, addr)| addr);
            let url = dashboard_url(true, addr);
            tracing::info!(%url, ?redirect, "HTTP server speaks HTTPS only");
        }
        Ok(Self {
            listener,
            addr,
            tls,
            redirect,
        })
    }

    /// Serves `app` over HTTP or HTTPS, and the redirect, until `stop` is cancelled.
    fn serve(
        self,
        app: axum::Router,
        guard: Arc<HttpGuard>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<std::io::Result<()>> {
        use edgewatch_bridge::http::{redirect, serve_guarded, tls};
        use futures::FutureExt as _;
        let stopped = move || {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        };
        let (listener, https_port) = (self.listener, self.addr.port());
        let server = match self.tls {
            Some(cert) => tls::serve(listener, app, guard.clone(), cert, stopped()).left_future(),
            None => serve_guarded(listener, app, guard.clone(), stopped()).right_future(),
        };
        let redirect = match self.redirect {
            Some((listener, _)) => {
                redirect::serve(listener, https_port, guard, stopped()).left_future()
            }
            None => futures::future::ready(Ok(())).right_future(),
        };
        tokio::spawn(async move {
            let (server, redirect) = tokio::join!(server, redirect);
            server.and(redirect)
        })
    }
}

/// Binds an HTTP listener on `listen` (the setting `key`).
async fn bind_http(
    listen: &str,
    key: &str,
    access: crate::http_access::HttpAccess,
) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("{key} is not an address"))?;
    let addr = crate::http_access::http_bind_addr(addr, access);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| {
            let moved_by = match key {
                "bridge.http_listen" => " (--http-listen, EDGEWATCH_HTTP_LISTEN)",
                _ => "",
            };
            format!(
                "cannot listen for HTTP on {addr} (port {}); another address or port goes in {key}{moved_by}",
                addr.port()
            )
        })?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// `http://ADDR/`, or `https://ADDR/` over TLS.
fn dashboard_url(https: bool, addr: SocketAddr) -> String {
    let scheme = if https { "https" } else { "http" };
    format!("{scheme}://{addr}/")
}

/// Puts the broker's persisted retained messages and sessions back (`crate::broker_state`),
/// opens the bridge's feed from the embedded broker (every publish goes to ingest), opens the
/// publish link (serial readers, WebSocket clients), and only then lets devices in: the bridge
/// gets their first publish.
async fn link_and_listen(
    broker: &mut Broker,
    bridge: &edgewatch_bridge::Bridge,
) -> anyhow::Result<PublishFn> {
    crate::broker_state::restore(broker, bridge).await?;
    let link = broker
        .ingest_feed()
        .context("linking the bridge to the broker")?;
    bridge.run_source(link.map(|p| Publish {
        topic: p.topic,
        payload: p.payload,
        received_at_ms: p.received_at_ms,
    }));
    let publisher = broker
        .publisher("edgewatch-publisher")
        .await
        .context("opening the publish link")?;
    let publish: PublishFn = Arc::new(move |topic, payload| {
        let publisher = publisher.clone();
        Box::pin(async move { publisher.publish(topic, payload).await })
    });
    broker
        .listen()
        .await
        .context("starting the MQTT listeners")?;
    Ok(publish)
}

/// The embedded broker's values in `/metrics`.
fn with_broker_samples(metrics: Metrics, broker: &Broker) -> Metrics {
    let connections = broker.connection_count();
    let gate = broker.ingest_gate().clone();
    let peers = broker.peers().clone();
    let samples = broker.caps().samples().into_iter();
    let samples = samples.chain(broker.durable().samples());
    let metrics = samples.fold(metrics, |m, s| {
        let kind = if s.counter {
            SampleKind::Counter
        } else {
            SampleKind::Gauge
        };
        m.with_sample(Sample {
            name: s.name,
            help: s.help,
            kind,
            read: s.read.into(),
        })
    });
    let metrics = metrics
        .with_sample(Sample {
            name: "edgewatch_mqtt_connections",
            help: "MQTT clients connected to the embedded broker.",
            kind: SampleKind::Gauge,
            read: Arc::new(move || connections.load(Ordering::Relaxed).max(0) as f64),
        })
        .with_sample(Sample {
            name: "edgewatch_mqtt_ingest_backlog",
            help: "Publishes the broker accepted that the bridge has not taken yet.",
            kind: SampleKind::Gauge,
            read: gate_reading(&gate, IngestGate::backlog),
        })
        .with_sample(counter(
            "edgewatch_mqtt_connections_refused_per_ip_total",
            "MQTT connections closed at CONNECT because their address had broker.limits.max_connections_per_ip already.",
            Arc::new(move || peers.refused() as f64),
        ))
        .with_sample(counter(
            "edgewatch_mqtt_subscriber_cursor_jumps_total",
            "Times an MQTT subscriber fell so far behind that rumqttd's log for its filter dropped messages it had not read (broker.router.max_segment_size x max_segment_count).",
            Arc::new(|| edgewatch_broker::cursor_jumps::cursor_jumps() as f64),
        ))
        .with_sample(counter(
            "edgewatch_mqtt_subscriber_skipped_total",
            "Messages MQTT subscribers never got because they fell behind rumqttd's log for their filter (counted from its cursor jumps).",
            Arc::new(|| edgewatch_broker::cursor_jumps::skipped_messages() as f64),
        ));
    let gate_counters: [(&str, &str, GateValue); 6] = [
        ("edgewatch_mqtt_held_acks_total", "PUBACKs held back because the bridge was behind (backpressure).", IngestGate::held_acks),
        ("edgewatch_mqtt_ingest_skipped_total", "Publishes the broker accepted that did not reach the bridge (its feed was full: in-process publishers faster than the store).", IngestGate::skipped),
        ("edgewatch_mqtt_qos0_paused_total", "QoS 0 publishes whose connection the broker stopped reading until the bridge caught up (backlog above half of broker.limits.ingest_backlog_max): TCP backpressure.", IngestGate::paused_reads),
        ("edgewatch_mqtt_qos0_shed_total", "QoS 0 publishes dropped because the bridge stayed behind for broker.limits.ack_stall_max_secs (a stalled writer).", IngestGate::shed),
        ("edgewatch_mqtt_backlog_disconnects_total", "MQTT connections closed at a QoS 1/2 publish because the bridge was far behind (backlog at twice broker.limits.ingest_backlog_max; the device resends).", IngestGate::refused),
        ("edgewatch_mqtt_ack_stall_disconnects_total", "MQTT connections closed because an acknowledgement waited longer than broker.limits.ack_stall_max_secs for the bridge (the device resends).", IngestGate::stall_disconnects),
    ];
    let logins: [(&'static str, &'static str, &'static [&'static str]); 3] = [
        ("edgewatch_mqtt_logins_accepted_total", "MQTT logins accepted (password checked, or remembered from a recent check).", &["accepted", "remembered"]),
        ("edgewatch_mqtt_login_failures_total", "MQTT logins refused after a password check (wrong password or unknown user).", &["wrong"]),
        ("edgewatch_mqtt_logins_throttled_total", "MQTT logins refused without a password check: address or username in backoff after failures, or too many checks waiting.", &["backoff", "busy"]),
    ];
    let metrics = gate_counters
        .into_iter()
        .fold(metrics, |m, (name, help, read)| {
            m.with_sample(counter(name, help, gate_reading(&gate, read)))
        });
    logins
        .into_iter()
        .fold(metrics, |m, (name, help, verdicts)| {
            m.with_sample(login_sample(broker, name, help, verdicts))
        })
}

/// A value of the ingest gate.
type GateValue = fn(&IngestGate) -> u64;

/// A counter sample.
fn counter(
    name: &'static str,
    help: &'static str,
    read: Arc<dyn Fn() -> f64 + Send + Sync>,
) -> Sample {
    Sample {
        name,
        help,
        kind: SampleKind::Counter,
        read,
    }
}

/// Reads one of the ingest gate's values.
fn gate_reading(
    gate: &Arc<IngestGate>,
    read: fn(&IngestGate) -> u64,
) -> Arc<dyn Fn() -> f64 + Send + Sync> {
    let gate = gate.clone();
    Arc::new(move || read(&gate) as f64)
}

/// The HTTP side's refusals, logins and sessions in `/metrics`.
fn with_auth_samples(
    metrics: Metrics,
    authority: &Arc<edgewatch_bridge::http::auth::Authority>,
) -> Metrics {
    let counters: [(&'static str, &'static str, &'static str); 5] = [
        ("edgewatch_http_credential_missing_total", "HTTP requests refused with 401 for want of a credential.", "missing_credential"),
        ("edgewatch_http_credential_invalid_total", "HTTP requests refused with 401 for a wrong, expired or unknown token or an ended session.", "invalid_credential"),
        ("edgewatch_http_forbidden_total", "HTTP requests refused with 403: a history query (readings, rollups) with a filter the caller may not read, or /metrics without its grant.", "forbidden"),
        ("edgewatch_http_logins_accepted_total", "People logged in at POST /v1/login.", "login_accepted"),
        ("edgewatch_http_login_failures_total", "POST /v1/login refused: wrong username or password, or throttled.", "login_refused"),
    ];
    let metrics = counters.into_iter().fold(metrics, |m, (name, help, key)| {
        let auth = authority.clone();
        let read = move || {
            let counts = auth.stats().snapshot();
            counts
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(0.0, |(_, n)| *n as f64)
        };
        m.with_sample(counter(name, help, Arc::new(read)))
    });
    let (open, evicted) = (authority.clone(), authority.clone());
    metrics
        .with_sample(Sample {
            name: "edgewatch_http_sessions",
            help: "Open login sessions (auth.max_sessions at most).",
            kind: SampleKind::Gauge,
            read: Arc::new(move || open.session_stats().0 as f64),
        })
        .with_sample(counter(
            "edgewatch_http_sessions_evicted_total",
            "Login sessions ended because auth.max_sessions was reached.",
            Arc::new(move || evicted.session_stats().1 as f64),
        ))
}

/// A counter of the broker's logins whose verdict is one of `verdicts`.
fn login_sample(
    broker: &Broker,
    name: &'static str,
    help: &'static str,
    verdicts: &'static [&'static str],
) -> Sample {
    let stats = broker.login_stats().clone();
    let read = move || {
        let counts = stats.snapshot().into_iter();
        counts
            .filter(|(verdict, _)| verdicts.contains(verdict))
            .map(|(_, n)| n as f64)
            .sum()
    };
    counter(name, help, Arc::new(read))
}

/// One machine-readable line on stdout (scripts and tests wait for it), then the dashboard.
/// The HTTP server is `http=ADDR`, or `https=ADDR` over TLS (and then the redirect
/// `http_redirect=ADDR`); `http_access=` says who may use it.
fn print_ready(
    broker: Option<&Broker>,
    http: &HttpListeners,
    source: &Source,
    access: crate::http_access::HttpAccess,
) {
    let mut listeners: Vec<String> = broker
        .iter()
        .flat_map(|b| {
            b.listeners()
                .iter()
                .map(|(kind, addr)| format!("{kind}={addr}"))
        })
        .collect();
    let https = http.tls.is_some();
    listeners.push(format!(
        "{}={}",
        if https { "https" } else { "http" },
        http.addr
    ));
    if let Some((_, addr)) = &http.redirect {
        listeners.push(format!("http_redirect={addr}"));
    }
    listeners.push(format!("http_access={}", access.as_str()));
    if let Source::External(url) = source {
        listeners.push(format!("upstream={url}"));
    }
    println!("edgewatch ready {}", listeners.join(" "));
    println!("dashboard: {}", dashboard_url(https, http.addr));
}

impl Running {
    /// Orderly stop, bounded by [`STOP_GRACE`].
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        let Running {
            broker,
            bridge,
            uplinks,
            stop,
            http,
            ..
        } = self;
        let work = async move {
            // Live streams end (SSE finishes, WebSockets get 1001) and HTTP stops accepting.
            stop.cancel();
            if let Some(broker) = broker {
                let gate = broker.ingest_gate().clone();
                // Close every MQTT connection: no device gets another acknowledgement.
                broker.stop();
                // What the broker already accepted may still wait in the bridge's feed: wait
                // until the bridge has taken all of it before ingest stops.
                drain_feed(&gate).await;
            }
            // Each uplink saves its cursor before the store closes.
            uplinks.stop().await;
            bridge.shutdown().await.context("stopping the bridge")?;
            match http.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(%err, "HTTP server error at stop"),
                Err(err) => tracing::warn!(%err, "HTTP server task failed"),
            }
            anyhow::Ok(())
        };
        match tokio::time::timeout(STOP_GRACE, work).await {
            Ok(result) => result?,
            Err(_) => tracing::warn!(grace = ?STOP_GRACE, "stop took too long; exiting anyway"),
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Waits until the bridge has taken every publish the broker accepted (at most 3 s, should the
/// bridge be stuck).
async fn drain_feed(gate: &edgewatch_broker::IngestGate) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while gate.backlog() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs until SIGINT / SIGTERM; on SIGHUP reads `file` again ([`Running::reload`]).
pub(crate) async fn run(
    cfg: AppConfig,
    source: Source,
    file: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let stop_requested = crate::signals::stop_requested();
    let mut hangups = crate::signals::Hangups::install();
    let running = start(cfg.clone(), source).await?;
    let mut current = cfg;
    tokio::pin!(stop_requested);
    loop {
        tokio::select! {
            () = &mut stop_requested => break,
            () = hangups.next() => running.reload(file.as_deref(), &mut current),
        }
    }
    running.stop().await
}
