//! The store's vocabulary: what it returns and what queries and retention take.

use super::chunks::*;
use super::query::to_reading;
use super::*;

/// A reading with the seq the log assigned to it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReading {
    /// Global, strictly increasing sequence number.
    pub seq: u64,
    /// The reading.
    pub reading: Reading,
}

/// What the store needs to know of where a reading came from to tell a resend from a new
/// reading (see [`Store::apply_from`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The event time is the device's own (from the payload), not the receive time.
    pub device_time: bool,
    /// The external broker delivery it came in, when it came from one.
    pub delivery: Option<DeliveryId>,
}

impl Origin {
    /// A reading with its device's own event time, not from an external broker.
    pub const DEVICE_TIME: Origin = Origin {
        device_time: true,
        delivery: None,
    };
}

/// A device presence change from `sensors/{deviceId}/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceUpdate {
    /// The device.
    pub device_id: String,
    /// `true` for `online`.
    pub online: bool,
    /// When the status was received, epoch ms.
    pub at_ms: i64,
}

/// One series in the catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesInfo {
    /// Device and metric.
    pub key: SeriesKey,
    /// The unit of the latest reading that had one.
    pub unit: Option<String>,
    /// Value of the latest stored reading (highest seq).
    pub last_value: f64,
    /// Event time of that reading, epoch ms.
    pub last_timestamp_ms: i64,
    /// Receive time of that reading, epoch ms.
    pub last_seen_ms: i64,
    /// Its seq.
    pub last_seq: u64,
    /// Readings of this series currently in the log.
    pub count: u64,
}

/// A device: presence (if it ever sent a status) and what it reported.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    /// Device id.
    pub device_id: String,
    /// Last status: `Some(true)` online, `Some(false)` offline, `None` never sent one.
    pub online: Option<bool>,
    /// When the presence last changed, epoch ms.
    pub since_ms: Option<i64>,
    /// Latest receive time over its series.
    pub last_seen_ms: Option<i64>,
    /// Metrics it reported, sorted.
    pub metrics: Vec<String>,
}

/// A history query over raw readings. Event times: `from_ms` inclusive, `to_ms` exclusive.
#[derive(Debug, Clone, Default)]
pub struct ReadingQuery {
    /// Topic filters; a reading matches if any matches its topic. Empty matches everything.
    pub filters: Vec<TopicFilter>,
    /// Earliest event time (inclusive).
    pub from_ms: Option<i64>,
    /// Latest event time (exclusive).
    pub to_ms: Option<i64>,
    /// Only readings with seq greater than this (the paging cursor; 0 = from the start).
    pub after: u64,
    /// Page size.
    pub limit: usize,
}

/// One page of readings in seq order, as the store holds them: each row with its series'
/// names, so an answer can be written without copying three strings per reading.
#[derive(Debug, Clone, Default)]
pub struct RowPage {
    pub(super) rows: Vec<(Arc<Names>, Row)>,
    /// Cursor for the next page when more rows match, else `None`.
    pub next_after: Option<u64>,
}

/// A stored reading borrowed from a [`RowPage`] (or from a [`StoredReading`]).
#[derive(Debug, Clone, Copy)]
pub struct ReadingView<'a> {
    /// Global sequence number.
    pub seq: u64,
    /// Device id.
    pub device_id: &'a str,
    /// Metric name.
    pub metric: &'a str,
    /// Unit, if the reading had one.
    pub unit: Option<&'a str>,
    /// The value.
    pub value: f64,
    /// Event time, epoch ms.
    pub timestamp_ms: i64,
    /// Receive time, epoch ms.
    pub received_at_ms: i64,
}

impl ReadingView<'_> {
    /// `sensors/{deviceId}/{metric}`.
    pub fn topic(&self) -> edgewatch_protocol::SeriesTopic<'_> {
        edgewatch_protocol::SeriesTopic::new(self.device_id, self.metric)
    }
}

impl<'a> From<&'a StoredReading> for ReadingView<'a> {
    fn from(r: &'a StoredReading) -> Self {
        ReadingView {
            seq: r.seq,
            device_id: &r.reading.device_id,
            metric: &r.reading.metric,
            unit: r.reading.unit.as_deref(),
            value: r.reading.value,
            timestamp_ms: r.reading.timestamp_ms,
            received_at_ms: r.reading.received_at_ms,
        }
    }
}

impl RowPage {
    /// Readings on this page.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the page is empty.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The readings, borrowed, in seq order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = ReadingView<'_>> {
        self.rows.iter().map(|(n, row)| ReadingView {
            seq: row.seq,
            device_id: &n.device_id,
            metric: &n.metric,
            unit: match row.unit.as_deref() {
                None => n.base_unit.as_deref(),
                Some(UnitOverride::Absent) => None,
                Some(UnitOverride::Named(u)) => Some(u),
            },
            value: row.value,
            timestamp_ms: row.ts,
            received_at_ms: row.recv,
        })
    }

    /// The readings, owned.
    pub fn into_page(self) -> ReadingPage {
        ReadingPage {
            readings: self
                .rows
                .into_iter()
                .map(|(n, row)| StoredReading {
                    seq: row.seq,
                    reading: to_reading(row, &n),
                })
                .collect(),
            next_after: self.next_after,
        }
    }
}

/// One page of readings in seq order.
#[derive(Debug, Clone, Default)]
pub struct ReadingPage {
    /// The readings.
    pub readings: Vec<StoredReading>,
    /// Cursor for the next page when more rows match, else `None`.
    pub next_after: Option<u64>,
}

/// A rollup query. Event times: `from_ms` inclusive, `to_ms` exclusive; buckets are aligned to
/// multiples of `step_ms` since the epoch.
#[derive(Debug, Clone)]
pub struct RollupQuery {
    /// Topic filters (empty = all series).
    pub filters: Vec<TopicFilter>,
    /// Range start.
    pub from_ms: i64,
    /// Range end.
    pub to_ms: i64,
    /// Bucket width, > 0.
    pub step_ms: i64,
}

/// The rolled-up points of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesRollup {
    /// Device and metric.
    pub key: SeriesKey,
    /// Unit of the series.
    pub unit: Option<String>,
    /// Non-empty buckets in time order: (bucket start ms, aggregate).
    pub points: Vec<(i64, Aggregate)>,
}

/// Where the data for a rollup query came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollupSource {
    /// Hourly rollups (plus raw readings at unaligned edges).
    Hour,
    /// Minute rollups (plus raw readings at unaligned edges).
    Minute,
    /// Raw readings.
    Raw,
}

impl RollupSource {
    /// The source used for a step.
    pub fn for_step(step_ms: i64) -> Self {
        if step_ms % HOUR_MS == 0 {
            RollupSource::Hour
        } else if step_ms % MINUTE_MS == 0 {
            RollupSource::Minute
        } else {
            RollupSource::Raw
        }
    }

    /// Label for responses and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RollupSource::Hour => "1h",
            RollupSource::Minute => "1m",
            RollupSource::Raw => "raw",
        }
    }

    pub(super) fn resolution(self) -> Option<Resolution> {
        match self {
            RollupSource::Hour => Some(Resolution::Hour),
            RollupSource::Minute => Some(Resolution::Minute),
            RollupSource::Raw => None,
        }
    }
}

/// Size and counters, for health and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes sled occupies on disk.
    pub size_on_disk: u64,
    /// Readings currently in the log.
    pub readings: u64,
    /// Highest seq ever assigned (0 = none yet).
    pub last_seq: u64,
    /// Series in the catalogue.
    pub series: u64,
    /// What committed batches wrote since the store was opened.
    pub written: WriteCounters,
}

/// What one retention step removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Log entries deleted.
    pub readings_deleted: u64,
    /// Of those, deleted for the disk budget (the others for their age).
    pub budget_deleted: u64,
    /// Rollup pages deleted.
    pub rollups_deleted: u64,
    /// Whether more old data is left (call again soon).
    pub more: bool,
}

/// Retention policy for [`Store::retain_step`].
#[derive(Debug, Clone, Copy)]
pub struct RetentionPolicy {
    /// Readings (by receive time) and rollup pages (by the end of the page's span) older than
    /// this are removed.
    pub max_age_ms: Option<i64>,
    /// Disk budget: while the store's live bytes are above [`LIVE_SHARE_PERCENT`] of this,
    /// the oldest readings are removed, except the newest that take up
    /// [`KEEP_SHARE_PERCENT`] of it (see [`Store::retain_step`] and [`BudgetStatus`]).
    pub disk_budget_bytes: Option<u64>,
    /// At most this many log entries are removed per step (whole blocks; at least one block).
    pub step: usize,
}
