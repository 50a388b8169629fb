//! Ingest mappings: readings from devices that publish outside `sensors/...` in their own
//! firmware's shape (Tasmota, Zigbee2MQTT, Shelly, ESPHome, Home Assistant, or any other),
//! configured in `[ingest]` and checked by `check-config` (docs/mappings.md).
//!
//! A mapping names a topic pattern (`tele/{deviceId}/SENSOR`: [`pattern`]) and a payload rule:
//! * `number`: the payload is a bare number (the metric from `{metric}` or `metric`);
//! * `field`: one field of a JSON object (`field = "ENERGY.Power"`, dotted for nested ones);
//! * `object`: every numeric field of a JSON object is its own metric, nested objects giving
//!   dotted names (`AM2301.Temperature`); text, booleans, arrays and `skip`ped fields are left
//!   out.
//!
//! with an optional unit map (by metric, or by its last dotted part: `Temperature = "C"`), a
//! timestamp field (RFC 3339 or epoch milliseconds; without it the receive time) and a
//! presence topic (`online` / `offline` payloads, or a JSON field). One publish may give up to
//! [`MAX_READINGS`] readings: each gets its own seq, and all of them are stored in one batch or
//! none. What a mapping cannot decode is a reject naming the mapping
//! (`edgewatch_ingest_mapping_rejects_total{mapping}`), never a partial set of readings.
//!
//! Mappings are tried in order (those of `mapping` first, then the presets) and the first
//! whose pattern matches decides; topics no mapping matches stay ignored.

mod fields;
pub mod pattern;
pub mod presets;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use edgewatch_protocol::payload::{is_valid_id, MAX_FUTURE_SKEW_MS, MAX_ID_LEN, MIN_EVENT_TIME_MS};
use edgewatch_protocol::{InvalidSetting, Reading};
use serde::{Deserialize, Serialize};

pub use pattern::TopicPattern;

/// Most readings one publish may give; a payload with more numeric fields is rejected whole.
pub const MAX_READINGS: usize = 100;

/// `[ingest]`: the mappings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Shipped mappings enabled by name: `tasmota`, `zigbee2mqtt`, `shelly`, `esphome`,
    /// `homeassistant` ([`presets`]).
    pub presets: Vec<String>,
    /// `[[ingest.mapping]]`: mappings of your own, tried before the presets.
    pub mapping: Vec<MappingConfig>,
}

/// How a mapping reads a payload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadRule {
    /// A bare number.
    #[default]
    Number,
    /// One field of a JSON object (`field`).
    Field,
    /// Every numeric field of a JSON object.
    Object,
}

/// `[[ingest.mapping]]`: one mapping.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MappingConfig {
    /// Its name, in rejects and metrics.
    pub name: String,
    /// The topic pattern, e.g. `tele/{deviceId}/SENSOR`.
    pub topic: String,
    /// `number`, `field` or `object`. Default `number`.
    pub payload: PayloadRule,
    /// The field a `field` payload is read from (dotted for nested objects).
    pub field: Option<String>,
    /// The metric of a `number` or `field` reading when the topic has no `{metric}`
    /// (default for `field`: the field's name).
    pub metric: Option<String>,
    /// Units by metric, or by a metric's last dotted part.
    pub units: BTreeMap<String, String>,
    /// The field holding the event time (RFC 3339 or epoch ms) in a JSON payload.
    pub timestamp: Option<String>,
    /// Fields an `object` payload leaves out (dotted names).
    pub skip: Vec<String>,
    /// A topic pattern with `{deviceId}` whose payloads say whether the device is online.
    pub presence_topic: Option<String>,
    /// The JSON field of a presence payload that holds the state (else the whole payload).
    pub presence_field: Option<String>,
    /// The online state (compared without case). Default `online`.
    pub online: Option<String>,
    /// The offline state (compared without case). Default `offline`.
    pub offline: Option<String>,
}

/// A mapping ready to use.
#[derive(Debug)]
pub struct Mapping {
    name: String,
    topic: TopicPattern,
    cfg: MappingConfig,
    presence: Option<TopicPattern>,
    /// Readings it gave.
    pub mapped: AtomicU64,
    /// Publishes it rejected.
    pub rejected: AtomicU64,
}

/// The mappings in force.
#[derive(Debug, Default)]
pub struct Mappings {
    list: Vec<Mapping>,
}

/// What a mapping made of a publish.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    /// Readings (one or more), and whether the payload carried the event time.
    Readings {
        /// The readings, in field order.
        readings: Vec<Reading>,
        /// The payload's own timestamp was used.
        device_time: bool,
    },
    /// A presence change.
    Status {
        /// The device.
        device_id: String,
        /// Online or offline.
        online: bool,
    },
}

/// Why a mapping rejected a publish: a stable reason label and a message naming the mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingReject {
    /// E.g. `mapping_no_value`.
    pub reason: &'static str,
    /// For a person: which mapping, what is wrong.
    pub message: String,
    /// The device the topic names, when it is a valid device id.
    pub device_id: Option<String>,
}

impl IngestConfig {
    /// Checks every mapping and preset name (keys like `ingest.mapping[0].topic`).
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        self.compile().map(|_| ())
    }

    /// The mappings: `mapping` in order, then the presets.
    pub fn compile(&self) -> Result<Mappings, InvalidSetting> {
        let mut list = Vec::new();
        for (i, m) in self.mapping.iter().enumerate() {
            list.push(Mapping::new(m.clone(), &format!("ingest.mapping[{i}]"))?);
        }
        for (i, name) in self.presets.iter().enumerate() {
            let key = format!("ingest.presets[{i}]");
            let Some(preset) = presets::preset(name) else {
                let known = presets::NAMES.join(", ");
                return Err(InvalidSetting::new(
                    key,
                    format!("unknown preset {name:?}: one of {known}"),
                ));
            };
            for m in preset {
                list.push(Mapping::new(m, &key)?);
            }
        }
        for (i, m) in list.iter().enumerate() {
            if list[..i].iter().any(|o| o.name == m.name) {
                return Err(InvalidSetting::new(
                    "ingest",
                    format!("two mappings are named {:?}", m.name),
                ));
            }
        }
        Ok(Mappings { list })
    }
}

impl Mapping {
    fn new(cfg: MappingConfig, key: &str) -> Result<Self, InvalidSetting> {
        let bad = |field: &str, msg: String| InvalidSetting::new(format!("{key}.{field}"), msg);
        if !is_valid_id(&cfg.name) {
            return Err(bad(
                "name",
                format!(
                    "{:?}: 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 _ . : -",
                    cfg.name
                ),
            ));
        }
        let topic = TopicPattern::parse(&cfg.topic, true).map_err(|e| bad("topic", e))?;
        match (cfg.payload, &cfg.field) {
            (PayloadRule::Field, None) => {
                return Err(bad(
                    "field",
                    "payload = \"field\" needs the field to read".into(),
                ))
            }
            (PayloadRule::Number | PayloadRule::Object, Some(_)) => {
                return Err(bad("field", "only with payload = \"field\"".into()))
            }
            _ => {}
        }
        if cfg.payload == PayloadRule::Number && !topic.has_metric() && cfg.metric.is_none() {
            return Err(bad(
                "metric",
                "a number payload needs {metric} in the topic or a metric".into(),
            ));
        }
        if let Some(metric) = cfg.metric.as_deref().filter(|m| !is_valid_id(m)) {
            return Err(bad(
                "metric",
                format!("{metric:?} is not a valid metric name"),
            ));
        }
        if cfg.payload == PayloadRule::Number && cfg.timestamp.is_some() {
            return Err(bad("timestamp", "a number payload has no fields".into()));
        }
        let presence = match &cfg.presence_topic {
            Some(p) => Some(TopicPattern::parse(p, false).map_err(|e| bad("presence_topic", e))?),
            None => None,
        };
        Ok(Self {
            name: cfg.name.clone(),
            topic,
            cfg,
            presence,
            mapped: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn reject(&self, reason: &'static str, what: String) -> MappingReject {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        MappingReject {
            reason,
            message: format!("mapping {:?} ({}): {what}", self.name, self.topic),
            device_id: None,
        }
    }

    /// What this mapping makes of a publish; `None` when neither of its patterns matches.
    fn map(
        &self,
        topic: &str,
        payload: &[u8],
        received_at_ms: i64,
    ) -> Option<Result<Mapped, MappingReject>> {
        let named = |mut e: MappingReject, device: &str| {
            e.device_id = is_valid_id(device).then(|| device.to_owned());
            e
        };
        if let Some(parts) = self.topic.matches(topic) {
            let out = self
                .readings(parts, payload, received_at_ms)
                .map_err(|e| named(e, parts.device_id));
            if let Ok(Mapped::Readings { readings, .. }) = &out {
                self.mapped
                    .fetch_add(readings.len() as u64, Ordering::Relaxed);
            }
            return Some(out);
        }
        let parts = self.presence.as_ref()?.matches(topic)?;
        Some(
            self.status(parts.device_id, payload)
                .map_err(|e| named(e, parts.device_id)),
        )
    }

    fn readings(
        &self,
        parts: pattern::Parts<'_>,
        payload: &[u8],
        received_at_ms: i64,
    ) -> Result<Mapped, MappingReject> {
        if !is_valid_id(parts.device_id) {
            let what = format!(
                "device id {:?} from the topic: 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 _ . : -",
                fields::preview(parts.device_id.as_bytes())
            );
            return Err(self.reject("invalid_device_id", what));
        }
        let topic_metric = parts.metric.map(fields::metric_name);
        let (values, timestamp) = match self.cfg.payload {
            PayloadRule::Number => {
                let metric = topic_metric.or(self.cfg.metric.clone()).unwrap_or_default();
                let value =
                    fields::number(payload).map_err(|w| self.reject("mapping_no_value", w))?;
                (vec![(metric, value)], None)
            }
            PayloadRule::Field | PayloadRule::Object => {
                let doc = fields::object(payload).map_err(|w| self.reject("invalid_json", w))?;
                let values = match &self.cfg.field {
                    Some(field) => {
                        let value = fields::field(&doc, field)
                            .map_err(|w| self.reject("mapping_no_value", w))?;
                        let metric = topic_metric
                            .or(self.cfg.metric.clone())
                            .unwrap_or_else(|| fields::metric_name(field));
                        vec![(metric, value)]
                    }
                    None => {
                        fields::numeric_fields(&doc, &self.cfg.skip, self.cfg.timestamp.as_deref())
                    }
                };
                let ts = match &self.cfg.timestamp {
                    Some(f) => fields::timestamp(&doc, f)
                        .map_err(|w| self.reject("invalid_timestamp", w))?,
                    None => None,
                };
                (values, ts)
            }
        };
        if values.is_empty() {
            return Err(self.reject("mapping_no_value", "no numeric field in the payload".into()));
        }
        if values.len() > MAX_READINGS {
            let what = format!("{} numeric fields, at most {MAX_READINGS}", values.len());
            return Err(self.reject("mapping_too_many_fields", what));
        }
        let timestamp_ms = timestamp.unwrap_or(received_at_ms);
        if timestamp_ms < MIN_EVENT_TIME_MS
            || timestamp_ms > received_at_ms.saturating_add(MAX_FUTURE_SKEW_MS)
        {
            let what = format!("timestamp {timestamp_ms} is before 2000 or more than a day ahead");
            return Err(self.reject("timestamp_out_of_range", what));
        }
        let readings = values
            .into_iter()
            .map(|(metric, value)| Reading {
                device_id: parts.device_id.to_owned(),
                unit: self.unit_of(&metric),
                metric,
                value,
                timestamp_ms,
                received_at_ms,
            })
            .collect();
        Ok(Mapped::Readings {
            readings,
            device_time: timestamp.is_some(),
        })
    }

    fn unit_of(&self, metric: &str) -> Option<String> {
        let units = &self.cfg.units;
        let last = metric.rsplit('.').next().unwrap_or(metric);
        units
            .get(metric)
            .or_else(|| units.get(last))
            .filter(|u| !u.is_empty())
            .cloned()
    }

    fn status(&self, device_id: &str, payload: &[u8]) -> Result<Mapped, MappingReject> {
        if !is_valid_id(device_id) {
            let what = format!(
                "device id {:?} from the presence topic",
                fields::preview(device_id.as_bytes())
            );
            return Err(self.reject("invalid_device_id", what));
        }
        let state = fields::state(payload, self.cfg.presence_field.as_deref());
        let is = |want: &Option<String>, default: &str| {
            state.eq_ignore_ascii_case(want.as_deref().unwrap_or(default))
        };
        let online = match () {
            () if is(&self.cfg.online, "online") => true,
            () if is(&self.cfg.offline, "offline") => false,
            () => {
                let what = format!(
                    "presence {:?}: neither online nor offline",
                    fields::preview(state.as_bytes())
                );
                return Err(self.reject("invalid_status", what));
            }
        };
        Ok(Mapped::Status {
            device_id: device_id.to_owned(),
            online,
        })
    }
}

impl Mappings {
    /// What the first matching mapping makes of a publish: `None` when no mapping matches (the
    /// publish stays ignored).
    pub fn map(
        &self,
        topic: &str,
        payload: &[u8],
        received_at_ms: i64,
    ) -> Option<Result<Mapped, MappingReject>> {
        self.list
            .iter()
            .find_map(|m| m.map(topic, payload, received_at_ms))
    }

    /// Whether a mapping's topic or presence pattern matches `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        self.list.iter().any(|m| {
            m.topic.matches(topic).is_some()
                || m.presence
                    .as_ref()
                    .is_some_and(|p| p.matches(topic).is_some())
        })
    }

    /// Takes over the counters of the mappings of `old` with the same names (a reload keeps
    /// them counting on).
    pub fn carry_counters(&self, old: &Mappings) {
        for m in &self.list {
            if let Some(o) = old.list.iter().find(|o| o.name == m.name) {
                m.mapped
                    .store(o.mapped.load(Ordering::Relaxed), Ordering::Relaxed);
                m.rejected
                    .store(o.rejected.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    }

    /// The subscription filters of every mapping's topics (for an external broker).
    pub fn filters(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for m in &self.list {
            for p in std::iter::once(&m.topic).chain(m.presence.as_ref()) {
                let f = p.filter();
                if !out.contains(&f) {
                    out.push(f);
                }
            }
        }
        out
    }

    /// The mappings in force.
    pub fn iter(&self) -> impl Iterator<Item = &Mapping> {
        self.list.iter()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
mod tests;
