//! The gateway's own MQTT connection: mutual TLS with its client
//! certificate, a persistent session (the broker queues QoS 1 messages while
//! the gateway is away), manual acknowledgements (a message is acked only
//! after it was checked and forwarded, so a crash loses nothing), and
//! reconnection with exponential backoff.
//!
//! MQTT 5, for one property: the broker's plugin stamps each message with
//! the time it received it (`fleetward-received-ms`), and the checks judge
//! freshness by that time (see `checks`). Devices may speak 3.1.1 or 5.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::metrics::Metrics;

pub const DATA_FILTER: &str = "device/+/data";
/// The user property the broker's plugin adds: Unix milliseconds at receipt.
pub use fleetward_protocol::broker::RECEIVED_PROPERTY;

/// Bytes of messages waiting for the checks beyond which QoS 0 ones are
/// dropped unread: a count would let a thousand 128 KB bodies wait.
pub const QOS0_QUEUE_BYTES: usize = 8 << 20;

/// The MQTT loop's side of the queue to the pipeline, with the bytes of
/// the messages waiting in it (the pipeline subtracts each as it takes it).
pub struct Handoff {
    pub tx: mpsc::UnboundedSender<(Publish, Instant)>,
    pub waiting: Arc<AtomicUsize>,
}

pub fn options(cfg: &Config, tls: Arc<rustls::ClientConfig>) -> MqttOptions {
    let mut o = MqttOptions::new(cfg.client_id(), cfg.mqtt_host.clone(), cfg.mqtt_port);
    o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
    o.set_clean_start(false);
    // MQTT 5 ends a session with its connection unless told otherwise: the
    // broker keeps this one (and its queue) while the gateway is away.
    o.set_session_expiry_interval(Some(u32::MAX));
    o.set_manual_acks(true);
    o.set_keep_alive(Duration::from_secs(20));
    o.set_max_packet_size(Some(cfg.mqtt_max_packet() as u32));
    // The broker sends at most this many unacknowledged QoS 1 messages.
    o.set_receive_maximum(Some(1000));
    o.set_outgoing_inflight_upper_limit(1000);
    o
}

/// When the broker received `p` (Unix milliseconds): the last
/// `fleetward-received-ms` user property, the one the broker appended
/// after any the publisher sent.
pub fn broker_received_ms(p: &Publish) -> Option<i64> {
    let props = p.properties.as_ref()?;
    let (_, value) = props
        .user_properties
        .iter()
        .rev()
        .find(|(k, _)| k == RECEIVED_PROPERTY)?;
    value.parse().ok()
}

/// Drives the connection forever: hands each device message to the
/// pipeline, subscribes on every (re)connect, backs off on errors.
///
/// The hand-off never blocks: acknowledgements travel back through this
/// same event loop, so waiting here for the pipeline while the pipeline
/// waits to ack would deadlock. The queue is still bounded: QoS 1 messages
/// by the broker (it sends at most `max_inflight_messages` unacknowledged),
/// QoS 0 ones here, dropped unread once `QOS0_QUEUE_BYTES` wait (QoS 0
/// promises no delivery; a device flooding with it must not grow memory).
pub async fn run(
    mut eventloop: EventLoop,
    client: AsyncClient,
    tx: Handoff,
    metrics: Arc<Metrics>,
    connections: tokio::sync::watch::Sender<u64>,
) {
    const FIRST: Duration = Duration::from_millis(250);
    let mut backoff = FIRST;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                metrics.mqtt_connected.set(1);
                backoff = FIRST;
                tracing::info!(session_present = ack.session_present, "connected to broker");
                if let Err(e) = client.try_subscribe(DATA_FILTER, QoS::AtLeastOnce) {
                    tracing::error!(error = %e, "could not subscribe");
                }
                connections.send_modify(|n| *n += 1);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                metrics.mqtt_messages.inc();
                if p.qos == QoS::AtMostOnce && tx.waiting.load(Ordering::Relaxed) >= QOS0_QUEUE_BYTES {
                    metrics.qos0_dropped.inc();
                    continue;
                }
                tx.waiting.fetch_add(p.payload.len(), Ordering::Relaxed);
                if tx.tx.send((p, Instant::now())).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                metrics.mqtt_connected.set(0);
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker connection lost");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
