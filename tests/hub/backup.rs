//! `edgewatch backup` against a real hub taking readings: the backup is a data directory that
//! holds every reading up to one seq and none after it, equal to what the hub served, and that
//! a hub opens; callers who may not read everything are refused; an occupied `--out` is said.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::support::{bin, loopback_config, publish_all, start_hub};

const LIMIT: Duration = Duration::from_secs(120);

async fn edgewatch(args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(args)
        .env_remove("EDGEWATCH_TOKEN")
        .kill_on_drop(true);
    tokio::time::timeout(LIMIT, cmd.output())
        .await
        .expect("edgewatch ends in time")
        .expect("run edgewatch")
}

fn seqs_and_values(ndjson: &str) -> Vec<(u64, f64)> {
    ndjson
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            (v["seq"].as_u64().unwrap(), v["value"].as_f64().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_during_ingest_holds_every_reading_up_to_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, admin_hash) = edgewatch_bridge::http::auth::tokens::generate();
    let (viewer, viewer_hash) = edgewatch_bridge::http::auth::tokens::generate();
    let extra = format!(
        "[[auth.tokens]]\nname = \"admin\"\nhash = \"{admin_hash}\"\nread = [\"#\"]\n\
         [[auth.tokens]]\nname = \"viewer\"\nhash = \"{viewer_hash}\"\nread = [\"sensors/#\"]\n"
    );
    let hub = start_hub(&loopback_config(dir.path(), &extra), &[]);
    let url = hub.http();
    let mqtt = hub.addr("mqtt");
    // Readings before, and readings arriving while the backup runs.
    let batch = |from: usize, n: usize| -> Vec<(String, Vec<u8>)> {
        (from..from + n)
            .map(|i| (format!("sensors/d{}/t", i % 5), format!("{i}").into_bytes()))
            .collect()
    };
    publish_all(mqtt, "before", batch(0, 3_000)).await;
    let during =
        tokio::spawn(async move { publish_all(mqtt, "during", batch(3_000, 3_000)).await });
    let out = dir.path().join("backup");
    let out_s = out.display().to_string();
    let done = edgewatch(&["backup", "--hub", &url, "--token", &admin, "--out", &out_s]).await;
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let head: u64 = stdout
        .split("up to seq ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no head in {stdout:?}"));
    during.await.unwrap();
    assert!(head >= 1, "{stdout}");
    eprintln!("{stdout}");

    // What the backup holds, read as a stopped hub's data directory.
    let exported = edgewatch(&["export", "--data-dir", &out_s, "--format", "ndjson"]).await;
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let backed_up = seqs_and_values(&String::from_utf8_lossy(&exported.stdout));
    let seqs: Vec<u64> = backed_up.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=head).collect::<Vec<_>>(),
        "every seq up to the head, none after"
    );

    // The same readings the running hub serves for those seqs.
    let served = edgewatch(&[
        "export", "--hub", &url, "--token", &admin, "--format", "ndjson",
    ])
    .await;
    assert!(
        served.status.success(),
        "{}",
        String::from_utf8_lossy(&served.stderr)
    );
    let served = seqs_and_values(&String::from_utf8_lossy(&served.stdout));
    assert!(served.len() as u64 >= head);
    assert_eq!(backed_up[..], served[..head as usize]);

    // Not for a caller who may read only sensors/#; an occupied --out is said.
    let refused = edgewatch(&[
        "backup",
        "--hub",
        &url,
        "--token",
        &viewer,
        "--out",
        &format!("{out_s}-2"),
    ])
    .await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("403"));
    assert!(!dir.path().join("backup-2").exists(), "nothing left behind");
    let occupied = edgewatch(&["backup", "--hub", &url, "--token", &admin, "--out", &out_s]).await;
    assert_eq!(occupied.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&occupied.stderr).contains("not empty"));
    hub.terminate();

    // A hub runs on the backup and continues after its head.
    let cfg2 = dir.path().join("second");
    std::fs::create_dir_all(&cfg2).unwrap();
    let second = start_hub(&loopback_config(&cfg2, ""), &["--data-dir", &out_s]);
    publish_all(
        second.addr("mqtt"),
        "after",
        vec![("sensors/d9/t".into(), b"1".to_vec())],
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let last = edgewatch_testkit::get_json(&format!("{}/v1/series", second.http())).await;
        let seqs: Vec<u64> = last["series"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["lastSeq"].as_u64())
            .collect();
        if let Some(max) = seqs.iter().max().filter(|m| **m > head) {
            assert_eq!(*max, head + 1, "the next seq after the backup's head");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reading after the restore"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.terminate();
}
