//! The serial formats: postcard + COBS frames and `metric=value` text lines.
//!
//! # Frames
//! A frame is a postcard-encoded [`CompactReading`] followed by its CRC-16 (CCITT-FALSE:
//! polynomial 0x1021, initial value 0xFFFF, little-endian), COBS-encoded so it contains no 0x00
//! byte, and ended by a 0x00 delimiter ([`encode_frame`]). The checksum catches line noise
//! that would otherwise decode to a plausible but wrong reading. [`FrameDecoder`] takes bytes in whatever
//! chunks the port delivers and yields one result per frame. A frame that does not decode is
//! reported and skipped; decoding resumes after the next 0x00, so the stream resynchronises
//! after line noise or a device reset mid-frame.
//!
//! # Text lines
//! One reading per `\n`-terminated line: `metric=value`, optionally followed by a unit, either
//! after whitespace (`temperature=21.5 C`) or directly after the number (`humidity=40.2%`).
//! Whitespace around the parts and a trailing `\r` are ignored. [`LineDecoder`] splits a byte
//! stream into lines the way [`FrameDecoder`] splits frames.

use crate::payload::{encode_compact, is_valid_id, CompactReading, EncodeError};
use crate::quote;

/// Why a frame or a text line was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    /// More than the maximum length arrived without a delimiter; the bytes up to the next
    /// delimiter are discarded.
    #[error(
        "{kind} longer than {max_len} bytes without a delimiter: discarded up to the next delimiter"
    )]
    TooLong {
        /// `"frame"` or `"line"`.
        kind: &'static str,
        /// The decoder's maximum length in bytes.
        max_len: usize,
    },
    /// The frame's bytes are not valid COBS.
    #[error("frame of {len} bytes is not valid COBS")]
    Cobs {
        /// Encoded frame length in bytes, without the delimiter.
        len: usize,
    },
    /// The frame's checksum does not match its content (line noise), or it is too short to
    /// hold one.
    #[error(
        "frame of {len} bytes fails its CRC-16: carried {carried:#06x}, computed {computed:#06x}"
    )]
    Checksum {
        /// Encoded frame length in bytes, without the delimiter.
        len: usize,
        /// The checksum the frame carried (0 when too short to carry one).
        carried: u16,
        /// The checksum of the content received.
        computed: u16,
    },
    /// The frame is valid COBS but its content is not exactly one postcard [`CompactReading`].
    #[error("frame of {len} bytes is not a postcard CompactReading: {message}")]
    Decode {
        /// Encoded frame length in bytes, without the delimiter.
        len: usize,
        /// What postcard reported, or how many bytes were left over.
        message: String,
    },
    /// A text line that is not UTF-8.
    #[error("line is not valid UTF-8")]
    InvalidUtf8,
    /// A blank text line.
    #[error("empty line: expected metric=value")]
    EmptyLine,
    /// A text line without `=`.
    #[error("invalid line {line:?}: expected metric=value")]
    MissingEquals {
        /// The line (truncated).
        line: String,
    },
    /// A metric name that is empty, longer than 64 characters or has other characters than
    /// `A-Z a-z 0-9 _ . : -`.
    #[error("invalid metric {metric:?}: must be 1 to 64 characters of A-Z a-z 0-9 _ . : -")]
    InvalidMetric {
        /// The metric (truncated).
        metric: String,
    },
    /// The text after `=` does not start with a number.
    #[error("invalid value {value:?}: expected a number, optionally followed by a unit")]
    InvalidValue {
        /// The text after `=` (truncated).
        value: String,
    },
    /// NaN or an infinity.
    #[error("value {value:?} is not a finite number")]
    NonFiniteValue {
        /// The value as written (truncated).
        value: String,
    },
}

impl FrameError {
    /// A stable snake_case label for the kind of error, e.g. for a metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::TooLong { .. } => "too_long",
            FrameError::Cobs { .. } => "invalid_cobs",
            FrameError::Checksum { .. } => "bad_checksum",
            FrameError::Decode { .. } => "invalid_postcard",
            FrameError::InvalidUtf8 => "invalid_utf8",
            FrameError::EmptyLine => "empty_line",
            FrameError::MissingEquals { .. } => "missing_equals",
            FrameError::InvalidMetric { .. } => "invalid_metric",
            FrameError::InvalidValue { .. } => "invalid_value",
            FrameError::NonFiniteValue { .. } => "non_finite_value",
        }
    }
}

/// Encodes a reading as one serial frame: postcard and its CRC-16, then COBS, then the 0x00
/// delimiter.
pub fn encode_frame(r: &CompactReading) -> Result<Vec<u8>, EncodeError> {
    let mut raw = encode_compact(r)?;
    let crc = crc16(&raw);
    raw.extend_from_slice(&crc.to_le_bytes());
    let mut framed = cobs_encode(&raw);
    framed.push(0);
    Ok(framed)
}

/// Decodes one frame's bytes (COBS-encoded postcard and CRC-16, with or without its 0x00
/// delimiter).
pub fn decode_frame(frame: &[u8]) -> Result<CompactReading, FrameError> {
    let frame = frame.strip_suffix(&[0]).unwrap_or(frame);
    let len = frame.len();
    let decoded = cobs_decode(frame).ok_or(FrameError::Cobs { len })?;
    let Some(split) = decoded.len().checked_sub(2) else {
        return Err(FrameError::Checksum {
            len,
            carried: 0,
            computed: crc16(&decoded),
        });
    };
    let (content, tail) = decoded.split_at(split);
    let carried = u16::from_le_bytes([tail[0], tail[1]]);
    let computed = crc16(content);
    if carried != computed {
        return Err(FrameError::Checksum {
            len,
            carried,
            computed,
        });
    }
    match postcard::take_from_bytes::<CompactReading>(content) {
        Ok((reading, [])) => Ok(reading),
        Ok((_, rest)) => Err(FrameError::Decode {
            len,
            message: format!("{} bytes left over after the reading", rest.len()),
        }),
        Err(e) => Err(FrameError::Decode {
            len,
            message: e.to_string(),
        }),
    }
}

/// CRC-16/CCITT-FALSE: polynomial 0x1021, initial value 0xFFFF, no reflection, no final XOR
/// (the `crc` crate's CRC-16/IBM-3740, the same parameters under their catalogue name).
pub fn crc16(data: &[u8]) -> u16 {
    const CCITT_FALSE: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_IBM_3740);
    CCITT_FALSE.checksum(data)
}

/// COBS (consistent overhead byte stuffing): the result contains no 0x00 byte.
///
/// Written here rather than taken from the `cobs` crate (0.3, already a dependency of
/// postcard): the crate decodes broken input differently (a last block running past the end,
/// zero bytes, some blocks after a full 254-byte run), which would change how a garbled serial
/// frame is classified (`invalid_cobs` or `checksum`); found by a property test comparing both
/// on arbitrary bytes. Valid frames encode identically.
fn cobs_encode(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 254 + 2);
    let mut code_at = 0;
    out.push(0); // placeholder for the first block's code
    let mut code = 1u8;
    for &b in data {
        if b == 0 {
            out[code_at] = code;
            code_at = out.len();
            out.push(0);
            code = 1;
        } else {
            out.push(b);
            code += 1;
            if code == 0xFF {
                out[code_at] = code;
                code_at = out.len();
                out.push(0);
                code = 1;
            }
        }
    }
    out[code_at] = code;
    out
}

/// Reverses COBS (consistent overhead byte stuffing) for one frame without its delimiter.
/// `None` if the encoding is broken: a zero byte, or a block running past the end.
fn cobs_decode(src: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(src.len());
    let mut i = 0;
    while i < src.len() {
        let code = usize::from(src[i]);
        if code == 0 {
            return None;
        }
        let block = src.get(i + 1..i + code)?;
        if block.contains(&0) {
            return None;
        }
        out.extend_from_slice(block);
        i += code;
        // A block shorter than the maximum stands for data followed by a zero, except the last.
        if code != 0xFF && i < src.len() {
            out.push(0);
        }
    }
    Some(out)
}

/// Splits a byte stream on a delimiter, bounding how much it buffers.
#[derive(Debug)]
struct Delimited {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    max_len: usize,
    delimiter: u8,
    /// Dropping an over-long chunk until the next delimiter.
    discarding: bool,
}

impl Delimited {
    fn new(max_len: usize, delimiter: u8) -> Self {
        Delimited {
            buf: Vec::new(),
            start: 0,
            max_len,
            delimiter,
            discarding: false,
        }
    }

    fn push(&mut self, mut bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.discarding {
            match bytes.iter().position(|&b| b == self.delimiter) {
                Some(end) => {
                    bytes = &bytes[end + 1..];
                    self.discarding = false;
                }
                None => return,
            }
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next non-empty chunk, `Err(())` for one that is too long, `None` when more bytes are
    /// needed.
    fn next_chunk(&mut self) -> Option<Result<&[u8], ()>> {
        loop {
            let pending = &self.buf[self.start..];
            match pending.iter().position(|&b| b == self.delimiter) {
                Some(0) => self.start += 1,
                Some(len) => {
                    let chunk = self.start..self.start + len;
                    self.start += len + 1;
                    if len > self.max_len {
                        return Some(Err(()));
                    }
                    return Some(Ok(&self.buf[chunk]));
                }
                None if pending.len() > self.max_len => {
                    self.buf.clear();
                    self.start = 0;
                    self.discarding = true;
                    return Some(Err(()));
                }
                None => return None,
            }
        }
    }
}

/// Turns a stream of bytes into [`CompactReading`]s from 0x00-delimited COBS frames.
///
/// Call [`push`](Self::push) with whatever bytes arrived, then [`next_frame`](Self::next_frame)
/// until it returns `None`. It buffers at most `max_frame_len` bytes of an unfinished frame plus
/// the last pushed chunk.
#[derive(Debug)]
pub struct FrameDecoder {
    inner: Delimited,
}

impl FrameDecoder {
    /// A decoder for frames of at most `max_frame_len` encoded bytes (not counting the 0x00).
    pub fn new(max_frame_len: usize) -> Self {
        FrameDecoder {
            inner: Delimited::new(max_frame_len, 0),
        }
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.inner.push(bytes);
    }

    /// The next complete frame: `Some(Ok(..))` for a reading, `Some(Err(..))` for a frame that
    /// does not decode or is too long (decoding continues with the next frame), `None` when no
    /// complete frame is buffered. Empty frames (consecutive 0x00 bytes) are skipped.
    pub fn next_frame(&mut self) -> Option<Result<CompactReading, FrameError>> {
        let max_len = self.inner.max_len;
        Some(match self.inner.next_chunk()? {
            Ok(frame) => decode_frame(frame),
            Err(()) => Err(FrameError::TooLong {
                kind: "frame",
                max_len,
            }),
        })
    }
}

/// One `metric=value [unit]` text line.
#[derive(Debug, Clone, PartialEq)]
pub struct TextReading {
    /// Metric name, 1 to 64 characters of `A-Z a-z 0-9 _ . : -`.
    pub metric: String,
    /// The value; always finite.
    pub value: f64,
    /// Unit if the line has one.
    pub unit: Option<String>,
}

/// Parses one text line: `metric=value`, optionally followed by a unit (after whitespace, or
/// directly after the number when the unit has no digits, as in `40.2%`). Surrounding whitespace
/// and `\r` are ignored.
pub fn parse_text_line(line: &str) -> Result<TextReading, FrameError> {
    let line = line.trim();
    if line.is_empty() {
        return Err(FrameError::EmptyLine);
    }
    let (metric, rest) = line
        .split_once('=')
        .ok_or_else(|| FrameError::MissingEquals { line: quote(line) })?;
    let metric = metric.trim();
    if !is_valid_id(metric) {
        return Err(FrameError::InvalidMetric {
            metric: quote(metric),
        });
    }
    let rest = rest.trim();
    let (number, unit) = match rest.split_once(char::is_whitespace) {
        Some((number, unit)) => (number, Some(unit.trim())),
        None => (rest, None),
    };
    let (value, unit) = match (number.parse::<f64>(), unit) {
        (Ok(value), unit) => (value, unit),
        (Err(_), None) => split_attached_unit(number)
            .ok_or_else(|| FrameError::InvalidValue { value: quote(rest) })?,
        (Err(_), Some(_)) => return Err(FrameError::InvalidValue { value: quote(rest) }),
    };
    if !value.is_finite() {
        return Err(FrameError::NonFiniteValue {
            value: quote(number),
        });
    }
    Ok(TextReading {
        metric: metric.to_owned(),
        value,
        unit: unit.filter(|u| !u.is_empty()).map(str::to_owned),
    })
}

/// Splits `40.2%` into `40.2` and `%`: a number followed by a unit containing no digits.
fn split_attached_unit(token: &str) -> Option<(f64, Option<&str>)> {
    let split = token.find(|c: char| !matches!(c, '0'..='9' | '.' | '+' | '-' | 'e' | 'E'))?;
    let (number, unit) = token.split_at(split);
    if unit.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((number.parse().ok()?, Some(unit)))
}

/// Turns a stream of bytes into [`TextReading`]s, one per `\n`-terminated line.
///
/// Used like [`FrameDecoder`]: [`push`](Self::push) bytes, then call
/// [`next_line`](Self::next_line) until it returns `None`. Blank lines are skipped; a line longer
/// than `max_line_len` bytes is reported once and discarded up to the next `\n`.
#[derive(Debug)]
pub struct LineDecoder {
    inner: Delimited,
}

impl LineDecoder {
    /// A decoder for lines of at most `max_line_len` bytes (not counting the `\n`).
    pub fn new(max_line_len: usize) -> Self {
        LineDecoder {
            inner: Delimited::new(max_line_len, b'\n'),
        }
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.inner.push(bytes);
    }

    /// The next complete non-blank line, parsed with [`parse_text_line`]; `None` when no complete
    /// line is buffered.
    pub fn next_line(&mut self) -> Option<Result<TextReading, FrameError>> {
        let max_len = self.inner.max_len;
        loop {
            let Ok(line) = self.inner.next_chunk()? else {
                return Some(Err(FrameError::TooLong {
                    kind: "line",
                    max_len,
                }));
            };
            if line.trim_ascii().is_empty() {
                continue;
            }
            return Some(match std::str::from_utf8(line) {
                Ok(text) => parse_text_line(text),
                Err(_) => Err(FrameError::InvalidUtf8),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> CompactReading {
        CompactReading {
            device_id: Some("serial-1".into()),
            metric: Some("temperature".into()),
            value: 21.5,
            unit: Some("C".into()),
            timestamp_ms: Some(1_795_860_000_000),
        }
    }

    fn drain_frames(decoder: &mut FrameDecoder) -> Vec<Result<CompactReading, FrameError>> {
        std::iter::from_fn(|| decoder.next_frame()).collect()
    }

    fn drain_lines(decoder: &mut LineDecoder) -> Vec<Result<TextReading, FrameError>> {
        std::iter::from_fn(|| decoder.next_line()).collect()
    }

    #[test]
    fn frame_round_trip() {
        let frame = encode_frame(&sample()).unwrap();
        assert_eq!(frame.last(), Some(&0));
        assert!(!frame[..frame.len() - 1].contains(&0));
        assert_eq!(decode_frame(&frame), Ok(sample()));
        let mut decoder = FrameDecoder::new(256);
        decoder.push(&frame);
        decoder.push(&frame);
        assert_eq!(drain_frames(&mut decoder), [Ok(sample()), Ok(sample())]);
        assert_eq!(decoder.next_frame(), None);
    }

    #[test]
    fn frames_byte_by_byte_with_empty_frames() {
        let mut stream = vec![0, 0];
        stream.extend(encode_frame(&sample()).unwrap());
        stream.extend([0, 0, 0]);
        stream.extend(encode_frame(&CompactReading::default()).unwrap());
        let mut decoder = FrameDecoder::new(256);
        let mut out = Vec::new();
        for byte in stream {
            decoder.push(&[byte]);
            out.extend(drain_frames(&mut decoder));
        }
        assert_eq!(out, [Ok(sample()), Ok(CompactReading::default())]);
    }

    #[test]
    fn garbage_then_resync() {
        let mut decoder = FrameDecoder::new(256);
        decoder.push(&[0x05, 0x01]); // a block running past the end of its frame
        decoder.push(&[0]);
        decoder.push(&[0x03, 0xff, 0xff, 0]); // valid COBS, not a reading
        let mut truncated = encode_frame(&sample()).unwrap();
        truncated.truncate(truncated.len() / 2);
        // A device reset mid-frame: the cut frame runs into the next one, losing both.
        decoder.push(&truncated);
        decoder.push(&encode_frame(&sample()).unwrap());
        decoder.push(&encode_frame(&sample()).unwrap());
        let out = drain_frames(&mut decoder);
        assert_eq!(out.len(), 4, "{out:?}");
        assert_eq!(out[0], Err(FrameError::Cobs { len: 2 }));
        assert_eq!(
            out[0].as_ref().unwrap_err().to_string(),
            "frame of 2 bytes is not valid COBS"
        );
        assert!(
            matches!(&out[1], Err(FrameError::Decode { len: 3, .. })),
            "{out:?}"
        );
        assert_eq!(out[1].as_ref().unwrap_err().reason(), "invalid_postcard");
        assert!(out[2].is_err());
        assert_eq!(out[3], Ok(sample()));
    }

    #[test]
    fn trailing_bytes_in_frame_rejected() {
        let mut raw = postcard::to_stdvec(&CompactReading::default()).unwrap();
        raw.push(9);
        let crc = crc16(&raw);
        raw.extend_from_slice(&crc.to_le_bytes());
        let mut framed = vec![0; raw.len() + 2];
        let n = cobs_encode_for_test(&raw, &mut framed);
        let err = decode_frame(&framed[..n]).unwrap_err();
        assert!(err.to_string().contains("1 bytes left over"), "{err}");
    }

    #[test]
    fn crc16_matches_the_standard_check_value() {
        // The catalogued check value of CRC-16/CCITT-FALSE for "123456789".
        assert_eq!(crc16(b"123456789"), 0x29B1);
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let frame = encode_frame(&sample()).unwrap();
        for i in 1..frame.len() - 1 {
            for bit in 0..8 {
                let mut bad = frame.clone();
                bad[i] ^= 1 << bit;
                if bad[i] == 0 {
                    continue; // a new delimiter: a different, shorter frame
                }
                assert_ne!(decode_frame(&bad), Ok(sample()), "byte {i} bit {bit}");
            }
        }
        let ours = cobs_encode(&[1, 0, 2, 0, 0, 3]);
        let mut theirs = vec![0; 10];
        let n = cobs_encode_for_test(&[1, 0, 2, 0, 0, 3], &mut theirs);
        assert_eq!(ours, theirs[..n]);
    }

    // The hand-written CRC this module used before it took the `crc` crate, kept to prove the
    // checksum on the wire did not change (`the_crc_crate_matches_the_old_code`).
    /// CRC-16/CCITT-FALSE: polynomial 0x1021, initial value 0xFFFF, no reflection, no final XOR.
    fn crc16_by_hand(data: &[u8]) -> u16 {
        let mut crc: u16 = 0xFFFF;
        for &byte in data {
            crc ^= u16::from(byte) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc
    }

    /// Independent COBS encoder, only for building test frames.
    fn cobs_encode_for_test(data: &[u8], out: &mut [u8]) -> usize {
        let mut code_at = 0;
        let mut n = 1;
        let mut code = 1u8;
        for &b in data {
            if b == 0 {
                out[code_at] = code;
                code_at = n;
                n += 1;
                code = 1;
            } else {
                out[n] = b;
                n += 1;
                code += 1;
                if code == 0xFF {
                    out[code_at] = code;
                    code_at = n;
                    n += 1;
                    code = 1;
                }
            }
        }
        out[code_at] = code;
        n
    }

    #[test]
    fn too_long_frames_are_discarded() {
        let mut decoder = FrameDecoder::new(16);
        decoder.push(&[1; 10]);
        assert_eq!(decoder.next_frame(), None);
        decoder.push(&[1; 10]);
        let err = decoder.next_frame().unwrap().unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLong {
                kind: "frame",
                max_len: 16
            }
        );
        assert_eq!(
            err.to_string(),
            "frame longer than 16 bytes without a delimiter: discarded up to the next delimiter"
        );
        assert_eq!(err.reason(), "too_long");
        assert_eq!(decoder.next_frame(), None);
        decoder.push(&[1; 100]);
        assert_eq!(
            decoder.next_frame(),
            None,
            "still discarding, reported once"
        );
        let small = encode_frame(&CompactReading::default()).unwrap();
        assert!(small.len() <= 17, "{small:?}");
        decoder.push(&[1, 1, 0]);
        decoder.push(&small);
        assert_eq!(drain_frames(&mut decoder), [Ok(CompactReading::default())]);
        // A long frame arriving complete in one chunk.
        let mut chunk = vec![1; 40];
        chunk.push(0);
        chunk.extend(&small);
        decoder.push(&chunk);
        let out = drain_frames(&mut decoder);
        let too_long = Err(FrameError::TooLong {
            kind: "frame",
            max_len: 16,
        });
        assert_eq!(out, [too_long, Ok(CompactReading::default())]);
    }

    #[test]
    fn text_lines() {
        let parsed = |s: &str| parse_text_line(s).unwrap();
        assert_eq!(
            parsed("temperature=21.5"),
            TextReading {
                metric: "temperature".into(),
                value: 21.5,
                unit: None
            }
        );
        assert_eq!(
            parsed(" temperature = 21.5  C \r").unit.as_deref(),
            Some("C")
        );
        assert_eq!(parsed("humidity=40.2%").unit.as_deref(), Some("%"));
        assert_eq!(parsed("humidity=40.2%").value, 40.2);
        assert_eq!(
            parsed("t=-3e2degC"),
            TextReading {
                metric: "t".into(),
                value: -300.0,
                unit: Some("degC".into())
            }
        );
        assert_eq!(parsed("pressure=1013.2 hPa").unit.as_deref(), Some("hPa"));
        assert_eq!(parsed("x=1e3").value, 1000.0);
    }

    #[test]
    fn text_line_errors() {
        assert_eq!(parse_text_line(" \r"), Err(FrameError::EmptyLine));
        assert_eq!(
            parse_text_line("temperature 21.5"),
            Err(FrameError::MissingEquals {
                line: "temperature 21.5".into()
            })
        );
        assert_eq!(
            parse_text_line("=21.5"),
            Err(FrameError::InvalidMetric {
                metric: String::new()
            })
        );
        assert_eq!(
            parse_text_line("te mp=1").unwrap_err().reason(),
            "invalid_metric"
        );
        let err = parse_text_line("t=warm").unwrap_err();
        assert_eq!(
            err,
            FrameError::InvalidValue {
                value: "warm".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "invalid value \"warm\": expected a number, optionally followed by a unit"
        );
        assert_eq!(parse_text_line("t=").unwrap_err().reason(), "invalid_value");
        assert_eq!(
            parse_text_line("t=5km2").unwrap_err().reason(),
            "invalid_value"
        );
        assert_eq!(
            parse_text_line("t=abc C").unwrap_err().reason(),
            "invalid_value"
        );
        assert_eq!(
            parse_text_line("t=NaN"),
            Err(FrameError::NonFiniteValue {
                value: "NaN".into()
            })
        );
        assert_eq!(
            parse_text_line("t=inf C").unwrap_err().reason(),
            "non_finite_value"
        );
    }

    #[test]
    fn line_decoder() {
        let mut decoder = LineDecoder::new(32);
        decoder.push(b"temperature=21.5 C\r\n\r\n\nhum");
        decoder.push(b"idity=40%\nbad line\n");
        decoder.push(&[0xff, b'=', b'1', b'\n']);
        decoder.push(b"partial=1");
        let out = drain_lines(&mut decoder);
        assert_eq!(
            out,
            [
                Ok(TextReading {
                    metric: "temperature".into(),
                    value: 21.5,
                    unit: Some("C".into())
                }),
                Ok(TextReading {
                    metric: "humidity".into(),
                    value: 40.0,
                    unit: Some("%".into())
                }),
                Err(FrameError::MissingEquals {
                    line: "bad line".into()
                }),
                Err(FrameError::InvalidUtf8),
            ]
        );
        decoder.push(&[b'x'; 40]);
        decoder.push(b"\nok=1\n");
        let out = drain_lines(&mut decoder);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(
            out[0],
            Err(FrameError::TooLong {
                kind: "line",
                max_len: 32
            })
        );
        assert_eq!(
            out[1],
            Ok(TextReading {
                metric: "ok".into(),
                value: 1.0,
                unit: None
            })
        );
    }

    fn compact_strategy() -> impl Strategy<Value = CompactReading> {
        (
            proptest::option::of(".{0,12}"),
            proptest::option::of(".{0,12}"),
            any::<f64>().prop_filter("comparable", |v| !v.is_nan()),
            proptest::option::of(".{0,4}"),
            any::<Option<i64>>(),
        )
            .prop_map(
                |(device_id, metric, value, unit, timestamp_ms)| CompactReading {
                    device_id,
                    metric,
                    value,
                    unit,
                    timestamp_ms,
                },
            )
    }

    /// Cuts `bytes` at the given fractions into chunks.
    fn chunked(bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        points
            .windows(2)
            .map(|w| bytes[w[0]..w[1]].to_vec())
            .collect()
    }

    proptest! {
        #[test]
        fn the_crc_crate_matches_the_old_code(data in prop::collection::vec(any::<u8>(), 0..1200)) {
            prop_assert_eq!(crc16(&data), crc16_by_hand(&data));
        }

        #[test]
        fn frame_encode_decode_round_trip(readings in prop::collection::vec(compact_strategy(), 1..5)) {
            let mut decoder = FrameDecoder::new(4096);
            for r in &readings {
                let frame = encode_frame(r).unwrap();
                prop_assert_eq!(decode_frame(&frame), Ok(r.clone()));
                decoder.push(&frame);
            }
            let out = drain_frames(&mut decoder);
            prop_assert_eq!(out, readings.into_iter().map(Ok).collect::<Vec<_>>());
        }

        #[test]
        fn garbage_in_any_chunking_then_valid_frame(
            garbage in prop::collection::vec(any::<u8>(), 0..400),
            reading in compact_strategy(),
            max in 1usize..300,
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let frame = encode_frame(&reading).unwrap();
            let max = max.max(frame.len());
            let mut stream = garbage;
            stream.push(0);
            stream.extend(&frame);
            let mut decoder = FrameDecoder::new(max);
            let mut out = Vec::new();
            for chunk in chunked(&stream, &cuts) {
                decoder.push(&chunk);
                out.extend(drain_frames(&mut decoder));
            }
            prop_assert_eq!(out.last(), Some(&Ok(reading)));
        }

        #[test]
        fn decode_frame_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_frame(&bytes);
        }

        #[test]
        fn text_line_round_trip(
            metric in "[A-Za-z0-9_.:-]{1,64}",
            value in any::<f64>().prop_filter("finite", |v| v.is_finite()),
            unit in proptest::option::of("[A-Za-z%°/]{1,6}"),
        ) {
            let line = match &unit {
                Some(u) => format!("{metric}={value} {u}\r"),
                None => format!("{metric}={value}"),
            };
            prop_assert_eq!(parse_text_line(&line), Ok(TextReading { metric, value, unit }));
        }

        #[test]
        fn lines_survive_garbage(
            garbage in prop::collection::vec(any::<u8>(), 0..300),
            max in 1usize..200,
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let good = b"temperature=21.5 C";
            let max = max.max(good.len());
            let mut stream = garbage;
            stream.push(b'\n');
            stream.extend(good);
            stream.push(b'\n');
            let mut decoder = LineDecoder::new(max);
            let mut out = Vec::new();
            for chunk in chunked(&stream, &cuts) {
                decoder.push(&chunk);
                out.extend(drain_lines(&mut decoder));
            }
            let expected = TextReading { metric: "temperature".into(), value: 21.5, unit: Some("C".into()) };
            prop_assert_eq!(out.last(), Some(&Ok(expected)));
        }

        #[test]
        fn parse_text_line_never_panics(line in "\\PC{0,60}") {
            if let Ok(r) = parse_text_line(&line) {
                prop_assert!(r.value.is_finite());
            }
        }
    }
}
