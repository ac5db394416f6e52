//! The contract of a Device's credentials Secret `<device>-credentials`:
//! what the operator writes and what the gateway (its device registry) and
//! the simulator read. One place for the key names, labels and annotations,
//! instead of each component retyping them.
//!
//! - data: `tls.crt`, `tls.key`, `ca.crt` (the device's certificate, key and
//!   its gateway's CA), `hmac.key` (the message-signing secret, 64 hex
//!   characters, used as text) and, during a rotation's grace period,
//!   `hmac.previous.key`;
//! - labels: `fleetward.io/device`, `fleetward.io/gateway`,
//!   `fleetward.io/category` (plus whatever the writer adds);
//! - annotations: `fleetward.io/secret-version` (moves on every change of
//!   the credentials), `fleetward.io/rotation` (the Device's `spec.rotation`
//!   they were issued for), `fleetward.io/enabled`,
//!   `fleetward.io/previous-hmac-expires-at` (RFC 3339) and
//!   `fleetward.io/previous-serial` (the certificate to revoke when the grace
//!   period ends).
//!
//! Key material never reaches `Debug`, errors or logs.

mod keys;
pub use keys::{BadKeys, DeviceKeys, KEYS_SHARDS, LABEL_DEVICE_KEYS, keys_secret_name, keys_secret_names, keys_shard};

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_CRT: &str = "ca.crt";
pub const HMAC_KEY: &str = "hmac.key";
pub const PREVIOUS_HMAC_KEY: &str = "hmac.previous.key";

pub const LABEL_DEVICE: &str = "fleetward.io/device";
pub const LABEL_GATEWAY: &str = "fleetward.io/gateway";
pub const LABEL_CATEGORY: &str = "fleetward.io/category";

pub const ANN_VERSION: &str = "fleetward.io/secret-version";
pub const ANN_ROTATION: &str = "fleetward.io/rotation";
pub const ANN_ENABLED: &str = "fleetward.io/enabled";
pub const ANN_PREVIOUS_EXPIRES: &str = "fleetward.io/previous-hmac-expires-at";
pub const ANN_PREVIOUS_SERIAL: &str = "fleetward.io/previous-serial";

pub fn secret_name(device: &str) -> String {
    format!("{device}-credentials")
}

/// Everything a Device holds, as stored in its Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub device: String,
    pub gateway: String,
    /// The Device's category (`weatherStation`, …).
    pub category: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    pub hmac: String,
    /// The HMAC secret before the last rotation, valid until `previous_expires`.
    pub previous_hmac: Option<String>,
    pub previous_expires: Option<DateTime<Utc>>,
    /// Serial of the certificate before the last rotation, revoked when the
    /// grace period ends.
    pub previous_serial: Option<String>,
    pub version: i64,
    pub rotation: i64,
    pub enabled: bool,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("device", &self.device)
            .field("gateway", &self.gateway)
            .field("category", &self.category)
            .field("version", &self.version)
            .field("rotation", &self.rotation)
            .field("enabled", &self.enabled)
            .field("previous_expires", &self.previous_expires)
            .field("previous_serial", &self.previous_serial)
            .finish_non_exhaustive()
    }
}

/// Why a Secret is not a usable credentials Secret. Names what is missing,
/// never a value.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum CredentialsError {
    #[error("the Secret has no label {0}")]
    MissingLabel(&'static str),
    #[error("the Secret has no key {0}")]
    MissingKey(&'static str),
    #[error("key {0} is not UTF-8 text")]
    NotText(&'static str),
    #[error("annotation {0} is not valid")]
    BadAnnotation(&'static str),
}

fn text(data: &BTreeMap<String, ByteString>, key: &'static str) -> Result<Option<String>, CredentialsError> {
    data.get(key)
        .map(|b| String::from_utf8(b.0.clone()).map_err(|_| CredentialsError::NotText(key)))
        .transpose()
}

impl Credentials {
    /// Reads a credentials Secret.
    pub fn from_secret(secret: &Secret) -> Result<Self, CredentialsError> {
        let empty = BTreeMap::new();
        let labels = secret.metadata.labels.as_ref().unwrap_or(&empty);
        let label = |l: &'static str| labels.get(l).cloned().ok_or(CredentialsError::MissingLabel(l));
        let ann = secret.metadata.annotations.as_ref().unwrap_or(&empty);
        let no_data = BTreeMap::new();
        let data = secret.data.as_ref().unwrap_or(&no_data);
        let required = |k: &'static str| text(data, k)?.ok_or(CredentialsError::MissingKey(k));
        let number = |a: &'static str| {
            ann.get(a)
                .map(|v| v.parse::<i64>().map_err(|_| CredentialsError::BadAnnotation(a)))
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let previous_hmac = text(data, PREVIOUS_HMAC_KEY)?;
        let previous_expires = match (previous_hmac.as_ref(), ann.get(ANN_PREVIOUS_EXPIRES)) {
            (Some(_), Some(t)) => Some(
                DateTime::parse_from_rfc3339(t)
                    .map_err(|_| CredentialsError::BadAnnotation(ANN_PREVIOUS_EXPIRES))?
                    .with_timezone(&Utc),
            ),
            _ => None,
        };
        Ok(Self {
            device: label(LABEL_DEVICE)?,
            gateway: label(LABEL_GATEWAY)?,
            category: label(LABEL_CATEGORY)?,
            cert_pem: required(TLS_CRT)?,
            key_pem: required(TLS_KEY)?,
            ca_pem: required(CA_CRT)?,
            hmac: required(HMAC_KEY)?,
            // A previous key without its expiry is not usable: dropped.
            previous_hmac: previous_hmac.filter(|_| previous_expires.is_some()),
            previous_expires,
            previous_serial: ann.get(ANN_PREVIOUS_SERIAL).cloned(),
            version: number(ANN_VERSION)?,
            rotation: number(ANN_ROTATION)?,
            enabled: ann.get(ANN_ENABLED).is_none_or(|v| v != "false"),
        })
    }

    /// The Secret holding these credentials. `labels` are added to the
    /// contract's own (e.g. the writer's managed-by label).
    pub fn to_secret(&self, labels: BTreeMap<String, String>, owner: Option<OwnerReference>) -> Secret {
        let mut all_labels = labels;
        all_labels.insert(LABEL_DEVICE.into(), self.device.clone());
        all_labels.insert(LABEL_GATEWAY.into(), self.gateway.clone());
        all_labels.insert(LABEL_CATEGORY.into(), self.category.clone());
        let mut annotations = BTreeMap::from([
            (ANN_VERSION.to_string(), self.version.to_string()),
            (ANN_ROTATION.to_string(), self.rotation.to_string()),
            (ANN_ENABLED.to_string(), self.enabled.to_string()),
        ]);
        let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
        let mut data = BTreeMap::from([
            (TLS_CRT.to_string(), bytes(&self.cert_pem)),
            (TLS_KEY.to_string(), bytes(&self.key_pem)),
            (CA_CRT.to_string(), bytes(&self.ca_pem)),
            (HMAC_KEY.to_string(), bytes(&self.hmac)),
        ]);
        if let (Some(prev), Some(expires)) = (&self.previous_hmac, self.previous_expires) {
            data.insert(PREVIOUS_HMAC_KEY.into(), bytes(prev));
            annotations.insert(
                ANN_PREVIOUS_EXPIRES.into(),
                expires.to_rfc3339_opts(SecondsFormat::Secs, true),
            );
        }
        if let Some(serial) = &self.previous_serial {
            annotations.insert(ANN_PREVIOUS_SERIAL.into(), serial.clone());
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(secret_name(&self.device)),
                labels: Some(all_labels),
                annotations: Some(annotations),
                owner_references: owner.map(|o| vec![o]),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(data),
            ..Default::default()
        }
    }

    /// True while the previous HMAC secret is still accepted at `now`.
    pub fn previous_key_valid(&self, now: DateTime<Utc>) -> bool {
        self.previous_hmac.is_some() && self.previous_expires.is_some_and(|t| now <= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            device: "d1".into(),
            gateway: "gw".into(),
            category: "smartLock".into(),
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
            ca_pem: "CA".into(),
            hmac: "a".repeat(64),
            previous_hmac: Some("b".repeat(64)),
            previous_expires: Some("2030-01-01T00:00:00Z".parse().unwrap()),
            previous_serial: Some("0a1b".into()),
            version: 4,
            rotation: 2,
            enabled: false,
        }
    }

    #[test]
    fn round_trips_through_a_secret() {
        let c = creds();
        let s = c.to_secret(BTreeMap::from([("app".to_string(), "x".to_string())]), None);
        assert_eq!(s.metadata.name.as_deref(), Some("d1-credentials"));
        assert_eq!(s.metadata.labels.as_ref().unwrap()["app"], "x");
        assert_eq!(
            s.metadata.annotations.as_ref().unwrap()[ANN_PREVIOUS_EXPIRES],
            "2030-01-01T00:00:00Z"
        );
        assert_eq!(Credentials::from_secret(&s).unwrap(), c);
    }

    #[test]
    fn a_previous_key_without_its_expiry_is_dropped() {
        let mut s = creds().to_secret(BTreeMap::new(), None);
        s.metadata.annotations.as_mut().unwrap().remove(ANN_PREVIOUS_EXPIRES);
        let c = Credentials::from_secret(&s).unwrap();
        assert_eq!(c.previous_hmac, None);
        assert!(!c.previous_key_valid(Utc::now()));
    }

    #[test]
    fn incomplete_secrets_say_what_is_missing_and_never_a_value() {
        let mut s = creds().to_secret(BTreeMap::new(), None);
        s.data.as_mut().unwrap().remove(HMAC_KEY);
        assert_eq!(
            Credentials::from_secret(&s),
            Err(CredentialsError::MissingKey(HMAC_KEY))
        );
        let mut s = creds().to_secret(BTreeMap::new(), None);
        s.metadata.labels.as_mut().unwrap().remove(LABEL_CATEGORY);
        assert_eq!(
            Credentials::from_secret(&s),
            Err(CredentialsError::MissingLabel(LABEL_CATEGORY))
        );
        let mut s = creds().to_secret(BTreeMap::new(), None);
        s.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANN_VERSION.into(), "sekrit".into());
        let err = Credentials::from_secret(&s).unwrap_err().to_string();
        assert!(err.contains(ANN_VERSION) && !err.contains("sekrit"), "{err}");
        let debug = format!("{:?}", creds());
        assert!(!debug.contains("aaaa") && !debug.contains("KEY"), "{debug}");
    }

    #[test]
    fn enabled_unless_it_says_false() {
        let mut s = creds().to_secret(BTreeMap::new(), None);
        s.metadata.annotations.as_mut().unwrap().remove(ANN_ENABLED);
        assert!(Credentials::from_secret(&s).unwrap().enabled);
    }
}
