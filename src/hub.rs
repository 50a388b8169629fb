//! Composition of the running hub: start the parts in order, print where they listen, stop
//! them in reverse order on a signal.

use std::time::Duration;

use anyhow::Context as _;
use edgewatch_broker::Broker;

use crate::cli::RunArgs;
use crate::config::AppConfig;

/// How long an orderly stop may take before we exit anyway.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs until SIGINT / SIGTERM.
pub(crate) async fn run(cfg: AppConfig, _args: RunArgs) -> anyhow::Result<()> {
    let broker = Broker::start(&cfg.broker)
        .await
        .context("starting the MQTT broker")?;
    let listeners: Vec<String> = broker
        .listeners()
        .iter()
        .map(|(kind, addr)| format!("{kind}={addr}"))
        .collect();
    // One machine-readable line on stdout: scripts and tests wait for it.
    println!("edgewatch ready {}", listeners.join(" "));

    crate::signals::stop_requested().await;

    let stop = async move {
        broker.stop();
    };
    if tokio::time::timeout(STOP_GRACE, stop).await.is_err() {
        tracing::warn!(grace = ?STOP_GRACE, "stop took too long; exiting anyway");
    }
    tracing::info!("stopped");
    Ok(())
}
