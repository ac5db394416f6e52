//! A gateway's view of its devices: for each, what the message checks need
//! (category, enabled, the HMAC keys, version) and nothing more — no
//! certificate, no private key. The operator writes it into
//! `KEYS_SHARDS` Secrets per gateway (`<gateway>-device-keys-NN`, one data
//! key per device, the device in the shard its name hashes to), and the
//! gateway's ServiceAccount may read exactly those Secrets and no other.
//!
//! Shards because one Secret holds at most 1 MiB (about 5,000 devices);
//! sixteen hold 80,000 per gateway.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Credentials;

pub const KEYS_SHARDS: u32 = 16;
/// Label of the shard Secrets: the gateway they belong to.
pub const LABEL_DEVICE_KEYS: &str = "fleetward.io/device-keys-of";

pub fn keys_secret_name(gateway: &str, shard: u32) -> String {
    format!("{gateway}-device-keys-{shard:02}")
}

/// Every shard Secret's name of one gateway.
pub fn keys_secret_names(gateway: &str) -> Vec<String> {
    (0..KEYS_SHARDS).map(|s| keys_secret_name(gateway, s)).collect()
}

/// The shard of a device: FNV-1a of its name, so the operator and the
/// gateway (and any version of either) agree.
pub fn keys_shard(device: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in device.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % KEYS_SHARDS
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceKeys {
    pub category: String,
    pub enabled: bool,
    pub hmac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_hmac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_expires: Option<DateTime<Utc>>,
    pub version: i64,
}

impl std::fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKeys")
            .field("category", &self.category)
            .field("enabled", &self.enabled)
            .field("version", &self.version)
            .field("previous_expires", &self.previous_expires)
            .finish_non_exhaustive()
    }
}

/// Why a shard entry is unusable; names no value.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
#[error("device keys entry is not valid JSON of the expected shape")]
pub struct BadKeys;

impl DeviceKeys {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("device keys always serialize")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BadKeys> {
        // serde_json's errors may quote input: dropped.
        serde_json::from_slice(bytes).map_err(|_| BadKeys)
    }
}

impl Credentials {
    /// What this device's gateway needs of these credentials.
    pub fn gateway_keys(&self) -> DeviceKeys {
        DeviceKeys {
            category: self.category.clone(),
            enabled: self.enabled,
            hmac: self.hmac.clone(),
            previous_hmac: self.previous_hmac.clone(),
            previous_expires: self.previous_expires,
            version: self.version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        // Fixed values: a change here would move every device between shards
        // while old gateways still read the old layout.
        assert_eq!(keys_shard(""), 0x811c_9dc5 % KEYS_SHARDS);
        assert_eq!(keys_shard("a"), 0xe40c_292c % KEYS_SHARDS);
        let mut counts = [0u32; KEYS_SHARDS as usize];
        for i in 0..16_000 {
            counts[keys_shard(&format!("meter-{i}")) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
        assert_eq!(keys_secret_name("gw", 3), "gw-device-keys-03");
    }

    #[test]
    fn keys_round_trip_and_never_print() {
        let k = DeviceKeys {
            category: "smartLock".into(),
            enabled: true,
            hmac: "s3cr3t-current".into(),
            previous_hmac: Some("s3cr3t-previous".into()),
            previous_expires: Some(Utc::now()),
            version: 7,
        };
        assert_eq!(DeviceKeys::from_bytes(&k.to_bytes()).unwrap(), k);
        assert!(!format!("{k:?}").contains("s3cr3t"));
        let err = DeviceKeys::from_bytes(b"{\"hmac\":\"s3cr3t\"}").unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"));
    }
}
