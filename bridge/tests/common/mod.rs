//! Shared test helpers: readings, a real Mosquitto on a free port, raw HTTP, bounded waits.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use edgewatch_protocol::Reading;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const HOUR: i64 = 3_600_000;

pub fn reading(device: &str, metric: &str, ts: i64, value: f64) -> Reading {
    Reading {
        device_id: device.to_owned(),
        metric: metric.to_owned(),
        value,
        unit: Some("C".to_owned()),
        timestamp_ms: ts,
        received_at_ms: ts + 5,
    }
}

/// An hour boundary a few hours in the past.
pub fn base_time() -> i64 {
    let now = edgewatch_protocol::timefmt::now_ms();
    now - now.rem_euclid(HOUR) - 3 * HOUR
}

// Not every test binary that includes this module uses both.
#[allow(unused_imports)]
pub use edgewatch_testkit::{free_port, wait_until};

/// A Mosquitto broker on a free loopback port, killed on drop.
pub struct Mosquitto {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub async fn start() -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 1000000\nmax_inflight_messages 1000\nlog_type error\n"
            ),
        )
        .expect("write conf");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (apt-get install mosquitto)");
        let m = Mosquitto {
            port,
            child,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        m
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes every `(topic, payload)` at QoS1 and returns once the broker acked all of them.
pub async fn publish_all(port: u16, client_id: &str, msgs: Vec<(String, Vec<u8>)>) {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let n = msgs.len();
    let acks = tokio::spawn(async move {
        let mut acked = 0usize;
        while acked < n {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher connection failed: {e}"),
            }
        }
        // keep polling briefly so the disconnect goes out cleanly
        eventloop
    });
    for (topic, payload) in msgs {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("queue publish");
    }
    let ev = tokio::time::timeout(Duration::from_secs(120), acks)
        .await
        .expect("broker acked in time")
        .expect("publisher task");
    drop(ev);
}

/// `GET path` over a real socket; returns (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect http");
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("http answered in time")
}

pub fn bridge_config(dir: &Path) -> edgewatch_bridge::BridgeConfig {
    edgewatch_bridge::BridgeConfig {
        data_dir: dir.to_path_buf(),
        flush_interval_ms: 2,
        retention_days: 0,
        ..Default::default()
    }
}

/// Logs to the test output; `RUST_LOG` picks the level (default warn).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}
