//! Serial sensors in the running hub: `[[serial]]` ports read by `edgewatch run`, the emulated
//! serial sensor of `edgewatch demo`, and the standalone `edgewatch serial` command that
//! publishes a port's readings to any MQTT broker.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use edgewatch_serial::{run_serial, SerialFormat, SerialPortConfig, SerialPublish, SerialStats};
use tokio_util::sync::CancellationToken;

/// Starts a reader for each configured port, publishing with `publish` (the embedded broker's
/// publisher; `None` without an embedded broker, which is an error unless `ports` is empty).
/// The readers stop when `stop` is cancelled.
pub(crate) fn spawn_configured(
    publish: Option<SerialPublish>,
    ports: &[SerialPortConfig],
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    if ports.is_empty() {
        return Ok(());
    }
    let publish = publish
        .context("[[serial]] ports need the embedded broker (not available with `bridge`)")?;
    for port in ports {
        tracing::info!(port = %port.path.display(), device = %port.device_id, "serial port configured");
        tokio::spawn(run_serial(
            port.clone(),
            publish.clone(),
            Arc::new(SerialStats::default()),
            stop.child_token(),
        ));
    }
    Ok(())
}

/// The demo's serial sensor: emulated firmware on a pseudo-terminal, read by a real serial
/// reader publishing with `publish` (as in [`spawn_configured`]). Returns the terminal's path;
/// both end when `stop` is cancelled.
pub(crate) fn spawn_demo_sensor(
    publish: Option<SerialPublish>,
    stop: CancellationToken,
) -> anyhow::Result<PathBuf> {
    let emulator = edgewatch_sim::spawn_serial_emulator(edgewatch_sim::SerialConfig {
        device_id: "demo-serial".to_owned(),
        interval: Duration::from_secs(1),
        ..edgewatch_sim::SerialConfig::default()
    })
    .context("starting the emulated serial sensor")?;
    let path = emulator.path().to_path_buf();
    let port = SerialPortConfig {
        path: path.clone(),
        baud: 115_200,
        format: SerialFormat::Cobs,
        device_id: "demo-serial".to_owned(),
        max_frame_len: 1024,
        reopen_delay_ms: 1000,
    };
    spawn_configured(publish, std::slice::from_ref(&port), &stop)?;
    // Keep the emulator alive until the demo stops.
    tokio::spawn(async move {
        stop.cancelled().await;
        drop(emulator);
    });
    Ok(path)
}

/// Options of `edgewatch serial`.
#[derive(Debug, clap::Args)]
pub(crate) struct SerialArgs {
    /// The serial device, e.g. /dev/ttyUSB0.
    #[arg(long, value_name = "PATH")]
    port: PathBuf,
    /// Baud rate (8N1, no flow control).
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// Framing on the wire: postcard + CRC-16 + COBS frames, or `metric=value [unit]` text lines.
    #[arg(long, value_enum, default_value_t = FormatArg::Cobs)]
    format: FormatArg,
    /// Device id of text lines, and of frames that carry none.
    #[arg(long, value_name = "ID")]
    device_id: String,
    /// The broker to publish to, `mqtt://HOST:PORT`.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883", value_name = "URL")]
    broker: String,
    /// MQTT username, if the broker requires a login.
    #[arg(long)]
    username: Option<String>,
    /// MQTT password.
    #[arg(long, env = "EDGEWATCH_SERIAL_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Cobs,
    Lines,
}

/// `edgewatch serial`: read one port and publish its readings (QoS 1) until a signal.
pub(crate) async fn run_standalone(args: SerialArgs) -> anyhow::Result<()> {
    let stop_requested = crate::signals::stop_requested();
    let port = SerialPortConfig {
        path: args.port,
        baud: args.baud,
        format: match args.format {
            FormatArg::Cobs => SerialFormat::Cobs,
            FormatArg::Lines => SerialFormat::Lines,
        },
        device_id: args.device_id,
        max_frame_len: 1024,
        reopen_delay_ms: 1000,
    };
    port.validate(0).map_err(|e| {
        let flag = e.key.trim_start_matches("serial[0].").replace('_', "-");
        anyhow::anyhow!("--{flag}: {}", e.message)
    })?;
    let (host, mqtt_port) = edgewatch_sim::cli::parse_broker_url(&args.broker)
        .map_err(|e| anyhow::anyhow!("--broker: {e}"))?;
    let client_id = format!("edgewatch-serial-{}", port.device_id);
    let mut opts = rumqttc::MqttOptions::new(client_id, host, mqtt_port);
    opts.set_keep_alive(Duration::from_secs(30));
    if let Some(user) = args.username {
        opts.set_credentials(user, args.password.unwrap_or_default());
    }
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 256);
    let stop = CancellationToken::new();
    let poll_stop = stop.clone();
    // rumqttc only makes progress (connects, reconnects, sends) while its event loop is polled.
    let poller = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = poll_stop.cancelled() => return,
                ev = events.poll() => if let Err(err) = ev {
                    tracing::warn!(%err, "MQTT connection error; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                },
            }
        }
    });
    let publish: SerialPublish = Arc::new(move |topic, payload| {
        let client = client.clone();
        Box::pin(async move {
            client
                .publish_bytes(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| e.to_string())
        })
    });
    println!(
        "reading {} ({}) into {}",
        port.path.display(),
        port.format,
        args.broker
    );
    let reader = tokio::spawn(run_serial(
        port,
        publish,
        Arc::new(SerialStats::default()),
        stop.clone(),
    ));
    stop_requested.await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    poller.abort();
    Ok(())
}
