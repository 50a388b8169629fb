//! Figures (median, min, max of runs), the printed table, `bench-results/*.json` and the SVGs.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use serde::Serialize;

/// One measured figure: the median of its runs, with min and max.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figure {
    pub(crate) scenario: String,
    pub(crate) target: String,
    pub(crate) metric: String,
    pub(crate) unit: String,
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) runs: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) note: Option<String>,
}

impl Figure {
    pub(crate) fn new(
        scenario: &str,
        target: &str,
        metric: &str,
        unit: &str,
        runs: Vec<f64>,
    ) -> Self {
        let (median, min, max) = summarize(&runs);
        Self {
            scenario: scenario.to_owned(),
            target: target.to_owned(),
            metric: metric.to_owned(),
            unit: unit.to_owned(),
            median,
            min,
            max,
            runs,
            note: None,
        }
    }

    pub(crate) fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// Median, min, max (NaN for no runs).
pub(crate) fn summarize(runs: &[f64]) -> (f64, f64, f64) {
    if runs.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut v = runs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

/// Percentile (0..=100) of sorted microsecond samples, in milliseconds.
pub(crate) fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted_us.len() - 1) as f64).round() as usize;
    f64::from(sorted_us[rank.min(sorted_us.len() - 1)]) / 1000.0
}

/// Facts about the run recorded with every result file.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Meta {
    pub(crate) date: String,
    pub(crate) commit: String,
    pub(crate) cores: usize,
    pub(crate) mode: String,
    pub(crate) load_average_at_start: String,
    pub(crate) edgewatch_bin: String,
    pub(crate) mosquitto_bin: String,
    pub(crate) mosquitto_version: String,
}

/// Latency percentile curves for the pictures: rate -> client -> percentile points (ms).
pub(crate) type LatencyCurves = BTreeMap<u64, BTreeMap<String, Vec<(String, f64)>>>;

/// Everything one harness run produced.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) figures: Vec<Figure>,
    pub(crate) latency: LatencyCurves,
    pub(crate) scenario_secs: BTreeMap<String, f64>,
}

#[derive(Serialize)]
struct ResultFile<'a> {
    scenario: &'a str,
    meta: &'a Meta,
    wall_seconds: Option<f64>,
    figures: Vec<&'a Figure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_percentiles_ms: Option<&'a LatencyCurves>,
}

impl Report {
    pub(crate) fn push(&mut self, f: Figure) {
        println!(
            "  {:<10} {:<10} {:<38} {:>12} [{} .. {}] {}",
            f.scenario,
            f.target,
            f.metric,
            fmt_num(f.median),
            fmt_num(f.min),
            fmt_num(f.max),
            f.unit
        );
        self.figures.push(f);
    }

    pub(crate) fn print_table(&self, meta: &Meta) {
        println!();
        println!(
            "edgewatch-bench ({} mode) — {} — commit {} — {} cores",
            meta.mode, meta.date, meta.commit, meta.cores
        );
        println!(
            "{:<10} {:<10} {:<38} {:>12} {:>12} {:>12}  unit",
            "scenario", "target", "metric", "median", "min", "max"
        );
        println!("{}", "-".repeat(110));
        for f in &self.figures {
            println!(
                "{:<10} {:<10} {:<38} {:>12} {:>12} {:>12}  {}",
                f.scenario,
                f.target,
                f.metric,
                fmt_num(f.median),
                fmt_num(f.min),
                fmt_num(f.max),
                f.unit
            );
        }
    }

    /// Writes `<scenario>.json` for each scenario in `selected` and `<all_name>.json` with
    /// every figure (`all` for a whole run; a run of some scenarios uses another name so that
    /// it does not overwrite the whole run's file).
    pub(crate) fn write_json(
        &self,
        dir: &Path,
        meta: &Meta,
        selected: &[&str],
        all_name: &str,
    ) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut scenarios: Vec<&str> = self.figures.iter().map(|f| f.scenario.as_str()).collect();
        scenarios.sort_unstable();
        scenarios.dedup();
        scenarios.retain(|s| selected.contains(s) || *s == "-");
        for s in &scenarios {
            let file = ResultFile {
                scenario: s,
                meta,
                wall_seconds: self.scenario_secs.get(*s).copied(),
                figures: self.figures.iter().filter(|f| f.scenario == *s).collect(),
                latency_percentiles_ms: (*s == "latency").then_some(&self.latency),
            };
            std::fs::write(
                dir.join(format!("{s}.json")),
                serde_json::to_string_pretty(&file)?,
            )?;
        }
        let all = ResultFile {
            scenario: all_name,
            meta,
            wall_seconds: Some(self.scenario_secs.values().sum()),
            figures: self.figures.iter().collect(),
            latency_percentiles_ms: Some(&self.latency),
        };
        std::fs::write(
            dir.join(format!("{all_name}.json")),
            serde_json::to_string_pretty(&all)?,
        )?;
        Ok(())
    }

    /// The figures as a Markdown table (pasted into BENCHMARKS.md).
    pub(crate) fn write_markdown(&self, path: &Path, meta: &Meta) -> Result<()> {
        use std::fmt::Write as _;
        let mut md = String::new();
        writeln!(
            md,
            "{} mode, {}, commit `{}`, {} cores, load average at start {}, {}\n",
            meta.mode,
            meta.date,
            meta.commit,
            meta.cores,
            meta.load_average_at_start,
            meta.mosquitto_version.trim()
        )?;
        md.push_str("| scenario | target | metric | median | min | max | unit | runs | note |\n");
        md.push_str("| --- | --- | --- | ---: | ---: | ---: | --- | ---: | --- |\n");
        for f in &self.figures {
            writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                f.scenario,
                f.target,
                f.metric,
                fmt_num(f.median),
                fmt_num(f.min),
                fmt_num(f.max),
                f.unit,
                f.runs.len(),
                f.note.as_deref().unwrap_or("").replace('|', "/")
            )?;
        }
        std::fs::write(path, md)?;
        Ok(())
    }

    pub(crate) fn write_svgs(&self, dir: &Path, meta: &Meta) -> Result<Vec<String>> {
        std::fs::create_dir_all(dir)?;
        let mut written = Vec::new();
        let bars: Vec<&Figure> = self
            .figures
            .iter()
            .filter(|f| {
                (f.scenario == "relay" || f.scenario == "fullpath")
                    && f.metric.starts_with("delivered")
            })
            .collect();
        if !bars.is_empty() {
            let path = dir.join("throughput.svg");
            throughput_svg(&path, &bars, meta)?;
            written.push(path.display().to_string());
        }
        for (rate, curves) in &self.latency {
            let path = dir.join(format!("latency-{rate}.svg"));
            latency_svg(&path, *rate, curves, meta)?;
            written.push(path.display().to_string());
        }
        Ok(written)
    }
}

pub(crate) fn fmt_num(x: f64) -> String {
    if x.is_nan() {
        "-".to_owned()
    } else if x.abs() >= 1000.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

fn color_of(target: &str) -> RGBColor {
    match target {
        "mosquitto" => RGBColor(0x3b, 0x6e, 0xa8),
        _ => RGBColor(0xe0, 0x7a, 0x1f),
    }
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

fn throughput_svg(path: &Path, bars: &[&Figure], meta: &Meta) -> Result<()> {
    let height = 90 + 42 * bars.len() as u32;
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let xmax = bars.iter().map(|f| f.max).fold(1.0, f64::max) * 1.15;
    let n = bars.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Sustained delivered rate, readings/s (median of runs, min-max whisker; {} cores, {})",
                meta.cores, meta.mode
            ),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(10)
        .build_cartesian_2d(0f64..xmax, 0f64..n)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_labels(8)
        .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
        .draw()
        .map_err(plot_err)?;
    for (i, f) in bars.iter().enumerate() {
        let y0 = n - i as f64 - 0.85;
        let y1 = n - i as f64 - 0.15;
        let c = color_of(&f.target);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, y0), (f.median, y1)],
                c.mix(0.85).filled(),
            )))
            .map_err(plot_err)?;
        let ym = (y0 + y1) / 2.0;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(f.min, ym), (f.max, ym)],
                BLACK.stroke_width(2),
            )))
            .map_err(plot_err)?;
        let label = format!(
            "{} {} — {} — {:.0}/s",
            f.scenario,
            f.target,
            f.metric.trim_start_matches("delivered "),
            f.median
        );
        chart
            .draw_series(std::iter::once(Text::new(
                label,
                (xmax * 0.01, y1 - 0.12),
                ("sans-serif", 13).into_font().color(&BLACK),
            )))
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// The y range of the latency picture (log scale): twice the largest latency down to half the
/// smallest positive one (at least 0.001 ms before halving).
fn latency_y_range(curves: &BTreeMap<String, Vec<(String, f64)>>) -> (f64, f64) {
    let ymax = curves
        .values()
        .flatten()
        .map(|(_, v)| *v)
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max)
        * 2.0;
    let ymin = curves
        .values()
        .flatten()
        .map(|(_, v)| *v)
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold(ymax, f64::min)
        .max(0.001)
        / 2.0;
    (ymin, ymax)
}

fn latency_svg(
    path: &Path,
    rate: u64,
    curves: &BTreeMap<String, Vec<(String, f64)>>,
    meta: &Meta,
) -> Result<()> {
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let labels: Vec<String> = curves
        .values()
        .next()
        .map(|v| v.iter().map(|(l, _)| l.clone()).collect())
        .unwrap_or_default();
    let (ymin, ymax) = latency_y_range(curves);
    let nx = labels.len().max(2) as f64 - 1.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Publish-to-receive latency at {rate} readings/s (ms, log scale; {} cores, {})",
                meta.cores, meta.mode
            ),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.1f64..nx + 0.1, (ymin..ymax).log_scale())
        .map_err(plot_err)?;
    let xl = labels.clone();
    chart
        .configure_mesh()
        .x_labels(labels.len())
        .x_label_formatter(&move |x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                xl.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("ms")
        .draw()
        .map_err(plot_err)?;
    let palette = [
        RGBColor(0x3b, 0x6e, 0xa8),
        RGBColor(0xe0, 0x7a, 0x1f),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x94, 0x67, 0xbd),
    ];
    for (i, (name, points)) in curves.iter().enumerate() {
        let c = palette[i % palette.len()];
        let pts: Vec<(f64, f64)> = points
            .iter()
            .enumerate()
            .filter(|(_, (_, v))| v.is_finite() && *v > 0.0)
            .map(|(x, (_, v))| (x as f64, *v))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(plot_err)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}
