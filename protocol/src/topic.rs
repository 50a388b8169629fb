//! MQTT topic names and topic filters: validation and matching.
//!
//! The rules are those of MQTT 3.1.1 and 5 (sections 4.7 of both specifications), so a browser
//! subscribing over SSE or WebSocket gets exactly what an MQTT client with the same filter would:
//!
//! * topics and filters are split into levels on `/`; empty levels are allowed (`a//b`);
//! * `+` matches exactly one level, including an empty one;
//! * `#` matches the parent level and any number of child levels (`sensors/#` matches
//!   `sensors`, `sensors/d1` and `sensors/d1/temperature`); it must be the last level;
//! * wildcards must occupy a whole level (`a/b+` and `a/#b` are invalid);
//! * a filter whose first level is a wildcard does not match topics starting with `$`
//!   (`#` does not match `$SYS/broker/uptime`, `$SYS/#` does);
//! * topics and filters are non-empty, contain no NUL character and are at most 65535 bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::quote;

/// Longest topic name or filter MQTT can carry: its length is a 16-bit prefix.
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Most bytes of a topic filter a client gives the hub's HTTP side (live streams, history) or
/// the config: [`TopicFilter::parse_bounded`]. The readings' own topics are short
/// (`sensors/{deviceId}/{metric}`); the bound keeps what one request may make the hub hold and
/// walk small.
pub const MAX_FILTER_BYTES: usize = 1024;

/// Most levels of a topic filter a client gives the hub's HTTP side or the config: see
/// [`MAX_FILTER_BYTES`]. Matching work and the depth of the live filter index follow it.
pub const MAX_FILTER_LEVELS: usize = 32;

/// Why a topic filter or a topic name was rejected.
///
/// Every message names the input (truncated to 64 characters) and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The filter or topic name was the empty string.
    #[error("invalid {kind}: it is empty")]
    Empty {
        /// `"topic filter"` or `"topic name"`.
        kind: &'static str,
    },
    /// Longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("invalid {kind} {input:?}: {len} bytes, the maximum is 65535")]
    TooLong {
        /// `"topic filter"` or `"topic name"`.
        kind: &'static str,
        /// The start of the input.
        input: String,
        /// Its length in bytes.
        len: usize,
    },
    /// More bytes or levels than a bounded parse allows ([`TopicFilter::parse_bounded`]).
    #[error("invalid topic filter {filter:?}: {count} {what}, the maximum is {max}")]
    OverBound {
        /// The filter (truncated).
        filter: String,
        /// `"bytes"` or `"levels"`.
        what: &'static str,
        /// How many it has.
        count: usize,
        /// How many are allowed.
        max: usize,
    },
    /// Contains a NUL character, which MQTT forbids in UTF-8 strings.
    #[error("invalid {kind} {input:?}: NUL character at byte {position}")]
    NulChar {
        /// `"topic filter"` or `"topic name"`.
        kind: &'static str,
        /// The input (truncated).
        input: String,
        /// Byte offset of the first NUL.
        position: usize,
    },
    /// A `+` or `#` shares its level with other characters, as in `a/b#` or `+x/y`.
    #[error(
        "invalid topic filter {filter:?}: '{wildcard}' must occupy a whole level (level {level})"
    )]
    PartialWildcard {
        /// The filter (truncated).
        filter: String,
        /// The wildcard found: `+` or `#`.
        wildcard: char,
        /// 1-based level number.
        level: usize,
    },
    /// A `#` level is followed by further levels, as in `a/#/b`.
    #[error(
        "invalid topic filter {filter:?}: '#' must be the last level (found at level {level} of {levels})"
    )]
    HashNotLast {
        /// The filter (truncated).
        filter: String,
        /// 1-based level number of the `#`.
        level: usize,
        /// Number of levels in the filter.
        levels: usize,
    },
    /// A topic name (what a client publishes to) contains a wildcard character.
    #[error(
        "invalid topic name {topic:?}: '{wildcard}' at byte {position} is a wildcard, only allowed in filters"
    )]
    WildcardInTopicName {
        /// The topic name (truncated).
        topic: String,
        /// The wildcard found: `+` or `#`.
        wildcard: char,
        /// Byte offset of the wildcard.
        position: usize,
    },
}

impl FilterError {
    /// A stable snake_case label for this kind of error, e.g. for a metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            FilterError::Empty { .. } => "empty",
            FilterError::TooLong { .. } => "too_long",
            FilterError::OverBound { what: "levels", .. } => "too_many_levels",
            FilterError::OverBound { .. } => "too_long",
            FilterError::NulChar { .. } => "nul_char",
            FilterError::PartialWildcard { .. } => "partial_wildcard",
            FilterError::HashNotLast { .. } => "hash_not_last",
            FilterError::WildcardInTopicName { .. } => "wildcard_in_topic_name",
        }
    }
}

/// The checks topic names and filters share: non-empty, not too long, no NUL.
fn check_common(kind: &'static str, s: &str) -> Result<(), FilterError> {
    if s.is_empty() {
        return Err(FilterError::Empty { kind });
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(FilterError::TooLong {
            kind,
            input: quote(s),
            len: s.len(),
        });
    }
    if let Some(position) = s.find('\0') {
        return Err(FilterError::NulChar {
            kind,
            input: quote(s),
            position,
        });
    }
    Ok(())
}

/// Checks a topic name a client publishes to: non-empty, at most 65535 bytes, no NUL and no
/// wildcard (`+`, `#`).
pub fn validate_topic_name(topic: &str) -> Result<(), FilterError> {
    check_common("topic name", topic)?;
    if let Some(position) = topic.find(['+', '#']) {
        let wildcard = if topic.as_bytes()[position] == b'+' {
            '+'
        } else {
            '#'
        };
        return Err(FilterError::WildcardInTopicName {
            topic: quote(topic),
            wildcard,
            position,
        });
    }
    Ok(())
}

/// A validated MQTT topic filter such as `sensors/+/temperature` or `sensors/#`.
///
/// Construct it with [`TopicFilter::parse`] (or `str::parse`); it serialises as its string and
/// deserialising validates it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TopicFilter {
    filter: String,
}

impl TopicFilter {
    /// Parses and validates a topic filter. See the [module documentation](self) for the rules.
    pub fn parse(s: &str) -> Result<TopicFilter, FilterError> {
        check_common("topic filter", s)?;
        let levels = s.split('/').count();
        for (index, level) in s.split('/').enumerate() {
            let number = index + 1;
            for wildcard in ['+', '#'] {
                if level.contains(wildcard) && level.len() != 1 {
                    return Err(FilterError::PartialWildcard {
                        filter: quote(s),
                        wildcard,
                        level: number,
                    });
                }
            }
            if level == "#" && number != levels {
                return Err(FilterError::HashNotLast {
                    filter: quote(s),
                    level: number,
                    levels,
                });
            }
        }
        Ok(TopicFilter {
            filter: s.to_owned(),
        })
    }

    /// Parses like [`TopicFilter::parse`], refusing filters of more than [`MAX_FILTER_BYTES`]
    /// bytes or [`MAX_FILTER_LEVELS`] levels: every filter the hub takes from an HTTP or
    /// WebSocket client or from the config goes through here.
    pub fn parse_bounded(s: &str) -> Result<TopicFilter, FilterError> {
        let levels = s.split('/').count();
        if levels > MAX_FILTER_LEVELS {
            return Err(FilterError::OverBound {
                filter: quote(s),
                what: "levels",
                count: levels,
                max: MAX_FILTER_LEVELS,
            });
        }
        if s.len() > MAX_FILTER_BYTES {
            return Err(FilterError::OverBound {
                filter: quote(s),
                what: "bytes",
                count: s.len(),
                max: MAX_FILTER_BYTES,
            });
        }
        Self::parse(s)
    }

    /// Whether the topic name `topic` matches this filter.
    ///
    /// `topic` is not validated; a topic containing wildcard characters simply compares them as
    /// ordinary characters.
    pub fn matches(&self, topic: &str) -> bool {
        if topic.starts_with('$') && self.starts_with_wildcard() {
            return false;
        }
        let mut topic_levels = topic.split('/');
        for level in self.levels() {
            match level {
                "#" => return true,
                "+" => {
                    if topic_levels.next().is_none() {
                        return false;
                    }
                }
                literal => {
                    if topic_levels.next() != Some(literal) {
                        return false;
                    }
                }
            }
        }
        topic_levels.next().is_none()
    }

    /// The filter as written.
    pub fn as_str(&self) -> &str {
        &self.filter
    }

    /// The filter's levels as written, wildcards included: `sensors/+/#` yields `sensors`, `+`
    /// and `#`.
    pub fn levels(&self) -> impl Iterator<Item = &str> {
        self.filter.split('/')
    }

    /// Whether the filter contains a `+` or `#` level (otherwise it matches exactly one topic).
    pub fn has_wildcards(&self) -> bool {
        self.levels().any(|level| level == "+" || level == "#")
    }

    /// Whether the first level is a wildcard (such filters do not match `$` topics).
    fn starts_with_wildcard(&self) -> bool {
        matches!(self.filter.as_bytes().first(), Some(b'+' | b'#'))
    }
}

impl FromStr for TopicFilter {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TopicFilter::parse(s)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.filter)
    }
}

impl AsRef<str> for TopicFilter {
    fn as_ref(&self) -> &str {
        &self.filter
    }
}

impl Serialize for TopicFilter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.filter)
    }
}

impl<'de> Deserialize<'de> for TopicFilter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        TopicFilter::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::parse(s).unwrap()
    }

    #[test]
    fn exact_and_single_level() {
        let f = filter("sensors/+/temperature");
        assert!(f.matches("sensors/d1/temperature"));
        assert!(f.matches("sensors//temperature"));
        assert!(!f.matches("sensors/d1/humidity"));
        assert!(!f.matches("sensors/d1/temperature/x"));
        assert!(!f.matches("sensors/temperature"));
        assert!(filter("a/b").matches("a/b"));
        assert!(!filter("a/b").matches("a/b/"));
        assert!(filter("+").matches(""));
        assert!(filter("a/+").matches("a/"));
        assert!(!filter("+").matches("a/b"));
        assert!(filter("+/+").matches("/"));
    }

    #[test]
    fn multi_level() {
        let f = filter("sensors/#");
        assert!(f.matches("sensors"));
        assert!(f.matches("sensors/"));
        assert!(f.matches("sensors/d1"));
        assert!(f.matches("sensors/d1/temperature"));
        assert!(!f.matches("sensorsx"));
        assert!(!f.matches("other/d1"));
        assert!(filter("#").matches("a/b/c"));
        assert!(filter("#").matches("/"));
        assert!(filter("sensors/+/#").matches("sensors/d1"));
        assert!(!filter("sensors/+/#").matches("sensors"));
    }

    #[test]
    fn dollar_topics() {
        assert!(!filter("#").matches("$SYS/uptime"));
        assert!(!filter("+/uptime").matches("$SYS/uptime"));
        assert!(filter("$SYS/#").matches("$SYS/uptime"));
        assert!(filter("$SYS/+").matches("$SYS/uptime"));
        assert!(filter("a/#").matches("a/$b"));
        assert!(filter("+/$b").matches("a/$b"));
    }

    #[test]
    fn invalid_filters() {
        assert_eq!(
            TopicFilter::parse(""),
            Err(FilterError::Empty {
                kind: "topic filter"
            })
        );
        let err = TopicFilter::parse("a/b#").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid topic filter \"a/b#\": '#' must occupy a whole level (level 2)"
        );
        let err = TopicFilter::parse("a/#/b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid topic filter \"a/#/b\": '#' must be the last level (found at level 2 of 3)"
        );
        assert_eq!(err.reason(), "hash_not_last");
        let err = TopicFilter::parse("+x/y").unwrap_err();
        assert_eq!(
            err,
            FilterError::PartialWildcard {
                filter: "+x/y".into(),
                wildcard: '+',
                level: 1
            }
        );
        assert!(matches!(
            TopicFilter::parse("##"),
            Err(FilterError::PartialWildcard { .. })
        ));
        let err = TopicFilter::parse("a/\0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid topic filter \"a/\\0\": NUL character at byte 2"
        );
        let long = "a".repeat(MAX_TOPIC_LEN + 1);
        let err = TopicFilter::parse(&long).unwrap_err();
        assert!(matches!(err, FilterError::TooLong { len: 65_536, .. }));
        assert!(err.to_string().contains("65536 bytes"));
        assert!(
            err.to_string().len() < 200,
            "message quotes a truncated input"
        );
        assert!(TopicFilter::parse(&"a".repeat(MAX_TOPIC_LEN)).is_ok());
    }

    #[test]
    fn valid_filters() {
        for s in [
            "#",
            "+",
            "/",
            "a//b",
            "+/+/#",
            "$SYS/#",
            "sensors/d1/temperature",
            " ",
        ] {
            let f = filter(s);
            assert_eq!(f.as_str(), s);
            assert_eq!(f.to_string(), s);
            assert_eq!(s.parse::<TopicFilter>().unwrap(), f);
        }
        assert_eq!(
            filter("a/+/#").levels().collect::<Vec<_>>(),
            ["a", "+", "#"]
        );
        assert_eq!(filter("/").levels().collect::<Vec<_>>(), ["", ""]);
        assert!(filter("a/+").has_wildcards());
        assert!(!filter("a/b").has_wildcards());
    }

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("sensors/d1/temperature").is_ok());
        assert!(validate_topic_name("/").is_ok());
        assert_eq!(
            validate_topic_name(""),
            Err(FilterError::Empty { kind: "topic name" })
        );
        let err = validate_topic_name("sensors/+/t").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid topic name \"sensors/+/t\": '+' at byte 8 is a wildcard, only allowed in filters"
        );
        assert!(matches!(
            validate_topic_name("a#"),
            Err(FilterError::WildcardInTopicName {
                wildcard: '#',
                position: 1,
                ..
            })
        ));
        assert!(matches!(
            validate_topic_name("a\0"),
            Err(FilterError::NulChar { .. })
        ));
        assert!(matches!(
            validate_topic_name(&"x".repeat(70_000)),
            Err(FilterError::TooLong { .. })
        ));
    }

    #[test]
    fn serde_as_string() {
        let f = filter("sensors/+/temperature");
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(json, "\"sensors/+/temperature\"");
        assert_eq!(serde_json::from_str::<TopicFilter>(&json).unwrap(), f);
        let err = serde_json::from_str::<TopicFilter>("\"a/#/b\"").unwrap_err();
        assert!(
            err.to_string().contains("'#' must be the last level"),
            "{err}"
        );
    }

    /// Obviously-correct reference: recursive over level lists.
    fn reference_matches(filter: &str, topic: &str) -> bool {
        fn go(f: &[&str], t: &[&str]) -> bool {
            match (f.first(), t.first()) {
                (Some(&"#"), _) => true,
                (None, None) => true,
                (None, Some(_)) => false,
                (Some(_), None) => false,
                (Some(&"+"), Some(_)) => go(&f[1..], &t[1..]),
                (Some(fl), Some(tl)) => fl == tl && go(&f[1..], &t[1..]),
            }
        }
        if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
            return false;
        }
        let f: Vec<&str> = filter.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        go(&f, &t)
    }

    fn filter_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec!["a", "b", "", "$sys", "+", "#"]),
            1..6,
        )
        .prop_map(|levels| levels.join("/"))
    }

    fn topic_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "", "$sys"]), 1..6)
            .prop_map(|levels| levels.join("/"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn matches_agrees_with_reference(f in filter_strategy(), t in topic_strategy()) {
            match TopicFilter::parse(&f) {
                Ok(parsed) => prop_assert_eq!(parsed.matches(&t), reference_matches(&f, &t)),
                Err(FilterError::HashNotLast { .. }) => {
                    prop_assert!(f.split('/').rev().skip(1).any(|l| l == "#"));
                }
                Err(FilterError::Empty { .. }) => prop_assert!(f.is_empty()),
                Err(e) => prop_assert!(false, "unexpected error for {:?}: {}", f, e),
            }
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            if let Ok(f) = TopicFilter::parse(&s) {
                prop_assert_eq!(f.as_str(), s.as_str());
                let _ = f.matches(&s);
            }
            let _ = validate_topic_name(&s);
        }

        #[test]
        fn bounded_parse_never_panics_and_keeps_its_bounds(s in "[a/+#$ ]{0,3000}") {
            if let Ok(f) = TopicFilter::parse_bounded(&s) {
                prop_assert!(s.len() <= MAX_FILTER_BYTES);
                prop_assert!(s.split('/').count() <= MAX_FILTER_LEVELS);
                let _ = f.matches(&s);
            }
        }
    }

    #[test]
    fn bounded_parse_refuses_long_and_deep_filters() {
        let levels = |n: usize| format!("sensors{}", "/+".repeat(n - 1));
        assert!(TopicFilter::parse_bounded(&levels(32)).is_ok());
        let err = TopicFilter::parse_bounded(&levels(33)).unwrap_err();
        assert_eq!(err.reason(), "too_many_levels");
        assert!(
            err.to_string().contains("33 levels, the maximum is 32"),
            "{err}"
        );
        let deep = format!("sensors{}", "/".repeat(7000));
        assert_eq!(
            TopicFilter::parse_bounded(&deep).unwrap_err().reason(),
            "too_many_levels"
        );
        let long = format!("sensors/{}", "x".repeat(1100));
        let err = TopicFilter::parse_bounded(&long).unwrap_err();
        assert_eq!(err.reason(), "too_long");
        assert!(
            err.to_string().contains("1108 bytes, the maximum is 1024"),
            "{err}"
        );
        assert!(
            TopicFilter::parse(&long).is_ok(),
            "the unbounded parse keeps MQTT's limit"
        );
    }
}
