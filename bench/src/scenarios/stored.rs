//! Loading readings into edgewatch and reading back what its store holds: the stored count,
//! rejects, what the store wrote, the disk its data dir takes.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rumqttc::QoS;

use super::{mib, Ctx};
use crate::load::LoadSpec;
use crate::procs::{self, Server};
use crate::publishers::Fleet;

/// RSS (MiB) of a loaded server, then its orderly stop and the disk its data dir takes per
/// stored reading (bytes allocated).
pub(super) async fn stop_and_measure_disk(
    server: Server,
    data: &Path,
    stored: u64,
) -> Result<(f64, f64)> {
    let rss = mib(server.rss_kib());
    server.stop(Duration::from_secs(30)).await?;
    let (allocated, _) = procs::disk_usage(data);
    Ok((allocated as f64 / stored.max(1) as f64, rss))
}

pub(super) async fn stored_count(ctx: &Ctx, base: &str) -> Result<u64> {
    let v: serde_json::Value = serde_json::from_slice(
        &ctx.http
            .get(format!("{base}/v1/series"))
            .send()
            .await?
            .bytes()
            .await?,
    )?;
    Ok(v["series"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["count"].as_u64()).sum())
        .unwrap_or(0))
}

async fn metrics_text(ctx: &Ctx, base: &str) -> Result<String> {
    let resp = ctx.http.get(format!("{base}/metrics")).send().await?;
    Ok(resp.text().await?)
}

/// One counter or gauge without labels from the hub's `/metrics`.
pub(super) async fn metric(ctx: &Ctx, base: &str, name: &str) -> Result<f64> {
    metrics_text(ctx, base)
        .await?
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("{name} not in /metrics"))
}

/// What the store wrote since start, from `/metrics`: `(kind, values, bytes)` for log,
/// chunk and rollup, plus sealed readings.
pub(super) async fn store_writes(ctx: &Ctx, base: &str) -> Result<String> {
    let text = metrics_text(ctx, base).await?;
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let mut parts = vec![];
    for kind in ["log", "chunk", "rollup"] {
        let n = value(&format!(
            "edgewatch_store_written_values_total{{kind=\"{kind}\"}}"
        ));
        let b = value(&format!(
            "edgewatch_store_written_bytes_total{{kind=\"{kind}\"}}"
        ));
        parts.push(format!("{kind} {n:.0} values / {:.1} MB", b / 1e6));
    }
    let sealed = value("edgewatch_store_sealed_readings_total");
    let chunks = value("edgewatch_store_written_values_total{kind=\"chunk\"}");
    parts.push(format!(
        "{:.0} readings per sealed chunk",
        sealed / chunks.max(1.0)
    ));
    Ok(parts.join(", "))
}

pub(super) async fn timed_get(ctx: &Ctx, url: &str) -> Result<(f64, serde_json::Value)> {
    let t = Instant::now();
    let resp = ctx.http.get(url).send().await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !status.is_success() {
        bail!(
            "GET {url}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok((ms, serde_json::from_slice(&body)?))
}

/// What a load into edgewatch left in its store.
pub(super) struct Stored {
    pub(super) samples: Vec<(f64, u64)>,
    pub(super) sent: u64,
    pub(super) acked: u64,
    pub(super) stored: u64,
    pub(super) rejected: u64,
    pub(super) load_secs: f64,
    pub(super) sut_cores: f64,
    pub(super) gen_cores: f64,
}

/// Runs a fleet into edgewatch and follows the stored count (`/v1/series`) until the fleet is
/// done and the count reached `spec.max_messages` or stopped moving for 3 s.
pub(super) async fn load_and_store(
    ctx: &Ctx,
    server: &Server,
    spec: &LoadSpec,
    tag: &str,
) -> Result<Stored> {
    let base = server.http_base();
    let before = stored_count(ctx, &base).await?;
    let cpu0 = server.cpu_secs();
    let own0 = procs::own_cpu_secs();
    let fleet = Fleet::start(server.mqtt, spec, tag).await?;
    let started = Instant::now();
    let mut samples: Vec<(f64, u64)> = vec![(0.0, 0)];
    let mut last_report = Instant::now();
    let mut unchanged_since = Instant::now();
    let mut sending_secs = None;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let c = stored_count(ctx, &base).await?.saturating_sub(before);
        let t = started.elapsed();
        if samples.last().is_some_and(|s| s.1 != c) {
            unchanged_since = Instant::now();
        }
        samples.push((t.as_secs_f64(), c));
        if last_report.elapsed() > Duration::from_secs(10) {
            println!("    {tag}: {c} of {} stored", spec.max_messages);
            last_report = Instant::now();
        }
        let sent = fleet.stats.sent.load(Ordering::Relaxed);
        if sending_secs.is_none() && (sent >= spec.max_messages || t >= spec.duration) {
            sending_secs = Some(t.as_secs_f64());
        }
        // Settled: nothing new stored for 3 s and every QoS1 publish acknowledged (a client
        // still holding unacknowledged publishes gets up to 10 s more before the fleet, and
        // whatever it still queues, is dropped).
        let all_acked =
            spec.qos == QoS::AtMostOnce || fleet.stats.acked.load(Ordering::Relaxed) >= sent;
        let quiet = unchanged_since.elapsed();
        let settled =
            quiet > Duration::from_secs(3) && (all_acked || quiet > Duration::from_secs(10));
        if c >= spec.max_messages
            || (sending_secs.is_some() && settled)
            || t > spec.duration + Duration::from_secs(60)
        {
            break;
        }
    }
    let load_secs = sending_secs.unwrap_or_else(|| started.elapsed().as_secs_f64());
    let busy = started.elapsed().as_secs_f64();
    let rejected = timed_get(ctx, &format!("{base}/v1/rejects"))
        .await
        .map(|(_, v)| v["total"].as_u64().unwrap_or(0))
        .unwrap_or(0);
    let out = Stored {
        stored: samples.last().map_or(0, |s| s.1),
        samples,
        sent: fleet.stats.sent.load(Ordering::Relaxed),
        acked: fleet.stats.acked.load(Ordering::Relaxed),
        rejected,
        load_secs,
        sut_cores: (server.cpu_secs() - cpu0) / busy,
        gen_cores: (procs::own_cpu_secs() - own0) / busy,
    };
    drop(fleet);
    Ok(out)
}

/// Stored readings/s in three equal windows of `[0, until]` s, after the first stored reading.
pub(super) fn window_rates(samples: &[(f64, u64)], until: f64) -> Vec<f64> {
    let first = samples
        .iter()
        .position(|s| s.1 > 0)
        .map_or(0.0, |i| samples[i.saturating_sub(1)].0);
    let at = |t: f64| -> f64 {
        let i = samples
            .iter()
            .position(|s| s.0 >= t)
            .unwrap_or(samples.len() - 1);
        if i == 0 {
            return samples[0].1 as f64;
        }
        let (a, b) = (samples[i - 1], samples[i]);
        let f = if b.0 > a.0 {
            ((t - a.0) / (b.0 - a.0)).min(1.0)
        } else {
            1.0
        };
        a.1 as f64 + f * (b.1 as f64 - a.1 as f64)
    };
    let span = (until - first).max(0.25);
    (0..3)
        .map(|k| {
            let (a, b) = (
                first + span * k as f64 / 3.0,
                first + span * (k + 1) as f64 / 3.0,
            );
            (at(b) - at(a)) / (b - a)
        })
        .collect()
}
