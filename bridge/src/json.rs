//! JSON for readings and rollup buckets, written straight into one buffer.
//!
//! History answers carry thousands of readings or buckets (a 24 h rollup of 100 series is
//! 72,000 buckets, about 9 MB). Written through serde, every field name is escaped again for
//! every object, every series' strings again for every reading, and the output grows by
//! doubling; that was most of the time of a history request (perf, 2026-11-29): 1 h of one
//! series over HTTP took 6.17 ms through serde and 3.36 ms written here (session 3's A/B,
//! BENCHMARKS.md). Here field
//! names are literals, a series' strings are escaped once per run of readings of that series,
//! times come from a per-day cache, and the buffer is sized up front.
//!
//! The output is the same JSON the documented types ([`crate::http::ReadingItem`],
//! [`crate::http::ReadingPage`], [`crate::http::Rollups`],
//! [`crate::http::live::schema::LiveReading`]) serialize to; tests hold them equal.

use bytes::Bytes;
use edgewatch_protocol::timefmt::{Rfc3339, Rfc3339Days};
use serde::Serialize;

use crate::store::{ReadingView, SeriesRollup, StoredReading};

/// JSON that could not be written; nothing is sent in its place.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JsonError {
    /// serde_json refused a value.
    #[error("cannot serialize to JSON: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The bytes written are not UTF-8.
    #[error("the JSON written is not UTF-8: {0}")]
    Utf8(#[from] std::string::FromUtf8Error),
}

/// Bytes per reading of a typical answer, to size buffers.
const READING_BYTES: usize = 200;
/// Bytes per rollup bucket of a typical answer.
const BUCKET_BYTES: usize = 140;

/// Appends any serializable value (numbers, strings, small enums) as serde_json writes it.
fn push_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), JsonError> {
    Ok(serde_json::to_writer(&mut *out, value)?)
}

fn push_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn push_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Writes readings, reusing the escaped strings of the last series it saw.
#[derive(Default)]
pub(crate) struct ReadingWriter {
    times: Rfc3339Days,
    /// Device, metric and unit the two fragments below were made from.
    series: Option<(String, String, Option<String>)>,
    /// `,"topic":"..","deviceId":"..","metric":"..","value":`
    head: Vec<u8>,
    /// `,"unit":"..","timestamp":"`
    unit: Vec<u8>,
}

/// `,"topic":"..","deviceId":"..","metric":"..","value":`
fn push_series_head(out: &mut Vec<u8>, r: &ReadingView<'_>) -> Result<(), JsonError> {
    out.extend_from_slice(b",\"topic\":");
    // The topic is escaped as it is written, without building it first.
    serde::Serializer::collect_str(&mut serde_json::Serializer::new(&mut *out), &r.topic())?;
    out.extend_from_slice(b",\"deviceId\":");
    push_json(out, r.device_id)?;
    out.extend_from_slice(b",\"metric\":");
    push_json(out, r.metric)?;
    out.extend_from_slice(b",\"value\":");
    Ok(())
}

/// `,"unit":"..","timestamp":"`
fn push_unit_head(out: &mut Vec<u8>, r: &ReadingView<'_>) -> Result<(), JsonError> {
    out.extend_from_slice(b",\"unit\":");
    push_json(out, &r.unit)?;
    out.extend_from_slice(b",\"timestamp\":\"");
    Ok(())
}

/// The whole object around the series' parts, which `series_head` and `unit_head` append.
fn push_reading(
    out: &mut Vec<u8>,
    r: &ReadingView<'_>,
    tagged: bool,
    series_head: impl FnOnce(&mut Vec<u8>) -> Result<(), JsonError>,
    unit_head: impl FnOnce(&mut Vec<u8>) -> Result<(), JsonError>,
    times: (&[u8; 24], &[u8; 24]),
) -> Result<(), JsonError> {
    out.extend_from_slice(if tagged {
        b"{\"type\":\"reading\",\"seq\":"
    } else {
        b"{\"seq\":"
    });
    push_u64(out, r.seq);
    series_head(out)?;
    push_json(out, &r.value)?;
    unit_head(out)?;
    out.extend_from_slice(times.0);
    out.extend_from_slice(b"\",\"receivedAt\":\"");
    out.extend_from_slice(times.1);
    out.extend_from_slice(b"\"}");
    Ok(())
}

impl ReadingWriter {
    fn fragments_for(&mut self, r: &ReadingView<'_>) -> Result<(), JsonError> {
        let same = self
            .series
            .as_ref()
            .is_some_and(|(d, m, u)| d == r.device_id && m == r.metric && u.as_deref() == r.unit);
        if same {
            return Ok(());
        }
        // Forgotten until both fragments are whole.
        self.series = None;
        self.head.clear();
        push_series_head(&mut self.head, r)?;
        self.unit.clear();
        push_unit_head(&mut self.unit, r)?;
        self.series = Some((
            r.device_id.to_owned(),
            r.metric.to_owned(),
            r.unit.map(str::to_owned),
        ));
        Ok(())
    }

    /// Appends one reading object.
    pub(crate) fn write(
        &mut self,
        out: &mut Vec<u8>,
        r: &ReadingView<'_>,
    ) -> Result<(), JsonError> {
        self.fragments_for(r)?;
        let times = (
            self.times.format(r.timestamp_ms),
            self.times.format(r.received_at_ms),
        );
        push_reading(
            out,
            r,
            false,
            |o| {
                o.extend_from_slice(&self.head);
                Ok(())
            },
            |o| {
                o.extend_from_slice(&self.unit);
                Ok(())
            },
            (&times.0, &times.1),
        )
    }
}

/// The live `reading` message of one reading (`"type":"reading"` first).
pub(crate) fn reading_message(r: &StoredReading) -> Result<String, JsonError> {
    let v = ReadingView::from(r);
    let mut out = Vec::with_capacity(READING_BYTES);
    let (ts, recv) = (Rfc3339::new(v.timestamp_ms), Rfc3339::new(v.received_at_ms));
    push_reading(
        &mut out,
        &v,
        true,
        |o| push_series_head(o, &v),
        |o| push_unit_head(o, &v),
        (ts.as_bytes(), recv.as_bytes()),
    )?;
    // Every piece written is UTF-8 (literals, serde_json output and ASCII digits); checked.
    Ok(String::from_utf8(out)?)
}

/// `GET /v1/readings` as JSON: `{"readings":[...],"nextAfter":..}`.
pub(crate) fn reading_page<'a>(
    readings: impl ExactSizeIterator<Item = ReadingView<'a>>,
    next_after: Option<u64>,
) -> Result<Vec<u8>, JsonError> {
    let mut out = Vec::with_capacity(readings.len() * READING_BYTES + 64);
    out.extend_from_slice(b"{\"readings\":[");
    let mut w = ReadingWriter::default();
    for (i, r) in readings.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        w.write(&mut out, &r)?;
    }
    out.extend_from_slice(b"],\"nextAfter\":");
    push_json(&mut out, &next_after)?;
    out.push(b'}');
    Ok(out)
}

/// `GET /v1/readings` as NDJSON: one reading object per line.
pub(crate) fn reading_lines<'a>(
    readings: impl ExactSizeIterator<Item = ReadingView<'a>>,
) -> Result<Vec<u8>, JsonError> {
    let mut out = Vec::with_capacity(readings.len() * READING_BYTES);
    let mut w = ReadingWriter::default();
    for r in readings {
        w.write(&mut out, &r)?;
        out.push(b'\n');
    }
    Ok(out)
}

/// The range part of a rollups answer.
pub(crate) struct RollupsHead {
    pub(crate) from_ms: i64,
    pub(crate) to_ms: i64,
    pub(crate) step_ms: i64,
    pub(crate) source: crate::store::RollupSource,
}

/// Series per thread below which a rollups answer is written on one thread.
const SERIES_PER_THREAD: usize = 8;

/// `GET /v1/rollups`: `{"from":..,"to":..,"stepMs":..,"source":..,"series":[...]}`, in
/// pieces to send one after the other (the series are written on every core).
pub(crate) fn rollups(
    head: &RollupsHead,
    series: &[SeriesRollup],
) -> Result<Vec<Bytes>, JsonError> {
    let mut times = Rfc3339Days::default();
    let mut open = Vec::with_capacity(160);
    open.extend_from_slice(b"{\"from\":\"");
    open.extend_from_slice(&times.format(head.from_ms));
    open.extend_from_slice(b"\",\"to\":\"");
    open.extend_from_slice(&times.format(head.to_ms));
    open.extend_from_slice(b"\",\"stepMs\":");
    push_i64(&mut open, head.step_ms);
    open.extend_from_slice(b",\"source\":");
    push_json(&mut open, head.source.as_str())?;
    open.extend_from_slice(b",\"series\":[");
    let items: Vec<(usize, &SeriesRollup)> = series.iter().enumerate().collect();
    let written = crate::split::map(items, SERIES_PER_THREAD, |(i, s)| series_json(i > 0, s))?;
    let mut pieces = Vec::with_capacity(written.len() + 2);
    pieces.push(Bytes::from(open));
    pieces.extend(written);
    pieces.push(Bytes::from_static(b"]}"));
    Ok(pieces)
}

/// One series of a rollups answer, with the comma before it unless it is the first.
fn series_json(comma: bool, s: &SeriesRollup) -> Result<Bytes, JsonError> {
    let mut out = Vec::with_capacity(s.points.len() * BUCKET_BYTES + 160);
    let mut times = Rfc3339Days::default();
    out.extend_from_slice(if comma {
        b",{\"topic\":"
    } else {
        b"{\"topic\":"
    });
    push_json(&mut out, &s.key.topic())?;
    out.extend_from_slice(b",\"deviceId\":");
    push_json(&mut out, &s.key.device_id)?;
    out.extend_from_slice(b",\"metric\":");
    push_json(&mut out, &s.key.metric)?;
    out.extend_from_slice(b",\"unit\":");
    push_json(&mut out, &s.unit)?;
    out.extend_from_slice(b",\"points\":[");
    for (j, (t, a)) in s.points.iter().enumerate() {
        out.extend_from_slice(if j > 0 { b",{\"t\":\"" } else { b"{\"t\":\"" });
        out.extend_from_slice(&times.format(*t));
        out.extend_from_slice(b"\",\"tMs\":");
        push_i64(&mut out, *t);
        out.extend_from_slice(b",\"min\":");
        push_json(&mut out, &a.min)?;
        out.extend_from_slice(b",\"max\":");
        push_json(&mut out, &a.max)?;
        out.extend_from_slice(b",\"avg\":");
        push_json(&mut out, &a.avg())?;
        out.extend_from_slice(b",\"count\":");
        push_u64(&mut out, a.count);
        out.extend_from_slice(b",\"last\":");
        push_json(&mut out, &a.last)?;
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{ReadingItem, ReadingPage, Rollups, Source, Timestamp};
    use crate::store::{Aggregate, RollupSource};
    use edgewatch_protocol::{Reading, SeriesKey};
    use proptest::prelude::*;

    const DEVICES: [&str; 3] = ["d1", "dev \"x\"\\\n", "ü/é"];
    const METRICS: [&str; 2] = ["temperature", "hum\tidity"];
    const UNITS: [Option<&str>; 3] = [Some("C"), None, Some("\u{1}%")];

    fn reading(seq: u64, series: usize, value: f64, t: i64, received: i64) -> StoredReading {
        StoredReading {
            seq,
            reading: Reading {
                device_id: DEVICES[series % 3].to_owned(),
                metric: METRICS[series / 3 % 2].to_owned(),
                value,
                unit: UNITS[series / 6 % 3].map(str::to_owned),
                timestamp_ms: t,
                received_at_ms: received,
            },
        }
    }

    proptest! {
        /// Runs of one series, series changing (unit included) and times on and off one day.
        #[test]
        fn reading_pages_equal_the_documented_type(
            rows in proptest::collection::vec(
                (0usize..18, any::<f64>(), -10_000_000_000_000i64..10_000_000_000_000, 0i64..5_000),
                0..60,
            ),
            next in proptest::option::of(any::<u64>()),
        ) {
            let readings: Vec<StoredReading> = rows
                .iter()
                .enumerate()
                .map(|(i, &(s, v, t, lag))| reading(i as u64 + 1, s, v, t, t + lag))
                .collect();
            let documented = serde_json::to_string(&ReadingPage {
                readings: readings.iter().map(ReadingItem::from).collect(),
                next_after: next,
            })
            .unwrap();
            let written = reading_page(readings.iter().map(ReadingView::from), next).unwrap();
            prop_assert_eq!(String::from_utf8(written).unwrap(), documented);
        }

        #[test]
        fn rollups_equal_the_documented_type(
            series in proptest::collection::vec(
                (0usize..18, proptest::collection::vec(
                    (any::<f64>(), any::<f64>(), any::<f64>(), 1u64..1_000_000, any::<f64>()),
                    0..20,
                )),
                0..24,
            ),
            from in -1_000_000_000_000i64..4_000_000_000_000,
            step in 1i64..100_000_000,
        ) {
            let list: Vec<SeriesRollup> = series
                .iter()
                .map(|(s, points)| {
                    let r = reading(0, *s, 0.0, 0, 0).reading;
                    SeriesRollup {
                        key: SeriesKey { device_id: r.device_id, metric: r.metric },
                        unit: r.unit,
                        points: points
                            .iter()
                            .enumerate()
                            .map(|(i, &(min, max, sum, count, last))| {
                                let t = from + i as i64 * step;
                                let a = Aggregate { min, max, sum, count, last, last_ts: t, last_seq: 1 };
                                (t, a)
                            })
                            .collect(),
                    }
                })
                .collect();
            let to = from + 20 * step;
            let documented = serde_json::to_string(&Rollups {
                from: Timestamp(from),
                to: Timestamp(to),
                step_ms: step,
                source: Source::Minute,
                series: list.iter().map(crate::http::SeriesRollup::from).collect(),
            })
            .unwrap();
            let head = RollupsHead { from_ms: from, to_ms: to, step_ms: step, source: RollupSource::Minute };
            let written: Vec<u8> = rollups(&head, &list).unwrap().concat();
            prop_assert_eq!(String::from_utf8(written).unwrap(), documented);
        }
    }
}
