//! uplink: store-and-forward to a central broker through an outage, beside Mosquitto's bridge.
//!
//! For each target, a central Mosquitto (persistence on, stopped and started again on its
//! port) with one persistent-session QoS 1 subscriber on `#`, and the edge: edgewatch with one
//! `[[uplink]]`, or Mosquitto with a bridge (`connection central`, `topic sensors/# out 1`,
//! `cleansession false`, persistence on, everything else its defaults: among them
//! `max_queued_messages 1000`). QoS 1 publishers send `uplink_rate` readings/s to the edge.
//! After `uplink_warm` the central broker stops (SIGTERM) for `uplink_outage` while the load
//! goes on (before it, a window as long with the central broker up, for comparison); then the
//! load stops and the central broker starts again.
//!
//! Figures: the edge's RSS growth over the window with the central broker up, its RSS at the
//! start and at the end of the outage (what it holds while disconnected), the reconnect delay (from the central broker's return to the first new
//! reading at the subscriber), the catch-up rate (the readings that came after the outage,
//! divided by the time from the first to the last of them; the wait ends when the subscriber
//! has every reading, or nothing more came for 10 s), and the readings lost (acknowledged to the publishers,
//! never at the subscriber; a reading is its device and `value`, the send time in µs).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use super::{mib, Ctx};
use crate::load::{find, value_of, LoadSpec, Shape};
use crate::procs::{self, EdgewatchTuning, Server, Target};
use crate::publishers::Fleet;
use crate::report::{Figure, Report};

/// The readings a subscriber has seen: (device, value).
type Seen = Arc<Mutex<HashSet<(String, u64)>>>;

/// What one target did.
struct Outcome {
    /// RSS (KiB) at the start and end of the window with the central broker up.
    rss_up: (u64, u64),
    /// RSS (KiB) at the start and end of the outage.
    rss_down: (u64, u64),
    acked: u64,
    before_outage: u64,
    /// Readings at the subscriber when the central broker came back.
    at_back: u64,
    catch_up: CatchUp,
}

/// Each target through warm-up, a window with the central broker up, the outage and the
/// catch-up.
pub(crate) async fn uplink(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let Some(mosquitto) = ctx.mosquitto.clone() else {
        println!("  uplink: needs Mosquitto as the central broker; skipped");
        return Ok(());
    };
    for target in ctx.targets() {
        let o = run_target(ctx, target, &mosquitto).await?;
        push_figures(ctx, target, &o, report);
    }
    Ok(())
}

async fn run_target(ctx: &Ctx, target: Target, mosquitto: &std::path::Path) -> Result<Outcome> {
    let (p, t) = (&ctx.p, target.name());
    let dir = ctx.work.join(format!("uplink-{t}"));
    let central_port = procs::free_port()?;
    let central_dir = dir.join("central");
    let central_conf = "persistence true\nmax_queued_messages 0\nmax_inflight_messages 1000\n";
    let mut central =
        procs::start_mosquitto_on(mosquitto, &central_dir, central_port, central_conf).await?;
    let seen: Seen = Arc::default();
    let sub = subscriber(central_port, &format!("bench-central-{t}"), seen.clone()).await?;
    let edge = start_edge(ctx, target, &dir, central_port).await?;
    let spec = LoadSpec {
        publishers: 10,
        qos: QoS::AtLeastOnce,
        rate: Some(p.uplink_rate),
        duration: p.uplink_warm + 2 * p.uplink_outage + Duration::from_secs(30),
        max_messages: u64::MAX / 2,
        shape: Shape::Live,
    };
    let fleet = Fleet::start(edge.mqtt, &spec, &format!("uplink-{t}")).await?;
    tokio::time::sleep(p.uplink_warm).await;
    // A window as long as the outage with the central broker up: what storing the load costs
    // in memory anyway, to set the outage's growth against.
    let up_start = edge.rss_kib();
    tokio::time::sleep(p.uplink_outage).await;
    let rss_up = (up_start, edge.rss_kib());
    central.stop(Duration::from_secs(10)).await?;
    let down_start = edge.rss_kib();
    let before_outage = count(&seen);
    tokio::time::sleep(p.uplink_outage).await;
    fleet.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_down = (down_start, edge.rss_kib());
    let acked = fleet.stats.acked.load(std::sync::atomic::Ordering::Relaxed);
    drop(fleet);
    central =
        procs::start_mosquitto_on(mosquitto, &central_dir, central_port, central_conf).await?;
    let at_back = count(&seen);
    let catch_up = wait_all(&seen, acked, Duration::from_secs(10), p.uplink_catchup_max).await;
    sub.abort();
    edge.stop(Duration::from_secs(10)).await?;
    central.stop(Duration::from_secs(10)).await?;
    Ok(Outcome {
        rss_up,
        rss_down,
        acked,
        before_outage,
        at_back,
        catch_up,
    })
}

fn push_figures(ctx: &Ctx, target: Target, o: &Outcome, report: &mut Report) {
    let (p, t) = (&ctx.p, target.name());
    let (acked, got) = (o.acked, o.catch_up.seen);
    let caught_up = got.saturating_sub(o.at_back);
    let took = o.catch_up.span.as_secs_f64();
    let rate = caught_up as f64 / took.max(0.001);
    let reconnect = o.catch_up.first.map_or(-1.0, |d| d.as_secs_f64());
    let ((up0, up1), (down0, down1)) = (o.rss_up, o.rss_down);
    println!(
        "  {t}: {acked} acknowledged to publishers ({} upstream before the outage), {got} at the central subscriber; \
         {caught_up} after the outage in {took:.1} s, the first {reconnect:.1} s after the central broker was back; \
         RSS {:.1} -> {:.1} MiB during the outage",
        o.before_outage,
        mib(down0),
        mib(down1)
    );
    let load = format!(
        "10 QoS 1 publishers, {}/s; central broker down {} s",
        p.uplink_rate,
        p.uplink_outage.as_secs()
    );
    let figures = [
        ("catch-up rate after the outage", "readings/s", rate,
         format!("{caught_up} readings in {took:.1} s, from the first to the last that came after the outage; {load}")),
        ("first reading after the central broker is back", "s", reconnect, "the reconnect (-1: none came)".to_owned()),
        ("readings lost through the outage", "readings", acked.saturating_sub(got) as f64,
         format!("{acked} acknowledged to the publishers, {got} reached the central subscriber; {load}")),
        ("RSS growth with the central broker up", "MiB", mib(up1) - mib(up0),
         format!("{:.1} -> {:.1} MiB over {} s before the outage", mib(up0), mib(up1), p.uplink_outage.as_secs())),
        ("RSS at the outage's start", "MiB", mib(down0), load.clone()),
        ("RSS at the outage's end", "MiB", mib(down1),
         format!("growth {:.1} MiB while disconnected", mib(down1.saturating_sub(down0)))),
    ];
    for (name, unit, v, note) in figures {
        report.push(Figure::new("uplink", t, name, unit, vec![v]).note(note));
    }
}

/// The edge: edgewatch with an uplink, or Mosquitto with a bridge, to the central port.
async fn start_edge(
    ctx: &Ctx,
    target: Target,
    dir: &std::path::Path,
    central: u16,
) -> Result<Server> {
    match target {
        Target::Edgewatch => {
            let tuning = EdgewatchTuning {
                extra: Some(format!(
                    "[[uplink]]\nname = \"central\"\nurl = \"mqtt://127.0.0.1:{central}\"\nsite = \"bench\"\n\
                     presence_topic = \"\"\nbackoff_max_ms = 1000\n"
                )),
                ..EdgewatchTuning::default()
            };
            procs::start_edgewatch(
                &ctx.edgewatch,
                &dir.join("edge"),
                &dir.join("edge/data"),
                &tuning,
            )
            .await
        }
        Target::Mosquitto => {
            let bin = ctx.mosquitto.as_ref().context("mosquitto")?;
            let port = procs::free_port()?;
            let conf = format!(
                "persistence true\nconnection central\naddress 127.0.0.1:{central}\n\
                 topic sensors/# out 1\ncleansession false\nrestart_timeout 1\n\
                 bridge_protocol_version mqttv311\nlog_type notice\n"
            );
            procs::start_mosquitto_on(bin, &dir.join("edge"), port, &conf).await
        }
    }
}

fn count(seen: &Seen) -> u64 {
    seen.lock().map_or(0, |s| s.len() as u64)
}

/// What arrived after the central broker came back.
struct CatchUp {
    /// Readings seen in all.
    seen: u64,
    /// From the broker's return to the first new reading (the reconnect).
    first: Option<Duration>,
    /// From the first new reading to the last.
    span: Duration,
}

/// Waits until `want` readings were seen, or nothing new came for `quiet` (the first waited
/// for up to `max`), or `max` passed.
async fn wait_all(seen: &Seen, want: u64, quiet: Duration, max: Duration) -> CatchUp {
    let start = Instant::now();
    let at_start = count(seen);
    let (mut last, mut first_at, mut last_at) = (at_start, None, start);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n = count(seen);
        if n != last {
            last = n;
            last_at = Instant::now();
            first_at.get_or_insert(last_at);
        }
        let stalled = first_at.is_some() && last_at.elapsed() >= quiet;
        if n >= want || stalled || start.elapsed() >= max {
            return CatchUp {
                seen: n,
                first: first_at.map(|f| f.duration_since(start)),
                span: first_at.map_or(Duration::ZERO, |f| last_at.duration_since(f)),
            };
        }
    }
}

/// A persistent-session QoS 1 subscriber on `#` of the central broker; records every reading
/// it gets and keeps reconnecting (the central broker restarts).
async fn subscriber(port: u16, id: &str, seen: Seen) -> Result<tokio::task::JoinHandle<()>> {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_session(false)
        .set_keep_alive(Duration::from_secs(10))
        .set_inflight(1000)
        .set_max_packet_size(1 << 20, 1 << 16);
    let (client, mut events) = AsyncClient::new(o, 64);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut tx = Some(tx);
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe("#", QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(key) = reading_key(&p.payload) {
                        if let Ok(mut s) = seen.lock() {
                            s.insert(key);
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .context("central subscriber not subscribed within 10 s")??;
    Ok(task)
}

/// A reading's device and `value` (its send time, µs), from the device's JSON or the uplink's.
fn reading_key(payload: &[u8]) -> Option<(String, u64)> {
    const KEY: &[u8] = b"\"deviceId\":\"";
    let at = find(payload, KEY)? + KEY.len();
    let end = at + payload[at..].iter().position(|b| *b == b'"')?;
    let device = String::from_utf8_lossy(&payload[at..end]).into_owned();
    Some((device, value_of(payload)?))
}
