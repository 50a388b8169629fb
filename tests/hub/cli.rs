//! The command line: config checking, startup errors, orderly stop, password hashing.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::{bin, loopback_config, start_hub};

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

/// `edgewatch check-config F | head -1`, `edgewatch openapi | head`: the reader is gone before
/// the output is written. No panic, exit status 0 (before: a panic from `println!`, 101).
#[test]
fn printing_commands_end_quietly_when_the_reader_is_gone() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/config/edgewatch.toml");
    for args in [vec!["check-config", file], vec!["openapi"]] {
        let mut child = Command::new(bin())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Closing the read end before the first write: every write gets EPIPE.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
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

/// A taken port stops startup with an error naming the port and the key, flag and variable
/// that move that listener.
#[test]
fn port_in_use_fails_startup_naming_the_port_and_what_moves_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = loopback_config(dir.path(), "");
    for (flag, hint) in [
        (
            "--mqtt-listen",
            "broker.mqtt.listen (--mqtt-listen, EDGEWATCH_MQTT_LISTEN)",
        ),
        (
            "--ws-listen",
            "broker.websocket.listen (--ws-listen, EDGEWATCH_WS_LISTEN)",
        ),
    ] {
        let out = Command::new(bin())
            .args(["run", "--config"])
            .arg(&cfg)
            .arg(flag)
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag}");
        assert!(stderr.contains(&format!("port {port}")), "{stderr}");
        assert!(stderr.contains(hint), "{stderr}");
    }
}

#[test]
fn sigterm_stops_with_status_0() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&loopback_config(dir.path(), ""), &[]);
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
    // The printed entry pasted at the end of the shipped config file, as it is, is valid
    // config that check-config accepts (the shipped file had `users = []`: "duplicate key").
    let shipped = include_str!("../../config/edgewatch.toml");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edgewatch.toml");
    std::fs::write(&file, format!("{shipped}\n{text}")).unwrap();
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
    let effective = String::from_utf8_lossy(&check.stdout);
    assert!(effective.contains("username = \"sensor-1\""), "{effective}");
}

/// With `[log] json = true`, a reject is one JSON line whose current span is the device's:
/// `device_id` from the topic (`sensors/{deviceId}/{metric}`) or, on the shared channel, from
/// the payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_device_of_a_reject() {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    use serde_json::Value;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&loopback_config(dir.path(), "[log]\njson = true\n"), &[]);
    let mut opts = MqttOptions::new("json-log-test", "127.0.0.1", hub.addr("mqtt").port());
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    // Different reasons: each reason's first reject is logged (later ones within 10 s are
    // counted as suppressed).
    for (topic, payload) in [
        ("sensors/d7/humidity", "wet"),
        ("sensors/temperature", r#"{"deviceId":"d8"}"#),
    ] {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    let mut want = vec![("d7", "unknown_format"), ("d8", "missing_value")];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while !want.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = hub.stderr().recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "no reject line for {want:?}; lines seen:\n{}",
                seen.join("\n")
            )
        });
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            panic!("a log line that is not JSON: {line}");
        };
        seen.push(line.clone());
        let Some(reason) = v["fields"]["reason"].as_str() else {
            continue;
        };
        assert_eq!(v["level"], "WARN", "{line}");
        assert_eq!(v["span"]["name"], "device", "{line}");
        let device = v["span"]["device_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{line}"));
        assert!(
            v["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["device_id"] == device)),
            "{line}"
        );
        want.retain(|w| *w != (device, reason));
    }
}

/// A second hub on a data directory another one holds says so in words, once, and exits
/// non-zero (it printed `Os { code: 11, kind: WouldBlock, .. }`, twice).
#[test]
fn a_data_dir_in_use_is_said_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), "");
    let hub = start_hub(&config, &[]);
    let mut second = Command::new(bin())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            panic!("the second hub did not exit");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert_eq!(
        stderr.matches("in use by another process").count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("Os {"), "{stderr}");
    hub.terminate();
}

/// `check-config` prints what `run` would use: the environment applied, and the loopback
/// rule written into the addresses (no accounts, no allow_anonymous).
#[test]
fn check_config_prints_the_configuration_run_uses() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edgewatch.toml");
    let check = |text: &str| {
        std::fs::write(&file, text).unwrap();
        let out = Command::new(bin())
            .arg("check-config")
            .arg(&file)
            .env("EDGEWATCH_MQTT5_LISTEN", "0.0.0.0:1999")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let printed = check("");
    assert!(printed.contains("listen = \"127.0.0.1:1999\""), "{printed}");
    assert!(
        printed.contains("# MQTT listeners on loopback"),
        "{printed}"
    );
    assert!(
        printed.contains("http_listen = \"127.0.0.1:8080\""),
        "{printed}"
    );
    let printed = check("[broker]\nallow_anonymous = true\n");
    assert!(printed.contains("listen = \"0.0.0.0:1999\""), "{printed}");
    assert!(
        !printed.contains("# MQTT listeners on loopback"),
        "{printed}"
    );
}
