//! Turns a sampled value into the MQTT topic and payload bytes a device publishes, in the wire
//! formats of DESIGN.md.

use std::fmt;

use edgewatch_protocol::payload::{encode_compact, CompactReading, EncodeError};
use edgewatch_protocol::timefmt::format_rfc3339;

/// Payload format of a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// `{"deviceId":"sim-1","value":21.5,"unit":"C","timestamp":"2026-11-28T10:00:00.000Z"}`.
    #[default]
    Json,
    /// A bare number (`21.5`): no device id, unit or timestamp; only with per-device topics.
    Number,
    /// A postcard-encoded `CompactReading` with device id, metric, value, unit and timestamp.
    Binary,
}

/// Where readings are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TopicShape {
    /// `sensors/{deviceId}/{metric}`.
    #[default]
    Device,
    /// The shared channel `sensors/{metric}`, device id in the payload.
    Shared,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Json => "json",
            Format::Number => "number",
            Format::Binary => "binary",
        })
    }
}

/// The topic of `metric` readings from `device_id`.
pub fn reading_topic(shape: TopicShape, device_id: &str, metric: &str) -> String {
    match shape {
        TopicShape::Device => format!("sensors/{device_id}/{metric}"),
        TopicShape::Shared => format!("sensors/{metric}"),
    }
}

/// The presence topic of a device.
pub fn status_topic(device_id: &str) -> String {
    format!("sensors/{device_id}/status")
}

/// The payload of one reading. `timestamp_ms` is the event time (epoch milliseconds).
pub fn encode_reading(
    format: Format,
    device_id: &str,
    metric: &str,
    value: f64,
    unit: Option<&str>,
    timestamp_ms: i64,
) -> Result<Vec<u8>, EncodeError> {
    Ok(match format {
        Format::Json => {
            let mut body = serde_json::json!({
                "deviceId": device_id,
                "value": value,
                "timestamp": format_rfc3339(timestamp_ms),
            });
            if let Some(unit) = unit {
                body["unit"] = unit.into();
            }
            body.to_string().into_bytes()
        }
        Format::Number => value.to_string().into_bytes(),
        Format::Binary => encode_compact(&CompactReading {
            device_id: Some(device_id.to_owned()),
            metric: Some(metric.to_owned()),
            value,
            unit: unit.map(str::to_owned),
            timestamp_ms: Some(timestamp_ms),
        })?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgewatch_protocol::payload::{decode_publish, Inbound};

    const T: i64 = 1_795_860_000_123;

    #[test]
    fn every_format_decodes_with_the_hub_decoder() {
        for (format, shape) in [
            (Format::Json, TopicShape::Device),
            (Format::Json, TopicShape::Shared),
            (Format::Binary, TopicShape::Device),
            (Format::Binary, TopicShape::Shared),
            (Format::Number, TopicShape::Device),
        ] {
            let topic = reading_topic(shape, "sim-7", "temperature");
            let payload =
                encode_reading(format, "sim-7", "temperature", 21.25, Some("C"), T).unwrap();
            let Ok(Inbound::Reading(r)) = decode_publish(&topic, &payload, T + 5) else {
                panic!("{format} {shape:?} does not decode");
            };
            assert_eq!(
                (r.device_id.as_str(), r.metric.as_str()),
                ("sim-7", "temperature")
            );
            assert_eq!(r.value, 21.25);
            if format != Format::Number {
                assert_eq!(r.timestamp_ms, T);
                assert_eq!(r.unit.as_deref(), Some("C"));
            }
        }
    }
}
