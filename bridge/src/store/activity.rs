//! What presence needs from the catalogue: when each device was last heard from.
//!
//! [`Store::device_activity`] copies, under the store's lock, one entry per series: a shared
//! reference to its names and the receive time of its latest reading. No string is copied and
//! `out` is reused between calls, so a sweep over N series costs N reference-count increments
//! under the lock and no allocation once `out` has grown to size.

use std::sync::Arc;

use super::chunks::Names;
use super::{Store, StoreError};

/// One series' latest receive time, with its device.
#[derive(Debug, Clone)]
pub struct SeriesActivity {
    names: Arc<Names>,
    /// Receive time of the series' latest reading, epoch ms.
    pub last_recv_ms: i64,
}

impl SeriesActivity {
    /// The device of the series.
    pub fn device_id(&self) -> &str {
        &self.names.device_id
    }
}

impl Store {
    /// Replaces the contents of `out` with every series that has a reading: its device and
    /// the receive time of its latest reading (any order).
    pub fn device_activity(&self, out: &mut Vec<SeriesActivity>) -> Result<(), StoreError> {
        out.clear();
        let st = self.state()?;
        out.extend(st.series.values().filter_map(|s| {
            s.last.map(|last| SeriesActivity {
                names: s.names.clone(),
                last_recv_ms: last.recv,
            })
        }));
        Ok(())
    }
}
