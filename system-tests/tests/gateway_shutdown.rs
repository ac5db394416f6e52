//! A gateway pod's SIGTERM: the real gateway binary, real Mosquitto (TLS,
//! the operator's configuration and plugin), real Kafka and PostgreSQL.
//! Devices publish QoS 1 continuously while the gateway is told to stop; it
//! must finish what it took, leave the broker with a clean DISCONNECT, exit
//! 0, and a restarted gateway must bring every message the broker
//! acknowledged to a device into Kafka exactly once.
//!
//! The devices talk to the broker, not to the gateway: none of their
//! connections may end while the gateway leaves.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetward_operator::mosquitto::GATEWAY_IDENTITY;
use fleetward_protocol::{Category, Envelope, data_topic, new_message_id, raw};
use fleetward_simulator::Credentials;
use fleetward_system_tests::gateway::*;
use fleetward_testkit::wait_until;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport};

const DEVICES: [&str; 4] = ["sd1", "sd2", "sd3", "sd4"];

/// One device publishing signed readings at QoS 1 until told to stop,
/// keeping the ids of the messages the broker acknowledged (PUBACK).
struct Publisher {
    acked: Arc<Mutex<Vec<String>>>,
    /// Why the device's connection ended, if it did.
    lost: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    client: AsyncClient,
    sending: tokio::task::JoinHandle<usize>,
    polling: tokio::task::JoinHandle<()>,
}

impl Publisher {
    async fn start(h: &Harness, device: &'static str) -> Publisher {
        let creds = Credentials::from_secret(h.ns.client.clone(), &h.ns.name, device)
            .await
            .unwrap();
        let mut o = MqttOptions::new(device, "localhost", h.broker.port);
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(creds.tls().unwrap())))
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_inflight(20);
        let (client, mut lp) = AsyncClient::new(o, 100);
        // Packet ids are given in the order the publishes are queued: the
        // next Outgoing::Publish is the oldest id queued.
        let queued: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let acked: Arc<Mutex<Vec<String>>> = Arc::default();
        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        let (connected_tx, connected) = tokio::sync::oneshot::channel();
        let polling = tokio::spawn({
            let (queued, acked, lost) = (queued.clone(), acked.clone(), lost.clone());
            async move {
                let mut connected_tx = Some(connected_tx);
                let mut outstanding: HashMap<u16, String> = HashMap::new();
                loop {
                    match lp.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            if let Some(tx) = connected_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                            let id = queued.lock().unwrap().pop_front().expect("a queued message");
                            outstanding.insert(pkid, id);
                        }
                        Ok(Event::Incoming(Packet::PubAck(ack))) => {
                            let id = outstanding.remove(&ack.pkid).expect("an outstanding packet id");
                            acked.lock().unwrap().push(id);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            // Never reconnects: a lost connection is a finding.
                            *lost.lock().unwrap() = Some(e.to_string());
                            return;
                        }
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(20), connected)
            .await
            .unwrap_or_else(|_| panic!("device {device} did not connect"))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let sending = tokio::spawn({
            let (stop, client) = (stop.clone(), client.clone());
            async move {
                let mut state = Default::default();
                let mut sent = 0;
                while !stop.load(Ordering::SeqCst) {
                    let id = new_message_id();
                    let env = Envelope::sign(
                        &creds.hmac,
                        device,
                        chrono::Utc::now().timestamp(),
                        &id,
                        raw(&Category::WeatherStation.sample(&mut state)),
                    );
                    queued.lock().unwrap().push_back(id);
                    if client
                        .publish(data_topic(device), QoS::AtLeastOnce, false, env.to_json())
                        .await
                        .is_err()
                    {
                        break;
                    }
                    sent += 1;
                    tokio::time::sleep(Duration::from_millis(4)).await;
                }
                sent
            }
        });
        Publisher {
            acked,
            lost,
            stop,
            client,
            sending,
            polling,
        }
    }

    /// Stops sending, waits for the broker's acknowledgement of every
    /// message sent, disconnects; returns the acknowledged ids.
    async fn finish(self, device: &str) -> Vec<String> {
        let Publisher {
            acked,
            lost,
            stop,
            client,
            sending,
            polling,
        } = self;
        stop.store(true, Ordering::SeqCst);
        let sent = sending.await.unwrap();
        wait_until(
            &format!("the broker acknowledging all {sent} messages of {device}"),
            30,
            || async { acked.lock().unwrap().len() >= sent || lost.lock().unwrap().is_some() },
        )
        .await;
        assert_eq!(*lost.lock().unwrap(), None, "device {device}'s connection was closed");
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(10), polling).await;
        let acked = acked.lock().unwrap().clone();
        assert_eq!(acked.len(), sent, "device {device}: acknowledged exactly what it sent");
        acked
    }

    fn lost(&self) -> Option<String> {
        self.lost.lock().unwrap().clone()
    }
}

/// The broker's log lines about the gateway's own connection.
fn gateway_lines(broker_log: &str) -> Vec<String> {
    broker_log
        .lines()
        .filter(|l| l.contains(GATEWAY_IDENTITY))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_disconnects_cleanly_and_loses_no_acknowledged_message() {
    let mut h = Harness::start(Setup {
        prefix: "gw-sigterm",
        devices: &DEVICES.map(|d| (d, "weatherStation", "")),
        security: "    ratePerSecond: 5000\n    burst: 5000",
        backend: false,
    })
    .await;
    let broker_log_path = h.broker.dir.join("mosquitto.log");
    let mut publishers = Vec::new();
    for d in DEVICES {
        publishers.push(Publisher::start(&h, d).await);
    }

    // Mid-stream: the gateway is forwarding, more keeps coming.
    wait_until("the gateway forwarding", 60, || async { h.gateway.accepted() >= 200.0 }).await;
    let before = gateway_lines(&std::fs::read_to_string(&broker_log_path).unwrap()).len();
    h.gateway.signal("-TERM");
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = h.gateway.exit_status() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(40),
            "the gateway did not exit within 40 s of SIGTERM; log:\n{}",
            h.gateway.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stopped_log = h.gateway.log_text();
    assert!(
        status.success(),
        "the gateway exited with {status}; log:\n{stopped_log}"
    );
    assert!(
        stopped_log.contains("every message received was forwarded and acknowledged"),
        "the gateway did not drain before disconnecting; log:\n{stopped_log}"
    );

    // (b) The broker saw a DISCONNECT, not a dropped or broken connection.
    let broker_log = std::fs::read_to_string(&broker_log_path).unwrap();
    let lines = gateway_lines(&broker_log);
    let after: Vec<&String> = lines[before..].iter().collect();
    assert!(
        after
            .iter()
            .any(|l| l.ends_with(&format!("Client {GATEWAY_IDENTITY} disconnected."))),
        "no clean disconnect of the gateway in the broker's log:\n{after:#?}"
    );
    assert!(
        !after.iter().any(|l| {
            l.contains("rotocol error")
                || l.contains("closed its connection")
                || l.contains("Socket error")
                || l.contains("exceeded timeout")
                || l.contains("malformed")
        }),
        "the gateway's connection ended badly:\n{after:#?}"
    );

    // The devices keep publishing to the broker while no gateway is there.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (p, d) in publishers.iter().zip(DEVICES) {
        assert_eq!(
            p.lost(),
            None,
            "device {d}'s connection was closed while the gateway left"
        );
    }
    let mut acked = Vec::new();
    for (p, d) in publishers.into_iter().zip(DEVICES) {
        acked.extend(p.finish(d).await);
    }
    let acked_ids: HashSet<&str> = acked.iter().map(String::as_str).collect();
    assert_eq!(acked_ids.len(), acked.len(), "message ids are unique");

    // (c) A restarted gateway catches up: each acknowledged message is in
    // Kafka, once.
    h.gateway = start_gateway(&h.ns, &h.gw, &h.broker, &h.tmp.path().join("restarted")).await;
    let kafka = h.consumer();
    let mut records = read_records(&kafka, 90, |r| {
        r.iter()
            .filter(|x| acked_ids.contains(x["message_id"].as_str().unwrap_or("")))
            .map(|x| x["message_id"].as_str().unwrap_or(""))
            .collect::<HashSet<_>>()
            .len()
            >= acked_ids.len()
    })
    .await;
    // Room for a duplicate to show up.
    records.extend(read_records(&kafka, 3, |_| false).await);
    let mut count: HashMap<&str, usize> = HashMap::new();
    for r in &records {
        *count.entry(r["message_id"].as_str().unwrap()).or_default() += 1;
    }
    let missing: Vec<&&str> = acked_ids.iter().filter(|id| !count.contains_key(**id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages never reached Kafka, e.g. {:?}",
        missing.len(),
        acked_ids.len(),
        missing.iter().take(3).collect::<Vec<_>>()
    );
    let twice: Vec<(&&str, &usize)> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "forwarded more than once: {twice:?}");
    assert_eq!(
        h.gateway.rejected("replay"),
        0.0,
        "nothing redelivered that was forwarded"
    );
    h.ns.cleanup().await;
}
