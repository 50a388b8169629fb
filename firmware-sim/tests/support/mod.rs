//! Shared helpers of the integration tests: free ports and a Mosquitto child process.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

pub use edgewatch_testkit::free_port;

/// Whether Mosquitto is installed; prints why a test is skipped if not.
pub fn mosquitto_available(test: &str) -> bool {
    let found = Path::new(MOSQUITTO).exists();
    if !found {
        eprintln!("skipping {test}: {MOSQUITTO} is not installed (apt-get install mosquitto)");
    }
    found
}

/// A Mosquitto broker on a fixed port with a persistence directory; killed on drop.
pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    pub fn start(port: u16) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Mosquitto {
            port,
            dir,
            child: None,
        };
        m.spawn();
        m
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    fn spawn(&mut self) {
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence true\n\
             persistence_location {dir}/\nmax_queued_messages 1000000\nmax_connections -1\n",
            port = self.port,
            dir = self.dir.path().display()
        );
        std::fs::write(self.config_path(), conf).unwrap();
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(self.config_path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_listening(self.port);
    }

    /// SIGTERM (Mosquitto saves its persistent sessions) and wait for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port with the same persistence directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn start_again(&mut self) {
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits (at most 5 s) until something accepts TCP connections on `port`.
pub fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on port {port} after 5 s");
}
