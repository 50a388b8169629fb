//! Pure types and formats shared by every edgewatch crate. No I/O, no async runtime.
//!
//! # Layout
//! * [`reading`]: the [`Reading`] a sensor reports, and the series it belongs to.
//! * [`topic`]: MQTT topic names and topic filters: parsing and matching.
//! * [`permissions`]: who may read and publish what (grants with `%u`/`%c`), asked by every
//!   transport.
//! * [`payload`]: decoding an MQTT publish (topic + payload bytes) into a [`Reading`] or a
//!   device presence change.
//! * [`timefmt`]: event times: RFC 3339 and epoch milliseconds.
//! * [`filter_index`]: a trie of subscribers' topic filters for cheap matching in the fan-out.
//! * [`frame`]: the serial formats: postcard + COBS frames and `metric=value` text lines.
//! * [`setting`]: [`InvalidSetting`], the typed error of every config check.

pub mod filter_index;
pub mod frame;
pub mod payload;
pub mod permissions;
pub mod reading;
pub mod setting;
pub mod timefmt;
pub mod topic;

pub use filter_index::FilterIndex;
pub use frame::{FrameDecoder, FrameError, LineDecoder, TextReading};
pub use payload::{
    decode, decode_publish, is_reading_topic, CompactReading, DecodeError, Decoded, Inbound,
};
pub use reading::{Reading, SeriesKey, SeriesTopic};
pub use setting::InvalidSetting;
pub use timefmt::TimeError;
pub use topic::{FilterError, TopicFilter, MAX_FILTER_BYTES, MAX_FILTER_LEVELS};

/// How many characters of an offending input error messages quote.
pub(crate) const QUOTE_LIMIT: usize = 64;

/// The start of `s` for an error message: at most [`QUOTE_LIMIT`] characters, with `…` when cut.
pub(crate) fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_LIMIT) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}
