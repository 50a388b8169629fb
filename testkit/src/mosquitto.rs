//! A real Mosquitto broker (Debian package `mosquitto`; scripts/test installs it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::ports::free_port;
use crate::process::{wait_listening, Process};

/// Where Debian installs the broker (not on a normal user's PATH).
const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A Mosquitto broker on a free loopback port, with persistent sessions in its own temporary
/// directory, killed on drop. It can be stopped and started again on the same port with the
/// same persistence directory, as a broker restart.
#[derive(Debug)]
pub struct Mosquitto {
    /// Its loopback port.
    pub port: u16,
    dir: tempfile::TempDir,
    process: Option<Process>,
}

impl Mosquitto {
    /// Whether Mosquitto is installed; prints why `test` is skipped if not.
    pub fn installed(test: &str) -> bool {
        let found = Path::new(MOSQUITTO).exists();
        if !found {
            eprintln!("skipping {test}: {MOSQUITTO} is not installed (apt-get install mosquitto)");
        }
        found
    }

    /// Starts a broker on a free port and waits until it accepts connections. Panics if
    /// Mosquitto is not installed.
    pub fn start() -> Mosquitto {
        Mosquitto::start_on(free_port())
    }

    /// Starts a broker on `port` (see [`Mosquitto::start`]).
    pub fn start_on(port: u16) -> Mosquitto {
        assert!(
            Path::new(MOSQUITTO).exists(),
            "{MOSQUITTO} is not installed (scripts/test installs it)"
        );
        let mut m = Mosquitto {
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            process: None,
        };
        m.start_again();
        m
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Its loopback address.
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Starts it (again, after [`Mosquitto::stop`]) and waits until it accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.process.is_none(), "mosquitto is already running");
        // `user root`: started as root, Mosquitto would otherwise switch to its own user,
        // which cannot write the persistence directory. Queues and in-flight windows are
        // wide, so no test's burst is dropped by the broker.
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence true\n\
             persistence_location {dir}/\nmax_queued_messages 1000000\n\
             max_inflight_messages 1000\nmax_connections -1\nlog_type error\n\
             log_type subscribe\nlog_dest stderr\n",
            port = self.port,
            dir = self.dir.path().display()
        );
        std::fs::write(self.config_path(), conf).expect("write mosquitto.conf");
        self.process = Some(Process::spawn(
            Command::new(MOSQUITTO).arg("-c").arg(self.config_path()),
        ));
        wait_listening(self.port, Duration::from_secs(10));
    }

    /// SIGTERM (Mosquitto saves its persistent sessions) and wait for the exit (SIGKILL after
    /// 5 s).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(Duration::from_secs(5));
        }
    }

    /// Waits (at most `limit`) until the client `client_id` subscribes to `filter` (Mosquitto
    /// logs each subscription), so that what is published next reaches it. Blocks the thread.
    pub fn wait_subscribed(&self, client_id: &str, filter: &str, limit: Duration) {
        let p = self.process.as_ref().expect("mosquitto is running");
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            // `TIME: CLIENT_ID QOS FILTER`
            match p.stderr().recv_timeout(left) {
                Ok(line) => {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    if words.get(1) == Some(&client_id) && words.last() == Some(&filter) {
                        return;
                    }
                }
                Err(_) => panic!("{client_id} did not subscribe to {filter} within {limit:?}"),
            }
        }
    }

    /// SIGKILL: it saves nothing (a crash or a power cut).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Stops it and starts it again on the same port with the same persistence directory.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }
}
