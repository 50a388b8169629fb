//! Topic patterns of ingest mappings: MQTT topic levels where `{deviceId}` and `{metric}`
//! name a level and `+` matches any one level, e.g. `shellies/{deviceId}/sensor/{metric}`.

use std::fmt;

/// Most levels a pattern may have.
pub const MAX_LEVELS: usize = 16;

/// One level of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Device,
    Metric,
    Any,
}

/// A parsed topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    text: String,
    levels: Vec<Level>,
}

/// The named parts of a topic a pattern matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts<'a> {
    /// The `{deviceId}` level.
    pub device_id: &'a str,
    /// The `{metric}` level, if the pattern has one.
    pub metric: Option<&'a str>,
}

impl TopicPattern {
    /// Parses `text`. `metric` says whether a `{metric}` level is allowed; `{deviceId}` must
    /// appear exactly once.
    pub fn parse(text: &str, metric: bool) -> Result<Self, String> {
        if text.is_empty() {
            return Err("is empty".into());
        }
        if text.starts_with('$') || text == "sensors" || text.starts_with("sensors/") {
            return Err(format!(
                "{text:?} is in the hub's own scheme (sensors/...) or a broker topic ($...): mappings read other topics"
            ));
        }
        let mut levels = Vec::new();
        for part in text.split('/') {
            let level = match part {
                "{deviceId}" => Level::Device,
                "{metric}" if metric => Level::Metric,
                "{metric}" => return Err(format!("{text:?}: {{metric}} is not allowed here")),
                "+" => Level::Any,
                "" => return Err(format!("{text:?} has an empty level")),
                p if p.contains(['#', '+', '{', '}']) => {
                    return Err(format!(
                        "{text:?}: level {p:?}; a level is text, {{deviceId}}, {{metric}} or +"
                    ))
                }
                p => Level::Literal(p.to_owned()),
            };
            levels.push(level);
        }
        let count = |l: &Level| levels.iter().filter(|x| *x == l).count();
        if count(&Level::Device) != 1 {
            return Err(format!("{text:?} must have {{deviceId}} exactly once"));
        }
        if count(&Level::Metric) > 1 {
            return Err(format!("{text:?} has {{metric}} more than once"));
        }
        if levels.len() > MAX_LEVELS {
            return Err(format!("{text:?} has more than {MAX_LEVELS} levels"));
        }
        Ok(Self {
            text: text.to_owned(),
            levels,
        })
    }

    /// Whether the pattern has a `{metric}` level.
    pub fn has_metric(&self) -> bool {
        self.levels.contains(&Level::Metric)
    }

    /// The MQTT subscription filter of the topics it matches (named levels become `+`).
    pub fn filter(&self) -> String {
        let parts: Vec<&str> = self
            .levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                _ => "+",
            })
            .collect();
        parts.join("/")
    }

    /// The named parts of `topic`, if it matches.
    pub fn matches<'a>(&self, topic: &'a str) -> Option<Parts<'a>> {
        let mut parts = Parts {
            device_id: "",
            metric: None,
        };
        let mut levels = topic.split('/');
        for want in &self.levels {
            let got = levels.next()?;
            match want {
                Level::Literal(s) if s != got => return None,
                Level::Literal(_) => {}
                _ if got.is_empty() => return None,
                Level::Device => parts.device_id = got,
                Level::Metric => parts.metric = Some(got),
                Level::Any => {}
            }
        }
        levels.next().is_none().then_some(parts)
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_name_and_filter() {
        let p = TopicPattern::parse("shellies/{deviceId}/sensor/{metric}", true).unwrap();
        assert_eq!(p.filter(), "shellies/+/sensor/+");
        let parts = p.matches("shellies/shelly-1/sensor/temperature").unwrap();
        assert_eq!(parts.device_id, "shelly-1");
        assert_eq!(parts.metric, Some("temperature"));
        assert!(p.matches("shellies/shelly-1/sensor").is_none());
        assert!(p.matches("shellies/shelly-1/sensor/t/x").is_none());
        assert!(p.matches("shellies//sensor/t").is_none());
        assert!(p.matches("shellies/s/relay/t").is_none());

        let p = TopicPattern::parse("{deviceId}/sensor/+/state", false).unwrap();
        assert_eq!(p.filter(), "+/sensor/+/state");
        assert_eq!(
            p.matches("node-1/sensor/x/state").unwrap().device_id,
            "node-1"
        );
        assert!(!p.has_metric());
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        for (text, metric, why) in [
            ("", true, "empty"),
            ("sensors/{deviceId}", true, "scheme"),
            ("$SYS/{deviceId}", true, "scheme"),
            ("tele/SENSOR", true, "exactly once"),
            ("a/{deviceId}/{deviceId}", true, "exactly once"),
            ("a/{deviceId}/{metric}/{metric}", true, "more than once"),
            ("a/{deviceId}/#", true, "level"),
            ("a/{deviceId}/x{y}", true, "level"),
            ("a//{deviceId}", true, "empty level"),
            ("a/{deviceId}/{metric}", false, "not allowed"),
        ] {
            let err = TopicPattern::parse(text, metric).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
