//! The signature: HMAC-SHA256 over the device id, timestamp, message id
//! and payload, after a prefix naming the version and direction
//! ([`Domain`]); and the freshness window every signed message is held to.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::Rejection;

type HmacSha256 = Hmac<Sha256>;

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
    fn timestamp_window() {
        assert_eq!(check_timestamp(1000, 1300, 300), Ok(()));
        assert_eq!(check_timestamp(1000, 1301, 300), Err(Rejection::StaleTimestamp));
        assert_eq!(check_timestamp(1301, 1000, 300), Err(Rejection::FutureTimestamp));
        assert_eq!(
            check_timestamp(i64::MIN, i64::MAX, 300),
            Err(Rejection::FutureTimestamp)
        );
    }
}
