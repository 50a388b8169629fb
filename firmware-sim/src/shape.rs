//! Device shapes: the topics and payloads of popular firmwares, so a fleet can look like
//! Tasmota plugs, Zigbee2MQTT sensors, Shelly H&T, ESPHome nodes or Home Assistant MQTT
//! sensors instead of edgewatch's own `sensors/{deviceId}/{metric}` readings.
//!
//! Device `D`, one tick (one sample of every signal of the shape):
//!
//! | shape | readings | presence (retained; last will) |
//! | --- | --- | --- |
//! | `native` | `sensors/D/{metric}` per metric (`--format`, `--topic-shape`) | `sensors/D/status` `online`; `offline` |
//! | `tasmota` | `tele/D/SENSOR` `{"Time":..,"ENERGY":{..},"AM2301":{..},"TempUnit":"C"}` | `tele/D/LWT` `Online`; `Offline` |
//! | `zigbee2mqtt` | `zigbee2mqtt/D` `{"temperature":21.5,"humidity":45,"battery":97,"linkquality":120,"voltage":2985}` | `zigbee2mqtt/D/availability` `{"state":"online"}`; `{"state":"offline"}` |
//! | `shelly` | `shellies/D/sensor/{temperature,humidity,battery}` bare numbers | `shellies/D/online` `true`; `false` |
//! | `esphome` | `D/sensor/{temperature,humidity}/state` `21.5`, `45.0` | `D/status` `online`; `offline` |
//! | `homeassistant` | `homeassistant/sensor/D/{temperature,humidity}/state` `21.5`, `45` | `homeassistant/sensor/D/availability` `online`; `offline` |
//!
//! Tasmota's `ENERGY` carries 9 numbers (`Total`, `Yesterday`, `Today` in kWh, integrated
//! from the power signal; `Power`, `ApparentPower`, `ReactivePower` in W/VA/var; `Factor`;
//! `Voltage` in V; `Current` in A) and `AM2301` 3 (`Temperature`, `Humidity`, `DewPoint`):
//! 12 readings per publish. Its `Time` is the device's local time without an offset; the
//! simulated device's clock is set to UTC (Tasmota's `Timezone 0`). A Zigbee2MQTT publish
//! carries 5 numbers; the other shapes one per publish.
//!
//! When a signal drops out (a simulated fault), a one-number shape skips that publish; Tasmota
//! and Zigbee2MQTT skip the whole tick's publish, so every publish carries all its numbers.

use std::fmt;

use edgewatch_protocol::timefmt::format_rfc3339;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::signal::MetricSpec;

/// The firmware whose topics and payloads a simulated device imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// edgewatch's own: `sensors/D/{metric}` readings (`--metrics`, `--format`,
    /// `--topic-shape`), presence `sensors/D/status` `online`/`offline`.
    #[default]
    Native,
    /// Tasmota (energy plug with an AM2301 sensor): one `tele/D/SENSOR` JSON per tick with
    /// `ENERGY` (9 numbers) and `AM2301` (3 numbers); presence `tele/D/LWT` `Online`/`Offline`.
    Tasmota,
    /// Zigbee2MQTT: one `zigbee2mqtt/D` JSON per tick with temperature, humidity, battery,
    /// linkquality and voltage (5 numbers); presence `zigbee2mqtt/D/availability`
    /// `{"state":"online"}`/`{"state":"offline"}`.
    Zigbee2mqtt,
    /// Shelly (H&T, Gen1): `shellies/D/sensor/{temperature,humidity,battery}` bare numbers
    /// (`21.5`, `45`, `97`); presence `shellies/D/online` `true`/`false`.
    Shelly,
    /// ESPHome: `D/sensor/{temperature,humidity}/state` bare numbers (`21.5`, `45.0`);
    /// presence `D/status` `online`/`offline`.
    Esphome,
    /// Home Assistant MQTT sensors: `homeassistant/sensor/D/{temperature,humidity}/state`
    /// bare numbers (`21.5`, `45`); presence `homeassistant/sensor/D/availability`
    /// `online`/`offline`.
    Homeassistant,
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Shape::Native => "native",
            Shape::Tasmota => "tasmota",
            Shape::Zigbee2mqtt => "zigbee2mqtt",
            Shape::Shelly => "shelly",
            Shape::Esphome => "esphome",
            Shape::Homeassistant => "homeassistant",
        })
    }
}

/// A device's presence messages: retained `online` at connect, `offline` as the last will
/// (and published at an orderly end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The presence topic.
    pub topic: String,
    /// Payload while connected.
    pub online: &'static str,
    /// Payload of the last will.
    pub offline: &'static str,
}

/// One MQTT publish of a shaped device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    /// Topic.
    pub(crate) topic: String,
    /// Payload bytes (UTF-8 text: JSON or a bare number).
    pub(crate) payload: Vec<u8>,
}

impl Shape {
    /// The signals one tick samples, in order (empty for `native`: the run's `--metrics`).
    pub fn signals(self) -> &'static [&'static str] {
        match self {
            Shape::Native => &[],
            Shape::Tasmota => &["temperature", "humidity", "power", "voltage"],
            Shape::Zigbee2mqtt => &["temperature", "humidity", "battery", "linkquality"],
            Shape::Shelly => &["temperature", "humidity", "battery"],
            Shape::Esphome | Shape::Homeassistant => &["temperature", "humidity"],
        }
    }

    /// Whether one tick is one publish carrying every signal (else one publish per signal).
    fn one_publish_per_tick(self) -> bool {
        matches!(self, Shape::Tasmota | Shape::Zigbee2mqtt)
    }

    /// Publishes of one device per tick (`native`: `metrics`, one per metric).
    pub fn publishes_per_tick(self, metrics: usize) -> usize {
        match self {
            Shape::Native => metrics,
            _ if self.one_publish_per_tick() => 1,
            _ => self.signals().len(),
        }
    }

    /// Numeric fields in one publish: the readings a hub that decodes every number of the
    /// payload stores per publish (12 for Tasmota, 5 for Zigbee2MQTT, else 1).
    pub fn readings_per_publish(self) -> u64 {
        match self {
            Shape::Tasmota => 12,
            Shape::Zigbee2mqtt => 5,
            _ => 1,
        }
    }

    /// The behaviour of signal `name` of this shape.
    pub(crate) fn spec(name: &str) -> MetricSpec {
        let base = MetricSpec::for_name(name);
        match name {
            // A small appliance on a plug: tens of watts, a daily pattern.
            "power" => MetricSpec {
                unit: Some("W"),
                base: 40.0,
                daily_amplitude: 20.0,
                noise: 2.0,
                drift_step: 0.1,
                min: 0.0,
                max: 3680.0,
                decimals: 0,
                ..base
            },
            "linkquality" => MetricSpec {
                unit: None,
                base: 120.0,
                daily_amplitude: 10.0,
                noise: 6.0,
                drift_step: 0.5,
                spike_scale: 1.0,
                min: 0.0,
                max: 255.0,
                decimals: 0,
                ..base
            },
            _ => base,
        }
    }

    /// The presence topic and payloads of device `id`.
    pub fn presence(self, id: &str) -> Presence {
        let (topic, online, offline) = match self {
            Shape::Native => (format!("sensors/{id}/status"), "online", "offline"),
            Shape::Tasmota => (format!("tele/{id}/LWT"), "Online", "Offline"),
            Shape::Zigbee2mqtt => (
                format!("zigbee2mqtt/{id}/availability"),
                r#"{"state":"online"}"#,
                r#"{"state":"offline"}"#,
            ),
            Shape::Shelly => (format!("shellies/{id}/online"), "true", "false"),
            Shape::Esphome => (format!("{id}/status"), "online", "offline"),
            Shape::Homeassistant => (
                format!("homeassistant/sensor/{id}/availability"),
                "online",
                "offline",
            ),
        };
        Presence {
            topic,
            online,
            offline,
        }
    }

    /// The topic filter matching every reading publish of this shape (and no presence one).
    pub fn readings_filter(self) -> &'static str {
        match self {
            Shape::Native => "sensors/#",
            Shape::Tasmota => "tele/+/SENSOR",
            Shape::Zigbee2mqtt => "zigbee2mqtt/+",
            Shape::Shelly => "shellies/+/sensor/+",
            Shape::Esphome => "+/sensor/+/state",
            Shape::Homeassistant => "homeassistant/sensor/+/+/state",
        }
    }

    /// The device id of a reading publish of this shape on `topic` (`None` for `native`, whose
    /// payloads are decoded instead, and for topics that are not this shape's readings).
    pub fn device_of(self, topic: &str) -> Option<&str> {
        let levels: Vec<&str> = topic.split('/').collect();
        let signal = |m: &str| self.signals().contains(&m);
        let device = match (self, levels.as_slice()) {
            (Shape::Tasmota, ["tele", d, "SENSOR"]) => *d,
            (Shape::Zigbee2mqtt, ["zigbee2mqtt", d]) if *d != "bridge" => *d,
            (Shape::Shelly, ["shellies", d, "sensor", m]) if signal(m) => *d,
            (Shape::Esphome, [d, "sensor", m, "state"]) if signal(m) => *d,
            (Shape::Homeassistant, ["homeassistant", "sensor", d, m, "state"]) if signal(m) => *d,
            _ => return None,
        };
        (!device.is_empty()).then_some(device)
    }
}

/// A shaped device's own state across ticks: Tasmota's energy counters.
#[derive(Debug, Clone)]
pub(crate) struct ShapedDevice {
    shape: Shape,
    id: String,
    energy: Energy,
}

/// Tasmota's energy counters of one plug, in kWh, integrated from its power samples.
#[derive(Debug, Clone)]
struct Energy {
    /// When the counter started (epoch ms), `TotalStartTime`.
    start_ms: i64,
    total: f64,
    today: f64,
    yesterday: f64,
    /// The UTC day (days since the epoch) `today` counts.
    day: i64,
    last_ms: Option<i64>,
    /// Power factor of the load.
    factor: f64,
}

const DAY_MS: i64 = 86_400_000;

impl ShapedDevice {
    /// Device `id` (number `index` of the fleet) of `shape`, its counters seeded by `seed`;
    /// `now_ms` is the time of its first sample.
    pub(crate) fn new(shape: Shape, id: &str, seed: u64, index: u32, now_ms: i64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (u64::from(index) << 24) ^ 0x7a5);
        // In use for a month to a year, about 1 kWh a day.
        let days: i64 = rng.gen_range(30..366);
        let daily = rng.gen_range(0.7..1.3);
        let day_fraction = now_ms.rem_euclid(DAY_MS) as f64 / DAY_MS as f64;
        let energy = Energy {
            start_ms: now_ms - days * DAY_MS,
            total: days as f64 * daily,
            today: day_fraction * daily,
            yesterday: daily * rng.gen_range(0.8..1.2),
            day: now_ms.div_euclid(DAY_MS),
            last_ms: None,
            factor: rng.gen_range(0.6..0.95),
        };
        ShapedDevice {
            shape,
            id: id.to_owned(),
            energy,
        }
    }

    /// The publishes of one tick at `time_ms` from `values` (one per [`Shape::signals`], `None`
    /// for a dropout), and how many publishes dropouts skipped.
    pub(crate) fn tick(&mut self, values: &[Option<f64>], time_ms: i64) -> (Vec<Message>, u64) {
        let shape = self.shape;
        if shape.one_publish_per_tick() {
            return match values {
                [Some(a), Some(b), Some(c), Some(d)] => {
                    (vec![self.composite([*a, *b, *c, *d], time_ms)], 0)
                }
                _ => (Vec::new(), 1),
            };
        }
        let mut messages = Vec::with_capacity(values.len());
        let mut skipped = 0;
        for (name, value) in shape.signals().iter().zip(values) {
            match value {
                Some(v) => messages.push(self.single(name, *v)),
                None => skipped += 1,
            }
        }
        (messages, skipped)
    }

    /// The one publish of a tick of Tasmota or Zigbee2MQTT, from its four signals.
    fn composite(&mut self, [a, b, c, d]: [f64; 4], time_ms: i64) -> Message {
        let (topic, payload) = match self.shape {
            Shape::Tasmota => (
                format!("tele/{}/SENSOR", self.id),
                self.tasmota(a, b, c, d, time_ms),
            ),
            _ => (format!("zigbee2mqtt/{}", self.id), zigbee2mqtt(a, b, c, d)),
        };
        Message {
            topic,
            payload: payload.into_bytes(),
        }
    }

    fn single(&self, name: &str, value: f64) -> Message {
        let id = &self.id;
        let (topic, payload) = match self.shape {
            Shape::Shelly => (
                format!("shellies/{id}/sensor/{name}"),
                if name == "battery" {
                    num(value, 0)
                } else {
                    num(value, 1)
                },
            ),
            // ESPHome writes its `accuracy_decimals` (1 here), trailing zero included.
            Shape::Esphome => (
                format!("{id}/sensor/{name}/state"),
                format!("{:.1}", round(value, 1)),
            ),
            _ => (
                format!("homeassistant/sensor/{id}/{name}/state"),
                num(value, 1),
            ),
        };
        Message {
            topic,
            payload: payload.into_bytes(),
        }
    }

    /// Tasmota's `tele/D/SENSOR` with the energy counters advanced to `time_ms`.
    fn tasmota(&mut self, temp: f64, hum: f64, power: f64, volts: f64, time_ms: i64) -> String {
        let e = &mut self.energy;
        let power = power.max(0.0).round();
        // The energy since the last tick (seconds ago) counts for the day it started in.
        if let Some(last) = e.last_ms {
            let kwh = power * (time_ms - last).max(0) as f64 / 3_600_000.0 / 1000.0;
            e.total += kwh;
            e.today += kwh;
        }
        e.last_ms = Some(time_ms);
        let day = time_ms.div_euclid(DAY_MS);
        if day > e.day {
            e.yesterday = if day == e.day + 1 { e.today } else { 0.0 };
            e.today = 0.0;
            e.day = day;
        }
        let volts = volts.max(1.0).round();
        let factor = if power > 0.0 { e.factor } else { 0.0 };
        let apparent = if factor > 0.0 { power / factor } else { 0.0 };
        let reactive = (apparent * apparent - power * power).max(0.0).sqrt();
        format!(
            concat!(
                r#"{{"Time":"{}","ENERGY":{{"TotalStartTime":"{}","Total":{},"Yesterday":{},"#,
                r#""Today":{},"Power":{},"ApparentPower":{},"ReactivePower":{},"Factor":{},"#,
                r#""Voltage":{},"Current":{}}},"AM2301":{{"Temperature":{},"Humidity":{},"#,
                r#""DewPoint":{}}},"TempUnit":"C"}}"#
            ),
            local_time(time_ms),
            local_time(e.start_ms),
            num(e.total, 3),
            num(e.yesterday, 3),
            num(e.today, 3),
            num(power, 0),
            num(apparent, 0),
            num(reactive, 0),
            num(factor, 2),
            num(volts, 0),
            num(apparent / volts, 3),
            num(temp, 1),
            num(hum, 1),
            num(dew_point(temp, hum), 1),
        )
    }
}

/// Zigbee2MQTT's state message; `voltage` is the coin cell's, in mV, from the battery level.
fn zigbee2mqtt(temp: f64, hum: f64, battery: f64, linkquality: f64) -> String {
    format!(
        r#"{{"temperature":{},"humidity":{},"battery":{},"linkquality":{},"voltage":{}}}"#,
        num(temp, 2),
        num(hum, 1),
        num(battery, 0),
        num(linkquality, 0),
        num(2500.0 + 5.0 * battery, 0),
    )
}

/// `value` rounded to `decimals`, written the shortest way (`45`, `21.5`; never `-0`).
fn num(value: f64, decimals: i32) -> String {
    round(value, decimals).to_string()
}

/// `value` rounded to `decimals`; `-0.0` becomes `0.0`, and what is not finite `0.0`.
fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    let rounded = (value * scale).round() / scale + 0.0;
    if rounded.is_finite() {
        rounded
    } else {
        0.0
    }
}

/// `2026-12-07T10:00:00`: Tasmota's local time, without an offset (the clock is on UTC).
fn local_time(ms: i64) -> String {
    let mut text = format_rfc3339(ms);
    text.truncate(19);
    text
}

/// The dew point in °C (Magnus formula, as Tasmota computes it).
fn dew_point(temp: f64, humidity: f64) -> f64 {
    let (a, b) = (17.62, 243.12);
    let gamma = (humidity.clamp(1.0, 100.0) / 100.0).ln() + a * temp / (b + temp);
    b * gamma / (a - gamma)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const T: i64 = 1_796_637_600_000; // 2026-12-07T10:00:00Z

    fn one(shape: Shape, values: &[f64]) -> Vec<Message> {
        let mut device = ShapedDevice::new(shape, "D", 1, 0, T);
        let values: Vec<Option<f64>> = values.iter().copied().map(Some).collect();
        let (messages, skipped) = device.tick(&values, T);
        assert_eq!(skipped, 0);
        assert_eq!(messages.len(), shape.publishes_per_tick(0));
        for m in &messages {
            assert_eq!(shape.device_of(&m.topic), Some("D"), "{}", m.topic);
        }
        messages
    }

    fn json(m: &Message) -> Value {
        serde_json::from_slice(&m.payload).unwrap()
    }

    fn text(m: &Message) -> &str {
        std::str::from_utf8(&m.payload).unwrap()
    }

    /// Every number of a JSON document, recursively.
    fn numbers(v: &Value) -> usize {
        match v {
            Value::Number(_) => 1,
            Value::Object(o) => o.values().map(numbers).sum(),
            Value::Array(a) => a.iter().map(numbers).sum(),
            _ => 0,
        }
    }

    #[test]
    fn tasmota_sensor_and_lwt() {
        let m = one(Shape::Tasmota, &[21.34, 45.02, 12.0, 229.6]);
        assert_eq!(m[0].topic, "tele/D/SENSOR");
        let v = json(&m[0]);
        assert_eq!(v["Time"], "2026-12-07T10:00:00");
        assert_eq!(v["TempUnit"], "C");
        let e = &v["ENERGY"];
        assert_eq!(e["Power"], 12.0);
        assert_eq!(e["Voltage"], 230.0);
        let factor = e["Factor"].as_f64().unwrap();
        assert!((0.6..=0.95).contains(&factor), "{v}");
        let apparent = e["ApparentPower"].as_f64().unwrap();
        assert!((apparent - 12.0 / factor).abs() <= 0.5, "{v}");
        let current = e["Current"].as_f64().unwrap();
        assert!((current - apparent / 230.0).abs() < 0.003, "{v}");
        let start = e["TotalStartTime"].as_str().unwrap();
        assert!(start.len() == 19 && start < "2026-12-07", "{start}");
        assert!(e["Total"].as_f64().unwrap() > e["Today"].as_f64().unwrap());
        let am = &v["AM2301"];
        assert_eq!(
            (am["Temperature"].as_f64(), am["Humidity"].as_f64()),
            (Some(21.3), Some(45.0))
        );
        let dew = am["DewPoint"].as_f64().unwrap();
        assert!((dew - 9.0).abs() < 0.5, "{dew}");
        assert_eq!(numbers(&v), 9 + 3);
        assert_eq!(numbers(e), 9);
        assert_eq!(numbers(&v) as u64, Shape::Tasmota.readings_per_publish());
        let p = Shape::Tasmota.presence("D");
        assert_eq!(
            (p.topic.as_str(), p.online, p.offline),
            ("tele/D/LWT", "Online", "Offline")
        );
    }

    #[test]
    fn tasmota_energy_counts_up_and_rolls_over_at_midnight() {
        let mut device = ShapedDevice::new(Shape::Tasmota, "D", 1, 0, T);
        let tick = |d: &mut ShapedDevice, at: i64| {
            let (m, _) = d.tick(&[Some(21.0), Some(45.0), Some(1000.0), Some(230.0)], at);
            json(&m[0])["ENERGY"].clone()
        };
        let first = tick(&mut device, T);
        // One hour at 1000 W: 1 kWh more.
        let later = tick(&mut device, T + 3_600_000);
        let delta = later["Total"].as_f64().unwrap() - first["Total"].as_f64().unwrap();
        assert!((delta - 1.0).abs() < 0.002, "{first} {later}");
        let today = later["Today"].as_f64().unwrap();
        let next_day = tick(&mut device, T + 14 * 3_600_000);
        assert!(next_day["Today"].as_f64().unwrap() < 1.0, "{next_day}");
        assert!(
            next_day["Yesterday"].as_f64().unwrap() >= today,
            "{next_day}"
        );
    }

    #[test]
    fn zigbee2mqtt_state_and_availability() {
        let m = one(Shape::Zigbee2mqtt, &[21.5, 45.0, 97.0, 120.0]);
        assert_eq!(m[0].topic, "zigbee2mqtt/D");
        let v = json(&m[0]);
        assert_eq!(v["temperature"], 21.5);
        assert_eq!(v["humidity"], 45.0);
        assert_eq!(v["battery"], 97.0);
        assert_eq!(v["linkquality"], 120.0);
        assert_eq!(v["voltage"], 2985.0);
        assert_eq!(
            numbers(&v) as u64,
            Shape::Zigbee2mqtt.readings_per_publish()
        );
        let p = Shape::Zigbee2mqtt.presence("D");
        assert_eq!(p.topic, "zigbee2mqtt/D/availability");
        assert_eq!(
            serde_json::from_str::<Value>(p.online).unwrap()["state"],
            "online"
        );
        assert_eq!(
            serde_json::from_str::<Value>(p.offline).unwrap()["state"],
            "offline"
        );
        assert_eq!(Shape::Zigbee2mqtt.device_of("zigbee2mqtt/bridge"), None);
        assert_eq!(
            Shape::Zigbee2mqtt.device_of("zigbee2mqtt/D/availability"),
            None
        );
    }

    #[test]
    fn shelly_bare_numbers_per_metric() {
        let m = one(Shape::Shelly, &[21.5, 45.0, 97.0]);
        let got: Vec<(&str, &str)> = m.iter().map(|m| (m.topic.as_str(), text(m))).collect();
        assert_eq!(
            got,
            [
                ("shellies/D/sensor/temperature", "21.5"),
                ("shellies/D/sensor/humidity", "45"),
                ("shellies/D/sensor/battery", "97"),
            ]
        );
        let p = Shape::Shelly.presence("D");
        assert_eq!(
            (p.topic.as_str(), p.online, p.offline),
            ("shellies/D/online", "true", "false")
        );
    }

    #[test]
    fn esphome_states_with_their_decimals() {
        let m = one(Shape::Esphome, &[21.5, 45.0]);
        let got: Vec<(&str, &str)> = m.iter().map(|m| (m.topic.as_str(), text(m))).collect();
        assert_eq!(
            got,
            [
                ("D/sensor/temperature/state", "21.5"),
                ("D/sensor/humidity/state", "45.0"),
            ]
        );
        let p = Shape::Esphome.presence("D");
        assert_eq!(
            (p.topic.as_str(), p.online, p.offline),
            ("D/status", "online", "offline")
        );
        assert_eq!(Shape::Esphome.device_of("D/status"), None);
    }

    #[test]
    fn homeassistant_states_and_availability() {
        let m = one(Shape::Homeassistant, &[21.5, 45.0]);
        let got: Vec<(&str, &str)> = m.iter().map(|m| (m.topic.as_str(), text(m))).collect();
        assert_eq!(
            got,
            [
                ("homeassistant/sensor/D/temperature/state", "21.5"),
                ("homeassistant/sensor/D/humidity/state", "45"),
            ]
        );
        let p = Shape::Homeassistant.presence("D");
        assert_eq!(
            (p.topic.as_str(), p.online, p.offline),
            ("homeassistant/sensor/D/availability", "online", "offline")
        );
    }

    #[test]
    fn every_bare_number_parses_and_presence_is_not_a_reading() {
        for shape in [Shape::Shelly, Shape::Esphome, Shape::Homeassistant] {
            for m in one(shape, &[-0.04, 100.0, 0.0][..shape.signals().len()]) {
                let v: f64 = text(&m).parse().unwrap();
                assert!(!text(&m).starts_with("-0"), "{shape}: {}", text(&m));
                assert!(v.is_finite());
            }
            assert_eq!(shape.device_of(&shape.presence("D").topic), None, "{shape}");
        }
        assert_eq!(Shape::Tasmota.device_of("tele/D/LWT"), None);
        assert_eq!(Shape::Shelly.device_of("shellies/D/online"), None);
    }

    #[test]
    fn a_dropout_skips_the_publish_not_a_field() {
        let mut device = ShapedDevice::new(Shape::Zigbee2mqtt, "D", 1, 0, T);
        let (m, skipped) = device.tick(&[Some(21.0), None, Some(90.0), Some(100.0)], T);
        assert_eq!((m.len(), skipped), (0, 1));
        let mut device = ShapedDevice::new(Shape::Shelly, "D", 1, 0, T);
        let (m, skipped) = device.tick(&[Some(21.0), None, Some(90.0)], T);
        assert_eq!((m.len(), skipped), (2, 1));
    }

    #[test]
    fn shape_signals_stay_realistic() {
        use crate::signal::{Faults, Signal};
        for name in ["power", "linkquality", "temperature", "humidity", "battery"] {
            let mut s = Signal::new(Shape::spec(name), Faults::none(), 1, 0, 0);
            for i in 0..1000 {
                let v = s.sample(T + i * 60_000).unwrap();
                let ok = match name {
                    "power" => (0.0..=100.0).contains(&v),
                    "linkquality" => (0.0..=255.0).contains(&v),
                    "temperature" => (10.0..=30.0).contains(&v),
                    _ => (0.0..=100.0).contains(&v),
                };
                assert!(ok, "{name} {v}");
            }
        }
    }
}
