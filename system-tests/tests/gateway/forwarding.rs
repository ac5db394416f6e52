//! Valid traffic end to end: what a device sends reaches the backend and
//! Kafka, replies come back, and a client written by a third party from the
//! protocol's description is verified.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fleetward_simulator::DeviceEvent;
use fleetward_system_tests::gateway::*;
use fleetward_testkit::*;

use crate::WEATHER;

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
    // The device was seen just now, and counts online once the gateway's
    // sweep (every 10 s) has run.
    let seen = h.gateway.metric(&format!(
        r#"fleetward_gateway_device_last_seen_timestamp_seconds{{category="{WEATHER}",device="d1"}}"#
    ));
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    assert!((0.0..60.0).contains(&(now - seen)), "last seen {seen}, now {now}");
    wait_until("d1 counted online", 20, || async {
        h.gateway.metric("fleetward_gateway_devices_online") == 1.0
    })
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
