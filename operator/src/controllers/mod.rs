//! One reconciler per kind. Helpers they share live here.

pub mod device;
pub mod gateway;
pub mod keyring;
pub mod stationfeed;

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::runtime::controller::Action;
use serde_json::json;

use crate::Result;
use crate::context::Context;

/// Runs every controller until shutdown. Add a new kind's `run` here.
pub async fn run(ctx: std::sync::Arc<Context>) {
    tokio::join!(
        gateway::run(ctx.clone()),
        device::run(ctx.clone()),
        stationfeed::run(ctx.clone())
    );
}

/// Longest the operator waits before looking at an object again even when
/// nothing changed, so drift (a deleted Secret, a missed event) heals.
const RESYNC: Duration = Duration::from_secs(6 * 3600);

/// Requeue at `when` (e.g. a renewal time), but at least a second from now
/// and at most `RESYNC` away.
pub fn requeue_at(when: Timestamp) -> Action {
    let secs = when
        .duration_since(Timestamp::now())
        .as_secs()
        .clamp(1, RESYNC.as_secs() as i64);
    Action::requeue(Duration::from_secs(secs as u64))
}

/// A Secret value as UTF-8 text, if present.
pub fn secret_str(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// A `kubernetes.io/tls` Secret with optional `ca.crt` and extra keys.
pub fn tls_secret(
    metadata: ObjectMeta,
    cert_pem: &str,
    key_pem: &str,
    ca_pem: Option<&str>,
    extra: impl IntoIterator<Item = (String, String)>,
) -> Result<Secret> {
    let mut data: BTreeMap<String, ByteString> = BTreeMap::new();
    data.insert("tls.crt".into(), ByteString(cert_pem.as_bytes().to_vec()));
    data.insert("tls.key".into(), ByteString(key_pem.as_bytes().to_vec()));
    if let Some(ca) = ca_pem {
        data.insert("ca.crt".into(), ByteString(ca.as_bytes().to_vec()));
    }
    for (k, v) in extra {
        data.insert(k, ByteString(v.into_bytes()));
    }
    Ok(Secret {
        metadata,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    })
}

/// Where fleetward's data workloads serve `/metrics` and `/health`.
pub const METRICS_PORT: i32 = 9090;

/// Deployment spec (selector and pod template) of a data workload: the
/// ingestor, the encryptor, a gateway's telemetry writer. They need no
/// Kubernetes API access, no root and no writable filesystem; Prometheus
/// scrapes them by annotation, the chart's PodMonitor by the part-of label.
pub fn data_workload_pod(
    selector: serde_json::Value,
    app: &str,
    image: String,
    env: Vec<serde_json::Value>,
    mounts: serde_json::Value,
    volumes: serde_json::Value,
) -> serde_json::Value {
    let mut pod_labels = selector.clone();
    pod_labels[crate::context::PART_OF.0] = json!(crate::context::PART_OF.1);
    json!({
        "selector": {"matchLabels": selector},
        "template": {
            "metadata": {
                "labels": pod_labels,
                "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": METRICS_PORT.to_string()},
            },
            "spec": {
                "automountServiceAccountToken": false,
                "securityContext": {
                    "runAsNonRoot": true,
                    "runAsUser": 65532,
                    "runAsGroup": 65532,
                    // Lets the non-root user read a keyring volume.
                    "fsGroup": 65532,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [{
                    "name": app.trim_start_matches("fleetward-"),
                    "image": image,
                    "env": env,
                    "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
                    "readinessProbe": {"httpGet": {"path": "/health", "port": METRICS_PORT}, "periodSeconds": 10},
                    "livenessProbe": {"httpGet": {"path": "/health", "port": METRICS_PORT}, "periodSeconds": 20, "failureThreshold": 6},
                    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                    "securityContext": {
                        "readOnlyRootFilesystem": true,
                        "allowPrivilegeEscalation": false,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": mounts,
                }],
                "volumes": volumes,
            },
        },
    })
}

/// Where an encryptor reads its keyring (a Secret volume, no subPath: the
/// kubelet updates the file in place and the encryptor re-reads it).
pub const KEYRING_DIR: &str = "/var/run/fleetward/keyring";

/// What an encryptor deployment stores: a StationFeed's stations or a
/// Gateway's telemetry.
pub struct EncryptorSpec<'a> {
    /// `RECORD_KIND`: `stations` or `telemetry`.
    pub kind: &'a str,
    pub brokers: String,
    pub topic: &'a str,
    pub group: String,
    pub dead_letter_topic: String,
    pub database: &'a crate::crd::SecretKeyRef,
    pub table: &'a str,
    pub keyring_secret: String,
    /// Kind-specific settings (e.g. `SENSITIVE_FIELDS`).
    pub extra_env: Vec<serde_json::Value>,
}

/// The Deployment spec of an encryptor: its environment (the encryptor's
/// own configuration parser reads it back in the operator's tests), the
/// keyring volume, and the data-workload pod around them.
pub fn encryptor_pod(selector: serde_json::Value, app: &str, image: String, e: EncryptorSpec<'_>) -> serde_json::Value {
    let mut env = vec![
        json!({"name": "RECORD_KIND", "value": e.kind}),
        json!({"name": "KAFKA_BROKERS", "value": e.brokers}),
        json!({"name": "KAFKA_TOPIC", "value": e.topic}),
        json!({"name": "KAFKA_GROUP_ID", "value": e.group}),
        json!({"name": "DEAD_LETTER_TOPIC", "value": e.dead_letter_topic}),
        json!({"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": e.database.name, "key": e.database.key}}}),
        json!({"name": "TABLE", "value": e.table}),
        json!({"name": "KEYRING_FILE", "value": format!("{KEYRING_DIR}/{}", fleetward_keyring::SECRET_DATA_KEY)}),
        json!({"name": "KEYRING_RELOAD_SECONDS", "value": "10"}),
        json!({"name": "METRICS_ADDR", "value": format!("0.0.0.0:{METRICS_PORT}")}),
        json!({"name": "LOG_JSON", "value": "true"}),
    ];
    env.extend(e.extra_env);
    let mounts = json!([{"name": "keyring", "mountPath": KEYRING_DIR, "readOnly": true}]);
    let volumes = json!([{"name": "keyring", "secret": {"secretName": e.keyring_secret, "defaultMode": 0o440}}]);
    data_workload_pod(selector, app, image, env, mounts, volumes)
}

/// A Deployment from its metadata (an `ObjectMeta` or its JSON) and spec.
pub fn deployment(metadata: impl serde::Serialize, spec: serde_json::Value) -> k8s_openapi::api::apps::v1::Deployment {
    serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": spec}))
        .expect("deployment template is well-formed")
}
