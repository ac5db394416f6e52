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

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{
    broker_secret_name, child_meta, client_secret_name, command_secret_name, mosquitto_configmap_name, workload_name,
};
use crate::context::{Context, PART_OF, apply};
use crate::crd::Gateway;
use crate::{Result, crl, mosquitto};

/// Both containers run as this user: the gateway signals Mosquitto (SIGHUP
/// on a new CRL) through the shared process namespace, which needs the
/// same user, and fsGroup lets Mosquitto write its volume.
const POD_USER: i64 = 65532;

pub fn broker_volume_name(gateway: &str) -> String {
    format!("{gateway}-broker-data")
}

pub fn statefulset(gw: &Gateway, ctx: &Context, rollout_hash: &str) -> Result<StatefulSet> {
    let name = gw.name_any();
    let ns = gw.namespace().unwrap_or_default();
    let images = gw.spec.images.clone().unwrap_or_default();
    let gateway_image = images.gateway.unwrap_or_else(|| ctx.config.gateway_image.clone());
    let mosquitto_image = images.mosquitto.unwrap_or_else(|| ctx.config.mosquitto_image.clone());
    let sec = &gw.spec.security;
    let (key_secret, key_key) = match &gw.spec.command_api.api_key_secret_ref {
        Some(r) => (r.name.clone(), r.key.clone()),
        None => (command_secret_name(&name), "api-key".to_string()),
    };
    let mut env = vec![
        json!({"name": "FLEETWARD_GATEWAY", "value": name}),
        json!({"name": "FLEETWARD_NAMESPACE", "value": ns}),
        json!({"name": "MQTT_HOST", "value": "localhost"}),
        json!({"name": "MQTT_PORT", "value": gw.spec.mqtt_port.to_string()}),
        json!({"name": "MQTT_CA_FILE", "value": "/etc/fleetward/client/ca.crt"}),
        json!({"name": "MQTT_CERT_FILE", "value": "/etc/fleetward/client/tls.crt"}),
        json!({"name": "MQTT_KEY_FILE", "value": "/etc/fleetward/client/tls.key"}),
        json!({"name": "CRL_FILE", "value": format!("{}/crl.pem", mosquitto::CRL_DIR)}),
        json!({"name": "TIMESTAMP_WINDOW_SECONDS", "value": sec.timestamp_window_seconds.to_string()}),
        json!({"name": "REPLAY_CACHE_SIZE", "value": sec.replay_cache_size.to_string()}),
        json!({"name": "MAX_MESSAGE_BYTES", "value": sec.max_message_bytes.to_string()}),
        json!({"name": "RATE_PER_SECOND", "value": sec.rate_per_second.to_string()}),
        json!({"name": "RATE_BURST", "value": sec.burst.to_string()}),
        json!({"name": "COMMAND_API_PORT", "value": gw.spec.command_api.port.to_string()}),
        json!({"name": "COMMAND_TLS_CERT_FILE", "value": format!("{}/tls.crt", mosquitto::CERTS_DIR)}),
        json!({"name": "COMMAND_TLS_KEY_FILE", "value": format!("{}/tls.key", mosquitto::CERTS_DIR)}),
        json!({"name": "COMMAND_API_KEY", "valueFrom": {"secretKeyRef": {"name": key_secret, "key": key_key}}}),
        json!({"name": "METRICS_ADDR", "value": "0.0.0.0:9090"}),
        json!({"name": "MQTT_CLIENT_ID", "value": format!("fleetward-gateway-{ns}-{name}")}),
    ];
    if let Some(audit) = &gw.spec.audit {
        let r = &audit.connection_secret_ref;
        env.push(json!({"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": r.name, "key": r.key}}}));
    }
    if let Some(b) = &gw.spec.backend {
        env.push(json!({"name": "BACKEND_URL", "value": b.url}));
        env.push(json!({"name": "BACKEND_TIMEOUT_MS", "value": b.timeout_ms.to_string()}));
    }
    if let Some(k) = &gw.spec.kafka {
        let brokers = k
            .bootstrap_servers
            .clone()
            .unwrap_or_else(|| ctx.config.kafka_bootstrap.clone());
        env.push(json!({"name": "KAFKA_BROKERS", "value": brokers}));
        env.push(json!({"name": "KAFKA_TOPIC", "value": k.topic}));
    }
    let selector = json!({"app.kubernetes.io/name": "fleetward-gateway", "fleetward.io/gateway": name});
    let mut pod_labels = selector.clone();
    pod_labels[PART_OF.0] = json!(PART_OF.1);
    let data_volume = match &gw.spec.persistence {
        Some(_) => json!({"name": "data", "persistentVolumeClaim": {"claimName": broker_volume_name(&name)}}),
        None => json!({"name": "data", "emptyDir": {}}),
    };
    let value = json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": child_meta(gw, workload_name(&name))?,
        "spec": {
            // One broker per gateway: Mosquitto does not cluster, and
            // sessions live in its persistence directory (module docs).
            "replicas": 1,
            "serviceName": name,
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        "fleetward.io/rollout-hash": rollout_hash,
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": "9090",
                    },
                },
                "spec": {
                    // The gateway sends SIGHUP to Mosquitto when the CRL changes.
                    "shareProcessNamespace": true,
                    // It watches its devices' credential Secrets (the Role below).
                    "serviceAccountName": workload_name(&name),
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": POD_USER,
                        "runAsGroup": POD_USER,
                        "fsGroup": POD_USER,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "mosquitto",
                            "image": mosquitto_image,
                            "command": ["mosquitto", "-c", format!("{}/mosquitto.conf", mosquitto::CONFIG_DIR)],
                            "ports": [{"name": "mqtts", "containerPort": gw.spec.mqtt_port}],
                            "readinessProbe": {"tcpSocket": {"port": gw.spec.mqtt_port}, "periodSeconds": 10},
                            "securityContext": {
                                "readOnlyRootFilesystem": true,
                                "allowPrivilegeEscalation": false,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "config", "mountPath": mosquitto::CONFIG_DIR, "readOnly": true},
                                {"name": "broker-tls", "mountPath": mosquitto::CERTS_DIR, "readOnly": true},
                                {"name": "crl", "mountPath": mosquitto::CRL_DIR, "readOnly": true},
                                {"name": "data", "mountPath": mosquitto::DATA_DIR},
                            ],
                        },
                        {
                            "name": "gateway",
                            "image": gateway_image,
                            "env": env,
                            "ports": [
                                {"name": "command", "containerPort": gw.spec.command_api.port},
                                {"name": "metrics", "containerPort": 9090},
                            ],
                            "readinessProbe": {"httpGet": {"path": "/health", "port": 9090}, "periodSeconds": 10},
                            "livenessProbe": {"httpGet": {"path": "/health", "port": 9090}, "periodSeconds": 20, "failureThreshold": 6},
                            "securityContext": {
                                "readOnlyRootFilesystem": true,
                                "allowPrivilegeEscalation": false,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "client-tls", "mountPath": "/etc/fleetward/client", "readOnly": true},
                                {"name": "broker-tls", "mountPath": mosquitto::CERTS_DIR, "readOnly": true},
                                {"name": "crl", "mountPath": mosquitto::CRL_DIR, "readOnly": true},
                            ],
                        },
                    ],
                    "volumes": [
                        {"name": "config", "configMap": {"name": mosquitto_configmap_name(&name)}},
                        {"name": "crl", "configMap": {"name": crl::name(&name)}},
                        {"name": "broker-tls", "secret": {"secretName": broker_secret_name(&name)}},
                        {"name": "client-tls", "secret": {"secretName": client_secret_name(&name)}},
                        data_volume,
                    ],
                },
            },
        },
    });
    Ok(serde_json::from_value(value).expect("deployment template is well-formed"))
}

/// The gateway workload's identity: it may read Secrets in its namespace
/// (its devices' credentials, for the device registry) and nothing else.
/// Kubernetes RBAC cannot narrow this to a label selector, so the gateway
/// filters by `fleetward.io/gateway=<name>` itself.
pub async fn apply_rbac(gw: &Gateway, ctx: &Context, ns: &str) -> Result<()> {
    let name = workload_name(&gw.name_any());
    let meta = serde_json::to_value(child_meta(gw, name.clone())?).expect("metadata serializes");
    let sa: ServiceAccount = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta,
    }))
    .expect("service account template");
    let role: Role = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}],
    }))
    .expect("role template");
    let binding: RoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
    }))
    .expect("role binding template");
    apply(&Api::<ServiceAccount>::namespaced(ctx.client.clone(), ns), &name, &sa).await?;
    apply(&Api::<Role>::namespaced(ctx.client.clone(), ns), &name, &role).await?;
    apply(&Api::<RoleBinding>::namespaced(ctx.client.clone(), ns), &name, &binding).await?;
    Ok(())
}

pub fn service(gw: &Gateway) -> Result<Service> {
    let name = gw.name_any();
    let value = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_meta(gw, name.clone())?,
        "spec": {
            "type": gw.spec.service_type.as_str(),
            "selector": {"app.kubernetes.io/name": "fleetward-gateway", "fleetward.io/gateway": name},
            "ports": [
                {"name": "mqtts", "port": gw.spec.mqtt_port, "targetPort": "mqtts"},
                {"name": "command", "port": gw.spec.command_api.port, "targetPort": "command"},
                {"name": "metrics", "port": 9090, "targetPort": "metrics"},
            ],
        },
    });
    Ok(serde_json::from_value(value).expect("service template is well-formed"))
}

/// The broker's volume claim when `spec.persistence` asks for one; without
/// it, a claim left from earlier is deleted (the pod no longer mounts it).
pub async fn apply_broker_volume(gw: &Gateway, ctx: &Context, ns: &str) -> Result<()> {
    let name = broker_volume_name(&gw.name_any());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let Some(p) = &gw.spec.persistence else {
        match claims.delete(&name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(claim = %name, "deleted the broker volume: spec.persistence was removed"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(());
    };
    let meta = serde_json::to_value(child_meta(gw, name.clone())?).expect("metadata serializes");
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": p.size}},
    });
    if let Some(class) = &p.storage_class_name {
        spec["storageClassName"] = json!(class);
    }
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec,
    }))
    .expect("volume claim template");
    apply(&claims, &name, &claim).await?;
    Ok(())
}
