//! The command line.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{AppConfig, Overrides};

/// Exit status for configuration errors (like a usage error).
const EXIT_CONFIG: u8 = 2;

/// edgewatch: an edge box's MQTT broker, sensor history and live dashboard in one binary.
#[derive(Debug, Parser)]
#[command(name = "edgewatch", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub: the embedded MQTT broker, the event log, the HTTP API, live streams and the
    /// dashboard.
    Run(RunArgs),
    /// Run the bridge against an existing MQTT broker (Mosquitto, EMQX, HiveMQ, ...) instead of
    /// the embedded one: store, history, live streams and dashboard, no MQTT listener.
    Bridge {
        /// The broker to consume, `mqtt://HOST:PORT`.
        #[arg(long = "mqtt", env = "EDGEWATCH_MQTT_URL", value_name = "URL")]
        mqtt: String,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Run the hub with a demo fleet: a temporary store, 19 simulated MQTT sensors and one on an
    /// emulated serial port, at 1 Hz. Prints the dashboard URL.
    Demo(RunArgs),
    /// Check a configuration file and print the effective configuration.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
        /// The flags and variables of `run` (applied to what is printed).
        #[command(flatten)]
        run: Box<RunArgs>,
    },
    /// Simulate sensor firmware: a fleet of MQTT devices (any broker; edgewatch's own topics or
    /// those of Tasmota, Zigbee2MQTT, Shelly, ESPHome, Home Assistant: `--shape`), a load run,
    /// or one emulated serial sensor on a pseudo-terminal. Exits 1 with the reason in words
    /// when the broker refuses the connection.
    Sim(edgewatch_sim::SimArgs),
    /// Read one serial sensor (USB serial port) and publish its readings to an MQTT broker.
    Serial(crate::serial::SerialArgs),
    /// Export stored readings as CSV or NDJSON, for a topic filter and an event-time range:
    /// from a stopped hub's data directory (--data-dir) or a running hub (--hub URL).
    Export(crate::export::ExportArgs),
    /// A consistent online backup of a running hub (every reading up to one seq, the
    /// catalogue, rollups, presence, uplink cursors, the broker's retained messages and
    /// sessions), written into a new data directory.
    Backup(crate::export::backup::BackupArgs),
    /// Print the OpenAPI 3.1 document of the HTTP API (what `/v1/openapi.json` serves;
    /// `docs/openapi.json` is this output).
    Openapi,
    /// App tokens for the HTTP API and live streams (`[[auth.tokens]]`).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Hash a device password for `[[broker.users]]` (reads the password from standard input).
    Passwd {
        /// The MQTT username; with it, a ready-to-paste `[[broker.users]]` entry is printed.
        username: Option<String>,
    },
}

/// `edgewatch token ...`.
#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a new app token: prints the token once and the `[[auth.tokens]]` entry to paste into the config, which holds only its hash.
    Create {
        /// The token's name, shown in logs and `GET /v1/me`.
        #[arg(long, default_value = "app")]
        name: String,
        /// A topic filter it may read (repeat for more), e.g. 'sensors/+/temperature'.
        #[arg(long = "read", value_name = "FILTER")]
        read: Vec<String>,
        /// A topic filter it may publish to over WebSocket (repeat for more).
        #[arg(long = "publish", value_name = "FILTER")]
        publish: Vec<String>,
        /// Allow `GET /metrics`.
        #[arg(long)]
        metrics: bool,
    },
}

/// Options of `edgewatch run`. Flags override environment variables, which override the file.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Configuration file (defaults in code equal `config/edgewatch.toml`).
    #[arg(short, long, env = "EDGEWATCH_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Directory for stored data (the event log).
    #[arg(long, env = "EDGEWATCH_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Address of the MQTT 3.1.1 listener, e.g. 0.0.0.0:1883 (port 0 picks a free port).
    #[arg(long, env = "EDGEWATCH_MQTT_LISTEN", value_name = "ADDR")]
    pub(crate) mqtt_listen: Option<SocketAddr>,
    /// Address of the MQTT 5 listener, e.g. 0.0.0.0:1884 (`broker.mqtt5.listen`).
    #[arg(long, env = "EDGEWATCH_MQTT5_LISTEN", value_name = "ADDR")]
    pub(crate) mqtt5_listen: Option<SocketAddr>,
    /// Address of the MQTT-over-WebSocket listener, e.g. 0.0.0.0:8083 (`broker.websocket.listen`).
    #[arg(long, env = "EDGEWATCH_WS_LISTEN", value_name = "ADDR")]
    pub(crate) ws_listen: Option<SocketAddr>,
    /// Address of the MQTT-over-TLS listener, e.g. 0.0.0.0:8883 (`broker.tls.listen`); enables it.
    #[arg(long, env = "EDGEWATCH_TLS_LISTEN", value_name = "ADDR")]
    pub(crate) tls_listen: Option<SocketAddr>,
    /// PEM certificate chain of the TLS listener (`broker.tls.cert_path`).
    #[arg(long, env = "EDGEWATCH_TLS_CERT", value_name = "FILE")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key of the TLS listener (`broker.tls.key_path`).
    #[arg(long, env = "EDGEWATCH_TLS_KEY", value_name = "FILE")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Address of the HTTP server (API, live streams, dashboard).
    #[arg(long, env = "EDGEWATCH_HTTP_LISTEN", value_name = "ADDR")]
    pub(crate) http_listen: Option<SocketAddr>,
}

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args, crate::hub::Source::Embedded),
        Command::Bridge { mqtt, run: args } => run(args, crate::hub::Source::External(mqtt)),
        Command::Demo(args) => demo(args),
        Command::CheckConfig { file, run } => check_config(&file, &run),
        Command::Openapi => print_openapi(),
        Command::Export(args) => crate::export::main(args),
        Command::Backup(args) => crate::export::backup::main(args),
        Command::Passwd { username } => passwd(username.as_deref()),
        Command::Token(TokenCommand::Create {
            name,
            read,
            publish,
            metrics,
        }) => token_create(&name, &read, &publish, metrics),
        Command::Sim(args) => sim(args),
        Command::Serial(args) => serial(args),
    }
}

fn print_openapi() -> ExitCode {
    done(out(edgewatch_bridge::http::docs::OPENAPI_JSON))
}

/// Writes `text` to standard output. A reader that went away (`edgewatch check-config F |
/// head -1`) ends the output quietly, as for other command-line tools, instead of a panic
/// from `println!`; any other error is said once. `false` after such an error.
fn out(text: &str) -> bool {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => true,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => true,
        Err(err) => {
            eprintln!("error: cannot write to standard output: {err}");
            false
        }
    }
}

/// Success unless writing the output failed.
fn done(written: bool) -> ExitCode {
    if written {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What the flags and variables of `run` change.
fn overrides(args: &RunArgs) -> Overrides {
    Overrides {
        mqtt_listen: args.mqtt_listen,
        mqtt5_listen: args.mqtt5_listen,
        ws_listen: args.ws_listen,
        tls_listen: args.tls_listen,
        tls_cert: args.tls_cert.clone(),
        tls_key: args.tls_key.clone(),
        http_listen: args.http_listen,
        data_dir: args.data_dir.clone(),
    }
}

fn load(args: &RunArgs) -> Result<AppConfig, ExitCode> {
    let mut cfg = match &args.config {
        Some(file) => AppConfig::load(file).map_err(|err| {
            eprintln!("error: {err}");
            ExitCode::from(EXIT_CONFIG)
        })?,
        None => AppConfig::default(),
    };
    cfg.apply(&overrides(args));
    // What the flags changed is checked like the file (a TLS listener without its files).
    cfg.validate(args.config.as_deref()).map_err(|err| {
        eprintln!("error: {err}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    Ok(cfg)
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            None
        }
    }
}

/// Runs `work` to completion, then exits 0, or 1 with the error.
fn finish(
    runtime: tokio::runtime::Runtime,
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let result = runtime.block_on(work);
    // Connection tasks of rumqttd may still be parked; do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the configuration, starts logging and a runtime, and runs `hub` to completion.
fn run_hub<F, Fut>(args: &RunArgs, hub: F) -> ExitCode
where
    F: FnOnce(AppConfig) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let cfg = match load(args) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    crate::logging::init(&cfg.log.level, cfg.log.json);
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    finish(runtime, hub(cfg))
}

fn run(args: RunArgs, source: crate::hub::Source) -> ExitCode {
    let file = args.config.clone();
    run_hub(&args, |cfg| crate::hub::run(cfg, source, file))
}

fn demo(mut args: RunArgs) -> ExitCode {
    // A temporary store unless one is given; removed when the demo ends.
    let tmp = if args.data_dir.is_none() {
        let dir = std::env::temp_dir().join(format!("edgewatch-demo-{}", std::process::id()));
        if let Err(err) = std::fs::create_dir_all(&dir) {
            eprintln!("error: cannot create a temporary data directory: {err}");
            return ExitCode::FAILURE;
        }
        args.data_dir = Some(dir.clone());
        Some(dir)
    } else {
        None
    };
    let code = run_hub(&args, crate::demo::run);
    if let Some(dir) = tmp {
        let _ = std::fs::remove_dir_all(dir);
    }
    code
}

fn sim(args: edgewatch_sim::SimArgs) -> ExitCode {
    crate::logging::init("warn", false);
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    finish(runtime, async move {
        let stop = tokio_util::sync::CancellationToken::new();
        let on_signal = stop.clone();
        let stop_requested = crate::signals::stop_requested();
        tokio::spawn(async move {
            stop_requested.await;
            on_signal.cancel();
        });
        edgewatch_sim::run(args, stop).await?;
        Ok(())
    })
}

fn serial(args: crate::serial::SerialArgs) -> ExitCode {
    crate::logging::init("info", false);
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(crate::serial::run_standalone(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Checks `file` and prints the configuration `run` would use: with the same flags and
/// environment variables applied, and the loopback rules written into the addresses.
fn check_config(file: &std::path::Path, run: &RunArgs) -> ExitCode {
    let loaded = AppConfig::load(file).and_then(|mut cfg| {
        cfg.apply(&overrides(run));
        cfg.validate(Some(file)).map(|()| cfg)
    });
    match loaded {
        Ok(mut cfg) => {
            let mut text = format!("{}: ok\n", file.display());
            let notes = run_binds(&mut cfg);
            match toml::to_string_pretty(&cfg) {
                Ok(effective) => text.push_str(&format!(
                    "\n# effective configuration (what `edgewatch run` uses, flags and EDGEWATCH_* variables applied)\n{}{effective}\n",
                    notes.iter().map(|n| format!("{n}\n")).collect::<String>()
                )),
                Err(err) => eprintln!("warning: cannot print the configuration: {err}"),
            }
            done(out(&text))
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Makes the config say what `run` binds: the loopback rules of the broker (no accounts,
/// no `allow_anonymous`) and of HTTP (no HTTP credential) written into the addresses.
/// Returns a comment line for each rule that changed an address.
fn run_binds(cfg: &mut AppConfig) -> Vec<&'static str> {
    let mut notes = Vec::new();
    if cfg.broker.apply_loopback_rule() {
        notes.push(
            "# MQTT listeners on loopback: no [[broker.users]] and broker.allow_anonymous = false",
        );
    }
    let access = crate::http_access::HttpAccess::of(cfg);
    if let Ok(listen) = cfg.bridge.http_listen.parse::<std::net::SocketAddr>() {
        let bound = crate::http_access::http_bind_addr(listen, access);
        if bound != listen {
            cfg.bridge.http_listen = bound.to_string();
            notes.push(
                "# HTTP on loopback: no HTTP credential (auth tokens, JWT key or [[broker.users]])",
            );
        }
    }
    notes
}

fn passwd(username: Option<&str>) -> ExitCode {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password (shown as you type): ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    if let Err(err) = stdin.lock().read_line(&mut line) {
        eprintln!("error: cannot read the password: {err}");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("error: empty password");
        return ExitCode::from(EXIT_CONFIG);
    }
    match edgewatch_broker::hash_password(password) {
        Ok(hash) => {
            let text = match username {
                Some(user) => format!(
                    "[[broker.users]]\nusername = {}\npassword_hash = {}\n",
                    toml_string(user),
                    toml_string(&hash)
                ),
                None => format!("{hash}\n"),
            };
            done(out(&text))
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn token_create(name: &str, read: &[String], publish: &[String], metrics: bool) -> ExitCode {
    use edgewatch_bridge::http::auth::{tokens, AuthConfig, TokenConfig};
    let (token, hash) = tokens::generate();
    let entry = TokenConfig {
        name: name.to_owned(),
        hash,
        read: read.to_vec(),
        publish: publish.to_vec(),
        metrics,
    };
    // The same checks as the config file: a bad filter is said now, not at the hub's start.
    let check = AuthConfig {
        tokens: vec![entry.clone()],
        ..AuthConfig::default()
    };
    if let Err(err) = check.validate() {
        let key = err.key.replace("auth.tokens[0].", "--");
        eprintln!("error: {key}: {}", err.message);
        return ExitCode::from(EXIT_CONFIG);
    }
    let list = |l: &[String]| {
        let items: Vec<String> = l.iter().map(|f| toml_string(f)).collect();
        format!("[{}]", items.join(", "))
    };
    eprintln!("The token (shown once; the config keeps only its hash):");
    if !out(&format!("{token}\n")) {
        return ExitCode::FAILURE;
    }
    eprintln!("\nAdd to the config file:");
    done(out(&format!(
        "\n[[auth.tokens]]\nname = {}\nhash = {}\nread = {}\npublish = {}\nmetrics = {metrics}\n",
        toml_string(name),
        toml_string(&entry.hash),
        list(read),
        list(publish)
    )))
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}
