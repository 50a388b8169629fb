//! The `store` scenario: the store alone (no MQTT, no HTTP), through `store_bench`, the bridge
//! crate's example that loads readings with the writer's calls (`Store::apply` + `flush`) and
//! queries them with the store API. Same size as the `history` scenario (10M readings in full
//! mode), so the two show how much of a history request is the store and how much HTTP.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::report::{Figure, Report};
use crate::scenarios::Ctx;

/// Series written (`sensors/dev{i/4}/{metric}`, four metrics per device), as in `history`.
const SERIES: u64 = 100;

#[derive(Deserialize)]
struct StoreFigure {
    metric: String,
    unit: String,
    runs: Vec<f64>,
    note: String,
}

/// `store_bench` next to the edgewatch binary under test (`target/release/examples/`).
fn store_bench(ctx: &Ctx) -> Result<PathBuf> {
    let bin = ctx
        .edgewatch
        .parent()
        .map(|d| d.join("examples").join("store_bench"))
        .context("edgewatch binary has no directory")?;
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p edgewatch-bridge --example store_bench` (scripts/bench does)",
            bin.display()
        );
    }
    Ok(bin)
}

pub(crate) async fn store(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let bin = store_bench(ctx)?;
    let readings = ctx.p.history_readings;
    let queries = if ctx.p.mode == "full" { 200 } else { 60 };
    let invocations = ctx.p.repeat_runs.max(1);
    // Figures in first-seen order, each with the runs of every invocation.
    let mut merged: Vec<StoreFigure> = Vec::new();
    for k in 0..invocations {
        println!(
            "  store_bench {}/{invocations}: {readings} readings, {SERIES} series",
            k + 1
        );
        for f in store_bench_once(ctx, &bin, readings, queries).await? {
            match merged.iter_mut().find(|m| m.metric == f.metric) {
                Some(m) => m.runs.extend(f.runs),
                None => merged.push(f),
            }
        }
    }
    for f in merged {
        let note = if invocations > 1 {
            format!(
                "{}; runs of {invocations} store_bench invocations, each on a fresh directory",
                f.note
            )
        } else {
            f.note
        };
        report.push(Figure::new("store", "edgewatch", &f.metric, &f.unit, f.runs).note(note));
    }
    Ok(())
}

async fn store_bench_once(
    ctx: &Ctx,
    bin: &std::path::Path,
    readings: u64,
    queries: u32,
) -> Result<Vec<StoreFigure>> {
    let dir = ctx.work.join("store");
    let json = ctx.work.join("store.json");
    let _ = std::fs::remove_dir_all(&dir);
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(["--readings", &readings.to_string()])
        .args(["--series", &SERIES.to_string()])
        .args(["--queries", &queries.to_string()])
        .arg("--dir")
        .arg(&dir)
        .arg("--json")
        .arg(&json)
        .kill_on_drop(true);
    // 10M readings load in about 15-45 s on 2 cores; the bound is generous and still ends a
    // hung run.
    let limit = Duration::from_secs(60 + readings / 20_000);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .with_context(|| format!("store_bench did not finish in {limit:?}"))??;
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        bail!(
            "store_bench failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&std::fs::read(&json)?).context("store_bench --json output")
}
