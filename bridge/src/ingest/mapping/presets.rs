//! The shipped mappings, enabled by name in `[ingest] presets` (docs/mappings.md shows each
//! one's topics and payloads; `edgewatch sim --shape NAME` publishes them).

use std::collections::BTreeMap;

use super::{MappingConfig, PayloadRule};

/// The preset names.
pub const NAMES: [&str; 5] = [
    "tasmota",
    "zigbee2mqtt",
    "shelly",
    "esphome",
    "homeassistant",
];

fn units(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn bare(name: &str, topic: &str, presence: &str, unit_pairs: &[(&str, &str)]) -> MappingConfig {
    MappingConfig {
        name: name.into(),
        topic: topic.into(),
        payload: PayloadRule::Number,
        units: units(unit_pairs),
        presence_topic: Some(presence.into()),
        ..MappingConfig::default()
    }
}

const CLIMATE: [(&str, &str); 4] = [
    ("temperature", "C"),
    ("humidity", "%"),
    ("battery", "%"),
    ("pressure", "hPa"),
];

/// The mappings of preset `name`.
pub fn preset(name: &str) -> Option<Vec<MappingConfig>> {
    let one = match name {
        "tasmota" => tasmota(),
        "zigbee2mqtt" => zigbee2mqtt(),
        // Shelly (Gen 1), `shellies/shelly-1/sensor/temperature` = 21.5; `shellies/shelly-1/online`.
        "shelly" => MappingConfig {
            online: Some("true".into()),
            offline: Some("false".into()),
            ..bare(
                "shelly",
                "shellies/{deviceId}/sensor/{metric}",
                "shellies/{deviceId}/online",
                &[
                    ("temperature", "C"),
                    ("humidity", "%"),
                    ("battery", "%"),
                    ("lux", "lx"),
                ],
            )
        },
        // ESPHome's MQTT component, `node-1/sensor/temperature/state` = 21.5; `node-1/status`.
        "esphome" => bare(
            "esphome",
            "{deviceId}/sensor/{metric}/state",
            "{deviceId}/status",
            &CLIMATE,
        ),
        // Home Assistant MQTT sensors, `homeassistant/sensor/hall/temperature/state` = 21.5.
        "homeassistant" => bare(
            "homeassistant",
            "homeassistant/sensor/{deviceId}/{metric}/state",
            "homeassistant/sensor/{deviceId}/availability",
            &CLIMATE,
        ),
        _ => return None,
    };
    Some(vec![one])
}

/// Tasmota's telemetry, `tele/plug-1/SENSOR`:
/// {"Time":"2026-12-07T10:00:00","ENERGY":{"Power":12,...},"AM2301":{"Temperature":21.3,...}}.
/// `Time` is local time without an offset: the receive time stands in for it.
fn tasmota() -> MappingConfig {
    MappingConfig {
        name: "tasmota".into(),
        topic: "tele/{deviceId}/SENSOR".into(),
        payload: PayloadRule::Object,
        units: units(&[
            ("Temperature", "C"),
            ("DewPoint", "C"),
            ("Humidity", "%"),
            ("Pressure", "hPa"),
            ("Power", "W"),
            ("ApparentPower", "VA"),
            ("ReactivePower", "var"),
            ("Voltage", "V"),
            ("Current", "A"),
            ("Total", "kWh"),
            ("Today", "kWh"),
            ("Yesterday", "kWh"),
        ]),
        presence_topic: Some("tele/{deviceId}/LWT".into()),
        ..MappingConfig::default()
    }
}

/// Zigbee2MQTT, `zigbee2mqtt/kitchen`: {"temperature":21.5,"humidity":45,"battery":97,...};
/// availability `zigbee2mqtt/kitchen/availability` {"state":"online"} (or `online`).
fn zigbee2mqtt() -> MappingConfig {
    MappingConfig {
        name: "zigbee2mqtt".into(),
        topic: "zigbee2mqtt/{deviceId}".into(),
        payload: PayloadRule::Object,
        units: units(&[
            ("temperature", "C"),
            ("humidity", "%"),
            ("battery", "%"),
            ("pressure", "hPa"),
            ("voltage", "mV"),
            ("illuminance", "lx"),
            ("illuminance_lux", "lx"),
            ("power", "W"),
            ("energy", "kWh"),
            ("linkquality", "lqi"),
        ]),
        presence_topic: Some("zigbee2mqtt/{deviceId}/availability".into()),
        presence_field: Some("state".into()),
        ..MappingConfig::default()
    }
}
