//! Identities on the operator's Kafka: mutual TLS from a CA the operator
//! owns (Secret `Config::kafka_tls.ca_secret` in its own namespace, made
//! once). Each workload that uses that Kafka gets a client certificate of
//! its role (`CN=fleetward-gateway`, `…-ingestor`, `…-encryptor`,
//! `…-billing`), which is its principal on the broker: the chart's ACLs let
//! each role only what it does (the gateway and the ingestor write, the
//! encryptor and the telemetry writer read and dead-letter, billing reads).
//! A client without a certificate of this CA gets no TLS session at all.
//!
//! The broker's own keystore and the ACL writer's are issued here too,
//! when the operator certifies the chart's Kafka (`KafkaTls::broker`).
//!
//! Client certificates last a year and are replaced 30 days before they
//! expire; the pod template carries the certificate's serial, so a
//! replaced one rolls its workload (librdkafka reads its certificate at
//! start). The broker's and the ACL writer's last as long as the CA: the
//! broker reads its keystore at start, and the chart's StatefulSet is not
//! the operator's to roll, so they are replaced with the CA (or when their
//! Secret is deleted, taken up at the Kafka pod's next start).
//! A resource that names its own `bootstrapServers` gets none of this:
//! that Kafka does not know the operator's CA.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{PodTemplateSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::config::{Config, KafkaTls};
use crate::context::Context;
use crate::controllers::applier::create_once;
use crate::controllers::objects;
use crate::controllers::{secret_str, tls_secret};
use crate::ownership::{MANAGER, labelled_by_operator, labels, refuse_unless_owned};
use crate::pki::{self, CaBundle, LeafRequest, Usage};
use crate::{Error, Result};

/// Who a workload is to Kafka: its certificate's common name, which the
/// broker maps to the principal `User:<name>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Gateway,
    Ingestor,
    /// The encryptor and the telemetry writer: read a topic, write its
    /// dead letters.
    Encryptor,
    Billing,
}

impl Role {
    pub fn principal(self) -> &'static str {
        match self {
            Self::Gateway => "fleetward-gateway",
            Self::Ingestor => "fleetward-ingestor",
            Self::Encryptor => "fleetward-encryptor",
            Self::Billing => "fleetward-billing",
        }
    }
}

const CA_CERT_KEY: &str = "ca.crt";
const CA_KEY_KEY: &str = "ca.key";
/// Key + certificate in one PEM, as a Java keystore of type PEM reads it.
const KEYSTORE_KEY: &str = "keystore.pem";
const VALIDITY_DAYS: i64 = 365;
const RENEW_BEFORE_DAYS: i64 = 30;
const CA_VALIDITY_DAYS: i64 = 3650;
pub const BROKER_PRINCIPAL: &str = "fleetward-kafka-broker";
pub const ADMIN_PRINCIPAL: &str = "fleetward-kafka-admin";

/// The pod annotation holding the client certificate's serial.
pub const SERIAL_ANNOTATION: &str = "fleetward.io/kafka-client-serial";
const VOLUME: &str = "kafka-client";

/// The Secret holding `workload`'s Kafka client certificate.
pub fn secret_name(workload: &str) -> String {
    format!("{workload}-kafka")
}

/// Whether a pod talks to the operator's Kafka (a container's
/// `KAFKA_BROKERS` is the operator's default) while that Kafka wants the
/// operator's certificates.
pub fn applies(config: &Config, template: &PodTemplateSpec) -> bool {
    config.kafka_tls.is_some()
        && template.spec.iter().flat_map(|s| &s.containers).any(|c| {
            c.env
                .iter()
                .flatten()
                .any(|e| e.name == "KAFKA_BROKERS" && e.value.as_deref() == Some(config.kafka_bootstrap.as_str()))
        })
}

/// Points a workload's pod at its client certificate: every container
/// that talks to Kafka (it has `KAFKA_BROKERS`) gets the settings of
/// `fleetward_protocol::kafka` and the Secret mounted; the serial rolls
/// the pods when the certificate is replaced.
pub fn attach(template: &mut PodTemplateSpec, secret: &str, serial: &str) {
    use fleetward_protocol::kafka::{SECURITY_PROTOCOL_ENV, TLS_DIR, TLS_DIR_ENV};
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.annotations
        .get_or_insert_with(Default::default)
        .insert(SERIAL_ANNOTATION.into(), serial.into());
    let Some(spec) = template.spec.as_mut() else {
        return;
    };
    let mut used = false;
    for c in &mut spec.containers {
        let env = c.env.get_or_insert_with(Vec::new);
        if !env.iter().any(|e| e.name == "KAFKA_BROKERS") {
            continue;
        }
        used = true;
        env.retain(|e| e.name != SECURITY_PROTOCOL_ENV && e.name != TLS_DIR_ENV);
        env.push(objects::env(SECURITY_PROTOCOL_ENV, "ssl"));
        env.push(objects::env(TLS_DIR_ENV, TLS_DIR));
        let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
        mounts.retain(|m| m.name != VOLUME);
        mounts.push(objects::mount(VOLUME, TLS_DIR, true));
    }
    if used {
        let volumes = spec.volumes.get_or_insert_with(Vec::new);
        volumes.retain(|v| v.name != VOLUME);
        volumes.push(objects::secret_volume(VOLUME, secret, Some(0o440)));
    }
}

/// The operator's Kafka CA, made on first use.
pub async fn authority(client: &kube::Client, tls: &KafkaTls) -> Result<CaBundle> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &tls.namespace);
    if api.get_opt(&tls.ca_secret).await?.is_none() {
        let ca = pki::generate_ca("fleetward Kafka CA", CA_VALIDITY_DAYS)?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(tls.ca_secret.clone()),
                labels: Some(labels(&[])),
                ..Default::default()
            },
            string_data: Some(
                [
                    (CA_CERT_KEY.to_string(), ca.cert_pem.clone()),
                    (CA_KEY_KEY.to_string(), ca.key_pem.clone()),
                ]
                .into(),
            ),
            ..Default::default()
        };
        if create_once(&api, &tls.ca_secret, &secret).await?.is_some() {
            tracing::info!(secret = %tls.ca_secret, "created the Kafka CA");
            return Ok(ca);
        }
    }
    let secret = api.get(&tls.ca_secret).await?;
    let read = |key: &str| {
        secret_str(&secret, key).ok_or_else(|| Error::SecretMissingKey {
            name: tls.ca_secret.clone(),
            key: key.into(),
        })
    };
    let ca = CaBundle {
        cert_pem: read(CA_CERT_KEY)?,
        key_pem: read(CA_KEY_KEY)?,
    };
    ca.validate()?;
    Ok(ca)
}

/// What one certificate Secret should hold.
pub struct Leaf<'a> {
    pub namespace: &'a str,
    pub secret: &'a str,
    pub common_name: &'a str,
    pub dns_names: &'a [String],
    pub usage: Usage,
    pub validity_days: i64,
    /// Controller owner: the Secret goes when its resource goes.
    pub owner: Option<OwnerReference>,
}

/// Makes sure `leaf.secret` holds a current certificate of `ca` for
/// `leaf`, issuing a new one when it is missing, from another CA, for
/// other names, or due for renewal. Returns its serial.
pub async fn ensure(client: &kube::Client, ca: &CaBundle, leaf: &Leaf<'_>) -> Result<String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), leaf.namespace);
    let current = api.get_opt(leaf.secret).await?;
    let cert = current.as_ref().and_then(|s| secret_str(s, "tls.crt"));
    let mut wanted: Vec<String> = leaf.dns_names.to_vec();
    wanted.sort();
    let reason = pki::reissue_reason(
        cert.as_deref(),
        &ca.cert_pem,
        leaf.common_name,
        &wanted,
        RENEW_BEFORE_DAYS,
        Timestamp::now(),
    );
    let Some(reason) = reason else {
        return Ok(pki::inspect(cert.as_deref().unwrap_or_default())?.serial);
    };
    // Never overwrite a Secret someone else made under the name.
    match (&current, &leaf.owner) {
        (Some(existing), Some(owner)) => refuse_unless_owned(existing, owner)?,
        (Some(existing), None) if !labelled_by_operator(existing) => {
            return Err(Error::NameConflict {
                kind: "Secret".into(),
                name: leaf.secret.into(),
                owner: "the Kafka broker".into(),
            });
        }
        _ => {}
    }
    let issued = ca.issue(&LeafRequest {
        common_name: leaf.common_name,
        dns_names: leaf.dns_names,
        ip_addresses: &[],
        usage: leaf.usage,
        validity_days: leaf.validity_days,
    })?;
    let secret = tls_secret(
        ObjectMeta {
            name: Some(leaf.secret.into()),
            labels: Some(labels(&[])),
            owner_references: leaf.owner.clone().map(|o| vec![o]),
            ..Default::default()
        },
        &issued.cert_pem,
        &issued.key_pem,
        Some(&ca.cert_pem),
        [(
            KEYSTORE_KEY.to_string(),
            format!("{}{}", issued.key_pem, issued.cert_pem),
        )],
    )?;
    api.patch(
        leaf.secret,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&secret),
    )
    .await?;
    tracing::info!(namespace = %leaf.namespace, secret = %leaf.secret, principal = %leaf.common_name,
        serial = %issued.info.serial, reason = reason.as_str(), "issued a Kafka certificate");
    Ok(issued.info.serial)
}

/// A workload that may need a Kafka client certificate.
pub struct Workload<'a> {
    pub namespace: &'a str,
    /// The Deployment or StatefulSet; its Secret is `secret_name(name)`.
    pub name: &'a str,
    /// The resource it belongs to (the Secret goes with it).
    pub owner: OwnerReference,
    pub role: Role,
}

/// A workload's client certificate (`secret_name(workload)` beside it)
/// and its pod template pointed at it; nothing when the workload's Kafka
/// is not the operator's (see [`applies`]).
pub async fn certify(ctx: &Context, workload: &Workload<'_>, template: &mut PodTemplateSpec) -> Result<()> {
    let (client, config) = (&ctx.client, &ctx.config);
    let Some(tls) = config.kafka_tls.as_ref().filter(|_| applies(config, template)) else {
        return Ok(());
    };
    let Workload {
        namespace,
        name: workload,
        owner,
        role,
    } = workload;
    let ca = authority(client, tls).await?;
    let secret = secret_name(workload);
    let serial = ensure(
        client,
        &ca,
        &Leaf {
            namespace,
            secret: &secret,
            common_name: role.principal(),
            dns_names: &[],
            usage: Usage::Client,
            validity_days: VALIDITY_DAYS,
            owner: Some(owner.clone()),
        },
    )
    .await?;
    attach(template, &secret, &serial);
    Ok(())
}

/// Keeps the chart's broker certified: its keystore and the ACL writer's,
/// checked at start and every hour (a renewal is due 30 days ahead).
pub async fn run_broker(client: kube::Client, config: Config) {
    let Some(tls) = config.kafka_tls.clone() else {
        return;
    };
    let Some(broker) = tls.broker.clone() else {
        return;
    };
    loop {
        let wait = match certify_broker(&client, &tls, &broker).await {
            Ok(()) => std::time::Duration::from_secs(3600),
            Err(e) => {
                tracing::warn!(error = %e, "could not certify the Kafka broker; retrying");
                std::time::Duration::from_secs(10)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

async fn certify_broker(client: &kube::Client, tls: &KafkaTls, broker: &crate::config::KafkaBroker) -> Result<()> {
    let ca = authority(client, tls).await?;
    for (secret, cn, names, usage) in [
        (
            &broker.server_secret,
            BROKER_PRINCIPAL,
            broker.dns_names.as_slice(),
            Usage::ServerAndClient,
        ),
        (&broker.admin_secret, ADMIN_PRINCIPAL, &[][..], Usage::Client),
    ] {
        ensure(
            client,
            &ca,
            &Leaf {
                namespace: &tls.namespace,
                secret,
                common_name: cn,
                dns_names: names,
                usage,
                validity_days: CA_VALIDITY_DAYS,
                owner: None,
            },
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};

    use super::*;

    fn template() -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: None,
            spec: Some(PodSpec {
                containers: vec![
                    Container {
                        name: "gateway".into(),
                        env: Some(vec![objects::env("KAFKA_BROKERS", "kafka:9092")]),
                        ..Default::default()
                    },
                    Container {
                        name: "mosquitto".into(),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
        }
    }

    fn env_of(c: &Container) -> Vec<(String, String)> {
        c.env
            .iter()
            .flatten()
            .map(|EnvVar { name, value, .. }| (name.clone(), value.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn only_the_kafka_container_gets_the_certificate_and_its_serial_rolls_the_pods() {
        let mut t = template();
        attach(&mut t, "edge-gateway-kafka", "0A1B");
        attach(&mut t, "edge-gateway-kafka", "0A1C");
        let spec = t.spec.as_ref().unwrap();
        let gw = env_of(&spec.containers[0]);
        assert!(gw.contains(&("KAFKA_SECURITY_PROTOCOL".into(), "ssl".into())), "{gw:?}");
        assert!(gw.contains(&("KAFKA_TLS_DIR".into(), fleetward_protocol::kafka::TLS_DIR.into())));
        assert_eq!(gw.len(), 3, "attached twice, set once: {gw:?}");
        assert_eq!(spec.containers[0].volume_mounts.as_ref().unwrap().len(), 1);
        assert!(
            spec.containers[1].env.iter().flatten().next().is_none(),
            "the broker gets nothing"
        );
        assert!(spec.containers[1].volume_mounts.is_none());
        let volumes = spec.volumes.as_ref().unwrap();
        assert_eq!(volumes.len(), 1);
        assert_eq!(
            volumes[0].secret.as_ref().unwrap().secret_name.as_deref(),
            Some("edge-gateway-kafka")
        );
        assert_eq!(
            t.metadata.unwrap().annotations.unwrap()[SERIAL_ANNOTATION],
            "0A1C",
            "the newest serial"
        );
    }

    #[test]
    fn a_resource_with_its_own_kafka_gets_no_certificate() {
        let mut config = Config {
            kafka_bootstrap: "kafka:9092".into(),
            ..Default::default()
        };
        assert!(!applies(&config, &template()), "no Kafka TLS configured");
        config.kafka_tls = Some(KafkaTls {
            namespace: "fleetward".into(),
            ca_secret: "fleetward-kafka-ca".into(),
            broker: None,
        });
        assert!(applies(&config, &template()));
        config.kafka_bootstrap = "b-1.msk.example:9094".into();
        assert!(!applies(&config, &template()), "the pod's Kafka is another");
    }

    #[test]
    fn a_client_certificate_names_its_role_and_serves_no_one() {
        let ca = pki::generate_ca("fleetward Kafka CA", 30).unwrap();
        let issued = ca
            .issue(&LeafRequest {
                common_name: Role::Billing.principal(),
                dns_names: &[],
                ip_addresses: &[],
                usage: Usage::Client,
                validity_days: VALIDITY_DAYS,
            })
            .unwrap();
        assert_eq!(issued.info.common_name, "fleetward-billing");
        assert!(pki::is_issued_by(&issued.cert_pem, &ca.cert_pem));
        assert!(
            issued.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
            "PKCS#8, as Java reads it"
        );
    }
}
