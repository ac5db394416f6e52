//! StationFeed reconciler: the feed's encryption keyring Secret, the
//! ingestor and encryptor Deployments, and status.
//!
//! The keyring Secret `<feed>-keyring` is created once and never
//! regenerated while it exists (seed 000: "generated once, reloaded on
//! later runs"): every stored row depends on it. It has no owner
//! reference, so deleting a StationFeed does not make its rows unreadable;
//! re-creating the feed picks the same keyring up again. Rotation (a new
//! `spec.keyRotation`) adds a primary key and keeps the old ones; the
//! Secret's `fleetward.io/key-rotation` annotation records the rotation
//! the keyring reflects.
//!
//! The keyring reaches the encryptor as a Secret volume, not an env var:
//! the kubelet updates the file in place and the encryptor re-reads it, so
//! a rotation takes effect without a restart.
//!
//! Key material never appears in logs, events, status or errors: only key
//! ids do.

use std::sync::Arc;
use std::time::Duration;

use fleetward_keyring::{Keyring, secret_name as keyring_secret_name};

use super::keyring::{self, KeyringSecret, Outcome};
use super::{EncryptorSpec, METRICS_PORT, data_workload_pod, deployment, encryptor_pod};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::conditions::{self, READY};
use crate::context::{Context, MANAGED_BY, apply, apply_status, labels, owner_ref};
use crate::crd::stationfeed::{StationFeedStatus, StationField};
use crate::crd::{SecretKeyRef, StationFeed};
use crate::{Error, Result};

const KIND: &str = "stationfeed";
/// Label on every object of a feed (value: the feed's name).
pub const LABEL_FEED: &str = "fleetward.io/station-feed";
/// Where the encryptor finds `keyring.json`.
pub use super::KEYRING_DIR;
/// On the keyring Secret: the `spec.keyRotation` the keyring reflects.
pub use super::keyring::ANN_ROTATION;

pub fn ingestor_name(feed: &str) -> String {
    format!("{feed}-ingestor")
}

pub fn encryptor_name(feed: &str) -> String {
    format!("{feed}-encryptor")
}

/// One consumer group per feed: two feeds reading the same topic each get
/// every record.
pub fn consumer_group(ns: &str, feed: &str) -> String {
    format!("fleetward.{ns}.{feed}")
}

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let wc = watcher::Config::default().labels(&format!("{}={},{LABEL_FEED}", MANAGED_BY.0, MANAGED_BY.1));
    Controller::new(Api::<StationFeed>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Deployment>::all(client.clone()), wc.clone())
        // The keyring has no owner reference (see module docs), so map it
        // back to its feed by label: deleting or editing it wakes the feed.
        .watches(Api::<Secret>::all(client), wc, |s| {
            let feed = s.labels().get(LABEL_FEED)?.clone();
            Some(ObjectRef::<StationFeed>::new(&feed).within(&s.namespace()?))
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "stationfeed reconcile loop");
            }
        })
        .await;
}

fn error_policy(feed: Arc<StationFeed>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(stationfeed = %feed.name_any(), namespace = ?feed.namespace(), %error, "stationfeed reconcile failed");
    ctx.metrics.failure(KIND, error);
    Action::requeue(Duration::from_secs(10))
}

/// What `ensure_keyring` found or did.
enum KeyringState {
    Ready(Keyring),
    /// The Secret exists but does not hold a usable keyring: left untouched
    /// (overwriting it would orphan every row it encrypted).
    Invalid(String),
}

/// One reconciliation of a StationFeed (public so tests can run it directly).
pub async fn reconcile(feed: Arc<StationFeed>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start(KIND);
    let ns = feed.namespace().ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let name = feed.name_any();
    let generation = feed.metadata.generation;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let feeds: Api<StationFeed> = Api::namespaced(ctx.client.clone(), &ns);
    let mut status = feed.status.clone().unwrap_or_default();

    // 1. The keyring.
    let keyring = match ensure_keyring(&feed, &secrets, &ctx).await? {
        KeyringState::Ready(k) => k,
        KeyringState::Invalid(reason) => {
            let message = format!(
                "Secret {} does not hold a usable keyring ({reason}); it is left untouched. Restore it, or delete it \
                 to generate a new keyring (rows encrypted with the old keys then stay unreadable)",
                keyring_secret_name(&name)
            );
            let announce = !status
                .conditions
                .iter()
                .any(|c| c.type_ == READY && c.reason == "InvalidKeyring");
            conditions::set(
                &mut status.conditions,
                READY,
                false,
                "InvalidKeyring",
                &message,
                generation,
            );
            status.observed_generation = generation;
            write_status(&feeds, &feed, &status).await?;
            if announce {
                ctx.event(feed.as_ref(), true, "InvalidKeyring", "Validate", message)
                    .await;
            }
            return Ok(Action::requeue(Duration::from_secs(300)));
        }
    };

    // 2. The Secrets the workloads read must exist (their values are not
    //    read: only whether the key is there).
    let mut refs = vec![(
        "postgres.connectionSecretRef",
        &feed.spec.postgres.connection_secret_ref,
    )];
    if let Some(j) = &feed.spec.source.jcdecaux {
        refs.push(("source.jcdecaux.apiKeySecretRef", &j.api_key_secret_ref));
    }
    let mut missing = Vec::new();
    for (field, r) in refs {
        if !secret_has_key(&secrets, r).await? {
            missing.push(format!("{field} (Secret {:?}, key {:?})", r.name, r.key));
        }
    }

    // 3. The workloads. Applied even while a Secret is missing, so they
    //    start as soon as it appears.
    let deploys: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let ingestor = apply(&deploys, &ingestor_name(&name), &ingestor_deployment(&feed, &ctx)?).await?;
    let encryptor = apply(&deploys, &encryptor_name(&name), &encryptor_deployment(&feed, &ctx)?).await?;

    // 4. Status.
    status.observed_generation = generation;
    status.primary_key_id = Some(keyring.primary_id().to_string());
    status.key_ids = keyring.key_ids();
    status.last_rotation_time = (keyring.key_ids().len() > 1)
        .then(|| jiff::Timestamp::from_millisecond(keyring.primary_created_at().timestamp_millis()).ok())
        .flatten()
        .map(Time);
    let action = if missing.is_empty() {
        conditions::set(
            &mut status.conditions,
            READY,
            true,
            "Deployed",
            format!(
                "keyring (primary key {}) and the ingestor and encryptor Deployments are in place",
                keyring.primary_id()
            ),
            generation,
        );
        Action::requeue(Duration::from_secs(3600))
    } else {
        let message = format!("missing: {}", missing.join("; "));
        let announce = !status
            .conditions
            .iter()
            .any(|c| c.type_ == READY && c.reason == "SecretNotFound" && c.message == message);
        conditions::set(
            &mut status.conditions,
            READY,
            false,
            "SecretNotFound",
            &message,
            generation,
        );
        if announce {
            ctx.event(feed.as_ref(), true, "SecretNotFound", "Validate", message)
                .await;
        }
        // Referenced Secrets are not watched: look again soon.
        Action::requeue(Duration::from_secs(10))
    };
    let available = |d: &Deployment| d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0) > 0;
    let up = available(&ingestor) && available(&encryptor);
    conditions::set(
        &mut status.conditions,
        "Available",
        up,
        if up { "Available" } else { "NotAvailable" },
        if up {
            "the ingestor and encryptor pods are running"
        } else {
            "the ingestor or encryptor has no available pod yet"
        },
        generation,
    );
    write_status(&feeds, &feed, &status).await?;
    Ok(action)
}

async fn secret_has_key(secrets: &Api<Secret>, r: &SecretKeyRef) -> Result<bool> {
    Ok(secrets
        .get_opt(&r.name)
        .await?
        .is_some_and(|s| s.data.is_some_and(|d| d.contains_key(&r.key))))
}

/// Creates the keyring once, rotates it on request (see `keyring`), and
/// says what happened in the log and the feed's events.
async fn ensure_keyring(feed: &StationFeed, secrets: &Api<Secret>, ctx: &Context) -> Result<KeyringState> {
    let name = feed.name_any();
    let secret_name = keyring_secret_name(&name);
    let want = KeyringSecret {
        name: &secret_name,
        labels: labels(&[(LABEL_FEED, &name)]),
        rotation: feed.spec.key_rotation,
    };
    Ok(match keyring::ensure(secrets, &want).await? {
        Outcome::Unchanged(k) => KeyringState::Ready(k),
        Outcome::Invalid(reason) => KeyringState::Invalid(reason),
        Outcome::Created(keyring) => {
            let previous: Vec<String> = feed.status.as_ref().map(|s| s.key_ids.clone()).unwrap_or_default();
            if previous.is_empty() {
                tracing::info!(stationfeed = %name, primary = keyring.primary_id(), "keyring created");
                ctx.event(
                    feed,
                    false,
                    "KeyringCreated",
                    "CreateKeyring",
                    format!("created keyring {secret_name} with key {}", keyring.primary_id()),
                )
                .await;
            } else {
                // Someone deleted the keyring: the rows it encrypted are lost
                // to decryption. Say so loudly.
                tracing::warn!(stationfeed = %name, ?previous, "keyring was deleted; generated a new one");
                ctx.event(
                    feed,
                    true,
                    "KeyringRecreated",
                    "CreateKeyring",
                    format!(
                        "keyring {secret_name} was deleted and has been generated anew (key {}); rows encrypted with {} \
                         cannot be decrypted with it",
                        keyring.primary_id(),
                        previous.join(", ")
                    ),
                )
                .await;
            }
            KeyringState::Ready(keyring)
        }
        Outcome::Rotated { keyring, previous } => {
            tracing::info!(stationfeed = %name, primary = keyring.primary_id(), %previous, "keyring rotated");
            ctx.event(
                feed,
                false,
                "KeyRotated",
                "RotateKey",
                format!(
                    "new primary key {}; {} older key(s) kept for decryption (previous primary {previous})",
                    keyring.primary_id(),
                    keyring.key_ids().len() - 1
                ),
            )
            .await;
            KeyringState::Ready(keyring)
        }
    })
}

fn child_meta(feed: &StationFeed, name: String) -> Result<serde_json::Value> {
    Ok(json!({
        "name": name,
        "labels": labels(&[(LABEL_FEED, &feed.name_any())]),
        "ownerReferences": [owner_ref(feed)?],
    }))
}

fn brokers(feed: &StationFeed, ctx: &Context) -> String {
    feed.spec
        .kafka
        .bootstrap_servers
        .clone()
        .unwrap_or_else(|| ctx.config.kafka_bootstrap.clone())
}

fn field_name(f: StationField) -> String {
    serde_json::to_value(f)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .expect("StationField serializes as a string")
}

pub fn ingestor_deployment(feed: &StationFeed, ctx: &Context) -> Result<Deployment> {
    let name = feed.name_any();
    let spec = &feed.spec;
    let image = spec
        .images
        .as_ref()
        .and_then(|i| i.ingestor.clone())
        .unwrap_or_else(|| ctx.config.ingestor_image.clone());
    let mut env = vec![
        json!({"name": "KAFKA_BROKERS", "value": brokers(feed, ctx)}),
        json!({"name": "KAFKA_TOPIC", "value": spec.kafka.topic}),
        json!({"name": "POLL_INTERVAL_SECONDS", "value": spec.poll_interval_seconds.to_string()}),
        json!({"name": "METRICS_ADDR", "value": format!("0.0.0.0:{METRICS_PORT}")}),
        json!({"name": "LOG_JSON", "value": "true"}),
    ];
    if let Some(j) = &spec.source.jcdecaux {
        env.extend([
            json!({"name": "STATION_SOURCE", "value": "jcdecaux"}),
            json!({"name": "JCDECAUX_BASE_URL", "value": j.base_url}),
            json!({"name": "JCDECAUX_CONTRACT", "value": j.contract}),
            json!({"name": "JCDECAUX_API_KEY", "valueFrom": {"secretKeyRef": {
                "name": j.api_key_secret_ref.name, "key": j.api_key_secret_ref.key}}}),
        ]);
    } else if let Some(g) = &spec.source.gbfs {
        env.extend([
            json!({"name": "STATION_SOURCE", "value": "gbfs"}),
            json!({"name": "GBFS_STATION_INFORMATION_URL", "value": g.station_information_url}),
            json!({"name": "GBFS_STATION_STATUS_URL", "value": g.station_status_url}),
            json!({"name": "GBFS_SYSTEM_NAME", "value": g.system_name}),
        ]);
    }
    let selector = json!({"app.kubernetes.io/name": "fleetward-ingestor", LABEL_FEED: name});
    let mut body = data_workload_pod(selector, "fleetward-ingestor", image, env, json!([]), json!([]));
    // One poller per feed: two would double the calls against the API's
    // rate limit (the encryptor would drop the duplicates anyway).
    body["replicas"] = json!(1);
    body["strategy"] = json!({"type": "Recreate"});
    Ok(deployment(child_meta(feed, ingestor_name(&name))?, body))
}

pub fn encryptor_deployment(feed: &StationFeed, ctx: &Context) -> Result<Deployment> {
    let name = feed.name_any();
    let ns = feed.namespace().unwrap_or_default();
    let spec = &feed.spec;
    let image = spec
        .images
        .as_ref()
        .and_then(|i| i.encryptor.clone())
        .unwrap_or_else(|| ctx.config.encryptor_image.clone());
    let dlq = spec
        .kafka
        .dead_letter_topic
        .clone()
        .unwrap_or_else(|| format!("{}.dlq", spec.kafka.topic));
    let sensitive: Vec<String> = spec.sensitive_fields.iter().copied().map(field_name).collect();
    let selector = json!({"app.kubernetes.io/name": "fleetward-encryptor", LABEL_FEED: name});
    let encryptor = EncryptorSpec {
        kind: "stations",
        brokers: brokers(feed, ctx),
        topic: &spec.kafka.topic,
        group: consumer_group(&ns, &name),
        dead_letter_topic: dlq,
        database: &spec.postgres.connection_secret_ref,
        table: &spec.postgres.table,
        keyring_secret: keyring_secret_name(&name),
        extra_env: vec![json!({"name": "SENSITIVE_FIELDS", "value": sensitive.join(",")})],
    };
    let mut body = encryptor_pod(selector, "fleetward-encryptor", image, encryptor);
    body["replicas"] = json!(1);
    Ok(deployment(child_meta(feed, encryptor_name(&name))?, body))
}

async fn write_status(api: &Api<StationFeed>, feed: &StationFeed, status: &StationFeedStatus) -> Result<()> {
    if feed.status.as_ref() == Some(status) {
        return Ok(());
    }
    apply_status(api, feed, status).await
}
