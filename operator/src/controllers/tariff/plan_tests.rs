//! Every decision of the Tariff `plan`, without an API server: the objects
//! and environment of the billing workload, each Ready reason, and that
//! the operator's status never carries the workload's `status.billing`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{EnvVar, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde_json::json;

use super::plan::*;
use crate::conditions::READY;
use crate::config::Config;
use crate::controllers::desired::Desired;
use crate::crd::tariff::TariffStatus;
use crate::crd::{Gateway, Tariff};

const KEY: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

fn tariff(status: serde_json::Value) -> Tariff {
    serde_json::from_value(json!({
        "apiVersion": "fleetward.io/v1alpha1", "kind": "Tariff",
        "metadata": {"name": "homes", "namespace": "town", "generation": 3, "uid": "t-1"},
        "spec": {
            "propertyType": "residential", "currency": "EUR", "gateway": "edge",
            "slabs": [{"upToUnits": 100, "pricePerUnit": "0.12"}, {"pricePerUnit": "0.25"}],
            "meterSelector": {"matchLabels": {"fleetward.io/property-type": "residential"}},
            "database": {"connectionSecretRef": {"name": "billing-db", "key": "url"}},
        },
        "status": status,
    }))
    .unwrap()
}

fn gateway(spec: serde_json::Value) -> Gateway {
    serde_json::from_value(json!({
        "apiVersion": "fleetward.io/v1alpha1", "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "town", "uid": "g-1"},
        "spec": spec,
    }))
    .unwrap()
}

/// Everything in place: a Gateway with Kafka, every Secret, a running pod.
fn settled() -> Observed {
    Observed {
        gateway: Some(gateway(json!({"kafka": {"topic": "meters.edge"}}))),
        missing: Vec::new(),
        refused: None,
        api_key: true,
        available: true,
    }
}

type Plan = Desired<TariffStatus>;

fn run(t: &Tariff, obs: Observed) -> Plan {
    plan(t, obs, &Config::default(), || KEY.to_string()).unwrap()
}

fn status(p: &Plan) -> &TariffStatus {
    p.status.as_ref().expect("a Tariff's plan always has its status")
}

/// The billing Deployment the plan applies, if any.
fn deployment(p: &Plan) -> Option<&Deployment> {
    let all = p.applied::<Deployment>();
    assert!(all.len() <= 1);
    all.first().copied()
}

fn service(p: &Plan) -> &Service {
    p.applied::<Service>()[0]
}

fn rbac(p: &Plan) -> (&ServiceAccount, &Role, &RoleBinding) {
    (
        p.applied::<ServiceAccount>()[0],
        p.applied::<Role>()[0],
        p.applied::<RoleBinding>()[0],
    )
}

fn api_secret(p: &Plan) -> Option<&Secret> {
    p.created_once::<Secret>().first().copied()
}

fn ready(p: &Plan) -> (String, String, String) {
    let c = status(p).conditions.iter().find(|c| c.type_ == READY).unwrap();
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn env_of(d: &Deployment) -> BTreeMap<String, EnvVar> {
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let env = pod.containers[0].env.clone().unwrap_or_default();
    env.into_iter().map(|e| (e.name.clone(), e)).collect()
}

fn literal(env: &BTreeMap<String, EnvVar>, name: &str) -> String {
    env[name].value.clone().unwrap_or_else(|| panic!("{name} is a literal"))
}

fn from_secret(env: &BTreeMap<String, EnvVar>, name: &str) -> (String, String) {
    assert!(env[name].value.is_none(), "{name} has no literal value");
    let r = env[name].value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
    (r.name.clone(), r.key.clone())
}

#[test]
fn a_typical_tariff_gets_its_workload_with_the_gateways_topic_api_and_ca() {
    let mut obs = settled();
    obs.api_key = false;
    let p = run(&tariff(json!({})), obs);
    assert_eq!(ready(&p).1, "Ready");

    let d = deployment(&p).expect("a Deployment");
    assert_eq!(d.metadata.name.as_deref(), Some("homes-billing"));
    assert_eq!(d.metadata.owner_references.as_ref().unwrap()[0].uid, "t-1");
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.strategy.as_ref().unwrap().type_.as_deref(), Some("Recreate"));
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("homes-billing"));
    assert_eq!(pod.automount_service_account_token, Some(true));
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some(Config::default().billing_image.as_str()));
    let ports: Vec<_> = c
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap(), p.container_port))
        .collect();
    assert!(ports.contains(&("http".into(), 8080)) && ports.contains(&("metrics".into(), 9090)));
    let probe = c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
    assert_eq!(probe.path.as_deref(), Some("/health"));

    let env = env_of(d);
    let names: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "BILLING_API_KEY",
            "DATABASE_URL",
            "FLEETWARD_NAMESPACE",
            "GATEWAY_API_KEY",
            "GATEWAY_CA_FILE",
            "GATEWAY_URL",
            "HTTP_ADDR",
            "KAFKA_BROKERS",
            "KAFKA_GROUP_ID",
            "KAFKA_TOPIC",
            "LOG_JSON",
            "METRICS_ADDR",
            "READINGS_RETENTION_DAYS",
            "RECORD_KEY",
            "TARIFF_NAME",
        ]
    );
    assert_eq!(
        literal(&env, "READINGS_RETENTION_DAYS"),
        "365",
        "a year unless the Tariff says"
    );
    assert_eq!(literal(&env, "FLEETWARD_NAMESPACE"), "town");
    assert_eq!(literal(&env, "TARIFF_NAME"), "homes");
    assert_eq!(literal(&env, "KAFKA_TOPIC"), "meters.edge");
    assert_eq!(literal(&env, "KAFKA_BROKERS"), Config::default().kafka_bootstrap);
    assert_eq!(literal(&env, "KAFKA_GROUP_ID"), "fleetward.town.homes.billing");
    assert_eq!(literal(&env, "GATEWAY_URL"), "https://edge-api.town.svc:8443");
    assert_eq!(literal(&env, "GATEWAY_CA_FILE"), "/etc/fleetward/gateway-ca/ca.crt");
    assert_eq!(literal(&env, "HTTP_ADDR"), "0.0.0.0:8080");
    assert_eq!(literal(&env, "METRICS_ADDR"), "0.0.0.0:9090");
    assert_eq!(literal(&env, "LOG_JSON"), "true");
    assert_eq!(from_secret(&env, "DATABASE_URL"), ("billing-db".into(), "url".into()));
    assert_eq!(
        from_secret(&env, "GATEWAY_API_KEY"),
        ("edge-command-meter".into(), "api-key".into())
    );
    assert_eq!(
        from_secret(&env, "RECORD_KEY"),
        ("edge-record-key".into(), "record.key".into())
    );
    assert_eq!(
        from_secret(&env, "BILLING_API_KEY"),
        ("homes-billing-api".into(), "api-key".into())
    );

    // The CA Secret projects its certificate only, never its private key.
    let vol = &pod.volumes.as_ref().unwrap()[0];
    let secret = vol.secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("edge-ca"));
    let items: Vec<_> = secret
        .items
        .iter()
        .flatten()
        .map(|i| (i.key.as_str(), i.path.as_str()))
        .collect();
    assert_eq!(items, [("tls.crt", "ca.crt")]);
    let mount = &c.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (mount.name.as_str(), mount.mount_path.as_str(), mount.read_only),
        (vol.name.as_str(), "/etc/fleetward/gateway-ca", Some(true))
    );
    // The database's CA, from the database Secret when it has one.
    let db_ca = &pod.volumes.as_ref().unwrap()[1].secret.as_ref().unwrap();
    assert_eq!(
        (db_ca.secret_name.as_deref(), db_ca.optional),
        (Some("billing-db"), Some(true))
    );
    let mount = &c.volume_mounts.as_ref().unwrap()[1];
    assert_eq!(
        (mount.name.as_str(), mount.mount_path.as_str()),
        ("database-ca", "/var/run/fleetward/database")
    );

    // The new API key is in its Secret and nowhere else.
    let s = api_secret(&p).expect("the API key Secret is made");
    assert_eq!(s.metadata.name.as_deref(), Some("homes-billing-api"));
    assert_eq!(s.string_data.as_ref().unwrap()["api-key"], KEY);
    let text = serde_json::to_string(&(d, service(&p), rbac(&p), status(&p))).unwrap();
    assert!(!text.contains(KEY), "the key leaks out of its Secret");

    let svc = service(&p).spec.as_ref().unwrap();
    assert_eq!(svc.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(svc.selector, spec.selector.match_labels);
    let ports: Vec<_> = svc
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap(), p.port))
        .collect();
    assert_eq!(ports, [("http".to_string(), 8080), ("metrics".to_string(), 9090)]);
}

#[test]
fn the_api_key_is_made_once() {
    let p = run(&tariff(json!({})), settled());
    assert!(api_secret(&p).is_none(), "an existing key is never replaced");
}

#[test]
fn billing_holds_the_meter_key_even_when_the_user_brings_the_command_key() {
    let mut obs = settled();
    obs.gateway = Some(gateway(json!({
        "kafka": {"topic": "m", "bootstrapServers": "k1:9092,k2:9092"},
        "commandApi": {"port": 9443, "apiKeySecretRef": {"name": "mine", "key": "k"}},
    })));
    let p = run(&tariff(json!({})), obs);
    let env = env_of(deployment(&p).unwrap());
    assert_eq!(
        from_secret(&env, "GATEWAY_API_KEY"),
        ("edge-command-meter".into(), "api-key".into()),
        "never the command key, which may unlock a lock"
    );
    assert_eq!(literal(&env, "KAFKA_BROKERS"), "k1:9092,k2:9092");
    assert_eq!(literal(&env, "GATEWAY_URL"), "https://edge-api.town.svc:9443");
}

#[test]
fn the_workload_may_read_devices_and_only_its_own_tariff() {
    let p = run(&tariff(json!({})), settled());
    let (sa, role, binding) = rbac(&p);
    assert_eq!(sa.metadata.name.as_deref(), Some("homes-billing"));
    let rules: Vec<_> = role
        .rules
        .iter()
        .flatten()
        .map(|r| {
            (
                r.api_groups.clone().unwrap(),
                r.resources.clone().unwrap(),
                r.resource_names.clone(),
                r.verbs.clone(),
            )
        })
        .collect();
    let v = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rules,
        [
            (
                v(&["fleetward.io"]),
                v(&["devices"]),
                None,
                v(&["get", "list", "watch"])
            ),
            (
                v(&["fleetward.io"]),
                v(&["tariffs"]),
                Some(v(&["homes"])),
                v(&["get", "list", "watch"])
            ),
            (
                v(&["fleetward.io"]),
                v(&["tariffs/status"]),
                Some(v(&["homes"])),
                v(&["patch"])
            ),
        ]
    );
    let subject = &binding.subjects.as_ref().unwrap()[0];
    assert_eq!(
        (
            subject.kind.as_str(),
            subject.name.as_str(),
            subject.namespace.as_deref()
        ),
        ("ServiceAccount", "homes-billing", Some("town"))
    );
    assert_eq!(binding.role_ref.name, "homes-billing");
}

#[test]
fn without_its_gateway_nothing_is_deployed() {
    let mut obs = settled();
    obs.gateway = None;
    let p = run(&tariff(json!({})), obs);
    assert!(deployment(&p).is_none());
    assert_eq!(
        p.deleted::<Deployment>(),
        ["homes-billing"],
        "one left from before goes"
    );
    let (status, reason, message) = ready(&p);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "GatewayNotFound"));
    assert!(message.contains("Gateway edge"), "{message}");
    assert_eq!(p.events.len(), 1);
    assert!(p.events[0].warning && p.events[0].reason == "GatewayNotFound");
}

#[test]
fn a_gateway_without_kafka_deploys_nothing() {
    let mut obs = settled();
    obs.gateway = Some(gateway(json!({})));
    let p = run(&tariff(json!({})), obs);
    assert!(deployment(&p).is_none());
    let (_, reason, message) = ready(&p);
    assert_eq!(reason, "GatewayHasNoKafka");
    assert!(message.contains("spec.kafka"), "{message}");
}

#[test]
fn a_missing_secret_is_named_and_looked_at_again_soon() {
    let mut obs = settled();
    obs.missing = vec!["spec.database.connectionSecretRef (Secret \"billing-db\", key \"url\")".into()];
    let p = run(&tariff(json!({})), obs);
    let (_, reason, message) = ready(&p);
    assert_eq!(reason, "SecretMissing");
    assert!(
        message.contains("\"billing-db\"") && message.contains("\"url\""),
        "{message}"
    );
    assert!(
        deployment(&p).is_some(),
        "deployed already: it starts once the Secret exists"
    );
    assert!(p.requeue.as_secs() <= 10);
}

#[test]
fn a_database_secret_the_operator_made_deploys_nothing() {
    let mut obs = settled();
    obs.refused = Some("refused: spec.database.connectionSecretRef (Secret \"edge-ca\", key \"tls.key\")".into());
    let p = run(&tariff(json!({})), obs);
    assert!(deployment(&p).is_none(), "the CA key never reaches a pod");
    let (status, reason, message) = ready(&p);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "SecretNotAllowed"));
    assert!(message.contains("edge-ca"), "{message}");
    assert!(p.events.iter().any(|e| e.warning && e.reason == "SecretNotAllowed"));
}

#[test]
fn the_workloads_database_report_makes_it_not_ready() {
    let t = tariff(json!({"billing": {
        "databaseError": "connection refused by postgres://billing:hunter2@db.town:5432/billing",
        "lastRunBills": 12,
    }}));
    let mut obs = settled();
    obs.available = false;
    let p = run(&t, obs);
    let (_, reason, message) = ready(&p);
    assert_eq!(reason, "DatabaseUnreachable", "the report says more than Deploying");
    assert!(message.contains("connection refused"), "{message}");
    assert!(
        !message.contains("hunter2"),
        "a password in the report is masked: {message}"
    );
}

#[test]
fn the_workloads_gateway_report_makes_it_not_ready() {
    let t = tariff(json!({"billing": {"gatewayError": "timed out"}}));
    let p = run(&t, settled());
    let (_, reason, message) = ready(&p);
    assert_eq!(reason, "GatewayUnreachable");
    assert!(
        message.contains("https://edge-api.town.svc:8443") && message.contains("timed out"),
        "{message}"
    );
}

#[test]
fn no_available_pod_is_deploying() {
    let mut obs = settled();
    obs.available = false;
    let p = run(&tariff(json!({})), obs);
    assert_eq!(ready(&p).1, "Deploying");
    assert!(deployment(&p).is_some());
}

#[test]
fn the_operator_never_writes_the_billing_report() {
    let report = json!({"lastRunBills": 40, "lastRunPeriod": "2026-01", "nextRunTime": "2026-02-01T00:00:00Z"});
    let t = tariff(json!({"billing": report, "observedGeneration": 2}));
    let p = run(&t, settled());
    assert!(status(&p).billing.is_none());
    assert!(serde_json::to_value(status(&p)).unwrap().get("billing").is_none());
    assert_eq!(status(&p).observed_generation, Some(3));
    // Planned again once the workload reported anew: nothing the operator
    // owns changed, so write_status (which compares operator_owned) has
    // nothing to write.
    let mut stored = serde_json::to_value(status(&p)).unwrap();
    stored["billing"] = json!({"lastRunBills": 41});
    let t = tariff(stored);
    let again = run(&t, settled());
    assert_eq!(t.status.as_ref().map(|s| s.operator_owned()), again.status);
}

#[test]
fn a_reason_is_announced_once() {
    let mut obs = settled();
    obs.gateway = None;
    let first = run(&tariff(json!({})), obs);
    let t = tariff(serde_json::to_value(&first.status).unwrap());
    let mut obs = settled();
    obs.gateway = None;
    let second = run(&t, obs);
    assert!(second.events.is_empty());
}

#[test]
fn reported_errors_are_masked_and_bounded() {
    assert_eq!(
        reported("dial postgres://u:p@h:5432/db and redis://h2/x failed"),
        "dial postgres://***@h:5432/db and redis://h2/x failed"
    );
    assert_eq!(reported("plain"), "plain");
    assert!(reported(&"x".repeat(5000)).chars().count() <= 1025);
}
