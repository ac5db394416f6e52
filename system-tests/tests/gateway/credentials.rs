//! Device credentials changing under a running gateway: rotation with a
//! grace period, a changed CRL applied to the broker, and revocation
//! closing the open session.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fleetward_operator::crd::Device;
use fleetward_simulator::{Credentials, DeviceEvent};
use fleetward_system_tests::gateway::*;
use fleetward_testkit::*;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::WEATHER;

/// HMAC rotation with a grace period: a device that keeps sending through the
/// rotation (and picks up its new secret a little later) loses nothing.
#[tokio::test]
async fn rotation_with_grace_rejects_none_of_a_devices_messages() {
    let h = Harness::start(Setup {
        prefix: "gw-rotate",
        devices: &[("t1", "indoorThermometer", "  hmacGracePeriodSeconds: 120")],
        security: "    ratePerSecond: 100\n    burst: 100",
        backend: true,
    })
    .await;
    let (dev, _events) = h.device("t1").await;
    let old_key = dev.hmac();
    let mut sent = Vec::new();
    let start = Instant::now();
    let mut rotated = false;
    let mut picked_up = false;
    while start.elapsed() < Duration::from_secs(8) {
        sent.push(dev.send_reading().await.unwrap());
        let t = start.elapsed();
        if !rotated && t > Duration::from_secs(1) {
            h.ns.api::<Device>()
                .patch(
                    "t1",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"rotation": 1}})),
                )
                .await
                .unwrap();
            rotated = true;
        }
        // The device reloads its credentials a few seconds after rotation,
        // as a real device polling its config would.
        if rotated && !picked_up && t > Duration::from_secs(4) {
            let creds = Credentials::from_secret(h.ns.client.clone(), &h.ns.name, "t1")
                .await
                .unwrap();
            assert_ne!(creds.hmac, old_key, "the operator rotated the secret");
            dev.rotate(creds);
            picked_up = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(picked_up);
    let records = read_records(&h.consumer(), 30, |r| r.len() >= sent.len()).await;
    let got: HashSet<String> = records
        .iter()
        .map(|r| r["message_id"].as_str().unwrap().to_string())
        .collect();
    let missing: Vec<_> = sent.iter().filter(|id| !got.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} messages lost: {}",
        missing.len(),
        sent.len(),
        h.gateway.metrics()
    );
    let rejected: f64 = fleetward_protocol::Rejection::ALL_REASONS
        .iter()
        .map(|r| h.gateway.rejected(r))
        .sum();
    assert_eq!(rejected, 0.0);
    h.audit_has("key reload", |r| r.0 == "key_reload" && r.2.as_deref() == Some("t1"))
        .await;
    h.ns.cleanup().await;
}

/// When the CRL file changes, the gateway makes Mosquitto reload it and a
/// revoked device can no longer connect.
#[tokio::test]
async fn crl_change_is_applied_to_the_broker() {
    let h = Harness::start(Setup {
        prefix: "gw-crl",
        devices: &[("r1", WEATHER, ""), ("r2", WEATHER, "")],
        security: "",
        backend: true,
    })
    .await;
    let ids = h.tmp.path().join("ids");
    std::fs::create_dir_all(&ids).unwrap();
    let r1 = identity(&h.ns, "r1-credentials", &ids).await;
    let r2 = identity(&h.ns, "r2-credentials", &ids).await;
    assert!(mosquitto_pub(&h.broker, &r1, "device/r1/data", "{}").0);
    h.ns.api::<Device>()
        .patch(
            "r1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"enabled": false}})),
        )
        .await
        .unwrap();
    let serial = {
        let api = h.ns.api::<Device>();
        wait_for("r1 disabled", 30, || get_opt(&api, "r1"), |d| !device_ready(d)).await;
        api.get("r1").await.unwrap().status.unwrap().serial.unwrap()
    };
    let cms = h.ns.api::<k8s_openapi::api::core::v1::ConfigMap>();
    wait_for(
        "CRL lists r1",
        30,
        || get_opt(&cms, "gw-crl"),
        |cm| fleetward_operator::crl::parse(cm).is_ok_and(|c| c.contains(&serial)),
    )
    .await;
    // What the kubelet does with the ConfigMap volume.
    h.broker.write_crl(&h.ns.crl_pem("gw").await);
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.gateway.metric("fleetward_gateway_crl_reloads_total") < 1.0 {
        assert!(Instant::now() < deadline, "gateway did not reload the CRL");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, out) = mosquitto_pub(&h.broker, &r1, "device/r1/data", "{}");
    assert!(!ok, "revoked r1 still connects: {out}");
    assert!(mosquitto_pub(&h.broker, &r2, "device/r2/data", "{}").0, "r2 unaffected");
    h.audit_has("crl reload", |r| r.0 == "crl_reload").await;
    h.ns.cleanup().await;
}

/// Disabling a device revokes its certificate, and its open MQTT session
/// is closed within seconds (before any CRL file reload), its reconnect
/// gets nothing through, and other devices are untouched.
#[tokio::test]
async fn revocation_closes_the_open_session_and_refuses_the_reconnect() {
    let h = Harness::start(Setup {
        prefix: "gw-revoke",
        devices: &[("rv1", WEATHER, ""), ("rv2", WEATHER, "")],
        security: "",
        backend: false,
    })
    .await;
    let ids = h.tmp.path().join("ids");
    std::fs::create_dir_all(&ids).unwrap();
    let rv1_files = identity(&h.ns, "rv1-credentials", &ids).await;
    let (rv1, mut rv1_events) = h.device("rv1").await;
    let (rv2, mut rv2_events) = h.device("rv2").await;
    rv1.send_reading().await.unwrap();
    read_records(&h.consumer(), 20, |r| !r.is_empty()).await;

    let revoked_at = Instant::now();
    h.ns.api::<Device>()
        .patch(
            "rv1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"enabled": false}})),
        )
        .await
        .unwrap();
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), rv1_events.recv()).await {
            Ok(Some(DeviceEvent::Disconnected(_))) => break revoked_at.elapsed(),
            Ok(Some(_)) => continue,
            _ => panic!(
                "rv1's session still open 10 s after it was disabled; gateway log:\n{}",
                h.gateway.log_text()
            ),
        }
    };
    println!("session closed {} ms after the Device was disabled", closed.as_millis());
    assert!(closed < Duration::from_secs(5), "closed after {closed:?}");

    // The mounted CRL has not been rewritten (the kubelet may take a
    // minute): the handshake still passes, but nothing else does.
    let (ok, out) = mosquitto_pub(&h.broker, &rv1_files, "device/rv1/data", "{}");
    assert!(!ok, "the revoked certificate still publishes: {out}");
    let before = h.gateway.metric("fleetward_gateway_mqtt_messages_total");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.gateway.metric("fleetward_gateway_mqtt_messages_total"), before);

    let id = rv2.send_reading().await.unwrap();
    let records = read_records(&h.consumer(), 20, |r| r.iter().any(|x| x["message_id"] == id.as_str())).await;
    assert!(records.iter().any(|x| x["message_id"] == id.as_str()), "rv2 unaffected");
    while let Ok(ev) = rv2_events.try_recv() {
        assert!(!matches!(ev, DeviceEvent::Disconnected(_)), "rv2 knocked off: {ev:?}");
    }
    h.audit_has("revocations sent to the broker", |r| r.0 == "revocations_sent")
        .await;
    h.ns.cleanup().await;
}
