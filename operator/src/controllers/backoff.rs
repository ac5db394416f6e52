//! Per-object failure counts and the wait before an object's next
//! reconcile after a failure: exponential from `BACKOFF_BASE`, capped at
//! `BACKOFF_CAP`, jittered, reset by a success. One broken object retries
//! slowly while the others are unaffected.
//!
//! Pure bookkeeping (no Client): the reconcilers' `Context` holds one
//! `Backoff`, and `policy::on_error` / `policy::finished` use it. (The
//! binaries' retry loops use `fleetward_service::backoff`; this one counts
//! per object and caps at minutes, not seconds.)

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::Resource;

/// First retry after a failure, and the longest wait between retries.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);

/// Consecutive failures per object (kind/namespace/name).
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or(""),
        obj.meta().name.as_deref().unwrap_or("")
    )
}

/// The wait after the `n`th consecutive failure (n ≥ 1): base · 2^(n-1),
/// capped, with up to 10% added so that objects failing together (an API
/// server restart) do not all retry in the same instant.
pub fn delay(n: u32, jitter: f64) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << n.saturating_sub(1).min(16));
    let capped = exp.min(BACKOFF_CAP);
    capped.mul_f64(1.0 + 0.1 * jitter.clamp(0.0, 1.0))
}

impl Backoff {
    /// Counts a failure of `obj`; returns its consecutive failures so far.
    pub fn failed<K: Resource<DynamicType = ()>>(&self, obj: &K) -> u32 {
        self.failed_key(key(obj))
    }

    /// Forgets `obj`'s failures.
    pub fn succeeded<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        self.succeeded_key(&key(obj));
    }

    fn failed_key(&self, key: String) -> u32 {
        let mut f = self.failures.lock().expect("backoff");
        let n = f.entry(key).or_insert(0);
        *n += 1;
        *n
    }

    fn succeeded_key(&self, key: &str) {
        self.failures.lock().expect("backoff").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(delay(1, 0.0), Duration::from_secs(1));
        assert_eq!(delay(2, 0.0), Duration::from_secs(2));
        assert_eq!(delay(5, 0.0), Duration::from_secs(16));
        assert_eq!(delay(9, 0.0), Duration::from_secs(256));
        assert_eq!(delay(10, 0.0), BACKOFF_CAP);
        assert_eq!(delay(40, 0.0), BACKOFF_CAP);
        assert_eq!(delay(1, 1.0), Duration::from_millis(1100));
    }

    #[test]
    fn failures_count_per_object_and_success_resets() {
        let b = Backoff::default();
        assert_eq!(b.failed_key("Device/ns/a".into()), 1);
        assert_eq!(b.failed_key("Device/ns/a".into()), 2);
        assert_eq!(b.failed_key("Device/ns/b".into()), 1);
        b.succeeded_key("Device/ns/a");
        assert_eq!(b.failed_key("Device/ns/a".into()), 1);
    }
}
