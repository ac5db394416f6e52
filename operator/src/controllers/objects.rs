//! Small builders over k8s-openapi's types for the pieces every workload
//! repeats (environment, probes, locked-down security contexts, volumes).
//! Typed, so a misspelt field is a compile error rather than a key the API
//! server silently drops.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, PodSecurityContext, Probe,
    SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext, ServiceAccount, TCPSocketAction, Volume,
    VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;

use super::METRICS_PORT;
use crate::ownership::PART_OF;

pub fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// An environment variable read from a Secret key (the value never passes
/// through the operator).
pub fn env_from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Where a workload finds its database server's CA certificate: the
/// `ca.crt` of its database Secret, when the Secret has one. The chart's
/// per-workload Secrets do, and their URLs say
/// `sslmode=verify-full&sslrootcert=<this>/ca.crt` (helm/fleetward
/// `fleetward.databaseCAFile`).
pub const DATABASE_CA_DIR: &str = "/var/run/fleetward/database";
const DATABASE_CA_KEY: &str = "ca.crt";

/// A workload's database: `DATABASE_URL` from the Secret's key, and the
/// same Secret's `ca.crt` mounted at [`DATABASE_CA_DIR`] (an optional key:
/// a Secret with a URL only mounts an empty directory).
pub struct Database {
    pub env: EnvVar,
    pub volume: Volume,
    pub mount: VolumeMount,
}

pub fn database(secret: &str, key: &str) -> Database {
    let mut volume = secret_items_volume("database-ca", secret, &[(DATABASE_CA_KEY, DATABASE_CA_KEY)], None);
    if let Some(s) = volume.secret.as_mut() {
        s.optional = Some(true);
    }
    Database {
        env: env_from_secret("DATABASE_URL", secret, key),
        volume,
        mount: mount("database-ca", DATABASE_CA_DIR, true),
    }
}

/// Non-root (`user`), the runtime's default seccomp profile; `fsGroup`
/// lets that user read mounted Secrets and write volumes.
pub fn pod_security(user: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(user),
        run_as_group: Some(user),
        fs_group: Some(user),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Read-only root filesystem, no privilege escalation, no capabilities.
pub fn locked_down() -> SecurityContext {
    SecurityContext {
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn http_probe(path: &str, port: i32, period_seconds: i32, failure_threshold: Option<i32>) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            ..Default::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold,
        ..Default::default()
    }
}

pub fn tcp_probe(port: i32, period_seconds: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(port),
            ..Default::default()
        }),
        period_seconds: Some(period_seconds),
        ..Default::default()
    }
}

pub fn mount(volume: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

pub fn secret_volume(volume: &str, secret: &str, mode: Option<i32>) -> Volume {
    Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: mode,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A Secret volume that projects only the keys named in `items`, each as
/// `(key, file name)`: the Secret's other keys (a CA's private key beside
/// its certificate) never reach the pod.
pub fn secret_items_volume(volume: &str, secret: &str, items: &[(&str, &str)], mode: Option<i32>) -> Volume {
    let mut v = secret_volume(volume, secret, mode);
    if let Some(s) = v.secret.as_mut() {
        s.items = Some(
            items
                .iter()
                .map(|(key, path)| KeyToPath {
                    key: key.to_string(),
                    path: path.to_string(),
                    ..Default::default()
                })
                .collect(),
        );
    }
    v
}

pub fn configmap_volume(volume: &str, configmap: &str) -> Volume {
    Volume {
        name: volume.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: configmap.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The metadata of a fleetward pod: its selector labels plus the part-of
/// label (the chart's PodMonitor and NetworkPolicies select by it), and
/// the annotations that have Prometheus scrape `/metrics` on
/// `METRICS_PORT`, plus `extra` annotations.
pub fn pod_meta(selector: &BTreeMap<String, String>, extra: &[(&str, &str)]) -> ObjectMeta {
    let mut labels = selector.clone();
    labels.insert(PART_OF.0.into(), PART_OF.1.into());
    let port = METRICS_PORT.to_string();
    let mut annotations = map(&[("prometheus.io/scrape", "true"), ("prometheus.io/port", &port)]);
    annotations.extend(map(extra));
    ObjectMeta {
        labels: Some(labels),
        annotations: Some(annotations),
        ..Default::default()
    }
}

/// `pairs` as a label (or annotation) map.
pub fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A workload's account: a ServiceAccount, a Role with `rules` and the
/// RoleBinding between them, all three named and labelled by `meta` (the
/// owner's child metadata) in the namespace `namespace`.
pub fn account(
    meta: ObjectMeta,
    namespace: Option<String>,
    rules: Vec<PolicyRule>,
) -> (ServiceAccount, Role, RoleBinding) {
    let name = meta.name.clone().unwrap_or_default();
    let binding = RoleBinding {
        metadata: meta.clone(),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace,
            ..Default::default()
        }]),
    };
    let role = Role {
        metadata: meta.clone(),
        rules: Some(rules),
    };
    let sa = ServiceAccount {
        metadata: meta,
        ..Default::default()
    };
    (sa, role, binding)
}

/// A Role rule: `verbs` on `resource` of API group `group` (`""` for the
/// core group), only the objects named `names` when given.
pub fn rule(group: &str, resource: &str, names: Option<Vec<String>>, verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(vec![resource.into()]),
        resource_names: names,
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

/// A Service port that targets the container port of the same name.
pub fn service_port(name: &str, port: i32) -> k8s_openapi::api::core::v1::ServicePort {
    k8s_openapi::api::core::v1::ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
            name.into(),
        )),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_serialize_to_the_api_field_names() {
        let v = serde_json::to_value(locked_down()).unwrap();
        assert_eq!(v["readOnlyRootFilesystem"], true);
        assert_eq!(v["allowPrivilegeEscalation"], false);
        assert_eq!(v["capabilities"]["drop"][0], "ALL");
        let v = serde_json::to_value(env_from_secret("K", "s", "k")).unwrap();
        assert_eq!(v["valueFrom"]["secretKeyRef"]["name"], "s");
        let v = serde_json::to_value(http_probe("/health", 9090, 10, Some(6))).unwrap();
        assert_eq!(v["httpGet"]["port"], 9090);
        assert_eq!(v["failureThreshold"], 6);
        let v = serde_json::to_value(pod_security(65532)).unwrap();
        assert_eq!(v["seccompProfile"]["type"], "RuntimeDefault");
        assert_eq!(v["fsGroup"], 65532);
    }

    #[test]
    fn pods_carry_their_selector_the_part_of_label_and_scrape_annotations() {
        let selector = map(&[("app.kubernetes.io/name", "fleetward-gateway")]);
        let meta = pod_meta(&selector, &[("fleetward.io/rollout-hash", "abc")]);
        let labels = meta.labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "fleetward-gateway");
        assert_eq!(labels["app.kubernetes.io/part-of"], "fleetward");
        let ann = meta.annotations.unwrap();
        assert_eq!(ann["prometheus.io/scrape"], "true");
        assert_eq!(ann["prometheus.io/port"], "9090");
        assert_eq!(ann["fleetward.io/rollout-hash"], "abc");
    }
}
