//! Who may read and publish what: one model for every transport.
//!
//! A principal (a device account today; app tokens and people later) is granted topic
//! filters it may read and filters of the topics it may publish ([`Grants`]). In a grant,
//! `%u` stands for the principal's username and `%c` for its client id, as in Mosquitto's
//! ACL patterns: a device `sensor-1` granted `sensors/%u/#` may publish `sensors/sensor-1/...`
//! and nothing else. A name that contains `/`, `+` or `#` (or is empty) cannot stand in for
//! `%u`/`%c`, so such a grant gives that principal nothing rather than more.
//!
//! [`Grants::for_principal`] resolves the patterns once per connection into [`Permissions`],
//! which every transport asks: may this topic be published, may this filter be read (it is
//! readable when a granted read filter covers every topic it matches).

use crate::topic::{FilterError, TopicFilter};

/// What a role or account is granted, as patterns (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    read: Vec<String>,
    publish: Vec<String>,
}

impl Grants {
    /// Everything: read `#`, publish `#` (an account without a role, anonymous access).
    pub fn all() -> Self {
        Self {
            read: vec!["#".into()],
            publish: vec!["#".into()],
        }
    }

    /// Nothing at all.
    pub fn none() -> Self {
        Self {
            read: Vec::new(),
            publish: Vec::new(),
        }
    }

    /// Grants from patterns; each must be a valid topic filter once `%u`/`%c` are replaced.
    pub fn new(read: Vec<String>, publish: Vec<String>) -> Result<Self, FilterError> {
        for pattern in read.iter().chain(&publish) {
            TopicFilter::parse_bounded(&pattern.replace("%u", "u").replace("%c", "c"))?;
        }
        Ok(Self { read, publish })
    }

    /// The permissions of the principal with this username and client id.
    pub fn for_principal(&self, username: &str, client_id: &str) -> Permissions {
        let resolve = |patterns: &[String]| -> Vec<TopicFilter> {
            patterns
                .iter()
                .filter_map(|p| substitute(p, username, client_id))
                .filter_map(|p| TopicFilter::parse(&p).ok())
                .collect()
        };
        Permissions {
            read: resolve(&self.read),
            publish: resolve(&self.publish),
        }
    }
}

/// `pattern` with `%u` and `%c` replaced; `None` when a name used cannot stand in a level.
fn substitute(pattern: &str, username: &str, client_id: &str) -> Option<String> {
    let usable = |name: &str| !name.is_empty() && !name.contains(['/', '+', '#']);
    if pattern.contains("%u") && !usable(username) || pattern.contains("%c") && !usable(client_id) {
        return None;
    }
    Some(pattern.replace("%u", username).replace("%c", client_id))
}

/// One principal's resolved grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    read: Vec<TopicFilter>,
    publish: Vec<TopicFilter>,
}

impl Permissions {
    /// Permissions from already resolved filters (an app token's or a JWT's lists).
    pub fn from_filters(read: Vec<TopicFilter>, publish: Vec<TopicFilter>) -> Self {
        Self { read, publish }
    }

    /// The filters this principal may read, e.g. the default scope of a query that names none.
    pub fn read_filters(&self) -> &[TopicFilter] {
        &self.read
    }

    /// The filters of the topics this principal may publish to.
    pub fn publish_filters(&self) -> &[TopicFilter] {
        &self.publish
    }

    /// Whether a granted read filter is `#`: every topic but `$` ones.
    pub fn reads_everything(&self) -> bool {
        self.read.iter().any(|g| g.as_str() == "#")
    }

    /// Whether the stored or delivered `topic` may be shown to this principal.
    pub fn may_read_topic(&self, topic: &str) -> bool {
        self.read.iter().any(|g| g.matches(topic))
    }

    /// Whether publishing to `topic` is allowed.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|f| f.matches(topic))
    }

    /// Whether reading `filter` is allowed: some granted read filter covers it.
    pub fn may_read(&self, filter: &TopicFilter) -> bool {
        self.read.iter().any(|g| covers(g, filter))
    }
}

/// Whether granted filter `g` matches every topic that requested filter `r` matches.
pub fn covers(g: &TopicFilter, r: &TopicFilter) -> bool {
    let gl: Vec<&str> = g.levels().collect();
    let rl: Vec<&str> = r.levels().collect();
    for (i, gv) in gl.iter().enumerate() {
        if *gv == "#" {
            // `$` topics are not matched by a leading wildcard.
            return !(i == 0 && rl.first().is_some_and(|l| l.starts_with('$')));
        }
        let Some(rv) = rl.get(i) else { return false };
        match (*gv, *rv) {
            (_, "#") => return false,
            ("+", rv) => {
                if i == 0 && rv.starts_with('$') {
                    return false;
                }
            }
            (_, "+") => return false,
            (a, b) if a == b => {}
            _ => return false,
        }
    }
    gl.len() == rl.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::parse(s).unwrap()
    }

    #[test]
    fn a_device_publishes_under_its_own_name_only() {
        let grants = Grants::new(vec![], vec!["sensors/%u/#".into()]).unwrap();
        let p = grants.for_principal("sensor-1", "c1");
        assert!(p.may_publish("sensors/sensor-1/temperature"));
        assert!(p.may_publish("sensors/sensor-1/status"));
        assert!(!p.may_publish("sensors/sensor-2/temperature"));
        assert!(!p.may_publish("sensors/temperature"));
        assert!(!p.may_read(&f("sensors/sensor-1/#")));
        assert!(!p.may_read(&f("#")));
    }

    #[test]
    fn names_with_wildcards_or_separators_get_nothing_from_a_pattern() {
        let grants = Grants::new(vec!["sensors/%c/#".into()], vec!["sensors/%u/#".into()]).unwrap();
        for name in ["+", "#", "a/b", ""] {
            let p = grants.for_principal(name, name);
            assert!(!p.may_publish("sensors/a/b/t"), "{name:?}");
            assert!(!p.may_publish("sensors/x/t"), "{name:?}");
            assert!(!p.may_read(&f("sensors/x/#")), "{name:?}");
        }
    }

    #[test]
    fn reading_needs_a_grant_covering_the_whole_filter() {
        let grants = Grants::new(
            vec!["sensors/+/temperature".into(), "sensors/%c/#".into()],
            vec![],
        )
        .unwrap();
        let p = grants.for_principal("app", "d7");
        assert!(p.may_read(&f("sensors/d1/temperature")));
        assert!(p.may_read(&f("sensors/+/temperature")));
        assert!(!p.may_read(&f("sensors/#")));
        assert!(!p.may_read(&f("sensors/d1/humidity")));
        assert!(p.may_read(&f("sensors/d7/humidity")));
        assert!(p.may_read(&f("sensors/d7/#")));
        assert!(!p.may_publish("sensors/d7/humidity"));
        let all = Grants::all().for_principal("x", "y");
        assert!(all.may_read(&f("#")) && all.may_publish("anything/at/all"));
        assert!(!all.may_read(&f("$SYS/#")), "`#` does not cover `$` topics");
        assert!(all.reads_everything() && !p.reads_everything());
        assert!(p.may_read_topic("sensors/d9/temperature"));
        assert!(!p.may_read_topic("sensors/d9/humidity"));
        assert_eq!(p.read_filters().len(), 2);
    }

    #[test]
    fn invalid_patterns_are_refused() {
        assert!(Grants::new(vec!["sensors/#/x".into()], vec![]).is_err());
        assert!(Grants::new(vec![], vec!["a/%u+".into()]).is_err());
        assert!(Grants::new(vec!["sensors/%u/#".into()], vec!["sensors/%c/+".into()]).is_ok());
    }
}
