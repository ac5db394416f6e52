//! Device reconciler: issues, renews, rotates and revokes a device's
//! credentials (certificate signed by its Gateway's CA + HMAC secret).
//!
//! The Secret `<device>-credentials` is the source of truth for what was
//! issued (its annotations record version, rotation and the previous key's
//! grace period); the Device status mirrors it for people and tools.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ObjectMeta};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use super::gateway::load_ca;
use super::{requeue_at, secret_str, tls_secret};
use crate::conditions::{self, READY};
use crate::context::{Context, apply, apply_status, labels, owner_ref};
use crate::crd::{Device, DeviceStatus, Gateway};
use crate::pki::{self, CaBundle, LeafRequest, Revocation, Usage};
use crate::{Error, Result, crl};

const KIND: &str = "device";
pub const FINALIZER: &str = "fleetward.io/revoke-credentials";

pub const HMAC_KEY: &str = "hmac.key";
pub const PREVIOUS_HMAC_KEY: &str = "hmac.previous.key";
pub const ANN_VERSION: &str = "fleetward.io/secret-version";
pub const ANN_ROTATION: &str = "fleetward.io/rotation";
pub const ANN_ENABLED: &str = "fleetward.io/enabled";
pub const ANN_PREVIOUS_EXPIRES: &str = "fleetward.io/previous-hmac-expires-at";
pub const ANN_PREVIOUS_SERIAL: &str = "fleetward.io/previous-serial";

pub fn secret_name(device: &str) -> String {
    format!("{device}-credentials")
}

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let devices = Api::<Device>::all(client.clone());
    let controller = Controller::new(devices, watcher::Config::default());
    let store = controller.store();
    controller
        .owns(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default().labels("app.kubernetes.io/managed-by=fleetward-operator,fleetward.io/device"),
        )
        // A Gateway appearing (or its CA changing) wakes the Devices that
        // name it, instead of waiting for their retry timer.
        .watches(Api::<Gateway>::all(client), watcher::Config::default(), move |gw| {
            let ns = gw.namespace();
            let name = gw.name_any();
            store
                .state()
                .into_iter()
                .filter(move |d| d.namespace() == ns && d.spec.gateway_ref == name)
                .map(|d| ObjectRef::from_obj(d.as_ref()))
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "device reconcile loop");
            }
        })
        .await;
}

fn error_policy(dev: Arc<Device>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(device = %dev.name_any(), namespace = ?dev.namespace(), %error, "device reconcile failed");
    ctx.metrics.failure(KIND, error);
    Action::requeue(Duration::from_secs(10))
}

/// One reconciliation of a Device (public so tests can run it directly).
pub async fn reconcile(dev: Arc<Device>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start(KIND);
    let ns = dev.namespace().ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let api: Api<Device> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, dev, |event| async {
        match event {
            Finalizer::Apply(dev) => apply_device(&dev, &ctx).await,
            Finalizer::Cleanup(dev) => cleanup(&dev, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// What the operator issued to a device, read from / written to its Secret.
#[derive(Clone, PartialEq)]
struct Credentials {
    cert_pem: String,
    key_pem: String,
    ca_pem: String,
    hmac: String,
    previous_hmac: Option<String>,
    previous_expires: Option<Timestamp>,
    previous_serial: Option<String>,
    version: i64,
    rotation: i64,
    enabled: bool,
}

impl Credentials {
    fn from_secret(secret: &Secret) -> Option<Self> {
        let ann = secret.annotations();
        let previous_hmac = secret_str(secret, PREVIOUS_HMAC_KEY);
        Some(Self {
            cert_pem: secret_str(secret, "tls.crt")?,
            key_pem: secret_str(secret, "tls.key")?,
            ca_pem: secret_str(secret, "ca.crt")?,
            hmac: secret_str(secret, HMAC_KEY)?,
            previous_expires: previous_hmac
                .as_ref()
                .and_then(|_| ann.get(ANN_PREVIOUS_EXPIRES)?.parse().ok()),
            previous_serial: ann.get(ANN_PREVIOUS_SERIAL).cloned(),
            previous_hmac,
            version: ann.get(ANN_VERSION).and_then(|v| v.parse().ok()).unwrap_or(0),
            rotation: ann.get(ANN_ROTATION).and_then(|v| v.parse().ok()).unwrap_or(0),
            enabled: ann.get(ANN_ENABLED).map(|v| v != "false").unwrap_or(true),
        })
    }

    fn to_secret(&self, dev: &Device) -> Result<Secret> {
        let name = dev.name_any();
        let mut annotations = BTreeMap::from([
            (ANN_VERSION.to_string(), self.version.to_string()),
            (ANN_ROTATION.to_string(), self.rotation.to_string()),
            (ANN_ENABLED.to_string(), self.enabled.to_string()),
        ]);
        let mut extra = vec![(HMAC_KEY.to_string(), self.hmac.clone())];
        if let (Some(prev), Some(expires)) = (&self.previous_hmac, self.previous_expires) {
            extra.push((PREVIOUS_HMAC_KEY.to_string(), prev.clone()));
            annotations.insert(ANN_PREVIOUS_EXPIRES.into(), expires.to_string());
        }
        if let Some(serial) = &self.previous_serial {
            annotations.insert(ANN_PREVIOUS_SERIAL.into(), serial.clone());
        }
        let meta = ObjectMeta {
            name: Some(secret_name(&name)),
            labels: Some(labels(&[
                ("fleetward.io/device", &name),
                ("fleetward.io/gateway", &dev.spec.gateway_ref),
                ("fleetward.io/category", dev.spec.category.as_str()),
            ])),
            annotations: Some(annotations),
            owner_references: Some(vec![owner_ref(dev)?]),
            ..Default::default()
        };
        tls_secret(meta, &self.cert_pem, &self.key_pem, Some(&self.ca_pem), extra)
    }
}

/// True when `existing` already holds everything `desired` says, so no
/// write is needed (a second reconcile changes nothing).
fn secret_up_to_date(existing: &Secret, desired: &Secret) -> bool {
    let subset = |want: &Option<BTreeMap<String, String>>, have: &Option<BTreeMap<String, String>>| {
        want.iter()
            .flatten()
            .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    let stale_keys = existing.data.as_ref().map(|d| d.len()) != desired.data.as_ref().map(|d| d.len());
    existing.data == desired.data
        && !stale_keys
        && existing.type_ == desired.type_
        && subset(&desired.metadata.labels, &existing.metadata.labels)
        && subset(&desired.metadata.annotations, &existing.metadata.annotations)
        && existing.metadata.owner_references == desired.metadata.owner_references
}

/// Writes the credentials Secret unless it already holds exactly `creds`.
async fn store(secrets: &Api<Secret>, existing: Option<&Secret>, dev: &Device, creds: &Credentials) -> Result<()> {
    let desired = creds.to_secret(dev)?;
    if !existing.is_some_and(|e| secret_up_to_date(e, &desired)) {
        apply(secrets, &secret_name(&dev.name_any()), &desired).await?;
    }
    Ok(())
}

struct Gw {
    ca: CaBundle,
    crl: crl::CrlState,
}

/// Finds the device's gateway, its CA and CRL. `Err(Ok(action))` carries
/// the not-ready status already written.
async fn gateway_for(dev: &Device, ctx: &Context, status: &mut DeviceStatus) -> Result<Result<Gw, Action>> {
    let ns = dev.namespace().unwrap_or_default();
    let gw_name = &dev.spec.gateway_ref;
    let gateways: Api<Gateway> = Api::namespaced(ctx.client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let (reason, message, retry) = if gateways.get_opt(gw_name).await?.is_none() {
        (
            "GatewayNotFound",
            format!("Gateway {gw_name:?} does not exist in namespace {ns:?}"),
            30,
        )
    } else {
        match (load_ca(&secrets, gw_name).await?, crl::load(&cms, gw_name).await?) {
            (Some(ca), Some(crl)) => return Ok(Ok(Gw { ca, crl })),
            _ => (
                "GatewayNotReady",
                format!("Gateway {gw_name:?} has no CA or CRL yet"),
                5,
            ),
        }
    };
    let announce = !status.conditions.iter().any(|c| c.type_ == READY && c.reason == reason);
    conditions::set(
        &mut status.conditions,
        READY,
        false,
        reason,
        message.clone(),
        dev.metadata.generation,
    );
    status.observed_generation = dev.metadata.generation;
    write_status(dev, ctx, status).await?;
    ctx.metrics.device_ready(&ns, &dev.name_any(), false);
    if announce {
        ctx.event(dev, true, reason, "Issue", message).await;
    }
    Ok(Err(Action::requeue(Duration::from_secs(retry))))
}

async fn apply_device(dev: &Device, ctx: &Context) -> Result<Action> {
    let ns = dev.namespace().ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let name = dev.name_any();
    let generation = dev.metadata.generation;
    let mut status = dev.status.clone().unwrap_or_default();
    status.secret_name = Some(secret_name(&name));

    let gw = match gateway_for(dev, ctx, &mut status).await? {
        Ok(gw) => gw,
        Err(action) => return Ok(action),
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = secrets.get_opt(&secret_name(&name)).await?;
    let current = existing.as_ref().and_then(Credentials::from_secret);
    let now = Timestamp::now();
    let mut revoke: Vec<Revocation> = Vec::new();
    let mut events: Vec<(&str, String)> = Vec::new();
    let revocation = |serial: &str, reason: &str| Revocation {
        serial: serial.into(),
        revoked_at: now.to_string(),
        subject: name.clone(),
        reason: reason.into(),
    };

    if !dev.spec.enabled {
        let mut note = "disabled; no certificate was issued".to_string();
        if let Some(mut creds) = current {
            let serial = pki::inspect(&creds.cert_pem)?.serial;
            for s in std::iter::once(serial.clone()).chain(creds.previous_serial.clone()) {
                if !gw.crl.contains(&s) {
                    revoke.push(revocation(&s, "cessationOfOperation"));
                }
            }
            note = format!("disabled; certificate {serial} is revoked");
            creds.enabled = false;
            // The gateway reads this flag to refuse the device's messages.
            store(&secrets, existing.as_ref(), dev, &creds).await?;
        }
        if !revoke.is_empty() {
            let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
            crl::revoke(&cms, &dev.spec.gateway_ref, &gw.ca, &revoke).await?;
            ctx.event(dev, false, "Revoked", "Revoke", note.clone()).await;
        }
        conditions::set(&mut status.conditions, READY, false, "Disabled", note, generation);
        status.observed_generation = generation;
        write_status(dev, ctx, &status).await?;
        ctx.metrics.device_ready(&ns, &name, false);
        return Ok(Action::requeue(Duration::from_secs(6 * 3600)));
    }

    let issue = |reason: &str| -> Result<pki::Issued> {
        tracing::info!(device = %name, namespace = %ns, reason, "issuing device certificate");
        Ok(gw.ca.issue(&LeafRequest {
            common_name: &name,
            dns_names: &[],
            ip_addresses: &[],
            usage: Usage::Client,
            validity_days: dev.spec.certificate.validity_days,
        })?)
    };

    let mut creds = match current.clone() {
        None => {
            let issued = issue("new device")?;
            events.push(("Issued", format!("issued certificate {}", issued.info.serial)));
            Credentials {
                cert_pem: issued.cert_pem,
                key_pem: issued.key_pem,
                ca_pem: gw.ca.cert_pem.clone(),
                hmac: pki::random_secret_hex(),
                previous_hmac: None,
                previous_expires: None,
                previous_serial: None,
                version: existing
                    .as_ref()
                    .and_then(|s| s.annotations().get(ANN_VERSION)?.parse().ok())
                    .unwrap_or(0),
                rotation: dev.spec.rotation,
                enabled: true,
            }
        }
        Some(mut c) => {
            let serial = pki::inspect(&c.cert_pem).map(|i| i.serial).unwrap_or_default();
            if c.rotation != dev.spec.rotation {
                // Rotation: new certificate and HMAC key; the old key stays
                // valid for the grace period, then the old cert is revoked.
                let issued = issue("rotation requested")?;
                if let Some(older) = c.previous_serial.take() {
                    revoke.push(revocation(&older, "superseded"));
                }
                let grace = SignedDuration::from_secs(dev.spec.hmac_grace_period_seconds);
                c.previous_hmac = Some(std::mem::replace(&mut c.hmac, pki::random_secret_hex()));
                c.previous_expires = Some(now + grace);
                c.previous_serial = Some(serial.clone());
                c.cert_pem = issued.cert_pem;
                c.key_pem = issued.key_pem;
                c.rotation = dev.spec.rotation;
                events.push((
                    "Rotated",
                    format!(
                        "rotated credentials: certificate {} replaces {serial}; previous HMAC key valid until {}",
                        issued.info.serial,
                        now + grace
                    ),
                ));
            } else {
                let reason = if gw.crl.contains(&serial) {
                    Some("certificate was revoked")
                } else {
                    pki::reissue_reason(
                        Some(&c.cert_pem),
                        &gw.ca.cert_pem,
                        &name,
                        &[],
                        dev.spec.certificate.renew_before_days,
                        now,
                    )
                    .map(|r| r.as_str())
                };
                if let Some(reason) = reason {
                    let issued = issue(reason)?;
                    events.push((
                        "Renewed",
                        format!("issued certificate {} ({reason})", issued.info.serial),
                    ));
                    c.cert_pem = issued.cert_pem;
                    c.key_pem = issued.key_pem;
                }
            }
            if c.previous_expires.is_some_and(|t| t <= now) {
                c.previous_hmac = None;
                c.previous_expires = None;
                if let Some(old) = c.previous_serial.take() {
                    events.push((
                        "GraceEnded",
                        format!("previous HMAC key retired; certificate {old} revoked"),
                    ));
                    revoke.push(revocation(&old, "superseded"));
                }
            }
            c.ca_pem = gw.ca.cert_pem.clone();
            c.enabled = true;
            c
        }
    };
    if current.as_ref() != Some(&creds) {
        creds.version += 1;
    }

    store(&secrets, existing.as_ref(), dev, &creds).await?;
    // Revoke only after the replacement is stored: a crash in between
    // leaves a valid device, never one without usable credentials.
    if !revoke.is_empty() {
        let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
        crl::revoke(&cms, &dev.spec.gateway_ref, &gw.ca, &revoke).await?;
    }

    let info = pki::inspect(&creds.cert_pem)?;
    let renewal = pki::renewal_time(&info, dev.spec.certificate.renew_before_days);
    status.serial = Some(info.serial.clone());
    status.fingerprint = Some(info.fingerprint.clone());
    status.not_before = Some(Time(info.not_before));
    status.not_after = Some(Time(info.not_after));
    status.renewal_time = Some(Time(renewal));
    status.secret_version = Some(creds.version);
    status.observed_rotation = Some(creds.rotation);
    status.previous_key_expires_at = creds.previous_expires.map(Time);
    status.observed_generation = generation;
    conditions::set(
        &mut status.conditions,
        READY,
        true,
        "Issued",
        format!("certificate {} valid until {}", info.serial, info.not_after),
        generation,
    );
    write_status(dev, ctx, &status).await?;
    ctx.metrics.device_ready(&ns, &name, true);
    ctx.metrics
        .cert_expiry
        .with_label_values(&[&ns, &name, "device"])
        .set(info.not_after.as_second() as f64);
    for (reason, note) in events {
        ctx.event(dev, false, reason, "Issue", note).await;
    }
    let next = creds.previous_expires.map_or(renewal, |t| t.min(renewal));
    Ok(requeue_at(next))
}

/// Deletion: revoke what the device held, then remove its Secret and let
/// the finalizer go.
async fn cleanup(dev: &Device, ctx: &Context) -> Result<Action> {
    let ns = dev.namespace().ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let name = dev.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let gw_name = &dev.spec.gateway_ref;
    if let Some(creds) = secrets
        .get_opt(&secret_name(&name))
        .await?
        .as_ref()
        .and_then(Credentials::from_secret)
    {
        // Without the gateway's CA there is nothing that trusts the
        // certificate any more, so there is nothing to revoke.
        if let (Some(ca), Some(_)) = (load_ca(&secrets, gw_name).await?, crl::load(&cms, gw_name).await?) {
            let now = Timestamp::now().to_string();
            let serial = pki::inspect(&creds.cert_pem)?.serial;
            let entries: Vec<Revocation> = std::iter::once(serial.clone())
                .chain(creds.previous_serial)
                .map(|s| Revocation {
                    serial: s,
                    revoked_at: now.clone(),
                    subject: name.clone(),
                    reason: "cessationOfOperation".into(),
                })
                .collect();
            crl::revoke(&cms, gw_name, &ca, &entries).await?;
            ctx.event(
                dev,
                false,
                "Revoked",
                "Delete",
                format!("device deleted; certificate {serial} revoked"),
            )
            .await;
        }
        match secrets.delete(&secret_name(&name), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    ctx.metrics.forget_device(&ns, &name);
    Ok(Action::await_change())
}

async fn write_status(dev: &Device, ctx: &Context, status: &DeviceStatus) -> Result<()> {
    if dev.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<Device> = Api::namespaced(ctx.client.clone(), &dev.namespace().unwrap_or_default());
    apply_status(&api, dev, status).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(data: &[(&str, &str)], ann: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                annotations: Some(ann.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn incomplete_secret_is_not_credentials() {
        let s = secret(&[("tls.crt", "c"), ("tls.key", "k"), ("ca.crt", "a")], &[]);
        assert!(Credentials::from_secret(&s).is_none());
    }

    #[test]
    fn previous_key_needs_its_expiry() {
        let s = secret(
            &[
                ("tls.crt", "c"),
                ("tls.key", "k"),
                ("ca.crt", "a"),
                (HMAC_KEY, "h"),
                (PREVIOUS_HMAC_KEY, "p"),
            ],
            &[
                (ANN_VERSION, "3"),
                (ANN_ROTATION, "2"),
                (ANN_PREVIOUS_EXPIRES, "2030-01-01T00:00:00Z"),
            ],
        );
        let c = Credentials::from_secret(&s).unwrap();
        assert_eq!(c.version, 3);
        assert_eq!(c.rotation, 2);
        assert_eq!(c.previous_hmac.as_deref(), Some("p"));
        assert!(c.previous_expires.is_some());
        assert!(c.enabled);
    }
}
