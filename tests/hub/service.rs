//! The systemd unit `deploy/edgewatch.service`: `systemd-analyze verify` accepts it, the
//! binary accepts its `ExecStart` and environment, and the hub so started keeps its store in
//! `EDGEWATCH_DATA_DIR` and stops on SIGTERM well within `TimeoutStopSec`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{bin, loopback_config, Hub};

const UNIT: &str = include_str!("../../deploy/edgewatch.service");
/// Where the unit expects the binary (README.md, "Install as a service").
const INSTALLED: &str = "/usr/local/bin/edgewatch";

/// The value of `Key=` in the unit (the first one).
fn key(name: &str) -> String {
    UNIT.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in the unit"))
        .trim()
        .to_owned()
}

/// Every `Environment=NAME=VALUE` of the unit.
fn environment() -> Vec<(String, String)> {
    UNIT.lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Seconds of a systemd time span written as `N` or `Ns`.
fn seconds(span: &str) -> u64 {
    span.trim_end_matches('s')
        .parse()
        .unwrap_or_else(|_| panic!("time span {span:?}"))
}

/// Runs `command` to its end, killed after `limit`.
fn run_bounded(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// `systemd-analyze verify` finds nothing to say about the unit: no unknown key, no bad
/// value. Skipped (with the reason printed) where systemd-analyze is not installed.
#[test]
fn the_systemd_unit_verifies() {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(analyze) = analyze else {
        eprintln!("skipped: systemd-analyze is not installed on this machine");
        return;
    };
    // Substituted: ExecStart's /usr/local/bin/edgewatch by the binary under test, because
    // verify checks that the command exists and is executable, and the test machine has no
    // installed edgewatch. Nothing else is changed: verify does not require User=edgewatch to
    // exist. The copy keeps the unit's name (edgewatch.service).
    assert!(UNIT.contains(&format!("ExecStart={INSTALLED} ")), "{UNIT}");
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("edgewatch.service");
    std::fs::write(&unit, UNIT.replace(INSTALLED, bin())).unwrap();
    let out = run_bounded(
        Command::new(analyze).arg("verify").arg(&unit),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Unknown keys and bad values are only warnings ("..., ignoring."): none at all.
    assert!(stderr.trim().is_empty(), "{stderr}");
}

/// The unit's settings that the binary must accept: `ExecStart` is `edgewatch run --config
/// FILE` with flags `edgewatch run --help` lists, every `Environment=` variable is one `run`
/// reads, and the stop timeout is above the hub's own 10 s stop bound.
#[test]
fn the_units_command_line_and_environment_are_the_binarys() {
    let exec = key("ExecStart");
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(words[..3], [INSTALLED, "run", "--config"], "{exec}");
    assert_eq!(words[3..], ["/etc/edgewatch/edgewatch.toml"], "{exec}");
    let out = run_bounded(
        Command::new(bin()).args(["run", "--help"]),
        Duration::from_secs(30),
    );
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in words.iter().filter(|w| w.starts_with("--")) {
        assert!(help.contains(flag), "{flag} in: {help}");
    }
    for (name, _) in environment() {
        assert!(help.contains(&format!("env: {name}=")), "{name} in: {help}");
    }
    assert_eq!(key("Type"), "simple", "the hub does not speak sd_notify");
    assert_eq!(key("KillSignal"), "SIGTERM");
    assert!(seconds(&key("TimeoutStopSec")) > 10);
}

/// Started as the unit starts it (`run --config FILE` with the unit's environment, the data
/// directory a temporary one in place of /var/lib/edgewatch), the hub keeps its store in
/// EDGEWATCH_DATA_DIR rather than the config's `bridge.data_dir`, and SIGTERM stops it with
/// status 0 within TimeoutStopSec.
#[test]
fn the_unit_runs_the_hub_with_its_data_dir_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), "");
    let state = dir.path().join("state");
    let env: Vec<(String, String)> = environment()
        .into_iter()
        .map(|(k, v)| {
            if k == "EDGEWATCH_DATA_DIR" {
                assert_eq!(v, key("ReadWritePaths"));
                assert_eq!(v, format!("/var/lib/{}", key("StateDirectory")));
                (k, state.display().to_string())
            } else {
                (k, v)
            }
        })
        .collect();
    assert!(env.iter().any(|(k, _)| k == "EDGEWATCH_DATA_DIR"));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let hub = Hub::start_with_env(bin(), &config, &env);
    assert!(
        state.join("db").is_file(),
        "the store is in EDGEWATCH_DATA_DIR"
    );
    assert!(!dir.path().join("data").exists(), "not in bridge.data_dir");
    let stop = Instant::now();
    assert!(hub.terminate().success());
    assert!(stop.elapsed() < Duration::from_secs(seconds(&key("TimeoutStopSec"))));
}
