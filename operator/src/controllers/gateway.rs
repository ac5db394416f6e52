//! Gateway reconciler: CA, broker and gateway-client certificates, CRL,
//! Mosquitto configuration, StatefulSet (Mosquitto + gateway) and Service,
//! and with `spec.storage` the telemetry writer.
//!
//! **observe** reads the CA, certificate and command-key Secrets and the
//! CRL from the shared stores (plus one GET of the StatefulSet for its
//! availability); **plan** (`plan.rs`) decides every certificate, the CRL
//! step, the broker configuration and status; **apply** writes them.

use std::sync::Arc;
use std::time::Duration;

use fleetward_credentials::{LABEL_DEVICE_KEYS, keys_secret_names};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};

use self::objects::child_meta;
use self::plan::{CaView, CrlStep};
use super::applier::create_once;
use super::desired::Write;
use super::events::PlannedEvent;
use super::kafka_client;
use super::stores::SecretChange;
use super::{carry_out, policy, secret_refs};
use super::{secret_str, tls_secret};
use crate::context::Context;
use crate::crd::gateway::Provider;
use crate::crd::{Device, Gateway};
use crate::ownership::{owner_ref, refuse_unless_owned};
use crate::pki::{CaBundle, Revocation};
use crate::{Error, Result, aws_iot, crl};

mod objects;
pub mod plan;
#[cfg(test)]
mod plan_tests;
pub mod telemetry;
mod workload;

const KIND: &str = "gateway";
pub const AWS_FINALIZER: &str = "fleetward.io/aws-iot";

/// The CA held by a gateway's CA Secret.
pub fn ca_from_secret(secret: &Secret) -> Result<CaBundle> {
    let name = secret.name_any();
    let get = |key: &str| {
        secret_str(secret, key).ok_or_else(|| Error::SecretMissingKey {
            name: name.clone(),
            key: key.into(),
        })
    };
    Ok(CaBundle {
        cert_pem: get("tls.crt")?,
        key_pem: get("tls.key")?,
    })
}

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let wc = watcher::Config::default().labels("app.kubernetes.io/managed-by=fleetward-operator");
    // Secrets come from the operator's one Secrets watch (see `stores`).
    let mut shards = ShardShapes::default();
    let secrets = ctx
        .stores
        .secret_changes()
        .filter_map(move |change| std::future::ready(shards.gateway_woken_by(&change)));
    // ConfigMaps (Mosquitto's, the CRL) come from the stores' watch too, so
    // a reconcile they wake reads the store as the change left it: a
    // deleted CRL is seen missing and rebuilt at once.
    let configmaps = ctx
        .stores
        .configmap_changes()
        .filter_map(|cm| std::future::ready(controlling_gateway(cm.as_ref())));
    Controller::new(Api::<Gateway>::all(client.clone()), watcher::Config::default())
        .reconcile_on(futures::stream::select(secrets, configmaps))
        .owns(Api::<StatefulSet>::all(client.clone()), wc.clone())
        .owns(Api::<Deployment>::all(client.clone()), wc.clone())
        .owns(Api::<Service>::all(client.clone()), wc.clone())
        .owns(Api::<ServiceAccount>::all(client.clone()), wc.clone())
        .owns(Api::<Role>::all(client.clone()), wc.clone())
        .owns(Api::<RoleBinding>::all(client.clone()), wc.clone())
        .owns(Api::<PersistentVolumeClaim>::all(client.clone()), wc)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "gateway reconcile loop");
            }
        })
        .await;
}

/// The Gateway that controls `obj`, if one does.
fn controlling_gateway<K: Resource<DynamicType = ()>>(obj: &K) -> Option<ObjectRef<Gateway>> {
    let owner = obj
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "Gateway")?;
    Some(ObjectRef::new(&owner.name).within(&obj.namespace()?))
}

/// The shape of each keys shard last seen (uid, labels, owners): a shard
/// wakes its Gateway when it appears, goes, or changes shape, not when its
/// Devices write their entries (thousands of writes under a burst, none of
/// them the Gateway's business).
#[derive(Default)]
struct ShardShapes(std::collections::HashMap<ObjectRef<Secret>, u64>);

impl ShardShapes {
    /// The Gateway a Secret change concerns: its own Secrets (owner
    /// reference) and its telemetry keyring, which has no owner reference
    /// (it outlives the Gateway) and is mapped back by label.
    fn gateway_woken_by(&mut self, change: &SecretChange) -> Option<ObjectRef<Gateway>> {
        use std::hash::{Hash, Hasher};
        let s = change.secret();
        let ns = s.namespace()?;
        if let Some(gateway) = s.labels().get(telemetry::LABEL_TELEMETRY_OF) {
            return Some(ObjectRef::new(gateway).within(&ns));
        }
        let gateway = Some(controlling_gateway(s)?);
        if !s.labels().contains_key(LABEL_DEVICE_KEYS) {
            return gateway;
        }
        let key = ObjectRef::from_obj(s);
        match change {
            SecretChange::Deleted(_) => {
                self.0.remove(&key);
                gateway
            }
            SecretChange::Applied(_) => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (s.uid(), s.labels()).hash(&mut h);
                for o in s.owner_references() {
                    (&o.uid, &o.kind, &o.name, o.controller).hash(&mut h);
                }
                let shape = h.finish();
                (self.0.insert(key, shape) != Some(shape)).then_some(gateway).flatten()
            }
        }
    }
}

fn error_policy(gw: Arc<Gateway>, error: &Error, ctx: Arc<Context>) -> Action {
    policy::on_error(gw, error, ctx, KIND)
}

/// One reconciliation of a Gateway (public so tests can run it directly).
#[tracing::instrument(skip_all, fields(gateway = %gw.name_any(), namespace = gw.namespace().as_deref().unwrap_or("")))]
pub async fn reconcile(gw: Arc<Gateway>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start(KIND);
    let result = reconcile_gateway(&gw, &ctx).await;
    policy::finished(&ctx, gw.as_ref(), result)
}

async fn reconcile_gateway(gw: &Gateway, ctx: &Context) -> Result<Action> {
    let ns = gw.namespace().ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    // With AWS IoT Core, a finalizer: the CA registration goes only after
    // the Devices have removed their things and certificates, which they
    // do through this Gateway's settings.
    let has_finalizer = gw.finalizers().iter().any(|f| f == AWS_FINALIZER);
    let api: Api<Gateway> = Api::namespaced(ctx.client.clone(), &ns);
    if gw.meta().deletion_timestamp.is_some() {
        if has_finalizer {
            // A rare read (a deletion), so one LIST rather than a store.
            let all: Api<Device> = Api::namespaced(ctx.client.clone(), &ns);
            let name = gw.name_any();
            let devices = all
                .list(&Default::default())
                .await?
                .items
                .iter()
                .filter(|d| d.spec.gateway_ref == name)
                .count();
            if devices > 0 {
                tracing::info!(devices, "waiting for the Devices to leave AWS IoT Core");
                return Ok(Action::requeue(Duration::from_secs(2)));
            }
            let registered = gw.status.as_ref().and_then(|s| s.aws_iot.as_ref());
            if let (Some(aws), Some(reg)) = (gw.spec.aws_iot.as_ref(), registered) {
                let client = ctx.iot.get(aws).await;
                aws_iot::gateway::remove(&client, &reg.ca_certificate_id, reg.client_policy.as_deref()).await?;
            }
            policy::set_finalizer(&api, gw, AWS_FINALIZER, false).await?;
        }
        return Ok(Action::await_change());
    }
    if gw.spec.provider == Provider::AwsIot && !has_finalizer {
        policy::set_finalizer(&api, gw, AWS_FINALIZER, true).await?;
    }
    let observed = observe(gw, ctx, &ns).await?;
    let plan = plan::plan(gw, observed, Timestamp::now(), &mut plan::RealMint)?;
    apply_plan(gw, ctx, &ns, plan).await
}

/// The certificate in a leaf Secret, when it holds a certificate, its key
/// and `ca` (a Secret from an earlier CA counts as missing).
fn leaf_cert(secret: Option<Arc<Secret>>, ca: &CaView) -> Option<String> {
    let CaView::Valid(ca) = ca else { return None };
    let s = secret?;
    secret_str(&s, "tls.key")?;
    (secret_str(&s, "ca.crt")? == ca.cert_pem).then(|| secret_str(&s, "tls.crt"))?
}

async fn observe(gw: &Gateway, ctx: &Context, ns: &str) -> Result<plan::Observed> {
    let name = gw.name_any();
    let stores = &ctx.stores;
    let ca = match stores.secret(ns, &Gateway::ca_secret_name(&name)) {
        None => CaView::Missing,
        Some(secret) => match ca_from_secret(&secret) {
            Ok(ca) => match ca.validate() {
                Ok(_) => CaView::Valid(ca),
                Err(e) => CaView::Invalid(e.to_string()),
            },
            Err(Error::SecretMissingKey { key, .. }) => CaView::Invalid(format!("missing {key}")),
            Err(e) => return Err(e),
        },
    };
    let broker_cert = leaf_cert(stores.secret(ns, &Gateway::broker_secret_name(&name)), &ca);
    let client_cert = leaf_cert(stores.secret(ns, &Gateway::client_secret_name(&name)), &ca);
    let crl = stores.crl(ns, &name).transpose()?.map(|c| c.as_ref().clone());
    let had_crl = gw.status.as_ref().and_then(|s| s.crl_number).is_some();
    let revoked_by_devices = match crl {
        None if had_crl => {
            // The Devices' status, and what deleted Devices left with the CA.
            let recorded = match stores.secret(ns, &Gateway::ca_secret_name(&name)) {
                Some(secret) => crate::crl::record_of(&secret)?,
                None => Vec::new(),
            };
            Some(crate::crl::merged(
                devices_revocations(ctx, ns, &name).await?,
                &recorded,
            ))
        }
        _ => None,
    };
    // The StatefulSet is not cached (a handful per cluster): one GET.
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
    let broker_available = sets
        .get_opt(&Gateway::workload_name(&name))
        .await?
        .and_then(|s| s.status?.available_replicas)
        .unwrap_or(0)
        > 0;
    // A Secret the spec names must not be the operator's: the store holds
    // exactly those (by label), so no request is made.
    let mut named = secret_refs::Checked::default();
    for (what, r) in plan::secret_refs(gw) {
        let secret = stores.secret(ns, &r.name);
        secret_refs::judge(what, r, secret.as_deref(), true, &mut named);
    }
    Ok(plan::Observed {
        refused: named.refusal(),
        ca,
        broker_cert,
        client_cert,
        command_key: stores.secret(ns, &Gateway::command_secret_name(&name)).is_some(),
        meter_key: stores.secret(ns, &Gateway::meter_key_secret_name(&name)).is_some(),
        record_key: stores.secret(ns, &Gateway::record_key_secret_name(&name)).is_some(),
        shards_to_write: shards_to_write(gw, ctx, ns)?,
        crl,
        revoked_by_devices,
        last_crl_number: stores.last_crl_number(ns, &name),
        broker_available,
    })
}

/// The devices' keys shards the store lacks, or holds without this
/// Gateway as their controller (the apply then refuses someone else's).
fn shards_to_write(gw: &Gateway, ctx: &Context, ns: &str) -> Result<Vec<String>> {
    let owner = owner_ref(gw)?;
    Ok(keys_secret_names(&gw.name_any())
        .into_iter()
        .filter(|shard| {
            let known = ctx.stores.secret(ns, shard);
            known.is_none_or(|k| refuse_unless_owned(k.as_ref(), &owner).is_err())
        })
        .collect())
}

/// What the Devices of this gateway remember having had revoked (a rare
/// read: only when the CRL was lost, so one LIST rather than a store).
async fn devices_revocations(ctx: &Context, ns: &str, gateway: &str) -> Result<Vec<Revocation>> {
    let devices: Api<Device> = Api::namespaced(ctx.client.clone(), ns);
    let mut entries = Vec::new();
    for dev in devices.list(&Default::default()).await? {
        if dev.spec.gateway_ref != gateway {
            continue;
        }
        let name = dev.name_any();
        let kept = dev.status.iter().flat_map(|s| &s.revoked_certificates);
        entries.extend(kept.map(|r| r.revocation(&name)));
    }
    Ok(entries)
}

async fn apply_plan(gw: &Gateway, ctx: &Context, ns: &str, mut plan: plan::Plan) -> Result<Action> {
    let name = gw.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let Some(ca) = plan.ca.take() else {
        policy::write_status(ctx, gw, gw.status.as_ref(), &plan.status).await?;
        publish(gw, ctx, plan.events).await;
        return Ok(Action::requeue(plan.requeue));
    };
    if plan.create_ca {
        let secret = tls_secret(
            child_meta(gw, Gateway::ca_secret_name(&name))?,
            &ca.cert_pem,
            &ca.key_pem,
            None,
            [],
        )?;
        // Another reconcile (or replica) created the CA first: keep
        // theirs and plan again with it. A Secret someone else made under
        // the name is refused, never used as this Gateway's CA.
        match create_once(&secrets, &Gateway::ca_secret_name(&name), &secret).await? {
            Some(created) => ctx.stores.wrote_secret(created),
            None => return Ok(Action::requeue(Duration::from_secs(1))),
        }
    }
    // The certificates, the generated keys and the keys shards.
    for write in std::mem::take(&mut plan.secrets) {
        carry_out::write_one(ctx, gw, ns, write).await?;
    }
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    if plan.crl != CrlStep::Keep {
        let create = match plan.crl {
            CrlStep::Create => Some((Vec::new(), 1)),
            CrlStep::Rebuild => Some((
                std::mem::take(&mut plan.rebuilt),
                plan.status.crl_number.unwrap_or(1) as u64,
            )),
            CrlStep::Keep | CrlStep::Resign => None,
        };
        let state = crl::writer::write(&cms, gw, &ca, create).await?;
        // What was written wins over the plan's forecast (a revocation
        // may have landed in between).
        plan.status.revoked_certificates = Some(state.entries.len() as i64);
        plan.status.crl_number = Some(state.number as i64);
    }

    if let (Provider::AwsIot, Some(aws)) = (gw.spec.provider, gw.spec.aws_iot.as_ref()) {
        let client = ctx.iot.get(aws).await;
        let known = gw.status.as_ref().and_then(|s| s.aws_iot.as_ref());
        let cert_pem = ctx
            .stores
            .secret(ns, &Gateway::client_secret_name(&name))
            .and_then(|s| secret_str(&s, "tls.crt"))
            .ok_or_else(|| Error::NotYet(format!("Secret {}", Gateway::client_secret_name(&name))))?;
        let client_id = workload::mqtt_client_id(gw);
        let identity = aws_iot::gateway::Workload {
            client_id: &client_id,
            policy: &Gateway::aws_iot_policy_name(ns, &name),
            cert_pem: &cert_pem,
        };
        match aws_iot::gateway::sync(&client, &ca, known, &identity).await {
            Ok(iot) => {
                if let Some(endpoint) = &iot.data_endpoint {
                    plan.status.endpoint = Some(format!("mqtts://{endpoint}:8883"));
                }
                plan.status.aws_iot = Some(iot);
            }
            Err(e) => {
                super::events::not_ready(
                    &mut plan.status.conditions,
                    &mut plan.events,
                    ("AwsIotFailed", "SyncAwsIot"),
                    e.to_string(),
                    gw.metadata.generation,
                );
                policy::write_status(ctx, gw, gw.status.as_ref(), &plan.status).await?;
                publish(gw, ctx, plan.events).await;
                return Err(e);
            }
        }
    }
    // Mosquitto's configuration, the account, the broker's volume claim
    // and the Services, as the plan lists them.
    for write in std::mem::take(&mut plan.workload) {
        carry_out::write_one(ctx, gw, ns, write).await?;
    }
    // The StatefulSet waits for the AWS IoT endpoint; its Kafka client
    // certificate comes first.
    let set = workload::statefulset(
        gw,
        &ctx.config,
        &plan.rollout_hash,
        plan.status.aws_iot.as_ref().and_then(|a| a.data_endpoint.as_deref()),
    )?;
    carry_out::write_one(ctx, gw, ns, Write::kafka_client(set, kafka_client::Role::Gateway)).await?;
    // The telemetry keyring's decisions (create, rotate, refuse an
    // unusable one) are the keyring module's; its key id goes to status.
    let storage = telemetry::apply_storage(gw, ctx, ns).await?;
    telemetry_status(&mut plan, storage, gw.metadata.generation);

    policy::write_status(ctx, gw, gw.status.as_ref(), &plan.status).await?;
    for (what, not_after) in &plan.expiries {
        ctx.metrics
            .cert_expiry
            .with_label_values(&[ns, &name, what])
            .set(not_after.as_second() as f64);
    }
    publish(gw, ctx, plan.events).await;
    Ok(Action::requeue(plan.requeue))
}

/// How soon to look again at an unusable telemetry keyring: one someone
/// deletes (to have a new one made) may not be a Secret the operator
/// watches.
const INVALID_KEYRING_RETRY: Duration = Duration::from_secs(300);

/// The telemetry storage's key id and condition in the status; a warning
/// event when the keyring becomes unusable, not on every reconcile.
fn telemetry_status(plan: &mut plan::Plan, storage: telemetry::Storage, generation: Option<i64>) {
    use telemetry::{CONDITION, Storage};
    let conditions = &mut plan.status.conditions;
    plan.status.telemetry_key_id = None;
    match storage {
        Storage::Off => conditions.retain(|c| c.type_ != CONDITION),
        Storage::On(key_id) => {
            let message = format!("the telemetry writer is deployed; primary key {key_id}");
            crate::conditions::set(conditions, CONDITION, true, "Deployed", message, generation);
            plan.status.telemetry_key_id = Some(key_id);
        }
        Storage::InvalidKeyring(message) => {
            if super::events::is_news(conditions, CONDITION, "InvalidKeyring") {
                plan.events
                    .push(PlannedEvent::warning("InvalidKeyring", "Validate", message.clone()));
            }
            crate::conditions::set(conditions, CONDITION, false, "InvalidKeyring", message, generation);
            plan.requeue = plan.requeue.min(INVALID_KEYRING_RETRY);
        }
    }
}

async fn publish(gw: &Gateway, ctx: &Context, events: Vec<PlannedEvent>) {
    for ev in events {
        ctx.event(gw, ev.warning, ev.reason, ev.action, ev.note).await;
    }
}
