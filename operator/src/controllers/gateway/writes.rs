//! The Gateway's writes that are more than one apply of a built object:
//! its ServiceAccount, Role and RoleBinding (three applies, in order), and
//! its broker's volume claim, applied or (when `spec.persistence` goes)
//! deleted only if it is this Gateway's own. The objects come from the
//! builders in `workload.rs`.

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, ServiceAccount, VolumeResourceRequirements,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{Api, ResourceExt};

use super::child_meta;
use super::workload::rbac;
use crate::Result;
use crate::context::Context;
use crate::controllers::applier::{apply, delete_if_owned};
use crate::crd::Gateway;
use crate::ownership::owner_ref;

pub async fn apply_rbac(gw: &Gateway, ctx: &Context, ns: &str) -> Result<()> {
    let name = Gateway::workload_name(&gw.name_any());
    let (sa, role, binding) = rbac(gw)?;
    apply(
        &Api::<ServiceAccount>::namespaced(ctx.client.clone(), ns),
        &name,
        &sa,
        None,
    )
    .await?;
    apply(&Api::<Role>::namespaced(ctx.client.clone(), ns), &name, &role, None).await?;
    apply(
        &Api::<RoleBinding>::namespaced(ctx.client.clone(), ns),
        &name,
        &binding,
        None,
    )
    .await?;
    Ok(())
}

/// The broker's volume claim when `spec.persistence` asks for one; without
/// it, a claim left from earlier is deleted (the pod no longer mounts it).
pub async fn apply_broker_volume(gw: &Gateway, ctx: &Context, ns: &str) -> Result<()> {
    let name = Gateway::broker_volume_name(&gw.name_any());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let Some(p) = &gw.spec.persistence else {
        // Only this Gateway's own claim, and only that very object: a
        // claim someone else made under the name stays.
        if delete_if_owned(&claims, &name, &owner_ref(gw)?, None).await? {
            tracing::info!(claim = %name, "deleted the broker volume: spec.persistence was removed");
        }
        return Ok(());
    };
    let claim = PersistentVolumeClaim {
        metadata: child_meta(gw, name.clone())?,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: p.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some([("storage".to_string(), Quantity(p.size.clone()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    apply(&claims, &name, &claim, None).await?;
    Ok(())
}
