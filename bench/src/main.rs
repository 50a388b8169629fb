//! `edgewatch-bench`: edgewatch side by side with Mosquitto on this machine. See BENCHMARKS.md.
//!
//! # Layout
//! * `scenarios`: one module per scenario (relay, fullpath and latency, fan-out, history,
//!   store, footprint, sim), each a sequence of named steps.
//! * `load`: the load's specification and counters, and the clock latencies are measured with.
//! * `publishers`: the load generator, MQTT publishers on raw sockets.
//! * `receivers`: MQTT, SSE, WebSocket and watch receivers that count deliveries.
//! * `devices`: raw-socket MQTT devices for the connection-count scenarios.
//! * `procs`: starting edgewatch and Mosquitto, sampling their CPU and memory.
//! * `store`: the store alone, in process.
//! * `report`: the JSON result, the Markdown table and the SVG charts.

mod devices;
mod load;
mod procs;
mod publishers;
mod receivers;
mod report;
mod scenarios;
mod store;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rumqttc::QoS;

use report::{Meta, Report};
use scenarios::{Ctx, Params};

const SCENARIOS: [&str; 11] = [
    "relay",
    "fullpath",
    "latency",
    "fanout",
    "history",
    "store",
    "footprint",
    "memory",
    "sim",
    "auth",
    "uplink",
];

/// Benchmarks edgewatch against Mosquitto; prints a table, writes JSON results and SVGs.
#[derive(Debug, Parser)]
#[command(name = "edgewatch-bench")]
struct Args {
    /// Shorter runs and smaller sizes (the whole run takes under 5 minutes).
    #[arg(long)]
    quick: bool,
    /// Only the smallest scenario (relay QoS0), one short run: proves the harness works.
    #[arg(long, conflicts_with = "quick")]
    smoke: bool,
    /// Run only this scenario (repeatable): relay, fullpath, latency, fanout, history, store,
    /// footprint, memory, sim, auth, uplink.
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
    /// Runs per figure (default 3; 1 in --smoke).
    #[arg(long)]
    runs: Option<usize>,
    /// The system under test.
    #[arg(long, default_value = "target/release/edgewatch")]
    edgewatch: PathBuf,
    /// Mosquitto binary (default: /usr/sbin/mosquitto or `mosquitto` on PATH).
    #[arg(long)]
    mosquitto: Option<PathBuf>,
    /// Directory of the JSON results.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Keep the work directory (configs, data dirs, server logs) for inspection.
    #[arg(long)]
    keep: bool,
    /// Directory of the SVG pictures (not written in --smoke).
    #[arg(long, default_value = "docs/bench")]
    svg_dir: PathBuf,
    /// `latency`: readings/s of each device instead of the mode's ladder (repeatable; e.g.
    /// `--latency-rate 50` for 50,000/s from 1,000 devices without the full mode's other rates).
    #[arg(long = "latency-rate")]
    latency_rates: Vec<f64>,
    /// `latency`: measure only these clients (repeatable): `mosquitto` (MQTT on Mosquitto),
    /// `sse`, `ws`, `mqtt` (on edgewatch). Default: all four.
    #[arg(long = "latency-client", value_parser = ["mosquitto", "sse", "ws", "mqtt"])]
    latency_clients: Vec<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // On Ctrl-C or SIGTERM the scenario future is dropped: every server guard kills its
        // process and the work directory is removed.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            _ = term.recv() => bail!("terminated"),
        }
    })
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s
        })
        .unwrap_or_default()
}

async fn run(args: Args) -> Result<()> {
    for s in &args.scenarios {
        if !SCENARIOS.contains(&s.as_str()) {
            bail!("unknown scenario {s:?}; known: {}", SCENARIOS.join(", "));
        }
    }
    let p = params(&args);
    let selected: Vec<&str> = if args.smoke && args.scenarios.is_empty() {
        vec!["relay"]
    } else if args.scenarios.is_empty() {
        SCENARIOS.to_vec()
    } else {
        args.scenarios.iter().map(String::as_str).collect()
    };
    if !args.edgewatch.exists() {
        bail!(
            "{} not found: build it with `cargo build --release`",
            args.edgewatch.display()
        );
    }
    let edgewatch = std::fs::canonicalize(&args.edgewatch)?;
    let mosquitto = procs::find_mosquitto(args.mosquitto.as_deref());
    if mosquitto.is_none() {
        if args.smoke {
            println!("mosquitto not found: the smoke run measures edgewatch only");
        } else {
            bail!(
                "mosquitto not found (install the Debian package `mosquitto`, or pass --mosquitto)"
            );
        }
    }
    let work = std::env::temp_dir().join(format!("edgewatch-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let _cleanup = WorkDir(work.clone(), args.keep);
    if args.keep {
        println!("work directory (kept): {}", work.display());
    }
    let meta = meta(p.mode, &edgewatch, mosquitto.as_deref());
    println!(
        "edgewatch-bench: {} mode, {} runs per figure, {} cores, load average {}",
        p.mode, p.runs, meta.cores, meta.load_average_at_start
    );
    let ctx = Ctx {
        edgewatch,
        mosquitto,
        work,
        p,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(4)
            .build()
            .context("HTTP client")?,
        fresh_rss: std::sync::Mutex::new(Vec::new()),
    };
    let mut report = Report::default();
    let started = Instant::now();
    for s in &selected {
        run_scenario(&ctx, &args, &selected, s, &mut report).await;
    }
    ctx.push_fresh_rss(&mut report);
    report.print_table(&meta);
    println!("total {:.0} s", started.elapsed().as_secs_f64());
    write_results(&args, &report, &meta, &selected)?;
    if report.figures.iter().any(|f| f.metric == "FAILED") {
        bail!("a scenario failed");
    }
    Ok(())
}

/// The mode's sizes and times, with the command line's overrides.
fn params(args: &Args) -> Params {
    let mut p = if args.smoke {
        Params::smoke()
    } else if args.quick {
        Params::quick()
    } else {
        Params::full()
    };
    if let Some(runs) = args.runs {
        p.runs = runs.max(1);
        if p.mode == "full" {
            p.repeat_runs = p.runs;
        }
    }
    if !args.latency_rates.is_empty() {
        p.latency_device_rates.clone_from(&args.latency_rates);
    }
    if !args.latency_clients.is_empty() {
        p.latency_clients = Some(args.latency_clients.clone());
    }
    p
}

/// What the results record about this run: date, commit, machine, binaries.
fn meta(mode: &str, edgewatch: &std::path::Path, mosquitto: Option<&std::path::Path>) -> Meta {
    let commit = {
        let rev = command_output("git", &["rev-parse", "--short", "HEAD"]);
        let dirty = !command_output("git", &["status", "--porcelain", "--untracked-files=no"])
            .trim()
            .is_empty();
        format!("{}{}", rev.trim(), if dirty { "-dirty" } else { "" })
    };
    Meta {
        date: load::rfc3339_ms(load::unix_ms_now()),
        commit,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        mode: mode.to_owned(),
        load_average_at_start: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        edgewatch_bin: edgewatch.display().to_string(),
        mosquitto_bin: mosquitto
            .map(|m| m.display().to_string())
            .unwrap_or_default(),
        mosquitto_version: mosquitto
            .map(|m| {
                command_output(&m.display().to_string(), &["-h"])
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .unwrap_or_default(),
    }
}

/// Runs scenario `s`, records how long it took, and turns a failure into a `FAILED` figure.
async fn run_scenario(ctx: &Ctx, args: &Args, selected: &[&str], s: &str, report: &mut Report) {
    println!("== {s}");
    let t = Instant::now();
    let result = match s {
        "relay" if args.smoke => scenarios::relay(ctx, report, &[QoS::AtMostOnce]).await,
        "relay" => scenarios::relay(ctx, report, &[QoS::AtMostOnce, QoS::AtLeastOnce]).await,
        "fullpath" => scenarios::fullpath(ctx, report).await,
        "latency" => scenarios::latency(ctx, report).await,
        "fanout" => scenarios::fanout(ctx, report).await,
        "history" => scenarios::history(ctx, report).await,
        "store" => store::store(ctx, report).await,
        "sim" => scenarios::sim(ctx, report).await,
        "memory" => scenarios::memory(ctx, report).await,
        "auth" => scenarios::auth(ctx, report).await,
        "uplink" => scenarios::uplink(ctx, report).await,
        "footprint" => {
            let r = scenarios::binary_sizes(ctx, report);
            if r.is_ok() && !selected.contains(&"fullpath") {
                println!("  (RSS figures come from the fullpath scenario)");
            }
            r
        }
        _ => unreachable!("checked above"),
    };
    report
        .scenario_secs
        .insert(s.to_owned(), t.elapsed().as_secs_f64());
    if let Err(e) = result {
        println!("  scenario {s} failed: {e:#}");
        report.push(report::Figure::new(s, "-", "FAILED", "-", vec![]).note(format!("{e:#}")));
    }
}

/// Writes the JSON results and the markdown table, and (except in --smoke) the pictures.
fn write_results(args: &Args, report: &Report, meta: &Meta, selected: &[&str]) -> Result<()> {
    let out = if args.smoke {
        args.out.join("smoke")
    } else {
        args.out.clone()
    };
    // A run of some scenarios writes `subset.json` and `table-subset.md`, leaving the whole
    // run's `all.json` and `table.md` alone.
    let whole = selected.len() == SCENARIOS.len() || args.smoke;
    let all_name = if whole { "all" } else { "subset" };
    report.write_json(&out, meta, selected, all_name)?;
    let table = if whole { "table.md" } else { "table-subset.md" };
    report.write_markdown(&out.join(table), meta)?;
    println!("results: {}/*.json", out.display());
    if !args.smoke {
        for svg in report.write_svgs(&args.svg_dir, meta)? {
            println!("picture: {svg}");
        }
    }
    Ok(())
}

/// Removes the harness's temporary directory (data dirs, configs, logs) at exit.
#[derive(Debug)]
struct WorkDir(PathBuf, bool);

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.1 {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
