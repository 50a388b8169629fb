//! memory: what each server holds under issue #20's load, after it, and per idle connection.
//!
//! On a freshly started server: one `edgewatch sim` process (`memory_devices` QoS 1 devices
//! at `memory_rate` readings/s in all, for `memory_secs`), watched by one SSE and one
//! WebSocket client on `sensors/#` (edgewatch) or one QoS 1 MQTT subscriber (Mosquitto, which
//! stores nothing: the nearest equal job). Figures: RSS at the start, peak RSS (`VmHWM`)
//! through the load, RSS `memory_after` after it; then, on another fresh server, the RSS each
//! of `memory_idle` idle MQTT connections adds (raw sockets: CONNECT, one SUBSCRIBE, nothing
//! more).

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rumqttc::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{mib, Ctx};
use crate::procs::{self, Server, Target};
use crate::publishers::{connect_packet, put_remaining_length, put_str};
use crate::receivers::{self, Receiver};
use crate::report::{Figure, Report};

/// One server through the load, the wait and the idle connections.
pub(crate) async fn memory(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let p = &ctx.p;
    for target in ctx.targets() {
        let t = target.name();
        let server = ctx.start(target, &format!("memory-{t}")).await?;
        let fresh = server.rss_kib();
        let watchers = watch(&server, target).await?;
        let delivered_before: u64 = watchers
            .iter()
            .map(|w| w.probe.count.load(Ordering::Relaxed))
            .sum();
        run_sim(ctx, &server, t).await?;
        let peak = procs::hwm_kib(server.pid).unwrap_or(0);
        tokio::time::sleep(p.memory_after).await;
        let after = server.rss_kib();
        let delivered: u64 = watchers
            .iter()
            .map(|w| w.probe.count.load(Ordering::Relaxed))
            .sum::<u64>()
            - delivered_before;
        drop(watchers);
        server.stop(Duration::from_secs(5)).await?;
        // Idle connections on a fresh server: after the load, the allocator's free lists (or
        // the pages it returned) decide what a new connection costs.
        let server = ctx.start(target, &format!("memory-idle-{t}")).await?;
        let (idle_before, idle_after) = idle_connections(&server, p.memory_idle).await?;
        server.stop(Duration::from_secs(5)).await?;
        let per_conn = idle_after.saturating_sub(idle_before) as f64 / p.memory_idle.max(1) as f64;
        let load = format!(
            "{} QoS 1 devices (edgewatch sim), {}/s for {} s; watchers: {}; {delivered} delivered to them",
            p.memory_devices,
            p.memory_rate,
            p.memory_secs,
            if target == Target::Edgewatch { "1 SSE + 1 WebSocket on sensors/#" } else { "1 MQTT QoS 1 subscriber on sensors/#" },
        );
        let mut push = |name: &str, unit: &str, v: f64, note: String| {
            report.push(Figure::new("memory", t, name, unit, vec![v]).note(note));
        };
        push(
            "RSS at start",
            "MiB",
            mib(fresh),
            "fresh start, before the watchers".into(),
        );
        push("peak RSS under load", "MiB", mib(peak), load.clone());
        push(
            "RSS after the load",
            "MiB",
            mib(after),
            format!(
                "{} s after the sim ended, watchers still connected",
                p.memory_after.as_secs()
            ),
        );
        push(
            "RSS after the load above start",
            "MiB",
            mib(after.saturating_sub(fresh)),
            "issue #20 goal: within 10 MB".into(),
        );
        push(
            "per idle MQTT connection",
            "KiB",
            per_conn,
            format!(
                "{} idle connections (CONNECT + one SUBSCRIBE) on a fresh server; goal 8 KiB",
                p.memory_idle
            ),
        );
    }
    Ok(())
}

/// The watchers of each server (see the module doc).
async fn watch(server: &Server, target: Target) -> Result<Vec<Receiver>> {
    Ok(match (target, server.http) {
        (Target::Edgewatch, Some(http)) => vec![
            receivers::sse_watch(http, "sensors/#").await?,
            receivers::ws_watch(http, "sensors/#").await?,
        ],
        _ => vec![receivers::mqtt_subscriber(server.mqtt, QoS::AtLeastOnce, "memory").await?],
    })
}

/// One `edgewatch sim` run at the scenario's load; fails if it fails.
async fn run_sim(ctx: &Ctx, server: &Server, tag: &str) -> Result<()> {
    let p = &ctx.p;
    let mut cmd = tokio::process::Command::new(&ctx.edgewatch);
    cmd.arg("sim")
        .arg("--broker")
        .arg(format!("mqtt://{}", server.mqtt))
        .arg("--devices")
        .arg(p.memory_devices.to_string())
        .arg("--rate")
        .arg(p.memory_rate.to_string())
        .arg("--duration")
        .arg(p.memory_secs.to_string())
        .args(["--qos", "1", "--no-faults", "--json", "--id-prefix"])
        .arg(format!("memory-{tag}"))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let limit = Duration::from_secs(p.memory_secs + 60);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .context("edgewatch sim did not finish in time")??;
    if !out.status.success() {
        bail!(
            "edgewatch sim exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(())
}

/// Opens `n` idle MQTT connections to `server` (each with one subscription) and returns its
/// RSS before and 2 s after they are all up, KiB. They close when this returns.
async fn idle_connections(server: &Server, n: usize) -> Result<(u64, u64)> {
    let before = server.rss_kib();
    let mut open = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(server.mqtt)
            .await
            .with_context(|| format!("idle connection {i} of {n} (raise `ulimit -n`?)"))?;
        s.write_all(&connect_packet(&format!("bench-idle-{i}")))
            .await?;
        let mut connack = [0u8; 4];
        s.read_exact(&mut connack).await?;
        if connack[0] != 0x20 || connack[3] != 0 {
            bail!("idle connection {i}: CONNACK {connack:?}");
        }
        s.write_all(&subscribe_packet(&format!("idle/{i}"))).await?;
        let mut suback = [0u8; 5];
        s.read_exact(&mut suback).await?;
        open.push(s);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_kib();
    drop(open);
    Ok((before, after))
}

/// A SUBSCRIBE (packet id 1) to `filter` at QoS 0.
fn subscribe_packet(filter: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    put_str(&mut body, filter.as_bytes());
    body.push(0);
    let mut out = vec![0x82];
    put_remaining_length(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}
