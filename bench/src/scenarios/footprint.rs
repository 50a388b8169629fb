//! Binary sizes.

use std::path::Path;

use anyhow::Result;

use super::Ctx;
use crate::report::{Figure, Report};

/// Binary sizes (one measurement: they do not vary between runs).
pub(crate) fn binary_sizes(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len() as f64 / 1_048_576.0);
    report.push(Figure::new(
        "footprint",
        "edgewatch",
        "binary size (release, as built)",
        "MiB",
        vec![size(&ctx.edgewatch)?],
    ));
    let stripped = ctx.work.join("edgewatch.stripped");
    let ok = std::process::Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&ctx.edgewatch)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        report.push(Figure::new(
            "footprint",
            "edgewatch",
            "binary size (stripped)",
            "MiB",
            vec![size(&stripped)?],
        ));
    }
    if let Some(m) = &ctx.mosquitto {
        report.push(
            Figure::new(
                "footprint",
                "mosquitto",
                "binary size (Debian, stripped)",
                "MiB",
                vec![size(m)?],
            )
            .note("plus shared libraries (libmosquitto, libssl, libcjson, ...), not counted"),
        );
    }
    Ok(())
}
