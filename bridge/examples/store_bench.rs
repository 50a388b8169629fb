//! Measures the store alone (no MQTT, no HTTP): ingest through `Store::apply` + flush in
//! writer-sized batches, bytes on disk per reading, time to open (ready) on that data, and the
//! latency of the two dashboard queries.
//!
//! ```text
//! cargo run --release -p edgewatch-bridge --example store_bench -- \
//!     --readings 10000000 --series 1000 --batch 1000 [--dir PATH] [--queries 200] [--json PATH] \
//!     [--jitter SECS]
//! ```
//!
//! With `--json`, the figures are also written as `[{"metric","unit","runs":[..],"note"}]`,
//! each with three runs where it can (thirds of the load, three opens, thirds of the
//! queries): `edgewatch-bench --scenario store` runs this and reports them.
//!
//! Readings: `series` series (`sensors/dev{i/4}/{metric}`, 4 metrics per device), 1 Hz event
//! times, all series once per second in seq order, receive time 0-19 ms after the event time,
//! values a random walk with two decimals (like `21.37`). Generation is outside the timed part.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edgewatch_bridge::store::{ReadingQuery, RollupQuery, Store, StoreOptions};
use edgewatch_protocol::{Reading, TopicFilter};

const METRICS: [&str; 4] = ["temperature", "humidity", "pressure", "voltage"];
const HOUR: i64 = 3_600_000;

struct Args {
    readings: u64,
    series: usize,
    batch: usize,
    dir: Option<PathBuf>,
    queries: usize,
    /// Skip the load and measure the store already in `dir`.
    reuse: bool,
    /// Event times arrive up to this many seconds late (uniform per reading), as when several
    /// publishers feed a series and drift apart; 0 = in order.
    jitter: u64,
    /// Also write the figures here as JSON (read by `edgewatch-bench --scenario store`).
    json: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        readings: 10_000_000,
        series: 1000,
        batch: 1000,
        dir: None,
        queries: 200,
        reuse: false,
        jitter: 0,
        json: None,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    for pair in v.chunks(2) {
        let val = pair.get(1).map(String::as_str).unwrap_or("");
        let num = || {
            val.parse::<u64>()
                .unwrap_or_else(|_| panic!("{} needs a number", pair[0]))
        };
        match pair[0].as_str() {
            "--readings" => a.readings = num(),
            "--series" => a.series = num() as usize,
            "--batch" => a.batch = num() as usize,
            "--queries" => a.queries = num() as usize,
            "--dir" => a.dir = Some(PathBuf::from(val)),
            "--reuse" => a.reuse = num() != 0,
            "--jitter" => a.jitter = num(),
            "--json" => a.json = Some(PathBuf::from(val)),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn device(i: usize) -> String {
    format!("dev{}", i / 4)
}

/// Figures for `--json`.
#[derive(Default)]
struct Figures(Vec<serde_json::Value>);

impl Figures {
    fn push(&mut self, metric: &str, unit: &str, runs: Vec<f64>, note: String) {
        self.0
            .push(serde_json::json!({"metric": metric, "unit": unit, "runs": runs, "note": note}));
    }
}

/// The medians of three consecutive thirds of `v` (fewer runs when `v` is shorter).
fn thirds(v: &[f64]) -> Vec<f64> {
    let per = v.len().div_ceil(3).max(1);
    v.chunks(per).map(|c| summary(c.to_vec()).0).collect()
}

fn summary(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn dir_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut apparent, mut allocated) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                apparent += m.len();
                allocated += m.blocks() * 512;
            }
        }
    }
    (apparent, allocated)
}

fn main() {
    let a = args();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().join("store"));
    let opts = StoreOptions::default();
    let secs = (a.readings / a.series as u64) as i64;
    let t0 = 1_790_000_000_000 / HOUR * HOUR;
    println!(
        "store_bench: {} readings = {} series x {secs} s at 1 Hz, batches of {}, dir {}",
        secs * a.series as i64,
        a.series,
        a.batch,
        dir.display()
    );

    // Load.
    let mut figures = Figures::default();
    let store = Store::open(&dir, &opts).expect("open");
    let stored = if a.reuse {
        store.last_seq().expect("seq")
    } else {
        load(&a, &store, t0, secs, &mut figures)
    };
    let st = store.stats().expect("stats");
    let (apparent, allocated) = dir_usage(&dir);
    let w = st.written;
    println!(
        "written since open: log {} blocks / {:.1} MB, chunks {} / {:.1} MB ({:.0} readings each), \
         rollup pages {} / {:.1} MB",
        w.log_blocks,
        w.log_bytes as f64 / 1e6,
        w.chunks,
        w.chunk_bytes as f64 / 1e6,
        w.chunk_rows as f64 / w.chunks.max(1) as f64,
        w.rollup_pages,
        w.rollup_bytes as f64 / 1e6
    );
    println!(
        "disk after load: size_on_disk {} B = {:.1} B/reading; du apparent {:.1}, allocated {:.1} B/reading",
        st.size_on_disk,
        st.size_on_disk as f64 / stored as f64,
        apparent as f64 / stored as f64,
        allocated as f64 / stored as f64
    );
    figures.push(
        "disk per reading, rollups included",
        "bytes",
        vec![st.size_on_disk as f64 / stored as f64],
        format!("sled size_on_disk / {stored} readings, {} series", a.series),
    );
    drop(store);
    measure(&a, &dir, &opts, stored, t0, secs, &mut figures);
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&figures.0).expect("figures");
        std::fs::write(path, text).expect("write --json");
    }
}

/// Loads the readings through `apply` + `flush` and reports the rate; returns how many were
/// stored.
fn load(a: &Args, store: &Store, t0: i64, secs: i64, figures: &mut Figures) -> u64 {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut values: Vec<i64> = (0..a.series).map(|i| 2000 + (i as i64 % 500)).collect();
    let names: Vec<(String, &str)> = (0..a.series).map(|i| (device(i), METRICS[i % 4])).collect();
    let mut batch = Vec::with_capacity(a.batch);
    let mut busy = Duration::ZERO;
    let mut batch_times = Vec::new();
    let mut stored = 0u64;
    let mut report_at = Instant::now();
    let total = secs as u64 * a.series as u64;
    let mut produced = 0u64;
    for s in 0..secs {
        for (i, (dev, metric)) in names.iter().enumerate() {
            let r = rng.next();
            values[i] += (r % 21) as i64 - 10;
            let late = if a.jitter == 0 {
                0
            } else {
                (r >> 40) % (a.jitter + 1)
            };
            let ts = t0 + (s - late as i64).max(0) * 1000;
            batch.push(Reading {
                device_id: dev.clone(),
                metric: (*metric).to_owned(),
                value: values[i] as f64 / 100.0,
                unit: Some("C".to_owned()),
                timestamp_ms: ts,
                received_at_ms: ts + ((r >> 32) % 20) as i64,
            });
            produced += 1;
            if batch.len() == a.batch || produced == total {
                let started = Instant::now();
                let seqs = store.apply(&batch, &[]).expect("apply");
                store.flush().expect("flush");
                let took = started.elapsed();
                busy += took;
                batch_times.push(took.as_secs_f64() * 1000.0);
                stored += seqs.iter().filter(|s| s.is_some()).count() as u64;
                batch.clear();
                if report_at.elapsed() > Duration::from_secs(15) {
                    println!(
                        "  {stored} stored, {:.0} readings/s so far",
                        stored as f64 / busy.as_secs_f64()
                    );
                    report_at = Instant::now();
                }
            }
        }
    }
    let rate = stored as f64 / busy.as_secs_f64();
    let (bmed, bmin, bmax) = summary(batch_times.clone());
    println!(
        "ingest: {stored} readings in {:.1} s of apply+flush = {rate:.0} readings/s \
         (per batch of {}: median {bmed:.2} ms, min {bmin:.2}, max {bmax:.2})",
        busy.as_secs_f64(),
        a.batch
    );
    // Rate per third of the load: readings of those batches over their apply+flush time.
    let per = batch_times.len().div_ceil(3).max(1);
    let rates: Vec<f64> = batch_times
        .chunks(per)
        .map(|c| (c.len() * a.batch) as f64 / (c.iter().sum::<f64>() / 1000.0))
        .collect();
    figures.push(
        "apply + flush (the writer's calls)",
        "readings/s",
        rates,
        format!(
            "{stored} readings in batches of {}; runs = thirds of the load",
            a.batch
        ),
    );
    store.flush().expect("flush");
    stored
}

/// Time to ready and query latencies on the store in `dir`.
fn measure(
    a: &Args,
    dir: &Path,
    opts: &StoreOptions,
    stored: u64,
    t0: i64,
    secs: i64,
    figures: &mut Figures,
) {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    // Time to ready: open (sled recovery + catalogue + replay of the open chunks).
    let mut opens = Vec::new();
    let mut store = None;
    for _ in 0..3 {
        drop(store.take());
        let started = Instant::now();
        let s = Store::open(dir, opts).expect("reopen");
        opens.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(s.last_seq().expect("seq"), stored, "reopen lost readings");
        store = Some(s);
    }
    let store = store.expect("store");
    figures.push(
        "Store::open to ready",
        "ms",
        opens.clone(),
        format!("{stored} readings stored; one run per open"),
    );
    let (omed, omin, omax) = summary(opens);
    println!("open to ready: median {omed:.0} ms, min {omin:.0}, max {omax:.0} (3 opens)");
    let st = store.stats().expect("stats");
    println!(
        "disk after reopen: size_on_disk {:.1} B/reading, {} readings, {} series",
        st.size_on_disk as f64 / st.readings.max(1) as f64,
        st.readings,
        st.series
    );

    // 1 h of one series.
    let span_s = secs.max(3601);
    let mut times = Vec::new();
    let mut returned = 0;
    for q in 0..a.queries {
        let r = rng.next();
        let i = (r % a.series as u64) as usize;
        let off = ((r >> 20) % (span_s - 3600).max(1) as u64) as i64;
        let from = t0 + off * 1000;
        let filter = TopicFilter::parse(&format!("sensors/{}/{}", device(i), METRICS[i % 4]))
            .expect("filter");
        let started = Instant::now();
        let page = store
            .readings(&ReadingQuery {
                filters: vec![filter],
                from_ms: Some(from),
                to_ms: Some(from + HOUR),
                after: 0,
                limit: 10_000,
            })
            .expect("readings");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        returned = page.readings.len();
        if q == 0 {
            assert!(page.readings.windows(2).all(|w| w[0].seq < w[1].seq));
        }
    }
    figures.push(
        "1 h of 1 Hz, one series, store API",
        "ms",
        thirds(&times),
        format!(
            "run = median of a third of {} queries; {returned} readings each",
            a.queries
        ),
    );
    let (qmed, qmin, qmax) = summary(times);
    println!(
        "1 h of one series: median {qmed:.2} ms, min {qmin:.2}, max {qmax:.2} \
         ({} queries, last returned {returned} readings)",
        a.queries
    );

    // 24 h x 100 series at ~1,000 points (2 min buckets, as /v1/rollups picks for 24 h).
    let devices = (a.series.min(100) / 4).max(1);
    let filters: Vec<TopicFilter> = (0..devices)
        .map(|d| TopicFilter::parse(&format!("sensors/dev{d}/+")).expect("filter"))
        .collect();
    let mut times = Vec::new();
    let mut points = 0;
    let mut n_series = 0;
    for _ in 0..a.queries.clamp(5, 50) {
        let started = Instant::now();
        let (_, rollups) = store
            .rollups(&RollupQuery {
                filters: filters.clone(),
                from_ms: t0,
                to_ms: t0 + 24 * HOUR,
                step_ms: 120_000,
            })
            .expect("rollups");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        n_series = rollups.len();
        points = rollups.iter().map(|s| s.points.len()).sum::<usize>();
    }
    figures.push(
        &format!("24 h x {n_series} series rollup, store API"),
        "ms",
        thirds(&times),
        format!(
            "2 min step; run = median of a third of {} queries; {points} points",
            times.len()
        ),
    );
    let (rmed, rmin, rmax) = summary(times);
    println!(
        "24 h x {n_series} series rollup (2 min step): median {rmed:.2} ms, min {rmin:.2}, \
         max {rmax:.2} ({points} points in all; data covers {:.1} h)",
        secs as f64 / 3600.0
    );
}
