//! The gateway's own MQTT connection: mutual TLS with its client
//! certificate, a persistent session (the broker queues QoS 1 messages while
//! the gateway is away), manual acknowledgements (a message is acked only
//! after it was checked and forwarded, so a crash loses nothing), and
//! reconnection with exponential backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, TlsConfiguration, Transport};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::metrics::Metrics;

pub const DATA_FILTER: &str = "device/+/data";

pub fn options(cfg: &Config, tls: Arc<rustls::ClientConfig>) -> MqttOptions {
    let mut o = MqttOptions::new(cfg.client_id(), cfg.mqtt_host.clone(), cfg.mqtt_port);
    o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
    o.set_clean_session(false);
    o.set_manual_acks(true);
    o.set_keep_alive(Duration::from_secs(20));
    o.set_max_packet_size(cfg.mqtt_max_packet(), 1024 * 1024);
    o.set_inflight(1000);
    o
}

/// Drives the connection forever: hands each device message to the
/// pipeline, subscribes on every (re)connect, backs off on errors.
///
/// The hand-off never blocks: acknowledgements travel back through this
/// same event loop, so waiting here for the pipeline while the pipeline
/// waits to ack would deadlock. The queue is still bounded, by the broker:
/// it sends at most `max_inflight_messages` unacknowledged messages.
pub async fn run(
    mut eventloop: EventLoop,
    client: AsyncClient,
    tx: mpsc::UnboundedSender<(Publish, Instant)>,
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
                if tx.send((p, Instant::now())).is_err() {
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
