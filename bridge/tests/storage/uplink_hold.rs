//! Retention and the uplinks' hold: readings an uplink has not forwarded outlive the age
//! limit, up to the uplink's own bound; beyond it they go and are counted per uplink.

use edgewatch_bridge::store::{RetentionPolicy, Store, StoreOptions};
use edgewatch_testkit::{base_time, reading, HOUR};

fn retain_all(store: &Store, now: i64, policy: &RetentionPolicy) {
    for _ in 0..50 {
        if !store.retain_step(now, policy).unwrap().more {
            return;
        }
    }
    panic!("retention did not settle");
}

#[test]
fn unforwarded_readings_outlive_the_age_limit_until_forwarded_or_too_old() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let t = base_time();
    // 3,000 readings two days old, then 100 new ones.
    let old: Vec<_> = (0..3000)
        .map(|i| reading("d1", "temp", t - 48 * HOUR + i * 1000, 1.0))
        .collect();
    store.append_batch(&old).unwrap();
    let new: Vec<_> = (0..100)
        .map(|i| reading("d1", "temp", t + i * 1000, 2.0))
        .collect();
    store.append_batch(&new).unwrap();
    let policy = RetentionPolicy {
        max_age_ms: Some(24 * HOUR),
        disk_budget_bytes: None,
        step: 1000,
    };
    // The uplink forwarded up to seq 1000 and holds the rest for at most 3 days.
    store.hold_for_uplink("central", 1000, 72 * HOUR).unwrap();
    retain_all(&store, t + HOUR, &policy);
    let left = store.log_after(0, 10_000).unwrap();
    assert_eq!(
        left.first().map(|r| r.seq),
        Some(1001),
        "forwarded blocks go, the rest stay"
    );
    assert_eq!(left.len(), 2100);
    assert_eq!(store.uplink_dropped("central"), 0);

    // The uplink moves on: what it forwarded can go.
    store.save_uplink_cursor("central", 2000).unwrap();
    retain_all(&store, t + HOUR, &policy);
    assert_eq!(store.log_after(0, 1).unwrap()[0].seq, 2001);
    assert_eq!(store.uplink_dropped("central"), 0);

    // Four days later, past the hold's bound of three: the 1,100 readings still not
    // forwarded go, counted.
    retain_all(&store, t + 96 * HOUR, &policy);
    assert!(store.log_after(0, 10).unwrap().is_empty());
    assert_eq!(store.uplink_dropped("central"), 1100);
}
