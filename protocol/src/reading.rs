//! The [`Reading`]: one value one device reported for one metric.

use serde::{Deserialize, Serialize};

/// One measurement: `value` of `metric` reported by `device_id`.
///
/// Times are milliseconds since the Unix epoch (UTC). `timestamp_ms` is the event time (from the
/// payload when the device sent one, else the receive time); `received_at_ms` is when the hub
/// received it. Both are always kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Device that reported the value, e.g. `d1`.
    pub device_id: String,
    /// What was measured, e.g. `temperature`.
    pub metric: String,
    /// The measured value.
    pub value: f64,
    /// Unit as the device reported it (`C`, `%`, ...), if any.
    pub unit: Option<String>,
    /// Event time, epoch milliseconds.
    pub timestamp_ms: i64,
    /// Receive time at the hub, epoch milliseconds.
    pub received_at_ms: i64,
}

impl Reading {
    /// The series this reading belongs to.
    pub fn series(&self) -> SeriesKey {
        SeriesKey {
            device_id: self.device_id.clone(),
            metric: self.metric.clone(),
        }
    }

    /// The canonical MQTT topic of this reading's series: `sensors/{deviceId}/{metric}`.
    pub fn topic(&self) -> String {
        SeriesTopic::new(&self.device_id, &self.metric).to_string()
    }
}

/// The canonical topic of a series, `sensors/{deviceId}/{metric}`, written by `Display`
/// without building a string first (answers write it straight into their buffers).
#[derive(Debug, Clone, Copy)]
pub struct SeriesTopic<'a> {
    device_id: &'a str,
    metric: &'a str,
}

impl<'a> SeriesTopic<'a> {
    /// The topic of `device_id`'s `metric`.
    pub fn new(device_id: &'a str, metric: &'a str) -> Self {
        Self { device_id, metric }
    }
}

impl std::fmt::Display for SeriesTopic<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sensors/{}/{}", self.device_id, self.metric)
    }
}

/// A series: all readings of one metric from one device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeriesKey {
    /// Device id.
    pub device_id: String,
    /// Metric name.
    pub metric: String,
}

impl SeriesKey {
    /// The canonical topic `sensors/{deviceId}/{metric}`.
    pub fn topic(&self) -> String {
        SeriesTopic::new(&self.device_id, &self.metric).to_string()
    }
}
