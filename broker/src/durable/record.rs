//! The records of [`super::Durable`] as the [`StateStore`] keeps them: keys and values are
//! bytes, so the store needs no knowledge of MQTT.
//!
//! | key | value |
//! | --- | --- |
//! | `R` topic | a retained message: format byte 1, QoS, payload; or with an MQTT 5 message expiry: format byte 2, QoS, when it expires (epoch ms, i64 BE), payload |
//! | `S` client id | a persistent session: format byte 1, then [`SessionRecord`] (postcard) |
//! | `Q` client id length (u16 BE), client id, sequence (u64 BE) | a message queued for an offline session: format byte 1, QoS, topic length (u16 BE), topic, payload |

use serde::{Deserialize, Serialize};

/// Every (key, value) of a [`StateStore`].
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Where the broker's state is written: a small key-value store, implemented by the
/// composition (the hub: a sled tree of the bridge's store). Calls come from the broker's
/// connection tasks and must not wait long (no disk sync per call).
pub trait StateStore: Send + Sync {
    /// Inserts or replaces `key`.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), String>;
    /// Deletes `key` (absent: nothing to do).
    fn remove(&self, key: &[u8]) -> Result<(), String>;
    /// Every entry, for the restore at start.
    fn entries(&self) -> Result<Entries, String>;
}

/// One persistent session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Whether the client spoke MQTT 5.
    pub v5: bool,
    /// MQTT 5 session expiry interval, seconds; `None`: never (MQTT 3.1.1, or 0xFFFFFFFF).
    pub expiry_secs: Option<u32>,
    /// When its last connection ended, epoch ms; `None` while connected (or never recorded:
    /// the hub was killed while it was connected).
    pub disconnected_at_ms: Option<i64>,
    /// Granted filters and their QoS.
    pub filters: Vec<(String, u8)>,
}

/// Format byte of every value.
const FORMAT: u8 = 1;
/// Format byte of a retained message with an expiry.
const EXPIRING: u8 = 2;
const RETAINED: u8 = b'R';
const SESSION: u8 = b'S';
const QUEUED: u8 = b'Q';

pub(super) fn retained_key(topic: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 1);
    k.push(RETAINED);
    k.extend_from_slice(topic);
    k
}

pub(super) fn session_key(client_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(client_id.len() + 1);
    k.push(SESSION);
    k.extend_from_slice(client_id.as_bytes());
    k
}

pub(super) fn retained_value(qos: u8, payload: &[u8], expires_at_ms: Option<i64>) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 10);
    match expires_at_ms {
        None => v.extend_from_slice(&[FORMAT, qos]),
        Some(at) => {
            v.extend_from_slice(&[EXPIRING, qos]);
            v.extend_from_slice(&at.to_be_bytes());
        }
    }
    v.extend_from_slice(payload);
    v
}

pub(super) fn session_value(record: &SessionRecord) -> Vec<u8> {
    let mut v = vec![FORMAT];
    // Serialising plain owned data into a Vec cannot fail; an empty record would be read back
    // as unreadable and skipped.
    v.extend(postcard::to_allocvec(record).unwrap_or_default());
    v
}

pub(super) fn queued_key(client_id: &str, seq: u64) -> Vec<u8> {
    let id = client_id.as_bytes();
    let mut k = Vec::with_capacity(id.len() + 11);
    k.push(QUEUED);
    k.extend_from_slice(&u16::try_from(id.len()).unwrap_or(u16::MAX).to_be_bytes());
    k.extend_from_slice(id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn queued_value(qos: u8, topic: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(topic.len() + payload.len() + 4);
    v.extend_from_slice(&[FORMAT, qos]);
    v.extend_from_slice(&u16::try_from(topic.len()).unwrap_or(u16::MAX).to_be_bytes());
    v.extend_from_slice(topic);
    v.extend_from_slice(payload);
    v
}

/// One stored entry, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Entry {
    /// Topic, QoS, payload, when it expires (epoch ms).
    Retained(Vec<u8>, u8, Vec<u8>, Option<i64>),
    /// Client id and its session.
    Session(String, SessionRecord),
    /// Client id, sequence, and a message queued for it.
    Queued(String, u64, super::queue::Queued),
}

/// Reads one entry; `None` for one this build cannot read (skipped and logged by the caller).
pub(super) fn read(key: &[u8], value: &[u8]) -> Option<Entry> {
    let (&tag, name) = key.split_first()?;
    let (&format, body) = value.split_first()?;
    match (tag, format) {
        (RETAINED, FORMAT | EXPIRING) => {
            let (&qos, mut payload) = body.split_first()?;
            let mut expires = None;
            if format == EXPIRING {
                let (at, rest) = payload.split_first_chunk::<8>()?;
                expires = Some(i64::from_be_bytes(*at));
                payload = rest;
            }
            (!name.is_empty() && !payload.is_empty() && qos <= 2)
                .then(|| Entry::Retained(name.to_vec(), qos, payload.to_vec(), expires))
        }
        (QUEUED, FORMAT) => read_queued(key, name, body),
        (SESSION, FORMAT) => {
            let id = String::from_utf8(name.to_vec()).ok()?;
            let record = postcard::from_bytes(body).ok()?;
            (!id.is_empty()).then_some(Entry::Session(id, record))
        }
        _ => None,
    }
}

/// A queued message's entry: `name` is the key after its tag, `body` the value after its
/// format byte.
fn read_queued(key: &[u8], name: &[u8], body: &[u8]) -> Option<Entry> {
    let (len, rest) = name.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    let (id, seq) = (rest.get(..len)?, rest.get(len..)?);
    let seq = u64::from_be_bytes(seq.try_into().ok()?);
    let id = String::from_utf8(id.to_vec()).ok()?;
    let (&qos, rest) = body.split_first()?;
    let (tlen, rest) = rest.split_first_chunk::<2>()?;
    let tlen = usize::from(u16::from_be_bytes(*tlen));
    let (topic, payload) = (rest.get(..tlen)?, rest.get(tlen..)?);
    let message = super::queue::Queued {
        key: key.to_vec(),
        topic: bytes::Bytes::copy_from_slice(topic),
        qos,
        payload: bytes::Bytes::copy_from_slice(payload),
    };
    (!id.is_empty() && !topic.is_empty() && (1..=2).contains(&qos))
        .then_some(Entry::Queued(id, seq, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_bad_ones_are_skipped() {
        let k = retained_key(b"sensors/d1/status");
        let v = retained_value(1, b"offline", None);
        let topic = b"sensors/d1/status".to_vec();
        let entry = Entry::Retained(topic.clone(), 1, b"offline".to_vec(), None);
        assert_eq!(read(&k, &v), Some(entry));
        let v = retained_value(0, b"x", Some(-5));
        assert_eq!(
            read(&k, &v),
            Some(Entry::Retained(topic, 0, b"x".to_vec(), Some(-5)))
        );
        assert_eq!(read(&k, &[EXPIRING, 0, 1, 2]), None, "expiry cut short");
        let record = SessionRecord {
            v5: true,
            expiry_secs: Some(30),
            disconnected_at_ms: None,
            filters: vec![("a/#".into(), 1)],
        };
        let (k, v) = (session_key("c1"), session_value(&record));
        assert_eq!(read(&k, &v), Some(Entry::Session("c1".into(), record)));
        assert_eq!(read(&k, &[2, 0]), None, "unknown format");
        assert_eq!(read(&k, &[FORMAT, 0xff]), None, "truncated record");
        assert_eq!(read(b"R", &retained_value(0, b"x", None)), None, "no topic");
        assert_eq!(
            read(&retained_key(b"t"), &[FORMAT, 3, b'x']),
            None,
            "bad QoS"
        );
        assert_eq!(read(b"Xkey", &v), None, "unknown tag");
        let (k, v) = (queued_key("c1", 7), queued_value(1, b"cmd/c1", b"go"));
        let Some(Entry::Queued(id, seq, m)) = read(&k, &v) else {
            panic!("a queued message reads back");
        };
        assert_eq!((id.as_str(), seq, m.qos), ("c1", 7, 1));
        assert_eq!(
            (&m.topic[..], &m.payload[..], m.key),
            (&b"cmd/c1"[..], &b"go"[..], k)
        );
        assert_eq!(read(&queued_key("c1", 7)[..5], &v), None, "key cut short");
        assert_eq!(read(b"", b""), None);
    }
}
