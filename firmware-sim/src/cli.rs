//! The `edgewatch sim` command line: [`SimArgs`] and [`run`].

use std::io::Write;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::fleet::{run_fleet, FleetConfig};
use crate::payload::{Format, TopicShape};
use crate::report::{process_cpu_time, Report};
use crate::serial_emulator::{spawn_serial_emulator, SerialConfig, SerialFormat};
use crate::signal::Faults;
use crate::SimError;

/// Simulated sensor firmware: a fleet of MQTT devices, or one emulated serial sensor.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Broker to connect to.
    #[arg(
        long,
        env = "EDGEWATCH_SIM_BROKER",
        default_value = "mqtt://127.0.0.1:1883"
    )]
    pub broker: String,
    /// Number of devices (each its own MQTT client).
    #[arg(long, default_value_t = 1)]
    pub devices: u32,
    /// Metrics each device reports, comma separated (temperature, humidity, pressure, co2,
    /// battery, light, voltage or any name).
    #[arg(long, value_delimiter = ',', default_value = "temperature,humidity")]
    pub metrics: Vec<String>,
    /// Milliseconds between two samples of a device (ignored with --rate).
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Each interval varies by up to this many milliseconds either way.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// MQTT QoS of readings (0 or 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Payload format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Per-device topics `sensors/{id}/{metric}` or the shared `sensors/{metric}`.
    #[arg(long, value_enum, default_value_t = TopicShape::Device)]
    pub topic_shape: TopicShape,
    /// Seed of all signals: the same seed gives the same values.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Device ids (and client ids) are `{prefix}-{index}`.
    #[arg(long, default_value = "sim")]
    pub id_prefix: String,
    /// MQTT username for every device.
    #[arg(long, env = "EDGEWATCH_SIM_USERNAME")]
    pub username: Option<String>,
    /// MQTT password for every device.
    #[arg(long, env = "EDGEWATCH_SIM_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Load mode: total readings per second across the fleet.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stop after this many readings in total.
    #[arg(long)]
    pub max: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Also subscribe to `sensors/#` and report delivery and end-to-end latency.
    #[arg(long)]
    pub verify: bool,
    /// Print the final report as JSON (on stdout) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Readings a device buffers while offline; when full the oldest is dropped.
    #[arg(long, default_value_t = 1000)]
    pub buffer: usize,
    /// New connections per second while the fleet starts.
    #[arg(long, default_value_t = 500)]
    pub connect_rate: u32,
    /// Turn off simulated spikes, stuck values and dropouts.
    #[arg(long)]
    pub no_faults: bool,
    /// Emulate a serial sensor on a pseudo-terminal instead, and print its device path.
    #[arg(long)]
    pub serial: bool,
    /// Serial frame format.
    #[arg(long, value_enum, default_value_t = SerialFormat::Cobs)]
    pub serial_format: SerialFormat,
    /// Serial: inject garbage or a truncated frame before every N-th reading.
    #[arg(long)]
    pub serial_garbage_every: Option<u32>,
}

/// Splits `mqtt://HOST:PORT` (or `HOST:PORT`, or `mqtt://HOST` for port 1883).
pub fn parse_broker_url(url: &str) -> Result<(String, u16), SimError> {
    let invalid = |reason: &str| SimError::Invalid {
        option: "broker",
        reason: format!("{url:?}: {reason}"),
    };
    let rest = match url.split_once("://") {
        Some(("mqtt" | "tcp", rest)) => rest,
        Some((scheme, _)) => {
            return Err(invalid(&format!(
                "scheme {scheme:?} is not supported, use mqtt://HOST:PORT"
            )))
        }
        None => url,
    };
    let rest = rest.trim_end_matches('/');
    let parse_port = |port: &str| {
        port.parse::<u16>()
            .map_err(|_| invalid("the port is not a number from 1 to 65535"))
    };
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        // `[::1]:1883` or `[::1]`
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| invalid("missing `]` after an IPv6 address"))?;
        match after.strip_prefix(':') {
            Some(port) => (host, parse_port(port)?),
            None if after.is_empty() => (host, 1883),
            None => return Err(invalid("expected mqtt://HOST:PORT")),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, parse_port(port)?),
            _ => (rest, 1883),
        }
    };
    if host.is_empty() || port == 0 {
        return Err(invalid("expected mqtt://HOST:PORT"));
    }
    Ok((host.to_owned(), port))
}

impl SimArgs {
    /// The fleet configuration these arguments describe.
    pub fn fleet_config(&self) -> Result<FleetConfig, SimError> {
        let (broker_host, broker_port) = parse_broker_url(&self.broker)?;
        let duration = match self.duration {
            Some(s) if !(s.is_finite() && s > 0.0 && s < 1e9) => {
                return Err(SimError::Invalid {
                    option: "duration",
                    reason: format!("must be a positive number of seconds, got {s}"),
                })
            }
            Some(s) => Some(Duration::from_secs_f64(s)),
            None => None,
        };
        let cfg = FleetConfig {
            broker_host,
            broker_port,
            devices: self.devices,
            metrics: self.metrics.iter().map(|m| m.trim().to_owned()).collect(),
            interval: Duration::from_millis(self.interval_ms),
            jitter: Duration::from_millis(self.jitter_ms),
            qos: self.qos,
            format: self.format,
            topic_shape: self.topic_shape,
            seed: self.seed,
            id_prefix: self.id_prefix.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
            rate: self.rate,
            max: self.max,
            duration,
            verify: self.verify,
            faults: if self.no_faults {
                Faults::none()
            } else {
                Faults::default()
            },
            buffer_capacity: self.buffer,
            connect_rate: self.connect_rate,
            progress: true,
            ..FleetConfig::default()
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Runs `edgewatch sim`: a fleet (until `--duration`, `--max` or `shutdown`), or with
/// `--serial` the serial emulator (until `--duration` or `shutdown`). Prints the pty path
/// (serial) and the final report (text, or JSON with `--json`) on stdout, the progress line
/// on stderr, and returns the report. After `shutdown` a fleet still delivers what it holds for
/// up to 5 s (`drain_timeout`), and `--verify` waits up to 15 s for late readings.
pub async fn run(args: SimArgs, shutdown: CancellationToken) -> Result<Report, SimError> {
    let report = if args.serial {
        run_serial(&args, shutdown).await?
    } else {
        run_fleet(args.fleet_config()?, shutdown).await?
    };
    let mut out = std::io::stdout().lock();
    let _ = if args.json {
        writeln!(out, "{}", report.to_json())
    } else {
        writeln!(out, "{report}")
    };
    Ok(report)
}

async fn run_serial(args: &SimArgs, shutdown: CancellationToken) -> Result<Report, SimError> {
    if args.interval_ms == 0 {
        return Err(SimError::Invalid {
            option: "interval-ms",
            reason: "must be above 0".to_owned(),
        });
    }
    let cfg = SerialConfig {
        device_id: format!("{}-serial", args.id_prefix),
        metrics: args.metrics.clone(),
        format: args.serial_format,
        interval: Duration::from_millis(args.interval_ms),
        seed: args.seed,
        faults: if args.no_faults {
            Faults::none()
        } else {
            Faults::default()
        },
        garbage_every: args.serial_garbage_every,
    };
    let started = tokio::time::Instant::now();
    let cpu_before = process_cpu_time();
    let emulator = spawn_serial_emulator(cfg).map_err(|source| SimError::Pty { source })?;
    println!("{}", emulator.path().display());
    let until = async {
        match args.duration {
            Some(s) if s.is_finite() && s > 0.0 => {
                tokio::time::sleep(Duration::from_secs_f64(s.min(1e9))).await;
            }
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = until => {}
    }
    let counts = tokio::task::spawn_blocking(move || emulator.stop())
        .await
        .unwrap_or_default();
    let mut report = Report {
        mode: "serial",
        devices: 1,
        sampled: counts.written + counts.dropped,
        sent: counts.written,
        dropped: counts.dropped,
        errors: counts.injected,
        ..Report::default()
    };
    report.finish(
        started.elapsed(),
        process_cpu_time().saturating_sub(cpu_before),
        false,
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_broker_url("mqtt://127.0.0.1:1999").unwrap(),
            ("127.0.0.1".to_owned(), 1999)
        );
        assert_eq!(
            parse_broker_url("hub.local").unwrap(),
            ("hub.local".to_owned(), 1883)
        );
        assert_eq!(
            parse_broker_url("mqtt://[::1]:18").unwrap(),
            ("::1".to_owned(), 18)
        );
        assert!(parse_broker_url("http://x:1").is_err());
        assert!(parse_broker_url("mqtt://x:99999").is_err());
        assert!(parse_broker_url("mqtt://:1").is_err());
    }

    #[test]
    fn flags_build_a_fleet_config() {
        let cli = Cli::try_parse_from([
            "sim",
            "--devices",
            "50",
            "--metrics",
            "temperature,co2",
            "--qos",
            "0",
            "--format",
            "binary",
            "--topic-shape",
            "shared",
            "--rate",
            "500",
            "--duration",
            "2.5",
        ])
        .unwrap();
        let cfg = cli.sim.fleet_config().unwrap();
        assert_eq!(cfg.devices, 50);
        assert_eq!(cfg.metrics, ["temperature", "co2"]);
        assert_eq!(
            (cfg.qos, cfg.format, cfg.topic_shape),
            (0, Format::Binary, TopicShape::Shared)
        );
        assert_eq!(cfg.duration, Some(Duration::from_millis(2500)));
        assert!(Cli::try_parse_from(["sim", "--qos", "2"]).is_err());
        let bad =
            Cli::try_parse_from(["sim", "--format", "number", "--topic-shape", "shared"]).unwrap();
        assert!(bad.sim.fleet_config().is_err());
    }
}
