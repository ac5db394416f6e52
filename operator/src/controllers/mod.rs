//! One reconciler per kind. Helpers they share live here.

pub mod applier;
pub mod backoff;
pub mod carry_out;
pub mod desired;
pub mod device;
pub mod events;
pub mod gateway;
pub mod kafka_client;
pub mod keyring;
pub mod objects;
pub mod policy;
pub mod secret_refs;
pub mod stationfeed;
pub mod stores;
pub mod tariff;

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, PodSpec, PodTemplateSpec, ResourceRequirements, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::ObjectMeta;

use crate::Result;
use crate::context::Context;

/// Runs every controller until shutdown. Add a new kind's `run` here.
pub async fn run(ctx: std::sync::Arc<Context>) {
    let broker = tokio::spawn(kafka_client::run_broker(ctx.client.clone(), ctx.config.clone()));
    tokio::join!(
        gateway::run(ctx.clone()),
        device::run(ctx.clone()),
        stationfeed::run(ctx.clone()),
        tariff::run(ctx.clone())
    );
    broker.abort();
}

/// Longest the operator waits before looking at an object again even when
/// nothing changed, so drift (a deleted Secret, a missed event) heals.
pub const RESYNC: Duration = Duration::from_secs(6 * 3600);

/// The wait from `now` until `when` (e.g. a renewal time): at least a
/// second, at most `RESYNC`.
pub fn until(when: Timestamp, now: Timestamp) -> Duration {
    let secs = when.duration_since(now).as_secs().clamp(1, RESYNC.as_secs() as i64);
    Duration::from_secs(secs as u64)
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

/// Deployment of a data workload: the ingestor, the encryptor, a gateway's
/// telemetry writer. They need no Kubernetes API access, no root and no
/// writable filesystem; Prometheus scrapes them by annotation, the chart's
/// PodMonitor by the part-of label. One replica (each reads its input
/// once: a poller, or a Kafka consumer group member).
pub fn data_workload(
    metadata: ObjectMeta,
    selector: BTreeMap<String, String>,
    app: &str,
    image: String,
    env: Vec<EnvVar>,
    mounts: Vec<VolumeMount>,
    volumes: Vec<Volume>,
) -> Deployment {
    let container = Container {
        name: app.trim_start_matches("fleetward-").into(),
        image: Some(image),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: METRICS_PORT,
            ..Default::default()
        }]),
        readiness_probe: Some(objects::http_probe("/health", METRICS_PORT, 10, None)),
        liveness_probe: Some(objects::http_probe("/health", METRICS_PORT, 20, Some(6))),
        resources: Some(ResourceRequirements {
            requests: Some(
                [("cpu", "50m"), ("memory", "64Mi")]
                    .map(|(k, v)| (k.to_string(), Quantity(v.into())))
                    .into(),
            ),
            limits: Some([("memory".to_string(), Quantity("256Mi".into()))].into()),
            ..Default::default()
        }),
        security_context: Some(objects::locked_down()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(objects::pod_meta(&selector, &[])),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    // fsGroup lets the non-root user read a keyring volume.
                    security_context: Some(objects::pod_security(65532)),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
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
    /// `RETENTION_DAYS`: how long rows are kept.
    pub retention_days: i64,
    /// Kind-specific settings (e.g. `SENSITIVE_FIELDS`).
    pub extra_env: Vec<EnvVar>,
}

/// The Deployment of an encryptor: its environment (the encryptor's own
/// configuration parser reads it back in the operator's tests), the
/// keyring volume, and the data-workload pod around them.
pub fn encryptor(
    metadata: ObjectMeta,
    selector: BTreeMap<String, String>,
    app: &str,
    image: String,
    e: EncryptorSpec<'_>,
) -> Deployment {
    use objects::env;
    let database = objects::database(&e.database.name, &e.database.key);
    let mut vars = vec![
        env("RECORD_KIND", e.kind),
        env("KAFKA_BROKERS", e.brokers),
        env("KAFKA_TOPIC", e.topic),
        env("KAFKA_GROUP_ID", e.group),
        env("DEAD_LETTER_TOPIC", e.dead_letter_topic),
        database.env,
        env("TABLE", e.table),
        env("RETENTION_DAYS", e.retention_days.to_string()),
        env(
            "KEYRING_FILE",
            format!("{KEYRING_DIR}/{}", fleetward_keyring::SECRET_DATA_KEY),
        ),
        env("KEYRING_RELOAD_SECONDS", "10"),
        env("METRICS_ADDR", format!("0.0.0.0:{METRICS_PORT}")),
        env("LOG_JSON", "true"),
    ];
    vars.extend(e.extra_env);
    let mounts = vec![objects::mount("keyring", KEYRING_DIR, true), database.mount];
    let volumes = vec![
        objects::secret_volume("keyring", &e.keyring_secret, Some(0o440)),
        database.volume,
    ];
    data_workload(metadata, selector, app, image, vars, mounts, volumes)
}
