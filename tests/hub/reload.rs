//! SIGHUP: the configuration file is read again; the ingest mappings, the accounts (and the
//! log level) change without a restart, a file that does not load changes nothing, and the
//! hub goes on.

use std::process::Command;
use std::time::Duration;

use crate::support::{loopback_config, metric_sums, poll_until, publish_all, start_hub};

fn hangup(pid: u32) {
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

async fn stored_after(http: &str, want: f64) {
    poll_until(
        Duration::from_secs(15),
        || metric_sums(http),
        |m| m.get("edgewatch_readings_stored_total") == Some(&want),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_mappings_and_a_bad_file_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), "");
    let hub = start_hub(&config, &[]);
    let (http, mqtt) = (hub.http(), hub.addr("mqtt"));
    let reading = || {
        vec![(
            "zigbee2mqtt/kitchen".to_owned(),
            br#"{"temperature":21.5}"#.to_vec(),
        )]
    };

    publish_all(mqtt, "z1", reading()).await;
    poll_until(
        Duration::from_secs(15),
        || metric_sums(&http),
        |m| m.get("edgewatch_publishes_ignored_total") == Some(&1.0),
    )
    .await;

    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[ingest]\npresets = [\"zigbee2mqtt\"]\n");
    std::fs::write(&config, &text).unwrap();
    hangup(hub.pid());
    hub.wait_for_log("SIGHUP: configuration reloaded", Duration::from_secs(10));
    publish_all(mqtt, "z2", reading()).await;
    stored_after(&http, 1.0).await;

    // A file that does not load: logged, and the mappings in force stay.
    std::fs::write(&config, format!("{text}[ingest]\n")).unwrap();
    hangup(hub.pid());
    hub.wait_for_log(
        "SIGHUP: configuration not reloaded",
        Duration::from_secs(10),
    );
    publish_all(mqtt, "z3", reading()).await;
    stored_after(&http, 2.0).await;
    assert_eq!(hub.terminate().code(), Some(0), "SIGHUP is not a crash");
}

fn account(name: &str, password: &str) -> String {
    let hash = edgewatch_broker::hash_password(password).unwrap();
    format!("[[broker.users]]\nusername = \"{name}\"\npassword_hash = \"{hash}\"\n")
}

/// New accounts work after a SIGHUP, a removed one no longer logs in (its remembered login
/// forgotten too), without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let config = loopback_config(dir.path(), &account("first", "one"));
    let hub = start_hub(&config, &[]);
    let login = |user: &'static str, password: &'static str| {
        let hub = &hub;
        async move {
            crate::identity::mqtt_login(hub, user, password)
                .await
                .map(|_| ())
        }
    };
    assert!(login("first", "one").await.is_ok());
    assert!(login("second", "two").await.is_err(), "not an account yet");
    // Only the second account now (the first's login was remembered: forgotten at reload).
    let base = std::fs::read_to_string(&config).unwrap();
    let base = base.split("[[broker.users]]").next().unwrap().to_owned();
    std::fs::write(&config, format!("{base}{}", account("second", "two"))).unwrap();
    hangup(hub.pid());
    hub.wait_for_log("SIGHUP: configuration reloaded", Duration::from_secs(10));
    assert!(
        login("second", "two").await.is_ok(),
        "the new account logs in"
    );
    assert!(
        login("first", "one").await.is_err(),
        "the removed account is refused"
    );
    assert_eq!(hub.terminate().code(), Some(0));
}
