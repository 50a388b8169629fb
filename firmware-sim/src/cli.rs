//! The `edgewatch sim` command line: [`SimArgs`] and [`run`].

use std::io::Write;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::duration::parse_duration;
use crate::fleet::{run_fleet, FleetConfig};
use crate::payload::{Format, TopicShape};
use crate::report::{process_cpu_time, Report};
use crate::serial_emulator::{spawn_serial_emulator, SerialConfig, SerialFormat};
use crate::shape::Shape;
use crate::signal::Faults;
use crate::SimError;

/// The metrics of the native shape and the serial sensor unless `--metrics` says.
const DEFAULT_METRICS: [&str; 2] = ["temperature", "humidity"];

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
    /// Which firmware's topics and payloads the devices publish (`--help` lists each shape).
    ///
    /// Every shape publishes a retained presence message at connect, its offline payload the
    /// last will. Counts (--rate, --max, the report) are of publishes; --metrics, --format
    /// and --topic-shape apply to the native shape only.
    #[arg(long, value_enum, default_value_t = Shape::Native)]
    pub shape: Shape,
    /// Metrics each device reports, comma separated (temperature, humidity, pressure, co2,
    /// battery, light, voltage or any name) [default: temperature,humidity].
    #[arg(long, value_delimiter = ',')]
    pub metrics: Option<Vec<String>>,
    /// Milliseconds between two samples of a device (ignored with --rate).
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Each interval varies by up to this many milliseconds either way.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// MQTT QoS of readings (0 or 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Payload format (native shape) [default: json].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Per-device topics `sensors/{id}/{metric}` or the shared `sensors/{metric}` (native
    /// shape) [default: device].
    #[arg(long, value_enum)]
    pub topic_shape: Option<TopicShape>,
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
    /// Load mode: total readings (publishes) per second across the fleet.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stop after this many readings (publishes) in total.
    #[arg(long)]
    pub max: Option<u64>,
    /// Send for this long, counted from when the fleet is connected: 500ms, 5s, 10m, 1h, or
    /// plain seconds (20, 2.5).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Also subscribe to the fleet's readings (`sensors/#`, or the shape's topics) and report
    /// delivery and end-to-end latency (other shapes: publishes counted, not identified).
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
    /// How long after the last device's connect slot sending waits for devices still
    /// connecting (then it starts without them; with none connected the run fails).
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    pub connect_timeout: Duration,
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
    /// `--metrics`, or the default ones.
    pub fn metric_names(&self) -> Vec<String> {
        match &self.metrics {
            Some(metrics) => metrics.iter().map(|m| m.trim().to_owned()).collect(),
            None => DEFAULT_METRICS.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    /// The fleet configuration these arguments describe.
    pub fn fleet_config(&self) -> Result<FleetConfig, SimError> {
        let (broker_host, broker_port) = parse_broker_url(&self.broker)?;
        if self.shape != Shape::Native {
            let native_only = [
                ("metrics", self.metrics.is_some()),
                ("format", self.format.is_some()),
                ("topic-shape", self.topic_shape.is_some()),
            ];
            if let Some((option, _)) = native_only.iter().find(|(_, given)| *given) {
                return Err(SimError::Invalid {
                    option,
                    reason: format!(
                        "applies to --shape native only; --shape {} publishes its firmware's own \
                         topics and fields",
                        self.shape
                    ),
                });
            }
        }
        let cfg = FleetConfig {
            broker_host,
            broker_port,
            devices: self.devices,
            shape: self.shape,
            metrics: self.metric_names(),
            interval: Duration::from_millis(self.interval_ms),
            jitter: Duration::from_millis(self.jitter_ms),
            qos: self.qos,
            format: self.format.unwrap_or_default(),
            topic_shape: self.topic_shape.unwrap_or_default(),
            seed: self.seed,
            id_prefix: self.id_prefix.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
            rate: self.rate,
            max: self.max,
            duration: self.duration,
            verify: self.verify,
            faults: if self.no_faults {
                Faults::none()
            } else {
                Faults::default()
            },
            buffer_capacity: self.buffer,
            connect_rate: self.connect_rate,
            connect_timeout: self.connect_timeout,
            progress: true,
            ..FleetConfig::default()
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Runs `edgewatch sim`: a fleet (connects, then sends until `--duration`, `--max` or
/// `shutdown`), or with `--serial` the serial emulator (until `--duration` or `shutdown`).
/// Prints the pty path (serial) and the final report (text, or JSON with `--json`) on stdout,
/// the progress line on stderr, and returns the report. After `shutdown` a fleet still delivers
/// what it holds for up to 5 s (`drain_timeout`), and `--verify` waits up to 15 s for late
/// readings. A broker that refuses the connection is [`SimError::Connect`]. A reader of stdout
/// that went away (`edgewatch sim ... | head -1`) ends the output quietly.
pub async fn run(args: SimArgs, shutdown: CancellationToken) -> Result<Report, SimError> {
    let report = if args.serial {
        run_serial(&args, shutdown).await?
    } else {
        run_fleet(args.fleet_config()?, shutdown).await?
    };
    let text = if args.json {
        report.to_json()
    } else {
        report.to_string()
    };
    print_out(&format!("{text}\n"))?;
    Ok(report)
}

/// Writes `text` to standard output. A reader that went away (a closed pipe) ends the output
/// quietly, as command-line tools do; any other failure is [`SimError::Output`].
fn print_out(text: &str) -> Result<(), SimError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(source) => Err(SimError::Output { source }),
    }
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
        metrics: args.metric_names(),
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
    print_out(&format!("{}\n", emulator.path().display()))?;
    let until = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
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
        assert_eq!(cfg.shape, Shape::Native);
        assert!(Cli::try_parse_from(["sim", "--qos", "2"]).is_err());
        let bad =
            Cli::try_parse_from(["sim", "--format", "number", "--topic-shape", "shared"]).unwrap();
        assert!(bad.sim.fleet_config().is_err());
    }

    #[test]
    fn defaults_are_the_native_fleet_of_before() {
        let cfg = Cli::try_parse_from(["sim"])
            .unwrap()
            .sim
            .fleet_config()
            .unwrap();
        assert_eq!(cfg.metrics, ["temperature", "humidity"]);
        assert_eq!(
            (cfg.shape, cfg.format, cfg.topic_shape, cfg.duration),
            (Shape::Native, Format::Json, TopicShape::Device, None)
        );
        assert_eq!(cfg.connect_timeout, Duration::from_secs(20));
    }

    #[test]
    fn durations_take_units() {
        let duration = |arg: &str| {
            let cli = Cli::try_parse_from(["sim", "--duration", arg]).unwrap();
            cli.sim.fleet_config().unwrap().duration.unwrap()
        };
        assert_eq!(duration("20"), Duration::from_secs(20));
        assert_eq!(duration("2.5"), Duration::from_millis(2500));
        assert_eq!(duration("5s"), Duration::from_secs(5));
        assert_eq!(duration("500ms"), Duration::from_millis(500));
        assert_eq!(duration("10m"), Duration::from_secs(600));
        assert_eq!(duration("1h"), Duration::from_secs(3600));
        let cli = Cli::try_parse_from(["sim", "--connect-timeout", "1m"]).unwrap();
        assert_eq!(cli.sim.connect_timeout, Duration::from_secs(60));
        for bad in ["5x", "-1", "0", "soon", "1 day"] {
            let err = Cli::try_parse_from(["sim", &format!("--duration={bad}")]).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
            let text = err.to_string();
            assert!(text.contains("--duration"), "{text}");
        }
        let err = Cli::try_parse_from(["sim", "--duration", "5x"]).unwrap_err();
        assert!(err.to_string().contains("500ms, 5s, 10m, 1h"), "{err}");
    }

    #[test]
    fn shapes_are_chosen_by_name_and_refuse_native_only_flags() {
        for (name, shape) in [
            ("tasmota", Shape::Tasmota),
            ("zigbee2mqtt", Shape::Zigbee2mqtt),
            ("shelly", Shape::Shelly),
            ("esphome", Shape::Esphome),
            ("homeassistant", Shape::Homeassistant),
            ("native", Shape::Native),
        ] {
            let cli = Cli::try_parse_from(["sim", "--shape", name]).unwrap();
            assert_eq!(cli.sim.fleet_config().unwrap().shape, shape);
        }
        assert!(Cli::try_parse_from(["sim", "--shape", "tuya"]).is_err());
        for flag in [
            ["--metrics", "co2"],
            ["--format", "binary"],
            ["--topic-shape", "shared"],
        ] {
            let cli = Cli::try_parse_from(["sim", "--shape", "shelly", flag[0], flag[1]]).unwrap();
            let err = cli.sim.fleet_config().unwrap_err().to_string();
            assert!(err.contains("native only"), "{err}");
            // With the native shape they apply.
            let cli = Cli::try_parse_from(["sim", "--shape", "native", flag[0], flag[1]]).unwrap();
            assert!(cli.sim.fleet_config().is_ok());
        }
    }
}
