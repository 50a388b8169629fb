//! The store on a real sled database in a temp dir.

use edgewatch_bridge::store::{
    PresenceUpdate, ReadingQuery, ReadingView, RetentionPolicy, RollupQuery, RollupSource, Store,
    StoreOptions,
};
use edgewatch_protocol::TopicFilter;
use edgewatch_testkit::{base_time, reading, HOUR};

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, &StoreOptions::default()).expect("open store")
}

fn filter(s: &str) -> Vec<TopicFilter> {
    vec![TopicFilter::parse(s).expect("filter")]
}

#[test]
fn seq_is_gapless_and_continues_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let t = base_time();
    {
        let store = open(dir.path());
        let batch: Vec<_> = (0..500)
            .map(|i| reading("d1", "temp", t + i * 1000, i as f64))
            .collect();
        let stored = store.append_batch(&batch).unwrap();
        let seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=500).collect::<Vec<_>>());
        assert_eq!(stored[7].1, batch[7]);
    }
    let store = open(dir.path());
    assert_eq!(store.last_seq().unwrap(), 500);
    let stored = store
        .append_batch(&[reading("d2", "hum", t, 40.5)])
        .unwrap();
    assert_eq!(stored[0].0, 501);
    let all = store.log_after(0, 10_000).unwrap();
    assert_eq!(all.len(), 501);
    assert_eq!(all[3].reading, reading("d1", "temp", t + 3000, 3.0));
    assert_eq!(store.get(501).unwrap(), Some(reading("d2", "hum", t, 40.5)));
    let series = store.series().unwrap();
    assert_eq!(series.len(), 2);
    assert_eq!(series[0].count, 500);
    assert_eq!(series[0].last_value, 499.0);
}

#[test]
fn redelivered_readings_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let t = base_time();
    let a = reading("d1", "temp", t, 21.5);
    let b = reading("d1", "temp", t + 1000, 22.0);
    let same_time_other_value = reading("d1", "temp", t, 99.0);
    {
        let store = open(dir.path());
        let seqs = store
            .apply(&[a.clone(), a.clone(), b.clone()], &[])
            .unwrap();
        assert_eq!(seqs, vec![Some(1), None, Some(2)]);
        let seqs = store
            .apply(&[b.clone(), same_time_other_value.clone()], &[])
            .unwrap();
        assert_eq!(seqs, vec![None, Some(3)]);
        store.flush().unwrap();
    }
    // After a restart the recent fingerprints are rebuilt from the log tail.
    let store = open(dir.path());
    let mut redelivered = a.clone();
    redelivered.received_at_ms += 60_000;
    assert_eq!(
        store
            .apply(&[redelivered, b, same_time_other_value], &[])
            .unwrap(),
        vec![None, None, None]
    );
    assert_eq!(store.last_seq().unwrap(), 3);
}

#[test]
fn units_round_trip_and_presence_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let t = base_time();
    let mut r1 = reading("d1", "temp", t, 1.0);
    let mut r2 = reading("d1", "temp", t + 1, 2.25);
    r2.unit = Some("F".to_owned());
    let mut r3 = reading("d1", "temp", t + 2, -3.0);
    r3.unit = None;
    r1.value = 1e300;
    store
        .append_batch(&[r1.clone(), r2.clone(), r3.clone()])
        .unwrap();
    let got: Vec<_> = store
        .log_after(0, 10)
        .unwrap()
        .into_iter()
        .map(|s| s.reading)
        .collect();
    assert_eq!(got, vec![r1, r2, r3]);

    let up = |online, at_ms| PresenceUpdate {
        device_id: "d1".to_owned(),
        online,
        at_ms,
    };
    store.apply(&[], &[up(true, t)]).unwrap();
    store.apply(&[], &[up(true, t + 50)]).unwrap(); // repeated: `since` stays
    let devices = store.devices().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].online, Some(true));
    assert_eq!(devices[0].since_ms, Some(t));
    assert_eq!(devices[0].metrics, vec!["temp".to_owned()]);
    store.apply(&[], &[up(false, t + 99)]).unwrap();
    let d = &store.devices().unwrap()[0];
    assert_eq!((d.online, d.since_ms), (Some(false), Some(t + 99)));
}

/// 3 devices x 2 metrics, 1 Hz for 2 hours, then exact range queries and rollups.
#[test]
fn range_queries_and_rollups_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let t = base_time();
    let secs = 7200i64;
    let value = |d: i64, m: i64, k: i64| ((k * 7 + d * 3 + m) % 101) as f64 / 4.0;
    for chunk in 0..(secs / 600) {
        let mut batch = Vec::new();
        for k in chunk * 600..(chunk + 1) * 600 {
            for d in 0..3 {
                for (m, metric) in ["temp", "hum"].iter().enumerate() {
                    batch.push(reading(
                        &format!("d{d}"),
                        metric,
                        t + k * 1000,
                        value(d, m as i64, k),
                    ));
                }
            }
        }
        store.append_batch(&batch).unwrap();
    }
    assert_eq!(store.last_seq().unwrap(), 3 * 2 * 7200);

    // Raw range for one series: [t+100s, t+400s) = 300 rows, paged by seq.
    let mut q = ReadingQuery {
        filters: filter("sensors/d1/temp"),
        from_ms: Some(t + 100_000),
        to_ms: Some(t + 400_000),
        after: 0,
        limit: 120,
    };
    let mut rows = Vec::new();
    loop {
        let page = store.readings(&q).unwrap();
        rows.extend(page.readings);
        match page.next_after {
            Some(n) => q.after = n,
            None => break,
        }
    }
    assert_eq!(rows.len(), 300);
    assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq));
    for (i, r) in rows.iter().enumerate() {
        let k = 100 + i as i64;
        assert_eq!(r.reading.timestamp_ms, t + k * 1000);
        assert_eq!(r.reading.value, value(1, 0, k));
    }
    // Wildcards: every temp series, unbounded time, log walk path.
    let page = store
        .readings(&ReadingQuery {
            filters: filter("sensors/+/temp"),
            limit: 10_000,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.readings.len(), 10_000);
    assert!(page.readings.iter().all(|r| r.reading.metric == "temp"));
    let next = page.next_after.expect("more pages");
    let rest = store
        .readings(&ReadingQuery {
            filters: filter("sensors/+/temp"),
            limit: 100_000,
            after: next,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rest.readings.len(), 3 * 7200 - 10_000);
    assert_eq!(rest.next_after, None);

    // Rollups: check every step source against a brute-force computation.
    let expect = |d: i64, m: i64, from: i64, to: i64, step: i64| {
        let mut out: std::collections::BTreeMap<i64, (f64, f64, f64, u64, f64)> =
            Default::default();
        for k in 0..secs {
            let ts = t + k * 1000;
            if ts < from || ts >= to {
                continue;
            }
            let v = value(d, m, k);
            let b = ts.div_euclid(step) * step;
            let e = out.entry(b).or_insert((f64::MAX, f64::MIN, 0.0, 0, 0.0));
            e.0 = e.0.min(v);
            e.1 = e.1.max(v);
            e.2 += v;
            e.3 += 1;
            e.4 = v;
        }
        out
    };
    for (from, to, step, source) in [
        (t, t + 2 * HOUR, HOUR, RollupSource::Hour),
        (t - HOUR, t + 3 * HOUR, 2 * HOUR, RollupSource::Hour),
        (t + 90_500, t + 5_000_000, 5 * 60_000, RollupSource::Minute),
        (t + 1_234, t + 100_000, 7_000, RollupSource::Raw),
        (
            t + 30 * 60_000 + 17,
            t + 90 * 60_000 - 3,
            HOUR,
            RollupSource::Hour,
        ),
    ] {
        let (src, got) = store
            .rollups(&RollupQuery {
                filters: filter("sensors/d2/hum"),
                from_ms: from,
                to_ms: to,
                step_ms: step,
            })
            .unwrap();
        assert_eq!(src, source);
        assert_eq!(got.len(), 1);
        let want = expect(2, 1, from, to, step);
        assert_eq!(got[0].points.len(), want.len(), "step {step}");
        for ((b, a), (wb, w)) in got[0].points.iter().zip(want.iter()) {
            assert_eq!(b, wb);
            assert_eq!(
                (a.min, a.max, a.count, a.last),
                (w.0, w.1, w.3, w.4),
                "bucket {b} step {step}"
            );
            assert!((a.sum - w.2).abs() < 1e-6);
        }
    }
    let (_, all) = store
        .rollups(&RollupQuery {
            filters: vec![],
            from_ms: t,
            to_ms: t + 2 * HOUR,
            step_ms: HOUR,
        })
        .unwrap();
    assert_eq!(all.len(), 6);
    assert!(all
        .iter()
        .all(|s| s.points.iter().map(|p| p.1.count).sum::<u64>() == 7200));
}

#[test]
fn retention_removes_old_data_in_steps_and_keeps_seq() {
    let dir = tempfile::tempdir().unwrap();
    let t = base_time();
    {
        let store = open(dir.path());
        let old: Vec<_> = (0..2500)
            .map(|i| reading("d1", "temp", t - 48 * HOUR + i * 1000, 1.0))
            .collect();
        let new: Vec<_> = (0..100)
            .map(|i| reading("d1", "temp", t + i * 1000, 2.0))
            .collect();
        store.append_batch(&old).unwrap();
        store.append_batch(&new).unwrap();
        let policy = RetentionPolicy {
            max_age_ms: Some(24 * HOUR),
            disk_budget_bytes: None,
            step: 1000,
        };
        let now = t + HOUR;
        let mut steps = 0;
        loop {
            let o = store.retain_step(now, &policy).unwrap();
            assert!(o.readings_deleted <= 1000);
            steps += 1;
            if !o.more {
                break;
            }
            assert!(steps < 20);
        }
        assert!(steps >= 3);
        let left = store.log_after(0, 10_000).unwrap();
        assert_eq!(left.len(), 100);
        assert_eq!(left[0].seq, 2501);
        assert_eq!(store.series().unwrap()[0].count, 100);
        let (_, r) = store
            .rollups(&RollupQuery {
                filters: vec![],
                from_ms: t - 72 * HOUR,
                to_ms: t + HOUR,
                step_ms: HOUR,
            })
            .unwrap();
        assert_eq!(r[0].points.iter().map(|p| p.1.count).sum::<u64>(), 100);
        // Everything goes; seq must still not be reused.
        let all = RetentionPolicy {
            max_age_ms: Some(0),
            disk_budget_bytes: None,
            step: 1000,
        };
        store.retain_step(t + 10 * HOUR, &all).unwrap();
        assert!(store.log_after(0, 10).unwrap().is_empty());
        store.flush().unwrap();
    }
    let store = open(dir.path());
    assert_eq!(
        store
            .append_batch(&[reading("d1", "temp", t + 500_000, 3.0)])
            .unwrap()[0]
            .0,
        2601
    );
}

fn open_with(dir: &std::path::Path, window: usize) -> Store {
    let opts = StoreOptions {
        dedupe_window: window,
        ..StoreOptions::default()
    };
    Store::open(dir, &opts).expect("open store")
}

/// Everything a dashboard can ask, to compare the store before and after a restart.
fn everything(store: &Store, t: i64) -> Vec<String> {
    let mut out = vec![format!("{:?}", store.series().unwrap())];
    out.push(format!("{:?}", store.log_after(0, 1_000_000).unwrap()));
    for (f, from, to) in [
        ("sensors/d3/temp", t - HOUR, t + 3 * HOUR),
        ("sensors/+/hum", t + 600_000, t + 4_000_000),
        ("sensors/#", t + 1_234, t + 2_345_678),
    ] {
        let q = ReadingQuery {
            filters: filter(f),
            from_ms: Some(from),
            to_ms: Some(to),
            after: 0,
            limit: 1_000_000,
        };
        let page = store.readings(&q).unwrap();
        // The borrowed rows HTTP answers are written from say the same (unit overrides
        // included), on the selective path (one series) and the log walk (`sensors/#`).
        let rows = store.reading_rows(&q).unwrap();
        let views: Vec<String> = rows.iter().map(|v| format!("{v:?}")).collect();
        let owned: Vec<String> = page
            .readings
            .iter()
            .map(|r| format!("{:?}", ReadingView::from(r)))
            .collect();
        assert_eq!(views, owned, "{f}");
        assert_eq!(rows.next_after, page.next_after);
        out.push(format!("{:?}", page.readings));
        for step in [HOUR, 5 * 60_000, 7_000] {
            let (src, r) = store
                .rollups(&RollupQuery {
                    filters: filter(f),
                    from_ms: from,
                    to_ms: to,
                    step_ms: step,
                })
                .unwrap();
            out.push(format!("{src:?} {r:?}"));
        }
    }
    out
}

/// 8 devices x 2 metrics with late (out-of-order) readings and unit changes, sealed partly by
/// size, partly by the replay bound; queries give the same answers after a restart, and they
/// match a brute-force computation over what was stored.
#[test]
fn restart_rebuilds_open_chunks_and_rollups() {
    let dir = tempfile::tempdir().unwrap();
    let t = base_time();
    let mut all: Vec<(u64, edgewatch_protocol::Reading)> = Vec::new();
    let before = {
        let store = open_with(dir.path(), 3000);
        for second in (0..3100i64).step_by(100) {
            let mut batch = Vec::new();
            for k in second..second + 100 {
                for d in 0..8 {
                    for m in ["temp", "hum"] {
                        // Every 37th reading of d5 arrives 20 minutes late.
                        let ts = if d == 5 && k % 37 == 0 && k > 1200 {
                            t + (k - 1200) * 1000
                        } else {
                            t + k * 1000 + d
                        };
                        let mut r =
                            reading(&format!("d{d}"), m, ts, ((k * 13 + d) % 997) as f64 / 10.0);
                        if d == 2 && k % 500 == 0 {
                            r.unit = Some("F".to_owned());
                        }
                        if d == 3 && k % 700 == 1 {
                            r.unit = None;
                        }
                        batch.push(r);
                    }
                }
            }
            all.extend(store.append_batch(&batch).unwrap());
        }
        assert_eq!(all.len(), 3100 * 16);
        // The last batch leaves open chunks that only the replay can rebuild.
        assert!(store.stats().unwrap().readings == 3100 * 16);
        everything(&store, t)
    };
    let store = open_with(dir.path(), 3000);
    let after = everything(&store, t);
    assert_eq!(before.len(), after.len());
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        assert!(a == b, "answer {i} differs after reopen");
    }

    // Brute force: one series over a range with late readings, raw and rolled up.
    let (from, to) = (t + 100_000, t + 2_900_000);
    let want: Vec<_> = all
        .iter()
        .filter(|(_, r)| r.device_id == "d5" && r.metric == "hum")
        .filter(|(_, r)| r.timestamp_ms >= from && r.timestamp_ms < to)
        .cloned()
        .collect();
    let got = store
        .readings(&ReadingQuery {
            filters: filter("sensors/d5/hum"),
            from_ms: Some(from),
            to_ms: Some(to),
            after: 0,
            limit: 100_000,
        })
        .unwrap();
    let got: Vec<_> = got
        .readings
        .into_iter()
        .map(|s| (s.seq, s.reading))
        .collect();
    assert_eq!(got, want);
    for step in [60_000, HOUR, 7_000] {
        let (_, r) = store
            .rollups(&RollupQuery {
                filters: filter("sensors/d5/hum"),
                from_ms: from,
                to_ms: to,
                step_ms: step,
            })
            .unwrap();
        let mut expect: std::collections::BTreeMap<i64, (u64, f64, f64, f64)> = Default::default();
        for (_, r) in &want {
            let e = expect
                .entry(r.timestamp_ms.div_euclid(step) * step)
                .or_insert((0, f64::MAX, f64::MIN, 0.0));
            e.0 += 1;
            e.1 = e.1.min(r.value);
            e.2 = e.2.max(r.value);
            e.3 += r.value;
        }
        let got: Vec<_> = r[0]
            .points
            .iter()
            .map(|(b, a)| (*b, a.count, a.min, a.max))
            .collect();
        let want_pts: Vec<_> = expect.iter().map(|(b, e)| (*b, e.0, e.1, e.2)).collect();
        assert_eq!(got, want_pts, "step {step}");
        for ((_, a), (_, e)) in r[0].points.iter().zip(&expect) {
            assert!((a.sum - e.3).abs() < 1e-6);
        }
    }
}

/// Redeliveries are recognised after a restart both for readings still in an open chunk
/// (rebuilt by replay) and for readings in sealed chunks, including late ones.
#[test]
fn duplicates_are_recognised_across_restart_in_sealed_and_open_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let t = base_time();
    let batch: Vec<_> = (0..2000)
        .map(|i| reading("d1", "temp", t + i * 1000, (i % 50) as f64 * 0.5))
        .collect();
    {
        let store = open(dir.path());
        store.append_batch(&batch).unwrap();
        // A late reading, far back in time.
        store
            .append_batch(&[reading("d1", "temp", t - 5 * HOUR, 1.25)])
            .unwrap();
    }
    let store = open(dir.path());
    let mut again = vec![batch[3].clone(), batch[1999].clone(), batch[700].clone()];
    let mut late = reading("d1", "temp", t - 5 * HOUR, 1.25);
    late.received_at_ms += 999;
    again.push(late);
    let fresh = reading("d1", "temp", t + 700_000, 123.0); // same time, other value
    again.push(fresh);
    let seqs = store.apply(&again, &[]).unwrap();
    assert_eq!(seqs, vec![None, None, None, None, Some(2002)]);
    assert_eq!(store.series().unwrap()[0].count, 2002);
}

/// Retention removes whole log blocks and the sealed chunks whose readings are all gone; what
/// is left answers queries exactly, also after a restart.
#[test]
fn retention_drops_old_blocks_and_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let t = base_time();
    let policy = RetentionPolicy {
        max_age_ms: Some(24 * HOUR),
        disk_budget_bytes: None,
        step: 1000,
    };
    {
        let store = open_with(dir.path(), 1500);
        for b in 0..10 {
            let batch: Vec<_> = (0..1000)
                .map(|i| {
                    let k = b * 1000 + i;
                    let day = if b < 6 { t - 30 * HOUR } else { t };
                    reading(&format!("d{}", k % 4), "temp", day + k * 1000, k as f64)
                })
                .collect();
            store.append_batch(&batch).unwrap();
        }
        let mut deleted = 0;
        loop {
            let o = store.retain_step(t + HOUR, &policy).unwrap();
            deleted += o.readings_deleted;
            if !o.more {
                break;
            }
        }
        assert_eq!(deleted, 6000);
        store.flush().unwrap();
    }
    let store = open_with(dir.path(), 1500);
    let left = store.log_after(0, 100_000).unwrap();
    assert_eq!(left.len(), 4000);
    assert_eq!(left[0].seq, 6001);
    assert_eq!(store.stats().unwrap().readings, 4000);
    let old = store
        .readings(&ReadingQuery {
            filters: filter("sensors/+/temp"),
            from_ms: Some(t - 48 * HOUR),
            to_ms: Some(t - HOUR),
            after: 0,
            limit: 100_000,
        })
        .unwrap();
    assert!(
        old.readings.is_empty(),
        "{} old readings",
        old.readings.len()
    );
    let new = store
        .readings(&ReadingQuery {
            filters: filter("sensors/d2/temp"),
            from_ms: Some(t),
            to_ms: Some(t + 48 * HOUR),
            after: 0,
            limit: 100_000,
        })
        .unwrap();
    assert_eq!(new.readings.len(), 1000);
    assert_eq!(
        new.readings,
        left.iter()
            .filter(|r| r.reading.device_id == "d2")
            .cloned()
            .collect::<Vec<_>>()
    );
    // A deleted reading is new again.
    let seqs = store
        .apply(&[reading("d0", "temp", t - 30 * HOUR, 0.0)], &[])
        .unwrap();
    assert_eq!(seqs, vec![Some(10_001)]);
}

/// Late readings (a device sending what it buffered, interleaved with live ones) are found
/// to be new without reading sled, are stored once, and do not make sealed chunks small; their
/// redeliveries are still recognised, also after a restart. A copy of a reading stored more
/// than `dedupe_window` readings earlier is stored again (the window is the promise).
#[test]
fn late_readings_stay_cheap_and_are_deduplicated_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let t = base_time();
    // 600 readings, every 5th one up to 5 minutes late, in batches of 40.
    let batch: Vec<_> = (0..600i64)
        .map(|i| {
            let late = if i % 5 == 0 { (i * 37) % 300 } else { 0 };
            reading("d1", "temp", t + (i - late) * 1000, i as f64)
        })
        .collect();
    {
        let store = open_with(dir.path(), 1000);
        for b in batch.chunks(40) {
            let seqs = store.apply(b, &[]).unwrap();
            assert!(seqs.iter().all(Option::is_some));
        }
        store.flush().unwrap();
        let w = store.stats().unwrap().written;
        // One seal of the 520 rows open when it fell due: one chunk (within 15 minutes).
        assert_eq!((w.chunks, w.chunk_rows), (1, 520), "{w:?}");
        // A redelivery of a late reading in the same run.
        assert_eq!(store.apply(&[batch[5].clone()], &[]).unwrap(), vec![None]);
    }
    let store = open_with(dir.path(), 1000);
    let again = [batch[10].clone(), batch[595].clone(), batch[0].clone()];
    assert_eq!(store.apply(&again, &[]).unwrap(), vec![None, None, None]);
    assert_eq!(store.series().unwrap()[0].count, 600);
    // Beyond the window: 1,000 newer readings, then an old one comes again.
    let newer: Vec<_> = (0..1000i64)
        .map(|i| reading("d1", "temp", t + HOUR + i * 1000, 0.5))
        .collect();
    store.append_batch(&newer).unwrap();
    let seqs = store.apply(&[batch[10].clone()], &[]).unwrap();
    assert_eq!(seqs, vec![Some(1601)]);
}

/// Readings of one series spread over far-apart times (four publishers an hour apart, as when
/// a backfill runs alongside live data) are sealed in large chunks, one group per time, not
/// cut into a small chunk per time at every 512 readings; queries see all of them.
#[test]
fn scattered_readings_are_sealed_in_large_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let t = base_time() - 6 * HOUR;
    let store = open(dir.path());
    let readings: Vec<_> = (0..4200i64)
        .map(|i| reading("d1", "temp", t + (i % 4) * HOUR + (i / 4) * 500, 1.5))
        .collect();
    for b in readings.chunks(100) {
        store.apply(b, &[]).unwrap();
    }
    store.flush().unwrap();
    let w = store.stats().unwrap().written;
    // Sealed once, at 4,100 open readings: four groups of 1,025, each cut in two equal parts.
    assert_eq!((w.chunks, w.chunk_rows), (8, 4100), "{w:?}");
    let page = store
        .readings(&ReadingQuery {
            filters: filter("sensors/d1/temp"),
            from_ms: Some(t),
            to_ms: Some(t + 5 * HOUR),
            after: 0,
            limit: 10_000,
        })
        .unwrap();
    assert_eq!(page.readings.len(), 4200);
}
