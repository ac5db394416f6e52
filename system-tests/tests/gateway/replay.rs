//! Replay: a message id is accepted once, whatever came between and across
//! a restart of the gateway.

use std::collections::HashSet;
use std::time::Duration;

use fleetward_simulator::Credentials;
use fleetward_system_tests::gateway::*;
use fleetward_testkit::*;

use crate::WEATHER;

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
