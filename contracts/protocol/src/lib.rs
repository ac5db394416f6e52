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
//!
//! One module per concern: [`envelope`](Envelope) (data) and
//! [`command`](Command) messages, the [`signature`](sign_hex) they carry,
//! the [`Rejection`] reasons, the device [topics](data_topic), what the
//! [`broker`]'s plugin shares with the gateway, the device
//! [`category`] schemas, the [`replay`] window, the [`telemetry`] record the
//! gateway forwards and the [`station`] record of a StationFeed.

pub mod broker;
pub mod category;
mod command;
mod envelope;
mod json;
pub mod kafka;
pub mod record;
mod rejection;
pub mod replay;
mod signature;
pub mod station;
pub mod telemetry;
#[cfg(feature = "tls")]
pub mod tls;
mod topics;

pub use serde_json::value::RawValue;

pub use broker::{CLOSE_TOPIC, REVOKE_TOPIC};
pub use category::Category;
pub use command::Command;
pub use envelope::{Envelope, MAX_DEVICE_ID_LEN, MAX_MESSAGE_ID_LEN, VERSION};
pub use json::refuse_duplicate_keys;
pub use rejection::Rejection;
pub use replay::ReplayWindow;
pub use signature::{Domain, check_timestamp, sign_hex, signing_input, verify_hex};
pub use topics::{
    DATA_TOPIC_SUFFIX, DEVICE_TOPIC_PREFIX, command_topic, data_topic, device_from_data_topic, response_topic,
};

/// A fresh random message id (UUID v4, as seed 003 describes).
pub fn new_message_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Turns any JSON value into the raw payload to sign.
pub fn raw(value: &serde_json::Value) -> Box<RawValue> {
    RawValue::from_string(value.to_string()).expect("serialized JSON is valid JSON")
}
