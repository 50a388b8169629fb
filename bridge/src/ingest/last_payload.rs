//! The last raw payload each device sent (its first [`PREVIEW`] bytes), for the device page
//! (`GET /v1/devices/{deviceId}/payload`). In memory only, for at most [`MAX_DEVICES`]
//! devices: past that, devices not kept yet are not kept (counted in `not_kept`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Bytes of a payload kept.
pub const PREVIEW: usize = 512;
/// Devices whose last payload is kept at most.
pub const MAX_DEVICES: usize = 10_000;

/// One device's last payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastPayload {
    /// Its topic.
    pub topic: String,
    /// Its first [`PREVIEW`] bytes.
    pub bytes: Vec<u8>,
    /// Its whole length.
    pub len: usize,
    /// When the hub received it, epoch ms.
    pub received_at_ms: i64,
}

/// The last payload per device.
#[derive(Debug, Default)]
pub struct LastPayloads {
    by_device: Mutex<HashMap<String, LastPayload>>,
    /// Devices not kept because [`MAX_DEVICES`] were.
    pub not_kept: AtomicU64,
}

impl LastPayloads {
    /// Keeps `payload` (on `topic`) as `device`'s last.
    pub fn record(&self, device: &str, topic: &str, payload: &[u8], received_at_ms: i64) {
        let Ok(mut map) = self.by_device.lock() else {
            return;
        };
        let kept = &payload[..payload.len().min(PREVIEW)];
        if let Some(last) = map.get_mut(device) {
            last.topic.clear();
            last.topic.push_str(topic);
            last.bytes.clear();
            last.bytes.extend_from_slice(kept);
            last.len = payload.len();
            last.received_at_ms = received_at_ms;
            return;
        }
        if map.len() >= MAX_DEVICES {
            self.not_kept.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let last = LastPayload {
            topic: topic.to_owned(),
            bytes: kept.to_vec(),
            len: payload.len(),
            received_at_ms,
        };
        map.insert(device.to_owned(), last);
    }

    /// `device`'s last payload, if one is kept.
    pub fn get(&self, device: &str) -> Option<LastPayload> {
        self.by_device.lock().ok()?.get(device).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_payload_is_kept_cut_and_bounded() {
        let p = LastPayloads::default();
        p.record("d1", "sensors/d1/t", b"21.5", 1);
        p.record("d1", "tele/d1/SENSOR", &[b'x'; 2000], 2);
        let last = p.get("d1").unwrap();
        assert_eq!(
            (last.topic.as_str(), last.bytes.len(), last.len),
            ("tele/d1/SENSOR", PREVIEW, 2000)
        );
        for i in 0..MAX_DEVICES {
            p.record(&format!("x{i}"), "t", b"1", 3);
        }
        assert!(p.get(&format!("x{}", MAX_DEVICES - 2)).is_some());
        assert!(
            p.get(&format!("x{}", MAX_DEVICES - 1)).is_none(),
            "past the bound"
        );
        assert_eq!(p.not_kept.load(Ordering::Relaxed), 1);
    }
}
