//! Query parameters of the history routes: parsing (repeated keys, unknown keys refused),
//! their OpenAPI schemas, and the automatic rollup step.

use edgewatch_protocol::timefmt::parse_time;
use edgewatch_protocol::TopicFilter;
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, ToSchema};

use super::error::*;

/// Default page size of `/v1/readings`.
pub const DEFAULT_PAGE: usize = 1000;
/// Points per series `/v1/rollups` aims for when `step` is omitted.
pub const TARGET_POINTS: i64 = 1000;
/// Rollup range when `from` is omitted: the last 24 hours.
pub const DEFAULT_ROLLUP_SPAN_MS: i64 = 86_400_000;

/// Steps `/v1/rollups` picks from when `step` is omitted.
pub(crate) const NICE_STEPS_MS: &[i64] = &[
    1_000,
    2_000,
    5_000,
    10_000,
    15_000,
    30_000,
    60_000,
    120_000,
    300_000,
    600_000,
    900_000,
    1_800_000,
    3_600_000,
    7_200_000,
    10_800_000,
    21_600_000,
    43_200_000,
    86_400_000,
    604_800_000,
];

/// The schema of a seq cursor or wait in a query: a non-negative integer. It is parsed as a
/// `u64`, so it has no `int64` format (whose upper bound it exceeds).
#[derive(Debug)]
pub struct UnsignedParam;

/// An integer schema with a lower bound and no `format`.
pub(crate) fn integer_at_least(min: u64) -> RefOr<utoipa::openapi::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Integer)
        .minimum(Some(min))
        .into()
}

impl utoipa::PartialSchema for UnsignedParam {
    fn schema() -> RefOr<utoipa::openapi::Schema> {
        integer_at_least(0)
    }
}

impl ToSchema for UnsignedParam {}

/// Like [`UnsignedParam`], at least 1: a count.
#[derive(Debug)]
pub struct CountParam;

impl utoipa::PartialSchema for CountParam {
    fn schema() -> RefOr<utoipa::openapi::Schema> {
        integer_at_least(1)
    }
}

impl ToSchema for CountParam {}

/// Query parameters of `GET /v1/readings`, parsed from repeated keys (`filter` may repeat);
/// an unknown parameter is a `400 unknown_parameter`.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadingsQuery {
    /// MQTT topic filter (`+` one level, `#` the rest); repeat for several. Default:
    /// everything.
    #[param(value_type = Option<Vec<String>>, style = Form, explode, example = json!(["sensors/+/temperature"]))]
    pub filter: Vec<TopicFilter>,
    /// Event time, inclusive: RFC 3339 or epoch milliseconds.
    #[param(value_type = Option<String>, example = "2026-11-28T00:00:00Z")]
    pub from: Option<i64>,
    /// Event time, exclusive: RFC 3339 or epoch milliseconds.
    #[param(value_type = Option<String>, example = "1764324000000")]
    pub to: Option<i64>,
    /// Page size (default 1000, at most `bridge.http_max_page`).
    #[param(value_type = Option<CountParam>, inline)]
    pub limit: Option<usize>,
    /// Seq cursor: only readings with a larger seq (`nextAfter` of the previous page).
    #[param(value_type = Option<UnsignedParam>, inline)]
    pub after: Option<u64>,
}

/// Query parameters of `GET /v1/rollups`, parsed like [`ReadingsQuery`].
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RollupsQuery {
    /// MQTT topic filter (`+` one level, `#` the rest); repeat for several. Default:
    /// every series.
    #[param(value_type = Option<Vec<String>>, style = Form, explode, example = json!(["sensors/+/temperature"]))]
    pub filter: Vec<TopicFilter>,
    /// Event time, inclusive: RFC 3339 or epoch milliseconds. Default: 24 hours before `to`.
    #[param(value_type = Option<String>, example = "2026-11-28T00:00:00Z")]
    pub from: Option<i64>,
    /// Event time, exclusive: RFC 3339 or epoch milliseconds. Default: now.
    #[param(value_type = Option<String>, example = "1764324000000")]
    pub to: Option<i64>,
    /// Bucket width: `500ms`, `30s`, `5m`, `1h`, `1d` or milliseconds. Default: about 1000
    /// points over the range.
    #[param(value_type = Option<String>, example = "5m")]
    pub step: Option<i64>,
}

/// Parsed common parameters.
#[derive(Debug, Default)]
pub(crate) struct Params {
    filters: Vec<TopicFilter>,
    from: Option<i64>,
    to: Option<i64>,
    limit: Option<usize>,
    after: Option<u64>,
    step: Option<i64>,
}

impl ReadingsQuery {
    pub(crate) fn parse(pairs: &[(String, String)]) -> Result<Self, ApiError> {
        let p = parse_params(pairs, &["filter", "from", "to", "limit", "after"])?;
        Ok(ReadingsQuery {
            filter: p.filters,
            from: p.from,
            to: p.to,
            limit: p.limit,
            after: p.after,
        })
    }
}

impl RollupsQuery {
    pub(crate) fn parse(pairs: &[(String, String)]) -> Result<Self, ApiError> {
        let p = parse_params(pairs, &["filter", "from", "to", "step"])?;
        Ok(RollupsQuery {
            filter: p.filters,
            from: p.from,
            to: p.to,
            step: p.step,
        })
    }
}

pub(crate) fn parse_params(
    pairs: &[(String, String)],
    allowed: &[&str],
) -> Result<Params, ApiError> {
    let mut p = Params::default();
    for (k, v) in pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad(
                "unknown_parameter",
                format!(
                    "unknown parameter {k:?}; this endpoint takes {}",
                    allowed.join(", ")
                ),
            ));
        }
        match k.as_str() {
            "filter" => {
                let f = TopicFilter::parse_bounded(v)
                    .map_err(|e| ApiError::bad("bad_filter", format!("parameter filter: {e}")))?;
                p.filters.push(f);
            }
            "from" | "to" => {
                let t = parse_time(v).map_err(|e| {
                    ApiError::bad(
                        "bad_time",
                        format!("parameter {k}: {e} (expected RFC 3339 or epoch milliseconds)"),
                    )
                })?;
                if k == "from" {
                    p.from = Some(t);
                } else {
                    p.to = Some(t);
                }
            }
            "limit" => {
                let n = v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    ApiError::bad(
                        "bad_parameter",
                        format!("parameter limit: {v:?} is not a positive integer"),
                    )
                })?;
                p.limit = Some(n);
            }
            "after" => {
                let n = v.parse::<u64>().map_err(|_| {
                    ApiError::bad(
                        "bad_parameter",
                        format!("parameter after: {v:?} is not a seq number"),
                    )
                })?;
                p.after = Some(n);
            }
            "step" => p.step = Some(parse_step(v)?),
            _ => {}
        }
    }
    if let (Some(f), Some(t)) = (p.from, p.to) {
        if f >= t {
            return Err(ApiError::bad(
                "bad_range",
                "parameters from/to: from must be before to".to_owned(),
            ));
        }
    }
    Ok(p)
}

/// `30s`, `5m`, `1h`, `1d`, `500ms` or a number of milliseconds.
pub(crate) fn parse_step(v: &str) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::bad(
            "bad_parameter",
            format!("parameter step: {v:?} is not a duration like 500ms, 30s, 5m, 1h, 1d or milliseconds"),
        )
    };
    let v = v.trim();
    let (num, mult) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = v.strip_suffix('h') {
        (n, 3_600_000)
    } else if let Some(n) = v.strip_suffix('d') {
        (n, 86_400_000)
    } else {
        (v, 1)
    };
    let n: i64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(mult).filter(|ms| *ms > 0).ok_or_else(bad)
}

/// The smallest nice step giving at most about [`TARGET_POINTS`] buckets over `span_ms`.
pub fn auto_step(span_ms: i64) -> i64 {
    let want = (span_ms + TARGET_POINTS - 1) / TARGET_POINTS;
    NICE_STEPS_MS
        .iter()
        .copied()
        .find(|s| *s >= want)
        .unwrap_or_else(|| {
            let day = 86_400_000;
            ((want + day - 1) / day) * day
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Keys the endpoints take, a few they do not, and arbitrary ones.
    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("filter".to_owned()),
            Just("from".to_owned()),
            Just("to".to_owned()),
            Just("limit".to_owned()),
            Just("after".to_owned()),
            Just("step".to_owned()),
            "\\PC{0,12}",
        ]
    }

    /// Values near what the parsers take (numbers, durations, times, filters) and arbitrary.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            "-?[0-9]{0,25}(ms|s|m|h|d)?",
            "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})?",
            "[a+#/$]{0,2000}",
            "\\PC{0,40}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5_000))]

        /// Any query string gives parameters or a 400 with a reason, never a panic, and what
        /// is accepted keeps the documented bounds.
        #[test]
        fn query_parameters_never_panic(pairs in prop::collection::vec((key(), value()), 0..8)) {
            match ReadingsQuery::parse(&pairs) {
                Ok(q) => {
                    prop_assert!(q.limit.is_none_or(|n| n > 0));
                    if let (Some(f), Some(t)) = (q.from, q.to) {
                        prop_assert!(f < t);
                    }
                    for f in &q.filter {
                        prop_assert!(f.as_str().len() <= edgewatch_protocol::topic::MAX_FILTER_BYTES);
                    }
                }
                Err(e) => prop_assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST),
            }
            match RollupsQuery::parse(&pairs) {
                Ok(q) => prop_assert!(q.step.is_none_or(|s| s > 0)),
                Err(e) => prop_assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST),
            }
        }
    }
}
