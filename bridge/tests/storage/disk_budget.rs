//! The disk budget on a real sled store in a temp dir: it removes the oldest readings until
//! the live bytes fit, never the newest, never what arrives later, counts what it removed and
//! says when it cannot get under the budget.
//!
//! `EDGEWATCH_BUDGET_READINGS` sets how many readings the two big runs write (default
//! 400,000, the run; about 3 s each in a debug build).

use std::time::{Duration, Instant};

use edgewatch_bridge::store::{
    BudgetStatus, RetentionPolicy, Store, StoreOptions, KEEP_SHARE_PERCENT,
};
use edgewatch_bridge::writer::{spawn_writer, WriterConfig};
use edgewatch_protocol::Reading;
use edgewatch_testkit::{base_time, wait_until, HOUR};
use tokio_util::sync::CancellationToken;

const MB: u64 = 1024 * 1024;
const DEVICES: u64 = 100;

fn readings_to_write() -> u64 {
    std::env::var("EDGEWATCH_BUDGET_READINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400_000)
}

/// Reading `i` of a simulated fleet: 100 devices sending temperature and humidity with two
/// decimals of noise over a wide range, about 20,000 readings a second in all. About 15 live
/// bytes a reading once stored (log block and sealed chunk), so 400,000 of them are more than
/// an 8 MiB budget's live share.
fn sim_reading(t0: i64, i: u64) -> Reading {
    let noise = (i.wrapping_mul(2_654_435_761) >> 7) % 10_000;
    let (metric, base, unit) = if (i / DEVICES).is_multiple_of(2) {
        ("temperature", -20.0, "C")
    } else {
        ("humidity", 0.0, "%")
    };
    let ts = t0 + (i / 20) as i64;
    Reading {
        device_id: format!("sim-{}", i % DEVICES),
        metric: metric.to_owned(),
        value: base + noise as f64 / 100.0,
        unit: Some(unit.to_owned()),
        timestamp_ms: ts,
        received_at_ms: ts + (i % 7) as i64,
    }
}

fn batch(t0: i64, from: u64, n: u64) -> Vec<Reading> {
    (from..from + n).map(|i| sim_reading(t0, i)).collect()
}

fn budget(bytes: u64) -> RetentionPolicy {
    RetentionPolicy {
        max_age_ms: None,
        disk_budget_bytes: Some(bytes),
        step: 5000,
    }
}

/// Runs retention steps until one settles (bounded); returns the readings removed.
fn settle(store: &Store, policy: &RetentionPolicy, now: i64) -> u64 {
    let mut removed = 0;
    for _ in 0..10_000 {
        let o = store.retain_step(now, policy).expect("retention step");
        removed += o.readings_deleted;
        if !o.more {
            return removed;
        }
    }
    panic!("retention did not settle in 10,000 steps");
}

/// Seqs present in the log, in order.
fn seqs_in_log(store: &Store) -> Vec<u64> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store.log_after(after, 50_000).expect("log");
        let Some(last) = page.last() else {
            return out;
        };
        after = last.seq;
        out.extend(page.iter().map(|r| r.seq));
    }
}

fn show(what: &str, s: &BudgetStatus) {
    let live = s.live.unwrap_or_default();
    eprintln!(
        "{what}: live {} B (log {}, chunks {}, rollups {}), limit {:?}, files {} B, kept {}, \
         removed {} (budget) {} (age), floor_reached {}, exceeded {}",
        live.total(),
        live.log,
        live.chunks,
        live.rollups,
        s.live_limit_bytes,
        s.file_bytes,
        s.kept_readings,
        s.removed_for_budget,
        s.removed_for_age,
        s.floor_reached,
        s.exceeded
    );
}

/// After a budget run that wrote seqs `1..=head` (readings `sim_reading(t0, seq - 1)`): what
/// is left is the newest readings without a hole, at least the newest `newest` of them with
/// their values, every reading removed is counted, and live bytes are within their share.
fn check_left(store: &Store, t0: i64, head: u64, newest: u64) -> Vec<u64> {
    let (s, seqs) = quiet_snapshot(store);
    assert_eq!(store.last_seq().unwrap(), head);
    let first = seqs.first().copied().unwrap_or(head + 1);
    assert_eq!(
        seqs,
        (first..=head).collect::<Vec<_>>(),
        "the newest are left"
    );
    let missing = head - seqs.len() as u64;
    assert_eq!(
        s.removed_for_budget, missing,
        "every reading removed is counted, and only those"
    );
    assert_eq!(s.removed_for_age, 0);
    let counted = series_count(store);
    assert_eq!(
        counted,
        seqs.len() as u64,
        "series counts agree with the log"
    );
    let tail = store.log_after(head - newest, newest as usize).unwrap();
    assert_eq!(
        tail.len() as u64,
        newest,
        "the newest {newest} are all there"
    );
    for r in &tail {
        assert_eq!(r.reading, sim_reading(t0, r.seq - 1));
    }
    let live = s.live.expect("live bytes counted");
    let limit = s.live_limit_bytes.expect("a budget");
    assert!(live.total() <= limit, "live bytes fit: {live:?} > {limit}");
    assert!(!s.floor_reached);
    seqs
}

fn series_count(store: &Store) -> u64 {
    store.series().unwrap().iter().map(|s| s.count).sum()
}

/// The budget status and the log's seqs at one quiet moment: a writer's retention step may
/// run between reading the one and the other (it may remove more when later readings push
/// live bytes over the limit), so both are read again until no step ran in between (the
/// status's removal count, the log and the series counts unchanged across the reads).
fn quiet_snapshot(store: &Store) -> (BudgetStatus, Vec<u64>) {
    for _ in 0..100 {
        let before = store.budget_status().unwrap();
        let seqs = seqs_in_log(store);
        let counted = series_count(store);
        let after = store.budget_status().unwrap();
        if before.removed_for_budget == after.removed_for_budget
            && seqs == seqs_in_log(store)
            && counted == series_count(store)
        {
            return (after, seqs);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("retention never paused for long enough to read the store");
}

/// The run on the store API: budget 8 MiB, 400,000 readings in batches of 1,000 with a
/// retention step every 10 batches, as the writer interleaves them. The oldest readings go,
/// exactly as many as counted; the newest are all there; readings written afterwards stay;
/// repeated steps remove nothing more than the new readings' worth.
#[test]
fn budget_removes_the_oldest_and_keeps_the_newest() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let t0 = base_time();
    let policy = budget(8 * MB);
    let total = readings_to_write();
    let mut written = 0;
    while written < total {
        let n = 1000.min(total - written);
        store.apply(&batch(t0, written, n), &[]).unwrap();
        written += n;
        if written % 10_000 == 0 {
            store.retain_step(t0, &policy).unwrap();
        }
    }
    store.flush().unwrap();
    settle(&store, &policy, t0);
    let s = store.budget_status().unwrap();
    show("after the run", &s);
    let left = check_left(&store, t0, total, 50_000.min(total));
    if total >= 400_000 {
        assert!(
            s.removed_for_budget > 0,
            "400,000 readings exceed the budget"
        );
    }
    assert!(left.len() as u64 >= s.kept_readings);

    // Steps with nothing new remove nothing.
    for _ in 0..20 {
        assert_eq!(settle(&store, &policy, t0), 0);
    }
    // Later readings stay, and so do the newest before them (no runaway).
    store.apply(&batch(t0, total, 5000), &[]).unwrap();
    let removed = settle(&store, &policy, t0);
    assert!(
        removed <= 10_000,
        "removed {removed} for 5,000 new readings"
    );
    let after = check_left(&store, t0, total + 5000, 50_000.min(total) + 5000);
    show("after 5,000 more", &store.budget_status().unwrap());
    eprintln!(
        "{} readings written, {} left, {} removed, in {:?}",
        total + 5000,
        after.len(),
        store.budget_status().unwrap().removed_for_budget,
        started.elapsed()
    );
}

/// The same through the real writer, with the retention interval it runs steps at: while
/// readings flow and after they stop, the newest stay and what was removed is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_keeps_the_budget_while_readings_flow() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let stop = CancellationToken::new();
    let cfg = WriterConfig {
        retention: Some(budget(8 * MB)),
        retention_interval: Duration::from_millis(100),
        ..WriterConfig::default()
    };
    let writer = spawn_writer(store.clone(), cfg, stop.clone());
    let t0 = base_time();
    let total = readings_to_write();
    for i in 0..total {
        writer.handle.write(sim_reading(t0, i), None).await.unwrap();
    }
    let settled = |store: &Store| {
        let s = store.budget_status().unwrap();
        store.last_seq().unwrap() == total
            && s.live
                .is_some_and(|l| l.total() <= s.live_limit_bytes.unwrap_or(0))
    };
    wait_until(Duration::from_secs(30), "the budget to settle", || {
        settled(&store)
    })
    .await;
    // Let a few more steps run (every 100 ms): nothing more goes. A window for what must not
    // happen; the writer exposes no count of its steps to wait for instead.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let left = check_left(&store, t0, total, 50_000.min(total));
    show("writer, after the run", &store.budget_status().unwrap());

    // Readings arriving later are stored and stay.
    for i in total..total + 2000 {
        writer.handle.write(sim_reading(t0, i), None).await.unwrap();
    }
    wait_until(Duration::from_secs(10), "the later readings", || {
        store.last_seq().unwrap() == total + 2000
    })
    .await;
    // Again a few steps, for what must not go.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = check_left(&store, t0, total + 2000, 50_000.min(total) + 2000);
    assert!(after.len() + 5000 >= left.len(), "no runaway");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), writer.task)
        .await
        .expect("writer stopped")
        .unwrap()
        .unwrap();
}

/// A budget too small for what it may not remove: rollup pages (only age removes them) of
/// many series over two days take more than the live share. It removes readings down to the
/// floor (the newest readings worth a quarter of the budget stay), says so, and removes
/// nothing more on later steps; a larger budget is met again.
#[test]
fn budget_stops_at_the_floor_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        dedupe_window: 5000,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), &opts).unwrap();
    let t0 = base_time() - 48 * HOUR;
    // 200 series, one reading every 5 minutes each, over 48 hours.
    let sparse = |i: u64| {
        let mut r = sim_reading(t0, i);
        r.device_id = format!("sparse-{}", i % 200);
        r.timestamp_ms = t0 + (i / 200) as i64 * 300_000;
        r.received_at_ms = r.timestamp_ms + 3;
        r
    };
    let total = 200 * 576;
    let small = 2 * MB;
    let policy = budget(small);
    for b in 0..total / 1000 + 1 {
        let to = ((b + 1) * 1000).min(total);
        let readings: Vec<_> = (b * 1000..to).map(sparse).collect();
        store.apply(&readings, &[]).unwrap();
    }
    settle(&store, &policy, t0);
    let s = store.budget_status().unwrap();
    show("small budget", &s);
    assert!(s.floor_reached && s.exceeded, "{s:?}");
    let live = s.live.unwrap();
    assert!(live.total() > s.live_limit_bytes.unwrap());
    let seqs = seqs_in_log(&store);
    assert_eq!(*seqs.last().unwrap(), total);
    assert_eq!(seqs, (seqs[0]..=total).collect::<Vec<_>>());
    assert!(seqs.len() as u64 >= s.kept_readings && s.kept_readings > 0);
    // The kept readings take about a quarter of the budget (whole blocks go, so a little more).
    let per_reading = (live.log + live.chunks) as f64 / seqs.len() as f64;
    let share = per_reading * s.kept_readings as f64;
    let quarter = (small * KEEP_SHARE_PERCENT / 100) as f64;
    assert!(
        (quarter * 0.9..=quarter * 1.1).contains(&share),
        "{share} vs {quarter}"
    );
    assert_eq!(s.removed_for_budget, total - seqs.len() as u64);
    for _ in 0..10 {
        assert_eq!(settle(&store, &policy, t0), 0);
    }
    assert_eq!(seqs_in_log(&store), seqs);
    // A budget the store fits is met again.
    settle(&store, &budget(256 * MB), t0);
    let s = store.budget_status().unwrap();
    assert!(!s.floor_reached && !s.exceeded, "{s:?}");
}

/// Live bytes kept up to date from commits and deletions (seals rewriting rollup pages,
/// removal for age and for the budget) equal a fresh count of the same store.
#[test]
fn live_bytes_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = base_time() - 48 * HOUR;
    let budget_bytes = MB;
    let mixed = RetentionPolicy {
        max_age_ms: Some(40 * HOUR),
        disk_budget_bytes: Some(budget_bytes),
        step: 3000,
    };
    let opts = StoreOptions {
        dedupe_window: 20_000,
        ..StoreOptions::default()
    };
    let tracked = {
        let store = Store::open(dir.path(), &opts).unwrap();
        // Count first, then write: old readings (for age), then a lot (for the budget).
        settle(&store, &mixed, t0);
        let now = t0 + 48 * HOUR;
        for b in 0..300u64 {
            // Readings 0..100,000 are 48 h old, the rest spread over the last hours.
            let from = b * 1000;
            let mut readings = batch(t0, from, 1000);
            if from >= 100_000 {
                for r in &mut readings {
                    r.timestamp_ms += 44 * HOUR + (from as i64 % 7) * 60_000;
                    r.received_at_ms = r.timestamp_ms + 3;
                }
            }
            store.apply(&readings, &[]).unwrap();
            if b % 10 == 9 {
                store.retain_step(now, &mixed).unwrap();
            }
        }
        settle(&store, &mixed, now);
        let s = store.budget_status().unwrap();
        show("mixed", &s);
        assert!(s.removed_for_age > 0 && s.removed_for_budget > 0, "{s:?}");
        let seqs = seqs_in_log(&store);
        assert_eq!(
            s.removed_for_age + s.removed_for_budget,
            300_000 - seqs.len() as u64
        );
        s.live.unwrap()
    };
    let store = Store::open(dir.path(), &opts).unwrap();
    let huge = budget(u64::MAX / 2);
    settle(&store, &huge, t0);
    let fresh = store.budget_status().unwrap().live.unwrap();
    assert_eq!(tracked, fresh);
}
