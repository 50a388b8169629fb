//! An MQTT subscriber that falls behind rumqttd's router log is counted, not skipped silently
//! (`edgewatch_broker::cursor_jumps`). Its own test binary: it installs the process's tracing
//! subscriber, as the hub does, because rumqttd's router logs from its own thread.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use edgewatch_broker::cursor_jumps::{cursor_jumps, skipped_messages};
use edgewatch_broker::{Broker, ListenerKind};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::time::timeout;

use support::{options, test_config, WAIT};

/// A QoS 1 subscriber that acknowledges nothing while 3,000 messages pass through a router log
/// of two 1 KiB segments: once it reads again, its cursor jumps and the messages it never gets
/// are counted, exactly: received + skipped = published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_falls_behind_the_router_log_is_counted() {
    use tracing_subscriber::layer::SubscriberExt;
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(edgewatch_broker::cursor_jumps::cursor_jump_tap()),
    )
    .unwrap();
    const N: usize = 3_000;
    let mut cfg = test_config();
    cfg.router.max_segment_size = 1024;
    cfg.router.max_segment_count = 2;
    let broker = Broker::start(&cfg).await.unwrap();
    let addr = broker.addr(ListenerKind::Mqtt).unwrap();

    let (subscriber, mut sub_ev) = AsyncClient::new(options("slow", addr), 10);
    subscriber
        .subscribe("sensors/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    timeout(WAIT, async {
        while !matches!(sub_ev.poll().await, Ok(Event::Incoming(Packet::SubAck(_)))) {}
    })
    .await
    .expect("SUBACK");
    // The subscriber's event loop is not polled now: it acknowledges nothing, so the router
    // stops sending to it once its in-flight window is full.
    let (publisher, mut pub_ev) = AsyncClient::new(options("fast", addr), 100);
    let publishing = tokio::spawn(async move {
        for i in 0..N {
            publisher
                .publish("sensors/d1/t", QoS::AtMostOnce, false, format!("{i:05}"))
                .await
                .unwrap();
        }
        publisher
    });
    let driving = tokio::spawn(async move { while pub_ev.poll().await.is_ok() {} });
    let _publisher = timeout(WAIT, publishing).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // the router takes them in
                                                          // The subscriber reads again until nothing comes for a second.
    let mut received = 0;
    while let Ok(event) = timeout(Duration::from_secs(1), sub_ev.poll()).await {
        if let Event::Incoming(Packet::Publish(_)) = event.unwrap() {
            received += 1;
        }
    }
    assert!(cursor_jumps() > 0, "no jump counted; received {received}");
    assert_eq!(
        received as u64 + skipped_messages(),
        N as u64,
        "received {received}, skipped {}, jumps {}",
        skipped_messages(),
        cursor_jumps()
    );
    driving.abort();
    broker.stop();
}
