//! Two operator replicas against the real API server: one leads (holds the
//! Lease and runs the controllers), the other waits. When the leader is
//! killed outright (SIGKILL: no chance to release the Lease) the standby
//! takes over within 20 s, carries on, and no Device ever got a second
//! certificate (one issuance per Device: Secret version 1, one `Issued`
//! event, the serial in status unchanged).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use fleetward_credentials::ANN_VERSION;
use fleetward_operator::crd::Device;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::ResourceExt;
use kube::api::ListParams;

const LEASE_SECONDS: u64 = 6;

fn replica(ns: &str, name: &str) -> Workload {
    let lease = LEASE_SECONDS.to_string();
    spawn_operator(
        &[
            "--leader-election",
            "--lease-duration-seconds",
            &lease,
            "--pod-namespace",
            ns,
            "--pod-name",
            name,
        ],
        &format!("{ns}-{name}"),
    )
}

fn leads(w: &Workload) -> bool {
    w.metric("fleetward_operator_leader") == 1.0
}

/// (Secret version, certificate serial in status) per Device.
async fn issued(ns: &TestNs) -> BTreeMap<String, (String, String)> {
    let devices = ns.api::<Device>().list(&ListParams::default()).await.unwrap();
    let mut out = BTreeMap::new();
    for d in devices {
        let name = d.name_any();
        let secret = ns.api::<Secret>().get(&format!("{name}-credentials")).await.unwrap();
        let version = secret.annotations().get(ANN_VERSION).cloned().unwrap_or_default();
        let serial = d.status.and_then(|s| s.serial).unwrap_or_default();
        out.insert(name, (version, serial));
    }
    out
}

async fn all_ready(ns: &TestNs, names: &[String]) {
    let api = ns.api::<Device>();
    for name in names {
        wait_for(
            &format!("Device {name} Ready"),
            90,
            || get_opt(&api, name),
            device_ready,
        )
        .await;
    }
}

#[tokio::test]
async fn standby_takes_over_a_killed_leader_and_no_device_gets_two_certificates() {
    install_crds();
    let ns = TestNs::new("leader").await;
    let a = replica(&ns.name, "replica-a");
    let b = replica(&ns.name, "replica-b");

    // Exactly one leads.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(leads(&a) ^ leads(&b)) {
        assert!(
            Instant::now() < deadline,
            "no single leader after 30 s (a: {}, b: {})",
            leads(&a),
            leads(&b)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (mut leader, standby) = if leads(&a) { (a, b) } else { (b, a) };
    // The standby stays a standby: it runs no controllers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!leads(&standby));
    assert_eq!(
        standby.metric("fleetward_reconciles_total"),
        0.0,
        "the standby reconciled"
    );

    let first: Vec<String> = (0..30).map(|i| format!("d{i:02}")).collect();
    let manifests: Vec<String> = first.iter().map(|d| device_yaml(d, "gw", "")).collect();
    ns.gateway_with_devices(GATEWAY_YAML, &manifests).await;
    let before = issued(&ns).await;
    assert_eq!(before.len(), 30);

    // SIGKILL: the lease is not released; the standby waits for it to expire.
    leader.kill9();
    let t = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !leads(&standby) {
        assert!(Instant::now() < deadline, "the standby did not take over within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let takeover = t.elapsed();
    eprintln!(
        "takeover after SIGKILL: {:.1} s (lease {LEASE_SECONDS} s)",
        takeover.as_secs_f64()
    );

    // The new leader carries on: new Devices become Ready.
    let second: Vec<String> = (0..10).map(|i| format!("e{i:02}")).collect();
    for d in &second {
        ns.apply_yaml(&device_yaml(d, "gw", "")).await;
    }
    all_ready(&ns, &second).await;

    // Nothing was issued twice: the first Devices keep their certificate,
    // Secret version 1, and each has exactly one `Issued` event.
    let after = issued(&ns).await;
    for (name, (version, serial)) in &before {
        assert_eq!(version, "1", "{name} was issued more than once before the failover");
        assert_eq!(
            after.get(name),
            Some(&(version.clone(), serial.clone())),
            "{name} changed across the failover"
        );
    }
    for name in &second {
        assert_eq!(after[name].0, "1", "{name} issued more than once");
    }
    let events = ns.api::<Event>().list(&ListParams::default()).await.unwrap();
    let mut issued_events: BTreeMap<String, u32> = BTreeMap::new();
    for e in events.items.iter().filter(|e| e.reason.as_deref() == Some("Issued")) {
        if let Some(n) = &e.involved_object.name {
            *issued_events.entry(n.clone()).or_default() += e.count.unwrap_or(1).max(1) as u32;
        }
    }
    for name in first.iter().chain(&second) {
        assert_eq!(issued_events.get(name), Some(&1), "Issued events for {name}");
    }
    drop(standby);
    ns.cleanup().await;
}
