//! The processes under test: edgewatch and Mosquitto, each started on free loopback ports and
//! killed when its guard is dropped; plus what the harness reads about a process from `/proc`.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Which system a figure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Edgewatch,
    Mosquitto,
}

impl Target {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Edgewatch => "edgewatch",
            Self::Mosquitto => "mosquitto",
        }
    }
}

/// Settings the harness changes in edgewatch's configuration.
#[derive(Debug, Clone, Default)]
pub(crate) struct EdgewatchTuning {
    /// `[live] max_connections`.
    pub(crate) max_live_connections: Option<u32>,
    /// TOML appended to the config (tables after every other section).
    pub(crate) extra: Option<String>,
}

/// A running server process; killed (SIGKILL) when dropped unless stopped before.
#[derive(Debug)]
pub(crate) struct Server {
    child: Option<Child>,
    pub(crate) pid: u32,
    pub(crate) mqtt: SocketAddr,
    pub(crate) http: Option<SocketAddr>,
    /// Time from spawn to ready.
    pub(crate) ready_after: Duration,
    _stdout_drain: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if let Some(task) = self._stdout_drain.take() {
            task.abort();
        }
    }
}

impl Server {
    /// Orderly stop: SIGTERM, then SIGKILL after `grace`.
    pub(crate) async fn stop(mut self, grace: Duration) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(self.pid.to_string())
                .status();
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(status) => {
                    status?;
                }
                Err(_) => {
                    child.start_kill()?;
                    child.wait().await?;
                }
            }
        }
        Ok(())
    }

    pub(crate) fn rss_kib(&self) -> u64 {
        rss_kib(self.pid).unwrap_or(0)
    }

    pub(crate) fn cpu_secs(&self) -> f64 {
        cpu_secs(self.pid).unwrap_or(0.0)
    }

    pub(crate) fn http_base(&self) -> String {
        format!(
            "http://{}",
            self.http.expect("edgewatch has an HTTP address")
        )
    }
}

/// Writes edgewatch's config for a data dir and starts `edgewatch run`; waits for the ready line.
/// The listeners use port 0: edgewatch picks free ports and hands them to its broker, and
/// between the two another socket can take one (seen once in many restarts). A start that
/// failed with "Address already in use" is tried again, up to three times.
pub(crate) async fn start_edgewatch(
    bin: &Path,
    work: &Path,
    data_dir: &Path,
    tuning: &EdgewatchTuning,
) -> Result<Server> {
    let mut attempt = 1;
    loop {
        match start_edgewatch_once(bin, work, data_dir, tuning).await {
            Err(e) if attempt < 3 && format!("{e:#}").contains("Address already in use") => {
                println!("    edgewatch start failed on a taken port; trying again");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The config of an edgewatch under test: MQTT 3.1.1 only, anonymous, ports chosen by the OS,
/// logging at `warn`.
fn edgewatch_config(data_dir: &Path, tuning: &EdgewatchTuning) -> String {
    let max_conn = tuning.max_live_connections.unwrap_or(20_000);
    format!(
        r#"[broker]
allow_anonymous = true
[broker.mqtt]
enabled = true
listen = "127.0.0.1:0"
[broker.mqtt5]
enabled = false
listen = "127.0.0.1:0"
[broker.websocket]
enabled = false
listen = "127.0.0.1:0"
[broker.limits]
max_connections = 20000
max_connections_per_ip = 20000
[bridge]
data_dir = "{data}"
http_listen = "127.0.0.1:0"
# The fan-out scenario's 10,000 watchers all come from 127.0.0.1, opened at once.
http_max_connections = 30000
http_max_connections_per_ip = 30000
http_rate_per_sec = 0
[live]
max_connections = {max_conn}
[log]
level = "warn"
{extra}"#,
        data = data_dir.display(),
        extra = tuning.extra.as_deref().unwrap_or_default(),
    )
}

async fn start_edgewatch_once(
    bin: &Path,
    work: &Path,
    data_dir: &Path,
    tuning: &EdgewatchTuning,
) -> Result<Server> {
    std::fs::create_dir_all(work)?;
    let config = work.join("edgewatch.toml");
    let text = edgewatch_config(data_dir, tuning);
    std::fs::write(&config, text)?;
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(work.join("edgewatch.stderr.log"))?;
    let started = Instant::now();
    let mut child = Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("edgewatch pid")?;
    let stdout = child.stdout.take().context("edgewatch stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(600), async {
        while let Some(line) = lines.next_line().await? {
            if line.starts_with("edgewatch ready") {
                return Ok::<_, anyhow::Error>(line);
            }
        }
        let log = std::fs::read_to_string(work.join("edgewatch.stderr.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        bail!(
            "edgewatch exited before it was ready (see {}); stderr ends: {}",
            work.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )
    })
    .await
    .context("edgewatch not ready within 600 s")??;
    let ready_after = started.elapsed();
    let field = |name: &str| -> Option<SocketAddr> {
        ready
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse().ok())
    };
    let mqtt = field("mqtt=").context("no mqtt= in the ready line")?;
    let http = field("http=").context("no http= in the ready line")?;
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Server {
        child: Some(child),
        pid,
        mqtt,
        http: Some(http),
        ready_after,
        _stdout_drain: Some(drain),
    })
}

/// A free loopback port (bound and released; a small race is accepted on a bench box).
pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts Mosquitto with a generated config on a free loopback port; waits until it accepts.
pub(crate) async fn start_mosquitto(bin: &Path, work: &Path) -> Result<Server> {
    start_mosquitto_on(
        bin,
        work,
        free_port()?,
        "persistence false\nmax_inflight_messages 100\n",
    )
    .await
}

/// Starts Mosquitto on `port` with `extra` lines in its config (persistence, if turned on,
/// in `work`); waits until it accepts.
pub(crate) async fn start_mosquitto_on(
    bin: &Path,
    work: &Path,
    port: u16,
    extra: &str,
) -> Result<Server> {
    std::fs::create_dir_all(work)?;
    let config = work.join("mosquitto.conf");
    // `user root`: started as root, Mosquitto would switch to its own user, which cannot write
    // the persistence directory (ignored when not started as root).
    std::fs::write(
        &config,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence_location {dir}/\n\
             max_connections -1\nlog_dest stderr\nlog_type error\nlog_type warning\n{extra}",
            dir = work.display()
        ),
    )?;
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(work.join("mosquitto.stderr.log"))?;
    let started = Instant::now();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("mosquitto pid")?;
    let mqtt: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut server = Server {
        child: Some(child),
        pid,
        mqtt,
        http: None,
        ready_after: Duration::ZERO,
        _stdout_drain: None,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(mqtt).await.is_ok() {
            break;
        }
        if let Some(child) = server.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!("mosquitto exited with {status} (see {})", work.display());
            }
        }
        if Instant::now() > deadline {
            bail!("mosquitto did not accept connections on {mqtt} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.ready_after = started.elapsed();
    Ok(server)
}

/// Finds Mosquitto: the given path, `/usr/sbin/mosquitto`, or `mosquitto` on PATH.
pub(crate) fn find_mosquitto(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return p.exists().then(|| p.to_path_buf());
    }
    let default = PathBuf::from("/usr/sbin/mosquitto");
    if default.exists() {
        return Some(default);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("mosquitto"))
            .find(|p| p.exists())
    })
}

/// Resident set size of a process, KiB (`VmRSS` in `/proc/PID/status`).
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// The highest resident set size of a process so far, KiB (`VmHWM`).
pub(crate) fn hwm_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU time of a process so far, seconds (`/proc/PID/stat`, 100 ticks/s).
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    cpu_secs_of(&format!("/proc/{pid}/stat"))
}

/// User + system CPU time of this harness process so far, seconds.
pub(crate) fn own_cpu_secs() -> f64 {
    cpu_secs_of("/proc/self/stat").unwrap_or(0.0)
}

fn cpu_secs_of(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command: state(0) ... utime(11) stime(12).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Allocated bytes (blocks) and apparent bytes of every file under `dir`.
pub(crate) fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut allocated = 0;
    let mut apparent = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                allocated += meta.blocks() * 512;
                apparent += meta.len();
            }
        }
    }
    (allocated, apparent)
}
