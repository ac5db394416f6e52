//! Where valid messages go: the HTTP backend of seed 003 (its answer is
//! published to `device/{id}/response`) and/or a Kafka topic keyed by device
//! id (idempotent producer, acks=all).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use fleetward_protocol::record::{RecordKey, mac_header};
use fleetward_protocol::response_topic;
use fleetward_protocol::telemetry::TelemetryRecord;
use fleetward_service::backoff::Backoff;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;

use crate::checks::Accepted;
use crate::metrics::Metrics;

/// Largest backend answer relayed to a device.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
// A message is retried, with the shared backoff, until its sinks take it
// (it stays unacknowledged meanwhile, so the broker keeps it and, once its
// window of unacknowledged messages is full, holds back the rest): a sink
// outage delays messages, it does not lose them. A sink's final answer
// about one message (the backend's 4xx, Kafka refusing the record) ends
// its retries: it is audited as `forward_failed` and acknowledged, so it
// cannot hold back the messages behind it.

#[derive(thiserror::Error, Debug)]
pub enum ForwardError {
    #[error("backend request failed: {0}")]
    Backend(String),
    #[error("backend answered HTTP {0}")]
    BackendStatus(u16),
    #[error("kafka client: {0}")]
    KafkaClient(#[from] rdkafka::error::KafkaError),
    #[error("kafka connection settings: {0}")]
    KafkaSettings(#[from] fleetward_protocol::kafka::KafkaSecurityError),
    /// Kafka's answer about this record (too large, invalid): asking again
    /// gets the same answer.
    #[error("kafka refused the record: {0}")]
    KafkaRefused(rdkafka::error::KafkaError),
}

/// Whether Kafka refused this record for what it is, so that a retry
/// cannot succeed (unlike an outage, a leader change or a full queue).
pub fn refused_for_good(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        e.rdkafka_error_code(),
        Some(Code::MessageSizeTooLarge | Code::InvalidMessageSize | Code::MessageBatchTooLarge | Code::InvalidRecord)
    )
}

pub struct Sinks {
    gateway: String,
    namespace: String,
    http: Option<(reqwest::Client, String)>,
    kafka: Option<(FutureProducer, String)>,
    /// Signs every record (`RECORD_MAC_HEADER`); without it records go
    /// unsigned, and consumers that hold a key refuse them.
    record_key: Option<RecordKey>,
    mqtt: AsyncClient,
    metrics: Arc<Metrics>,
}

impl Sinks {
    pub fn new(
        gateway: &str,
        namespace: &str,
        backend: Option<(&str, Duration)>,
        kafka: Option<(&str, &str)>,
        record_key: Option<RecordKey>,
        mqtt: AsyncClient,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ForwardError> {
        let http = match backend {
            Some((url, timeout)) => Some((
                reqwest::Client::builder()
                    .timeout(timeout)
                    .build()
                    .map_err(|e| ForwardError::Backend(e.to_string()))?,
                url.trim_end_matches('/').to_string(),
            )),
            None => None,
        };
        let kafka = match kafka {
            Some((brokers, topic)) => Some((producer(brokers)?, topic.to_string())),
            None => None,
        };
        Ok(Self {
            gateway: gateway.to_string(),
            namespace: namespace.to_string(),
            http,
            kafka,
            record_key,
            mqtt,
            metrics,
        })
    }

    /// Delivers one accepted message to every configured sink.
    pub async fn forward(&self, msg: &Accepted, received: Instant) -> Result<(), ForwardError> {
        let (kafka, http) = tokio::join!(self.to_kafka(msg, received), self.to_backend(msg, received));
        kafka.and(http)
    }

    async fn to_kafka(&self, msg: &Accepted, received: Instant) -> Result<(), ForwardError> {
        let Some((producer, topic)) = &self.kafka else {
            return Ok(());
        };
        let record = TelemetryRecord {
            device_id: Cow::Borrowed(&msg.device_id),
            category: Cow::Borrowed(msg.category.as_str()),
            timestamp: msg.envelope.timestamp,
            message_id: Cow::Borrowed(&msg.envelope.message_id),
            payload: &msg.envelope.payload,
            received_at: Cow::Owned(Utc::now().to_rfc3339()),
            gateway: Cow::Borrowed(&self.gateway),
            namespace: Cow::Borrowed(&self.namespace),
        };
        let body = record.to_json();
        let key = msg.device_id.as_bytes();
        let mac = self.record_key.as_ref().map(|k| mac_header(k, topic, key, &body));
        let mut backoff = Backoff::standard();
        loop {
            let mut rec = FutureRecord::to(topic).key(key).payload(&body);
            if let Some(mac) = &mac {
                rec = rec.headers(mac.clone());
            }
            let res = producer.send(rec, Duration::from_secs(30)).await;
            match res {
                Ok(_) => {
                    self.metrics
                        .forward_latency
                        .with_label_values(&["kafka"])
                        .observe(received.elapsed().as_secs_f64());
                    return Ok(());
                }
                Err((e, _)) if refused_for_good(&e) => {
                    self.metrics.kafka_errors.inc();
                    return Err(ForwardError::KafkaRefused(e));
                }
                Err((e, _)) => {
                    self.metrics.kafka_errors.inc();
                    // One line per retry of one message, the waits doubling:
                    // bounded log volume whatever the outage's length.
                    let delay = backoff.next_delay();
                    tracing::warn!(device = %msg.device_id, message_id = %msg.envelope.message_id, error = %e,
                        retry_in_ms = delay.as_millis() as u64, "kafka delivery failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn to_backend(&self, msg: &Accepted, received: Instant) -> Result<(), ForwardError> {
        let Some((client, base)) = &self.http else {
            return Ok(());
        };
        let url = format!("{base}/device/{}/data", msg.device_id);
        let mut backoff = Backoff::standard();
        loop {
            let delay = backoff.next_delay();
            let res = client
                .post(&url)
                .header("content-type", "application/json")
                .body(msg.envelope.payload.get().to_string())
                .send()
                .await;
            match res {
                Ok(resp) if resp.status().is_success() => {
                    let body = resp.bytes().await.map_err(|e| ForwardError::Backend(e.to_string()))?;
                    self.metrics
                        .forward_latency
                        .with_label_values(&["http"])
                        .observe(received.elapsed().as_secs_f64());
                    if !body.is_empty() && body.len() <= MAX_RESPONSE_BYTES {
                        // The backend's answer goes back to the device.
                        if let Err(e) = self
                            .mqtt
                            .publish(response_topic(&msg.device_id), QoS::AtLeastOnce, false, body.to_vec())
                            .await
                        {
                            tracing::warn!(device = %msg.device_id, error = %e, "could not queue backend response");
                        }
                    }
                    return Ok(());
                }
                Ok(resp) => {
                    self.metrics.backend_errors.inc();
                    let status = resp.status();
                    // A 4xx is the backend's answer about this message: it
                    // will not change by asking again.
                    if status.is_client_error() {
                        return Err(ForwardError::BackendStatus(status.as_u16()));
                    }
                    tracing::warn!(device = %msg.device_id, message_id = %msg.envelope.message_id,
                        status = status.as_u16(), retry_in_ms = delay.as_millis() as u64, "backend failed; retrying");
                }
                Err(e) => {
                    self.metrics.backend_errors.inc();
                    tracing::warn!(device = %msg.device_id, message_id = %msg.envelope.message_id, error = %e,
                        retry_in_ms = delay.as_millis() as u64, "backend unreachable; retrying");
                }
            }
            tokio::time::sleep(delay).await;
        }
    }
}

/// An idempotent producer: retries never duplicate or reorder a partition.
pub fn producer(brokers: &str) -> Result<FutureProducer, ForwardError> {
    Ok(fleetward_protocol::kafka::client_config(brokers)?
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "60000")
        .set("message.max.bytes", crate::config::KAFKA_MAX_RECORD_BYTES.to_string())
        .create()?)
}

#[cfg(test)]
mod tests {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode;

    use super::*;

    #[test]
    fn a_refused_record_is_final_and_an_outage_is_not() {
        for code in [RDKafkaErrorCode::MessageSizeTooLarge, RDKafkaErrorCode::InvalidRecord] {
            assert!(refused_for_good(&KafkaError::MessageProduction(code)));
        }
        for code in [
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::NotLeaderForPartition,
        ] {
            assert!(!refused_for_good(&KafkaError::MessageProduction(code)));
        }
    }

    /// The producer as the gateway makes it, against the dev Kafka: a
    /// record over its limit is refused, and refused for good (so the
    /// gateway acknowledges it instead of retrying forever).
    #[tokio::test]
    async fn kafka_refuses_a_record_over_the_limit_for_good() {
        let brokers = fleetward_testkit::env("KAFKA_BROKERS");
        let producer = producer(&brokers).unwrap();
        let body = vec![b'x'; crate::config::KAFKA_MAX_RECORD_BYTES + 1];
        let res = producer
            .send(
                FutureRecord::to("fleetward-gateway-oversize-test")
                    .key("d")
                    .payload(&body),
                Duration::from_secs(10),
            )
            .await;
        let (e, _) = res.expect_err("an oversized record is refused");
        assert!(refused_for_good(&e), "{e}");
    }
}
