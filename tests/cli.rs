//! The command line: config checking, startup errors, orderly stop, password hashing.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::{bin, loopback_config, Hub};

#[test]
fn check_config_names_a_misspelled_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[broker.limits]\nmax_conections = 5\n").unwrap();
    let out = Command::new(bin())
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("broker.limits.max_conections"), "{stderr}");
    assert!(stderr.contains("bad.toml"), "{stderr}");
}

#[test]
fn check_config_accepts_the_shipped_file() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/config/edgewatch.toml");
    let out = Command::new(bin())
        .arg("check-config")
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn run_with_a_bad_config_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[broker.mqtt]\nenabled = true\nlisten = \"not-an-address\"\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .arg("run")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("broker.mqtt.listen"), "{stderr}");
}

#[test]
fn port_in_use_fails_startup_naming_the_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = loopback_config(dir.path(), "");
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("--mqtt-listen")
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("port {port}")), "{stderr}");
}

#[test]
fn sigterm_stops_with_status_0() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(&loopback_config(dir.path(), ""), &[]);
    let status = hub.terminate();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn passwd_prints_a_verifiable_users_entry() {
    let mut child = Command::new(bin())
        .args(["passwd", "sensor-1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    // The printed entry is valid config that check-config accepts.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    std::fs::write(&file, &text).unwrap();
    let check = Command::new(bin())
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(text.contains("username = \"sensor-1\""));
    assert!(text.contains("$argon2id$"));
}
