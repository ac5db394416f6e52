//! Gateway reconciler: CA, broker and gateway-client certificates, CRL,
//! Mosquitto configuration, StatefulSet (Mosquitto + gateway) and Service,
//! and with `spec.storage` the telemetry writer.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use sha2::{Digest, Sha256};

use super::{requeue_at, secret_str, tls_secret};
use crate::conditions::{self, READY};
use crate::context::{Context, apply, apply_status, labels, owner_ref};
use crate::crd::{Gateway, GatewayStatus};
use crate::pki::{self, CaBundle, LeafRequest, Usage};
use crate::{Error, Result, crl, mosquitto};

pub mod telemetry;
mod workload;
pub use workload::broker_volume_name;

const KIND: &str = "gateway";

pub fn ca_secret_name(gateway: &str) -> String {
    format!("{gateway}-ca")
}
pub fn broker_secret_name(gateway: &str) -> String {
    format!("{gateway}-broker-tls")
}
pub fn client_secret_name(gateway: &str) -> String {
    format!("{gateway}-gateway-client")
}
pub fn command_secret_name(gateway: &str) -> String {
    format!("{gateway}-command-api")
}
pub fn mosquitto_configmap_name(gateway: &str) -> String {
    format!("{gateway}-mosquitto")
}
/// The StatefulSet, and the gateway's ServiceAccount, Role and RoleBinding.
pub fn workload_name(gateway: &str) -> String {
    format!("{gateway}-gateway")
}

/// Loads a gateway's CA. `Ok(None)` when it does not exist (yet).
pub async fn load_ca(secrets: &Api<Secret>, gateway: &str) -> Result<Option<CaBundle>> {
    let name = ca_secret_name(gateway);
    let Some(secret) = secrets.get_opt(&name).await? else {
        return Ok(None);
    };
    let get = |key: &str| {
        secret_str(&secret, key).ok_or_else(|| Error::SecretMissingKey {
            name: name.clone(),
            key: key.into(),
        })
    };
    Ok(Some(CaBundle {
        cert_pem: get("tls.crt")?,
        key_pem: get("tls.key")?,
    }))
}

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let wc = watcher::Config::default().labels("app.kubernetes.io/managed-by=fleetward-operator");
    Controller::new(Api::<Gateway>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Secret>::all(client.clone()), wc.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), wc.clone())
        .owns(Api::<StatefulSet>::all(client.clone()), wc.clone())
        .owns(Api::<Deployment>::all(client.clone()), wc.clone())
        .owns(Api::<Service>::all(client.clone()), wc.clone())
        .owns(Api::<ServiceAccount>::all(client.clone()), wc.clone())
        .owns(Api::<Role>::all(client.clone()), wc.clone())
        .owns(Api::<RoleBinding>::all(client.clone()), wc.clone())
        .owns(Api::<PersistentVolumeClaim>::all(client.clone()), wc.clone())
        // The telemetry keyring has no owner reference (it outlives the
        // Gateway): map it back by label, so deleting it wakes the Gateway.
        .watches(Api::<Secret>::all(client.clone()), wc, |s| {
            let gateway = s.labels().get(telemetry::LABEL_TELEMETRY_OF)?.clone();
            Some(ObjectRef::<Gateway>::new(&gateway).within(&s.namespace()?))
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "gateway reconcile loop");
            }
        })
        .await;
}

fn error_policy(gw: Arc<Gateway>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(gateway = %gw.name_any(), namespace = ?gw.namespace(), %error, "gateway reconcile failed");
    ctx.metrics.failure(KIND, error);
    Action::requeue(Duration::from_secs(15))
}

/// One reconciliation of a Gateway (public so tests can run it directly).
pub async fn reconcile(gw: Arc<Gateway>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start(KIND);
    let ns = gw.namespace().ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let name = gw.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let gateways: Api<Gateway> = Api::namespaced(ctx.client.clone(), &ns);
    let mut status = gw.status.clone().unwrap_or_default();
    let generation = gw.metadata.generation;

    // 1. The CA: created once, never regenerated while its Secret exists,
    //    because every device certificate hangs off it.
    let ca = match ensure_ca(&gw, &secrets, &ctx).await {
        Ok(ca) => ca,
        Err(e @ Error::InvalidCa { .. }) => {
            conditions::set(
                &mut status.conditions,
                READY,
                false,
                "InvalidCA",
                e.to_string(),
                generation,
            );
            write_status(&gateways, &gw, status).await?;
            ctx.event(gw.as_ref(), true, "InvalidCA", "Validate", e.to_string())
                .await;
            return Ok(Action::requeue(Duration::from_secs(300)));
        }
        Err(e) => return Err(e),
    };
    let ca_info = ca.validate().map_err(|e| Error::InvalidCa {
        name: ca_secret_name(&name),
        reason: e.to_string(),
    })?;

    // 2. The CRL (empty at first; devices add to it when revoked).
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let crl_state = crl::ensure(&cms, &gw, &ca).await?;

    // 3. Broker server certificate: Service DNS names plus localhost, so the
    //    gateway container reaches the broker in-pod over verified TLS.
    let mut dns_names = vec![
        name.clone(),
        format!("{name}.{ns}"),
        format!("{name}.{ns}.svc"),
        format!("{name}.{ns}.svc.cluster.local"),
        "localhost".to_string(),
    ];
    dns_names.extend(gw.spec.extra_dns_names.iter().cloned());
    let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    // The API server has checked that these are addresses (CEL isIP).
    ips.extend(
        gw.spec
            .extra_ip_addresses
            .iter()
            .filter_map(|a| a.parse::<IpAddr>().ok()),
    );
    let broker = ensure_leaf(
        &gw,
        &secrets,
        &ca,
        &broker_secret_name(&name),
        LeafRequest {
            common_name: &name,
            dns_names: &dns_names,
            ip_addresses: &ips,
            usage: Usage::Server,
            validity_days: gw.spec.server_certificate.validity_days,
        },
        gw.spec.server_certificate.renew_before_days,
        &ctx,
    )
    .await?;

    // 4. The gateway workload's own client identity towards the broker.
    let client_cert = ensure_leaf(
        &gw,
        &secrets,
        &ca,
        &client_secret_name(&name),
        LeafRequest {
            common_name: mosquitto::GATEWAY_IDENTITY,
            dns_names: &[],
            ip_addresses: &[],
            usage: Usage::Client,
            validity_days: gw.spec.server_certificate.validity_days,
        },
        gw.spec.server_certificate.renew_before_days,
        &ctx,
    )
    .await?;

    // 5. Command API bearer key, generated unless the user brings one.
    if gw.spec.command_api.api_key_secret_ref.is_none() {
        ensure_command_key(&gw, &secrets).await?;
    }

    // 6. Mosquitto config, Deployment and Service.
    let conf = mosquitto::config(gw.spec.mqtt_port, gw.spec.security.max_message_bytes);
    let acl = mosquitto::acl();
    let cm = ConfigMap {
        metadata: child_meta(&gw, mosquitto_configmap_name(&name))?,
        data: Some(
            [
                ("mosquitto.conf".to_string(), conf.clone()),
                ("acl".to_string(), acl.clone()),
            ]
            .into(),
        ),
        ..Default::default()
    };
    apply(&cms, &mosquitto_configmap_name(&name), &cm).await?;

    // Pods restart when the broker's config or certificate changes; CRL
    // updates do not restart anything (the gateway reloads Mosquitto).
    let rollout_hash = hex::encode(&Sha256::digest(format!("{conf}{acl}{}", broker.serial))[..8]);
    workload::apply_rbac(&gw, &ctx, &ns).await?;
    workload::apply_broker_volume(&gw, &ctx, &ns).await?;
    let set = workload::statefulset(&gw, &ctx, &rollout_hash)?;
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let applied = apply(&sets, &workload_name(&name), &set).await?;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    apply(&services, &name, &workload::service(&gw)?).await?;
    let telemetry_key_id = telemetry::apply_storage(&gw, &ctx, &ns).await?;

    // 7. Status.
    status.observed_generation = generation;
    status.ca_fingerprint = Some(ca_info.fingerprint.clone());
    status.ca_not_after = Some(Time(ca_info.not_after));
    status.endpoint = Some(format!("mqtts://{name}.{ns}.svc:{}", gw.spec.mqtt_port));
    status.server_certificate_serial = Some(broker.serial.clone());
    status.server_certificate_not_after = Some(Time(broker.not_after));
    status.revoked_certificates = Some(crl_state.entries.len() as i64);
    status.crl_number = Some(crl_state.number as i64);
    status.telemetry_key_id = telemetry_key_id;
    conditions::set(
        &mut status.conditions,
        READY,
        true,
        "Configured",
        "CA, certificates, CRL and broker configuration are in place",
        generation,
    );
    let available = applied.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0) > 0;
    conditions::set(
        &mut status.conditions,
        "BrokerAvailable",
        available,
        if available { "Available" } else { "NotAvailable" },
        if available {
            "the broker pod is running"
        } else {
            "no broker pod is available yet"
        },
        generation,
    );
    write_status(&gateways, &gw, status).await?;
    ctx.metrics
        .cert_expiry
        .with_label_values(&[&ns, &name, "gateway-ca"])
        .set(ca_info.not_after.as_second() as f64);
    ctx.metrics
        .cert_expiry
        .with_label_values(&[&ns, &name, "broker"])
        .set(broker.not_after.as_second() as f64);

    let renew_days = |d: i64| jiff::SignedDuration::from_hours(24 * d);
    let next = [
        broker.not_after - renew_days(gw.spec.server_certificate.renew_before_days),
        client_cert.not_after - renew_days(gw.spec.server_certificate.renew_before_days),
        crl_state.refresh_at(),
    ]
    .into_iter()
    .min()
    .expect("non-empty");
    Ok(requeue_at(next))
}

async fn write_status(api: &Api<Gateway>, gw: &Gateway, status: GatewayStatus) -> Result<()> {
    if gw.status.as_ref() == Some(&status) {
        return Ok(());
    }
    apply_status(api, gw, &status).await
}

fn child_meta(gw: &Gateway, name: String) -> Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(name),
        labels: Some(labels(&[("fleetward.io/gateway", &gw.name_any())])),
        owner_references: Some(vec![owner_ref(gw)?]),
        ..Default::default()
    })
}

async fn ensure_ca(gw: &Gateway, secrets: &Api<Secret>, ctx: &Context) -> Result<CaBundle> {
    let name = gw.name_any();
    let secret_name = ca_secret_name(&name);
    match load_ca(secrets, &name).await {
        Ok(Some(ca)) => {
            return ca.validate().map(|_| ca).map_err(|e| Error::InvalidCa {
                name: secret_name,
                reason: e.to_string(),
            });
        }
        Ok(None) => {}
        Err(Error::SecretMissingKey { name, key }) => {
            return Err(Error::InvalidCa {
                name,
                reason: format!("missing {key}"),
            });
        }
        Err(e) => return Err(e),
    }
    let ns = gw.namespace().unwrap_or_default();
    let ca = pki::generate_ca(&format!("fleetward gateway {ns}/{name} CA"), gw.spec.ca_validity_days)?;
    let secret = tls_secret(
        child_meta(gw, secret_name.clone())?,
        &ca.cert_pem,
        &ca.key_pem,
        None,
        [],
    )?;
    // `create`, not apply: if another reconcile won the race, keep its CA.
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            let info = ca.validate()?;
            ctx.event(
                gw,
                false,
                "CACreated",
                "Issue",
                format!("created CA, fingerprint {}", info.fingerprint),
            )
            .await;
            Ok(ca)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => load_ca(secrets, &name)
            .await?
            .ok_or(Error::MissingObjectKey("CA secret vanished during creation")),
        Err(e) => Err(e.into()),
    }
}

/// Keeps the leaf certificate in `secret_name` or issues a new one when it
/// is missing, not from this CA, names the wrong subject/SANs, or is due
/// for renewal.
#[allow(clippy::too_many_arguments)]
async fn ensure_leaf(
    gw: &Gateway,
    secrets: &Api<Secret>,
    ca: &CaBundle,
    secret_name: &str,
    req: LeafRequest<'_>,
    renew_before_days: i64,
    ctx: &Context,
) -> Result<pki::CertInfo> {
    let existing = secrets.get_opt(secret_name).await?;
    let current = existing.as_ref().and_then(|s| {
        let cert = secret_str(s, "tls.crt")?;
        secret_str(s, "tls.key")?;
        (secret_str(s, "ca.crt")? == ca.cert_pem).then_some(cert)
    });
    let mut wanted: Vec<String> = req.dns_names.to_vec();
    wanted.extend(req.ip_addresses.iter().map(|ip| ip.to_string()));
    wanted.sort();
    let reason = pki::reissue_reason(
        current.as_deref(),
        &ca.cert_pem,
        req.common_name,
        &wanted,
        renew_before_days,
        Timestamp::now(),
    );
    if let (Some(cert), None) = (current.as_deref(), reason) {
        return Ok(pki::inspect(cert)?);
    }
    let issued = ca.issue(&req)?;
    let secret = tls_secret(
        child_meta(gw, secret_name.to_string())?,
        &issued.cert_pem,
        &issued.key_pem,
        Some(&ca.cert_pem),
        [],
    )?;
    apply(secrets, secret_name, &secret).await?;
    ctx.event(
        gw,
        false,
        "CertificateIssued",
        "Issue",
        format!(
            "issued {secret_name} ({}), serial {}",
            reason.map(|r| r.as_str()).unwrap_or("new"),
            issued.info.serial
        ),
    )
    .await;
    Ok(issued.info)
}

async fn ensure_command_key(gw: &Gateway, secrets: &Api<Secret>) -> Result<()> {
    let name = command_secret_name(&gw.name_any());
    if secrets.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    let secret = Secret {
        metadata: child_meta(gw, name)?,
        string_data: Some([("api-key".to_string(), pki::random_secret_hex())].into()),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
