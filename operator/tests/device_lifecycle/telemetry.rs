//! A Gateway's telemetry storage (`spec.storage`): an unusable keyring is
//! left untouched, with the `TelemetryStorage` condition and one warning
//! however often the Gateway is reconciled; once it is deleted a new one is
//! made and the writer deployed; without `spec.storage` the writer goes.

use fleetward_operator::crd::Gateway;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

use crate::common::*;

const STORAGE_YAML: &str = r#"
apiVersion: fleetward.io/v1alpha1
kind: Gateway
metadata: {name: gw}
spec:
  kafka: {topic: gw-telemetry-test}
  storage:
    postgres:
      connectionSecretRef: {name: telemetry-db, key: url}
"#;

/// The `TelemetryStorage` condition: status, reason, observed generation.
fn storage_condition(g: &Gateway) -> Option<(String, String, Option<i64>)> {
    let c = g
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "TelemetryStorage")?;
    Some((c.status.clone(), c.reason.clone(), c.observed_generation))
}

async fn invalid_keyring_events(ns: &TestNs) -> u32 {
    let events = ns.api::<Event>().list(&ListParams::default()).await.unwrap();
    events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("InvalidKeyring") && e.involved_object.name.as_deref() == Some("gw"))
        // A repeated event is one object whose series counts the repeats.
        .map(|e| {
            let repeats = e.series.as_ref().and_then(|s| s.count);
            repeats.or(e.count).unwrap_or(1).max(1) as u32
        })
        .sum()
}

#[tokio::test]
async fn an_unusable_telemetry_keyring_is_reported_once_and_left_untouched() {
    operator();
    let ns = TestNs::new("fw-telemetry").await;
    ns.apply_yaml(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: gw-telemetry-keyring}\nstringData: {keyring.json: not json}\n",
    )
    .await;
    ns.apply_yaml(STORAGE_YAML).await;
    let gws = ns.api::<Gateway>();
    let deployments = ns.api::<Deployment>();
    let gw = wait_for(
        "TelemetryStorage=False InvalidKeyring",
        60,
        || get_opt(&gws, "gw"),
        |g| storage_condition(g).is_some_and(|(s, r, _)| s == "False" && r == "InvalidKeyring"),
    )
    .await;
    assert!(gw.status.as_ref().unwrap().telemetry_key_id.is_none());
    // Three more reconciles, each seen through the condition's generation.
    for round in 0..3 {
        let names = json!({"spec": {"extraDnsNames": [format!("mqtt{round}.test.example")]}});
        let patched = gws
            .patch("gw", &PatchParams::default(), &Patch::Merge(&names))
            .await
            .unwrap();
        let generation = patched.metadata.generation;
        wait_for(
            "the Gateway reconciled at its new generation",
            60,
            || get_opt(&gws, "gw"),
            |g| storage_condition(g).is_some_and(|(_, r, seen)| r == "InvalidKeyring" && seen == generation),
        )
        .await;
    }
    assert_eq!(
        invalid_keyring_events(&ns).await,
        1,
        "one warning, not one per reconcile"
    );
    assert_eq!(
        ns.secret_value("gw-telemetry-keyring", "keyring.json").await,
        "not json",
        "left untouched"
    );
    assert!(
        get_opt(&deployments, "gw-telemetry").await.is_none(),
        "no writer without a keyring"
    );

    // Deleted: a new keyring, the writer, the key id in the status. The
    // Secret someone brought is not one the operator watches, so the
    // Gateway sees it gone at its next reconcile (a spec change here; at
    // most five minutes on its own).
    ns.api::<k8s_openapi::api::core::v1::Secret>()
        .delete("gw-telemetry-keyring", &DeleteParams::default())
        .await
        .unwrap();
    let names = json!({"spec": {"extraDnsNames": ["mqtt.test.example"]}});
    gws.patch("gw", &PatchParams::default(), &Patch::Merge(&names))
        .await
        .unwrap();
    let gw = wait_for(
        "TelemetryStorage=True",
        60,
        || get_opt(&gws, "gw"),
        |g| storage_condition(g).is_some_and(|(s, _, _)| s == "True"),
    )
    .await;
    let key_id = gw.status.as_ref().unwrap().telemetry_key_id.clone().expect("key id");
    assert!(
        ns.secret_value("gw-telemetry-keyring", "keyring.json")
            .await
            .contains(&key_id)
    );
    assert!(get_opt(&deployments, "gw-telemetry").await.is_some());

    // Without spec.storage: the writer and the condition go, the keyring stays.
    gws.patch(
        "gw",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"storage": null}})),
    )
    .await
    .unwrap();
    wait_for(
        "the writer removed",
        60,
        || async { Some(get_opt(&deployments, "gw-telemetry").await.is_none()) },
        |gone| *gone,
    )
    .await;
    let gw = wait_for(
        "no TelemetryStorage condition",
        60,
        || get_opt(&gws, "gw"),
        |g| storage_condition(g).is_none(),
    )
    .await;
    assert!(gw.status.as_ref().unwrap().telemetry_key_id.is_none());
    assert!(
        ns.secret_value("gw-telemetry-keyring", "keyring.json")
            .await
            .contains(&key_id)
    );
    ns.cleanup().await;
}
