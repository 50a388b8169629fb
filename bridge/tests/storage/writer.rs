//! The writer on a real store: live publication does not wait for the disk, acknowledgements
//! do, and an orderly stop flushes and releases the seq reservation.

use std::time::Duration;

use edgewatch_bridge::store::{Store, StoreOptions};
use edgewatch_bridge::writer::{spawn_writer, WriterConfig};
use edgewatch_bridge::Outcome;
use edgewatch_testkit::{base_time, reading};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_published_before_their_flush_and_acknowledged_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let stop = CancellationToken::new();
    let cfg = WriterConfig {
        // Long enough that the second flush cannot have started when the test looks.
        flush_interval: Duration::from_secs(30),
        ..WriterConfig::default()
    };
    let writer = spawn_writer(store.clone(), cfg, stop.clone());
    let mut live = writer.committed.subscribe();
    let t = base_time();
    let within = Duration::from_secs(10);

    // The first batch after open: its seqs are beyond the durable reservation, so it is
    // published once its flush (which starts at once) has completed, with its ack.
    let (done1, ack1) = oneshot::channel();
    writer
        .handle
        .write(reading("d1", "temp", t, 1.0), Some(done1))
        .await
        .unwrap();
    let first = tokio::time::timeout(within, live.recv())
        .await
        .expect("first batch published")
        .unwrap();
    assert_eq!(first[0].seq, 1);
    let ack1 = tokio::time::timeout(within, ack1)
        .await
        .expect("first ack")
        .unwrap();
    assert_eq!(ack1, Outcome::Stored(1));

    // The next batch is inside the reservation: published at once, acknowledged only by the
    // next flush, which is 30 s away.
    let (done2, mut ack2) = oneshot::channel();
    writer
        .handle
        .write(reading("d1", "temp", t + 1000, 2.0), Some(done2))
        .await
        .unwrap();
    let second = tokio::time::timeout(within, live.recv())
        .await
        .expect("second batch published before its flush")
        .unwrap();
    assert_eq!(second[0].seq, 2);
    assert!(
        matches!(ack2.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
        "acknowledged before a flush"
    );
    // Visible to queries already.
    assert_eq!(store.last_seq().unwrap(), 2);

    // An orderly stop flushes at once, acknowledges, and releases the reservation.
    stop.cancel();
    let ack2 = tokio::time::timeout(within, ack2)
        .await
        .expect("second ack")
        .unwrap();
    assert_eq!(ack2, Outcome::Stored(2));
    tokio::time::timeout(within, writer.task)
        .await
        .expect("writer stopped")
        .unwrap()
        .unwrap();
    assert_eq!(store.seq_reserved().unwrap(), 2);
}

#[test]
fn the_seq_reservation_runs_ahead_of_the_head_until_an_orderly_close() {
    let dir = tempfile::tempdir().unwrap();
    let t = base_time();
    let opts = StoreOptions::default();
    let reserve = opts.dedupe_window as u64 / edgewatch_bridge::store::SEQ_RESERVE_FRACTION;
    {
        let store = Store::open(dir.path(), &opts).unwrap();
        assert_eq!(store.seq_reserved().unwrap(), 0);
        let batch: Vec<_> = (0..100)
            .map(|i| reading("d1", "temp", t + i * 1000, i as f64))
            .collect();
        store.append_batch(&batch).unwrap();
        assert_eq!(store.last_seq().unwrap(), 100);
        assert_eq!(store.seq_reserved().unwrap(), 100 + reserve);
        // Renewed only when the head comes within half of it.
        store
            .append_batch(&[reading("d1", "temp", t + 200_000, 1.0)])
            .unwrap();
        assert_eq!(store.seq_reserved().unwrap(), 100 + reserve);
    }
    // Dropping the last handle released it: no seq skipped.
    let store = Store::open(dir.path(), &opts).unwrap();
    assert_eq!(store.last_seq().unwrap(), 101);
    let stored = store
        .append_batch(&[reading("d2", "temp", t, 1.0)])
        .unwrap();
    assert_eq!(stored[0].0, 102);
}

/// The readings of one mapped publish go into one batch whatever `batch_max` says: consecutive
/// seqs, published together, one acknowledgement with the last one's outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readings_of_one_publish_are_stored_in_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let stop = CancellationToken::new();
    let cfg = WriterConfig {
        batch_max: 1,
        ..WriterConfig::default()
    };
    let writer = spawn_writer(store.clone(), cfg, stop.clone());
    let mut live = writer.committed.subscribe();
    let t = base_time();
    let within = Duration::from_secs(10);
    writer
        .handle
        .write(reading("d0", "temp", t, 0.0), None)
        .await
        .unwrap();
    let group: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|m| reading("plug-1", m, t, 1.0))
        .collect();
    let (done, ack) = oneshot::channel();
    let origin = edgewatch_bridge::store::Origin::DEVICE_TIME;
    writer
        .handle
        .write_group(group, origin, Some(done))
        .await
        .unwrap();
    let first = tokio::time::timeout(within, live.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.len(), 1);
    let batch = tokio::time::timeout(within, live.recv())
        .await
        .unwrap()
        .unwrap();
    let seqs: Vec<u64> = batch.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [2, 3, 4], "one batch despite batch_max = 1");
    let ack = tokio::time::timeout(within, ack).await.unwrap().unwrap();
    assert_eq!(ack, Outcome::Stored(4));
    stop.cancel();
    let _ = tokio::time::timeout(within, writer.task).await;
}
