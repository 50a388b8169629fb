//! Raw MQTT devices for the connection-count scenarios: a CONNECT and PUBLISH packets
//! written by hand on plain sockets, so thousands of them cost the harness almost nothing.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::load::{now_us, rfc3339_ms, unix_ms_now, LoadStats};
use crate::publishers::{connect_packet, put_remaining_length, put_str};

/// An MQTT QoS 0 PUBLISH of `payload` to `topic`, written into `out` (cleared first).
fn publish_packet(out: &mut Vec<u8>, topic: &str, payload: &[u8]) {
    out.clear();
    out.push(0x30);
    put_remaining_length(out, 2 + topic.len() + payload.len());
    put_str(out, topic.as_bytes());
    out.extend_from_slice(payload);
}

/// One device of a [`DeviceFleet`]: its connection and topic.
struct Device {
    tcp: tokio::net::TcpStream,
    topic: String,
    id: String,
}

/// Devices that each publish QoS 0 readings to `sensors/d{k}/temperature` at a fixed rate,
/// spread evenly in time: reading `i` of the whole fleet is due at `i / (devices * rate)` s
/// and comes from device `i % devices`. One task drives every connection over raw MQTT 3.1.1
/// (a CONNECT, then PUBLISH packets), so the generator costs little CPU next to the hub on a
/// small machine, and each reading's `value` (the send time, µs) is taken right before its
/// packet is written to the socket. Stopped when dropped.
#[derive(Debug)]
pub(crate) struct DeviceFleet {
    pub(crate) stats: Arc<LoadStats>,
    task: JoinHandle<()>,
}

impl Drop for DeviceFleet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DeviceFleet {
    /// Connects `devices` devices (each CONNACKed); publishing starts when [`Self::run`] is
    /// called.
    pub(crate) async fn connect(
        broker: SocketAddr,
        devices: usize,
        tag: &str,
    ) -> Result<Vec<DeviceConn>> {
        let conns: Vec<Result<DeviceConn>> = futures::stream::iter(0..devices)
            .map(|k| async move {
                let mut tcp = tokio::net::TcpStream::connect(broker).await?;
                tcp.set_nodelay(true)?;
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                tcp.write_all(&connect_packet(&format!("bench-{tag}-d{k}")))
                    .await?;
                let mut connack = [0u8; 4];
                tokio::time::timeout(Duration::from_secs(30), tcp.read_exact(&mut connack))
                    .await
                    .context("no CONNACK within 30 s")??;
                if connack[0] != 0x20 || connack[3] != 0 {
                    bail!("device d{k}: CONNACK refused: {connack:?}");
                }
                Ok(DeviceConn(Device {
                    tcp,
                    topic: format!("sensors/d{k}/temperature"),
                    id: format!("d{k}"),
                }))
            })
            .buffered(64)
            .collect()
            .await;
        conns.into_iter().collect()
    }

    /// Starts publishing `per_device_rate` readings/s from each of `devices` for at most
    /// `duration`.
    pub(crate) fn run(devices: Vec<DeviceConn>, per_device_rate: f64, duration: Duration) -> Self {
        let stats = Arc::new(LoadStats::default());
        let stats2 = stats.clone();
        let task = tokio::spawn(async move {
            drive_devices(devices, per_device_rate, duration, &stats2).await;
        });
        Self { stats, task }
    }
}

/// A connected device, ready to publish.
#[derive(Debug)]
pub(crate) struct DeviceConn(Device);

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("topic", &self.topic)
            .finish()
    }
}

async fn drive_devices(
    mut devices: Vec<DeviceConn>,
    per_device_rate: f64,
    duration: Duration,
    stats: &LoadStats,
) {
    use tokio::io::AsyncWriteExt;
    if devices.is_empty() {
        return;
    }
    let n_devices = devices.len() as u64;
    let total_rate = per_device_rate * n_devices as f64;
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut next_ping = started + Duration::from_secs(30);
    let mut sent: u64 = 0;
    let mut packet = Vec::with_capacity(256);
    let mut payload = String::with_capacity(160);
    let mut ts_cache = (i64::MIN, String::new());
    loop {
        ticker.tick().await;
        let elapsed = started.elapsed();
        if elapsed >= duration {
            return;
        }
        if Instant::now() >= next_ping {
            next_ping += Duration::from_secs(30);
            for d in &mut devices {
                if d.0.tcp.write_all(&[0xC0, 0x00]).await.is_err() {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let due = (elapsed.as_secs_f64() * total_rate) as u64;
        while sent < due {
            let d = &mut devices[(sent % n_devices) as usize].0;
            let ms = unix_ms_now();
            if ts_cache.0 != ms {
                ts_cache = (ms, rfc3339_ms(ms));
            }
            payload.clear();
            use std::fmt::Write as _;
            let _ = write!(
                payload,
                r#"{{"deviceId":"{}","value":{},"unit":"C","timestamp":"{}"}}"#,
                d.id,
                now_us(),
                ts_cache.1
            );
            publish_packet(&mut packet, &d.topic, payload.as_bytes());
            // Small packets almost always fit the socket buffer: no await in the common case.
            let written = match d.tcp.try_write(&packet) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(_) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    sent += 1;
                    continue;
                }
            };
            if written < packet.len() && d.tcp.write_all(&packet[written..]).await.is_err() {
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            sent += 1;
            stats.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_remaining_length() {
        let enc = |n| {
            let mut v = Vec::new();
            put_remaining_length(&mut v, n);
            v
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x80, 0x01]);
        assert_eq!(enc(16_383), [0xff, 0x7f]);
        assert_eq!(enc(16_384), [0x80, 0x80, 0x01]);
        let mut p = Vec::new();
        publish_packet(&mut p, "a/b", b"12");
        assert_eq!(p, [0x30, 7, 0, 3, b'a', b'/', b'b', b'1', b'2']);
    }
}
