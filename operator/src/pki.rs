//! Certificates for gateways and devices: an ECDSA P-256 CA per Gateway,
//! leaf certificates signed by it, and the CRL that lists revoked serials.
//!
//! Everything here is pure (no Kubernetes calls) so it can be tested with
//! `openssl` directly. Private keys only ever leave this module as PEM
//! strings destined for a Secret; errors never include key material.

use std::net::IpAddr;

use jiff::{SignedDuration, Timestamp};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams,
    SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

#[derive(thiserror::Error, Debug)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("could not parse certificate: {0}")]
    Parse(String),
    #[error("invalid validity: {0}")]
    Validity(String),
}

type Result<T, E = PkiError> = std::result::Result<T, E>;

/// Issued certificates start a little in the past so a device whose clock
/// lags the operator's does not see them as not-yet-valid.
const BACKDATE: SignedDuration = SignedDuration::from_mins(5);

/// A CA certificate with its private key, both PEM.
#[derive(Clone)]
pub struct CaBundle {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaBundle {
    // Deliberately omits the key: a stray `{:?}` must not leak it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle").finish_non_exhaustive()
    }
}

/// A freshly issued leaf: certificate and key PEM plus what status needs.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub info: CertInfo,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Public facts about a certificate.
#[derive(Clone, Debug, PartialEq)]
pub struct CertInfo {
    /// Uppercase hex without separators, as `openssl x509 -serial` prints.
    pub serial: String,
    /// Lowercase hex SHA-256 of the DER encoding.
    pub fingerprint: String,
    pub common_name: String,
    pub dns_names: Vec<String>,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    /// A server that also connects as a client of its own kind (a Kafka
    /// broker to its controller).
    ServerAndClient,
}

/// What a leaf certificate should say.
pub struct LeafRequest<'a> {
    pub common_name: &'a str,
    pub dns_names: &'a [String],
    pub ip_addresses: &'a [IpAddr],
    pub usage: Usage,
    pub validity_days: i64,
}

/// One CRL entry.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    pub serial: String,
    /// RFC 3339.
    pub revoked_at: String,
    /// Who held the certificate (device id), for people reading the list.
    pub subject: String,
    pub reason: String,
}

/// Creates a self-signed CA (path length 0: it signs leaves only).
pub fn generate_ca(common_name: &str, validity_days: i64) -> Result<CaBundle> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.key_identifier_method = KeyIdMethod::Sha256;
    set_validity(&mut params, validity_days)?;
    params.serial_number = Some(new_serial());
    let cert = params.self_signed(&key)?;
    Ok(CaBundle {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

impl CaBundle {
    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, key)?)
    }

    /// Checks that the certificate and key belong together, so a damaged CA
    /// Secret is reported instead of silently signing garbage.
    pub fn validate(&self) -> Result<CertInfo> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        let der = pem_to_der(&self.cert_pem)?;
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| PkiError::Parse(e.to_string()))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::Parse("CA certificate and key do not match".into()));
        }
        inspect(&self.cert_pem)
    }

    /// Issues a leaf certificate with a new P-256 key.
    pub fn issue(&self, req: &LeafRequest<'_>) -> Result<Issued> {
        let issuer = self.issuer()?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(req.common_name);
        let mut sans = Vec::new();
        for name in req.dns_names {
            let ia5 = name
                .clone()
                .try_into()
                .map_err(|_| PkiError::Parse(format!("invalid DNS name {name:?}")))?;
            sans.push(SanType::DnsName(ia5));
        }
        sans.extend(req.ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyAgreement];
        params.extended_key_usages = match req.usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAndClient => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        set_validity(&mut params, req.validity_days)?;
        params.serial_number = Some(new_serial());
        let cert = params.signed_by(&key, &issuer)?;
        let cert_pem = cert.pem();
        let info = inspect(&cert_pem)?;
        Ok(Issued {
            cert_pem,
            key_pem: key.serialize_pem(),
            info,
        })
    }

    /// Signs a CRL listing `revoked`, valid from `now` for `validity_days`.
    pub fn sign_crl(
        &self,
        revoked: &[Revocation],
        crl_number: u64,
        now: Timestamp,
        validity_days: i64,
    ) -> Result<String> {
        let issuer = self.issuer()?;
        // Backdated like certificates: a verifier whose clock is a little
        // behind ours would otherwise find a CRL "not yet valid" and, in
        // Mosquitto's case, refuse every client.
        let this_update = to_offset(now - BACKDATE)?;
        let next_update = to_offset(now + SignedDuration::from_hours(24 * validity_days))?;
        let mut revoked_certs = Vec::with_capacity(revoked.len());
        for r in revoked {
            let bytes = hex::decode(&r.serial).map_err(|_| PkiError::Parse(format!("bad serial {:?}", r.serial)))?;
            let when: Timestamp = r
                .revoked_at
                .parse()
                .map_err(|_| PkiError::Parse(format!("bad time {:?}", r.revoked_at)))?;
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: to_offset(when)?,
                reason_code: Some(match r.reason.as_str() {
                    "superseded" => RevocationReason::Superseded,
                    "keyCompromise" => RevocationReason::KeyCompromise,
                    _ => RevocationReason::CessationOfOperation,
                }),
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&issuer)?.pem()?)
    }
}

/// True when `cert_pem` carries a valid signature from `ca_pem`'s key.
pub fn is_issued_by(cert_pem: &str, ca_pem: &str) -> bool {
    let (Ok(cert_der), Ok(ca_der)) = (pem_to_der(cert_pem), pem_to_der(ca_pem)) else {
        return false;
    };
    let (Ok((_, cert)), Ok((_, ca))) = (X509Certificate::from_der(&cert_der), X509Certificate::from_der(&ca_der))
    else {
        return false;
    };
    cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// Why a certificate has to be replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReissueReason {
    Missing,
    Unreadable,
    OtherCa,
    SubjectChanged,
    RenewalDue,
}

impl ReissueReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Missing => "no certificate yet",
            Self::Unreadable => "certificate unreadable",
            Self::OtherCa => "not signed by the current CA",
            Self::SubjectChanged => "subject or names changed",
            Self::RenewalDue => "renewal due",
        }
    }
}

/// Decides whether `cert_pem` can stay. `wanted_sans` must be sorted.
pub fn reissue_reason(
    cert_pem: Option<&str>,
    ca_pem: &str,
    common_name: &str,
    wanted_sans: &[String],
    renew_before_days: i64,
    now: Timestamp,
) -> Option<ReissueReason> {
    let Some(cert_pem) = cert_pem else {
        return Some(ReissueReason::Missing);
    };
    let Ok(info) = inspect(cert_pem) else {
        return Some(ReissueReason::Unreadable);
    };
    if !is_issued_by(cert_pem, ca_pem) {
        return Some(ReissueReason::OtherCa);
    }
    let mut have = info.dns_names.clone();
    have.sort();
    if info.common_name != common_name || have != wanted_sans {
        return Some(ReissueReason::SubjectChanged);
    }
    if now >= renewal_time(&info, renew_before_days) {
        return Some(ReissueReason::RenewalDue);
    }
    None
}

/// When a certificate should be replaced by a fresh one.
pub fn renewal_time(info: &CertInfo, renew_before_days: i64) -> Timestamp {
    info.not_after - SignedDuration::from_hours(24 * renew_before_days)
}

/// The entries of a PEM CRL (serials as `inspect` prints them). The
/// subject is not part of a CRL, so it comes back empty.
pub fn crl_entries(crl_pem: &str) -> Result<Vec<Revocation>> {
    let der = pem_to_der(crl_pem)?;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
        .map_err(|e| PkiError::Parse(e.to_string()))?;
    Ok(crl
        .iter_revoked_certificates()
        .map(|r| {
            let trimmed = match r.raw_serial() {
                [0, rest @ ..] if !rest.is_empty() => rest,
                all => all,
            };
            let revoked_at = Timestamp::from_second(r.revocation_date.timestamp())
                .map(|t| t.to_string())
                .unwrap_or_default();
            let reason = match r.reason_code().map(|(_, c)| c.0) {
                Some(1) => "keyCompromise",
                Some(4) => "superseded",
                _ => "cessationOfOperation",
            };
            Revocation {
                serial: hex::encode_upper(trimmed),
                revoked_at,
                subject: String::new(),
                reason: reason.into(),
            }
        })
        .collect())
}

/// Reads the public facts of a PEM certificate.
pub fn inspect(cert_pem: &str) -> Result<CertInfo> {
    let der = pem_to_der(cert_pem)?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let serial_bytes = cert.raw_serial();
    // DER integers carry a leading zero when the high bit is set; openssl
    // does not print it.
    let trimmed = match serial_bytes {
        [0, rest @ ..] if !rest.is_empty() => rest,
        all => all,
    };
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                GeneralName::IPAddress(ip) => {
                    let addr = match ip.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(*ip).expect("length checked")),
                        16 => IpAddr::from(<[u8; 16]>::try_from(*ip).expect("length checked")),
                        _ => continue,
                    };
                    dns_names.push(addr.to_string());
                }
                _ => {}
            }
        }
    }
    let ts = |t: &x509_parser::time::ASN1Time| {
        Timestamp::from_second(t.timestamp()).map_err(|e| PkiError::Parse(e.to_string()))
    };
    Ok(CertInfo {
        serial: hex::encode_upper(trimmed),
        fingerprint: hex::encode(Sha256::digest(&der)),
        common_name,
        dns_names,
        not_before: ts(&cert.validity().not_before)?,
        not_after: ts(&cert.validity().not_after)?,
    })
}

/// 32 random bytes as 64 lowercase hex characters. Device HMAC secrets and
/// API keys use this form: the text itself is the key (seed 003 treats the
/// shared secret as a string), and it carries 256 bits of entropy.
pub fn random_secret_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "fleetward");
    dn
}

/// 16 random bytes, first byte in 0x40..=0x7F: positive, minimal DER, and
/// always 32 hex digits so serials compare as plain strings.
fn new_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x3F) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn set_validity(params: &mut CertificateParams, days: i64) -> Result<()> {
    if days <= 0 {
        return Err(PkiError::Validity(format!("{days} days")));
    }
    let now = Timestamp::now();
    params.not_before = to_offset(now - BACKDATE)?;
    params.not_after = to_offset(now + SignedDuration::from_hours(24 * days))?;
    Ok(())
}

fn to_offset(ts: Timestamp) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(ts.as_second()).map_err(|e| PkiError::Validity(e.to_string()))
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| PkiError::Parse(e.to_string()))?;
    Ok(parsed.contents)
}

#[cfg(test)]
#[path = "pki_tests.rs"]
mod tests;
