//! In-process links to rumqttd's router, and the bridge's feed.
//!
//! [`InboundStream`] is a `Stream` of publishes: for the bridge, every publish clients and
//! in-process publishers send, handed over by the broker's codec as rumqttd receives it
//! ([`crate::backpressure`]: no router subscription, no router log); for
//! [`crate::Broker::subscribe`], those matching an in-process link's filters, stamped with the
//! time they left the router. [`LinkPublisher`] publishes into the broker from inside the
//! process (serial readers and WebSocket clients use it).
//!
//! # Flow control of a router link
//! A task pulls notifications from the router and pushes them into a bounded channel of
//! `capacity` publishes. When the channel is full (the bridge is slower than the devices), the
//! task waits; the router then queues up to `router.max_outgoing_packet_count` packets for the
//! link and stops serving it (rumqttd's `Unschedule`) until the task asks again. Meanwhile
//! publishes wait in the router's in-memory commit log, which keeps
//! `router.max_segment_count` segments per filter: a bridge that falls further behind than
//! that misses the oldest ones, and the router logs it.
//!
//! rumqttd sends `Unschedule` when it stops serving a link; without a `wake()` in reply the
//! link receives nothing more (after about 200 messages). The pump task answers every one.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::Notification;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One publish that reached the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundPublish {
    /// Topic name it was published to.
    pub topic: String,
    /// Payload bytes as sent.
    pub payload: Bytes,
    /// When the broker received it (the bridge's feed) or the link took it from the router,
    /// epoch milliseconds.
    pub received_at_ms: i64,
}

/// A `Stream` of [`InboundPublish`]es from the in-process link. Ends when the router stops.
#[derive(Debug)]
pub struct InboundStream {
    rx: mpsc::Receiver<InboundPublish>,
    /// The task reading a router link (none for the bridge's feed).
    pump: Option<JoinHandle<()>>,
    /// Told about every publish taken, when this is the bridge's ingest link.
    gate: Option<std::sync::Arc<crate::IngestGate>>,
}

impl Drop for InboundStream {
    fn drop(&mut self) {
        if let Some(pump) = &self.pump {
            pump.abort();
        }
    }
}

impl Stream for InboundStream {
    type Item = InboundPublish;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.rx.poll_recv(cx);
        if let (Poll::Ready(Some(_)), Some(gate)) = (&polled, &self.gate) {
            gate.drained();
        }
        polled
    }
}

impl InboundStream {
    /// Receives the next publish, or `None` when the link has ended.
    pub async fn recv(&mut self) -> Option<InboundPublish> {
        let item = self.rx.recv().await;
        if let (Some(_), Some(gate)) = (&item, &self.gate) {
            gate.drained();
        }
        item
    }

    /// Moves up to `limit` publishes into `buf` (waits for at least one); 0 means ended.
    pub async fn recv_many(&mut self, buf: &mut Vec<InboundPublish>, limit: usize) -> usize {
        let n = self.rx.recv_many(buf, limit).await;
        if let Some(gate) = &self.gate {
            gate.drained_many(n as u64);
        }
        n
    }

    /// Reads a router link into a channel of `capacity` publishes.
    pub(crate) fn spawn(link_rx: LinkRx, capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let pump = tokio::spawn(pump(link_rx, tx));
        Self {
            rx,
            pump: Some(pump),
            gate: None,
        }
    }

    /// The bridge's feed (see [`crate::IngestGate::forward`]).
    pub(crate) fn from_feed(
        rx: mpsc::Receiver<InboundPublish>,
        gate: std::sync::Arc<crate::IngestGate>,
    ) -> Self {
        Self {
            rx,
            pump: None,
            gate: Some(gate),
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn pump(mut link_rx: LinkRx, tx: mpsc::Sender<InboundPublish>) {
    loop {
        let next = link_rx.next().await;
        let notification = match next {
            Ok(Some(n)) => n,
            // Woken with nothing buffered: wait again.
            Ok(None) => continue,
            Err(err) => {
                tracing::info!(%err, "in-process link closed");
                return;
            }
        };
        match notification {
            Notification::Forward(forward) => {
                let publish = forward.publish;
                if crate::sys::sys_topic(&publish.topic).is_some() {
                    continue; // `$SYS`, for MQTT clients only
                }
                let Ok(topic) = String::from_utf8(publish.topic.to_vec()) else {
                    // rumqttd validates topics as UTF-8 on the wire; be defensive anyway.
                    tracing::warn!("dropping publish with a non-UTF-8 topic");
                    continue;
                };
                let item = InboundPublish {
                    topic,
                    payload: publish.payload,
                    received_at_ms: now_ms(),
                };
                if tx.send(item).await.is_err() {
                    return; // stream dropped
                }
            }
            Notification::Unschedule => {
                if let Err(err) = link_rx.wake().await {
                    tracing::info!(%err, "in-process link closed");
                    return;
                }
            }
            _ => {}
        }
    }
}

/// Publishes into the broker from inside the process (QoS 0, as rumqttd's local links do).
#[derive(Debug)]
pub struct LinkPublisher {
    tx: std::sync::Arc<std::sync::Mutex<LinkTxCell>>,
    gate: std::sync::Arc<crate::IngestGate>,
    /// Told about empty publishes: they clear a retained message (see [`crate::durable`]).
    durable: std::sync::Arc<crate::durable::Durable>,
}

struct LinkTxCell(LinkTx);

impl std::fmt::Debug for LinkTxCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkTx")
    }
}

impl Clone for LinkPublisher {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            gate: self.gate.clone(),
            durable: self.durable.clone(),
        }
    }
}

impl LinkPublisher {
    pub(crate) fn new(
        tx: LinkTx,
        gate: std::sync::Arc<crate::IngestGate>,
        durable: std::sync::Arc<crate::durable::Durable>,
    ) -> Self {
        Self {
            tx: std::sync::Arc::new(std::sync::Mutex::new(LinkTxCell(tx))),
            gate,
            durable,
        }
    }

    /// Publishes `payload` to `topic` (not retained; an empty payload clears the topic's
    /// retained message, as rumqttd does). The router's channel is bounded; this waits on a
    /// blocking thread while it is full, so the async caller is never blocked.
    pub async fn publish(&self, topic: String, payload: Bytes) -> Result<(), String> {
        self.gate.forward(topic.as_bytes(), &payload);
        if payload.is_empty() {
            self.durable.clear_retained(topic.as_bytes());
        }
        self.send(crate::delivery::local_publish(topic, payload, false))
            .await
    }

    /// Publishes a retained `$SYS` value under [`crate::sys::INTERNAL`] (not for the bridge).
    pub(crate) async fn publish_internal(
        &self,
        topic: String,
        payload: Bytes,
    ) -> Result<(), String> {
        self.send(crate::delivery::local_publish(topic, payload, true))
            .await
    }

    async fn send(&self, packet: rumqttd::protocol::Packet) -> Result<(), String> {
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = tx
                .lock()
                .map_err(|_| "publisher lock poisoned".to_owned())?;
            // Marked QoS 0, so subscribers get it at QoS 0 (`crate::delivery`). `send` does
            // not wait: it queues the packet and blocks on the router's bounded channel.
            futures::executor::block_on(guard.0.send(packet))
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}
