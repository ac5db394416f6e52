//! Status conditions, with the Kubernetes convention that
//! `lastTransitionTime` only moves when the status flips, so a reconcile
//! that changes nothing writes nothing.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";

/// Sets condition `type_` in `conditions`, keeping its transition time when
/// the status is unchanged.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    let status = if ok { "True" } else { "False" };
    let message = message.into();
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if existing.status != status {
            existing.last_transition_time = Time(Timestamp::now());
        }
        existing.status = status.into();
        existing.reason = reason.into();
        existing.message = message;
        existing.observed_generation = generation;
        return;
    }
    conditions.push(Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Time(Timestamp::now()),
    });
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_flip() {
        let mut c = Vec::new();
        set(&mut c, READY, false, "Pending", "waiting", Some(1));
        let t0 = c[0].last_transition_time.clone();
        std::thread::sleep(std::time::Duration::from_millis(5));
        set(&mut c, READY, false, "StillPending", "waiting more", Some(2));
        assert_eq!(c[0].last_transition_time, t0);
        assert_eq!(c[0].reason, "StillPending");
        set(&mut c, READY, true, "Issued", "ok", Some(2));
        assert_ne!(c[0].last_transition_time, t0);
        assert!(is_true(&c, READY));
        assert_eq!(c.len(), 1);
    }
}
