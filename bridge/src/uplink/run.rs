//! One uplink's loop: connect, forward from the cursor, back off, again.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgewatch_protocol::timefmt::Rfc3339Days;
use edgewatch_protocol::TopicFilter;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::client::{self, Client, Connection, Happened};
use super::config::{PayloadFormat, UplinkConfig};
use super::format::Encoder;
use super::status::{Shared, UplinkState};
use super::tunnel::Tunnel;
use super::window::Window;
use crate::presence::{Presence, StatusChange};
use crate::store::{Store, StoredReading};
use crate::writer::CommittedBatch;

/// How long a connection may take to be accepted.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the cursor is saved while it moves (and the log looked at, should a wake-up
/// have been missed).
const SAVE_EVERY: Duration = Duration::from_millis(200);
/// Most readings one read of the log returns.
const READ_MAX: usize = 10_000;

/// What one uplink task works with.
pub(super) struct Context {
    pub(super) cfg: UplinkConfig,
    pub(super) shared: Arc<Shared>,
    pub(super) store: Store,
    /// Committed batches: only a signal that the log has grown.
    pub(super) wake: broadcast::Receiver<CommittedBatch>,
    pub(super) presence: Presence,
    /// The hub's data dir (where an `mqtts://` uplink's private socket goes).
    pub(super) data_dir: std::path::PathBuf,
    /// Messages from upstream into the local broker, if configured.
    pub(super) downlink: Option<super::downlink::Downlink>,
    /// Presence changes, when presence is forwarded.
    pub(super) presence_rx: Option<broadcast::Receiver<StatusChange>>,
    pub(super) stop: CancellationToken,
}

/// How a connection ended.
enum Ended {
    Stopped,
    Lost { error: String, connected: bool },
}

/// The uplink task.
pub(super) async fn run(mut ctx: Context) {
    let encoder = match Encoder::new(&ctx.cfg) {
        Ok(e) => e,
        Err(err) => {
            // `UplinkConfig::validate` refuses such a section before start.
            tracing::error!(uplink = %ctx.cfg.name, %err, "uplink not started");
            return;
        }
    };
    let tls = match tunnel_of(&ctx) {
        Ok(t) => t,
        Err(err) => {
            tracing::error!(uplink = %ctx.cfg.name, %err, "uplink not started");
            ctx.shared.set(UplinkState::Stopped, Some(err));
            return;
        }
    };
    let mut cursor = load_cursor(&ctx).await;
    let mut saved = cursor;
    let hold_ms = i64::from(ctx.cfg.hold_days) * 86_400_000;
    if let Err(err) = ctx.store.hold_for_uplink(&ctx.cfg.name, cursor, hold_ms) {
        tracing::warn!(uplink = %ctx.cfg.name, %err, "cannot hold unforwarded readings");
    }
    ctx.shared.cursor.store(cursor, Ordering::Relaxed);
    tracing::info!(uplink = %ctx.cfg.name, url = %ctx.cfg.url, cursor, "uplink starting");
    let mut attempt = 0u32;
    loop {
        ctx.shared.set(UplinkState::Connecting, None);
        let ended = session(&mut ctx, &encoder, tls.as_ref(), &mut cursor, &mut saved).await;
        save(&ctx, cursor, &mut saved).await;
        let (error, connected) = match ended {
            Ended::Stopped => break,
            Ended::Lost { error, connected } => (error, connected),
        };
        if connected {
            attempt = 0;
        }
        let delay = client::backoff(
            attempt,
            Duration::from_millis(ctx.cfg.backoff_min_ms),
            Duration::from_millis(ctx.cfg.backoff_max_ms),
            rand::random(),
        );
        attempt = attempt.saturating_add(1);
        tracing::warn!(uplink = %ctx.cfg.name, %error, retry_in = ?delay, "uplink disconnected");
        ctx.shared.set(UplinkState::BackingOff, Some(error));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = ctx.stop.cancelled() => break,
        }
    }
    save(&ctx, cursor, &mut saved).await;
    ctx.shared.set(UplinkState::Stopped, None);
}

/// The tunnel of an `mqtts://`, `ws://` or `wss://` uplink (TLS files read now).
fn tunnel_of(ctx: &Context) -> Result<Option<Tunnel>, String> {
    let up = super::tunnel::Upstream::parse(&ctx.cfg.url)?;
    Tunnel::new(&up, ctx.cfg.tls_files(), &ctx.cfg.name, &ctx.data_dir)
}

async fn load_cursor(ctx: &Context) -> u64 {
    let (store, name) = (ctx.store.clone(), ctx.cfg.name.clone());
    match tokio::task::spawn_blocking(move || store.uplink_cursor(&name)).await {
        Ok(Ok(c)) => c.unwrap_or(0),
        Ok(Err(err)) => {
            tracing::error!(uplink = %ctx.cfg.name, %err, "cannot read the uplink's cursor; starting from the oldest reading");
            0
        }
        Err(_) => 0,
    }
}

/// Saves the cursor if it moved since the last save.
async fn save(ctx: &Context, cursor: u64, saved: &mut u64) {
    ctx.shared.cursor.store(cursor, Ordering::Relaxed);
    if cursor == *saved {
        return;
    }
    let (store, name) = (ctx.store.clone(), ctx.cfg.name.clone());
    match tokio::task::spawn_blocking(move || store.save_uplink_cursor(&name, cursor)).await {
        Ok(Ok(())) => *saved = cursor,
        Ok(Err(err)) => {
            tracing::warn!(uplink = %ctx.cfg.name, %err, "cannot save the uplink's cursor")
        }
        Err(_) => {}
    }
}

/// One connection, from connecting until it ends.
async fn session(
    ctx: &mut Context,
    enc: &Encoder,
    tls: Option<&Tunnel>,
    cursor: &mut u64,
    saved: &mut u64,
) -> Ended {
    let window_max = usize::from(ctx.cfg.inflight);
    let (client, mut conn) = match open(ctx, tls, window_max).await {
        Ok(c) => c,
        Err(end) => return end,
    };
    if ctx.downlink.is_some() {
        if let Err(error) = client.subscribe(&ctx.cfg.downlink_filters()) {
            return Ended::Lost {
                error,
                connected: true,
            };
        }
    }
    ctx.shared.connects.fetch_add(1, Ordering::Relaxed);
    ctx.shared.set(UplinkState::Connected, None);
    tracing::info!(uplink = %ctx.cfg.name, cursor = *cursor, "uplink connected");
    let mut fwd = Forwarder {
        window: Window::new(*cursor),
        presence: VecDeque::new(),
        caught_up: false,
        filters: ctx.cfg.topic_filters(),
        times: Rfc3339Days::default(),
    };
    fwd.queue_all_presence(ctx, enc).await;
    let mut tick = tokio::time::interval(SAVE_EVERY);
    loop {
        if let Err(error) = fwd.fill(ctx, enc, &client, window_max).await {
            return Ended::Lost {
                error,
                connected: true,
            };
        }
        tokio::select! {
            () = ctx.stop.cancelled() => {
                client.disconnect();
                // Let the DISCONNECT go out; acknowledgements meanwhile still count.
                let _ = tokio::time::timeout(Duration::from_millis(200), async {
                    while let Ok(h) = conn.poll().await {
                        fwd.happened(ctx, h, cursor);
                    }
                }).await;
                return Ended::Stopped;
            }
            h = conn.poll() => match h {
                Ok(Happened::Message { topic, payload }) => {
                    if let Some(d) = ctx.downlink.as_mut() {
                        d.deliver(&ctx.shared, &topic, payload).await;
                    }
                }
                Ok(h) => fwd.happened(ctx, h, cursor),
                Err(error) => return Ended::Lost { error, connected: true },
            },
            r = ctx.wake.recv(), if fwd.caught_up => {
                if matches!(r, Err(broadcast::error::RecvError::Closed)) {
                    return Ended::Stopped;
                }
                fwd.caught_up = false;
            }
            c = presence_change(&mut ctx.presence_rx) => match c {
                Some(change) => fwd.queue_presence(enc, &change.device_id, change.status.as_str()),
                None => fwd.queue_all_presence(ctx, enc).await,
            },
            _ = tick.tick() => {
                save(ctx, *cursor, saved).await;
                fwd.caught_up = false;
            }
        }
    }
}

/// A connection the broker accepted (over TLS through the private socket for `mqtts://`).
async fn open(
    ctx: &Context,
    tls: Option<&Tunnel>,
    window_max: usize,
) -> Result<(Client, Connection), Ended> {
    let lost = |error| Ended::Lost {
        error,
        connected: false,
    };
    let socket = match tls {
        Some(t) => Some(t.open().await.map_err(lost)?),
        None => None,
    };
    let (client, mut conn) =
        client::connect(&ctx.cfg, window_max + 16, socket.as_deref()).map_err(lost)?;
    await_connack(ctx, &mut conn).await?;
    Ok((client, conn))
}

/// The next presence change: `None` when changes were missed (send them all again). Never
/// ready when presence is not forwarded.
async fn presence_change(
    rx: &mut Option<broadcast::Receiver<StatusChange>>,
) -> Option<StatusChange> {
    let Some(r) = rx.as_mut() else {
        return std::future::pending().await;
    };
    match r.recv().await {
        Ok(c) => Some(c),
        Err(broadcast::error::RecvError::Lagged(_)) => None,
        Err(broadcast::error::RecvError::Closed) => {
            *rx = None;
            std::future::pending().await
        }
    }
}

/// Waits for the broker to accept the connection.
async fn await_connack(ctx: &Context, conn: &mut Connection) -> Result<(), Ended> {
    let wait = async {
        loop {
            match conn.poll().await {
                Ok(Happened::Connected) => return Ok(()),
                Ok(_) => {}
                Err(error) => return Err(error),
            }
        }
    };
    tokio::select! {
        r = tokio::time::timeout(CONNECT_TIMEOUT, wait) => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(Ended::Lost { error, connected: false }),
            Err(_) => Err(Ended::Lost { error: format!("no CONNACK within {CONNECT_TIMEOUT:?}"), connected: false }),
        },
        () = ctx.stop.cancelled() => Err(Ended::Stopped),
    }
}

/// A connection's forwarding state.
struct Forwarder {
    window: Window,
    /// Presence messages waiting for room: topic and payload.
    presence: VecDeque<(String, &'static str)>,
    /// The last read of the log found nothing more: wait for a wake-up.
    caught_up: bool,
    filters: Vec<TopicFilter>,
    times: Rfc3339Days,
}

impl Forwarder {
    /// Takes in what the connection did.
    fn happened(&mut self, ctx: &Context, h: Happened, cursor: &mut u64) {
        match h {
            Happened::Written(p) => self.window.written(p),
            Happened::Acked { packet_id, refused } => {
                if let Some(reason) = refused {
                    ctx.shared.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(uplink = %ctx.cfg.name, packet_id, %reason, "the upstream broker refused a message for good; not sent again");
                }
                let adv = self.window.acked(packet_id);
                ctx.shared
                    .forwarded
                    .fetch_add(adv.readings, Ordering::Relaxed);
                if let Some(c) = adv.cursor {
                    *cursor = c;
                    ctx.shared.cursor.store(c, Ordering::Relaxed);
                }
            }
            Happened::Connected | Happened::Message { .. } | Happened::Other => {}
        }
    }

    /// Queues `device`'s presence, replacing a status of it still waiting: the queue holds
    /// at most one entry per device however long the window stays full.
    fn queue_presence(&mut self, enc: &Encoder, device: &str, status: &'static str) {
        if let Some(topic) = enc.presence_topic(device) {
            match self.presence.iter_mut().find(|(t, _)| *t == topic) {
                Some(waiting) => waiting.1 = status,
                None => self.presence.push_back((topic, status)),
            }
        }
    }

    /// Queues every device's presence (after connecting, or after missed changes).
    async fn queue_all_presence(&mut self, ctx: &Context, enc: &Encoder) {
        if enc.presence_topic("x").is_none() {
            return;
        }
        let (store, presence) = (ctx.store.clone(), ctx.presence.clone());
        let found = tokio::task::spawn_blocking(move || {
            let devices = store.devices()?;
            let states = presence.describe(&store, &devices)?;
            Ok::<_, crate::store::StoreError>(
                devices
                    .into_iter()
                    .zip(states)
                    .map(|(d, p)| (d.device_id, p.status.as_str()))
                    .collect::<Vec<_>>(),
            )
        })
        .await;
        match found {
            Ok(Ok(list)) => {
                self.presence.clear();
                for (device, status) in list {
                    self.queue_presence(enc, &device, status);
                }
            }
            Ok(Err(err)) => {
                tracing::warn!(uplink = %ctx.cfg.name, %err, "cannot read device presence")
            }
            Err(_) => {}
        }
    }

    /// Hands messages to the client while the window has room: presence first, then
    /// readings from the log.
    async fn fill(
        &mut self,
        ctx: &Context,
        enc: &Encoder,
        client: &Client,
        window_max: usize,
    ) -> Result<(), String> {
        while self.window.inflight() < window_max {
            if let Some((topic, status)) = self.presence.pop_front() {
                client.publish(topic, Bytes::from_static(status.as_bytes()), true, None)?;
                self.window.sent(None, 0);
                continue;
            }
            if self.caught_up {
                return Ok(());
            }
            let room = window_max - self.window.inflight();
            let per_message = match ctx.cfg.format {
                PayloadFormat::Json => 1,
                PayloadFormat::JsonArray => ctx.cfg.batch_max,
            };
            let want = room.saturating_mul(per_message).clamp(1, READ_MAX);
            let rows = read_log(ctx, self.window.read_to(), want).await?;
            if rows.len() < want {
                self.caught_up = true;
            }
            let Some(last) = rows.last().map(|r| r.seq) else {
                return Ok(());
            };
            self.send_rows(ctx, enc, client, rows, per_message)?;
            if self.window.read_to() < last {
                // The tail matched no filter.
                self.window.skipped(last);
            }
        }
        Ok(())
    }

    /// Publishes the rows that match the filters, `per_message` to a message.
    fn send_rows(
        &mut self,
        ctx: &Context,
        enc: &Encoder,
        client: &Client,
        rows: Vec<StoredReading>,
        per_message: usize,
    ) -> Result<(), String> {
        let matching: Vec<StoredReading> = rows
            .into_iter()
            .filter(|r| {
                let topic = r.reading.topic();
                self.filters.iter().any(|f| f.matches(&topic))
            })
            .collect();
        for chunk in matching.chunks(per_message) {
            let (first, last) = (chunk[0].seq, chunk[chunk.len() - 1].seq);
            let (topic, payload) = match ctx.cfg.format {
                PayloadFormat::Json => {
                    let mut out = Vec::with_capacity(200);
                    enc.push(&mut out, &chunk[0], &mut self.times)
                        .map_err(|e| e.to_string())?;
                    (enc.topic(&chunk[0]), out)
                }
                PayloadFormat::JsonArray => (
                    enc.batch_topic().to_owned(),
                    enc.array(chunk, &mut self.times)
                        .map_err(|e| e.to_string())?,
                ),
            };
            let max_sent = ctx.shared.max_sent.fetch_max(last, Ordering::Relaxed);
            let resent = chunk.iter().filter(|r| r.seq <= max_sent).count() as u64;
            ctx.shared.resent.fetch_add(resent, Ordering::Relaxed);
            client.publish(topic, Bytes::from(payload), false, Some((first, last)))?;
            self.window.sent(Some(last), chunk.len() as u64);
        }
        Ok(())
    }
}

/// Up to `limit` readings after `after`.
async fn read_log(ctx: &Context, after: u64, limit: usize) -> Result<Vec<StoredReading>, String> {
    let store = ctx.store.clone();
    match tokio::task::spawn_blocking(move || store.log_after(after, limit)).await {
        Ok(Ok(rows)) => Ok(rows),
        Ok(Err(err)) => Err(format!("reading the log: {err}")),
        Err(err) => Err(format!("reading the log: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_presence_keeps_one_entry_per_device_with_its_latest_status() {
        let enc = Encoder::new(&UplinkConfig {
            site: "s1".into(),
            ..UplinkConfig::default()
        })
        .unwrap();
        let mut fwd = Forwarder {
            window: Window::new(0),
            presence: VecDeque::new(),
            caught_up: false,
            filters: Vec::new(),
            times: Rfc3339Days::default(),
        };
        for i in 0..10_000 {
            let status = if i % 2 == 0 { "online" } else { "offline" };
            fwd.queue_presence(&enc, "d1", status);
            fwd.queue_presence(&enc, "d2", "stale");
        }
        let waiting: Vec<_> = fwd.presence.iter().cloned().collect();
        assert_eq!(
            waiting,
            vec![
                ("site/s1/status/d1".to_owned(), "offline"),
                ("site/s1/status/d2".to_owned(), "stale")
            ]
        );
    }
}
