//! The token bucket behind every limit of the gateway: a device's message
//! rate and refusal budget, the audit's budgets, the command API's failed
//! authentications.

use std::time::Instant;

/// Tokens refill at a rate up to a burst; an action that finds a whole
/// token spends it. Rate and burst are given at each refill, so one bucket
/// type serves limits that are configured and limits that are constants.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A bucket holding `burst` tokens at `now`.
    pub fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }

    /// Adds what `rate` a second earned since the last refill, up to `burst`.
    pub fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        self.tokens = (self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * rate).min(burst);
        // Never back: a time earlier than the last (receipt times need not
        // be in order) must not credit the same span twice.
        self.last = self.last.max(now);
    }

    /// A whole token is there (after `refill`).
    pub fn has_token(&self) -> bool {
        self.tokens >= 1.0
    }

    pub fn spend(&mut self) {
        self.tokens -= 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn spends_down_to_empty_and_refills_at_the_rate_up_to_the_burst() {
        let t = Instant::now();
        let mut b = Bucket::full(2.0, t);
        b.spend();
        b.spend();
        b.refill(t, 1.0, 2.0);
        assert!(!b.has_token());
        b.refill(t + Duration::from_millis(1500), 1.0, 2.0);
        assert!(b.has_token());
        b.refill(t + Duration::from_secs(100), 1.0, 2.0);
        b.spend();
        b.spend();
        assert!(!b.has_token(), "the burst caps what a long pause earns");
    }

    #[test]
    fn an_earlier_time_earns_nothing_and_is_not_counted_twice() {
        let t = Instant::now() + Duration::from_secs(10);
        let mut b = Bucket::full(1.0, t);
        b.spend();
        b.refill(t - Duration::from_secs(5), 1.0, 10.0);
        assert!(!b.has_token());
        b.refill(t + Duration::from_millis(500), 1.0, 10.0);
        assert!(
            !b.has_token(),
            "half a second since the last refill, not five and a half"
        );
    }
}
