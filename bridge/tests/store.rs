//! The store on a real sled database in a temp dir.

mod common;

use common::{base_time, reading, HOUR};
use edgewatch_bridge::store::{
    PresenceUpdate, ReadingQuery, RetentionPolicy, RollupQuery, RollupSource, Store, StoreOptions,
};
use edgewatch_protocol::TopicFilter;

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
    // After a restart the recent-key memory is gone: the index catches it.
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
