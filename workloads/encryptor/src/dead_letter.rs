//! Dead letters: what the encryptor produces to the dead-letter topic for a
//! record it cannot store, and how whoever holds the keyring opens one to
//! reprocess it. Pure: the pipeline produces what `seal` builds.
//!
//! A record that cannot be parsed may still hold sensitive fields, so it is
//! sealed whole, with the keyring's primary key like any sensitive field.
//! The dead letter's value is the JSON envelope
//!
//! ```json
//! {"key_id":"k2-5c1e0a9b","token":"gAAAAA…"}
//! ```
//!
//! where `token` is the Fernet token of the original value's bytes (no
//! value seals as empty bytes) and `key_id` names its key in the keyring:
//! `open`, or any Fernet implementation given that key, gives the bytes back
//! exactly. The record's key is kept as it was: it is the station number or
//! device id, stored readable in the rows anyway, and it keeps a key's
//! records in one partition when they are reprocessed. Headers carry only
//! fixed text and the source record's place:
//!
//! - `fleetward-dlq-reason`: a fixed code, one of `Invalid::CODES`;
//! - `fleetward-dlq-detail`: a sentence of fixed text, with at most a field
//!   name of the record's schema or a line and column (`Invalid`'s Display);
//! - `fleetward-dlq-topic`, `fleetward-dlq-partition`, `fleetward-dlq-offset`.

use fleetward_keyring::{Keyring, KeyringError};
use rdkafka::message::{Header, Message, OwnedHeaders};
use serde::{Deserialize, Serialize};

use crate::record::Invalid;

/// Header names on dead-letter records.
pub const REASON: &str = "fleetward-dlq-reason";
pub const DETAIL: &str = "fleetward-dlq-detail";
pub const TOPIC: &str = "fleetward-dlq-topic";
pub const PARTITION: &str = "fleetward-dlq-partition";
pub const OFFSET: &str = "fleetward-dlq-offset";

/// The value of a dead letter.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
struct Envelope {
    key_id: String,
    token: String,
}

/// A dead letter ready to be produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    /// The envelope's JSON.
    pub value: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl DeadLetter {
    /// The headers as Kafka takes them.
    pub fn kafka_headers(&self) -> OwnedHeaders {
        self.headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value.as_str()),
            })
        })
    }
}

/// The dead letter of `source`, refused for `why`, sealed with the
/// keyring's primary key.
pub fn seal(keyring: &Keyring, source: &impl Message, why: &Invalid) -> DeadLetter {
    let envelope = Envelope {
        key_id: keyring.primary_id().to_string(),
        token: keyring.encrypt(source.payload().unwrap_or_default()),
    };
    DeadLetter {
        key: source.key().map(<[u8]>::to_vec),
        value: serde_json::to_vec(&envelope).expect("an envelope serializes"),
        headers: vec![
            (REASON, why.code().to_string()),
            (DETAIL, why.to_string()),
            (TOPIC, source.topic().to_string()),
            (PARTITION, source.partition().to_string()),
            (OFFSET, source.offset().to_string()),
        ],
    }
}

#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum OpenError {
    #[error(
        "the dead letter's value is not a sealed envelope (a JSON object with key_id and token): \
         it predates sealed dead letters, or the encryptor did not write it"
    )]
    NotSealed,
    #[error("the dead letter does not open: {0}")]
    Keyring(#[from] KeyringError),
}

/// The original value of a dead letter whose value is `value`.
pub fn open(keyring: &Keyring, value: Option<&[u8]>) -> Result<Vec<u8>, OpenError> {
    let envelope: Envelope = serde_json::from_slice(value.unwrap_or_default()).map_err(|_| OpenError::NotSealed)?;
    Ok(keyring.decrypt(&envelope.key_id, &envelope.token)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    const SECRET: &str = "Secret Lane 7";

    fn source(payload: Option<&[u8]>) -> OwnedMessage {
        OwnedMessage::new(
            payload.map(<[u8]>::to_vec),
            Some(b"42".to_vec()),
            "stations.dublin".into(),
            Timestamp::NotAvailable,
            3,
            1234,
            None,
        )
    }

    #[test]
    fn seals_the_whole_value_and_keeps_only_fixed_text_readable() {
        let mut ring = Keyring::generate();
        let payload = format!(r#"{{"address": "{SECRET}", "bike_stands": "x\" {SECRET} \"y"}}"#);
        let letter = seal(&ring, &source(Some(payload.as_bytes())), &Invalid::WrongType);

        let readable = format!("{letter:?}");
        assert!(!readable.contains(SECRET), "{readable}");
        assert_eq!(letter.key.as_deref(), Some(&b"42"[..]));
        assert_eq!(
            letter.headers,
            [
                (REASON, "wrong_type".to_string()),
                (DETAIL, "a field has the wrong type".to_string()),
                (TOPIC, "stations.dublin".to_string()),
                (PARTITION, "3".to_string()),
                (OFFSET, "1234".to_string()),
            ]
        );
        let envelope: Envelope = serde_json::from_slice(&letter.value).unwrap();
        assert_eq!(envelope.key_id, ring.primary_id());
        assert!(envelope.token.starts_with("gAAAAA"), "a Fernet token");

        // It still opens, byte for byte, after a rotation.
        ring.rotate();
        assert_eq!(open(&ring, Some(&letter.value)).unwrap(), payload.as_bytes());
    }

    #[test]
    fn a_record_without_a_value_opens_as_empty_bytes() {
        let ring = Keyring::generate();
        let letter = seal(&ring, &source(None), &Invalid::Empty);
        assert_eq!(open(&ring, Some(&letter.value)).unwrap(), b"");
    }

    #[test]
    fn only_sealed_letters_of_the_keyring_open() {
        let ring = Keyring::generate();
        // A dead letter as the encryptor wrote them before sealing.
        let plain = br#"{"number": 5, "address": "Secret Lane"}"#;
        assert_eq!(open(&ring, Some(plain)), Err(OpenError::NotSealed));
        assert_eq!(open(&ring, None), Err(OpenError::NotSealed));
        let other = Keyring::generate();
        let letter = seal(&other, &source(Some(plain)), &Invalid::Number);
        let err = open(&ring, Some(&letter.value)).unwrap_err();
        assert_eq!(
            err,
            OpenError::Keyring(KeyringError::UnknownKeyId(other.primary_id().into()))
        );
        assert!(!err.to_string().contains("Secret"));
    }
}
