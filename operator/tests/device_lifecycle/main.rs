//! Device and Gateway reconcilers against the real kube-apiserver, checked
//! with real openssl. One test binary; its tests by concern: `issuance`,
//! `renewal`, `revocation`, `key_material`, `ownership` and the Gateway's
//! `telemetry` storage.

#[path = "../common/mod.rs"]
mod common;
mod issuance;
mod key_material;
mod ownership;
mod renewal;
mod revocation;
mod telemetry;

use common::*;
use fleetward_operator::crd::{Device, Gateway};
use kube::api::{Patch, PatchParams};
use serde_json::json;

async fn ready_device(ns: &TestNs, name: &str) -> Device {
    let api = ns.api::<Device>();
    wait_for(
        &format!("Device {name} Ready"),
        60,
        || get_opt(&api, name),
        device_ready,
    )
    .await
}

async fn ready_gateway(ns: &TestNs, name: &str) -> Gateway {
    let api = ns.api::<Gateway>();
    wait_for(
        &format!("Gateway {name} Ready"),
        60,
        || get_opt(&api, name),
        gateway_ready,
    )
    .await
}

async fn patch_spec(ns: &TestNs, name: &str, spec: serde_json::Value) {
    ns.api::<Device>()
        .patch(name, &PatchParams::default(), &Patch::Merge(json!({ "spec": spec })))
        .await
        .expect("patch device");
}

fn status(d: &Device) -> &fleetward_operator::crd::DeviceStatus {
    d.status.as_ref().expect("status")
}

fn rv<K: kube::Resource>(k: &K) -> String {
    k.meta().resource_version.clone().unwrap()
}
