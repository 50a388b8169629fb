//! Running the real `edgewatch` binary in end-to-end tests.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_edgewatch")
}

pub use edgewatch_testkit::free_port;

/// A running `edgewatch run`, killed on drop.
pub struct Hub {
    pub child: Child,
    pub listeners: Vec<(String, SocketAddr)>,
    pub stderr: mpsc::Receiver<String>,
}

impl Hub {
    /// Starts `edgewatch run --config FILE` and waits for its ready line.
    pub fn start(config: &Path, extra: &[&str]) -> Hub {
        let mut args = vec![
            "run".to_owned(),
            "--config".to_owned(),
            config.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Hub::spawn(&args)
    }

    /// Starts `edgewatch ARGS...` and waits for its ready line.
    pub fn spawn(args: &[String]) -> Hub {
        let mut child = Command::new(bin())
            .args(args)
            .env("EDGEWATCH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn edgewatch");
        let stdout = child.stdout.take().unwrap();
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = line_tx.send(line);
            }
        });
        let stderr = child.stderr.take().unwrap();
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        let ready = loop {
            match line_rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.starts_with("edgewatch ready") => break line,
                Ok(_) => continue,
                Err(_) => {
                    let _ = child.kill();
                    let log: Vec<String> = err_rx.try_iter().collect();
                    panic!(
                        "edgewatch did not become ready; stderr:\n{}",
                        log.join("\n")
                    );
                }
            }
        };
        let listeners = ready
            .split_whitespace()
            .skip(2)
            .filter_map(|kv| kv.split_once('='))
            // Addresses only (`upstream=mqtt://...` is not one).
            .filter_map(|(k, v)| v.parse().ok().map(|a| (k.to_owned(), a)))
            .collect();
        Hub {
            child,
            listeners,
            stderr: err_rx,
        }
    }

    /// `http://ADDR` of the hub's HTTP server.
    pub fn http(&self) -> String {
        format!("http://{}", self.addr("http"))
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(k, _)| k == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .1
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "edgewatch did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config with every listener on loopback port 0: the hub picks free ports itself (read
/// them from its ready line), which avoids racing other tests for a port chosen in advance.
pub fn loopback_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    write_config(dir, [0, 0, 0], extra)
}

/// A config with fixed free ports, for tests that restart the hub and need the same address.
pub fn loopback_config_fixed_ports(dir: &Path, extra: &str) -> std::path::PathBuf {
    write_config(dir, [free_port(), free_port(), free_port()], extra)
}

fn write_config(dir: &Path, ports: [u16; 3], extra: &str) -> std::path::PathBuf {
    let [mqtt, mqtt5, ws] = ports;
    let text = format!(
        "[broker.mqtt]\nenabled = true\nlisten = \"127.0.0.1:{mqtt}\"\n\
         [broker.mqtt5]\nenabled = true\nlisten = \"127.0.0.1:{mqtt5}\"\n\
         [broker.websocket]\nenabled = true\nlisten = \"127.0.0.1:{ws}\"\n\
         [bridge]\ndata_dir = {:?}\nhttp_listen = \"127.0.0.1:0\"\n{extra}",
        dir.join("data").display().to_string()
    );
    let path = dir.join("edgewatch.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Whether a command exists on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// GET `url` as JSON.
pub async fn get_json(url: &str) -> serde_json::Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// Total readings stored, from `GET /v1/series`.
pub async fn stored(http: &str) -> u64 {
    let v = get_json(&format!("{http}/v1/series")).await;
    v["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["count"].as_u64().unwrap())
        .sum()
}

/// The `value`s of `GET /v1/readings?filter=FILTER`, in seq order.
pub async fn stored_values(http: &str, filter: &str) -> Vec<f64> {
    let v = get_json(&format!("{http}/v1/readings?filter={filter}&limit=10000")).await;
    v["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_f64().unwrap())
        .collect()
}
