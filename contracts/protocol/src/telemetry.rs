//! The record the gateway produces to Kafka for every accepted device
//! message, and the one the encryptor stores from Kafka: one contract for
//! the writer and the reader. JSON, keyed by device id.
//!
//! `payload` is the device's payload exactly as the device sent (and signed)
//! it. Strings borrow from the bytes they are read from where they can, so
//! reading a record copies nothing but what it must.

use std::borrow::Cow;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::Sha256;

/// The Kafka header that proves a record's origin: hex HMAC-SHA256, under
/// the Gateway's record key, of the topic, the record's key and its value
/// ([`record_mac`]). The gateway sets it on every record it produces; the
/// telemetry writer and billing refuse a record without a valid one (the
/// writer dead-letters it), so a record produced to the topic by anything
/// that does not hold the key is neither stored nor billed.
pub const RECORD_MAC_HEADER: &str = "fleetward-record-mac";

/// The environment variable that holds the record key (hex, from the
/// Gateway's Secret `<gateway>-record-key`, key [`RECORD_KEY_SECRET_KEY`])
/// in the gateway and in each consumer of its topic.
pub const RECORD_KEY_ENV: &str = "RECORD_KEY";
pub const RECORD_KEY_SECRET_KEY: &str = "record.key";

const RECORD_DOMAIN: &[u8] = b"fleetward/v1/record\n";

fn record_hmac(key: &[u8], topic: &str, record_key: &[u8], value: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    // Lengths first: no two (topic, key, value) triples share an input.
    mac.update(RECORD_DOMAIN);
    for part in [topic.as_bytes(), record_key, value] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac
}

/// The [`RECORD_MAC_HEADER`] value for a record: binding the topic means a
/// record copied to another Gateway's topic does not verify there.
pub fn record_mac(key: &[u8], topic: &str, record_key: &[u8], value: &[u8]) -> String {
    hex::encode(record_hmac(key, topic, record_key, value).finalize().into_bytes())
}

/// Whether `mac` (the header's value, if the record has one) is the
/// record's; compared in constant time.
pub fn verify_record_mac(key: &[u8], topic: &str, record_key: &[u8], value: &[u8], mac: Option<&[u8]>) -> bool {
    let Some(Ok(expected)) = mac.map(hex::decode) else {
        return false;
    };
    record_hmac(key, topic, record_key, value)
        .verify_slice(&expected)
        .is_ok()
}

/// A record key as its Secret holds it: 64 hex characters.
pub fn parse_record_key(hex_text: &str) -> Result<Vec<u8>, String> {
    let key = hex::decode(hex_text.trim()).map_err(|_| "the record key is not hex".to_string())?;
    if key.len() < 32 {
        return Err(format!(
            "the record key has {} bytes; at least 32 are needed",
            key.len()
        ));
    }
    Ok(key)
}

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
    fn a_record_mac_verifies_only_its_own_topic_key_and_value() {
        let key = [7u8; 32];
        let mac = record_mac(&key, "t", b"meter-1", b"{}");
        assert!(verify_record_mac(&key, "t", b"meter-1", b"{}", Some(mac.as_bytes())));
        for (topic, rkey, value) in [
            ("u", &b"meter-1"[..], &b"{}"[..]),
            ("t", b"meter-2", b"{}"),
            ("t", b"meter-1", b"{ }"),
        ] {
            assert!(!verify_record_mac(&key, topic, rkey, value, Some(mac.as_bytes())));
        }
        // Moving bytes between the parts changes the input.
        assert_ne!(record_mac(&key, "ab", b"c", b""), record_mac(&key, "a", b"bc", b""));
        assert!(!verify_record_mac(
            &[8u8; 32],
            "t",
            b"meter-1",
            b"{}",
            Some(mac.as_bytes())
        ));
        assert!(!verify_record_mac(&key, "t", b"meter-1", b"{}", None));
        assert!(!verify_record_mac(&key, "t", b"meter-1", b"{}", Some(b"zz")));
        assert!(!verify_record_mac(
            &key,
            "t",
            b"meter-1",
            b"{}",
            Some(&mac.as_bytes()[..10])
        ));
        assert!(parse_record_key(&"ab".repeat(32)).is_ok());
        assert!(parse_record_key("abcd").is_err() && parse_record_key(&"zz".repeat(32)).is_err());
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
