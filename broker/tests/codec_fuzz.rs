//! Fuzzing the MQTT decoding path every device byte goes through: rumqttd's v4 and v5 codecs
//! inside our codec wrapper. Arbitrary bytes, and valid packets with bytes flipped or cut, must
//! give a packet or an error, never a panic (a panic would end that connection's task without
//! cleaning up, or worse).

use bytes::BytesMut;
use edgewatch_broker::connect_policy::{KeepAlivePolicy, PolicyProtocol};
use proptest::prelude::*;
use rumqttd::protocol::Protocol;

const POLICY: KeepAlivePolicy = KeepAlivePolicy {
    min_secs: 5,
    max_secs: 600,
};

/// Feeds `bytes` to a fresh codec until it errors or wants more; at most 64 packets.
fn decode_all<P: Protocol>(mut codec: P, bytes: &[u8]) {
    let mut stream = BytesMut::from(bytes);
    for _ in 0..64 {
        if codec.read_mut(&mut stream, 1 << 20).is_err() {
            return;
        }
    }
}

/// Well-formed packets of both versions to start mutations from.
fn seeds() -> Vec<Vec<u8>> {
    vec![
        // 3.1.1 CONNECT with username and password.
        b"\x10\x16\x00\x04MQTT\x04\xc2\x00\x3c\x00\x02c1\x00\x02d1\x00\x02pw".to_vec(),
        // 3.1.1 CONNECT with a will.
        b"\x10\x18\x00\x04MQTT\x04\x0e\x00\x3c\x00\x02c1\x00\x03w/t\x00\x03bye".to_vec(),
        // 5 CONNECT with properties (session expiry, receive maximum).
        b"\x10\x17\x00\x04MQTT\x05\x02\x00\x3c\x08\x11\x00\x00\x00\x0a\x21\x00\x10\x00\x02c5"
            .to_vec(),
        // PUBLISH QoS 1, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT.
        b"\x32\x0f\x00\x09sensors/a\x00\x0121".to_vec(),
        b"\x82\x0e\x00\x01\x00\x09sensors/#\x01".to_vec(),
        b"\xa2\x0d\x00\x02\x00\x09sensors/#".to_vec(),
        b"\xc0\x00".to_vec(),
        b"\xe0\x00".to_vec(),
    ]
}

fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        0..seeds().len(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        any::<prop::sample::Index>(),
        prop::collection::vec(any::<u8>(), 0..32),
    )
        .prop_map(|(seed, flips, cut, tail)| {
            let mut bytes: Vec<u8> = seeds().into_iter().nth(seed).unwrap_or_default();
            for (at, value) in flips {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            bytes.truncate(cut.index(bytes.len() + 1).max(1));
            bytes.extend(tail);
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(PolicyProtocol::v4(POLICY), &bytes);
        decode_all(PolicyProtocol::v5(POLICY), &bytes);
    }

    #[test]
    fn mutated_packets_never_panic(a in mutated(), b in mutated()) {
        let stream: Vec<u8> = a.into_iter().chain(b).collect();
        decode_all(PolicyProtocol::v4(POLICY), &stream);
        decode_all(PolicyProtocol::v5(POLICY), &stream);
    }
}

#[test]
fn the_seeds_decode() {
    for (i, seed) in seeds().into_iter().enumerate() {
        let mut stream = BytesMut::from(&seed[..]);
        // The third seed is an MQTT 5 CONNECT; the others decode as 3.1.1.
        let decoded = if i == 2 {
            PolicyProtocol::v5(POLICY).read_mut(&mut stream, 1 << 20)
        } else {
            PolicyProtocol::v4(POLICY).read_mut(&mut stream, 1 << 20)
        };
        assert!(decoded.is_ok(), "seed {i} does not decode: {decoded:?}");
        assert!(stream.is_empty(), "seed {i} has bytes left over");
    }
}
