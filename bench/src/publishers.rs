//! The load generator: MQTT 3.1.1 publishers on raw sockets, so the harness is not what limits
//! either broker (issue #20: the rumqttc publishers this replaced spent 0.74 cores per 10,000
//! readings/s against Mosquitto, which made its QoS 1 relay figure the generator's limit).
//!
//! Each publisher is one connection with two tasks: the writer builds PUBLISH packets into one
//! buffer and writes up to [`BATCH`] of them per `write_all`; at QoS 1 it keeps at most
//! [`INFLIGHT`] unacknowledged (rumqttc's default window, which the old generator used), and
//! the reader counts the PUBACKs and gives the window back. At QoS 0 the socket's own
//! backpressure is the only limit, as for any MQTT client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rumqttc::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::load::{now_us, rfc3339_ms, unix_ms_now, LoadSpec, LoadStats, Shape};

/// Unacknowledged QoS 1 publishes per connection.
pub(crate) const INFLIGHT: usize = 100;
/// Publishes per write at most.
const BATCH: u64 = 64;

/// The publishers of one load; dropping it stops them.
#[derive(Debug)]
pub(crate) struct Fleet {
    pub(crate) stats: Arc<LoadStats>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Fleet {
    /// Connects the publishers of `spec` and starts them.
    pub(crate) async fn start(broker: SocketAddr, spec: &LoadSpec, tag: &str) -> Result<Self> {
        let stats = Arc::new(LoadStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = start(broker, spec, tag, &stats, &stop).await?;
        Ok(Self { stats, stop, tasks })
    }

    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Connects `spec.publishers` publishers (each waits for its CONNACK) and starts them; their
/// tasks are returned so the fleet can stop them.
async fn start(
    broker: SocketAddr,
    spec: &LoadSpec,
    tag: &str,
    stats: &Arc<LoadStats>,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    let per_pub_max = spec.max_messages / spec.publishers as u64;
    let per_pub_rate = spec.rate.map(|r| r / spec.publishers as f64);
    for k in 0..spec.publishers {
        let (read, write) = connect(broker, &format!("bench-{tag}-{k}"))
            .await
            .with_context(|| format!("publisher {k} connecting to {broker}"))?
            .into_split();
        let window = Arc::new(Semaphore::new(INFLIGHT));
        tasks.push(tokio::spawn(read_acks(read, window.clone(), stats.clone())));
        let publisher = Publisher {
            k,
            spec: spec.clone(),
            max: per_pub_max,
            rate: per_pub_rate,
            stats: stats.clone(),
            stop: stop.clone(),
            window,
        };
        tasks.push(tokio::spawn(publisher.run(write)));
    }
    Ok(tasks)
}

/// A TCP connection with an accepted MQTT 3.1.1 session (clean, keep-alive 60 s).
async fn connect(broker: SocketAddr, client_id: &str) -> Result<TcpStream> {
    let mut tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(broker))
        .await
        .context("TCP connect timed out")??;
    tcp.set_nodelay(true)?;
    tcp.write_all(&connect_packet(client_id)).await?;
    let mut connack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(30), tcp.read_exact(&mut connack))
        .await
        .context("no CONNACK within 30 s")??;
    if connack[0] != 0x20 || connack[3] != 0 {
        bail!("connection refused: CONNACK {connack:?}");
    }
    Ok(tcp)
}

/// Counts PUBACKs and returns their slots to the window; ends with the connection.
async fn read_acks(mut read: OwnedReadHalf, window: Arc<Semaphore>, stats: Arc<LoadStats>) {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        match read.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                window.close();
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        let mut at = 0;
        // Everything a broker sends a publisher here is a 4-byte ack or PINGRESP (2 bytes).
        while let Some(&first) = buf.get(at) {
            let Some(&len) = buf.get(at + 1) else { break };
            let end = at + 2 + usize::from(len);
            if len & 0x80 != 0 || end > buf.len() {
                break;
            }
            if first == 0x40 {
                stats.acked.fetch_add(1, Ordering::Relaxed);
                window.add_permits(1);
            }
            at = end;
        }
        buf.drain(..at);
    }
}

struct Publisher {
    k: usize,
    spec: LoadSpec,
    max: u64,
    rate: Option<f64>,
    stats: Arc<LoadStats>,
    stop: Arc<AtomicBool>,
    window: Arc<Semaphore>,
}

impl Publisher {
    async fn run(self, mut write: tokio::net::tcp::OwnedWriteHalf) {
        let started = Instant::now();
        let deadline = started + self.spec.duration;
        let (topic, device) = match self.spec.shape {
            Shape::Live => (
                format!("sensors/b{}/temperature", self.k),
                format!("b{}", self.k),
            ),
            Shape::History { series, .. } => {
                let s = self.k % series;
                (format!("sensors/h{s}/temperature"), format!("h{s}"))
            }
        };
        let mut ticker = tokio::time::interval(Duration::from_millis(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let (mut sent, mut pkid) = (0u64, 0u16);
        let mut ts_cache = (i64::MIN, String::new());
        // Live values are send times (µs), kept strictly increasing: two readings built in the
        // same microsecond would otherwise be equal (series, timestamp, value), which the hub
        // rightly stores once as a resend, and a benchmark would count as lost.
        let mut last_us = 0u64;
        let mut out = Vec::with_capacity(64 * 1024);
        while sent < self.max && !self.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let due = match self.rate {
                Some(r) => {
                    ticker.tick().await;
                    let target = (started.elapsed().as_secs_f64() * r) as u64;
                    target.saturating_sub(sent).min(self.max - sent)
                }
                None => BATCH.min(self.max - sent),
            };
            out.clear();
            let mut batch = 0;
            while batch < due {
                if self.spec.qos != QoS::AtMostOnce && !self.take_slot(batch == 0).await {
                    if batch == 0 {
                        return; // the connection ended
                    }
                    break; // window full: write what is built, then wait
                }
                pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
                last_us = now_us().max(last_us + 1);
                let payload = self.payload(&device, sent, last_us, &mut ts_cache);
                put_publish(&mut out, &topic, self.spec.qos, pkid, payload.as_bytes());
                batch += 1;
                sent += 1;
            }
            if write.write_all(&out).await.is_err() {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.stats.sent.fetch_add(batch, Ordering::Relaxed);
        }
    }

    /// A slot in the QoS 1 window: waits for one when `wait`, else only takes a free one.
    /// `false` when none (or the connection ended).
    async fn take_slot(&self, wait: bool) -> bool {
        let permit = if wait {
            self.window.acquire().await.ok()
        } else {
            self.window.try_acquire().ok()
        };
        permit.map(|p| p.forget()).is_some()
    }

    fn payload(
        &self,
        device: &str,
        sent: u64,
        value_us: u64,
        ts_cache: &mut (i64, String),
    ) -> String {
        match self.spec.shape {
            Shape::Live => {
                let ms = unix_ms_now();
                if ts_cache.0 != ms {
                    *ts_cache = (ms, rfc3339_ms(ms));
                }
                format!(
                    r#"{{"deviceId":"{device}","value":{value_us},"unit":"C","timestamp":"{}"}}"#,
                    ts_cache.1
                )
            }
            Shape::History { series, t0_ms } => {
                let per_series = (self.spec.publishers / series).max(1) as u64;
                let slot = sent * per_series + (self.k / series) as u64;
                let value = (slot % 400) as f64 / 10.0;
                format!(
                    r#"{{"deviceId":"{device}","value":{value},"unit":"C","timestamp":"{}"}}"#,
                    rfc3339_ms(t0_ms + slot as i64 * 1000)
                )
            }
        }
    }
}

/// An MQTT 3.1.1 CONNECT with a clean session and a 60 s keep-alive.
pub(crate) fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + client_id.len());
    put_str(&mut body, b"MQTT");
    body.push(4); // protocol level 3.1.1
    body.push(0x02); // clean session
    body.extend_from_slice(&60u16.to_be_bytes());
    put_str(&mut body, client_id.as_bytes());
    let mut out = vec![0x10];
    put_remaining_length(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// A PUBLISH (QoS 0 or 1, never DUP or retained) appended to `out`.
fn put_publish(out: &mut Vec<u8>, topic: &str, qos: QoS, pkid: u16, payload: &[u8]) {
    let qos1 = qos != QoS::AtMostOnce;
    out.push(if qos1 { 0x32 } else { 0x30 });
    put_remaining_length(
        out,
        2 + topic.len() + if qos1 { 2 } else { 0 } + payload.len(),
    );
    put_str(out, topic.as_bytes());
    if qos1 {
        out.extend_from_slice(&pkid.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// The MQTT remaining-length varint of `n`, appended to `out`.
pub(crate) fn put_remaining_length(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

/// A length-prefixed MQTT string.
pub(crate) fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_qos1_publish_is_laid_out_as_mqtt_says() {
        let mut out = Vec::new();
        put_publish(&mut out, "a/b", QoS::AtLeastOnce, 7, b"xy");
        assert_eq!(out, [0x32, 9, 0, 3, b'a', b'/', b'b', 0, 7, b'x', b'y']);
        out.clear();
        put_publish(&mut out, "a", QoS::AtMostOnce, 7, &[0; 200]);
        assert_eq!(&out[..5], &[0x30, 203, 1, 0, 1]);
    }
}
