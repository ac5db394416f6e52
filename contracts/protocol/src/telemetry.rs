//! The record the gateway produces to Kafka for every accepted device
//! message, and the one the encryptor stores from Kafka: one contract for
//! the writer and the reader. JSON, keyed by device id.
//!
//! `payload` is the device's payload exactly as the device sent (and signed)
//! it. Strings borrow from the bytes they are read from where they can, so
//! reading a record copies nothing but what it must.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct TelemetryRecord<'a> {
    #[serde(borrow)]
    pub device_id: Cow<'a, str>,
    /// The device's category (`weatherStation`, …).
    #[serde(borrow)]
    pub category: Cow<'a, str>,
    /// The device's own timestamp, seconds since the epoch (checked by the
    /// gateway to lie in its window).
    pub timestamp: i64,
    #[serde(borrow)]
    pub message_id: Cow<'a, str>,
    #[serde(borrow)]
    pub payload: &'a RawValue,
    /// When the gateway received the message (RFC 3339).
    #[serde(borrow)]
    pub received_at: Cow<'a, str>,
    /// The Gateway resource (and its namespace) that accepted it.
    #[serde(borrow)]
    pub gateway: Cow<'a, str>,
    #[serde(borrow, default)]
    pub namespace: Cow<'a, str>,
}

impl<'a> TelemetryRecord<'a> {
    pub fn parse(bytes: &'a [u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(bytes)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a telemetry record serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_the_payload_byte_for_byte() {
        let payload = RawValue::from_string(r#"{ "temperature" : 22.50, "note":"a\"b" }"#.into()).unwrap();
        let rec = TelemetryRecord {
            device_id: "weather-001".into(),
            category: "weatherStation".into(),
            timestamp: 1_770_000_000,
            message_id: "m-1".into(),
            payload: &payload,
            received_at: "2026-02-02T02:40:00.123+00:00".into(),
            gateway: "edge".into(),
            namespace: "fleet-demo".into(),
        };
        let bytes = rec.to_json();
        let back = TelemetryRecord::parse(&bytes).unwrap();
        assert_eq!(back.payload.get(), payload.get(), "payload kept exactly as sent");
        assert_eq!(back.device_id, "weather-001");
        assert_eq!(back.namespace, "fleet-demo");
        assert_eq!(back.timestamp, 1_770_000_000);
    }

    #[test]
    fn records_from_before_the_namespace_field_still_parse() {
        let old = br#"{"device_id":"d","category":"smartLock","timestamp":1,"message_id":"m",
            "payload":{"locked":true,"battery":80},"received_at":"2026-01-01T00:00:00Z","gateway":"g"}"#;
        let rec = TelemetryRecord::parse(old).unwrap();
        assert_eq!(rec.namespace, "");
        assert_eq!(rec.payload.get(), r#"{"locked":true,"battery":80}"#);
    }
}
