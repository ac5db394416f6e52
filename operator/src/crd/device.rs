use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A device in the fleet: the operator issues its X.509 certificate (CN =
/// the Device's name, signed by its Gateway's CA) and a 256-bit HMAC secret,
/// keeps both in the Secret `<name>-credentials`, renews the certificate
/// before it expires, rotates on request and revokes on disable or delete.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fleetward.io",
    version = "v1alpha1",
    kind = "Device",
    namespaced,
    status = "DeviceStatus",
    shortname = "fwdev",
    doc = "A device of the fleet (a meter, lock, sensor …): the operator issues its client certificate from its Gateway's CA and its HMAC key into the Secret <name>-credentials, renews, rotates and revokes them, and gives its Gateway the keys it checks messages with.",
    category = "fleetward",
    printcolumn(name = "Gateway", type_ = "string", json_path = ".spec.gatewayRef"),
    printcolumn(name = "Category", type_ = "string", json_path = ".spec.category"),
    printcolumn(name = "Enabled", type_ = "boolean", json_path = ".spec.enabled"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = "1",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Online", type_ = "boolean", json_path = ".status.online"),
    printcolumn(name = "LastSeen", type_ = "date", json_path = ".status.lastSeen"),
    printcolumn(name = "Cert-Expiry", type_ = "string", json_path = ".status.notAfter"),
    printcolumn(name = "Serial", type_ = "string", priority = "1", json_path = ".status.serial"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpec {
    /// Name of the Gateway, in the same namespace, whose CA signs this
    /// device's certificate and whose broker the device connects to.
    #[x_kube(validation = Rule::new("self == oldSelf").message("gatewayRef is immutable; create a new Device instead"))]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub gateway_ref: String,

    /// What the device is; the gateway enforces the category's payload schema.
    pub category: DeviceCategory,

    /// `false` revokes the device's certificate (its serial goes into the
    /// Gateway's CRL) and marks the device Disabled. Setting it back to
    /// `true` issues a fresh certificate.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Certificate lifetime and renewal.
    #[serde(default)]
    pub certificate: CertificateSpec,

    /// Bump this number to rotate: a new certificate and a new HMAC secret
    /// are issued; the previous HMAC secret stays valid for
    /// `hmacGracePeriodSeconds`, after which the previous certificate is
    /// revoked.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub rotation: i64,

    /// How long the previous HMAC secret keeps verifying after a rotation,
    /// so messages signed just before the device picked up its new secret
    /// are not rejected.
    #[serde(default = "default_grace")]
    #[schemars(range(min = 0, max = 2_592_000))]
    pub hmac_grace_period_seconds: i64,
}

fn default_true() -> bool {
    true
}

fn default_grace() -> i64 {
    3600
}

/// Device categories (seed 002) plus the electricity meter used by billing:
/// the protocol crate's type, so the CRD and the gateway's payload schemas
/// can never disagree on the list.
pub use fleetward_protocol::Category as DeviceCategory;

/// Lifetime of an issued certificate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.renewBeforeDays < self.validityDays").message("renewBeforeDays must be smaller than validityDays"))]
pub struct CertificateSpec {
    /// Days the certificate is valid for.
    #[serde(default = "default_validity")]
    #[schemars(range(min = 1, max = 3650))]
    pub validity_days: i64,
    /// Days before expiry at which the operator issues a new certificate.
    #[serde(default = "default_renew_before")]
    #[schemars(range(min = 0, max = 3649))]
    pub renew_before_days: i64,
}

fn default_validity() -> i64 {
    90
}

fn default_renew_before() -> i64 {
    30
}

impl Default for CertificateSpec {
    fn default() -> Self {
        Self {
            validity_days: default_validity(),
            renew_before_days: default_renew_before(),
        }
    }
}

/// Observed state of a Device. Never holds key material.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// `Ready` is True when the device holds a valid certificate and secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Secret holding `tls.crt`, `tls.key`, `ca.crt` and `hmac.key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Serial number of the current certificate (hex, as `openssl` prints it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// SHA-256 fingerprint of the current certificate (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// When the operator will issue the next certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,
    /// Increments every time the credentials in the Secret change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_version: Option<i64>,
    /// The `spec.rotation` value the current credentials were issued for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_rotation: Option<i64>,
    /// Until when the previous HMAC secret is still accepted, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_key_expires_at: Option<Time>,
    /// This device's revoked certificates (serials only), kept until no
    /// certificate issued before the revocation can still be valid: the
    /// operator rebuilds a lost CRL from them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_certificates: Vec<RevokedCertificate>,
    /// The device in AWS IoT Core, when its Gateway's provider is `awsIot`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_iot: Option<DeviceAwsIot>,
    /// When the device's last message passed its Gateway's checks, to a
    /// minute (longer beyond 2,400 devices online per gateway): the gateway
    /// writes it when it moved that far or the device came online, never per
    /// message. Written by the gateway, never by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    /// True while the device's last accepted message is at most three of its
    /// category's reports old; written by the gateway when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
}

impl DeviceStatus {
    /// The part of this status the operator writes: everything but the
    /// gateway's `lastSeen` and `online`. What the operator plans from and
    /// compares with, so a device's traffic never makes it write status,
    /// and its own write never sets a newer `lastSeen` back.
    pub fn operator_owned(&self) -> Self {
        Self {
            last_seen: None,
            online: None,
            ..self.clone()
        }
    }
}

/// A Device's thing, certificate and policy in AWS IoT Core.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceAwsIot {
    /// Also the MQTT client id the device must connect with.
    pub thing_name: String,
    pub thing_arn: String,
    /// Id of the device's current certificate in IoT Core.
    pub certificate_id: String,
    pub certificate_status: String,
    pub policy_name: String,
}

/// A revoked certificate of a Device.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevokedCertificate {
    /// Serial number (hex, as `openssl` prints it).
    pub serial: String,
    pub revoked_at: Time,
    /// CRL reason, e.g. `superseded` or `cessationOfOperation`.
    pub reason: String,
}

impl RevokedCertificate {
    /// The CRL entry of this revocation, for the device named `subject`.
    pub fn revocation(&self, subject: &str) -> crate::pki::Revocation {
        crate::pki::Revocation {
            serial: self.serial.clone(),
            revoked_at: self.revoked_at.0.to_string(),
            subject: subject.to_string(),
            reason: self.reason.clone(),
        }
    }
}
