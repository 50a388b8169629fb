//! Publishing through a real MQTT connection.

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Publishes every `(topic, payload)` at QoS 1 from one connection, and returns once the
/// broker acknowledged all of them (at most 120 s; panics after that or if the connection
/// fails).
pub async fn publish_all(broker: SocketAddr, client_id: &str, msgs: Vec<(String, Vec<u8>)>) {
    let mut opts = MqttOptions::new(client_id, broker.ip().to_string(), broker.port());
    opts.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let n = msgs.len();
    let acks = tokio::spawn(async move {
        let mut acked = 0usize;
        while acked < n {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher connection failed: {e}"),
            }
        }
        eventloop
    });
    for (topic, payload) in msgs {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("queue publish");
    }
    let eventloop = tokio::time::timeout(Duration::from_secs(120), acks)
        .await
        .expect("broker acked in time")
        .expect("publisher task");
    drop(eventloop);
}
