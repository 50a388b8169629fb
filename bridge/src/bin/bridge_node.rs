//! A bridge process on its own: store + writer + external MQTT source + HTTP.
//!
//! `edgewatch-bridge-node <data-dir> <mqtt-url> [http-listen]`. Prints `ready <http-addr>` on
//! stdout once serving, stops on SIGINT/SIGTERM. Used by the crash tests (which SIGKILL it).

use edgewatch_bridge::BridgeConfig;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: edgewatch-bridge-node <data-dir> <mqtt-url> [http-listen]");
        std::process::exit(2);
    }
    let cfg = BridgeConfig {
        data_dir: args[1].clone().into(),
        mqtt_url: Some(args[2].clone()),
        http_listen: args
            .get(3)
            .cloned()
            .unwrap_or_else(|| "127.0.0.1:0".to_owned()),
        mqtt_client_id: std::env::var("EDGEWATCH_CLIENT_ID")
            .unwrap_or_else(|_| "edgewatch-bridge".to_owned()),
        ..BridgeConfig::default()
    };
    if let Err(err) = run(cfg).await {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
}

async fn run(cfg: BridgeConfig) -> Result<(), Box<dyn std::error::Error>> {
    let token = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(&cfg.http_listen).await?;
    let addr = listener.local_addr()?;
    let hub = edgewatch_bridge::start(cfg, token.clone()).await?;
    let stop = token.clone();
    let server = {
        let router = hub.router();
        tokio::spawn(edgewatch_bridge::http::serve(
            listener,
            router,
            async move { stop.cancelled().await },
        ))
    };
    println!("ready {addr}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    token.cancel();
    let _ = server.await;
    hub.shutdown().await?;
    Ok(())
}
