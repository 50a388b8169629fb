//! The README's shell examples run as written: every host in them is this machine, the
//! binary is named by the path a build leaves it at, and the device and HTTP examples run
//! against a real hub (its ports put in for 1883 and 8080, which the demo uses).

use std::process::Command;

use crate::support::{bin, loopback_config, start_hub};

/// The ```sh blocks of the README, as (line, text of the command) with `\` continuations
/// joined and comments dropped.
fn shell_commands() -> Vec<(usize, String)> {
    let readme = include_str!("../../README.md");
    let (mut out, mut inside, mut pending) = (Vec::new(), false, String::new());
    for (i, line) in readme.lines().enumerate() {
        if line.starts_with("```") {
            inside = line == "```sh";
            continue;
        }
        if !inside {
            continue;
        }
        let code = line.split(" #").next().unwrap_or("").trim_end();
        if code.trim_start().starts_with('#') || code.trim().is_empty() {
            continue;
        }
        match code.strip_suffix('\\') {
            Some(part) => pending.push_str(part),
            None => {
                pending.push_str(code);
                out.push((i + 1, std::mem::take(&mut pending)));
            }
        }
    }
    out
}

#[test]
fn the_readmes_examples_name_this_machine_and_the_built_binary() {
    let commands = shell_commands();
    assert!(commands.len() >= 10, "{commands:?}");
    for (line, cmd) in &commands {
        for host in ["-h ", "://"] {
            for (at, _) in cmd.match_indices(host) {
                let rest = &cmd[at + host.len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| !matches!(c, ':' | '/' | ' ' | '\''))
                    .collect();
                assert!(
                    matches!(name.as_str(), "127.0.0.1" | "localhost" | "[" | ""),
                    "README line {line}: host {name:?} does not resolve here: {cmd}"
                );
            }
        }
        let first = cmd.split_whitespace().next().unwrap_or("");
        assert_ne!(
            first, "edgewatch",
            "README line {line}: `edgewatch` is not on PATH after a build: {cmd}"
        );
        assert!(!cmd.contains("| edgewatch "), "README line {line}: {cmd}");
    }
}

#[test]
fn the_readmes_device_and_http_examples_run_against_a_hub() {
    let have = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("mosquitto_pub") || !have("curl") {
        eprintln!("skipped: mosquitto_pub or curl not installed (scripts/test installs them)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&loopback_config(dir.path(), ""), &[]);
    let (mqtt, http) = (hub.addr("mqtt").port(), hub.addr("http").port());
    let mut ran = 0;
    for (line, cmd) in shell_commands() {
        let runnable = cmd.starts_with("mosquitto_pub")
            || cmd.starts_with("curl ") && !cmd.starts_with("curl -N")
            || cmd.contains("edgewatch passwd");
        if !runnable {
            continue;
        }
        let cmd = cmd
            .replace("-p 1883", &format!("-p {mqtt}"))
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{http}"))
            .replace("timeout=25", "timeout=1")
            .replace("./target/release/edgewatch", bin());
        let out = Command::new("sh").args(["-c", &cmd]).output().unwrap();
        assert!(
            out.status.success(),
            "README line {line}: {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    assert!(ran >= 4, "ran {ran}");
    // The device example's reading is there.
    let out = Command::new("curl")
        .args([
            "-s",
            &format!("http://127.0.0.1:{http}/v1/readings?filter=sensors/d1/temperature"),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"value\":21.5"));
    hub.terminate();
}
