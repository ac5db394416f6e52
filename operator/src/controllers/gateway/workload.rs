//! The Gateway's workload objects: the StatefulSet (Mosquitto + gateway in
//! one pod), its Service, the ServiceAccount/Role the gateway reads its
//! devices' Secrets with, and the broker's volume claim. Pure builders
//! except `apply_rbac` and `apply_broker_volume`, which write.
//!
//! A StatefulSet, not a Deployment: a broker's sessions and queued QoS 1
//! messages live in its persistence file, and two Mosquittos on one volume
//! overwrite each other's state. A Deployment replaces a deleted pod at
//! once, while the old one is still writing its final state; a StatefulSet
//! starts the replacement only once the old pod is gone.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ExecAction, Lifecycle, LifecycleHandler, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Service, ServiceAccount,
    ServiceSpec, Volume, VolumeResourceRequirements,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DeleteParams, Preconditions};
use kube::{Api, ResourceExt};

use super::{
    api_service_name, broker_secret_name, child_meta, client_secret_name, command_secret_name,
    mosquitto_configmap_name, workload_name,
};
use crate::config::Config;
use crate::context::Context;
use crate::controllers::METRICS_PORT;
use crate::controllers::applier::apply;
use crate::controllers::objects::{self, env, env_from_secret, mount, service_port};
use crate::crd::Gateway;
use crate::ownership::owner_ref;
use crate::{Result, crl, mosquitto};
use fleetward_credentials::keys_secret_names;

/// The gateway's drain on SIGTERM (at most 20 s, SHUTDOWN_DRAIN_SECONDS),
/// its wait for the broker to close (at most 5 s), then Mosquitto's own
/// stop.
const TERMINATION_GRACE_SECONDS: i64 = 45;

/// Mosquitto's preStop: wait while the gateway process runs (`comm` holds
/// the first 15 characters of its name).
const WAIT_FOR_GATEWAY: &str = "while grep -qsx fleetward-gatew /proc/[0-9]*/comm; do sleep 1; done";

/// Both containers run as this user: the gateway signals Mosquitto (SIGHUP
/// on a new CRL) through the shared process namespace, which needs the
/// same user, and fsGroup lets Mosquitto write its volume.
const POD_USER: i64 = 65532;

pub fn broker_volume_name(gateway: &str) -> String {
    format!("{gateway}-broker-data")
}

/// The MQTT client id the gateway connects with (its IoT Core policy names it).
pub fn mqtt_client_id(gw: &Gateway) -> String {
    format!(
        "fleetward-gateway-{}-{}",
        gw.namespace().unwrap_or_default(),
        gw.name_any()
    )
}

/// Where the workload's TLS client finds the public roots (Debian's
/// ca-certificates, in the runtime image), to trust AWS IoT Core's endpoint.
const PUBLIC_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The gateway's StatefulSet. With `provider: awsIot` (`aws_endpoint` is the
/// account's data endpoint) the pod holds the gateway alone, connected to
/// IoT Core with its own certificate; IoT Core checks certificates itself,
/// so there is no broker, CRL file or revocation plugin to feed.
pub fn statefulset(
    gw: &Gateway,
    config: &Config,
    rollout_hash: &str,
    aws_endpoint: Option<&str>,
) -> Result<StatefulSet> {
    let name = gw.name_any();
    let ns = gw.namespace().unwrap_or_default();
    let images = gw.spec.images.clone().unwrap_or_default();
    let gateway_image = images.gateway.unwrap_or_else(|| config.gateway_image.clone());
    let mosquitto_image = images.mosquitto.unwrap_or_else(|| config.mosquitto_image.clone());
    let sec = &gw.spec.security;
    let (key_secret, key_key) = match &gw.spec.command_api.api_key_secret_ref {
        Some(r) => (r.name.clone(), r.key.clone()),
        None => (command_secret_name(&name), "api-key".to_string()),
    };
    let mut vars = vec![
        env("FLEETWARD_GATEWAY", name.as_str()),
        env("FLEETWARD_NAMESPACE", ns.as_str()),
        env("MQTT_HOST", "localhost"),
        env("MQTT_PORT", gw.spec.mqtt_port.to_string()),
        env("MQTT_CA_FILE", format!("{CLIENT_DIR}/ca.crt")),
        env("MQTT_CERT_FILE", format!("{CLIENT_DIR}/tls.crt")),
        env("MQTT_KEY_FILE", format!("{CLIENT_DIR}/tls.key")),
        env("CRL_FILE", format!("{}/crl.pem", mosquitto::CRL_DIR)),
        env("CRL_CONFIGMAP", crl::name(&name)),
        env("TIMESTAMP_WINDOW_SECONDS", sec.timestamp_window_seconds.to_string()),
        env("MAX_QUEUE_SECONDS", sec.max_queue_seconds.to_string()),
        env("MAX_MESSAGE_BYTES", sec.max_message_bytes.to_string()),
        env("RATE_PER_SECOND", sec.rate_per_second.to_string()),
        env("RATE_BURST", sec.burst.to_string()),
        env("COMMAND_API_PORT", gw.spec.command_api.port.to_string()),
        env("COMMAND_TLS_CERT_FILE", format!("{}/tls.crt", mosquitto::CERTS_DIR)),
        env("COMMAND_TLS_KEY_FILE", format!("{}/tls.key", mosquitto::CERTS_DIR)),
        env_from_secret("COMMAND_API_KEY", &key_secret, &key_key),
        env("METRICS_ADDR", format!("0.0.0.0:{METRICS_PORT}")),
        env("MQTT_CLIENT_ID", mqtt_client_id(gw)),
    ];
    if let Some(endpoint) = aws_endpoint {
        let local_only = ["MQTT_HOST", "MQTT_PORT", "MQTT_CA_FILE", "CRL_FILE", "CRL_CONFIGMAP"];
        vars.retain(|v| !local_only.contains(&v.name.as_str()));
        vars.push(env("MQTT_HOST", endpoint));
        vars.push(env("MQTT_PORT", "8883"));
        vars.push(env("MQTT_CA_FILE", PUBLIC_ROOTS));
    }
    if let Some(audit) = &gw.spec.audit {
        let r = &audit.connection_secret_ref;
        vars.push(env_from_secret("DATABASE_URL", &r.name, &r.key));
    }
    if let Some(b) = &gw.spec.backend {
        vars.push(env("BACKEND_URL", b.url.as_str()));
        vars.push(env("BACKEND_TIMEOUT_MS", b.timeout_ms.to_string()));
    }
    if let Some(k) = &gw.spec.kafka {
        let brokers = k
            .bootstrap_servers
            .clone()
            .unwrap_or_else(|| config.kafka_bootstrap.clone());
        vars.push(env("KAFKA_BROKERS", brokers));
        vars.push(env("KAFKA_TOPIC", k.topic.as_str()));
    }
    let selector = selector(&name);
    let data_volume = match &gw.spec.persistence {
        Some(_) => Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: broker_volume_name(&name),
                ..Default::default()
            }),
            ..Default::default()
        },
        None => Volume {
            name: "data".into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        },
    };
    let port = |name: &str, port: i32| ContainerPort {
        name: Some(name.into()),
        container_port: port,
        ..Default::default()
    };
    let mosquitto = Container {
        name: "mosquitto".into(),
        image: Some(mosquitto_image),
        command: Some(vec![
            "mosquitto".into(),
            "-c".into(),
            format!("{}/mosquitto.conf", mosquitto::CONFIG_DIR),
        ]),
        ports: Some(vec![port("mqtts", gw.spec.mqtt_port)]),
        readiness_probe: Some(objects::tcp_probe(gw.spec.mqtt_port, 10)),
        // On pod deletion both containers get SIGTERM at once; the broker
        // stays until the gateway has drained (its acks and its DISCONNECT
        // reach the broker), which the shared process namespace shows.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec!["/bin/sh".into(), "-c".into(), WAIT_FOR_GATEWAY.into()]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        security_context: Some(objects::locked_down()),
        volume_mounts: Some(vec![
            mount("config", mosquitto::CONFIG_DIR, true),
            mount("broker-tls", mosquitto::CERTS_DIR, true),
            mount("crl", mosquitto::CRL_DIR, true),
            mount("data", mosquitto::DATA_DIR, false),
        ]),
        ..Default::default()
    };
    let mut gateway = Container {
        name: "gateway".into(),
        image: Some(gateway_image),
        env: Some(vars),
        ports: Some(vec![
            port("command", gw.spec.command_api.port),
            port("metrics", METRICS_PORT),
        ]),
        readiness_probe: Some(objects::http_probe("/health", METRICS_PORT, 10, None)),
        liveness_probe: Some(objects::http_probe("/health", METRICS_PORT, 20, Some(6))),
        security_context: Some(objects::locked_down()),
        volume_mounts: Some(vec![
            mount("client-tls", CLIENT_DIR, true),
            mount("broker-tls", mosquitto::CERTS_DIR, true),
            mount("crl", mosquitto::CRL_DIR, true),
        ]),
        ..Default::default()
    };
    let mut containers = vec![mosquitto, gateway.clone()];
    let mut volumes = vec![
        objects::configmap_volume("config", &mosquitto_configmap_name(&name)),
        objects::configmap_volume("crl", &crl::name(&name)),
        objects::secret_volume("broker-tls", &broker_secret_name(&name), None),
        objects::secret_volume("client-tls", &client_secret_name(&name), None),
        data_volume,
    ];
    if aws_endpoint.is_some() {
        gateway.volume_mounts = Some(vec![
            mount("client-tls", CLIENT_DIR, true),
            mount("broker-tls", mosquitto::CERTS_DIR, true),
        ]);
        containers = vec![gateway];
        volumes.retain(|v| v.name == "client-tls" || v.name == "broker-tls");
    }
    Ok(StatefulSet {
        metadata: child_meta(gw, workload_name(&name))?,
        spec: Some(StatefulSetSpec {
            // One broker per gateway: Mosquitto does not cluster, and
            // sessions live in its persistence directory (module docs).
            replicas: Some(1),
            service_name: Some(name.clone()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                ..Default::default()
            }),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(objects::pod_meta(
                    &selector,
                    &[("fleetward.io/rollout-hash", rollout_hash)],
                )),
                spec: Some(PodSpec {
                    // The gateway sends SIGHUP to Mosquitto when the CRL changes.
                    share_process_namespace: Some(aws_endpoint.is_none()),
                    termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
                    // It watches its devices' credential Secrets (the Role below).
                    service_account_name: Some(workload_name(&name)),
                    security_context: Some(objects::pod_security(POD_USER)),
                    containers,
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Where the gateway container finds its client certificate.
const CLIENT_DIR: &str = "/etc/fleetward/client";

fn selector(gateway: &str) -> BTreeMap<String, String> {
    objects::map(&[
        ("app.kubernetes.io/name", "fleetward-gateway"),
        ("fleetward.io/gateway", gateway),
    ])
}

/// The gateway workload's identity: it may read Secrets in its namespace
/// (its devices' credentials, for the device registry) and nothing else.
/// Kubernetes RBAC cannot narrow this to a label selector, so the gateway
/// filters by `fleetward.io/gateway=<name>` itself.
pub fn rbac(gw: &Gateway) -> Result<(ServiceAccount, Role, RoleBinding)> {
    let name = workload_name(&gw.name_any());
    let meta = child_meta(gw, name.clone())?;
    let sa = ServiceAccount {
        metadata: meta.clone(),
        ..Default::default()
    };
    let role = Role {
        metadata: meta.clone(),
        rules: Some(vec![
            // Its devices' keys (fleetward_credentials::keys) and no other
            // Secret: not the devices' private keys, not its CA's, not the
            // command key or any other gateway's or workload's Secrets.
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["secrets".into()]),
                resource_names: Some(keys_secret_names(&gw.name_any())),
                verbs: vec!["get".into(), "list".into(), "watch".into()],
                ..Default::default()
            },
            // Its own CRL, read from the API as soon as it changes (the
            // mounted copy follows only when the kubelet syncs it).
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["configmaps".into()]),
                resource_names: Some(vec![crl::name(&gw.name_any())]),
                verbs: vec!["get".into(), "list".into(), "watch".into()],
                ..Default::default()
            },
        ]),
    };
    let binding = RoleBinding {
        metadata: meta,
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: gw.namespace(),
            ..Default::default()
        }]),
    };
    Ok((sa, role, binding))
}

pub async fn apply_rbac(gw: &Gateway, ctx: &Context, ns: &str) -> Result<()> {
    let name = workload_name(&gw.name_any());
    let (sa, role, binding) = rbac(gw)?;
    apply(
        &Api::<ServiceAccount>::namespaced(ctx.client.clone(), ns),
        &name,
        &sa,
        None,
    )
    .await?;
    apply(&Api::<Role>::namespaced(ctx.client.clone(), ns), &name, &role, None).await?;
    apply(
        &Api::<RoleBinding>::namespaced(ctx.client.clone(), ns),
        &name,
        &binding,
        None,
    )
    .await?;
    Ok(())
}

/// The broker's Service, of `spec.serviceType` (devices reach it, perhaps
/// from outside the cluster as a LoadBalancer): MQTT over TLS only.
pub fn service(gw: &Gateway) -> Result<Service> {
    let name = gw.name_any();
    Ok(Service {
        metadata: child_meta(gw, name.clone())?,
        spec: Some(ServiceSpec {
            type_: Some(gw.spec.service_type.as_str().into()),
            selector: Some(selector(&name)),
            ports: Some(vec![service_port("mqtts", gw.spec.mqtt_port)]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The command API and metrics: always a ClusterIP Service of their own,
/// never on the one that may be exposed to the devices' network.
pub fn api_service(gw: &Gateway) -> Result<Service> {
    let name = gw.name_any();
    Ok(Service {
        metadata: child_meta(gw, api_service_name(&name))?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector(&name)),
            ports: Some(vec![
                service_port("command", gw.spec.command_api.port),
                service_port("metrics", METRICS_PORT),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The broker's volume claim when `spec.persistence` asks for one; without
/// it, a claim left from earlier is deleted (the pod no longer mounts it).
pub async fn apply_broker_volume(gw: &Gateway, ctx: &Context, ns: &str) -> Result<()> {
    let name = broker_volume_name(&gw.name_any());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let Some(p) = &gw.spec.persistence else {
        // Only this Gateway's own claim, and only that very object (uid
        // precondition): a claim someone else made under the name stays.
        let owner = owner_ref(gw)?;
        let Some(claim) = claims.get_opt(&name).await? else {
            return Ok(());
        };
        if crate::ownership::controller_of(&claim).is_none_or(|r| r.uid != owner.uid) {
            return Ok(());
        }
        let only_that = DeleteParams {
            preconditions: Some(Preconditions {
                uid: claim.metadata.uid.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        match claims.delete(&name, &only_that).await {
            Ok(_) => tracing::info!(claim = %name, "deleted the broker volume: spec.persistence was removed"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(());
    };
    let claim = PersistentVolumeClaim {
        metadata: child_meta(gw, name.clone())?,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: p.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some([("storage".to_string(), Quantity(p.size.clone()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    apply(&claims, &name, &claim, None).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use serde_json::json;

    fn gateway(spec: serde_json::Value) -> Gateway {
        serde_json::from_value(json!({
            "apiVersion": "fleetward.io/v1alpha1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "ns", "uid": "u-1"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn full() -> Gateway {
        gateway(json!({
            "persistence": {"size": "2Gi", "storageClassName": "fast"},
            "audit": {"connectionSecretRef": {"name": "db", "key": "url"}},
            "backend": {"url": "http://backend:8080/ingest"},
            "kafka": {"topic": "telemetry"},
        }))
    }

    /// Every mount names a volume of the pod, every volume is used, and
    /// each Secret/ConfigMap volume names the object the operator writes.
    #[test]
    fn mounts_and_volumes_match() {
        let set = statefulset(&full(), &Config::default(), "h1", None).unwrap();
        let pod = set.spec.unwrap().template.spec.unwrap();
        let volumes: Vec<String> = pod.volumes.clone().unwrap().iter().map(|v| v.name.clone()).collect();
        let mut used = std::collections::HashSet::new();
        for c in &pod.containers {
            for m in c.volume_mounts.clone().unwrap() {
                assert!(volumes.contains(&m.name), "{} mounts unknown volume {}", c.name, m.name);
                used.insert(m.name);
            }
            // Locked down, every container.
            let sc = c.security_context.clone().unwrap();
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert!(c.readiness_probe.is_some(), "{} has a readiness probe", c.name);
        }
        assert_eq!(used.len(), volumes.len(), "every volume is mounted");
        let v = serde_json::to_value(&pod.volumes).unwrap();
        let by_name = |n: &str| v.as_array().unwrap().iter().find(|x| x["name"] == n).unwrap().clone();
        assert_eq!(by_name("broker-tls")["secret"]["secretName"], "gw-broker-tls");
        assert_eq!(by_name("client-tls")["secret"]["secretName"], "gw-gateway-client");
        assert_eq!(by_name("crl")["configMap"]["name"], "gw-crl");
        assert_eq!(by_name("config")["configMap"]["name"], "gw-mosquitto");
        assert_eq!(by_name("data")["persistentVolumeClaim"]["claimName"], "gw-broker-data");
        assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
        assert_eq!(pod.share_process_namespace, Some(true));
        // The broker outlives the gateway's drain on pod deletion.
        assert_eq!(pod.termination_grace_period_seconds, Some(45));
        let broker = pod.containers.iter().find(|c| c.name == "mosquitto").unwrap();
        let pre_stop = broker.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()).unwrap();
        let command = pre_stop.exec.as_ref().and_then(|e| e.command.clone()).unwrap();
        assert!(command[2].contains("fleetward-gatew"), "{command:?}");
        assert_eq!(pod.service_account_name.as_deref(), Some("gw-gateway"));
    }

    /// With AWS IoT Core the pod is the gateway alone, connected to the
    /// account's endpoint, trusting the public roots, with no broker files.
    #[test]
    fn with_aws_iot_the_gateway_connects_to_the_endpoint_alone() {
        let set = statefulset(
            &full(),
            &Config::default(),
            "h1",
            Some("abc-ats.iot.eu-west-1.amazonaws.com"),
        )
        .unwrap();
        let pod = set.spec.unwrap().template.spec.unwrap();
        let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["gateway"]);
        let env: std::collections::BTreeMap<String, Option<String>> = pod.containers[0]
            .env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.value))
            .collect();
        assert_eq!(env["MQTT_HOST"].as_deref(), Some("abc-ats.iot.eu-west-1.amazonaws.com"));
        assert_eq!(env["MQTT_PORT"].as_deref(), Some("8883"));
        assert_eq!(env["MQTT_CA_FILE"].as_deref(), Some(PUBLIC_ROOTS));
        assert_eq!(env["MQTT_CLIENT_ID"].as_deref(), Some("fleetward-gateway-ns-gw"));
        assert!(!env.contains_key("CRL_FILE") && !env.contains_key("CRL_CONFIGMAP"));
        let volumes: Vec<String> = pod.volumes.unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(volumes, ["broker-tls", "client-tls"]);
        assert_eq!(pod.share_process_namespace, Some(false));
    }

    #[test]
    fn the_gateway_environment_carries_every_spec_section() {
        let set = statefulset(&full(), &Config::default(), "h1", None).unwrap();
        let pod = set.spec.unwrap().template.spec.unwrap();
        let gw = pod.containers.iter().find(|c| c.name == "gateway").unwrap();
        let env: std::collections::BTreeMap<String, serde_json::Value> = gw
            .env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| {
                assert!(
                    e.value.is_some() != e.value_from.is_some(),
                    "{} has exactly one source",
                    e.name
                );
                (e.name.clone(), serde_json::to_value(&e).unwrap())
            })
            .collect();
        for name in [
            "FLEETWARD_GATEWAY",
            "MQTT_PORT",
            "CRL_FILE",
            "CRL_CONFIGMAP",
            "RATE_PER_SECOND",
            "COMMAND_API_KEY",
            "DATABASE_URL",
            "BACKEND_URL",
            "KAFKA_BROKERS",
            "KAFKA_TOPIC",
            "MQTT_CLIENT_ID",
        ] {
            assert!(env.contains_key(name), "{name} missing");
        }
        assert_eq!(
            env["COMMAND_API_KEY"]["valueFrom"]["secretKeyRef"]["name"],
            "gw-command-api"
        );
        assert_eq!(env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"], "url");
        assert_eq!(env["KAFKA_BROKERS"]["value"], "kafka:9092");
    }

    #[test]
    fn service_ports_target_named_container_ports() {
        let gw = full();
        let set = statefulset(&gw, &Config::default(), "h1", None).unwrap();
        let pod = set.spec.unwrap().template.spec.unwrap();
        let named: Vec<String> = pod
            .containers
            .iter()
            .flat_map(|c| c.ports.clone().unwrap())
            .filter_map(|p| p.name)
            .collect();
        let svc = service(&gw).unwrap().spec.unwrap();
        for p in svc.ports.unwrap() {
            let IntOrString::String(target) = p.target_port.unwrap() else {
                panic!("targets by name")
            };
            assert!(named.contains(&target), "no container port named {target}");
        }
        assert_eq!(
            svc.selector.unwrap().get("fleetward.io/gateway").map(String::as_str),
            Some("gw")
        );
    }

    #[test]
    fn rbac_binds_the_role_to_the_account() {
        let (sa, role, binding) = rbac(&full()).unwrap();
        assert_eq!(sa.metadata.name, role.metadata.name);
        assert_eq!(binding.role_ref.name, role.metadata.name.unwrap());
        let subject = &binding.subjects.unwrap()[0];
        assert_eq!(
            (subject.name.as_str(), subject.namespace.as_deref()),
            ("gw-gateway", Some("ns"))
        );
        assert_eq!(role.rules.unwrap()[0].verbs, ["get", "list", "watch"]);
    }
}
