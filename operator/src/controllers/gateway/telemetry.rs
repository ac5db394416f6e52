//! A Gateway's telemetry storage (`spec.storage`): its keyring Secret
//! `<gateway>-telemetry-keyring` (made and rotated by `controllers::keyring`)
//! and the telemetry writer `<gateway>-telemetry`, the encryptor image in
//! `telemetry` mode reading the gateway's Kafka topic into PostgreSQL.
//! Without `spec.storage` a writer left from before is deleted; the keyring
//! stays, so the rows it encrypted stay readable.

use fleetward_keyring::SECRET_DATA_KEY;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::child_meta;

use crate::context::{Context, apply, labels};
use crate::controllers::keyring::{self, KeyringSecret, Outcome};
use crate::controllers::{METRICS_PORT, data_workload_pod};
use crate::crd::Gateway;
use crate::crd::gateway::TelemetryStorage;
use crate::{Error, Result};

/// Label on the keyring Secret (it has no owner reference): the Gateway it
/// belongs to. Not `fleetward.io/gateway`, which marks the Secrets the
/// gateway workload reads as device credentials.
pub const LABEL_TELEMETRY_OF: &str = "fleetward.io/telemetry-of";
/// Where the writer finds `keyring.json`.
const KEYRING_DIR: &str = "/var/run/fleetward/keyring";

pub fn keyring_secret_name(gateway: &str) -> String {
    format!("{gateway}-telemetry-keyring")
}

pub fn deployment_name(gateway: &str) -> String {
    format!("{gateway}-telemetry")
}

pub fn consumer_group(ns: &str, gateway: &str) -> String {
    format!("fleetward.{ns}.{gateway}.telemetry")
}

/// Makes the storage match `spec.storage`. Returns the keyring's primary
/// key id while storage is on and its keyring usable.
pub async fn apply_storage(gw: &Gateway, ctx: &Context, ns: &str) -> Result<Option<String>> {
    let name = gw.name_any();
    let deploys: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let Some(storage) = &gw.spec.storage else {
        match deploys.delete(&deployment_name(&name), &DeleteParams::default()).await {
            Ok(_) => tracing::info!(gateway = %name, "deleted the telemetry writer: spec.storage was removed"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(None);
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret_name = keyring_secret_name(&name);
    let want = KeyringSecret {
        name: &secret_name,
        labels: labels(&[(LABEL_TELEMETRY_OF, &name)]),
        rotation: storage.key_rotation,
    };
    let keyring = match keyring::ensure(&secrets, &want).await? {
        Outcome::Unchanged(k) => k,
        Outcome::Created(k) => {
            ctx.event(
                gw,
                false,
                "KeyringCreated",
                "CreateKeyring",
                format!("created telemetry keyring {secret_name} with key {}", k.primary_id()),
            )
            .await;
            k
        }
        Outcome::Rotated { keyring, previous } => {
            ctx.event(
                gw,
                false,
                "KeyRotated",
                "RotateKey",
                format!(
                    "new telemetry primary key {}; {} older key(s) kept (previous primary {previous})",
                    keyring.primary_id(),
                    keyring.key_ids().len() - 1
                ),
            )
            .await;
            keyring
        }
        Outcome::Invalid(reason) => {
            // Left untouched (see controllers::keyring); nothing is written
            // until someone restores or deletes it.
            ctx.event(
                gw,
                true,
                "InvalidKeyring",
                "Validate",
                format!(
                    "Secret {secret_name} does not hold a usable keyring ({reason}); telemetry is not stored until \
                     it is restored, or deleted to make a new one"
                ),
            )
            .await;
            return Ok(None);
        }
    };
    let deployment = writer(gw, storage, ctx)?;
    apply(&deploys, &deployment_name(&name), &deployment).await?;
    Ok(Some(keyring.primary_id().to_string()))
}

/// The telemetry writer's Deployment.
pub fn writer(gw: &Gateway, storage: &TelemetryStorage, ctx: &Context) -> Result<Deployment> {
    let name = gw.name_any();
    let ns = gw.namespace().unwrap_or_default();
    let kafka = gw
        .spec
        .kafka
        .as_ref()
        .ok_or(Error::MissingObjectKey("spec.kafka (spec.storage reads its topic)"))?;
    let image = gw
        .spec
        .images
        .as_ref()
        .and_then(|i| i.telemetry.clone())
        .unwrap_or_else(|| ctx.config.encryptor_image.clone());
    let brokers = kafka
        .bootstrap_servers
        .clone()
        .unwrap_or_else(|| ctx.config.kafka_bootstrap.clone());
    let db = &storage.postgres.connection_secret_ref;
    let env = vec![
        json!({"name": "RECORD_KIND", "value": "telemetry"}),
        json!({"name": "KAFKA_BROKERS", "value": brokers}),
        json!({"name": "KAFKA_TOPIC", "value": kafka.topic}),
        json!({"name": "KAFKA_GROUP_ID", "value": consumer_group(&ns, &name)}),
        json!({"name": "DEAD_LETTER_TOPIC", "value": format!("{}.dlq", kafka.topic)}),
        json!({"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": db.name, "key": db.key}}}),
        json!({"name": "TABLE", "value": storage.postgres.table}),
        json!({"name": "KEYRING_FILE", "value": format!("{KEYRING_DIR}/{SECRET_DATA_KEY}")}),
        json!({"name": "KEYRING_RELOAD_SECONDS", "value": "10"}),
        json!({"name": "METRICS_ADDR", "value": format!("0.0.0.0:{METRICS_PORT}")}),
        json!({"name": "LOG_JSON", "value": "true"}),
    ];
    let mounts = json!([{"name": "keyring", "mountPath": KEYRING_DIR, "readOnly": true}]);
    let volumes =
        json!([{"name": "keyring", "secret": {"secretName": keyring_secret_name(&name), "defaultMode": 0o440}}]);
    let selector = json!({"app.kubernetes.io/name": "fleetward-telemetry", "fleetward.io/gateway": name});
    let mut body = data_workload_pod(selector, "fleetward-telemetry", image, env, mounts, volumes);
    body["replicas"] = json!(1);
    let value = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_meta(gw, deployment_name(&name))?,
        "spec": body,
    });
    Ok(serde_json::from_value(value).expect("deployment template is well-formed"))
}
