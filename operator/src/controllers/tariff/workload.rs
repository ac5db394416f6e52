//! The billing workload's objects for one Tariff, as pure builders: its
//! API key Secret, ServiceAccount/Role/RoleBinding, Service and
//! Deployment. `plan` decides which are wanted; the reconciler writes them.

use std::collections::BTreeMap;

use fleetward_tariff::{API_KEY, HTTP_PORT, api_secret_name, workload_name};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStrategy};
use k8s_openapi::api::core::v1::{ContainerPort, Secret, Service, ServiceAccount, ServiceSpec};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use kube::api::ObjectMeta;

use super::{GATEWAY_CA_DIR, LABEL_TARIFF};
use crate::Result;
use crate::config::Config;
use crate::controllers::objects::{self, env, env_from_secret, mount, service_port};
use crate::controllers::{METRICS_PORT, data_workload};
use crate::crd::gateway::KafkaSinkSpec;
use crate::crd::{Gateway, SecretKeyRef, Tariff};
use crate::ownership::{labels, owner_ref};
use fleetward_protocol::record::{RECORD_KEY_ENV, RECORD_KEY_SECRET_KEY};

/// The key of a gateway's CA Secret that holds the CA certificate (its
/// private key sits beside it under `tls.key` and is never mounted).
pub const CA_CERT_KEY: &str = "tls.crt";
/// Name of the CA certificate in `GATEWAY_CA_DIR`.
pub const CA_FILE: &str = "ca.crt";

pub fn child_meta(tariff: &Tariff, name: String) -> Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(name),
        labels: Some(labels(&[(LABEL_TARIFF, &tariff.name_any())])),
        owner_references: Some(vec![owner_ref(tariff)?]),
        ..Default::default()
    })
}

fn selector(tariff: &str) -> BTreeMap<String, String> {
    objects::map(&[("app.kubernetes.io/name", "fleetward-billing"), (LABEL_TARIFF, tariff)])
}

/// The Secret and key of a gateway's meter key, the one billing holds:
/// the command API admits it only for `read_meter` to electricity meters
/// (never the gateway's command key, which may unlock a lock).
pub fn meter_key_ref(gw: &Gateway) -> SecretKeyRef {
    SecretKeyRef {
        name: Gateway::meter_key_secret_name(&gw.name_any()),
        key: "api-key".into(),
    }
}

/// The gateway's record key: billing takes only records that carry its MAC.
pub fn record_key_ref(gw: &Gateway) -> SecretKeyRef {
    SecretKeyRef {
        name: Gateway::record_key_secret_name(&gw.name_any()),
        key: RECORD_KEY_SECRET_KEY.into(),
    }
}

/// Where the billing workload reaches the gateway's command API: its
/// ClusterIP Service, whose DNS names the API's certificate carries.
pub fn gateway_url(gw: &Gateway) -> String {
    format!(
        "https://{}.{}.svc:{}",
        Gateway::api_service_name(&gw.name_any()),
        gw.namespace().unwrap_or_default(),
        gw.spec.command_api.port
    )
}

/// The billing API's key Secret, holding `key` (made once, never replaced).
pub fn api_secret(tariff: &Tariff, key: String) -> Result<Secret> {
    Ok(Secret {
        metadata: child_meta(tariff, api_secret_name(&tariff.name_any()))?,
        type_: Some("Opaque".into()),
        string_data: Some([(API_KEY.to_string(), key)].into()),
        ..Default::default()
    })
}

/// The workload's identity: it reads Devices (its meters, chosen by label,
/// which RBAC cannot narrow), reads its own Tariff and applies its own
/// Tariff's `status.billing`. No Secrets: its keys come as environment.
pub fn rbac(tariff: &Tariff) -> Result<(ServiceAccount, Role, RoleBinding)> {
    let tariff_name = tariff.name_any();
    let meta = child_meta(tariff, workload_name(&tariff_name))?;
    let read = ["get", "list", "watch"];
    let group = crate::crd::GROUP;
    Ok(objects::account(
        meta,
        tariff.namespace(),
        vec![
            objects::rule(group, "devices", None, &read),
            // Its own Tariff only: a list or watch must select it by
            // `metadata.name` (RBAC's rule for resourceNames).
            objects::rule(group, "tariffs", Some(vec![tariff_name.clone()]), &read),
            objects::rule(group, "tariffs/status", Some(vec![tariff_name]), &["patch"]),
        ],
    ))
}

/// The billing API (bills, payments, accounts) and metrics, in-cluster only.
pub fn service(tariff: &Tariff) -> Result<Service> {
    let name = tariff.name_any();
    Ok(Service {
        metadata: child_meta(tariff, workload_name(&name))?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector(&name)),
            ports: Some(vec![
                service_port("http", i32::from(HTTP_PORT)),
                service_port("metrics", METRICS_PORT),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The billing Deployment: one scheduler per Tariff, reading the gateway's
/// Kafka topic (`kafka`) and calling its command API.
pub fn deployment(tariff: &Tariff, gw: &Gateway, kafka: &KafkaSinkSpec, config: &Config) -> Result<Deployment> {
    let name = tariff.name_any();
    let ns = tariff.namespace().unwrap_or_default();
    let spec = &tariff.spec;
    let image = spec
        .images
        .as_ref()
        .and_then(|i| i.billing.clone())
        .unwrap_or_else(|| config.billing_image.clone());
    let brokers = kafka
        .bootstrap_servers
        .clone()
        .unwrap_or_else(|| config.kafka_bootstrap.clone());
    let db = &spec.database.connection_secret_ref;
    let database = objects::database(&db.name, &db.key);
    let command_key = meter_key_ref(gw);
    let record_key = record_key_ref(gw);
    let vars = vec![
        env("FLEETWARD_NAMESPACE", ns.as_str()),
        env("TARIFF_NAME", name.as_str()),
        database.env,
        env("KAFKA_BROKERS", brokers),
        env("KAFKA_TOPIC", kafka.topic.as_str()),
        env("KAFKA_GROUP_ID", Tariff::consumer_group(&ns, &name)),
        env("GATEWAY_URL", gateway_url(gw)),
        env_from_secret("GATEWAY_API_KEY", &command_key.name, &command_key.key),
        env_from_secret(RECORD_KEY_ENV, &record_key.name, &record_key.key),
        env("GATEWAY_CA_FILE", format!("{GATEWAY_CA_DIR}/{CA_FILE}")),
        env_from_secret("BILLING_API_KEY", &api_secret_name(&name), API_KEY),
        env("READINGS_RETENTION_DAYS", spec.retention.readings_days.to_string()),
        env("HTTP_ADDR", format!("0.0.0.0:{HTTP_PORT}")),
        env("METRICS_ADDR", format!("0.0.0.0:{METRICS_PORT}")),
        env("LOG_JSON", "true"),
    ];
    // Only the CA certificate: the CA Secret also holds the gateway CA's
    // private key, which signs device certificates.
    let volumes = vec![
        objects::secret_items_volume(
            "gateway-ca",
            &Gateway::ca_secret_name(&gw.name_any()),
            &[(CA_CERT_KEY, CA_FILE)],
            Some(0o440),
        ),
        database.volume,
    ];
    let mounts = vec![mount("gateway-ca", GATEWAY_CA_DIR, true), database.mount];
    let mut deployment = data_workload(
        child_meta(tariff, workload_name(&name))?,
        selector(&name),
        "fleetward-billing",
        image,
        vars,
        mounts,
        volumes,
    );
    if let Some(spec) = deployment.spec.as_mut() {
        // One scheduler per Tariff, never two during a rollout: two would
        // both run the month's billing.
        spec.strategy = Some(DeploymentStrategy {
            type_: Some("Recreate".into()),
            ..Default::default()
        });
        if let Some(pod) = spec.template.spec.as_mut() {
            // Unlike the other data workloads it talks to the API server
            // (its Tariff, its meters, status.billing), as its own account.
            pod.service_account_name = Some(workload_name(&name));
            pod.automount_service_account_token = Some(true);
            if let Some(ports) = pod.containers[0].ports.as_mut() {
                ports.push(ContainerPort {
                    name: Some("http".into()),
                    container_port: i32::from(HTTP_PORT),
                    ..Default::default()
                });
            }
        }
    }
    Ok(deployment)
}
