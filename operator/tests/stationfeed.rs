//! StationFeed reconciler against the real kube-apiserver: keyring created
//! once and rotated on request, Deployments configured for the workloads'
//! own configuration parsers, status, and no key material anywhere but the
//! keyring Secret.

mod common;

use std::collections::BTreeMap;

use clap::{ArgAction, CommandFactory, Parser};
use common::*;
use fleetward_keyring::{Keyring, SECRET_DATA_KEY};
use fleetward_operator::controllers::stationfeed::{ANN_ROTATION, KEYRING_DIR};
use fleetward_operator::crd::StationFeed;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{EnvVar, Event, Secret};
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

const API_KEY: &str = "SECRET-jcdecaux-key-0b7e";
const DB_URL: &str = "postgres://stations:SECRET-pg-pass@db.example:5432/stations";

fn feed_yaml(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: fleetward.io/v1alpha1\nkind: StationFeed\nmetadata: {{name: {name}}}\nspec:\n  source:\n    jcdecaux:\n      baseUrl: http://jcdecaux.test\n      contract: Dublin\n      apiKeySecretRef: {{name: jcdecaux, key: apiKey}}\n  pollIntervalSeconds: 30\n  kafka: {{topic: stations.dublin}}\n  sensitiveFields: [address, contract_name, position]\n  postgres:\n    connectionSecretRef: {{name: stations-db, key: url}}\n    table: dublin_stations\n{extra}"
    )
}

async fn create_secret(ns: &TestNs, name: &str, key: &str, value: &str) {
    ns.api::<Secret>()
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                string_data: Some(BTreeMap::from([(key.to_string(), value.to_string())])),
                ..Default::default()
            },
        )
        .await
        .expect("create secret");
}

async fn with_secrets(prefix: &str) -> TestNs {
    operator();
    let ns = TestNs::new(prefix).await;
    create_secret(&ns, "jcdecaux", "apiKey", API_KEY).await;
    create_secret(&ns, "stations-db", "url", DB_URL).await;
    ns
}

fn ready(f: &StationFeed) -> Option<(String, String)> {
    f.status.as_ref().and_then(|s| ready_reason(&s.conditions))
}

async fn wait_feed(ns: &TestNs, name: &str, what: &str, ok: impl Fn(&StationFeed) -> bool) -> StationFeed {
    let api = ns.api::<StationFeed>();
    wait_for(what, 60, || get_opt(&api, name), ok).await
}

async fn ready_feed(ns: &TestNs, name: &str) -> StationFeed {
    wait_feed(ns, name, &format!("StationFeed {name} Ready"), |f| {
        ready(f).is_some_and(|(s, _)| s == "True")
            && f.status.as_ref().and_then(|s| s.observed_generation) == f.metadata.generation
    })
    .await
}

async fn keyring(ns: &TestNs, feed: &str) -> (Keyring, Secret) {
    let s = ns
        .secret(&format!("{feed}-keyring"))
        .await
        .expect("keyring Secret exists");
    let text = String::from_utf8(s.data.as_ref().unwrap()[SECRET_DATA_KEY].0.clone()).unwrap();
    (Keyring::from_json(&text).expect("a valid keyring"), s)
}

async fn patch_spec(ns: &TestNs, name: &str, spec: serde_json::Value) {
    ns.api::<StationFeed>()
        .patch(name, &PatchParams::default(), &Patch::Merge(json!({ "spec": spec })))
        .await
        .expect("patch StationFeed");
}

async fn deployment(ns: &TestNs, name: &str) -> Deployment {
    let api = ns.api::<Deployment>();
    wait_for(&format!("Deployment {name}"), 30, || get_opt(&api, name), |_| true).await
}

fn env_of(d: &Deployment) -> Vec<EnvVar> {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]
        .env
        .clone()
        .unwrap_or_default()
}

fn env_value(d: &Deployment, name: &str) -> Option<String> {
    env_of(d).into_iter().find(|e| e.name == name).and_then(|e| e.value)
}

/// Turns a Deployment's env into the workload's command line: every
/// variable must be one the binary reads, every required setting must be
/// there, and Secret references resolve to the Secrets this test made.
fn argv(cmd: &clap::Command, d: &Deployment, secrets: &BTreeMap<(&str, &str), &str>) -> Vec<String> {
    let env = env_of(d);
    let mut out = vec![cmd.get_name().to_string()];
    for e in &env {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_env().and_then(|v| v.to_str()) == Some(e.name.as_str()))
            .unwrap_or_else(|| panic!("{} sets {}, which the binary does not read", d.name_any(), e.name));
        let value = match (&e.value, &e.value_from) {
            (Some(v), None) => v.clone(),
            (None, Some(from)) => {
                let r = from.secret_key_ref.as_ref().expect("only secretKeyRef is used");
                secrets[&(r.name.as_str(), r.key.as_str())].to_string()
            }
            other => panic!("{}: unexpected env source {other:?}", e.name),
        };
        let long = arg.get_long().unwrap();
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            if value == "true" {
                out.push(format!("--{long}"));
            }
        } else {
            out.push(format!("--{long}={value}"));
        }
    }
    for arg in cmd.get_arguments().filter(|a| a.is_required_set()) {
        let name = arg.get_env().unwrap().to_str().unwrap();
        assert!(
            env.iter().any(|e| e.name == name),
            "{} lacks required {name}",
            d.name_any()
        );
    }
    out
}

/// The feed's record key, as the operator made it: random, 32 bytes (hex),
/// owned by the feed.
async fn feed_record_key(ns: &TestNs, feed: &str) -> String {
    let secret = ns.api::<Secret>().get(&format!("{feed}-record-key")).await.unwrap();
    let key = String::from_utf8(secret.data.as_ref().unwrap()["record.key"].0.clone()).unwrap();
    assert_eq!(key.len(), 64);
    assert_eq!(secret.owner_references()[0].name, feed);
    key
}

/// No key of `ring` (Fernet keys, index key) appears in `text`.
fn assert_no_key_material(ring: &Keyring, text: &str, what: &str) {
    let doc: serde_json::Value = serde_json::from_str(&ring.to_json()).unwrap();
    let mut secrets = vec![doc["indexKey"].as_str().unwrap().to_string()];
    for k in doc["keys"].as_array().unwrap() {
        secrets.push(k["key"].as_str().unwrap().to_string());
    }
    for s in secrets {
        assert!(!text.contains(&s[..24]), "{what} contains key material");
    }
}

async fn events_text(ns: &TestNs) -> String {
    let events = ns.api::<Event>().list(&ListParams::default()).await.unwrap();
    serde_json::to_string(&events.items).unwrap()
}

#[tokio::test]
async fn keyring_deployments_and_status() {
    let ns = with_secrets("fw-sf-deploy").await;
    ns.apply_yaml(&feed_yaml("dublin", "")).await;
    let feed = ready_feed(&ns, "dublin").await;
    let (ring, secret) = keyring(&ns, "dublin").await;
    let status = feed.status.clone().unwrap();
    assert_eq!(status.primary_key_id.as_deref(), Some(ring.primary_id()));
    assert_eq!(status.key_ids, ring.key_ids());
    assert_eq!(status.key_ids.len(), 1);
    assert!(status.last_rotation_time.is_none());
    assert_eq!(secret.annotations()[ANN_ROTATION], "0");
    // The keyring outlives its feed on purpose: no owner reference.
    assert!(secret.owner_references().is_empty());

    let record_key = feed_record_key(&ns, "dublin").await;
    let secrets = BTreeMap::from([
        (("jcdecaux", "apiKey"), API_KEY),
        (("stations-db", "url"), DB_URL),
        (("dublin-record-key", "record.key"), record_key.as_str()),
    ]);
    let ing = deployment(&ns, "dublin-ingestor").await;
    let enc = deployment(&ns, "dublin-encryptor").await;
    for d in [&ing, &enc] {
        assert_eq!(d.owner_references()[0].name, "dublin");
        // Secret values are referenced, never copied into the spec.
        let spec = serde_json::to_string(d).unwrap();
        assert!(!spec.contains("SECRET-"), "{} embeds a secret value", d.name_any());
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        let sc = pod.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
    }

    // The env is exactly what the binaries' own parsers accept.
    let args = argv(&fleetward_ingestor::Args::command(), &ing, &secrets);
    let parsed = fleetward_ingestor::Args::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert_eq!(parsed.source, fleetward_ingestor::SourceKind::Jcdecaux);
    assert_eq!(parsed.jcdecaux_contract.as_deref(), Some("Dublin"));
    assert_eq!(parsed.jcdecaux_base_url.as_str(), "http://jcdecaux.test/");
    assert!(args.contains(&format!("--jcdecaux-api-key={API_KEY}")));
    assert_eq!(parsed.kafka_topic, "stations.dublin");
    assert_eq!(
        parsed.kafka_brokers,
        env("KAFKA_BROKERS"),
        "the operator's default Kafka"
    );
    assert_eq!(parsed.poll_interval_seconds, 30);
    let ingestor_key = parsed.record_key.clone().expect("the ingestor signs its records");

    let args = argv(&fleetward_encryptor::Args::command(), &enc, &secrets);
    let parsed = fleetward_encryptor::Args::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert_eq!(parsed.kafka_topic, "stations.dublin");
    assert_eq!(parsed.settings().unwrap().dead_letter_topic, "stations.dublin.dlq");
    assert_eq!(parsed.kafka_group_id, format!("fleetward.{}.dublin", ns.name));
    assert_eq!(parsed.database_url, DB_URL);
    assert_eq!(parsed.settings().unwrap().table.as_str(), "dublin_stations");
    assert_eq!(parsed.retention_days, 365, "a year, the CRD's default");
    assert_eq!(
        parsed.record_key,
        Some(ingestor_key),
        "the encryptor verifies with the ingestor's key"
    );
    assert_eq!(
        parsed.sensitive_fields.names(),
        ["address", "contract_name", "position"]
    );
    // The keyring file is the mounted keyring Secret, as a whole directory
    // (a subPath mount would never see a rotation).
    let pod = enc.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let mount = &pod.containers[0].volume_mounts.as_ref().unwrap()[0];
    assert_eq!(mount.mount_path, KEYRING_DIR);
    assert!(mount.sub_path.is_none());
    assert_eq!(
        parsed.keyring_file,
        std::path::Path::new(KEYRING_DIR).join(SECRET_DATA_KEY)
    );
    let vol = &pod.volumes.as_ref().unwrap()[0];
    assert_eq!(vol.name, mount.name);
    assert_eq!(
        vol.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("dublin-keyring")
    );

    // A spec change reconciles again without touching the keyring.
    patch_spec(&ns, "dublin", json!({"pollIntervalSeconds": 45})).await;
    let feed = ready_feed(&ns, "dublin").await;
    assert_eq!(feed.metadata.generation, Some(2));
    let (again, secret2) = keyring(&ns, "dublin").await;
    assert_eq!(again, ring, "the keyring is never regenerated");
    assert_eq!(
        secret2.resource_version(),
        secret.resource_version(),
        "not even rewritten"
    );
    let ing = ns.api::<Deployment>().get("dublin-ingestor").await.unwrap();
    assert_eq!(env_value(&ing, "POLL_INTERVAL_SECONDS").as_deref(), Some("45"));

    let events = events_text(&ns).await;
    assert!(events.contains("KeyringCreated"), "{events}");
    assert_no_key_material(&ring, &events, "events");
    assert_no_key_material(&ring, &serde_json::to_string(&feed).unwrap(), "the StationFeed");
    assert_no_key_material(&ring, &operator().log_text(), "the operator log");
    assert!(!operator().log_text().contains("SECRET-"));
    ns.cleanup().await;
}

#[tokio::test]
async fn rotation_adds_a_primary_key_and_keeps_the_old_ones() {
    let ns = with_secrets("fw-sf-rotate").await;
    ns.apply_yaml(&feed_yaml("dublin", "")).await;
    ready_feed(&ns, "dublin").await;
    let (before, _) = keyring(&ns, "dublin").await;
    let old_id = before.primary_id().to_string();
    let old_token = before.encrypt(b"1 Old Street");

    patch_spec(&ns, "dublin", json!({"keyRotation": 1})).await;
    let feed = wait_feed(&ns, "dublin", "two keys in status", |f| {
        f.status.as_ref().is_some_and(|s| s.key_ids.len() == 2)
    })
    .await;
    let (after, secret) = keyring(&ns, "dublin").await;
    let new_id = after.primary_id().to_string();
    assert_ne!(new_id, old_id);
    assert_eq!(after.key_ids(), vec![old_id.clone(), new_id.clone()]);
    assert_eq!(
        after.fernet_key(&old_id),
        before.fernet_key(&old_id),
        "the old key is kept as it was"
    );
    assert_eq!(after.decrypt(&old_id, &old_token).unwrap(), b"1 Old Street");
    assert_eq!(after.blind_index("dublin"), before.blind_index("dublin"));
    assert_eq!(secret.annotations()[ANN_ROTATION], "1");
    let status = feed.status.unwrap();
    assert_eq!(status.primary_key_id.as_deref(), Some(new_id.as_str()));
    assert!(status.last_rotation_time.is_some());

    // Other changes do not rotate again.
    patch_spec(&ns, "dublin", json!({"pollIntervalSeconds": 90})).await;
    ready_feed(&ns, "dublin").await;
    assert_eq!(keyring(&ns, "dublin").await.0, after);

    patch_spec(&ns, "dublin", json!({"keyRotation": 2})).await;
    wait_feed(&ns, "dublin", "three keys", |f| {
        f.status.as_ref().is_some_and(|s| s.key_ids.len() == 3)
    })
    .await;
    let (third, _) = keyring(&ns, "dublin").await;
    assert_eq!(third.decrypt(&old_id, &old_token).unwrap(), b"1 Old Street");

    let events = events_text(&ns).await;
    assert!(events.contains("KeyRotated") && events.contains(&new_id), "{events}");
    assert_no_key_material(&third, &events, "events");
    assert_no_key_material(&third, &operator().log_text(), "the operator log");
    ns.cleanup().await;
}

/// Deleting a feed removes its workloads but not its keyring: the stored
/// rows stay readable, and a re-created feed carries on with the same keys.
#[tokio::test]
async fn keyring_outlives_its_feed_and_is_picked_up_again() {
    let ns = with_secrets("fw-sf-delete").await;
    ns.apply_yaml(&feed_yaml("dublin", "")).await;
    ready_feed(&ns, "dublin").await;
    let (ring, _) = keyring(&ns, "dublin").await;
    ns.api::<StationFeed>()
        .delete("dublin", &DeleteParams::default())
        .await
        .unwrap();
    let deploys = ns.api::<Deployment>();
    wait_for(
        "the garbage collector to remove the Deployments",
        60,
        || async { Some(deploys.list(&ListParams::default()).await.unwrap().items.len()) },
        |n| *n == 0,
    )
    .await;
    assert_eq!(keyring(&ns, "dublin").await.0, ring);

    ns.apply_yaml(&feed_yaml("dublin", "")).await;
    let feed = ready_feed(&ns, "dublin").await;
    assert_eq!(feed.status.unwrap().primary_key_id.as_deref(), Some(ring.primary_id()));
    assert_eq!(keyring(&ns, "dublin").await.0, ring);
    ns.cleanup().await;
}

#[tokio::test]
async fn missing_secrets_are_reported_then_picked_up() {
    operator();
    let ns = TestNs::new("fw-sf-missing").await;
    ns.apply_yaml(&feed_yaml("dublin", "")).await;
    let feed = wait_feed(&ns, "dublin", "Ready=False SecretNotFound", |f| {
        ready(f).is_some_and(|(s, r)| s == "False" && r == "SecretNotFound")
    })
    .await;
    let status = feed.status.unwrap();
    let cond = ready_condition(&status.conditions).unwrap();
    assert!(
        cond.message.contains("\"jcdecaux\"") && cond.message.contains("\"stations-db\""),
        "{}",
        cond.message
    );
    // The workloads are in place already; they start once the Secrets exist.
    deployment(&ns, "dublin-ingestor").await;
    deployment(&ns, "dublin-encryptor").await;
    create_secret(&ns, "jcdecaux", "apiKey", API_KEY).await;
    create_secret(&ns, "stations-db", "url", DB_URL).await;
    ready_feed(&ns, "dublin").await;
    assert!(events_text(&ns).await.contains("SecretNotFound"));
    ns.cleanup().await;
}

/// A keyring Secret that cannot be read is never overwritten: doing so
/// would orphan every row its keys encrypted.
/// The attack: a feed whose spec names another feed's keyring (a Secret
/// the operator made) as its API key, to have it put into a pod's
/// environment. Refused, with nothing deployed and no key material in the
/// status or events; naming a Secret of the user's own then deploys.
#[tokio::test]
async fn a_spec_naming_a_secret_the_operator_made_is_refused() {
    let ns = with_secrets("fw-sf-steal").await;
    ns.apply_yaml(&feed_yaml("dublin", "")).await;
    ready_feed(&ns, "dublin").await;
    let (ring, _) = keyring(&ns, "dublin").await;
    let stolen = format!("{{name: dublin-keyring, key: {SECRET_DATA_KEY}}}");
    ns.apply_yaml(&feed_yaml("thief", "").replace("{name: jcdecaux, key: apiKey}", &stolen))
        .await;
    let feed = wait_feed(&ns, "thief", "Ready=False SecretNotAllowed", |f| {
        ready(f).is_some_and(|(s, r)| s == "False" && r == "SecretNotAllowed")
    })
    .await;
    let status = serde_json::to_string(&feed.status).unwrap();
    assert!(
        status.contains("source.jcdecaux.apiKeySecretRef") && status.contains("dublin-keyring"),
        "{status}"
    );
    assert_no_key_material(&ring, &status, "the refused feed's status");
    let deploys = ns.api::<Deployment>();
    for d in ["thief-ingestor", "thief-encryptor"] {
        assert!(get_opt(&deploys, d).await.is_none(), "{d} was deployed");
    }
    let events = events_text(&ns).await;
    assert!(events.contains("SecretNotAllowed"), "{events}");
    assert_no_key_material(&ring, &events, "events");
    patch_spec(
        &ns,
        "thief",
        json!({"source": {"jcdecaux": {"apiKeySecretRef": {"name": "jcdecaux", "key": "apiKey"}}}}),
    )
    .await;
    ready_feed(&ns, "thief").await;
    deployment(&ns, "thief-ingestor").await;
    ns.cleanup().await;
}

#[tokio::test]
async fn unusable_keyring_is_left_untouched() {
    let ns = with_secrets("fw-sf-invalid").await;
    create_secret(&ns, "dublin-keyring", SECRET_DATA_KEY, "{\"primary\": \"lost\"").await;
    let before = ns.secret("dublin-keyring").await.unwrap();
    ns.apply_yaml(&feed_yaml("dublin", "")).await;
    let feed = wait_feed(&ns, "dublin", "Ready=False InvalidKeyring", |f| {
        ready(f).is_some_and(|(s, r)| s == "False" && r == "InvalidKeyring")
    })
    .await;
    assert!(feed.status.unwrap().primary_key_id.is_none());
    let after = ns.secret("dublin-keyring").await.unwrap();
    assert_eq!(after.data, before.data);
    assert_eq!(after.resource_version(), before.resource_version());
    ns.cleanup().await;
}

/// A keyring the user brings (no rotation annotation) is adopted as is.
#[tokio::test]
async fn a_keyring_the_user_brings_is_adopted() {
    let ns = with_secrets("fw-sf-byo").await;
    let mine = Keyring::generate();
    create_secret(&ns, "dublin-keyring", SECRET_DATA_KEY, &mine.to_json()).await;
    ns.apply_yaml(&feed_yaml("dublin", "  keyRotation: 4\n")).await;
    let feed = ready_feed(&ns, "dublin").await;
    assert_eq!(feed.status.unwrap().primary_key_id.as_deref(), Some(mine.primary_id()));
    let (ring, secret) = keyring(&ns, "dublin").await;
    assert_eq!(ring, mine, "adopted without a rotation");
    assert_eq!(secret.annotations()[ANN_ROTATION], "4");
    ns.cleanup().await;
}

#[tokio::test]
async fn gbfs_feed_configures_the_ingestor_for_gbfs() {
    let ns = with_secrets("fw-sf-gbfs").await;
    let yaml = "apiVersion: fleetward.io/v1alpha1\nkind: StationFeed\nmetadata: {name: helsinki}\nspec:\n  source:\n    gbfs:\n      stationInformationUrl: https://gbfs.example/en/station_information.json\n      stationStatusUrl: https://gbfs.example/en/station_status.json\n      systemName: Helsinki\n  kafka: {topic: stations.hel, deadLetterTopic: stations.hel.dead, bootstrapServers: 'kafka-a:9092,kafka-b:9092'}\n  postgres:\n    connectionSecretRef: {name: stations-db, key: url}\n  retention: {days: 30}\n";
    ns.apply_yaml(yaml).await;
    ready_feed(&ns, "helsinki").await;
    let record_key = feed_record_key(&ns, "helsinki").await;
    let secrets = BTreeMap::from([
        (("stations-db", "url"), DB_URL),
        (("helsinki-record-key", "record.key"), record_key.as_str()),
    ]);
    let ing = deployment(&ns, "helsinki-ingestor").await;
    assert!(env_value(&ing, "JCDECAUX_API_KEY").is_none());
    let args = argv(&fleetward_ingestor::Args::command(), &ing, &secrets);
    let parsed = fleetward_ingestor::Args::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert_eq!(parsed.source, fleetward_ingestor::SourceKind::Gbfs);
    assert_eq!(parsed.gbfs_system_name.as_deref(), Some("Helsinki"));
    assert_eq!(parsed.kafka_brokers, "kafka-a:9092,kafka-b:9092");
    assert_eq!(parsed.poll_interval_seconds, 60);
    let enc = deployment(&ns, "helsinki-encryptor").await;
    let args = argv(&fleetward_encryptor::Args::command(), &enc, &secrets);
    let parsed = fleetward_encryptor::Args::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert_eq!(parsed.settings().unwrap().dead_letter_topic, "stations.hel.dead");
    assert_eq!(parsed.settings().unwrap().table.as_str(), "stations");
    // The CRD's default sensitive fields are seed 000's.
    assert_eq!(parsed.sensitive_fields.names(), ["address", "contract_name"]);
    assert_eq!(parsed.retention_days, 30, "the feed's spec.retention.days");
    ns.cleanup().await;
}
