//! What an uplink sends: topics from templates and the JSON of readings.

use edgewatch_protocol::timefmt::Rfc3339Days;
use serde::Serialize;

use crate::store::StoredReading;

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Site,
    Device,
    Metric,
}

/// A topic (or device id) template: text with `{site}`, `{deviceId}` and `{metric}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Template {
    parts: Vec<Part>,
}

/// Most bytes of a template.
const MAX_TEMPLATE_BYTES: usize = 256;

impl Template {
    /// Parses `text`; `topic` also refuses what cannot be in a topic name (wildcards, NUL,
    /// an empty template).
    pub(super) fn parse(text: &str, topic: bool) -> Result<Template, String> {
        if text.is_empty() || text.len() > MAX_TEMPLATE_BYTES {
            return Err(format!("1 to {MAX_TEMPLATE_BYTES} bytes"));
        }
        if topic && (text.contains(['+', '#', '\0']) || text.starts_with('$')) {
            return Err(format!(
                "{text:?}: a topic name has no wildcards (+, #), NUL or leading $"
            ));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("{text:?}: '{{' without '}}'"))?;
            parts.push(match &after[..=close] {
                "{site}" => Part::Site,
                "{deviceId}" => Part::Device,
                "{metric}" => Part::Metric,
                other => {
                    return Err(format!(
                        "{text:?}: unknown placeholder {other} (expected {{site}}, {{deviceId}} or {{metric}})"
                    ))
                }
            });
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("{text:?}: '}}' without '{{'"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// The template with its placeholders replaced.
    pub(super) fn render(&self, site: &str, device: &str, metric: &str) -> String {
        let mut out = String::with_capacity(64);
        for p in &self.parts {
            out.push_str(match p {
                Part::Text(t) => t,
                Part::Site => site,
                Part::Device => device,
                Part::Metric => metric,
            });
        }
        out
    }
}

/// One reading as the uplink writes it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Message<'a> {
    seq: u64,
    site: &'a str,
    device_id: &'a str,
    metric: &'a str,
    value: f64,
    unit: Option<&'a str>,
    timestamp: &'a str,
    received_at: &'a str,
}

/// Writes readings as JSON for one uplink.
#[derive(Debug)]
pub(super) struct Encoder {
    site: String,
    topic: Template,
    device_id: Template,
    batch_topic: String,
    presence_topic: Option<Template>,
}

impl Encoder {
    /// From checked templates (see `UplinkConfig::validate`).
    pub(super) fn new(cfg: &super::UplinkConfig) -> Result<Encoder, String> {
        let presence_topic = if cfg.presence_topic.is_empty() {
            None
        } else {
            Some(Template::parse(&cfg.presence_topic, true)?)
        };
        Ok(Encoder {
            site: cfg.site.clone(),
            topic: Template::parse(&cfg.topic, true)?,
            device_id: Template::parse(&cfg.device_id, false)?,
            batch_topic: Template::parse(&cfg.batch_topic, true)?.render(&cfg.site, "", ""),
            presence_topic,
        })
    }

    /// The topic of one reading.
    pub(super) fn topic(&self, r: &StoredReading) -> String {
        self.topic
            .render(&self.site, &r.reading.device_id, &r.reading.metric)
    }

    /// The topic of a batch.
    pub(super) fn batch_topic(&self) -> &str {
        &self.batch_topic
    }

    /// Where `device`'s presence goes, if presence is forwarded.
    pub(super) fn presence_topic(&self, device: &str) -> Option<String> {
        self.presence_topic
            .as_ref()
            .map(|t| t.render(&self.site, device, ""))
    }

    /// One reading's JSON object, appended to `out`.
    pub(super) fn push(
        &self,
        out: &mut Vec<u8>,
        r: &StoredReading,
        times: &mut Rfc3339Days,
    ) -> Result<(), serde_json::Error> {
        let ts = times.format(r.reading.timestamp_ms);
        let recv = times.format(r.reading.received_at_ms);
        let device = self
            .device_id
            .render(&self.site, &r.reading.device_id, &r.reading.metric);
        let msg = Message {
            seq: r.seq,
            site: &self.site,
            device_id: &device,
            metric: &r.reading.metric,
            value: r.reading.value,
            unit: r.reading.unit.as_deref(),
            timestamp: std::str::from_utf8(&ts).unwrap_or_default(),
            received_at: std::str::from_utf8(&recv).unwrap_or_default(),
        };
        serde_json::to_writer(&mut *out, &msg)
    }

    /// A JSON array of readings.
    pub(super) fn array(
        &self,
        readings: &[StoredReading],
        times: &mut Rfc3339Days,
    ) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::with_capacity(readings.len() * 180 + 2);
        out.push(b'[');
        for (i, r) in readings.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            self.push(&mut out, r, times)?;
        }
        out.push(b']');
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgewatch_protocol::Reading;

    #[test]
    fn templates_replace_their_placeholders_and_refuse_unknown_ones() {
        let t = Template::parse("site/{site}/sensors/{deviceId}/{metric}", true).unwrap();
        assert_eq!(t.render("s1", "d1", "temp"), "site/s1/sensors/d1/temp");
        assert_eq!(
            Template::parse("{site}-{deviceId}", false)
                .unwrap()
                .render("a", "b", "c"),
            "a-b"
        );
        for bad in ["a/{x}", "a/{site", "a}/b", "a/+/b", "a/#", "", "$SYS/x"] {
            assert!(Template::parse(bad, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_reading_is_written_with_its_seq_site_and_times() {
        let cfg = super::super::UplinkConfig {
            site: "s1".into(),
            device_id: "{site}-{deviceId}".into(),
            ..Default::default()
        };
        let enc = Encoder::new(&cfg).unwrap();
        let r = StoredReading {
            seq: 42,
            reading: Reading {
                device_id: "d1".into(),
                metric: "temperature".into(),
                value: 21.5,
                unit: Some("C".into()),
                timestamp_ms: 1_764_324_000_000,
                received_at_ms: 1_764_324_000_250,
            },
        };
        let mut times = Rfc3339Days::default();
        let one = enc.array(std::slice::from_ref(&r), &mut times).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&one).unwrap();
        assert_eq!(
            v[0],
            serde_json::json!({"seq": 42, "site": "s1", "deviceId": "s1-d1",
                "metric": "temperature", "value": 21.5, "unit": "C",
                "timestamp": "2025-11-28T10:00:00.000Z", "receivedAt": "2025-11-28T10:00:00.250Z"})
        );
        assert_eq!(enc.topic(&r), "site/s1/sensors/d1/temperature");
        assert_eq!(
            enc.presence_topic("d1").as_deref(),
            Some("site/s1/status/d1")
        );
        assert_eq!(enc.batch_topic(), "site/s1/batch");
    }
}
