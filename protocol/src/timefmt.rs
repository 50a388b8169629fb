//! Event times: the current time, parsing RFC 3339 or epoch milliseconds, formatting RFC 3339.
//!
//! Inside edgewatch every time is an `i64` of milliseconds since the Unix epoch, UTC. This module
//! converts at the edges: what devices and API callers write, and what the JSON API prints.

use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::quote;

/// Earliest time [`format_rfc3339`] prints: `0000-01-01T00:00:00.000Z`.
const MIN_FORMAT_MS: i64 = -62_167_219_200_000;
/// Latest time [`format_rfc3339`] prints: `9999-12-31T23:59:59.999Z`.
const MAX_FORMAT_MS: i64 = 253_402_300_799_999;

/// Why a time string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// The input was empty (or only whitespace).
    #[error(
        "invalid time \"\": expected RFC 3339 (e.g. 2026-11-28T10:00:00Z) or epoch milliseconds"
    )]
    Empty,
    /// Neither RFC 3339 nor an integer.
    #[error(
        "invalid time {input:?}: expected RFC 3339 (e.g. 2026-11-28T10:00:00Z) or epoch milliseconds ({detail})"
    )]
    Invalid {
        /// The input (truncated to 64 characters).
        input: String,
        /// What the RFC 3339 parser objected to.
        detail: String,
    },
    /// An integer too large for epoch milliseconds in an `i64`.
    #[error("invalid time {input:?}: epoch milliseconds out of range")]
    OutOfRange {
        /// The input (truncated to 64 characters).
        input: String,
    },
}

/// The current wall-clock time in epoch milliseconds (negative if the clock is before 1970).
pub fn now_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Parses a time written as RFC 3339 (any offset, optional fractional seconds, e.g.
/// `2026-11-28T10:00:00Z`, `2026-11-28T11:00:00.250+01:00`) or as integer epoch milliseconds
/// (`1795860000000`, optionally signed). Surrounding whitespace is ignored. Sub-millisecond
/// digits are truncated.
pub fn parse_time(s: &str) -> Result<i64, TimeError> {
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return Err(TimeError::Empty);
    }
    let digits = trimmed.strip_prefix(['-', '+']).unwrap_or(trimmed);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return trimmed.parse::<i64>().map_err(|_| TimeError::OutOfRange {
            input: quote(trimmed),
        });
    }
    let parsed = OffsetDateTime::parse(trimmed, &Rfc3339).map_err(|e| TimeError::Invalid {
        input: quote(trimmed),
        detail: e.to_string(),
    })?;
    let ms = parsed.unix_timestamp_nanos().div_euclid(1_000_000);
    // Four-digit years keep this far inside i64.
    i64::try_from(ms).map_err(|_| TimeError::OutOfRange {
        input: quote(trimmed),
    })
}

/// Formats epoch milliseconds as RFC 3339 in UTC with millisecond precision, e.g.
/// `2026-11-28T10:00:00.000Z`.
///
/// Times outside years 0000..=9999, which RFC 3339 cannot write, are clamped to that range.
pub fn format_rfc3339(ms: i64) -> String {
    let ms = ms.clamp(MIN_FORMAT_MS, MAX_FORMAT_MS);
    let nanos = i128::from(ms) * 1_000_000;
    // In range by the clamp above; the fallback is never taken.
    let dt = OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2026-11-28T10:00:00Z
    const T: i64 = 1_795_860_000_000;

    #[test]
    fn parses_rfc3339() {
        assert_eq!(parse_time("2026-11-28T10:00:00Z"), Ok(T));
        assert_eq!(parse_time("2026-11-28T10:00:00.5Z"), Ok(T + 500));
        assert_eq!(parse_time("2026-11-28T10:00:00.123456789Z"), Ok(T + 123));
        assert_eq!(parse_time("2026-11-28T11:00:00+01:00"), Ok(T));
        assert_eq!(parse_time("2026-11-28T05:30:00.250-04:30"), Ok(T + 250));
        assert_eq!(parse_time("  2026-11-28T10:00:00Z\n"), Ok(T));
        assert_eq!(parse_time("1969-12-31T23:59:59.999Z"), Ok(-1));
    }

    #[test]
    fn parses_epoch_ms() {
        assert_eq!(parse_time("1795860000000"), Ok(T));
        assert_eq!(parse_time(" 0 "), Ok(0));
        assert_eq!(parse_time("-1000"), Ok(-1000));
        assert_eq!(parse_time("+5"), Ok(5));
    }

    #[test]
    fn rejects_garbage_with_clear_messages() {
        assert_eq!(parse_time("  "), Err(TimeError::Empty));
        let err = parse_time("yesterday").unwrap_err();
        assert!(matches!(&err, TimeError::Invalid { input, .. } if input == "yesterday"));
        assert!(err
            .to_string()
            .starts_with("invalid time \"yesterday\": expected RFC 3339"));
        assert!(matches!(
            parse_time("2026-11-28"),
            Err(TimeError::Invalid { .. })
        ));
        assert!(matches!(
            parse_time("2026-13-28T10:00:00Z"),
            Err(TimeError::Invalid { .. })
        ));
        assert!(matches!(parse_time("1.5"), Err(TimeError::Invalid { .. })));
        assert!(matches!(parse_time("-"), Err(TimeError::Invalid { .. })));
        let err = parse_time("99999999999999999999999").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid time \"99999999999999999999999\": epoch milliseconds out of range"
        );
        let long = "x".repeat(500);
        assert!(parse_time(&long).unwrap_err().to_string().len() < 300);
    }

    #[test]
    fn formats_utc_millis() {
        assert_eq!(format_rfc3339(T), "2026-11-28T10:00:00.000Z");
        assert_eq!(format_rfc3339(T + 7), "2026-11-28T10:00:00.007Z");
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_rfc3339(i64::MIN), "0000-01-01T00:00:00.000Z");
    }

    #[test]
    fn now_is_recent() {
        let now = now_ms();
        // After 2024-01-01 and before 2100.
        assert!(now > 1_704_067_200_000 && now < 4_102_444_800_000, "{now}");
    }

    proptest! {
        #[test]
        fn format_parse_round_trip(ms in MIN_FORMAT_MS..=MAX_FORMAT_MS) {
            prop_assert_eq!(parse_time(&format_rfc3339(ms)), Ok(ms));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = parse_time(&s);
        }
    }
}
