//! The command API: commands signed by the gateway, verified by the device,
//! and refused without the API's key.

use std::time::Duration;

use fleetward_simulator::DeviceEvent;
use fleetward_system_tests::gateway::*;
use serde_json::json;

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

/// The attack of a compromised billing pod: with the meter key it holds
/// (the Gateway's `gw-command-meter`), try to unlock a smart lock, to send
/// read_meter to the lock, and to smuggle another action past the check
/// (a second `action`, an extra field). Each is 403 `out_of_scope`,
/// audited, and nothing reaches the lock; read_meter to a meter goes
/// through, and the command key still unlocks.
#[tokio::test]
async fn the_meter_key_cannot_unlock_a_lock() {
    let h = Harness::start(Setup {
        prefix: "gw-cmd-scope",
        devices: &[("lock-1", "smartLock", ""), ("meter-1", "electricityMeter", "")],
        security: "",
        backend: true,
    })
    .await;
    let (_lock, mut lock_events) = h.device("lock-1").await;
    let (_meter, mut meter_events) = h.device("meter-1").await;
    let (http, command_key) = h.command_client().await;
    let meter_key = h.ns.secret_value("gw-command-meter", "api-key").await;
    assert_ne!(meter_key, command_key);
    let send = |device: &str, key: &str, body: &str| {
        http.post(format!("{}/command/{device}", h.gateway.api_url))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    for (device, body) in [
        ("lock-1", r#"{"action": "unlock"}"#),
        ("lock-1", r#"{"action": "read_meter", "period": "2026-11"}"#),
        ("meter-1", r#"{"action": "read_meter", "action": "unlock"}"#),
        ("meter-1", r#"{"action": "read_meter", "relay": "off"}"#),
        ("meter-1", r#"{"action": "disconnect_supply"}"#),
    ] {
        let r = send(device, &meter_key, body).await.unwrap();
        assert_eq!(r.status(), 403, "{device} {body}");
    }
    let quiet_until = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(ev)) = tokio::time::timeout_at(quiet_until, lock_events.recv()).await {
        assert!(
            !matches!(ev, DeviceEvent::Command { .. }),
            "a refused call reached the lock"
        );
    }
    h.audit_has("out of scope audited", |r| {
        r.0 == "command_refused" && r.1.as_deref() == Some("out_of_scope") && r.2.as_deref() == Some("lock-1")
    })
    .await;

    // What the key is for: read_meter to a meter, exactly as checked.
    let ok = send(
        "meter-1",
        &meter_key,
        r#"{"action": "read_meter", "period": "2026-11"}"#,
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 202);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, meter_events.recv()).await {
            Ok(Some(DeviceEvent::Command { payload, verdict, .. })) => {
                assert_eq!(verdict, Ok(()));
                assert_eq!(
                    serde_json::from_str::<serde_json::Value>(&payload).unwrap(),
                    json!({"action": "read_meter", "period": "2026-11"})
                );
                break;
            }
            Ok(Some(_)) => {}
            _ => panic!("read_meter did not arrive"),
        }
    }
    // The command key is not limited.
    let unlock = send("lock-1", &command_key, r#"{"action": "unlock"}"#).await.unwrap();
    assert_eq!(unlock.status(), 202);
    assert!(!h.gateway.log_text().contains(&meter_key), "meter key in the log");
    h.ns.cleanup().await;
}
