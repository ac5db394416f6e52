//! The Gateway's workload objects: the StatefulSet (Mosquitto + gateway in
//! one pod), its Service, the ServiceAccount/Role the gateway reads its
//! devices' Secrets with, Mosquitto's configuration and the broker's
//! volume claim. Pure builders; `workload_writes` lists all but the
//! StatefulSet as the plan's writes, which `carry_out` makes.
//!
//! A StatefulSet, not a Deployment: a broker's sessions and queued QoS 1
//! messages live in its persistence file, and two Mosquittos on one volume
//! overwrite each other's state. A Deployment replaces a deleted pod at
//! once, while the old one is still writing its final state; a StatefulSet
//! starts the replacement only once the old pod is gone.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    ConfigMapProjection, Container, ContainerPort, DownwardAPIProjection, DownwardAPIVolumeFile, ExecAction, KeyToPath,
    Lifecycle, LifecycleHandler, ObjectFieldSelector, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec,
    ProjectedVolumeSource, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use super::objects::{child_meta, selector};
use crate::config::Config;
use crate::controllers::METRICS_PORT;
use crate::controllers::objects::{self, env, env_from_secret, mount};
use crate::crd::Gateway;
use crate::{Result, crl, mosquitto};
use fleetward_protocol::record::{RECORD_KEY_ENV, RECORD_KEY_SECRET_KEY};

/// The gateway's drain on SIGTERM (at most 20 s, SHUTDOWN_DRAIN_SECONDS),
/// its wait for the broker to close (at most 5 s), then Mosquitto's own
/// stop.
const TERMINATION_GRACE_SECONDS: i64 = 45;
/// How many Device statuses (`lastSeen`, `online`) a gateway writes a
/// second at most: 10,000 devices of mixed categories need about 30 (the
/// gateway's `device_status` bench), and a restart's catch-up is paced.
const DEVICE_STATUS_WRITES_PER_SECOND: &str = "50";

/// The file the gateway holds locked while it runs (in the CRL volume,
/// which only the gateway may write).
const RUN_LOCK_FILE: &str = "/mosquitto/crl/gateway.lock";

/// Mosquitto's preStop: wait while the gateway holds its lock (the lock
/// goes with the process, however it ends; a gateway that never ran left
/// no file).
const WAIT_FOR_GATEWAY: &str = "f=/mosquitto/crl/gateway.lock; [ ! -e \"$f\" ] || flock -s \"$f\" true";

/// The init container's copy of the CRL from its ConfigMap into the volume
/// the gateway keeps current and Mosquitto reads.
const SEED_CRL: &str = "cp /mosquitto/crl-source/crl.pem /mosquitto/crl/crl.pem";

/// Mosquitto runs as the pod's user (its persistence volume, from earlier
/// releases too, is this user's), fsGroup lets it write its volumes.
const POD_USER: i64 = 65532;
/// The gateway runs as another user, in its own process namespace, and
/// alone holds the API token: a compromised broker cannot read the
/// gateway's environment (the command keys, the database URL), its
/// memory (every device's HMAC key) or act on the API as it. It reads
/// what the broker shares (the receipt token) through the pod's group.
const GATEWAY_USER: i64 = 65533;

/// Where a container finds its ServiceAccount token (client libraries
/// look there).
const TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The gateway's API credentials, as the kubelet would mount them into every
/// container: mounted into the gateway's container only (the pod has
/// `automountServiceAccountToken: false`).
fn api_token_volume() -> Volume {
    Volume {
        name: "api-token".into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o440),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        expiration_seconds: Some(3607),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".into(),
                            path: "ca.crt".into(),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".into(),
                            field_ref: Some(ObjectFieldSelector {
                                field_path: "metadata.namespace".into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                },
            ]),
        }),
        ..Default::default()
    }
}

/// `locked_down`, as the gateway's user.
fn as_gateway_user() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(GATEWAY_USER),
        run_as_group: Some(GATEWAY_USER),
        ..objects::locked_down()
    }
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
        None => (Gateway::command_secret_name(&name), "api-key".to_string()),
    };
    let mut vars = vec![
        env("FLEETWARD_GATEWAY", name.as_str()),
        env("FLEETWARD_NAMESPACE", ns.as_str()),
        env("MQTT_HOST", "localhost"),
        env("MQTT_PORT", gw.spec.mqtt_port.to_string()),
        env("MQTT_CA_FILE", format!("{CLIENT_DIR}/ca.crt")),
        env("MQTT_CERT_FILE", format!("{CLIENT_DIR}/tls.crt")),
        env("MQTT_KEY_FILE", format!("{CLIENT_DIR}/tls.key")),
        env("CRL_FILE", mosquitto::CRL_FILE),
        env("CRL_CONFIGMAP", crl::name(&name)),
        env("RUN_LOCK_FILE", RUN_LOCK_FILE),
        env("RECEIPT_TOKEN_FILE", mosquitto::RECEIPT_TOKEN_FILE),
        // The rate limit, burst, timestamp window and queue age (and the
        // audit retention) are read from the Gateway by the gateway itself,
        // live: changing them keeps the pod, its broker and every device
        // connection. The message size
        // is the broker's packet limit too (its configuration), so it rolls.
        env("LIMITS_FROM_GATEWAY", "true"),
        // Its devices' `lastSeen` and `online`, paced (see the gateway's
        // `device_status`).
        env("DEVICE_STATUS_WRITES_PER_SECOND", DEVICE_STATUS_WRITES_PER_SECOND),
        env("MAX_MESSAGE_BYTES", sec.max_message_bytes.to_string()),
        env("COMMAND_API_PORT", gw.spec.command_api.port.to_string()),
        env("COMMAND_TLS_CERT_FILE", format!("{}/tls.crt", mosquitto::CERTS_DIR)),
        env("COMMAND_TLS_KEY_FILE", format!("{}/tls.key", mosquitto::CERTS_DIR)),
        env_from_secret("COMMAND_API_KEY", &key_secret, &key_key),
        env_from_secret("COMMAND_METER_KEY", &Gateway::meter_key_secret_name(&name), "api-key"),
        env("METRICS_ADDR", format!("0.0.0.0:{METRICS_PORT}")),
        env("MQTT_CLIENT_ID", mqtt_client_id(gw)),
    ];
    if let Some(endpoint) = aws_endpoint {
        let local_only = [
            "MQTT_HOST",
            "MQTT_PORT",
            "MQTT_CA_FILE",
            "CRL_FILE",
            "CRL_CONFIGMAP",
            "RUN_LOCK_FILE",
            "RECEIPT_TOKEN_FILE",
        ];
        vars.retain(|v| !local_only.contains(&v.name.as_str()));
        vars.push(env("MQTT_HOST", endpoint));
        vars.push(env("MQTT_PORT", "8883"));
        vars.push(env("MQTT_CA_FILE", PUBLIC_ROOTS));
    }
    let database = gw
        .spec
        .audit
        .as_ref()
        .map(|a| objects::database(&a.connection_secret_ref.name, &a.connection_secret_ref.key));
    if let Some(db) = &database {
        vars.push(db.env.clone());
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
        vars.push(env_from_secret(
            RECORD_KEY_ENV,
            &Gateway::record_key_secret_name(&name),
            RECORD_KEY_SECRET_KEY,
        ));
    }
    let selector = selector(&name);
    let data_volume = match &gw.spec.persistence {
        Some(_) => Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: Gateway::broker_volume_name(&name),
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
        // On pod deletion the gateway gets SIGTERM at once; the broker
        // stays until the gateway has drained (its acks and its DISCONNECT
        // reach the broker) and let go of its lock.
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
            mount("receipt", mosquitto::RECEIPT_DIR, false),
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
        security_context: Some(as_gateway_user()),
        volume_mounts: Some(vec![
            mount("api-token", TOKEN_DIR, true),
            mount("client-tls", CLIENT_DIR, true),
            mount("broker-tls", mosquitto::CERTS_DIR, true),
            mount("crl", mosquitto::CRL_DIR, false),
            mount("receipt", mosquitto::RECEIPT_DIR, true),
        ]),
        ..Default::default()
    };
    // Fills the CRL volume before the broker starts (Mosquitto will not
    // start without its CRL file); from then on the gateway keeps it.
    let seed_crl = Container {
        name: "crl".into(),
        image: mosquitto.image.clone(),
        command: Some(vec!["/bin/sh".into(), "-c".into(), SEED_CRL.into()]),
        security_context: Some(as_gateway_user()),
        volume_mounts: Some(vec![
            mount("crl-source", mosquitto::CRL_SOURCE_DIR, true),
            mount("crl", mosquitto::CRL_DIR, false),
        ]),
        ..Default::default()
    };
    let mut volumes = vec![
        objects::configmap_volume("config", &Gateway::mosquitto_configmap_name(&name)),
        objects::configmap_volume("crl-source", &crl::name(&name)),
        Volume {
            name: "crl".into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        },
        api_token_volume(),
        objects::secret_volume("broker-tls", &Gateway::broker_secret_name(&name), None),
        objects::secret_volume("client-tls", &Gateway::client_secret_name(&name), None),
        data_volume,
        Volume {
            name: "receipt".into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        },
    ];
    if aws_endpoint.is_some() {
        gateway.volume_mounts = Some(vec![
            mount("api-token", TOKEN_DIR, true),
            mount("client-tls", CLIENT_DIR, true),
            mount("broker-tls", mosquitto::CERTS_DIR, true),
        ]);
        volumes.retain(|v| ["api-token", "client-tls", "broker-tls"].contains(&v.name.as_str()));
    }
    if let Some(db) = database {
        gateway.volume_mounts.get_or_insert_default().push(db.mount);
        volumes.push(db.volume);
    }
    // On AWS IoT Core the gateway is the pod's only container.
    let (init, containers) = match aws_endpoint {
        Some(_) => (None, vec![gateway]),
        None => (Some(vec![seed_crl]), vec![mosquitto, gateway]),
    };
    Ok(StatefulSet {
        metadata: child_meta(gw, Gateway::workload_name(&name))?,
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
                    termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
                    // The gateway watches its devices' key Secrets and its CRL
                    // (the Role below); only its container gets the token.
                    service_account_name: Some(Gateway::workload_name(&name)),
                    automount_service_account_token: Some(false),
                    security_context: Some(objects::pod_security(POD_USER)),
                    init_containers: init,
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

#[cfg(test)]
#[path = "workload_tests.rs"]
mod tests;
