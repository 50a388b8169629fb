//! Load generator entry point for benchmarks, the same flags as `edgewatch sim`:
//!
//! ```text
//! cargo run --release -p edgewatch-sim --example load -- \
//!     --broker mqtt://127.0.0.1:1883 --devices 100 --rate 20000 --duration 10 --qos 1 --verify --json
//! ```
//!
//! The report's `cpu_s` and `cpu_per_10k_rate` give the generator's CPU cost (this process
//! only: run the broker separately).

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Drive a broker with a simulated fleet and report what it sustained.
#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    sim: edgewatch_sim::SimArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    match edgewatch_sim::run(cli.sim, shutdown).await {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
