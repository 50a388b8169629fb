//! The external-broker source: an MQTT client (rumqttc) subscribed to an existing broker.
//!
//! * MQTT 5, persistent session (Clean Start 0, Session Expiry "never") under a stable client
//!   id, so the broker keeps QoS1 messages for us while we are away; the external broker must
//!   speak MQTT 5 (Mosquitto 1.6+, EMQX, HiveMQ, VerneMQ, NanoMQ do);
//! * Receive Maximum = `ack_queue` (at most [`RECEIVE_MAXIMUM_CAP`]): the broker sends no more
//!   unacknowledged publishes than that;
//! * QoS1 subscription, re-sent after every ConnAck (rumqttc does not re-subscribe);
//! * manual acks: each PUBACK is sent only once the publish is final (durable, a duplicate of
//!   a durable reading, or rejected), and in receive order;
//! * reconnects with exponential backoff and jitter.
//!
//! # Queues and what happens when they are full
//! Ingest backpressure: handing a publish to the writer awaits while the writer's queue is
//! full; meanwhile we stop reading the socket and the broker holds the messages.
//!
//! Pending acks (publishes received, not yet acknowledged) wait in a FIFO that the receive
//! loop never blocks on. It must not: rumqttc only sends queued acks while its event loop is
//! polled, and under sustained load its loop reads up to 10 packets per ack it sends, so a
//! receive loop that waited for ack space would deadlock (seen in tests: ~20k messages in).
//! The FIFO is bounded by our Receive Maximum instead, which the broker must keep to (MQTT 5
//! section 4.9); a warning is logged (at most every 10 s) if more than `ack_queue` acks are
//! pending all the same. The rumqttc request channel is
//! `ack_queue` deep; the ack task awaits it while full, which is harmless because the receive
//! loop keeps polling and so keeps draining it.
//!
//! After a reconnect, acks still pending from the previous connection are skipped: the broker
//! redelivers those messages (DUP set, same packet id), which are then recognised as duplicates
//! and acknowledged.
//!
//! # Redeliveries
//! Each publish goes to ingest with its [`DeliveryId`] (packet id, digest of topic and payload,
//! DUP flag); the store writes it in the same commit as the reading. So a resend of a publish
//! that was committed but not acknowledged (a reconnect, or `kill -9` of the bridge between
//! commit and PUBACK) is recognised by what it is, whatever its payload: readings without a
//! device timestamp are not stored twice either. See the store's `deliveries` module for how
//! long a delivery is remembered.

use std::hash::{BuildHasher, Hasher};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgewatch_protocol::timefmt::now_ms;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish as MqttPublish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::Outgoing;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::ingest::{Delivery, Ingest, Publish};
use crate::store::{delivery_digest, DeliveryId};
use crate::writer::Outcome;

/// Settings of the external source.
#[derive(Debug, Clone)]
pub struct ExternalConfig {
    /// `mqtt://host:port` (port defaults to 1883).
    pub url: String,
    /// Stable client id: the broker keeps our session under it.
    pub client_id: String,
    /// Subscription filter.
    pub subscribe: String,
    /// More filters subscribed the same way (the ingest mappings' topics).
    pub also_subscribe: Vec<String>,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Largest incoming packet accepted by the client, in bytes.
    pub max_packet_bytes: usize,
    /// Pending-ack FIFO capacity.
    pub ack_queue: usize,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
}

impl ExternalConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        ExternalConfig {
            url: url.into(),
            client_id: "edgewatch-bridge".to_owned(),
            subscribe: "sensors/#".to_owned(),
            also_subscribe: Vec::new(),
            keep_alive: Duration::from_secs(30),
            max_packet_bytes: 1024 * 1024,
            ack_queue: 10_000,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// Errors of the external source.
#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    /// The broker URL is not `mqtt://host[:port]`.
    #[error("invalid broker url {url:?}: expected mqtt://host[:port]")]
    InvalidUrl {
        /// The url.
        url: String,
    },
}

/// Parses `mqtt://host[:port]` (also `tcp://`) into host and port.
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16), ExternalError> {
    let bad = || ExternalError::InvalidUrl {
        url: url.to_owned(),
    };
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(bad)?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err(bad());
    }
    let parse_port = |p: &str| p.parse::<u16>().map_err(|_| bad());
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(p) => (h, parse_port(p)?),
            None if after.is_empty() => (h, 1883),
            None => return Err(bad()),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, parse_port(p)?),
            None => (rest, 1883),
        }
    };
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// A filter we never subscribe to: its UNSUBSCRIBE is a barrier. The broker handles a
/// connection's packets in order, so its UNSUBACK proves that every PUBACK written before the
/// UNSUBSCRIBE reached it and was applied (a PUBACK merely written can still be lost: a
/// `kill -9` of the bridge resets the connection, and the broker drops what it had not read).
pub const ACK_BARRIER_FILTER: &str = "$edgewatch/ack-barrier";

/// Least time between two barriers.
pub const ACK_BARRIER_INTERVAL: Duration = Duration::from_millis(100);

/// PUBACKs handed to rumqttc, in order, until rumqttc says it wrote them
/// (`Outgoing::PubAck`): packet id and digest.
type AcksQueued = Arc<std::sync::Mutex<std::collections::VecDeque<(u16, u64)>>>;

/// The digest stand-in of a PUBACK whose publish has no record in the store (rejected,
/// ignored, a presence change): nothing to forget when it is confirmed.
const NO_RECORD: u64 = 0;

/// Where a barrier is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Barrier {
    None,
    /// Handed to rumqttc, not written yet.
    Requested,
    /// Written with this packet id, after the first `covers` written PUBACKs.
    Sent {
        packet_id: u16,
        covers: usize,
    },
}

/// PUBACKs written on the current connection and not yet confirmed by a barrier.
struct AcksWritten {
    unconfirmed: std::collections::VecDeque<(u16, u64)>,
    barrier: Barrier,
    last_barrier: tokio::time::Instant,
}

impl Default for AcksWritten {
    fn default() -> Self {
        Self {
            unconfirmed: std::collections::VecDeque::new(),
            barrier: Barrier::None,
            last_barrier: tokio::time::Instant::now(),
        }
    }
}

impl AcksWritten {
    /// rumqttc wrote the PUBACK of `packet_id`.
    fn written(&mut self, queued: &AcksQueued, packet_id: u16) {
        let Ok(mut q) = queued.lock() else { return };
        // rumqttc writes them in the order they were handed over; one it could not write
        // (connection lost meanwhile) is skipped: its record stays, the broker resends.
        while let Some((p, digest)) = q.pop_front() {
            if p == packet_id {
                self.unconfirmed.push_back((p, digest));
                return;
            }
        }
    }

    /// When the next barrier is due, if one is.
    fn barrier_due(&self) -> Option<tokio::time::Instant> {
        (self.barrier == Barrier::None && !self.unconfirmed.is_empty())
            .then(|| self.last_barrier + ACK_BARRIER_INTERVAL)
    }

    /// Hands a barrier to rumqttc.
    fn request_barrier(&mut self, client: &AsyncClient) {
        if client.try_unsubscribe(ACK_BARRIER_FILTER).is_ok() {
            self.barrier = Barrier::Requested;
        }
        self.last_barrier = tokio::time::Instant::now();
    }

    /// rumqttc wrote an UNSUBSCRIBE.
    fn barrier_written(&mut self, packet_id: u16) {
        if self.barrier == Barrier::Requested {
            self.barrier = Barrier::Sent {
                packet_id,
                covers: self.unconfirmed.len(),
            };
        }
    }

    /// The broker answered an UNSUBSCRIBE: the PUBACKs written before our barrier are
    /// confirmed (packet id, digest or [`NO_RECORD`]).
    fn unsuback(&mut self, packet_id: u16) -> Vec<(u16, u64)> {
        match self.barrier {
            Barrier::Sent {
                packet_id: p,
                covers,
            } if p == packet_id => {
                self.barrier = Barrier::None;
                let n = covers.min(self.unconfirmed.len());
                self.unconfirmed.drain(..n).collect()
            }
            _ => Vec::new(),
        }
    }
}

struct PendingAck {
    digest: u64,
    publish: MqttPublish,
    epoch: u64,
    done: oneshot::Receiver<Outcome>,
}

/// A delay in `[d/2, d]`, so reconnecting clients spread out.
fn jittered(d: Duration) -> Duration {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    let frac = (h.finish() % 1000) as u32;
    d / 2 + d / 2 * frac / 1000
}

/// The most publishes the broker may have in flight to us (MQTT 5 Receive Maximum): the
/// store recognises a resend while its original is among the session's last 32,768 deliveries
/// (see the store's `deliveries` module), so the window stays below that.
pub const RECEIVE_MAXIMUM_CAP: u16 = 32_767;

/// Consumes the external broker until `shutdown` is cancelled or the writer stops.
pub async fn run_external(
    cfg: ExternalConfig,
    ingest: Ingest,
    shutdown: CancellationToken,
) -> Result<(), ExternalError> {
    let (host, port) = parse_mqtt_url(&cfg.url)?;
    let ack_queue = cfg.ack_queue.max(1);
    let receive_maximum = ack_queue.min(usize::from(RECEIVE_MAXIMUM_CAP)) as u16;
    let opts = session_options(&cfg, host, port, receive_maximum);
    let (client, mut eventloop) = AsyncClient::new(opts, ack_queue);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<PendingAck>();
    let mut session = Session {
        backoff: cfg.backoff_min,
        client,
        ingest,
        ack_queue,
        ack_tx,
        pending: Arc::new(AtomicU64::new(0)),
        last_backlog_warn: None,
        epoch: Arc::new(AtomicU64::new(0)),
        current_epoch: 0,
        queued: AcksQueued::default(),
        written: AcksWritten::default(),
        resending: false,
        cfg,
    };
    let acker = tokio::spawn(send_acks(
        session.client.clone(),
        ack_rx,
        session.epoch.clone(),
        session.pending.clone(),
        session.queued.clone(),
    ));
    info!(url = %session.cfg.url, client_id = %session.cfg.client_id, receive_maximum, "connecting to external broker (MQTT 5)");
    loop {
        let barrier_due = session.written.barrier_due();
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            ev = eventloop.poll() => ev,
            () = tokio::time::sleep_until(barrier_due.unwrap_or_else(tokio::time::Instant::now)), if barrier_due.is_some() => {
                session.written.request_barrier(&session.client);
                continue;
            }
        };
        if session.handle(event, &shutdown).await.is_break() {
            break;
        }
    }
    drop(session);
    acker.abort();
    info!("external source stopped");
    Ok(())
}

/// The client options: MQTT 5, so that the broker keeps to our Receive Maximum. With 3.1.1
/// nothing bounds what it sends before our acknowledgements come back (Mosquitto 2.0 was
/// seen with 50,000 unacknowledged publishes in flight to one session, packet ids reused
/// among them), and a resend could no longer be told by its packet id.
fn session_options(
    cfg: &ExternalConfig,
    host: String,
    port: u16,
    receive_maximum: u16,
) -> MqttOptions {
    let mut opts = MqttOptions::new(cfg.client_id.clone(), host, port);
    opts.set_clean_start(false)
        .set_session_expiry_interval(Some(u32::MAX))
        .set_receive_maximum(Some(receive_maximum))
        .set_manual_acks(true)
        .set_keep_alive(cfg.keep_alive.max(Duration::from_secs(5)))
        .set_max_packet_size(Some(
            u32::try_from(cfg.max_packet_bytes).unwrap_or(u32::MAX),
        ));
    opts
}

/// The source's side of the session with the external broker.
struct Session {
    cfg: ExternalConfig,
    client: AsyncClient,
    ingest: Ingest,
    ack_queue: usize,
    /// Deliveries in receive order, to the task that acknowledges them after their commit.
    ack_tx: mpsc::UnboundedSender<PendingAck>,
    /// Deliveries handed to ingest and not yet acknowledged.
    pending: Arc<AtomicU64>,
    last_backlog_warn: Option<std::time::Instant>,
    /// Connections so far: acknowledgements of an earlier connection are not sent.
    epoch: Arc<AtomicU64>,
    current_epoch: u64,
    queued: AcksQueued,
    written: AcksWritten,
    /// Between a CONNACK with session present and the broker's first publish without DUP.
    resending: bool,
    backoff: Duration,
}

impl Session {
    /// Handles one event of the client's event loop; `Break` ends the source.
    async fn handle(
        &mut self,
        event: Result<Event, rumqttc::v5::ConnectionError>,
        shutdown: &CancellationToken,
    ) -> ControlFlow<()> {
        match event {
            Ok(Event::Outgoing(Outgoing::PubAck(packet_id))) => {
                self.written.written(&self.queued, packet_id);
            }
            Ok(Event::Outgoing(Outgoing::Unsubscribe(packet_id))) => {
                self.written.barrier_written(packet_id);
            }
            Ok(Event::Incoming(Packet::UnsubAck(ack))) => self.barrier_confirmed(ack.pkid),
            Ok(Event::Incoming(Packet::ConnAck(ack))) => self.connected(ack.session_present).await,
            Ok(Event::Incoming(Packet::Publish(p))) => return self.publish(p).await,
            Ok(Event::Incoming(Packet::SubAck(_))) => debug!("subscribed"),
            Ok(_) => {}
            Err(err) => {
                let delay = jittered(self.backoff);
                warn!(%err, retry_in_ms = delay.as_millis() as u64, "external broker connection error");
                tokio::select! {
                    () = shutdown.cancelled() => return ControlFlow::Break(()),
                    () = tokio::time::sleep(delay) => {}
                }
                self.backoff = (self.backoff * 2).min(self.cfg.backoff_max);
            }
        }
        ControlFlow::Continue(())
    }

    /// Our PUBACKs go in receive order and a broker applies a PUBACK to the oldest
    /// unacknowledged publish with its packet id, so even where it reuses a packet id among
    /// unacknowledged publishes each confirmed PUBACK is the one we meant.
    fn barrier_confirmed(&mut self, packet_id: u16) {
        let acked: Vec<(u16, u64)> = self
            .written
            .unsuback(packet_id)
            .into_iter()
            .filter(|(_, digest)| *digest != NO_RECORD)
            .collect();
        if !acked.is_empty() {
            self.ingest.writer().deliveries_acked(acked);
        }
    }

    async fn connected(&mut self, session_present: bool) {
        self.current_epoch += 1;
        self.epoch.store(self.current_epoch, Ordering::SeqCst);
        self.backoff = self.cfg.backoff_min;
        self.written = AcksWritten::default();
        self.resending = session_present;
        if !session_present {
            // The broker resends nothing from an earlier session.
            self.ingest.writer().delivery_session_lost();
        }
        info!(session_present, "connected to external broker");
        let filters = std::iter::once(&self.cfg.subscribe).chain(&self.cfg.also_subscribe);
        for filter in filters {
            if let Err(err) = self
                .client
                .subscribe(filter.clone(), QoS::AtLeastOnce)
                .await
            {
                warn!(%err, %filter, "could not queue subscribe");
            }
        }
    }

    /// Hands one publish to ingest, queued for its acknowledgement after the commit.
    async fn publish(&mut self, p: MqttPublish) -> ControlFlow<()> {
        let Ok(topic) = String::from_utf8(p.topic.to_vec()) else {
            // MQTT requires UTF-8 topics; a broker that breaks that gets no answer for this
            // publish, and its resend is refused the same way.
            warn!(packet_id = p.pkid, "publish with a non-UTF-8 topic ignored");
            return ControlFlow::Continue(());
        };
        let (tx, rx) = oneshot::channel();
        let digest = delivery_digest(&topic, &p.payload);
        let delivery = Delivery {
            publish: Publish {
                topic,
                payload: p.payload.clone(),
                received_at_ms: now_ms(),
            },
            ack: Some(tx),
            id: self.delivery_id(&p, digest),
        };
        self.count_pending();
        let item = PendingAck {
            digest,
            publish: p,
            epoch: self.current_epoch,
            done: rx,
        };
        if self.ack_tx.send(item).is_err() {
            return ControlFlow::Break(());
        }
        if self.ingest.handle(delivery).await.is_err() {
            warn!("writer stopped; leaving the external broker");
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    /// What the store needs to recognise a resend; QoS 0 has no packet id: nothing is
    /// resent, nothing to recognise.
    fn delivery_id(&mut self, p: &MqttPublish, digest: u64) -> Option<DeliveryId> {
        let qos1 = p.qos != QoS::AtMostOnce;
        let resends_done = qos1 && self.resending && !p.dup;
        if resends_done {
            self.resending = false;
        }
        qos1.then_some(DeliveryId {
            packet_id: p.pkid,
            digest,
            redelivered: p.dup,
            connection: self.current_epoch,
            resends_done,
        })
    }

    fn count_pending(&mut self) {
        let backlog = self.pending.fetch_add(1, Ordering::Relaxed) + 1;
        if backlog > self.ack_queue as u64
            && self
                .last_backlog_warn
                .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            warn!(
                backlog,
                "more publishes awaiting acknowledgement than the Receive Maximum allows"
            );
            self.last_backlog_warn = Some(std::time::Instant::now());
        }
    }
}

async fn send_acks(
    client: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<PendingAck>,
    epoch: Arc<AtomicU64>,
    pending: Arc<AtomicU64>,
    queued: AcksQueued,
) {
    while let Some(p) = rx.recv().await {
        let outcome = p.done.await;
        pending.fetch_sub(1, Ordering::Relaxed);
        if p.epoch != epoch.load(Ordering::SeqCst) {
            continue; // the broker redelivers it on the new connection
        }
        match outcome {
            Ok(outcome) => {
                // Only stored readings and duplicates have a delivery record in the store.
                let recorded = matches!(outcome, Outcome::Stored(_) | Outcome::Duplicate)
                    && p.publish.qos != QoS::AtMostOnce;
                if p.publish.qos != QoS::AtMostOnce {
                    // Queued before the request, so it is there when rumqttc says it wrote it.
                    if let Ok(mut q) = queued.lock() {
                        q.push_back((p.publish.pkid, if recorded { p.digest } else { NO_RECORD }));
                    }
                }
                if client.ack(&p.publish).await.is_err() {
                    return;
                }
            }
            Err(_) => warn!(
                topic = %String::from_utf8_lossy(&p.publish.topic),
                "publish not stored; left unacknowledged"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_mqtt_url("mqtt://127.0.0.1:1884").ok(),
            Some(("127.0.0.1".to_owned(), 1884))
        );
        assert_eq!(
            parse_mqtt_url("mqtt://broker").ok(),
            Some(("broker".to_owned(), 1883))
        );
        assert_eq!(parse_mqtt_url("tcp://h:1/").ok(), Some(("h".to_owned(), 1)));
        assert_eq!(
            parse_mqtt_url("mqtt://[::1]:1884").ok(),
            Some(("::1".to_owned(), 1884))
        );
        for bad in [
            "http://h",
            "mqtt://",
            "mqtt://h:x",
            "mqtt://h:0",
            "mqtt://h/x",
            "h:1",
        ] {
            assert!(parse_mqtt_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(1000));
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1000));
        }
    }
}
