//! Each device's recent status changes, for its page (`GET /v1/devices/{deviceId}/history`):
//! in memory since the hub started, the last [`PER_DEVICE`] per device, for at most
//! [`MAX_DEVICES`] devices (past that, devices not kept yet are not kept).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::StatusChange;

/// Changes kept per device.
pub const PER_DEVICE: usize = 50;
/// Devices whose changes are kept at most.
pub const MAX_DEVICES: usize = 10_000;

/// The recent status changes per device.
#[derive(Debug, Default)]
pub struct StatusHistory {
    by_device: Mutex<HashMap<String, VecDeque<StatusChange>>>,
}

impl StatusHistory {
    /// Keeps `change`.
    pub fn record(&self, change: &StatusChange) {
        let Ok(mut map) = self.by_device.lock() else {
            return;
        };
        if !map.contains_key(&change.device_id) && map.len() >= MAX_DEVICES {
            return;
        }
        let list = map.entry(change.device_id.clone()).or_default();
        if list.len() == PER_DEVICE {
            list.pop_front();
        }
        list.push_back(change.clone());
    }

    /// `device`'s changes, newest first.
    pub fn of(&self, device: &str) -> Vec<StatusChange> {
        let Ok(map) = self.by_device.lock() else {
            return Vec::new();
        };
        map.get(device)
            .map(|l| l.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::{DeviceStatus, StatusSource};

    #[test]
    fn the_last_changes_are_kept_newest_first() {
        let h = StatusHistory::default();
        for i in 0..(PER_DEVICE as i64 + 5) {
            h.record(&StatusChange {
                device_id: "d1".into(),
                status: if i % 2 == 0 {
                    DeviceStatus::Online
                } else {
                    DeviceStatus::Offline
                },
                source: StatusSource::Status,
                at_ms: i,
                last_seen_ms: None,
            });
        }
        let got = h.of("d1");
        assert_eq!(got.len(), PER_DEVICE);
        assert_eq!(
            (got[0].at_ms, got[PER_DEVICE - 1].at_ms),
            (PER_DEVICE as i64 + 4, 5)
        );
        assert!(h.of("d2").is_empty());
    }
}
