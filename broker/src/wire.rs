//! MQTT fixed-header facts read straight from bytes, for the codec wrapper: rumqttd's
//! `Publish` keeps its QoS and packet id private.

use bytes::BytesMut;

/// The packet id of the QoS 1/2 PUBLISH at the start of `bytes`, if its bytes are there.
pub fn publish_pkid(bytes: &[u8]) -> Option<u16> {
    if publish_qos(*bytes.first()?) == 0 {
        return None;
    }
    // The remaining length: 1 to 4 bytes, 7 bits each, high bit set on all but the last.
    let mut at = 1;
    while bytes.get(at)? & 0x80 != 0 {
        at += 1;
        if at > 4 {
            return None;
        }
    }
    at += 1;
    let topic_len = usize::from(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]));
    let id = at + 2 + topic_len;
    Some(u16::from_be_bytes([*bytes.get(id)?, *bytes.get(id + 1)?]))
}

/// The QoS of a PUBLISH from the first byte of its fixed header.
pub fn publish_qos(first: u8) -> u8 {
    (first >> 1) & 0b11
}

/// The MQTT 5 Maximum Packet Size for a broker that reads at most `max_remaining` bytes after
/// a fixed header (rumqttd's limit is on the remaining length; the property counts the whole
/// packet).
pub fn packet_size_limit(max_remaining: usize) -> u32 {
    u32::try_from(max_remaining + 1 + varint_len(max_remaining)).unwrap_or(u32::MAX)
}

/// Writes a QoS 1 PUBLISH (no DUP, no retain; MQTT 5: no properties) to `out`.
pub fn write_qos1_publish(topic: &[u8], pkid: u16, payload: &[u8], v5: bool, out: &mut BytesMut) {
    let mut remaining = 2 + topic.len() + 2 + usize::from(v5) + payload.len();
    out.extend_from_slice(&[0x32]);
    loop {
        let mut byte = (remaining % 128) as u8;
        remaining /= 128;
        if remaining > 0 {
            byte |= 0x80;
        }
        out.extend_from_slice(&[byte]);
        if remaining == 0 {
            break;
        }
    }
    out.extend_from_slice(&u16::try_from(topic.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(topic);
    out.extend_from_slice(&pkid.to_be_bytes());
    if v5 {
        out.extend_from_slice(&[0]);
    }
    out.extend_from_slice(payload);
}

/// The largest remaining length of a packet of at most `max_packet` bytes in all: what
/// rumqttd's limit (on the remaining length) is set to for `broker.limits.max_packet_size`.
pub fn remaining_limit(max_packet: usize) -> usize {
    (1..=4)
        .filter_map(|len_bytes| {
            let remaining = max_packet.checked_sub(1 + len_bytes)?;
            (varint_len(remaining) <= len_bytes).then_some(remaining)
        })
        .max()
        .unwrap_or(0)
}

/// Bytes of a remaining-length field for `n`.
fn varint_len(n: usize) -> usize {
    let mut len_bytes = 1;
    let mut rest = n >> 7;
    while rest > 0 {
        len_bytes += 1;
        rest >>= 7;
    }
    len_bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_pkid_is_read_from_the_bytes() {
        // QoS 1, remaining length 15, topic "sensors/a", packet id 0x0102, payload "21".
        assert_eq!(
            publish_pkid(b"\x32\x0f\x00\x09sensors/a\x01\x0221"),
            Some(0x0102)
        );
        assert_eq!(publish_pkid(b"\x30\x0d\x00\x09sensors/a21"), None, "QoS 0");
        assert_eq!(publish_pkid(b"\x32\x0f\x00\x09sens"), None, "cut short");
        assert_eq!(
            publish_pkid(b"\x32\x80\x80\x80\x80\x01"),
            None,
            "bad length"
        );
    }

    #[test]
    fn publish_qos_is_read_from_the_fixed_header() {
        assert_eq!(publish_qos(0x30), 0);
        assert_eq!(publish_qos(0x32), 1);
        assert_eq!(publish_qos(0x3B), 1); // dup, QoS 1, retain
        assert_eq!(publish_qos(0x34), 2);
    }

    #[test]
    fn the_maximum_packet_size_counts_the_fixed_header() {
        assert_eq!(packet_size_limit(127), 129);
        assert_eq!(packet_size_limit(1024), 1027);
        assert_eq!(packet_size_limit(1_048_576), 1_048_580);
        for max in [64, 129, 130, 131, 4096, 16_386, 1_048_576] {
            let remaining = remaining_limit(max);
            assert!(packet_size_limit(remaining) as usize <= max, "{max}");
            assert!(packet_size_limit(remaining + 1) as usize > max, "{max}");
        }
        assert_eq!(packet_size_limit(remaining_limit(4096)), 4096);
    }
}
