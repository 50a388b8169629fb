//! Gathering readings at low rates: ingest and the writer each wait [`GATHER`] once their
//! input is empty, so that one wake-up (and one hand-off to a blocking thread for the commit)
//! carries several readings. At 10,000 readings/s from 1,000 devices every publish used to
//! wake ingest, then the writer, on its own (issue #20, CPU per reading: 0.90 -> 0.63 cores).

use std::time::Duration;

use tokio::sync::mpsc;

use super::WriteCmd;

/// How long ingest and the writer let their input gather once it is empty. It adds at most
/// twice this much to a reading's latency.
pub const GATHER: Duration = Duration::from_millis(1);

/// A batch that did not fill its room: lets more commands gather for [`GATHER`] and takes
/// them.
pub(super) async fn gather(
    rx: &mut mpsc::Receiver<WriteCmd>,
    buf: &mut Vec<WriteCmd>,
    room: usize,
) {
    tokio::time::sleep(GATHER).await;
    while buf.len() < room {
        match rx.try_recv() {
            Ok(cmd) => buf.push(cmd),
            Err(_) => break,
        }
    }
}
