//! Decoding an MQTT publish (topic + payload bytes) into a [`Reading`] or a presence change.
//!
//! # Topics
//! * `sensors/{deviceId}/{metric}`: a reading; device and metric come from the topic.
//! * `sensors/{metric}`: the shared channel (e.g. `sensors/temperature`); the device id must be
//!   in the payload (`deviceId` in JSON, `device_id` in a [`CompactReading`]).
//! * `sensors/{deviceId}/status`: presence, payload `online` / `offline` (any case, surrounding
//!   whitespace ignored) or JSON `{"status":"online"}`.
//!
//! Device ids and metrics are 1 to 64 characters of `A-Z a-z 0-9 _ . : -`.
//!
//! # Payloads
//! Leading and trailing ASCII whitespace is ignored for text payloads. The format is detected:
//! 1. first byte `{`: JSON, e.g. `{"deviceId":"d1","value":21.5,"unit":"C","timestamp":"2026-11-28T10:00:00Z"}`.
//!    `value` is required (a number or a numeric string); `deviceId`, `metric`, `unit` and
//!    `timestamp` (RFC 3339 string or epoch-millisecond number) are optional; other fields are
//!    ignored. A `deviceId` or `metric` that contradicts the topic is an error.
//! 2. UTF-8 text that parses as a number: `21.5`, ` -3 `, `1e3`.
//! 3. a postcard-encoded [`CompactReading`] that uses every byte.
//!
//! Values must be finite. The event time is the payload's timestamp if it has one, else the
//! receive time; it must lie between 2000-01-01 and one day after the receive time.

use serde::{Deserialize, Serialize};

use crate::quote;
use crate::reading::Reading;
use crate::timefmt::{format_rfc3339, parse_time};

/// Earliest event time accepted: 2000-01-01T00:00:00Z in epoch milliseconds.
pub const MIN_EVENT_TIME_MS: i64 = 946_684_800_000;

/// How far past the receive time an event time may be (device clocks drift): one day.
pub const MAX_FUTURE_SKEW_MS: i64 = 86_400_000;

/// Longest device id or metric name, in characters.
pub const MAX_ID_LEN: usize = 64;

/// What an MQTT publish on a `sensors/...` topic means.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A measurement.
    Reading(Reading),
    /// A device went online or offline (`sensors/{deviceId}/status`).
    Status {
        /// The device whose presence changed.
        device_id: String,
        /// `true` for `online`, `false` for `offline`.
        online: bool,
    },
}

/// The compact binary reading constrained devices send, postcard-encoded (fields in this order).
///
/// `device_id` and `metric` may be left out when the topic names them; `timestamp_ms` is epoch
/// milliseconds and defaults to the receive time.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CompactReading {
    /// Device id, required on the shared channel `sensors/{metric}`.
    pub device_id: Option<String>,
    /// Metric; must equal the topic's if both are given.
    pub metric: Option<String>,
    /// The measured value; must be finite.
    pub value: f64,
    /// Unit, if any.
    pub unit: Option<String>,
    /// Event time in epoch milliseconds, if the device knows it.
    pub timestamp_ms: Option<i64>,
}

impl CompactReading {
    /// The compact form of a full reading (device, metric, value, unit and event time).
    pub fn from_reading(reading: &Reading) -> Self {
        CompactReading {
            device_id: Some(reading.device_id.clone()),
            metric: Some(reading.metric.clone()),
            value: reading.value,
            unit: reading.unit.clone(),
            timestamp_ms: Some(reading.timestamp_ms),
        }
    }
}

/// A reading that could not be encoded; nothing usable was produced.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cannot encode the reading with postcard: {0}")]
pub struct EncodeError(#[source] postcard::Error);

/// Encodes a [`CompactReading`] with postcard, the payload format (c) of this module.
pub fn encode_compact(reading: &CompactReading) -> Result<Vec<u8>, EncodeError> {
    postcard::to_stdvec(reading).map_err(EncodeError)
}

/// Decodes a postcard [`CompactReading`] that must use every byte of `bytes`.
pub fn decode_compact(bytes: &[u8]) -> Option<CompactReading> {
    match postcard::take_from_bytes::<CompactReading>(bytes) {
        Ok((reading, [])) => Some(reading),
        _ => None,
    }
}

/// Why a publish could not be decoded. Each message quotes the offending value (truncated to 64
/// characters); [`DecodeError::reason`] gives a stable label for metrics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Not one of the topic shapes of this module.
    #[error(
        "unexpected topic {topic:?}: expected sensors/{{deviceId}}/{{metric}}, sensors/{{metric}} or sensors/{{deviceId}}/status"
    )]
    UnexpectedTopic {
        /// The topic (truncated).
        topic: String,
    },
    /// A device id that is empty, longer than 64 characters or has other characters than
    /// `A-Z a-z 0-9 _ . : -`.
    #[error("invalid device id {device_id:?}: must be 1 to 64 characters of A-Z a-z 0-9 _ . : -")]
    InvalidDeviceId {
        /// The device id (truncated).
        device_id: String,
    },
    /// A metric that breaks the same rules as device ids.
    #[error("invalid metric {metric:?}: must be 1 to 64 characters of A-Z a-z 0-9 _ . : -")]
    InvalidMetric {
        /// The metric (truncated).
        metric: String,
    },
    /// The payload was empty or only whitespace.
    #[error("empty payload")]
    EmptyPayload,
    /// The payload started with `{` but is not a valid JSON reading object.
    #[error("invalid JSON payload: {message}")]
    InvalidJson {
        /// What the JSON parser reported.
        message: String,
    },
    /// A JSON payload without a `value` field (or with `"value": null`).
    #[error("JSON payload has no \"value\" field")]
    MissingValue,
    /// A `value` that is neither a number nor a numeric string.
    #[error("invalid value {value}: expected a number or a numeric string")]
    InvalidValue {
        /// The value as it appeared (truncated).
        value: String,
    },
    /// NaN or an infinity.
    #[error("value {value} is not a finite number")]
    NonFiniteValue {
        /// The value as text.
        value: String,
    },
    /// A shared-channel reading without a device id in its payload.
    #[error(
        "topic {topic:?} is a shared channel: the payload must carry the device id (JSON \"deviceId\")"
    )]
    MissingDeviceId {
        /// The topic (truncated).
        topic: String,
    },
    /// The payload names another device than the topic.
    #[error("payload deviceId {payload:?} differs from topic device {topic:?}")]
    DeviceMismatch {
        /// Device id in the topic.
        topic: String,
        /// Device id in the payload (truncated).
        payload: String,
    },
    /// The payload names another metric than the topic.
    #[error("payload metric {payload:?} differs from topic metric {topic:?}")]
    MetricMismatch {
        /// Metric in the topic.
        topic: String,
        /// Metric in the payload (truncated).
        payload: String,
    },
    /// A timestamp that is not RFC 3339 or epoch milliseconds.
    #[error("invalid timestamp {timestamp}: expected an RFC 3339 string or epoch milliseconds")]
    InvalidTimestamp {
        /// The timestamp as it appeared (truncated).
        timestamp: String,
    },
    /// A timestamp before 2000-01-01 or more than a day after the receive time.
    #[error(
        "timestamp {timestamp_ms} ({}) out of range: must be from 2000-01-01 to one day after the receive time ({}); epoch milliseconds expected",
        format_rfc3339(*.timestamp_ms),
        format_rfc3339(*.received_at_ms)
    )]
    TimestampOutOfRange {
        /// The event time, epoch milliseconds.
        timestamp_ms: i64,
        /// The receive time, epoch milliseconds.
        received_at_ms: i64,
    },
    /// Neither JSON, a number nor a postcard [`CompactReading`].
    #[error(
        "unknown payload format ({len} bytes, starting {start:?}): expected JSON, a number or a postcard CompactReading"
    )]
    UnknownFormat {
        /// Payload length in bytes.
        len: usize,
        /// The start of the payload, lossily as text.
        start: String,
    },
    /// A status payload other than `online` / `offline`.
    #[error("invalid status {status:?}: expected online or offline")]
    InvalidStatus {
        /// The payload (truncated).
        status: String,
    },
}

impl DecodeError {
    /// A stable snake_case label for the kind of error, e.g. `invalid_json`, for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::UnexpectedTopic { .. } => "unexpected_topic",
            DecodeError::InvalidDeviceId { .. } => "invalid_device_id",
            DecodeError::InvalidMetric { .. } => "invalid_metric",
            DecodeError::EmptyPayload => "empty_payload",
            DecodeError::InvalidJson { .. } => "invalid_json",
            DecodeError::MissingValue => "missing_value",
            DecodeError::InvalidValue { .. } => "invalid_value",
            DecodeError::NonFiniteValue { .. } => "non_finite_value",
            DecodeError::MissingDeviceId { .. } => "missing_device_id",
            DecodeError::DeviceMismatch { .. } => "device_mismatch",
            DecodeError::MetricMismatch { .. } => "metric_mismatch",
            DecodeError::InvalidTimestamp { .. } => "invalid_timestamp",
            DecodeError::TimestampOutOfRange { .. } => "timestamp_out_of_range",
            DecodeError::UnknownFormat { .. } => "unknown_format",
            DecodeError::InvalidStatus { .. } => "invalid_status",
        }
    }
}

/// Whether `s` is a valid device id or metric: 1 to 64 characters of `A-Z a-z 0-9 _ . : -`.
pub fn is_valid_id(s: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

fn check_device_id(s: &str) -> Result<(), DecodeError> {
    if is_valid_id(s) {
        Ok(())
    } else {
        Err(DecodeError::InvalidDeviceId {
            device_id: quote(s),
        })
    }
}

fn check_metric(s: &str) -> Result<(), DecodeError> {
    if is_valid_id(s) {
        Ok(())
    } else {
        Err(DecodeError::InvalidMetric { metric: quote(s) })
    }
}

/// The meaning of a topic.
enum TopicShape<'a> {
    /// `sensors/{device}/{metric}`
    Device { device_id: &'a str, metric: &'a str },
    /// `sensors/{metric}`
    Shared { metric: &'a str },
    /// `sensors/{device}/status`
    Status { device_id: &'a str },
}

fn parse_topic(topic: &str) -> Result<TopicShape<'_>, DecodeError> {
    let unexpected = || DecodeError::UnexpectedTopic {
        topic: quote(topic),
    };
    let mut levels = topic.split('/');
    if levels.next() != Some("sensors") {
        return Err(unexpected());
    }
    let second = levels.next();
    let third = levels.next();
    if levels.next().is_some() {
        return Err(unexpected());
    }
    match (second, third) {
        (Some(metric), None) if !metric.is_empty() => {
            check_metric(metric)?;
            Ok(TopicShape::Shared { metric })
        }
        (Some(device_id), Some(last)) if !device_id.is_empty() && !last.is_empty() => {
            check_device_id(device_id)?;
            if last == "status" {
                Ok(TopicShape::Status { device_id })
            } else {
                check_metric(last)?;
                Ok(TopicShape::Device {
                    device_id,
                    metric: last,
                })
            }
        }
        _ => Err(unexpected()),
    }
}

/// Whether `topic` belongs to the reading/presence scheme (`sensors` and everything under
/// `sensors/`): a publish there is a reading, a presence change or a reject; any other topic is
/// not meant for the store (it is counted as ignored, not rejected).
pub fn is_reading_topic(topic: &str) -> bool {
    topic == "sensors" || topic.starts_with("sensors/")
}

/// A decoded publish and where its event time came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The reading or presence change.
    pub inbound: Inbound,
    /// `true` when the payload carried the event time (the device's own timestamp); `false`
    /// when the receive time stands in for it (and for presence changes). Only a reading with
    /// a device timestamp can be recognised as a resend by its content: without one, two
    /// readings received in the same millisecond with the same value are still two readings.
    pub device_time: bool,
}

/// Decodes one MQTT publish into a reading or a presence change.
///
/// `received_at_ms` is when the hub received it; it becomes [`Reading::received_at_ms`] and the
/// event time when the payload carries none. See the [module documentation](self) for the
/// topics and payload formats accepted.
pub fn decode_publish(
    topic: &str,
    payload: &[u8],
    received_at_ms: i64,
) -> Result<Inbound, DecodeError> {
    decode(topic, payload, received_at_ms).map(|d| d.inbound)
}

/// As [`decode_publish`], and says whether the event time is the device's own
/// ([`Decoded::device_time`]).
pub fn decode(topic: &str, payload: &[u8], received_at_ms: i64) -> Result<Decoded, DecodeError> {
    let shape = parse_topic(topic)?;
    let text = payload.trim_ascii();
    if text.is_empty() {
        return Err(DecodeError::EmptyPayload);
    }
    let (topic_device, topic_metric) = match shape {
        TopicShape::Status { device_id } => {
            return decode_status(device_id, text).map(|inbound| Decoded {
                inbound,
                device_time: false,
            })
        }
        TopicShape::Device { device_id, metric } => (Some(device_id), metric),
        TopicShape::Shared { metric } => (None, metric),
    };
    let fields = decode_fields(text, payload)?;

    let device_id = match (topic_device, fields.device_id) {
        (Some(from_topic), Some(from_payload)) if from_topic != from_payload => {
            return Err(DecodeError::DeviceMismatch {
                topic: from_topic.to_owned(),
                payload: quote(&from_payload),
            });
        }
        (Some(from_topic), _) => from_topic.to_owned(),
        (None, Some(from_payload)) => {
            check_device_id(&from_payload)?;
            from_payload
        }
        (None, None) => {
            return Err(DecodeError::MissingDeviceId {
                topic: quote(topic),
            })
        }
    };
    if let Some(metric) = fields.metric {
        if metric != topic_metric {
            return Err(DecodeError::MetricMismatch {
                topic: topic_metric.to_owned(),
                payload: quote(&metric),
            });
        }
    }
    let device_time = fields.timestamp_ms.is_some();
    let timestamp_ms = fields.timestamp_ms.unwrap_or(received_at_ms);
    if timestamp_ms < MIN_EVENT_TIME_MS
        || timestamp_ms > received_at_ms.saturating_add(MAX_FUTURE_SKEW_MS)
    {
        return Err(DecodeError::TimestampOutOfRange {
            timestamp_ms,
            received_at_ms,
        });
    }
    Ok(Decoded {
        inbound: Inbound::Reading(Reading {
            device_id,
            metric: topic_metric.to_owned(),
            value: fields.value,
            unit: fields.unit.filter(|u| !u.is_empty()),
            timestamp_ms,
            received_at_ms,
        }),
        device_time,
    })
}

/// What a reading payload said, whatever its format.
struct PayloadFields {
    device_id: Option<String>,
    metric: Option<String>,
    value: f64,
    unit: Option<String>,
    timestamp_ms: Option<i64>,
}

/// Detects the format and decodes a reading payload. `text` is `raw` with ASCII whitespace
/// trimmed (and non-empty).
fn decode_fields(text: &[u8], raw: &[u8]) -> Result<PayloadFields, DecodeError> {
    if text.first() == Some(&b'{') {
        return decode_json(text);
    }
    if let Some(value) = std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    {
        return Ok(PayloadFields {
            device_id: None,
            metric: None,
            value: finite(value)?,
            unit: None,
            timestamp_ms: None,
        });
    }
    if let Some(compact) = decode_compact(raw) {
        return Ok(PayloadFields {
            device_id: compact.device_id,
            metric: compact.metric,
            value: finite(compact.value)?,
            unit: compact.unit,
            timestamp_ms: compact.timestamp_ms,
        });
    }
    Err(DecodeError::UnknownFormat {
        len: raw.len(),
        start: quote(&String::from_utf8_lossy(
            &raw[..raw.len().min(crate::QUOTE_LIMIT)],
        )),
    })
}

fn finite(value: f64) -> Result<f64, DecodeError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(DecodeError::NonFiniteValue {
            value: value.to_string(),
        })
    }
}

/// The JSON reading object; unknown fields are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonReading {
    device_id: Option<String>,
    metric: Option<String>,
    value: Option<serde_json::Value>,
    unit: Option<String>,
    timestamp: Option<serde_json::Value>,
}

fn decode_json(text: &[u8]) -> Result<PayloadFields, DecodeError> {
    let json: JsonReading = serde_json::from_slice(text).map_err(|e| DecodeError::InvalidJson {
        message: quote(&e.to_string()),
    })?;
    let value = match json.value {
        None | Some(serde_json::Value::Null) => return Err(DecodeError::MissingValue),
        Some(serde_json::Value::Number(n)) => {
            let as_text = n.to_string();
            finite(n.as_f64().ok_or(DecodeError::InvalidValue {
                value: quote(&as_text),
            })?)?
        }
        Some(serde_json::Value::String(s)) => {
            let parsed = s
                .trim()
                .parse::<f64>()
                .map_err(|_| DecodeError::InvalidValue {
                    value: quote(&format!("{s:?}")),
                })?;
            finite(parsed)?
        }
        Some(other) => {
            return Err(DecodeError::InvalidValue {
                value: quote(&other.to_string()),
            })
        }
    };
    let timestamp_ms = match json.timestamp {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => {
            Some(parse_time(&s).map_err(|_| DecodeError::InvalidTimestamp {
                timestamp: quote(&format!("{s:?}")),
            })?)
        }
        Some(serde_json::Value::Number(n)) => Some(epoch_ms_from_number(&n)?),
        Some(other) => {
            return Err(DecodeError::InvalidTimestamp {
                timestamp: quote(&other.to_string()),
            })
        }
    };
    Ok(PayloadFields {
        device_id: json.device_id,
        metric: json.metric,
        value,
        unit: json.unit,
        timestamp_ms,
    })
}

/// A JSON number as epoch milliseconds; fractions of a millisecond are dropped.
fn epoch_ms_from_number(n: &serde_json::Number) -> Result<i64, DecodeError> {
    if let Some(ms) = n.as_i64() {
        return Ok(ms);
    }
    match n.as_f64() {
        // The range check keeps the cast exact up to truncation of the fraction.
        Some(f) if f.is_finite() && f >= i64::MIN as f64 && f < i64::MAX as f64 => Ok(f as i64),
        _ => Err(DecodeError::InvalidTimestamp {
            timestamp: quote(&n.to_string()),
        }),
    }
}

/// The JSON status object `{"status":"online"}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonStatus {
    device_id: Option<String>,
    status: Option<String>,
}

fn decode_status(device_id: &str, text: &[u8]) -> Result<Inbound, DecodeError> {
    let status = if text.first() == Some(&b'{') {
        let json: JsonStatus =
            serde_json::from_slice(text).map_err(|e| DecodeError::InvalidJson {
                message: quote(&e.to_string()),
            })?;
        if let Some(payload) = json.device_id {
            if payload != device_id {
                return Err(DecodeError::DeviceMismatch {
                    topic: device_id.to_owned(),
                    payload: quote(&payload),
                });
            }
        }
        json.status.ok_or_else(|| DecodeError::InvalidStatus {
            status: quote(&String::from_utf8_lossy(text)),
        })?
    } else {
        String::from_utf8_lossy(text).into_owned()
    };
    let status = status.trim();
    let online = if status.eq_ignore_ascii_case("online") {
        true
    } else if status.eq_ignore_ascii_case("offline") {
        false
    } else {
        return Err(DecodeError::InvalidStatus {
            status: quote(status),
        });
    };
    Ok(Inbound::Status {
        device_id: device_id.to_owned(),
        online,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2026-11-28T10:00:00Z
    const NOW: i64 = 1_795_860_000_000;

    #[test]
    fn says_whether_the_event_time_is_the_devices() {
        let device_time = |topic: &str, payload: &[u8]| {
            decode(topic, payload, NOW)
                .map(|d| d.device_time)
                .unwrap_or_else(|e| panic!("{topic} {payload:?}: {e}"))
        };
        assert!(!device_time("sensors/d1/t", b"21.5"));
        assert!(!device_time(
            "sensors/d1/t",
            br#"{"value":21.5,"unit":"C"}"#
        ));
        assert!(device_time(
            "sensors/d1/t",
            br#"{"value":21.5,"timestamp":"2026-11-28T09:59:00Z"}"#
        ));
        assert!(device_time(
            "sensors/d1/t",
            br#"{"value":1,"timestamp":1795859000000}"#
        ));
        let compact = |timestamp_ms| {
            postcard::to_allocvec(&CompactReading {
                device_id: None,
                metric: None,
                value: 1.0,
                unit: None,
                timestamp_ms,
            })
            .unwrap()
        };
        assert!(device_time("sensors/d1/t", &compact(Some(NOW - 5))));
        assert!(!device_time("sensors/d1/t", &compact(None)));
        assert!(!device_time("sensors/d1/status", b"online"));
    }

    #[test]
    fn reading_topics_are_the_sensors_tree() {
        for t in [
            "sensors",
            "sensors/t",
            "sensors/d1/t",
            "sensors/a/b/c",
            "sensors/",
        ] {
            assert!(is_reading_topic(t), "{t}");
        }
        for t in [
            "tele/plug-1/SENSOR",
            "sensorsx/d1/t",
            "zigbee2mqtt/kitchen",
            "",
            "/sensors",
        ] {
            assert!(!is_reading_topic(t), "{t}");
        }
    }

    fn reading(topic: &str, payload: &[u8]) -> Reading {
        match decode_publish(topic, payload, NOW) {
            Ok(Inbound::Reading(r)) => r,
            other => panic!("expected a reading from {topic} {payload:?}, got {other:?}"),
        }
    }

    fn error(topic: &str, payload: &[u8]) -> DecodeError {
        match decode_publish(topic, payload, NOW) {
            Err(e) => e,
            Ok(ok) => panic!("expected an error from {topic} {payload:?}, got {ok:?}"),
        }
    }

    #[test]
    fn json_on_device_topic() {
        let r = reading(
            "sensors/d1/temperature",
            br#"{"deviceId":"d1","value":21.5,"unit":"C","timestamp":"2026-11-28T09:59:00Z","extra":[1]}"#,
        );
        assert_eq!(
            r,
            Reading {
                device_id: "d1".into(),
                metric: "temperature".into(),
                value: 21.5,
                unit: Some("C".into()),
                timestamp_ms: NOW - 60_000,
                received_at_ms: NOW,
            }
        );
        let r = reading("sensors/d1/temperature", b" {\"value\": \"-3.25\"}\n");
        assert_eq!((r.value, r.unit, r.timestamp_ms), (-3.25, None, NOW));
        let r = reading("sensors/d1/t", br#"{"value":1,"timestamp":1795859000000}"#);
        assert_eq!(r.timestamp_ms, 1_795_859_000_000);
        let r = reading(
            "sensors/d1/t",
            br#"{"value":1,"timestamp":1795859000000.9}"#,
        );
        assert_eq!(r.timestamp_ms, 1_795_859_000_000);
        let r = reading(
            "sensors/d1/t",
            br#"{"value":1,"timestamp":"1795859000000"}"#,
        );
        assert_eq!(r.timestamp_ms, 1_795_859_000_000);
        let r = reading(
            "sensors/d1/t",
            br#"{"value":1,"metric":"t","unit":"","timestamp":null}"#,
        );
        assert_eq!((r.unit, r.timestamp_ms), (None, NOW));
    }

    #[test]
    fn json_on_shared_channel() {
        let r = reading(
            "sensors/temperature",
            br#"{"deviceId":"dev-7","value":21.5,"unit":"C"}"#,
        );
        assert_eq!(r.device_id, "dev-7");
        assert_eq!(r.metric, "temperature");
        assert_eq!(r.topic(), "sensors/dev-7/temperature");
        assert_eq!(
            error("sensors/temperature", br#"{"value":1}"#),
            DecodeError::MissingDeviceId {
                topic: "sensors/temperature".into()
            }
        );
        assert_eq!(
            error("sensors/temperature", b"21.5").reason(),
            "missing_device_id"
        );
        assert_eq!(
            error("sensors/temperature", br#"{"deviceId":"a b","value":1}"#),
            DecodeError::InvalidDeviceId {
                device_id: "a b".into()
            }
        );
    }

    #[test]
    fn bare_numbers() {
        for (text, value) in [
            ("21.5", 21.5),
            (" -3 ", -3.0),
            ("1e3", 1000.0),
            ("\t+0.5\r\n", 0.5),
        ] {
            let r = reading("sensors/d1/temperature", text.as_bytes());
            assert_eq!(r.value, value, "{text:?}");
            assert_eq!((r.timestamp_ms, r.received_at_ms), (NOW, NOW));
        }
        for text in ["NaN", "inf", "-infinity", "1e999"] {
            assert_eq!(
                error("sensors/d1/t", text.as_bytes()).reason(),
                "non_finite_value",
                "{text:?}"
            );
        }
    }

    #[test]
    fn compact_round_trip() {
        let compact = CompactReading {
            device_id: Some("d1".into()),
            metric: Some("temperature".into()),
            value: 21.5,
            unit: Some("C".into()),
            timestamp_ms: Some(NOW - 5),
        };
        let bytes = encode_compact(&compact).unwrap();
        assert_eq!(decode_compact(&bytes), Some(compact.clone()));
        let r = reading("sensors/d1/temperature", &bytes);
        assert_eq!(CompactReading::from_reading(&r), compact);
        assert_eq!(r.received_at_ms, NOW);
        // The shared channel takes the device id from the compact payload.
        assert_eq!(reading("sensors/temperature", &bytes).device_id, "d1");
        // Minimal form: everything from the topic.
        let minimal = CompactReading {
            value: -1.0,
            ..CompactReading::default()
        };
        let r = reading("sensors/d2/humidity", &encode_compact(&minimal).unwrap());
        assert_eq!(
            (r.device_id.as_str(), r.metric.as_str(), r.value),
            ("d2", "humidity", -1.0)
        );
        assert_eq!(r.timestamp_ms, NOW);
        // Trailing bytes make it unknown.
        let mut extra = encode_compact(&minimal).unwrap();
        extra.push(7);
        assert_eq!(
            error("sensors/d2/humidity", &extra).reason(),
            "unknown_format"
        );
        let nan = CompactReading {
            value: f64::NAN,
            ..CompactReading::default()
        };
        assert_eq!(
            error("sensors/d2/h", &encode_compact(&nan).unwrap()).reason(),
            "non_finite_value"
        );
    }

    #[test]
    fn status() {
        for (payload, online) in [
            (&b"online"[..], true),
            (b"  OFFLINE\n", false),
            (b"Online", true),
            (br#"{"status":"offline"}"#, false),
            (br#"{"deviceId":"d1","status":" ONLINE "}"#, true),
        ] {
            assert_eq!(
                decode_publish("sensors/d1/status", payload, NOW),
                Ok(Inbound::Status {
                    device_id: "d1".into(),
                    online
                }),
                "{payload:?}"
            );
        }
        let err = error("sensors/d1/status", b"sleeping");
        assert_eq!(
            err,
            DecodeError::InvalidStatus {
                status: "sleeping".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "invalid status \"sleeping\": expected online or offline"
        );
        assert_eq!(
            error("sensors/d1/status", br#"{"state":"on"}"#).reason(),
            "invalid_status"
        );
        assert_eq!(error("sensors/d1/status", b"{").reason(), "invalid_json");
        assert_eq!(error("sensors/d1/status", b"  ").reason(), "empty_payload");
        assert_eq!(
            error(
                "sensors/d1/status",
                br#"{"deviceId":"d2","status":"online"}"#
            )
            .reason(),
            "device_mismatch"
        );
    }

    #[test]
    fn topic_errors() {
        for topic in [
            "",
            "sensors",
            "sensors/",
            "sensors//t",
            "sensors/d1/",
            "sensors/d1/t/x",
            "other/d1/t",
            "Sensors/d1/t",
            "/sensors/d1/t",
        ] {
            assert_eq!(
                error(topic, b"1"),
                DecodeError::UnexpectedTopic {
                    topic: topic.into()
                },
                "{topic:?}"
            );
        }
        assert_eq!(
            error("other/x", b"1").to_string(),
            "unexpected topic \"other/x\": expected sensors/{deviceId}/{metric}, sensors/{metric} or sensors/{deviceId}/status"
        );
        let long = "d".repeat(65);
        let err = error(&format!("sensors/{long}/t"), b"1");
        assert_eq!(
            err,
            DecodeError::InvalidDeviceId {
                device_id: format!("{}…", &long[1..])
            }
        );
        assert!(
            reading(&format!("sensors/{}/t", &long[1..]), b"1")
                .device_id
                .len()
                == 64
        );
        assert_eq!(
            error("sensors/d1/t+x", b"1"),
            DecodeError::InvalidMetric {
                metric: "t+x".into()
            }
        );
        assert_eq!(error("sensors/tëmp", b"1").reason(), "invalid_metric");
        assert_eq!(
            error("sensors/d 1/status", b"online").reason(),
            "invalid_device_id"
        );
    }

    // Long on purpose: one list of every rejected payload and the error it gives, read top to
    // bottom like a table.
    #[test]
    fn payload_errors() {
        let t = "sensors/d1/temperature";
        assert_eq!(error(t, b""), DecodeError::EmptyPayload);
        assert_eq!(error(t, b" \r\n\t"), DecodeError::EmptyPayload);
        let err = error(t, br#"{"value":1,}"#);
        assert!(matches!(&err, DecodeError::InvalidJson { message } if message.contains("line 1")));
        assert!(err.to_string().starts_with("invalid JSON payload: "));
        assert_eq!(error(t, br#"{"value":1} x"#).reason(), "invalid_json");
        assert_eq!(
            error(t, br#"{"value":1,"unit":5}"#).reason(),
            "invalid_json"
        );
        assert_eq!(error(t, br#"{"unit":"C"}"#), DecodeError::MissingValue);
        assert_eq!(error(t, br#"{"value":null}"#), DecodeError::MissingValue);
        assert_eq!(
            error(t, br#"{"value":"warm"}"#),
            DecodeError::InvalidValue {
                value: "\"warm\"".into()
            }
        );
        assert_eq!(
            error(t, br#"{"value":true}"#),
            DecodeError::InvalidValue {
                value: "true".into()
            }
        );
        assert_eq!(
            error(t, br#"{"value":"NaN"}"#),
            DecodeError::NonFiniteValue {
                value: "NaN".into()
            }
        );
        assert_eq!(
            error(t, br#"{"deviceId":"d2","value":1}"#),
            DecodeError::DeviceMismatch {
                topic: "d1".into(),
                payload: "d2".into()
            }
        );
        assert_eq!(
            error(t, br#"{"metric":"humidity","value":1}"#),
            DecodeError::MetricMismatch {
                topic: "temperature".into(),
                payload: "humidity".into()
            }
        );
        assert_eq!(
            error(t, br#"{"value":1,"timestamp":"noon"}"#),
            DecodeError::InvalidTimestamp {
                timestamp: "\"noon\"".into()
            }
        );
        assert_eq!(
            error(t, br#"{"value":1,"timestamp":[1]}"#).reason(),
            "invalid_timestamp"
        );
        let err = error(t, br#"{"value":1,"timestamp":1795860000}"#);
        assert_eq!(
            err,
            DecodeError::TimestampOutOfRange {
                timestamp_ms: 1_795_860_000,
                received_at_ms: NOW
            }
        );
        assert!(err.to_string().contains("1970-01-21T"), "{err}");
        assert_eq!(
            error(t, br#"{"value":1,"timestamp":"1999-12-31T23:59:59.999Z"}"#).reason(),
            "timestamp_out_of_range"
        );
        assert!(
            decode_publish(t, br#"{"value":1,"timestamp":"2000-01-01T00:00:00Z"}"#, NOW).is_ok()
        );
        let tomorrow = format!(r#"{{"value":1,"timestamp":{}}}"#, NOW + MAX_FUTURE_SKEW_MS);
        assert!(decode_publish(t, tomorrow.as_bytes(), NOW).is_ok());
        let later = format!(
            r#"{{"value":1,"timestamp":{}}}"#,
            NOW + MAX_FUTURE_SKEW_MS + 1
        );
        assert_eq!(
            error(t, later.as_bytes()).reason(),
            "timestamp_out_of_range"
        );
        // A receive time before 2000 rejects even payloads without timestamps.
        assert_eq!(
            decode_publish(t, b"1", 0),
            Err(DecodeError::TimestampOutOfRange {
                timestamp_ms: 0,
                received_at_ms: 0
            })
        );
        let err = error(t, b"warm");
        assert_eq!(
            err,
            DecodeError::UnknownFormat {
                len: 4,
                start: "warm".into()
            }
        );
        assert_eq!(err.reason(), "unknown_format");
        assert_eq!(error(t, &[0xff, 0xfe, 0x00]).reason(), "unknown_format");
    }

    #[test]
    fn long_values_are_truncated_in_messages() {
        let long = "x".repeat(1000);
        let payload = format!(r#"{{"value":"{long}"}}"#);
        let err = error("sensors/d1/t", payload.as_bytes());
        assert!(err.to_string().len() < 200, "{err}");
        let err = error("sensors/d1/status", long.as_bytes());
        assert!(err.to_string().len() < 200, "{err}");
        let err = error(&format!("other/{long}"), b"1");
        assert!(err.to_string().len() < 250, "{err}");
    }

    #[test]
    fn reasons_are_snake_case() {
        let errors = [
            error("x", b"1"),
            error("sensors/d1/t", b""),
            error("sensors/d1/t", b"{"),
            error("sensors/d1/t", b"zz"),
        ];
        for e in errors {
            assert!(e
                .reason()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
    }

    fn topic_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{0,30}",
            prop::collection::vec(
                prop::sample::select(vec![
                    "sensors",
                    "d1",
                    "temperature",
                    "status",
                    "",
                    "a b",
                    "+"
                ]),
                0..5
            )
            .prop_map(|levels| levels.join("/")),
        ]
    }

    fn payload_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            "\\PC{0,40}".prop_map(String::into_bytes),
            (any::<Option<String>>(), any::<f64>(), any::<Option<i64>>()).prop_map(
                |(device_id, value, timestamp_ms)| {
                    encode_compact(&CompactReading {
                        device_id,
                        metric: None,
                        value,
                        unit: None,
                        timestamp_ms,
                    })
                    .unwrap()
                }
            ),
            (any::<f64>(), any::<i64>(), "[a-z0-9]{0,5}").prop_map(|(v, ts, d)| format!(
                r#"{{"deviceId":"{d}","value":{v},"timestamp":{ts}}}"#
            )
            .into_bytes()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn never_panics(topic in topic_strategy(), payload in payload_strategy(), now in any::<i64>()) {
            if let Ok(Inbound::Reading(r)) = decode_publish(&topic, &payload, now) {
                prop_assert!(r.value.is_finite());
                prop_assert!(is_valid_id(&r.device_id) && is_valid_id(&r.metric));
                prop_assert!(r.timestamp_ms >= MIN_EVENT_TIME_MS);
            }
        }

        #[test]
        fn json_round_trip(
            device in "[A-Za-z0-9_.:-]{1,64}",
            metric in "[A-Za-z0-9_.:-]{1,64}",
            value in any::<f64>().prop_filter("finite", |v| v.is_finite()),
            unit in proptest::option::of("[A-Za-z%°/]{1,4}"),
            ts in MIN_EVENT_TIME_MS..NOW,
            rfc in any::<bool>(),
        ) {
            prop_assume!(metric != "status");
            let mut json = serde_json::json!({ "deviceId": device, "value": value });
            if let Some(u) = &unit { json["unit"] = u.clone().into(); }
            json["timestamp"] = if rfc { format_rfc3339(ts).into() } else { ts.into() };
            let expected = Reading {
                device_id: device.clone(),
                metric: metric.clone(),
                value,
                unit,
                timestamp_ms: ts,
                received_at_ms: NOW,
            };
            let bytes = json.to_string().into_bytes();
            let topic = format!("sensors/{device}/{metric}");
            prop_assert_eq!(decode_publish(&topic, &bytes, NOW), Ok(Inbound::Reading(expected.clone())));
            let shared = format!("sensors/{metric}");
            prop_assert_eq!(decode_publish(&shared, &bytes, NOW), Ok(Inbound::Reading(expected)));
        }

        #[test]
        fn number_round_trip(value in any::<f64>().prop_filter("finite", |v| v.is_finite())) {
            let r = reading("sensors/d1/t", value.to_string().as_bytes());
            prop_assert_eq!(r.value, value);
        }

        #[test]
        fn compact_round_trip_any(
            device in "[A-Za-z0-9_.:-]{1,64}",
            value in any::<f64>().prop_filter("finite", |v| v.is_finite()),
            unit in proptest::option::of(".{1,8}"),
            ts in proptest::option::of(MIN_EVENT_TIME_MS..NOW),
        ) {
            let compact = CompactReading {
                device_id: Some(device.clone()),
                metric: Some("t".into()),
                value,
                unit: unit.clone(),
                timestamp_ms: ts,
            };
            let r = reading("sensors/t", &encode_compact(&compact).unwrap());
            prop_assert_eq!(r, Reading {
                device_id: device,
                metric: "t".into(),
                value,
                unit,
                timestamp_ms: ts.unwrap_or(NOW),
                received_at_ms: NOW,
            });
        }
    }
}
