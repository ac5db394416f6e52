//! A Device's entry in its Gateway's device-keys Secrets
//! (`fleetward_credentials::keys`): what the gateway workload needs to check
//! its messages, without the certificate and private key of the
//! credentials Secret. The gateway's ServiceAccount may read those shard
//! Secrets and no other Secret.
//!
//! Each Device writes only its own data key, by a JSON merge patch: devices
//! of one shard never conflict, and no resourceVersion round trip is
//! needed. The shards themselves are the Gateway's (created by its
//! reconciler, owned by it); a Device writes into one only when that is so.

use fleetward_credentials::{Credentials, keys_secret_name, keys_shard};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::context::{MANAGER, refuse_unless_owned};
use crate::crd::Device;
use crate::{Error, Result};

/// Writes (`Some`) or removes (`None`) the device's entry; no request when
/// the shard already holds what is wanted.
pub async fn project(dev: &Device, ctx: &crate::context::Context, ns: &str, creds: Option<&Credentials>) -> Result<()> {
    let name = dev.name_any();
    let gateway = &dev.spec.gateway_ref;
    let shard = keys_secret_name(gateway, keys_shard(&name));
    let want = creds.map(|c| c.gateway_keys().to_bytes());
    let Some(known) = ctx.stores.secret(ns, &shard) else {
        // Nothing to remove from a shard that is gone (its Gateway was
        // deleted); one still to come is waited for.
        return match want {
            None => Ok(()),
            Some(_) => Err(Error::NotYet(format!("Secret {shard} of Gateway {gateway}"))),
        };
    };
    match ctx.stores.gateway(ns, gateway) {
        Some(gw) => refuse_unless_owned(known.as_ref(), &crate::context::owner_ref(gw.as_ref())?)?,
        None if want.is_none() => return Ok(()),
        None => return Err(Error::NotYet(format!("Gateway {gateway}"))),
    }
    let have = known.data.as_ref().and_then(|d| d.get(&name)).map(|b| &b.0);
    if have == want.as_ref() {
        return Ok(());
    }
    let patch = json!({"data": {name: want.map(ByteString)}});
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    match secrets.patch(&shard, &params, &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 && creds.is_none() => Ok(()),
        Err(e) => Err(e.into()),
    }
}
