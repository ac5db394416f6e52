//! Misbehaviour on purpose, to show the gateway refusing it (seed 003's
//! scenarios and the limits of seed 002).

use std::str::FromStr;

use fleetward_protocol::{Envelope, RawValue, data_topic, new_message_id, raw};
use serde_json::json;

use crate::{Device, SimError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    /// Send a valid message, then the very same bytes again.
    Replay,
    /// Change the payload after signing.
    Tamper,
    /// Claim to be another device: on our own topic (the gateway sees the
    /// mismatch) and on the other device's topic (the broker's ACL refuses).
    Impersonate,
    /// A validly signed message ten minutes old.
    Stale,
    /// A validly signed message ten minutes in the future.
    Future,
    /// Many valid messages as fast as possible.
    Flood,
    /// A message larger than the gateway's limit.
    Oversize,
    /// Not JSON at all.
    Malformed,
    /// Validly signed, but the payload breaks the category schema.
    WrongSchema,
    /// Validly signed, schema-valid if a parser keeps the last of a repeated
    /// key, carrying an unchecked value for one that keeps the first.
    DuplicateKeys,
}

impl FromStr for Attack {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "replay" => Attack::Replay,
            "tamper" => Attack::Tamper,
            "impersonate" => Attack::Impersonate,
            "stale" => Attack::Stale,
            "future" => Attack::Future,
            "flood" => Attack::Flood,
            "oversize" => Attack::Oversize,
            "malformed" => Attack::Malformed,
            "wrong-schema" => Attack::WrongSchema,
            "duplicate-keys" => Attack::DuplicateKeys,
            other => return Err(format!("unknown attack {other:?}")),
        })
    }
}

impl Attack {
    pub const ALL: [Attack; 10] = [
        Attack::Replay,
        Attack::Tamper,
        Attack::Impersonate,
        Attack::Stale,
        Attack::Future,
        Attack::Flood,
        Attack::Oversize,
        Attack::Malformed,
        Attack::WrongSchema,
        Attack::DuplicateKeys,
    ];
}

/// What an attack sent, so a caller can check each piece was refused.
#[derive(Debug, Default)]
pub struct Sent {
    /// Message ids sent that the gateway must accept (e.g. the original of
    /// a replay, or the first messages of a flood up to the burst).
    pub legitimate: Vec<String>,
    /// Message ids of the malicious messages (where they have one).
    pub malicious: Vec<String>,
}

pub struct AttackOptions {
    /// The device to impersonate.
    pub victim: Option<String>,
    /// The gateway's size limit, to exceed it.
    pub max_message_bytes: usize,
    /// Messages sent by a flood.
    pub flood_count: usize,
}

pub async fn perform(dev: &Device, attack: Attack, opts: &AttackOptions) -> Result<Sent, SimError> {
    let topic = data_topic(&dev.id);
    let now = chrono::Utc::now().timestamp();
    let mut sent = Sent::default();
    match attack {
        Attack::Replay => {
            let env = dev.envelope(&dev.reading());
            let bytes = env.to_json().into_bytes();
            dev.publish(&topic, bytes.clone()).await?;
            dev.publish(&topic, bytes).await?;
            sent.legitimate.push(env.message_id.clone());
            sent.malicious.push(env.message_id);
        }
        Attack::Tamper => {
            let env = dev.envelope(&json!({"temperature": 22.5, "humidity": 50, "pressure": 1000, "wind_speed": 1}));
            let json = env.to_json().replace("22.5", "99.9");
            dev.publish(&topic, json.into_bytes()).await?;
            sent.malicious.push(env.message_id);
        }
        Attack::Impersonate => {
            let victim = opts.victim.clone().unwrap_or_else(|| "someone-else".into());
            let id = new_message_id();
            let env = Envelope::sign(&dev.hmac(), &victim, now, &id, raw(&dev.reading()));
            dev.publish(&topic, env.to_json().into_bytes()).await?;
            // The broker drops this one (ACL); it never reaches the gateway.
            dev.publish(&data_topic(&victim), env.to_json().into_bytes()).await?;
            sent.malicious.push(id);
        }
        Attack::Stale | Attack::Future => {
            let ts = if attack == Attack::Stale { now - 600 } else { now + 600 };
            let env = dev.envelope_at(ts, &new_message_id(), &dev.reading());
            dev.publish(&topic, env.to_json().into_bytes()).await?;
            sent.malicious.push(env.message_id);
        }
        Attack::Flood => {
            for _ in 0..opts.flood_count {
                let env = dev.envelope(&dev.reading());
                dev.publish(&topic, env.to_json().into_bytes()).await?;
                sent.malicious.push(env.message_id);
            }
        }
        Attack::Oversize => {
            let mut payload = dev.reading();
            payload["padding"] = "x".repeat(opts.max_message_bytes + 1).into();
            let env = dev.envelope(&payload);
            dev.publish(&topic, env.to_json().into_bytes()).await?;
            sent.malicious.push(env.message_id);
        }
        Attack::Malformed => {
            dev.publish(&topic, b"{\"device_id\": \"not closed".to_vec()).await?;
        }
        Attack::DuplicateKeys => {
            let mut reading = dev.reading();
            let first = reading.as_object_mut().and_then(|m| m.keys().next().cloned());
            let text = reading.to_string();
            let payload = match first {
                Some(key) => text.replacen('{', &format!("{{\"{key}\":\"'; DROP TABLE readings; --\","), 1),
                None => text,
            };
            let id = new_message_id();
            let payload = RawValue::from_string(payload).expect("still valid JSON");
            let env = Envelope::sign(&dev.hmac(), &dev.id, now, &id, payload);
            dev.publish(&topic, env.to_json().into_bytes()).await?;
            sent.malicious.push(id);
        }
        Attack::WrongSchema => {
            let env = dev.envelope(&json!({"temperature": "hot", "command": "open"}));
            dev.publish(&topic, env.to_json().into_bytes()).await?;
            sent.malicious.push(env.message_id);
        }
    }
    Ok(sent)
}
