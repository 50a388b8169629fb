//! Readings into the bridge: ingest through the HTTP API, and from a real external broker
//! (Mosquitto) with `kill -9` of the bridge process.

mod external_broker;
mod http_ingest;

/// Bridge settings for a test: data in `dir`, quick flushes, no age-based retention.
fn bridge_config(dir: &std::path::Path) -> edgewatch_bridge::BridgeConfig {
    edgewatch_bridge::BridgeConfig {
        data_dir: dir.to_path_buf(),
        flush_interval_ms: 2,
        retention_days: 0,
        ..Default::default()
    }
}
