//! Event times: the current time, parsing RFC 3339 or epoch milliseconds, formatting RFC 3339.
//!
//! Inside edgewatch every time is an `i64` of milliseconds since the Unix epoch, UTC. This module
//! converts at the edges: what devices and API callers write, and what the JSON API prints.

use std::time::{SystemTime, UNIX_EPOCH};

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
    let parsed = OffsetDateTime::parse(trimmed, &time::format_description::well_known::Rfc3339)
        .map_err(|e| TimeError::Invalid {
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
    Rfc3339::new(ms).as_str().to_owned()
}

/// A time formatted as RFC 3339 (UTC, milliseconds) in a fixed 24-byte buffer: what
/// [`format_rfc3339`] returns, without allocating. History answers format two times per
/// reading and one per rollup point, tens of thousands per request.
#[derive(Clone, Copy)]
pub struct Rfc3339 {
    buf: [u8; 24],
}

impl Rfc3339 {
    /// Formats `ms` (clamped to years 0000..=9999).
    pub fn new(ms: i64) -> Self {
        let ms = ms.clamp(MIN_FORMAT_MS, MAX_FORMAT_MS);
        let days = ms.div_euclid(86_400_000);
        let in_day = ms.rem_euclid(86_400_000);
        let (year, month, day) = civil_from_days(days);
        let mut buf = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut v: i64| {
            for i in (at..at + width).rev() {
                // In range: every field is non-negative and fits its width after the clamp.
                buf[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, in_day / 3_600_000);
        put(14, 2, in_day / 60_000 % 60);
        put(17, 2, in_day / 1_000 % 60);
        put(20, 3, in_day % 1_000);
        Self { buf }
    }

    /// The formatted time.
    pub fn as_bytes(&self) -> &[u8; 24] {
        &self.buf
    }

    /// The formatted time.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and the fixed separators are ever written.
        std::str::from_utf8(&self.buf).unwrap_or("0000-01-01T00:00:00.000Z")
    }
}

/// Formats many times that mostly fall on the same UTC day (a page of readings, a day of
/// rollup buckets) like [`Rfc3339`]: the calendar date is worked out once per day.
#[derive(Debug, Clone, Default)]
pub struct Rfc3339Days {
    day: Option<i64>,
    date: [u8; 11],
}

impl Rfc3339Days {
    /// `ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ`, the same bytes as `Rfc3339::new(ms)`.
    pub fn format(&mut self, ms: i64) -> [u8; 24] {
        let ms = ms.clamp(MIN_FORMAT_MS, MAX_FORMAT_MS);
        let day = ms.div_euclid(86_400_000);
        if self.day != Some(day) {
            self.date.copy_from_slice(&Rfc3339::new(ms).buf[..11]);
            self.day = Some(day);
        }
        // 0..86_400_000 fits a u32.
        let in_day = ms.rem_euclid(86_400_000) as u32;
        let mut buf = *b"0000-00-00T00:00:00.000Z";
        buf[..11].copy_from_slice(&self.date);
        let two = |buf: &mut [u8; 24], at: usize, v: u32| {
            buf[at] = b'0' + (v / 10) as u8;
            buf[at + 1] = b'0' + (v % 10) as u8;
        };
        two(&mut buf, 11, in_day / 3_600_000);
        two(&mut buf, 14, in_day / 60_000 % 60);
        two(&mut buf, 17, in_day / 1_000 % 60);
        let milli = in_day % 1_000;
        buf[20] = b'0' + (milli / 100) as u8;
        two(&mut buf, 21, milli % 100);
        buf
    }
}

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// (year, month, day) of the proleptic Gregorian calendar for days since 1970-01-01.
///
/// Counts in 400-year eras of 146,097 days, with years starting on 1 March so that the leap day
/// is the last day of the year; then maps March-based months back to January-based ones.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // 0..=146_096
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let march_month = (5 * day_of_year + 2) / 153; // 0 = March .. 11 = February
    let day = day_of_year - (153 * march_month + 2) / 5 + 1;
    let month = if march_month < 10 {
        march_month + 3
    } else {
        march_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The `time` crate's answer, the oracle for [`Rfc3339`].
    fn oracle(ms: i64) -> String {
        let ms = ms.clamp(MIN_FORMAT_MS, MAX_FORMAT_MS);
        let dt = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
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

    #[test]
    fn formats_like_the_time_crate_at_the_edges() {
        for ms in [
            i64::MIN,
            MIN_FORMAT_MS - 1,
            MIN_FORMAT_MS,
            -62_135_596_800_001, // 0000-12-31T23:59:59.999Z
            -1,
            0,
            1,
            951_782_400_000, // 2000-02-29
            951_868_799_999,
            4_107_542_400_000, // 2100-03-01
            T,
            MAX_FORMAT_MS,
            MAX_FORMAT_MS + 1,
            i64::MAX,
        ] {
            assert_eq!(Rfc3339::new(ms).as_str(), oracle(ms), "{ms}");
        }
    }

    proptest! {
        #[test]
        fn formats_like_the_time_crate(ms in MIN_FORMAT_MS - 1_000..MAX_FORMAT_MS + 1_000) {
            prop_assert_eq!(format_rfc3339(ms), oracle(ms));
        }

        /// Runs of nearby times (same day, next day, far away) through one day cache.
        #[test]
        fn day_cache_formats_like_rfc3339(
            start in MIN_FORMAT_MS - 1_000..MAX_FORMAT_MS + 1_000,
            steps in proptest::collection::vec(-200_000_000i64..200_000_000, 1..40),
        ) {
            let mut days = Rfc3339Days::default();
            let mut ms = start;
            for step in steps {
                let want = Rfc3339::new(ms);
                prop_assert_eq!(&days.format(ms), want.as_bytes());
                ms = ms.saturating_add(step);
            }
        }
    }

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
