//! The Gateway's rate limit, burst, timestamp window and queue age,
//! followed live from its `spec.security` (with `LIMITS_FROM_GATEWAY`, as
//! the operator deploys it): a change applies to the next message, and the
//! pod, its broker and the devices' connections stay. Its audit retention
//! (`spec.retention.auditDays`) is followed the same way, for the next
//! retention pass. The message size
//! limit is not followed: the broker's packet limit is derived from it, so
//! a change of it rolls the pod (see the operator's workload plan).

use std::time::Duration;

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::checks::Limits;

/// `base` with the followed fields of a Gateway's `spec.security` (fields
/// the API server defaulted are always there; a missing one keeps `base`'s).
pub fn from_spec(security: &serde_json::Value, base: Limits) -> Limits {
    let int = |k: &str| security.get(k).and_then(serde_json::Value::as_i64);
    Limits {
        window_secs: int("timestampWindowSeconds").unwrap_or(base.window_secs),
        max_queue_secs: int("maxQueueSeconds").unwrap_or(base.max_queue_secs),
        max_message_bytes: base.max_message_bytes,
        rate_per_second: int("ratePerSecond").map_or(base.rate_per_second, |r| r as f64),
        burst: int("burst").map_or(base.burst, |b| b as f64),
    }
}

/// The Gateway's `spec.retention.auditDays` as a duration (the API server
/// defaults it; `base` when missing).
pub fn audit_retention(spec: &serde_json::Value, base: Duration) -> Duration {
    spec["retention"]["auditDays"]
        .as_u64()
        .filter(|d| *d > 0)
        .map_or(base, |d| Duration::from_secs(d * 86_400))
}

/// Watches the Gateway `name` and sends its limits, and its audit
/// retention, whenever they change, until the stream ends. The gateway's
/// Role lets it read only this object.
pub async fn follow(
    client: Client,
    namespace: String,
    name: String,
    base: Limits,
    tx: watch::Sender<Limits>,
    audit_retention_tx: watch::Sender<Duration>,
) {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("fleetward.io", "v1alpha1", "Gateway"));
    let api: Api<DynamicObject> = Api::namespaced_with(client, &namespace, &resource);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut changes = watcher(api, config).default_backoff().applied_objects().boxed();
    // The first reading is always sent: the gateway waits for it.
    let mut first = true;
    while let Some(change) = changes.next().await {
        match change {
            Ok(gw) => {
                let retention = audit_retention(&gw.data["spec"], *audit_retention_tx.borrow());
                audit_retention_tx.send_if_modified(|current| std::mem::replace(current, retention) != retention);
                let limits = from_spec(&gw.data["spec"]["security"], base);
                tx.send_if_modified(|current| {
                    let changed = std::mem::take(&mut first) || *current != limits;
                    if changed {
                        tracing::info!(
                            rate_per_second = limits.rate_per_second,
                            burst = limits.burst,
                            window_secs = limits.window_secs,
                            max_queue_secs = limits.max_queue_secs,
                            "limits from the Gateway"
                        );
                        *current = limits;
                    }
                    changed
                });
            }
            // The watcher backs off by itself before it tries again.
            Err(e) => tracing::warn!(error = %e, "watching the Gateway's limits"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BASE: Limits = Limits {
        window_secs: 300,
        max_queue_secs: 900,
        max_message_bytes: 65536,
        rate_per_second: 10.0,
        burst: 20.0,
    };

    #[test]
    fn the_spec_sets_the_followed_limits_and_never_the_message_size() {
        let got = from_spec(
            &json!({"timestampWindowSeconds": 60, "maxQueueSeconds": 30, "maxMessageBytes": 128,
                    "ratePerSecond": 2, "burst": 3}),
            BASE,
        );
        assert_eq!(
            got,
            Limits {
                window_secs: 60,
                max_queue_secs: 30,
                max_message_bytes: 65536,
                rate_per_second: 2.0,
                burst: 3.0,
            }
        );
        assert_eq!(from_spec(&json!({"burst": 5}), BASE).rate_per_second, 10.0);
        assert_eq!(from_spec(&serde_json::Value::Null, BASE), BASE);
    }

    #[test]
    fn the_audit_retention_is_the_gateways_days_or_the_base() {
        let year = Duration::from_secs(365 * 86_400);
        let got = audit_retention(&json!({"retention": {"auditDays": 30}}), year);
        assert_eq!(got, Duration::from_secs(30 * 86_400));
        assert_eq!(audit_retention(&json!({"retention": {}}), year), year);
        assert_eq!(audit_retention(&json!({"retention": {"auditDays": 0}}), year), year);
        assert_eq!(audit_retention(&serde_json::Value::Null, year), year);
    }
}
