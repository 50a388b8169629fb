//! Seeded, realistic sensor signals: a daily cycle, noise, slow drift, spikes and faults.
//!
//! A [`Signal`] is deterministic: the same `seed`, device index and metric, sampled at the same
//! times, give the same values on every machine (ChaCha8 is portable and version-stable).
//! Nothing here reads a clock; the caller passes the sample time.
//!
//! What a sample looks like, for a metric with base `b`:
//! `b + daily_amplitude·sin(2π·(time of day + device phase)) + drift + noise + spike`,
//! clamped to the metric's physical range and rounded to its resolution. Two faults are
//! simulated when [`Faults::enabled`]: a *stuck* sensor repeats its last value for a while, and
//! a *dropout* produces no reading at all (the sample is `None`).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DAY_MS: f64 = 86_400_000.0;

/// How one metric behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSpec {
    /// Metric name as it appears in topics (`temperature`).
    pub name: String,
    /// Unit sent with JSON and binary payloads (`C`), if any.
    pub unit: Option<&'static str>,
    /// Mean value.
    pub base: f64,
    /// Half the peak-to-peak size of the daily cycle.
    pub daily_amplitude: f64,
    /// Standard deviation of the white noise on each sample.
    pub noise: f64,
    /// Standard deviation of one random-walk step of the slow drift (per sample).
    pub drift_step: f64,
    /// How far a spike jumps, in units of `daily_amplitude + noise`.
    pub spike_scale: f64,
    /// Change per hour that never reverts (a draining battery); 0 for most metrics.
    pub trend_per_hour: f64,
    /// Physical range; samples are clamped into it.
    pub min: f64,
    /// Physical range; samples are clamped into it.
    pub max: f64,
    /// Number of decimals a sample is rounded to.
    pub decimals: i32,
}

impl MetricSpec {
    /// The behaviour for a metric name. Known names (`temperature`, `humidity`, `pressure`,
    /// `co2`, `battery`, `light`, `voltage`) get realistic values and units; any other name gets
    /// a generic unitless signal around 50.
    pub fn for_name(name: &str) -> Self {
        let spec = |unit, base, daily_amplitude, noise, drift_step, min, max, decimals| Self {
            name: name.to_owned(),
            unit,
            base,
            daily_amplitude,
            noise,
            drift_step,
            spike_scale: 4.0,
            trend_per_hour: 0.0,
            min,
            max,
            decimals,
        };
        match name {
            "temperature" => spec(Some("C"), 21.0, 3.0, 0.15, 0.01, -40.0, 85.0, 2),
            "humidity" => spec(Some("%"), 45.0, 10.0, 0.8, 0.05, 0.0, 100.0, 1),
            "pressure" => spec(Some("hPa"), 1013.0, 1.5, 0.3, 0.05, 870.0, 1085.0, 1),
            "co2" => spec(Some("ppm"), 600.0, 250.0, 15.0, 1.0, 400.0, 5000.0, 0),
            "light" => spec(Some("lx"), 300.0, 280.0, 10.0, 0.5, 0.0, 100_000.0, 0),
            "voltage" => spec(Some("V"), 230.0, 2.0, 0.8, 0.02, 180.0, 260.0, 1),
            "battery" => Self {
                trend_per_hour: -0.5,
                spike_scale: 0.0,
                ..spec(Some("%"), 95.0, 0.2, 0.05, 0.0, 0.0, 100.0, 1)
            },
            _ => spec(None, 50.0, 10.0, 1.0, 0.05, f64::MIN, f64::MAX, 2),
        }
    }
}

/// Fault and spike probabilities, per sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Whether spikes, stuck values and dropouts happen at all.
    pub enabled: bool,
    /// Probability that a sample is a spike.
    pub spike_probability: f64,
    /// Probability that the sensor gets stuck (repeats its value) from this sample on.
    pub stuck_probability: f64,
    /// Probability that the sensor drops out (sends nothing) from this sample on.
    pub dropout_probability: f64,
    /// How many samples a stuck or dropout fault lasts, at most (at least 1).
    pub max_fault_samples: u32,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            enabled: true,
            spike_probability: 0.002,
            stuck_probability: 0.0005,
            dropout_probability: 0.0005,
            max_fault_samples: 30,
        }
    }
}

impl Faults {
    /// No spikes and no faults: every sample is a reading.
    pub fn none() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum FaultState {
    Healthy,
    Stuck { left: u32 },
    Dropout { left: u32 },
}

/// The signal of one metric on one device.
#[derive(Debug, Clone)]
pub struct Signal {
    spec: MetricSpec,
    faults: Faults,
    rng: ChaCha8Rng,
    /// Fraction of a day this device's cycle is shifted by (devices are not in lock-step).
    phase: f64,
    /// Per-device offset of the mean (each sensor reads a bit differently).
    offset: f64,
    /// Random walk, pulled back towards zero so it stays bounded.
    drift: f64,
    first_ms: Option<i64>,
    last: Option<f64>,
    state: FaultState,
}

/// Mixes seed, device and metric into one 64-bit seed (splitmix64 finaliser), so neighbouring
/// devices get unrelated streams.
fn mix(seed: u64, device: u64, metric: u64) -> u64 {
    let mut z = seed
        ^ device.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ metric.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Signal {
    /// The signal for `spec` on device number `device` (0-based) and metric position `metric`
    /// in the run's metric list, seeded with `seed`.
    pub fn new(spec: MetricSpec, faults: Faults, seed: u64, device: u64, metric: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, device, metric));
        let phase = rng.gen_range(-0.05..0.05);
        let spread = (spec.daily_amplitude + spec.noise) * 0.1;
        let offset = if spread > 0.0 {
            rng.gen_range(-spread..spread)
        } else {
            0.0
        };
        Self {
            spec,
            faults,
            rng,
            phase,
            offset,
            drift: 0.0,
            first_ms: None,
            last: None,
            state: FaultState::Healthy,
        }
    }

    /// The metric this signal is for.
    pub fn spec(&self) -> &MetricSpec {
        &self.spec
    }

    /// The value at `time_ms` (epoch milliseconds), or `None` during a dropout. Call with
    /// non-decreasing times; every call advances the random state by the same amount whatever
    /// the time, so reproducibility only needs the same sequence of times.
    pub fn sample(&mut self, time_ms: i64) -> Option<f64> {
        // Draw every random number up front, in a fixed order.
        let noise = self.normal() * self.spec.noise;
        let step = self.normal() * self.spec.drift_step;
        let spike_roll: f64 = self.rng.gen();
        let spike_sign = if self.rng.gen::<bool>() { 1.0 } else { -1.0 };
        let stuck_roll: f64 = self.rng.gen();
        let dropout_roll: f64 = self.rng.gen();
        let fault_len = self.rng.gen_range(1..=self.faults.max_fault_samples.max(1));

        self.drift = self.drift * 0.999 + step;
        let first = *self.first_ms.get_or_insert(time_ms);
        let hours = (time_ms - first) as f64 / 3_600_000.0;
        let day_fraction = time_ms.rem_euclid(86_400_000) as f64 / DAY_MS + self.phase;
        // Peak in the afternoon (15:00), trough before dawn.
        let cycle = (std::f64::consts::TAU * (day_fraction - 0.375)).sin();

        let mut value = self.spec.base
            + self.offset
            + self.spec.daily_amplitude * cycle
            + self.drift
            + self.spec.trend_per_hour * hours
            + noise;

        if self.faults.enabled {
            self.state = match self.state {
                FaultState::Healthy if stuck_roll < self.faults.stuck_probability => {
                    FaultState::Stuck { left: fault_len }
                }
                FaultState::Healthy if dropout_roll < self.faults.dropout_probability => {
                    FaultState::Dropout { left: fault_len }
                }
                FaultState::Stuck { left } | FaultState::Dropout { left } if left <= 1 => {
                    FaultState::Healthy
                }
                FaultState::Stuck { left } => FaultState::Stuck { left: left - 1 },
                FaultState::Dropout { left } => FaultState::Dropout { left: left - 1 },
                FaultState::Healthy => FaultState::Healthy,
            };
            if spike_roll < self.faults.spike_probability {
                value += spike_sign
                    * self.spec.spike_scale
                    * (self.spec.daily_amplitude + self.spec.noise);
            }
        }

        match self.state {
            FaultState::Dropout { .. } => return None,
            FaultState::Stuck { .. } => {
                if let Some(last) = self.last {
                    return Some(last);
                }
            }
            FaultState::Healthy => {}
        }
        let scale = 10f64.powi(self.spec.decimals);
        let value = (value.clamp(self.spec.min, self.spec.max) * scale).round() / scale;
        self.last = Some(value);
        Some(value)
    }

    /// A standard normal draw (Box–Muller; one of the pair is discarded to keep the draw count
    /// per sample fixed).
    fn normal(&mut self) -> f64 {
        let u1: f64 = self.rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = self.rng.gen();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_860_000_000;

    fn series(seed: u64, device: u64, faults: Faults) -> Vec<Option<f64>> {
        let mut s = Signal::new(MetricSpec::for_name("temperature"), faults, seed, device, 0);
        (0..2000).map(|i| s.sample(T0 + i * 1000)).collect()
    }

    #[test]
    fn same_seed_and_device_reproduce_the_series() {
        assert_eq!(
            series(7, 3, Faults::default()),
            series(7, 3, Faults::default())
        );
    }

    #[test]
    fn other_seed_or_device_give_another_series() {
        let base = series(7, 3, Faults::default());
        assert_ne!(base, series(8, 3, Faults::default()));
        assert_ne!(base, series(7, 4, Faults::default()));
    }

    #[test]
    fn values_stay_in_range_and_follow_the_day() {
        let mut s = Signal::new(MetricSpec::for_name("humidity"), Faults::none(), 1, 0, 1);
        let values: Vec<f64> = (0..24 * 60)
            .map(|m| s.sample(T0 + m * 60_000).unwrap())
            .collect();
        assert!(values.iter().all(|v| (0.0..=100.0).contains(v)));
        let (lo, hi) = values
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        assert!(hi - lo > 10.0, "a daily cycle is visible: {lo}..{hi}");
    }

    #[test]
    fn faults_produce_dropouts_and_stuck_values() {
        let faults = Faults {
            stuck_probability: 0.02,
            dropout_probability: 0.02,
            ..Faults::default()
        };
        let s = series(11, 0, faults);
        assert!(s.iter().any(Option::is_none), "some dropouts");
        let repeats = s
            .windows(2)
            .filter(|w| w[0].is_some() && w[0] == w[1])
            .count();
        assert!(repeats > 10, "stuck stretches repeat the value");
        assert!(series(11, 0, Faults::none()).iter().all(Option::is_some));
    }

    #[test]
    fn battery_drains() {
        let mut s = Signal::new(MetricSpec::for_name("battery"), Faults::none(), 1, 0, 0);
        let first = s.sample(T0).unwrap();
        let later = s.sample(T0 + 10 * 3_600_000).unwrap();
        assert!(later < first - 3.0, "{first} -> {later}");
    }
}
