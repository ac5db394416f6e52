//! Every decision about a Device's credentials, as one pure function of
//! what was observed, the spec and `now`: no API calls, no clock. The
//! reconciler (`super`) observes, calls `plan`, and applies the result in
//! the order the plan needs (credentials stored before anything is revoked).
//!
//! Transitions:
//! - gateway missing, or without CA/CRL yet → not Ready, retry soon;
//! - disabled → the current (and any previous) certificate revoked, the
//!   Secret marked disabled so the gateway refuses the device;
//! - no credentials → a certificate and an HMAC secret issued;
//! - re-enabled (the Secret says disabled) → a new certificate *and* a new
//!   HMAC secret: the old ones were in a disabled device's hands;
//! - `spec.rotation` changed → new certificate and HMAC secret, the
//!   previous HMAC secret kept for `hmacGracePeriodSeconds`, the
//!   certificate before that one revoked;
//! - grace period over → previous HMAC secret dropped, its certificate
//!   revoked;
//! - certificate revoked, from another CA (CA rollover), for another name,
//!   or inside `renewBeforeDays` → a new certificate, same HMAC secret.
//!
//! Whatever the transition, every certificate the device had revoked is
//! remembered in its status (`revokedCertificates`) until it can no longer
//! be valid, and put back into the CRL when the CRL lacks it (a CRL
//! ConfigMap deleted or edited): the Gateway rebuilds a lost CRL from these.

use std::time::Duration;

use fleetward_credentials::Credentials;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::Result;
use crate::conditions::{self, READY};
use crate::controllers::events::{PlannedEvent, is_news};
use crate::controllers::{RESYNC, until};
use crate::crd::device::RevokedCertificate;
use crate::crd::{Device, DeviceStatus};
use crate::crl::CrlState;
use crate::pki::{self, CaBundle, Issued, LeafRequest, Revocation, Usage};

/// The device's gateway as observed.
pub enum GatewayView<'a> {
    Missing,
    /// The Gateway exists but has no CA or CRL yet.
    NotReady,
    Ready {
        ca: &'a CaBundle,
        crl: &'a CrlState,
    },
}

/// What `plan` needs besides the Device: its gateway, and the credentials
/// in its Secret (`None` when there is no Secret; `unreadable_version` is
/// the version of a Secret that exists but cannot be read, so a rewrite
/// moves past it).
pub struct Observed<'a> {
    pub gateway: GatewayView<'a>,
    pub current: Option<Credentials>,
    pub unreadable_version: Option<i64>,
}

/// Where new key material comes from. The real one signs with the CA and
/// draws random secrets; both are pure computations (no I/O).
pub trait Mint {
    fn certificate(&mut self, ca: &CaBundle, device: &str, validity_days: i64) -> Result<Issued>;
    fn hmac_secret(&mut self) -> String;
}

pub struct RealMint;

impl Mint for RealMint {
    fn certificate(&mut self, ca: &CaBundle, device: &str, validity_days: i64) -> Result<Issued> {
        Ok(ca.issue(&LeafRequest {
            common_name: device,
            dns_names: &[],
            ip_addresses: &[],
            usage: Usage::Client,
            validity_days,
        })?)
    }

    fn hmac_secret(&mut self) -> String {
        pki::random_secret_hex()
    }
}

/// What the reconciler must do.
#[derive(Debug)]
pub struct Plan {
    /// Credentials to store; `None` leaves the Secret as it is.
    pub store: Option<Credentials>,
    /// Certificates to add to the gateway's CRL, once `store` is done.
    pub revoke: Vec<Revocation>,
    pub status: DeviceStatus,
    pub ready: bool,
    /// notAfter of the certificate the device holds (for the metric).
    pub not_after: Option<Timestamp>,
    pub events: Vec<PlannedEvent>,
    /// When to look again even if nothing changes.
    pub requeue: Duration,
}

/// How long to wait before looking again at a device whose gateway is
/// missing or not ready yet (a Gateway event usually comes sooner).
const GATEWAY_MISSING_RETRY: Duration = Duration::from_secs(30);
const GATEWAY_NOT_READY_RETRY: Duration = Duration::from_secs(5);
/// A disabled device needs no timer.
const DISABLED_RESYNC: Duration = RESYNC;

fn chrono(t: Timestamp) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32).unwrap_or_default()
}

fn jiff(t: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp::from_second(t.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Longest Kubernetes label value.
pub const MAX_LABEL_VALUE: usize = 63;

/// The longest a certificate can be valid (the CRD's maximum
/// `validityDays`): a revoked serial is remembered this long.
const MAX_VALIDITY_DAYS: i64 = 3650;

pub fn plan(dev: &Device, obs: Observed<'_>, now: Timestamp, mint: &mut dyn Mint) -> Result<Plan> {
    let crl = match &obs.gateway {
        GatewayView::Ready { crl, .. } => Some(*crl),
        _ => None,
    };
    let mut plan = transition(dev, obs, now, mint)?;
    if let Some(crl) = crl {
        remember_revocations(&mut plan, crl, &dev.name_any(), now);
    }
    Ok(plan)
}

/// Records the plan's revocations in the status, forgets those that have
/// outlived any certificate, and revokes again what the CRL lost.
fn remember_revocations(plan: &mut Plan, crl: &CrlState, device: &str, now: Timestamp) {
    let kept = &mut plan.status.revoked_certificates;
    for r in &plan.revoke {
        if !kept.iter().any(|k| k.serial == r.serial) {
            kept.push(RevokedCertificate {
                serial: r.serial.clone(),
                revoked_at: Time(r.revoked_at.parse().unwrap_or(now)),
                reason: r.reason.clone(),
            });
        }
    }
    let horizon = now - SignedDuration::from_hours(24 * MAX_VALIDITY_DAYS);
    kept.retain(|k| k.revoked_at.0 > horizon);
    let lost: Vec<Revocation> = kept
        .iter()
        .filter(|k| !crl.contains(&k.serial) && !plan.revoke.iter().any(|r| r.serial == k.serial))
        .map(|k| k.revocation(device))
        .collect();
    if !lost.is_empty() {
        let serials: Vec<&str> = lost.iter().map(|r| r.serial.as_str()).collect();
        plan.events.push(PlannedEvent::warning(
            "RevocationRestored",
            "Revoke",
            format!(
                "the CRL lacked revoked certificate(s) {}; revoked again",
                serials.join(", ")
            ),
        ));
        plan.revoke.extend(lost);
    }
}

fn transition(dev: &Device, obs: Observed<'_>, now: Timestamp, mint: &mut dyn Mint) -> Result<Plan> {
    let name = dev.name_any();
    let generation = dev.metadata.generation;
    let mut status = dev
        .status
        .as_ref()
        .map(DeviceStatus::operator_owned)
        .unwrap_or_default();
    status.secret_name = Some(fleetward_credentials::secret_name(&name));
    status.observed_generation = generation;
    let not_ready = |mut status: DeviceStatus, reason: &'static str, message: String, retry: Duration| {
        let events = if is_news(&status.conditions, READY, reason) {
            vec![PlannedEvent::warning(reason, "Issue", message.clone())]
        } else {
            vec![]
        };
        conditions::set(&mut status.conditions, READY, false, reason, message, generation);
        Plan {
            store: None,
            revoke: vec![],
            status,
            ready: false,
            not_after: None,
            events,
            requeue: retry,
        }
    };
    // The credentials Secret carries the name as a label value (63
    // characters at most): anything longer could never be stored, and each
    // retry would mint a new key for nothing.
    if name.len() > MAX_LABEL_VALUE {
        let msg = format!(
            "the name is {} characters; a Device name must be at most {MAX_LABEL_VALUE} (it labels the credentials \
             Secret): recreate it with a shorter name",
            name.len()
        );
        return Ok(not_ready(status, "NameTooLong", msg, crate::controllers::RESYNC));
    }
    let gw = &dev.spec.gateway_ref;
    let (ca, crl) = match obs.gateway {
        GatewayView::Missing => {
            let ns = dev.namespace().unwrap_or_default();
            let msg = format!("Gateway {gw:?} does not exist in namespace {ns:?}");
            return Ok(not_ready(status, "GatewayNotFound", msg, GATEWAY_MISSING_RETRY));
        }
        GatewayView::NotReady => {
            let msg = format!("Gateway {gw:?} has no CA or CRL yet");
            return Ok(not_ready(status, "GatewayNotReady", msg, GATEWAY_NOT_READY_RETRY));
        }
        GatewayView::Ready { ca, crl } => (ca, crl),
    };
    let revocation = |serial: &str, reason: &str| Revocation {
        serial: serial.into(),
        revoked_at: now.to_string(),
        subject: name.clone(),
        reason: reason.into(),
    };

    if !dev.spec.enabled {
        return disabled(dev, obs.current, crl, status, &revocation);
    }

    let mut events = Vec::new();
    let mut revoke = Vec::new();
    let fresh = |mint: &mut dyn Mint, version: i64| -> Result<(Credentials, Issued)> {
        let issued = mint.certificate(ca, &name, dev.spec.certificate.validity_days)?;
        Ok((
            Credentials {
                device: name.clone(),
                gateway: gw.clone(),
                category: dev.spec.category.as_str().to_string(),
                cert_pem: issued.cert_pem.clone(),
                key_pem: issued.key_pem.clone(),
                ca_pem: ca.cert_pem.clone(),
                hmac: mint.hmac_secret(),
                previous_hmac: None,
                previous_expires: None,
                previous_serial: None,
                version,
                rotation: dev.spec.rotation,
                enabled: true,
            },
            issued,
        ))
    };

    let creds = match obs.current.clone() {
        None => {
            let (c, issued) = fresh(mint, obs.unreadable_version.unwrap_or(0))?;
            events.push(PlannedEvent::normal(
                "Issued",
                "Issue",
                format!("issued certificate {}", issued.info.serial),
            ));
            c
        }
        Some(c) if !c.enabled => {
            // Re-enabled: the old certificate was revoked when the device
            // was disabled, and its HMAC secret is not trusted either.
            let (fresh_creds, issued) = fresh(mint, c.version)?;
            events.push(PlannedEvent::normal(
                "Reissued",
                "Issue",
                format!(
                    "re-enabled: new certificate {} and a new HMAC secret",
                    issued.info.serial
                ),
            ));
            fresh_creds
        }
        Some(mut c) => {
            let serial = pki::inspect(&c.cert_pem).map(|i| i.serial).unwrap_or_default();
            if c.rotation != dev.spec.rotation {
                let issued = mint.certificate(ca, &name, dev.spec.certificate.validity_days)?;
                if let Some(older) = c.previous_serial.take() {
                    revoke.push(revocation(&older, "superseded"));
                }
                let expires = now + SignedDuration::from_secs(dev.spec.hmac_grace_period_seconds);
                c.previous_hmac = Some(std::mem::replace(&mut c.hmac, mint.hmac_secret()));
                c.previous_expires = Some(chrono(expires));
                c.previous_serial = Some(serial.clone());
                c.cert_pem = issued.cert_pem;
                c.key_pem = issued.key_pem;
                c.rotation = dev.spec.rotation;
                events.push(PlannedEvent::normal("Rotated", "Issue",
                    format!(
                        "rotated credentials: certificate {} replaces {serial}; previous HMAC key valid until {expires}",
                        issued.info.serial
                    ),
                ));
            } else {
                let reason = if crl.contains(&serial) {
                    Some("certificate was revoked")
                } else {
                    pki::reissue_reason(
                        Some(&c.cert_pem),
                        &ca.cert_pem,
                        &name,
                        &[],
                        dev.spec.certificate.renew_before_days,
                        now,
                    )
                    .map(|r| r.as_str())
                };
                if let Some(reason) = reason {
                    let issued = mint.certificate(ca, &name, dev.spec.certificate.validity_days)?;
                    events.push(PlannedEvent::normal(
                        "Renewed",
                        "Issue",
                        format!("issued certificate {} ({reason})", issued.info.serial),
                    ));
                    c.cert_pem = issued.cert_pem;
                    c.key_pem = issued.key_pem;
                }
            }
            if c.previous_expires.is_some_and(|t| jiff(t) <= now) {
                c.previous_hmac = None;
                c.previous_expires = None;
                if let Some(old) = c.previous_serial.take() {
                    events.push(PlannedEvent::normal(
                        "GraceEnded",
                        "Issue",
                        format!("previous HMAC key retired; certificate {old} revoked"),
                    ));
                    revoke.push(revocation(&old, "superseded"));
                }
            }
            c.ca_pem = ca.cert_pem.clone();
            c.gateway = gw.clone();
            c.category = dev.spec.category.as_str().to_string();
            c
        }
    };
    let mut creds = creds;
    let changed = obs.current.as_ref() != Some(&creds);
    if changed {
        creds.version += 1;
    }

    let info = pki::inspect(&creds.cert_pem)?;
    let renewal = pki::renewal_time(&info, dev.spec.certificate.renew_before_days);
    status.serial = Some(info.serial.clone());
    status.fingerprint = Some(info.fingerprint.clone());
    status.not_before = Some(Time(info.not_before));
    status.not_after = Some(Time(info.not_after));
    status.renewal_time = Some(Time(renewal));
    status.secret_version = Some(creds.version);
    status.observed_rotation = Some(creds.rotation);
    status.previous_key_expires_at = creds.previous_expires.map(|t| Time(jiff(t)));
    conditions::set(
        &mut status.conditions,
        READY,
        true,
        "Issued",
        format!("certificate {} valid until {}", info.serial, info.not_after),
        generation,
    );
    let next = creds.previous_expires.map_or(renewal, |t| jiff(t).min(renewal));
    Ok(Plan {
        store: changed.then_some(creds),
        revoke,
        status,
        ready: true,
        not_after: Some(info.not_after),
        events,
        requeue: until(next, now),
    })
}

/// A disabled device: revoke what it holds (not already listed) and mark
/// its Secret disabled, so the gateway refuses it too.
fn disabled(
    dev: &Device,
    current: Option<Credentials>,
    crl: &CrlState,
    mut status: DeviceStatus,
    revocation: &dyn Fn(&str, &str) -> Revocation,
) -> Result<Plan> {
    let mut note = "disabled; no certificate was issued".to_string();
    let mut revoke = Vec::new();
    let mut store = None;
    if let Some(mut c) = current {
        let serial = pki::inspect(&c.cert_pem)?.serial;
        for s in std::iter::once(serial.clone()).chain(c.previous_serial.clone()) {
            if !crl.contains(&s) {
                revoke.push(revocation(&s, "cessationOfOperation"));
            }
        }
        note = format!("disabled; certificate {serial} is revoked");
        if c.enabled {
            c.enabled = false;
            store = Some(c);
        }
    }
    let events = if revoke.is_empty() {
        vec![]
    } else {
        vec![PlannedEvent::normal("Revoked", "Revoke", note.clone())]
    };
    conditions::set(
        &mut status.conditions,
        READY,
        false,
        "Disabled",
        note,
        dev.metadata.generation,
    );
    Ok(Plan {
        store,
        revoke,
        status,
        ready: false,
        not_after: None,
        events,
        requeue: DISABLED_RESYNC,
    })
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
