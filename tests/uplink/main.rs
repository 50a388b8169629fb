//! Uplinks (`[[uplink]]`) against a real Mosquitto as the central broker, with a real
//! subscriber on it: every stored reading arrives upstream at least once and in seq order
//! through an upstream outage, an orderly restart and a `kill -9` of the hub; two hubs
//! forward to one central Mosquitto, and `edgewatch bridge` stores both sites centrally.

#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgewatch_sim::{Faults, FleetConfig};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use support::{
    get_json, loopback_config_fixed_ports, poll_until, settle, spawn_hub, start_hub, stored,
    Mosquitto,
};

/// What the central subscriber received: (topic, payload as JSON, `seq` user property).
type Received = Arc<Mutex<Vec<(String, Value, Option<String>)>>>;

/// A persistent-session MQTT 5 subscriber on the central broker, subscribed to `filter` with
/// QoS 1, reconnecting whenever the broker goes away. Returns once it is subscribed.
async fn central_subscriber(port: u16, filter: &str) -> (Received, CancellationToken) {
    let mut o = MqttOptions::new("central-subscriber", "127.0.0.1", port);
    o.set_clean_start(false)
        .set_session_expiry_interval(Some(3600))
        .set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(o, 100);
    let got: Received = Arc::default();
    let stop = CancellationToken::new();
    let (subscribed, mut is_subscribed) = tokio::sync::watch::channel(false);
    let (g, s, filter) = (got.clone(), stop.clone(), filter.to_owned());
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                ev = events.poll() => ev,
                () = s.cancelled() => return,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client
                        .subscribe(filter.clone(), QoS::AtLeastOnce)
                        .await
                        .unwrap();
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed.send(true);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    let json: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    let seq = p.properties.as_ref().and_then(|props| {
                        props
                            .user_properties
                            .iter()
                            .find(|(k, _)| k == "seq")
                            .map(|(_, v)| v.clone())
                    });
                    g.lock().unwrap().push((topic, json, seq));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(20), is_subscribed.wait_for(|s| *s))
        .await
        .expect("the central subscriber subscribed")
        .unwrap();
    (got, stop)
}

/// Every seq the hub has stored, from its history API.
async fn stored_seqs(http: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = get_json(&format!(
            "{http}/v1/readings?filter=sensors/%23&from=2000-01-01T00:00:00Z&limit=10000&after={after}"
        ))
        .await;
        let items = page["readings"].as_array().cloned().unwrap_or_default();
        out.extend(items.iter().filter_map(|r| r["seq"].as_u64()));
        match page["nextAfter"].as_u64() {
            Some(n) if !items.is_empty() => after = n,
            _ => return out,
        }
    }
}

/// The seqs of the readings received, in arrival order (a `json-array` message counts for
/// each reading in it).
fn received_seqs(got: &Received) -> Vec<u64> {
    let got = got.lock().unwrap();
    let mut out = Vec::new();
    for (t, v, _) in got.iter() {
        if t.contains("/sensors/") {
            out.extend(v["seq"].as_u64());
        } else if let Some(items) = v.as_array() {
            out.extend(items.iter().filter_map(|r| r["seq"].as_u64()));
        }
    }
    out
}

/// Publishes `n` readings of d1's temperature to `hub` and waits (at most 30 s) until the
/// central subscriber has received that many; returns how many it has.
async fn publish_and_wait(hub: &support::Hub, got: &Received, n: usize) -> usize {
    let msgs = (0..n)
        .map(|i| {
            (
                "sensors/d1/temperature".to_owned(),
                i.to_string().into_bytes(),
            )
        })
        .collect();
    support::publish_all(hub.addr("mqtt"), "d1", msgs).await;
    poll_until(
        Duration::from_secs(30),
        || async { received_seqs(got).len() },
        |r| *r >= n,
    )
    .await
}

fn uplink_section(url: &str, extra: &str) -> String {
    format!(
        "[[uplink]]\nname = \"central\"\nurl = \"{url}\"\nsite = \"s1\"\ninflight = 50\n\
         backoff_min_ms = 100\nbackoff_max_ms = 1000\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stored_reading_arrives_upstream_in_order_through_an_outage_a_restart_and_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut central = Mosquitto::start();
    let (got, sub_stop) = central_subscriber(central.port, "site/#").await;
    let config = loopback_config_fixed_ports(dir.path(), &uplink_section(&central.url(), ""));
    let mut hub = start_hub(&config, &[]);
    let mqtt = hub.addr("mqtt");
    let readings: u64 = 50_000;
    let fleet = FleetConfig {
        broker_host: mqtt.ip().to_string(),
        broker_port: mqtt.port(),
        devices: 50,
        rate: Some(2_500.0),
        max: Some(readings),
        qos: 1,
        faults: Faults::none(),
        ..FleetConfig::default()
    };
    let run = tokio::spawn(edgewatch_sim::run_fleet(fleet, CancellationToken::new()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The central broker goes away for 20 s; meanwhile the hub is restarted (SIGTERM) and
    // later killed (kill -9), and the devices keep publishing.
    central.stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let status = hub.terminate();
    assert!(status.success(), "orderly stop: {status:?}");
    hub = start_hub(&config, &[]);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let up = get_json(&format!("{}/v1/uplinks", hub.http())).await;
    assert_eq!(up["uplinks"][0]["state"], "backing_off", "{up}");
    assert!(
        up["uplinks"][0]["lagReadings"].as_u64().unwrap() > 0,
        "{up}"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    central.start_again();
    tokio::time::sleep(Duration::from_secs(3)).await;
    hub.kill9();
    hub = start_hub(&config, &[]);
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.unsent, 0, "{report:?}");

    let http = hub.http();
    let n = settle(Duration::from_secs(60), Duration::from_millis(500), || {
        stored(&http)
    })
    .await;
    let seqs = stored_seqs(&http).await;
    assert_eq!(seqs.len() as u64, n);
    let head = *seqs.last().unwrap();
    // The uplink catches up with everything stored.
    poll_until(
        Duration::from_secs(90),
        || async { received_seqs(&got).iter().copied().max().unwrap_or(0) },
        |max| *max >= head,
    )
    .await;
    let arrived = received_seqs(&got);
    // Dropping repeats (a seq at or below the highest seen) leaves the stored seqs, in order.
    let mut highest = 0;
    let deduped: Vec<u64> = arrived
        .iter()
        .copied()
        .filter(|s| {
            let new = *s > highest;
            highest = highest.max(*s);
            new
        })
        .collect();
    assert_eq!(
        deduped, seqs,
        "upstream, repeats dropped, is the hub's log in order"
    );
    let resent = arrived.len() - deduped.len();
    // Each message carries its seq as an MQTT 5 user property as well.
    assert!(got
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _, _)| t.contains("/sensors/"))
        .all(|(_, v, p)| p.as_deref() == Some(v["seq"].to_string().as_str())));
    // Nothing acknowledged to a device is missing upstream.
    assert!(
        n >= report.acknowledged,
        "stored {n}, acknowledged to devices {}",
        report.acknowledged
    );
    let up = get_json(&format!("{http}/v1/uplinks")).await;
    let u = &up["uplinks"][0];
    assert_eq!(u["state"], "connected", "{up}");
    println!(
        "uplink: {n} stored, {} messages upstream, {resent} repeats; acknowledged to devices {}; after the kill: {u}",
        arrived.len(),
        report.acknowledged
    );
    // Presence is forwarded retained.
    let presence: BTreeSet<String> = got
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _, _)| t.starts_with("site/s1/status/"))
        .map(|(t, _, _)| t.clone())
        .collect();
    assert!(!presence.is_empty(), "device presence forwarded");
    sub_stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sites_forward_to_one_central_broker_and_a_central_bridge_stores_both() {
    let central = Mosquitto::start();
    let site_cfg = |site: &str| {
        format!(
            "[[uplink]]\nname = \"central\"\nurl = \"{}\"\nsite = \"{site}\"\n\
             topic = \"sensors/{{site}}-{{deviceId}}/{{metric}}\"\ndevice_id = \"{{site}}-{{deviceId}}\"\n\
             presence_topic = \"\"\n",
            central.url()
        )
    };
    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let hub_a = start_hub(&support::loopback_config(da.path(), &site_cfg("a")), &[]);
    let hub_b = start_hub(&support::loopback_config(db.path(), &site_cfg("b")), &[]);
    let central_cfg = dc.path().join("edgewatch.toml");
    std::fs::write(
        &central_cfg,
        format!(
            "[bridge]\ndata_dir = {:?}\nhttp_listen = \"127.0.0.1:0\"\nmqtt_client_id = \"central-store\"\n",
            dc.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let store = spawn_hub(&[
        "bridge".to_owned(),
        "--mqtt".to_owned(),
        central.url(),
        "--config".to_owned(),
        central_cfg.display().to_string(),
    ]);
    tokio::task::block_in_place(|| {
        central.wait_subscribed("central-store", "sensors/#", Duration::from_secs(30))
    });
    for (hub, n) in [(&hub_a, 300), (&hub_b, 200)] {
        let msgs = (0..n)
            .map(|i| {
                (
                    "sensors/d1/temperature".to_owned(),
                    format!("{{\"value\":{i},\"unit\":\"C\"}}").into_bytes(),
                )
            })
            .collect();
        support::publish_all(hub.addr("mqtt"), "d1", msgs).await;
    }
    let http = store.http();
    let n = poll_until(Duration::from_secs(60), || stored(&http), |n| *n >= 500).await;
    assert_eq!(n, 500);
    let series = get_json(&format!("{http}/v1/series")).await;
    let mut devices: Vec<(String, u64)> = series["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["deviceId"].as_str().unwrap().to_owned(),
                s["count"].as_u64().unwrap(),
            )
        })
        .collect();
    devices.sort();
    assert_eq!(
        devices,
        vec![("a-d1".to_owned(), 300), ("b-d1".to_owned(), 200)]
    );
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA, and `names` certificates it signed (`name.pem`, `name.key`): the first for the
/// server (localhost, 127.0.0.1), the others for clients.
fn make_pki(dir: &std::path::Path, ca: &str, names: &[&str]) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca_key = format!("{ca}.key");
    let ca_pem = format!("{ca}.pem");
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        &ca_key,
        "-out",
        &ca_pem,
    ]);
    args.extend([
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(dir, &args);
    for (i, name) in names.iter().enumerate() {
        let ext = if i == 0 {
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n"
        } else {
            "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n"
        };
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let (key, csr, pem, extf) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let subj = format!("/CN={name}");
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-subj", &subj, "-keyout", &key, "-out", &csr]);
        openssl(dir, &args);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                &extf,
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtts_uplink_checks_the_brokers_certificate_and_logs_in_with_its_own() {
    if !Mosquitto::installed("mqtts uplink") {
        return;
    }
    assert!(
        support::have("openssl"),
        "openssl is needed (scripts/test installs it)"
    );
    let pki = tempfile::tempdir().unwrap();
    let p = pki.path();
    make_pki(p, "ca", &["server", "site"]);
    make_pki(p, "other-ca", &[]);
    let (plain, tls) = (support::free_port(), support::free_port());
    let conf = p.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "per_listener_settings false\nallow_anonymous true\nuser root\nlog_dest stderr\n\
             listener {plain} 127.0.0.1\n\
             listener {tls} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
             require_certificate true\n",
            d = p.display()
        ),
    )
    .unwrap();
    let _central = support::Process::start("/usr/sbin/mosquitto", &["-c", conf.to_str().unwrap()]);
    support::wait_listening(tls, Duration::from_secs(10));
    let (got, sub_stop) = central_subscriber(plain, "site/#").await;
    let section = |name: &str, ca: &str| {
        format!(
            "[[uplink]]\nname = \"{name}\"\nurl = \"mqtts://localhost:{tls}\"\nsite = \"s1\"\n\
             ca_file = \"{d}/{ca}.pem\"\nclient_cert = \"{d}/site.pem\"\nclient_key = \"{d}/site.key\"\n\
             backoff_max_ms = 500\npresence_topic = \"\"\n",
            d = p.display()
        )
    };
    let dir = tempfile::tempdir().unwrap();
    // Two uplinks: one trusting the broker's CA, one trusting another CA.
    let extra = format!(
        "{}{}",
        section("central", "ca"),
        section("wrong-ca", "other-ca")
    );
    let hub = start_hub(&support::loopback_config(dir.path(), &extra), &[]);
    publish_and_wait(&hub, &got, 100).await;
    assert_eq!(received_seqs(&got), (1..=100).collect::<Vec<u64>>());
    let url = format!("{}/v1/uplinks", hub.http());
    let up = poll_until(
        Duration::from_secs(10),
        || get_json(&url),
        |up| up["uplinks"][0]["forwarded"] == 100,
    )
    .await;
    let (ok, bad) = (&up["uplinks"][0], &up["uplinks"][1]);
    assert_eq!(ok["state"], "connected", "{up}");
    assert_eq!(ok["forwarded"], 100, "{up}");
    assert_eq!(bad["state"], "backing_off", "{up}");
    assert_eq!(bad["forwarded"], 0, "{up}");
    let error = bad["lastError"].as_str().unwrap_or_default();
    assert!(error.contains("TLS handshake"), "{error}");
    println!("mqtts uplinks: {up}");
    // The private socket directory is the hub user's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("data/.uplink"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    sub_stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_downlink_publishes_commands_from_the_centre_to_devices_within_its_permissions() {
    let central = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let extra = uplink_section(
        &central.url(),
        "downlink = [\"site/{site}/#\"]\ndownlink_publish = [\"commands/#\"]\ndownlink_rate = 50\n",
    );
    let hub = start_hub(&support::loopback_config(dir.path(), &extra), &[]);
    tokio::task::block_in_place(|| {
        central.wait_subscribed("edgewatch-s1-central", "site/s1/#", Duration::from_secs(30))
    });
    // A device on the hub listens for its commands.
    let mqtt = hub.addr("mqtt");
    let mut o = rumqttc::MqttOptions::new("device-d1", mqtt.ip().to_string(), mqtt.port());
    o.set_keep_alive(Duration::from_secs(5));
    let (device, mut events) = rumqttc::AsyncClient::new(o, 100);
    device
        .subscribe("commands/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let commands: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let (c, (subscribed, mut is_subscribed)) =
        (commands.clone(), tokio::sync::watch::channel(false));
    let events_task = tokio::spawn(async move {
        while let Ok(ev) = events.poll().await {
            match ev {
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                    let _ = subscribed.send(true);
                }
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => c
                    .lock()
                    .unwrap()
                    .push((p.topic, String::from_utf8_lossy(&p.payload).into_owned())),
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), is_subscribed.wait_for(|s| *s))
        .await
        .unwrap()
        .unwrap();
    // From the centre: a command, a reading the downlink may not publish, a payload too large,
    // and then a burst over the rate.
    let big = vec![b'x'; 300 * 1024];
    let mut msgs = vec![
        ("site/s1/commands/d1/set".to_owned(), b"on".to_vec()),
        ("site/s1/sensors/d9/temperature".to_owned(), b"99".to_vec()),
        ("site/s1/commands/d1/big".to_owned(), big),
    ];
    msgs.extend((0..200).map(|i| {
        (
            "site/s1/commands/d1/burst".to_owned(),
            format!("{i}").into_bytes(),
        )
    }));
    support::publish_all(central.addr(), "central-app", msgs).await;
    let http = hub.http();
    let url = format!("{http}/v1/uplinks");
    let up = poll_until(
        Duration::from_secs(20),
        || get_json(&url),
        |up| {
            let u = &up["uplinks"][0];
            u["downlinkPublished"].as_u64().unwrap_or(0)
                + u["downlinkDropped"].as_u64().unwrap_or(0)
                >= 203
        },
    )
    .await;
    let u = &up["uplinks"][0];
    let (published, dropped) = (
        u["downlinkPublished"].as_u64().unwrap(),
        u["downlinkDropped"].as_u64().unwrap(),
    );
    println!("downlink: {up}");
    // The burst is over 50/s: some of it is dropped; the reading and the large payload always.
    // The reading and the large payload, and some of the burst (over 50/s).
    assert!(dropped > 2, "{up}");
    assert!(published >= 50, "{up}");
    let got = poll_until(
        Duration::from_secs(10),
        || async { commands.lock().unwrap().len() as u64 },
        |n| *n >= published,
    )
    .await;
    assert_eq!(
        got, published,
        "every downlinked message the hub published reached the device"
    );
    let seen = commands.lock().unwrap().clone();
    assert_eq!(seen[0], ("commands/d1/set".to_owned(), "on".to_owned()));
    assert!(
        seen.iter().all(|(t, _)| t.starts_with("commands/d1/")),
        "{seen:?}"
    );
    // The reading the downlink was refused is not stored either.
    assert_eq!(stored(&http).await, 0);
    let metrics = support::metric_sums(&http).await;
    assert_eq!(
        metrics
            .get("edgewatch_uplink_downlink_dropped_total")
            .copied(),
        Some(dropped as f64)
    );
    events_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_uplink_forwards_json_arrays_over_mqtt_over_websocket() {
    // The central broker is another hub's embedded broker, over its MQTT-over-WebSocket
    // listener (Debian's Mosquitto cannot open a WebSocket listener here).
    let (dc, de) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let central = start_hub(&support::loopback_config(dc.path(), ""), &[]);
    let (got, sub_stop) = central_subscriber(central.addr("mqtt5").port(), "site/#").await;
    let ws = central.addr("websocket");
    // Its WebSocket listener speaks MQTT 3.1.1. Ten readings to a message.
    let extra = uplink_section(
        &format!("ws://127.0.0.1:{}/mqtt", ws.port()),
        "presence_topic = \"\"\nprotocol = 4\nformat = \"json-array\"\nbatch_max = 10\n",
    );
    let edge = start_hub(&support::loopback_config(de.path(), &extra), &[]);
    let n = publish_and_wait(&edge, &got, 100).await;
    let url = format!("{}/v1/uplinks", edge.http());
    assert_eq!(n, 100, "{}", get_json(&url).await);
    assert_eq!(received_seqs(&got), (1..=100).collect::<Vec<u64>>());
    let batches: Vec<(String, usize)> = got
        .lock()
        .unwrap()
        .iter()
        .map(|(t, v, _)| (t.clone(), v.as_array().map_or(0, Vec::len)))
        .collect();
    assert!(
        batches
            .iter()
            .all(|(t, n)| t == "site/s1/batch" && (1..=10).contains(n)),
        "{batches:?}"
    );
    assert!(batches.len() >= 10, "{batches:?}");
    let up = poll_until(
        Duration::from_secs(10),
        || get_json(&url),
        |up| up["uplinks"][0]["forwarded"] == 100,
    )
    .await;
    assert_eq!(up["uplinks"][0]["state"], "connected", "{up}");
    sub_stop.cancel();
}
