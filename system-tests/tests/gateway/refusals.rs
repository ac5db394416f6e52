//! What a device, or an attacker holding a device's certificate, may not
//! do: the seed's attacks and the limits, client ids and topics bound to
//! the identity, a command re-published as data, and a flood of refused
//! messages whose cost stays bounded.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fleetward_operator::crd::Device;
use fleetward_simulator::DeviceEvent;
use fleetward_simulator::attack::{self, Attack, AttackOptions};
use fleetward_system_tests::gateway::*;
use fleetward_testkit::rss_mib;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

use crate::WEATHER;

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
    // fleetward_broker plugin); one that slips in before the revocation
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
    // A refused message is no sign of life: the lock was never seen.
    assert!(
        !h.gateway
            .metrics()
            .contains("fleetward_gateway_device_last_seen_timestamp_seconds{"),
        "{}",
        h.gateway.metrics()
    );
    h.audit_has("refused as a bad signature", |r| {
        r.0 == "rejected" && r.1.as_deref() == Some("bad_signature") && r.2.as_deref() == Some("lock-2")
    })
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
