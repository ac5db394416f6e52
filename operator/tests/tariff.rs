//! Tariff reconciler against the real kube-apiserver: the billing
//! workload's objects for a Gateway with Kafka, Ready reasons from missing
//! Secrets and from the workload's own report, and the split of `status`
//! between the operator and the workload's field manager.

mod common;

use std::collections::BTreeMap;

use common::*;
use fleetward_operator::crd::Tariff;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{EnvVar, Event, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

const DB_URL: &str = "postgres://billing:SECRET-pg-pass@db.example:5432/billing";

const GATEWAY: &str =
    "apiVersion: fleetward.io/v1alpha1\nkind: Gateway\nmetadata: {name: edge}\nspec:\n  kafka: {topic: meters.edge}\n";

fn tariff_yaml(name: &str, gateway: &str) -> String {
    format!(
        "apiVersion: fleetward.io/v1alpha1\nkind: Tariff\nmetadata: {{name: {name}}}\nspec:\n  propertyType: residential\n  currency: EUR\n  gateway: {gateway}\n  slabs:\n    - {{upToUnits: 100, pricePerUnit: \"0.12\"}}\n    - {{pricePerUnit: \"0.25\"}}\n  meterSelector:\n    matchLabels: {{fleetward.io/property-type: residential}}\n  database:\n    connectionSecretRef: {{name: billing-db, key: url}}\n"
    )
}

async fn create_db_secret(ns: &TestNs) {
    ns.api::<Secret>()
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("billing-db".into()),
                    ..Default::default()
                },
                string_data: Some(BTreeMap::from([("url".to_string(), DB_URL.to_string())])),
                ..Default::default()
            },
        )
        .await
        .expect("create secret");
}

fn ready(t: &Tariff) -> Option<(String, String)> {
    t.status.as_ref().and_then(|s| ready_reason(&s.conditions))
}

/// Waits until the Tariff's Ready condition has `reason` for its current
/// generation.
async fn wait_reason(ns: &TestNs, name: &str, reason: &str) -> Tariff {
    let api = ns.api::<Tariff>();
    wait_for(
        &format!("Tariff {name} Ready reason {reason}"),
        60,
        || get_opt(&api, name),
        |t| {
            ready(t).is_some_and(|(_, r)| r == reason)
                && t.status.as_ref().and_then(|s| s.observed_generation) == t.metadata.generation
        },
    )
    .await
}

/// Referenced Secrets are not watched (the operator looks again on its own
/// schedule): a change to the Tariff makes it look now.
async fn nudge(ns: &TestNs, name: &str, n: u32) {
    let patch = json!({"metadata": {"annotations": {"fleetward.io/test-nudge": n.to_string()}}});
    ns.api::<Tariff>()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate Tariff");
}

/// Applies `billing` as the billing workload does: server-side apply of
/// `status.billing` on the status subresource, as its own field manager.
async fn report(ns: &TestNs, name: &str, billing: serde_json::Value) {
    let patch = json!({"apiVersion": "fleetward.io/v1alpha1", "kind": "Tariff", "status": {"billing": billing}});
    ns.api::<Tariff>()
        .patch_status(
            name,
            &PatchParams::apply(fleetward_tariff::STATUS_MANAGER),
            &Patch::Apply(&patch),
        )
        .await
        .expect("apply status.billing as the billing workload");
}

fn env_of(d: &Deployment) -> BTreeMap<String, EnvVar> {
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let env = pod.containers[0].env.clone().unwrap_or_default();
    env.into_iter().map(|e| (e.name.clone(), e)).collect()
}

fn secret_ref(env: &BTreeMap<String, EnvVar>, name: &str) -> (String, String) {
    let r = env[name].value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
    (r.name.clone(), r.key.clone())
}

/// The status fields each field manager owns, as the API server records them.
fn status_fields_of(t: &Tariff, manager: &str) -> String {
    t.managed_fields()
        .iter()
        .filter(|m| m.manager.as_deref() == Some(manager) && m.subresource.as_deref() == Some("status"))
        .map(|m| serde_json::to_string(&m.fields_v1).unwrap())
        .collect()
}

#[tokio::test]
async fn billing_workload_and_status() {
    operator();
    let ns = TestNs::new("fw-tariff").await;
    create_db_secret(&ns).await;
    ns.apply_yaml(GATEWAY).await;
    ns.apply_yaml(&tariff_yaml("homes", "edge")).await;

    // Test namespaces run no pods: with everything else in place the
    // Tariff waits for its Deployment.
    let t = wait_reason(&ns, "homes", "Deploying").await;
    let uid = t.uid().unwrap();
    let owned_by_tariff = |meta: &ObjectMeta| {
        let refs = meta.owner_references.clone().unwrap_or_default();
        refs.len() == 1 && refs[0].uid == uid && refs[0].controller == Some(true)
    };
    let d = ns.api::<Deployment>().get("homes-billing").await.unwrap();
    assert!(owned_by_tariff(&d.metadata));
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.strategy.as_ref().unwrap().type_.as_deref(), Some("Recreate"));
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("homes-billing"));
    let vars = env_of(&d);
    let literal = |name: &str| vars[name].value.clone().unwrap_or_else(|| panic!("{name} literal"));
    assert_eq!(literal("FLEETWARD_NAMESPACE"), ns.name);
    assert_eq!(literal("TARIFF_NAME"), "homes");
    assert_eq!(literal("KAFKA_TOPIC"), "meters.edge");
    assert_eq!(literal("KAFKA_BROKERS"), env("KAFKA_BROKERS"), "the operator's Kafka");
    assert_eq!(
        literal("KAFKA_GROUP_ID"),
        format!("fleetward.{}.homes.billing", ns.name)
    );
    assert_eq!(literal("GATEWAY_URL"), format!("https://edge-api.{}.svc:8443", ns.name));
    assert_eq!(literal("GATEWAY_CA_FILE"), "/etc/fleetward/gateway-ca/ca.crt");
    assert_eq!(secret_ref(&vars, "DATABASE_URL"), ("billing-db".into(), "url".into()));
    assert_eq!(
        secret_ref(&vars, "GATEWAY_API_KEY"),
        ("edge-command-meter".into(), "api-key".into())
    );
    assert_eq!(
        secret_ref(&vars, "BILLING_API_KEY"),
        ("homes-billing-api".into(), "api-key".into())
    );
    let items = pod.volumes.as_ref().unwrap()[0].secret.as_ref().unwrap();
    assert_eq!(items.secret_name.as_deref(), Some("edge-ca"));
    let projected: Vec<_> = items
        .items
        .iter()
        .flatten()
        .map(|i| (i.key.as_str(), i.path.as_str()))
        .collect();
    assert_eq!(
        projected,
        [("tls.crt", "ca.crt")],
        "the CA's private key is not mounted"
    );

    let key = ns.secret_value("homes-billing-api", "api-key").await;
    assert!(
        key.len() == 64 && key.chars().all(|c| c.is_ascii_hexdigit()),
        "64 hex chars"
    );
    assert!(owned_by_tariff(&ns.secret("homes-billing-api").await.unwrap().metadata));
    let sa = ns.api::<ServiceAccount>().get("homes-billing").await.unwrap();
    assert!(owned_by_tariff(&sa.metadata));
    let role = ns.api::<Role>().get("homes-billing").await.unwrap();
    let rules = serde_json::to_string(&role.rules).unwrap();
    assert!(rules.contains("tariffs/status") && rules.contains("devices"), "{rules}");
    let binding = ns.api::<RoleBinding>().get("homes-billing").await.unwrap();
    assert_eq!(binding.subjects.unwrap()[0].name, "homes-billing");
    let svc = ns.api::<Service>().get("homes-billing").await.unwrap();
    let ports: Vec<_> = svc.spec.unwrap().ports.unwrap().iter().map(|p| p.port).collect();
    assert_eq!(ports, [8080, 9090]);
    let text = serde_json::to_string(&d).unwrap();
    assert!(
        !text.contains("SECRET-") && !text.contains(&key),
        "no secret value in the Deployment"
    );

    // A spec change reconciles again; the API key stays.
    let spec_patch = json!({"spec": {"paymentDueDays": 20}});
    ns.api::<Tariff>()
        .patch("homes", &PatchParams::default(), &Patch::Merge(&spec_patch))
        .await
        .unwrap();
    let t = wait_reason(&ns, "homes", "Deploying").await;
    assert_eq!(t.metadata.generation, Some(2));
    assert_eq!(ns.secret_value("homes-billing-api", "api-key").await, key);

    // The database Secret goes: named, by Secret and key.
    ns.api::<Secret>()
        .delete("billing-db", &Default::default())
        .await
        .unwrap();
    nudge(&ns, "homes", 1).await;
    let t = wait_reason(&ns, "homes", "SecretMissing").await;
    let cond = ready_condition(&t.status.as_ref().unwrap().conditions).unwrap().clone();
    assert_eq!(cond.status, "False");
    assert!(
        cond.message.contains("\"billing-db\"") && cond.message.contains("\"url\""),
        "{}",
        cond.message
    );
    create_db_secret(&ns).await;
    nudge(&ns, "homes", 2).await;
    wait_reason(&ns, "homes", "Deploying").await;

    // The workload reports a database failure in status.billing, as its
    // own field manager.
    report(
        &ns,
        "homes",
        json!({"databaseError": "connection refused (db.example:5432)", "lastRunBills": 12, "lastRunPeriod": "2026-01"}),
    )
    .await;
    let t = wait_reason(&ns, "homes", "DatabaseUnreachable").await;
    let cond = ready_condition(&t.status.as_ref().unwrap().conditions).unwrap().clone();
    assert!(cond.message.contains("connection refused"), "{}", cond.message);
    // Another look by the operator leaves the report as written, and the
    // API server records status.billing as the workload's alone.
    nudge(&ns, "homes", 3).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let t = wait_reason(&ns, "homes", "DatabaseUnreachable").await;
    let billing = t.status.as_ref().unwrap().billing.clone().expect("status.billing kept");
    assert_eq!(billing.last_run_bills, Some(12));
    assert_eq!(billing.last_run_period.as_deref(), Some("2026-01"));
    assert!(billing.database_error.is_some());
    let operator_fields = status_fields_of(&t, "fleetward-operator");
    assert!(operator_fields.contains("f:conditions"), "{operator_fields}");
    assert!(!operator_fields.contains("f:billing"), "{operator_fields}");
    assert!(status_fields_of(&t, fleetward_tariff::STATUS_MANAGER).contains("f:billing"));

    // The workload reaches its database again (its apply drops the error).
    report(&ns, "homes", json!({"lastRunBills": 12, "lastRunPeriod": "2026-01"})).await;
    wait_reason(&ns, "homes", "Deploying").await;

    // The gateway loses its Kafka topic: nothing to read meters from, and
    // the Deployment goes.
    ns.apply_yaml("apiVersion: fleetward.io/v1alpha1\nkind: Gateway\nmetadata: {name: edge}\nspec: {}\n")
        .await;
    let t = wait_reason(&ns, "homes", "GatewayHasNoKafka").await;
    assert_eq!(ready(&t).unwrap().0, "False");
    let deploys = ns.api::<Deployment>();
    wait_for(
        "the billing Deployment to go",
        30,
        || async { Some(get_opt(&deploys, "homes-billing").await.is_none()) },
        |gone| *gone,
    )
    .await;

    // A Tariff naming a Gateway that does not exist.
    ns.apply_yaml(&tariff_yaml("shops", "nowhere")).await;
    let t = wait_reason(&ns, "shops", "GatewayNotFound").await;
    let cond = ready_condition(&t.status.as_ref().unwrap().conditions).unwrap().clone();
    assert!(cond.message.contains("Gateway nowhere"), "{}", cond.message);
    assert!(get_opt(&deploys, "shops-billing").await.is_none());

    let events = ns.api::<Event>().list(&ListParams::default()).await.unwrap();
    let events = serde_json::to_string(&events.items).unwrap();
    for reason in [
        "SecretMissing",
        "DatabaseUnreachable",
        "GatewayHasNoKafka",
        "GatewayNotFound",
    ] {
        assert!(events.contains(reason), "event {reason}: {events}");
    }
    assert!(!events.contains("SECRET-") && !events.contains(&key));
    let log = operator().log_text();
    assert!(
        !log.contains("SECRET-") && !log.contains(&key),
        "secret values in the operator log"
    );
    ns.cleanup().await;
}

/// A client acting as a billing workload's ServiceAccount.
async fn as_billing_account(ns: &TestNs, tariff: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(env("KUBECONFIG")).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some(format!(
        "system:serviceaccount:{}:{}",
        ns.name,
        fleetward_tariff::workload_name(tariff)
    ));
    kube::Client::try_from(config).unwrap()
}

fn forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(e)) if e.code == 403)
}

/// What the Role grants, tried as the workload's account: Devices, its own
/// Tariff (get, and list/watch by name) and that Tariff's status; not
/// another Tariff, not the spec, not a Secret.
#[tokio::test]
async fn the_billing_account_reads_devices_and_only_its_own_tariff() {
    operator();
    let ns = TestNs::new("fw-tariff-rbac").await;
    create_db_secret(&ns).await;
    ns.apply_yaml(GATEWAY).await;
    ns.apply_yaml(&tariff_yaml("homes", "edge")).await;
    ns.apply_yaml(&tariff_yaml("shops", "edge")).await;
    wait_reason(&ns, "homes", "Deploying").await;
    wait_reason(&ns, "shops", "Deploying").await;

    let client = as_billing_account(&ns, "homes").await;
    let tariffs: kube::Api<Tariff> = kube::Api::namespaced(client.clone(), &ns.name);
    tariffs.get("homes").await.expect("its own Tariff");
    let by_name = ListParams::default().fields("metadata.name=homes");
    assert_eq!(tariffs.list(&by_name).await.expect("listed by name").items.len(), 1);
    watch_lists(&tariffs, "homes").await.expect("watched by name");
    assert!(forbidden(tariffs.get("shops").await), "another Tariff");
    assert!(forbidden(tariffs.list(&ListParams::default()).await), "every Tariff");
    let spec_patch = json!({"spec": {"paymentDueDays": 5}});
    assert!(
        forbidden(
            tariffs
                .patch("homes", &PatchParams::default(), &Patch::Merge(&spec_patch))
                .await
        ),
        "its spec"
    );
    let status =
        json!({"apiVersion": "fleetward.io/v1alpha1", "kind": "Tariff", "status": {"billing": {"lastRunBills": 3}}});
    let pp = PatchParams::apply(fleetward_tariff::STATUS_MANAGER);
    tariffs
        .patch_status("homes", &pp, &Patch::Apply(&status))
        .await
        .expect("its own status.billing");
    assert!(
        forbidden(tariffs.patch_status("shops", &pp, &Patch::Apply(&status)).await),
        "another Tariff's status"
    );
    let devices: kube::Api<fleetward_operator::crd::Device> = kube::Api::namespaced(client.clone(), &ns.name);
    devices.list(&ListParams::default()).await.expect("Devices");
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client, &ns.name);
    assert!(forbidden(secrets.get("homes-billing-api").await), "its API key Secret");
    assert!(forbidden(secrets.list(&ListParams::default()).await), "Secrets");
    let t = ns.api::<Tariff>().get("homes").await.unwrap();
    assert_eq!(t.status.unwrap().billing.unwrap().last_run_bills, Some(3));
    ns.cleanup().await;
}
