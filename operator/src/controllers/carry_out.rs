//! Carries out a [`Desired`]: its writes in order, with the ownership
//! rules of `applier` (apply never adopts, create-once keeps ours and
//! refuses someone else's, delete only what the reconciled object controls
//! with a uid precondition), then the status (only when it changed), the
//! events, and the requeue. The one place a plan's decisions become
//! requests, for every kind.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use kube::core::NamespaceResourceScope;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::applier::{apply, create_new, create_once, delete_if_owned, replace};
use super::desired::{Desired, Object, ObjectKind, Write};
use super::{kafka_client, policy};
use crate::context::Context;
use crate::ownership::owner_ref;
use crate::{Error, Result};

/// Writes `desired` for `owner`; `current` is the status the caller's copy
/// of `owner` holds (what a status write is compared with).
pub async fn carry_out<K, S>(ctx: &Context, owner: &K, current: Option<&S>, desired: Desired<S>) -> Result<Action>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    let ns = owner.namespace().ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    for write in desired.writes {
        write_one(ctx, owner, &ns, write).await?;
    }
    if let Some(status) = &desired.status {
        policy::write_status(ctx, owner, current, status).await?;
    }
    for ev in desired.events {
        ctx.event(owner, ev.warning, ev.reason, ev.action, ev.note).await;
    }
    Ok(Action::requeue(desired.requeue))
}

/// One write of a plan for `owner`, for reconcilers whose plan is not yet
/// one `Desired` (the Gateway's telemetry storage).
pub async fn write_one<K>(ctx: &Context, owner: &K, ns: &str, write: Write) -> Result<()>
where
    K: Resource<DynamicType = ()>,
{
    let (object, how) = match write {
        Write::Apply(object) => (object, How::Apply),
        Write::CreateOnce(object) => (object, How::CreateOnce),
        Write::CreateNew(object) => (object, How::CreateNew),
        Write::Replace(object) => (object, How::Replace),
        Write::ApplyKafkaClient(mut workload, role) => {
            let name = workload.name();
            let template = match &mut workload {
                Object::Deployment(d) => d.spec.as_mut().map(|s| &mut s.template),
                Object::StatefulSet(s) => s.spec.as_mut().map(|s| &mut s.template),
                _ => None,
            };
            if let Some(template) = template {
                let who = kafka_client::Workload {
                    namespace: ns,
                    name: &name,
                    owner: owner_ref(owner)?,
                    role,
                };
                kafka_client::certify(ctx, &who, template).await?;
            }
            (workload, How::Apply)
        }
        Write::DeleteOwned(kind, name) => return delete_owned(ctx, owner, ns, kind, &name).await,
    };
    match object {
        Object::Secret(o) => {
            // The operator's own Secret write: the answer is shown to the
            // next reconcile before the watch brings it, and when the write
            // sets the content its watch event is no news. A write of the
            // metadata only (a keys shard, whose entries are its Devices')
            // is news to whoever fills it: a shard made again after a
            // deletion wakes its Devices. An apply checks ownership against
            // the store's copy (the store holds the operator's Secrets; one
            // it lacks is read).
            if matches!(how, How::Apply) && (o.data.is_some() || o.string_data.is_some()) {
                ctx.stores.writing_secret(&o, ns);
            }
            let known = ctx.stores.secret(ns, &o.name_any());
            if let Some(written) = write_object(ctx, ns, o, how, known.as_deref()).await? {
                ctx.stores.wrote_secret(written);
            }
        }
        Object::ConfigMap(o) => drop(write_object(ctx, ns, o, how, None).await?),
        Object::ServiceAccount(o) => drop(write_object(ctx, ns, o, how, None).await?),
        Object::Role(o) => drop(write_object(ctx, ns, o, how, None).await?),
        Object::RoleBinding(o) => drop(write_object(ctx, ns, o, how, None).await?),
        Object::Service(o) => drop(write_object(ctx, ns, o, how, None).await?),
        Object::Deployment(o) => drop(write_object(ctx, ns, o, how, None).await?),
        Object::StatefulSet(o) => drop(write_object(ctx, ns, o, how, None).await?),
        Object::PersistentVolumeClaim(o) => drop(write_object(ctx, ns, o, how, None).await?),
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum How {
    Apply,
    CreateOnce,
    CreateNew,
    Replace,
}

/// Writes `object` as `how` says (see `Write`); what was written (`None`:
/// created once before, ours kept). `known` is the object as a store holds
/// it: an apply then checks ownership against it instead of reading first.
async fn write_object<T>(ctx: &Context, ns: &str, object: T, how: How, known: Option<&T>) -> Result<Option<T>>
where
    T: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api = Api::namespaced(ctx.client.clone(), ns);
    let name = object.name_any();
    match how {
        How::Apply => apply(&api, &name, &object, known).await.map(Some),
        How::CreateOnce => create_once(&api, &name, &object).await,
        How::CreateNew => create_new(&api, &name, &object).await.map(Some),
        How::Replace => replace(&api, &name, &object).await.map(Some),
    }
}

async fn delete_owned<K>(ctx: &Context, owner: &K, ns: &str, kind: ObjectKind, name: &str) -> Result<()>
where
    K: Resource<DynamicType = ()>,
{
    let by = owner_ref(owner)?;
    let deleted = match kind {
        ObjectKind::Secret => delete_object::<Secret>(ctx, ns, name, &by).await?,
        ObjectKind::ConfigMap => delete_object::<ConfigMap>(ctx, ns, name, &by).await?,
        ObjectKind::ServiceAccount => delete_object::<ServiceAccount>(ctx, ns, name, &by).await?,
        ObjectKind::Role => delete_object::<Role>(ctx, ns, name, &by).await?,
        ObjectKind::RoleBinding => delete_object::<RoleBinding>(ctx, ns, name, &by).await?,
        ObjectKind::Service => delete_object::<Service>(ctx, ns, name, &by).await?,
        ObjectKind::Deployment => delete_object::<Deployment>(ctx, ns, name, &by).await?,
        ObjectKind::StatefulSet => delete_object::<StatefulSet>(ctx, ns, name, &by).await?,
        ObjectKind::PersistentVolumeClaim => delete_object::<PersistentVolumeClaim>(ctx, ns, name, &by).await?,
    };
    if deleted {
        tracing::info!(?kind, %name, "deleted an object its owner no longer wants");
    }
    Ok(())
}

async fn delete_object<T>(ctx: &Context, ns: &str, name: &str, owner: &OwnerReference) -> Result<bool>
where
    T: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
{
    delete_if_owned(&Api::<T>::namespaced(ctx.client.clone(), ns), name, owner, None).await
}
