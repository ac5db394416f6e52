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

/// When the CRL changes, the gateway writes Mosquitto's CRL file from the
/// API (no kubelet sync awaited), the broker's plugin has Mosquitto reload
/// it, and a revoked device's TLS handshake is refused.
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
    let written = h.gateway.metric("fleetward_gateway_crl_reloads_total");
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
    let deadline = Instant::now() + Duration::from_secs(20);
    while h.gateway.metric("fleetward_gateway_crl_reloads_total") <= written {
        assert!(Instant::now() < deadline, "gateway did not write the new CRL");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        std::fs::read_to_string(h.broker.dir.join("crl/crl.pem")).unwrap(),
        h.ns.crl_pem("gw").await,
        "the broker's CRL file is the ConfigMap's"
    );
    // The plugin looks at the file every second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_handshake_refused(&h.broker, &r1, "device/r1/data");
    assert!(mosquitto_pub(&h.broker, &r2, "device/r2/data", "{}").0, "r2 unaffected");
    h.audit_has("crl reload", |r| r.0 == "crl_reload").await;
    h.ns.cleanup().await;
}

/// How many TLS handshakes the broker has refused for a certificate that
/// did not verify (a revoked one, here): mosquitto_pub reports only a lost
/// connection, the broker's log says why.
fn handshakes_refused(b: &Broker) -> usize {
    std::fs::read_to_string(b.dir.join("mosquitto.log"))
        .unwrap_or_default()
        .matches("certificate verify failed")
        .count()
}

/// Publishes with a revoked certificate and asserts the broker refused its
/// TLS handshake (the broker may log it a moment after the client gave up).
fn assert_handshake_refused(b: &Broker, files: &Identity, topic: &str) {
    let before = handshakes_refused(b);
    let (ok, out) = mosquitto_pub(b, files, topic, "{}");
    assert!(!ok, "the revoked certificate still publishes on {topic}: {out}");
    let deadline = Instant::now() + Duration::from_secs(3);
    while handshakes_refused(b) == before {
        assert!(
            Instant::now() < deadline,
            "{topic}: the revoked certificate got past the TLS handshake ({out}); broker log:\n{}",
            std::fs::read_to_string(b.dir.join("mosquitto.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Disabling a device revokes its certificate: its open MQTT sessions are
/// closed within seconds whatever they have done since connecting (a busy
/// one, and an idle one that never published or subscribed, which the
/// broker's plugin knows only through the holder the gateway names), the
/// reconnect's TLS handshake is refused, and other devices are untouched.
#[tokio::test]
async fn revocation_closes_the_open_session_and_refuses_the_reconnect() {
    let h = Harness::start(Setup {
        prefix: "gw-revoke",
        devices: &[("rv1", WEATHER, ""), ("rv2", WEATHER, ""), ("rv3", WEATHER, "")],
        security: "",
        backend: false,
    })
    .await;
    let ids = h.tmp.path().join("ids");
    std::fs::create_dir_all(&ids).unwrap();
    let rv1_files = identity(&h.ns, "rv1-credentials", &ids).await;
    let rv3_files = identity(&h.ns, "rv3-credentials", &ids).await;
    let (rv1, mut rv1_events) = h.device("rv1").await;
    let (rv2, mut rv2_events) = h.device("rv2").await;
    // rv3 connects and does nothing: no subscription, no publish.
    let (_idle, idle_seen, idle_task) = raw_client(&h, "rv3", "rv3", None).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !idle_seen.lock().unwrap().connected {
        assert!(Instant::now() < deadline, "rv3 did not connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rv1.send_reading().await.unwrap();
    read_records(&h.consumer(), 20, |r| !r.is_empty()).await;

    let revoked_at = Instant::now();
    for device in ["rv1", "rv3"] {
        h.ns.api::<Device>()
            .patch(
                device,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"enabled": false}})),
            )
            .await
            .unwrap();
    }
    let idle_closed = tokio::spawn(async move {
        match tokio::time::timeout(Duration::from_secs(10), idle_task).await {
            Ok(_) => Some(revoked_at.elapsed()),
            Err(_) => None,
        }
    });
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
    println!(
        "busy session closed {} ms after the Device was disabled",
        closed.as_millis()
    );
    assert!(closed < Duration::from_secs(5), "closed after {closed:?}");
    let idle = idle_closed.await.unwrap().unwrap_or_else(|| {
        panic!(
            "rv3's idle session still open 10 s after it was disabled; broker log:\n{}",
            std::fs::read_to_string(h.broker.dir.join("mosquitto.log")).unwrap_or_default()
        )
    });
    println!(
        "idle session closed {} ms after the Device was disabled",
        idle.as_millis()
    );
    assert!(idle < Duration::from_secs(5), "idle session closed after {idle:?}");
    assert!(idle_seen.lock().unwrap().dropped > 0, "the broker closed rv3's session");

    // The gateway wrote the CRL file before it told the plugin, and the
    // plugin had it reloaded: no new handshake for either certificate.
    for (files, topic) in [(&rv1_files, "device/rv1/data"), (&rv3_files, "device/rv3/data")] {
        assert_handshake_refused(&h.broker, files, topic);
    }
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
