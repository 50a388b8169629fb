//! `--verify`: a subscriber on the same broker that checks every reading of the fleet arrives
//! exactly once and measures publish-to-receive latency.
//!
//! Other shapes than `native` carry no event time with millisecond precision (or none at all),
//! so their publishes are counted, not identified: the subscriber (on the shape's topic filter,
//! e.g. `tele/+/SENSOR`) counts every publish of the fleet's devices, a duplicate counts as
//! received, and latency is not measured; the report says so (`exact: false`). It discards what
//! an earlier run's session queued (one clean connection first), since nothing in those
//! publishes tells them apart.
//!
//! It subscribes to `sensors/#` with QoS 1 and a persistent session (client id
//! `{id_prefix}-verify`), so a broker that keeps sessions across a restart queues readings for
//! it. Readings are recognised by device id (`{id_prefix}-N`), metric and timestamp; those
//! older than the run (a previous run's queued messages) are ignored. Bounds: at most
//! [`MAX_TRACKED`] distinct readings are remembered for duplicate detection (beyond that they
//! are counted as `untracked`); latency is kept in a millisecond histogram up to
//! [`HISTOGRAM_MS`] (slower ones count in the last bucket; the true maximum is kept).

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgewatch_protocol::payload::{decode_publish, Inbound};
use edgewatch_protocol::timefmt::now_ms;
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::connection::explain;
use crate::report::{Percentiles, VerifyReport};
use crate::shape::Shape;
use crate::SimError;

/// Distinct readings remembered for duplicate detection (about 50 bytes each).
pub(crate) const MAX_TRACKED: usize = 5_000_000;
/// Latency histogram range in milliseconds.
pub(crate) const HISTOGRAM_MS: usize = 60_000;
/// How long `start` waits for the subscription to be acknowledged.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `finish` waits for late readings: at most this in total...
const FINISH_TIMEOUT: Duration = Duration::from_secs(15);
/// ...and at most this after the last reading arrived.
const FINISH_QUIET: Duration = Duration::from_secs(2);

/// Progress visible to `finish` while the subscriber task runs.
#[derive(Debug, Default)]
struct Progress {
    received: AtomicU64,
    last_arrival_ms: AtomicI64,
}

/// What the subscriber task collected.
#[derive(Debug)]
struct Tally {
    shape: Shape,
    prefix: String,
    metrics: Vec<String>,
    timestamps: bool,
    since_ms: i64,
    seen: HashSet<(u32, u16, i64)>,
    duplicates: u64,
    untracked: u64,
    histogram: Vec<u64>,
    max_latency: i64,
}

impl Tally {
    fn record(&mut self, topic: &str, payload: &[u8], progress: &Progress) {
        let now = now_ms();
        if self.shape != Shape::Native {
            if self.shape.device_of(topic).is_some_and(|d| self.is_ours(d)) {
                progress.last_arrival_ms.store(now, Ordering::Relaxed);
                progress.received.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let Ok(Inbound::Reading(r)) = decode_publish(topic, payload, now) else {
            return;
        };
        let Some(device) = r
            .device_id
            .strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            return;
        };
        let Some(metric) = self.metrics.iter().position(|m| *m == r.metric) else {
            return;
        };
        progress.last_arrival_ms.store(now, Ordering::Relaxed);
        if !self.timestamps {
            progress.received.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if r.timestamp_ms < self.since_ms {
            return;
        }
        let key = (device, metric as u16, r.timestamp_ms);
        if self.seen.len() >= MAX_TRACKED && !self.seen.contains(&key) {
            self.untracked += 1;
        } else if !self.seen.insert(key) {
            self.duplicates += 1;
            return;
        }
        progress.received.fetch_add(1, Ordering::Relaxed);
        let latency = (now - r.timestamp_ms).max(0);
        self.max_latency = self.max_latency.max(latency);
        let bucket = usize::try_from(latency)
            .unwrap_or(HISTOGRAM_MS)
            .min(HISTOGRAM_MS);
        self.histogram[bucket] += 1;
    }

    /// Whether `device` is `{prefix}-N`, a device of this fleet.
    fn is_ours(&self, device: &str) -> bool {
        device
            .strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|n| n.parse::<u32>().is_ok())
    }

    fn percentiles(&self) -> Option<Percentiles> {
        let total: u64 = self.histogram.iter().sum();
        if !self.timestamps || total == 0 {
            return None;
        }
        let at = |q: f64| {
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (ms, n) in self.histogram.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return ms as i64;
                }
            }
            HISTOGRAM_MS as i64
        };
        Some(Percentiles {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: self.max_latency,
        })
    }
}

/// What the verifying subscriber needs: the broker, and how to recognise the fleet's readings.
#[derive(Debug, Clone)]
pub(crate) struct VerifyTarget {
    /// Broker host name or address.
    pub(crate) broker_host: String,
    /// Broker MQTT port.
    pub(crate) broker_port: u16,
    /// MQTT username.
    pub(crate) username: Option<String>,
    /// MQTT password.
    pub(crate) password: Option<String>,
    /// The fleet's device ids are `{id_prefix}-N`; the subscriber is `{id_prefix}-verify`.
    pub(crate) id_prefix: String,
    /// The metric names the devices report.
    pub(crate) metrics: Vec<String>,
    /// The devices' shape: which topics to subscribe to and how readings are recognised.
    pub(crate) shape: Shape,
    /// Whether readings carry the device's timestamp (every format but `number`); without it
    /// readings are only counted (no duplicates, no latency).
    pub(crate) timestamps: bool,
}

/// The running verifying subscriber.
#[derive(Debug)]
pub(crate) struct Verifier {
    /// Readings are identified (device, metric, timestamp): duplicates are seen.
    exact: bool,
    progress: Arc<Progress>,
    stop: CancellationToken,
    task: JoinHandle<Tally>,
}

impl Verifier {
    /// Connects and subscribes; returns once the broker acknowledged the subscription. A
    /// broker that refuses the connection is [`SimError::Connect`].
    pub(crate) async fn start(target: VerifyTarget) -> Result<Verifier, SimError> {
        let filter = target.shape.readings_filter();
        if target.shape != Shape::Native {
            let discard = discard_old_session(&target);
            match tokio::time::timeout(SUBSCRIBE_TIMEOUT, discard).await {
                Ok(result) => result?,
                Err(_) => return Err(no_answer(&target, "CONNACK")),
            }
        }
        let mut opts = options(&target);
        opts.set_clean_session(false);
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        let subscribed = subscribe(&client, &mut eventloop, filter, &target);
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribed).await {
            Ok(result) => result?,
            Err(_) => return Err(no_answer(&target, "SUBACK")),
        }
        let progress = Arc::new(Progress::default());
        let stop = CancellationToken::new();
        let exact = target.shape == Shape::Native && target.timestamps;
        let tally = Tally {
            shape: target.shape,
            prefix: target.id_prefix,
            metrics: target.metrics,
            timestamps: target.timestamps,
            since_ms: now_ms() - 1000,
            seen: HashSet::new(),
            duplicates: 0,
            untracked: 0,
            histogram: vec![0; HISTOGRAM_MS + 1],
            max_latency: 0,
        };
        let task = tokio::spawn(collect(
            Subscriber {
                client,
                eventloop,
                filter,
            },
            tally,
            progress.clone(),
            stop.clone(),
        ));
        Ok(Verifier {
            exact,
            progress,
            stop,
            task,
        })
    }

    /// Stops the subscriber without a report (the run failed).
    pub(crate) fn abandon(self) {
        self.stop.cancel();
    }

    /// Waits (bounded) until `expected` distinct readings arrived or arrivals stopped, then
    /// stops the subscriber and reports.
    pub(crate) async fn finish(self, expected: u64) -> VerifyReport {
        let deadline = tokio::time::Instant::now() + FINISH_TIMEOUT;
        let finish_started_ms = now_ms();
        loop {
            let received = self.progress.received.load(Ordering::Relaxed);
            let last = self.progress.last_arrival_ms.load(Ordering::Relaxed);
            let quiet_ms = now_ms() - last.max(finish_started_ms);
            if received >= expected
                || tokio::time::Instant::now() >= deadline
                || quiet_ms > FINISH_QUIET.as_millis() as i64
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A little longer, to see duplicates that trail the last expected reading.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.stop.cancel();
        let received = self.progress.received.load(Ordering::Relaxed);
        let Ok(tally) = self.task.await else {
            return VerifyReport {
                received,
                missing: expected.saturating_sub(received),
                exact: self.exact,
                ..VerifyReport::default()
            };
        };
        VerifyReport {
            received,
            duplicates: tally.duplicates,
            missing: expected.saturating_sub(received),
            latency_ms: tally.percentiles(),
            untracked: tally.untracked,
            exact: self.exact,
        }
    }
}

/// How long a connection of the verifying client that fails otherwise than by a refusal is
/// tried again.
const TRANSIENT_SETTLE: Duration = Duration::from_secs(3);

/// The verifying client's options: client id `{id_prefix}-verify`, the fleet's credentials.
fn options(target: &VerifyTarget) -> MqttOptions {
    let client_id = format!("{}-verify", target.id_prefix);
    let mut opts = MqttOptions::new(client_id, &target.broker_host, target.broker_port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(64 * 1024, 64 * 1024);
    if let Some(user) = &target.username {
        opts.set_credentials(user, target.password.as_deref().unwrap_or(""));
    }
    opts
}

/// A failed connection of the verifying client. A refusal is retried (after a short pause)
/// until it has gone on for its settle time, then it is the run's [`SimError::Connect`];
/// anything else is tried again for [`TRANSIENT_SETTLE`], then it is a [`SimError::Verify`];
/// both in words.
async fn retry_or_fail(
    error: &ConnectionError,
    target: &VerifyTarget,
    refused_since: &mut Option<Instant>,
) -> Result<(), SimError> {
    let failure = explain(error, &target.broker_host, target.broker_port);
    let since = *refused_since.get_or_insert_with(Instant::now);
    if !failure.permanent {
        // A connection closed at once (rumqttd can close a client id's new connection while
        // it still ends the one before: the old-session discard above, then the verifying
        // session) is tried again for a moment before it fails the run.
        if since.elapsed() >= TRANSIENT_SETTLE {
            return Err(SimError::Verify {
                reason: failure.reason,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        return Ok(());
    }
    if since.elapsed() >= failure.settle {
        return Err(SimError::Connect {
            reason: failure.reason,
        });
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

fn no_answer(target: &VerifyTarget, packet: &str) -> SimError {
    SimError::Verify {
        reason: format!(
            "no {packet} from {}:{} within {} s",
            target.broker_host,
            target.broker_port,
            SUBSCRIBE_TIMEOUT.as_secs()
        ),
    }
}

/// Connects once with a clean session and disconnects, which discards what the broker kept
/// for an earlier run's verifying session.
async fn discard_old_session(target: &VerifyTarget) -> Result<(), SimError> {
    let mut opts = options(target);
    opts.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 4);
    let mut refused_since = None;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(e) => retry_or_fail(&e, target, &mut refused_since).await?,
        }
    }
    let _ = client.try_disconnect();
    // Until the DISCONNECT is written (or the connection is gone anyway).
    while !matches!(
        eventloop.poll().await,
        Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)
    ) {}
    Ok(())
}

/// Polls until the broker acknowledged the subscription to `filter` (subscribing after each
/// CONNACK); the error in words.
async fn subscribe(
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    filter: &str,
    target: &VerifyTarget,
) -> Result<(), SimError> {
    let mut refused_since = None;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                client
                    .subscribe(filter, QoS::AtLeastOnce)
                    .await
                    .map_err(|e| SimError::Verify {
                        reason: format!("cannot subscribe to {filter}: {e}"),
                    })?;
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => return Ok(()),
            Ok(_) => {}
            Err(e) => retry_or_fail(&e, target, &mut refused_since).await?,
        }
    }
}

/// The verifying client's connection and what it subscribes to.
struct Subscriber {
    client: AsyncClient,
    eventloop: EventLoop,
    filter: &'static str,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

/// The subscriber task: records every publish in `tally` until `stop` is cancelled, then
/// disconnects and returns the tally. Reconnects (and re-subscribes when the session is gone)
/// after a connection error.
async fn collect(
    subscriber: Subscriber,
    mut tally: Tally,
    progress: Arc<Progress>,
    stop: CancellationToken,
) -> Tally {
    let Subscriber {
        client,
        mut eventloop,
        filter,
    } = subscriber;
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                tally.record(&p.topic, &p.payload, &progress);
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) if !ack.session_present => {
                let _ = client.try_subscribe(filter, QoS::AtLeastOnce);
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%error, "verify subscriber disconnected");
                // Reconnect quickly: devices back off longer than this.
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
    let _ = client.try_disconnect();
    tally
}
