//! Every decision of the StationFeed `plan`, without an API server: the
//! keyring outcomes, the refused and missing Secrets, the workloads and the
//! order of the writes.

use super::plan::*;
use crate::Result;
use crate::conditions::READY;
use crate::config::Config;
use crate::controllers::desired::{Desired, Object, Write};
use crate::controllers::keyring::Outcome;
use crate::crd::StationFeed;
use crate::crd::stationfeed::StationFeedStatus;
use fleetward_keyring::Keyring;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde_json::json;

type Plan = Desired<StationFeedStatus>;
const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// What the tests observe: the keyring's outcome as `keyring::decide`
/// gives it (its own tests cover the Secret), the rest as read.
struct Seen {
    keyring: Outcome,
    missing: Vec<String>,
    refused: Option<String>,
    available: bool,
}

fn plan(feed: &StationFeed, seen: Seen, config: &Config) -> Result<Plan> {
    let obs = Observed {
        keyring: None,
        record_key: true,
        missing: seen.missing,
        refused: seen.refused,
        available: seen.available,
    };
    decide(feed, seen.keyring, obs, config, || KEY.into())
}

fn status(p: &Plan) -> &StationFeedStatus {
    p.status.as_ref().unwrap()
}

fn deployments(p: &Plan) -> Vec<&Deployment> {
    p.applied::<Deployment>()
}

fn feed(status: serde_json::Value) -> StationFeed {
    serde_json::from_value(json!({
        "apiVersion": "fleetward.io/v1alpha1", "kind": "StationFeed",
        "metadata": {"name": "lyon", "namespace": "ns", "generation": 4, "uid": "u-1"},
        "spec": {
            "source": {"jcdecaux": {"contract": "lyon", "apiKeySecretRef": {"name": "jcd", "key": "apiKey"}}},
            "kafka": {"topic": "stations"},
            "postgres": {"connectionSecretRef": {"name": "db", "key": "url"}},
        },
        "status": status,
    }))
    .unwrap()
}

fn observed(keyring: Outcome) -> Seen {
    Seen {
        keyring,
        missing: Vec::new(),
        refused: None,
        available: true,
    }
}

fn reasons(p: &Plan) -> Vec<&str> {
    p.events.iter().map(|e| e.reason).collect()
}

fn ready(p: &Plan) -> (String, String) {
    let c = status(p).conditions.iter().find(|c| c.type_ == READY).unwrap();
    (c.status.clone(), c.reason.clone())
}

#[test]
fn a_new_feed_deploys_both_workloads_and_announces_its_keyring() {
    let k = Keyring::generate();
    let p = plan(
        &feed(json!({})),
        observed(Outcome::Created(k.clone())),
        &Config::default(),
    )
    .unwrap();
    assert_eq!(reasons(&p), ["KeyringCreated"]);
    assert!(!p.events[0].warning);
    let names: Vec<_> = deployments(&p)
        .iter()
        .map(|d| d.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["lyon-ingestor", "lyon-encryptor"]);
    assert_eq!(ready(&p), ("True".into(), "Deployed".into()));
    assert_eq!(status(&p).primary_key_id.as_deref(), Some(k.primary_id()));
    assert_eq!(status(&p).observed_generation, Some(4));
    assert_eq!(p.requeue, RESYNC);
}

#[test]
fn a_keyring_recreated_after_deletion_is_a_warning_naming_the_lost_keys() {
    let p = plan(
        &feed(json!({"keyIds": ["old-1", "old-2"]})),
        observed(Outcome::Created(Keyring::generate())),
        &Config::default(),
    )
    .unwrap();
    assert_eq!(reasons(&p), ["KeyringRecreated"]);
    assert!(p.events[0].warning && p.events[0].note.contains("old-1, old-2"));
}

#[test]
fn a_rotation_is_announced_and_recorded() {
    let mut k = Keyring::generate();
    let previous = k.primary_id().to_string();
    k.rotate();
    let p = plan(
        &feed(json!({})),
        observed(Outcome::Rotated {
            keyring: k.clone(),
            previous: previous.clone(),
        }),
        &Config::default(),
    )
    .unwrap();
    assert_eq!(reasons(&p), ["KeyRotated"]);
    assert_eq!(status(&p).key_ids.len(), 2);
    assert!(status(&p).last_rotation_time.is_some());
    assert!(p.events[0].note.contains(&previous));
}

#[test]
fn an_unusable_keyring_deploys_nothing_and_warns_once() {
    let p = plan(
        &feed(json!({})),
        observed(Outcome::Invalid("not JSON".into())),
        &Config::default(),
    )
    .unwrap();
    assert!(deployments(&p).is_empty());
    assert_eq!(ready(&p), ("False".into(), "InvalidKeyring".into()));
    assert_eq!(reasons(&p), ["InvalidKeyring"]);
    assert_eq!(p.requeue, INVALID_KEYRING_RETRY);
    let again = feed(serde_json::to_value(status(&p)).unwrap());
    let p2 = plan(
        &again,
        observed(Outcome::Invalid("not JSON".into())),
        &Config::default(),
    )
    .unwrap();
    assert!(p2.events.is_empty(), "no second event for the same condition");
}

#[test]
fn a_secret_the_operator_made_deploys_nothing_and_warns_once() {
    let mut obs = observed(Outcome::Unchanged(Keyring::generate()));
    obs.refused = Some("refused: postgres.connectionSecretRef (Secret \"gw-ca\", key \"tls.key\")".into());
    let p = plan(&feed(json!({})), obs, &Config::default()).unwrap();
    assert!(deployments(&p).is_empty(), "the CA key never reaches a pod");
    assert_eq!(ready(&p), ("False".into(), "SecretNotAllowed".into()));
    assert_eq!(reasons(&p), ["SecretNotAllowed"]);
    let again = feed(serde_json::to_value(status(&p)).unwrap());
    let mut obs = observed(Outcome::Unchanged(Keyring::generate()));
    obs.refused = Some("refused: postgres.connectionSecretRef (Secret \"gw-ca\", key \"tls.key\")".into());
    let p2 = plan(&again, obs, &Config::default()).unwrap();
    assert!(p2.events.is_empty(), "no second event for the same condition");
}

#[test]
fn a_missing_secret_still_deploys_and_looks_again_soon() {
    let mut obs = observed(Outcome::Unchanged(Keyring::generate()));
    obs.missing = vec!["postgres.connectionSecretRef (Secret \"db\", key \"url\")".into()];
    obs.available = false;
    let p = plan(&feed(json!({})), obs, &Config::default()).unwrap();
    assert_eq!(deployments(&p).len(), 2);
    assert_eq!(ready(&p), ("False".into(), "SecretNotFound".into()));
    assert_eq!(reasons(&p), ["SecretNotFound"]);
    assert_eq!(p.requeue, MISSING_SECRET_RETRY);
    let avail = status(&p).conditions.iter().find(|c| c.type_ == "Available").unwrap();
    assert_eq!(avail.status, "False");
}

#[test]
fn the_ingestor_reads_its_api_key_from_the_secret_and_never_runs_twice() {
    let p = plan(
        &feed(json!({})),
        observed(Outcome::Unchanged(Keyring::generate())),
        &Config::default(),
    )
    .unwrap();
    let d = serde_json::to_value(deployments(&p)[0]).unwrap();
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    assert_eq!(d["spec"]["replicas"], 1);
    let env = d["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .clone();
    let key = env.iter().find(|e| e["name"] == "JCDECAUX_API_KEY").unwrap();
    assert_eq!(key["valueFrom"]["secretKeyRef"]["name"], "jcd");
    assert!(key.get("value").is_none(), "the key itself is never in the Deployment");
    let enc = serde_json::to_value(deployments(&p)[1]).unwrap();
    let vols = &enc["spec"]["template"]["spec"]["volumes"];
    assert_eq!(vols[0]["secret"]["secretName"], "lyon-keyring");
}

fn keyring_secret(k: &Keyring, rotation: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": "lyon-keyring", "resourceVersion": "7",
                     "annotations": {ANN: rotation}},
        "data": {"keyring.json": base64(k.to_json().as_bytes())},
    }))
    .unwrap()
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

const ANN: &str = crate::controllers::keyring::ANN_ROTATION;

/// The order a new feed's writes are carried out in; names only.
fn writes(p: &Plan) -> Vec<String> {
    p.writes
        .iter()
        .map(|w| match w {
            Write::CreateNew(Object::Secret(s)) => format!("new {}", s.name_any()),
            Write::Replace(Object::Secret(s)) => format!("replace {}", s.name_any()),
            Write::CreateOnce(Object::Secret(s)) => format!("once {}", s.name_any()),
            Write::ApplyKafkaClient(Object::Deployment(d), _) => format!("apply {}", d.name_any()),
            _ => panic!("a write a StationFeed never plans"),
        })
        .collect()
}

#[test]
fn a_new_feed_writes_its_keyring_then_its_record_key_then_its_workloads() {
    let obs = Observed {
        keyring: None,
        record_key: false,
        missing: Vec::new(),
        refused: None,
        available: false,
    };
    let p = super::plan::plan(&feed(json!({})), obs, &Config::default(), || KEY.into()).unwrap();
    assert_eq!(
        writes(&p),
        [
            "new lyon-keyring",
            "once lyon-record-key",
            "apply lyon-ingestor",
            "apply lyon-encryptor"
        ]
    );
    assert_eq!(reasons(&p), ["KeyringCreated"]);
    let notes: Vec<_> = p.events.iter().map(|e| &e.note).collect();
    let text = serde_json::to_string(&(deployments(&p), status(&p), notes)).unwrap();
    assert!(!text.contains(KEY), "the record key leaks out of its Secret");
}

#[test]
fn a_new_rotation_counter_replaces_the_keyring_read_and_keeps_the_record_key() {
    let k = Keyring::generate();
    let obs = Observed {
        keyring: Some(keyring_secret(&k, "0")),
        record_key: true,
        missing: Vec::new(),
        refused: None,
        available: true,
    };
    let mut f = feed(json!({}));
    f.spec.key_rotation = 1;
    let p = super::plan::plan(&f, obs, &Config::default(), || KEY.into()).unwrap();
    assert_eq!(
        writes(&p),
        ["replace lyon-keyring", "apply lyon-ingestor", "apply lyon-encryptor"]
    );
    let Write::Replace(Object::Secret(s)) = &p.writes[0] else {
        unreachable!()
    };
    assert_eq!(s.metadata.resource_version.as_deref(), Some("7"), "at the version read");
    assert_eq!(reasons(&p), ["KeyRotated"]);
    assert_eq!(status(&p).key_ids.len(), 2);
}
