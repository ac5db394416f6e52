//! The gateway's own MQTT connection: mutual TLS with its client
//! certificate, a persistent session (the broker queues QoS 1 messages while
//! the gateway is away), manual acknowledgements (a message is acked only
//! after it was checked and forwarded, so a crash loses nothing), and
//! reconnection with the shared backoff, and a clean DISCONNECT on SIGTERM
//! once every message received is forwarded and acknowledged (see `run`).
//!
//! MQTT 5, for one property: the broker's plugin stamps each message with
//! the time it received it (`fleetward-received-ms`, followed by the pod's
//! receipt token so a device cannot pass off a stamp of its own), and the
//! checks judge freshness by that time (see `checks`). Devices may speak
//! 3.1.1 or 5.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fleetward_service::backoff::Backoff;
use fleetward_service::shutdown::Shutdown;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::metrics::Metrics;

pub const DATA_FILTER: &str = "device/+/data";
/// The user properties the broker's plugin adds: Unix milliseconds at
/// receipt, then (on data topics) the pod's receipt token.
pub use fleetward_protocol::broker::{RECEIPT_TOKEN_LEN, RECEIPT_TOKEN_PROPERTY, RECEIVED_PROPERTY};

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

/// The broker's receipt token: a secret the plugin makes when the broker
/// starts and writes to a file in the pod (`RECEIPT_TOKEN_FILE`), and puts
/// after each stamp on a device data topic. Read from the file once it is
/// there (the broker makes it before it accepts a connection, so before
/// any message can arrive). Without it no stamp is trusted.
pub struct ReceiptToken {
    path: Option<std::path::PathBuf>,
    token: Option<String>,
}

impl ReceiptToken {
    pub fn new(path: Option<std::path::PathBuf>) -> Self {
        ReceiptToken { path, token: None }
    }

    /// The token, reading its file while it has not been read.
    pub fn get(&mut self) -> Option<&str> {
        if self.token.is_none()
            && let Some(path) = &self.path
        {
            self.token = std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| t.len() == RECEIPT_TOKEN_LEN && t.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        self.token.as_deref()
    }
}

/// When the broker received `p` (Unix milliseconds): the stamp the broker
/// appended, which is the second-last user property, followed by the
/// receipt token. A stamp without the token after it was written by the
/// device (in a will, which the broker publishes without stamping, or
/// with no broker plugin at all, as on AWS IoT Core): `None`, and the
/// gateway judges the message at its own receipt.
pub fn broker_received_ms(p: &Publish, token: Option<&str>) -> Option<i64> {
    let token = token?;
    let props = p.properties.as_ref()?;
    let [.., (stamp, value), (marker, presented)] = props.user_properties.as_slice() else {
        return None;
    };
    let genuine = stamp == RECEIVED_PROPERTY
        && marker == RECEIPT_TOKEN_PROPERTY
        && presented.len() == token.len()
        && presented
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    genuine.then(|| value.parse().ok()).flatten()
}

/// How the connection ends on a stop request (SIGTERM): see [`run`].
pub struct Stop {
    pub requested: Shutdown,
    /// The pipeline task: it ends once the hand-off queue is closed and
    /// every message it took is forwarded and its acknowledgement queued.
    pub pipeline: JoinHandle<()>,
    /// How long the pipeline may take to finish after the stop request.
    pub drain: Duration,
}

/// How long the broker may take to close the connection after our
/// DISCONNECT (it does so as soon as it has read it).
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Drives the connection until a stop request has been carried out: hands
/// each device message to the pipeline, subscribes on every (re)connect,
/// backs off on errors.
///
/// The hand-off never blocks: acknowledgements travel back through this
/// same event loop, so waiting here for the pipeline while the pipeline
/// waits to ack would deadlock. The queue is still bounded: QoS 1 messages
/// by the broker (it sends at most `max_inflight_messages` unacknowledged),
/// QoS 0 ones here, dropped unread once `QOS0_QUEUE_BYTES` wait (QoS 0
/// promises no delivery; a device flooding with it must not grow memory).
///
/// On a stop request, in this order:
/// 1. the hand-off queue closes: messages arriving from then on stay
///    unacknowledged, and the broker redelivers them to the next gateway
///    (the session outlives the connection);
/// 2. the event loop keeps running while the pipeline forwards what it took
///    and queues its acknowledgements (at most `stop.drain`; after that the
///    pipeline is aborted, so no acknowledgement can follow the DISCONNECT);
/// 3. DISCONNECT is queued. Requests leave the event loop's one channel in
///    order, each written and flushed before the next is taken, so every
///    acknowledgement is on the wire before it;
/// 4. the event loop is polled until the broker closes the connection (or
///    `CLOSE_WAIT`): closing first could reset the connection while the
///    broker still has our last packets unread.
///
/// The event loop's `poll` is never dropped half-way (it may be writing a
/// packet): a stop request is noticed beside the pending poll, which is
/// then awaited to its end.
pub async fn run(
    mut eventloop: EventLoop,
    client: AsyncClient,
    tx: Handoff,
    metrics: Arc<Metrics>,
    connections: tokio::sync::watch::Sender<u64>,
    mut stop: Stop,
) {
    let mut handoff = Some(tx);
    let mut backoff = Backoff::standard();
    let mut drain_deadline = None;
    let mut disconnect_queued = false;
    let mut close_deadline = None;
    loop {
        let event = {
            let poll = eventloop.poll();
            tokio::pin!(poll);
            loop {
                // The stop's steps first: under a steady stream of messages
                // the poll is nearly always ready and would starve them.
                tokio::select! {
                    biased;
                    _ = stop.requested.triggered(), if handoff.is_some() => {
                        tracing::info!(deadline_s = stop.drain.as_secs(),
                            "no more messages taken; forwarding and acknowledging those received");
                        handoff = None;
                        drain_deadline = Some(tokio::time::Instant::now() + stop.drain);
                    }
                    res = &mut stop.pipeline, if drain_deadline.is_some() && !disconnect_queued => {
                        if let Err(e) = res {
                            tracing::error!(error = %e, "the pipeline ended abnormally");
                        }
                        queue_disconnect(&client, "every message received was forwarded and acknowledged");
                        disconnect_queued = true;
                        close_deadline = Some(tokio::time::Instant::now() + CLOSE_WAIT);
                    }
                    _ = sleep_until_some(drain_deadline), if !disconnect_queued => {
                        stop.pipeline.abort();
                        // Aborted: no acknowledgement can be queued after the DISCONNECT.
                        let _ = (&mut stop.pipeline).await;
                        queue_disconnect(&client, "drain deadline passed; the broker redelivers what is unacknowledged");
                        disconnect_queued = true;
                        close_deadline = Some(tokio::time::Instant::now() + CLOSE_WAIT);
                    }
                    _ = sleep_until_some(close_deadline) => {
                        tracing::warn!("the connection did not end within {CLOSE_WAIT:?} of the DISCONNECT request");
                        return;
                    }
                    event = &mut poll => break event,
                }
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                metrics.mqtt_connected.set(1);
                backoff.reset();
                tracing::info!(session_present = ack.session_present, "connected to broker");
                if let Err(e) = client.try_subscribe(DATA_FILTER, QoS::AtLeastOnce) {
                    tracing::error!(error = %e, "could not subscribe");
                }
                connections.send_modify(|n| *n += 1);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                metrics.mqtt_messages.inc();
                // Stopping: left unacknowledged for the broker to redeliver.
                let Some(tx) = &handoff else { continue };
                if p.qos == QoS::AtMostOnce && tx.waiting.load(Ordering::Relaxed) >= QOS0_QUEUE_BYTES {
                    metrics.qos0_dropped.inc();
                    continue;
                }
                tx.waiting.fetch_add(p.payload.len(), Ordering::Relaxed);
                if tx.tx.send((p, Instant::now())).is_err() {
                    return;
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                tracing::info!("DISCONNECT sent; waiting for the broker to close the connection");
                close_deadline = Some(tokio::time::Instant::now() + CLOSE_WAIT);
            }
            Ok(_) => {}
            // After DISCONNECT: the broker closing is the end. Before it was
            // sent: no reconnecting to send it; the session keeps what is
            // unacknowledged.
            Err(e) if disconnect_queued => {
                metrics.mqtt_connected.set(0);
                tracing::info!(detail = %e, "disconnected from the broker");
                return;
            }
            Err(e) => {
                metrics.mqtt_connected.set(0);
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "broker connection lost");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn queue_disconnect(client: &AsyncClient, why: &str) {
    tracing::info!(why, "disconnecting from the broker");
    // The request channel has room for an ack of every in-flight message
    // and more; full, the connection cannot be served anyway.
    if let Err(e) = client.try_disconnect() {
        tracing::warn!(error = %e, "could not queue DISCONNECT");
    }
}

/// Never resolves for `None`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;

    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn with(props: &[(&str, &str)]) -> Publish {
        let user_properties = props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Publish::new(
            "device/d1/data",
            QoS::AtLeastOnce,
            "{}",
            Some(PublishProperties {
                user_properties,
                ..Default::default()
            }),
        )
    }

    #[test]
    fn only_a_stamp_followed_by_the_pods_token_is_the_brokers() {
        let broker = [(RECEIVED_PROPERTY, "1770000000000"), (RECEIPT_TOKEN_PROPERTY, TOKEN)];
        assert_eq!(broker_received_ms(&with(&broker), Some(TOKEN)), Some(1_770_000_000_000));
        // After a device's own forged pair, the broker's still counts.
        let forged_then_broker = [
            (RECEIVED_PROPERTY, "1"),
            (RECEIPT_TOKEN_PROPERTY, "guess"),
            (RECEIVED_PROPERTY, "1770000000000"),
            (RECEIPT_TOKEN_PROPERTY, TOKEN),
        ];
        assert_eq!(
            broker_received_ms(&with(&forged_then_broker), Some(TOKEN)),
            Some(1_770_000_000_000)
        );
        // A will: only what the device wrote.
        for device_only in [
            &[(RECEIVED_PROPERTY, "1")][..],
            &[(RECEIVED_PROPERTY, "1"), (RECEIPT_TOKEN_PROPERTY, "guess")][..],
            &[(RECEIVED_PROPERTY, "1"), (RECEIPT_TOKEN_PROPERTY, &TOKEN[..63])][..],
            &[(RECEIPT_TOKEN_PROPERTY, TOKEN), (RECEIVED_PROPERTY, "1")][..],
            &[][..],
        ] {
            assert_eq!(
                broker_received_ms(&with(device_only), Some(TOKEN)),
                None,
                "{device_only:?}"
            );
        }
        // No token known (no plugin, as on AWS IoT Core): no stamp counts.
        assert_eq!(broker_received_ms(&with(&broker), None), None);
    }

    #[test]
    fn the_token_is_read_once_its_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let mut token = ReceiptToken::new(Some(path.clone()));
        assert_eq!(token.get(), None);
        std::fs::write(&path, "not a token").unwrap();
        assert_eq!(token.get(), None);
        std::fs::write(&path, TOKEN).unwrap();
        assert_eq!(token.get(), Some(TOKEN));
        assert_eq!(ReceiptToken::new(None).get(), None);
    }
}
