//! MQTT clients made by hand with a device's certificate: what an attacker
//! holding that certificate, or a device speaking MQTT 5, can send.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetward_simulator::Credentials;

use super::Harness;

/// What an MQTT client made by hand saw: messages delivered to it, and
/// whether the broker closed or refused its connection.
#[derive(Debug, Default)]
pub struct RawSeen {
    pub connected: bool,
    pub refused: Option<String>,
    pub publishes: Vec<(String, Vec<u8>)>,
    pub dropped: usize,
}

/// An MQTT client with a device's certificate but any client id, will and
/// subscriptions: what an attacker holding that certificate can send.
/// Polls its own event loop; never reconnects.
pub async fn raw_client(
    h: &Harness,
    device: &str,
    client_id: &str,
    will: Option<rumqttc::LastWill>,
) -> (rumqttc::AsyncClient, Arc<Mutex<RawSeen>>, tokio::task::JoinHandle<()>) {
    use rumqttc::{Event, Packet};
    let creds = Credentials::from_secret(h.ns.client.clone(), &h.ns.name, device)
        .await
        .unwrap();
    let mut o = rumqttc::MqttOptions::new(client_id, "localhost", h.broker.port);
    o.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
        creds.tls().unwrap(),
    )))
    .set_keep_alive(Duration::from_secs(5))
    .set_max_packet_size(1 << 20, 1 << 20)
    .set_clean_session(true);
    if let Some(w) = will {
        o.set_last_will(w);
    }
    let (client, mut lp) = rumqttc::AsyncClient::new(o, 100);
    let seen: Arc<Mutex<RawSeen>> = Arc::default();
    let s = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            match lp.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => s.lock().unwrap().connected = true,
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    s.lock().unwrap().publishes.push((p.topic.clone(), p.payload.to_vec()))
                }
                Ok(_) => {}
                Err(e) => {
                    let mut s = s.lock().unwrap();
                    if s.connected {
                        s.dropped += 1;
                    } else {
                        s.refused = Some(e.to_string());
                    }
                    return;
                }
            }
        }
    });
    (client, seen, task)
}

/// An MQTT 5 client with a device's certificate and id, which may set user
/// properties and a will with properties: what a device speaking MQTT 5
/// can send. Polls its own event loop until aborted.
pub async fn raw_client_v5(
    h: &Harness,
    device: &str,
    will: Option<rumqttc::v5::mqttbytes::v5::LastWill>,
) -> (rumqttc::v5::AsyncClient, tokio::task::JoinHandle<()>) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{Event, MqttOptions};
    let creds = Credentials::from_secret(h.ns.client.clone(), &h.ns.name, device)
        .await
        .unwrap();
    let mut o = MqttOptions::new(device, "localhost", h.broker.port);
    o.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
        creds.tls().unwrap(),
    )))
    .set_keep_alive(Duration::from_secs(5))
    .set_clean_start(true);
    if let Some(w) = will {
        o.set_last_will(w);
    }
    let (client, mut lp) = rumqttc::v5::AsyncClient::new(o, 100);
    let (connected_tx, connected) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut connected_tx = Some(connected_tx);
        loop {
            match lp.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(tx) = connected_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), connected)
        .await
        .expect("MQTT 5 client connected")
        .unwrap();
    (client, task)
}

/// Waits until a hand-made client is connected or refused.
pub async fn settled(seen: &Arc<Mutex<RawSeen>>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        {
            let s = seen.lock().unwrap();
            if s.connected || s.refused.is_some() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "MQTT client neither connected nor refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One device's flood: 60 KB bodies that are not JSON (QoS 0) alternating
/// with well-formed messages under a wrong key (QoS 1), as fast as its
/// connection takes them, for `secs`. Returns how many it published.
pub async fn flood(h: &Harness, device: &str, secs: u64) -> u64 {
    use fleetward_protocol::{Envelope, data_topic, new_message_id, raw};
    use rumqttc::QoS;
    let (client, seen, task) = raw_client(h, device, device, None).await;
    settled(&seen).await;
    let junk = format!("{{\"device_id\":\"{device}\",\"pad\":\"{}", "x".repeat(60_000));
    let topic = data_topic(device);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut sent = 0u64;
    while Instant::now() < deadline {
        let (body, qos) = if sent.is_multiple_of(2) {
            (junk.clone(), QoS::AtMostOnce)
        } else {
            let env = Envelope::sign(
                b"not-the-device-key",
                device,
                chrono::Utc::now().timestamp(),
                &new_message_id(),
                raw(&serde_json::json!({"temperature": 20.0, "humidity": 50, "pressure": 1000, "wind_speed": 1})),
            );
            (env.to_json(), QoS::AtLeastOnce)
        };
        // Waits while the client's queue is full: the connection's pace.
        if client.publish(topic.as_str(), qos, false, body).await.is_err() {
            break;
        }
        sent += 1;
    }
    client.disconnect().await.ok();
    task.abort();
    sent
}
