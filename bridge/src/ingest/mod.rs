//! Ingest: the one seam every inbound publish goes through, whatever its source.
//!
//! A source (the embedded broker's in-process link, or [`crate::ingest::external`]) yields
//! [`Publish`]es (or [`Delivery`]s when it needs to know when an item is final). Ingest decodes
//! each one with [`edgewatch_protocol::payload::decode`]: readings and presence changes go to the writer, rejects are
//! counted per reason, logged without flooding (at most one warning per reason per
//! [`REJECT_LOG_INTERVAL`], with the number suppressed since) and kept in a bounded ring for
//! `GET /v1/rejects`. A bad payload never stops ingest.
//!
//! # Device spans
//! Each publish is handled in a `device` span carrying `device_id` (from the topic, or from
//! the payload on the shared `sensors/{metric}` channel). On the reading path it is a debug
//! span: ingest runs at tens of thousands of readings per second, and a disabled span costs
//! one check of the callsite's cached interest, no allocation. A reject is logged at warn, so
//! its warning is emitted inside a `device` span of its own level when the debug one is off:
//! every reject line names its device.
//!
//! # Backpressure
//! Handing an item to the writer awaits while the writer's queue is full, so a source that is
//! read by [`run_ingest`] is read no faster than the writer commits.

pub mod external;
pub mod last_payload;
pub mod mapping;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgewatch_protocol::payload::{decode, is_reading_topic, Decoded, Inbound};
use futures::{Stream, StreamExt};
use serde::Serialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument as _, Span};

use crate::store::{DeliveryId, Origin, PresenceUpdate};
use crate::writer::{Outcome, WriterClosed, WriterHandle};
use mapping::{Mapped, Mappings};

/// At most one warning per reject reason per this interval.
pub const REJECT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Reject reason for payloads over the configured size limit (the others come from
/// [`edgewatch_protocol::DecodeError::reason`]).
pub const REASON_TOO_LARGE: &str = "payload_too_large";

/// Bytes of payload kept in a reject record.
const PREVIEW_BYTES: usize = 64;

/// One inbound MQTT publish.
#[derive(Debug, Clone)]
pub struct Publish {
    /// Topic name.
    pub topic: String,
    /// Payload bytes.
    pub payload: Bytes,
    /// When the hub received it, epoch ms.
    pub received_at_ms: i64,
}

/// A publish plus an optional acknowledgement channel, completed with the item's [`Outcome`]
/// once it is final: durable, a duplicate of a durable reading, rejected or ignored. If the
/// writer fails, the sender is dropped without a value: the item must not be acknowledged
/// upstream.
#[derive(Debug)]
pub struct Delivery {
    /// The publish.
    pub publish: Publish,
    /// Completion, if the source wants one.
    pub ack: Option<oneshot::Sender<Outcome>>,
    /// The broker session's identity of this delivery, when the source has one it can see
    /// again after a restart (the external source's QoS 1 packet id): a resend is then
    /// recognised by it, whatever the payload.
    pub id: Option<DeliveryId>,
}

impl From<Publish> for Delivery {
    fn from(publish: Publish) -> Self {
        Delivery {
            publish,
            ack: None,
            id: None,
        }
    }
}

/// A kept reject.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectRecord {
    /// When it was received, epoch ms.
    pub received_at_ms: i64,
    /// Its topic.
    pub topic: String,
    /// The device it came from, when known (from the topic or the payload).
    pub device_id: Option<String>,
    /// Stable reason label.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Payload size in bytes.
    pub payload_len: usize,
    /// The first bytes of the payload, lossily as UTF-8.
    pub payload_preview: String,
}

/// Reject counters and the most recent rejects.
#[derive(Debug, Clone, Serialize)]
pub struct RejectsSnapshot {
    /// All rejects since start.
    pub total: u64,
    /// Per reason.
    pub by_reason: BTreeMap<&'static str, u64>,
    /// The most recent ones, oldest first.
    pub recent: Vec<RejectRecord>,
}

#[derive(Debug)]
struct RejectsInner {
    by_reason: BTreeMap<&'static str, u64>,
    total: u64,
    ring: VecDeque<RejectRecord>,
    /// Per reason: when we last warned, and how many were not logged since.
    log_state: HashMap<&'static str, (Instant, u64)>,
}

/// Counts, logs and keeps rejects. The ring holds the last `capacity` records; older ones are
/// dropped (counters keep counting).
#[derive(Debug)]
pub struct Rejects {
    capacity: usize,
    inner: Mutex<RejectsInner>,
}

impl Rejects {
    /// A store keeping the last `capacity` rejects.
    pub fn new(capacity: usize) -> Self {
        Rejects {
            capacity,
            inner: Mutex::new(RejectsInner {
                by_reason: BTreeMap::new(),
                total: 0,
                ring: VecDeque::new(),
                log_state: HashMap::new(),
            }),
        }
    }

    /// Records one reject (std mutex held for a few map operations, never across `.await`).
    pub fn record(
        &self,
        publish: &Publish,
        device_id: Option<&str>,
        reason: &'static str,
        message: String,
    ) {
        let preview_len = publish.payload.len().min(PREVIEW_BYTES);
        let record = RejectRecord {
            received_at_ms: publish.received_at_ms,
            topic: publish.topic.chars().take(256).collect(),
            device_id: device_id.map(str::to_owned),
            reason,
            message,
            payload_len: publish.payload.len(),
            payload_preview: String::from_utf8_lossy(&publish.payload[..preview_len]).into_owned(),
        };
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.total += 1;
        *inner.by_reason.entry(reason).or_default() += 1;
        let now = Instant::now();
        let log = match inner.log_state.get_mut(reason) {
            Some((last, suppressed)) if now.duration_since(*last) < REJECT_LOG_INTERVAL => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                *last = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                inner.log_state.insert(reason, (now, 0));
                Some(0)
            }
        };
        if let Some(suppressed) = log {
            warn!(topic = %record.topic, reason, suppressed, "rejected publish: {}", record.message);
        }
        if self.capacity > 0 {
            if inner.ring.len() >= self.capacity {
                inner.ring.pop_front();
            }
            inner.ring.push_back(record);
        }
    }

    /// Counters and the kept records.
    pub fn snapshot(&self) -> RejectsSnapshot {
        match self.inner.lock() {
            Ok(inner) => RejectsSnapshot {
                total: inner.total,
                by_reason: inner.by_reason.clone(),
                recent: inner.ring.iter().cloned().collect(),
            },
            Err(_) => RejectsSnapshot {
                total: 0,
                by_reason: BTreeMap::new(),
                recent: Vec::new(),
            },
        }
    }
}

/// Ingest counters. Every publish seen is counted in `received` and then in exactly one of
/// `readings`, `presence`, `ignored` or the rejects (by reason); the writer then counts each
/// reading stored, duplicate or failed ([`crate::writer::WriteOutcomes`]).
#[derive(Debug, Default)]
pub struct IngestCounters {
    /// Publishes seen.
    pub received: AtomicU64,
    /// Readings handed to the writer.
    pub readings: AtomicU64,
    /// Presence changes handed to the writer.
    pub presence: AtomicU64,
    /// Publishes on topics outside the reading/presence scheme (not under `sensors/`) that no
    /// ingest mapping matches: not readings, not errors, not stored.
    pub ignored: AtomicU64,
    /// Readings beyond the first that mapped publishes gave (one publish, several fields): with
    /// them, publishes received and items stored add up (see `crate::metrics`).
    pub split: AtomicU64,
}

/// Decodes publishes and feeds the writer. Cheap to clone; every source shares one.
#[derive(Debug, Clone)]
pub struct Ingest {
    writer: WriterHandle,
    rejects: Arc<Rejects>,
    counters: Arc<IngestCounters>,
    max_payload_bytes: usize,
    /// The ingest mappings in force ([`mapping`]); replaced whole on a reload.
    mappings: Arc<std::sync::RwLock<Arc<Mappings>>>,
    /// Each device's last payload ([`last_payload`]).
    last_payloads: Arc<last_payload::LastPayloads>,
}

impl Ingest {
    /// Ingest into `writer`, keeping rejects in `rejects`. Payloads longer than
    /// `max_payload_bytes` are rejected as [`REASON_TOO_LARGE`].
    pub fn new(writer: WriterHandle, rejects: Arc<Rejects>, max_payload_bytes: usize) -> Self {
        Ingest {
            writer,
            rejects,
            counters: Arc::default(),
            max_payload_bytes,
            mappings: Arc::default(),
            last_payloads: Arc::default(),
        }
    }

    /// Each device's last payload.
    pub fn last_payloads(&self) -> &Arc<last_payload::LastPayloads> {
        &self.last_payloads
    }

    fn keep_payload(&self, device: &str, publish: &Publish) {
        self.last_payloads.record(
            device,
            &publish.topic,
            &publish.payload,
            publish.received_at_ms,
        );
    }

    /// The ingest mappings in force.
    pub fn mappings(&self) -> Arc<Mappings> {
        match self.mappings.read() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `mappings` in force (at start, and on a reload: their counters go on).
    pub fn set_mappings(&self, mappings: Mappings) {
        let mut held = match self.mappings.write() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        mappings.carry_counters(&held);
        *held = Arc::new(mappings);
    }

    /// The reject store.
    pub fn rejects(&self) -> &Arc<Rejects> {
        &self.rejects
    }

    /// The writer this ingest feeds.
    pub fn writer(&self) -> &WriterHandle {
        &self.writer
    }

    /// The counters.
    pub fn counters(&self) -> &IngestCounters {
        &self.counters
    }

    /// Handles one delivery: decode, then hand to the writer (awaiting queue space) or reject.
    /// Only fails when the writer has stopped.
    pub async fn handle(&self, delivery: Delivery) -> Result<(), WriterClosed> {
        let Delivery { publish, ack, id } = delivery;
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        if !is_reading_topic(&publish.topic) {
            return self.handle_mapped(publish, ack, id).await;
        }
        let topic_device = device_of_topic(&publish.topic);
        let span = tracing::debug_span!("device", device_id = topic_device);
        if publish.payload.len() > self.max_payload_bytes {
            let msg = format!(
                "payload of {} bytes is over the limit of {} bytes",
                publish.payload.len(),
                self.max_payload_bytes
            );
            // The payload is not looked into: it is over the limit.
            let _in_device = reject_span(span, topic_device).entered();
            self.reject(&publish, topic_device, REASON_TOO_LARGE, msg, ack);
            return Ok(());
        }
        match decode(&publish.topic, &publish.payload, publish.received_at_ms) {
            Ok(Decoded {
                inbound: Inbound::Reading(reading),
                device_time,
            }) => {
                self.counters.readings.fetch_add(1, Ordering::Relaxed);
                self.keep_payload(&reading.device_id, &publish);
                if topic_device.is_none() {
                    // Shared channel: the device came in the payload. No-op when disabled.
                    span.record("device_id", reading.device_id.as_str());
                }
                let origin = Origin {
                    device_time,
                    delivery: id,
                };
                self.writer
                    .write_from(reading, origin, ack)
                    .instrument(span)
                    .await
            }
            Ok(Decoded {
                inbound: Inbound::Status { device_id, online },
                ..
            }) => {
                self.counters.presence.fetch_add(1, Ordering::Relaxed);
                self.keep_payload(&device_id, &publish);
                let update = PresenceUpdate {
                    device_id,
                    online,
                    at_ms: publish.received_at_ms,
                };
                self.writer.set_presence(update, ack).instrument(span).await
            }
            Err(err) => {
                let payload_device = match topic_device {
                    Some(_) => None,
                    None => device_of_payload(&publish.payload),
                };
                let device = topic_device.or(payload_device.as_deref());
                if let Some(device) = device {
                    self.keep_payload(device, &publish);
                }
                let _in_device = reject_span(span, device).entered();
                self.reject(&publish, device, err.reason(), err.to_string(), ack);
                Ok(())
            }
        }
    }

    /// A publish outside `sensors/`: read by the first ingest mapping whose pattern matches
    /// it, else ignored.
    async fn handle_mapped(
        &self,
        publish: Publish,
        ack: Option<oneshot::Sender<Outcome>>,
        id: Option<DeliveryId>,
    ) -> Result<(), WriterClosed> {
        let mappings = self.mappings();
        if !mappings.matches(&publish.topic) {
            self.ignore(ack);
            return Ok(());
        }
        if publish.payload.len() > self.max_payload_bytes {
            let msg = format!(
                "payload of {} bytes is over the limit of {} bytes",
                publish.payload.len(),
                self.max_payload_bytes
            );
            self.reject(&publish, None, REASON_TOO_LARGE, msg, ack);
            return Ok(());
        }
        let mapped = mappings.map(&publish.topic, &publish.payload, publish.received_at_ms);
        match mapped {
            Some(Ok(Mapped::Readings {
                mut readings,
                device_time,
            })) => {
                let n = readings.len() as u64;
                self.counters.readings.fetch_add(n, Ordering::Relaxed);
                self.counters
                    .split
                    .fetch_add(n.saturating_sub(1), Ordering::Relaxed);
                let device = readings.first().map(|r| r.device_id.clone());
                if let Some(device) = &device {
                    self.keep_payload(device, &publish);
                }
                let span = tracing::debug_span!("device", device_id = device.as_deref());
                let origin = Origin {
                    device_time,
                    delivery: id,
                };
                if readings.len() == 1 {
                    if let Some(one) = readings.pop() {
                        let write = self.writer.write_from(one, origin, ack);
                        return write.instrument(span).await;
                    }
                }
                let write = self.writer.write_group(readings, origin, ack);
                write.instrument(span).await
            }
            Some(Ok(Mapped::Status { device_id, online })) => {
                self.counters.presence.fetch_add(1, Ordering::Relaxed);
                self.keep_payload(&device_id, &publish);
                let span = tracing::debug_span!("device", device_id = device_id.as_str());
                let update = PresenceUpdate {
                    device_id,
                    online,
                    at_ms: publish.received_at_ms,
                };
                self.writer.set_presence(update, ack).instrument(span).await
            }
            Some(Err(reject)) => {
                let device = reject.device_id.as_deref();
                if let Some(device) = device {
                    self.keep_payload(device, &publish);
                }
                let span = tracing::warn_span!("device", device_id = device);
                let _in_device = span.entered();
                self.reject(&publish, device, reject.reason, reject.message, ack);
                Ok(())
            }
            None => {
                self.ignore(ack);
                Ok(())
            }
        }
    }

    /// A publish no mapping reads: counted as ignored.
    fn ignore(&self, ack: Option<oneshot::Sender<Outcome>>) {
        self.counters.ignored.fetch_add(1, Ordering::Relaxed);
        if let Some(ack) = ack {
            let _ = ack.send(Outcome::Ignored);
        }
    }

    fn reject(
        &self,
        publish: &Publish,
        device_id: Option<&str>,
        reason: &'static str,
        message: String,
        ack: Option<oneshot::Sender<Outcome>>,
    ) {
        self.rejects.record(publish, device_id, reason, message);
        if let Some(ack) = ack {
            let _ = ack.send(Outcome::Rejected(reason));
        }
    }
}

/// The span a reject is handled (and its warning logged) in: the reading path's debug span
/// when that is enabled, else a warn-level `device` span, which is enabled exactly when the
/// reject warning can be. No span when the device is unknown (a topic outside `sensors/`, a
/// payload without a readable `deviceId`).
fn reject_span(debug: Span, device: Option<&str>) -> Span {
    match device {
        _ if !debug.is_disabled() => {
            debug.record("device_id", device);
            debug
        }
        Some(device_id) => tracing::warn_span!("device", device_id),
        None => Span::none(),
    }
}

/// The device of `sensors/{deviceId}/{metric}` and `sensors/{deviceId}/status`, without
/// allocating; `None` for the shared `sensors/{metric}` channel and other topics.
fn device_of_topic(topic: &str) -> Option<&str> {
    let (device, metric) = topic.strip_prefix("sensors/")?.split_once('/')?;
    (!device.is_empty() && !metric.contains('/')).then_some(device)
}

/// The `deviceId` of a JSON payload on the shared channel, when it is a valid device id. Only
/// called for rejects.
fn device_of_payload(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct DeviceOnly {
        #[serde(rename = "deviceId")]
        device_id: Option<String>,
    }
    if payload.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let parsed: DeviceOnly = serde_json::from_slice(payload).ok()?;
    parsed
        .device_id
        .filter(|d| edgewatch_protocol::payload::is_valid_id(d))
}

/// Feeds every item of `source` through `ingest` until the source ends, `shutdown` is
/// cancelled or the writer stops. Items are handled one at a time, in order.
pub async fn run_ingest<S, I>(source: S, ingest: Ingest, shutdown: CancellationToken)
where
    S: Stream<Item = I>,
    I: Into<Delivery>,
{
    let mut source = std::pin::pin!(source);
    loop {
        let item = tokio::select! {
            () = shutdown.cancelled() => break,
            item = source.next() => item,
        };
        let Some(item) = item else {
            info!("ingest source ended");
            break;
        };
        if ingest.handle(item.into()).await.is_err() {
            warn!("writer stopped; ingest source closed");
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_from_topic_without_allocating() {
        assert_eq!(device_of_topic("sensors/d1/temperature"), Some("d1"));
        assert_eq!(device_of_topic("sensors/d1/status"), Some("d1"));
        assert_eq!(device_of_topic("sensors/temperature"), None);
        assert_eq!(device_of_topic("sensors//temperature"), None);
        assert_eq!(device_of_topic("sensors/d1/a/b"), None);
        assert_eq!(device_of_topic("other/d1/temperature"), None);
    }

    #[test]
    fn device_from_a_shared_channel_payload() {
        assert_eq!(
            device_of_payload(br#" {"deviceId":"d8","value":"abc"}"#).as_deref(),
            Some("d8")
        );
        assert_eq!(device_of_payload(br#"{"deviceId":"bad id"}"#), None);
        assert_eq!(device_of_payload(br#"{"value":1}"#), None);
        assert_eq!(device_of_payload(b"21.5"), None);
        assert_eq!(device_of_payload(b"{not json"), None);
    }
}
