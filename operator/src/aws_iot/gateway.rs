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

/// Registers the CA when it is not, activates it when it is not active,
/// reads the data endpoint when the status lacks it, and keeps the
/// workload's certificate registered with its policy (a renewed
/// certificate replaces the old one, which is revoked and deleted).
pub async fn sync(
    client: &Client,
    ca: &CaBundle,
    known: Option<&GatewayAwsIot>,
    workload: &Workload<'_>,
) -> Result<GatewayAwsIot> {
    let registered = observe(client, known.map(|k| k.ca_certificate_id.as_str())).await?;
    let registered = match registered {
        Some(r) => r,
        None => register(client, ca).await?,
    };
    if registered.status != "ACTIVE" {
        client
            .update_ca_certificate()
            .certificate_id(&registered.id)
            .new_status(CaCertificateStatus::Active)
            .send()
            .await
            .map_err(|e| failed("UpdateCACertificate", e))?;
    }
    let data_endpoint = match known.and_then(|k| k.data_endpoint.clone()) {
        Some(e) => Some(e),
        None => client
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
    let certificate_id = sync_workload(client, ca, workload, &document).await?;
    Ok(GatewayAwsIot {
        ca_certificate_id: registered.id,
        ca_certificate_arn: registered.arn,
        data_endpoint,
        client_certificate_id: Some(certificate_id),
        client_policy: Some(workload.policy.to_string()),
    })
}

/// The workload's certificate and policy; returns the certificate's id.
async fn sync_workload(client: &Client, ca: &CaBundle, w: &Workload<'_>, document: &str) -> Result<String> {
    match client.get_policy().policy_name(w.policy).send().await {
        Ok(p) if p.policy_document().is_some_and(|d| same_document(d, document)) => {}
        Ok(_) => super::put_policy(client, w.policy, document, true).await?,
        Err(e) if not_found(&e) => super::put_policy(client, w.policy, document, false).await?,
        Err(e) => return Err(failed("GetPolicy", e)),
    }
    let targets = client
        .list_targets_for_policy()
        .policy_name(w.policy)
        .send()
        .await
        .map_err(|e| failed("ListTargetsForPolicy", e))?;
    let mut current = None;
    let mut others = Vec::new();
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
        if pem.as_deref().map(str::trim) == Some(w.cert_pem.trim()) {
            current = Some(id.to_string());
        } else {
            others.push((id.to_string(), arn.clone()));
        }
    }
    let current = match current {
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
    for (id, arn) in others {
        retire(client, w.policy, &id, &arn).await?;
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
