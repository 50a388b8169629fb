//! Token buckets that bound how fast one MQTT connection may publish (messages and bytes per
//! second), applied by the codec wrapper ([`crate::connect_policy`]).
//!
//! Each bucket holds at most one second of its rate (the burst) and refills continuously. Over
//! the limit, a QoS 0 publish is dropped (counted): it was never acknowledged, so nothing a
//! device was told is lost. A QoS 1 or 2 publish is delayed instead: the connection's reads
//! pause for the time the buckets need to refill, at most [`MAX_RATE_WAIT`] per publish; the
//! buckets may go into debt, so the following publishes wait their turn too and the
//! connection's sustained rate is the limit.

use std::time::{Duration, Instant};

/// Longest one publish's read is paused by the rate limit.
pub const MAX_RATE_WAIT: Duration = Duration::from_secs(1);

/// One token bucket; a rate of 0 means unlimited.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `per_sec` tokens per second, holding at most that many.
    pub fn new(per_sec: u64, now: Instant) -> Self {
        Self {
            rate: per_sec as f64,
            tokens: per_sec as f64,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
    }

    /// Time until `cost` tokens are available (zero when they are, or when unlimited).
    pub fn wait_for(&mut self, cost: f64, now: Instant) -> Duration {
        if self.rate == 0.0 {
            return Duration::ZERO;
        }
        self.refill(now);
        if self.tokens >= cost {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((cost - self.tokens) / self.rate)
        }
    }

    /// Takes `cost` tokens, going into debt if there are not enough.
    pub fn take(&mut self, cost: f64) {
        if self.rate > 0.0 {
            self.tokens -= cost;
        }
    }
}

/// What the rate limit decides for one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    /// Within the limit.
    Pass,
    /// Over the limit, QoS 0: drop it.
    Drop,
    /// Over the limit, QoS 1/2: pause this long (at most [`MAX_RATE_WAIT`]), then pass.
    Delay(Duration),
}

/// A connection's message and byte buckets.
#[derive(Debug, Clone)]
pub struct PublishRate {
    messages: TokenBucket,
    bytes: TokenBucket,
}

impl PublishRate {
    /// Limits of `messages_per_sec` and `bytes_per_sec` (0: unlimited).
    pub fn new(messages_per_sec: u64, bytes_per_sec: u64, now: Instant) -> Self {
        Self {
            messages: TokenBucket::new(messages_per_sec, now),
            bytes: TokenBucket::new(bytes_per_sec, now),
        }
    }

    /// Accounts one publish of `bytes` bytes at QoS `qos`.
    pub fn publish(&mut self, bytes: usize, qos: u8, now: Instant) -> RateVerdict {
        let bytes = bytes as f64;
        let wait = self
            .messages
            .wait_for(1.0, now)
            .max(self.bytes.wait_for(bytes, now));
        if wait.is_zero() {
            self.messages.take(1.0);
            self.bytes.take(bytes);
            return RateVerdict::Pass;
        }
        if qos == 0 {
            return RateVerdict::Drop;
        }
        self.messages.take(1.0);
        self.bytes.take(bytes);
        RateVerdict::Delay(wait.min(MAX_RATE_WAIT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_always_passes() {
        let now = Instant::now();
        let mut r = PublishRate::new(0, 0, now);
        for _ in 0..100_000 {
            assert_eq!(r.publish(1_000_000, 0, now), RateVerdict::Pass);
        }
    }

    #[test]
    fn qos0_over_the_message_rate_is_dropped_then_refills() {
        let t0 = Instant::now();
        let mut r = PublishRate::new(10, 0, t0);
        for _ in 0..10 {
            assert_eq!(r.publish(10, 0, t0), RateVerdict::Pass);
        }
        assert_eq!(r.publish(10, 0, t0), RateVerdict::Drop);
        // A tenth of a second later one token is back.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(r.publish(10, 0, t1), RateVerdict::Pass);
        assert_eq!(r.publish(10, 0, t1), RateVerdict::Drop);
    }

    #[test]
    fn qos1_over_the_limit_waits_and_debt_accumulates() {
        let t0 = Instant::now();
        let mut r = PublishRate::new(10, 0, t0);
        for _ in 0..10 {
            assert_eq!(r.publish(10, 1, t0), RateVerdict::Pass);
        }
        let RateVerdict::Delay(first) = r.publish(10, 1, t0) else {
            panic!("expected a delay");
        };
        assert!((first.as_secs_f64() - 0.1).abs() < 1e-6, "{first:?}");
        let RateVerdict::Delay(second) = r.publish(10, 1, t0) else {
            panic!("expected a delay");
        };
        assert!((second.as_secs_f64() - 0.2).abs() < 1e-6, "{second:?}");
    }

    #[test]
    fn bytes_bucket_bounds_large_publishes_and_the_wait_is_capped() {
        let t0 = Instant::now();
        let mut r = PublishRate::new(0, 1_000, t0);
        assert_eq!(r.publish(1_000, 0, t0), RateVerdict::Pass);
        assert_eq!(r.publish(1, 0, t0), RateVerdict::Drop);
        assert_eq!(r.publish(50_000, 1, t0), RateVerdict::Delay(MAX_RATE_WAIT));
    }
}
