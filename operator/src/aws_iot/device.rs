//! A Device in AWS IoT Core: a thing named `<namespace>_<device>` (also
//! the MQTT client id the device connects with; `_` cannot occur in a
//! Kubernetes name, so the pair is unambiguous), the certificate the
//! operator issued for it, and a policy of the same name that lets that
//! client id connect, publish to `device/<id>/data` only, and subscribe to
//! and receive `device/<id>/command` and `device/<id>/response` only.
//!
//! - enabled: the current certificate registered (with the Gateway's CA)
//!   and ACTIVE, the policy attached to it, it attached to the thing; the
//!   previous certificate, while the rotation's grace period keeps it
//!   valid in the gateway's CRL, stays as it is; any other certificate of
//!   the thing is revoked and its policy detached (it stays attached to
//!   the thing, as the device's history, until the Device goes);
//! - disabled: every certificate of the thing revoked, policy detached;
//! - deleted: every certificate revoked, detached and deleted, then the
//!   policy (with its old versions) and the thing.

use std::collections::BTreeMap;

use aws_sdk_iot::Client;
use aws_sdk_iot::types::{AttributePayload, CertificateStatus};

use super::{ArnBase, Registered, done_if_gone, failed, not_found, same_document};
use crate::Result;
use crate::crd::device::DeviceAwsIot;

pub fn thing_name(namespace: &str, device: &str) -> String {
    format!("{namespace}_{device}")
}

/// What the device should be in IoT Core.
pub struct Desired<'a> {
    pub thing: String,
    pub attributes: BTreeMap<String, String>,
    /// The certificate in the device's Secret, and its serial.
    pub cert_pem: &'a str,
    pub serial: &'a str,
    /// The previous certificate, still valid during a rotation's grace.
    pub keep_serial: Option<&'a str>,
    pub ca_pem: &'a str,
    pub device: &'a str,
    pub enabled: bool,
    /// The account's ARN base, from the Gateway's registered CA: the
    /// policy names the thing's client id by ARN, so the plan is complete
    /// before anything, the thing included, is created.
    pub base: ArnBase,
}

/// A certificate attached to the thing, as IoT Core describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub id: String,
    pub arn: String,
    pub status: String,
    /// Parsed from the registered PEM; `None` if it cannot be read.
    pub serial: Option<String>,
    pub policies: Vec<String>,
}

/// What IoT Core holds for the device.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Observed {
    pub thing_arn: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub principals: Vec<Principal>,
    pub policy_document: Option<String>,
}

/// The calls to make, in this order.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub create_thing: bool,
    pub update_attributes: bool,
    /// Register the current certificate (it is not attached to the thing).
    pub register: bool,
    /// The current certificate is attached but not ACTIVE (and not
    /// revoked, which is final): activate it.
    pub activate: Option<String>,
    pub create_policy: bool,
    pub update_policy: bool,
    /// Attach the policy / the thing to the current certificate.
    pub attach_policy: bool,
    pub attach_thing: bool,
    /// Other certificates: revoke (when not yet) and detach the policy.
    pub retire: Vec<Principal>,
}

impl Observed {
    /// The certificate of the thing with this serial.
    fn holding(&self, serial: &str) -> Option<&Principal> {
        self.principals.iter().find(|p| p.serial.as_deref() == Some(serial))
    }
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        *self == Plan::default()
    }
}

/// The policy of one device: its own client id, its own topics.
pub fn policy_document(base: &ArnBase, thing: &str, device: &str) -> String {
    let topic = |t: &str| base.arn(&format!("topic/device/{device}/{t}"));
    let filter = |t: &str| base.arn(&format!("topicfilter/device/{device}/{t}"));
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": base.arn(&format!("client/{thing}"))},
            {"Effect": "Allow", "Action": "iot:Publish", "Resource": topic("data")},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": [filter("command"), filter("response")]},
            {"Effect": "Allow", "Action": "iot:Receive", "Resource": [topic("command"), topic("response")]},
        ]
    })
    .to_string()
}

/// Every decision, from what IoT Core holds, the thing's creation
/// included; `document` is the policy the device should have (`None`:
/// leave a policy that exists as it is).
pub fn plan(want: &Desired<'_>, seen: &Observed, document: Option<&str>) -> Plan {
    let mut plan = Plan {
        create_thing: seen.thing_arn.is_none(),
        update_attributes: seen.thing_arn.is_some() && seen.attributes != want.attributes,
        ..Default::default()
    };
    let current = seen.holding(want.serial);
    if want.enabled {
        match current {
            None => plan.register = true,
            Some(p) if p.status != "ACTIVE" && p.status != "REVOKED" => plan.activate = Some(p.id.clone()),
            Some(_) => {}
        }
        match (&seen.policy_document, document) {
            (None, _) => plan.create_policy = true,
            (Some(have), Some(want)) if !same_document(have, want) => plan.update_policy = true,
            _ => {}
        }
        let name = &want.thing;
        plan.attach_policy = current.is_none_or(|p| !p.policies.contains(name));
        plan.attach_thing = current.is_none();
    }
    plan.retire = seen
        .principals
        .iter()
        .filter(|p| {
            let serial = p.serial.as_deref();
            let kept =
                want.enabled && (serial == Some(want.serial) || (serial.is_some() && serial == want.keep_serial));
            !kept && (p.status != "REVOKED" || !p.policies.is_empty())
        })
        .cloned()
        .collect();
    plan
}

/// Reads what IoT Core holds for the thing (reads only).
pub async fn observe(client: &Client, thing: &str, policy: &str) -> Result<Observed> {
    let mut seen = Observed::default();
    match client.describe_thing().thing_name(thing).send().await {
        Ok(t) => {
            seen.thing_arn = t.thing_arn().map(str::to_string);
            seen.attributes = t
                .attributes()
                .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default();
        }
        Err(e) if not_found(&e) => {}
        Err(e) => return Err(failed("DescribeThing", e)),
    }
    if seen.thing_arn.is_some() {
        let principals = client
            .list_thing_principals()
            .thing_name(thing)
            .send()
            .await
            .map_err(|e| failed("ListThingPrincipals", e))?;
        for arn in principals.principals() {
            let Some(id) = super::cert_id(arn) else { continue };
            let cert = match client.describe_certificate().certificate_id(id).send().await {
                Ok(c) => c,
                Err(e) if not_found(&e) => continue,
                Err(e) => return Err(failed("DescribeCertificate", e)),
            };
            let desc = cert.certificate_description();
            let attached = client
                .list_attached_policies()
                .target(arn)
                .send()
                .await
                .map_err(|e| failed("ListAttachedPolicies", e))?;
            seen.principals.push(Principal {
                id: id.to_string(),
                arn: arn.clone(),
                status: desc
                    .and_then(|d| d.status())
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
                serial: desc
                    .and_then(|d| d.certificate_pem())
                    .and_then(|pem| crate::pki::inspect(pem).ok())
                    .map(|i| i.serial),
                policies: attached
                    .policies()
                    .iter()
                    .filter_map(|p| p.policy_name().map(str::to_string))
                    .collect(),
            });
        }
    }
    match client.get_policy().policy_name(policy).send().await {
        Ok(p) => seen.policy_document = p.policy_document().map(str::to_string),
        Err(e) if not_found(&e) => {}
        Err(e) => return Err(failed("GetPolicy", e)),
    }
    Ok(seen)
}

/// Brings the device in IoT Core to `want`; returns its status.
pub async fn sync(client: &Client, want: &Desired<'_>) -> Result<DeviceAwsIot> {
    let thing = &want.thing;
    let seen = observe(client, thing, thing).await?;
    let document = policy_document(&want.base, thing, want.device);
    let plan = plan(want, &seen, Some(&document));
    let attributes = AttributePayload::builder()
        .set_attributes(Some(want.attributes.clone().into_iter().collect()))
        .merge(false)
        .build();
    let mut thing_arn = seen.thing_arn.clone().unwrap_or_default();
    if plan.create_thing {
        let made = client
            .create_thing()
            .thing_name(thing)
            .attribute_payload(attributes.clone())
            .send()
            .await
            .map_err(|e| failed("CreateThing", e))?;
        thing_arn = made.thing_arn().unwrap_or_default().to_string();
    }
    if plan.update_attributes {
        client
            .update_thing()
            .thing_name(thing)
            .attribute_payload(attributes)
            .send()
            .await
            .map_err(|e| failed("UpdateThing", e))?;
    }
    let mut current = seen.holding(want.serial).map(|p| Registered {
        id: p.id.clone(),
        arn: p.arn.clone(),
        status: p.status.clone(),
    });
    if plan.register {
        current = Some(super::register_certificate(client, want.cert_pem, want.ca_pem).await?);
    }
    if let Some(id) = &plan.activate {
        client
            .update_certificate()
            .certificate_id(id)
            .new_status(CertificateStatus::Active)
            .send()
            .await
            .map_err(|e| failed("UpdateCertificate", e))?;
        if let Some(c) = current.as_mut() {
            c.status = "ACTIVE".into();
        }
    }
    if plan.create_policy || plan.update_policy {
        super::put_policy(client, thing, &document, plan.update_policy).await?;
    }
    if let Some(Registered { arn, .. }) = &current {
        if plan.attach_policy {
            client
                .attach_policy()
                .policy_name(thing)
                .target(arn)
                .send()
                .await
                .map_err(|e| failed("AttachPolicy", e))?;
        }
        if plan.attach_thing {
            client
                .attach_thing_principal()
                .thing_name(thing)
                .principal(arn)
                .send()
                .await
                .map_err(|e| failed("AttachThingPrincipal", e))?;
        }
    }
    for old in &plan.retire {
        retire(client, old).await?;
        if let Some(c) = current.as_mut().filter(|c| c.id == old.id) {
            c.status = "REVOKED".into();
        }
    }
    let Registered {
        id: certificate_id,
        status: certificate_status,
        ..
    } = current.unwrap_or_default();
    Ok(DeviceAwsIot {
        thing_name: thing.clone(),
        thing_arn,
        certificate_id,
        certificate_status,
        policy_name: thing.clone(),
    })
}

/// Revokes a certificate and detaches its policies.
async fn retire(client: &Client, cert: &Principal) -> Result<()> {
    if cert.status != "REVOKED" {
        client
            .update_certificate()
            .certificate_id(&cert.id)
            .new_status(CertificateStatus::Revoked)
            .send()
            .await
            .map_err(|e| failed("UpdateCertificate", e))?;
    }
    for policy in &cert.policies {
        done_if_gone(
            "DetachPolicy",
            client
                .detach_policy()
                .policy_name(policy)
                .target(&cert.arn)
                .send()
                .await,
        )?;
    }
    Ok(())
}

/// Removes everything the operator made for the device.
pub async fn remove(client: &Client, thing: &str) -> Result<()> {
    let seen = observe(client, thing, thing).await?;
    for cert in &seen.principals {
        retire(client, cert).await?;
        done_if_gone(
            "DetachThingPrincipal",
            client
                .detach_thing_principal()
                .thing_name(thing)
                .principal(&cert.arn)
                .send()
                .await,
        )?;
        done_if_gone(
            "DeleteCertificate",
            client
                .delete_certificate()
                .certificate_id(&cert.id)
                .force_delete(true)
                .send()
                .await,
        )?;
    }
    if seen.policy_document.is_some() {
        super::delete_policy(client, thing).await?;
    }
    if seen.thing_arn.is_some() {
        done_if_gone("DeleteThing", client.delete_thing().thing_name(thing).send().await)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(enabled: bool) -> Desired<'static> {
        Desired {
            thing: "ns_d1".into(),
            attributes: [("category".to_string(), "sensor".to_string())].into(),
            cert_pem: "PEM",
            serial: "02",
            keep_serial: None,
            ca_pem: "CA",
            device: "d1",
            enabled,
            base: ArnBase::parse("arn:aws:iot:eu-west-1:123456789012:cacert/x").unwrap(),
        }
    }

    fn cert(serial: &str, status: &str, policies: &[&str]) -> Principal {
        Principal {
            id: format!("id{serial}"),
            arn: format!("arn:aws:iot:eu-west-1:1:cert/id{serial}"),
            status: status.into(),
            serial: Some(serial.into()),
            policies: policies.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn in_order(principals: Vec<Principal>) -> Observed {
        Observed {
            thing_arn: Some("arn:aws:iot:eu-west-1:1:thing/ns_d1".into()),
            attributes: [("category".to_string(), "sensor".to_string())].into(),
            principals,
            policy_document: Some(r#"{"a":1}"#.into()),
        }
    }

    #[test]
    fn a_new_device_gets_everything() {
        let p = plan(&want(true), &Observed::default(), None);
        assert!(p.create_thing && p.register && p.create_policy && p.attach_policy && p.attach_thing);
        assert!(!p.update_attributes && p.retire.is_empty());
    }

    #[test]
    fn a_device_in_order_needs_no_call() {
        let seen = in_order(vec![cert("02", "ACTIVE", &["ns_d1"])]);
        assert!(plan(&want(true), &seen, Some(r#"{ "a": 1 }"#)).is_empty());
    }

    #[test]
    fn a_changed_policy_or_attribute_is_updated() {
        let mut seen = in_order(vec![cert("02", "ACTIVE", &["ns_d1"])]);
        seen.attributes.insert("category".into(), "camera".into());
        let p = plan(&want(true), &seen, Some(r#"{"a":2}"#));
        assert!(p.update_attributes && p.update_policy && !p.create_policy && !p.register);
    }

    #[test]
    fn a_rotation_revokes_the_older_certificates_but_not_the_one_in_grace() {
        let seen = in_order(vec![cert("01", "ACTIVE", &["ns_d1"]), cert("02", "ACTIVE", &["ns_d1"])]);
        let mut w = want(true);
        w.serial = "03";
        w.keep_serial = Some("02");
        let p = plan(&w, &seen, Some(r#"{"a":1}"#));
        assert!(p.register && p.attach_policy && p.attach_thing);
        assert_eq!(p.retire, vec![cert("01", "ACTIVE", &["ns_d1"])]);
    }

    #[test]
    fn disabling_revokes_every_certificate_once() {
        let seen = in_order(vec![cert("02", "ACTIVE", &["ns_d1"])]);
        let p = plan(&want(false), &seen, Some(r#"{"a":1}"#));
        assert_eq!(p.retire, vec![cert("02", "ACTIVE", &["ns_d1"])]);
        assert!(!p.register && !p.attach_policy && !p.create_policy);
        let done = in_order(vec![cert("02", "REVOKED", &[])]);
        assert!(plan(&want(false), &done, Some(r#"{"a":1}"#)).is_empty());
    }

    #[test]
    fn an_inactive_current_certificate_is_activated_a_revoked_one_is_not() {
        let seen = in_order(vec![cert("02", "INACTIVE", &["ns_d1"])]);
        assert_eq!(plan(&want(true), &seen, None).activate, Some("id02".into()));
        let revoked = in_order(vec![cert("02", "REVOKED", &["ns_d1"])]);
        let p = plan(&want(true), &revoked, None);
        assert_eq!(p.activate, None);
        assert!(!p.register);
    }

    #[test]
    fn the_policy_names_only_the_devices_own_client_and_topics() {
        let base = ArnBase::parse("arn:aws:iot:eu-west-1:123:thing/x").unwrap();
        let doc: serde_json::Value = serde_json::from_str(&policy_document(&base, "ns_d1", "d1")).unwrap();
        let text = doc.to_string();
        assert!(text.contains("arn:aws:iot:eu-west-1:123:client/ns_d1"));
        assert!(text.contains("topic/device/d1/data"));
        assert!(
            !text.contains('*') && !text.contains('+') && !text.contains('#'),
            "{text}"
        );
    }
}
