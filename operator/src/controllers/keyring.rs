//! The life of an encryption keyring Secret (a StationFeed's, a Gateway's
//! telemetry keyring): created once and never regenerated while it exists,
//! since every stored row depends on it; rotated (a new primary key, the
//! old ones kept) when the owner's rotation counter moves; left untouched
//! when it cannot be read, because overwriting it would orphan every row
//! it encrypted. Keyring Secrets carry no owner reference: deleting the
//! resource keeps its rows readable, and re-creating it picks the keyring
//! up again. The owner reports the outcome (events, status); this module
//! only reads and writes the Secret. Key material never leaves it.

use std::collections::BTreeMap;

use fleetward_keyring::{Keyring, SECRET_DATA_KEY};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, ResourceExt};

use super::secret_str;
use crate::{Error, Result};

/// On the keyring Secret: the rotation counter the keyring reflects.
pub const ANN_ROTATION: &str = "fleetward.io/key-rotation";

/// What `ensure` found or did.
pub enum Outcome {
    /// It was there and up to date.
    Unchanged(Keyring),
    /// There was none: a new keyring.
    Created(Keyring),
    /// A new primary key; `previous` was the primary before.
    Rotated { keyring: Keyring, previous: String },
    /// The Secret exists but holds no usable keyring (why, without key
    /// material); it was left as it is.
    Invalid(String),
}

pub struct KeyringSecret<'a> {
    pub name: &'a str,
    pub labels: BTreeMap<String, String>,
    /// The owner's rotation counter.
    pub rotation: i64,
}

impl KeyringSecret<'_> {
    fn to_secret(&self, keyring: &Keyring) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.to_string()),
                labels: Some(self.labels.clone()),
                annotations: Some(BTreeMap::from([(ANN_ROTATION.to_string(), self.rotation.to_string())])),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                SECRET_DATA_KEY.to_string(),
                ByteString(keyring.to_json().into_bytes()),
            )])),
            ..Default::default()
        }
    }
}

/// A keyring write that lost a race (409) becomes `Error::Conflict`: the
/// next reconcile starts again from what the other writer stored.
fn conflict_is_error(result: kube::Result<Secret>, name: &str) -> Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Conflict {
            name: name.to_string(),
            attempts: 1,
        }),
        Err(e) => Err(e.into()),
    }
}

/// Creates the keyring once; rotates it when the rotation counter differs
/// from what the Secret records. A keyring someone brought (without the
/// annotation) is adopted as it is, the current counter as its baseline.
pub async fn ensure(secrets: &Api<Secret>, want: &KeyringSecret<'_>) -> Result<Outcome> {
    let Some(mut secret) = secrets.get_opt(want.name).await? else {
        let keyring = Keyring::generate();
        // `create`, never apply: if another writer got there first, theirs
        // is the keyring (it may already have encrypted rows).
        conflict_is_error(
            secrets.create(&PostParams::default(), &want.to_secret(&keyring)).await,
            want.name,
        )?;
        return Ok(Outcome::Created(keyring));
    };
    let Some(text) = secret_str(&secret, SECRET_DATA_KEY) else {
        return Ok(Outcome::Invalid(format!("no {SECRET_DATA_KEY} key")));
    };
    let mut keyring = match Keyring::from_json(&text) {
        Ok(k) => k,
        Err(e) => return Ok(Outcome::Invalid(e.to_string())),
    };
    let recorded: Option<i64> = secret.annotations().get(ANN_ROTATION).and_then(|v| v.parse().ok());
    if recorded == Some(want.rotation) {
        return Ok(Outcome::Unchanged(keyring));
    }
    let rotate = recorded.is_some();
    let previous = keyring.primary_id().to_string();
    if rotate {
        keyring.rotate();
        secret
            .data
            .get_or_insert_default()
            .insert(SECRET_DATA_KEY.to_string(), ByteString(keyring.to_json().into_bytes()));
    }
    secret
        .annotations_mut()
        .insert(ANN_ROTATION.to_string(), want.rotation.to_string());
    // Replace with the resourceVersion just read: a concurrent change makes
    // this fail (409) and the next reconcile starts from the new state, so a
    // rotation can never drop a key someone else added.
    conflict_is_error(
        secrets.replace(want.name, &PostParams::default(), &secret).await,
        want.name,
    )?;
    Ok(if rotate {
        Outcome::Rotated { keyring, previous }
    } else {
        Outcome::Unchanged(keyring)
    })
}
