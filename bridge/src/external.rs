//! The external-broker source: an MQTT client (rumqttc) subscribed to an existing broker.
//!
//! * persistent session (`clean_session = false`) under a stable client id, so the broker keeps
//!   QoS1 messages for us while we are away;
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
//! The FIFO is therefore bounded by the broker's in-flight window for our session (mosquitto
//! `max_inflight_messages`, EMQX `max_inflight`), not by us; a warning is logged (at most every
//! 10 s) while more than `ack_queue` acks are pending. The rumqttc request channel is
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgewatch_protocol::timefmt::now_ms;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
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

struct PendingAck {
    publish: rumqttc::Publish,
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

/// Consumes the external broker until `shutdown` is cancelled or the writer stops.
pub async fn run_external(
    cfg: ExternalConfig,
    ingest: Ingest,
    shutdown: CancellationToken,
) -> Result<(), ExternalError> {
    let (host, port) = parse_mqtt_url(&cfg.url)?;
    let mut opts = MqttOptions::new(cfg.client_id.clone(), host, port);
    opts.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(cfg.keep_alive.max(Duration::from_secs(5)))
        .set_max_packet_size(cfg.max_packet_bytes, cfg.max_packet_bytes);
    let ack_queue = cfg.ack_queue.max(1);
    let (client, mut eventloop) = AsyncClient::new(opts, ack_queue);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<PendingAck>();
    let pending = Arc::new(AtomicU64::new(0));
    let mut last_backlog_warn: Option<std::time::Instant> = None;
    let epoch = Arc::new(AtomicU64::new(0));
    let acker = tokio::spawn(send_acks(
        client.clone(),
        ack_rx,
        epoch.clone(),
        pending.clone(),
    ));

    let mut backoff = cfg.backoff_min;
    let mut current_epoch = 0u64;
    info!(url = %cfg.url, client_id = %cfg.client_id, "connecting to external broker");
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            ev = eventloop.poll() => ev,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                current_epoch += 1;
                epoch.store(current_epoch, Ordering::SeqCst);
                backoff = cfg.backoff_min;
                info!(
                    session_present = ack.session_present,
                    "connected to external broker"
                );
                if let Err(err) = client
                    .subscribe(cfg.subscribe.clone(), QoS::AtLeastOnce)
                    .await
                {
                    warn!(%err, "could not queue subscribe");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let (tx, rx) = oneshot::channel();
                // QoS 0 has no packet id: nothing is resent, nothing to recognise.
                let id = (p.qos != QoS::AtMostOnce).then(|| DeliveryId {
                    packet_id: p.pkid,
                    digest: delivery_digest(&p.topic, &p.payload),
                    redelivered: p.dup,
                });
                let delivery = Delivery {
                    publish: Publish {
                        topic: p.topic.clone(),
                        payload: p.payload.clone(),
                        received_at_ms: now_ms(),
                    },
                    ack: Some(tx),
                    id,
                };
                let backlog = pending.fetch_add(1, Ordering::Relaxed) + 1;
                if backlog > ack_queue as u64
                    && last_backlog_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(10))
                {
                    warn!(
                        backlog,
                        "many publishes awaiting acknowledgement; broker in-flight window is large"
                    );
                    last_backlog_warn = Some(std::time::Instant::now());
                }
                let item = PendingAck {
                    publish: p,
                    epoch: current_epoch,
                    done: rx,
                };
                if ack_tx.send(item).is_err() {
                    break;
                }
                if ingest.handle(delivery).await.is_err() {
                    warn!("writer stopped; leaving the external broker");
                    break;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => debug!("subscribed"),
            Ok(_) => {}
            Err(err) => {
                let delay = jittered(backoff);
                warn!(%err, retry_in_ms = delay.as_millis() as u64, "external broker connection error");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
                backoff = (backoff * 2).min(cfg.backoff_max);
            }
        }
    }
    drop(ack_tx);
    acker.abort();
    info!("external source stopped");
    Ok(())
}

async fn send_acks(
    client: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<PendingAck>,
    epoch: Arc<AtomicU64>,
    pending: Arc<AtomicU64>,
) {
    while let Some(p) = rx.recv().await {
        let outcome = p.done.await;
        pending.fetch_sub(1, Ordering::Relaxed);
        if p.epoch != epoch.load(Ordering::SeqCst) {
            continue; // the broker redelivers it on the new connection
        }
        match outcome {
            Ok(_) => {
                if client.ack(&p.publish).await.is_err() {
                    return;
                }
            }
            Err(_) => warn!(topic = %p.publish.topic, "publish not stored; left unacknowledged"),
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
