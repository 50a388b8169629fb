//! history: sustained ingest, a preload, query latencies, disk per reading and time to ready.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rumqttc::QoS;

use super::stored::{
    load_and_store, stop_and_measure_disk, store_writes, stored_count, timed_get, window_rates,
};
use super::{mib, Ctx};
use crate::load::{self, LoadSpec, Shape};
use crate::procs::{self, EdgewatchTuning, Server};
use crate::report::{Figure, Report};

/// Series of the history loads (`sensors/h{k}/temperature`, 1 Hz event time each).
const SERIES: usize = 100;

/// One hour in milliseconds.
const HOUR_MS: i64 = 3_600_000;

/// history: sustained ingest (QoS1, 1,000 devices, max rate, bounded time) on one store; then a
/// rate-limited preload of N readings (100 series at 1 Hz event time) on another, query
/// latencies, bytes on disk per reading and time to ready with that store.
pub(crate) async fn history(ctx: &Ctx, report: &mut Report) -> Result<()> {
    // Event time of the first reading of each series: three days ago, on the hour.
    let t0_ms = (load::unix_ms_now() - 3 * 24 * HOUR_MS) / HOUR_MS * HOUR_MS;
    ingest_with_fleet(ctx, report, t0_ms).await?;
    ingest_with_sim(ctx, report).await?;
    let mut preloaded = preload(ctx, report, t0_ms).await?;
    let base = preloaded.server.http_base();
    query_one_series(ctx, report, &base, preloaded.stored, t0_ms).await?;
    query_rollups(ctx, report, &base, preloaded.stored, t0_ms).await?;
    let writes = store_writes(ctx, &base).await?;
    let (per, rss) =
        stop_and_measure_disk(preloaded.server, &preloaded.data, preloaded.stored).await?;
    preloaded.disk.push(per);
    preloaded.rss_after.push(rss);
    push_disk_figures(
        report,
        &preloaded.data,
        preloaded.stored,
        &writes,
        preloaded.disk,
        preloaded.rss_after,
    );
    restart(
        ctx,
        report,
        &preloaded.dir,
        &preloaded.data,
        preloaded.stored,
    )
    .await
}

/// What the runs of the sustained ingest measured.
#[derive(Default)]
struct IngestRuns {
    rates: Vec<f64>,
    /// Acknowledged but not stored (nor rejected), per run.
    lost: Vec<f64>,
    sut: Vec<f64>,
    gen: Vec<f64>,
    notes: Vec<String>,
}

/// Sustained ingest at max rate from the harness's fleet, `repeat_runs` loads on fresh
/// servers.
async fn ingest_with_fleet(ctx: &Ctx, report: &mut Report, t0_ms: i64) -> Result<()> {
    let p = &ctx.p;
    let mut runs = IngestRuns::default();
    for r in 0..p.repeat_runs.max(1) {
        let dir = ctx.work.join(format!("ingest{r}"));
        let server = procs::start_edgewatch(
            &ctx.edgewatch,
            &dir,
            &dir.join("data"),
            &EdgewatchTuning::default(),
        )
        .await?;
        let spec = LoadSpec {
            publishers: p.history_publishers,
            qos: QoS::AtLeastOnce,
            rate: None,
            duration: p.ingest_secs,
            max_messages: 100_000_000,
            shape: Shape::History {
                series: SERIES,
                t0_ms,
            },
        };
        let s = load_and_store(ctx, &server, &spec, &format!("ingest{r}")).await?;
        let windows = window_rates(&s.samples, s.load_secs);
        if p.repeat_runs > 1 {
            runs.rates.push(crate::report::summarize(&windows).0);
        } else {
            runs.rates = windows;
        }
        runs.lost
            .push(s.acked.saturating_sub(s.stored + s.rejected) as f64);
        runs.sut.push(s.sut_cores);
        runs.gen.push(s.gen_cores);
        runs.notes.push(format!(
            "sent {}, acknowledged {}, stored {}, rejected {}",
            s.sent, s.acked, s.stored, s.rejected
        ));
        server.stop(Duration::from_secs(30)).await?;
        let _ = std::fs::remove_dir_all(&dir);
    }
    push_ingest_figures(ctx, report, runs);
    Ok(())
}

/// The figures of the sustained ingest from the harness's fleet.
fn push_ingest_figures(ctx: &Ctx, report: &mut Report, runs: IngestRuns) {
    let p = &ctx.p;
    let runs_are = if p.repeat_runs > 1 {
        format!(
            "runs = {} loads on fresh servers, each the median of its 3 equal windows",
            p.repeat_runs
        )
    } else {
        "runs = 3 equal windows of one load".to_owned()
    };
    report.push(
        Figure::new(
            "history",
            "edgewatch",
            "sustained ingest, persisted",
            "readings/s",
            runs.rates,
        )
        .note(format!(
            "QoS1 JSON, {} devices at max rate for {:.0} s; {runs_are}; {}",
            p.history_publishers,
            p.ingest_secs.as_secs_f64(),
            runs.notes.join(" / ")
        )),
    );
    report.push(
        Figure::new(
            "history",
            "edgewatch",
            "acknowledged but not stored",
            "readings",
            runs.lost,
        )
        .note("PUBACKed QoS1 readings missing from the store after the load settled"),
    );
    report.push(Figure::new(
        "history",
        "edgewatch",
        "server CPU during ingest",
        "cores",
        runs.sut,
    ));
    report.push(Figure::new(
        "history",
        "edgewatch",
        "harness CPU during ingest",
        "cores",
        runs.gen,
    ));
}

/// The same, driven by one `edgewatch sim` process (1,000 devices, JSON, QoS1): the
/// harness's rumqttc fleet above paces itself; the sim is the lighter generator.
async fn ingest_with_sim(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let p = &ctx.p;
    let (mut sim_rates, mut sim_notes) = (vec![], vec![]);
    for r in 0..p.repeat_runs.max(1) {
        let dir = ctx.work.join(format!("ingest-sim{r}"));
        let server = procs::start_edgewatch(
            &ctx.edgewatch,
            &dir,
            &dir.join("data"),
            &EdgewatchTuning::default(),
        )
        .await?;
        let base = server.http_base();
        let cpu0 = server.cpu_secs();
        let t0 = Instant::now();
        let acked = run_ingest_sim(ctx, &server).await?;
        // Wait until everything acknowledged is stored (bounded), then rate = stored / time
        // from the start of the load to the moment the last reading was stored.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut stored = stored_count(ctx, &base).await?;
        while stored < acked && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            stored = stored_count(ctx, &base).await?;
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let sut_cores = (server.cpu_secs() - cpu0) / elapsed;
        sim_rates.push(stored as f64 / elapsed);
        sim_notes.push(format!(
            "acknowledged {acked}, stored {stored}, server {sut_cores:.2} cores"
        ));
        server.stop(Duration::from_secs(30)).await?;
        let _ = std::fs::remove_dir_all(&dir);
    }
    report.push(
        Figure::new(
            "history",
            "edgewatch",
            "sustained ingest, persisted, edgewatch sim",
            "readings/s",
            sim_rates,
        )
        .note(format!(
            "1 `edgewatch sim` process: 1,000 devices, JSON, QoS1, offered 400,000/s for {:.0} s; \
             stored / (load start -> last reading stored); one run per fresh server: {}",
            p.ingest_secs.as_secs_f64(),
            sim_notes.join(" / ")
        )),
    );
    Ok(())
}

/// Runs one `edgewatch sim` (1,000 devices offering 400,000 readings/s, QoS1, for
/// `ingest_secs`) against `server`; returns the readings it had acknowledged.
async fn run_ingest_sim(ctx: &Ctx, server: &Server) -> Result<u64> {
    let secs = ctx.p.ingest_secs.as_secs_f64();
    let out = tokio::time::timeout(
        Duration::from_secs_f64(secs + 60.0),
        tokio::process::Command::new(&ctx.edgewatch)
            .arg("sim")
            .arg("--broker")
            .arg(format!("mqtt://{}", server.mqtt))
            .args([
                "--devices",
                "1000",
                "--rate",
                "400000",
                "--qos",
                "1",
                "--format",
                "json",
            ])
            .args([
                "--connect-rate",
                "5000",
                "--no-faults",
                "--json",
                "--id-prefix",
                "ingest",
            ])
            .arg("--duration")
            .arg(format!("{secs}"))
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("edgewatch sim did not finish in time")??;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("edgewatch sim --json output")?;
    Ok(v["acknowledged"].as_u64().unwrap_or(0))
}

/// The last preloaded server, still running, and the preloads' disk and memory figures.
struct Preloaded {
    server: Server,
    dir: PathBuf,
    data: PathBuf,
    /// Readings the last preload stored.
    stored: u64,
    /// Bytes on disk per stored reading, one per preload stopped so far.
    disk: Vec<f64>,
    /// RSS (MiB) after each preload stopped so far.
    rss_after: Vec<f64>,
}

/// Preload at a fixed rate the box sustains (`repeat_runs` times, each into a fresh server);
/// the last server keeps running for the queries.
async fn preload(ctx: &Ctx, report: &mut Report, t0_ms: i64) -> Result<Preloaded> {
    let p = &ctx.p;
    let n = p.history_readings;
    let preloads = p.repeat_runs.max(1);
    let (mut ratios, mut disk, mut rss_after, mut disk_notes) = (vec![], vec![], vec![], vec![]);
    let mut kept = None;
    for r in 0..preloads {
        let dir = ctx.work.join(format!("history{r}"));
        let data = dir.join("data");
        let server =
            procs::start_edgewatch(&ctx.edgewatch, &dir, &data, &EdgewatchTuning::default())
                .await?;
        let spec = LoadSpec {
            publishers: p.history_publishers,
            qos: QoS::AtLeastOnce,
            rate: Some(p.preload_rate),
            duration: p.history_timeout,
            max_messages: n,
            shape: Shape::History {
                series: SERIES,
                t0_ms,
            },
        };
        let s = load_and_store(ctx, &server, &spec, &format!("preload{r}")).await?;
        ratios.push(s.stored as f64 / s.sent.max(1) as f64);
        disk_notes.push(format!(
            "sent {}, acknowledged {}, stored {}",
            s.sent, s.acked, s.stored
        ));
        if s.stored < n {
            println!("    warning: only {} of {n} readings stored", s.stored);
        }
        if r + 1 < preloads {
            let (per, rss) = stop_and_measure_disk(server, &data, s.stored).await?;
            disk.push(per);
            rss_after.push(rss);
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            kept = Some((server, dir, data, s.stored));
        }
    }
    let (server, dir, data, stored) = kept.context("no preload")?;
    report.push(
        Figure::new("history", "edgewatch", "preload: stored / sent", "ratio", ratios).note(format!(
            "{n} readings at {} readings/s, QoS1, {} devices, {preloads} preload(s) into fresh servers: {}",
            p.preload_rate,
            p.history_publishers,
            disk_notes.join(" / ")
        )),
    );
    Ok(Preloaded {
        server,
        dir,
        data,
        stored,
        disk,
        rss_after,
    })
}

/// 1 hour of 1 Hz data for one series, 20 queries per run over different series and hours.
async fn query_one_series(
    ctx: &Ctx,
    report: &mut Report,
    base: &str,
    stored: u64,
    t0_ms: i64,
) -> Result<()> {
    let per_series_secs = (stored / SERIES as u64).max(3601) as i64;
    let mut one_series = vec![];
    let mut returned = 0usize;
    for run in 0..ctx.p.runs {
        let mut times = vec![];
        for q in 0..20i64 {
            let s = (q * 7 + run as i64) % SERIES as i64;
            let offset = (q * 977 + run as i64 * 131) % (per_series_secs - 3600).max(1);
            let from = t0_ms + offset * 1000;
            let url = format!(
                "{base}/v1/readings?filter=sensors/h{s}/temperature&from={from}&to={}&limit=10000",
                from + HOUR_MS
            );
            let (ms, v) = timed_get(ctx, &url).await?;
            returned = v["readings"].as_array().map_or(0, Vec::len);
            times.push(ms);
        }
        one_series.push(crate::report::summarize(&times).0);
    }
    report.push(
        Figure::new(
            "history",
            "edgewatch",
            "1 h of 1 Hz, one series (goal <= 5)",
            "ms",
            one_series,
        )
        .note(format!(
            "run = median of 20 queries; last query returned {returned} readings"
        )),
    );
    Ok(())
}

/// 24 h x 100 series rolled up to about 1,000 points, 5 queries per run.
async fn query_rollups(
    ctx: &Ctx,
    report: &mut Report,
    base: &str,
    stored: u64,
    t0_ms: i64,
) -> Result<()> {
    let mut rollup = vec![];
    let mut points = 0usize;
    for _ in 0..ctx.p.runs {
        let mut times = vec![];
        for _ in 0..5 {
            let url = format!(
                "{base}/v1/rollups?filter=sensors/%23&from={t0_ms}&to={}",
                t0_ms + 24 * HOUR_MS
            );
            let (ms, v) = timed_get(ctx, &url).await?;
            points = v["series"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| s["points"].as_array().map_or(0, Vec::len))
                        .sum()
                })
                .unwrap_or(0);
            times.push(ms);
        }
        rollup.push(crate::report::summarize(&times).0);
    }
    let covered_h = (stored / SERIES as u64) as f64 / 3600.0;
    report.push(
        Figure::new(
            "history",
            "edgewatch",
            "24 h x 100 series rollup (goal <= 50)",
            "ms",
            rollup,
        )
        .note(format!(
            "run = median of 5 queries; {points} points returned over all series; \
                 data covers {covered_h:.1} h of the 24 h window"
        )),
    );
    Ok(())
}

/// Disk per reading and RSS after each preload, once the last preloaded server stopped.
fn push_disk_figures(
    report: &mut Report,
    data: &Path,
    stored: u64,
    writes: &str,
    disk: Vec<f64>,
    rss_after: Vec<f64>,
) {
    let (_, apparent_after) = procs::disk_usage(data);
    report.push(
        Figure::new(
            "history",
            "edgewatch",
            "disk per reading (goal <= 40)",
            "bytes",
            disk,
        )
        .note(format!(
            "du of the data dir after orderly stop / readings stored, one run per preload; last run: \
             apparent size {:.1} B/reading; written since start: {writes}",
            apparent_after as f64 / stored.max(1) as f64
        )),
    );
    report.push(Figure::new(
        "history",
        "edgewatch",
        "RSS after preload",
        "MiB",
        rss_after,
    ));
}

/// Start to ready, and idle RSS, of `edgewatch run` on the preloaded store.
async fn restart(
    ctx: &Ctx,
    report: &mut Report,
    dir: &Path,
    data: &Path,
    stored: u64,
) -> Result<()> {
    let mut ready = vec![];
    let mut rss_restart = vec![];
    for _ in 0..ctx.p.runs {
        let s =
            procs::start_edgewatch(&ctx.edgewatch, dir, data, &EdgewatchTuning::default()).await?;
        ready.push(s.ready_after.as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_restart.push(mib(s.rss_kib()));
        s.stop(Duration::from_secs(30)).await?;
    }
    report.push(
        Figure::new(
            "history",
            "edgewatch",
            &format!("start to ready, {stored} stored"),
            "ms",
            ready,
        )
        .note("spawn of `edgewatch run` to its ready line"),
    );
    report.push(Figure::new(
        "history",
        "edgewatch",
        "RSS idle after restart",
        "MiB",
        rss_restart,
    ));
    Ok(())
}
