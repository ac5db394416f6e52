//! Meter readings from the gateway's Kafka topic into PostgreSQL.
//!
//! The topic carries every accepted message of the gateway's devices
//! (`fleetward_protocol::telemetry`); billing keeps the electricity
//! meters' register readings. Offsets are stored only after the batch's
//! rows are written (librdkafka commits stored offsets in the background),
//! and rows are keyed by (namespace, device, message id): a crash re-reads
//! a few records and stores nothing twice. Records that are not meter
//! readings, or not valid, are counted and skipped (the encryptor, reading
//! the same topic, dead-letters the invalid ones).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleetward_protocol::record::{RecordKey, is_signed};
use fleetward_protocol::telemetry::TelemetryRecord;
use fleetward_service::backoff::Backoff;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rust_decimal::Decimal;
use serde_json::value::RawValue;
use sqlx::PgPool;

use crate::db::{self, Reading};
use crate::metrics::Metrics;

const BATCH: usize = 5000;
const BATCH_WAIT: Duration = Duration::from_millis(200);

/// Billing's consumer of a Gateway's telemetry topic, connected with the
/// security of this process's environment.
pub fn consumer(brokers: &str, topic: &str, group: &str) -> anyhow::Result<StreamConsumer> {
    let c: StreamConsumer = fleetward_protocol::kafka::client_config(brokers)?
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .create()?;
    c.subscribe(&[topic])?;
    Ok(c)
}

/// Why a record is not a reading.
#[derive(Debug, PartialEq)]
pub enum Skip {
    OtherCategory,
    Invalid(&'static str),
}

/// A meter reading out of a telemetry record (`ns` is used when the record
/// carries none).
pub fn reading(bytes: &[u8], ns: &str) -> Result<Reading, Skip> {
    let rec = TelemetryRecord::parse(bytes).map_err(|_| Skip::Invalid("not a telemetry record"))?;
    if rec.category != "electricityMeter" {
        return Err(Skip::OtherCategory);
    }
    #[derive(serde::Deserialize)]
    struct Payload<'a> {
        #[serde(borrow)]
        kwh_total: Option<&'a RawValue>,
        reply_to: Option<String>,
    }
    let p: Payload = serde_json::from_str(rec.payload.get()).map_err(|_| Skip::Invalid("payload"))?;
    // An acknowledgement carries no register.
    let Some(raw) = p.kwh_total else {
        return Err(Skip::OtherCategory);
    };
    // The number exactly as the meter wrote it, never through a float.
    let text = raw.get();
    let kwh = Decimal::from_str(text)
        .or_else(|_| Decimal::from_scientific(text))
        .map_err(|_| Skip::Invalid("kwh_total"))?
        .round_dp(3);
    if kwh.is_sign_negative() {
        return Err(Skip::Invalid("kwh_total"));
    }
    let device_time = DateTime::<Utc>::from_timestamp(rec.timestamp, 0).ok_or(Skip::Invalid("timestamp"))?;
    let received_at = DateTime::parse_from_rfc3339(&rec.received_at)
        .map_err(|_| Skip::Invalid("received_at"))?
        .with_timezone(&Utc);
    let namespace = if rec.namespace.is_empty() {
        ns.to_string()
    } else {
        rec.namespace.into_owned()
    };
    Ok(Reading {
        namespace,
        device_id: rec.device_id.into_owned(),
        message_id: rec.message_id.into_owned(),
        device_time,
        received_at,
        kwh,
        reply_to: p.reply_to,
    })
}

/// Consumes until the process stops. With `record_key`, only records the
/// Gateway signed are readings.
pub async fn run(
    consumer: StreamConsumer,
    pool: PgPool,
    ns: String,
    record_key: Option<RecordKey>,
    metrics: Arc<Metrics>,
) {
    loop {
        let mut batch = Vec::new();
        let mut last = Vec::new();
        let first = match consumer.recv().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "kafka");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        let mut msgs = vec![first];
        while msgs.len() < BATCH {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(m)) => msgs.push(m),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "kafka");
                    break;
                }
                Err(_) => break,
            }
        }
        for m in &msgs {
            if record_key.as_ref().is_some_and(|k| !is_signed(k, m)) {
                tracing::debug!(
                    partition = m.partition(),
                    offset = m.offset(),
                    "a record without the gateway's valid MAC"
                );
                metrics.readings.with_label_values(&["unsigned"]).inc();
                last.push((m.topic().to_string(), m.partition(), m.offset()));
                continue;
            }
            match reading(m.payload().unwrap_or_default(), &ns) {
                Ok(r) => batch.push(r),
                Err(Skip::OtherCategory) => metrics.readings.with_label_values(&["other_category"]).inc(),
                Err(Skip::Invalid(why)) => {
                    tracing::debug!(
                        why,
                        partition = m.partition(),
                        offset = m.offset(),
                        "not a valid meter reading"
                    );
                    metrics.readings.with_label_values(&["invalid"]).inc();
                }
            }
            last.push((m.topic().to_string(), m.partition(), m.offset()));
        }
        let mut backoff = Backoff::standard();
        let stored = loop {
            match db::insert_readings(&pool, &batch).await {
                Ok(n) => break n,
                Err(e) => {
                    tracing::warn!(error = %e, rows = batch.len(), "storing readings failed; retrying");
                    backoff.wait().await;
                }
            }
        };
        metrics.readings.with_label_values(&["stored"]).inc_by(stored);
        metrics
            .readings
            .with_label_values(&["duplicate"])
            .inc_by(batch.len() as u64 - stored);
        for (topic, partition, offset) in last {
            if let Err(e) = consumer.store_offset(&topic, partition, offset) {
                tracing::warn!(error = %e, "storing the offset");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(category: &str, payload: &str) -> Vec<u8> {
        format!(
            r#"{{"device_id":"m1","category":"{category}","timestamp":1780000000,"message_id":"x1",
               "payload":{payload},"received_at":"2026-05-28T20:26:40Z","gateway":"edge","namespace":"ns"}}"#
        )
        .into_bytes()
    }

    #[test]
    fn meter_readings_are_read_exactly() {
        let r = reading(&rec("electricityMeter", r#"{"kwh_total":1234.567,"voltage":230}"#), "x").unwrap();
        assert_eq!(r.kwh.to_string(), "1234.567");
        assert_eq!(r.namespace, "ns");
        assert_eq!(r.reply_to, None);
        let r = reading(&rec("electricityMeter", r#"{"kwh_total":1.5e2,"reply_to":"c-1"}"#), "x").unwrap();
        assert_eq!(r.kwh, Decimal::from(150));
        assert_eq!(r.reply_to.as_deref(), Some("c-1"));
    }

    #[test]
    fn other_records_are_skipped() {
        assert_eq!(
            reading(&rec("smartLock", r#"{"locked":true}"#), "x"),
            Err(Skip::OtherCategory)
        );
        assert_eq!(
            reading(&rec("electricityMeter", r#"{"ack":"c","result":"ok"}"#), "x"),
            Err(Skip::OtherCategory)
        );
        assert_eq!(
            reading(&rec("electricityMeter", r#"{"kwh_total":"12"}"#), "x"),
            Err(Skip::Invalid("kwh_total"))
        );
        assert_eq!(reading(b"nope", "x"), Err(Skip::Invalid("not a telemetry record")));
    }
}
