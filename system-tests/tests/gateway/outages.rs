//! Outages: the broker restarting, a sink down, and the gateway away while
//! messages wait at the broker; nothing is lost and nothing is misjudged.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fleetward_simulator::Credentials;
use fleetward_system_tests::gateway::*;
use fleetward_testkit::*;

use crate::WEATHER;

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

/// A QoS 1 will on `device`'s data topic carrying `message` and a
/// broker receipt stamp the device wrote itself, of Unix second `stamp`.
fn will_with_forged_stamp(device: &str, message: String, stamp: i64) -> rumqttc::v5::mqttbytes::v5::LastWill {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties};
    LastWill::new(
        fleetward_protocol::data_topic(device),
        message,
        QoS::AtLeastOnce,
        false,
        Some(LastWillProperties {
            delay_interval: None,
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![(
                fleetward_protocol::broker::RECEIVED_PROPERTY.into(),
                (stamp * 1000).to_string(),
            )],
        }),
    )
}

/// Messages that wait at the broker while the gateway is away are judged by
/// when the broker received them, not refused as stale when it comes back;
/// a device cannot make an old message look freshly received (neither with
/// a user property of its own nor with a will), and a message that waited
/// longer than `maxQueueSeconds` is refused as such, not as an attack.
#[tokio::test]
async fn messages_queued_during_an_outage_are_judged_at_the_brokers_receipt() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
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
        user_properties: vec![(
            fleetward_protocol::broker::RECEIVED_PROPERTY.into(),
            (ts * 1000).to_string(),
        )],
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
    let will = will_with_forged_stamp("q2", will_msg.to_json(), now);
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

/// The will attack on receipt time: a device connects with a will on its
/// data topic carrying a message signed 15 s ago and a forged broker stamp
/// of the same moment, then connects again with the same certificate. The
/// broker takes the session over and publishes the old session's will
/// while that session is still open, so the plugin cannot refuse it; it
/// arrives unstamped by the broker, with the device's stamp only. The
/// gateway trusts a stamp only when the pod's receipt token follows it, so
/// it judges the message at its own receipt: 15 s old against a 2 s
/// window, refused as stale (with the forged stamp trusted it would have
/// passed as a message that waited 15 s in the queue).
#[tokio::test]
async fn a_will_sent_on_session_takeover_cannot_backdate_a_message() {
    const WINDOW: i64 = 2;
    let h = Harness::start(Setup {
        prefix: "gw-will-takeover",
        devices: &[("w1", WEATHER, "")],
        security: &format!("    timestampWindowSeconds: {WINDOW}\n    maxQueueSeconds: 60"),
        backend: false,
    })
    .await;
    let creds = Credentials::from_secret(h.ns.client.clone(), &h.ns.name, "w1")
        .await
        .unwrap();
    let signed_at = chrono::Utc::now().timestamp() - 15;
    let backdated = fleetward_protocol::Envelope::sign(
        &creds.hmac,
        "w1",
        signed_at,
        &fleetward_protocol::new_message_id(),
        fleetward_protocol::raw(&fleetward_protocol::Category::WeatherStation.sample(&mut Default::default())),
    );
    let will = will_with_forged_stamp("w1", backdated.to_json(), signed_at);
    let (first, first_task) = raw_client_v5(&h, "w1", Some(will)).await;
    // The same certificate again: the broker takes the session over and
    // sends the first connection's will.
    let (second, second_task) = raw_client_v5(&h, "w1", None).await;
    first_task.abort();
    wait_until("the will refused as stale", 20, || async {
        h.gateway.rejected("stale_timestamp") >= 1.0
    })
    .await;
    assert_eq!(h.gateway.accepted(), 0.0, "the backdated will was accepted");
    second_task.abort();
    drop((first, second));
    h.audit_has("stale_timestamp audited", |r| {
        r.1.as_deref() == Some("stale_timestamp") && r.2.as_deref() == Some("w1")
    })
    .await;
    h.ns.cleanup().await;
}
