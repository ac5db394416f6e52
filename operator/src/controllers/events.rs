//! The events a plan asks for, and when one is worth sending: when a
//! condition's reason changes, not on every retry. Pure (no Client): plans
//! use it; each kind's apply publishes what its plan returned.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// An event a plan asks for; apply publishes it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedEvent {
    pub warning: bool,
    pub reason: &'static str,
    /// What the operator did or tried (the event's `action`).
    pub action: &'static str,
    pub note: String,
}

impl PlannedEvent {
    pub fn normal(reason: &'static str, action: &'static str, note: String) -> Self {
        Self {
            warning: false,
            reason,
            action,
            note,
        }
    }

    pub fn warning(reason: &'static str, action: &'static str, note: String) -> Self {
        Self {
            warning: true,
            reason,
            action,
            note,
        }
    }
}

/// Ready=False with `reason` and `message`, and a warning event about it
/// when the reason is new.
pub fn not_ready(
    conditions: &mut Vec<Condition>,
    events: &mut Vec<PlannedEvent>,
    (reason, action): (&'static str, &'static str),
    message: String,
    generation: Option<i64>,
) {
    if is_news(conditions, crate::conditions::READY, reason) {
        events.push(PlannedEvent::warning(reason, action, message.clone()));
    }
    crate::conditions::set(conditions, crate::conditions::READY, false, reason, message, generation);
}

/// True when condition `type_` does not already carry `reason`: the
/// moment to tell people (an event), as opposed to every retry.
pub fn is_news(conditions: &[Condition], type_: &str, reason: &str) -> bool {
    !conditions.iter().any(|c| c.type_ == type_ && c.reason == reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn news_is_a_new_reason() {
        let mut c = Vec::new();
        assert!(is_news(&c, "Ready", "GatewayNotFound"));
        crate::conditions::set(&mut c, "Ready", false, "GatewayNotFound", "x", None);
        assert!(!is_news(&c, "Ready", "GatewayNotFound"));
        assert!(is_news(&c, "Ready", "Issued"));
    }
}
