//! The life of an encryption keyring Secret (a StationFeed's, a Gateway's
//! telemetry keyring): created once and never regenerated while it exists,
//! since every stored row depends on it; rotated (a new primary key, the
//! old ones kept) when the owner's rotation counter moves; left untouched
//! when it cannot be read, because overwriting it would orphan every row
//! it encrypted. Keyring Secrets carry no owner reference: deleting the
//! resource keeps its rows readable, and re-creating it picks the keyring
//! up again. The owner reports the outcome (events, status). Pure: the
//! owner reads the Secret, [`decide`] says what that means and what to
//! write, and `carry_out` writes it. Key material never leaves the Secret.

use std::collections::BTreeMap;

use fleetward_keyring::{Keyring, SECRET_DATA_KEY};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::ObjectMeta;

use super::desired::{Object, Write};
use super::secret_str;

/// On the keyring Secret: the rotation counter the keyring reflects.
pub const ANN_ROTATION: &str = "fleetward.io/key-rotation";

/// What [`decide`] found, or what its write will make.
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

/// What the keyring Secret `found` (read just now) means for `want`, and
/// the write that brings it there: none, a `create` (never an apply: if
/// another writer got there first, theirs is the keyring, which may already
/// have encrypted rows), or a replace at the resourceVersion read (a
/// concurrent change fails it, so a rotation can never drop a key someone
/// else added). Either write that loses a race fails the reconcile, and
/// the next one starts from what the other writer stored. A keyring
/// someone brought (without the annotation) is adopted as it is, the
/// current counter as its baseline.
pub fn decide(found: Option<Secret>, want: &KeyringSecret<'_>) -> (Outcome, Option<Write>) {
    let Some(mut secret) = found else {
        let keyring = Keyring::generate();
        let write = Write::CreateNew(Object::Secret(want.to_secret(&keyring)));
        return (Outcome::Created(keyring), Some(write));
    };
    let Some(text) = secret_str(&secret, SECRET_DATA_KEY) else {
        return (Outcome::Invalid(format!("no {SECRET_DATA_KEY} key")), None);
    };
    let mut keyring = match Keyring::from_json(&text) {
        Ok(k) => k,
        Err(e) => return (Outcome::Invalid(e.to_string()), None),
    };
    let recorded: Option<i64> = secret.annotations().get(ANN_ROTATION).and_then(|v| v.parse().ok());
    if recorded == Some(want.rotation) {
        return (Outcome::Unchanged(keyring), None);
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
    let write = Some(Write::Replace(Object::Secret(secret)));
    let outcome = if rotate {
        Outcome::Rotated { keyring, previous }
    } else {
        Outcome::Unchanged(keyring)
    };
    (outcome, write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn want(rotation: i64) -> KeyringSecret<'static> {
        KeyringSecret {
            name: "feed-keyring",
            labels: BTreeMap::new(),
            rotation,
        }
    }

    fn stored(keyring: Option<&Keyring>, annotation: Option<&str>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("feed-keyring".into()),
                resource_version: Some("41".into()),
                annotations: annotation.map(|a| BTreeMap::from([(ANN_ROTATION.to_string(), a.to_string())])),
                ..Default::default()
            },
            data: keyring
                .map(|k| BTreeMap::from([(SECRET_DATA_KEY.to_string(), ByteString(k.to_json().into_bytes()))])),
            ..Default::default()
        }
    }

    fn written(write: Option<Write>) -> (&'static str, Secret) {
        match write {
            Some(Write::CreateNew(Object::Secret(s))) => ("create", s),
            Some(Write::Replace(Object::Secret(s))) => ("replace", s),
            _ => panic!("a keyring is created or replaced, nothing else"),
        }
    }

    fn keyring_of(s: &Secret) -> Keyring {
        Keyring::from_json(&secret_str(s, SECRET_DATA_KEY).unwrap()).unwrap()
    }

    #[test]
    fn none_there_is_created_never_applied() {
        let (outcome, write) = decide(None, &want(3));
        let Outcome::Created(k) = outcome else {
            panic!("not Created")
        };
        let (how, s) = written(write);
        assert_eq!(how, "create");
        assert_eq!(keyring_of(&s).primary_id(), k.primary_id());
        assert_eq!(s.annotations()[ANN_ROTATION], "3");
    }

    #[test]
    fn an_up_to_date_keyring_is_left_alone() {
        let k = Keyring::generate();
        let (outcome, write) = decide(Some(stored(Some(&k), Some("2"))), &want(2));
        assert!(matches!(outcome, Outcome::Unchanged(ref u) if u.primary_id() == k.primary_id()));
        assert!(write.is_none());
    }

    #[test]
    fn a_new_counter_rotates_at_the_version_read_and_keeps_the_old_keys() {
        let k = Keyring::generate();
        let (outcome, write) = decide(Some(stored(Some(&k), Some("2"))), &want(3));
        let Outcome::Rotated { keyring, previous } = outcome else {
            panic!("not Rotated")
        };
        assert_eq!(previous, k.primary_id());
        let (how, s) = written(write);
        assert_eq!(how, "replace");
        assert_eq!(s.metadata.resource_version.as_deref(), Some("41"));
        assert_eq!(s.annotations()[ANN_ROTATION], "3");
        let after = keyring_of(&s);
        assert_eq!(after.primary_id(), keyring.primary_id());
        assert!(after.key_ids().contains(&k.primary_id().to_string()));
    }

    #[test]
    fn a_keyring_brought_without_the_annotation_is_adopted_unrotated() {
        let k = Keyring::generate();
        let (outcome, write) = decide(Some(stored(Some(&k), None)), &want(5));
        assert!(matches!(outcome, Outcome::Unchanged(ref u) if u.primary_id() == k.primary_id()));
        let (how, s) = written(write);
        assert_eq!(how, "replace");
        assert_eq!(keyring_of(&s).key_ids(), k.key_ids(), "the same keys");
        assert_eq!(s.annotations()[ANN_ROTATION], "5");
    }

    #[test]
    fn an_unusable_keyring_is_never_written_over() {
        let (outcome, write) = decide(Some(stored(None, Some("1"))), &want(2));
        assert!(matches!(outcome, Outcome::Invalid(_)));
        assert!(write.is_none());
        let mut garbage = stored(None, Some("1"));
        garbage.data = Some(BTreeMap::from([(
            SECRET_DATA_KEY.to_string(),
            ByteString(b"{not json".to_vec()),
        )]));
        let (outcome, write) = decide(Some(garbage), &want(2));
        assert!(matches!(outcome, Outcome::Invalid(_)));
        assert!(write.is_none());
    }
}
