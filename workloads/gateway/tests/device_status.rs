//! The gateway's Device status writer against the real API server: the
//! patches land in the status subresource, a deleted Device is "gone" and
//! not retried, and what the operator wrote in the status stays.

use std::collections::HashMap;
use std::sync::Arc;

use fleetward_gateway::device_status::{StatusBook, StatusUpdate, StatusWriter};
use fleetward_gateway::metrics::Metrics;
use fleetward_protocol::Category;
use fleetward_testkit::{TestNs, device_yaml, install_crds};
use kube::api::{Patch, PatchParams};

fn writes(metrics: &Metrics, result: &str) -> u64 {
    metrics.device_status_writes.with_label_values(&[result]).get()
}

#[tokio::test]
async fn the_writer_patches_liveness_into_the_status_and_leaves_the_rest() {
    install_crds();
    let ns = TestNs::new("gw-status").await;
    ns.apply_yaml(&device_yaml("t-1", "gw", "")).await;
    ns.apply_yaml(&device_yaml("t-2", "gw", "")).await;
    ns.apply_yaml(&device_yaml("t-3", "gw", "")).await;
    ns.apply_yaml(&device_yaml("elsewhere", "other-gw", "")).await;
    let devices = ns.dynamic("fleetward.io/v1alpha1", "Device");
    // An earlier gateway pod wrote t-2 online, and another gateway's
    // device is online too.
    let online = serde_json::json!({"status": {"online": true, "lastSeen": "2026-12-07T10:00:00Z"}});
    for d in ["t-2", "elsewhere"] {
        devices
            .patch_status(d, &PatchParams::default(), &Patch::Merge(&online))
            .await
            .unwrap();
    }
    // What the operator wrote (a condition, a serial) stays.
    let operator = serde_json::json!({"status": {"serial": "0A1B", "observedGeneration": 1}});
    devices
        .patch_status("t-1", &PatchParams::default(), &Patch::Merge(&operator))
        .await
        .unwrap();

    let metrics = Arc::new(Metrics::default());
    let writer = StatusWriter::new(ns.client.clone(), &ns.name, metrics.clone());
    // The gateway started 100 s ago: t-1 published 5 s ago, t-2 (online
    // in its status) and t-3 (new: no status of the kind) never did,
    // "ghost" was deleted meanwhile.
    let now = chrono::Utc::now().timestamp() as f64;
    let mut book = StatusBook::new(now - 100.0, 20.0);
    assert_eq!(
        writer.read_statuses("gw", &mut book).await.unwrap(),
        3,
        "gw's three Devices"
    );
    let thermo = Category::IndoorThermometer;
    let registry = vec![
        ("t-1".to_string(), thermo),
        ("t-2".to_string(), thermo),
        ("t-3".to_string(), thermo),
        ("ghost".to_string(), thermo),
    ];
    let seen = HashMap::from([
        ("t-1".to_string(), (thermo, now - 5.0)),
        ("ghost".to_string(), (thermo, now - 5.0)),
    ]);
    let (updates, held) = book.due(now, &registry, &seen);
    assert_eq!((updates.len(), held), (3, 0));
    writer.write(&mut book, updates).await;
    assert_eq!(
        (
            writes(&metrics, "written"),
            writes(&metrics, "gone"),
            writes(&metrics, "failed")
        ),
        (2, 1, 0)
    );

    let t1 = devices.get_status("t-1").await.unwrap().data["status"].clone();
    assert_eq!(t1["online"], true);
    let seen_at = chrono::DateTime::parse_from_rfc3339(t1["lastSeen"].as_str().unwrap()).unwrap();
    assert_eq!(seen_at.timestamp() as f64, now - 5.0);
    assert_eq!(
        (t1["serial"].as_str(), t1["observedGeneration"].as_i64()),
        (Some("0A1B"), Some(1)),
        "{t1}"
    );
    let t2 = devices.get_status("t-2").await.unwrap().data["status"].clone();
    assert_eq!(t2["online"], false, "silent since the gateway started: offline");
    assert_eq!(t2["lastSeen"], "2026-12-07T10:00:00Z", "its lastSeen kept");
    let t3 = devices.get_status("t-3").await.unwrap().data["status"].clone();
    assert!(
        t3.get("online").is_none() && t3.get("lastSeen").is_none(),
        "never connected: nothing written ({t3})"
    );
    let elsewhere = devices.get_status("elsewhere").await.unwrap().data["status"].clone();
    assert_eq!(
        elsewhere["online"], true,
        "another gateway's Device is not this one's to write"
    );
    // The spec is not the writer's: unchanged.
    assert_eq!(devices.get("t-1").await.unwrap().data["spec"]["gatewayRef"], "gw");

    // Nothing new: nothing written, and the gone device is not tried again.
    let (again, held) = book.due(now + 10.0, &registry, &seen);
    assert_eq!((again, held), (Vec::<StatusUpdate>::new(), 0));
    ns.cleanup().await;
}
