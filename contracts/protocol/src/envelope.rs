//! A device message (`device/{id}/data`): parsing that refuses anything
//! malformed without quoting it, signing in either version, verifying.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::Rejection;
use crate::json::refuse_duplicate_keys;
use crate::signature::{Domain, sign_hex, verify_hex};

/// Longest accepted `message_id` (bounds replay-cache memory).
pub const MAX_MESSAGE_ID_LEN: usize = 128;
/// Longest accepted `device_id` (Kubernetes object names are at most 253).
pub const MAX_DEVICE_ID_LEN: usize = 253;

/// The envelope version fleetward signs with.
pub const VERSION: u8 = 2;

/// A device message. `payload` keeps the exact bytes that were signed.
#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// `None` for seed 003's version 1, `Some(2)` for version 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<u8>,
    pub device_id: String,
    pub timestamp: i64,
    pub message_id: String,
    pub payload: Box<RawValue>,
    pub signature: String,
}

impl Envelope {
    /// Parses a message body. Never panics, whatever the input.
    pub fn parse(bytes: &[u8]) -> Result<Envelope, Rejection> {
        let env: Envelope = serde_json::from_slice(bytes).map_err(malformed)?;
        // The schema check and the signature see one value per key; a
        // downstream parser keeping the other one of a duplicate would see
        // a value nobody checked. (Duplicate envelope fields are refused by
        // the derive already.)
        refuse_duplicate_keys(env.payload.get())?;
        if !matches!(env.v, None | Some(VERSION)) {
            return Err(Rejection::Malformed("unsupported envelope version".into()));
        }
        if env.device_id.is_empty() || env.device_id.len() > MAX_DEVICE_ID_LEN {
            return Err(Rejection::Malformed("device_id length".into()));
        }
        validate_message_id(&env.message_id)?;
        Ok(env)
    }

    /// Builds and signs a message.
    pub fn sign(secret: &[u8], device_id: &str, timestamp: i64, message_id: &str, payload: Box<RawValue>) -> Envelope {
        Envelope::signed(Some(VERSION), secret, device_id, timestamp, message_id, payload)
    }

    /// Signs the seed-003 way (version 1, no prefix), as third-party
    /// devices do.
    pub fn sign_v1(
        secret: &[u8],
        device_id: &str,
        timestamp: i64,
        message_id: &str,
        payload: Box<RawValue>,
    ) -> Envelope {
        Envelope::signed(None, secret, device_id, timestamp, message_id, payload)
    }

    /// An envelope of version `v`, signed in that version's domain.
    fn signed(
        v: Option<u8>,
        secret: &[u8],
        device_id: &str,
        timestamp: i64,
        message_id: &str,
        payload: Box<RawValue>,
    ) -> Envelope {
        let mut env = Envelope {
            v,
            device_id: device_id.to_string(),
            timestamp,
            message_id: message_id.to_string(),
            payload,
            signature: String::new(),
        };
        env.signature = sign_hex(
            secret,
            env.domain(),
            device_id,
            timestamp,
            message_id,
            env.payload.get(),
        );
        env
    }

    /// The signature's domain, by the envelope's version.
    pub fn domain(&self) -> Domain {
        match self.v {
            None => Domain::LegacyData,
            Some(_) => Domain::Data,
        }
    }

    /// Constant-time signature check with `secret`.
    pub fn verify(&self, secret: &[u8]) -> bool {
        verify_hex(
            secret,
            self.domain(),
            &self.device_id,
            self.timestamp,
            &self.message_id,
            self.payload.get(),
            &self.signature,
        )
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an envelope always serializes")
    }
}

/// A parse error as a `Malformed` detail that quotes none of the input:
/// serde_json's own text can ("invalid type: string \"…\"", "unknown field
/// `…`"), and details go to the audit table and the log. Missing or
/// duplicate envelope fields name our own field names, so they stay.
pub(crate) fn malformed(e: serde_json::Error) -> Rejection {
    let text = e.to_string();
    let ours = ["missing field `", "duplicate field `"]
        .iter()
        .any(|p| text.starts_with(p));
    let what = if ours {
        text.split(" at line").next().unwrap_or_default().to_string()
    } else {
        match e.classify() {
            serde_json::error::Category::Syntax => "not valid JSON".to_string(),
            serde_json::error::Category::Eof => "JSON ends too early".to_string(),
            serde_json::error::Category::Data => "wrong JSON structure or field type".to_string(),
            serde_json::error::Category::Io => "unreadable".to_string(),
        }
    };
    Rejection::Malformed(format!("{what} at line {} column {}", e.line(), e.column()))
}

pub(crate) fn validate_message_id(id: &str) -> Result<(), Rejection> {
    if id.is_empty() || id.len() > MAX_MESSAGE_ID_LEN {
        return Err(Rejection::Malformed("message_id length".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw;
    use hmac::{Hmac, Mac};

    type HmacSha256 = Hmac<sha2::Sha256>;
    const KEY: &[u8] = b"supersecretkey123";

    #[test]
    fn version_2_prefixes_the_direction_and_version_1_stays_accepted_for_data() {
        let payload = raw(&serde_json::json!({"locked": true}));
        let v2 = Envelope::sign(KEY, "d1", 100, "m1", payload.clone());
        assert!(v2.to_json().starts_with(r#"{"v":2,"#), "{}", v2.to_json());
        let mut m = HmacSha256::new_from_slice(KEY).unwrap();
        m.update(b"fleetward/v2/data\nd1100m1{\"locked\":true}");
        assert_eq!(v2.signature, hex::encode(m.finalize().into_bytes()));
        assert!(Envelope::parse(v2.to_json().as_bytes()).unwrap().verify(KEY));
        let v1 = Envelope::sign_v1(KEY, "d1", 100, "m1", payload.clone());
        assert!(!v1.to_json().contains("\"v\""));
        assert!(Envelope::parse(v1.to_json().as_bytes()).unwrap().verify(KEY));
        // Relabelling one version as the other breaks the signature.
        let as_v1 = v2.to_json().replacen(r#""v":2,"#, "", 1);
        assert!(!Envelope::parse(as_v1.as_bytes()).unwrap().verify(KEY));
        let as_v3 = v2.to_json().replacen(r#""v":2"#, r#""v":3"#, 1);
        assert!(matches!(
            Envelope::parse(as_v3.as_bytes()),
            Err(Rejection::Malformed(_))
        ));
    }

    #[test]
    fn payload_is_verified_as_sent_not_reserialized() {
        // Spaces and key order as a different JSON library might write them.
        let msg = r#"{"device_id": "d1", "timestamp": 100, "message_id": "m1", "payload": {"b": 1,  "a": [1, 2]}, "signature": "SIG"}"#;
        let payload = r#"{"b": 1,  "a": [1, 2]}"#;
        let sig = sign_hex(KEY, Domain::LegacyData, "d1", 100, "m1", payload);
        let env = Envelope::parse(msg.replace("SIG", &sig).as_bytes()).unwrap();
        assert_eq!(env.payload.get(), payload);
        assert!(env.verify(KEY));
    }

    #[test]
    fn tampering_any_field_breaks_the_signature() {
        let env = Envelope::sign(KEY, "d1", 100, "m1", raw(&serde_json::json!({"temperature": 22.5})));
        let json = env.to_json();
        for tampered in [
            json.replace("22.5", "99.9"),
            json.replace("\"m1\"", "\"m2\""),
            json.replace("100", "101"),
            json.replace("\"d1\"", "\"d2\""),
        ] {
            assert!(!Envelope::parse(tampered.as_bytes()).unwrap().verify(KEY), "{tampered}");
        }
        assert!(!env.verify(b"another key"));
        assert!(Envelope::parse(json.as_bytes()).unwrap().verify(KEY));
    }

    #[test]
    fn malformed_inputs_are_rejected() {
        for bad in [
            &b"not json"[..],
            br#"{"device_id":"d1"}"#,
            br#"{"device_id":"d1","timestamp":1.5,"message_id":"m","payload":{},"signature":"00"}"#,
            br#"{"device_id":"","timestamp":1,"message_id":"m","payload":{},"signature":"00"}"#,
            br#"{"device_id":"d","timestamp":1,"message_id":"","payload":{},"signature":"00"}"#,
            br#"{"device_id":"d","timestamp":1,"message_id":"m","payload":{},"signature":"00","extra":1}"#,
        ] {
            assert!(
                matches!(Envelope::parse(bad), Err(Rejection::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        for bad in [
            r#"{"temperature":"<unchecked>","temperature":22.5}"#,
            r#"{"a":{"b":1,"b":2}}"#,
            r#"{"a":[{"x":1},{"y":1,"y":1}]}"#,
        ] {
            let env = Envelope::sign(KEY, "d1", 100, "m1", RawValue::from_string(bad.into()).unwrap());
            assert_eq!(
                Envelope::parse(env.to_json().as_bytes()).unwrap_err(),
                Rejection::Malformed("duplicate key in payload".into()),
                "{bad}"
            );
        }
        let same_key_apart = r#"{"a":{"x":1},"b":{"x":1},"c":[1,"x",null,true]}"#;
        assert_eq!(refuse_duplicate_keys(same_key_apart), Ok(()));
        let env = r#"{"device_id":"d1","device_id":"d2","timestamp":1,"message_id":"m","payload":{},"signature":"00"}"#;
        assert!(matches!(Envelope::parse(env.as_bytes()), Err(Rejection::Malformed(_))));
    }

    #[test]
    fn malformed_details_quote_no_input() {
        let secretish = "s3cr3t-looking-input";
        for bad in [
            format!(
                r#"{{"device_id":"d1","timestamp":"{secretish}","message_id":"m","payload":{{}},"signature":"00"}}"#
            ),
            format!(r#"{{"device_id":"d1","{secretish}":1}}"#),
            format!(r#"{{"device_id":"{secretish}"#),
            secretish.to_string(),
        ] {
            let Err(Rejection::Malformed(detail)) = Envelope::parse(bad.as_bytes()) else {
                panic!("{bad} was not refused as malformed");
            };
            assert!(!detail.contains(secretish), "{detail}");
            assert!(detail.contains("line 1 column"), "{detail}");
        }
        let Err(Rejection::Malformed(detail)) = Envelope::parse(br#"{"device_id":"d1"}"#) else {
            panic!()
        };
        assert!(detail.starts_with("missing field `timestamp`"), "{detail}");
    }
}
