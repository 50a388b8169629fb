//! [`FleetConfig`]: what a fleet run is asked to do, and its checks.

use std::time::Duration;

use edgewatch_protocol::payload::is_valid_id;

use crate::payload::{Format, TopicShape};
use crate::shape::Shape;
use crate::signal::Faults;
use crate::SimError;

/// Everything a fleet run needs. [`FleetConfig::default`] is one device publishing
/// temperature and humidity every second to `127.0.0.1:1883` until shut down.
///
/// Counts (`max`, `rate`, the report's) are of publishes: in the `native` shape each publish is
/// one reading; other shapes carry [`Shape::readings_per_publish`] numbers in each.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// Broker host name or address.
    pub broker_host: String,
    /// Broker MQTT port.
    pub broker_port: u16,
    /// Number of devices, 1 to [`FleetConfig::MAX_DEVICES`].
    pub devices: u32,
    /// Firmware whose topics and payloads the devices imitate; `metrics`, `format` and
    /// `topic_shape` apply to [`Shape::Native`] only.
    pub shape: Shape,
    /// Metric names each device reports (see [`MetricSpec::for_name`](crate::signal::MetricSpec::for_name)).
    pub metrics: Vec<String>,
    /// Time between two samples of one device (ignored with `rate`).
    pub interval: Duration,
    /// Each interval is varied by up to this much either way.
    pub jitter: Duration,
    /// MQTT QoS of readings: 0 or 1.
    pub qos: u8,
    /// Payload format.
    pub format: Format,
    /// Topic shape.
    pub topic_shape: TopicShape,
    /// Seed of every signal and jitter: the same seed gives the same values.
    pub seed: u64,
    /// Device ids are `{id_prefix}-{index}`, index from 0; also the MQTT client id.
    pub id_prefix: String,
    /// MQTT username for every device.
    pub username: Option<String>,
    /// MQTT password for every device.
    pub password: Option<String>,
    /// Total publishes (readings) per second across the fleet; sets the per-device interval.
    pub rate: Option<f64>,
    /// Stop after this many publishes (readings) in total.
    pub max: Option<u64>,
    /// Stop sampling after this long, counted from when sending starts (after the connects).
    pub duration: Option<Duration>,
    /// Subscribe to `sensors/#` on the same broker and check delivery and latency.
    pub verify: bool,
    /// Spikes and faults of the signals.
    pub faults: Faults,
    /// Readings one device keeps while it cannot send; when full the oldest is dropped.
    pub buffer_capacity: usize,
    /// New connections per second across the fleet at start (staggered connects).
    pub connect_rate: u32,
    /// Sending starts once every device connected, or when this much time passed after the
    /// last device's connect slot (`devices / connect_rate`) with some still unconnected. If
    /// none connected by then, or the broker refuses the first connections, the run fails.
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles per failure, with jitter.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// How long devices keep trying to deliver what they hold once sampling stopped.
    pub drain_timeout: Duration,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Print a progress line to stderr once per second.
    pub progress: bool,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            broker_host: "127.0.0.1".to_owned(),
            broker_port: 1883,
            devices: 1,
            shape: Shape::Native,
            metrics: vec!["temperature".to_owned(), "humidity".to_owned()],
            interval: Duration::from_secs(1),
            jitter: Duration::ZERO,
            qos: 1,
            format: Format::Json,
            topic_shape: TopicShape::Device,
            seed: 1,
            id_prefix: "sim".to_owned(),
            username: None,
            password: None,
            rate: None,
            max: None,
            duration: None,
            verify: false,
            faults: Faults::default(),
            buffer_capacity: 1000,
            connect_rate: 500,
            connect_timeout: Duration::from_secs(20),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(30),
            progress: false,
        }
    }
}

impl FleetConfig {
    /// Largest fleet one process runs.
    pub const MAX_DEVICES: u32 = 100_000;

    /// Checks the values; the error names the option.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |option: &'static str, reason: String| Err(SimError::Invalid { option, reason });
        if self.devices == 0 || self.devices > Self::MAX_DEVICES {
            return bad(
                "devices",
                format!("must be 1 to {}, got {}", Self::MAX_DEVICES, self.devices),
            );
        }
        self.validate_metrics()?;
        let longest_id = format!("{}-{}", self.id_prefix, self.devices - 1);
        if !is_valid_id(&longest_id) {
            return bad(
                "id-prefix",
                format!("device id {longest_id:?} must be 1 to 64 of A-Z a-z 0-9 _ . : -"),
            );
        }
        if self.qos > 1 {
            return bad("qos", format!("must be 0 or 1, got {}", self.qos));
        }
        if self.shape == Shape::Native
            && self.format == Format::Number
            && self.topic_shape == TopicShape::Shared
        {
            return bad(
                "format",
                "`number` carries no device id, so it needs `--topic-shape device`".to_owned(),
            );
        }
        match self.rate {
            Some(r) if !(r.is_finite() && r > 0.0 && r <= 10_000_000.0) => {
                return bad("rate", format!("must be above 0 and at most 1e7, got {r}"));
            }
            None if self.interval.is_zero() => {
                return bad("interval-ms", "must be above 0".to_owned());
            }
            _ => {}
        }
        if self.buffer_capacity == 0 {
            return bad("buffer", "must be at least 1".to_owned());
        }
        if self.connect_rate == 0 {
            return bad("connect-rate", "must be at least 1".to_owned());
        }
        if self.connect_timeout.is_zero() {
            return bad("connect-timeout", "must be above 0".to_owned());
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return bad(
                "backoff",
                "minimum must be above 0 and at most the maximum".to_owned(),
            );
        }
        Ok(())
    }

    fn validate_metrics(&self) -> Result<(), SimError> {
        let bad = |reason: String| {
            Err(SimError::Invalid {
                option: "metrics",
                reason,
            })
        };
        if self.shape != Shape::Native {
            // The shape's own signals; `metrics` is not used.
            return Ok(());
        }
        if self.metrics.is_empty() || self.metrics.len() > 64 {
            return bad("give 1 to 64 metric names".to_owned());
        }
        if let Some(m) = self
            .metrics
            .iter()
            .find(|m| !is_valid_id(m) || *m == "status")
        {
            return bad(format!(
                "{m:?} is not a metric name (1 to 64 of A-Z a-z 0-9 _ . : -, not `status`)"
            ));
        }
        Ok(())
    }

    /// The signals every device samples each tick: `metrics` in the native shape, else the
    /// shape's own.
    pub fn signal_names(&self) -> Vec<String> {
        match self.shape {
            Shape::Native => self.metrics.clone(),
            shape => shape.signals().iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// Publishes of one device per tick.
    pub fn publishes_per_tick(&self) -> usize {
        self.shape.publishes_per_tick(self.metrics.len())
    }

    /// The per-device sampling interval: `interval`, or what `rate` implies.
    pub fn effective_interval(&self) -> Duration {
        match self.rate {
            Some(rate) => Duration::from_secs_f64(
                f64::from(self.devices) * self.publishes_per_tick() as f64 / rate,
            ),
            None => self.interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_option() {
        let cfg = FleetConfig {
            format: Format::Number,
            topic_shape: TopicShape::Shared,
            ..FleetConfig::default()
        };
        assert!(matches!(
            cfg.validate(),
            Err(SimError::Invalid {
                option: "format",
                ..
            })
        ));
        let cfg = FleetConfig {
            devices: 0,
            ..FleetConfig::default()
        };
        assert!(matches!(
            cfg.validate(),
            Err(SimError::Invalid {
                option: "devices",
                ..
            })
        ));
        let cfg = FleetConfig {
            metrics: vec!["a/b".to_owned()],
            ..FleetConfig::default()
        };
        assert!(matches!(
            cfg.validate(),
            Err(SimError::Invalid {
                option: "metrics",
                ..
            })
        ));
        assert!(FleetConfig::default().validate().is_ok());
    }

    #[test]
    fn rate_sets_the_interval() {
        let cfg = FleetConfig {
            devices: 100,
            rate: Some(1000.0),
            ..FleetConfig::default()
        };
        // 100 devices × 2 metrics at 1000 readings/s: each device ticks every 200 ms.
        assert_eq!(cfg.effective_interval(), Duration::from_millis(200));
        // Shapes: the rate counts publishes; Tasmota publishes once a tick, Shelly 3 times.
        let tasmota = FleetConfig {
            shape: Shape::Tasmota,
            ..cfg.clone()
        };
        assert_eq!(tasmota.effective_interval(), Duration::from_millis(100));
        let shelly = FleetConfig {
            shape: Shape::Shelly,
            ..cfg
        };
        assert_eq!(shelly.effective_interval(), Duration::from_millis(300));
        assert_eq!(
            shelly.signal_names(),
            ["temperature", "humidity", "battery"]
        );
    }
}
