//! Readings for tests of the store and the writer, and log output.

use edgewatch_protocol::Reading;

/// An hour in milliseconds.
pub const HOUR: i64 = 3_600_000;

/// A reading in °C, received 5 ms after its timestamp.
pub fn reading(device: &str, metric: &str, ts: i64, value: f64) -> Reading {
    Reading {
        device_id: device.to_owned(),
        metric: metric.to_owned(),
        value,
        unit: Some("C".to_owned()),
        timestamp_ms: ts,
        received_at_ms: ts + 5,
    }
}

/// An hour boundary a few hours in the past.
pub fn base_time() -> i64 {
    let now = edgewatch_protocol::timefmt::now_ms();
    now - now.rem_euclid(HOUR) - 3 * HOUR
}

/// Logs to the test output; `RUST_LOG` picks the level (default warn).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}
