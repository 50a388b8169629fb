//! The `edgewatch` binary under test, started as a child process.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::mpsc;
use std::time::Duration;

use crate::ports::free_port;
use crate::process::Process;

/// How long a hub may take to print its ready line (a debug build on a busy 2-core machine).
const READY: Duration = Duration::from_secs(60);

/// A running `edgewatch` (any role that prints `edgewatch ready NAME=ADDR ...`), killed on
/// drop.
#[derive(Debug)]
pub struct Hub {
    process: Process,
    /// The listeners of the ready line, by name (`mqtt`, `http`, ...).
    pub listeners: Vec<(String, SocketAddr)>,
}

impl Hub {
    /// Starts `PROGRAM run --config FILE EXTRA...` and waits for its ready line.
    pub fn start(program: impl AsRef<OsStr>, config: &Path, extra: &[&str]) -> Hub {
        let mut args = vec![
            "run".to_owned(),
            "--config".to_owned(),
            config.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Hub::spawn(program, &args)
    }

    /// Starts `PROGRAM run --config FILE` with these environment variables added, and waits
    /// for its ready line.
    pub fn start_with_env(program: impl AsRef<OsStr>, config: &Path, env: &[(&str, &str)]) -> Hub {
        let mut command = Command::new(program);
        command.arg("run").arg("--config").arg(config);
        command.envs(env.iter().copied());
        Hub::spawn_command(command)
    }

    /// Starts `PROGRAM ARGS...` and waits for its ready line.
    pub fn spawn<S: AsRef<OsStr>>(program: impl AsRef<OsStr>, args: &[S]) -> Hub {
        let mut command = Command::new(program);
        command.args(args);
        Hub::spawn_command(command)
    }

    /// Starts `command` (logging at info) and waits for its ready line.
    fn spawn_command(mut command: Command) -> Hub {
        let mut process = Process::spawn(command.env("EDGEWATCH_LOG", "info"));
        let ready = process.line_starting_with("edgewatch ready", READY);
        let listeners = ready
            .split_whitespace()
            .skip(2)
            .filter_map(|kv| kv.split_once('='))
            // Addresses only (`upstream=mqtt://...` is not one).
            .filter_map(|(k, v)| v.parse().ok().map(|a| (k.to_owned(), a)))
            .collect();
        Hub { process, listeners }
    }

    /// The hub's process id (to send it signals).
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// `http://ADDR` of the hub's HTTP server.
    pub fn http(&self) -> String {
        format!("http://{}", self.addr("http"))
    }

    /// The address of the listener `name` (panics if the ready line had none).
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(k, _)| k == name)
            .unwrap_or_else(|| panic!("no {name} listener in {:?}", self.listeners))
            .1
    }

    /// Log lines (standard error), as they come.
    pub fn stderr(&self) -> &mpsc::Receiver<String> {
        self.process.stderr()
    }

    /// Waits (at most `limit`) for a log line that contains `needle`, and returns it; earlier
    /// lines are skipped. Blocks the thread (in a multi-thread tokio test, wrap it in
    /// `tokio::task::block_in_place`).
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr().recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(_) => panic!("no log line with {needle:?} within {limit:?}"),
            }
        }
    }

    /// Sends SIGTERM and waits (at most 20 s) for the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        self.process.terminate(Duration::from_secs(20))
    }

    /// `kill -9`, and reap.
    pub fn kill9(mut self) {
        self.process.kill();
    }
}

/// A config with every listener on loopback port 0: the hub picks free ports itself (read
/// them from its ready line), which avoids racing other tests for a port chosen in advance.
pub fn loopback_config(dir: &Path, extra: &str) -> PathBuf {
    write_config(dir, [0, 0, 0], extra)
}

/// A config with fixed free ports, for tests that restart the hub and need the same address.
pub fn loopback_config_fixed_ports(dir: &Path, extra: &str) -> PathBuf {
    write_config(dir, [free_port(), free_port(), free_port()], extra)
}

fn write_config(dir: &Path, ports: [u16; 3], extra: &str) -> PathBuf {
    let [mqtt, mqtt5, ws] = ports;
    let text = format!(
        "[broker.mqtt]\nenabled = true\nlisten = \"127.0.0.1:{mqtt}\"\n\
         [broker.mqtt5]\nenabled = true\nlisten = \"127.0.0.1:{mqtt5}\"\n\
         [broker.websocket]\nenabled = true\nlisten = \"127.0.0.1:{ws}\"\n\
         [bridge]\ndata_dir = {:?}\nhttp_listen = \"127.0.0.1:0\"\n{extra}",
        dir.join("data").display().to_string()
    );
    let path = dir.join("edgewatch.toml");
    std::fs::write(&path, text).expect("write the test config");
    path
}
