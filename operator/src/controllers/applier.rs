//! The writes every reconciler makes the same way, with the ownership
//! rules written once: apply never takes over an object someone else made
//! under the name, and status is applied as the operator's field manager.
//! Whether an object is ours is `crate::ownership`'s (pure); this module
//! makes the requests.

use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Result;
use crate::ownership::{MANAGER, controller_of, refuse_unless_owned};

/// Server-side applies `obj` (a complete desired state) as our field
/// manager, but never onto an object someone else made. When `obj` names a
/// controller owner, an existing object of that name must already carry
/// that owner's reference: a forced apply would otherwise take over (and
/// garbage-collect with its owner) whatever happens to share the name, say
/// the `postgres` Service for a Gateway named `postgres`.
///
/// `known` is the object as the caller already saw it (a store copy): then
/// no extra request is made. Without it the object is read first.
pub async fn apply<K>(api: &Api<K>, name: &str, obj: &K, known: Option<&K>) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    refuse_if_foreign(api, name, obj, known).await?;
    Ok(api
        .patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(obj))
        .await?)
}

/// `apply` for an object the caller's store does not have (yet): one
/// create, instead of the read that `apply` needs to be sure no one
/// else's object has the name. A create cannot take anything over; when
/// the name is taken (409: someone else's object, or ours that the store
/// has not shown yet) it is `apply` with that read. Only for objects
/// whose later applies always carry every field of the first (what a
/// create's field manager owns is then taken over by the applies).
pub async fn create_or_apply<K>(api: &Api<K>, name: &str, obj: &K) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    match api.create(&params, obj).await {
        Err(kube::Error::Api(e)) if e.code == 409 => apply(api, name, obj, None).await,
        other => Ok(other?),
    }
}

/// `Ok` unless an object named `name` exists that is not controlled by the
/// owner `wanted` names (see `apply`); also what a create that found the
/// name taken asks. `known`, when given, is used instead of a read.
pub async fn refuse_if_foreign<K>(api: &Api<K>, name: &str, wanted: &K, known: Option<&K>) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let Some(owner) = controller_of(wanted) else {
        return Ok(());
    };
    let read;
    let existing = match known {
        Some(k) => Some(k),
        None => {
            read = api.get_opt(name).await?;
            read.as_ref()
        }
    };
    match existing {
        Some(existing) => refuse_unless_owned(existing, owner),
        None => Ok(()),
    }
}

/// Server-side applies the status of `obj`.
pub async fn apply_status<K, S>(api: &Api<K>, obj: &K, status: &S) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}
