//! sim: the highest rate one `edgewatch sim` process sustains against each server.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::Ctx;
use crate::procs::Target;
use crate::report::{Figure, Report};

/// One step of the `sim` ladder: what `edgewatch sim --json` reported, plus the server's CPU.
#[derive(Debug, Clone)]
struct SimStep {
    offered: f64,
    achieved: f64,
    sent: u64,
    acked: u64,
    errors: u64,
    sim_cores: f64,
    sim_per_10k: f64,
    server_cores: f64,
}

impl SimStep {
    /// Sustained: at least 95% of the offered rate delivered (sent for QoS0, acknowledged for
    /// QoS1) over the run, connection ramp-up included.
    fn sustained(&self) -> bool {
        self.achieved >= 0.95 * self.offered
    }
}

/// Runs one `edgewatch sim` process against a freshly started server at `rate` readings/s.
async fn sim_step(ctx: &Ctx, target: Target, qos: u8, rate: f64, name: &str) -> Result<SimStep> {
    let p = &ctx.p;
    // One retry: on this shared box a start occasionally fails (the reason is in the error).
    let server = match ctx.start_inner(target, name).await {
        Ok(s) => s,
        Err(e) => {
            println!("    start failed, retrying once: {e:#}");
            ctx.start_inner(target, &format!("{name}-retry")).await?
        }
    };
    let cpu0 = server.cpu_secs();
    let t0 = Instant::now();
    let mut cmd = tokio::process::Command::new(&ctx.edgewatch);
    cmd.arg("sim")
        .arg("--broker")
        .arg(format!("mqtt://{}", server.mqtt))
        .args(["--devices", "100", "--rate"])
        .arg(format!("{rate:.0}"))
        .arg("--duration")
        .arg(format!("{}", p.sim_secs))
        .arg("--qos")
        .arg(qos.to_string())
        // All 100 devices connect within 20 ms, so the ramp-up barely counts against the rate.
        .args(["--connect-rate", "5000"])
        .args(["--no-faults", "--json", "--id-prefix"])
        .arg(name)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs_f64(p.sim_secs + 40.0), cmd.output())
        .await
        .context("edgewatch sim did not finish in time")??;
    let server_cores = (server.cpu_secs() - cpu0) / t0.elapsed().as_secs_f64();
    // Wait until the server is gone before the next step starts another one.
    server.stop(Duration::from_secs(5)).await?;
    if !out.status.success() {
        bail!(
            "edgewatch sim exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("edgewatch sim --json output")?;
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let u = |k: &str| v[k].as_u64().unwrap_or(0);
    let elapsed = f("elapsed_s").max(1e-9);
    Ok(SimStep {
        offered: rate,
        achieved: f("achieved_rate"),
        sent: u("sent"),
        acked: u("acknowledged"),
        errors: u("errors"),
        sim_cores: f("cpu_s") / elapsed,
        sim_per_10k: f("cpu_per_10k_rate"),
        server_cores,
    })
}

/// One more run of a decisive `sim` step (`what` names it in the progress line).
async fn repeat_step(
    ctx: &Ctx,
    target: Target,
    qos: u8,
    rate: f64,
    name: &str,
    what: &str,
) -> Result<SimStep> {
    let s = sim_step(ctx, target, qos, rate, name).await?;
    println!(
        "    {} QoS{qos}: repeat of the {what} step: offered {:.0}/s achieved {:.0}/s",
        target.name(),
        s.offered,
        s.achieved
    );
    Ok(s)
}

/// sim: the highest rate one `edgewatch sim` process (100 devices) sustains against each
/// server, QoS0 and QoS1, and its CPU per 10,000 readings/s. The offered rate doubles from
/// `sim_start_rate` until the achieved rate falls below 95% of it; one more step at the
/// geometric mean of the last sustained and the first failed rate narrows the ceiling. Every
/// step starts a fresh server, so an overloaded step does not slow the next one.
pub(crate) async fn sim(ctx: &Ctx, report: &mut Report) -> Result<()> {
    for qos in [0u8, 1] {
        for target in ctx.targets() {
            let ladder = climb(ctx, target, qos).await?;
            let best = ladder
                .steps
                .iter()
                .filter(|s| s.sustained())
                .max_by(|a, b| a.offered.total_cmp(&b.offered))
                .cloned();
            let peak = ladder
                .steps
                .iter()
                .max_by(|a, b| a.achieved.total_cmp(&b.achieved))
                .cloned()
                .context("no sim step")?;
            let runs = repeat_decisive(ctx, target, qos, best, peak).await?;
            push_sim_figures(ctx, report, target, qos, &ladder, &runs);
        }
    }
    Ok(())
}

/// The steps of one ladder.
struct Ladder {
    steps: Vec<SimStep>,
    /// The first offered rate that was not sustained, if any.
    failed: Option<f64>,
}

/// Climbs the ladder: doubles the offered rate until a step falls short (or `sim_max_rate`),
/// then one step at the geometric mean of the last sustained and the failed rate.
async fn climb(ctx: &Ctx, target: Target, qos: u8) -> Result<Ladder> {
    let p = &ctx.p;
    let t = target.name();
    let mut steps: Vec<SimStep> = Vec::new();
    let mut rate = p.sim_start_rate;
    let mut failed: Option<f64> = None;
    let mut k = 0;
    loop {
        let s = sim_step(ctx, target, qos, rate, &format!("sim{qos}-{t}-{k}")).await?;
        k += 1;
        println!(
            "    {t} QoS{qos}: offered {:.0}/s achieved {:.0}/s (sim {:.2} cores, server {:.2} cores, {} errors)",
            s.offered, s.achieved, s.sim_cores, s.server_cores, s.errors
        );
        let ok = s.sustained();
        steps.push(s);
        if ok && failed.is_none() {
            if rate * 2.0 > p.sim_max_rate {
                break;
            }
            rate *= 2.0;
        } else if failed.is_none() {
            failed = Some(rate);
            let good = steps.iter().filter(|s| s.sustained()).map(|s| s.offered);
            match good.fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r)))) {
                Some(g) => rate = (g * rate).sqrt().round(),
                None => break,
            }
        } else {
            break;
        }
    }
    Ok(Ladder { steps, failed })
}

/// The runs behind the figures: the highest sustained step and the highest achieved step,
/// each with its repeats.
struct DecisiveRuns {
    best: Option<SimStep>,
    peak: SimStep,
    best_runs: Vec<SimStep>,
    peak_runs: Vec<SimStep>,
}

/// The decisive steps again, each on a fresh server: the figures are their runs.
async fn repeat_decisive(
    ctx: &Ctx,
    target: Target,
    qos: u8,
    best: Option<SimStep>,
    peak: SimStep,
) -> Result<DecisiveRuns> {
    let t = target.name();
    let mut best_runs: Vec<SimStep> = best.iter().cloned().collect();
    let mut peak_runs = vec![peak.clone()];
    let same = best.as_ref().is_some_and(|b| b.offered == peak.offered);
    for r in 1..ctx.p.repeat_runs {
        if let Some(b) = &best {
            let name = format!("sim{qos}-{t}-best{r}");
            let s = repeat_step(ctx, target, qos, b.offered, &name, "highest sustained").await?;
            if same {
                peak_runs.push(s.clone());
            }
            best_runs.push(s);
        }
        if !same {
            let name = format!("sim{qos}-{t}-peak{r}");
            peak_runs.push(
                repeat_step(ctx, target, qos, peak.offered, &name, "highest achieved").await?,
            );
        }
    }
    Ok(DecisiveRuns {
        best,
        peak,
        best_runs,
        peak_runs,
    })
}

/// The figures of one ladder and its repeats.
fn push_sim_figures(
    ctx: &Ctx,
    report: &mut Report,
    target: Target,
    qos: u8,
    ladder: &Ladder,
    runs: &DecisiveRuns,
) {
    let t = target.name();
    let (best_runs, peak_runs, peak) = (&runs.best_runs, &runs.peak_runs, &runs.peak);
    let of = |runs: &[SimStep], f: fn(&SimStep) -> f64| runs.iter().map(f).collect::<Vec<_>>();
    report.push(max_sustained_figure(ctx, target, qos, ladder, best_runs));
    report.push(
        Figure::new(
            "sim",
            t,
            &format!("sim highest achieved QoS{qos}"),
            "readings/s",
            of(peak_runs, |s| s.achieved),
        )
        .note(format!(
            "offered {:.0}/s; first run: sent {}, acknowledged {}, errors {}",
            peak.offered, peak.sent, peak.acked, peak.errors
        )),
    );
    if let Some(b) = &runs.best {
        report.push(
            Figure::new(
                "sim",
                t,
                &format!("sim CPU per 10k/s QoS{qos}"),
                "cores",
                of(best_runs, |s| s.sim_per_10k),
            )
            .note(format!(
                "at the highest sustained step ({:.0}/s offered)",
                b.offered
            )),
        );
    }
    report.push(
        Figure::new(
            "sim",
            t,
            &format!("sim CPU at highest achieved QoS{qos}"),
            "cores",
            of(peak_runs, |s| s.sim_cores),
        )
        .note("the generator process alone; 2 cores is the whole box"),
    );
    report.push(Figure::new(
        "sim",
        t,
        &format!("server CPU at highest achieved QoS{qos}"),
        "cores",
        of(peak_runs, |s| s.server_cores),
    ));
}

/// "sim max sustained": the runs of the highest sustained step (0 if none), with the ladder.
fn max_sustained_figure(
    ctx: &Ctx,
    target: Target,
    qos: u8,
    ladder: &Ladder,
    best_runs: &[SimStep],
) -> Figure {
    let p = &ctx.p;
    let t = target.name();
    let steps = ladder
        .steps
        .iter()
        .map(|s| format!("{:.0}->{:.0}", s.offered, s.achieved))
        .collect::<Vec<_>>()
        .join(", ");
    let delivered = if qos == 1 { "acknowledged" } else { "sent" };
    let of = |runs: &[SimStep], f: fn(&SimStep) -> f64| runs.iter().map(f).collect::<Vec<_>>();
    Figure::new(
        "sim",
        t,
        &format!("sim max sustained QoS{qos}"),
        "readings/s",
        if best_runs.is_empty() {
            vec![0.0]
        } else {
            of(best_runs, |s| s.achieved)
        },
    )
    .note(format!(
        "1 `edgewatch sim` process, 100 devices, {} s per step, {delivered}/s >= 95% of offered; \
             ladder offered->achieved: {steps}{}; runs: the highest sustained step{}",
        p.sim_secs,
        if ladder.failed.is_none() {
            " (never fell short: the ceiling is higher)"
        } else {
            ""
        },
        if best_runs.len() > 1 {
            " and its repeats on fresh servers"
        } else {
            ""
        }
    ))
}
