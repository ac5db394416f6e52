//! What the operator stamps on the objects it makes, and how it tells its
//! own objects from someone else's: the field manager of its applies, the
//! labels it sets, controller owner references and the check that an
//! existing object is controlled by the expected owner.
//!
//! Pure: nothing here holds a Client or makes a request, so any module
//! (stores, CRL writer, keys batcher, plans) may use it without depending
//! on the reconcilers' `Context`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;

use crate::Result;

/// Field manager for every server-side apply the operator makes.
pub const MANAGER: &str = "fleetward-operator";
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "fleetward-operator");
/// On every pod the operator deploys: the chart's PodMonitor and
/// NetworkPolicies select fleetward workloads by it.
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "fleetward");

/// The controller owner reference of an object, if it has one.
pub fn controller_of<K: Resource>(obj: &K) -> Option<&OwnerReference> {
    obj.meta()
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// Whether `obj`'s controller is `owner` (same uid).
pub fn controlled_by<K: Resource>(obj: &K, owner: &OwnerReference) -> bool {
    controller_of(obj).is_some_and(|r| r.uid == owner.uid)
}

/// Whether the operator made `obj`: it carries the operator's managed-by
/// label, or a fleetward resource owns it.
pub fn made_by_operator<K: Resource>(obj: &K) -> bool {
    let owned = obj
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.api_version.starts_with("fleetward.io/"));
    labelled_by_operator(obj) || owned
}

/// Whether `obj` carries the operator's managed-by label (for objects that
/// have no owner to tell, e.g. those of the operator's own namespace).
pub fn labelled_by_operator<K: Resource>(obj: &K) -> bool {
    obj.meta()
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY.0))
        .is_some_and(|v| v == MANAGED_BY.1)
}

/// `Ok` when `existing` is controlled by `owner` (same uid), else the
/// name-conflict error that names both.
pub fn refuse_unless_owned<K: Resource<DynamicType = ()>>(existing: &K, owner: &OwnerReference) -> Result<()> {
    if controlled_by(existing, owner) {
        return Ok(());
    }
    Err(crate::Error::NameConflict {
        kind: K::kind(&()).to_string(),
        name: existing.meta().name.clone().unwrap_or_default(),
        owner: format!("{} {}", owner.kind, owner.name),
    })
}

/// Owner reference making `owner` the controller of a child object, so the
/// garbage collector removes the child with its owner.
pub fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Result<OwnerReference> {
    owner
        .controller_owner_ref(&())
        .ok_or(crate::Error::MissingObjectKey("metadata.uid"))
}

/// `app.kubernetes.io/managed-by: fleetward-operator` and `extra`.
pub fn labels(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    std::iter::once(MANAGED_BY)
        .chain(extra.iter().copied())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
