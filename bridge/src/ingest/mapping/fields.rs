//! Reading values out of mapped payloads: bare numbers, JSON fields by dotted name, every
//! numeric field of an object, timestamps and presence states.

use edgewatch_protocol::payload::{is_valid_id, MAX_ID_LEN};
use edgewatch_protocol::timefmt::parse_time;
use serde_json::{Map, Value};

/// How deep an `object` payload is walked; deeper objects are left out.
const MAX_DEPTH: usize = 8;

/// The first 64 characters of `bytes`, lossily as text.
pub(super) fn preview(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(64).collect()
}

/// A metric name made of `name`: characters outside `A-Z a-z 0-9 _ . : -` become `_`, at
/// most 64 of them.
pub(super) fn metric_name(name: &str) -> String {
    if is_valid_id(name) {
        return name.to_owned();
    }
    let mut out: String = name
        .chars()
        .map(|c| match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '.' | ':' | '-' => c,
            _ => '_',
        })
        .collect();
    out.truncate(MAX_ID_LEN);
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// A bare-number payload.
pub(super) fn number(payload: &[u8]) -> Result<f64, String> {
    let text = std::str::from_utf8(payload.trim_ascii()).unwrap_or("");
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(format!("value {text} is not a finite number")),
        Err(_) => Err(format!("payload {:?} is not a number", preview(payload))),
    }
}

/// A JSON-object payload.
pub(super) fn object(payload: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(payload.trim_ascii()) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(format!(
            "payload {:?} is not a JSON object",
            preview(payload)
        )),
        Err(err) => Err(format!("invalid JSON: {err}")),
    }
}

/// The value at a dotted path.
fn at<'a>(doc: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = doc.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut value = doc.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// A finite number, or a string holding one.
fn as_number(value: &Value) -> Option<f64> {
    let v = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    v.is_finite().then_some(v)
}

/// One field's number.
pub(super) fn field(doc: &Map<String, Value>, path: &str) -> Result<f64, String> {
    match at(doc, path) {
        None | Some(Value::Null) => Err(format!("no field {path:?} in the payload")),
        Some(v) => as_number(v).ok_or_else(|| {
            format!(
                "field {path:?} is {}, not a number",
                preview(v.to_string().as_bytes())
            )
        }),
    }
}

/// Every numeric field (numbers only, not numeric strings) with its dotted name, nested
/// objects walked to [`MAX_DEPTH`], leaving out `skip` and the `timestamp` field.
pub(super) fn numeric_fields(
    doc: &Map<String, Value>,
    skip: &[String],
    timestamp: Option<&str>,
) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    walk(doc, "", 0, &mut |name, value| {
        let left_out = skip.iter().any(|s| s == name) || timestamp == Some(name);
        if let (false, Value::Number(n)) = (left_out, value) {
            if let Some(v) = n.as_f64().filter(|v| v.is_finite()) {
                out.push((metric_name(name), v));
            }
        }
    });
    out
}

fn walk(doc: &Map<String, Value>, prefix: &str, depth: usize, f: &mut dyn FnMut(&str, &Value)) {
    for (key, value) in doc {
        let name = match prefix {
            "" => key.clone(),
            p => format!("{p}.{key}"),
        };
        match value {
            Value::Object(inner) if depth + 1 < MAX_DEPTH => walk(inner, &name, depth + 1, f),
            Value::Object(_) => {}
            v => f(&name, v),
        }
    }
}

/// The event time in a timestamp field: RFC 3339 text or epoch milliseconds; `None` when the
/// field is absent.
pub(super) fn timestamp(doc: &Map<String, Value>, path: &str) -> Result<Option<i64>, String> {
    let bad = |v: &Value| {
        format!(
            "timestamp {} in {path:?}: expected RFC 3339 text with an offset or epoch milliseconds",
            preview(v.to_string().as_bytes())
        )
    };
    match at(doc, path) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::String(s)) => parse_time(s).map(Some).map_err(|_| bad(v)),
        Some(v @ Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| bad(v)),
        Some(v) => Err(bad(v)),
    }
}

/// A presence payload's state: the JSON `field` when given and the payload is an object with
/// it, else the payload text, trimmed.
pub(super) fn state(payload: &[u8], field: Option<&str>) -> String {
    if let (Some(field), Ok(doc)) = (field, object(payload)) {
        match at(&doc, field) {
            Some(Value::String(s)) => return s.trim().to_owned(),
            Some(Value::Bool(b)) => return b.to_string(),
            _ => {}
        }
    }
    String::from_utf8_lossy(payload.trim_ascii()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_by_dotted_name_and_walked() {
        let doc = object(br#"{"Time":"x","ENERGY":{"Power":12,"Total":"1.5"},"ok":true,"a":[1]}"#)
            .unwrap();
        assert_eq!(field(&doc, "ENERGY.Power"), Ok(12.0));
        assert_eq!(field(&doc, "ENERGY.Total"), Ok(1.5), "a numeric string");
        assert!(field(&doc, "ENERGY.Nope").unwrap_err().contains("no field"));
        assert!(field(&doc, "Time").unwrap_err().contains("not a number"));
        let all = numeric_fields(&doc, &[], None);
        assert_eq!(all, [("ENERGY.Power".to_owned(), 12.0)]);
        let skipped = numeric_fields(&doc, &["ENERGY.Power".to_owned()], None);
        assert!(skipped.is_empty());
    }

    #[test]
    fn names_numbers_times_and_states() {
        assert_eq!(metric_name("Power Factor/x"), "Power_Factor_x");
        assert_eq!(metric_name(&"a".repeat(80)).len(), 64);
        assert_eq!(number(b" 21.5 "), Ok(21.5));
        assert!(number(b"NaN").is_err());
        assert!(number(b"on").unwrap_err().contains("not a number"));
        let doc =
            object(br#"{"t":"2025-12-07T10:00:00Z","n":1765101600000,"bad":"noon"}"#).unwrap();
        assert_eq!(timestamp(&doc, "t"), Ok(Some(1_765_101_600_000)));
        assert_eq!(timestamp(&doc, "n"), Ok(Some(1_765_101_600_000)));
        assert_eq!(timestamp(&doc, "missing"), Ok(None));
        assert!(timestamp(&doc, "bad").is_err());
        assert_eq!(state(br#"{"state":"online"}"#, Some("state")), "online");
        assert_eq!(state(b" Offline\n", None), "Offline");
        assert_eq!(state(b"true", Some("state")), "true");
    }
}
