//! What the store reports at each scrape: the event log's size and contents, what was
//! written to the database, retention and the disk budget, devices online.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::collect::{counter, gauge, labelled_counter, labelled_gauge, Sources};
use crate::store::{BudgetStatus, Store};

/// The store: event log size and contents, what was written, retention and the disk budget,
/// devices online.
#[derive(Debug)]
pub(super) struct Storage(pub(super) Arc<Sources>);

impl Collector for Storage {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let store = &self.0.store;
        if let Ok(n) = store.delivery_records() {
            gauge(
                &mut enc,
                "edgewatch_external_delivery_records",
                "External-broker deliveries remembered until the broker has their PUBACK.",
                n,
            )?;
        }
        if let Ok(n) = store.delivery_records_evicted() {
            counter(
                &mut enc,
                "edgewatch_external_delivery_records_evicted_total",
                "External-broker delivery records dropped at their bound of 1,000,000 (a resend of one would be stored again).",
                n,
            )?;
        }
        gauge(
            &mut enc,
            "edgewatch_writer_healthy",
            "1 while the writer is committing, 0 after a failed commit.",
            u64::from(self.0.ingest.writer().is_healthy()),
        )?;
        log(&mut enc, store)?;
        if let Ok(b) = store.budget_status() {
            budget(&mut enc, &b)?;
        }
        if let Ok(devices) = store.devices() {
            let online = devices.iter().filter(|d| d.online == Some(true)).count();
            gauge(
                &mut enc,
                "edgewatch_devices_online",
                "Devices whose last status (sensors/{deviceId}/status) is online.",
                online,
            )?;
        }
        Ok(())
    }
}

/// The event log's size and contents, and what was written to the database since start.
fn log(enc: &mut DescriptorEncoder<'_>, store: &Store) -> fmt::Result {
    let Ok(s) = store.stats() else {
        return Ok(());
    };
    gauge(
        enc,
        "edgewatch_log_size_bytes",
        "Bytes the event log database occupies on disk.",
        s.size_on_disk,
    )?;
    gauge(
        enc,
        "edgewatch_log_readings",
        "Readings currently kept in the event log.",
        s.readings,
    )?;
    gauge(
        enc,
        "edgewatch_series",
        "Stored series (device, metric).",
        s.series,
    )?;
    gauge(
        enc,
        "edgewatch_last_seq",
        "Highest sequence number assigned.",
        s.last_seq,
    )?;
    let w = s.written;
    labelled_counter(
        enc,
        "edgewatch_store_written_bytes_total",
        "Bytes of values committed to the database since start, by kind (log blocks, sealed chunks, rollup pages; the database adds its own framing).",
        "kind",
        &[("log", w.log_bytes), ("chunk", w.chunk_bytes), ("rollup", w.rollup_bytes)],
    )?;
    labelled_counter(
        enc,
        "edgewatch_store_written_values_total",
        "Values committed to the database since start, by kind (a seal writes one or more chunks and rewrites the rollup pages its readings fall in).",
        "kind",
        &[("log", w.log_blocks), ("chunk", w.chunks), ("rollup", w.rollup_pages)],
    )?;
    counter(
        enc,
        "edgewatch_store_sealed_readings_total",
        "Readings moved from open chunks into sealed chunks since start.",
        w.chunk_rows,
    )
}

/// What retention removed and where the store stands against its disk budget.
fn budget(enc: &mut DescriptorEncoder<'_>, b: &BudgetStatus) -> fmt::Result {
    labelled_counter(
        enc,
        "edgewatch_retention_readings_removed_total",
        "Readings retention removed since start, by reason (age: older than retention_days; budget: the oldest, to fit the disk budget).",
        "reason",
        &[("age", b.removed_for_age), ("budget", b.removed_for_budget)],
    )?;
    gauge(
        enc,
        "edgewatch_disk_budget_bytes",
        "The disk budget (disk_budget_mb) in bytes; 0: no budget.",
        b.budget_bytes.unwrap_or(0),
    )?;
    let Some(budget) = b.budget_bytes else {
        return Ok(());
    };
    gauge(
        enc,
        "edgewatch_disk_budget_live_limit_bytes",
        "Live bytes retention keeps the store under: a share of the budget, the rest is left for the database's own overhead and lag.",
        b.live_limit_bytes.unwrap_or(budget),
    )?;
    gauge(
        enc,
        "edgewatch_disk_budget_kept_readings",
        "The newest readings the disk budget never removes.",
        b.kept_readings,
    )?;
    gauge(
        enc,
        "edgewatch_disk_budget_exceeded",
        "1 when the database files (edgewatch_log_size_bytes) are larger than the budget, or the last settled retention step left live bytes above their limit with only kept readings left to remove; else 0.",
        u64::from(b.exceeded),
    )?;
    let Some(live) = b.live else {
        return Ok(());
    };
    labelled_gauge(
        enc,
        "edgewatch_store_live_bytes",
        "Bytes of values the store holds, by kind (log blocks, sealed chunks, rollup pages): what the disk budget measures. The files are larger: the database's framing and space it has not reclaimed yet.",
        "kind",
        &[("log", live.log), ("chunk", live.chunks), ("rollup", live.rollups)],
    )
}

#[cfg(test)]
mod tests {
    use super::super::collect::encode_with;
    use super::*;

    #[test]
    fn budget_metrics_render() {
        let out = encode_with(|enc| budget(enc, &BudgetStatus::default()));
        assert!(out.contains("edgewatch_retention_readings_removed_total{reason=\"age\"} 0\n"));
        assert!(out.contains("edgewatch_disk_budget_bytes 0\n"));
        assert!(!out.contains("edgewatch_disk_budget_exceeded"));
        let status = BudgetStatus {
            budget_bytes: Some(8 << 20),
            live_limit_bytes: Some(4 << 20),
            live: Some(crate::store::LiveBytes {
                log: 3,
                chunks: 2,
                rollups: 1,
            }),
            file_bytes: 9 << 20,
            kept_readings: 7,
            floor_reached: false,
            exceeded: true,
            removed_for_age: 5,
            removed_for_budget: 11,
        };
        let out = encode_with(move |enc| budget(enc, &status));
        for line in [
            "# TYPE edgewatch_retention_readings_removed_total counter",
            "edgewatch_retention_readings_removed_total{reason=\"age\"} 5",
            "edgewatch_retention_readings_removed_total{reason=\"budget\"} 11",
            "edgewatch_disk_budget_bytes 8388608",
            "edgewatch_disk_budget_live_limit_bytes 4194304",
            "edgewatch_disk_budget_kept_readings 7",
            "edgewatch_disk_budget_exceeded 1",
            "edgewatch_store_live_bytes{kind=\"log\"} 3",
            "edgewatch_store_live_bytes{kind=\"chunk\"} 2",
            "edgewatch_store_live_bytes{kind=\"rollup\"} 1",
            "# TYPE edgewatch_store_live_bytes gauge",
        ] {
            assert!(
                out.contains(&format!("{line}\n")),
                "{line} missing in\n{out}"
            );
        }
    }
}
