//! The writes every reconciler makes the same way, with the ownership
//! rules written once: apply never takes over an object someone else made
//! under the name, and status is written as a merge patch.
//! Whether an object is ours is `crate::ownership`'s (pure); this module
//! makes the requests.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::merge_patch;
use crate::ownership::{MANAGER, controlled_by, controller_of, refuse_unless_owned};
use crate::{Error, Result};

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
    match create(api, obj).await? {
        Some(created) => Ok(created),
        None => apply(api, name, obj, None).await,
    }
}

/// Creates `obj` once: an object that is made and never replaced (a CA, a
/// key clients hold). `Some` is the object created; `None` means the name
/// was taken by one of ours (another reconcile or replica made it first:
/// keep theirs). A foreign object under the name is refused, never used.
pub async fn create_once<K>(api: &Api<K>, name: &str, obj: &K) -> Result<Option<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let created = create(api, obj).await?;
    if created.is_none() {
        refuse_if_foreign(api, name, obj, None).await?;
    }
    Ok(created)
}

/// Creates `obj` now: the name taken (another writer got there first)
/// fails with `Error::Conflict`, and the next reconcile starts from what
/// that writer stored.
pub async fn create_new<K>(api: &Api<K>, name: &str, obj: &K) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    create(api, obj).await?.ok_or_else(|| conflict(name))
}

/// Replaces the object at the resourceVersion `obj` carries (the one
/// read): a concurrent change fails with `Error::Conflict`.
pub async fn replace<K>(api: &Api<K>, name: &str, obj: &K) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    match api.replace(name, &as_manager(), obj).await {
        Err(kube::Error::Api(e)) if e.code == 409 => Err(conflict(name)),
        other => Ok(other?),
    }
}

fn conflict(name: &str) -> Error {
    Error::Conflict {
        name: name.to_string(),
        attempts: 1,
    }
}

fn as_manager() -> PostParams {
    PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    }
}

/// One create as our field manager; `None` when the name is taken (409).
async fn create<K>(api: &Api<K>, obj: &K) -> Result<Option<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    match api.create(&as_manager(), obj).await {
        Ok(created) => Ok(Some(created)),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Deletes the object named `name` only if `owner` controls it, and only
/// that very object (a uid precondition): one someone else made under the
/// name, or made again since it was seen, stays. `known` is the caller's
/// store copy; without it the object is read first. Returns whether a
/// delete was sent and accepted; gone already (404) or replaced
/// meanwhile (409) is `false`, not an error.
pub async fn delete_if_owned<K>(api: &Api<K>, name: &str, owner: &OwnerReference, known: Option<&K>) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let read;
    let existing = match known {
        Some(known) => known,
        None => match api.get_opt(name).await? {
            Some(found) => {
                read = found;
                &read
            }
            None => return Ok(false),
        },
    };
    if !controlled_by(existing, owner) {
        return Ok(false);
    }
    let only_that = DeleteParams {
        preconditions: Some(Preconditions {
            uid: existing.meta().uid.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    match api.delete(name, &only_that).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
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

/// Writes the status of `obj` as a merge patch from `current` (what the
/// caller's store holds) to `status`: every field of `status`, and `null`
/// for each one `current` had and `status` drops. A merge patch, not an
/// apply: it costs the API server a fraction of a structured merge.
pub async fn apply_status<K, S>(api: &Api<K>, obj: &K, current: Option<&S>, status: &S) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let current = current
        .map(serde_json::to_value)
        .transpose()
        .map_err(kube::Error::SerdeError)?;
    let status = serde_json::to_value(status).map_err(kube::Error::SerdeError)?;
    let patch = serde_json::json!({ "status": merge_patch::replacing(current.as_ref(), &status) });
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch_status(&obj.name_any(), &params, &Patch::Merge(&patch))
        .await?;
    Ok(())
}
