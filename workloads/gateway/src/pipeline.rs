//! Checks each device message in arrival order, forwards the valid ones
//! (several in flight at once), and acknowledges every message to the
//! broker in order once its fate is settled.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures::StreamExt;
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::v5::Publish;
use tokio::sync::mpsc;

use crate::audit::{Audit, AuditEvent, RefusalAudit};
use crate::checks::{At, Incoming, Validator};
use crate::forward::Sinks;
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::replay_store::ReplayStore;

/// Messages being forwarded at the same time. Throughput is about
/// IN_FLIGHT / forward latency (a Kafka produce with acks=all takes ~10 ms
/// here), so this matches the broker's window (`max_inflight_messages 1000`
/// in the operator's Mosquitto config): more could never be outstanding.
const IN_FLIGHT: usize = 1000;

pub struct Pipeline {
    pub validator: Validator,
    pub replay: ReplayStore,
    pub registry: Arc<Registry>,
    pub liveness: Arc<Liveness>,
    /// The limits in force; a new value applies from the next message.
    pub limits: tokio::sync::watch::Receiver<crate::checks::Limits>,
    pub sinks: Arc<Sinks>,
    pub audit: Audit,
    pub metrics: Arc<Metrics>,
    pub mqtt: AsyncClient,
    pub receipt: crate::mqtt::ReceiptToken,
}

impl Pipeline {
    /// `waiting` counts the bytes of the messages in `rx` (see `mqtt::Handoff`).
    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<(Publish, Instant)>, waiting: Arc<AtomicUsize>) {
        let Pipeline {
            mut validator,
            mut replay,
            registry,
            liveness,
            mut limits,
            sinks,
            audit,
            metrics,
            mqtt,
            mut receipt,
        } = self;
        let mut refusals = RefusalAudit::new(audit.clone(), metrics.clone());
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
            // Checks are stateful (replay cache, rate limit): they run here,
            // one message at a time, in order.
            .map(|(publish, received)| {
                waiting.fetch_sub(publish.payload.len(), Ordering::Relaxed);
                if limits.has_changed().unwrap_or(false) {
                    validator.set_limits(*limits.borrow_and_update());
                }
                let clock = Instant::now();
                let now_ms = chrono::Utc::now().timestamp_millis();
                let at = At::received(crate::mqtt::broker_received_ms(&publish, receipt.get()), now_ms, clock);
                let incoming = Incoming {
                    // The broker only delivers UTF-8 topic names (MQTT 5 §1.5.4);
                    // anything else fails the topic check.
                    topic: std::str::from_utf8(&publish.topic).unwrap_or(""),
                    body: &publish.payload,
                    retain: publish.retain,
                };
                let verdict = validator.check(incoming, at, |id| registry.get(id));
                metrics.replay_cache.set(validator.replay_entries() as i64);
                // Refusals are counted, and audited on a budget, here.
                match &verdict {
                    Ok(msg) => {
                        refusals.tick(clock);
                        liveness.seen(&msg.device_id, msg.category, now_ms as f64 / 1000.0);
                    }
                    Err(refused) => {
                        let reason = refused.rejection.reason();
                        metrics.messages.with_label_values(&["rejected", reason]).inc();
                        refusals.record(refused, clock);
                    }
                }
                // An accepted id is made durable alongside the forward, and the
                // message acknowledged once both are done.
                let durable = verdict
                    .as_ref()
                    .ok()
                    .map(|msg| replay.record(&msg.device_id, &msg.envelope.message_id, msg.replay_expires));
                let (sinks, audit, metrics) = (sinks.clone(), audit.clone(), metrics.clone());
                async move {
                    // Refusals were handled above; they are only acknowledged.
                    if let (Ok(msg), Some(durable)) = (verdict, durable) {
                        metrics.handoff.observe(received.elapsed().as_secs_f64());
                        let (forwarded, ()) = tokio::join!(sinks.forward(&msg, received), durable);
                        match forwarded {
                            Ok(()) => metrics.messages.with_label_values(&["accepted", "ok"]).inc(),
                            // Only a final answer ends here (the backend's 4xx,
                            // Kafka refusing the record): failures that may
                            // pass are retried inside forward.
                            Err(e) => {
                                metrics.messages.with_label_values(&["forward_failed", "sink"]).inc();
                                audit.record(
                                    AuditEvent::new("forward_failed")
                                        .device(&msg.device_id)
                                        .message_id(Some(&msg.envelope.message_id))
                                        .detail(e.to_string()),
                                );
                            }
                        }
                    }
                    publish
                }
            })
            .buffered(IN_FLIGHT)
            .for_each(|publish| {
                let mqtt = mqtt.clone();
                async move {
                    if let Err(e) = mqtt.ack(&publish).await {
                        tracing::warn!(error = %e, "could not acknowledge message");
                    }
                }
            })
            .await;
    }
}
