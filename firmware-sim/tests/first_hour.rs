//! First-hour behaviour of a fleet against real brokers: the duration counts from when
//! sending starts and ends on time, the rate divides by the sending time, and a broker that
//! refuses the connection is said in words instead of being retried forever.

use std::time::{Duration, Instant};

use edgewatch_broker::config::UserConfig;
use edgewatch_broker::{Broker, BrokerConfig, ListenerKind};
use edgewatch_sim::{run_fleet, Faults, FleetConfig, SimError};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

async fn embedded_broker(users: Vec<UserConfig>) -> Broker {
    let mut cfg = BrokerConfig::default();
    cfg.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    cfg.mqtt5.enabled = false;
    cfg.websocket.enabled = false;
    cfg.allow_anonymous = users.is_empty();
    cfg.users = users;
    Broker::start(&cfg).await.unwrap()
}

fn fleet_on(broker: &Broker, prefix: &str) -> FleetConfig {
    let addr = broker.addr(ListenerKind::Mqtt).unwrap();
    FleetConfig {
        broker_host: addr.ip().to_string(),
        broker_port: addr.port(),
        faults: Faults::none(),
        id_prefix: prefix.to_owned(),
        ..FleetConfig::default()
    }
}

/// `--devices 200 --rate 10 --duration 2`: each device samples every 40 s. Before, a device
/// noticed the deadline only at its next tick, so the run took up to about 40 s and the rate
/// was divided by all of it. Now it ends at the deadline and the rate is per second of sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_rate_run_ends_at_its_duration_and_divides_by_the_sending_time() {
    let broker = embedded_broker(Vec::new()).await;
    let cfg = FleetConfig {
        devices: 200,
        rate: Some(10.0),
        duration: Some(Duration::from_secs(2)),
        connect_rate: 1000,
        ..fleet_on(&broker, "low")
    };
    let wall = Instant::now();
    let report = timeout(
        Duration::from_secs(15),
        run_fleet(cfg, CancellationToken::new()),
    )
    .await
    .expect("the run ends soon after its duration, not at the devices' next tick")
    .unwrap();
    let wall = wall.elapsed().as_secs_f64();
    println!("{report}\nwall {wall:.1} s");
    assert_eq!(report.connected_at_start, 200, "{report}");
    assert!(
        (2.0..5.0).contains(&report.elapsed_s),
        "sending time is the duration: {report}"
    );
    assert!(
        wall < report.connect_s + report.elapsed_s + 3.0,
        "wall time is connecting plus sending: {wall:.1} s; {report}"
    );
    let rate = report.acknowledged as f64 / report.elapsed_s;
    assert!((report.achieved_rate - rate).abs() < 1e-6, "{report}");
    // 10 publishes/s for 2 s, give or take the random first ticks.
    assert!((5..=40).contains(&report.acknowledged), "{report}");
    assert_eq!(report.acknowledged, report.sampled, "{report}");
}

/// 60 devices at 30 connects/s take 2 s to connect. Before, the duration ran from the start,
/// so late devices sent for almost nothing; now every device sends for the whole duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_the_fleet_does_not_eat_the_duration() {
    let broker = embedded_broker(Vec::new()).await;
    let cfg = FleetConfig {
        devices: 60,
        connect_rate: 30,
        interval: Duration::from_millis(200),
        duration: Some(Duration::from_secs(2)),
        ..fleet_on(&broker, "slow")
    };
    let wall = Instant::now();
    let report = timeout(
        Duration::from_secs(20),
        run_fleet(cfg, CancellationToken::new()),
    )
    .await
    .expect("fleet ends by itself")
    .unwrap();
    let wall = wall.elapsed().as_secs_f64();
    println!("{report}\nwall {wall:.1} s");
    assert!(report.connect_s >= 1.9, "{report}");
    assert_eq!(report.connected_at_start, 60, "{report}");
    assert!((2.0..5.0).contains(&report.elapsed_s), "{report}");
    assert!(wall < report.connect_s + report.elapsed_s + 3.0, "{wall}");
    // 60 devices × 2 metrics × 10 ticks in 2 s (a tick delayed past the deadline is not
    // taken: at least 9 each).
    assert!(
        (60 * 2 * 9..=60 * 2 * 10).contains(&report.sampled),
        "every device sampled for the whole duration: {report}"
    );
    assert_eq!(
        (report.acknowledged, report.dropped, report.unsent),
        (report.sampled, 0, 0),
        "{report}"
    );
}

/// Nothing listens on the port: the run fails at once with the reason in words (before, every
/// device retried silently until the duration ended, and the run "succeeded" having sent
/// nothing; `--verify` said `I/O: Connection refused (os error 111)`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_said_in_words() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    for verify in [false, true] {
        let cfg = FleetConfig {
            broker_port: port,
            devices: 5,
            duration: Some(Duration::from_secs(30)),
            verify,
            ..FleetConfig::default()
        };
        let started = Instant::now();
        let result = timeout(
            Duration::from_secs(10),
            run_fleet(cfg, CancellationToken::new()),
        )
        .await
        .expect("a refusal ends the run at once");
        let Err(SimError::Connect { reason }) = result else {
            panic!("verify {verify}: expected a connect error, got {result:?}");
        };
        assert_eq!(
            reason,
            format!("connection refused: nothing listens on 127.0.0.1:{port}")
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{reason}");
    }
}

/// A wrong password: the broker's CONNACK refusal is said in words, for the devices and for
/// the `--verify` subscriber, once it went on for a few seconds (the broker's login backoff
/// refuses even a right password for a moment after wrong ones, with the same code).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_is_said_in_words() {
    let user = UserConfig {
        username: "sensor".to_owned(),
        password_hash: edgewatch_broker::hash_password("right").unwrap(),
        role: None,
    };
    let broker = embedded_broker(vec![user]).await;
    for verify in [false, true] {
        let cfg = FleetConfig {
            devices: 3,
            duration: Some(Duration::from_secs(30)),
            username: Some("sensor".to_owned()),
            password: Some("wrong".to_owned()),
            verify,
            ..fleet_on(&broker, "login")
        };
        let result = timeout(
            Duration::from_secs(10),
            run_fleet(cfg, CancellationToken::new()),
        )
        .await
        .expect("a refusal ends the run at once");
        let Err(SimError::Connect { reason }) = result else {
            panic!("verify {verify}: expected a connect error, got {result:?}");
        };
        assert_eq!(
            reason,
            "the broker refused the connection: bad user name or password"
        );
    }
    // The right password connects (on a broker whose login backoff has not seen this address).
    let user = UserConfig {
        username: "sensor".to_owned(),
        password_hash: edgewatch_broker::hash_password("right").unwrap(),
        role: None,
    };
    let broker = embedded_broker(vec![user]).await;
    let cfg = FleetConfig {
        max: Some(4),
        username: Some("sensor".to_owned()),
        password: Some("right".to_owned()),
        interval: Duration::from_millis(50),
        ..fleet_on(&broker, "login")
    };
    let report = timeout(
        Duration::from_secs(20),
        run_fleet(cfg, CancellationToken::new()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(report.acknowledged, 4, "{report}");
}

/// A port where something accepts TCP but never answers MQTT: no device connects within the
/// connect timeout, and the run says so instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_within_the_connect_timeout_is_said() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and holds the connections, silently.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let cfg = FleetConfig {
        broker_port: port,
        devices: 2,
        connect_timeout: Duration::from_secs(1),
        duration: Some(Duration::from_secs(30)),
        ..FleetConfig::default()
    };
    let result = timeout(
        Duration::from_secs(15),
        run_fleet(cfg, CancellationToken::new()),
    )
    .await
    .expect("the connect timeout bounds the wait");
    silent.abort();
    let Err(SimError::Connect { reason }) = result else {
        panic!("expected a connect error, got {result:?}");
    };
    assert!(reason.starts_with("no device connected within"), "{reason}");
}

/// In front of the broker, a proxy that forwards the first `take` connections and holds the
/// others open without a word (a broker too busy to answer). Its port.
async fn proxy_taking(broker: std::net::SocketAddr, take: usize) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        let mut taken = 0;
        while let Ok((mut socket, _)) = listener.accept().await {
            if taken == take {
                held.push(socket);
                continue;
            }
            taken += 1;
            tokio::spawn(async move {
                if let Ok(mut upstream) = tokio::net::TcpStream::connect(broker).await {
                    let _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream).await;
                }
            });
        }
    });
    port
}

/// Only 3 of 5 devices get an answer: the other 2 are not connected within the connect
/// timeout; sending starts without them, and the report says how many and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_not_connected_in_time_are_reported_and_the_others_send() {
    let broker = embedded_broker(Vec::new()).await;
    let port = proxy_taking(broker.addr(ListenerKind::Mqtt).unwrap(), 3).await;
    let cfg = FleetConfig {
        broker_port: port,
        devices: 5,
        connect_timeout: Duration::from_secs(2),
        interval: Duration::from_millis(200),
        duration: Some(Duration::from_secs(1)),
        drain_timeout: Duration::from_secs(1),
        ..fleet_on(&broker, "full")
    };
    let report = timeout(
        Duration::from_secs(20),
        run_fleet(cfg, CancellationToken::new()),
    )
    .await
    .expect("fleet ends by itself")
    .unwrap();
    println!("{report}");
    assert_eq!(report.connected_at_start, 3, "{report}");
    assert!(
        report.connect_s >= 2.0,
        "waited for the connect timeout: {report}"
    );
    assert!(report.connect_failure.is_some(), "{report}");
    assert!(
        report
            .to_string()
            .contains("not connected when sending started: 2 device(s)"),
        "{report}"
    );
    // The 3 connected devices sent for the whole second: 5 ticks × 2 metrics each.
    assert!(
        (3 * 2 * 4..=3 * 2 * 5).contains(&report.acknowledged),
        "{report}"
    );
    // The sending time is the second of sending, not the drain timeout the unconnected devices
    // then spent waiting in vain.
    assert!((1.0..1.8).contains(&report.elapsed_s), "{report}");
    assert_eq!(
        report.unsent,
        report.sampled - report.acknowledged,
        "{report}"
    );
}
