//! Device reconciler: a device's credentials (certificate signed by its
//! Gateway's CA + HMAC secret), issued, renewed, rotated and revoked. In
//! three parts:
//!
//! 1. **observe** — the Gateway, its CA and CRL, and the device's
//!    credentials Secret, from the shared stores (no GETs; see
//!    `controllers::stores`);
//! 2. **plan** (`plan.rs`) — every credential decision, a pure function of
//!    what was observed, the spec and `now`, unit-tested transition by
//!    transition;
//! 3. **apply** — the finalizer, revocations (first, so a disabled device
//!    is cut off before anything else is written; a revoked serial is
//!    never one the new credentials keep, so a crash before they are
//!    stored leaves a device with valid credentials, never without any),
//!    the credentials Secret, its gateway's key entry, status, events and
//!    metrics.
//!
//! What wakes a Device: its creation, a spec change or its deletion (not its
//! own status or finalizer writes), a change to its Secret made by someone
//! else (not the operator's own writes), its keys shard losing its entry,
//! and its Gateway's CA or readiness changing. One reconcile per Device in
//! the common case.
//!
//! The Secret `<device>-credentials` (its layout: `fleetward_credentials`)
//! is the record of what was issued; the Device status mirrors it.

pub mod keys;
pub mod plan;

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use fleetward_credentials::{ANN_VERSION, Credentials, LABEL_DEVICE, LABEL_DEVICE_KEYS, keys_secret_name, keys_shard};
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Api, Resource, ResourceExt};

use self::plan::{GatewayView, Observed, RealMint};
use super::applier::{apply, create_or_apply, delete_if_owned};
use super::policy;
use super::stores::SecretChange;
use crate::aws_iot;
use crate::context::Context;
use crate::crd::device::DeviceAwsIot;
use crate::crd::gateway::{AwsIotSpec, Provider};
use crate::crd::{Device, DeviceStatus, Gateway};
use crate::crl::CrlState;
use crate::ownership::{labels, owner_ref};
use crate::pki::{CaBundle, Revocation};
use crate::{Error, Result};

const KIND: &str = "device";
pub const FINALIZER: &str = "fleetward.io/revoke-credentials";

pub use fleetward_credentials::secret_name;

/// Devices reconciled at once. Each reconcile is a few milliseconds of
/// signing plus a few API writes, so the API server, not the CPU, sets the
/// pace; most of a reconcile's time is spent waiting for a batched keys
/// shard or CRL write, so many run at once (each is a small future).
pub const CONCURRENCY: u16 = 256;

/// A Device needs a new plan when its spec changes (generation) or it is
/// being deleted; its own status and finalizer writes do not count.
fn spec_or_deletion(dev: &Device) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    predicates::generation(dev).hash(&mut h);
    dev.meta().deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// What the devices of a Gateway care about: whether it is there, its CA,
/// and whether it is Ready (its CA and CRL exist).
fn gateway_readiness(gw: &Gateway) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    gw.meta().uid.hash(&mut h);
    let status = gw.status.as_ref();
    status.and_then(|s| s.ca_fingerprint.clone()).hash(&mut h);
    status
        .map(|s| crate::conditions::is_true(&s.conditions, crate::conditions::READY))
        .hash(&mut h);
    Some(h.finish())
}

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let (reader, writer) = reflector::store();
    let metrics = ctx.metrics.clone();
    let devices = watcher(Api::<Device>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(super::stores::slim)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(spec_or_deletion, Default::default())
        .inspect_ok(move |_| metrics.woken(KIND, "spec", 1));
    let gateways = watcher(Api::<Gateway>::all(client), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .predicate_filter(gateway_readiness, Default::default());
    // Secrets, from the operator's one Secrets watch (see `stores`).
    let (store, mapper) = (reader.clone(), ctx.clone());
    let secrets = ctx.stores.secret_changes().flat_map(move |change| {
        let (cause, devices) = woken_by(&change, &mapper, &store);
        mapper.metrics.woken(KIND, cause, devices.len());
        futures::stream::iter(devices)
    });
    let by_gateway = reader.clone();
    let gateway_metrics = ctx.metrics.clone();
    Controller::for_stream(devices, reader)
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .reconcile_on(secrets)
        // A Gateway appearing, getting its CA or a new one: its devices.
        .watches_stream(gateways, move |gw| {
            let (ns, name) = (gw.namespace(), gw.name_any());
            let devices: Vec<_> = by_gateway
                .state()
                .into_iter()
                .filter(move |d| d.namespace() == ns && d.spec.gateway_ref == name)
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect();
            gateway_metrics.woken(KIND, "gateway", devices.len());
            devices
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

/// The Devices a Secret change concerns:
/// - someone else changed or deleted a device's credentials Secret: that
///   device repairs it (the operator's own writes and deletions carry no
///   news);
/// - a keys shard lost entries (deleted and recreated empty, or edited by
///   someone): the devices whose entry is missing, and not merely still
///   being written, write it again.
fn woken_by(
    change: &SecretChange,
    ctx: &Context,
    devices: &reflector::Store<Device>,
) -> (&'static str, Vec<ObjectRef<Device>>) {
    let s = change.secret();
    let labels = s.labels();
    let Some(ns) = s.namespace() else {
        return ("secret", vec![]);
    };
    if labels.contains_key(LABEL_DEVICE) {
        let news = match change {
            SecretChange::Applied(s) => !ctx.stores.is_own_write(s),
            SecretChange::Deleted(s) => !ctx.stores.is_own_delete(s),
        };
        let owner = s.owner_references().iter().find(|o| o.kind == "Device");
        return match owner {
            Some(o) if news => ("secret", vec![ObjectRef::new(&o.name).within(&ns)]),
            _ => ("secret", vec![]),
        };
    }
    let (Some(gateway), SecretChange::Applied(shard)) = (labels.get(LABEL_DEVICE_KEYS), change) else {
        return ("secret", vec![]);
    };
    if ctx.stores.is_own_write(shard) {
        return ("keys-shard", vec![]);
    }
    let name = shard.name_any();
    let entries = shard.data.as_ref();
    let woken = devices
        .state()
        .into_iter()
        .filter(|d| d.namespace().as_deref() == Some(ns.as_str()) && d.spec.gateway_ref == *gateway)
        .filter(|d| {
            let device = d.name_any();
            keys_secret_name(gateway, keys_shard(&device)) == name
                && !entries.is_some_and(|m| m.contains_key(&device))
                && !ctx.keys.pending(&ns, &name, &device)
                && ctx.stores.secret(&ns, &secret_name(&device)).is_some()
        })
        .map(|d| ObjectRef::from_obj(d.as_ref()))
        .collect();
    ("keys-shard", woken)
}

fn error_policy(dev: Arc<Device>, error: &Error, ctx: Arc<Context>) -> Action {
    policy::on_error(dev, error, ctx, KIND)
}

/// One reconciliation of a Device (public so tests can run it directly).
#[tracing::instrument(skip_all, fields(device = %dev.name_any(), namespace = dev.namespace().as_deref().unwrap_or("")))]
pub async fn reconcile(dev: Arc<Device>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start(KIND);
    let result = reconcile_device(&dev, &ctx).await;
    policy::finished(&ctx, dev.as_ref(), result)
}

async fn reconcile_device(dev: &Device, ctx: &Context) -> Result<Action> {
    let ns = dev.namespace().ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let api: Api<Device> = Api::namespaced(ctx.client.clone(), &ns);
    let has_finalizer = dev.finalizers().iter().any(|f| f == FINALIZER);
    if dev.meta().deletion_timestamp.is_some() {
        if has_finalizer {
            cleanup(dev, ctx, &ns).await?;
            policy::set_finalizer(&api, dev, FINALIZER, false).await?;
        }
        return Ok(Action::await_change());
    }
    // The finalizer first (so a deletion cannot miss the revocation), then
    // the work, in the same reconcile.
    if !has_finalizer {
        policy::set_finalizer(&api, dev, FINALIZER, true).await?;
    }
    let observed = observe(dev, ctx, &ns);
    let plan = plan::plan(dev, observed.view(), Timestamp::now(), &mut RealMint)?;
    apply_plan(dev, ctx, &ns, plan, &observed).await
}

/// What observe found, owned, for `plan` to borrow.
struct Seen {
    gateway_exists: bool,
    ca: Option<CaBundle>,
    crl: Option<Arc<CrlState>>,
    current: Option<Credentials>,
    unreadable_version: Option<i64>,
}

impl Seen {
    fn view(&self) -> Observed<'_> {
        let gateway = match (self.gateway_exists, &self.ca, &self.crl) {
            (false, _, _) => GatewayView::Missing,
            (true, Some(ca), Some(crl)) => GatewayView::Ready { ca, crl: crl.as_ref() },
            _ => GatewayView::NotReady,
        };
        Observed {
            gateway,
            current: self.current.clone(),
            unreadable_version: self.unreadable_version,
        }
    }
}

fn observe(dev: &Device, ctx: &Context, ns: &str) -> Seen {
    let gw = &dev.spec.gateway_ref;
    let stores = &ctx.stores;
    let ca = stores
        .secret(ns, &Gateway::ca_secret_name(gw))
        .and_then(|s| super::gateway::ca_from_secret(&s).ok());
    let crl = stores.crl(ns, gw).and_then(Result::ok);
    let secret = stores.secret(ns, &secret_name(&dev.name_any()));
    let (current, unreadable_version) = match secret.as_deref().map(Credentials::from_secret) {
        None => (None, None),
        Some(Ok(c)) => (Some(c), None),
        Some(Err(why)) => {
            tracing::warn!(reason = %why, "credentials Secret is unreadable; new credentials will replace it");
            let version = secret
                .as_ref()
                .and_then(|s| s.annotations().get(ANN_VERSION)?.parse().ok());
            (None, Some(version.unwrap_or(0)))
        }
    };
    Seen {
        gateway_exists: stores.gateway(ns, gw).is_some(),
        ca,
        crl,
        current,
        unreadable_version,
    }
}

async fn apply_plan(dev: &Device, ctx: &Context, ns: &str, mut plan: plan::Plan, observed: &Seen) -> Result<Action> {
    let name = dev.name_any();
    let ca = observed.ca.as_ref();
    // What the plan is compared with: the gateway's `lastSeen` and `online`
    // are not the operator's to write.
    let current = dev.status.as_ref().map(DeviceStatus::operator_owned);
    // Revocations first: a disabled device is cut off before anything else
    // is written. Every serial revoked is one the new credentials drop (or
    // the CRL lost), so a crash before they are stored revokes nothing in
    // use, and the next reconcile plans the same writes again.
    if !plan.revoke.is_empty() {
        let ca = ca.ok_or(Error::MissingObjectKey("gateway CA for a revocation"))?;
        ctx.crl
            .revoke(ns, &dev.spec.gateway_ref, ca, std::mem::take(&mut plan.revoke))
            .await?;
    }
    if let Some(creds) = &plan.store {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
        let secret = creds.to_secret(labels(&[]), Some(owner_ref(dev)?));
        ctx.stores.writing_secret(&secret, ns);
        let known = ctx.stores.secret(ns, &secret_name(&name));
        // A new device's Secret is created (one request, no read first);
        // every later write carries the same fields and more.
        let written = match known.as_deref() {
            Some(known) => apply(&secrets, &secret_name(&name), &secret, Some(known)).await?,
            None => create_or_apply(&secrets, &secret_name(&name), &secret).await?,
        };
        ctx.stores.wrote_secret(written);
    }
    // The gateway's copy of what it needs, once the device's own Secret
    // holds it (so a device never sees a key its gateway does not know
    // ... nor the other way round for longer than this reconcile).
    if let Some(creds) = plan.store.as_ref().or(observed.current.as_ref()) {
        ctx.keys.project(dev, ns, Some(creds)).await?;
    }
    // With AWS IoT Core as the broker: the thing, certificate and policy
    // follow the credentials just stored (or revoked).
    let creds = plan.store.as_ref().or(observed.current.as_ref());
    if let (Some(aws), Some(creds), Some(ca)) = (aws_iot_spec(ctx, ns, dev), creds, ca) {
        let client = ctx.iot.get(&aws).await;
        match iot_sync(ctx, &client, dev, ns, creds, ca).await {
            Ok(iot) => {
                if dev.spec.enabled && iot.certificate_status == "REVOKED" {
                    let msg = format!(
                        "certificate {} was revoked in AWS IoT Core outside the operator; bump spec.rotation for a new one",
                        iot.certificate_id
                    );
                    not_ready(&mut plan, dev, "AwsIotCertificateRevoked", msg);
                }
                plan.status.aws_iot = Some(iot);
            }
            Err(e) => {
                not_ready(&mut plan, dev, "AwsIotFailed", e.to_string());
                policy::write_status(ctx, dev, current.as_ref(), &plan.status).await?;
                ctx.metrics.device_ready(ns, &name, false);
                return Err(e);
            }
        }
    }
    policy::write_status(ctx, dev, current.as_ref(), &plan.status).await?;
    ctx.metrics.device_ready(ns, &name, plan.ready);
    if let Some(not_after) = plan.not_after {
        ctx.metrics
            .cert_expiry
            .with_label_values(&[ns, &name, "device"])
            .set(not_after.as_second() as f64);
    }
    for ev in plan.events {
        ctx.event(dev, ev.warning, ev.reason, ev.action, ev.note).await;
    }
    Ok(Action::requeue(plan.requeue))
}

/// The AWS IoT Core settings of the device's Gateway, when it uses them.
fn aws_iot_spec(ctx: &Context, ns: &str, dev: &Device) -> Option<AwsIotSpec> {
    let gw = ctx.stores.gateway(ns, &dev.spec.gateway_ref)?;
    (gw.spec.provider == Provider::AwsIot)
        .then(|| gw.spec.aws_iot.clone())
        .flatten()
}

/// The account's ARN base, from the CA the Gateway registered.
fn gateway_arn_base(ctx: &Context, ns: &str, gateway: &str) -> Option<aws_iot::ArnBase> {
    let gw = ctx.stores.gateway(ns, gateway)?;
    let registered = gw.status.as_ref()?.aws_iot.as_ref()?;
    aws_iot::ArnBase::parse(&registered.ca_certificate_arn)
}

async fn iot_sync(
    ctx: &Context,
    client: &aws_sdk_iot::Client,
    dev: &Device,
    ns: &str,
    creds: &Credentials,
    ca: &CaBundle,
) -> Result<DeviceAwsIot> {
    let name = dev.name_any();
    let serial = crate::pki::inspect(&creds.cert_pem)?.serial;
    let gateway = &dev.spec.gateway_ref;
    let base = gateway_arn_base(ctx, ns, gateway)
        .ok_or_else(|| Error::NotYet(format!("Gateway {gateway}'s CA registered in AWS IoT Core")))?;
    let want = aws_iot::device::Desired {
        thing: aws_iot::device::thing_name(ns, &name),
        attributes: [
            ("category".to_string(), creds.category.clone()),
            ("namespace".to_string(), ns.to_string()),
            ("gateway".to_string(), dev.spec.gateway_ref.clone()),
        ]
        .into(),
        cert_pem: &creds.cert_pem,
        serial: &serial,
        keep_serial: creds.previous_serial.as_deref(),
        ca_pem: &ca.cert_pem,
        device: &name,
        enabled: dev.spec.enabled && creds.enabled,
        base,
    };
    aws_iot::device::sync(client, &want).await
}

/// Ready=False with `reason`, an event when the reason is new.
fn not_ready(plan: &mut plan::Plan, dev: &Device, reason: &'static str, message: String) {
    let (conditions, events) = (&mut plan.status.conditions, &mut plan.events);
    super::events::not_ready(
        conditions,
        events,
        (reason, "SyncAwsIot"),
        message,
        dev.meta().generation,
    );
    plan.ready = false;
}

/// Deletion: revoke what the device held, then remove its Secret and let
/// the finalizer go.
async fn cleanup(dev: &Device, ctx: &Context, ns: &str) -> Result<()> {
    let name = dev.name_any();
    let seen = observe(dev, ctx, ns);
    if let Some(creds) = &seen.current {
        // Without the gateway's CA nothing trusts the certificate any more,
        // so there is nothing to revoke.
        if let Some(ca) = &seen.ca {
            let now = Timestamp::now().to_string();
            let serial = crate::pki::inspect(&creds.cert_pem)?.serial;
            let entries: Vec<Revocation> = std::iter::once(serial.clone())
                .chain(creds.previous_serial.clone())
                .map(|s| Revocation {
                    serial: s,
                    revoked_at: now.clone(),
                    subject: name.clone(),
                    reason: "cessationOfOperation".into(),
                })
                .collect();
            // What the status remembers goes with the Device: recorded with the CA.
            let history: Vec<Revocation> = dev
                .status
                .iter()
                .flat_map(|s| &s.revoked_certificates)
                .map(|r| r.revocation(&name))
                .collect();
            match &seen.crl {
                Some(_) => {
                    ctx.crl
                        .revoke_deleted(ns, &dev.spec.gateway_ref, ca, entries, history)
                        .await?;
                }
                // The CRL is being rebuilt: the Gateway takes these from the record.
                None => {
                    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
                    let all = crate::crl::merged(entries, &history);
                    crate::crl::writer::record(&secrets, &dev.spec.gateway_ref, &all).await?;
                }
            }
            ctx.event(
                dev,
                false,
                "Revoked",
                "Delete",
                format!("device deleted; certificate {serial} revoked"),
            )
            .await;
        }
    }
    if let Some(aws) = aws_iot_spec(ctx, ns, dev) {
        let client = ctx.iot.get(&aws).await;
        aws_iot::device::remove(&client, &aws_iot::device::thing_name(ns, &name)).await?;
    }
    ctx.keys.project(dev, ns, None).await?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    ctx.stores.deleting_secret(ns, &secret_name(&name));
    // Only the device's own Secret (the store's copy spares a read at mass
    // deletion): one someone else made under the name stays.
    let known = ctx.stores.secret(ns, &secret_name(&name));
    delete_if_owned(&secrets, &secret_name(&name), &owner_ref(dev)?, known.as_deref()).await?;
    ctx.metrics.forget_device(ns, &name);
    Ok(())
}
