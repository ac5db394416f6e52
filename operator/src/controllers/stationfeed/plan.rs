//! What a StationFeed's status, events and Deployments should be, as a
//! pure function of the feed and what was observed: the keyring outcome
//! (the keyring module creates and rotates; this says what that means for
//! the feed), the referenced Secrets that are missing, and whether both
//! workloads have an available pod.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::LABEL_FEED;
use super::workload::{encryptor_deployment, ingestor_deployment, record_key_secret};
use crate::Result;
use crate::conditions::{self, READY};
use crate::config::Config;
use crate::controllers::desired::{Desired, Write};
use crate::controllers::events::{PlannedEvent, not_ready};
use crate::controllers::kafka_client;
use crate::controllers::keyring::{self, KeyringSecret, Outcome};
use crate::crd::stationfeed::StationFeedStatus;
use crate::crd::{SecretKeyRef, StationFeed};
use crate::ownership::labels;

pub struct Observed {
    /// The keyring Secret as read; `None`: there is none.
    pub keyring: Option<Secret>,
    /// The feed's record key Secret exists.
    pub record_key: bool,
    /// Referenced Secrets (or keys) that do not exist, described.
    pub missing: Vec<String>,
    /// Why a Secret the spec names may not be used (the operator made it),
    /// when so: nothing is deployed.
    pub refused: Option<String>,
    /// The ingestor and the encryptor each have an available pod.
    pub available: bool,
}

/// The Secrets a feed's workloads read, by the spec field naming them.
pub fn secret_refs(feed: &StationFeed) -> Vec<(&'static str, &SecretKeyRef)> {
    let mut refs = vec![(
        "postgres.connectionSecretRef",
        &feed.spec.postgres.connection_secret_ref,
    )];
    if let Some(j) = &feed.spec.source.jcdecaux {
        refs.push(("source.jcdecaux.apiKeySecretRef", &j.api_key_secret_ref));
    }
    refs
}

pub(super) const INVALID_KEYRING_RETRY: Duration = Duration::from_secs(300);
/// Referenced Secrets are not watched: look again soon while one is missing.
pub(super) const MISSING_SECRET_RETRY: Duration = Duration::from_secs(10);
pub(super) const RESYNC: Duration = Duration::from_secs(3600);

/// `new_key` makes the record key when its Secret does not exist.
pub fn plan(
    feed: &StationFeed,
    mut obs: Observed,
    config: &Config,
    new_key: impl FnOnce() -> String,
) -> Result<Desired<StationFeedStatus>> {
    let name = feed.name_any();
    let want = KeyringSecret {
        name: &fleetward_keyring::secret_name(&name),
        labels: labels(&[(LABEL_FEED, &name)]),
        rotation: feed.spec.key_rotation,
    };
    let (outcome, keyring_write) = keyring::decide(obs.keyring.take(), &want);
    let mut desired = decide(feed, outcome, obs, config, new_key)?;
    // The keyring first: the status and the workloads follow from it.
    desired.writes.splice(0..0, keyring_write);
    Ok(desired)
}

/// The plan once the keyring's outcome is known.
pub(super) fn decide(
    feed: &StationFeed,
    keyring: Outcome,
    obs: Observed,
    config: &Config,
    new_key: impl FnOnce() -> String,
) -> Result<Desired<StationFeedStatus>> {
    let name = feed.name_any();
    let generation = feed.metadata.generation;
    let mut status = feed.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    let mut events = Vec::new();
    let secret_name = fleetward_keyring::secret_name(&name);

    let keyring = match keyring {
        Outcome::Invalid(reason) => {
            let message = format!(
                "Secret {secret_name} does not hold a usable keyring ({reason}); it is left untouched. Restore it, or \
                 delete it to generate a new keyring (rows encrypted with the old keys then stay unreadable)"
            );
            not_ready(
                &mut status.conditions,
                &mut events,
                ("InvalidKeyring", "Validate"),
                message,
                generation,
            );
            return Ok(Desired {
                writes: Vec::new(),
                status: Some(status),
                events,
                requeue: INVALID_KEYRING_RETRY,
            });
        }
        Outcome::Unchanged(k) => k,
        Outcome::Created(k) => {
            let previous = status.key_ids.clone();
            if previous.is_empty() {
                events.push(PlannedEvent::normal(
                    "KeyringCreated",
                    "CreateKeyring",
                    format!("created keyring {secret_name} with key {}", k.primary_id()),
                ));
            } else {
                // Someone deleted the keyring: the rows it encrypted are
                // lost to decryption. Say so loudly.
                events.push(PlannedEvent::warning(
                    "KeyringRecreated",
                    "CreateKeyring",
                    format!(
                        "keyring {secret_name} was deleted and has been generated anew (key {}); rows encrypted with \
                         {} cannot be decrypted with it",
                        k.primary_id(),
                        previous.join(", ")
                    ),
                ));
            }
            k
        }
        Outcome::Rotated { keyring, previous } => {
            events.push(PlannedEvent::normal(
                "KeyRotated",
                "RotateKey",
                format!(
                    "new primary key {}; {} older key(s) kept for decryption (previous primary {previous})",
                    keyring.primary_id(),
                    keyring.key_ids().len() - 1
                ),
            ));
            keyring
        }
    };

    status.primary_key_id = Some(keyring.primary_id().to_string());
    status.key_ids = keyring.key_ids();
    status.last_rotation_time = (keyring.key_ids().len() > 1)
        .then(|| jiff::Timestamp::from_millisecond(keyring.primary_created_at().timestamp_millis()).ok())
        .flatten()
        .map(Time);
    if let Some(message) = obs.refused {
        not_ready(
            &mut status.conditions,
            &mut events,
            ("SecretNotAllowed", "Validate"),
            message,
            generation,
        );
        return Ok(Desired {
            writes: Vec::new(),
            status: Some(status),
            events,
            requeue: RESYNC,
        });
    }
    let requeue = if obs.missing.is_empty() {
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
        RESYNC
    } else {
        let message = format!("missing: {}", obs.missing.join("; "));
        let announce = !status
            .conditions
            .iter()
            .any(|c| c.type_ == READY && c.reason == "SecretNotFound" && c.message == message);
        if announce {
            events.push(PlannedEvent::warning("SecretNotFound", "Validate", message.clone()));
        }
        conditions::set(
            &mut status.conditions,
            READY,
            false,
            "SecretNotFound",
            &message,
            generation,
        );
        MISSING_SECRET_RETRY
    };
    let up = obs.available;
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
    // Applied even while a referenced Secret is missing, so the pods start
    // as soon as it appears; the record key they read is made once first.
    let mut writes = Vec::new();
    if !obs.record_key {
        writes.push(Write::create_once(record_key_secret(feed, new_key())?));
    }
    writes.push(Write::kafka_client(
        ingestor_deployment(feed, config)?,
        kafka_client::Role::Ingestor,
    ));
    writes.push(Write::kafka_client(
        encryptor_deployment(feed, config)?,
        kafka_client::Role::Encryptor,
    ));
    Ok(Desired {
        writes,
        status: Some(status),
        events,
        requeue,
    })
}
