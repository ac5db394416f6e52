//! The Secrets a spec names for its workload to read (a database URL, an
//! API key): each must exist with the named key, and must not be one the
//! operator made for itself. A spec naming, say, a Gateway's CA Secret and
//! key `tls.key` would hand the CA's private key to a pod's environment,
//! and from there to anyone who can read that pod; so a user-named
//! reference to an operator-made Secret is refused, whoever wrote it.
//!
//! Values are never read: only which keys a Secret has, and who made it.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::Result;
use crate::crd::SecretKeyRef;
use crate::ownership::made_by_operator;

/// What is wrong with the referenced Secrets, each described by the spec
/// field, the Secret's name and the key (never a value).
#[derive(Debug, Default, PartialEq)]
pub struct Checked {
    /// Not there yet (the Secret, or the key in it).
    pub missing: Vec<String>,
    /// Made by the operator: never handed to a workload by a spec.
    pub refused: Vec<String>,
}

impl Checked {
    /// The refusal as a condition message, when there is one.
    pub fn refusal(&self) -> Option<String> {
        (!self.refused.is_empty()).then(|| {
            format!(
                "refused: {}. These Secrets were made by the operator for its own use (certificate keys, \
                 credentials, keyrings) and are never given to a workload by a spec; name a Secret you made",
                self.refused.join("; ")
            )
        })
    }
}

/// Sorts one reference: `secret` is the named Secret as read, if any.
/// `user_named`: the spec names it (else the operator chose it, e.g. a
/// Gateway's CA certificate for its billing client, and only presence is
/// checked).
pub fn judge(what: &str, r: &SecretKeyRef, secret: Option<&Secret>, user_named: bool, out: &mut Checked) {
    let described = format!("{what} (Secret {:?}, key {:?})", r.name, r.key);
    match secret {
        Some(s) if user_named && made_by_operator(s) => out.refused.push(described),
        Some(s) if s.data.as_ref().is_some_and(|d| d.contains_key(&r.key)) => {}
        _ => out.missing.push(described),
    }
}

/// Reads each referenced Secret (not cached: they are not the operator's)
/// and sorts the references; `user_named` as for `judge`.
pub async fn check(secrets: &Api<Secret>, refs: &[(&str, &SecretKeyRef)], user_named: bool) -> Result<Checked> {
    let mut out = Checked::default();
    for (what, r) in refs {
        let secret = secrets.get_opt(&r.name).await?;
        judge(what, r, secret.as_ref(), user_named, &mut out);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::ObjectMeta;

    use super::*;
    use crate::ownership::labels;

    fn secret(meta: ObjectMeta) -> Secret {
        Secret {
            metadata: meta,
            data: Some(BTreeMap::from([("tls.key".to_string(), ByteString(b"k".to_vec()))])),
            ..Default::default()
        }
    }

    fn key(name: &str, key: &str) -> SecretKeyRef {
        SecretKeyRef {
            name: name.into(),
            key: key.into(),
        }
    }

    #[test]
    fn a_spec_naming_an_operator_made_secret_is_refused_and_says_which() {
        let labelled = secret(ObjectMeta {
            name: Some("gw-ca".into()),
            labels: Some(labels(&[])),
            ..Default::default()
        });
        let owned = secret(ObjectMeta {
            name: Some("lock-1-credentials".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "fleetward.io/v1alpha1".into(),
                kind: "Device".into(),
                name: "lock-1".into(),
                uid: "u".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let mine = secret(ObjectMeta {
            name: Some("db".into()),
            ..Default::default()
        });
        let mut out = Checked::default();
        judge(
            "spec.database.connectionSecretRef",
            &key("gw-ca", "tls.key"),
            Some(&labelled),
            true,
            &mut out,
        );
        judge(
            "spec.x",
            &key("lock-1-credentials", "tls.key"),
            Some(&owned),
            true,
            &mut out,
        );
        judge("spec.y", &key("db", "tls.key"), Some(&mine), true, &mut out);
        judge("spec.z", &key("db", "url"), Some(&mine), true, &mut out);
        judge("spec.w", &key("gone", "url"), None, true, &mut out);
        assert_eq!(out.refused.len(), 2);
        assert!(out.refused[0].contains("gw-ca") && out.refused[0].contains("tls.key"));
        assert_eq!(out.missing.len(), 2);
        assert!(
            out.refusal()
                .unwrap()
                .starts_with("refused: spec.database.connectionSecretRef")
        );
        // Chosen by the operator (not named by the spec): only presence.
        let mut out = Checked::default();
        judge(
            "the gateway's CA certificate",
            &key("gw-ca", "tls.key"),
            Some(&labelled),
            false,
            &mut out,
        );
        assert_eq!(out, Checked::default());
    }
}
