//! A Gateway in AWS IoT Core: its CA registered (ACTIVE, no automatic
//! registration: only certificates the operator registers are known), the
//! account's MQTT data endpoint, and the gateway workload's own client
//! certificate with a policy of its own: connect as its client id,
//! subscribe to and receive the devices' data topics, publish commands and
//! responses to them. The CA registration proves possession of the CA key
//! the way IoT Core asks: a verification certificate whose common name is
//! the account's registration code, signed by the CA.

use aws_sdk_iot::Client;
use aws_sdk_iot::operation::register_ca_certificate::RegisterCACertificateError;
use aws_sdk_iot::types::{CaCertificateStatus, CertificateStatus};

use super::{ArnBase, Registered, done_if_gone, failed, not_found, same_document};
use crate::Result;
use crate::crd::gateway::GatewayAwsIot;
use crate::pki::{CaBundle, LeafRequest, Usage};

/// Reads the CA registration the status names (reads only).
pub async fn observe(client: &Client, known_id: Option<&str>) -> Result<Option<Registered>> {
    let Some(id) = known_id else { return Ok(None) };
    match client.describe_ca_certificate().certificate_id(id).send().await {
        Ok(d) => Ok(d.certificate_description().map(|c| Registered {
            id: c.certificate_id().unwrap_or(id).to_string(),
            arn: c.certificate_arn().unwrap_or_default().to_string(),
            status: c.status().map(|s| s.as_str().to_string()).unwrap_or_default(),
        })),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(failed("DescribeCACertificate", e)),
    }
}

/// The gateway workload's identity in IoT Core.
pub struct Workload<'a> {
    pub client_id: &'a str,
    pub policy: &'a str,
    pub cert_pem: &'a str,
}

/// The gateway's policy: its own client id; every device's data topic to
/// read, every device's command and response topic to write.
pub fn policy_document(base: &ArnBase, client_id: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": base.arn(&format!("client/{client_id}"))},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": base.arn("topicfilter/device/+/data")},
            {"Effect": "Allow", "Action": "iot:Receive", "Resource": base.arn("topic/device/*/data")},
            {"Effect": "Allow", "Action": "iot:Publish", "Resource": [
                base.arn("topic/device/*/command"),
                base.arn("topic/device/*/response"),
            ]},
        ]
    })
    .to_string()
}

/// What to do about the CA registration, from what IoT Core holds and the
/// status knows.
#[derive(Debug, Default, PartialEq)]
pub struct CaPlan {
    /// Not registered (or the registration the status names is gone).
    pub register: bool,
    /// Registered but not ACTIVE: activate it.
    pub activate: Option<String>,
    /// The status has no data endpoint yet: ask for it.
    pub describe_endpoint: bool,
}

pub fn plan_ca(registered: Option<&Registered>, known: Option<&GatewayAwsIot>) -> CaPlan {
    CaPlan {
        register: registered.is_none(),
        activate: registered.filter(|r| r.status != "ACTIVE").map(|r| r.id.clone()),
        describe_endpoint: known.and_then(|k| k.data_endpoint.as_ref()).is_none(),
    }
}

/// A certificate the workload's policy is attached to, with its PEM.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub id: String,
    pub arn: String,
    pub pem: Option<String>,
}

/// What IoT Core holds for the workload: its policy and the certificates
/// attached to it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WorkloadSeen {
    pub policy_document: Option<String>,
    pub targets: Vec<Target>,
}

/// What to do about the workload's policy and certificates.
#[derive(Debug, Default, PartialEq)]
pub struct WorkloadPlan {
    /// Put the policy: `Some(false)` creates it, `Some(true)` adds a
    /// version with the wanted document.
    pub put_policy: Option<bool>,
    /// The certificate in effect, when it is registered already.
    pub current: Option<String>,
    /// Every other certificate: detached, revoked and deleted (a renewed
    /// certificate replaces the old one).
    pub retire: Vec<Target>,
}

pub fn plan_workload(seen: &WorkloadSeen, document: &str, cert_pem: &str) -> WorkloadPlan {
    let put_policy = match &seen.policy_document {
        None => Some(false),
        Some(have) if !same_document(have, document) => Some(true),
        Some(_) => None,
    };
    let is_current = |t: &Target| t.pem.as_deref().map(str::trim) == Some(cert_pem.trim());
    WorkloadPlan {
        put_policy,
        current: seen.targets.iter().find(|t| is_current(t)).map(|t| t.id.clone()),
        retire: seen.targets.iter().filter(|t| !is_current(t)).cloned().collect(),
    }
}

/// Registers the CA when it is not, activates it when it is not active,
/// reads the data endpoint when the status lacks it, and keeps the
/// workload's certificate registered with its policy: each step observed,
/// planned (`plan_ca`, `plan_workload`, pure), then carried out.
pub async fn sync(
    client: &Client,
    ca: &CaBundle,
    known: Option<&GatewayAwsIot>,
    workload: &Workload<'_>,
) -> Result<GatewayAwsIot> {
    let registered = observe(client, known.map(|k| k.ca_certificate_id.as_str())).await?;
    let plan = plan_ca(registered.as_ref(), known);
    let mut registered = match registered {
        Some(r) => r,
        None => register(client, ca).await?,
    };
    // A registration that `register` found made already (a crash before
    // the status was written) is planned like an observed one.
    let activate = plan
        .activate
        .or_else(|| (registered.status != "ACTIVE").then(|| registered.id.clone()));
    if let Some(id) = &activate {
        client
            .update_ca_certificate()
            .certificate_id(id)
            .new_status(CaCertificateStatus::Active)
            .send()
            .await
            .map_err(|e| failed("UpdateCACertificate", e))?;
        registered.status = "ACTIVE".into();
    }
    let data_endpoint = match plan.describe_endpoint {
        false => known.and_then(|k| k.data_endpoint.clone()),
        true => client
            .describe_endpoint()
            .endpoint_type("iot:Data-ATS")
            .send()
            .await
            .map_err(|e| failed("DescribeEndpoint", e))?
            .endpoint_address()
            .map(str::to_string),
    };
    let base = ArnBase::of("DescribeCACertificate", &registered.arn)?;
    let document = policy_document(&base, workload.client_id);
    let seen = observe_workload(client, workload.policy).await?;
    let plan = plan_workload(&seen, &document, workload.cert_pem);
    let certificate_id = sync_workload(client, ca, workload, &document, plan).await?;
    Ok(GatewayAwsIot {
        ca_certificate_id: registered.id,
        ca_certificate_arn: registered.arn,
        data_endpoint,
        client_certificate_id: Some(certificate_id),
        client_policy: Some(workload.policy.to_string()),
    })
}

/// The workload's policy and the certificates attached to it (reads only).
async fn observe_workload(client: &Client, policy: &str) -> Result<WorkloadSeen> {
    let mut seen = WorkloadSeen::default();
    match client.get_policy().policy_name(policy).send().await {
        Ok(p) => seen.policy_document = Some(p.policy_document().unwrap_or_default().to_string()),
        Err(e) if not_found(&e) => return Ok(seen),
        Err(e) => return Err(failed("GetPolicy", e)),
    }
    let targets = client
        .list_targets_for_policy()
        .policy_name(policy)
        .send()
        .await
        .map_err(|e| failed("ListTargetsForPolicy", e))?;
    for arn in targets.targets() {
        let Some(id) = super::cert_id(arn) else { continue };
        let pem = match client.describe_certificate().certificate_id(id).send().await {
            Ok(c) => c
                .certificate_description()
                .and_then(|d| d.certificate_pem())
                .map(str::to_string),
            Err(e) if not_found(&e) => continue,
            Err(e) => return Err(failed("DescribeCertificate", e)),
        };
        seen.targets.push(Target {
            id: id.to_string(),
            arn: arn.clone(),
            pem,
        });
    }
    Ok(seen)
}

/// Carries out the workload's plan; returns its certificate's id.
async fn sync_workload(
    client: &Client,
    ca: &CaBundle,
    w: &Workload<'_>,
    document: &str,
    plan: WorkloadPlan,
) -> Result<String> {
    if let Some(update) = plan.put_policy {
        super::put_policy(client, w.policy, document, update).await?;
    }
    let current = match plan.current {
        Some(id) => id,
        None => {
            let Registered { id, arn, .. } = super::register_certificate(client, w.cert_pem, &ca.cert_pem).await?;
            client
                .attach_policy()
                .policy_name(w.policy)
                .target(&arn)
                .send()
                .await
                .map_err(|e| failed("AttachPolicy", e))?;
            id
        }
    };
    for old in plan.retire {
        retire(client, w.policy, &old.id, &old.arn).await?;
    }
    Ok(current)
}

/// Detaches, revokes and deletes a workload certificate.
async fn retire(client: &Client, policy: &str, id: &str, arn: &str) -> Result<()> {
    done_if_gone(
        "DetachPolicy",
        client.detach_policy().policy_name(policy).target(arn).send().await,
    )?;
    client
        .update_certificate()
        .certificate_id(id)
        .new_status(CertificateStatus::Revoked)
        .send()
        .await
        .map_err(|e| failed("UpdateCertificate", e))?;
    done_if_gone(
        "DeleteCertificate",
        client
            .delete_certificate()
            .certificate_id(id)
            .force_delete(true)
            .send()
            .await,
    )
}

async fn register(client: &Client, ca: &CaBundle) -> Result<Registered> {
    let code = client
        .get_registration_code()
        .send()
        .await
        .map_err(|e| failed("GetRegistrationCode", e))?;
    let code = code.registration_code().unwrap_or_default();
    let verification = ca.issue(&LeafRequest {
        common_name: code,
        dns_names: &[],
        ip_addresses: &[],
        usage: Usage::Client,
        validity_days: 1,
    })?;
    let sent = client
        .register_ca_certificate()
        .ca_certificate(&ca.cert_pem)
        .verification_certificate(&verification.cert_pem)
        .set_as_active(true)
        .allow_auto_registration(false)
        .send()
        .await;
    match sent {
        Ok(r) => Ok(Registered {
            id: r.certificate_id().unwrap_or_default().to_string(),
            arn: r.certificate_arn().unwrap_or_default().to_string(),
            status: "ACTIVE".into(),
        }),
        // Registered before (a crash before the status was written).
        Err(e) => match e.as_service_error() {
            Some(RegisterCACertificateError::ResourceAlreadyExistsException(x)) if x.resource_id().is_some() => {
                let (id, arn) = (
                    x.resource_id().unwrap_or_default().to_string(),
                    x.resource_arn().unwrap_or_default().to_string(),
                );
                Ok(observe(client, Some(&id)).await?.unwrap_or(Registered {
                    id,
                    arn,
                    status: "ACTIVE".into(),
                }))
            }
            _ => Err(failed("RegisterCACertificate", e)),
        },
    }
}

/// Removes the workload's certificates and policy, then deactivates and
/// deletes the registered CA (its devices are gone first).
pub async fn remove(client: &Client, id: &str, policy: Option<&str>) -> Result<()> {
    if let Some(policy) = policy {
        match client.list_targets_for_policy().policy_name(policy).send().await {
            Ok(targets) => {
                for arn in targets.targets() {
                    if let Some(cert) = super::cert_id(arn) {
                        retire(client, policy, cert, arn).await?;
                    }
                }
                super::delete_policy(client, policy).await?;
            }
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(failed("ListTargetsForPolicy", e)),
        }
    }
    let Some(ca) = observe(client, Some(id)).await? else {
        return Ok(());
    };
    if ca.status == "ACTIVE" {
        client
            .update_ca_certificate()
            .certificate_id(id)
            .new_status(CaCertificateStatus::Inactive)
            .send()
            .await
            .map_err(|e| failed("UpdateCACertificate", e))?;
    }
    done_if_gone(
        "DeleteCACertificate",
        client.delete_ca_certificate().certificate_id(id).send().await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(status: &str) -> Registered {
        Registered {
            id: "ca1".into(),
            arn: "arn:aws:iot:eu-west-1:123456789012:cacert/ca1".into(),
            status: status.into(),
        }
    }

    fn known(endpoint: Option<&str>) -> GatewayAwsIot {
        GatewayAwsIot {
            ca_certificate_id: "ca1".into(),
            ca_certificate_arn: "arn".into(),
            data_endpoint: endpoint.map(str::to_string),
            client_certificate_id: None,
            client_policy: None,
        }
    }

    #[test]
    fn the_ca_is_registered_once_activated_when_not_and_the_endpoint_read_once() {
        let first = plan_ca(None, None);
        assert!(first.register && first.describe_endpoint && first.activate.is_none());
        let inactive = plan_ca(Some(&registered("INACTIVE")), Some(&known(Some("x.iot"))));
        assert_eq!(
            inactive,
            CaPlan {
                register: false,
                activate: Some("ca1".into()),
                describe_endpoint: false
            }
        );
        assert_eq!(
            plan_ca(Some(&registered("ACTIVE")), Some(&known(Some("x.iot")))),
            CaPlan::default()
        );
    }

    fn target(id: &str, pem: &str) -> Target {
        Target {
            id: id.into(),
            arn: format!("arn:aws:iot:eu-west-1:1:cert/{id}"),
            pem: Some(pem.into()),
        }
    }

    #[test]
    fn the_workload_policy_is_created_or_updated_only_when_it_differs() {
        let doc = r#"{"a":1}"#;
        assert_eq!(
            plan_workload(&WorkloadSeen::default(), doc, "C").put_policy,
            Some(false)
        );
        let same = WorkloadSeen {
            policy_document: Some(r#"{ "a": 1 }"#.into()),
            targets: vec![target("c1", "C")],
        };
        assert_eq!(
            plan_workload(&same, doc, "C"),
            WorkloadPlan {
                put_policy: None,
                current: Some("c1".into()),
                retire: vec![]
            }
        );
        let other = WorkloadSeen {
            policy_document: Some(r#"{"a":2}"#.into()),
            ..same
        };
        assert_eq!(plan_workload(&other, doc, "C").put_policy, Some(true));
    }

    #[test]
    fn a_renewed_certificate_is_registered_and_the_old_ones_retired() {
        let seen = WorkloadSeen {
            policy_document: Some("{}".into()),
            targets: vec![target("old1", "OLD1"), target("old2", "OLD2")],
        };
        let p = plan_workload(&seen, "{}", "NEW\n");
        assert_eq!(p.current, None, "the new certificate is registered");
        let retired: Vec<_> = p.retire.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(retired, ["old1", "old2"]);
    }
}
