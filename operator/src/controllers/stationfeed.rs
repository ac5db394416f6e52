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

use fleetward_keyring::secret_name as keyring_secret_name;

use super::kafka_client;
use super::keyring::{self, KeyringSecret};
use super::objects::{self, env};
use super::{EncryptorSpec, METRICS_PORT, data_workload};
use super::{policy, secret_refs};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStrategy};
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use super::applier::{apply, create_once};
use crate::config::Config;
use crate::context::Context;
use crate::crd::StationFeed;
use crate::crd::stationfeed::StationField;
use crate::ownership::{MANAGED_BY, labels, owner_ref};
use crate::{Error, Result, pki};
use fleetward_protocol::record::{RECORD_KEY_ENV, RECORD_KEY_SECRET_KEY};

pub mod plan;

const KIND: &str = "stationfeed";
/// Label on every object of a feed (value: the feed's name).
pub const LABEL_FEED: &str = "fleetward.io/station-feed";
/// Where the encryptor finds `keyring.json`.
pub use super::KEYRING_DIR;
/// On the keyring Secret: the `spec.keyRotation` the keyring reflects.
pub use super::keyring::ANN_ROTATION;

/// The feed's record key: the HMAC key of every station record its
/// ingestor produces, which its encryptor verifies (key `record.key`).
pub fn record_key_secret_name(feed: &str) -> String {
    format!("{feed}-record-key")
}

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
    policy::on_error(feed, error, ctx, KIND)
}

/// One reconciliation of a StationFeed (public so tests can run it directly).
#[tracing::instrument(skip_all, fields(stationfeed = %feed.name_any(), namespace = feed.namespace().as_deref().unwrap_or("")))]
pub async fn reconcile(feed: Arc<StationFeed>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start(KIND);
    let result = reconcile_feed(&feed, &ctx).await;
    policy::finished(&ctx, feed.as_ref(), result)
}

/// Observe (the keyring — created or rotated by the keyring module, which
/// owns those decisions — the referenced Secrets, the Deployments'
/// availability), plan (status, events, what to deploy), apply.
async fn reconcile_feed(feed: &StationFeed, ctx: &Context) -> Result<Action> {
    let ns = feed.namespace().ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let name = feed.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let want = KeyringSecret {
        name: &keyring_secret_name(&name),
        labels: labels(&[(LABEL_FEED, &name)]),
        rotation: feed.spec.key_rotation,
    };
    let keyring = keyring::ensure(&secrets, &want).await?;
    // The Secrets the workloads read must exist and not be the
    // operator's (their values are not read).
    let checked = secret_refs::check(&secrets, &plan::secret_refs(feed), true).await?;
    let deploys: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let mut available = true;
    for d in [ingestor_name(&name), encryptor_name(&name)] {
        let up = deploys
            .get_opt(&d)
            .await?
            .and_then(|d| d.status?.available_replicas)
            .unwrap_or(0)
            > 0;
        available &= up;
    }
    let observed = plan::Observed {
        keyring,
        refused: checked.refusal(),
        missing: checked.missing,
        available,
    };
    let plan = plan::plan(feed, observed, &ctx.config)?;
    if !plan.deployments.is_empty() {
        ensure_record_key(&secrets, feed).await?;
    }
    for d in &plan.deployments {
        let d_name = d.metadata.name.clone().unwrap_or_default();
        let mut d = d.clone();
        if let Some(spec) = d.spec.as_mut() {
            let role = if d_name == ingestor_name(&name) {
                kafka_client::Role::Ingestor
            } else {
                kafka_client::Role::Encryptor
            };
            let who = kafka_client::Workload {
                namespace: &ns,
                name: &d_name,
                owner: owner_ref(feed)?,
                role,
            };
            kafka_client::certify(ctx, &who, &mut spec.template).await?;
        }
        apply(&deploys, &d_name, &d, None).await?;
    }
    policy::write_status(ctx, feed, feed.status.as_ref(), &plan.status).await?;
    for ev in plan.events {
        ctx.event(feed, ev.warning, ev.reason, ev.action, ev.note).await;
    }
    Ok(Action::requeue(plan.requeue))
}

/// Makes the feed's record key once (random, never replaced), before the
/// workloads that read it.
async fn ensure_record_key(secrets: &Api<Secret>, feed: &StationFeed) -> Result<()> {
    let name = record_key_secret_name(&feed.name_any());
    if secrets.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    let secret = Secret {
        metadata: child_meta(feed, name.clone())?,
        string_data: Some([(RECORD_KEY_SECRET_KEY.to_string(), pki::random_secret_hex())].into()),
        ..Default::default()
    };
    create_once(secrets, &name, &secret).await?;
    Ok(())
}

fn child_meta(feed: &StationFeed, name: String) -> Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(name),
        labels: Some(labels(&[(LABEL_FEED, &feed.name_any())])),
        owner_references: Some(vec![owner_ref(feed)?]),
        ..Default::default()
    })
}

fn brokers(feed: &StationFeed, config: &Config) -> String {
    feed.spec
        .kafka
        .bootstrap_servers
        .clone()
        .unwrap_or_else(|| config.kafka_bootstrap.clone())
}

fn field_name(f: StationField) -> String {
    serde_json::to_value(f)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .expect("StationField serializes as a string")
}

pub fn ingestor_deployment(feed: &StationFeed, config: &Config) -> Result<Deployment> {
    let name = feed.name_any();
    let spec = &feed.spec;
    let image = spec
        .images
        .as_ref()
        .and_then(|i| i.ingestor.clone())
        .unwrap_or_else(|| config.ingestor_image.clone());
    let mut vars = vec![
        env("KAFKA_BROKERS", brokers(feed, config)),
        env("KAFKA_TOPIC", spec.kafka.topic.as_str()),
        env("POLL_INTERVAL_SECONDS", spec.poll_interval_seconds.to_string()),
        objects::env_from_secret(RECORD_KEY_ENV, &record_key_secret_name(&name), RECORD_KEY_SECRET_KEY),
        env("METRICS_ADDR", format!("0.0.0.0:{METRICS_PORT}")),
        env("LOG_JSON", "true"),
    ];
    if let Some(j) = &spec.source.jcdecaux {
        vars.extend([
            env("STATION_SOURCE", "jcdecaux"),
            env("JCDECAUX_BASE_URL", j.base_url.as_str()),
            env("JCDECAUX_CONTRACT", j.contract.as_str()),
            objects::env_from_secret(
                "JCDECAUX_API_KEY",
                &j.api_key_secret_ref.name,
                &j.api_key_secret_ref.key,
            ),
        ]);
    } else if let Some(g) = &spec.source.gbfs {
        vars.extend([
            env("STATION_SOURCE", "gbfs"),
            env("GBFS_STATION_INFORMATION_URL", g.station_information_url.as_str()),
            env("GBFS_STATION_STATUS_URL", g.station_status_url.as_str()),
            env("GBFS_SYSTEM_NAME", g.system_name.as_str()),
        ]);
    }
    let selector = objects::map(&[("app.kubernetes.io/name", "fleetward-ingestor"), (LABEL_FEED, &name)]);
    let mut deployment = data_workload(
        child_meta(feed, ingestor_name(&name))?,
        selector,
        "fleetward-ingestor",
        image,
        vars,
        vec![],
        vec![],
    );
    // One poller per feed, never two during a rollout: two would double
    // the calls against the API's rate limit.
    if let Some(spec) = deployment.spec.as_mut() {
        spec.strategy = Some(DeploymentStrategy {
            type_: Some("Recreate".into()),
            ..Default::default()
        });
    }
    Ok(deployment)
}

pub fn encryptor_deployment(feed: &StationFeed, config: &Config) -> Result<Deployment> {
    let name = feed.name_any();
    let ns = feed.namespace().unwrap_or_default();
    let spec = &feed.spec;
    let image = spec
        .images
        .as_ref()
        .and_then(|i| i.encryptor.clone())
        .unwrap_or_else(|| config.encryptor_image.clone());
    let dlq = spec
        .kafka
        .dead_letter_topic
        .clone()
        .unwrap_or_else(|| format!("{}.dlq", spec.kafka.topic));
    let sensitive: Vec<String> = spec.sensitive_fields.iter().copied().map(field_name).collect();
    let selector = objects::map(&[("app.kubernetes.io/name", "fleetward-encryptor"), (LABEL_FEED, &name)]);
    let encryptor = EncryptorSpec {
        kind: "stations",
        brokers: brokers(feed, config),
        topic: &spec.kafka.topic,
        group: consumer_group(&ns, &name),
        dead_letter_topic: dlq,
        database: &spec.postgres.connection_secret_ref,
        table: &spec.postgres.table,
        keyring_secret: keyring_secret_name(&name),
        extra_env: vec![
            env("SENSITIVE_FIELDS", sensitive.join(",")),
            objects::env_from_secret(RECORD_KEY_ENV, &record_key_secret_name(&name), RECORD_KEY_SECRET_KEY),
        ],
    };
    Ok(super::encryptor(
        child_meta(feed, encryptor_name(&name))?,
        selector,
        "fleetward-encryptor",
        image,
        encryptor,
    ))
}
