//! The gateway end to end: real Mosquitto (TLS, operator-generated config),
//! real Kafka, real PostgreSQL (audit), the real operator's credentials.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fleetward_operator::crd::Device;
use fleetward_simulator::attack::{self, Attack, AttackOptions};
use fleetward_simulator::{Credentials, DeviceEvent};
use fleetward_system_tests::gateway::*;
use fleetward_testkit::*;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

const WEATHER: &str = "weatherStation";

/// Valid messages from the simulator reach the HTTP backend and Kafka, and
/// the backend's reply reaches the device.
#[tokio::test]
async fn valid_messages_reach_backend_and_kafka_and_reply_reaches_device() {
    let h = Harness::start(Setup {
        prefix: "gw-ok",
        devices: &[("d1", WEATHER, "")],
        security: "",
        backend: true,
    })
    .await;
    let (dev, mut events) = h.device("d1").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(dev.send_reading().await.unwrap());
    }
    let kafka = h.consumer();
    let records = read_records(&kafka, 30, |r| r.len() >= 5).await;
    let got: HashSet<&str> = records.iter().map(|r| r["message_id"].as_str().unwrap()).collect();
    assert_eq!(
        got,
        ids.iter().map(String::as_str).collect(),
        "every message in Kafka once"
    );
    for r in &records {
        assert_eq!(r["device_id"], "d1");
        assert_eq!(r["category"], WEATHER);
        assert!(r["payload"]["temperature"].is_number());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.backend.calls().len() < 5 {
        assert!(Instant::now() < deadline, "backend calls: {:?}", h.backend.calls());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls = h.backend.calls();
    assert!(calls.iter().all(|c| c.device == "d1"));
    // The backend gets the payload only, as in seed 003.
    let body: serde_json::Value = serde_json::from_str(&calls[0].body).unwrap();
    assert!(body.get("temperature").is_some() && body.get("signature").is_none());
    // Backend replies come back on device/d1/response.
    let mut responses = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while responses < 5 {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(DeviceEvent::Response(body))) => {
                assert!(body.contains("temperature normal"), "{body}");
                responses += 1;
            }
            Ok(Some(_)) => {}
            _ => panic!("only {responses} backend responses reached the device"),
        }
    }
    assert_eq!(h.gateway.accepted(), 5.0);
    assert!(h.gateway.metric("fleetward_gateway_mqtt_messages_total") >= 5.0);
    h.ns.cleanup().await;
}

/// Seed 003's scenarios and the limits: each attack is refused, not
/// forwarded, counted under its reason and audited with it.
#[tokio::test]
async fn attacks_are_refused_counted_and_audited() {
    let h = Harness::start(Setup {
        prefix: "gw-attack",
        devices: &[
            ("attacker", WEATHER, ""),
            ("victim", WEATHER, ""),
            ("flooder", WEATHER, ""),
            ("gone", WEATHER, ""),
            ("off", WEATHER, ""),
        ],
        security: "    ratePerSecond: 5\n    burst: 10\n    maxMessageBytes: 4096",
        backend: true,
    })
    .await;
    let (attacker, _ev1) = h.device("attacker").await;
    let (flooder, _ev2) = h.device("flooder").await;
    let (gone, _ev3) = h.device("gone").await;
    let (off, _ev4) = h.device("off").await;
    let opts = AttackOptions {
        victim: Some("victim".into()),
        max_message_bytes: 4096,
        flood_count: 40,
    };
    let mut legit = Vec::new();
    for a in [
        Attack::Replay,
        Attack::Tamper,
        Attack::Impersonate,
        Attack::Stale,
        Attack::Future,
        Attack::Oversize,
        Attack::Malformed,
        Attack::WrongSchema,
        Attack::DuplicateKeys,
    ] {
        legit.extend(attack::perform(&attacker, a, &opts).await.unwrap().legitimate);
    }
    let flood = attack::perform(&flooder, Attack::Flood, &opts).await.unwrap();

    // A device deleted (its Secret gone) while its certificate still opens
    // a connection, and a disabled device, before any CRL reload.
    let devices = h.ns.api::<Device>();
    devices.delete("gone", &DeleteParams::default()).await.unwrap();
    devices
        .patch(
            "off",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"enabled": false}})),
        )
        .await
        .unwrap();
    h.audit_has("gone removed", |r| {
        r.0 == "device_removed" && r.2.as_deref() == Some("gone")
    })
    .await;
    h.audit_has("off disabled", |r| {
        r.0 == "device_disabled" && r.2.as_deref() == Some("off")
    })
    .await;
    gone.send_reading().await.unwrap();
    off.send_reading().await.unwrap();

    let expected = [
        ("replay", 1.0),
        ("bad_signature", 1.0),
        ("topic_mismatch", 1.0),
        ("stale_timestamp", 1.0),
        ("future_timestamp", 1.0),
        ("oversize", 1.0),
        // Not JSON, and a payload with a key twice.
        ("malformed", 2.0),
        ("schema_violation", 1.0),
    ];
    // The deleted and the disabled device: their certificates are revoked,
    // so the broker closes their sessions and refuses their messages (the
    // fleetward_revoke plugin); one that slips in before the revocation
    // lands is refused by the gateway's registry check instead.
    let late = ["unknown_device", "disabled_device"];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = expected.iter().all(|(r, n)| h.gateway.rejected(r) >= *n) && h.gateway.rejected("rate_limited") >= 1.0;
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "rejections so far:\n{}", h.gateway.metrics());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (reason, n) in expected {
        assert_eq!(h.gateway.rejected(reason), n, "{reason}");
    }
    // The flood: the burst passes, the rest is rate limited.
    let limited = h.gateway.rejected("rate_limited");
    assert!((20.0..40.0).contains(&limited), "rate limited {limited} of 40");

    // Nothing malicious was forwarded: the backend and Kafka saw exactly the
    // legitimate messages (the replay's original and the flood's burst).
    let accepted = h.gateway.accepted() as usize;
    assert_eq!(accepted, legit.len() + (40 - limited as usize));
    let records = read_records(&h.consumer(), 20, |r| r.len() >= accepted).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(records.len(), accepted, "Kafka holds only accepted messages");
    let forwarded: HashSet<String> = records
        .iter()
        .map(|r| r["message_id"].as_str().unwrap().to_string())
        .collect();
    for id in &legit {
        assert!(forwarded.contains(id));
    }
    assert!(
        records
            .iter()
            .all(|r| r["device_id"] == "attacker" || r["device_id"] == "flooder")
    );
    assert!(forwarded.is_subset(&legit.iter().chain(&flood.malicious).cloned().collect()));
    assert_eq!(h.backend.calls().len(), accepted, "backend got only accepted messages");

    // Every rejection is in the audit table with its reason.
    for (reason, _) in expected.iter().chain(&[("rate_limited", 1.0)]) {
        h.audit_has(reason, |r| r.0 == "rejected" && r.1.as_deref() == Some(reason))
            .await;
    }
    let rows = h.audit().await;
    let rejected_rows = rows.iter().filter(|r| r.0 == "rejected").count() as f64;
    for reason in late {
        assert!(h.gateway.rejected(reason) <= 1.0, "{reason}");
    }
    let rejected_metric: f64 = expected.iter().map(|(r, _)| h.gateway.rejected(r)).sum::<f64>()
        + late.iter().map(|r| h.gateway.rejected(r)).sum::<f64>()
        + limited;
    // A row each, except those over the flooding device's audit budget,
    // which are counted for its summary row.
    let suppressed = h.gateway.metric("fleetward_gateway_audit_suppressed_total");
    assert_eq!(
        rejected_rows + suppressed,
        rejected_metric,
        "a row per rejection, or a count for the summary"
    );
    assert!(suppressed <= limited, "only the flood went over budget");
    assert!(
        rows.iter()
            .any(|r| r.1.as_deref() == Some("topic_mismatch") && r.2.as_deref() == Some("attacker")),
        "impersonation is attributed to the real sender"
    );
    // Secrets never reach the log.
    let key = h.ns.secret_value("attacker-credentials", "hmac.key").await;
    assert!(!h.gateway.log_text().contains(&key));
    h.ns.cleanup().await;
}

/// A command through the API arrives signed and the device verifies it; a
/// wrong bearer key gets 401 and nothing is published.
#[tokio::test]
async fn commands_are_signed_verified_and_need_the_key() {
    let h = Harness::start(Setup {
        prefix: "gw-cmd",
        devices: &[("lock-1", "smartLock", "")],
        security: "",
        backend: true,
    })
    .await;
    let (_dev, mut events) = h.device("lock-1").await;
    let (http, key) = h.command_client().await;
    let url = format!("{}/command/lock-1", h.gateway.api_url);

    let bad = http
        .post(&url)
        .bearer_auth("not-the-key")
        .json(&json!({"action": "unlock"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let none = http.post(&url).json(&json!({"action": "unlock"})).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let unknown = http
        .post(format!("{}/command/nobody", h.gateway.api_url))
        .bearer_auth(&key)
        .json(&json!({"action": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    // Nothing reached the device for the refused calls.
    let quiet_until = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(ev)) = tokio::time::timeout_at(quiet_until, events.recv()).await {
        assert!(
            !matches!(ev, DeviceEvent::Command { .. }),
            "a refused call published a command"
        );
    }

    let ok = http
        .post(&url)
        .bearer_auth(&key)
        .json(&json!({"action": "reboot"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
    let body: serde_json::Value = ok.json().await.unwrap();
    let sent_id = body["message_id"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(DeviceEvent::Command {
                message_id,
                payload,
                verdict,
            })) => {
                assert_eq!(message_id, sent_id);
                assert_eq!(verdict, Ok(()), "the device verifies the gateway's signature");
                assert_eq!(
                    serde_json::from_str::<serde_json::Value>(&payload).unwrap(),
                    json!({"action": "reboot"})
                );
                break;
            }
            Ok(Some(_)) => {}
            _ => panic!("command did not arrive"),
        }
    }
    // The device's acknowledgement is a signed data message the gateway accepts.
    let records = read_records(&h.consumer(), 20, |r| {
        r.iter().any(|x| x["payload"]["ack"] == sent_id.as_str())
    })
    .await;
    assert!(
        records.iter().any(|x| x["payload"]["ack"] == sent_id.as_str()),
        "{records:?}"
    );
    h.audit_has("command sent", |r| {
        r.0 == "command_sent" && r.3.as_deref() == Some(&sent_id)
    })
    .await;
    h.audit_has("unauthorized", |r| r.0 == "command_unauthorized").await;
    assert_eq!(
        h.gateway
            .metric("fleetward_gateway_commands_total{result=\"unauthorized\"}"),
        2.0
    );
    assert!(!h.gateway.log_text().contains(&key), "API key in the log");

    // Guessing: after a burst of failures from one address, calls get 429
    // before any key is checked (even the right one, until the budget
    // refills), and the audit holds a bounded number of rows, device ids
    // cut short.
    let long_id = "x".repeat(5000);
    let mut codes = Vec::new();
    for _ in 0..40 {
        let r = http
            .post(format!("{}/command/{long_id}", h.gateway.api_url))
            .bearer_auth("guess")
            .json(&json!({"action": "unlock"}))
            .send()
            .await
            .unwrap();
        codes.push(r.status().as_u16());
    }
    let unauthorized = codes.iter().filter(|c| **c == 401).count();
    let throttled = codes.iter().filter(|c| **c == 429).count();
    assert_eq!(unauthorized + throttled, 40, "{codes:?}");
    assert!((8..=12).contains(&unauthorized), "{codes:?}");
    let right_key_now = http.post(&url).bearer_auth(&key).json(&json!({})).send().await.unwrap();
    assert_eq!(right_key_now.status(), 429, "the address is throttled");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = http
        .post(&url)
        .bearer_auth(&key)
        .json(&json!({"action": "lock"}))
        .send()
        .await
        .unwrap();
    assert_eq!(later.status(), 202, "the budget refills");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = h.audit().await;
    let unauthorized_rows: Vec<_> = rows.iter().filter(|r| r.0 == "command_unauthorized").collect();
    assert_eq!(
        unauthorized_rows.len(),
        2 + unauthorized,
        "one row per 401, none per 429"
    );
    assert!(
        unauthorized_rows
            .iter()
            .all(|r| r.2.as_deref().unwrap_or_default().len() <= 64)
    );
    assert_eq!(
        h.gateway
            .metric("fleetward_gateway_commands_total{result=\"throttled\"}"),
        throttled as f64 + 1.0
    );
    h.ns.cleanup().await;
}

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

/// A third-party client written from seed 003's description (Python,
/// paho-mqtt + hmac) produces messages the gateway verifies.
#[tokio::test]
async fn third_party_python_client_verifies() {
    let h = Harness::start(Setup {
        prefix: "gw-py",
        devices: &[("py-1", WEATHER, "")],
        security: "",
        backend: true,
    })
    .await;
    let dir = h.tmp.path().join("py");
    std::fs::create_dir_all(&dir).unwrap();
    for k in ["tls.crt", "tls.key", "ca.crt", "hmac.key"] {
        write(&dir, k, &h.ns.secret_value("py-1-credentials", k).await);
    }
    let script = r#"
import hmac, hashlib, json, ssl, sys, time, uuid
import paho.mqtt.client as mqtt

d, port, device_id = sys.argv[1], int(sys.argv[2]), sys.argv[3]
secret = open(f"{d}/hmac.key").read().strip().encode()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id)
c.tls_set(ca_certs=f"{d}/ca.crt", certfile=f"{d}/tls.crt", keyfile=f"{d}/tls.key")
c.connect("localhost", port)
c.loop_start()
ids = []
for t in (21.5, 22.0):
    payload = {"temperature": t, "humidity": 55, "pressure": 1012.5, "wind_speed": 3.2}
    payload_json = json.dumps(payload)          # Python's own spacing
    ts, mid = int(time.time()), str(uuid.uuid4())
    msg = (device_id + str(ts) + mid + payload_json).encode()
    sig = hmac.new(secret, msg, hashlib.sha256).hexdigest()
    body = '{"device_id": "%s", "timestamp": %d, "message_id": "%s", "payload": %s, "signature": "%s"}' % (
        device_id, ts, mid, payload_json, sig)
    c.publish(f"device/{device_id}/data", body, qos=1).wait_for_publish(10)
    ids.append(mid)
c.loop_stop()
c.disconnect()
print("\n".join(ids))
"#;
    let script_path = write(&dir, "client.py", script);
    let out = std::process::Command::new(env("FLEETWARD_PYTHON"))
        .args([
            &script_path,
            &dir.display().to_string(),
            &h.broker.port.to_string(),
            "py-1",
        ])
        .output()
        .expect("python runs");
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    let ids: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(ids.len(), 2);
    let records = read_records(&h.consumer(), 30, |r| r.len() >= 2).await;
    let got: HashSet<&str> = records.iter().map(|r| r["message_id"].as_str().unwrap()).collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect::<HashSet<_>>());
    assert_eq!(h.gateway.rejected("bad_signature"), 0.0);
    h.ns.cleanup().await;
}

/// The broker restarts: the gateway reconnects, and QoS 1 messages devices
/// publish before it is back are delivered from its persistent session.
#[tokio::test]
async fn broker_restart_loses_no_qos1_messages() {
    let mut h = Harness::start(Setup {
        prefix: "gw-restart",
        devices: &[("m1", "electricityMeter", "")],
        security: "    ratePerSecond: 1000\n    burst: 1000",
        backend: true,
    })
    .await;
    {
        let (dev, _ev) = h.device("m1").await;
        dev.send_reading().await.unwrap();
        read_records(&h.consumer(), 20, |r| !r.is_empty()).await;
    }
    // Freeze the gateway so the messages below are certainly published while
    // it is not connected: it finds its connection dead only when it thaws.
    h.gateway.signal("-STOP");
    h.broker.restart();
    let (dev, _ev) = h.device("m1").await;
    let mut sent = Vec::new();
    for _ in 0..50 {
        sent.push(dev.send_reading().await.unwrap());
    }
    // Let the QoS 1 publishes complete before the gateway comes back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.gateway.signal("-CONT");
    let records = read_records(&h.consumer(), 60, |r| r.len() >= 51).await;
    let got: HashSet<String> = records
        .iter()
        .map(|r| r["message_id"].as_str().unwrap().to_string())
        .collect();
    let lost: Vec<_> = sent.iter().filter(|id| !got.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of 50 lost; gateway log:\n{}",
        lost.len(),
        h.gateway.log_text()
    );
    assert_eq!(h.gateway.metric("fleetward_gateway_mqtt_connected"), 1.0);
    assert!(
        h.gateway.log_text().contains("broker connection lost"),
        "the gateway did see the restart"
    );
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

/// Client ids are the certificate's identity: a device connecting with the
/// gateway's client id, or another device's, in a loop, knocks nobody off
/// the broker. Subscriptions and wills outside the device's own topics
/// deliver and inject nothing.
#[tokio::test]
async fn client_ids_are_bound_to_identities_and_topics_to_the_device() {
    use rumqttc::{LastWill, QoS};
    let h = Harness::start(Setup {
        prefix: "gw-cid",
        devices: &[("victim", WEATHER, ""), ("attacker", WEATHER, "")],
        security: "",
        backend: false,
    })
    .await;
    let (victim, mut victim_events) = h.device("victim").await;
    victim.send_reading().await.unwrap();
    read_records(&h.consumer(), 20, |r| !r.is_empty()).await;
    let gateway_client_id = format!("fleetward-gateway-{}-{}", h.ns.name, h.gw);

    // The takeover loop: each connection, if it took the id, would close
    // the gateway's (or the victim's) session.
    for round in 0..4 {
        for id in [gateway_client_id.as_str(), "victim"] {
            let (client, seen, task) = raw_client(&h, "attacker", id, None).await;
            settled(&seen).await;
            assert!(seen.lock().unwrap().connected, "round {round}: {id}");
            client.disconnect().await.ok();
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    // Subscriptions beyond its own topics and a will on the victim's data
    // topic. The broker may refuse the will at connect time; either way it
    // must never be delivered.
    let forged_will = LastWill::new("device/victim/data", "{\"forged\":true}", QoS::AtLeastOnce, false);
    let (spy, spy_seen, spy_task) = raw_client(&h, "attacker", "attacker", Some(forged_will)).await;
    settled(&spy_seen).await;
    let mut spy_connected = spy_seen.lock().unwrap().connected;
    let (spy, spy_seen, spy_task) = if spy_connected {
        (spy, spy_seen, spy_task)
    } else {
        // A broker refusing the forged will: subscribe from a clean client.
        let (c, s, t) = raw_client(&h, "attacker", "attacker", None).await;
        settled(&s).await;
        spy_connected = s.lock().unwrap().connected;
        (c, s, t)
    };
    assert!(spy_connected, "{:?}", spy_seen.lock().unwrap());
    for filter in [
        "#",
        "$SYS/#",
        "$share/g/device/+/data",
        "device/+/data",
        "device/victim/command",
        "device/victim/response",
    ] {
        spy.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut sent = Vec::new();
    for _ in 0..5 {
        sent.push(victim.send_reading().await.unwrap());
    }
    let records = read_records(&h.consumer(), 30, |r| r.len() >= 6).await;
    assert_eq!(records.len(), 6, "every victim message forwarded");
    // The spy dies without a DISCONNECT, which is when a will is sent.
    spy_task.abort();
    drop(spy);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let spied = std::mem::take(&mut spy_seen.lock().unwrap().publishes);
    assert!(spied.is_empty(), "the attacker received {spied:?}");
    assert_eq!(
        h.gateway.metric("fleetward_gateway_mqtt_messages_total"),
        6.0,
        "no forged will reached the gateway"
    );
    assert!(
        !h.gateway.log_text().contains("broker connection lost"),
        "the gateway was knocked off the broker:\n{}",
        h.gateway.log_text()
    );
    assert_eq!(h.gateway.metric("fleetward_gateway_mqtt_connected"), 1.0);
    while let Ok(ev) = victim_events.try_recv() {
        assert!(
            !matches!(ev, DeviceEvent::Disconnected(_)),
            "victim knocked off: {ev:?}"
        );
    }
    h.ns.cleanup().await;
}

/// A command, signed with the device's own key, carries a payload that is
/// also valid data for the device's category. Re-published as a data
/// message (in either envelope version) it is refused: commands and data
/// sign different bytes.
#[tokio::test]
async fn a_command_republished_as_data_is_refused() {
    use rumqttc::QoS;
    let h = Harness::start(Setup {
        prefix: "gw-xdomain",
        devices: &[("lock-2", "smartLock", "")],
        security: "",
        backend: false,
    })
    .await;
    let (client, seen, _task) = raw_client(&h, "lock-2", "lock-2", None).await;
    settled(&seen).await;
    client
        .subscribe("device/lock-2/command", QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (http, key) = h.command_client().await;
    let reading = fleetward_protocol::Category::SmartLock.sample(&mut Default::default());
    let sent = http
        .post(format!("{}/command/lock-2", h.gateway.api_url))
        .bearer_auth(&key)
        .json(&reading)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    let command: serde_json::Value = loop {
        if let Some((_, body)) = seen.lock().unwrap().publishes.first() {
            break serde_json::from_slice(body).unwrap();
        }
        assert!(Instant::now() < deadline, "no command arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for version in [None, Some(2)] {
        // The command's own id and signature: only ids of validly signed
        // messages enter the replay cache, so both tries reach the check.
        let mut data = json!({
            "device_id": "lock-2",
            "timestamp": command["timestamp"],
            "message_id": command["message_id"],
            "payload": command["payload"],
            "signature": command["signature"],
        });
        if let Some(v) = version {
            data["v"] = v.into();
        }
        client
            .publish("device/lock-2/data", QoS::AtLeastOnce, false, data.to_string())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.gateway.metric("fleetward_gateway_mqtt_messages_total") < 2.0 {
        assert!(Instant::now() < deadline, "{}", h.gateway.metrics());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.gateway.accepted(), 0.0, "a command was accepted as data");
    assert_eq!(h.gateway.rejected("bad_signature"), 2.0, "{}", h.gateway.metrics());
    h.audit_has("refused as a bad signature", |r| {
        r.0 == "rejected" && r.1.as_deref() == Some("bad_signature") && r.2.as_deref() == Some("lock-2")
    })
    .await;
    h.ns.cleanup().await;
}

/// The HTTP backend is down for a few seconds: nothing is lost or doubled.
/// Messages wait, unacknowledged, while the gateway retries the failing
/// sink only (Kafka gets each message once), and all arrive once it is back.
#[tokio::test]
async fn a_sink_outage_delays_messages_and_loses_none() {
    use std::sync::atomic::Ordering;
    let h = Harness::start(Setup {
        prefix: "gw-outage",
        devices: &[("o1", WEATHER, "")],
        security: "    ratePerSecond: 100\n    burst: 100",
        backend: true,
    })
    .await;
    let (dev, _events) = h.device("o1").await;
    h.backend.down.store(true, Ordering::SeqCst);
    let mut sent = HashSet::new();
    for _ in 0..20 {
        sent.insert(dev.send_reading().await.unwrap());
    }
    // Down for longer than the old three attempts (100 + 200 ms) took.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(h.backend.calls().is_empty());
    assert!(h.gateway.metric("fleetward_gateway_backend_errors_total") >= 20.0);
    h.backend.down.store(false, Ordering::SeqCst);

    let deadline = Instant::now() + Duration::from_secs(30);
    while h.backend.calls().len() < 20 {
        assert!(
            Instant::now() < deadline,
            "backend got {} of 20:\n{}",
            h.backend.calls().len(),
            h.gateway.metrics()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = read_records(&h.consumer(), 20, |r| r.len() >= 20).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.backend.calls().len(), 20, "each message reached the backend once");
    let ids: Vec<String> = records
        .iter()
        .map(|r| r["message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 20, "each message in Kafka once");
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), sent);
    assert_eq!(h.gateway.accepted(), 20.0);
    assert_eq!(
        h.gateway
            .metric("fleetward_gateway_messages_total{reason=\"sink\",result=\"forward_failed\"}"),
        0.0
    );
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

/// A device floods malformed 60 KB messages and bad signatures: the gateway
/// refuses them for the cost of a size check once the device's refusal
/// budget is spent, audits them on a budget (rows bounded whatever the
/// rate, the rest counted in summary rows), stays small, and keeps
/// forwarding another device's messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_messages_costs_bounded_memory_audit_and_log() {
    const SECS: u64 = 12;
    let h = Harness::start(Setup {
        prefix: "gw-flood",
        devices: &[("flooder", WEATHER, ""), ("steady", WEATHER, "")],
        security: "    ratePerSecond: 100\n    burst: 100",
        backend: false,
    })
    .await;
    let (steady, _events) = h.device("steady").await;
    let log_before = h.gateway.log_text().lines().count();
    let flood = {
        let h = &h;
        async move { flood(h, "flooder", SECS).await }
    };
    let valid = async {
        let mut ids = Vec::new();
        let end = Instant::now() + Duration::from_secs(SECS);
        while Instant::now() < end {
            ids.push(steady.send_reading().await.unwrap());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ids
    };
    let watch_rss = async {
        let mut peak: f64 = 0.0;
        let end = Instant::now() + Duration::from_secs(SECS);
        while Instant::now() < end {
            peak = peak.max(rss_mib(h.gateway.pid()).0);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        peak
    };
    let (sent, ids, peak_rss) = tokio::join!(flood, valid, watch_rss);
    println!("flood: {sent} messages in {SECS} s; gateway RSS peak {peak_rss:.0} MiB");
    assert!(sent > 200, "the flood was a flood: {sent}");

    let records = read_records(&h.consumer(), 30, |r| r.len() >= ids.len()).await;
    let got: HashSet<&str> = records.iter().filter_map(|r| r["message_id"].as_str()).collect();
    let missing = ids.iter().filter(|id| !got.contains(id.as_str())).count();
    assert_eq!(missing, 0, "{missing} of {} valid messages not forwarded", ids.len());
    assert!(peak_rss < 150.0, "RSS {peak_rss} MiB");

    // Every flood message reached the gateway's count (QoS 0 ones may have
    // been dropped unread when its queue was full: counted too).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let refused: f64 = fleetward_protocol::Rejection::ALL_REASONS
        .iter()
        .map(|r| h.gateway.rejected(r))
        .sum::<f64>()
        + h.gateway.metric("fleetward_gateway_qos0_dropped_total");
    assert!(refused >= sent as f64 * 0.9, "refused {refused} of {sent}");
    assert!(
        h.gateway.rejected("rate_limited") > 0.0,
        "the refusal budget was used up"
    );
    // Audit: at most the device budget over the flood's length, plus a
    // summary per reason per 10 s (and a margin of one window).
    let windows = (SECS as f64 / 10.0).ceil() + 1.0;
    let bound = 20.0 + 2.0 * (SECS as f64 + 2.0) + 3.0 * windows;
    let rows = audit_rows(&h, "flooder").await as f64;
    println!("audit rows for the flooder: {rows} (bound {bound}); refusals {refused}");
    assert!(rows <= bound, "{rows} audit rows > {bound}");
    assert!(h.gateway.metric("fleetward_gateway_audit_suppressed_total") > 0.0);
    let log_lines = h.gateway.log_text().lines().count() - log_before;
    println!("gateway log lines during the flood: {log_lines}");
    assert!((log_lines as f64) < bound + 100.0, "{log_lines} log lines");
    h.ns.cleanup().await;
}

/// A replay is refused for as long as its timestamp is inside the window:
/// after more newer messages than the old FIFO of 1,000 ids held, and after
/// the gateway is killed and started again. A retained message (which the
/// broker would redeliver to the restarted gateway's subscription) is
/// refused by the broker and never forwarded.
#[tokio::test]
async fn a_replay_is_refused_whatever_came_between_and_across_a_restart() {
    let mut h = Harness::start(Setup {
        prefix: "gw-replay",
        devices: &[("r1", WEATHER, ""), ("r2", WEATHER, "")],
        security: "    ratePerSecond: 5000\n    burst: 5000",
        backend: false,
    })
    .await;
    let (dev, _events) = h.device("r1").await;
    let topic = fleetward_protocol::data_topic("r1");
    let first = dev.envelope(&dev.reading()).to_json().into_bytes();
    dev.publish(&topic, first.clone()).await.unwrap();
    let mut sent = HashSet::new();
    for _ in 0..1500 {
        sent.insert(dev.send_reading().await.unwrap());
    }
    wait_until("1,501 accepted", 60, || async { h.gateway.accepted() == 1501.0 }).await;

    dev.publish(&topic, first.clone()).await.unwrap();
    wait_until("the replay refused", 20, || async {
        h.gateway.rejected("replay") == 1.0
    })
    .await;
    h.audit_has("replay after 1,500 messages", |r| {
        r.1.as_deref() == Some("replay") && r.2.as_deref() == Some("r1")
    })
    .await;

    // A crash and a new process: the window comes back from the database.
    let last = dev.envelope(&dev.reading()).to_json().into_bytes();
    dev.publish(&topic, last.clone()).await.unwrap();
    wait_until("the last message accepted", 20, || async {
        h.gateway.accepted() == 1502.0
    })
    .await;
    h.gateway.kill9();
    h.gateway = start_gateway(&h.ns, &h.gw, &h.broker, &h.tmp.path().join("restarted")).await;
    assert!(
        h.gateway.log_text().contains("replay window restored"),
        "{}",
        h.gateway.log_text()
    );
    for bytes in [&first, &last] {
        dev.publish(&topic, bytes.clone()).await.unwrap();
    }
    wait_until("both replays refused after the restart", 20, || async {
        h.gateway.rejected("replay") == 2.0
    })
    .await;

    // A retained message, valid and signed, from another device: the broker
    // refuses it and drops that connection, so neither this gateway nor a
    // restarted one (a new subscription) ever receives it.
    let creds = Credentials::from_secret(h.ns.client.clone(), &h.ns.name, "r2")
        .await
        .unwrap();
    let retained = fleetward_protocol::Envelope::sign(
        &creds.hmac,
        "r2",
        chrono::Utc::now().timestamp(),
        &fleetward_protocol::new_message_id(),
        fleetward_protocol::raw(&fleetward_protocol::Category::WeatherStation.sample(&mut Default::default())),
    );
    let (raw, seen, task) = raw_client(&h, "r2", "r2", None).await;
    settled(&seen).await;
    raw.publish(
        fleetward_protocol::data_topic("r2"),
        rumqttc::QoS::AtLeastOnce,
        true,
        retained.to_json(),
    )
    .await
    .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    assert_eq!(
        seen.lock().unwrap().dropped,
        1,
        "the broker closed the publisher's connection"
    );
    let fresh = dev.send_reading().await.unwrap();
    wait_until("a valid message after the retained one", 30, || async {
        h.gateway.accepted() == 1.0
    })
    .await;
    h.gateway.kill9();
    h.gateway = start_gateway(&h.ns, &h.gw, &h.broker, &h.tmp.path().join("again")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.gateway.accepted(), 0.0, "nothing redelivered to the new subscription");

    let records = read_records(&h.consumer(), 30, |r| r.len() >= 1503).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ids: Vec<&str> = records.iter().map(|r| r["message_id"].as_str().unwrap()).collect();
    let distinct: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), 1503, "each accepted message in Kafka once");
    assert_eq!(distinct.len(), 1503);
    assert!(
        !distinct.contains(retained.message_id.as_str()),
        "the retained message was never forwarded"
    );
    assert!(distinct.contains(fresh.as_str()));
    assert!(sent.iter().all(|id| distinct.contains(id.as_str())));
    h.ns.cleanup().await;
}

/// Messages that wait at the broker while the gateway is away are judged by
/// when the broker received them, not refused as stale when it comes back;
/// a device cannot make an old message look freshly received (neither with
/// a user property of its own nor with a will), and a message that waited
/// longer than `maxQueueSeconds` is refused as such, not as an attack.
#[tokio::test]
async fn messages_queued_during_an_outage_are_judged_at_the_brokers_receipt() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties, PublishProperties};
    const WINDOW: i64 = 2;
    const MAX_QUEUE: u64 = 20;
    let mut h = Harness::start(Setup {
        prefix: "gw-queue",
        devices: &[("q1", WEATHER, ""), ("q2", WEATHER, "")],
        security: &format!("    timestampWindowSeconds: {WINDOW}\n    maxQueueSeconds: {MAX_QUEUE}"),
        backend: false,
    })
    .await;
    let (dev, _events) = h.device("q1").await;
    let before = dev.send_reading().await.unwrap();
    wait_until("the first message accepted", 20, || async {
        h.gateway.accepted() == 1.0
    })
    .await;

    // The gateway goes away; its session (and queue) stays at the broker.
    h.gateway.kill9();
    let mut queued = HashSet::new();
    for _ in 0..5 {
        queued.insert(dev.send_reading().await.unwrap());
    }
    // An MQTT 5 device claims the broker received its 100 s old message
    // when it was signed.
    let creds = Credentials::from_secret(h.ns.client.clone(), &h.ns.name, "q2")
        .await
        .unwrap();
    let sign = |ts: i64| {
        fleetward_protocol::Envelope::sign(
            &creds.hmac,
            "q2",
            ts,
            &fleetward_protocol::new_message_id(),
            fleetward_protocol::raw(&fleetward_protocol::Category::WeatherStation.sample(&mut Default::default())),
        )
    };
    let now = chrono::Utc::now().timestamp();
    let forged_stamp = |ts: i64| PublishProperties {
        user_properties: vec![("fleetward-received-ms".into(), (ts * 1000).to_string())],
        ..Default::default()
    };
    let old = sign(now - 100);
    let (v5, v5_task) = raw_client_v5(&h, "q2", None).await;
    v5.publish_with_properties(
        fleetward_protocol::data_topic("q2"),
        QoS::AtLeastOnce,
        false,
        old.to_json(),
        forged_stamp(now - 100),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    v5_task.abort();
    drop(v5);
    // And as a will, which the broker cannot stamp: a fresh signed message
    // with the forged stamp, sent when the connection drops.
    let will_msg = sign(chrono::Utc::now().timestamp());
    let will = LastWill::new(
        fleetward_protocol::data_topic("q2"),
        will_msg.to_json(),
        QoS::AtLeastOnce,
        false,
        Some(LastWillProperties {
            delay_interval: None,
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: forged_stamp(now).user_properties,
        }),
    );
    let (v5, v5_task) = raw_client_v5(&h, "q2", Some(will)).await;
    v5_task.abort();
    drop(v5);

    // Back after more than the timestamp window.
    tokio::time::sleep(Duration::from_secs(WINDOW as u64 + 2)).await;
    h.gateway = start_gateway(&h.ns, &h.gw, &h.broker, &h.tmp.path().join("back")).await;
    wait_until("the queued messages accepted", 30, || async {
        h.gateway.accepted() == 5.0
    })
    .await;
    wait_until("the forged stamp refused", 10, || async {
        h.gateway.rejected("stale_timestamp") == 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        h.gateway.metric("fleetward_gateway_mqtt_messages_total"),
        6.0,
        "five queued and the forged one; the will never reached the gateway"
    );

    // Away for longer than maxQueueSeconds.
    h.gateway.kill9();
    let too_late = dev.send_reading().await.unwrap();
    tokio::time::sleep(Duration::from_secs(MAX_QUEUE + 2)).await;
    h.gateway = start_gateway(&h.ns, &h.gw, &h.broker, &h.tmp.path().join("late")).await;
    wait_until("the message refused as expired in the queue", 30, || async {
        h.gateway.rejected("expired_in_queue") == 1.0
    })
    .await;
    assert_eq!(h.gateway.rejected("stale_timestamp"), 0.0);
    h.audit_has("expired_in_queue audited", |r| {
        r.1.as_deref() == Some("expired_in_queue") && r.2.as_deref() == Some("q1")
    })
    .await;

    let records = read_records(&h.consumer(), 30, |r| r.len() >= 6).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ids: HashSet<&str> = records.iter().map(|r| r["message_id"].as_str().unwrap()).collect();
    assert_eq!(records.len(), 6, "{ids:?}");
    assert!(ids.contains(before.as_str()));
    assert!(queued.iter().all(|id| ids.contains(id.as_str())));
    for refused in [&old.message_id, &will_msg.message_id, &too_late] {
        assert!(!ids.contains(refused.as_str()), "{refused} forwarded");
    }
    h.ns.cleanup().await;
}
