//! The fleetward wire protocol, shared by the gateway, the device simulator
//! and any CLI, so the format exists in exactly one place.
//!
//! Device → `device/{id}/data` (seed 003, wire-compatible):
//!
//! ```json
//! {"device_id":"sensor_001","timestamp":1727712000,
//!  "message_id":"550e8400-e29b-41d4-a716-446655440000",
//!  "payload":{"temperature":22.5,"humidity":60},
//!  "signature":"<hex HMAC-SHA256>"}
//! ```
//!
//! `signature = hex(HMAC-SHA256(secret, device_id ‖ timestamp ‖ message_id ‖ payload))`
//! where `timestamp` is its decimal text and `payload` is the payload's JSON
//! **exactly as it appears in the message** (kept as a [`RawValue`]), so a
//! client's own JSON serialisation verifies as long as it signs what it sends.
//! The secret is the device's `hmac.key` text (64 hex characters) used as-is.
//!
//! Gateway → `device/{id}/command`: the same without `device_id` (the topic
//! says whom it is for); its signature still covers the device id, so a
//! command cannot be replayed to another device.
//!
//! **Versions.** The form above, with no `"v"`, is version 1 (seed 003) and
//! is accepted for data only. Version 2 (`"v":2`) signs the same bytes
//! after a prefix naming the direction ([`Domain`]): `fleetward/v2/data\n`
//! or `fleetward/v2/command\n`. Commands are always version 2, so a command
//! (signed with the device's own key) can never be passed off as data, nor
//! data as a command. fleetward's own devices send version 2.

pub mod category;
pub mod replay;
pub mod station;
pub mod telemetry;
#[cfg(feature = "tls")]
pub mod tls;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
pub use serde_json::value::RawValue;
use sha2::Sha256;

pub use category::Category;
pub use replay::ReplayWindow;

type HmacSha256 = Hmac<Sha256>;

/// The broker's control topic for revoked certificate serials (the
/// fleetward_revoke plugin reads it; only the gateway identity may write it).
pub const REVOKE_TOPIC: &str = "$CONTROL/fleetward/v1/revoke";

/// Longest accepted `message_id` (bounds replay-cache memory).
pub const MAX_MESSAGE_ID_LEN: usize = 128;
/// Longest accepted `device_id` (Kubernetes object names are at most 253).
pub const MAX_DEVICE_ID_LEN: usize = 253;

/// Why a message was refused. The string forms are the `reason` label of
/// metrics and the reason written to the audit log.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    #[error("topic is not device/<id>/data")]
    BadTopic,
    #[error("device_id does not match the sender's TLS identity")]
    TopicMismatch,
    #[error("unknown device")]
    UnknownDevice,
    #[error("device is disabled")]
    DisabledDevice,
    #[error("message larger than {limit} bytes")]
    Oversize { limit: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("timestamp too old")]
    StaleTimestamp,
    #[error("timestamp in the future")]
    FutureTimestamp,
    #[error("message_id already seen")]
    Replay,
    #[error("invalid signature")]
    BadSignature,
    #[error("rate limit exceeded")]
    RateLimited,
    #[error("retained messages are not accepted")]
    Retained,
    #[error("waited at the broker longer than the gateway remembers message ids")]
    ExpiredInQueue,
    #[error("payload does not match the {category} schema: {detail}")]
    SchemaViolation { category: &'static str, detail: String },
}

impl Rejection {
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::BadTopic => "bad_topic",
            Rejection::TopicMismatch => "topic_mismatch",
            Rejection::UnknownDevice => "unknown_device",
            Rejection::DisabledDevice => "disabled_device",
            Rejection::Oversize { .. } => "oversize",
            Rejection::Malformed(_) => "malformed",
            Rejection::StaleTimestamp => "stale_timestamp",
            Rejection::FutureTimestamp => "future_timestamp",
            Rejection::Replay => "replay",
            Rejection::BadSignature => "bad_signature",
            Rejection::RateLimited => "rate_limited",
            Rejection::Retained => "retained",
            Rejection::ExpiredInQueue => "expired_in_queue",
            Rejection::SchemaViolation { .. } => "schema_violation",
        }
    }

    /// Every reason, for pre-registering metric label values.
    pub const ALL_REASONS: [&'static str; 14] = [
        "bad_topic",
        "topic_mismatch",
        "unknown_device",
        "disabled_device",
        "oversize",
        "malformed",
        "stale_timestamp",
        "future_timestamp",
        "replay",
        "bad_signature",
        "rate_limited",
        "retained",
        "expired_in_queue",
        "schema_violation",
    ];
}

/// What a signature is for: its version and direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// Version 1, seed 003: no prefix. Data only.
    LegacyData,
    /// Version 2 data.
    Data,
    /// Version 2 command (the only form of command).
    Command,
}

impl Domain {
    fn prefix(self) -> &'static [u8] {
        match self {
            Domain::LegacyData => b"",
            Domain::Data => b"fleetward/v2/data\n",
            Domain::Command => b"fleetward/v2/command\n",
        }
    }
}

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

/// A command for a device, signed by the gateway with the device's secret.
#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Always [`VERSION`]: commands have no version 1.
    pub v: u8,
    pub timestamp: i64,
    pub message_id: String,
    pub payload: Box<RawValue>,
    pub signature: String,
}

impl Command {
    pub fn sign(secret: &[u8], device_id: &str, timestamp: i64, message_id: &str, payload: Box<RawValue>) -> Command {
        Command {
            v: VERSION,
            signature: sign_hex(secret, Domain::Command, device_id, timestamp, message_id, payload.get()),
            timestamp,
            message_id: message_id.to_string(),
            payload,
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<Command, Rejection> {
        let c: Command = serde_json::from_slice(bytes).map_err(malformed)?;
        refuse_duplicate_keys(c.payload.get())?;
        if c.v != VERSION {
            return Err(Rejection::Malformed("unsupported command version".into()));
        }
        validate_message_id(&c.message_id)?;
        Ok(c)
    }

    /// What a device does with a command: signature, freshness, replay.
    pub fn verify(
        &self,
        secret: &[u8],
        device_id: &str,
        now: i64,
        window_secs: i64,
        seen: &mut ReplayWindow,
    ) -> Result<(), Rejection> {
        if !verify_hex(
            secret,
            Domain::Command,
            device_id,
            self.timestamp,
            &self.message_id,
            self.payload.get(),
            &self.signature,
        ) {
            return Err(Rejection::BadSignature);
        }
        check_timestamp(self.timestamp, now, window_secs)?;
        seen.expire(now);
        if !seen.insert(&self.message_id, self.timestamp + window_secs) {
            return Err(Rejection::Replay);
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a command always serializes")
    }
}

/// A parse error as a `Malformed` detail that quotes none of the input:
/// serde_json's own text can ("invalid type: string \"…\"", "unknown field
/// `…`"), and details go to the audit table and the log. Missing or
/// duplicate envelope fields name our own field names, so they stay.
fn malformed(e: serde_json::Error) -> Rejection {
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

/// Refuses JSON text in which an object holds the same key twice, at any
/// depth. The text is already known to be valid JSON (a [`RawValue`]).
pub fn refuse_duplicate_keys(json: &str) -> Result<(), Rejection> {
    let mut de = serde_json::Deserializer::from_str(json);
    serde::Deserialize::deserialize(&mut de)
        .map(|UniqueKeys| ())
        .map_err(|_: serde_json::Error| Rejection::Malformed("duplicate key in payload".into()))
}

/// Deserializes any JSON value, failing on a repeated key in an object.
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key) {
                return Err(serde::de::Error::custom("duplicate key"));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }
}

fn validate_message_id(id: &str) -> Result<(), Rejection> {
    if id.is_empty() || id.len() > MAX_MESSAGE_ID_LEN {
        return Err(Rejection::Malformed("message_id length".into()));
    }
    Ok(())
}

/// The bytes the HMAC covers.
pub fn signing_input(domain: Domain, device_id: &str, timestamp: i64, message_id: &str, payload: &str) -> Vec<u8> {
    let ts = timestamp.to_string();
    let mut v = Vec::with_capacity(device_id.len() + ts.len() + message_id.len() + payload.len() + 32);
    v.extend_from_slice(domain.prefix());
    v.extend_from_slice(device_id.as_bytes());
    v.extend_from_slice(ts.as_bytes());
    v.extend_from_slice(message_id.as_bytes());
    v.extend_from_slice(payload.as_bytes());
    v
}

fn mac(secret: &[u8], domain: Domain, device_id: &str, timestamp: i64, message_id: &str, payload: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(domain.prefix());
    mac.update(device_id.as_bytes());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(message_id.as_bytes());
    mac.update(payload.as_bytes());
    mac
}

pub fn sign_hex(
    secret: &[u8],
    domain: Domain,
    device_id: &str,
    timestamp: i64,
    message_id: &str,
    payload: &str,
) -> String {
    hex::encode(
        mac(secret, domain, device_id, timestamp, message_id, payload)
            .finalize()
            .into_bytes(),
    )
}

/// Verifies a hex signature in constant time (the comparison does not stop
/// at the first differing byte, so timing does not reveal a prefix).
pub fn verify_hex(
    secret: &[u8],
    domain: Domain,
    device_id: &str,
    timestamp: i64,
    message_id: &str,
    payload: &str,
    signature_hex: &str,
) -> bool {
    let Ok(sig) = hex::decode(signature_hex) else {
        return false;
    };
    mac(secret, domain, device_id, timestamp, message_id, payload)
        .verify_slice(&sig)
        .is_ok()
}

/// Freshness: `|now - timestamp| <= window_secs`.
pub fn check_timestamp(timestamp: i64, now: i64, window_secs: i64) -> Result<(), Rejection> {
    match now.checked_sub(timestamp) {
        Some(age) if age > window_secs => Err(Rejection::StaleTimestamp),
        Some(age) if age < -window_secs => Err(Rejection::FutureTimestamp),
        Some(_) => Ok(()),
        None => Err(Rejection::FutureTimestamp),
    }
}

/// `device/{id}/data` → `id`.
pub fn device_from_data_topic(topic: &str) -> Option<&str> {
    let id = topic.strip_prefix("device/")?.strip_suffix("/data")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

pub fn data_topic(device_id: &str) -> String {
    format!("device/{device_id}/data")
}
pub fn command_topic(device_id: &str) -> String {
    format!("device/{device_id}/command")
}
pub fn response_topic(device_id: &str) -> String {
    format!("device/{device_id}/response")
}

/// A fresh random message id (UUID v4, as seed 003 describes).
pub fn new_message_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Turns any JSON value into the raw payload to sign.
pub fn raw(value: &serde_json::Value) -> Box<RawValue> {
    RawValue::from_string(value.to_string()).expect("serialized JSON is valid JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"supersecretkey123";

    #[test]
    fn seed_003_example_signs_over_the_concatenation() {
        // Independent computation: HMAC over the concatenated string.
        let payload = r#"{"temperature":22.5}"#;
        let expected = {
            let mut m = HmacSha256::new_from_slice(KEY).unwrap();
            m.update(br#"sensor_0011727712000550e8400-e29b-41d4-a716-446655440000{"temperature":22.5}"#);
            hex::encode(m.finalize().into_bytes())
        };
        assert_eq!(
            sign_hex(
                KEY,
                Domain::LegacyData,
                "sensor_001",
                1727712000,
                "550e8400-e29b-41d4-a716-446655440000",
                payload
            ),
            expected
        );
        assert_eq!(
            signing_input(
                Domain::LegacyData,
                "sensor_001",
                1727712000,
                "550e8400-e29b-41d4-a716-446655440000",
                payload
            ),
            br#"sensor_0011727712000550e8400-e29b-41d4-a716-446655440000{"temperature":22.5}"#.to_vec()
        );
    }

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
    fn a_command_never_passes_as_data_nor_data_as_a_command() {
        let payload = raw(&serde_json::json!({"locked": true}));
        let cmd = Command::sign(KEY, "d1", 100, "m1", payload.clone());
        // The command's fields and signature, as data of either version.
        for v in ["", r#""v":2,"#] {
            let data = format!(
                r#"{{{v}"device_id":"d1","timestamp":100,"message_id":"m1","payload":{},"signature":"{}"}}"#,
                cmd.payload.get(),
                cmd.signature
            );
            assert!(!Envelope::parse(data.as_bytes()).unwrap().verify(KEY), "{data}");
        }
        // Data of either version, as a command.
        let mut seen = ReplayWindow::new();
        for env in [
            Envelope::sign(KEY, "d1", 100, "m2", payload.clone()),
            Envelope::sign_v1(KEY, "d1", 100, "m3", payload.clone()),
        ] {
            let as_cmd = format!(
                r#"{{"v":2,"timestamp":100,"message_id":"{}","payload":{},"signature":"{}"}}"#,
                env.message_id,
                env.payload.get(),
                env.signature
            );
            let parsed = Command::parse(as_cmd.as_bytes()).unwrap();
            assert_eq!(
                parsed.verify(KEY, "d1", 110, 300, &mut seen),
                Err(Rejection::BadSignature)
            );
        }
        // A command without the version (seed 003's form) is not one.
        let old = cmd.to_json().replacen(r#""v":2,"#, "", 1);
        assert!(matches!(Command::parse(old.as_bytes()), Err(Rejection::Malformed(_))));
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

    #[test]
    fn timestamp_window() {
        assert_eq!(check_timestamp(1000, 1300, 300), Ok(()));
        assert_eq!(check_timestamp(1000, 1301, 300), Err(Rejection::StaleTimestamp));
        assert_eq!(check_timestamp(1301, 1000, 300), Err(Rejection::FutureTimestamp));
        assert_eq!(
            check_timestamp(i64::MIN, i64::MAX, 300),
            Err(Rejection::FutureTimestamp)
        );
    }

    #[test]
    fn topics() {
        assert_eq!(device_from_data_topic("device/d1/data"), Some("d1"));
        assert_eq!(device_from_data_topic("device/d1/command"), None);
        assert_eq!(device_from_data_topic("device//data"), None);
        assert_eq!(device_from_data_topic("device/a/b/data"), None);
    }

    #[test]
    fn commands_verify_and_refuse_replay_and_other_devices() {
        let cmd = Command::sign(KEY, "d1", 1000, "c1", raw(&serde_json::json!({"action": "reboot"})));
        let parsed = Command::parse(cmd.to_json().as_bytes()).unwrap();
        let mut seen = ReplayWindow::new();
        assert_eq!(parsed.verify(KEY, "d1", 1010, 300, &mut seen), Ok(()));
        assert_eq!(parsed.verify(KEY, "d1", 1010, 300, &mut seen), Err(Rejection::Replay));
        let mut fresh = ReplayWindow::new();
        assert_eq!(
            parsed.verify(KEY, "d2", 1010, 300, &mut fresh),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            parsed.verify(KEY, "d1", 2000, 300, &mut fresh),
            Err(Rejection::StaleTimestamp)
        );
    }
}
