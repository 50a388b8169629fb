//! Device presence as the hub shows it: `online`, `stale` or `offline`, and what that is
//! derived from.
//!
//! Two kinds of evidence:
//! * **the status topic**: `sensors/{deviceId}/status`, retained `online` / `offline` (the
//!   last will), recorded durably by the writer;
//! * **readings**: when the device was last heard from (the receive time of its latest
//!   reading over all its series, from the store's catalogue).
//!
//! # The rule
//! * An explicit `offline` wins: the device (or the broker, with its last will) said so.
//! * Otherwise a device that has reported readings is `online` while it keeps reporting, and
//!   `stale` once nothing was heard from it for its *threshold*: `bridge.presence_stale_intervals`
//!   (default 3) times its observed reporting interval, and at least
//!   `bridge.presence_stale_after_min_s` (default 60 s). For a device that also published
//!   `online`, "heard from" counts that status too, so a reconnecting device is online at once;
//!   but an explicit `online` does not keep a device green whose readings stopped (a firmware
//!   whose MQTT stack still answers pings while its sensor loop hangs): it turns `stale` as well.
//! * A device that only ever published `online` (no readings) stays `online`.
//! * Silence alone never makes a device `offline`: the hub cannot tell a dead device from a
//!   quiet one, so it says `stale` and leaves `offline` to the device's own status.
//!
//! `statusSource` says which evidence the shown status comes from: `status` (the status topic)
//! or `readings` (no status topic, or readings that stopped despite an explicit `online`).
//!
//! Live `status` events go out for every change of the shown status or its source, except a
//! device's first sighting through its readings (its reading says it is there; at start-up
//! every device is first seen): so a readings-only device sends `stale` when it goes quiet and
//! `online` when it is back.
//!
//! # Observed interval
//! A moving average (weight 1/4) of the gaps between the times a device was last heard from,
//! as seen by successive sweeps. A gap shorter than the sweep period is not counted (several
//! metrics of one report, or a device faster than the sweep: the minimum threshold covers it),
//! and a gap counts at most as the longer of the current threshold and `presence_stale_intervals`
//! x the minimum, so one long outage does not teach the hub to wait hours the next time.
//! Until a first gap is seen the threshold is the minimum.
//!
//! # Cost
//! Nothing on the reading path: the writer already keeps each series' latest receive time.
//! A sweep task ([`run`]) runs every [`PresenceConfig::sweep_period`] (a tenth of the minimum
//! threshold, between 100 ms and 5 s): it copies one (device, receive time) pair per series
//! under the store's lock (a reference-count increment each, into a reused buffer), then,
//! outside that lock, updates one entry per device and sends a [`StatusChange`] for each
//! device whose status changed. `GET /v1/devices` runs the same sweep before it answers, so
//! the API and the live events agree. Memory: one small entry per device ever seen since start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use edgewatch_protocol::timefmt::now_ms;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::store::{DeviceInfo, PresenceUpdate, SeriesActivity, Store, StoreError};

/// Presence settings, from `[bridge]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceConfig {
    /// The least silence after which a device that reports readings is shown stale.
    pub stale_after_min: Duration,
    /// How many observed reporting intervals of silence make a device stale.
    pub stale_intervals: u32,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            stale_after_min: Duration::from_secs(60),
            stale_intervals: 3,
        }
    }
}

impl PresenceConfig {
    fn min_ms(&self) -> i64 {
        i64::try_from(self.stale_after_min.as_millis())
            .unwrap_or(i64::MAX)
            .max(1)
    }

    /// How often the sweep looks for devices that went silent: a tenth of the minimum
    /// threshold, between 100 ms and 5 s. A device is shown stale at most this late.
    pub fn sweep_period(&self) -> Duration {
        Duration::from_millis((self.min_ms() / 10).clamp(100, 5000) as u64)
    }

    /// The silence after which a device with this observed interval is stale, in ms.
    pub fn threshold_ms(&self, interval_ms: Option<i64>) -> i64 {
        let min = self.min_ms();
        interval_ms.map_or(min, |i| {
            i.saturating_mul(i64::from(self.stale_intervals.max(1)))
                .max(min)
        })
    }
}

pub mod history;

/// A device's status as the hub shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// Reporting (or said `online` and has not gone silent).
    Online,
    /// Nothing heard from it for its threshold.
    Stale,
    /// Its last status (or last will) is `offline`.
    Offline,
    /// Neither a status nor a reading time is known.
    Unknown,
}

impl DeviceStatus {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Online => "online",
            DeviceStatus::Stale => "stale",
            DeviceStatus::Offline => "offline",
            DeviceStatus::Unknown => "unknown",
        }
    }
}

/// What a shown status is derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatusSource {
    /// The device's `sensors/{deviceId}/status` topic (or its last will).
    Status,
    /// When its readings arrived.
    Readings,
    /// Nothing (status `unknown`).
    None,
}

impl StatusSource {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusSource::Status => "status",
            StatusSource::Readings => "readings",
            StatusSource::None => "none",
        }
    }
}

/// A device's shown status changed (sent live as a `status` event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// The device.
    pub device_id: String,
    /// Its status now.
    pub status: DeviceStatus,
    /// What it is derived from.
    pub source: StatusSource,
    /// When the change happened, epoch ms: the status's receive time, the receive time of the
    /// reading that brought it back, or the moment the silence crossed the threshold.
    pub at_ms: i64,
    /// Receive time of its latest reading as of the last sweep, epoch ms, if any.
    pub last_seen_ms: Option<i64>,
}

/// A device's presence for `GET /v1/devices`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevicePresence {
    /// The shown status.
    pub status: DeviceStatus,
    /// What it is derived from.
    pub source: StatusSource,
    /// Since when it has been shown, epoch ms.
    pub since_ms: Option<i64>,
    /// The observed reporting interval, ms.
    pub interval_ms: Option<i64>,
    /// The silence after which it is shown stale, ms.
    pub stale_after_ms: i64,
}

/// What the hub knows about one device.
#[derive(Debug, Clone)]
struct Clock {
    /// Receive time of its latest reading, as of the last sweep.
    last_recv: Option<i64>,
    /// The latest receive time found by the sweep in progress.
    seen: Option<i64>,
    /// Observed reporting interval, ms.
    interval: Option<i64>,
    /// Last explicit status and when it was received.
    explicit: Option<(bool, i64)>,
    /// What is shown, and since when.
    shown: (DeviceStatus, StatusSource),
    since: Option<i64>,
}

impl Clock {
    fn new() -> Self {
        Clock {
            last_recv: None,
            seen: None,
            interval: None,
            explicit: None,
            shown: (DeviceStatus::Unknown, StatusSource::None),
            since: None,
        }
    }

    /// Takes in a new latest receive time.
    fn heard(&mut self, recv: i64, cfg: &PresenceConfig) {
        if let Some(prev) = self.last_recv {
            let gap = recv.saturating_sub(prev);
            if gap <= 0 {
                return;
            }
            let floor = i64::try_from(cfg.sweep_period().as_millis()).unwrap_or(i64::MAX);
            if gap >= floor {
                let cap = cfg.threshold_ms(self.interval).max(
                    cfg.min_ms()
                        .saturating_mul(i64::from(cfg.stale_intervals.max(1))),
                );
                let gap = gap.min(cap);
                self.interval = Some(match self.interval {
                    None => gap,
                    Some(est) => est + (gap - est) / 4,
                });
            }
        }
        self.last_recv = Some(recv);
    }

    /// Takes in an explicit status received at `at`, unless a newer one is already known.
    fn said(&mut self, online: bool, at: i64) {
        self.explicit = match self.explicit {
            Some((was, when)) if was == online => Some((online, when.max(at))),
            Some((_, when)) if when > at => self.explicit,
            _ => Some((online, at)),
        };
    }

    /// The status this device should show at `now`, with the moment it began.
    fn evaluate(&self, cfg: &PresenceConfig, now: i64) -> (DeviceStatus, StatusSource, i64) {
        if let Some((false, at)) = self.explicit {
            return (DeviceStatus::Offline, StatusSource::Status, at);
        }
        let online_at = self.explicit.map(|(_, at)| at);
        match self.last_recv {
            Some(recv) => {
                let last = online_at.map_or(recv, |at| at.max(recv));
                let threshold = cfg.threshold_ms(self.interval);
                if now.saturating_sub(last) >= threshold {
                    (
                        DeviceStatus::Stale,
                        StatusSource::Readings,
                        last.saturating_add(threshold),
                    )
                } else if online_at.is_some() {
                    (DeviceStatus::Online, StatusSource::Status, last)
                } else {
                    (DeviceStatus::Online, StatusSource::Readings, last)
                }
            }
            None => match online_at {
                Some(at) => (DeviceStatus::Online, StatusSource::Status, at),
                None => (DeviceStatus::Unknown, StatusSource::None, now),
            },
        }
    }

    /// Re-evaluates; returns the change if the shown status or its source changed, except
    /// when a device is first seen through its readings: its first reading already says it is
    /// there (and at start-up every known device is seen for the first time), so readings
    /// streams carry `status` events only for explicit statuses and for going stale and back.
    fn update(&mut self, id: &str, cfg: &PresenceConfig, now: i64) -> Option<StatusChange> {
        let (status, source, at) = self.evaluate(cfg, now);
        if (status, source) == self.shown {
            return None;
        }
        let first_seen = self.shown.0 == DeviceStatus::Unknown && source == StatusSource::Readings;
        if status != self.shown.0 || self.since.is_none() {
            self.since = Some(at);
        }
        self.shown = (status, source);
        if first_seen {
            return None;
        }
        Some(StatusChange {
            device_id: id.to_owned(),
            status,
            source,
            at_ms: at,
            last_seen_ms: self.last_recv,
        })
    }

    fn presence(&self, cfg: &PresenceConfig) -> DevicePresence {
        DevicePresence {
            status: self.shown.0,
            source: self.shown.1,
            since_ms: self.since,
            interval_ms: self.interval,
            stale_after_ms: cfg.threshold_ms(self.interval),
        }
    }
}

/// Every device's clock, and the sweep's reused buffer.
#[derive(Debug)]
struct Board {
    cfg: PresenceConfig,
    devices: HashMap<Box<str>, Clock>,
    scratch: Vec<SeriesActivity>,
}

impl Board {
    /// Runs `f` on the clock of `id`, made first if the device is new (the only allocation).
    fn with_clock<R>(&mut self, id: &str, f: impl FnOnce(&mut Clock) -> R) -> R {
        if let Some(c) = self.devices.get_mut(id) {
            return f(c);
        }
        let mut c = Clock::new();
        let r = f(&mut c);
        self.devices.insert(id.into(), c);
        r
    }

    /// One sweep over `activity` (device, latest receive time per series): new receive times
    /// are taken in, then every device is re-evaluated at `now`.
    fn sweep<'a>(
        &mut self,
        activity: impl Iterator<Item = (&'a str, i64)>,
        now: i64,
        out: &mut Vec<StatusChange>,
    ) {
        for (id, recv) in activity {
            self.with_clock(id, |c| c.seen = Some(c.seen.map_or(recv, |s| s.max(recv))));
        }
        let cfg = self.cfg;
        for (id, c) in &mut self.devices {
            if let Some(seen) = c.seen.take() {
                let newer = match c.last_recv {
                    Some(last) => seen > last,
                    None => true,
                };
                if newer {
                    c.heard(seen, &cfg);
                }
            }
            out.extend(c.update(id, &cfg, now));
        }
    }

    fn said(&mut self, id: &str, online: bool, at: i64, now: i64) -> Option<StatusChange> {
        let cfg = self.cfg;
        self.with_clock(id, |c| {
            c.said(online, at);
            c.update(id, &cfg, now)
        })
    }
}

/// The presence board shared by the sweep task, the live fan-out and `GET /v1/devices`.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Presence {
    board: Arc<Mutex<Board>>,
    changes: broadcast::Sender<StatusChange>,
    /// Each device's recent changes ([`history`]).
    history: Arc<history::StatusHistory>,
}

impl Presence {
    /// An empty board; changes go to a broadcast of `capacity` (a receiver further behind is
    /// told how many it missed).
    pub fn new(cfg: PresenceConfig, capacity: usize) -> Self {
        let (changes, _) = broadcast::channel(capacity.max(1));
        Presence {
            board: Arc::new(Mutex::new(Board {
                cfg,
                devices: HashMap::new(),
                scratch: Vec::new(),
            })),
            changes,
            history: Arc::default(),
        }
    }

    /// `device`'s recent status changes, newest first (see [`history`]).
    pub fn history(&self, device: &str) -> Vec<StatusChange> {
        self.history.of(device)
    }

    /// The settings.
    pub fn config(&self) -> PresenceConfig {
        self.board().cfg
    }

    /// A receiver of status changes (live `status` events).
    pub fn subscribe(&self) -> broadcast::Receiver<StatusChange> {
        self.changes.subscribe()
    }

    fn board(&self) -> MutexGuard<'_, Board> {
        // A panic elsewhere while holding the lock leaves plain data behind: keep using it.
        self.board.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, changes: Vec<StatusChange>) {
        for c in changes {
            self.history.record(&c);
            // No receiver (no live routes): nothing to tell.
            let _ = self.changes.send(c);
        }
    }

    /// Takes in an explicit status from `sensors/{deviceId}/status`.
    pub fn status(&self, update: &PresenceUpdate) {
        let change = self
            .board()
            .said(&update.device_id, update.online, update.at_ms, now_ms());
        self.send(change.into_iter().collect());
    }

    /// Takes in the explicit statuses recorded in the store (at start, after missed updates,
    /// and before answering `GET /v1/devices`); a status the board already has newer is kept.
    pub fn sync_statuses(&self, devices: &[DeviceInfo]) {
        let now = now_ms();
        let mut changes = Vec::new();
        let mut board = self.board();
        for d in devices {
            if let (Some(online), Some(since)) = (d.online, d.since_ms) {
                changes.extend(board.said(&d.device_id, online, since, now));
            }
        }
        drop(board);
        self.send(changes);
    }

    /// One sweep: reads every series' latest receive time from `store`, re-evaluates every
    /// device and sends the changes.
    pub fn sweep(&self, store: &Store) -> Result<(), StoreError> {
        let mut changes = Vec::new();
        {
            let mut board = self.board();
            let mut scratch = std::mem::take(&mut board.scratch);
            let res = store.device_activity(&mut scratch);
            if res.is_ok() {
                let activity = scratch.iter().map(|a| (a.device_id(), a.last_recv_ms));
                board.sweep(activity, now_ms(), &mut changes);
            }
            // Keep the capacity, not the references to the names.
            scratch.clear();
            board.scratch = scratch;
            res?;
        }
        self.send(changes);
        Ok(())
    }

    /// Reads the explicit statuses from the store, then sweeps.
    pub fn reload(&self, store: &Store) -> Result<(), StoreError> {
        self.sync_statuses(&store.devices()?);
        self.sweep(store)
    }

    /// The presence of `devices` (as listed by the store) after a fresh sweep, in order.
    pub fn describe(
        &self,
        store: &Store,
        devices: &[DeviceInfo],
    ) -> Result<Vec<DevicePresence>, StoreError> {
        self.sync_statuses(devices);
        self.sweep(store)?;
        let board = self.board();
        let cfg = board.cfg;
        Ok(devices
            .iter()
            .map(|d| match board.devices.get(d.device_id.as_str()) {
                Some(c) => c.presence(&cfg),
                None => Clock::new().presence(&cfg),
            })
            .collect())
    }
}

/// Keeps `presence` current until `stop`: takes in explicit statuses from the writer as they
/// are recorded, and sweeps every [`PresenceConfig::sweep_period`].
pub async fn run(
    presence: Presence,
    store: Store,
    mut statuses: broadcast::Receiver<PresenceUpdate>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(presence.config().sweep_period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first sweep reads the recorded statuses too.
    let mut reload = true;
    let mut statuses_open = true;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            u = statuses.recv(), if statuses_open => match u {
                Ok(update) => presence.status(&update),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "presence missed status changes; re-reading them");
                    reload = true;
                }
                Err(broadcast::error::RecvError::Closed) => statuses_open = false,
            },
            _ = tick.tick() => {
                let full = std::mem::take(&mut reload);
                let (p, s) = (presence.clone(), store.clone());
                let res = tokio::task::spawn_blocking(move || {
                    if full { p.reload(&s) } else { p.sweep(&s) }
                })
                .await;
                match res {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        tracing::warn!(%err, "presence sweep failed");
                        reload |= full;
                    }
                    Err(err) => {
                        tracing::warn!(%err, "presence sweep task failed");
                        reload |= full;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(min_s: u64) -> PresenceConfig {
        PresenceConfig {
            stale_after_min: Duration::from_secs(min_s),
            stale_intervals: 3,
        }
    }

    fn board(min_s: u64) -> Board {
        Board {
            cfg: cfg(min_s),
            devices: HashMap::new(),
            scratch: Vec::new(),
        }
    }

    fn sweep(b: &mut Board, activity: &[(&str, i64)], now: i64) -> Vec<StatusChange> {
        let mut out = Vec::new();
        b.sweep(activity.iter().copied(), now, &mut out);
        out
    }

    fn shown(b: &Board, id: &str) -> (DeviceStatus, StatusSource) {
        b.devices[id].shown
    }

    #[test]
    fn sweep_period_and_threshold_follow_the_minimum() {
        assert_eq!(cfg(60).sweep_period(), Duration::from_secs(5));
        assert_eq!(cfg(1).sweep_period(), Duration::from_millis(100));
        assert_eq!(cfg(30).sweep_period(), Duration::from_secs(3));
        assert_eq!(cfg(60).threshold_ms(None), 60_000);
        assert_eq!(cfg(60).threshold_ms(Some(10_000)), 60_000);
        assert_eq!(cfg(60).threshold_ms(Some(300_000)), 900_000);
        assert_eq!(cfg(60).threshold_ms(Some(i64::MAX)), i64::MAX);
    }

    #[test]
    fn a_reporting_device_is_online_then_stale_then_online_again() {
        let mut b = board(60);
        let t0 = 1_000_000;
        // First seen: online, with no event (its reading says it is there).
        assert!(sweep(&mut b, &[("d1", t0)], t0 + 10).is_empty());
        assert_eq!(
            shown(&b, "d1"),
            (DeviceStatus::Online, StatusSource::Readings)
        );
        assert_eq!(b.devices["d1"].since, Some(t0));
        // Silent, but not for the minimum yet.
        assert!(sweep(&mut b, &[("d1", t0)], t0 + 59_999).is_empty());
        let c = sweep(&mut b, &[("d1", t0)], t0 + 60_000);
        assert_eq!(
            (c[0].status, c[0].at_ms, c[0].last_seen_ms),
            (DeviceStatus::Stale, t0 + 60_000, Some(t0))
        );
        assert!(
            sweep(&mut b, &[("d1", t0)], t0 + 90_000).is_empty(),
            "told once"
        );
        let t1 = t0 + 100_000;
        let c = sweep(&mut b, &[("d1", t1)], t1 + 5);
        assert_eq!((c[0].status, c[0].at_ms), (DeviceStatus::Online, t1));
        assert_eq!(b.devices["d1"].since, Some(t1));
    }

    #[test]
    fn the_threshold_follows_the_observed_interval() {
        let mut b = board(60);
        let mut t = 0;
        for _ in 0..30 {
            t += 300_000; // every 5 minutes
            sweep(&mut b, &[("slow", t), ("slow", t - 200)], t + 1);
            assert_eq!(shown(&b, "slow").0, DeviceStatus::Online, "at {t}");
        }
        let interval = b.devices["slow"].interval.unwrap();
        assert!((290_000..=300_000).contains(&interval), "{interval}");
        // Silent for 10 minutes: still within 3 intervals.
        assert!(sweep(&mut b, &[("slow", t)], t + 600_000).is_empty());
        let c = sweep(&mut b, &[("slow", t)], t + 3 * interval);
        assert_eq!(c[0].status, DeviceStatus::Stale);
    }

    #[test]
    fn one_long_outage_raises_the_interval_only_so_far() {
        let mut b = board(60);
        let mut t = 0;
        for _ in 0..20 {
            t += 10_000;
            sweep(&mut b, &[("d", t)], t);
        }
        t += 86_400_000; // a day away
        sweep(&mut b, &[("d", t)], t);
        let after = b.devices["d"].interval.unwrap();
        assert!(after <= 10_000 + (180_000 - 10_000) / 4 + 1, "{after}");
        // A first gap is a whole outage too: counted at most as 3 x the minimum.
        let mut b = board(60);
        sweep(&mut b, &[("e", 0)], 0);
        sweep(&mut b, &[("e", 86_400_000)], 86_400_000);
        assert_eq!(b.devices["e"].interval, Some(180_000));
    }

    #[test]
    fn several_metrics_of_one_report_are_one_report() {
        let mut b = board(60);
        let mut t = 0;
        for _ in 0..10 {
            t += 120_000;
            sweep(&mut b, &[("m", t)], t);
            sweep(&mut b, &[("m", t + 300)], t + 400); // the second metric, 300 ms later
        }
        let interval = b.devices["m"].interval.unwrap();
        assert!(interval > 100_000, "{interval}");
    }

    #[test]
    fn explicit_offline_wins_and_explicit_online_counts_as_heard_from() {
        let mut b = board(60);
        let t0 = 1_000_000;
        sweep(&mut b, &[("d", t0)], t0);
        let c = b.said("d", false, t0 + 10, t0 + 10).unwrap();
        assert_eq!(
            (c.status, c.source),
            (DeviceStatus::Offline, StatusSource::Status)
        );
        // Readings do not override an explicit offline.
        assert!(sweep(&mut b, &[("d", t0 + 20)], t0 + 20).is_empty());
        let c = b.said("d", true, t0 + 30, t0 + 30).unwrap();
        assert_eq!(
            (c.status, c.source),
            (DeviceStatus::Online, StatusSource::Status)
        );
        // Its readings stop: stale despite the explicit online.
        let c = sweep(&mut b, &[("d", t0 + 20)], t0 + 30 + 60_000);
        assert_eq!(
            (c[0].status, c[0].source, c[0].at_ms),
            (
                DeviceStatus::Stale,
                StatusSource::Readings,
                t0 + 30 + 60_000
            )
        );
        // It reconnects and says online again: online at once.
        let c = b.said("d", true, t0 + 70_000, t0 + 70_000).unwrap();
        assert_eq!(c.status, DeviceStatus::Online);
        // A device that only says online (no readings) never goes stale.
        b.said("s", true, t0, t0);
        assert!(sweep(&mut b, &[], t0 + 86_400_000)
            .iter()
            .all(|c| c.device_id != "s"));
        assert_eq!(shown(&b, "s"), (DeviceStatus::Online, StatusSource::Status));
    }

    #[test]
    fn an_older_recorded_status_does_not_undo_a_newer_one() {
        let mut b = board(60);
        b.said("d", false, 2_000, 2_000);
        // A store snapshot read before the offline was recorded.
        assert!(b.said("d", true, 1_000, 2_100).is_none());
        assert_eq!(shown(&b, "d").0, DeviceStatus::Offline);
    }

    #[test]
    fn a_clock_going_backwards_does_not_panic_or_flap() {
        let mut b = board(60);
        sweep(&mut b, &[("d", 5_000_000)], 5_000_000);
        assert!(sweep(&mut b, &[("d", 4_000_000)], 1_000).is_empty());
        assert_eq!(shown(&b, "d").0, DeviceStatus::Online);
        sweep(&mut b, &[("d", i64::MIN), ("d", i64::MAX)], i64::MIN);
        sweep(&mut b, &[("d", i64::MAX)], i64::MAX);
    }
}
