//! Proof of origin for the Kafka records fleetward produces: an HMAC over
//! the record's topic, key and value under a key the operator made for the
//! producer (a Gateway's, a StationFeed's), carried in a header; consumers
//! holding the same key take only records whose MAC verifies.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The Kafka header that proves a record's origin: hex HMAC-SHA256, under
/// its producer's record key, of the topic, the record's key and its value
/// ([`record_mac`]). The gateway sets it on every telemetry record and the
/// ingestor on every station record; their consumers (telemetry writer,
/// billing, encryptor) refuse a record without a valid one, so a record
/// produced to the topic by anything that does not hold the key is neither
/// stored nor billed.
pub const RECORD_MAC_HEADER: &str = "fleetward-record-mac";

/// The environment variable that holds the record key (hex, from the
/// Secret `<gateway>-record-key` or `<feed>-record-key`, key
/// [`RECORD_KEY_SECRET_KEY`]) in the producer and each consumer of its
/// topic.
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

/// The header a produced record carries: its MAC under `key`.
#[cfg(feature = "kafka")]
pub fn mac_header(key: &RecordKey, topic: &str, record_key: &[u8], value: &[u8]) -> rdkafka::message::OwnedHeaders {
    let mac = record_mac(key.as_bytes(), topic, record_key, value);
    rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
        key: RECORD_MAC_HEADER,
        value: Some(mac.as_bytes()),
    })
}

/// Whether a consumed record carries a valid MAC under `key` over its
/// topic, key and value.
#[cfg(feature = "kafka")]
pub fn is_signed(key: &RecordKey, m: &impl rdkafka::message::Message) -> bool {
    use rdkafka::message::Headers;
    let mac = m
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == RECORD_MAC_HEADER))
        .and_then(|h| h.value);
    verify_record_mac(
        key.as_bytes(),
        m.topic(),
        m.key().unwrap_or_default(),
        m.payload().unwrap_or_default(),
        mac,
    )
}

/// A record key as a workload holds it: parsed from its Secret's hex
/// ([`parse_record_key`]), never shown by `Debug` (configuration structs
/// that hold one may be logged).
#[derive(Clone, PartialEq, Eq)]
pub struct RecordKey(Vec<u8>);

impl RecordKey {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordKey(<redacted>)")
    }
}

impl std::str::FromStr for RecordKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_record_key(s).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let key: RecordKey = "ab".repeat(32).parse().unwrap();
        assert_eq!(format!("{key:?}"), "RecordKey(<redacted>)");
    }
}
