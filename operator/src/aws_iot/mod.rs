//! AWS IoT Core as a Gateway's broker (`spec.provider: awsIot`).
//!
//! The Gateway reconciler registers the Gateway's CA with IoT Core
//! (`gateway`); the Device reconciler keeps each Device's thing, its
//! certificate (the one the operator issued, signed by that CA) and a
//! policy limited to the device's own client id and topics (`device`).
//! Both follow the operators' pattern: read what IoT Core holds, decide in
//! a pure function, then make only the calls that change something, so a
//! reconcile of a device that is in order sends nothing but reads.
//!
//! Credentials come from the SDK's default chain: IRSA's web identity on
//! EKS (the chart annotates the ServiceAccount), environment or profile
//! elsewhere. Requests carry certificates (public) and policy documents,
//! never key material. Throttling and transient failures are retried by
//! the SDK with exponential backoff; what still fails becomes
//! `Error::AwsIot` (a `Ready=False` condition and the reconciler's own
//! backoff).

pub mod device;
pub mod gateway;

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_iot::Client;
use aws_sdk_iot::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_iot::config::{ConfigBag, Intercept, RuntimeComponents, SharedHttpClient};
use aws_sdk_iot::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_iot::operation::register_certificate::RegisterCertificateError;
use aws_sdk_iot::types::CertificateStatus;
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use prometheus::IntCounterVec;

use crate::Error;
use crate::crd::gateway::AwsIotSpec;

/// Attempts per request (the first and four retries, with the SDK's
/// exponential backoff and jitter between them).
const MAX_ATTEMPTS: u32 = 5;
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);

/// One IoT client per (region, endpoint), made on first use.
pub struct Clients {
    clients: Mutex<HashMap<(String, Option<String>), Client>>,
    requests: IntCounterVec,
}

impl Clients {
    pub fn new(requests: IntCounterVec) -> Self {
        Self {
            clients: Mutex::default(),
            requests,
        }
    }

    pub async fn get(&self, spec: &AwsIotSpec) -> Client {
        let key = (spec.region.clone(), spec.endpoint_url.clone());
        if let Some(c) = self.clients.lock().expect("aws clients").get(&key) {
            return c.clone();
        }
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .http_client(https_client())
            .region(Region::new(spec.region.clone()))
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_initial_backoff(INITIAL_BACKOFF),
            )
            .load()
            .await;
        let mut config = aws_sdk_iot::config::Builder::from(&shared).interceptor(CountRequests(self.requests.clone()));
        if let Some(url) = &spec.endpoint_url {
            config = config.endpoint_url(url);
        }
        let client = Client::from_conf(config.build());
        self.clients
            .lock()
            .expect("aws clients")
            .entry(key)
            .or_insert(client)
            .clone()
    }
}

/// The SDK's HTTPS client, with rustls on ring.
pub fn https_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https()
}

/// Counts every attempt the SDK sends, by operation: what the tests read
/// to show that a reconcile of a device in order changes nothing.
struct CountRequests(IntCounterVec);

impl fmt::Debug for CountRequests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CountRequests")
    }
}

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "fleetward-count-requests"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let op = cfg.load::<Metadata>().map(|m| m.name().to_string()).unwrap_or_default();
        self.0.with_label_values(&[&op]).inc();
        Ok(())
    }
}

/// Operations that change something in IoT Core (the rest only read).
pub const MUTATING: &[&str] = &[
    "CreateThing",
    "UpdateThing",
    "DeleteThing",
    "RegisterCertificate",
    "UpdateCertificate",
    "DeleteCertificate",
    "RegisterCACertificate",
    "UpdateCACertificate",
    "DeleteCACertificate",
    "CreatePolicy",
    "CreatePolicyVersion",
    "DeletePolicyVersion",
    "DeletePolicy",
    "AttachPolicy",
    "DetachPolicy",
    "AttachThingPrincipal",
    "DetachThingPrincipal",
];

/// A certificate (or CA) registered in IoT Core.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Registered {
    pub id: String,
    pub arn: String,
    pub status: String,
}

/// Registers a certificate issued by `ca_pem`'s CA, ACTIVE. One registered
/// before (a crash after this call, before its status was written) is
/// found by IoT Core's answer, and activated if it was left INACTIVE.
pub async fn register_certificate(client: &Client, cert_pem: &str, ca_pem: &str) -> crate::Result<Registered> {
    let sent = client
        .register_certificate()
        .certificate_pem(cert_pem)
        .ca_certificate_pem(ca_pem)
        .status(CertificateStatus::Active)
        .send()
        .await;
    let x = match sent {
        Ok(r) => {
            return Ok(Registered {
                id: r.certificate_id().unwrap_or_default().to_string(),
                arn: r.certificate_arn().unwrap_or_default().to_string(),
                status: "ACTIVE".into(),
            });
        }
        Err(e) => match e.as_service_error() {
            Some(RegisterCertificateError::ResourceAlreadyExistsException(x)) if x.resource_id().is_some() => x.clone(),
            _ => return Err(failed("RegisterCertificate", e)),
        },
    };
    let id = x.resource_id().unwrap_or_default().to_string();
    let mut status = client
        .describe_certificate()
        .certificate_id(&id)
        .send()
        .await
        .map_err(|e| failed("DescribeCertificate", e))?
        .certificate_description()
        .and_then(|d| d.status())
        .map(|s| s.as_str().to_string())
        .unwrap_or_default();
    if status == "INACTIVE" {
        client
            .update_certificate()
            .certificate_id(&id)
            .new_status(CertificateStatus::Active)
            .send()
            .await
            .map_err(|e| failed("UpdateCertificate", e))?;
        status = "ACTIVE".into();
    }
    Ok(Registered {
        id,
        arn: x.resource_arn().unwrap_or_default().to_string(),
        status,
    })
}

/// Writes policy `name` with `document`: created, or (`exists`) given a new
/// default version.
pub async fn put_policy(client: &Client, name: &str, document: &str, exists: bool) -> crate::Result<()> {
    if exists {
        return replace_policy(client, name, document).await;
    }
    client
        .create_policy()
        .policy_name(name)
        .policy_document(document)
        .send()
        .await
        .map_err(|e| failed("CreatePolicy", e))?;
    Ok(())
}

/// Makes `document` the policy's default version. IoT Core keeps at most
/// five versions, so the old non-default ones go first.
pub async fn replace_policy(client: &Client, name: &str, document: &str) -> crate::Result<()> {
    delete_old_versions(client, name).await?;
    client
        .create_policy_version()
        .policy_name(name)
        .policy_document(document)
        .set_as_default(true)
        .send()
        .await
        .map_err(|e| failed("CreatePolicyVersion", e))?;
    delete_old_versions(client, name).await
}

/// Deletes a policy and its old versions (IoT Core refuses to delete a
/// policy that has any). Detach it from every target first.
pub async fn delete_policy(client: &Client, name: &str) -> crate::Result<()> {
    delete_old_versions(client, name).await?;
    done_if_gone("DeletePolicy", client.delete_policy().policy_name(name).send().await)
}

async fn delete_old_versions(client: &Client, name: &str) -> crate::Result<()> {
    let versions = match client.list_policy_versions().policy_name(name).send().await {
        Ok(v) => v,
        Err(e) if not_found(&e) => return Ok(()),
        Err(e) => return Err(failed("ListPolicyVersions", e)),
    };
    for v in versions.policy_versions() {
        let Some(id) = v.version_id() else { continue };
        if v.is_default_version() {
            continue;
        }
        done_if_gone(
            "DeletePolicyVersion",
            client
                .delete_policy_version()
                .policy_name(name)
                .policy_version_id(id)
                .send()
                .await,
        )?;
    }
    Ok(())
}

/// The outcome of a call that detaches or deletes something: already gone
/// counts as done.
pub fn done_if_gone<T, E, R>(operation: &'static str, result: Result<T, SdkError<E, R>>) -> crate::Result<()>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    match result {
        Ok(_) => Ok(()),
        Err(e) if not_found(&e) => Ok(()),
        Err(e) => Err(failed(operation, e)),
    }
}

/// AWS's error code, when AWS answered.
pub fn code<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Option<&str> {
    match e {
        SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    }
}

pub fn not_found<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    code(e) == Some("ResourceNotFoundException")
}

/// `Error::AwsIot` for a failed call: AWS's code and message, or what kept
/// the request from being answered.
pub fn failed<E, R>(operation: &'static str, e: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    let (code, message) = match &e {
        SdkError::ServiceError(s) => (
            s.err().code().unwrap_or("Unknown").to_string(),
            s.err().message().unwrap_or_default().to_string(),
        ),
        SdkError::TimeoutError(_) => ("Timeout".into(), "no answer in time".into()),
        SdkError::DispatchFailure(_) => ("Unreachable".into(), chain(&e)),
        _ => ("RequestFailed".into(), chain(&e)),
    };
    Error::AwsIot {
        operation,
        code,
        message,
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The account, region and partition of an ARN, for the ARNs of a policy.
#[derive(Debug, Clone, PartialEq)]
pub struct ArnBase {
    pub partition: String,
    pub region: String,
    pub account: String,
}

impl ArnBase {
    /// `parse`, or the error that IoT Core's answer to `operation` held no
    /// IoT ARN.
    pub fn of(operation: &'static str, arn: &str) -> crate::Result<Self> {
        Self::parse(arn).ok_or_else(|| Error::AwsIot {
            operation,
            code: "UnexpectedAnswer".into(),
            message: format!("{arn:?} is not an IoT ARN"),
        })
    }

    /// From any IoT ARN, e.g. a thing's `arn:aws:iot:eu-west-1:123:thing/x`.
    pub fn parse(arn: &str) -> Option<Self> {
        let mut parts = arn.splitn(6, ':');
        let (_, partition, service, region, account) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        (service == "iot" && !account.is_empty()).then(|| Self {
            partition: partition.into(),
            region: region.into(),
            account: account.into(),
        })
    }

    pub fn arn(&self, resource: &str) -> String {
        format!("arn:{}:iot:{}:{}:{resource}", self.partition, self.region, self.account)
    }
}

/// The id of a certificate from its ARN (`…:cert/<id>`).
pub fn cert_id(arn: &str) -> Option<&str> {
    arn.rsplit_once(":cert/").map(|(_, id)| id)
}

/// Policy documents compare as JSON: IoT Core may reformat what it stores.
pub fn same_document(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_are_split_and_rebuilt() {
        let base = ArnBase::parse("arn:aws:iot:eu-west-1:123456789012:thing/ns_dev").unwrap();
        assert_eq!(base.account, "123456789012");
        assert_eq!(
            base.arn("client/ns_dev"),
            "arn:aws:iot:eu-west-1:123456789012:client/ns_dev"
        );
        assert_eq!(ArnBase::parse("arn:aws:s3:::bucket"), None);
        assert_eq!(ArnBase::parse("nonsense"), None);
        assert_eq!(cert_id("arn:aws:iot:eu-west-1:1:cert/abc"), Some("abc"));
        assert_eq!(cert_id("arn:aws:iot:eu-west-1:1:thing/abc"), None);
    }

    #[test]
    fn documents_compare_as_json() {
        assert!(same_document(r#"{"a": [1, 2]}"#, r#"{"a":[1,2]}"#));
        assert!(!same_document(r#"{"a": [1, 2]}"#, r#"{"a":[2,1]}"#));
    }
}
