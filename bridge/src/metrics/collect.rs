//! The collectors `/metrics` reads at each scrape (the store's are in `store`): the pipeline
//! (ingest and writer), the live side and the values added with [`super::Metrics::with_sample`]. Each reads
//! atomics and snapshots the parts already keep and writes them through the client library's
//! encoder; nothing is kept or locked between scrapes.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::{Sample, SampleKind};
use crate::histogram::Histogram;
use crate::ingest::Ingest;
use crate::live::connections::{LiveMetrics, Transport};
use crate::live::fanout::Fanout;
use crate::store::Store;

/// What the collectors read, shared with [`super::Metrics`] (which adds the live side and
/// samples after start).
#[derive(Debug)]
pub(super) struct Sources {
    pub(super) store: Store,
    pub(super) ingest: Ingest,
    pub(super) live: OnceLock<(Fanout, Arc<LiveMetrics>)>,
    pub(super) http_counts: OnceLock<Arc<super::HttpCounts>>,
    pub(super) uplinks: OnceLock<crate::uplink::Uplinks>,
    /// std Mutex: pushed to at start-up, read by scrapes; never held across `.await`.
    pub(super) samples: Mutex<Vec<Sample>>,
}

/// Ingest's counters, its rejects by reason, and the writer's outcomes, histograms and queue.
#[derive(Debug)]
pub(super) struct Pipeline(pub(super) Arc<Sources>);

/// The fan-out and the live connections, once [`super::Metrics::with_live`] added them.
#[derive(Debug)]
pub(super) struct Live(pub(super) Arc<Sources>);

/// Values owned elsewhere (the embedded broker).
#[derive(Debug)]
pub(super) struct Samples(pub(super) Arc<Sources>);

impl Collector for Pipeline {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let ingest = &self.0.ingest;
        let c = ingest.counters();
        counters(
            &mut enc,
            &[
                (
                    "edgewatch_publishes_received_total",
                    "Inbound MQTT publishes seen by ingest.",
                    &c.received,
                ),
                (
                    "edgewatch_readings_ingested_total",
                    "Readings decoded and handed to the writer.",
                    &c.readings,
                ),
                (
                    "edgewatch_presence_changes_total",
                    "Device presence changes (sensors/{deviceId}/status) handed to the writer.",
                    &c.presence,
                ),
                (
                    "edgewatch_publishes_ignored_total",
                    "Inbound publishes on topics outside sensors/ that no ingest mapping matches (not readings; not stored).",
                    &c.ignored,
                ),
                (
                    "edgewatch_readings_split_total",
                    "Readings beyond the first that mapped publishes gave (one publish, several fields).",
                    &c.split,
                ),
            ],
        )?;
        mappings(&mut enc, ingest)?;
        let o = &ingest.writer().stats().outcomes;
        counters(
            &mut enc,
            &[
                (
                    "edgewatch_readings_stored_total",
                    "Readings stored in the event log, each with a new seq.",
                    &o.stored,
                ),
                (
                    "edgewatch_readings_duplicate_total",
                    "Readings recognised as a resend of a stored reading and not stored again.",
                    &o.duplicates,
                ),
                (
                    "edgewatch_presence_recorded_total",
                    "Presence changes recorded by the writer.",
                    &o.presence,
                ),
                (
                    "edgewatch_writer_items_failed_total",
                    "Items of writer batches the store could not apply (left unacknowledged).",
                    &o.failed,
                ),
            ],
        )?;
        let rejects = ingest.rejects().snapshot();
        let by_reason: Vec<(&str, u64)> = if rejects.by_reason.is_empty() {
            vec![("none", 0)]
        } else {
            rejects.by_reason.into_iter().collect()
        };
        labelled_counter(
            &mut enc,
            "edgewatch_readings_rejected_total",
            "Inbound publishes rejected, by reason.",
            "reason",
            &by_reason,
        )?;
        writer(&mut enc, ingest)
    }
}

/// Per ingest mapping: readings it gave and publishes it rejected (only with mappings).
fn mappings(enc: &mut DescriptorEncoder<'_>, ingest: &Ingest) -> fmt::Result {
    let mappings = ingest.mappings();
    if mappings.is_empty() {
        return Ok(());
    }
    let count = |f: fn(&crate::ingest::mapping::Mapping) -> u64| -> Vec<(&str, u64)> {
        mappings.iter().map(|m| (m.name(), f(m))).collect()
    };
    labelled_counter(
        enc,
        "edgewatch_ingest_mapped_readings_total",
        "Readings an ingest mapping gave, by mapping.",
        "mapping",
        &count(|m| m.mapped.load(Ordering::Relaxed)),
    )?;
    labelled_counter(
        enc,
        "edgewatch_ingest_mapping_rejects_total",
        "Publishes an ingest mapping matched and could not decode (also in edgewatch_readings_rejected_total), by mapping.",
        "mapping",
        &count(|m| m.rejected.load(Ordering::Relaxed)),
    )
}

/// The writer's histograms, failures, queue and health.
fn writer(enc: &mut DescriptorEncoder<'_>, ingest: &Ingest) -> fmt::Result {
    let w = ingest.writer();
    let ws = w.stats();
    histogram(
        enc,
        "edgewatch_writer_batch_size",
        "Items (readings and presence changes) per committed writer batch.",
        &ws.batch_size,
    )?;
    histogram(
        enc,
        "edgewatch_writer_commit_duration_seconds",
        "Time to apply a batch to the log and make it durable.",
        &ws.commit_seconds,
    )?;
    counter(
        enc,
        "edgewatch_writer_commit_failures_total",
        "Writer batches that could not be stored.",
        ws.commit_failures.load(Ordering::Relaxed),
    )?;
    gauge(
        enc,
        "edgewatch_writer_queue_capacity",
        "Capacity of the writer's input queue, commands.",
        w.queue_capacity(),
    )?;
    gauge(
        enc,
        "edgewatch_writer_queue_free",
        "Free slots in the writer's input queue.",
        w.free_slots(),
    )
}

impl Collector for Live {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let Some((fanout, live)) = self.0.live.get() else {
            return Ok(());
        };
        let by_transport: Vec<(&str, i64)> = [Transport::Sse, Transport::Ws, Transport::Poll]
            .into_iter()
            .map(|t| (t.label(), live.connections(t)))
            .collect();
        labelled_gauge(
            &mut enc,
            "edgewatch_live_connections",
            "Open live connections by transport.",
            "transport",
            &by_transport,
        )?;
        counter(
            &mut enc,
            "edgewatch_live_ws_subscriptions_refused_total",
            "WebSocket subscribe messages refused at live.ws_max_subscriptions (answered with an error; the connection stays open).",
            live.ws_subscriptions_refused(),
        )?;
        let q = fanout.queue_stats();
        for (name, help, v) in [
            (
                "edgewatch_live_subscriptions",
                "Open fan-out subscriptions.",
                q.subscriptions,
            ),
            (
                "edgewatch_live_subscriptions_conflating",
                "Subscriptions currently lagging (conflating to the latest value per topic).",
                q.conflating,
            ),
            (
                "edgewatch_live_queue_depth_max",
                "Deepest subscriber queue, events (the worst per-subscriber lag).",
                q.max_depth,
            ),
            (
                "edgewatch_live_queue_depth_sum",
                "Events queued over all subscribers.",
                q.total_depth,
            ),
        ] {
            gauge(&mut enc, name, help, v)?;
        }
        fanout_stats(&mut enc, fanout)
    }
}

/// The fan-out's counters and latency histograms.
fn fanout_stats(enc: &mut DescriptorEncoder<'_>, fanout: &Fanout) -> fmt::Result {
    let st = fanout.stats();
    counters(
        enc,
        &[
            (
                "edgewatch_live_events_delivered_total",
                "Events queued to live subscribers.",
                &st.delivered,
            ),
            (
                "edgewatch_live_conflated_dropped_total",
                "Readings dropped for slow subscribers (superseded while conflated).",
                &st.dropped,
            ),
            (
                "edgewatch_live_gaps_total",
                "Gap notices sent to slow subscribers.",
                &st.gaps,
            ),
            (
                "edgewatch_live_lag_disconnects_total",
                "Subscribers disconnected for sustained lag.",
                &st.lag_disconnects,
            ),
            (
                "edgewatch_live_catchup_failures_total",
                "Reads of the log for live delivery (fan-out catch-up, watch replay) that failed; the subscribers concerned were sent a gap.",
                &st.catchup_failures,
            ),
            (
                "edgewatch_live_events_unencodable_total",
                "Readings whose live event could not be serialized, so were not sent (logged).",
                &st.unencodable,
            ),
        ],
    )?;
    histogram(
        enc,
        "edgewatch_live_link_to_fanout_seconds",
        "Broker link to committed reading at the fan-out (ingest, group commit, fsync).",
        &st.link_to_fanout,
    )?;
    histogram(
        enc,
        "edgewatch_live_publish_seconds",
        "One fan-out publish call (match and queue a committed batch).",
        &st.publish_seconds,
    )?;
    let mut m = enc.encode_descriptor(
        "edgewatch_live_fanout_to_write_seconds",
        "Live reading made by the fan-out to written by its transport.",
        None,
        MetricType::Histogram,
    )?;
    st.sse_write
        .encode(m.encode_family(&[("transport", "sse")])?)?;
    st.ws_write.encode(m.encode_family(&[("transport", "ws")])?)
}

impl Collector for Samples {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let Ok(samples) = self.0.samples.lock() else {
            return Ok(());
        };
        for s in samples.iter() {
            let v = (s.read)();
            match s.kind {
                SampleKind::Gauge => gauge(&mut enc, s.name, s.help, v)?,
                SampleKind::Counter => {
                    let m =
                        enc.encode_descriptor(family(s.name), s.help, None, MetricType::Counter)?;
                    ConstCounter::new(v).encode(m)?;
                }
            }
        }
        Ok(())
    }
}

/// The family name the library wants for a counter exposed as `name`: without `_total`,
/// which its encoder adds back (so the sources here name each counter as it is exposed).
pub(super) fn family(name: &str) -> &str {
    debug_assert!(
        name.ends_with("_total"),
        "counter {name} must end in _total"
    );
    name.strip_suffix("_total").unwrap_or(name)
}

/// A counter without labels; `name` as exposed (ending in `_total`).
pub(super) fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: u64,
) -> fmt::Result {
    let m = enc.encode_descriptor(family(name), help, None, MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}

/// Several counters read from atomics: `(name, help, value)`.
fn counters(enc: &mut DescriptorEncoder<'_>, list: &[(&str, &str, &AtomicU64)]) -> fmt::Result {
    for (name, help, v) in list {
        counter(enc, name, help, v.load(Ordering::Relaxed))?;
    }
    Ok(())
}

/// One counter with a label: `name{label="value"} n` per item.
pub(super) fn labelled_counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    items: &[(&str, u64)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(family(name), help, None, MetricType::Counter)?;
    for (value, n) in items {
        ConstCounter::new(*n).encode(m.encode_family(&[(label, *value)])?)?;
    }
    Ok(())
}

/// A gauge without labels.
pub(super) fn gauge<V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: V,
) -> fmt::Result {
    let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

/// One gauge with a label: `name{label="value"} v` per item.
pub(super) fn labelled_gauge<V: EncodeGaugeValue + Copy>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    items: &[(&str, V)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value, v) in items {
        ConstGauge::new(*v).encode(m.encode_family(&[(label, *value)])?)?;
    }
    Ok(())
}

/// One of our atomic histograms, without labels.
fn histogram(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    h: &Histogram,
) -> fmt::Result {
    h.encode(enc.encode_descriptor(name, help, None, MetricType::Histogram)?)
}

/// Encodes what `f` writes, as a scrape would (for the tests of `collect`, `store`).
#[cfg(test)]
pub(super) fn encode_with(
    f: impl Fn(&mut DescriptorEncoder<'_>) -> fmt::Result + Send + Sync + 'static,
) -> String {
    struct Once<F>(F);
    impl<F> fmt::Debug for Once<F> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Once")
        }
    }
    impl<F> Collector for Once<F>
    where
        F: Fn(&mut DescriptorEncoder<'_>) -> fmt::Result + Send + Sync + 'static,
    {
        fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
            (self.0)(&mut enc)
        }
    }
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Once(f)));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let out = encode_with(|enc| {
            let h = Histogram::new(&[1.0, 10.0]);
            h.observe(0.5);
            h.observe(5.0);
            h.observe(50.0);
            let mut m = enc.encode_descriptor("x", "An x.", None, MetricType::Histogram)?;
            h.encode(m.encode_family(&[("route", "/a")])?)
        });
        for line in [
            "# TYPE x histogram",
            "x_bucket{route=\"/a\",le=\"1\"} 1",
            "x_bucket{route=\"/a\",le=\"10\"} 2",
            "x_bucket{route=\"/a\",le=\"+Inf\"} 3",
            "x_sum{route=\"/a\"} 55.5",
            "x_count{route=\"/a\"} 3",
        ] {
            assert!(
                out.contains(&format!("{line}\n")),
                "{line} missing in\n{out}"
            );
        }
        assert_eq!(out.matches("le=\"+Inf\"").count(), 1, "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        let out = encode_with(|enc| {
            labelled_counter(enc, "y_total", "A y.", "reason", &[("a\"b\\c\nd", 1)])
        });
        assert!(
            out.contains("y_total{reason=\"a\\\"b\\\\c\\nd\"} 1\n"),
            "{out}"
        );
    }
}
