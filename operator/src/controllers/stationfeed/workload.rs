//! The objects of a StationFeed's workloads, built from the feed and the
//! operator's configuration (pure): the ingestor and encryptor
//! Deployments and the feed's record key Secret.

use fleetward_protocol::record::{RECORD_KEY_ENV, RECORD_KEY_SECRET_KEY};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStrategy};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::ObjectMeta;

use super::LABEL_FEED;
use crate::Result;
use crate::config::Config;
use crate::controllers::objects::{self, env};
use crate::controllers::{EncryptorSpec, METRICS_PORT, data_workload};
use crate::crd::StationFeed;
use crate::crd::stationfeed::StationField;
use crate::ownership::{labels, owner_ref};

/// The feed's record key Secret holding `key` (made once, never replaced:
/// the ingestor signs with it and the encryptor verifies).
pub fn record_key_secret(feed: &StationFeed, key: String) -> Result<Secret> {
    let name = StationFeed::record_key_secret_name(&feed.name_any());
    Ok(Secret {
        metadata: child_meta(feed, name)?,
        string_data: Some([(RECORD_KEY_SECRET_KEY.to_string(), key)].into()),
        ..Default::default()
    })
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
        objects::env_from_secret(
            RECORD_KEY_ENV,
            &StationFeed::record_key_secret_name(&name),
            RECORD_KEY_SECRET_KEY,
        ),
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
        child_meta(feed, StationFeed::ingestor_name(&name))?,
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
        group: StationFeed::consumer_group(&ns, &name),
        dead_letter_topic: dlq,
        database: &spec.postgres.connection_secret_ref,
        table: &spec.postgres.table,
        keyring_secret: fleetward_keyring::secret_name(&name),
        retention_days: spec.retention.days,
        extra_env: vec![
            env("SENSITIVE_FIELDS", sensitive.join(",")),
            objects::env_from_secret(
                RECORD_KEY_ENV,
                &StationFeed::record_key_secret_name(&name),
                RECORD_KEY_SECRET_KEY,
            ),
        ],
    };
    Ok(crate::controllers::encryptor(
        child_meta(feed, StationFeed::encryptor_name(&name))?,
        selector,
        "fleetward-encryptor",
        image,
        encryptor,
    ))
}
