//! Debian's mosquitto_pub / mosquitto_sub against the real `edgewatch run`, plain and TLS.
//! `scripts/test` installs mosquitto-clients; without it these tests fail, not skip.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{free_port, have, loopback_config, start_hub, Process};

/// Starts `mosquitto_sub` for one message, publishes once it has its SUBACK (`-d` prints
/// `Subscribed ...`), and returns the message line the subscriber printed.
fn round_trip(sub_args: &[String], pub_args: &[String]) -> String {
    assert!(
        have("mosquitto_sub"),
        "mosquitto-clients not installed (scripts/test installs it)"
    );
    let limit = Duration::from_secs(20);
    // `stdbuf -oL`: its debug lines go through stdio, which would hold them back in a pipe.
    let mut sub = Process::spawn(
        Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args(sub_args)
            .args(["-d", "-t", "sensors/#", "-v", "-C", "1", "-W", "20"]),
    );
    sub.line_starting_with("Subscribed", limit);
    let st = Command::new("mosquitto_pub")
        .args(pub_args)
        .args(["-t", "sensors/d1/temperature", "-m", "21.5", "-q", "1"])
        .status()
        .unwrap();
    assert!(st.success(), "mosquitto_pub failed");
    // The message line: `-v` prints `TOPIC PAYLOAD`; debug lines start with `Client `.
    let got = sub.line_starting_with("sensors/", limit);
    let status = sub.wait_exit(limit);
    assert!(
        status.success(),
        "mosquitto_sub: {}",
        sub.stderr().try_iter().collect::<Vec<_>>().join("\n")
    );
    got
}

fn host_port(addr: std::net::SocketAddr) -> Vec<String> {
    vec![
        "-h".into(),
        addr.ip().to_string(),
        "-p".into(),
        addr.port().to_string(),
    ]
}

#[test]
fn mosquitto_clients_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&loopback_config(dir.path(), ""), &[]);
    let hp = host_port(hub.addr("mqtt"));
    let got = round_trip(&hp, &hp);
    assert_eq!(got.trim(), "sensors/d1/temperature 21.5");
}

#[test]
fn mosquitto_clients_mqtt5_publisher_to_mqtt311_subscriber() {
    // (mosquitto's clients refuse `-k 0` themselves; keep-alive 0 is tested with rumqttc in
    // broker/tests/broker.rs.)
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(&loopback_config(dir.path(), ""), &[]);
    let sub = host_port(hub.addr("mqtt"));
    let mut publ = host_port(hub.addr("mqtt5"));
    publ.extend(["-V".into(), "mqttv5".into()]);
    let got = round_trip(&sub, &publ);
    assert_eq!(got.trim(), "sensors/d1/temperature 21.5");
}

#[test]
fn mosquitto_clients_round_trip_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl could not make a test certificate");
    let tls_port = free_port();
    let extra = format!(
        "[broker.tls]\nenabled = true\nlisten = \"127.0.0.1:{tls_port}\"\ncert_path = {:?}\nkey_path = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let hub = start_hub(&loopback_config(dir.path(), &extra), &[]);
    // A connection that never starts its TLS handshake: rumqttd alone handshakes one
    // connection at a time with no time limit, so this stopped every later TLS client; our
    // front handshakes each connection on its own and closes this one after
    // `connect_timeout_ms`.
    let mut idle = std::net::TcpStream::connect(hub.addr("tls")).unwrap();
    // By host name: clients send the name as SNI, and rustls refuses an IP address there.
    let mut args = vec![
        "-h".into(),
        "localhost".into(),
        "-p".into(),
        tls_port.to_string(),
    ];
    args.extend(["--cafile".into(), cert.display().to_string()]);
    let got = round_trip(&args, &args);
    assert_eq!(got.trim(), "sensors/d1/temperature 21.5");
    // A plain-text client on the TLS port gets nothing through.
    let plain = Command::new("mosquitto_pub")
        .args(host_port(hub.addr("tls")))
        .args(["-t", "sensors/x/y", "-m", "1"])
        .output()
        .unwrap();
    assert!(!plain.status.success());
    idle.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 16];
    let closed = std::io::Read::read(&mut idle, &mut buf);
    assert!(
        matches!(closed, Ok(0))
            || closed
                .as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
        "the idle connection was not closed: {closed:?}"
    );
}

#[test]
fn mosquitto_clients_say_why_a_login_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hash = edgewatch_broker::hash_password("right-1").unwrap();
    let extra = format!("[[broker.users]]\nusername = \"d1\"\npassword_hash = \"{hash}\"\n");
    let hub = start_hub(&loopback_config(dir.path(), &extra), &[]);
    let publish = |version: &str, login: &[&str]| {
        let out = Command::new("mosquitto_pub")
            .args(host_port(hub.addr(version)))
            .args([
                "-V",
                if version == "mqtt5" {
                    "mqttv5"
                } else {
                    "mqttv311"
                },
            ])
            .args(login)
            .args(["-t", "sensors/d1/temperature", "-m", "21.5", "-q", "1"])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_lowercase(),
        )
    };
    assert!(publish("mqtt", &["-u", "d1", "-P", "right-1"]).0);
    // Before, a refused login closed the socket with no CONNACK: "The connection was lost".
    let (ok, said) = publish("mqtt", &["-u", "d1", "-P", "wrong"]);
    assert!(!ok && said.contains("bad user name or password"), "{said}");
    let (ok, said) = publish("mqtt", &[]);
    assert!(!ok && said.contains("not authorised"), "{said}");
    let (ok, said) = publish("mqtt5", &["-u", "d1", "-P", "wrong"]);
    assert!(!ok && said.contains("bad user name or password"), "{said}");
}
