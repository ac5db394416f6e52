//! Tests of `workload.rs`: the Gateway's pod, Services and RBAC as built,
//! and how their mounts, volumes, ports and environment fit together.

use super::*;
use crate::controllers::gateway::objects::{rbac, service};
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
    for c in pod.containers.iter().chain(pod.init_containers.iter().flatten()) {
        for m in c.volume_mounts.clone().unwrap() {
            assert!(volumes.contains(&m.name), "{} mounts unknown volume {}", c.name, m.name);
            used.insert(m.name);
        }
        // Locked down, every container.
        let sc = c.security_context.clone().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
    }
    for c in &pod.containers {
        assert!(c.readiness_probe.is_some(), "{} has a readiness probe", c.name);
    }
    assert_eq!(used.len(), volumes.len(), "every volume is mounted");
    let v = serde_json::to_value(&pod.volumes).unwrap();
    let by_name = |n: &str| v.as_array().unwrap().iter().find(|x| x["name"] == n).unwrap().clone();
    assert_eq!(by_name("broker-tls")["secret"]["secretName"], "gw-broker-tls");
    assert_eq!(by_name("client-tls")["secret"]["secretName"], "gw-gateway-client");
    assert_eq!(by_name("crl-source")["configMap"]["name"], "gw-crl");
    assert!(by_name("crl")["emptyDir"].is_object());
    assert_eq!(by_name("config")["configMap"]["name"], "gw-mosquitto");
    assert_eq!(by_name("data")["persistentVolumeClaim"]["claimName"], "gw-broker-data");
    // The audit database's CA, from the same Secret as its URL, only the
    // ca.crt key, optional (a Secret with a URL only still works), and
    // only in the gateway's container, not the broker's.
    let db_ca = by_name("database-ca");
    assert_eq!(db_ca["secret"]["secretName"], "db");
    assert_eq!(db_ca["secret"]["optional"], true);
    assert_eq!(db_ca["secret"]["items"], json!([{"key": "ca.crt", "path": "ca.crt"}]));
    let mounted_in: Vec<&str> = pod
        .containers
        .iter()
        .filter(|c| c.volume_mounts.iter().flatten().any(|m| m.name == "database-ca"))
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(mounted_in, ["gateway"]);
    assert_eq!(pod.security_context.clone().unwrap().run_as_non_root, Some(true));
    // The broker outlives the gateway's drain on pod deletion.
    assert_eq!(pod.termination_grace_period_seconds, Some(45));
    let broker = pod.containers.iter().find(|c| c.name == "mosquitto").unwrap();
    let pre_stop = broker.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()).unwrap();
    let command = pre_stop.exec.as_ref().and_then(|e| e.command.clone()).unwrap();
    assert!(command[2].contains("flock -s \"$f\""), "{command:?}");
    assert!(command[2].contains(RUN_LOCK_FILE), "{command:?}");
    assert_eq!(pod.service_account_name.as_deref(), Some("gw-gateway"));
}

/// A compromised broker gets nothing of the gateway's: no shared process
/// namespace (no /proc/<gateway>/environ with the command keys), another
/// user, no API token; the CRL it reads only the gateway may write.
#[test]
fn the_broker_is_isolated_from_the_gateway() {
    let set = statefulset(&full(), &Config::default(), "h1", None).unwrap();
    let pod = set.spec.unwrap().template.spec.unwrap();
    assert_ne!(pod.share_process_namespace, Some(true));
    assert_eq!(pod.automount_service_account_token, Some(false));
    let container = |n: &str| pod.containers.iter().find(|c| c.name == n).unwrap().clone();
    let (broker, gateway) = (container("mosquitto"), container("gateway"));
    let pod_user = pod.security_context.as_ref().and_then(|s| s.run_as_user);
    let user = |c: &Container| c.security_context.as_ref().and_then(|s| s.run_as_user).or(pod_user);
    assert_eq!(user(&broker), Some(65532));
    assert_eq!(user(&gateway), Some(65533));
    let mount = |c: &Container, volume: &str| c.volume_mounts.iter().flatten().find(|m| m.name == volume).cloned();
    assert!(mount(&broker, "api-token").is_none());
    assert_eq!(mount(&gateway, "api-token").unwrap().mount_path, TOKEN_DIR);
    assert_eq!(mount(&broker, "crl").unwrap().read_only, Some(true));
    assert_eq!(mount(&gateway, "crl").unwrap().read_only, None);
    assert_eq!(mount(&gateway, "receipt").unwrap().read_only, Some(true));
    for secret in ["client-tls", "database-ca"] {
        assert!(mount(&broker, secret).is_none(), "{secret}");
    }
    assert!(broker.env.is_none(), "the broker has no environment of secrets");
    let token = serde_json::to_value(pod.volumes.unwrap().iter().find(|v| v.name == "api-token")).unwrap();
    assert_eq!(token["projected"]["sources"][0]["serviceAccountToken"]["path"], "token");
    // The init container seeds the CRL as the gateway's user.
    let init = pod.init_containers.unwrap();
    assert_eq!(
        init[0].security_context.as_ref().and_then(|s| s.run_as_user),
        Some(65533)
    );
    assert!(init[0].command.as_ref().unwrap()[2].contains("crl-source/crl.pem"));
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
    assert!(!env.contains_key("RUN_LOCK_FILE"));
    let volumes: Vec<String> = pod.volumes.unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(volumes, ["api-token", "broker-tls", "client-tls", "database-ca"]);
    let mounts: Vec<String> = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.clone())
        .collect();
    assert!(mounts.contains(&objects::DATABASE_CA_DIR.to_string()), "{mounts:?}");
    assert!(mounts.contains(&TOKEN_DIR.to_string()), "{mounts:?}");
    assert!(pod.init_containers.is_none());
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
        "RUN_LOCK_FILE",
        "LIMITS_FROM_GATEWAY",
        "DEVICE_STATUS_WRITES_PER_SECOND",
        "MAX_MESSAGE_BYTES",
        "COMMAND_API_KEY",
        "COMMAND_METER_KEY",
        "RECEIPT_TOKEN_FILE",
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
    assert_eq!(
        env["COMMAND_METER_KEY"]["valueFrom"]["secretKeyRef"]["name"],
        "gw-command-meter"
    );
    assert_eq!(env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"], "url");
    assert_eq!(env["KAFKA_BROKERS"]["value"], "kafka:9092");
    assert!(
        !env.contains_key("AUDIT_RETENTION_DAYS"),
        "the audit retention is read from the Gateway, live: a change must not roll the pod"
    );
    assert_eq!(env["RECORD_KEY"]["valueFrom"]["secretKeyRef"]["name"], "gw-record-key");
    assert_eq!(env["RECORD_KEY"]["valueFrom"]["secretKeyRef"]["key"], "record.key");
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
    let rules = role.rules.unwrap();
    // Reads by name only, but for its devices' liveness: a patch of their
    // status and a list of them (not their spec, not any other object).
    let (devices, named): (Vec<_>, Vec<_>) = rules
        .iter()
        .partition(|r| r.resources.as_ref().is_some_and(|rs| rs[0].starts_with("devices")));
    assert!(named.iter().all(|r| r.verbs == ["get", "list", "watch"]), "{rules:?}");
    assert!(
        named.iter().all(|r| r.resource_names.is_some()),
        "every other read is by name: {named:?}"
    );
    let verbs: Vec<(String, Vec<String>)> = devices
        .iter()
        .map(|r| (r.resources.as_ref().unwrap()[0].clone(), r.verbs.clone()))
        .collect();
    assert_eq!(
        verbs,
        [
            ("devices/status".to_string(), vec!["patch".to_string()]),
            ("devices".to_string(), vec!["list".to_string()])
        ],
        "Devices: a patch of their status, a list of them; no spec written"
    );
    let gateways = rules
        .iter()
        .find(|r| r.resources.as_deref() == Some(&["gateways".to_string()][..]))
        .expect("a rule for its Gateway");
    assert_eq!(gateways.api_groups.as_deref(), Some(&["fleetward.io".to_string()][..]));
    assert_eq!(
        gateways.resource_names.as_deref(),
        Some(&["gw".to_string()][..]),
        "its own Gateway only"
    );
}

/// The limits the gateway follows live are not in the pod template: a
/// change of them leaves the StatefulSet as it is (no new pod, no broker
/// restart, no device disconnected). The message size is, and rolls it.
#[test]
fn a_rate_limit_change_leaves_the_pod_template_alone() {
    let before = statefulset(&full(), &Config::default(), "h1", None).unwrap();
    let mut changed = full();
    changed.spec.security.rate_per_second = 1;
    changed.spec.security.burst = 2;
    changed.spec.security.timestamp_window_seconds = 30;
    changed.spec.security.max_queue_seconds = 10;
    let after = statefulset(&changed, &Config::default(), "h1", None).unwrap();
    assert_eq!(
        before.spec, after.spec,
        "the pod template does not carry the live limits"
    );
    changed.spec.security.max_message_bytes = 1024;
    let resized = statefulset(&changed, &Config::default(), "h1", None).unwrap();
    assert_ne!(
        before.spec, resized.spec,
        "the message size (the broker's too) rolls the pod"
    );
}
