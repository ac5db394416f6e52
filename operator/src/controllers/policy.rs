//! What every controller does the same way: what happens after a failed
//! reconcile (one error policy), how status is written (only when it
//! changed) and how a finalizer is set. When an event is worth sending is
//! the plans' (pure) business: `events.rs`.
//!
//! Failures back off per object, exponentially with a cap (`backoff.rs`),
//! so one broken object retries slowly while the others are unaffected;
//! each failure is a Warning event on the object and a metric labelled by
//! error kind. A success resets the object's backoff.

use std::sync::Arc;

use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::applier::apply_status;
use super::backoff;
use crate::context::Context;
use crate::{Error, Result};

/// The error policy of every controller.
pub fn on_error<K>(obj: Arc<K>, error: &Error, ctx: Arc<Context>, kind: &'static str) -> Action
where
    K: Resource<DynamicType = ()> + Send + Sync + 'static,
{
    let n = ctx.backoff.failed(obj.as_ref());
    let wait = backoff::delay(n, rand::random::<f64>());
    tracing::warn!(kind, name = %obj.name_any(), namespace = ?obj.namespace(), %error,
        failures = n, retry_in_s = wait.as_secs_f64(), "reconcile failed");
    ctx.metrics.failure(kind, error);
    // The message names objects and reasons only (see Error), never
    // Secret contents.
    let note = error.to_string();
    tokio::spawn(async move {
        ctx.repeated_event(obj.as_ref(), "ReconcileFailed", "Reconcile", note)
            .await;
    });
    Action::requeue(wait)
}

/// Call with every reconcile's outcome: a success resets the backoff.
pub fn finished<K: Resource<DynamicType = ()>>(ctx: &Context, obj: &K, result: Result<Action>) -> Result<Action> {
    if result.is_ok() {
        ctx.backoff.succeeded(obj);
    }
    result
}

/// Writes `status` unless the object already has exactly that status.
pub async fn write_status<K, S>(ctx: &Context, obj: &K, current: Option<&S>, status: &S) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    match apply_status(&api, obj, current, status).await {
        // The object was deleted meanwhile: its status no longer matters.
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 404 => Ok(()),
        other => other,
    }
}

/// Adds or removes finalizer `name`, guarded by the resourceVersion seen:
/// a concurrent change to the list fails (409) and the next reconcile
/// starts from the new state.
pub async fn set_finalizer<K>(api: &Api<K>, obj: &K, name: &str, present: bool) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut finalizers: Vec<String> = obj.finalizers().to_vec();
    if present {
        finalizers.push(name.to_string());
    } else {
        finalizers.retain(|f| f != name);
    }
    let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": obj.resource_version()}});
    match api
        .patch(&obj.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        // Already gone (a concurrent reconcile released it): nothing to do.
        Err(kube::Error::Api(e)) if e.code == 404 && !present => Ok(()),
        Err(e) => Err(e.into()),
    }
}
