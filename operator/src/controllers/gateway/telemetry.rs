//! A Gateway's telemetry storage (`spec.storage`): its keyring Secret
//! `<gateway>-telemetry-keyring` (made and rotated by `controllers::keyring`)
//! and the telemetry writer `<gateway>-telemetry`, the encryptor image in
//! `telemetry` mode reading the gateway's Kafka topic into PostgreSQL.
//! Without `spec.storage` a writer left from before is deleted; the keyring
//! stays, so the rows it encrypted stay readable.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::objects::child_meta;

use crate::context::Context;
use crate::controllers::carry_out;
use crate::controllers::desired::Write;
use crate::controllers::kafka_client;
use crate::controllers::keyring::{self, KeyringSecret, Outcome};
use crate::controllers::{EncryptorSpec, encryptor, objects};
use crate::crd::Gateway;
use crate::crd::gateway::TelemetryStorage;
use crate::ownership::labels;
use crate::{Error, Result};
use fleetward_protocol::record::{RECORD_KEY_ENV, RECORD_KEY_SECRET_KEY};

/// Label on the keyring Secret (it has no owner reference): the Gateway it
/// belongs to. Not `fleetward.io/gateway`, which marks the Secrets the
/// gateway workload reads as device credentials.
pub const LABEL_TELEMETRY_OF: &str = "fleetward.io/telemetry-of";

/// The Gateway's condition about its telemetry storage (only with
/// `spec.storage`).
pub const CONDITION: &str = "TelemetryStorage";

/// What became of the storage.
#[derive(Debug, PartialEq)]
pub enum Storage {
    /// No `spec.storage`.
    Off,
    /// The writer is deployed; the keyring's primary key id.
    On(String),
    /// The keyring Secret holds no usable keyring (why, for the
    /// condition): it is left untouched and nothing is deployed.
    InvalidKeyring(String),
}

/// Makes the storage match `spec.storage`.
pub async fn apply_storage(gw: &Gateway, ctx: &Context, ns: &str) -> Result<Storage> {
    let name = gw.name_any();
    let Some(storage) = &gw.spec.storage else {
        // Only this Gateway's own writer: a Deployment someone else made
        // under the name stays.
        let gone = Write::delete_owned::<Deployment>(Gateway::telemetry_deployment_name(&name));
        carry_out::write_one(ctx, gw, ns, gone).await?;
        return Ok(Storage::Off);
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret_name = Gateway::telemetry_keyring_secret_name(&name);
    let want = KeyringSecret {
        name: &secret_name,
        labels: labels(&[(LABEL_TELEMETRY_OF, &name)]),
        rotation: storage.key_rotation,
    };
    // Read, not taken from a store: a rotation replaces the Secret at the
    // resourceVersion read.
    let (outcome, write) = keyring::decide(secrets.get_opt(&secret_name).await?, &want);
    if let Some(write) = write {
        carry_out::write_one(ctx, gw, ns, write).await?;
    }
    let keyring = match outcome {
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
            // until someone restores or deletes it. The Gateway's condition
            // says so, with one event when it becomes so.
            return Ok(Storage::InvalidKeyring(format!(
                "Secret {secret_name} does not hold a usable keyring ({reason}); telemetry is not stored until it \
                 is restored, or deleted to make a new one"
            )));
        }
    };
    let deployment = Write::kafka_client(writer(gw, storage, ctx)?, kafka_client::Role::Encryptor);
    carry_out::write_one(ctx, gw, ns, deployment).await?;
    Ok(Storage::On(keyring.primary_id().to_string()))
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
    let selector = objects::map(&[
        ("app.kubernetes.io/name", "fleetward-telemetry"),
        ("fleetward.io/gateway", &name),
    ]);
    let writer = EncryptorSpec {
        kind: "telemetry",
        brokers,
        topic: &kafka.topic,
        group: Gateway::telemetry_consumer_group(&ns, &name),
        dead_letter_topic: format!("{}.dlq", kafka.topic),
        database: &storage.postgres.connection_secret_ref,
        table: &storage.postgres.table,
        keyring_secret: Gateway::telemetry_keyring_secret_name(&name),
        retention_days: gw.spec.retention.telemetry_days,
        // Only records the gateway signed are stored.
        extra_env: vec![objects::env_from_secret(
            RECORD_KEY_ENV,
            &Gateway::record_key_secret_name(&name),
            RECORD_KEY_SECRET_KEY,
        )],
    };
    Ok(encryptor(
        child_meta(gw, Gateway::telemetry_deployment_name(&name))?,
        selector,
        "fleetward-telemetry",
        image,
        writer,
    ))
}
