//! Starting and stopping the broker: rumqttd's router on its own thread, each listener as a
//! task on the caller's tokio runtime.
//!
//! rumqttd's `Server::start` binds its address itself and reports nothing when that fails, so
//! every address is bind-checked first (a port in use is a startup error naming the port;
//! port 0 is resolved to a free port here) and a listener counts as ready once its socket
//! listens, i.e. the kernel accepts TCP connections on the port (see [`crate::bind`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::{LinkType, Router, Server};
use tokio::task::JoinHandle;

use crate::bind::{bind_check, wait_ready, Bound};
use crate::config::{BrokerConfig, EffectiveListener, ListenerKind};
use crate::connect_policy::{KeepAlivePolicy, PolicyProtocol};
use crate::durable::SessionLinks;
use crate::front::ListenerSettings;
use crate::link::{InboundStream, LinkPublisher};

pub use crate::error::BrokerError;

/// A running broker. Dropping it (or [`Broker::stop`]) closes the listeners and every MQTT
/// connection.
///
/// The listeners and their connection tasks run on a tokio runtime the broker owns (rumqttd
/// spawns a task per connection that nothing else can stop), so stopping is shutting that
/// runtime down: devices see their connection close and get no more acknowledgements.
/// rumqttd's router thread and the in-process links (which live on the caller's runtime)
/// keep working, so the bridge can still drain what the router already accepted.
pub struct Broker {
    listeners: Vec<(ListenerKind, SocketAddr)>,
    runtime: Option<tokio::runtime::Runtime>,
    /// Starts the listeners on the runtime; taken by [`Broker::listen`].
    spawn: Option<Box<SpawnListeners>>,
    /// Opens in-process links (client id, clean session); errors as text (rumqttd's are large).
    links: Arc<SessionLinks>,
    /// Backpressure from the bridge's ingest link to the devices.
    gate: Arc<crate::IngestGate>,
    /// Connected MQTT clients over all listeners.
    connections: Arc<std::sync::atomic::AtomicI64>,
    /// Connections per address.
    peers: Arc<crate::peer::Peers>,
    /// Logins by outcome.
    login_stats: Arc<crate::login::LoginStats>,
    /// Caps on client state and rates, with their counters.
    caps: Arc<crate::caps::BrokerCaps>,
    credentials: crate::Credentials,
    /// How often `$SYS` topics are published (`None`: never).
    sys_interval: Option<Duration>,
    /// Retained messages and sessions across restarts, and MQTT 5 session expiry.
    pub(crate) durable: Arc<crate::durable::Durable>,
}

/// A listener's rumqttd settings; for WebSocket and TLS also the front that accepts on the
/// public address and the internal loopback listener rumqttd serves (see [`crate::front`]).
fn listener_settings(
    cfg: &BrokerConfig,
    bound: Bound,
    credentials: &crate::Credentials,
    peers: &Arc<crate::peer::Peers>,
) -> Result<ListenerSettings, BrokerError> {
    let public = &bound.listener;
    let handshake = match public.kind {
        ListenerKind::Mqtt | ListenerKind::Mqtt5 => {
            return Ok(ListenerSettings {
                server: cfg.rumqttd_server(public, credentials),
                public: bound,
                front: None,
            });
        }
        ListenerKind::WebSocket => crate::front::Handshake::WebSocket,
        ListenerKind::Tls => {
            let acceptor = crate::front::tls_acceptor(&cfg.tls.cert_path, &cfg.tls.key_path)
                .map_err(|reason| BrokerError::NotReady {
                    listener: public.kind,
                    addr: public.addr,
                    reason,
                })?;
            crate::front::Handshake::Tls(acceptor)
        }
    };
    let loopback = if public.addr.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let internal = bind_check(vec![EffectiveListener {
        kind: public.kind,
        addr: loopback.parse().expect("a loopback address"),
    }])?
    .remove(0);
    let mut settings = cfg.rumqttd_server(&internal.listener, credentials);
    settings.tls = None; // the front terminates TLS
    let front = crate::front::Front {
        upstream: internal.listener.addr,
        handshake,
        timeout: Duration::from_millis(u64::from(cfg.limits.connect_timeout_ms)),
        peers: peers.clone(),
    };
    Ok(ListenerSettings {
        public: bound,
        server: settings,
        front: Some((front, internal)),
    })
}

/// What every connection's codec shares.
struct Shared {
    gate: Arc<crate::IngestGate>,
    connections: Arc<std::sync::atomic::AtomicI64>,
    peers: Arc<crate::peer::Peers>,
    caps: Arc<crate::caps::BrokerCaps>,
    credentials: crate::Credentials,
    durable: Arc<crate::durable::Durable>,
}

impl Shared {
    fn new(
        cfg: &BrokerConfig,
        peers: Arc<crate::peer::Peers>,
        credentials: crate::Credentials,
        links: Arc<SessionLinks>,
    ) -> Self {
        let caps = Arc::new(crate::caps::BrokerCaps::new((&cfg.limits).into()));
        Self {
            durable: crate::durable::Durable::for_broker(&caps, &cfg.limits, links),
            credentials,
            gate: Arc::new(crate::IngestGate::new(
                cfg.limits.ingest_backlog_max,
                Duration::from_secs(cfg.limits.ack_stall_max_secs),
            )),
            connections: Arc::default(),
            peers,
            caps,
        }
    }

    /// `codec` with the shared state attached.
    fn attach<P>(&self, codec: PolicyProtocol<P>) -> PolicyProtocol<P> {
        codec
            .with_gate(self.gate.clone())
            .with_connection_count(self.connections.clone())
            .with_peers(self.peers.clone())
            .with_caps(self.caps.clone())
            .with_credentials(self.credentials.clone())
            .with_durable(self.durable.clone())
    }
}

/// Runs one of rumqttd's servers (a listener) until it fails, which is logged.
async fn serve<P>(mut server: Server<P>, link: LinkType, (kind, addr): (ListenerKind, SocketAddr))
where
    P: rumqttd::protocol::Protocol + Clone + Send + 'static,
{
    if let Err(err) = server.start(link).await {
        tracing::error!(listener = %kind, %addr, error = %err, "MQTT listener stopped");
    }
}

/// Spawns every listener on the broker's runtime.
type SpawnListeners =
    dyn FnOnce(&tokio::runtime::Runtime) -> Vec<(EffectiveListener, JoinHandle<()>)> + Send + Sync;

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.durable.stop(); // no wills recorded for the connections the stop closes
        self.gate.stop(); // nor handed to the bridge
        if let Some(rt) = self.runtime.take() {
            // Allowed from async code, unlike dropping the runtime: tasks are dropped, sockets
            // close, nothing is awaited.
            rt.shutdown_background();
        }
    }
}

impl Broker {
    /// Validates `cfg`, bind-checks every listener, starts the router and the listeners, and
    /// waits until each listener accepts connections. To open in-process links before any
    /// device can connect, use [`Broker::prepare`] then [`Broker::listen`].
    pub async fn start(cfg: &BrokerConfig) -> Result<Broker, BrokerError> {
        let mut broker = Broker::prepare(cfg)?;
        broker.listen().await?;
        Ok(broker)
    }

    /// Validates `cfg`, bind-checks every listener and starts the router, without listening
    /// yet. Links opened now ([`Broker::subscribe`]) see every publish from the first device
    /// on: rumqttd forwards a publish only to the subscriptions that exist when it arrives.
    pub fn prepare(cfg: &BrokerConfig) -> Result<Broker, BrokerError> {
        cfg.validate().map_err(BrokerError::Config)?;
        let bound = bind_check(cfg.effective_listeners())?;
        let listeners: Vec<EffectiveListener> = bound.iter().map(|b| b.listener.clone()).collect();
        announce_security(cfg, &listeners);

        let router_tx = Router::new(0, cfg.rumqttd_router()).spawn();
        let peers = Arc::new(crate::peer::Peers::new(cfg.limits.max_connections_per_ip));
        let credentials = cfg.credentials().with_peers(peers.clone());
        let login_stats = credentials.stats();
        let policy = KeepAlivePolicy {
            min_secs: cfg.limits.keep_alive_min_secs,
            max_secs: cfg.limits.keep_alive_max_secs,
        };
        let runtime = listener_runtime()?;

        let mut settings = Vec::new();
        for b in bound {
            settings.push(listener_settings(cfg, b, &credentials, &peers)?);
        }
        let router = router_tx.clone();
        let links: Arc<SessionLinks> = Arc::new(move |id, clean| {
            let link = LinkBuilder::new(id, router.clone()).clean_session(clean);
            let built = link.build().map(|(tx, rx, _)| (tx, rx));
            built.map_err(|e: LinkError| e.to_string())
        });
        let shared = Shared::new(cfg, peers.clone(), credentials.clone(), links.clone());
        let (v4, v5) = (
            shared.attach(PolicyProtocol::v4(policy)),
            shared.attach(PolicyProtocol::v5(policy)),
        );
        let servers_tx = router_tx.clone();
        let spawn: Box<SpawnListeners> = Box::new(move |runtime: &tokio::runtime::Runtime| {
            let (rumqttd, fronts) = crate::front::start_fronts(runtime, settings);
            let servers: Vec<_> = rumqttd
                .into_iter()
                .map(|(listener, settings)| {
                    let tx = servers_tx.clone();
                    let (kind, addr) = (listener.kind, listener.addr);
                    let task = match kind {
                        ListenerKind::Mqtt | ListenerKind::Tls => runtime.spawn(serve(
                            Server::new(settings, tx, v4.clone()),
                            LinkType::Remote,
                            (kind, addr),
                        )),
                        ListenerKind::Mqtt5 => runtime.spawn(serve(
                            Server::new(settings, tx, v5.clone()),
                            LinkType::Remote,
                            (kind, addr),
                        )),
                        ListenerKind::WebSocket => runtime.spawn(serve(
                            Server::new(settings, tx, v4.clone()),
                            LinkType::Websocket,
                            (kind, addr),
                        )),
                    };
                    (listener, task)
                })
                .collect();
            // rumqttd's servers first: `listen` waits for each in order.
            servers.into_iter().chain(fronts).collect()
        });

        Ok(Broker {
            listeners: listeners.iter().map(|l| (l.kind, l.addr)).collect(),
            runtime: Some(runtime),
            spawn: Some(spawn),
            links,
            gate: shared.gate,
            connections: shared.connections,
            peers,
            login_stats,
            caps: shared.caps,
            credentials: shared.credentials,
            sys_interval: (cfg.sys_interval_secs > 0)
                .then(|| Duration::from_secs(cfg.sys_interval_secs)),
            durable: shared.durable,
        })
    }

    /// Starts the listeners and waits until each accepts connections. Once only.
    pub async fn listen(&mut self) -> Result<(), BrokerError> {
        let (Some(spawn), Some(runtime)) = (self.spawn.take(), self.runtime.as_ref()) else {
            return Ok(());
        };
        let started = spawn(runtime);
        for (listener, task) in &started {
            wait_ready(listener, task).await?;
            match crate::nodelay::set_on_listener(listener.addr) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(addr = %listener.addr, "listening socket not found; Nagle's algorithm stays on")
                }
                Err(err) => {
                    tracing::warn!(%err, addr = %listener.addr, "cannot set TCP_NODELAY; Nagle's algorithm stays on")
                }
            }
            tracing::info!(listener = %listener.kind, addr = %listener.addr, "MQTT listener ready");
        }
        if let Some(interval) = self.sys_interval {
            let publisher = self.publisher("edgewatch-sys").await?;
            let (connections, caps) = (self.connections.clone(), self.caps.clone());
            if let Some(runtime) = &self.runtime {
                runtime.spawn(crate::sys_publisher::publish_every(
                    interval,
                    publisher,
                    connections,
                    caps,
                ));
            }
        }
        Ok(())
    }

    /// The listeners that run, with the addresses they are bound to (port 0 resolved).
    pub fn listeners(&self) -> &[(ListenerKind, SocketAddr)] {
        &self.listeners
    }

    /// The bound address of one kind of listener, if it runs.
    pub fn addr(&self, kind: ListenerKind) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, a)| *a)
    }

    /// Opens an in-process link subscribed to `filters` and returns its publishes as a stream
    /// buffered by at most `capacity` publishes (see [`crate::link`] for what happens when
    /// it is full).
    pub async fn subscribe(
        &self,
        client_id: &str,
        filters: &[&str],
        capacity: usize,
    ) -> Result<InboundStream, BrokerError> {
        let (mut tx, rx) = self.open_link(client_id).await?;
        for filter in filters {
            tx.subscribe(*filter).map_err(|e| BrokerError::Link {
                client_id: client_id.to_owned(),
                reason: e.to_string(),
            })?;
        }
        // The subscription lives as long as the link's sender: keep it with the pump.
        let stream = InboundStream::spawn(rx, capacity);
        std::mem::forget(tx);
        Ok(stream)
    }

    /// Opens the bridge's feed: every publish clients and in-process publishers send (to any
    /// topic not starting with `$`: readings and presence under `sensors/`, and every other
    /// topic, which the bridge counts as ignored), handed over as rumqttd receives it, with
    /// backpressure: while more than `broker.limits.ingest_backlog_max` publishes wait for the
    /// bridge to take them from this stream, the broker holds PUBACKs back (see
    /// [`crate::backpressure`]). Open it before [`Broker::listen`]; there is one feed.
    pub fn ingest_feed(&self) -> Result<InboundStream, BrokerError> {
        self.gate.take_feed().ok_or_else(|| BrokerError::Link {
            client_id: "edgewatch-bridge".to_owned(),
            reason: "the bridge's feed was opened before".to_owned(),
        })
    }

    /// MQTT clients connected now, over all listeners (in-process links not included).
    pub fn connections(&self) -> i64 {
        self.connections
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(0)
    }

    /// A shared handle on the connected-client count, for metrics.
    pub fn connection_count(&self) -> Arc<std::sync::atomic::AtomicI64> {
        self.connections.clone()
    }

    /// The caps on client state and rates, with their counters (for metrics).
    pub fn caps(&self) -> &Arc<crate::caps::BrokerCaps> {
        &self.caps
    }

    /// The backpressure gate (backlog and held acknowledgements, for metrics).
    pub fn ingest_gate(&self) -> &Arc<crate::IngestGate> {
        &self.gate
    }

    /// Connections per address (the per-address cap and its refusals), for metrics.
    pub fn peers(&self) -> &Arc<crate::peer::Peers> {
        &self.peers
    }

    /// The accounts and their login limiter (people log in to the dashboard with them too).
    pub fn credentials(&self) -> &crate::Credentials {
        &self.credentials
    }

    /// Logins by outcome, for metrics.
    pub fn login_stats(&self) -> &Arc<crate::login::LoginStats> {
        &self.login_stats
    }

    /// Opens an in-process link for publishing into the broker.
    pub async fn publisher(&self, client_id: &str) -> Result<LinkPublisher, BrokerError> {
        let (tx, _rx) = self.open_link(client_id).await?;
        let durable = self.durable.clone();
        Ok(LinkPublisher::new(tx, self.gate.clone(), durable))
    }

    async fn open_link(&self, client_id: &str) -> Result<(LinkTx, LinkRx), BrokerError> {
        let links = self.links.clone();
        let id = client_id.to_owned();
        // Building a link waits for the router's CONNACK on a blocking channel.
        tokio::task::spawn_blocking(move || links(&id, true))
            .await
            .map_err(|e| BrokerError::Link {
                client_id: client_id.to_owned(),
                reason: e.to_string(),
            })?
            .map_err(|e| BrokerError::Link {
                client_id: client_id.to_owned(),
                reason: e.to_string(),
            })
    }

    /// Closes the listeners and every MQTT connection. (rumqttd's router thread has no stop;
    /// it ends with the process.)
    pub fn stop(self) {
        drop(self);
    }
}

fn announce_security(cfg: &BrokerConfig, listeners: &[EffectiveListener]) {
    if cfg.requires_login() {
        tracing::info!(users = cfg.users.len(), "MQTT login required");
        return;
    }
    if cfg.allow_anonymous {
        tracing::warn!("MQTT accepts anonymous clients on every configured address (broker.allow_anonymous = true)");
        return;
    }
    let narrowed = [
        (cfg.mqtt.enabled, cfg.mqtt.listen),
        (cfg.mqtt5.enabled, cfg.mqtt5.listen),
        (cfg.websocket.enabled, cfg.websocket.listen),
        (cfg.tls.enabled, cfg.tls.listen),
    ]
    .iter()
    .any(|(on, a)| *on && !a.ip().is_loopback());
    if narrowed && !listeners.is_empty() {
        tracing::warn!(
            "no MQTT users configured: listeners bind to loopback only. To accept devices from \
             the network, add [[broker.users]] entries (hash passwords with `edgewatch passwd`) \
             or set broker.allow_anonymous = true"
        );
    }
}

/// The broker's own runtime, where the listeners and their connections run.
fn listener_runtime() -> Result<tokio::runtime::Runtime, BrokerError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Connections waiting on backpressure (`crate::backpressure`) park a thread each
        // (asleep on a condition variable, woken when the bridge catches up). With too few,
        // held acknowledgements used up every thread and new connections stalled (1,000
        // devices at full rate got 630 connected); threads are made on demand and end after
        // 10 s idle.
        .max_blocking_threads(1024)
        .thread_name("mqtt-listener")
        .enable_all()
        .build()
        .map_err(BrokerError::Runtime)
}
