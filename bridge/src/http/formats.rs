//! Readings as CSV rows and NDJSON lines: the bytes `GET /v1/readings` answers for `text/csv`
//! and `application/x-ndjson`, and the bytes `edgewatch export` writes from a data directory,
//! so both are the same.

use edgewatch_protocol::timefmt::Rfc3339;

use crate::json;
use crate::store::RowPage;

/// The first line of every CSV answer.
pub const CSV_HEADER: &str = "seq,topic,deviceId,metric,value,unit,timestamp,receivedAt\n";

/// Why readings could not be written as NDJSON (nothing is written in their place).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct RenderError(#[from] json::JsonError);

/// One CSV field: quoted (with `"` doubled) when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The readings of `page` as CSV rows under [`CSV_HEADER`] (not included), one per line:
/// times in RFC 3339 UTC with milliseconds, an absent unit as an empty field.
pub fn csv_rows(page: &RowPage) -> String {
    let mut body = String::with_capacity(page.len() * 120);
    for x in page.iter() {
        body.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            x.seq,
            csv_field(&x.topic().to_string()),
            csv_field(x.device_id),
            csv_field(x.metric),
            x.value,
            csv_field(x.unit.unwrap_or("")),
            Rfc3339::new(x.timestamp_ms),
            Rfc3339::new(x.received_at_ms)
        ));
    }
    body
}

/// The readings of `page` as NDJSON: one `Reading` object (the items of `GET /v1/readings`)
/// per line.
pub fn ndjson_lines(page: &RowPage) -> Result<Vec<u8>, RenderError> {
    Ok(json::reading_lines(page.iter())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_commas_quotes_or_line_breaks_are_quoted() {
        assert_eq!(csv_field("C"), "C");
        assert_eq!(csv_field(""), "");
        assert_eq!(csv_field("°C, \"raw\""), "\"°C, \"\"raw\"\"\"");
        assert_eq!(csv_field("a\nb"), "\"a\nb\"");
        assert_eq!(csv_field("a\rb"), "\"a\rb\"");
    }
}
