//! The JSON answers of the HTTP API, as documented types (`utoipa` schemas). Large answers
//! are written by the crate's `json` module instead of through these types; tests hold both equal.

use edgewatch_protocol::timefmt::Rfc3339;
use serde::Serialize;
use utoipa::ToSchema;

use crate::presence::{DeviceStatus, StatusSource};
use crate::store::{RollupSource, SeriesRollup as StoredRollup, StoredReading};

/// RFC 3339, UTC, millisecond precision
#[derive(Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[schema(
    value_type = String,
    format = DateTime,
    examples("2026-11-28T10:00:00.000Z")
)]
pub struct Timestamp(pub i64);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(Rfc3339::new(self.0).as_str())
    }
}

/// One stored series (device and metric) with its latest reading.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Series {
    /// `sensors/{deviceId}/{metric}`.
    #[schema(examples("sensors/d1/temperature"))]
    pub topic: String,
    /// Device id.
    pub device_id: String,
    /// Metric name.
    pub metric: String,
    /// Unit of the latest reading that had one.
    #[schema(required = true)]
    pub unit: Option<String>,
    /// Value of the latest reading.
    pub last_value: f64,
    /// Event time of the latest reading.
    pub last_timestamp: Timestamp,
    /// Receive time of the latest reading.
    pub last_seen: Timestamp,
    /// Seq of the latest reading.
    pub last_seq: u64,
    /// Readings of this series in the log.
    pub count: u64,
}

/// `GET /v1/series`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeriesList {
    /// Every series, by device and metric.
    pub series: Vec<Series>,
}

/// A device with its status and metrics.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Device {
    /// Device id.
    pub device_id: String,
    /// `online`; `stale` when nothing was heard from it for `staleAfterMs` (it reports readings
    /// but they stopped); `offline` when its last status (or last will) is `offline`, which
    /// wins; `unknown` when neither a status nor a reading is known.
    #[schema(inline)]
    pub status: DeviceStatus,
    /// What `status` is derived from: `status` (its `sensors/{deviceId}/status` topic),
    /// `readings` (when its readings arrived: a device without a status topic, or one that said
    /// `online` and whose readings stopped), `none` with `unknown`.
    #[schema(inline)]
    pub status_source: StatusSource,
    /// The last status the device published on `sensors/{deviceId}/status`: true for `online`;
    /// null when the device never published a status
    #[schema(required = true)]
    pub online: Option<bool>,
    /// Since when `status` has been shown (for `stale`, when the silence crossed `staleAfterMs`).
    #[schema(required = true)]
    pub since: Option<Timestamp>,
    /// The observed reporting interval in ms: a moving average of the gaps between its
    /// readings as the presence sweep sees them, so a device that reports faster than the
    /// sweep period (5 s by default) shows about that period; null until one gap was seen.
    #[schema(required = true)]
    pub reporting_interval_ms: Option<i64>,
    /// The silence in ms after which it is shown `stale`: `bridge.presence_stale_intervals` x
    /// its reporting interval, at least `bridge.presence_stale_after_min_s`.
    pub stale_after_ms: i64,
    /// Latest receive time over its series.
    #[schema(required = true)]
    pub last_seen: Option<Timestamp>,
    /// Metrics it reported, sorted.
    pub metrics: Vec<String>,
}

/// `GET /v1/devices`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceList {
    /// Every known device.
    pub devices: Vec<Device>,
}

/// A stored reading. `timestamp` is the event time (from the payload, else receive time),
/// `receivedAt` the broker's receive time.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(
    as = Reading,
    example = json!({
        "seq": 42, "topic": "sensors/d1/temperature", "deviceId": "d1",
        "metric": "temperature", "value": 21.5, "unit": "C",
        "timestamp": "2026-11-28T10:00:00.000Z", "receivedAt": "2026-11-28T10:00:00.012Z"
    })
)]
pub struct ReadingItem {
    /// Position in the event log.
    pub seq: u64,
    /// `sensors/{deviceId}/{metric}`.
    pub topic: String,
    /// Device id.
    pub device_id: String,
    /// Metric name.
    pub metric: String,
    /// The value.
    pub value: f64,
    /// Unit, when the payload had one.
    #[schema(required = true)]
    pub unit: Option<String>,
    /// Event time.
    pub timestamp: Timestamp,
    /// Receive time.
    pub received_at: Timestamp,
}

impl From<&StoredReading> for ReadingItem {
    fn from(r: &StoredReading) -> Self {
        ReadingItem {
            seq: r.seq,
            topic: r.reading.topic(),
            device_id: r.reading.device_id.clone(),
            metric: r.reading.metric.clone(),
            value: r.reading.value,
            unit: r.reading.unit.clone(),
            timestamp: Timestamp(r.reading.timestamp_ms),
            received_at: Timestamp(r.reading.received_at_ms),
        }
    }
}

/// `GET /v1/readings` as JSON.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadingPage {
    /// Readings in seq order.
    pub readings: Vec<ReadingItem>,
    /// Pass as `after` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_after: Option<u64>,
}

/// `GET /v1/readings` as `application/x-ndjson`: one Reading JSON object per line.
#[derive(Debug, ToSchema)]
#[schema(value_type = String)]
pub struct NdjsonReadings(pub String);

/// `GET /v1/readings` as `text/csv`, header `seq,topic,deviceId,metric,value,unit,timestamp,receivedAt`.
#[derive(Debug, ToSchema)]
#[schema(value_type = String)]
pub struct CsvReadings(pub String);

/// One time bucket of a series.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollupPoint {
    /// Bucket start.
    pub t: Timestamp,
    /// Bucket start, epoch milliseconds.
    pub t_ms: i64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Mean value.
    pub avg: f64,
    /// Readings in the bucket.
    pub count: u64,
    /// Latest value by event time.
    pub last: f64,
}

/// The buckets of one series.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeriesRollup {
    /// `sensors/{deviceId}/{metric}`.
    pub topic: String,
    /// Device id.
    pub device_id: String,
    /// Metric name.
    pub metric: String,
    /// Unit of the series.
    #[schema(required = true)]
    pub unit: Option<String>,
    /// Non-empty buckets in time order.
    pub points: Vec<RollupPoint>,
}

impl From<&StoredRollup> for SeriesRollup {
    fn from(s: &StoredRollup) -> Self {
        SeriesRollup {
            topic: s.key.topic(),
            device_id: s.key.device_id.clone(),
            metric: s.key.metric.clone(),
            unit: s.unit.clone(),
            points: s
                .points
                .iter()
                .map(|(t, a)| RollupPoint {
                    t: Timestamp(*t),
                    t_ms: *t,
                    min: a.min,
                    max: a.max,
                    avg: a.avg(),
                    count: a.count,
                    last: a.last,
                })
                .collect(),
        }
    }
}

/// Which read model answered: raw log, 1-minute or 1-hour rollups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum Source {
    /// The raw event log.
    #[serde(rename = "raw")]
    Raw,
    /// 1-minute rollups.
    #[serde(rename = "1m")]
    Minute,
    /// 1-hour rollups.
    #[serde(rename = "1h")]
    Hour,
}

impl From<RollupSource> for Source {
    fn from(s: RollupSource) -> Self {
        match s {
            RollupSource::Raw => Source::Raw,
            RollupSource::Minute => Source::Minute,
            RollupSource::Hour => Source::Hour,
        }
    }
}

/// `GET /v1/rollups`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rollups {
    /// Range start (inclusive).
    pub from: Timestamp,
    /// Range end (exclusive).
    pub to: Timestamp,
    /// Bucket width, milliseconds.
    #[schema(minimum = 1)]
    pub step_ms: i64,
    /// Which read model answered: raw log, 1-minute or 1-hour rollups.
    #[schema(inline)]
    pub source: Source,
    /// Series with at least one bucket.
    pub series: Vec<SeriesRollup>,
}

/// A rejected publish.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reject {
    /// When it was received.
    pub received_at: Timestamp,
    /// Its topic.
    pub topic: String,
    /// The device it came from, when known (from the topic, the payload or an ingest mapping).
    #[schema(required = true)]
    pub device_id: Option<String>,
    /// Stable reason label.
    #[schema(examples("invalid_value", "payload_too_large"))]
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// Payload size in bytes.
    pub payload_len: u64,
    /// The first bytes of the payload, lossily as UTF-8.
    pub payload_preview: String,
}

/// `GET /v1/rejects`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = Rejects)]
pub struct RejectList {
    /// All rejects since start.
    pub total: u64,
    /// Per reason.
    pub by_reason: std::collections::BTreeMap<String, u64>,
    /// The most recent ones, oldest first.
    pub recent: Vec<Reject>,
}

/// `ok`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Alive {
    /// Alive.
    Ok,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Always `ok`.
    #[schema(inline)]
    pub status: Alive,
}

/// `ready`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Readiness {
    /// The writer is committing.
    Ready,
}

/// `GET /readyz`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ready {
    /// Always `ready` (else the answer is a 503 error).
    #[schema(inline)]
    pub status: Readiness,
}
