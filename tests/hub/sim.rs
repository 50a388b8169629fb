//! `edgewatch sim` as a user runs it, against the real hub binary: the duration counts from
//! when sending starts, refusals are said in words with a non-zero exit, durations take units,
//! the report into a closed pipe ends quietly, shapes report what they carry, and a hub that
//! reads the shapes stores the readings the report expects.

use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{bin, free_port, loopback_config, poll_until, start_hub, Process};

/// Runs `edgewatch sim ARGS...` to its exit (at most `limit`): status, stdout, stderr.
fn sim(args: &[&str], limit: Duration) -> (ExitStatus, String, String) {
    let mut process = Process::start(bin(), &[&["sim"][..], args].concat());
    let status = process.wait_exit(limit);
    let out = lines(process.stdout());
    let err = lines(process.stderr());
    (status, out, err)
}

/// Every line of an exited process's output: until its reader thread saw the end (bounded).
fn lines(from: &std::sync::mpsc::Receiver<String>) -> String {
    let mut all = Vec::new();
    while let Ok(line) = from.recv_timeout(Duration::from_secs(5)) {
        all.push(line);
    }
    all.join("\n")
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// `--devices 200 --rate 10 --duration 2s`: each device samples every 40 s. Before, the run
/// took until the devices' next ticks (up to about 40 s) and divided by all of it.
#[test]
fn the_duration_is_sending_time_and_the_rate_divides_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&loopback_config(dir.path(), ""), &[]);
    let broker = format!("mqtt://{}", hub.addr("mqtt"));
    let started = Instant::now();
    let (status, out, err) = sim(
        &[
            "--broker",
            &broker,
            "--devices",
            "200",
            "--rate",
            "10",
            "--duration",
            "2s",
            "--no-faults",
            "--json",
        ],
        Duration::from_secs(20),
    );
    let wall = started.elapsed().as_secs_f64();
    assert!(status.success(), "{err}");
    let report = json(&out);
    let elapsed = report["elapsed_s"].as_f64().unwrap();
    let connect = report["connect_s"].as_f64().unwrap();
    assert!((2.0..5.0).contains(&elapsed), "{report}");
    assert!(wall < connect + elapsed + 3.0, "wall {wall:.1} s: {report}");
    assert_eq!(report["connected_at_start"], 200, "{report}");
    let acknowledged = report["acknowledged"].as_f64().unwrap();
    let rate = report["achieved_rate"].as_f64().unwrap();
    assert!((rate - acknowledged / elapsed).abs() < 1e-6, "{report}");
}

/// Nothing listens on the port: said in words, exit status non-zero, at once (before: retried
/// silently until the duration ended, exit 0; with `--verify`, `I/O: Connection refused (os
/// error 111)`).
#[test]
fn a_refused_connection_is_said_in_words_and_fails() {
    let port = free_port();
    let broker = format!("mqtt://127.0.0.1:{port}");
    for verify in [false, true] {
        let mut args = vec!["--broker", &broker, "--devices", "3", "--duration", "1m"];
        if verify {
            args.push("--verify");
        }
        let started = Instant::now();
        let (status, _, err) = sim(&args, Duration::from_secs(15));
        assert_eq!(status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "error: connection refused: nothing listens on 127.0.0.1:{port}"
            )),
            "{err}"
        );
        assert!(!err.contains("Os {"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

/// A hub with accounts and a wrong password: the CONNACK's refusal in words, exit non-zero.
#[test]
fn a_refused_login_is_said_in_words_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let hash = edgewatch_broker::hash_password("right").unwrap();
    let extra = format!("[[broker.users]]\nusername = \"sensor\"\npassword_hash = \"{hash}\"\n");
    let hub = start_hub(&loopback_config(dir.path(), &extra), &[]);
    let broker = format!("mqtt://{}", hub.addr("mqtt"));
    let (status, _, err) = sim(
        &[
            "--broker",
            &broker,
            "--username",
            "sensor",
            "--password",
            "wrong",
            "--duration",
            "1m",
        ],
        Duration::from_secs(15),
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("error: the broker refused the connection: bad user name or password"),
        "{err}"
    );
}

/// `--duration` takes 500ms, 5s, 10m, 1h or plain seconds; a bad value is a usage error that
/// says what is accepted.
#[test]
fn durations_take_units_and_a_bad_one_is_a_usage_error() {
    let (status, _, err) = sim(&["--duration", "5x"], Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("'--duration <DURATION>'"), "{err}");
    assert!(err.contains("500ms, 5s, 10m, 1h"), "{err}");
    let (status, out, err) = sim(
        &["--serial", "--duration", "300ms", "--json"],
        Duration::from_secs(10),
    );
    assert!(status.success(), "{err}");
    let report = out.split_once('\n').map_or("", |(_, r)| r);
    let elapsed = json(report)["elapsed_s"].as_f64().unwrap();
    assert!((0.3..2.0).contains(&elapsed), "{out}");
}

/// `edgewatch sim ... | head -1`: the reader is gone before the report is written. No panic,
/// exit status 0 (before: the serial emulator's device path panicked in `println!`, 101).
#[test]
fn the_report_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&loopback_config(dir.path(), ""), &[]);
    let broker = format!("mqtt://{}", hub.addr("mqtt"));
    for args in [
        vec!["sim", "--serial", "--duration", "300ms"],
        vec!["sim", "--broker", &broker, "--duration", "500ms"],
        vec!["sim", "--broker", &broker, "--duration", "500ms", "--json"],
    ] {
        let mut child = Command::new(bin())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Closing the read end before the first write: every write gets EPIPE.
        drop(child.stdout.take());
        let mut process = ChildGuard(Some(child));
        let out = process.wait_output(Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("error:"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

/// A child killed on drop; its output read once it exits (bounded).
struct ChildGuard(Option<std::process::Child>);

impl ChildGuard {
    fn wait_output(&mut self, limit: Duration) -> std::process::Output {
        let deadline = Instant::now() + limit;
        let child = self.0.as_mut().unwrap();
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "did not exit within {limit:?}");
            // A child's exit has no event to await here (std has no wait with a timeout).
            std::thread::sleep(Duration::from_millis(20));
        }
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `--shape tasmota` against the hub: publishes on `tele/D/SENSOR`, counted as publishes; the
/// report gives the readings they carry (12 each) and says verify cannot be exact.
#[test]
fn a_shaped_fleet_reports_publishes_and_the_readings_they_carry() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&loopback_config(dir.path(), ""), &[]);
    let broker = format!("mqtt://{}", hub.addr("mqtt"));
    let (status, out, err) = sim(
        &[
            "--broker",
            &broker,
            "--shape",
            "tasmota",
            "--devices",
            "2",
            "--interval-ms",
            "100",
            "--max",
            "10",
            "--no-faults",
            "--verify",
            "--json",
        ],
        Duration::from_secs(40),
    );
    assert!(status.success(), "{err}");
    let report = json(&out);
    assert_eq!(report["shape"], "tasmota", "{report}");
    assert_eq!(report["acknowledged"], 10, "{report}");
    assert_eq!(report["readings_per_publish"], 12, "{report}");
    assert_eq!(report["expected_readings"], 120, "{report}");
    assert_eq!(report["verify"]["exact"], false, "{report}");
    assert_eq!(report["verify"]["received"], 10, "{report}");
    // Flags of the native shape are refused with a shape.
    let (status, _, err) = sim(
        &["--broker", &broker, "--shape", "shelly", "--metrics", "co2"],
        Duration::from_secs(10),
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("--metrics: applies to --shape native only"),
        "{err}"
    );
}

/// Every shape against a hub that reads it (`[ingest] presets`): the hub stores exactly the
/// readings the report expects (publishes acknowledged × numbers per publish).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_reading_the_shapes_stores_the_expected_readings() {
    let dir = tempfile::tempdir().unwrap();
    let presets = "[ingest]\npresets = [\"tasmota\", \"zigbee2mqtt\", \"shelly\", \"esphome\", \
                   \"homeassistant\"]\n";
    let hub = start_hub(&loopback_config(dir.path(), presets), &[]);
    let broker = format!("mqtt://{}", hub.addr("mqtt"));
    let http = hub.http();
    let mut expected = 0;
    for shape in [
        "tasmota",
        "zigbee2mqtt",
        "shelly",
        "esphome",
        "homeassistant",
        "native",
    ] {
        let prefix = format!("hub{shape}");
        let (status, out, err) = tokio::task::block_in_place(|| {
            sim(
                &[
                    "--broker",
                    &broker,
                    "--shape",
                    shape,
                    "--devices",
                    "3",
                    "--interval-ms",
                    "100",
                    "--max",
                    "30",
                    "--no-faults",
                    "--json",
                    "--id-prefix",
                    &prefix,
                ],
                Duration::from_secs(40),
            )
        });
        assert!(status.success(), "{shape}: {err}");
        let report = json(&out);
        assert_eq!(report["acknowledged"], 30, "{report}");
        expected += report["expected_readings"].as_u64().unwrap();
        let stored = poll_until(
            Duration::from_secs(20),
            || crate::support::stored(&http),
            |n| *n >= expected,
        )
        .await;
        assert_eq!(stored, expected, "{shape}: {report}");
    }
    // 30 publishes of each: Tasmota 12 numbers each, Zigbee2MQTT 5, the others 1.
    assert_eq!(expected, 30 * (12 + 5 + 1 + 1 + 1 + 1));
}
