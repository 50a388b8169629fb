//! At most one log line per reason per [`LOG_INTERVAL`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// At most one warning per rejection reason (and for publish failures) in this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// At most one log line per reason per [`LOG_INTERVAL`], remembering how many were suppressed.
#[derive(Debug, Default)]
pub(crate) struct RateLimitedLog {
    /// Per reason: when it was last logged and how many were suppressed since.
    last: HashMap<&'static str, (Instant, u64)>,
}

impl RateLimitedLog {
    /// `Some(suppressed since the last line)` if a line for `reason` may be logged at `now`.
    pub(crate) fn allow(&mut self, reason: &'static str, now: Instant) -> Option<u64> {
        match self.last.get_mut(reason) {
            Some((at, suppressed)) if now.saturating_duration_since(*at) < LOG_INTERVAL => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                *at = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                self.last.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_is_rate_limited_per_reason() {
        let mut log = RateLimitedLog::default();
        let t0 = Instant::now();
        assert_eq!(log.allow("a", t0), Some(0));
        assert_eq!(log.allow("a", t0 + Duration::from_secs(1)), None);
        assert_eq!(log.allow("a", t0 + Duration::from_secs(2)), None);
        assert_eq!(log.allow("b", t0 + Duration::from_secs(2)), Some(0));
        assert_eq!(log.allow("a", t0 + LOG_INTERVAL), Some(2));
        assert_eq!(log.allow("a", t0 + LOG_INTERVAL), None);
    }
}
