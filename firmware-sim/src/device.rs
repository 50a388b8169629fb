//! One simulated device: its MQTT connection, sampling schedule and offline buffer.
//!
//! Each device is one tokio task ([`run_device`]) that owns its rumqttc `EventLoop` and
//! `AsyncClient`. The task connects at its connect slot, waits until the fleet starts sending
//! (every device connected, or the connect timeout), then polls the event loop and, between
//! events, samples its signals when the next tick is due, until the run's deadline. A tick
//! makes one publish per metric (native shape) or what the device's [`Shape`] publishes.
//! Every publish goes through three bounded stages:
//!
//! 1. `buffer`: readings not yet handed to rumqttc, at most `buffer_capacity`. While offline
//!    every reading waits here; when it is full the **oldest** reading is dropped and counted in
//!    [`FleetStats::dropped`].
//! 2. `submitted`: handed to rumqttc's request channel (at most [`REQUEST_CHANNEL_CAPACITY`]),
//!    not yet written to the network.
//! 3. `inflight` (QoS 1): written, waiting for PUBACK (at most rumqttc's inflight limit).
//!
//! When the connection fails, stages 2 and 3 go back to the front of the buffer in their
//! original order, with their original timestamps, and rumqttc's own copy is discarded (the
//! session is clean, so the broker has no copy either). After reconnecting the buffer is sent
//! first. So with QoS 1 a reading is lost only if the buffer overflows or the run ends first;
//! a reading whose PUBACK was lost in the failure is sent twice.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use edgewatch_protocol::timefmt::now_ms;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::payload::{encode_reading, reading_topic};
use crate::report::FleetStats;
use crate::shape::{Message, Presence, Shape, ShapedDevice};
use crate::shared::FleetShared;
use crate::signal::Signal;

/// Requests a device hands to rumqttc before it has written them (rumqttc's request channel).
/// Small, so that readings wait in the device's own buffer, whose policy we control.
pub(crate) const REQUEST_CHANNEL_CAPACITY: usize = 64;

/// Readings a device sends in one wake-up when it is behind its schedule (then it skips ahead).
const MAX_CATCH_UP: u32 = 1000;

/// One publish waiting to be delivered.
#[derive(Debug, Clone)]
struct Pending {
    /// Order of production on this device.
    seq: u64,
    timestamp_ms: i64,
    body: Body,
}

/// What a pending publish carries.
#[derive(Debug, Clone)]
enum Body {
    /// A native reading, encoded when it is sent: index into the fleet's metric list, value.
    Reading { metric: usize, value: f64 },
    /// A shaped publish, encoded when it was sampled (like the firmware it imitates).
    Shaped(Box<Message>),
}

/// What was handed to rumqttc, in order.
#[derive(Debug, Clone)]
enum Outbound {
    Reading(Pending),
    Status,
}

/// The state of one device task.
#[derive(Debug)]
struct Device {
    shared: Arc<FleetShared>,
    id: String,
    signals: Vec<Signal>,
    /// Native reading topics, by metric (empty for other shapes).
    topics: Vec<String>,
    /// The shape's per-device state (`None` for the native shape).
    shaped: Option<ShapedDevice>,
    presence: Presence,
    rng: ChaCha8Rng,
    buffer: VecDeque<Pending>,
    submitted: VecDeque<Outbound>,
    inflight: HashMap<u16, Outbound>,
    next_seq: u64,
    last_timestamp_ms: i64,
    next_tick: Instant,
    online: bool,
    ever_connected: bool,
    /// True once the fleet started sending: the device samples from then on.
    started: bool,
    /// When sampling stops (`duration` after sending started).
    deadline: Option<Instant>,
    /// False once the run's end (duration, budget, shutdown) was reached for this device.
    sampling: bool,
    /// When a stopping device gives up delivering what it still holds.
    give_up_at: Instant,
    /// The final `offline` status and DISCONNECT were requested.
    finishing: bool,
    backoff_failures: u32,
}

/// Runs device number `index` until the run ends and its readings are delivered (or the drain
/// timeout passes). Never panics on broker errors: they are counted and retried.
pub(crate) async fn run_device(
    shared: Arc<FleetShared>,
    index: u32,
    start_at: Instant,
    shutdown: CancellationToken,
) {
    let cfg = &shared.config;
    let id = format!("{}-{index}", cfg.id_prefix);
    let signals = shared
        .specs
        .iter()
        .enumerate()
        .map(|(m, spec)| Signal::new(spec.clone(), cfg.faults, cfg.seed, index.into(), m as u64))
        .collect();
    let (topics, shaped) = match cfg.shape {
        Shape::Native => (
            cfg.metrics
                .iter()
                .map(|m| reading_topic(cfg.topic_shape, &id, m))
                .collect(),
            None,
        ),
        shape => (
            Vec::new(),
            Some(ShapedDevice::new(shape, &id, cfg.seed, index, now_ms())),
        ),
    };
    let presence = cfg.shape.presence(&id);
    let rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ (u64::from(index) << 20) ^ 0x5eed);
    let mut device = Device {
        id,
        signals,
        topics,
        shaped,
        presence,
        rng,
        buffer: VecDeque::new(),
        submitted: VecDeque::new(),
        inflight: HashMap::new(),
        next_seq: 0,
        last_timestamp_ms: 0,
        next_tick: start_at,
        online: false,
        ever_connected: false,
        started: false,
        deadline: None,
        sampling: true,
        give_up_at: start_at,
        finishing: false,
        backoff_failures: 0,
        shared,
    };
    // Stagger: wait for this device's connect slot. Sampling starts when the fleet starts
    // sending (`Device::begin`).
    tokio::select! {
        () = sleep_until(start_at) => {}
        () = shutdown.cancelled() => return,
    }
    device.run(&shutdown).await;
}

impl Device {
    fn stats(&self) -> &FleetStats {
        &self.shared.stats
    }

    fn qos(&self) -> QoS {
        if self.shared.config.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        }
    }

    fn options(&self) -> MqttOptions {
        let cfg = &self.shared.config;
        let mut opts = MqttOptions::new(&self.id, &cfg.broker_host, cfg.broker_port);
        opts.set_keep_alive(cfg.keep_alive)
            .set_clean_session(true)
            .set_last_will(LastWill::new(
                &self.presence.topic,
                self.presence.offline,
                QoS::AtLeastOnce,
                true,
            ));
        if let Some(user) = &cfg.username {
            opts.set_credentials(user, cfg.password.as_deref().unwrap_or(""));
        }
        opts
    }

    /// A random start within the first interval, so devices do not tick in lock-step.
    fn first_offset(&mut self) -> Duration {
        let interval = self.shared.interval;
        if interval.is_zero() {
            return Duration::ZERO;
        }
        interval.mul_f64(self.rng.gen_range(0.0..1.0))
    }

    async fn run(&mut self, shutdown: &CancellationToken) {
        let (client, mut eventloop) = AsyncClient::new(self.options(), REQUEST_CHANNEL_CAPACITY);
        loop {
            let polled = self.idle_until(&client, shutdown, eventloop.poll()).await;
            let Some(event) = polled else { break };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => self.on_connected(&client),
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => self.on_written(pkid),
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(Outbound::Reading(_)) = self.inflight.remove(&ack.pkid) {
                        FleetStats::add(&self.stats().acknowledged, 1);
                        self.shared.mark_sending();
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(error) => {
                    FleetStats::add(&self.stats().errors, 1);
                    self.shared.note_failure(&error);
                    tracing::debug!(device = %self.id, %error, "connection failed");
                    self.on_disconnected(&mut eventloop);
                    if self.finishing {
                        break;
                    }
                    let delay = self.next_backoff();
                    let wait = sleep_until(Instant::now() + delay);
                    if self.idle_until(&client, shutdown, wait).await.is_none() {
                        break;
                    }
                    continue;
                }
            }
            self.drain(&client);
            self.finish_if_done(&client);
        }
        if self.online {
            self.online = false;
            self.stats().connected.fetch_sub(1, Ordering::Relaxed);
        }
        let unsent = self.buffer.len()
            + self
                .submitted
                .iter()
                .chain(self.inflight.values())
                .filter(|o| matches!(o, Outbound::Reading(_)))
                .count();
        FleetStats::add(&self.stats().unsent, unsent as u64);
    }

    /// Waits for `fut` while sampling on schedule (once sending started) and stopping at the
    /// deadline. `None` when a stopping device's drain timeout passed first.
    async fn idle_until<F: std::future::Future>(
        &mut self,
        client: &AsyncClient,
        shutdown: &CancellationToken,
        fut: F,
    ) -> Option<F::Output> {
        tokio::pin!(fut);
        let go = self.shared.go();
        loop {
            let next_tick = self.next_tick;
            let give_up_at = self.give_up_at;
            let sending = self.sampling && self.started;
            let deadline = self.deadline;
            tokio::select! {
                out = &mut fut => return Some(out),
                () = go.cancelled(), if self.sampling && !self.started => self.begin(),
                () = sleep_until(next_tick), if sending => {
                    self.on_tick();
                    self.drain(client);
                    self.finish_if_done(client);
                }
                // Without this a device whose next tick is after the deadline (a long interval
                // at a low --rate) would run past it.
                () = sleep_until(deadline.unwrap_or(next_tick)), if sending && deadline.is_some() => {
                    self.stop();
                    self.finish_if_done(client);
                }
                () = shutdown.cancelled(), if self.sampling => {
                    self.stop();
                    self.finish_if_done(client);
                }
                () = sleep_until(give_up_at), if !self.sampling => return None,
            }
        }
    }

    /// Sending started: the first tick at a random point of the first interval, and the
    /// deadline `duration` after the start.
    fn begin(&mut self) {
        self.started = true;
        let start = self.shared.sending_start().unwrap_or_else(Instant::now);
        self.next_tick = start + self.first_offset();
        self.deadline = self.shared.config.duration.map(|d| start + d);
    }

    fn stop(&mut self) {
        if self.sampling {
            self.shared.mark_sending();
            self.sampling = false;
            self.give_up_at = Instant::now() + self.shared.config.drain_timeout;
        }
    }

    fn next_backoff(&mut self) -> Duration {
        let cfg = &self.shared.config;
        let exp = cfg
            .backoff_min
            .saturating_mul(1u32 << self.backoff_failures.min(16));
        self.backoff_failures = self.backoff_failures.saturating_add(1);
        let cap = exp.min(cfg.backoff_max);
        // Jitter: anywhere in the upper half, so a fleet that lost its broker spreads out.
        cap.mul_f64(self.rng.gen_range(0.5..=1.0))
    }

    /// Samples every metric for each tick that is due.
    fn on_tick(&mut self) {
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            self.stop();
            return;
        }
        let mut ticks = 0;
        while self.next_tick <= now && self.sampling {
            if ticks == MAX_CATCH_UP {
                // Too far behind: skip the missed ticks instead of bursting forever.
                self.next_tick = now;
                break;
            }
            ticks += 1;
            self.sample_all();
            let step = self.next_interval();
            self.next_tick += step;
        }
    }

    fn next_interval(&mut self) -> Duration {
        let interval = self.shared.interval;
        let jitter = self.shared.config.jitter;
        if jitter.is_zero() {
            return interval;
        }
        let j = self.rng.gen_range(-1.0..=1.0) * jitter.as_secs_f64();
        Duration::from_secs_f64((interval.as_secs_f64() + j).max(0.0))
    }

    fn sample_all(&mut self) {
        let timestamp_ms = now_ms().max(self.last_timestamp_ms + 1);
        self.last_timestamp_ms = timestamp_ms;
        if self.shaped.is_some() {
            self.sample_shaped(timestamp_ms);
            return;
        }
        for metric in 0..self.signals.len() {
            let Some(value) = self.signals[metric].sample(timestamp_ms) else {
                FleetStats::add(&self.stats().dropouts, 1);
                continue;
            };
            if !self.shared.claim_budget() {
                self.stop();
                return;
            }
            FleetStats::add(&self.stats().sampled, 1);
            self.push_new(timestamp_ms, Body::Reading { metric, value });
        }
    }

    /// One tick of a shaped device: every signal sampled, the shape's publishes buffered.
    fn sample_shaped(&mut self, timestamp_ms: i64) {
        let values: Vec<Option<f64>> = self
            .signals
            .iter_mut()
            .map(|s| s.sample(timestamp_ms))
            .collect();
        let Some(shaped) = self.shaped.as_mut() else {
            return;
        };
        let (messages, skipped) = shaped.tick(&values, timestamp_ms);
        FleetStats::add(&self.stats().dropouts, skipped);
        for message in messages {
            if !self.shared.claim_budget() {
                self.stop();
                return;
            }
            FleetStats::add(&self.stats().sampled, 1);
            self.push_new(timestamp_ms, Body::Shaped(Box::new(message)));
        }
    }

    fn push_new(&mut self, timestamp_ms: i64, body: Body) {
        let pending = Pending {
            seq: self.next_seq,
            timestamp_ms,
            body,
        };
        self.next_seq += 1;
        self.push_buffer_back(pending);
    }

    fn push_buffer_back(&mut self, pending: Pending) {
        if self.buffer.len() >= self.shared.config.buffer_capacity.max(1) {
            self.buffer.pop_front();
            FleetStats::add(&self.stats().dropped, 1);
        }
        self.buffer.push_back(pending);
    }

    fn on_connected(&mut self, client: &AsyncClient) {
        self.online = true;
        self.backoff_failures = 0;
        self.stats().connected.fetch_add(1, Ordering::Relaxed);
        self.shared.note_connected();
        if self.ever_connected {
            FleetStats::add(&self.stats().reconnects, 1);
        }
        self.ever_connected = true;
        if client
            .try_publish(
                &self.presence.topic,
                QoS::AtLeastOnce,
                true,
                self.presence.online,
            )
            .is_ok()
        {
            self.submitted.push_back(Outbound::Status);
        }
    }

    fn on_written(&mut self, pkid: u16) {
        let Some(outbound) = self.submitted.pop_front() else {
            return;
        };
        let is_reading = matches!(outbound, Outbound::Reading(_));
        if is_reading {
            FleetStats::add(&self.stats().sent, 1);
            if pkid == 0 {
                self.shared.mark_sending();
            }
        }
        // QoS 0 readings are done once written; QoS 1 packets wait for their PUBACK.
        if pkid != 0 {
            self.inflight.insert(pkid, outbound);
        }
    }

    /// Puts everything rumqttc held back into the buffer, in production order, and clears
    /// rumqttc's copies so nothing is sent twice by both.
    fn on_disconnected(&mut self, eventloop: &mut EventLoop) {
        if self.online {
            self.online = false;
            self.stats().connected.fetch_sub(1, Ordering::Relaxed);
        }
        eventloop.pending.clear();
        eventloop.state.events.clear();
        let mut back: Vec<Pending> = self
            .inflight
            .drain()
            .map(|(_, o)| o)
            .chain(self.submitted.drain(..))
            .filter_map(|o| match o {
                Outbound::Reading(p) => Some(p),
                Outbound::Status => None,
            })
            .collect();
        back.sort_unstable_by_key(|p| p.seq);
        let room = self
            .shared
            .config
            .buffer_capacity
            .max(1)
            .saturating_sub(self.buffer.len());
        if back.len() > room {
            // The buffer is full: the oldest readings go, as with any overflow.
            let excess = back.len() - room;
            FleetStats::add(&self.stats().dropped, excess as u64);
            back.drain(..excess);
        }
        for p in back.into_iter().rev() {
            self.buffer.push_front(p);
        }
    }

    /// Hands buffered publishes to rumqttc while its request channel has room.
    fn drain(&mut self, client: &AsyncClient) {
        if !self.online || self.finishing {
            return;
        }
        while self.submitted.len() < REQUEST_CHANNEL_CAPACITY {
            let Some(p) = self.buffer.pop_front() else {
                break;
            };
            let Some((topic, payload)) = self.encode(&p) else {
                // Never sent: counted with the dropped readings (and logged).
                FleetStats::add(&self.stats().dropped, 1);
                continue;
            };
            if client
                .try_publish(topic, self.qos(), false, payload)
                .is_err()
            {
                self.buffer.push_front(p);
                break;
            }
            self.submitted.push_back(Outbound::Reading(p));
        }
    }

    /// The topic and payload of a pending publish; `None` (logged) if it cannot be encoded.
    fn encode(&self, p: &Pending) -> Option<(String, Vec<u8>)> {
        let (metric, value) = match &p.body {
            Body::Shaped(m) => return Some((m.topic.clone(), m.payload.clone())),
            Body::Reading { metric, value } => (*metric, *value),
        };
        let (Some(signal), Some(topic)) = (self.signals.get(metric), self.topics.get(metric))
        else {
            tracing::error!(device = %self.id, metric, "reading dropped: no such metric");
            return None;
        };
        let spec = signal.spec();
        let cfg = &self.shared.config;
        match encode_reading(
            cfg.format,
            &self.id,
            &spec.name,
            value,
            spec.unit,
            p.timestamp_ms,
        ) {
            Ok(payload) => Some((topic.clone(), payload)),
            Err(error) => {
                tracing::error!(device = %self.id, %error, "reading dropped: cannot encode it");
                None
            }
        }
    }

    /// After the run ended and everything was delivered: publish `offline` and disconnect.
    fn finish_if_done(&mut self, client: &AsyncClient) {
        let delivered = self.buffer.is_empty()
            && self.submitted.is_empty()
            && !self
                .inflight
                .values()
                .any(|o| matches!(o, Outbound::Reading(_)));
        if self.sampling || self.finishing || !self.online || !delivered {
            return;
        }
        self.finishing = true;
        if client
            .try_publish(
                &self.presence.topic,
                QoS::AtLeastOnce,
                true,
                self.presence.offline,
            )
            .is_ok()
        {
            self.submitted.push_back(Outbound::Status);
        }
        let _ = client.try_disconnect();
    }
}
