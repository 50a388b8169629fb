//! [`to_publish`]: a decoded reading as the MQTT publish the hub ingests, and
//! [`SerialPublish`], the function that sends it.

use std::sync::Arc;

use bytes::Bytes;
use edgewatch_protocol::frame::TextReading;
use edgewatch_protocol::payload::{is_valid_id, CompactReading};
use edgewatch_protocol::timefmt::format_rfc3339;
use futures::future::BoxFuture;
use serde::Serialize;

/// Publishes one reading into the broker: `(topic, payload)`. An `Err` is counted and logged,
/// and the reading dropped.
pub type SerialPublish =
    Arc<dyn Fn(String, Bytes) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// A reading as it came off the port, before it becomes a publish.
#[derive(Debug, Clone, PartialEq)]
pub enum SerialReading {
    /// A COBS frame.
    Frame(CompactReading),
    /// A text line.
    Line(TextReading),
}

impl From<CompactReading> for SerialReading {
    fn from(r: CompactReading) -> Self {
        SerialReading::Frame(r)
    }
}

impl From<TextReading> for SerialReading {
    fn from(r: TextReading) -> Self {
        SerialReading::Line(r)
    }
}

/// The JSON payload of a serial reading (the JSON format of
/// [`edgewatch_protocol::payload`]).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonReading<'a> {
    device_id: &'a str,
    value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
}

/// Turns a reading into the MQTT publish the hub ingests: topic `sensors/{deviceId}/{metric}`
/// and a JSON payload. `device_id_default` is used for text lines and for frames without a
/// device id. Errors (in words) for an invalid device id or metric, a frame without a metric,
/// the reserved metric `status` (the presence topic) and a value that is not finite.
pub fn to_publish(
    device_id_default: &str,
    reading: SerialReading,
) -> Result<(String, Bytes), String> {
    let (device_id, metric, value, unit, timestamp_ms) = match &reading {
        SerialReading::Frame(r) => (
            r.device_id.as_deref().unwrap_or(device_id_default),
            r.metric.as_deref().ok_or("frame carries no metric")?,
            r.value,
            r.unit.as_deref(),
            r.timestamp_ms,
        ),
        SerialReading::Line(r) => (
            device_id_default,
            r.metric.as_str(),
            r.value,
            r.unit.as_deref(),
            None,
        ),
    };
    if !is_valid_id(device_id) {
        return Err(format!(
            "invalid device id {device_id:?}: must be 1 to 64 characters of A-Z a-z 0-9 _ . : -"
        ));
    }
    if !is_valid_id(metric) {
        return Err(format!(
            "invalid metric {metric:?}: must be 1 to 64 characters of A-Z a-z 0-9 _ . : -"
        ));
    }
    if metric == "status" {
        return Err("metric \"status\" is reserved for device presence".to_owned());
    }
    if !value.is_finite() {
        return Err(format!("value {value} is not a finite number"));
    }
    let payload = JsonReading {
        device_id,
        value,
        unit: unit.filter(|u| !u.is_empty()),
        timestamp: timestamp_ms.map(format_rfc3339),
    };
    let payload = serde_json::to_vec(&payload).map_err(|e| e.to_string())?;
    Ok((
        format!("sensors/{device_id}/{metric}"),
        Bytes::from(payload),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(payload: &Bytes) -> serde_json::Value {
        serde_json::from_slice(payload).expect("payload is JSON")
    }

    #[test]
    fn frame_with_everything() {
        let (topic, payload) = to_publish(
            "port-dev",
            SerialReading::Frame(CompactReading {
                device_id: Some("esp-1".into()),
                metric: Some("temperature".into()),
                value: 21.5,
                unit: Some("C".into()),
                timestamp_ms: Some(1_795_860_000_000),
            }),
        )
        .unwrap();
        assert_eq!(topic, "sensors/esp-1/temperature");
        assert_eq!(
            json(&payload),
            serde_json::json!({
                "deviceId": "esp-1",
                "value": 21.5,
                "unit": "C",
                "timestamp": "2026-11-28T10:00:00.000Z",
            })
        );
    }

    #[test]
    fn frame_without_device_uses_default_and_omits_missing_fields() {
        let (topic, payload) = to_publish(
            "port-dev",
            CompactReading {
                metric: Some("humidity".into()),
                value: -3.0,
                unit: Some(String::new()),
                ..CompactReading::default()
            }
            .into(),
        )
        .unwrap();
        assert_eq!(topic, "sensors/port-dev/humidity");
        assert_eq!(
            json(&payload),
            serde_json::json!({"deviceId": "port-dev", "value": -3.0})
        );
    }

    #[test]
    fn line_uses_default_device() {
        let (topic, payload) = to_publish(
            "serial-0",
            TextReading {
                metric: "humidity".into(),
                value: 40.25,
                unit: Some("%".into()),
            }
            .into(),
        )
        .unwrap();
        assert_eq!(topic, "sensors/serial-0/humidity");
        assert_eq!(
            json(&payload),
            serde_json::json!({"deviceId": "serial-0", "value": 40.25, "unit": "%"})
        );
    }

    #[test]
    fn payload_decodes_as_the_same_reading() {
        let (topic, payload) = to_publish(
            "d",
            CompactReading {
                device_id: Some("dev.7".into()),
                metric: Some("pressure".into()),
                value: 1013.25,
                unit: Some("hPa".into()),
                timestamp_ms: Some(1_795_860_000_123),
            }
            .into(),
        )
        .unwrap();
        let now = 1_795_860_001_000;
        let inbound = edgewatch_protocol::payload::decode_publish(&topic, &payload, now);
        let Ok(edgewatch_protocol::payload::Inbound::Reading(r)) = inbound else {
            panic!("not a reading: {inbound:?}");
        };
        assert_eq!(
            (r.device_id.as_str(), r.metric.as_str(), r.value),
            ("dev.7", "pressure", 1013.25)
        );
        assert_eq!(
            (r.unit.as_deref(), r.timestamp_ms),
            (Some("hPa"), 1_795_860_000_123)
        );
    }

    #[test]
    fn invalid_readings_are_errors() {
        let frame = |device: Option<&str>, metric: Option<&str>, value: f64| {
            SerialReading::Frame(CompactReading {
                device_id: device.map(str::to_owned),
                metric: metric.map(str::to_owned),
                value,
                ..CompactReading::default()
            })
        };
        let cases = [
            ("d", frame(None, None, 1.0), "no metric"),
            ("d", frame(Some("a/b"), Some("t"), 1.0), "invalid device id"),
            ("d", frame(Some(""), Some("t"), 1.0), "invalid device id"),
            ("d", frame(None, Some("t#"), 1.0), "invalid metric"),
            ("d", frame(None, Some("status"), 1.0), "reserved"),
            ("d", frame(None, Some("t"), f64::NAN), "not a finite"),
            ("d", frame(None, Some("t"), f64::INFINITY), "not a finite"),
            ("bad id", frame(None, Some("t"), 1.0), "invalid device id"),
            (
                "bad+",
                SerialReading::Line(TextReading {
                    metric: "t".into(),
                    value: 1.0,
                    unit: None,
                }),
                "invalid device id",
            ),
        ];
        for (default, reading, expected) in cases {
            let err = to_publish(default, reading.clone()).unwrap_err();
            assert!(err.contains(expected), "{reading:?}: {err}");
        }
    }
}
