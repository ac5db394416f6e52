//! The wait between retries of anything that fails for a while — a broker
//! connection, a Kafka produce, a database write, an HTTP poll — built on
//! `backon`: exponential, doubling from a first wait up to a cap, with
//! jitter so that many pods recovering at once do not retry in step.
//!
//! Each wait is between half and all of its nominal value (the nominal
//! waits are `first`, `2·first`, … up to `cap`): a floor keeps the retry
//! rate bounded, the spread de-synchronises clients.
//!
//! [`Backoff::standard`] is the one policy the binaries use when retrying
//! until something succeeds; [`Backoff::new`] is there for a policy a user
//! configures (the ingestor's `HTTP_RETRY_*`).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The standard policy's first nominal wait.
pub const FIRST: Duration = Duration::from_millis(200);
/// The standard policy's longest nominal wait: an outage that ends is
/// noticed within this long, and a failing call costs at most one log line
/// and one attempt per this long.
pub const CAP: Duration = Duration::from_secs(10);

/// Successive waits; [`reset`](Backoff::reset) after a success.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    waits: ExponentialBackoff,
}

impl Backoff {
    /// The project's policy for retrying until success.
    pub fn standard() -> Self {
        Self::new(FIRST, CAP)
    }

    /// Nominal waits `first`, doubling, capped at `cap`; never runs out.
    pub fn new(first: Duration, cap: Duration) -> Self {
        // backon's jitter adds up to 100 % of the wait; starting from half
        // the nominal wait puts each one in [nominal / 2, nominal].
        let builder = ExponentialBuilder::default()
            .with_min_delay(first / 2)
            .with_max_delay((cap / 2).max(first / 2))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            builder,
            waits: builder.build(),
        }
    }

    /// The wait before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        // `without_max_times` and no total limit: the iterator never ends.
        self.waits.next().unwrap_or(CAP)
    }

    /// The wait before retry number `retry` (0 = the first) of a fresh
    /// sequence.
    pub fn delay(&self, retry: u32) -> Duration {
        let mut waits = self.builder.build();
        waits.nth(retry.min(64) as usize).unwrap_or(CAP)
    }

    /// Sleeps the next wait and returns it.
    pub async fn wait(&mut self) -> Duration {
        let d = self.next_delay();
        tokio::time::sleep(d).await;
        d
    }

    /// After a success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.waits = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(d: Duration, nominal_ms: u64) -> bool {
        let ms = d.as_secs_f64() * 1000.0;
        ms >= nominal_ms as f64 / 2.0 && ms <= nominal_ms as f64
    }

    #[test]
    fn waits_double_from_first_to_the_cap_with_jitter_below_nominal() {
        for _ in 0..50 {
            let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
            for nominal in [100, 200, 400, 800, 1000, 1000, 1000] {
                let d = b.next_delay();
                assert!(within(d, nominal), "{d:?} not within [{}, {nominal}] ms", nominal / 2);
            }
        }
    }

    #[test]
    fn waits_are_spread() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            seen.insert(Backoff::standard().next_delay());
        }
        assert!(seen.len() > 1, "every first wait was {seen:?}");
    }

    #[test]
    fn reset_starts_over_and_delay_is_by_retry_number() {
        let mut b = Backoff::standard();
        for _ in 0..10 {
            b.next_delay();
        }
        assert!(within(b.next_delay(), CAP.as_millis() as u64));
        b.reset();
        assert!(within(b.next_delay(), FIRST.as_millis() as u64));
        let p = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert!(within(p.delay(0), 100));
        assert!(within(p.delay(3), 800));
        assert!(within(p.delay(20), 1000));
        assert!(within(p.delay(u32::MAX), 1000));
    }
}
